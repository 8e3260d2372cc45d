"""Clicks and their rollups: the click columns, the insert, the roll-up, the group keys.

Rules:
- `clicks` is append-only (rowid and `ts` grow with time, one index on `ts`); per-link and
  per-group numbers come from the rollup tables, never from a (link_id, ts) index:
    link_minute / link_hour / link_day   (link_id, t)               clicks, humans
    link_dim_hour   (link_id, dim, hour, value)   clicks, humans: breakdowns, bot kinds
                    (a value joins related columns with DIM_SEPARATOR: DIM_COLUMNS)
    link_day_visitors  (link_id, UTC day, chunk)  packed visitor ids (edge/visitors.py)
    group_minute / quarter / hour (per kind) / day (per kind), group_day_visitors: the
    same per (dim, key) of each link's current groups (GROUP_DIMS)
- One definition of how clicks aggregate (`aggregate_sql`): the roll-up writes its
  answers into the tables, and stats read the same aggregates of the clicks not rolled
  up yet. SQLite does the aggregation (and the visitor de-duplication) in its own loop,
  releasing the GIL; Python sees one row per aggregate, never one per click.
- Roll-ups go by click id range above a watermark (`meta.rollup_click_id`), in the same
  transaction that moves it: each click is counted exactly once, whatever crashes.
- One definition of a link's groups: GROUP_SOURCES (SQL) and `group_keys` (Python) say the
  same thing; a domain's key is its id (stats show its host).
- Every function here runs inside the caller's Transaction (edge/db.py) unless it says so.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import orjson

from edge.db import current_rev, insert_rows
from edge.rules import ROUTES_PER_LINK
from edge.visitors import (
    CHUNK_COLUMNS,
    DAY_S,
    ChunkCounts,
    ChunkSets,
    chunk,
    counts_only,
    has_counts_only,
    has_human,
    mark_stale,
    read_chunk,
    visitor_int,
    visitor_sets,
    write_chunks,
)

# --- clicks ----------------------------------------------------------------------------------

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
    "route",
    "click_id",
    "bot_reason",
)
_INSERT_CLICK_HEAD: Final = f"INSERT INTO clicks ({', '.join(CLICK_COLUMNS)})"


def insert_clicks(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    """Append enriched click rows (CLICK_COLUMNS order); return their id range."""
    first = conn.execute("SELECT coalesce(max(id), 0) FROM clicks").fetchone()[0] + 1
    insert_rows(conn, _INSERT_CLICK_HEAD, rows)
    return first, first + len(rows) - 1


def rollup_watermark(conn: sqlite3.Connection) -> int:
    """The highest click id the rollups hold."""
    return int(conn.execute("SELECT value FROM meta WHERE key = 'rollup_click_id'").fetchone()[0])


@contextlib.contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[int]:
    """One read transaction (a consistent WAL snapshot) around a set of queries, yielding
    the rollup watermark: clicks with a higher id are written but not rolled up yet."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        yield rollup_watermark(conn)
    finally:
        if own:
            conn.execute("COMMIT")


# --- how clicks aggregate --------------------------------------------------------------------

# The breakdowns kept per link per hour (link_dim_hour): dim -> the click columns its value
# joins with DIM_SEPARATOR. Columns read together share a row (a country, its region and
# city; a device type, OS and browser; a source and referrer host), which halves the rows
# written per click; stats split them back into one list per column.
DIM_COLUMNS: Final = {
    "geo": ("country", "region", "city"),
    "ua": ("device_type", "os", "browser"),
    "ref": ("source", "referrer_host"),
    "language": ("language",),
    "bot_kind": ("bot_kind",),
}
DIM_SEPARATOR: Final = "\x1f"  # ASCII unit separator: in no GeoIP, UA or host value
HUMAN_SQL: Final = "coalesce(c.bot_kind, '') = ''"


def _dim_value_sql(columns: Sequence[str]) -> str:
    return " || char(31) || ".join(f"coalesce(c.{c}, '')" for c in columns)


def aggregate_sql(
    kind: str,
    source: str,
    where: str,
    dims: Iterable[str] | None = None,
    owner: str = "c.link_id",
) -> list[str]:
    """The SELECTs that aggregate the clicks `c` of `source` matching `where` per `owner`
    (the link, or ROUTE_OWNER_SQL: the link's route under its route key):
    - "minutes": (link_id, minute, bot kind or '', clicks)
    - "dims": per stored dimension (all, or `dims`), (link_id, dim, hour, value, clicks,
      humans)
    - "visitors": (link_id, UTC day, visitor id, 1 if any click of it was human), one row
      per distinct visitor of a link and day (clicks without a visitor id left out).
    - "visitor_clicks": the "visitors" rows with a fifth column, the visitor's human clicks
      (the roll-up reads both in one pass: repeat visitors need the counts)."""
    if kind == "minutes":
        return [
            f"SELECT {owner}, c.ts / 60000, coalesce(c.bot_kind, ''), count(*) "
            f"FROM {source} WHERE {where} GROUP BY 1, 2, 3"
        ]
    if kind == "dims":
        return [
            f"SELECT {owner}, '{dim}', c.ts / 3600000, {_dim_value_sql(columns)}, count(*), "
            f"sum({HUMAN_SQL}) FROM {source} WHERE {where} GROUP BY 1, 3, 4"
            for dim, columns in DIM_COLUMNS.items()
            if dims is None or dim in dims
        ]
    if kind == "visitors":
        return [
            f"SELECT {owner}, c.ts / 86400000, c.visitor_id, max({HUMAN_SQL}) "
            f"FROM {source} WHERE {where} AND c.visitor_id IS NOT NULL GROUP BY 1, 2, 3"
        ]
    if kind == "visitor_clicks":
        return [
            f"SELECT {owner}, c.ts / 86400000, c.visitor_id, max({HUMAN_SQL}), sum({HUMAN_SQL}) "
            f"FROM {source} WHERE {where} AND c.visitor_id IS NOT NULL GROUP BY 1, 2, 3"
        ]
    raise ValueError(kind)


# Per route: a routed link's clicks (edge/rules.py route index, stored on each click) are
# rolled up a second time under the route's key, a negative id no link has
# (rules.route_key), into the same link tables: every per-link read (totals, series,
# breakdowns, uniques) works per route unchanged, and costs what it costs per link.
ROUTE_OWNER_SQL: Final = f"-(c.link_id * {ROUTES_PER_LINK} + c.route)"
ROUTED_SQL: Final = "c.route IS NOT NULL"


def visitors_by_link_day(rows: Iterable[Sequence[Any]]) -> dict[tuple[int, int], ChunkSets]:
    """ "visitors" aggregate rows -> (link, day) -> (visitors, human visitors) as ints."""
    out: dict[tuple[int, int], ChunkSets] = {}
    for link_id, day, vid, human in rows:
        entry = out.get((link_id, day))
        if entry is None:
            entry = out[(link_id, day)] = (set(), set())
        v = visitor_int(vid)
        entry[0].add(v)
        if human:
            entry[1].add(v)
    return out


# --- groups ----------------------------------------------------------------------------------
# The fields stats group links by. The group rollups hold every link's clicks under each
# of its current groups, so a group-by over all links reads a few rows per group instead
# of rows per link. They follow the links: a change of a link's campaign, UTM fields or
# tags, or its purge, moves the link's history between groups in the same transaction
# (move_link_groups); the visitors of a group it left are rebuilt afterwards
# (group_day_stale, rebuild_stale_group_day).
GROUP_DIMS: Final = ("campaign", "utm_source", "utm_medium", "utm_campaign", "tag", "domain")
GroupKey = tuple[str, str]  # (dim, key); '' is "none"; a domain's key is its id as text
GROUP_KEYS_SELECT: Final = (
    "SELECT id, campaign, utm_source, utm_medium, utm_campaign, tags, domain_id FROM links"
)
# dim -> (key SQL over `l`, FROM clause giving `l`): the same keys as group_keys(), in SQL.
GROUP_SOURCES: Final[dict[str, tuple[str, str]]] = {
    **{d: (f"coalesce(l.{d}, '')", "links l") for d in GROUP_DIMS[:4]},
    "tag": ("t.value", "links l CROSS JOIN json_each(l.tags) t"),
    "domain": ("CAST(l.domain_id AS TEXT)", "links l"),
}


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


def link_group_keys(conn: sqlite3.Connection, link_id: int) -> tuple[GroupKey, ...]:
    row = conn.execute(f"{GROUP_KEYS_SELECT} WHERE id = ?", (link_id,)).fetchone()
    return () if row is None else group_keys(tuple(row))


def group_members_sql(dim: str) -> tuple[str, str]:
    """(FROM clause giving `l`, condition on `l` with one `?` for the key): a group's
    links."""
    key_sql, source = GROUP_SOURCES[dim]
    return source, f"{key_sql} = ?"


# Links whose groups the roll-up remembers between writes.
_KEY_CACHE_MAX: Final = 200_000


class RollupState:
    """What the roll-up remembers between writes: the visitor chunks per (link or group,
    day) (visitors.ChunkCounts), and the groups of recently clicked links, valid while the
    links' revision stays the same (read inside the writing transaction, so an edit is
    never missed). Used on the writer's thread only."""

    def __init__(self) -> None:
        self.chunks = ChunkCounts()
        self.repeat_chunks = ChunkCounts()  # of link_day_repeat
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


def move_link_groups(
    conn: sqlite3.Connection, link_id: int, old: tuple[GroupKey, ...], new: tuple[GroupKey, ...]
) -> None:
    """Move a link's rolled-up history from the groups it left to the ones it joined (after
    the link row changed). Counts are added and subtracted; the link's visitors join its
    new groups' unions; the group-days it left are marked for a rebuild from their
    remaining links."""
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
        for table in ("group_minute", "group_quarter", "group_hour", "group_day"):
            conn.execute(
                f"DELETE FROM {table} WHERE dim = ? AND key = ? AND clicks = 0", (dim, key)
            )
    days = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT day FROM link_day_visitors WHERE link_id = ?", (link_id,)
        )
    ]
    if not days:
        return
    for day in days if joined else ():  # a union only grows: add the link's visitors
        ids, humans = visitor_sets(
            conn,
            "SELECT ids, bot_ids FROM link_day_visitors WHERE link_id = ? AND day = ?",
            (link_id, day),
        )
        for dim, key in joined:
            # the link's own chunk in this group (-id); one left from an earlier stay is
            # folded in (a group the link left is rebuilt without it, so rarely any)
            mine = visitor_sets(
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
            if has_counts_only(
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


def rebuild_stale_group_day(conn: sqlite3.Connection, today: int | None = None) -> bool:
    """Rebuild the visitors of one group-day a link left from the group's links; False
    when none waits. `today`: the current UTC day (an earlier one keeps counts only)."""
    if today is None:
        today = int(time.time()) // DAY_S
    row = conn.execute("SELECT dim, key, day FROM group_day_stale LIMIT 1").fetchone()
    if row is None:
        return False
    dim, key, day = row
    source, cond = group_members_sql(dim)
    ids, humans = visitor_sets(
        conn,
        f"SELECT v.ids, v.bot_ids FROM {source} CROSS JOIN link_day_visitors v "
        f"ON v.link_id = l.id AND v.day = ? WHERE {cond}",
        (day, key),
    )
    where = "dim = ? AND key = ? AND day = ?"
    conn.execute(f"DELETE FROM group_day_visitors WHERE {where}", (dim, key, day))
    if ids:
        pack = counts_only if day < today else chunk
        conn.execute(
            f"INSERT INTO group_day_visitors (dim, key, day, {CHUNK_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (dim, key, day, *pack(0, ids, humans)),
        )
    conn.execute(f"DELETE FROM group_day_stale WHERE {where}", (dim, key, day))
    return True


# --- the roll-up -----------------------------------------------------------------------------

ROLL_UP_MAX_CLICKS: Final = 100_000  # clicks rolled up per transaction when catching up


def _add(acc: dict[Any, list[int]], key: Any, clicks: int, humans: int) -> None:
    entry = acc.get(key)
    if entry is None:
        acc[key] = [clicks, humans]
    else:
        entry[0] += clicks
        entry[1] += humans


_UPSERT_COUNTS: Final = "clicks = clicks + excluded.clicks, humans = humans + excluded.humans"


Minutes = dict[tuple[int, int], list[int]]


def _roll_up_owners(
    conn: sqlite3.Connection,
    span: tuple[int, int],
    where: str,
    state: RollupState,
    owner: str = "c.link_id",
    repeats: dict[tuple[int, int], ChunkSets] | None = None,
) -> tuple[Minutes, dict[tuple[int, int, str], int], Minutes, dict[tuple[int, int], ChunkSets]]:
    """The link tables' share of a roll-up, per `owner` (links, or their routes): minutes,
    hours, days, breakdowns, visitors. Returns what the group roll-up reuses."""
    minutes: Minutes = {}
    hour_kinds: dict[tuple[int, int, str], int] = {}
    (minutes_sql,) = aggregate_sql("minutes", "clicks c", where, owner=owner)
    for link_id, minute, kind, n in conn.execute(minutes_sql, span):
        _add(minutes, (link_id, minute), n, 0 if kind else n)
        hk = (link_id, minute // 60, kind)
        hour_kinds[hk] = hour_kinds.get(hk, 0) + n
    hours: Minutes = {}
    days: Minutes = {}
    for (link_id, minute), (clicks, humans) in minutes.items():
        _add(hours, (link_id, minute // 60), clicks, humans)
        _add(days, (link_id, minute // 1440), clicks, humans)
    for table, column, link_rows in (
        ("link_minute", "minute", minutes),
        ("link_hour", "hour", hours),
        ("link_day", "day", days),
    ):
        insert_rows(
            conn,
            f"INSERT INTO {table} (link_id, {column}, clicks, humans)",
            [(k[0], k[1], v[0], v[1]) for k, v in link_rows.items()],
            f"ON CONFLICT (link_id, {column}) DO UPDATE SET {_UPSERT_COUNTS}",
        )
    for sql in aggregate_sql("dims", "clicks c", where, owner=owner):
        conn.execute(
            f"INSERT INTO link_dim_hour (link_id, dim, hour, value, clicks, humans) {sql} "
            f"ON CONFLICT (link_id, dim, hour, value) DO UPDATE SET {_UPSERT_COUNTS}",
            span,
        )
    if repeats is None:
        (visitors_sql,) = aggregate_sql("visitors", "clicks c", where, owner=owner)
        visitors = visitors_by_link_day(conn.execute(visitors_sql, span))
    else:  # the links: their visitors, and who of them is now a repeat visitor
        (visitors_sql,) = aggregate_sql("visitor_clicks", "clicks c", where, owner=owner)
        rows = conn.execute(visitors_sql, span).fetchall()
        visitors = visitors_by_link_day(r[:4] for r in rows)
        repeats.update(_repeaters(conn, rows))  # before this span's chunks are written
    write_chunks(conn, "link_day_visitors", ("link_id",), visitors, span[1], state.chunks)
    return minutes, hour_kinds, hours, visitors


def repeat_visitors(
    conn: sqlite3.Connection, span: tuple[int, int]
) -> dict[tuple[int, int], ChunkSets]:
    """Per (link, UTC day): the visitors of the span who now have two or more human clicks
    that day: two in the span, or one in the span and one before it (a human visitor in
    the link-day's stored chunks, looked up by binary search; read before this span's
    chunk is written)."""
    (sql,) = aggregate_sql("visitor_clicks", "clicks c", "c.id BETWEEN ? AND ?")
    return _repeaters(conn, conn.execute(sql, span))


def _repeaters(
    conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]
) -> dict[tuple[int, int], ChunkSets]:
    """repeat_visitors from "visitor_clicks" rows."""
    out: dict[tuple[int, int], ChunkSets] = {}
    singles: dict[tuple[int, int], list[int]] = {}
    for link_id, day, vid, _human, n in rows:
        if not n:
            continue
        v = visitor_int(vid)
        if n >= 2:
            entry = out.setdefault((link_id, day), (set(), set()))
            entry[0].add(v)
            entry[1].add(v)
        else:
            singles.setdefault((link_id, day), []).append(v)
    for (link_id, day), ids in singles.items():
        stored = [
            read_chunk(n, n_human, blob, bots)
            for n, n_human, blob, bots in conn.execute(
                "SELECT n, n_human, ids, bot_ids FROM link_day_visitors "
                "WHERE link_id = ? AND day = ?",
                (link_id, day),
            )
        ]
        if not stored:
            continue
        for v in ids:
            if any(has_human(chunk_, v) for chunk_ in stored):
                entry = out.setdefault((link_id, day), (set(), set()))
                entry[0].add(v)
                entry[1].add(v)
    return out


def roll_up(conn: sqlite3.Connection, state: RollupState | None = None, limit: int = 0) -> int:
    """Add the clicks above the watermark to every rollup table and move the watermark;
    return how many clicks that was. With `limit`, at most that many. The rollups are
    derived from the `clicks` rows themselves, by id range, so the flusher and a catch-up
    after a crash are the same code, and a click is counted once whatever happened.

    Per link: minutes, hours and days of clicks and humans, the breakdown dimensions per
    hour, and the day's visitors as packed ids. Per group (each link's current campaign,
    UTM fields, tags, domain, read in this same transaction): minutes, quarters, hours
    and days per bot kind, and visitors."""
    state = RollupState() if state is None else state
    lo = rollup_watermark(conn) + 1
    hi = conn.execute("SELECT coalesce(max(id), 0) FROM clicks").fetchone()[0]
    if limit:
        hi = min(hi, lo + limit - 1)
    if hi < lo:
        return 0
    span = (lo, hi)
    where = "c.id BETWEEN ? AND ?"
    repeats: dict[tuple[int, int], ChunkSets] = {}
    minutes, hour_kinds, hours, visitors = _roll_up_owners(
        conn, span, where, state, repeats=repeats
    )
    routed = f"{where} AND {ROUTED_SQL}"
    if conn.execute(f"SELECT 1 FROM clicks c WHERE {routed} LIMIT 1", span).fetchone():
        _roll_up_owners(conn, span, routed, state, ROUTE_OWNER_SQL)
    write_chunks(conn, "link_day_repeat", ("link_id",), repeats, hi, state.repeat_chunks)

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
    g_visitors: dict[tuple[str, str, int], ChunkSets] = {}
    for (link_id, day), (v_ids, v_humans) in visitors.items():
        for dim, key in keys_of.get(link_id, ()):
            entry = g_visitors.get((dim, key, day))
            if entry is None:
                g_visitors[(dim, key, day)] = (set(v_ids), set(v_humans))
            else:
                entry[0].update(v_ids)
                entry[1].update(v_humans)
    g_quarters: dict[tuple[str, str, int], list[int]] = {}
    for (dim, key, minute), (clicks, humans) in g_minutes.items():
        _add(g_quarters, (dim, key, minute // 15), clicks, humans)
    for table, column, group_rows in (
        ("group_minute", "minute", g_minutes),
        ("group_quarter", "quarter", g_quarters),
    ):
        insert_rows(
            conn,
            f"INSERT INTO {table} (dim, key, {column}, clicks, humans)",
            [(*k, v[0], v[1]) for k, v in group_rows.items()],
            f"ON CONFLICT (dim, key, {column}) DO UPDATE SET {_UPSERT_COUNTS}",
        )
    for table, column, kind_rows in (("group_hour", "hour", g_hours), ("group_day", "day", g_days)):
        insert_rows(
            conn,
            f"INSERT INTO {table} (dim, key, {column}, kind, clicks)",
            [(*k, v) for k, v in kind_rows.items()],
            f"ON CONFLICT (dim, key, {column}, kind) DO UPDATE SET "
            "clicks = clicks + excluded.clicks",
        )
    write_chunks(
        conn,
        "group_day_visitors",
        ("dim", "key"),
        g_visitors,
        hi,
        state.chunks,
        counts_when_done=True,
    )
    conn.execute("UPDATE meta SET value = ? WHERE key = 'rollup_click_id'", (hi,))
    return int(hi) - lo + 1
