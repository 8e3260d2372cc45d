# loadtests/common: what every benchmark shares, so that the scripts import down from here
# and never from each other (bench.py, pipeline.py, scale.py, workers.py, stalls.py, ...).
#
# Rules: this module imports only the standard library and the loadtests modules below it
# (machine, workload, geodb); nothing here imports a benchmark script. It holds:
# - paths (cache, results, the wrk script) and the cores: servers on SERVER_CORE, the load
#   generator on CLIENT_CORE (`pinned()` prefixes a command with taskset);
# - the shared workload: `prepare(links)` builds (once, cached) the links database, the
#   GeoIP database, the peers' files and wrk's request file;
# - starting linkedge (`linkedge_cmd()`, `start_linkedge()`), waiting for its listening
#   line, stopping it with SIGTERM and parsing its stop line (`stop_server()`);
# - wrk: `run_wrk()` (closed loop, or paced with a per-connection delay) and its JSON line;
# - CPU of a process tree from /proc: `wait_idle()`, `roles()` (supervisor, collector,
#   workers by their command line), `cpu_by_role()`;
# - writer lag: `LagSampler` (age of the newest row in `clicks`, read-only connection).
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from loadtests import geodb, machine, workload

ROOT: Final = Path(__file__).resolve().parent.parent
LOADTESTS: Final = ROOT / "loadtests"
CACHE: Final = LOADTESTS / ".cache"
RESULTS: Final = LOADTESTS / "results"
LUA: Final = LOADTESTS / "wrk" / "redirects.lua"
DOCS_PAGE: Final = ROOT / "docs" / "benchmarks.md"
SERVER_CORE: Final = "0"
CLIENT_CORE: Final = "1"
CLIENT_IPS: Final = 4000
GEO_NETWORKS: Final = 50_000

# The server's last line, e.g. "linkedge stopped: 9 redirects served, 9 clicks captured,
# 9 written, 0 dropped, 0 unwritten". Each figure is read by its own pattern, so fields
# added later (peak queue depth, flush lag) are picked up when the server prints them.
STOP_FIELDS: Final = {
    "served": re.compile(r"(\d+) redirects served"),
    "captured": re.compile(r"(\d+) clicks captured"),
    "written": re.compile(r"(\d+) written"),
    "dropped": re.compile(r"(\d+) dropped"),
    "unwritten": re.compile(r"(\d+) unwritten"),
    "peak_queue": re.compile(r"peak queue(?: depth)?[ =:]+(\d+)|(\d+) peak queue"),
}
FLUSH_LAG: Final = re.compile(r"(?:max|peak) flush lag[ =:]+([\d.]+) ?(ms|s)\b")
LISTENING: Final = re.compile(r"linkedge edge listening on http://[^:\s]+:(\d+)")
ADMIN_LISTENING: Final = re.compile(r"linkedge admin API listening on http://[^:\s]+:(\d+)")


@dataclass
class Workload:
    links_db: Path
    mmdb: Path
    peer_files: dict[str, Path]
    wrk_data: Path
    targets: dict[str, str]
    requests_in_cycle: int


@dataclass
class Running:
    key: str
    proc: subprocess.Popen[bytes]
    port: int
    work: Path
    db: Path | None = None
    stdout: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def counts(text: str) -> list[int]:
    """ "1e5,1e6" -> [100000, 1000000] (the size lists of the command lines)."""
    return [int(float(x)) for x in text.split(",") if x.strip()]


def prepare(links: int) -> Workload:
    """The bench's workload (cached under CACHE): links, GeoIP, peer files, wrk requests."""
    CACHE.mkdir(parents=True, exist_ok=True)
    mmdb = CACHE / f"city-{GEO_NETWORKS}.mmdb"
    if not mmdb.exists():
        print(f"bench: building {mmdb.name} ({GEO_NETWORKS:,} networks)", flush=True)
    networks = geodb.ensure(mmdb, GEO_NETWORKS)
    links_db = workload.ensure_links_db(CACHE, links)
    peer_dir = CACHE / f"peer-{links}"
    peer_files = workload.write_peer_files(links_db, peer_dir)
    targets: dict[str, str] = json.loads(peer_files["json"].read_text())
    people = workload.visitors(geodb.client_ips(networks, CLIENT_IPS))
    wrk_data = peer_dir / "requests.tsv"
    n = workload.write_wrk_data(wrk_data, list(targets), people)
    return Workload(links_db, mmdb, peer_files, wrk_data, targets, n)


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], core: str = SERVER_CORE) -> list[str]:
    return [machine.tool_path("taskset"), "-c", core, *cmd]


def pin_self(core: str = CLIENT_CORE) -> None:
    """Keep this harness (its samplers, its HTTP probes) off the server's core."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.sched_setaffinity(0, {int(c) for c in core.split(",")})


def linkedge_cmd() -> list[str]:
    script = Path(sys.executable).parent / "linkedge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "admin.cli"]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout_s} s")


def wait_for_line(
    path: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes], timeout_s: float
) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        m = pattern.search(text)
        if m:
            return m
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {text[-2000:]}")
        time.sleep(0.01)
    raise RuntimeError(f"no line matching {pattern.pattern!r} after {timeout_s} s")


def start_linkedge(
    key: str,
    links_db: Path,
    work: Path,
    options: list[str],
    env: dict[str, str] | None = None,
    core: str = SERVER_CORE,
) -> Running:
    """`linkedge serve` on a fresh copy of links_db, pinned to `core`, edge on a free port;
    `options` are added to the command (--geoip, --workers, --no-record-clicks, ...)."""
    work.mkdir(parents=True, exist_ok=True)
    db = workload.copy_db(links_db, work / "linkedge.db")
    cmd = [*linkedge_cmd(), "serve", "--db", str(db), "--edge", "127.0.0.1:0", *options]
    stdout = work / "stdout.log"
    with stdout.open("wb") as out, (work / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(
            pinned(cmd, core),
            stdout=out,
            stderr=err,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    m = wait_for_line(stdout, LISTENING, proc, timeout_s=120)
    running = Running(key, proc, int(m.group(1)), work, db=db, stdout=stdout)
    running.extra["cmd"] = " ".join(cmd)
    if "--admin" in options or any(o.startswith("--admin=") for o in options):
        a = wait_for_line(stdout, ADMIN_LISTENING, proc, timeout_s=30)
        running.extra["admin_port"] = int(a.group(1))
    return running


def parse_stop_line(text: str) -> dict[str, Any]:
    """The figures of linkedge's last "linkedge stopped: ..." line in `text`."""
    out: dict[str, Any] = {}
    lines = [ln for ln in text.splitlines() if ln.startswith("linkedge stopped:")]
    if not lines:
        return out
    line = out["stop_line"] = lines[-1]
    for name, pattern in STOP_FIELDS.items():
        m = pattern.search(line)
        if m:
            out[name] = int(next(g for g in m.groups() if g is not None))
    lag = FLUSH_LAG.search(line)
    if lag:
        value = float(lag.group(1))
        out["max_flush_lag_ms"] = value if lag.group(2) == "ms" else value * 1000
    return out


def stop_server(run: Running, timeout_s: float = 120.0) -> dict[str, Any]:
    """SIGTERM, wait; for linkedge parse its stop line. Returns what it said."""
    proc = run.proc
    if proc.poll() is not None:
        return {"exit": proc.returncode, "note": "exited before SIGTERM"}
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while True:
        # wait4 rather than wait: the rusage of the server (all its threads, and the
        # children it reaped: nginx's workers) over its whole life.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return {"exit": "killed after SIGTERM timeout"}
        time.sleep(0.02)
    out: dict[str, Any] = {
        "exit": proc.returncode,
        "lifetime_cpu_s": usage.ru_utime + usage.ru_stime,
    }
    if run.stdout is not None:
        out.update(parse_stop_line(run.stdout.read_text(errors="replace")))
    return out


def remove_db(db: Path | None) -> None:
    if db is None:
        return
    for suffix in ("", "-wal", "-shm", ".serve-lock"):
        Path(str(db) + suffix).unlink(missing_ok=True)


# --- probes -----------------------------------------------------------------------------


def probe(port: int, slug: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/{slug}", headers={"Host": workload.HOST})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location")
    finally:
        conn.close()


def http_get(
    port: int, path: str, token: str | None = None, timeout_s: float = 10.0
) -> tuple[int, bytes, float]:
    """GET 127.0.0.1:port/path; (status, body, seconds it took)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    t0 = time.perf_counter()
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - t0
    finally:
        conn.close()


def prometheus(text: str) -> dict[str, float]:
    """`name{labels} value` lines of a /metrics page -> {"name{labels}": value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


class LagSampler(threading.Thread):
    """Samples the age of the newest row in `clicks` from a read-only connection: how far
    behind the writer is, end to end (clicks held by a worker or the collector count)."""

    def __init__(self, db: Path, interval_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.times: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
        t0 = time.monotonic()
        query = "SELECT ts, id FROM clicks ORDER BY id DESC LIMIT 1"
        try:
            try:
                first = conn.execute(query).fetchone()
            except sqlite3.Error:
                first = None
            # Samples count from the first row written after the start: until then the
            # newest row is one of an earlier run (a warm-up), whose age grows while wrk
            # reads its request file, which says nothing about the writer.
            start_id = first[1] if first is not None else 0
            while not self._stop_event.wait(self.interval_s):
                try:
                    row = conn.execute(query).fetchone()
                except sqlite3.Error:
                    continue
                if row is not None and row[1] > start_id:
                    self.samples.append(max(0.0, time.time() - row[0] / 1000))
                    self.times.append(time.monotonic() - t0)
        finally:
            conn.close()

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join(5)
        s = self.samples
        return {
            "samples": len(s),
            "median_ms": round(statistics.median(s) * 1000, 1) if s else None,
            "max_ms": round(max(s) * 1000, 1) if s else None,
            "last_ms": round(s[-1] * 1000, 1) if s else None,
        }


# --- wrk -----------------------------------------------------------------------------------


def paced_delay_ms(rate: float, connections: int) -> float:
    """The mean per-connection pause between a response and the next request that makes
    `connections` connections send `rate` requests a second (less each answer's latency,
    which the achieved rate then shows)."""
    return max(0.0, connections * 1000.0 / rate)


def run_wrk(
    port: int,
    data: Path,
    mode: str,
    duration_s: float,
    connections: int,
    offset: int,
    delay_ms: float | None = None,
) -> dict[str, Any]:
    """One wrk run on the client core; its JSON line plus its own CPU time. With
    `delay_ms`, each connection pauses that long on average after every answer (wrk's Lua
    delay(), loadtests/wrk/redirects.lua): a paced load instead of a closed loop."""
    cmd = [
        machine.tool_path("taskset"),
        "-c",
        CLIENT_CORE,
        machine.tool_path("wrk"),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",  # wrk takes whole seconds
        "--latency",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
        "--",
        str(data),
        mode,
        str(offset),
    ]
    if delay_ms is not None:
        cmd.append(f"{delay_ms:.4f}")
    out_path = data.parent / f"wrk-{os.getpid()}-{threading.get_ident()}.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    return parse_wrk(text, proc.returncode, usage.ru_utime + usage.ru_stime)


def parse_wrk(text: str, returncode: int, client_cpu_s: float) -> dict[str, Any]:
    """wrk's "WRK_JSON {...}" line (redirects.lua's done()) with the rate it implies."""
    m = re.search(r"WRK_JSON (\{.*\})", text)
    if returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({returncode}): {text[-2000:]}")
    result: dict[str, Any] = json.loads(m.group(1))
    result["client_cpu_s"] = client_cpu_s
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


# --- CPU of a process tree --------------------------------------------------------------


def wait_idle(pids: list[int], settle_s: float = 0.3, max_s: float = 10.0) -> float:
    """Wait until these processes stop using CPU (the writer drained); return their CPU."""
    deadline = time.monotonic() + max_s
    last = machine.process_cpu_s(pids)
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        now = machine.process_cpu_s(pids)
        if now - last < 0.02:  # < 2 ticks: idle
            return now
        last = now
    return last


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


def roles(root_pid: int) -> dict[str, list[int]]:
    """The processes of a `linkedge serve`: {"supervisor": [pid], "collector": [...],
    "workers": [...]} (by each child's `-m module`), "other" for anything else."""
    out: dict[str, list[int]] = {"supervisor": [root_pid], "collector": [], "workers": []}
    for pid in machine.tree_pids(root_pid)[1:]:
        cmd = _cmdline(pid)
        if "admin.collector" in cmd:
            out["collector"].append(pid)
        elif "edge.worker" in cmd:
            out["workers"].append(pid)
        else:
            out.setdefault("other", []).append(pid)
    return out


def cpu_by_role(by_role: dict[str, list[int]]) -> dict[str, float]:
    """utime + stime (s) of each role's processes (all threads), from /proc."""
    return {role: machine.process_cpu_s(pids) for role, pids in by_role.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - v, 4) for k, v in before.items()}


def replace_docs_section(name: str, text: str, page: Path = DOCS_PAGE) -> Path:
    """Put `text` in docs/benchmarks.md between this script's begin/end markers (added at
    the end of the page the first time); everything else on the page is left alone."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    old = page.read_text() if page.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = head + block + tail
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    page.write_text(new)
    return page


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
