# geo/bots: is a click from a human? If not, what kind of agent made it?
#
# Rules of this module:
# - Pure: str in, str | None out. No I/O, no asyncio, nothing of ours above geo/.
# - A human is never labelled a bot because of a guess. Every pattern names an agent
#   that identifies itself (a product token such as "Googlebot/2.1", "curl/8.4",
#   "UptimeRobot/2.0") or a self-description only automated agents use (a "+http://..."
#   robots page, the words bot/crawler/spider). Tokens that real browsers and in-app
#   browsers also carry are anchored or excluded: see the notes next to okhttp,
#   WhatsApp, Pinterest, LinkedIn, LINE, Snapchat, Sogou and the generic words.
#   tests/test_bots.py measures the false-positive rate over every mainstream browser
#   case in uap-core's test_ua.yaml and holds it at zero.
# - Order decides the kind: prefetch, head, then the user agent's kinds in the order of
#   _KINDS (the most specific first: a link unfurler that also says "bot" is a
#   "preview"), then CrawlerDetect's maintained list of crawlers (the `crawlerdetect`
#   package from PyPI: `pip install -U crawlerdetect` updates it), then ua-parser's
#   "Spider" device family as a last "crawler" signal. The first signal that names the
#   agent decides, and `explain()` says which (Verdict.reason, stored as clicks.bot_reason).
# - Free text is not the agent's word: the Android device model ("Android 7.0; M bot 60
#   Build/..."), Facebook's in-app block ("[FBAN/...;FBCR/OrangeBotswana;...]"),
#   Instagram's device block, the firmware's "Build/..." name and Chromium's network
#   stack name ("Cronet/") are chosen by
#   manufacturers, carriers and app makers. They are masked (mask()) before any pattern
#   or list sees the string.
# - Fast: per kind, one precompiled regex for tokens that must start the string (tried
#   at position 0 only) and one for tokens anywhere. Both run on the lowercased string:
#   in CPython's re, lowercasing once and matching lowercase literals is ~12x faster
#   than re.IGNORECASE over a big alternation, and every "anywhere" alternative starts
#   with a literal character so re can skip ahead with its first-character set. The
#   result sits behind a bounded lru_cache keyed on the exact string (real traffic
#   repeats a few thousand strings). lru_cache is thread-safe: any thread may call.
#
# What "kind" means (the clicks table stores it; stats exclude bots by default):
#   prefetch    the browser fetched the link speculatively (Sec-Purpose/Purpose: prefetch
#               header); the caller decides and passes is_prefetch. A human may follow.
#   head        a HEAD request: link checkers and unfurlers probe with HEAD; browsers
#               never navigate with it.
#   preview     link unfurlers of chat and social apps (Slack, Discord, WhatsApp, ...).
#   monitor     uptime and synthetic monitoring.
#   scanner     mail-security link scanners that name themselves, vulnerability and
#               internet-wide scanners. (Most mail scanners, Microsoft Safe Links
#               included, send a plain browser string: only their network and timing
#               give them away, which is not this module's business.)
#   automation  HTTP libraries, command-line tools, headless browsers, API clients and
#               Office's link probes; also an empty User-Agent: every browser sends
#               one, so an empty or missing header is a script, a health check or a
#               privacy proxy, not a person clicking a link.
#   crawler     search engines, SEO and AI crawlers, archivers, and any agent that calls
#               itself a bot, crawler or spider.
from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Final, NamedTuple

# CrawlerDetect's pattern data (crawlerdetect >=0.4,<0.5, MIT). Its own CrawlerDetect class
# is not used: it matches with re.IGNORECASE (~735 us per browser string) and keeps
# per-call state on the instance. tests/test_bots.py fails if these modules move.
from crawlerdetect.providers.crawlers import data as _CD_CRAWLERS
from crawlerdetect.providers.exclusions import data as _CD_EXCLUSIONS

if TYPE_CHECKING:  # only for the annotation: geo.useragent imports this module
    from geo.useragent import UAInfo

BOT_KINDS: Final = ("crawler", "preview", "prefetch", "monitor", "scanner", "head", "automation")

# Distinct user agents a busy link sees in a day are in the low thousands; 20k entries of
# (str -> short str) cost a few MB and keep the hit rate near 100%.
UA_KIND_CACHE_SIZE: Final = 20_000

# Longer strings are not browsers (the longest in uap-core's browser cases is ~500 chars);
# only this many characters are searched, which bounds the regex time of a hostile header.
MAX_UA_CHARS: Final = 1_024

# Each kind: (tokens that start the string, tokens anywhere). All lowercase regex source.

# Link unfurlers: they fetch a link to draw its card when someone pastes it.
_PREVIEW = (
    (
        # WhatsApp has no in-app browser; its preview fetcher says "WhatsApp/2.23.20.0 A"
        # (and Signal sends the same to get the same previews).
        r"whatsapp/",
        # "Pinterest/0.2 (+http://www.pinterest.com/bot.html)"; the app's in-app browser
        # says "[Pinterest/Android]" or "Pinterest for iOS" and stays human.
        r"pinterest/0\.",
        # Fediverse servers drawing link cards ("Pleroma 2.5.2; https://...").
        r"(?:pleroma|akkoma) \d",
        r"misskey/",
    ),
    (
        r"slackbot",  # "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
        r"slack-imgproxy",
        r"twitterbot",
        r"facebookexternalhit",
        r"facebookcatalog",
        r"facebot",
        r"discordbot",
        r"telegrambot",
        r"linkedinbot",  # not "LinkedInApp", the in-app browser
        r"skypeuripreview",
        r"skype-url-preview",
        r"microsoftpreview/",
        r"pinterestbot",
        r"redditbot",
        r"iframely",
        r"embedly",
        r"vkshare",
        # "http.rb/5.1.1 (Mastodon/4.1.2; +https://mastodon.social/)"; Mastodon's apps
        # open links in the system browser.
        r"\(mastodon/[^;)]*; \+https?://",
        r"bluesky cardyb",
        r"google-pagerenderer",
        r"google web preview",
        r"bingpreview/",
        # Snapchat's unfurler; the in-app browser ("Snapchat/12.x") stays human.
        r"snap url preview service",
        # LINE's unfurler; the in-app browser (" Line/13.x") stays human.
        r"line-poker",
        r"xing-contenttabreceiver",
        r"synapse \(bot;",  # Matrix homeservers
        r"zulipurlpreview",
        r"mattermost-bot",
        r"discourse (?:forum )?onebox",
        r"yahoo link preview",
        r"quora link preview",
        r"bitlybot",
    ),
)

_MONITOR = (
    (
        r"check_http/",  # Nagios plugins
        r"kube-probe/",
    ),
    (
        r"uptimerobot/",
        r"pingdom",  # "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)"
        r"statuscake",
        r"better ?uptime",  # "Better Uptime Bot", "Better Stack Better Uptime Bot"
        r"site24x7",
        r"datadog(?:/| agent/|/synthetics)",
        r"newrelicpinger",
        r"hetrixtools",
        r"uptime-kuma/",
        r"checkly",
        r"freshping",
        r"updown\.io",
        r"ohdear\.app",
        r"uptimebot",
        r"uptimeobserver",
        r"monitis",
        r"catchpoint",
        r"gomezagent",
        r"ruxit synthetic",
        r"yottaamonitor",
        r"zabbix",
        r"googlestackdrivermonitoring",
        r"amazon-route53-health-check",
        r"elb-healthchecker/",
        r"blackbox exporter/",
        r"cloudflare-(?:healthchecks|traffic-manager)",
        r"pulsetic",
        r"nodeping",
        r"sematext synthetics",
        r"chrome-lighthouse",
        r"webpagetest\.org",
        r"gtmetrix",
        r"rackspace monitoring",
    ),
)

_SCANNER = (
    (
        r"sqlmap/",
        r"masscan/",
        r"whatweb/",
        r"tlsprober/",
        r"jaeger_security",
    ),
    (
        # Mail-security link scanners that say who they are.
        r"barracuda",
        r"proofpoint",
        r"mimecast",
        r"ironport",
        r"ciscosecureemail",
        r"cisco secure email",
        r"trendmicro",
        r"trend micro",
        r"forcepoint",
        r"websense",
        r"fortimail",
        r"fortiguard",
        r"google-safety",  # Google's malware check of links in Gmail and Chat
        # Vulnerability and internet-wide scanners.
        r"nessus",
        r"nuclei",
        r"nikto",
        r"zgrab",
        r"censysinspect",
        r"expanse, a palo alto networks company",
        r"internetmeasurement",
        r"wpscan",
        r"acunetix",
        r"netsparker",
        r"qualys",
        r"openvas",
        r"nmap scripting engine",
        r"l9explore",
        r"l9tcpid",
        r"dirbuster",
        r"gobuster",
        r"fuzz faster u fool",
        r"w3af\.",
        r"arachni",
        r"projectdiscovery",  # "httpx - Open-source project (github.com/projectdiscovery/…)"
        r"modatscanner",
        r"webvulncrawl",
    ),
)

_AUTOMATION = (
    (
        r"curl/",
        r"wget",  # "Wget/1.21.4", "wget2/2.1.0"
        r"python/[\d.]+ ",  # "Python/3.11 aiohttp/3.9.1"
        r"go-resty",
        # okhttp is Android's common HTTP library, but a person tapping a link gets a
        # browser or web view, which sends a browser string; a bare "okhttp/4.12.0" is
        # an app or script fetching the URL itself. Anchored: browsers never match.
        r"okhttp/",
        r"java/",
        r"apache-httpclient",
        r"apache-httpasyncclient",
        r"jakarta commons-httpclient",
        r"unirest-java",
        r"reactornetty",
        r"vert\.x-webclient",
        r"akka-http",
        r"lwp::simple",
        r"node$",  # Node's built-in fetch (undici) sends exactly "node"
        r"undici",
        r"axios/",
        r"got(?:/| \()",  # "got (https://github.com/sindresorhus/got)"
        r"node-superagent",
        r"postmanruntime/",
        r"insomnia/",
        r"httpie/",
        r"dart/",
        r"deno/",
        r"bun/",
        r"ruby(?:$|/)",
        r"faraday",
        r"rest-client/",
        r"typhoeus",
        r"guzzlehttp/",
        r"symfony httpclient",
        r"reqwest/",
        r"ureq/",
        r"lua-resty-http",
        r"aria2/",
        r"lftp/",
        r"asynchronous winhttp",
        r"winhttp",
        r"microsoft-cryptoapi/",
        r"aws-sdk-",
        r"aws-cli/",
        r"boto",
        r"rclone/",
        r"minio-go",
        r"powershell/",
        r"fasthttp",
        r"colly",
        r"scalaj-http",
        r"jersey/",
        r"apache-cxf",
        r"microsoft data access internet publishing provider",
    ),
    (
        r"libcurl",
        r"pycurl",
        r"python-requests",
        r"python-urllib",
        r"aiohttp/",
        r"python-httpx",
        r"go-http-client",
        r"google-http-java-client",
        r"libwww-perl",
        r"headlesschrome",
        r"phantomjs",
        r"puppeteer",
        r"playwright",
        r"selenium",
        r"electron-fetch",
        r"node-fetch",
        r"windowspowershell",
        r"httrack",
        # Microsoft Office checks a link before it opens the browser (and Outlook fetches
        # links for previews): "Microsoft Office Existence Discovery", "Microsoft Office
        # Protocol Discovery", "Mozilla/4.0 (compatible; ms-office; MSOffice 16)". The
        # person's browser request follows, so counting this one would count them twice.
        r"microsoft office (?:existence|protocol) discovery",
        r"ms-office",
    ),
)

_CRAWLER = (
    (),
    (
        r"googlebot",
        r"adsbot-google",
        r"mediapartners-google",
        r"apis-google",
        r"feedfetcher-google",
        r"google-inspectiontool",
        r"googleother",
        r"google-extended",
        r"storebot-google",
        r"bingbot",
        r"msnbot",
        r"adidxbot",
        r"yandex(?:bot|images|metrika|accessibilitybot|mobilebot|direct|[a-z]*bot)",
        r"baiduspider",
        r"duckduckbot",
        r"duckassistbot",
        r"applebot",
        r"ahrefs(?:bot|siteaudit)",
        r"semrushbot",
        r"mj12bot",
        r"dotbot",
        r"petalbot",
        r"aspiegelbot",
        r"gptbot",
        r"chatgpt-user",
        r"oai-searchbot",
        r"claudebot",
        r"claude-web",
        r"anthropic-ai",
        r"ccbot",
        r"perplexitybot",
        r"perplexity-user",
        r"bytespider",
        r"amazonbot",
        r"meta-externalagent",
        r"cohere-ai",
        r"diffbot",
        r"seznambot",
        r"exabot",
        r"yeti/",
        r"qwantify",
        r"qwantbot",
        r"mojeekbot",
        r"blexbot",
        r"dataforseobot",
        r"serpstatbot",
        r"barkrowler",
        r"screaming frog",
        r"sitebulb",
        r"ia_archiver",
        r"archive\.org_bot",
        r"heritrix",
        r"nutch",
        r"scrapy",
        r"slurp",
        r"teoma",
        # Generic self-descriptions. Each must end a word, so that it names the agent
        # ("Googlebot", "webcrawler", "Yelpspider") and fires inside no other word
        # ("Crawley", "Spiderweb", "Skyscraper"); "bot" must not be the end of a name
        # phones carry ("CUBOT" is an Android brand: "Android 9; CUBOT P30"; device
        # models are masked anyway). Sogou's spiders ("Sogou web spider/4.0") are caught
        # by "spider"; a bare "sogou" is no pattern because Sogou's browsers say
        # "SogouMobileBrowser" and "SogouMSE".
        r"bot\b(?<!cubot)",
        r"crawl(?:er|ing|s)?\b",
        r"spider\b(?!-man)",  # "Spider-Man" games and apps
        r"scraper\b",
        r"indexer\b",
        r"archiver\b",
        # A URL introduced by "+" (the robots convention: "+http://www.google.com/bot.html").
        r"\+https?://",
    ),
)

# The kinds a user-agent string can name, most specific first.
_KINDS: Final = (
    ("preview", _PREVIEW),
    ("monitor", _MONITOR),
    ("scanner", _SCANNER),
    ("automation", _AUTOMATION),
    ("crawler", _CRAWLER),
)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(patterns)) if patterns else None


_KIND_PATTERNS: Final = tuple(
    (kind, _compile(start), _compile(anywhere)) for kind, (start, anywhere) in _KINDS
)


# --- the maintained list ----------------------------------------------------------------------


def lower_pattern(source: str) -> str:
    """A regex's source for lowercased text: an escape (a backslash and the next
    character) is kept verbatim, so \\S, \\W and \\D keep their meaning; everything else
    is lowercased ([A-Z] becomes [a-z], which is right for lowercased text)."""
    out: list[str] = []
    i = 0
    while i < len(source):
        if source[i] == "\\" and i + 1 < len(source):
            out.append(source[i : i + 2])
            i += 2
        else:
            out.append(source[i].lower())
            i += 1
    return "".join(out)


# The list's semantics, as crawlerdetect applies it: remove the exclusions (browser and app
# tokens that contain crawler words), then search the crawler patterns. Compiled once
# over lowercased text (~0.05 s at import): the same answers as the package's
# case-insensitive matching (tests/test_bots.py compares them), several times faster.
_CD_EXCLUDE: Final = re.compile("|".join(lower_pattern(p) for p in _CD_EXCLUSIONS))
_CD_CRAWLER: Final = re.compile("|".join(lower_pattern(p) for p in _CD_CRAWLERS))

try:
    _CD_VERSION = version("crawlerdetect")
except PackageNotFoundError:  # pragma: no cover - run from a source tree without metadata
    _CD_VERSION = "unknown"

LIST_NAME: Final = "crawlerdetect"
LIST_VERSION: Final = _CD_VERSION
LIST_PATTERNS: Final = len(_CD_CRAWLERS)


def list_info() -> dict[str, str | int]:
    """The crawler list in use, for /healthz, /metrics and `linkedge doctor`."""
    return {"name": LIST_NAME, "version": LIST_VERSION, "patterns": LIST_PATTERNS}


def list_match(text: str) -> str | None:
    """The crawler token CrawlerDetect's list finds in `text` (lowercased, masked), or
    None."""
    agent = _CD_EXCLUDE.sub("", text).strip()
    if not agent:
        return None
    found = _CD_CRAWLER.search(agent)
    return found.group(0) if found is not None else None


# --- free text that is not the agent's word ---------------------------------------------------

# The device model after "Android N;" (and an optional "U;" and language): up to ";" or ")".
# "Build/..." stays (it is no model). Run on lowercased text.
_ANDROID_MODEL: Final = re.compile(
    r"(android[ _]?[\d.]*;(?: ?u;)?(?: [a-z]{2,3}(?:[-_][a-z]{2,4})?;)? ?)([^;)]+?)(?= build/|[;)])"
)
_FB_BLOCK: Final = re.compile(r"\[fb[^\]]*\]?")  # [FBAN/FBIOS;FBAV/...;FBCR/...]
_FB_FIELD: Final = re.compile(r"\bfb(?:cr|dv|md|op|sn|ss|lc|id)/[^;\]]*")
_INSTAGRAM_DEVICE: Final = re.compile(r"(instagram [\d.]+ (?:android|ios) )\([^)]*\)")
_BUILD: Final = re.compile(r" build/[^;)]*")  # a firmware name: "Build/GreenDemon_v1.0"
_CRONET: Final = re.compile(r"cronet/")  # Chromium's network stack in apps, not "cron"
# Desktop apps whose embedded browser a person uses, which the list takes for fetchers:
# "... Slack/4.38.125 Chrome/124.0.6367.243 Electron/30.0.8 ..." (Slack's desktop client).
_PEOPLE_APPS: Final = re.compile(r"\bslack/(?=[\d.]+ chrome/)")


def mask(text: str) -> str:
    """Lowercased `text` with the free-text fields blanked (see the module comment)."""
    if "android" in text:
        text = _ANDROID_MODEL.sub(r"\1model", text)
    if " build/" in text:
        text = _BUILD.sub(" build/x", text)
    if "fb" in text:
        text = _FB_FIELD.sub("fb/x", _FB_BLOCK.sub("[fb]", text))
    if "instagram" in text:
        text = _INSTAGRAM_DEVICE.sub(r"\1(device)", text)
    if "cronet" in text:
        text = _CRONET.sub("chromium-net/", text)
    if "slack/" in text:
        text = _PEOPLE_APPS.sub("slack-desktop/", text)
    return text


# --- the decision -----------------------------------------------------------------------------

# Longest matched text kept in a reason: enough to recognise the signal, bounded for storage.
MAX_REASON_TOKEN_CHARS: Final = 48


# --- the seconds after a launch --------------------------------------------------------------
# Mail-security services follow every link of a message within seconds of its delivery,
# most with a plain browser User-Agent (Microsoft Safe Links, Proofpoint, Mimecast, ...).
# Mail platforms discount clicks that come too soon after the send; linkedge does the
# same with evidence: a click inside the scanner window after its link's launch (the
# collector knows the launch; edge/clicks.py) is a scanner when one more signal says so:
#   - the Referer is a link-rewriting host of a mail-security service;
#   - with an ASN database configured, the client is on a mail scanner's network;
#   - no Accept-Language at all (every browser sends one; scanners' fetchers often don't).
# Outside the window these signals alone label nothing: people behind Outlook or on
# Microsoft's network click links too.
MAIL_REWRITE_HOSTS: Final = (
    "safelinks.protection.outlook.com",
    "urldefense.com",
    "urldefense.proofpoint.com",
    "linkprotect.cudasvc.com",
    "protect-eu.mimecast.com",
    "protect-us.mimecast.com",
    "protect-au.mimecast.com",
    "mimecastprotect.com",
    "secure-web.cisco.com",
    "clicktime.symantec.com",
    "protect2.fireeye.com",
    "link.edgepilot.com",
)
# Autonomous systems the mail-security services scan from (as their operators register
# them): Microsoft, Proofpoint (two), Mimecast, Barracuda, Cisco IronPort.
MAIL_SCANNER_ASNS: Final = frozenset({8075, 22843, 26211, 30031, 15324, 16417})


class Verdict(NamedTuple):
    """Which kind of bot a click is (None: a human) and the signal that decided it:
    "prefetch:header", "head:method", "linkedge:empty", "linkedge:<token>" (this module's
    patterns), "crawlerdetect:<token>" (the maintained list), "ua-parser:spider"."""

    kind: str | None
    reason: str | None


HUMAN: Final = Verdict(None, None)
PREFETCH: Final = Verdict("prefetch", "prefetch:header")
HEAD: Final = Verdict("head", "head:method")
TEST: Final = Verdict("test", "test:marker")  # `?lc_test=1` (edge/links.py)
EMPTY: Final = Verdict("automation", "linkedge:empty")
SPIDER: Final = Verdict("crawler", "ua-parser:spider")


def _text(ua: str) -> str:
    return mask(ua[:MAX_UA_CHARS].strip().lower())


def _own_patterns(text: str) -> Verdict:
    if not text:
        return EMPTY
    for kind, start, anywhere in _KIND_PATTERNS:
        found = start.match(text) if start is not None else None
        if found is None and anywhere is not None:
            found = anywhere.search(text)
        if found is not None:
            return Verdict(kind, "linkedge:" + found.group(0)[:MAX_REASON_TOKEN_CHARS])
    return HUMAN


def pattern_verdict(ua: str) -> Verdict:
    """This module's own patterns only (~20-30 us uncached): the cheap reading a caller
    may use when it has no time for the list (the collector past its parse budget)."""
    return _own_patterns(_text(ua))


@lru_cache(maxsize=UA_KIND_CACHE_SIZE)
def ua_verdict(ua: str) -> Verdict:
    """The verdict on a user-agent string alone: this module's patterns, then the list."""
    text = _text(ua)
    verdict = _own_patterns(text)
    if verdict.kind is not None:
        return verdict
    token = list_match(text)
    if token is not None:
        return Verdict("crawler", "crawlerdetect:" + token[:MAX_REASON_TOKEN_CHARS])
    return HUMAN


def ua_kind(ua: str) -> str | None:
    """The bot kind a user-agent string names, or None.

    Looks at the string only (no request headers, no ua-parser result). An empty or
    blank string is "automation" (see the module comment).
    """
    return ua_verdict(ua).kind


def explain(ua: str, ua_info: UAInfo | None, *, is_head: bool, is_prefetch: bool) -> Verdict:
    """The verdict on one click: its bot kind (None for a human) and the signal that
    decided it. This is the one place that decides whether a click is a bot.

    is_prefetch: the request carried Sec-Purpose/Purpose: prefetch (caller's decision).
    is_head: the request method was HEAD.
    ua_info: the parsed user agent when the caller has it; ua-parser's "Spider" device
    family (UAInfo.spider) makes a crawler of an agent that neither this module's
    patterns nor the list name.
    """
    if is_prefetch:
        return PREFETCH
    if is_head:
        return HEAD
    verdict = ua_verdict(ua or "")  # a missing header may arrive as None
    if verdict.kind is not None:
        return verdict
    if ua_info is not None and ua_info.spider:
        return SPIDER
    return HUMAN


def launch_scanner(
    referrer_host: str | None, has_language: bool, asn: int | None
) -> Verdict | None:
    """The scanner verdict on a human-looking click inside the scanner window after its
    link's launch, or None (see the comment above MAIL_REWRITE_HOSTS)."""
    if referrer_host:
        for host in MAIL_REWRITE_HOSTS:
            if referrer_host == host or referrer_host.endswith("." + host):
                return Verdict("scanner", "launch:referrer:" + host)
    if asn is not None and asn in MAIL_SCANNER_ASNS:
        return Verdict("scanner", f"launch:asn:{asn}")
    if not has_language:
        return Verdict("scanner", "launch:no-accept-language")
    return None


def classify(ua: str, ua_info: UAInfo | None, *, is_head: bool, is_prefetch: bool) -> str | None:
    """The bot kind of one click, or None for a human: explain()'s kind."""
    return explain(ua, ua_info, is_head=is_head, is_prefetch=is_prefetch).kind
