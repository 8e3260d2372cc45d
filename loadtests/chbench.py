# loadtests/chbench: the ClickHouse click sink against SQLite, in one run.
#
# 1. Ingest: the collector's real pipeline (edge/clicks.ClickRecorder, GeoIP off) fed
#    worker batches of 2,000 raw clicks as fast as it takes them, once writing SQLite (the
#    default) and once ClickHouse (edge/chsink.py, click_sink_interval_s 1 s): clicks/s
#    from the first batch to the last acknowledgement as fast as it takes them, then the
#    lag (batch received -> its ACK: p50, p99, max) at an offered 10,000 clicks/s.
# 2. Stats at N clicks (default 10M): the same synthetic clicks (30 days, 1,000 links, a hot
#    link with ~30% of the clicks, 20 campaigns, tags, 2M visitors, 10% bots) written to a
#    SQLite file with its rollups and to ClickHouse; then the API's stats functions
#    (admin/stats.py vs admin/chstats.py) on the same questions, median of 5 after a warm-up,
#    with the answers compared (they must be equal).
# Needs clickhouse-server (started here on a free loopback port, data in loadtests/.cache).
#   python -m loadtests.chbench [--clicks 10000000] [--ingest 300000] [--rate 10000]
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from admin import stats, timerange  # noqa: E402
from admin.chstats import ClickHouseStats  # noqa: E402
from edge import catalog, rollups  # noqa: E402
from edge.chclient import AsyncClient, parse_sink_url  # noqa: E402
from edge.chsink import CLICK_TABLE_COLUMNS, INSERT_SQL, ClickHouseSink, RowEncoder  # noqa: E402
from edge.clicks import ClickRecorder, _catch_up  # noqa: E402
from edge.config import Config  # noqa: E402
from edge.db import Database, Transaction  # noqa: E402
from edge.live import LiveCounters  # noqa: E402
from geo.geoip import GeoDatabase  # noqa: E402
from tests.clickhouse_fixture import ClickHouseServer, server_binary  # noqa: E402

CACHE: Final = ROOT / "loadtests" / ".cache" / "chbench"
RESULTS: Final = ROOT / "loadtests" / "results"
LINKS: Final = 1_000
DAYS: Final = 30
END_S: Final = 1_767_225_600  # 2026-01-01T00:00Z: the data's last second
CHUNK: Final = 200_000
UAS: Final = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    b"(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    b"curl/8.5.0",
)
COUNTRIES: Final = ("US", "GB", "DE", "FR", "IN", "BR", "JP", None)
CITIES: Final = ("London", "Paris", "Berlin", "Mumbai", "Austin", None)
SOURCES: Final = ("direct", "twitter", "newsletter", "google", "qr")


def _links(conn: Any) -> list[int]:
    ids = []
    with Transaction(conn):
        for i in range(LINKS):
            fields: dict[str, Any] = {"url": f"https://example.com/{i}", "campaign": f"c{i % 20}"}
            if i % 5 == 0:
                fields["tags"] = ["launch", "paid"] if i % 10 == 0 else ["launch"]
            fields["utm_source"] = ("mail", "social", None)[i % 3]
            ids.append(int(catalog.create_link(conn, fields, slug=f"b{i}")["id"]))
    return ids


def _rows(ids: list[int], n: int, seed: int, start_ms: int, span_ms: int) -> list[tuple]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        link = ids[0] if r < 0.3 else ids[int(rng.paretovariate(1.2)) % LINKS]
        bot = rng.random() < 0.1
        row = dict.fromkeys(rollups.CLICK_COLUMNS)
        row.update(
            ts=start_ms + rng.randrange(span_ms),
            link_id=link,
            visitor_id=rng.randrange(2_000_000).to_bytes(8, "little"),
            bot_kind="crawler" if bot else None,
            method="GET",
            country=rng.choice(COUNTRIES),
            city=rng.choice(CITIES),
            device_type="bot" if bot else rng.choice(("desktop", "mobile")),
            os=rng.choice(("Windows", "iOS", "Android")),
            browser=rng.choice(("Chrome", "Safari", "Firefox")),
            referrer_host=rng.choice(("t.co", "news.example", None)),
            source=rng.choice(SOURCES),
            language=rng.choice(("en", "de", "fr", None)),
            dnt=0,
        )
        out.append(tuple(row[c] for c in rollups.CLICK_COLUMNS))
    out.sort(key=lambda r: r[0])
    return out


def build(clicks: int, server: ClickHouseServer) -> tuple[Path, str, list[int], dict[str, float]]:
    """The SQLite file (rollups done) and the ClickHouse database of `clicks` clicks."""
    db = CACHE / f"clicks-{clicks}.db"
    url = f"clickhouse+http://127.0.0.1:{server.http_port}/bench_{clicks}"
    done = CACHE / f"clicks-{clicks}.done"
    if done.exists():
        conn = catalog.open_db(str(db))
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM links ORDER BY id")]
        load = json.loads(done.read_text())
        if _columns(server, f"bench_{clicks}") != [n for n, _t in CLICK_TABLE_COLUMNS]:
            # the ClickHouse schema changed since the cache was made: load it again from
            # the cached SQLite file's clicks
            load["clickhouse_s"] = _reload(server, conn, url, clicks)
            done.write_text(json.dumps(load))
        conn.close()
        return db, url, ids, load
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    server.query(f"DROP DATABASE IF EXISTS bench_{clicks}")
    conn = catalog.open_db(str(db))
    ids = _links(conn)
    sqlite_s = ch_s = 0.0
    encoder = RowEncoder()

    async def ch_setup() -> AsyncClient:
        sink = ClickHouseSink(parse_sink_url(url), "bench")
        await sink.start()
        await sink.close()
        return AsyncClient(parse_sink_url(url))

    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(ch_setup())
    span_ms = DAYS * 86400 * 1000
    per_chunk = span_ms * CHUNK // clicks
    written = 0
    for i in range(0, clicks, CHUNK):
        n = min(CHUNK, clicks - i)
        rows = _rows(ids, n, i, (END_S * 1000 - span_ms) + written * span_ms // clicks, per_chunk)
        written += n
        t = time.perf_counter()
        with Transaction(conn):
            rollups.insert_clicks(conn, rows)
        _catch_up(conn)
        sqlite_s += time.perf_counter() - t
        t = time.perf_counter()
        body = encoder.encode(rows, [(1, i // CHUNK + 1, p) for p in range(n)])
        loop.run_until_complete(client.insert(INSERT_SQL, body))
        ch_s += time.perf_counter() - t
        print(f"  {written:,} clicks: SQLite {sqlite_s:.0f} s, ClickHouse {ch_s:.0f} s", flush=True)
    loop.run_until_complete(client.close())
    loop.close()
    conn.close()
    load = {"sqlite_s": round(sqlite_s, 1), "clickhouse_s": round(ch_s, 1)}
    done.write_text(json.dumps(load))
    return db, url, ids, load


def _columns(server: ClickHouseServer, database: str) -> list[str]:
    return server.query(
        f"SELECT name FROM system.columns WHERE database = '{database}' AND table = 'clicks'"
    ).split()


def _reload(server: ClickHouseServer, conn: Any, url: str, clicks: int) -> float:
    server.query(f"DROP DATABASE IF EXISTS bench_{clicks}")
    encoder = RowEncoder()

    async def go() -> float:
        sink = ClickHouseSink(parse_sink_url(url), "bench")
        await sink.start()
        await sink.close()
        client = AsyncClient(parse_sink_url(url))
        spent = 0.0
        cur = conn.execute(f"SELECT {', '.join(rollups.CLICK_COLUMNS)} FROM clicks ORDER BY id")
        n = 0
        while rows := cur.fetchmany(CHUNK):
            t = time.perf_counter()
            body = encoder.encode(rows, [(1, n // CHUNK + 1, p) for p in range(len(rows))])
            await client.insert(INSERT_SQL, body)
            spent += time.perf_counter() - t
            n += len(rows)
        await client.close()
        return round(spent, 1)

    return asyncio.run(go())


def time_stats(db: Path, url: str, ids: list[int]) -> list[dict[str, Any]]:
    conn = catalog.open_db(str(db))
    ch = ClickHouseStats(parse_sink_url(url))
    now = END_S
    hot, small = ids[0], ids[-7]

    def rng(frm: str, interval: str, tz: str = "UTC") -> timerange.TimeRange:
        return timerange.time_range(frm, None, interval, tz, now)

    questions = [
        (
            "hot link, 24 h by hour",
            "selection",
            catalog.LinkFilter(link_id=hot),
            rng("-24h", "hour"),
        ),
        ("hot link, 30 d by day", "selection", catalog.LinkFilter(link_id=hot), rng("-30d", "day")),
        (
            "small link, 7 d by day",
            "selection",
            catalog.LinkFilter(link_id=small),
            rng("-7d", "day"),
        ),
        (
            "all links, 7 d by day (Kolkata)",
            "selection",
            catalog.LinkFilter(),
            rng("-7d", "day", "Asia/Kolkata"),
        ),
        ("group by campaign, 30 d", "campaign", catalog.LinkFilter(), rng("-30d", "day")),
        ("group by tag, 7 d", "tag", catalog.LinkFilter(), rng("-7d", "day")),
        ("group by link, 7 d (top 100)", "link", catalog.LinkFilter(), rng("-7d", "day")),
    ]
    out = []
    for name, kind, flt, r in questions:
        row: dict[str, Any] = {"question": name}
        answers = []
        for label, reads in (("sqlite", stats), ("clickhouse", ch)):

            def ask(reads: Any = reads, kind: str = kind, flt: Any = flt, r: Any = r) -> Any:
                if kind == "selection":
                    return reads.selection_stats(conn, flt, r)
                return reads.group_stats(conn, flt, kind, r)

            answers.append(ask())  # warm-up (and the answer compared)
            times = []
            for _ in range(5):
                t = time.perf_counter()
                ask()
                times.append(time.perf_counter() - t)
            row[f"{label}_ms"] = round(statistics.median(times) * 1000, 1)
        row["equal"] = answers[0] == answers[1]
        row["ratio"] = round(row["clickhouse_ms"] / row["sqlite_ms"], 2)
        print(
            f"  {name}: SQLite {row['sqlite_ms']} ms, ClickHouse {row['clickhouse_ms']} ms"
            f" (x{row['ratio']}), equal: {row['equal']}",
            flush=True,
        )
        out.append(row)
    conn.close()
    return out


def _raw(n: int, ids: list[int]) -> list[tuple]:
    """Captured clicks (edge/capture.py's tuple): 50 links, 50,000 client addresses, three
    user agents (their time is set when a batch is sent)."""
    return [
        (
            0.0,
            ids[i % 50],
            1,
            f"198.51.{i % 250}.{i % 200}",
            UAS[i % 3],
            b"https://t.co/x",
            b"en-US",
            0,
            None,
            None,
        )
        for i in range(n)
    ]


def ingest(n: int, tmp: Path, url: str | None, rate: float | None) -> dict[str, Any]:
    """Feed `n` clicks in worker batches of 2,000 to a ClickRecorder, as fast as it takes
    them (rate None: its clicks/s) or at `rate` clicks/s (the ACK lag below capacity)."""
    db = tmp / ("ingest-ch.db" if url else "ingest-sqlite.db")
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    conn = catalog.open_db(str(db))
    ids = [
        int(catalog.create_link(conn, {"url": "https://e.com/"}, slug=f"i{i}")["id"])
        for i in range(50)
    ]
    conn.close()
    raw = _raw(n, ids)
    batch = 2_000

    async def go() -> dict[str, Any]:
        config = Config(db_path=str(db), click_sink=url)
        database = Database(str(db))
        await database.open()
        sink = ClickHouseSink(parse_sink_url(url), f"ingest-{time.time_ns()}") if url else None
        recorder = ClickRecorder(config, database, GeoDatabase(None), LiveCounters(), sink)
        await recorder.start()
        sent: dict[int, float] = {}
        lags: list[float] = []
        done = asyncio.Event()
        last = -(-n // batch)
        epoch = time.time_ns() & ((1 << 62) - 1)

        def committed(progress: dict[int, int], _spent: Any) -> None:
            now = time.perf_counter()
            top = progress.get(epoch, 0)
            for seq in [s for s in sent if s <= top]:
                lags.append(now - sent.pop(seq))
            if top >= last:
                done.set()

        recorder.on_committed = committed
        started = time.perf_counter()
        for seq, i in enumerate(range(0, n, batch), 1):
            if rate is not None:
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            while recorder.full:  # noqa: ASYNC110 (what a worker's own queue does)
                await asyncio.sleep(0.005)
            sent[seq] = time.perf_counter()
            fresh = [(time.time(), *c[1:]) for c in raw[i : i + batch]]
            recorder.accept(epoch, seq, fresh)
            await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        await recorder.close()
        await database.close()
        lags.sort()
        return {
            "sink": "clickhouse" if url else "sqlite",
            "clicks": n,
            "offered_per_s": rate,
            "clicks_per_s": round(n / elapsed),
            "lag_p50_s": round(lags[len(lags) // 2], 3),
            "lag_p99_s": round(lags[int(len(lags) * 0.99)], 3),
            "lag_max_s": round(lags[-1], 3),
        }

    result = asyncio.run(go())
    print(
        f"  ingest into {result['sink']} ({'max' if rate is None else f'{rate:,.0f}/s'}): "
        f"{result['clicks_per_s']:,} clicks/s, ACK lag p50 {result['lag_p50_s']} s, "
        f"p99 {result['lag_p99_s']} s, max {result['lag_max_s']} s",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clicks", type=float, default=10_000_000)
    ap.add_argument("--ingest", type=float, default=300_000)
    ap.add_argument("--rate", type=float, default=10_000, help="offered clicks/s for the lag")
    args = ap.parse_args(argv)
    binary = server_binary()
    if binary is None:
        print("chbench: clickhouse-server is not installed (apt-get install clickhouse-server)")
        return 2
    CACHE.mkdir(parents=True, exist_ok=True)
    server = ClickHouseServer(binary, str(CACHE / "server"))
    server.start()
    try:
        version = server.query("SELECT version()").strip()
        print(f"ClickHouse {version}; ingest of {int(args.ingest):,} clicks", flush=True)
        scratch = CACHE / "scratch"
        scratch.mkdir(exist_ok=True)
        server.query("DROP DATABASE IF EXISTS ingest")
        ch_url = f"clickhouse+http://127.0.0.1:{server.http_port}/ingest"
        n = int(args.ingest)
        runs = [
            ingest(n, scratch, None, None),
            ingest(n, scratch, ch_url, None),
            ingest(n // 3, scratch, None, args.rate),
            ingest(n // 3, scratch, ch_url, args.rate),
        ]
        print(f"building {int(args.clicks):,} clicks (cached in {CACHE})", flush=True)
        db, url, ids, load = build(int(args.clicks), server)
        table = time_stats(db, url, ids)
    finally:
        server.stop()
    report = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "clickhouse": version,
        "cpus": os.cpu_count(),
        "ingest": runs,
        "stats_clicks": int(args.clicks),
        "load": load,
        "stats": table,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chbench-latest.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
