"""edge/catalog.py: links, domains, UTM allow-lists and tokens, their validation and writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge import catalog, visitors
from edge.errors import Conflict, InvalidField, InvalidURL, NotFound


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return catalog.open_db(str(tmp_path / "t.db"))


def test_default_domain_exists(conn: sqlite3.Connection) -> None:
    domains = catalog.list_domains(conn)
    assert [(d["host"], d["default"]) for d in domains] == [("localhost", True)]


def test_create_link_validates_and_normalises(conn: sqlite3.Connection) -> None:
    link = catalog.create_link(
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
        catalog.create_link(conn, {"url": "https://example.com/"}, slug="spring")
    with pytest.raises(InvalidURL):
        catalog.create_link(conn, {"url": "javascript:alert(1)"})
    with pytest.raises(InvalidField) as info:
        catalog.create_link(conn, {"url": "https://example.com/", "status": 200})
    assert info.value.field == "status"
    with pytest.raises(NotFound):
        catalog.create_link(conn, {"url": "https://example.com/"}, domain="nope.example")


def test_generated_slugs_are_random_and_unique(conn: sqlite3.Connection) -> None:
    slugs = {catalog.create_link(conn, {"url": "https://example.com/"})["slug"] for _ in range(50)}
    assert len(slugs) == 50


def test_domain_rules(conn: sqlite3.Connection) -> None:
    catalog.add_domain(conn, "go.example.com", default=True)
    assert [d["host"] for d in catalog.list_domains(conn) if d["default"]] == ["go.example.com"]
    with pytest.raises(Conflict):
        catalog.add_domain(conn, "GO.example.com")
    with pytest.raises(Conflict):
        catalog.remove_domain(conn, "go.example.com")  # the default
    catalog.create_link(conn, {"url": "https://example.com/"}, slug="x", domain="localhost")
    with pytest.raises(Conflict):
        catalog.remove_domain(conn, "localhost")  # has links


def test_utm_allow_list(conn: sqlite3.Connection) -> None:
    catalog.set_utm_allowed(conn, "source", ["Newsletter", "twitter"])
    catalog.create_link(conn, {"url": "https://example.com/", "utm_source": "NEWSLETTER"})
    with pytest.raises(InvalidField) as info:
        catalog.create_link(conn, {"url": "https://example.com/", "utm_source": "tiktok"})
    assert info.value.field == "utm_source"
    catalog.set_utm_allowed(conn, "utm_source", [])
    catalog.create_link(conn, {"url": "https://example.com/", "utm_source": "tiktok"})


def test_tokens_store_only_hashes(conn: sqlite3.Connection) -> None:
    record, secret = catalog.create_token(conn, "ci")
    assert secret.startswith("le_") and len(secret) > 40
    dump = "\n".join(conn.iterdump())
    assert secret not in dump
    assert (record["id"], catalog.token_hash(secret)) in catalog.active_token_hashes(conn)
    catalog.revoke_token(conn, record["id"])
    assert catalog.active_token_hashes(conn) == []


def test_utm_case_lower_by_default_or_kept(conn: sqlite3.Connection) -> None:
    assert catalog.utm_case(conn) == "lower"
    assert (
        catalog.create_link(conn, {"url": "https://e.com/", "utm_source": "NewsLetter"})[
            "utm_source"
        ]
        == "newsletter"
    )
    catalog.set_utm_case(conn, "keep")
    link = catalog.create_link(conn, {"url": "https://e.com/", "utm_source": " NewsLetter "})
    assert link["utm_source"] == "NewsLetter"
    catalog.set_utm_allowed(conn, "source", ["NewsLetter"])
    with pytest.raises(InvalidField):
        catalog.create_link(conn, {"url": "https://e.com/", "utm_source": "newsletter"})
    with pytest.raises(InvalidField):
        catalog.set_utm_case(conn, "upper")


def test_salts_rotate_and_old_ones_are_deleted(conn: sqlite3.Connection) -> None:
    s1 = visitors.salt_for_day(conn, 100, lambda: b"a" * 32)
    assert visitors.salt_for_day(conn, 100, lambda: b"b" * 32) == s1
    s2 = visitors.salt_for_day(conn, 101, lambda: b"c" * 32)
    assert s2 != s1
    # the day before stays (clicks written late), older days go for good
    assert [r[0] for r in conn.execute("SELECT day FROM salts ORDER BY day")] == [100, 101]
    visitors.salt_for_day(conn, 102, lambda: b"d" * 32)
    assert [r[0] for r in conn.execute("SELECT day FROM salts ORDER BY day")] == [101, 102]


# --- case-insensitive slugs (issue 11 item 11) ------------------------------------------


def test_slugs_differing_only_in_case_share_an_exact_domain(conn: sqlite3.Connection) -> None:
    """The default stays as it was: slugs are exact, `nl` and `NL` are two links."""
    catalog.create_link(conn, {"url": "https://example.com/a"}, slug="nl")
    catalog.create_link(conn, {"url": "https://example.com/b"}, slug="NL")
    assert catalog.find_link(conn, "NL")["url"] == "https://example.com/b"
    with pytest.raises(NotFound):
        catalog.find_link(conn, "Nl")


def test_a_case_insensitive_domain_refuses_a_slug_differing_only_in_case(
    conn: sqlite3.Connection,
) -> None:
    d = catalog.add_domain(conn, "qr.example", case_insensitive_slugs=True)
    assert d["case_insensitive_slugs"] is True
    nl = catalog.create_link(
        conn, {"url": "https://example.com/nl"}, slug="nl", domain="qr.example"
    )
    with pytest.raises(Conflict) as info:
        catalog.create_link(conn, {"url": "https://example.com/x"}, slug="NL", domain="qr.example")
    assert info.value.field == "slug" and "case-insensitive" in info.value.message
    assert "'nl'" in info.value.message
    assert catalog.find_link(conn, "nL", "qr.example")["id"] == nl["id"]
    # an archived holder keeps its slug in every case, and the message says what to do
    catalog.archive_link(conn, nl["id"])
    with pytest.raises(Conflict) as info:
        catalog.create_link(conn, {"url": "https://example.com/x"}, slug="Nl", domain="qr.example")
    assert "archived link" in info.value.message and "--purge" in info.value.message
    catalog.purge_link(conn, nl["id"])
    catalog.create_link(conn, {"url": "https://example.com/x"}, slug="Nl", domain="qr.example")


def test_turning_it_on_is_refused_while_slugs_clash(conn: sqlite3.Connection) -> None:
    catalog.create_link(conn, {"url": "https://example.com/a"}, slug="nl")
    b = catalog.create_link(conn, {"url": "https://example.com/b"}, slug="NL")
    catalog.create_link(conn, {"url": "https://example.com/c"}, slug="other")
    with pytest.raises(Conflict) as info:
        catalog.update_domain(conn, "localhost", {"case_insensitive_slugs": True})
    assert info.value.field == "case_insensitive_slugs"
    assert "nl" in info.value.message and "NL" in info.value.message
    assert catalog.get_domain(conn, "localhost")["case_insensitive_slugs"] is False
    with pytest.raises(InvalidField):
        catalog.update_domain(conn, "localhost", {"case_insensitive_slugs": "yes"})
    catalog.purge_link(conn, b["id"])
    on = catalog.update_domain(conn, "localhost", {"case_insensitive_slugs": True})
    assert on["case_insensitive_slugs"] is True
    off = catalog.update_domain(conn, "localhost", {"case_insensitive_slugs": False})
    assert off["case_insensitive_slugs"] is False


def test_the_case_check_is_an_index_seek(conn: sqlite3.Connection) -> None:
    """A million links on a domain: the check must not scan them."""
    plan = " ".join(
        str(r[3])
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id, slug, archived_at FROM links WHERE domain_id = 1 "
            "AND slug = 'x' COLLATE NOCASE"
        )
    )
    assert "INDEX links_domain_slug_nocase (domain_id=? AND slug=?)" in plan, plan


# --- times and states (issue 9 defect 5, issue 11 item 6) ----------------------------


@pytest.mark.parametrize("value", [-1, -(10**18), catalog.MAX_TIME_MS + 1, 2**63 - 1])
def test_an_expiry_out_of_range_is_refused(conn: sqlite3.Connection, value: int) -> None:
    with pytest.raises(InvalidField) as info:
        catalog.create_link(conn, {"url": "https://example.com/", "expires_at": value})
    assert info.value.field == "expires_at"


def test_link_state_says_expired(conn: sqlite3.Connection) -> None:
    now = 1_900_000_000_000
    link = catalog.create_link(conn, {"url": "https://example.com/", "expires_at": now})
    assert catalog.link_state(link, now - 1) == "active"
    assert catalog.link_state(link, now) == "expired"
    assert catalog.link_state({**link, "disabled": True}, now) == "disabled"
    assert catalog.link_state({**link, "archived_at": 1}, now) == "archived"
