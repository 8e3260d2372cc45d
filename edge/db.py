"""An aiosqlite connection that runs our store functions on its own thread.

Rules: SQLite work in the server never runs on the event loop. Each `Database` owns one
aiosqlite connection (one thread); `run(fn, *args)` calls `fn(conn, *args)` with the plain
sqlite3 connection on that thread, so the same store.py functions serve the CLI
(synchronously) and the server (here). aiosqlite has no public "run this function on your
thread" call; `_execute` is the one its own methods use, and this is the only place we use it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

from edge import store

T = TypeVar("T")


class Database:
    def __init__(self, path: str, *, timeout_ms: int = store.BUSY_TIMEOUT_MS) -> None:
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
        await self.run(store.configure, self.timeout_ms)
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
