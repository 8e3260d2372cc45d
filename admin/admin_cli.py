"""`linkedge token | utm | stats`: the admin API's commands, on the SQLite file directly.

Rules: like every linkedge command these work whether or not a server runs (a running
server sees a token revoked here within admin/auth.py's TOKEN_REFRESH_S, and an allow-list
change on the next link it validates). Each command's help has an example; listings take
--json. Stats come from admin/stats.py, the same SQL the API runs; velocity, which the
server takes from its live counters, is computed from the per-minute rollup here.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from admin import stats, timerange, velocity
from edge import catalog
from edge.errors import InvalidField

BAR_WIDTH: Final = 40  # characters of the longest bar in `linkedge stats` series
RELATIVE_ARG_RE: Final = re.compile(r"^-\d+([smhdw]|\.\d+)?$")  # -1h, -7d (and -5, -0.5)


def open_db(args: argparse.Namespace) -> sqlite3.Connection:
    path = args.db or os.environ.get("LINKEDGE_DB_PATH") or "linkedge.db"
    return catalog.open_db(path)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- tokens --------------------------------------------------------------------------------


def _token_out(token: dict[str, Any]) -> dict[str, Any]:
    out = dict(token)
    for name in ("created_at", "last_used_at", "revoked_at"):
        out[name] = timerange.iso_ms(token[name])
    return out


def cmd_token_create(args: argparse.Namespace) -> int:
    conn = open_db(args)
    record, secret = catalog.create_token(conn, args.name)
    if args.json:
        print_json({"token": _token_out(record), "secret": secret})
    else:
        print(secret)
        print(
            f"token {record['id']} ({record['name']}): shown once, only its hash is stored",
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
                t["created_at"] or "-",
                t["last_used_at"] or "-",
                t["revoked_at"] or "active",
            ]
            for t in tokens
        ],
        ["ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED"],
    )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    conn = open_db(args)
    record = catalog.revoke_token(conn, args.id)
    if args.json:
        print_json(_token_out(record))
    else:
        print(f"revoked token {record['id']} ({record['name']})")
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
        print(f"{field} now accepts only: {', '.join(cleaned)}")
    else:
        print(f"{field} accepts any value")
    return 0


def cmd_utm_clear(args: argparse.Namespace) -> int:
    args.values = []
    return cmd_utm_allow(args)


def cmd_utm_case(args: argparse.Namespace) -> int:
    conn = open_db(args)
    mode = catalog.set_utm_case(conn, args.mode) if args.mode else catalog.utm_case(conn)
    print(f"UTM values are stored {'lowercased' if mode == 'lower' else 'as given'} ({mode})")
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
    link = catalog.find_link(conn, args.slug, args.domain)
    now = time.time()
    rng = timerange.time_range(args.from_, args.to, args.interval, args.tz, now)
    flt = catalog.LinkFilter(link_id=link["id"])
    result = stats.selection_stats(conn, flt, rng, _check_top(args.top))
    window = velocity.parse_window(args.window)
    speed = velocity.rollup_velocity(conn, link["id"], window, int(now))
    return {
        "link": stats.link_head(link),
        **rng.describe(),
        **result,
        "velocity": speed,
        "checkpoints": stats.launch_checkpoints(
            conn, link["id"], link["created_at"], int(now * 1000)
        ),
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
    if launch and launch["first_click_at"]:
        marks = ", ".join(
            f"{c['minutes']}m: {c['clicks']} clicks / {c['uniques']} uniques"
            + ("" if c["complete"] else " (so far)")
            for c in launch["checkpoints"]
        )
        print(f"launch: first click {launch['first_click_at']}; {marks}")
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
    """Register `token`, `utm` and `stats` on admin/cli.py's subparsers."""
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
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(tsub, "list", cmd_token_list, "list tokens", "linkedge token list --json")
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(tsub, "revoke", cmd_token_revoke, "revoke a token by id", "linkedge token revoke 2")
    p.add_argument("id", type=int)
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


def _check_top(value: int) -> int:
    if not 1 <= value <= stats.MAX_TOP:
        raise InvalidField(f"--top must be from 1 to {stats.MAX_TOP}", "top")
    return value
