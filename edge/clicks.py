"""Every click recorded: capture buffer -> enrichment -> one SQLite transaction, zero loss.

Rules:
- The hot path appends one raw tuple to `ClickRecorder.buffer`:
  (unix time, link id, client ip, user-agent bytes, referer bytes, accept-language bytes,
  flags). Nothing else happens per request.
- Every flush_interval_s (or sooner when flush_max_clicks wait) the flusher swaps the
  buffer out, enriches the clicks on its own thread (GeoIP, user agent, bot kind, referrer
  source, language, visitor id), feeds the live counters with per-second aggregates, and
  writes the rows in one transaction on the aiosqlite thread. The event loop only swaps
  lists and applies small aggregates.
- Nothing is lost silently. Clicks wait in memory while the writer is behind (locked DB,
  slow disk); a failed write is retried with backoff, the edge keeps redirecting. Past
  max_queued_clicks new clicks are dropped, counted, and logged once per interval.
  `captured == written + dropped + queued` holds at every moment.
- Shutdown drains everything: `close()` returns after every captured click is a row (or,
  past its deadline, says how many were not).
- Rollups (link_minute, link_hour_dim, link_day_visitor) are derived from the written rows.
  They are accumulated in memory and written every rollup_interval_s in the same transaction
  as a batch of clicks, together with a watermark (the highest click id rolled up), so
  each click is counted exactly once even across crashes: at start the flusher re-aggregates
  clicks above the watermark.

Privacy: no raw IP is stored. visitor_id = BLAKE2b-64 keyed with a random salt that rotates
every UTC day (old salts are deleted) over (ip, user agent, domain): uniques work within a
day and nobody can be followed across days. With `DNT: 1` or `Sec-GPC: 1` the click is still
counted, but without a visitor id and without geo below country (no region, city or ASN).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from edge import store
from edge.config import Config
from edge.db import Database
from edge.links import LinkTable
from edge.live import LiveCounters
from edge.server import FLAG_DNT, FLAG_GPC, FLAG_HEAD, FLAG_PREFETCH
from geo.bots import classify
from geo.geoip import EMPTY_GEO, GeoDatabase
from geo.language import primary_language
from geo.referrer import parse_referrer
from geo.useragent import UAInfo, UserAgentParser

log = logging.getLogger("linkedge.clicks")

UA_CACHE_SIZE: Final = 50000  # distinct raw User-Agent values remembered (parse + bot kind)
VISITOR_SEEN_MAX: Final = 1_000_000  # (link, day, visitor) pairs remembered to skip re-inserts
RETRY_BACKOFF_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
ROLLUP_INTERVAL_S: Final = 1.0  # rollups are written at most this often
DROP_LOG_INTERVAL_S: Final = 10.0
GEO_CHECK_INTERVAL_S: Final = 2.0  # how often the GeoIP file is stat()ed for replacement
DAY_S: Final = 86400

# The dimensions kept per link per hour for stats breakdowns.
DIMENSIONS: Final = (
    "country",
    "region",
    "city",
    "device_type",
    "browser",
    "os",
    "referrer_host",
    "source",
    "language",
    "bot_kind",
)
_COL = {name: i for i, name in enumerate(store.CLICK_COLUMNS)}
_DIM_COLS: Final = tuple((name, _COL[name]) for name in DIMENSIONS)
_TS, _LINK, _VISITOR, _BOT = _COL["ts"], _COL["link_id"], _COL["visitor_id"], _COL["bot_kind"]

RawClick = tuple[float, int, str, bytes, bytes, bytes, int]
Row = tuple[Any, ...]


def truncate_ip(ip: str) -> str | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


class Rollup:
    """Aggregates of written click rows, waiting to be added to the rollup tables."""

    __slots__ = ("minutes", "dims", "visitors", "last_id", "clicks")

    def __init__(self) -> None:
        self.minutes: dict[tuple[int, int], list[int]] = {}
        self.dims: dict[tuple[int, int, str, str], list[int]] = {}
        self.visitors: dict[tuple[int, int, bytes], int] = {}
        self.last_id = 0
        self.clicks = 0

    def add_rows(self, rows: Iterable[Row], last_id: int) -> None:
        minutes = self.minutes
        dims = self.dims
        visitors = self.visitors
        n = 0
        for row in rows:
            n += 1
            link_id = row[_LINK]
            ts_s = row[_TS] // 1000
            human = 0 if row[_BOT] else 1
            key = (link_id, ts_s // 60)
            m = minutes.get(key)
            if m is None:
                minutes[key] = [1, human]
            else:
                m[0] += 1
                m[1] += human
            hour = ts_s // 3600
            for dim, col in _DIM_COLS:
                dkey = (link_id, hour, dim, row[col] or "")
                d = dims.get(dkey)
                if d is None:
                    dims[dkey] = [1, human]
                else:
                    d[0] += 1
                    d[1] += human
            vid = row[_VISITOR]
            if vid is not None:
                vkey = (link_id, ts_s // DAY_S, vid)
                if visitors.get(vkey, -1) < human:
                    visitors[vkey] = human
        self.clicks += n
        if last_id > self.last_id:
            self.last_id = last_id

    def merge(self, other: Rollup) -> None:
        for key, (c, h) in other.minutes.items():
            m = self.minutes.setdefault(key, [0, 0])
            m[0] += c
            m[1] += h
        for dkey, (c, h) in other.dims.items():
            d = self.dims.setdefault(dkey, [0, 0])
            d[0] += c
            d[1] += h
        for vkey, human in other.visitors.items():
            if self.visitors.get(vkey, -1) < human:
                self.visitors[vkey] = human
        self.clicks += other.clicks
        self.last_id = max(self.last_id, other.last_id)

    def visitor_rows(self) -> list[tuple[int, int, bytes, int]]:
        return [(k[0], k[1], k[2], h) for k, h in self.visitors.items()]


class Enricher:
    """Raw captured clicks -> click rows in store.CLICK_COLUMNS order. Thread-confined."""

    def __init__(self, config: Config, table: LinkTable, geo: GeoDatabase) -> None:
        self.table = table
        self.geo = geo
        self.ua_parser = UserAgentParser()
        self.store_truncated_ip = config.store_truncated_ip
        self._ua_cache: dict[bytes, tuple[UAInfo, str | None, str]] = {}
        self._text_cache: dict[bytes, Any] = {}
        self.parsed = 0

    def _ua(self, raw: bytes) -> tuple[UAInfo, str | None, str]:
        hit = self._ua_cache.get(raw)
        if hit is not None:
            return hit
        text = raw.decode("utf-8", "replace")
        info = self.ua_parser.parse(text)
        kind = classify(text, info, is_head=False, is_prefetch=False)
        entry = (info, kind, text)
        if len(self._ua_cache) >= UA_CACHE_SIZE:
            self._ua_cache.clear()
        self._ua_cache[raw] = entry
        return entry

    def enrich(
        self, clicks: Sequence[RawClick], salts: dict[int, bytes]
    ) -> tuple[list[Row], list[tuple[int, int, int, int]]]:
        """Rows to insert and live aggregates (link_id, second, clicks, humans).

        `salts` maps each UTC day (unix seconds // 86400) of the clicks to its salt.
        """
        rows: list[Row] = []
        live: dict[tuple[int, int], list[int]] = {}
        geo_lookup = self.geo.lookup
        table_get = self.table.get
        blake = hashlib.blake2b
        truncated = self.store_truncated_ip
        referrers: dict[bytes, tuple[str | None, str | None, str]] = {}
        languages: dict[bytes, str | None] = {}
        for ts, link_id, ip, ua_raw, ref_raw, lang_raw, flags in clicks:
            info, ua_kind, ua_text = self._ua(ua_raw)
            if flags & FLAG_PREFETCH:
                bot_kind: str | None = "prefetch"
            elif flags & FLAG_HEAD:
                bot_kind = "head"
            else:
                bot_kind = ua_kind
            geo = geo_lookup(ip) if ip else EMPTY_GEO
            private = bool(flags & (FLAG_DNT | FLAG_GPC))
            if private:
                visitor_id = None
                region = city = as_org = None
                asn = None
                ip_trunc = None
            else:
                link = table_get(link_id)
                domain = b"" if link is None else str(link.domain_id).encode()
                visitor_id = blake(
                    ip.encode() + b"\0" + ua_raw + b"\0" + domain,
                    digest_size=8,
                    key=salts[int(ts) // DAY_S],
                ).digest()
                region, city, asn, as_org = geo.region, geo.city, geo.asn, geo.as_org
                ip_trunc = truncate_ip(ip) if truncated else None
            ref = referrers.get(ref_raw)
            if ref is None:
                ref_text = ref_raw.decode("utf-8", "replace") if ref_raw else None
                host, source = parse_referrer(ref_text or "")
                ref = referrers[ref_raw] = (ref_text, host, source)
            lang = languages.get(lang_raw, "?")
            if lang == "?":
                lang = languages[lang_raw] = (
                    primary_language(lang_raw.decode("latin-1")) if lang_raw else None
                )
            ts_ms = int(ts * 1000)
            rows.append(
                (
                    ts_ms,
                    link_id,
                    visitor_id,
                    bot_kind,
                    "HEAD" if flags & FLAG_HEAD else "GET",
                    geo.country,
                    region,
                    city,
                    asn,
                    as_org,
                    "bot" if ua_kind is not None else info.device_type,
                    info.os,
                    info.os_major,
                    info.browser,
                    info.browser_major,
                    info.device_brand,
                    info.device_model,
                    ref[0],
                    ref[1],
                    ref[2],
                    lang,
                    1 if private else 0,
                    ip_trunc,
                )
            )
            key = (link_id, int(ts))
            agg = live.get(key)
            human = 0 if bot_kind else 1
            if agg is None:
                live[key] = [1, human]
            else:
                agg[0] += 1
                agg[1] += human
        self.parsed += len(clicks)
        return rows, [(k[0], k[1], v[0], v[1]) for k, v in live.items()]


class PipelineMetrics:
    __slots__ = (
        "captured",
        "written",
        "dropped",
        "write_failures",
        "flushes",
        "last_flush_s",
        "flush_durations",
        "last_error",
        "peak_queue",
        "last_write_at",
    )

    def __init__(self) -> None:
        self.captured = 0
        self.written = 0
        self.dropped = 0
        self.write_failures = 0
        self.flushes = 0
        self.last_flush_s = 0.0
        self.flush_durations: list[float] = []  # recent flush durations, for the histogram
        self.last_error: str | None = None
        self.peak_queue = 0
        self.last_write_at = 0.0


class ClickRecorder:
    """The click pipeline: owns the capture buffer, the queue and the flusher task."""

    def __init__(
        self,
        config: Config,
        db: Database,
        table: LinkTable,
        geo: GeoDatabase,
        live: LiveCounters,
    ) -> None:
        self.config = config
        self.db = db
        self.table = table
        self.geo = geo
        self.live = live
        self.enricher = Enricher(config, table, geo)
        self.metrics = PipelineMetrics()
        # hot path: the server appends raw tuples here
        self.buffer: list[RawClick] = []
        # waiting to be written: enriched rows of earlier flushes that failed, raw clicks
        self._raw_queue: list[RawClick] = []
        self._rows_queue: list[Row] = []
        self._in_flight = 0  # clicks being enriched or written right now
        self._rollup = Rollup()
        self._last_rollup = 0.0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="linkedge-enrich")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._last_drop_log = 0.0
        self._failures_in_row = 0
        self._dropped_since_log = 0
        self._salts: dict[int, bytes] = {}
        self._next_geo_check = 0.0

    @property
    def queued(self) -> int:
        """Clicks captured but not yet written."""
        return len(self.buffer) + len(self._raw_queue) + len(self._rows_queue) + self._in_flight

    @property
    def flush_lag_s(self) -> float:
        """Age of the oldest click not yet written (0 when nothing waits)."""
        oldest = None
        if self._rows_queue:
            oldest = self._rows_queue[0][_TS] / 1000
        elif self._raw_queue:
            oldest = self._raw_queue[0][0]
        elif self.buffer:
            oldest = self.buffer[0][0]
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def start(self) -> None:
        await self._catch_up_rollups()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="click-flusher")

    def nudge(self) -> None:
        """Ask for an early flush (called when the buffer is large)."""
        self._wake.set()

    async def _run(self) -> None:
        interval = self.config.flush_interval_s
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self._maybe_reload_geo()
                await self.flush()
            except Exception:  # the pipeline never raises into the edge
                log.exception("click flush failed; will retry")
                await asyncio.sleep(RETRY_BACKOFF_S[-1])

    def _admit(self) -> None:
        """Move the capture buffer into the queue, dropping (and counting) past the bound."""
        if not self.buffer:
            return
        # Copy and clear in place: the edge holds a reference to this very list.
        chunk = self.buffer.copy()
        self.buffer.clear()
        self.metrics.captured += len(chunk)
        room = self.config.max_queued_clicks - len(self._raw_queue) - len(self._rows_queue)
        if len(chunk) > room:
            dropped = len(chunk) - max(room, 0)
            chunk = chunk[: max(room, 0)]
            self.metrics.dropped += dropped
            self._dropped_since_log += dropped
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
                log.error(
                    "click queue full (%d waiting, writer behind: %s): dropped %d clicks",
                    self.config.max_queued_clicks,
                    self.metrics.last_error or "slow writes",
                    self._dropped_since_log,
                )
                self._last_drop_log = now
                self._dropped_since_log = 0
        self._raw_queue.extend(chunk)
        depth = len(self._raw_queue) + len(self._rows_queue)
        if depth > self.metrics.peak_queue:
            self.metrics.peak_queue = depth

    async def flush(self) -> int:
        """Enrich and write what is waiting; return the number of clicks written."""
        self._admit()
        loop = asyncio.get_running_loop()
        if self._raw_queue:
            # Clicks are queued in time order: their days are first..last, ascending (the
            # order matters: a new day's salt deletes the older ones).
            first_day = int(self._raw_queue[0][0]) // DAY_S
            last_day = int(self._raw_queue[-1][0]) // DAY_S
            try:
                salts = {day: await self._salt_for(day) for day in range(first_day, last_day + 1)}
            except sqlite3.Error as exc:
                await self._write_failed(exc, len(self._raw_queue))
                return 0
            raw, self._raw_queue = self._raw_queue, []
            self._in_flight = len(raw)
            try:
                rows, live = await loop.run_in_executor(
                    self._executor, self.enricher.enrich, raw, salts
                )
            except Exception:
                self._raw_queue[:0] = raw  # keep them; enrichment bugs must not lose clicks
                raise
            finally:
                self._in_flight = 0
            self.live.add(live)
            self._rows_queue.extend(rows)
        if not self._rows_queue:
            return 0
        rows, self._rows_queue = self._rows_queue, []
        self._in_flight = len(rows)
        started = time.monotonic()
        rollup_due = started - self._last_rollup >= ROLLUP_INTERVAL_S or self._closing
        pending = self._rollup if rollup_due else None
        try:
            first, last, batch_rollup = await self.db.run(_write_batch, rows, pending)
        except Exception as exc:  # sqlite3 errors, and anything else: keep the rows
            self._rows_queue[:0] = rows
            self._in_flight = 0
            await self._write_failed(exc, len(rows))
            return 0
        self._in_flight = 0
        self.metrics.written += len(rows)
        self.metrics.flushes += 1
        self.metrics.last_error = None
        self._failures_in_row = 0
        duration = time.monotonic() - started
        self.metrics.last_flush_s = duration
        self.metrics.last_write_at = time.time()
        durations = self.metrics.flush_durations
        durations.append(duration)
        if len(durations) > 1000:
            del durations[:500]
        if rollup_due:
            self._rollup = Rollup()
            self._last_rollup = started
        else:
            self._rollup.merge(batch_rollup)
        return last - first + 1

    async def _maybe_reload_geo(self) -> None:
        """Pick up a replaced GeoIP file (geoipupdate, cron) without a restart."""
        now = time.monotonic()
        if now < self._next_geo_check:
            return
        self._next_geo_check = now + GEO_CHECK_INTERVAL_S
        loop = asyncio.get_running_loop()
        # On the enrichment thread: the reader and its cache are confined to it.
        if await loop.run_in_executor(self._executor, self.geo.maybe_reload):
            log.info("GeoIP database reloaded: %s", self.geo.status().get("build_date"))

    async def _write_failed(self, exc: Exception, waiting: int) -> None:
        """Count a failed write, log it (not every time), back off; nothing is dropped."""
        self.metrics.write_failures += 1
        self._failures_in_row += 1
        self.metrics.last_error = f"{type(exc).__name__}: {exc}"
        if self._failures_in_row == 1 or self._failures_in_row % 50 == 0:
            log.warning("writing %d clicks failed (%s); keeping them, retrying", waiting, exc)
        step = min(self._failures_in_row, len(RETRY_BACKOFF_S)) - 1
        await asyncio.sleep(0 if self._closing else RETRY_BACKOFF_S[step])

    async def _salt_for(self, day: int) -> bytes:
        """The salt of a UTC day; a new day creates its salt and deletes older ones."""
        salt = self._salts.get(day)
        if salt is None:
            salt = await self.db.run(store.salt_for_day, day, lambda: os.urandom(32))
            self._salts = {d: s for d, s in self._salts.items() if d >= day}
            self._salts[day] = salt
        return salt

    async def _catch_up_rollups(self) -> None:
        """Re-aggregate clicks written after the rollup watermark (a crash or kill -9)."""
        n = await self.db.run(_catch_up)
        if n:
            log.info("rolled up %d clicks written before the last stop", n)

    async def close(self, timeout_s: float = 30.0) -> int:
        """Flush everything; return how many captured clicks could not be written."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        deadline = time.monotonic() + timeout_s
        while self.queued and time.monotonic() < deadline:
            try:
                await self.flush()
            except Exception:
                log.exception("final click flush failed; retrying")
                await asyncio.sleep(0.1)
        if not self.queued:
            # Everything is written: write the remaining rollup aggregates too.
            try:
                await self.db.run(_write_batch, [], self._rollup)
                self._rollup = Rollup()
            except sqlite3.Error as exc:
                log.warning("could not write the last rollups (%s): recomputed at next start", exc)
        left = self.queued
        if left:
            log.error("shutdown: %d clicks could not be written before the deadline", left)
        self._executor.shutdown(wait=False)
        return left


def _write_batch(
    conn: sqlite3.Connection, rows: list[Row], pending: Rollup | None
) -> tuple[int, int, Rollup]:
    """One transaction: insert the rows; with `pending`, write it plus these rows' rollup."""
    batch_rollup = Rollup()
    with store.Transaction(conn):
        if rows:
            first, last = store.insert_clicks(conn, rows)
        else:
            first, last = 0, -1
        batch_rollup.add_rows(rows, max(last, 0))
        if pending is not None:
            # Rollup upserts add, so the pending aggregates and this batch's are written one
            # after the other; `pending` itself is not changed (a failed transaction must
            # leave it as it was for the retry).
            watermark = max(pending.last_id, batch_rollup.last_id)
            for part in (pending, batch_rollup):
                if part.clicks:
                    store.write_rollups(
                        conn, part.minutes, part.dims, part.visitor_rows(), watermark
                    )
    return first, last, batch_rollup


def _catch_up(conn: sqlite3.Connection) -> int:
    watermark = store.rollup_watermark(conn)
    cols = ", ".join(store.CLICK_COLUMNS)
    total = 0
    while True:
        rows = conn.execute(
            f"SELECT id, {cols} FROM clicks WHERE id > ? ORDER BY id LIMIT 100000", (watermark,)
        ).fetchall()
        if not rows:
            return total
        rollup = Rollup()
        last = rows[-1][0]
        rollup.add_rows((tuple(r)[1:] for r in rows), last)
        with store.Transaction(conn):
            store.write_rollups(
                conn, rollup.minutes, rollup.dims, rollup.visitor_rows(), rollup.last_id
            )
        watermark = last
        total += len(rows)
