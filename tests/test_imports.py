"""admin/imports.py: links from Bitly, Shlink, YOURLS, Kutt and any CSV, all or nothing.

Sample files are built here from each format's documented columns."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin import imports
from admin.imports import ImportFailed
from admin.progress import Progress
from edge import catalog
from tests.conftest import cli, init_db
from tests.test_api import Api, start_server

NOW_S = 1_767_225_600.0  # 2026-01-01


def csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


BITLY = csv_bytes(
    ["Title", "Bitlink", "Custom back-half", "Long URL", "Created", "Tags"],
    [
        [
            "Spring sale",
            "bit.ly/3xYzAbc",
            "",
            "https://example.com/spring",
            "2024-03-01 10:00:00",
            "sale, spring",
        ],
        [
            "Launch",
            "go.brand.test/launch",
            "launch",
            "https://example.com/launch?a=1",
            "2024-03-02T08:30:00Z",
            "",
        ],
    ],
)
SHLINK_CSV = csv_bytes(
    ["createdAt", "domain", "shortCode", "shortUrl", "longUrl", "title", "tags", "visits"],
    [
        [
            "2023-05-01T12:00:00+02:00",
            "s.brand.test",
            "abc12",
            "https://s.brand.test/abc12",
            "https://example.org/a",
            "A page",
            "news|blog",
            "7",
        ],
        [
            "2023-05-02T12:00:00+00:00",
            "",
            "def34",
            "https://localhost/def34",
            "https://example.org/b",
            "",
            "",
            "0",
        ],
    ],
)
SHLINK_JSON = json.dumps(
    {
        "shortUrls": {
            "data": [
                {
                    "shortCode": "abc12",
                    "shortUrl": "https://s.brand.test/abc12",
                    "longUrl": "https://example.org/a",
                    "dateCreated": "2023-05-01T12:00:00+02:00",
                    "tags": ["news", "blog"],
                    "meta": {"validSince": None, "validUntil": None, "maxVisits": None},
                    "domain": "s.brand.test",
                    "title": "A page",
                    "crawlable": False,
                },
            ],
            "pagination": {"currentPage": 1, "pagesCount": 1, "totalItems": 1},
        }
    }
).encode()
YOURLS_CSV = csv_bytes(
    ["keyword", "url", "title", "timestamp", "ip", "clicks"],
    [
        ["ozh", "https://ozh.org/", "Ozh's site", "2009-09-10 12:00:00", "127.0.0.1", "12"],
        ["yourls", "https://yourls.org/", "YOURLS", "2010-01-01 00:00:00", "127.0.0.1", "0"],
    ],
)
YOURLS_SQL = b"""-- phpMyAdmin SQL Dump
CREATE TABLE `yourls_url` (
  `keyword` varchar(100) COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  `url` text CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  `title` text,
  `timestamp` timestamp NOT NULL DEFAULT current_timestamp(),
  `ip` varchar(41) NOT NULL,
  `clicks` int(10) UNSIGNED NOT NULL
);
INSERT INTO `yourls_url` (`keyword`, `url`, `title`, `timestamp`, `ip`, `clicks`) VALUES
('ozh', 'https://ozh.org/', 'Ozh\\'s site', '2009-09-10 12:00:00', '127.0.0.1', 12),
('yourls', 'https://yourls.org/?a=1&b=2', 'It''s YOURLS', '2010-01-01 00:00:00', '127.0.0.1', 0);
"""
KUTT = json.dumps(
    {
        "limit": 10,
        "skip": 0,
        "total": 2,
        "data": [
            {
                "id": "5a1e7e2c-0000-4000-8000-000000000001",
                "address": "promo",
                "banned": False,
                "created_at": "2024-06-01T09:00:00.000Z",
                "updated_at": "2024-06-01T09:00:00.000Z",
                "description": "Summer promo",
                "domain": None,
                "expire_in": None,
                "link": "https://kutt.it/promo",
                "password": False,
                "target": "https://example.net/summer",
                "visit_count": 3,
            },
            {
                "id": "5a1e7e2c-0000-4000-8000-000000000002",
                "address": "docs",
                "created_at": "2024-06-02T09:00:00.000Z",
                "description": None,
                "domain": "k.brand.test",
                "target": "https://example.net/docs",
                "visit_count": 0,
            },
        ],
    }
).encode()


def run(conn: sqlite3.Connection, data: bytes, fmt: str, **kw: object) -> imports.ImportReport:
    return imports.run(conn, data, fmt, now_s=NOW_S, **kw)  # type: ignore[arg-type]


@pytest.fixture
def conn(db_path: Path) -> sqlite3.Connection:
    c = catalog.open_db(str(db_path))
    yield c  # type: ignore[misc]
    c.close()


def test_bitly_links_keep_slug_domain_title_tags_and_created(conn: sqlite3.Connection) -> None:
    report = run(conn, BITLY, "bitly")
    assert (report.created, report.domains_added) == (2, ["bit.ly", "go.brand.test"])
    sale = catalog.find_link(conn, "3xYzAbc", "bit.ly")
    assert (sale["url"], sale["title"], sale["tags"]) == (
        "https://example.com/spring",
        "Spring sale",
        ["sale", "spring"],
    )
    assert sale["created_at"] == 1709287200000  # 2024-03-01 10:00:00 UTC
    launch = catalog.find_link(conn, "launch", "go.brand.test")
    assert launch["url"] == "https://example.com/launch?a=1"


@pytest.mark.parametrize("data", [SHLINK_CSV, SHLINK_JSON], ids=["csv", "json"])
def test_shlink_exports(conn: sqlite3.Connection, data: bytes) -> None:
    run(conn, data, "shlink")
    a = catalog.find_link(conn, "abc12", "s.brand.test")
    assert (a["url"], a["title"], a["tags"]) == (
        "https://example.org/a",
        "A page",
        ["news", "blog"],
    )
    assert a["created_at"] == 1682935200000  # 10:00 UTC


@pytest.mark.parametrize("data", [YOURLS_CSV, YOURLS_SQL], ids=["csv", "sql"])
def test_yourls_exports(conn: sqlite3.Connection, data: bytes) -> None:
    report = run(conn, data, "yourls")
    assert report.created == 2
    ozh = catalog.find_link(conn, "ozh")
    assert (ozh["url"], ozh["title"]) == ("https://ozh.org/", "Ozh's site")
    assert ozh["created_at"] == 1252584000000
    assert catalog.find_link(conn, "yourls")["url"].startswith("https://yourls.org/")


def test_yourls_sql_unescapes_quotes_and_keeps_the_query(conn: sqlite3.Connection) -> None:
    run(conn, YOURLS_SQL, "yourls")
    link = catalog.find_link(conn, "yourls")
    assert (link["url"], link["title"]) == ("https://yourls.org/?a=1&b=2", "It's YOURLS")


def test_kutt_api_json(conn: sqlite3.Connection) -> None:
    report = run(conn, KUTT, "kutt")
    assert report.created == 2 and report.domains_added == ["k.brand.test"]
    promo = catalog.find_link(conn, "promo")
    assert (promo["url"], promo["title"]) == ("https://example.net/summer", "Summer promo")
    assert catalog.find_link(conn, "docs", "k.brand.test")["url"] == "https://example.net/docs"


def test_a_generic_csv_with_a_column_map(conn: sqlite3.Connection) -> None:
    data = csv_bytes(
        ["Back-half", "Long URL", "Name", "Labels", "When"],
        [["spring", "https://example.com/s", "Spring", "a;b", "1700000000000"]],
    )
    mapping = imports.parse_map("slug=Back-half,url=Long URL,title=Name,tags=Labels,created=When")
    run(conn, data, "csv", mapping=mapping)
    link = catalog.find_link(conn, "spring")
    assert (link["title"], link["tags"], link["created_at"]) == (
        "Spring",
        ["a", "b"],
        1700000000000,
    )


def test_existing_slugs_are_reported_and_kept_unless_asked(conn: sqlite3.Connection) -> None:
    catalog.create_link(conn, {"url": "https://mine.example/"}, slug="ozh")
    report = run(conn, YOURLS_CSV, "yourls")
    assert report.created == 1
    assert report.existing == [{"line": 2, "domain": "localhost", "slug": "ozh"}]
    assert catalog.find_link(conn, "ozh")["url"] == "https://mine.example/"
    again = run(conn, YOURLS_CSV, "yourls", overwrite=True)
    assert (again.created, again.replaced) == (0, 2)
    assert catalog.find_link(conn, "ozh")["url"] == "https://ozh.org/"


def test_a_bad_row_names_its_line_and_field_and_nothing_is_written(
    conn: sqlite3.Connection,
) -> None:
    data = csv_bytes(
        ["keyword", "url", "title", "timestamp"],
        [
            ["good", "https://example.com/", "", "2020-01-01 00:00:00"],
            ["bad", "ftp://example.com/", "", "2020-01-01 00:00:00"],
        ],
    )
    with pytest.raises(ImportFailed) as caught:
        run(conn, data, "yourls")
    assert caught.value.message.startswith("line 3, field url: ")
    assert caught.value.line == 3
    count = conn.execute("SELECT count(*) FROM links").fetchone()[0]
    assert count == 0  # the good row went back with the bad one
    late = csv_bytes(["keyword", "url", "timestamp"], [["x", "https://e.example/", "yesterday"]])
    with pytest.raises(ImportFailed, match=r"^line 2, field created_at: "):
        run(conn, late, "yourls")
    slug = csv_bytes(["keyword", "url"], [["a b", "https://e.example/"]])
    with pytest.raises(ImportFailed, match=r"^line 2, field slug: "):
        run(conn, slug, "yourls")
    with pytest.raises(ImportFailed, match=r"^line 2: .*VALUES"):
        run(conn, b"INSERT INTO yourls_url (keyword, url) VALUES\n(oops);", "yourls")
    with pytest.raises(ImportFailed, match=r"field url: no destination column"):
        run(conn, b"a,b\n1,2\n", "bitly")


def test_a_dry_run_reports_everything_and_writes_nothing(conn: sqlite3.Connection) -> None:
    report = run(conn, BITLY, "bitly", dry_run=True)
    assert (report.dry_run, report.created, report.domains_added) == (
        True,
        2,
        ["bit.ly", "go.brand.test"],
    )
    assert conn.execute("SELECT count(*) FROM links").fetchone()[0] == 0
    assert [d["host"] for d in catalog.list_domains(conn)] == ["localhost"]


# -- property: any table of links written as CSV reads back as the same links ---------------

_slug = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True).filter(
    lambda s: s not in ("robots.txt", "favicon.ico")
)
_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=40)
_tag = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_link = st.tuples(_slug, _text, st.lists(_tag, max_size=3, unique=True))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_link, max_size=12, unique_by=lambda t: t[0]), st.sampled_from(["\n", "\r\n"]))
def test_csv_rows_read_back_as_written(links: list[tuple[str, str, list[str]]], eol: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=eol)
    writer.writerow(["slug", "url", "title", "tags"])
    for slug, title, tags in links:
        writer.writerow([slug, f"https://example.com/{slug}", title, ",".join(tags)])
    rows = list(imports.read_rows(out.getvalue().encode(), "csv"))
    assert [(r.slug, r.url, r.title or "", r.tags) for r in rows] == [
        (slug, f"https://example.com/{slug}", title.strip(), tags) for slug, title, tags in links
    ]


@given(st.binary(max_size=300), st.sampled_from(imports.FORMATS))
def test_any_bytes_read_as_links_or_fail_with_the_import_error(data: bytes, fmt: str) -> None:
    try:
        for row in imports.read_rows(data, fmt):
            assert row.line >= 1
    except ImportFailed:
        pass


_sql_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@given(st.lists(st.tuples(_slug, _sql_text), min_size=1, max_size=6))
def test_yourls_sql_values_read_back(rows: list[tuple[str, str]]) -> None:
    def quote(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"

    values = ",\n".join(
        f"({quote(k)}, {quote('https://e.example/' + k)}, {quote(t)})" for k, t in rows
    )
    dump = f"INSERT INTO `yourls_url` (`keyword`, `url`, `title`) VALUES\n{values};\n"
    got = [(r.slug, r.title or "") for r in imports.read_rows(dump.encode(), "yourls")]
    assert got == [(k, t.strip()) for k, t in rows]


# -- the command and the API ------------------------------------------------------------------


def test_the_import_command(db_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "bitly.csv"
    path.write_bytes(BITLY)
    dry = cli("import", str(path), "--from", "bitly", "--dry-run", db=db_path)
    assert "2 links would be created" in dry.stdout and "dry run" in dry.stdout
    done = cli("import", str(path), "--from", "bitly", "--domain", "go.brand.test", db=db_path)
    assert done.stdout.startswith("2 links created, 0 replaced, 0 skipped")
    again = cli(
        "import", str(path), "--from", "bitly", "--json", "--domain", "go.brand.test", db=db_path
    )
    assert len(json.loads(again.stdout)["existing"]) == 2
    kept = cli("import", str(path), "--from", "bitly", "--domain", "go.brand.test", db=db_path)
    assert "line 2: go.brand.test/3xYzAbc exists, kept" in kept.stderr
    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes(["Long URL", "Bitlink"], [["not a url", "bit.ly/x"]]))
    failed = cli("import", str(bad), "--from", "bitly", db=db_path, check=False)
    assert failed.returncode == 2
    assert failed.stderr.startswith("linkedge: error: line 2, field url: ")
    assert failed.stderr.count("\n") == 1


def test_import_over_the_api(tmp_path: Path) -> None:
    proc = start_server(init_db(tmp_path / "linkedge.db"))
    try:
        api = Api(proc.admin_port)
        status, report = api.post("/api/import?from=kutt&dry_run=true", KUTT)
        assert status == 200 and report["dry_run"] and report["created"] == 2
        assert api.get("/api/links")[1]["links"] == []
        status, report = api.post("/api/import?from=kutt", KUTT)
        assert (status, report["created"]) == (200, 2)
        status, body = api.post("/api/import?from=kutt", b'{"data": [{"address": "x"}]}')
        assert status == 400
        assert body["error"]["code"] == "import_failed"
        assert body["error"]["message"] == (
            "line 1, field url: is empty: every link needs a destination"
        )
        assert body["error"]["field"] == "url"
    finally:
        proc.stop()


def test_progress_shows_count_rate_and_eta() -> None:
    out = io.StringIO()
    with Progress("import", total=1000, unit="links", stream=out, live=True) as p:
        for _ in range(600):
            p.advance()
        line = p.line()
    assert line.startswith("import: 600 of 1,000 links (60%), ")
    assert "links/s, ETA " in line
    assert out.getvalue().endswith("\n")
    quiet = io.StringIO()
    with Progress("import", stream=quiet, live=False) as p:
        for _ in range(600):
            p.advance()
    assert quiet.getvalue() == ""
