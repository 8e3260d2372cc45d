# loadtests/hostile: `make hostile` -- attacks and faults against a real `linkedge serve`,
# each judged against a stated target (issue 9, "the suite that keeps it standing").
#
# Every scenario starts its own `linkedge serve` (a temp dir, ports picked by the kernel,
# --trusted-proxy 127.0.0.1/32, a City .mmdb built with mmdb-writer by loadtests/geodb.py,
# 200 links from loadtests/workload.py), pinned to core 0 while the attackers, the load and
# this process use the other cores (attackers at nice 10, so the probe is not queued
# behind them on the client side). During the scenario:
# - a probe opens a new connection every 50-100 ms and asks for a redirect: its failures
#   (no answer within 5 s, or not a 302) and its max latency say whether the service stayed
#   available; an admin probe does the same for /healthz where the scenario needs it and
#   keeps what it said (status, backlog, writer lag);
# - the RSS of the server's process tree (VmRSS of each process, from /proc) is sampled
#   every 0.25 s: growth = peak - the value after a short warm-up;
# - afterwards: SIGTERM, the stop line (served / captured / written / dropped /
#   unwritten), rows in `clicks` against the redirects served (and against the 302s the
#   clients read: a 302 someone got is a row), and `PRAGMA integrity_check`.
# Targets (not weakened to pass: a miss is a FAIL with its figure): probe failures 0; max
# probe latency <= 100 ms under attack and <= 1 s during faults; RSS growth within the
# bound the scenario states; rows == redirects served (kill -9: loss within the bound the
# docs state); integrity_check ok.
#
# Attack tools: slowhttptest (Debian package, installed with apt-get when missing) for
# slowloris and slow read; everything else is a small asyncio client in a worker process
# (this file, `_worker_main`). The disk-full scenario mounts a small tmpfs (root only).
# Results: loadtests/results/hostile-latest.json and .md; a full run (not --quick, not
# --only) rewrites docs/reliability.md above its notes marker.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from loadtests import machine, workload
from loadtests.common import LISTENING, STOP_FIELDS, linkedge_cmd, wait_for_line

ROOT: Final = Path(__file__).resolve().parent.parent
CACHE: Final = ROOT / "loadtests" / ".cache" / "hostile"
RESULTS: Final = ROOT / "loadtests" / "results"
DOC: Final = ROOT / "docs" / "reliability.md"
NOTES_MARKER: Final = "<!-- notes: everything below this line is kept when hostile.py rewrites"
ADMIN_LISTENING: Final = re.compile(r"linkedge admin API listening on http://[^:\s]+:(\d+)")

LINKS: Final = 200
GEO_NETWORKS: Final = 20_000
CLIENT_IPS: Final = 20_000
SERVER_CORE: Final = 0

# Targets (issue 9).
ATTACK_LATENCY_MS: Final = 100.0  # max probe redirect latency under an attack
FAULT_LATENCY_MS: Final = 1000.0  # ... during a fault (disk full, lock, kill, GeoIP swap)
RSS_BOUND_MB: Final = 100.0  # RSS growth of the server's process tree over its warm value
LAG_DEGRADED_S: Final = 5.0  # writer lag past which /healthz must not say "ok"
LAG_BOUND_S: Final = 5.0  # writer lag the pipeline must stay within under a flood
STORED_REFERER_MAX: Final = 2048  # characters of a Referer worth storing (issue 9, 4)
# kill -9 loses what was captured and not yet committed: the buffer filling for the next
# flush and the batch being enriched or written, two flush intervals (0.1 s each).
KILL9_LOSS_INTERVALS: Final = 2
FLUSH_INTERVAL_S: Final = 0.1

PROBE_TIMEOUT_S: Final = 5.0
WORKER_NICE: Final = 10


# --- results ---------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    target: str
    measured: str
    ok: bool | None  # None: a figure shown for information, not judged

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else "PASS" if self.ok else "FAIL"


@dataclass
class Outcome:
    scenario: str
    title: str
    checks: list[Check] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        if self.error or any(c.ok is False for c in self.checks):
            return "FAIL"
        return "PASS"

    def check(self, name: str, target: str, measured: str, ok: bool | None) -> Check:
        c = Check(name, target, measured, ok)
        self.checks.append(c)
        print(f"  {c.verdict:4s}  {name}: {measured}  (target: {target})", flush=True)
        return c

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "title": self.title,
            "verdict": self.verdict,
            "skipped": self.skipped,
            "error": self.error,
            "seconds": round(self.seconds, 1),
            "checks": [{**c.__dict__, "verdict": c.verdict} for c in self.checks],
            "figures": self.figures,
        }


class Skip(Exception):
    """A scenario cannot run here; the message says why."""


# --- tools ------------------------------------------------------------------------------------


def _which(tool: str) -> str | None:
    # slowhttptest is in /usr/bin; nginx-style tools can live in /usr/sbin.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def ensure_debian_tool(tool: str, package: str) -> str:
    """The tool's path, installed with apt-get when missing; Skip when that cannot be."""
    path = _which(tool)
    if path:
        return path
    if not shutil.which("apt-get"):
        raise Skip(f"{tool} is not installed and there is no apt-get to install {package}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print(f"hostile: installing {package} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run([*sudo, *cmd], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"apt-get could not install {package}: {done.stderr.strip()[-300:]}")
    path = _which(tool)
    if not path:
        raise Skip(f"{package} installed but {tool} is not on PATH")
    return path


def ensure_python_modules() -> None:
    """mmdb-writer and netaddr build the GeoIP database (the dev extra has them)."""
    missing = []
    for module, package in (("mmdb_writer", "mmdb-writer"), ("netaddr", "netaddr")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        print(f"hostile: installing {', '.join(missing)} with pip", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def _client_cores() -> set[int]:
    cores = os.sched_getaffinity(0)
    rest = cores - {SERVER_CORE}
    return rest or cores


def _pin_here() -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, _client_cores())


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- the data every scenario serves ----------------------------------------------------------


@dataclass
class Data:
    links_db: Path
    mmdb: Path
    networks: list[str]
    slugs: list[str]
    visitors: list[workload.Visitor]
    ip_ranges: list[tuple[int, int]]  # (first address, size) of each GeoIP network

    def heads(self, count: int, seed: int = 1, **markers: bool) -> list[bytes]:
        """`count` realistic request heads (visitors, referers, X-Forwarded-For) over every
        slug; a marker (ua / referer / ip) makes the worker put a fresh random value there
        in every request."""
        rng = random.Random(seed)
        out = []
        for i in range(count):
            v = self.visitors[rng.randrange(len(self.visitors))]
            lines = workload.request_head(
                self.slugs[i % len(self.slugs)], v, workload.random_referer(rng)
            )
            if markers.get("ua"):
                lines = [
                    "User-Agent: \0UA\0" if ln.startswith("User-Agent: ") else ln for ln in lines
                ]
            if markers.get("ip"):
                lines = [
                    "X-Forwarded-For: \0IP\0" if ln.startswith("X-Forwarded-For: ") else ln
                    for ln in lines
                ]
            if markers.get("referer"):
                lines = [ln for ln in lines if not ln.startswith("Referer: ")]
                lines.append("Referer: \0REF\0")
            text = "\r\n".join(lines) + "\r\n\r\n"
            out.append(text.encode("latin-1"))
        return out


def prepare() -> Data:
    ensure_python_modules()
    from loadtests import geodb

    CACHE.mkdir(parents=True, exist_ok=True)
    mmdb = CACHE / f"city-{GEO_NETWORKS}.mmdb"
    if not mmdb.exists():
        print(f"hostile: building {mmdb.name} ({GEO_NETWORKS:,} networks)", flush=True)
    networks = geodb.ensure(mmdb, GEO_NETWORKS)
    links_db = CACHE / f"links-{LINKS}.db"
    if not links_db.exists():
        workload.create_links_db(links_db, LINKS)
    workload.ensure_schema(links_db)
    slugs = list(workload.locations(links_db))
    people = workload.visitors(geodb.client_ips(networks, CLIENT_IPS))
    import ipaddress

    ranges = []
    for cidr in networks:
        net = ipaddress.IPv4Network(cidr)
        ranges.append((int(net.network_address) + 1, net.num_addresses - 2))
    return Data(links_db, mmdb, networks, slugs, people, ranges)


# --- the server under test -------------------------------------------------------------------


class Server:
    """`linkedge serve` on a private copy of the links DB, edge and admin on kernel-picked
    ports, pinned to SERVER_CORE when there is another core for the clients."""

    def __init__(
        self,
        work: Path,
        data: Data,
        *,
        db: Path | None = None,
        geoip: Path | None = None,
        args: tuple[str, ...] = (),
        fd_limit: int | None = None,
    ) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.db = db or work / "linkedge.db"
        if not self.db.exists():
            workload.copy_db(data.links_db, self.db)
        self.cmd = [
            *linkedge_cmd(),
            "serve",
            "--db",
            str(self.db),
            "--edge",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--trusted-proxy",
            "127.0.0.1/32",
            *(["--geoip", str(geoip)] if geoip is not None else []),
            *args,
        ]
        self.stdout = work / "stdout.log"
        self.stderr = work / "stderr.log"
        full = self.cmd
        if len(os.sched_getaffinity(0) | {SERVER_CORE}) > 1 and _which("taskset"):
            full = [machine.tool_path("taskset"), "-c", str(SERVER_CORE), *self.cmd]

        def limits() -> None:
            if fd_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                full,
                cwd=work,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=limits,
            )
        self.started = time.time()
        self.edge_port = int(wait_for_line(self.stdout, LISTENING, self.proc, 120).group(1))
        self.admin_port = int(wait_for_line(self.stdout, ADMIN_LISTENING, self.proc, 30).group(1))
        self.stopped: dict[str, Any] | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        return machine.tree_pids(self.proc.pid) if self.alive else []

    def rss_mb(self) -> float:
        return sum(machine.rss_mb(pid)["rss"] for pid in self.pids())

    def cpu_s(self) -> float:
        return machine.process_cpu_s(self.pids())

    def stop(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """SIGTERM and wait; what its stop line says."""
        if self.stopped is not None:
            return self.stopped
        t0 = time.monotonic()
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        out: dict[str, Any] = {
            "exit": self.proc.returncode,
            "stop_s": round(time.monotonic() - t0, 2),
        }
        lines = [
            ln
            for ln in self.stdout.read_text(errors="replace").splitlines()
            if ln.startswith("linkedge stopped:")
        ]
        if lines:
            out["stop_line"] = lines[-1]
            for name, pattern in STOP_FIELDS.items():
                m = pattern.search(lines[-1])
                if m:
                    out[name] = int(next(g for g in m.groups() if g is not None))
        self.stopped = out
        return out

    def kill9(self) -> None:
        if self.alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.stopped = {"exit": self.proc.returncode, "killed": True}

    def log(self) -> str:
        parts = []
        for p in (self.stdout, self.stderr):
            parts.append(p.read_text(errors="replace") if p.exists() else "")
        return "\n".join(parts)


def count_rows(db: Path, where: str = "", args: tuple[Any, ...] = ()) -> int:
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        return int(conn.execute(f"SELECT count(*) FROM clicks {where}", args).fetchone()[0])
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)[:300]


# --- probes and samplers (threads of this process) -------------------------------------------


def http_get(
    port: int, path: str, host: str = workload.HOST, timeout_s: float = PROBE_TIMEOUT_S
) -> tuple[int, bytes]:
    """One GET on a new connection: (status, body). Raises OSError/ValueError on failure."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: linkedge-hostile-probe/1.0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        chunks = []
        deadline = time.monotonic() + timeout_s
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            block = s.recv(65536)
            if not block:
                break
            chunks.append(block)
            data = b"".join(chunks)
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", data[:head_end])
                if m and len(data) >= head_end + 4 + int(m.group(1)):
                    break
    data = b"".join(chunks)
    if not data.startswith(b"HTTP/1."):
        raise ValueError(f"no HTTP answer ({data[:40]!r})")
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


class Probe(threading.Thread):
    """A client asking every 50-100 ms on a new connection; latency and failures.

    `ok` counts every expected answer (the 302s this client read, for the zero-loss
    check); summary(since) judges the attempts made from `since` on (after the warm-up)."""

    def __init__(self, port: int, path: str, expect: int = 302, keep_bodies: bool = False) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.expect = expect
        self.keep_bodies = keep_bodies
        self.realtime = False
        # (start time, latency ms or None, status or 0, failure reason or "")
        self.attempts: list[tuple[float, float | None, int, str]] = []
        self.ok = 0  # answers with the expected status
        self.bodies: list[tuple[float, int, Any]] = []  # (time, status, JSON) for /healthz
        self._stop_event = threading.Event()
        self.rng = random.Random(self.port)

    def run(self) -> None:
        # Real-time priority (root only) for this thread: on a small machine the attackers
        # share the client core, and a probe queued behind them would measure them, not
        # the server (measured: a slow-read run showed 167 ms without it, 26 ms with it,
        # with the server at 0.04 cores).
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            self.realtime = True
        while not self._stop_event.is_set():
            started = time.time()
            t0 = time.monotonic()
            try:
                status, body = http_get(self.port, self.path)
            except (OSError, ValueError) as exc:
                self.attempts.append((started, None, 0, f"{type(exc).__name__}: {exc}"[:120]))
            else:
                ms = (time.monotonic() - t0) * 1000
                if self.keep_bodies:
                    try:
                        parsed = json.loads(body)
                    except ValueError:
                        parsed = None
                    self.bodies.append((time.time(), status, parsed))
                if status == self.expect or (self.keep_bodies and _is_health(body)):
                    self.ok += 1
                    self.attempts.append((started, ms, status, ""))
                else:
                    self.attempts.append((started, ms, status, f"status {status}: {body[:60]!r}"))
            self._stop_event.wait(self.rng.uniform(0.05, 0.1))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(PROBE_TIMEOUT_S + 2)

    def summary(self, since: float = 0.0) -> dict[str, Any]:
        mine = [a for a in self.attempts if a[0] >= since]
        lat = sorted(a[1] for a in mine if a[1] is not None)
        failures = [a for a in mine if a[3]]
        slowest = sorted((a for a in mine if a[1] is not None), key=lambda a: -(a[1] or 0))[:5]
        return {
            "requests": len(mine),
            "ok": len(mine) - len(failures),
            "failures": len(failures),
            "first_failures": [a[3] for a in failures[:3]],
            "max_ms": round(lat[-1], 1) if lat else None,
            "p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
            "statuses": dict(Counter(a[2] for a in mine)),
            "realtime": self.realtime,
            "slowest_ms_at": [(round(a[1] or 0, 1), round(a[0] - since, 2)) for a in slowest],
        }


def _is_health(body: bytes) -> bool:
    """A /healthz answer (ok or not), as opposed to a refusal of the connection."""
    try:
        return "status" in json.loads(body) and "pipeline" in json.loads(body)
    except (ValueError, TypeError):
        return False


class Sampler(threading.Thread):
    """RSS of the server's process tree every 0.25 s."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.samples: list[tuple[float, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = self.server.rss_mb()
            if rss:
                self.samples.append((time.time(), rss))
            self._stop_event.wait(0.25)

    def now(self) -> float:
        return self.server.rss_mb()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def peak(self, since: float = 0.0) -> float:
        return max((r for t, r in self.samples if t >= since), default=0.0)


# --- worker processes: load, floods, attacks (asyncio, one process each) -------------------


class Worker:
    """A client process running `_worker_main(spec)`; stop() returns what it counted."""

    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop_event = ctx.Event()
        self.parent, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=_worker_main, args=(spec, child, self.stop_event), daemon=True
        )
        self.proc.start()
        child.close()
        self.result: dict[str, Any] | None = None

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        if self.result is not None:
            return self.result
        self.stop_event.set()
        if self.parent.poll(timeout_s):
            try:
                self.result = self.parent.recv()
            except EOFError:
                self.result = {"error": "worker died"}
        else:
            self.result = {"error": "worker did not answer"}
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        return self.result


def _worker_main(
    spec: dict[str, Any],
    conn: multiprocessing.connection.Connection,
    stop_event: Any,
) -> None:
    _pin_here()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        result = asyncio.run(_worker(spec, stop_event))
    except Exception:
        result = {"error": traceback.format_exc()[-2000:]}
    conn.send(result)
    conn.close()


async def _worker(spec: dict[str, Any], stop_event: Any) -> dict[str, Any]:
    # The parent's multiprocessing Event is waited for on a thread, which then sets the
    # loop's own Event.
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_stop() -> None:
        stop_event.wait()
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=wait_for_stop, daemon=True).start()
    kind = spec["kind"]
    if kind == "load":
        return await _load(spec, done)
    if kind == "churn":
        return await _churn(spec, done)
    if kind == "idle":
        return await _idle(spec, done)
    if kind == "chunked":
        return await _chunked(spec, done)
    raise ValueError(f"unknown worker kind {kind}")


_CL: Final = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    m = _CL.search(head)
    if m and int(m.group(1)):
        await reader.readexactly(int(m.group(1)))
    return int(head[9:12]), b"connection: close" in head.lower()


def _random_ua(rng: random.Random) -> bytes:
    """A User-Agent no cache has seen: realistic shape, random versions and build tokens."""
    r = rng.getrandbits(64)
    return (
        f"Mozilla/5.0 (Linux; Android {10 + r % 5}; SM-{r >> 8 & 0xFFFF:04X}) "
        f"AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{100 + (r >> 24) % 40}.0."
        f"{(r >> 32) % 9000}.{(r >> 45) % 200} Mobile Safari/537.36 build/{r:016x}"
    ).encode()


def _random_referer(rng: random.Random, length: int) -> bytes:
    prefix = b"https://news.example.org/a?session="
    return prefix + rng.randbytes(max(1, (length - len(prefix)) // 2)).hex().encode()


def _random_ip(rng: random.Random, ranges: list[tuple[int, int]]) -> bytes:
    first, size = ranges[rng.randrange(len(ranges))]
    a = first + rng.randrange(max(1, size))
    return f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}".encode()


async def _load(spec: dict[str, Any], done: asyncio.Event) -> dict[str, Any]:
    """Keep-alive request load at `rate` req/s (0: as fast as it goes) over `connections`,
    `pipeline` requests per write; counts every answer by status."""
    port = spec["port"]
    heads: list[bytes] = spec["heads"]
    rate = float(spec.get("rate", 0))
    conns = int(spec.get("connections", 16))
    depth = int(spec.get("pipeline", 1))
    referer_len = int(spec.get("referer_len", 200))
    ranges: list[tuple[int, int]] = spec.get("ip_ranges") or [(16843009, 200)]
    statuses: Counter[int] = Counter()
    stats = {"sent": 0, "errors": 0, "connects": 0}
    loop = asyncio.get_running_loop()
    interval = conns * depth / rate if rate else 0.0
    started = loop.time()

    def request(i: int, rng: random.Random) -> bytes:
        head = heads[i % len(heads)]
        if b"\x00" in head:
            head = head.replace(b"\x00UA\x00", _random_ua(rng))
            head = head.replace(b"\x00IP\x00", _random_ip(rng, ranges))
            head = head.replace(b"\x00REF\x00", _random_referer(rng, referer_len))
        return head

    async def one(n: int) -> None:
        rng = random.Random(n * 7919 + 1)
        i = n * 104729
        next_t = started + rng.random() * interval
        while not done.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
            except (OSError, TimeoutError):
                stats["errors"] += 1
                await asyncio.sleep(0.05)
                continue
            stats["connects"] += 1
            try:
                close = False
                while not done.is_set() and not close:
                    if interval:
                        now = loop.time()
                        if next_t > now:
                            await asyncio.sleep(next_t - now)
                        next_t = max(next_t + interval, loop.time() - 1.0)
                    batch = [request(i + k, rng) for k in range(depth)]
                    i += depth
                    writer.write(b"".join(batch))
                    stats["sent"] += depth
                    for _ in range(depth):
                        status, close = await asyncio.wait_for(_read_response(reader), 30)
                        statuses[status] += 1
                        if close:
                            break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                stats["errors"] += 1
            except TimeoutError:
                stats["errors"] += 1
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    tasks = [asyncio.create_task(one(n)) for n in range(conns)]
    await done.wait()
    await asyncio.wait(tasks, timeout=10)
    for t in tasks:
        t.cancel()
    elapsed = loop.time() - started
    return {
        **stats,
        "statuses": dict(statuses),
        "answered": sum(statuses.values()),
        "redirects": statuses.get(302, 0),
        "seconds": round(elapsed, 2),
        "rate": round(sum(statuses.values()) / elapsed, 1) if elapsed else 0.0,
    }


async def _churn(spec: dict[str, Any], done: asyncio.Event) -> dict[str, Any]:
    """A connection flood: connect, send one request, reset the connection without
    reading the answer; `connections` of these at a time, as fast as they go."""
    port = spec["port"]
    payload: bytes = spec.get("payload", b"")
    conns = int(spec.get("connections", 256))
    stats = {"opened": 0, "failed": 0}
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one() -> None:
        while not done.is_set():
            try:
                _reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
            except (OSError, TimeoutError):
                stats["failed"] += 1
                await asyncio.sleep(0.01)
                continue
            stats["opened"] += 1
            if payload:
                writer.write(payload)
            writer.transport.abort()

    tasks = [asyncio.create_task(one()) for _ in range(conns)]
    await done.wait()
    await asyncio.wait(tasks, timeout=5)
    for t in tasks:
        t.cancel()
    elapsed = loop.time() - started
    return {**stats, "seconds": round(elapsed, 2), "per_s": round(stats["opened"] / elapsed)}


async def _idle(spec: dict[str, Any], done: asyncio.Event) -> dict[str, Any]:
    """Hold `count` connections that send nothing; reopen each one the server closes."""
    port = spec["port"]
    count = int(spec["count"])
    stats = {"open": 0, "peak_open": 0, "closed_by_server": 0, "connect_failures": 0}
    answers: Counter[str] = Counter()
    held_s: list[float] = []
    loop = asyncio.get_running_loop()

    async def hold() -> None:
        while not done.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
            except (OSError, TimeoutError):
                stats["connect_failures"] += 1
                await asyncio.sleep(0.2)
                continue
            opened = loop.time()
            stats["open"] += 1
            stats["peak_open"] = max(stats["peak_open"], stats["open"])
            try:
                read = asyncio.ensure_future(reader.read(4096))
                stop = asyncio.ensure_future(done.wait())
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if read.done() and not read.cancelled():
                    data = read.result() if read.exception() is None else b""
                    answers[data[:12].decode("latin-1") or "closed"] += 1
                    stats["closed_by_server"] += 1
                    held_s.append(loop.time() - opened)
                else:
                    read.cancel()
            finally:
                stats["open"] -= 1
                writer.transport.abort()
            await asyncio.sleep(0.1)

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(hold()))
        if len(tasks) % 250 == 0:
            await asyncio.sleep(0.02)  # stay within the listen backlog
    await done.wait()
    await asyncio.wait(tasks, timeout=10)
    for t in tasks:
        t.cancel()
    held_s.sort()
    return {
        **stats,
        "answers": dict(answers),
        "median_held_s": round(held_s[len(held_s) // 2], 1) if held_s else None,
    }


async def _chunked(spec: dict[str, Any], done: asyncio.Event) -> dict[str, Any]:
    """The chunk-extension attack: a chunked request head, then the same chunk (a 1-byte
    chunk with a long extension) again and again, every `interval_s` until the server
    answers or closes (interval 0: the head and `chunks` chunks in one write, then wait
    for the answer); then again on a new connection."""
    port = spec["port"]
    head: bytes = spec["head"]
    piece: bytes = spec["piece"]
    interval = float(spec.get("interval_s", 0))
    conns = int(spec.get("connections", 8))
    statuses: Counter[str] = Counter()
    stats = {"requests": 0, "bytes_sent": 0, "errors": 0}

    async def one() -> None:
        while not done.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5
                )
            except (OSError, TimeoutError):
                stats["errors"] += 1
                await asyncio.sleep(0.05)
                continue
            stats["requests"] += 1
            answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
            try:
                if interval:
                    writer.write(head)
                    stats["bytes_sent"] += len(head)
                    while not done.is_set() and not answer.done():
                        if writer.transport.is_closing():
                            break
                        writer.write(piece)
                        stats["bytes_sent"] += len(piece)
                        await asyncio.sleep(interval)
                else:  # the whole request at once: `chunks` of them after the head
                    burst = head + piece * int(spec.get("chunks", 64))
                    writer.write(burst)
                    stats["bytes_sent"] += len(burst)
                    await writer.drain()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(answer), 2)
            except (OSError, asyncio.IncompleteReadError):
                stats["errors"] += 1
            finally:
                if answer.done() and not answer.cancelled() and answer.exception() is None:
                    statuses[answer.result()[9:12].decode("latin-1")] += 1
                elif not done.is_set():
                    statuses["closed"] += 1
                answer.cancel()
                writer.transport.abort()

    tasks = [asyncio.create_task(one()) for _ in range(conns)]
    await done.wait()
    await asyncio.wait(tasks, timeout=5)
    for t in tasks:
        t.cancel()
    return {**stats, "statuses": dict(statuses)}


# --- one scenario's run ----------------------------------------------------------------------


class Run:
    """A scenario's server with its probe(s) and RSS sampler, and the standard checks."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        admin_probe: bool = False,
        db: Path | None = None,
        geoip: Path | None = None,
        args: tuple[str, ...] = (),
        fd_limit: int | None = None,
        warm_s: float = 1.5,
    ) -> None:
        self.ctx = ctx
        self.work = Path(tempfile.mkdtemp(prefix=f"linkedge-hostile-{name}-"))
        self.server = Server(
            self.work,
            ctx.data,
            db=db,
            geoip=ctx.data.mmdb if geoip is None else geoip,
            args=args,
            fd_limit=fd_limit,
        )
        self.db = self.server.db
        self.sampler = Sampler(self.server)
        self.sampler.start()
        self.probe = Probe(self.server.edge_port, f"/{ctx.data.slugs[0]}")
        self.probe.start()
        self.health = Probe(self.server.admin_port, "/healthz", 200, True) if admin_probe else None
        if self.health is not None:
            self.health.start()
        self.workers: list[Worker] = []
        time.sleep(warm_s)
        self.baseline_rss = self.server.rss_mb()
        self.t_attack = time.time()
        self.cpu_at_attack = self.server.cpu_s()

    def worker(self, spec: dict[str, Any]) -> Worker:
        w = Worker(spec)
        self.workers.append(w)
        return w

    def load(self, rate: float, seconds: float | None = None, **spec: Any) -> Worker:
        """Background load: realistic redirects at `rate` req/s over 16 connections."""
        spec.setdefault("heads", self.ctx.heads)
        spec.setdefault("ip_ranges", self.ctx.data.ip_ranges)
        w = self.worker(
            {"kind": "load", "port": self.server.edge_port, "rate": rate, "connections": 16, **spec}
        )
        if seconds:
            time.sleep(seconds)
        return w

    def end_probes(self) -> None:
        self.probe.stop()
        if self.health is not None:
            self.health.stop()

    def finish(self) -> dict[str, Any]:
        """Stop everything still running; the figures the standard checks read."""
        results = [w.stop() for w in self.workers]
        self.end_probes()
        cores = (self.server.cpu_s() - self.cpu_at_attack) / max(0.1, time.time() - self.t_attack)
        stopped = self.server.stop()
        self.sampler.stop()
        out = {
            "probe": self.probe.summary(self.t_attack),
            "health": self.health.summary(self.t_attack) if self.health else None,
            "workers": results,
            "server": stopped,
            "server_cores": round(cores, 2) if self.server.alive or cores > 0 else None,
            "rss_baseline_mb": round(self.baseline_rss, 1),
            "rss_peak_mb": round(self.sampler.peak(self.t_attack), 1),
            "rows": count_rows(self.db),
            "integrity": integrity(self.db),
            "client_302s": self.probe.ok + sum(r.get("redirects", 0) for r in results),
        }
        return out

    def cleanup(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop(5)
        with contextlib.suppress(Exception):
            self.end_probes()
        if self.server.alive:
            self.server.kill9()
        self.sampler.stop()
        logs = CACHE / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        name = self.work.name.removeprefix("linkedge-hostile-").rsplit("-", 1)[0]
        for p in (self.server.stdout, self.server.stderr):
            if p.exists():
                shutil.copyfile(p, logs / f"{name}-{p.name}")
        shutil.rmtree(self.work, ignore_errors=True)


def standard_checks(
    o: Outcome,
    f: dict[str, Any],
    *,
    latency_ms: float,
    rss_mb: float = RSS_BOUND_MB,
    zero_loss: bool = True,
) -> None:
    o.figures.update(f)
    p = f["probe"]
    o.check(
        "service available (probe every 50-100 ms)",
        "0 failed probes",
        f"{p['failures']} failed of {p['requests']}"
        + (f" ({p['first_failures'][0]})" if p["first_failures"] else ""),
        p["failures"] == 0 and p["requests"] > 0,
    )
    o.check(
        "max redirect latency (probe)",
        f"<= {latency_ms:g} ms",
        f"{p['max_ms']} ms (p50 {p['p50_ms']}, p99 {p['p99_ms']}; server CPU "
        f"{f.get('server_cores')} cores)",
        p["max_ms"] is not None and p["max_ms"] <= latency_ms,
    )
    growth = f["rss_peak_mb"] - f["rss_baseline_mb"]
    o.check(
        "RSS growth of the server's process tree",
        f"<= {rss_mb:g} MB",
        f"+{growth:.0f} MB ({f['rss_baseline_mb']:.0f} -> peak {f['rss_peak_mb']:.0f} MB)",
        growth <= rss_mb,
    )
    if zero_loss:
        s = f["server"]
        served = s.get("served")
        rows = f["rows"]
        ok = (
            served is not None
            and rows == served
            and s.get("unwritten") == 0
            and s.get("dropped") == 0
            and f["client_302s"] <= rows
        )
        o.check(
            "rows in clicks == redirects served",
            "equal; 0 dropped, 0 unwritten",
            f"{rows:,} rows / {served if served is not None else '?':,} served "
            f"(clients read {f['client_302s']:,} 302s; dropped {s.get('dropped', '?')}, "
            f"unwritten {s.get('unwritten', '?')}, exit {s.get('exit')})",
            ok,
        )
    o.check("PRAGMA integrity_check", "ok", f["integrity"], f["integrity"] == "ok")


# --- scenarios ---------------------------------------------------------------------------------


@dataclass
class Context:
    data: Data
    quick: bool
    heads: list[bytes]
    fuzz_seconds: float

    def d(self, full: float, quick: float) -> float:
        return quick if self.quick else full


def _slowhttptest(ctx: Context, o: Outcome, mode: str) -> None:
    tool = ensure_debian_tool("slowhttptest", "slowhttptest")
    run = Run(ctx, mode)
    try:
        duration = ctx.d(40, 12)
        url = f"http://127.0.0.1:{run.server.edge_port}/{ctx.data.slugs[1]}"
        if mode == "slowloris":
            conns = int(ctx.d(3000, 1000))
            opts = ["-H", "-c", str(conns), "-r", "300", "-i", "10", "-s", "8192", "-x", "24"]
        else:
            conns = int(ctx.d(2000, 600))
            opts = ["-X", "-c", str(conns), "-r", "200", "-w", "512", "-y", "1024"]
            opts += ["-n", "5", "-z", "32", "-k", "3"]
        cmd = ["nice", "-n", str(WORKER_NICE), tool, *opts, "-l", str(int(duration))]
        cmd += ["-u", url, "-t", "GET", "-p", "3", "-g", "-o", str(run.work / "slowhttp")]
        log = (run.work / "slowhttptest.log").open("wb")
        tool_proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pin_here
        )
        try:
            tool_proc.wait(duration + 60)
        except subprocess.TimeoutExpired:
            tool_proc.kill()
        log.close()
        text = (run.work / "slowhttptest.log").read_text(errors="replace")
        f = run.finish()
        f["slowhttptest"] = _slowhttptest_summary(text, run.work / "slowhttp.csv")
        f["slowhttptest"]["exit"] = tool_proc.returncode
        o.figures["command"] = " ".join(cmd[3:])
        standard_checks(o, f, latency_ms=ATTACK_LATENCY_MS)
        st = f["slowhttptest"]
        o.check(
            f"{mode} connections held at once (slowhttptest)",
            f"the attack ran: up to {conns:,} connections",
            f"peak {st.get('peak_connected', '?')} connected, exit {st['exit']}",
            None,
        )
    finally:
        run.cleanup()


def _slowhttptest_summary(text: str, csv: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if csv.exists():
        rows = [ln.split(",") for ln in csv.read_text(errors="replace").splitlines()[1:]]
        # seconds,closed,pending,connected,service_available
        with contextlib.suppress(ValueError, IndexError):
            out["peak_connected"] = max(int(r[3]) for r in rows if len(r) >= 5)
            out["service_unavailable_samples"] = sum(
                1 for r in rows if len(r) >= 5 and int(r[4]) == 0
            )
    m = re.findall(r"service available:\s+(\w+)", text)
    if m:
        out["says_available"] = m[-1]
    return out


def scenario_slowloris(ctx: Context, o: Outcome) -> None:
    _slowhttptest(ctx, o, "slowloris")


def scenario_slow_read(ctx: Context, o: Outcome) -> None:
    _slowhttptest(ctx, o, "slow-read")


def scenario_conn_flood(ctx: Context, o: Outcome) -> None:
    run = Run(ctx, "conn-flood")
    try:
        slug = ctx.data.slugs[2]
        payload = f"GET /{slug} HTTP/1.1\r\nHost: {workload.HOST}\r\n\r\n".encode()
        cpu0 = run.server.cpu_s()
        flood = run.worker(
            {"kind": "churn", "port": run.server.edge_port, "payload": payload, "connections": 256}
        )
        duration = ctx.d(20, 6)
        time.sleep(duration)
        stats = flood.stop()
        cpu = run.server.cpu_s() - cpu0
        f = run.finish()
        f["flood"] = stats
        ref = _reference_flood(payload, duration)
        f["reference"] = ref
        standard_checks(o, f, latency_ms=ATTACK_LATENCY_MS)
        o.check(
            "connection flood (connect, send a GET, reset)",
            "informational",
            f"{stats.get('opened', 0):,} connections ({stats.get('per_s', 0):,}/s), "
            f"{stats.get('failed', 0)} refused; server CPU {cpu / duration:.2f} cores",
            None,
        )
        rp = ref["probe"]
        o.check(
            "reference: a minimal uvloop 302 server under the same flood",
            "informational (what the kernel and uvloop allow here)",
            f"probe max {rp['max_ms']} ms (p50 {rp['p50_ms']}, p99 {rp['p99_ms']}), "
            f"{rp['failures']} failed; {ref['flood'].get('per_s', 0):,} connections/s",
            None,
        )
    finally:
        run.cleanup()


def _reference_flood(payload: bytes, duration: float) -> dict[str, Any]:
    """loadtests/peers/uvloop_minimal under the conn-flood flood, probed the same way."""
    cmd = [sys.executable, "-m", "loadtests.peers.uvloop_minimal"]
    if len(os.sched_getaffinity(0) | {SERVER_CORE}) > 1 and _which("taskset"):
        cmd = [machine.tool_path("taskset"), "-c", str(SERVER_CORE), *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        probe = Probe(port, "/x")
        probe.start()
        time.sleep(1.0)
        since = time.time()
        flood = Worker({"kind": "churn", "port": port, "payload": payload, "connections": 256})
        time.sleep(duration)
        stats = flood.stop()
        probe.stop()
        return {"probe": probe.summary(since), "flood": stats}
    finally:
        proc.kill()
        proc.wait()


def scenario_chunk_ext(ctx: Context, o: Outcome) -> None:
    run = Run(ctx, "chunk-ext")
    try:
        slug = ctx.data.slugs[3]
        head = (
            f"GET /{slug} HTTP/1.1\r\nHost: {workload.HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        phase = ctx.d(15, 8)  # long enough for a trickled body to reach 413 (~3.5 s)
        figures: dict[str, Any] = {}
        for name, piece, interval, conns in (
            ("fat", b"1;" + b"x" * 1000 + b"\r\nA\r\n", 0.0, 8),
            ("trickle", b"1;" + b"e" * 200 + b"\r\nA\r\n", 0.01, 100),
        ):
            cpu0 = run.server.cpu_s()
            rss0 = run.server.rss_mb()
            t0 = time.time()
            w = run.worker(
                {
                    "kind": "chunked",
                    "port": run.server.edge_port,
                    "head": head,
                    "piece": piece,
                    "interval_s": interval,
                    "connections": conns,
                }
            )
            time.sleep(phase)
            r = w.stop()
            figures[name] = {
                **r,
                "server_cores": round((run.server.cpu_s() - cpu0) / phase, 2),
                "rss_peak_mb": round(run.sampler.peak(t0), 1),
                "rss_before_mb": round(rss0, 1),
            }
        admin_head = (
            f"POST /api/links HTTP/1.1\r\nHost: 127.0.0.1:{run.server.admin_port}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        w = run.worker(
            {
                "kind": "chunked",
                "port": run.server.admin_port,
                "head": admin_head,
                "piece": b"1;" + b"x" * 1000 + b"\r\nA\r\n",
                "interval_s": 0.0,
                "connections": 8,
            }
        )
        time.sleep(ctx.d(5, 2))
        figures["admin"] = w.stop()
        f = run.finish()
        f["chunked"] = figures
        standard_checks(o, f, latency_ms=ATTACK_LATENCY_MS)
        for name, label in (
            ("fat", "64 1-byte chunks with 1 KB extensions a request, 8 connections flat out"),
            ("trickle", "1-byte chunks with 200 B extensions, 100 connections, every 10 ms"),
        ):
            r = figures[name]
            o.check(
                f"edge: {label}",
                "refused (400/413/408); informational",
                f"{r.get('requests', 0):,} requests, {r.get('bytes_sent', 0) / 1e6:.1f} MB sent, "
                f"answers {r.get('statuses')}, server CPU {r['server_cores']:.2f} cores",
                None,
            )
        admin = figures["admin"].get("statuses", {})
        refused = sum(n for s, n in admin.items() if s == "401")
        o.check(
            "admin: unauthenticated chunked POST refused before its body is read",
            "every answer 401",
            f"answers {admin}",
            refused > 0 and refused == sum(n for s, n in admin.items() if s != "closed"),
        )
    finally:
        run.cleanup()


def _health_samples(run: Run, since: float = 0.0) -> list[tuple[float, int, dict[str, Any]]]:
    assert run.health is not None
    return [(t, s, b) for t, s, b in run.health.bodies if t >= since and isinstance(b, dict)]


def scenario_ua_flood(ctx: Context, o: Outcome) -> None:
    run = Run(ctx, "ua-flood", admin_probe=True)
    try:
        heads = ctx.data.heads(2000, seed=9, ua=True)
        duration = ctx.d(20, 6)
        rate = 10_000
        t0 = time.time()
        w = run.worker(
            {
                "kind": "load",
                "port": run.server.edge_port,
                "heads": heads,
                "rate": rate,
                "connections": 64,
                "pipeline": 8,
            }
        )
        time.sleep(duration)
        flood = w.stop()
        t_flood_end = time.time()
        rss_flood_peak = run.sampler.peak(t0)
        # Let the pipeline drain before the stop, so that rows == served measures loss,
        # not a stop deadline.
        drain_limit = ctx.d(240, 90)
        drained_in = _wait_drained(run, drain_limit)
        rss_after = run.server.rss_mb()
        samples = _health_samples(run, t0)
        f = run.finish()
        lags = [b["pipeline"].get("flush_lag_s") or 0.0 for _, _, b in samples]
        depths = [b["pipeline"].get("queue_depth") or 0 for _, _, b in samples]
        lied = [
            (round(b["pipeline"]["flush_lag_s"], 1), b["status"])
            for _, _, b in samples
            if (b["pipeline"].get("flush_lag_s") or 0) > LAG_DEGRADED_S and b["status"] == "ok"
        ]
        f["flood"] = flood
        f["health_samples"] = len(samples)
        standard_checks(o, f, latency_ms=ATTACK_LATENCY_MS)
        o.check(
            "unique-UA flood offered",
            f"{rate:,} req/s for {duration:g} s",
            f"{flood.get('answered', 0):,} answered at {flood.get('rate', 0):,.0f} req/s",
            None,
        )
        o.check(
            "writer lag under the flood (/healthz flush_lag_s)",
            f"<= {LAG_BOUND_S:g} s",
            f"max {max(lags, default=0):.1f} s; backlog max {max(depths, default=0):,} clicks"
            + (
                f"; drained {drained_in:.0f} s after the flood"
                if drained_in is not None
                else f"; not drained {drain_limit:g} s after"
            ),
            max(lags, default=0) <= LAG_BOUND_S,
        )
        o.check(
            f"/healthz degraded while the lag is over {LAG_DEGRADED_S:g} s",
            'never "ok" then',
            f'{len(lied)} of {len(samples)} samples said "ok" with the lag over '
            f"{LAG_DEGRADED_S:g} s" + (f" (e.g. {lied[len(lied) // 2][0]} s)" if lied else ""),
            not lied,
        )
        o.check(
            "RSS once drained",
            "back near the warm value (informational)",
            f"{rss_after:.0f} MB (warm {run.baseline_rss:.0f}, peak under the flood "
            f"{rss_flood_peak:.0f}); flood ended {time.time() - t_flood_end:.0f} s before",
            None,
        )
    finally:
        run.cleanup()


def _wait_drained(run: Run, limit_s: float) -> float | None:
    """Seconds until /healthz shows an empty queue, or None after limit_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(run.server.admin_port, "/healthz")
            parsed = json.loads(body)
            if parsed.get("pipeline", {}).get("queue_depth") == 0:
                return time.monotonic() - t0
        time.sleep(0.5)
    return None


def _raw_request(port: int, data: bytes, timeout_s: float = 5.0) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(data)
        got = b""
        while b"\r\n" not in got:
            block = s.recv(4096)
            if not block:
                break
            got += block
    return int(got[9:12]) if got.startswith(b"HTTP/1.") else 0


def scenario_long_headers(ctx: Context, o: Outcome) -> None:
    run = Run(ctx, "long-headers")
    try:
        slug = ctx.data.slugs[4]
        base = f"GET /{slug} HTTP/1.1\r\nHost: {workload.HOST}\r\nUser-Agent: long-headers/1.0\r\n"

        def head_of(total: int, name: str = "Cookie") -> bytes:
            # `total` counts the head without its final CRLFCRLF, as the limit does.
            pad = total - len(base) - len(name) - 2 - 2
            return f"{base}{name}: {'c' * pad}\r\n\r\n".encode()

        near = _raw_request(run.server.edge_port, head_of(16_300))
        over = _raw_request(run.server.edge_port, head_of(16_500))
        referer = "https://news.example.org/a?q=" + "r" * (15_000 - 29)
        long_ref = _raw_request(
            run.server.edge_port,
            f"{base}Referer: {referer}\r\nX-Forwarded-For: 81.2.69.142\r\n\r\n".encode(),
        )
        time.sleep(0.5)
        stored = _max_referer_length(run.db)
        # A flood of them: every request a new 15,000-character Referer.
        heads = ctx.data.heads(500, seed=11, referer=True)
        w = run.load(500, ctx.d(20, 6), heads=heads, referer_len=15_000)
        flood = w.stop()
        time.sleep(1.0)
        f = run.finish()
        f["flood"] = flood
        db_mb = sum(p.stat().st_size for p in run.work.glob("linkedge.db*") if p.exists()) / 1e6
        standard_checks(o, f, latency_ms=ATTACK_LATENCY_MS)
        o.check("a 16,300-byte head (under the 16 KiB limit)", "302", str(near), near == 302)
        o.check("a 16,500-byte head (over the limit)", "431", str(over), over == 431)
        o.check(
            "a 15,000-character Referer: answer and what is stored",
            f"302; stored <= {STORED_REFERER_MAX:,} characters",
            f"{long_ref}; stored {stored:,} characters",
            long_ref == 302 and stored <= STORED_REFERER_MAX,
        )
        o.check(
            "flood of 15,000-character Referers (500 req/s)",
            "informational",
            f"{flood.get('answered', 0):,} answered; database + WAL {db_mb:.0f} MB after "
            f"{f['rows']:,} rows",
            None,
        )
    finally:
        run.cleanup()


def _max_referer_length(db: Path) -> int:
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        row = conn.execute("SELECT max(length(referrer)) FROM clicks").fetchone()
        return int(row[0] or 0)
    finally:
        conn.close()


def scenario_idle_5000(ctx: Context, o: Outcome) -> None:
    run = Run(ctx, "idle-5000", admin_probe=True)
    try:
        count = 5000
        edge = run.worker({"kind": "idle", "port": run.server.edge_port, "count": count})
        admin = run.worker({"kind": "idle", "port": run.server.admin_port, "count": count})
        time.sleep(ctx.d(30, 12))
        edge_r, admin_r = edge.stop(), admin.stop()
        f = run.finish()
        f["idle"] = {"edge": edge_r, "admin": admin_r}
        standard_checks(o, f, latency_ms=ATTACK_LATENCY_MS)
        h = f["health"]
        o.check(
            "/healthz answerable with 5,000 idle admin connections",
            "0 failed /healthz probes",
            f"{h['failures']} failed of {h['requests']}"
            + (f" ({h['first_failures'][0]})" if h["first_failures"] else ""),
            h["failures"] == 0,
        )
        for label, r in (("edge", edge_r), ("admin", admin_r)):
            o.check(
                f"{label}: idle connections",
                f"{count:,} attempted (informational)",
                f"peak {r.get('peak_open', 0):,} open; {r.get('closed_by_server', 0):,} closed "
                f"by the server (median after {r.get('median_held_s')} s), answers "
                f"{r.get('answers')}",
                None,
            )
    finally:
        run.cleanup()


def scenario_fd_limit(ctx: Context, o: Outcome) -> None:
    """ulimit -n 1024 with max_connections 10000 (defect 10): the 1,025th connection."""
    run = Run(ctx, "fd-limit", fd_limit=1024)
    try:
        idle = run.worker({"kind": "idle", "port": run.server.edge_port, "count": 1500})
        time.sleep(ctx.d(10, 6))
        idle_r = idle.stop()
        time.sleep(0.5)
        # Read once the descriptors are free again (during the flood /metrics cannot be
        # reached either: the admin listener shares the process's limit).
        metrics = b""
        with contextlib.suppress(OSError, ValueError):
            _, metrics = http_get(run.server.admin_port, "/metrics")
        counted = [
            ln.decode()
            for ln in metrics.splitlines()
            if not ln.startswith(b"#") and (b"accept" in ln or b"rejected" in ln)
        ]
        f = run.finish()
        f["idle"] = idle_r
        log = run.server.log().lower()
        logged = any(
            w in log for w in ("too many open files", "accept failed", "emfile", "file descriptor")
        )
        standard_checks(o, f, latency_ms=ATTACK_LATENCY_MS)
        o.check(
            "fd exhaustion is logged or counted",
            "a log line or a metric",
            ("a log line" if logged else "nothing in the log")
            + f"; /metrics: {'; '.join(counted) or 'no accept/rejected counter'}",
            logged,
        )
    finally:
        run.cleanup()


def scenario_kill9(ctx: Context, o: Outcome) -> None:
    trials = int(ctx.d(3, 1))
    rate = 1000.0
    bound = int(KILL9_LOSS_INTERVALS * FLUSH_INTERVAL_S * rate)
    losses = []
    for trial in range(trials):
        run = Run(ctx, f"kill9-{trial}")
        try:
            w = run.load(rate, ctx.d(8, 4) + trial * 0.37, heads=ctx.data.heads(4000, ip=True))
            run.server.kill9()
            load = w.stop()
            run.end_probes()
            run.sampler.stop()
            rows = count_rows(run.db)
            client = run.probe.ok + load.get("redirects", 0)
            check = integrity(run.db)
            # A restart on the same file: catches up the rollups, serves, stops cleanly.
            restarted = Server(run.work / "restart", ctx.data, db=run.db, geoip=ctx.data.mmdb)
            status, _ = http_get(restarted.edge_port, f"/{ctx.data.slugs[0]}")
            again = restarted.stop()
            losses.append(
                {
                    "client_302s": client,
                    "rows": rows,
                    "lost": max(0, client - rows),
                    "rate": load.get("rate"),
                    "integrity": check,
                    "restart_status": status,
                    "restart_exit": again.get("exit"),
                }
            )
        finally:
            run.cleanup()
    o.figures["trials"] = losses
    worst = max(losses, key=lambda x: x["lost"])
    o.check(
        "clicks lost to kill -9 (302s clients read - rows)",
        f"<= {bound} (the clicks of {KILL9_LOSS_INTERVALS} flush intervals at {rate:,.0f} req/s)",
        ", ".join(f"{x['lost']} of {x['client_302s']:,}" for x in losses)
        + f" ({worst['lost'] / rate * 1000:.0f} ms of traffic at worst)",
        worst["lost"] <= bound,
    )
    o.check(
        "PRAGMA integrity_check after kill -9",
        "ok",
        ", ".join(x["integrity"] for x in losses),
        all(x["integrity"] == "ok" for x in losses),
    )
    o.check(
        "restart on the same database",
        "starts, answers 302, stops with exit 0",
        ", ".join(f"{x['restart_status']} / exit {x['restart_exit']}" for x in losses),
        all(x["restart_status"] == 302 and x["restart_exit"] == 0 for x in losses),
    )


def scenario_sigterm(ctx: Context, o: Outcome) -> None:
    run = Run(ctx, "sigterm")
    try:
        run.load(1000, ctx.d(10, 4), heads=ctx.data.heads(4000, ip=True))
        run.end_probes()  # availability is judged up to the signal
        stopped = run.server.stop()  # the load goes on meanwhile
        time.sleep(0.5)
        f = run.finish()
        standard_checks(o, f, latency_ms=FAULT_LATENCY_MS)
        o.check(
            "SIGTERM under 1,000 req/s: stop",
            "exit 0 within shutdown_timeout_s (10 s)",
            f"exit {stopped.get('exit')} after {stopped.get('stop_s')} s",
            stopped.get("exit") == 0 and stopped.get("stop_s", 99) <= 10,
        )
    finally:
        run.cleanup()


def scenario_disk_full(ctx: Context, o: Outcome) -> None:
    if os.geteuid() != 0:
        raise Skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="linkedge-hostile-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        mount.rmdir()
        raise Skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    run: Run | None = None
    try:
        db = workload.copy_db(ctx.data.links_db, mount / "linkedge.db")
        run = Run(ctx, "disk-full", admin_probe=True, db=db)
        run.load(1000, 3, heads=ctx.data.heads(4000, ip=True))
        filler = mount / "filler"
        t_full = time.time()
        _fill(filler)
        free_full = shutil.disk_usage(mount).free
        time.sleep(ctx.d(20, 8))
        filler.unlink()
        t_free = time.time()
        time.sleep(ctx.d(5, 3))
        for w in run.workers:
            w.stop()
        drained = _wait_drained(run, 60)
        samples = _health_samples(run, t_full)
        errors = sorted(
            {
                str(b["pipeline"].get("last_error"))[:80]
                for t, _, b in samples
                if t < t_free and b["pipeline"].get("last_error")
            }
        )
        f = run.finish()
        f["disk_full_errors"] = errors
        standard_checks(o, f, latency_ms=FAULT_LATENCY_MS)
        o.check(
            "the disk was full and writes failed meanwhile",
            "write errors seen on /healthz (informational)",
            f"{free_full:,} bytes free; errors: {'; '.join(errors) or 'none seen'}; "
            + ("drained" if drained is not None else "not drained")
            + " after space returned",
            None,
        )
    finally:
        if run is not None:
            run.cleanup()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        with contextlib.suppress(OSError):
            mount.rmdir()


def _fill(path: Path) -> None:
    """Write zeros until the file system is full (ENOSPC), then stop."""
    block = b"\0" * (1 << 20)
    with path.open("wb", buffering=0) as f:
        size = len(block)
        while size:
            try:
                f.write(block[:size])
            except OSError:
                size //= 4
        os.fsync(f.fileno())


def scenario_locked_db(ctx: Context, o: Outcome) -> None:
    run = Run(ctx, "locked-db", admin_probe=True)
    try:
        run.load(1000, 3, heads=ctx.data.heads(4000, ip=True))
        hold_s = 12.0
        conn = sqlite3.connect(str(run.db), timeout=10, isolation_level=None)
        t0 = time.time()
        conn.execute("BEGIN EXCLUSIVE")
        got = time.time()
        time.sleep(hold_s)
        conn.execute("COMMIT")
        conn.close()
        t_released = time.time()
        time.sleep(ctx.d(5, 3))
        for w in run.workers:
            w.stop()
        _wait_drained(run, 60)
        during = [(s, b) for t, s, b in _health_samples(run, got) if t < t_released]
        f = run.finish()
        standard_checks(o, f, latency_ms=FAULT_LATENCY_MS)
        unhealthy = sum(1 for s, b in during if b.get("status") != "ok")
        o.check(
            f"BEGIN EXCLUSIVE held {hold_s:g} s by another connection",
            "/healthz says unavailable meanwhile (informational)",
            f"lock taken after {got - t0:.2f} s; {unhealthy} of {len(during)} /healthz "
            "answers during the lock not ok",
            None,
        )
    finally:
        run.cleanup()


def scenario_geoip_replace(ctx: Context, o: Outcome) -> None:
    from loadtests import geodb

    work = Path(tempfile.mkdtemp(prefix="linkedge-hostile-geo-"))
    run: Run | None = None
    try:
        live = work / "live.mmdb"
        v1 = ctx.data.mmdb
        shutil.copyfile(v1, live)
        v2 = work / "v2.mmdb"
        time.sleep(1.1)  # another build epoch, so a reload shows on /healthz
        geodb.build(v2, GEO_NETWORKS)
        run = Run(ctx, "geoip-replace", admin_probe=True, geoip=live)
        heads = ctx.data.heads(4000, seed=5, ip=True)
        run.load(1000, 3, heads=heads, ip_ranges=ctx.data.ip_ranges)
        settle = ctx.d(6, 4)
        phases: list[tuple[str, float, float]] = []

        epochs = {_mmdb_epoch(v1): "v1", _mmdb_epoch(v2): "v2"}
        serving: list[tuple[str, str, str]] = []  # (phase, expected, what /metrics says)

        def phase(name: str, action: Callable[[], None], expect: str) -> None:
            t = time.time()
            action()
            time.sleep(settle)
            phases.append((name, t, time.time()))
            serving.append((name, expect, epochs.get(_geoip_epoch(run) or -1, "?")))

        def rename_v2() -> None:
            tmp = work / "live.tmp"
            shutil.copyfile(v2, tmp)
            os.replace(tmp, live)

        def slow_copy(src: Path) -> None:
            data = src.read_bytes()
            with live.open("r+b") as f:
                f.truncate(0)
                for i in range(0, len(data), 64 * 1024):
                    f.write(data[i : i + 64 * 1024])
                    f.flush()
                    time.sleep(0.02)

        assert run is not None
        phase("atomic rename (os.replace)", rename_v2, "v2")
        phase("cp over it in place", lambda: _run(["cp", str(v1), str(live)]), "v1")
        # An empty file is refused; the database in use stays.
        phase("truncation (: > file)", lambda: _run(["sh", "-c", f": > '{live}'"]), "v1")
        phase("cp back after the truncation", lambda: _run(["cp", str(v2), str(live)]), "v2")
        phase("slow in-place copy (64 KiB every 20 ms)", lambda: slow_copy(v1), "v1")
        for w in run.workers:
            w.stop()
        alive = run.server.alive
        samples = _health_samples(run, run.t_attack)
        geo_errors = sorted(
            {str((b.get("geoip") or {}).get("error"))[:90] for _, _, b in samples} - {"None"}
        )
        reloads = run.server.log().count("GeoIP database reloaded")
        f = run.finish()
        shares = []
        for name, t0, t1 in phases:
            total = count_rows(run.db, "WHERE ts >= ? AND ts < ?", (t0 * 1000, t1 * 1000))
            located = count_rows(
                run.db,
                "WHERE ts >= ? AND ts < ? AND country IS NOT NULL",
                (t0 * 1000, t1 * 1000),
            )
            shares.append((name, located, total))
        f["phases"] = shares
        f["serving"] = serving
        f["geoip_errors"] = geo_errors
        standard_checks(o, f, latency_ms=FAULT_LATENCY_MS)
        o.check(
            "server alive through every replacement",
            "no crash (SIGBUS was defect 1)",
            "alive" if alive else f"died: exit {f['server'].get('exit')}",
            alive,
        )
        worst = min((loc / tot if tot else 0.0) for _, loc, tot in shares)
        o.check(
            "clicks geolocated in every phase",
            ">= 95% with a country (addresses all inside the database)",
            "; ".join(
                f"{n}: {loc / tot:.0%}" if tot else f"{n}: no clicks" for n, loc, tot in shares
            ),
            worst >= 0.95,
        )
        o.check(
            "the database in use after each replacement (/metrics build time)",
            "the new file once it holds still; the old one while the file is empty",
            "; ".join(
                f"{n}: {got}" + ("" if got == want else f" (want {want})")
                for n, want, got in serving
            )
            + f"; {reloads} reloads logged; /healthz errors: {'; '.join(geo_errors) or 'none'}",
            all(got == want for _, want, got in serving),
        )
    finally:
        if run is not None:
            run.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def _mmdb_epoch(path: Path) -> int:
    import maxminddb

    with maxminddb.open_database(str(path)) as reader:
        return int(reader.metadata().build_epoch)


def _geoip_epoch(run: Run) -> int | None:
    """The build time of the GeoIP database the server uses, from /metrics."""
    with contextlib.suppress(OSError, ValueError):
        _, text = http_get(run.server.admin_port, "/metrics")
        m = re.search(rb"(?m)^linkedge_geoip_build_timestamp_seconds (\d+)", text)
        if m:
            return int(m.group(1))
    return None


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True)


def scenario_fuzz(ctx: Context, o: Outcome) -> None:
    out = Path(tempfile.mkstemp(prefix="linkedge-fuzz-", suffix=".json")[1])
    try:
        cmd = [sys.executable, "-m", "loadtests.fuzz", "--seconds", f"{ctx.fuzz_seconds:g}"]
        done = subprocess.run([*cmd, "--json-out", str(out)], cwd=ROOT, timeout=3600)
        o.figures["command"] = " ".join(["python", *cmd[1:]])
        report = json.loads(out.read_text()) if out.stat().st_size else {}
    finally:
        out.unlink(missing_ok=True)
    if "skipped" in report:
        raise Skip(f"{report['skipped']} (make hostile installs the fuzz extra)")
    if done.returncode not in (0, 1) or "results" not in report:
        raise RuntimeError(f"loadtests.fuzz exited {done.returncode}")
    o.figures["fuzz"] = report["results"]
    for r in report["results"]:
        failures = r["failures"]
        o.check(
            f"fuzz {r['target']} ({r['seconds']:g} s)",
            "no exception but the protocol error; invariants hold",
            f"{r['executions']:,} executions, cov {r['coverage']}, ft {r['features']}; "
            + (
                f"{len(failures)} distinct failure(s): "
                + "; ".join(f"{x['signature']} ({Path(x['input']).name})" for x in failures)
                if failures
                else "0 failures"
            ),
            r["ok"],
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[Context, Outcome], None]


SCENARIOS: Final = (
    Scenario("slowloris", "slowhttptest slowloris (-H)", scenario_slowloris),
    Scenario("slow-read", "slowhttptest slow read (-X)", scenario_slow_read),
    Scenario("conn-flood", "connection flood (connect, GET, reset)", scenario_conn_flood),
    Scenario("chunk-ext", "chunk-extension attack, edge and admin", scenario_chunk_ext),
    Scenario("ua-flood", "unique User-Agent flood at 10k req/s", scenario_ua_flood),
    Scenario("long-headers", "heads near 16 KiB, 15,000-character Referers", scenario_long_headers),
    Scenario("idle-5000", "5,000 idle connections on edge and admin", scenario_idle_5000),
    Scenario("fd-limit", "file descriptors exhausted (ulimit -n 1024)", scenario_fd_limit),
    Scenario("kill9", "kill -9 under 1,000 req/s", scenario_kill9),
    Scenario("sigterm", "SIGTERM under 1,000 req/s", scenario_sigterm),
    Scenario("disk-full", "disk full (48 MB tmpfs) under 1,000 req/s", scenario_disk_full),
    Scenario("locked-db", "BEGIN EXCLUSIVE held 12 s under 1,000 req/s", scenario_locked_db),
    Scenario("geoip-replace", "GeoIP file replaced 4 ways under load", scenario_geoip_replace),
    Scenario("fuzz", "atheris: parser and URL validators", scenario_fuzz),
)


# --- the report ------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | check | target | measured | verdict |",
        "|---|---|---|---|---|",
    ]
    for s in results["scenarios"]:
        title = f"**{s['scenario']}**: {s['title']}"
        if s["skipped"]:
            lines.append(f"| {_cell(title)} | - | - | {_cell(s['skipped'])} | SKIP |")
            continue
        if s["error"]:
            last = s["error"].strip().splitlines()[-1]
            lines.append(f"| {_cell(title)} | (scenario) | runs | error: {_cell(last)} | FAIL |")
        for i, c in enumerate(s["checks"]):
            verdict = {"PASS": "PASS", "FAIL": "**FAIL**", "info": "-"}[c["verdict"]]
            lines.append(
                f"| {_cell(title) if i == 0 else ''} | {_cell(c['name'])} | "
                f"{_cell(c['target'])} | {_cell(c['measured'])} | {verdict} |"
            )
    counts = Counter(s["verdict"] for s in results["scenarios"])
    summary = ", ".join(f"{counts[v]} {v}" for v in ("PASS", "FAIL", "SKIP") if counts[v])
    return "\n".join(lines) + f"\n\nScenarios: {summary}.\n"


def describe() -> dict[str, Any]:
    """The machine, as machine.describe() tells it; that one needs wrk and nginx installed
    (it exits without wrk), which this suite does not use, so they are left out here."""
    import platform
    from importlib import metadata

    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    os_name = platform.system()
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    libraries: dict[str, str | None] = {}
    for pkg in (*machine.PACKAGES, "mmdb-writer", "atheris"):
        try:
            libraries[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            libraries[pkg] = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_name,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "libraries": libraries,
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu_model']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}, "
        f"kernel {info['kernel']}; Python {info['python']}, SQLite {info['sqlite']}"
        + (f", {info['slowhttptest']}" if info.get("slowhttptest") else "")
    )


def write_doc(results: dict[str, Any], table: str) -> Path:
    notes = ""
    if DOC.exists():
        old = DOC.read_text()
        at = old.find(NOTES_MARKER)
        if at >= 0:
            notes = old[at:]
    if not notes:
        notes = NOTES_MARKER + " the page -->\n"
    info = results["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items() if v)
    page = f"""# Reliability: attacks and faults

Run {results["started"]} - {results["finished"]} with:

```
{results["command"]}
```

(`make hostile` installs the `dev` and `fuzz` extras and runs `python -m loadtests.hostile`;
`make hostile HOSTILE_ARGS=--quick` is the short version, which leaves this page alone.)

Machine: {machine_line(info)}.

Libraries: {libs}.

Every scenario starts its own `linkedge serve` (edge and admin on 127.0.0.1, ports picked by
the kernel, `--trusted-proxy 127.0.0.1/32`, a 20,000-network City .mmdb, 200 links), pinned to
core 0; attackers and load run on the other core at nice 10. A probe asks for a redirect on a
new connection every 50-100 ms throughout; the server's RSS (its process tree, from /proc) is
sampled every 0.25 s; afterwards SIGTERM, rows in `clicks` against the redirects served, and
`PRAGMA integrity_check`. How each figure is taken, and what the targets protect:
[loadtests/README.md](../loadtests/README.md#hostile-make-hostile) and
[THREAT_MODEL.md](THREAT_MODEL.md).

Targets: probe failures 0; max probe latency <= {ATTACK_LATENCY_MS:g} ms under attack and
<= {FAULT_LATENCY_MS:g} ms during faults; RSS growth <= {RSS_BOUND_MB:g} MB; rows == redirects
served (kill -9: at most the clicks of {KILL9_LOSS_INTERVALS} flush intervals);
integrity_check ok. A miss is a FAIL with its figure: the targets are not moved to pass.

{table}
Raw figures of this run: `loadtests/results/hostile-latest.json`.

{notes}"""
    DOC.write_text(page)
    return DOC


def write_results(results: dict[str, Any], table: str, kind: str) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = {"full": "hostile-latest", "quick": "hostile-quick", "partial": "hostile-partial"}[kind]
    paths = [RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"]
    paths[0].write_text(json.dumps(results, indent=1, default=str) + "\n")
    head = f"# hostile run ({kind})\n\n`{results['command']}`, {results['started']} - "
    head += f"{results['finished']}\n\nMachine: {machine_line(results['machine'])}.\n\n"
    paths[1].write_text(head + table)
    return paths


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [s.name for s in SCENARIOS]
    p = argparse.ArgumentParser(
        prog="python -m loadtests.hostile",
        description="Attacks and faults against a real `linkedge serve`, each figure next to "
        "its target; writes loadtests/results/hostile-*.json/.md and (a full run) "
        "docs/reliability.md.",
        epilog="example:\n  python -m loadtests.hostile --quick\n"
        "  python -m loadtests.hostile --only slowloris,kill9\n"
        f"scenarios: {', '.join(names)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", help="comma-separated scenarios (default: all)")
    p.add_argument("--quick", action="store_true", help="short durations (~6 min in all)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument(
        "--fuzz-seconds", type=float, default=None, help="per fuzz target (60; --quick 10)"
    )
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/reliability.md")
    args = p.parse_args(argv)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            p.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(names)}")
        args.only = wanted
    if args.fuzz_seconds is None:
        args.fuzz_seconds = 10.0 if args.quick else 60.0
    return args


@contextlib.contextmanager
def _timed(o: Outcome) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        o.seconds = time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:14s} {s.title}")
        return 0
    command = "python -m loadtests.hostile " + " ".join(sys.argv[1:] if argv is None else argv)
    fds = raise_fd_limit()
    _pin_here()
    info = describe()
    tool = _which("slowhttptest")
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if tool is None and any(s.name in ("slowloris", "slow-read") for s in chosen):
        with contextlib.suppress(Skip):
            tool = ensure_debian_tool("slowhttptest", "slowhttptest")
    if tool:
        out = subprocess.run([tool, "-h"], capture_output=True, text=True)
        m = re.search(r"slowhttptest.*version ([\d.]+)", out.stdout + out.stderr)
        info["slowhttptest"] = f"slowhttptest {m.group(1)}" if m else "slowhttptest"
    print("hostile: " + machine_line(info) + f"; open files limit {fds}", flush=True)
    started = time.time()
    data = prepare()
    ctx = Context(data, args.quick, data.heads(4000), args.fuzz_seconds)
    outcomes = []
    for s in chosen:
        o = Outcome(s.name, s.title)
        print(f"\nhostile: {s.name}: {s.title}", flush=True)
        with _timed(o):
            try:
                s.run(ctx, o)
            except Skip as exc:
                o.skipped = str(exc)
                print(f"  SKIP  {exc}", flush=True)
            except Exception:
                o.error = traceback.format_exc()
                print(f"  FAIL  the scenario broke:\n{o.error}", flush=True)
        print(f"hostile: {s.name}: {o.verdict} ({o.seconds:.0f} s)", flush=True)
        outcomes.append(o)
    kind = "quick" if args.quick else "partial" if args.only else "full"
    results: dict[str, Any] = {
        "command": command.strip(),
        "kind": kind,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": info,
        "targets": {
            "attack_latency_ms": ATTACK_LATENCY_MS,
            "fault_latency_ms": FAULT_LATENCY_MS,
            "rss_bound_mb": RSS_BOUND_MB,
            "lag_bound_s": LAG_BOUND_S,
            "stored_referer_max": STORED_REFERER_MAX,
        },
        "scenarios": [o.as_dict() for o in outcomes],
    }
    table = markdown(results)
    print("\n" + table, flush=True)
    for path in write_results(results, table, kind):
        print(f"hostile: wrote {path.relative_to(ROOT)}", flush=True)
    if kind == "full" and not args.no_docs:
        print(f"hostile: wrote {write_doc(results, table).relative_to(ROOT)}", flush=True)
    return 1 if any(o.verdict == "FAIL" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
