"""Visitors: the visitor id, its daily salt, and the packed format unique counts read.

Rules:
- The one home of the visitor id. visitor_id = BLAKE2b-64 keyed with a random salt that
  rotates every UTC day (old salts are deleted for good) over (ip, user agent, domain):
  uniques work within a day and nobody can be followed across days. No raw IP is stored.
- The rollups keep the visitors of a (link or group, UTC day) as chunks: `ids` (every
  visitor) and `bot_ids` (the visitors without a human click in this chunk: few, where
  storing the human ones would repeat nearly all of `ids`), each the sorted, distinct ids
  as unsigned little-endian 64-bit integers, with the counts `n` (visitors) and `n_human`
  (n minus the bot-only ones). A finished day of a group keeps only its counts (n > 0 and
  no ids): link chunks keep every id, so a group-day can always be recounted from them.
- Written (`write_chunks`) and counted (`count_chunks`) here and nowhere else. A count or
  a union is a C loop (array, set, bisect), not a Python step per visitor; a (link or
  group, day) with a single chunk is counted without reading its ids.
- Times: UTC days are Unix seconds // DAY_S.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from edge.db import Transaction, insert_rows

DAY_S: Final = 86400
CHUNK_COLUMNS: Final = "seq, n, n_human, ids, bot_ids"
# A (link or group, day) gets one chunk per roll-up; past this many they are merged, so a
# read unions at most this many. Tiered: a chunk bigger than all the others together is
# left out of the merge (the others merge into a second one), so each visitor id is
# re-packed O(log n) times over a day, not once per merge; a finished day is merged whole.
CHUNKS_MERGE_AT: Final = 16
# Search the biggest chunk (bisect) when the others hold under 1/16 of its ids; union sets
# otherwise.
_SEARCH_RATIO: Final = 16
_BIG_ENDIAN: Final = sys.byteorder == "big"
# Visitor ids remembered per salt by VisitorIds (a repeat click costs a dict hit, not a
# keyed hash): ~150 bytes an entry.
VISITOR_CACHE_SIZE: Final = 100_000

Chunk = tuple[int, int, int, bytes, bytes]  # CHUNK_COLUMNS values
ChunkSets = tuple[set[int], set[int]]  # (visitors, visitors with a human click)


# --- the id ----------------------------------------------------------------------------------


class VisitorIds:
    """8-byte visitor ids for (ip, user agent, domain id) on one UTC day, cached."""

    __slots__ = ("_hasher", "_cache")

    def __init__(self, salt: bytes) -> None:
        self._hasher = hashlib.blake2b(digest_size=8, key=salt)
        self._cache: dict[tuple[str, bytes, int], bytes] = {}

    def of(self, ip: str, user_agent: bytes, domain_id: int) -> bytes:
        key = (ip, user_agent, domain_id)
        vid = self._cache.get(key)
        if vid is None:
            hasher = self._hasher.copy()
            hasher.update(ip.encode() + b"\0" + user_agent + b"\0" + b"%d" % domain_id)
            vid = hasher.digest()
            if len(self._cache) >= VISITOR_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = vid
        return vid


def salt_for_day(conn: sqlite3.Connection, day: int, new_salt: Callable[[], bytes]) -> bytes:
    """The visitor-hash salt of a UTC day, created if missing (by whichever process asks
    first: the collector, or a worker picking A/B variants by visitor); salts older than
    the day before are deleted for good (the day before stays for clicks written late)."""
    with Transaction(conn):
        conn.execute("DELETE FROM salts WHERE day < ?", (day - 1,))
        row = conn.execute("SELECT salt FROM salts WHERE day = ?", (day,)).fetchone()
        if row is None:  # OR IGNORE: another process may have just made it (theirs wins)
            conn.execute("INSERT OR IGNORE INTO salts (day, salt) VALUES (?, ?)", (day, new_salt()))
            row = conn.execute("SELECT salt FROM salts WHERE day = ?", (day,)).fetchone()
        return bytes(row[0])


def visitor_int(vid: bytes) -> int:
    return int.from_bytes(vid[:8].ljust(8, b"\0"), "little")


# --- the packed format -----------------------------------------------------------------------


def pack_ids(ids: Iterable[int]) -> bytes:
    arr = array.array("Q", sorted(ids))
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def unpack_ids(blob: bytes) -> array.array[int]:
    arr = array.array("Q")
    arr.frombytes(blob)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


def chunk(seq: int, ids: set[int], humans: set[int]) -> Chunk:
    """A chunk row's CHUNK_COLUMNS values from its visitors and the human ones."""
    bots = ids - humans
    return seq, len(ids), len(ids) - len(bots), pack_ids(ids), pack_ids(bots)


def counts_only(seq: int, ids: set[int], humans: set[int]) -> Chunk:
    """A finished group-day's chunk: its counts, no ids (n > 0 with empty `ids`)."""
    return seq, len(ids), len(humans), b"", b""


def chunk_sets(ids: bytes, bots: bytes) -> ChunkSets:
    """A chunk's (visitors, visitors with a human click) as sets."""
    every = set(unpack_ids(ids))
    return every, (every - set(unpack_ids(bots))) if bots else every.copy()


def visitor_sets(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> ChunkSets:
    """(visitors, visitors with a human click) of the chunks a query returns as (ids,
    bot_ids) rows."""
    ids: set[int] = set()
    humans: set[int] = set()
    for blob, bot_blob in conn.execute(sql, params).fetchall():
        chunk_ids, chunk_humans = chunk_sets(blob, bot_blob)
        ids |= chunk_ids
        humans |= chunk_humans
    return ids, humans


def has_counts_only(conn: sqlite3.Connection, table: str, where: str, key: Sequence[Any]) -> bool:
    sql = f"SELECT 1 FROM {table} WHERE {where} AND n > 0 AND length(ids) = 0 LIMIT 1"
    return conn.execute(sql, tuple(key)).fetchone() is not None


def mark_stale(conn: sqlite3.Connection, group_days: Iterable[Sequence[Any]]) -> None:
    """Have the visitors of these (dim, key, day) rebuilt from their links."""
    conn.executemany(
        "INSERT OR IGNORE INTO group_day_stale (dim, key, day) VALUES (?, ?, ?)",
        [tuple(g) for g in group_days],
    )


# --- writing chunks --------------------------------------------------------------------------


class ChunkCounts:
    """How many chunks each (link or group, day) has: a hint for merging (after a restart
    it starts from `load`; a missed count only delays a merge)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, ...], int] = {}

    def load(self, conn: sqlite3.Connection, since_day: int) -> None:
        """Count the chunks of the days from `since_day` on (at start: so the chunks
        written before a restart are merged too)."""
        for sql in (
            "SELECT link_id, day, count(*) FROM link_day_visitors WHERE day >= ? "
            "GROUP BY 1, 2 HAVING count(*) > 1",
            "SELECT dim, key, day, count(*) FROM group_day_visitors WHERE day >= ? "
            "AND length(ids) > 0 GROUP BY 1, 2, 3",
        ):
            for row in conn.execute(sql, (since_day,)):
                self.counts[tuple(row[:-1])] = row[-1]

    def forget_days_before(self, day: int) -> None:
        counts = self.counts
        for key in [k for k in counts if k[-1] < day]:
            del counts[key]


def write_chunks(
    conn: sqlite3.Connection,
    table: str,
    owner: tuple[str, ...],
    visitors: dict[Any, ChunkSets],
    seq: int,
    known: ChunkCounts,
    counts_when_done: bool = False,
) -> None:
    """Append one chunk per (owner..., day) (the caller's transaction); merge an
    owner-day's chunks past CHUNKS_MERGE_AT, and the chunks of days before the newest one
    written (a day is done: one chunk). With `counts_when_done` (groups) a finished day
    keeps only its counts."""
    counts = known.counts
    where = " AND ".join(f"{c} = ?" for c in (*owner, "day"))
    rows: list[tuple[Any, ...]] = []
    newest = max((k[-1] for k in visitors), default=None)
    least = 1 if counts_when_done else 2
    done = {
        k
        for k, n in counts.items()
        if n >= least and len(k) == len(owner) + 1 and newest is not None and k[-1] < newest
    }
    done -= visitors.keys()
    if done:
        visitors = {**visitors, **{key: (set(), set()) for key in done}}
    for key, (ids, humans) in visitors.items():
        n = counts.get(key, 0) + 1
        if n >= CHUNKS_MERGE_AT or key in done:
            if counts_when_done and has_counts_only(conn, table, where, key):
                # a finished day's counts cannot take a union: recount it from its links
                mark_stale(conn, [key])
                counts.pop(key, None)
                if ids:
                    rows.append((*key, *chunk(seq, ids, humans)))
                continue
            spare = ""  # tiered: a chunk bigger than all the others together stays as it is
            if key not in done:
                sizes = conn.execute(
                    f"SELECT seq, n FROM {table} WHERE {where} ORDER BY n DESC", key
                ).fetchall()
                if sizes and sizes[0][1] > sum(size for _s, size in sizes[1:]) + len(ids):
                    spare = f" AND seq != {int(sizes[0][0])}"
            old = visitor_sets(
                conn, f"DELETE FROM {table} WHERE {where}{spare} RETURNING ids, bot_ids", key
            )
            ids, humans = ids | old[0], humans | old[1]
            n = 2 if spare else 1
            if counts_when_done and key in done:
                counts.pop(key, None)
                rows.append((*key, *counts_only(seq, ids, humans)))
                continue
        counts[key] = n
        rows.append((*key, *chunk(seq, ids, humans)))
    cols = ", ".join((*owner, "day"))
    before = conn.total_changes
    insert_rows(conn, f"INSERT OR IGNORE INTO {table} ({cols}, {CHUNK_COLUMNS})", rows)
    if conn.total_changes - before != len(rows):
        # A chunk key (owner, day, seq) was taken: not by design (seq is the roll-up's own
        # watermark), but a chunk must stay sorted and distinct, so union it in Python.
        for row in rows:
            key, seq_, ids_blob = row[: len(owner) + 1], row[len(owner) + 1], row[-2]
            stored = conn.execute(
                f"SELECT ids FROM {table} WHERE {where} AND seq = ?", (*key, seq_)
            ).fetchone()
            if stored is not None and stored[0] != ids_blob:
                old = visitor_sets(
                    conn,
                    f"DELETE FROM {table} WHERE {where} AND seq = ? RETURNING ids, bot_ids",
                    (*key, seq_),
                )
                mine = chunk_sets(ids_blob, row[-1])
                conn.execute(
                    f"INSERT INTO {table} ({cols}, {CHUNK_COLUMNS}) VALUES "
                    f"({', '.join('?' * (len(owner) + 6))})",
                    (*key, *chunk(seq_, old[0] | mine[0], old[1] | mine[1])),
                )


# --- counting --------------------------------------------------------------------------------

StoredChunk = tuple[int, int, "array.array[int]", "array.array[int]"]  # n, n_human, ids, bot_ids


def read_chunk(n: int, n_human: int, ids: bytes, bot_ids: bytes) -> StoredChunk:
    return n, n_human, unpack_ids(ids), unpack_ids(bot_ids)


def _distinct(chunks: list[tuple[int, array.array[int]]], extra: set[int]) -> int:
    """|union of the chunks' ids and `extra`|. Chunks hold sorted distinct ids: the
    biggest is searched (bisect), not copied into the set of the others."""
    if not chunks:
        return len(extra)
    biggest = max(range(len(chunks)), key=lambda i: chunks[i][0])
    base = chunks[biggest][1]
    others = set(extra)
    for i, (_n, ids) in enumerate(chunks):
        if i != biggest:
            others.update(ids)
    return len(base) + sum(1 for x in others if not _has(base, x))


def has_human(chunk: StoredChunk, x: int) -> bool:
    """Whether visitor `x` has a human click in a stored chunk."""
    return _has(chunk[2], x) and not _has(chunk[3], x)


def _has(ids: array.array[int], x: int) -> bool:
    i = bisect.bisect_left(ids, x)
    return i < len(ids) and ids[i] == x


def count_chunks(chunks: list[StoredChunk], extra: ChunkSets) -> tuple[int, int]:
    """(distinct visitors, distinct visitors with a human click) of stored chunks and
    `extra` (visitors, human visitors) sets.

    One big chunk (a merged day) and a few new ids: the big one is searched (bisect), not
    copied into a set; only a visitor in some chunk's bot_ids (or among extra's non-humans)
    can lack a human click anywhere, so only those are looked up in every chunk. Chunks of
    similar sizes: set unions (C loops), cheaper than a bisect per id."""
    if not chunks:
        return len(extra[0]), len(extra[1])
    sizes = [len(c[2]) for c in chunks]
    big = max(sizes)
    if (sum(sizes) - big + len(extra[0])) * _SEARCH_RATIO > big:
        every = set(extra[0])
        humans = set(extra[1])
        for _n, _h, ids, bots in chunks:
            ids_set = set(ids)
            every |= ids_set
            humans |= ids_set - set(bots) if bots else ids_set
        return len(every), len(humans)
    every_n = _distinct([(c[0], c[2]) for c in chunks], extra[0])
    candidates = extra[0] - extra[1]
    for c in chunks:
        candidates.update(c[3])
    candidates -= extra[1]
    never_human = 0
    lookups = [(ids, set(bots)) for _n, _h, ids, bots in chunks]
    for v in candidates:
        if not any(_has(ids, v) and v not in bots for ids, bots in lookups):
            never_human += 1
    return every_n, every_n - never_human
