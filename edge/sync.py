"""Keeps the in-memory link table in step with SQLite, whoever changed it.

Every link_poll_interval_s it asks its own connection for `PRAGMA data_version` (which
changes when another connection commits). Only then does it read `meta.rev`, and only when
that moved does it load the rows stamped with a newer revision: unchanged links are never
reloaded, and a change from the CLI or another process is served within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
from collections.abc import Callable
from typing import Final

from edge import catalog
from edge.db import Database, current_rev
from edge.links import LinkTable

log = logging.getLogger("linkedge.sync")

# Changed links applied per step of a refresh (~2 µs each): a slice never holds a
# worker's loop for more than ~1 ms.
APPLY_SLICE_ROWS: Final = 500


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def _load_all(conn: sqlite3.Connection, table: LinkTable) -> None:
    # The revision is read first: a change committed meanwhile has a newer one, so the
    # next poll applies it again (harmless) rather than never.
    rev = current_rev(conn)
    table.apply(rev, [], [], conn.execute("SELECT * FROM domains").fetchall())
    # A million new objects that all stay alive: the cyclic GC would walk them again and
    # again while they are made (a third of the load time), for nothing.
    gc.disable()
    try:
        for rows in catalog.servable_link_chunks(conn):
            table.apply(rev, rows)
    finally:
        gc.enable()


class LinkSync:
    def __init__(self, db: Database, table: LinkTable, interval_s: float) -> None:
        self.db = db
        self.table = table
        self.interval_s = interval_s
        self.data_version = -1
        self.on_change: Callable[[], None] | None = None  # after changes were applied
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> int:
        """Apply whatever changed since the table's revision; return links changed. A big
        change (an import of thousands of links) is applied a slice at a time, yielding
        to the loop in between: redirects never wait for it."""
        table = self.table
        rev, links, purged, domains = await self.db.run(catalog.changes_since, table.rev)
        if rev == table.rev:
            return 0
        old = table.rev
        changed = table.apply(old, [], purged, domains)
        for i in range(0, len(links), APPLY_SLICE_ROWS):
            if i:
                await asyncio.sleep(0)
            changed += table.apply(old, links[i : i + APPLY_SLICE_ROWS])
        table.rev = rev
        if self.on_change is not None:
            self.on_change()
        if old and changed:
            log.debug("link table: %d link(s) changed, now at rev %d", changed, rev)
        return changed

    async def load(self) -> int:
        """Fill the empty table, chunk by chunk on the database thread (before serving)."""
        self.data_version = await self.db.run(_data_version)
        await self.db.run(_load_all, self.table)
        return len(self.table)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="link-sync")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                version = await self.db.run(_data_version)
                if version != self.data_version:
                    self.data_version = version
                    await self.refresh()
                self.last_error = None
            except sqlite3.Error as exc:
                if self.last_error is None:
                    log.warning("checking for link changes failed: %s", exc)
                self.last_error = str(exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
