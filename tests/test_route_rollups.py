"""Per-route rollups and repeat visitors against the raw clicks: a link's stats cut by
route (edge/rules.py index, rolled up under rules.route_key) and its repeat visitors
(link_day_repeat) equal brute force over `clicks`, with the roll-up split across writes."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin import conversions, stats, timerange
from edge import catalog, rollups, visitors
from edge.clicks import _catch_up
from edge.db import Transaction

END = 1_717_243_200 + 1234
DAY = 86400
ROUTES = (0, 1, 32, 33, 63, None)


def _row(ts_ms: int, link_id: int, vid: bytes | None, bot: str | None, route: int | None) -> tuple:
    row: dict[str, Any] = dict.fromkeys(rollups.CLICK_COLUMNS)
    row.update(
        ts=ts_ms, link_id=link_id, visitor_id=vid, bot_kind=bot, method="GET", dnt=0, route=route,
        country="NZ" if ts_ms % 2 else "FR",
    )  # fmt: skip
    return tuple(row[c] for c in rollups.CLICK_COLUMNS)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = catalog.open_db(str(tmp_path / "r.db"))
    yield c
    c.close()


def _fill(conn: sqlite3.Connection, seed: int, n: int, cuts: int) -> list[tuple]:
    rng = random.Random(seed)
    catalog.add_domain(conn, "go.example.com")
    links = [catalog.create_link(conn, {"url": f"https://e.example/{i}"}) for i in range(3)]
    vids = [rng.randbytes(8) for _ in range(15)]
    times = sorted(rng.randrange((END - 2 * DAY) * 1000, END * 1000) for _ in range(n))
    rows = [
        _row(
            t,
            rng.choice(links)["id"],
            None if rng.random() < 0.1 else rng.choice(vids),
            rng.choice((None, None, None, "crawler")),
            rng.choice(ROUTES),
        )
        for t in times
    ]
    bounds = sorted(rng.sample(range(1, n), cuts)) if cuts else []
    for lo, hi in zip([0, *bounds], [*bounds, n], strict=True):
        with Transaction(conn):
            rollups.insert_clicks(conn, rows[lo:hi])
        _catch_up(conn)
    return rows


def _rng() -> timerange.TimeRange:
    return timerange.time_range(str((END - 3 * DAY) * 1000), str(END * 1000 + 1), None, None, END)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), cuts=st.integers(0, 4))
def test_route_stats_equal_the_raw_clicks(tmp_path: Path, seed: int, cuts: int) -> None:
    conn = catalog.open_db(str(tmp_path / f"r{seed}-{cuts}.db"))
    try:
        rows = _fill(conn, seed, 120, cuts)
        col = {c: i for i, c in enumerate(rollups.CLICK_COLUMNS)}
        for link_id in {r[col["link_id"]] for r in rows}:
            for route in (0, 1, 32, 33, 63):
                mine = [
                    r for r in rows if r[col["link_id"]] == link_id and r[col["route"]] == route
                ]
                flt = catalog.LinkFilter(link_id=link_id)
                got = stats.selection_stats(conn, flt, _rng(), 10, route)
                humans = [r for r in mine if r[col["bot_kind"]] is None]
                assert got["totals"]["clicks"] == len(mine)
                assert got["totals"]["humans"] == len(humans)
                per_day = {
                    (r[col["ts"]] // 86_400_000, r[col["visitor_id"]])
                    for r in humans
                    if r[col["visitor_id"]] is not None
                }
                assert got["totals"]["human_uniques"] == len(per_day)
                countries = {e["value"]: e["clicks"] for e in got["top"]["countries"]}
                assert sum(countries.values()) == len(mine)
                totals = stats.route_totals(conn, flt, _rng(), [route])[route]
                assert totals["human_uniques"] == len(per_day)
            # the link's own numbers are unchanged by its routes' rows
            own = stats.selection_stats(conn, catalog.LinkFilter(link_id=link_id), _rng())
            assert own["totals"]["clicks"] == sum(1 for r in rows if r[col["link_id"]] == link_id)
    finally:
        conn.close()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.integers(0, 6))
def test_repeat_visitors_equal_the_raw_clicks(tmp_path_factory: Any, seed: int, cuts: int) -> None:
    conn = catalog.open_db(str(tmp_path_factory.mktemp("rep") / "r.db"))
    try:
        rows = _fill(conn, seed, 150, cuts)
        col = {c: i for i, c in enumerate(rollups.CLICK_COLUMNS)}
        counts: dict[tuple[int, int, bytes], int] = {}
        for r in rows:
            if r[col["bot_kind"]] is None and r[col["visitor_id"]] is not None:
                key = (r[col["link_id"]], r[col["ts"]] // 86_400_000, r[col["visitor_id"]])
                counts[key] = counts.get(key, 0) + 1
        expected = {k for k, n in counts.items() if n >= 2}
        stored = set()
        for link_id, day, blob in conn.execute("SELECT link_id, day, ids FROM link_day_repeat"):
            for v in visitors.unpack_ids(blob):
                stored.add((link_id, day, int(v)))
        assert stored == {(k[0], k[1], visitors.visitor_int(k[2])) for k in expected}
        link_ids = sorted({k[0] for k in counts})
        seg = conversions.segments(conn, catalog.LinkFilter(link_id=link_ids[0]), _rng(), None)
        want = {(d, v) for (lk, d, v) in expected if lk == link_ids[0]}
        assert seg["segments"]["repeat_visitors"]["visitors"] == len(want)
    finally:
        conn.close()


def test_an_export_of_stats_holds_links_not_routes(conn: sqlite3.Connection) -> None:
    from admin import exports

    rows = _fill(conn, 7, 60, 1)
    col = rollups.CLICK_COLUMNS.index("link_id")
    exported = list(exports.stats_rows(conn, exports.Filters(conn, now_s=END)))
    assert exported and all(r[1] > 0 for r in exported)
    assert sum(r[4] for r in exported) == len(rows) == sum(1 for r in rows if r[col] > 0)
