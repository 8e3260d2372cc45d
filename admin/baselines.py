"""Baselines: what is normal for a link, a campaign or a source, so a number can be read as
"above/below baseline by X%" rather than on its own.

Two baselines, both of human clicks (bots would make every curve look like a spike):
- **First hour**: the cumulative clicks of each of the first 60 minutes after a link's
  first click, for the earlier links of the same campaign (or UTM source) whose first hour
  is over: per minute the median and the 25th/75th percentiles. A link in its first hour is
  compared with the median at the same minute. Needs MIN_PEERS earlier links; the most
  recent MAX_PEERS are used.
- **Hour of week**: the clicks per hour in each of the 168 hours of a UTC week (Monday
  00:00 is 0) over the last BASELINE_WEEKS weeks: per hour of week the median over the
  weeks observed (an hour without clicks counts as 0 once the subject had its first
  click). The last complete hour is compared with it. Needs MIN_HISTORY_DAYS of history
  before that hour.
Without enough history the answer says "no baseline yet" and what is missing; a
percentage is given only against a median above zero.

Rules of this module:
- Every function reads rollups only (link_minute, link_hour, group_hour) through their
  primary keys, never the raw clicks, and runs on a database thread (`db.run`): the work
  grows with the number of earlier links and weeks, never on the event loop.
- Rollups lag the clicks by about a second (edge/rollups.py): a baseline is history, the
  last second does not matter to it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from admin import timerange

MIN_PEERS: Final = 3  # earlier links with a complete first hour before a curve is shown
MAX_PEERS: Final = 50  # the most recent earlier links make the curve
# The newest links of a group looked at for peers (one primary-key probe each): a campaign
# of 100,000 links costs the same as one of 1,000.
MAX_PROBED_LINKS: Final = 1000
CHECKPOINTS_MIN: Final = (15, 30, 60)  # the launch checkpoints (admin/stats.py)
CURVE_MINUTES: Final = 60
MIN_HISTORY_DAYS: Final = 14  # two samples of every hour of the week
BASELINE_WEEKS: Final = 8
HOURS_PER_WEEK: Final = 168
# Unix hour 0 (1970-01-01, a Thursday) is hour 72 of its Monday-based week.
_EPOCH_HOUR_OF_WEEK: Final = 72


def hour_of_week(unix_hour: int) -> int:
    return (unix_hour + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's
    default, 'inclusive'); values must not be empty."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def versus(actual: float, median: float) -> dict[str, Any]:
    """How `actual` compares with a median: above/below by X%, or no percentage."""
    if median <= 0:
        return {
            "actual": actual,
            "median": median,
            "percent": None,
            "text": "no baseline yet (the typical value is 0)",
        }
    pct = round((actual - median) / median * 100, 1)
    word = "above" if pct > 0 else "below" if pct < 0 else "at"
    text = f"{word} baseline by {abs(pct):g}%" if pct else "at baseline"
    return {"actual": actual, "median": median, "percent": pct, "text": text}


# --- first-hour curves ----------------------------------------------------------------------


def first_minutes(conn: sqlite3.Connection, link_ids: Sequence[int]) -> dict[int, int]:
    """Each link's first minute with a click (links without clicks are left out)."""
    out: dict[int, int] = {}
    for link_id in link_ids:  # one primary-key probe each
        row = conn.execute(
            "SELECT min(minute) FROM link_minute WHERE link_id = ?", (link_id,)
        ).fetchone()
        if row[0] is not None:
            out[link_id] = int(row[0])
    return out


def cumulative_curve(conn: sqlite3.Connection, link_id: int, first: int) -> list[int]:
    """Human clicks up to and including each of the 60 minutes from `first`."""
    per = [0] * CURVE_MINUTES
    for minute, humans in conn.execute(
        "SELECT minute, humans FROM link_minute WHERE link_id = ? AND minute BETWEEN ? AND ?",
        (link_id, first, first + CURVE_MINUTES - 1),
    ):
        per[minute - first] += humans
    total = 0
    out = []
    for n in per:
        total += n
        out.append(total)
    return out


def _group_links(conn: sqlite3.Connection, dim: str, key: str) -> list[int]:
    if dim not in ("campaign", "utm_source"):
        raise ValueError(dim)
    rows = conn.execute(
        f"SELECT id FROM links WHERE {dim} = ? ORDER BY id DESC LIMIT ?", (key, MAX_PROBED_LINKS)
    )  # links_campaign (migration 0008), links_utm_source (0012)
    return [r[0] for r in rows]


def first_hour(
    conn: sqlite3.Connection,
    dim: str,
    key: str,
    now_ms: int,
    *,
    before_minute: int | None = None,
    exclude: int | None = None,
) -> dict[str, Any]:
    """The first-hour curve of the group's links whose first hour ended by now (and, with
    `before_minute`, whose first click came before it)."""
    now_minute = now_ms // 60000
    ids = [i for i in _group_links(conn, dim, key) if i != exclude]
    firsts = first_minutes(conn, ids)
    done = [
        (first, link_id)
        for link_id, first in firsts.items()
        if first + CURVE_MINUTES <= now_minute and (before_minute is None or first < before_minute)
    ]
    done.sort(reverse=True)
    peers = done[:MAX_PEERS]
    out: dict[str, Any] = {
        "group": {"dim": dim, "key": key},
        "links": len(peers),
        "needs_links": MIN_PEERS,
    }
    if len(peers) < MIN_PEERS:
        out["enough"] = False
        out["text"] = (
            f"no baseline yet: {len(peers)} earlier link(s) of {dim} {key!r} with a complete "
            f"first hour, {MIN_PEERS} needed"
        )
        out["curve"] = []
        return out
    curves = [cumulative_curve(conn, link_id, first) for first, link_id in peers]
    out["enough"] = True
    out["text"] = f"from {len(peers)} earlier links of {dim} {key!r}"
    out["curve"] = [
        {
            "minute": m + 1,
            "median": quantile([c[m] for c in curves], 0.5),
            "p25": quantile([c[m] for c in curves], 0.25),
            "p75": quantile([c[m] for c in curves], 0.75),
        }
        for m in range(CURVE_MINUTES)
    ]
    out["checkpoints"] = [
        {"minutes": m, **{k: out["curve"][m - 1][k] for k in ("median", "p25", "p75")}}
        for m in CHECKPOINTS_MIN
    ]
    return out


# --- hour of week ------------------------------------------------------------------------------


def _weekly(hours: dict[int, int], start_hour: int, end_hour: int) -> dict[str, Any]:
    """Per hour of week, the median of the hourly counts in [start_hour, end_hour)."""
    samples: list[list[int]] = [[] for _ in range(HOURS_PER_WEEK)]
    for h in range(start_hour, end_hour):
        samples[hour_of_week(h)].append(hours.get(h, 0))
    return {
        "median": [quantile(s, 0.5) if s else None for s in samples],
        "samples": [len(s) for s in samples],
    }


def _hours_of(
    conn: sqlite3.Connection, subject: dict[str, Any], lo: int, hi: int
) -> dict[int, int]:
    if subject["dim"] == "link":
        rows = conn.execute(
            "SELECT hour, humans FROM link_hour WHERE link_id = ? AND hour BETWEEN ? AND ?",
            (subject["key"], lo, hi),
        )
    else:
        rows = conn.execute(
            "SELECT hour, sum(clicks) FROM group_hour WHERE dim = ? AND key = ? AND kind = '' "
            "AND hour BETWEEN ? AND ? GROUP BY hour",
            (subject["dim"], str(subject["key"]), lo, hi),
        )
    return {int(h): int(n) for h, n in rows}


def _first_hour_of(conn: sqlite3.Connection, subject: dict[str, Any]) -> int | None:
    if subject["dim"] == "link":
        row = conn.execute(
            "SELECT min(hour) FROM link_hour WHERE link_id = ?", (subject["key"],)
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT min(hour) FROM group_hour WHERE dim = ? AND key = ?",
            (subject["dim"], str(subject["key"])),
        ).fetchone()
    return None if row[0] is None else int(row[0])


def hour_of_week_baseline(
    conn: sqlite3.Connection, subject: dict[str, Any], now_ms: int
) -> dict[str, Any]:
    """The typical human clicks per hour by hour of week, and the last complete hour
    against it. `subject` is {"dim": "link"|"campaign"|"utm_source", "key": ...}."""
    current = now_ms // 3_600_000 - 1  # the last complete hour
    first = _first_hour_of(conn, subject)
    start = current - BASELINE_WEEKS * HOURS_PER_WEEK
    if first is not None:
        start = max(start, first)
    history_h = 0 if first is None else max(0, current - start)
    hours = _hours_of(conn, subject, start, current) if first is not None else {}
    weekly = _weekly(hours, start, current)
    out: dict[str, Any] = {
        "history_hours": history_h,
        "needs_hours": MIN_HISTORY_DAYS * 24,
        "weeks": BASELINE_WEEKS,
        "timezone": "UTC",
        "by_hour_of_week": weekly["median"],
        "samples": weekly["samples"],
    }
    if first is None or history_h < MIN_HISTORY_DAYS * 24:
        out["enough"] = False
        out["text"] = (
            f"no baseline yet: {history_h / 24:.1f} days of history, {MIN_HISTORY_DAYS} needed"
        )
        return out
    slot = hour_of_week(current)
    median = weekly["median"][slot] or 0.0
    actual = hours.get(current, 0)
    out["enough"] = True
    out["last_hour"] = {
        "hour": timerange.iso_ms(current * 3_600_000),
        "hour_of_week": slot,
        **versus(actual, median),
    }
    out["text"] = out["last_hour"]["text"]
    return out


# --- per subject --------------------------------------------------------------------------


def link_baseline(conn: sqlite3.Connection, link: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A link's first hour against its campaign's and its source's earlier links, and its
    last hour against its own hour-of-week baseline."""
    link_id = link["id"]
    firsts = first_minutes(conn, [link_id])
    first = firsts.get(link_id)
    now_minute = now_ms // 60000
    own: list[int] = cumulative_curve(conn, link_id, first) if first is not None else []
    elapsed = None if first is None else min(CURVE_MINUTES, now_minute - first + 1)
    out: dict[str, Any] = {
        "link_id": link_id,
        "first_click_at": None if first is None else timerange.iso_ms(first * 60000),
        "first_hour": {},
    }
    for dim in ("campaign", "utm_source"):
        key = link.get(dim)
        if not key:
            out["first_hour"][dim] = {
                "enough": False,
                "text": f"no baseline: the link has no {dim}",
            }
            continue
        base = first_hour(
            conn,
            dim,
            key,
            now_ms,
            before_minute=first if first is not None else now_minute,
            exclude=link_id,
        )
        if base["enough"] and elapsed is not None:
            point = base["curve"][elapsed - 1]
            base["at_minute"] = elapsed
            base["versus"] = versus(own[elapsed - 1], point["median"])
            base["text"] = f"{base['versus']['text']} at minute {elapsed} ({base['text']})"
            for mark in base["checkpoints"]:
                reached = elapsed >= mark["minutes"]
                mark["complete"] = reached
                mark["actual"] = own[min(elapsed, mark["minutes"]) - 1]
                if reached:
                    mark["versus"] = versus(mark["actual"], mark["median"])
        elif base["enough"]:
            base["text"] = f"no clicks yet to compare ({base['text']})"
        out["first_hour"][dim] = base
    out["own_curve"] = own[:elapsed] if elapsed is not None else []
    out["hour_of_week"] = hour_of_week_baseline(conn, {"dim": "link", "key": link_id}, now_ms)
    return out


def group_baseline(conn: sqlite3.Connection, dim: str, key: str, now_ms: int) -> dict[str, Any]:
    """A campaign's or source's first-hour curve (of its links) and its hour-of-week rate."""
    return {
        "group": {"dim": dim, "key": key},
        "first_hour": first_hour(conn, dim, key, now_ms),
        "hour_of_week": hour_of_week_baseline(conn, {"dim": dim, "key": key}, now_ms),
    }


def summary(conn: sqlite3.Connection, link: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The link's baselines in a few words, for its stats (API and CLI)."""
    full = link_baseline(conn, link, now_ms)
    out: dict[str, Any] = {}
    for dim, base in full["first_hour"].items():
        out[f"first_hour_{dim}"] = {
            "enough": base["enough"],
            "percent": (base.get("versus") or {}).get("percent"),
            "text": base["text"],
        }
    how = full["hour_of_week"]
    out["hour_of_week"] = {
        "enough": how["enough"],
        "percent": (how.get("last_hour") or {}).get("percent"),
        "text": how["text"],
    }
    return out
