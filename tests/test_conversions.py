"""Conversions over real sockets: POST /api/events, the postback, the edge pixel, token
scopes, and a campaign end to end (an A/B link with click ids, phone and desktop clicks
through the real edge, a real "destination site" HTTP server that receives the redirect
and posts the events), against one real `linkedge serve` process per module."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import ServerProcess, cli
from tests.test_api import TOKEN, Api, assert_error, start_server

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)
DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("conv") / "linkedge.db")
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Api:
    return Api(server.admin_port)


def edge_click(port: int, path: str, ua: str, ip: str = "") -> tuple[int, str]:
    """One request to the edge; (status, Location). `ip` sets X-Forwarded-For (ignored
    from an untrusted peer: every click here comes from 127.0.0.1)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "localhost", "User-Agent": ua})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location") or ""
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def first_sse_event(port: int) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/live/stream", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        text = b""
        while b"\n\n" not in text:
            text += resp.read1(65536)
    finally:
        conn.close()
    data = [line for line in text.split(b"\n") if line.startswith(b"data: ")][0]
    return json.loads(data[6:])


def make_link(api: Api, **fields: Any) -> dict[str, Any]:
    status, link = api.post("/api/links", {"url": "https://shop.example/p", **fields})
    assert status == 201, link
    return dict(link)


def click_id_of(location: str, param: str = "lc") -> str:
    return parse_qs(urlsplit(location).query)[param][0]


# --- the destination site -----------------------------------------------------------------


class Destination:
    """A real HTTP server standing in for the shop: each landing takes the click id from
    its query and posts the events its page would (a signup, then a purchase)."""

    def __init__(self, admin_port: int) -> None:
        self.admin_port = admin_port
        self.landed: list[str] = []
        self.posted: list[tuple[int, Any]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                click_id = query.get("lc", [""])[0]
                owner.landed.append(click_id)
                plan = query.get("buy", ["0"])[0]
                for event in owner.events_for(click_id, plan):
                    owner.posted.append(owner.post(event))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def events_for(self, click_id: str, plan: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"click_id": click_id, "name": "signup", "event_id": f"su-{click_id}"}
        ]
        if plan != "0":
            out.append(
                {
                    "click_id": click_id,
                    "name": "purchase",
                    "value": plan,
                    "currency": "EUR",
                    "event_id": f"order-{click_id}",
                }
            )
        return out

    def post(self, event: dict[str, Any]) -> tuple[int, Any]:
        return Api(self.admin_port).post("/api/events", event)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def follow(location: str) -> None:
    """The browser following the redirect to the destination site."""
    parts = urlsplit(location)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        conn.getresponse().read()
    finally:
        conn.close()


def test_a_campaign_end_to_end(api: Api, server: ServerProcess) -> None:
    site = Destination(server.admin_port)
    try:
        base = f"http://127.0.0.1:{site.port}/landing"
        link = make_link(
            api,
            url=base,
            campaign="spring",
            click_ids=True,
            variants=[
                {"url": f"{base}?buy=30", "weight": 50, "name": "a"},
                {"url": f"{base}?buy=0", "weight": 50, "name": "b"},
            ],
        )
        started = time.time()
        served: dict[str, int] = {}
        for ua in (IPHONE, ANDROID, DESKTOP):
            status, location = edge_click(server.edge_port, f"/{link['slug']}", ua)
            assert status == 302
            assert location.startswith(base)
            variant = "a" if "buy=30" in location else "b"
            served[variant] = served.get(variant, 0) + 1
            follow(location)
        # the destination got every click id and posted its events as the page loaded
        assert len(site.landed) == 3 and all(len(c) == 22 for c in site.landed)
        assert len(set(site.landed)) == 3
        assert all(status == 201 for status, _body in site.posted), site.posted
        purchases = [b["event"] for _s, b in site.posted if b["event"]["name"] == "purchase"]
        assert len(purchases) == served.get("a", 0)

        def stats_show_them() -> Any:
            _s, body = api.get(f"/api/links/{link['id']}/stats")
            conv = body["conversions"]
            return body if conv["by_name"].get("signup", {}).get("conversions") == 3 else None

        body = wait_for(stats_show_them, 1.0)
        assert body, "the conversions were not in the stats within a second"
        assert time.time() - started < 10
        conv = body["conversions"]
        assert body["totals"]["humans"] == 3
        assert conv["conversions"] == 3 + len(purchases)
        assert conv["by_name"]["signup"]["rate_per_click"] == 1.0
        assert conv["rate_per_click"] == 1.0
        assert conv["by_source"] == {"api": 3 + len(purchases)}
        assert conv["by_click_source"] == {"direct": 3 + len(purchases)}  # no Referer
        routes = {r["route"]: r for r in body["routes"]}
        assert set(routes) == {"default", "variant:a", "variant:b"}
        for name in ("a", "b"):
            assert routes[f"variant:{name}"]["humans"] == served.get(name, 0)
            assert routes[f"variant:{name}"]["conversions"] == served.get(name, 0) * (
                2 if name == "a" else 1
            )
        if purchases:
            assert conv["revenue"] == {"EUR": 30.0 * len(purchases)}
        assert conv["lag"]["p50_s"] is not None and 0 <= conv["lag"]["p50_s"] < 60
        assert conv["lag"]["buckets"]["lt_1m"] == conv["conversions"]
        # live shows the conversions beside the clicks
        _s, live = api.get("/api/live")
        assert live["overall"]["conversions"]["last_60s"] >= 3 + len(purchases)
        mine = [e for e in live["links"] if e["id"] == link["id"]]
        assert mine and mine[0]["conversions"]["last_60s"] == 3 + len(purchases)
        # ... and so does the SSE stream
        event = first_sse_event(server.admin_port)
        assert event["overall"]["conversions"]["last_60s"] >= 3 + len(purchases)
        # per variant: the route cut and the A/B test
        for name, n in served.items():
            _s, cut = api.get(f"/api/links/{link['id']}/stats?route=variant:{name}")
            assert cut["totals"]["humans"] == n
            assert cut["conversions"]["by_name"]["signup"]["conversions"] == n
        _s, ab = api.get(f"/api/links/{link['id']}/abtest?goal=purchase")
        arms = {v["name"]: v for v in ab["variants"]}
        assert arms["a"]["converted_visitors"] == arms["a"]["visitors"] == served.get("a", 0)
        assert arms["b"]["converted_visitors"] == 0
        assert ab["winner"] is None
        assert "more visitors" in ab["reason"] or "no visitors yet" in ab["reason"]
        # by campaign
        _s, groups = api.get("/api/stats?group_by=campaign")
        spring = [g for g in groups["groups"] if g["key"] == "spring"][0]
        assert spring["conversions"]["by_name"]["signup"]["conversions"] == 3
    finally:
        site.close()


# --- POST /api/events ----------------------------------------------------------------------


def _clicked(api: Api, server: ServerProcess, **fields: Any) -> tuple[dict[str, Any], str]:
    link = make_link(api, click_ids=True, **fields)
    status, location = edge_click(server.edge_port, f"/{link['slug']}", DESKTOP)
    assert status == 302
    return link, click_id_of(location)


def test_the_same_event_id_is_recorded_once(api: Api, server: ServerProcess) -> None:
    _link, cid = _clicked(api, server)
    event = {"click_id": cid, "name": "Purchase", "value": 19.9, "currency": "usd"}
    status, first = api.post("/api/events", {**event, "event_id": "o-1"})
    assert status == 201 and first["created"] is True
    assert first["event"]["name"] == "purchase" and first["event"]["currency"] == "USD"
    assert first["event"]["value"] == 19.9 and first["event"]["source"] == "api"
    status, again = api.post("/api/events", {**event, "event_id": "o-1", "value": 99})
    assert status == 200 and again["created"] is False
    assert again["event"] == first["event"]


def _metric(api: Api, name: str, labels: str) -> float:
    _s, _h, text = api.call("GET", "/metrics", token=None)
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not on /metrics")


def test_unknown_and_expired_click_ids_are_refused_and_counted(
    api: Api, server: ServerProcess
) -> None:
    unknown = _metric(api, "linkedge_events_rejected_total", 'reason="unknown_click"')
    outside = _metric(api, "linkedge_events_rejected_total", 'reason="outside_window"')
    status, body = api.post("/api/events", {"click_id": "AAAAAAAAAAAAAAAAAAAAAA", "name": "lead"})
    assert status == 404
    assert_error(body, "unknown_click", "click_id")
    _link, cid = _clicked(api, server, attribution_window_s=60)
    later = int(time.time() * 1000) + 120_000
    status, body = api.post(
        "/api/events", {"click_id": cid, "name": "lead", "occurred_at": later - 90_000}
    )
    assert status == 201, body
    status, body = api.post("/api/events", {"click_id": cid, "name": "lead", "occurred_at": later})
    assert status == 422
    assert_error(body, "outside_attribution_window", "click_id")
    assert "after its click" in body["error"]["message"]
    assert _metric(api, "linkedge_events_rejected_total", 'reason="unknown_click"') == unknown + 1
    assert _metric(api, "linkedge_events_rejected_total", 'reason="outside_window"') == outside + 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "lead"}, "click_id"),
        ({"click_id": "short", "name": "lead"}, "click_id"),
        ({"click_id": "AAAAAAAAAAAAAAAAAAAAAA"}, "name"),
        ({"click_id": "AAAAAAAAAAAAAAAAAAAAAA", "name": "x", "value": 3}, "currency"),
        (
            {"click_id": "AAAAAAAAAAAAAAAAAAAAAA", "name": "x", "value": -1, "currency": "EUR"},
            "value",
        ),
        ({"click_id": "AAAAAAAAAAAAAAAAAAAAAA", "name": "x", "colour": 1}, "colour"),
    ],
)
def test_bad_events_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    status, answer = api.post("/api/events", body)
    assert status == 400
    assert_error(answer, "invalid_field", field)


# --- scopes --------------------------------------------------------------------------------


def test_token_scopes_are_enforced_on_every_route(api: Api, server: ServerProcess) -> None:
    status, made = api.post("/api/tokens", {"name": "shop", "scopes": ["events"]})
    assert status == 201 and made["token"]["scopes"] == ["events"]
    shop = Api(server.admin_port, made["secret"])
    _link, cid = _clicked(api, server)
    status, _b = shop.post("/api/events", {"click_id": cid, "name": "lead"})
    assert status == 201
    for method, path in (("GET", "/api/links"), ("POST", "/api/links"), ("GET", "/api/tokens")):
        status, _h, body = shop.call(method, path, {"url": "https://x.example/"})
        assert status == 403, (method, path)
        assert_error(body, "forbidden", "scopes")
        assert "needs" in body["error"]["message"]
    # read: every GET but tokens; links: read + link writes; made with the CLI too
    out = cli("token", "create", "ro", "--scopes", "read", db=server.db).stdout
    reader = Api(server.admin_port, out.split()[-1])
    assert reader.get("/api/links")[0] == 200
    assert reader.post("/api/links", {"url": "https://x.example/"})[0] == 403
    assert reader.post("/api/events", {"click_id": cid, "name": "lead"})[0] == 403
    assert reader.get("/api/tokens")[0] == 403
    status, made = api.post("/api/tokens", {"name": "editor", "scopes": "links"})
    editor = Api(server.admin_port, made["secret"])
    assert editor.post("/api/links", {"url": "https://x.example/"})[0] == 201
    assert editor.get("/api/links")[0] == 200  # links includes read
    assert editor.post("/api/domains", {"host": "x.example"})[0] == 403
    status, body = api.post("/api/tokens", {"name": "bad", "scopes": ["everything"]})
    assert status == 400
    assert_error(body, "invalid_field", "scopes")


# --- postback and pixel --------------------------------------------------------------------


def test_a_postback_needs_the_domains_secret(api: Api, server: ServerProcess) -> None:
    status, made = api.post("/api/domains/localhost/postback_secret", {})
    assert status == 201 and made["secret"].startswith("pb_")
    _link, cid = _clicked(api, server)
    base = f"/api/postback?domain=localhost&click_id={cid}&name=sale&value=12.5&currency=EUR"
    status, body = api.get(base + "&secret=wrong", token=None)
    assert status == 401
    assert_error(body, "unauthorized")
    status, body = api.get(base + f"&secret={made['secret']}&event_id=tx-9", token=None)
    assert status == 201, body
    assert body["event"]["source"] == "postback" and body["event"]["value"] == 12.5
    status, body = api.get(base + f"&secret={made['secret']}&event_id=tx-9", token=None)
    assert status == 200 and body["created"] is False
    assert api.delete("/api/domains/localhost/postback_secret")[0] == 204
    status, _b = api.get(base + f"&secret={made['secret']}&event_id=tx-10", token=None)
    assert status == 401


def test_the_pixel_answers_a_gif_and_records_an_event_not_a_click(
    api: Api, server: ServerProcess
) -> None:
    link, cid = _clicked(api, server)
    wait_for(lambda: api.get(f"/api/links/{link['id']}/stats")[1]["totals"]["clicks"] == 1)
    clicks_before = api.get("/api/live")[1]["overall"]["since_start"]["clicks"]
    conn = http.client.HTTPConnection("127.0.0.1", server.edge_port, timeout=5)
    conn.request(
        "GET", f"/_lc/e?c={cid}&n=view", headers={"Host": "anything.example", "User-Agent": "x"}
    )
    resp = conn.getresponse()
    gif = resp.read()
    assert resp.status == 200 and gif.startswith(b"GIF89a")
    assert resp.getheader("Content-Type") == "image/gif"
    assert resp.getheader("Access-Control-Allow-Origin") == "*"
    assert resp.getheader("Cache-Control") == "no-store"
    assert resp.getheader("Location") is None
    conn.close()

    def recorded() -> Any:
        _s, body = api.get(f"/api/links/{link['id']}/stats")
        return body if body["conversions"]["by_source"].get("pixel") == 1 else None

    body = wait_for(recorded, 3.0)
    assert body, "the pixel's event was not recorded"
    assert body["totals"]["clicks"] == 1  # the redirect, not the pixel
    live = api.get("/api/live")[1]["overall"]
    assert live["since_start"]["clicks"] == clicks_before  # never a click anywhere
    assert live["since_start"]["conversions"] >= 1
    assert body["conversions"]["revenue"] == {}


def test_segments_of_a_link(api: Api, server: ServerProcess) -> None:
    link = make_link(api, click_ids=True)
    locations = [edge_click(server.edge_port, f"/{link['slug']}", DESKTOP)[1] for _ in range(2)]
    edge_click(server.edge_port, f"/{link['slug']}", IPHONE)
    api.post("/api/events", {"click_id": click_id_of(locations[0]), "name": "lead"})

    def ready() -> Any:
        _s, body = api.get(f"/api/links/{link['id']}/segments")
        return body if body["segments"]["repeat_visitors"]["visitors"] == 1 else None

    body = wait_for(ready, 5.0)
    assert body, "segments never showed the repeat visitor"
    seg = body["segments"]
    assert body["launch"]["from"] == "first_human_click"
    assert seg["fast_clickers"]["clicks"] == 3 and seg["fast_clickers"]["visitors"] == 2
    assert seg["repeat_visitors"] == {
        "visitors": 1,
        "converted_visitors": 1,
        "conversion_rate": 1.0,
    }
    assert seg["one_time_visitors"]["visitors"] == 1
    assert seg["one_time_visitors"]["converted_visitors"] == 0
    assert seg["delayed_converters"]["visitors"] == 0


def test_event_send_from_the_cli(api: Api, server: ServerProcess) -> None:
    link, cid = _clicked(api, server)
    wait_for(lambda: api.get(f"/api/links/{link['id']}/stats")[1]["totals"]["clicks"] == 1)
    out = cli(
        "event", "send", "--click-id", cid, "--name", "lead", "--event-id", "cli-1", db=server.db
    )
    event = json.loads(out.stdout)
    assert event["link_id"] == link["id"] and event["source"] == "api"
    bad = cli("event", "send", "--click-id", "nope", "--name", "lead", db=server.db, check=False)
    assert bad.returncode != 0 and "click_id" in bad.stderr and "Traceback" not in bad.stderr
