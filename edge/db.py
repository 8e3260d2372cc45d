"""The SQLite gateway: connections, transactions, the revision counter, the server's thread.

Rules:
- SQLite in WAL mode is the single source of truth. Every connection gets the same pragmas
  (`connect()`); a running server writes through one connection only.
- Transactions are explicit and one shape: `with Transaction(conn):` is one atomic unit.
  Opened with no transaction active it is BEGIN IMMEDIATE ... COMMIT; inside one it is a
  SAVEPOINT, so a write function composed into a bigger write joins it and a failure
  inside rolls back only its own part. Every write function in edge/ opens its own
  Transaction: none silently depends on its caller having opened one.
- Every change to a link or domain bumps one global revision (`meta.rev`, `next_rev`) and
  stamps the row with it, so a running server reloads exactly the rows that changed.
- Times are integer Unix milliseconds (UTC).
- `Database` runs these synchronous functions on one aiosqlite thread: SQLite work in a
  server never runs on its event loop, and the CLI calls the same functions directly.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import aiosqlite

# How long a statement waits for a lock another connection holds before failing.
BUSY_TIMEOUT_MS: Final = 5000

T = TypeVar("T")
_savepoints = itertools.count(1)
# Called before the outermost Transaction of a connection commits (edge/pgstore.py sends
# the catalog changes to the shared link store there); raising rolls the transaction back.
# Keyed by id(conn), holding conn itself: sqlite3 connections take no weak references.
_before_commit: dict[int, tuple[sqlite3.Connection, Callable[[sqlite3.Connection], None]]] = {}


def set_before_commit(
    conn: sqlite3.Connection, hook: Callable[[sqlite3.Connection], None] | None
) -> None:
    """Install (or with None remove) the connection's before-commit hook."""
    if hook is None:
        _before_commit.pop(id(conn), None)
    else:
        _before_commit[id(conn)] = (conn, hook)


def now_ms() -> int:
    return int(time.time() * 1000)


def configure(conn: sqlite3.Connection, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """linkedge's pragmas, the same on every connection."""
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect(path: str, *, timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """A connection with linkedge's pragmas; autocommit mode, transactions explicit."""
    conn = sqlite3.connect(
        path, timeout=timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    configure(conn, timeout_ms)
    return conn


class Transaction:
    """`with Transaction(conn):` one atomic unit of work (see the module rules).

    `discard()` inside the block makes it end like a failure (rolled back) without an
    exception: a bulk write that reports every refused item at once uses it."""

    __slots__ = ("conn", "savepoint", "discarded")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.savepoint: str | None = None
        self.discarded = False

    def __enter__(self) -> Transaction:
        if self.conn.in_transaction:
            self.savepoint = f"linkedge_{next(_savepoints)}"
            self.conn.execute(f"SAVEPOINT {self.savepoint}")
        else:
            self.conn.execute("BEGIN IMMEDIATE")
        return self

    def discard(self) -> None:
        self.discarded = True

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        ok = exc_type is None and not self.discarded
        if self.savepoint is None:
            hook = _before_commit.get(id(self.conn)) if ok else None
            if hook is not None and hook[0] is self.conn:
                try:
                    hook[1](self.conn)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
            self.conn.execute("COMMIT" if ok else "ROLLBACK")
        else:
            if not ok:
                self.conn.execute(f"ROLLBACK TO {self.savepoint}")
            self.conn.execute(f"RELEASE {self.savepoint}")


def current_rev(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'rev'").fetchone()[0])


def next_rev(conn: sqlite3.Connection) -> int:
    """Bump the global revision (inside the caller's Transaction) and return it."""
    row = conn.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'rev' RETURNING value"
    ).fetchone()
    return int(row[0])


# executemany() releases the GIL around every row's sqlite3_step: with an event loop busy
# on the other side of the GIL, each row then waits for a GIL hand-off (measured: 4 µs a
# row alone, 81 µs a row beside a busy thread). One statement of many rows binds them all,
# then steps once.
_MAX_VARIABLES: Final = 32766  # SQLITE_MAX_VARIABLE_NUMBER since SQLite 3.32
_ROWS_PER_STATEMENT: Final = 256


def insert_rows(
    conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> None:
    """`{head} VALUES (?, ...), (?, ...) {tail}` for rows of equal length, many a statement
    (inside the caller's Transaction)."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, min(_ROWS_PER_STATEMENT, _MAX_VARIABLES // width))
    one = "(" + ", ".join("?" * width) + ")"
    chain = itertools.chain.from_iterable
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        values = ", ".join([one] * len(part))
        conn.execute(f"{head} VALUES {values} {tail}", list(chain(part)))


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits (PRAGMA data_version): a cheap poll."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


class Database:
    """One aiosqlite connection (one thread); `run(fn, *args)` calls `fn(conn, *args)`
    with the plain sqlite3 connection on that thread. aiosqlite has no public "run this
    function on your thread" call; `_execute` is the one its own methods use, and this is
    the only place we use it."""

    def __init__(self, path: str, *, timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.timeout_ms = timeout_ms
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> Database:
        self._db = await aiosqlite.connect(
            self.path,
            timeout=self.timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        await self.run(configure, self.timeout_ms)
        return self

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        db = self._db
        if db is None:
            raise RuntimeError("database is not open")
        conn: sqlite3.Connection = db._conn
        result: T = await db._execute(fn, conn, *args)  # type: ignore[no-untyped-call]
        return result

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
