"""edge/links.py: the link table as the edge serves it (LinkTable.answer), kept in step with
the catalog's changes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from edge import catalog
from edge.db import current_rev
from edge.errors import Conflict
from edge.http import parse_head
from edge.links import Answer, LinkTable, slug_from_path


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return catalog.open_db(str(tmp_path / "t.db"))


def answer(table: LinkTable, host: bytes, target: bytes, now: float | None = None) -> Answer:
    """What the edge answers to `GET target` with this Host."""
    parsed = parse_head(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert parsed is not None
    return table.answer(parsed[0], time.time() if now is None else now)


def location(table: LinkTable, host: bytes, target: bytes) -> str | None:
    """The Location of a served redirect, or None when the answer is not one."""
    head, _body, status, link_id, *_rest = answer(table, host, target)
    if not link_id:
        return None
    assert status in (301, 302, 303, 307, 308)
    start = head.index(b"\r\nLocation: ") + 12
    return head[start : head.index(b"\r\n", start)].decode()


def test_every_change_bumps_the_revision_and_only_changed_rows_reload(
    conn: sqlite3.Connection,
) -> None:
    a = catalog.create_link(conn, {"url": "https://example.com/a"}, slug="a")
    catalog.create_link(conn, {"url": "https://example.com/b"}, slug="b")
    table = LinkTable()
    rev, links, purged, domains = catalog.changes_since(conn, 0)
    table.apply(rev, links, purged, domains)
    assert len(table) == 2
    catalog.update_link(conn, a["id"], {"url": "https://example.com/a2"})
    rev2, links, purged, domains = catalog.changes_since(conn, rev)
    assert rev2 > rev and [r["slug"] for r in links] == ["a"]
    assert table.apply(rev2, links, purged, domains) == 1
    assert location(table, b"localhost:8080", b"/a") == "https://example.com/a2"
    # archive: leaves the table; purge: frees the slug
    catalog.archive_link(conn, a["id"])
    rev3, links, purged, domains = catalog.changes_since(conn, rev2)
    table.apply(rev3, links, purged, domains)
    assert location(table, b"localhost", b"/a") is None
    with pytest.raises(Conflict):
        catalog.create_link(conn, {"url": "https://example.com/"}, slug="a")
    catalog.purge_link(conn, a["id"])
    rev4, links, purged, domains = catalog.changes_since(conn, rev3)
    assert purged == [(a["id"], 1, "a")]
    table.apply(rev4, links, purged, domains)
    again = catalog.create_link(conn, {"url": "https://example.com/again"}, slug="a")
    assert catalog.changes_since(conn, current_rev(conn))[1] == []
    rev5, links, purged, domains = catalog.changes_since(conn, rev4)
    table.apply(rev5, links, purged, domains)
    assert answer(table, b"localhost", b"/a")[3] == again["id"] and len(table) == 2
    # a purge of a served link takes it out of the table, found by its domain and slug
    catalog.purge_link(conn, again["id"])
    table.apply(*catalog.changes_since(conn, rev5))
    assert location(table, b"localhost", b"/a") is None and len(table) == 1


def test_plain_and_full_entries_answer_alike(conn: sqlite3.Connection) -> None:
    from edge.links import Link, entry_for, plain_head

    fields = {"url": "https://example.com/p?x=1", "utm_source": "mail", "status": 301}
    catalog.create_link(conn, fields, slug="p")
    catalog.create_link(conn, {**fields, "cache_max_age_s": 60}, slug="q")
    rows = {r["slug"]: r for r in catalog.all_links(conn)}
    plain = entry_for(rows["p"])
    assert isinstance(plain, bytes) and isinstance(entry_for(rows["q"]), Link)
    full = Link(rows["p"])
    assert plain_head(plain) == full.head
    assert plain_head(plain, b"y=2&x=9") == full.head_for_query(b"y=2&x=9")


def test_link_table_hosts_and_utm(conn: sqlite3.Connection) -> None:
    catalog.add_domain(conn, "go.example.com")
    catalog.create_link(
        conn,
        {"url": "https://example.com/p?utm_source=old&x=1", "utm_source": "mail"},
        slug="p",
        domain="go.example.com",
    )
    table = LinkTable()
    table.apply(*catalog.changes_since(conn, 0))
    assert location(table, b"GO.EXAMPLE.COM.", b"/p") == "https://example.com/p?x=1&utm_source=mail"
    head = answer(table, b"go.example.com:8080", b"/p")[0]
    assert b"Location: https://example.com/p?x=1&utm_source=mail\r\n" in head
    assert answer(table, b"elsewhere", b"/p")[2] == 404  # the default domain has no "p"
    strict = LinkTable(unknown_host_404=True)
    strict.apply(*catalog.changes_since(conn, 0))
    assert strict.domain_for(b"elsewhere") is None


def test_slug_from_path() -> None:
    assert slug_from_path(b"/abc") == b"abc"
    assert slug_from_path(b"/abc/") == b"abc"
    assert slug_from_path(b"/%61bc") == b"abc"
    assert slug_from_path(b"/") == b""


def test_a_big_change_is_applied_in_slices_and_completely(tmp_path: Path) -> None:
    """An import of 1,200 links reaches a running worker's table a slice at a time (the
    loop gets control between slices); in the end all of them, at the new revision."""
    import asyncio

    from edge.db import Database
    from edge.sync import APPLY_SLICE_ROWS, LinkSync

    path = str(tmp_path / "s.db")
    conn = catalog.open_db(path)
    table = LinkTable()

    async def run() -> int:
        db = await Database(path).open()
        sync = LinkSync(db, table, 0.25)
        await sync.load()
        for i in range(1200):
            catalog.create_link(conn, {"url": f"https://example.com/{i}"}, slug=f"s{i}")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.get_running_loop().create_task(ticker())
        changed = await sync.refresh()
        task.cancel()
        await db.close()
        assert ticks >= 1200 // APPLY_SLICE_ROWS  # the loop ran between slices
        return changed

    assert asyncio.run(run()) == 1200
    assert len(table) == 1200 and table.rev == current_rev(conn)
    assert location(table, b"localhost", b"/s1199") == "https://example.com/1199"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"[::1]", "[::1]"),
        (b"[::1]:8080", "[::1]"),
        (b"[0:0::1]:8080", "[::1]"),
        (b"[2001:DB8::1]", "[2001:db8::1]"),
        (b"Example.COM.:80", "example.com"),
        (b"example.com:", "example.com"),
        (b"[::1", None),  # issue 9 defect 6: the edge no longer guesses
        (b"[::1]junk", None),
        (b"[]", None),
        (b"[::1]:80x", None),
        (b"[zz]", None),
        (b"::1", None),
        (b"example.com:80x", None),
    ],
)
def test_raw_hosts_normalise_strictly(raw: bytes, key: str | None) -> None:
    from edge.links import normalize_raw_host

    assert normalize_raw_host(raw) == key


def test_a_malformed_host_reaches_no_domain_not_even_the_default(conn: sqlite3.Connection) -> None:
    catalog.add_domain(conn, "[::1]")
    catalog.create_link(conn, {"url": "https://example.com/six"}, slug="six", domain="[0::1]")
    catalog.create_link(conn, {"url": "https://example.com/d"}, slug="six")  # on localhost
    table = LinkTable()
    table.apply(*catalog.changes_since(conn, 0))
    assert location(table, b"[::1]:8080", b"/six") == "https://example.com/six"
    assert location(table, b"[0:0:0::1]", b"/six") == "https://example.com/six"
    assert location(table, b"127.0.0.1", b"/six") == "https://example.com/d"  # the default
    for bad in (b"[::1", b"[::1]junk", b"[]", b"[::1]:x"):
        assert answer(table, bad, b"/six")[2] == 404, bad


def test_case_insensitive_slugs_are_found_in_any_case_only_where_asked(
    conn: sqlite3.Connection,
) -> None:
    """Issue 11 item 11: a domain's case_insensitive_slugs folds its slugs once when they
    load; other domains stay exact."""
    catalog.add_domain(conn, "qr.example")
    nl = catalog.create_link(
        conn, {"url": "https://example.com/nl"}, slug="nl", domain="qr.example"
    )
    catalog.create_link(conn, {"url": "https://example.com/Mix"}, slug="MiX", domain="qr.example")
    catalog.create_link(conn, {"url": "https://example.com/e"}, slug="nl")  # exact localhost
    table = LinkTable()
    rev, links, purged, domains = catalog.changes_since(conn, 0)
    table.apply(rev, links, purged, domains)
    assert location(table, b"qr.example", b"/NL") is None  # off by default
    # switched on while served: the domain's loaded slugs fold at once
    catalog.update_domain(conn, "qr.example", {"case_insensitive_slugs": True})
    rev2, *changes = catalog.changes_since(conn, rev)
    table.apply(rev2, *changes)
    for path in (b"/NL", b"/nl", b"/Nl/", b"/%4El", b"/mix", b"/MIX?x=1"):
        assert location(table, b"qr.example", path) is not None, path
    assert location(table, b"qr.example", b"/NL") == "https://example.com/nl"
    assert location(table, b"localhost", b"/NL") is None  # localhost stays exact
    assert location(table, b"localhost", b"/nl") == "https://example.com/e"
    # a change, a purge and a new link keep the folded entries in step
    catalog.update_link(conn, nl["id"], {"url": "https://example.com/nl2"})
    later = catalog.create_link(conn, {"url": "https://e.com/n"}, slug="New", domain="qr.example")
    rev3, *changes = catalog.changes_since(conn, rev2)
    table.apply(rev3, *changes)
    assert location(table, b"qr.example", b"/NL") == "https://example.com/nl2"
    assert answer(table, b"qr.example", b"/nEW")[3] == later["id"]
    catalog.purge_link(conn, nl["id"])
    rev4, *changes = catalog.changes_since(conn, rev3)
    table.apply(rev4, *changes)
    assert location(table, b"qr.example", b"/NL") is None
    assert location(table, b"qr.example", b"/nl") is None
    # switched off: exact again
    catalog.update_domain(conn, "qr.example", {"case_insensitive_slugs": False})
    table.apply(*catalog.changes_since(conn, rev4))
    assert location(table, b"qr.example", b"/mix") is None
    assert location(table, b"qr.example", b"/MiX") == "https://example.com/Mix"
    # a table loaded from scratch with the option on folds as it loads
    catalog.update_domain(conn, "qr.example", {"case_insensitive_slugs": True})
    fresh = LinkTable()
    fresh.apply(*catalog.changes_since(conn, 0))
    assert location(fresh, b"qr.example", b"/mix") == "https://example.com/Mix"
