"""An edge worker process: answers redirects on the shared port, ships captured clicks to
the collector, and keeps its own link table current.

Rules:
- Nothing but the redirect path runs on a worker's loop: parse, answer, capture
  (edge/server.py), plus small timers: ship the capture buffer (every ship_interval_s, or
  at once when it holds ship_max_clicks), send counters (every STATS_INTERVAL_S), and the
  link poll (edge/sync.py, whose SQLite reads run on its aiosqlite thread).
- A batch is kept until the collector acknowledges it as committed (capture.ACK). After a
  reconnect every unacknowledged batch is resent in order; the collector recognises one it
  already has. Past max_unacked_clicks new clicks are dropped, counted (`dropped`, on
  /metrics and /api/live) and logged once per interval: never silently.
  Per worker at every moment: captured == acked + dropped + queued.
- A REFRESH from the collector (sent after an API write) reloads the changed links at once
  and answers AT_REV, so the API can answer only once every worker serves the change.
- SIGTERM: stop accepting, answer what is in flight, ship everything, wait up to
  shutdown_timeout_s for the acknowledgements, send the final counters, exit 0 only if
  nothing is left unacknowledged. SIGINT is ignored: the supervisor orders the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast

from edge import capture
from edge.capture import FrameError, FrameReader, RawClick
from edge.config import Config
from edge.db import Database
from edge.facts import FactCache
from edge.limits import LOW_WATER, Leases
from edge.links import LinkTable, LocalRouting, new_click_id
from edge.looplag import LoopLag
from edge.server import EdgeServer
from edge.sync import LinkSync
from edge.visitors import DAY_S, VisitorIds, salt_for_day, visitor_int
from geo.geoip import GeoDatabase

log = logging.getLogger("linkedge.worker")

STATS_INTERVAL_S: Final = 1.0  # counters go to the collector this often
CONNECT_TIMEOUT_S: Final = 10.0  # a worker reports ready once connected, or after this
LEASE_WAIT_S: Final = 0.5  # a refresh waits this long at most for a new limit's lease
GEO_CHECK_INTERVAL_S: Final = 2.0  # the GeoIP file is stat()ed this often (rules' country)
SALT_CHECK_S: Final = 30.0  # the day's salt is looked for this often
SALT_AHEAD_S: Final = 600.0  # tomorrow's salt is read this long before midnight
RECONNECT_BACKOFF_S: Final = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
DROP_LOG_INTERVAL_S: Final = 10.0
# A connection whose peer stops reading gets no more frames past this many buffered bytes
# (they wait, unacknowledged, and go out when it drains).
SEND_HIGH_WATER_BYTES: Final = 4 * 1024 * 1024


class Shipper:
    """The click sink of a worker: the capture buffer the hot path appends to, the batches
    waiting for their acknowledgement, and the connection to the collector."""

    def __init__(self, config: Config, slot: int, path: str) -> None:
        self.config = config
        self.slot = slot
        self.path = path  # the collector's Unix socket
        self.epoch = secrets.randbits(62) | 1  # this process's batches: (epoch, seq)
        # hot path: the server appends raw clicks here
        self.buffer: list[RawClick] = []
        # waiting for an ACK: (seq, frame, clicks in it), oldest first
        self.unacked: deque[tuple[int, bytes, int]] = deque()
        self.unacked_clicks = 0
        self.unacked_bytes = 0
        self.seq = 0
        self.sent_seq = 0  # frames up to this seq went out on the current connection
        # counters
        self.captured = 0
        self.acked = 0
        self.dropped = 0
        self.reconnects = 0
        self._dropped_since_log = 0
        self._last_drop_log = 0.0
        # connection
        self.link: CollectorLink | None = None
        self.on_refresh: Any = None  # async callable(rev) set by the worker
        self.on_connected: Callable[[], None] | None = None
        self._ship_handle: asyncio.TimerHandle | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closing = False
        self._acked_all = asyncio.Event()
        self.connected = asyncio.Event()  # the collector answered our HELLO
        # click budgets of limited links, leased by the collector (edge/limits.py)
        self.leases = Leases(lambda asks: self.send(capture.data_frame(capture.LEASE_ASK, asks)))
        self.rev: Callable[[], int] = lambda: -1  # the link revision this worker serves

    @property
    def queued(self) -> int:
        """Clicks captured and not yet acknowledged."""
        return len(self.buffer) + self.unacked_clicks

    async def start(self) -> None:
        self._connector = asyncio.get_running_loop().create_task(self._connect_loop())
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._ship_handle = loop.call_later(self.config.ship_interval_s, self._tick)

    def _tick(self) -> None:
        self.ship()
        if not self._closing:
            self._arm()

    def nudge(self) -> None:
        """The buffer is large: ship it now rather than at the next tick."""
        asyncio.get_running_loop().call_soon(self.ship)

    def ship(self) -> None:
        """Move the capture buffer into one batch (dropping, counted, past the bound)."""
        buffer = self.buffer
        if not buffer:
            return
        clicks = buffer.copy()  # copied and cleared in place: the server holds this list
        buffer.clear()
        self.captured += len(clicks)
        room = self.config.max_unacked_clicks - self.unacked_clicks
        if len(clicks) > room:
            lost = len(clicks) - max(room, 0)
            clicks = clicks[: max(room, 0)]
            self._count_drop(lost)
            if not clicks:
                return
        spent = self.leases.spent
        data = capture.batch_frame(self.seq + 1, clicks, spent)
        if self.unacked_bytes + len(data) > self.config.max_unacked_bytes:
            self._count_drop(len(clicks))
            return
        self.leases.shipped(self.seq + 1)
        self.seq += 1
        self.unacked.append((self.seq, data, len(clicks)))
        self.unacked_clicks += len(clicks)
        self.unacked_bytes += len(data)
        self._acked_all.clear()
        self._send_pending()

    def _count_drop(self, n: int) -> None:
        self.dropped += n
        self._dropped_since_log += n
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.error(
                "worker %d: click queue full (%d clicks wait for the collector to write "
                "them): dropped %d",
                self.slot,
                self.unacked_clicks,
                self._dropped_since_log,
            )
            self._last_drop_log = now
            self._dropped_since_log = 0

    def _send_pending(self) -> None:
        link = self.link
        if link is None or not link.writable:
            return
        for seq, data, _n in self.unacked:
            if seq <= self.sent_seq:
                continue
            link.send(data)
            self.sent_seq = seq
            if not link.writable:
                break

    def acked_up_to(self, seq: int) -> None:
        self.leases.written(seq)
        unacked = self.unacked
        while unacked and unacked[0][0] <= seq:
            _s, data, n = unacked.popleft()
            self.unacked_clicks -= n
            self.unacked_bytes -= len(data)
            self.acked += n
        if not unacked:
            self._acked_all.set()

    def send(self, data: bytes) -> None:
        """A control frame (stats, AT_REV), if connected."""
        if self.link is not None:
            self.link.send(data)

    async def _connect_loop(self) -> None:
        """Keep a connection to the collector; reconnect with backoff when it drops."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            lost = loop.create_future()
            try:
                await loop.create_unix_connection(
                    functools.partial(CollectorLink, self, lost), self.path
                )
            except OSError as exc:
                if failures == 0:
                    log.warning("worker %d: cannot reach the collector (%s)", self.slot, exc)
                failures += 1
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S)) - 1]
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("worker %d: connected to the collector again", self.slot)
            failures = 0
            await lost
            self.reconnects += 1
            if self._closing and not self.unacked:
                return

    async def close(self, timeout_s: float) -> int:
        """Ship everything and wait for the acknowledgements; return clicks left over."""
        self._closing = True
        if self._ship_handle is not None:
            self._ship_handle.cancel()
        self.ship()
        if self.unacked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked_all.wait(), timeout_s)
        left = self.queued
        if left:
            log.error(
                "worker %d: %d clicks were not acknowledged before the deadline", self.slot, left
            )
        return left

    async def disconnect(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self.link is not None:
            self.link.close()


class CollectorLink(asyncio.Protocol):
    """One connection to the collector: HELLO and every unacknowledged batch on connect,
    ACK and REFRESH frames in."""

    def __init__(self, shipper: Shipper, lost: asyncio.Future[None]) -> None:
        self.shipper = shipper
        self.lost = lost
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.writable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(SEND_HIGH_WATER_BYTES)
        shipper = self.shipper
        shipper.link = self
        shipper.leases.reconnected()
        hello = (shipper.epoch, shipper.slot, os.getpid(), shipper.rev(), shipper.leases.held())
        self.send(capture.data_frame(capture.HELLO, hello))
        shipper.sent_seq = 0  # the collector may not have any of them: all again
        shipper._send_pending()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self.shipper._send_pending()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            for kind, payload in self.reader.frames():
                if kind == capture.ACK:
                    self.shipper.acked_up_to(capture.read_number(payload))
                    if not self.shipper.connected.is_set():  # the answer to our HELLO
                        self.shipper.connected.set()
                        if self.shipper.on_connected is not None:
                            self.shipper.on_connected()
                elif kind == capture.LEASE:
                    grants = capture.read_data(payload)
                    if isinstance(grants, dict):
                        self.shipper.leases.granted(grants)
                elif kind == capture.REFRESH and self.shipper.on_refresh is not None:
                    rev = capture.read_number(payload)
                    asyncio.get_running_loop().create_task(self.shipper.on_refresh(rev))
        except FrameError as exc:
            log.error(
                "worker %d: bad frame from the collector (%s): reconnecting", self.shipper.slot, exc
            )
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.shipper.link is self:
            self.shipper.link = None
            self.shipper.connected.clear()
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)


def worker_stats(
    server: EdgeServer,
    shipper: Shipper | None,
    table: LinkTable,
    sync: LinkSync,
    lag: LoopLag | None = None,
) -> dict[str, Any]:
    """What a worker reports to the collector (for /metrics, /healthz, /api/live)."""
    m = server.metrics
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "requests": m.requests,
        "by_status": dict(m.by_status),
        "redirects": m.redirects,
        "connections_open": m.connections_open,
        "connections_total": m.connections_total,
        "connections_rejected": m.connections_rejected,
        "accept_errors": m.accept_errors,
        "bad_requests": m.bad_requests,
        "timeouts": m.timeouts,
        "links_loaded": len(table),
        "rev": table.rev,
        "sync_error": sync.last_error,
        "recording": shipper is not None,
    }
    if lag is not None:
        out["loop_lag"] = lag.report()
    if shipper is not None:
        out.update(
            captured=shipper.captured + len(shipper.buffer),
            acked=shipper.acked,
            dropped=shipper.dropped,
            queued=shipper.queued,
            reconnects=shipper.reconnects,
            connected=shipper.link is not None,
        )
    return out


class WorkerRouting:
    """What routed links need of a worker (edge/links.py Routing): the fact caches, the
    budgets leased by the collector, the day's visitor-id salt, click ids."""

    def __init__(self, facts: FactCache, leases: Leases) -> None:
        self.facts = facts
        self.leases = leases
        self.take = leases.take
        self.exhausted = leases.exhausted
        self.salts: dict[int, VisitorIds] = {}  # UTC day -> the visitor ids of that day
        self._local = LocalRouting(facts)  # before a day's salt is read (a moment a day)
        self._random = b""

    def visitor(self, ip: str, user_agent: bytes, domain_id: int, now: float) -> int:
        ids = self.salts.get(int(now) // DAY_S)
        if ids is None:
            return self._local.visitor(ip, user_agent, domain_id, now)
        return visitor_int(ids.of(ip, user_agent, domain_id))

    def click_id(self, now: float) -> bytes:
        if len(self._random) < 10:
            self._random = os.urandom(10 * 1024)  # one syscall for a thousand click ids
        part, self._random = self._random[:10], self._random[10:]
        return new_click_id(now, part)

    async def keep_salts(self, db: Database) -> None:
        """Today's salt (and tomorrow's, minutes before midnight), read or created the
        way the collector does, so a worker's variant and the stored visitor id agree."""
        while True:
            now = time.time()
            days = {int(now) // DAY_S, int(now + SALT_AHEAD_S) // DAY_S}
            for day in days - set(self.salts):
                try:
                    salt = await db.run(salt_for_day, day, lambda: os.urandom(32))
                except Exception as exc:  # the database is busy: the next round retries
                    log.debug("reading the salt of day %d failed: %s", day, exc)
                    continue
                self.salts[day] = VisitorIds(salt)
            for day in [d for d in self.salts if d < int(now) // DAY_S - 1]:
                del self.salts[day]
            await asyncio.sleep(SALT_CHECK_S)


async def run_worker(
    config: Config, slot: int, sock: socket.socket, collector_path: str, ready_fd: int | None
) -> int:
    table = LinkTable(unknown_host_404=config.unknown_host == "404")
    reader = Database(config.db_path, timeout_ms=int(config.db_busy_timeout_s * 1000))
    await reader.open()
    sync = LinkSync(reader, table, config.link_poll_interval_s)
    await sync.load()
    # the link to the collector carries clicks (when recording), counters and refreshes
    link = Shipper(config, slot, collector_path)
    link.rev = lambda: table.rev
    # rules read facts (GeoIP from the copy this server's processes share)
    geo = None
    if config.geoip_path or config.geoip_asn_path:
        geo = await asyncio.to_thread(
            GeoDatabase,
            config.geoip_path,
            config.geoip_asn_path,
            shared_dir=os.path.dirname(collector_path),
        )
    routing = WorkerRouting(FactCache(geo), link.leases)
    table.routing = routing
    salts_task = asyncio.get_running_loop().create_task(routing.keep_salts(reader))
    await link.start()
    shipper = link if config.record_clicks else None
    server = EdgeServer(config, table, shipper)
    await server.start(sock=sock)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(server.loop_exception)
    lag = LoopLag()
    sync.start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def refresh(rev: int) -> None:
        try:
            await sync.refresh()
        except Exception as exc:  # a failed read: the poll retries; say where we are
            log.warning("worker %d: refresh failed: %s", slot, exc)
        # a new limited link holds its first lease before the API says it is served
        await link.leases.prepare(table.limited, LEASE_WAIT_S)
        link.send(capture.number_frame(capture.AT_REV, table.rev))

    def keep_leases() -> None:
        budget = link.leases.budget
        link.leases.ask((i for i in table.limited if budget.get(i, 0) < LOW_WATER), force=True)

    ua_task: asyncio.Task[None] | None = None

    def prepare_facts() -> None:
        nonlocal ua_task
        if table.reads_user_agent and routing.facts.ua_parser is None and ua_task is None:
            ua_task = loop.create_task(asyncio.to_thread(routing.facts.build_ua_parser))

    def on_change() -> None:
        keep_leases()
        prepare_facts()

    sync.on_change = on_change
    link.on_connected = keep_leases
    prepare_facts()

    async def reload_geo() -> None:
        while geo is not None:
            await asyncio.sleep(GEO_CHECK_INTERVAL_S)
            with contextlib.suppress(Exception):  # status() has the reason; never fatal
                await asyncio.to_thread(geo.maybe_reload)

    geo_task = loop.create_task(reload_geo())

    def send_stats() -> None:
        link.send(
            capture.data_frame(capture.STATS, worker_stats(server, shipper, table, sync, lag))
        )
        if not stop.is_set():
            loop.call_later(STATS_INTERVAL_S, send_stats)

    link.on_refresh = refresh
    send_stats()
    # ready once the collector knows us: an API write from then on waits for this worker
    try:
        await asyncio.wait_for(link.connected.wait(), CONNECT_TIMEOUT_S)
    except TimeoutError:
        log.warning("worker %d: serving before the collector answered", slot)
    if ready_fd is not None:
        os.write(ready_fd, b'{"ready": true}\n')
        os.close(ready_fd)
    # Objects alive after start (the link table, caches, modules) never become garbage:
    # out of the collector's sight, a full collection does not walk them while requests
    # wait (tens of ms with a million links).
    gc.collect()
    gc.freeze()
    lag.start()  # steady state from here (loading links is not a stall)
    await stop.wait()
    lag.stop()
    await server.stop()
    left = await link.close(config.shutdown_timeout_s)
    final = {**worker_stats(server, shipper, table, sync, lag), "final": True}
    link.send(capture.data_frame(capture.STATS, final))
    await asyncio.sleep(0)  # let the transport write it
    await link.disconnect()
    await sync.stop()
    for task in (salts_task, geo_task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await reader.close()
    if geo is not None:
        geo.close()
    return 0 if left == 0 else 1


def main() -> int:
    """`python -m edge.worker`: started by the supervisor (admin/runtime.py), which passes
    the config, the listening socket's fd, the collector's socket path and a ready pipe in
    the environment."""
    from edge.config import config_from_json
    from edge.process import child_setup
    from edge.server import install_event_loop_policy

    child_setup()
    config = config_from_json(os.environ["LINKEDGE_CHILD_CONFIG"])
    slot = int(os.environ["LINKEDGE_WORKER_SLOT"])
    fd = int(os.environ["LINKEDGE_LISTEN_FD"])
    ready = os.environ.get("LINKEDGE_READY_FD")
    path = os.environ["LINKEDGE_COLLECTOR_SOCKET"]
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s worker-{slot} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sock = socket.socket(fileno=fd)
    install_event_loop_policy()
    return asyncio.run(run_worker(config, slot, sock, path, int(ready) if ready else None))


if __name__ == "__main__":
    sys.exit(main())
