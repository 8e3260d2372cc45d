"""edge/server.py over real sockets: a real `linkedge serve` process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    ServerProcess,
    cli,
    init_db,
    raw_request,
    read_responses,
    shared_testdata,
)

REPO = Path(__file__).resolve().parents[1]


def add(db: Path, url: str, *args: str) -> dict[str, object]:
    out = cli("link", "add", url, "--json", *args, db=db)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def serve_four_links(db_path: Path) -> ServerProcess:
    add(db_path, "https://example.com/landing?ref=dest", "--slug", "launch")
    add(db_path, "https://example.com/perm", "--slug", "perm", "--status", "301")
    add(db_path, "https://example.com/tmp", "--slug", "tmp", "--status", "307")
    add(db_path, "https://example.com/p8", "--slug", "p8", "--status", "308")
    return ServerProcess(db_path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """One server for the tests that only read: none of them changes a link; a crash on
    any of them fails the tests after it and the exit code checked at the end."""
    proc = serve_four_links(init_db(tmp_path_factory.mktemp("served") / "linkedge.db"))
    yield proc
    if proc.proc.poll() is None:
        code, _out, err = proc.stop()
        assert code == 0, err


@pytest.fixture
def own_server(db_path: Path):
    """A server of the test's own, for a test that changes its links."""
    proc = serve_four_links(db_path)
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


def test_redirect_302_with_location_and_no_cache(served: ServerProcess) -> None:
    resp, body = get(served.edge_port, "/launch")
    assert resp.status == 302
    assert resp.getheader("Location") == "https://example.com/landing?ref=dest"
    assert resp.getheader("Cache-Control") == "private, no-store"
    assert resp.getheader("Content-Length") == "0"
    assert resp.getheader("Date")
    assert body == b""


@pytest.mark.parametrize(("slug", "status"), [("perm", 301), ("tmp", 307), ("p8", 308)])
def test_redirect_status_per_link(served: ServerProcess, slug: str, status: int) -> None:
    resp, _ = get(served.edge_port, "/" + slug)
    assert resp.status == status


def test_head_gets_same_headers_without_body(served: ServerProcess) -> None:
    data = raw_request(served.edge_port, b"HEAD /launch HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 302 Found\r\n")
    assert b"Location: https://example.com/landing?ref=dest\r\n" in data
    assert data.endswith(b"\r\n\r\n")
    data = raw_request(served.edge_port, b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 404")
    assert data.endswith(b"\r\n\r\n")  # Content-Length of the GET body, but no body


def test_trailing_slash_and_query_forwarding(served: ServerProcess) -> None:
    resp, _ = get(served.edge_port, "/launch/")
    assert resp.status == 302
    resp, _ = get(served.edge_port, "/launch?utm_source=mail&ref=visitor")
    # the destination's own ref wins; new parameters are added
    assert resp.getheader("Location") == "https://example.com/landing?ref=dest&utm_source=mail"


def test_unknown_slug_404_and_405_for_other_methods(served: ServerProcess) -> None:
    resp, body = get(served.edge_port, "/missing")
    assert resp.status == 404 and body == b"Not Found\n"
    resp, _ = get(served.edge_port, "/launch", method="POST")
    assert resp.status == 405
    assert resp.getheader("Allow") == "GET, HEAD"
    resp, _ = get(served.edge_port, "/launch", method="DELETE")
    assert resp.status == 405


def test_favicon_404_and_robots_disallow(served: ServerProcess) -> None:
    resp, _ = get(served.edge_port, "/favicon.ico")
    assert resp.status == 404
    resp, body = get(served.edge_port, "/robots.txt")
    assert resp.status == 200 and body == b"User-agent: *\nDisallow: /\n"


def test_pipelined_requests_answer_in_order(served: ServerProcess) -> None:
    reqs = b"".join(
        b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % s for s in (b"launch", b"missing", b"perm", b"tmp")
    )
    with socket.create_connection(("127.0.0.1", served.edge_port)) as sock:
        sock.sendall(reqs)
        answers = read_responses(sock, 4)
    assert [a.split(b" ", 2)[1] for a in answers] == [b"302", b"404", b"301", b"307"]


def test_request_in_fragments_byte_by_byte(served: ServerProcess) -> None:
    data = b"GET /launch HTTP/1.1\r\nHost: x\r\nUser-Agent: slow/1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.edge_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            sock.send(data[i : i + 1])
            time.sleep(0.002)
        answers = read_responses(sock, 1)
    assert answers[0].startswith(b"HTTP/1.1 302")


def test_keep_alive_reuses_connection_and_http10_closes(served: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", served.edge_port, timeout=5)
    for _ in range(3):
        conn.request("GET", "/launch")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 302
        assert resp.getheader("Connection") is None
    conn.close()
    data = raw_request(served.edge_port, b"GET /launch HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 302") and b"Connection: close" in data
    with socket.create_connection(("127.0.0.1", served.edge_port)) as sock:
        sock.sendall(b"GET /launch HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = read_responses(sock, 1)[0]
        assert b"Connection: keep-alive" in first
        sock.sendall(b"GET /perm HTTP/1.0\r\n\r\n")
        second = read_responses(sock, 1)[0]
        assert second.startswith(b"HTTP/1.1 301")


def test_connection_close_request_closes(served: ServerProcess) -> None:
    data = raw_request(
        served.edge_port,
        b"GET /launch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /perm HTTP/1.1\r\n",
    )
    assert data.count(b"HTTP/1.1") == 1 and b"Connection: close" in data


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
        (b"GET /launch HTTP/1.1\r\n\r\n", b"400"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"505"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: " + b"b" * 17000 + b"\r\n\r\n", b"431"),
    ],
)
def test_bad_requests_get_status_and_close(
    served: ServerProcess, data: bytes, status: bytes
) -> None:
    answer = raw_request(served.edge_port, data + b"GET /launch HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.split(b" ", 2)[1] == status
    assert b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing after the error


def test_get_with_body_is_discarded_and_keep_alive_continues(served: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", served.edge_port)) as sock:
        sock.sendall(
            b"GET /launch HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /perm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
            b"GET /tmp HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = read_responses(sock, 3)
    assert [a.split(b" ", 2)[1] for a in answers] == [b"302", b"301", b"307"]


def test_huge_body_on_get_is_413(served: ServerProcess) -> None:
    answer = raw_request(
        served.edge_port, b"GET /launch HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 413")


def test_chunk_extension_flood_is_refused_and_redirects_keep_flowing(
    served: ServerProcess,
) -> None:
    """The hardening probe's attack: 1-byte chunks with ~1 KB extensions, trickled on one
    connection, used to be re-parsed from the first byte on every read (13 s of CPU)."""
    head = b"GET /launch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.edge_port), timeout=5) as attacker:
        attacker.sendall(head)
        for _ in range(20):  # small chunks with short extensions: framing counts too
            attacker.sendall(b"1;" + b"e" * 200 + b"\r\nx\r\n")
            with socket.create_connection(("127.0.0.1", served.edge_port)) as other:
                other.sendall(b"GET /perm HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_responses(other, 1)[0].startswith(b"HTTP/1.1 301")
        attacker.sendall(b"1;" + b"e" * 1100 + b"\r\n")  # past the chunk-line cap
        answer = read_responses(attacker, 1)[0]
        assert answer.startswith(b"HTTP/1.1 400")
        assert b"chunk-size line too long" in answer
        assert attacker.recv(100) == b""  # and closed


def test_unsupported_expect_is_417_with_its_reason(served: ServerProcess) -> None:
    answer = raw_request(
        served.edge_port, b"GET /launch HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 417 Expectation Failed\r\n")


def test_chunk_framing_counts_against_the_edge_body_limit(served: ServerProcess) -> None:
    head = b"GET /launch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"1;" + b"e" * 200 + b"\r\nx\r\n"  # 1 byte of data, 207 on the wire
    answer = raw_request(served.edge_port, head + chunk * 400 + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413")


def test_slowloris_gets_408_and_close(db_path: Path) -> None:
    add(db_path, "https://example.com/", "--slug", "a")
    proc = ServerProcess(db_path, "--header-timeout-s", "1", "--keep-alive-timeout-s", "1")
    try:
        with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /a HTTP/1.1\r\n")
            answer = b""
            for _ in range(20):  # keep trickling: the deadline counts from the first byte
                try:
                    sock.sendall(b"X-A: b\r\n")
                except OSError:
                    break
                time.sleep(0.2)
                sock.setblocking(False)
                try:
                    chunk = sock.recv(4096)
                    answer += chunk
                    if not chunk:
                        break
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408")
        assert elapsed < 4
    finally:
        proc.stop()


def test_idle_keep_alive_connection_is_closed(db_path: Path) -> None:
    add(db_path, "https://example.com/", "--slug", "a")
    proc = ServerProcess(db_path, "--keep-alive-timeout-s", "1")
    try:
        with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_responses(sock, 1)[0].startswith(b"HTTP/1.1 302")
            started = time.monotonic()
            assert sock.recv(100) == b""  # closed by the server
            assert time.monotonic() - started < 4
    finally:
        proc.stop()


def test_connection_cap_answers_503(db_path: Path) -> None:
    add(db_path, "https://example.com/", "--slug", "a")
    proc = ServerProcess(db_path, "--max-connections", "2")
    socks = []
    try:
        socks = [socket.create_connection(("127.0.0.1", proc.edge_port)) for _ in range(2)]
        time.sleep(0.2)
        # past the cap the server answers 503 and closes at once, maybe before our request
        # is sent: read what it said whatever happens to our half of the connection
        with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=5) as extra:
            with contextlib.suppress(OSError):
                extra.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := extra.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 503"), answer
        for s in socks:
            s.close()
        time.sleep(0.2)
        answer = raw_request(proc.edge_port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 302")
    finally:
        for s in socks:
            s.close()
        proc.stop()


def test_sigterm_answers_requests_in_flight(db_path: Path) -> None:
    add(db_path, "https://example.com/", "--slug", "a")
    proc = ServerProcess(db_path)
    with socket.create_connection(("127.0.0.1", proc.edge_port), timeout=10) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n")  # half a request in flight
        time.sleep(0.2)
        proc.proc.send_signal(15)
        time.sleep(0.3)
        sock.sendall(b"User-Agent: late/1\r\n\r\n")
        answer = read_responses(sock, 1)[0]
        assert answer.startswith(b"HTTP/1.1 302")
        assert b"Connection: close" in answer
        assert sock.recv(100) == b""
    code, out, err = proc.stop()
    assert code == 0, err
    # a new connection is refused once stopped
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proc.edge_port), timeout=1).close()


def test_link_changed_by_cli_is_served_within_a_second(own_server: ServerProcess) -> None:
    served = own_server
    cli("link", "set", "launch", "--url", "https://example.com/changed", db=served.db)
    started = time.monotonic()
    while True:
        resp, _ = get(served.edge_port, "/launch")
        if resp.getheader("Location") == "https://example.com/changed":
            break
        assert time.monotonic() - started < 1.0, "change not served within 1 s"
        time.sleep(0.05)
    add(served.db, "https://example.com/new", "--slug", "fresh")
    time.sleep(0.6)
    assert get(served.edge_port, "/fresh")[0].status == 302
    cli("link", "disable", "fresh", db=served.db)
    time.sleep(0.6)
    assert get(served.edge_port, "/fresh")[0].status == 410
    cli("link", "rm", "fresh", db=served.db)
    time.sleep(0.6)
    assert get(served.edge_port, "/fresh")[0].status == 404


def test_expired_link_is_gone_or_redirects_to_expired_url(db_path: Path) -> None:
    add(db_path, "https://example.com/a", "--slug", "old", "--expires=-1h")
    add(
        db_path,
        "https://example.com/b",
        "--slug",
        "old2",
        "--expires",
        "2020-01-01T00:00:00Z",
        "--expired-url",
        "https://example.com/over",
    )
    add(db_path, "https://example.com/c", "--slug", "later", "--expires", "+1d")
    proc = ServerProcess(db_path)
    try:
        assert get(proc.edge_port, "/old")[0].status == 410
        resp, _ = get(proc.edge_port, "/old2")
        assert resp.status == 302 and resp.getheader("Location") == "https://example.com/over"
        assert get(proc.edge_port, "/later")[0].status == 302
    finally:
        proc.stop()


def test_hosts_domains_default_and_fallbacks(db_path: Path) -> None:
    cli("domain", "add", "go.example.com", "--root-url", "https://example.com/home", db=db_path)
    cli("domain", "add", "bücher.example", "--fallback-url", "https://example.com/nf", db=db_path)
    add(db_path, "https://example.com/go", "--slug", "x", "--domain", "go.example.com")
    add(db_path, "https://example.com/idn", "--slug", "x", "--domain", "bücher.example")
    add(db_path, "https://example.com/default", "--slug", "x")
    proc = ServerProcess(db_path)
    try:
        port = proc.edge_port
        loc = lambda host, path="/x": get(port, path, headers={"Host": host})[0]  # noqa: E731
        assert loc("GO.Example.com:8080").getheader("Location") == "https://example.com/go"
        assert loc("xn--bcher-kva.example").getheader("Location") == "https://example.com/idn"
        assert loc("unknown.example").getheader("Location") == "https://example.com/default"
        assert loc("go.example.com", "/").getheader("Location") == "https://example.com/home"
        assert loc("xn--bcher-kva.example", "/nope").getheader("Location") == (
            "https://example.com/nf"
        )
        assert loc("go.example.com", "/nope").status == 404
    finally:
        proc.stop()
    proc = ServerProcess(db_path, "--unknown-host", "404")
    try:
        assert get(proc.edge_port, "/x", headers={"Host": "unknown.example"})[0].status == 404
    finally:
        proc.stop()


def test_curl_follows_nothing_but_sees_the_redirect(served: ServerProcess) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = subprocess.run(
        [curl, "-si", f"http://127.0.0.1:{served.edge_port}/launch"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert out.startswith("HTTP/1.1 302 Found")
    assert "Location: https://example.com/landing?ref=dest" in out


def test_llhttp_conformance_vectors(served: ServerProcess) -> None:
    vectors = shared_testdata("http", "llhttp-request-vectors.json")
    tool = vectors.parents[2] / "tools" / "replay_http_vectors.py"
    result = subprocess.run(
        ["python3", str(tool), str(vectors), "127.0.0.1", str(served.edge_port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert " 0 failed" in summary, result.stdout[-3000:]


def test_post_with_body_gets_405_and_connection_stays_in_sync(served: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", served.edge_port)) as sock:
        sock.sendall(
            b"POST /launch HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"
            b"GET /perm HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answers = read_responses(sock, 2)
    assert [a.split(b" ", 2)[1] for a in answers] == [b"405", b"301"]
    assert b"Connection: close" not in answers[0]


def test_port_in_use_exits_with_a_clear_error(db_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        for flag in ("--edge", "--admin"):
            other = "--admin" if flag == "--edge" else "--edge"
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "admin.cli",
                    "serve",
                    "--db",
                    str(db_path),
                    flag,
                    f"127.0.0.1:{port}",
                    other,
                    "127.0.0.1:0",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 2
            assert "cannot start" in result.stderr and "address already in use" in result.stderr
            # the hint (issue 11 item 10), in one line without a traceback
            assert f"another linkedge running? Stop it, or use {flag} HOST:PORT" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
    finally:
        blocker.close()
