"""edge/rules.py's properties: validation names the place and is idempotent, the first
matching rule wins (checked against a plain reading of the conditions written here), no
match falls through, variants respect their weights within a stated bound and stick to
the visitor, time windows cut where they say."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import rules
from edge.errors import InvalidField

DEVICE_FACTS = [
    ("desktop", None),
    ("mobile", "ios"),
    ("mobile", "android"),
    ("tablet", "ios"),
    ("tablet", None),
    ("bot", None),
]
COUNTRIES = ["GB", "US", "FR", None]
LANGUAGES = ["en", "fr", "de", None]
HOSTS = ["t.co", "bait.co", "mobile.twitter.com", "news.example.org", "notexample.org", None]
SOURCES = ["twitter", "google", "newsletter", "direct"]
OSES = ["iOS", "Android", "Windows", None]
BROWSERS = ["Chrome", "Mobile Safari", "Firefox", None]
PARAMS = ["ref", "utm_source", "promo"]
VALUES = ["a", "b", ""]


@st.composite
def request_facts(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "device": draw(st.sampled_from(DEVICE_FACTS)),
        "os": draw(st.sampled_from(OSES)),
        "browser": draw(st.sampled_from(BROWSERS)),
        "country": draw(st.sampled_from(COUNTRIES)),
        "language": draw(st.sampled_from(LANGUAGES)),
        "host": draw(st.sampled_from(HOSTS)),
        "source": draw(st.sampled_from(SOURCES)),
        "query": draw(
            st.dictionaries(st.sampled_from(PARAMS), st.sampled_from(VALUES), max_size=3)
        ),
    }


def some(values: list[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from([v for v in values if v is not None]), min_size=1, max_size=3)


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    parts = {
        "device": some(list(rules.DEVICES)),
        "os": some([o.lower() if draw(st.booleans()) else o for o in OSES if o]),
        "browser": some([b for b in BROWSERS if b]),
        "country": some([c.lower() for c in COUNTRIES if c]),  # validation upper-cases
        "language": some(LANGUAGES),
        "referrer_host": some(["t.co", "twitter.com", "example.org"]),
        "referrer_source": some(SOURCES),
        "query": st.dictionaries(
            st.sampled_from(PARAMS), st.one_of(st.just(True), st.sampled_from(VALUES)), min_size=1
        ),
    }
    keys = draw(st.lists(st.sampled_from(sorted(parts)), min_size=1, max_size=3, unique=True))
    return {k: draw(parts[k]) for k in keys}


def holds(when: dict[str, Any], f: dict[str, Any]) -> bool:
    """The conditions as the docs state them, read plainly (not the module's code)."""
    for key, want in when.items():
        if key == "device":
            kind, platform = f["device"]
            ok = any(w.lower() in (kind, platform) for w in want)
        elif key in ("os", "browser"):
            ok = f[key] is not None and f[key].lower() in [w.lower() for w in want]
        elif key == "country":
            ok = f["country"] in [w.upper() for w in want]
        elif key == "language":
            ok = f["language"] in want
        elif key == "referrer_source":
            ok = f["source"] in want
        elif key == "referrer_host":
            host = f["host"]
            ok = host is not None and any(host == w or host.endswith("." + w) for w in want)
        else:
            ok = all(
                (name in f["query"]) if v is True else f["query"].get(name) == v
                for name, v in want.items()
            )
        if not ok:
            return False
    return True


def facts_of(f: dict[str, Any], now: float = 1.8e9) -> rules.Facts:
    query = "&".join(f"{k}={v}" for k, v in f["query"].items()).encode()
    return rules.Facts(
        device=lambda: f["device"],
        ua=lambda: (f["os"], f["browser"]),
        country=lambda: f["country"],
        language=lambda: f["language"],
        referrer=lambda: (f["host"], f["source"]),
        query=query,
        now=now,
    )


def compiled(stored: list[dict[str, Any]]) -> list[tuple[rules.Predicate, ...]]:
    return [rules.compile_when(r["when"]) for r in stored]


@settings(max_examples=400, deadline=None)
@given(st.lists(conditions(), min_size=1, max_size=6), request_facts())
def test_the_first_rule_whose_conditions_all_hold_wins(
    whens: list[dict[str, Any]], f: dict[str, Any]
) -> None:
    stored = rules.validate_rules(
        [{"when": w, "url": f"https://e.com/{i}"} for i, w in enumerate(whens)]
    )
    assert stored is not None
    expected = next((i for i, w in enumerate(whens) if holds(w, f)), -1)
    assert rules.first_match(compiled(stored), facts_of(f)) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(conditions(), min_size=1, max_size=6))
def test_validation_is_idempotent_and_keeps_the_order(whens: list[dict[str, Any]]) -> None:
    body = [{"when": w, "url": f"https://e.com/{i}", "status": 307} for i, w in enumerate(whens)]
    stored = rules.validate_rules(body)
    assert stored is not None
    assert rules.validate_rules(stored) == stored
    assert [r["url"] for r in stored] == [f"https://e.com/{i}" for i in range(len(whens))]


def test_no_rule_matches_falls_through() -> None:
    stored = rules.validate_rules([{"when": {"country": "FR"}, "url": "https://e.com/fr"}])
    assert stored is not None
    f = {"device": ("desktop", None), "os": None, "browser": None, "country": None,
         "language": None, "host": None, "source": "direct", "query": {}}  # fmt: skip
    assert rules.first_match(compiled(stored), facts_of(f)) == -1
    assert rules.first_match([], facts_of(f)) == -1


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("not a list", "rules"),
        ([{"when": {"device": "phone"}, "url": "https://e.com/"}], "rules[0].when.device"),
        (
            [{"when": {"country": ["FR", "France"]}, "url": "https://e.com/"}],
            "rules[0].when.country",
        ),
        ([{"when": {"query": {"a": 1}}, "url": "https://e.com/"}], "rules[0].when.query.a"),
        (
            [{"when": {"time": {"after": "soon"}}, "url": "https://e.com/"}],
            "rules[0].when.time.after",
        ),
        (
            [{"when": {"time": {"weekdays": ["mon", "funday"]}}, "url": "https://e.com/"}],
            "rules[0].when.time.weekdays[1]",
        ),
        (
            [{"when": {"time": {"tz": "Mars/Olympus"}}, "url": "https://e.com/"}],
            "rules[0].when.time.tz",
        ),
        (
            [{"when": {"time": {"after": 2000, "before": 1000}}, "url": "https://e.com/"}],
            "rules[0].when.time.before",
        ),
        ([{"when": {"device": "ios"}}], "rules[0].url"),
        ([{"when": {"device": "ios"}, "url": "https://e.com/", "weight": 2}], "rules[0].weight"),
        ([{"when": {"device": "ios"}, "url": "https://e.com/"}] * 31, "rules"),
    ],
)
def test_every_refusal_names_its_place(value: Any, field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        rules.validate_rules(value)
    assert caught.value.field == field
    assert caught.value.message.startswith(field + ": ")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=2, max_size=rules.MAX_VARIANTS))
def test_variants_get_their_weighted_share_of_visitors(weights: list[int]) -> None:
    """Visitor ids are uniform 64-bit hashes: N evenly spread ids give variant i
    N * w_i / W of them, within one id of rounding at each of its two edges."""
    variants = rules.validate_variants(
        [{"url": f"https://e.com/{i}", "weight": w} for i, w in enumerate(weights)]
    )
    assert variants is not None
    cumulative = rules.cumulative_weights(variants)
    n = 20_000
    picks = Counter(rules.pick_variant(cumulative, (k * 2**64) // n) for k in range(n))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(picks[i] - n * w / total) <= 2, (i, picks[i], n * w / total)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0.01, 1000), min_size=2, max_size=rules.MAX_VARIANTS),
    st.integers(0, 2**64 - 1),
)
def test_a_visitor_keeps_their_variant(weights: list[float], visitor: int) -> None:
    variants = rules.validate_variants(
        [{"url": f"https://e.com/{i}", "weight": w} for i, w in enumerate(weights)]
    )
    assert variants is not None
    cumulative = rules.cumulative_weights(variants)
    first = rules.pick_variant(cumulative, visitor)
    assert 0 <= first < len(weights)
    assert all(rules.pick_variant(cumulative, visitor) == first for _ in range(3))
    # the same weights written again (a PATCH of other fields) keep every assignment
    again = rules.cumulative_weights(rules.validate_variants(variants) or [])
    assert rules.pick_variant(again, visitor) == first


def test_variant_names_default_and_must_differ() -> None:
    variants = rules.validate_variants([{"url": "https://e.com/a"}, {"url": "https://e.com/b"}])
    assert [v["name"] for v in variants or []] == ["a", "b"]
    with pytest.raises(InvalidField) as caught:
        rules.validate_variants(
            [{"url": "https://e.com/a", "name": "x"}, {"url": "https://e.com/b", "name": "x"}]
        )
    assert caught.value.field == "variants[1].name"


def _at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("spec", "when", "inside"),
    [
        ({"after": "2026-12-24T18:00:00+01:00"}, "2026-12-24T17:00:00+00:00", True),
        ({"after": "2026-12-24T18:00:00+01:00"}, "2026-12-24T16:59:59+00:00", False),
        ({"before": "2026-12-24T18:00:00Z"}, "2026-12-24T18:00:00+00:00", False),  # [after, before)
        ({"weekdays": ["sat", "sun"], "tz": "Europe/Paris"}, "2026-12-25T23:30:00+00:00", True),
        ({"weekdays": ["sat", "sun"], "tz": "Europe/Paris"}, "2026-12-25T22:30:00+00:00", False),
        ({"hours": [9, 17], "tz": "America/New_York"}, "2026-07-01T13:00:00+00:00", True),
        ({"hours": [9, 17], "tz": "America/New_York"}, "2026-07-01T21:00:00+00:00", False),
        ({"hours": "22-6"}, "2026-07-01T23:00:00+00:00", True),  # across midnight, UTC
        ({"hours": "22-6"}, "2026-07-01T06:00:00+00:00", False),
    ],
)
def test_time_windows(spec: dict[str, Any], when: str, inside: bool) -> None:
    stored = rules.validate_rules([{"when": {"time": spec}, "url": "https://e.com/t"}])
    assert stored is not None
    f = {"device": ("desktop", None), "os": None, "browser": None, "country": None,
         "language": None, "host": None, "source": "direct", "query": {}}  # fmt: skip
    assert (rules.first_match(compiled(stored), facts_of(f, _at(when))) == 0) is inside


def test_route_names_and_keys_do_not_collide() -> None:
    stored = rules.validate_rules([{"when": {"device": "ios"}, "url": "https://e.com/"}] * 3)
    variants = rules.validate_variants([{"url": "https://e.com/a"}, {"url": "https://e.com/b"}])
    names = rules.route_names(stored, variants)
    assert names == {
        0: "default",
        1: "rule:1",
        2: "rule:2",
        3: "rule:3",
        rules.VARIANT_BASE: "variant:a",
        rules.VARIANT_BASE + 1: "variant:b",
        rules.OVERFLOW: "overflow",
    }
    keys = {rules.route_key(link, route) for link in range(1, 50) for route in range(64)}
    assert len(keys) == 49 * 64 and max(keys) < 0
