"""edge/urls.py: destination validation, hosts, slugs and query merging."""

from __future__ import annotations

import pytest

from edge.errors import InvalidField, InvalidURL
from edge.urls import (
    MAX_URL_LENGTH,
    generate_slug,
    join_url,
    merge_query,
    normalize_destination,
    normalize_host,
    pair_key,
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


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("  Go.Example.COM.  ", "go.example.com"),
        ("GO.EXAMPLE.BOX", "go.example.box"),
        ("go.example.com.:8443", "go.example.com"),
        ("[2001:DB8::1]", "[2001:db8::1]"),
        ("[2001:DB8::1]:8443", "[2001:db8::1]"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, None),  # 253: the most
    ],
)
def test_a_host_is_normalised_to_what_the_edge_matches(host: str, expected: str | None) -> None:
    assert normalize_host(host) == (expected or host)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("   ", "a domain name is required"),
        ("https://go.example.com", "give a bare host name like go.example.com"),
        ("go.example.com/launch", "give a bare host name like go.example.com"),
        ("[2001:db8::1", "invalid host '[2001:db8::1'"),
        ("go.example.com:http", "invalid port in host 'go.example.com:http'"),
        ("go..example.com", "invalid host name 'go..example.com'"),
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62, "invalid host name"),
        ("xn--.example", "invalid"),
    ],
)
def test_a_bad_host_is_refused_naming_the_field(host: str, message: str) -> None:
    with pytest.raises(InvalidField) as info:
        normalize_host(host, "root_domain")
    assert info.value.message.startswith(message)
    assert (info.value.field, info.value.status) == ("root_domain", 400)


def test_urls_are_split_and_joined_by_their_first_separators() -> None:
    assert join_url("https://example.com/a", [], "#f") == "https://example.com/a#f"
    assert join_url("https://example.com/a", ["x=1", "y"], "") == "https://example.com/a?x=1&y"
    assert split_url("https://example.com/a?") == ("https://example.com/a", [], "")
    assert pair_key("next=a=b") == "next" and pair_key("flag") == "flag"
    base, pairs, frag = split_url("https://example.com/p?next=a=b")
    assert merge_query(base, pairs, frag, "next=c&z=1", False) == (
        "https://example.com/p?next=a=b&z=1"
    )


def test_with_params_encodes_every_reserved_character() -> None:
    out = with_params("https://example.com/", [("utm/content", "a/b?c&d=e")])
    assert out == "https://example.com/?utm%2Fcontent=a%2Fb%3Fc%26d%3De"


def test_a_destination_at_the_length_limit_is_kept_and_one_past_it_refused() -> None:
    head = "https://example.com/"
    url = head + "a" * (MAX_URL_LENGTH - len(head))
    assert normalize_destination(url) == url
    with pytest.raises(InvalidURL):
        normalize_destination(url + "a")
    # the limit holds for the normalised form too: percent-encoding makes it longer
    with pytest.raises(InvalidURL):
        normalize_destination(head + "ü" * (MAX_URL_LENGTH // 6))


def test_a_destination_fragment_keeps_its_reserved_characters() -> None:
    assert normalize_destination("https://example.com/#a#b?c=d&e") == (
        "https://example.com/#a#b?c=d&e"
    )


def test_a_bad_destination_host_is_refused_under_the_callers_field() -> None:
    with pytest.raises(InvalidURL) as info:
        normalize_destination("https://exa_mple..com/", "expired_url")
    assert (info.value.field, info.value.status) == ("expired_url", 422)
