"""Destination checks: every active destination URL is checked now and then, and what it
answered is kept in `destination_checks` (with its last good time).

Rules of this module:
- What is checked: the URL, the rules' and variants' URLs and the overflow URL of every
  link that is not archived, disabled or expired, once per distinct URL however many
  links share it; plus the original URL of a link an alert failed over
  (`alerts.failover_from`), so its recovery is seen.
- How: HEAD with at most MAX_REDIRECTS redirects (each hop's address vetted:
  admin/outbound.py); a HEAD answered 4xx/5xx or that breaks is tried again as GET (many
  servers answer HEAD wrongly). A status below 400 at the end is good. A failed check is
  confirmed once CONFIRM_DELAY_S later before it counts, so one dropped packet does not
  page anybody.
- Errors kept: `http` (4xx/5xx, with the status), `timeout`, `tls`, `dns`, `connect`,
  `protocol`, `redirects`. A URL refused by address vetting (`refused`: private,
  loopback, link-local, unless allow_private_fetch) is recorded as not checked (ok NULL),
  never as broken.
- When: every destination_check_interval_s; a failing URL backs off, checked after 1, 2,
  4 ... 16 intervals. At most MAX_PARALLEL checks at once and MAX_PER_ROUND a round, so a
  big link table is spread over rounds, never a burst. The first round starts
  FIRST_ROUND_S after start (or one interval, if shorter).
- The SQL runs on the checker's own reader connection and the writer's thread; the loop
  only awaits sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import Any, Final

import orjson

from admin.outbound import FetchError, fetch
from edge.db import Database, Transaction

log = logging.getLogger("linkedge.checks")

MAX_REDIRECTS: Final = 3
MAX_PARALLEL: Final = 8
MAX_PER_ROUND: Final = 200
MAX_BACKOFF: Final = 16  # a failing URL waits at most this many intervals
FIRST_ROUND_S: Final = 30.0
CONFIRM_DELAY_S: Final = 1.0


def destinations_of(row: sqlite3.Row | dict[str, Any]) -> list[str]:
    """Every URL a link can send a visitor to, its own first."""
    urls = [row["url"]]
    for name in ("rules", "variants"):
        text = row[name]
        if text:
            value = orjson.loads(text) if isinstance(text, str | bytes) else text
            urls += [item["url"] for item in value if isinstance(item, dict) and "url" in item]
    if row["overflow_url"]:
        urls.append(row["overflow_url"])
    return list(dict.fromkeys(urls))


def active_destinations(conn: sqlite3.Connection, now_ms: int) -> dict[str, list[int]]:
    """url -> ids of the active links that send visitors there (and failed-over ones)."""
    out: dict[str, list[int]] = {}
    rows = conn.execute(
        "SELECT id, url, rules, variants, overflow_url FROM links WHERE archived_at IS NULL "
        "AND disabled = 0 AND (expires_at IS NULL OR expires_at > ?)",
        (now_ms,),
    )
    for row in rows:
        for url in destinations_of(row):
            out.setdefault(url, []).append(row["id"])
    for url, link_id in conn.execute(
        "SELECT failover_from, link_id FROM alerts WHERE failover_from IS NOT NULL"
    ):
        out.setdefault(url, []).append(link_id)
    return out


def due(conn: sqlite3.Connection, urls: list[str], now_ms: int, limit: int) -> list[str]:
    """The URLs whose next check is due (never checked ones first), at most `limit`."""
    known = {
        row[0]: row[1] for row in conn.execute("SELECT url, next_check_at FROM destination_checks")
    }
    fresh = [u for u in urls if u not in known]
    waiting = sorted((known[u], u) for u in urls if u in known and known[u] <= now_ms)
    return (fresh + [u for _t, u in waiting])[:limit]


def record(
    conn: sqlite3.Connection, url: str, result: dict[str, Any], interval_ms: int, now_ms: int
) -> None:
    with Transaction(conn):
        row = conn.execute(
            "SELECT failures, last_good_at, failing_since FROM destination_checks WHERE url = ?",
            (url,),
        ).fetchone()
        failures = row["failures"] if row else 0
        last_good = row["last_good_at"] if row else None
        failing_since = row["failing_since"] if row else None
        ok = result["ok"]
        if ok is True:
            failures, last_good, failing_since = 0, now_ms, None
        elif ok is False:
            failures += 1
            failing_since = failing_since or now_ms
        wait = interval_ms * min(MAX_BACKOFF, 2 ** max(0, failures - 1))
        conn.execute(
            "INSERT OR REPLACE INTO destination_checks (url, checked_at, ok, status, error_kind, "
            "error, last_good_at, failing_since, failures, next_check_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                url,
                now_ms,
                None if ok is None else int(ok),
                result["status"],
                result["error_kind"],
                result["error"],
                last_good,
                failing_since,
                failures,
                now_ms + wait,
            ),
        )


def check_rows(conn: sqlite3.Connection, urls: list[str] | None = None) -> list[dict[str, Any]]:
    if urls is None:
        rows = conn.execute("SELECT * FROM destination_checks ORDER BY url").fetchall()
    else:
        rows = []
        for i in range(0, len(urls), 500):
            part = urls[i : i + 500]
            marks = ", ".join("?" * len(part))
            rows += conn.execute(
                f"SELECT * FROM destination_checks WHERE url IN ({marks})", part
            ).fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["ok"] = None if item["ok"] is None else bool(item["ok"])
        out.append(item)
    return out


async def check_url(
    url: str, timeout_s: float, allow_private: bool, confirm_delay_s: float = CONFIRM_DELAY_S
) -> dict[str, Any]:
    """{"ok": True/False/None, "status", "error_kind", "error"} of one destination."""
    result = await _check_once(url, timeout_s, allow_private)
    if result["ok"] is False:
        await asyncio.sleep(confirm_delay_s)
        result = await _check_once(url, timeout_s, allow_private)
    return result


async def _check_once(url: str, timeout_s: float, allow_private: bool) -> dict[str, Any]:
    error: FetchError | None = None
    status: int | None = None
    for method in ("HEAD", "GET"):
        try:
            answer = await fetch(
                url,
                method,
                timeout_s=timeout_s,
                max_redirects=MAX_REDIRECTS,
                allow_private=allow_private,
            )
        except FetchError as exc:
            if exc.kind in ("refused", "dns", "timeout", "tls", "redirects"):
                error = exc  # GET would meet the same
                break
            error, status = exc, None
            continue
        if answer.status < 400:
            return {"ok": True, "status": answer.status, "error_kind": None, "error": None}
        error, status = None, answer.status
    if error is not None:
        ok = None if error.kind == "refused" else False
        return {"ok": ok, "status": None, "error_kind": error.kind, "error": error.message}
    return {"ok": False, "status": status, "error_kind": "http", "error": f"HTTP {status}"}


class DestinationChecker:
    def __init__(self, runtime: Any, db: Database) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.db = db  # the alert engine's reader connection
        self.task: asyncio.Task[None] | None = None
        self.checked = 0
        self.rounds = 0
        self.wake = asyncio.Event()

    @property
    def interval_s(self) -> float:
        return float(self.config.destination_check_interval_s)

    def start(self) -> None:
        if self.interval_s > 0:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        await asyncio.sleep(min(FIRST_ROUND_S, self.interval_s))
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a locked database: logged, the next round runs
                log.exception("destination check round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval_s)
            self.wake.clear()

    async def round(self) -> int:
        """Check the URLs that are due; return how many were checked."""
        now = int(time.time() * 1000)
        urls = await self.db.run(active_destinations, now)
        todo = await self.db.run(due, list(urls), now, MAX_PER_ROUND)
        gate = asyncio.Semaphore(MAX_PARALLEL)
        interval_ms = int(self.interval_s * 1000)
        confirm = min(CONFIRM_DELAY_S, self.interval_s)

        async def one(url: str) -> None:
            async with gate:
                result = await check_url(
                    url,
                    self.config.destination_check_timeout_s,
                    self.config.allow_private_fetch,
                    confirm,
                )
                await self.runtime.writer.run(
                    record, url, result, interval_ms, int(time.time() * 1000)
                )

        await asyncio.gather(*(one(u) for u in todo))
        self.checked += len(todo)
        self.rounds += 1
        return len(todo)
