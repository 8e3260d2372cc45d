"""The numbers the admin side shows: every read SQL of admin/, time ranges, velocity.

Rules of this module:
- All SQL here only reads. Writes live in edge/store.py. Functions take a plain
  `sqlite3.Connection` and are synchronous: the API runs them on its own stats connection
  (an aiosqlite thread, so a slow query never delays link sync or click writes), the CLI
  calls them directly on the SQLite file, with or without a running server.
- Numbers come from the rollups the click flusher maintains, never from a scan of
  `clicks` by link (that table has an index on `ts` only, on purpose: see DESIGN.md):
    link_minute / link_hour / link_day  (link_id, t)         clicks, humans -> totals, series
    link_dim_hour      (link_id, dim, hour, value)    clicks, humans -> breakdowns, bot kinds
                       (a value joins related columns: country, region, city; ...)
    link_day_visitors  (link_id, UTC day, chunk)      packed visitor ids -> unique visitors
    group_minute/quarter/hour/day, group_day_visitors the same per (group_by, key)
  Link queries walk `links` first and seek into a rollup's primary key per link
  (`links l CROSS JOIN rollup r ON r.link_id = l.id AND <range>`: SQLite never reorders a
  CROSS JOIN), so a campaign of 50 links reads those links' rows and nothing else. A
  group-by over all links reads the group rollups instead (see _Selection).
- Resolution follows the rollups and is part of the contract (docs/api.md): clicks and the
  series are exact to the minute, breakdowns cover the whole UTC hours that overlap the
  range, unique visitors the whole UTC days. The visitor id's salt rotates every UTC day,
  so uniques over several days are the sum of each day's distinct visitors.
- The raw `clicks` table is read only by time range (its `ts` index), for launch
  checkpoints: at most the hour after a link's first click.
- Velocity and live windows read edge/live.py's in-process counters: no SQL.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import datetime as dt
import itertools
import math
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from edge import store
from edge.errors import InvalidField
from edge.live import LiveCounters

UTC: Final = dt.UTC

# --- limits --------------------------------------------------------------------------------

# A series longer than this is refused with a hint to use a coarser interval: 10,000 points
# is a week by the minute or a year by the hour, more than any chart shows.
MAX_SERIES_POINTS: Final = 10_000
# Breakdown lists (countries, browsers, ...) return this many values unless asked (top=).
DEFAULT_TOP: Final = 10
MAX_TOP: Final = 100
# Listings: links per page and groups per group-by answer.
DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 1000
DEFAULT_GROUPS: Final = 100
MAX_GROUPS: Final = 1000
DEFAULT_RANGE_S: Final = 86400  # stats without `from` cover the last 24 hours
# Relative times: -15m, +7d ... The units people type in a campaign dashboard.
RELATIVE_UNITS_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE_RE: Final = re.compile(r"([+-])(\d{1,9})([smhdw])")

INTERVALS: Final = ("minute", "hour", "day")
INTERVAL_S: Final = {"minute": 60, "hour": 3600, "day": 86400}
# Without `interval`, the finest one that keeps a chart readable: minutes up to 3 hours,
# hours up to 8 days, days beyond.
AUTO_MINUTE_MAX_S: Final = 3 * 3600
AUTO_HOUR_MAX_S: Final = 8 * 86400

# Breakdown dimensions (store.DIM_COLUMNS) and their API names.
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

# --- velocity ------------------------------------------------------------------------------
# The last window's clicks vs the window before, both from the live counters. A label needs
# the change to be beyond Poisson noise: with c and p clicks in two equal windows,
# z = (c - p) / sqrt(c + p) is about normal under "no change", and |z| >= 2 happens by
# chance ~5% of the time. 10 vs 5 clicks is not a trend (z = 1.3); 40 vs 20 is (z = 2.6).
VELOCITY_Z_MIN: Final = 2.0
# ...and the change must matter: at least +25% to accelerate, -20% to flatten (symmetric
# in log terms: 1.25 = 1/0.8). Stalled: the last window has under 10% of the previous
# one's clicks, or none at all.
ACCELERATING_RATIO: Final = 1.25
FLATTENING_RATIO: Final = 0.8
STALLED_RATIO: Final = 0.1
DEFAULT_VELOCITY_WINDOW_S: Final = 900  # "last 15 min vs the previous 15 min"
MIN_VELOCITY_WINDOW_S: Final = 60
# Two windows must fit in the live counters' per-minute ring (edge/live.py: the last hour).
MAX_VELOCITY_WINDOW_S: Final = 1800

# Launch checkpoints: minutes after a link's first click, for links younger than a day.
CHECKPOINT_MINUTES: Final = (15, 30, 60)
LAUNCH_PERIOD_MS: Final = 86400 * 1000

# Live: the windows /api/live shows and how many links it lists by default.
LIVE_WINDOWS: Final = (("60s", 60), ("5m", 300), ("15m", 900), ("60m", 3600))
DEFAULT_LIVE_TOP: Final = 10
MAX_LIVE_TOP: Final = 100


# --- times ---------------------------------------------------------------------------------


def zone(name: str | None, field: str = "tz") -> dt.tzinfo:
    """An IANA time zone by name (UTC when empty)."""
    if not name or name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidField(
            f"unknown time zone {name!r}: use an IANA name like Europe/Paris", field
        ) from None


def parse_instant(text: str, field: str, now_s: float, tz: dt.tzinfo = UTC) -> float:
    """A point in time as Unix seconds.

    Accepts `now`, relative times (`-15m`, `-24h`, `-7d`, `+2h`; units s m h d w), Unix
    milliseconds (all digits), or ISO 8601 (`2025-03-01`, `2025-03-01T09:30`,
    `2025-03-01T09:30:00Z`, `...+01:00`); an ISO time without an offset is in `tz`.
    """
    value = text.strip()
    if value == "now":
        return now_s
    rel = _RELATIVE_RE.fullmatch(value)
    if rel:
        seconds = int(rel.group(2)) * RELATIVE_UNITS_S[rel.group(3)]
        return now_s + seconds if rel.group(1) == "+" else now_s - seconds
    if value.isdigit():
        return int(value) / 1000
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField(
            f"{field}: expected ISO 8601 (2025-03-01T09:30:00Z), relative (-15m, -24h, -7d), "
            f"Unix milliseconds or 'now'; got {text!r}",
            field,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.timestamp()


def time_ms(value: Any, field: str, now_s: float) -> int | None:
    """A link time from JSON: null, Unix milliseconds, ISO 8601 (UTC if no offset) or +7d."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidField(f"{field} must be a time", field)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return round(parse_instant(value, field, now_s) * 1000)
    raise InvalidField(
        f"{field} must be ISO 8601 (2025-12-31T23:59:00Z), Unix milliseconds or relative (+7d)",
        field,
    )


def iso_ms(ms: int | None) -> str | None:
    """Unix ms -> ISO 8601 in UTC to the second (`2025-03-01T09:30:00Z`), None stays None."""
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_local(ts_s: float, tz: dt.tzinfo) -> str:
    """Unix seconds -> ISO 8601 with the zone's offset at that instant."""
    when = dt.datetime.fromtimestamp(ts_s, tz)
    if when.microsecond:
        when = when.replace(microsecond=0)
    return when.isoformat()


def floor_to(ts_s: int, interval: str, tz: dt.tzinfo) -> int:
    """The start of the local minute/hour/day containing `ts_s`."""
    if interval == "minute":
        return ts_s - ts_s % 60
    local = dt.datetime.fromtimestamp(ts_s, tz)
    if interval == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    else:
        local = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    return int(local.timestamp())


# Stepping to the next bucket: floor(start + STEP) is the next local hour/day start even
# across DST shifts (a 23 h or 25 h day; an hour repeated or skipped).
_NEXT_STEP_S: Final = {"minute": 60, "hour": 5400, "day": 26 * 3600}


def bucket_starts(from_s: int, to_s: int, interval: str, tz: dt.tzinfo) -> list[int]:
    """Starts (Unix s) of the local buckets overlapping [from_s, to_s)."""
    out: list[int] = []
    t = floor_to(from_s, interval, tz)
    step = _NEXT_STEP_S[interval]
    while t < to_s:
        out.append(t)
        if len(out) > MAX_SERIES_POINTS:
            raise InvalidField(
                f"more than {MAX_SERIES_POINTS} {interval}s in this range: use a coarser "
                "interval or a shorter range",
                "interval",
            )
        nxt = floor_to(t + step, interval, tz)
        t = nxt if nxt > t else t + step
    return out


@dataclass(frozen=True, slots=True)
class TimeRange:
    """[from_s, to_s) in Unix seconds, the series interval and the zone it is shown in."""

    from_s: int
    to_s: int
    interval: str
    tz: dt.tzinfo
    tz_name: str

    @property
    def minutes(self) -> tuple[int, int]:
        """First and last link_minute.minute overlapping the range (inclusive)."""
        return self.from_s // 60, (self.to_s - 1) // 60

    @property
    def hours(self) -> tuple[int, int]:
        return self.from_s // 3600, (self.to_s - 1) // 3600

    @property
    def days(self) -> tuple[int, int]:
        return self.from_s // 86400, (self.to_s - 1) // 86400

    def describe(self) -> dict[str, Any]:
        return {
            "from": iso_local(self.from_s, self.tz),
            "to": iso_local(self.to_s, self.tz),
            "interval": self.interval,
            "tz": self.tz_name,
        }


def time_range(
    from_text: str | None,
    to_text: str | None,
    interval: str | None,
    tz_name: str | None,
    now_s: float,
) -> TimeRange:
    """The range of a stats request; defaults: the last 24 hours, interval by its length."""
    tz = zone(tz_name)
    to_s = now_s if to_text is None else parse_instant(to_text, "to", now_s, tz)
    from_s = (
        to_s - DEFAULT_RANGE_S if from_text is None else parse_instant(from_text, "from", now_s, tz)
    )
    start, end = math.floor(from_s), math.ceil(to_s)
    if end <= start:
        raise InvalidField("`from` must be before `to`", "from")
    if interval is None:
        span = end - start
        interval = (
            "minute" if span <= AUTO_MINUTE_MAX_S else "hour" if span <= AUTO_HOUR_MAX_S else "day"
        )
    elif interval not in INTERVALS:
        raise InvalidField("interval must be minute, hour or day", "interval")
    if (end - start) // INTERVAL_S[interval] > MAX_SERIES_POINTS:
        raise InvalidField(
            f"more than {MAX_SERIES_POINTS} {interval}s in this range: use a coarser interval "
            "or a shorter range",
            "interval",
        )
    return TimeRange(start, end, interval, tz, tz_name or "UTC")


# --- which links ---------------------------------------------------------------------------


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
    links = [store.link_dict(r) for r in rows[:limit]]
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


def domain_hosts(conn: sqlite3.Connection) -> dict[int, str]:
    return {int(r[0]): str(r[1]) for r in conn.execute("SELECT id, host FROM domains")}


def get_domain(conn: sqlite3.Connection, host: str) -> dict[str, Any]:
    return store.domain_dict(store.domain_row(conn, host))


def get_token(conn: sqlite3.Connection, token_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM api_tokens WHERE id = ?", (token_id,)).fetchone()
    return None if row is None else store.token_dict(row)


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

# The group key of each group_by, as SQL over `links l` (and `json_each(l.tags) t`).
GROUP_KEY_SQL: Final = {
    "campaign": "coalesce(l.campaign, '')",
    "utm_source": "coalesce(l.utm_source, '')",
    "utm_medium": "coalesce(l.utm_medium, '')",
    "utm_campaign": "coalesce(l.utm_campaign, '')",
    "tag": "t.value",
    "domain": "(SELECT host FROM domains WHERE id = l.domain_id)",
    "link": "l.id",
}
# Click columns of the breakdown dimensions.
_TAIL_DIMS: Final = (*DIMENSION_NAMES, BOT_KIND_DIM)
# Where each is kept in link_dim_hour: (stored dimension, position in its value).
_STORED_DIM: Final = {
    column: (stored, i)
    for stored, columns in store.DIM_COLUMNS.items()
    for i, column in enumerate(columns)
}
# Positions in a tail row: link, ts, visitor, the dimensions.
_T_LINK, _T_TS, _T_VISITOR, _T_DIMS = 0, 1, 2, 3
_T_BOT = _T_DIMS + len(_TAIL_DIMS) - 1

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


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[int]:
    """One read transaction (a consistent WAL snapshot) around a set of queries, yielding
    the rollup watermark: clicks with a higher id are written but not rolled up yet."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'rollup_click_id'").fetchone()
        yield int(row[0]) if row is not None else 0
    finally:
        if own:
            conn.execute("COMMIT")


def _tuples(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
    """A cursor yielding plain tuples (sqlite3.Row costs more on big answers)."""
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(sql, params)


def _from_links(rollup: str, alias: str, range_clause: str) -> str:
    """`FROM links l CROSS JOIN <rollup> <alias> ON ...`: links first, then a seek into the
    rollup's primary key per link (SQLite never reorders a CROSS JOIN)."""
    return f"FROM links l CROSS JOIN {rollup} {alias} ON {alias}.link_id = l.id AND {range_clause}"


def _ids_clause(link_ids: Sequence[int] | None) -> tuple[str, list[Any]]:
    if link_ids is None:
        return "", []
    return " AND l.id IN (SELECT value FROM json_each(?))", [orjson.dumps(list(link_ids)).decode()]


def _distinct(chunks: list[tuple[int, array.array[int]]], extra: set[int]) -> int:
    """|union of the chunks' ids and `extra`|. Chunks hold sorted distinct ids: the
    biggest is searched (bisect), not copied into the set of the others."""
    if not chunks:
        return len(extra)
    biggest = max(range(len(chunks)), key=lambda i: chunks[i][0])
    base = chunks[biggest][1]
    others = set(extra)
    for i, (_n, ids) in enumerate(chunks):
        if i != biggest:
            others.update(ids)
    return len(base) + sum(1 for x in others if not _has(base, x))


def _has(ids: array.array[int], x: int) -> bool:
    i = bisect.bisect_left(ids, x)
    return i < len(ids) and ids[i] == x


def _count_chunks(
    chunks: list[tuple[int, int, array.array[int], array.array[int]]],
    extra: tuple[set[int], set[int]],
) -> tuple[int, int]:
    """(distinct visitors, distinct visitors with a human click) of (n, n_human, ids,
    bot_ids) chunks and `extra` (visitors, human visitors) sets.

    One big chunk (a merged day) and a few new ids: the big one is searched (bisect), not
    copied into a set; only a visitor in some chunk's bot_ids (or among extra's non-humans)
    can lack a human click anywhere, so only those are looked up in every chunk. Chunks of
    similar sizes: set unions (C loops), cheaper than a bisect per id."""
    if not chunks:
        return len(extra[0]), len(extra[1])
    sizes = [len(c[2]) for c in chunks]
    big = max(sizes)
    if (sum(sizes) - big + len(extra[0])) * _SEARCH_RATIO > big:
        every = set(extra[0])
        humans = set(extra[1])
        for _n, _h, ids, bots in chunks:
            ids_set = set(ids)
            every |= ids_set
            humans |= ids_set - set(bots) if bots else ids_set
        return len(every), len(humans)
    every_n = _distinct([(c[0], c[2]) for c in chunks], extra[0])
    candidates = extra[0] - extra[1]
    for c in chunks:
        candidates.update(c[3])
    candidates -= extra[1]
    never_human = 0
    lookups = [(ids, set(bots)) for _n, _h, ids, bots in chunks]
    for v in candidates:
        if not any(_has(ids, v) and v not in bots for ids, bots in lookups):
            never_human += 1
    return every_n, every_n - never_human


# Search the biggest chunk when the others hold under 1/16 of its ids; union sets otherwise.
_SEARCH_RATIO: Final = 16


class _Selection:
    """The links of a stats answer and their groups, read in one snapshot."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        flt: LinkFilter,
        rng: TimeRange,
        group_by: str | None,
        watermark: int,
    ) -> None:
        self.conn = conn
        self.rng = rng
        self.where, self.params = flt.where()
        self.starts = bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
        # The group rollups answer a group-by over every link (and hold the domain's id).
        self.group_dim = group_by if group_by in store.GROUP_DIMS and self.where == "1" else None
        self.sizes: dict[Any, int] = {}
        self.groups_of: GroupsOf = {}
        self.label: dict[Any, Any] = {}  # a group rollup key -> the answer's key
        # group rollup rows read once for totals and reused for the series
        self._group_rows: dict[str | None, tuple[set[Any], list[tuple[Any, int, int, int]]]] = {}
        if self.group_dim is not None:
            dim, key_sql, source = next(
                s for s in store.GROUP_KEY_SOURCES if s[0] == self.group_dim
            )
            for key, n in _tuples(conn, f"SELECT {key_sql}, count(*) FROM {source} GROUP BY 1", ()):
                self.sizes[key] = n
            if dim == "domain":
                hosts = domain_hosts(conn)
                self.label = {k: hosts.get(int(k), k) for k in self.sizes}
        else:
            key_sql = "NULL" if group_by is None else GROUP_KEY_SQL[group_by]
            tags = ", json_each(l.tags) t" if group_by == "tag" else ""
            for link_id, key in _tuples(
                conn, f"SELECT l.id, {key_sql} FROM links l{tags} WHERE {self.where}", self.params
            ):
                self.groups_of.setdefault(link_id, []).append(key)
                self.sizes[key] = self.sizes.get(key, 0) + 1
        self.tail = self._tail(watermark)
        if self.group_dim is not None:
            ids = sorted({row[_T_LINK] for row in self.tail})
            for row in _tuples(
                conn,
                f"{store.GROUP_KEYS_SELECT} WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(ids).decode(),),
            ):
                self.groups_of[row[0]] = [
                    k for d, k in store.group_keys(row) if d == self.group_dim
                ]

    def _tail(self, watermark: int) -> list[tuple[Any, ...]]:
        """Clicks of the selection written after the watermark (at most the range's days).

        The flusher adds clicks to the rollups about once a second (longer under heavy
        load, and only with the next batch), so without these the newest clicks would be
        missing. The scan is by rowid (`clicks.id > watermark`; NOT INDEXED keeps SQLite
        from preferring the ts index), so it costs the clicks not rolled up and no more.
        """
        d_first, d_last = self.rng.days
        dims = ", ".join(f"coalesce(c.{d}, '')" for d in _TAIL_DIMS)
        return _tuples(
            self.conn,
            f"SELECT c.link_id, c.ts, c.visitor_id, {dims} "
            "FROM clicks c NOT INDEXED CROSS JOIN links l ON l.id = c.link_id "
            f"WHERE c.id > ? AND c.ts >= ? AND c.ts < ? AND {self.where}",
            (watermark, d_first * 86400000, (d_last + 1) * 86400000, *self.params),
        ).fetchall()

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
                    f"FROM links l CROSS JOIN {rr} CROSS JOIN {table} r ON r.link_id = l.id "
                    f"AND r.{column} BETWEEN rr.column1 AND rr.column2"
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
        for row in self.tail:
            if m_first <= row[_T_TS] // 60000 <= m_last:
                human = 0 if row[_T_BOT] else 1
                overall[0] += 1
                overall[1] += human
                for key in self._keys_of_link(row[_T_LINK]):
                    entry = out.setdefault(key, [0, 0])
                    entry[0] += 1
                    entry[1] += human
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
        for row in self.tail:
            minute = row[_T_TS] // 60000
            if m_first <= minute <= m_last:
                for key in self._keys_of_link(row[_T_LINK]):
                    if key in keys:
                        add(key, minute, 1, 0 if row[_T_BOT] else 1)
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
                "link_dim_hour", "d", f"d.dim IN ({marks}) AND d.hour BETWEEN ? AND ?"
            )
            for link_id, stored, value, clicks, humans in _tuples(
                self.conn,
                f"SELECT l.id, d.dim, d.value, sum(d.clicks), sum(d.humans) "
                f"{source} "
                f"WHERE {self.where}{extra} GROUP BY l.id, d.dim, d.value",
                (*wanted, h_first, h_last, *self.params, *extra_params),
            ):
                parts = value.split(store.DIM_SEPARATOR)
                for key in self.groups_of.get(link_id, ()):
                    if key in keys:
                        for dim, position in wanted[stored]:
                            add(key, dim, parts[position], clicks, humans)
        columns = [(dim, _T_DIMS + _TAIL_DIMS.index(dim)) for dim in dims]
        for row in self.tail:
            if not h_first <= row[_T_TS] // 3600000 <= h_last:
                continue
            human = 0 if row[_T_BOT] else 1
            for key in self._keys_of_link(row[_T_LINK]):
                if key in keys:
                    for dim, col in columns:
                        add(key, dim, row[col], 1, human)
        return out

    # -- unique visitors --

    def uniques(self, keys: set[Any], ids: list[int] | None) -> dict[Any, list[int]]:
        """Per group: [unique visitors, visitors with a human click], each UTC day's distinct
        visitors summed over the range's days (a visitor of two links of a group counts
        once). A (group, day) made of one visitor chunk (store.chunk) is its stored count;
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
                f"{_from_links('link_day_visitors', 'v', 'v.day BETWEEN ? AND ?')} "
                f"WHERE {self.where}{extra}",
                (d_first, d_last, *self.params, *extra_params),
            ):
                for key in self.groups_of.get(link_id, ()):
                    if key in keys:
                        heads.setdefault((key, day), []).append((link_id, n, n_human))
        tail: dict[tuple[Any, int], tuple[set[int], set[int]]] = {}
        for row in self.tail:
            day = row[_T_TS] // 86400000
            if row[_T_VISITOR] is None or not d_first <= day <= d_last:
                continue
            vid = store.visitor_int(bytes(row[_T_VISITOR]))
            for key in self._keys_of_link(row[_T_LINK]):
                if key in keys:
                    entry = tail.setdefault((key, day), (set(), set()))
                    entry[0].add(vid)
                    if not row[_T_BOT]:
                        entry[1].add(vid)
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
        chunks: list[tuple[int, int, array.array[int], array.array[int]]] = []
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
                params = (owner, day)
            for n, n_human, blob, bot_blob in _tuples(self.conn, sql, params):
                if n > 0 and not blob and isinstance(owner, tuple):
                    # a finished group-day's counts (no ids) with more to add: count the
                    # day again from the group's links, which keep their ids
                    return self._count_members(owner[1], day, extra)
                chunks.append((n, n_human, store.unpack_ids(blob), store.unpack_ids(bot_blob)))
        return _count_chunks(chunks, extra)

    def _count_members(
        self, key: Any, day: int, extra: tuple[set[int], set[int]]
    ) -> tuple[int, int]:
        """A group-day's visitors from its links' chunks (the group's own are stale)."""
        assert self.group_dim is not None
        source, cond = store.group_members_sql(self.group_dim)
        chunks = [
            (n, n_human, store.unpack_ids(blob), store.unpack_ids(bot_blob))
            for n, n_human, blob, bot_blob in _tuples(
                self.conn,
                f"SELECT v.n, v.n_human, v.ids, v.bot_ids FROM {source} "
                f"CROSS JOIN link_day_visitors v ON v.link_id = l.id AND v.day = ? "
                f"WHERE {cond}",
                (day, key),
            )
        ]
        return _count_chunks(chunks, extra)

    def output_key(self, key: Any) -> Any:
        return self.label.get(key, key)


def _zero_series(rng: TimeRange) -> list[dict[str, Any]]:
    starts = bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
    return [{"t": iso_local(t, rng.tz), "clicks": 0, "humans": 0} for t in starts]


def _bot_kinds(breakdown: Breakdown) -> dict[str, int]:
    kinds = {value: ch[0] for value, ch in breakdown.get(BOT_KIND_DIM, {}).items() if value}
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))


def selection_stats(
    conn: sqlite3.Connection, flt: LinkFilter, rng: TimeRange, top: int = DEFAULT_TOP
) -> dict[str, Any]:
    """Totals, uniques, bot kinds, a zero-filled series and top breakdowns of the links
    `flt` selects (one link for a link's stats), over `rng`."""
    everything = {None}
    with _snapshot(conn) as watermark:
        sel = _Selection(conn, flt, rng, None, watermark)
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
    with _snapshot(conn) as watermark:
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
    """The group key(s) of each of `link_ids` that `flt` selects (a link has one group, or
    one per tag)."""
    if not link_ids:
        return {}
    where, params = flt.where()
    tags = ", json_each(l.tags) t" if group_by == "tag" else ""
    rows = conn.execute(
        f"SELECT l.id, {GROUP_KEY_SQL[group_by]} FROM links l{tags} "
        f"WHERE l.id IN (SELECT value FROM json_each(?)) AND {where}",
        (orjson.dumps(list(link_ids)).decode(), *params),
    ).fetchall()
    out: dict[int, list[Any]] = {}
    for link_id, key in rows:
        out.setdefault(int(link_id), []).append(key)
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


def launch_checkpoints(
    conn: sqlite3.Connection, link_id: int, created_at_ms: int, now_ms: int
) -> dict[str, Any] | None:
    """Clicks and uniques 15/30/60 minutes after a young link's first click (None when the
    link is a day old or more). Exact: read from `clicks` by time, the hour after the
    first click only (its `ts` index), filtered to the link."""
    if now_ms - created_at_ms >= LAUNCH_PERIOD_MS:
        return None
    with _snapshot(conn) as watermark:
        row = conn.execute(
            "SELECT min(minute) FROM link_minute WHERE link_id = ? AND minute >= ?",
            (link_id, created_at_ms // 60000),
        ).fetchone()
        first: int | None = None
        if row is not None and row[0] is not None:
            minute = int(row[0])
            found = conn.execute(
                "SELECT min(ts) FROM clicks WHERE ts >= ? AND ts < ? AND link_id = ?",
                (minute * 60000, (minute + 1) * 60000, link_id),
            ).fetchone()[0]
            first = minute * 60000 if found is None else int(found)
        else:  # the first clicks may not be rolled up yet
            found = conn.execute(
                "SELECT min(ts) FROM clicks NOT INDEXED WHERE id > ? AND link_id = ?",
                (watermark, link_id),
            ).fetchone()[0]
            first = None if found is None else int(found)
        if first is None:
            return {"first_click_at": None, "checkpoints": []}
        ends = [first + n * 60000 for n in CHECKPOINT_MINUTES]
        parts = [
            f"sum(ts < {end}), sum(ts < {end} AND coalesce(bot_kind, '') = ''), "
            f"count(DISTINCT CASE WHEN ts < {end} THEN visitor_id END)"
            for end in ends
        ]
        values = conn.execute(
            f"SELECT {', '.join(parts)} FROM clicks WHERE ts >= ? AND ts < ? AND link_id = ?",
            (first, min(ends[-1], now_ms + 1), link_id),
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
    return {"first_click_at": iso_ms(first), "checkpoints": checkpoints}


# --- velocity ------------------------------------------------------------------------------


def velocity_label(current: int, previous: int) -> str:
    """accelerating / steady / flattening / stalled, from two equal windows' clicks."""
    if current == 0:
        return "stalled"
    if current <= previous * STALLED_RATIO:
        return "stalled"
    z = (current - previous) / math.sqrt(current + previous)
    if z >= VELOCITY_Z_MIN and current >= previous * ACCELERATING_RATIO:
        return "accelerating"
    if z <= -VELOCITY_Z_MIN and current <= previous * FLATTENING_RATIO:
        return "flattening"
    return "steady"


def velocity_of(current: int, previous: int, window_s: int) -> dict[str, Any]:
    """The velocity record shown everywhere: rates per minute, slope, ratio, label."""
    window_min = window_s / 60
    rate = current / window_min
    prev_rate = previous / window_min
    return {
        "window_s": window_s,
        "current": current,
        "previous": previous,
        "rate_per_min": round(rate, 3),
        "previous_rate_per_min": round(prev_rate, 3),
        # Change of the per-minute rate per minute, between the two windows' midpoints.
        "slope_per_min2": round((rate - prev_rate) / window_min, 4),
        "ratio": round(current / previous, 3) if previous else None,
        "label": velocity_label(current, previous),
    }


def live_velocity(
    live: LiveCounters, link_ids: Iterable[int] | None, window_s: int, now_s: int
) -> dict[str, Any]:
    """Velocity of one link, a set of links (summed) or everything (None), from the live
    counters: seconds now-W+1..now vs now-2W+1..now-W (LiveCounters.window_between says
    how exact)."""
    current_start, previous_start = now_s - window_s + 1, now_s - 2 * window_s + 1
    if link_ids is None:
        current = live.window_between(None, current_start, now_s)[0]
        previous = live.window_between(None, previous_start, current_start - 1)[0]
        return velocity_of(current, previous, window_s)
    current = previous = 0
    for link_id in link_ids:
        current += live.window_between(link_id, current_start, now_s)[0]
        previous += live.window_between(link_id, previous_start, current_start - 1)[0]
    return velocity_of(current, previous, window_s)


def rollup_velocity(
    conn: sqlite3.Connection, link_id: int, window_s: int, now_s: int
) -> dict[str, Any]:
    """The same velocity from link_minute and the clicks not rolled up yet, to the minute
    (the CLI has no live counters): the last W/60 whole minutes vs the W/60 before them."""
    minutes = max(1, window_s // 60)
    last = now_s // 60 - 1  # the last complete minute
    counts = [0, 0]  # current, previous
    with _snapshot(conn) as watermark:
        rows = conn.execute(
            "SELECT minute, clicks FROM link_minute WHERE link_id = ? AND minute > ? "
            "AND minute <= ?",
            (link_id, last - 2 * minutes, last),
        ).fetchall()
        rows += conn.execute(
            "SELECT ts / 60000, count(*) FROM clicks NOT INDEXED WHERE id > ? AND link_id = ? "
            "GROUP BY 1",
            (watermark, link_id),
        ).fetchall()
    for minute, clicks in rows:
        if last - 2 * minutes < minute <= last:
            counts[0 if minute > last - minutes else 1] += int(clicks)
    return velocity_of(counts[0], counts[1], minutes * 60)


def parse_window(text: str | None, field: str = "window") -> int:
    """A velocity window like `15m`, `300s` or `1h`-free `30m`: seconds within the limits."""
    if text is None:
        return DEFAULT_VELOCITY_WINDOW_S
    m = re.fullmatch(r"(\d{1,6})([smh]?)", text.strip())
    if not m:
        raise InvalidField(f"{field}: expected a duration like 15m or 300s", field)
    seconds = int(m.group(1)) * RELATIVE_UNITS_S.get(m.group(2) or "s", 1)
    if not MIN_VELOCITY_WINDOW_S <= seconds <= MAX_VELOCITY_WINDOW_S:
        raise InvalidField(
            f"{field} must be between {MIN_VELOCITY_WINDOW_S}s and "
            f"{MAX_VELOCITY_WINDOW_S // 60}m (two windows must fit in the live counters' hour)",
            field,
        )
    return seconds


# --- live ----------------------------------------------------------------------------------


def _window_record(clicks: int, humans: int) -> dict[str, int]:
    return {"clicks": clicks, "humans": humans, "bots": clicks - humans}


def live_windows(live: LiveCounters, link_id: int | None, now_s: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, seconds in LIVE_WINDOWS:
        if link_id is None:
            out[name] = _window_record(*live.window(None, seconds, now_s))
        else:
            out[name] = _window_record(*live.window(link_id, seconds, now_s))
    return out


def live_top_links(live: LiveCounters, now_s: int, top: int) -> list[int]:
    """The `top` links by clicks in the last 60 s (then by most recent click): the per-link
    scan touches only links with a click in the last hour."""
    recent = now_s - 3600
    scored: list[tuple[int, int, int]] = []
    for link_id, counters in live.links.items():
        last = counters.seconds.last
        if last < recent and counters.minutes.last < recent // 60:
            continue
        in_minute = counters.seconds.total(now_s - 59, now_s)[0] if last > now_s - 60 else 0
        scored.append((in_minute, max(last, counters.minutes.last * 60), link_id))
    scored.sort(reverse=True)
    return [link_id for _, _, link_id in scored[:top]]
