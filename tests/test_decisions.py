"""edge/links.py's decision memos: a client's repeat requests skip the rule evaluation,
but never at the price of a wrong answer: every input a rule reads is in the key, a probe
(HEAD) is not taken for the browser it names, a changed link forgets its decisions, rules
that read the clock are never memoised, and a variant stays the visitor's."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edge import catalog
from edge.facts import FactCache
from edge.http import parse_head
from edge.links import LinkTable, LocalRouting

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    return catalog.open_db(str(tmp_path / "t.db"))


def table_of(conn: sqlite3.Connection, table: LinkTable | None = None) -> LinkTable:
    table = table or LinkTable()
    if table.rev == 0:
        table.routing = LocalRouting(FactCache(None))
    table.apply(*catalog.changes_since(conn, table.rev))
    return table


def where(
    table: LinkTable,
    path: str,
    ua: str = CHROME,
    *,
    method: str = "GET",
    headers: str = "",
    ip: str = "192.0.2.1",
    now: float | None = None,
) -> tuple[str | None, Any]:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {ua}\r\n{headers}\r\n"
    parsed = parse_head(head.encode())
    assert parsed is not None
    answer = table.answer(parsed[0], time.time() if now is None else now, lambda: ip)
    raw = answer[0]
    if b"Location: " not in raw:
        return None, answer[5]
    start = raw.index(b"Location: ") + 10
    return raw[start : raw.index(b"\r\n", start)].decode(), answer[5]


def test_every_input_a_rule_reads_is_in_the_key(conn: sqlite3.Connection) -> None:
    catalog.create_link(
        conn,
        {
            "url": "https://e.com/default",
            "rules": [
                {"when": {"device": "ios", "language": "fr"}, "url": "https://e.com/ios-fr"},
                {"when": {"referrer_host": "t.co"}, "url": "https://e.com/x"},
                {"when": {"query": {"promo": True}}, "url": "https://e.com/promo"},
            ],
        },
        slug="r",
    )
    table = table_of(conn)
    fr = "Accept-Language: fr-FR\r\n"
    for _ in range(3):  # the second and third answers come from the memo
        assert where(table, "/r", IPHONE, headers=fr) == ("https://e.com/ios-fr", 1)
        assert where(table, "/r", IPHONE) == ("https://e.com/default", 0)
        assert where(table, "/r", CHROME, headers=fr) == ("https://e.com/default", 0)
        assert where(table, "/r", headers="Referer: https://t.co/a\r\n") == ("https://e.com/x", 2)
        assert where(table, "/r?promo") == ("https://e.com/promo?promo", 3)
        # a HEAD names an iPhone but is a probe: device "bot", not ios
        assert where(table, "/r", IPHONE, method="HEAD", headers=fr) == ("https://e.com/default", 0)


def test_a_changed_link_forgets_its_decisions(conn: sqlite3.Connection) -> None:
    link = catalog.create_link(
        conn,
        {
            "url": "https://e.com/d",
            "rules": [{"when": {"device": "ios"}, "url": "https://e.com/a"}],
        },
        slug="r",
    )
    table = table_of(conn)
    assert where(table, "/r", IPHONE) == ("https://e.com/a", 1)
    # new conditions: the iPhone now matches the second rule, Chrome the first
    rules = [
        {"when": {"device": "desktop"}, "url": "https://e.com/desk"},
        {"when": {"device": "ios"}, "url": "https://e.com/b"},
    ]
    assert where(table, "/r", CHROME) == ("https://e.com/d", 0)
    catalog.update_link(conn, link["id"], {"rules": rules})
    table_of(conn, table)
    assert where(table, "/r", IPHONE) == ("https://e.com/b", 2)
    assert where(table, "/r", CHROME) == ("https://e.com/desk", 1)
    catalog.update_link(conn, link["id"], {"rules": None})
    table_of(conn, table)
    assert where(table, "/r", IPHONE) == ("https://e.com/d", None)  # plain again


def test_rules_that_read_the_clock_are_evaluated_every_time(conn: sqlite3.Connection) -> None:
    at = time.time()
    catalog.create_link(
        conn,
        {
            "url": "https://e.com/before",
            "rules": [{"when": {"time": {"after": int(at * 1000)}}, "url": "https://e.com/after"}],
        },
        slug="t",
    )
    table = table_of(conn)
    assert where(table, "/t", now=at - 1) == ("https://e.com/before", 0)
    assert where(table, "/t", now=at + 1) == ("https://e.com/after", 1)
    assert where(table, "/t", now=at - 1) == ("https://e.com/before", 0)


def test_a_visitor_keeps_the_variant_the_memo_gave(conn: sqlite3.Connection) -> None:
    variants = [
        {"url": "https://e.com/a", "weight": 1, "name": "a"},
        {"url": "https://e.com/b", "weight": 1, "name": "b"},
    ]
    catalog.create_link(conn, {"url": "https://e.com/", "variants": variants}, slug="ab")
    table = table_of(conn)
    first = {ip: where(table, "/ab", ip=ip) for ip in (f"192.0.2.{i}" for i in range(1, 60))}
    assert {loc for loc, _route in first.values()} == {"https://e.com/a", "https://e.com/b"}
    assert all(where(table, "/ab", ip=ip) == got for ip, got in first.items())
    # a curl (a bot) gets the first variant whatever its address
    assert {where(table, "/ab", "curl/8.5.0", ip=ip)[0] for ip in first} == {"https://e.com/a"}
