"""geo/referrer.py: Referer header -> (host, source)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo import referrer
from geo.referrer import (
    DIRECT,
    REFERRER_CACHE_SIZE,
    UNKNOWN,
    parse_referrer,
    registrable_domain,
)

MAPPED = str(ipaddress.IPv6Address("::ffff:192.0.2.1"))


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        # wrappers and sites with a known name
        ("https://t.co/", ("t.co", "twitter")),
        ("https://t.co/AbCdEf123", ("t.co", "twitter")),
        ("https://twitter.com/someone/status/1", ("twitter.com", "twitter")),
        ("https://x.com/", ("x.com", "twitter")),
        ("https://mobile.twitter.com/", ("mobile.twitter.com", "twitter")),
        ("https://l.facebook.com/", ("l.facebook.com", "facebook")),
        (
            "https://lm.facebook.com/l.php?u=https%3A%2F%2Fgo.brand.com",
            ("lm.facebook.com", "facebook"),
        ),
        ("https://m.facebook.com/", ("m.facebook.com", "facebook")),
        ("https://www.facebook.com/", ("www.facebook.com", "facebook")),
        ("https://l.instagram.com/", ("l.instagram.com", "instagram")),
        ("https://www.instagram.com/", ("www.instagram.com", "instagram")),
        ("https://out.reddit.com/t3_abc", ("out.reddit.com", "reddit")),
        ("https://old.reddit.com/r/python/", ("old.reddit.com", "reddit")),
        ("https://www.reddit.com/", ("www.reddit.com", "reddit")),
        ("https://lnkd.in/abc", ("lnkd.in", "linkedin")),
        ("https://www.linkedin.com/feed/", ("www.linkedin.com", "linkedin")),
        ("https://news.ycombinator.com/item?id=1", ("news.ycombinator.com", "hackernews")),
        ("https://www.google.com/", ("www.google.com", "google")),
        ("https://www.google.co.uk/", ("www.google.co.uk", "google")),
        ("https://google.de/", ("google.de", "google")),
        ("https://www.google.com.au/search?q=x", ("www.google.com.au", "google")),
        ("https://www.bing.com/search?q=x", ("www.bing.com", "bing")),
        ("https://duckduckgo.com/", ("duckduckgo.com", "duckduckgo")),
        ("https://www.youtube.com/watch?v=x", ("www.youtube.com", "youtube")),
        ("https://m.youtube.com/", ("m.youtube.com", "youtube")),
        ("https://youtu.be/x", ("youtu.be", "youtube")),
        ("https://mail.google.com/mail/u/0/", ("mail.google.com", "gmail")),
        ("https://outlook.live.com/mail/0/", ("outlook.live.com", "outlook")),
        ("https://outlook.office.com/", ("outlook.office.com", "outlook")),
        ("https://t.me/channel/12", ("t.me", "telegram")),
        ("https://web.telegram.org/k/", ("web.telegram.org", "telegram")),
        ("https://discord.com/channels/1/2", ("discord.com", "discord")),
        ("https://app.slack.com/client/T1/C1", ("app.slack.com", "slack")),
        ("https://slack.com/", ("slack.com", "slack")),
        ("https://www.threads.net/@someone", ("www.threads.net", "threads")),
        ("https://bsky.app/profile/someone", ("bsky.app", "bluesky")),
        ("https://www.tiktok.com/", ("www.tiktok.com", "tiktok")),
        ("https://www.pinterest.com/", ("www.pinterest.com", "pinterest")),
        ("https://www.pinterest.co.uk/", ("www.pinterest.co.uk", "pinterest")),
        ("https://pinterest.de/", ("pinterest.de", "pinterest")),
        ("https://web.whatsapp.com/", ("web.whatsapp.com", "whatsapp")),
        ("https://whatsapp.com/", ("whatsapp.com", "whatsapp")),
        # everyone else: the registrable-ish domain without www.
        ("https://www.example.com/blog/post", ("www.example.com", "example.com")),
        ("https://blog.example.com/", ("blog.example.com", "example.com")),
        ("https://news.bbc.co.uk/", ("news.bbc.co.uk", "bbc.co.uk")),
        ("https://www.abc.net.au/news", ("www.abc.net.au", "abc.net.au")),
        ("https://alice.github.io/post", ("alice.github.io", "alice.github.io")),
        ("https://someone.substack.com/p/x", ("someone.substack.com", "someone.substack.com")),
        ("https://google.example.com/", ("google.example.com", "example.com")),
        ("https://localhost/", ("localhost", "localhost")),
        ("http://192.0.2.1/", ("192.0.2.1", "192.0.2.1")),
        ("http://[2001:DB8::1]:8080/x", ("2001:db8::1", "2001:db8::1")),
        # registrable-ish domains: a two-letter TLD without a second level, a brand under
        # a longer suffix, a tenant's subdomain on a shared host
        ("https://news.example.de/", ("news.example.de", "example.de")),
        ("https://www.google.example.co.uk/", ("www.google.example.co.uk", "example.co.uk")),
        ("https://blog.alice.github.io/", ("blog.alice.github.io", "alice.github.io")),
        # an IPv6 literal holding an IPv4 address is one host (dotted from Python 3.13 on)
        ("http://[::ffff:192.0.2.1]/", (MAPPED, MAPPED)),
        # only the first "://" ends the scheme: a URL inside the query is not the referrer
        ("https://example.com/out?to=https://t.co/x", ("example.com", "example.com")),
        # the longest hostname there may be (253 characters)
        (
            "https://" + "a" * 49 + (".b" + "c" * 49) * 4 + "/",
            ("a" * 49 + (".b" + "c" * 49) * 4, "b" + "c" * 49 + ".b" + "c" * 49),
        ),
        # normalisation: case, port, userinfo, trailing dot
        ("HTTPS://WWW.Example.COM:8443/Path", ("www.example.com", "example.com")),
        ("https://user:secret@example.com/", ("example.com", "example.com")),
        ("https://example.com./", ("example.com", "example.com")),
        ("https://example.com?q=1", ("example.com", "example.com")),
        ("  https://example.com/  ", ("example.com", "example.com")),
    ],
)
def test_web_referrers(referer: str, expected: tuple[str | None, str]) -> None:
    assert parse_referrer(referer) == expected


@pytest.mark.parametrize(
    ("referer", "source"),
    [
        ("android-app://com.twitter.android/", "twitter"),
        ("android-app://com.facebook.katana/", "facebook"),
        ("android-app://com.instagram.android/", "instagram"),
        ("android-app://com.linkedin.android/", "linkedin"),
        ("android-app://com.reddit.frontpage/", "reddit"),
        ("android-app://org.telegram.messenger/", "telegram"),
        ("android-app://com.google.android.gm/", "gmail"),
        ("android-app://com.Slack/", "slack"),
        ("android-app://com.discord/", "discord"),
        ("android-app://com.google.android.googlequicksearchbox/", "google"),
        ("android-app://com.google.android.googlequicksearchbox/https/www.google.com", "google"),
        ("android-app://com.example.reader/", "app:com.example.reader"),
        ("ios-app://1234567890/", "app:1234567890"),
    ],
)
def test_app_referrers_have_no_host(referer: str, source: str) -> None:
    assert parse_referrer(referer) == (None, source)


@pytest.mark.parametrize("referer", ["", "   "])
def test_missing_referrer_is_direct(referer: str) -> None:
    assert parse_referrer(referer) == (None, "direct")


@pytest.mark.parametrize(
    "referer",
    [
        "garbage",
        "example.com/page",  # no scheme: browsers always send an absolute URL
        "https://",
        "https:///path",
        "https://exa mple.com/",
        "https://a..b/",
        "https://[zz/",
        "https://[::1",
        "about:blank",
        "chrome-extension://abcdefgh/popup.html",
        "file:///home/someone/page.html",
        "android-app://not a package/",
        "https://" + "a" * 300 + ".com/",
    ],
)
def test_unusable_referrer_is_unknown(referer: str) -> None:
    assert parse_referrer(referer) == (None, "unknown")


def test_registrable_domain_shapes() -> None:
    assert registrable_domain("www.example.com") == "example.com"
    assert registrable_domain("a.b.c.example.org") == "example.org"
    assert registrable_domain("shop.example.com.br") == "example.com.br"
    assert registrable_domain("example.de") == "example.de"
    assert registrable_domain("io") == "io"
    assert registrable_domain("www.github.io") == "github.io"  # "www." goes first


def test_results_are_cached_with_a_bound() -> None:
    parse_referrer.cache_clear()
    parse_referrer("https://t.co/x")
    parse_referrer("https://t.co/x")
    info = parse_referrer.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, REFERRER_CACHE_SIZE)


def test_a_failure_inside_is_counted_and_answers_unknown() -> None:
    errors = referrer.errors
    # raw header bytes instead of text: a caller's bug, which must not reach the flusher
    assert parse_referrer(b"https://t.co/x") == (None, UNKNOWN)  # type: ignore[arg-type]
    assert referrer.errors == errors + 1


def _registrable_or_named(host: str, source: str) -> bool:
    """A web source is a known site's name (no dot) or a domain the host ends with."""
    if "." not in source:
        return source not in (DIRECT, UNKNOWN) and not source.startswith("app:")
    return host == source or host.endswith("." + source)


@given(st.text(max_size=200))
def test_any_text_is_classified_by_its_shape_and_counts_no_error(referer: str) -> None:
    errors = referrer.errors
    host, source = parse_referrer(referer)
    text = referer.strip()
    scheme, sep, _rest = text.partition("://")
    if not text:
        assert (host, source) == (None, DIRECT)
    elif not sep or scheme.lower() not in ("http", "https", "android-app", "ios-app"):
        assert (host, source) == (None, UNKNOWN)
    elif host is None:
        assert source == UNKNOWN or scheme.lower() in ("android-app", "ios-app")
    else:
        assert scheme.lower() in ("http", "https")
        assert ":" in host or host in text.lower()  # IPv6 literals are normalised
        assert _registrable_or_named(host, source)
    assert referrer.errors == errors


_LABEL = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_NAMED_HOSTS = st.sampled_from(
    ["t.co", "www.facebook.com", "mail.google.com", "www.google.co.uk", "old.reddit.com"]
)


@st.composite
def web_referrers(draw: st.DrawFn) -> tuple[str, str]:
    """(a Referer a browser could send, the host parse_referrer must answer)."""
    kind = draw(st.sampled_from(["name", "known", "ipv4", "ipv6"]))
    if kind == "ipv4":
        address = str(draw(st.ip_addresses(v=4)))
        authority, host = address, address
    elif kind == "ipv6":
        address = draw(st.ip_addresses(v=6))
        authority, host = f"[{str(address).upper()}]", str(address)
    else:
        labels = draw(st.lists(_LABEL, min_size=1, max_size=4))
        if kind == "known":
            labels.append(draw(_NAMED_HOSTS))
        authority = ".".join(labels) + draw(st.sampled_from(["", "."]))
        host = ".".join(labels).lower()
    userinfo = draw(st.sampled_from(["", "user@", "user:secret@"]))
    port = draw(st.sampled_from(["", ":443", ":8080"]))
    path = draw(st.sampled_from(["", "/", "/a/b?q=1", "?q=1", "#top"]))
    scheme = draw(st.sampled_from(["http", "https", "HTTPS"]))
    return f"{scheme}://{userinfo}{authority}{port}{path}", host


@given(web_referrers())
def test_any_web_url_gives_its_host_and_a_source_it_ends_with(case: tuple[str, str]) -> None:
    referer, expected_host = case
    errors = referrer.errors
    host, source = parse_referrer(referer)
    assert host == expected_host
    assert _registrable_or_named(host, source)
    if ":" in host or host.replace(".", "").isdigit():
        assert source == host  # an IP address is its own source
    assert referrer.errors == errors


@given(st.from_regex(r"https?://[A-Za-z0-9.-]{1,40}(:[0-9]{1,5})?(/[ -~]{0,40})?", fullmatch=True))
def test_any_http_url_gives_a_lowercase_host_without_port(referer: str) -> None:
    host, source = parse_referrer(referer)
    if host is not None:
        assert host == host.lower()
        assert ":" not in host
        assert source not in ("direct", "unknown")
    else:
        assert source == "unknown"
