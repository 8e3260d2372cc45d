"""geo/bots.py: real bot strings per kind, and no bot labels on people's browsers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.bots import BOT_KINDS, classify, ua_kind
from geo.useragent import UserAgentParser
from tests.conftest import REPO
from tests.geo_fixtures import HUMAN_UAS, UAP_DIR, UAP_MISSING_REASON, load_uap_cases

needs_uap = pytest.mark.skipif(not UAP_DIR.is_dir(), reason=UAP_MISSING_REASON)

# Real strings, as these agents send them.
BOTS_BY_KIND: dict[str, tuple[str, ...]] = {
    "preview": (
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Slack-ImgProxy (+https://api.slack.com/robots)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Twitterbot/1.0",
        "WhatsApp/2.23.20.0 A",
        "TelegramBot (like TwitterBot)",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5"
        " skype-url-preview@microsoft.com",
        "Mozilla/5.0 (compatible; Bluesky Cardyb/1.1; +mailto:support@bsky.app)",
        "http.rb/5.1.1 (Mastodon/4.2.8; +https://mastodon.social/)",
        "Iframely/1.3.1 (+https://iframely.com/docs/about)",
        "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
        "Pinterest/0.2 (+http://www.pinterest.com/bot.html)",
        "Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)",
        "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
        "Mozilla/5.0 (compatible; Snap URL Preview Service; bot; snapchat;"
        " https://developers.snap.com/robots)",
        # iMessage draws its cards with this string
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like Gecko)"
        " Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0",
        "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b",
    ),
    "monitor": (
        "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
        "NewRelicPinger/1.0 (269833)",
        "Uptime-Kuma/1.23.11",
        "Site24x7",
        "Mozilla/5.0 (compatible; monitis - premium monitoring service; http://www.monitis.com)",
        "HetrixTools Uptime Monitoring Bot. https://hetrix.tools/uptime-monitoring-bot.html",
        "Datadog/Synthetics",
        "kube-probe/1.29",
        "ELB-HealthChecker/2.0",
        "Rackspace Monitoring/1.1 (https://monitoring.api.rackspacecloud.com)",
    ),
    "scanner": (
        "Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)",
        "sqlmap/1.7.2#stable (https://sqlmap.org)",
        "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:Port Check)",
        "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
        "Mozilla/5.0 zgrab/0.x",
        "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
        "Expanse, a Palo Alto Networks company, searches across the global IPv4 space multiple"
        " times per day to identify customers' presences on the Internet. If you would like to"
        " be excluded from our scans, please send IP addresses/domains to:"
        " scaninfo@paloaltonetworks.com",
        "Mozilla/5.0 [en] (X11, U; OpenVAS-VT 8.0.9)",
        "WhatWeb/0.5.5",
    ),
    "automation": (
        "curl/8.4.0",
        "Wget/1.21.4",
        "python-requests/2.31.0",
        "Python-urllib/3.11",
        "Python/3.11 aiohttp/3.9.1",
        "python-httpx/0.27.0",
        "Go-http-client/1.1",
        "Go-http-client/2.0",
        "okhttp/4.12.0",
        "Java/17.0.2",
        "Apache-HttpClient/4.5.14 (Java/17.0.9)",
        "libwww-perl/6.72",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " HeadlessChrome/126.0.6478.126 Safari/537.36",
        "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko)"
        " PhantomJS/2.1.1 Safari/538.1",
        "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
        "axios/1.6.8",
        "node",
        "undici",
        "PostmanRuntime/7.37.3",
        "insomnia/2023.5.8",
        "HTTPie/3.2.2",
        "Microsoft Office Existence Discovery",
        "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
    ),
    "crawler": (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0;"
        " +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
        "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko)"
        " Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
        "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
        "Mozilla/5.0 (compatible; DotBot/1.2; +https://opensiteexplorer.org/dotbot; help@moz.com)",
        "Mozilla/5.0 (Linux; Android 7.0;) AppleWebKit/537.36 (KHTML, like Gecko) Mobile"
        " Safari/537.36 (compatible; PetalBot;+https://webmaster.petalsearch.com/site/petalbot)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2;"
        " +https://openai.com/gptbot)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0;"
        " +claudebot@anthropic.com)",
        "CCBot/2.0 (https://commoncrawl.org/faq/)",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; PerplexityBot/1.0;"
        " +https://perplexity.ai/perplexitybot)",
        "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile"
        " Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
        "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
        "Sogou web spider/4.0(+http://www.sogou.com/docs/help/webmasters.htm#07)",
    ),
}

# Tokens of mail-security gateways that name themselves. Their exact strings vary by
# version and are rarely published, so these check the token, not a captured string.
MAIL_SCANNER_TOKENS = ("Barracuda", "Proofpoint", "Mimecast", "IronPort", "Forcepoint")

HUMANS = [ua for uas in HUMAN_UAS.values() for ua in uas]
CHROME = HUMAN_UAS["desktop"][0]


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser()


def test_every_kind_is_exercised_with_at_least_three_real_strings() -> None:
    assert set(BOTS_BY_KIND) == set(BOT_KINDS) - {"prefetch", "head"}
    assert all(len(uas) >= 3 for uas in BOTS_BY_KIND.values())


@pytest.mark.parametrize(
    ("kind", "ua"), [(kind, ua) for kind, uas in BOTS_BY_KIND.items() for ua in uas]
)
def test_real_bot_strings_get_their_kind(parser: UserAgentParser, kind: str, ua: str) -> None:
    assert classify(ua, parser.parse(ua), is_head=False, is_prefetch=False) == kind
    assert classify(ua, None, is_head=False, is_prefetch=False) == kind


@pytest.mark.parametrize("token", MAIL_SCANNER_TOKENS)
def test_mail_scanners_that_name_themselves_are_scanners(token: str) -> None:
    ua = f"Mozilla/5.0 (compatible; {token} URL scanner)"
    assert classify(ua, None, is_head=False, is_prefetch=False) == "scanner"


@pytest.mark.parametrize("ua", HUMANS)
def test_people_are_not_bots(parser: UserAgentParser, ua: str) -> None:
    assert classify(ua, parser.parse(ua), is_head=False, is_prefetch=False) is None


def test_prefetch_comes_first_then_head_then_the_user_agent(parser: UserAgentParser) -> None:
    googlebot = BOTS_BY_KIND["crawler"][0]
    assert classify(CHROME, parser.parse(CHROME), is_head=False, is_prefetch=True) == "prefetch"
    assert classify(googlebot, None, is_head=True, is_prefetch=True) == "prefetch"
    assert classify(CHROME, None, is_head=True, is_prefetch=False) == "head"
    assert classify(googlebot, None, is_head=True, is_prefetch=False) == "head"


@pytest.mark.parametrize("ua", ["", "   ", None])
def test_empty_or_missing_user_agent_is_automation(ua: str | None) -> None:
    assert classify(ua, None, is_head=False, is_prefetch=False) == "automation"  # type: ignore[arg-type]


def test_an_unfurler_that_also_says_bot_is_a_preview_not_a_crawler() -> None:
    assert ua_kind("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)") == (
        "preview"
    )


def test_ua_parser_spider_family_is_a_crawler_only_with_the_parsed_info(
    parser: UserAgentParser,
) -> None:
    ua = "Xenu Link Sleuth/1.3.8"  # none of our patterns names it; ua-parser's do
    assert ua_kind(ua) is None
    assert classify(ua, None, is_head=False, is_prefetch=False) is None
    assert classify(ua, parser.parse(ua), is_head=False, is_prefetch=False) == "crawler"


def _documented_kinds() -> list[str]:
    """The kinds geo/bots.py's opening comment defines, in the order it lists them."""
    text = (REPO / "geo" / "bots.py").read_text()
    section = text.split('# What "kind" means', 1)[1].split("from __future__", 1)[0]
    return re.findall(r"^#   ([a-z]+) {2,}", section, re.M)


def test_every_kind_is_documented_and_given_to_some_click(parser: UserAgentParser) -> None:
    """BOT_KINDS against what classify really answers over the real strings above, HEAD and
    prefetch, and against the two places that document the kinds."""
    answered = {
        classify(ua, parser.parse(ua), is_head=False, is_prefetch=False)
        for uas in BOTS_BY_KIND.values()
        for ua in uas
    }
    answered |= {
        classify(CHROME, None, is_head=True, is_prefetch=False),
        classify(CHROME, None, is_head=False, is_prefetch=True),
    }
    assert answered == set(BOT_KINDS)
    assert sorted(_documented_kinds()) == sorted(BOT_KINDS)
    architecture = (REPO / "docs" / "architecture.md").read_text()
    listed = re.search(r"bots +bot kinds: (.+)", architecture)
    assert listed is not None and listed.group(1).split(", ") == list(BOT_KINDS)


@given(st.text(max_size=400), st.booleans(), st.booleans())
def test_classify_of_any_text_is_prefetch_then_head_then_the_strings_kind(
    ua: str, is_head: bool, is_prefetch: bool
) -> None:
    kind = classify(ua, None, is_head=is_head, is_prefetch=is_prefetch)
    expected = "prefetch" if is_prefetch else "head" if is_head else ua_kind(ua)
    assert kind == expected
    # the string's kind ignores case, and any agent that calls itself a bot is one
    assert ua_kind(ua.lower()) == ua_kind(ua)
    assert ua_kind(ua + " (compatible; ExampleBot/1.0)") is not None
    if not ua.strip():
        assert ua_kind(ua) == "automation"


# -- false positives on uap-core's browser cases -------------------------------------------

# Families whose cases are people browsing: mainstream browsers and the in-app browsers
# of the social apps short links are shared on.
MAINSTREAM_BROWSER_FAMILIES = frozenset(
    {
        "Chrome",
        "Chrome Mobile",
        "Chrome Mobile iOS",
        "Chrome Mobile WebView",
        "Chromium",
        "Firefox",
        "Firefox Beta",
        "Firefox Mobile",
        "Firefox iOS",
        "Safari",
        "Mobile Safari",
        "Mobile Safari UI/WKWebView",
        "Edge",
        "Edge Mobile",
        "IE",
        "IE Mobile",
        "Opera",
        "Opera GX",
        "Opera Mini",
        "Opera Mobile",
        "Opera Touch",
        "Opera Tablet",
        "Opera Coast",
        "Opera Neon",
        "Samsung Internet",
        "UC Browser",
        "Yandex Browser",
        "Brave",
        "Vivaldi",
        "Amazon Silk",
        "Android",
        "Whale",
        "Coc Coc",
        "Huawei Browser",
        "MiuiBrowser",
        "DuckDuckGo Mobile",
        "QQ Browser",
        "QQ Browser Mobile",
        "Puffin",
        "Maxthon",
        "Pale Moon",
        "Waterfox",
        "Baidu Browser",
        "360 Secure Browser",
        "Seznam prohlížeč",
        "Avast Secure Browser",
        "Aloha Browser",
        "Honor Browser",
        "HeyTap Browser",
        "VivoBrowser",
        "Mint Browser",
        "MullvadBrowser",
        "Facebook",
        "Facebook Messenger",
        "Instagram",
        "Pinterest",
        "Twitter",
        "LINE",
        "WeChat Browser",
        "Snapchat",
        "TikTok",
        "KakaoTalk",
        "Telegram",
        "Weibo",
    }
)

# Cases in those families whose strings name an automated fetcher: they are bots even
# though uap-core files them under the browser they imitate. Each is a bot by name.
SELF_IDENTIFIED_AGENTS = {
    # Google's page renderer for previews, built on Chrome
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; Google Web Preview)"
    " Chrome/27.0 .1453 Safari/537.36.",
    # Pinterest's fetcher (the app says "[Pinterest/iOS]" or "Pinterest for Android")
    "Pinterest/0.1",
    "Pinterest/0.2 (+http://www.pinterest.com/)",
}

# The bound on the false-positive rate is zero: the patterns name agents that identify
# themselves, so a single human case labelled a bot means a pattern guesses, and that
# pattern is fixed rather than tolerated. (The self-identified agents above are bots by
# their own words and are counted as caught, not as false positives.)
MAX_FALSE_POSITIVE_RATE = 0.0


@needs_uap
def test_mainstream_browser_cases_are_never_labelled_bots(
    parser: UserAgentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [c for c in load_uap_cases("test_ua") if c["family"] in MAINSTREAM_BROWSER_FAMILIES]
    present = {c["family"] for c in cases}
    assert present == MAINSTREAM_BROWSER_FAMILIES, "a family name above is misspelt"
    labelled = {
        c["user_agent_string"]: (c["family"], kind)
        for c in cases
        if (
            kind := classify(
                c["user_agent_string"],
                parser.parse(c["user_agent_string"]),
                is_head=False,
                is_prefetch=False,
            )
        )
        is not None
    }
    misclassified = {ua: got for ua, got in labelled.items() if ua not in SELF_IDENTIFIED_AGENTS}
    humans = len(cases) - len(SELF_IDENTIFIED_AGENTS)
    with capsys.disabled():
        print(
            f"\nbot false positives on uap-core mainstream browser cases: "
            f"{len(misclassified)}/{humans} = {len(misclassified) / humans:.2%} "
            f"(with the self-identified agents: {len(labelled)}/{len(cases)} = "
            f"{len(labelled) / len(cases):.2%})"
        )
    assert misclassified == {}
    assert len(misclassified) / humans <= MAX_FALSE_POSITIVE_RATE
    assert set(labelled) == SELF_IDENTIFIED_AGENTS  # each is caught as the bot it is


# A browser engine token, for the device cases below: strings with one are browsers.
_BROWSER = re.compile(r"^Mozilla/.*(?:AppleWebKit/|Gecko/|Presto/|Trident/)")


@needs_uap
def test_browser_strings_of_uap_core_devices_are_never_labelled_bots() -> None:
    cases = [
        c["user_agent_string"]
        for c in load_uap_cases("test_device")
        if c["family"] != "Spider" and _BROWSER.match(c["user_agent_string"])
    ]
    assert len(cases) > 5000
    assert [ua for ua in cases if ua_kind(ua) is not None] == []
