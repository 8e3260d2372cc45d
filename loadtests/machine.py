# loadtests/machine: what the machine is, how busy it is, and what one process costs.
#
# Measures, from /proc only (no psutil):
# - the machine: CPU model, cores, kernel, Python and library versions, nginx/wrk versions;
# - CPU busy time per core from /proc/stat (user+nice+system, irq+softirq and steal kept
#   apart), so a run can wait for a quiet machine first and report the foreign load (busy
#   time that was neither the server under test nor the load generator) afterwards;
# - a process tree's CPU time (utime+stime of the process and its children, all threads
#   included) from /proc/<pid>/stat, and its RSS (VmRSS / VmHWM) from /proc/<pid>/status.
# Also installs the Debian packages the benchmark needs (wrk, nginx) when they are missing.
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PACKAGES: Final = ("uvloop", "orjson", "aiosqlite", "maxminddb", "ua-parser", "ua-parser-rs")
PEER_PACKAGES: Final = ("uvicorn", "starlette", "httptools", "mmdb-writer")
DEBIAN_TOOLS: Final = {"wrk": "wrk", "nginx": "nginx", "taskset": "util-linux"}


def ensure_tools() -> list[str]:
    """apt-get install what is missing (wrk, nginx); return the packages installed."""
    missing = sorted({pkg for tool, pkg in DEBIAN_TOOLS.items() if not _which(tool)})
    if not missing:
        return []
    if not shutil.which("apt-get"):
        raise SystemExit(f"bench: missing {', '.join(missing)} and no apt-get to install them")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print(f"bench: installing {', '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    return missing


def _which(tool: str) -> str | None:
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def tool_path(tool: str) -> str:
    path = _which(tool)
    if path is None:
        raise SystemExit(f"bench: {tool} not found")
    return path


def ensure_python_packages() -> None:
    """httptools makes uvicorn's HTTP parsing a C one (what `uvicorn[standard]` installs)."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        print("bench: installing httptools for the uvicorn peer", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "httptools"], check=False)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _command_version(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else None


def describe() -> dict[str, object]:
    """The machine as the report shows it."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    try:
        import uvloop

        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = None
    import sqlite3

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "libraries": {
            **{pkg: _version(pkg) for pkg in PACKAGES + PEER_PACKAGES},
            "uvloop(runtime)": uvloop_version,
        },
        "nginx": _command_version([tool_path("nginx"), "-v"]) if _which("nginx") else None,
        "wrk": (_command_version([tool_path("wrk"), "-v"]) or "").split(" [")[0] or None,
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


# --- CPU accounting ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Jiffies of one /proc/stat line, grouped the way the report uses them."""

    busy: int  # user + nice + system: work of processes, ours and foreign
    irq: int  # irq + softirq (loopback TCP work lands here when not charged to a task)
    steal: int  # time the hypervisor gave to another guest: the noisy neighbour
    idle: int  # idle + iowait

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(
            self.busy - other.busy,
            self.irq - other.irq,
            self.steal - other.steal,
            self.idle - other.idle,
        )

    @property
    def total(self) -> int:
        return self.busy + self.irq + self.steal + self.idle


def cpu_times() -> dict[str, CpuTimes]:
    """{"cpu": all cores, "cpu0": ..., "cpu1": ...} from /proc/stat."""
    out: dict[str, CpuTimes] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            parts = line.split()
            v = [int(x) for x in parts[1:9]] + [0] * (8 - len(parts[1:9]))
            user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
            out[parts[0]] = CpuTimes(user + nice + system, irq + softirq, steal, idle + iowait)
    return out


def busy_fraction(before: dict[str, CpuTimes], after: dict[str, CpuTimes]) -> dict[str, float]:
    """Per core: share of the interval that was busy (busy + irq + steal)."""
    out = {}
    for name, end in after.items():
        d = end - before[name]
        out[name] = (d.busy + d.irq + d.steal) / d.total if d.total else 0.0
    return out


def wait_quiet(
    threshold: float = 0.10, window_s: float = 1.0, max_wait_s: float = 90.0
) -> dict[str, float]:
    """Wait until no core is busier than `threshold` over `window_s`; return what was seen.

    Gives up after `max_wait_s` (the run then goes ahead and its foreign load is reported).
    """
    started = time.monotonic()
    while True:
        before = cpu_times()
        time.sleep(window_s)
        busy = busy_fraction(before, cpu_times())
        worst = max(v for k, v in busy.items() if k != "cpu")
        waited = time.monotonic() - started
        if worst <= threshold or waited >= max_wait_s:
            return {"busiest_core": round(worst, 3), "waited_s": round(waited, 1)}


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (nginx master + workers, a shell + its child)."""
    out = [pid]
    todo = [pid]
    while todo:
        kids = _children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def process_cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[11], fields[12] are utime and stime (stat fields 14 and 15)
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_mb(pid: int) -> dict[str, float]:
    """{"rss": VmRSS, "hwm": VmHWM (peak RSS)} in MB (10^6 bytes)."""
    out = {"rss": 0.0, "hwm": 0.0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) * 1024 / 1e6
                elif line.startswith("VmHWM:"):
                    out["hwm"] = int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return out
