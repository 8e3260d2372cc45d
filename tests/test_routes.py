"""Redirect rules, A/B variants, click limits and click ids over real sockets: links made
through the admin API of a real `linkedge serve` with two edge workers, GeoIP from a
fixture .mmdb, client addresses from a trusted proxy's X-Forwarded-For; every click's
route read back from the clicks table."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import sqlite3
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from edge import rules
from tests.conftest import ServerProcess
from tests.geo_fixtures import build_city_mmdb
from tests.test_api import TOKEN, Api, assert_error
from tests.test_api_stats import CHROME, IPHONE, LONDON, SAN_FRANCISCO, wait_for

CURL = "curl/8.5.0"
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("routes")
    build_city_mmdb(tmp / "city.mmdb")
    proc = ServerProcess(
        tmp / "linkedge.db",
        "--geoip",
        str(tmp / "city.mmdb"),
        "--trusted-proxy",
        "127.0.0.1/32",
        "--workers",
        "2",
        env={"LINKEDGE_ADMIN_TOKEN": TOKEN},
    )
    yield proc
    if proc.proc.poll() is None:
        code, _out, err = proc.stop()
        assert code == 0, err


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Api:
    return Api(server.admin_port)


def click(
    server: ServerProcess,
    path: str,
    *,
    ua: str = CHROME,
    ip: str = LONDON,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, str | None]:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", server.edge_port, timeout=5)
    try:
        c.request(
            "GET",
            path,
            headers={
                "Host": "localhost",
                "User-Agent": ua,
                "X-Forwarded-For": ip,
                **(headers or {}),
            },
        )
        resp = c.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location")
    finally:
        if own:
            c.close()


def make(api: Api, slug: str, **fields: Any) -> dict[str, Any]:
    status, link = api.post(
        "/api/links", {"url": f"https://example.com/{slug}", "slug": slug, **fields}
    )
    assert status == 201, link
    return link  # type: ignore[no-any-return]


def clicks_of(
    server: ServerProcess, link_id: int, columns: str, n: int, order: str = "id"
) -> list[tuple[Any, ...]]:
    """`columns` of the link's clicks (ordered by `order`) once `n` are written."""

    def read() -> list[tuple[Any, ...]] | None:
        conn = sqlite3.connect(server.db)
        try:
            rows = conn.execute(
                f"SELECT {columns} FROM clicks WHERE link_id = ? ORDER BY {order}", (link_id,)
            ).fetchall()
        finally:
            conn.close()
        return rows if len(rows) >= n else None

    return wait_for(read, 10.0)  # type: ignore[no-any-return]


def routes_of(server: ServerProcess, link_id: int, n: int) -> list[tuple[Any, ...]]:
    """(route, bot_kind, click_id) of the link's clicks once `n` are written."""
    return clicks_of(server, link_id, "route, bot_kind, click_id", n)


def test_rules_route_by_device_country_language_referrer_query_and_time(
    api: Api, server: ServerProcess
) -> None:
    link = make(
        api,
        "ruled",
        rules=[
            {"when": {"query": {"promo": True}}, "url": "https://example.com/promo", "status": 307},
            {"when": {"device": "ios"}, "url": "https://apps.apple.com/app"},
            {"when": {"device": ["android"]}, "url": "https://play.google.com/app"},
            {"when": {"country": ["us", "CA"]}, "url": "https://example.com/na"},
            {"when": {"language": "fr"}, "url": "https://example.com/fr"},
            {"when": {"referrer_host": "t.co"}, "url": "https://example.com/x"},
            {
                "when": {"time": {"after": "2999-01-01T00:00:00Z"}},
                "url": "https://example.com/later",
            },
        ],
    )
    assert link["rules"][1] == {
        "when": {"device": ["ios"]},
        "url": "https://apps.apple.com/app",
        "status": 302,
    }
    cases = [
        (dict(), 302, "https://example.com/ruled", 0),  # London, Chrome, no match: its URL
        (dict(ua=IPHONE), 302, "https://apps.apple.com/app", 2),
        (dict(ua=ANDROID), 302, "https://play.google.com/app", 3),
        (dict(ip=SAN_FRANCISCO), 302, "https://example.com/na", 4),
        (dict(headers={"Accept-Language": "fr-CA,fr;q=0.9"}), 302, "https://example.com/fr", 5),
        (dict(headers={"Referer": "https://t.co/abc"}), 302, "https://example.com/x", 6),
        # the first match wins: the promo query beats the iPhone rule after it
        (dict(ua=IPHONE, path="/ruled?promo"), 307, "https://example.com/promo?promo", 1),
    ]
    for case, status, location, _route in cases:
        path = str(case.pop("path", "/ruled"))
        got = click(server, path, **case)  # type: ignore[arg-type]
        assert got == (status, location), case
    recorded = routes_of(server, link["id"], len(cases))
    # two workers write in their own order: compare the routes as a multiset
    assert Counter(r[0] for r in recorded) == Counter(c[3] for c in cases)


def test_rule_errors_name_the_rule_and_the_field(api: Api) -> None:
    for body, field in [
        ({"rules": [{"when": {}, "url": "https://e.com/"}]}, "rules[0].when"),
        (
            {
                "rules": [
                    {"when": {"device": "ios"}, "url": "https://e.com/"},
                    {"when": {"country": "GBR"}, "url": "https://e.com/"},
                ]
            },
            "rules[1].when.country",
        ),
        ({"rules": [{"when": {"colour": "red"}, "url": "https://e.com/"}]}, "rules[0].when.colour"),
        ({"rules": [{"when": {"device": "ios"}, "url": "javascript:alert(1)"}]}, "rules[0].url"),
        (
            {"rules": [{"when": {"device": "ios"}, "url": "https://e.com/", "status": 200}]},
            "rules[0].status",
        ),
        (
            {"rules": [{"when": {"time": {"hours": [25, 3]}}, "url": "https://e.com/"}]},
            "rules[0].when.time.hours",
        ),
        ({"variants": [{"url": "https://e.com/a", "weight": 1}]}, "variants"),
        (
            {
                "variants": [
                    {"url": "https://e.com/a", "weight": 0},
                    {"url": "https://e.com/b", "weight": 1},
                ]
            },
            "variants[0].weight",
        ),
        ({"max_clicks": 0}, "max_clicks"),
    ]:
        status, error = api.post("/api/links", {"url": "https://example.com/", **body})
        assert status == 400, (body, error)
        assert_error(error, "invalid_field", field)
        assert field in error["error"]["message"]
    # a destination that is no URL is refused as the link's own url is (422 invalid_url)
    for body, field in [
        ({"overflow_url": "ftp://e.com/"}, "overflow_url"),
        (
            {
                "variants": [
                    {"url": "mailto:a@b.c", "weight": 1},
                    {"url": "https://e.com/", "weight": 1},
                ]
            },
            "variants[0].url",
        ),
    ]:
        status, error = api.post("/api/links", {"url": "https://example.com/", **body})
        assert status in (400, 422), (body, error)
        assert error["error"]["field"] == field, (body, error)


def test_variants_split_by_weight_stick_per_visitor_and_give_bots_the_first(
    api: Api, server: ServerProcess
) -> None:
    link = make(
        api,
        "split",
        variants=[
            {"url": "https://example.com/a", "weight": 80, "name": "a"},
            {"url": "https://example.com/b", "weight": 20, "name": "b"},
        ],
    )
    visitors = [
        f"192.0.2.{i % 250 + 1}" if i < 250 else f"198.18.{i // 250}.{i % 250 + 1}"
        for i in range(600)
    ]

    def visit(ip: str) -> str | None:
        return click(server, "/split", ip=ip)[1]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = list(pool.map(visit, visitors))
        again = list(pool.map(visit, visitors[:100]))
    counts = Counter(first)
    assert set(counts) == {"https://example.com/a", "https://example.com/b"}
    # 600 visitors at 80/20: b's share is 0.2 +- 4.5 standard deviations (0.016)
    assert abs(counts["https://example.com/b"] / 600 - 0.2) < 0.075, counts
    assert again == first[:100]  # a refresh never flips the variant
    bots = [click(server, "/split", ua=CURL, ip=ip)[1] for ip in visitors[:20]]
    assert set(bots) == {"https://example.com/a"}
    recorded = routes_of(server, link["id"], 720)
    human_routes = Counter(r[0] for r in recorded if r[1] is None)
    assert human_routes[rules.VARIANT_BASE] == counts["https://example.com/a"] + sum(
        1 for u in again if u == "https://example.com/a"
    )
    assert {r[0] for r in recorded if r[1] is not None} == {rules.VARIANT_BASE}


def test_click_limit_holds_exactly_across_workers_and_bots_do_not_spend_it(
    api: Api, server: ServerProcess
) -> None:
    link = make(api, "drop", max_clicks=60, overflow_url="https://example.com/sold-out")

    def burst(n: int) -> list[str | None]:
        c = http.client.HTTPConnection("127.0.0.1", server.edge_port, timeout=5)
        try:
            out = []
            for i in range(n):
                ua = CURL if i % 3 == 0 else CHROME  # bots in between: they never spend
                out.append(click(server, "/drop", ua=ua, conn=c)[1])
            return out
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 8 connections over 2 workers
        served = [u for part in pool.map(burst, [30] * 8) for u in part]
    humans = [u for i, u in enumerate(served) if (i % 30) % 3 != 0]
    assert humans.count("https://example.com/drop") <= 60  # never more than the limit
    # at most one lease per worker may sit unspent in the other worker when one runs out
    assert humans.count("https://example.com/drop") >= 60 - 2 * 100
    # once past it, every click is the overflow (the budget is settled when written)
    wait_for(lambda: click(server, "/drop")[1] == "https://example.com/sold-out", 5.0)
    spent = wait_for(lambda: _spent(server, link["id"]) or None, 5.0)
    served_main = [
        r for r in routes_of(server, link["id"], len(served)) if r[0] == 0 and r[1] is None
    ]
    assert spent == len(served_main) <= 60
    assert all(
        click(server, "/drop", ip=f"192.0.2.{i}")[1] == "https://example.com/sold-out"
        for i in range(1, 20)
    )


def test_raising_a_limit_serves_the_link_again_within_a_second(
    api: Api, server: ServerProcess
) -> None:
    link = make(api, "raise", max_clicks=3)
    served = 0
    for _ in range(10):  # new connections: either worker; one may run out while the other
        if click(server, "/raise")[0] != 302:  # holds the last unit (edge/limits.py)
            break
        served += 1
    assert 1 <= served <= 3
    wait_for(lambda: click(server, "/raise")[0] == 410, 5.0)  # no overflow URL: gone
    status, _ = api.patch(f"/api/links/{link['id']}", {"max_clicks": 1000})
    assert status == 200
    started = time.monotonic()
    wait_for(lambda: click(server, "/raise")[0] == 302, 3.0, 0.02)
    assert time.monotonic() - started < 1.0


def test_click_ids_are_appended_unique_and_recorded(api: Api, server: ServerProcess) -> None:
    link = make(api, "tracked", click_ids=True, click_id_param="ref_id")
    locations = [click(server, "/tracked?utm_source=mail")[1] for _ in range(20)]
    ids = []
    for location in locations:
        assert location is not None and location.startswith("https://example.com/tracked?")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        assert query["utm_source"] == ["mail"]
        (cid,) = query["ref_id"]
        assert len(cid) == 22
        ids.append(cid)
    assert len(set(ids)) == 20
    recorded = routes_of(server, link["id"], 20)
    stored = {base64.urlsafe_b64encode(r[2]).decode().rstrip("=") for r in recorded}
    assert stored == set(ids)


def _spent(server: ServerProcess, link_id: int) -> int:
    conn = sqlite3.connect(server.db)
    try:
        row = conn.execute("SELECT spent FROM link_spent WHERE link_id = ?", (link_id,)).fetchone()
    finally:
        conn.close()
    return 0 if row is None else int(row[0])
