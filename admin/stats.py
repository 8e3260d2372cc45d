"""The numbers the admin side shows: every read SQL of admin/, time ranges, velocity.

Rules of this module:
- All SQL here only reads. Writes live in edge/store.py. Functions take a plain
  `sqlite3.Connection` and are synchronous: the API runs them on its own stats connection
  (an aiosqlite thread, so a slow query never delays link sync or click writes), the CLI
  calls them directly on the SQLite file, with or without a running server.
- Per-link numbers come from the rollups the click flusher maintains, never from a scan of
  `clicks` by link (that table has an index on `ts` only, on purpose: see DESIGN.md):
    link_minute      (link_id, minute)            clicks, humans     -> totals, series
    link_hour_dim    (link_id, hour, dim, value)  clicks, humans     -> breakdowns, bot kinds
    link_day_visitor (link_id, UTC day, visitor)  human              -> unique visitors
  Every query walks `links` first and seeks into a rollup's primary key per link
  (`links l CROSS JOIN rollup r ON r.link_id = l.id AND <range>`: SQLite never reorders a
  CROSS JOIN), so a campaign of 50 links reads those links' rows and nothing else.
- Resolution follows the rollups and is part of the contract (docs/api.md): clicks and the
  series are exact to the minute, breakdowns cover the whole UTC hours that overlap the
  range, unique visitors the whole UTC days. The visitor id's salt rotates every UTC day,
  so uniques over several days are the sum of each day's distinct visitors.
- The raw `clicks` table is read only by time range (its `ts` index), for launch
  checkpoints: at most the hour after a link's first click.
- Velocity and live windows read edge/live.py's in-process counters: no SQL.
"""

from __future__ import annotations

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
# Every real UTC offset (and every DST shift) is a multiple of 15 minutes (Nepal +5:45,
# Chatham +12:45), so a quarter hour of UTC lies inside one local hour and one local day:
# hour and day series are summed per quarter hour in SQL and bucketed in Python.
QUARTER_MINUTES: Final = 15

# Breakdown dimensions of link_hour_dim (edge/clicks.py DIMENSIONS) and their API names.
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
# How a stats answer is computed: every query walks the selected links and aggregates per
# link (GROUP BY l.id follows the scan, so SQLite never sorts), and Python folds the
# per-link rows into the answer's groups (one group, None, for a link or a selection;
# campaigns, tags, ... for group_by). Clicks written after the rollup watermark (the
# "tail") are folded in the same way, so answers are exact and current.

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
# Click columns of the breakdown dimensions, in edge/clicks.py's DIMENSIONS order.
_TAIL_DIMS: Final = (*DIMENSION_NAMES, BOT_KIND_DIM)
# Positions in a tail row: link, ts, visitor, the dimensions, the stored visitor's human.
_T_LINK, _T_TS, _T_VISITOR, _T_DIMS = 0, 1, 2, 3
_T_BOT = _T_DIMS + len(_TAIL_DIMS) - 1
_T_STORED = _T_DIMS + len(_TAIL_DIMS)

MinuteRow = tuple[Any, int, int, int]  # group key, minute, clicks, humans
Breakdown = dict[str, dict[str, list[int]]]  # dim -> value -> [clicks, humans]
GroupsOf = dict[int, list[Any]]  # link id -> its group keys


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
        self.groups_of: GroupsOf = {}
        key_sql = "NULL" if group_by is None else GROUP_KEY_SQL[group_by]
        tags = ", json_each(l.tags) t" if group_by == "tag" else ""
        for link_id, key in _tuples(
            conn, f"SELECT l.id, {key_sql} FROM links l{tags} WHERE {self.where}", self.params
        ):
            self.groups_of.setdefault(link_id, []).append(key)
        self.tail = self._tail(watermark)

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
            f"SELECT c.link_id, c.ts, c.visitor_id, {dims}, v.human "
            "FROM clicks c NOT INDEXED CROSS JOIN links l ON l.id = c.link_id "
            "LEFT JOIN link_day_visitor v ON v.link_id = c.link_id "
            "AND v.day = c.ts / 86400000 AND v.visitor_id = c.visitor_id "
            f"WHERE c.id > ? AND c.ts >= ? AND c.ts < ? AND {self.where}",
            (watermark, d_first * 86400000, (d_last + 1) * 86400000, *self.params),
        ).fetchall()

    def link_totals(self) -> dict[int, list[int]]:
        """Per link: [clicks, humans] in the range's minutes."""
        m_first, m_last = self.rng.minutes
        out: dict[int, list[int]] = {}
        for link_id, clicks, humans in _tuples(
            self.conn,
            f"SELECT l.id, sum(m.clicks), sum(m.humans) "
            f"{_from_links('link_minute', 'm', 'm.minute BETWEEN ? AND ?')} "
            f"WHERE {self.where} GROUP BY l.id",
            (m_first, m_last, *self.params),
        ):
            out[link_id] = [clicks, humans]
        for row in self.tail:
            if m_first <= row[_T_TS] // 60000 <= m_last:
                entry = out.setdefault(row[_T_LINK], [0, 0])
                entry[0] += 1
                entry[1] += 0 if row[_T_BOT] else 1
        return out

    def fold(self, per_link: dict[int, list[int]], keys: set[Any]) -> dict[Any, list[int]]:
        out: dict[Any, list[int]] = {}
        for link_id, (clicks, humans) in per_link.items():
            for key in self.groups_of.get(link_id, ()):
                if key in keys:
                    entry = out.setdefault(key, [0, 0])
                    entry[0] += clicks
                    entry[1] += humans
        return out

    def members(self, keys: set[Any]) -> list[int] | None:
        """The links in these groups (None: every selected link is)."""
        ids = [i for i, ks in self.groups_of.items() if any(k in keys for k in ks)]
        return None if len(ids) == len(self.groups_of) else ids

    def series(self, keys: set[Any], ids: list[int] | None) -> dict[Any, list[dict[str, Any]]]:
        """A zero-filled series per group. For hour and day series the minutes are summed
        per quarter hour (QUARTER_MINUTES) in SQL, which is all the bucketing needs."""
        rng = self.rng
        minute_sql = (
            "m.minute"
            if rng.interval == "minute"
            else (f"(m.minute / {QUARTER_MINUTES}) * {QUARTER_MINUTES}")
        )
        extra, extra_params = _ids_clause(ids)
        m_first, m_last = rng.minutes
        rows: list[MinuteRow] = []
        for link_id, minute, clicks, humans in _tuples(
            self.conn,
            f"SELECT l.id, {minute_sql} AS mm, sum(m.clicks), sum(m.humans) "
            f"{_from_links('link_minute', 'm', 'm.minute BETWEEN ? AND ?')} "
            f"WHERE {self.where}{extra} GROUP BY l.id, mm",
            (m_first, m_last, *self.params, *extra_params),
        ):
            for key in self.groups_of.get(link_id, ()):
                if key in keys:
                    rows.append((key, minute, clicks, humans))
        for row in self.tail:
            minute = row[_T_TS] // 60000
            if m_first <= minute <= m_last:
                for key in self.groups_of.get(row[_T_LINK], ()):
                    if key in keys:
                        rows.append((key, minute, 1, 0 if row[_T_BOT] else 1))
        return _series(rng, rows)

    def breakdowns(
        self, keys: set[Any], ids: list[int] | None, dims: Sequence[str] = _TAIL_DIMS
    ) -> dict[Any, Breakdown]:
        """Per group, per dimension, per value: [clicks, humans] over the range's UTC hours."""
        h_first, h_last = self.rng.hours
        extra, extra_params = _ids_clause(ids)
        dim_clause = ""
        if tuple(dims) != _TAIL_DIMS:
            dim_clause = f" AND d.dim IN ({', '.join('?' for _ in dims)})"
            extra_params = [*dims, *extra_params]
        out: dict[Any, Breakdown] = {}
        for link_id, dim, value, clicks, humans in _tuples(
            self.conn,
            f"SELECT l.id, d.dim, d.value, sum(d.clicks), sum(d.humans) "
            f"{_from_links('link_hour_dim', 'd', 'd.hour BETWEEN ? AND ?')} "
            f"WHERE {self.where}{dim_clause}{extra} GROUP BY l.id, d.dim, d.value",
            (h_first, h_last, *self.params, *extra_params),
        ):
            for key in self.groups_of.get(link_id, ()):
                if key in keys:
                    entry = out.setdefault(key, {}).setdefault(dim, {}).setdefault(value, [0, 0])
                    entry[0] += clicks
                    entry[1] += humans
        columns = [(dim, _T_DIMS + _TAIL_DIMS.index(dim)) for dim in dims]
        for row in self.tail:
            if not h_first <= row[_T_TS] // 3600000 <= h_last:
                continue
            human = 0 if row[_T_BOT] else 1
            for key in self.groups_of.get(row[_T_LINK], ()):
                if key not in keys:
                    continue
                per_dim = out.setdefault(key, {})
                for dim, col in columns:
                    entry = per_dim.setdefault(dim, {}).setdefault(row[col], [0, 0])
                    entry[0] += 1
                    entry[1] += human
        return out

    def uniques(self, keys: set[Any], ids: list[int] | None) -> dict[Any, list[int]]:
        """Per group: [unique visitors, visitors with a human click], each UTC day's distinct
        visitors summed over the range's days. A group of one link counts its visitor rows
        in SQL; a group of several dedupes visitors seen on more than one of its links."""
        d_first, d_last = self.rng.days
        extra, extra_params = _ids_clause(ids)
        members: dict[Any, int] = {}
        for ks in self.groups_of.values():
            for k in ks:
                if k in keys:
                    members[k] = members.get(k, 0) + 1
        single = all(n == 1 for n in members.values())
        source = _from_links("link_day_visitor", "v", "v.day BETWEEN ? AND ?")
        out: dict[Any, list[int]] = {}
        if single:  # one link per group: its rows are already distinct
            for link_id, count, humans in _tuples(
                self.conn,
                f"SELECT l.id, count(*), sum(v.human) {source} "
                f"WHERE {self.where}{extra} GROUP BY l.id",
                (d_first, d_last, *self.params, *extra_params),
            ):
                for key in self.groups_of.get(link_id, ()):
                    if key in keys:
                        out[key] = [count, humans or 0]
            tail_seen: dict[tuple[Any, int, bytes], list[Any]] = {}
            for row in self.tail:
                day = row[_T_TS] // 86400000
                if row[_T_VISITOR] is None or not d_first <= day <= d_last:
                    continue
                for key in self.groups_of.get(row[_T_LINK], ()):
                    if key in keys:
                        tkey = (key, day, bytes(row[_T_VISITOR]))
                        human = 0 if row[_T_BOT] else 1
                        seen = tail_seen.setdefault(tkey, [row[_T_STORED], 0])
                        seen[1] = max(seen[1], human)
            for (key, _day, _visitor), (stored, human) in tail_seen.items():
                counts = out.setdefault(key, [0, 0])
                if stored is None:  # a visitor the rollup does not have yet
                    counts[0] += 1
                    counts[1] += human
                elif human and not stored:
                    counts[1] += 1
            return out
        visitors: dict[Any, dict[tuple[int, bytes], int]] = {}
        rows: Iterable[tuple[Any, ...]] = _tuples(
            self.conn,
            f"SELECT l.id, v.day, v.visitor_id, v.human {source} WHERE {self.where}{extra}",
            (d_first, d_last, *self.params, *extra_params),
        )
        tail_rows = [
            (r[_T_LINK], r[_T_TS] // 86400000, r[_T_VISITOR], 0 if r[_T_BOT] else 1)
            for r in self.tail
            if r[_T_VISITOR] is not None and d_first <= r[_T_TS] // 86400000 <= d_last
        ]
        for link_id, day, visitor, human in itertools.chain(rows, tail_rows):
            for key in self.groups_of.get(link_id, ()):
                if key in keys:
                    per_key = visitors.setdefault(key, {})
                    vkey = (day, visitor)
                    if per_key.get(vkey, -1) < human:
                        per_key[vkey] = human
        return {key: [len(v), sum(v.values())] for key, v in visitors.items()}


def _series(rng: TimeRange, rows: Iterable[MinuteRow]) -> dict[Any, list[dict[str, Any]]]:
    """Minute rows -> a zero-filled series per group, bucketed in the range's time zone."""
    starts = bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
    n = len(starts)
    per_group: dict[Any, list[list[int]]] = {}
    for key, minute, clicks, humans in rows:
        i = bisect.bisect_right(starts, minute * 60) - 1
        if i < 0 or i >= n:
            continue
        buckets = per_group.get(key)
        if buckets is None:
            buckets = per_group[key] = [[0, 0] for _ in range(n)]
        buckets[i][0] += clicks
        buckets[i][1] += humans
    labels = [iso_local(t, rng.tz) for t in starts]
    return {
        key: [
            {"t": label, "clicks": c, "humans": h}
            for label, (c, h) in zip(labels, buckets, strict=True)
        ]
        for key, buckets in per_group.items()
    }


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
        per_link = sel.link_totals()
        all_keys = {k for ks in sel.groups_of.values() for k in ks}
        totals = sel.fold(per_link, all_keys)
        ranked = sorted(
            (k for k, (c, _h) in totals.items() if c), key=lambda k: (-totals[k][0], str(k))
        )
        keys = ranked[:limit]
        wanted = set(keys)
        ids = sel.members(wanted)
        series = sel.series(wanted, ids)
        breakdowns = sel.breakdowns(wanted, ids, (BOT_KIND_DIM,))
        uniques = sel.uniques(wanted, ids)
        names = link_names(conn, keys) if group_by == "link" else {}
    sizes: dict[Any, int] = {}
    for ks in sel.groups_of.values():
        for k in ks:
            sizes[k] = sizes.get(k, 0) + 1
    groups = []
    for key in keys:
        clicks, humans = totals[key]
        unique, human_unique = uniques.get(key, [0, 0])
        group: dict[str, Any] = {"key": key}
        if key in names:
            group["domain"], group["slug"] = names[key]
            group["short_url"] = short_url(*names[key])
        group.update(
            {
                "links": sizes.get(key, 0),
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
    clicks = sum(c for c, _h in per_link.values())
    humans = sum(h for _c, h in per_link.values())
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
