"""edge/urls.py: destination validation, hosts, slugs and query merging."""

from __future__ import annotations

import pytest

from edge.errors import InvalidField, InvalidURL
from edge.urls import (
    generate_slug,
    merge_query,
    normalize_destination,
    normalize_host,
    split_url,
    validate_slug,
    with_params,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com", "https://example.com/"),
        ("HTTPS://Example.COM/Path?q=1#frag", "https://example.com/Path?q=1#frag"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://bücher.example/straße?q=ü", "https://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%BC"),
        ("https://example.com/a%20b", "https://example.com/a%20b"),
        ("https://[2001:db8::1]/x", "https://[2001:db8::1]/x"),
        ("  https://example.com/trim  ", "https://example.com/trim"),
    ],
)
def test_destinations_are_normalised_to_ascii(url: str, expected: str) -> None:
    out = normalize_destination(url)
    assert out == expected
    assert out.isascii()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("javascript:alert(1)", "javascript: URLs are not allowed"),
        ("data:text/html,<b>x</b>", "data: URLs are not allowed"),
        ("file:///etc/passwd", "file: URLs are not allowed"),
        ("/relative/path", "relative URLs are not allowed"),
        ("example.com/page", "relative URLs are not allowed"),
        ("https://example.com/a\r\nSet-Cookie: x=1", "control characters"),
        ("https://example.com/a\nb", "control characters"),
        ("https://example.com/\x00", "control characters"),
        ("https://example.com/a b", "control characters"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://example.com:99999/", "invalid port"),
        ("https:///nohost", "relative URLs"),
        ("ftp://example.com/", "ftp: URLs are not allowed"),
        ("gopher://example.com/", "only http and https"),
        ("", "required"),
        ("https://exa_mple..com/", "invalid host"),
    ],
)
def test_bad_destinations_are_refused_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(InvalidURL) as info:
        normalize_destination(url)
    assert message in info.value.message
    assert info.value.status == 422
    assert info.value.field == "url"


def test_hosts() -> None:
    assert normalize_host("Go.Example.COM.") == "go.example.com"
    assert normalize_host("go.example.com:8080") == "go.example.com"
    assert normalize_host("bücher.example") == "xn--bcher-kva.example"
    for bad in ("", "https://x.com", "a/b", "bad host", "-x.com"):
        with pytest.raises(InvalidField):
            normalize_host(bad)


def test_slugs() -> None:
    assert validate_slug("Launch_2026-a") == "Launch_2026-a"
    for bad in ("", "a" * 65, "a b", "ä", "a/b", "a.b", "favicon.ico"):
        with pytest.raises(InvalidField):
            validate_slug(bad)
    slugs = {generate_slug() for _ in range(1000)}
    assert len(slugs) == 1000
    assert all(len(s) == 7 and s.isalnum() for s in slugs)


def test_with_params_replaces_existing_keys() -> None:
    url = "https://example.com/p?utm_source=old&keep=1#top"
    out = with_params(url, [("utm_source", "news letter"), ("utm_medium", "email")])
    assert out == "https://example.com/p?keep=1&utm_source=news%20letter&utm_medium=email#top"


def test_merge_query_destination_wins_by_default() -> None:
    base, pairs, frag = split_url("https://example.com/p?a=1&b=2#f")
    assert merge_query(base, pairs, frag, "b=9&c=3", False) == "https://example.com/p?a=1&b=2&c=3#f"
    assert merge_query(base, pairs, frag, "b=9&c=3", True) == "https://example.com/p?a=1&b=9&c=3#f"
    assert merge_query(base, pairs, frag, "", False) == "https://example.com/p?a=1&b=2#f"
    base, pairs, frag = split_url("https://example.com/")
    assert merge_query(base, pairs, frag, "x=1&&y", False) == "https://example.com/?x=1&y"


def test_a_lone_surrogate_is_an_invalid_url_not_a_crash() -> None:
    """Found by the fuzzer: non-UTF-8 argv bytes arrive as lone surrogates."""
    with pytest.raises(InvalidURL):
        normalize_destination("https://example.com/\udce9")


@pytest.mark.parametrize(
    "host",
    [
        "[b\r\nSet-Cookie: x]",  # issue 9 defect 6: CR/LF kept up to "]" and echoed in Location
        "[b\nx]",
        "[]",
        "[::1]junk",
        "[::1",
        "[::1]:",
        "[::1]:80x",
        "[::1]x:80",
        "[fe80::1%eth0]",
        "[1.2.3.4]",
        "[gggg::1]",
        "[::1]]",
    ],
)
def test_a_bracketed_host_must_be_exactly_an_ipv6_address(host: str) -> None:
    with pytest.raises(InvalidField) as info:
        normalize_host(host, "host")
    assert info.value.field == "host"
    assert "IPv6" in info.value.message


def test_ipv6_hosts_are_stored_canonical() -> None:
    assert normalize_host("[2001:DB8:0::1]") == "[2001:db8::1]"
    assert normalize_host("[::1]:8080") == "[::1]"
    assert normalize_host(" [0:0:0:0:0:0:0:1] ") == "[::1]"
    assert normalize_destination("https://[2001:DB8:0::1]:8443/x") == "https://[2001:db8::1]:8443/x"
    with pytest.raises(InvalidURL):
        normalize_destination("https://[::1%25eth0]/")
