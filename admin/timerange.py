"""Time ranges of the admin side: instants, zones, buckets, the range of a stats request.

Rules: one parser of times for the API and the CLI (`parse_instant`): `now`, relative
(`-15m`, `+7d`), Unix milliseconds, ISO 8601; a time without an offset is in the
request's zone. Buckets are local minutes, hours or days, stepped across DST shifts.
Times stored in SQLite are Unix milliseconds (UTC); ranges here are Unix seconds.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.catalog import MAX_TIME_MS, MIN_TIME_MS
from edge.errors import InvalidField

UTC: Final = dt.UTC
# Every time given to the API or the CLI lies in the range a link may hold
# (edge/catalog.py): 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIME_S: Final = MIN_TIME_MS // 1000
MAX_TIME_S: Final = MAX_TIME_MS // 1000
_MAX_MS_DIGITS: Final = 15  # Unix ms up to year 9999; longer is out of range (or a DoS)
# What the parser accepts, as each kind of time is shown in an error.
STATS_TIME_FORMS: Final = (
    "ISO 8601 (2025-03-01T09:30:00Z), relative (-15m, -24h, -7d), Unix milliseconds or 'now'"
)
LINK_TIME_FORMS: Final = (
    "ISO 8601 (2026-12-31T23:59:00Z; UTC without an offset), relative like +7d or +12h, "
    "or Unix milliseconds"
)


# A series longer than this is refused with a hint to use a coarser interval: 10,000 points
# is a week by the minute or a year by the hour, more than any chart shows.
MAX_SERIES_POINTS: Final = 10_000
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


def parse_instant(
    text: str, field: str, now_s: float, tz: dt.tzinfo = UTC, forms: str = STATS_TIME_FORMS
) -> float:
    """A point in time as Unix seconds, from MIN_TIME_S to MAX_TIME_S (else a 400 naming
    the field; `forms` is what the error says is accepted).

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
        return in_range(now_s + seconds if rel.group(1) == "+" else now_s - seconds, field)
    if value.isdigit():
        if len(value) > _MAX_MS_DIGITS:
            raise _out_of_range(field)
        return in_range(int(value) / 1000, field)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField(f"{field}: expected {forms}; got {text!r}", field) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return in_range(when.timestamp(), field)


def in_range(ts_s: float, field: str) -> float:
    if not MIN_TIME_S <= ts_s <= MAX_TIME_S:
        raise _out_of_range(field)
    return ts_s


def _out_of_range(field: str) -> InvalidField:
    return InvalidField(
        f"{field} is out of range: give a time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
        field,
    )


def time_ms(value: Any, field: str, now_s: float) -> int | None:
    """A link time from JSON or the CLI: null, Unix milliseconds, ISO 8601 (UTC if no
    offset) or relative (+7d), within MIN_TIME_S..MAX_TIME_S."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidField(f"{field} must be {LINK_TIME_FORMS}", field)
    if isinstance(value, int):
        if not MIN_TIME_MS <= value <= MAX_TIME_MS:
            raise _out_of_range(field)
        return value
    if isinstance(value, str):
        return round(parse_instant(value, field, now_s, UTC, LINK_TIME_FORMS) * 1000)
    raise InvalidField(f"{field} must be {LINK_TIME_FORMS}", field)


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
