"""The redirect edge: an asyncio.Protocol serving HTTP/1.0 and 1.1 from the link table.

Rules:
- The redirect path (data_received -> parse -> resolve -> append the click) never awaits
  and never touches GeoIP, user-agent parsing or SQLite. A click is one tuple appended to
  a list (`ClickRecorder.buffer`); the flusher does the rest off the hot path.
- Pipelined requests are answered in order; all answers to one read go out in one write.
- Any BadRequest gets its canned answer with `Connection: close`, then the connection
  closes. Nothing else a client sends can raise out of here.
- Timeouts are deadlines checked by one sweep a second (like nginx), not a timer per
  request: a partial head must complete within header_timeout_s of its first byte (408),
  an idle keep-alive connection closes after keep_alive_timeout_s.
- Flow control: reading pauses while the transport's write buffer is above its high-water
  mark, and resumes when it drains.
- Shutdown: stop accepting, let each connection finish the request it is receiving, close
  idle ones at once, wait up to shutdown_timeout_s, then abort what is left.

Request bodies are not expected on the edge: a body (Content-Length or chunked) is read
and discarded per its framing, up to max_edge_body_bytes (else 413 and close), so a
keep-alive connection stays in sync. Methods other than GET and HEAD get 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from email.utils import formatdate
from typing import Any, Final, Protocol, cast

from edge.capture import (
    FLAG_DNT,
    FLAG_EVENT,
    FLAG_GPC,
    FLAG_HEAD,
    FLAG_PREFETCH,
    FLAG_QR,
    FLAG_TEST,
)
from edge.config import Config
from edge.http import STATUS_REASONS, BadRequest, BodyReader, HeadScanner, Request, parse_head
from edge.links import (
    LinkTable,
)
from edge.urls import take_qr_marker, take_test_marker

log = logging.getLogger("linkedge.edge")

SWEEP_INTERVAL_S: Final = 1.0  # timeouts are checked and the Date line rebuilt this often
LISTEN_BACKLOG: Final = 2048  # nginx uses 511 on Linux; a burst of new visitors fits here
ACCEPT_LOG_INTERVAL_S: Final = 10.0  # accept failures are logged at most this often

_GET: Final = b"GET"
_HEAD: Final = b"HEAD"


class ClickSink(Protocol):
    """What the edge needs of the click pipeline (edge/clicks.py's ClickRecorder)."""

    buffer: list[Any]

    def nudge(self) -> None: ...


def canned(status: int, message: str) -> bytes:
    """A complete error answer that closes the connection (no Date: sent before any parse)."""
    body = (message + "\n").encode()
    return (
        f"HTTP/1.1 {status} {STATUS_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


METHOD_NOT_ALLOWED_HEAD: Final = (
    b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n"
)
METHOD_NOT_ALLOWED_BODY: Final = b"Method Not Allowed\n"
SERVICE_UNAVAILABLE: Final = canned(503, "Too many connections")
# The conversion pixel (edge/events.py): answered on every domain by a 1x1 transparent GIF,
# never a redirect, never cached, readable cross-origin; the event rides in the click
# batches (FLAG_EVENT) and the collector checks it.
PIXEL_PATH: Final = b"/_lc/e"
PIXEL_GIF: Final = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
PIXEL_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\n"
    b"Content-Length: " + str(len(PIXEL_GIF)).encode() + b"\r\n"
    b"Cache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n"
    b"Cross-Origin-Resource-Policy: cross-origin\r\nX-Content-Type-Options: nosniff\r\n"
    b"Referrer-Policy: no-referrer\r\n"
)


def normalize_ip(ip: str) -> str:
    """`::ffff:1.2.3.4` -> `1.2.3.4`; other addresses unchanged (zone ids dropped)."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    if "%" in ip:
        return ip.partition("%")[0]
    return ip


class TrustedProxies:
    """Which peers may tell us the client address (X-Forwarded-For / Forwarded)."""

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, ip: str) -> bool:
        known = self._cache.get(ip)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            result = False
        else:
            result = any(addr in net for net in self.networks)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[ip] = result
        return result

    def client_ip(self, peer: str, req: Request) -> str:
        """The client address: walk the forwarding chain right to left past trusted hops.

        The left-most hop is taken without asking whether it is trusted (nothing is left
        of it), so the common single-address X-Forwarded-For costs no lookup at all.
        """
        chain: list[str] = []
        if req.forwarded is not None:
            for element in req.forwarded.decode("latin-1").split(","):
                for pair in element.split(";"):
                    key, _, value = pair.strip().partition("=")
                    if key.lower() == "for":
                        chain.append(_strip_forwarded_node(value))
        elif req.forwarded_for is not None:
            chain = req.forwarded_for.decode("latin-1").split(",")
        client = peer
        for i in range(len(chain) - 1, -1, -1):
            hop = normalize_ip(chain[i].strip())
            if not hop or hop.strip(_IP_CHARS):
                break  # "unknown", an obfuscated id or garbage: stop at the last good one
            client = hop
            if i == 0 or not self.contains(hop):
                break
        return client


# Characters of a textual IPv4 or IPv6 address; the GeoIP lookup validates the rest.
_IP_CHARS: Final = "0123456789abcdefABCDEF:."


def _strip_forwarded_node(value: str) -> str:
    value = value.strip().strip('"')
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:  # IPv4 with a port
        return value.partition(":")[0]
    return value


class EdgeMetrics:
    __slots__ = (
        "requests",
        "by_status",
        "redirects",
        "connections_open",
        "connections_total",
        "connections_rejected",
        "bad_requests",
        "timeouts",
        "accept_errors",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.redirects = 0
        self.connections_open = 0
        self.connections_total = 0
        self.connections_rejected = 0
        self.bad_requests = 0
        self.timeouts = 0
        self.accept_errors = 0  # accept() failed: out of descriptors (EMFILE/ENFILE)

    def count(self, status: int, n: int = 1) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + n


class EdgeServer:
    """Owns the listening sockets, the live connections, the Date line and the sweep."""

    def __init__(self, config: Config, table: LinkTable, clicks: ClickSink | None) -> None:
        self.config = config
        self.table = table
        self.clicks = clicks
        # The hot path appends captured clicks straight to this list (None: not recording).
        self.click_buffer: list[Any] | None = clicks.buffer if clicks is not None else None
        self.ship_max_clicks = config.ship_max_clicks
        self.metrics = EdgeMetrics()
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.connections: set[EdgeProtocol] = set()
        self.servers: list[asyncio.Server] = []
        self.stopping = False
        self.date_tail = b""
        self.date_tail_close = b""
        self.date_tail_keep = b""
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained = asyncio.Event()  # set when the last connection closes while stopping
        self._last_accept_log = 0.0
        self._refresh_date()

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for server in self.servers for s in server.sockets]

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if sock is not None:
            server = await loop.create_server(
                lambda: EdgeProtocol(self), sock=sock, backlog=LISTEN_BACKLOG
            )
        else:
            server = await loop.create_server(
                lambda: EdgeProtocol(self),
                self.config.edge_host,
                self.config.edge_port,
                backlog=LISTEN_BACKLOG,
                # No SO_REUSEPORT: a second server on the same port must fail loudly, not
                # silently take half the traffic.
                reuse_port=False,
            )
        self.servers.append(server)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: an accept() that failed for lack of descriptors
        is counted (linkedge_accept_errors_total) and logged once per interval; the rest
        goes to the default handler."""
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if "accept" in message or (
            isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
        ):
            self.metrics.accept_errors += 1
            now = time.monotonic()
            if now - self._last_accept_log >= ACCEPT_LOG_INTERVAL_S:
                self._last_accept_log = now
                log.error(
                    "cannot accept connections: %s (%d so far; raise the file descriptor "
                    "limit or lower max_connections)",
                    exc or message,
                    self.metrics.accept_errors,
                )
            return
        loop.default_exception_handler(context)

    def _refresh_date(self) -> None:
        date = formatdate(usegmt=True).encode()
        self.date_tail = b"Date: " + date + b"\r\n\r\n"
        self.date_tail_close = b"Date: " + date + b"\r\nConnection: close\r\n\r\n"
        self.date_tail_keep = b"Date: " + date + b"\r\nConnection: keep-alive\r\n\r\n"

    def _sweep(self) -> None:
        self._refresh_date()
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.deadline < now:
                conn.on_deadline()
        if self._loop is not None and not self._loop.is_closed():
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop accepting, finish requests in flight, close idle connections."""
        timeout = self.config.shutdown_timeout_s if timeout_s is None else timeout_s
        self.stopping = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self.servers:
            await server.wait_closed()


class EdgeProtocol(asyncio.Protocol):
    __slots__ = (
        "server",
        "table",
        "transport",
        "peer_ip",
        "trusted_peer",
        "pending",
        "scanner",
        "body",
        "body_req",
        "req",
        "deadline",
        "head_started",
        "closing",
        "paused",
    )

    def __init__(self, server: EdgeServer) -> None:
        # shared state
        self.server = server
        self.table = server.table
        # per connection
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.trusted_peer = False
        # a request arriving in pieces: its head's bytes so far and their scanner, or the
        # reader of its body (the parsed head waits in body_req)
        self.pending: bytearray | None = None
        self.scanner: HeadScanner | None = None
        self.body: BodyReader | None = None
        self.body_req: Request | None = None
        self.req: Request | None = None  # the request being answered (for client_ip)
        self.closing = False  # close after the answers already queued
        self.paused = False  # reading paused by flow control
        # timeouts: `deadline` is when the sweep acts; `head_started` is set while a
        # partial request head is buffered
        self.deadline = time.monotonic() + server.config.keep_alive_timeout_s
        self.head_started: float | None = None

    # --- connection lifecycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        server = self.server
        metrics = server.metrics
        metrics.connections_total += 1
        if len(server.connections) >= server.config.max_connections or server.stopping:
            metrics.connections_rejected += 1
            transport.write(SERVICE_UNAVAILABLE)
            transport.close()
            return
        server.connections.add(self)
        metrics.connections_open += 1
        peer = transport.get_extra_info("peername")
        self.peer_ip = normalize_ip(peer[0]) if isinstance(peer, tuple) else "unix"
        self.trusted_peer = bool(server.trusted) and server.trusted.contains(self.peer_ip)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        if self in server.connections:
            server.connections.discard(self)
            server.metrics.connections_open -= 1
            if server.stopping and not server.connections:
                server._drained.set()
        self.transport = None

    def pause_writing(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
            # A client that stops reading our answers gets keep_alive_timeout_s to resume.
            self.deadline = time.monotonic() + self.server.config.keep_alive_timeout_s

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """Server stopping: close now if idle, else after the request being received."""
        self.closing = True
        idle = self.pending is None and self.body is None
        if idle and self.transport is not None and not self.paused:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def on_deadline(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.head_started is not None and not self.paused:
            self.server.metrics.timeouts += 1
            self.server.metrics.count(408)
            transport.write(canned(408, "Request Timeout"))
            transport.close()
        else:
            transport.abort() if self.paused else transport.close()

    # --- requests ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # Work is linear in the bytes received: a complete request in one read (the common
        # case) is parsed straight from `data`; a head arriving in pieces is searched only
        # in its new bytes (HeadScanner) and parsed once; a body is consumed as it comes.
        server = self.server
        out: list[bytes] = []
        buf: bytes | bytearray = data
        pos = 0
        close = False
        try:
            if self.body is not None:  # the rest of a body: its request waits for it
                body, req = self.body, self.body_req
                pos = body.feed(data)
                if not body.done:
                    self._wait_for_rest(False)
                    return
                self.body = self.body_req = None
                assert req is not None
                keep = req.keep_alive and not self.closing
                out.append(self._respond(req, keep))
                close = not keep
            elif self.pending is not None:  # more of a head
                pending, scanner = self.pending, self.scanner
                assert scanner is not None
                pending += data
                if scanner.advance(pending) < 0:
                    self._wait_for_rest(False)
                    return
                buf = pending
                self.pending = self.scanner = None
            limit = server.config.max_edge_body_bytes
            while not close:
                parsed = parse_head(buf, pos)
                if parsed is None:
                    break
                req, pos = parsed
                if req.content_length or req.chunked:
                    body = BodyReader(req, limit, keep=False)
                    pos = body.feed(buf, pos)
                    if not body.done:
                        self.body, self.body_req = body, req
                        break
                keep = req.keep_alive and not self.closing
                out.append(self._respond(req, keep))
                close = not keep
        except BadRequest as exc:
            server.metrics.bad_requests += 1
            server.metrics.count(exc.status)
            out.append(canned(exc.status, exc.message))
            close = True
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            click_buffer = server.click_buffer
            if click_buffer is not None and len(click_buffer) >= server.ship_max_clicks:
                server.clicks.nudge()  # type: ignore[union-attr]
        if close:
            self.pending = self.scanner = self.body = self.body_req = None
            transport.close()
            return
        if self.body is None and pos < len(buf):
            # the start of the next request's head (parse_head found it incomplete)
            self.pending = bytearray(buf[pos:])
            self.scanner = HeadScanner()
            self.scanner.advance(self.pending)
        if self.body is not None or self.pending is not None:
            self._wait_for_rest(bool(out))
            return
        self.head_started = None
        self.deadline = time.monotonic() + server.config.keep_alive_timeout_s
        if self.closing:
            transport.close()

    def _wait_for_rest(self, new_request: bool) -> None:
        """A request is incomplete: it must be whole within header_timeout_s of its first
        byte (`new_request`: it started in this read, after answered ones)."""
        if self.head_started is None or new_request:
            self.head_started = time.monotonic()
        self.deadline = self.head_started + self.server.config.header_timeout_s

    def _respond(self, req: Request, keep: bool) -> bytes:
        """The whole answer to one request; captures the click of a served redirect."""
        server = self.server
        metrics = server.metrics
        metrics.requests += 1
        if keep:
            tail = server.date_tail if req.http11 else server.date_tail_keep
        else:
            tail = server.date_tail_close
        method = req.method
        is_head = method == _HEAD
        if not is_head and method != _GET:
            metrics.count(405)
            return METHOD_NOT_ALLOWED_HEAD + tail + METHOD_NOT_ALLOWED_BODY
        now = time.time()
        if req.path == PIXEL_PATH:
            return self._pixel(req, now, is_head) + tail + (b"" if is_head else PIXEL_GIF)
        marks = 0
        if req.query:  # the edge's own markers (edge/urls.py), never forwarded
            req.query, scanned = take_qr_marker(req.query)
            req.query, test = take_test_marker(req.query)
            marks = (FLAG_QR if scanned else 0) | (FLAG_TEST if test else 0)
        self.req = req
        head, body, status, link_id, domain_id, route, click_id, flags = self.table.answer(
            req, now, self.client_ip, marks
        )
        metrics.count(status)
        if not link_id:
            return head + tail + (b"" if is_head else body)
        metrics.redirects += 1
        click_buffer = server.click_buffer
        if click_buffer is not None:
            if is_head:
                flags |= FLAG_HEAD
            if req.prefetch:
                flags |= FLAG_PREFETCH
            if req.dnt:
                flags |= FLAG_DNT
            if req.gpc:
                flags |= FLAG_GPC
            flags |= marks
            click_buffer.append(
                (
                    now,
                    link_id,
                    domain_id,
                    self.client_ip(),
                    req.user_agent,
                    req.referer,
                    req.accept_language,
                    flags,
                    route,
                    click_id,
                )
            )
        return head + tail

    def _pixel(self, req: Request, now: float, is_head: bool) -> bytes:
        """A conversion pixel: the GIF; a GET's query goes to the collector as an event."""
        self.server.metrics.count(200)
        click_buffer = self.server.click_buffer
        if not is_head and req.query and click_buffer is not None:
            self.req = req
            click_buffer.append(
                (
                    now,
                    0,
                    0,
                    self.client_ip(),
                    req.user_agent,
                    req.referer,
                    req.query,
                    FLAG_EVENT,
                    None,
                    None,
                )
            )
        return PIXEL_HEAD

    def client_ip(self) -> str:
        """The client's address for the request being answered: the peer, or what a
        trusted proxy says it forwarded for."""
        req = self.req
        forwarded = req is not None and (req.forwarded_for is not None or req.forwarded is not None)
        if self.trusted_peer and forwarded:
            assert req is not None
            return self.server.trusted.client_ip(self.peer_ip, req)
        return self.peer_ip


def install_event_loop_policy() -> str:
    """Use uvloop when it is installed; say so either way."""
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed: using the default asyncio event loop (slower)")
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
