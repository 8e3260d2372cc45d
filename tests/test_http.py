"""edge/http.py: the strict request parser, as a pure function of bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.http import (
    MAX_CHUNK_LINE_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADER_COUNT,
    MAX_REQUEST_LINE_BYTES,
    BadRequest,
    BodyReader,
    HeadScanner,
    Request,
    parse_head,
    read_body,
    response_head,
    status_line,
)

SIMPLE = (
    b"GET /launch?utm_source=x HTTP/1.1\r\nHost: go.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\r\n"
    b"Referer: https://t.co/abc\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n"
)


def examples(n: int) -> int:
    """n examples, or a tenth of them under a profile that lowers the default below 100
    (`make mutation`'s profile: each mutant runs these tests)."""
    return n if settings.default.max_examples >= 100 else n // 10


def parse(data: bytes) -> Request:
    result = parse_head(data)
    assert result is not None, "expected a complete head"
    return result[0]


def rejected(data: bytes) -> int:
    with pytest.raises(BadRequest) as info:
        parse_head(data)
    return info.value.status


def test_simple_request_fields() -> None:
    req = parse(SIMPLE)
    assert req.method == b"GET"
    assert req.path == b"/launch"
    assert req.query == b"utm_source=x"
    assert req.host == b"go.example.com"
    assert req.user_agent.startswith(b"Mozilla/5.0")
    assert req.referer == b"https://t.co/abc"
    assert req.accept_language == b"en-US,en;q=0.9"
    assert req.http11 and req.keep_alive
    assert req.content_length is None and not req.chunked
    assert req.header(b"host") == b"go.example.com"


def test_returns_offset_past_head_for_pipelining() -> None:
    data = SIMPLE + b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    first = parse_head(data)
    assert first is not None
    second = parse_head(data, first[1])
    assert second is not None
    assert second[0].path == b"/b"
    assert second[1] == len(data)


def test_incomplete_head_needs_more() -> None:
    assert parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert parse_head(b"") is None
    assert parse_head(b"GE") is None


def test_http10_keep_alive_rules() -> None:
    assert not parse(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert not parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, Upgrade\r\n\r\n").keep_alive


def test_header_names_are_case_insensitive_and_values_trimmed() -> None:
    req = parse(b"GET / HTTP/1.1\r\nHOST:   a.example  \r\nuser-AGENT:\tcurl/8\t\r\n\r\n")
    assert req.host == b"a.example"
    assert req.user_agent == b"curl/8"


def test_prefetch_dnt_gpc_flags() -> None:
    req = parse(
        b"GET / HTTP/1.1\r\nHost: a\r\nSec-Purpose: prefetch;prerender\r\nDNT: 1\r\n"
        b"Sec-GPC: 1\r\n\r\n"
    )
    assert req.prefetch and req.dnt and req.gpc
    assert parse(b"GET / HTTP/1.1\r\nHost: a\r\nPurpose: prefetch\r\n\r\n").prefetch
    plain = parse(b"GET / HTTP/1.1\r\nHost: a\r\nDNT: 0\r\n\r\n")
    assert not plain.prefetch and not plain.dnt and not plain.gpc


def test_absolute_form_target_uses_its_authority() -> None:
    req = parse(b"GET http://go.example.com/abc?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert req.host == b"go.example.com"
    assert req.path == b"/abc"
    assert req.query == b"x=1"


def test_leading_empty_line_is_ignored() -> None:
    assert parse(b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n").path == b"/a"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS ClientHello
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Host headers
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 413),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # whitespace before colon
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),  # NUL
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),  # bare CR
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400),  # control byte
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),  # bare LF line endings
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-\x7fA: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),  # empty name
        (b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTPS/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # double space
        (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /%4 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET abc HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # not origin/absolute form
        (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),  # invalid Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
    ],
)
def test_strict_rejections(data: bytes, status: int) -> None:
    assert rejected(data) == status


def test_request_line_too_long_is_414() -> None:
    data = b"GET /" + b"a" * MAX_REQUEST_LINE_BYTES + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert rejected(data) == 414
    # ...also before the line is complete
    assert rejected(b"GET /" + b"a" * (MAX_REQUEST_LINE_BYTES + 10)) == 414


def test_header_section_too_large_is_431() -> None:
    big = b"X-Big: " + b"v" * 1000 + b"\r\n"
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + big * (MAX_HEAD_BYTES // len(big) + 1)
    assert rejected(data) == 431  # incomplete and already too large
    assert rejected(data + b"\r\n") == 431


def test_too_many_headers_is_431() -> None:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADER_COUNT + 1))
    assert rejected(b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n") == 431


def test_content_length_body_is_read() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET"
    req, end = parse_head(data) or (None, 0)
    assert req is not None and req.content_length == 5
    assert read_body(data, end, req, 100) == (b"hello", end + 5)
    assert read_body(data[: end + 3], end, req, 100) is None
    with pytest.raises(BadRequest) as info:
        read_body(data, end, req, 4)
    assert info.value.status == 413


def test_chunked_body_is_decoded() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    req, end = parse_head(head + body) or (None, 0)
    assert req is not None and req.chunked
    assert read_body(head + body, end, req, 100) == (b"hello world", len(head + body))
    for cut in range(len(head), len(head + body)):
        assert read_body((head + body)[:cut], end, req, 100) is None


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhelloXX0\r\n\r\n",  # data not followed by CRLF
        b"zz\r\nhello\r\n0\r\n\r\n",  # bad size
        b"\r\n",  # empty size
        b"11111111111111111\r\n",  # size overflow
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after size
    ],
)
def test_bad_chunked_framing_is_rejected(body: bytes) -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    req, end = parse_head(head) or (None, 0)
    assert req is not None
    with pytest.raises(BadRequest):
        read_body(head + body, end, req, 1 << 20)


def test_chunked_body_over_limit_is_413() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    req, end = parse_head(head) or (None, 0)
    assert req is not None
    with pytest.raises(BadRequest) as info:
        read_body(head + b"100\r\n" + b"x" * 256 + b"\r\n0\r\n\r\n", end, req, 100)
    assert info.value.status == 413


# --- properties ---------------------------------------------------------------------------


def parse_all(data: bytes) -> str:
    """Any bytes: a request, need-more, or BadRequest; never another exception."""
    try:
        result = parse_head(data)
    except BadRequest as exc:
        assert 400 <= exc.status < 600
        return "bad"
    if result is None:
        return "more"
    req, end = result
    assert 0 < end <= len(data)
    assert isinstance(req.path, bytes)
    return "request"


@settings(max_examples=examples(1500), deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_need_more_or_bad_request(data: bytes) -> None:
    parse_all(data)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)
_path = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_/.~", max_size=30)


@st.composite
def valid_requests(draw: st.DrawFn) -> bytes:
    path = "/" + draw(_path)
    query = draw(st.one_of(st.just(""), _path.map(lambda q: "?" + q.replace("/", "="))))
    headers = draw(
        st.lists(
            st.tuples(_token, _value).filter(
                lambda h: h[0] not in ("host", "content-length", "transfer-encoding", "expect")
            ),
            max_size=8,
        )
    )
    lines = [f"GET {path}{query} HTTP/1.1", "Host: go.example.com"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _summary(req: Request) -> tuple[object, ...]:
    return (req.method, req.path, req.query, req.host, req.headers, req.keep_alive)


@settings(max_examples=examples(300), deadline=None)
@given(valid_requests(), st.lists(st.integers(min_value=0), max_size=6))
def test_valid_request_split_anywhere_parses_like_whole(data: bytes, cuts: list[int]) -> None:
    whole = parse_head(data)
    assert whole is not None
    points = sorted({c % (len(data) + 1) for c in cuts})
    buf = b""
    last = 0
    result = None
    for point in [*points, len(data)]:
        buf += data[last:point]
        last = point
        result = parse_head(buf)
        if point < len(data):
            assert result is None  # a head is complete only when all of it arrived
    assert result is not None
    assert _summary(result[0]) == _summary(whole[0])
    assert result[1] == whole[1] == len(data)


@settings(max_examples=examples(300), deadline=None)
@given(valid_requests(), st.integers(min_value=0), st.binary(min_size=1, max_size=3))
def test_mutated_valid_request_never_crashes(data: bytes, where: int, junk: bytes) -> None:
    i = where % len(data)
    parse_all(data[:i] + junk + data[i + 1 :])


# --- work linear in the bytes received (hardening: the chunk-extension stall) -------------

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def feed_in_pieces(data: bytes, points: list[int], limit: int = 1 << 20) -> tuple[object, ...]:
    """Feed `data` cut at `points` the way the servers do: a HeadScanner over a growing
    buffer, one parse of the head, then a BodyReader fed each new piece. Returns
    (request, body, bytes the scanner and reader examined)."""
    buf = bytearray()
    scanner = HeadScanner()
    reader: BodyReader | None = None
    req: Request | None = None
    last = 0
    for point in [*points, len(data)]:
        piece = data[last:point]
        last = point
        if reader is None:
            buf += piece
            if scanner.advance(buf) < 0:
                continue
            parsed = parse_head(buf)
            assert parsed is not None
            req, end = parsed
            reader = BodyReader(req, limit)
            assert reader.feed(buf, end) <= len(buf)
        else:
            reader.feed(piece)
    assert req is not None and reader is not None and reader.done
    return req, reader.body, scanner.examined + reader.examined


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(wire bytes, decoded body) of a chunked body with extensions and trailers."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=8))
    wire = b""
    for data in chunks:
        ext = draw(st.sampled_from([b"", b";a=1", b';name="v v"', b";x" * 20]))
        wire += b"%x" % len(data) + ext + b"\r\n" + data + b"\r\n"
    trailers = draw(st.lists(st.tuples(_token, _value), max_size=3))
    wire += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
    return wire, b"".join(chunks)


@settings(max_examples=examples(300), deadline=None)
@given(valid_requests(), chunked_bodies(), st.lists(st.integers(min_value=0), max_size=40))
def test_chunked_request_split_anywhere_costs_linear_work(
    head: bytes, body: tuple[bytes, bytes], cuts: list[int]
) -> None:
    data = head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1) + body[0]
    points = sorted({c % (len(data) + 1) for c in cuts})
    req, decoded, examined = feed_in_pieces(data, points)
    whole = parse_head(data)
    assert whole is not None
    assert _summary(req) == _summary(whole[0])  # type: ignore[arg-type]
    assert decoded == body[1]
    # each byte is looked at a bounded number of times, however the input was split
    assert examined <= 2 * len(data) + 8 * (len(points) + 1)


def test_a_head_trickled_a_byte_at_a_time_is_searched_once() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"p" * 15000 + b"\r\n\r\n"
    _req, _body, examined = feed_in_pieces(data, list(range(1, len(data))))
    assert examined <= 4 * len(data)  # the old parser looked at ~len^2/2 = 113M bytes


def test_chunk_extensions_past_the_line_cap_are_refused_at_once() -> None:
    req, end = parse_head(CHUNKED_HEAD) or (None, 0)
    assert req is not None
    reader = BodyReader(req, 1 << 20)
    line = b"1;" + b"e" * MAX_CHUNK_LINE_BYTES
    with pytest.raises(BadRequest) as info:
        for byte in range(len(line)):  # a byte at a time: refused before the line ends
            reader.feed(line[byte : byte + 1])
    assert info.value.status == 400
    assert reader.examined <= MAX_CHUNK_LINE_BYTES + 3


def test_framing_bytes_count_against_the_body_limit() -> None:
    """1-byte chunks with 200-byte extensions: 3 KiB of data is 66 KiB on the wire."""
    req, end = parse_head(CHUNKED_HEAD) or (None, 0)
    assert req is not None
    chunk = b"1;" + b"e" * 200 + b"\r\nx\r\n"
    with pytest.raises(BadRequest) as info:
        read_body(CHUNKED_HEAD + chunk * 330 + b"0\r\n\r\n", end, req, 65536)
    assert info.value.status == 413
    assert "65536" in info.value.message  # the limit is stated
    got = read_body(CHUNKED_HEAD + chunk * 300 + b"0\r\n\r\n", end, req, 65536)
    assert got is not None and got[0] == b"x" * 300


def test_a_chunk_size_past_the_limit_is_refused_before_its_data() -> None:
    req, end = parse_head(CHUNKED_HEAD) or (None, 0)
    assert req is not None
    reader = BodyReader(req, 1000)
    with pytest.raises(BadRequest) as info:
        reader.feed(b"10000\r\n")
    assert info.value.status == 413


def test_a_head_at_the_size_limit_parses_however_it_is_split() -> None:
    """Found by the fuzzer: a head of exactly MAX_HEAD_BYTES was refused (431) when a read
    ended inside its final blank line."""
    line = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: "
    pad = MAX_HEAD_BYTES - len(line) - 2  # parse_head's limit: up to the final CRLFCRLF
    data = line + b"p" * pad + b"\r\n\r\n"
    assert parse_head(data) is not None
    for cut in range(len(data) - 4, len(data)):
        _req, _body, _examined = feed_in_pieces(data, [cut])


def test_every_status_the_parser_refuses_with_has_its_reason_phrase() -> None:
    """417 used to go out as `417 Error`."""
    import re
    from pathlib import Path

    from edge.http import STATUS_REASONS

    source = (Path(__file__).resolve().parents[1] / "edge" / "http.py").read_text()
    statuses = {int(n) for n in re.findall(r"BadRequest\([^)]*?,\s*(\d{3})\)", source)}
    assert {413, 414, 417, 431, 501, 505} <= statuses
    assert statuses <= set(STATUS_REASONS)
    assert rejected(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n") == 417


# --- percent-encoding, limits at their exact values, response bytes -----------------------


def test_percent_encoded_targets_are_kept_as_sent() -> None:
    req = parse(b"GET /%41%62c%2F?q=%20%7e HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (req.path, req.query) == (b"/%41%62c%2F", b"q=%20%7e")


@pytest.mark.parametrize(
    "target",
    [b"/a%4", b"/%41%4", b"/%41%", b"/%4g", b"/%%41", b"/%4g%41", b"/%41%4g%42", b"/ok?x=%2g&y=1"],
)
def test_every_percent_sign_needs_two_hex_digits(target: bytes) -> None:
    assert rejected(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n") == 400


def chunked_reader(limit: int = 1 << 20) -> BodyReader:
    req, _end = parse_head(CHUNKED_HEAD) or (None, 0)
    assert req is not None
    return BodyReader(req, limit)


def test_a_content_length_at_the_limit_is_read_and_one_past_it_refused() -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
    req, end = parse_head(head) or (None, 0)
    assert req is not None
    assert read_body(head + b"hello", end, req, 5) == (b"hello", end + 5)
    with pytest.raises(BadRequest) as info:
        BodyReader(req, 4)
    assert info.value.status == 413


def test_a_chunked_body_exactly_at_the_limit_is_read_and_one_byte_less_refuses_it() -> None:
    wire = b"5\r\nhello\r\n0\r\n\r\n"  # 15 bytes on the wire, framing included
    reader = chunked_reader(len(wire))
    assert reader.feed(wire) == len(wire) and reader.done and reader.body == b"hello"
    assert reader.examined == len(wire)  # each byte looked at once
    with pytest.raises(BadRequest) as info:
        chunked_reader(len(wire) - 1).feed(wire)
    assert info.value.status == 413


def test_a_chunked_body_arriving_in_pieces_reports_what_it_consumed() -> None:
    reader = chunked_reader()
    assert reader.feed(b"1") == 1  # part of a size line: kept, consumed
    assert reader.feed(b"0\r") == 2
    assert reader.feed(b"\nabcdefghijklmnop\r\n0\r\n\r\nGET") == 24  # stops at the next request
    assert reader.done and reader.body == b"abcdefghijklmnop"


def test_a_chunk_size_of_sixteen_hex_digits_is_read() -> None:
    reader = chunked_reader()
    reader.feed(b"000000000000000a\r\n0123456789\r\n0\r\n\r\n")
    assert reader.done and reader.body == b"0123456789"


def test_a_size_line_ended_by_a_bare_lf_is_refused() -> None:
    # read as "1" and a chunk of one byte, this would be a valid body: it must not be
    for body in (b"10\n" + b"x" * 16 + b"\r\n0\r\n\r\n", b"10\nx\r\n0\r\n\r\n"):
        with pytest.raises(BadRequest) as info:
            chunked_reader().feed(body)
        assert (info.value.status, info.value.message) == (400, "bare CR or LF in chunked framing")


def test_a_size_line_of_exactly_the_cap_waits_for_its_end() -> None:
    line = b"1;" + b"e" * (MAX_CHUNK_LINE_BYTES - 2)
    reader = chunked_reader()
    assert reader.feed(line) == len(line)  # MAX_CHUNK_LINE_BYTES bytes, no LF yet: fine
    reader.feed(b"\r\nx\r\n0\r\n\r\n")
    assert reader.done and reader.body == b"x"


def test_a_size_line_past_the_cap_is_refused_after_reading_only_the_cap() -> None:
    for pieces in ([b"1;" + b"e" * 1000 + b"\r\n"], [b"1;" + b"e" * 98, b"e" * 1000 + b"\r\n"]):
        reader = chunked_reader()
        with pytest.raises(BadRequest) as info:
            for piece in pieces:
                reader.feed(piece)
        assert (info.value.status, info.value.message) == (400, "chunk-size line too long")
        assert reader.examined <= MAX_CHUNK_LINE_BYTES + 2  # the cap and a CRLF, no more


def test_trailers_have_the_head_limits_not_the_size_line_cap() -> None:
    long_field = b"X-Long: " + b"v" * 1000 + b"\r\n"  # far past a size line's cap
    fields = b"".join(b"X-T%d: v\r\n" % i for i in range(MAX_HEADER_COUNT - 1))
    reader = chunked_reader()
    reader.feed(b"1\r\nx\r\n0\r\n" + long_field + fields + b"\r\n")
    assert reader.done and reader.body == b"x"
    with pytest.raises(BadRequest) as info:
        chunked_reader().feed(b"0\r\n" + long_field + fields + b"X-Last: v\r\n\r\n")
    assert (info.value.status, info.value.message) == (431, "too many trailer fields")
    with pytest.raises(BadRequest) as info:
        chunked_reader().feed(b"0\r\nX-Huge: " + b"v" * MAX_HEAD_BYTES + b"\r\n\r\n")
    assert (info.value.status, info.value.message) == (431, "trailer line too long")


def test_response_bytes() -> None:
    assert status_line(302) == b"HTTP/1.1 302 Found\r\n"
    assert status_line(417) == b"HTTP/1.1 417 Expectation Failed\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Unknown\r\n"
    head = response_head(200, [("Content-Type", "text/plain"), ("Content-Length", "2")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    with pytest.raises(UnicodeEncodeError):  # values must be ASCII already
        response_head(200, [("X-Name", "café")])
    assert str(BadRequest("bad framing")) == "bad framing"


# --- every field of the parsed head ---------------------------------------------------------


def fields(data: bytes, start: int = 0) -> dict[str, object]:
    """Every slot of the Request parsed from data[start:] (headers aside), and its end."""
    parsed = parse_head(data, start)
    assert parsed is not None
    req, end = parsed
    out: dict[str, object] = {k: getattr(req, k) for k in Request.__slots__ if k != "headers"}
    out["end"] = end
    return out


BASE = b"GET / HTTP/1.1\r\nHost: a\r\n"
DEFAULTS: dict[str, object] = {
    "method": b"GET",
    "target": b"/",
    "path": b"/",
    "query": b"",
    "http11": True,
    "keep_alive": True,
    "host": b"a",
    "user_agent": b"",
    "referer": b"",
    "accept_language": b"",
    "forwarded_for": None,
    "forwarded": None,
    "content_length": None,
    "chunked": False,
    "expect_continue": False,
    "prefetch": False,
    "dnt": False,
    "gpc": False,
}


@pytest.mark.parametrize(
    ("extra", "changed"),
    [
        (b"", {}),
        # repeated fields are joined in order, as one list (RFC 9110 5.3)
        (
            b"X-Forwarded-For: 203.0.113.1\r\nX-Forwarded-For: 198.51.100.2, 10.0.0.1\r\n",
            {"forwarded_for": b"203.0.113.1,198.51.100.2, 10.0.0.1"},
        ),
        (b"Forwarded: for=1\r\nForwarded: for=2\r\n", {"forwarded": b"for=1,for=2"}),
        (b"Connection: keep-alive\r\nConnection: close\r\n", {"keep_alive": False}),
        (b"Connection: keep-alive ,\tclose\r\n", {"keep_alive": False}),
        (b"Connection: upgrade,\tkeep-alive\r\n", {}),
        # flags, whatever the case
        (b"Sec-Purpose: Prerender\r\n", {"prefetch": True}),
        (b"Purpose: PREFETCH\r\n", {"prefetch": True}),
        (b"Sec-Purpose: prefetch-hint\r\n", {"prefetch": True}),
        (b"Purpose: preview\r\n", {}),
        (
            b"Expect: 100-Continue\r\nContent-Length: 3\r\n",
            {"expect_continue": True, "content_length": 3},
        ),
        (b"Content-Length: " + b"9" * 18 + b"\r\n", {"content_length": 10**18 - 1}),
        (
            b"User-Agent: curl/8\r\nReferer: https://t.co/\r\nAccept-Language: de\r\n",
            {"user_agent": b"curl/8", "referer": b"https://t.co/", "accept_language": b"de"},
        ),
    ],
)
def test_every_field_of_the_head(extra: bytes, changed: dict[str, object]) -> None:
    data = BASE + extra + b"\r\n"
    assert fields(data) == {**DEFAULTS, **changed, "end": len(data)}


def test_an_http10_head_without_host_has_an_empty_host() -> None:
    assert fields(b"GET /x HTTP/1.0\r\n\r\n") == {
        **DEFAULTS,
        "target": b"/x",
        "path": b"/x",
        "http11": False,
        "keep_alive": False,
        "host": b"",
        "end": 19,
    }


def test_a_pipelined_head_is_parsed_from_its_own_start() -> None:
    first = BASE + b"X-Pad: " + b"p" * 10_000 + b"\r\n\r\n"
    second = b"\r\nGET /b HTTP/1.1\r\nHost: b\r\nX-Pad: " + b"p" * 8_000 + b"\r\n\r\n"
    got = fields(first + second, len(first))  # the empty line before it is skipped
    assert (got["path"], got["host"], got["end"]) == (b"/b", b"b", len(first + second))


def test_the_head_limits_at_their_exact_values() -> None:
    head = BASE + b"X-Pad: "
    fill = MAX_HEAD_BYTES - len(head)  # the head up to its blank line: MAX_HEAD_BYTES
    assert fields(head + b"p" * fill + b"\r\n\r\n")["end"] == MAX_HEAD_BYTES + 4
    assert rejected(head + b"p" * (fill + 1) + b"\r\n\r\n") == 431
    many = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADER_COUNT - 1))  # and Host
    assert fields(BASE + many + b"\r\n")["host"] == b"a"
    assert rejected(BASE + many + b"X-Last: v\r\n\r\n") == 431
    assert rejected(BASE + b"Content-Length: 1" + b"0" * 18 + b"\r\n\r\n") == 413


@pytest.mark.parametrize(
    "codings",
    [
        b"Transfer-Encoding: gzip ,\tchunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_a_coding_before_chunked_is_not_implemented(codings: bytes) -> None:
    assert rejected(b"POST / HTTP/1.1\r\nHost: a\r\n" + codings + b"\r\n") == 501


@pytest.mark.parametrize(
    ("line", "changed"),
    [
        (b"GET /a?b?c HTTP/1.1", {"target": b"/a?b?c", "path": b"/a", "query": b"b?c"}),
        (
            b"HEAD /x HTTP/1.0",
            {
                "method": b"HEAD",
                "target": b"/x",
                "path": b"/x",
                "http11": False,
                "keep_alive": False,
            },
        ),
        (b"OPTIONS * HTTP/1.1", {"method": b"OPTIONS", "target": b"*", "path": b"*"}),
        (b"CONNECT a:443 HTTP/1.1", {"method": b"CONNECT", "target": b"a:443", "path": b"a:443"}),
        # absolute-form: the authority is the host, whatever the scheme's case
        (
            b"GET HTTPS://Go.Example.com/a?x HTTP/1.1",
            {
                "target": b"HTTPS://Go.Example.com/a?x",
                "path": b"/a",
                "query": b"x",
                "host": b"Go.Example.com",
            },
        ),
        (
            b"GET http://go.example.com HTTP/1.1",
            {"target": b"http://go.example.com", "host": b"go.example.com"},
        ),
        (
            b"GET http://go.example.com?x=1 HTTP/1.1",
            {"target": b"http://go.example.com?x=1", "query": b"x=1", "host": b"go.example.com"},
        ),
        (
            b"GET http://a/b//c?d?e HTTP/1.1",
            {"target": b"http://a/b//c?d?e", "path": b"/b//c", "query": b"d?e", "host": b"a"},
        ),
    ],
)
def test_every_field_of_the_request_line(line: bytes, changed: dict[str, object]) -> None:
    data = line + b"\r\nHost: a\r\n\r\n"
    assert fields(data) == {**DEFAULTS, **changed, "end": len(data)}


@pytest.mark.parametrize(
    "line", [b"GET * HTTP/1.1", b"GET http://user@a/ HTTP/1.1", b"GET http:///x HTTP/1.1"]
)
def test_targets_that_are_refused(line: bytes) -> None:
    assert rejected(line + b"\r\nHost: a\r\n\r\n") == 400


def test_a_request_line_at_the_limit_is_read_and_one_past_it_is_414() -> None:
    prefix, suffix = b"GET /", b" HTTP/1.1"
    fill = MAX_REQUEST_LINE_BYTES - len(prefix) - len(suffix)
    line = prefix + b"a" * fill + suffix
    assert fields(line + b"\r\nHost: a\r\n\r\n")["path"] == b"/" + b"a" * fill
    assert rejected(prefix + b"a" * (fill + 1) + suffix + b"\r\nHost: a\r\n\r\n") == 414
    # the scanner refuses it as it arrives, before any CRLF, and not one byte sooner
    scanner = HeadScanner()
    assert scanner.advance(bytearray(line)) == -1
    with pytest.raises(BadRequest) as info:
        HeadScanner().advance(bytearray(line + b"a"))
    assert info.value.status == 414


def test_the_scanner_finds_the_end_of_a_head_after_an_empty_line() -> None:
    head = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n"
    for data in (head, head + b"GET /b"):  # a pipelined request may follow
        scanner = HeadScanner()
        assert scanner.advance(bytearray(data)) == len(head)
    scanner = HeadScanner(4)  # a head that starts further into the caller's buffer
    assert scanner.advance(bytearray(b"xxxx" + head)) == 4 + len(head)
    buf = bytearray()
    scanner = HeadScanner()
    for byte in range(len(head)):  # trickled: complete only with its last byte
        buf += head[byte : byte + 1]
        assert scanner.advance(buf) == (len(head) if byte == len(head) - 1 else -1)
    assert scanner.examined <= 4 * len(head)  # each new byte and the 3 before it


def test_the_scanner_refuses_an_oversized_head_before_it_ends() -> None:
    head = BASE + b"X-Pad: "
    fill = MAX_HEAD_BYTES - len(head)
    assert HeadScanner().advance(bytearray(head + b"p" * fill + b"\r\n\r\n")) > 0
    assert HeadScanner().advance(bytearray(head + b"p" * fill)) == -1  # at the limit: waits
    with pytest.raises(BadRequest) as info:
        HeadScanner().advance(bytearray(head + b"p" * (fill + 1)))
    assert info.value.status == 431


@pytest.mark.parametrize("over", [-3, -2, -1, 0])
def test_a_head_ending_across_the_limit_is_read_in_pieces_as_in_one(over: int) -> None:
    """The head's CRLFCRLF may start at the limit at the latest (parse_head's rule); read in
    pieces that end inside it, the scanner waits rather than refusing (a fuzzer finding:
    the terminator starting 1 byte before the limit, a read ending 2 bytes past it)."""
    head = BASE + b"X-Pad: "
    data = head + b"a" * (MAX_HEAD_BYTES + over - len(head)) + b"\r\n\r\n"
    start = data.index(b"\r\n\r\n", len(head))
    assert start == MAX_HEAD_BYTES + over
    whole = parse_head(data)
    assert whole is not None
    for cut in range(start, start + 4):
        scanner = HeadScanner()
        assert scanner.advance(bytearray(data[:cut])) == -1
        assert scanner.advance(bytearray(data)) == whole[1]
    # past the limit, a byte that cannot continue the terminator: refused at once
    if start + 1 > MAX_HEAD_BYTES:
        with pytest.raises(BadRequest) as info:
            HeadScanner().advance(bytearray(data[: start + 1] + b"x"))
        assert info.value.status == 431
