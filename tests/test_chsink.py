"""The ClickHouse click sink (edge/chsink.py, edge/chclient.py) against a real
clickhouse-server (tests/clickhouse_fixture.py): every click written exactly once through
cut uploads, lost answers and refused connections, across a collector restart and a
prefix of a batch already committed; migrations recorded; clear errors for bad URLs and
an unreachable server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge import catalog
from edge.capture import RawClick
from edge.chclient import AsyncClient, parse_sink_url
from edge.chsink import INSERT_SQL, ClickHouseSink, RowEncoder, node_id
from edge.clicks import ClickRecorder
from edge.config import Config, from_env
from edge.db import Database
from edge.live import LiveCounters
from geo.geoip import GeoDatabase
from tests.clickhouse_fixture import ClickHouseServer, clickhouse, database_of  # noqa: F401
from tests.conftest import REPO

CHROME = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36"
)
NOW = 1_780_000_000.0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:8123/db", "only clickhouse+http://"),
        ("clickhouse+http://127.0.0.1:8123/", "must name a database"),
        ("clickhouse+http://127.0.0.1:8123/my-db", "must name a database"),
        ("clickhouse+http:///db", "no host"),
        ("clickhouse+http://h:99999/db", "not a URL"),
        ("clickhouse+http://h/db?x=1", "no query"),
    ],
)
def test_a_bad_sink_url_is_refused_in_one_line(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        from_env({"LINKEDGE_CLICK_SINK": url})
    parsed = parse_sink_url("clickhouse+http://bob:s%40cret@ch.internal/clicks")
    assert (parsed.host, parsed.port, parsed.database) == ("ch.internal", 8123, "clicks")
    assert parsed.password == "s@cret" and "cret" not in parsed.safe()


def test_serve_with_an_unreachable_sink_fails_with_one_line(tmp_path: Path) -> None:
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "admin.cli", "serve", "--db", str(tmp_path / "x.db")]
        + ["--edge", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        + ["--click-sink", f"clickhouse+http://127.0.0.1:{port}/db"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "the collector cannot start: cannot reach clickhouse+http://127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the recorder with a ClickHouse sink ----------------------------------------------------


def _raw(i: int, link_id: int) -> RawClick:
    return (NOW + i * 0.001, link_id, 1, f"203.0.113.{i % 200}", CHROME, b"", b"", 0, None, None)


async def _recorder(db: Path, url: str, interval_s: float = 0.05) -> ClickRecorder:
    """A collector's pipeline writing to ClickHouse at `url` (its SQLite file opened)."""
    catalog.open_db(str(db)).close()  # created and migrated (a no-op the second time)
    config = Config(db_path=str(db), click_sink=url, click_sink_interval_s=interval_s)
    sink = ClickHouseSink(parse_sink_url(url), node_id(str(db)))
    database = Database(str(db))
    await database.open()
    return ClickRecorder(config, database, GeoDatabase(None), LiveCounters(), sink)


async def _close(recorder: ClickRecorder) -> None:
    assert await recorder.close() == 0
    await recorder.db.close()


async def _drain(recorder: ClickRecorder, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while recorder.queued:
        assert asyncio.get_running_loop().time() < deadline, "the sink never caught up"
        await asyncio.sleep(0.02)


def _counts(server: ClickHouseServer, url: str) -> tuple[int, int]:
    rows, distinct = server.query(
        "SELECT count(), uniqExact(epoch, wseq, pos) FROM clicks", database_of(url)
    ).split()
    return int(rows), int(distinct)


class FaultyProxy:
    """A loopback TCP proxy in front of ClickHouse that breaks connections: it cuts an
    upload after a random number of bytes, swallows an answer (the server did the work),
    refuses the connection, or closes it between requests, each with its probability."""

    def __init__(self, upstream_port: int, seed: int) -> None:
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.port = 0
        self.faults = {"cut": 0, "swallowed": 0, "refused": 0, "closed": 0}
        self.warm = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # faults start once an insert went through: every epoch is then known to the sink,
        # so only its own record of a failed attempt makes it look before writing again
        roll = self.rng.random() if self.warm else 1.0
        if roll < 0.1:
            self.faults["refused"] += 1
            writer.close()
            return
        # a connection carries several requests: its first INSERT breaks it (or the proxy
        # closes it between two requests, as an idle keep-alive connection is closed)
        cut = roll < 0.5
        swallow = 0.5 <= roll < 0.8
        life = self.rng.randrange(1, 6)
        cut_after = self.rng.randrange(1, 200_000)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        state: dict[str, Any] = {"requests": 0, "swallowing": False, "insert_bytes": -1}

        async def upload() -> None:
            while data := await reader.read(65536):
                if data.startswith(b"POST "):  # no pipelining: a request starts a read
                    state["requests"] += 1
                    inserting = b"query=INSERT" in data.split(b"\r\n", 1)[0]
                    state["inserting"] = inserting
                    if inserting and state["insert_bytes"] < 0 and (cut or swallow):
                        state["insert_bytes"] = 0
                        state["swallowing"] = swallow
                    elif state["requests"] > life and not (cut or swallow):
                        self.faults["closed"] += 1
                        raise ConnectionResetError
                if cut and state["insert_bytes"] >= 0:
                    if state["insert_bytes"] + len(data) >= cut_after:
                        up_w.write(data[: cut_after - state["insert_bytes"]])
                        await up_w.drain()
                        self.faults["cut"] += 1
                        raise ConnectionResetError
                    state["insert_bytes"] += len(data)
                up_w.write(data)
                await up_w.drain()

        async def download() -> None:
            while data := await up_r.read(65536):
                if state["swallowing"]:
                    self.faults["swallowed"] += 1
                    raise ConnectionResetError
                if state.get("inserting") and data.startswith(b"HTTP/1.1 200"):
                    self.warm = True
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upload()), asyncio.ensure_future(download())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_w):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()


@pytest.mark.parametrize("seed", [1])
def test_every_click_lands_once_through_a_faulty_network(
    clickhouse: ClickHouseServer,  # noqa: F811
    tmp_path: Path,
    seed: int,
) -> None:
    url = clickhouse.new_database()

    async def run() -> tuple[ClickRecorder, FaultyProxy]:
        proxy = FaultyProxy(clickhouse.http_port, seed)
        await proxy.start()
        # migrate through the direct URL; the writes go through the proxy
        setup = ClickHouseSink(parse_sink_url(url), "setup")
        await setup.start()
        await setup.close()
        faulty = url.replace(str(clickhouse.http_port), str(proxy.port))
        recorder = await _recorder(tmp_path / "a.db", faulty)
        for _attempt in range(20):  # the proxy may break the migration's connections too
            try:
                await recorder.start()
                break
            except Exception:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("could not start through the proxy")
        acked: dict[int, int] = {}
        recorder.on_committed = lambda progress, _spent: acked.update(progress)
        n = 0
        for seq in range(1, 41):
            epoch = 100 + seq % 3
            clicks = [_raw(n + i, 1 + i % 4) for i in range(300 + seq * 7)]
            n += len(clicks)
            assert recorder.accept(epoch, seq, clicks)
            await asyncio.sleep(0.02)
        await _drain(recorder)
        assert acked == {100: 39, 101: 40, 102: 38}  # every epoch's last batch acknowledged
        await _close(recorder)
        await proxy.stop()
        return recorder, proxy

    recorder, proxy = asyncio.run(run())
    total = sum(300 + seq * 7 for seq in range(1, 41))
    assert _counts(clickhouse, url) == (total, total)
    assert recorder.metrics.written == total
    sink = recorder.sink
    assert sink is not None
    assert sum(proxy.faults.values()) >= 3, proxy.faults
    assert sink.metrics.failures >= 1 and sink.metrics.reconciles >= 1
    if proxy.faults["swallowed"]:  # an insert answered after its commit, never heard
        assert sink.metrics.rows_found > 0


def test_a_restarted_collector_skips_what_was_written_before_its_ack(
    clickhouse: ClickHouseServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A collector dies after ClickHouse took batches 1-3 but before the workers heard, and
    after a cut upload committed the first 200 rows of batch 4; the workers send 1-5 again
    to the new collector: each click is there once."""
    url = clickhouse.new_database()
    batches = {seq: [_raw(seq * 1000 + i, 7) for i in range(500)] for seq in range(1, 6)}

    async def first() -> None:
        recorder = await _recorder(tmp_path / "a.db", url)
        await recorder.start()
        for seq in (1, 2, 3):
            recorder.accept(5, seq, batches[seq])
        await _drain(recorder)
        await _close(recorder)  # its ACKs were never delivered: the workers keep 1-3
        rows, _live = recorder.enricher.enrich(batches[4][:200], {int(NOW) // 86400: b"s" * 32})
        client = AsyncClient(parse_sink_url(url))
        body = RowEncoder().encode(rows, [(5, 4, pos) for pos in range(200)])
        await client.insert(INSERT_SQL, body)
        await client.close()

    async def second() -> ClickRecorder:
        recorder = await _recorder(tmp_path / "a.db", url)
        await recorder.start()
        acked: dict[int, int] = {}
        recorder.on_committed = lambda progress, _spent: acked.update(progress)
        for seq in range(1, 6):
            recorder.accept(5, seq, batches[seq])
        await _drain(recorder)
        assert acked == {5: 5}
        await _close(recorder)
        return recorder

    asyncio.run(first())
    assert _counts(clickhouse, url) == (1700, 1700)
    recorder = asyncio.run(second())
    assert _counts(clickhouse, url) == (2500, 2500)
    assert recorder.sink is not None and recorder.sink.metrics.rows_found == 1700
    # the schema is recorded once, however many collectors started
    assert clickhouse.query(
        "SELECT version, name FROM linkedge_migrations ORDER BY version FORMAT TSV",
        database_of(url),
    ).splitlines() == ["1\t0001_create_clicks"]


def test_rows_round_trip_with_every_column(
    clickhouse: ClickHouseServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """NULLs become '' / 0 / -1, bytes and odd text survive RowBinary unchanged."""
    url = clickhouse.new_database()
    row: list[Any] = [
        1_700_000_000_123,
        42,
        bytes(range(1, 9)),
        None,
        "HEAD",
        "NZ",
        "Auckland",
        "Auckland",
        64500,
        "Org\t'\"\\",
        "mobile",
        "iOS",
        "17",
        "Safari",
        "17",
        "Apple",
        "iPhone",
        "https://t.co/x?a=ü",
        "t.co",
        "twitter",
        "en",
        1,
        "203.0.113.0",
        None,
        bytes(16),
        "Ω" * 200,
    ]

    async def go() -> None:
        sink = ClickHouseSink(parse_sink_url(url), "t")
        await sink.start()
        assert await sink.write([tuple(row)], [(9, 1, 1)]) == 1
        await sink.close()

    asyncio.run(go())
    got = clickhouse.query(
        "SELECT ts_ms, link_id, hex(reinterpretAsString(visitor_id)), has_visitor, bot_kind, "
        "as_org, route, "
        "hex(click_id), lengthUTF8(bot_reason), referrer, epoch, wseq, pos FROM clicks FORMAT TSV",
        database_of(url),
    )
    fields = got.rstrip("\n").split("\t")
    assert fields[0:5] == ["1700000000123", "42", "0102030405060708", "1", ""]
    assert fields[5] == "Org\\t\\'\"\\\\"  # TSV escapes of the original text
    assert fields[6:] == ["-1", "00" * 16, "200", "https://t.co/x?a=ü", "9", "1", "0"]
