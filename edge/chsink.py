"""The ClickHouse click sink: the collector's enriched clicks go to a ClickHouse table
instead of SQLite, with the same accounting (edge/clicks.py): a batch is acknowledged to
its worker only once ClickHouse accepted every row of it, exactly once.

Rules:
- Every row carries the identity its worker gave it: (epoch, wseq, pos) = the worker
  process's epoch, the batch's seq, the click's position in the batch. A resent batch (a
  retry, a reconnect, a collector restarted after a crash) carries the same identity, so
  it is the deduplication key; no server feature is needed (18.16 deduplicates inserts
  only for Replicated tables and has no insert_deduplication_token, and a token would not
  cover the prefix of rows a cut upload commits).
- A write is one `INSERT ... FORMAT RowBinary` with an explicit column list (a column added
  later never shifts an old writer's rows) and a query_id naming this collector.
- Reconcile before writing rows that might be there already: after any failed insert
  (its outcome is unknown: a cut upload commits whole rows up to the cut, a timed-out one
  may still be running) and for the first batch of each worker epoch this process sees
  (the previous collector may have written it and died before acknowledging). Reconciling
  waits until no insert of this collector is running on the server (system.processes),
  reads which identities of the write are present (`ts_ms` range first: partitions and
  the primary key prune), and inserts only the others.
- Nothing here retries by itself: a failure raises, and the recorder keeps the rows and
  retries with its backoff (and its bounded queue, then the workers', take the wait).
- Schema: numbered migrations recorded in ClickHouse (`linkedge_migrations`). DDL is not
  transactional there, so every step is idempotent (`IF NOT EXISTS`, a `system.columns`
  check before an ALTER) and recorded after it succeeded; two collectors migrating at once
  is harmless, a crash midway is finished by the next start.
- SQL avoids what 18.16 lacks or current releases removed: no LowCardinality, Nullable,
  Enum, TTL, CODEC, DateTime64, Map, Bool; new MergeTree syntax only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from edge.chclient import AsyncClient, ClickHouseError, SinkURL, quote

log = logging.getLogger("linkedge.chsink")

# (name, ClickHouse type) in edge/rollups.CLICK_COLUMNS order (ts in ms), then the key.
# SQLite's NULLs are stored as '' (strings), 0 (asn, has_visitor) and -1 (route).
CLICK_TABLE_COLUMNS: Final = (
    ("ts_ms", "UInt64"),
    ("link_id", "UInt32"),
    ("visitor_id", "UInt64"),  # the 8-byte id read little-endian
    ("has_visitor", "UInt8"),  # 0: no visitor id (DNT); an id may read as 0
    ("bot_kind", "String"),  # '' = human
    ("method", "String"),
    ("country", "String"),
    ("region", "String"),
    ("city", "String"),
    ("asn", "UInt32"),
    ("as_org", "String"),
    ("device_type", "String"),
    ("os", "String"),
    ("os_version", "String"),
    ("browser", "String"),
    ("browser_version", "String"),
    ("device_brand", "String"),
    ("device_model", "String"),
    ("referrer", "String"),
    ("referrer_host", "String"),
    ("source", "String"),
    ("language", "String"),
    ("dnt", "UInt8"),
    ("ip_truncated", "String"),
    ("route", "Int32"),
    ("click_id", "String"),  # 16 bytes, '' = none
    ("bot_reason", "String"),
    ("epoch", "UInt64"),
    ("wseq", "UInt64"),
    ("pos", "UInt32"),
)
INSERT_SQL: Final = (
    f"INSERT INTO clicks ({', '.join(n for n, _t in CLICK_TABLE_COLUMNS)}) FORMAT RowBinary"
)

# ORDER BY (link_id, ts_ms): a link's clicks over a time range are one range of the
# primary key (per-link stats are seeks); queries over every link prune by the monthly
# partition. Measured at 10M clicks: docs/clickhouse.md.
_CLICKS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS clicks ("
    + ", ".join(f"{n} {t}" for n, t in CLICK_TABLE_COLUMNS)
    + ") ENGINE = MergeTree PARTITION BY toYYYYMM(toDateTime(intDiv(ts_ms, 1000), 'UTC')) "
    "ORDER BY (link_id, ts_ms)"
)
# version, name, idempotent statements. Frozen once released: add new ones, never edit.
MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (1, "0001_create_clicks", (_CLICKS_DDL,)),
)
_MIGRATIONS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS linkedge_migrations (version UInt32, name String, "
    "applied_at DateTime, owner String) ENGINE = MergeTree ORDER BY version"
)

# How long reconciling waits for this collector's earlier insert to finish server-side
# before it says so in the log (it keeps waiting: reading too early could double count).
RUNNING_WAIT_LOG_S: Final = 10.0
RUNNING_POLL_S: Final = 0.05

Row = tuple[Any, ...]
Layout = list[tuple[int, int, int]]  # (epoch, wseq, clicks) of each worker batch, in order

_U64 = struct.Struct("<Q").pack
_U32 = struct.Struct("<I").pack
_I32 = struct.Struct("<i").pack
_KEY = struct.Struct("<QQI").pack
_VARINT1: Final = [bytes([i]) for i in range(128)]
_STRING_CACHE_MAX: Final = 100_000


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(value: str | bytes | None) -> bytes:
    if value is None:
        return b"\x00"
    data = value.encode() if isinstance(value, str) else value
    n = len(data)
    return (_VARINT1[n] if n < 128 else _varint(n)) + data


def node_id(db_path: str) -> str:
    """A name for this collector that survives its restarts (host and database file), so
    a restarted collector recognises its predecessor's inserts in system.processes."""
    where = f"{socket.gethostname()}:{os.path.realpath(db_path)}"
    return hashlib.blake2b(where.encode(), digest_size=6).hexdigest()


class RowEncoder:
    """Click rows -> RowBinary. Strings repeat (countries, browsers, hosts): their
    encodings are cached. Thread-confined (the sink's encoding thread)."""

    def __init__(self) -> None:
        self._cache: dict[Any, bytes] = {}

    def encode(self, rows: Sequence[Row], keys: Sequence[tuple[int, int, int]]) -> bytes:
        cache = self._cache
        if len(cache) > _STRING_CACHE_MAX:
            cache.clear()
        out: list[bytes] = []
        ap = out.append
        for row, key in zip(rows, keys, strict=True):
            (ts, link_id, vid, bot, method, country, region, city, asn, org) = row[:10]
            ap(_U64(ts))
            ap(_U32(link_id))
            ap(_U64(int.from_bytes(vid, "little")) + b"\x01" if vid else b"\x00" * 9)
            for s in (bot, method, country, region, city):
                e = cache.get(s)
                if e is None:
                    e = cache[s] = _string(s)
                ap(e)
            ap(_U32(asn or 0))
            e = cache.get(org)
            if e is None:
                e = cache[org] = _string(org)
            ap(e)
            # device_type .. language: 11 strings
            for s in row[10:21]:
                e = cache.get(s)
                if e is None:
                    e = cache[s] = _string(s)
                ap(e)
            dnt, ip, route, click_id, reason = row[21:26]
            ap(b"\x01" if dnt else b"\x00")
            ap(_string(ip))
            ap(_I32(-1 if route is None else route))
            ap(_string(click_id))
            e = cache.get(reason)
            if e is None:
                e = cache[reason] = _string(reason)
            ap(e)
            ap(_KEY(*key))
        return b"".join(out)


def row_keys(layout: Layout) -> list[tuple[int, int, int]]:
    """The (epoch, wseq, pos) of each row of a write, in order."""
    return [(epoch, wseq, pos) for epoch, wseq, n in layout for pos in range(n)]


class SinkMetrics:
    __slots__ = ("inserts", "rows_inserted", "reconciles", "rows_found", "failures", "last_error")

    def __init__(self) -> None:
        self.inserts = 0  # INSERTs accepted
        self.rows_inserted = 0
        self.reconciles = 0  # presence checks before a write
        self.rows_found = 0  # rows a check found already there (not sent again)
        self.failures = 0
        self.last_error: str | None = None


class ClickHouseSink:
    """Writes the collector's click rows to ClickHouse, exactly once per worker click."""

    def __init__(self, url: SinkURL, node: str) -> None:
        self.url = url
        self.node = node
        self.client = AsyncClient(url)
        self.metrics = SinkMetrics()
        self.version = ""
        self.suspect = False  # an insert's outcome is unknown: reconcile before the next
        self._checked: set[int] = set()  # worker epochs whose earlier batches were looked for
        self._encoder = RowEncoder()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="linkedge-chsink")
        self._attempt = 0

    async def start(self) -> None:
        """Create the database and apply the migrations (ClickHouseError or OSError when
        the server cannot be reached: the collector does not start without its sink)."""
        admin = AsyncClient(self.url, "default")
        try:
            self.version = (await admin.query("SELECT version()")).decode().strip()
            await admin.query(f"CREATE DATABASE IF NOT EXISTS {self.url.database}")
            applied = await migrate(self.client, self.node)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
            raise ClickHouseError(0, f"cannot reach {self.url.safe()}: {reason}".encode()) from None
        finally:
            await admin.close()
        if applied:
            log.info("ClickHouse %s: applied %s", self.url.safe(), ", ".join(applied))

    async def close(self) -> None:
        await self.client.close()
        self._executor.shutdown(wait=False)

    async def write(self, rows: list[Row], layout: Layout) -> int:
        """Insert the rows not in ClickHouse yet; return how many were sent. Raises on any
        failure (the rows stay with the caller, and the next write reconciles)."""
        keys = row_keys(layout)
        epochs = {epoch for epoch, _s, _n in layout}
        try:
            if self.suspect or not epochs <= self._checked:
                rows, keys = await self._missing(rows, keys)
            if rows:
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(self._executor, self._encoder.encode, rows, keys)
                self._attempt += 1
                query_id = f"linkedge-{self.node}-{os.getpid()}-{self._attempt}"
                await self.client.insert(INSERT_SQL, body, {"query_id": query_id})
                self.metrics.inserts += 1
                self.metrics.rows_inserted += len(rows)
        except BaseException as exc:
            self.suspect = True
            if isinstance(exc, Exception):
                self.metrics.failures += 1
                self.metrics.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self.suspect = False
        self._checked |= epochs
        self.metrics.last_error = None
        return len(rows)

    async def _missing(
        self, rows: list[Row], keys: list[tuple[int, int, int]]
    ) -> tuple[list[Row], list[tuple[int, int, int]]]:
        """The rows (and keys) of a write that ClickHouse does not hold yet."""
        self.metrics.reconciles += 1
        await self._wait_for_own_inserts()
        if not rows:
            return rows, keys
        lo = min(r[0] for r in rows)
        hi = max(r[0] for r in rows)
        spans: dict[int, list[int]] = {}
        for epoch, wseq, _pos in keys:
            span = spans.setdefault(epoch, [wseq, wseq])
            span[0] = min(span[0], wseq)
            span[1] = max(span[1], wseq)
        which = " OR ".join(
            f"(epoch = {e} AND wseq BETWEEN {a} AND {b})" for e, (a, b) in spans.items()
        )
        answer = await self.client.query(
            f"SELECT epoch, wseq, pos FROM clicks WHERE ts_ms >= {lo} AND ts_ms <= {hi} "
            f"AND ({which}) FORMAT TabSeparated"
        )
        present: set[tuple[int, int, int]] = set()
        for line in answer.splitlines():
            e, s, p = line.split(b"\t")
            present.add((int(e), int(s), int(p)))
        if not present:
            return rows, keys
        self.metrics.rows_found += len(present)
        kept = [(r, k) for r, k in zip(rows, keys, strict=True) if k not in present]
        log.info(
            "ClickHouse held %d of %d clicks already: sending the rest", len(present), len(rows)
        )
        return [r for r, _k in kept], [k for _r, k in kept]

    async def _wait_for_own_inserts(self) -> None:
        """Until no insert of this collector (this process or a predecessor) runs."""
        started = time.monotonic()
        logged = False
        pattern = quote(f"linkedge-{self.node}-%")
        while True:
            answer = await self.client.query(
                f"SELECT count() FROM system.processes WHERE query_id LIKE {pattern}"
            )
            if int(answer.strip() or b"0") == 0:
                return
            if not logged and time.monotonic() - started > RUNNING_WAIT_LOG_S:
                log.warning("waiting for an earlier insert to finish on ClickHouse")
                logged = True
            await asyncio.sleep(RUNNING_POLL_S)


async def migrate(client: AsyncClient, owner: str) -> list[str]:
    """Apply the migrations not recorded yet; return their names."""
    await client.query(_MIGRATIONS_DDL)
    done = {int(v) for v in (await client.query("SELECT version FROM linkedge_migrations")).split()}
    applied = []
    for version, name, statements in MIGRATIONS:
        if version in done:
            continue
        for sql in statements:
            await client.query(sql)
        await client.query(
            "INSERT INTO linkedge_migrations (version, name, applied_at, owner) VALUES "
            f"({version}, {quote(name)}, {int(time.time())}, {quote(owner)})"
        )
        applied.append(name)
    return applied


def describe_error(exc: BaseException) -> str:
    """One line for a sink failure (logs, the collector's exit message)."""
    if isinstance(exc, ClickHouseError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
