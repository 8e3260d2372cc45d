"""Destination URLs, hosts and slugs: validation, normalisation and query merging.

Rules:
- A destination is an absolute http(s) URL. Everything else (javascript:, data:, file:,
  relative URLs, credentials in the URL, control characters) is refused with a message
  that says what to give instead. The result is pure ASCII: IDN hosts become punycode and
  non-ASCII in path/query/fragment is percent-encoded, so it can go into `Location` as is.
- Hosts (domains) are lowercase punycode without a port or a trailing dot.
- Query merging works on the raw `key=value` pairs without decoding them, so nothing is
  re-encoded differently from what the destination or the visitor sent.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from typing import Final
from urllib.parse import quote, urlsplit

from edge.errors import InvalidField, InvalidURL

# Browsers accept far longer URLs, but a Location header over 8 KiB meets proxy limits
# (nginx's default proxy_buffer_size is 4-8 KiB).
MAX_URL_LENGTH: Final = 8000
MAX_SLUG_LENGTH: Final = 64
GENERATED_SLUG_LENGTH: Final = 7  # 62^7 = 3.5e12 slugs: unguessable at any realistic scale
SLUG_ALPHABET: Final = string.ascii_letters + string.digits
SLUG_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Paths served by the edge itself; never slugs.
RESERVED_SLUGS: Final = frozenset({"favicon.ico", "robots.txt"})
_CONTROL_RE: Final = re.compile(r"[\x00-\x20\x7f]")
_REFUSED_SCHEMES: Final = ("javascript", "data", "file", "vbscript", "about", "blob", "ftp")
# Characters left as they are in a path/query/fragment; everything else is percent-encoded
# ("%" is kept so existing escapes survive).
_SAFE_PATH: Final = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY: Final = "/?%:@!$&'()*+,;=-._~"
_HOST_LABEL_RE: Final = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
# What may stand between the brackets of an IPv6 literal (ipaddress then checks the form;
# this keeps CR, LF and everything else that must never reach a header out first).
_IPV6_CHARS_RE: Final = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT_RE: Final = re.compile(r":[0-9]{1,5}")


def generate_slug(length: int = GENERATED_SLUG_LENGTH) -> str:
    return "".join(secrets.choice(SLUG_ALPHABET) for _ in range(length))


def validate_slug(slug: str) -> str:
    if not SLUG_RE.fullmatch(slug):
        raise InvalidField(
            f"invalid slug {slug!r}: use 1-{MAX_SLUG_LENGTH} characters from A-Z a-z 0-9 _ -",
            "slug",
        )
    if slug in RESERVED_SLUGS:
        raise InvalidField(f"slug {slug!r} is reserved", "slug")
    return slug


def normalize_host(host: str, field: str = "domain") -> str:
    """A domain as the edge matches it: lowercase punycode, no port, no trailing dot."""
    text = host.strip()
    if not text:
        raise InvalidField("a domain name is required", field)
    if "://" in text or "/" in text:
        raise InvalidField(f"give a bare host name like go.example.com, not {host!r}", field)
    if text.startswith("["):  # IPv6 literal, maybe with a port
        end = text.find("]")
        literal = ipv6_literal(text[1:end]) if end > 0 else None
        rest = text[end + 1 :] if end > 0 else ""
        if literal is None or not (rest == "" or _PORT_RE.fullmatch(rest)):
            raise InvalidField(
                f"invalid host {host!r}: an IPv6 address goes in brackets, like [2001:db8::1] "
                "or [2001:db8::1]:8080",
                field,
            )
        return literal
    if text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            raise InvalidField(f"invalid port in host {host!r}", field)
    text = text.rstrip(".").lower()
    if text.isascii():
        ascii_host = text
    else:
        try:
            ascii_host = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidField(f"invalid international domain name {host!r}", field) from None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidField(f"invalid host name {host!r}", field)
    return ascii_host


def ipv6_literal(text: str) -> str | None:
    """`2001:DB8:0::1` -> `[2001:db8::1]` (the canonical bracketed form), None when the text
    is not exactly an IPv6 address (zone ids like `%eth0` included: they mean nothing to
    another host)."""
    if not text or not _IPV6_CHARS_RE.fullmatch(text):
        return None
    try:
        return f"[{ipaddress.IPv6Address(text).compressed}]"
    except ValueError:
        return None


def normalize_destination(url: str, field: str = "url") -> str:
    """Validate a destination URL and return its pure-ASCII, normalised form."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("a destination URL is required", field)
    text = url.strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: undecodable bytes from a command line
        raise InvalidURL("the URL is not valid UTF-8 text", field) from None
    if _CONTROL_RE.search(text):
        raise InvalidURL(
            "the URL contains spaces or control characters (CR, LF, TAB, NUL); percent-encode them",
            field,
        )
    if len(text) > MAX_URL_LENGTH:
        raise InvalidURL(f"the URL is longer than {MAX_URL_LENGTH} characters", field)
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise InvalidURL(f"not a valid URL: {exc}", field) from None
    scheme = parts.scheme.lower()
    if scheme in _REFUSED_SCHEMES:
        raise InvalidURL(f"{scheme}: URLs are not allowed; only http and https", field)
    if not scheme or not parts.netloc:
        raise InvalidURL(
            "relative URLs are not allowed: give an absolute URL such as https://example.com/page",
            field,
        )
    if scheme not in ("http", "https"):
        raise InvalidURL(f"{scheme}: URLs are not allowed; only http and https", field)
    if "@" in parts.netloc:
        raise InvalidURL("URLs with a user name or password are not allowed", field)
    try:
        port = parts.port
    except ValueError:
        raise InvalidURL("the URL has an invalid port", field) from None
    hostname = parts.hostname or ""
    if not hostname:
        raise InvalidURL("the URL has no host", field)
    if ":" in hostname:  # IPv6 literal
        literal = ipv6_literal(hostname)
        if literal is None:
            raise InvalidURL(f"the URL's host [{hostname}] is not an IPv6 address", field)
        host = literal
    else:
        try:
            host = normalize_host(hostname, field)
        except InvalidField as exc:
            raise InvalidURL(exc.message, field) from None
    netloc = host if port is None else f"{host}:{port}"
    path = quote(parts.path, safe=_SAFE_PATH) or "/"
    out = f"{scheme}://{netloc}{path}"
    if parts.query:
        out += "?" + quote(parts.query, safe=_SAFE_QUERY)
    if parts.fragment:
        out += "#" + quote(parts.fragment, safe=_SAFE_QUERY + "#")
    if len(out) > MAX_URL_LENGTH:
        raise InvalidURL(f"the URL is longer than {MAX_URL_LENGTH} characters", field)
    return out


def split_url(url: str) -> tuple[str, list[str], str]:
    """(base before '?', raw query pairs, '#fragment' or '') of a normalised URL."""
    base, hash_mark, fragment = url.partition("#")
    base, _, query = base.partition("?")
    pairs = [p for p in query.split("&") if p] if query else []
    return base, pairs, hash_mark + fragment


def join_url(base: str, pairs: list[str], fragment: str) -> str:
    return f"{base}?{'&'.join(pairs)}{fragment}" if pairs else base + fragment


def pair_key(pair: str) -> str:
    return pair.partition("=")[0]


def with_params(url: str, params: list[tuple[str, str]]) -> str:
    """Set each (key, value) in the URL's query, replacing any existing value for that key."""
    base, pairs, fragment = split_url(url)
    keys = {k for k, _ in params}
    kept = [p for p in pairs if pair_key(p) not in keys]
    kept.extend(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    return join_url(base, kept, fragment)


def merge_query(
    base: str, dest_pairs: list[str], fragment: str, request_query: str, request_wins: bool
) -> str:
    """The Location for a visit that carried `?request_query` on the short URL.

    By default the destination's own parameters win a conflict; with `request_wins` the
    visitor's values replace them. The request query was validated by the HTTP parser
    (RFC 3986 characters only), so it is safe to put into a header.
    """
    req_pairs = [p for p in request_query.split("&") if p]
    if not req_pairs:
        return join_url(base, dest_pairs, fragment)
    if request_wins:
        req_keys = {pair_key(p) for p in req_pairs}
        merged = [p for p in dest_pairs if pair_key(p) not in req_keys] + req_pairs
    else:
        dest_keys = {pair_key(p) for p in dest_pairs}
        merged = dest_pairs + [p for p in req_pairs if pair_key(p) not in dest_keys]
    return join_url(base, merged, fragment)


# --- markers the edge takes out of a query ----------------------------------------------------
# A QR code of a short link encodes `https://go.example.com/slug?qr=1` (admin/qr.py), so a
# scan is told apart from a typed or clicked link (Dub's convention); `?lc_test=1` marks a
# test click (an operator trying a link: recorded with bot kind "test", left out of human
# numbers, spending no click budget). The edge takes the pairs out of the request's query
# before anything else sees it: the destination never gets them (query forwarding merges
# the rest as usual), and the click carries FLAG_QR / FLAG_TEST (edge/capture.py).
QR_MARKER: Final = "qr=1"
TEST_MARKER: Final = "lc_test=1"
_QR_PAIR: Final = QR_MARKER.encode("ascii")
_TEST_PAIR: Final = TEST_MARKER.encode("ascii")


def take_pair(query: bytes, pair: bytes) -> tuple[bytes, bool]:
    """(the query without its `pair`s, whether it had one). Cheap when absent."""
    if pair not in query:
        return query, False
    pairs = query.split(b"&")
    kept = [p for p in pairs if p != pair]
    if len(kept) == len(pairs):  # "xqr=1" or "qr=10": not the marker
        return query, False
    return b"&".join(kept), True


def take_qr_marker(query: bytes) -> tuple[bytes, bool]:
    """(the query without its `qr=1` pairs, whether it had one)."""
    return take_pair(query, _QR_PAIR)


def take_test_marker(query: bytes) -> tuple[bytes, bool]:
    """(the query without its `lc_test=1` pairs, whether it had one)."""
    return take_pair(query, _TEST_PAIR)
