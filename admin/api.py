"""The admin API: JSON over HTTP/1.1 on its own listener, Server-Sent Events, /healthz, /metrics.

Rules of this module:
- Raw asyncio like the edge, reusing its strict parser (edge/http.py): a head found by
  `HeadScanner` (each byte looked at once) and parsed by `parse_head`, its body read by
  `BodyReader` as it arrives (Content-Length or chunked, at most MAX_BODY_BYTES of it on
  the wire, framing included, else 413). `Expect: 100-continue` gets its interim
  `100 Continue` only when the body is wanted: after every earlier request on the
  connection has been answered, and once the request is authorized.
- One task per connection takes requests in order (keep-alive and pipelining), awaits its
  handler, writes the answer, then takes the next one. Handlers are async and may wait for
  SQLite; the edge's event loop never does: every query runs on an aiosqlite thread.
- JSON in and out (orjson). A request body must say `Content-Type: application/json`
  (415 otherwise). Unknown JSON fields and unknown query parameters are 400 with the field
  named: a typo is an error, not a silent default.
- Every error, whatever raised it, is answered by `error_response()` as
  `{"error": {"code", "message", "field"}}` with its status. Unexpected exceptions are logged
  with their traceback and answered 500 without one.
- Auth: every `/api/` route needs `Authorization: Bearer <token>` (admin/auth.py), checked
  from the head before the body is read (refused: the answer, then close) and before
  routing, so an unauthenticated client learns nothing about routes and cannot make us
  buffer a body. /healthz never
  needs one; /metrics needs one only when the listener is public (`--admin-public`):
  Prometheus scrapers on the same host usually have no token.
- Writes go through the runtime's writer connection (edge/catalog.py functions); right after
  a write succeeds the link table is refreshed, so the edge serves a change on the very next
  request. Reads (links, stats) use this server's own connection, so a slow stats query
  never delays link sync or click writes.
- Shutdown: stop accepting, close idle connections and every event stream, let requests in
  flight finish within SHUTDOWN_TIMEOUT_S, then abort what is left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Final, cast
from urllib.parse import unquote

import orjson

from admin import auth, stats, timerange, velocity
from edge import catalog
from edge.db import Database, now_ms
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
from edge.urls import normalize_host

log = logging.getLogger("linkedge.admin")

# --- limits --------------------------------------------------------------------------------

# 1,000 links with titles, notes and tags (the bulk maximum) take ~500 KiB of JSON; nothing
# else comes close. nginx's client_max_body_size defaults to 1 MiB as well.
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_BULK_LINKS: Final = 1000
# Reading pauses while this much is buffered and unanswered (one largest request and change).
MAX_BUFFERED_BYTES: Final = MAX_BODY_BYTES + 64 * 1024
# A request's head and body must arrive within this many seconds of its first byte (408).
REQUEST_TIMEOUT_S: Final = 30.0
# Admin clients are a handful of curl sessions, scripts and dashboards.
MAX_CONNECTIONS: Final = 256
SHUTDOWN_TIMEOUT_S: Final = 5.0
# Event streams push once a second; one whose client stops reading is closed when this
# much is waiting in its transport (a minute of snapshots or more).
STREAM_INTERVAL_S: Final = 1.0
STREAM_MAX_BUFFER_BYTES: Final = 256 * 1024
STREAM_RETRY_MS: Final = 2000  # EventSource reconnection delay we suggest
# /healthz probes the writer at most this often, and gives it this long to answer.
HEALTH_CACHE_S: Final = 1.0
HEALTH_DB_TIMEOUT_S: Final = 2.0
# The flush-duration histogram's upper bounds (seconds): a healthy flush of a 100 ms batch
# takes 1-20 ms; the top buckets show a disk or lock in trouble.
FLUSH_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METRICS_TICK_S: Final = 1.0  # the histogram takes new flush durations this often

JSON_TYPE: Final = "application/json"
SSE_TYPE: Final = "text/event-stream"
PROMETHEUS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Fields of a link in a request body (edge/catalog.py LINK_COLUMNS plus where it lives).
LINK_FIELDS: Final = frozenset(catalog.LINK_COLUMNS)
CREATE_FIELDS: Final = LINK_FIELDS | {"slug", "domain"}
PATCH_FIELDS: Final = LINK_FIELDS | {"archived"}
LINK_TIME_FIELDS: Final = ("expires_at", "archived_at", "created_at", "updated_at")
DOMAIN_FIELDS: Final = frozenset({"host", "default", "root_url", "fallback_url"})

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


class MethodNotAllowed(LinkedgeError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: Sequence[str]) -> None:
        super().__init__(message)
        self.allow = ", ".join(allow)


class UnsupportedMediaType(LinkedgeError):
    status = 415
    code = "unsupported_media_type"


class InvalidJSON(LinkedgeError):
    code = "invalid_json"


class BulkFailed(LinkedgeError):
    """Some items of a bulk create were refused: nothing was created."""

    code = "bulk_failed"

    def __init__(self, message: str, items: list[dict[str, Any]], status: int) -> None:
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
        headers: tuple[tuple[str, str], ...] = ()
        if isinstance(exc, MethodNotAllowed):
            headers = (("Allow", exc.allow),)
        elif isinstance(exc, auth.Unauthorized):
            headers = (("WWW-Authenticate", 'Bearer realm="linkedge"'),)
        items = exc.items if isinstance(exc, BulkFailed) else None
        return error_response(
            exc.status, exc.code, exc.message, exc.field, items=items, headers=headers
        )
    if isinstance(exc, BadRequest):
        code = _CODES_BY_STATUS.get(exc.status, "bad_request")
        return error_response(exc.status, code, exc.message, close=True)
    log.error("admin API: unexpected error", exc_info=exc)
    return error_response(500, "internal", "internal error: the server log has the details")


def _error_item(index: int, exc: LinkedgeError) -> dict[str, Any]:
    return {
        "index": index,
        "status": exc.status,
        "code": exc.code,
        "message": exc.message,
        "field": exc.field,
    }


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
        if not text.isdigit() or not low <= int(text) <= high:
            raise InvalidField(f"{name} must be an integer from {low} to {high}", name)
        return int(text)

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


# --- metrics -------------------------------------------------------------------------------


class Histogram:
    """A cumulative Prometheus histogram (bucket counts only ever grow)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = []
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


def _metric(
    out: list[str], name: str, kind: str, help_text: str, samples: Sequence[tuple[str, Any]]
) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{labels} {value}")


# --- the server ----------------------------------------------------------------------------


LinkRef = int | tuple[str, str]  # an id, or (domain, slug)


class AdminServer:
    """The admin listener; `runtime` is admin/runtime.py's Runtime."""

    def __init__(self, runtime: Any) -> None:
        # shared state
        self.runtime = runtime
        self.config = runtime.config
        self.db = Database(self.config.db_path)  # reads: links, stats, tokens
        self.tokens = auth.TokenCache(self.db, runtime.writer)
        self.router = Router()
        self._add_routes()
        # listener and connections
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[AdminProtocol] = set()
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.public = False  # listening beyond loopback (--admin-public)
        # metrics
        self.by_status: dict[int, int] = {}
        self.connections_total = 0
        self.flush_histogram = Histogram(FLUSH_BUCKETS_S)
        self._flushes_seen = 0
        self._ticker: asyncio.TimerHandle | None = None
        # caches
        self._date = b""
        self._date_s = 0
        self._health: tuple[float, Response] | None = None
        self._live: tuple[int, int, dict[str, Any]] | None = None
        self._names_rev = -1
        self._names: dict[int, tuple[str, str]] = {}
        self._final_checkpoints: dict[int, dict[str, Any]] = {}  # links whose checkpoints are final

    @property
    def port(self) -> int:
        assert self.server is not None
        sockets: Sequence[Any] = getattr(self.server, "sockets", ())
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        config = self.config
        self.public = not _is_loopback(config.admin_host)
        if self.public and not config.admin_public:
            raise OSError(
                f"refusing to expose the admin API on {config.admin_host}: pass --admin-public"
            )
        await self.db.open()
        supplied = os.environ.get(auth.ENV_TOKEN) or None
        secret = await self.runtime.writer.run(auth.bootstrap, supplied)
        if secret is not None:
            # The only time this secret exists anywhere: printed once, only its hash stored.
            print(f"{auth.TOKEN_PRINT_PREFIX}{secret}", flush=True)
            sys.stdout.flush()
        await self.tokens.refresh()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: AdminProtocol(self), config.admin_host, config.admin_port
        )
        self._ticker = loop.call_later(METRICS_TICK_S, self._tick)

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
        if self._ticker is not None:
            self._ticker.cancel()
        await self.tokens.close()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), SHUTDOWN_TIMEOUT_S)
        await self.db.close()

    def _tick(self) -> None:
        self._take_flush_durations()
        if not self.stopping:
            self._ticker = asyncio.get_running_loop().call_later(METRICS_TICK_S, self._tick)

    def _take_flush_durations(self) -> None:
        """Move new flush durations from the pipeline's recent list into the histogram."""
        clicks = self.runtime.clicks
        if clicks is None:
            return
        m = clicks.metrics
        new = m.flushes - self._flushes_seen
        if new <= 0:
            return
        recent = m.flush_durations[-new:] if new <= len(m.flush_durations) else m.flush_durations
        for duration in recent:
            self.flush_histogram.observe(duration)
        self._flushes_seen = m.flushes

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_s:
            self._date_s = now
            self._date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    # --- dispatch ------------------------------------------------------------------------

    def count(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    async def authorize(self, req: Request) -> Response | None:
        """Check the token of a request that needs one, from its head alone (before its
        body is read: an unauthenticated client cannot make us buffer a megabyte). None
        when the request may go on; else the answer to send before closing."""
        try:
            segments = _segments(req)
            if segments[:1] == ["api"] or (segments == ["metrics"] and self.public):
                await self.tokens.authenticate(req.header(b"authorization"))
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
        segments = _segments(req)
        method = req.method.decode("ascii")
        route, params = self.router.match(method, segments)
        query: dict[str, str] = {}
        for pair in req.query.decode("ascii").split("&"):
            if not pair:
                continue
            raw_name, _, raw_value = pair.partition("=")
            name = _unquote(raw_name, "query")
            if name not in route.query:
                accepted = ", ".join(sorted(route.query)) or "none"
                raise InvalidField(f"unknown query parameter {name!r} (accepted: {accepted})", name)
            if name in query:
                raise InvalidField(f"query parameter {name!r} given twice", name)
            query[name] = _unquote(raw_value, name)
        return await route.handler(Call(req, params, query, body))

    def _add_routes(self) -> None:
        r = self.router
        stats_q = ("from", "to", "interval", "tz", "top", "window")
        filters = ("domain", "tag", "campaign", "utm_source", "utm_medium", "utm_campaign", "q")
        r.add("GET", "/healthz", self.healthz)
        r.add("GET", "/metrics", self.metrics)
        r.add(
            "GET",
            "/api/links",
            self.list_links,
            (*filters, "created_from", "created_to", "archived", "limit", "cursor"),
        )
        r.add("POST", "/api/links", self.create_link)
        r.add("POST", "/api/links/bulk", self.create_links_bulk)
        for ref in ("/api/links/{id}", "/api/links/{domain}/{slug}"):
            r.add("GET", ref, self.get_link)
            r.add("PATCH", ref, self.patch_link)
            r.add("DELETE", ref, self.delete_link, ("purge",))
            r.add("GET", ref + "/stats", self.link_stats, stats_q)
            r.add("GET", ref + "/velocity", self.link_velocity, ("window",))
            r.add("GET", ref + "/checkpoints", self.link_checkpoints)
        r.add("GET", "/api/stats", self.group_stats, (*stats_q, *filters, "group_by", "limit"))
        r.add("GET", "/api/live", self.live, ("top",))
        r.add("GET", "/api/live/stream", self.live_stream, ("top",))
        r.add("GET", "/api/domains", self.list_domains)
        r.add("POST", "/api/domains", self.create_domain)
        r.add("GET", "/api/domains/{host}", self.get_domain)
        r.add("PATCH", "/api/domains/{host}", self.patch_domain)
        r.add("DELETE", "/api/domains/{host}", self.delete_domain)
        r.add("GET", "/api/utm/allow", self.utm_allow_all)
        r.add("GET", "/api/utm/allow/{field}", self.utm_allow_get)
        r.add("PUT", "/api/utm/allow/{field}", self.utm_allow_put)
        r.add("DELETE", "/api/utm/allow/{field}", self.utm_allow_delete)
        r.add("GET", "/api/tokens", self.list_tokens)
        r.add("POST", "/api/tokens", self.create_token)
        r.add("DELETE", "/api/tokens/{id}", self.revoke_token)

    # --- links ---------------------------------------------------------------------------

    def link_out(self, link: dict[str, Any]) -> dict[str, Any]:
        out = dict(link)
        out["short_url"] = stats.short_url(link["domain"], link["slug"])
        for name in LINK_TIME_FIELDS:
            out[name] = timerange.iso_ms(link[name])
        return out

    def _link_ref(self, call: Call) -> LinkRef:
        if "id" in call.params:
            return int(call.params["id"])
        return (call.params["domain"], call.params["slug"])

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a store write on the writer connection, then serve it from the link table."""
        result = await self.runtime.writer.run(fn, *args)
        await self.runtime.sync.refresh()
        return result

    def _link_fields(self, body: dict[str, Any], now_s: float) -> dict[str, Any]:
        fields = {k: v for k, v in body.items() if k in LINK_FIELDS}
        if "expires_at" in fields:
            fields["expires_at"] = timerange.time_ms(fields["expires_at"], "expires_at", now_s)
        return fields

    def _create_args(self, body: dict[str, Any], now_s: float) -> tuple[Any, ...]:
        if "url" not in body:
            raise InvalidField("url is required: the destination, e.g. https://example.com/", "url")
        for name in ("slug", "domain"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise InvalidField(f"{name} must be a string", name)
        return (self._link_fields(body, now_s), body.get("domain"), body.get("slug"))

    async def create_link(self, call: Call) -> Response:
        body = call.json_object(CREATE_FIELDS)
        link = await self._write(_create_link, *self._create_args(body, call.now))
        return json_response(201, self.link_out(link), (("Location", f"/api/links/{link['id']}"),))

    async def create_links_bulk(self, call: Call) -> Response:
        body = call.json_object(frozenset({"links"}))
        items = body.get("links")
        if not isinstance(items, list) or not items:
            raise InvalidField("links must be a non-empty list of link objects", "links")
        if len(items) > MAX_BULK_LINKS:
            raise InvalidField(f"at most {MAX_BULK_LINKS} links per bulk request", "links")
        prepared: list[tuple[Any, ...] | None] = []
        errors: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise InvalidField("each link must be a JSON object")
                for name in item:
                    if name not in CREATE_FIELDS:
                        raise InvalidField(f"unknown field {name!r}", name)
                prepared.append(self._create_args(item, call.now))
            except LinkedgeError as exc:
                errors.append(_error_item(i, exc))
                prepared.append(None)
        # Items that passed the checks above go through the store in one transaction even
        # when others failed (then rolled back), so every item's error is reported at once.
        created, db_errors = await self.runtime.writer.run(_create_bulk, prepared)
        errors = sorted(errors + db_errors, key=lambda e: int(e["index"]))
        if errors:
            statuses = {e["status"] for e in errors}
            status = statuses.pop() if len(statuses) == 1 else 400
            raise BulkFailed(
                f"{len(errors)} of {len(items)} links were refused; none was created",
                errors,
                status,
            )
        await self.runtime.sync.refresh()
        return json_response(201, {"links": [self.link_out(link) for link in created]})

    async def list_links(self, call: Call) -> Response:
        flt = self._filter(call, archived_default="false")
        for name in ("created_from", "created_to"):
            text = call.q(name)
            if text is not None:
                ms = round(timerange.parse_instant(text, name, call.now) * 1000)
                setattr(flt, name + "_ms", ms)
        limit = call.q_int("limit", stats.DEFAULT_PAGE, 1, stats.MAX_PAGE)
        before = _decode_cursor(call.q("cursor"))
        links, next_id = await self.db.run(catalog.list_links, flt, limit, before)
        return json_response(
            200,
            {
                "links": [self.link_out(link) for link in links],
                "next_cursor": None if next_id is None else _encode_cursor(next_id),
            },
        )

    def _filter(self, call: Call, archived_default: str) -> catalog.LinkFilter:
        flt = catalog.LinkFilter(archived=archived_default)
        for name in ("tag", "campaign", "utm_source", "utm_medium", "utm_campaign", "q"):
            value = call.q(name)
            if value is not None:
                setattr(flt, name, value)
        domain = call.q("domain")
        if domain is not None:
            flt.domain = normalize_host(domain)
        archived = call.q("archived")
        if archived is not None:
            if archived not in ("true", "false", "any"):
                raise InvalidField("archived must be true, false or any", "archived")
            flt.archived = archived
        return flt

    async def _read_link(self, ref: LinkRef) -> dict[str, Any]:
        link: dict[str, Any] = await self.db.run(_get_link, ref)
        return link

    async def get_link(self, call: Call) -> Response:
        return json_response(200, self.link_out(await self._read_link(self._link_ref(call))))

    async def patch_link(self, call: Call) -> Response:
        body = call.json_object(PATCH_FIELDS | {"slug", "domain"})
        for name in ("slug", "domain"):
            if name in body:
                raise InvalidField(
                    f"{name} cannot be changed: create a new link (and archive this one)", name
                )
        if not body:
            raise InvalidField("nothing to change: send the fields to change")
        archived = body.get("archived")
        if "archived" in body and not isinstance(archived, bool):
            raise InvalidField("archived must be true or false", "archived")
        changes = self._link_fields(body, call.now)
        link = await self._write(_patch_link, self._link_ref(call), changes, archived)
        return json_response(200, self.link_out(link))

    async def delete_link(self, call: Call) -> Response:
        ref = self._link_ref(call)
        if call.q_bool("purge"):
            await self._write(_purge_link, ref)
            return Response(204, b"")
        link = await self._write(_archive_link, ref)
        return json_response(200, self.link_out(link))

    # --- stats ---------------------------------------------------------------------------

    def _range(self, call: Call) -> timerange.TimeRange:
        return timerange.time_range(
            call.q("from"), call.q("to"), call.q("interval"), call.q("tz"), call.now
        )

    def _velocity(
        self, link_ids: list[int] | None, window_s: int, now_s: int | None = None
    ) -> dict[str, Any]:
        now = int(time.time()) if now_s is None else now_s
        record = velocity.live_velocity(self.runtime.live, link_ids, window_s, now)
        # The counters start empty: until two windows have passed, "previous" is not real.
        record["warming_up"] = now - self.runtime.started_at < 2 * window_s
        return record

    async def _checkpoints(self, link: dict[str, Any]) -> dict[str, Any] | None:
        cached = self._final_checkpoints.get(link["id"])
        if cached is not None:
            return cached
        result = await self.db.run(
            stats.launch_checkpoints, link["id"], link["created_at"], now_ms()
        )
        if result and result["checkpoints"] and all(c["complete"] for c in result["checkpoints"]):
            self._final_checkpoints[link["id"]] = result
        return result

    async def link_stats(self, call: Call) -> Response:
        link = await self._read_link(self._link_ref(call))
        rng = self._range(call)
        top = call.q_int("top", stats.DEFAULT_TOP, 1, stats.MAX_TOP)
        window = velocity.parse_window(call.q("window"))
        flt = catalog.LinkFilter(link_id=link["id"])
        result = await self.db.run(stats.selection_stats, flt, rng, top)
        return json_response(
            200,
            {
                "link": stats.link_head(link),
                **rng.describe(),
                **result,
                "velocity": self._velocity([link["id"]], window),
                "checkpoints": await self._checkpoints(link),
            },
        )

    async def link_velocity(self, call: Call) -> Response:
        link = await self._read_link(self._link_ref(call))
        window = velocity.parse_window(call.q("window"))
        return json_response(
            200, {"link": stats.link_head(link), "velocity": self._velocity([link["id"]], window)}
        )

    async def link_checkpoints(self, call: Call) -> Response:
        link = await self._read_link(self._link_ref(call))
        return json_response(
            200, {"link": stats.link_head(link), "launch": await self._checkpoints(link)}
        )

    def _live_ids(self, window_s: int) -> list[int]:
        """Links with a click in the last two velocity windows."""
        since = int(time.time()) - 2 * window_s
        return [
            link_id
            for link_id, c in self.runtime.live.links.items()
            if c.seconds.last >= since or c.minutes.last >= since // 60
        ]

    async def group_stats(self, call: Call) -> Response:
        flt = self._filter(call, archived_default="any")
        rng = self._range(call)
        window = velocity.parse_window(call.q("window"))
        group_by = call.q("group_by")
        live_ids = self._live_ids(window)
        if group_by is None:
            top = call.q_int("top", stats.DEFAULT_TOP, 1, stats.MAX_TOP)
            result = await self.db.run(stats.selection_stats, flt, rng, top)
            ids = await self.db.run(stats.selected_link_ids, flt, live_ids)
            return json_response(
                200, {**rng.describe(), **result, "velocity": self._velocity(ids, window)}
            )
        if group_by not in stats.GROUP_BY:
            raise InvalidField(f"group_by must be one of {', '.join(stats.GROUP_BY)}", "group_by")
        if call.q("top") is not None:
            raise InvalidField("top applies without group_by (breakdowns)", "top")
        limit = call.q_int("limit", stats.DEFAULT_GROUPS, 1, stats.MAX_GROUPS)
        result = await self.db.run(stats.group_stats, flt, group_by, rng, limit)
        keys_of = await self.db.run(stats.group_keys_of, flt, group_by, live_ids)
        members: dict[Any, list[int]] = {}
        for link_id, keys in keys_of.items():
            for key in keys:
                members.setdefault(key, []).append(link_id)
        for group in result["groups"]:
            group["velocity"] = self._velocity(members.get(group["key"], []), window)
        return json_response(200, {**rng.describe(), **result})

    # --- live ----------------------------------------------------------------------------

    async def _refresh_names(self, link_ids: list[int]) -> None:
        """(domain, slug) of the live links, read once per link and again after the link
        table changed: the only SQL behind /api/live."""
        table = self.runtime.table
        if self._names_rev != table.rev:
            self._names_rev = table.rev
            self._names.clear()
        missing = [i for i in link_ids if i not in self._names]
        if missing:
            self._names.update(await self.db.run(catalog.link_names, missing))

    async def live_snapshot(self, top: int) -> dict[str, Any]:
        now_s = int(time.time())
        cached = self._live
        if cached is not None and cached[0] == now_s and cached[1] == top:
            return cached[2]
        live = self.runtime.live
        ids = velocity.live_top_links(live, now_s, top)
        await self._refresh_names(ids)
        links = []
        for link_id in ids:
            name = self._names.get(link_id)
            windows = velocity.live_windows(live, link_id, now_s)
            entry: dict[str, Any] = {"id": link_id}
            if name is not None:
                entry.update(
                    {"domain": name[0], "slug": name[1], "short_url": stats.short_url(*name)}
                )
            entry["windows"] = windows
            entry["rate_per_min"] = windows["60s"]["clicks"]
            entry["velocity"] = self._velocity([link_id], velocity.DEFAULT_VELOCITY_WINDOW_S, now_s)
            links.append(entry)
        overall_windows = velocity.live_windows(live, None, now_s)
        snapshot = {
            "now": timerange.iso_local(now_s, timerange.UTC),
            "overall": {
                "windows": overall_windows,
                "rate_per_min": overall_windows["60s"]["clicks"],
                "rate_per_s": round(live.window(None, 10, now_s)[0] / 10, 2),
                "velocity": self._velocity(None, velocity.DEFAULT_VELOCITY_WINDOW_S, now_s),
                "since_start": {"clicks": live.total, "humans": live.humans},
            },
            "links": links,
            "pipeline": self._pipeline(),
        }
        self._live = (now_s, top, snapshot)
        return snapshot

    def _pipeline(self) -> dict[str, Any]:
        clicks = self.runtime.clicks
        if clicks is None:
            return {"recording": False}
        m = clicks.metrics
        return {
            "recording": True,
            "queue_depth": clicks.queued,
            "flush_lag_s": round(clicks.flush_lag_s, 3),
            "captured": m.captured,
            "written": m.written,
            "dropped": m.dropped,
            "write_failures": m.write_failures,
            "last_error": m.last_error,
        }

    async def live(self, call: Call) -> Response:
        top = call.q_int("top", velocity.DEFAULT_LIVE_TOP, 0, velocity.MAX_LIVE_TOP)
        return json_response(200, await self.live_snapshot(top))

    async def live_stream(self, call: Call) -> Stream:
        top = call.q_int("top", velocity.DEFAULT_LIVE_TOP, 0, velocity.MAX_LIVE_TOP)
        return Stream(self._live_events(top))

    async def _live_events(self, top: int) -> AsyncIterator[bytes]:
        first = True
        while not self.stopping:
            snapshot = await self.live_snapshot(top)
            data = orjson.dumps(snapshot)
            now_s = int(time.time())
            retry = f"retry: {STREAM_RETRY_MS}\n" if first else ""
            first = False
            yield f"{retry}event: live\nid: {now_s}\ndata: ".encode() + data + b"\n\n"
            # Wake on the next whole second (plus a little, so that clicks of the second
            # just ended are counted: the flusher runs every 100 ms), or at shutdown.
            delay = STREAM_INTERVAL_S - (time.time() % STREAM_INTERVAL_S) + 0.15
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), delay)

    # --- domains -------------------------------------------------------------------------

    def domain_out(self, domain: dict[str, Any]) -> dict[str, Any]:
        return {**domain, "created_at": timerange.iso_ms(domain["created_at"])}

    async def list_domains(self, call: Call) -> Response:
        domains = await self.db.run(catalog.list_domains)
        return json_response(200, {"domains": [self.domain_out(d) for d in domains]})

    async def create_domain(self, call: Call) -> Response:
        body = call.json_object(DOMAIN_FIELDS)
        host = body.get("host")
        if not isinstance(host, str):
            raise InvalidField("host is required: a bare host name like go.example.com", "host")
        default = body.get("default", False)
        if not isinstance(default, bool):
            raise InvalidField("default must be true or false", "default")
        for name in ("root_url", "fallback_url"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise InvalidField(f"{name} must be a URL string or null", name)
        domain = await self._write(
            _add_domain, host, default, body.get("root_url"), body.get("fallback_url")
        )
        return json_response(
            201, self.domain_out(domain), (("Location", f"/api/domains/{domain['host']}"),)
        )

    async def get_domain(self, call: Call) -> Response:
        domain = await self.db.run(catalog.get_domain, call.params["host"])
        return json_response(200, self.domain_out(domain))

    async def patch_domain(self, call: Call) -> Response:
        body = call.json_object(DOMAIN_FIELDS)
        if "host" in body:
            raise InvalidField("host cannot be changed: add a new domain", "host")
        if not body:
            raise InvalidField("nothing to change: send default, root_url or fallback_url")
        for name in ("root_url", "fallback_url"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise InvalidField(f"{name} must be a URL string or null", name)
        domain = await self._write(catalog.update_domain, call.params["host"], body)
        return json_response(200, self.domain_out(domain))

    async def delete_domain(self, call: Call) -> Response:
        await self._write(catalog.remove_domain, call.params["host"])
        return Response(204, b"")

    # --- UTM allow-lists -----------------------------------------------------------------

    async def utm_allow_all(self, call: Call) -> Response:
        allowed = await self.db.run(catalog.utm_allowed)
        return json_response(200, {name: allowed.get(name, []) for name in catalog.UTM_FIELDS})

    def _utm_field(self, call: Call) -> str:
        field = call.params["field"]
        name = field if field.startswith("utm_") else "utm_" + field
        if name not in catalog.UTM_FIELDS:
            raise NotFound(
                f"unknown UTM field {field!r}: one of source, medium, campaign, content, term",
                "field",
            )
        return name

    async def utm_allow_get(self, call: Call) -> Response:
        name = self._utm_field(call)
        allowed = await self.db.run(catalog.utm_allowed)
        return json_response(200, {"field": name, "values": allowed.get(name, [])})

    async def utm_allow_put(self, call: Call) -> Response:
        name = self._utm_field(call)
        body = call.json_object(frozenset({"values"}))
        values = body.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidField("values must be a list of strings ([] accepts any value)", "values")
        cleaned = await self.runtime.writer.run(catalog.set_utm_allowed, name, values)
        return json_response(200, {"field": name, "values": cleaned})

    async def utm_allow_delete(self, call: Call) -> Response:
        name = self._utm_field(call)
        await self.runtime.writer.run(catalog.set_utm_allowed, name, [])
        return Response(204, b"")

    # --- tokens --------------------------------------------------------------------------

    def token_out(self, token: dict[str, Any]) -> dict[str, Any]:
        out = dict(token)
        for name in ("created_at", "last_used_at", "revoked_at"):
            out[name] = timerange.iso_ms(token[name])
        return out

    async def list_tokens(self, call: Call) -> Response:
        tokens = await self.db.run(catalog.list_tokens)
        return json_response(200, {"tokens": [self.token_out(t) for t in tokens]})

    async def create_token(self, call: Call) -> Response:
        body = call.json_object(frozenset({"name"}))
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidField("name is required: what the token is for", "name")
        record, secret = await self.runtime.writer.run(catalog.create_token, name)
        await self.tokens.refresh()
        return json_response(201, {"token": self.token_out(record), "secret": secret})

    async def revoke_token(self, call: Call) -> Response:
        record = await self.runtime.writer.run(catalog.revoke_token, int(call.params["id"]))
        await self.tokens.refresh()
        return json_response(200, self.token_out(record))

    # --- operations ----------------------------------------------------------------------

    async def healthz(self, call: Call) -> Response:
        cached = self._health
        now = time.monotonic()
        if cached is not None and now - cached[0] < HEALTH_CACHE_S:
            return cached[1]
        db_error: str | None = None
        try:
            await asyncio.wait_for(self.runtime.writer.run(_probe_write), HEALTH_DB_TIMEOUT_S)
        except TimeoutError:
            db_error = f"the database did not take a write lock within {HEALTH_DB_TIMEOUT_S:g}s"
        except (sqlite3.Error, RuntimeError) as exc:
            db_error = f"{type(exc).__name__}: {exc}"
        pipeline = self._pipeline()
        pipeline_error = pipeline.get("last_error")
        geo = self.runtime.geo.status()
        ok = db_error is None and pipeline_error is None
        body = {
            "status": "ok" if ok else "unavailable",
            "db": {"ok": db_error is None, "path": self.config.db_path, "error": db_error},
            "pipeline": {"ok": pipeline_error is None, **pipeline},
            "geoip": {
                "enabled": geo.get("enabled"),
                "database_type": geo.get("database_type"),
                "build_date": geo.get("build_date"),
                "error": geo.get("error"),
            },
            "sync": {
                "ok": self.runtime.sync.last_error is None,
                "error": self.runtime.sync.last_error,
            },
            "links_loaded": len(self.runtime.table),
            "uptime_s": round(time.time() - self.runtime.started_at, 1),
        }
        response = json_response(200 if ok else 503, body)
        self._health = (now, response)
        return response

    async def metrics(self, call: Call) -> Response:
        self._take_flush_durations()
        return Response(200, self.metrics_text().encode(), PROMETHEUS_TYPE)

    def metrics_text(self) -> str:
        rt = self.runtime
        out: list[str] = []
        edge = rt.edge.metrics if rt.edge is not None else None
        if edge is not None:
            _metric(
                out,
                "linkedge_requests_total",
                "counter",
                "Edge requests answered, by status.",
                [(f'{{status="{s}"}}', n) for s, n in sorted(edge.by_status.items())],
            )
            _metric(
                out,
                "linkedge_redirects_total",
                "counter",
                "Redirects served.",
                [("", edge.redirects)],
            )
            _metric(
                out,
                "linkedge_bad_requests_total",
                "counter",
                "Edge requests refused as malformed or oversized.",
                [("", edge.bad_requests)],
            )
            _metric(
                out,
                "linkedge_timeouts_total",
                "counter",
                "Edge connections closed for a slow request head (408).",
                [("", edge.timeouts)],
            )
            _metric(
                out,
                "linkedge_connections_total",
                "counter",
                "Connections accepted, by listener.",
                [
                    ('{listener="edge"}', edge.connections_total),
                    ('{listener="admin"}', self.connections_total),
                ],
            )
            _metric(
                out,
                "linkedge_connections_rejected_total",
                "counter",
                "Edge connections refused past max_connections (503).",
                [("", edge.connections_rejected)],
            )
            _metric(
                out,
                "linkedge_open_connections",
                "gauge",
                "Open connections, by listener.",
                [
                    ('{listener="edge"}', edge.connections_open),
                    ('{listener="admin"}', len(self.connections)),
                ],
            )
        _metric(
            out,
            "linkedge_admin_requests_total",
            "counter",
            "Admin API requests answered, by status.",
            [(f'{{status="{s}"}}', n) for s, n in sorted(self.by_status.items())],
        )
        clicks = rt.clicks
        if clicks is not None:
            m = clicks.metrics
            for name, value, help_text in (
                ("captured", m.captured, "Clicks taken from the edge into the pipeline."),
                ("written", m.written, "Clicks written to SQLite."),
                ("dropped", m.dropped, "Clicks dropped because the queue was full."),
            ):
                _metric(out, f"linkedge_clicks_{name}_total", "counter", help_text, [("", value)])
            _metric(
                out,
                "linkedge_click_write_failures_total",
                "counter",
                "Failed click batch writes (the clicks are kept and retried).",
                [("", m.write_failures)],
            )
            out.append(
                "# HELP linkedge_click_flush_duration_seconds Time to write one click batch."
            )
            out.append("# TYPE linkedge_click_flush_duration_seconds histogram")
            out.extend(self.flush_histogram.lines("linkedge_click_flush_duration_seconds"))
            _metric(
                out,
                "linkedge_click_queue_depth",
                "gauge",
                "Clicks captured and not yet written.",
                [("", clicks.queued)],
            )
            _metric(
                out,
                "linkedge_click_flush_lag_seconds",
                "gauge",
                "Age of the oldest click not yet written.",
                [("", f"{clicks.flush_lag_s:.3f}")],
            )
        _metric(
            out,
            "linkedge_links_loaded",
            "gauge",
            "Links in the edge's table.",
            [("", len(rt.table))],
        )
        geo = rt.geo.status()
        epoch = geo.get("build_epoch")
        _metric(
            out,
            "linkedge_geoip_build_timestamp_seconds",
            "gauge",
            "Build time of the GeoIP database in use (0: none loaded).",
            [("", int(epoch) if isinstance(epoch, int) else 0)],
        )
        _metric(
            out,
            "linkedge_geoip_info",
            "gauge",
            "The GeoIP database in use (1: loaded).",
            [
                (
                    f'{{database_type="{_label(geo.get("database_type"))}",'
                    f'build_date="{_label(geo.get("build_date"))}"}}',
                    1 if geo.get("enabled") else 0,
                )
            ],
        )
        _metric(
            out,
            "linkedge_start_time_seconds",
            "gauge",
            "When this server started (Unix time).",
            [("", f"{rt.started_at:.3f}")],
        )
        return "\n".join(out) + "\n"


def _segments(req: Request) -> list[str]:
    """The path's segments, each percent-decoded (an encoded "/" stays in its segment)."""
    raw_path = req.path.decode("ascii")  # the parser admits ASCII only
    if len(raw_path) > 1 and raw_path.endswith("/"):
        raw_path = raw_path[:-1]
    return [_unquote(part, "path") for part in raw_path.split("/")[1:]]


def _label(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unquote(text: str, what: str) -> str:
    """Percent-decode a path segment or query value. A "+" stays a plus sign (not a
    space, as in HTML forms), so ISO 8601 offsets like +01:00 work unencoded."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise InvalidField(f"the {what} is not valid UTF-8 once percent-decoded", what) from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _encode_cursor(link_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{link_id}".encode()).decode().rstrip("=")


def _decode_cursor(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    kind, _, value = raw.partition(":")
    if kind != "id" or not value.isdigit():
        raise InvalidField("invalid cursor: pass next_cursor from the previous page", "cursor")
    return int(value)


# --- writer-thread functions (catalog calls composed; they run on the writer) -------------


def _resolve(conn: sqlite3.Connection, ref: LinkRef) -> int:
    if isinstance(ref, int):
        if not conn.execute("SELECT 1 FROM links WHERE id = ?", (ref,)).fetchone():
            raise NotFound(f"no link with id {ref}")
        return ref
    domain, slug = ref
    return int(catalog.find_link(conn, slug, domain)["id"])


def _get_link(conn: sqlite3.Connection, ref: LinkRef) -> dict[str, Any]:
    return catalog.get_link(conn, _resolve(conn, ref))


def _create_link(
    conn: sqlite3.Connection, fields: dict[str, Any], domain: str | None, slug: str | None
) -> dict[str, Any]:
    return catalog.create_link(conn, fields, domain=domain, slug=slug)


def _create_bulk(
    conn: sqlite3.Connection, prepared: list[tuple[Any, ...] | None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All or nothing: every link in one transaction, rolled back when any is refused
    (None: an item refused before it got here)."""
    created: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for i, args in enumerate(prepared):
            if args is None:
                continue
            fields, domain, slug = args
            try:
                created.append(catalog.create_link(conn, fields, domain=domain, slug=slug))
            except LinkedgeError as exc:
                errors.append(_error_item(i, exc))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    complete = not errors and None not in prepared
    conn.execute("COMMIT" if complete else "ROLLBACK")
    return (created if complete else []), errors


def _patch_link(
    conn: sqlite3.Connection, ref: LinkRef, changes: dict[str, Any], archived: bool | None
) -> dict[str, Any]:
    link_id = _resolve(conn, ref)
    if archived is False:
        catalog.archive_link(conn, link_id, archived=False)
    if changes:
        catalog.update_link(conn, link_id, changes)
    if archived is True:
        catalog.archive_link(conn, link_id, archived=True)
    return catalog.get_link(conn, link_id)


def _archive_link(conn: sqlite3.Connection, ref: LinkRef) -> dict[str, Any]:
    return catalog.archive_link(conn, _resolve(conn, ref))


def _purge_link(conn: sqlite3.Connection, ref: LinkRef) -> None:
    catalog.purge_link(conn, _resolve(conn, ref))


def _add_domain(
    conn: sqlite3.Connection,
    host: str,
    default: bool,
    root_url: str | None,
    fallback_url: str | None,
) -> dict[str, Any]:
    return catalog.add_domain(
        conn, host, default=default, root_url=root_url, fallback_url=fallback_url
    )


def _probe_write(conn: sqlite3.Connection) -> None:
    """Take SQLite's write lock and let it go: proves the file is writable, writes nothing."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")


# --- the protocol --------------------------------------------------------------------------


class AdminProtocol(asyncio.Protocol):
    """One admin connection: bytes in, a worker task answering requests in order."""

    def __init__(self, server: AdminServer) -> None:
        # shared state
        self.server = server
        # per connection
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.closing = False  # close after the request in progress
        self.idle = True  # waiting for the first byte of a request
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
                if not keep:
                    return
        except Exception:
            log.exception("admin connection failed")
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
        keep_alive_s = self.server.config.keep_alive_timeout_s
        started: float | None = None
        scanner = HeadScanner()
        self.idle = True
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
