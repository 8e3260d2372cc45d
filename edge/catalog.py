"""The catalog: links, domains, UTM allow-lists and API tokens; their writes and reads.

Rules:
- Every write here is one `Transaction` (edge/db.py): standing alone it commits, inside
  a caller's Transaction it is a savepoint of it (bulk creates, the API's composed edits).
  No write function depends on its caller having opened a transaction.
- Every change to a link or domain bumps the global revision and stamps the row with it
  (`next_rev`), so running servers reload exactly the rows that changed
  (`changes_since`); a link's edit that changes its groups moves its rolled-up history in
  the same transaction (edge/rollups.py move_link_groups).
- Values are validated and normalised here, once, for every way in (API, CLI, imports):
  an error is an edge/errors.py class naming the field.
- Functions take a plain `sqlite3.Connection` and are synchronous: the CLI calls them on
  the file, a server runs them on its writer thread (edge/db.py Database).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from edge import changelog
from edge.db import Transaction, connect, current_rev, next_rev, now_ms
from edge.errors import Conflict, InvalidField, NotFound
from edge.rollups import link_group_keys, move_link_groups
from edge.rules import validate_rules, validate_variants
from edge.schema import migrate
from edge.urls import (
    generate_slug,
    normalize_destination,
    normalize_host,
    validate_slug,
    with_params,
)

REDIRECT_STATUSES: Final = (301, 302, 303, 307, 308)
MAX_LIMIT: Final = 10**12  # max_clicks
DEFAULT_CLICK_ID_PARAM: Final = "lc"
CLICK_ID_PARAM_RE: Final = re.compile(r"[A-Za-z0-9_]{1,32}")
DEFAULT_ATTRIBUTION_S: Final = 30 * 86400  # a conversion up to 30 days after its click
MIN_ATTRIBUTION_S: Final = 60
MAX_ATTRIBUTION_S: Final = 365 * 86400
UTM_FIELDS: Final = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
MAX_TEXT_FIELD: Final = 2000  # title, notes, campaign, UTM values
MAX_TAGS: Final = 50
SLUG_ATTEMPTS: Final = 20  # retries of a generated slug on collision before giving up
DEFAULT_DOMAIN: Final = "localhost"
# Times a link may hold (Unix ms): 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z, what
# ISO 8601 and Python's datetime can show. Outside them a stored link could not be shown.
MIN_TIME_MS: Final = 0
MAX_TIME_MS: Final = 253402300799999


def link_location(url: str, fields: Any) -> str:
    """The destination with the link's UTM tags set: they replace same-named parameters
    of the destination, since the operator set them on purpose for this placement."""
    utm = [(f, fields[f]) for f in UTM_FIELDS if fields[f]]
    return with_params(url, utm) if utm else url


def open_db(path: str) -> sqlite3.Connection:
    """Connect, migrate, and make sure a default domain exists."""
    conn = connect(path)
    migrate(conn)
    ensure_default_domain(conn)
    return conn


# --- domains -----------------------------------------------------------------------------


def ensure_default_domain(conn: sqlite3.Connection, host: str = DEFAULT_DOMAIN) -> None:
    if conn.execute("SELECT 1 FROM domains WHERE is_default = 1").fetchone():
        return
    with Transaction(conn):
        if conn.execute("SELECT 1 FROM domains WHERE is_default = 1").fetchone():
            return
        rev = next_rev(conn)
        existing = conn.execute("SELECT id FROM domains ORDER BY id LIMIT 1").fetchone()
        if existing:
            conn.execute(
                "UPDATE domains SET is_default = 1, rev = ? WHERE id = ?", (rev, existing[0])
            )
        else:
            conn.execute(
                "INSERT INTO domains (host, is_default, created_at, rev) VALUES (?, 1, ?, ?)",
                (host, now_ms(), rev),
            )


def domain_row(conn: sqlite3.Connection, host: str | None, field: str = "domain") -> sqlite3.Row:
    """The domain by host, or the default domain when host is None (`field` names the
    host in an error: `domain` of a link, `host` of a domain)."""
    if host is None:
        row = conn.execute("SELECT * FROM domains WHERE is_default = 1").fetchone()
        if row is None:
            raise NotFound("no default domain: add one with `linkedge domain add HOST`")
        return row  # type: ignore[no-any-return]
    name = normalize_host(host, field)
    row = conn.execute("SELECT * FROM domains WHERE host = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"unknown domain {host!r}: add it with `linkedge domain add`", field)
    return row  # type: ignore[no-any-return]


def domain_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "host": row["host"],
        "default": bool(row["is_default"]),
        "root_url": row["root_url"],
        "fallback_url": row["fallback_url"],
        "case_insensitive_slugs": bool(row["case_insensitive_slugs"]),
        "click_ids": bool(row["click_ids"]),
        "postback": row["postback_secret"] is not None,
        "created_at": row["created_at"],
    }


def list_domains(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [domain_dict(r) for r in conn.execute("SELECT * FROM domains ORDER BY host")]


def _optional_url(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    return normalize_destination(value, field)


def add_domain(
    conn: sqlite3.Connection,
    host: str,
    *,
    default: bool = False,
    root_url: str | None = None,
    fallback_url: str | None = None,
    case_insensitive_slugs: bool = False,
) -> dict[str, Any]:
    name = normalize_host(host, "host")
    root = _optional_url(root_url, "root_url")
    fallback = _optional_url(fallback_url, "fallback_url")
    with Transaction(conn):
        if conn.execute("SELECT 1 FROM domains WHERE host = ?", (name,)).fetchone():
            raise Conflict(f"domain {name!r} already exists", "host")
        rev = next_rev(conn)
        if default:
            conn.execute("UPDATE domains SET is_default = 0, rev = ? WHERE is_default = 1", (rev,))
        cur = conn.execute(
            "INSERT INTO domains (host, is_default, root_url, fallback_url, "
            "case_insensitive_slugs, created_at, rev) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, int(default), root, fallback, int(case_insensitive_slugs), now_ms(), rev),
        )
        row = conn.execute("SELECT * FROM domains WHERE id = ?", (cur.lastrowid,)).fetchone()
        changelog.record(conn, now_ms(), [("created", None, name)], domain_id=row["id"])
    return domain_dict(row)


def update_domain(conn: sqlite3.Connection, host: str, changes: dict[str, Any]) -> dict[str, Any]:
    allowed = {"default", "root_url", "fallback_url", "case_insensitive_slugs", "click_ids"}
    unknown = set(changes) - allowed
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidField(f"unknown domain field {field!r}", field)
    with Transaction(conn):
        row = domain_row(conn, host, "host")
        rev = next_rev(conn)
        sets: dict[str, Any] = {}
        if "root_url" in changes:
            sets["root_url"] = _optional_url(changes["root_url"], "root_url")
        if "fallback_url" in changes:
            sets["fallback_url"] = _optional_url(changes["fallback_url"], "fallback_url")
        if "default" in changes:
            if changes["default"] is not True:
                raise InvalidField(
                    "a domain stops being the default when another one becomes it", "default"
                )
            conn.execute("UPDATE domains SET is_default = 0, rev = ? WHERE is_default = 1", (rev,))
            sets["is_default"] = 1
        if "case_insensitive_slugs" in changes:
            on = changes["case_insensitive_slugs"]
            if not isinstance(on, bool):
                raise InvalidField(
                    "case_insensitive_slugs must be true or false", "case_insensitive_slugs"
                )
            if on:
                _refuse_case_clashes(conn, row)
            sets["case_insensitive_slugs"] = int(on)
        if "click_ids" in changes:
            if not isinstance(changes["click_ids"], bool):
                raise InvalidField("click_ids must be true or false", "click_ids")
            sets["click_ids"] = int(changes["click_ids"])
        sets["rev"] = rev
        assignments = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(f"UPDATE domains SET {assignments} WHERE id = ?", (*sets.values(), row["id"]))
        before = row
        row = conn.execute("SELECT * FROM domains WHERE id = ?", (row["id"],)).fetchone()
        changed = changelog.row_changes(before, row, sets)
        changelog.record(conn, now_ms(), changed, domain_id=row["id"])
    return domain_dict(row)


def _refuse_case_clashes(conn: sqlite3.Connection, domain: sqlite3.Row) -> None:
    """Slugs that differ only in letter case cannot share a case-insensitive domain."""
    clashes = conn.execute(
        "SELECT group_concat(slug, ' and ') FROM links WHERE domain_id = ? "
        "GROUP BY slug COLLATE NOCASE HAVING count(*) > 1 LIMIT 5",
        (domain["id"],),
    ).fetchall()
    if clashes:
        pairs = "; ".join(r[0] for r in clashes)
        raise Conflict(
            f"{domain['host']} has slugs that differ only in letter case ({pairs}): purge or "
            "re-create all but one of each before making its slugs case-insensitive",
            "case_insensitive_slugs",
        )


def changed_default(conn: sqlite3.Connection, new_default: str) -> list[tuple[str, int]]:
    """(host, live links) of every other domain: what a change of the default domain
    leaves where it is (links keep their domain; only hosts without a domain of their own,
    like 127.0.0.1, move to the new default)."""
    return [
        (str(r[0]), int(r[1]))
        for r in conn.execute(
            "SELECT d.host, count(l.id) FROM domains d LEFT JOIN links l ON l.domain_id = d.id "
            "AND l.archived_at IS NULL WHERE d.host != ? GROUP BY d.id ORDER BY d.host",
            (new_default,),
        )
    ]


def remove_domain(conn: sqlite3.Connection, host: str) -> None:
    with Transaction(conn):
        row = domain_row(conn, host, "host")
        if row["is_default"]:
            raise Conflict(
                f"{row['host']} is the default domain: make another domain the default first",
                "host",
            )
        count = conn.execute(
            "SELECT count(*) FROM links WHERE domain_id = ?", (row["id"],)
        ).fetchone()[0]
        if count:
            raise Conflict(
                f"domain {row['host']} still has {count} link(s): remove or purge them first",
                "host",
            )
        next_rev(conn)
        conn.execute("DELETE FROM domains WHERE id = ?", (row["id"],))
        changelog.record(conn, now_ms(), [("removed", row["host"], None)], domain_id=row["id"])


# --- links ---------------------------------------------------------------------------------

LINK_COLUMNS: Final = (
    "url",
    "status",
    "title",
    "notes",
    "tags",
    "campaign",
    *UTM_FIELDS,
    "forward_query",
    "query_precedence",
    "cache_max_age_s",
    "disabled",
    "expires_at",
    "expired_url",
    "rules",
    "variants",
    "max_clicks",
    "overflow_url",
    "click_ids",
    "click_id_param",
    "attribution_window_s",
    "launched_at",
)
_LINK_SELECT: Final = (
    "SELECT links.*, domains.host AS domain FROM links JOIN domains ON domains.id = links.domain_id"
)


def _text(value: Any, field: str, *, lower: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(f"{field} must be a string", field)
    text = value.strip()
    if len(text) > MAX_TEXT_FIELD:
        raise InvalidField(f"{field} is longer than {MAX_TEXT_FIELD} characters", field)
    if any(ord(c) < 0x20 for c in text):
        raise InvalidField(f"{field} contains control characters", field)
    if lower:
        text = text.lower()
    return text or None


def _validate_link_value(name: str, value: Any, utm_lower: bool = True) -> Any:
    """One link field, validated and normalised to its stored form."""
    if name == "url":
        return normalize_destination(value, "url")
    if name == "expired_url":
        return _optional_url(value, "expired_url")
    if name == "status":
        if value is None:
            return 302
        if isinstance(value, bool) or not isinstance(value, int) or value not in REDIRECT_STATUSES:
            raise InvalidField("status must be one of 301, 302, 303, 307, 308", "status")
        return value
    if name in ("title", "notes", "campaign"):
        return _text(value, name)
    if name in UTM_FIELDS:
        return _text(value, name, lower=utm_lower)
    if name == "tags":
        if value is None:
            return "[]"
        if isinstance(value, str):
            value = [t for t in value.split(",")]
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise InvalidField("tags must be a list of strings", "tags")
        tags: list[str] = []
        for tag in value:
            text = _text(tag, "tags", lower=True)
            if text and text not in tags:
                tags.append(text)
        if len(tags) > MAX_TAGS:
            raise InvalidField(f"at most {MAX_TAGS} tags", "tags")
        return orjson.dumps(tags).decode()
    if name in ("forward_query", "disabled"):
        if value is None:
            return 1 if name == "forward_query" else 0
        if not isinstance(value, bool):
            raise InvalidField(f"{name} must be true or false", name)
        return int(value)
    if name == "query_precedence":
        if value is None:
            return "destination"
        if value not in ("destination", "request"):
            raise InvalidField("query_precedence must be 'destination' or 'request'", name)
        return value
    if name == "cache_max_age_s":
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 31536000:
            raise InvalidField("cache_max_age_s must be an integer from 0 to 31536000", name)
        return value
    if name in ("expires_at", "launched_at"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidField(f"{name} must be a time", name)
        check_time_ms(value, name)
        return value
    if name == "rules":
        rules = validate_rules(value)
        return None if rules is None else orjson.dumps(rules).decode()
    if name == "variants":
        variants = validate_variants(value)
        return None if variants is None else orjson.dumps(variants).decode()
    if name == "max_clicks":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
            raise InvalidField(f"max_clicks must be an integer from 1 to {MAX_LIMIT}", name)
        return value
    if name == "overflow_url":
        return _optional_url(value, "overflow_url")
    if name == "click_ids":
        if value is None:
            return 0
        if not isinstance(value, bool):
            raise InvalidField("click_ids must be true or false", name)
        return int(value)
    if name == "click_id_param":
        if value is None:
            return None
        if not isinstance(value, str) or not CLICK_ID_PARAM_RE.fullmatch(value):
            raise InvalidField(
                "click_id_param must be 1-32 letters, digits or '_' (the default is lc)", name
            )
        return value
    if name == "attribution_window_s":
        if value is None:
            return None
        low, high = MIN_ATTRIBUTION_S, MAX_ATTRIBUTION_S
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidField(
                f"attribution_window_s must be from {low} (a minute) to {high} (a year)", name
            )
        return value
    raise InvalidField(f"unknown link field {name!r}", name)


# SQLite's integers are signed 64-bit: a larger id (or cursor, or count) names nothing that
# can exist, and SQLite refuses to bind it.
MAX_ROW_ID: Final = 2**63 - 1
_MAX_ROW_ID_DIGITS: Final = len(str(MAX_ROW_ID))


def bounded_int(text: str) -> int | None:
    """ASCII digits as an int from 0 to MAX_ROW_ID, None for anything else (checked before
    int(), so a 5,000-digit number costs nothing and never raises)."""
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_ROW_ID_DIGITS:
        return None
    value = int(text)
    return value if value <= MAX_ROW_ID else None


def check_time_ms(value: int, field: str) -> int:
    """A time a link may hold (MIN_TIME_MS..MAX_TIME_MS), else a 400 naming the field."""
    if not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise InvalidField(
            f"{field} is out of range: give a time from 1970-01-01T00:00:00Z to "
            "9999-12-31T23:59:59Z",
            field,
        )
    return value


def link_state(link: dict[str, Any], now: int) -> str:
    """What the edge does with a link at `now` (Unix ms): archived, disabled, expired (410
    or its expired_url) or active. One definition for every listing."""
    if link["archived_at"] is not None:
        return "archived"
    if link["disabled"]:
        return "disabled"
    if link["expires_at"] is not None and now >= link["expires_at"]:
        return "expired"
    return "active"


def link_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "domain": row["domain"],
        "slug": row["slug"],
        "url": row["url"],
        "status": row["status"],
        "title": row["title"],
        "notes": row["notes"],
        "tags": orjson.loads(row["tags"]),
        "campaign": row["campaign"],
        **{f: row[f] for f in UTM_FIELDS},
        "forward_query": bool(row["forward_query"]),
        "query_precedence": row["query_precedence"],
        "cache_max_age_s": row["cache_max_age_s"],
        "disabled": bool(row["disabled"]),
        "expires_at": row["expires_at"],
        "expired_url": row["expired_url"],
        "rules": orjson.loads(row["rules"]) if row["rules"] else [],
        "variants": orjson.loads(row["variants"]) if row["variants"] else [],
        "max_clicks": row["max_clicks"],
        "overflow_url": row["overflow_url"],
        "click_ids": bool(row["click_ids"]),
        "click_id_param": row["click_id_param"] or DEFAULT_CLICK_ID_PARAM,
        "attribution_window_s": row["attribution_window_s"] or DEFAULT_ATTRIBUTION_S,
        "launched_at": row["launched_at"],
        "archived_at": row["archived_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    return out


def create_link(
    conn: sqlite3.Connection,
    fields: dict[str, Any],
    *,
    domain: str | None = None,
    slug: str | None = None,
    slug_length: int = 7,
    created_at: int | None = None,
) -> dict[str, Any]:
    """Insert one link (a savepoint of the caller's transaction when one is open).
    `created_at` (Unix ms) keeps the creation time of a link imported from elsewhere."""
    lower = utm_case(conn) == "lower"
    values = {name: _validate_link_value(name, fields.get(name), lower) for name in LINK_COLUMNS}
    check_utm_allowed(conn, values)
    if slug is not None:
        slug = validate_slug(slug)
    with Transaction(conn):
        row = _insert_link(conn, values, domain, slug, slug_length, created_at)
        changelog.record(
            conn, row["updated_at"], [("created", None, row["url"])], link_id=row["id"]
        )
    return link_dict(row)


def _insert_link(
    conn: sqlite3.Connection,
    values: dict[str, Any],
    domain: str | None,
    slug: str | None,
    slug_length: int,
    created_at: int | None = None,
) -> sqlite3.Row:
    drow = domain_row(conn, domain)
    if slug is None:
        for _ in range(SLUG_ATTEMPTS):
            candidate = generate_slug(slug_length)
            if _slug_holder(conn, drow, candidate) is None:
                slug = candidate
                break
        else:
            raise Conflict("could not generate a free slug; try a longer length", "slug")
    else:
        holder = _slug_holder(conn, drow, slug)
        if holder is not None:
            raise _slug_taken(drow, slug, holder)
    rev = next_rev(conn)
    ts = now_ms()
    columns = ", ".join(LINK_COLUMNS)
    marks = ", ".join("?" for _ in LINK_COLUMNS)
    cur = conn.execute(
        # The id is past every purged one too: a purged link's clicks and rollups stay in
        # place, and a new link must not inherit them (SQLite would reuse max(id) + 1).
        f"INSERT INTO links (id, domain_id, slug, {columns}, location, created_at, updated_at, "
        f"rev) VALUES ({_NEXT_LINK_ID}, ?, ?, {marks}, ?, ?, ?, ?)",
        (
            drow["id"],
            slug,
            *values.values(),
            link_location(values["url"], values),
            ts if created_at is None else check_time_ms(created_at, "created_at"),
            ts,
            rev,
        ),
    )
    return conn.execute(f"{_LINK_SELECT} WHERE links.id = ?", (cur.lastrowid,)).fetchone()  # type: ignore[no-any-return]


def _slug_holder(conn: sqlite3.Connection, drow: sqlite3.Row, slug: str) -> sqlite3.Row | None:
    """The link holding this slug on the domain (archived ones keep theirs): the exact
    slug, or on a case-insensitive domain one differing only in letter case."""
    row = conn.execute(
        "SELECT id, slug, archived_at FROM links WHERE domain_id = ? AND slug = ?",
        (drow["id"], slug),
    ).fetchone()
    if row is None and drow["case_insensitive_slugs"]:
        row = conn.execute(
            "SELECT id, slug, archived_at FROM links WHERE domain_id = ? "
            "AND slug = ? COLLATE NOCASE LIMIT 1",
            (drow["id"], slug),
        ).fetchone()
    return row  # type: ignore[no-any-return]


def _slug_taken(drow: sqlite3.Row, slug: str, holder: sqlite3.Row) -> Conflict:
    host, other, link_id = drow["host"], holder["slug"], holder["id"]
    archived = holder["archived_at"] is not None
    who = f"an archived link (id {link_id})" if archived else f"link {link_id}"
    if other == slug:
        what = f"slug {slug!r} is already taken on {host} by {who}"
    else:
        what = (
            f"slug {slug!r} is taken on {host}: its slugs are case-insensitive and {who} "
            f"has {other!r}"
        )
    if archived:
        what += (
            f": restore it (`linkedge link enable {other} --domain {host}`, or PATCH "
            '{"archived": false}), or free the slug for good, its clicks staying in the '
            f"stats (`linkedge link rm {other} --domain {host} --purge`, or DELETE "
            f"/api/links/{link_id}?purge=true)"
        )
    return Conflict(what, "slug")


_NEXT_LINK_ID: Final = (
    "(SELECT max(coalesce((SELECT max(id) FROM links), 0), "
    "coalesce((SELECT max(id) FROM purged_links), 0)) + 1)"
)


def get_link(conn: sqlite3.Connection, link_id: int) -> dict[str, Any]:
    row = conn.execute(f"{_LINK_SELECT} WHERE links.id = ?", (link_id,)).fetchone()
    if row is None:
        raise NotFound(f"no link with id {link_id}")
    return link_dict(row)


def find_link(conn: sqlite3.Connection, slug: str, domain: str | None = None) -> dict[str, Any]:
    """A link by slug (on a case-insensitive domain, in any letter case)."""
    drow = domain_row(conn, domain)
    row = conn.execute(
        f"{_LINK_SELECT} WHERE links.domain_id = ? AND links.slug = ?", (drow["id"], slug)
    ).fetchone()
    if row is None and drow["case_insensitive_slugs"]:
        row = conn.execute(
            f"{_LINK_SELECT} WHERE links.domain_id = ? AND links.slug = ? COLLATE NOCASE",
            (drow["id"], slug),
        ).fetchone()
    if row is None:
        hint = ""
        if domain is None:  # on the default domain: say where a link of that slug is
            other = conn.execute(
                "SELECT d.host FROM links l JOIN domains d ON d.id = l.domain_id "
                "WHERE l.slug = ? ORDER BY d.host LIMIT 1",
                (slug,),
            ).fetchone()
            if other is not None:
                hint = f" (the default domain; {other[0]} has one: give --domain {other[0]})"
        raise NotFound(f"no link {slug!r} on {drow['host']}{hint}", "slug")
    return link_dict(row)


def update_link(conn: sqlite3.Connection, link_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    lower = utm_case(conn) == "lower"
    sets = {name: _validate_link_value(name, value, lower) for name, value in changes.items()}
    check_utm_allowed(conn, sets)
    if "url" in sets and sets["url"] is None:
        raise InvalidField("url cannot be empty", "url")
    with Transaction(conn):
        row = conn.execute("SELECT * FROM links WHERE id = ?", (link_id,)).fetchone()
        if row is None:
            raise NotFound(f"no link with id {link_id}")
        before = row
        if row["archived_at"] is not None:
            raise Conflict(
                f"link {link_id} is archived: restore it first (`linkedge link enable SLUG`, "
                'or send "archived": false, in this PATCH or before)'
            )
        groups_before = link_group_keys(conn, link_id)
        sets["rev"] = next_rev(conn)
        sets["updated_at"] = now_ms()
        assignments = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(f"UPDATE links SET {assignments} WHERE id = ?", (*sets.values(), link_id))
        move_link_groups(conn, link_id, groups_before, link_group_keys(conn, link_id))
        row = conn.execute("SELECT * FROM links WHERE id = ?", (link_id,)).fetchone()
        conn.execute(
            "UPDATE links SET location = ? WHERE id = ?", (link_location(row["url"], row), link_id)
        )
        changed = changelog.row_changes(before, row, sets)
        changelog.record(conn, sets["updated_at"], changed, link_id=link_id)
    return get_link(conn, link_id)


def archive_link(conn: sqlite3.Connection, link_id: int, archived: bool = True) -> dict[str, Any]:
    """Archive (stop serving, keep history, keep the slug taken) or restore a link."""
    with Transaction(conn):
        row = conn.execute("SELECT archived_at FROM links WHERE id = ?", (link_id,)).fetchone()
        if row is None:
            raise NotFound(f"no link with id {link_id}")
        conn.execute(
            "UPDATE links SET archived_at = ?, updated_at = ?, rev = ? WHERE id = ?",
            (now_ms() if archived else None, now_ms(), next_rev(conn), link_id),
        )
        was = row["archived_at"] is not None
        changelog.record(conn, now_ms(), [("archived", was, archived)], link_id=link_id)
    return get_link(conn, link_id)


def purge_link(conn: sqlite3.Connection, link_id: int) -> None:
    """Delete a link row for good (its slug becomes free; its clicks stay, unattached, and
    leave the group totals)."""
    with Transaction(conn):
        if not conn.execute("SELECT 1 FROM links WHERE id = ?", (link_id,)).fetchone():
            raise NotFound(f"no link with id {link_id}")
        groups_before = link_group_keys(conn, link_id)
        rev = next_rev(conn)
        # the servers' link tables find the purged link by its domain and slug
        conn.execute(
            "INSERT OR REPLACE INTO purged_links (id, rev, domain_id, slug) "
            "SELECT id, ?, domain_id, slug FROM links WHERE id = ?",
            (rev, link_id),
        )
        conn.execute("DELETE FROM links WHERE id = ?", (link_id,))
        move_link_groups(conn, link_id, groups_before, ())
        changelog.record(conn, now_ms(), [("purged", False, True)], link_id=link_id)


def changes_since(
    conn: sqlite3.Connection, rev: int
) -> tuple[int, list[sqlite3.Row], list[tuple[int, Any, Any]], list[sqlite3.Row] | None]:
    """What changed after `rev`: (new rev, changed link rows, purged (id, domain id, slug),
    all domains or None)."""
    new_rev = current_rev(conn)
    if new_rev == rev:
        return rev, [], [], None
    links = conn.execute(f"{_LINK_SELECT} WHERE links.rev > ?", (rev,)).fetchall()
    purged = [
        (r[0], r[1], r[2])
        for r in conn.execute("SELECT id, domain_id, slug FROM purged_links WHERE rev > ?", (rev,))
    ]
    # Domains are a handful of rows, and a removed one leaves nothing with a newer rev:
    # reload them all whenever anything changed.
    domains = conn.execute("SELECT * FROM domains").fetchall()
    return new_rev, links, purged, domains


LOAD_CHUNK_ROWS: Final = 10000  # rows fetched at a time when loading every link
# What the edge's link table needs of a link (edge/links.py Link), nothing more: loading a
# million links is dominated by fetching rows, so the fewer columns the better.
SERVED_COLUMNS: Final = (
    "id",
    "domain_id",
    "slug",
    "status",
    "location",
    "cache_max_age_s",
    "forward_query",
    "query_precedence",
    "disabled",
    "expires_at",
    "expired_url",
    "archived_at",
    "rules",
    "variants",
    "max_clicks",
    "overflow_url",
    "click_ids",
    "click_id_param",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
)


def servable_link_chunks(conn: sqlite3.Connection) -> Iterator[list[sqlite3.Row]]:
    """Every link not archived, a chunk at a time (a million rows never sit in memory)."""
    cur = conn.execute(f"SELECT {', '.join(SERVED_COLUMNS)} FROM links WHERE archived_at IS NULL")
    while True:
        rows = cur.fetchmany(LOAD_CHUNK_ROWS)
        if not rows:
            return
        yield rows


def all_links(conn: sqlite3.Connection) -> Iterable[sqlite3.Row]:
    return conn.execute(_LINK_SELECT)


# --- UTM allow-lists -----------------------------------------------------------------------


def utm_allowed(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """The allow-list per UTM field (a field without entries accepts any value)."""
    out: dict[str, list[str]] = {}
    for row in conn.execute("SELECT field, value FROM utm_allow ORDER BY field, value"):
        out.setdefault(row[0], []).append(row[1])
    return out


def set_utm_allowed(conn: sqlite3.Connection, field: str, values: Sequence[str]) -> list[str]:
    """Replace the allow-list of one UTM field (`source` or `utm_source`); [] clears it."""
    name = field if field.startswith("utm_") else "utm_" + field
    if name not in UTM_FIELDS:
        raise InvalidField(
            f"unknown UTM field {field!r}: one of source, medium, campaign, content, term", "field"
        )
    lower = utm_case(conn) == "lower"
    cleaned = sorted({v.strip().lower() if lower else v.strip() for v in values if v.strip()})
    with Transaction(conn):
        conn.execute("DELETE FROM utm_allow WHERE field = ?", (name,))
        conn.executemany(
            "INSERT INTO utm_allow (field, value) VALUES (?, ?)", [(name, v) for v in cleaned]
        )
    return cleaned


UTM_CASES: Final = ("lower", "keep")


def utm_case(conn: sqlite3.Connection) -> str:
    """'lower' (the default: UTM values are lowercased so dashboards group them) or 'keep'."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'utm_case'").fetchone()
    return "lower" if row is None else str(row[0])


def set_utm_case(conn: sqlite3.Connection, mode: str) -> str:
    """Choose how new UTM values are stored; existing links keep their values."""
    if mode not in UTM_CASES:
        raise InvalidField("UTM case must be 'lower' or 'keep'", "case")
    with Transaction(conn):
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('utm_case', ?)", (mode,))
    return mode


def check_utm_allowed(conn: sqlite3.Connection, values: dict[str, Any]) -> None:
    for name in UTM_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        allowed = [
            r[0] for r in conn.execute("SELECT value FROM utm_allow WHERE field = ?", (name,))
        ]
        if allowed and value not in allowed:
            raise InvalidField(
                f"{name} {value!r} is not in the allowed list: {', '.join(allowed)}", name
            )


# --- API tokens ----------------------------------------------------------------------------


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# What a token may do (admin/auth.py says which scope each route needs): read (every
# GET), links (read, and create/change/delete links, imports), events (POST /api/events
# only), admin (everything: domains, UTM lists, tokens).
SCOPES: Final = ("read", "links", "events", "admin")


def validate_scopes(value: Any, field: str = "scopes") -> list[str]:
    """A list (or comma-separated text) of SCOPES -> the stored, ordered list."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise InvalidField(f"{field} must list one or more of {', '.join(SCOPES)}", field)
    chosen = {i.strip().lower() for i in items}
    unknown = sorted(chosen - set(SCOPES))
    if unknown:
        raise InvalidField(f"unknown scope {unknown[0]!r}: {field} are {', '.join(SCOPES)}", field)
    return [scope for scope in SCOPES if scope in chosen]


def create_token(
    conn: sqlite3.Connection, name: str, scopes: list[str] | None = None
) -> tuple[dict[str, Any], str]:
    """A new bearer token: returns (its record, the secret shown once; only its hash is kept).
    `scopes`: what it may do (validate_scopes), admin by default."""
    secret = "le_" + secrets.token_urlsafe(32)
    label = _text(name, "name") or "token"
    granted = ",".join(validate_scopes(scopes if scopes is not None else ["admin"]))
    with Transaction(conn):
        cur = conn.execute(
            "INSERT INTO api_tokens (name, token_hash, prefix, created_at, scopes) "
            "VALUES (?, ?, ?, ?, ?)",
            (label, token_hash(secret), secret[:7], now_ms(), granted),
        )
        row = conn.execute("SELECT * FROM api_tokens WHERE id = ?", (cur.lastrowid,)).fetchone()
    return token_dict(row), secret


def add_token(conn: sqlite3.Connection, name: str, secret: str) -> dict[str, Any] | None:
    """Store a token chosen by the operator (its hash only); None when it is already stored."""
    digest = token_hash(secret)
    with Transaction(conn):
        if conn.execute("SELECT 1 FROM api_tokens WHERE token_hash = ?", (digest,)).fetchone():
            return None
        cur = conn.execute(
            "INSERT INTO api_tokens (name, token_hash, prefix, created_at) VALUES (?, ?, ?, ?)",
            (_text(name, "name") or "token", digest, secret[:7], now_ms()),
        )
        row = conn.execute("SELECT * FROM api_tokens WHERE id = ?", (cur.lastrowid,)).fetchone()
    return token_dict(row)


def token_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "scopes": str(row["scopes"]).split(","),
        "created_at": row["created_at"],
        "last_used_at": row["last_used_at"],
        "revoked_at": row["revoked_at"],
    }


def list_tokens(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [token_dict(r) for r in conn.execute("SELECT * FROM api_tokens ORDER BY id")]


def revoke_token(conn: sqlite3.Connection, token_id: int) -> dict[str, Any]:
    with Transaction(conn):
        row = conn.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFound(f"no token with id {token_id}")
        conn.execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
            (now_ms(), token_id),
        )
        row = conn.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
    return token_dict(row)


def active_token_hashes(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
    return [
        (r[0], bytes(r[1]))
        for r in conn.execute("SELECT id, token_hash FROM api_tokens WHERE revoked_at IS NULL")
    ]


def active_token_scopes(conn: sqlite3.Connection) -> dict[int, frozenset[str]]:
    """What each active token may do (SCOPES)."""
    return {
        int(r[0]): frozenset(str(r[1]).split(","))
        for r in conn.execute("SELECT id, scopes FROM api_tokens WHERE revoked_at IS NULL")
    }


def active_token_id(conn: sqlite3.Connection, digest: bytes) -> int | None:
    """The id of the active token with this hash, or None."""
    row = conn.execute(
        "SELECT id FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL", (digest,)
    ).fetchone()
    return None if row is None else int(row[0])


def click_limits(conn: sqlite3.Connection) -> tuple[int, dict[int, int], dict[int, int]]:
    """(the catalog revision, the limit of every servable link with max_clicks, what each
    has spent), read in one snapshot (the partial index links_limited)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # deferred: a read, never the write lock
    try:
        rev = current_rev(conn)
        limits = {
            int(r[0]): int(r[1])
            for r in conn.execute(
                "SELECT id, max_clicks FROM links "
                "WHERE max_clicks IS NOT NULL AND archived_at IS NULL"
            )
        }
        spent = {
            int(r[0]): int(r[1]) for r in conn.execute("SELECT link_id, spent FROM link_spent")
        }
    finally:
        if own:
            conn.execute("COMMIT")
    return rev, limits, spent


# --- launches ------------------------------------------------------------------------------
# A link's launch (the send time of its newsletter or post) is its own launched_at, else
# its campaign's (campaign_launches). Checkpoints count from it; clicks in the seconds
# after it from mail scanners' networks are labelled (edge/clicks.py).


def launch_campaign(conn: sqlite3.Connection, name: Any, at_ms: int | None) -> dict[str, Any]:
    """Set (at_ms) or clear (None) a campaign's launch; the campaign must have links."""
    campaign = _text(name, "campaign")
    if campaign is None:
        raise InvalidField("campaign is required", "campaign")
    with Transaction(conn):
        n = int(
            conn.execute(
                "SELECT count(*) FROM links WHERE campaign = ? AND archived_at IS NULL",
                (campaign,),
            ).fetchone()[0]
        )
        if n == 0:
            raise NotFound(f"no link has campaign {campaign!r}: set it on the links first")
        was = conn.execute(
            "SELECT launched_at FROM campaign_launches WHERE campaign = ?", (campaign,)
        ).fetchone()
        if at_ms is None:
            conn.execute("DELETE FROM campaign_launches WHERE campaign = ?", (campaign,))
        else:
            conn.execute(
                "INSERT INTO campaign_launches (campaign, launched_at) VALUES (?, ?) "
                "ON CONFLICT (campaign) DO UPDATE SET launched_at = excluded.launched_at",
                (campaign, check_time_ms(at_ms, "at")),
            )
        next_rev(conn)  # the collector reads launches again (scanner labels)
        change = [("campaign_launched_at", was[0] if was else None, at_ms)]
        for (link_id,) in conn.execute(
            "SELECT id FROM links WHERE campaign = ? AND archived_at IS NULL", (campaign,)
        ).fetchall():  # on each link's history (its chart, the campaign's report)
            changelog.record(conn, now_ms(), change, link_id=link_id)
    return campaign_launch(conn, campaign, n)


def campaign_launch(
    conn: sqlite3.Connection, campaign: str, links: int | None = None
) -> dict[str, Any]:
    row = conn.execute(
        "SELECT launched_at FROM campaign_launches WHERE campaign = ?", (campaign,)
    ).fetchone()
    if links is None:
        links = int(
            conn.execute(
                "SELECT count(*) FROM links WHERE campaign = ? AND archived_at IS NULL",
                (campaign,),
            ).fetchone()[0]
        )
        if links == 0 and row is None:
            raise NotFound(f"no link has campaign {campaign!r}")
    return {"campaign": campaign, "launched_at": None if row is None else row[0], "links": links}


def link_launch(conn: sqlite3.Connection, link: dict[str, Any]) -> tuple[int | None, str | None]:
    """(the link's launch in ms, "link" or "campaign" as where it was set), or (None, None)."""
    if link.get("launched_at") is not None:
        return int(link["launched_at"]), "link"
    if link.get("campaign"):
        row = conn.execute(
            "SELECT launched_at FROM campaign_launches WHERE campaign = ?", (link["campaign"],)
        ).fetchone()
        if row is not None:
            return int(row[0]), "campaign"
    return None, None


def recent_launches(conn: sqlite3.Connection, since_ms: int) -> dict[int, int]:
    """link id -> launch (ms) of the servable links launched since `since_ms` (their own
    launch first, else their campaign's)."""
    out: dict[int, int] = {}
    campaigns = conn.execute(
        "SELECT campaign, launched_at FROM campaign_launches WHERE launched_at >= ?", (since_ms,)
    ).fetchall()
    for campaign, at in campaigns:
        for (link_id,) in conn.execute(
            "SELECT id FROM links WHERE campaign = ? AND launched_at IS NULL "
            "AND archived_at IS NULL",
            (campaign,),
        ):
            out[int(link_id)] = int(at)
    for link_id, at in conn.execute(
        "SELECT id, launched_at FROM links WHERE launched_at >= ? AND archived_at IS NULL",
        (since_ms,),
    ):
        out[int(link_id)] = int(at)
    return out


def collector_catalog(
    conn: sqlite3.Connection, launches_since_ms: int
) -> tuple[int, dict[int, int], dict[int, int], dict[int, int]]:
    """What the collector keeps of the catalog, in one snapshot: (revision, click limits,
    their spent counts, recent launches)."""
    conn.execute("BEGIN")  # deferred: a read, never the write lock
    try:
        rev, limits, spent = click_limits(conn)
        launches = recent_launches(conn, launches_since_ms)
    finally:
        conn.execute("COMMIT")
    return rev, limits, spent, launches


def touch_token(conn: sqlite3.Connection, token_id: int) -> None:
    conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now_ms(), token_id))


# --- reads ---------------------------------------------------------------------------------


@dataclass(slots=True)
class LinkFilter:
    """A selection of links, as SQL over `links l` (shared by listings and stats)."""

    link_id: int | None = None
    domain: str | None = None
    tag: str | None = None
    campaign: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    q: str | None = None
    created_from_ms: int | None = None
    created_to_ms: int | None = None
    archived: str = "any"  # "false": live links only, "true": archived only, "any"

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.link_id is not None:
            clauses.append("l.id = ?")
            params.append(self.link_id)
        if self.domain is not None:
            clauses.append("l.domain_id = (SELECT id FROM domains WHERE host = ?)")
            params.append(self.domain)
        if self.tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(l.tags) WHERE value = ?)")
            params.append(self.tag.strip().lower())
        if self.campaign is not None:
            clauses.append("l.campaign = ?")
            params.append(self.campaign.strip())
        for name in ("utm_source", "utm_medium", "utm_campaign"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"l.{name} = ?")
                params.append(value.strip().lower())
        if self.q:
            pattern = "%" + _like_escape(self.q.strip()) + "%"
            columns = ("l.slug", "l.url", "l.title", "l.notes", "l.campaign")
            clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in columns) + ")")
            params.extend([pattern] * 5)
        if self.created_from_ms is not None:
            clauses.append("l.created_at >= ?")
            params.append(self.created_from_ms)
        if self.created_to_ms is not None:
            clauses.append("l.created_at < ?")
            params.append(self.created_to_ms)
        if self.archived == "false":
            clauses.append("l.archived_at IS NULL")
        elif self.archived == "true":
            clauses.append("l.archived_at IS NOT NULL")
        return (" AND ".join(clauses) or "1"), params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_LINKS_SELECT: Final = (
    "SELECT l.*, d.host AS domain FROM links l JOIN domains d ON d.id = l.domain_id"
)


def list_links(
    conn: sqlite3.Connection, flt: LinkFilter, limit: int, before_id: int | None
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of links, newest first (by id: stable while links are added); and the id to
    continue before, or None on the last page."""
    where, params = flt.where()
    if before_id is not None:
        where += " AND l.id < ?"
        params.append(before_id)
    rows = conn.execute(
        f"{_LINKS_SELECT} WHERE {where} ORDER BY l.id DESC LIMIT ?", (*params, limit + 1)
    ).fetchall()
    links = [link_dict(r) for r in rows[:limit]]
    more = len(rows) > limit
    return links, (links[-1]["id"] if more and links else None)


def link_names(conn: sqlite3.Connection, link_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """(domain, slug) of each link id that still exists."""
    if not link_ids:
        return {}
    rows = conn.execute(
        "SELECT l.id, d.host, l.slug FROM links l JOIN domains d ON d.id = l.domain_id "
        "WHERE l.id IN (SELECT value FROM json_each(?))",
        (orjson.dumps(list(link_ids)).decode(),),
    ).fetchall()
    return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


def live_heads(
    conn: sqlite3.Connection, link_ids: Sequence[int]
) -> dict[int, tuple[str, str, int | None]]:
    """(domain, slug, launch ms or None) of each link id that still exists: /api/live."""
    if not link_ids:
        return {}
    rows = conn.execute(
        "SELECT l.id, d.host, l.slug, coalesce(l.launched_at, c.launched_at) FROM links l "
        "JOIN domains d ON d.id = l.domain_id "
        "LEFT JOIN campaign_launches c ON c.campaign = l.campaign "
        "WHERE l.id IN (SELECT value FROM json_each(?))",
        (orjson.dumps(list(link_ids)).decode(),),
    ).fetchall()
    return {int(r[0]): (str(r[1]), str(r[2]), r[3]) for r in rows}


def domain_hosts(conn: sqlite3.Connection) -> dict[int, str]:
    return {int(r[0]): str(r[1]) for r in conn.execute("SELECT id, host FROM domains")}


def get_domain(conn: sqlite3.Connection, host: str) -> dict[str, Any]:
    return domain_dict(domain_row(conn, host, "host"))
