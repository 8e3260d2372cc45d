# geo/referrer: a Referer header -> (host, source) for the clicks table.
#
# Rules of this module:
# - Pure and total: str in, (str | None, str) out; never raises. Cached with a bounded
#   functools.lru_cache (thread-safe) because real traffic repeats a few referrers.
#   A bug that raises inside answers (None, "unknown"), is logged and counted in
#   `errors`, so a test (and an operator) can tell a bug from an unusable Referer.
# - host is the referring host as sent: lowercased, without port, userinfo or trailing
#   dot, "www." kept (it is what the browser sent). None when there is no web host.
# - source is the name stats group by:
#     "direct"     no Referer (typed, bookmarked, from an app or mail client, or stripped
#                  by the referrer policy "no-referrer");
#     a known name for the big sites and their link wrappers ("twitter" for t.co, x.com
#                  and twitter.com, "google" for google.* in any country, ...);
#     "app:<package>" for an Android app referrer (android-app://com.example.app/) we
#                  do not map to a site, "app:<id>" likewise for ios-app://;
#     otherwise the registrable-ish domain without "www." (news.example.co.uk ->
#                  "example.co.uk"; a site on a shared host keeps its own name:
#                  alice.github.io);
#     "unknown"    a Referer was sent but is not an http(s) or app URL with a valid host
#                  (garbage, truncated, "about:blank", "chrome-extension://..."). It is
#                  kept apart from "direct" because the header was there.
# - Registrable domains are approximated without the Public Suffix List (no new
#   dependency): a country-code second level such as co.uk or com.au is recognised by
#   shape, and a short list of shared hosting suffixes keeps the tenant's label.
from __future__ import annotations

import ipaddress
import logging
import re
from functools import lru_cache
from typing import Final
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

# Distinct referrers of a busy link are in the hundreds to thousands (search pages carry
# their query in the URL: each one is distinct, but cheap to recompute).
REFERRER_CACHE_SIZE: Final = 8_192

# Only the head of a Referer matters (scheme and host); browsers cap it at 4 KiB.
MAX_REFERRER_CHARS: Final = 4_096

# Hostnames are at most 253 characters (RFC 1035).
MAX_HOST_CHARS: Final = 253

# Parses that raised (a bug): each answered (None, UNKNOWN). Only ever grows.
errors = 0

DIRECT: Final = "direct"
UNKNOWN: Final = "unknown"
# A scan of the link's QR code (the short URL carried the edge's QR marker): the marker is
# the link owner's own word about the channel, so it wins over whatever Referer came along
# (camera apps send none; an in-app scanner may send its own).
QR: Final = "qr"


def click_source(referrer_source: str, *, scanned: bool) -> str:
    """A click's source: "qr" for a QR scan, else what its Referer says."""
    return QR if scanned else referrer_source


# Exact domains (and their subdomains) -> source. The most specific entry wins:
# mail.google.com is "gmail" before google.* is "google".
_SOURCE_BY_DOMAIN: Final = {
    "t.co": "twitter",
    "twitter.com": "twitter",
    "x.com": "twitter",
    "facebook.com": "facebook",  # l., lm., m., web.facebook.com
    "fb.com": "facebook",
    "fb.me": "facebook",
    "messenger.com": "facebook",
    "instagram.com": "instagram",  # l.instagram.com
    "reddit.com": "reddit",  # out., old., www.reddit.com
    "redd.it": "reddit",
    "lnkd.in": "linkedin",
    "linkedin.com": "linkedin",
    "news.ycombinator.com": "hackernews",
    "bing.com": "bing",
    "duckduckgo.com": "duckduckgo",
    "youtube.com": "youtube",
    "youtu.be": "youtube",
    "mail.google.com": "gmail",
    "outlook.live.com": "outlook",
    "outlook.office.com": "outlook",
    "outlook.office365.com": "outlook",
    "t.me": "telegram",
    "web.telegram.org": "telegram",
    "discord.com": "discord",
    "discordapp.com": "discord",
    "slack.com": "slack",  # app.slack.com and workspaces
    "threads.net": "threads",
    "threads.com": "threads",
    "bsky.app": "bluesky",
    "tiktok.com": "tiktok",
    "pin.it": "pinterest",
    "whatsapp.com": "whatsapp",  # web.whatsapp.com
    "wa.me": "whatsapp",
}

# Brands whose sites live under many country domains: google.de, google.co.uk, ...
_SOURCE_BY_BRAND_ANY_TLD: Final = {
    "google": "google",
    "pinterest": "pinterest",
    "yandex": "yandex",
}

# Second-level labels under a two-letter country code that make a public suffix:
# example.co.uk, example.com.au, example.ne.jp, example.gob.mx.
_COUNTRY_SECOND_LEVELS: Final = frozenset(
    {"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "gob", "nic", "mil", "ltd"}
)

# Shared hosting suffixes whose tenants are separate sites (a short, common subset of the
# Public Suffix List's private section).
_SHARED_HOST_SUFFIXES: Final = frozenset(
    {
        "github.io",
        "gitlab.io",
        "blogspot.com",
        "wordpress.com",
        "substack.com",
        "tumblr.com",
        "medium.com",
        "netlify.app",
        "vercel.app",
        "pages.dev",
        "workers.dev",
        "herokuapp.com",
        "web.app",
        "firebaseapp.com",
        "notion.site",
        "beehiiv.com",
        "ghost.io",
        "carrd.co",
        "wixsite.com",
        "squarespace.com",
        "webflow.io",
    }
)

# Android app referrers (android-app://<package>/) -> source; keys lowercased (Slack's
# package is "com.Slack").
_SOURCE_BY_ANDROID_PACKAGE: Final = {
    "com.twitter.android": "twitter",
    "com.facebook.katana": "facebook",
    "com.facebook.lite": "facebook",
    "com.facebook.orca": "facebook",
    "com.instagram.android": "instagram",
    "com.instagram.barcelona": "threads",
    "com.linkedin.android": "linkedin",
    "com.reddit.frontpage": "reddit",
    "org.telegram.messenger": "telegram",
    "org.telegram.messenger.web": "telegram",
    "org.thunderdog.challegram": "telegram",
    "com.google.android.gm": "gmail",
    "com.slack": "slack",
    "com.discord": "discord",
    "com.google.android.googlequicksearchbox": "google",
    "com.google.android.youtube": "youtube",
    "com.microsoft.office.outlook": "outlook",
    "com.whatsapp": "whatsapp",
    "com.whatsapp.w4b": "whatsapp",
    "com.pinterest": "pinterest",
    "com.zhiliaoapp.musically": "tiktok",
    "com.ss.android.ugc.trill": "tiktok",
    "xyz.blueskyweb.app": "bluesky",
}

_APP_SCHEMES: Final = ("android-app", "ios-app")
_WEB_SCHEMES: Final = ("http", "https")

# A hostname: dot-separated labels of letters (any script), digits, "-" and "_".
_HOST = re.compile(r"[\w-]+(?:\.[\w-]+)*\Z")
# An Android package or an App Store id.
_APP_ID = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*\Z")


@lru_cache(maxsize=REFERRER_CACHE_SIZE)
def parse_referrer(referer: str) -> tuple[str | None, str]:
    """(normalised host or None, source) of a Referer value; never raises."""
    try:
        return _parse(referer)
    except Exception:  # a bug here must not stop the click flusher
        global errors
        errors += 1
        logger.exception("referrer parse failed")
        return None, UNKNOWN


def _parse(referer: str | None) -> tuple[str | None, str]:
    if not referer or not referer.strip():
        return None, DIRECT
    text = referer.strip()[:MAX_REFERRER_CHARS]
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        return None, UNKNOWN
    if scheme in _APP_SCHEMES:
        return None, _app_source(rest)
    if scheme not in _WEB_SCHEMES:
        return None, UNKNOWN
    host = _host_of(text)
    if host is None:
        return None, UNKNOWN
    return host, source_of_host(host)


def _app_source(rest: str) -> str:
    app = rest.split("/", 1)[0].lower()
    if not _APP_ID.match(app):
        return UNKNOWN
    return _SOURCE_BY_ANDROID_PACKAGE.get(app) or f"app:{app}"


def _host_of(url: str) -> str | None:
    """The URL's host, lowercased, without port and trailing dot; None when invalid."""
    try:
        host = urlsplit(url).hostname  # lowercased; userinfo, port and brackets removed
    except ValueError:  # e.g. an unbalanced "[" in the authority
        return None
    if not host:
        return None
    host = host.rstrip(".")
    if ":" in host:  # an IPv6 literal
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    if not host or len(host) > MAX_HOST_CHARS or not _HOST.match(host):
        return None
    return host


def source_of_host(host: str) -> str:
    """The source name of a normalised host (see the module comment)."""
    labels = host.split(".")
    # the most specific known domain first: mail.google.com before google.*
    for i in range(len(labels) - 1):
        source = _SOURCE_BY_DOMAIN.get(".".join(labels[i:]))
        if source is not None:
            return source
    for i, label in enumerate(labels):
        brand = _SOURCE_BY_BRAND_ANY_TLD.get(label)
        if brand is not None and _is_public_suffix(labels[i + 1 :]):
            return brand
    return registrable_domain(host)


def _is_public_suffix(labels: list[str]) -> bool:
    """True for ["de"], ["com"], ["co", "uk"], ["com", "au"]: a TLD or ccTLD second level."""
    if len(labels) == 1:
        return labels[0].isalpha()
    if len(labels) == 2:
        return labels[0] in _COUNTRY_SECOND_LEVELS and len(labels[1]) == 2
    return False


def registrable_domain(host: str) -> str:
    """news.example.co.uk -> example.co.uk; www.example.com -> example.com (approximate)."""
    if host.startswith("www."):
        host = host[4:]
    if ":" in host or host.replace(".", "").isdigit():  # an IP address stays whole
        return host
    labels = host.split(".")
    if len(labels) <= 2:
        return host
    keep = 3 if _is_public_suffix(labels[-2:]) else 2
    if ".".join(labels[-2:]) in _SHARED_HOST_SUFFIXES:
        keep = 3
    return ".".join(labels[-keep:])
