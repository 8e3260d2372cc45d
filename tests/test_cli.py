"""admin/cli.py: the `linkedge` command against real SQLite files and real .mmdb files."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import http.server
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import schema
from tests.conftest import REPO, ServerProcess, cli, init_db, raw_request
from tests.geo_fixtures import build_city_mmdb, write_corrupt_file


def test_link_lifecycle_with_json_output(db_path: Path) -> None:
    out = cli(
        "link",
        "add",
        "https://example.com/a",
        "--slug",
        "a",
        "--tag",
        "x",
        "--campaign",
        "Spring",
        "--utm-source",
        "Mail",
        "--json",
        db=db_path,
    )
    link = json.loads(out.stdout)
    assert link["short_url"] == "https://localhost/a"
    assert link["utm_source"] == "mail" and link["tags"] == ["x"]
    listed = json.loads(cli("link", "list", "--json", db=db_path).stdout)
    assert [item["slug"] for item in listed] == ["a"]
    cli("link", "set", "a", "--url", "https://example.com/b", "--status", "301", db=db_path)
    shown = json.loads(cli("link", "show", "a", "--json", db=db_path).stdout)
    assert (shown["url"], shown["status"]) == ("https://example.com/b", 301)
    cli("link", "disable", "a", db=db_path)
    assert json.loads(cli("link", "show", "a", "--json", db=db_path).stdout)["disabled"]
    cli("link", "rm", "a", db=db_path)
    assert json.loads(cli("link", "list", "--json", db=db_path).stdout) == []
    assert len(json.loads(cli("link", "list", "--all", "--json", db=db_path).stdout)) == 1
    taken = cli("link", "add", "https://example.com/", "--slug", "a", db=db_path, check=False)
    assert taken.returncode == 2 and "already taken" in taken.stderr
    cli("link", "enable", "a", db=db_path)
    assert json.loads(cli("link", "show", "a", "--json", db=db_path).stdout)["archived_at"] is None
    cli("link", "rm", "a", "--purge", db=db_path)
    cli("link", "add", "https://example.com/", "--slug", "a", db=db_path)


def test_domain_commands(db_path: Path) -> None:
    cli("domain", "add", "Go.Example.com", "--default", db=db_path)
    domains = json.loads(cli("domain", "list", "--json", db=db_path).stdout)
    assert {(d["host"], d["default"]) for d in domains} == {
        ("go.example.com", True),
        ("localhost", False),
    }
    cli("domain", "set", "go.example.com", "--fallback-url", "https://example.com/", db=db_path)
    cli("domain", "rm", "localhost", db=db_path)
    bad = cli("domain", "rm", "go.example.com", db=db_path, check=False)
    assert bad.returncode == 2 and "default domain" in bad.stderr
    bad = cli("domain", "add", "https://x.example/", db=db_path, check=False)
    assert bad.returncode == 2 and "bare host name" in bad.stderr


def test_geo_lookup_and_info(tmp_path: Path) -> None:
    mmdb = tmp_path / "city.mmdb"
    build_city_mmdb(mmdb)
    out = json.loads(cli("geo", "lookup", "203.0.113.10", "--geoip", str(mmdb), "--json").stdout)
    assert (out["country"], out["region"], out["city"]) == ("GB", "England", "London")
    info = json.loads(cli("geo", "info", str(mmdb), "--json").stdout)
    assert info["database_type"] == "GeoLite2-City"
    bad = cli("geo", "lookup", "not-an-ip", "--geoip", str(mmdb), check=False)
    assert bad.returncode == 2 and "not an IPv4 or IPv6" in bad.stderr
    corrupt = tmp_path / "bad.mmdb"
    write_corrupt_file(corrupt)
    bad = cli("geo", "info", str(corrupt), check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_geo_update_downloads_verifies_and_installs(
    file_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, root = file_server
    build_city_mmdb(root / "city.mmdb", database_type="DBIP-City-Lite")
    dest = tmp_path / "installed" / "geo.mmdb"
    out = cli("geo", "update", "--url", f"{base}/city.mmdb", "--dest", str(dest))
    assert dest.exists() and "DB-IP" in out.stdout
    write_corrupt_file(root / "broken.mmdb")
    before = dest.read_bytes()
    bad = cli("geo", "update", "--url", f"{base}/broken.mmdb", "--dest", str(dest), check=False)
    assert bad.returncode == 2 and "GeoIP update failed" in bad.stderr
    assert dest.read_bytes() == before  # the working database is untouched
    bad = cli("geo", "update", "--url", f"{base}/missing.mmdb", "--dest", str(dest), check=False)
    assert bad.returncode == 2 and "404" in bad.stderr


# --- the database a command works on (issue 11 items 1 and 3) ---------------------------

SLOW_LOCK_WAIT = {"LINKEDGE_DB_BUSY_TIMEOUT_S": "0.1"}


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`linkedge ARGS` as a user runs it: in `cwd`, with no LINKEDGE_* but `env`'s."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LINKEDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "admin.cli", *args],
        cwd=cwd or REPO,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, *words: str):
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("linkedge: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_only_init_and_serve_create_a_database(tmp_path: Path) -> None:
    """The trial: `domain add ... --default` from another directory created ./linkedge.db
    and said "added"; the server's database was untouched."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = elsewhere / "linkedge.db"
    for args in (
        ("domain", "add", "go.example.com", "--default"),
        ("link", "list"),
        ("stats", "x"),
    ):
        result = run_cli(*args, cwd=elsewhere)
        assert_one_line_error(result, 2, f"no database at {here}", "--db", "LINKEDGE_DB_PATH")
        assert "linkedge init" in result.stderr
        assert not here.exists()
    made = run_cli("init", cwd=elsewhere)
    assert made.returncode == 0 and made.stdout == (
        f"created {here} (schema {schema.LATEST}, default domain localhost)\n"
    )
    again = run_cli("init", cwd=elsewhere)
    assert again.returncode == 0 and "already" in again.stdout
    # success messages name the database they changed
    added = run_cli("domain", "add", "go.example.com", cwd=elsewhere)
    assert added.stdout == f"added go.example.com (in {here})\n"
    link = run_cli("link", "add", "https://example.com/", "--slug", "s", cwd=elsewhere)
    assert f"saved (in {here})" in link.stdout
    for args in (
        ("link", "disable", "s"),
        ("utm", "case", "keep"),
        ("domain", "rm", "go.example.com"),
    ):
        assert f"(in {here})" in run_cli(*args, cwd=elsewhere).stdout, args
    token = run_cli("token", "create", "me", cwd=elsewhere)
    assert token.stdout.startswith("le_") and len(token.stdout.splitlines()) == 1
    assert f"(in {here})" in token.stderr


def _bad_databases(tmp_path: Path) -> dict[str, tuple[Path, int, str]]:
    """name -> (the --db path, the exit status, words the one line must hold)."""
    directory = tmp_path / "a-directory"
    directory.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    locked = tmp_path / "locked.db"
    init_db(locked)
    cases = {
        "missing directory": (tmp_path / "nope" / "linkedge.db", 2, "does not exist"),
        "a directory": (directory, 2, "is a directory"),
        "a non-SQLite file": (text, 2, "is not a SQLite database"),
        "a locked database": (locked, 1, "is locked by another process"),
    }
    if Path("/proc/version").exists():
        cases["/proc/version"] = (Path("/proc/version"), 2, "is not a SQLite database")
    return cases


# Every command that takes --db, with arguments that would work on a good database.
DB_COMMANDS = (
    ("init",),
    ("serve", "--edge", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
    ("demo", "--edge", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
    ("link", "add", "https://example.com/", "--slug", "s"),
    ("link", "list"),
    ("link", "show", "s"),
    ("link", "set", "s", "--url", "https://example.com/2"),
    ("link", "disable", "s"),
    ("link", "enable", "s"),
    ("link", "rm", "s"),
    ("domain", "add", "go.example.com"),
    ("domain", "set", "localhost", "--fallback-url", "https://example.com/"),
    ("domain", "list"),
    ("domain", "rm", "go.example.com"),
    ("token", "create", "ci"),
    ("token", "list"),
    ("token", "revoke", "1"),
    ("utm", "allow", "source", "newsletter"),
    ("utm", "clear", "source"),
    ("utm", "case", "keep"),
    ("utm", "list"),
    ("stats", "s"),
    ("backup", "copy.db"),
)


def test_every_command_says_in_one_line_what_is_wrong_with_its_database(tmp_path: Path) -> None:
    """A missing directory, a directory, /proc/version, a non-SQLite file or a locked
    database: one line naming the file and what to do, exit 2 (the path is wrong) or 1
    (the database is busy), never a traceback, for every command."""
    cases = _bad_databases(tmp_path)
    locked = sqlite3.connect(cases["a locked database"][0], isolation_level=None)
    locked.execute("PRAGMA locking_mode = EXCLUSIVE")
    locked.execute("BEGIN EXCLUSIVE")  # no other connection may even read
    runs = [(name, command) for name in cases for command in DB_COMMANDS]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            results = list(
                pool.map(
                    lambda run: run_cli(
                        *run[1], "--db", str(cases[run[0]][0]), cwd=tmp_path, env=SLOW_LOCK_WAIT
                    ),
                    runs,
                )
            )
    finally:
        locked.close()
    for (name, command), result in zip(runs, results, strict=True):
        path, status, words = cases[name]
        where = f"{name}: linkedge {' '.join(command)}"
        assert result.returncode == status, (where, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("linkedge: error: "), (where, lines)
        assert words in lines[0] and str(path) in lines[0], (where, lines[0])
        assert result.stdout == "", (where, result.stdout)
    assert not (tmp_path / "nope").exists() and not (tmp_path / "copy.db").exists()


@pytest.mark.parametrize("command", [("link", "list"), ("token", "create", "x"), ("stats", "s")])
def test_an_empty_file_or_another_programs_database_is_not_taken(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert_one_line_error(run_cli(*command, "--db", str(empty)), 2, "empty file", "linkedge init")
    assert empty.read_bytes() == b""
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    result = run_cli(*command, "--db", str(other))
    assert_one_line_error(result, 2, "not linkedge's", "tables: photos")
    newer = init_db(tmp_path / "newer.db")
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.close()
    assert_one_line_error(run_cli(*command, "--db", str(newer)), 1, "newer than this linkedge")


def test_a_bug_is_one_line_too_and_traceback_shows_it(tmp_path: Path) -> None:
    """Anything unexpected (here: a table missing under the CLI's feet) is one line;
    --traceback shows where it happened."""
    db = init_db(tmp_path / "linkedge.db")
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE api_tokens")
    conn.commit()
    conn.close()
    result = run_cli("token", "list", "--db", str(db))
    assert_one_line_error(result, 1, "no such table: api_tokens", str(db))
    shown = run_cli("--traceback", "token", "list", "--db", str(db))
    assert shown.returncode == 1 and "Traceback" in shown.stderr


def test_usage_errors_are_one_line_with_where_the_help_is(db_path: Path) -> None:
    for args, words in (
        (("link", "add"), "the following arguments are required: url"),
        (("token", "revoke", "9" * 30), "is not an id"),  # issue 9 defect 8
        (("token", "revoke", str(2**63)), "is not an id"),
        (("link", "add", "https://e.com/", "--status", "200"), "invalid choice"),
    ):
        result = run_cli(*args, "--db", str(db_path))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "--help" in lines[0], lines
    revoked = run_cli("token", "revoke", str(2**63 - 1), "--db", str(db_path))
    assert_one_line_error(revoked, 2, "no token with id")


def test_times_out_of_range_are_one_line(db_path: Path) -> None:
    """Issue 9 defect 5 in the CLI, and issue 11 item 10: the expiry error suggests +7d."""
    for value in ("+3000000d", "-999999999w", "99999999999999999999", "10000-01-01"):
        result = run_cli("link", "add", "https://e.com/", "--expires", value, "--db", str(db_path))
        assert_one_line_error(result, 2, "expires_at")
    bad = run_cli("link", "add", "https://e.com/", "--expires", "soon", "--db", str(db_path))
    assert_one_line_error(bad, 2, "+7d")
    assert "-15m" not in bad.stderr
    stats = run_cli("stats", "x", "--from", "-999999999w", "--db", str(db_path))
    assert_one_line_error(stats, 2)


# --- what the commands say (issue 11 items 2, 5, 6, 8, 10) -------------------------------


def test_changing_the_default_domain_says_what_stays(db_path: Path) -> None:
    cli("link", "add", "https://example.com/", "--slug", "demo", db=db_path)
    out = cli("domain", "add", "go.example.com", "--default", db=db_path).stdout
    assert "go.example.com is now the default domain" in out
    assert "127.0.0.1" in out  # hosts without a domain of their own move with it
    assert "localhost keeps its 1 link(s)" in out and "Host: localhost" in out
    # a slug that is not on the (new) default domain: say where it is
    missing = cli("link", "show", "demo", db=db_path, check=False)
    assert_one_line_error(missing, 2, "localhost has one", "--domain localhost")
    out = cli("domain", "set", "localhost", "--default", db=db_path).stdout
    assert "localhost is now the default domain" in out


def test_tags_add_remove_and_a_replace_says_what_it_did(db_path: Path) -> None:
    cli("link", "add", "https://example.com/", "--slug", "ig", "--tag", "a,b", db=db_path)
    out = cli("link", "set", "ig", "--add-tag", "c", "--json", db=db_path).stdout
    assert json.loads(out)["tags"] == ["a", "b", "c"]
    out = cli("link", "set", "ig", "--rm-tag", "a", db=db_path).stdout
    assert "tags a, b, c -> b, c" in out and "no longer under a" in out
    out = cli("link", "set", "ig", "--tag", "extra", db=db_path).stdout
    assert "tags b, c -> extra" in out and "no longer under b, c in tag stats" in out
    assert "--add-tag/--rm-tag" in out
    missing = cli("link", "set", "ig", "--rm-tag", "nope", db=db_path, check=False)
    assert_one_line_error(missing, 2, "has no tag 'nope'")
    both = cli("link", "set", "ig", "--tag", "x", "--add-tag", "y", db=db_path, check=False)
    assert_one_line_error(both, 2, "not both")


def test_an_expired_link_is_called_expired_and_a_past_expiry_warned(db_path: Path) -> None:
    made = cli(
        "link", "add", "https://example.com/", "--slug", "old", "--expires", "-1h", db=db_path
    )
    assert "is in the past" in made.stderr and "expired at once" in made.stderr
    assert "expired (410)" in made.stdout
    listing = cli("link", "list", db=db_path).stdout
    assert re.search(r"localhost/old\s+302\s+expired", listing), listing
    cli("link", "set", "old", "--expired-url", "https://example.com/over", db=db_path)
    shown = cli("link", "show", "old", db=db_path).stdout
    assert "expired (redirects to its expired URL)" in shown
    fresh = cli("link", "add", "https://example.com/", "--expires", "+7d", db=db_path)
    assert "in the past" not in fresh.stderr and "active" in fresh.stdout


def test_an_archived_slug_says_how_to_restore_or_purge(db_path: Path) -> None:
    cli("link", "add", "https://example.com/", "--slug", "gone", db=db_path)
    cli("link", "rm", "gone", db=db_path)
    again = cli("link", "add", "https://example.com/", "--slug", "gone", db=db_path, check=False)
    assert_one_line_error(again, 2, "archived link", "linkedge link enable gone", "--purge")
    changed = cli("link", "set", "gone", "--title", "x", db=db_path, check=False)
    assert_one_line_error(changed, 2, "is archived: restore it first", "linkedge link enable")


def test_link_add_shows_utm_tags_and_a_local_address(db_path: Path) -> None:
    out = cli(
        "link",
        "add",
        "https://example.org/spring",
        "--slug",
        "spring",
        "--utm-source",
        "newsletter",
        db=db_path,
    ).stdout
    assert (
        "UTM utm_source newsletter: visitors go to https://example.org/spring?utm_source=newsletter"
        in out
    )
    assert (
        "curl -i http://localhost:8080/spring" in out
    )  # https://localhost/... is no local address
    out = run_cli(
        "link", "show", "spring", "--db", str(db_path), env={"LINKEDGE_EDGE_PORT": "9999"}
    )
    assert "http://localhost:9999/spring" in out.stdout


def test_token_list_says_whether_revoked(db_path: Path) -> None:
    cli("token", "create", "a", db=db_path)
    cli("token", "create", "b", db=db_path)
    cli("token", "revoke", "2", db=db_path)
    rows = cli("token", "list", db=db_path).stdout.splitlines()
    assert rows[0].split()[-1] == "REVOKED"
    assert rows[1].split()[-1] == "no" and rows[2].split()[-1].endswith("Z")


def test_geo_update_help_and_a_local_file(tmp_path: Path) -> None:
    helped = cli("geo", "update", "--help").stdout
    assert "--geoip" not in helped and "file:///path" in helped
    source = tmp_path / "dbip.mmdb"
    build_city_mmdb(source, database_type="DBIP-City-Lite")
    for url in (str(source), source.as_uri()):
        dest = tmp_path / "installed.mmdb"
        out = cli("geo", "update", "--url", url, "--dest", str(dest))
        assert dest.exists() and f"installed {dest}" in out.stdout and "installing" in out.stderr
    missing = cli(
        "geo", "update", "--url", str(tmp_path / "nope.mmdb"), "--dest", str(dest), check=False
    )
    assert missing.returncode == 2 and missing.stderr.startswith("installing ")  # progress
    assert_one_line_error(
        subprocess.CompletedProcess([], 2, "", missing.stderr.splitlines()[-1]), 2, "cannot read"
    )


def test_backup_is_consistent_while_the_server_writes(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`linkedge backup` (SQLite's online backup API, no sqlite3 program) while the server
    records clicks: the copy opens, checks ok and holds the links."""
    cli("link", "add", "https://example.com/", "--slug", "b", db=server.db)
    stop = threading.Event()

    def click() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                raw_request(server.edge_port, b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n")

    clicker = threading.Thread(target=click)
    clicker.start()
    try:
        time.sleep(0.3)
        dest = tmp_path / "backups"
        dest.mkdir()
        out = cli("backup", str(dest), db=server.db)
    finally:
        stop.set()
        clicker.join()
    assert "(100%)" in out.stderr.splitlines()[-1]
    [copy] = list(dest.iterdir())
    assert (
        f"backed up {server.db} to {copy}" in out.stdout and "1 link(s), checked ok" in out.stdout
    )
    conn = sqlite3.connect(copy)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT slug FROM links").fetchall() == [("b",)]
    conn.close()
    again = cli("backup", str(copy), db=server.db, check=False)
    assert_one_line_error(again, 2, "exists", "--force")
    assert cli("backup", str(copy), "--force", db=server.db).returncode == 0
    same = cli("backup", str(server.db), "--force", db=server.db, check=False)
    assert_one_line_error(same, 2, "another file")


def test_bots_explain_prints_the_kind_and_the_signal() -> None:
    shown = cli("bots", "explain", "Xenu Link Sleuth/1.3.8", db=None).stdout
    assert shown.splitlines()[:2] == ["kind: crawler", "reason: crawlerdetect:xenu link sleuth"]
    head = json.loads(cli("bots", "explain", "curl/8.5.0", "--head", "--json", db=None).stdout)
    assert (head["kind"], head["reason"]) == ("head", "head:method")
    assert head["bot_list"]["name"] == "crawlerdetect"
    person = cli("bots", "explain", "", db=None).stdout
    assert person.startswith("kind: automation\nreason: linkedge:empty")
