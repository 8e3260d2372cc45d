"""The rollups against the raw clicks they summarise: every stats answer, from the link
rollups or the group rollups, equals the same numbers computed by brute force over the
`clicks` table, across time zones, intervals, link edits, purges and the 0005 migration."""

from __future__ import annotations

import bisect
import datetime as dt
import random
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from admin import stats, timerange
from admin.chstats import ClickHouseStats
from edge import catalog, rollups, schema, visitors
from edge.chclient import parse_sink_url
from edge.clicks import _catch_up
from edge.db import Transaction, connect
from tests.clickhouse_fixture import clickhouse, copy_clicks  # noqa: F401

DAY = 86400
END = 1_717_243_200 + 1234  # 2024-06-01T12:20:34Z: ranges never start on a round hour
COUNTRIES = ("NZ", "FR", "US", None)
BOTS = (None, None, None, None, "crawler", "preview", "head")


def _click(rng: random.Random, ts_ms: int, link_id: int, visitors: list[bytes]) -> tuple:
    row: dict[str, Any] = dict.fromkeys(rollups.CLICK_COLUMNS)
    row.update(
        ts=ts_ms,
        link_id=link_id,
        visitor_id=None if rng.random() < 0.05 else rng.choice(visitors),
        bot_kind=rng.choice(BOTS),
        method="GET",
        country=rng.choice(COUNTRIES),
        region=rng.choice(("Auckland", "Île-de-France", None)),
        city=rng.choice(("Auckland", "Paris", "Lyon", None)),
        device_type=rng.choice(("desktop", "mobile")),
        os=rng.choice(("Android", "iOS", "Windows")),
        browser=rng.choice(("Chrome", "Firefox")),
        referrer_host=rng.choice(("t.co", "news.example", None)),
        source=rng.choice(("twitter", "newsletter", "direct")),
        language=rng.choice(("en", "fr", None)),
        dnt=0,
    )
    return tuple(row[c] for c in rollups.CLICK_COLUMNS)


def _links(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    catalog.add_domain(conn, "go.example.com")
    links = []
    for i in range(12):
        fields: dict[str, Any] = {"url": f"https://example.com/{i}"}
        if i % 3:
            fields["campaign"] = f"camp-{i % 3}"
        if i % 4 == 0:
            fields["tags"] = ["alpha", "beta"] if i % 8 == 0 else ["alpha"]
        fields["utm_source"] = ("mail", "social", None)[i % 3]
        domain = "go.example.com" if i % 2 else None
        links.append(catalog.create_link(conn, fields, slug=f"l{i}", domain=domain))
    return links


def _fill(conn: sqlite3.Connection, links: list[dict[str, Any]], n: int, seed: int) -> None:
    """`n` clicks over the 3 days before END, rolled up like the flusher does, then a tail
    of clicks written but not rolled up."""
    rng = random.Random(seed)
    visitors = [rng.randbytes(8) for _ in range(60)]
    visitors[0] = bytes(8)  # a real id may be all zeros: still a visitor
    start_ms = (END - 3 * DAY) * 1000
    times = sorted(rng.randrange(start_ms, END * 1000) for _ in range(n))
    rows = [_click(rng, t, rng.choice(links)["id"], visitors) for t in times]
    cut = int(n * 0.9)
    for part in (rows[: cut // 2], rows[cut // 2 : cut]):
        with Transaction(conn):
            rollups.insert_clicks(conn, part)
        _catch_up(conn)  # in two writes: visitor chunks of a (link, day) are unioned
    with Transaction(conn):
        rollups.insert_clicks(conn, rows[cut:])  # the tail


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = catalog.open_db(str(tmp_path / "r.db"))
    yield c
    c.close()


@pytest.fixture(params=["sqlite", "clickhouse"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which click store answers: the SQLite rollups, or ClickHouse (admin/chstats.py)
    holding the same clicks (skipped where clickhouse-server is absent)."""
    if request.param == "clickhouse":
        request.getfixturevalue("clickhouse")
    return str(request.param)


def _reads(request: pytest.FixtureRequest, conn: sqlite3.Connection, backend: str) -> Any:
    """admin/stats.py, or admin/chstats.py over a copy of `conn`'s clicks."""
    if backend == "sqlite":
        return stats
    server = request.getfixturevalue("clickhouse")
    url = server.new_database()
    copy_clicks(conn, url)
    return ClickHouseStats(parse_sink_url(url))


def _group_keys(conn: sqlite3.Connection, group_by: str) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for row in conn.execute(
        "SELECT l.id, l.campaign, l.utm_source, l.tags, d.host FROM links l "
        "JOIN domains d ON d.id = l.domain_id"
    ):
        if group_by == "campaign":
            out[row[0]] = [row[1] or ""]
        elif group_by == "utm_source":
            out[row[0]] = [row[2] or ""]
        elif group_by == "tag":
            out[row[0]] = list(dict.fromkeys(__import__("json").loads(row[3])))
        elif group_by == "domain":
            out[row[0]] = [row[4]]
        else:
            out[row[0]] = [row[0]]
    return out


def _truth(
    conn: sqlite3.Connection, rng: timerange.TimeRange, group_by: str
) -> tuple[dict[Any, dict[str, Any]], dict[str, int]]:
    """Every group's numbers by brute force over `clicks`."""
    keys_of = _group_keys(conn, group_by)
    starts = timerange.bucket_starts(rng.from_s, rng.to_s, rng.interval, rng.tz)
    m_first, m_last = rng.minutes
    h_first, h_last = rng.hours
    d_first, d_last = rng.days
    groups: dict[Any, dict[str, Any]] = {}
    overall = {"clicks": 0, "humans": 0, "bots": 0}
    visitors: dict[tuple[Any, int], tuple[set[bytes], set[bytes]]] = {}
    for ts_ms, link_id, vid, bot in conn.execute(
        "SELECT ts, link_id, visitor_id, bot_kind FROM clicks"
    ):
        if link_id not in keys_of:
            continue  # a purged link
        minute, hour, day = ts_ms // 60000, ts_ms // 3600000, ts_ms // 86400000
        in_minutes = m_first <= minute <= m_last
        if in_minutes:
            overall["clicks"] += 1
            overall["humans" if bot is None else "bots"] += 1
        for key in keys_of[link_id]:
            g = groups.setdefault(
                key,
                {"clicks": 0, "humans": 0, "kinds": {}, "series": [0] * len(starts)},
            )
            if in_minutes:
                g["clicks"] += 1
                g["humans"] += bot is None
                g["series"][bisect.bisect_right(starts, minute * 60) - 1] += 1
            if h_first <= hour <= h_last and bot is not None:
                g["kinds"][bot] = g["kinds"].get(bot, 0) + 1
            if d_first <= day <= d_last and vid is not None:
                seen = visitors.setdefault((key, day), (set(), set()))
                seen[0].add(vid)
                if bot is None:
                    seen[1].add(vid)
    for (key, _day), (ids, humans) in visitors.items():
        g = groups[key]
        g["uniques"] = g.get("uniques", 0) + len(ids)
        g["human_uniques"] = g.get("human_uniques", 0) + len(humans)
    return {k: g for k, g in groups.items() if g["clicks"]}, overall


def _answer(group: dict[str, Any]) -> dict[str, Any]:
    return {
        "clicks": group["clicks"],
        "humans": group["humans"],
        "kinds": group["bots_by_kind"],
        "series": [p["clicks"] for p in group["series"]],
        "uniques": group["uniques"],
        "human_uniques": group["human_uniques"],
    }


def _expected(g: dict[str, Any]) -> dict[str, Any]:
    return {
        "clicks": g["clicks"],
        "humans": g["humans"],
        "kinds": dict(sorted(g["kinds"].items(), key=lambda kv: (-kv[1], kv[0]))),
        "series": g["series"],
        "uniques": g.get("uniques", 0),
        "human_uniques": g.get("human_uniques", 0),
    }


def _check_group_by(
    conn: sqlite3.Connection, rng: timerange.TimeRange, group_by: str, reads: Any = stats
) -> None:
    truth, overall = _truth(conn, rng, group_by)
    assert truth and overall["clicks"], "no clicks in the range: the comparison proves nothing"
    every = catalog.LinkFilter()
    per_link = catalog.LinkFilter(created_from_ms=0)  # same links, through the link rollups
    for flt in (every, per_link):
        answer = reads.group_stats(conn, flt, group_by, rng)
        got = {g["key"]: _answer(g) for g in answer["groups"]}
        assert got == {k: _expected(g) for k, g in truth.items()}, (group_by, flt)
        assert answer["totals"] == overall


ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize(
    ("span", "interval"),
    [("-3h", "minute"), ("-24h", "hour"), ("-26h", "hour"), ("-3d", "day"), ("-50h", "day")],
)
def test_group_stats_equal_the_raw_clicks(
    conn: sqlite3.Connection, tz: str, span: str, interval: str
) -> None:
    links = _links(conn)
    _fill(conn, links, 3000, seed=len(tz) + len(span))
    rng = timerange.time_range(span, None, interval, tz, END)
    for group_by in ("campaign", "utm_source", "tag", "domain", "link"):
        _check_group_by(conn, rng, group_by)


@pytest.mark.parametrize(
    ("tz", "span", "interval"),
    [
        ("UTC", "-3h", "minute"),
        ("America/New_York", "-50h", "day"),
        ("Asia/Kolkata", "-26h", "hour"),
        ("Asia/Kathmandu", "-3d", "day"),
    ],
)
def test_clickhouse_group_stats_equal_the_raw_clicks(
    request: pytest.FixtureRequest, conn: sqlite3.Connection, tz: str, span: str, interval: str
) -> None:
    """The same comparison with ClickHouse answering (admin/chstats.py), a purged link's
    clicks left in ClickHouse (they count nowhere)."""
    links = _links(conn)
    _fill(conn, links, 3000, seed=len(tz) + len(span))
    catalog.purge_link(conn, links[-1]["id"])
    reads = _reads(request, conn, "clickhouse")
    rng = timerange.time_range(span, None, interval, tz, END)
    for group_by in ("campaign", "utm_source", "tag", "domain", "link"):
        _check_group_by(conn, rng, group_by, reads)


def test_link_and_selection_stats_equal_the_raw_clicks(
    request: pytest.FixtureRequest, conn: sqlite3.Connection, backend: str
) -> None:
    links = _links(conn)
    _fill(conn, links, 2000, seed=3)
    reads = _reads(request, conn, backend)
    rng = timerange.time_range("-40h", "-1h", "hour", "Asia/Kolkata", END)
    truth, _ = _truth(conn, rng, "link")
    for link in links:
        answer = reads.selection_stats(conn, catalog.LinkFilter(link_id=link["id"]), rng)
        expected = _expected(truth[link["id"]])
        assert [p["clicks"] for p in answer["series"]] == expected["series"]
        assert answer["bots_by_kind"] == expected["kinds"]
        assert answer["totals"]["clicks"] == expected["clicks"]
        assert answer["totals"]["uniques"] == expected["uniques"]
        assert answer["totals"]["human_uniques"] == expected["human_uniques"]
    # every breakdown list, from the combined dimension rows, equals the raw clicks'
    h_first, h_last = rng.hours
    link_id = links[0]["id"]
    answer = reads.selection_stats(conn, catalog.LinkFilter(link_id=link_id), rng, top=100)
    for column, name in stats.DIMENSION_NAMES.items():
        expected_top: dict[Any, list[int]] = {}
        for value, bot in conn.execute(
            f"SELECT {column}, bot_kind FROM clicks WHERE link_id = ? "
            "AND ts / 3600000 BETWEEN ? AND ?",
            (link_id, h_first, h_last),
        ):
            entry = expected_top.setdefault(value or None, [0, 0])
            entry[0] += 1
            entry[1] += bot is None
        got = {e["value"]: [e["clicks"], e["humans"]] for e in answer["top"][name]}
        assert got == expected_top, name


def test_editing_a_link_moves_its_history_between_groups(conn: sqlite3.Connection) -> None:
    links = _links(conn)
    _fill(conn, links, 2000, seed=5)
    rng = timerange.time_range("-3d", None, "day", "UTC", END)
    catalog.update_link(conn, links[1]["id"], {"campaign": "camp-2", "tags": ["gamma"]})
    catalog.update_link(conn, links[4]["id"], {"campaign": None, "utm_source": "social"})
    catalog.update_link(conn, links[8]["id"], {"tags": []})
    catalog.purge_link(conn, links[5]["id"])
    assert conn.execute("SELECT count(*) FROM group_day_stale").fetchone()[0] > 0
    for group_by in ("campaign", "utm_source", "tag", "domain"):
        _check_group_by(conn, rng, group_by)  # stale group-days counted from their links
    stale = conn.execute("SELECT count(*) FROM group_day_stale").fetchone()[0]
    last_day = END // DAY  # the data's last day plays "today": it keeps its ids
    rebuilt = 0
    while True:  # what the flusher does after each roll-up, one group-day at a time
        with Transaction(conn):
            if not rollups.rebuild_stale_group_day(conn, today=last_day):
                break
        rebuilt += 1
    assert rebuilt == stale > 1
    assert conn.execute("SELECT count(*) FROM group_day_stale").fetchone()[0] == 0
    # a rebuilt finished day keeps its counts only; the current day keeps its ids
    kept = conn.execute(
        "SELECT day < ?, min(length(ids) > 0), max(length(ids) > 0) FROM group_day_visitors "
        "WHERE seq = 0 AND n > 0 GROUP BY 1 ORDER BY 1",
        (last_day,),
    ).fetchall()
    assert [tuple(r) for r in kept] == [(0, 1, 1), (1, 0, 0)]
    for group_by in ("campaign", "utm_source", "tag", "domain"):
        _check_group_by(conn, rng, group_by)  # and from the rebuilt group rollups
    # and new clicks after the edits land in the new groups
    _fill(conn, [links[1], links[4]], 300, seed=6)
    for group_by in ("campaign", "tag"):
        _check_group_by(conn, rng, group_by)


def test_a_new_link_never_inherits_a_purged_links_clicks(conn: sqlite3.Connection) -> None:
    links = _links(conn)
    _fill(conn, links, 500, seed=7)
    last = links[-1]
    catalog.purge_link(conn, last["id"])
    fresh = catalog.create_link(conn, {"url": "https://example.com/new"}, slug="new")
    assert fresh["id"] > last["id"]
    rng = timerange.time_range("-3d", None, "day", "UTC", END)
    answer = stats.selection_stats(conn, catalog.LinkFilter(link_id=fresh["id"]), rng)
    assert answer["totals"]["clicks"] == 0


def test_visitor_chunks_are_merged_and_stay_exact(conn: sqlite3.Connection) -> None:
    links = _links(conn)[:2]
    rng_ = random.Random(9)
    people = [rng_.randbytes(8) for _ in range(30)]
    state = rollups.RollupState()
    day_ms = (END // DAY) * DAY * 1000
    for i in range(visitors.CHUNKS_MERGE_AT * 2 + 3):  # more writes than the merge limit
        rows = [_click(rng_, day_ms + i * 1000 + j, links[j % 2]["id"], people) for j in range(5)]
        _write(conn, rows, state)
    chunks = conn.execute(
        "SELECT link_id, count(*) FROM link_day_visitors GROUP BY link_id"
    ).fetchall()
    assert all(n < visitors.CHUNKS_MERGE_AT for _l, n in chunks)
    rng = timerange.time_range("-1h", "+1h", "minute", "UTC", day_ms // 1000 + 60)
    _check_group_by(conn, rng, "campaign")
    _check_group_by(conn, rng, "link")


def _old_schema_db(path: str, seed: int) -> sqlite3.Connection:
    """A database as migrations 0001-0004 left it, rollups written the way they were."""
    conn = connect(path)
    conn.execute(
        "CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at INTEGER NOT NULL)"
    )
    for number, name, apply in schema.MIGRATIONS[:4]:
        with Transaction(conn):
            apply(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, name))
    catalog.ensure_default_domain(conn)
    return conn


def test_migration_0005_keeps_every_number(tmp_path: Path) -> None:
    conn = _old_schema_db(str(tmp_path / "old.db"), 1)
    # links as the code of 0004's time wrote them (today's catalog writes today's schema)
    links = []
    with Transaction(conn):
        conn.execute(
            "INSERT INTO domains (host, is_default, created_at, rev) "
            "VALUES ('go.example.com', 0, 0, 1)"
        )
        for i in range(6):
            url = f"https://example.com/{i}"
            cur = conn.execute(
                "INSERT INTO links (domain_id, slug, url, tags, campaign, location, created_at, "
                "updated_at, rev) VALUES ((SELECT id FROM domains WHERE is_default = 1), "
                "?, ?, ?, ?, ?, 0, 0, 1)",
                (f"l{i}", url, '["alpha"]' if i % 2 else "[]", f"c{i % 2}", url),
            )
            links.append({"id": cur.lastrowid})
    rng_ = random.Random(11)
    visitors = [rng_.randbytes(8) for _ in range(40)]
    start_ms = (END - 2 * DAY) * 1000
    times = sorted(rng_.randrange(start_ms, END * 1000) for _ in range(1500))
    rows = [_click(rng_, t, rng_.choice(links)["id"], visitors) for t in times]
    # the columns clicks had then: today's less the ones added after 0005 (0008, 0010)
    later = ("route", "click_id", "bot_reason")
    then = [c for c in rollups.CLICK_COLUMNS if c not in later]
    with Transaction(conn):
        conn.executemany(
            f"INSERT INTO clicks ({', '.join(then)}) VALUES ({', '.join('?' for _ in then)})",
            [tuple(r[i] for i, c in enumerate(rollups.CLICK_COLUMNS) if c in then) for r in rows],
        )
        last = conn.execute("SELECT max(id) FROM clicks").fetchone()[0]
        # the old rollups, as the old flusher wrote them
        conn.execute(
            "INSERT INTO link_minute SELECT link_id, ts / 60000, count(*), "
            "sum(bot_kind IS NULL) FROM clicks GROUP BY 1, 2"
        )
        for dim in (
            "country",
            "region",
            "city",
            "device_type",
            "browser",
            "os",
            "referrer_host",
            "source",
            "language",
            "bot_kind",
        ):
            conn.execute(
                f"INSERT INTO link_hour_dim SELECT link_id, ts / 3600000, '{dim}', "
                f"coalesce({dim}, ''), count(*), sum(bot_kind IS NULL) FROM clicks "
                "GROUP BY 1, 2, 4"
            )
        conn.execute(
            "INSERT INTO link_day_visitor SELECT link_id, ts / 86400000, visitor_id, "
            "max(bot_kind IS NULL) FROM clicks WHERE visitor_id IS NOT NULL GROUP BY 1, 2, 3"
        )
        conn.execute("UPDATE meta SET value = ? WHERE key = 'rollup_click_id'", (last,))
    assert schema.migrate(conn) == [name for n, name, _ in schema.MIGRATIONS if n >= 5]
    for span, interval, tz in (("-2d", "day", "UTC"), ("-30h", "hour", "Asia/Kolkata")):
        rng = timerange.time_range(span, None, interval, tz, END)
        for group_by in ("campaign", "tag", "link"):
            _check_group_by(conn, rng, group_by)
        answer = stats.selection_stats(conn, catalog.LinkFilter(link_id=links[0]["id"]), rng)
        truth, _ = _truth(conn, rng, "link")
        assert (
            answer["top"]["countries"]
            and answer["totals"]["clicks"] == (truth[links[0]["id"]]["clicks"])
        )
    conn.close()


@given(
    start=st.integers(0, 5 * DAY),
    length=st.integers(1, 4 * DAY),
    interval=st.sampled_from(("minute", "hour", "day")),
    tz=st.sampled_from(ZONES),
)
def test_pieces_cover_each_minute_once_within_one_bucket(
    start: int, length: int, interval: str, tz: str
) -> None:
    from_s = 1_717_000_000 + start
    if interval == "minute":
        length = min(length, 2 * DAY)
    rng = timerange.TimeRange(from_s, from_s + length, interval, timerange.zone(tz), tz)
    starts = timerange.bucket_starts(rng.from_s, rng.to_s, interval, rng.tz)
    sizes = {"minute": [1], "hour": [60, 15, 1], "day": [1440, 60, 15, 1]}[interval]
    pieces = stats._pieces(rng, starts, sizes)
    covered: list[int] = []
    for size, ranges in zip(sizes, pieces, strict=True):
        for lo, hi in ranges:
            for unit in range(lo, hi + 1):
                first = unit * size
                # a piece lies inside one bucket
                b0 = bisect.bisect_right(starts, first * 60)
                b1 = bisect.bisect_right(starts, (first + size - 1) * 60)
                assert b0 == b1
                covered.extend(range(first, first + size))
    m_first, m_last = rng.minutes
    assert sorted(covered) == list(range(m_first, m_last + 1))


def test_pieces_use_coarse_rows_in_the_middle() -> None:
    rng = timerange.time_range("-3d", None, "day", "UTC", END)
    starts = timerange.bucket_starts(rng.from_s, rng.to_s, "day", rng.tz)
    days, hours, minutes = stats._pieces(rng, starts, [1440, 60, 1])
    assert len(days) == 1 and days[0][1] - days[0][0] == 1  # two whole UTC days
    assert len(hours) == 2 and len(minutes) == 2
    assert dt.datetime.fromtimestamp(days[0][0] * 86400, dt.UTC).hour == 0


def _write(conn: sqlite3.Connection, rows: list[tuple], state: rollups.RollupState) -> None:
    """One flusher write: the rows, then a roll-up of everything above the watermark."""
    with Transaction(conn):
        rollups.insert_clicks(conn, rows)
        rollups.roll_up(conn, state)


def test_a_finished_days_chunks_are_merged_into_one(conn: sqlite3.Connection) -> None:
    links = _links(conn)[:3]
    rand = random.Random(12)
    visitors = [rand.randbytes(8) for _ in range(20)]
    state = rollups.RollupState()
    day_ms = (END // DAY) * DAY * 1000
    for i, when in enumerate((day_ms - 3000, day_ms - 2000, day_ms - 1000, day_ms + 1000)):
        rows = [_click(rand, when + j, links[j % 3]["id"], visitors) for j in range(9)]
        _write(conn, rows, state)
        chunks = dict(
            conn.execute(
                "SELECT link_id, count(*) FROM link_day_visitors WHERE day = ? GROUP BY 1",
                (day_ms // 86400000 - 1,),
            ).fetchall()
        )
        # three writes the day before midnight; the first write after it merges them
        assert set(chunks.values()) == ({i + 1} if i < 3 else {1})
    # a finished day of a group keeps its counts only (its links keep the ids)
    rows = conn.execute(
        "SELECT n, length(ids) FROM group_day_visitors WHERE day = ?", (day_ms // 86400000 - 1,)
    ).fetchall()
    assert rows and all(n > 0 and size == 0 for n, size in rows)
    # a late click of that day, not rolled up yet: counted from the links plus the tail
    with Transaction(conn):
        rollups.insert_clicks(conn, [_click(rand, day_ms - 100, links[1]["id"], visitors)])
    rng = timerange.time_range("-2d", "+1d", "day", "UTC", day_ms // 1000)
    for group_by in ("campaign", "link", "domain"):
        _check_group_by(conn, rng, group_by)


def test_chunks_written_twice_under_one_key_are_still_counted_exactly(
    conn: sqlite3.Connection,
) -> None:
    links = _links(conn)[:2]
    rand = random.Random(13)
    people = [rand.randbytes(8) for _ in range(10)]
    when = (END - 600) * 1000
    first = [_click(rand, when + j, links[j % 2]["id"], people) for j in range(30)]
    second = [_click(rand, when + 100 + j, links[j % 2]["id"], people) for j in range(30)]
    state = rollups.RollupState()
    _write(conn, first, state)
    seq = rollups.rollup_watermark(conn)
    # the second clicks' visitors written under the same chunk keys (link, day, seq): the
    # writer must union them into the stored chunks, sorted and distinct
    sets: dict[tuple[int, int], visitors.ChunkSets] = {}
    for row in second:
        if row[2] is not None:
            entry = sets.setdefault((row[1], row[0] // 86400000), (set(), set()))
            entry[0].add(visitors.visitor_int(row[2]))
            if row[3] is None:
                entry[1].add(visitors.visitor_int(row[2]))
    with Transaction(conn):
        rollups.insert_clicks(conn, second)
        visitors.write_chunks(conn, "link_day_visitors", ("link_id",), sets, seq, state.chunks)
        conn.execute(
            "UPDATE meta SET value = (SELECT max(id) FROM clicks) WHERE key = 'rollup_click_id'"
        )
    assert conn.execute("SELECT count(*) FROM link_day_visitors").fetchone()[0] == 2
    rng = timerange.time_range("-1h", None, "minute", "UTC", END)
    truth, _ = _truth(conn, rng, "link")
    answer = stats.group_stats(conn, catalog.LinkFilter(created_from_ms=0), "link", rng)
    got = {g["key"]: (g["uniques"], g["human_uniques"]) for g in answer["groups"]}
    assert got == {k: (g["uniques"], g["human_uniques"]) for k, g in truth.items()}


def test_every_stats_query_seeks_its_time_range(conn: sqlite3.Connection) -> None:
    """Without ANALYZE statistics (a fresh database), each rollup read must be a range
    seek on (owner, time), never a walk of a link's or a group's whole history."""
    links = _links(conn)
    _fill(conn, links, 500, seed=21)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for tz in ("UTC", "Asia/Kolkata"):
        for span, interval in (("-24h", "hour"), ("-3d", "day"), ("-2h", "minute")):
            rng = timerange.time_range(span, None, interval, tz, END)
            for group_by in ("campaign", "tag", "link"):
                stats.group_stats(conn, catalog.LinkFilter(), group_by, rng)
            stats.group_stats(conn, catalog.LinkFilter(created_from_ms=0), "campaign", rng)
            stats.selection_stats(conn, catalog.LinkFilter(link_id=links[0]["id"]), rng)
    conn.set_trace_callback(None)
    rollups = re.compile(r"\b(link|group)_(minute|quarter|hour|day|dim_hour|day_visitors)\b")
    whole_history = re.compile(
        r"(SCAN (r|g|d|v)\b)|USING PRIMARY KEY \((link_id=\?|dim=\? AND key=\?)\)|"
        r"USING INDEX \w+ \((link_id=\?|dim=\? AND key=\?)\)"
    )
    checked = 0
    for sql in dict.fromkeys(statements):
        if not sql.lstrip().upper().startswith("SELECT") or not rollups.search(sql):
            continue
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
        bad = [line for line in plan if whole_history.search(line)]
        assert not bad, (sql, plan)
        checked += 1
    assert checked >= 10


def test_chunks_written_before_a_restart_are_merged_at_day_end(
    conn: sqlite3.Connection,
) -> None:
    links = _links(conn)[:2]
    rand = random.Random(31)
    visitors = [rand.randbytes(8) for _ in range(10)]
    day_ms = (END // DAY) * DAY * 1000
    before = rollups.RollupState()
    for i in range(3):
        _write(conn, [_click(rand, day_ms - 5000 + i, links[0]["id"], visitors)], before)
    after = rollups.RollupState()  # a restart: counts read back from the database
    after.chunks.load(conn, day_ms // 86400000 - 1)
    assert after.chunks.counts[(links[0]["id"], day_ms // 86400000 - 1)] == 3
    _write(conn, [_click(rand, day_ms + 10, links[0]["id"], visitors)], after)
    per_day = dict(
        conn.execute(
            "SELECT day, count(*) FROM link_day_visitors WHERE link_id = ? GROUP BY day",
            (links[0]["id"],),
        ).fetchall()
    )
    assert per_day == {day_ms // 86400000 - 1: 1, day_ms // 86400000: 1}


def test_a_bounded_roll_up_leaves_the_rest_to_the_next_one(conn: sqlite3.Connection) -> None:
    from edge.clicks import _write_batch

    links = _links(conn)
    rand = random.Random(41)
    visitors = [rand.randbytes(8) for _ in range(20)]
    rows = [
        _click(rand, (END - 900) * 1000 + i, rand.choice(links)["id"], visitors) for i in range(30)
    ]
    state = rollups.RollupState()
    first, last, rolled = _write_batch(conn, rows, {}, True, state, 12)
    assert (first, last, rolled) == (1, 30, 12) and rollups.rollup_watermark(conn) == 12
    rng = timerange.time_range("-1h", None, "minute", "UTC", END)
    _check_group_by(conn, rng, "campaign")  # the other 18 are counted as the tail
    assert _write_batch(conn, [], {}, True, state, 12)[2] == 12
    assert _write_batch(conn, [], {}, True, state, 12)[2] == 6
    assert rollups.rollup_watermark(conn) == 30
    _check_group_by(conn, rng, "link")


def test_half_hour_zones_read_quarter_hours_not_minutes() -> None:
    rng = timerange.time_range("-24h", None, "hour", "Asia/Kolkata", END)
    starts = timerange.bucket_starts(rng.from_s, rng.to_s, "hour", rng.tz)
    hours, quarters, minutes = stats._pieces(rng, starts, [60, 15, 1])
    assert quarters and sum(hi - lo + 1 for lo, hi in minutes) < 30  # only at the edges


@given(
    st.lists(st.tuples(st.sets(st.integers(0, 60)), st.sets(st.integers(0, 60))), max_size=4),
    st.sets(st.integers(0, 60)),
    st.sets(st.integers(0, 60)),
    st.integers(0, 3),
)
# the search path (one big chunk, few others) with visitors that have no human click
@example(parts=[(set(), set())], extra={1, 2, 1000}, extra_bots={2}, big=0)
@example(parts=[({1, 2, 3}, {1, 2})], extra={3, 7}, extra_bots={7}, big=0)
def test_counting_chunks_matches_sets(
    parts: list[tuple[set[int], set[int]]], extra: set[int], extra_bots: set[int], big: int
) -> None:
    """Both ways of counting (search the big chunk, or union sets) against plain sets."""
    chunks = []
    for i, (ids, humans) in enumerate(parts):
        if i == big % max(1, len(parts)):
            ids = ids | set(range(1000, 1000 + 200))  # a big merged chunk: the search path
        humans &= ids
        _seq, n, n_human, blob, bots = visitors.chunk(0, ids, humans)
        chunks.append((n, n_human, visitors.unpack_ids(blob), visitors.unpack_ids(bots)))
    extra_humans = extra - extra_bots
    every = set(extra)
    humans_all = set(extra_humans)
    for _n, _h, ids, bots in chunks:
        every |= set(ids)
        humans_all |= set(ids) - set(bots)
    got = visitors.count_chunks(chunks, (set(extra), set(extra_humans)))
    assert got == (len(every), len(humans_all))


def test_a_big_chunk_is_left_out_of_merges_and_counts_stay_exact(
    conn: sqlite3.Connection,
) -> None:
    """Tiered merging: a day's big merged chunk is not re-packed at every merge of the
    small ones (that cost O(day) every 16 roll-ups); the counts stay exact."""
    link = _links(conn)[0]
    rand = random.Random(21)
    day_ms = (END // DAY) * DAY * 1000
    state = rollups.RollupState()
    crowd = [rand.randbytes(8) for _ in range(1000)]
    _write(conn, [_click(rand, day_ms + j, link["id"], [v]) for j, v in enumerate(crowd)], state)
    (big_seq,) = conn.execute(
        "SELECT seq FROM link_day_visitors WHERE link_id = ?", (link["id"],)
    ).fetchone()
    for i in range(3 * visitors.CHUNKS_MERGE_AT):
        few = [rand.randbytes(8) for _ in range(3)] + [rand.choice(crowd)]
        _write(
            conn,
            [_click(rand, day_ms + 5000 + 10 * i + j, link["id"], [v]) for j, v in enumerate(few)],
            state,
        )
        seqs = [
            r[0]
            for r in conn.execute(
                "SELECT seq FROM link_day_visitors WHERE link_id = ?", (link["id"],)
            )
        ]
        assert big_seq in seqs  # never re-packed
        assert len(seqs) < visitors.CHUNKS_MERGE_AT
    rng = timerange.time_range("-1h", "+1h", "minute", "UTC", day_ms // 1000 + 600)
    _check_group_by(conn, rng, "link")
    _check_group_by(conn, rng, "campaign")


def test_a_links_groups_are_its_fields_with_empty_keys_for_the_missing_ones(
    conn: sqlite3.Connection,
) -> None:
    assert rollups.group_keys((7, None, None, None, None, None, 3)) == (
        ("campaign", ""),
        ("utm_source", ""),
        ("utm_medium", ""),
        ("utm_campaign", ""),
        ("domain", "3"),
    )
    row = (7, "spring", "mail", "email", "launch", '["b", "a", "b"]', 3)
    assert rollups.group_keys(row) == (
        ("campaign", "spring"),
        ("utm_source", "mail"),
        ("utm_medium", "email"),
        ("utm_campaign", "launch"),
        ("tag", "b"),
        ("tag", "a"),
        ("domain", "3"),
    )
    assert rollups.link_group_keys(conn, 12345) == ()  # a purged link is in no group


def test_the_roll_up_follows_an_edit_between_two_writes(conn: sqlite3.Connection) -> None:
    """One RollupState across an edit, as in the flusher: the groups it remembers for the
    link are dropped when the links' revision moves."""
    link = catalog.create_link(conn, {"url": "https://example.com/", "campaign": "old"})
    rand = random.Random(3)
    visitors = [rand.randbytes(8) for _ in range(3)]
    state = rollups.RollupState()
    _write(conn, [_click(rand, END * 1000, link["id"], visitors) for _ in range(2)], state)
    catalog.update_link(conn, link["id"], {"campaign": "new"})
    _write(conn, [_click(rand, END * 1000 + 1, link["id"], visitors) for _ in range(3)], state)
    by_campaign = dict(
        conn.execute(
            "SELECT key, sum(clicks) FROM group_minute WHERE dim = 'campaign' GROUP BY key"
        ).fetchall()
    )
    assert by_campaign == {"new": 5}


def test_a_late_click_on_a_finished_group_day_marks_it_for_a_recount(
    conn: sqlite3.Connection,
) -> None:
    links = _links(conn)[:2]
    rand = random.Random(41)
    people = [rand.randbytes(8) for _ in range(6)]
    state = rollups.RollupState()
    day_ms = (END // DAY) * DAY * 1000
    day = day_ms // 86_400_000
    rng = timerange.time_range("-3d", None, "day", "UTC", END)

    def write(*times: int) -> None:
        _write(
            conn, [_click(rand, t, links[i % 2]["id"], people) for i, t in enumerate(times)], state
        )

    write(*(day_ms - 5000 + i for i in range(6)))
    write(day_ms + 1000)  # the day before is done: its group-days keep counts only
    assert conn.execute("SELECT count(*) FROM group_day_stale").fetchone()[0] == 0
    write(*(day_ms - 1000 + i for i in range(4)))  # late clicks on the finished day
    write(day_ms + 2000)  # the next write finishes that day again: it cannot take a union
    stale = {tuple(r) for r in conn.execute("SELECT dim, key, day FROM group_day_stale")}
    groups = {k for link in links for k in rollups.link_group_keys(conn, link["id"])}
    assert stale == {(dim, key, day - 1) for dim, key in groups}
    for group_by in ("campaign", "tag", "domain"):
        _check_group_by(conn, rng, group_by)  # counted from the links meanwhile
    for i in range(visitors.CHUNKS_MERGE_AT):  # enough late writes to merge that day again
        write(day_ms - 900 + i, day_ms - 800 + i)
    for group_by in ("campaign", "tag", "domain"):
        _check_group_by(conn, rng, group_by)
    # a link joining a group whose finished day keeps counts only: that day is recounted
    with Transaction(conn):
        conn.execute("DELETE FROM group_day_stale")
    catalog.update_link(conn, links[0]["id"], {"campaign": links[1]["campaign"]})
    stale = {tuple(r) for r in conn.execute("SELECT dim, key, day FROM group_day_stale")}
    joined = links[1]["campaign"]
    assert ("campaign", joined, day - 1) in stale  # finished: counts only, recounted
    assert ("campaign", joined, day) not in stale  # the current day took the union
    for group_by in ("campaign", "tag", "domain"):
        _check_group_by(conn, rng, group_by)
    while True:
        with Transaction(conn):
            if not rollups.rebuild_stale_group_day(conn):
                break
    assert conn.execute("SELECT count(*) FROM group_day_stale").fetchone()[0] == 0
    for group_by in ("campaign", "tag", "domain"):
        _check_group_by(conn, rng, group_by)  # and from the rebuilt group-days


def test_a_roll_up_of_clicks_without_visitor_ids_writes_no_chunks(
    conn: sqlite3.Connection,
) -> None:
    """DNT and Sec-GPC clicks carry no visitor id: their roll-up has no visitors at all."""
    link = catalog.create_link(conn, {"url": "https://example.com/"})
    rand = random.Random(5)
    rows = [_click(rand, END * 1000 + i, link["id"], [b""])[:] for i in range(3)]
    vid = rollups.CLICK_COLUMNS.index("visitor_id")
    rows = [(*r[:vid], None, *r[vid + 1 :]) for r in rows]
    _write(conn, rows, rollups.RollupState())
    assert conn.execute("SELECT count(*) FROM link_day_visitors").fetchone()[0] == 0
    assert conn.execute("SELECT sum(clicks) FROM link_minute").fetchone()[0] == 3
