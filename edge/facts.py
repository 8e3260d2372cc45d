"""The request facts redirect rules ask for, computed in an edge worker only for links that
need them and cached per client (edge/rules.py Facts evaluates them lazily).

Rules:
- A plain link never gets here: its answer costs nothing of this.
- Each fact has a bounded cache keyed by the raw bytes the parser handed over: the user
  agent (device, OS, browser, bot: ua-parser and geo.bots, the same decision the collector
  makes), the client address (country: GeoIP on the server's shared copy), Accept-Language
  and Referer. A hit is a dict lookup; a miss costs what the lookup costs (ua-parser ~36 µs,
  GeoIP ~6 µs): tests and loadtests/rules.py measure both.
- Caches are cleared when full (cheap; real traffic refills the hot entries at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from edge.http import Request
from edge.rules import Facts
from geo.bots import classify
from geo.geoip import GeoDatabase
from geo.language import primary_language
from geo.referrer import parse_referrer
from geo.useragent import UserAgentParser

CACHE_SIZE: Final = 20_000  # entries per cache
_PLATFORMS: Final = {"iOS": "ios", "iPadOS": "ios", "Android": "android"}

UAFacts = tuple[str, str | None, str | None, str | None, bool]  # device, platform, os, browser, bot


class FactCache:
    """One worker's caches of per-client facts."""

    def __init__(self, geo: GeoDatabase | None) -> None:
        self.geo = geo
        self.ua_parser: UserAgentParser | None = None  # built on the first rule that needs it
        self._ua: dict[bytes, UAFacts] = {}
        self._country: dict[str, str | None] = {}
        self._language: dict[bytes, str | None] = {}
        self._referrer: dict[bytes, tuple[str | None, str]] = {}
        self.misses = 0

    def build_ua_parser(self) -> None:
        """Build the UA parser now (its resolver compiles hundreds of patterns: ~0.1-0.7 s)
        rather than on the first request that needs it; the worker calls this in a thread
        once a link that reads the User-Agent loads."""
        if self.ua_parser is None:
            self.ua_parser = UserAgentParser(cache_size=1)  # this cache is the LRU

    def user_agent(self, raw: bytes) -> UAFacts:
        hit = self._ua.get(raw)
        if hit is not None:
            return hit
        self.misses += 1
        if self.ua_parser is None:
            self.ua_parser = UserAgentParser(cache_size=1)  # this cache is the LRU
        text = raw[:512].decode("utf-8", "replace")
        info = self.ua_parser.parse(text)
        bot = classify(text, info, is_head=False, is_prefetch=False) is not None
        entry = (
            "bot" if bot else info.device_type,
            _PLATFORMS.get(info.os or ""),
            info.os,
            info.browser,
            bot,
        )
        if len(self._ua) >= CACHE_SIZE:
            self._ua.clear()
        self._ua[raw] = entry
        return entry

    def country(self, ip: str) -> str | None:
        if ip in self._country:
            return self._country[ip]
        self.misses += 1
        value = self.geo.lookup(ip).country if self.geo is not None else None
        if len(self._country) >= CACHE_SIZE:
            self._country.clear()
        self._country[ip] = value
        return value

    def language(self, raw: bytes) -> str | None:
        if raw in self._language:
            return self._language[raw]
        value = primary_language(raw.decode("latin-1")) if raw else None
        if len(self._language) >= CACHE_SIZE:
            self._language.clear()
        self._language[raw] = value
        return value

    def referrer(self, raw: bytes) -> tuple[str | None, str]:
        hit = self._referrer.get(raw)
        if hit is not None:
            return hit
        value = parse_referrer(raw.decode("utf-8", "replace") if raw else "")
        if len(self._referrer) >= CACHE_SIZE:
            self._referrer.clear()
        self._referrer[raw] = value
        return value

    def facts(self, req: Request, client_ip: Callable[[], str], now: float) -> Facts:
        """The lazily computed facts of one request (nothing is looked up until a rule
        condition asks)."""
        ua = req.user_agent
        return Facts(
            device=lambda: self._device(ua, req),
            ua=lambda: self.user_agent(ua)[2:4],
            country=lambda: self.country(client_ip()),
            language=lambda: self.language(req.accept_language),
            referrer=lambda: self.referrer(req.referer),
            query=req.query,
            now=now,
        )

    def _device(self, ua: bytes, req: Request) -> tuple[str, str | None]:
        device, platform, _os, _browser, bot = self.user_agent(ua)
        if bot or req.prefetch or req.method == b"HEAD":  # a bot or a probe: no person's
            return "bot", None  # phone, whatever its User-Agent names
        return device, platform

    def is_bot(self, req: Request) -> bool:
        """The worker's reading of "not a person" for limits and A/B tests (the same
        signals the collector labels with: geo.bots.classify, HEAD, prefetch)."""
        if req.prefetch or req.method == b"HEAD":
            return True
        return self.user_agent(req.user_agent)[4]
