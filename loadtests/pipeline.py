# loadtests/pipeline: throughput of the click pipeline alone, without HTTP.
#
# Imports edge.clicks' own classes and drives them on one thread, the way the flusher does:
# raw captured clicks (the tuples the edge appends) in batches -> Enricher.enrich (GeoIP on
# the realistic City .mmdb, user agent, bot kind, referrer, language, visitor hash) ->
# _write_batch into a fresh copy of the bench's links DB (one transaction per batch, the
# rollups written when ClickRecorder.flush would write them: see RollupPolicy) ->
# LiveCounters.add. Each stage is timed with
# perf_counter; clicks/s = clicks / time. Two traffic shapes:
# - realistic: the bench's visitors (4,000 client IPs, their user agents), every link;
# - cold: every click from a new IP address (GeoIP cache useless), same user agents.
# Cache hit rates come from the GeoDatabase's and the UA parser's own counters.
#   python -m loadtests.pipeline [--clicks 500000] [--batch 10000]
from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Final

from edge import clicks as clicks_mod
from edge import rollups, schema, visitors
from edge.clicks import Enricher, _write_batch
from edge.config import Config
from edge.db import connect
from edge.live import LiveCounters
from geo.geoip import GeoDatabase
from loadtests import common, geodb, workload

# A flush every 0.1 s at 100k clicks/s carries 10,000 clicks; at 20k/s, 2,000.
DEFAULT_BATCH: Final = 10_000
RATE_PER_S: Final = 100_000  # click timestamps advance at this rate
FLAG_DNT: Final = 4


def raw_clicks(
    links: list[tuple[int, int]],
    people: list[workload.Visitor],
    count: int,
    seed: int,
    start: float,
) -> list[tuple[Any, ...]]:
    """What the edge captures, for (link id, domain id) pairs: (time, link id, domain id,
    ip, UA, referer, Accept-Language, flags)."""
    rng = random.Random(seed)
    ua = {p.user_agent: p.user_agent.encode() for p in people}
    out = []
    n_links = len(links)
    for i in range(count):
        p = people[i % len(people)] if len(people) >= count else rng.choice(people)
        ref = b"" if p.bot else workload.random_referer(rng).encode()
        out.append(
            (
                start + i / RATE_PER_S,
                *links[i % n_links],
                p.ip,
                ua[p.user_agent],
                ref,
                p.language.encode(),
                FLAG_DNT if p.dnt else 0,
            )
        )
    return out


class RollupPolicy:
    """When ClickRecorder.flush rolls up, replayed on simulated time: once
    ROLLUP_INTERVAL_S has passed and the last roll-up's (measured) duration is at most
    ROLLUP_BUDGET of the time since, or ROLLUP_MAX_INTERVAL_S has passed, or
    ROLLUP_MAX_CLICKS wait (edge.clicks' constants; at most that many per roll-up). Time
    advances by batch / RATE_PER_S per batch: clicks arriving at 100k/s.
    """

    def __init__(self, flush_s: float) -> None:
        self.flush_s = flush_s
        self.elapsed = 0.0
        self.last_cost_s = 0.0
        self.unrolled = 0

    def due(self, batch: int) -> bool:
        self.elapsed += self.flush_s
        self.unrolled += batch
        e = self.elapsed
        wait = max(clicks_mod.ROLLUP_INTERVAL_S, self.last_cost_s / clicks_mod.ROLLUP_BUDGET)
        return (
            self.unrolled >= clicks_mod.ROLLUP_MAX_CLICKS
            or e >= clicks_mod.ROLLUP_MAX_INTERVAL_S
            or e >= wait
        )

    def rolled_up(self, cost_s: float, rolled: int) -> None:
        self.elapsed = 0.0
        self.last_cost_s = cost_s
        self.unrolled = max(0, self.unrolled - rolled)


def measure(
    links_db: Path,
    mmdb: Path,
    clicks: list[tuple[Any, ...]],
    work: Path,
    batch: int,
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    db = workload.copy_db(links_db, work / "pipeline.db")
    conn = connect(str(db))
    schema.migrate(conn)
    geo = GeoDatabase(str(mmdb))
    enricher = Enricher(Config(db_path=str(db)), geo)
    live = LiveCounters()
    day = int(clicks[0][0]) // 86400
    salt = visitors.salt_for_day(conn, day, lambda: os.urandom(32))
    params = inspect.signature(enricher.enrich).parameters
    salt_arg: Any = {day: salt, day + 1: salt} if "salts" in params else salt
    state = rollups.RollupState()
    policy = RollupPolicy(batch / RATE_PER_S)
    t_enrich = t_write = t_loop = 0.0
    written = rollup_writes = 0
    perf = time.perf_counter
    for start in range(0, len(clicks), batch):
        chunk = clicks[start : start + batch]
        t0 = perf()
        rows, agg = enricher.enrich(chunk, salt_arg)
        t1 = perf()
        due = policy.due(len(rows))
        first, last, rolled = _write_batch(
            conn, rows, {1: start + 1}, due, state, clicks_mod.ROLLUP_MAX_CLICKS
        )
        t2 = perf()
        if due:
            policy.rolled_up(t2 - t1, rolled)
        live.add(agg)
        t3 = perf()
        rollup_writes += due
        t_enrich += t1 - t0
        t_write += t2 - t1
        t_loop += t3 - t2
        written += last - first + 1
    t0 = perf()
    _write_batch(conn, [], {}, True, state)  # what close() does: the last roll-up
    t_write += perf() - t0
    rows_in_db = conn.execute("SELECT count(*) FROM clicks").fetchone()[0]
    sizes = {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("link_minute", "link_hour", "link_dim_hour", "link_day_visitors", "group_hour")
    }
    conn.close()
    total = t_enrich + t_write + t_loop
    n = len(clicks)
    ua = enricher.ua_parser
    ua_calls = getattr(ua, "hits", 0) + getattr(ua, "misses", 0)
    result = {
        "clicks": n,
        "written": written,
        "rows_in_db": rows_in_db,
        "rollup_writes": rollup_writes + 1,
        "rollup_rows": sizes,
        "distinct_ips": len({c[3] for c in clicks}),
        "distinct_uas": len({c[4] for c in clicks}),
        "total_cps": n / total,
        "enrich_cps": n / t_enrich,
        "write_cps": n / t_write,
        "loop_cps": n / t_loop if t_loop else None,
        "us_per_click": {
            "enrich": t_enrich / n * 1e6,
            "write": t_write / n * 1e6,
            "live_counters": t_loop / n * 1e6,
        },
        # Share of clicks answered without reading the .mmdb (the Enricher's per-batch
        # memo and the GeoDatabase's LRU both count as hits).
        "geo_hit_rate": 1 - (geo.lookups - geo.cache_hits) / n,
        # Enricher keeps its own UA cache in front of the parser: every parser call is a miss.
        "ua_hit_rate": 1 - ua_calls / n if ua_calls else 1 - len({c[4] for c in clicks}) / n,
    }
    geo.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return result


def run(
    links_db: Path, mmdb: Path, clicks: int, work: Path, batch: int = DEFAULT_BATCH
) -> dict[str, Any]:
    """Both traffic shapes; the dict bench.py stores under "pipeline"."""
    networks = geodb.ensure(mmdb)
    ids = link_ids(links_db)
    start = time.time()
    people = workload.visitors(geodb.client_ips(networks, 4000))
    realistic = raw_clicks(ids, people, clicks, 1, start)
    cold_n = min(clicks, 200_000)
    cold_people = workload.visitors(geodb.client_ips(networks, cold_n, seed=23), seed=3)
    cold = raw_clicks(ids, cold_people, cold_n, 2, start)
    out: dict[str, Any] = {"batch": batch}
    for name, data in (("realistic", realistic), ("cold", cold)):
        r = measure(links_db, mmdb, data, work, batch)
        print(
            f"pipeline {name}: {r['total_cps']:,.0f} clicks/s (enrich {r['enrich_cps']:,.0f}/s, "
            f"write {r['write_cps']:,.0f}/s), geo hits {r['geo_hit_rate']:.1%}, "
            f"UA hits {r['ua_hit_rate']:.1%}",
            flush=True,
        )
        out[name] = r
    return out


def link_ids(db: Path) -> list[tuple[int, int]]:
    """(link id, domain id) of every link."""
    conn = connect(str(db))
    try:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, domain_id FROM links ORDER BY id")]
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.pipeline",
        description="Enrichment + SQLite write throughput of the click pipeline alone.",
    )
    p.add_argument("--clicks", type=float, default=5e5)
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    p.add_argument("--links", type=int, default=10_000)
    args = p.parse_args(argv)
    wl = common.prepare(args.links)
    result = run(wl.links_db, wl.mmdb, int(args.clicks), common.CACHE / "pipeline", args.batch)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
