"""The captured click and the frames it travels in: the contract between the edge workers
that answer and the collector that records.

Rules:
- The redirect path appends one RawClick per served redirect and does nothing else for
  it: no parsing, lookups or I/O. The raw header bytes travel as the parser handed them
  over; the collector (edge/clicks.py) decodes, enriches and writes them in batches.
- A RawClick is (unix time s, link id, domain id, client ip, user-agent bytes, referer
  bytes, accept-language bytes, flags, route, click id); the flags are the bits below.
- Between a worker and the collector (a Unix stream socket in a private directory, both
  ends the same user and the same interpreter) travel length-prefixed frames: a 4-byte
  little-endian length of what follows, a 1-byte kind, then the payload. Batches and stats
  are marshal-encoded (the fastest stdlib encoding of tuples of bytes/str/int/float, and
  safe here: the peer is our own process from the same Python). A frame is at most
  MAX_FRAME_BYTES; a longer length is a broken peer and ends the connection.
- Exactly once: every batch carries (epoch, seq). `epoch` is random per worker process
  start, `seq` counts that process's batches from 1. The collector commits a batch's rows
  and "epoch reached seq" in one transaction and only then acknowledges (ACK: the highest
  committed seq), so a batch resent after any crash is recognised and never written twice.
- FrameReader is sans-IO and linear in the bytes fed (each byte is copied once).
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Iterator
from typing import Any, Final

FLAG_HEAD: Final = 1  # a HEAD request: a probe, never a person navigating
FLAG_PREFETCH: Final = 2  # Sec-Purpose/Purpose: prefetch or prerender
FLAG_DNT: Final = 4  # DNT: 1 (counted without a visitor id or geo below country)
FLAG_GPC: Final = 8  # Sec-GPC: 1 (the same)
FLAG_TEST: Final = 16  # `?lc_test=1`: a test click (bot kind "test", spends no budget)
FLAG_LIMITED: Final = 32  # this click spent a unit of its link's click budget
FLAG_QR: Final = 64  # the short URL carried the QR marker (edge/urls.py QR_MARKER): a scan
# Not a click: a conversion pixel (GET /_lc/e, edge/events.py) riding in the click batches
# for their exactly-once accounting: (time, 0, 0, ip, user agent, referer, the pixel's raw
# query, FLAG_EVENT, None, None). The collector records it as an event, never as a click.
FLAG_EVENT: Final = 128

# (time, link id, domain id, ip, user agent, referer, accept-language, flags, route, click
# id): route is edge/rules.py's index (None: a link without routes), click id 16 bytes
RawClick = tuple[float, int, int, str, bytes, bytes, bytes, int, int | None, bytes | None]

# Frame kinds, worker -> collector.
HELLO: Final = 1  # marshal (epoch, slot, pid, rev): who is on this connection
# (the collector answers HELLO with an ACK of what of this epoch it has committed)
BATCH: Final = 2  # 8-byte seq, then marshal (list[RawClick], {link id: budget spent})
STATS: Final = 3  # marshal dict: the worker's counters, sent every second and at exit
AT_REV: Final = 4  # 8-byte link revision the worker now serves
LEASE_ASK: Final = 5  # marshal {link id: clicks wanted} of limited links' budgets
# Frame kinds, collector -> worker.
ACK: Final = 10  # 8-byte seq: every batch of this epoch up to it is committed
REFRESH: Final = 11  # 8-byte revision: reload links changed up to it now
LEASE: Final = 12  # marshal {link id: clicks granted} (added to the worker's budget)

# A batch of 20,000 clicks with long headers is ~20 MB at most; more is a broken peer.
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
_HEAD: Final = struct.Struct("<IB")
_U64: Final = struct.Struct("<Q")


class FrameError(Exception):
    """A peer sent something that is not a frame: the connection must end."""


def frame(kind: int, payload: bytes) -> bytes:
    return _HEAD.pack(len(payload) + 1, kind) + payload


def batch_frame(seq: int, clicks: list[RawClick], spent: dict[int, int] | None = None) -> bytes:
    """A batch and what its clicks spent of limited links' budgets (leases)."""
    return frame(BATCH, _U64.pack(seq) + marshal.dumps((clicks, spent or {})))


def number_frame(kind: int, value: int) -> bytes:
    """ACK, REFRESH and AT_REV carry one unsigned number."""
    return frame(kind, _U64.pack(value))


def data_frame(kind: int, value: Any) -> bytes:
    """HELLO and STATS carry one marshal-encoded value."""
    return frame(kind, marshal.dumps(value))


def read_number(payload: bytes | memoryview) -> int:
    return int(_U64.unpack_from(payload)[0])


def read_batch(payload: bytes | memoryview) -> tuple[int, list[RawClick], dict[int, int]]:
    seq = _U64.unpack_from(payload)[0]
    body = marshal.loads(payload[8:])
    if not (isinstance(body, tuple) and len(body) == 2 and isinstance(body[0], list)):
        raise FrameError("a batch frame must hold (clicks, spent)")
    clicks, spent = body
    if not isinstance(spent, dict):
        raise FrameError("a batch frame's spent budgets must be a dict")
    return int(seq), clicks, spent


def read_data(payload: bytes | memoryview) -> Any:
    try:
        return marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as exc:
        raise FrameError(f"unreadable frame: {exc}") from None


class FrameReader:
    """Frames out of a byte stream: `feed(data)` then iterate `frames()` for complete
    (kind, payload) pairs; an incomplete frame waits for more bytes."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def frames(self) -> Iterator[tuple[int, bytes]]:
        buf = self._buf
        while len(buf) - self._pos >= _HEAD.size:
            length, kind = _HEAD.unpack_from(buf, self._pos)
            if not 1 <= length <= MAX_FRAME_BYTES:
                raise FrameError(f"frame length {length} out of range")
            end = self._pos + 4 + length
            if end > len(buf):
                break
            payload = bytes(buf[self._pos + _HEAD.size : end])
            self._pos = end
            yield kind, payload
        if self._pos > 1 << 20 and self._pos * 2 > len(buf):
            # drop consumed bytes once they dominate (amortised linear)
            del buf[: self._pos]
            self._pos = 0
