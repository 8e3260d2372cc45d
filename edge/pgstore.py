"""The shared link store (`--link-store postgresql://...`): the catalog in PostgreSQL.

Links, domains, purged links, API tokens, UTM allow-lists and the UTM case rule live in
PostgreSQL, shared by every linkedge node. Each node keeps a mirror of them in its own
SQLite file, so everything that reads the catalog (the edge workers' link tables, stats,
listings, tokens) keeps reading SQLite as before, and a node whose store is unreachable
keeps serving, even across a restart, the links it last saw.

How a write works (optimistic, one home for validation): the catalog functions of
edge/catalog.py run unchanged on the node's SQLite mirror, inside their Transaction. TEMP
triggers on the mirror's catalog tables note which rows a transaction changed. Just
before the outermost Transaction commits (edge/db.py `set_before_commit`), `push` locks
the store's one state row (`SELECT ... FOR UPDATE`: catalog writes are serialised across
the whole cluster), checks that the mirror was current (the store's revision is the one
the mirror last applied), sends the changed rows, bumps the revision, NOTIFYs, and commits
PostgreSQL; then SQLite commits. A mirror that was behind (another node wrote meanwhile)
raises `StoreConflict`: the transaction rolls back, the mirror pulls, and the write runs
again (`StoreDatabase.run`), so it is validated against the latest catalog (a slug taken
on another node a moment ago is a 409, as on one node). An unreachable store fails the
write with a 503 and changes nothing.

How a change travels: `StoreListener` (a thread, its own connection) LISTENs on
`linkedge_catalog`; on a notification (and after every reconnect) the collector pulls the
rows newer than its mirror's revision into SQLite in one Transaction (re-stamped with the
mirror's own `meta.rev`, group history moved as an edit on this node would), then tells
its workers to serve the new revision. A change is served by every node in milliseconds
(the workers' own poll, `link_poll_interval_s`, is the fallback).

The store holds rows as documents (`linkedge_rows`: kind, key, rev, deleted, row JSONB),
the SQLite row with every column, so a column a SQLite migration adds is shared with no
change here. Its schema is numbered and recorded in `linkedge_pg_migrations`.

psycopg 3 is the client (the `postgresql` extra): its synchronous API runs where the
catalog functions run (the writer thread, the CLI), its LISTEN support needs no event
loop, and the binary wheel brings libpq.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson

from edge.db import Database, Transaction, next_rev, set_before_commit
from edge.errors import Conflict, LinkedgeError
from edge.rollups import link_group_keys, move_link_groups

log = logging.getLogger("linkedge.pgstore")

T = TypeVar("T")

CHANNEL: Final = "linkedge_catalog"
CONNECT_TIMEOUT_S: Final = 3
# Every statement of ours is short: a store that stops answering fails the write instead
# of holding the writer thread (and with it the click writes).
STATEMENT_TIMEOUT_MS: Final = 5000
LOCK_TIMEOUT_MS: Final = 4000
CONFLICT_RETRIES: Final = 5
# Without notifications the listener compares the store's revision with the mirror's
# this often (the fallback for a lost notification or a failed pull).
LISTEN_CHECK_S: Final = 0.5
RECONNECT_S: Final = (0.2, 0.5, 1.0, 2.0)

# The shared tables and their key columns (the mirror's table names).
KEYS: Final[dict[str, tuple[str, ...]]] = {
    "domains": ("id",),
    "links": ("id",),
    "purged_links": ("id",),
    "api_tokens": ("id",),
    "utm_allow": ("field", "value"),
    "meta": ("key",),
}
SHARED_META: Final = ("utm_case",)
# The mirror's own bookkeeping in meta (never shared).
META_STORE_ID: Final = "link_store_id"
META_STORE_REV: Final = "link_store_rev"

PG_MIGRATIONS: Final[list[tuple[int, str, tuple[str, ...]]]] = [
    (
        1,
        "0001_create_store",
        (
            """CREATE TABLE linkedge_state (
                id integer PRIMARY KEY CHECK (id = 1),
                store_id text NOT NULL,
                rev bigint NOT NULL
            )""",
            """CREATE TABLE linkedge_rows (
                kind text NOT NULL,
                key text NOT NULL,
                rev bigint NOT NULL,
                deleted boolean NOT NULL,
                row jsonb,
                PRIMARY KEY (kind, key)
            )""",
            "CREATE INDEX linkedge_rows_rev ON linkedge_rows (rev)",
        ),
    ),
]


class StoreUnavailable(LinkedgeError):
    status = 503
    code = "link_store_unavailable"


class StoreConflict(Conflict):
    """The mirror was behind the store: roll back, pull, run the write again."""

    code = "link_store_busy"


class StoreMismatch(LinkedgeError):
    """This SQLite file cannot mirror this store (other links, another store)."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the extra is not installed
        raise StoreUnavailable(
            "--link-store needs psycopg: pip install 'linkedge[postgresql]'"
        ) from None
    return psycopg


def redact(url: str) -> str:
    """The store's URL without its password (for logs, errors and /healthz)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_url(url: str) -> str:
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"link_store must be a postgresql:// URL, got {redact(url)!r}")
    return url


def _connect(url: str, *, autocommit: bool) -> Any:
    psycopg = _psycopg()
    return psycopg.connect(
        url,
        autocommit=autocommit,
        connect_timeout=CONNECT_TIMEOUT_S,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}",
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=2,
        application_name="linkedge",
    )


# --- values between SQLite and JSON ----------------------------------------------------------


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "$b" in value:
        return base64.b64decode(value["$b"])
    return value


def _row_doc(row: sqlite3.Row) -> dict[str, Any]:
    return {k: _to_json(row[k]) for k in row.keys()}  # noqa: SIM118 (sqlite3.Row)


def _key_text(values: Iterable[Any]) -> str:
    return orjson.dumps(list(values)).decode()


# --- the mirror's side: change capture ----------------------------------------------------


def _triggers() -> list[str]:
    out = [
        "CREATE TEMP TABLE IF NOT EXISTS store_changed ("
        "tbl TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID"
    ]
    # What counts as a change: links and domains bump rev on every catalog change (so a
    # column the collector keeps up to date itself is not one); a token's use is not one.
    events = {
        "links": ("INSERT", "UPDATE OF rev", "DELETE"),
        "domains": ("INSERT", "UPDATE OF rev", "DELETE"),
        "purged_links": ("INSERT", "UPDATE", "DELETE"),
        "api_tokens": ("INSERT", "UPDATE OF name, revoked_at", "DELETE"),
        "utm_allow": ("INSERT", "DELETE"),
        "meta": ("INSERT", "UPDATE", "DELETE"),
    }
    for table, kinds in events.items():
        for i, event in enumerate(kinds):
            ref = "OLD" if event == "DELETE" else "NEW"
            key = ", ".join(f"{ref}.{c}" for c in KEYS[table])
            when = ""
            if table == "meta":
                shared = ", ".join(f"'{k}'" for k in SHARED_META)
                when = f" WHEN {ref}.key IN ({shared})"
            out.append(
                f"CREATE TEMP TRIGGER IF NOT EXISTS store_{table}_{i} AFTER {event} ON main.{table}"
                f"{when} BEGIN INSERT OR IGNORE INTO store_changed (tbl, key) "
                f"VALUES ('{table}', json_array({key})); END"
            )
    return out


def _meta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def mirror_rev(conn: sqlite3.Connection) -> int:
    """The store revision this mirror holds (0: never synced)."""
    return int(_meta(conn, META_STORE_REV) or 0)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _read_row(conn: sqlite3.Connection, table: str, key: list[Any]) -> dict[str, Any] | None:
    where = " AND ".join(f"{c} = ?" for c in KEYS[table])
    row = conn.execute(f"SELECT * FROM {table} WHERE {where}", key).fetchone()
    return None if row is None else _row_doc(row)


def _all_rows(conn: sqlite3.Connection) -> list[tuple[str, str, dict[str, Any] | None]]:
    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for table, keys in KEYS.items():
        where = ""
        if table == "meta":
            where = " WHERE key IN (" + ", ".join(f"'{k}'" for k in SHARED_META) + ")"
        for row in conn.execute(f"SELECT * FROM {table}{where}"):
            out.append((table, _key_text(row[k] for k in keys), _row_doc(row)))
    return out


# --- the store ---------------------------------------------------------------------------


class LinkStore:
    """One node's view of the shared store: a connection used on one thread (the writer's,
    or the CLI's), the push hook and the pull."""

    def __init__(self, url: str) -> None:
        self.url = check_url(url)
        self.shown = redact(url)
        self._conn: Any = None
        self.down: Callable[[], str | None] = lambda: None  # the listener's verdict
        self.last_rev = -1  # the store revision the mirror was last brought to (any thread)

    # connection

    def _db(self) -> Any:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            # a connection kept between writes may have been dropped by a restarted
            # server: find out before a write depends on it (one round trip)
            try:
                conn.execute("SELECT 1")
                conn.rollback()
                return conn
            except _psycopg().Error:
                pass
        self.close()
        try:
            self._conn = _connect(self.url, autocommit=False)
        except _psycopg().Error as exc:
            raise self._unavailable(exc) from None
        return self._conn

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(
            f"the link store {self.shown} is unreachable ({why}): nothing was changed; "
            "the edges keep serving the links they have"
        )

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.close()

    def _pg(self, fn: Callable[[Any], T]) -> T:
        """fn(cursor) in one PostgreSQL transaction; errors become StoreUnavailable."""
        psycopg = _psycopg()
        conn = self._db()
        try:
            with conn.transaction(), conn.cursor() as cur:
                return fn(cur)
        except psycopg.Error as exc:
            if conn.broken or isinstance(exc, psycopg.OperationalError):
                self.close()
            raise self._unavailable(exc) from None

    # schema

    def migrate(self) -> list[str]:
        """Create or upgrade the store's schema (numbered; one node at a time)."""

        def run(cur: Any) -> list[str]:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('linkedge_pg_migrations'))")
            cur.execute(
                "CREATE TABLE IF NOT EXISTS linkedge_pg_migrations ("
                "id integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT id FROM linkedge_pg_migrations")
            done = {int(r[0]) for r in cur.fetchall()}
            applied = []
            for number, name, statements in PG_MIGRATIONS:
                if number in done:
                    continue
                for statement in statements:
                    cur.execute(statement)
                if number == 1:
                    cur.execute(
                        "INSERT INTO linkedge_state (id, store_id, rev) VALUES (1, %s, 0)",
                        (uuid.uuid4().hex,),
                    )
                cur.execute(
                    "INSERT INTO linkedge_pg_migrations (id, name) VALUES (%s, %s)",
                    (number, name),
                )
                applied.append(name)
            return applied

        return self._pg(run)

    def state(self) -> tuple[str, int]:
        def run(cur: Any) -> tuple[str, int]:
            cur.execute("SELECT store_id, rev FROM linkedge_state WHERE id = 1")
            row = cur.fetchone()
            return str(row[0]), int(row[1])

        return self._pg(run)

    # the mirror

    def attach(self, conn: sqlite3.Connection) -> None:
        """Capture the connection's catalog changes and send them at each commit."""
        for statement in _triggers():
            conn.execute(statement)
        conn.execute("DELETE FROM temp.store_changed")
        set_before_commit(conn, self.push)

    def detach(self, conn: sqlite3.Connection) -> None:
        set_before_commit(conn, None)

    def join(self, conn: sqlite3.Connection) -> str:
        """Bring a node's SQLite file in line with the store before it serves: seed an
        empty store from it, fill a new node's mirror, or catch up. Returns what it did."""
        self.migrate()
        store_id, rev = self.state()
        mine = _meta(conn, META_STORE_ID)
        if mine is not None and mine != store_id:
            raise StoreMismatch(
                f"{_db_name(conn)} mirrors another link store than {self.shown}: give this "
                "node a new --db (its links come from the store)"
            )
        if rev == 0:
            return self._seed(conn)
        if mine is None:
            links = int(conn.execute("SELECT count(*) FROM links").fetchone()[0])
            if links:
                raise StoreMismatch(
                    f"{_db_name(conn)} has {links} link(s) of its own and the link store "
                    f"{self.shown} already holds another catalog: give this node a new --db "
                    "(its links come from the store), or import them through the API"
                )
            with Transaction(conn):
                # a new node's own default domain and first token make way for the store's
                for table in ("purged_links", "domains", "api_tokens", "utm_allow"):
                    conn.execute(f"DELETE FROM {table}")
                conn.execute(
                    "DELETE FROM meta WHERE key IN ("
                    + ", ".join(f"'{k}'" for k in SHARED_META)
                    + ")"
                )
                _set_meta(conn, META_STORE_ID, store_id)
                _set_meta(conn, META_STORE_REV, 0)
                if _has_capture(conn):
                    conn.execute("DELETE FROM temp.store_changed")
        elif mirror_rev(conn) > rev:
            raise StoreMismatch(
                f"{_db_name(conn)} holds link store revision {mirror_rev(conn)}, newer than "
                f"{self.shown} (at {rev}): was the store restored from an old backup?"
            )
        applied = self.pull(conn)
        return f"mirrored {applied} change(s) from the link store at revision {mirror_rev(conn)}"

    def _seed(self, conn: sqlite3.Connection) -> str:
        rows = _all_rows(conn)

        def run(cur: Any) -> int:
            cur.execute("SELECT store_id, rev FROM linkedge_state WHERE id = 1 FOR UPDATE")
            store_id, rev = cur.fetchone()
            if rev != 0:
                return -1  # another node seeded it meanwhile
            _upsert(cur, 1, [(t, k, d) for t, k, d in rows])
            cur.execute("UPDATE linkedge_state SET rev = 1 WHERE id = 1")
            cur.execute(f"NOTIFY {CHANNEL}")
            with Transaction(conn):
                _set_meta(conn, META_STORE_ID, store_id)
                _set_meta(conn, META_STORE_REV, 1)
                if _has_capture(conn):
                    conn.execute("DELETE FROM temp.store_changed")
            return len(rows)

        # (the mirror's bookkeeping commits before PostgreSQL: if PostgreSQL then fails,
        # the next start sees rev 0 and a store id of its own, and seeds again)
        sent = self._pg(run)
        if sent < 0:
            return self.join(conn)
        return f"seeded the empty link store with {sent} row(s)"

    def push(self, conn: sqlite3.Connection) -> None:
        """The before-commit hook: send this transaction's catalog changes to the store."""
        changed = conn.execute("SELECT tbl, key FROM temp.store_changed").fetchall()
        if not changed:
            return
        conn.execute("DELETE FROM temp.store_changed")
        down = self.down()
        if down is not None:
            raise StoreUnavailable(
                f"the link store {self.shown} is unreachable ({down}): nothing was changed; "
                "the edges keep serving the links they have"
            )
        docs = [(str(t), str(k), _read_row(conn, str(t), orjson.loads(k))) for t, k in changed]
        base = mirror_rev(conn)

        def run(cur: Any) -> int:
            cur.execute("SELECT rev FROM linkedge_state WHERE id = 1 FOR UPDATE")
            rev = int(cur.fetchone()[0])
            if rev != base:
                raise StoreConflict(
                    "another node changed the links at the same moment: send the request again"
                )
            new = rev + 1
            _upsert(cur, new, docs)
            cur.execute("UPDATE linkedge_state SET rev = %s WHERE id = 1", (new,))
            cur.execute(f"NOTIFY {CHANNEL}")
            return new

        new = self._pg(run)
        _set_meta(conn, META_STORE_REV, new)
        self.last_rev = new

    def pull(self, conn: sqlite3.Connection) -> int:
        """Apply the store's rows newer than the mirror's revision; the rows applied."""
        since = mirror_rev(conn)

        def run(cur: Any) -> tuple[int, list[tuple[str, str, bool, Any]]]:
            cur.execute("SELECT rev FROM linkedge_state WHERE id = 1")
            rev = int(cur.fetchone()[0])
            if rev == since:
                return rev, []
            cur.execute(
                "SELECT kind, key, deleted, row FROM linkedge_rows "
                "WHERE rev > %s AND rev <= %s ORDER BY rev",
                (since, rev),
            )
            return rev, [(str(r[0]), str(r[1]), bool(r[2]), r[3]) for r in cur.fetchall()]

        rev, rows = self._pg(run)
        if rev != since:
            with Transaction(conn):
                _apply(conn, rows)
                _set_meta(conn, META_STORE_REV, rev)
                if _has_capture(conn):
                    conn.execute("DELETE FROM temp.store_changed")
        self.last_rev = rev
        return len(rows)


def _db_name(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row is not None and row[2] else "this database"


def _has_capture(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM temp.sqlite_master WHERE name = 'store_changed'").fetchone()
        is not None
    )


def _upsert(cur: Any, rev: int, docs: list[tuple[str, str, dict[str, Any] | None]]) -> None:
    cur.executemany(
        "INSERT INTO linkedge_rows (kind, key, rev, deleted, row) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (kind, key) DO UPDATE SET rev = excluded.rev, "
        "deleted = excluded.deleted, row = excluded.row",
        [
            (t, k, rev, d is None, None if d is None else orjson.dumps(d).decode())
            for t, k, d in docs
        ],
    )


# Applied in this order: what a removal frees (a slug, a host) before what takes it.
_ORDER: Final = {
    ("links", True): 0,
    ("purged_links", False): 1,
    ("purged_links", True): 1,
    ("domains", True): 2,
    ("domains", False): 3,
    ("links", False): 4,
}


def _apply(conn: sqlite3.Connection, rows: list[tuple[str, str, bool, Any]]) -> None:
    """Write the store's rows into the mirror (inside the caller's Transaction)."""
    if not rows:
        return
    local_rev = next_rev(conn)
    columns = {table: set(_columns(conn, table)) for table in KEYS}
    rows = sorted(rows, key=lambda r: _ORDER.get((r[0], r[2]), 5))
    for table, key_text, deleted, doc in rows:
        if table not in KEYS:
            continue  # a kind a newer linkedge shares
        keys = KEYS[table]
        key = orjson.loads(key_text)
        where = " AND ".join(f"{c} = ?" for c in keys)
        if table == "links":
            link_id = int(key[0])
            exists = conn.execute("SELECT 1 FROM links WHERE id = ?", (link_id,)).fetchone()
            before = link_group_keys(conn, link_id) if exists else ()
        if deleted:
            conn.execute(f"DELETE FROM {table} WHERE {where}", key)
            if table == "links" and before:
                move_link_groups(conn, link_id, before, ())
            continue
        if isinstance(doc, str | bytes):
            doc = orjson.loads(doc)
        values = {k: _from_json(v) for k, v in doc.items() if k in columns[table]}
        if "rev" in values:
            values["rev"] = local_rev  # the mirror's workers reload what has a newer rev
        names = list(values)
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        conn.execute(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
            f"ON CONFLICT ({', '.join(keys)}) {conflict}",
            list(values.values()),
        )
        if table == "links" and exists:
            move_link_groups(conn, link_id, before, link_group_keys(conn, link_id))


def attach_cli(conn: sqlite3.Connection, url: str) -> LinkStore:
    """A CLI command's database joined to the store: catch up now (a stale copy is used,
    with a warning, when the store is unreachable: reads work, writes fail), then every
    catalog write goes through the store."""
    store = LinkStore(url)
    try:
        store.join(conn)
    except StoreUnavailable as exc:
        if _meta(conn, META_STORE_ID) is None:
            raise
        log.warning("%s (using this node's copy)", exc.message)
    store.attach(conn)
    return store


# --- a node's running parts ----------------------------------------------------------------


class StoreDatabase(Database):
    """The collector's writer: as Database, and a write that met a newer store revision
    (StoreConflict) is run again after pulling."""

    def __init__(self, path: str, store: LinkStore, *, timeout_ms: int) -> None:
        super().__init__(path, timeout_ms=timeout_ms)
        self.store = store

    async def open(self) -> StoreDatabase:
        await super().open()
        await super().run(self.store.attach)
        return self

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        for attempt in range(CONFLICT_RETRIES):
            try:
                return await super().run(fn, *args)
            except StoreConflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                await super().run(self.store.pull)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._db is not None:
            await super().run(self.store.detach)
            await super().run(lambda _conn: self.store.close())
        await super().close()


class StoreListener:
    """LISTEN for the store's changes on a thread of its own; `wake` is called (from that
    thread) on each notification and after each (re)connect. `error` says why the store
    is unreachable, None while it is connected."""

    def __init__(self, url: str, wake: Callable[[], None], mirrored: Callable[[], int]) -> None:
        self.url = url
        self.wake = wake
        self.mirrored = mirrored  # the revision the mirror holds
        self.error: str | None = None
        self.down_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-store-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        psycopg = _psycopg()
        failures = 0
        while not self._stop.is_set():
            conn = None
            try:
                conn = _connect(self.url, autocommit=True)
                conn.execute(f"LISTEN {CHANNEL}")
                if self.error is not None:
                    log.info("link store %s reachable", redact(self.url))
                self.error, self.down_since, failures = None, None, 0
                self.wake()  # catch up on what changed while we were away
                while not self._stop.is_set():
                    woke = False
                    for _n in conn.notifies(timeout=LISTEN_CHECK_S, stop_after=1):
                        woke = True
                    if woke:
                        self.wake()
                        continue
                    # quiet: prove the connection alive, and catch what a notification
                    # missed (or a pull that failed) by the store's revision
                    row = conn.execute("SELECT rev FROM linkedge_state WHERE id = 1").fetchone()
                    if row is not None and int(row[0]) != self.mirrored():
                        self.wake()
            except psycopg.Error as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if self.error is None:
                    log.warning(
                        "link store %s unreachable (%s): serving the links this node has",
                        redact(self.url),
                        text,
                    )
                    self.down_since = time.time()
                self.error = text
                failures += 1
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._stop.wait(RECONNECT_S[min(failures, len(RECONNECT_S)) - 1] if failures else 0)


class StoreSync:
    """The collector's part: listen, pull into the mirror, make the workers serve it."""

    def __init__(
        self,
        store: LinkStore,
        writer: Database,
        serve: Callable[[], Any],
    ) -> None:
        self.store = store
        self.writer = writer
        self.serve = serve  # async: workers serve the mirror's current revision
        self.listener = StoreListener(store.url, self._wake, lambda: store.last_rev)
        store.down = lambda: self.listener.error
        self.pulls = 0
        self.pulled_rows = 0
        self.last_pull_error: str | None = None
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._event.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="link-store-sync")
        self.listener.start()

    async def _run(self) -> None:
        while True:
            await self._event.wait()
            self._event.clear()
            try:
                applied = await self.writer.run(self.store.pull)
                self.pulls += 1
                self.pulled_rows += applied
                self.last_pull_error = None
                if applied:
                    await self.serve()
            except LinkedgeError as exc:
                self.last_pull_error = exc.message
                log.warning("pulling from the link store failed: %s", exc.message)
            except Exception:  # noqa: BLE001 - logged; the next notification retries
                log.exception("applying link store changes failed")

    async def stop(self) -> None:
        await asyncio.to_thread(self.listener.stop)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def health(self) -> dict[str, Any]:
        error = self.listener.error or self.last_pull_error
        since = self.listener.down_since
        return {
            "ok": error is None,
            "url": self.store.shown,
            "error": error,
            "down_since_s": None if since is None else round(time.time() - since, 1),
        }
