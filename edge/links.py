"""The in-memory link table: (host, slug) -> Link, with each link's response bytes prebuilt.

Rules:
- The table is built from SQLite rows (edge/catalog.py) and updated in place from the rows
  that changed; unchanged links are never rebuilt.
- Each Link carries the bytes of its answer (status line, Location, Cache-Control,
  Content-Length) built once when it loads. The server only appends the Date line.
- Lookups take the raw Host header and path bytes from the parser: the host is normalised
  once per distinct raw value and remembered (a malformed one reaches no domain); slugs
  are bytes keys. A domain with case_insensitive_slugs also holds its entries by
  lowercased slug, folded once when each link loads; only a lookup that missed the exact
  slug asks it, so exact domains pay nothing.
- A visit with a query string gets its Location merged per request (unavoidable); a visit
  without one uses the prebuilt bytes.
- One path: `LinkTable.answer(req, now)` decides every GET/HEAD answer (redirect, 404,
  410, fallbacks, robots.txt); the server adds Date, Connection and the body, and
  captures the click when the answer carries a link id.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes

import orjson

from edge.capture import FLAG_LIMITED, FLAG_TEST
from edge.facts import FactCache
from edge.http import Request, response_head, status_line
from edge.rules import (
    OVERFLOW,
    VARIANT_BASE,
    compile_when,
    cumulative_weights,
    first_match,
    pick_variant,
)
from edge.urls import ipv6_literal, merge_query, split_url, with_params

UTM_FIELDS: Final = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
DEFAULT_CLICK_ID_PARAM: Final = "lc"


def _NO_IP() -> str:
    return ""


HOST_CACHE_SIZE: Final = 4096  # distinct raw Host values remembered (ports, case variants)
_FAVICON: Final = b"/favicon.ico"
_ROBOTS: Final = b"/robots.txt"

NOT_FOUND_BODY: Final = b"Not Found\n"
GONE_BODY: Final = b"This link is no longer available.\n"
ROBOTS_BODY: Final = b"User-agent: *\nDisallow: /\n"


def cache_control(max_age_s: int) -> str:
    # Not cached by default so that every repeat click reaches us (a cached 301 makes
    # clicks vanish from the stats, a common complaint about other shorteners).
    return "private, max-age=" + str(max_age_s) if max_age_s > 0 else "private, no-store"


_NO_STORE_TAIL: Final = b"\r\nCache-Control: private, no-store\r\nContent-Length: 0\r\n"


def redirect_head(status: int, location: str, max_age_s: int = 0) -> bytes:
    """Status line, Location, Cache-Control, Content-Length (no Date, no blank line).

    Built by concatenation: a million of these are made when the links load."""
    tail = (
        _NO_STORE_TAIL
        if max_age_s <= 0
        else f"\r\nCache-Control: {cache_control(max_age_s)}\r\nContent-Length: 0\r\n".encode()
    )
    return _REDIRECT_LINES[status] + location.encode("ascii") + tail


_REDIRECT_LINES: Final = {
    status: status_line(status) + b"Location: " for status in (301, 302, 303, 307, 308)
}


def body_head(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    return response_head(
        status,
        [
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("Content-Length", str(len(body))),
        ],
    )


NOT_FOUND_HEAD: Final = body_head(404, NOT_FOUND_BODY)
GONE_HEAD: Final = body_head(410, GONE_BODY)
ROBOTS_HEAD: Final = response_head(
    200,
    [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Cache-Control", "public, max-age=86400"),
        ("Content-Length", str(len(ROBOTS_BODY))),
    ],
)


# Link.flags bits: the per-link switches the hot path reads, packed into one int.
FORWARD_QUERY: Final = 1
REQUEST_WINS: Final = 2
DISABLED: Final = 4


class Link:
    """A servable link, kept small (a million of them must fit a small VPS): its prebuilt
    response head for a visit without a query, and what the rarer paths need. The
    Location, the destination's query pairs and the slug as text are derived on demand."""

    __slots__ = (
        "id",
        "domain_id",
        "key",
        "status",
        "head",
        "flags",
        "expires_at_s",
        "expired_head",
        "routes",
    )

    def __init__(self, row: sqlite3.Row) -> None:
        self.id: int = row["id"]
        self.domain_id: int = row["domain_id"]
        self.key: bytes = row["slug"].encode()  # the slug as the edge looks it up
        self.status: int = row["status"]
        # Written with the link (catalog.link_location): destination + the link's UTM tags.
        location: str = row["location"]
        max_age_s: int = row["cache_max_age_s"]
        self.head: bytes = redirect_head(self.status, location, max_age_s)
        self.flags: int = (
            (FORWARD_QUERY if row["forward_query"] else 0)
            | (REQUEST_WINS if row["query_precedence"] == "request" else 0)
            | (DISABLED if row["disabled"] else 0)
        )
        expires = row["expires_at"]
        self.expires_at_s: float | None = expires / 1000 if expires is not None else None
        expired_url = row["expired_url"]
        # None: an expired link answers 410 Gone.
        self.expired_head: bytes | None = redirect_head(302, expired_url) if expired_url else None
        self.routes: Routes | None = Routes(row, location) if Routes.wanted(row) else None

    @property
    def slug(self) -> str:
        return self.key.decode()

    @property
    def disabled(self) -> bool:
        return bool(self.flags & DISABLED)

    @property
    def location(self) -> str:
        """The Location of a visit without a query, read back from the prebuilt head."""
        start = self.head.index(b"\r\nLocation: ") + 12
        return self.head[start : self.head.index(b"\r\n", start)].decode("ascii")

    @property
    def max_age_s(self) -> int:
        marker = b"max-age="
        at = self.head.find(marker)
        return 0 if at < 0 else int(self.head[at + 8 : self.head.index(b"\r\n", at)])

    def head_for_query(self, query: bytes) -> bytes:
        """The response head for a visit that carried `?query` on the short URL."""
        if not self.flags & FORWARD_QUERY:
            return self.head
        return redirect_head(self.status, self.merged(self.location, query), self.max_age_s)

    def merged(self, location: str, query: bytes) -> str:
        """`location` with the visit's `?query` merged in as this link says."""
        if not query or not self.flags & FORWARD_QUERY:
            return location
        base, pairs, fragment = split_url(location)
        return merge_query(
            base, pairs, fragment, query.decode("ascii"), bool(self.flags & REQUEST_WINS)
        )


class Routes:
    """What a routed link adds to a Link: its rules (compiled), variants, click limit,
    click ids. Built when the link loads; evaluated by LinkTable.answer per request."""

    __slots__ = (
        "rules",
        "targets",
        "weights",
        "variant_targets",
        "limited",
        "overflow_head",
        "click_id_param",
        "heads",
        "reads",
        "key_of",
    )

    @staticmethod
    def wanted(row: sqlite3.Row) -> bool:
        return bool(row["rules"] or row["variants"] or row["max_clicks"] or row["click_ids"])

    def __init__(self, row: sqlite3.Row, location: str) -> None:
        status = int(row["status"])
        max_age_s = int(row["cache_max_age_s"])
        utm = [(f, row[f]) for f in UTM_FIELDS if row[f]]  # a link's tags go everywhere

        def tagged(url: str) -> str:
            return with_params(url, utm) if utm else url

        rules = orjson.loads(row["rules"]) if row["rules"] else []
        self.rules = tuple(compile_when(r["when"]) for r in rules)
        self.targets = tuple((int(r["status"]), tagged(r["url"])) for r in rules)
        variants = orjson.loads(row["variants"]) if row["variants"] else []
        self.weights = cumulative_weights(variants) if variants else ()
        self.variant_targets = tuple(tagged(v["url"]) for v in variants)
        self.limited = bool(row["max_clicks"])
        overflow = row["overflow_url"]
        # None: a link past its click limit answers 410 Gone (without an overflow URL)
        self.overflow_head = redirect_head(302, overflow) if overflow else None
        self.click_id_param = (
            (row["click_id_param"] or DEFAULT_CLICK_ID_PARAM) if row["click_ids"] else None
        )
        # The head of each route for a visit without a query, built once: route index ->
        # head (a visit with a query, or a click id, builds its own).
        heads = {0: redirect_head(status, location, max_age_s)}
        for i, (rule_status, url) in enumerate(self.targets):
            heads[i + 1] = redirect_head(rule_status, url, max_age_s)
        for i, url in enumerate(self.variant_targets):
            heads[VARIANT_BASE + i] = redirect_head(status, url, max_age_s)
        self.heads = heads
        # What of a request the rules read (a decision memo's key), or None when a rule
        # reads the clock (its answer changes with time alone).
        self.reads = _rule_inputs(rules)
        self.key_of = decision_key(self.reads) if self.reads is not None else None


# Request inputs a rule condition depends on (LinkTable's decision memo keys on these).
_INPUT_OF_CONDITION: Final = {
    "device": "ua",
    "os": "ua",
    "browser": "ua",
    "country": "ip",
    "language": "lang",
    "referrer_source": "ref",
    "referrer_host": "ref",
    "query": "query",
}
_INPUT_ORDER: Final = ("ua", "ip", "lang", "ref", "query")


def _rule_inputs(rules: list[dict[str, Any]]) -> tuple[str, ...] | None:
    needed: set[str] = set()
    for rule in rules:
        for condition in rule["when"]:
            if condition == "time":
                return None
            needed.add(_INPUT_OF_CONDITION[condition])
    return tuple(name for name in _INPUT_ORDER if name in needed)


class Routing(Protocol):
    """What routed links need from the process serving them (edge/worker.py gives the
    real one: leases from the collector, the day's visitor-id salt)."""

    facts: FactCache

    def visitor(self, ip: str, user_agent: bytes, domain_id: int, now: float) -> int:
        """The visitor's id (an unsigned 64-bit int): variants are picked from it."""
        ...

    def take(self, link_id: int) -> bool:
        """One human click of a limited link spends one unit of its budget: True while
        there is budget, False once the limit is reached."""
        ...

    def exhausted(self, link_id: int) -> bool:
        """Whether a limited link is past its limit (without spending)."""
        ...

    def click_id(self, now: float) -> bytes:
        """A new click id: 16 bytes, the time first, then random (unguessable)."""
        ...


class LocalRouting:
    """Routing for one process alone (tools, tests): no budget leases, no salt."""

    def __init__(self, facts: FactCache | None = None) -> None:
        self.facts = facts or FactCache(None)
        self.spent: dict[int, int] = {}
        self.limits: dict[int, int] = {}
        self._key = secrets.token_bytes(16)

    def visitor(self, ip: str, user_agent: bytes, domain_id: int, now: float) -> int:
        digest = hashlib.blake2b(
            ip.encode() + b"\0" + user_agent + b"\0" + b"%d" % domain_id,
            digest_size=8,
            key=self._key,
        ).digest()
        return int.from_bytes(digest, "little")

    def take(self, link_id: int) -> bool:
        if self.exhausted(link_id):
            return False
        self.spent[link_id] = self.spent.get(link_id, 0) + 1
        return True

    def exhausted(self, link_id: int) -> bool:
        limit = self.limits.get(link_id)
        return limit is not None and self.spent.get(link_id, 0) >= limit

    def click_id(self, now: float) -> bytes:
        return new_click_id(now)


def new_click_id(now: float, random_part: bytes | None = None) -> bytes:
    """16 bytes: 6 of Unix milliseconds (the index on clicks grows at its right edge),
    10 random (80 bits: unguessable)."""
    return int(now * 1000).to_bytes(6, "big") + (random_part or secrets.token_bytes(10))


def click_id_text(click_id: bytes) -> str:
    """The click id as it goes into a URL: 22 characters of base64url."""
    return base64.urlsafe_b64encode(click_id).decode("ascii").rstrip("=")


def is_servable(row: sqlite3.Row) -> bool:
    return row["archived_at"] is None


# Most links are "plain": a 301/302/303/307/308 to a Location, query forwarded with the
# destination winning, not cached, no expiry, not disabled. The table holds such a link
# as one bytes object, not a Link: its id (4 bytes, little-endian), its status (an index
# into PLAIN_STATUSES) and its Location. A million links then fit ~250 MB less memory;
# the server builds the response head from these parts per request (~0.15 µs).
PLAIN_STATUSES: Final = (301, 302, 303, 307, 308)
PLAIN_LINES: Final = tuple(_REDIRECT_LINES[s] for s in PLAIN_STATUSES)
PLAIN_TAIL: Final = _NO_STORE_TAIL
_PLAIN_INDEX: Final = {s: i for i, s in enumerate(PLAIN_STATUSES)}
_MAX_PLAIN_ID: Final = 2**32 - 1

Entry = bytes | Link  # what a domain's slug dict holds
# head, body, status, link id, domain id, route (edge/rules.py index, or None for a link
# without routes), click id (or None), flags the click gets (capture.FLAG_*)
Answer = tuple[bytes, bytes, int, int, int, int | None, bytes | None, int]


def entry_for(row: sqlite3.Row) -> Entry:
    """The table's entry for a servable link row: plain bytes when it can be, else a Link."""
    link_id: int = row["id"]
    if (
        row["forward_query"]
        and row["query_precedence"] != "request"
        and not row["cache_max_age_s"]
        and not row["disabled"]
        and row["expires_at"] is None
        and row["status"] in _PLAIN_INDEX
        and 0 <= link_id <= _MAX_PLAIN_ID
        and not Routes.wanted(row)
    ):
        return (
            link_id.to_bytes(4, "little")
            + bytes((_PLAIN_INDEX[row["status"]],))
            + str(row["location"]).encode("ascii")
        )
    return Link(row)


def entry_id(entry: Entry) -> int:
    return int.from_bytes(entry[:4], "little") if isinstance(entry, bytes) else entry.id


def plain_head(entry: bytes, query: bytes = b"") -> bytes:
    """A plain entry's response head (without Date), merging a visit's `?query`."""
    status = PLAIN_STATUSES[entry[4]]
    if not query:
        return PLAIN_LINES[entry[4]] + entry[5:] + PLAIN_TAIL
    base, pairs, fragment = split_url(entry[5:].decode("ascii"))
    return redirect_head(status, merge_query(base, pairs, fragment, query.decode("ascii"), False))


class Domain:
    __slots__ = (
        "id",
        "host",
        "is_default",
        "slugs",
        "folded",
        "root_head",
        "fallback_head",
        "click_id_param",
    )

    def __init__(
        self, row: sqlite3.Row, slugs: dict[bytes, Entry], folded: dict[bytes, Entry] | None
    ) -> None:
        self.id: int = row["id"]
        self.host: str = row["host"]
        self.is_default: bool = bool(row["is_default"])
        self.slugs = slugs
        # With case_insensitive_slugs: the same entries keyed by the lowercased slug, asked
        # only when the exact slug misses (None: the domain matches slugs exactly).
        self.folded = folded
        self.root_head: bytes | None = (
            redirect_head(302, row["root_url"]) if row["root_url"] else None
        )
        self.fallback_head: bytes | None = (
            redirect_head(302, row["fallback_url"]) if row["fallback_url"] else None
        )
        # every click on this domain gets a click id (None: only links that ask for one)
        self.click_id_param: str | None = DEFAULT_CLICK_ID_PARAM if row["click_ids"] else None


def normalize_raw_host(raw: bytes) -> str | None:
    """The Host header as a domain key: lowercase, no port, no trailing dot, an IPv6
    literal in its canonical bracketed form (edge/urls.py ipv6_literal, as domains are
    stored); None when it is malformed (`[::1`, `[::1]junk`, `[]`, a port that is not
    digits, a bare IPv6 address): such a request reaches no domain, not even the default.
    The parser has already kept everything but RFC 9110 host characters out."""
    text = raw.decode("ascii", "replace").lower()
    if text.startswith("["):
        end = text.find("]")
        literal = ipv6_literal(text[1:end]) if end > 0 else None
        port = text[end + 1 :] if literal is not None else ""
        if literal is None or (port and (port[0] != ":" or not port[1:].isdigit())):
            return None
        return literal
    name, colon, port = text.partition(":")
    if colon and (":" in port or (port and not port.isdigit())):
        return None
    return name.rstrip(".")


DECISIONS_KEPT: Final = 50_000  # entries of each decision memo (about 15 MB at most)
_UNDECIDED: Final = -2


# The key of a decision: what the link's rules read of the request (and a probe's
# HEAD/prefetch, which makes the device "bot"): equal keys get the same first match.
_KEY_PARTS: Final = {
    "ua": "req.user_agent, req.prefetch or req.method == b'HEAD'",
    "ip": "client_ip()",
    "lang": "req.accept_language",
    "ref": "req.referer",
    "query": "req.query",
}
DecisionKey = Callable[[int, Request, Callable[[], str]], tuple[object, ...]]


@functools.cache
def decision_key(reads: tuple[str, ...]) -> DecisionKey:
    """A function building the key for rules reading `reads`: one tuple display, made
    from the fixed parts above (at most 2^5 such functions exist)."""
    parts = ", ".join(_KEY_PARTS[name] for name in reads)
    fn: DecisionKey = eval(f"lambda link_id, req, client_ip: (link_id, {parts})")  # noqa: S307
    return fn


class LinkTable:
    """All servable links in memory, keyed by domain then slug bytes (entry_for)."""

    def __init__(self, *, unknown_host_404: bool = False) -> None:
        self.unknown_host_404 = unknown_host_404
        # what routed links need of the process (edge/worker.py sets the real one)
        self.routing: Routing = LocalRouting()
        self.limited: set[int] = set()  # ids of links with a click limit
        # Whether some link reads the User-Agent (device rules, A/B tests and limits
        # leave bots out): the worker then builds its UA parser ahead, off its loop.
        self.reads_user_agent = False
        # Decision memos of routed links: which rule a client's requests match, keyed by
        # what the rules read (Routes.reads); which variant a visitor of the day gets.
        # Bounded; cleared when full and whenever a link changes.
        self._decisions: dict[tuple[object, ...], int] = {}
        self._variants: dict[tuple[object, ...], int] = {}
        self.rev = 0
        self._count = 0
        self._slugs: dict[int, dict[bytes, Entry]] = {}
        # Domains with case_insensitive_slugs: their entries by lowercased slug (Domain.folded).
        self._folded: dict[int, dict[bytes, Entry]] = {}
        self._domains: dict[str, Domain] = {}
        self._default: Domain | None = None
        self._host_cache: dict[bytes, Domain | None] = {}

    def __len__(self) -> int:
        return self._count

    def domain_for(self, raw_host: bytes) -> Domain | None:
        """The domain serving a raw Host header value (cached per distinct value)."""
        try:
            return self._host_cache[raw_host]
        except KeyError:
            pass
        key = normalize_raw_host(raw_host)
        domain = None if key is None else self._domains.get(key)
        if domain is None and key is not None and not self.unknown_host_404:
            domain = self._default
        if len(self._host_cache) >= HOST_CACHE_SIZE:
            self._host_cache.clear()
        self._host_cache[raw_host] = domain
        return domain

    def answer(
        self, req: Request, now: float, client_ip: Callable[[], str] = _NO_IP, marks: int = 0
    ) -> Answer:
        """The answer to a GET or HEAD: (head, body, status, link id, domain id, route,
        click id, flags). The head is the status line and headers without Date and the
        blank line (the server appends them, then the body unless HEAD); link id is 0 for
        anything that is not a served redirect (nothing to record). `client_ip` gives the
        client's address when a rule needs its country; `marks` are the capture flags of
        the edge's markers the server took out of the query (FLAG_TEST: spends no budget).
        The edge serves exactly this, and tests call it: one path."""
        domain = self.domain_for(req.host)
        path = req.path
        entry = None
        if domain is not None:
            slugs = domain.slugs
            entry = slugs.get(path[1:])
            if entry is None and path != b"/":
                slug = slug_from_path(path)
                entry = slugs.get(slug)
                # Only a miss pays for case folding, and only on a domain that asked for it.
                if entry is None and domain.folded is not None:
                    entry = domain.folded.get(slug.lower())
        if entry is None:
            if path == _ROBOTS:
                return ROBOTS_HEAD, ROBOTS_BODY, 200, 0, 0, None, None, 0
            if domain is not None and path != _FAVICON:
                fallback = domain.root_head if path == b"/" else domain.fallback_head
                if fallback is not None:
                    return fallback, b"", 302, 0, domain.id, None, None, 0
            return NOT_FOUND_HEAD, NOT_FOUND_BODY, 404, 0, 0, None, None, 0
        assert domain is not None  # an entry was found on it
        if entry.__class__ is bytes and domain.click_id_param is None:
            # a plain link (entry_for): the common case
            plain: bytes = entry
            index = plain[4]
            link_id = int.from_bytes(plain[:4], "little")
            if req.query:
                head = plain_head(plain, req.query)
                return head, b"", PLAIN_STATUSES[index], link_id, domain.id, None, None, 0
            head = PLAIN_LINES[index] + plain[5:] + PLAIN_TAIL
            return head, b"", PLAIN_STATUSES[index], link_id, domain.id, None, None, 0
        if entry.__class__ is bytes:  # plain, on a domain that gives every click an id
            return self._with_click_id(entry, domain, req, now)
        link: Link = entry  # type: ignore[assignment]
        if link.flags & DISABLED:
            return GONE_HEAD, GONE_BODY, 410, 0, domain.id, None, None, 0
        if link.expires_at_s is not None and now >= link.expires_at_s:
            if link.expired_head is None:
                return GONE_HEAD, GONE_BODY, 410, 0, domain.id, None, None, 0
            return link.expired_head, b"", 302, 0, domain.id, None, None, 0
        if link.routes is not None:
            return self._route(link, link.routes, domain, req, now, client_ip, marks)
        if domain.click_id_param is not None:
            return self._routed_head(
                link,
                None,
                domain,
                req,
                now,
                link.status,
                link.location,
                None,
                0,
                domain.click_id_param,
            )
        head = link.head_for_query(req.query) if req.query else link.head
        return head, b"", link.status, link.id, domain.id, None, None, 0

    def _route(
        self,
        link: Link,
        routes: Routes,
        domain: Domain,
        req: Request,
        now: float,
        client_ip: Callable[[], str],
        marks: int,
    ) -> Answer:
        """A routed link: past its click limit the overflow (every human click, whatever
        route serves it, spends one unit of the budget), else the first matching rule,
        else its variant (sticky per visitor), else its own URL."""
        routing = self.routing
        flags = 0
        param = routes.click_id_param or domain.click_id_param
        if routes.limited:
            human = not marks & FLAG_TEST and not routing.facts.is_bot(req)
            if (human and not routing.take(link.id)) or (not human and routing.exhausted(link.id)):
                if routes.overflow_head is None:
                    return GONE_HEAD, GONE_BODY, 410, 0, domain.id, None, None, 0
                return routes.overflow_head, b"", 302, link.id, domain.id, OVERFLOW, None, 0
            if human:
                flags = FLAG_LIMITED
        if routes.rules:
            key_of = routes.key_of
            if key_of is None:  # a rule reads the clock
                i = first_match(routes.rules, routing.facts.facts(req, client_ip, now))
            else:
                key = key_of(link.id, req, client_ip)
                decisions = self._decisions
                i = decisions.get(key, _UNDECIDED)
                if i == _UNDECIDED:
                    i = first_match(routes.rules, routing.facts.facts(req, client_ip, now))
                    if len(decisions) >= DECISIONS_KEPT:
                        decisions.clear()
                    decisions[key] = i
            if i >= 0:
                status, location = routes.targets[i]
                return self._routed_head(
                    link, routes, domain, req, now, status, location, i + 1, flags, param
                )
        if routes.weights:
            if routing.facts.is_bot(req):
                v = 0  # bots always get the first variant (and stats leave them out)
            else:
                ip = client_ip()
                key = (link.id, int(now) // 86400, ip, req.user_agent, domain.id)
                chosen = self._variants.get(key)
                if chosen is None:
                    visitor = routing.visitor(ip, req.user_agent, domain.id, now)
                    chosen = pick_variant(routes.weights, visitor)
                    if len(self._variants) >= DECISIONS_KEPT:
                        self._variants.clear()
                    self._variants[key] = chosen
                v = chosen
            location = routes.variant_targets[v]
            return self._routed_head(
                link,
                routes,
                domain,
                req,
                now,
                link.status,
                location,
                VARIANT_BASE + v,
                flags,
                param,
            )
        return self._routed_head(link, routes, domain, req, now, link.status, None, 0, flags, param)

    def _routed_head(
        self,
        link: Link,
        routes: Routes | None,
        domain: Domain,
        req: Request,
        now: float,
        status: int,
        location: str | None,
        route: int | None,
        flags: int,
        param: str | None,
    ) -> Answer:
        """The redirect of a routed link (or of a plain link on a click-id domain) to
        `location` (None: the link's own)."""
        if param is None and not req.query and routes is not None and route is not None:
            return routes.heads[route], b"", status, link.id, domain.id, route, None, flags
        location = link.merged(link.location if location is None else location, req.query)
        click_id = None
        if param is not None:
            click_id = self.routing.click_id(now)
            location = with_params(location, [(param, click_id_text(click_id))])
        head = redirect_head(status, location, link.max_age_s)
        return head, b"", status, link.id, domain.id, route, click_id, flags

    def _with_click_id(self, plain: bytes, domain: Domain, req: Request, now: float) -> Answer:
        assert domain.click_id_param is not None
        status = PLAIN_STATUSES[plain[4]]
        location = plain[5:].decode("ascii")
        if req.query:
            base, pairs, fragment = split_url(location)
            location = merge_query(base, pairs, fragment, req.query.decode("ascii"), False)
        click_id = self.routing.click_id(now)
        location = with_params(location, [(domain.click_id_param, click_id_text(click_id))])
        link_id = int.from_bytes(plain[:4], "little")
        return redirect_head(status, location), b"", status, link_id, domain.id, None, click_id, 0

    def apply(
        self,
        rev: int,
        links: Iterable[sqlite3.Row],
        purged: Iterable[tuple[int, int | None, str | None]] = (),
        domains: Iterable[sqlite3.Row] | None = None,
    ) -> int:
        """Bring the table up to `rev` from the changed rows and the purged links' (id,
        domain id, slug); return how many links changed. A link's domain and slug never
        change, so its entry is found by them."""
        if domains is not None:
            self._set_domains(domains)
        changed = 0
        for link_id, domain_id, slug in purged:
            if domain_id is not None and slug is not None:
                changed += self._remove(link_id, domain_id, slug.encode())
        slugs_of = self._slugs
        folded_of = self._folded
        for row in links:
            link_id = row["id"]
            domain_id = row["domain_id"]
            key = row["slug"].encode()
            slugs = slugs_of.get(domain_id)
            if slugs is None:
                slugs = slugs_of[domain_id] = {}
            old = slugs.get(key)
            if old is not None and entry_id(old) == link_id:
                del slugs[key]
                self._count -= 1
            entry = entry_for(row) if is_servable(row) else None
            if entry is not None:
                slugs[key] = entry
                self._count += 1
            routes = entry.routes if entry.__class__ is Link else None
            if routes is not None and routes.limited:
                self.limited.add(link_id)
            else:
                self.limited.discard(link_id)
            if routes is not None and (
                routes.limited or routes.weights or routes.reads is None or "ua" in routes.reads
            ):
                self.reads_user_agent = True
            folded = folded_of.get(domain_id)
            if folded is not None:  # the slug is folded once, when its link loads
                _refold(folded, key.lower(), link_id, entry)
            changed += 1
        if changed:
            self._decisions.clear()
            self._variants.clear()
        self.rev = rev
        return changed

    def _remove(self, link_id: int, domain_id: int, key: bytes) -> int:
        slugs = self._slugs.get(domain_id)
        old = None if slugs is None else slugs.get(key)
        if old is None or entry_id(old) != link_id:
            return 0
        assert slugs is not None
        del slugs[key]
        self._count -= 1
        self.limited.discard(link_id)
        folded = self._folded.get(domain_id)
        if folded is not None:
            _refold(folded, key.lower(), link_id, None)
        return 1

    def _set_domains(self, rows: Iterable[sqlite3.Row]) -> None:
        domains: dict[str, Domain] = {}
        default = None
        folded_of: dict[int, dict[bytes, Entry]] = {}
        for row in rows:
            slugs = self._slugs.setdefault(row["id"], {})
            folded = None
            if row["case_insensitive_slugs"]:
                folded = self._folded.get(row["id"])
                if folded is None:  # switched on: fold the domain's slugs once
                    folded = {key.lower(): entry for key, entry in slugs.items()}
                folded_of[row["id"]] = folded
            domain = Domain(row, slugs, folded)
            domains[domain.host] = domain
            if domain.is_default:
                default = domain
        self._folded = folded_of
        self._domains = domains
        self._default = default
        self._host_cache = {}


def _refold(folded: dict[bytes, Entry], key: bytes, link_id: int, entry: Entry | None) -> None:
    """Put a link's entry under its lowercased slug (None: take it away)."""
    old = folded.get(key)
    if old is not None and entry_id(old) == link_id:
        del folded[key]
    if entry is not None:
        folded[key] = entry


def slug_from_path(path: bytes) -> bytes:
    """`/abc`, `/abc/` and `/%61bc` -> b"abc"; the root path gives b""."""
    slug = path[1:]
    if slug[-1:] == b"/":
        slug = slug[:-1]
    if b"%" in slug:
        slug = unquote_to_bytes(slug)
    return slug
