"""The shared link store (edge/pgstore.py) against a real PostgreSQL: every catalog write
of one node reaches every other node's SQLite copy, validated once (edge/catalog.py) and
against the latest catalog; a store that is down changes nothing; joining is refused
where it would mix two catalogs. The nodes here are SQLite files in this process (the
CLI's path); tests/test_cluster.py runs real `linkedge serve` nodes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edge import catalog, pgstore
from edge.errors import Conflict, NotFound
from tests.pg_fixtures import PgServer

# Columns that differ between copies by design: each copy's own revision counter, and
# when a token was last used on that node.
LOCAL_COLUMNS = {"rev", "last_used_at"}


_open: list[tuple[sqlite3.Connection, pgstore.LinkStore]] = []


@pytest.fixture(autouse=True)
def _close_nodes() -> Iterator[None]:
    yield
    while _open:
        conn, store = _open.pop()
        store.close()
        conn.close()


def node(tmp_path: Path, name: str, url: str) -> tuple[sqlite3.Connection, pgstore.LinkStore]:
    """A node's SQLite copy joined to the store (as a CLI command opens it)."""
    conn = catalog.open_db(str(tmp_path / f"{name}.db"))
    store = pgstore.attach_cli(conn, url)
    _open.append((conn, store))
    return conn, store


def joined(conn: sqlite3.Connection, url: str) -> pgstore.LinkStore:
    store = pgstore.LinkStore(url)
    _open.append((conn, store))
    return store


def catalog_of(conn: sqlite3.Connection) -> dict[str, Any]:
    """Everything the store shares, as one comparable value."""
    out: dict[str, Any] = {}
    for table, key, doc in pgstore._all_rows(conn):
        assert doc is not None
        out[f"{table}{key}"] = {k: v for k, v in doc.items() if k not in LOCAL_COLUMNS}
    return out


def store_rows(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as pg:
        rows = pg.execute(
            "SELECT kind, key, row FROM linkedge_rows WHERE NOT deleted ORDER BY kind, key"
        ).fetchall()
    return {
        f"{kind}{key}": {k: v for k, v in row.items() if k not in LOCAL_COLUMNS}
        for kind, key, row in rows
    }


def group_total(conn: sqlite3.Connection, dim: str, key: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(clicks), 0) FROM group_minute WHERE dim = ? AND key = ?", (dim, key)
    ).fetchone()
    return int(row[0])


def test_every_catalog_write_reaches_the_other_copy(tmp_path: Path, link_store: str) -> None:
    a, store_a = node(tmp_path, "a", link_store)
    b, store_b = node(tmp_path, "b", link_store)
    assert catalog_of(a) == catalog_of(b)  # b took the store's default domain and nothing else
    # links: create (tags, UTM, rules), edit, archive, purge
    x = catalog.create_link(
        a,
        {"url": "https://example.com/x", "campaign": "spring", "tags": ["Launch", "promo"]},
        slug="x",
    )
    y = catalog.create_link(a, {"url": "https://example.com/y", "utm_source": "News"}, slug="y")
    store_b.pull(b)
    z = catalog.create_link(b, {"url": "https://example.com/z"}, slug="z")
    store_a.pull(a)
    catalog.update_link(a, x["id"], {"url": "https://example.com/x2", "status": 301})
    catalog.archive_link(a, y["id"])
    catalog.purge_link(a, z["id"])
    # domains: add, make default, change, remove
    catalog.add_domain(a, "go.example.com", fallback_url="https://example.com/")
    catalog.add_domain(a, "old.example.com")
    catalog.update_domain(a, "go.example.com", {"default": True, "case_insensitive_slugs": True})
    catalog.remove_domain(a, "old.example.com")
    # tokens, UTM lists, the UTM case
    _token, secret = catalog.create_token(a, "ci")
    revoked, _ = catalog.create_token(a, "old")
    catalog.revoke_token(a, revoked["id"])
    catalog.set_utm_allowed(a, "medium", ["email", "social"])
    catalog.set_utm_case(a, "keep")
    before = catalog.current_rev(b)
    assert store_b.pull(b) > 0
    assert catalog_of(a) == catalog_of(b) == store_rows(link_store)
    # b's workers reload what carries a newer revision of b's own: every row the pull
    # wrote carries the one revision it took
    _rev, changed, _purged, _domains = catalog.changes_since(b, before)
    assert {r["slug"] for r in changed} == {"x", "y"}
    assert {r["rev"] for r in changed} == {catalog.current_rev(b)}
    # what b's edge and API read: the same links, and the token authenticates there
    assert catalog.find_link(b, "x", "localhost")["url"] == "https://example.com/x2"
    assert catalog.get_link(b, y["id"])["archived_at"] is not None
    with pytest.raises(NotFound):
        catalog.get_link(b, z["id"])
    assert catalog.active_token_id(b, catalog.token_hash(secret)) is not None
    assert catalog.active_token_id(b, catalog.token_hash("le_nope")) is None
    assert [d["host"] for d in catalog.list_domains(b) if d["default"]] == ["go.example.com"]
    assert catalog.utm_allowed(b) == {"utm_medium": ["email", "social"]}
    assert catalog.utm_case(b) == "keep"
    # b's workers find the changes: every changed row carries a newer revision of b's own
    rev, links, purged, domains = catalog.changes_since(b, 0)
    assert {r["slug"] for r in links} == {"x", "y"} and [p[2] for p in purged] == ["z"]
    # the UTM allow-list set on a is enforced on b (validation reads the copy)
    with pytest.raises(catalog.InvalidField):
        catalog.create_link(b, {"url": "https://example.com/m", "utm_medium": "print"})


def test_an_edit_on_one_node_moves_the_other_nodes_group_history(
    tmp_path: Path, link_store: str
) -> None:
    """Clicks are per node (SQLite sinks): an edit made elsewhere moves this node's
    rolled-up history to the link's new groups, as the edit would have done here."""
    a, store_a = node(tmp_path, "a", link_store)
    b, store_b = node(tmp_path, "b", link_store)
    link = catalog.create_link(a, {"url": "https://example.com/", "campaign": "old"}, slug="c")
    store_b.pull(b)
    minute = 29_000_000
    with catalog.Transaction(b):
        b.execute(
            "INSERT INTO link_minute (link_id, minute, clicks, humans) VALUES (?, ?, 7, 5)",
            (link["id"], minute),
        )
        b.execute(
            "INSERT INTO group_minute (dim, key, minute, clicks, humans) "
            "VALUES ('campaign', 'old', ?, 7, 5)",
            (minute,),
        )
    catalog.update_link(a, link["id"], {"campaign": "new"})
    store_b.pull(b)
    assert group_total(b, "campaign", "old") == 0
    assert group_total(b, "campaign", "new") == 7
    catalog.purge_link(a, link["id"])
    store_b.pull(b)
    assert group_total(b, "campaign", "new") == 0


def test_a_node_behind_the_store_is_checked_again_against_the_latest(
    tmp_path: Path, link_store: str
) -> None:
    a, _store_a = node(tmp_path, "a", link_store)
    b, store_b = node(tmp_path, "b", link_store)
    catalog.create_link(a, {"url": "https://example.com/a"}, slug="same")
    # b has not seen a's link: its write is refused before anything is stored ...
    with pytest.raises(pgstore.StoreConflict) as info:
        catalog.create_link(b, {"url": "https://example.com/b"}, slug="same")
    assert info.value.status == 409
    assert b.execute("SELECT count(*) FROM links").fetchone()[0] == 0
    # ... and once current, the one validation of edge/catalog.py sees the slug taken
    store_b.pull(b)
    with pytest.raises(Conflict, match="already taken"):
        catalog.create_link(b, {"url": "https://example.com/b"}, slug="same")
    # ids are the cluster's: a link made on b next gets the next id everywhere
    other = catalog.create_link(b, {"url": "https://example.com/b"}, slug="other")
    assert other["id"] == 2
    assert store_rows(link_store)["links[2]"]["slug"] == "other"


def test_a_store_that_is_down_changes_nothing_and_the_copy_still_reads(
    tmp_path: Path, link_store: str, pg_server: PgServer
) -> None:
    a, store_a = node(tmp_path, "a", link_store)
    catalog.create_link(a, {"url": "https://example.com/"}, slug="kept")
    pg_server.stop()
    try:
        with pytest.raises(pgstore.StoreUnavailable) as info:
            catalog.create_link(a, {"url": "https://example.com/"}, slug="lost")
        assert info.value.status == 503
        assert "unreachable" in info.value.message and "nothing was changed" in info.value.message
        assert [r[0] for r in a.execute("SELECT slug FROM links")] == ["kept"]
        assert catalog.find_link(a, "kept")["slug"] == "kept"  # reads go on from the copy
        # a CLI command on this node starts with the copy it has, and says so
        again = catalog.open_db(str(tmp_path / "a.db"))
        _open.append((again, pgstore.attach_cli(again, link_store)))
    finally:
        pg_server.start()
    catalog.create_link(a, {"url": "https://example.com/"}, slug="later")
    assert {r["slug"] for r in store_rows(link_store).values() if "slug" in r} >= {"later"}


def test_joining_never_mixes_two_catalogs(
    tmp_path: Path, link_store: str, pg_server: PgServer
) -> None:
    # the first node seeds an empty store with what it has: its links keep their ids
    first = catalog.open_db(str(tmp_path / "first.db"))
    _open.append((first, pgstore.LinkStore(link_store)))
    for slug in ("p", "q"):
        catalog.create_link(first, {"url": f"https://example.com/{slug}"}, slug=slug)
    store = joined(first, link_store)
    assert "seeded" in store.join(first)
    assert {v.get("slug") for v in store_rows(link_store).values()} >= {"p", "q"}
    # a node with links of its own cannot join a store that holds another catalog
    other = catalog.open_db(str(tmp_path / "other.db"))
    _open.append((other, pgstore.LinkStore(link_store)))
    catalog.create_link(other, {"url": "https://example.com/o"}, slug="o")
    with pytest.raises(pgstore.StoreMismatch, match="1 link.* of its own"):
        joined(other, link_store).join(other)
    # nor can a copy of one store be pointed at another store
    elsewhere = pg_server.create_database()
    with pytest.raises(pgstore.StoreMismatch, match="mirrors another link store"):
        joined(first, elsewhere).join(first)
    # the store's schema is numbered and recorded, applied once
    assert store.migrate() == []
    with psycopg.connect(link_store) as pg:
        assert pg.execute("SELECT id, name FROM linkedge_pg_migrations").fetchall() == [
            (1, "0001_create_store")
        ]


def test_the_url_shown_never_carries_the_password() -> None:
    assert pgstore.redact("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert pgstore.redact("postgresql://u@db/x") == "postgresql://u@db/x"
    with pytest.raises(ValueError, match="postgresql://"):
        pgstore.check_url("mysql://db/x")


def test_a_store_the_listener_found_down_refuses_at_once(tmp_path: Path, link_store: str) -> None:
    """While the node's listener says the store is unreachable, a write fails at once (no
    connect timeout on the writer thread, which the clicks share) and changes nothing."""
    a, store_a = node(tmp_path, "a", link_store)
    store_a.down = lambda: "connection refused"
    with pytest.raises(pgstore.StoreUnavailable, match="connection refused"):
        catalog.create_link(a, {"url": "https://example.com/"}, slug="no")
    assert a.execute("SELECT count(*) FROM links").fetchone()[0] == 0
    assert "links[1]" not in store_rows(link_store)
    store_a.down = lambda: None
    catalog.create_link(a, {"url": "https://example.com/"}, slug="yes")
    assert store_rows(link_store)["links[1]"]["slug"] == "yes"
