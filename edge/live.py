"""In-process live counters: clicks per second and per minute, per link and overall.

Rules:
- Fed by the flusher once per batch with per-(link, second) aggregates (already split into
  human and bot), never per request, so the redirect path pays nothing for them.
- Fixed memory per active link: a ring of the last SECONDS_KEPT seconds and a ring of the
  last MINUTES_KEPT minutes, as `array('I')`. Overall totals keep one ring per second for
  the whole hour. A link gets its rings on its first click.
- Answers "clicks in the last N seconds" and per-second / per-minute series without SQL.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Final

SECONDS_KEPT: Final = 900  # per link: exact per-second counts for the last 15 minutes
MINUTES_KEPT: Final = 61  # per link: per-minute counts for the last hour (+ the current one)
OVERALL_SECONDS_KEPT: Final = 3600  # overall: per-second counts for the last hour
WINDOWS_S: Final = (60, 300, 900, 3600)


class Ring:
    """Counts (clicks, humans) per time bucket in two parallel rings of `size` buckets."""

    __slots__ = ("size", "clicks", "humans", "last")

    def __init__(self, size: int) -> None:
        self.size = size
        self.clicks = array("I", bytes(4 * size))
        self.humans = array("I", bytes(4 * size))
        self.last = -1  # the newest bucket number written

    def _advance(self, bucket: int) -> None:
        if self.last < 0:
            self.last = bucket
            return
        if bucket <= self.last:
            return
        gap = min(bucket - self.last, self.size)
        for b in range(bucket - gap + 1, bucket + 1):
            i = b % self.size
            self.clicks[i] = 0
            self.humans[i] = 0
        self.last = bucket

    def add(self, bucket: int, clicks: int, humans: int) -> None:
        if bucket != self.last:
            self._advance(bucket)
            if bucket <= self.last - self.size:
                return  # older than the ring holds
        i = bucket % self.size
        self.clicks[i] += clicks
        self.humans[i] += humans

    def total(self, first: int, last: int) -> tuple[int, int]:
        """Sum over buckets first..last inclusive (those still held)."""
        lo = max(first, self.last - self.size + 1)
        hi = min(last, self.last)
        clicks = humans = 0
        for b in range(lo, hi + 1):
            i = b % self.size
            clicks += self.clicks[i]
            humans += self.humans[i]
        return clicks, humans

    def series(self, first: int, last: int) -> list[tuple[int, int, int]]:
        out = []
        for b in range(first, last + 1):
            if self.last - self.size < b <= self.last:
                i = b % self.size
                out.append((b, self.clicks[i], self.humans[i]))
            else:
                out.append((b, 0, 0))
        return out


class LinkCounters:
    __slots__ = ("seconds", "minutes", "total", "humans")

    def __init__(self) -> None:
        self.seconds = Ring(SECONDS_KEPT)
        self.minutes = Ring(MINUTES_KEPT)
        self.total = 0
        self.humans = 0


class LiveCounters:
    def __init__(self) -> None:
        self.links: dict[int, LinkCounters] = {}
        self.overall = Ring(OVERALL_SECONDS_KEPT)
        self.total = 0
        self.humans = 0

    def add(self, counts: Iterable[tuple[int, int, int, int]]) -> None:
        """Add (link_id, unix second, clicks, humans) aggregates."""
        links = self.links
        overall: dict[int, list[int]] = {}
        for link_id, second, clicks, humans in counts:
            c = links.get(link_id)
            if c is None:
                c = links[link_id] = LinkCounters()
            c.seconds.add(second, clicks, humans)
            c.minutes.add(second // 60, clicks, humans)
            c.total += clicks
            c.humans += humans
            sums = overall.get(second)
            if sums is None:
                overall[second] = [clicks, humans]
            else:
                sums[0] += clicks
                sums[1] += humans
        for second in sorted(overall):
            clicks, humans = overall[second]
            self.overall.add(second, clicks, humans)
            self.total += clicks
            self.humans += humans

    def window(self, link_id: int | None, seconds: int, now_s: int) -> tuple[int, int]:
        """(clicks, humans) in the last `seconds` seconds up to and including now_s."""
        return self.window_between(link_id, now_s - seconds + 1, now_s)

    def window_between(self, link_id: int | None, start_s: int, end_s: int) -> tuple[int, int]:
        """(clicks, humans) in seconds start_s..end_s inclusive.

        Overall counts and a link's last SECONDS_KEPT seconds are exact. A link's older
        seconds come from its per-minute ring: whole minutes as they are; the minute the
        per-second ring starts in, less the part of it that ring holds; a minute cut by
        `start_s` in proportion to the seconds taken (the only estimate: at most one
        minute's clicks, and only for windows reaching back past SECONDS_KEPT).
        """
        if end_s < start_s:
            return 0, 0
        if link_id is None:
            return self.overall.total(start_s, end_s)
        counters = self.links.get(link_id)
        if counters is None:
            return 0, 0
        seconds, minutes = counters.seconds, counters.minutes
        exact_from = seconds.last - seconds.size + 1
        clicks = humans = 0.0
        if end_s >= exact_from:
            c, h = seconds.total(max(start_s, exact_from), end_s)
            clicks, humans = float(c), float(h)
        if start_s < exact_from:
            old_end = min(end_s, exact_from - 1)
            for minute in range(start_s // 60, old_end // 60 + 1):
                c, h = minutes.total(minute, minute)
                if not c:
                    continue
                first, last = minute * 60, minute * 60 + 59
                if last >= exact_from:  # partly held by the per-second ring: take that out
                    held_c, held_h = seconds.total(exact_from, last)
                    c, h = c - held_c, h - held_h
                    last = exact_from - 1
                share = (min(old_end, last) - max(start_s, first) + 1) / (last - first + 1)
                clicks += c * share
                humans += h * share
        return round(clicks), round(humans)

    def series(self, link_id: int | None, seconds: int, now_s: int) -> list[tuple[int, int, int]]:
        """Per-second (second, clicks, humans) for the last `seconds` seconds."""
        ring = self.overall if link_id is None else self._link_ring(link_id)
        if ring is None:
            return [(s, 0, 0) for s in range(now_s - seconds + 1, now_s + 1)]
        return ring.series(now_s - seconds + 1, now_s)

    def _link_ring(self, link_id: int) -> Ring | None:
        c = self.links.get(link_id)
        return None if c is None else c.seconds
