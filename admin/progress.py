"""Progress of a long job on a terminal: count, rate and, when the total is known, ETA.

Rules: on a terminal (stderr is a TTY) one line is rewritten in place at most every
UPDATE_INTERVAL_S, and finished with a newline; elsewhere (a pipe, a log, cron) nothing is
printed while the job runs, so scripts and logs see only the command's own result lines.
Counting is one addition and a clock read per REPORT_EVERY items: cheap enough for a loop
over millions of rows.
"""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

UPDATE_INTERVAL_S: Final = 0.25  # a person reads a line 4 times a second at most
REPORT_EVERY: Final = 256  # items between clock reads


def _number(n: float) -> str:
    return f"{n:,.0f}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """`with Progress("import", total=n, unit="rows") as p: ... p.advance()`."""

    __slots__ = ("label", "total", "unit", "stream", "live", "done", "_started", "_shown", "_n")

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "items",
        stream: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.done = 0
        self._started = time.monotonic()
        self._shown = 0.0
        self._n = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._n += n
        if self._n >= REPORT_EVERY:
            self._n = 0
            if self.live:
                now = time.monotonic()
                if now - self._shown >= UPDATE_INTERVAL_S:
                    self._shown = now
                    self._write(self.line(now), end="\r")

    def line(self, now: float | None = None) -> str:
        """`import: 12,345 of 50,000 rows (24%), 8,120 rows/s, ETA 5s`."""
        elapsed = max(1e-9, (now if now is not None else time.monotonic()) - self._started)
        rate = self.done / elapsed
        text = f"{self.label}: {_number(self.done)}"
        if self.total:
            text += f" of {_number(self.total)} {self.unit} ({self.done * 100 // self.total}%)"
        else:
            text += f" {self.unit}"
        text += f", {_number(rate)} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        elif self.done and (self.total is None or self.done >= self.total):
            text += f", {_duration(elapsed)}"
        return text

    def _write(self, text: str, end: str) -> None:
        self.stream.write("\x1b[2K" + text + end)  # clear the line, then draw it
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live and self.done:
            self._write(self.line(), end="\n")
