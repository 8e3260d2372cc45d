"""ClickHouse over its HTTP interface: the sink URL, an asyncio client for the collector's
inserts, and a blocking one for stats reads (run on a stats thread, never on a loop).

Rules (measured on Debian 12's ClickHouse 18.16, written to run on current releases too):
- One statement per request, sent in the POST body (no URL length limit) or, for an
  INSERT, in `?query=` with the RowBinary rows as the body. No HTTP query parameters
  (18.16 has none): callers quote literals with `quote()` or send integers only.
- An answer is accepted only on HTTP 200 with its whole body read. An error's body starts
  `Code: N` (18.16: `Code: N, e.displayText() = ...`; current: `Code: N. DB::Exception`);
  18.16 sends no X-ClickHouse-Exception-Code header, so the code is read from the body.
- Keep-alive: 18.16 closes an idle connection after ~3 s, so a connection idle for
  IDLE_RECONNECT_S is replaced before use. A request that got no byte of answer on a
  reused connection is sent once more only when it may be (a SELECT): an INSERT never is,
  since the server may have committed it; the sink reconciles instead (edge/chsink.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Final

SCHEME: Final = "clickhouse+http"
DEFAULT_PORT: Final = 8123
# 18.16 closes idle keep-alive connections after keep_alive_timeout (3 s, measured 2.8-3.0 s).
IDLE_RECONNECT_S: Final = 2.5
# An INSERT of 100k rows takes well under a second; a stats query at 10M clicks a few
# seconds on 2 cores. Past this the request is abandoned (an insert is then reconciled).
REQUEST_TIMEOUT_S: Final = 60.0
# SQL sent in a body is still limited by the server's max_query_size (256 KiB by default);
# stats queries carry the selected link ids, so they raise it.
MAX_QUERY_BYTES: Final = 64 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


class ClickHouseError(Exception):
    """An answer other than 200 (status and the server's code and text), or a broken one."""

    def __init__(self, status: int, body: bytes) -> None:
        text = body[:500].decode("utf-8", "replace").strip()
        super().__init__(f"ClickHouse HTTP {status}: {text}" if status else text)
        self.status = status
        self.code: int | None = None
        if body.startswith(b"Code: "):
            digits = re.match(rb"Code: (\d+)", body)
            if digits:
                self.code = int(digits.group(1))


@dataclass(frozen=True, slots=True)
class SinkURL:
    """`clickhouse+http://[user[:password]@]host[:port]/database`."""

    host: str
    port: int
    database: str
    user: str | None = None
    password: str | None = None

    def safe(self) -> str:
        """The URL without its password (for logs and /healthz)."""
        who = f"{self.user}@" if self.user else ""
        return f"{SCHEME}://{who}{self.host}:{self.port}/{self.database}"

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.user:
            out["X-ClickHouse-User"] = self.user
            if self.password:
                out["X-ClickHouse-Key"] = self.password
        return out


def parse_sink_url(url: str) -> SinkURL:
    """Parse a click sink URL; ValueError with a one-line reason otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"click_sink: not a URL ({exc}): {url!r}") from None
    if parts.scheme != SCHEME:
        raise ValueError(
            f"click_sink: only {SCHEME}://HOST:8123/DATABASE is supported, got {url!r}"
        )
    if not parts.hostname:
        raise ValueError(f"click_sink: no host in {url!r}")
    database = parts.path.strip("/")
    if not _NAME.match(database):
        raise ValueError(
            f"click_sink: the path must name a database (letters, digits, _), got {database!r}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"click_sink: no query or fragment expected in {url!r}")
    return SinkURL(
        parts.hostname,
        port or DEFAULT_PORT,
        database,
        urllib.parse.unquote(parts.username) if parts.username else None,
        urllib.parse.unquote(parts.password) if parts.password else None,
    )


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _path(database: str, settings: dict[str, Any]) -> str:
    return "/?" + urllib.parse.urlencode({"database": database, **settings})


class AsyncClient:
    """One keep-alive HTTP/1.1 connection to ClickHouse, one request at a time."""

    def __init__(self, url: SinkURL, database: str | None = None) -> None:
        self.url = url
        self.database = database or url.database
        self.timeout_s = REQUEST_TIMEOUT_S
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0
        self._lock = asyncio.Lock()
        extra = "".join(f"{k}: {v}\r\n" for k, v in url.headers().items())
        self._extra_head = extra.encode()
        self.connects = 0

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await writer.wait_closed()

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._reader = None

    async def query(self, sql: str, settings: dict[str, Any] | None = None) -> bytes:
        """A statement without data (DDL, SELECT): its answer's body."""
        return await self._request(sql.encode(), dict(settings or {}), resend_ok=True)

    async def insert(self, sql: str, data: bytes, settings: dict[str, Any] | None = None) -> None:
        """`INSERT ... FORMAT RowBinary` with `data`; returns once the server accepted it."""
        await self._request(data, {**(settings or {}), "query": sql}, resend_ok=False)

    async def _request(self, body: bytes, settings: dict[str, Any], resend_ok: bool) -> bytes:
        head = (
            (
                f"POST {_path(self.database, settings)} HTTP/1.1\r\n"
                f"Host: {self.url.host}:{self.url.port}\r\nContent-Length: {len(body)}\r\n"
            ).encode()
            + self._extra_head
            + b"\r\n"
        )
        async with self._lock:
            for attempt in (0, 1):
                fresh = False
                if (
                    self._writer is None
                    or self._writer.is_closing()
                    or time.monotonic() - self._last_used > IDLE_RECONNECT_S
                ):
                    self._drop()
                    self._reader, self._writer = await asyncio.wait_for(
                        asyncio.open_connection(self.url.host, self.url.port), self.timeout_s
                    )
                    self.connects += 1
                    fresh = True
                assert self._reader is not None and self._writer is not None
                try:
                    self._writer.write(head + body)
                    await self._writer.drain()
                    status_line = await asyncio.wait_for(self._reader.readline(), self.timeout_s)
                    if not status_line:
                        raise ConnectionResetError("ClickHouse closed the connection")
                except (ConnectionError, asyncio.IncompleteReadError):
                    self._drop()
                    if fresh or attempt or not resend_ok:
                        raise
                    continue  # a reused connection closed before any answer: once more
                try:
                    status, answer = await asyncio.wait_for(
                        self._read_answer(status_line), self.timeout_s
                    )
                except BaseException:
                    self._drop()
                    raise
                self._last_used = time.monotonic()
                if status != 200:
                    raise ClickHouseError(status, answer)
                return answer
        raise AssertionError("unreachable")

    async def _read_answer(self, status_line: bytes) -> tuple[int, bytes]:
        reader = self._reader
        assert reader is not None
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise ClickHouseError(0, b"not an HTTP answer: " + status_line[:100]) from None
        length: int | None = None
        chunked = close = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and value == b"chunked":
                chunked = True
            elif name == b"connection" and value == b"close":
                close = True
        if chunked:
            parts = []
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionResetError("ClickHouse closed the connection mid-answer")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            answer = b"".join(parts)
        elif length is not None:
            answer = await reader.readexactly(length)
        else:
            answer = await reader.read()
            close = True
        if close:
            self._drop()
        return status, answer


class BlockingClient:
    """Blocking reads for stats (a stats thread or the CLI): a connection per query."""

    def __init__(self, url: SinkURL, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def query(self, sql: str, settings: dict[str, Any] | None = None) -> bytes:
        conn = http.client.HTTPConnection(self.url.host, self.url.port, timeout=self.timeout_s)
        try:
            params = {"max_query_size": MAX_QUERY_BYTES, "wait_end_of_query": 1}
            params.update(settings or {})
            conn.request(
                "POST",
                _path(self.url.database, params),
                body=sql.encode(),
                headers=self.url.headers(),
            )
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise ClickHouseError(0, f"cannot reach {self.url.safe()}: {exc}".encode()) from None
        finally:
            conn.close()
        if response.status != 200:
            raise ClickHouseError(response.status, body)
        return body

    def rows(self, sql: str) -> list[list[Any]]:
        """A SELECT's rows (JSONCompact; 64-bit integers as numbers)."""
        import orjson

        body = self.query(
            sql + " FORMAT JSONCompact", {"output_format_json_quote_64bit_integers": 0}
        )
        data: list[list[Any]] = orjson.loads(body)["data"]
        return data
