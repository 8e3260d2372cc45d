"""`linkedge serve`: the supervisor. It starts and watches one collector and N edge workers.

Start order: raise the descriptor limit; migrate the database and take its serve lock (one
server per database); refuse a port another server holds; bind the edge port once per
worker with SO_REUSEPORT (this process keeps the sockets, so a restarted worker finds
connections waiting in its queue instead of being refused); start the collector
(admin/collector.py) and wait until it is ready; start the workers (edge/worker.py);
print the addresses.

While running: a process that dies is started again with backoff (logged; counted on
/metrics through the collector). The collector restarting loses nothing: the workers keep
their clicks and resend them. A worker killed loses what it had captured and not shipped
(at most ship_interval_s of its traffic).

Stop (SIGTERM/SIGINT): the workers first (stop accepting, answer what is in flight, ship
every click, wait for the acknowledgements), then the collector (write everything, roll
up), then print the stop line and exit 0 only if nothing is unwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from admin import auth
from edge import catalog
from edge.config import Config, config_to_json
from edge.errors import LinkedgeError
from edge.process import connection_cap, default_workers, raise_fd_limit

log = logging.getLogger("linkedge")

READY_TIMEOUT_S: Final = 120.0  # a million links take a few seconds to load per worker
RESTART_BACKOFF_S: Final = (0.1, 0.5, 1.0, 2.0, 5.0)
# A process that ran this long before dying starts over at the shortest backoff.
STABLE_AFTER_S: Final = 30.0
POLL_S: Final = 0.1
LISTEN_BACKLOG: Final = 2048  # as edge/server.py


class StartError(Exception):
    """The server cannot start; the message says why and what to do."""


class Child:
    """One supervised process: how to start it and what became of it."""

    def __init__(self, name: str, module: str, env: dict[str, str], fds: tuple[int, ...]) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.fds = fds
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_fd = -1  # our end of its ready pipe
        self.pipe_data = b""
        self.started_at = 0.0
        self.restarts = 0
        self.failures_in_row = 0
        self.next_start = 0.0
        self.ready_line: dict[str, Any] = {}
        self.report: dict[str, Any] = {}

    def start(self) -> None:
        r, w = os.pipe()
        env = {**os.environ, **self.env, "LINKEDGE_READY_FD": str(w), "PYTHONUNBUFFERED": "1"}
        # the children find our packages even when run from a source tree, in the
        # caller's working directory (a relative path means the same file to them)
        root = str(Path(__file__).resolve().parents[1])
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root if not path else f"{root}{os.pathsep}{path}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=env, pass_fds=(*self.fds, w)
        )
        os.close(w)
        self.ready_fd = r
        self.pipe_data = b""
        self.started_at = time.monotonic()

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Block until the child says it is ready; StartError if it dies or takes too long."""
        line = self._read_line(timeout_s)
        if line is None:
            code = self.proc.poll() if self.proc is not None else None
            why = f"exited with status {code}" if code is not None else "did not get ready"
            raise StartError(f"the {self.name} {why} (its errors are above)")
        self.ready_line = line
        return line

    def _read_line(self, timeout_s: float) -> dict[str, Any] | None:
        """The next JSON line the child wrote to its pipe, or None (EOF, timeout)."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.pipe_data:
            left = deadline - time.monotonic()
            if left <= 0 or self.ready_fd < 0:
                return None
            readable, _w, _x = select.select([self.ready_fd], [], [], min(left, 0.5))
            if not readable:
                if self.proc is not None and self.proc.poll() is not None:
                    return None
                continue
            chunk = os.read(self.ready_fd, 65536)
            if not chunk:
                return None
            self.pipe_data += chunk
        line, _, self.pipe_data = self.pipe_data.partition(b"\n")
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def read_report(self, timeout_s: float) -> None:
        """The child's last words (the collector's final figures), when it sends them."""
        while True:
            line = self._read_line(timeout_s)
            if line is None:
                return
            if isinstance(line.get("report"), dict):
                self.report = line["report"]
                return

    def close_pipe(self) -> None:
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = -1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.workers_n = config.workers or default_workers()
        self.sockets: list[socket.socket] = []
        self.edge_port = 0
        self.admin_port: int | None = None
        self.run_dir = ""
        self.lock_file: Any = None
        self.collector: Child | None = None
        self.workers: list[Child] = []
        self.stopping = False

    # --- start ---------------------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        supplied = os.environ.get(auth.ENV_TOKEN)
        if supplied:
            try:
                auth.check_supplied_token(supplied)
            except LinkedgeError as exc:
                raise StartError(exc.message) from None
        limit = raise_fd_limit()
        cap = connection_cap(config.max_connections)
        if cap < config.max_connections:
            log.warning(
                "max_connections %d is above what %d file descriptors allow: capped at %d "
                "per worker (raise `ulimit -n` or LimitNOFILE= in the unit)",
                config.max_connections,
                limit,
                cap,
            )
            self.config = config = config.replace(max_connections=cap)
        try:
            conn = catalog.open_db(config.db_path)
        except Exception as exc:  # sqlite3 errors, a directory, permissions
            raise StartError(f"cannot open the database {config.db_path}: {exc}") from None
        conn.close()
        self._lock()
        busy = config.admin_enabled and config.admin_port
        if busy and _someone_listens(config.admin_host, config.admin_port):
            raise StartError(
                f"port {config.admin_port} on {config.admin_host} is in use (another "
                "linkedge running? use --admin HOST:PORT)"
            )
        self._bind()
        self.run_dir = tempfile.mkdtemp(prefix="linkedge-")
        os.chmod(self.run_dir, 0o700)
        socket_path = os.path.join(self.run_dir, "collector.sock")
        child_config = config.replace(
            edge_port=self.edge_port,
            workers=self.workers_n,
            db_path=os.path.abspath(config.db_path),
            geoip_path=config.geoip_path and os.path.abspath(config.geoip_path),
            geoip_asn_path=config.geoip_asn_path and os.path.abspath(config.geoip_asn_path),
        )
        common = {
            "LINKEDGE_CHILD_CONFIG": config_to_json(child_config),
            "LINKEDGE_COLLECTOR_SOCKET": socket_path,
        }
        self.collector = Child("collector", "admin.collector", common, ())
        self.collector.start()
        ready = self.collector.wait_ready(READY_TIMEOUT_S)
        self.admin_port = ready.get("admin_port")
        if self.admin_port is not None:
            # a restarted collector must come back on the same port
            pinned = child_config.replace(admin_port=self.admin_port)
            self.collector.env = {**common, "LINKEDGE_CHILD_CONFIG": config_to_json(pinned)}
        for slot, sock in enumerate(self.sockets):
            env = {
                **common,
                "LINKEDGE_WORKER_SLOT": str(slot),
                "LINKEDGE_LISTEN_FD": str(sock.fileno()),
            }
            child = Child(f"worker {slot}", "edge.worker", env, (sock.fileno(),))
            child.start()
            self.workers.append(child)
        for child in self.workers:
            child.wait_ready(READY_TIMEOUT_S)

    def _lock(self) -> None:
        """One server per database: a second one would split the live counters and the
        pipeline's progress between two processes that each think they are alone."""
        path = self.config.db_path + ".serve-lock"
        try:
            self.lock_file = open(path, "a+")  # noqa: SIM115 (held for the process's life)
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartError(
                f"another linkedge serve is already running on {self.config.db_path} "
                "(stop it first, or give this one another --db)"
            ) from None
        except OSError as exc:
            raise StartError(f"cannot lock {path}: {exc.strerror or exc}") from None
        self.lock_file.seek(0)
        self.lock_file.truncate()
        self.lock_file.write(f"{os.getpid()}\n")
        self.lock_file.flush()

    def _bind(self) -> None:
        host, port = self.config.edge_host, self.config.edge_port
        if port and _someone_listens(host, port):
            raise StartError(
                f"port {port} on {host} is in use by another server (another linkedge "
                "running? use --edge HOST:PORT)"
            )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for i in range(self.workers_n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.workers_n > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port if i == 0 else self.edge_port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise StartError(
                        f"port {port} on {host} is in use (another linkedge running? use "
                        "--edge HOST:PORT)"
                    ) from None
                raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            sock.listen(LISTEN_BACKLOG)
            sock.set_inheritable(True)
            if i == 0:
                self.edge_port = int(sock.getsockname()[1])
            self.sockets.append(sock)

    # --- running -------------------------------------------------------------------------

    def watch(self, stop_requested: Callable[[], bool]) -> None:
        """Restart what dies (with backoff) until a stop is requested."""
        while not stop_requested():
            now = time.monotonic()
            for child in [self.collector, *self.workers]:
                if child is None or child.alive():
                    continue
                if child.next_start == 0.0:
                    code = child.proc.returncode if child.proc is not None else None
                    ran = now - child.started_at
                    child.failures_in_row = (
                        1 if ran >= STABLE_AFTER_S else child.failures_in_row + 1
                    )
                    delay = RESTART_BACKOFF_S[
                        min(child.failures_in_row, len(RESTART_BACKOFF_S)) - 1
                    ]
                    log.error(
                        "the %s (pid %s) exited with status %s after %.1f s: starting it "
                        "again in %.1f s",
                        child.name,
                        child.proc.pid if child.proc is not None else "?",
                        code,
                        ran,
                        delay,
                    )
                    child.close_pipe()
                    child.next_start = now + delay
                elif now >= child.next_start:
                    child.next_start = 0.0
                    child.restarts += 1
                    child.start()
                    self._note_restarts()
            time.sleep(POLL_S)

    def _note_restarts(self) -> None:
        """Tell the collector the restart counts (it shows them on /metrics)."""
        counts = {c.name: c.restarts for c in [self.collector, *self.workers] if c is not None}
        path = os.path.join(self.run_dir, "restarts.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(counts, f)
        os.replace(tmp, path)

    # --- stop ----------------------------------------------------------------------------

    def stop(self) -> dict[str, Any]:
        """Workers first, then the collector; returns the collector's final report."""
        self.stopping = True
        deadline_s = self.config.shutdown_timeout_s + 15.0
        for child in self.workers:
            child.signal(signal.SIGTERM)
        for child in self.workers:
            self._reap(child, deadline_s)
        report: dict[str, Any] = {}
        if self.collector is not None:
            self.collector.signal(signal.SIGTERM)
            if self.collector.ready_fd >= 0:
                self.collector.read_report(deadline_s + 30.0)
            self._reap(self.collector, deadline_s + 30.0)
            report = self.collector.report
        for sock in self.sockets:
            sock.close()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return report

    def _reap(self, child: Child, timeout_s: float) -> None:
        if child.proc is None:
            return
        try:
            child.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("the %s did not stop within %.0f s: killed", child.name, timeout_s)
            child.proc.kill()
            child.proc.wait()
        child.close_pipe()

    def exit_ok(self) -> bool:
        procs = [c.proc for c in [self.collector, *self.workers] if c is not None and c.proc]
        return all(p.returncode == 0 for p in procs)


def _someone_listens(host: str, port: int) -> bool:
    """Whether a server accepts on host:port already (SO_REUSEPORT would let a second
    linkedge of the same user bind it silently and take half the traffic)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_line(report: dict[str, Any]) -> str:
    workers = report.get("workers") or {}
    served = workers.get("redirects", 0)
    if not report.get("recording"):
        return f"linkedge stopped: {served} redirects served, clicks not recorded"
    return (
        f"linkedge stopped: {served} redirects served, {workers.get('captured', 0)} clicks "
        f"captured, {workers.get('acked', 0)} written, {workers.get('dropped', 0)} dropped, "
        f"{report.get('unwritten', 0) + workers.get('queued', 0)} unwritten; "
        f"peak queue {report.get('peak_queue', 0)}, "
        f"max flush lag {report.get('max_flush_lag_s', 0.0) * 1000:.0f} ms"
    )


def run(config: Config, on_ready: Callable[[Supervisor], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the exit status says whether every click was written."""
    requested = False

    def request_stop(_sig: int, _frame: Any) -> None:
        nonlocal requested
        requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    sup = Supervisor(config)
    try:
        sup.start()
    except StartError as exc:
        sup.stop()
        print(f"linkedge: cannot start: {exc}", file=sys.stderr)
        return 2
    print(f"linkedge edge listening on http://{config.edge_host}:{sup.edge_port}", flush=True)
    if sup.admin_port is not None:
        print(
            f"linkedge admin API listening on http://{config.admin_host}:{sup.admin_port}",
            flush=True,
        )
    log.info("serving with %d worker(s) and a collector", len(sup.workers))
    if on_ready is not None:
        on_ready(sup)
    sup.watch(lambda: requested)
    log.info("stopping: workers first (they ship every click), then the collector")
    report = sup.stop()
    print(stop_line(report), flush=True)
    unwritten = report.get("unwritten", 0) + (report.get("workers") or {}).get("queued", 0)
    return 0 if sup.exit_ok() and not unwritten and report else 1
