"""admin/cli.py: the `linkedge` command against real SQLite files and real .mmdb files."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli
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
