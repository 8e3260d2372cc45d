"""Conversions on the admin side: the event routes, the conversion numbers in stats, A/B
tests and audience segments.

Rules of this module:
- Routes (added to the router by `add_routes`): POST /api/events (token scope `events`),
  GET /api/postback (a domain's postback secret, compared in constant time), POST|DELETE
  /api/domains/{host}/postback_secret, GET /api/links/{id}/abtest, GET
  /api/links/{id}/segments and GET /api/segments (a selection of links: a group).
- Events are written by edge/events.py on the writer connection. An event may arrive
  before its click is written (the destination page posts it the moment it loads, while
  the click waits in a worker's buffer or the collector's queue, ~0.1 s): a click id made
  in the last CLICK_WAIT_AGE_S that no click has yet is looked up again for up to
  CLICK_WAIT_S before the 404.
- Conversion numbers are counted with their click ("cohort"): the conversions of the clicks
  in the range, whenever they happened. Rates count humans only (bots' clicks, visitors
  and conversions are left out); revenue counts the trusted sources (api, postback) and
  shows the pixel's apart. SQLite aggregates (the `events_link` index per link, links
  first): Python sees one row per aggregate.
- Segments: fast clickers (human clicks within FAST_S of the launch: links.launched_at,
  else its campaign's launch, else the link's first human click), delayed converters
  (converted more than DELAYED_S after the click), repeat visitors (two or more human clicks
  on the link that UTC day: link_day_repeat), one-time visitors (the other human visitors).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from admin import abtest, stats, timerange
from admin.http import Call, Response, Router, json_response
from edge import events, rollups, visitors
from edge.catalog import LinkFilter, domain_hosts, domain_row
from edge.db import Transaction, now_ms
from edge.errors import InvalidField, LinkedgeError
from edge.rules import OVERFLOW, VARIANT_BASE, route_names

if TYPE_CHECKING:
    from admin.api import AdminServer

CLICK_WAIT_S: Final = 3.0  # an event for a click not written yet waits this long at most
CLICK_WAIT_AGE_S: Final = 60.0  # ... when its click id is this young
CLICK_WAIT_STEP_S: Final = 0.05
FAST_S: Final = 15 * 60
DELAYED_S: Final = 3600
# lag buckets: upper bounds (exclusive) in seconds, then "later"
LAG_BUCKETS: Final = (("lt_1m", 60), ("lt_15m", 900), ("lt_1h", 3600), ("lt_1d", 86400))
POSTBACK_QUERY: Final = (
    "domain",
    "secret",
    "click_id",
    "name",
    "value",
    "currency",
    "event_id",
    "occurred_at",
)
STATS_QUERY: Final = ("from", "to", "tz", "goal")
_EVENT_BODY: Final = {
    "type": "object",
    "properties": {
        "click_id": {"type": "string", "minLength": 22, "maxLength": 22},
        "name": {"type": "string"},
        "value": {"type": ["number", "string", "null"]},
        "currency": {"type": ["string", "null"]},
        "event_id": {"type": ["string", "null"]},
        "occurred_at": {"type": ["string", "integer", "null"]},
    },
    "required": ["click_id", "name"],
    "additionalProperties": False,
}
# handler name -> (summary, success status, request body schema, content type): what
# admin/openapi.py documents of these routes
OPERATIONS: Final[dict[str, tuple[str, int, Any, str]]] = {
    "post_event": ("Record a conversion of a click (idempotent on event_id)", 201, _EVENT_BODY,
                   "application/json"),
    "postback": ("Record a conversion from an affiliate postback (the domain's secret)", 201,
                 None, "application/json"),
    "create_postback_secret": ("Make a domain's postback secret (shown once)", 201, None,
                               "application/json"),
    "delete_postback_secret": ("Turn a domain's postbacks off", 204, None, "application/json"),
    "link_abtest": ("A/B test of a link's variants", 200, None, "application/json"),
    "link_segments": ("Audience segments of a link", 200, None, "application/json"),
    "group_segments": ("Audience segments of a selection of links", 200, None,
                       "application/json"),
}  # fmt: skip


# --- writing events ----------------------------------------------------------------------


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_postback(conn: sqlite3.Connection, host: str | None, secret: str | None) -> int:
    """The id of the domain whose postback secret this is, or raise (401 for a bad one)."""
    from admin.auth import Unauthorized

    if not host:
        raise InvalidField("domain is required: the short links' host", "domain")
    row = domain_row(conn, host, "domain")
    stored = row["postback_secret"]
    given = _secret_hash(secret or "")
    # compare_digest on equal-length hex: constant time whatever the secret
    if stored is None or not secret or not hmac.compare_digest(given, str(stored)):
        raise Unauthorized("wrong or missing postback secret for this domain")
    return int(row["id"])


def _record(
    conn: sqlite3.Connection,
    ev: events.EventInput,
    source: str,
    domain_id: int | None = None,
) -> tuple[bool, dict[str, Any]]:
    if domain_id is not None:
        row = conn.execute(
            "SELECT l.domain_id FROM clicks c CROSS JOIN links l ON l.id = c.link_id "
            "WHERE c.click_id = ?",
            (ev.click_id,),
        ).fetchone()
        if row is not None and int(row[0]) != domain_id:
            raise events.UnknownClick("no click on this domain has this click id", "click_id")
    return events.record(conn, ev, source, now_ms())


def _set_postback_secret(conn: sqlite3.Connection, host: str, secret: str | None) -> None:
    row = domain_row(conn, host, "host")
    with Transaction(conn):
        conn.execute(
            "UPDATE domains SET postback_secret = ? WHERE id = ?",
            (None if secret is None else _secret_hash(secret), row["id"]),
        )


def event_out(event: dict[str, Any]) -> dict[str, Any]:
    out = dict(event)
    for name in ("occurred_at", "received_at", "click_at"):
        out[name] = timerange.iso_ms(event[name])
    return out


class EventRoutes:
    """The handlers; `server` is the AdminServer (its writer, reader and live counters)."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server

    @property
    def counters(self) -> Any:
        return self.server.runtime.live.conversions

    async def _submit(
        self, body: dict[str, Any], source: str, domain_id: int | None = None
    ) -> Response:
        counters = self.counters
        try:
            ev = events.validate_event(body)
        except LinkedgeError:
            counters.reject("invalid")
            raise
        writer = self.server.runtime.writer
        deadline = time.monotonic() + CLICK_WAIT_S
        age_ms = time.time() * 1000 - events.click_id_time_ms(ev.click_id)
        young = -1000 <= age_ms < CLICK_WAIT_AGE_S * 1000  # (a forged future id: no wait)
        while True:
            try:
                created, event = await writer.run(_record, ev, source, domain_id)
                break
            except events.UnknownClick:
                if young and time.monotonic() < deadline:
                    await asyncio.sleep(CLICK_WAIT_STEP_S)
                    continue
                counters.reject("unknown_click")
                raise
            except events.OutsideWindow:
                counters.reject("outside_window")
                raise
            except LinkedgeError:
                counters.reject("invalid")
                raise
        if created:
            counters.add(source, [(event["link_id"], event["occurred_at"] // 1000, event["human"])])
        else:
            counters.duplicate(source)
        return json_response(
            201 if created else 200, {"event": event_out(event), "created": created}
        )

    async def post_event(self, call: Call) -> Response:
        """Record a conversion of a click (idempotent on event_id)."""
        body = call.json_object(events.EVENT_FIELDS)
        return await self._submit(body, "api")

    async def postback(self, call: Call) -> Response:
        """A conversion from an affiliate network's postback (GET, the domain's secret)."""
        q = call.query
        domain_id = await self.server.db.run(_check_postback, q.get("domain"), q.get("secret"))
        body: dict[str, Any] = {
            name: q[name]
            for name in ("click_id", "name", "value", "currency", "event_id", "occurred_at")
            if name in q
        }
        return await self._submit(body, "postback", domain_id)

    async def create_postback_secret(self, call: Call) -> Response:
        """A new postback secret for the domain (shown once; replaces the old one)."""
        host = call.params["host"]
        secret = "pb_" + secrets.token_urlsafe(24)
        await self.server.runtime.writer.run(_set_postback_secret, host, secret)
        return json_response(201, {"host": host, "secret": secret})

    async def delete_postback_secret(self, call: Call) -> Response:
        """Turn the domain's postbacks off."""
        await self.server.runtime.writer.run(_set_postback_secret, call.params["host"], None)
        return Response(204, b"")

    # --- reads -----------------------------------------------------------------------

    async def link_abtest(self, call: Call) -> Response:
        """A/B test of a link's variants: rates, intervals, the winner or why none."""
        link = await self.server._read_link(self.server._link_ref(call))
        rng = self.server._range(call)
        goal = parse_goal(call.q("goal"))
        result = await self.server.db.run(ab_test, link, rng, goal)
        return json_response(200, {"link": stats.link_head(link), **rng.describe(), **result})

    async def link_segments(self, call: Call) -> Response:
        """Fast clickers, delayed converters, repeat and one-time visitors of a link."""
        link = await self.server._read_link(self.server._link_ref(call))
        rng = self.server._range(call)
        flt = LinkFilter(link_id=link["id"])
        result = await self.server.db.run(segments, flt, rng, parse_goal(call.q("goal")))
        return json_response(200, {"link": stats.link_head(link), **rng.describe(), **result})

    async def group_segments(self, call: Call) -> Response:
        """The same for a selection of links (a campaign, a tag, ...)."""
        flt = self.server._filter(call, archived_default="any")
        rng = self.server._range(call)
        result = await self.server.db.run(segments, flt, rng, parse_goal(call.q("goal")))
        return json_response(200, {**rng.describe(), **result})


def add_routes(router: Router, server: AdminServer, filters: Sequence[str]) -> EventRoutes:
    h = EventRoutes(server)
    router.add("POST", "/api/events", h.post_event)
    router.add("GET", "/api/postback", h.postback, POSTBACK_QUERY)
    router.add("POST", "/api/domains/{host}/postback_secret", h.create_postback_secret)
    router.add("DELETE", "/api/domains/{host}/postback_secret", h.delete_postback_secret)
    for ref in ("/api/links/{id}", "/api/links/{domain}/{slug}"):
        router.add("GET", ref + "/abtest", h.link_abtest, STATS_QUERY)
        router.add("GET", ref + "/segments", h.link_segments, STATS_QUERY)
    router.add("GET", "/api/segments", h.group_segments, (*STATS_QUERY, *filters))
    return h


def parse_goal(text: str | None) -> str | None:
    if text is None:
        return None
    name = text.strip().lower()
    if not name or len(name) > events.MAX_NAME_LENGTH:
        raise InvalidField("goal must be an event name such as purchase", "goal")
    return name


def parse_route(link: dict[str, Any], text: str | None) -> int | None:
    """`?route=`: a route's name as stats show it (default, rule:2, variant:b, overflow) or
    its index -> the index (edge/rules.py)."""
    if text is None:
        return None
    names = route_names(link.get("rules"), link.get("variants"))
    for index, name in names.items():
        if text == name or text == str(index):
            return index
    raise InvalidField(
        f"route must be one of {', '.join(names[i] for i in sorted(names))}", "route"
    )


# --- conversion numbers ------------------------------------------------------------------


def _events_from(flt: LinkFilter, group_sql: str, tags: str) -> tuple[str, list[Any]]:
    where, params = flt.where()
    return (
        f"FROM links l{tags} CROSS JOIN events e ON e.link_id = l.id "
        f"AND e.click_ts >= ? AND e.click_ts < ? WHERE {where}",
        params,
    )


_VISITOR_SQL: Final = (
    "CASE WHEN e.visitor_id IS NOT NULL THEN e.day || '.' || hex(e.visitor_id) END"
)
_TRUSTED_SQL: Final = "e.source IN ('api', 'postback')"


def conversion_stats(
    conn: sqlite3.Connection,
    flt: LinkFilter,
    rng: timerange.TimeRange,
    clicks: dict[Any, tuple[int, int]],
    group_by: str | None = None,
    route: int | None = None,
    goal: str | None = None,
) -> dict[Any, dict[str, Any]]:
    """Per group key (None: the whole selection): conversions of the range's clicks, by
    name, by source, rates, revenue per currency, the lag distribution. `clicks`: per key
    (human clicks, human unique visitors) from the click stats, for the rates."""
    key_sql = "NULL" if group_by is None else stats.GROUP_KEY_SQL[group_by]
    tags = ", json_each(l.tags) t" if group_by == "tag" else ""
    source, params = _events_from(flt, key_sql, tags)
    span = [rng.from_s * 1000, rng.to_s * 1000]
    extra = ""
    extra_params: list[Any] = []
    if route is not None:
        extra += " AND e.route = ?"
        extra_params.append(route)
    if goal is not None:
        extra += " AND e.name = ?"
        extra_params.append(goal)
    args = [*span, *params]
    out: dict[Any, dict[str, Any]] = {}

    def entry(key: Any) -> dict[str, Any]:
        found = out.get(key)
        if found is None:
            found = out[key] = _empty()
        return found

    for key, name, n, n_clicks, n_visitors in conn.execute(
        f"SELECT {key_sql}, e.name, count(*), count(DISTINCT e.click_id), "
        f"count(DISTINCT {_VISITOR_SQL}) {source}{extra} AND e.human GROUP BY 1, 2",
        [*args, *extra_params],
    ):
        entry(key)["by_name"][name] = {
            "conversions": n,
            "_clicks": n_clicks,
            "_visitors": n_visitors,
        }
    for key, n, n_clicks, n_visitors, bots in conn.execute(
        f"SELECT {key_sql}, sum(e.human), count(DISTINCT CASE WHEN e.human THEN e.click_id END), "
        f"count(DISTINCT CASE WHEN e.human THEN {_VISITOR_SQL} END), sum(NOT e.human) "
        f"{source}{extra} GROUP BY 1",
        [*args, *extra_params],
    ):
        e = entry(key)
        e["conversions"] = int(n or 0)
        e["_clicks"] = int(n_clicks or 0)
        e["_visitors"] = int(n_visitors or 0)
        e["bot_conversions"] = int(bots or 0)
    for key, src, n in conn.execute(
        f"SELECT {key_sql}, e.source, count(*) {source}{extra} GROUP BY 1, 2",
        [*args, *extra_params],
    ):
        entry(key)["by_source"][src] = n
    for key, src, n in conn.execute(
        f"SELECT {key_sql}, e.click_source, count(*) {source}{extra} AND e.human GROUP BY 1, 2",
        [*args, *extra_params],
    ):
        entry(key)["by_click_source"][src or "direct"] = n
    for key, currency, trusted, micros in conn.execute(
        f"SELECT {key_sql}, e.currency, {_TRUSTED_SQL}, sum(e.value_micros) "
        f"{source}{extra} AND e.currency IS NOT NULL GROUP BY 1, 2, 3",
        [*args, *extra_params],
    ):
        target = entry(key)["revenue" if trusted else "untrusted_revenue"]
        target[currency] = round(micros / events.MICROS, 6)
    buckets = ", ".join(
        f"sum(e.occurred_at - e.click_ts < {limit * 1000})" for _n, limit in LAG_BUCKETS
    )
    for row in conn.execute(
        f"SELECT {key_sql}, count(*), {buckets} {source}{extra} AND e.human GROUP BY 1",
        [*args, *extra_params],
    ):
        key, n, *below = row
        lag = entry(key)["lag"]
        previous = 0
        for (name, _limit), count in zip(LAG_BUCKETS, below, strict=True):
            lag["buckets"][name] = int(count) - previous
            previous = int(count)
        lag["buckets"]["later"] = int(n) - previous
    for key, p50, p90 in conn.execute(
        "SELECT k, max(CASE WHEN rn = (n * 50 + 99) / 100 THEN lag END), "
        "max(CASE WHEN rn = (n * 90 + 99) / 100 THEN lag END) FROM ("
        f"SELECT {key_sql} AS k, e.occurred_at - e.click_ts AS lag, "
        f"row_number() OVER (PARTITION BY {key_sql} ORDER BY e.occurred_at - e.click_ts) AS rn, "
        f"count(*) OVER (PARTITION BY {key_sql}) AS n {source}{extra} AND e.human"
        ") GROUP BY 1",
        [*args, *extra_params],
    ):
        lag = entry(key)["lag"]
        lag["p50_s"] = None if p50 is None else round(p50 / 1000, 3)
        lag["p90_s"] = None if p90 is None else round(p90 / 1000, 3)
    if group_by == "domain":
        hosts = domain_hosts(conn)
        out = {hosts.get(int(k), k) if k is not None else k: v for k, v in out.items()}
    for key in set(out) | set(clicks):
        e = entry(key)
        humans, uniques = clicks.get(key, (0, 0))
        e["rate_per_click"] = _rate(e.pop("_clicks", 0), humans)
        e["rate_per_visitor"] = _rate(e.pop("_visitors", 0), uniques)
        for item in e["by_name"].values():
            item["rate_per_click"] = _rate(item.pop("_clicks"), humans)
            item["rate_per_visitor"] = _rate(item.pop("_visitors"), uniques)
    return out


def _empty() -> dict[str, Any]:
    return {
        "conversions": 0,
        "bot_conversions": 0,
        "by_name": {},
        "by_source": {},
        "by_click_source": {},
        "revenue": {},
        "untrusted_revenue": {},
        "lag": {
            "p50_s": None,
            "p90_s": None,
            "buckets": {**{name: 0 for name, _s in LAG_BUCKETS}, "later": 0},
        },
    }


def _rate(part: int, whole: int) -> float | None:
    return None if whole <= 0 else round(part / whole, 6)


def for_selection(
    conn: sqlite3.Connection,
    flt: LinkFilter,
    rng: timerange.TimeRange,
    totals: dict[str, Any],
    route: int | None = None,
    goal: str | None = None,
) -> dict[str, Any]:
    """The `conversions` block of a link's or a selection's stats."""
    clicks = {None: (int(totals["humans"]), int(totals["human_uniques"]))}
    result = conversion_stats(conn, flt, rng, clicks, None, route, goal)
    return result.get(None) or _empty()


def route_breakdown(
    conn: sqlite3.Connection, link: dict[str, Any], rng: timerange.TimeRange
) -> list[dict[str, Any]] | None:
    """A routed link's stats per route (default, each rule and variant, the overflow):
    clicks, humans, human uniques, conversions, rates, revenue; None for a plain link."""
    rules, variants = link.get("rules") or [], link.get("variants") or []
    if not rules and not variants and not link.get("max_clicks"):
        return None
    names = route_names(rules, variants)
    if not link.get("max_clicks"):
        names.pop(OVERFLOW, None)
    flt = LinkFilter(link_id=link["id"])
    totals = stats.route_totals(conn, flt, rng, sorted(names))
    out = []
    for route in sorted(names):
        t = totals[route]
        conv = for_selection(conn, flt, rng, t, route)
        out.append(
            {
                "route": names[route],
                "clicks": t["clicks"],
                "humans": t["humans"],
                "human_uniques": t["human_uniques"],
                "conversions": conv["conversions"],
                "rate_per_click": conv["rate_per_click"],
                "rate_per_visitor": conv["rate_per_visitor"],
                "revenue": conv["revenue"],
            }
        )
    return out


def for_groups(
    conn: sqlite3.Connection,
    flt: LinkFilter,
    rng: timerange.TimeRange,
    group_by: str,
    groups: list[dict[str, Any]],
) -> None:
    """Add a `conversions` block to each group of a group-by answer."""
    clicks = {g["key"]: (int(g["humans"]), int(g["human_uniques"])) for g in groups}
    result = conversion_stats(conn, flt, rng, clicks, group_by)
    for g in groups:
        g["conversions"] = result.get(g["key"]) or _empty()
        if g["conversions"].get("rate_per_click") is None and g["humans"]:
            g["conversions"]["rate_per_click"] = 0.0
            g["conversions"]["rate_per_visitor"] = _rate(0, int(g["human_uniques"]))


# --- A/B tests -----------------------------------------------------------------------------


def ab_test(
    conn: sqlite3.Connection,
    link: dict[str, Any],
    rng: timerange.TimeRange,
    goal: str | None,
) -> dict[str, Any]:
    variants = link.get("variants") or []
    if not variants:
        raise InvalidField("this link has no variants: set variants to run an A/B test", "variants")
    flt = LinkFilter(link_id=link["id"])
    routes = [VARIANT_BASE + i for i in range(len(variants))]
    totals = stats.route_totals(conn, flt, rng, routes)
    arms = []
    out = []
    for i, variant in enumerate(variants):
        route = VARIANT_BASE + i
        t = totals[route]
        clicks = {None: (t["humans"], t["human_uniques"])}
        conv = conversion_stats(conn, flt, rng, clicks, None, route, goal).get(None) or _empty()
        converted = _converted_visitors(conn, link["id"], rng, route, goal)
        visitors_n = t["human_uniques"]
        converted = min(converted, visitors_n)
        interval = abtest.wilson(converted, visitors_n)
        arms.append(abtest.Arm(variant["name"], visitors_n, converted))
        out.append(
            {
                "name": variant["name"],
                "url": variant["url"],
                "weight": variant["weight"],
                "route": f"variant:{variant['name']}",
                "clicks": t["clicks"],
                "humans": t["humans"],
                "visitors": visitors_n,
                "converted_visitors": converted,
                "conversions": conv["conversions"],
                "rate": _rate(converted, visitors_n),
                "interval_95": None if interval is None else [round(v, 6) for v in interval],
                "revenue": conv["revenue"],
            }
        )
    verdict = abtest.decide(arms)
    return {"goal": goal, "variants": out, **verdict}


def _converted_visitors(
    conn: sqlite3.Connection,
    link_id: int,
    rng: timerange.TimeRange,
    route: int,
    goal: str | None,
) -> int:
    sql = (
        f"SELECT count(DISTINCT {_VISITOR_SQL}) FROM events e WHERE e.link_id = ? "
        "AND e.click_ts >= ? AND e.click_ts < ? AND e.route = ? AND e.human"
    )
    params: list[Any] = [link_id, rng.from_s * 1000, rng.to_s * 1000, route]
    if goal is not None:
        sql += " AND e.name = ?"
        params.append(goal)
    return int(conn.execute(sql, params).fetchone()[0] or 0)


# --- segments ------------------------------------------------------------------------------


def _launches(conn: sqlite3.Connection, link_ids: list[int]) -> dict[int, tuple[int, str]]:
    """Each link's launch (Unix ms) and where it comes from: the link's launched_at, its
    campaign's launch, else its first human click (none: not clicked yet)."""
    out: dict[int, tuple[int, str]] = {}
    rows = conn.execute(
        "SELECT l.id, l.launched_at, cl.launched_at FROM links l "
        "LEFT JOIN campaign_launches cl ON cl.campaign = l.campaign "
        "WHERE l.id IN (SELECT value FROM json_each(?))",
        (orjson.dumps(link_ids).decode(),),
    ).fetchall()
    for link_id, own, campaign in rows:
        if own is not None:
            out[link_id] = (int(own), "link")
        elif campaign is not None:
            out[link_id] = (int(campaign), "campaign")
        else:
            first = _first_human_click(conn, link_id)
            if first is not None:
                out[link_id] = (first, "first_human_click")
    return out


def _first_human_click(conn: sqlite3.Connection, link_id: int) -> int | None:
    row = conn.execute(
        "SELECT min(minute) FROM link_minute WHERE link_id = ? AND humans > 0", (link_id,)
    ).fetchone()
    if row is not None and row[0] is not None:
        minute = int(row[0])
        found = conn.execute(
            f"SELECT min(ts) FROM clicks WHERE ts >= ? AND ts < ? AND link_id = ? "
            f"AND {rollups.HUMAN_SQL.replace('c.', '')}",
            (minute * 60000, (minute + 1) * 60000, link_id),
        ).fetchone()[0]
        return minute * 60000 if found is None else int(found)
    watermark = rollups.rollup_watermark(conn)
    found = conn.execute(
        "SELECT min(ts) FROM clicks NOT INDEXED WHERE id > ? AND link_id = ? "
        f"AND {rollups.HUMAN_SQL.replace('c.', '')}",
        (watermark, link_id),
    ).fetchone()[0]
    return None if found is None else int(found)


def _segment(visitors_n: int, converted: int, clicks: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"visitors": visitors_n, "converted_visitors": converted}
    if clicks is not None:
        out["clicks"] = clicks
    out["conversion_rate"] = _rate(converted, visitors_n)
    return out


def segments(
    conn: sqlite3.Connection, flt: LinkFilter, rng: timerange.TimeRange, goal: str | None
) -> dict[str, Any]:
    """Fast clickers, delayed converters, repeat and one-time visitors of the selection's
    human clicks in the range, with the conversion rate of each (one read snapshot)."""
    with rollups.read_snapshot(conn) as watermark:
        return _segments(conn, flt, rng, goal, watermark)


def _segments(
    conn: sqlite3.Connection,
    flt: LinkFilter,
    rng: timerange.TimeRange,
    goal: str | None,
    watermark: int,
) -> dict[str, Any]:
    where, params = flt.where()
    link_ids = [int(r[0]) for r in conn.execute(f"SELECT l.id FROM links l WHERE {where}", params)]
    base = stats.selection_stats(conn, flt, rng, 1)
    human_visitors = int(base["totals"]["human_uniques"])
    lo, hi = rng.from_s * 1000, rng.to_s * 1000
    goal_sql, goal_params = ("", []) if goal is None else (" AND e.name = ?", [goal])
    ids_json = orjson.dumps(link_ids).decode()
    # converted human visitors of the range's clicks: (link, day, visitor int) -> lag ms
    converted: dict[tuple[int, int, int], int] = {}
    for link_id, day, vid, lag in conn.execute(
        "SELECT e.link_id, e.day, e.visitor_id, min(e.occurred_at - e.click_ts) "
        "FROM json_each(?) k CROSS JOIN events e ON e.link_id = k.value "
        "AND e.click_ts >= ? AND e.click_ts < ? "
        f"WHERE e.human AND e.visitor_id IS NOT NULL{goal_sql} GROUP BY 1, 2, 3",
        [ids_json, lo, hi, *goal_params],
    ):
        converted[(int(link_id), int(day), visitors.visitor_int(vid))] = int(lag)
    converted_visitors = {(d, v) for (_l, d, v) in converted}
    # delayed converters: every conversion of theirs came more than DELAYED_S after the click
    delayed = {(d, v) for (_l, d, v), lag in converted.items() if lag > DELAYED_S * 1000}
    # repeat visitors: link_day_repeat chunks of the range's days
    d_first, d_last = rng.days
    repeat: set[tuple[int, int]] = set()
    for _link_id, day, blob in conn.execute(
        "SELECT r.link_id, r.day, r.ids FROM json_each(?) k CROSS JOIN link_day_repeat r "
        "ON r.link_id = k.value AND r.day BETWEEN ? AND ?",
        (ids_json, d_first, d_last),
    ):
        for v in visitors.unpack_ids(blob):
            repeat.add((int(day), int(v)))
    # and those of the clicks written since the last roll-up (the roll-up's own rule)
    newest = conn.execute("SELECT coalesce(max(id), 0) FROM clicks").fetchone()[0]
    wanted = set(link_ids)
    tail = rollups.repeat_visitors(conn, (watermark + 1, newest))
    for (link_id, day), (repeaters, _h) in tail.items():
        if link_id in wanted and d_first <= day <= d_last:
            repeat.update((day, v) for v in repeaters)
    repeat_converted = len(repeat & converted_visitors)
    # fast clickers: human clicks within FAST_S of each link's launch (clicks by time)
    launches = _launches(conn, link_ids)
    by_launch: dict[int, list[int]] = {}
    for link_id, (at, _why) in launches.items():
        by_launch.setdefault(at, []).append(link_id)
    fast_clicks = 0
    fast: set[tuple[int, int]] = set()
    for at, ids in by_launch.items():
        start, end = max(at, lo), min(at + FAST_S * 1000, hi)
        if start >= end:
            continue
        for ts, vid, _link in conn.execute(
            "SELECT ts, visitor_id, link_id FROM clicks WHERE ts >= ? AND ts < ? "
            "AND link_id IN (SELECT value FROM json_each(?)) "
            f"AND {rollups.HUMAN_SQL.replace('c.', '')}",
            (start, end, orjson.dumps(ids).decode()),
        ):
            fast_clicks += 1
            if vid is not None:
                fast.add((int(ts) // 86_400_000, visitors.visitor_int(vid)))
    launch_info: dict[str, Any] | None = None
    if len(launches) == 1:
        ((at, why),) = launches.values()
        launch_info = {"at": timerange.iso_ms(at), "from": why}
    elif launches:
        first = min(launches.values())
        launch_info = {"at": timerange.iso_ms(first[0]), "from": first[1]}
        launch_info["links"] = len(launches)
    one_time_n = max(human_visitors - len(repeat), 0)
    one_time_converted = max(len(converted_visitors) - repeat_converted, 0)
    return {
        "goal": goal,
        "launch": launch_info,
        "human_visitors": human_visitors,
        "converted_visitors": len(converted_visitors),
        "segments": {
            "fast_clickers": _segment(len(fast), len(fast & converted_visitors), fast_clicks),
            "delayed_converters": {
                "visitors": len(delayed),
                "share_of_converters": _rate(len(delayed), len(converted_visitors)),
                "conversion_rate": _rate(len(delayed), human_visitors),
            },
            "repeat_visitors": _segment(len(repeat), repeat_converted),
            "one_time_visitors": _segment(one_time_n, one_time_converted),
        },
    }


# --- the command line ---------------------------------------------------------------------


def cmd_event_send(args: Any) -> int:
    """`linkedge event send`: record a conversion straight into the database (as the API
    would, source api), with or without a server running."""
    from admin.admin_cli import open_db, print_json

    body: dict[str, Any] = {"click_id": args.click_id, "name": args.name}
    for name in ("value", "currency", "event_id", "occurred_at"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    ev = events.validate_event(body)
    conn = open_db(args)
    created, event = events.record(conn, ev, "api", now_ms())
    print_json({**event_out(event), "created": created})
    return 0


def add_commands(sub: Any, cmd: Any, db_option: Any) -> None:
    """Register `event send` on admin/cli.py's subparsers."""
    event = cmd(
        sub,
        "event",
        lambda a: 0,
        "conversion events tied to clicks",
        "linkedge event send --click-id AZNq1pZ3n1Yw0QKxT9bS2g --name purchase --value 49.90 "
        "--currency EUR --event-id order-1042",
    )
    esub = event.add_subparsers(dest="event_command", metavar="ACTION", required=True)
    p = cmd(
        esub,
        "send",
        cmd_event_send,
        "record a conversion of a click (idempotent on --event-id)",
        "linkedge event send --click-id AZNq1pZ3n1Yw0QKxT9bS2g --name signup",
    )
    p.add_argument("--click-id", required=True, help="the lc=... the destination received")
    p.add_argument("--name", required=True, help="lead, signup, purchase, ...")
    p.add_argument("--value", help="the amount, e.g. 49.90 (needs --currency)")
    p.add_argument("--currency", help="ISO 4217, e.g. EUR")
    p.add_argument("--event-id", help="your order or transaction id: sent twice, counted once")
    p.add_argument("--occurred-at", help="Unix ms or ISO 8601 (default now)")
    db_option(p)


# --- live ----------------------------------------------------------------------------------


def live_conversions(counters: Any, link_id: int | None, now_s: int) -> dict[str, int]:
    """Conversions in the last minute and hour beside the clicks of /api/live."""
    minute, minute_h = counters.window(link_id, 60, now_s)
    hour, _h = counters.window(link_id, 3600, now_s)
    return {"last_60s": minute, "last_60s_humans": minute_h, "last_3600s": hour}
