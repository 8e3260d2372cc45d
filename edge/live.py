"""Live counters: clicks per second and per minute, per link and overall, in the collector.

Rules:
- Fed by the collector's pipeline once per batch with per-(link, second) aggregates
  (already split into human and bot), never per request.
- Memory is bounded by the links clicked in the last hour: a link gets its rings on its
  first click and loses them IDLE_EVICT_S after its last one (evicted a bounded slice at
  a time). Per link: a ring of the last SECONDS_KEPT seconds and a ring of the last
  MINUTES_KEPT minutes, as `array('I')` (~9 KB a link). Overall: a per-second ring for
  the hour.
- Every read and every advance is C work on array slices (at most two slices per ring:
  where the ring wraps), never a Python step per bucket: a link waking after an hour, or
  a sum over 15 minutes, costs a few microseconds.
- "Clicks in the last minute" per link is kept as a running total (a deque of per-second
  dicts), so the busiest links are found without visiting every link.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable, Iterator
from typing import Final

SECONDS_KEPT: Final = 900  # per link: exact per-second counts for the last 15 minutes
MINUTES_KEPT: Final = 61  # per link: per-minute counts for the last hour (+ the current one)
OVERALL_SECONDS_KEPT: Final = 3600  # overall: per-second counts for the last hour
WINDOWS_S: Final = (60, 300, 900, 3600)
IDLE_EVICT_S: Final = 3600  # a link's rings go this long after its last click
EVICT_SLICE: Final = 2000  # links looked at per eviction step (one step per feed)
RECENT_S: Final = 60  # the running per-link total covers this many seconds


class Ring:
    """Counts (clicks, humans) per time bucket in two parallel rings of `size` buckets."""

    __slots__ = ("size", "clicks", "humans", "last", "_zeros")

    def __init__(self, size: int) -> None:
        self.size = size
        self.clicks = array("I", bytes(4 * size))
        self.humans = array("I", bytes(4 * size))
        self.last = -1  # the newest bucket number written
        self._zeros = array("I", bytes(4 * size))

    def _spans(self, first: int, last: int) -> Iterator[tuple[int, int]]:
        """Index ranges [a, b) of buckets first..last (inclusive, at most `size` of them)."""
        size = self.size
        a, b = first % size, last % size + 1
        if a < b and last - first < size:
            yield a, b
        else:
            yield a, size
            yield 0, b

    def _advance(self, bucket: int) -> None:
        if self.last < 0:
            self.last = bucket
            return
        if bucket <= self.last:
            return
        gap = bucket - self.last
        if gap >= self.size:
            self.clicks[:] = self._zeros
            self.humans[:] = self._zeros
        else:
            for a, b in self._spans(self.last + 1, bucket):
                self.clicks[a:b] = self._zeros[: b - a]
                self.humans[a:b] = self._zeros[: b - a]
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
        if hi < lo:
            return 0, 0
        clicks = humans = 0
        for a, b in self._spans(lo, hi):
            clicks += sum(self.clicks[a:b])
            humans += sum(self.humans[a:b])
        return clicks, humans

    def series(self, first: int, last: int) -> list[tuple[int, int, int]]:
        out = []
        held_from = self.last - self.size + 1
        for b in range(first, last + 1):
            if held_from <= b <= self.last:
                i = b % self.size
                out.append((b, self.clicks[i], self.humans[i]))
            else:
                out.append((b, 0, 0))
        return out


class LinkCounters:
    __slots__ = ("seconds", "minutes", "total", "humans", "last_s")

    def __init__(self) -> None:
        self.seconds = Ring(SECONDS_KEPT)
        self.minutes = Ring(MINUTES_KEPT)
        self.total = 0
        self.humans = 0
        self.last_s = 0  # the second of its newest click


class LiveCounters:
    def __init__(self) -> None:
        self.links: dict[int, LinkCounters] = {}
        self.overall = Ring(OVERALL_SECONDS_KEPT)
        self.total = 0
        self.humans = 0
        # clicks per link in the last RECENT_S seconds: a running sum of per-second dicts
        # (seconds arrive out of order: the workers' batches interleave)
        self._recent: dict[int, dict[int, int]] = {}
        self.recent: dict[int, int] = {}
        self.evicted = 0
        self.conversions = Conversions()  # beside the clicks (edge/events.py)

    def add(self, counts: Iterable[tuple[int, int, int, int]]) -> None:
        """Add (link_id, unix second, clicks, humans) aggregates."""
        links = self.links
        overall: dict[int, list[int]] = {}
        per_second: dict[int, dict[int, int]] = {}
        for link_id, second, clicks, humans in counts:
            c = links.get(link_id)
            if c is None:
                c = links[link_id] = LinkCounters()
            c.seconds.add(second, clicks, humans)
            c.minutes.add(second // 60, clicks, humans)
            c.total += clicks
            c.humans += humans
            if second > c.last_s:
                c.last_s = second
                # `links` stays ordered by last click: idle links at the front (evicted
                # from there), the most recent at the back
                del links[link_id]
                links[link_id] = c
            sums = overall.get(second)
            if sums is None:
                overall[second] = [clicks, humans]
            else:
                sums[0] += clicks
                sums[1] += humans
            bucket = per_second.setdefault(second, {})
            bucket[link_id] = bucket.get(link_id, 0) + clicks
        for second in sorted(overall):
            clicks, humans = overall[second]
            self.overall.add(second, clicks, humans)
            self.total += clicks
            self.humans += humans
        self._feed_recent(per_second)
        self._evict_step()

    def _feed_recent(self, per_second: dict[int, dict[int, int]]) -> None:
        recent = self.recent
        newest = self.overall.last
        for second, counts in per_second.items():
            if second <= newest - RECENT_S:
                continue  # already out of the running minute
            bucket = self._recent.get(second)
            if bucket is None:
                self._recent[second] = counts
            else:
                for link_id, n in counts.items():
                    bucket[link_id] = bucket.get(link_id, 0) + n
            for link_id, n in counts.items():
                recent[link_id] = recent.get(link_id, 0) + n
        self.expire(newest)

    def expire(self, now_s: int) -> None:
        """Drop the seconds older than RECENT_S from the running per-link totals."""
        recent = self.recent
        for second in [s for s in self._recent if s <= now_s - RECENT_S]:
            for link_id, n in self._recent.pop(second).items():
                left = recent.get(link_id, 0) - n
                if left > 0:
                    recent[link_id] = left
                else:
                    recent.pop(link_id, None)

    def _evict_step(self) -> None:
        """Forget up to EVICT_SLICE links idle for IDLE_EVICT_S (they are at the front)."""
        links = self.links
        cutoff = self.overall.last - IDLE_EVICT_S
        for _ in range(EVICT_SLICE):
            oldest = next(iter(links), None)
            if oldest is None or links[oldest].last_s > cutoff:
                return
            del links[oldest]
            self.evicted += 1

    def busiest(self, now_s: int, top: int) -> list[int]:
        """The `top` links by clicks in the last minute, then by most recent click (within
        the hour): found from the running minute and the links' order, not by visiting
        every link."""
        self.expire(now_s)
        links = self.links
        ranked = [
            link_id
            for _n, _last, link_id in heapq.nlargest(
                top,
                ((n, links[i].last_s if i in links else 0, i) for i, n in self.recent.items()),
            )
        ]
        if len(ranked) < top:
            seen = set(ranked)
            for link_id in reversed(links):
                if len(ranked) >= top or links[link_id].last_s <= now_s - IDLE_EVICT_S:
                    break
                if link_id not in seen:
                    ranked.append(link_id)
        return ranked

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
            first_min, last_min = start_s // 60, old_end // 60
            # whole minutes strictly inside, in one C sum
            if last_min - first_min >= 2:
                c, h = minutes.total(first_min + 1, last_min - 1)
                clicks += c
                humans += h
            for minute in {first_min, last_min}:
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


class Conversions:
    """Live conversions (edge/events.py) beside the clicks, and the event counters /metrics
    shows. Bounded like the clicks: overall a per-second ring for the hour, per link a
    per-minute ring while the link converted within the hour (evicted a slice at a time)."""

    def __init__(self) -> None:
        self.overall = Ring(OVERALL_SECONDS_KEPT)  # (conversions, of human clicks)
        self.links: dict[int, Ring] = {}  # per minute; ordered by last conversion
        self.total = 0
        # counters for /metrics
        self.accepted: dict[str, int] = {}  # source -> events recorded
        self.duplicates: dict[str, int] = {}  # source -> repeats of a recorded event id
        self.rejected: dict[str, int] = {}  # reason -> events refused
        self.pixel_retries = 0  # pixel events whose click was not written yet, tried again

    def add(self, source: str, events: Iterable[tuple[int, int, bool]]) -> None:
        """Recorded events: (link id, unix second it happened, of a human click)."""
        links = self.links
        n = 0
        for link_id, second, human in sorted(events, key=lambda e: e[1]):
            n += 1
            self.overall.add(second, 1, 1 if human else 0)
            ring = links.pop(link_id, None)
            if ring is None:
                ring = Ring(MINUTES_KEPT)
            ring.add(second // 60, 1, 1 if human else 0)
            links[link_id] = ring
        if n:
            self.total += n
            self.accepted[source] = self.accepted.get(source, 0) + n
            cutoff = self.overall.last // 60 - MINUTES_KEPT
            for _ in range(EVICT_SLICE):
                oldest = next(iter(links), None)
                if oldest is None or links[oldest].last > cutoff:
                    break
                del links[oldest]

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def duplicate(self, source: str, n: int = 1) -> None:
        self.duplicates[source] = self.duplicates.get(source, 0) + n

    def window(self, link_id: int | None, seconds: int, now_s: int) -> tuple[int, int]:
        """(conversions, of human clicks) in the last `seconds` seconds (a link's: whole
        minutes, the current one included)."""
        if link_id is None:
            return self.overall.total(now_s - seconds + 1, now_s)
        ring = self.links.get(link_id)
        if ring is None:
            return 0, 0
        return ring.total((now_s - seconds + 1) // 60, now_s // 60)
