"""The schema: frozen, numbered, self-contained migrations (`0001_create_links`, ...).

Rules:
- A migration is a numbered, named function recorded in `schema_migrations` (and PRAGMA
  user_version) in the same transaction as its changes, so running `migrate()` twice is a
  no-op and a failed migration changes nothing.
- Frozen: once released, a migration never changes, and it calls no code outside this
  module. What it needs of today's logic (a URL merge, the rollup dimensions, the visitor
  format, a link's groups) is copied here as it was when the migration was written, under
  a name carrying its number (`_v4_...`, `_v5_...`). Editing edge/rollups.py or
  edge/visitors.py therefore never changes what an old database is migrated to.
- DDL is a tuple of statements run one by one (`_run`): no splitting of SQL text (a ";"
  inside a literal would break it), and no executescript(), which would COMMIT the
  migration's transaction before it starts.
- tests/test_schema.py builds a database with 0001's own SQL, upgrades it to the latest,
  and compares it with a fresh one.
"""

from __future__ import annotations

import array
import ipaddress
import itertools
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final
from urllib.parse import quote

import orjson

from edge.db import Transaction, now_ms


def _run(conn: sqlite3.Connection, statements: Iterable[str]) -> None:
    for statement in statements:
        conn.execute(statement)


_M0001_SQL: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "INSERT INTO meta (key, value) VALUES ('rev', 0)",
    """CREATE TABLE domains (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL UNIQUE,
            is_default INTEGER NOT NULL DEFAULT 0,
            root_url TEXT,
            fallback_url TEXT,
            created_at INTEGER NOT NULL,
            rev INTEGER NOT NULL
        )""",
    """CREATE TABLE links (
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
        )""",
    "CREATE INDEX links_rev ON links (rev)",
    "CREATE TABLE purged_links (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL)",
    "CREATE INDEX purged_links_rev ON purged_links (rev)",
)


_M0002_SQL: Final = (
    """CREATE TABLE clicks (
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
        )""",
    "CREATE INDEX clicks_ts ON clicks (ts)",
    """CREATE TABLE link_minute (
            link_id INTEGER NOT NULL,
            minute INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, minute)
        ) WITHOUT ROWID""",
    """CREATE TABLE link_hour_dim (
            link_id INTEGER NOT NULL,
            hour INTEGER NOT NULL,
            dim TEXT NOT NULL,
            value TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, hour, dim, value)
        ) WITHOUT ROWID""",
    """CREATE TABLE link_day_visitor (
            link_id INTEGER NOT NULL,
            day INTEGER NOT NULL,
            visitor_id BLOB NOT NULL,
            human INTEGER NOT NULL,
            PRIMARY KEY (link_id, day, visitor_id)
        ) WITHOUT ROWID""",
    "CREATE TABLE salts (day INTEGER PRIMARY KEY, salt BLOB NOT NULL)",
    "INSERT INTO meta (key, value) VALUES ('rollup_click_id', 0)",
)


_M0003_SQL: Final = (
    """CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash BLOB NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            last_used_at INTEGER,
            revoked_at INTEGER
        )""",
    """CREATE TABLE utm_allow (
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (field, value)
        ) WITHOUT ROWID""",
)


_M0005_SQL: Final = (
    """CREATE TABLE link_hour (
            link_id INTEGER NOT NULL,
            hour INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, hour)
        ) WITHOUT ROWID""",
    """INSERT INTO link_hour (link_id, hour, clicks, humans)
        SELECT link_id, minute / 60, sum(clicks), sum(humans) FROM link_minute
        GROUP BY link_id, minute / 60""",
    """CREATE TABLE link_day (
            link_id INTEGER NOT NULL,
            day INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, day)
        ) WITHOUT ROWID""",
    """INSERT INTO link_day (link_id, day, clicks, humans)
        SELECT link_id, hour / 24, sum(clicks), sum(humans) FROM link_hour
        GROUP BY link_id, hour / 24""",
    """CREATE TABLE link_dim_hour (
            link_id INTEGER NOT NULL,
            dim TEXT NOT NULL,
            hour INTEGER NOT NULL,
            value TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (link_id, dim, hour, value)
        ) WITHOUT ROWID""",
    "DROP TABLE link_hour_dim",
    """CREATE TABLE link_day_visitors (
            link_id INTEGER NOT NULL,
            day INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            n INTEGER NOT NULL,
            n_human INTEGER NOT NULL,
            ids BLOB NOT NULL,
            bot_ids BLOB NOT NULL,
            UNIQUE (link_id, day, seq)
        )""",
    """CREATE TABLE group_minute (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            minute INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (dim, key, minute)
        ) WITHOUT ROWID""",
    """CREATE TABLE group_quarter (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            quarter INTEGER NOT NULL,
            clicks INTEGER NOT NULL,
            humans INTEGER NOT NULL,
            PRIMARY KEY (dim, key, quarter)
        ) WITHOUT ROWID""",
    """CREATE TABLE group_hour (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            hour INTEGER NOT NULL,
            kind TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            PRIMARY KEY (dim, key, hour, kind)
        ) WITHOUT ROWID""",
    """CREATE TABLE group_day (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            day INTEGER NOT NULL,
            kind TEXT NOT NULL,
            clicks INTEGER NOT NULL,
            PRIMARY KEY (dim, key, day, kind)
        ) WITHOUT ROWID""",
    """CREATE TABLE group_day_visitors (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            day INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            n INTEGER NOT NULL,
            n_human INTEGER NOT NULL,
            ids BLOB NOT NULL,
            bot_ids BLOB NOT NULL,
            UNIQUE (dim, key, day, seq)
        )""",
    "ALTER TABLE purged_links ADD COLUMN domain_id INTEGER",
    "ALTER TABLE purged_links ADD COLUMN slug TEXT",
    """CREATE TABLE group_day_stale (
            dim TEXT NOT NULL,
            key TEXT NOT NULL,
            day INTEGER NOT NULL,
            PRIMARY KEY (dim, key, day)
        ) WITHOUT ROWID
        """,
)


def _m0001_create_links(conn: sqlite3.Connection) -> None:
    _run(conn, _M0001_SQL)


def _m0002_create_clicks(conn: sqlite3.Connection) -> None:
    # `clicks` is append-only: its rowid (the click id) and `ts` both grow with time, so
    # inserts touch only the right edge of each b-tree. Per-link numbers come from rollups
    # written by the flusher, never from a (link_id, ts) index.
    _run(conn, _M0002_SQL)


def _m0003_create_tokens_and_utm_allow(conn: sqlite3.Connection) -> None:
    _run(conn, _M0003_SQL)


# --- 0004 ---------------------------------------------------------------------------------
_V4_UTM_FIELDS: Final = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")


def _v4_location(url: str, row: sqlite3.Row) -> str:
    """The destination with the link's UTM tags set, replacing same-named parameters
    (edge/urls.py with_params as of 0004)."""
    params = [(f, row[f]) for f in _V4_UTM_FIELDS if row[f]]
    if not params:
        return url
    base, hash_mark, fragment = url.partition("#")
    base, _, query = base.partition("?")
    pairs = [p for p in query.split("&") if p] if query else []
    keys = {k for k, _ in params}
    kept = [p for p in pairs if p.partition("=")[0] not in keys]
    kept.extend(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    return f"{base}?{'&'.join(kept)}{hash_mark}{fragment}"


def _m0004_add_link_location(conn: sqlite3.Connection) -> None:
    # The Location a visit without a query gets (destination + the link's UTM tags),
    # computed when the link is written so that loading a million links does no URL work.
    conn.execute("ALTER TABLE links ADD COLUMN location TEXT")
    rows = conn.execute(f"SELECT id, url, {', '.join(_V4_UTM_FIELDS)} FROM links").fetchall()
    conn.executemany(
        "UPDATE links SET location = ? WHERE id = ?",
        [(_v4_location(r["url"], r), r["id"]) for r in rows],
    )


# --- 0005 ---------------------------------------------------------------------------------
# The breakdown dimensions as 0005 stores them: related columns in one row.
_V5_DIM_COLUMNS: Final = {
    "geo": ("country", "region", "city"),
    "ua": ("device_type", "os", "browser"),
    "ref": ("source", "referrer_host"),
    "language": ("language",),
    "bot_kind": ("bot_kind",),
}
# The groups: (dim, key SQL over `l`, FROM clause giving `l`).
_V5_GROUP_SOURCES: Final = (
    *(
        (d, f"coalesce(l.{d}, '')", "links l")
        for d in ("campaign", "utm_source", "utm_medium", "utm_campaign")
    ),
    ("tag", "t.value", "links l CROSS JOIN json_each(l.tags) t"),
    ("domain", "CAST(l.domain_id AS TEXT)", "links l"),
)
_V5_BIG_ENDIAN: Final = sys.byteorder == "big"


def _v5_ids(blob: bytes) -> set[int]:
    arr = array.array("Q")
    arr.frombytes(blob)
    if _V5_BIG_ENDIAN:
        arr.byteswap()
    return set(arr)


def _v5_pack(ids: Iterable[int]) -> bytes:
    arr = array.array("Q", sorted(ids))
    if _V5_BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def _v5_chunk(ids: set[int], humans: set[int]) -> tuple[int, int, int, bytes, bytes]:
    """(seq, n, n_human, ids, bot_ids): sorted little-endian u64 ids, and those of the
    visitors without a human click."""
    bots = ids - humans
    return 0, len(ids), len(ids) - len(bots), _v5_pack(ids), _v5_pack(bots)


def _v5_counts(ids: set[int], humans: set[int]) -> tuple[int, int, int, bytes, bytes]:
    """A finished group-day: its counts, no ids."""
    return 0, len(ids), len(humans), b"", b""


def _v5_group_keys(row: Sequence[Any]) -> list[tuple[str, str]]:
    _id, campaign, source, medium, utm_campaign, tags, domain_id = row
    keys = [
        ("campaign", campaign or ""),
        ("utm_source", source or ""),
        ("utm_medium", medium or ""),
        ("utm_campaign", utm_campaign or ""),
    ]
    keys.extend(("tag", str(tag)) for tag in dict.fromkeys(orjson.loads(tags or "[]")))
    keys.append(("domain", str(domain_id)))
    return keys


def _m0005_rollups_for_big_ranges(conn: sqlite3.Connection) -> None:
    # Stats over thousands of links and weeks of clicks read too many rows from the first
    # rollups (a campaign group-by took 1 s at 10M clicks). This adds per-hour and per-day
    # totals, orders the breakdown rows so one dimension of one link is a contiguous range
    # (bot kinds no longer walk every dimension), and stores each link's visitors per day
    # as packed 8-byte ids: a group's unique visitors are a set union of a few blobs per
    # link instead of one b-tree row per visitor. The visitor tables are rowid tables: in a
    # WITHOUT ROWID table reading a row's counts also reads its big blobs (about 40x
    # slower here). The group rollups hold every link's numbers under its groups.
    _run(conn, _M0005_SQL)
    # The breakdowns keep related columns in one row: built again from the clicks the old
    # rollups held (those up to the watermark).
    for dim, columns in _V5_DIM_COLUMNS.items():
        value = " || char(31) || ".join(f"coalesce({c}, '')" for c in columns)
        conn.execute(
            "INSERT INTO link_dim_hour (link_id, dim, hour, value, clicks, humans) "
            f"SELECT link_id, '{dim}', ts / 3600000, {value}, count(*), "
            "sum(coalesce(bot_kind, '') = '') FROM clicks "
            "WHERE id <= (SELECT value FROM meta WHERE key = 'rollup_click_id') "
            "GROUP BY 1, 3, 4 ON CONFLICT (link_id, dim, hour, value) DO UPDATE SET "
            "clicks = clicks + excluded.clicks, humans = humans + excluded.humans"
        )
    cur = conn.execute(
        "SELECT link_id, day, visitor_id, human FROM link_day_visitor ORDER BY link_id, day"
    )
    for (link_id, day), group in itertools.groupby(cur, key=lambda r: (r[0], r[1])):
        ids: set[int] = set()
        humans: set[int] = set()
        for _l, _d, vid, human in group:
            v = int.from_bytes(bytes(vid)[:8].ljust(8, b"\0"), "little")
            ids.add(v)
            if human:
                humans.add(v)
        conn.execute(
            "INSERT INTO link_day_visitors (link_id, day, seq, n, n_human, ids, bot_ids) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (link_id, day, *_v5_chunk(ids, humans)),
        )
    conn.execute("DROP TABLE link_day_visitor")
    _v5_backfill_groups(conn)


def _v5_backfill_groups(conn: sqlite3.Connection) -> None:
    """Fill the group rollups from the link rollups, by each link's current groups."""
    for dim, key_sql, source in _V5_GROUP_SOURCES:
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
    keys_of = {
        row[0]: _v5_group_keys(tuple(row))
        for row in conn.execute(
            "SELECT id, campaign, utm_source, utm_medium, utm_campaign, tags, domain_id FROM links"
        )
    }
    conn.execute("CREATE INDEX link_day_visitors_day ON link_day_visitors (day)")
    days = [r[0] for r in conn.execute("SELECT DISTINCT day FROM link_day_visitors ORDER BY 1")]
    today = int(time.time()) // 86400
    for day in days:
        pack = _v5_counts if day < today else _v5_chunk  # a finished day keeps counts only
        sets: dict[tuple[str, str], tuple[set[int], set[int]]] = {}
        for link_id, ids, bots in conn.execute(
            "SELECT link_id, ids, bot_ids FROM link_day_visitors WHERE day = ?", (day,)
        ):
            id_set = _v5_ids(ids)
            human_set = id_set - _v5_ids(bots) if bots else set(id_set)
            for gk in keys_of.get(link_id, ()):
                entry = sets.get(gk)
                if entry is None:
                    entry = sets[gk] = (set(), set())
                entry[0].update(id_set)
                entry[1].update(human_set)
        conn.executemany(
            "INSERT INTO group_day_visitors (dim, key, day, seq, n, n_human, ids, bot_ids) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(d, k, day, *pack(a, h)) for (d, k), (a, h) in sets.items()],
        )
    conn.execute("DROP INDEX link_day_visitors_day")


# --- 0006 ---------------------------------------------------------------------------------
# Times a link may hold, as edge/catalog.py bounds them since 0006: 1970-01-01T00:00:00Z to
# 9999-12-31T23:59:59.999Z (what ISO 8601 and Python's datetime can show).
_V6_MIN_TIME_MS: Final = 0
_V6_MAX_TIME_MS: Final = 253402300799999
_V6_IPV6_CHARS: Final = frozenset("0123456789abcdef:.")

_M0006_SQL: Final = (
    "ALTER TABLE domains ADD COLUMN case_insensitive_slugs INTEGER NOT NULL DEFAULT 0",
    # Finds a slug that differs only in letter case (slugs are ASCII: NOCASE folds A-Z).
    "CREATE INDEX links_domain_slug_nocase ON links (domain_id, slug COLLATE NOCASE)",
    # An expiry outside the range stored before 0006 (e.g. -10^18) made every read of the
    # link fail: the nearest bound expires it exactly as before (at once, or never).
    f"UPDATE links SET expires_at = {_V6_MIN_TIME_MS} WHERE expires_at < {_V6_MIN_TIME_MS}",
    f"UPDATE links SET expires_at = {_V6_MAX_TIME_MS} WHERE expires_at > {_V6_MAX_TIME_MS}",
)


def _v6_ipv6_host(host: str) -> str | None:
    """`[2001:DB8:0::1]` -> `[2001:db8::1]`, None when it is no IPv6 literal
    (edge/urls.py ipv6_literal as of 0006)."""
    inner = host[1:-1].lower() if host.startswith("[") and host.endswith("]") else ""
    if not inner or not set(inner) <= _V6_IPV6_CHARS:
        return None
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        return None


def _m0006_slug_case_and_time_bounds(conn: sqlite3.Connection) -> None:
    _run(conn, _M0006_SQL)
    # IPv6 domains are matched in their canonical form since 0006: store them so (unless
    # the canonical form is taken already; such a domain keeps its old, unmatched host).
    for domain_id, host in conn.execute(
        "SELECT id, host FROM domains WHERE host LIKE '[%'"
    ).fetchall():
        canonical = _v6_ipv6_host(host)
        if canonical is None or canonical == host:
            continue
        taken = conn.execute("SELECT 1 FROM domains WHERE host = ?", (canonical,)).fetchone()
        if not taken:
            conn.execute("UPDATE domains SET host = ? WHERE id = ?", (canonical, domain_id))


# --- 0007 ---------------------------------------------------------------------------------
_M0007_SQL: Final = (
    # Per worker process (its random epoch): the highest batch seq whose clicks are
    # committed, written in the same transaction as those clicks: a batch resent after a
    # crash is recognised (edge/capture.py, edge/clicks.py).
    """CREATE TABLE ingest_progress (
        epoch INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    )""",
)


def _m0007_create_ingest_progress(conn: sqlite3.Connection) -> None:
    _run(conn, _M0007_SQL)


# --- 0008 ---------------------------------------------------------------------------------
_M0008_SQL: Final = (
    # redirect rules and A/B variants (JSON, edge/rules.py's stored form), click limits,
    # click ids for conversions, the attribution window, the launch (send) time
    "ALTER TABLE links ADD COLUMN rules TEXT",
    "ALTER TABLE links ADD COLUMN variants TEXT",
    "ALTER TABLE links ADD COLUMN max_clicks INTEGER",
    "ALTER TABLE links ADD COLUMN overflow_url TEXT",
    "ALTER TABLE links ADD COLUMN click_ids INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE links ADD COLUMN click_id_param TEXT",
    "ALTER TABLE links ADD COLUMN attribution_window_s INTEGER",
    "ALTER TABLE links ADD COLUMN launched_at INTEGER",
    "ALTER TABLE domains ADD COLUMN click_ids INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE domains ADD COLUMN postback_secret TEXT",
    # where each click went (edge/rules.py route index) and its click id (16 bytes, time
    # first: the partial index grows at its right edge, like the table)
    "ALTER TABLE clicks ADD COLUMN route INTEGER",
    "ALTER TABLE clicks ADD COLUMN click_id BLOB",
    "CREATE UNIQUE INDEX clicks_click_id ON clicks (click_id) WHERE click_id IS NOT NULL",
    # the collector reads the limited links (edge/catalog.py click_limits) at every change
    "CREATE INDEX links_limited ON links (id) WHERE max_clicks IS NOT NULL",
    # ...and the recent launches (scanner labels), and a campaign's links
    "CREATE INDEX links_launched ON links (launched_at) WHERE launched_at IS NOT NULL",
    "CREATE INDEX links_campaign ON links (campaign) WHERE campaign IS NOT NULL",
    # the clicks each limited link has spent of its budget (counted when written)
    """CREATE TABLE link_spent (
        link_id INTEGER PRIMARY KEY,
        spent INTEGER NOT NULL
    )""",
    """CREATE TABLE campaign_launches (
        campaign TEXT PRIMARY KEY,
        launched_at INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # what a token may do: read, links, events, admin (comma-separated)
    "ALTER TABLE api_tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin'",
)


def _m0008_rules_limits_click_ids(conn: sqlite3.Connection) -> None:
    _run(conn, _M0008_SQL)


# --- 0009 ---------------------------------------------------------------------------------
_M0009_SQL: Final = (
    # Conversions (edge/events.py): one row per accepted event, tied to its click. The
    # click's time, route, visitor id (and its UTC day) and humanity are copied in, so stats
    # never look a click up again; value in millionths (exact sums).
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        event_id TEXT,
        link_id INTEGER NOT NULL,
        click_id BLOB NOT NULL,
        click_ts INTEGER NOT NULL,
        route INTEGER,
        click_source TEXT,
        visitor_id BLOB,
        day INTEGER NOT NULL,
        human INTEGER NOT NULL,
        name TEXT NOT NULL,
        value_micros INTEGER,
        currency TEXT,
        occurred_at INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL
    )""",
    # idempotent per event_id; pixel events (anyone can send one) have their own namespace,
    # so a forged pixel can never take the id of a server-side event
    "CREATE UNIQUE INDEX events_event_id ON events (source = 'pixel', event_id) "
    "WHERE event_id IS NOT NULL",
    "CREATE INDEX events_link ON events (link_id, click_ts)",
    # repeat visitors: per link and UTC day, the visitors with two or more human clicks that
    # day, in the visitor chunk format (edge/visitors.py)
    """CREATE TABLE link_day_repeat (
        link_id INTEGER NOT NULL,
        day INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        n INTEGER NOT NULL,
        n_human INTEGER NOT NULL,
        ids BLOB NOT NULL,
        bot_ids BLOB NOT NULL,
        UNIQUE (link_id, day, seq)
    )""",
)


def _m0009_events(conn: sqlite3.Connection) -> None:
    _run(conn, _M0009_SQL)


# --- 0010 ---------------------------------------------------------------------------------
_M0010_SQL: Final = (
    # Which signal made a click a bot (geo/bots.py Verdict.reason: "crawlerdetect:semrushbot",
    # "linkedge:curl/", "head:method", ...); NULL for a human and for clicks written before.
    "ALTER TABLE clicks ADD COLUMN bot_reason TEXT",
)


def _m0010_add_click_bot_reason(conn: sqlite3.Connection) -> None:
    _run(conn, _M0010_SQL)


# --- 0013 ---------------------------------------------------------------------------------
# Alerts (admin/alerts.py), their delivery log (admin/notify.py) and destination checks
# (admin/checks.py). (11 and 12 are reserved for work elsewhere.)
_M0013_SQL: Final = (
    """CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        link_id INTEGER,
        campaign TEXT,
        kind TEXT NOT NULL,
        window_s INTEGER NOT NULL,
        threshold REAL,
        options TEXT NOT NULL DEFAULT '{}',
        notify TEXT NOT NULL DEFAULT '[]',
        enabled INTEGER NOT NULL DEFAULT 1,
        state TEXT NOT NULL DEFAULT 'ok',
        state_since INTEGER NOT NULL,
        value REAL,
        fired_at INTEGER,
        resolved_at INTEGER,
        failover_from TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    )""",
    """CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL,
        event TEXT NOT NULL,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        response INTEGER,
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    )""",
    "CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert_id, id)",
    """CREATE TABLE destination_checks (
        url TEXT PRIMARY KEY,
        checked_at INTEGER,
        ok INTEGER,
        status INTEGER,
        error_kind TEXT,
        error TEXT,
        last_good_at INTEGER,
        failing_since INTEGER,
        failures INTEGER NOT NULL DEFAULT 0,
        next_check_at INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
)


def _m0013_create_alerts(conn: sqlite3.Connection) -> None:
    _run(conn, _M0013_SQL)


# --- 0011 ---------------------------------------------------------------------------------
_M0011_SQL: Final = (
    # Every change to a link or domain (edge/changelog.py): when, which field, from, to,
    # through what (api/cli) and which token. Rare writes, read per link or campaign.
    """CREATE TABLE change_history (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        link_id INTEGER,
        domain_id INTEGER,
        field TEXT NOT NULL,
        before TEXT,
        after TEXT,
        token_id INTEGER,
        via TEXT NOT NULL
    )""",
    "CREATE INDEX change_history_link ON change_history (link_id, ts) WHERE link_id IS NOT NULL",
    "CREATE INDEX change_history_domain ON change_history (domain_id, ts) "
    "WHERE domain_id IS NOT NULL",
)


def _m0011_create_change_history(conn: sqlite3.Connection) -> None:
    _run(conn, _M0011_SQL)


# --- 0012 ---------------------------------------------------------------------------------
_M0012_SQL: Final = (
    # Baselines (admin/baselines.py) find a UTM source's links without reading every link
    # row, as links_campaign (0008) does a campaign's; links change rarely.
    "CREATE INDEX links_utm_source ON links (utm_source) WHERE utm_source IS NOT NULL",
)


def _m0012_index_links_by_source(conn: sqlite3.Connection) -> None:
    _run(conn, _M0012_SQL)


Migration = tuple[int, str, Callable[[sqlite3.Connection], None]]
MIGRATIONS: Final[list[Migration]] = [
    (1, "0001_create_links", _m0001_create_links),
    (2, "0002_create_clicks", _m0002_create_clicks),
    (3, "0003_create_tokens_and_utm_allow", _m0003_create_tokens_and_utm_allow),
    (4, "0004_add_link_location", _m0004_add_link_location),
    (5, "0005_rollups_for_big_ranges", _m0005_rollups_for_big_ranges),
    (6, "0006_slug_case_and_time_bounds", _m0006_slug_case_and_time_bounds),
    (7, "0007_create_ingest_progress", _m0007_create_ingest_progress),
    (8, "0008_rules_limits_click_ids", _m0008_rules_limits_click_ids),
    (9, "0009_events", _m0009_events),
    (10, "0010_add_click_bot_reason", _m0010_add_click_bot_reason),
    (11, "0011_create_change_history", _m0011_create_change_history),
    (12, "0012_index_links_by_source", _m0012_index_links_by_source),
    (13, "0013_create_alerts", _m0013_create_alerts),
]
# Numbers need not be consecutive (a number may be reserved for work elsewhere): the latest
# is the highest, and a database lacks a migration when its number is not recorded.
LATEST: Final = max(number for number, _name, _fn in MIGRATIONS)


def pending(conn: sqlite3.Connection) -> list[str]:
    """The names of the migrations this database lacks (none read: a fresh database)."""
    try:
        done = {int(r[0]) for r in conn.execute("SELECT id FROM schema_migrations")}
    except sqlite3.OperationalError:  # no schema_migrations table yet
        done = set()
    return [name for number, name, _fn in MIGRATIONS if number not in done]


def migrate(conn: sqlite3.Connection, announce: Callable[[str], None] | None = None) -> list[str]:
    """Apply the migrations this database lacks; return the names applied. `announce` is
    told each one's name before it runs (a long one, such as 0005, takes minutes)."""
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
            if announce is not None:
                announce(name)
            apply(conn)
            conn.execute(
                "INSERT INTO schema_migrations (id, name, applied_at) VALUES (?, ?, ?)",
                (number, name, now_ms()),
            )
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {max(number, current)}")
        applied.append(name)
    return applied
