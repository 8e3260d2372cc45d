"""The one frozen configuration object, and where its values come from.

Settings are data: each field carries its default and its help text, its name carries its
unit, and every field can also come from a `LINKEDGE_<NAME>` environment variable or a
settings file of such variables (`--config FILE` / `LINKEDGE_CONFIG`: the KEY=VALUE lines of
a systemd EnvironmentFile, so the service and an operator's `linkedge ...` read the same
file). Precedence: flags, then the environment, then the settings file, then defaults. The
CLI builds its `serve` options from these fields and docs/configuration.md documents each
one, and each of OTHER_VARIABLES (a test fails when one is missing there).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final


def _setting(default: Any, help: str, *, flag: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True, slots=True)
class Config:
    db_path: str = _setting(
        "linkedge.db",
        "SQLite database file. `serve` and `init` create it when missing; every other command "
        "refuses a missing one.",
        flag="db",
    )
    edge_host: str = _setting(
        "0.0.0.0", "Address the redirect edge listens on (`linkedge demo`: 127.0.0.1)."
    )
    edge_port: int = _setting(8080, "Port of the redirect edge (0 picks a free port).")
    admin_host: str = _setting("127.0.0.1", "Address of the admin API listener.")
    admin_port: int = _setting(8081, "Port of the admin API (0 picks a free port).")
    admin_public: bool = _setting(False, "Allow the admin API to listen on a non-loopback address.")
    admin_enabled: bool = _setting(True, "Start the admin API listener.")
    trusted_proxies: tuple[str, ...] = _setting(
        (),
        "CIDRs of reverse proxies whose X-Forwarded-For/Forwarded headers are believed "
        "(e.g. 127.0.0.1/32 when Caddy or nginx terminates TLS on the same host).",
        flag="trusted-proxy",
    )
    unknown_host: str = _setting(
        "default",
        "What a request for a host with no domain gets: 'default' serves the default "
        "domain's links, '404' answers Not Found.",
    )
    keep_alive_timeout_s: float = _setting(
        15.0, "Idle keep-alive connections are closed after this many seconds."
    )
    header_timeout_s: float = _setting(
        10.0,
        "A request head must arrive within this many seconds of its first byte, else 408 "
        "and close (slowloris defence).",
    )
    max_connections: int = _setting(
        10000, "Open edge connections above this are answered 503 and closed."
    )
    max_edge_body_bytes: int = _setting(
        65536, "A GET/HEAD body up to this size is read and discarded; larger gets 413."
    )
    shutdown_timeout_s: float = _setting(
        10.0, "On SIGTERM/SIGINT, wait this long for in-flight requests before closing."
    )
    db_busy_timeout_s: float = _setting(
        5.0,
        "How long SQLite waits for a lock held by another process before failing: the "
        "server's writes (failed click writes are kept and retried) and every CLI command's.",
    )
    link_poll_interval_s: float = _setting(
        0.25, "How often the server checks SQLite for link changes made by other processes."
    )
    link_store: str | None = _setting(
        None,
        "A shared link store, postgresql://USER@HOST:PORT/DB: links, domains, tokens and UTM "
        "lists live there for every node (docs/scale-out.md); this node's SQLite file keeps "
        "a copy it serves from. Needs the `postgresql` extra (psycopg).",
    )
    workers: int = _setting(
        0,
        "Edge worker processes answering on the edge port (SO_REUSEPORT); 0: one per "
        "usable core minus one for the collector, at least 1.",
    )
    ship_interval_s: float = _setting(
        0.005, "A worker ships its captured clicks to the collector this often."
    )
    ship_max_clicks: int = _setting(
        2000, "A worker also ships as soon as this many clicks are captured."
    )
    max_unacked_clicks: int = _setting(
        200000,
        "Clicks a worker keeps until the collector has committed them (it is slow or "
        "restarting); past this they are dropped, counted and shown on /metrics.",
    )
    max_unacked_bytes: int = _setting(
        64 * 1024 * 1024,
        "The same bound in bytes of captured clicks per worker (long headers count more).",
    )
    flush_interval_s: float = _setting(
        0.1, "The collector enriches and writes received clicks to SQLite this often."
    )
    scanner_window_s: float = _setting(
        60.0,
        "Clicks this soon after a link's launch are labelled bot kind scanner when they come "
        "through a mail-security rewrite host, from a mail scanner's network (with an ASN "
        "database), or without Accept-Language (docs/api.md, launches). 0: off.",
    )
    max_queued_clicks: int = _setting(
        200000,
        "Clicks the collector holds while the writer is behind (slow disk, locked DB); "
        "past this it stops reading from the workers, which keep their clicks meanwhile.",
    )
    record_clicks: bool = _setting(True, "Record clicks (off only for benchmarks).")
    click_sink: str | None = _setting(
        None,
        "Where the collector writes clicks: unset for SQLite (the default), or "
        "`clickhouse+http://[USER[:PASSWORD]@]HOST:8123/DATABASE` for ClickHouse (created and "
        "migrated at start; stats are then read from it). Links stay in the link store. "
        "See docs/clickhouse.md.",
        flag="click-sink",
    )
    click_sink_interval_s: float = _setting(
        1.0,
        "With a ClickHouse click sink, the collector writes at most this often (or at once "
        "past 100,000 clicks): ClickHouse wants few, large inserts.",
    )
    geoip_path: str | None = _setting(
        None,
        "MaxMind-format City or Country database (.mmdb); without one, geo fields stay empty.",
        flag="geoip",
    )
    geoip_asn_path: str | None = _setting(
        None, "Optional MaxMind-format ASN database (.mmdb).", flag="geoip-asn"
    )
    store_truncated_ip: bool = _setting(
        False, "Store the client IP truncated to /24 (IPv4) or /48 (IPv6) with each click."
    )
    log_level: str = _setting("info", "Logging level: debug, info, warning, error.")
    # alerts (docs/alerts.md): admin/alerts.py, admin/checks.py, admin/notify.py
    alert_eval_interval_s: float = _setting(
        10.0, "How often the collector evaluates the alert rules (docs/alerts.md)."
    )
    destination_check_interval_s: float = _setting(
        300.0,
        "How often every active destination URL is checked (HEAD, then GET); 0 turns the "
        "checks off. A failing one is checked again with backoff up to 16 times this.",
    )
    destination_check_timeout_s: float = _setting(
        10.0, "A destination check (connect, TLS, answer) gives up after this many seconds."
    )
    alert_delivery_attempts: int = _setting(
        5, "Attempts to deliver one alert notification (webhook, Slack, email) before it fails."
    )
    alert_retry_base_s: float = _setting(
        2.0, "Delay before the second delivery attempt; each later one waits twice as long."
    )
    allow_private_fetch: bool = _setting(
        False,
        "Let destination checks and alert webhooks reach private, loopback and link-local "
        "addresses (an internal receiver; tests). Off: such a target is refused and logged.",
    )
    smtp_host: str | None = _setting(
        None, "SMTP server for alert emails (host name); without one, email targets fail."
    )
    smtp_port: int = _setting(587, "Port of the SMTP server.")
    smtp_starttls: bool = _setting(True, "Upgrade the SMTP connection with STARTTLS.")
    smtp_user: str | None = _setting(None, "SMTP login user (none: no login).")
    smtp_password: str | None = _setting(None, "SMTP login password.")
    smtp_from: str = _setting("linkedge@localhost", "The From address of alert emails.")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def config_to_json(config: Config) -> str:
    """The config for a child process (the supervisor's, exactly)."""
    return json.dumps({f.name: getattr(config, f.name) for f in settings()})


def config_from_json(text: str) -> Config:
    values = json.loads(text)
    for f in settings():
        if isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return Config(**values)


# linkedge's environment variables that are not settings of Config.
CONFIG_VARIABLE: Final = "LINKEDGE_CONFIG"
OTHER_VARIABLES: Final = {
    CONFIG_VARIABLE: "A settings file to read (what --config FILE gives): KEY=VALUE lines of "
    "LINKEDGE_* variables, as in a systemd EnvironmentFile.",
    "LINKEDGE_ADMIN_TOKEN": "An admin API token (24 printable characters or more) that "
    "`serve` stores at start, e.g. for automation; without one the first start prints one.",
    "LINKEDGE_MAXMIND_LICENCE_KEY": "MaxMind licence key: `geo update` then fetches "
    "GeoLite2-City instead of DB-IP Lite City.",
}


def env_name(name: str) -> str:
    return "LINKEDGE_" + name.upper()


class SettingsFileError(ValueError):
    """A settings file that cannot be read or has a bad line (the message says where)."""


def read_settings_file(path: str) -> dict[str, str]:
    """The LINKEDGE_* variables of a settings file, as systemd's EnvironmentFile= reads
    them: `KEY=VALUE` lines, blank lines and lines starting with `#` or `;` ignored, a
    value in matching single or double quotes unquoted. Other variables are left alone (the
    file may hold some for other programs); an unknown LINKEDGE_ name or a bad value is an
    error naming the line, so a typo never passes silently."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsFileError(f"cannot read settings file {path}: {reason}") from None
    by_name = {env_name(f.name): f for f in settings()}
    values: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] in "#;":
            continue
        key, eq, value = text.partition("=")
        key, value = key.strip(), value.strip()
        where = f"{path}:{number}"
        if not eq or not key:
            raise SettingsFileError(f"{where}: expected KEY=VALUE, got {line.strip()!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if not key.startswith("LINKEDGE_"):
            continue
        if key == CONFIG_VARIABLE or (key not in by_name and key not in OTHER_VARIABLES):
            raise SettingsFileError(
                f"{where}: unknown setting {key} (docs/configuration.md lists them)"
            )
        if key in by_name:
            try:
                parse_value(by_name[key], value)
            except ValueError as exc:
                raise SettingsFileError(f"{where}: {exc}") from None
        values[key] = value
    return values


def environment(
    settings_file: str | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables settings come from: the settings file's (`settings_file`, else the
    one LINKEDGE_CONFIG names, if any), overridden by the environment's."""
    environ = os.environ if environ is None else environ
    path = settings_file or environ.get(CONFIG_VARIABLE) or None
    merged = read_settings_file(path) if path else {}
    merged.update(environ)
    return merged


def settings() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Config))


def parse_value(f: dataclasses.Field[Any], raw: str) -> Any:
    """Turn a string (from the environment or a flag) into the field's type."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{f.name}: expected true/false, got {raw!r}")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{f.name}: expected an integer, got {raw!r}") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{f.name}: expected a number, got {raw!r}") from None
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind == "str | None":
        return raw or None
    return raw


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """A Config from LINKEDGE_* variables, then explicit overrides (e.g. CLI flags)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in settings():
        raw = environ.get(env_name(f.name))
        if raw is not None:
            values[f.name] = parse_value(f, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config) -> None:
    if config.unknown_host not in ("default", "404"):
        raise ValueError("unknown_host must be 'default' or '404'")
    for name in (
        "keep_alive_timeout_s",
        "header_timeout_s",
        "flush_interval_s",
        "click_sink_interval_s",
    ):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive")
    if not 0 <= config.edge_port <= 65535 or not 0 <= config.admin_port <= 65535:
        raise ValueError("ports must be between 0 and 65535")
    if config.link_store is not None and not config.link_store.startswith(
        ("postgresql://", "postgres://")
    ):
        raise ValueError("link_store must be a postgresql:// URL")
    if not 0 <= config.scanner_window_s <= 3600:
        raise ValueError("scanner_window_s must be from 0 to 3600 seconds")
    if config.click_sink is not None:
        from edge.chclient import parse_sink_url

        parse_sink_url(config.click_sink)
    if config.max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    if config.alert_eval_interval_s <= 0 or config.destination_check_timeout_s <= 0:
        raise ValueError("alert_eval_interval_s and destination_check_timeout_s must be positive")
    if config.destination_check_interval_s < 0 or config.alert_retry_base_s < 0:
        raise ValueError("destination_check_interval_s and alert_retry_base_s cannot be negative")
    if config.alert_delivery_attempts < 1:
        raise ValueError("alert_delivery_attempts must be at least 1")
