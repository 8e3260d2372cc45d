"""edge/clicks.py: every redirect becomes one enriched row; nothing is lost silently."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from edge import catalog, rollups, visitors
from edge.capture import RawClick
from edge.clicks import DAY_S, ClickRecorder
from edge.config import Config
from edge.db import Database, Transaction, connect
from edge.links import LinkTable
from edge.live import LiveCounters
from edge.server import FLAG_DNT, FLAG_HEAD
from geo.geoip import GeoDatabase
from tests.conftest import ServerProcess, cli, read_responses
from tests.geo_fixtures import build_city_mmdb, write_corrupt_file

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"


def add(db: Path, url: str, slug: str) -> int:
    out = cli("link", "add", url, "--slug", slug, "--json", db=db)
    return int(json.loads(out.stdout)["id"])


def count_clicks(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM clicks").fetchone()[0])
    finally:
        conn.close()


def blast(port: int, total: int, connections: int = 4, pipeline: int = 50) -> int:
    """Send `total` GETs over keep-alive connections, pipelined; return 302s received."""
    per_conn = total // connections
    got = [0] * connections

    def worker(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sent = 0
            while sent < per_conn:
                n = min(pipeline, per_conn - sent)
                sock.sendall(b"GET /z HTTP/1.1\r\nHost: x\r\nUser-Agent: load/%d\r\n\r\n" % i * n)
                answers = read_responses(sock, n, timeout=20)
                got[i] += sum(1 for a in answers if a.startswith(b"HTTP/1.1 302"))
                sent += n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(got)


def test_every_redirect_is_a_row_after_sigterm(db_path: Path) -> None:
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path)
    served = blast(proc.edge_port, 8000)
    assert served == 8000
    code, out, err = proc.stop()
    assert code == 0, err
    assert count_clicks(db_path) == served
    assert (
        "8000 redirects served, 8000 clicks captured, 8000 written, 0 dropped, 0 unwritten" in out
    )


def test_sigterm_under_load_loses_nothing(db_path: Path) -> None:
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(_blast_until_closed(proc.edge_port)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    time.sleep(0.7)
    proc.proc.send_signal(15)
    for t in threads:
        t.join()
    code, out, err = proc.stop()
    assert code == 0, err
    received = sum(results)
    assert received > 0
    served = _summary(out)[0]
    # The client may miss answers the server wrote just before closing; the server's own
    # count of redirects is what must match the rows.
    assert served >= received
    assert count_clicks(db_path) == served


def _summary(out: str) -> list[int]:
    """The numbers of the server's last line: served, captured, written, dropped, unwritten."""
    line = [x for x in out.splitlines() if "linkedge stopped:" in x][-1].split(";")[0]
    return [int(w) for w in line.replace(",", " ").split() if w.isdigit()]


def _blast_until_closed(port: int) -> int:
    """Pipeline requests until the server closes the connection; count the 302s."""
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        while True:
            try:
                sock.sendall(b"GET /z HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
                answers = read_responses(sock, 20, timeout=20)
            except OSError:
                return got
            got += sum(1 for a in answers if a.startswith(b"HTTP/1.1 302"))
            if len(answers) < 20 or any(b"Connection: close" in a for a in answers):
                return got


def test_clicks_are_enriched(db_path: Path, tmp_path: Path) -> None:
    mmdb = tmp_path / "city.mmdb"
    build_city_mmdb(mmdb)
    link_id = add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path, "--geoip", str(mmdb), "--trusted-proxy", "127.0.0.1/32")
    requests = [
        # (extra headers, method)
        (
            f"User-Agent: {CHROME}\r\nX-Forwarded-For: 203.0.113.10\r\n"
            "Referer: https://t.co/abc\r\nAccept-Language: fr-CH, fr;q=0.9, en;q=0.8\r\n",
            "GET",
        ),
        (
            f"User-Agent: {IPHONE}\r\nX-Forwarded-For: 10.9.9.9, 2001:db8:1::1\r\n"
            "Referer: android-app://com.linkedin.android/\r\n",
            "GET",
        ),
        (f"User-Agent: {SLACKBOT}\r\nX-Forwarded-For: 198.51.100.7\r\n", "GET"),
        (f"User-Agent: {CHROME}\r\nX-Forwarded-For: 203.0.113.10\r\nDNT: 1\r\n", "GET"),
        (f"User-Agent: {CHROME}\r\nX-Forwarded-For: 203.0.113.10\r\n", "HEAD"),
        (f"User-Agent: {CHROME}\r\nSec-Purpose: prefetch\r\n", "GET"),
        ("User-Agent: curl/8.5.0\r\n", "GET"),
    ]
    with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
        for headers, method in requests:
            sock.sendall(f"{method} /z HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        assert len(read_responses(sock, len(requests))) == len(requests)
    code, _, err = proc.stop()
    assert code == 0, err
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM clicks ORDER BY id").fetchall()
    assert len(rows) == len(requests)
    chrome, iphone, slack, dnt, head, prefetch, curl = rows
    assert chrome["link_id"] == link_id
    assert (chrome["country"], chrome["region"], chrome["city"]) == ("GB", "England", "London")
    assert (chrome["browser"], chrome["os"], chrome["device_type"]) == (
        "Chrome",
        "Windows",
        "desktop",
    )
    assert chrome["bot_kind"] is None
    assert (chrome["referrer_host"], chrome["source"]) == ("t.co", "twitter")
    assert chrome["language"] == "fr"
    assert len(chrome["visitor_id"]) == 8
    assert chrome["ip_truncated"] is None
    assert (iphone["country"], iphone["city"]) == ("JP", "Tokyo")  # right-most untrusted hop
    assert iphone["device_type"] == "mobile" and iphone["source"] == "linkedin"
    assert slack["bot_kind"] == "preview" and slack["country"] == "US"
    assert dnt["visitor_id"] is None and dnt["dnt"] == 1
    assert dnt["country"] == "GB" and dnt["city"] is None and dnt["region"] is None
    assert head["bot_kind"] == "head" and head["method"] == "HEAD"
    assert prefetch["bot_kind"] == "prefetch"
    assert curl["bot_kind"] == "automation" and curl["source"] == "direct"
    # which signal decided, per click (geo.bots.explain)
    assert [r["bot_reason"] for r in rows] == [
        None,
        None,
        "linkedge:slackbot",
        None,
        "head:method",
        "prefetch:header",
        "linkedge:curl/",
    ]
    assert curl["country"] is None  # 127.0.0.1 itself is in no database
    # no raw IP anywhere in the database
    dump = "\n".join(conn.iterdump())
    assert "203.0.113.10" not in dump and "2001:db8:1::1" not in dump


def test_untrusted_peer_cannot_spoof_its_address(db_path: Path, tmp_path: Path) -> None:
    mmdb = tmp_path / "city.mmdb"
    build_city_mmdb(mmdb)
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path, "--geoip", str(mmdb))  # no trusted proxies
    with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
        sock.sendall(b"GET /z HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.10\r\n\r\n")
        read_responses(sock, 1)
    proc.stop()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT country FROM clicks").fetchone()[0] is None


def test_truncated_ip_option(db_path: Path) -> None:
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path, "--store-truncated-ip", "--trusted-proxy", "127.0.0.1/32")
    with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
        sock.sendall(
            b"GET /z HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.77\r\n\r\n"
            b'GET /z HTTP/1.1\r\nHost: x\r\nForwarded: for="[2001:db8:1:2::5]:4711"\r\n\r\n'
        )
        read_responses(sock, 2)
    proc.stop()
    conn = sqlite3.connect(db_path)
    got = [r[0] for r in conn.execute("SELECT ip_truncated FROM clicks ORDER BY id")]
    assert got == ["203.0.113.0", "2001:db8:1::"]


def test_locked_database_stalls_writes_but_not_redirects(db_path: Path) -> None:
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path, "--db-busy-timeout-s", "0.2")
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # nobody else can write (or read the WAL) now
    try:
        started = time.monotonic()
        served = blast(proc.edge_port, 2000)
        assert served == 2000  # the edge kept redirecting while the writer was stuck
        assert time.monotonic() - started < 10
        time.sleep(1.0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 15
    while count_clicks(db_path) < served and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count_clicks(db_path) == served  # written once the lock cleared
    code, out, err = proc.stop()
    assert code == 0, err
    assert "writing" in err and "retrying" in err  # the stall was logged, not silent
    assert "2000 clicks captured, 2000 written, 0 dropped" in out


def test_queue_bound_counts_dropped_clicks_exactly(db_path: Path) -> None:
    add(db_path, "https://example.com/", "z")
    # the collector holds at most 100 (then stops reading); a worker keeps at most 300
    proc = ServerProcess(
        db_path,
        "--max-queued-clicks",
        "100",
        "--max-unacked-clicks",
        "300",
        "--db-busy-timeout-s",
        "0.2",
    )
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        served = blast(proc.edge_port, 1000, connections=2)
        time.sleep(0.5)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    code, out, err = proc.stop()
    assert code == 0, err
    written = count_clicks(db_path)
    _, captured, written_reported, dropped, unwritten = _summary(out)
    assert captured == served == 1000
    assert written_reported == written
    assert dropped == captured - written > 0
    assert unwritten == 0
    assert "click queue full" in err


def test_geoip_database_replaced_while_running(db_path: Path, tmp_path: Path) -> None:
    mmdb = tmp_path / "city.mmdb"
    build_city_mmdb(mmdb)
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path, "--geoip", str(mmdb), "--trusted-proxy", "127.0.0.1/32")
    req = b"GET /z HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.10\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
            sock.sendall(req)
            read_responses(sock, 1)
            # a corrupt file replaces the database (e.g. a broken download)
            bad = tmp_path / "bad.mmdb"
            write_corrupt_file(bad)
            os.replace(bad, mmdb)
            time.sleep(2.5)  # past the reload check interval
            for _ in range(3):
                sock.sendall(req)
                assert read_responses(sock, 1)[0].startswith(b"HTTP/1.1 302")
    finally:
        code, _, err = proc.stop()
    assert code == 0, err
    conn = sqlite3.connect(db_path)
    countries = [r[0] for r in conn.execute("SELECT country FROM clicks ORDER BY id")]
    assert countries == ["GB"] * 4  # the last good database keeps serving


def test_geoip_file_truncated_in_place_under_load_loses_nothing(
    db_path: Path, tmp_path: Path
) -> None:
    """`: > live.mmdb` while clicks from new addresses arrive: the server used to die of
    SIGBUS on the next uncached lookup (exit 135) and lose its unwritten clicks."""
    mmdb = tmp_path / "city.mmdb"
    build_city_mmdb(mmdb)
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path, "--geoip", str(mmdb), "--trusted-proxy", "127.0.0.1/32")
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
            for i in range(400):
                if i == 100:
                    with open(mmdb, "r+b") as f:
                        f.truncate(0)
                if i == 250:  # and the copy that follows, written over the same inode
                    tmp = tmp_path / "next.mmdb"
                    build_city_mmdb(tmp)
                    with open(mmdb, "r+b") as f:
                        f.write(tmp.read_bytes())
                ip = f"198.51.{i // 250}.{i % 250}".encode()
                sock.sendall(b"GET /z HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + ip + b"\r\n\r\n")
                assert read_responses(sock, 1)[0].startswith(b"HTTP/1.1 302")
                sent += 1
                if i % 50 == 0:
                    time.sleep(0.3)  # let the flusher look up these addresses meanwhile
    finally:
        code, _, err = proc.stop()
    assert code == 0, err
    assert count_clicks(db_path) == sent


def test_missing_geoip_database_never_breaks_redirects(db_path: Path, tmp_path: Path) -> None:
    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path, "--geoip", str(tmp_path / "absent.mmdb"))
    with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
        sock.sendall(b"GET /z HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(sock, 1)[0].startswith(b"HTTP/1.1 302")
    code, _, err = proc.stop()
    assert code == 0
    assert "GeoIP is off" in err
    assert count_clicks(db_path) == 1


# --- the pipeline in process: uniques across a day change, rollups ---------------------------


_seq = itertools.count(1)


def feed(recorder: ClickRecorder, clicks: list[RawClick], epoch: int = 1) -> None:
    """What a worker's batch does when it reaches the collector."""
    assert recorder.accept(epoch, next(_seq), clicks)


def _pipeline(db: Path) -> tuple[ClickRecorder, Database, LinkTable]:
    conn = catalog.open_db(str(db))
    conn.close()
    database = Database(str(db))
    table = LinkTable()
    recorder = ClickRecorder(Config(db_path=str(db)), database, GeoDatabase(None), LiveCounters())
    return recorder, database, table


def test_uniques_per_day_and_salt_rotation(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    conn = catalog.open_db(str(db))
    link = catalog.create_link(conn, {"url": "https://example.com/"}, slug="u")
    conn.close()

    async def run() -> None:
        recorder, database, table = _pipeline(db)
        await database.open()
        async with asyncio.timeout(30):
            await recorder.start()
            day = int(time.time()) // DAY_S
            t0 = day * DAY_S - 30.0  # 30 s before midnight UTC
            people = [(f"203.0.113.{i}", b"UA/%d" % (i % 2)) for i in range(5)]
            for when in (t0, t0 + 10, t0 + 40, t0 + 50):  # two visits each side of midnight
                feed(
                    recorder,
                    [(when, link["id"], 1, ip, ua, b"", b"", 0, None, None) for ip, ua in people],
                )
            feed(
                recorder,
                [
                    (
                        t0 + 45,
                        link["id"],
                        1,
                        "203.0.113.1",
                        b"UA/1",
                        b"",
                        b"",
                        FLAG_DNT,
                        None,
                        None,
                    ),
                    (
                        t0 + 46,
                        link["id"],
                        1,
                        "203.0.113.9",
                        CHROME.encode(),
                        b"",
                        b"",
                        FLAG_HEAD,
                        None,
                        None,
                    ),
                ],
            )
            await recorder.flush()
            assert await recorder.close() == 0
        await database.close()

    asyncio.run(run())
    conn = sqlite3.connect(db)
    per_day: dict[int, tuple[set[int], set[int]]] = {}
    for chunk_day, ids, bot_ids in conn.execute(
        "SELECT day, ids, bot_ids FROM link_day_visitors WHERE link_id = ?", (link["id"],)
    ):
        entry = per_day.setdefault(chunk_day, (set(), set()))
        chunk_ids, chunk_humans = visitors.chunk_sets(ids, bot_ids)
        entry[0].update(chunk_ids)
        entry[1].update(chunk_humans)
    day = int(time.time()) // DAY_S
    # the DNT click has no visitor id
    assert {d: len(v[0]) for d, v in per_day.items()} == {day - 1: 5, day: 6}
    humans = len(per_day[day][1])
    assert humans == 5  # the HEAD request is a bot visitor
    ids_before = {
        r[0]
        for r in conn.execute(
            "SELECT visitor_id FROM clicks WHERE ts < ? AND visitor_id IS NOT NULL",
            (day * DAY_S * 1000,),
        )
    }
    ids_after = {
        r[0]
        for r in conn.execute(
            "SELECT visitor_id FROM clicks WHERE ts >= ? AND visitor_id IS NOT NULL",
            (day * DAY_S * 1000,),
        )
    }
    assert len(ids_before) == 5 and len(ids_after) == 6
    assert not ids_before & ids_after  # the same people cannot be followed across days
    assert [r[0] for r in conn.execute("SELECT day FROM salts ORDER BY day")] == [day - 1, day]
    minutes = conn.execute("SELECT sum(clicks), sum(humans) FROM link_minute").fetchone()
    assert tuple(minutes) == (22, 21)
    dims = dict(
        conn.execute(
            "SELECT value, sum(clicks) FROM link_dim_hour WHERE dim = 'bot_kind' GROUP BY value"
        ).fetchall()
    )
    assert dims == {"": 21, "head": 1}
    assert rollups.rollup_watermark(conn) == 22


def test_rollups_catch_up_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    conn = catalog.open_db(str(db))
    link = catalog.create_link(conn, {"url": "https://example.com/"}, slug="c")
    now_ms = int(time.time() * 1000)
    cols = rollups.CLICK_COLUMNS
    row = {c: None for c in cols} | {"ts": now_ms, "link_id": link["id"], "method": "GET", "dnt": 0}
    with Transaction(conn):
        rollups.insert_clicks(conn, [tuple(row[c] for c in cols)] * 7)  # written, never rolled up
    conn.close()

    async def run() -> None:
        recorder, database, _ = _pipeline(db)
        await database.open()
        await recorder.start()
        await recorder.close()
        await database.close()

    asyncio.run(run())
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT sum(clicks) FROM link_minute").fetchone()[0] == 7
    assert rollups.rollup_watermark(conn) == 7
    asyncio.run(run())  # running again adds nothing
    assert conn.execute("SELECT sum(clicks) FROM link_minute").fetchone()[0] == 7


def test_the_flusher_rebuilds_groups_a_purged_link_left(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    conn = catalog.open_db(str(db))
    keep = catalog.create_link(conn, {"url": "https://example.com/", "campaign": "c"}, slug="k")
    gone = catalog.create_link(conn, {"url": "https://example.com/", "campaign": "c"}, slug="g")
    conn.close()

    async def clicks_then_purge() -> None:
        recorder, database, _ = _pipeline(db)
        await database.open()
        await recorder.start()
        now = time.time()
        feed(
            recorder,
            [
                (now, link["id"], 1, f"203.0.113.{i}", b"UA", b"", b"", 0, None, None)
                for i, link in enumerate((keep, gone, gone))
            ],
        )
        await recorder.flush()
        assert await recorder.close() == 0
        await database.close()
        purge = connect(str(db))
        catalog.purge_link(purge, gone["id"])
        purge.close()

    async def run_a_while() -> None:
        recorder, database, _ = _pipeline(db)
        await database.open()
        await recorder.start()
        task = asyncio.get_running_loop().create_task(recorder._run())
        await asyncio.sleep(0.5)
        await recorder.close()
        task.cancel()
        await database.close()

    asyncio.run(clicks_then_purge())
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM group_day_stale").fetchone()[0] > 0
    asyncio.run(run_a_while())
    assert conn.execute("SELECT count(*) FROM group_day_stale").fetchone()[0] == 0
    n = conn.execute(
        "SELECT sum(n) FROM group_day_visitors WHERE dim = 'campaign' AND key = 'c'"
    ).fetchone()[0]
    assert n == 1  # only the remaining link's visitor


def test_curl_clicks_are_counted(db_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    import subprocess

    add(db_path, "https://example.com/", "z")
    proc = ServerProcess(db_path)
    for _ in range(3):
        subprocess.run(
            [curl, "-s", "-o", "/dev/null", f"http://127.0.0.1:{proc.edge_port}/z"],
            check=True,
            timeout=10,
        )
    proc.stop()
    assert count_clicks(db_path) == 3


def test_cancelling_a_flush_at_any_stage_loses_nothing(tmp_path: Path) -> None:
    """Cancelled while enriching, reading salts or writing: the slice is put back or
    stays pending, and close() then writes every click exactly once."""
    db = tmp_path / "x.db"
    conn = catalog.open_db(str(db))
    link = catalog.create_link(conn, {"url": "https://example.com/"}, slug="x")
    conn.close()

    async def run(steps: int, epoch: int) -> None:
        recorder, database, _ = _pipeline(db)
        await database.open()
        await recorder.start()
        now = time.time()
        for b in range(3):
            feed(
                recorder,
                [
                    (now, link["id"], 1, f"198.51.100.{i}", b"UA/%d" % b, b"", b"", 0, None, None)
                    for i in range(40)
                ],
                epoch=epoch,
            )
        task = asyncio.get_running_loop().create_task(recorder.flush())
        for _ in range(steps):  # let it get `steps` loop iterations far, then cancel
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert recorder.queued + recorder.metrics.written == 120
        assert await recorder.close() == 0
        assert recorder.metrics.written == 120
        await database.close()

    for steps in range(12):
        asyncio.run(run(steps, epoch=1000 + steps))
        assert count_clicks(db) == 120 * (steps + 1)  # every click once, none twice
