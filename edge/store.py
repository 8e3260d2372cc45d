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

import array
import hashlib
import itertools
import secrets
import sqlite3
import sys
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
_BIG_ENDIAN: Final = sys.byteorder == "big"


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


def _m0005_rollups_for_big_ranges(conn: sqlite3.Connection) -> None:
    # Stats over thousands of links and weeks of clicks read too many rows from the first
    # rollups (a campaign group-by took 1 s at 10M clicks). This adds per-hour and per-day
    # totals, orders the breakdown rows so one dimension of one link is a contiguous range
    # (bot kinds no longer walk every dimension), and stores each link's visitors per day
    # as packed 8-byte ids: a group's unique visitors are a set union of a few blobs per
    # link instead of one b-tree row per visitor. The visitor tables are rowid tables: in a
    # WITHOUT ROWID table reading a row's counts also reads its big blobs (about 40x
    # slower here). The group rollups hold every link's numbers under its groups.
    _script(
        conn,
        """
        CREATE TABLE link_hour (
            link_id INTEGER NOT NULL,
            hour INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, hour)
        ) WITHOUT ROWID;
        INSERT INTO link_hour (link_id, hour, clicks, humans)
            SELECT link_id, minute / 60, sum(clicks), sum(humans) FROM link_minute
            GROUP BY link_id, minute / 60;
        CREATE TABLE link_day (
            link_id INTEGER NOT NULL,
            day INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, day)
        ) WITHOUT ROWID;
        INSERT INTO link_day (link_id, day, clicks, humans)
            SELECT link_id, hour / 24, sum(clicks), sum(humans) FROM link_hour
            GROUP BY link_id, hour / 24;
        CREATE TABLE link_dim_hour (
            link_id INTEGER NOT NULL,
            dim TEXT NOT NULL,
            hour INTEGER NOT NULL,
            value TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, dim, hour, value)
        ) WITHOUT ROWID;
        DROP TABLE link_hour_dim;
        CREATE TABLE link_day_visitors (
            link_id INTEGER NOT NULL,
            day INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            n INTEGER NOT NULL,
            n_human INTEGER NOT NULL,
            ids BLOB NOT NULL,
            bot_ids BLOB NOT NULL,
            UNIQUE (link_id, day, seq)
        );
        CREATE TABLE group_minute (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            minute INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (dim, key, minute)
        ) WITHOUT ROWID;
        CREATE TABLE group_quarter (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            quarter INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (dim, key, quarter)
        ) WITHOUT ROWID;
        CREATE TABLE group_hour (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            hour INTEGER NOT NULL,
            kind TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            PRIMARY KEY (dim, key, hour, kind)
        ) WITHOUT ROWID;
        CREATE TABLE group_day (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            day INTEGER NOT NULL,
            kind TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            PRIMARY KEY (dim, key, day, kind)
        ) WITHOUT ROWID;
        CREATE TABLE group_day_visitors (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            day INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            n INTEGER NOT NULL,
            n_human INTEGER NOT NULL,
            ids BLOB NOT NULL,
            bot_ids BLOB NOT NULL,
            UNIQUE (dim, key, day, seq)
        );
        ALTER TABLE purged_links ADD COLUMN domain_id INTEGER;
        ALTER TABLE purged_links ADD COLUMN slug TEXT;
        CREATE TABLE group_day_stale (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            day INTEGER NOT NULL,
            PRIMARY KEY (dim, key, day)
        ) WITHOUT ROWID
        """,
    )
    # The breakdowns now keep related columns in one row (DIM_COLUMNS): built again from
    # the clicks the old rollups held (those up to the watermark).
    for sql in _roll_up_dims_sql("id <= (SELECT value FROM meta WHERE key = 'rollup_click_id')"):
        conn.execute(sql)
    cur = conn.execute(
        "SELECT link_id, day, visitor_id, human FROM link_day_visitor ORDER BY link_id, day"
    )
    for (link_id, day), group in itertools.groupby(cur, key=lambda r: (r[0], r[1])):
        ids: set[int] = set()
        humans: set[int] = set()
        for _l, _d, vid, human in group:
            v = visitor_int(bytes(vid))
            ids.add(v)
            if human:
                humans.add(v)
        conn.execute(
            f"INSERT INTO link_day_visitors (link_id, day, {CHUNK_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (link_id, day, *chunk(0, ids, humans)),
        )
    conn.execute("DROP TABLE link_day_visitor")
    _backfill_groups(conn)


def _backfill_groups(conn: sqlite3.Connection) -> None:
    """Fill the group rollups from the link rollups, by each link's current groups."""
    for dim, key_sql, source in GROUP_KEY_SOURCES:
        conn.execute(
            "INSERT INTO group_minute (dim, key, minute, clicks, humans) "
            f"SELECT ?, {key_sql}, m.minute, sum(m.clicks), sum(m.humans) "
            f"FROM {source} CROSS JOIN link_minute m ON m.link_id = l.id GROUP BY 2, 3",
            (dim,),
        )
        conn.execute(
            "INSERT INTO group_hour (dim, key, hour, kind, clicks) "
            f"SELECT ?, {key_sql}, d.hour, d.value, sum(d.clicks) FROM {source} "
            "CROSS JOIN link_dim_hour d ON d.link_id = l.id AND d.dim = 'bot_kind' "
            "GROUP BY 2, 3, 4",
            (dim,),
        )
    conn.execute(
        "INSERT INTO group_day (dim, key, day, kind, clicks) "
        "SELECT dim, key, hour / 24, kind, sum(clicks) FROM group_hour GROUP BY 1, 2, 3, 4"
    )
    conn.execute(
        "INSERT INTO group_quarter (dim, key, quarter, clicks, humans) "
        "SELECT dim, key, minute / 15, sum(clicks), sum(humans) FROM group_minute "
        "GROUP BY 1, 2, 3"
    )
    keys_of = {row[0]: group_keys(row) for row in conn.execute(GROUP_KEYS_SELECT)}
    conn.execute("CREATE INDEX link_day_visitors_day ON link_day_visitors (day)")
    days = [r[0] for r in conn.execute("SELECT DISTINCT day FROM link_day_visitors ORDER BY 1")]
    today = int(time.time()) // 86400
    for day in days:
        pack = counts_only if day < today else chunk  # a finished day keeps counts only
        sets: dict[tuple[str, str], tuple[set[int], set[int]]] = {}
        for link_id, ids, bots in conn.execute(
            "SELECT link_id, ids, bot_ids FROM link_day_visitors WHERE day = ?", (day,)
        ):
            id_set, human_set = chunk_sets(ids, bots)
            for gk in keys_of.get(link_id, ()):
                entry = sets.get(gk)
                if entry is None:
                    entry = sets[gk] = (set(), set())
                entry[0].update(id_set)
                entry[1].update(human_set)
        conn.executemany(
            f"INSERT INTO group_day_visitors (dim, key, day, {CHUNK_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(d, k, day, *pack(0, a, h)) for (d, k), (a, h) in sets.items()],
        )
    conn.execute("DROP INDEX link_day_visitors_day")


# --- groups ----------------------------------------------------------------------------------
# The fields stats group links by. The group rollups (group_minute/quarter/hour/day,
# group_day_visitors) hold every link's clicks under each of its current groups, so a
# group-by over all links reads a few rows per group instead of rows per link. They follow
# the links: a change of a link's campaign, UTM fields or tags, or its purge, moves the
# link's history between groups in the same transaction (_move_link_groups); the visitors
# of a group it left are rebuilt afterwards (group_day_stale, rebuild_stale_group_day).
GROUP_DIMS: Final = ("campaign", "utm_source", "utm_medium", "utm_campaign", "tag", "domain")
GroupKey = tuple[str, str]  # (dim, key); '' is "none"; a domain's key is its id
GROUP_KEYS_SELECT: Final = (
    "SELECT id, campaign, utm_source, utm_medium, utm_campaign, tags, domain_id FROM links"
)
# (dim, key SQL over `l`, FROM clause giving `l`): the same keys as group_keys(), in SQL.
GROUP_KEY_SOURCES: Final = (
    *((d, f"coalesce(l.{d}, '')", "links l") for d in GROUP_DIMS[:4]),
    ("tag", "t.value", "links l CROSS JOIN json_each(l.tags) t"),
    ("domain", "CAST(l.domain_id AS TEXT)", "links l"),
)


def group_keys(row: Sequence[Any]) -> tuple[GroupKey, ...]:
    """A link's groups from a GROUP_KEYS_SELECT row."""
    _id, campaign, source, medium, utm_campaign, tags, domain_id = row
    keys = [
        ("campaign", campaign or ""),
        ("utm_source", source or ""),
        ("utm_medium", medium or ""),
        ("utm_campaign", utm_campaign or ""),
    ]
    keys.extend(("tag", str(tag)) for tag in dict.fromkeys(orjson.loads(tags or "[]")))
    keys.append(("domain", str(domain_id)))
    return tuple(keys)


def _link_group_keys(conn: sqlite3.Connection, link_id: int) -> tuple[GroupKey, ...]:
    row = conn.execute(f"{GROUP_KEYS_SELECT} WHERE id = ?", (link_id,)).fetchone()
    return () if row is None else group_keys(tuple(row))


def _move_link_groups(
    conn: sqlite3.Connection, link_id: int, old: tuple[GroupKey, ...], new: tuple[GroupKey, ...]
) -> None:
    """Move a link's rolled-up history from the groups it left to the ones it joined (the
    caller's transaction, after the link row changed). Counts are added and subtracted;
    the link's visitors join its new groups' unions; the group-days it left are marked
    for a rebuild from their remaining links."""
    left = [k for k in old if k not in new]
    joined = [k for k in new if k not in old]
    for sign, keys in ((-1, left), (1, joined)):
        for dim, key in keys:
            for table, column, unit in (
                ("group_minute", "minute", "minute"),
                ("group_quarter", "quarter", "minute / 15"),
            ):
                conn.execute(
                    f"INSERT INTO {table} (dim, key, {column}, clicks, humans) "
                    f"SELECT ?, ?, {unit}, ? * sum(clicks), ? * sum(humans) FROM link_minute "
                    f"WHERE link_id = ? GROUP BY {unit} "
                    f"ON CONFLICT (dim, key, {column}) DO UPDATE SET "
                    "clicks = clicks + excluded.clicks, humans = humans + excluded.humans",
                    (dim, key, sign, sign, link_id),
                )
            for table, column, unit in (
                ("group_hour", "hour", "hour"),
                ("group_day", "day", "hour / 24"),
            ):
                conn.execute(
                    f"INSERT INTO {table} (dim, key, {column}, kind, clicks) "
                    f"SELECT ?, ?, {unit}, value, ? * sum(clicks) FROM link_dim_hour "
                    f"WHERE link_id = ? AND dim = 'bot_kind' GROUP BY {unit}, value "
                    f"ON CONFLICT (dim, key, {column}, kind) DO UPDATE SET "
                    "clicks = clicks + excluded.clicks",
                    (dim, key, sign, link_id),
                )
    for dim, key in left:
        for table in ("group_minute", "group_quarter"):
            conn.execute(
                f"DELETE FROM {table} WHERE dim = ? AND key = ? AND clicks = 0", (dim, key)
            )
        conn.execute("DELETE FROM group_hour WHERE dim = ? AND key = ? AND clicks = 0", (dim, key))
        conn.execute("DELETE FROM group_day WHERE dim = ? AND key = ? AND clicks = 0", (dim, key))
    days = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT day FROM link_day_visitors WHERE link_id = ?", (link_id,)
        )
    ]
    if not days:
        return
    for day in days if joined else ():  # a union only grows: add the link's visitors
        ids, humans = _visitor_sets(
            conn,
            "SELECT ids, bot_ids FROM link_day_visitors WHERE link_id = ? AND day = ?",
            (link_id, day),
        )
        for dim, key in joined:
            # the link's own chunk in this group (-id); one left from an earlier stay is
            # folded in (a group the link left is rebuilt without it, so rarely any)
            mine = _visitor_sets(
                conn,
                "DELETE FROM group_day_visitors WHERE dim = ? AND key = ? AND day = ? "
                "AND seq = ? RETURNING ids, bot_ids",
                (dim, key, day, -link_id),
            )
            conn.execute(
                f"INSERT INTO group_day_visitors (dim, key, day, {CHUNK_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (dim, key, day, *chunk(-link_id, ids | mine[0], humans | mine[1])),
            )
            if _has_counts_only(
                conn, "group_day_visitors", "dim = ? AND key = ? AND day = ?", (dim, key, day)
            ):
                mark_stale(conn, [(dim, key, day)])  # a finished day: recount from links
    if not left:
        return
    # A union cannot shrink: the visitors of a group-day the link left are rebuilt from the
    # group's remaining links, later and one at a time (rebuild_stale_group_day), since a
    # group like "no campaign" or a domain can hold every link; readers count a stale
    # group-day from its links meanwhile.
    mark_stale(conn, [(dim, key, day) for dim, key in left for day in days])


def group_members_sql(dim: str) -> tuple[str, str]:
    """(FROM clause giving `l`, condition on `l` with one `?` for the key): the links of a
    group."""
    _dim, key_sql, source = next(s for s in GROUP_KEY_SOURCES if s[0] == dim)
    return source, f"{key_sql} = ?"


def rebuild_stale_group_day(conn: sqlite3.Connection) -> bool:
    """Rebuild the visitors of one group-day a link left (the caller's transaction) from
    the group's links; False when none waits."""
    row = conn.execute("SELECT dim, key, day FROM group_day_stale LIMIT 1").fetchone()
    if row is None:
        return False
    dim, key, day = row
    source, cond = group_members_sql(dim)
    ids, humans = _visitor_sets(
        conn,
        f"SELECT v.ids, v.bot_ids FROM {source} CROSS JOIN link_day_visitors v "
        f"ON v.link_id = l.id AND v.day = ? WHERE {cond}",
        (day, key),
    )
    where = "dim = ? AND key = ? AND day = ?"
    conn.execute(f"DELETE FROM group_day_visitors WHERE {where}", (dim, key, day))
    if ids:
        finished = day < int(time.time()) // 86400
        conn.execute(
            f"INSERT INTO group_day_visitors (dim, key, day, {CHUNK_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (dim, key, day, *(counts_only if finished else chunk)(0, ids, humans)),
        )
    conn.execute(f"DELETE FROM group_day_stale WHERE {where}", (dim, key, day))
    return True


def _visitor_sets(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any]
) -> tuple[set[int], set[int]]:
    """(visitors, visitors with a human click) of the chunks a query returns as (ids,
    bot_ids) rows."""
    ids: set[int] = set()
    humans: set[int] = set()
    for blob, bot_blob in conn.execute(sql, params).fetchall():
        chunk_ids, chunk_humans = chunk_sets(blob, bot_blob)
        ids |= chunk_ids
        humans |= chunk_humans
    return ids, humans


# --- packed visitor ids ----------------------------------------------------------------------
# A visitor id is 8 bytes (edge/clicks.py: BLAKE2b-64). The rollups keep the visitors of a
# (link or group, UTC day) as chunks: `ids` (every visitor) and `bot_ids` (the visitors
# without a human click in this chunk: few, where storing the human ones would repeat
# nearly all of `ids`), each the sorted, distinct ids as unsigned little-endian 64-bit
# integers, with the counts `n` (visitors) and `n_human` (n minus the bot-only ones). A
# count or a union is then a C loop (array, set, bisect) rather than a Python one, and a
# (link or group, day) with a single chunk is counted without reading its ids.
CHUNK_COLUMNS: Final = "seq, n, n_human, ids, bot_ids"


def visitor_int(vid: bytes) -> int:
    return int.from_bytes(vid[:8].ljust(8, b"\0"), "little")


def pack_ids(ids: Iterable[int]) -> bytes:
    arr = array.array("Q", sorted(ids))
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def unpack_ids(blob: bytes) -> array.array[int]:
    arr = array.array("Q")
    arr.frombytes(blob)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


def chunk(seq: int, ids: set[int], humans: set[int]) -> tuple[int, int, int, bytes, bytes]:
    """A chunk row's CHUNK_COLUMNS values from its visitors and the human ones."""
    bots = ids - humans
    return seq, len(ids), len(ids) - len(bots), pack_ids(ids), pack_ids(bots)


def counts_only(seq: int, ids: set[int], humans: set[int]) -> tuple[int, int, int, bytes, bytes]:
    """A finished group-day's chunk: its counts, no ids (n > 0 with empty `ids`)."""
    return seq, len(ids), len(humans), b"", b""


def _has_counts_only(conn: sqlite3.Connection, table: str, where: str, key: Sequence[Any]) -> bool:
    sql = f"SELECT 1 FROM {table} WHERE {where} AND n > 0 AND length(ids) = 0 LIMIT 1"
    return conn.execute(sql, tuple(key)).fetchone() is not None


def mark_stale(conn: sqlite3.Connection, group_days: Iterable[Sequence[Any]]) -> None:
    """Have the visitors of these (dim, key, day) rebuilt from their links."""
    conn.executemany(
        "INSERT OR IGNORE INTO group_day_stale (dim, key, day) VALUES (?, ?, ?)",
        [tuple(g) for g in group_days],
    )


def chunk_sets(ids: bytes, bots: bytes) -> tuple[set[int], set[int]]:
    """A chunk's (visitors, visitors with a human click) as sets."""
    every = set(unpack_ids(ids))
    return every, (every - set(unpack_ids(bots))) if bots else every.copy()


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
    (5, "0005_rollups_for_big_ranges", _m0005_rollups_for_big_ranges),
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
        # The id is past every purged one too: a purged link's clicks and rollups stay in
        # place, and a new link must not inherit them (SQLite would reuse max(id) + 1).
        f"INSERT INTO links (id, domain_id, slug, {columns}, location, created_at, updated_at, "
        f"rev) VALUES ({_NEXT_LINK_ID}, ?, ?, {marks}, ?, ?, ?, ?)",
        (drow["id"], slug, *values.values(), link_location(values["url"], values), ts, ts, rev),
    )
    return conn.execute(f"{_LINK_SELECT} WHERE links.id = ?", (cur.lastrowid,)).fetchone()  # type: ignore[no-any-return]


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
        groups_before = _link_group_keys(conn, link_id)
        sets["rev"] = _next_rev(conn)
        sets["updated_at"] = now_ms()
        assignments = ", ".join(f"{k} = ?" for k in sets)
        conn.execute(f"UPDATE links SET {assignments} WHERE id = ?", (*sets.values(), link_id))
        _move_link_groups(conn, link_id, groups_before, _link_group_keys(conn, link_id))
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
    """Delete a link row for good (its slug becomes free; its clicks stay, unattached, and
    leave the group totals)."""
    with Transaction(conn):
        if not conn.execute("SELECT 1 FROM links WHERE id = ?", (link_id,)).fetchone():
            raise NotFound(f"no link with id {link_id}")
        groups_before = _link_group_keys(conn, link_id)
        rev = _next_rev(conn)
        # the servers' link tables find the purged link by its domain and slug
        conn.execute(
            "INSERT OR REPLACE INTO purged_links (id, rev, domain_id, slug) "
            "SELECT id, ?, domain_id, slug FROM links WHERE id = ?",
            (rev, link_id),
        )
        conn.execute("DELETE FROM links WHERE id = ?", (link_id,))
        _move_link_groups(conn, link_id, groups_before, ())


def current_rev(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0])


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
_INSERT_CLICK_HEAD: Final = f"INSERT INTO clicks ({', '.join(CLICK_COLUMNS)})"
INSERT_CLICK_SQL: Final = f"{_INSERT_CLICK_HEAD} VALUES ({', '.join('?' for _ in CLICK_COLUMNS)})"


# executemany() releases the GIL around every row's sqlite3_step: with the event loop busy
# on the other side of the GIL, each row then waits for a GIL hand-off (measured: 4 µs a
# row alone, 81 µs a row beside a busy thread). One statement of many rows binds them all,
# then steps once.
_MAX_VARIABLES: Final = 32766  # SQLITE_MAX_VARIABLE_NUMBER since SQLite 3.32
_ROWS_PER_STATEMENT: Final = 256


def insert_rows(
    conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> None:
    """`{head} VALUES (?, ...), (?, ...) {tail}` for rows of equal length, many a statement."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, min(_ROWS_PER_STATEMENT, _MAX_VARIABLES // width))
    one = "(" + ", ".join("?" * width) + ")"
    chain = itertools.chain.from_iterable
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        values = ", ".join([one] * len(part))
        conn.execute(f"{head} VALUES {values} {tail}", list(chain(part)))


def insert_clicks(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    """Append enriched click rows (inside the caller's transaction); return their id range."""
    first = conn.execute("SELECT coalesce(max(id), 0) FROM clicks").fetchone()[0] + 1
    insert_rows(conn, _INSERT_CLICK_HEAD, rows)
    return first, first + len(rows) - 1


# A link's (or group's) visitors of a day are written as one chunk per rollup write; once
# it has this many chunks they are merged into one, so a read unions at most this many.
VISITOR_CHUNKS_MERGE: Final = 16
VisitorSets = dict[tuple[int, int], tuple[set[int], set[int]]]
_KEY_CACHE_MAX: Final = 200_000  # links whose groups the writer remembers


class RollupState:
    """What the rollup writer remembers between writes: how many visitor chunks each
    (link or group, day) has (a hint: after a restart it starts at zero, which only delays
    a merge), and the groups of recently clicked links, valid while the links' revision
    stays the same (read inside the writing transaction, so an edit is never missed)."""

    def __init__(self) -> None:
        self.chunk_counts: dict[tuple[Any, ...], int] = {}
        self.keys: dict[int, tuple[GroupKey, ...]] = {}
        self.rev = -1

    def group_keys(
        self, conn: sqlite3.Connection, link_ids: Iterable[int]
    ) -> dict[int, tuple[GroupKey, ...]]:
        rev = current_rev(conn)
        if rev != self.rev or len(self.keys) > _KEY_CACHE_MAX:
            self.keys.clear()
            self.rev = rev
        keys = self.keys
        missing = [i for i in link_ids if i not in keys]
        if missing:
            for row in conn.execute(
                f"{GROUP_KEYS_SELECT} WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(missing).decode(),),
            ):
                keys[row[0]] = group_keys(tuple(row))
            for i in missing:
                keys.setdefault(i, ())  # purged: in no group
        return keys

    def load(self, conn: sqlite3.Connection, since_day: int) -> None:
        """Count the visitor chunks of the days from `since_day` on (at start: so the
        chunks written before a restart are merged too)."""
        for sql in (
            "SELECT link_id, day, count(*) FROM link_day_visitors WHERE day >= ? "
            "GROUP BY 1, 2 HAVING count(*) > 1",
            "SELECT dim, key, day, count(*) FROM group_day_visitors WHERE day >= ? "
            "AND length(ids) > 0 GROUP BY 1, 2, 3",
        ):
            for row in conn.execute(sql, (since_day,)):
                self.chunk_counts[tuple(row[:-1])] = row[-1]

    def forget_days_before(self, day: int) -> None:
        counts = self.chunk_counts
        for key in [k for k in counts if k[-1] < day]:
            del counts[key]


def _add(acc: dict[Any, list[int]], key: Any, clicks: int, humans: int) -> None:
    entry = acc.get(key)
    if entry is None:
        acc[key] = [clicks, humans]
    else:
        entry[0] += clicks
        entry[1] += humans


# The breakdowns kept per link per hour (link_dim_hour): dim -> the click columns its value
# joins with DIM_SEPARATOR. Columns that are read together share a row (a country, its
# region and city; a device type, OS and browser; a source and referrer host), which
# halves the rows written per click; stats sum them back into one list per column.
DIM_COLUMNS: Final = {
    "geo": ("country", "region", "city"),
    "ua": ("device_type", "os", "browser"),
    "ref": ("source", "referrer_host"),
    "language": ("language",),
    "bot_kind": ("bot_kind",),
}
DIM_SEPARATOR: Final = "\x1f"  # ASCII unit separator: in no GeoIP, UA or host value


def _dim_value_sql(columns: Sequence[str]) -> str:
    return " || char(31) || ".join(f"coalesce({c}, '')" for c in columns)


def _roll_up_dims_sql(where: str) -> list[str]:
    """One INSERT per stored dimension, aggregating `clicks` rows matching `where`."""
    return [
        "INSERT INTO link_dim_hour (link_id, dim, hour, value, clicks, humans) "
        f"SELECT link_id, '{dim}', ts / 3600000, {_dim_value_sql(columns)}, count(*), "
        f"sum(coalesce(bot_kind, '') = '') FROM clicks WHERE {where} GROUP BY 1, 3, 4 "
        "ON CONFLICT (link_id, dim, hour, value) DO UPDATE SET "
        "clicks = clicks + excluded.clicks, humans = humans + excluded.humans"
        for dim, columns in DIM_COLUMNS.items()
    ]


ROLL_UP_MAX_CLICKS: Final = 100_000  # clicks rolled up per transaction when catching up


def roll_up(conn: sqlite3.Connection, state: RollupState | None = None, limit: int = 0) -> int:
    """Add the clicks above the watermark to every rollup table and move the watermark
    (the caller's transaction); return how many clicks that was. With `limit`, at most
    that many (catching up). The rollups are derived from the `clicks` rows themselves, by
    id range, so the flusher and a catch-up after a crash are the same code, and a click
    is counted once whatever happened in between.

    Per link: minutes, hours and days of clicks and humans, the breakdown dimensions per
    hour (aggregated by SQLite, which releases the GIL while it works), and the day's
    visitors as packed ids. Per group (each link's current campaign, UTM fields, tags,
    domain, read in this same transaction): minutes, hours and days per bot kind, and
    visitors."""
    state = RollupState() if state is None else state
    lo = rollup_watermark(conn) + 1
    hi = conn.execute("SELECT coalesce(max(id), 0) FROM clicks").fetchone()[0]
    if limit:
        hi = min(hi, lo + limit - 1)
    if hi < lo:
        return 0
    span = (lo, hi)
    minutes: dict[tuple[int, int], list[int]] = {}
    hour_kinds: dict[tuple[int, int, str], int] = {}
    for link_id, minute, kind, n in conn.execute(
        "SELECT link_id, ts / 60000, coalesce(bot_kind, ''), count(*) FROM clicks "
        "WHERE id BETWEEN ? AND ? GROUP BY 1, 2, 3",
        span,
    ):
        _add(minutes, (link_id, minute), n, 0 if kind else n)
        hk = (link_id, minute // 60, kind)
        hour_kinds[hk] = hour_kinds.get(hk, 0) + n
    hours: dict[tuple[int, int], list[int]] = {}
    days: dict[tuple[int, int], list[int]] = {}
    for (link_id, minute), (clicks, humans) in minutes.items():
        _add(hours, (link_id, minute // 60), clicks, humans)
        _add(days, (link_id, minute // 1440), clicks, humans)
    for table, column, rows in (
        ("link_minute", "minute", minutes),
        ("link_hour", "hour", hours),
        ("link_day", "day", days),
    ):
        insert_rows(
            conn,
            f"INSERT INTO {table} (link_id, {column}, clicks, humans)",
            [(k[0], k[1], v[0], v[1]) for k, v in rows.items()],
            f"ON CONFLICT (link_id, {column}) DO UPDATE SET "
            "clicks = clicks + excluded.clicks, humans = humans + excluded.humans",
        )
    for sql in _roll_up_dims_sql("id BETWEEN ? AND ?"):
        conn.execute(sql, span)
    visitors: VisitorSets = {}
    for link_id, day, vid, human in conn.execute(
        "SELECT link_id, ts / 86400000, visitor_id, coalesce(bot_kind, '') = '' FROM clicks "
        "WHERE id BETWEEN ? AND ? AND visitor_id IS NOT NULL",
        span,
    ):
        entry = visitors.get((link_id, day))
        if entry is None:
            entry = visitors[(link_id, day)] = (set(), set())
        v = visitor_int(vid)
        entry[0].add(v)
        if human:
            entry[1].add(v)
    _write_visitor_chunks(conn, "link_day_visitors", ("link_id",), visitors, hi, state)

    keys_of = state.group_keys(conn, {k[0] for k in hours})
    g_minutes: dict[tuple[str, str, int], list[int]] = {}
    for (link_id, minute), (clicks, humans) in minutes.items():
        for dim, key in keys_of[link_id]:
            _add(g_minutes, (dim, key, minute), clicks, humans)
    g_hours: dict[tuple[str, str, int, str], int] = {}
    g_days: dict[tuple[str, str, int, str], int] = {}
    for (link_id, hour, kind), n in hour_kinds.items():
        day = hour // 24
        for dim, key in keys_of[link_id]:
            gk = (dim, key, hour, kind)
            g_hours[gk] = g_hours.get(gk, 0) + n
            gk = (dim, key, day, kind)
            g_days[gk] = g_days.get(gk, 0) + n
    g_visitors: dict[tuple[str, str, int], tuple[set[int], set[int]]] = {}
    for (link_id, day), (ids, humans) in visitors.items():
        for dim, key in keys_of.get(link_id, ()):
            entry = g_visitors.get((dim, key, day))
            if entry is None:
                g_visitors[(dim, key, day)] = (set(ids), set(humans))
            else:
                entry[0].update(ids)
                entry[1].update(humans)
    g_quarters: dict[tuple[str, str, int], list[int]] = {}
    for (dim, key, minute), (clicks, humans) in g_minutes.items():
        _add(g_quarters, (dim, key, minute // 15), clicks, humans)
    for table, column, rows in (
        ("group_minute", "minute", g_minutes),
        ("group_quarter", "quarter", g_quarters),
    ):
        insert_rows(
            conn,
            f"INSERT INTO {table} (dim, key, {column}, clicks, humans)",
            [(*k, v[0], v[1]) for k, v in rows.items()],
            f"ON CONFLICT (dim, key, {column}) DO UPDATE SET "
            "clicks = clicks + excluded.clicks, humans = humans + excluded.humans",
        )
    for table, column, rows in (("group_hour", "hour", g_hours), ("group_day", "day", g_days)):
        insert_rows(
            conn,
            f"INSERT INTO {table} (dim, key, {column}, kind, clicks)",
            [(*k, v) for k, v in rows.items()],
            f"ON CONFLICT (dim, key, {column}, kind) DO UPDATE SET "
            "clicks = clicks + excluded.clicks",
        )
    _write_visitor_chunks(
        conn, "group_day_visitors", ("dim", "key"), g_visitors, hi, state, counts_when_done=True
    )
    conn.execute("UPDATE meta SET value = ? WHERE key = 'rollup_click_id'", (hi,))
    return hi - lo + 1


def _write_visitor_chunks(
    conn: sqlite3.Connection,
    table: str,
    owner: tuple[str, ...],
    visitors: dict[Any, tuple[set[int], set[int]]],
    seq: int,
    state: RollupState,
    counts_when_done: bool = False,
) -> None:
    """Append one chunk per (owner..., day); merge an owner-day's chunks past the limit,
    and the chunks of days before the newest one written (a day is done: one chunk). With
    `counts_when_done` (groups) a finished day keeps only its counts: link chunks keep
    every id, so a group-day can always be recounted from its links (mark_stale)."""
    counts = state.chunk_counts
    where = " AND ".join(f"{c} = ?" for c in (*owner, "day"))
    rows: list[tuple[Any, ...]] = []
    newest = max((k[-1] for k in visitors), default=None)
    least = 1 if counts_when_done else 2
    done = {
        k
        for k, n in counts.items()
        if n >= least and len(k) == len(owner) + 1 and newest is not None and k[-1] < newest
    }
    done -= visitors.keys()
    if done:
        visitors = {**visitors, **{key: (set(), set()) for key in done}}
    for key, (ids, humans) in visitors.items():
        n = counts.get(key, 0) + 1
        if n >= VISITOR_CHUNKS_MERGE or key in done:
            if counts_when_done and _has_counts_only(conn, table, where, key):
                # a finished day's counts cannot take a union: recount it from its links
                mark_stale(conn, [key])
                counts.pop(key, None)
                if ids:
                    rows.append((*key, *chunk(seq, ids, humans)))
                continue
            old = _visitor_sets(
                conn, f"DELETE FROM {table} WHERE {where} RETURNING ids, bot_ids", key
            )
            ids, humans = ids | old[0], humans | old[1]
            n = 1
            if counts_when_done and key in done:
                counts.pop(key, None)
                rows.append((*key, *counts_only(seq, ids, humans)))
                continue
        counts[key] = n
        rows.append((*key, *chunk(seq, ids, humans)))
    cols = ", ".join((*owner, "day"))
    before = conn.total_changes
    insert_rows(conn, f"INSERT OR IGNORE INTO {table} ({cols}, {CHUNK_COLUMNS})", rows)
    if conn.total_changes - before != len(rows):
        # A chunk key (owner, day, seq) was taken: not by design (seq is the roll-up's own
        # watermark), but a chunk must stay sorted and distinct, so union it in Python.
        for row in rows:
            key, seq_, ids_blob = row[: len(owner) + 1], row[len(owner) + 1], row[-2]
            stored = conn.execute(
                f"SELECT ids FROM {table} WHERE {where} AND seq = ?", (*key, seq_)
            ).fetchone()
            if stored is not None and stored[0] != ids_blob:
                old = _visitor_sets(
                    conn,
                    f"DELETE FROM {table} WHERE {where} AND seq = ? RETURNING ids, bot_ids",
                    (*key, seq_),
                )
                mine = chunk_sets(ids_blob, row[-1])
                conn.execute(
                    f"INSERT INTO {table} ({cols}, {CHUNK_COLUMNS}) VALUES "
                    f"({', '.join('?' * (len(owner) + 6))})",
                    (*key, *chunk(seq_, old[0] | mine[0], old[1] | mine[1])),
                )


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
