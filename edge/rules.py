"""Redirect rules and A/B variants: validated once when a link is written, compiled into
predicates when it loads, evaluated per request in the edge workers.

Rules of this module:
- Pure: no I/O, no asyncio. `validate_rules` / `validate_variants` take what a user sent
  (JSON) and return the stored, normalised form or raise InvalidField naming the exact
  place (`rules[2].when.country`). `compile_rules` turns the stored form into predicates.
- A rule is {"when": {...}, "url": ..., "status": ...}; the conditions of a "when" are
  AND-ed, the values listed in one condition are OR-ed. The first matching rule wins;
  no match falls through to the variants (if any), then the link's own URL.
- Conditions and the request facts they read (edge/facts.py computes a fact only when a
  rule asks for it, cached per client):
    device            desktop, mobile, tablet, ios, android, bot (ios/android: the OS of a
                      person's phone or tablet; a bot or a HEAD/prefetch probe is bot only)
    os, browser       family names as ua-parser gives them ("iOS", "Chrome Mobile"),
                      matched case-insensitively
    country           ISO 3166-1 alpha-2 codes of the GeoIP country
    language          primary tags of Accept-Language ("fr" for "fr-CA,fr;q=0.9")
    referrer_source   what stats call the source (twitter, google, newsletter ...)
    referrer_host     the referrer's host, or a parent domain of it ("t.co")
    query             {"k": "v"} (equal) or {"k": true} (present) on the short URL
    time              after / before (ISO 8601 or Unix ms), weekdays (mon..sun or
                      1..7, Monday is 1), hours ([from, to) local hours, 0-24), tz (IANA)
- A variant is {"url", "weight" (> 0), "name"}; 2 to MAX_VARIANTS of them. A visitor's
  variant is a pure function of their visitor id (sticky for the day), weights respected
  (`pick_variant`).
- Route indexes name where a click went, stored with it and cut by stats: 0 the link's
  own URL, 1..MAX_RULES a rule (its index + 1), VARIANT_BASE + i a variant, OVERFLOW the
  overflow URL of a click-limited link.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.errors import InvalidField, LinkedgeError
from edge.urls import normalize_destination

MAX_RULES: Final = 30
MAX_VARIANTS: Final = 8
MAX_VALUES: Final = 100  # values listed in one condition
MAX_WEIGHT: Final = 1_000_000
REDIRECT_STATUSES: Final = (301, 302, 303, 307, 308)
VARIANT_BASE: Final = 32
OVERFLOW: Final = 63
ROUTES_PER_LINK: Final = 64  # route indexes are 0..63
DEVICES: Final = ("desktop", "mobile", "tablet", "ios", "android", "bot")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CONDITIONS: Final = (
    "device",
    "os",
    "browser",
    "country",
    "language",
    "referrer_source",
    "referrer_host",
    "query",
    "time",
)
TIME_FIELDS: Final = ("after", "before", "weekdays", "hours", "tz")
_COUNTRY_RE: Final = re.compile(r"[A-Za-z]{2}")
_LANGUAGE_RE: Final = re.compile(r"[A-Za-z]{2,3}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_MIN_MS: Final = 0
_MAX_MS: Final = 253402300799999


def _fail(path: str, message: str) -> InvalidField:
    return InvalidField(f"{path}: {message}", path)


# --- validation -----------------------------------------------------------------------------


def _strings(value: Any, path: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise _fail(path, "give a string or a non-empty list of strings")
    if len(items) > MAX_VALUES:
        raise _fail(path, f"at most {MAX_VALUES} values")
    out = []
    for v in items:
        text = v.strip()
        if not text or len(text) > 200 or any(ord(c) < 0x20 for c in text):
            raise _fail(path, f"invalid value {v!r}")
        if text not in out:
            out.append(text)
    return out


def _time_ms(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise _fail(path, "give ISO 8601 (2026-12-24T18:00:00+01:00) or Unix milliseconds")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise _fail(
                path, f"expected ISO 8601 (2026-12-24T18:00:00+01:00), got {value!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        ms = int(when.timestamp() * 1000)
    else:
        raise _fail(path, "give ISO 8601 (2026-12-24T18:00:00+01:00) or Unix milliseconds")
    if not _MIN_MS <= ms <= _MAX_MS:
        raise _fail(path, "out of range: 1970-01-01 to 9999-12-31")
    return ms


def _zone(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, "give an IANA time zone like Europe/Paris")
    name = value.strip()
    if name.upper() in ("UTC", "Z"):
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(
            path, f"unknown time zone {name!r}: use an IANA name like Europe/Paris"
        ) from None
    return name


def _validate_time(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise _fail(path, f"give an object with some of {', '.join(TIME_FIELDS)}")
    out: dict[str, Any] = {}
    for key in value:
        if key not in TIME_FIELDS:
            raise _fail(f"{path}.{key}", f"unknown field (one of {', '.join(TIME_FIELDS)})")
    if "after" in value:
        out["after"] = _time_ms(value["after"], f"{path}.after")
    if "before" in value:
        out["before"] = _time_ms(value["before"], f"{path}.before")
    if "after" in out and "before" in out and out["after"] >= out["before"]:
        raise _fail(f"{path}.before", "must be later than after")
    if "weekdays" in value:
        days = value["weekdays"]
        if not isinstance(days, list) or not days:
            raise _fail(f"{path}.weekdays", 'give a non-empty list like ["mon", "fri"] or [1, 5]')
        numbers = set()
        for i, day in enumerate(days):
            if isinstance(day, str) and day.strip().lower()[:3] in WEEKDAYS:
                numbers.add(WEEKDAYS.index(day.strip().lower()[:3]) + 1)
            elif isinstance(day, int) and not isinstance(day, bool) and 1 <= day <= 7:
                numbers.add(day)
            else:
                raise _fail(f"{path}.weekdays[{i}]", "mon..sun, or 1 (Monday) to 7 (Sunday)")
        out["weekdays"] = sorted(numbers)
    if "hours" in value:
        hours = value["hours"]
        if isinstance(hours, str) and re.fullmatch(r"\s*\d{1,2}\s*-\s*\d{1,2}\s*", hours):
            hours = [int(h) for h in hours.split("-")]
        if (
            not isinstance(hours, list)
            or len(hours) != 2
            or not all(isinstance(h, int) and not isinstance(h, bool) for h in hours)
            or not (0 <= hours[0] <= 23 and 1 <= hours[1] <= 24)
            or hours[0] == hours[1]
        ):
            raise _fail(
                f"{path}.hours", 'give [from, to) local hours like [9, 17] or "9-17" (0-24)'
            )
        out["hours"] = list(hours)
    if "tz" in value:
        out["tz"] = _zone(value["tz"], f"{path}.tz")
    elif "weekdays" in out or "hours" in out:
        out["tz"] = "UTC"
    return out


def _validate_when(when: Any, path: str) -> dict[str, Any]:
    if not isinstance(when, dict) or not when:
        raise _fail(path, f"give an object with some of {', '.join(CONDITIONS)}")
    out: dict[str, Any] = {}
    for key, value in when.items():
        where = f"{path}.{key}"
        if key not in CONDITIONS:
            raise _fail(where, f"unknown condition (one of {', '.join(CONDITIONS)})")
        if key == "device":
            values = [v.lower() for v in _strings(value, where)]
            for v in values:
                if v not in DEVICES:
                    raise _fail(where, f"unknown device {v!r} (one of {', '.join(DEVICES)})")
            out[key] = values
        elif key == "country":
            values = _strings(value, where)
            for v in values:
                if not _COUNTRY_RE.fullmatch(v):
                    raise _fail(where, f"{v!r} is not an ISO 3166-1 alpha-2 code like FR")
            out[key] = [v.upper() for v in values]
        elif key == "language":
            values = _strings(value, where)
            for v in values:
                if not _LANGUAGE_RE.fullmatch(v):
                    raise _fail(where, f"{v!r} is not a primary language tag like fr")
            out[key] = [v.lower() for v in values]
        elif key in ("os", "browser", "referrer_source"):
            out[key] = [v.lower() for v in _strings(value, where)]
        elif key == "referrer_host":
            out[key] = [v.lower().rstrip(".") for v in _strings(value, where)]
        elif key == "query":
            if not isinstance(value, dict) or not value or len(value) > MAX_VALUES:
                raise _fail(where, 'give an object like {"utm_source": "qr"} or {"ref": true}')
            query: dict[str, Any] = {}
            for name, want in value.items():
                if not isinstance(name, str) or not name or len(name) > 200:
                    raise _fail(where, f"invalid parameter name {name!r}")
                if want is True:
                    query[name] = True
                elif isinstance(want, str) and len(want) <= 2000:
                    query[name] = want
                else:
                    raise _fail(f"{where}.{name}", "give a string (equal) or true (present)")
            out[key] = query
        else:
            out[key] = _validate_time(value, where)
    return out


def _status(value: Any, path: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value not in REDIRECT_STATUSES:
        raise _fail(path, "one of 301, 302, 303, 307, 308")
    return value


def _url(value: Any, path: str) -> str:
    try:
        return normalize_destination(value, path)
    except LinkedgeError as exc:
        raise InvalidField(f"{path}: {exc.message}", path) from None


def validate_rules(value: Any, default_status: int = 302) -> list[dict[str, Any]] | None:
    """The stored form of a link's `rules` (None or [] clears them)."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise _fail("rules", "give a list of {when, url, status} objects")
    if len(value) > MAX_RULES:
        raise _fail("rules", f"at most {MAX_RULES} rules")
    out = []
    for i, rule in enumerate(value):
        path = f"rules[{i}]"
        if not isinstance(rule, dict):
            raise _fail(path, "give an object {when, url, status}")
        for key in rule:
            if key not in ("when", "url", "status"):
                raise _fail(f"{path}.{key}", "unknown field (when, url, status)")
        if "url" not in rule:
            raise _fail(f"{path}.url", "required: where the rule sends the visitor")
        out.append(
            {
                "when": _validate_when(rule.get("when"), f"{path}.when"),
                "url": _url(rule["url"], f"{path}.url"),
                "status": _status(rule.get("status"), f"{path}.status", default_status),
            }
        )
    return out


def validate_variants(value: Any) -> list[dict[str, Any]] | None:
    """The stored form of a link's `variants` (None or [] clears them)."""
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_VARIANTS:
        raise _fail("variants", f"give 2 to {MAX_VARIANTS} {{url, weight, name}} objects")
    out = []
    names: set[str] = set()
    for i, variant in enumerate(value):
        path = f"variants[{i}]"
        if not isinstance(variant, dict):
            raise _fail(path, "give an object {url, weight, name}")
        for key in variant:
            if key not in ("url", "weight", "name"):
                raise _fail(f"{path}.{key}", "unknown field (url, weight, name)")
        if "url" not in variant:
            raise _fail(f"{path}.url", "required")
        weight = variant.get("weight", 1)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not 0 < weight <= MAX_WEIGHT
            or not math.isfinite(weight)
        ):
            raise _fail(f"{path}.weight", f"a number above 0 and at most {MAX_WEIGHT}")
        name = variant.get("name", chr(ord("a") + i))
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise _fail(f"{path}.name", "1-32 letters, digits, '_', '.', '-'")
        if name in names:
            raise _fail(f"{path}.name", f"{name!r} is used twice")
        names.add(name)
        out.append({"url": _url(variant["url"], f"{path}.url"), "weight": weight, "name": name})
    return out


def route_names(
    rules: Sequence[dict[str, Any]] | None, variants: Sequence[dict[str, Any]] | None
) -> dict[int, str]:
    """Route index -> the name stats show ("default", "rule:1", "variant:a", "overflow")."""
    out = {0: "default", OVERFLOW: "overflow"}
    for i in range(len(rules or ())):
        out[i + 1] = f"rule:{i + 1}"
    for i, v in enumerate(variants or ()):
        out[VARIANT_BASE + i] = f"variant:{v['name']}"
    return out


def route_key(link_id: int, route: int) -> int:
    """The rollup key of a link's route: a negative id no link can have, so every rollup
    and stats query works per route unchanged (edge/rollups.py)."""
    return -(link_id * ROUTES_PER_LINK + route)


# --- evaluation ------------------------------------------------------------------------------


class Facts:
    """What rules ask of one request; each fact is computed at most once, on first use, by
    the worker's caches (edge/facts.py fills the callables)."""

    __slots__ = (
        "_device",
        "_ua",
        "_country",
        "_language",
        "_referrer",
        "query",
        "now",
        "_device_v",
        "_ua_v",
        "_country_v",
        "_language_v",
        "_referrer_v",
        "_query_v",
    )

    def __init__(
        self,
        *,
        device: Callable[[], tuple[str, str | None]],
        ua: Callable[[], tuple[str | None, str | None]],
        country: Callable[[], str | None],
        language: Callable[[], str | None],
        referrer: Callable[[], tuple[str | None, str]],
        query: bytes,
        now: float,
    ) -> None:
        self._device = device
        self._ua = ua
        self._country = country
        self._language = language
        self._referrer = referrer
        self.query = query
        self.now = now
        self._device_v: tuple[str, str | None] | None = None
        self._ua_v: tuple[str | None, str | None] | None = None
        self._country_v: Any = _UNSET
        self._language_v: Any = _UNSET
        self._referrer_v: tuple[str | None, str] | None = None
        self._query_v: dict[str, str] | None = None

    def device(self) -> tuple[str, str | None]:
        """(device type or "bot", "ios"/"android"/None)."""
        if self._device_v is None:
            self._device_v = self._device()
        return self._device_v

    def os_browser(self) -> tuple[str | None, str | None]:
        if self._ua_v is None:
            self._ua_v = self._ua()
        return self._ua_v

    def country(self) -> str | None:
        if self._country_v is _UNSET:
            self._country_v = self._country()
        return self._country_v  # type: ignore[no-any-return]

    def language(self) -> str | None:
        if self._language_v is _UNSET:
            self._language_v = self._language()
        return self._language_v  # type: ignore[no-any-return]

    def referrer(self) -> tuple[str | None, str]:
        """(host, source)."""
        if self._referrer_v is None:
            self._referrer_v = self._referrer()
        return self._referrer_v

    def params(self) -> dict[str, str]:
        if self._query_v is None:
            out: dict[str, str] = {}
            for pair in self.query.decode("ascii", "replace").split("&"):
                if pair:
                    name, _, value = pair.partition("=")
                    out.setdefault(_unquote(name), _unquote(value))
            self._query_v = out
        return self._query_v


_UNSET: Final[Any] = object()


def _unquote(text: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(text)


Predicate = Callable[[Facts], bool]


def _device_predicate(values: list[str]) -> Predicate:
    wanted = frozenset(values)

    def check(f: Facts) -> bool:
        device, platform = f.device()
        return device in wanted or (platform is not None and platform in wanted)

    return check


def _ua_predicate(index: int, values: list[str]) -> Predicate:
    wanted = frozenset(values)

    def check(f: Facts) -> bool:
        value = f.os_browser()[index]
        return value is not None and value.lower() in wanted

    return check


def _host_predicate(values: list[str]) -> Predicate:
    wanted = tuple(values)

    def check(f: Facts) -> bool:
        host = f.referrer()[0]
        if not host:
            return False
        return any(host == w or host.endswith("." + w) for w in wanted)

    return check


def _query_predicate(query: dict[str, Any]) -> Predicate:
    items = tuple(query.items())

    def check(f: Facts) -> bool:
        params = f.params()
        return all(
            (name in params) if want is True else params.get(name) == want for name, want in items
        )

    return check


def _time_predicate(spec: dict[str, Any]) -> Predicate:
    after = spec.get("after")
    before = spec.get("before")
    weekdays = frozenset(spec.get("weekdays") or ())
    hours = spec.get("hours")
    tz = ZoneInfo(spec["tz"]) if spec.get("tz") and spec["tz"] != "UTC" else dt.UTC

    def check(f: Facts) -> bool:
        ms = f.now * 1000
        if after is not None and ms < after:
            return False
        if before is not None and ms >= before:
            return False
        if weekdays or hours:
            local = dt.datetime.fromtimestamp(f.now, tz)
            if weekdays and local.isoweekday() not in weekdays:
                return False
            if hours:
                start, end = hours
                h = local.hour
                inside = start <= h < end if start < end else (h >= start or h < end)
                if not inside:
                    return False
        return True

    return check


# Conditions are checked cheapest first: the request's own bytes and the clock, then the
# per-client caches, GeoIP last.
_COST: Final = {
    "query": 0,
    "time": 1,
    "language": 2,
    "referrer_source": 3,
    "referrer_host": 3,
    "device": 4,
    "os": 4,
    "browser": 4,
    "country": 5,
}


def compile_when(when: dict[str, Any]) -> tuple[Predicate, ...]:
    """The predicates of one rule's conditions (all must hold), cheapest first."""
    out: list[tuple[int, Predicate]] = []
    for key, value in when.items():
        check: Predicate
        if key == "device":
            check = _device_predicate(value)
        elif key == "os":
            check = _ua_predicate(0, value)
        elif key == "browser":
            check = _ua_predicate(1, value)
        elif key == "country":
            check = _in_predicate(lambda f: f.country(), value)
        elif key == "language":
            check = _in_predicate(lambda f: f.language(), value)
        elif key == "referrer_source":
            check = _in_predicate(lambda f: f.referrer()[1], value)
        elif key == "referrer_host":
            check = _host_predicate(value)
        elif key == "query":
            check = _query_predicate(value)
        else:
            check = _time_predicate(value)
        out.append((_COST[key], check))
    out.sort(key=lambda item: item[0])
    return tuple(check for _cost, check in out)


def _in_predicate(fact: Callable[[Facts], str | None], values: list[str]) -> Predicate:
    wanted = frozenset(values)

    def check(f: Facts) -> bool:
        return fact(f) in wanted

    return check


def first_match(rules: Sequence[tuple[Predicate, ...]], facts: Facts) -> int:
    """The index of the first rule whose every condition holds, or -1."""
    for i, predicates in enumerate(rules):
        for check in predicates:
            if not check(facts):
                break
        else:
            return i
    return -1


def cumulative_weights(variants: Sequence[dict[str, Any]]) -> tuple[float, ...]:
    total = 0.0
    out = []
    for v in variants:
        total += float(v["weight"])
        out.append(total)
    return tuple(out)


def pick_variant(cumulative: Sequence[float], visitor: int) -> int:
    """The variant of a visitor (an unsigned 64-bit visitor id): the point visitor / 2^64
    of [0, 1) falls in variant i's share of the weights. Sticky: the same visitor gets the
    same variant; uniform visitor ids get each variant in proportion to its weight."""
    point = (visitor / 18446744073709551616.0) * cumulative[-1]
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if point < cumulative[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo
