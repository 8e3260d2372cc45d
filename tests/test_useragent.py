"""geo/useragent.py with real user-agent strings and uap-core's test cases."""

from __future__ import annotations

import importlib.util

import pytest
import ua_parser
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.bots import classify
from geo.useragent import EMPTY_UA, MAX_UA_CHARS, UAInfo, UserAgentParser, device_type_of
from tests.geo_fixtures import HUMAN_UAS, UAP_DIR, UAP_MISSING_REASON, load_uap_cases

needs_uap = pytest.mark.skipif(not UAP_DIR.is_dir(), reason=UAP_MISSING_REASON)
HAS_RUST = importlib.util.find_spec("ua_parser_rs") is not None

BOT_UAS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/126.0.6478.126 Mobile Safari/537.36 (compatible; Googlebot/2.1;"
    " +http://www.google.com/bot.html)",
    "curl/8.4.0",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " HeadlessChrome/126.0.6478.126 Safari/537.36",
    "Xenu Link Sleuth/1.3.8",  # named only by ua-parser's Spider rules
)

ALL_CASES = [(kind, ua) for kind, uas in HUMAN_UAS.items() for ua in uas]


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser()


@pytest.mark.parametrize(("device_type", "ua"), ALL_CASES)
def test_device_type_of_real_user_agents(
    parser: UserAgentParser, device_type: str, ua: str
) -> None:
    assert parser.parse(ua).device_type == device_type


@pytest.mark.parametrize("ua", BOT_UAS)
def test_bots_are_decided_by_classify_with_the_parsed_agent(
    parser: UserAgentParser, ua: str
) -> None:
    """The parser reports what it sees (ua-parser's Spider family as `spider`); whether a
    click is a bot is decided once, by geo.bots.classify."""
    info = parser.parse(ua)
    assert info.device_type != "bot"
    assert classify(ua, info, is_head=False, is_prefetch=False) is not None


def test_an_agent_only_ua_parser_knows_is_a_crawler_through_spider(
    parser: UserAgentParser,
) -> None:
    ua = "ZooShot 0.42"  # neither geo.bots' patterns nor its crawler list name it
    assert classify(ua, None, is_head=False, is_prefetch=False) is None
    assert parser.parse(ua).spider is True
    assert classify(ua, parser.parse(ua), is_head=False, is_prefetch=False) == "crawler"


def test_fields_of_a_desktop_chrome(parser: UserAgentParser) -> None:
    assert parser.parse(HUMAN_UAS["desktop"][0]) == UAInfo(
        browser="Chrome",
        browser_major="126",
        os="Windows",
        os_major="10",
        device_brand=None,
        device_model=None,
        device_type="desktop",
    )


def test_fields_of_an_iphone_safari(parser: UserAgentParser) -> None:
    assert parser.parse(HUMAN_UAS["mobile"][0]) == UAInfo(
        "Mobile Safari", "17", "iOS", "17", "Apple", "iPhone", "mobile"
    )


@pytest.mark.parametrize("ua", ["", " ", "\t"])
def test_empty_user_agent_is_other_with_nothing_known(parser: UserAgentParser, ua: str) -> None:
    assert parser.parse(ua) == EMPTY_UA == UAInfo(None, None, None, None, None, None, "other")


def test_missing_user_agent_is_other(parser: UserAgentParser) -> None:
    assert parser.parse(None) == EMPTY_UA  # type: ignore[arg-type]
    assert parser.cache_info()["errors"] == 0


def test_unknown_string_gives_nones_not_other(parser: UserAgentParser) -> None:
    info = parser.parse("zzqx")
    assert (info.browser, info.os, info.device_brand, info.device_model) == (None,) * 4
    assert info.device_type == "other"


@pytest.mark.skipif(not HAS_RUST, reason="ua-parser-rs (ua-parser[regex]) is not installed")
def test_rust_resolver_is_chosen_when_installed(parser: UserAgentParser) -> None:
    assert parser.backend == "regex"


def test_pure_python_resolver_gives_the_same_answers(parser: UserAgentParser) -> None:
    basic = UserAgentParser(resolver="basic")
    assert basic.backend == "basic"
    for _, ua in ALL_CASES:
        assert basic.parse(ua) == parser.parse(ua), ua


@pytest.mark.skipif(
    importlib.util.find_spec("re2") is not None, reason="google-re2 is installed here"
)
def test_forcing_a_missing_resolver_fails_loudly() -> None:
    with pytest.raises(ImportError):
        UserAgentParser(resolver="re2")


def test_cache_counts_hits_and_evicts_the_least_recently_used() -> None:
    parser = UserAgentParser(cache_size=2)
    chrome, safari, firefox = HUMAN_UAS["desktop"][:3]
    parser.parse(chrome)
    parser.parse(safari)
    parser.parse(chrome)  # chrome is now the most recently used
    parser.parse(firefox)  # evicts safari
    assert parser.cache_info() == {
        "entries": 2,
        "max_entries": 2,
        "hits": 1,
        "misses": 3,
        "errors": 0,
    }
    parser.parse(chrome)
    assert parser.cache_info()["hits"] == 2
    parser.parse(safari)
    assert parser.cache_info()["misses"] == 4


def test_very_long_string_is_parsed_on_its_head(parser: UserAgentParser) -> None:
    ua = HUMAN_UAS["desktop"][0] + " " + "x" * (4 * MAX_UA_CHARS)
    assert parser.parse(ua).browser == "Chrome"


def _ua_parser_says(ua: str) -> tuple[str | None, ...]:
    """ua-parser's own answer, read the way UserAgentParser documents it: "Other" and
    missing families are None, a major version only beside a known family."""
    result = ua_parser.parse(ua)
    agent, os_, device = result.user_agent, result.os, result.device
    browser = _expected(agent.family) if agent else None
    os_family = _expected(os_.family) if os_ else None
    known_device = device is not None and _expected(device.family) is not None
    return (
        browser,
        agent.major if agent and browser else None,
        os_family,
        os_.major if os_ and os_family else None,
        device.brand if device and known_device else None,
        device.model if device and known_device else None,
        device is not None and device.family == "Spider",
    )


_REAL_UAS = st.sampled_from([ua for _, ua in ALL_CASES] + list(BOT_UAS))
_ANY_UA = st.one_of(
    st.text(max_size=300),
    _REAL_UAS,
    st.tuples(_REAL_UAS, st.text(max_size=20)).map(" ".join),  # a real one with a tail
)


@settings(deadline=None)  # the first ua_parser.parse builds ua-parser's default parser
@given(_ANY_UA)
def test_parse_of_any_text_agrees_with_ua_parser_and_counts_no_error(
    parser: UserAgentParser, ua: str
) -> None:
    errors = parser.errors
    info = parser.parse(ua)
    if not ua.strip():
        assert info == EMPTY_UA
    else:
        head = ua[:MAX_UA_CHARS]
        assert (*info[:6], info.spider) == _ua_parser_says(head)
        assert info.device_type == device_type_of(head, info.os)
    assert parser.errors == errors


# -- agreement with uap-core's own expectations (the wiring of fields) -----------------------


def _expected(value: str | None) -> str | None:
    return None if value in (None, "Other") else value


@needs_uap
def test_browser_family_and_major_match_uap_core(parser: UserAgentParser) -> None:
    cases = load_uap_cases("test_ua")
    wrong = [
        (c["user_agent_string"], c["family"], info.browser)
        for c in cases
        if (info := parser.parse(c["user_agent_string"])).browser != _expected(c["family"])
        or (info.browser is not None and info.browser_major != c["major"])
    ]
    assert wrong == []


@needs_uap
def test_os_family_matches_uap_core(parser: UserAgentParser) -> None:
    cases = load_uap_cases("test_os")
    wrong = [
        (c["user_agent_string"], c["family"], info.os)
        for c in cases
        if (info := parser.parse(c["user_agent_string"])).os != _expected(c["family"])
        or (info.os is not None and info.os_major != c["major"])
    ]
    assert wrong == []


@needs_uap
def test_device_brand_model_match_uap_core_and_spiders_are_bots(parser: UserAgentParser) -> None:
    cases = load_uap_cases("test_device")
    wrong: list[tuple[str, object, UAInfo]] = []
    for c in cases:
        info = parser.parse(c["user_agent_string"])
        expected = (None, None) if c["family"] == "Other" else (c["brand"], c["model"])
        if (info.device_brand, info.device_model) != expected:
            wrong.append((c["user_agent_string"], expected, info))
        if c["family"] == "Spider" and not info.spider:
            wrong.append((c["user_agent_string"], "Spider", info))
    assert wrong == []
