"""geo/bots.py: real bot strings per kind, and no bot labels on people's browsers."""

from __future__ import annotations

import re

import pytest
from crawlerdetect import CrawlerDetect
from hypothesis import given
from hypothesis import strategies as st

from geo import bots
from geo.bots import BOT_KINDS, classify, explain, list_info, ua_kind
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
    ua = "ZooShot 0.42"  # neither our patterns nor the list name it; ua-parser's do
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
    listed = re.search(r" +bot kinds: (.+)", architecture)
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


# -- the maintained list, the mask, the reasons ---------------------------------------------

# Phones whose model name says "bot" (Matomo's and CrawlerDetect's device fixtures): the
# model is the manufacturer's word, not the agent's.
BOT_NAMED_PHONES = (
    "Mozilla/5.0 (Linux; Android 7.0; M bot 60 Build/NRD90M) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/58.0.3029.83 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 6.0; B BOT 550 Build/MRA58K; wv) AppleWebKit/537.36 (KHTML,"
    " like Gecko) Version/4.0 Chrome/53.0.2785.124 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 6.0; POWER BOT Build/MRA58K) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/54.0.2840.85 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 7.0; ID bot 53+ Build/NRD90M) AppleWebKit/537.36 (KHTML, like"
    " Gecko) Chrome/55.0.2883.91 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 7.0; C Bot Tab 70) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/78.0.3904.108 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Spider 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 4.1.1; MID7022 Build/GreenDemon_v1.0) AppleWebKit/537.36"
    " (KHTML, like Gecko) Chrome/27.0.1453.74 Safari/537.36",
)


@pytest.mark.parametrize("ua", BOT_NAMED_PHONES)
def test_a_phone_whose_model_says_bot_is_a_person(parser: UserAgentParser, ua: str) -> None:
    assert explain(ua, parser.parse(ua), is_head=False, is_prefetch=False) == bots.HUMAN


# Generic words name the agent only when they end a word: inside another word they are
# someone's name ("Crawley", "XBot", "Spiderweb", "Skyscraper").
WORDS_THAT_CONTAIN_BOT_WORDS = (
    "Mozilla/5.0 (Linux; Android 8.1.0; XBot Junior) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/87.0.4280.101 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Mobile/15E148 CrawleyTown/3.2",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Mobile/15E148 Spiderweb/2.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Mobile/15E148 SkyscraperApp/1.4",
)


@pytest.mark.parametrize("ua", WORDS_THAT_CONTAIN_BOT_WORDS)
def test_a_generic_word_inside_another_word_is_no_bot(ua: str) -> None:
    # Our own patterns only: CrawlerDetect's list has generic words of its own
    # ("[a-z0-9\-_]*(bot|crawl|...)"), which are its maintainers' call.
    assert bots.pattern_verdict(ua) == bots.HUMAN


def test_generic_words_that_end_a_word_still_name_bots() -> None:
    for ua, token in (
        ("Mozilla/5.0 (compatible; Yelpspider/1.0)", "spider"),
        ("MyWebCrawler/2.0", "crawler"),
        ("Holmesbot (http://holmes.ge)", "bot"),
        ("some-scraper/0.1", "scraper"),
    ):
        verdict = bots.pattern_verdict(ua)
        assert verdict.kind == "crawler", ua
        assert verdict.reason is not None and verdict.reason.endswith(token), verdict


# Apps people use that the list, as shipped, takes for fetchers.
PEOPLE_APPS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Slack/4.38.125 Chrome/124.0.6367.243 Electron/30.0.8 Safari/537.36 Sonic"
    " Slack_SSB/4.38.125",
    "com.google.android.apps.searchlite/2.0 (Linux; U; Android 10; en_US; SM-A105F;"
    " Build/QP1A.190711.020; Cronet/74.0.3729.136)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 12_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Mobile/16B92 [FBAN/FBIOS;FBDV/iPhone9,3;FBMD/iPhone;FBSN/iOS;FBSV/12.1;FBSS/2;"
    "FBCR/OrangeBotswana;FBID/phone;FBLC/en_US;FBOP/5]",
)


@pytest.mark.parametrize("ua", PEOPLE_APPS)
def test_people_apps_the_list_mistakes_stay_people(ua: str) -> None:
    assert explain(ua, None, is_head=False, is_prefetch=False) == bots.HUMAN


def test_the_list_finds_what_our_patterns_do_not_and_says_so() -> None:
    ua = "Xenu Link Sleuth/1.3.8"
    assert bots.pattern_verdict(ua) == bots.HUMAN
    assert explain(ua, None, is_head=False, is_prefetch=False) == (
        "crawler",
        "crawlerdetect:xenu link sleuth",
    )


def test_every_signal_has_its_reason(parser: UserAgentParser) -> None:
    def verdict(ua: str, head: bool = False, prefetch: bool = False) -> tuple[str | None, ...]:
        return tuple(explain(ua, parser.parse(ua), is_head=head, is_prefetch=prefetch))

    assert verdict(CHROME, prefetch=True) == ("prefetch", "prefetch:header")
    assert verdict(CHROME, head=True) == ("head", "head:method")
    assert verdict("") == ("automation", "linkedge:empty")
    assert verdict("curl/8.4.0") == ("automation", "linkedge:curl/")
    assert verdict("Twitterbot/1.0") == ("preview", "linkedge:twitterbot")
    assert verdict("ZooShot 0.42") == ("crawler", "ua-parser:spider")
    assert verdict(CHROME) == (None, None)


def test_a_reason_is_bounded() -> None:
    ua = "x" * 300 + "bot"
    reason = bots.pattern_verdict(ua).reason
    assert reason is not None and len(reason) <= len("linkedge:") + bots.MAX_REASON_TOKEN_CHARS


def test_the_list_names_its_package_and_version() -> None:
    info = list_info()
    assert info["name"] == "crawlerdetect"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", str(info["version"]))
    assert int(info["patterns"]) > 1000  # the data modules moved or emptied: fail loudly


# The package's own matcher, for the identity check below: what the list says, as shipped.
_PACKAGE = CrawlerDetect()


@needs_uap
def test_the_compiled_list_answers_as_the_package_does() -> None:
    """Our lowercased compilation of the list gives the package's verdict on every
    uap-core string (bots and people alike): only the speed differs."""
    strings = [c["user_agent_string"] for c in load_uap_cases("test_device")][::7]
    strings += [c["user_agent_string"] for c in load_uap_cases("test_ua")][::7]
    differ = [
        ua
        for ua in strings
        if (bots.list_match(ua.strip().lower()) is not None) != _PACKAGE.isCrawler(ua)
    ]
    assert len(strings) > 2000
    assert differ == []
