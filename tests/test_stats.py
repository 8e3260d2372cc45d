"""admin/stats.py on real SQLite files: times and zones, series buckets, rollups plus the
not-yet-rolled-up tail, group-by, pagination, checkpoints, and velocity labels computed
from constructed click histories in edge/live.py's counters."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from admin import stats, timerange, velocity
from edge import catalog, rollups
from edge.db import Transaction, now_ms
from edge.errors import InvalidField
from edge.live import LiveCounters

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
NOW = 1_717_243_200  # 2024-06-01T12:00:00Z, a fixed "now" for relative times


def ts(text: str) -> int:
    """ISO 8601 (with offset) -> Unix seconds."""
    return int(dt.datetime.fromisoformat(text).timestamp())


# --- times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-15m", NOW - 900),
        ("-24h", NOW - 86400),
        ("-7d", NOW - 7 * 86400),
        ("+2h", NOW + 7200),
        ("-30s", NOW - 30),
        ("2024-06-01T10:00:00Z", NOW - 7200),
        ("2024-06-01T12:00:00+02:00", NOW - 7200),
        ("1717243200000", NOW),
    ],
)
def test_parse_instant_accepts_iso_relative_and_unix_ms(text: str, expected: int) -> None:
    assert timerange.parse_instant(text, "from", NOW) == expected


def test_parse_instant_reads_a_time_without_offset_in_the_requested_zone() -> None:
    assert timerange.parse_instant("2024-06-01T14:00", "from", NOW, PARIS) == NOW
    assert timerange.parse_instant("2024-06-01", "from", NOW, PARIS) == ts("2024-06-01T00:00+02:00")
    assert timerange.parse_instant("2024-06-01T12:00", "from", NOW) == NOW  # UTC by default


@pytest.mark.parametrize("text", ["yesterday", "-15x", "15m", "2024-13-01", ""])
def test_parse_instant_refuses_garbage_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidField) as err:
        timerange.parse_instant(text, "to", NOW)
    assert err.value.field == "to"


def test_time_range_defaults_to_the_last_24_hours_by_the_hour() -> None:
    rng = timerange.time_range(None, None, None, None, NOW)
    assert (rng.from_s, rng.to_s, rng.interval, rng.tz_name) == (NOW - 86400, NOW, "hour", "UTC")
    assert timerange.time_range("-1h", None, None, None, NOW).interval == "minute"
    assert timerange.time_range("-30d", None, None, None, NOW).interval == "day"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("-1h", "-2h", None, None), "from"),
        (("-1h", None, "week", None), "interval"),
        (("-1h", None, None, "Mars/Olympus"), "tz"),
        (("-30d", None, "minute", None), "interval"),  # 43,200 points: too many
    ],
)
def test_time_range_errors_name_the_field(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(InvalidField) as err:
        timerange.time_range(*args, NOW)
    assert err.value.field == field


def test_day_buckets_follow_local_midnight_across_a_dst_change() -> None:
    # Europe/Paris springs forward on 2024-03-31: that day has 23 hours.
    starts = timerange.bucket_starts(
        ts("2024-03-30T00:00+01:00"), ts("2024-04-02T00:00+02:00"), "day", PARIS
    )
    labels = [timerange.iso_local(t, PARIS) for t in starts]
    assert labels == [
        "2024-03-30T00:00:00+01:00",
        "2024-03-31T00:00:00+01:00",
        "2024-04-01T00:00:00+02:00",
    ]
    assert starts[2] - starts[1] == 23 * 3600


def test_hour_buckets_skip_and_repeat_local_hours_at_dst_changes() -> None:
    spring = timerange.bucket_starts(
        ts("2024-03-31T00:00+01:00"), ts("2024-03-31T05:00+02:00"), "hour", PARIS
    )
    assert [timerange.iso_local(t, PARIS)[11:] for t in spring] == [
        "00:00:00+01:00",
        "01:00:00+01:00",
        "03:00:00+02:00",  # 02:00 does not exist that night
        "04:00:00+02:00",
    ]
    autumn = timerange.bucket_starts(
        ts("2024-10-27T01:00+02:00"), ts("2024-10-27T04:00+01:00"), "hour", PARIS
    )
    assert [timerange.iso_local(t, PARIS)[11:] for t in autumn] == [
        "01:00:00+02:00",
        "02:00:00+02:00",
        "02:00:00+01:00",  # 02:00 happens twice
        "03:00:00+01:00",
    ]
    assert all(b - a == 3600 for a, b in zip(autumn, autumn[1:], strict=False))


def test_hour_buckets_in_half_and_quarter_hour_zones() -> None:
    start = ts("2024-06-01T00:00:00Z")
    kolkata = timerange.bucket_starts(start, start + 3 * 3600, "hour", ZoneInfo("Asia/Kolkata"))
    assert [t % 3600 for t in kolkata] == [1800] * 4  # local hours start at :30 UTC
    nepal = timerange.bucket_starts(start, start + 3600, "hour", ZoneInfo("Asia/Kathmandu"))
    assert [t % 3600 for t in nepal] == [900, 900]  # and at :15 UTC in Nepal (+5:45)


# --- a database with rollups and a tail ---------------------------------------------------

_COLUMN = {name: i for i, name in enumerate(rollups.CLICK_COLUMNS)}


def click(at: int, link_id: int, visitor: bytes | None = b"v1", **fields: Any) -> tuple[Any, ...]:
    """A click row in rollups.CLICK_COLUMNS order (a human Chrome click unless told)."""
    row: list[Any] = [None] * len(rollups.CLICK_COLUMNS)
    values = {
        "ts": at * 1000,
        "link_id": link_id,
        "visitor_id": visitor,
        "method": "GET",
        "device_type": "desktop",
        "browser": "Chrome",
        "source": "direct",
        "dnt": 0,
        **fields,
    }
    for name, value in values.items():
        row[_COLUMN[name]] = value
    return tuple(row)


def write_clicks(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    with Transaction(conn):
        rollups.insert_clicks(conn, rows)


def roll_up(conn: sqlite3.Connection) -> None:
    """What the flusher does once a second: roll up the clicks past the watermark."""
    with Transaction(conn):
        rollups.roll_up(conn)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = catalog.open_db(str(tmp_path / "stats.db"))
    yield c
    c.close()


def link(conn: sqlite3.Connection, slug: str, **fields: Any) -> int:
    return int(
        catalog.create_link(conn, {"url": "https://example.com/", **fields}, slug=slug)["id"]
    )


def one_link_stats(
    conn: sqlite3.Connection, link_id: int, frm: str, to: str, interval: str, tz: str = "UTC"
) -> dict[str, Any]:
    rng = timerange.time_range(frm, to, interval, tz, NOW)
    return stats.selection_stats(conn, catalog.LinkFilter(link_id=link_id), rng)


def test_link_stats_count_rollups_and_the_tail_exactly_once(conn: sqlite3.Connection) -> None:
    a = link(conn, "a")
    base = ts("2024-06-01T10:00:00Z")
    write_clicks(
        conn,
        [
            click(base + 5, a, b"v1", country="DE", referrer_host="t.co", source="twitter"),
            click(base + 65, a, b"v2", country="DE"),
            click(base + 70, a, b"bot", bot_kind="crawler", device_type="bot", browser=None),
        ],
    )
    roll_up(conn)
    # Written after the last rollup: only the tail knows these two.
    write_clicks(conn, [click(base + 3600, a, b"v1", country="FR"), click(base + 3601, a, None)])
    before = one_link_stats(conn, a, "2024-06-01T09:00:00Z", "2024-06-01T12:00:00Z", "hour")
    roll_up(conn)
    after = one_link_stats(conn, a, "2024-06-01T09:00:00Z", "2024-06-01T12:00:00Z", "hour")
    assert before == after
    assert after["totals"] == {
        "clicks": 5,
        "humans": 4,
        "bots": 1,
        "uniques": 3,  # v1, v2, bot; the DNT click has no visitor id
        "human_uniques": 2,
    }
    assert after["bots_by_kind"] == {"crawler": 1}
    assert [(p["t"], p["clicks"], p["humans"]) for p in after["series"]] == [
        ("2024-06-01T09:00:00+00:00", 0, 0),
        ("2024-06-01T10:00:00+00:00", 3, 2),
        ("2024-06-01T11:00:00+00:00", 2, 2),
    ]
    assert after["top"]["countries"] == [
        {"value": "DE", "clicks": 2, "humans": 2},
        {"value": None, "clicks": 2, "humans": 1},  # unknown after known on a tie
        {"value": "FR", "clicks": 1, "humans": 1},
    ]
    assert after["top"]["referrer_hosts"][0] == {"value": None, "clicks": 4, "humans": 3}
    assert {"value": "t.co", "clicks": 1, "humans": 1} in after["top"]["referrer_hosts"]


def test_uniques_are_summed_over_utc_days(conn: sqlite3.Connection) -> None:
    a = link(conn, "a")
    day1 = ts("2024-05-30T23:00:00Z")
    day2 = ts("2024-05-31T01:00:00Z")
    write_clicks(conn, [click(day1, a, b"v1"), click(day1 + 60, a, b"v1"), click(day2, a, b"v1")])
    roll_up(conn)
    result = one_link_stats(conn, a, "2024-05-30T00:00Z", "2024-06-01T00:00Z", "day")
    # The same person on two UTC days is two daily uniques (the salt rotates daily).
    assert result["totals"]["uniques"] == 2
    one_day = one_link_stats(conn, a, "2024-05-30T00:00Z", "2024-05-31T00:00Z", "hour")
    assert one_day["totals"]["uniques"] == 1
    assert one_day["totals"]["clicks"] == 2


def test_series_is_zero_filled_in_the_requested_zone(conn: sqlite3.Connection) -> None:
    a = link(conn, "a")
    # 22:30 UTC on the 30th is 23:30 in Paris (still the 30th); 01:30 UTC on the 31st is
    # 03:30 CEST, the 31st, after the DST change.
    write_clicks(
        conn,
        [click(ts("2024-03-30T22:30:00Z"), a), click(ts("2024-03-31T01:30:00Z"), a, b"v2")],
    )
    roll_up(conn)
    result = one_link_stats(conn, a, "2024-03-29", "2024-04-01", "day", "Europe/Paris")
    assert [(p["t"], p["clicks"]) for p in result["series"]] == [
        ("2024-03-29T00:00:00+01:00", 0),
        ("2024-03-30T00:00:00+01:00", 1),
        ("2024-03-31T00:00:00+01:00", 1),
    ]
    utc = one_link_stats(conn, a, "2024-03-29", "2024-04-01", "day", "UTC")
    assert [p["clicks"] for p in utc["series"]] == [0, 1, 1]
    hours = one_link_stats(conn, a, "2024-03-31T00:00", "2024-03-31T04:00", "hour", "Europe/Paris")
    assert [(p["t"][11:], p["clicks"]) for p in hours["series"]] == [
        ("00:00:00+01:00", 0),
        ("01:00:00+01:00", 0),
        ("03:00:00+02:00", 1),
    ]


def test_minute_series_counts_partial_edge_minutes(conn: sqlite3.Connection) -> None:
    a = link(conn, "a")
    base = ts("2024-06-01T11:50:00Z")
    write_clicks(conn, [click(base + 10, a), click(base + 130, a), click(base + 135, a)])
    roll_up(conn)
    result = one_link_stats(conn, a, "2024-06-01T11:50:30Z", "2024-06-01T11:53:00Z", "minute")
    assert [p["clicks"] for p in result["series"]] == [1, 0, 2]
    assert result["totals"]["clicks"] == 3


def test_group_by_campaign_tag_and_link(conn: sqlite3.Connection) -> None:
    a = link(conn, "a", campaign="spring", tags=["news", "x"], utm_source="newsletter")
    b = link(conn, "b", campaign="spring", tags=["x"])
    c = link(conn, "c", campaign="autumn")
    link(conn, "d", campaign="spring")  # no clicks: counted in "links", not in clicks
    base = ts("2024-06-01T11:00:00Z")
    write_clicks(
        conn,
        [
            click(base, a, b"v1"),
            click(base + 1, b, b"v1"),  # the same visitor on two links of one campaign
            click(base + 2, b, b"v2", bot_kind="crawler"),
            click(base + 3, c, b"v3"),
        ],
    )
    roll_up(conn)
    write_clicks(conn, [click(base + 4, c, b"v4"), click(base + 5, c, b"v5")])  # tail
    rng = timerange.time_range("-2h", None, "hour", None, NOW)
    by_campaign = stats.group_stats(conn, catalog.LinkFilter(), "campaign", rng)
    groups = {g["key"]: g for g in by_campaign["groups"]}
    assert [g["key"] for g in by_campaign["groups"]] == ["autumn", "spring"]
    assert groups["spring"]["links"] == 3
    assert (groups["spring"]["clicks"], groups["spring"]["humans"]) == (3, 2)
    assert groups["spring"]["uniques"] == 2  # v1 once (same UTC day, same domain) and v2
    assert groups["spring"]["bots_by_kind"] == {"crawler": 1}
    assert groups["autumn"]["clicks"] == 3
    assert groups["autumn"]["uniques"] == 3
    assert sum(p["clicks"] for p in groups["spring"]["series"]) == 3
    assert by_campaign["totals"] == {"clicks": 6, "humans": 5, "bots": 1}

    by_tag = stats.group_stats(conn, catalog.LinkFilter(), "tag", rng)
    assert {g["key"]: g["clicks"] for g in by_tag["groups"]} == {"x": 3, "news": 1}
    assert by_tag["totals"]["clicks"] == 6  # a click of a link with two tags counts once

    by_link = stats.group_stats(conn, catalog.LinkFilter(campaign="spring"), "link", rng, limit=1)
    assert [(g["key"], g["slug"], g["clicks"]) for g in by_link["groups"]] == [(b, "b", 2)]
    assert by_link["groups"][0]["short_url"] == "https://localhost/b"

    by_source = stats.group_stats(conn, catalog.LinkFilter(), "utm_source", rng)
    assert {g["key"]: g["clicks"] for g in by_source["groups"]} == {"": 5, "newsletter": 1}


def test_list_links_pages_newest_first_with_filters(conn: sqlite3.Connection) -> None:
    ids = [link(conn, f"p{i}", campaign="page", tags=["t"] if i % 2 else []) for i in range(7)]
    link(conn, "other", title="Spring_Sale 100%")
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        page, before = catalog.list_links(conn, catalog.LinkFilter(campaign="page"), 3, before)
        seen += [item["id"] for item in page]
        pages += 1
        if before is None:
            break
    assert pages == 3
    assert seen == sorted(ids, reverse=True)
    tagged, _ = catalog.list_links(conn, catalog.LinkFilter(tag="T"), 50, None)
    assert [item["slug"] for item in tagged] == ["p5", "p3", "p1"]
    # q is a substring search; LIKE wildcards in it are literal characters.
    found, _ = catalog.list_links(conn, catalog.LinkFilter(q="sale 100%"), 50, None)
    assert [item["slug"] for item in found] == ["other"]
    assert catalog.list_links(conn, catalog.LinkFilter(q="_"), 50, None)[0][0]["slug"] == "other"


def test_launch_checkpoints_count_from_the_launch_else_the_first_human_click(
    conn: sqlite3.Connection,
) -> None:
    created = now_ms() // 1000 - 3 * 86400  # made days ahead of its first click
    a = link(conn, "a")
    conn.execute("UPDATE links SET created_at = ? WHERE id = ?", (created * 1000, a))
    first = created + 2 * 86400
    write_clicks(
        conn,
        [
            click(first - 30, a, b"p0", bot_kind="preview"),  # an unfurler, before the send
            click(first, a, b"v1"),
            click(first + 14 * 60, a, b"v2"),
            click(first + 20 * 60, a, b"v1"),
            click(first + 59 * 60, a, b"v3", bot_kind="crawler"),
            click(first + 61 * 60, a, b"v4"),
        ],
    )
    at_ms = (first + 3 * 3600) * 1000
    tail_only = stats.launch_checkpoints(conn, a, None, None, at_ms)
    roll_up(conn)
    result = stats.launch_checkpoints(conn, a, None, None, at_ms)
    assert tail_only == result
    assert result["first_click_at"] == timerange.iso_ms((first - 30) * 1000)
    assert result["first_human_click_at"] == timerange.iso_ms(first * 1000)
    assert (result["started_at"], result["started_by"]) == (
        timerange.iso_ms(first * 1000),
        "first_human_click",
    )
    marks = {c["minutes"]: (c["clicks"], c["humans"], c["uniques"]) for c in result["checkpoints"]}
    assert marks == {15: (2, 2, 2), 30: (3, 3, 2), 60: (4, 3, 3)}
    assert all(c["complete"] for c in result["checkpoints"])
    # with a launch 10 minutes before the first human click, the clock starts there
    launch = (first - 600) * 1000
    result = stats.launch_checkpoints(conn, a, launch, "campaign", at_ms)
    assert (result["started_by"], result["launch_from"]) == ("launch", "campaign")
    marks = {c["minutes"]: (c["clicks"], c["humans"], c["uniques"]) for c in result["checkpoints"]}
    assert marks == {15: (2, 1, 2), 30: (3, 2, 3), 60: (4, 3, 3)}
    # a launch still in progress: the later checkpoints are not complete
    result = stats.launch_checkpoints(conn, a, launch, "link", launch + 20 * 60000)
    assert [c["complete"] for c in result["checkpoints"]] == [True, False, False]
    # no clicks and no launch: no checkpoints
    b = link(conn, "b")
    empty = stats.launch_checkpoints(conn, b, None, None, at_ms)
    assert empty["started_at"] is None and empty["checkpoints"] == []


# --- velocity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "previous", "label"),
    [
        (0, 0, "stalled"),
        (0, 50, "stalled"),
        (4, 100, "stalled"),  # under 10% of the previous window
        (100, 100, "steady"),
        (110, 90, "steady"),  # +22%: within noise and under +25%
        (200, 100, "accelerating"),
        (20, 0, "accelerating"),
        (3, 0, "steady"),  # too few clicks to call a trend (z = 1.7)
        (50, 100, "flattening"),
        (12, 20, "steady"),  # -40% but 32 clicks in all: noise (z = -1.4)
        (1000, 900, "steady"),  # significant (z = 2.3) but only +11%
    ],
)
def test_velocity_labels(current: int, previous: int, label: str) -> None:
    assert velocity.velocity_label(current, previous) == label


def feed(live: LiveCounters, link_id: int, start: int, seconds: int, per_minute: float) -> None:
    """Clicks spread evenly at `per_minute` over `seconds` seconds from `start`."""
    carry = 0.0
    counts = []
    for s in range(start, start + seconds):
        carry += per_minute / 60
        n = int(carry)
        carry -= n
        if n:
            counts.append((link_id, s, n, n))
    live.add(counts)


@pytest.mark.parametrize(
    ("before", "after", "label"),
    [
        (30, 30, "steady"),
        (10, 40, "accelerating"),
        (40, 15, "flattening"),
        (40, 0, "stalled"),
        (0, 12, "accelerating"),
    ],
)
def test_velocity_from_constructed_live_histories(before: float, after: float, label: str) -> None:
    live = LiveCounters()
    now = NOW
    feed(live, 7, now - 2399, 1500, before)  # the previous 15 minutes (and 10 before them)
    feed(live, 7, now - 899, 900, after)  # the last 15 minutes
    feed(live, 8, now - 1799, 1800, 5)  # another link, steady, in the overall numbers
    speed = velocity.live_velocity(live, [7], 900, now)
    assert speed["label"] == label
    assert speed["current"] == pytest.approx(after * 15, abs=1)
    assert speed["previous"] == pytest.approx(before * 15, abs=1)
    assert speed["rate_per_min"] == pytest.approx(after, abs=0.1)
    assert speed["slope_per_min2"] == pytest.approx((after - before) / 15, abs=0.01)
    both = velocity.live_velocity(live, None, 900, now)
    assert both["current"] == pytest.approx((after + 5) * 15, abs=2)


@pytest.mark.parametrize("offset", [0, 1, 17, 59])
def test_cli_and_api_velocity_count_the_same_windows(conn: sqlite3.Connection, offset: int) -> None:
    """One definition: the CLI (rollups and clicks) and the API (live counters) give the
    same numbers for the same clicks, the current second and minute included."""
    a = link(conn, "a")
    now = (now_ms() // 60000) * 60 + offset  # `offset` seconds into the current minute
    times = [now - 1799 + i * 60 for i in range(15)]  # 1/min in the window before
    times += [now - 899 + i * 20 for i in range(45)]  # 3/min lately
    times += [now, now - 1, now - 900, now - 901, now - 1800]  # on and around the edges
    rows = [click(t, a) for t in times]
    write_clicks(conn, rows[:30])
    roll_up(conn)
    write_clicks(conn, rows[30:])  # the rest only in the tail
    cli_speed = velocity.rollup_velocity(conn, a, 900, now)
    live = LiveCounters()
    live.add([(a, t, 1, 1) for t in sorted(times)])
    api_speed = velocity.live_velocity(live, [a], 900, now)
    current = sum(1 for t in times if now - 900 < t <= now)
    previous = sum(1 for t in times if now - 1800 < t <= now - 900)
    assert (cli_speed["current"], cli_speed["previous"]) == (current, previous) == (47, 17)
    assert api_speed["current"] == current
    # the live counters keep seconds for 15 minutes and minutes beyond: a window reaching
    # further back prorates the one minute it cuts (LiveCounters.window_between)
    assert abs(api_speed["previous"] - previous) <= 3
    assert cli_speed["label"] == api_speed["label"] == "accelerating"


def test_cli_velocity_sees_a_click_of_the_current_minute(conn: sqlite3.Connection) -> None:
    """`linkedge stats` said "stalled" seconds after clicks: it left out the current minute."""
    a = link(conn, "a")
    now = now_ms() // 1000
    write_clicks(conn, [click(now - 2, a), click(now, a)])
    speed = velocity.rollup_velocity(conn, a, 900, now)
    assert speed["current"] == 2
    assert speed["label"] != "stalled"


def test_parse_window_limits() -> None:
    assert velocity.parse_window(None) == 900
    assert velocity.parse_window("5m") == 300
    assert velocity.parse_window("120") == 120
    for bad in ("2h", "31m", "10s", "soon"):
        with pytest.raises(InvalidField):
            velocity.parse_window(bad)


def test_live_top_links_ranks_by_the_last_minute() -> None:
    live = LiveCounters()
    feed(live, 1, NOW - 600, 540, 60)  # busy earlier, quiet in the last minute
    feed(live, 2, NOW - 59, 60, 10)
    feed(live, 3, NOW - 59, 60, 30)
    assert velocity.live_top_links(live, NOW, 2) == [3, 2]
    assert velocity.live_top_links(live, NOW, 10) == [3, 2, 1]
    windows = velocity.live_windows(live, 3, NOW)
    assert windows["60s"] == {"clicks": 30, "humans": 30, "bots": 0}


def test_link_window_is_exact_across_the_two_rings() -> None:
    live = LiveCounters()
    # One click every second for the last 50 minutes: any window counts its own length.
    live.add([(9, s, 1, 1) for s in range(NOW - 2999, NOW + 1)])
    for start, end in [
        (NOW - 59, NOW),
        (NOW - 899, NOW),  # exactly the per-second ring
        (NOW - 1799, NOW - 900),  # the per-minute ring, its first minute split
        (NOW - 1234, NOW - 77),  # both rings, neither edge on a minute
        (NOW - 2399, NOW),
    ]:
        assert live.window_between(9, start, end) == (end - start + 1,) * 2
    assert live.window_between(404, NOW - 60, NOW) == (0, 0)


def test_velocity_sees_clicks_of_the_current_minute() -> None:
    live = LiveCounters()
    now = NOW + 30  # half a minute into a minute
    live.add([(5, s, 2, 2) for s in range(now - 29, now + 1)])
    speed = velocity.live_velocity(live, [5], 900, now)
    assert (speed["current"], speed["previous"], speed["label"]) == (60, 0, "accelerating")
    assert velocity.live_windows(live, 5, now)["60m"] == {"clicks": 60, "humans": 60, "bots": 0}


def test_live_counters_forget_links_idle_for_an_hour() -> None:
    """Memory is bounded by the links clicked in the last hour, not by every link ever
    clicked (it used to keep ~9 KB for each, forever)."""
    live = LiveCounters()
    live.add([(i, NOW - 4000, 1, 1) for i in range(1, 3001)])  # 3,000 links, then quiet
    assert len(live.links) == 3000
    for s in range(0, 10):  # later traffic on one link: each feed evicts a slice
        live.add([(9999, NOW + s, 1, 1)])
    assert set(live.links) == {9999}
    assert live.evicted == 3000
    assert live.window(None, 3600, NOW + 9) == (10, 10)  # the overall hour is kept whole


def test_a_link_waking_after_a_long_idle_is_counted_from_zero() -> None:
    live = LiveCounters()
    live.add([(5, NOW - 1000, 7, 7)])
    live.add([(6, NOW, 1, 1)])  # keeps link 5 from being evicted (under an hour)
    live.add([(5, NOW, 2, 1)])
    assert live.window(5, 60, NOW) == (2, 1)
    assert live.window(5, 900, NOW) == (2, 1)  # the 1000 s old clicks left the seconds
    minute_start = (NOW - 1000) // 60 * 60  # a window from the start of that minute
    assert live.window_between(5, minute_start, NOW) == (9, 8)  # still in the minutes


def test_the_busiest_links_come_from_the_running_minute_out_of_order() -> None:
    live = LiveCounters()
    live.add([(1, NOW, 5, 5)])
    live.add([(2, NOW - 30, 9, 9)])  # an older second arriving later (another worker)
    live.add([(3, NOW - 61, 50, 50)])  # outside the minute
    assert live.busiest(NOW, 3) == [2, 1, 3]  # 3 only fills in, by recency
    assert live.recent == {1: 5, 2: 9}
    assert live.busiest(NOW + 40, 1) == [1]  # the second of link 2 left the minute
