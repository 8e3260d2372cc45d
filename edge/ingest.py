"""The collector's side of the handoff: the workers' connections, their batches, the
acknowledgements, their counters, and "serve this revision now".

Rules:
- One Unix stream socket in a directory only this user can enter (0700); each worker
  connects, says HELLO (its epoch, slot, pid), then sends batches, counters and AT_REV
  frames (edge/capture.py). Frames are read by FrameReader (linear in the bytes).
- A batch goes to the ClickRecorder; the worker is acknowledged (ACK seq) once the
  recorder has committed it, or at once when it was committed before (a resend).
- Backpressure, not loss: while the recorder is full the ingest stops reading from every
  worker (the kernel buffer, then the worker's own bounded queue, take the wait).
- Counters: the last STATS of every worker slot, alive or gone (a restarted worker's
  predecessor's final figures stay in `retired`), for /metrics, /healthz and /api/live.
- `serve_rev(rev)`: after an API write, every connected worker reloads at once and says so
  (AT_REV); the API answers when all of them serve it (or after a short deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from edge import capture
from edge.capture import FrameError, FrameReader
from edge.clicks import ClickRecorder
from edge.limits import Budgets

log = logging.getLogger("linkedge.ingest")

# How long an API write waits for every worker to serve it before answering anyway.
SERVE_REV_TIMEOUT_S: Final = 1.0
# Click limits: the catalog's revision is read this often, the limits again when it moved
# (a lease asked for a link the collector does not know yet reloads them at once).
LIMITS_POLL_S: Final = 0.5

# (catalog revision, max_clicks per limited link, what each has spent) as SQLite has them
LimitsLoader = Callable[[], Awaitable[tuple[int, dict[int, int], dict[int, int]]]]
RevReader = Callable[[], Awaitable[int]]
# Counter fields summed over slots (retired processes included) for the totals.
SUMMED: Final = ("requests", "redirects", "captured", "acked", "dropped", "bad_requests")
# ...and every counter a finished worker process leaves to its slot's retired sums.
SUMMED_ALL: Final = (
    *SUMMED,
    "timeouts",
    "connections_total",
    "connections_rejected",
    "accept_errors",
)


class WorkerSession:
    """One connected worker process."""

    __slots__ = ("epoch", "slot", "pid", "transport", "reader", "stats", "rev", "since")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.epoch = 0
        self.slot = -1
        self.pid = 0
        self.transport = transport
        self.reader = FrameReader()
        self.stats: dict[str, Any] = {}
        self.rev = -1
        self.since = time.time()

    def send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


class Ingest:
    """The Unix socket server the workers ship to."""

    def __init__(self, recorder: ClickRecorder | None, path: str) -> None:
        self.recorder = recorder
        self.path = path
        self.sessions: dict[int, WorkerSession] = {}  # epoch -> session (connected)
        self.last: dict[int, dict[str, Any]] = {}  # slot -> its newest stats (any process)
        self.retired: dict[int, dict[str, Any]] = {}  # slot -> sums of finished processes
        self.bad_frames = 0
        self.budgets = Budgets()  # click limits: the leases of every worker
        self.limits_rev = -1  # the catalog revision the budgets' limits were read at
        self._limits: tuple[LimitsLoader, RevReader] | None = None
        self._limits_lock = asyncio.Lock()
        self._limits_loaded_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._paused = False
        self._rev_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._all_gone = asyncio.Event()
        self._all_gone.set()
        if recorder is not None:
            recorder.on_committed = self._acknowledge
            recorder.on_room = self._resume

    async def watch_limits(self, load: LimitsLoader, rev: RevReader) -> None:
        """Read the click limits now (before any worker may ask for a lease) and again
        whenever the catalog changes."""
        self._limits = (load, rev)
        await self._load_limits()
        self._spawn(self._poll_limits())

    async def _load_limits(self, unless_since: float | None = None) -> None:
        if self._limits is None:
            return
        async with self._limits_lock:
            if unless_since is not None and self._limits_loaded_at > unless_since:
                return  # another ask's reload ran while this one waited
            rev, limits, spent = await self._limits[0]()
            self.budgets.set_limits(limits, spent)
            self.limits_rev = rev
            self._limits_loaded_at = time.monotonic()

    async def _poll_limits(self) -> None:
        assert self._limits is not None
        while True:
            await asyncio.sleep(LIMITS_POLL_S)
            try:
                if await self._limits[1]() != self.limits_rev:
                    await self._load_limits()
            except Exception as exc:  # a locked or busy database: the next poll retries
                log.warning("click limits not reloaded: %s", exc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _IngestProtocol(self), self.path)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.transport.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def wait_gone(self, timeout_s: float) -> bool:
        """Wait until every worker has disconnected (they do once they shipped everything
        at their stop); False at the deadline."""
        try:
            await asyncio.wait_for(self._all_gone.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # --- frames -------------------------------------------------------------------------

    def on_frame(self, session: WorkerSession, kind: int, payload: bytes) -> None:
        if kind == capture.BATCH:
            seq, clicks, spent = capture.read_batch(payload)
            recorder = self.recorder
            if recorder is None:  # not recording: nothing to keep
                self.budgets.written(session.epoch, spent)
                session.send(capture.number_frame(capture.ACK, seq))
                return
            if not recorder.accept(session.epoch, seq, clicks, spent):
                done = recorder.committed.get(session.epoch, 0)
                if seq <= done:
                    session.send(capture.number_frame(capture.ACK, done))
            if recorder.full and not self._paused:
                self._pause()
        elif kind == capture.HELLO:
            epoch, slot, pid, rev, held = capture.read_data(payload)
            session.epoch, session.slot, session.pid = int(epoch), int(slot), int(pid)
            session.rev = int(rev)
            self.budgets.hello(session.epoch, held)
            self.sessions[session.epoch] = session
            self._all_gone.clear()
            # the answer to HELLO: what of this epoch is committed (a worker resending
            # after a collector restart forgets those at once)
            done = self.recorder.committed.get(session.epoch, 0) if self.recorder else 0
            session.send(capture.number_frame(capture.ACK, done))
            if self._paused:
                session.transport.pause_reading()
            log.debug("worker %d (pid %d) connected", session.slot, session.pid)
        elif kind == capture.STATS:
            stats = capture.read_data(payload)
            if isinstance(stats, dict):
                session.stats = stats
                self.last[session.slot] = {**stats, "epoch": session.epoch}
                if "rev" in stats:
                    self._at_rev(session, int(stats["rev"]))
        elif kind == capture.AT_REV:
            self._at_rev(session, capture.read_number(payload))
        elif kind == capture.LEASE_ASK:
            asks = capture.read_data(payload)
            if isinstance(asks, dict):
                known = self.budgets.limits
                if self._limits is not None and any(int(k) not in known for k in asks):
                    # a link limited since the last read: read the limits, then answer
                    self._spawn(self._grant_after_reload(session, asks, time.monotonic()))
                else:
                    self._grant(session, asks)
        else:
            raise FrameError(f"unknown frame kind {kind}")

    def _grant(self, session: WorkerSession, asks: dict[Any, Any]) -> None:
        grants = self.budgets.grant(session.epoch, asks, len(self.sessions))
        session.send(capture.data_frame(capture.LEASE, grants))

    async def _grant_after_reload(
        self, session: WorkerSession, asks: dict[Any, Any], asked_at: float
    ) -> None:
        try:
            await self._load_limits(unless_since=asked_at)
        except Exception as exc:  # answer from what is known: nothing for the new link
            log.warning("click limits not read for a lease: %s", exc)
        if self.sessions.get(session.epoch) is session:
            self._grant(session, asks)

    def on_lost(self, session: WorkerSession) -> None:
        if self.sessions.get(session.epoch) is session:
            del self.sessions[session.epoch]
            self.budgets.lost(session.epoch)
            final = self.last.get(session.slot)
            if final is not None and final.get("epoch") == session.epoch:
                # this process is done: its figures move to the slot's retired sums
                sums = self.retired.setdefault(session.slot, {})
                for name in SUMMED_ALL:
                    sums[name] = sums.get(name, 0) + int(final.get(name) or 0)
                codes = sums.setdefault("by_status", {})
                for status, n in (final.get("by_status") or {}).items():
                    codes[status] = codes.get(status, 0) + int(n)
                final["retired"] = True
        if not self.sessions:
            self._all_gone.set()
        self._check_waiters()

    # --- acknowledgements and backpressure -----------------------------------------------

    def _acknowledge(self, progress: dict[int, int], spent: dict[int, dict[int, int]]) -> None:
        for epoch, links in spent.items():
            self.budgets.written(epoch, links)
        for epoch, seq in progress.items():
            session = self.sessions.get(epoch)
            if session is not None:
                session.send(capture.number_frame(capture.ACK, seq))

    def _pause(self) -> None:
        self._paused = True
        if self.recorder is not None:
            self.recorder.metrics.paused = True
        for session in self.sessions.values():
            session.transport.pause_reading()

    def _resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self.recorder is not None:
            self.recorder.metrics.paused = False
        for session in self.sessions.values():
            session.transport.resume_reading()

    # --- revisions -----------------------------------------------------------------------

    async def serve_rev(self, rev: int, timeout_s: float = SERVE_REV_TIMEOUT_S) -> bool:
        """Have every connected worker serve links up to `rev`; True when all do. The
        click limits are read first: a worker that asks for a lease of a changed limit
        gets it at once."""
        if self._limits is not None and rev > self.limits_rev:
            try:
                await self._load_limits()
            except Exception as exc:  # the poll reads them later
                log.warning("click limits not reloaded: %s", exc)
        pending = [s for s in self.sessions.values() if s.rev < rev]
        if not pending:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rev_waiters.append((rev, fut))
        for session in pending:
            session.send(capture.number_frame(capture.REFRESH, rev))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            return False
        finally:
            self._rev_waiters = [(r, f) for r, f in self._rev_waiters if f is not fut]
        return True

    def _at_rev(self, session: WorkerSession, rev: int) -> None:
        session.rev = max(session.rev, rev)
        self._check_waiters()

    def _check_waiters(self) -> None:
        if not self._rev_waiters:
            return
        lowest = min((s.rev for s in self.sessions.values()), default=None)
        for rev, fut in self._rev_waiters:
            if not fut.done() and (lowest is None or lowest >= rev):
                fut.set_result(None)

    # --- counters ------------------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """The newest counters of every worker slot, oldest slot first."""
        return [
            {
                "slot": slot,
                "connected": any(s.slot == slot for s in self.sessions.values()),
                **stats,
            }
            for slot, stats in sorted(self.last.items())
        ]

    def totals(self) -> dict[str, int]:
        """SUMMED counters over every worker process since the collector started."""
        out = {name: 0 for name in (*SUMMED, "queued", "connections_open", "links_loaded")}
        for slot, stats in self.last.items():
            retired = self.retired.get(slot, {})
            for name in SUMMED:
                out[name] += retired.get(name, 0)
                if not stats.get("retired"):
                    out[name] += int(stats.get(name) or 0)
            if not stats.get("retired"):
                out["queued"] += int(stats.get("queued") or 0)
                out["connections_open"] += int(stats.get("connections_open") or 0)
                out["links_loaded"] = max(out["links_loaded"], int(stats.get("links_loaded") or 0))
        return out


class _IngestProtocol(asyncio.Protocol):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.session: WorkerSession | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session = WorkerSession(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        session.reader.feed(data)
        try:
            for kind, payload in session.reader.frames():
                self.ingest.on_frame(session, kind, payload)
        except (FrameError, ValueError, TypeError, EOFError) as exc:
            self.ingest.bad_frames += 1
            log.error("worker %d: bad frame (%s): closing its connection", session.slot, exc)
            session.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.ingest.on_lost(self.session)
