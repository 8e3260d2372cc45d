"""Routes of the operator's insights: change history, baselines, campaign reports, and the
dashboard's files. Registered by admin/api.py with one call (`add_routes`).

Rules of this module:
- Handlers read on the API's read connection (`server.db.run`), off the event loop;
  the work behind them lives in admin/history.py, admin/baselines.py, admin/report.py.
- These routes go in front of the router's list: `/api/links/{id}/history` must win
  over `/api/links/{domain}/{slug}`, which would otherwise take "history" for a slug.
"""

from __future__ import annotations

from typing import Any, Final

from admin import baselines, dashboard, history, report
from admin.http import Call, Response, Router, decode_cursor, encode_cursor, json_response
from edge import catalog
from edge.db import now_ms
from edge.errors import InvalidField, NotFound

MARKDOWN_TYPE: Final = "text/markdown; charset=utf-8"
CSV_TYPE: Final = "text/csv; charset=utf-8"


def add_routes(router: Router, server: Any) -> None:
    mine = Router()
    for ref in ("/api/links/{id}", "/api/links/{domain}/{slug}"):
        mine.add("GET", ref + "/history", _bind(link_history, server), ("limit", "cursor"))
        mine.add("GET", ref + "/baseline", _bind(link_baseline, server))
    mine.add("GET", "/api/domains/{host}/history", _bind(domain_history, server))
    mine.add("GET", "/api/campaigns/{name}/baseline", _bind(campaign_baseline, server))
    mine.add("GET", "/api/sources/{name}/baseline", _bind(source_baseline, server))
    mine.add("GET", "/api/campaigns/{name}/report", _bind(campaign_report, server), ("format",))
    mine.add("GET", "/", dashboard.root)
    mine.add("GET", "/dashboard", dashboard.index)
    mine.add("GET", "/dashboard/{file}", dashboard.asset)
    router.routes[:0] = mine.routes


def _bind(fn: Any, server: Any) -> Any:
    async def handler(call: Call) -> Response:
        result: Response = await fn(server, call)
        return result

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


async def link_history(server: Any, call: Call) -> Response:
    """A link's changes, newest first: when, which field, from, to, who."""
    link = await server._read_link(server._link_ref(call))
    limit = call.q_int("limit", history.DEFAULT_LIMIT, 1, history.MAX_LIMIT)
    changes, next_id = await server.db.run(
        history.link_history, link["id"], limit, decode_cursor(call.q("cursor"), "h")
    )
    cursor = None
    if next_id is not None:
        cursor = encode_cursor("h", next_id)
    return json_response(200, {"link_id": link["id"], "changes": changes, "next_cursor": cursor})


async def domain_history(server: Any, call: Call) -> Response:
    """A domain's changes, newest first."""
    domain = await server.db.run(catalog.get_domain, call.params["host"])
    changes = await server.db.run(history.domain_history, domain["id"])
    return json_response(200, {"domain": domain["host"], "changes": changes})


async def link_baseline(server: Any, call: Call) -> Response:
    """The link's first hour against its campaign's and source's earlier links, and its
    last hour against its hour-of-week baseline."""
    link = await server._read_link(server._link_ref(call))
    return json_response(200, await server.db.run(baselines.link_baseline, link, now_ms()))


async def _group(server: Any, dim: str, key: str) -> Response:
    exists = await server.db.run(_group_exists, dim, key)
    if not exists:
        what = "campaign" if dim == "campaign" else "source"
        raise NotFound(f"no {what} {key!r}: no link has it", "name")
    return json_response(200, await server.db.run(baselines.group_baseline, dim, key, now_ms()))


def _group_exists(conn: Any, dim: str, key: str) -> bool:
    column = {"campaign": "campaign", "utm_source": "utm_source"}[dim]
    return (
        conn.execute(f"SELECT 1 FROM links WHERE {column} = ? LIMIT 1", (key,)).fetchone()
        is not None
    )


async def campaign_baseline(server: Any, call: Call) -> Response:
    """A campaign's first-hour curve and hour-of-week rate."""
    return await _group(server, "campaign", call.params["name"])


async def source_baseline(server: Any, call: Call) -> Response:
    """A UTM source's first-hour curve and hour-of-week rate."""
    return await _group(server, "utm_source", call.params["name"])


async def campaign_report(server: Any, call: Call) -> Response:
    """The campaign report as JSON, Markdown (`format=md`) or CSV (`format=csv`)."""
    fmt = call.q("format") or "json"
    if fmt not in report.FORMATS:
        raise InvalidField(f"format must be one of {', '.join(report.FORMATS)}", "format")
    name = call.params["name"]
    result = await server.db.run(report.campaign_report, name, now_ms())
    if fmt == "md":
        return Response(200, report.markdown(result).encode(), MARKDOWN_TYPE)
    if fmt == "csv":
        disposition = (("Content-Disposition", 'attachment; filename="report.csv"'),)
        return Response(200, report.csv_text(result).encode(), CSV_TYPE, disposition)
    return json_response(200, result)
