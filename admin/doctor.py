"""`linkedge doctor`: is this install ready to serve? One verdict per line, exit 1 on a FAIL.

Each check prints `ok`, `warn` or `FAIL`, what it looked at and, when something is wrong,
what to do. A warning is worth knowing and does not stop the service (no GeoIP database, a
GeoIP database older than GEOIP_MAX_AGE_DAYS, less than DISK_WARN_BYTES free); a FAIL is
something the service cannot run well with. Settings are read as `serve` reads them (flags
aside): `--config FILE`, the environment, the defaults.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Final

from admin.admin_cli import CommandError, open_db, setting, settings_env
from geo import bots

OK: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "FAIL"
DISK_FAIL_BYTES: Final = 256 * 2**20  # SQLite needs room for its WAL and a checkpoint
DISK_WARN_BYTES: Final = 2 * 2**30  # ~10M clicks take ~3 GB (docs/benchmarks.md)
GEOIP_MAX_AGE_DAYS: Final = 45  # DB-IP and MaxMind publish monthly
CLOCK_SLACK_S: Final = 300  # a click in the database from the future: the clock went back
# The earliest plausible "now": before this linkedge's oldest migration was written.
EARLIEST_SANE_S: Final = 1_735_689_600  # 2025-01-01

Verdict = tuple[str, str, str]  # (level, check, message)


def _database(args: argparse.Namespace) -> list[Verdict]:
    try:
        conn = open_db(args)
    except CommandError as exc:
        return [(FAIL, "database", exc.message)]
    shown = args.db_shown
    out: list[Verdict] = []
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            writable = None
        except sqlite3.Error as exc:
            writable = str(exc)
        if writable is not None:
            out.append((FAIL, "database", f"{shown} cannot be written: {writable}"))
        elif mode.lower() != "wal":
            out.append(
                (FAIL, "database", f"{shown} is in {mode} mode, not WAL: `linkedge serve` sets it")
            )
        else:
            out.append((OK, "database", f"{shown} is writable, in WAL mode"))
        tokens = conn.execute(
            "SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL"
        ).fetchone()[0]
        if tokens or settings_env(args).get("LINKEDGE_ADMIN_TOKEN"):
            out.append((OK, "token", f"{tokens} active admin API token(s)"))
        else:
            out.append(
                (FAIL, "token", "no active admin API token: `linkedge token create NAME` makes one")
            )
        newest = conn.execute("SELECT max(ts) FROM clicks").fetchone()[0]
        out.append(_clock(newest))
    finally:
        conn.close()
    out.insert(1, _disk(os.path.dirname(shown) or "."))
    return out


def _disk(directory: str) -> Verdict:
    free = shutil.disk_usage(directory).free
    text = f"{free / 2**30:.1f} GiB free in {directory}"
    if free < DISK_FAIL_BYTES:
        return FAIL, "disk", text + ": SQLite needs room for its WAL; free some space"
    if free < DISK_WARN_BYTES:
        return WARN, "disk", text + " (10M clicks take about 3 GB)"
    return OK, "disk", text


def _clock(newest_click_ms: int | None) -> Verdict:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    if now < EARLIEST_SANE_S:
        return FAIL, "clock", f"the clock says {stamp}: set the time (timedatectl, NTP)"
    if newest_click_ms is not None and newest_click_ms / 1000 > now + CLOCK_SLACK_S:
        newest = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest_click_ms / 1000))
        return (
            FAIL,
            "clock",
            f"the clock says {stamp} but a click was recorded at {newest}: the clock went back",
        )
    return OK, "clock", f"{stamp} (UTC)"


def _geoip(args: argparse.Namespace) -> Verdict:
    from geo.geoip import GeoDatabaseError, database_info

    path = setting(args, "geoip_path")
    if not path:
        return (
            WARN,
            "geoip",
            "no GeoIP database: clicks have no country or city "
            "(`linkedge geo update` installs DB-IP Lite City)",
        )
    try:
        info = database_info(path)
    except GeoDatabaseError as exc:
        return FAIL, "geoip", f"{exc}: `linkedge geo update --dest {path}`"
    epoch = info.get("build_epoch")
    age_days = (time.time() - epoch) / 86400 if isinstance(epoch, int) else None
    text = f"{path}: {info.get('database_type')} built {info.get('build_date')}"
    if age_days is not None and age_days > GEOIP_MAX_AGE_DAYS:
        return WARN, "geoip", f"{text}, {age_days:.0f} days old: `linkedge geo update`"
    return OK, "geoip", text + (f", {age_days:.0f} days old" if age_days is not None else "")


def _linkedge_answers(host: str, port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", "/healthz")
        body = conn.getresponse().read()
        conn.close()
    except (OSError, http.client.HTTPException):
        return False
    return b'"workers"' in body


def _port(name: str, host: str, port: int, admin_host: str, admin_port: int) -> Verdict:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as exc:
        if _linkedge_answers(admin_host, admin_port):
            return OK, name, f"{host}:{port} is in use by the running linkedge"
        return FAIL, name, f"{host}:{port} cannot be bound: {exc.strerror or exc}"
    return OK, name, f"{host}:{port} is free"


def _ports(args: argparse.Namespace) -> list[Verdict]:
    admin = (setting(args, "admin_host"), int(setting(args, "admin_port")))
    out = [_port("edge port", setting(args, "edge_host"), int(setting(args, "edge_port")), *admin)]
    if setting(args, "admin_enabled"):
        out.append(_port("admin port", *admin, *admin))
    return out


def _bot_list(_args: argparse.Namespace) -> list[Verdict]:
    info = bots.list_info()
    text = f"{info['name']} {info['version']}, {info['patterns']} patterns"
    if int(info["patterns"]) < 1000:
        return [(FAIL, "bot list", text + ": the list looks empty; pip install -U crawlerdetect")]
    return [(OK, "bot list", text + " (pip install -U crawlerdetect updates it)")]


CHECKS: Final[tuple[Callable[[argparse.Namespace], list[Verdict]], ...]] = (
    _database,
    lambda a: [_geoip(a)],
    _ports,
    _bot_list,
)


def cmd_doctor(args: argparse.Namespace) -> int:
    verdicts = [v for check in CHECKS for v in check(args)]
    for level, name, message in verdicts:
        print(f"{level:<4}  {name}: {message}")
    failed = sum(1 for v in verdicts if v[0] == FAIL)
    if failed:
        print(f"doctor: {failed} problem(s) found")
        return 1
    return 0
