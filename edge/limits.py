"""Click limits across many workers: the collector leases budgets, the workers spend them.

Rules:
- A link with `max_clicks` serves its URL to at most that many human clicks (bots, HEAD,
  prefetches and test clicks never spend budget), then its overflow URL (or 410).
- Exact upper bound, without a round trip per click: the collector (Budgets) is the one
  authority. It grants each worker leases, carved from what is left, so that
      spent + sum(outstanding leases) <= limit
  always holds; a lease stays outstanding until the clicks spent from it are written
  (they come back with their batch, in the same transaction that adds them to
  `link_spent`). A worker (Leases) spends from its budget on the redirect path (a dict
  update) and asks for more ahead of need (when it holds under LOW_WATER).
- The price of exactness is the other way round: a worker that ran out may serve the
  overflow while another still holds unspent lease (at most one lease per worker, never
  more than the workers' lease sizes together). A worker whose collector is away keeps
  its budget and serves the overflow once it is spent.
- After a collector restart, each worker says in its HELLO what it holds (unspent budget
  and spent-but-unwritten clicks), which the new collector takes as outstanding: the only
  overshoot possible is a grant made before every worker has said so (bounded by one
  lease per worker), said in docs/api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Final

# A worker asks for this many clicks at a time (at most), and asks again when it holds
# fewer than LOW_WATER of a link.
LEASE_CLICKS: Final = 100
LOW_WATER: Final = 20
# A link the collector had nothing left for is asked for again at most this often (a
# change to the catalog asks at once: its limit may have been raised).
EMPTY_RETRY_S: Final = 1.0
# A gone worker's outstanding leases are kept this long (its last batches may still be
# read and written) before they return to the pool.
GONE_GRACE_S: Final = 5.0


class Budgets:
    """The collector's side: limits, what is spent, what is leased to which worker epoch."""

    def __init__(self) -> None:
        self.limits: dict[int, int] = {}
        self.spent: dict[int, int] = {}
        self.outstanding: dict[int, dict[int, int]] = {}  # epoch -> link -> clicks
        self._gone: dict[int, float] = {}  # epoch -> when its leases return to the pool

    def set_limits(self, limits: dict[int, int], spent: dict[int, int]) -> None:
        """The limited links and their spent counts as SQLite has them."""
        self.limits = limits
        for link_id, n in spent.items():
            if n > self.spent.get(link_id, 0):
                self.spent[link_id] = n

    def available(self, link_id: int) -> int:
        limit = self.limits.get(link_id)
        if limit is None:
            return 0
        leased = sum(held.get(link_id, 0) for held in self.outstanding.values())
        return max(0, limit - self.spent.get(link_id, 0) - leased)

    def grant(self, epoch: int, asks: dict[int, int], workers: int) -> dict[int, int]:
        """What to lease to a worker epoch for its asks (0: the limit is reached, or all
        that is left is leased to others)."""
        self._expire()
        out: dict[int, int] = {}
        held = self.outstanding.setdefault(epoch, {})
        for link_id, wanted in asks.items():
            free = self.available(link_id)
            n = min(int(wanted), LEASE_CLICKS, max(1, free // max(1, 2 * workers))) if free else 0
            n = min(n, free)
            if n:
                held[link_id] = held.get(link_id, 0) + n
            out[link_id] = n
        return out

    def hello(self, epoch: int, held: dict[int, int]) -> None:
        """A worker (re)connected holding these leases (after a collector restart)."""
        self._gone.pop(epoch, None)
        if held and epoch not in self.outstanding:
            self.outstanding[epoch] = {int(k): int(v) for k, v in held.items() if v > 0}

    def written(self, epoch: int, spent: dict[int, int]) -> None:
        """Clicks of an epoch that spent budget are written: spent, no longer leased."""
        held = self.outstanding.get(epoch, {})
        for link_id, n in spent.items():
            self.spent[link_id] = self.spent.get(link_id, 0) + n
            if link_id in held:
                held[link_id] = max(0, held[link_id] - n)

    def lost(self, epoch: int) -> None:
        self._gone[epoch] = time.monotonic() + GONE_GRACE_S

    def _expire(self) -> None:
        now = time.monotonic()
        for epoch in [e for e, at in self._gone.items() if at <= now]:
            del self._gone[epoch]
            self.outstanding.pop(epoch, None)


class Leases:
    """A worker's side: the budget it holds per limited link, spent on the redirect path."""

    __slots__ = ("budget", "asking", "empty", "spent", "unwritten", "_ask", "_answered")

    def __init__(self, ask: Callable[[dict[int, int]], None]) -> None:
        self.budget: dict[int, int] = {}
        self.asking: set[int] = set()
        self.empty: dict[int, float] = {}  # link -> when the collector had nothing left
        self.spent: dict[int, int] = {}  # spent since the last batch was shipped
        self.unwritten: dict[int, dict[int, int]] = {}  # batch seq -> its spent
        self._ask = ask
        self._answered: asyncio.Event | None = None  # set when a LEASE comes in

    def take(self, link_id: int) -> bool:
        left = self.budget.get(link_id, 0)
        if left <= 0:
            self.ask([link_id])
            return False
        self.budget[link_id] = left - 1
        self.spent[link_id] = self.spent.get(link_id, 0) + 1
        if left - 1 < LOW_WATER:
            self.ask([link_id])
        return True

    def exhausted(self, link_id: int) -> bool:
        return self.budget.get(link_id, 0) <= 0 and link_id in self.empty

    def ask(self, link_ids: Iterable[int], *, force: bool = False) -> None:
        """Ask the collector for budget (not again while an ask is in flight, and for a
        link it had nothing left for, not before EMPTY_RETRY_S unless `force`)."""
        asking, empty = self.asking, self.empty
        if empty and not force:
            retry = time.monotonic() - EMPTY_RETRY_S
            wanted = {
                i: LEASE_CLICKS
                for i in link_ids
                if i not in asking and empty.get(i, retry) <= retry
            }
        else:
            wanted = {i: LEASE_CLICKS for i in link_ids if i not in asking}
        if wanted:
            self.asking.update(wanted)
            self._ask(wanted)

    def granted(self, grants: dict[int, int]) -> None:
        if self._answered is not None:
            self._answered.set()
        for link_id, n in grants.items():
            self.asking.discard(link_id)
            if n > 0:
                self.budget[link_id] = self.budget.get(link_id, 0) + n
                self.empty.pop(link_id, None)
            else:
                self.empty[link_id] = time.monotonic()

    def shipped(self, seq: int) -> dict[int, int]:
        """What the batch `seq` spent (the clicks in it), kept until it is written."""
        spent, self.spent = self.spent, {}
        if spent:
            self.unwritten[seq] = spent
        return spent

    def written(self, seq: int) -> None:
        for s in [s for s in self.unwritten if s <= seq]:
            del self.unwritten[s]

    def held(self) -> dict[int, int]:
        """Unspent budget plus spent-but-unwritten clicks, per link: what a new collector
        must count as leased to us."""
        out = dict(self.budget)
        for spent in (self.spent, *self.unwritten.values()):
            for link_id, n in spent.items():
                out[link_id] = out.get(link_id, 0) + n
        return {k: v for k, v in out.items() if v > 0}

    async def prepare(self, link_ids: Iterable[int], timeout_s: float) -> None:
        """Ask for the budgets of these links and wait (at most `timeout_s`) until none of
        them is still asked for: a new limited link holds a lease before it is served."""
        wanted = [i for i in link_ids if self.budget.get(i, 0) < LOW_WATER and i not in self.empty]
        if not wanted:
            return
        self.ask(wanted)
        deadline = time.monotonic() + timeout_s
        while any(i in self.asking for i in wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._answered = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), left)

    def reconnected(self) -> None:
        """A new connection: asks in flight on the old one got no answer."""
        self.asking.clear()
