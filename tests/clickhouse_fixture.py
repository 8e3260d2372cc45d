"""A throwaway ClickHouse server for tests: Debian's clickhouse-server started on free
loopback ports with its data in a tmp dir (our own config files, no system service, no
/etc or /var/lib), stopped and removed at the end. Skips with the reason where the
server is not installed or does not start.

Use it from a test module:

    from tests.clickhouse_fixture import clickhouse  # noqa: F401  (the session fixture)

    def test_x(clickhouse):
        url = clickhouse.new_database()   # clickhouse+http://127.0.0.1:PORT/t_1a2b3c
        ...

Each test takes a fresh database (`new_database()`): 18.16 is slow to DROP tables with
many small parts, so nothing is dropped; the server's whole directory goes at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVER_BINARIES = ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log>
    <errorlog>{d}/log/err.log</errorlog><size>10M</size><count>1</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <keep_alive_timeout>3</keep_alive_timeout>
  <max_connections>256</max_connections>
  <max_concurrent_queries>50</max_concurrent_queries>
  <uncompressed_cache_size>134217728</uncompressed_cache_size>
  <mark_cache_size>134217728</mark_cache_size>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
"""
# The password-less default user, reachable from loopback only.
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password>
    <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


def server_binary() -> str | None:
    found = shutil.which("clickhouse-server")
    if found:
        return found
    return next((b for b in SERVER_BINARIES if os.path.exists(b)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClickHouseServer:
    """One clickhouse-server process on 127.0.0.1 (HTTP on `http_port`)."""

    def __init__(self, binary: str, directory: str) -> None:
        self.binary = binary
        self.dir = directory
        self.http_port = _free_port()
        self.tcp_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        d = self.dir
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        config = _CONFIG.format(d=d, http=self.http_port, tcp=self.tcp_port)
        Path(d, "config.xml").write_text(config)
        Path(d, "users.xml").write_text(_USERS)
        out = open(os.path.join(d, "log", "stdout.log"), "wb")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [self.binary, f"--config-file={d}/config.xml", f"--pid-file={d}/ch.pid"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=d,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited: {self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"clickhouse-server not ready in {START_TIMEOUT_S} s: {self.log_tail()}")

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping", timeout=1) as r:
                return bool(r.read() == b"Ok.\n")
        except OSError:
            return False

    def log_tail(self) -> str:
        texts = []
        for name in ("stdout.log", "err.log"):
            with contextlib.suppress(OSError):
                texts.append(Path(self.dir, "log", name).read_text(errors="replace")[-800:])
        return " | ".join(texts)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def query(self, sql: str, database: str = "default") -> str:
        """Run one statement (a test's own checks); its answer as text."""
        params = urllib.parse.urlencode({"database": database})
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/?{params}", data=sql.encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{sql[:200]}: {exc.read().decode(errors='replace')}") from None

    def new_database(self) -> str:
        """The sink URL of a database no test used (linkedge creates it)."""
        return f"clickhouse+http://127.0.0.1:{self.http_port}/t_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def clickhouse() -> Iterator[ClickHouseServer]:
    binary = server_binary()
    if binary is None:
        pytest.skip("clickhouse-server is not installed (apt-get install clickhouse-server)")
    directory = tempfile.mkdtemp(prefix="linkedge-ch.")
    server = ClickHouseServer(binary, directory)
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(f"clickhouse-server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def database_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path.strip("/")


def copy_clicks(conn: Any, url: str) -> int:
    """Copy a SQLite file's `clicks` rows into the ClickHouse database at `url` through
    linkedge's own sink (created and migrated as a collector would); returns the count.
    For tests that compare both backends on the same clicks."""
    import asyncio

    from edge import rollups
    from edge.chclient import parse_sink_url
    from edge.chsink import ClickHouseSink

    rows = [
        tuple(r)
        for r in conn.execute(f"SELECT {', '.join(rollups.CLICK_COLUMNS)} FROM clicks ORDER BY id")
    ]

    async def write() -> None:
        sink = ClickHouseSink(parse_sink_url(url), "tests")
        await sink.start()
        try:
            if rows:
                await sink.write(rows, [(1, 1, len(rows))])
        finally:
            await sink.close()

    asyncio.run(write())
    return len(rows)
