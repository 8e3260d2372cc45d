"""What every linkedge process sets up about itself: file descriptor limits, signals, and
its fate when the supervisor dies.

Rules: Linux-first, and harmless elsewhere (a missing facility is skipped, never fatal).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import signal
import sys
from typing import Final

log = logging.getLogger("linkedge")

_PR_SET_PDEATHSIG: Final = 1
# Descriptors kept free for everything that is not an edge connection: the SQLite files
# and their WAL, the collector link, the GeoIP copy, the log, the listening socket.
RESERVED_FDS: Final = 64


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); return the
    soft limit now in force. A Debian VPS starts services at 1024 soft / 524288 hard:
    without this, a connection past ~1000 fails to be accepted."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1024
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft)


def connection_cap(configured: int) -> int:
    """The edge connection cap a process can honour with its descriptors."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return configured
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, int(soft) - RESERVED_FDS))


def child_setup() -> None:
    """A worker or the collector: Ctrl-C in a terminal reaches the whole process group,
    but only the supervisor may order a stop (workers must ship before the collector
    goes), so SIGINT is ignored; and if the supervisor dies, SIGTERM us (a graceful stop)
    instead of leaving an orphan holding the port."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers() -> int:
    """One worker per usable core minus one for the collector, at least 1."""
    return max(1, usable_cores() - 1)
