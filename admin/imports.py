"""`linkedge import FILE --from FORMAT` and `POST /api/import`: links from other shorteners.

Formats, read by their documented columns (a header is matched case-insensitively, and
`--map field=Header,...` names others):
  bitly    Bitly's links CSV export: Bitlink / Link (host and back-half), Custom back-half,
           Long URL, Title, Tags, Created
  shlink   Shlink's short-URL export: the web client's CSV (shortCode, shortUrl, longUrl,
           title, tags joined by "|", createdAt / dateCreated, domain) or the REST API's JSON
           (`{"shortUrls": {"data": [...]}}`, or a bare list of short URLs)
  yourls   YOURLS's `yourls_url` table: its CSV export (keyword, url, title, timestamp) or
           its SQL dump (`INSERT INTO yourls_url (...) VALUES (...), ...;`)
  kutt     Kutt's API JSON (`GET /api/v2/links`: {"data": [{address, target, description,
           domain, created_at, ...}]}, or a bare list)
  csv      any CSV: `--map slug=Back-half,url=Long URL,title=Name,tags=Labels,...`; without
           a map the linkedge names (slug, url, title, tags, created, domain, campaign,
           notes) are the headers
Rules:
- All or nothing: every row goes through edge/catalog.py create_link (the same validation
  as the API) inside one Transaction; a bad row stops the import with its line and field
  ("line 12, field url: ...") and nothing is written. A dry run is the same transaction,
  rolled back, so it reports exactly what the import would do.
- An existing slug is reported and skipped, never overwritten, unless `overwrite` is
  asked (then its destination, title and tags are replaced). A domain the file names that
  is not here yet is added (or `domain` puts every link on one domain).
- A file is parsed as a stream of rows; the whole import is one SQLite transaction.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from admin import timerange
from admin.progress import Progress
from edge import catalog
from edge.db import Transaction
from edge.errors import Conflict, InvalidField, LinkedgeError, NotFound

FORMATS: Final = ("bitly", "shlink", "yourls", "kutt", "csv")
FIELDS: Final = ("slug", "url", "title", "tags", "created", "domain", "campaign", "notes")
# A CSV field may be long (a destination URL with its query); csv's default is 128 KiB.
MAX_FIELD_CHARS: Final = 1 << 20
# An import of more rows is a job for several files: it holds one write transaction.
MAX_ROWS: Final = 1_000_000

# Each format's headers per field, in order of preference (lowercase).
_HEADERS: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "bitly": {
        "slug": ("custom back-half", "back-half", "custom bitlinks", "bitlink", "link"),
        "url": ("long url", "long_url", "destination url"),
        "title": ("title",),
        "tags": ("tags",),
        "created": ("created", "date created", "created_at", "creation date"),
        "domain": ("bitlink", "link"),
    },
    "shlink": {
        "slug": ("shortcode", "short code", "shorturl", "short url"),
        "url": ("longurl", "long url"),
        "title": ("title",),
        "tags": ("tags",),
        "created": ("createdat", "datecreated", "created at", "date created"),
        "domain": ("domain", "shorturl", "short url"),
    },
    "yourls": {
        "slug": ("keyword",),
        "url": ("url",),
        "title": ("title",),
        "created": ("timestamp",),
    },
    "csv": {name: (name,) for name in FIELDS},
}
_FIELD_NAMES: Final = {
    "created": "created_at",  # as linkedge calls it
}


class ImportFailed(LinkedgeError):
    """A row that cannot be imported: its line and field are in the message."""

    code = "import_failed"

    def __init__(self, message: str, field: str | None = None, line: int | None = None):
        where = f"line {line}" if line is not None else "the file"
        text = f"{where}, field {field}: {message}" if field else f"{where}: {message}"
        super().__init__(text, field)
        self.line = line


@dataclass(slots=True)
class LinkRow:
    line: int
    url: str | None = None
    slug: str | None = None
    title: str | None = None
    tags: list[str] = field(default_factory=list)
    created: str | int | None = None
    domain: str | None = None
    campaign: str | None = None
    notes: str | None = None


@dataclass(slots=True)
class ImportReport:
    dry_run: bool
    created: int = 0
    replaced: int = 0
    existing: list[dict[str, Any]] = field(default_factory=list)
    domains_added: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "created": self.created,
            "replaced": self.replaced,
            "existing": self.existing,
            "domains_added": self.domains_added,
        }


# --- reading ---------------------------------------------------------------------------


def parse_map(text: str | None) -> dict[str, str]:
    """`slug=Back-half,url=Long URL` -> {"slug": "back-half", "url": "long url"}."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, header = part.partition("=")
        name = name.strip().lower()
        if not sep or not header.strip():
            raise InvalidField(f"--map takes field=Header pairs, got {part.strip()!r}", "map")
        if name not in FIELDS:
            raise InvalidField(f"--map: unknown field {name!r} (one of {', '.join(FIELDS)})", "map")
        mapping[name] = header.strip().lower()
    return mapping


def _tags(value: Any, line: int) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = re.split(r"[|,;]", value)
    else:
        raise ImportFailed("tags must be text or a list of text", "tags", line)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ImportFailed("tags must be text or a list of text", "tags", line)
        if item.strip():
            out.append(item.strip())
    return out


def _split_short(value: str) -> tuple[str | None, str | None]:
    """ "bit.ly/abc" or "https://go.example.com/abc" -> (host, slug)."""
    text = value.strip()
    if not text:
        return None, None
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    slug = parts.path.strip("/") or None
    return parts.hostname, slug


def _text_value(value: Any, name: str, line: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and name == "created":
        return str(int(value))
    if not isinstance(value, str):
        raise ImportFailed("must be text", name, line)
    return value.strip() or None


def _csv_rows(data: bytes, fmt: str, mapping: dict[str, str]) -> Iterator[LinkRow]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFailed(f"the file is not UTF-8 (byte {exc.start})") from None
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportFailed(f"not CSV: {exc}", line=1) from None
    columns = {h.strip().lower(): i for i, h in enumerate(header)}
    wanted = dict(_HEADERS[fmt])
    for name, head in mapping.items():
        wanted[name] = (head,)
    # per field, the columns that may hold it: a row takes the first that is not empty
    # (Bitly's "Custom back-half" when there is one, else its Bitlink's)
    where: dict[str, list[int]] = {}
    for name, heads in wanted.items():
        found = [columns[h] for h in heads if h in columns]
        if found:
            where[name] = found
        elif name in mapping:
            raise ImportFailed(f"no column {mapping[name]!r} in the header", name, 1)
    if "url" not in where:
        named = " or ".join(repr(h) for h in wanted["url"])
        raise ImportFailed(f"no destination column ({named}) in the header", "url", 1)
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            values = {
                n: next((cells[i] for i in at if i < len(cells) and cells[i].strip()), "")
                for n, at in where.items()
            }
            yield _row(values, line, fmt)
    except csv.Error as exc:
        raise ImportFailed(f"not CSV: {exc}", line=reader.line_num) from None


def _row(values: dict[str, Any], line: int, fmt: str) -> LinkRow:
    row = LinkRow(line)
    for name in ("url", "title", "created", "campaign", "notes"):
        setattr(row, name, _text_value(values.get(name), name, line))
    row.tags = _tags(values.get("tags"), line)
    slug = _text_value(values.get("slug"), "slug", line)
    domain = _text_value(values.get("domain"), "domain", line)
    if slug is not None and ("/" in slug or "." in slug.split("/")[0]):
        # a short URL ("bit.ly/abc", "https://s.test/abc"): its host is the domain
        host, slug = _split_short(slug)
        if domain is None or "/" in domain:
            domain = host
    elif domain is not None and ("/" in domain or fmt in ("bitly",)):
        domain = _split_short(domain)[0]
    row.slug, row.domain = slug, domain
    return row


def _json_rows(data: bytes, fmt: str) -> Iterator[LinkRow]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ImportFailed(f"not JSON: {exc}") from None
    if isinstance(doc, dict):
        inner = doc.get("shortUrls", doc) if fmt == "shlink" else doc
        items = inner.get("data") if isinstance(inner, dict) else None
    else:
        items = doc
    if not isinstance(items, list):
        what = '{"shortUrls": {"data": [...]}}' if fmt == "shlink" else '{"data": [...]}'
        raise ImportFailed(f"expected {what} or a list of links")
    for index, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise ImportFailed("each link must be a JSON object", line=index)
        if fmt == "kutt":
            values = {
                "slug": item.get("address"),
                "url": item.get("target"),
                "title": item.get("description"),
                "created": item.get("created_at"),
                "domain": item.get("domain"),
                "tags": [t.get("name") if isinstance(t, dict) else t for t in item["tags"]]
                if isinstance(item.get("tags"), list)
                else item.get("tags"),
            }
        else:
            values = {
                "slug": item.get("shortCode"),
                "url": item.get("longUrl"),
                "title": item.get("title"),
                "created": item.get("dateCreated") or item.get("createdAt"),
                "domain": item.get("domain"),
                "tags": item.get("tags"),
            }
        yield _row(values, index, fmt)


# YOURLS's SQL dump: INSERT INTO `yourls_url` (`keyword`, ...) VALUES (...), (...);
_INSERT: Final = re.compile(
    r"INSERT\s+INTO\s+`?(\w+)`?\s*\(([^)]*)\)\s*VALUES\s*", re.IGNORECASE | re.DOTALL
)
_SQL_VALUE: Final = re.compile(
    r"\s*(?:'((?:[^'\\]|\\.|'')*)'|(NULL)|(-?\d+(?:\.\d+)?))\s*(,|\))", re.IGNORECASE | re.DOTALL
)
_SQL_UNESCAPE: Final = re.compile(r"\\(.)|''", re.DOTALL)
_ESCAPES: Final = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "Z": "\x1a"}


def _unescape(text: str) -> str:
    return _SQL_UNESCAPE.sub(
        lambda m: "'" if m.group(0) == "''" else _ESCAPES.get(m.group(1), m.group(1)), text
    )


def _sql_rows(text: str) -> Iterator[LinkRow]:
    found = False
    for insert in _INSERT.finditer(text):
        if not insert.group(1).lower().endswith("url"):  # yourls_url, or a prefixed table
            continue
        found = True
        columns = [c.strip(" `\"'\n").lower() for c in insert.group(2).split(",")]
        pos = insert.end()
        while True:
            line = text.count("\n", 0, pos) + 1
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos >= len(text) or text[pos] != "(":
                raise ImportFailed("expected ( starting a row of VALUES", line=line)
            pos += 1
            cells: list[Any] = []
            while True:
                m = _SQL_VALUE.match(text, pos)
                if m is None:
                    raise ImportFailed("unreadable value in VALUES", line=line)
                quoted, null, number, end = m.groups()
                cells.append(_unescape(quoted) if quoted is not None else None if null else number)
                pos = m.end()
                if end == ")":
                    break
            if len(cells) != len(columns):
                raise ImportFailed(f"{len(cells)} values for {len(columns)} columns", line=line)
            values = dict(zip(columns, cells, strict=True))
            yield _row(
                {
                    "slug": values.get("keyword"),
                    "url": values.get("url"),
                    "title": values.get("title"),
                    "created": values.get("timestamp"),
                },
                line,
                "yourls",
            )
            while pos < len(text) and text[pos] in " \t\r\n":
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            break
    if not found:
        raise ImportFailed("no INSERT INTO yourls_url statement in the SQL dump")


def read_rows(data: bytes, fmt: str, mapping: dict[str, str] | None = None) -> Iterator[LinkRow]:
    """The links of an export file, in file order; ImportFailed names a bad line."""
    if fmt not in FORMATS:
        raise InvalidField(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}", "from")
    mapping = mapping or {}
    if mapping and fmt != "csv":
        raise InvalidField("--map is for --from csv (the other formats have known columns)", "map")
    head = data.lstrip()[:1]
    if fmt == "kutt" or (fmt == "shlink" and head in (b"{", b"[")):
        return _json_rows(data, fmt)
    if fmt == "yourls" and not data.lstrip()[:200].lower().startswith(b"keyword"):
        text = data.decode("utf-8", "replace")
        if _INSERT.search(text):
            return _sql_rows(text)
    return _csv_rows(data, fmt, mapping)


# --- writing ---------------------------------------------------------------------------


def _created_ms(row: LinkRow, now_s: float) -> int | None:
    if row.created is None:
        return None
    value: str | int = row.created
    if isinstance(value, str) and value.isdigit() and len(value) <= 10:
        value = int(value) * 1000  # Unix seconds (YOURLS, Kutt may give them)
    elif isinstance(value, str) and value.isdigit():
        value = int(value)
    return timerange.time_ms(value, "created", now_s)


def import_links(
    conn: Any,
    rows: Iterable[LinkRow],
    *,
    now_s: float,
    overwrite: bool = False,
    dry_run: bool = False,
    domain: str | None = None,
    on_row: Callable[[], None] | None = None,
) -> ImportReport:
    """Write `rows` through the catalog in one transaction (rolled back for a dry run)."""
    report = ImportReport(dry_run)
    known_domains = {d["host"] for d in catalog.list_domains(conn)}
    count = 0
    with Transaction(conn) as tx:
        for row in rows:
            count += 1
            if count > MAX_ROWS:
                raise ImportFailed(f"more than {MAX_ROWS:,} links: split the file", line=row.line)
            try:
                _import_one(conn, row, now_s, overwrite, domain, known_domains, report)
            except ImportFailed:
                raise
            except LinkedgeError as exc:
                name = _FIELD_NAMES.get(exc.field or "", exc.field)
                raise ImportFailed(exc.message, name, row.line) from None
            if on_row is not None:
                on_row()
        if dry_run:
            tx.discard()
    return report


def _import_one(
    conn: Any,
    row: LinkRow,
    now_s: float,
    overwrite: bool,
    domain: str | None,
    known: set[str],
    report: ImportReport,
) -> None:
    if row.url is None:
        raise ImportFailed("is empty: every link needs a destination", "url", row.line)
    host = domain or row.domain
    if host is not None:
        from edge.urls import normalize_host

        host = normalize_host(host)
        if host not in known:
            catalog.add_domain(conn, host)
            known.add(host)
            report.domains_added.append(host)
    fields = {"url": row.url, "title": row.title, "tags": row.tags}
    if row.campaign is not None:
        fields["campaign"] = row.campaign
    if row.notes is not None:
        fields["notes"] = row.notes
    created = _created_ms(row, now_s)
    if row.slug is not None:
        try:
            existing = catalog.find_link(conn, row.slug, host)
        except NotFound:
            existing = None
        if existing is not None:
            if not overwrite:
                report.existing.append(
                    {"line": row.line, "domain": existing["domain"], "slug": existing["slug"]}
                )
                return
            catalog.update_link(conn, existing["id"], fields)
            report.replaced += 1
            return
    try:
        catalog.create_link(conn, fields, domain=host, slug=row.slug, created_at=created)
    except Conflict as exc:  # an archived link holds the slug
        raise ImportFailed(exc.message, "slug", row.line) from None
    report.created += 1


def run(
    conn: Any,
    data: bytes,
    fmt: str,
    *,
    now_s: float,
    mapping: dict[str, str] | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    domain: str | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Read and import one file: the CLI's and the API's one path."""
    rows = read_rows(data, fmt, mapping)
    return import_links(
        conn,
        rows,
        now_s=now_s,
        overwrite=overwrite,
        dry_run=dry_run,
        domain=domain,
        on_row=progress.advance if progress is not None else None,
    )


# --- the command ---------------------------------------------------------------------------


def cmd_import(args: Any) -> int:
    """`linkedge import FILE --from FORMAT [--map ...] [--dry-run] [--overwrite]`."""
    import sys
    import time

    from admin.admin_cli import CommandError, open_db, print_json

    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    mapping = parse_map(args.map)
    conn = open_db(args)
    with Progress("import", unit="links") as progress:
        report = run(
            conn,
            data,
            args.source,
            now_s=time.time(),
            mapping=mapping,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            domain=args.domain,
            progress=progress,
        )
    if args.json:
        print_json(report.as_dict())
        return 0
    would = "would be " if report.dry_run else ""
    print(
        f"{report.created} links {would}created, {report.replaced} {would}replaced, "
        f"{len(report.existing)} skipped (slug exists) in {args.db_shown}"
        + (" (dry run: nothing written)" if report.dry_run else "")
    )
    for domain in report.domains_added:
        print(f"domain {domain} {would}added")
    for item in report.existing:
        print(
            f"line {item['line']}: {item['domain']}/{item['slug']} exists, kept "
            "(--overwrite replaces it)",
            file=sys.stderr,
        )
    return 0
