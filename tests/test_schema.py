"""edge/schema.py: frozen, numbered migrations; an old database upgraded equals a new one."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

from edge import catalog, schema
from edge.db import Transaction, connect

REPO = Path(__file__).resolve().parents[1]


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    first = connect(path)
    assert schema.migrate(first) == [name for _, name, _ in schema.MIGRATIONS]
    assert schema.migrate(first) == []
    second = connect(path)
    assert schema.migrate(second) == []
    rows = second.execute("SELECT id, name FROM schema_migrations ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(n, name) for n, name, _ in schema.MIGRATIONS]
    version = second.execute("PRAGMA user_version").fetchone()[0]
    assert version == schema.MIGRATIONS[-1][0]
    assert second.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_location_is_written_with_the_link_and_backfilled(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    conn = connect(path)
    # a database from before migration 0004: links without a stored Location
    conn.execute(
        "CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at INTEGER NOT NULL)"
    )
    for number, name, apply in schema.MIGRATIONS[:3]:
        with Transaction(conn):
            apply(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, name))
    with Transaction(conn):
        conn.execute(
            "INSERT INTO domains (host, is_default, created_at, rev) VALUES ('localhost', 1, 0, 1)"
        )
        conn.execute(
            "INSERT INTO links (domain_id, slug, url, utm_source, created_at, "
            "updated_at, rev) VALUES (1, 'a', 'https://e.com/?x=1', 'mail', 0, 0, 1)"
        )
    assert schema.migrate(conn) == [name for n, name, _ in schema.MIGRATIONS if n >= 4]
    row = conn.execute("SELECT location FROM links").fetchone()
    assert row[0] == "https://e.com/?x=1&utm_source=mail"
    link = catalog.update_link(conn, 1, {"utm_source": "social"})
    loc = conn.execute("SELECT location FROM links WHERE id = ?", (link["id"],)).fetchone()[0]
    assert loc == "https://e.com/?x=1&utm_source=social"


def _shape(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    """Every table's and index's definition, and every table's columns."""
    out: list[tuple[object, ...]] = []
    for kind, name, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ):
        out.append((kind, name, " ".join((sql or "").split())))
        if kind == "table":
            columns = conn.execute(f"PRAGMA table_info({name})").fetchall()
            out.extend((name, *tuple(c)) for c in columns)
    return out


def test_a_database_of_the_first_schema_upgrades_to_the_latest(tmp_path: Path) -> None:
    """Built from 0001's own SQL (as the first release left it, with links in it), then
    every later migration: the same schema as a database created today."""
    old = connect(str(tmp_path / "old.db"))
    old.execute(
        "CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at INTEGER NOT NULL)"
    )
    with Transaction(old):
        for statement in schema._M0001_SQL:
            old.execute(statement)
        old.execute("INSERT INTO schema_migrations VALUES (1, '0001_create_links', 0)")
        old.execute("PRAGMA user_version = 1")
        old.execute(
            "INSERT INTO domains (host, is_default, created_at, rev) VALUES ('localhost', 1, 0, 1)"
        )
        old.execute(
            "INSERT INTO links (domain_id, slug, url, tags, campaign, utm_source, created_at, "
            "updated_at, rev) VALUES (1, 'a', 'https://e.com/?x=1', '[\"t\"]', 'spring', 'mail', "
            "0, 0, 1)"
        )
    applied = schema.migrate(old)
    assert applied == [name for number, name, _ in schema.MIGRATIONS if number > 1]
    fresh = catalog.open_db(str(tmp_path / "fresh.db"))
    assert _shape(old) == _shape(fresh)
    assert old.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST
    # the link survived with its Location backfilled, and it serves
    row = old.execute("SELECT slug, location FROM links").fetchone()
    assert tuple(row) == ("a", "https://e.com/?x=1&utm_source=mail")


def test_migrations_import_nothing_that_can_change_under_them() -> None:
    """Frozen: edge/schema.py may use the standard library, orjson and the transaction
    gateway, never today's rollup, visitor, URL or catalog code."""
    tree = ast.parse((REPO / "edge" / "schema.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name.split(".")[0] in ("edge", "admin", "geo")}
    assert ours == {"edge.db"}


def test_a_semicolon_inside_a_literal_does_not_break_a_migration(tmp_path: Path) -> None:
    """DDL runs as a tuple of statements, never split on ";" (which the old runner did)."""
    conn = connect(str(tmp_path / "s.db"))
    with Transaction(conn):
        schema._run(conn, ("CREATE TABLE t (v TEXT DEFAULT 'a;b')", "INSERT INTO t DEFAULT VALUES"))
    assert conn.execute("SELECT v FROM t").fetchone()[0] == "a;b"


def test_0006_bounds_old_expiries_and_canonicalises_ipv6_hosts(tmp_path: Path) -> None:
    """An expiry stored before 0006 outside 1970..9999 made every read of its link fail
    (issue 9 defect 5): the nearest bound expires it as before. IPv6 domains are matched
    canonical since 0006 (defect 6), and every domain starts case-sensitive (item 11)."""
    conn = connect(str(tmp_path / "five.db"))
    conn.execute(
        "CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at INTEGER NOT NULL)"
    )
    for number, name, apply in schema.MIGRATIONS[:5]:
        with Transaction(conn):
            apply(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, name))
    with Transaction(conn):
        conn.execute(
            "INSERT INTO domains (host, is_default, created_at, rev) VALUES "
            "('localhost', 1, 0, 1), ('[0:0::1]', 0, 0, 1), ('[::2]', 0, 0, 1), "
            "('[0::2]', 0, 0, 1), ('[b\r\nx]', 0, 0, 1)"
        )
        for slug, expires in (("past", -(10**18)), ("far", 10**18), ("fine", 1_900_000_000_000)):
            conn.execute(
                "INSERT INTO links (domain_id, slug, url, location, expires_at, created_at, "
                "updated_at, rev) VALUES (1, ?, 'https://e.com/', 'https://e.com/', ?, 0, 0, 1)",
                (slug, expires),
            )
    assert schema.migrate(conn) == [name for n, name, _ in schema.MIGRATIONS if n >= 6]
    expiries = dict(conn.execute("SELECT slug, expires_at FROM links").fetchall())
    assert expiries == {"past": 0, "far": catalog.MAX_TIME_MS, "fine": 1_900_000_000_000}
    from admin.timerange import iso_ms

    assert [iso_ms(catalog.get_link(conn, i)["expires_at"]) for i in (1, 2)] == [
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
    ]
    hosts = [r[0] for r in conn.execute("SELECT host FROM domains ORDER BY id")]
    # '[0::2]' would collide with '[::2]': it keeps its old (unmatched) host
    assert hosts == ["localhost", "[::1]", "[::2]", "[0::2]", "[b\r\nx]"]
    assert {d["case_insensitive_slugs"] for d in catalog.list_domains(conn)} == {False}


def test_each_migration_is_announced_before_it_runs(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "announced.db")
    told: list[str] = []
    applied = schema.migrate(conn, told.append)
    assert told == applied == [name for _n, name, _f in schema.MIGRATIONS]
    assert {"0010_add_click_bot_reason", "0013_create_alerts"} <= set(told)
    assert "0011_create_change_history" in told
    again: list[str] = []
    assert schema.migrate(conn, again.append) == [] and again == []
    conn.close()
