"""The admin API's routes: links, stats, live and SSE, domains, UTM lists, tokens, health.

Rules of this module:
- Handlers get a `Call` (admin/http.py) and return a Response or a Stream; errors are
  raised as LinkedgeError classes and rendered by admin/http.py in one JSON shape.
- Auth: every `/api/` route needs `Authorization: Bearer <token>` (admin/auth.py), checked
  from the head before routing and before the body is read. /healthz never needs one;
  /metrics needs one only when the listener is public (`--admin-public`): Prometheus
  scrapers on the same host usually have no token.
- Writes go through the runtime's writer connection (edge/catalog.py functions); right
  after a write succeeds the link table is refreshed, so the edge serves a change on the
  very next request. Reads (links, stats) use this server's own connection, so a slow
  stats query never delays link sync or click writes.
- Nothing here blocks the event loop: every query runs on an aiosqlite thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import orjson

from admin import (
    alerts,
    auth,
    baselines,
    chstats,
    conversions,
    imports,
    insights,
    metrics,
    qr,
    stats,
    timerange,
    velocity,
)
from admin.http import (
    BulkFailed,
    Call,
    JsonListener,
    Response,
    Router,
    Stream,
    decode_cursor,
    encode_cursor,
    is_loopback,
    json_response,
)
from admin.metrics import FLUSH_BUCKETS_S, Histogram
from edge import catalog, changelog
from edge.db import Database, Transaction, current_rev, now_ms
from edge.errors import InvalidField, LinkedgeError, NotFound
from edge.http import Request
from edge.urls import normalize_host
from geo import bots

log = logging.getLogger("linkedge.admin")

MAX_BULK_LINKS: Final = 1000
# Event streams push once a second.
STREAM_INTERVAL_S: Final = 1.0
LIVE_REUSE_S: Final = 0.1  # a /api/live snapshot is reused this long while clicks arrive
STREAM_RETRY_MS: Final = 2000  # EventSource reconnection delay we suggest
# The SHA-256 of the bearer token of the request being handled (set when it is authorized,
# in the connection's task): the change history records which token made each change.
_caller: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("caller", default=None)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("linkedge")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0"


def _flag(text: str | None, name: str) -> bool:
    if text is None or text in ("0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise InvalidField(f"{name} must be true or false", name)


QR_QUERY: Final = ("scale", "margin", "error", "dark", "light")
IMPORT_QUERY: Final = ("from", "map", "dry_run", "overwrite", "domain")
# /healthz probes the writer at most this often, and gives it this long to answer.
HEALTH_CACHE_S: Final = 1.0
HEALTH_DB_TIMEOUT_S: Final = 2.0
METRICS_TICK_S: Final = 1.0  # the histogram takes new flush durations this often

# Fields of a link in a request body (edge/catalog.py LINK_COLUMNS plus where it lives).
LINK_FIELDS: Final = frozenset(catalog.LINK_COLUMNS)
CREATE_FIELDS: Final = LINK_FIELDS | {"slug", "domain"}
PATCH_FIELDS: Final = LINK_FIELDS | {"archived"}
LINK_TIME_FIELDS: Final = ("expires_at", "launched_at", "archived_at", "created_at", "updated_at")
DOMAIN_FIELDS: Final = frozenset(
    {"host", "default", "root_url", "fallback_url", "case_insensitive_slugs", "click_ids"}
)


def _error_item(index: int, exc: LinkedgeError) -> dict[str, Any]:
    return {
        "index": index,
        "status": exc.status,
        "code": exc.code,
        "message": exc.message,
        "field": exc.field,
    }


# --- the server ----------------------------------------------------------------------------


LinkRef = int | tuple[str, str]  # an id, or (domain, slug)


class AdminServer:
    """The admin listener; `runtime` is the collector process (admin/collector.py)."""

    def __init__(self, runtime: Any) -> None:
        # shared state
        self.runtime = runtime
        self.config = runtime.config
        self.db = Database(self.config.db_path)  # reads: links, stats, tokens
        # the stats reads: admin/stats.py over SQLite, or admin/chstats.py over ClickHouse
        self.reads: Any = stats if not self.config.click_sink else chstats.for_sink(self.config)
        self.tokens = auth.TokenCache(self.db, runtime.writer)
        self.router = Router()
        self._add_routes()
        self.public = not is_loopback(self.config.admin_host)  # --admin-public
        self.http = JsonListener(
            self.router,
            self._authorize,
            host=self.config.admin_host,
            port=self.config.admin_port,
            keep_alive_timeout_s=self.config.keep_alive_timeout_s,
        )
        # metrics
        self.flush_histogram = Histogram(FLUSH_BUCKETS_S)
        self._flushes_seen = 0
        self._ticker: asyncio.TimerHandle | None = None
        # caches
        self._health: tuple[float, Response] | None = None
        self._openapi: bytes | None = None
        self._live: tuple[int, int, int, float, dict[str, Any]] | None = None
        self._names_rev = -1
        self._names: dict[int, tuple[str, str, int | None]] = {}
        self._final_checkpoints: dict[int, dict[str, Any]] = {}  # links whose checkpoints are final

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def stopping(self) -> bool:
        return self.http.stopping

    async def start(self) -> None:
        config = self.config
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
        await self.http.start()
        self._ticker = asyncio.get_running_loop().call_later(METRICS_TICK_S, self._tick)

    async def stop(self) -> None:
        await self.http.stop()
        if self._ticker is not None:
            self._ticker.cancel()
        await self.tokens.close()
        await self.db.close()

    async def _authorize(self, req: Request, segments: list[str]) -> None:
        if segments[:2] == ["api", "postback"]:
            return  # a domain's postback secret instead (admin/conversions.py)
        if segments[:1] == ["api"] or (segments == ["metrics"] and self.public):
            # (a token the CLI made a moment ago is looked up: admin/auth.py)
            header = req.header(b"authorization")
            token_id = await self.tokens.authenticate(header)
            _caller.set(hashlib.sha256((header or b"").partition(b" ")[2].strip()).digest())
            scopes = self.tokens.scopes.get(token_id, frozenset())
            auth.check_scope(scopes, req.method.decode("ascii"), segments)

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

    def _add_routes(self) -> None:
        r = self.router
        stats_q = ("from", "to", "interval", "tz", "top", "window")
        filters = ("domain", "tag", "campaign", "utm_source", "utm_medium", "utm_campaign", "q")
        r.add("GET", "/healthz", self.healthz)
        r.add("GET", "/metrics", self.metrics)
        r.add("GET", "/api/openapi.json", self.openapi)
        r.add(
            "GET",
            "/api/links",
            self.list_links,
            (*filters, "created_from", "created_to", "archived", "limit", "cursor"),
        )
        r.add("POST", "/api/links", self.create_link)
        r.add("POST", "/api/links/bulk", self.create_links_bulk)
        r.add("POST", "/api/import", self.import_links, IMPORT_QUERY)
        # (before /api/links/{domain}/{slug}, which would take /api/links/{id}/abtest)
        conversions.add_routes(r, self, filters)  # events, postbacks, A/B tests, segments
        for ref in ("/api/links/{id}", "/api/links/{domain}/{slug}"):
            r.add("GET", ref, self.get_link)
            r.add("PATCH", ref, self.patch_link)
            r.add("DELETE", ref, self.delete_link, ("purge",))
            r.add("GET", ref + "/stats", self.link_stats, (*stats_q, "route", "goal"))
            r.add("GET", ref + "/velocity", self.link_velocity, ("window",))
            r.add("GET", ref + "/checkpoints", self.link_checkpoints)
            r.add("POST", ref + "/launch", self.launch_link)
            r.add("DELETE", ref + "/launch", self.unlaunch_link)
            for kind in qr.FORMATS:
                r.add("GET", f"{ref}/qr.{kind}", self.link_qr, QR_QUERY)
        r.add(
            "GET", "/api/stats", self.group_stats, (*stats_q, *filters, "group_by", "limit", "goal")
        )
        r.add("GET", "/api/campaigns/{name}/launch", self.campaign_launch)
        r.add("POST", "/api/campaigns/{name}/launch", self.launch_campaign)
        r.add("DELETE", "/api/campaigns/{name}/launch", self.unlaunch_campaign)
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
        alerts.add_routes(r, self)  # /api/alerts, /api/checks (admin/alerts.py)
        insights.add_routes(r, self)  # history, baselines, reports, the dashboard

    # --- links ---------------------------------------------------------------------------

    def link_out(self, link: dict[str, Any]) -> dict[str, Any]:
        out = dict(link)
        out["short_url"] = stats.short_url(link["domain"], link["slug"])
        for name in LINK_TIME_FIELDS:
            out[name] = timerange.iso_ms(link[name])
        return out

    def _link_ref(self, call: Call) -> LinkRef:
        if "id" in call.params:
            return call.path_id("link")
        return (call.params["domain"], call.params["slug"])

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a catalog write on the writer connection; answer once every edge worker
        serves it (they reload at once; a worker that does not within a second picks it
        up at its next poll)."""
        result = await self.runtime.writer.run(as_caller(fn), *args)
        self._final_checkpoints.clear()  # a launch may have moved
        await self._serve_latest()
        return result

    async def _serve_latest(self) -> None:
        rev = await self.runtime.writer.run(current_rev)
        if not await self.runtime.edges.serve_rev(rev):
            log.warning("a worker did not confirm links revision %d within a second", rev)

    def _link_fields(self, body: dict[str, Any], now_s: float) -> dict[str, Any]:
        fields = {k: v for k, v in body.items() if k in LINK_FIELDS}
        for name in ("expires_at", "launched_at"):
            if name in fields:
                fields[name] = timerange.time_ms(fields[name], name, now_s)
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
        created, db_errors = await self.runtime.writer.run(as_caller(_create_bulk), prepared)
        errors = sorted(errors + db_errors, key=lambda e: int(e["index"]))
        if errors:
            statuses = {e["status"] for e in errors}
            status = statuses.pop() if len(statuses) == 1 else 400
            raise BulkFailed(
                f"{len(errors)} of {len(items)} links were refused; none was created",
                errors,
                status,
            )
        await self._serve_latest()
        return json_response(201, {"links": [self.link_out(link) for link in created]})

    async def list_links(self, call: Call) -> Response:
        flt = self._filter(call, archived_default="false")
        for name in ("created_from", "created_to"):
            text = call.q(name)
            if text is not None:
                ms = round(timerange.parse_instant(text, name, call.now) * 1000)
                setattr(flt, name + "_ms", ms)
        limit = call.q_int("limit", stats.DEFAULT_PAGE, 1, stats.MAX_PAGE)
        before = decode_cursor(call.q("cursor"), "id")
        links, next_id = await self.db.run(catalog.list_links, flt, limit, before)
        return json_response(
            200,
            {
                "links": [self.link_out(link) for link in links],
                "next_cursor": None if next_id is None else encode_cursor("id", next_id),
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

    async def openapi(self, call: Call) -> Response:
        if self._openapi is None:
            from admin import openapi

            self._openapi = orjson.dumps(openapi.document(self.router, _version()))
        return Response(200, self._openapi)

    async def import_links(self, call: Call) -> Response:
        """The body is an export file (admin/imports.py); all or nothing, one transaction."""
        fmt = call.q("from")
        if fmt is None:
            raise InvalidField(f"from is required: one of {', '.join(imports.FORMATS)}", "from")
        mapping = imports.parse_map(call.q("map"))
        dry_run = _flag(call.q("dry_run"), "dry_run")
        overwrite = _flag(call.q("overwrite"), "overwrite")
        domain = call.q("domain")
        data = call.body

        def run(conn: sqlite3.Connection) -> imports.ImportReport:
            return imports.run(
                conn,
                data,
                fmt,
                now_s=call.now,
                mapping=mapping,
                domain=domain,
                dry_run=dry_run,
                overwrite=overwrite,
            )

        report: imports.ImportReport = await self._write(run)
        return json_response(200, report.as_dict())

    async def link_qr(self, call: Call) -> Response:
        """The link's QR code (admin/qr.py): SVG or PNG by the path's extension."""
        kind = call.req.path.rsplit(b".", 1)[-1].decode("ascii")
        opts = qr.options(call.query)
        link = await self._read_link(self._link_ref(call))
        image = qr.render(stats.short_url(link["domain"], link["slug"]), kind, opts)
        return Response(200, image, qr.CONTENT_TYPES[kind])

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

    # --- launches ------------------------------------------------------------------------

    def _launch_at(self, call: Call) -> int:
        """The body's `at` (ISO 8601, Unix ms, or relative like -5m); now without a body."""
        body = call.json_object(frozenset({"at"})) if call.body else {}
        value = body.get("at")
        at = timerange.time_ms(value, "at", call.now)
        return int(call.now * 1000) if at is None else at

    async def launch_link(self, call: Call) -> Response:
        at = self._launch_at(call)
        link = await self._write(_patch_link, self._link_ref(call), {"launched_at": at}, None)
        return json_response(200, self.link_out(link))

    async def unlaunch_link(self, call: Call) -> Response:
        link = await self._write(_patch_link, self._link_ref(call), {"launched_at": None}, None)
        return json_response(200, self.link_out(link))

    def _campaign_out(self, launch: dict[str, Any]) -> dict[str, Any]:
        return {**launch, "launched_at": timerange.iso_ms(launch["launched_at"])}

    async def campaign_launch(self, call: Call) -> Response:
        launch = await self.db.run(catalog.campaign_launch, call.params["name"])
        return json_response(200, self._campaign_out(launch))

    async def launch_campaign(self, call: Call) -> Response:
        at = self._launch_at(call)
        launch = await self._write(catalog.launch_campaign, call.params["name"], at)
        return json_response(200, self._campaign_out(launch))

    async def unlaunch_campaign(self, call: Call) -> Response:
        launch = await self._write(catalog.launch_campaign, call.params["name"], None)
        return json_response(200, self._campaign_out(launch))

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
        return self._warming(record, window_s, now)

    async def _velocity_of_many(self, link_ids: list[int], window_s: int) -> dict[str, Any]:
        """The velocity of a selection or group of links, off the loop's critical path:
        summed a slice at a time."""
        now = int(time.time())
        record = await velocity.live_velocity_async(self.runtime.live, link_ids, window_s, now)
        return self._warming(record, window_s, now)

    def _warming(self, record: dict[str, Any], window_s: int, now: int) -> dict[str, Any]:
        # The counters start empty: until two windows have passed, "previous" is not real.
        record["warming_up"] = now - self.runtime.started_at < 2 * window_s
        return record

    async def _checkpoints(self, link: dict[str, Any]) -> dict[str, Any] | None:
        cached = self._final_checkpoints.get(link["id"])
        if cached is not None:
            return cached
        result = await self.db.run(_checkpoints, self.reads, link, now_ms())
        if result["checkpoints"] and all(c["complete"] for c in result["checkpoints"]):
            self._final_checkpoints[link["id"]] = result  # until the launch changes
        return result

    async def link_stats(self, call: Call) -> Response:
        link = await self._read_link(self._link_ref(call))
        rng = self._range(call)
        top = call.q_int("top", stats.DEFAULT_TOP, 1, stats.MAX_TOP)
        window = velocity.parse_window(call.q("window"))
        flt = catalog.LinkFilter(link_id=link["id"])
        route = conversions.parse_route(link, call.q("route"))
        goal = conversions.parse_goal(call.q("goal"))
        if route is None:  # SQLite's or ClickHouse's stats (self.reads)
            result = await self.db.run(self.reads.selection_stats, flt, rng, top)
        else:  # a route's cut: the per-route rollups are SQLite's
            result = await self.db.run(stats.selection_stats, flt, rng, top, route)
        result["conversions"] = await self.db.run(
            conversions.for_selection, flt, rng, result["totals"], route, goal
        )
        if route is not None:
            result["route"] = call.q("route")
        else:  # a routed link: its numbers per route (rule, variant)
            routes = await self.db.run(conversions.route_breakdown, link, rng)
            if routes is not None:
                result["routes"] = routes
        return json_response(
            200,
            {
                "link": stats.link_head(link),
                **rng.describe(),
                **result,
                "velocity": self._velocity([link["id"]], window),
                "checkpoints": await self._checkpoints(link),
                "baseline": await self.db.run(baselines.summary, link, now_ms()),
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
        return [i for i, c in self.runtime.live.links.items() if c.last_s >= since]

    async def group_stats(self, call: Call) -> Response:
        flt = self._filter(call, archived_default="any")
        rng = self._range(call)
        window = velocity.parse_window(call.q("window"))
        group_by = call.q("group_by")
        live_ids = self._live_ids(window)
        if group_by is None:
            top = call.q_int("top", stats.DEFAULT_TOP, 1, stats.MAX_TOP)
            result = await self.db.run(self.reads.selection_stats, flt, rng, top)
            result["conversions"] = await self.db.run(
                conversions.for_selection,
                flt,
                rng,
                result["totals"],
                None,
                conversions.parse_goal(call.q("goal")),
            )
            ids = await self.db.run(stats.selected_link_ids, flt, live_ids)
            return json_response(
                200,
                {**rng.describe(), **result, "velocity": await self._velocity_of_many(ids, window)},
            )
        if group_by not in stats.GROUP_BY:
            raise InvalidField(f"group_by must be one of {', '.join(stats.GROUP_BY)}", "group_by")
        if call.q("top") is not None:
            raise InvalidField("top applies without group_by (breakdowns)", "top")
        limit = call.q_int("limit", stats.DEFAULT_GROUPS, 1, stats.MAX_GROUPS)
        result = await self.db.run(self.reads.group_stats, flt, group_by, rng, limit)
        await self.db.run(conversions.for_groups, flt, rng, group_by, result["groups"])
        keys_of = await self.db.run(stats.group_keys_of, flt, group_by, live_ids)
        members: dict[Any, list[int]] = {}
        for link_id, keys in keys_of.items():
            for key in keys:
                members.setdefault(key, []).append(link_id)
        for group in result["groups"]:
            group["velocity"] = await self._velocity_of_many(members.get(group["key"], []), window)
        return json_response(200, {**rng.describe(), **result})

    # --- live ----------------------------------------------------------------------------

    async def _refresh_names(self, link_ids: list[int]) -> None:
        """(domain, slug, launch) of the live links, read once per link and again after
        the catalog changed: the only SQL behind /api/live."""
        rev = await self.db.run(current_rev)
        if self._names_rev != rev:
            self._names_rev = rev
            self._names.clear()
        missing = [i for i in link_ids if i not in self._names]
        if missing:
            self._names.update(await self.db.run(catalog.live_heads, missing))

    async def live_snapshot(self, top: int) -> dict[str, Any]:
        now = time.time()
        now_s = int(now)
        live = self.runtime.live
        # one snapshot serves every poll of the same second while no click arrived, and
        # at most LIVE_REUSE_S otherwise: a click is on /api/live one flush after it lands
        cached = self._live
        if (
            cached is not None
            and cached[0] == now_s
            and cached[1] == top
            and (cached[2] == live.total or now - cached[3] < LIVE_REUSE_S)
        ):
            return cached[4]
        ids = velocity.live_top_links(live, now_s, top)
        await self._refresh_names(ids)
        links = []
        for link_id in ids:
            name = self._names.get(link_id)
            windows = velocity.live_windows(live, link_id, now_s)
            entry: dict[str, Any] = {"id": link_id}
            if name is not None:
                domain, slug, launched = name
                entry.update(
                    {
                        "domain": domain,
                        "slug": slug,
                        "short_url": stats.short_url(domain, slug),
                        "launched_at": timerange.iso_ms(launched),
                        # whole minutes since the send (negative: scheduled ahead)
                        "minutes_since_launch": (
                            None if launched is None else int(now * 1000 - launched) // 60000
                        ),
                    }
                )
            entry["windows"] = windows
            entry["rate_per_min"] = windows["60s"]["clicks"]
            entry["conversions"] = conversions.live_conversions(live.conversions, link_id, now_s)
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
                "since_start": {
                    "clicks": live.total,
                    "humans": live.humans,
                    "conversions": live.conversions.total,
                },
                "conversions": conversions.live_conversions(live.conversions, None, now_s),
            },
            "links": links,
            "pipeline": self._pipeline(),
            "alerts": {"firing": self.runtime.alerts.firing() if self.runtime.alerts else []},
        }
        self._live = (now_s, top, live.total, now, snapshot)
        return snapshot

    def _pipeline(self) -> dict[str, Any]:
        """Where the clicks are: captured by the workers, then dropped, acknowledged as
        written, or still queued (in a worker, in flight, or in the collector). Per
        worker and at every moment: captured == acked + dropped + queued."""
        clicks = self.runtime.clicks
        if clicks is None:
            return {"recording": False}
        m = clicks.metrics
        fleet = self.runtime.edges.totals()
        return {
            "recording": True,
            "captured": fleet["captured"],
            "written": fleet["acked"],
            "dropped": fleet["dropped"],
            "queue_depth": fleet["queued"],
            "collector_queue": clicks.queued,
            "flush_lag_s": round(clicks.flush_lag_s, 3),
            "reading_paused": m.paused,
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
                await asyncio.wait_for(self.http.stop_event.wait(), delay)

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
        flags = {}
        for name in ("default", "case_insensitive_slugs"):
            flags[name] = body.get(name, False)
            if not isinstance(flags[name], bool):
                raise InvalidField(f"{name} must be true or false", name)
        for name in ("root_url", "fallback_url"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise InvalidField(f"{name} must be a URL string or null", name)
        domain = await self._write(
            _add_domain,
            host,
            flags["default"],
            body.get("root_url"),
            body.get("fallback_url"),
            flags["case_insensitive_slugs"],
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
            raise InvalidField(
                "nothing to change: send default, root_url, fallback_url or case_insensitive_slugs"
            )
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
        body = call.json_object(frozenset({"name", "scopes"}))
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidField("name is required: what the token is for", "name")
        scopes = catalog.validate_scopes(body.get("scopes", ["admin"]))
        record, secret = await self.runtime.writer.run(catalog.create_token, name, scopes)
        await self.tokens.refresh()
        return json_response(201, {"token": self.token_out(record), "secret": secret})

    async def revoke_token(self, call: Call) -> Response:
        record = await self.runtime.writer.run(catalog.revoke_token, call.path_id("token"))
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
        workers = self.runtime.edges.workers()
        sync_errors = [w["sync_error"] for w in workers if w.get("sync_error")]
        degraded = _degraded(pipeline, self.config.max_queued_clicks)
        if degraded:
            pipeline["degraded"] = degraded
        # the link store down: redirects go on from this node's copy, catalog writes fail
        store = self.runtime.link_store.health() if self.runtime.link_store else None
        store_down = store is not None and not store["ok"]
        body = {
            "status": "unavailable" if not ok else "degraded" if degraded or store_down else "ok",
            "db": {"ok": db_error is None, "path": self.config.db_path, "error": db_error},
            "pipeline": {"ok": pipeline_error is None, **pipeline},
            "geoip": {
                "enabled": geo.get("enabled"),
                "database_type": geo.get("database_type"),
                "build_date": geo.get("build_date"),
                "error": geo.get("error"),
            },
            "sync": {"ok": not sync_errors, "error": sync_errors[0] if sync_errors else None},
            "link_store": store,
            "bot_list": bots.list_info(),
            "workers": {
                "configured": self.runtime.workers_expected,
                "connected": len(self.runtime.edges.sessions),
            },
            "links_loaded": self.runtime.edges.totals()["links_loaded"],
            "uptime_s": round(time.time() - self.runtime.started_at, 1),
        }
        response = json_response(200 if ok else 503, body)
        self._health = (now, response)
        return response

    async def metrics(self, call: Call) -> Response:
        self._take_flush_durations()
        text = metrics.render(self.runtime, self.http, self.flush_histogram)
        return Response(200, text.encode(), metrics.PROMETHEUS_TYPE)


# --- writer-thread functions (catalog calls composed; they run on the writer) -------------


def as_caller(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run on the writer as the request's token (edge/changelog.py records it)."""
    digest = _caller.get()

    def run(conn: sqlite3.Connection, *args: Any) -> Any:
        with changelog.acting_as(digest):
            return fn(conn, *args)

    return run


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
    with Transaction(conn) as tx:
        for i, args in enumerate(prepared):
            if args is None:
                continue
            fields, domain, slug = args
            try:  # each create is a savepoint: a refused one leaves the others standing
                created.append(catalog.create_link(conn, fields, domain=domain, slug=slug))
            except LinkedgeError as exc:
                errors.append(_error_item(i, exc))
        complete = not errors and None not in prepared
        if not complete:
            tx.discard()  # every item's error is reported; nothing is created
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


def _checkpoints(
    conn: sqlite3.Connection, reads: Any, link: dict[str, Any], now: int
) -> dict[str, Any]:
    result: dict[str, Any] = reads.launch_checkpoints(
        conn, link["id"], *catalog.link_launch(conn, link), now
    )
    return result


def _purge_link(conn: sqlite3.Connection, ref: LinkRef) -> None:
    catalog.purge_link(conn, _resolve(conn, ref))


def _add_domain(
    conn: sqlite3.Connection,
    host: str,
    default: bool,
    root_url: str | None,
    fallback_url: str | None,
    case_insensitive_slugs: bool,
) -> dict[str, Any]:
    return catalog.add_domain(
        conn,
        host,
        default=default,
        root_url=root_url,
        fallback_url=fallback_url,
        case_insensitive_slugs=case_insensitive_slugs,
    )


# /healthz says "degraded" (still 200: redirects are served and nothing is lost yet) when
# clicks wait this long to be written, or the queue is this full.
DEGRADED_LAG_S: Final = 10.0
DEGRADED_QUEUE_SHARE: Final = 0.5


def _degraded(pipeline: dict[str, Any], max_queued: int) -> str | None:
    """Why the pipeline is behind, or None."""
    if not pipeline.get("recording"):
        return None
    lag = float(pipeline.get("flush_lag_s") or 0.0)
    if lag >= DEGRADED_LAG_S:
        return f"clicks wait {lag:.0f} s to be written (over {DEGRADED_LAG_S:.0f} s)"
    if pipeline.get("reading_paused") or pipeline.get("collector_queue", 0) >= (
        max_queued * DEGRADED_QUEUE_SHARE
    ):
        return f"the collector's queue is over {DEGRADED_QUEUE_SHARE:.0%} of its bound"
    return None


def _probe_write(conn: sqlite3.Connection) -> None:
    """Take SQLite's write lock and let it go: proves the file is writable, writes nothing."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")
