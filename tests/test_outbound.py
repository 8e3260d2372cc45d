"""admin/outbound.py and admin/checks.py against real sockets on 127.0.0.1: address
vetting, redirects, timeouts, HEAD falling back to GET, backoff."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from admin import checks
from admin.outbound import FetchError, _blocked, fetch
from edge import catalog


class Site:
    """/ok 200, /loop redirects to itself, /hop redirects to /ok, /nohead answers HEAD
    405 and GET 200, /gone 404."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, location: str | None = None) -> None:
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                if self.path == "/nohead":
                    self._answer(405)
                else:
                    self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/loop":
                    self._answer(302, "/loop")
                elif self.path == "/hop":
                    self._answer(301, "/ok")
                elif self.path == "/gone":
                    self._answer(404)
                else:
                    self._answer(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "public unicast"),
        ("224.0.0.1", "public unicast"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(
    address: str, why: str | None
) -> None:
    got = _blocked(address)
    assert (got is None) if why is None else (got is not None and why in got)


def test_a_loopback_target_is_refused_unless_allowed(site: Site) -> None:
    with pytest.raises(FetchError) as refused:
        asyncio.run(fetch(site.url("/ok")))
    assert refused.value.kind == "refused" and "allow_private_fetch" in refused.value.message
    answer = asyncio.run(fetch(site.url("/ok"), allow_private=True))
    assert answer.status == 200


def test_redirects_are_followed_a_few_times_only(site: Site) -> None:
    answer = asyncio.run(fetch(site.url("/hop"), max_redirects=3, allow_private=True))
    assert answer.status == 200 and answer.redirects == 1 and answer.url == site.url("/ok")
    with pytest.raises(FetchError) as loop:
        asyncio.run(fetch(site.url("/loop"), max_redirects=3, allow_private=True))
    assert loop.value.kind == "redirects"
    # without max_redirects the redirect itself is the answer
    assert asyncio.run(fetch(site.url("/hop"), allow_private=True)).status == 301


def test_a_silent_server_times_out_and_a_closed_port_fails_to_connect() -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    port = silent.getsockname()[1]
    try:
        with pytest.raises(FetchError) as late:
            asyncio.run(fetch(f"http://127.0.0.1:{port}/", timeout_s=0.3, allow_private=True))
        assert late.value.kind == "timeout"
    finally:
        silent.close()
    with pytest.raises(FetchError) as closed:
        asyncio.run(fetch(f"http://127.0.0.1:{port}/", allow_private=True))
    assert closed.value.kind == "connect"


def test_a_name_that_does_not_resolve_is_a_dns_error() -> None:
    with pytest.raises(FetchError) as dns:
        asyncio.run(fetch("http://no-such-host.invalid/", timeout_s=5))
    assert dns.value.kind == "dns"


def test_a_check_falls_back_to_get_and_says_what_failed(site: Site) -> None:
    def check(path: str) -> dict[str, Any]:
        return asyncio.run(checks.check_url(site.url(path), 2, True, confirm_delay_s=0.01))

    assert check("/nohead") == {"ok": True, "status": 200, "error_kind": None, "error": None}
    assert check("/hop")["ok"] is True
    assert check("/gone") == {"ok": False, "status": 404, "error_kind": "http", "error": "HTTP 404"}
    assert check("/loop")["error_kind"] == "redirects"
    refused = asyncio.run(checks.check_url(site.url("/ok"), 2, False))
    assert refused["ok"] is None and refused["error_kind"] == "refused"


def test_a_failing_destination_backs_off_and_keeps_its_last_good_time(tmp_path: Path) -> None:
    conn = catalog.open_db(str(tmp_path / "c.db"))
    conn.row_factory = sqlite3.Row
    url = "https://example.com/"
    good = {"ok": True, "status": 200, "error_kind": None, "error": None}
    bad = {"ok": False, "status": 500, "error_kind": "http", "error": "HTTP 500"}
    checks.record(conn, url, good, 1000, 10_000)
    waits = []
    for i in range(7):
        now = 20_000 + i * 100_000
        checks.record(conn, url, bad, 1000, now)
        row = checks.check_rows(conn, [url])[0]
        waits.append(row["next_check_at"] - now)
        assert row["last_good_at"] == 10_000 and row["failing_since"] == 20_000
    assert waits == [1000, 2000, 4000, 8000, 16000, 16000, 16000]
    checks.record(conn, url, good, 1000, 900_000)
    row = checks.check_rows(conn, [url])[0]
    assert row["failures"] == 0 and row["failing_since"] is None and row["last_good_at"] == 900_000
    assert checks.due(conn, [url, "https://new.example/"], 900_500, 10) == ["https://new.example/"]
    assert checks.due(conn, [url], 901_000, 10) == [url]


def test_an_oversized_answer_head_is_refused() -> None:
    import socket

    big = socket.socket()
    big.bind(("127.0.0.1", 0))
    big.listen()
    port = big.getsockname()[1]

    def answer() -> None:
        conn, _ = big.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(FetchError) as huge:
            asyncio.run(fetch(f"http://127.0.0.1:{port}/", allow_private=True, timeout_s=5))
        assert huge.value.kind == "protocol" and "limit" in huge.value.message
    finally:
        big.close()
