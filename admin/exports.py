"""`linkedge export links|clicks|stats`: CSV or NDJSON, streamed in constant memory.

Rules:
- Rows go from one SQLite read transaction (a consistent snapshot, whatever a running
  server writes meanwhile) to the output a batch at a time (FETCH_ROWS): memory does not
  grow with the number of rows (loadtests/exports.py measures 10M clicks).
- Filters: `--from/--to` (admin/timerange.py's one time parser: -7d, ISO 8601, Unix ms;
  clicks and stats only), `--link SLUG` (with `--domain`), `--campaign NAME`.
- links: every link (archived ones too) with its fields. clicks: every recorded click in
  CLICK_COLUMNS order with its link's domain and slug, times as ISO 8601 UTC with
  milliseconds, the visitor id in hex (it is a keyed hash that changes daily: no person
  can be followed with it). stats: clicks and human clicks per link per UTC day, from the
  day rollups plus the clicks not rolled up yet (exact, like every stats read).
- CSV has a header line; NDJSON is one JSON object per line.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final

import orjson

from admin import timerange
from admin.progress import Progress
from edge import catalog, rollups

KINDS: Final = ("links", "clicks", "stats")
FORMATS: Final = ("csv", "ndjson")
FETCH_ROWS: Final = 5_000  # rows per fetchmany: a few MB at most, whatever the total
DAY_MS: Final = 86_400_000

LINK_EXPORT_COLUMNS: Final = (
    "id",
    "domain",
    "slug",
    "url",
    "status",
    "title",
    "notes",
    "tags",
    "campaign",
    *catalog.UTM_FIELDS,
    "disabled",
    "expires_at",
    "created_at",
    "updated_at",
    "archived_at",
)
_LINK_TIMES: Final = frozenset({"expires_at", "created_at", "updated_at", "archived_at"})
CLICK_EXPORT_COLUMNS: Final = ("id", "domain", "slug", *rollups.CLICK_COLUMNS)
STATS_EXPORT_COLUMNS: Final = ("day", "link_id", "domain", "slug", "clicks", "human_clicks")


def _iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _ms(text: str, field: str, now_s: float) -> int:
    return round(timerange.parse_instant(text, field, now_s) * 1000)


class Filters:
    """What to export: a time range in Unix ms and the links (None: all)."""

    __slots__ = ("from_ms", "to_ms", "link_sql", "link_args")

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        from_text: str | None = None,
        to_text: str | None = None,
        slug: str | None = None,
        domain: str | None = None,
        campaign: str | None = None,
        now_s: float | None = None,
    ) -> None:
        now = time.time() if now_s is None else now_s
        self.from_ms = (
            None
            if from_text is None
            else round(timerange.parse_instant(from_text, "from", now) * 1000)
        )
        self.to_ms = (
            None if to_text is None else round(timerange.parse_instant(to_text, "to", now) * 1000)
        )
        if self.from_ms is not None and self.to_ms is not None and self.to_ms <= self.from_ms:
            from edge.errors import InvalidField

            raise InvalidField("`from` must be before `to`", "from")
        clauses: list[str] = []
        args: list[Any] = []
        if slug is not None:
            clauses.append("id = ?")
            args.append(catalog.find_link(conn, slug, domain)["id"])
        elif domain is not None:
            clauses.append("domain_id = ?")
            args.append(catalog.domain_row(conn, domain)["id"])
        if campaign is not None:
            clauses.append("campaign = ?")
            args.append(campaign)
        self.link_sql = " AND ".join(clauses) if clauses else None
        self.link_args = args

    def time_sql(self, column: str) -> tuple[list[str], list[Any]]:
        clauses, args = [], []
        if self.from_ms is not None:
            clauses.append(f"{column} >= ?")
            args.append(self.from_ms)
        if self.to_ms is not None:
            clauses.append(f"{column} < ?")
            args.append(self.to_ms)
        return clauses, args


def _batches(cur: sqlite3.Cursor) -> Iterator[list[Any]]:
    while True:
        rows = cur.fetchmany(FETCH_ROWS)
        if not rows:
            return
        yield rows


def _names(conn: sqlite3.Connection) -> dict[int, tuple[str, str]]:
    """link id -> (domain, slug): a few dozen bytes per link, not per click."""
    rows = conn.execute(
        "SELECT l.id, d.host, l.slug FROM links l JOIN domains d ON d.id = l.domain_id"
    )
    names = {r[0]: (r[1], r[2]) for r in rows}
    for r in conn.execute("SELECT id, slug FROM purged_links"):
        names.setdefault(r[0], ("", r[1] or ""))
    return names


def link_rows(conn: sqlite3.Connection, f: Filters) -> Iterator[tuple[Any, ...]]:
    where = f" WHERE {f.link_sql.replace('id =', 'links.id =')}" if f.link_sql else ""
    columns = ", ".join(
        "domains.host" if c == "domain" else f"links.{c}" for c in LINK_EXPORT_COLUMNS
    )
    cur = conn.execute(
        f"SELECT {columns} FROM links JOIN domains ON domains.id = links.domain_id"
        f"{where} ORDER BY links.id",
        f.link_args,
    )
    tags_at = LINK_EXPORT_COLUMNS.index("tags")
    times = [i for i, c in enumerate(LINK_EXPORT_COLUMNS) if c in _LINK_TIMES]
    for batch in _batches(cur):
        for row in batch:
            out = list(row)
            out[tags_at] = orjson.loads(out[tags_at]) if out[tags_at] else []
            for i in times:
                out[i] = timerange.iso_ms(out[i])
            yield tuple(out)


def click_rows(conn: sqlite3.Connection, f: Filters) -> Iterator[tuple[Any, ...]]:
    names = _names(conn)
    clauses, args = f.time_sql("ts")
    if f.link_sql is not None:
        clauses.append(f"link_id IN (SELECT id FROM links WHERE {f.link_sql})")
        args += f.link_args
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    cur = conn.execute(
        f"SELECT id, {', '.join(rollups.CLICK_COLUMNS)} FROM clicks{where} ORDER BY id", args
    )
    vid_at = rollups.CLICK_COLUMNS.index("visitor_id") + 1
    missing = ("", "")
    for batch in _batches(cur):
        for row in batch:
            domain, slug = names.get(row[2], missing)
            vid = row[vid_at]
            yield (
                row[0],
                domain,
                slug,
                _iso_ms(row[1]),
                *row[2:vid_at],
                vid.hex() if vid is not None else None,
                *row[vid_at + 1 :],
            )


def stats_rows(conn: sqlite3.Connection, f: Filters) -> Iterator[tuple[Any, ...]]:
    names = _names(conn)
    day_clauses, day_args = [], []
    if f.from_ms is not None:
        day_clauses.append("day >= ?")
        day_args.append(f.from_ms // DAY_MS)
    if f.to_ms is not None:
        day_clauses.append("day <= ?")
        day_args.append((f.to_ms - 1) // DAY_MS)
    tail_clauses, tail_args = f.time_sql("c.ts")
    link_filter = ""
    if f.link_sql is not None:
        link_filter = f" AND link_id IN (SELECT id FROM links WHERE {f.link_sql})"
    day_clauses.append("link_id > 0")  # routes' rows have negative keys (rules.route_key)
    with rollups.read_snapshot(conn) as watermark:
        day_where = " AND ".join(day_clauses) or "1"
        tail_where = " AND ".join(["c.id > ?", *tail_clauses])
        cur = conn.execute(
            "SELECT day, link_id, sum(clicks), sum(humans) FROM ("
            f" SELECT day, link_id, clicks, humans FROM link_day WHERE {day_where}{link_filter}"
            " UNION ALL"
            f" SELECT c.ts / {DAY_MS}, c.link_id, count(*), sum({rollups.HUMAN_SQL})"
            f" FROM clicks c WHERE {tail_where}{link_filter.replace('link_id', 'c.link_id')}"
            " GROUP BY 1, 2"
            ") GROUP BY 1, 2 ORDER BY 1, 2",
            [*day_args, *f.link_args, watermark, *tail_args, *f.link_args],
        )
        missing = ("", "")
        for batch in _batches(cur):
            for day, link_id, clicks, humans in batch:
                domain, slug = names.get(link_id, missing)
                when = dt.datetime.fromtimestamp(day * 86400, dt.UTC).strftime("%Y-%m-%d")
                yield (when, link_id, domain, slug, clicks, humans)


_SOURCES: Final = {
    "links": (LINK_EXPORT_COLUMNS, link_rows),
    "clicks": (CLICK_EXPORT_COLUMNS, click_rows),
    "stats": (STATS_EXPORT_COLUMNS, stats_rows),
}


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def write(
    out: IO[bytes],
    kind: str,
    fmt: str,
    conn: sqlite3.Connection,
    filters: Filters,
    progress: Progress | None = None,
) -> int:
    """Stream one export to `out`; return the number of rows."""
    columns, source = _SOURCES[kind]
    rows = source(conn, filters)
    count = 0
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # one snapshot for the whole export
    try:
        if fmt == "csv":
            text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
            writer = csv.writer(text)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_csv_value(v) for v in row])
                count += 1
                if progress is not None:
                    progress.advance()
            text.flush()
            text.detach()
        else:
            dumps = orjson.dumps
            for row in rows:
                out.write(dumps(dict(zip(columns, row, strict=True))) + b"\n")
                count += 1
                if progress is not None:
                    progress.advance()
        out.flush()
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")
    return count


def cmd_export(args: Any) -> int:
    from admin.admin_cli import CommandError, open_db

    if args.what == "links" and (args.from_ or args.to):
        raise CommandError("--from/--to select clicks and stats; links are exported whole")
    conn = open_db(args)
    filters = Filters(
        conn,
        from_text=args.from_,
        to_text=args.to,
        slug=args.link,
        domain=args.domain,
        campaign=args.campaign,
    )
    target: IO[bytes]
    if args.output:
        try:
            target = open(args.output, "wb", buffering=1 << 20)  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        target = sys.stdout.buffer
    try:
        with Progress(f"export {args.what}", unit="rows") as progress:
            count = write(target, args.what, args.format, conn, filters, progress)
    finally:
        if args.output:
            target.close()
    where = args.output or "standard output"
    print(f"exported {count} {args.what} rows as {args.format} to {where}", file=sys.stderr)
    return 0


def columns_of(kind: str) -> Sequence[str]:
    return _SOURCES[kind][0]
