"""The collector's click pipeline: batches from the workers -> enrichment -> one SQLite
transaction -> acknowledgement. Every click written exactly once; nothing lost silently.

Rules:
- Workers ship batches of raw clicks (edge/capture.py) tagged (epoch, seq). `accept()`
  queues a batch unless this process received it before or SQLite holds it already
  (`ingest_progress`): a resend after a reconnect or a crash is recognised, never written
  twice. A batch's rows and "epoch reached seq" commit in one transaction; only then is
  the worker told (`on_committed`), and only then does it forget the batch.
- Every flush_interval_s (sooner while a backlog waits) the flusher enriches one slice of
  at most ENRICH_CHUNK_CLICKS on its own thread (GeoIP, user agent, bot kind, referrer
  source, language, visitor id; each cached by the raw bytes), feeds the live counters
  with per-second aggregates, and writes on the aiosqlite thread. The event loop only
  moves lists and applies small aggregates.
- Bounded: past max_queued_clicks the ingest stops reading from the workers (`full`),
  which keep their clicks meanwhile and count what they must drop past their own bound.
  A failed write keeps its rows and is retried with backoff. Any exception, cancellation
  included, puts a slice back before it goes on: `close()` truly awaits the flusher and
  then writes what is left, so a shutdown that reports 0 unwritten wrote everything.
- A user agent costs at most its parse budget: uncached strings are parsed within a
  share of each step's time while a backlog waits (the rest read cheaply, counted), only
  MAX_UA_BYTES of a header are parsed, and only strings seen twice enter the cache.
- Rollups (edge/rollups.py) are derived from the written rows by id range about once a
  second, in the same transaction as a batch of clicks; at start the flusher rolls up
  whatever a crash left above the watermark.

Privacy: no raw IP is stored; the visitor id is edge/visitors.py's (a keyed hash with a salt
that rotates every UTC day). With `DNT: 1` or `Sec-GPC: 1` the click is still counted, but
without a visitor id and without geo below country (no region, city or ASN).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from edge import events, rollups, visitors
from edge.capture import (
    FLAG_DNT,
    FLAG_EVENT,
    FLAG_GPC,
    FLAG_HEAD,
    FLAG_PREFETCH,
    FLAG_QR,
    FLAG_TEST,
    RawClick,
)
from edge.chsink import ClickHouseSink, Layout
from edge.config import Config
from edge.db import Database, Transaction, now_ms
from edge.live import LiveCounters
from edge.visitors import VisitorIds
from geo.bots import HEAD, PREFETCH, TEST, Verdict, explain, launch_scanner, pattern_verdict
from geo.geoip import EMPTY_GEO, GeoDatabase, GeoResult
from geo.language import primary_language
from geo.referrer import click_source, parse_referrer
from geo.useragent import UserAgentParser

log = logging.getLogger("linkedge.clicks")

UA_CACHE_SIZE: Final = 50000  # distinct raw User-Agent values remembered (parse + bot kind)
UA_PROBATION_SIZE: Final = 10000  # first sightings waiting for a second one
# Real user agents are under 500 bytes (the longest browser string in uap-core's tests);
# only this much of a header is decoded and parsed, bounding a hostile header's cost.
MAX_UA_BYTES: Final = 512
# A Referer is stored up to this many characters (its host and source are read from all
# of it): real ones are under 1 KB; a 15 KB one is an attack or a tracking blob.
MAX_REFERRER_CHARS: Final = 1024
# While a backlog waits, uncached user-agent parses (~36 µs each, far more for hostile
# strings) may take this share of an enrichment step's time; the rest read cheaply.
UA_PARSE_SHARE: Final = 0.5
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
# Pixel events waiting for their click to be written (edge/events.py PIXEL_RETRY_MS).
# Each is looked up again at every write (~10 a second): a burst of forged young ids past
# this many is refused (counted) rather than tried.
PIXEL_RETRY_MAX: Final = 1000
# With a ClickHouse sink, rows are written at most every click_sink_interval_s (or at once
# past SINK_WRITE_MAX_ROWS): ClickHouse wants few big inserts (each makes a part; at 0.1 s
# intervals and 20k clicks/s it fell behind, at 1 s it kept up: docs/clickhouse.md), and
# one insert stays well under the ~1M rows it commits atomically.
SINK_WRITE_MAX_ROWS: Final = 100_000
DROP_LOG_INTERVAL_S: Final = 10.0
GEO_CHECK_INTERVAL_S: Final = 2.0  # how often the GeoIP file is stat()ed for replacement
DAY_S: Final = 86400

_COL = {name: i for i, name in enumerate(rollups.CLICK_COLUMNS)}
_TS = _COL["ts"]

Row = tuple[Any, ...]
UAEntry = tuple[Verdict, tuple[Any, ...]]
# The UA columns of a cheaply read agent: device, OS and browser unknown.
_CHEAP_UA_COLUMNS: Final = ("other", None, None, None, None, None, None)


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
        self.pixels: list[tuple[float, bytes]] = []  # the last enrich's pixel events
        self.geo = geo
        self.ua_parser = UserAgentParser()
        self.store_truncated_ip = config.store_truncated_ip
        # link id -> its launch (unix ms), for the scanner window (set by the collector)
        self.launches: dict[int, int] = {}
        self.scanner_window_s = config.scanner_window_s
        self._ua_cache: dict[bytes, UAEntry] = {}
        self._ua_probation: dict[bytes, UAEntry] = {}
        self._ua_budget_s = float("inf")
        self._ua_spent_s = 0.0
        self.cheap_uas = 0  # user agents read cheaply because the parse budget was spent
        self._ref_cache: dict[bytes, tuple[str | None, str | None, str]] = {}
        self._lang_cache: dict[bytes, str | None] = {}
        self._ids: dict[int, tuple[bytes, VisitorIds]] = {}

    def _ua(self, raw: bytes) -> UAEntry:
        """(bot verdict from the UA alone, the 7 UA columns), cached by the raw header bytes.

        A string is admitted to the main cache on its second sighting (the first result
        waits in a small probation cache), so a flood of unique strings cannot evict the
        few thousand real ones. Uncached parses have a budget per enrichment step
        (begin_step): past it, while a backlog waits, a string gets the cheap reading
        (geo.bots' own patterns: no ua-parser, no crawler list) and is not cached."""
        hit = self._ua_cache.get(raw)
        if hit is not None:
            return hit
        seen = self._ua_probation.pop(raw, None)
        if seen is not None:
            if len(self._ua_cache) >= UA_CACHE_SIZE:
                self._ua_cache.clear()
            self._ua_cache[raw] = seen
            return seen
        text = raw[:MAX_UA_BYTES].decode("utf-8", "replace")
        if self._ua_spent_s >= self._ua_budget_s:
            self.cheap_uas += 1
            return (pattern_verdict(text), _CHEAP_UA_COLUMNS)
        started = time.perf_counter()
        info = self.ua_parser.parse(text)
        verdict = explain(text, info, is_head=False, is_prefetch=False)
        self._ua_spent_s += time.perf_counter() - started
        device = "bot" if verdict.kind is not None else info.device_type
        entry = (
            verdict,
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
        if len(self._ua_probation) >= UA_PROBATION_SIZE:
            self._ua_probation.clear()
        self._ua_probation[raw] = entry
        return entry

    def begin_step(self, budget_s: float) -> None:
        """A new enrichment step: uncached user-agent parses may take `budget_s`."""
        self._ua_budget_s = budget_s
        self._ua_spent_s = 0.0

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
        # host and source come from the whole value; at most MAX_REFERRER_CHARS is stored
        entry = (text[:MAX_REFERRER_CHARS] if text else None, host, source)
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
        self.pixels = pixels = []  # conversion pixels in the batch (capture.FLAG_EVENT)
        launches = self.launches if self.scanner_window_s > 0 else None
        window = self.scanner_window_s * 1000
        for ts, link_id, domain_id, ip, ua_raw, ref_raw, lang_raw, flags, route, cid in clicks:
            if flags & FLAG_EVENT:
                pixels.append((ts, lang_raw))  # (time, the pixel's query): not a click
                continue
            ua = ua_cache.get(ua_raw) or self._ua(ua_raw)
            if flags:
                # the request's own signals come first (geo.bots.explain's order)
                if flags & FLAG_TEST:
                    verdict = TEST
                elif flags & FLAG_PREFETCH:
                    verdict = PREFETCH
                elif flags & FLAG_HEAD:
                    verdict = HEAD
                else:
                    verdict = ua[0]
                method = "HEAD" if flags & FLAG_HEAD else "GET"
                private = flags & (FLAG_DNT | FLAG_GPC)
                scanned = bool(flags & FLAG_QR)
            else:
                verdict = ua[0]
                method = "GET"
                private = 0
                scanned = False
            geo = geo_seen.get(ip)
            if geo is None:
                geo = geo_seen[ip] = geo_lookup(ip) if ip else EMPTY_GEO
            ref = ref_cache.get(ref_raw) or self._referrer(ref_raw)
            if scanned:
                ref = (ref[0], ref[1], click_source(ref[2], scanned=True))
            lang = lang_cache.get(lang_raw, _UNSET)
            if lang is _UNSET:
                lang = self._language(lang_raw)
            if launches and verdict.kind is None:
                launched = launches.get(link_id)  # in ms, as the clicks are stored: a
                # click in the launch's own millisecond was answered before it was made
                if launched is not None and 0 < int(ts * 1000) - launched < window:
                    found = launch_scanner(ref[1], bool(lang_raw), geo[3])
                    if found is not None:
                        verdict = found
            second = int(ts)
            bot_kind = verdict.kind
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
                tail: tuple[Any, ...] = (lang, 1, None, route, cid, verdict.reason)
            else:
                vid = ids_of[second // DAY_S].of(ip, ua_raw, domain_id)
                head = (int(ts * 1000), link_id, vid, bot_kind, method, *geo)
                tail = (lang, 0, truncate_ip(ip) if truncated else None, route, cid, verdict.reason)
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
        "received",
        "written",
        "duplicates",
        "write_failures",
        "flushes",
        "flush_durations",
        "last_error",
        "peak_queue",
        "max_flush_lag_s",
        "paused",
    )

    def __init__(self) -> None:
        self.received = 0  # clicks accepted from the workers (resends not counted)
        self.written = 0  # clicks committed to SQLite
        self.duplicates = 0  # batches recognised as resent (already received or committed)
        self.write_failures = 0
        self.flushes = 0
        self.flush_durations: list[float] = []  # recent write durations, for the histogram
        self.last_error: str | None = None
        self.peak_queue = 0
        self.max_flush_lag_s = 0.0  # age of the oldest click of a write when it committed
        self.paused = False  # not reading from the workers: the queue is full


# At most this many clicks are enriched in one step (one call on the enrichment thread):
# a backlog after a stall is drained in slices, never in one GIL-holding call.
ENRICH_CHUNK_CLICKS: Final = 20_000
# How long the collector keeps the progress of a worker that is gone (a resend of its
# batches can only come from a worker that is alive).
PROGRESS_KEPT_MS: Final = 7 * 86400 * 1000

Batch = tuple[int, int, list[RawClick], dict[int, int]]  # epoch, seq, clicks, budget spent
Progress = dict[int, int]  # worker epoch -> the highest seq of its batches in a write
Spent = dict[int, dict[int, int]]  # worker epoch -> link -> clicks that spent its budget


class ClickRecorder:
    """The collector's pipeline: the batches received from the workers, enrichment, the
    writes and their acknowledgements, the rollups."""

    def __init__(
        self,
        config: Config,
        db: Database,
        geo: GeoDatabase,
        live: LiveCounters,
        sink: ClickHouseSink | None = None,
    ) -> None:
        self.config = config
        self.db = db
        # where the rows go: SQLite (None) or ClickHouse, which then also deduplicates
        # (edge/chsink.py); the click budgets and salts stay in SQLite either way
        self.sink = sink
        self.geo = geo
        self.live = live
        self.enricher = Enricher(config, geo)
        self.metrics = PipelineMetrics()
        # exactly once: per worker epoch, the highest seq committed (read at start from
        # ingest_progress) and the highest received by this process
        self.committed: Progress = {}
        self.received: Progress = {}
        # told after each commit (the ingest acknowledges), and when there is room again
        self.on_committed: Callable[[Progress, Spent], None] | None = None
        self.on_room: Callable[[], None] | None = None
        # waiting: batches not enriched yet; enriched rows not written yet (a failed
        # write keeps them, with the progress they carry)
        self._batches: deque[Batch] = deque()
        self._raw_count = 0
        self._pending: list[tuple[list[Row], Progress, Spent]] = []
        self._pending_count = 0
        self._pending_layout: Layout = []  # the worker batches of the pending rows (sink)
        self._pending_since = 0.0
        self._in_flight = 0  # clicks being enriched right now
        # conversion pixels (edge/events.py) enriched, and those whose click is not written
        # yet, tried again at the next writes (bounded)
        self._pending_pixels: list[tuple[float, bytes]] = []
        self._pixel_retry: list[tuple[float, bytes]] = []
        # rollups
        self._unrolled = 0  # clicks written but not yet in the rollups
        self._last_rollup = 0.0
        self._rollup_cost_s = 0.0  # how long the last rollup write took
        self._rebuild_due = True  # look for stale group visitors after the next flush
        self._rollup_state = rollups.RollupState()  # used on the database thread only
        # the flusher
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="linkedge-enrich")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._failures_in_row = 0
        self._salts: dict[int, bytes] = {}
        self._next_geo_check = 0.0

    @property
    def queued(self) -> int:
        """Clicks received and not yet written."""
        return self._raw_count + self._in_flight + self._pending_count

    @property
    def full(self) -> bool:
        return self.queued >= self.config.max_queued_clicks

    @property
    def flush_lag_s(self) -> float:
        """Age of the oldest click waiting (0 when nothing waits)."""
        oldest = None
        if self._pending and self._pending[0][0]:
            oldest = self._pending[0][0][0][_TS] / 1000
        elif self._batches and self._batches[0][2]:
            oldest = self._batches[0][2][0][0]
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    async def start(self) -> None:
        if self.sink is not None:
            # ClickHouse holds the rows and their worker identities: a resent batch is
            # recognised there when it is written (its epoch is checked first)
            await self.sink.start()
            self.committed = {}
        else:
            self.committed = await self.db.run(_load_progress)
            await self._catch_up_rollups()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="click-flusher")

    def accept(
        self, epoch: int, seq: int, clicks: list[RawClick], spent: dict[int, int] | None = None
    ) -> bool:
        """A worker's batch; False when it was received or committed before (a resend after
        a reconnect or a crash): the caller acknowledges it from `committed`."""
        if seq <= self.received.get(epoch, 0) or seq <= self.committed.get(epoch, 0):
            self.metrics.duplicates += 1
            return False
        self.received[epoch] = seq
        if clicks:
            self._batches.append((epoch, seq, clicks, spent or {}))
            self._raw_count += len(clicks)
            self.metrics.received += len(clicks)
            depth = self.queued
            if depth > self.metrics.peak_queue:
                self.metrics.peak_queue = depth
            if self._raw_count >= ENRICH_CHUNK_CLICKS:
                self._wake.set()
        else:  # nothing to write: committed as soon as everything before it is
            self._batches.append((epoch, seq, clicks, spent or {}))
        return True

    async def _run(self) -> None:
        interval = self.config.flush_interval_s
        while not self._closing:
            if not self._batches:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self._maybe_reload_geo()
                await self.flush()
                await self._rebuild_stale_groups()
            except Exception:  # the pipeline never raises into its callers
                log.exception("click flush failed; will retry")
                await asyncio.sleep(RETRY_BACKOFF_S[-1])

    async def flush(self) -> int:
        """Enrich one slice of what waits, write everything enriched; return the clicks
        written. Nothing is lost to any exception, cancellation included: a slice is put
        back before the exception goes on, and rows leave the queue only once committed."""
        if self._batches:
            take: list[Batch] = []
            n = 0
            while self._batches and n < ENRICH_CHUNK_CLICKS:
                batch = self._batches.popleft()
                take.append(batch)
                n += len(batch[2])
            self._raw_count -= n
            self._in_flight = n
            progress: Progress = {}
            spent: Spent = {}
            for epoch, seq, _clicks, batch_spent in take:
                progress[epoch] = max(progress.get(epoch, 0), seq)
                if batch_spent:
                    mine = spent.setdefault(epoch, {})
                    for link_id, n in batch_spent.items():
                        mine[link_id] = mine.get(link_id, 0) + n
            raw = [click for _e, _s, clicks, _spent in take for click in clicks]
            try:
                rows, live = await self._enrich(raw)
            except BaseException as exc:
                self._batches.extendleft(reversed(take))  # first again, in order
                self._raw_count += n
                if isinstance(exc, sqlite3.Error):  # the salts could not be read
                    await self._write_failed(exc, n)
                    return 0
                raise
            finally:
                self._in_flight = 0
            self.live.add(live)
            self._pending_pixels.extend(self.enricher.pixels)
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append((rows, progress, spent))
            self._pending_count += len(rows)
            if self.sink is not None:
                self._pending_layout.extend((e, s, len(c)) for e, s, c, _spent in take)
        if not self._pending and not self._pixel_retry:
            await self._write_idle_rollup()
            return 0
        if self.sink is not None and not self._sink_due():
            return 0
        return await self._write_pending()

    def _sink_due(self) -> bool:
        return (
            self._closing
            or self._pending_count >= SINK_WRITE_MAX_ROWS
            or time.monotonic() - self._pending_since >= self.config.click_sink_interval_s
        )

    async def _enrich(
        self, raw: list[RawClick]
    ) -> tuple[list[Row], list[tuple[int, int, int, int]]]:
        if not raw:
            return [], []
        first_day = int(min(c[0] for c in raw)) // DAY_S
        last_day = int(max(c[0] for c in raw)) // DAY_S
        # ascending: a new day's salt deletes the older ones
        salts = {day: await self._salt_for(day) for day in range(first_day, last_day + 1)}
        # uncached user agents may take a share of the time a step has while a backlog
        # waits (a flood of unique ones then reads cheaply instead of stalling the writes)
        backlog = self._raw_count > ENRICH_CHUNK_CLICKS
        budget = UA_PARSE_SHARE * self.config.flush_interval_s if backlog else float("inf")
        self.enricher.begin_step(budget)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.enricher.enrich, raw, salts)

    async def _write_pending(self) -> int:
        pending = self._pending
        rows: list[Row] = [row for part, _p, _s in pending for row in part]
        progress: Progress = {}
        spent: Spent = {}
        for _rows, part, part_spent in pending:
            for epoch, seq in part.items():
                progress[epoch] = max(progress.get(epoch, 0), seq)
            for epoch, links in part_spent.items():
                mine = spent.setdefault(epoch, {})
                for link_id, n in links.items():
                    mine[link_id] = mine.get(link_id, 0) + n
        spent_total: dict[int, int] = {}
        for links in spent.values():
            for link_id, n in links.items():
                spent_total[link_id] = spent_total.get(link_id, 0) + n
        started = time.monotonic()
        pixels = self._pending_pixels + self._pixel_retry
        outcome: list[events.PixelOutcome] = []
        write: asyncio.Future[tuple[int, int, int]]
        if self.sink is not None:  # conversions are not tracked with a sink (docs/clickhouse.md)
            rollup_due = False
            write = asyncio.ensure_future(self._sink_write(rows, spent_total))
        else:
            rollup_due = self._rollup_due(started)
            write = asyncio.ensure_future(
                self.db.run(
                    _write_batch,
                    rows,
                    progress,
                    rollup_due,
                    self._rollup_state,
                    ROLLUP_MAX_CLICKS,
                    spent_total,
                    pixels,
                    outcome,
                )
            )
        # A cancellation must not leave us guessing: the write goes on in its thread and
        # may commit, so wait for its outcome, keep the books, then let the cancel go on.
        cancelled = False
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                cancelled = True
            except Exception:
                break
        try:
            _first, _last, rolled = write.result()
        except Exception as exc:  # sqlite3 errors and anything else: keep the rows
            await self._write_failed(exc, len(rows))
            if cancelled:
                raise asyncio.CancelledError from None
            return 0
        self._committed(rows, progress, spent, started, rollup_due, rolled)
        self._pixels_written(outcome[0] if outcome else None)
        if cancelled:
            raise asyncio.CancelledError
        return len(rows)

    async def _sink_write(self, rows: list[Row], spent: dict[int, int]) -> tuple[int, int, int]:
        """Rows to ClickHouse, then the click budgets they spent to SQLite. A failure of
        either fails the write: its retry finds the rows in ClickHouse (the sink
        reconciles after a failure) and records the budgets once."""
        assert self.sink is not None
        await self.sink.write(rows, list(self._pending_layout))
        if spent and rows:
            await self.db.run(_record_spent, spent)
        return 0, -1, 0

    def _committed(
        self,
        rows: list[Row],
        progress: Progress,
        spent: Spent,
        started: float,
        rollup_due: bool,
        rolled: int,
    ) -> None:
        self._pending = []
        self._pending_count = 0
        self._pending_layout = []
        for epoch, seq in progress.items():
            if seq > self.committed.get(epoch, 0):
                self.committed[epoch] = seq
        m = self.metrics
        m.written += len(rows)
        if rows:
            lag = time.time() - min(r[_TS] for r in rows) / 1000
            m.max_flush_lag_s = max(m.max_flush_lag_s, lag)
        m.flushes += 1
        m.last_error = None
        self._failures_in_row = 0
        duration = time.monotonic() - started
        m.flush_durations.append(duration)
        if len(m.flush_durations) > 1000:
            del m.flush_durations[:500]
        self._unrolled += len(rows)
        if rollup_due:
            self._rolled_up(started, duration, rolled)
        if self.on_committed is not None:
            self.on_committed(progress, spent)
        if self.on_room is not None and self.queued < self.config.max_queued_clicks // 2:
            self.on_room()

    def _pixels_written(self, outcome: events.PixelOutcome | None) -> None:
        self._pending_pixels = []
        self._pixel_retry = []
        if outcome is None:
            return
        counters = self.live.conversions
        counters.add("pixel", outcome.accepted)
        for reason, n in outcome.rejected.items():
            counters.reject(reason, n)
        if outcome.duplicates:
            counters.duplicate("pixel", outcome.duplicates)
        retry = outcome.retry
        if len(retry) > PIXEL_RETRY_MAX:
            counters.reject("unknown_click", len(retry) - PIXEL_RETRY_MAX)
            retry = retry[-PIXEL_RETRY_MAX:]
        counters.pixel_retries += len(retry)
        self._pixel_retry = retry

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
        if not self._rebuild_due or self.sink is not None:
            return
        try:
            self._rebuild_due = await self.db.run(_rebuild_one_stale_group_day)
        except Exception as exc:
            log.warning("rebuilding a group's visitors failed (%s); will retry", exc)

    async def _write_idle_rollup(self) -> None:
        """No clicks waiting: still roll up the last ones, so the rollup tables (and
        everything reading them, like `linkedge stats`) do not wait for the next click."""
        started = time.monotonic()
        if self.sink is not None or not self._unrolled or not self._rollup_due(started):
            return
        try:
            _first, _last, rolled = await self.db.run(
                _write_batch, [], {}, True, self._rollup_state, ROLLUP_MAX_CLICKS
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
        """Write everything received, then the last rollups; return clicks left unwritten.

        The flusher task is awaited to its end (cancelled only past the deadline, and then
        awaited again: a cancelled flush puts its slice back)."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        while self.queued and time.monotonic() < deadline:
            try:
                await self.flush()
            except Exception:
                log.exception("final click flush failed; retrying")
                await asyncio.sleep(0.1)
        if not self.queued and self.sink is None:
            # everything is written: roll up the last clicks too, a capped step at a time
            try:
                while time.monotonic() < deadline:
                    _f, _l, rolled = await self.db.run(
                        _write_batch, [], {}, True, self._rollup_state, ROLLUP_MAX_CLICKS
                    )
                    if not rolled:
                        self._unrolled = 0
                        break
            except Exception as exc:  # the clicks are written: a next start rolls them up
                log.warning("could not write the last rollups (%s): done at next start", exc)
        left = self.queued
        if left:
            log.error("shutdown: %d clicks could not be written before the deadline", left)
        self._executor.shutdown(wait=False)
        if self.sink is not None:
            await self.sink.close()
        return left


_SPENT_SQL: Final = (
    "INSERT INTO link_spent (link_id, spent) VALUES (?, ?) "
    "ON CONFLICT (link_id) DO UPDATE SET spent = spent + excluded.spent"
)


def _load_progress(conn: sqlite3.Connection) -> Progress:
    """Every worker epoch's committed seq; forget those gone for PROGRESS_KEPT_MS."""
    with Transaction(conn):
        conn.execute(
            "DELETE FROM ingest_progress WHERE updated_at < ?", (now_ms() - PROGRESS_KEPT_MS,)
        )
    return {int(e): int(s) for e, s in conn.execute("SELECT epoch, seq FROM ingest_progress")}


def _write_batch(
    conn: sqlite3.Connection,
    rows: list[Row],
    progress: Progress,
    rollup_due: bool,
    state: rollups.RollupState | None = None,
    limit: int = 0,
    spent: dict[int, int] | None = None,
    pixels: list[tuple[float, bytes]] | None = None,
    outcome: list[events.PixelOutcome] | None = None,
) -> tuple[int, int, int]:
    """One transaction: insert the rows, record the workers' progress (the batches they
    came in), and, when `rollup_due`, roll up the clicks above the watermark (at most
    `limit`, so one transaction never holds the writer for long). A failed transaction
    changes nothing, so the retry counts every click once. Returns the rows' id range and
    how many were rolled up."""
    if state is not None and rollup_due:
        state.chunks.forget_days_before(int(time.time()) // DAY_S - 1)
    rolled = 0
    with Transaction(conn):
        if progress and _already_written(conn, progress):
            rows = []  # a retry of a write that committed (its outcome was lost): not twice
            pixels = None
        first, last = rollups.insert_clicks(conn, rows) if rows else (0, -1)
        if spent and rows:  # click budgets: spent with the clicks that spent them
            conn.executemany(_SPENT_SQL, list(spent.items()))
        if pixels:  # conversion pixels, after the clicks they may belong to
            result = events.record_pixels(conn, pixels, now_ms())
            if outcome is not None:
                outcome.append(result)
        if progress:
            stamp = now_ms()
            conn.executemany(
                "INSERT INTO ingest_progress (epoch, seq, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (epoch) DO UPDATE SET seq = max(seq, excluded.seq), "
                "updated_at = excluded.updated_at",
                [(epoch, seq, stamp) for epoch, seq in progress.items()],
            )
        if rollup_due:
            rolled = rollups.roll_up(conn, state, limit)
    return first, last, rolled


def _record_spent(conn: sqlite3.Connection, spent: dict[int, int]) -> None:
    with Transaction(conn):
        conn.executemany(_SPENT_SQL, list(spent.items()))


def _already_written(conn: sqlite3.Connection, progress: Progress) -> bool:
    """Whether every batch of a write is committed already (the unit of a write is
    whole: all its batches committed together, or none)."""
    placeholders = ", ".join("?" for _ in progress)
    stored = dict(
        conn.execute(
            f"SELECT epoch, seq FROM ingest_progress WHERE epoch IN ({placeholders})",
            list(progress),
        ).fetchall()
    )
    return all(stored.get(epoch, 0) >= seq for epoch, seq in progress.items())


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
