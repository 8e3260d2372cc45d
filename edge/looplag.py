"""How late an event loop runs its timers: a 10 ms ticker that measures each tick's delay.

Rules: the one measure of event-loop stalls, in every process (a worker's redirects wait
exactly this long; the collector's admin answers too). It costs one timer callback per
TICK_S. `recent_max_s` is the worst delay of the last one or two WINDOW_S windows;
`stalls` counts ticks later than each STALL_BOUNDS_S bound since start.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

TICK_S: Final = 0.01
WINDOW_S: Final = 10.0
STALL_BOUNDS_S: Final = (0.005, 0.05, 0.5)


class LoopLag:
    __slots__ = (
        "worst_s",
        "stalls",
        "_window_max",
        "_previous_max",
        "_window_start",
        "_due",
        "_handle",
    )

    def __init__(self) -> None:
        self.worst_s = 0.0
        self.stalls = [0] * len(STALL_BOUNDS_S)
        self._window_max = 0.0
        self._previous_max = 0.0
        self._window_start = time.monotonic()
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = time.monotonic() + TICK_S
        self._handle = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        late = max(0.0, now - self._due)
        if late > self._window_max:
            self._window_max = late
        if late > self.worst_s:
            self.worst_s = late
        for i, bound in enumerate(STALL_BOUNDS_S):
            if late > bound:
                self.stalls[i] += 1
        if now - self._window_start >= WINDOW_S:
            self._previous_max, self._window_max = self._window_max, 0.0
            self._window_start = now
        self._due = now + TICK_S
        self._handle = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    @property
    def recent_max_s(self) -> float:
        return max(self._window_max, self._previous_max)

    def report(self) -> dict[str, object]:
        return {
            "recent_max_s": round(self.recent_max_s, 6),
            "worst_s": round(self.worst_s, 6),
            "stalls": {
                f"{b * 1000:g}ms": n for b, n in zip(STALL_BOUNDS_S, self.stalls, strict=True)
            },
        }

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
