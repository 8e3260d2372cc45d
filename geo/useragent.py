# geo/useragent: a User-Agent string -> browser, OS, device and device type.
#
# Rules of this module:
# - Pure enrichment: no I/O after construction, no asyncio, nothing of ours above geo/.
# - parse() never raises. Whatever goes wrong inside ua-parser, the caller gets a UAInfo
#   (at worst the "other" one for an empty string) and the error is counted.
# - ua-parser 1.x does the parsing with the fastest resolver installed: "regex" (the Rust
#   ua-parser-rs accelerator, ~11 us a string), then "re2" (google-re2), then "basic"
#   (pure Python re, ~0.35 ms a string: fine for a test, too slow for a busy server, so
#   choosing it logs a warning). With our device and bot tokens an uncached parse costs
#   ~36 us on the Rust resolver (measured over 8k uap-core device strings).
# - Our own LRU sits in front (real traffic repeats a few thousand strings; a hit costs a
#   dict lookup). ua-parser's own CachingResolver is not used: one cache is enough.
# - Thread confinement: the LRU is a plain OrderedDict without a lock. One parser object
#   must be used by one thread at a time (the click flusher's worker thread); build
#   another parser for another thread.
# - Whether an agent is a bot is not decided here: geo.bots.classify does, once, weighing
#   its own patterns and ua-parser's "Spider" device family (UAInfo.spider).
# - Device type is decided from the lowercased string with a few tokens, in this order:
#   other (TVs,
#   consoles, headsets, cars), tablet (iPad, Kindle, "Tablet", Android browsers without
#   "Mobile" -- the convention Google documents for Chrome), mobile ("Mobi", iPhone,
#   iPod, Windows Phone, feature phones, other Android), desktop (Windows, macOS, X11,
#   ChromeOS), else other. iPadOS 13+ Safari sends the macOS string and counts as
#   desktop: nothing in the request tells them apart.
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Final, Literal, NamedTuple

from ua_parser import Domain, Resolver, load_builtins, load_lazy_builtins

from geo.logs import LogLimiter

logger = logging.getLogger(__name__)
_limiter = LogLimiter()  # parse failures: at most one line per interval

# A busy link sees a few thousand distinct strings a day; 20k entries of a short tuple
# cost ~10 MB at most and make the uncached parse (~36 us) rare.
DEFAULT_CACHE_SIZE: Final = 20_000

# Only this many characters are parsed (and cached): the longest real browser string in
# uap-core's tests is ~500 characters; the HTTP layer already caps a header line.
MAX_UA_CHARS: Final = 1_024

ResolverChoice = Literal["auto", "regex", "re2", "basic"]


class UAInfo(NamedTuple):
    browser: str | None
    browser_major: str | None
    os: str | None
    os_major: str | None
    device_brand: str | None
    device_model: str | None
    device_type: str  # one of "desktop", "mobile", "tablet", "other"
    # ua-parser's "Spider" device family: one of the signals geo.bots.classify weighs
    spider: bool = False


EMPTY_UA: Final = UAInfo(None, None, None, None, None, None, "other")

# ua-parser's answer when no rule matched.
_UNKNOWN_FAMILY: Final = "Other"

# Device tokens, matched against the lowercased string: lowercase literals without
# re.IGNORECASE and without a leading \b let re skip ahead by first character (~1 us a
# pattern instead of ~15).
_OTHER_DEVICE = re.compile(
    r"smart-?tv|hbbtv|netcast|web0s|webos[. ]?tv|bravia|roku|apple ?tv|tvos|"
    r"(?:google|android|lg|sony|philips|opera|samsung) ?tv\b|crkey|aft[a-z0-9]{1,6} build|"
    r"viera|aquosbrowser|vewd|espial|playstation|xbox|nintendo|oculusbrowser|quest [0-9]|"
    r"pico [0-9]|qtcarbrowser|tesla/"
)
_TABLET = re.compile(
    r"ipad|tablet(?! pc)|kindle|playbook|kf[a-z]{2,5} build|nexus (?:7|9|10)\b|"
    r"sm-[tpx][0-9]{3}|gt-p[0-9]{4}|xoom|galaxy tab|mediapad|matepad|lenovo tab|mi pad"
)
_MOBILE = re.compile(
    r"mobi|iphone|ipod|windows phone|blackberry|bb10|opera mini|kaios|symbian|series ?60|"
    r"midp|j2me|up\.browser|netfront|nokia|palmos|palmsource|webos"
)
# A browser engine token: Android strings with one of these and without "Mobile" are
# tablet browsers; Android strings without one are apps' HTTP stacks (Dalvik, ...).
_BROWSER_ENGINE = re.compile(r"applewebkit/|gecko/|presto/|trident/")
# ("cros" is not a token here: "microsoft" contains it; ChromeOS strings carry "x11".)
_DESKTOP = re.compile(
    r"windows nt|windows (?:98|95|me|xp)\b|win32|win64|macintosh|x11|freebsd|openbsd"
)
_DESKTOP_OS: Final = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Chrome OS",
        "Fedora",
        "Debian",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Mint",
        "Arch Linux",
        "Gentoo",
        "Red Hat",
        "SUSE",
        "Slackware",
        "Mageia",
        "Kubuntu",
        "Xubuntu",
    }
)


def device_type_of(ua: str, os_family: str | None) -> str:
    """The device type of a non-empty string (see the module comment for the order)."""
    text = ua.lower()
    if _OTHER_DEVICE.search(text):
        return "other"
    if _TABLET.search(text):
        return "tablet"
    if _MOBILE.search(text):
        return "mobile"
    if "android" in text:
        return "tablet" if _BROWSER_ENGINE.search(text) else "mobile"
    if _DESKTOP.search(text) or os_family in _DESKTOP_OS:
        return "desktop"
    return "other"


def _known(value: str | None) -> str | None:
    return None if value is None or value == _UNKNOWN_FAMILY or not value else value


def _make_resolver(choice: ResolverChoice) -> tuple[Resolver, str]:
    if choice in ("auto", "regex"):
        try:
            from ua_parser.regex import Resolver as RegexResolver
        except ImportError:
            if choice == "regex":
                raise
        else:
            return RegexResolver(load_lazy_builtins()), "regex"
    if choice in ("auto", "re2"):
        try:
            from ua_parser.re2 import Resolver as Re2Resolver
        except ImportError:
            if choice == "re2":
                raise
        else:
            return Re2Resolver(load_lazy_builtins()), "re2"
    from ua_parser.basic import Resolver as BasicResolver

    return BasicResolver(load_builtins()), "basic"


class UserAgentParser:
    """ua-parser behind an LRU; one instance per thread (see the module comment)."""

    __slots__ = ("_cache", "_cache_size", "_resolver", "backend", "errors", "hits", "misses")

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE, resolver: ResolverChoice = "auto"):
        """resolver: "auto" picks the fastest installed; naming one forces it (ImportError
        when it is not installed) -- for tests and benchmarks."""
        self._resolver, self.backend = _make_resolver(resolver)
        if self.backend == "basic":
            logger.warning(
                "user-agent parsing uses ua-parser's pure-Python resolver (~30x slower);"
                " install ua-parser[regex] for the Rust accelerator"
            )
        else:
            logger.info("user-agent parsing uses ua-parser's %s resolver", self.backend)
        self._cache: OrderedDict[str, UAInfo] = OrderedDict()
        self._cache_size = max(1, cache_size)
        # statistics
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def parse(self, ua: str) -> UAInfo:
        """Browser, OS, device and device type of ua; never raises."""
        if not ua:  # "" (and None from a careless caller): nothing to parse
            return EMPTY_UA
        try:
            key = ua[:MAX_UA_CHARS]
            cache = self._cache
            info = cache.get(key)
            if info is not None:
                cache.move_to_end(key)
                self.hits += 1
                return info
            self.misses += 1
            info = self._parse_uncached(key)
            cache[key] = info
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
            return info
        except Exception:  # a bug here must not stop the click flusher
            self.errors += 1
            _limiter.log(logger, logging.ERROR, "parse", "user-agent parse failed", exc_info=True)
            return EMPTY_UA

    def _parse_uncached(self, ua: str) -> UAInfo:
        if not ua.strip():
            return EMPTY_UA
        result = self._resolver(ua, Domain.ALL)
        agent, os_, device = result.user_agent, result.os, result.device
        browser = _known(agent.family) if agent else None
        os_family = _known(os_.family) if os_ else None
        has_device = device is not None and _known(device.family) is not None
        spider = device is not None and device.family == "Spider"
        return UAInfo(
            browser=browser,
            browser_major=agent.major if agent and browser else None,
            os=os_family,
            os_major=os_.major if os_ and os_family else None,
            device_brand=device.brand if device and has_device else None,
            device_model=device.model if device and has_device else None,
            device_type=device_type_of(ua, os_family),
            spider=spider,
        )

    def cache_info(self) -> dict[str, int]:
        """Counters for /metrics."""
        return {
            "entries": len(self._cache),
            "max_entries": self._cache_size,
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
        }
