"""Bearer tokens for the admin API.

Rules of this module:
- Only a token's SHA-256 is stored (edge/catalog.py `api_tokens`); the secret is shown once,
  when it is created. A presented token is hashed and compared with every active hash by
  `hmac.compare_digest`, without stopping at a match, so timing says nothing about which
  hash matched or how much of it did.
- Active hashes are cached in memory and re-read at most every TOKEN_REFRESH_S, and at once
  after the API changes tokens: a token revoked with the CLI stops working within
  TOKEN_REFRESH_S, one revoked through the API at once. A token the cache does not know is
  looked up in the database before a 401 (bounded: MISS_LOOKUPS_PER_S), so one made with
  the CLI works on the very next request.
- `last_used_at` is written at most once per TOUCH_INTERVAL_S per token, off the request.
- Scopes (edge/catalog.py SCOPES): every route needs one (`required_scope`), checked with
  the token before routing. `admin` may do everything; `links` may read and change links
  (import, launch campaigns); `read` may read (every GET but the token list); `events`
  may only post conversions (POST /api/events). A token without the scope gets 403.
- Bootstrap (server start): LINKEDGE_ADMIN_TOKEN, when set, is stored (its hash) if it is
  not already (one too short to be safe makes the server refuse to start, before anything
  else starts); then, if no active token exists, one named "admin" is created and printed
  once on stdout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import sqlite3
import time
from typing import Final

from edge import catalog
from edge.db import Database
from edge.errors import InvalidField, LinkedgeError

log = logging.getLogger("linkedge.admin")

TOKEN_REFRESH_S: Final = 2.0
# An unknown token is looked up in the database at most this many times a second; a miss
# is remembered this long (MISS_CACHE_SIZE misses at most).
MISS_LOOKUPS_PER_S: Final = 20
MISS_TTL_S: Final = 5.0
MISS_CACHE_SIZE: Final = 10_000
TOUCH_INTERVAL_S: Final = 60.0
# A token supplied through the environment must be at least this long: secrets.token_urlsafe
# (what `linkedge token create` uses) gives 43 characters; 24 random characters resist
# guessing for good even against an attacker with our hash.
MIN_SUPPLIED_TOKEN_LENGTH: Final = 24
ENV_TOKEN: Final = "LINKEDGE_ADMIN_TOKEN"
TOKEN_PRINT_PREFIX: Final = "linkedge admin token (shown once): "


class Unauthorized(LinkedgeError):
    status = 401
    code = "unauthorized"
    headers = (("WWW-Authenticate", 'Bearer realm="linkedge"'),)


class Forbidden(LinkedgeError):
    status = 403
    code = "forbidden"


# Routes whose writes need the `links` scope (reads need `read`); everything else written
# (domains, UTM lists, tokens) needs `admin`.
_LINK_WRITES: Final = ("links", "import", "campaigns")


def required_scope(method: str, segments: list[str]) -> str:
    """The scope a request needs (the path's segments after the leading /)."""
    area = segments[1] if len(segments) > 1 else ""
    if area == "events" and method == "POST":
        return "events"
    if area == "tokens":
        return "admin"
    if method in ("GET", "HEAD"):
        return "read"
    if area in _LINK_WRITES:
        return "links"
    return "admin"


def allows(scopes: frozenset[str], needed: str) -> bool:
    """Whether a token with `scopes` may do what needs `needed`."""
    return "admin" in scopes or needed in scopes or (needed == "read" and "links" in scopes)


def check_scope(scopes: frozenset[str], method: str, segments: list[str]) -> None:
    needed = required_scope(method, segments)
    if not allows(scopes, needed):
        have = ", ".join(sorted(scopes)) or "none"
        raise Forbidden(
            f"this token's scopes ({have}) do not allow {method} /{'/'.join(segments)}: "
            f"it needs {needed} (or admin)",
            "scopes",
        )


def check_supplied_token(secret: str) -> None:
    if len(secret) < MIN_SUPPLIED_TOKEN_LENGTH or not secret.isascii() or not secret.isprintable():
        raise InvalidField(
            f"{ENV_TOKEN} must be at least {MIN_SUPPLIED_TOKEN_LENGTH} printable ASCII "
            "characters (e.g. the output of `openssl rand -hex 24`)",
            ENV_TOKEN,
        )
    if any(c.isspace() for c in secret):
        raise InvalidField(f"{ENV_TOKEN} must not contain spaces", ENV_TOKEN)


def bootstrap(conn: sqlite3.Connection, supplied: str | None) -> str | None:
    """Store a supplied token; create the first token if none is active.

    Returns the secret of a newly created token (to print once), else None.
    """
    if supplied:
        check_supplied_token(supplied)  # the supervisor refused to start on a bad one
        if catalog.add_token(conn, "env", supplied) is not None:
            log.info("stored the token from %s", ENV_TOKEN)
    if catalog.active_token_hashes(conn):
        return None
    _record, secret = catalog.create_token(conn, "admin")
    return secret


class TokenCache:
    """The active token hashes, kept fresh; `authenticate()` checks one request."""

    def __init__(self, reader: Database, writer: Database) -> None:
        self.reader = reader
        self.writer = writer
        self.hashes: list[tuple[int, bytes]] = []
        self.scopes: dict[int, frozenset[str]] = {}  # token id -> what it may do
        self.loaded_at = 0.0  # monotonic time of the last refresh
        self._touched: dict[int, float] = {}
        self._touching: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Future[None] | None = None
        # bounded look-ups of tokens the cache does not know
        self._misses: dict[bytes, float] = {}
        self._window_start = 0.0
        self._window_lookups = 0

    async def refresh(self) -> None:
        self.scopes = await self.reader.run(catalog.active_token_scopes)
        self.hashes = await self.reader.run(catalog.active_token_hashes)
        self.loaded_at = time.monotonic()

    async def _maybe_refresh(self) -> None:
        if time.monotonic() - self.loaded_at < TOKEN_REFRESH_S:
            return
        # One refresh at a time; concurrent requests wait for it.
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refreshing = fut
        try:
            await self.refresh()
            fut.set_result(None)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs it twice
            raise
        finally:
            self._refreshing = None

    async def authenticate(self, header: bytes | None) -> int:
        """The token id of an `Authorization: Bearer ...` header, or raise Unauthorized."""
        if header is None:
            raise Unauthorized("an API token is required: send `Authorization: Bearer <token>`")
        scheme, _, value = header.partition(b" ")
        token = value.strip()
        if scheme.lower() != b"bearer" or not token:
            raise Unauthorized("the Authorization header must be `Bearer <token>`")
        await self._maybe_refresh()
        digest = hashlib.sha256(token).digest()
        found = 0
        for token_id, stored in self.hashes:
            if hmac.compare_digest(digest, stored):
                found = token_id
        if not found:
            found = await self._look_up(digest)
        if not found:
            raise Unauthorized("invalid or revoked API token")
        self._touch(found)
        return found

    async def _look_up(self, digest: bytes) -> int:
        """A token the cache does not know may have been made a moment ago (`linkedge token
        create`, another process): look it up once in the database. Bounded: at most
        MISS_LOOKUPS_PER_S a second, and a miss is remembered for MISS_TTL_S, so a stream
        of random tokens costs no database storm."""
        now = time.monotonic()
        if self._misses.get(digest, 0.0) > now:
            return 0
        if now - self._window_start >= 1.0:
            self._window_start, self._window_lookups = now, 0
        if self._window_lookups >= MISS_LOOKUPS_PER_S:
            return 0
        self._window_lookups += 1
        token_id = await self.reader.run(catalog.active_token_id, digest)
        if token_id is None:
            if len(self._misses) >= MISS_CACHE_SIZE:
                self._misses.clear()
            self._misses[digest] = now + MISS_TTL_S
            return 0
        await self.refresh()  # it is real: take every current token in
        return token_id

    def _touch(self, token_id: int) -> None:
        now = time.monotonic()
        if now - self._touched.get(token_id, -TOUCH_INTERVAL_S) < TOUCH_INTERVAL_S:
            return
        self._touched[token_id] = now
        task = asyncio.get_running_loop().create_task(self._write_touch(token_id))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def _write_touch(self, token_id: int) -> None:
        try:
            await self.writer.run(catalog.touch_token, token_id)
        except (sqlite3.Error, RuntimeError) as exc:  # RuntimeError: closed while stopping
            log.debug("could not record the use of token %d: %s", token_id, exc)

    async def close(self) -> None:
        if self._touching:
            await asyncio.gather(*self._touching, return_exceptions=True)
