"""Conversions: events tied to a click by its click id, validated and recorded here.

Rules:
- One home for what an event is: `validate_event` takes what a caller sent (JSON from
  POST /api/events, a postback's or the pixel's query) and returns an EventInput or
  raises InvalidField naming the field. Pure: no I/O.
- `record` runs on the writer connection (inside its own Transaction, or the caller's):
  it finds the click by its id (the partial unique index on clicks.click_id), checks the
  link's attribution window, and inserts one `events` row, or returns the stored one when
  the same event id came before (idempotent: a retry never counts twice). The click's
  time, route, visitor id and humanity are copied onto the row, so stats never look a
  click up again.
- Sources: `api` (POST /api/events, a bearer token with the `events` scope), `postback`
  (GET /api/postback with a domain's secret), `pixel` (GET /_lc/e on the edge: anyone can
  send one, so it is never trusted for revenue; its event ids have their own namespace).
- Errors a caller causes: UnknownClick (404) for a click id no click has, OutsideWindow
  (422) for an event later than the link's attribution window after its click (or before
  the click); both counted by reason on /metrics (edge/live.py Conversions).
- Pixel events travel from the edge workers in the click batches (edge/capture.py
  FLAG_EVENT), so they share the batches' exactly-once accounting; `record_pixels` writes
  them in the batch's transaction.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import sqlite3
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import parse_qsl

from edge.catalog import DEFAULT_ATTRIBUTION_S
from edge.db import Transaction
from edge.errors import InvalidField, LinkedgeError

SOURCES: Final = ("api", "postback", "pixel")
TRUSTED_SOURCES: Final = ("api", "postback")  # revenue counts from these only
EVENT_FIELDS: Final = frozenset(
    {"click_id", "name", "value", "currency", "event_id", "occurred_at"}
)
CLICK_ID_TEXT_LENGTH: Final = 22  # 16 bytes as unpadded base64url (edge/links.py)
MAX_NAME_LENGTH: Final = 64
MAX_EVENT_ID_LENGTH: Final = 128
# Values up to a trillion (in any currency) with 6 decimals: integer millionths are exact.
MAX_VALUE: Final = Decimal(10) ** 12
MICROS: Final = 1_000_000
# An event may be stamped a little before its click (clocks differ between the caller's
# machine and ours) or a little in the future, no more.
CLOCK_SKEW_MS: Final = 5 * 60 * 1000
MIN_TIME_MS: Final = 0
MAX_TIME_MS: Final = 253402300799999  # 9999-12-31
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_.:-]*")
_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_CLICK_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{22}")
# The pixel's query parameters -> event fields.
PIXEL_PARAMS: Final = {
    "c": "click_id",
    "n": "name",
    "v": "value",
    "cur": "currency",
    "id": "event_id",
}


class UnknownClick(LinkedgeError):
    status = 404
    code = "unknown_click"


class OutsideWindow(LinkedgeError):
    status = 422
    code = "outside_attribution_window"


@dataclass(frozen=True, slots=True)
class EventInput:
    click_id: bytes
    name: str
    value_micros: int | None
    currency: str | None
    event_id: str | None
    occurred_at: int | None  # Unix ms; None: when it is received


def parse_click_id(value: Any, field: str = "click_id") -> bytes:
    """The 22-character click id the redirect appended (`lc=...`) -> its 16 bytes."""
    if not isinstance(value, str) or not _CLICK_ID_RE.fullmatch(value):
        raise InvalidField(
            f"{field} must be the {CLICK_ID_TEXT_LENGTH}-character click id the redirect "
            "appended to the destination (lc=...)",
            field,
        )
    try:
        raw = base64.urlsafe_b64decode(value + "==")
    except (binascii.Error, ValueError):
        raise InvalidField(f"{field} is not a click id", field) from None
    if len(raw) != 16 or base64.urlsafe_b64encode(raw).decode().rstrip("=") != value:
        raise InvalidField(f"{field} is not a click id", field)
    return raw


def _value_micros(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidField("value must be a number such as 49.90", "value")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidField("value must be a finite number", "value")
    text = value if isinstance(value, str) else repr(value)
    if len(text) > 40:
        raise InvalidField("value must be a number such as 49.90", "value")
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidField("value must be a number such as 49.90", "value") from None
    if not number.is_finite() or number < 0 or number > MAX_VALUE:
        raise InvalidField(f"value must be from 0 to {MAX_VALUE:,}", "value")
    micros = number * MICROS
    if micros != micros.to_integral_value():
        raise InvalidField("value has more than 6 decimals", "value")
    return int(micros)


def _time_ms(value: Any) -> int:
    field = "occurred_at"
    if isinstance(value, bool):
        raise InvalidField(f"{field} must be Unix milliseconds or ISO 8601", field)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        value = int(value)
    if isinstance(value, int):
        if not MIN_TIME_MS <= value <= MAX_TIME_MS:
            raise InvalidField(f"{field} is out of range", field)
        return value
    if isinstance(value, str) and len(value) <= 40:
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            ms = round(when.timestamp() * 1000)
            if MIN_TIME_MS <= ms <= MAX_TIME_MS:
                return ms
    raise InvalidField(
        f"{field} must be Unix milliseconds or ISO 8601 (2026-12-01T09:30:00Z)", field
    )


def validate_event(body: dict[str, Any]) -> EventInput:
    """What a caller sent -> an EventInput, or InvalidField naming the first bad field."""
    for key in body:
        if key not in EVENT_FIELDS:
            raise InvalidField(f"unknown field {key!r}", key)
    if "click_id" not in body:
        raise InvalidField(
            "click_id is required: the id the redirect appended (lc=...)", "click_id"
        )
    click_id = parse_click_id(body["click_id"])
    given_name = body.get("name")
    if not isinstance(given_name, str) or not given_name.strip():
        raise InvalidField("name is required: lead, signup, purchase, ...", "name")
    name = given_name.strip().lower()
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise InvalidField(
            f"name must be 1-{MAX_NAME_LENGTH} letters, digits or _ . : - (e.g. purchase)", "name"
        )
    value = body.get("value")
    micros = None if value is None else _value_micros(value)
    given = body.get("currency")
    currency: str | None = None
    if given is not None:
        if not isinstance(given, str) or not _CURRENCY_RE.fullmatch(given.strip().upper()):
            raise InvalidField("currency must be an ISO 4217 code such as EUR or USD", "currency")
        currency = given.strip().upper()
    if micros is not None and currency is None:
        raise InvalidField("currency is required with a value (ISO 4217, e.g. EUR)", "currency")
    if micros is None and currency is not None:
        raise InvalidField("currency needs a value", "value")
    event_id = body.get("event_id")
    if event_id is not None and (
        not isinstance(event_id, str)
        or not 1 <= len(event_id) <= MAX_EVENT_ID_LENGTH
        or not event_id.isascii()
        or not event_id.isprintable()
    ):
        raise InvalidField(
            f"event_id must be 1-{MAX_EVENT_ID_LENGTH} printable ASCII characters "
            "(your order or transaction id)",
            "event_id",
        )
    occurred = body.get("occurred_at")
    occurred_ms = None if occurred is None else _time_ms(occurred)
    return EventInput(click_id, name, micros, currency, event_id, occurred_ms)


def pixel_body(query: bytes) -> dict[str, Any]:
    """The pixel's query (`c=<click id>&n=<name>[&v=&cur=&id=]`) as event fields."""
    body: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise InvalidField("the pixel's query is not readable", "c") from None
    for key, value in pairs:
        field = PIXEL_PARAMS.get(key)
        if field is not None:
            body[field] = value
    return body


def _event_out(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    (
        eid,
        event_id,
        link_id,
        click_ts,
        route,
        human,
        name,
        micros,
        currency,
        occurred,
        received,
        source,
    ) = tuple(row)
    return {
        "id": eid,
        "event_id": event_id,
        "link_id": link_id,
        "name": name,
        "value": None if micros is None else micros / MICROS,
        "currency": currency,
        "occurred_at": occurred,
        "received_at": received,
        "click_at": click_ts,
        "lag_s": round((occurred - click_ts) / 1000, 3),
        "route": route,
        "human": bool(human),
        "source": source,
    }


_OUT_COLUMNS: Final = (
    "id, event_id, link_id, click_ts, route, human, name, value_micros, currency, occurred_at, "
    "received_at, source"
)


def record(
    conn: sqlite3.Connection, ev: EventInput, source: str, now_ms: int
) -> tuple[bool, dict[str, Any]]:
    """Record one event (the writer connection); (created, the stored event). The same
    event id again (within its namespace: pixel or not) returns the first one unchanged."""
    assert source in SOURCES
    with Transaction(conn):
        if ev.event_id is not None:
            row = conn.execute(
                f"SELECT {_OUT_COLUMNS} FROM events WHERE (source = 'pixel') = ? AND event_id = ?",
                (source == "pixel", ev.event_id),
            ).fetchone()
            if row is not None:
                return False, _event_out(row)
        click = conn.execute(
            "SELECT c.ts, c.link_id, c.route, c.source, c.visitor_id, "
            "coalesce(c.bot_kind, '') = '', "
            "l.attribution_window_s FROM clicks c CROSS JOIN links l ON l.id = c.link_id "
            "WHERE c.click_id = ?",
            (ev.click_id,),
        ).fetchone()
        if click is None:
            raise UnknownClick("no click has this click id", "click_id")
        click_ts, link_id, route, click_source, visitor_id, human, window_s = click
        window_ms = (window_s or DEFAULT_ATTRIBUTION_S) * 1000
        occurred = now_ms if ev.occurred_at is None else ev.occurred_at
        if occurred > now_ms + CLOCK_SKEW_MS:
            raise InvalidField("occurred_at is in the future", "occurred_at")
        if occurred < click_ts - CLOCK_SKEW_MS:
            raise OutsideWindow("the event happened before its click", "occurred_at")
        occurred = max(occurred, click_ts)  # within the skew: no negative lag
        if occurred - click_ts > window_ms:
            raise OutsideWindow(
                f"the event came {_span(occurred - click_ts)} after its click; this link "
                f"attributes events up to {_span(window_ms)} after the click "
                "(attribution_window_s)",
                "click_id",
            )
        cur = conn.execute(
            "INSERT INTO events (event_id, link_id, click_id, click_ts, route, click_source, "
            "visitor_id, day, human, name, value_micros, currency, occurred_at, received_at, "
            "source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ev.event_id,
                link_id,
                ev.click_id,
                click_ts,
                route,
                click_source,
                visitor_id,
                click_ts // 86_400_000,
                1 if human else 0,
                ev.name,
                ev.value_micros,
                ev.currency,
                occurred,
                now_ms,
                source,
            ),
        )
        row = conn.execute(
            f"SELECT {_OUT_COLUMNS} FROM events WHERE id = ?", (cur.lastrowid,)
        ).fetchone()
    return True, _event_out(row)


def _span(ms: int) -> str:
    s = ms / 1000
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400 * 2:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def click_id_time_ms(click_id: bytes) -> int:
    """When a click id was made: its first 6 bytes are Unix milliseconds (edge/links.py)."""
    return int.from_bytes(click_id[:6], "big")


# A pixel event whose click is not written yet (the click came through another worker, in
# a later batch) is tried again at the next flushes while its click id is this young.
PIXEL_RETRY_MS: Final = 30_000


@dataclass(slots=True)
class PixelOutcome:
    accepted: list[tuple[int, int, bool]]  # (link id, unix second, human) of new events
    retry: list[tuple[float, bytes]]  # (time received, raw query): click not written yet
    rejected: dict[str, int]  # reason -> count
    duplicates: int = 0


def record_pixels(
    conn: sqlite3.Connection, pixels: list[tuple[float, bytes]], now_ms: int
) -> PixelOutcome:
    """Record pixel events (time received, raw query) in the caller's transaction."""
    out = PixelOutcome([], [], {})
    for received, query in pixels:
        try:
            ev = validate_event(pixel_body(query))
            if ev.occurred_at is None:
                ev = EventInput(
                    ev.click_id,
                    ev.name,
                    ev.value_micros,
                    ev.currency,
                    ev.event_id,
                    int(received * 1000),
                )
            created, stored = record(conn, ev, "pixel", now_ms)
        except UnknownClick:
            age_ms = now_ms - click_id_time_ms(ev.click_id)
            if -1000 <= age_ms < PIXEL_RETRY_MS:  # (a forged future id is not waited for)
                out.retry.append((received, query))
            else:
                out.rejected["unknown_click"] = out.rejected.get("unknown_click", 0) + 1
            continue
        except OutsideWindow:
            out.rejected["outside_window"] = out.rejected.get("outside_window", 0) + 1
            continue
        except LinkedgeError:
            out.rejected["invalid"] = out.rejected.get("invalid", 0) + 1
            continue
        if created:
            out.accepted.append((stored["link_id"], stored["occurred_at"] // 1000, stored["human"]))
        else:
            out.duplicates += 1
    return out
