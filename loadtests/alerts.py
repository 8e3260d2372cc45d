# loadtests/alerts: what the alert evaluator (admin/alerts.py) costs the collector's loop.
#
# The evaluator runs in the collector, beside the click pipeline; the edge workers are
# other processes and share only the CPU. So the figures that matter are how long one
# evaluation holds the collector's event loop in total and at most at once (a stall
# delays the pipeline's flush timer and the workers' acks), against the loop work the
# pipeline itself does per flush (LiveCounters.add of one flush's clicks), measured in
# the same run:
# - a database of --links links in campaigns of 100, live counters holding an hour of
#   clicks for every link, --rules rules (every kind, on links and campaigns);
# - evaluate() run --runs times while a 1 ms ticker records how late it wakes (the
#   longest stall) and time.thread_time() counts the CPU spent on the loop's thread
#   (the SQL runs on aiosqlite threads and is reported apart as wall time);
# - the peer: LiveCounters.add of a 10,000-click flush, timed the same way.
#   python -m loadtests.alerts [--links 10000] [--rules 1000] [--runs 5]
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from admin import alerts
from edge import catalog
from edge.config import Config
from edge.db import Database, Transaction
from edge.live import LiveCounters

DEFAULT_INTERVAL_S = Config().alert_eval_interval_s


def build(db: Path, n_links: int, n_rules: int, seed: int) -> list[int]:
    conn = catalog.open_db(str(db))
    ids = []
    with Transaction(conn):
        for i in range(n_links):
            link = catalog.create_link(
                conn,
                {"url": f"https://example.com/{i}", "campaign": f"c{i // 100}"},
                slug=f"l{i}",
            )
            ids.append(link["id"])
    rng = random.Random(seed)
    kinds = ["clicks_above", "clicks_below", "anomaly", "zero", "destination"]
    with Transaction(conn):
        for r in range(n_rules):
            kind = kinds[r % len(kinds)]
            scope = (
                {"campaign": f"c{rng.randrange(max(1, n_links // 100))}"}
                if r % 10 == 0
                else {"link_id": rng.choice(ids)}
            )
            body: dict[str, Any] = {"name": f"r{r}", "scope": scope, "kind": kind}
            if kind != "destination":
                body["window_s"] = 300
            if kind.startswith("clicks"):
                body["threshold"] = 1e9 if kind == "clicks_above" else 0
            alerts.create_alert(conn, alerts.validate_rule(body))
    conn.close()
    return ids


def fill(live: LiveCounters, ids: list[int], now: int, seed: int) -> None:
    rng = random.Random(seed)
    for second in range(now - 3600, now + 1, 10):
        live.add([(i, second, 1, 1) for i in rng.sample(ids, min(len(ids), 300))])


async def measure(db: Path, ids: list[int], runs: int) -> dict[str, Any]:
    now = int(time.time())
    live = LiveCounters()
    fill(live, ids, now, 1)
    config = Config(db_path=str(db))
    writer = await Database(str(db)).open()
    runtime = SimpleNamespace(
        config=config, live=live, started_at=now - 7200, writer=writer, edges=None
    )
    engine = alerts.AlertEngine(runtime)
    await engine.db.open()
    engine.started = True
    lateness: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)

    tick = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(1.0)  # the same ticker on an idle loop: this machine's own noise
    idle = sorted(lateness)
    lateness.clear()
    walls, cpus = [], []
    for _ in range(runs):
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        await engine.evaluate(time.time())
        cpus.append(time.thread_time() - cpu0)
        walls.append(time.perf_counter() - wall0)
    stop = True
    await tick
    # the peer: one flush's worth of live-counter feeding (the pipeline's loop work)
    flush = [(ids[i % len(ids)], now, 1, 1) for i in range(10_000)]
    cpu0 = time.thread_time()
    for _ in range(20):
        live.add(flush)
    peer_cpu = (time.thread_time() - cpu0) / 20
    await engine.db.close()
    await writer.close()
    cpu = sorted(cpus)[len(cpus) // 2]
    return {
        "links": len(ids),
        "rules": engine.evaluations and len(engine.states),
        "evaluation_wall_s_median": round(sorted(walls)[len(walls) // 2], 4),
        "evaluation_loop_cpu_s_median": round(cpu, 4),
        "longest_loop_stall_ms": round(max(lateness) * 1000, 2) if lateness else None,
        "longest_hold_between_yields_ms": round(engine.longest_hold_s * 1000, 2),
        "p99_loop_stall_ms": round(sorted(lateness)[int(len(lateness) * 0.99)] * 1000, 2),
        "idle_longest_stall_ms": round(idle[-1] * 1000, 2),
        "idle_p99_stall_ms": round(idle[int(len(idle) * 0.99)] * 1000, 2),
        "loop_share_at_default_interval": round(cpu / DEFAULT_INTERVAL_S, 5),
        "peer_live_add_10k_clicks_cpu_s": round(peer_cpu, 4),
        "evaluation_vs_one_flush": round(cpu / peer_cpu, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.alerts", description=__doc__)
    p.add_argument("--links", type=int, default=10_000)
    p.add_argument("--rules", type=int, default=1_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # the rules fire: their log lines are not the point
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "alerts.db"
        ids = build(db, args.links, args.rules, 7)
        result = asyncio.run(measure(db, ids, args.runs))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
