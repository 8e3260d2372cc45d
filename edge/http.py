"""Strict HTTP/1.x request parsing and response bytes, sans-IO (RFC 9110 / RFC 9112).

Rules of this module:
- Bytes in, a `Request` out. `parse_head()` returns None when more bytes are needed, a
  `(Request, end)` pair when a whole head is there, and raises `BadRequest` for anything a
  strict server must refuse. It never raises anything else (hypothesis checks that).
- No asyncio, no sockets, no str until a value is needed: header names and values stay bytes.
- Ambiguity is refused, not guessed: CL with TE, duplicate CL or Host, obs-fold, whitespace
  before the colon, bare CR or LF, control bytes, unknown versions, bad request-targets.
- The limits below are named, each with the precedent that justifies it.

How it is fast: the head is split once at CRLF; each header line is validated with
`bytes.translate` (a C loop) and the result is remembered by the line's exact bytes, since
real traffic repeats the same User-Agent, Accept and Host lines on every request. Only lines
that passed validation are remembered, so a cache hit is as strict as a miss.
"""

from __future__ import annotations

import string
from typing import Final

# A short link's request line is short; nginx's large_client_header_buffers default is 8 KiB
# for the request line too, and Apache's LimitRequestLine is 8190.
MAX_REQUEST_LINE_BYTES: Final = 8192
# The whole head (request line + fields): h11 and node both default to 16 KiB.
MAX_HEAD_BYTES: Final = 16384
# Apache's LimitRequestFields default; browsers send 10-20.
MAX_HEADER_COUNT: Final = 100
# A Content-Length over 18 digits does not fit in 63 bits; llhttp refuses overflow the same way.
MAX_CONTENT_LENGTH_DIGITS: Final = 18
# A chunk-size line with more than 16 hex digits overflows 64 bits.
MAX_CHUNK_SIZE_DIGITS: Final = 16
# Remembered validated header lines; cleared when full (cheap, and real traffic refills it
# with the hot lines within a few requests).
FIELD_CACHE_SIZE: Final = 4096

STATUS_REASONS: Final[dict[int, str]] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class BadRequest(Exception):
    """The request cannot be answered normally; answer `status` and close the connection."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _complement(allowed: bytes) -> bytes:
    return bytes(b for b in range(256) if b not in allowed)


# RFC 9110 5.6.2 token characters.
TCHAR: Final = (string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~").encode()
# RFC 9110 5.5 field-value: VCHAR, SP, HTAB and obs-text (0x80-0xFF); no CR, LF, NUL, CTLs.
FIELD_VALUE_CHARS: Final = bytes([0x09]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
# RFC 3986 characters allowed in a request-target: unreserved, sub-delims, ":@/?" and "%".
TARGET_CHARS: Final = (string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%[]").encode()
# RFC 9110 4.2.3 uri-host (reg-name, IPv4 or IP-literal) with an optional port.
HOST_CHARS: Final = (string.ascii_letters + string.digits + "-._~!$&'()*+,;=:[]%").encode()
HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
_DIGITS: Final = b"0123456789"


class Request:
    """One parsed request head. Names are lowercased bytes; values are bytes, trimmed."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "http11",
        "keep_alive",
        "host",
        "headers",
        "user_agent",
        "referer",
        "accept_language",
        "forwarded_for",
        "forwarded",
        "content_length",
        "chunked",
        "expect_continue",
        "prefetch",
        "dnt",
        "gpc",
    )

    method: bytes
    target: bytes
    path: bytes
    query: bytes
    http11: bool
    keep_alive: bool
    host: bytes
    headers: list[tuple[bytes, bytes]]
    user_agent: bytes
    referer: bytes
    accept_language: bytes
    forwarded_for: bytes | None
    forwarded: bytes | None
    content_length: int | None
    chunked: bool
    expect_continue: bool
    prefetch: bool
    dnt: bool
    gpc: bool

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header by lowercased name, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


# Header names the edge reads, mapped to a small int so one dict lookup dispatches.
_H_HOST, _H_UA, _H_REFERER, _H_LANG, _H_CONN, _H_CL, _H_TE = range(7)
_H_XFF, _H_FWD, _H_EXPECT, _H_SEC_PURPOSE, _H_PURPOSE, _H_DNT, _H_GPC = range(7, 14)
_KNOWN: Final[dict[bytes, int]] = {
    b"host": _H_HOST,
    b"user-agent": _H_UA,
    b"referer": _H_REFERER,
    b"accept-language": _H_LANG,
    b"connection": _H_CONN,
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"x-forwarded-for": _H_XFF,
    b"forwarded": _H_FWD,
    b"expect": _H_EXPECT,
    b"sec-purpose": _H_SEC_PURPOSE,
    b"purpose": _H_PURPOSE,
    b"x-moz": _H_PURPOSE,  # Firefox's old prefetch marker: "X-Moz: prefetch"
    b"dnt": _H_DNT,
    b"sec-gpc": _H_GPC,
}

_field_cache: dict[bytes, tuple[bytes, bytes]] = {}


def _parse_field_line(line: bytes) -> tuple[bytes, bytes]:
    """Validate one `name: value` line; return (lowercased name, trimmed value)."""
    if line[:1] in (b" ", b"\t"):
        raise BadRequest("obsolete line folding is not accepted")
    colon = line.find(b":")
    if colon <= 0:
        raise BadRequest("header line without a name and a colon")
    name = line[:colon]
    if name.translate(None, TCHAR):
        if name[-1:] in (b" ", b"\t"):
            raise BadRequest("whitespace between a header name and the colon")
        raise BadRequest("invalid character in a header name")
    value = line[colon + 1 :].strip(b" \t")
    if value.translate(None, FIELD_VALUE_CHARS):
        raise BadRequest("invalid character (CR, LF, NUL or control) in a header value")
    entry = (name.lower(), value)
    if len(_field_cache) >= FIELD_CACHE_SIZE:
        _field_cache.clear()
    _field_cache[line] = entry
    return entry


def _check_incomplete(buf: bytes | bytearray, start: int) -> None:
    """Refuse what can never become a valid head, before waiting for more bytes."""
    HeadScanner(start).advance(buf)


_TERMINATOR: Final = b"\r\n\r\n"


class HeadScanner:
    """Finds the end of a request head arriving in pieces, looking at each byte once.

    h11's receive-buffer rule: reading a head trickled in small reads out of a growing
    buffer must cost O(bytes received), not O(bytes^2). `advance(buf)` looks only at what
    was added to `buf` since its last call (plus the 3 bytes before, for a CRLFCRLF split
    across reads), refuses at once what can never become a valid head (too long, bare LF,
    not starting with a method), and returns the offset just past the head once it is
    complete, else -1. `examined` counts the bytes looked at (the linearity test reads it).
    The caller then parses the head once with `parse_head(buf, start)`.
    """

    __slots__ = ("start", "scanned", "line_end", "examined")

    def __init__(self, start: int = 0) -> None:
        self.start = start  # where the head begins in the caller's buffer
        self.scanned = start  # bytes before this offset were looked at
        self.line_end = -1  # offset of the request line's CRLF once seen
        self.examined = 0

    def advance(self, buf: bytes | bytearray) -> int:
        start, old, size = self.start, self.scanned, len(buf)
        if size <= old:
            return -1
        # A TLS ClientHello (0x16), a NUL or garbage: no method starts like this.
        first = buf[start : start + 2]
        if old == start and first[0] not in TCHAR and first != b"\r\n"[: len(first)]:
            raise BadRequest("request does not start with a method")
        head_from = start + 2 if buf[start : start + 2] == b"\r\n" else start  # RFC 9112 2.2
        search = max(head_from, old - 3)
        end = buf.find(b"\r\n\r\n", search)
        self.examined += size - search
        self.scanned = size
        if self.line_end < 0 and size - head_from >= 2:
            line_end = buf.find(
                b"\r\n", max(head_from, old - 1), head_from + MAX_REQUEST_LINE_BYTES + 2
            )
            if line_end >= 0:
                self.line_end = line_end
            elif size - head_from > MAX_REQUEST_LINE_BYTES:
                raise BadRequest("request line too long", 414)
        if end >= 0:
            if end - head_from > MAX_HEAD_BYTES:
                raise BadRequest("request header section too large", 431)
            return end + 4
        # Past the limit, only the head's final CRLFCRLF may still be arriving: it may
        # start at the limit at the latest (as parse_head allows), so what follows some
        # start in the last 4 bytes before it must be a beginning of CRLFCRLF (a read can
        # end inside it); anything else is too large now.
        limit = head_from + MAX_HEAD_BYTES
        if size > limit and not any(
            _TERMINATOR.startswith(bytes(buf[p:size]))
            for p in range(max(head_from, limit - 3), limit + 1)
            if size - p < 4
        ):
            raise BadRequest("request header section too large", 431)
        # A bare LF among the new bytes: every LF must close a CRLF (one that straddles
        # the previous read has its CR at old - 1).
        lf_from = max(head_from, old)
        if buf.count(b"\n", lf_from) != buf.count(b"\r\n", max(head_from, lf_from - 1)):
            raise BadRequest("bare LF in request head")
        return -1


def parse_head(buf: bytes | bytearray, start: int = 0) -> tuple[Request, int] | None:
    """Parse the request head at buf[start:].

    Returns None when the head is not complete yet, or (request, offset just past the head).
    Raises BadRequest (with the status to answer) for an invalid or oversized head.
    """
    origin = start
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request-line.
    if buf[start : start + 2] == b"\r\n":
        start += 2
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if origin < len(buf):
            _check_incomplete(buf, origin)
        return None
    if end - start > MAX_HEAD_BYTES:
        _check_incomplete(buf, origin)
        raise BadRequest("request header section too large", 431)
    lines = bytes(buf[start:end]).split(b"\r\n")
    if len(lines) > MAX_HEADER_COUNT + 1:
        raise BadRequest("too many header fields", 431)

    req = Request()
    _parse_request_line(lines[0], req)

    host: bytes | None = None
    user_agent = referer = accept_language = b""
    forwarded_for: bytes | None = None
    forwarded: bytes | None = None
    content_length: int | None = None
    transfer_encoding: bytes | None = None
    connection: bytes | None = None
    expect_continue = prefetch = dnt = gpc = False
    headers: list[tuple[bytes, bytes]] = []
    cache_get = _field_cache.get
    known_get = _KNOWN.get
    for i in range(1, len(lines)):
        line = lines[i]
        entry = cache_get(line)
        if entry is None:
            entry = _parse_field_line(line)
        headers.append(entry)
        kind = known_get(entry[0])
        if kind is None:
            continue
        value = entry[1]
        if kind == _H_UA:
            user_agent = value
        elif kind == _H_HOST:
            if host is not None:
                raise BadRequest("more than one Host header")
            host = value
        elif kind == _H_REFERER:
            referer = value
        elif kind == _H_LANG:
            accept_language = value
        elif kind == _H_CONN:
            connection = value if connection is None else connection + b"," + value
        elif kind == _H_CL:
            if content_length is not None:
                raise BadRequest("more than one Content-Length header")
            if not value or value.translate(None, _DIGITS):
                raise BadRequest("invalid Content-Length")
            if len(value) > MAX_CONTENT_LENGTH_DIGITS:
                raise BadRequest("Content-Length too large", 413)
            content_length = int(value)
        elif kind == _H_TE:
            transfer_encoding = (
                value if transfer_encoding is None else transfer_encoding + b"," + value
            )
        elif kind == _H_XFF:
            forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
        elif kind == _H_FWD:
            forwarded = value if forwarded is None else forwarded + b"," + value
        elif kind == _H_EXPECT:
            if value.lower() != b"100-continue":
                raise BadRequest("unsupported Expect header", 417)
            expect_continue = True
        elif kind in (_H_SEC_PURPOSE, _H_PURPOSE):
            if b"prefetch" in value.lower() or b"prerender" in value.lower():
                prefetch = True
        elif kind == _H_DNT:
            dnt = value == b"1"
        elif kind == _H_GPC:
            gpc = value == b"1"

    chunked = False
    if transfer_encoding is not None:
        if content_length is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if not req.http11:
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip(b" \t").lower() for c in transfer_encoding.split(b",")]
        if codings[-1] != b"chunked":
            raise BadRequest("Transfer-Encoding must end with chunked")
        if codings != [b"chunked"]:
            raise BadRequest("unsupported transfer coding", 501)
        chunked = True

    if req.host:  # absolute-form target: its authority replaces the Host header (RFC 9112 3.2.2)
        if host is None and req.http11:
            raise BadRequest("missing Host header")
    elif host is None:
        if req.http11:
            raise BadRequest("missing Host header")
        req.host = b""
    else:
        if host.translate(None, HOST_CHARS):
            raise BadRequest("invalid Host header")
        req.host = host

    if connection is None:
        keep_alive = req.http11
    else:
        tokens = {token.strip(b" \t") for token in connection.lower().split(b",")}
        if b"close" in tokens:
            keep_alive = False
        elif req.http11:
            keep_alive = True
        else:
            keep_alive = b"keep-alive" in tokens

    req.keep_alive = keep_alive
    req.headers = headers
    req.user_agent = user_agent
    req.referer = referer
    req.accept_language = accept_language
    req.forwarded_for = forwarded_for
    req.forwarded = forwarded
    req.content_length = content_length
    req.chunked = chunked
    req.expect_continue = expect_continue
    req.prefetch = prefetch
    req.dnt = dnt
    req.gpc = gpc
    return req, end + 4


def _parse_request_line(line: bytes, req: Request) -> None:
    if len(line) > MAX_REQUEST_LINE_BYTES:
        raise BadRequest("request line too long", 414)
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not method or method.translate(None, TCHAR):
        raise BadRequest("invalid method")
    if version == b"HTTP/1.1":
        req.http11 = True
    elif version == b"HTTP/1.0":
        req.http11 = False
    elif (
        len(version) == 8
        and version.startswith(b"HTTP/")
        and version[5:6].isdigit()
        and version[6:7] == b"."
        and version[7:8].isdigit()
    ):
        raise BadRequest("HTTP version not supported", 505)
    else:
        raise BadRequest("malformed HTTP version")
    if not target or target.translate(None, TARGET_CHARS):
        raise BadRequest("invalid request-target")
    if b"%" in target:
        _check_percent_encoding(target)
    req.method = method
    req.target = target
    req.host = b""
    if target[0] == 0x2F:  # "/": origin-form, the common case
        path = target
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target[target.index(b"//") + 2 :]
        slash = rest.find(b"/")
        question = rest.find(b"?")
        cut = min(i for i in (slash, question, len(rest)) if i >= 0)
        authority = rest[:cut]
        if not authority or b"@" in authority or authority.translate(None, HOST_CHARS):
            raise BadRequest("invalid authority in absolute-form request-target")
        req.host = authority
        path = rest[cut:] or b"/"
        if path[:1] == b"?":
            path = b"/" + path
    elif target == b"*" and method == b"OPTIONS":
        path = b"*"
    elif method == b"CONNECT":
        path = target
    else:
        raise BadRequest("invalid request-target")
    question = path.find(b"?")
    if question < 0:
        req.path = path
        req.query = b""
    else:
        req.path = path[:question]
        req.query = path[question + 1 :]


def _check_percent_encoding(target: bytes) -> None:
    i = target.find(b"%")
    while i >= 0:
        pair = target[i + 1 : i + 3]
        if len(pair) != 2 or pair.translate(None, HEX_DIGITS):
            raise BadRequest("invalid percent-encoding in request-target")
        i = target.find(b"%", i + 3)


# A chunk-size line with its extensions. Nothing legitimate sends more than a few bytes of
# extensions; without a cap, 1-byte chunks with kilobytes of extensions each make a body
# of a few bytes cost megabytes of parsing (the hardening probe's attack).
MAX_CHUNK_LINE_BYTES: Final = 256

# BodyReader states.
_SIZE_LINE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class BodyReader:
    """Reads one request body as it arrives: Content-Length or chunked (RFC 9112 6.3, 7.1).

    `feed(buf, pos)` consumes what it can of buf[pos:] and returns the offset just past
    what it consumed; `done` is True once the body is complete, and `body` then holds it
    (when `keep`; the edge discards bodies). Work is linear in the bytes fed: data is
    skipped or copied once, a line split across reads is searched only in its new bytes
    (and validated once, when complete). Every byte of the body on the wire counts against
    `limit` (data, chunk-size lines, extensions, CRLFs, trailers): past it, 413. Bad
    framing is BadRequest(400); nothing else is raised.
    """

    __slots__ = (
        "chunked",
        "keep",
        "limit",
        "wire",
        "state",
        "remaining",
        "parts",
        "line",
        "trailers",
        "examined",
    )

    def __init__(self, req: Request, limit: int, *, keep: bool = True) -> None:
        self.chunked = req.chunked
        self.keep = keep
        self.limit = limit
        self.wire = 0  # body bytes consumed so far, framing included
        self.parts: list[bytes] = []
        self.line = bytearray()  # a chunk-size or trailer line not complete yet
        self.trailers = 0
        self.examined = 0
        if self.chunked:
            self.state = _SIZE_LINE
            self.remaining = 0
        else:
            length = req.content_length or 0
            if length > limit:
                raise BadRequest(f"request body too large (the limit is {limit} bytes)", 413)
            self.remaining = length
            self.state = _DATA if length else _DONE

    @property
    def done(self) -> bool:
        return self.state == _DONE

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def _count(self, n: int) -> None:
        self.wire += n
        self.examined += n
        if self.wire > self.limit:
            raise BadRequest(f"request body too large (the limit is {self.limit} bytes)", 413)

    def feed(self, buf: bytes | bytearray, pos: int = 0) -> int:
        end = len(buf)
        while pos < end and self.state != _DONE:
            if self.state == _DATA:
                n = min(self.remaining, end - pos)
                self._count(n)
                if self.keep:
                    self.parts.append(bytes(buf[pos : pos + n]))
                pos += n
                self.remaining -= n
                if not self.remaining:
                    self.state = _DATA_END if self.chunked else _DONE
                continue
            line, pos = self._line(buf, pos, end)
            if line is None:
                break
            if self.state == _SIZE_LINE:
                size = _chunk_size(line)
                if self.wire + size > self.limit:  # refused before its data is sent
                    self._count(size)
                if size:
                    self.remaining = size
                    self.state = _DATA
                else:
                    self.state = _TRAILER
            elif self.state == _DATA_END:
                if line:
                    raise BadRequest("chunk data not followed by CRLF")
                self.state = _SIZE_LINE
            elif not line:  # the empty line that ends the trailer section
                self.state = _DONE
            else:  # trailer fields are validated and dropped
                self.trailers += 1
                if self.trailers > MAX_HEADER_COUNT:
                    raise BadRequest("too many trailer fields", 431)
                _parse_field_line(line)
        return pos

    def _line(self, buf: bytes | bytearray, pos: int, end: int) -> tuple[bytes | None, int]:
        """The next CRLF-terminated line (without its CRLF), or None with everything up to
        `end` kept for later. Only new bytes are searched for the LF."""
        cap = MAX_CHUNK_LINE_BYTES if self.state != _TRAILER else MAX_HEAD_BYTES
        room = cap + 2 - len(self.line)
        lf = buf.find(b"\n", pos, min(end, pos + room))
        if lf < 0:
            taken = min(end, pos + room) - pos
            self._count(taken)
            self.line += buf[pos : pos + taken]
            if len(self.line) > cap:
                raise BadRequest(
                    "chunk-size line too long"
                    if self.state != _TRAILER
                    else "trailer line too long",
                    400 if self.state != _TRAILER else 431,
                )
            return None, pos + taken
        self._count(lf + 1 - pos)
        if self.line:
            self.line += buf[pos : lf + 1]
            raw = bytes(self.line)
            self.line.clear()
        else:
            raw = bytes(buf[pos : lf + 1])
        if raw[-2:] != b"\r\n" or b"\r" in raw[:-2]:
            raise BadRequest("bare CR or LF in chunked framing")
        return raw[:-2], lf + 1


def _chunk_size(line: bytes) -> int:
    size_text, _, ext = line.partition(b";")
    if ext and ext.translate(None, FIELD_VALUE_CHARS):
        raise BadRequest("invalid chunk extension")
    if (
        not size_text
        or len(size_text) > MAX_CHUNK_SIZE_DIGITS
        or size_text.translate(None, HEX_DIGITS)
    ):
        raise BadRequest("invalid chunk size")
    return int(size_text, 16)


def read_body(
    buf: bytes | bytearray, start: int, req: Request, limit: int
) -> tuple[bytes, int] | None:
    """The whole body framed by `req` at buf[start:]: (body, offset just past it), or None
    when more bytes are needed (BodyReader in one call; raises what it raises)."""
    reader = BodyReader(req, limit)
    end = reader.feed(buf, start)
    return (reader.body, end) if reader.done else None


# --- responses -----------------------------------------------------------------------------


def status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {STATUS_REASONS.get(status, 'Unknown')}\r\n".encode()


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """Status line and header lines, without Date and without the final CRLF.

    The server appends the Date line (rebuilt once a second), an optional Connection line
    and the blank line. Values must already be validated ASCII without CR/LF.
    """
    out = [status_line(status)]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n".encode("ascii"))
    return b"".join(out)
