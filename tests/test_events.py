"""edge/events.py: the event validator (any JSON object gives an EventInput or InvalidField
naming a field, never another exception; what it accepts round-trips) and `record` on a
real SQLite file: idempotent per event id and namespace, the attribution window, the
click's facts copied onto the event."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import catalog, events, rollups
from edge.db import Transaction
from edge.errors import InvalidField
from edge.links import click_id_text, new_click_id

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
CLICK_IDS = st.binary(min_size=16, max_size=16).map(
    lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
)
FIELDS = sorted(events.EVENT_FIELDS)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from([*FIELDS, "extra"]), JSON | CLICK_IDS, max_size=7))
def test_any_body_is_an_event_or_names_a_field(body: dict[str, Any]) -> None:
    try:
        ev = events.validate_event(body)
    except InvalidField as exc:
        assert exc.field in (*FIELDS, "extra"), exc.field
        assert exc.message
        return
    assert len(ev.click_id) == 16
    assert ev.name == ev.name.lower() and 1 <= len(ev.name) <= events.MAX_NAME_LENGTH
    assert (ev.value_micros is None) == (ev.currency is None)


@given(
    raw=st.binary(min_size=16, max_size=16),
    name=st.from_regex(r"[a-z0-9][a-z0-9_.:-]{0,20}", fullmatch=True),
    value=st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False),
    currency=st.sampled_from(["EUR", "usd", "Jpy"]),
    event_id=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40),
    as_text=st.booleans(),
)
def test_a_valid_event_round_trips(
    raw: bytes, name: str, value: Decimal, currency: str, event_id: str, as_text: bool
) -> None:
    body = {
        "click_id": click_id_text(raw),
        "name": name.upper(),
        "value": str(value) if as_text else float(value),
        "currency": currency,
        "event_id": event_id,
        "occurred_at": 1_700_000_000_000,
    }
    ev = events.validate_event(body)
    assert ev.click_id == raw
    assert ev.name == name
    assert ev.currency == currency.upper()
    assert ev.event_id == event_id
    assert ev.occurred_at == 1_700_000_000_000
    expected = value * events.MICROS if as_text else Decimal(repr(float(value))) * events.MICROS
    assert ev.value_micros == int(expected)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("A" * 22, True), ("A" * 21, False), ("A" * 23, False), ("A" * 21 + "=", False),
     ("A" * 21 + "B", False)],  # a last character with bits past the 16 bytes
)  # fmt: skip
def test_click_ids_are_exactly_the_edges_form(text: str, ok: bool) -> None:
    if ok:
        assert len(events.parse_click_id(text)) == 16
    else:
        with pytest.raises(InvalidField):
            events.parse_click_id(text)


def test_the_pixel_query_maps_to_fields() -> None:
    assert events.pixel_body(b"c=abc&n=signup&v=2.5&cur=EUR&id=x1&other=1") == {
        "click_id": "abc",
        "name": "signup",
        "value": "2.5",
        "currency": "EUR",
        "event_id": "x1",
    }


# --- record --------------------------------------------------------------------------------

NOW = 1_750_000_000_000


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = catalog.open_db(str(tmp_path / "e.db"))
    catalog.add_domain(c, "go.example.com")
    yield c
    c.close()


def _click(
    conn: sqlite3.Connection, ts: int, *, window_s: int | None = None, bot: str | None = None
) -> bytes:
    fields: dict[str, Any] = {"url": "https://shop.example/"}
    if window_s:
        fields["attribution_window_s"] = window_s
    link = catalog.create_link(conn, fields)
    cid = new_click_id(ts / 1000)
    row: dict[str, Any] = dict.fromkeys(rollups.CLICK_COLUMNS)
    row.update(ts=ts, link_id=link["id"], visitor_id=b"v" * 8, bot_kind=bot, method="GET", dnt=0,
               route=33, click_id=cid)  # fmt: skip
    with Transaction(conn):
        rollups.insert_clicks(conn, [tuple(row[c] for c in rollups.CLICK_COLUMNS)])
    return cid


def _ev(cid: bytes, **kw: Any) -> events.EventInput:
    return events.validate_event({"click_id": click_id_text(cid), "name": "purchase", **kw})


def test_record_copies_the_clicks_facts_and_is_idempotent(conn: sqlite3.Connection) -> None:
    cid = _click(conn, NOW - 90_000, bot="preview")
    created, event = events.record(
        conn, _ev(cid, event_id="o1", value="5", currency="EUR"), "api", NOW
    )
    assert created and event["lag_s"] == 90.0 and event["route"] == 33
    assert event["human"] is False and event["value"] == 5.0 and event["occurred_at"] == NOW
    again = events.record(conn, _ev(cid, event_id="o1", value="7", currency="EUR"), "postback", NOW)
    assert again == (False, event)  # api and postback share one namespace
    pixel, forged = events.record(conn, _ev(cid, event_id="o1"), "pixel", NOW)
    assert pixel and forged["id"] != event["id"]  # a pixel never takes a server event's id
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2


def test_the_attribution_window_is_the_links(conn: sqlite3.Connection) -> None:
    cid = _click(conn, NOW - 3_600_000, window_s=3600)
    assert events.record(conn, _ev(cid, occurred_at=NOW), "api", NOW)[0]
    with pytest.raises(events.OutsideWindow, match="after its click"):
        events.record(conn, _ev(cid, occurred_at=NOW + 1), "api", NOW + 1)
    with pytest.raises(events.OutsideWindow, match="before its click"):
        events.record(conn, _ev(cid, occurred_at=NOW - 3_600_000 - 6 * 60_000), "api", NOW)
    with pytest.raises(InvalidField, match="future"):
        events.record(conn, _ev(cid, occurred_at=NOW + 10 * 60_000), "api", NOW)
    old = _click(conn, NOW - 31 * 86_400_000)  # the default window: 30 days
    with pytest.raises(events.OutsideWindow):
        events.record(conn, _ev(old), "api", NOW)
    with pytest.raises(events.UnknownClick):
        events.record(conn, _ev(new_click_id(NOW / 1000)), "api", NOW)


def test_pixels_wait_for_a_young_click_and_reject_the_rest(conn: sqlite3.Connection) -> None:
    cid = _click(conn, NOW - 1000)
    young = new_click_id((NOW - 1000) / 1000)
    old = new_click_id((NOW - events.PIXEL_RETRY_MS - 1) / 1000)
    future = new_click_id((NOW + 86_400_000) / 1000)  # forged: never waited for
    q = lambda c: f"c={click_id_text(c)}&n=view".encode()  # noqa: E731
    out = events.record_pixels(
        conn, [(NOW / 1000, q(cid)), (NOW / 1000, q(young)), (NOW / 1000, q(old)),
               (NOW / 1000, q(future)), (NOW / 1000, b"c=bad&n=view")], NOW,
    )  # fmt: skip
    assert [a[0] for a in out.accepted] == [1] and out.retry == [(NOW / 1000, q(young))]
    assert out.rejected == {"unknown_click": 2, "invalid": 1}
