"""`linkedge link add/set --rule --variant --max-clicks ...` and `linkedge campaign launch`:
the short rule form read as the API's rule objects, every mistake one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from admin.admin_cli import CommandError
from admin.cli import parse_rule, parse_variant
from edge import rules
from tests.conftest import cli


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (
            "device=ios => https://apps.apple.com/x",
            {"when": {"device": "ios"}, "url": "https://apps.apple.com/x"},
        ),
        (
            "device=ios,android country=US => https://e.com/m 307",
            {
                "when": {"device": ["ios", "android"], "country": "US"},
                "url": "https://e.com/m",
                "status": 307,
            },
        ),
        (
            "query.ref=mail query.promo => https://e.com/p",
            {"when": {"query": {"ref": "mail", "promo": True}}, "url": "https://e.com/p"},
        ),
        (
            '{"when": {"language": "fr"}, "url": "https://e.com/fr"}',
            {"when": {"language": "fr"}, "url": "https://e.com/fr"},
        ),
    ],
)
def test_the_short_rule_form_is_the_api_rule(text: str, rule: dict[str, object]) -> None:
    assert parse_rule(text) == rule
    assert rules.validate_rules([parse_rule(text)]) is not None


@pytest.mark.parametrize(
    "text",
    [
        "device=ios https://e.com/",
        "=> https://e.com/",
        "device => https://e.com/",
        "{not json",
        "[1]",
        "device=ios => https://e.com/ fast",
    ],
)
def test_a_bad_rule_says_what_is_wrong(text: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_rule(text)
    assert str(caught.value).startswith(f"--rule {text!r}: ")


def test_variants_by_name_weight_and_url() -> None:
    assert parse_variant("a:80:https://e.com/a?x=1") == {
        "name": "a",
        "weight": 80,
        "url": "https://e.com/a?x=1",
    }
    assert parse_variant("20:https://e.com/b") == {"weight": 20, "url": "https://e.com/b"}
    assert parse_variant("https://e.com/c") == {"url": "https://e.com/c"}


def test_routing_options_round_trip_through_the_database(db_path: Path) -> None:
    out = cli(
        "link",
        "add",
        "https://example.com/app",
        "--slug",
        "app",
        "--rule",
        "device=ios => https://apps.apple.com/x",
        "--rule",
        '{"when": {"country": "DE"}, "url": "https://example.com/de", "status": 307}',
        "--variant",
        "a:80:https://example.com/a",
        "--variant",
        "b:20:https://example.com/b",
        "--max-clicks",
        "100",
        "--overflow-url",
        "https://example.com/sold",
        "--click-ids",
        "--launched-at=-10m",
        "--json",
        db=db_path,
    )
    link = json.loads(out.stdout)
    assert [r["url"] for r in link["rules"]] == [
        "https://apps.apple.com/x",
        "https://example.com/de",
    ]
    assert [(v["name"], v["weight"]) for v in link["variants"]] == [("a", 80), ("b", 20)]
    assert (link["max_clicks"], link["overflow_url"], link["click_ids"]) == (
        100,
        "https://example.com/sold",
        True,
    )
    assert link["launched_at"] is not None
    text = cli("link", "show", "app", db=db_path).stdout
    assert "2 rule(s); A/B a 80/b 20; at most 100 clicks, then https://example.com/sold" in text
    out = cli(
        "link",
        "set",
        "app",
        "--no-rules",
        "--max-clicks",
        "none",
        "--no-click-ids",
        "--json",
        db=db_path,
    )
    link = json.loads(out.stdout)
    assert (link["rules"], link["max_clicks"], link["click_ids"]) == ([], None, False)
    bad = cli(
        "link", "set", "app", "--rule", "device=phone => https://x.com/", db=db_path, check=False
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "linkedge: error: rules[0].when.device: unknown device 'phone' "
        "(one of desktop, mobile, tablet, ios, android, bot)"
    ]
    bad = cli("link", "set", "app", "--max-clicks", "lots", db=db_path, check=False)
    assert bad.returncode == 2 and "--max-clicks 'lots'" in bad.stderr


def test_campaign_launch(db_path: Path) -> None:
    cli("link", "add", "https://example.com/s", "--campaign", "spring", db=db_path)
    out = cli("campaign", "launch", "spring", "--at", "2026-03-01T09:00:00Z", "--json", db=db_path)
    assert json.loads(out.stdout) == {
        "campaign": "spring",
        "launched_at": "2026-03-01T09:00:00Z",
        "links": 1,
    }
    out = cli("campaign", "launch", "spring", "--clear", db=db_path)
    assert out.stdout.startswith("campaign spring: not launched (1 links)")
    bad = cli("campaign", "launch", "autumn", db=db_path, check=False)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "linkedge: error: no link has campaign 'autumn': set it on the links first"
    ]
