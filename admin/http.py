"""The admin listener's HTTP: the protocol, the router, the request a handler sees, the
error classes and the one JSON shape every error is rendered in.

Rules of this module:
- Raw asyncio like the edge, reusing its strict parser (edge/http.py): a head found by
  `HeadScanner` (each byte looked at once) and parsed by `parse_head`, its body read by
  `BodyReader` as it arrives (Content-Length or chunked, at most MAX_BODY_BYTES of it on
  the wire, framing included, else 413). `Expect: 100-continue` gets its interim
  `100 Continue` only when the body is wanted: after every earlier request on the
  connection has been answered, and once the request is authorized.
- One task per connection takes requests in order (keep-alive and pipelining), awaits its
  handler, writes the answer, then takes the next one.
- A request is authorized from its head (`JsonListener.authorize`, the application's
  hook) before its body is read: refused, it gets its answer and the connection closes,
  so an unauthenticated client cannot make us buffer a body or learn about routes.
- JSON in and out (orjson). A request body must say `Content-Type: application/json`
  (415 otherwise). Unknown JSON fields and unknown query parameters are 400 with the field
  named: a typo is an error, not a silent default.
- Every error, whatever raised it, is answered by `response_for_error()` as
  `{"error": {"code", "message", "field"}}` with its status. Unexpected exceptions are
  logged with their traceback and answered 500 without one.
- Shutdown: stop accepting, close idle connections and every event stream, let requests in
  flight finish within SHUTDOWN_TIMEOUT_S, then abort what is left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Final, cast
from urllib.parse import unquote

import orjson

from edge.catalog import bounded_int
from edge.errors import InvalidField, LinkedgeError, NotFound
from edge.http import (
    STATUS_REASONS,
    BadRequest,
    BodyReader,
    HeadScanner,
    Request,
    parse_head,
    response_head,
)
from geo.logs import LogLimiter

log = logging.getLogger("linkedge.admin")
_limiter = LogLimiter()  # per-request failures: at most one line per interval and kind

# --- limits --------------------------------------------------------------------------------

# 1,000 links with titles, notes and tags (the bulk maximum) take ~500 KiB of JSON; nothing
# else comes close. nginx's client_max_body_size defaults to 1 MiB as well.
MAX_BODY_BYTES: Final = 1024 * 1024
# Reading pauses while this much is buffered and unanswered (one largest request and change).
MAX_BUFFERED_BYTES: Final = MAX_BODY_BYTES + 64 * 1024
# A request's head and body must arrive within this many seconds of its first byte (408).
REQUEST_TIMEOUT_S: Final = 30.0
# Admin clients are a handful of curl sessions, scripts and dashboards. At the cap, the
# connection idle the longest is closed to make room (idle sockets cannot lock it out).
MAX_CONNECTIONS: Final = 256
# A new connection must send its first request within this many seconds (a kept-alive one
# gets keep_alive_timeout_s between requests).
FIRST_REQUEST_TIMEOUT_S: Final = 5.0
SHUTDOWN_TIMEOUT_S: Final = 5.0
# An event stream whose client stops reading is closed when this much is waiting in its
# transport (a minute of snapshots or more).
STREAM_MAX_BUFFER_BYTES: Final = 256 * 1024

JSON_TYPE: Final = "application/json"
SSE_TYPE: Final = "text/event-stream"

_CODES_BY_STATUS: Final = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
    505: "http_version_not_supported",
}


# --- errors --------------------------------------------------------------------------------


class MethodNotAllowed(LinkedgeError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: Sequence[str]) -> None:
        super().__init__(message)
        self.headers = (("Allow", ", ".join(allow)),)


class UnsupportedMediaType(LinkedgeError):
    status = 415
    code = "unsupported_media_type"


class InvalidJSON(LinkedgeError):
    code = "invalid_json"


class BulkFailed(LinkedgeError):
    """Some items of a bulk create were refused: nothing was created."""

    code = "bulk_failed"

    def __init__(self, message: str, items: list[dict[str, object]], status: int) -> None:
        super().__init__(message, "links")
        self.items = items
        self.status = status


# --- responses -----------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


@dataclass(slots=True)
class Stream:
    """An endless answer: `events` yields chunks until the client or the server leaves."""

    events: AsyncIterator[bytes]


def json_response(status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE), headers=headers)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    *,
    items: list[dict[str, Any]] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    close: bool = False,
) -> Response:
    """The one shape of every error: {"error": {"code", "message", "field"}}."""
    error: dict[str, Any] = {"code": code, "message": message, "field": field}
    if items is not None:
        error["items"] = items
    response = json_response(status, {"error": error}, headers)
    response.close = close
    return response


def response_for_error(exc: Exception) -> Response:
    """Any exception -> its error response (an unexpected one is logged, never shown)."""
    if isinstance(exc, LinkedgeError):
        return error_response(
            exc.status, exc.code, exc.message, exc.field, items=exc.items, headers=exc.headers
        )
    if isinstance(exc, BadRequest):
        code = _CODES_BY_STATUS.get(exc.status, "bad_request")
        message = exc.message
        if exc.status == 413:  # however the parser found out, say what the limit is
            message = (
                f"request body too large: the admin API takes at most {MAX_BODY_BYTES} bytes "
                "(1 MiB) of body, framing included"
            )
        return error_response(exc.status, code, message, close=True)
    _limiter.log(log, logging.ERROR, "unexpected", "admin API: unexpected error", exc_info=exc)
    return error_response(500, "internal", "internal error: the server log has the details")


# --- requests ------------------------------------------------------------------------------


class Call:
    """One request as a handler sees it: path parameters, query, body."""

    __slots__ = ("req", "params", "query", "body", "now")

    def __init__(
        self, req: Request, params: dict[str, str], query: dict[str, str], body: bytes
    ) -> None:
        self.req = req
        self.params = params
        self.query = query
        self.body = body
        self.now = time.time()

    def json(self) -> Any:
        content_type = (self.req.header(b"content-type") or b"").decode("latin-1")
        media = content_type.partition(";")[0].strip().lower()
        if not self.body:
            raise InvalidJSON("a JSON body is required")
        if media != JSON_TYPE and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            raise UnsupportedMediaType(
                f"send the body as JSON with `Content-Type: {JSON_TYPE}` "
                f"(got {content_type or 'no Content-Type'})"
            )
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"the body is not valid JSON: {exc}") from None

    def json_object(self, allowed: frozenset[str]) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise InvalidJSON("the body must be a JSON object")
        for name in data:
            if name not in allowed:
                raise InvalidField(f"unknown field {name!r}", name)
        return data

    def q(self, name: str) -> str | None:
        return self.query.get(name)

    def q_int(self, name: str, default: int, low: int, high: int) -> int:
        text = self.query.get(name)
        if text is None:
            return default
        value = bounded_int(text)
        if value is None or not low <= value <= high:
            raise InvalidField(f"{name} must be an integer from {low} to {high}", name)
        return value

    def path_id(self, what: str) -> int:
        """The `{id}` path parameter; an id past SQLite's range is a 404 like any other
        id that does not exist."""
        text = self.params["id"]
        value = bounded_int(text)
        if value is None:
            raise NotFound(f"no {what} with id {text}")
        return value

    def q_bool(self, name: str) -> bool:
        text = self.query.get(name)
        if text is None or text in ("false", "0"):
            return False
        if text in ("true", "1", ""):
            return True
        raise InvalidField(f"{name} must be true or false", name)


Handler = Callable[[Call], Awaitable["Response | Stream"]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: tuple[str, ...]  # literal segments, "{name}" (any) or "{id}" (digits)
    handler: Handler
    query: frozenset[str]  # the query parameters it accepts


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, path: str, handler: Handler, query: Sequence[str] = ()) -> None:
        pattern = tuple(path.strip("/").split("/"))
        self.routes.append(Route(method, pattern, handler, frozenset(query)))

    def match(self, method: str, segments: list[str]) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            params = _match(route.pattern, segments)
            if params is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, params
            if route.method not in allowed:
                allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed here; use {', '.join(allowed)}", allowed
            )
        raise NotFound("no such route: see docs/api.md for the routes")


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{"):
            if not got or (want == "{id}" and not got.isdigit()):
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


# --- page cursors ------------------------------------------------------------------------


def encode_cursor(kind: str, value: int) -> str:
    """An opaque cursor for the next page: `kind:value`, base64url without padding."""
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def decode_cursor(text: str | None, kind: str) -> int | None:
    """The value of a cursor made by encode_cursor(kind, ...); None for no cursor; anything
    else a 400 naming the field."""
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    got_kind, _, value = raw.partition(":")
    got = bounded_int(value) if got_kind == kind else None
    if got is None:
        raise InvalidField("invalid cursor: pass next_cursor from the previous page", "cursor")
    return got


# --- the listener --------------------------------------------------------------------------

Authorize = Callable[[Request, list[str]], Awaitable[None]]


class JsonListener:
    """One listening socket, its connections and their counters; answers with `router`.

    `authorize(req, segments)` raises (e.g. auth.Unauthorized) to refuse a request from its
    head; it is called before the body is read."""

    def __init__(
        self,
        router: Router,
        authorize: Authorize,
        *,
        host: str,
        port: int,
        keep_alive_timeout_s: float,
    ) -> None:
        self.router = router
        self._authorize = authorize
        self.host = host
        self.listen_port = port
        self.keep_alive_timeout_s = keep_alive_timeout_s
        # listener and connections
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[AdminProtocol] = set()
        self.stopping = False
        self.stop_event = asyncio.Event()
        # counters (for /metrics)
        self.by_status: dict[int, int] = {}
        self.connections_total = 0
        self.evicted = 0  # idle connections closed to make room
        # the Date line, rebuilt once a second
        self._date = b""
        self._date_s = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        sockets: Sequence[Any] = getattr(self.server, "sockets", ())
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: AdminProtocol(self), self.host, self.listen_port
        )

    async def stop(self) -> None:
        self.stopping = True
        self.stop_event.set()
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.shutdown()
        workers = [c.worker for c in self.connections if c.worker is not None]
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=SHUTDOWN_TIMEOUT_S)
            for task in pending:
                task.cancel()
            for conn in list(self.connections):
                conn.abort()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), SHUTDOWN_TIMEOUT_S)

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_s:
            self._date_s = now
            self._date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    def count(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    async def authorize(self, req: Request) -> Response | None:
        """None when the request may go on (its body be read); else the answer to send
        before closing."""
        try:
            await self._authorize(req, segments(req))
        except Exception as exc:
            response = response_for_error(exc)
            response.close = True
            self.count(response.status)
            return response
        return None

    async def dispatch(self, req: Request, body: bytes) -> Response | Stream:
        """The answer to one authorized request; never raises."""
        try:
            result = await self._dispatch(req, body)
        except Exception as exc:
            result = response_for_error(exc)
        self.count(result.status if isinstance(result, Response) else 200)
        return result

    async def _dispatch(self, req: Request, body: bytes) -> Response | Stream:
        route, params = self.router.match(req.method.decode("ascii"), segments(req))
        query: dict[str, str] = {}
        for pair in req.query.decode("ascii").split("&"):
            if not pair:
                continue
            raw_name, _, raw_value = pair.partition("=")
            name = unquote_part(raw_name, "query")
            if name not in route.query:
                accepted = ", ".join(sorted(route.query)) or "none"
                raise InvalidField(f"unknown query parameter {name!r} (accepted: {accepted})", name)
            if name in query:
                raise InvalidField(f"query parameter {name!r} given twice", name)
            query[name] = unquote_part(raw_value, name)
        return await route.handler(Call(req, params, query, body))


def segments(req: Request) -> list[str]:
    """The path's segments, each percent-decoded (an encoded "/" stays in its segment)."""
    raw_path = req.path.decode("ascii")  # the parser admits ASCII only
    if len(raw_path) > 1 and raw_path.endswith("/"):
        raw_path = raw_path[:-1]
    return [unquote_part(part, "path") for part in raw_path.split("/")[1:]]


def unquote_part(text: str, what: str) -> str:
    """Percent-decode a path segment or query value. A "+" stays a plus sign (not a
    space, as in HTML forms), so ISO 8601 offsets like +01:00 work unencoded."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise InvalidField(f"the {what} is not valid UTF-8 once percent-decoded", what) from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# --- the protocol --------------------------------------------------------------------------


class AdminProtocol(asyncio.Protocol):
    """One admin connection: bytes in, a worker task answering requests in order."""

    def __init__(self, server: JsonListener) -> None:
        # shared state
        self.server = server
        # per connection
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.closing = False  # close after the request in progress
        self.idle = True  # waiting for the first byte of a request
        self.idle_since = time.monotonic()
        self.requests = 0  # answered on this connection
        self.data_ready = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_paused = False
        self.worker: asyncio.Task[None] | None = None

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        server.connections_total += 1
        if len(server.connections) >= MAX_CONNECTIONS and not server.stopping:
            # full: the connection idle the longest (a keep-alive waiting, or one that
            # never sent anything) makes room, so idle sockets cannot lock the API out
            idle = [c for c in server.connections if c.idle and not c.buf]
            if idle:
                min(idle, key=lambda c: c.idle_since).evict()
        if server.stopping or len(server.connections) >= MAX_CONNECTIONS:
            response = error_response(503, "unavailable", "too many admin connections", close=True)
            self.transport.write(self._serialize(response, keep=False, http11=True, head=False))
            self.transport.close()
            return
        server.connections.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.data_ready.set()
        if len(self.buf) > MAX_BUFFERED_BYTES and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True

    def eof_received(self) -> bool:
        self.eof = True
        self.data_ready.set()
        return True  # keep the transport open: answer what was sent before the half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.eof = True
        self.data_ready.set()
        self.writable.set()
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def shutdown(self) -> None:
        """Server stopping: close now when idle, else after the request in progress."""
        self.closing = True
        if self.idle and not self.buf and self.transport is not None:
            self.transport.close()
        self.data_ready.set()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def evict(self) -> None:
        """Make room for a new connection: this one is idle."""
        self.server.evicted += 1
        self.server.connections.discard(self)
        self.abort()

    # --- requests ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                try:
                    request = await self._next_request()
                except BadRequest as exc:
                    await self._send(response_for_error(exc), keep=False, http11=True, head=False)
                    self.server.count(exc.status)
                    return
                if request is None:
                    return
                req, body = request
                if isinstance(body, Response):  # refused before its body was read
                    await self._send(body, keep=False, http11=req.http11, head=False)
                    return
                result = await self.server.dispatch(req, body)
                head_only = req.method == b"HEAD"
                if isinstance(result, Stream):
                    await self._stream(result, req.http11, head_only)
                    return
                keep = req.keep_alive and not self.closing and not result.close
                await self._send(result, keep=keep, http11=req.http11, head=head_only)
                self.requests += 1
                if not keep:
                    return
        except Exception as exc:
            _limiter.log(log, logging.ERROR, "connection", "admin connection failed", exc_info=exc)
        finally:
            if self.transport is not None:
                self.transport.close()

    async def _wait_data(self, wait_s: float) -> bool:
        """Wait for more bytes; False on timeout."""
        self.data_ready.clear()
        try:
            await asyncio.wait_for(self.data_ready.wait(), wait_s)
        except TimeoutError:
            return False
        return True

    async def _next_request(self) -> tuple[Request, bytes | Response] | None:
        """The next request and its body (or, when it may not go on, the answer that ends
        the connection), or None when the connection is done. The head is searched once
        per byte (HeadScanner), authorized before any of its body is read, and the body
        consumed as it arrives (BodyReader): work linear in the bytes received."""
        # a new connection must start its request soon; a kept-alive one may wait longer
        keep_alive_s = (
            self.server.keep_alive_timeout_s if self.requests else FIRST_REQUEST_TIMEOUT_S
        )
        started: float | None = None
        scanner = HeadScanner()
        self.idle = True
        self.idle_since = time.monotonic()
        while True:
            if self.transport is None:
                return None
            if self.buf:
                if scanner.advance(self.buf) >= 0:
                    break
                self.idle = False
                if started is None:
                    started = time.monotonic()
            elif self.closing:
                return None
            if self.eof:
                return None
            if started is None:
                if not await self._wait_data(keep_alive_s):
                    return None
            else:
                left = started + REQUEST_TIMEOUT_S - time.monotonic()
                if left <= 0 or not await self._wait_data(left):
                    raise BadRequest("the request did not arrive in time", 408)
        self.idle = False
        started = started or time.monotonic()
        parsed = parse_head(self.buf)
        assert parsed is not None  # the scanner found its end
        req, end = parsed
        denied = await self.server.authorize(req)
        if denied is not None:
            return req, denied
        body = b""
        if req.content_length or req.chunked:
            reader = BodyReader(req, MAX_BODY_BYTES)
            pos = reader.feed(self.buf, end)
            sent_continue = False
            while not reader.done:
                self._consumed(pos)
                if self.transport is None or self.eof:
                    raise BadRequest("the connection ended inside the request body")
                if req.expect_continue and req.http11 and not sent_continue:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    sent_continue = True
                left = started + REQUEST_TIMEOUT_S - time.monotonic()
                if left <= 0 or not await self._wait_data(left):
                    raise BadRequest("the request body did not arrive in time", 408)
                pos = reader.feed(self.buf, 0)
            body = reader.body
            end = pos
        self._consumed(end)
        return req, body

    def _consumed(self, end: int) -> None:
        """Drop the first `end` buffered bytes; resume reading once there is room."""
        del self.buf[:end]
        if self.reading_paused and len(self.buf) < MAX_BUFFERED_BYTES and self.transport:
            self.transport.resume_reading()
            self.reading_paused = False

    def _serialize(self, response: Response, *, keep: bool, http11: bool, head: bool) -> bytes:
        headers: list[tuple[str, str]] = list(response.headers)
        if response.status != 204:
            headers.append(("Content-Type", response.content_type))
            headers.append(("Content-Length", str(len(response.body))))
        headers.append(("Cache-Control", "no-store"))
        out = response_head(response.status, headers) + self.server.date_line()
        if not keep:
            out += b"Connection: close\r\n"
        elif not http11:
            out += b"Connection: keep-alive\r\n"
        out += b"\r\n"
        if not head and response.status != 204:
            out += response.body
        return out

    async def _send(self, response: Response, *, keep: bool, http11: bool, head: bool) -> None:
        await self.writable.wait()
        if self.transport is not None:
            self.transport.write(self._serialize(response, keep=keep, http11=http11, head=head))

    async def _stream(self, stream: Stream, http11: bool, head: bool) -> None:
        """An event stream: no Content-Length, the body ends when the connection closes."""
        lines = [
            f"HTTP/1.1 200 {STATUS_REASONS[200]}\r\n",
            f"Content-Type: {SSE_TYPE}\r\n",
            "Cache-Control: no-store\r\n",
            "X-Accel-Buffering: no\r\n",  # nginx: pass events through unbuffered
            "Connection: close\r\n",
        ]
        transport = self.transport
        if transport is None:
            return
        transport.write("".join(lines).encode() + self.server.date_line() + b"\r\n")
        if head:
            return
        events = stream.events
        try:
            async for chunk in events:
                transport = self.transport
                if transport is None or self.closing or self.eof:
                    break
                if transport.get_write_buffer_size() > STREAM_MAX_BUFFER_BYTES:
                    log.info("closing an event stream whose client stopped reading")
                    break
                transport.write(chunk)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
