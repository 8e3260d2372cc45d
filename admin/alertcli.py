"""`linkedge alert add | list | show | set | rm | checks`: alert rules on the database file
(a running server picks a change up at its next evaluation). The rules are validated by
admin/alerts.py, the same function the API uses."""

from __future__ import annotations

import argparse
import re
from typing import Any, Final

from admin import alerts, checks, notify, timerange
from admin.admin_cli import CommandAdder, changed, open_db, print_json, print_table, row_id
from edge import catalog
from edge.errors import InvalidField

_DURATION: Final = re.compile(r"(\d+)([smhd]?)")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """An argparse type: 300, 30s, 5m, 1h, 1d -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: e.g. 30s, 5m, 1h")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _body(args: argparse.Namespace, conn: Any, creating: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if creating or args.name is not None:
        body["name"] = args.name
    if args.link is not None:
        if args.link.isdigit():
            link_id = int(args.link)
        else:
            link_id = catalog.find_link(conn, args.link, args.domain)["id"]
        body["scope"] = {"link_id": link_id}
    elif args.campaign is not None:
        body["scope"] = {"campaign": args.campaign}
    for name, value in (
        ("kind", args.kind),
        ("window_s", args.window),
        ("threshold", args.threshold),
        ("for_s", args.for_s),
        ("cooldown_s", args.cooldown),
        ("fallback_url", args.fallback_url),
    ):
        if value is not None:
            body[name] = value
    for option in args.option or []:
        key, eq, raw = option.partition("=")
        if not eq or key not in alerts.OPTION_DEFAULTS:
            raise InvalidField(
                f"--option takes NAME=VALUE with NAME one of {', '.join(alerts.OPTION_DEFAULTS)}",
                "option",
            )
        body[key] = _option_value(raw)
    targets: list[dict[str, str]] = []
    for url in args.webhook or []:
        targets.append({"webhook": url, **({"secret": args.secret} if args.secret else {})})
    targets += [{"slack": url} for url in args.slack or []]
    targets += [{"email": address} for address in args.email or []]
    if targets or args.no_notify:
        body["notify"] = targets
    if args.enable:
        body["enabled"] = True
    if args.disable:
        body["enabled"] = False
    return body


def _option_value(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _out(alert: dict[str, Any]) -> dict[str, Any]:
    out = dict(alert)
    out["notify"] = notify.targets_out(alert["notify"])
    for name in ("state_since", "fired_at", "resolved_at", "created_at", "updated_at"):
        out[name] = timerange.iso_ms(out[name])
    return out


def _scope(alert: dict[str, Any]) -> str:
    scope = alert["scope"]
    return f"link {scope['link_id']}" if "link_id" in scope else f"campaign {scope['campaign']}"


def _show(alert: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(_out(alert))
        return
    out = _out(alert)
    print(f"alert {out['id']}: {out['name']} ({out['kind']}, {_scope(alert)})")
    print(f"  window {out['window_s']} s, threshold {out['threshold']}, options {out['options']}")
    print(f"  state {out['state']} since {out['state_since']}, enabled {out['enabled']}")
    for target in out["notify"]:
        print(f"  notify {target}")


def cmd_alert_add(args: argparse.Namespace) -> int:
    conn = open_db(args)
    rule = alerts.validate_rule(_body(args, conn, creating=True))
    alert = alerts.create_alert(conn, rule)
    if args.json:
        print_json(_out(alert))
    else:
        print(f"added alert {alert['id']} {alert['name']!r} {changed(args)}")
    return 0


def cmd_alert_list(args: argparse.Namespace) -> int:
    conn = open_db(args)
    rules = alerts.list_alerts(conn)
    if args.json:
        print_json([_out(a) for a in rules])
        return 0
    rows = [
        [
            str(a["id"]),
            a["name"],
            a["kind"],
            _scope(a),
            str(a["window_s"]),
            "" if a["threshold"] is None else f"{a['threshold']:g}",
            a["state"] if a["enabled"] else "disabled",
        ]
        for a in rules
    ]
    print_table(rows, ["ID", "NAME", "KIND", "SCOPE", "WINDOW_S", "THRESHOLD", "STATE"])
    return 0


def cmd_alert_show(args: argparse.Namespace) -> int:
    conn = open_db(args)
    alert = alerts.get_alert(conn, args.id)
    _show(alert, args.json)
    if not args.json:
        for d in notify.deliveries(conn, args.id, 10):
            print(
                f"  delivery {d['id']} {timerange.iso_ms(d['created_at'])} {d['event']} "
                f"{d['channel']} {d['target']}: {d['status']} after {d['attempts']} attempt(s)"
                + (f" ({d['error']})" if d["error"] else "")
            )
    return 0


def cmd_alert_set(args: argparse.Namespace) -> int:
    conn = open_db(args)
    body = _body(args, conn, creating=False)
    if not body:
        raise InvalidField("nothing to change: give the options to change")
    alert = alerts.update_alert(conn, args.id, body)
    if args.json:
        print_json(_out(alert))
    else:
        print(f"changed alert {alert['id']} {changed(args)}")
    return 0


def cmd_alert_rm(args: argparse.Namespace) -> int:
    conn = open_db(args)
    alerts.delete_alert(conn, args.id)
    print(f"removed alert {args.id} {changed(args)}")
    return 0


def cmd_alert_checks(args: argparse.Namespace) -> int:
    conn = open_db(args)
    rows = checks.check_rows(conn)
    if args.json:
        print_json(rows)
        return 0
    table = [
        [
            "good" if r["ok"] else ("not checked" if r["ok"] is None else "FAILING"),
            r["url"],
            r["error"] or "",
            timerange.iso_ms(r["last_good_at"]) or "never",
        ]
        for r in rows
    ]
    print_table(table, ["STATE", "URL", "ERROR", "LAST_GOOD"])
    return 0


def _rule_options(p: argparse.ArgumentParser, creating: bool) -> None:
    scope = p.add_mutually_exclusive_group(required=creating)
    scope.add_argument("--link", help="the link: its slug (on --domain) or id")
    scope.add_argument("--campaign", help="every link of this campaign")
    p.add_argument("--domain", help="the domain of --link's slug (default: the default one)")
    p.add_argument("--kind", choices=alerts.KINDS, required=creating)
    p.add_argument("--window", type=duration, help="the window: 300, 5m, 1h (at most 1h)")
    p.add_argument("--threshold", type=float, help="clicks, or a rate 0-1 for conversions")
    p.add_argument("--for", dest="for_s", type=duration, help="how long before it fires")
    p.add_argument("--cooldown", type=duration, help="no new firing this long after a resolve")
    p.add_argument("--fallback-url", help="destination kind: serve this while it is broken")
    p.add_argument(
        "--option", action="append", metavar="NAME=VALUE", help="another option (docs/alerts.md)"
    )
    p.add_argument("--webhook", action="append", metavar="URL", help="POST signed JSON here")
    p.add_argument("--secret", help="the HMAC-SHA256 secret of the --webhook targets")
    p.add_argument("--slack", action="append", metavar="URL", help="a Slack incoming webhook")
    p.add_argument("--email", action="append", metavar="ADDRESS", help="mail it (smtp_host)")
    p.add_argument("--no-notify", action="store_true", help="no targets (only the log)")
    p.add_argument("--enable", action="store_true", help=argparse.SUPPRESS if creating else "")
    p.add_argument("--disable", action="store_true", help="keep it, do not evaluate it")
    p.add_argument("--json", action="store_true")


def add_commands(sub: Any, cmd: CommandAdder, db_option: Any) -> None:
    alert = cmd(
        sub,
        "alert",
        lambda a: 0,
        "alert rules: thresholds, anomalies, stops, broken destinations (docs/alerts.md)",
        "linkedge alert add spike --link launch --kind clicks_above --window 5m --threshold 50",
    )
    asub = alert.add_subparsers(dest="alert_command", metavar="ACTION", required=True)
    p = cmd(
        asub,
        "add",
        cmd_alert_add,
        "add an alert rule",
        "linkedge alert add stalled --campaign spring --kind zero --window 15m "
        "--webhook https://hooks.example.com/linkedge --secret S3CRET",
    )
    p.add_argument("name", help="what the alert is called in its notifications")
    _rule_options(p, creating=True)
    db_option(p)
    p = cmd(asub, "list", cmd_alert_list, "list alert rules and their state", "linkedge alert list")
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(
        asub, "show", cmd_alert_show, "one alert and its last deliveries", "linkedge alert show 3"
    )
    p.add_argument("id", type=row_id)
    p.add_argument("--json", action="store_true")
    db_option(p)
    p = cmd(asub, "set", cmd_alert_set, "change an alert rule", "linkedge alert set 3 --disable")
    p.add_argument("id", type=row_id)
    p.add_argument("--name")
    _rule_options(p, creating=False)
    db_option(p)
    p = cmd(asub, "rm", cmd_alert_rm, "remove an alert and its log", "linkedge alert rm 3")
    p.add_argument("id", type=row_id)
    db_option(p)
    p = cmd(
        asub,
        "checks",
        cmd_alert_checks,
        "the destination checks: each URL's last answer and last good time",
        "linkedge alert checks",
    )
    p.add_argument("--json", action="store_true")
    db_option(p)
