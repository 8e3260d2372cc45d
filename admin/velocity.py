"""Velocity and live windows: is a link, campaign or the whole edge accelerating or
stalling, from the live counters (edge/live.py) or, in the CLI, the minute rollup.

Rules: one definition of velocity (`velocity_of`) for the API, the SSE stream and the CLI;
both sources count the same window: the last W seconds up to now, current minute
included, against the W seconds before.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
from collections.abc import Iterable
from typing import Any, Final

from admin.timerange import RELATIVE_UNITS_S
from edge.errors import InvalidField
from edge.live import LiveCounters
from edge.rollups import read_snapshot

MINUTE_MS: Final = 60_000
# Links summed per step of live_velocity_async (~5 µs each).
VELOCITY_SLICE: Final = 200

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

# Live: the windows /api/live shows and how many links it lists by default.
LIVE_WINDOWS: Final = (("60s", 60), ("5m", 300), ("15m", 900), ("60m", 3600))
DEFAULT_LIVE_TOP: Final = 10
MAX_LIVE_TOP: Final = 100

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
    if link_ids is None:
        return velocity_of(*live_windows_pair(live, None, window_s, now_s), window_s)
    current = previous = 0
    for link_id in link_ids:
        c, p = live_windows_pair(live, link_id, window_s, now_s)
        current += c
        previous += p
    return velocity_of(current, previous, window_s)


def live_windows_pair(
    live: LiveCounters, link_id: int | None, window_s: int, now_s: int
) -> tuple[int, int]:
    """(clicks in the current window, clicks in the one before) of a link or everything."""
    current_start, previous_start = now_s - window_s + 1, now_s - 2 * window_s + 1
    current = live.window_between(link_id, current_start, now_s)[0]
    previous = live.window_between(link_id, previous_start, current_start - 1)[0]
    return current, previous


async def live_velocity_async(
    live: LiveCounters, link_ids: list[int], window_s: int, now_s: int
) -> dict[str, Any]:
    """live_velocity of many links, yielding to the event loop every VELOCITY_SLICE links
    (a 1,000-link campaign never holds the loop for more than a slice)."""
    current = previous = 0
    for i, link_id in enumerate(link_ids):
        if i and i % VELOCITY_SLICE == 0:
            await asyncio.sleep(0)
        c, p = live_windows_pair(live, link_id, window_s, now_s)
        current += c
        previous += p
    return velocity_of(current, previous, window_s)


def _clicks_between(conn: sqlite3.Connection, link_id: int, lo_ms: int, hi_ms: int, wm: int) -> int:
    """A link's clicks with lo_ms <= ts < hi_ms (inside a read_snapshot with watermark
    `wm`): whole minutes from link_minute plus those not rolled up yet, the partial
    minutes at both ends from `clicks` by its ts index (at most a minute of it each)."""
    m_lo, m_hi = -(-lo_ms // MINUTE_MS), hi_ms // MINUTE_MS  # whole minutes [m_lo, m_hi)
    if m_lo >= m_hi:
        edges = [(lo_ms, hi_ms)]
        total = 0
    else:
        edges = [(lo_ms, m_lo * MINUTE_MS), (m_hi * MINUTE_MS, hi_ms)]
        total = conn.execute(
            "SELECT coalesce(sum(clicks), 0) FROM link_minute WHERE link_id = ? "
            "AND minute >= ? AND minute < ?",
            (link_id, m_lo, m_hi),
        ).fetchone()[0]
        total += conn.execute(
            "SELECT count(*) FROM clicks NOT INDEXED WHERE id > ? AND link_id = ? "
            "AND ts >= ? AND ts < ?",
            (wm, link_id, m_lo * MINUTE_MS, m_hi * MINUTE_MS),
        ).fetchone()[0]
    for a, b in edges:
        if a < b:
            total += conn.execute(
                "SELECT count(*) FROM clicks WHERE ts >= ? AND ts < ? AND link_id = ?",
                (a, b, link_id),
            ).fetchone()[0]
    return int(total)


def rollup_velocity(
    conn: sqlite3.Connection, link_id: int, window_s: int, now_s: int
) -> dict[str, Any]:
    """The same velocity as live_velocity (the same two windows, the current second
    included), counted from SQLite: for the CLI, which has no live counters."""
    now_ms = (now_s + 1) * 1000
    w_ms = window_s * 1000
    with read_snapshot(conn) as watermark:
        current = _clicks_between(conn, link_id, now_ms - w_ms, now_ms, watermark)
        previous = _clicks_between(conn, link_id, now_ms - 2 * w_ms, now_ms - w_ms, watermark)
    return velocity_of(current, previous, window_s)


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
    """The `top` links by clicks in the last 60 s (then by most recent click), from the
    counters' running per-link minute (no visit of every link)."""
    return live.busiest(now_s, top)
