"""edge/store.py and edge/links.py: schema, migrations, link writes, and the link table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge import store
from edge.errors import Conflict, InvalidField, InvalidURL, NotFound
from edge.links import LinkTable, slug_from_path


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return store.open_db(str(tmp_path / "t.db"))


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    first = store.connect(path)
    assert store.migrate(first) == [name for _, name, _ in store.MIGRATIONS]
    assert store.migrate(first) == []
    second = store.connect(path)
    assert store.migrate(second) == []
    rows = second.execute("SELECT id, name FROM schema_migrations ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(n, name) for n, name, _ in store.MIGRATIONS]
    version = second.execute("PRAGMA user_version").fetchone()[0]
    assert version == store.MIGRATIONS[-1][0]
    assert second.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_domain_exists(conn: sqlite3.Connection) -> None:
    domains = store.list_domains(conn)
    assert [(d["host"], d["default"]) for d in domains] == [("localhost", True)]


def test_create_link_validates_and_normalises(conn: sqlite3.Connection) -> None:
    link = store.create_link(
        conn,
        {
            "url": "https://Example.com/ü",
            "tags": ["Launch", "launch", " spring "],
            "utm_source": " NewsLetter ",
            "status": 308,
        },
        slug="spring",
    )
    assert link["url"] == "https://example.com/%C3%BC"
    assert link["tags"] == ["launch", "spring"]
    assert link["utm_source"] == "newsletter"
    assert link["status"] == 308
    assert link["domain"] == "localhost"
    with pytest.raises(Conflict):
        store.create_link(conn, {"url": "https://example.com/"}, slug="spring")
    with pytest.raises(InvalidURL):
        store.create_link(conn, {"url": "javascript:alert(1)"})
    with pytest.raises(InvalidField) as info:
        store.create_link(conn, {"url": "https://example.com/", "status": 200})
    assert info.value.field == "status"
    with pytest.raises(NotFound):
        store.create_link(conn, {"url": "https://example.com/"}, domain="nope.example")


def test_generated_slugs_are_random_and_unique(conn: sqlite3.Connection) -> None:
    slugs = {store.create_link(conn, {"url": "https://example.com/"})["slug"] for _ in range(50)}
    assert len(slugs) == 50


def test_every_change_bumps_the_revision_and_only_changed_rows_reload(
    conn: sqlite3.Connection,
) -> None:
    a = store.create_link(conn, {"url": "https://example.com/a"}, slug="a")
    store.create_link(conn, {"url": "https://example.com/b"}, slug="b")
    table = LinkTable()
    rev, links, purged, domains = store.changes_since(conn, 0)
    table.apply(rev, links, purged, domains)
    assert len(table) == 2
    store.update_link(conn, a["id"], {"url": "https://example.com/a2"})
    rev2, links, purged, domains = store.changes_since(conn, rev)
    assert rev2 > rev and [r["slug"] for r in links] == ["a"]
    assert table.apply(rev2, links, purged, domains) == 1
    link = table.resolve(b"localhost:8080", b"a")
    assert link is not None and link.location == "https://example.com/a2"
    # archive: leaves the table; purge: frees the slug
    store.archive_link(conn, a["id"])
    rev3, links, purged, domains = store.changes_since(conn, rev2)
    table.apply(rev3, links, purged, domains)
    assert table.resolve(b"localhost", b"a") is None
    with pytest.raises(Conflict):
        store.create_link(conn, {"url": "https://example.com/"}, slug="a")
    store.purge_link(conn, a["id"])
    rev4, links, purged, domains = store.changes_since(conn, rev3)
    assert purged == [(a["id"], 1, "a")]
    table.apply(rev4, links, purged, domains)
    again = store.create_link(conn, {"url": "https://example.com/again"}, slug="a")
    assert store.changes_since(conn, store.current_rev(conn))[1] == []
    rev5, links, purged, domains = store.changes_since(conn, rev4)
    table.apply(rev5, links, purged, domains)
    link = table.resolve(b"localhost", b"a")
    assert link is not None and link.id == again["id"] and len(table) == 2
    # a purge of a served link takes it out of the table, found by its domain and slug
    store.purge_link(conn, again["id"])
    table.apply(*store.changes_since(conn, rev5))
    assert table.resolve(b"localhost", b"a") is None and len(table) == 1


def test_plain_and_full_entries_answer_alike(conn: sqlite3.Connection) -> None:
    from edge.links import Link, entry_for, plain_head

    fields = {"url": "https://example.com/p?x=1", "utm_source": "mail", "status": 301}
    store.create_link(conn, fields, slug="p")
    store.create_link(conn, {**fields, "cache_max_age_s": 60}, slug="q")
    rows = {r["slug"]: r for r in store.all_links(conn)}
    plain = entry_for(rows["p"])
    assert isinstance(plain, bytes) and isinstance(entry_for(rows["q"]), Link)
    full = Link(rows["p"])
    assert plain_head(plain) == full.head
    assert plain_head(plain, b"y=2&x=9") == full.head_for_query(b"y=2&x=9")


def test_link_table_hosts_and_utm(conn: sqlite3.Connection) -> None:
    store.add_domain(conn, "go.example.com")
    store.create_link(
        conn,
        {"url": "https://example.com/p?utm_source=old&x=1", "utm_source": "mail"},
        slug="p",
        domain="go.example.com",
    )
    table = LinkTable()
    table.apply(*store.changes_since(conn, 0))
    link = table.resolve(b"GO.EXAMPLE.COM.", b"p")
    assert link is not None
    assert link.location == "https://example.com/p?x=1&utm_source=mail"
    assert b"Location: https://example.com/p?x=1&utm_source=mail\r\n" in link.head
    assert table.resolve(b"elsewhere", b"p") is None  # default domain has no "p"
    strict = LinkTable(unknown_host_404=True)
    strict.apply(*store.changes_since(conn, 0))
    assert strict.domain_for(b"elsewhere") is None


def test_domain_rules(conn: sqlite3.Connection) -> None:
    store.add_domain(conn, "go.example.com", default=True)
    assert [d["host"] for d in store.list_domains(conn) if d["default"]] == ["go.example.com"]
    with pytest.raises(Conflict):
        store.add_domain(conn, "GO.example.com")
    with pytest.raises(Conflict):
        store.remove_domain(conn, "go.example.com")  # the default
    store.create_link(conn, {"url": "https://example.com/"}, slug="x", domain="localhost")
    with pytest.raises(Conflict):
        store.remove_domain(conn, "localhost")  # has links


def test_utm_allow_list(conn: sqlite3.Connection) -> None:
    store.set_utm_allowed(conn, "source", ["Newsletter", "twitter"])
    store.create_link(conn, {"url": "https://example.com/", "utm_source": "NEWSLETTER"})
    with pytest.raises(InvalidField) as info:
        store.create_link(conn, {"url": "https://example.com/", "utm_source": "tiktok"})
    assert info.value.field == "utm_source"
    store.set_utm_allowed(conn, "utm_source", [])
    store.create_link(conn, {"url": "https://example.com/", "utm_source": "tiktok"})


def test_tokens_store_only_hashes(conn: sqlite3.Connection) -> None:
    record, secret = store.create_token(conn, "ci")
    assert secret.startswith("le_") and len(secret) > 40
    dump = "\n".join(conn.iterdump())
    assert secret not in dump
    assert (record["id"], store.token_hash(secret)) in store.active_token_hashes(conn)
    store.revoke_token(conn, record["id"])
    assert store.active_token_hashes(conn) == []


def test_salts_rotate_and_old_ones_are_deleted(conn: sqlite3.Connection) -> None:
    s1 = store.salt_for_day(conn, 100, lambda: b"a" * 32)
    assert store.salt_for_day(conn, 100, lambda: b"b" * 32) == s1
    s2 = store.salt_for_day(conn, 101, lambda: b"c" * 32)
    assert s2 != s1
    assert [r[0] for r in conn.execute("SELECT day FROM salts")] == [101]


def test_slug_from_path() -> None:
    assert slug_from_path(b"/abc") == b"abc"
    assert slug_from_path(b"/abc/") == b"abc"
    assert slug_from_path(b"/%61bc") == b"abc"
    assert slug_from_path(b"/") == b""


def test_utm_case_lower_by_default_or_kept(conn: sqlite3.Connection) -> None:
    assert store.utm_case(conn) == "lower"
    assert (
        store.create_link(conn, {"url": "https://e.com/", "utm_source": "NewsLetter"})["utm_source"]
        == "newsletter"
    )
    store.set_utm_case(conn, "keep")
    link = store.create_link(conn, {"url": "https://e.com/", "utm_source": " NewsLetter "})
    assert link["utm_source"] == "NewsLetter"
    store.set_utm_allowed(conn, "source", ["NewsLetter"])
    with pytest.raises(InvalidField):
        store.create_link(conn, {"url": "https://e.com/", "utm_source": "newsletter"})
    with pytest.raises(InvalidField):
        store.set_utm_case(conn, "upper")


def test_location_is_written_with_the_link_and_backfilled(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    conn = store.connect(path)
    # a database from before migration 0004: links without a stored Location
    conn.execute(
        "CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at INTEGER NOT NULL)"
    )
    for number, name, apply in store.MIGRATIONS[:3]:
        with store.Transaction(conn):
            apply(conn)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, name))
    with store.Transaction(conn):
        conn.execute(
            "INSERT INTO domains (host, is_default, created_at, rev) VALUES ('localhost', 1, 0, 1)"
        )
        conn.execute(
            "INSERT INTO links (domain_id, slug, url, utm_source, created_at, "
            "updated_at, rev) VALUES (1, 'a', 'https://e.com/?x=1', 'mail', 0, 0, 1)"
        )
    assert store.migrate(conn) == ["0004_add_link_location", "0005_rollups_for_big_ranges"]
    row = conn.execute("SELECT location FROM links").fetchone()
    assert row[0] == "https://e.com/?x=1&utm_source=mail"
    link = store.update_link(conn, 1, {"utm_source": "social"})
    loc = conn.execute("SELECT location FROM links WHERE id = ?", (link["id"],)).fetchone()[0]
    assert loc == "https://e.com/?x=1&utm_source=social"
