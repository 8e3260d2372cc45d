"""The campaign's memory and its readings: change history (edge/changelog.py,
admin/history.py), baselines (admin/baselines.py) and the campaign report
(admin/report.py), against a real server and real SQLite files."""

from __future__ import annotations

import csv
import io
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from admin import baselines, report
from edge import catalog, rollups
from edge.db import Transaction, connect
from tests.conftest import ServerProcess, cli
from tests.test_api import Api, assert_error, edge_get, start_server

MIN_MS = 60_000
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("insights") / "linkedge.db")
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Api:
    return Api(server.admin_port)


def insert_clicks(
    db: Path | sqlite3.Connection, link_id: int, at: list[tuple[int, int, int]]
) -> None:
    """(unix ms, clicks, humans) rows of past clicks, rolled up by the real roll-up."""
    conn = connect(str(db)) if isinstance(db, Path) else db
    with Transaction(conn):
        rows = []
        for ts, clicks, humans in at:
            for i in range(clicks):
                row = dict.fromkeys(rollups.CLICK_COLUMNS)
                row.update(ts=ts, link_id=link_id, method="GET", dnt=0, source="twitter")
                row["referrer_host"] = "t.co"
                row["bot_kind"] = None if i < humans else "crawler"
                rows.append(tuple(row[c] for c in rollups.CLICK_COLUMNS))
        rollups.insert_clicks(conn, rows)
        rollups.roll_up(conn)
    if isinstance(db, Path):
        conn.close()


# --- history -----------------------------------------------------------------------------


def test_every_change_is_in_the_history_with_who_from_and_to(
    api: Api, server: ServerProcess
) -> None:
    status, link = api.post(
        "/api/links",
        {"url": "https://example.com/a", "slug": "hist", "campaign": "memory"},
    )
    assert status == 201
    lid = link["id"]
    variants = [
        {"url": "https://example.com/x", "weight": 1},
        {"url": "https://example.com/y", "weight": 1},
    ]
    for body in (
        {"url": "https://example.com/b"},
        {"disabled": True},
        {"disabled": False},
        {"variants": variants},
        {"variants": [{**variants[0], "weight": 3}, variants[1]]},
        {"max_clicks": 500},
        {"launched_at": 1_900_000_000_000},
        {"title": "same url", "url": "https://example.com/b"},  # url unchanged: not recorded
    ):
        status, _ = api.patch(f"/api/links/{lid}", body)
        assert status == 200, body
    status, _ = api.patch(f"/api/links/{lid}", {"url": "ftp://nope"})  # refused: no record
    assert status == 422
    cli("link", "set", "hist", "--url", "https://example.com/c", db=server.db)
    status, page = api.get(f"/api/links/{lid}/history")
    assert status == 200
    changes = list(reversed(page["changes"]))  # oldest first
    got = [(c["field"], c["kind"], c["from"], c["to"], c["who"]["via"]) for c in changes]
    assert got[0] == ("created", "created", None, "https://example.com/a", "api")
    assert got[1] == ("url", "destination", "https://example.com/a", "https://example.com/b", "api")
    assert got[2][:4] == ("disabled", "pause", False, True)
    assert got[3][:4] == ("disabled", "resume", True, False)
    assert got[4][:2] == ("variants", "variants") and got[4][2] is None
    assert [v["weight"] for v in got[4][3]] == [1, 1]
    assert got[5][:2] == ("variants", "weights") and [v["weight"] for v in got[5][3]] == [3, 1]
    assert got[6][:4] == ("max_clicks", "limits", None, 500)
    assert got[7][:4] == ("launched_at", "launch", None, 1_900_000_000_000)
    assert changes[7]["to_iso"] == "2030-03-17T17:46:40Z"
    assert got[8][:4] == ("title", "title", None, "same url")
    assert got[9] == ("url", "destination", "https://example.com/b", "https://example.com/c", "cli")
    assert len(got) == 10
    api_token = changes[1]["who"]["token"]
    assert api_token is not None and api_token["name"] == "env"  # LINKEDGE_ADMIN_TOKEN's
    assert changes[9]["who"]["token"] is None
    # the same by domain/slug, paged
    status, first = api.get("/api/links/localhost/hist/history?limit=4")
    assert status == 200 and len(first["changes"]) == 4 and first["next_cursor"]
    status, rest = api.get(f"/api/links/{lid}/history?cursor={first['next_cursor']}")
    assert [c["id"] for c in first["changes"] + rest["changes"]] == [
        c["id"] for c in page["changes"]
    ]
    status, body = api.get(f"/api/links/{lid}/history?cursor=zz")
    assert status == 400
    assert_error(body, "invalid_field", "cursor")
    status, body = api.get("/api/links/999999/history")
    assert status == 404
    # the launch routes (a link's, its campaign's) are in the history as launches
    status, _ = api.post(f"/api/links/{lid}/launch", {"at": "2031-01-01T00:00:00Z"})
    assert status == 200, _
    status, _ = api.post("/api/campaigns/memory/launch", {"at": "2031-01-02T00:00:00Z"})
    assert status == 200, _
    status, page = api.get(f"/api/links/{lid}/history?limit=2")
    assert [(c["field"], c["kind"], c["to_iso"]) for c in page["changes"]] == [
        ("campaign_launched_at", "launch", "2031-01-02T00:00:00Z"),
        ("launched_at", "launch", "2031-01-01T00:00:00Z"),
    ]
    # archive, restore, domain change
    api.delete(f"/api/links/{lid}")
    api.patch(f"/api/links/{lid}", {"archived": False})
    status, page = api.get(f"/api/links/{lid}/history?limit=2")
    assert [(c["field"], c["to"]) for c in page["changes"]] == [
        ("archived", False),
        ("archived", True),
    ]
    status, _ = api.patch("/api/domains/localhost", {"fallback_url": "https://example.com/404"})
    assert status == 200
    status, dom = api.get("/api/domains/localhost/history")
    assert status == 200
    assert dom["changes"][0]["field"] == "fallback_url"
    assert dom["changes"][0]["to"] == "https://example.com/404"
    status, added = api.post("/api/domains", {"host": "brief.example.com"})
    assert status == 201
    assert api.delete("/api/domains/brief.example.com")[0] == 204
    conn = sqlite3.connect(server.db)
    rows = conn.execute(
        "SELECT field, before, after, via FROM change_history WHERE domain_id = ? ORDER BY id",
        (added["id"],),
    ).fetchall()
    conn.close()
    assert rows == [
        ("created", None, "brief.example.com", "api"),
        ("removed", "brief.example.com", None, "api"),
    ]


def test_a_change_that_rolls_back_leaves_no_history(tmp_path: Path) -> None:
    conn = catalog.open_db(str(tmp_path / "tx.db"))
    link = catalog.create_link(conn, {"url": "https://example.com/1"}, slug="tx")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), Transaction(conn):
        catalog.update_link(conn, link["id"], {"url": "https://example.com/2"})
        raise Boom
    rows = conn.execute("SELECT field FROM change_history WHERE link_id = ?", (link["id"],))
    assert [r[0] for r in rows] == ["created"]
    assert catalog.get_link(conn, link["id"])["url"] == "https://example.com/1"


# --- baselines -------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=40))
def test_quantiles_are_numpys_linear_ones(values: list[int]) -> None:
    ordered = sorted(values)
    assert baselines.quantile(values, 0.0) == ordered[0]
    assert baselines.quantile(values, 1.0) == ordered[-1]
    assert baselines.quantile(values, 0.5) == pytest.approx(statistics.median(values))
    if len(values) >= 2:
        q = statistics.quantiles(values, n=4, method="inclusive")
        assert baselines.quantile(values, 0.25) == pytest.approx(q[0])
        assert baselines.quantile(values, 0.75) == pytest.approx(q[2])


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_versus_says_above_or_below_only_against_a_typical_value(actual: int, median: int) -> None:
    got = baselines.versus(actual, median)
    if median == 0:
        assert got["percent"] is None and got["text"].startswith("no baseline yet")
        return
    assert got["percent"] == round((actual - median) / median * 100, 1)
    if got["percent"] > 0:
        assert got["text"] == f"above baseline by {got['percent']:g}%"
    elif got["percent"] < 0:
        assert got["text"] == f"below baseline by {-got['percent']:g}%"
    else:
        assert got["text"] == "at baseline"


def test_first_hour_baseline_is_the_median_and_quartiles_of_earlier_links(tmp_path: Path) -> None:
    conn = catalog.open_db(str(tmp_path / "base.db"))
    now = (int(time.time() * 1000) // MIN_MS) * MIN_MS
    day_ago = now - 24 * HOUR_MS
    # four earlier links of campaign "c", each first clicked a day ago + i hours, with
    # constructed per-minute human clicks over their first hour
    curves = []
    for i in range(4):
        link = catalog.create_link(conn, {"url": "https://e.com/", "campaign": "c"}, slug=f"p{i}")
        start = day_ago + i * HOUR_MS
        per_minute = [(m * (i + 1)) % 5 for m in range(60)]
        per_minute[0] = 1 + i  # the first minute has a click (that is where the hour starts)
        insert_clicks(
            conn, link["id"], [(start + m * MIN_MS, n + 1, n) for m, n in enumerate(per_minute)]
        )
        cumulative = [sum(per_minute[: m + 1]) for m in range(60)]
        curves.append(cumulative)
    base = baselines.first_hour(conn, "campaign", "c", now)
    assert base["enough"] and base["links"] == 4
    for m in (0, 14, 29, 59):
        column = [c[m] for c in curves]
        q = statistics.quantiles(column, n=4, method="inclusive")
        point = base["curve"][m]
        assert point["minute"] == m + 1
        assert point["median"] == pytest.approx(statistics.median(column))
        assert (point["p25"], point["p75"]) == (pytest.approx(q[0]), pytest.approx(q[2]))
    assert [(c["minutes"], c["median"]) for c in base["checkpoints"]] == [
        (m, pytest.approx(statistics.median(c[m - 1] for c in curves))) for m in (15, 30, 60)
    ]
    # a new link 10 minutes into its first hour, against that curve
    new = catalog.create_link(conn, {"url": "https://e.com/", "campaign": "c"}, slug="new")
    first = now - 9 * MIN_MS
    insert_clicks(conn, new["id"], [(first + m * MIN_MS, 4, 4) for m in range(10)])
    got = baselines.link_baseline(conn, catalog.get_link(conn, new["id"]), now)
    vs = got["first_hour"]["campaign"]
    median = statistics.median(c[9] for c in curves)
    assert vs["at_minute"] == 10 and vs["versus"]["actual"] == 40
    pct = round((40 - median) / median * 100, 1)
    assert vs["versus"]["percent"] == pct
    assert vs["text"].startswith(f"{'above' if pct > 0 else 'below'} baseline by {abs(pct):g}%")
    assert [(c["complete"], c["actual"]) for c in vs["checkpoints"]] == [(False, 40)] * 3
    assert got["first_hour"]["utm_source"]["enough"] is False  # the link has no source
    assert got["own_curve"] == [4 * (m + 1) for m in range(10)]
    short = baselines.summary(conn, catalog.get_link(conn, new["id"]), now)
    assert short["first_hour_campaign"] == {"enough": True, "percent": pct, "text": vs["text"]}
    # too few earlier links: no baseline, and how many are needed
    few = baselines.first_hour(
        conn, "campaign", "c", now, before_minute=(day_ago + HOUR_MS) // MIN_MS + 1
    )
    assert few["enough"] is False and few["links"] == 2
    assert (
        few["text"].startswith("no baseline yet: 2 earlier link(s)") and "3 needed" in few["text"]
    )


def test_hour_of_week_baseline_needs_two_weeks_and_compares_the_last_hour(tmp_path: Path) -> None:
    conn = catalog.open_db(str(tmp_path / "how.db"))
    now = int(time.time() * 1000)
    last = now // HOUR_MS - 1  # the last complete hour
    link = catalog.create_link(conn, {"url": "https://e.com/", "campaign": "w"}, slug="w")
    # 10 humans in the same hour of week, 1, 2 and 3 weeks ago; 15 in the last hour
    insert_clicks(
        conn, link["id"], [((last - 168 * k) * HOUR_MS + 5 * MIN_MS, 10, 10) for k in (1, 2, 3)]
    )
    insert_clicks(conn, link["id"], [(last * HOUR_MS + 7 * MIN_MS, 17, 15)])
    for subject in ({"dim": "link", "key": link["id"]}, {"dim": "campaign", "key": "w"}):
        got = baselines.hour_of_week_baseline(conn, subject, now)
        assert got["enough"], got
        assert got["history_hours"] == 3 * 168
        slot = baselines.hour_of_week(last)
        assert got["by_hour_of_week"][slot] == 10 and got["samples"][slot] == 3
        assert got["last_hour"]["percent"] == 50.0
        assert got["text"] == "above baseline by 50%"
    # one week of history is not enough, and says so
    young = catalog.create_link(conn, {"url": "https://e.com/", "campaign": "y"}, slug="y")
    insert_clicks(conn, young["id"], [((last - 168) * HOUR_MS, 3, 3)])
    got = baselines.hour_of_week_baseline(conn, {"dim": "campaign", "key": "y"}, now)
    assert got["enough"] is False
    assert got["text"] == "no baseline yet: 7.0 days of history, 14 needed"
    # Monday 00:00 UTC is hour 0 of the week
    monday = 1_700_438_400_000 // HOUR_MS  # 2023-11-20T00:00:00Z, a Monday
    assert baselines.hour_of_week(monday) == 0 and baselines.hour_of_week(monday + 25) == 25


def test_baseline_routes(api: Api, server: ServerProcess) -> None:
    status, link = api.post(
        "/api/links",
        {"url": "https://example.com/", "slug": "based", "campaign": "bc", "utm_source": "nl"},
    )
    assert status == 201
    status, got = api.get(f"/api/links/{link['id']}/baseline")
    assert status == 200
    assert got["first_hour"]["campaign"]["text"].startswith("no baseline yet")
    assert got["hour_of_week"]["text"].startswith("no baseline yet")
    status, stats = api.get(f"/api/links/{link['id']}/stats?from=-1h")
    assert status == 200
    assert stats["baseline"]["first_hour_campaign"]["text"] == got["first_hour"]["campaign"]["text"]
    out = cli("stats", "based", db=server.db).stdout
    assert "baseline: first hour vs campaign: no baseline yet: 0 earlier link(s)" in out
    status, got = api.get("/api/campaigns/bc/baseline")
    assert status == 200 and got["first_hour"]["needs_links"] == baselines.MIN_PEERS
    status, got = api.get("/api/sources/nl/baseline")
    assert status == 200 and got["group"] == {"dim": "utm_source", "key": "nl"}
    assert got["hour_of_week"]["history_hours"] == 0  # no click yet: no history at all
    assert got["hour_of_week"]["text"] == "no baseline yet: 0.0 days of history, 14 needed"
    status, body = api.get("/api/campaigns/nothing-here/baseline")
    assert status == 404
    assert_error(body, "not_found", "name")


# --- the report --------------------------------------------------------------------------


def test_campaign_report_with_changes_and_exports(api: Api, server: ServerProcess) -> None:
    links = []
    for slug, source, content in (("r1", "twitter", "bio"), ("r2", "newsletter", "header")):
        status, link = api.post(
            "/api/links",
            {
                "url": f"https://example.com/{slug}",
                "slug": slug,
                "campaign": "launch",
                "utm_source": source,
                "utm_content": content,
            },
        )
        assert status == 201
        links.append(link)
    created = int(time.time() * 1000) // MIN_MS * MIN_MS
    # constructed history: r1 gets 3 humans/min for 10 minutes from 40 minutes ago, with a
    # peak of 9 at 35 minutes ago; r2 1 human/min for 5 minutes
    base = created - 40 * MIN_MS
    r1 = [(base + m * MIN_MS, 3, 3) for m in range(10)]
    r1[5] = (base + 5 * MIN_MS, 10, 9)
    insert_clicks(server.db, links[0]["id"], r1)
    insert_clicks(server.db, links[1]["id"], [(base + m * MIN_MS, 1, 1) for m in range(5)])
    status, _ = api.patch(f"/api/links/{links[0]['id']}", {"url": "https://example.com/r1-new"})
    assert status == 200
    status, rep = api.get("/api/campaigns/launch/report")
    assert status == 200, rep
    assert rep["totals"] == {"clicks": 3 * 9 + 10 + 5, "humans": 3 * 9 + 9 + 5, "bots": 1}
    assert rep["first_click_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base / 1000))
    assert rep["peak_minute"]["humans"] == 9
    assert rep["peak_minute"]["at"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime((base + 5 * MIN_MS) / 1000)
    )
    assert rep["time_to_first_click_s"] == 0  # the clicks came before the links were created
    assert rep["best_channel"] == {"by": "utm_source", "value": "twitter", "humans": 36, "of": 41}
    assert rep["best_placement"]["value"] == "bio"
    assert rep["channels_by_referrer"] == [{"source": "twitter", "humans": 41}]
    assert rep["conversions"]["total"] == 0 and rep["conversions"]["revenue"] == {}
    assert rep["variants"]["best"] is None
    dest = [c for c in rep["changes"] if c["field"] == "url"]
    assert len(dest) == 1 and dest[0]["to"] == "https://example.com/r1-new"
    # the 30 minutes before the change hold the clicks of 40..31 minutes ago: none of the
    # 10 minutes of r1 and r2 fall after it
    change_min = dest[0]["ts_ms"] // MIN_MS
    before = sum(h for ts, _c, h in r1 if change_min - 30 <= ts // MIN_MS < change_min)
    before += sum(1 for m in range(5) if change_min - 30 <= (base // MIN_MS + m) < change_min)
    assert dest[0]["humans_30m_before"] == before
    assert dest[0]["humans_30m_after"] == 0
    assert dest[0]["versus_baseline"]["percent"] is None  # not two weeks of history
    assert rep["baseline"]["enough"] is False
    hours = {ch["channel"]: ch for ch in rep["planning"]["best_hours_by_channel"]}
    assert hours["twitter"]["sample_humans"] == 36 and hours["newsletter"]["sample_humans"] == 5
    assert sum(h["humans"] for h in hours["twitter"]["best_hours"]) <= 36
    # exports
    status, headers, md = api.call("GET", "/api/campaigns/launch/report?format=md")
    assert status == 200 and headers["content-type"].startswith("text/markdown")
    assert md.startswith("# Campaign report: launch") and "| destination |" in md
    assert "Peak minute: " + rep["peak_minute"]["at"] in md
    status, headers, text = api.call("GET", "/api/campaigns/launch/report?format=csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert {"section": "totals", "item": "launch", "metric": "humans", "value": "41"} in table
    assert any(
        r["section"] == "change" and r["value"] == "https://example.com/r1-new" for r in table
    )
    status, body = api.get("/api/campaigns/launch/report?format=pdf")
    assert status == 400
    assert_error(body, "invalid_field", "format")
    status, body = api.get("/api/campaigns/nope/report")
    assert status == 404
    assert_error(body, "not_found", "name")
    assert report.markdown(rep) == md


def test_the_dashboard_is_served_with_a_strict_policy(api: Api, server: ServerProcess) -> None:
    status, headers, body = api.call("GET", "/dashboard/", token=None)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/dashboard/app.js">' in body
    for name, kind in (
        ("app.js", "text/javascript"),
        ("chart.js", "text/javascript"),
        ("app.css", "text/css"),
    ):
        status, headers, _ = api.call("GET", f"/dashboard/{name}", token=None)
        assert status == 200 and headers["content-type"].startswith(kind), name
    for bad in ("../api.py", "__init__.py", ".hidden.js", "nope.js"):
        status, _h, _b = api.call("GET", f"/dashboard/{bad}", token=None)
        assert status == 404, bad
    status, headers, _ = api.call("GET", "/", token=None)
    assert status == 302 and headers["location"] == "/dashboard/"
    # the data is not: the API still needs the token
    status, _ = api.get("/api/links", token=None)
    assert status == 401
    # not on the edge: an unknown slug there (404, or the domain's fallback set above)
    assert edge_get(server.edge_port, "/dashboard/")[0] in (302, 404)
