"""Every click recorded: capture buffer -> enrichment -> one SQLite transaction, zero loss.

Rules:
- The hot path appends one raw tuple to `ClickRecorder.buffer`: (unix time, link id,
  domain id, client ip, user-agent bytes, referer bytes, accept-language bytes, flags).
  Nothing else happens per request.
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
- Rollups (per link: link_minute/hour/day, link_dim_hour, link_day_visitors; per group:
  group_minute/hour/day, group_day_visitors) are derived from the written rows by id
  range (rollups.roll_up): about once a second, in the same transaction as a batch of
  clicks, the clicks above a watermark (the highest click id rolled up) are added and the
  watermark moves, so each click is counted exactly once even across crashes: at start
  the flusher rolls up whatever a crash left above the watermark.

Privacy: no raw IP is stored; the visitor id is edge/visitors.py's (a keyed hash with a salt
that rotates every UTC day). With `DNT: 1` or `Sec-GPC: 1` the click is still
counted, but without a visitor id and without geo below country (no region, city or ASN).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from edge import rollups, visitors
from edge.capture import FLAG_DNT, FLAG_GPC, FLAG_HEAD, FLAG_PREFETCH, RawClick
from edge.config import Config
from edge.db import Database, Transaction
from edge.live import LiveCounters
from edge.visitors import VisitorIds
from geo.bots import classify
from geo.geoip import EMPTY_GEO, GeoDatabase, GeoResult
from geo.language import primary_language
from geo.referrer import parse_referrer
from geo.useragent import UserAgentParser

log = logging.getLogger("linkedge.clicks")

UA_CACHE_SIZE: Final = 50000  # distinct raw User-Agent values remembered (parse + bot kind)
TEXT_CACHE_SIZE: Final = 50000  # distinct raw Referer / Accept-Language values remembered
_UNSET: Final[Any] = object()
RETRY_BACKOFF_S: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
# Rollups are written at most every ROLLUP_INTERVAL_S, so stats trail clicks by about a
# second. Their cost grows with the distinct (link, minute/hour, value) keys of the clicks
# they add, so when traffic is spread over thousands of links the next write waits until
# the last one's duration is at most ROLLUP_BUDGET of the time between them (up to
# ROLLUP_MAX_INTERVAL_S): fewer, larger writes, with repeated keys collapsed. Stats stay
# exact meanwhile (they add the clicks above the watermark).
ROLLUP_INTERVAL_S: Final = 1.0
ROLLUP_MAX_INTERVAL_S: Final = 60.0
ROLLUP_BUDGET: Final = 0.1
# ...but never more than this many clicks in one roll-up: its transaction blocks click
# inserts while it runs (~4 s for 500k clicks spread over 10k links here, where at 100k
# clicks/s a 60 s interval would be 6M); a backlog this big is rolled up at every flush.
# Smaller, more frequent roll-ups measured worse: fewer repeated keys per write, and more
# time with a roll-up competing with the event loop (p99 51 ms with 150k, 23-29 ms here).
ROLLUP_MAX_CLICKS: Final = 500_000
DROP_LOG_INTERVAL_S: Final = 10.0
GEO_CHECK_INTERVAL_S: Final = 2.0  # how often the GeoIP file is stat()ed for replacement
DAY_S: Final = 86400

_COL = {name: i for i, name in enumerate(rollups.CLICK_COLUMNS)}
_TS = _COL["ts"]

Row = tuple[Any, ...]


def truncate_ip(ip: str) -> str | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


class Enricher:
    """Raw captured clicks -> click rows in rollups.CLICK_COLUMNS order. Thread-confined."""

    def __init__(self, config: Config, geo: GeoDatabase) -> None:
        self.geo = geo
        self.ua_parser = UserAgentParser()
        self.store_truncated_ip = config.store_truncated_ip
        self._ua_cache: dict[bytes, tuple[str | None, tuple[Any, ...]]] = {}
        self._ref_cache: dict[bytes, tuple[str | None, str | None, str]] = {}
        self._lang_cache: dict[bytes, str | None] = {}
        self._ids: dict[int, tuple[bytes, VisitorIds]] = {}

    def _ua(self, raw: bytes) -> tuple[str | None, tuple[Any, ...]]:
        """(bot kind from the UA alone, the 7 UA columns), cached by the raw header bytes."""
        hit = self._ua_cache.get(raw)
        if hit is not None:
            return hit
        text = raw.decode("utf-8", "replace")
        info = self.ua_parser.parse(text)
        kind = classify(text, info, is_head=False, is_prefetch=False)
        device = "bot" if kind is not None else info.device_type
        entry = (
            kind,
            (
                device,
                info.os,
                info.os_major,
                info.browser,
                info.browser_major,
                info.device_brand,
                info.device_model,
            ),
        )
        if len(self._ua_cache) >= UA_CACHE_SIZE:
            self._ua_cache.clear()
        self._ua_cache[raw] = entry
        return entry

    def _visitor_ids(self, day: int, salt: bytes) -> VisitorIds:
        """The visitor-id maker of a day (its cache lives as long as the day's salt)."""
        known = self._ids.get(day)
        if known is None or known[0] != salt:
            self._ids = {d: v for d, v in self._ids.items() if d >= day - 1}
            known = self._ids[day] = (salt, VisitorIds(salt))
        return known[1]

    def _referrer(self, raw: bytes) -> tuple[str | None, str | None, str]:
        text = raw.decode("utf-8", "replace") if raw else None
        host, source = parse_referrer(text or "")
        entry = (text, host, source)
        if len(self._ref_cache) >= TEXT_CACHE_SIZE:
            self._ref_cache.clear()
        self._ref_cache[raw] = entry
        return entry

    def _language(self, raw: bytes) -> str | None:
        lang = primary_language(raw.decode("latin-1")) if raw else None
        if len(self._lang_cache) >= TEXT_CACHE_SIZE:
            self._lang_cache.clear()
        self._lang_cache[raw] = lang
        return lang

    def enrich(
        self, clicks: Sequence[RawClick], salts: dict[int, bytes]
    ) -> tuple[list[Row], list[tuple[int, int, int, int]]]:
        """Rows to insert and live aggregates (link_id, second, clicks, humans).

        `salts` maps each UTC day (unix seconds // 86400) of the clicks to its salt.
        Shaped for speed (this loop runs once per click): every lookup is cached by the raw
        bytes the parser handed over, and a row is built from cached tuples.
        """
        rows: list[Row] = []
        append = rows.append
        seconds: list[tuple[int, int]] = []
        human_seconds: list[tuple[int, int]] = []
        geo_lookup = self.geo.lookup
        geo_seen: dict[str, GeoResult] = {}
        ids_of = {day: self._visitor_ids(day, salt) for day, salt in salts.items()}
        ua_cache, ref_cache, lang_cache = self._ua_cache, self._ref_cache, self._lang_cache
        truncated = self.store_truncated_ip
        for ts, link_id, domain_id, ip, ua_raw, ref_raw, lang_raw, flags in clicks:
            ua = ua_cache.get(ua_raw) or self._ua(ua_raw)
            if flags:
                if flags & FLAG_PREFETCH:
                    bot_kind: str | None = "prefetch"
                elif flags & FLAG_HEAD:
                    bot_kind = "head"
                else:
                    bot_kind = ua[0]
                method = "HEAD" if flags & FLAG_HEAD else "GET"
                private = flags & (FLAG_DNT | FLAG_GPC)
            else:
                bot_kind = ua[0]
                method = "GET"
                private = 0
            geo = geo_seen.get(ip)
            if geo is None:
                geo = geo_seen[ip] = geo_lookup(ip) if ip else EMPTY_GEO
            ref = ref_cache.get(ref_raw) or self._referrer(ref_raw)
            lang = lang_cache.get(lang_raw, _UNSET)
            if lang is _UNSET:
                lang = self._language(lang_raw)
            second = int(ts)
            if private:
                head: tuple[Any, ...] = (
                    int(ts * 1000),
                    link_id,
                    None,
                    bot_kind,
                    method,
                    geo[0],
                    None,
                    None,
                    None,
                    None,
                )
                tail: tuple[Any, ...] = (lang, 1, None)
            else:
                vid = ids_of[second // DAY_S].of(ip, ua_raw, domain_id)
                head = (int(ts * 1000), link_id, vid, bot_kind, method, *geo)
                tail = (lang, 0, truncate_ip(ip) if truncated else None)
            append((*head, *ua[1], *ref, *tail))
            key = (link_id, second)
            seconds.append(key)
            if bot_kind is None:
                human_seconds.append(key)
        humans = Counter(human_seconds)
        live = [(k[0], k[1], n, humans.get(k, 0)) for k, n in Counter(seconds).items()]
        return rows, live


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
        "max_flush_lag_s",
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
        self.max_flush_lag_s = 0.0  # age of the oldest click of a batch when it was written
        self.last_write_at = 0.0


class ClickRecorder:
    """The click pipeline: owns the capture buffer, the queue and the flusher task."""

    def __init__(
        self,
        config: Config,
        db: Database,
        geo: GeoDatabase,
        live: LiveCounters,
    ) -> None:
        self.config = config
        self.db = db
        self.geo = geo
        self.live = live
        self.enricher = Enricher(config, geo)
        self.metrics = PipelineMetrics()
        # hot path: the server appends raw tuples here
        self.buffer: list[RawClick] = []
        # waiting to be written: enriched rows of earlier flushes that failed, raw clicks
        self._raw_queue: list[RawClick] = []
        self._rows_queue: list[Row] = []
        self._in_flight = 0  # clicks being enriched or written right now
        self._unrolled = 0  # clicks written but not yet in the rollups
        self._last_rollup = 0.0
        self._rollup_cost_s = 0.0  # how long the last rollup write took
        self._rebuild_due = True  # look for stale group visitors after the next flush
        # the rollup writer's memory (rollups.RollupState): used on the database thread only
        self._rollup_state = rollups.RollupState()
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
                await self._rebuild_stale_groups()
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
            await self._write_idle_rollup()
            return 0
        rows, self._rows_queue = self._rows_queue, []
        self._in_flight = len(rows)
        started = time.monotonic()
        rollup_due = self._rollup_due(started)
        try:
            _first, _last, rolled = await self.db.run(
                _write_batch, rows, rollup_due, self._rollup_state, ROLLUP_MAX_CLICKS
            )
        except Exception as exc:  # sqlite3 errors, and anything else: keep the rows
            self._rows_queue[:0] = rows
            self._in_flight = 0
            await self._write_failed(exc, len(rows))
            return 0
        self._in_flight = 0
        self.metrics.written += len(rows)
        lag = time.time() - rows[0][_TS] / 1000  # rows are in time order
        if lag > self.metrics.max_flush_lag_s:
            self.metrics.max_flush_lag_s = lag
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
        self._unrolled += len(rows)
        if rollup_due:
            self._rolled_up(started, duration, rolled)
        return len(rows)

    def _rollup_due(self, now: float) -> bool:
        elapsed = now - self._last_rollup
        return (
            self._closing
            or self._unrolled >= ROLLUP_MAX_CLICKS
            or elapsed >= ROLLUP_MAX_INTERVAL_S
            or elapsed >= max(ROLLUP_INTERVAL_S, self._rollup_cost_s / ROLLUP_BUDGET)
        )

    def _rolled_up(self, started: float, duration: float, rolled: int) -> None:
        self._unrolled = max(0, self._unrolled - rolled)
        self._last_rollup = started
        self._rollup_cost_s = duration
        self._rebuild_due = True

    async def _rebuild_stale_groups(self) -> None:
        """Rebuild one group-day's visitors that a link edit left stale per flush cycle
        while any wait (a bounded step: a rebuild reads a whole group's day); look again
        after the next roll-up once none does."""
        if not self._rebuild_due:
            return
        try:
            self._rebuild_due = await self.db.run(_rebuild_one_stale_group_day)
        except Exception as exc:
            log.warning("rebuilding a group's visitors failed (%s); will retry", exc)

    async def _write_idle_rollup(self) -> None:
        """No clicks waiting: still roll up the last ones, so the rollup tables (and
        everything reading them, like `linkedge stats`) do not wait for the next click."""
        started = time.monotonic()
        if not self._unrolled or not self._rollup_due(started):
            return
        try:
            _first, _last, rolled = await self.db.run(
                _write_batch, [], True, self._rollup_state, ROLLUP_MAX_CLICKS
            )
        except Exception as exc:
            await self._write_failed(exc, 0)
            return
        self._rolled_up(started, time.monotonic() - started, rolled)

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
            salt = await self.db.run(visitors.salt_for_day, day, lambda: os.urandom(32))
            self._salts = {d: s for d, s in self._salts.items() if d >= day}
            self._salts[day] = salt
        return salt

    async def _catch_up_rollups(self) -> None:
        """Roll up clicks written after the watermark (a crash or kill -9), and count the
        visitor chunks of the last two days (merged later like those written from now)."""
        n = await self.db.run(_catch_up)
        await self.db.run(self._rollup_state.chunks.load, int(time.time()) // DAY_S - 1)
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
            # Everything is written: roll up the last clicks too.
            try:
                await self.db.run(_write_batch, [], True, self._rollup_state)
                self._unrolled = 0
            except Exception as exc:  # the clicks are written: a next start rolls them up
                log.warning("could not write the last rollups (%s): done at next start", exc)
        left = self.queued
        if left:
            log.error("shutdown: %d clicks could not be written before the deadline", left)
        self._executor.shutdown(wait=False)
        return left


def _write_batch(
    conn: sqlite3.Connection,
    rows: list[Row],
    rollup_due: bool,
    state: rollups.RollupState | None = None,
    limit: int = 0,
) -> tuple[int, int, int]:
    """One transaction: insert the rows and, when `rollup_due`, roll up the clicks above
    the watermark (these rows included; at most `limit` when given, so one transaction
    never holds the writer for long). A failed transaction changes nothing, so the retry
    counts every click once. Returns the rows' id range and how many were rolled up."""
    if state is not None and rollup_due:
        state.chunks.forget_days_before(int(time.time()) // DAY_S - 1)
    rolled = 0
    with Transaction(conn):
        first, last = rollups.insert_clicks(conn, rows) if rows else (0, -1)
        if rollup_due:
            rolled = rollups.roll_up(conn, state, limit)
    return first, last, rolled


def _catch_up(conn: sqlite3.Connection) -> int:
    """Roll up the clicks written after the watermark (a crash or kill -9), in chunks."""
    state = rollups.RollupState()
    total = 0
    while True:
        with Transaction(conn):
            n = rollups.roll_up(conn, state, rollups.ROLL_UP_MAX_CLICKS)
        if not n:
            return total
        total += n


def _rebuild_one_stale_group_day(conn: sqlite3.Connection) -> bool:
    with Transaction(conn):
        return rollups.rebuild_stale_group_day(conn)
