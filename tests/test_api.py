"""admin/api.py over real sockets: links, bulk, listing and pagination, domains, UTM
allow-lists, tokens and auth, and the HTTP side (bodies, 100-continue, chunked,
keep-alive, errors) against one real `linkedge serve` process per module."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geo import bots
from tests.conftest import ServerProcess, cli, raw_request, read_responses

# A token the server stores at start (LINKEDGE_ADMIN_TOKEN), so tests know it up front.
TOKEN = "test-admin-token-0123456789abcdef"
JSON = {"Content-Type": "application/json"}


class Api:
    """A tiny admin API client: one HTTP/1.1 connection per request, JSON decoded."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        sent = dict(headers or {})
        use = self.token if token == "default" else token
        if use is not None:
            sent["Authorization"] = f"Bearer {use}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            raw = resp.read()
            got = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if got.get("content-type", "").startswith("application/json"):
            return resp.status, got, json.loads(raw)
        return resp.status, got, raw.decode()

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, _h, body = self.call("GET", path, **kw)
        return status, body

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        status, _h, data = self.call("POST", path, body, **kw)
        return status, data

    def patch(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        status, _h, data = self.call("PATCH", path, body, **kw)
        return status, data

    def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, _h, data = self.call("DELETE", path, **kw)
        return status, data


def edge_get(port: int, path: str, host: str = "localhost", ua: str = "test/1") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": ua})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location") or ""
    finally:
        conn.close()


def assert_error(body: Any, code: str, field: str | None = None) -> None:
    """Every error has exactly this shape."""
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message", "field"} <= set(error)
    assert error["code"] == code, error
    assert error["field"] == field, error
    assert error["message"] and "Traceback" not in error["message"]


def start_server(db: Path, *args: str) -> ServerProcess:
    return ServerProcess(db, *args, env={"LINKEDGE_ADMIN_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("api") / "linkedge.db")
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Api:
    return Api(server.admin_port)


# --- auth ----------------------------------------------------------------------------------


def test_every_api_route_needs_a_token(api: Api) -> None:
    for method, path in [
        ("GET", "/api/links"),
        ("POST", "/api/links"),
        ("GET", "/api/live"),
        ("GET", "/api/stats"),
        ("GET", "/api/does-not-exist"),  # 401 before 404: no route discovery without a token
    ]:
        status, headers, body = api.call(method, path, token=None)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Bearer")
        assert_error(body, "unauthorized")


@pytest.mark.parametrize(
    "header", ["Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", TOKEN, f"Bearer {TOKEN}x"]
)
def test_bad_tokens_are_refused(api: Api, header: str) -> None:
    status, _h, body = api.call("GET", "/api/links", token=None, headers={"Authorization": header})
    assert status == 401
    assert_error(body, "unauthorized")


def test_healthz_and_metrics_need_no_token_on_loopback(api: Api) -> None:
    status, health = api.get("/healthz", token=None)
    assert status == 200 and health["status"] == "ok"
    assert health["bot_list"] == bots.list_info()  # the crawler list's name and version
    status, _h, text = api.call("GET", "/metrics", token=None)
    assert status == 200 and "linkedge_links_loaded" in text
    info = bots.list_info()
    assert f'linkedge_bot_list_info{{name="crawlerdetect",version="{info["version"]}",' in text


def test_token_created_used_and_revoked_by_api_and_cli(api: Api, server: ServerProcess) -> None:
    status, created = api.post("/api/tokens", {"name": "ci"})
    assert status == 201
    secret = created["secret"]
    assert secret.startswith("le_") and created["token"]["name"] == "ci"
    assert api.get("/api/links", token=secret)[0] == 200
    status, tokens = api.get("/api/tokens")
    listed = {t["id"]: t for t in tokens["tokens"]}
    assert secret not in json.dumps(tokens)  # only prefixes, never secrets or hashes
    assert listed[created["token"]["id"]]["prefix"] == secret[:7]
    # Revoked through the API: refused at once.
    status, revoked = api.delete(f"/api/tokens/{created['token']['id']}")
    assert status == 200 and revoked["revoked_at"]
    assert api.get("/api/links", token=secret)[0] == 401
    # Created and revoked with the CLI on the SQLite file: the server follows within ~2 s.
    out = cli("token", "create", "script", "--json", db=server.db)
    made = json.loads(out.stdout)
    deadline = time.monotonic() + 5
    while api.get("/api/links", token=made["secret"])[0] != 200:
        assert time.monotonic() < deadline, "a CLI-created token was not accepted"
        time.sleep(0.2)
    cli("token", "revoke", str(made["token"]["id"]), db=server.db)
    deadline = time.monotonic() + 5
    while api.get("/api/links", token=made["secret"])[0] != 401:
        assert time.monotonic() < deadline, "a CLI-revoked token still works"
        time.sleep(0.2)
    listing = cli("token", "list", db=server.db).stdout
    assert "script" in listing and "ci" in listing


def test_first_start_prints_a_token_once(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    first = ServerProcess(db)
    try:
        lines = [line for line in first.lines if "admin token (shown once)" in line]
        assert len(lines) == 1
        token = lines[0].rsplit(" ", 1)[1].strip()
        assert token.startswith("le_")
        assert Api(first.admin_port, token).get("/api/links")[0] == 200
    finally:
        first.stop()
    second = ServerProcess(db)
    try:
        assert not any("admin token" in line for line in second.lines)
        assert Api(second.admin_port, token).get("/api/links")[0] == 200
    finally:
        second.stop()


def test_a_short_supplied_token_refuses_to_start(tmp_path: Path) -> None:
    """A token too short to be safe is not silently replaced by a generated one: the
    server refuses to start and says why, before anything else runs."""
    result = cli(
        "serve",
        "--edge",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        db=tmp_path / "x.db",
        check=False,
        env={"LINKEDGE_ADMIN_TOKEN": "short"},
    )
    assert result.returncode == 2
    assert "LINKEDGE_ADMIN_TOKEN must be at least 24" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_token_made_with_the_cli_works_on_the_very_next_request(
    api: Api, server: ServerProcess
) -> None:
    made = cli("token", "create", "ci-now", db=server.db)
    secret = made.stdout.strip()
    assert Api(server.admin_port, secret).get("/api/links")[0] == 200  # no wait
    # random tokens are refused without a database look-up each (bounded, remembered)
    for i in range(50):
        assert Api(server.admin_port, f"le_random_{i:040d}").get("/api/links")[0] == 401


# --- links ---------------------------------------------------------------------------------


def test_create_link_returns_201_with_short_url(api: Api, server: ServerProcess) -> None:
    status, headers, link = api.call(
        "POST",
        "/api/links",
        {
            "url": "https://example.com/spring",
            "slug": "create-1",
            "title": "Spring",
            "tags": ["Launch", "email"],
            "campaign": "spring-2025",
            "utm_source": "  Newsletter ",
            "utm_medium": "email",
            "status": 307,
            "expires_at": "2030-01-01T00:00:00Z",
        },
    )
    assert status == 201
    assert headers["location"] == f"/api/links/{link['id']}"
    assert link["short_url"] == "https://localhost/create-1"
    assert link["utm_source"] == "newsletter"  # trimmed and lowercased
    assert link["tags"] == ["launch", "email"]
    assert link["expires_at"] == "2030-01-01T00:00:00Z"
    assert link["created_at"].endswith("Z")
    status, location = edge_get(server.edge_port, "/create-1")
    assert status == 307
    assert location == "https://example.com/spring?utm_source=newsletter&utm_medium=email"


def test_generated_slug_and_expiry_as_unix_ms_or_relative(api: Api) -> None:
    status, link = api.post(
        "/api/links", {"url": "https://example.com/x", "expires_at": 1893456000000}
    )
    assert status == 201 and len(link["slug"]) == 7
    assert link["expires_at"] == "2030-01-01T00:00:00Z"
    status, link = api.post("/api/links", {"url": "https://example.com/x", "expires_at": "+7d"})
    assert status == 201
    expires = time.mktime(time.strptime(link["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - (time.time() + 7 * 86400)) < 60


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"slug": "no-url"}, 400, "invalid_field", "url"),
        ({"url": "javascript:alert(1)"}, 422, "invalid_url", "url"),
        ({"url": "/relative"}, 422, "invalid_url", "url"),
        ({"url": "https://e.com", "nope": 1}, 400, "invalid_field", "nope"),
        ({"url": "https://e.com", "tags": "a" * 3000}, 400, "invalid_field", "tags"),
        ({"url": "https://e.com", "tags": [1]}, 400, "invalid_field", "tags"),
        ({"url": "https://e.com", "status": 200}, 400, "invalid_field", "status"),
        ({"url": "https://e.com", "slug": "bad slug"}, 400, "invalid_field", "slug"),
        ({"url": "https://e.com", "slug": 5}, 400, "invalid_field", "slug"),
        ({"url": "https://e.com", "expires_at": "soon"}, 400, "invalid_field", "expires_at"),
        ({"url": "https://e.com", "domain": "nowhere.example"}, 404, "not_found", "domain"),
        ([1, 2], 400, "invalid_json", None),
    ],
)
def test_create_link_errors_name_the_field(
    api: Api, body: Any, status: int, code: str, field: str | None
) -> None:
    got, error = api.post("/api/links", body)
    assert got == status
    assert_error(error, code, field)


def test_slug_taken_is_409(api: Api) -> None:
    assert api.post("/api/links", {"url": "https://e.com/1", "slug": "taken"})[0] == 201
    status, error = api.post("/api/links", {"url": "https://e.com/2", "slug": "taken"})
    assert status == 409
    assert_error(error, "conflict", "slug")


def test_patch_destination_is_served_on_the_very_next_request(
    api: Api, server: ServerProcess
) -> None:
    status, link = api.post("/api/links", {"url": "https://example.com/old", "slug": "live-change"})
    assert status == 201
    assert edge_get(server.edge_port, "/live-change")[1] == "https://example.com/old"
    for i in range(5):
        url = f"https://example.com/new-{i}"
        status, changed = api.patch(f"/api/links/{link['id']}", {"url": url})
        assert status == 200 and changed["url"] == url
        assert edge_get(server.edge_port, "/live-change")[1] == url  # no sleep, no retry
    status, changed = api.patch("/api/links/localhost/live-change", {"disabled": True})
    assert status == 200 and changed["disabled"] is True
    assert edge_get(server.edge_port, "/live-change")[0] == 410


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({}, "invalid_field", None),
        ({"slug": "other"}, "invalid_field", "slug"),
        ({"url": None}, "invalid_url", "url"),
        ({"archived": "yes"}, "invalid_field", "archived"),
        ({"what": 1}, "invalid_field", "what"),
    ],
)
def test_patch_errors(api: Api, body: dict[str, Any], code: str, field: str | None) -> None:
    _, link = api.post("/api/links", {"url": "https://example.com/"})
    status, error = api.patch(f"/api/links/{link['id']}", body)
    assert status == (422 if code == "invalid_url" else 400)  # a URL refused is 422
    assert_error(error, code, field)


def test_get_by_id_and_by_domain_slug(api: Api) -> None:
    _, link = api.post("/api/links", {"url": "https://example.com/", "slug": "lookup"})
    assert api.get(f"/api/links/{link['id']}") == (200, link)
    assert api.get("/api/links/localhost/lookup") == (200, link)
    status, error = api.get("/api/links/999999")
    assert status == 404
    assert_error(error, "not_found")
    status, error = api.get("/api/links/localhost/nope")
    assert status == 404
    assert_error(error, "not_found", "slug")
    status, error = api.get("/api/links/unknown.example/lookup")
    assert status == 404
    assert_error(error, "not_found", "domain")


def test_delete_archives_keeps_the_slug_and_purge_frees_it(api: Api, server: ServerProcess) -> None:
    _, link = api.post("/api/links", {"url": "https://example.com/", "slug": "to-archive"})
    assert edge_get(server.edge_port, "/to-archive")[0] == 302
    status, archived = api.delete("/api/links/localhost/to-archive")
    assert status == 200 and archived["archived_at"]
    assert edge_get(server.edge_port, "/to-archive")[0] == 404
    assert api.post("/api/links", {"url": "https://e.com", "slug": "to-archive"})[0] == 409
    # An archived link cannot be changed until restored; PATCH archived=false restores it.
    assert api.patch(f"/api/links/{link['id']}", {"title": "x"})[0] == 409
    status, restored = api.patch(f"/api/links/{link['id']}", {"archived": False, "title": "x"})
    assert status == 200 and restored["archived_at"] is None and restored["title"] == "x"
    assert edge_get(server.edge_port, "/to-archive")[0] == 302
    status, _h, body = api.call("DELETE", f"/api/links/{link['id']}?purge=true")
    assert status == 204 and body == ""
    assert api.get(f"/api/links/{link['id']}")[0] == 404
    assert api.post("/api/links", {"url": "https://e.com", "slug": "to-archive"})[0] == 201


# --- bulk ----------------------------------------------------------------------------------


def test_bulk_creates_all(api: Api, server: ServerProcess) -> None:
    items = [
        {"url": f"https://example.com/{i}", "slug": f"bulk-{i}", "campaign": "bulk"}
        for i in range(5)
    ]
    status, body = api.post("/api/links/bulk", {"links": items})
    assert status == 201
    assert [link["slug"] for link in body["links"]] == [f"bulk-{i}" for i in range(5)]
    assert edge_get(server.edge_port, "/bulk-4")[1] == "https://example.com/4"


def test_bulk_is_all_or_nothing_with_per_item_errors(api: Api) -> None:
    items = [
        {"url": "https://example.com/a", "slug": "bulk-fail-a", "campaign": "bulk-fail"},
        {"url": "ftp://example.com/b", "campaign": "bulk-fail"},
        {"url": "https://example.com/c", "slug": "bulk-fail-a", "campaign": "bulk-fail"},
        {"url": "https://example.com/d", "bogus": True},
    ]
    status, body = api.post("/api/links/bulk", {"links": items})
    assert status == 400  # mixed statuses (422, 409, 400)
    assert_error(body, "bulk_failed", "links")
    errors = {e["index"]: e for e in body["error"]["items"]}
    assert sorted(errors) == [1, 2, 3]
    assert (errors[1]["status"], errors[1]["code"], errors[1]["field"]) == (
        422,
        "invalid_url",
        "url",
    )
    assert (errors[2]["status"], errors[2]["field"]) == (409, "slug")  # taken by item 0
    assert (errors[3]["status"], errors[3]["field"]) == (400, "bogus")
    status, listed = api.get("/api/links?campaign=bulk-fail")
    assert status == 200 and listed["links"] == []  # nothing was created
    status, body = api.post("/api/links/bulk", {"links": [items[1]]})
    assert status == 422  # one kind of error: its status


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"links": []}, "links"),
        ({"links": {}}, "links"),
        ({"links": [{"url": "https://e.com"}] * 1001}, "links"),
        ({"items": []}, "items"),  # an unknown field is named before the missing one
    ],
)
def test_bulk_refuses_bad_envelopes(api: Api, body: dict[str, Any], field: str) -> None:
    status, error = api.post("/api/links/bulk", body)
    assert status == 400
    assert error["error"]["field"] == field


# --- listing -------------------------------------------------------------------------------


def test_list_paginates_with_a_stable_cursor(api: Api) -> None:
    made = []
    for i in range(7):
        _, link = api.post("/api/links", {"url": f"https://e.com/{i}", "campaign": "paging"})
        made.append(link["id"])
    seen: list[int] = []
    path = "/api/links?campaign=paging&limit=3"
    pages = 0
    while True:
        status, page = api.get(path)
        assert status == 200
        pages += 1
        seen += [link["id"] for link in page["links"]]
        # A link created meanwhile does not shift the pages that follow.
        api.post("/api/links", {"url": "https://e.com/late", "campaign": "paging-late"})
        if page["next_cursor"] is None:
            break
        path = f"/api/links?campaign=paging&limit=3&cursor={page['next_cursor']}"
    assert pages == 3
    assert seen == sorted(made, reverse=True)
    status, error = api.get("/api/links?cursor=garbage")
    assert status == 400
    assert_error(error, "invalid_field", "cursor")
    assert api.get("/api/links?limit=0")[0] == 400
    assert api.get("/api/links?limit=1001")[0] == 400


def test_list_filters(api: Api) -> None:
    api.post("/api/domains", {"host": "filter.example"})
    api.post(
        "/api/links",
        {
            "url": "https://example.com/",
            "slug": "flt-1",
            "domain": "filter.example",
            "tags": ["alpha"],
            "campaign": "filters",
            "utm_source": "twitter",
            "title": "Needle in a haystack",
        },
    )
    api.post("/api/links", {"url": "https://example.com/", "slug": "flt-2", "campaign": "filters"})

    def slugs(query: str) -> list[str]:
        status, page = api.get("/api/links?" + query)
        assert status == 200, page
        return sorted(link["slug"] for link in page["links"])

    assert slugs("campaign=filters") == ["flt-1", "flt-2"]
    assert slugs("domain=FILTER.example") == ["flt-1"]
    assert slugs("tag=alpha&campaign=filters") == ["flt-1"]
    assert slugs("utm_source=Twitter&campaign=filters") == ["flt-1"]
    assert slugs("q=needle") == ["flt-1"]
    assert slugs("created_from=-1h&campaign=filters") == ["flt-1", "flt-2"]
    assert slugs("created_to=-1h&campaign=filters") == []
    api.delete("/api/links/localhost/flt-2")
    assert slugs("campaign=filters") == ["flt-1"]
    assert slugs("campaign=filters&archived=true") == ["flt-2"]
    assert slugs("campaign=filters&archived=any") == ["flt-1", "flt-2"]
    status, error = api.get("/api/links?archived=maybe")
    assert_error(error, "invalid_field", "archived")
    status, error = api.get("/api/links?colour=red")
    assert status == 400
    assert_error(error, "invalid_field", "colour")


# --- domains -------------------------------------------------------------------------------


def test_domains_crud_and_fallbacks_served_at_once(api: Api, server: ServerProcess) -> None:
    status, headers, domain = api.call("POST", "/api/domains", {"host": "Go.Example.com"})
    assert status == 201 and domain["host"] == "go.example.com"
    assert headers["location"] == "/api/domains/go.example.com"
    assert domain["default"] is False and domain["created_at"].endswith("Z")
    status, error = api.post("/api/domains", {"host": "go.example.com"})
    assert status == 409
    assert_error(error, "conflict", "host")
    status, changed = api.patch(
        "/api/domains/go.example.com",
        {"fallback_url": "https://example.com/404", "root_url": "https://example.com/"},
    )
    assert status == 200 and changed["fallback_url"] == "https://example.com/404"
    assert edge_get(server.edge_port, "/unknown", host="go.example.com") == (
        302,
        "https://example.com/404",
    )
    assert edge_get(server.edge_port, "/", host="go.example.com")[1] == "https://example.com/"
    assert api.get("/api/domains/go.example.com") == (200, changed)
    status, listed = api.get("/api/domains")
    assert "go.example.com" in [d["host"] for d in listed["domains"]]
    api.post("/api/links", {"url": "https://e.com", "slug": "x", "domain": "go.example.com"})
    status, error = api.delete("/api/domains/go.example.com")
    assert status == 409  # still has a link
    status, _ = api.post("/api/domains", {"host": "empty.example"})
    assert api.delete("/api/domains/empty.example")[0] == 204
    assert api.get("/api/domains/empty.example")[0] == 404
    status, error = api.post("/api/domains", {"host": "x.example", "default": "yes"})
    assert_error(error, "invalid_field", "default")
    status, error = api.patch("/api/domains/go.example.com", {"host": "y.example"})
    assert_error(error, "invalid_field", "host")
    status, error = api.post("/api/domains", {"host": "https://bad/"})
    assert status == 400
    assert_error(error, "invalid_field", "host")  # issue 11 item 10: the field is `host`


@pytest.mark.parametrize("host", ["[b\r\nSet-Cookie: x=1]", "[]", "[::1]junk", "[::1"])
def test_a_domain_host_cannot_inject_headers(api: Api, host: str) -> None:
    """Issue 9 defect 6: a host starting with "[" was kept unchecked up to "]", stored,
    and echoed into the 201's Location header."""
    status, headers, error = api.call("POST", "/api/domains", {"host": host})
    assert status == 400 and "set-cookie" not in headers
    assert_error(error, "invalid_field", "host")
    assert host not in [d["host"] for d in api.get("/api/domains")[1]["domains"]]


def test_an_ipv6_domain_is_stored_canonical_and_served(api: Api, server: ServerProcess) -> None:
    status, headers, domain = api.call("POST", "/api/domains", {"host": "[0:0::1]:8080"})
    assert status == 201 and domain["host"] == "[::1]"
    assert headers["location"] == "/api/domains/[::1]"
    api.post("/api/links", {"url": "https://example.com/v6", "slug": "v6", "domain": "[::1]"})
    assert edge_get(server.edge_port, "/v6", host="[::1]:8080") == (302, "https://example.com/v6")
    assert edge_get(server.edge_port, "/v6", host="[::1")[0] == 404  # malformed: no domain


# --- UTM allow-lists -----------------------------------------------------------------------


def test_utm_allow_lists_make_other_values_a_400(api: Api, server: ServerProcess) -> None:
    try:
        status, allowed = api.call(
            "PUT", "/api/utm/allow/source", {"values": ["Newsletter", "twitter"]}
        )[::2]
        assert status == 200
        assert allowed == {"field": "utm_source", "values": ["newsletter", "twitter"]}
        status, error = api.post("/api/links", {"url": "https://e.com", "utm_source": "facebook"})
        assert status == 400
        assert_error(error, "invalid_field", "utm_source")
        assert "newsletter" in error["error"]["message"]
        assert (
            api.post("/api/links", {"url": "https://e.com", "utm_source": " NEWSLETTER"})[0] == 201
        )
        cli("utm", "allow", "medium", "email,social", db=server.db)
        status, every = api.get("/api/utm/allow")
        assert every["utm_medium"] == ["email", "social"]
        assert every["utm_term"] == []
        assert api.get("/api/utm/allow/utm_medium")[1]["values"] == ["email", "social"]
        status, error = api.get("/api/utm/allow/colour")
        assert status == 404
        assert_error(error, "not_found", "field")
        status, error = api.call("PUT", "/api/utm/allow/source", {"values": "a,b"})[::2]
        assert_error(error, "invalid_field", "values")
    finally:
        assert api.delete("/api/utm/allow/source")[0] == 204
        cli("utm", "clear", "medium", db=server.db)
    assert api.post("/api/links", {"url": "https://e.com", "utm_source": "facebook"})[0] == 201


# --- HTTP ----------------------------------------------------------------------------------


def _raw(port: int, data: bytes) -> bytes:
    return raw_request(port, data)


def _auth() -> bytes:
    return f"Authorization: Bearer {TOKEN}\r\n".encode()


def test_wrong_method_is_405_with_allow(api: Api) -> None:
    status, headers, body = api.call("PUT", "/api/links")
    assert status == 405 and headers["allow"] == "GET, POST"
    assert_error(body, "method_not_allowed")
    status, headers, _ = api.call("GET", "/api/links/bulk")
    assert status == 405 and headers["allow"] == "POST"


def test_unknown_route_is_404(api: Api) -> None:
    for path in ("/api/nope", "/api/links/1/2/3/4", "/nothing"):
        status, body = api.get(path)
        assert status == 404
        assert_error(body, "not_found")


def test_wrong_content_type_is_415(api: Api) -> None:
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        status, error = api.post(
            "/api/links", b'{"url": "https://e.com"}', headers={"Content-Type": content_type}
        )
        assert status == 415
        assert_error(error, "unsupported_media_type")
    status, _ = api.post(
        "/api/links",
        b'{"url": "https://e.com"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 201


def test_bad_json_is_400(api: Api) -> None:
    for raw in (b'{"url": ', b"\xff\xfe", b"", b"null"):
        status, error = api.post("/api/links", raw)
        assert status == 400
        assert error["error"]["code"] == "invalid_json"


def test_body_over_the_cap_is_413_before_it_is_sent(server: ServerProcess) -> None:
    head = (
        b"POST /api/links HTTP/1.1\r\nHost: a\r\n" + _auth() + b"Content-Type: application/json\r\n"
        b"Content-Length: 2000000\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=5) as sock:
        sock.sendall(head)
        answer = read_responses(sock, 1)[0]
    assert answer.startswith(b"HTTP/1.1 413 ")  # no 100 Continue first
    assert b"Connection: close" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"
    # Chunked: refused as soon as a chunk size takes the body past the cap.
    chunked = (
        b"POST /api/links HTTP/1.1\r\nHost: a\r\n" + _auth() + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b" " * 0x1000 + b"\r\n200000\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=5) as sock:
        sock.sendall(chunked)
        answer = read_responses(sock, 1)[0]
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_unauthenticated_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    """No token: 401 from the head alone, no 100 Continue, closed; the body is never
    buffered (it used to read up to 1 MiB before looking at the token)."""
    head = (
        b"POST /api/links HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: 900000\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=5) as sock:
        sock.sendall(head + b"{" * 1000)
        answer = read_responses(sock, 1)[0]
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert b"Connection: close" in answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "unauthorized"
        sock.settimeout(5)
        assert sock.recv(100) == b""
    wrong = head.replace(b"Host: a\r\n", b"Host: a\r\nAuthorization: Bearer nope\r\n")
    answer = raw_request(server.admin_port, wrong)
    assert answer.startswith(b"HTTP/1.1 401 ")


def test_expect_100_continue_then_body(server: ServerProcess) -> None:
    body = json.dumps({"url": "https://example.com/" + "x" * 2000, "slug": "continued"}).encode()
    head = (
        b"POST /api/links HTTP/1.1\r\nHost: a\r\n" + _auth() + b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=5) as sock:
        sock.sendall(head)
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = read_responses(sock, 1)[0]
    assert answer.startswith(b"HTTP/1.1 201 ")


def test_curl_with_a_large_body_gets_its_answer(server: ServerProcess, tmp_path: Path) -> None:
    import subprocess

    payload = tmp_path / "big.json"
    payload.write_text(json.dumps({"url": "https://example.com/" + "y" * 4000, "slug": "curl-big"}))
    out = subprocess.run(
        [
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json",
            "--data-binary", f"@{payload}", f"http://127.0.0.1:{server.admin_port}/api/links",
        ],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    assert out.stdout == "201"


def test_chunked_body(server: ServerProcess) -> None:
    body = b'{"url": "https://example.com/chunked", "slug": "chunky"}'
    data = (
        b"POST /api/links HTTP/1.1\r\nHost: a\r\n" + _auth() + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"%x\r\n%s\r\n" % (10, body[:10])
        + b"%x\r\n%s\r\n" % (len(body) - 10, body[10:])
        + b"0\r\n\r\n"
    )
    answer = _raw(server.admin_port, data)
    assert answer.startswith(b"HTTP/1.1 201 ")
    assert b'"slug":"chunky"' in answer


def test_keep_alive_pipelined_requests_answer_in_order(server: ServerProcess) -> None:
    one = b"GET /api/links/localhost/%s HTTP/1.1\r\nHost: a\r\n" + _auth() + b"\r\n"
    api = Api(server.admin_port)
    api.post("/api/links", {"url": "https://e.com/p1", "slug": "pipe-1"})
    api.post("/api/links", {"url": "https://e.com/p2", "slug": "pipe-2"})
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=5) as sock:
        sock.sendall(one % b"pipe-1" + one % b"missing" + one % b"pipe-2")
        answers = read_responses(sock, 3)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")  # same connection, later
        later = read_responses(sock, 1)
    assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"404", b"200"]
    assert b"https://e.com/p1" in answers[0] and b"https://e.com/p2" in answers[2]
    assert later[0].startswith(b"HTTP/1.1 200 ")


def test_http10_and_head(server: ServerProcess) -> None:
    answer = _raw(server.admin_port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
    answer = _raw(
        server.admin_port, b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: " in head and rest == b""


def test_malformed_request_is_a_json_400_and_closes(server: ServerProcess) -> None:
    answer = _raw(server.admin_port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "bad_request"
    answer = _raw(server.admin_port, b"\x16\x03\x01\x00\xa5\x01\x00\x00")  # a TLS hello
    assert answer.startswith(b"HTTP/1.1 400 ")


def test_query_values_keep_plus_signs_and_paths_decode_per_segment(api: Api) -> None:
    _, link = api.post("/api/links", {"url": "https://example.com/", "slug": "plus"})
    status, body = api.get(
        f"/api/links/{link['id']}/stats?from=2024-11-01T00:00:00+01:00&to=2024-11-02T00:00:00Z"
    )
    assert status == 200, body
    assert body["from"] == "2024-10-31T23:00:00+00:00"
    status, body = api.get("/api/links/localhost/a%2Fb")  # one segment: slug "a/b"
    assert status == 404
    assert_error(body, "not_found", "slug")
    status, body = api.get("/api/links/localhost/%FF")
    assert status == 400
    assert_error(body, "invalid_field", "path")


def test_metrics_need_a_token_on_a_public_listener(tmp_path: Path) -> None:
    proc = start_server(tmp_path / "public.db", "--admin", "0.0.0.0:0", "--admin-public")
    try:
        api = Api(proc.admin_port)
        status, _h, body = api.call("GET", "/metrics", token=None)
        assert status == 401
        assert_error(body, "unauthorized")
        status, _h, text = api.call("GET", "/metrics")
        assert status == 200 and "linkedge_links_loaded" in text
        assert api.get("/healthz", token=None)[0] == 200
    finally:
        proc.stop()


def test_an_unexpected_error_is_a_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    from admin.http import response_for_error

    response = response_for_error(KeyError("secret internals"))
    body = json.loads(response.body)
    assert response.status == 500
    assert_error(body, "internal")
    assert "secret" not in response.body.decode()
    assert "secret internals" in caplog.text  # logged with its traceback instead


def test_idle_sockets_cannot_lock_out_the_admin_api(server: ServerProcess) -> None:
    """300 connections that send nothing (the cap is 256): /healthz and the API still
    answer at once; the longest idle connections make room."""
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.admin_port), timeout=5))
        for _ in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=5)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
        assert Api(server.admin_port).get("/api/links")[0] == 200
        closed = 0
        for sock in idle:  # the ones evicted were closed by the server
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 300 - 256
    finally:
        for sock in idle:
            sock.close()


# --- hostile numbers (issue 9, defects 5 and 8) ----------------------------------------

HUGE = "9" * 25  # past 2**64
PAST_SQLITE = str(2**63)  # one past SQLite's largest integer


def _cursor(value: str) -> str:
    import base64

    return base64.urlsafe_b64encode(f"id:{value}".encode()).decode().rstrip("=")


def test_out_of_range_times_and_huge_numbers_are_4xx_and_log_nothing(tmp_path: Path) -> None:
    """Defect 5: an out-of-range expires_at was stored, answered 500, and made every
    listing 500 from then on. Defect 8: ids, cursors and counts past 2^63 answered 500
    with a traceback in the log. Each is a 4xx naming the field, and the log stays clean."""
    proc = start_server(tmp_path / "hostile.db")
    try:
        api = Api(proc.admin_port)
        status, link = api.post("/api/links", {"url": "https://e.com/", "slug": "ok"})
        assert status == 201
        for value in (-(10**18), 10**18, 253402300800000, "+3000000d", "-999999999w", HUGE):
            for method, path in (("POST", "/api/links"), ("PATCH", f"/api/links/{link['id']}")):
                body = {"expires_at": value} | (
                    {"url": "https://e.com/"} if method == "POST" else {}
                )
                status, _h, error = api.call(method, path, body)
                assert status == 400, (method, value, error)
                assert_error(error, "invalid_field", "expires_at")
                assert "out of range" in error["error"]["message"]
        status, error = api.post(
            "/api/links/bulk", {"links": [{"url": "https://e.com/", "expires_at": -(10**18)}]}
        )
        assert status == 400 and error["error"]["items"][0]["field"] == "expires_at"
        assert api.post("/api/links", {"url": "https://e.com/", "expires_at": 2**70})[0] == 400
        # the edges of the range are fine, and shown
        status, edge = api.post("/api/links", {"url": "https://e.com/", "expires_at": 0})
        assert status == 201 and edge["expires_at"] == "1970-01-01T00:00:00Z"
        status, edge = api.patch(f"/api/links/{edge['id']}", {"expires_at": "9999-12-31T23:59:59"})
        assert status == 200 and edge["expires_at"] == "9999-12-31T23:59:59Z"
        for query, field in (
            ("from=-999999999w", "from"),
            (f"from={HUGE}", "from"),
            (f"to={'9' * 5000}", "to"),
            ("from=+3000000d", "from"),
        ):
            status, error = api.get(f"/api/links/{link['id']}/stats?{query}")
            assert status == 400, (query, error)
            assert_error(error, "invalid_field", field)
        status, error = api.get(f"/api/links?created_from={HUGE}")
        assert_error(error, "invalid_field", "created_from")
        # ids: a 404 like any id that does not exist; cursors and counts: a 400
        for bad_id in (HUGE, PAST_SQLITE, str(2**63 - 1), "%D9%A1%D9%A2"):  # last: Arabic digits
            for method, path in (
                ("GET", f"/api/links/{bad_id}"),
                ("PATCH", f"/api/links/{bad_id}"),
                ("DELETE", f"/api/links/{bad_id}"),
                ("GET", f"/api/links/{bad_id}/stats"),
                ("GET", f"/api/links/{bad_id}/velocity"),
                ("GET", f"/api/links/{bad_id}/checkpoints"),
                ("DELETE", f"/api/tokens/{bad_id}"),
            ):
                body = {"title": "x"} if method == "PATCH" else None
                status, _h, error = api.call(method, path, body)
                assert status == 404, (method, path, error)
                assert_error(error, "not_found")
        for query, field in (
            (f"cursor={_cursor(HUGE)}", "cursor"),
            (f"cursor={_cursor(PAST_SQLITE)}", "cursor"),
            (f"limit={HUGE}", "limit"),
            (f"limit={'9' * 5000}", "limit"),
        ):
            status, error = api.get(f"/api/links?{query}")
            assert status == 400, (query, error)
            assert_error(error, "invalid_field", field)
        assert api.get(f"/api/stats?top={HUGE}")[0] == 400
        assert api.get(f"/api/live?top={HUGE}")[0] == 400
        # nothing bad was stored: listing and reading every link still work
        status, listing = api.get("/api/links?archived=any")
        assert status == 200 and len(listing["links"]) == 2
        assert api.get(f"/api/links/{link['id']}")[0] == 200
    finally:
        _code, out, err = proc.stop()
    assert "Traceback" not in err and "unexpected error" not in err, err


def test_413_states_the_limit(server: ServerProcess) -> None:
    """Issue 11 item 10: the 413 says how big a body may be, however it was found."""
    for framing in (b"Content-Length: 2000000\r\n", b"Content-Length: " + b"9" * 40 + b"\r\n"):
        head = (
            b"POST /api/links HTTP/1.1\r\nHost: a\r\n" + _auth() + b"Content-Type: "
            b"application/json\r\n" + framing + b"\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.admin_port), timeout=5) as sock:
            sock.sendall(head)
            answer = read_responses(sock, 1)[0]
        assert answer.startswith(b"HTTP/1.1 413 ")
        message = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["message"]
        assert "1048576 bytes" in message, message


def test_case_insensitive_slugs_per_domain(api: Api, server: ServerProcess) -> None:
    """Issue 11 item 11, through the API and the real edge."""
    status, domain = api.post("/api/domains", {"host": "qr.example", "case_insensitive_slugs": 1})
    assert_error(domain, "invalid_field", "case_insensitive_slugs")
    status, domain = api.post(
        "/api/domains", {"host": "qr.example", "case_insensitive_slugs": True}
    )
    assert status == 201 and domain["case_insensitive_slugs"] is True
    api.post("/api/links", {"url": "https://example.com/nl", "slug": "nl", "domain": "qr.example"})
    assert edge_get(server.edge_port, "/NL", host="qr.example") == (302, "https://example.com/nl")
    status, error = api.post(
        "/api/links", {"url": "https://example.com/x", "slug": "Nl", "domain": "qr.example"}
    )
    assert status == 409
    assert_error(error, "conflict", "slug")
    # an exact domain keeps both cases apart, and refuses to fold while they clash
    api.post("/api/domains", {"host": "exact.example"})
    for slug in ("ab", "AB"):
        body = {"url": f"https://example.com/{slug}", "slug": slug, "domain": "exact.example"}
        assert api.post("/api/links", body)[0] == 201
    assert edge_get(server.edge_port, "/Ab", host="exact.example")[0] == 404
    status, error = api.patch("/api/domains/exact.example", {"case_insensitive_slugs": True})
    assert status == 409
    assert_error(error, "conflict", "case_insensitive_slugs")
    status, off = api.patch("/api/domains/qr.example", {"case_insensitive_slugs": False})
    assert status == 200 and off["case_insensitive_slugs"] is False
    assert edge_get(server.edge_port, "/NL", host="qr.example")[0] == 404


def test_a_token_made_by_the_cli_works_at_once(api: Api, server: ServerProcess) -> None:
    """README: `export TOKEN=$(linkedge token create readme)`, then curl right away."""
    status, _ = api.get("/api/links")  # the server's token cache was just refreshed
    assert status == 200
    secret = cli("token", "create", "at-once", db=server.db).stdout.strip()
    assert Api(server.admin_port, secret).get("/api/links")[0] == 200
    assert Api(server.admin_port, "le_not-a-token-at-all").get("/api/links")[0] == 401
