"""The change history of links and domains (the campaign's memory): what changed, when,
from what to what, and who changed it.

Rules of this module:
- A change is recorded by edge/catalog.py inside the Transaction that makes it, so the
  history and the change commit (or roll back) together: a change never lacks its record
  and a record never describes a change that did not happen.
- Who: the API runs each write inside `acting_as(digest)` (the SHA-256 of the request's
  bearer token; the token's id is looked up on the writer's connection, in the same
  transaction); a write outside it (the CLI, an import run from a terminal) is recorded
  with `via = 'cli'` and no token.
- Values are stored as the catalog stores them (text, JSON text for tags, rules and
  variants), so from/to are exact; admin/history.py decodes them for the API.
- Only fields whose stored value changed are recorded; bookkeeping columns (rev,
  updated_at, location) never are.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final

# Link columns whose changes are not history: derived from others or bookkeeping.
_NOT_RECORDED: Final = frozenset({"rev", "updated_at", "location", "id", "created_at"})

_actor = threading.local()  # the writer thread's current API caller, if any


@contextlib.contextmanager
def acting_as(token_digest: bytes | None, via: str = "api") -> Iterator[None]:
    """Record the changes made inside the block as made through `via` by the token whose
    SHA-256 is `token_digest` (writer thread only; blocks do not nest)."""
    _actor.digest = token_digest
    _actor.via = via
    try:
        yield
    finally:
        _actor.digest = None
        _actor.via = None


def _who(conn: sqlite3.Connection) -> tuple[int | None, str]:
    via = getattr(_actor, "via", None)
    if via is None:
        return None, "cli"
    digest = getattr(_actor, "digest", None)
    if digest is None:
        return None, via
    row = conn.execute("SELECT id FROM api_tokens WHERE token_hash = ?", (digest,)).fetchone()
    return (int(row[0]) if row else None), via


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def record(
    conn: sqlite3.Connection,
    ts_ms: int,
    changes: Iterable[tuple[str, Any, Any]],
    *,
    link_id: int | None = None,
    domain_id: int | None = None,
) -> int:
    """Append (field, from, to) changes of one link or domain (inside the caller's
    Transaction); returns how many were recorded."""
    rows = [(f, _text(a), _text(b)) for f, a, b in changes if _text(a) != _text(b)]
    if not rows:
        return 0
    token_id, via = _who(conn)
    conn.executemany(
        "INSERT INTO change_history (ts, link_id, domain_id, field, before, after, token_id, via)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(ts_ms, link_id, domain_id, f, a, b, token_id, via) for f, a, b in rows],
    )
    return len(rows)


def row_changes(before: Any, after: Any, fields: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """(field, from, to) for each of `fields` whose stored value differs (rows or dicts)."""
    return [
        (name, before[name], after[name])
        for name in fields
        if name not in _NOT_RECORDED and before[name] != after[name]
    ]
