"""Shared fixtures: a real linkedge server process on 127.0.0.1 with a SQLite file in tmp."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.pg_fixtures import link_store, pg_server  # noqa: F401 (fixtures: PostgreSQL)

# `make mutation` runs each mutant against its tests: fewer examples (a fixed set, so a
# mutant is killed by a test and not by luck) keep a run in minutes. The parser's fuzz
# tests, which set their own max_examples, take a tenth of theirs (tests/test_http.py).
settings.register_profile("mutation", max_examples=25, derandomize=True, database=None)
# The default: a loaded CI machine makes input generation and examples slow, which says
# nothing about the properties; every property still runs its examples.
settings.register_profile("default-ci", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("default-ci")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TESTDATA = SHARED / "testdata"


def shared_testdata(*parts: str) -> Path:
    """A path under ../shared/testdata, or skip: a user's fresh clone does not have it."""
    path = TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/testdata ships with the team checkout only)")
    return path


class ServerProcess:
    """`linkedge serve` in a subprocess; edge_port/admin_port read from its startup lines."""

    def __init__(self, db: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.db = db
        cmd = [
            sys.executable,
            "-m",
            "admin.cli",
            "serve",
            "--db",
            str(db),
            "--edge",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            *args,
        ]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.started_at = time.time()  # the server's own start is later than this
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.edge_port = 0
        self.admin_port = 0
        self.lines: list[str] = []
        deadline = time.monotonic() + 20
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"server exited at start: {err}")
            self.lines.append(line)
            if "edge listening on" in line:
                self.edge_port = int(line.rsplit(":", 1)[1])
            if "admin API listening on" in line:
                self.admin_port = int(line.rsplit(":", 1)[1])
            if self.edge_port and ("--no-admin-enabled" in args or self.admin_port):
                break

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + out, err


def init_db(path: Path) -> Path:
    """A database as `linkedge init` makes it (the CLI refuses a missing one)."""
    from edge import catalog

    catalog.open_db(str(path)).close()
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return init_db(tmp_path / "linkedge.db")


@pytest.fixture
def server(db_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(db_path)
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


def cli(
    *args: str, db: Path | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `linkedge ARGS` (with --db when given) and return the completed process."""
    cmd = [sys.executable, "-m", "admin.cli", *args]
    if db is not None:
        cmd += ["--db", str(db)]
    full_env = {**os.environ, **env} if env else None
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"linkedge {' '.join(args)} failed: {result.stderr}")
    return result


def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, half-close, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        # the server may have answered and closed first (a refusal): read its answer
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def read_responses(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """Read `count` whole responses (heads with Content-Length bodies) from a socket."""
    sock.settimeout(timeout)
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[: end + 4]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(buf) >= end + 4 + length:
                out.append(buf[: end + 4 + length])
                buf = buf[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return out
