"""deploy/Caddyfile, run by Debian's caddy in front of a real `linkedge serve`: over TLS
(`tls internal`, a local name, `curl --resolve`) the visitor gets the redirect and the click
records the visitor's address from X-Forwarded-For (--trusted-proxy), while an
X-Forwarded-For forged by a visitor, through Caddy or straight to the edge, is ignored.

Which address a click recorded is read from its visitor id, a keyed hash of (ip, user
agent, domain): two clicks with the same agent on the same domain have the same id exactly
when the edge took them for the same address (no raw address is stored)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, ServerProcess, cli

CADDY = shutil.which("caddy")
CURL = shutil.which("curl")
pytestmark = [
    pytest.mark.skipif(
        CADDY is None,
        reason="caddy is not installed (`apt-get install caddy`; .ci/run installs it)",
    ),
    pytest.mark.skipif(CURL is None, reason="curl is not installed"),
]
NAME = "go.test"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"  # noqa: E501


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def caddy_in_front(db_path: Path, tmp_path: Path) -> Iterator[tuple[ServerProcess, int, Path]]:
    cli("domain", "add", NAME, db=db_path)
    cli("link", "add", "https://example.org/hello", "--slug", "hello", "--domain", NAME, db=db_path)
    edge = ServerProcess(db_path, "--trusted-proxy", "127.0.0.1/32")
    https_port = free_port()
    home = tmp_path / "caddy"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "CADDY_GLOBAL_OPTIONS": (
            f"admin off\nskip_install_trust\nhttp_port {free_port()}\n"
            f"https_port {https_port}\nauto_https disable_redirects"
        ),
        "LINKEDGE_DOMAIN": NAME,
        "LINKEDGE_TLS": "tls internal",
        "LINKEDGE_EDGE": f"127.0.0.1:{edge.edge_port}",
    }
    assert CADDY is not None
    caddy = subprocess.Popen(
        [CADDY, "run", "--config", str(REPO / "deploy" / "Caddyfile"), "--adapter", "caddyfile"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    root = home / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and caddy.poll() is None:
            if root.exists() and curl(https_port, root, "/probe").startswith("HTTP/"):
                break
            time.sleep(0.2)
        else:
            err = caddy.stderr.read().decode()[-2000:] if caddy.poll() is not None else ""
            pytest.fail(f"caddy did not answer over TLS within 20 s: {err}")
        yield edge, https_port, root
    finally:
        caddy.terminate()
        caddy.wait(timeout=10)
        if caddy.stderr is not None:
            caddy.stderr.close()
        if edge.proc.poll() is None:
            edge.stop()


def curl(port: int, root: Path, path: str, *extra: str, source: str = "127.0.0.1") -> str:
    """The status line and Location of one request through Caddy, from `source`."""
    assert CURL is not None
    done = subprocess.run(
        [CURL, "-s", "-o", "/dev/null", "-w", "HTTP/%{http_version} %{http_code} %{redirect_url}",
         "--resolve", f"{NAME}:{port}:127.0.0.1", "--cacert", str(root), "--interface", source,
         "-A", UA, *extra, f"https://{NAME}:{port}{path}"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return done.stdout


def straight(edge_port: int, source: str, headers: str = "") -> bytes:
    with socket.create_connection(
        ("127.0.0.1", edge_port), timeout=5, source_address=(source, 0)
    ) as s:  # noqa: E501
        s.sendall(
            f"GET /hello HTTP/1.1\r\nHost: {NAME}\r\nUser-Agent: {UA}\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
        )
        return s.recv(4096)


def test_through_caddy_the_click_records_the_visitor_and_forgeries_are_ignored(
    caddy_in_front: tuple[ServerProcess, int, Path], db_path: Path
) -> None:
    edge, port, root = caddy_in_front
    got = curl(port, root, "/hello", source="127.0.0.2")
    assert got.split(" ", 1)[1] == "302 https://example.org/hello"
    forged = curl(port, root, "/hello", "-H", "X-Forwarded-For: 127.0.0.9", source="127.0.0.2")
    assert " 302 " in forged
    assert straight(edge.edge_port, "127.0.0.2").startswith(b"HTTP/1.1 302")
    assert straight(edge.edge_port, "127.0.0.3", "X-Forwarded-For: 127.0.0.2\r\n").startswith(
        b"HTTP/1.1 302"
    )
    assert straight(edge.edge_port, "127.0.0.3").startswith(b"HTTP/1.1 302")
    code, _out, err = edge.stop()
    assert code == 0, err
    ids = [
        r[0] for r in sqlite3.connect(db_path).execute("SELECT visitor_id FROM clicks ORDER BY id")
    ]
    via_caddy, via_caddy_forged, direct_2, forged_direct_3, direct_3 = ids
    assert via_caddy == direct_2  # Caddy's X-Forwarded-For: the visitor's own address
    assert via_caddy_forged == direct_2  # Caddy replaced the visitor's forged header
    assert forged_direct_3 == direct_3 != direct_2  # not from a trusted proxy: ignored
