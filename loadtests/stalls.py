# loadtests/stalls: the collector's event-loop stalls under its worst jobs (issue 10).
#
# The measure is the collector's own: edge/looplag.py's LoopLag, a 10 ms timer in the
# collector's event loop that records how late each tick ran, read from the collector's
# /metrics (`linkedge_loop_lag_recent_max_seconds{process="collector"}`, the worst delay
# of the last 10-20 s, sampled every second, so no tick is missed; and
# `linkedge_loop_stalls_total{process="collector",over=...}`, ticks later than 5, 50 and
# 500 ms, read at each phase's start and end). No debug hook: it is what /metrics shows.
#
# Setup: `linkedge serve` with one worker, the admin API on, GeoIP on, on a database of
# --links (6,000) links, the first 1,000 in campaign "stall-group". The supervisor and the
# collector are pinned to core 0; the worker is moved to core 1 with wrk and this harness,
# so that a late tick is the collector's own work (its loop, its enrichment and SQLite
# threads sharing its GIL), not a busy worker taking its core. The bounds that let a
# backlog build are raised (--max-queued-clicks, --max-unacked-clicks/-bytes).
# All through the run a thread polls, every second: GET /api/live?top=100,
# GET /api/stats?campaign=stall-group (the 1,000-link group's stats) and /metrics; their
# latencies are reported too.
# Phases, each after --gap (21) quiet seconds so that the recent max sampled during it
# holds only its own ticks (a DB write lock held from a separate connection makes the
# clicks of a burst wait, so that the collector's next enrichment takes them all at
# once, as after any stall of the disk):
# 1. first clicks: one click on each of 5,000 links (new rings, as after an eviction),
#    sent while the lock is held, then released: the links wake in one batch;
# 2. idle --idle seconds (30; 5 with --quick), then the same 5,000 links wake at once;
#    (each is hit at least once: wrk runs of 1 s until the worker captured 5,000 clicks)
# 3. backlog: with the lock held, --backlog (500,000) clicks are sent as fast as wrk can;
#    the lock is released and the backlog drains (time to drain, clicks/s). The
#    collector goes on receiving and enriching while its writes wait for the lock (up to
#    its queue bound), so what drains after the release is mostly the write itself.
# Then the live counters' memory: LiveCounters fed on simulated time (its own clock comes
# from the clicks' seconds): --ever links clicked once, an hour later only 1,000 links
# active for another hour: links kept and bytes held (tracemalloc) vs links ever clicked;
# and the cost of one LiveCounters.add() of 5,000 links waking after 1,000 s idle, and
# after an hour (evicted: new rings), in-process.
# Target: no tick later than 5 ms; live counters' memory bounded by the active links.
# Results: loadtests/results/stalls-latest.json (--quick: stalls-quick.json); a full run
# rewrites its section of docs/benchmarks.md.
#   python -m loadtests.stalls [--quick] [--backlog 500000] [--idle 30]
from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any, Final

from edge import catalog
from edge.live import LiveCounters
from loadtests import common, geodb, machine, workload

NAME: Final = "stalls.py"
GROUP: Final = "stall-group"
GROUP_LINKS: Final = 1000
WAKE_LINKS: Final = 5000
STALL_TARGET_MS: Final = 5.0
TOKEN: Final = "stalls-benchmark-token-0123456789abcdef"
LOCK_S: Final = 7.0  # longer than the collector's busy timeout (5 s): its write gives up


def ensure_db(links: int) -> Path:
    path = common.CACHE / f"stalls-links-{links}.db"
    if path.exists():
        return workload.ensure_schema(path)
    print(f"stalls: creating {links:,} links in {path.name}", flush=True)
    tmp = path.with_name(path.name + ".tmp")
    common.remove_db(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = catalog.open_db(str(tmp))
    catalog.add_domain(conn, workload.HOST, default=True)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(links):
        campaign = GROUP if i < GROUP_LINKS else f"other-{i % 20}"
        catalog.create_link(
            conn, {"url": f"https://www.example.com/s/{i}", "campaign": campaign}, slug=f"s{i}"
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    tmp.replace(path)
    common.remove_db(tmp)
    return path


class Poller(threading.Thread):
    """Every second: /api/live?top=100, the group's stats, /metrics (the loop lag)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.times: dict[str, list[float]] = {"live": [], "group_stats": [], "metrics": []}
        self.errors: list[str] = []
        self.lag_samples: list[tuple[float, float]] = []  # (monotonic, recent max s)
        self.last_metrics: dict[str, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        paths = {
            "live": "/api/live?top=100",
            "group_stats": f"/api/stats?campaign={GROUP}",
        }
        while not self._stop_event.is_set():
            started = time.monotonic()
            for name, path in paths.items():
                self._get(name, path)
            self.sample()
            left = 1.0 - (time.monotonic() - started)
            self._stop_event.wait(max(0.05, left))

    def _get(self, name: str, path: str) -> bytes | None:
        try:
            status, body, took = common.http_get(self.port, path, TOKEN, timeout_s=30)
        except OSError as exc:
            self.errors.append(f"{name}: {exc}")
            return None
        if status != 200:
            self.errors.append(f"{name}: {status} {body[:200]!r}")
            return None
        self.times[name].append(took)
        return body

    def sample(self) -> dict[str, float]:
        body = self._get("metrics", "/metrics")
        if body is None:
            return self.last_metrics
        m = common.prometheus(body.decode())
        lag = m.get('linkedge_loop_lag_recent_max_seconds{process="collector"}')
        if lag is not None:
            self.lag_samples.append((time.monotonic(), lag))
        self.last_metrics = m
        return m

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


def stall_counts(m: dict[str, float]) -> dict[str, float]:
    prefix = 'linkedge_loop_stalls_total{process="collector",over="'
    return {k[len(prefix) : -2]: v for k, v in m.items() if k.startswith(prefix)}


class DbLock:
    """A write lock on the database from another connection (what a busy disk or a
    long transaction elsewhere does): the collector's writes wait, its clicks queue."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(str(db), timeout=30, isolation_level=None)

    def __enter__(self) -> DbLock:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


def phase(
    name: str, poller: Poller, fn: Any, gap_s: float, settle_s: float = 2.0
) -> dict[str, Any]:
    """Run fn(); the collector's late ticks during it (and settle_s after) from /metrics.
    It starts gap_s after the previous one: with 20 s or more, the recent max (10-20 s)
    sampled during this phase holds only this phase's ticks."""
    time.sleep(gap_s)
    before = stall_counts(poller.sample())
    t0 = time.monotonic()
    extra = fn() or {}
    time.sleep(settle_s)
    t1 = time.monotonic()
    after = stall_counts(poller.sample())
    worst = max((v for t, v in poller.lag_samples if t0 <= t <= t1 + 0.5), default=None)
    out = {
        "phase": name,
        "seconds": round(t1 - t0, 1),
        "ticks_over": {k: int(after.get(k, 0) - v) for k, v in before.items()},
        "worst_recent_ms": round(worst * 1000, 2) if worst is not None else None,
        **extra,
    }
    print(
        f"stalls: {name}: {out['seconds']} s, ticks over {out['ticks_over']}, "
        f"worst recent {out['worst_recent_ms']} ms",
        flush=True,
    )
    return out


def captured(m: dict[str, float]) -> int:
    return int(sum(v for k, v in m.items() if k.startswith("linkedge_worker_captured")))


def wait_written(db: Path, want: int, timeout_s: float) -> tuple[int, float]:
    """Poll the rows in `clicks` until `want`; (rows, seconds it took)."""
    t0 = time.monotonic()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = 0
        while time.monotonic() - t0 < timeout_s:
            try:
                rows = conn.execute("SELECT count(*) FROM clicks").fetchone()[0]
            except sqlite3.Error:
                rows = 0
            if rows >= want:
                break
            time.sleep(0.1)
        return rows, time.monotonic() - t0
    finally:
        conn.close()


def live_memory(ever: int, active: int) -> dict[str, Any]:
    """LiveCounters on simulated time: `ever` links clicked in the first hour, then only
    `active` links for another hour. Links kept and bytes held along the way."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    live = LiveCounters()
    t = 1_790_000_000
    per_step = max(1, ever // 360)  # the first hour in 10 s steps
    peak_links = 0
    for step in range(360):
        s = t + step * 10
        first = step * per_step
        live.add([(i, s, 1, 1) for i in range(first, min(ever, first + per_step))])
        peak_links = max(peak_links, len(live.links))
    at_hour = tracemalloc.get_traced_memory()[0] - base
    for step in range(360, 760):
        s = t + step * 10
        live.add([(ever + i, s, 1, 1) for i in range(active)])
    gc.collect()
    end = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "links_ever_clicked": ever + active,
        "active_last_hour": active,
        "links_kept": len(live.links),
        "evicted": live.evicted,
        "bytes_after_first_hour": at_hour,
        "bytes_at_end": end,
        "bytes_per_kept_link": round(end / max(1, len(live.links))),
    }


def add_cost(links: int, idle_s: int) -> float:
    """ms of one LiveCounters.add() of `links` links idle for idle_s (evicted past an hour)."""
    live = LiveCounters()
    t = 1_790_000_000
    live.add([(i, t, 1, 1) for i in range(links)])
    if idle_s > 3600:  # what the feeds in between do: the idle links are evicted
        for k in range(1, links // 2000 + 3):
            live.add([(links + 1, t + 3601 + k, 1, 1)])
    batch = [(i, t + idle_s + 10, 1, 1) for i in range(links)]
    t0 = time.perf_counter()
    live.add(batch)
    return (time.perf_counter() - t0) * 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.stalls",
        description="The collector's worst event-loop stall while links wake, /api/live and a "
        "group's stats are polled, and a click backlog drains; live counters' memory.",
    )
    p.add_argument("--links", type=int, default=6000)
    p.add_argument("--backlog", type=float, default=5e5, help="clicks (default 500000)")
    p.add_argument("--idle", type=float, default=30.0, help="seconds before the wake (30)")
    p.add_argument("--gap", type=float, default=21.0, help="quiet seconds before each phase (21)")
    p.add_argument("--ever", type=int, default=10_000, help="links clicked, memory part")
    p.add_argument("--quick", action="store_true", help="small backlog, short idle (~1 min)")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        # with gaps under 20 s a phase's worst may be the previous one's
        args.backlog, args.idle, args.ever, args.no_docs = 3e4, 5.0, 3000, True
        args.gap = 2.0
    return args


def docs_text(res: dict[str, Any] | None, command: str) -> str:
    head = [
        "## Event-loop stalls in the collector (loadtests/stalls.py, issue 10)",
        "",
        "```",
        command,
        "```",
        "",
        textwrap.fill(
            "(`make bench-stalls`; `--quick` for a short smoke run that leaves this page "
            "alone.) The stall is how late the collector's 10 ms LoopLag timer ran (its "
            "/metrics); how each phase is made: the header of loadtests/stalls.py. Target: "
            "no tick over 5 ms; live counters' memory bounded by the links active in the "
            "last hour.",
            90,
        ),
        "",
    ]
    if res is None:
        return "\n".join([*head, "Not yet measured on a quiet machine."])
    return "\n".join([*head, f"Run {res['started']} - {res['finished']}.", "", table(res), ""])


def table(res: dict[str, Any]) -> str:
    rows = [
        f"Machine: {res['machine']['cpu_model']}, {res['machine']['cores']} cores; load average "
        f"at start {res['loadavg_at_start'][0]}; collector on core 0, worker, wrk and the "
        "pollers on core 1.",
        "",
        "| phase | s | ticks > 5 ms | > 50 ms | > 500 ms | worst (recent max) | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in res["phases"]:
        t = p["ticks_over"]
        note = p.get("note", "")
        rows.append(
            f"| {p['phase']} | {p['seconds']} | {t.get('5ms', '?')} | {t.get('50ms', '?')} | "
            f"{t.get('500ms', '?')} | {p['worst_recent_ms']} ms | {note} |"
        )
    polls = res["polls"]
    rows += [
        "",
        f"Worst collector tick over the whole run: {res['worst_ms']} ms (target <= "
        f"{STALL_TARGET_MS:g} ms: {'PASS' if res['pass'] else 'FAIL'}).",
        "",
        "| polled every second | n | p50 ms | max ms |",
        "|---|---|---|---|",
    ]
    rows += [f"| {k} | {v['n']} | {v['p50_ms']} | {v['max_ms']} |" for k, v in polls.items()]
    mem = res["live_memory"]
    rows += [
        "",
        f"Live counters (in-process, simulated time): {mem['links_ever_clicked']:,} links "
        f"ever clicked, {mem['active_last_hour']:,} active in the last hour: "
        f"{mem['links_kept']:,} kept, {mem['bytes_at_end'] / 1e6:.1f} MB held "
        f"({mem['bytes_per_kept_link']:,} B a kept link; "
        f"{mem['bytes_after_first_hour'] / 1e6:.1f} MB after the first hour). "
        f"One add() of {WAKE_LINKS:,} links waking after 1,000 s idle: "
        f"{res['add_ms']['idle_1000s']:.1f} ms; after an hour (evicted, new rings): "
        f"{res['add_ms']['evicted']:.1f} ms. Collector RSS: {res['collector_rss_mb']}.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m loadtests.stalls " + " ".join(sys.argv[1:] if argv is None else argv)
    machine.ensure_tools()
    common.pin_self(common.CLIENT_CORE)
    res: dict[str, Any] = {
        "command": command.strip(),
        "started": common.utc_now(),
        "machine": machine.describe(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings": vars(args),
    }
    mmdb = common.CACHE / f"city-{common.GEO_NETWORKS}.mmdb"
    networks = geodb.ensure(mmdb, common.GEO_NETWORKS)
    links_db = ensure_db(args.links)
    people = workload.visitors(geodb.client_ips(networks, common.CLIENT_IPS))
    wake_data = common.CACHE / "stalls" / "wake.tsv"
    slugs = [f"s{i}" for i in range(WAKE_LINKS)]
    workload.write_wrk_data(wake_data, slugs, people, min_requests=WAKE_LINKS)
    backlog = int(args.backlog)
    options = [
        "--admin",
        "127.0.0.1:0",
        "--trusted-proxy",
        "127.0.0.1/32",
        "--geoip",
        str(mmdb),
        "--workers",
        "1",
        "--max-queued-clicks",
        str(backlog + 100_000),
        "--max-unacked-clicks",
        str(backlog + 100_000),
        "--max-unacked-bytes",
        str(2 * 1024**3),
    ]
    run = common.start_linkedge(
        "stalls",
        links_db,
        common.CACHE / "stalls",
        options,
        env={"LINKEDGE_ADMIN_TOKEN": TOKEN},
    )
    assert run.db is not None
    db = run.db
    by_role = common.roles(run.proc.pid)
    for pid in by_role["workers"]:
        os.sched_setaffinity(pid, {int(common.CLIENT_CORE)})
    collector = by_role["collector"][0]
    poller = Poller(run.extra["admin_port"])
    lock = DbLock(run.db)
    phases: list[dict[str, Any]] = []
    rss: dict[str, float] = {"start": round(machine.rss_mb(collector)["rss"], 1)}
    ok = True
    gap = args.gap

    def burst(data: Path, until: int, max_s: float) -> int:
        """wrk closed loop, in 1 s runs, until the worker captured `until` clicks."""
        t0 = time.monotonic()
        got = captured(poller.sample())
        offset = 0
        while got < until and time.monotonic() - t0 < max_s:
            common.run_wrk(run.port, data, "keep", 1, 64, offset)
            offset += 7919
            got = captured(poller.sample())
        return got

    def wake(label: str) -> dict[str, Any]:
        before = captured(poller.sample())
        with lock:
            burst(wake_data, before + WAKE_LINKS, 30)
            time.sleep(LOCK_S)
        rows, took = wait_written(db, captured(poller.sample()), 60)
        return {"note": f"{label}; written {rows:,} rows {took:.1f} s after the lock"}

    try:
        poller.start()
        time.sleep(3)
        phases.append(phase("idle (baseline)", poller, lambda: time.sleep(3), gap))
        first = f"first clicks of {WAKE_LINKS:,} links"
        phases.append(phase(first, poller, lambda: wake("new"), gap))
        rss["after_first_clicks"] = round(machine.rss_mb(collector)["rss"], 1)
        phases.append(
            phase(
                f"{WAKE_LINKS:,} links idle {args.idle:g} s wake at once",
                poller,
                lambda: wake(f"idle {args.idle:g} s"),
                max(args.idle, gap),
            )
        )

        def drain() -> dict[str, Any]:
            start = captured(poller.sample())
            with lock:
                t_fill = time.monotonic()
                got = burst(wake_data, start + backlog, 600)
                fill_s = time.monotonic() - t_fill
            t0 = time.monotonic()
            rows, took = wait_written(db, got, 600)
            n = got - start
            return {
                "clicks": n,
                "fill_s": round(fill_s, 1),
                "drain_s": round(took, 1),
                "drain_cps": round(n / took) if took else None,
                "note": f"{n:,} clicks queued in {fill_s:.0f} s, drained in {took:.1f} s "
                f"({n / max(took, 1e-9):,.0f}/s), rows {rows:,}",
                "_t0": t0,
            }

        p = phase(f"backlog of {backlog:,} clicks drained", poller, drain, gap, settle_s=3.0)
        p.pop("_t0", None)
        phases.append(p)
        rss["after_backlog"] = round(machine.rss_mb(collector)["rss"], 1)
        poller.stop()
    finally:
        poller.stop()
        lock.close()
        stopped = common.stop_server(run)
        common.remove_db(run.db)
    res["server"] = stopped
    ok = ok and stopped.get("unwritten") == 0 and stopped.get("dropped") == 0
    res["phases"] = phases
    res["poll_errors"] = poller.errors[:20]
    res["polls"] = {
        k: {
            "n": len(v),
            "p50_ms": round(statistics.median(v) * 1000, 1) if v else None,
            "max_ms": round(max(v) * 1000, 1) if v else None,
        }
        for k, v in poller.times.items()
    }
    lags = [v for _t, v in poller.lag_samples]
    res["worst_ms"] = round(max(lags) * 1000, 2) if lags else None
    over = sum(p["ticks_over"].get("5ms", 0) for p in phases)
    res["pass"] = res["worst_ms"] is not None and res["worst_ms"] <= STALL_TARGET_MS and not over
    res["collector_rss_mb"] = rss
    print("stalls: live counters' memory (in-process, simulated time)", flush=True)
    res["live_memory"] = live_memory(args.ever, GROUP_LINKS)
    res["add_ms"] = {
        "idle_1000s": round(add_cost(WAKE_LINKS, 1000), 2),
        "evicted": round(add_cost(WAKE_LINKS, 3700), 2),
    }
    res["finished"] = common.utc_now()
    text = table(res)
    print("\n" + text, flush=True)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    data = json.dumps(res, indent=2, default=str) + "\n"
    paths = (
        [common.RESULTS / "stalls-quick.json"]
        if args.quick
        else [
            common.RESULTS / f"stalls-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json",
            common.RESULTS / "stalls-latest.json",
        ]
    )
    for path in paths:
        path.write_text(data)
        print(f"stalls: wrote {path.relative_to(common.ROOT)}", flush=True)
    if not args.no_docs:
        page = common.replace_docs_section(NAME, docs_text(res, res["command"]))
        print(f"stalls: wrote {page.relative_to(common.ROOT)}", flush=True)
    return 0 if ok and not poller.errors else 1


if __name__ == "__main__":
    sys.exit(main())
