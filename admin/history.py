"""The change history as the API shows it: `GET /api/links/{id}/history` and the changes of
a campaign (for its report and the dashboard's chart markers).

Rules of this module:
- The history is written by edge/catalog.py through edge/changelog.py, in the transaction
  of each change; this module only reads it (on the API's read connection, off the loop).
- From/to are decoded from their stored text: JSON for tags, rules and variants, numbers
  and booleans as such; times (expires_at, launched_at) stay Unix ms and also come as ISO.
- `who` says how the change was made: {"via": "api", "token": {"id", "name"}} or
  {"via": "cli", "token": null}.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import orjson

from admin import timerange

DEFAULT_LIMIT: Final = 200
MAX_LIMIT: Final = 1000
_JSON_FIELDS: Final = frozenset({"tags", "rules", "variants"})
_BOOL_FIELDS: Final = frozenset(
    {"disabled", "archived", "purged", "forward_query", "click_ids", "case_insensitive_slugs"}
)
_INT_FIELDS: Final = frozenset(
    {
        "status",
        "cache_max_age_s",
        "max_clicks",
        "attribution_window_s",
        "expires_at",
        "launched_at",
        "campaign_launched_at",
        "is_default",
    }
)
_TIME_FIELDS: Final = frozenset({"expires_at", "launched_at", "campaign_launched_at"})
# What each field's change is called on a chart marker.
KINDS: Final = {
    "url": "destination",
    "rules": "rules",
    "variants": "variants",
    "max_clicks": "limits",
    "overflow_url": "limits",
    "disabled": "pause",
    "launched_at": "launch",
    "campaign_launched_at": "launch",
    "archived": "archive",
    "created": "created",
    "purged": "purged",
    "removed": "removed",
}


def decode(field: str, text: str | None) -> Any:
    if text is None:
        return None
    if field in _JSON_FIELDS:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    if field in _BOOL_FIELDS:
        return text in ("true", "1")
    if field in _INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            return text
    return text


def kind_of(field: str, before: Any, after: Any) -> str:
    """The marker kind: destination, rules, variants, weights, limits, pause, resume, ..."""
    if field == "disabled":
        return "pause" if after else "resume"
    if field == "variants" and isinstance(before, list) and isinstance(after, list):
        urls = [v.get("url") for v in before if isinstance(v, dict)]
        if urls == [v.get("url") for v in after if isinstance(v, dict)]:
            return "weights"
    return KINDS.get(field, field)


def entry(row: sqlite3.Row) -> dict[str, Any]:
    field = row["field"]
    before = decode(field, row["before"])
    after = decode(field, row["after"])
    out: dict[str, Any] = {
        "id": row["id"],
        "at": timerange.iso_ms(row["ts"]),
        "ts_ms": row["ts"],
        "link_id": row["link_id"],
        "domain_id": row["domain_id"],
        "field": field,
        "kind": kind_of(field, before, after),
        "from": before,
        "to": after,
        "who": {
            "via": row["via"],
            "token": None
            if row["token_id"] is None
            else {"id": row["token_id"], "name": row["token_name"]},
        },
    }
    if field in _TIME_FIELDS:
        out["from_iso"] = timerange.iso_ms(before) if isinstance(before, int) else None
        out["to_iso"] = timerange.iso_ms(after) if isinstance(after, int) else None
    return out


_SELECT: Final = (
    "SELECT h.*, t.name AS token_name FROM change_history h "
    "LEFT JOIN api_tokens t ON t.id = h.token_id "
)


def link_history(
    conn: sqlite3.Connection, link_id: int, limit: int = DEFAULT_LIMIT, before_id: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """The link's changes, newest first, and the id to continue from (or None)."""
    rows = conn.execute(
        _SELECT + "WHERE h.link_id = ? AND h.id < ? ORDER BY h.id DESC LIMIT ?",
        (link_id, before_id if before_id is not None else 2**63 - 1, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [entry(r) for r in rows], (rows[-1]["id"] if more else None)


def links_history(conn: sqlite3.Connection, link_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every change of these links (a campaign's), oldest first."""
    out: list[dict[str, Any]] = []
    ids = list(link_ids)
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        marks = ", ".join("?" * len(part))
        rows = conn.execute(
            _SELECT + f"WHERE h.link_id IN ({marks}) ORDER BY h.ts, h.id", part
        ).fetchall()
        out.extend(entry(r) for r in rows)
    out.sort(key=lambda e: (e["ts_ms"], e["id"]))
    return out


def domain_history(conn: sqlite3.Connection, domain_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        _SELECT + "WHERE h.domain_id = ? ORDER BY h.id DESC LIMIT ?", (domain_id, MAX_LIMIT)
    ).fetchall()
    return [entry(r) for r in rows]
