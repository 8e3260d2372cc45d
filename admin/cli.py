"""The `linkedge` command line: serve, demo, link, domain, geo, stats, token.

Rules: every command works on the SQLite file directly, so it is usable whether or not a
server runs (a running server picks the change up within a second). Every command's help
has an example; bad input prints one clear line to stderr and exits 2; listings take --json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from admin import admin_cli
from admin.admin_cli import open_db, print_json, print_table
from edge import catalog
from edge import config as cfg
from edge.db import now_ms
from edge.errors import LinkedgeError

EXIT_USAGE = 2


class CLIError(Exception):
    pass


def _fail(message: str) -> int:
    print(f"linkedge: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CLIError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_time(text: str, what: str = "time") -> int:
    """ISO 8601 (naive means UTC) or relative (+2h, -15m, +7d, now) -> Unix ms."""
    value = text.strip()
    if value == "now":
        return now_ms()
    if value[:1] in "+-" and value[1:-1].isdigit() and value[-1] in "smhdw":
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[value[-1]]
        seconds = int(value[1:-1]) * unit
        return now_ms() + (seconds if value[0] == "+" else -seconds) * 1000
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(
            f"{what}: expected ISO 8601 like 2026-12-31T23:59:00Z or relative like +7d, "
            f"got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def format_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def short_url(link: dict[str, Any]) -> str:
    return f"https://{link['domain']}/{link['slug']}"


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


def config_from_args(args: argparse.Namespace) -> cfg.Config:
    overrides: dict[str, Any] = {}
    for f in cfg.settings():
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str):
            value = cfg.parse_value(f, value)
        overrides[f.name] = value
    if getattr(args, "edge", None):
        overrides["edge_host"], overrides["edge_port"] = parse_hostport(args.edge, "--edge")
    if getattr(args, "admin", None):
        overrides["admin_host"], overrides["admin_port"] = parse_hostport(args.admin, "--admin")
    try:
        config = cfg.from_env(**overrides)
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


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from admin.runtime import run

    _setup_logging(config.log_level)
    return run(config)


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up a demo link on the default domain and serve."""
    config = config_from_args(args)
    from admin.runtime import Supervisor, run

    _setup_logging(config.log_level)
    conn = catalog.open_db(config.db_path)
    try:
        catalog.find_link(conn, "demo")
    except LinkedgeError:
        catalog.create_link(
            conn,
            {"url": "https://example.com/", "title": "linkedge demo", "campaign": "demo"},
            slug="demo",
        )
    conn.close()

    exe = os.path.relpath(sys.argv[0]) if sys.argv[0].endswith("linkedge") else "linkedge"

    def ready(sup: Supervisor) -> None:
        port = sup.edge_port
        print(
            "\nlinkedge is running with a demo link. Try:\n"
            f"  curl -i http://127.0.0.1:{port}/demo\n"
            f"  curl -i 'http://127.0.0.1:{port}/demo?utm_source=readme'\n"
            f"  {exe} link add https://example.org/launch --slug launch --db {config.db_path}\n"
            "Press Ctrl-C to stop (every click is written before exit).\n",
            flush=True,
        )

    return run(config, ready)


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
        fields["tags"] = args.tag
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
    return fields


def _show_link(link: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json({**link, "short_url": short_url(link)})
        return
    state = "archived" if link["archived_at"] else "disabled" if link["disabled"] else "active"
    print(f"{short_url(link)} -> {link['url']}")
    print(
        f"  id {link['id']}, {link['status']}, {state}, expires {format_time(link['expires_at'])}"
    )
    tags = ", ".join(link["tags"]) or "-"
    print(f"  campaign {link['campaign'] or '-'}, tags {tags}")


def cmd_link_add(args: argparse.Namespace) -> int:
    conn = open_db(args)
    link = catalog.create_link(conn, _link_fields(args), domain=args.domain, slug=args.slug)
    _show_link(link, args.json)
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
    for link in links:
        state = "archived" if link["archived_at"] else "disabled" if link["disabled"] else "active"
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
    _show_link(_find(conn, args), args.json)
    return 0


def cmd_link_set(args: argparse.Namespace) -> int:
    conn = open_db(args)
    link = _find(conn, args)
    changes = _link_fields(args)
    if not changes:
        raise CLIError("nothing to change: give --url, --status, --expires, ...")
    _show_link(catalog.update_link(conn, link["id"], changes), args.json)
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
            print(f"purged {link['domain']}/{link['slug']} (its clicks stay in the stats)")
            return 0
        link = catalog.archive_link(conn, link["id"])
    _show_link(link, getattr(args, "json", False))
    return 0


# --- domains -------------------------------------------------------------------------------


def cmd_domain_add(args: argparse.Namespace) -> int:
    conn = open_db(args)
    d = catalog.add_domain(
        conn,
        args.host,
        default=args.default,
        root_url=args.root_url,
        fallback_url=args.fallback_url,
    )
    if args.json:
        print_json(d)
    else:
        print(f"added {d['host']}{' (default)' if d['default'] else ''}")
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
    if not changes:
        raise CLIError("nothing to change: give --default, --root-url or --fallback-url")
    d = catalog.update_domain(conn, args.host, changes)
    print_json(d) if args.json else print(f"updated {d['host']}")
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
                d["root_url"] or "-",
                d["fallback_url"] or "-",
            ]
            for d in domains
        ],
        ["HOST", "DEFAULT", "ROOT URL", "FALLBACK URL"],
    )
    return 0


def cmd_domain_rm(args: argparse.Namespace) -> int:
    conn = open_db(args)
    catalog.remove_domain(conn, args.host)
    print(f"removed {args.host}")
    return 0


# --- geo -----------------------------------------------------------------------------------

DEFAULT_GEOIP_FILE = "dbip-city-lite.mmdb"


def _geoip_path(args: argparse.Namespace) -> str | None:
    return args.geoip or os.environ.get(cfg.env_name("geoip_path")) or None


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
    asn_path = args.geoip_asn or os.environ.get(cfg.env_name("geoip_asn_path")) or None
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

    key = args.maxmind_licence_key or os.environ.get("LINKEDGE_MAXMIND_LICENCE_KEY")
    url = args.url or default_url(dt.date.today(), key)
    dest = args.dest or _geoip_path(args) or DEFAULT_GEOIP_FILE
    print(f"downloading {redact(url)} -> {dest}", file=sys.stderr)
    try:
        info = download_database(url, dest, timeout_s=args.timeout)
    except GeoUpdateError as exc:
        raise CLIError(f"GeoIP update failed: {exc}") from None
    if args.json:
        print_json(info)
    else:
        print(f"installed {dest}: {info.get('database_type')} built {info.get('build_date')}")
        if "dbip" in str(info.get("database_type", "")).lower():
            print(ATTRIBUTION)
        print(f"serve with: linkedge serve --geoip {dest}  (a running server reloads it)")
    return 0


# --- parser --------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


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


def _db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="SQLite file (env LINKEDGE_DB_PATH, default ./linkedge.db)")


def _link_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", type=int, choices=catalog.REDIRECT_STATUSES, help="redirect status")
    p.add_argument("--title")
    p.add_argument("--notes")
    p.add_argument("--campaign")
    p.add_argument("--tag", action="append", help="a tag (repeat for several)")
    for name in catalog.UTM_FIELDS:
        p.add_argument(
            "--" + name.replace("_", "-"), dest=name, help=f"{name} merged into Location"
        )
    p.add_argument("--expires", help="ISO 8601 time or relative (+7d); 'never' clears it")
    p.add_argument("--expired-url", help="where to send visitors after expiry (else 410)")
    p.add_argument("--cache-max-age", type=int, help="seconds browsers may cache (default 0)")
    p.add_argument("--no-forward-query", action="store_true", help="do not pass ?query on")
    p.add_argument("--query-precedence", choices=("destination", "request"))
    p.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkedge",
        description="Self-hosted redirect edge for branded short links with live click stats.",
        epilog="example:\n  linkedge serve --edge 0.0.0.0:8080 --geoip GeoLite2-City.mmdb",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _cmd(
        sub,
        "serve",
        cmd_serve,
        "run the redirect edge and the admin API",
        "linkedge serve --db /var/lib/linkedge/links.db --trusted-proxy 127.0.0.1/32",
    )
    _add_serve_options(p)
    p = _cmd(
        sub,
        "demo",
        cmd_demo,
        "serve with a demo link (what `make run` does)",
        "linkedge demo --edge 127.0.0.1:8080",
    )
    _add_serve_options(p)

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
    p.add_argument("slug")
    p.add_argument("--url", help="new destination")
    p.add_argument("--domain")
    _link_options(p)
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
    p.add_argument("--default", action="store_true", help="serve unknown hosts and new links")
    p.add_argument("--root-url", help="where / on this domain redirects")
    p.add_argument("--fallback-url", help="where unknown slugs redirect (instead of 404)")
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
    p.add_argument("--default", action="store_true")
    p.add_argument("--root-url")
    p.add_argument("--fallback-url")
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
    p.add_argument("--dest", help=f"where to install (default --geoip or ./{DEFAULT_GEOIP_FILE})")
    p.add_argument("--geoip", help=argparse.SUPPRESS)
    p.add_argument("--url", help="download from this URL instead (.mmdb, .mmdb.gz or .tar.gz)")
    p.add_argument(
        "--maxmind-licence-key",
        help="MaxMind licence key for GeoLite2-City (env LINKEDGE_MAXMIND_LICENCE_KEY)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--json", action="store_true")
    admin_cli.add_commands(sub, _cmd, _db_option)  # token, utm, stats
    return parser


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
    except (CLIError, LinkedgeError) as exc:
        message = exc.message if isinstance(exc, LinkedgeError) else str(exc)
        return _fail(message)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
