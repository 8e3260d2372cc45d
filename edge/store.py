"""SQLite: the schema, its migrations, and every statement that writes.

Rules:
- SQLite in WAL mode is the single source of truth. Every connection gets the same pragmas
  (`connect()`); a running server writes through one connection only.
- Migrations are numbered, named functions, each run in one transaction and recorded in
  `schema_migrations` (and PRAGMA user_version), so running them twice is a no-op.
- All SQL that writes lives here. Reads for stats live in admin/stats.py.
- Every change to a link or domain bumps a global revision (`meta.rev`) and stamps the row
  with it, so a running server reloads exactly the rows that changed (`changes_since`).
- Times are integer Unix milliseconds (UTC).

Functions here take a plain `sqlite3.Connection` and are synchronous: the CLI calls them
directly, the server runs them on its writer thread (see edge/clicks.py and admin/api.py).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import orjson

from edge.errors import Conflict, InvalidField, NotFound
from edge.urls import (
    generate_slug,
    normalize_destination,
    normalize_host,
    validate_slug,
    with_params,
)

BUSY_TIMEOUT_MS: Final = 5000
REDIRECT_STATUSES: Final = (301, 302, 307, 308)
UTM_FIELDS: Final = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
MAX_TEXT_FIELD: Final = 2000  # title, notes, campaign, UTM values
MAX_TAGS: Final = 50
SLUG_ATTEMPTS: Final = 20  # retries of a generated slug on collision before giving up
DEFAULT_DOMAIN: Final = "localhost"


def now_ms() -> int:
    return int(time.time() * 1000)


def configure(conn: sqlite3.Connection, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """linkedge's pragmas, the same on every connection."""
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect(path: str, *, timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection with linkedge's pragmas; autocommit mode, transactions explicit."""
    conn = sqlite3.connect(
        path, timeout=timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    configure(conn, timeout_ms)
    return conn


class Transaction:
    """`with Transaction(conn):` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


# --- migrations ------------------------------------------------------------------------------


def _script(conn: sqlite3.Connection, sql: str) -> None:
    """Run DDL statement by statement: executescript() would COMMIT the migration's
    transaction before it starts, breaking its all-or-nothing promise."""
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


def _m0001_create_links(conn: sqlite3.Connection) -> None:
    _script(
        conn,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        INSERT INTO meta (key, value) VALUES ('rev', 0);
        CREATE TABLE domains (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL UNIQUE,
            is_default INTEGER NOT NULL DEFAULT 0,
            root_url TEXT,
            fallback_url TEXT,
            created_at INTEGER NOT NULL,
            rev INTEGER NOT NULL
        );
        CREATE TABLE links (
            id INTEGER PRIMARY KEY,
            domain_id INTEGER NOT NULL REFERENCES domains(id),
            slug TEXT NOT NULL,
            url TEXT NOT NULL,
            status INTEGER NOT NULL DEFAULT 302,
            title TEXT,
            notes TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            campaign TEXT,
            utm_source TEXT,
            utm_medium TEXT,
            utm_campaign TEXT,
            utm_content TEXT,
            utm_term TEXT,
            forward_query INTEGER NOT NULL DEFAULT 1,
            query_precedence TEXT NOT NULL DEFAULT 'destination',
            cache_max_age_s INTEGER NOT NULL DEFAULT 0,
            disabled INTEGER NOT NULL DEFAULT 0,
            expires_at INTEGER,
            expired_url TEXT,
            archived_at INTEGER,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            rev INTEGER NOT NULL,
            UNIQUE (domain_id, slug)
        );
        CREATE INDEX links_rev ON links (rev);
        CREATE TABLE purged_links (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL);
        CREATE INDEX purged_links_rev ON purged_links (rev);
        """,
    )


def _m0002_create_clicks(conn: sqlite3.Connection) -> None:
    # `clicks` is append-only: its rowid (the click id) and `ts` both grow with time, so
    # inserts touch only the right edge of each b-tree. Per-link numbers come from rollups
    # written by the flusher, never from a (link_id, ts) index (see DESIGN.md).
    _script(
        conn,
        """
        CREATE TABLE clicks (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            link_id INTEGER NOT NULL,
            visitor_id BLOB,
            bot_kind TEXT,
            method TEXT NOT NULL,
            country TEXT,
            region TEXT,
            city TEXT,
            asn INTEGER,
            as_org TEXT,
            device_type TEXT,
            os TEXT,
            os_version TEXT,
            browser TEXT,
            browser_version TEXT,
            device_brand TEXT,
            device_model TEXT,
            referrer TEXT,
            referrer_host TEXT,
            source TEXT,
            language TEXT,
            dnt INTEGER NOT NULL DEFAULT 0,
            ip_truncated TEXT
        );
        CREATE INDEX clicks_ts ON clicks (ts);
        CREATE TABLE link_minute (
            link_id INTEGER NOT NULL,
            minute INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, minute)
        ) WITHOUT ROWID;
        CREATE TABLE link_hour_dim (
            link_id INTEGER NOT NULL,
            hour INTEGER NOT NULL,
            dim TEXT NOT NULL,
            value TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, hour, dim, value)
        ) WITHOUT ROWID;
        CREATE TABLE link_day_visitor (
            link_id INTEGER NOT NULL,
            day INTEGER NOT NULL,
            visitor_id BLOB NOT NULL,
            human INTEGER NOT NULL,
            PRIMARY KEY (link_id, day, visitor_id)
        ) WITHOUT ROWID;
        CREATE TABLE salts (day INTEGER PRIMARY KEY, salt BLOB NOT NULL);
        INSERT INTO meta (key, value) VALUES ('rollup_click_id', 0);
        """,
    )


def _m0003_create_tokens_and_utm_allow(conn: sqlite3.Connection) -> None:
    _script(
        conn,
        """
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash BLOB NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            last_used_at INTEGER,
            revoked_at INTEGER
        );
        CREATE TABLE utm_allow (
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (field, value)
        ) WITHOUT ROWID;
        """,
    )


def _m0004_add_link_location(conn: sqlite3.Connection) -> None:
    # The Location a visit without a query gets (destination + the link's UTM tags),
    # computed when the link is written so that loading a million links does no URL work.
    conn.execute("ALTER TABLE links ADD COLUMN location TEXT")
    rows = conn.execute(f"SELECT id, url, {', '.join(UTM_FIELDS)} FROM links").fetchall()
    conn.executemany(
        "UPDATE links SET location = ? WHERE id = ?",
        [(link_location(r["url"], r), r["id"]) for r in rows],
    )


def link_location(url: str, fields: Any) -> str:
    """The destination with the link's UTM tags set: they replace same-named parameters
    of the destination, since the operator set them on purpose for this placement."""
    utm = [(f, fields[f]) for f in UTM_FIELDS if fields[f]]
    return with_params(url, utm) if utm else url


Migration = tuple[int, str, Callable[[sqlite3.Connection], None]]
MIGRATIONS: Final[list[Migration]] = [
    (1, "0001_create_links", _m0001_create_links),
    (2, "0002_create_clicks", _m0002_create_clicks),
    (3, "0003_create_tokens_and_utm_allow", _m0003_create_tokens_and_utm_allow),
    (4, "0004_add_link_location", _m0004_add_link_location),
]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations this database lacks; return the names applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    applied: list[str] = []
    for number, name, apply in MIGRATIONS:
        with Transaction(conn):
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE id = ?", (number,)
            ).fetchone()
            if done:
                continue
            apply(conn)
            conn.execute(
                "INSERT INTO schema_migrations (id, name, applied_at) VALUES (?, ?, ?)",
                (number, name, now_ms()),
            )
            conn.execute(f"PRAGMA user_version = {number}")
        applied.append(name)
    return applied


def open_db(path: str) -> sqlite3.Connection:
    """Connect, migrate, and make sure a default domain exists."""
    conn = connect(path)
    migrate(conn)
    ensure_default_domain(conn)
    return conn


def _next_rev(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'rev' RETURNING value"
    ).fetchone()
    return int(row[0])


# --- domains -----------------------------------------------------------------------------


def ensure_default_domain(conn: sqlite3.Connection, host: str = DEFAULT_DOMAIN) -> None:
    if conn.execute("SELECT 1 FROM domains WHERE is_default = 1").fetchone():
        return
    with Transaction(conn):
        if conn.execute("SELECT 1 FROM domains WHERE is_default = 1").fetchone():
            return
        rev = _next_rev(conn)
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


def domain_row(conn: sqlite3.Connection, host: str | None) -> sqlite3.Row:
    """The domain by host, or the default domain when host is None."""
    if host is None:
        row = conn.execute("SELECT * FROM domains WHERE is_default = 1").fetchone()
        if row is None:
            raise NotFound("no default domain: add one with `linkedge domain add HOST`")
        return row  # type: ignore[no-any-return]
    row = conn.execute("SELECT * FROM domains WHERE host = ?", (normalize_host(host),)).fetchone()
    if row is None:
        raise NotFound(f"unknown domain {host!r}: add it with `linkedge domain add`", "domain")
    return row  # type: ignore[no-any-return]


def domain_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "host": row["host"],
        "default": bool(row["is_default"]),
        "root_url": row["root_url"],
        "fallback_url": row["fallback_url"],
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
) -> dict[str, Any]:
    name = normalize_host(host)
    root = _optional_url(root_url, "root_url")
    fallback = _optional_url(fallback_url, "fallback_url")
    with Transaction(conn):
        if conn.execute("SELECT 1 FROM domains WHERE host = ?", (name,)).fetchone():
            raise Conflict(f"domain {name!r} already exists", "host")
        rev = _next_rev(conn)
        if default:
            conn.execute("UPDATE domains SET is_default = 0, rev = ? WHERE is_default = 1", (rev,))
        cur = conn.execute(
            "INSERT INTO domains (host, is_default, root_url, fallback_url, created_at, rev) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, int(default), root, fallback, now_ms(), rev),
        )
        row = conn.execute("SELECT * FROM domains WHERE id = ?", (cur.lastrowid,)).fetchone()
    return domain_dict(row)


def update_domain(conn: sqlite3.Connection, host: str, changes: dict[str, Any]) -> dict[str, Any]:
    allowed = {"default", "root_url", "fallback_url"}
    unknown = set(changes) - allowed
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidField(f"unknown domain field {field!r}", field)
    with Transaction(conn):
        row = domain_row(conn, host)
        rev = _next_rev(conn)
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
        sets["rev"] = rev
        assignments = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(f"UPDATE domains SET {assignments} WHERE id = ?", (*sets.values(), row["id"]))
        row = conn.execute("SELECT * FROM domains WHERE id = ?", (row["id"],)).fetchone()
    return domain_dict(row)


def remove_domain(conn: sqlite3.Connection, host: str) -> None:
    with Transaction(conn):
        row = domain_row(conn, host)
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
        _next_rev(conn)
        conn.execute("DELETE FROM domains WHERE id = ?", (row["id"],))


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
            raise InvalidField("status must be one of 301, 302, 307, 308", "status")
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
    if name == "expires_at":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidField("expires_at must be a time", name)
        return value
    raise InvalidField(f"unknown link field {name!r}", name)


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
) -> dict[str, Any]:
    """Insert one link; the caller's transaction is used when one is open."""
    lower = utm_case(conn) == "lower"
    values = {name: _validate_link_value(name, fields.get(name), lower) for name in LINK_COLUMNS}
    check_utm_allowed(conn, values)
    if slug is not None:
        slug = validate_slug(slug)
    own_tx = not conn.in_transaction
    if own_tx:
        conn.execute("BEGIN IMMEDIATE")
    try:
        row = _insert_link(conn, values, domain, slug, slug_length)
        if own_tx:
            conn.execute("COMMIT")
    except BaseException:
        if own_tx:
            conn.execute("ROLLBACK")
        raise
    return link_dict(row)


def _insert_link(
    conn: sqlite3.Connection,
    values: dict[str, Any],
    domain: str | None,
    slug: str | None,
    slug_length: int,
) -> sqlite3.Row:
    drow = domain_row(conn, domain)
    if slug is None:
        for _ in range(SLUG_ATTEMPTS):
            candidate = generate_slug(slug_length)
            if not conn.execute(
                "SELECT 1 FROM links WHERE domain_id = ? AND slug = ?", (drow["id"], candidate)
            ).fetchone():
                slug = candidate
                break
        else:
            raise Conflict("could not generate a free slug; try a longer length", "slug")
    elif conn.execute(
        "SELECT archived_at FROM links WHERE domain_id = ? AND slug = ?", (drow["id"], slug)
    ).fetchone():
        raise Conflict(f"slug {slug!r} is already taken on {drow['host']}", "slug")
    rev = _next_rev(conn)
    ts = now_ms()
    columns = ", ".join(LINK_COLUMNS)
    marks = ", ".join("?" for _ in LINK_COLUMNS)
    cur = conn.execute(
        f"INSERT INTO links (domain_id, slug, {columns}, location, created_at, updated_at, rev) "
        f"VALUES (?, ?, {marks}, ?, ?, ?, ?)",
        (drow["id"], slug, *values.values(), link_location(values["url"], values), ts, ts, rev),
    )
    return conn.execute(f"{_LINK_SELECT} WHERE links.id = ?", (cur.lastrowid,)).fetchone()  # type: ignore[no-any-return]


def get_link(conn: sqlite3.Connection, link_id: int) -> dict[str, Any]:
    row = conn.execute(f"{_LINK_SELECT} WHERE links.id = ?", (link_id,)).fetchone()
    if row is None:
        raise NotFound(f"no link with id {link_id}")
    return link_dict(row)


def find_link(conn: sqlite3.Connection, slug: str, domain: str | None = None) -> dict[str, Any]:
    drow = domain_row(conn, domain)
    row = conn.execute(
        f"{_LINK_SELECT} WHERE links.domain_id = ? AND links.slug = ?", (drow["id"], slug)
    ).fetchone()
    if row is None:
        raise NotFound(f"no link {slug!r} on {drow['host']}", "slug")
    return link_dict(row)


def update_link(conn: sqlite3.Connection, link_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    lower = utm_case(conn) == "lower"
    sets = {name: _validate_link_value(name, value, lower) for name, value in changes.items()}
    check_utm_allowed(conn, sets)
    if "url" in sets and sets["url"] is None:
        raise InvalidField("url cannot be empty", "url")
    with Transaction(conn):
        row = conn.execute("SELECT archived_at FROM links WHERE id = ?", (link_id,)).fetchone()
        if row is None:
            raise NotFound(f"no link with id {link_id}")
        if row["archived_at"] is not None:
            raise Conflict(f"link {link_id} is archived; restore it first")
        sets["rev"] = _next_rev(conn)
        sets["updated_at"] = now_ms()
        assignments = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(f"UPDATE links SET {assignments} WHERE id = ?", (*sets.values(), link_id))
        row = conn.execute("SELECT * FROM links WHERE id = ?", (link_id,)).fetchone()
        conn.execute(
            "UPDATE links SET location = ? WHERE id = ?", (link_location(row["url"], row), link_id)
        )
    return get_link(conn, link_id)


def archive_link(conn: sqlite3.Connection, link_id: int, archived: bool = True) -> dict[str, Any]:
    """Archive (stop serving, keep history, keep the slug taken) or restore a link."""
    with Transaction(conn):
        if not conn.execute("SELECT 1 FROM links WHERE id = ?", (link_id,)).fetchone():
            raise NotFound(f"no link with id {link_id}")
        conn.execute(
            "UPDATE links SET archived_at = ?, updated_at = ?, rev = ? WHERE id = ?",
            (now_ms() if archived else None, now_ms(), _next_rev(conn), link_id),
        )
    return get_link(conn, link_id)


def purge_link(conn: sqlite3.Connection, link_id: int) -> None:
    """Delete a link row for good (its slug becomes free; its clicks stay, unattached)."""
    with Transaction(conn):
        if not conn.execute("SELECT 1 FROM links WHERE id = ?", (link_id,)).fetchone():
            raise NotFound(f"no link with id {link_id}")
        rev = _next_rev(conn)
        conn.execute("DELETE FROM links WHERE id = ?", (link_id,))
        conn.execute("INSERT OR REPLACE INTO purged_links (id, rev) VALUES (?, ?)", (link_id, rev))


def current_rev(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0])


def changes_since(
    conn: sqlite3.Connection, rev: int
) -> tuple[int, list[sqlite3.Row], list[int], list[sqlite3.Row] | None]:
    """What changed after `rev`: (new rev, changed link rows, purged ids, all domains or None)."""
    new_rev = current_rev(conn)
    if new_rev == rev:
        return rev, [], [], None
    links = conn.execute(f"{_LINK_SELECT} WHERE links.rev > ?", (rev,)).fetchall()
    purged = [r[0] for r in conn.execute("SELECT id FROM purged_links WHERE rev > ?", (rev,))]
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


# --- clicks --------------------------------------------------------------------------------

CLICK_COLUMNS: Final = (
    "ts",
    "link_id",
    "visitor_id",
    "bot_kind",
    "method",
    "country",
    "region",
    "city",
    "asn",
    "as_org",
    "device_type",
    "os",
    "os_version",
    "browser",
    "browser_version",
    "device_brand",
    "device_model",
    "referrer",
    "referrer_host",
    "source",
    "language",
    "dnt",
    "ip_truncated",
)
INSERT_CLICK_SQL: Final = (
    f"INSERT INTO clicks ({', '.join(CLICK_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in CLICK_COLUMNS)})"
)


def insert_clicks(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    """Append enriched click rows (inside the caller's transaction); return their id range."""
    first = conn.execute("SELECT coalesce(max(id), 0) FROM clicks").fetchone()[0] + 1
    conn.executemany(INSERT_CLICK_SQL, rows)
    return first, first + len(rows) - 1


def write_rollups(
    conn: sqlite3.Connection,
    minutes: dict[tuple[int, int], list[int]],
    dims: dict[tuple[int, int, str, str], list[int]],
    visitors: Iterable[tuple[int, int, bytes, int]],
    rolled_up_to: int,
) -> None:
    """Add aggregated counts into the rollup tables and move the watermark (caller's tx)."""
    conn.executemany(
        "INSERT INTO link_minute (link_id, minute, clicks, humans) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (link_id, minute) DO UPDATE SET "
        "clicks = clicks + excluded.clicks, humans = humans + excluded.humans",
        [(k[0], k[1], v[0], v[1]) for k, v in minutes.items()],
    )
    conn.executemany(
        "INSERT INTO link_hour_dim (link_id, hour, dim, value, clicks, humans) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (link_id, hour, dim, value) DO UPDATE SET "
        "clicks = clicks + excluded.clicks, humans = humans + excluded.humans",
        [(k[0], k[1], k[2], k[3], v[0], v[1]) for k, v in dims.items()],
    )
    conn.executemany(
        "INSERT INTO link_day_visitor (link_id, day, visitor_id, human) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (link_id, day, visitor_id) DO UPDATE SET "
        "human = max(human, excluded.human)",
        visitors,
    )
    conn.execute("UPDATE meta SET value = ? WHERE key = 'rollup_click_id'", (rolled_up_to,))


def rollup_watermark(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'rollup_click_id'").fetchone()[0])


def salt_for_day(conn: sqlite3.Connection, day: int, new_salt: Callable[[], bytes]) -> bytes:
    """Today's visitor-hash salt, created if missing; older salts are deleted for good."""
    with Transaction(conn):
        conn.execute("DELETE FROM salts WHERE day < ?", (day,))
        row = conn.execute("SELECT salt FROM salts WHERE day = ?", (day,)).fetchone()
        if row is not None:
            return bytes(row[0])
        salt = new_salt()
        conn.execute("INSERT INTO salts (day, salt) VALUES (?, ?)", (day, salt))
        return salt


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


def create_token(conn: sqlite3.Connection, name: str) -> tuple[dict[str, Any], str]:
    """A new bearer token: returns (its record, the secret shown once; only its hash is kept)."""
    secret = "le_" + secrets.token_urlsafe(32)
    label = _text(name, "name") or "token"
    with Transaction(conn):
        cur = conn.execute(
            "INSERT INTO api_tokens (name, token_hash, prefix, created_at) VALUES (?, ?, ?, ?)",
            (label, token_hash(secret), secret[:7], now_ms()),
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


def touch_token(conn: sqlite3.Connection, token_id: int) -> None:
    conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (now_ms(), token_id))
