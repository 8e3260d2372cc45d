# loadtests/scale: how linkedge behaves with many links and many stored clicks.
#
# Links in memory: `linkedge serve` (pinned to core 0, GeoIP on, admin off) is started on a
# copy of a database holding N links (created with edge.catalog.create_link, cached); load
# time is from process start to its "listening" line, RSS (VmRSS) is read from /proc once
# it listens and has settled for 0.5 s, peak RSS (VmHWM) alongside; one probe request must
# get its 302. Median of `repeats` starts.
#
# Stats queries: a database with the bench's 10,000 links and N synthetic clicks spread
# evenly over the 30 days before a fixed end time, links chosen Zipf-like (the busiest link
# gets ~10% of the clicks, as real campaigns do), rows in rollups.CLICK_COLUMNS order with
# field values produced by the real Enricher from the bench's visitors; inserted with
# executemany in 500k-row transactions, then the rollups are filled by edge.clicks'
# own catch-up (`_catch_up`, what a restarted server runs). Cached under
# loadtests/.cache/. The queries are admin/stats.py's public functions: a link's stats
# for the last 24 h (`selection_stats`, on the busiest link and on a median one) and a
# campaign group-by (`group_stats(group_by="campaign")`) over the last 24 h (the API's
# default range) and over 30 days; each timed `runs` times after one warm-up run on a
# fresh connection (p50 / p95). When admin/stats.py is missing, equivalent SQL against
# the rollup tables is timed instead and the report says so.
#   python -m loadtests.scale [--links 1e5,1e6] [--clicks 1e6,1e7]
from __future__ import annotations

import argparse
import bisect
import inspect
import itertools
import json
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

from admin import timerange
from edge import catalog, rollups, schema
from edge.db import Transaction, connect
from loadtests import common, geodb, machine, pipeline, workload

STATS_LINKS: Final = 10_000
DAYS: Final = 30
ZIPF_S: Final = 1.0
CHUNK: Final = 500_000
# A fixed end time, so a cached database and the queries agree on "the last 24 hours".
END_S: Final = 1_790_000_000 // 3600 * 3600


# --- links in memory -------------------------------------------------------------------


def link_load(count: int, cache: Path, mmdb: Path, repeats: int = 3) -> dict[str, Any]:
    src = workload.ensure_links_db(cache, count)
    work = cache / "scale"
    work.mkdir(parents=True, exist_ok=True)
    loads, rss, hwm = [], [], []
    slug = _first_slug(src)
    for _ in range(repeats):
        db = workload.copy_db(src, work / "links.db")
        out = work / "stdout.log"
        cmd = [
            machine.tool_path("taskset"),
            "-c",
            common.SERVER_CORE,
            *common.linkedge_cmd(),
            "serve",
            "--db",
            str(db),
            "--edge",
            "127.0.0.1:0",
            "--no-admin-enabled",
            "--geoip",
            str(mmdb),
        ]
        machine.wait_quiet()
        with out.open("wb") as f, (work / "stderr.log").open("wb") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=f, stderr=err, start_new_session=True)
            try:
                m = common.wait_for_line(out, common.LISTENING, proc, timeout_s=300)
                loads.append(time.monotonic() - t0)
                time.sleep(0.5)
                mem = machine.rss_mb(proc.pid)
                rss.append(mem["rss"])
                hwm.append(mem["hwm"])
                status, _ = common.probe(int(m.group(1)), slug)
                if status != 302:
                    raise RuntimeError(f"probe of /{slug} got {status} with {count} links")
            finally:
                proc.terminate()
                proc.wait(60)
    result = {
        "links": count,
        "load_s": statistics.median(loads),
        "load_s_all": [round(x, 3) for x in loads],
        "rss_mb": statistics.median(rss),
        "hwm_mb": statistics.median(hwm),
        "db_mb": src.stat().st_size / 1e6,
    }
    print(
        f"scale: {count:,} links: loaded in {result['load_s']:.2f} s, RSS "
        f"{result['rss_mb']:.0f} MB (peak {result['hwm_mb']:.0f} MB)",
        flush=True,
    )
    return result


def _first_slug(db: Path) -> str:
    conn = sqlite3.connect(str(db))
    try:
        return str(conn.execute("SELECT slug FROM links ORDER BY id LIMIT 1").fetchone()[0])
    finally:
        conn.close()


# --- synthetic clicks --------------------------------------------------------------------


def _profiles(links_db: Path, mmdb: Path, count: int = 5000) -> list[tuple[Any, ...]]:
    """Enriched field values (everything after ts, link_id, visitor_id) from the real
    Enricher, for the bench's visitors: what the pipeline writes for real traffic."""
    from edge.clicks import Enricher
    from edge.config import Config
    from geo.geoip import GeoDatabase

    networks = geodb.ensure(mmdb)
    people = workload.visitors(geodb.client_ips(networks, 4000))
    raw = pipeline.raw_clicks(pipeline.link_ids(links_db)[:100], people, count, 9, float(END_S))
    geo = GeoDatabase(str(mmdb))
    enricher = Enricher(Config(db_path=str(links_db)), geo)
    salt = b"\0" * 32
    day = END_S // 86400
    params = inspect.signature(enricher.enrich).parameters
    rows, _ = enricher.enrich(raw, {day: salt, day - 1: salt} if "salts" in params else salt)
    geo.close()
    return [tuple(r[3:]) for r in rows]


def _visitor_pool(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(8) for _ in range(count)]


def create_clicks_db(path: Path, links_db: Path, mmdb: Path, clicks: int, seed: int = 17) -> None:
    tmp = path.with_name(path.name + ".tmp")
    workload.copy_db(links_db, tmp)
    conn = connect(str(tmp))
    schema.migrate(conn)
    link_ids = [r[0] for r in conn.execute("SELECT id FROM links ORDER BY id")]
    rng = random.Random(seed)
    ranked = link_ids[:]
    rng.shuffle(ranked)  # the busiest links are not simply the first ones created
    cum = list(itertools.accumulate(1 / (i + 1) ** ZIPF_S for i in range(len(ranked))))
    total_w = cum[-1]
    profiles = _profiles(links_db, mmdb)
    n_profiles = len(profiles)
    visitors = _visitor_pool(max(1000, clicks // 5), seed)
    n_visitors = len(visitors)
    start_ms = (END_S - DAYS * 86400) * 1000
    step = DAYS * 86400 * 1000 / clicks
    t0 = time.monotonic()
    rand = rng.random
    dnt = rollups.CLICK_COLUMNS.index("dnt") - 3  # profiles hold the columns after visitor_id
    sql = (
        f"INSERT INTO clicks ({', '.join(rollups.CLICK_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in rollups.CLICK_COLUMNS)})"
    )
    for first in range(0, clicks, CHUNK):
        rows = []
        for i in range(first, min(first + CHUNK, clicks)):
            v = int(rand() * n_visitors)
            profile = profiles[v % n_profiles]
            link = ranked[bisect.bisect(cum, rand() * total_w)]
            vid = None if profile[dnt] else visitors[v]  # DNT clicks carry no visitor id
            rows.append((int(start_ms + i * step), link, vid, *profile))
        with Transaction(conn):
            conn.executemany(sql, rows)
        done = min(first + CHUNK, clicks)
        print(
            f"scale: {done:,}/{clicks:,} synthetic clicks ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    from edge.clicks import _catch_up

    t1 = time.monotonic()
    rolled = _catch_up(conn)
    print(f"scale: rolled up {rolled:,} clicks in {time.monotonic() - t1:.0f} s", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()
    tmp.replace(path)
    for suffix in ("-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    meta = {
        "clicks": clicks,
        "generate_s": round(t1 - t0, 1),
        "rollup_s": round(time.monotonic() - t1, 1),
        "top_link": ranked[0],
        "median_link": ranked[len(ranked) // 2],
        "end_s": END_S,
    }
    path.with_suffix(".json").write_text(json.dumps(meta))


def ensure_clicks_db(cache: Path, clicks: int) -> tuple[Path, dict[str, Any]]:
    path = cache / f"stats-{clicks}.db"
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        links_db = workload.ensure_links_db(cache, STATS_LINKS)
        mmdb = cache / f"city-{common.GEO_NETWORKS}.mmdb"
        geodb.ensure(mmdb, common.GEO_NETWORKS)
        print(f"scale: generating {clicks:,} synthetic clicks into {path.name}", flush=True)
        create_clicks_db(path, links_db, mmdb, clicks)
    workload.ensure_schema(path)
    return path, json.loads(meta_path.read_text())


# --- stats queries -----------------------------------------------------------------------


def _queries(conn: sqlite3.Connection, meta: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """name -> (callable, source): admin/stats.py's functions, or equivalent SQL."""
    end = float(meta["end_s"])
    top_link, median_link = meta["top_link"], meta["median_link"]
    campaign = "spring-sale"
    try:
        from admin import stats

        day = timerange.time_range(None, None, None, None, end)
        month = timerange.time_range(f"-{DAYS}d", None, None, None, end)
        # a zone whose hours are not UTC hours: its hour buckets are read from minute rows
        kolkata = timerange.time_range(None, None, None, "Asia/Kolkata", end)
        src = "admin.stats"
        return {
            "link stats 24 h (busiest link)": (
                lambda: stats.selection_stats(conn, catalog.LinkFilter(link_id=top_link), day),
                f"{src}.selection_stats",
            ),
            "link stats 24 h (median link)": (
                lambda: stats.selection_stats(conn, catalog.LinkFilter(link_id=median_link), day),
                f"{src}.selection_stats",
            ),
            "campaign stats 24 h (one campaign)": (
                lambda: stats.selection_stats(conn, catalog.LinkFilter(campaign=campaign), day),
                f"{src}.selection_stats",
            ),
            "group by campaign 24 h (all links)": (
                lambda: stats.group_stats(conn, catalog.LinkFilter(), "campaign", day),
                f"{src}.group_stats",
            ),
            "group by campaign 30 d (all links)": (
                lambda: stats.group_stats(conn, catalog.LinkFilter(), "campaign", month),
                f"{src}.group_stats",
            ),
            "group by link 24 h (top 100 of all links)": (
                lambda: stats.group_stats(conn, catalog.LinkFilter(), "link", day),
                f"{src}.group_stats",
            ),
            "group by campaign 24 h, Asia/Kolkata (all links)": (
                lambda: stats.group_stats(conn, catalog.LinkFilter(), "campaign", kolkata),
                f"{src}.group_stats",
            ),
        }
    except (ImportError, AttributeError, TypeError) as exc:
        reason = f"equivalent SQL (admin.stats unusable: {type(exc).__name__})"
    return _fallback_queries(conn, meta, reason)


def _fallback_queries(
    conn: sqlite3.Connection, meta: dict[str, Any], source: str
) -> dict[str, tuple[Any, str]]:
    end = int(meta["end_s"])
    m0, m1 = (end - 86400) // 60, end // 60 - 1
    h0, h1 = (end - 86400) // 3600, end // 3600 - 1
    d0, d1 = (end - 86400) // 86400, end // 86400

    def link(link_id: int) -> Any:
        def q() -> Any:
            series = conn.execute(
                "SELECT minute, clicks, humans FROM link_minute "
                "WHERE link_id = ? AND minute BETWEEN ? AND ?",
                (link_id, m0, m1),
            ).fetchall()
            dims = conn.execute(
                "SELECT dim, value, sum(clicks), sum(humans) FROM link_dim_hour "
                "WHERE link_id = ? AND hour BETWEEN ? AND ? GROUP BY dim, value",
                (link_id, h0, h1),
            ).fetchall()
            uniq = conn.execute(
                "SELECT ids FROM link_day_visitors WHERE link_id = ? AND day BETWEEN ? AND ?",
                (link_id, d0, d1),
            ).fetchall()
            return series, dims, uniq

        return q

    def group(m_first: int) -> Any:
        return lambda: conn.execute(
            "SELECT coalesce(l.campaign, '') AS k, sum(m.clicks), sum(m.humans) "
            "FROM links l CROSS JOIN link_minute m ON m.link_id = l.id "
            "AND m.minute BETWEEN ? AND ? GROUP BY k",
            (m_first, m1),
        ).fetchall()

    return {
        "link stats 24 h (busiest link)": (link(meta["top_link"]), source),
        "link stats 24 h (median link)": (link(meta["median_link"]), source),
        "group by campaign 24 h (all links)": (group(m0), source),
        "group by campaign 30 d (all links)": (group((end - DAYS * 86400) // 60), source),
    }


def stats_latency(
    clicks: int, cache: Path, runs: int = 30, budget_s: float = 60.0
) -> dict[str, Any]:
    db, meta = ensure_clicks_db(cache, clicks)
    conn = connect(str(db))
    try:
        sizes = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in (
                "clicks",
                "link_minute",
                "link_hour",
                "link_dim_hour",
                "link_day_visitors",
                "group_minute",
                "group_hour",
                "group_day_visitors",
            )
        }
        out: dict[str, Any] = {
            "clicks": clicks,
            "db_mb": db.stat().st_size / 1e6,
            "rows": sizes,
            "generate_s": meta.get("generate_s"),
            "rollup_s": meta.get("rollup_s"),
            "queries": {},
        }
        for name, (fn, source) in _queries(conn, meta).items():
            fn()  # warm the page cache and SQLite's statement cache
            times = []
            deadline = time.monotonic() + budget_s
            while len(times) < runs and time.monotonic() < deadline:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            out["queries"][name] = {
                "p50_ms": statistics.median(times),
                "p95_ms": times[min(len(times) - 1, int(len(times) * 0.95))],
                "runs": len(times),
                "source": source,
            }
            print(
                f"scale: {clicks:,} clicks: {name}: p50 {out['queries'][name]['p50_ms']:.1f} ms, "
                f"p95 {out['queries'][name]['p95_ms']:.1f} ms",
                flush=True,
            )
        return out
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.scale",
        description="RSS and load time for many links; stats query latency on many clicks.",
    )
    p.add_argument("--links", default="1e5,1e6", help="link counts for RSS / load time")
    p.add_argument("--clicks", default="1e6,1e7", help="synthetic clicks for stats latency")
    p.add_argument("--only", default="links,stats")
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    cache = common.CACHE
    mmdb = cache / f"city-{common.GEO_NETWORKS}.mmdb"
    geodb.ensure(mmdb, common.GEO_NETWORKS)
    out: dict[str, Any] = {}
    if "links" in parts:
        out["scale_links"] = [link_load(n, cache, mmdb) for n in common.counts(args.links)]
    if "stats" in parts:
        out["stats"] = [stats_latency(n, cache) for n in common.counts(args.clicks)]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
