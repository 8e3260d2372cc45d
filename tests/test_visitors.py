"""edge/visitors.py: the visitor id, its daily salt, and the packed id format."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import catalog, visitors


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = catalog.open_db(str(tmp_path / "v.db"))
    yield c
    c.close()


SALT = bytes(range(32))


def test_a_visitor_id_is_the_keyed_blake2b_64_of_ip_agent_and_domain() -> None:
    """The id is stored: within a day (one salt) it must come out the same in every
    process and after every restart, so its construction is frozen."""
    ids = visitors.VisitorIds(SALT)
    expected = hashlib.blake2b(
        b"203.0.113.10\0Mozilla/5.0\0" + b"7", digest_size=8, key=SALT
    ).digest()
    assert ids.of("203.0.113.10", b"Mozilla/5.0", 7) == expected
    assert ids.of("203.0.113.10", b"Mozilla/5.0", 7) == expected  # remembered: the same
    assert visitors.VisitorIds(SALT).of("203.0.113.10", b"Mozilla/5.0", 7) == expected


def test_each_part_and_the_salt_make_another_visitor() -> None:
    ids = visitors.VisitorIds(SALT)
    one = ids.of("203.0.113.10", b"UA", 1)
    others = {
        ids.of("203.0.113.11", b"UA", 1),
        ids.of("203.0.113.10", b"UA2", 1),
        ids.of("203.0.113.10", b"UA", 2),
        ids.of("203.0.113.1", b"0UA", 1),  # the separator keeps the parts apart
        visitors.VisitorIds(b"another salt").of("203.0.113.10", b"UA", 1),
    }
    assert one not in others and len(others) == 5


def test_a_day_keeps_its_salt_and_older_salts_are_deleted(conn: sqlite3.Connection) -> None:
    def refuse() -> bytes:
        raise AssertionError("a day that has a salt must not get a new one")

    first = visitors.salt_for_day(conn, 100, lambda: b"a" * 32)
    assert first == b"a" * 32
    assert visitors.salt_for_day(conn, 100, refuse) == first
    assert visitors.salt_for_day(conn, 101, lambda: b"b" * 32) == b"b" * 32
    assert visitors.salt_for_day(conn, 101, refuse) == b"b" * 32
    assert visitors.salt_for_day(conn, 102, lambda: b"c" * 32) == b"c" * 32
    # the day before stays (clicks of its last seconds are written late), older ones go
    salts = [tuple(r) for r in conn.execute("SELECT day, salt FROM salts ORDER BY day")]
    assert salts == [(101, b"b" * 32), (102, b"c" * 32)]


def test_the_packed_id_format_is_frozen() -> None:
    """Stored chunks hold these integers: changing the mapping would count a visitor of
    an old chunk and of a new one twice."""
    assert visitors.visitor_int(bytes(range(1, 9))) == 0x0807060504030201
    assert visitors.pack_ids({0x0807060504030201, 1}) == (1).to_bytes(8, "little") + bytes(
        range(1, 9)
    )
    assert list(visitors.unpack_ids(visitors.pack_ids({3, 1, 2}))) == [1, 2, 3]
