"""The `linkedge` command line: init, serve, demo, link, domain, geo, stats, token, utm,
backup, bots, import, export, doctor.

Rules: every command works on the SQLite file directly, so it is usable whether or not a
server runs (a running server picks the change up within a second). Settings come from
flags, the environment and the settings file (`--config FILE` / LINKEDGE_CONFIG), as
`serve` reads them (edge/config.py). Only `init`, `serve` and `demo` create a database;
success messages name the database they changed. Every command's help has an example;
listings take --json. A failure is one line on stderr, never a traceback: exit status 2
when the command line or what it names is wrong, 1 when the world was (admin/admin_cli.py
says which is which).
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import logging
import os
import socket
import sqlite3
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import orjson

from admin import admin_cli, alertcli, conversions, timerange
from admin.admin_cli import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    CommandError,
    changed,
    open_db,
    print_json,
    print_table,
    setting,
)
from edge import catalog
from edge import config as cfg
from edge.db import now_ms
from edge.errors import LinkedgeError

CLIError = CommandError  # what the commands here raise: one line, an exit status
DEMO_SLUG = "demo"
DEMO_HOST = "127.0.0.1"  # `linkedge demo` (make run) listens here unless told otherwise
# Addresses that mean "this machine" in a link's short URL: shown as a local address too.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"linkedge: error: {message}", file=sys.stderr)
    return status


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CLIError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_time(text: str, what: str = "expires_at") -> int | None:
    """A link time from the command line: admin/timerange.py's one parser, as the API
    reads it (ISO 8601, UTC without an offset; +7d; Unix ms)."""
    return timerange.time_ms(text, what, now_ms() / 1000)


def format_time(ms: int | None) -> str:
    return timerange.iso_ms(ms) or "-"


def short_url(link: dict[str, Any]) -> str:
    return f"https://{link['domain']}/{link['slug']}"


def local_url(args: argparse.Namespace, link: dict[str, Any]) -> str | None:
    """For a link on this machine's own name: the address that reaches it through the
    edge here (its https://localhost/... short URL cannot be clicked locally)."""
    if link["domain"] not in LOCAL_HOSTS:
        return None
    port = setting(args, "edge_port") or 8080
    return f"http://{link['domain']}:{port}/{link['slug']}"


# --- serve ---------------------------------------------------------------------------------


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--edge", metavar="HOST:PORT", help="edge listener (default 0.0.0.0:8080)")
    p.add_argument("--admin", metavar="HOST:PORT", help="admin API listener (127.0.0.1:8081)")
    handled = {"edge_host", "edge_port", "admin_host", "admin_port"}
    for f in cfg.settings():
        if f.name in handled:
            continue
        flag = "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))
        help_text = f"{f.metadata['help']} (env {cfg.env_name(f.name)}, default {f.default!r})"
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif f.type.startswith("tuple"):
            p.add_argument(flag, dest=f.name, action="append", metavar="CIDR", help=help_text)
        else:
            p.add_argument(flag, dest=f.name, metavar=f.name.upper(), help=help_text)


def config_from_args(args: argparse.Namespace, **defaults: Any) -> cfg.Config:
    """The Config `serve` runs with: flags, then the environment and the settings file,
    then `defaults` (the demo's), then the fields' own."""
    overrides: dict[str, Any] = {}
    for f in cfg.settings():
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str):
            try:
                value = cfg.parse_value(f, value)
            except ValueError as exc:
                raise CLIError(str(exc)) from None
        overrides[f.name] = value
    if getattr(args, "edge", None):
        overrides["edge_host"], overrides["edge_port"] = parse_hostport(args.edge, "--edge")
    if getattr(args, "admin", None):
        overrides["admin_host"], overrides["admin_port"] = parse_hostport(args.admin, "--admin")
    env = admin_cli.settings_env(args)
    for name, value in defaults.items():
        if name not in overrides and cfg.env_name(name) not in env:
            overrides[name] = value
    try:
        config = cfg.from_env(env, **overrides)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    import ipaddress

    for cidr in config.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise CLIError(f"--trusted-proxy: {cidr!r} is not a CIDR like 10.0.0.0/8") from None
    if config.admin_enabled and not config.admin_public:
        try:
            loopback = ipaddress.ip_address(config.admin_host).is_loopback
        except ValueError:
            loopback = config.admin_host == "localhost"
        if not loopback:
            raise CLIError(
                f"refusing to expose the admin API on {config.admin_host}: it controls every "
                "link. Put it behind a TLS proxy, or pass --admin-public if you mean it."
            )
    return config


def _check_port(host: str, port: int, what: str, flag: str) -> None:
    """Fail early, with a hint, when a listener's address is taken (the server itself
    would only say 'address already in use')."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CLIError(f"{flag}: cannot listen on {host!r}: {exc.strerror}") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:  # exit 2, as the server's own bind error
                    raise CLIError(
                        f"cannot start: {host}:{port} ({what}): address already in use; "
                        f"another linkedge running? Stop it, or use {flag} HOST:PORT"
                    ) from None
                raise CLIError(
                    f"cannot start: cannot listen on {host}:{port} ({what}): {exc.strerror}",
                    EXIT_RUNTIME,
                ) from None


def _prepare_to_serve(args: argparse.Namespace, config: cfg.Config) -> sqlite3.Connection:
    """Everything `serve` can check before it starts, each failure one line: the
    database (created when missing, migrated) and the listeners' addresses."""
    args.db = config.db_path
    conn = open_db(args, create=True)
    _check_port(config.edge_host, config.edge_port, "the redirect edge", "--edge")
    if config.admin_enabled:
        _check_port(config.admin_host, config.admin_port, "the admin API", "--admin")
    return conn


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    _prepare_to_serve(args, config).close()
    if getattr(args, "link_store_joined", None) is not None:
        args.link_store_joined.close()  # caught up; the collector keeps its own connection
    from admin.runtime import run

    _setup_logging(config.log_level)
    return run(config)


def cmd_init(args: argparse.Namespace) -> int:
    path = admin_cli.db_path(args)
    existed = os.path.exists(path) and os.path.getsize(path) > 0
    conn = open_db(args, create=True)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    default = catalog.domain_row(conn, None)["host"]
    conn.close()
    if existed:
        print(f"{args.db_shown} is a linkedge database already (schema {version}): nothing to do")
    else:
        print(f"created {args.db_shown} (schema {version}, default domain {default})")
    return 0


def _demo_link(conn: sqlite3.Connection) -> dict[str, Any]:
    """The demo link wherever it lives (the default domain may have changed since it was
    made: it stays on its domain), else a new one on the default domain."""
    row = conn.execute(
        "SELECT l.id FROM links l JOIN domains d ON d.id = l.domain_id WHERE l.slug = ? "
        "AND l.archived_at IS NULL ORDER BY d.is_default DESC, l.id LIMIT 1",
        (DEMO_SLUG,),
    ).fetchone()
    if row is not None:
        return catalog.get_link(conn, row[0])
    return catalog.create_link(
        conn,
        {"url": "https://example.com/", "title": "linkedge demo", "campaign": "demo"},
        slug=DEMO_SLUG,
    )


def _free_slug(conn: sqlite3.Connection, base: str) -> str:
    """`base`, or `base-2`, `base-3`, ... : a slug the hint can use without a conflict."""
    default = catalog.domain_row(conn, None)
    n = 1
    while True:
        slug = base if n == 1 else f"{base}-{n}"
        if not conn.execute(
            "SELECT 1 FROM links WHERE domain_id = ? AND slug = ?", (default["id"], slug)
        ).fetchone():
            return slug
        n += 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up a demo link and serve, on 127.0.0.1 unless asked otherwise."""
    config = config_from_args(args, edge_host=DEMO_HOST)
    conn = _prepare_to_serve(args, config)
    link = _demo_link(conn)
    default_host = catalog.domain_row(conn, None)["host"]
    slug = _free_slug(conn, "launch")
    tokens = [t for t in catalog.list_tokens(conn) if t["revoked_at"] is None]
    conn.close()
    from admin.runtime import Supervisor, run

    _setup_logging(config.log_level)
    exe = os.path.relpath(sys.argv[0]) if sys.argv[0].endswith("linkedge") else "linkedge"
    db = "" if config.db_path == admin_cli.DEFAULT_DB else f" --db {config.db_path}"
    host = "" if link["domain"] == default_host else f" -H 'Host: {link['domain']}'"
    token_env = os.environ.get("LINKEDGE_ADMIN_TOKEN")

    def ready(sup: Supervisor) -> None:
        edge = f"http://{_url_host(config.edge_host)}:{sup.edge_port}"
        lines = [
            "",
            f"linkedge is running with a demo link ({config.db_path}). Try:",
            f"  curl -i{host} {edge}/{link['slug']}",
            f"  curl -i{host} '{edge}/{link['slug']}?utm_source=readme'",
            f"  {exe} link add https://example.org/launch --slug {slug}{db}",
        ]
        if sup.admin_port is not None:
            admin = f"http://{_url_host(config.admin_host)}:{sup.admin_port}"
            if tokens and not token_env:
                lines.append(
                    f"Admin API on {admin}: an admin token already exists (tokens are shown "
                    f"once, when made); make another with `{exe} token create NAME{db}`"
                )
            else:
                lines.append(f"Admin API on {admin} with the token printed above")
        lines.append("Press Ctrl-C to stop (every click is written before exit).\n")
        print("\n".join(lines), flush=True)

    return run(config, ready)


def _url_host(host: str) -> str:
    """A listener's address as a URL's host: 0.0.0.0 and :: are reached on 127.0.0.1."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# --- links ---------------------------------------------------------------------------------


def _link_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if getattr(args, "url", None) is not None:
        fields["url"] = args.url
    if args.status is not None:
        fields["status"] = args.status
    for name in ("title", "notes", "campaign", *catalog.UTM_FIELDS):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if args.tag is not None:
        fields["tags"] = [t for value in args.tag for t in value.split(",")]
    if args.expires is not None:
        fields["expires_at"] = None if args.expires == "never" else parse_time(args.expires)
    if args.expired_url is not None:
        fields["expired_url"] = args.expired_url or None
    if args.cache_max_age is not None:
        fields["cache_max_age_s"] = args.cache_max_age
    if args.no_forward_query:
        fields["forward_query"] = False
    if args.query_precedence is not None:
        fields["query_precedence"] = args.query_precedence
    _routing_fields(args, fields)
    return fields


# --rule: a JSON object, or the short form `WHEN => URL [STATUS]` where WHEN is
# space-separated conditions `device=ios,android country=US query.ref=mail query.promo`.
_RULE_ARROW = "=>"


def parse_rule(text: str) -> dict[str, Any]:
    """One --rule argument as the API's rule object (edge/rules.py validates it)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            given = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise CLIError(f"--rule {text!r}: not valid JSON ({exc})") from None
        if not isinstance(given, dict):
            raise CLIError(f"--rule {text!r}: give a JSON object or 'WHEN => URL'")
        return given
    when_text, arrow, target = stripped.partition(_RULE_ARROW)
    parts = target.split()
    if not arrow or not parts or len(parts) > 2:
        raise CLIError(
            f"--rule {text!r}: give 'device=ios => https://apps.apple.com/...' (conditions, "
            "=>, the URL, optionally a status) or a JSON object"
        )
    when: dict[str, Any] = {}
    for cond in when_text.split():
        key, eq, value = cond.partition("=")
        if key.startswith("query."):
            when.setdefault("query", {})[key[6:]] = value if eq else True
        elif not eq or not value:
            raise CLIError(f"--rule {text!r}: {cond!r} is not CONDITION=VALUE[,VALUE]")
        else:
            when[key] = value.split(",") if "," in value else value
    if not when:
        raise CLIError(f"--rule {text!r}: no condition before => (e.g. device=ios)")
    rule: dict[str, Any] = {"when": when, "url": parts[0]}
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise CLIError(f"--rule {text!r}: the status after the URL must be a number")
        rule["status"] = int(parts[1])
    return rule


def parse_variant(text: str) -> dict[str, Any]:
    """One --variant: `URL`, `WEIGHT:URL` or `NAME:WEIGHT:URL`."""
    pieces = text.split(":", 2)
    if len(pieces) == 3 and not pieces[0].startswith("http") and pieces[1].strip().isdigit():
        return {"name": pieces[0], "weight": int(pieces[1]), "url": pieces[2]}
    if len(pieces) >= 2 and pieces[0].strip().isdigit():
        return {"weight": int(pieces[0]), "url": text.split(":", 1)[1]}
    return {"url": text}


def _routing_fields(args: argparse.Namespace, fields: dict[str, Any]) -> None:
    if getattr(args, "no_rules", False):
        fields["rules"] = None
    elif getattr(args, "rule", None):
        fields["rules"] = [parse_rule(r) for r in args.rule]
    if getattr(args, "no_variants", False):
        fields["variants"] = None
    elif getattr(args, "variant", None):
        fields["variants"] = [parse_variant(v) for v in args.variant]
    limit = getattr(args, "max_clicks", None)
    if limit is not None:
        if limit == "none":
            fields["max_clicks"] = None
        elif not limit.isdigit():
            raise CLIError(f"--max-clicks {limit!r}: a number of clicks, or 'none' to remove it")
        else:
            fields["max_clicks"] = int(limit)
    if getattr(args, "overflow_url", None) is not None:
        fields["overflow_url"] = args.overflow_url or None
    if getattr(args, "click_ids", None) is not None:
        fields["click_ids"] = args.click_ids
    if getattr(args, "click_id_param", None) is not None:
        fields["click_id_param"] = args.click_id_param or None
    launched = getattr(args, "launched_at", None)
    if launched is not None:
        fields["launched_at"] = (
            None if launched == "none" else now_ms() if launched == "now" else parse_time(launched)
        )


def _state(link: dict[str, Any]) -> str:
    state = catalog.link_state(link, now_ms())
    if state == "expired":
        return "expired (redirects to its expired URL)" if link["expired_url"] else "expired (410)"
    return state


def _show_link(args: argparse.Namespace, link: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json({**link, "short_url": short_url(link)})
        return
    print(f"{short_url(link)} -> {link['url']}")
    print(
        f"  id {link['id']}, {link['status']}, {_state(link)}, "
        f"expires {format_time(link['expires_at'])}"
    )
    tags = ", ".join(link["tags"]) or "-"
    print(f"  campaign {link['campaign'] or '-'}, tags {tags}")
    routing = []
    if link["rules"]:
        routing.append(f"{len(link['rules'])} rule(s)")
    if link["variants"]:
        split = "/".join(f"{v['name']} {v['weight']:g}" for v in link["variants"])
        routing.append(f"A/B {split}")
    if link["max_clicks"] is not None:
        routing.append(f"at most {link['max_clicks']} clicks, then {link['overflow_url'] or '410'}")
    if link["click_ids"]:
        routing.append(f"click ids as {link['click_id_param']}=")
    if link["launched_at"] is not None:
        routing.append(f"launched {format_time(link['launched_at'])}")
    if routing:
        print("  " + "; ".join(routing))
    utm = [f"{name} {link[name]}" for name in catalog.UTM_FIELDS if link[name]]
    if utm:
        location = catalog.link_location(link["url"], link)
        print(f"  UTM {', '.join(utm)}: visitors go to {location}")
    local = local_url(args, link)
    if local:
        print(f"  here: curl -i {local}")


def _warn_if_expired(fields: dict[str, Any]) -> None:
    expires = fields.get("expires_at")
    if expires is not None and expires <= now_ms():
        print(
            f"linkedge: warning: --expires {format_time(expires)} is in the past: the link is "
            "expired at once (410, or its --expired-url)",
            file=sys.stderr,
        )


def cmd_link_add(args: argparse.Namespace) -> int:
    conn = open_db(args)
    fields = _link_fields(args)
    _warn_if_expired(fields)
    link = catalog.create_link(conn, fields, domain=args.domain, slug=args.slug)
    _show_link(args, link, args.json)
    if not args.json:
        print(f"saved {changed(args)}")
    return 0


def cmd_link_list(args: argparse.Namespace) -> int:
    conn = open_db(args)
    where = []
    params: list[Any] = []
    if args.domain:
        where.append("domains.host = ?")
        params.append(args.domain.lower())
    if not args.all:
        where.append("links.archived_at IS NULL")
    sql = (
        "SELECT links.*, domains.host AS domain FROM links JOIN domains ON "
        "domains.id = links.domain_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY links.id"
    )
    links = [catalog.link_dict(r) for r in conn.execute(sql, params)]
    if args.json:
        print_json([{**link, "short_url": short_url(link)} for link in links])
        return 0
    rows = []
    now = now_ms()
    for link in links:
        state = catalog.link_state(link, now)
        rows.append(
            [
                str(link["id"]),
                f"{link['domain']}/{link['slug']}",
                str(link["status"]),
                state,
                link["url"],
            ]
        )
    print_table(rows, ["ID", "SHORT", "STATUS", "STATE", "DESTINATION"])
    return 0


def _find(conn: Any, args: argparse.Namespace) -> dict[str, Any]:
    return catalog.find_link(conn, args.slug, args.domain)


def cmd_link_show(args: argparse.Namespace) -> int:
    conn = open_db(args)
    _show_link(args, _find(conn, args), args.json)
    return 0


def cmd_link_qr(args: argparse.Namespace) -> int:
    from admin import qr

    conn = open_db(args)
    link = _find(conn, args)
    kind = args.format or ("png" if args.output.lower().endswith(".png") else "svg")
    opts = qr.options({k: getattr(args, k) for k in ("scale", "margin", "error", "dark", "light")})
    image = qr.render(short_url(link), kind, opts)
    with open(args.output, "wb") as out:
        out.write(image)
    print(f"wrote {os.path.abspath(args.output)}: {kind.upper()} of {qr.qr_url(short_url(link))}")
    return 0


def _tag_changes(args: argparse.Namespace, link: dict[str, Any]) -> list[str] | None:
    """The tags after --add-tag / --rm-tag (None when neither was given)."""
    added = [t.strip().lower() for v in args.add_tag or () for t in v.split(",") if t.strip()]
    removed = [t.strip().lower() for v in args.rm_tag or () for t in v.split(",") if t.strip()]
    if not added and not removed:
        return None
    if args.tag is not None:
        raise CLIError("--tag replaces every tag: give it, or --add-tag/--rm-tag, not both")
    tags = list(link["tags"])
    for tag in removed:
        if tag not in tags:
            raise CLIError(
                f"{link['slug']} has no tag {tag!r} (its tags: {', '.join(tags) or 'none'})"
            )
        tags.remove(tag)
    tags.extend(t for t in added if t not in tags)
    return tags


def _say_tags(before: list[str], after: list[str], replaced: bool) -> None:
    gone = [t for t in before if t not in after]
    new = [t for t in after if t not in before]
    if not gone and not new:
        return
    words = [f"tags {', '.join(before) or '(none)'} -> {', '.join(after) or '(none)'}"]
    if new:
        words.append(f"its clicks so far now count under {', '.join(new)}")
    if gone:
        words.append(f"no longer under {', '.join(gone)} in tag stats")
    line = "; ".join(words)
    if replaced and gone:
        line += " (--add-tag/--rm-tag change one tag and keep the others)"
    print(line)


def cmd_link_set(args: argparse.Namespace) -> int:
    conn = open_db(args)
    link = _find(conn, args)
    changes = _link_fields(args)
    tags = _tag_changes(args, link)
    if tags is not None:
        changes["tags"] = tags
    if not changes:
        raise CLIError("nothing to change: give --url, --status, --expires, --add-tag, ...")
    _warn_if_expired(changes)
    updated = catalog.update_link(conn, link["id"], changes)
    _show_link(args, updated, args.json)
    if not args.json:
        _say_tags(link["tags"], updated["tags"], replaced=args.tag is not None)
        print(f"saved {changed(args)}")
    return 0


def cmd_campaign_launch(args: argparse.Namespace) -> int:
    conn = open_db(args)
    if args.clear and args.at is not None:
        raise CLIError("--at and --clear: give one")
    at = None if args.clear else parse_time(args.at) if args.at is not None else now_ms()
    launch = catalog.launch_campaign(conn, args.name, at)
    if args.json:
        print_json({**launch, "launched_at": timerange.iso_ms(launch["launched_at"])})
        return 0
    when = format_time(launch["launched_at"]) if launch["launched_at"] else "not launched"
    print(f"campaign {launch['campaign']}: {when} ({launch['links']} links) {changed(args)}")
    return 0


def cmd_link_state(args: argparse.Namespace) -> int:
    conn = open_db(args)
    link = _find(conn, args)
    if args.action == "disable":
        link = catalog.update_link(conn, link["id"], {"disabled": True})
    elif args.action == "enable":
        if link["archived_at"]:
            link = catalog.archive_link(conn, link["id"], archived=False)
        link = catalog.update_link(conn, link["id"], {"disabled": False})
    elif args.action == "rm":
        if args.purge:
            catalog.purge_link(conn, link["id"])
            print(
                f"purged {link['domain']}/{link['slug']} (its clicks stay in the stats) "
                f"{changed(args)}"
            )
            return 0
        link = catalog.archive_link(conn, link["id"])
    as_json = getattr(args, "json", False)
    _show_link(args, link, as_json)
    if not as_json:
        print(f"saved {changed(args)}")
    return 0


# --- domains -------------------------------------------------------------------------------


def _say_default(args: argparse.Namespace, conn: sqlite3.Connection, host: str) -> None:
    """What making `host` the default domain did, and what it left as it was."""
    print(
        f"{host} is now the default domain: links added without --domain go on it, and "
        f"requests for a host that is no domain here (an IP address like 127.0.0.1, a name "
        f"not added) get its links."
    )
    port = setting(args, "edge_port") or 8080
    for other, count in catalog.changed_default(conn, host):
        if count:
            print(
                f"  {other} keeps its {count} link(s), with their short URLs: they answer "
                f"requests for Host: {other} (e.g. curl -H 'Host: {other}' "
                f"http://127.0.0.1:{port}/SLUG)"
            )


def cmd_domain_add(args: argparse.Namespace) -> int:
    conn = open_db(args)
    d = catalog.add_domain(
        conn,
        args.host,
        default=args.default,
        root_url=args.root_url,
        fallback_url=args.fallback_url,
        case_insensitive_slugs=bool(args.case_insensitive_slugs),
    )
    if args.json:
        print_json(d)
        return 0
    print(f"added {d['host']} {changed(args)}")
    if d["default"]:
        _say_default(args, conn, d["host"])
    return 0


def cmd_domain_set(args: argparse.Namespace) -> int:
    conn = open_db(args)
    changes: dict[str, Any] = {}
    if args.default:
        changes["default"] = True
    if args.root_url is not None:
        changes["root_url"] = args.root_url
    if args.fallback_url is not None:
        changes["fallback_url"] = args.fallback_url
    if args.case_insensitive_slugs is not None:
        changes["case_insensitive_slugs"] = args.case_insensitive_slugs
    if not changes:
        raise CLIError(
            "nothing to change: give --default, --root-url, --fallback-url or "
            "--case-insensitive-slugs"
        )
    was_default = catalog.domain_row(conn, args.host, "host")["is_default"]
    d = catalog.update_domain(conn, args.host, changes)
    if args.json:
        print_json(d)
        return 0
    print(f"updated {d['host']} {changed(args)}")
    if d["default"] and not was_default:
        _say_default(args, conn, d["host"])
    return 0


def cmd_domain_list(args: argparse.Namespace) -> int:
    conn = open_db(args)
    domains = catalog.list_domains(conn)
    if args.json:
        print_json(domains)
        return 0
    print_table(
        [
            [
                d["host"],
                "yes" if d["default"] else "",
                "any case" if d["case_insensitive_slugs"] else "exact",
                d["root_url"] or "-",
                d["fallback_url"] or "-",
            ]
            for d in domains
        ],
        ["HOST", "DEFAULT", "SLUGS", "ROOT URL", "FALLBACK URL"],
    )
    return 0


def cmd_domain_rm(args: argparse.Namespace) -> int:
    conn = open_db(args)
    catalog.remove_domain(conn, args.host)
    print(f"removed {args.host} {changed(args)}")
    return 0


# --- geo -----------------------------------------------------------------------------------

DEFAULT_GEOIP_FILE = "dbip-city-lite.mmdb"


def _geoip_path(args: argparse.Namespace) -> str | None:
    path: str | None = getattr(args, "geoip", None) or setting(args, "geoip_path")
    return path


def cmd_geo_info(args: argparse.Namespace) -> int:
    from geo.geoip import GeoDatabaseError, attribution_for, database_info

    path = args.path or _geoip_path(args)
    if not path:
        raise CLIError("give the database path (or --geoip / LINKEDGE_GEOIP_PATH)")
    try:
        info = database_info(path)
    except GeoDatabaseError as exc:
        raise CLIError(str(exc)) from None
    attribution = attribution_for(str(info.get("database_type")))
    if attribution:
        info["attribution"] = attribution
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_geo_lookup(args: argparse.Namespace) -> int:
    import ipaddress

    from geo.geoip import GeoDatabase

    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise CLIError(f"{args.ip!r} is not an IPv4 or IPv6 address") from None
    path = _geoip_path(args)
    asn_path = args.geoip_asn or setting(args, "geoip_asn_path")
    if not path and not asn_path:
        raise CLIError("no GeoIP database: pass --geoip PATH or run `linkedge geo update`")
    db = GeoDatabase(path, asn_path)
    status = db.status()
    if not status.get("enabled"):
        raise CLIError(f"GeoIP database unusable: {status.get('error')}")
    result = db.lookup(args.ip)._asdict()
    db.close()
    if args.json:
        print_json({"ip": args.ip, **result})
    else:
        for key, value in result.items():
            print(f"{key}: {value if value is not None else '-'}")
    return 0


def cmd_geo_update(args: argparse.Namespace) -> int:
    from geo.update import ATTRIBUTION, GeoUpdateError, default_url, download_database, redact

    env = admin_cli.settings_env(args)
    key = args.maxmind_licence_key or env.get("LINKEDGE_MAXMIND_LICENCE_KEY")
    url = args.url or default_url(dt.date.today(), key)
    dest = args.dest or _geoip_path(args) or DEFAULT_GEOIP_FILE
    verb = "downloading" if "://" in url and not url.startswith("file:") else "installing"
    print(f"{verb} {redact(url)} -> {dest}", file=sys.stderr)
    from admin.progress import Progress

    try:
        with Progress("geo update", unit="bytes") as progress:
            info = download_database(url, dest, timeout_s=args.timeout, on_bytes=progress.advance)
    except GeoUpdateError as exc:
        raise CLIError(f"GeoIP update failed: {exc}") from None
    if args.json:
        print_json(info)
    else:
        print(f"installed {dest}: {info.get('database_type')} built {info.get('build_date')}")
        if "dbip" in str(info.get("database_type", "")).lower():
            print(ATTRIBUTION)
        print(
            f"serve with: linkedge serve --geoip {dest}  (a server already using this file "
            "reloads it)"
        )
    return 0


# --- parser --------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line that says where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


CONFIG_HELP = (
    "settings file of LINKEDGE_*=VALUE lines, e.g. /etc/linkedge.env (env LINKEDGE_CONFIG)"
)


def _cmd(
    sub: Any, name: str, fn: Callable[[argparse.Namespace], int], help: str, example: str
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=_Formatter,
    )
    p.set_defaults(fn=fn)
    return p


def _config_option(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before the command (`linkedge --config F link list`) it stays set.
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)


def _db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        help="the database file (env LINKEDGE_DB_PATH or --config, default ./linkedge.db); "
        "it must exist: `linkedge init` creates one",
    )
    _config_option(p)


def _link_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", type=int, choices=catalog.REDIRECT_STATUSES, help="redirect status")
    p.add_argument("--title")
    p.add_argument("--notes")
    p.add_argument("--campaign")
    p.add_argument(
        "--tag",
        action="append",
        help="a tag, or several comma-separated (repeatable); on `set` it replaces them all",
    )
    for name in catalog.UTM_FIELDS:
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, help=f"{name} merged into Location"
        )
    p.add_argument(
        "--expires",
        help="ISO 8601 time (UTC without an offset) or relative like +7d; 'never' clears it",
    )
    p.add_argument("--expired-url", help="where to send visitors after expiry (else 410)")
    p.add_argument("--cache-max-age", type=int, help="seconds browsers may cache (default 0)")
    p.add_argument("--no-forward-query", action="store_true", help="do not pass ?query on")
    p.add_argument("--query-precedence", choices=("destination", "request"))
    p.add_argument(
        "--rule",
        action="append",
        help="a redirect rule, first match wins (repeatable, in order): "
        "'device=ios => https://apps.apple.com/app' or a JSON object (docs/api.md)",
    )
    p.add_argument("--no-rules", action="store_true", help="remove every rule")
    p.add_argument(
        "--variant",
        action="append",
        help="an A/B variant NAME:WEIGHT:URL (or WEIGHT:URL, URL), two to eight",
    )
    p.add_argument("--no-variants", action="store_true", help="end the A/B split")
    p.add_argument("--max-clicks", help="serve at most this many human clicks; 'none' removes it")
    p.add_argument("--overflow-url", help="where visitors go past --max-clicks (else 410)")
    p.add_argument(
        "--click-ids",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append a click id (lc=...) to the destination, for conversions",
    )
    p.add_argument("--click-id-param", help="the click id's parameter name (default lc)")
    p.add_argument(
        "--launched-at", help="the send time: 'now', ISO 8601, relative like -10m, or 'none'"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="linkedge",
        description="Self-hosted redirect edge for branded short links with live click stats.",
        epilog="example:\n  linkedge --config /etc/linkedge.env link list",
        formatter_class=_Formatter,
    )
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument(
        "--traceback", action="store_true", help="on an unexpected error, print the traceback"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _cmd(
        sub,
        "init",
        cmd_init,
        "create the database (only init, serve and demo create one)",
        "linkedge init --db /var/lib/linkedge/linkedge.db",
    )
    _db_option(p)
    p = _cmd(
        sub,
        "serve",
        cmd_serve,
        "run the redirect edge and the admin API",
        "linkedge serve --db /var/lib/linkedge/linkedge.db --trusted-proxy 127.0.0.1/32",
    )
    _add_serve_options(p)
    _config_option(p)
    p = _cmd(
        sub,
        "demo",
        cmd_demo,
        "serve with a demo link, on 127.0.0.1 unless --edge says otherwise (make run)",
        "linkedge demo --edge 127.0.0.1:8080",
    )
    _add_serve_options(p)
    _config_option(p)

    link = _cmd(
        sub,
        "link",
        lambda a: 0,
        "create, change and list links",
        "linkedge link add https://example.com/launch --slug launch",
    )
    lsub = link.add_subparsers(dest="link_command", metavar="ACTION", required=True)
    p = _cmd(
        lsub,
        "add",
        cmd_link_add,
        "add a link",
        "linkedge link add https://example.com/spring --slug spring --utm-source newsletter",
    )
    p._negative_number_matcher = admin_cli.RELATIVE_ARG_RE  # --expires -1h (see stats)
    p.add_argument("url", help="destination (absolute http or https URL)")
    p.add_argument("--slug", help="the short path (default: 7 random characters)")
    p.add_argument("--domain", help="domain (default: the default domain)")
    _link_options(p)
    _db_option(p)
    p = _cmd(lsub, "list", cmd_link_list, "list links", "linkedge link list --json")
    p.add_argument("--domain")
    p.add_argument("--all", action="store_true", help="include archived links")
    p.add_argument("--json", action="store_true")
    _db_option(p)
    p = _cmd(lsub, "show", cmd_link_show, "show one link", "linkedge link show spring")
    p.add_argument("slug")
    p.add_argument("--domain")
    p.add_argument("--json", action="store_true")
    _db_option(p)
    p = _cmd(
        lsub,
        "set",
        cmd_link_set,
        "change a link (served within a second)",
        "linkedge link set spring --url https://example.com/spring-sale",
    )
    p._negative_number_matcher = admin_cli.RELATIVE_ARG_RE
    p.add_argument("slug")
    p.add_argument("--url", help="new destination")
    p.add_argument("--domain")
    p.add_argument("--add-tag", action="append", help="add a tag, keeping the others (repeatable)")
    p.add_argument("--rm-tag", action="append", help="remove one tag (repeatable)")
    _link_options(p)
    _db_option(p)
    p = _cmd(
        lsub,
        "qr",
        cmd_link_qr,
        "write a link's QR code (its scans count as source qr)",
        "linkedge link qr spring -o spring.png --scale 12 --error q",
    )
    p.add_argument("slug")
    p.add_argument("--domain")
    p.add_argument("-o", "--output", required=True, help="the file (.svg or .png)")
    p.add_argument("--format", choices=("svg", "png"), help="default: by the file's extension")
    p.add_argument("--scale", type=int, help="pixels per module (1-50, default 10)")
    p.add_argument("--margin", type=int, help="quiet zone in modules (0-20, default 4)")
    p.add_argument("--error", choices=("l", "m", "q", "h"), help="error correction (default m)")
    p.add_argument("--dark", help="colour of the modules, #rgb or #rrggbb (default #000000)")
    p.add_argument("--light", help="background colour, or transparent (default #ffffff)")
    _db_option(p)
    for action, help_text in (
        ("disable", "answer 410 Gone for a link"),
        ("enable", "serve a disabled or archived link again"),
        ("rm", "archive a link (stops serving, keeps its stats; --purge frees the slug)"),
    ):
        p = _cmd(lsub, action, cmd_link_state, help_text, f"linkedge link {action} spring")
        p.set_defaults(action=action)
        p.add_argument("slug")
        p.add_argument("--domain")
        p.add_argument("--json", action="store_true")
        if action == "rm":
            p.add_argument("--purge", action="store_true", help="delete the link row for good")
        _db_option(p)

    campaign = _cmd(
        sub,
        "campaign",
        lambda a: 0,
        "a campaign's launch (the send time its links' checkpoints count from)",
        "linkedge campaign launch spring-2025",
    )
    csub = campaign.add_subparsers(dest="campaign_command", metavar="ACTION", required=True)
    p = _cmd(
        csub,
        "launch",
        cmd_campaign_launch,
        "mark a campaign's launch (now, or --at), or --clear it",
        "linkedge campaign launch spring-2025 --at=-10m",
    )
    p._negative_number_matcher = admin_cli.RELATIVE_ARG_RE
    p.add_argument("name")
    p.add_argument("--at", help="ISO 8601 time or relative like -10m (default now)")
    p.add_argument("--clear", action="store_true", help="remove the campaign's launch")
    p.add_argument("--json", action="store_true")
    _db_option(p)

    domain = _cmd(
        sub,
        "domain",
        lambda a: 0,
        "manage the domains links live on",
        "linkedge domain add go.example.com --default",
    )
    dsub = domain.add_subparsers(dest="domain_command", metavar="ACTION", required=True)
    p = _cmd(
        dsub,
        "add",
        cmd_domain_add,
        "add a domain",
        "linkedge domain add go.example.com --default --root-url https://example.com/",
    )
    p.add_argument("host")
    p.add_argument(
        "--default",
        action="store_true",
        help="new links go here, and hosts without a domain (127.0.0.1) get its links",
    )
    p.add_argument("--root-url", help="where / on this domain redirects")
    p.add_argument("--fallback-url", help="where unknown slugs redirect (instead of 404)")
    p.add_argument(
        "--case-insensitive-slugs",
        action="store_true",
        help="/Spring finds /spring (for printed and QR links people retype)",
    )
    p.add_argument("--json", action="store_true")
    _db_option(p)
    p = _cmd(
        dsub,
        "set",
        cmd_domain_set,
        "change a domain",
        "linkedge domain set go.example.com --fallback-url https://example.com/",
    )
    p.add_argument("host")
    p.add_argument("--default", action="store_true", help="make it the default domain")
    p.add_argument("--root-url")
    p.add_argument("--fallback-url")
    p.add_argument(
        "--case-insensitive-slugs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="match slugs in any letter case (refused while two differ only in case)",
    )
    p.add_argument("--json", action="store_true")
    _db_option(p)
    p = _cmd(dsub, "list", cmd_domain_list, "list domains", "linkedge domain list --json")
    p.add_argument("--json", action="store_true")
    _db_option(p)
    p = _cmd(
        dsub,
        "rm",
        cmd_domain_rm,
        "remove a domain without links",
        "linkedge domain rm old.example.com",
    )
    p.add_argument("host")
    _db_option(p)

    geo = _cmd(
        sub,
        "geo",
        lambda a: 0,
        "GeoIP database: info, lookup, update",
        "linkedge geo update --dest /var/lib/linkedge/dbip-city-lite.mmdb",
    )
    gsub = geo.add_subparsers(dest="geo_command", metavar="ACTION", required=True)
    p = _cmd(
        gsub,
        "info",
        cmd_geo_info,
        "type, build date and size of a .mmdb",
        "linkedge geo info /var/lib/linkedge/dbip-city-lite.mmdb",
    )
    p.add_argument("path", nargs="?", help="the .mmdb (default: --geoip / LINKEDGE_GEOIP_PATH)")
    p.add_argument("--geoip", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p = _cmd(
        gsub,
        "lookup",
        cmd_geo_lookup,
        "what a click from this IP would be recorded as",
        "linkedge geo lookup 81.2.69.142 --geoip GeoLite2-City.mmdb",
    )
    p.add_argument("ip")
    p.add_argument("--geoip", help="City or Country .mmdb (env LINKEDGE_GEOIP_PATH)")
    p.add_argument("--geoip-asn", help="ASN .mmdb (env LINKEDGE_GEOIP_ASN_PATH)")
    p.add_argument("--json", action="store_true")
    p = _cmd(
        gsub,
        "update",
        cmd_geo_update,
        "download DB-IP Lite City (free, CC BY 4.0) or, with a licence key, GeoLite2-City",
        "linkedge geo update --dest /var/lib/linkedge/dbip-city-lite.mmdb",
    )
    p.add_argument(
        "--dest",
        help=f"where to install (default LINKEDGE_GEOIP_PATH, else ./{DEFAULT_GEOIP_FILE})",
    )
    p.add_argument(
        "--url",
        help="download from this URL instead (.mmdb, .mmdb.gz or .tar.gz), or install a "
        "local file (./x.mmdb or file:///path) on a machine without internet access",
    )
    p.add_argument(
        "--maxmind-licence-key",
        help="MaxMind licence key for GeoLite2-City (env LINKEDGE_MAXMIND_LICENCE_KEY)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--json", action="store_true")
    _config_option(p)
    for name in ("info", "lookup"):
        _config_option(gsub.choices[name])
    admin_cli.add_commands(sub, _cmd, _db_option)  # token, utm, stats, backup
    alertcli.add_commands(sub, _cmd, _db_option)  # alert
    _add_bots_commands(sub)
    _add_import_export_commands(sub)
    conversions.add_commands(sub, _cmd, _db_option)  # event send
    p = _cmd(
        sub,
        "doctor",
        _doctor,
        "check the install: database, disk, GeoIP, ports, token, clock, bot list",
        "linkedge --config /etc/linkedge.env doctor",
    )
    _db_option(p)
    return parser


def _add_import_export_commands(sub: Any) -> None:
    from admin import exports, imports

    p = _cmd(
        sub,
        "import",
        imports.cmd_import,
        "import links from Bitly, Shlink, YOURLS, Kutt or a CSV (all or nothing)",
        "linkedge import bitly.csv --from bitly --dry-run",
    )
    p.add_argument("file", help="the export file")
    p.add_argument("--from", dest="source", required=True, choices=imports.FORMATS)
    p.add_argument(
        "--map",
        help="for --from csv: field=Header pairs, e.g. slug=Back-half,url=Long URL "
        f"(fields: {', '.join(imports.FIELDS)})",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would happen, write nothing")
    p.add_argument("--overwrite", action="store_true", help="replace links whose slug exists")
    p.add_argument("--domain", help="put every link on this domain (added when missing)")
    p.add_argument("--json", action="store_true")
    _db_option(p)

    p = _cmd(
        sub,
        "export",
        exports.cmd_export,
        "export links, clicks or stats as CSV or NDJSON (streamed)",
        "linkedge export clicks --from -7d --campaign spring --format ndjson -o clicks.ndjson",
    )
    p._negative_number_matcher = admin_cli.RELATIVE_ARG_RE  # --from -7d
    p.add_argument("what", choices=exports.KINDS)
    p.add_argument("--format", choices=exports.FORMATS, default="csv")
    p.add_argument("-o", "--output", help="the file (default: standard output)")
    p.add_argument("--from", dest="from_", help="clicks/stats from this time (e.g. -7d, ISO)")
    p.add_argument("--to", help="clicks/stats up to this time (default now)")
    p.add_argument("--link", help="only this link's slug (on --domain, else the default)")
    p.add_argument("--domain")
    p.add_argument("--campaign", help="only links of this campaign")
    _db_option(p)


# The bot lists compile ~100 patterns at import: only the commands that use them pay.
def _bots_explain(args: argparse.Namespace) -> int:
    from admin import botcli

    return botcli.cmd_bots_explain(args)


def _doctor(args: argparse.Namespace) -> int:
    from admin import doctor

    return doctor.cmd_doctor(args)


def _add_bots_commands(sub: Any) -> None:
    bots = _cmd(
        sub,
        "bots",
        lambda a: 0,
        "how clicks are labelled bots",
        "linkedge bots explain 'curl/8.5.0'",
    )
    bsub = bots.add_subparsers(dest="bots_command", metavar="ACTION", required=True)
    p = _cmd(
        bsub,
        "explain",
        _bots_explain,
        "the bot kind of a User-Agent and the signal that decided it",
        "linkedge bots explain 'Mozilla/5.0 (compatible; SemrushBot/7~bl)'",
    )
    p.add_argument("user_agent", metavar="UA", help="the User-Agent header's value")
    p.add_argument("--head", action="store_true", help="as if the request were a HEAD")
    p.add_argument("--prefetch", action="store_true", help="as if it carried Sec-Purpose")
    p.add_argument("--json", action="store_true")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except CommandError as exc:
        return _fail(exc.message, exc.exit_status)
    except LinkedgeError as exc:
        return _fail(exc.message)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the world failed, or a bug: one line, unless --traceback
        if args.traceback:
            traceback.print_exc()
        if isinstance(exc, sqlite3.Error):
            error = admin_cli.database_error(exc, args)
            return _fail(error.message, error.exit_status)
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            return _fail(f"{exc.strerror or exc}{where}", EXIT_RUNTIME)
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (a bug: please report it; "
            "`linkedge --traceback ...` shows where it happened)",
            EXIT_RUNTIME,
        )


if __name__ == "__main__":
    sys.exit(main())
