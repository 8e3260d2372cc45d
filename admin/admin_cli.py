"""`linkedge token | utm | stats | backup`, and what every command shares: the database
it works on, how it fails, how it prints.

Rules: like every linkedge command these work whether or not a server runs (a running
server sees a token revoked here within admin/auth.py's TOKEN_REFRESH_S, and an allow-list
change on the next link it validates). Each command's help has an example; listings take
--json. Stats come from admin/stats.py, the same SQL the API runs; velocity, which the
server takes from its live counters, is computed from the per-minute rollup here.

The database: `--db`, else LINKEDGE_DB_PATH from the environment or the settings file
(`--config` / LINKEDGE_CONFIG, edge/config.py), else ./linkedge.db. Only `serve`, `demo`
and `init` create one (`open_db(create=True)`); every other command refuses a path that is
not linkedge's database, saying what it found there and how to point at the right one.
Failures are one line on stderr, never a traceback: exit status 2 when the command line
or what it names is wrong (fix it and run again), 1 when the command was right and the
world was not (a locked or read-only database, a full disk, a failed download).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from admin import timerange
from edge import catalog, schema
from edge import config as cfg
from edge.db import connect
from edge.errors import InvalidField

BAR_WIDTH: Final = 40  # characters of the longest bar in `linkedge stats` series
RELATIVE_ARG_RE: Final = re.compile(r"^-\d+([smhdw]|\.\d+)?$")  # -1h, -7d (and -5, -0.5)

EXIT_RUNTIME: Final = 1  # the command was right, the world was not: try again later
EXIT_USAGE: Final = 2  # the command line or what it names is wrong: fix it
DEFAULT_DB: Final = cfg.Config().db_path
SQLITE_HEADER: Final = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite file
SERVICE_SETTINGS: Final = "/etc/linkedge.env"  # docs/operations.md's settings file
# `linkedge backup` copies this many pages a step (4 MiB of 4 KiB pages) and prints its
# progress at most every PROGRESS_STEP_PERCENT.
BACKUP_STEP_PAGES: Final = 1024
PROGRESS_STEP_PERCENT: Final = 10


class CommandError(Exception):
    """A failure the command reports in one line, with its exit status."""

    def __init__(self, message: str, exit_status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status


# --- the database ----------------------------------------------------------------------


def settings_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment merged over the settings file (--config / LINKEDGE_CONFIG)."""
    env: dict[str, str] | None = getattr(args, "settings_env", None)
    if env is None:
        try:
            env = cfg.environment(getattr(args, "config", None))
        except cfg.SettingsFileError as exc:
            raise CommandError(str(exc)) from None
        args.settings_env = env
    return env


def setting(args: argparse.Namespace, name: str) -> Any:
    """One setting as `serve` would see it (flags aside): environment, file, default."""
    field = next(f for f in cfg.settings() if f.name == name)
    raw = settings_env(args).get(cfg.env_name(name))
    if raw is None:
        return field.default
    try:
        return cfg.parse_value(field, raw)
    except ValueError as exc:
        raise CommandError(f"{cfg.env_name(name)}: {exc}") from None


def db_path(args: argparse.Namespace) -> str:
    path: str = getattr(args, "db", None) or setting(args, "db_path")
    return path


def _where_hint(args: argparse.Namespace) -> str:
    hint = "pass --db PATH, set LINKEDGE_DB_PATH, or give --config FILE that sets it"
    told = getattr(args, "config", None) or cfg.CONFIG_VARIABLE in os.environ
    if not told and os.path.exists(SERVICE_SETTINGS):
        hint += f" (the service's settings: --config {SERVICE_SETTINGS})"
    return hint


def _check_database_file(args: argparse.Namespace, path: str, create: bool) -> bool:
    """Raise CommandError unless `path` can be linkedge's database; True when it exists
    with content (False: it is missing or empty, and `create` allows making it)."""
    shown = os.path.abspath(path)
    parent = os.path.dirname(shown)
    init = f"`linkedge init --db {path}` creates one"
    if os.path.isdir(path):
        raise CommandError(
            f"{shown} is a directory, not a database file: "
            f"give the file in it, e.g. --db {os.path.join(path, DEFAULT_DB)}"
        )
    if not os.path.exists(path):
        if not os.path.isdir(parent):
            raise CommandError(
                f"no database at {shown}: the directory {parent} does not exist; "
                f"{_where_hint(args)}"
            )
        if not create:
            raise CommandError(f"no database at {shown}: {_where_hint(args)}; {init}")
        return False
    if not os.path.isfile(path):
        raise CommandError(f"{shown} is not a regular file: {_where_hint(args)}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise CommandError(f"cannot read {shown}: {exc.strerror}", EXIT_RUNTIME) from None
    if not head:
        if create:
            return False
        raise CommandError(f"{shown} is an empty file, not a linkedge database: {init}")
    if head != SQLITE_HEADER:
        raise CommandError(f"{shown} is not a SQLite database: {_where_hint(args)}")
    return True


def open_db(args: argparse.Namespace, *, create: bool = False) -> sqlite3.Connection:
    """Linkedge's database as the command line names it, migrated; only with `create`
    is a missing (or empty) one made. Sets `args.db_shown` (the absolute path that error
    and success messages name)."""
    path = db_path(args)
    shown = args.db_shown = os.path.abspath(path)
    existed = _check_database_file(args, path, create)
    timeout_ms = int(float(setting(args, "db_busy_timeout_s")) * 1000)
    conn = connect(path, timeout_ms=timeout_ms)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "schema_migrations" not in tables and (tables or not (create or not existed)):
            listed = ", ".join(sorted(tables)[:5]) or "none"
            raise CommandError(
                f"{shown} is a SQLite database but not linkedge's (tables: {listed}): "
                f"{_where_hint(args)}"
            )
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > schema.LATEST:
            raise CommandError(
                f"{shown} is at schema {version}, newer than this linkedge knows "
                f"({schema.LATEST}): upgrade linkedge first",
                EXIT_RUNTIME,
            )
        if schema.pending(conn):  # reads of an up-to-date database take no write lock
            schema.migrate(conn, _announce_migration)
        catalog.ensure_default_domain(conn)
        store = getattr(args, "link_store", None) or setting(args, "link_store")
        if store:  # docs/scale-out.md: the catalog lives in PostgreSQL, this file mirrors it
            from edge import pgstore

            args.link_store_joined = pgstore.attach_cli(conn, store)
    except BaseException:
        conn.close()
        raise
    return conn


def _announce_migration(name: str) -> None:
    """Progress of migrations on a terminal: which one runs (some take minutes)."""
    if sys.stderr.isatty():
        print(f"migrating the database: {name} ...", file=sys.stderr, flush=True)


def database_error(exc: sqlite3.Error, args: argparse.Namespace) -> CommandError:
    """What an SQLite error means for the database the command was working on."""
    shown = getattr(args, "db_shown", None) or os.path.abspath(db_path(args))
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        wait = setting(args, "db_busy_timeout_s")
        return CommandError(
            f"{shown} is locked by another process (a long write, a backup, a stuck "
            f"transaction): waited {wait:g} s; try again (LINKEDGE_DB_BUSY_TIMEOUT_S sets "
            "the wait)",
            EXIT_RUNTIME,
        )
    if "not a database" in low:
        return CommandError(f"{shown} is not a SQLite database: {_where_hint(args)}")
    if "readonly" in low or "read-only" in low:
        return CommandError(
            f"cannot write {shown}: it (or its directory) is read-only for this user; run the "
            "command as the user the server runs as (e.g. sudo -u linkedge ...)",
            EXIT_RUNTIME,
        )
    if "unable to open" in low:
        return CommandError(
            f"cannot open {shown}: check that its directory exists and that this user may "
            "write in it (SQLite writes -wal and -shm files beside it)",
            EXIT_RUNTIME,
        )
    if "malformed" in low or "corrupt" in low:
        return CommandError(
            f"{shown} is damaged ({text}): restore the last backup (docs/operations.md)",
            EXIT_RUNTIME,
        )
    if "full" in low or "disk i/o" in low:
        return CommandError(f"cannot write {shown}: {text} (is the disk full?)", EXIT_RUNTIME)
    return CommandError(f"database error on {shown}: {text}", EXIT_RUNTIME)


def changed(args: argparse.Namespace) -> str:
    """The words success messages end with: which database they changed."""
    return f"(in {args.db_shown})"


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def row_id(text: str) -> int:
    """An argparse type: a row id (a token's, a link's) within SQLite's integers."""
    value = catalog.bounded_int(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an id: a number as `linkedge token list` shows it"
        )
    return value


# --- tokens --------------------------------------------------------------------------------


def _token_out(token: dict[str, Any]) -> dict[str, Any]:
    out = dict(token)
    for name in ("created_at", "last_used_at", "revoked_at"):
        out[name] = timerange.iso_ms(token[name])
    return out


def cmd_token_create(args: argparse.Namespace) -> int:
    conn = open_db(args)
    scopes = catalog.validate_scopes(args.scopes) if args.scopes else None
    record, secret = catalog.create_token(conn, args.name, scopes)
    if args.json:
        print_json({"token": _token_out(record), "secret": secret})
    else:
        print(secret)  # alone on stdout: `export TOKEN=$(linkedge token create me)` works
        print(
            f"token {record['id']} ({record['name']}) created {changed(args)}: shown once, "
            "only its hash is stored",
            file=sys.stderr,
        )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    conn = open_db(args)
    tokens = [_token_out(t) for t in catalog.list_tokens(conn)]
    if args.json:
        print_json(tokens)
        return 0
    print_table(
        [
            [
                str(t["id"]),
                t["name"],
                t["prefix"] + "...",
                ",".join(t["scopes"]),
                t["created_at"] or "-",
                t["last_used_at"] or "-",
                t["revoked_at"] or "no",
            ]
            for t in tokens
        ],
        ["ID", "NAME", "PREFIX", "SCOPES", "CREATED", "LAST USED", "REVOKED"],
    )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    conn = open_db(args)
    record = catalog.revoke_token(conn, args.id)
    if args.json:
        print_json(_token_out(record))
    else:
        print(f"revoked token {record['id']} ({record['name']}) {changed(args)}")
    return 0


# --- UTM allow-lists -----------------------------------------------------------------------


def cmd_utm_allow(args: argparse.Namespace) -> int:
    conn = open_db(args)
    values = [v for part in args.values for v in part.split(",")]
    cleaned = catalog.set_utm_allowed(conn, args.field, values)
    field = args.field if args.field.startswith("utm_") else "utm_" + args.field
    if args.json:
        print_json({"field": field, "values": cleaned})
    elif cleaned:
        print(f"{field} now accepts only: {', '.join(cleaned)} {changed(args)}")
    else:
        print(f"{field} accepts any value {changed(args)}")
    return 0


def cmd_utm_clear(args: argparse.Namespace) -> int:
    args.values = []
    return cmd_utm_allow(args)


def cmd_utm_case(args: argparse.Namespace) -> int:
    conn = open_db(args)
    mode = catalog.set_utm_case(conn, args.mode) if args.mode else catalog.utm_case(conn)
    print(
        f"UTM values are stored {'lowercased' if mode == 'lower' else 'as given'} ({mode}) "
        f"{changed(args)}"
    )
    return 0


def cmd_utm_list(args: argparse.Namespace) -> int:
    conn = open_db(args)
    allowed = catalog.utm_allowed(conn)
    lists = {name: allowed.get(name, []) for name in catalog.UTM_FIELDS}
    if args.json:
        print_json(lists)
        return 0
    for name, values in lists.items():
        print(f"{name}: {', '.join(values) if values else '(any value)'}")
    return 0


# --- stats ---------------------------------------------------------------------------------


def link_report(conn: sqlite3.Connection, args: argparse.Namespace) -> dict[str, Any]:
    """The same numbers as GET /api/links/{id}/stats, velocity from the minute rollup."""
    # loaded for stats only: every other command starts faster
    from admin import baselines, stats, velocity

    link = catalog.find_link(conn, args.slug, args.domain)
    now = time.time()
    rng = timerange.time_range(args.from_, args.to, args.interval, args.tz, now)
    flt = catalog.LinkFilter(link_id=link["id"])
    reads: Any = stats
    rollup_velocity = velocity.rollup_velocity
    sink = setting(args, "click_sink")
    if sink:  # the clicks are in ClickHouse (docs/clickhouse.md)
        from admin import chstats

        reads = chstats.for_url(sink)
        rollup_velocity = reads.rollup_velocity
    result = reads.selection_stats(conn, flt, rng, _check_top(args.top, stats.MAX_TOP))
    window = velocity.parse_window(args.window)
    speed = rollup_velocity(conn, link["id"], window, int(now))
    return {
        "link": stats.link_head(link),
        **rng.describe(),
        **result,
        "velocity": speed,
        "checkpoints": reads.launch_checkpoints(
            conn, link["id"], *catalog.link_launch(conn, link), int(now * 1000)
        ),
        "baseline": baselines.summary(conn, link, int(now * 1000)),
    }


def cmd_stats(args: argparse.Namespace) -> int:
    conn = open_db(args)
    report = link_report(conn, args)
    if args.json:
        print_json(report)
        return 0
    link, totals, speed = report["link"], report["totals"], report["velocity"]
    print(f"{link['short_url']} -> {link['url']}")
    print(f"{report['from']} to {report['to']} by {report['interval']} ({report['tz']})")
    print(
        f"clicks {totals['clicks']}  humans {totals['humans']}  bots {totals['bots']}  "
        f"uniques {totals['uniques']}"
    )
    if report["bots_by_kind"]:
        kinds = ", ".join(f"{k} {n}" for k, n in report["bots_by_kind"].items())
        print(f"bots by kind: {kinds}")
    print(
        f"velocity: {speed['label']} ({speed['current']} clicks in the last "
        f"{speed['window_s'] // 60} min vs {speed['previous']} before)"
    )
    launch = report["checkpoints"]
    if launch["started_at"]:
        marks = ", ".join(
            f"{c['minutes']}m: {c['humans']} humans / {c['uniques']} uniques"
            + ("" if c["complete"] else " (so far)")
            for c in launch["checkpoints"]
        )
        since = "launched" if launch["started_by"] == "launch" else "first human click"
        print(f"launch: {since} {launch['started_at']}; {marks}")
    base = report["baseline"]
    print(
        f"baseline: first hour vs campaign: {base['first_hour_campaign']['text']}; "
        f"vs source: {base['first_hour_utm_source']['text']}; "
        f"last hour vs hour of week: {base['hour_of_week']['text']}"
    )
    series = report["series"]
    if any(p["clicks"] for p in series):
        print()
        peak = max(p["clicks"] for p in series)
        rows = []
        for p in series:
            bar = "#" * (round(p["clicks"] / peak * BAR_WIDTH) if p["clicks"] else 0)
            rows.append([p["t"], str(p["clicks"]), str(p["humans"]), bar])
        print_table(rows, ["TIME", "CLICKS", "HUMANS", ""])
    for name, entries in report["top"].items():
        if not entries:
            continue
        print()
        print_table(
            [[e["value"] or "(none)", str(e["clicks"]), str(e["humans"])] for e in entries],
            [name.upper().replace("_", " "), "CLICKS", "HUMANS"],
        )
    return 0


# --- registration --------------------------------------------------------------------------

CommandAdder = Callable[..., argparse.ArgumentParser]


def add_commands(sub: Any, cmd: CommandAdder, db_option: Callable[[Any], None]) -> None:
    """Register `token`, `utm`, `stats` and `backup` on admin/cli.py's subparsers."""
    token = cmd(
        sub,
        "token",
        lambda a: 0,
        "manage admin API tokens (only their hashes are stored)",
        "linkedge token create ci",
    )
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = cmd(
        tsub,
        "create",
        cmd_token_create,
        "create a token and print it once",
        "linkedge token create dashboard",
    )
    p.add_argument("name", help="what the token is for")
    p.add_argument(
        "--scopes",
        help="what it may do, comma-separated: read, links, events, admin (default admin)",
    )
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(tsub, "list", cmd_token_list, "list tokens", "linkedge token list --json")
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(tsub, "revoke", cmd_token_revoke, "revoke a token by id", "linkedge token revoke 2")
    p.add_argument("id", type=row_id, help="the token's id (`linkedge token list`)")
    p.add_argument("--json", action="store_true")
    db_option(p)

    utm = cmd(
        sub,
        "utm",
        lambda a: 0,
        "UTM naming conventions: allow-lists per field, letter case",
        "linkedge utm allow source newsletter,twitter",
    )
    usub = utm.add_subparsers(dest="utm_command", metavar="ACTION", required=True)
    p = cmd(
        usub,
        "allow",
        cmd_utm_allow,
        "accept only these values for a UTM field (others are a 400 naming the field)",
        "linkedge utm allow source newsletter,twitter,linkedin",
    )
    p.add_argument("field", help="source, medium, campaign, content or term")
    p.add_argument("values", nargs="+", help="comma-separated values (lowercased)")
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(
        usub,
        "clear",
        cmd_utm_clear,
        "accept any value for a UTM field again",
        "linkedge utm clear source",
    )
    p.add_argument("field")
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(
        usub,
        "case",
        cmd_utm_case,
        "store new UTM values lowercased (default) or as given; no MODE shows the setting",
        "linkedge utm case keep",
    )
    p.add_argument("mode", nargs="?", choices=catalog.UTM_CASES)
    db_option(p)
    p = cmd(usub, "list", cmd_utm_list, "show the allow-lists", "linkedge utm list")
    p.add_argument("--json", action="store_true")
    db_option(p)

    p = cmd(
        sub,
        "stats",
        cmd_stats,
        "a link's clicks, uniques, series and top breakdowns (reads SQLite directly)",
        "linkedge stats launch --from -1h",
    )
    # `--from -1h` reads like an option to argparse, which only lets negative *numbers*
    # through as values; widen its matcher on this parser to relative times.
    p._negative_number_matcher = RELATIVE_ARG_RE
    p.add_argument("slug")
    p.add_argument("--domain", help="the link's domain (default: the default domain)")
    p.add_argument(
        "--from", dest="from_", default="-24h", help="ISO 8601 or relative (default -24h)"
    )
    p.add_argument("--to", default=None, help="ISO 8601 or relative (default now)")
    p.add_argument("--interval", choices=timerange.INTERVALS, help="series step (default by range)")
    p.add_argument("--tz", default=None, help="IANA time zone of the series (default UTC)")
    p.add_argument("--top", type=int, default=5, help="values per breakdown (default 5)")
    p.add_argument("--window", default=None, help="velocity window (default 15m)")
    p.add_argument("--json", action="store_true")
    db_option(p)

    p = cmd(
        sub,
        "backup",
        cmd_backup,
        "copy the database with SQLite's online backup (safe while the server runs)",
        "linkedge backup /var/backups/linkedge-$(date +%F).db",
    )
    p.add_argument("dest", help="the backup file (a directory: a timestamped file in it)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    db_option(p)


def _check_top(value: int, most: int) -> int:
    if not 1 <= value <= most:
        raise InvalidField(f"--top must be from 1 to {most}", "top")
    return value


# --- backup --------------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy through SQLite's online backup API, while a server runs."""
    conn = open_db(args)
    dest = args.dest
    if os.path.isdir(dest):
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
        dest = os.path.join(dest, f"linkedge-{stamp}.db")
    shown = os.path.abspath(dest)
    if os.path.abspath(dest) == args.db_shown:
        raise CommandError("the backup must go to another file than the database itself")
    if os.path.exists(dest) and not args.force:
        raise CommandError(f"{shown} exists: give another file, or --force to replace it")
    if not os.path.isdir(os.path.dirname(shown)):
        raise CommandError(f"cannot write {shown}: its directory does not exist")
    partial = dest + ".partial"
    reported = [-1]

    def progress(_status: int, remaining: int, total: int) -> None:
        percent = 100 if total == 0 else (total - remaining) * 100 // total
        if percent // PROGRESS_STEP_PERCENT > reported[0] or remaining == 0:
            reported[0] = percent // PROGRESS_STEP_PERCENT
            print(
                f"backup: {total - remaining} of {total} pages ({percent}%)",
                file=sys.stderr,
                flush=True,
            )

    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    target = sqlite3.connect(partial)
    try:
        # One read transaction for the whole copy: in WAL mode it is a snapshot that the
        # server's writes go on beside, so the copy is consistent and never restarts.
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.backup(target, pages=BACKUP_STEP_PAGES, progress=progress)
        conn.execute("COMMIT")
        ok = target.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise CommandError(f"the copy failed its check ({ok}): not installed", EXIT_RUNTIME)
        links = target.execute("SELECT count(*) FROM links").fetchone()[0]
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
    except BaseException:
        target.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    target.close()
    os.replace(partial, dest)
    size = os.path.getsize(dest)
    print(f"backed up {args.db_shown} to {shown}: {size} bytes, {links} link(s), checked ok")
    return 0
