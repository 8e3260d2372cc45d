"""The numbers the admin side shows: the reads behind every stats answer.

Rules of this module:
- All SQL here only reads (writes live in edge/catalog.py and edge/rollups.py). Functions
  take a plain `sqlite3.Connection` and are synchronous: the API runs them on its own
  stats connection (an aiosqlite thread, so a slow query never delays link sync or click
  writes), the CLI calls them directly on the SQLite file, with or without a server.
- Numbers come from the rollups (edge/rollups.py has the table map), never from a scan of
  `clicks` by link. Link queries walk `links` first and seek into a rollup's primary key
  per link (`links l CROSS JOIN rollup r ON r.link_id = l.id AND <range>`: SQLite never
  reorders a CROSS JOIN), so a campaign of 50 links reads those links' rows and nothing
  else. A group-by over all links reads the group rollups instead (see _Selection).
- The clicks written after the rollup watermark (the "tail") are aggregated by SQLite with
  the roll-up's own definition (rollups.aggregate_sql) and folded in: answers are exact
  and current, and Python sees one row per aggregate, not one per click.
- Resolution follows the rollups and is part of the contract (docs/api.md): clicks and the
  series are exact to the minute, breakdowns cover the whole UTC hours that overlap the
  range, unique visitors the whole UTC days. The visitor id's salt rotates every UTC day,
  so uniques over several days are the sum of each day's distinct visitors.
- The raw `clicks` table is read only by time range (its `ts` index), for launch
  checkpoints: at most the hour after a link's launch (or first human click).
"""

from __future__ import annotations

import bisect
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Final

import orjson

from admin.timerange import TimeRange, bucket_starts, iso_local, iso_ms
from edge import rollups, visitors
from edge.catalog import LinkFilter, domain_hosts, link_names
from edge.errors import InvalidField
from edge.rules import ROUTES_PER_LINK, route_key

# --- limits --------------------------------------------------------------------------------
# Breakdown lists (countries, browsers, ...) return this many values unless asked (top=).
DEFAULT_TOP: Final = 10
MAX_TOP: Final = 100
# Listings: links per page and groups per group-by answer.
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 1000
DEFAULT_GROUPS: Final = 100
MAX_GROUPS: Final = 1000
# Breakdown dimensions (rollups.DIM_COLUMNS) and their API names.
DIMENSION_NAMES: Final = {
    "referrer_host": "referrer_hosts",
    "source": "sources",
    "country": "countries",
    "region": "regions",
    "city": "cities",
    "device_type": "device_types",
    "browser": "browsers",
    "os": "oses",
    "language": "languages",
}
BOT_KIND_DIM: Final = "bot_kind"

GROUP_BY: Final = ("campaign", "utm_source", "utm_medium", "utm_campaign", "tag", "domain", "link")

# Launch checkpoints: minutes after a link's launch, else its first human click.
CHECKPOINT_MINUTES: Final = (15, 30, 60)


# --- stats of a selection of links ----------------------------------------------------------
#
# How a stats answer is computed. Two sources answer the same questions:
# - the link rollups: every query walks the selected links and seeks into a rollup's key
#   per link; Python folds the per-link rows into the answer's groups (one group, None, for
#   a link or a selection; campaigns, tags, ... for group_by). Right for a link, a campaign,
#   any filtered selection.
# - the group rollups (group_minute/quarter/hour/day, group_day_visitors): a group-by over all
#   links by campaign, UTM field, tag or domain reads a few rows per group, not per link.
# A range is covered by the coarsest rows that fit inside it and inside each bucket of its
# series: whole UTC days from the day table, whole hours from the hour table, the minutes
# at the edges (_cover). Clicks written after the rollup watermark (the "tail") are folded
# in the same way, so answers are exact and current.

# The group key of each group_by, as SQL over `links l` (and `json_each(l.tags) t`): the
# rollups' own definition (a domain's key is its id; answers show its host), and the link.
GROUP_KEY_SQL: Final = {
    **{dim: key_sql for dim, (key_sql, _source) in rollups.GROUP_SOURCES.items()},
    "link": "l.id",
}
# Click columns of the breakdown dimensions.
_TAIL_DIMS: Final = (*DIMENSION_NAMES, BOT_KIND_DIM)
# Where each is kept in link_dim_hour: (stored dimension, position in its value).
_STORED_DIM: Final = {
    column: (stored, i)
    for stored, columns in rollups.DIM_COLUMNS.items()
    for i, column in enumerate(columns)
}

# (table, time column, minutes per unit), coarsest first.
_LINK_LEVELS: Final = (
    ("link_day", "day", 1440),
    ("link_hour", "hour", 60),
    ("link_minute", "minute", 1),
)
_GROUP_LEVELS: Final = (
    ("group_day", "day", 1440),
    ("group_hour", "hour", 60),
    ("group_quarter", "quarter", 15),
    ("group_minute", "minute", 1),
)
_MAX_RANGES_PER_QUERY: Final = 16

Breakdown = dict[str, dict[str, list[int]]]  # dim -> value -> [clicks, humans]
GroupsOf = dict[int, list[Any]]  # link id -> its group keys
Pieces = list[list[tuple[int, int]]]  # per level: inclusive ranges of that level's unit


def _cover(lo: int, hi: int, sizes: Sequence[int], level: int, out: Pieces) -> None:
    """Minutes [lo, hi) as whole units of sizes[level:], coarsest first."""
    if lo >= hi:
        return
    size = sizes[level]
    if size == 1:
        out[level].append((lo, hi - 1))
        return
    a, b = -(-lo // size), hi // size
    if a < b:
        out[level].append((a, b - 1))
        _cover(lo, a * size, sizes, level + 1, out)
        _cover(b * size, hi, sizes, level + 1, out)
    else:
        _cover(lo, hi, sizes, level + 1, out)


def _pieces(rng: TimeRange, starts: Sequence[int], sizes: Sequence[int]) -> Pieces:
    """The range's minutes as unit ranges per level; no piece crosses a series bucket."""
    m_first, m_last = rng.minutes
    cuts = [m_first, *(s // 60 for s in starts[1:] if m_first < s // 60 <= m_last), m_last + 1]
    out: Pieces = [[] for _ in sizes]
    for lo, hi in itertools.pairwise(cuts):
        _cover(lo, hi, sizes, 0, out)
    merged: Pieces = []
    for ranges in out:
        level: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges):
            if level and lo <= level[-1][1] + 1:
                level[-1] = (level[-1][0], max(hi, level[-1][1]))
            else:
                level.append((lo, hi))
        merged.append(level)
    return merged


def _ranges_sql(ranges: Sequence[tuple[int, int]]) -> tuple[str, list[int]]:
    """`(VALUES (lo, hi), ...) rr` to join before a rollup, with `t BETWEEN rr.column1 AND
    rr.column2` in its ON clause: each range is then a seek into the rollup's key. (With
    `t BETWEEN a AND b OR t BETWEEN c AND d` SQLite, without ANALYZE statistics, reads the
    link's or group's whole history instead.)"""
    values = ", ".join("(?, ?)" for _ in ranges)
    return f"(VALUES {values}) rr", [v for r in ranges for v in r]


def _batches(ranges: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(ranges), _MAX_RANGES_PER_QUERY):
        yield ranges[i : i + _MAX_RANGES_PER_QUERY]


def _tuples(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
    """A cursor yielding plain tuples (sqlite3.Row costs more on big answers)."""
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(sql, params)


def _from_links(rollup: str, alias: str, range_clause: str, owner: str = "l.id") -> str:
    """`FROM links l CROSS JOIN <rollup> <alias> ON ...`: links first, then a seek into the
    rollup's primary key per link (SQLite never reorders a CROSS JOIN); `owner`: the
    rollup key of `l` (the link, or one of its routes: edge/rules.py route_key)."""
    return (
        f"FROM links l CROSS JOIN {rollup} {alias} ON {alias}.link_id = {owner} AND {range_clause}"
    )


def route_owner_sql(route: int | None) -> str:
    """The rollup key of `links l` for a route index (edge/rules.py route_key), or the link."""
    if route is None:
        return "l.id"
    return f"-(l.id * {ROUTES_PER_LINK} + {int(route)})"


def _ids_clause(link_ids: Sequence[int] | None) -> tuple[str, list[Any]]:
    if link_ids is None:
        return "", []
    return " AND l.id IN (SELECT value FROM json_each(?))", [orjson.dumps(list(link_ids)).decode()]


class _Selection:
    """The links of a stats answer and their groups, read in one snapshot."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        flt: LinkFilter,
        rng: TimeRange,
        group_by: str | None,
        watermark: int,
        route: int | None = None,
    ) -> None:
        self.conn = conn
        self.rng = rng
        # a route of the links (edge/rules.py index): its own rollup rows (route_key)
        self.route = route
        self.owner = route_owner_sql(route)
        self.where, self.params = flt.where()
        self.starts = bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
        # The group rollups answer a group-by over every link (and hold the domain's id).
        self.group_dim = (
            group_by
            if group_by in rollups.GROUP_DIMS and self.where == "1" and route is None
            else None
        )
        self.sizes: dict[Any, int] = {}
        self.groups_of: GroupsOf = {}
        self.label: dict[Any, Any] = {}  # a group rollup key -> the answer's key
        # group rollup rows read once for totals and reused for the series
        self._group_rows: dict[str | None, tuple[set[Any], list[tuple[Any, int, int, int]]]] = {}
        if self.group_dim is not None:
            key_sql, source = rollups.GROUP_SOURCES[self.group_dim]
            for key, n in _tuples(conn, f"SELECT {key_sql}, count(*) FROM {source} GROUP BY 1", ()):
                self.sizes[key] = n
        else:
            key_sql = "NULL" if group_by is None else GROUP_KEY_SQL[group_by]
            tags = ", json_each(l.tags) t" if group_by == "tag" else ""
            for link_id, key in _tuples(
                conn, f"SELECT l.id, {key_sql} FROM links l{tags} WHERE {self.where}", self.params
            ):
                self.groups_of.setdefault(link_id, []).append(key)
                self.sizes[key] = self.sizes.get(key, 0) + 1
        if group_by == "domain":
            hosts = domain_hosts(conn)
            self.label = {k: hosts.get(int(k), k) for k in self.sizes}
        self.watermark = watermark
        # (link, minute, clicks, humans) of the clicks not rolled up yet
        self.tail_minutes = [
            (link_id, minute, n, 0 if kind else n)
            for link_id, minute, kind, n in self._tail("minutes")
        ]
        if self.group_dim is not None:
            ids = sorted({row[0] for row in self.tail_minutes})
            for row in _tuples(
                conn,
                f"{rollups.GROUP_KEYS_SELECT} WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(ids).decode(),),
            ):
                self.groups_of[row[0]] = [
                    k for d, k in rollups.group_keys(row) if d == self.group_dim
                ]

    def _tail(self, kind: str, dims: Sequence[str] | None = None) -> list[tuple[Any, ...]]:
        """rollups.aggregate_sql(kind) over the selection's clicks written after the
        watermark (at most the range's days).

        The flusher adds clicks to the rollups about once a second (longer under heavy
        load), so without these the newest clicks would be missing. The scan is by rowid
        (`clicks.id > watermark`; NOT INDEXED keeps SQLite from preferring the ts index),
        so it costs the clicks not rolled up and no more; SQLite aggregates them.
        """
        d_first, d_last = self.rng.days
        where = f"c.id > ? AND c.ts >= ? AND c.ts < ? AND {self.where}"
        if self.route is not None:
            where += f" AND c.route = {int(self.route)}"
        params = (self.watermark, d_first * 86400000, (d_last + 1) * 86400000, *self.params)
        out: list[tuple[Any, ...]] = []
        for sql in rollups.aggregate_sql(
            kind, "clicks c NOT INDEXED CROSS JOIN links l ON l.id = c.link_id", where, dims
        ):
            out.extend(_tuples(self.conn, sql, params))
        return out

    def _keys_of_link(self, link_id: int) -> list[Any]:
        return self.groups_of.get(link_id, [])

    # -- clicks: totals and series --

    def _link_unit_rows(
        self, ids: list[int] | None, per_link_totals: bool
    ) -> Iterator[tuple[int, int, int, int]]:
        """(link, minute the row starts at, clicks, humans) over the range's pieces; with
        `per_link_totals`, one row per link and level (minute -1)."""
        sizes = [size for _t, _c, size in _LINK_LEVELS]
        if self.rng.interval != "day":
            sizes = sizes[1:] if self.rng.interval == "hour" else sizes[2:]
        levels = [lv for lv in _LINK_LEVELS if lv[2] in sizes]
        pieces = _pieces(self.rng, self.starts, sizes)
        extra, extra_params = _ids_clause(ids)
        for (table, column, size), ranges in zip(levels, pieces, strict=True):
            for batch in _batches(ranges):
                rr, params = _ranges_sql(batch)
                source = (
                    f"FROM links l CROSS JOIN {rr} CROSS JOIN {table} r "
                    f"ON r.link_id = {self.owner} AND r.{column} BETWEEN rr.column1 AND rr.column2"
                )
                if per_link_totals:
                    sql = (
                        f"SELECT l.id, -1, sum(r.clicks), sum(r.humans) "
                        f"{source} WHERE {self.where}{extra} GROUP BY l.id"
                    )
                else:
                    sql = (
                        f"SELECT l.id, r.{column} * {size}, r.clicks, r.humans "
                        f"{source} WHERE {self.where}{extra}"
                    )
                yield from _tuples(self.conn, sql, (*params, *self.params, *extra_params))

    def _group_unit_rows(
        self, keys: set[Any], dim: str | None = None
    ) -> list[tuple[Any, int, int, int]]:
        """(group key, minute the row starts at, clicks, humans) from the group rollups
        (the day and hour tables hold clicks per kind: '' is human)."""
        dim = dim or self.group_dim
        cached = self._group_rows.get(dim)
        if cached is not None and keys <= cached[0]:
            return [r for r in cached[1] if r[0] in keys]
        # every real UTC offset is a multiple of 15 minutes: quarter hours fill the hour
        # and day buckets of zones whose hours are not UTC hours (Asia/Kolkata)
        sizes = {"minute": [1], "hour": [60, 15, 1], "day": [1440, 60, 15, 1]}[self.rng.interval]
        levels = [lv for lv in _GROUP_LEVELS if lv[2] in sizes]
        pieces = _pieces(self.rng, self.starts, sizes)
        key_list = orjson.dumps(sorted(keys)).decode()
        out: list[tuple[Any, int, int, int]] = []
        for (table, column, size), ranges in zip(levels, pieces, strict=True):
            for batch in _batches(ranges):
                rr, params = _ranges_sql(batch)
                if table in ("group_minute", "group_quarter"):
                    select = "g.clicks, g.humans"
                    group = ""
                else:
                    select = "sum(g.clicks), sum(CASE WHEN g.kind = '' THEN g.clicks ELSE 0 END)"
                    group = f" GROUP BY g.key, g.{column}"
                out.extend(
                    _tuples(
                        self.conn,
                        f"SELECT g.key, g.{column} * {size}, {select} FROM json_each(?) k "
                        f"CROSS JOIN {rr} CROSS JOIN {table} g ON g.dim = ? "
                        f"AND g.key = k.value AND g.{column} BETWEEN rr.column1 AND rr.column2"
                        f"{group}",
                        (key_list, *params, dim),
                    )
                )
        self._group_rows[dim] = (set(keys), out)
        return out

    def totals(self) -> tuple[dict[Any, list[int]], list[int]]:
        """Per group key: [clicks, humans] in the range, for every group; and the same for
        the whole selection (a link with several tags counted once)."""
        out: dict[Any, list[int]] = {}
        overall = [0, 0]
        if self.group_dim is not None:
            for key, _m, clicks, humans in self._group_unit_rows(set(self.sizes)):
                entry = out.setdefault(key, [0, 0])
                entry[0] += clicks
                entry[1] += humans
            if self.group_dim == "tag":  # every link has one domain: count by domain
                domains = {str(d) for d in domain_hosts(self.conn)}
                for _k, _m, clicks, humans in self._group_unit_rows(domains, "domain"):
                    overall[0] += clicks
                    overall[1] += humans
            else:
                for clicks, humans in out.values():
                    overall[0] += clicks
                    overall[1] += humans
        else:
            for link_id, _m, clicks, humans in self._link_unit_rows(None, True):
                overall[0] += clicks
                overall[1] += humans
                for key in self.groups_of.get(link_id, ()):
                    entry = out.setdefault(key, [0, 0])
                    entry[0] += clicks
                    entry[1] += humans
        m_first, m_last = self.rng.minutes
        for link_id, minute, clicks, humans in self.tail_minutes:
            if m_first <= minute <= m_last:
                overall[0] += clicks
                overall[1] += humans
                for key in self._keys_of_link(link_id):
                    entry = out.setdefault(key, [0, 0])
                    entry[0] += clicks
                    entry[1] += humans
        return out, overall

    def members(self, keys: set[Any]) -> list[int] | None:
        """The links in these groups (None: every selected link is)."""
        ids = [i for i, ks in self.groups_of.items() if any(k in keys for k in ks)]
        return None if len(ids) == len(self.groups_of) else ids

    def series(self, keys: set[Any], ids: list[int] | None) -> dict[Any, list[dict[str, Any]]]:
        """A zero-filled series per group of `keys`."""
        starts = self.starts
        n = len(starts)
        per_group: dict[Any, list[list[int]]] = {}
        bisect_right = bisect.bisect_right

        def add(key: Any, minute: int, clicks: int, humans: int) -> None:
            i = bisect_right(starts, minute * 60) - 1
            if 0 <= i < n:
                buckets = per_group.get(key)
                if buckets is None:
                    buckets = per_group[key] = [[0, 0] for _ in range(n)]
                buckets[i][0] += clicks
                buckets[i][1] += humans

        if self.group_dim is not None:
            for key, minute, clicks, humans in self._group_unit_rows(keys):
                add(key, minute, clicks, humans)
        else:
            for link_id, minute, clicks, humans in self._link_unit_rows(ids, False):
                for key in self.groups_of.get(link_id, ()):
                    if key in keys:
                        add(key, minute, clicks, humans)
        m_first, m_last = self.rng.minutes
        for link_id, minute, clicks, humans in self.tail_minutes:
            if m_first <= minute <= m_last:
                for key in self._keys_of_link(link_id):
                    if key in keys:
                        add(key, minute, clicks, humans)
        labels = [iso_local(t, self.rng.tz) for t in starts]
        return {
            key: [
                {"t": label, "clicks": c, "humans": h}
                for label, (c, h) in zip(labels, buckets, strict=True)
            ]
            for key, buckets in per_group.items()
        }

    # -- breakdowns --

    def breakdowns(
        self, keys: set[Any], ids: list[int] | None, dims: Sequence[str] = _TAIL_DIMS
    ) -> dict[Any, Breakdown]:
        """Per group, per dimension, per value: [clicks, humans] over the range's UTC hours."""
        h_first, h_last = self.rng.hours
        out: dict[Any, Breakdown] = {}

        def add(key: Any, dim: str, value: str, clicks: int, humans: int) -> None:
            entry = out.setdefault(key, {}).setdefault(dim, {}).setdefault(value, [0, 0])
            entry[0] += clicks
            entry[1] += humans

        if self.group_dim is not None and tuple(dims) == (BOT_KIND_DIM,):
            hour_pieces: Pieces = [[], []]  # whole UTC days, then the hours at the edges
            _cover(h_first, h_last + 1, (24, 1), 0, hour_pieces)
            for table, column, ranges in (
                ("group_day", "day", hour_pieces[0]),
                ("group_hour", "hour", hour_pieces[1]),
            ):
                for batch in _batches(ranges):
                    rr, params = _ranges_sql(batch)
                    for key, kind, clicks in _tuples(
                        self.conn,
                        f"SELECT g.key, g.kind, sum(g.clicks) FROM json_each(?) k "
                        f"CROSS JOIN {rr} CROSS JOIN {table} g ON g.dim = ? AND g.key = k.value "
                        f"AND g.{column} BETWEEN rr.column1 AND rr.column2 GROUP BY 1, 2",
                        (orjson.dumps(sorted(keys)).decode(), *params, self.group_dim),
                    ):
                        add(key, BOT_KIND_DIM, kind, clicks, 0 if kind else clicks)
        elif self.group_dim is not None:
            raise ValueError("the group rollups hold bot kinds only")
        else:
            extra, extra_params = _ids_clause(ids)
            # stored dimension -> [(API dimension, position in the stored value)]
            wanted: dict[str, list[tuple[str, int]]] = {}
            for dim in dims:
                stored, position = _STORED_DIM[dim]
                wanted.setdefault(stored, []).append((dim, position))
            marks = ", ".join("?" for _ in wanted)
            source = _from_links(
                "link_dim_hour",
                "d",
                f"d.dim IN ({marks}) AND d.hour BETWEEN ? AND ?",
                self.owner,
            )
            for link_id, stored, value, clicks, humans in _tuples(
                self.conn,
                f"SELECT l.id, d.dim, d.value, sum(d.clicks), sum(d.humans) "
                f"{source} "
                f"WHERE {self.where}{extra} GROUP BY l.id, d.dim, d.value",
                (*wanted, h_first, h_last, *self.params, *extra_params),
            ):
                parts = value.split(rollups.DIM_SEPARATOR)
                for key in self.groups_of.get(link_id, ()):
                    if key in keys:
                        for dim, position in wanted[stored]:
                            add(key, dim, parts[position], clicks, humans)
        wanted_tail: dict[str, list[tuple[str, int]]] = {}
        for dim in dims:
            stored, position = _STORED_DIM[dim]
            wanted_tail.setdefault(stored, []).append((dim, position))
        for link_id, stored, hour, value, clicks, humans in self._tail("dims", list(wanted_tail)):
            if not h_first <= hour <= h_last:
                continue
            parts = value.split(rollups.DIM_SEPARATOR)
            for key in self._keys_of_link(link_id):
                if key in keys:
                    for dim, position in wanted_tail[stored]:
                        add(key, dim, parts[position], clicks, humans)
        return out

    # -- unique visitors --

    def uniques(self, keys: set[Any], ids: list[int] | None) -> dict[Any, list[int]]:
        """Per group: [unique visitors, visitors with a human click], each UTC day's distinct
        visitors summed over the range's days (a visitor of two links of a group counts
        once). A (group, day) made of one visitor chunk (visitors.chunk) is its stored count;
        otherwise the chunks' ids are read and counted as a union: the biggest chunk by
        binary search, the others as a set."""
        d_first, d_last = self.rng.days
        # (key, day) -> [(owner, n, n_human)], without reading any ids yet
        heads: dict[tuple[Any, int], list[tuple[Any, int, int]]] = {}
        if self.group_dim is not None:
            for key, day, n, n_human in _tuples(
                self.conn,
                "SELECT g.key, g.day, g.n, g.n_human FROM json_each(?) k CROSS JOIN "
                "group_day_visitors g ON g.dim = ? AND g.key = k.value "
                "AND g.day BETWEEN ? AND ?",
                (orjson.dumps(sorted(keys)).decode(), self.group_dim, d_first, d_last),
            ):
                heads.setdefault((key, day), []).append(((self.group_dim, key), n, n_human))
        else:
            extra, extra_params = _ids_clause(ids)
            for link_id, day, n, n_human in _tuples(
                self.conn,
                f"SELECT l.id, v.day, v.n, v.n_human "
                f"{_from_links('link_day_visitors', 'v', 'v.day BETWEEN ? AND ?', self.owner)} "
                f"WHERE {self.where}{extra}",
                (d_first, d_last, *self.params, *extra_params),
            ):
                for key in self.groups_of.get(link_id, ()):
                    if key in keys:
                        heads.setdefault((key, day), []).append((link_id, n, n_human))
        tail: dict[tuple[Any, int], tuple[set[int], set[int]]] = {}
        for (link_id, day), (v_ids, v_humans) in rollups.visitors_by_link_day(
            self._tail("visitors")
        ).items():
            if not d_first <= day <= d_last:
                continue
            for key in self._keys_of_link(link_id):
                if key in keys:
                    entry = tail.setdefault((key, day), (set(), set()))
                    entry[0].update(v_ids)
                    entry[1].update(v_humans)
        stale: set[tuple[Any, int]] = set()
        if self.group_dim is not None:  # group-days a link left, not rebuilt yet
            stale = {
                (key, day)
                for key, day in _tuples(
                    self.conn,
                    "SELECT key, day FROM group_day_stale WHERE dim = ? AND day BETWEEN ? AND ?",
                    (self.group_dim, d_first, d_last),
                )
                if key in keys
            }
        out: dict[Any, list[int]] = {}
        for kd in heads.keys() | tail.keys() | stale:
            parts = heads.get(kd, [])
            extra_sets = tail.get(kd)
            if kd in stale:
                n, h = self._count_members(kd[0], kd[1], extra_sets or (set(), set()))
            elif len(parts) == 1 and extra_sets is None and parts[0][1] >= 0:
                n, h = parts[0][1], parts[0][2]
            else:
                n, h = self._count_union(kd[1], parts, extra_sets or (set(), set()))
            counts = out.setdefault(kd[0], [0, 0])
            counts[0] += n
            counts[1] += h
        return out

    def _count_union(
        self,
        day: int,
        parts: list[tuple[Any, int, int]],
        extra: tuple[set[int], set[int]],
    ) -> tuple[int, int]:
        """Distinct visitors (and human ones) of some owners' chunks of a day, plus `extra`."""
        chunks: list[visitors.StoredChunk] = []
        for owner in dict.fromkeys(p[0] for p in parts):
            if isinstance(owner, tuple):
                sql = (
                    "SELECT n, n_human, ids, bot_ids FROM group_day_visitors "
                    "WHERE dim = ? AND key = ? AND day = ?"
                )
                params: tuple[Any, ...] = (*owner, day)
            else:
                sql = (
                    "SELECT n, n_human, ids, bot_ids FROM link_day_visitors "
                    "WHERE link_id = ? AND day = ?"
                )
                params = (owner if self.route is None else route_key(owner, self.route), day)
            for n, n_human, blob, bot_blob in _tuples(self.conn, sql, params):
                if n > 0 and not blob and isinstance(owner, tuple):
                    # a finished group-day's counts (no ids) with more to add: count the
                    # day again from the group's links, which keep their ids
                    return self._count_members(owner[1], day, extra)
                chunks.append(visitors.read_chunk(n, n_human, blob, bot_blob))
        return visitors.count_chunks(chunks, extra)

    def _count_members(
        self, key: Any, day: int, extra: tuple[set[int], set[int]]
    ) -> tuple[int, int]:
        """A group-day's visitors from its links' chunks (the group's own are stale)."""
        assert self.group_dim is not None
        source, cond = rollups.group_members_sql(self.group_dim)
        chunks = [
            visitors.read_chunk(n, n_human, blob, bot_blob)
            for n, n_human, blob, bot_blob in _tuples(
                self.conn,
                f"SELECT v.n, v.n_human, v.ids, v.bot_ids FROM {source} "
                f"CROSS JOIN link_day_visitors v ON v.link_id = l.id AND v.day = ? "
                f"WHERE {cond}",
                (day, key),
            )
        ]
        return visitors.count_chunks(chunks, extra)

    def output_key(self, key: Any) -> Any:
        return self.label.get(key, key)


def _zero_series(rng: TimeRange) -> list[dict[str, Any]]:
    starts = bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
    return [{"t": iso_local(t, rng.tz), "clicks": 0, "humans": 0} for t in starts]


def _bot_kinds(breakdown: Breakdown) -> dict[str, int]:
    kinds = {value: ch[0] for value, ch in breakdown.get(BOT_KIND_DIM, {}).items() if value}
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


def selection_stats(
    conn: sqlite3.Connection,
    flt: LinkFilter,
    rng: TimeRange,
    top: int = DEFAULT_TOP,
    route: int | None = None,
) -> dict[str, Any]:
    """Totals, uniques, bot kinds, a zero-filled series and top breakdowns of the links
    `flt` selects (one link for a link's stats), over `rng`."""
    everything = {None}
    with rollups.read_snapshot(conn) as watermark:
        sel = _Selection(conn, flt, rng, None, watermark, route)
        series = sel.series(everything, None)
        breakdowns = sel.breakdowns(everything, None)
        uniques = sel.uniques(everything, None)
    points = series.get(None) or _zero_series(rng)
    clicks = sum(p["clicks"] for p in points)
    humans = sum(p["humans"] for p in points)
    breakdown = breakdowns.get(None, {})
    unique, human_unique = uniques.get(None, [0, 0])
    top_lists: dict[str, list[dict[str, Any]]] = {}
    for dim, name in DIMENSION_NAMES.items():
        # Most clicks first; on a tie, known values before the unknown one ('').
        entries = sorted(
            breakdown.get(dim, {}).items(), key=lambda e: (-e[1][0], e[0] == "", e[0])
        )[:top]
        top_lists[name] = [
            {"value": value or None, "clicks": ch[0], "humans": ch[1]} for value, ch in entries
        ]
    return {
        "totals": {
            "clicks": clicks,
            "humans": humans,
            "bots": clicks - humans,
            "uniques": unique,
            "human_uniques": human_unique,
        },
        "bots_by_kind": _bot_kinds(breakdown),
        "series": points,
        "top": top_lists,
    }


def route_totals(
    conn: sqlite3.Connection, flt: LinkFilter, rng: TimeRange, routes: Sequence[int]
) -> dict[int, dict[str, int]]:
    """Per route index of the links `flt` selects: clicks, humans, uniques, human uniques
    over `rng` (each from the route's own rollup rows, in one snapshot)."""
    out: dict[int, dict[str, int]] = {}
    everything = {None}
    with rollups.read_snapshot(conn) as watermark:
        for route in routes:
            sel = _Selection(conn, flt, rng, None, watermark, route)
            _per_key, (clicks, humans) = sel.totals()
            unique, human_unique = sel.uniques(everything, None).get(None, [0, 0])
            out[route] = {
                "clicks": clicks,
                "humans": humans,
                "uniques": unique,
                "human_uniques": human_unique,
            }
    return out


def group_stats(
    conn: sqlite3.Connection,
    flt: LinkFilter,
    group_by: str,
    rng: TimeRange,
    limit: int = DEFAULT_GROUPS,
) -> dict[str, Any]:
    """Per group with clicks in the range (most clicks first, at most `limit`): its links,
    totals, bot kinds, uniques and zero-filled series; plus the selection's totals."""
    if group_by not in GROUP_KEY_SQL:
        raise InvalidField(f"group_by must be one of {', '.join(GROUP_BY)}", "group_by")
    with rollups.read_snapshot(conn) as watermark:
        sel = _Selection(conn, flt, rng, group_by, watermark)
        totals, overall = sel.totals()
        ranked = sorted(
            (k for k, (c, _h) in totals.items() if c),
            key=lambda k: (-totals[k][0], str(sel.output_key(k))),
        )
        keys = ranked[:limit]
        wanted = set(keys)
        ids = None if sel.group_dim is not None else sel.members(wanted)
        series = sel.series(wanted, ids)
        breakdowns = sel.breakdowns(wanted, ids, (BOT_KIND_DIM,))
        uniques = sel.uniques(wanted, ids)
        names = link_names(conn, keys) if group_by == "link" else {}
    groups = []
    for key in keys:
        clicks, humans = totals[key]
        unique, human_unique = uniques.get(key, [0, 0])
        group: dict[str, Any] = {"key": sel.output_key(key)}
        if key in names:
            group["domain"], group["slug"] = names[key]
            group["short_url"] = short_url(*names[key])
        group.update(
            {
                "links": sel.sizes.get(key, 0),
                "clicks": clicks,
                "humans": humans,
                "bots": clicks - humans,
                "bots_by_kind": _bot_kinds(breakdowns.get(key, {})),
                "uniques": unique,
                "human_uniques": human_unique,
                "series": series.get(key) or _zero_series(rng),
            }
        )
        groups.append(group)
    clicks, humans = overall
    return {
        "group_by": group_by,
        "groups": groups,
        "totals": {"clicks": clicks, "humans": humans, "bots": clicks - humans},
    }


def group_keys_of(
    conn: sqlite3.Connection, flt: LinkFilter, group_by: str, link_ids: Sequence[int]
) -> dict[int, list[Any]]:
    """The group key(s) of each of `link_ids` that `flt` selects, as answers show them (a
    link has one group, or one per tag; a domain by its host)."""
    if not link_ids:
        return {}
    where, params = flt.where()
    tags = ", json_each(l.tags) t" if group_by == "tag" else ""
    rows = conn.execute(
        f"SELECT l.id, {GROUP_KEY_SQL[group_by]} FROM links l{tags} "
        f"WHERE l.id IN (SELECT value FROM json_each(?)) AND {where}",
        (orjson.dumps(list(link_ids)).decode(), *params),
    ).fetchall()
    hosts = domain_hosts(conn) if group_by == "domain" else {}
    out: dict[int, list[Any]] = {}
    for link_id, key in rows:
        out.setdefault(int(link_id), []).append(hosts.get(int(key), key) if hosts else key)
    return out


def selected_link_ids(
    conn: sqlite3.Connection, flt: LinkFilter, candidates: Sequence[int]
) -> list[int]:
    """Which of `candidates` (e.g. the links with live clicks) `flt` selects."""
    if not candidates:
        return []
    where, params = flt.where()
    rows = conn.execute(
        f"SELECT l.id FROM links l WHERE l.id IN (SELECT value FROM json_each(?)) AND {where}",
        (orjson.dumps(list(candidates)).decode(), *params),
    ).fetchall()
    return [int(r[0]) for r in rows]


def short_url(domain: str, slug: str) -> str:
    """Links are served over HTTPS on their domain: `https://{domain}/{slug}` (no config)."""
    return f"https://{domain}/{slug}"


def link_head(link: dict[str, Any]) -> dict[str, Any]:
    """The few fields of a link that head its stats, velocity and checkpoints."""
    return {
        "id": link["id"],
        "domain": link["domain"],
        "slug": link["slug"],
        "short_url": short_url(link["domain"], link["slug"]),
        "url": link["url"],
        "campaign": link["campaign"],
        "created_at": iso_ms(link["created_at"]),
    }


# --- launch checkpoints --------------------------------------------------------------------


def _first_click(conn: sqlite3.Connection, link_id: int, watermark: int, human: bool) -> int | None:
    """The time (ms) of the link's first click, or first human click: the first minute
    of link_minute with one (its primary key), then the exact time inside it; clicks not
    rolled up yet are read past the watermark."""
    column = "humans" if human else "clicks"
    row = conn.execute(
        f"SELECT min(minute) FROM link_minute WHERE link_id = ? AND {column} > 0", (link_id,)
    ).fetchone()
    human_sql = " AND coalesce(bot_kind, '') = ''" if human else ""
    if row is not None and row[0] is not None:
        minute = int(row[0])
        found = conn.execute(
            "SELECT min(ts) FROM clicks WHERE ts >= ? AND ts < ? AND link_id = ?" + human_sql,
            (minute * 60000, (minute + 1) * 60000, link_id),
        ).fetchone()[0]
        return minute * 60000 if found is None else int(found)
    found = conn.execute(
        "SELECT min(ts) FROM clicks NOT INDEXED WHERE id > ? AND link_id = ?" + human_sql,
        (watermark, link_id),
    ).fetchone()[0]
    return None if found is None else int(found)


def launch_checkpoints(
    conn: sqlite3.Connection,
    link_id: int,
    launch_ms: int | None,
    launch_from: str | None,
    now_ms: int,
) -> dict[str, Any]:
    """Clicks, humans and uniques 15/30/60 minutes after the link's launch (its own
    launched_at, else its campaign's), else after its first *human* click: a preview
    bot's fetch before the send does not start the clock, and a link made days ahead
    gets its checkpoints all the same. Exact: the hour from the start, from `clicks` by
    time (its `ts` index), filtered to the link."""
    with rollups.read_snapshot(conn) as watermark:
        first = _first_click(conn, link_id, watermark, human=False)
        first_human = _first_click(conn, link_id, watermark, human=True)
        start = launch_ms if launch_ms is not None else first_human
        head: dict[str, Any] = {
            "launched_at": iso_ms(launch_ms) if launch_ms is not None else None,
            "launch_from": launch_from,  # "link", "campaign" or None
            "first_click_at": iso_ms(first) if first is not None else None,
            "first_human_click_at": iso_ms(first_human) if first_human is not None else None,
            "started_at": iso_ms(start) if start is not None else None,
            "started_by": (
                "launch" if launch_ms is not None else "first_human_click" if start else None
            ),
        }
        if start is None:
            return {**head, "checkpoints": []}
        ends = [start + n * 60000 for n in CHECKPOINT_MINUTES]
        parts = [
            f"sum(ts < {end}), sum(ts < {end} AND coalesce(bot_kind, '') = ''), "
            f"count(DISTINCT CASE WHEN ts < {end} THEN visitor_id END)"
            for end in ends
        ]
        values = conn.execute(
            f"SELECT {', '.join(parts)} FROM clicks WHERE ts >= ? AND ts < ? AND link_id = ?",
            (start, max(start, min(ends[-1], now_ms + 1)), link_id),
        ).fetchone()
    checkpoints = []
    for i, n in enumerate(CHECKPOINT_MINUTES):
        clicks, humans, uniques = values[3 * i : 3 * i + 3]
        checkpoints.append(
            {
                "minutes": n,
                "at": iso_ms(ends[i]),
                "complete": now_ms >= ends[i],
                "clicks": int(clicks or 0),
                "humans": int(humans or 0),
                "uniques": int(uniques or 0),
            }
        )
    return {**head, "checkpoints": checkpoints}
