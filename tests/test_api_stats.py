"""Stats, live numbers, SSE, /healthz and /metrics of admin/api.py over real sockets: real
redirects through the edge (with GeoIP from a fixture .mmdb and client addresses from a
trusted proxy's X-Forwarded-For), read back from a real `linkedge serve` process."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from edge import rollups
from edge.db import Transaction, connect
from tests.conftest import ServerProcess, cli
from tests.geo_fixtures import build_city_mmdb
from tests.test_api import TOKEN, Api, assert_error

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
LONDON = "203.0.113.10"
SAN_FRANCISCO = "198.51.100.7"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("stats")
    build_city_mmdb(tmp / "city.mmdb")
    proc = ServerProcess(
        tmp / "linkedge.db",
        "--geoip",
        str(tmp / "city.mmdb"),
        "--trusted-proxy",
        "127.0.0.1/32",
        "--db-busy-timeout-s",
        "0.5",
        env={"LINKEDGE_ADMIN_TOKEN": TOKEN},
    )
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Api:
    return Api(server.admin_port)


def visit(
    server: ServerProcess,
    slug: str,
    *,
    ua: str = CHROME,
    ip: str = LONDON,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.edge_port, timeout=5)
    try:
        conn.request(
            method,
            "/" + slug,
            headers={
                "Host": "localhost",
                "User-Agent": ua,
                "X-Forwarded-For": ip,
                **(headers or {}),
            },
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], timeout: float = 5.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)


def new_link(api: Api, slug: str, **fields: Any) -> dict[str, Any]:
    status, link = api.post(
        "/api/links", {"url": "https://example.com/" + slug, "slug": slug, **fields}
    )
    assert status == 201, link
    return link  # type: ignore[no-any-return]


# --- link stats ----------------------------------------------------------------------------


def test_link_stats_from_real_clicks(api: Api, server: ServerProcess) -> None:
    link = new_link(api, "stats-real", campaign="real")
    for _ in range(2):
        visit(
            server,
            "stats-real",
            headers={"Referer": "https://t.co/x", "Accept-Language": "de-DE,de;q=0.9"},
        )
    visit(server, "stats-real", ua=IPHONE, ip=SAN_FRANCISCO)
    visit(server, "stats-real", ua="curl/8.5.0")
    visit(server, "stats-real", method="HEAD")

    def complete() -> dict[str, Any] | None:
        status, body = api.get(f"/api/links/{link['id']}/stats?from=-10m&top=3")
        assert status == 200, body
        return body if body["totals"]["clicks"] == 5 else None

    stats = wait_for(complete)
    assert stats["link"]["short_url"] == "https://localhost/stats-real"
    assert stats["totals"]["humans"] == 3 and stats["totals"]["bots"] == 2
    assert stats["totals"]["uniques"] == 3  # Chrome+London (incl. the HEAD), iPhone, curl
    assert set(stats["bots_by_kind"]) == {"head", "automation"}
    assert stats["interval"] == "minute" and len(stats["series"]) == 11
    assert sum(p["clicks"] for p in stats["series"]) == 5
    top = stats["top"]
    assert top["countries"][0] == {"value": "GB", "clicks": 4, "humans": 2}
    assert {"value": "US", "clicks": 1, "humans": 1} in top["countries"]
    assert top["cities"][0]["value"] == "London"
    assert top["regions"][0]["value"] == "England"
    assert {"value": "t.co", "clicks": 2, "humans": 2} in top["referrer_hosts"]
    assert {"value": "twitter", "clicks": 2, "humans": 2} in top["sources"]
    assert {"value": "de", "clicks": 2, "humans": 2} in top["languages"]
    assert {e["value"] for e in top["device_types"]} >= {"desktop", "mobile"}
    assert all(len(entries) <= 3 for entries in top.values())
    # 5 clicks in the last 15 minutes against none before: z = 5 / sqrt(5) = 2.2 >= 2
    # and more than +25%, so accelerating (admin/velocity.py's rule, worked by hand).
    velocity = stats["velocity"]
    assert (velocity["current"], velocity["previous"], velocity["label"]) == (5, 0, "accelerating")
    launch = stats["checkpoints"]
    assert launch["first_click_at"] is not None
    assert [c["minutes"] for c in launch["checkpoints"]] == [15, 30, 60]
    assert launch["checkpoints"][0]["clicks"] == 5 and not launch["checkpoints"][0]["complete"]
    # Addressable by domain/slug too, and the CLI reads the same numbers from SQLite.
    status, same = api.get("/api/links/localhost/stats-real/stats?from=-10m&top=3")
    assert status == 200 and same["totals"] == stats["totals"]
    out = cli("stats", "stats-real", "--from", "-10m", "--json", db=server.db)
    assert json.loads(out.stdout)["totals"] == stats["totals"]
    table = cli("stats", "stats-real", "--from", "-1h", db=server.db).stdout
    assert "clicks 5" in table and "London" in table
    # Issue 11 item 4: seconds after the clicks, the CLI's velocity (from the rollups) is
    # the API's (from the live counters): the current minute counts in both.
    speed = json.loads(out.stdout)["velocity"]
    assert speed["current"] == stats["velocity"]["current"] == 5
    assert speed["label"] == stats["velocity"]["label"] == "accelerating"
    assert "velocity: accelerating (5 clicks in the last 15 min vs 0 before)" in table


def insert_history(db: Path, link_id: int, rows_in: list[tuple[str, int, int]]) -> None:
    """Clicks on past dates, rolled up as the flusher would (the server has no clicks of
    its own waiting at that point): the test's only way to have clicks on other days."""
    import datetime as dt

    conn = connect(str(db))
    with Transaction(conn):
        rows = []
        for when, clicks, humans in rows_in:
            unix = int(dt.datetime.fromisoformat(when).timestamp())
            for i in range(clicks):
                row = dict.fromkeys(rollups.CLICK_COLUMNS)
                row.update(ts=unix * 1000, link_id=link_id, method="GET", country="NZ", dnt=0)
                row["bot_kind"] = None if i < humans else "crawler"
                rows.append(tuple(row[c] for c in rollups.CLICK_COLUMNS))
        rollups.insert_clicks(conn, rows)
        rollups.roll_up(conn)
    conn.close()


def test_series_in_a_time_zone_with_gaps_filled(api: Api, server: ServerProcess) -> None:
    link = new_link(api, "stats-history")
    insert_history(
        server.db,
        link["id"],
        [
            ("2024-11-03T03:30:00Z", 2, 2),  # 23:30 EDT on Nov 2 in New York
            ("2024-11-03T06:30:00Z", 3, 1),  # 01:30 EST on Nov 3, after the clocks went back
            ("2024-11-05T15:00:00Z", 4, 4),
        ],
    )
    base = f"/api/links/{link['id']}/stats?from=2024-11-01&to=2024-11-06&tz=America/New_York"
    status, day = api.get(base + "&interval=day")
    assert status == 200, day
    assert day["from"] == "2024-11-01T00:00:00-04:00" and day["to"] == "2024-11-06T00:00:00-05:00"
    assert [(p["t"], p["clicks"], p["humans"]) for p in day["series"]] == [
        ("2024-11-01T00:00:00-04:00", 0, 0),
        ("2024-11-02T00:00:00-04:00", 2, 2),
        ("2024-11-03T00:00:00-04:00", 3, 1),  # a 25-hour day
        ("2024-11-04T00:00:00-05:00", 0, 0),
        ("2024-11-05T00:00:00-05:00", 4, 4),
    ]
    assert day["totals"]["clicks"] == 9
    assert day["top"]["countries"] == [{"value": "NZ", "clicks": 9, "humans": 7}]
    status, hours = api.get(
        f"/api/links/{link['id']}/stats?from=2024-11-03T00:00&to=2024-11-03T03:00"
        "&tz=America/New_York&interval=hour"
    )
    assert [(p["t"][11:], p["clicks"]) for p in hours["series"]] == [
        ("00:00:00-04:00", 0),
        ("01:00:00-04:00", 0),
        ("01:00:00-05:00", 3),  # the repeated hour
        ("02:00:00-05:00", 0),
    ]
    status, utc = api.get(
        f"/api/links/{link['id']}/stats?from=2024-11-03T00:00Z&to=2024-11-04T00:00Z&interval=day"
    )
    assert [(p["t"], p["clicks"]) for p in utc["series"]] == [("2024-11-03T00:00:00+00:00", 5)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("from=-1h&to=-2h", "from"),
        ("interval=fortnight", "interval"),
        ("tz=Moon/Base", "tz"),
        ("from=-30d&interval=minute", "interval"),
        ("window=3h", "window"),
        ("top=0", "top"),
        ("group_by=campaign", "group_by"),  # only on /api/stats
    ],
)
def test_stats_query_errors_name_the_parameter(api: Api, query: str, field: str) -> None:
    link = api.get("/api/links?limit=1")[1]["links"]
    link_id = link[0]["id"] if link else new_link(api, "stats-err")["id"]
    status, error = api.get(f"/api/links/{link_id}/stats?{query}")
    assert status == 400
    assert error["error"]["field"] == field


# --- group-by ------------------------------------------------------------------------------


def test_group_by_campaign_tag_link_with_real_clicks(api: Api, server: ServerProcess) -> None:
    a = new_link(api, "grp-a", campaign="grp-one", tags=["grp-t1", "grp-t2"], utm_source="mail")
    b = new_link(api, "grp-b", campaign="grp-one", tags=["grp-t1"])
    new_link(api, "grp-c", campaign="grp-two")
    for slug, n in (("grp-a", 3), ("grp-b", 1), ("grp-c", 2)):
        for _ in range(n):
            visit(server, slug, ua="curl/8" if slug == "grp-c" else CHROME)

    def campaigns() -> dict[str, Any] | None:
        status, body = api.get("/api/stats?group_by=campaign&from=-10m&interval=minute&q=grp-")
        assert status == 200, body
        groups = {g["key"]: g for g in body["groups"]}
        return groups if groups.get("grp-one", {}).get("clicks") == 4 else None

    groups = wait_for(campaigns)
    assert list(groups) == ["grp-one", "grp-two"]  # most clicks first
    one = groups["grp-one"]
    assert (one["links"], one["humans"], one["bots"], one["uniques"]) == (2, 4, 0, 1)
    assert groups["grp-two"]["bots_by_kind"] == {"automation": 2}
    assert sum(p["clicks"] for p in one["series"]) == 4
    # 4 clicks against none before: z = 4 / sqrt(4) = 2.0, just enough to accelerate
    velocity = one["velocity"]
    assert (velocity["current"], velocity["previous"], velocity["label"]) == (4, 0, "accelerating")
    status, tags = api.get("/api/stats?group_by=tag&from=-10m&tag=grp-t1")
    assert {g["key"]: g["clicks"] for g in tags["groups"]} == {"grp-t1": 4, "grp-t2": 3}
    status, links = api.get("/api/stats?group_by=link&from=-10m&campaign=grp-one&limit=1")
    assert [(g["key"], g["slug"], g["clicks"]) for g in links["groups"]] == [(a["id"], "grp-a", 3)]
    assert links["totals"]["clicks"] == 4
    status, sources = api.get("/api/stats?group_by=utm_source&from=-10m&campaign=grp-one")
    assert {g["key"]: g["clicks"] for g in sources["groups"]} == {"mail": 3, "": 1}
    # Without group_by: the whole selection, shaped like a link's stats.
    status, whole = api.get("/api/stats?from=-10m&campaign=grp-one&top=2")
    assert status == 200
    assert whole["totals"]["clicks"] == 4 and "series" in whole and "top" in whole
    assert b["id"] != a["id"]
    status, error = api.get("/api/stats?group_by=colour")
    assert status == 400
    assert_error(error, "invalid_field", "group_by")
    status, error = api.get("/api/stats?group_by=link&top=3")
    assert_error(error, "invalid_field", "top")


# --- velocity and checkpoints --------------------------------------------------------------


def test_velocity_and_checkpoint_routes(api: Api, server: ServerProcess) -> None:
    link = new_link(api, "velo")
    for _ in range(4):
        visit(server, "velo")

    def four_clicks() -> dict[str, Any] | None:
        status, body = api.get("/api/links/localhost/velo/velocity?window=5m")
        assert status == 200, body
        return body["velocity"] if body["velocity"]["current"] == 4 else None  # type: ignore[no-any-return]

    velocity = wait_for(four_clicks)
    # The server started minutes ago: two 5-minute windows have not passed yet.
    assert time.time() - server.started_at < 2 * 300
    assert velocity == {
        "window_s": 300,
        "current": 4,
        "previous": 0,
        "rate_per_min": 0.8,  # 4 clicks / 5 minutes
        "previous_rate_per_min": 0.0,
        "slope_per_min2": 0.16,  # (0.8 - 0) per minute / 5 minutes between the midpoints
        "ratio": None,  # no previous clicks to divide by
        "label": "accelerating",  # z = 4 / sqrt(4) = 2.0
        "warming_up": True,
    }
    status, error = api.get(f"/api/links/{link['id']}/velocity?window=2h")
    assert status == 400
    assert_error(error, "invalid_field", "window")
    status, body = api.get(f"/api/links/{link['id']}/checkpoints")
    assert status == 200 and body["launch"]["first_click_at"] is not None
    assert body["launch"]["checkpoints"][0]["clicks"] == 4


# --- live ----------------------------------------------------------------------------------


def test_live_moves_within_a_second_of_a_click(api: Api, server: ServerProcess) -> None:
    link = new_link(api, "live-one")
    status, before = api.get("/api/live")
    assert status == 200
    assert set(before) == {"now", "overall", "links", "pipeline", "alerts"}
    assert set(before["overall"]["windows"]) == {"60s", "5m", "15m", "60m"}
    assert before["pipeline"]["recording"] is True
    start = before["overall"]["since_start"]["clicks"]
    clicked = time.monotonic()
    visit(server, "live-one")
    wait_for(lambda: api.get("/api/live")[1]["overall"]["since_start"]["clicks"] > start, 1.0, 0.02)
    assert time.monotonic() - clicked < 1.0
    for _ in range(5):
        visit(server, "live-one")

    def top() -> dict[str, Any] | None:
        links = api.get("/api/live?top=50")[1]["links"]
        return next((x for x in links if x["id"] == link["id"] and x["rate_per_min"] == 6), None)

    entry = wait_for(top, 2.0)
    assert entry["slug"] == "live-one" and entry["short_url"] == "https://localhost/live-one"
    assert entry["windows"]["60s"] == {"clicks": 6, "humans": 6, "bots": 0}
    assert api.get("/api/live?top=101")[0] == 400


def read_event(sock: socket.socket, buf: bytearray) -> dict[str, Any]:
    while b"\n\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "stream closed"
        buf += chunk
    raw, _, rest = bytes(buf).partition(b"\n\n")
    buf[:] = rest
    fields = dict(line.split(": ", 1) for line in raw.decode().split("\n") if ": " in line)
    assert fields["event"] == "live" and fields["id"].isdigit()
    return json.loads(fields["data"])  # type: ignore[no-any-return]


def open_stream(port: int) -> tuple[socket.socket, bytearray]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"GET /api/live/stream?top=100 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\n\r\n"
    )
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: text/event-stream" in head
    return sock, bytearray(rest)


def test_sse_stream_pushes_every_second_and_follows_clicks(api: Api, server: ServerProcess) -> None:
    new_link(api, "sse-one")
    sock, buf = open_stream(server.admin_port)
    with sock:
        first = read_event(sock, buf)
        started = time.monotonic()
        visit(server, "sse-one")
        seen = first["overall"]["since_start"]["clicks"]
        events = 0
        while True:
            event = read_event(sock, buf)
            events += 1
            if event["overall"]["since_start"]["clicks"] > seen:
                break
            assert events < 4, "the stream did not show the click"
        assert time.monotonic() - started < 2.5
        assert any(x["slug"] == "sse-one" for x in event["links"])
    status, body = api.get("/api/live/stream", token=None)
    assert status == 401


def test_stopping_the_server_ends_streams_promptly(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "stop.db", env={"LINKEDGE_ADMIN_TOKEN": TOKEN})
    sock, buf = open_stream(proc.admin_port)
    with sock:
        read_event(sock, buf)
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        sock.settimeout(5)
        while sock.recv(65536):  # the server closes the stream
            pass
        code, _out, _err = proc.stop(timeout=10)
    assert code == 0
    assert time.monotonic() - started < 5


# --- operations ----------------------------------------------------------------------------


def test_healthz_reports_db_geoip_and_pipeline(api: Api, server: ServerProcess) -> None:
    wait_for(lambda: api.get("/api/live")[1]["pipeline"]["queue_depth"] == 0)
    with closing(sqlite3.connect(server.db)) as conn:
        (servable,) = conn.execute(
            "SELECT count(*) FROM links WHERE archived_at IS NULL"
        ).fetchone()
    status, health = api.get("/healthz", token=None)
    assert status == 200
    assert health["status"] == "ok"
    assert health["db"]["ok"] is True
    assert (
        health["geoip"]["enabled"] is True and health["geoip"]["database_type"] == "GeoLite2-City"
    )
    assert health["pipeline"]["ok"] is True and health["pipeline"]["queue_depth"] == 0
    assert health["links_loaded"] == servable > 0


def test_healthz_is_503_while_the_database_cannot_be_written(
    api: Api, server: ServerProcess
) -> None:
    time.sleep(1.1)  # past the cached answer
    locker = sqlite3.connect(server.db, timeout=5, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        status, health = api.get("/healthz", token=None)
        assert status == 503
        assert health["status"] == "unavailable" and health["db"]["ok"] is False
        assert "locked" in health["db"]["error"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    wait_for(lambda: api.get("/healthz", token=None)[0] == 200, 5.0, 0.2)


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_in_prometheus_text(api: Api, server: ServerProcess) -> None:
    new_link(api, "metric-one")
    for _ in range(3):
        visit(server, "metric-one")
    wait_for(lambda: api.get("/api/live")[1]["pipeline"]["queue_depth"] == 0)
    time.sleep(1.1)  # the histogram takes new flush durations once a second
    status, headers, text = api.call("GET", "/metrics", token=None)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(text)
    assert m['linkedge_requests_total{status="302"}'] >= 3
    assert m["linkedge_redirects_total"] >= 3
    assert m["linkedge_clicks_written_total"] >= 3
    assert (
        m["linkedge_clicks_captured_total"]
        == m["linkedge_clicks_written_total"]
        + m["linkedge_clicks_dropped_total"]
        + m["linkedge_click_queue_depth"]
    )
    assert m["linkedge_links_loaded"] >= 1
    assert m["linkedge_geoip_build_timestamp_seconds"] > 1_500_000_000
    assert m['linkedge_open_connections{listener="admin"}'] >= 1
    buckets = [
        v for k, v in m.items() if k.startswith("linkedge_click_flush_duration_seconds_bucket")
    ]
    assert (
        buckets == sorted(buckets)
        and buckets[-1] == m["linkedge_click_flush_duration_seconds_count"]
    )
    assert m["linkedge_click_flush_duration_seconds_count"] >= 1
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            assert line.split()[3] in ("counter", "gauge", "histogram")
    assert m['linkedge_admin_requests_total{status="200"}'] >= 1
