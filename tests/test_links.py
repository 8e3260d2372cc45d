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
from edge.links import HOST_CACHE_SIZE, Answer, LinkTable, normalize_raw_host, slug_from_path


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


# --- every answer of LinkTable.answer, byte for byte --------------------------------------
# The expected heads are written out here, not built with edge.links' own helpers.


def redirect(status: str, location: str, cache: str = "private, no-store") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nLocation: {location}\r\nCache-Control: {cache}\r\n"
        "Content-Length: 0\r\n"
    ).encode()


NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\nContent-Length: 10\r\n",
    b"Not Found\n",
)
GONE = (
    b"HTTP/1.1 410 Gone\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\nContent-Length: 34\r\n",
    b"This link is no longer available.\n",
)
ROBOTS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Cache-Control: public, max-age=86400\r\nContent-Length: 26\r\n",
    b"User-agent: *\nDisallow: /\n",
)
NOW_MS = 1_800_000_000_000


@pytest.fixture
def served(conn: sqlite3.Connection) -> tuple[LinkTable, dict[str, int]]:
    """A table over one branded domain with every kind of link, and the ids by name."""
    go = catalog.add_domain(
        conn,
        "go.example.com",
        root_url="https://example.com/home",
        fallback_url="https://example.com/missing",
    )
    specs: dict[str, dict[str, object]] = {
        "plain": {"url": "https://example.com/a?x=1"},
        "perm": {"url": "https://example.com/p", "status": 301},
        "see": {"url": "https://example.com/s", "status": 303},
        "temp": {"url": "https://example.com/t", "status": 307},
        "keep": {"url": "https://example.com/k", "status": 308},
        "cached": {"url": "https://example.com/c?x=1", "cache_max_age_s": 60},
        "second": {"url": "https://example.com/1s", "cache_max_age_s": 1},
        "noforward": {"url": "https://example.com/n", "forward_query": False},
        "reqwins": {"url": "https://example.com/r?x=1#top", "query_precedence": "request"},
        "off": {"url": "https://example.com/off", "disabled": True},
        "old": {"url": "https://example.com/old", "expires_at": NOW_MS - 1},
        "now": {"url": "https://example.com/now", "expires_at": NOW_MS},
        "moved": {
            "url": "https://example.com/moved",
            "expires_at": NOW_MS - 1,
            "expired_url": "https://example.com/expired",
        },
        "later": {"url": "https://example.com/later", "expires_at": NOW_MS + 1},
    }
    ids = {"go": go["id"], "localhost": catalog.domain_row(conn, None)["id"]}
    for slug, fields in specs.items():
        ids[slug] = catalog.create_link(conn, fields, slug=slug, domain="go.example.com")["id"]
    ids["home"] = catalog.create_link(conn, {"url": "https://example.com/h"}, slug="home")["id"]
    table = LinkTable()
    table.apply(*catalog.changes_since(conn, 0))
    return table, ids


GO = b"go.example.com"


@pytest.mark.parametrize(
    ("host", "target", "head", "body", "status", "link", "domain"),
    [
        # plain links: every redirect status, the query merged (the destination wins)
        (
            GO,
            b"/plain",
            redirect("302 Found", "https://example.com/a?x=1"),
            b"",
            302,
            "plain",
            "go",
        ),
        (
            GO,
            b"/plain?y=2&x=9",
            redirect("302 Found", "https://example.com/a?x=1&y=2"),
            b"",
            302,
            "plain",
            "go",
        ),
        (
            GO,
            b"/plain?",
            redirect("302 Found", "https://example.com/a?x=1"),
            b"",
            302,
            "plain",
            "go",
        ),
        (
            GO,
            b"/perm",
            redirect("301 Moved Permanently", "https://example.com/p"),
            b"",
            301,
            "perm",
            "go",
        ),
        (
            GO,
            b"/see?q=1",
            redirect("303 See Other", "https://example.com/s?q=1"),
            b"",
            303,
            "see",
            "go",
        ),
        (
            GO,
            b"/temp",
            redirect("307 Temporary Redirect", "https://example.com/t"),
            b"",
            307,
            "temp",
            "go",
        ),
        (
            GO,
            b"/keep",
            redirect("308 Permanent Redirect", "https://example.com/k"),
            b"",
            308,
            "keep",
            "go",
        ),
        # the slug as the path spells it: trailing slash, percent-encoded, any Host form
        (
            GO,
            b"/plain/",
            redirect("302 Found", "https://example.com/a?x=1"),
            b"",
            302,
            "plain",
            "go",
        ),
        (
            GO,
            b"/%70lain",
            redirect("302 Found", "https://example.com/a?x=1"),
            b"",
            302,
            "plain",
            "go",
        ),
        (
            b"GO.Example.COM.:8443",
            b"/perm",
            redirect("301 Moved Permanently", "https://example.com/p"),
            b"",
            301,
            "perm",
            "go",
        ),
        # full links: cached, query not forwarded, the request's query winning
        (
            GO,
            b"/cached",
            redirect("302 Found", "https://example.com/c?x=1", "private, max-age=60"),
            b"",
            302,
            "cached",
            "go",
        ),
        (
            GO,
            b"/cached?y=2",
            redirect("302 Found", "https://example.com/c?x=1&y=2", "private, max-age=60"),
            b"",
            302,
            "cached",
            "go",
        ),
        (
            GO,
            b"/second",
            redirect("302 Found", "https://example.com/1s", "private, max-age=1"),
            b"",
            302,
            "second",
            "go",
        ),
        (
            GO,
            b"/noforward?y=2",
            redirect("302 Found", "https://example.com/n"),
            b"",
            302,
            "noforward",
            "go",
        ),
        (
            GO,
            b"/reqwins?x=9",
            redirect("302 Found", "https://example.com/r?x=9#top"),
            b"",
            302,
            "reqwins",
            "go",
        ),
        (
            GO,
            b"/reqwins",
            redirect("302 Found", "https://example.com/r?x=1#top"),
            b"",
            302,
            "reqwins",
            "go",
        ),
        # disabled and expired: nothing to record (link id 0), the domain still known
        (GO, b"/off", *GONE, 410, None, "go"),
        (GO, b"/off?y=1", *GONE, 410, None, "go"),
        (GO, b"/old", *GONE, 410, None, "go"),
        (GO, b"/now", *GONE, 410, None, "go"),  # expires_at is the first instant it is gone
        (GO, b"/moved", redirect("302 Found", "https://example.com/expired"), b"", 302, None, "go"),
        (
            GO,
            b"/later",
            redirect("302 Found", "https://example.com/later"),
            b"",
            302,
            "later",
            "go",
        ),
        # no such slug: the domain's root and fallback, never for /favicon.ico; robots.txt
        (GO, b"/", redirect("302 Found", "https://example.com/home"), b"", 302, None, "go"),
        (GO, b"/nope", redirect("302 Found", "https://example.com/missing"), b"", 302, None, "go"),
        (
            GO,
            b"/nope?x=1",
            redirect("302 Found", "https://example.com/missing"),
            b"",
            302,
            None,
            "go",
        ),
        (GO, b"/favicon.ico", *NOT_FOUND, 404, None, None),
        (GO, b"/robots.txt", *ROBOTS, 200, None, None),
        (b"elsewhere", b"/robots.txt", *ROBOTS, 200, None, None),
        # an unknown Host is the default domain (localhost here), which has none of these
        (
            b"elsewhere",
            b"/home",
            redirect("302 Found", "https://example.com/h"),
            b"",
            302,
            "home",
            "localhost",
        ),
        (
            b"[2001:db8::1]",
            b"/home",
            redirect("302 Found", "https://example.com/h"),
            b"",
            302,
            "home",
            "localhost",
        ),
        (GO, b"/home", redirect("302 Found", "https://example.com/missing"), b"", 302, None, "go"),
        (b"elsewhere", b"/plain", *NOT_FOUND, 404, None, None),
        (b"elsewhere", b"/", *NOT_FOUND, 404, None, None),
        (b"[2001:db8::1]:8080", b"/plain", *NOT_FOUND, 404, None, None),
    ],
)
def test_every_answer_byte_for_byte(
    served: tuple[LinkTable, dict[str, int]],
    host: bytes,
    target: bytes,
    head: bytes,
    body: bytes,
    status: int,
    link: str | None,
    domain: str | None,
) -> None:
    table, ids = served
    expected = (head, body, status, ids[link] if link else 0, ids[domain] if domain else 0)
    expected = (*expected, None, None, 0)
    assert answer(table, host, target, now=NOW_MS / 1000) == expected


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"Go.Example.COM", "go.example.com"),
        (b"go.example.com:8080", "go.example.com"),
        (b"go.example.com.", "go.example.com"),
        (b"go.example.com.:443", "go.example.com"),
        (b"[2001:db8::1]:8443", "[2001:db8::1]"),
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


def test_a_raw_host_is_remembered_and_the_memory_is_bounded(
    served: tuple[LinkTable, dict[str, int]],
) -> None:
    table, ids = served
    for _ in range(2):  # the second answer comes from the remembered host
        assert answer(table, b"GO.example.com", b"/perm")[2:5] == (301, ids["perm"], ids["go"])
        assert answer(table, b"other", b"/home")[2:5] == (302, ids["home"], ids["localhost"])
    for port in range(HOST_CACHE_SIZE + 10):
        assert table.domain_for(b"go.example.com:%d" % port) is not None
    assert len(table._host_cache) <= HOST_CACHE_SIZE
    assert answer(table, b"GO.example.com", b"/perm")[2:5] == (301, ids["perm"], ids["go"])


def test_an_unknown_host_is_404_when_asked(conn: sqlite3.Connection) -> None:
    catalog.create_link(conn, {"url": "https://example.com/h"}, slug="home")
    table = LinkTable(unknown_host_404=True)
    table.apply(*catalog.changes_since(conn, 0))
    assert answer(table, b"localhost", b"/home")[2] == 302
    assert answer(table, b"elsewhere", b"/home") == (*NOT_FOUND, 404, 0, 0, None, None, 0)
    assert answer(table, b"elsewhere", b"/robots.txt") == (*ROBOTS, 200, 0, 0, None, None, 0)


def test_changes_are_counted_and_the_table_follows_them(
    conn: sqlite3.Connection, served: tuple[LinkTable, dict[str, int]]
) -> None:
    table, ids = served
    assert table.rev == current_rev(conn) and len(table) == 15
    assert LinkTable().rev == 0
    # an edit of a full link and of a plain one: both replaced in place
    catalog.update_link(conn, ids["cached"], {"url": "https://example.com/c2"})
    catalog.update_link(conn, ids["perm"], {"url": "https://example.com/p2"})
    rev, links, purged, domains = catalog.changes_since(conn, table.rev)
    assert table.apply(rev, links, purged, domains) == 2
    assert table.rev == rev and len(table) == 15
    assert location(table, GO, b"/cached") == "https://example.com/c2"
    assert location(table, GO, b"/perm") == "https://example.com/p2"
    # purges that match nothing change nothing
    before = table.rev
    assert (
        table.apply(before, [], [(999, None, None), (998, ids["go"], None), (997, 12345, "x")]) == 0
    )
    assert table.apply(before, [], [(ids["perm"], ids["go"], "plain")]) == 0  # not its slug
    assert len(table) == 15
    # two purges in one change
    catalog.purge_link(conn, ids["perm"])
    catalog.purge_link(conn, ids["cached"])
    rev, links, purged, domains = catalog.changes_since(conn, table.rev)
    assert table.apply(rev, links, purged, domains) == 2
    assert len(table) == 13
    assert answer(table, GO, b"/perm")[2:5] == (302, 0, ids["go"])  # the domain's fallback


def test_an_entry_is_plain_bytes_only_when_every_default_holds(conn: sqlite3.Connection) -> None:
    from edge.links import Link, entry_for

    catalog.create_link(conn, {"url": "https://example.com/"}, slug="base")
    row = dict(next(iter(catalog.all_links(conn))))
    assert isinstance(entry_for(row), bytes)
    assert isinstance(entry_for({**row, "id": 2**32 - 1}), bytes)
    for change in (
        {"forward_query": 0},
        {"query_precedence": "request"},
        {"cache_max_age_s": 60},
        {"disabled": 1},
        {"expires_at": NOW_MS},
        {"id": 2**32},  # past 4 bytes of id
    ):
        assert isinstance(entry_for({**row, **change}), Link), change


def test_a_full_link_reads_back_what_it_was_built_from(
    conn: sqlite3.Connection,
) -> None:
    from edge.links import Link

    fields = {"url": "https://example.com/c?x=1", "cache_max_age_s": 60, "disabled": True}
    catalog.create_link(conn, fields, slug="c")
    catalog.create_link(conn, {"url": "https://example.com/d"}, slug="d")
    rows = {r["slug"]: r for r in catalog.all_links(conn)}
    c, d = Link(rows["c"]), Link(rows["d"])
    assert (c.slug, c.location, c.max_age_s, c.disabled) == (
        "c",
        "https://example.com/c?x=1",
        60,
        True,
    )
    assert (d.slug, d.location, d.max_age_s, d.disabled) == ("d", "https://example.com/d", 0, False)


def test_a_table_before_its_first_load_answers_404() -> None:
    assert answer(LinkTable(), b"go.example.com", b"/x") == (*NOT_FOUND, 404, 0, 0, None, None, 0)
    assert answer(LinkTable(), b"go.example.com", b"/") == (*NOT_FOUND, 404, 0, 0, None, None, 0)
