# geo/logs: log lines for failures that can happen once per request, rate-limited.
#
# Rules of this module:
# - A failure a client can trigger per request (a lookup in a corrupt database, a parse
#   that raises, an unexpected error answering a request) is logged at most once per
#   INTERVAL_S per kind, with how many were held back since the last line: a flood of
#   them costs a log line every few seconds, not one per request.
# - The bottom floor's one shared helper (geo/ imports nothing of ours; edge/ and admin/
#   use it too). Thread-safe enough: a lost count under a race only changes a number in
#   a log line.
from __future__ import annotations

import logging
import time
from typing import Any, Final

INTERVAL_S: Final = 10.0


class LogLimiter:
    """`limiter.log(logger, level, kind, msg, *args)` logs if `kind` was not logged in
    the last INTERVAL_S; otherwise counts it for the next line."""

    __slots__ = ("_last", "_held", "interval_s")

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(
        self,
        logger: logging.Logger,
        level: int,
        kind: str,
        msg: str,
        *args: Any,
        exc_info: Any = None,
    ) -> bool:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            msg += f" (and {held} more like it in the last {self.interval_s:g} s)"
        logger.log(level, msg, *args, exc_info=exc_info)
        return True
