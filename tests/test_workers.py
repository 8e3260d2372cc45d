"""The worker/collector layout (admin/runtime.py, edge/worker.py, edge/ingest.py,
admin/collector.py) with real processes: every worker serves the port, every click is
written exactly once whatever is killed, and changes reach every worker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, cli, read_responses

TOKEN = "test-admin-token-0123456789abcdef"


def children(pid: int) -> dict[str, int]:
    """The supervisor's live children: {"collector": pid, "worker 0": pid, ...}."""
    out: dict[str, int] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids = [int(p) for p in f.read().split()]
        for kid in kids:
            try:
                with open(f"/proc/{kid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
                with open(f"/proc/{kid}/environ", "rb") as f:
                    env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            except (FileNotFoundError, ProcessLookupError):  # it just exited
                continue
            if b"admin.collector" in cmd:
                out["collector"] = kid
            elif b"edge.worker" in cmd:
                out[f"worker {env[b'LINKEDGE_WORKER_SLOT'].decode()}"] = kid
    return out


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM clicks").fetchone()[0])
    finally:
        conn.close()


def admin_get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return (
        json.loads(body)
        if resp.getheader("content-type", "").startswith("application/json")
        else body.decode()
    )


def one_get(port: int, path: str = "/z") -> tuple[int, str | None]:
    """A GET on a new connection (so SO_REUSEPORT spreads them over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("location")
    finally:
        conn.close()


class Load(threading.Thread):
    """Keep-alive GETs on a few connections until stopped; counts the 302s read back."""

    def __init__(self, port: int, connections: int = 4, rate: float | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.connections = connections
        # requests per second over all connections (None: as fast as answered)
        self.pause_s = 0.0 if rate is None else 10 * connections / rate
        self.stop_at = False
        self.redirects = 0
        self.errors = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._one, args=(i,)) for i in range(self.connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _one(self, i: int) -> None:
        request = b"GET /z HTTP/1.1\r\nHost: localhost\r\nUser-Agent: load/%d\r\n\r\n" % i
        while not self.stop_at:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    while not self.stop_at:
                        sock.sendall(request * 10)
                        got = read_responses(sock, 10, timeout=10)
                        with self._lock:
                            self.redirects += sum(1 for a in got if a.startswith(b"HTTP/1.1 302"))
                        if len(got) < 10:
                            break
                        if self.pause_s:
                            time.sleep(self.pause_s)
            except OSError:
                with self._lock:
                    self.errors += 1
                time.sleep(0.01)

    def finish(self) -> int:
        self.stop_at = True
        self.join(30)
        return self.redirects


@pytest.fixture
def link(db_path: Path) -> Path:
    cli("link", "add", "https://example.com/", "--slug", "z", db=db_path)
    return db_path


def test_every_worker_answers_on_the_one_port(link: Path) -> None:
    proc = ServerProcess(link, "--workers", "2", env={"LINKEDGE_ADMIN_TOKEN": TOKEN})
    try:
        kids = children(proc.proc.pid)
        assert set(kids) == {"collector", "worker 0", "worker 1"}
        for _ in range(60):
            assert one_get(proc.edge_port)[0] == 302

        def both_served() -> bool:
            text = admin_get(proc.admin_port, "/metrics")
            served = [
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("linkedge_worker_redirects{")
            ]
            return len(served) == 2 and all(n > 0 for n in served) and sum(served) == 60

        wait_for(both_served)
        health = admin_get(proc.admin_port, "/healthz")
        assert health["workers"] == {"configured": 2, "connected": 2}
    finally:
        code, out, err = proc.stop()
    assert code == 0, err
    assert "60 redirects served, 60 clicks captured, 60 written, 0 dropped, 0 unwritten" in out
    assert rows(link) == 60


def test_a_change_reaches_every_worker(link: Path) -> None:
    proc = ServerProcess(link, "--workers", "2", env={"LINKEDGE_ADMIN_TOKEN": TOKEN})
    try:
        # from the CLI (another process): every worker's poll sees it within a second
        cli("link", "set", "z", "--url", "https://example.com/cli", db=link)
        time.sleep(1.0)
        assert {one_get(proc.edge_port)[1] for _ in range(40)} == {"https://example.com/cli"}
        # from the API: answered only once every worker serves it
        conn = http.client.HTTPConnection("127.0.0.1", proc.admin_port, timeout=10)
        conn.request(
            "PATCH",
            "/api/links/localhost/z",
            body=json.dumps({"url": "https://example.com/api"}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        assert conn.getresponse().status == 200
        conn.close()
        assert {one_get(proc.edge_port)[1] for _ in range(40)} == {"https://example.com/api"}
    finally:
        code, _out, err = proc.stop()
    assert code == 0, err


def test_collector_killed_under_load_loses_nothing(link: Path) -> None:
    """At 5,000 redirects a second: the worker holds the clicks while the collector comes
    back (about a second), then the collector catches up. (Past max_unacked_clicks a
    worker drops, counted: a load near the collector's capacity leaves it no time to.)"""
    proc = ServerProcess(link, "--workers", "1")
    load = Load(proc.edge_port, rate=5000)
    load.start()
    try:
        time.sleep(1.0)
        first = children(proc.proc.pid)["collector"]
        os.kill(first, signal.SIGKILL)
        # the supervisor starts it again; meanwhile the worker keeps redirecting and
        # keeps its clicks, then resends what was not acknowledged
        wait_for(lambda: children(proc.proc.pid).get("collector", first) != first)
        time.sleep(1.5)
    finally:
        served = load.finish()
    code, out, err = proc.stop()
    assert code == 0, err
    assert served > 500 and load.errors == 0
    assert rows(link) == served  # every 302 is a row, and none is written twice
    assert "exited with status -9" in err
    assert ", 0 dropped, 0 unwritten" in out


def test_worker_killed_loses_at_most_what_it_had_not_shipped(link: Path) -> None:
    proc = ServerProcess(link, "--workers", "1")
    load = Load(proc.edge_port)
    started = time.monotonic()
    load.start()
    try:
        time.sleep(1.0)
        worker = children(proc.proc.pid)["worker 0"]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: children(proc.proc.pid).get("worker 0", worker) != worker)
        time.sleep(1.0)  # the new worker serves (connections queued meanwhile waited)
    finally:
        served = load.finish()
    rate = served / (time.monotonic() - started)
    code, out, err = proc.stop()
    assert code == 0, err
    written = rows(link)
    lost = served - written
    # What a kill -9 of a worker can cost: the 302s it answered since its last ship
    # (ship_interval_s = 5 ms; up to twice that when a busy loop runs the timer late)
    # and the pipelined requests in flight on the load's connections.
    bound = rate * 2 * 0.005 + 4 * 10
    print(
        f"worker kill -9: {served} redirects read, {written} rows, lost {lost} (bound {bound:.0f})"
    )
    assert 0 <= lost <= bound
    assert written > 500


def test_a_worker_that_cannot_reach_the_collector_keeps_serving_and_its_clicks(
    link: Path,
) -> None:
    proc = ServerProcess(link, "--workers", "1")
    try:
        collector = children(proc.proc.pid)["collector"]
        os.kill(collector, signal.SIGSTOP)  # alive but deaf: nothing is read or written
        try:
            for _ in range(300):
                assert one_get(proc.edge_port)[0] == 302
            time.sleep(0.5)
            assert rows(link) == 0
        finally:
            os.kill(collector, signal.SIGCONT)
        wait_for(lambda: rows(link) == 300)
    finally:
        code, out, err = proc.stop()
    assert code == 0, err
    assert "300 redirects served, 300 clicks captured, 300 written, 0 dropped" in out


def _env_of(pid: int) -> dict[bytes, bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)


class FakeWorker:
    """A worker's side of the handoff, spoken with edge/capture.py over the collector's
    real socket: to send the same batch again, as a worker does after a reconnect."""

    def __init__(self, path: str, epoch: int) -> None:
        from edge import capture

        self.capture = capture
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        try:
            self.sock.connect(path)
            self.reader = capture.FrameReader()
            self.sock.sendall(capture.data_frame(capture.HELLO, (epoch, 7, os.getpid(), 0, {})))
            self.hello_ack = self.next_ack()
        except BaseException:
            self.sock.close()  # a collector not back yet: the next try opens a new socket
            raise

    def next_ack(self) -> int:
        while True:
            for kind, payload in self.reader.frames():
                if kind == self.capture.ACK:
                    return self.capture.read_number(payload)
            data = self.sock.recv(65536)
            assert data, "the collector closed the connection"
            self.reader.feed(data)

    def send_batch(self, seq: int, clicks: list[Any]) -> int:
        self.sock.sendall(self.capture.batch_frame(seq, clicks))
        return self.next_ack()

    def close(self) -> None:
        self.sock.close()


def test_a_batch_sent_again_is_written_once_across_reconnects_and_crashes(link: Path) -> None:
    proc = ServerProcess(link, "--workers", "1")
    try:
        collector = children(proc.proc.pid)["collector"]
        path = _env_of(collector)[b"LINKEDGE_COLLECTOR_SOCKET"].decode()
        conn = sqlite3.connect(link)
        link_id = conn.execute("SELECT id FROM links WHERE slug = 'z'").fetchone()[0]
        conn.close()
        now = time.time()
        batch = [
            (now, link_id, 1, f"192.0.2.{i}", b"UA", b"", b"", 0, None, None) for i in range(25)
        ]
        worker = FakeWorker(path, epoch=4242)
        assert worker.hello_ack == 0
        assert worker.send_batch(1, batch) == 1  # committed, then acknowledged
        assert rows(link) == 25
        worker.close()
        # a reconnect: the worker did not see the ACK and sends batch 1 again
        again = FakeWorker(path, epoch=4242)
        assert again.hello_ack == 1  # the collector says at once what it has
        assert again.send_batch(1, batch) == 1
        assert again.send_batch(2, batch[:5]) == 2
        again.close()
        assert rows(link) == 30
        # a crash: the restarted collector reads the progress back from SQLite
        os.kill(collector, signal.SIGKILL)
        wait_for(lambda: children(proc.proc.pid).get("collector", collector) != collector)
        time.sleep(0.5)

        def reconnect() -> FakeWorker | None:
            try:
                return FakeWorker(path, epoch=4242)
            except (OSError, AssertionError):
                return None

        after = wait_for(reconnect)
        assert after.hello_ack == 2
        assert after.send_batch(1, batch) == 2 and after.send_batch(2, batch[:5]) == 2
        after.close()
        assert rows(link) == 30
    finally:
        code, _out, err = proc.stop()
    assert code == 0, err
