"""Outbound HTTP from the collector: destination checks and alert webhooks.

Rules of this module:
- One request, one connection (`Connection: close`), HTTP/1.1, asyncio streams: nothing
  here blocks the event loop (name resolution runs on the loop's resolver thread).
- Address vetting: the host is resolved once and every address it resolves to must be
  public (not private, loopback, link-local, multicast, reserved or unspecified) unless
  `allow_private` is set; the connection then goes to the vetted address itself (TLS still
  checks the certificate against the host name), so a second lookup cannot swap in an
  internal address (DNS rebinding).
- Redirects are followed only where the caller asks (`max_redirects`), each hop vetted
  again; only the status line and headers are read, never a body.
- Every failure is one `FetchError` with a `kind` (dns, connect, tls, timeout, refused,
  protocol, redirects) and a message a person can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit

MAX_HEAD_BYTES: Final = 64 * 1024  # a response head larger than this is refused
USER_AGENT: Final = "linkedge-check/1 (+destination check)"
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})


class FetchError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    url: str  # the URL that gave this answer (after redirects)
    location: str | None
    redirects: int


def _blocked(address: str) -> str | None:
    """Why an address may not be fetched without allow_private (None: it is public)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "not a public unicast address"
    if ip.is_private:
        return "a private address"
    return None


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses of `host`, every one vetted (FetchError 'dns' or 'refused')."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError("dns", f"cannot resolve {host}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise FetchError("dns", f"{host} has no address")
    if not allow_private:
        for address in addresses:
            why = _blocked(address)
            if why is not None:
                raise FetchError(
                    "refused",
                    f"{host} resolves to {address}, {why}: not fetched "
                    "(allow_private_fetch allows it)",
                )
    return addresses


def _split(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("protocol", f"not an http(s) URL: {url}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchError("protocol", f"bad port in {url}") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.scheme, parts.hostname, port, target


async def _exchange(
    url: str,
    method: str,
    headers: dict[str, str],
    body: bytes,
    allow_private: bool,
    ssl_context: ssl.SSLContext | None,
) -> tuple[int, str | None]:
    scheme, host, port, target = _split(url)
    addresses = await resolve(host, port, allow_private)
    tls = None
    if scheme == "https":
        tls = ssl_context or ssl.create_default_context()
    last: Exception | None = None
    for address in addresses[:3]:
        try:
            reader, writer = await asyncio.open_connection(
                address,
                port,
                ssl=tls,
                server_hostname=host if tls else None,
                limit=MAX_HEAD_BYTES,
            )
        except ssl.SSLError as exc:
            raise FetchError("tls", f"TLS with {host} failed: {exc.reason or exc}") from None
        except OSError as exc:
            last = exc
            continue
        try:
            return await _speak(reader, writer, host, port, scheme, target, method, headers, body)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    raise FetchError("connect", f"cannot connect to {host}:{port}: {last}")


async def _speak(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    scheme: str,
    target: str,
    method: str,
    headers: dict[str, str],
    body: bytes,
) -> tuple[int, str | None]:
    default_port = 443 if scheme == "https" else 80
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in {"User-Agent": USER_AGENT, **headers}.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    try:
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise FetchError("protocol", f"{host} sent a response head over the limit") from None
    except asyncio.IncompleteReadError:
        raise FetchError("protocol", f"{host} closed the connection without an answer") from None
    except ssl.SSLError as exc:
        raise FetchError("tls", f"TLS with {host} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise FetchError("connect", f"connection to {host} failed: {exc}") from None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise FetchError("protocol", f"{host} answered something that is not HTTP/1.x")
    location = None
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            location = value.strip()
    return int(parts[1]), location


async def fetch(
    url: str,
    method: str = "GET",
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout_s: float = 10.0,
    max_redirects: int = 0,
    allow_private: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """Send one request (following up to `max_redirects` redirects, each vetted) and
    return the final status; FetchError on anything else."""

    async def run() -> Answer:
        current = url
        for hop in range(max_redirects + 1):
            status, location = await _exchange(
                current, method, headers or {}, body, allow_private, ssl_context
            )
            if status not in REDIRECT_STATUSES or location is None or hop == max_redirects:
                if status in REDIRECT_STATUSES and location is not None and max_redirects:
                    raise FetchError(
                        "redirects", f"more than {max_redirects} redirects (last to {location})"
                    )
                return Answer(status, current, location, hop)
            current = urljoin(current, location)
        raise AssertionError("unreachable")  # pragma: no cover

    try:
        return await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        raise FetchError("timeout", f"no answer from {url} within {timeout_s:g} s") from None
