"""geo/update.py against a real HTTP server on 127.0.0.1 serving real .mmdb fixtures."""

from __future__ import annotations

import datetime
import gzip
import io
import socket
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from geo.geoip import GeoDatabase
from geo.update import (
    ATTRIBUTION,
    DBIP_CITY_LITE_URL,
    MAXMIND_GEOLITE2_CITY_URL,
    GeoUpdateError,
    default_url,
    download_database,
    previous_month_url,
)
from tests.geo_fixtures import (
    DBIP_CITY_TYPE,
    build_asn_mmdb,
    build_city_mmdb,
    write_corrupt_file,
)

# path -> (status, body, send Content-Length?)
Route = tuple[int, bytes, bool]


class FixtureServer:
    """A real HTTP/1.0 server in a thread; routes are set per test."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.release = threading.Event()  # lets a stalled handler finish at teardown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append(self.path)
                if path == "/stall":
                    server.release.wait(10)
                    return
                status, body, with_length = server.routes.get(path, (404, b"not found", True))
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                if with_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes, status: int = 200, with_length: bool = True) -> str:
        self.routes[path] = (status, body, with_length)
        return self.base + path

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    fixture = FixtureServer()
    yield fixture
    fixture.close()


@pytest.fixture(scope="module")
def city_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("update") / "city.mmdb"
    build_city_mmdb(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def dbip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("update") / "dbip.mmdb"
    build_city_mmdb(path, database_type=DBIP_CITY_TYPE)
    return path.read_bytes()


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz laid out like MaxMind's downloads (a dated folder of files)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An installed database that failed updates must leave byte-for-byte as it was."""
    path = tmp_path / "geo" / "GeoLite2-City.mmdb"
    build_asn_mmdb(path)
    return path


def assert_untouched(dest: Path, before: bytes) -> None:
    assert dest.read_bytes() == before
    leftovers = [p.name for p in dest.parent.iterdir() if p != dest]
    assert leftovers == [], "temporary files were left behind"


def assert_installed(dest: Path, info: dict[str, object], database_type: str) -> None:
    assert info["database_type"] == database_type
    assert info["path"] == str(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert [p.name for p in dest.parent.iterdir()] == [dest.name], "temporary files left"
    assert GeoDatabase(str(dest)).lookup("203.0.113.10").city == "London"


# -- formats --------------------------------------------------------------------------------


def test_plain_mmdb_is_installed(server: FixtureServer, dest: Path, city_bytes: bytes) -> None:
    info = download_database(server.serve("/city.mmdb", city_bytes), str(dest))
    assert_installed(dest, info, "GeoLite2-City")
    assert info["downloaded_bytes"] == len(city_bytes)
    assert info["url"] == server.base + "/city.mmdb"


def test_gzipped_mmdb_is_unpacked_and_installed(
    server: FixtureServer, dest: Path, dbip_bytes: bytes
) -> None:
    url = server.serve("/dbip-city-lite-2024-03.mmdb.gz", gzip.compress(dbip_bytes))
    info = download_database(url, str(dest))
    assert_installed(dest, info, DBIP_CITY_TYPE)
    assert info["attribution"] == ATTRIBUTION


def test_maxmind_tar_gz_is_unpacked_and_installed(
    server: FixtureServer, dest: Path, city_bytes: bytes
) -> None:
    archive = tar_gz(
        {
            "GeoLite2-City_20240305/COPYRIGHT.txt": b"Database and Contents Copyright (c)",
            "GeoLite2-City_20240305/LICENSE.txt": b"GeoLite2 End User License Agreement",
            "GeoLite2-City_20240305/GeoLite2-City.mmdb": city_bytes,
        }
    )
    info = download_database(server.serve("/geoip_download", archive), str(dest))
    assert_installed(dest, info, "GeoLite2-City")
    assert info["attribution"] is None


def test_member_names_in_an_archive_are_never_used_as_paths(
    server: FixtureServer, dest: Path, city_bytes: bytes, tmp_path: Path
) -> None:
    archive = tar_gz({"../../escaped.mmdb": city_bytes})
    download_database(server.serve("/evil.tar.gz", archive), str(dest))
    assert not (tmp_path.parent / "escaped.mmdb").exists()
    assert not (tmp_path / "escaped.mmdb").exists()
    assert GeoDatabase(str(dest)).lookup("203.0.113.10").city == "London"


def test_destination_folder_is_created(
    server: FixtureServer, tmp_path: Path, city_bytes: bytes
) -> None:
    dest = tmp_path / "new" / "dir" / "city.mmdb"
    download_database(server.serve("/city.mmdb", city_bytes), str(dest))
    assert dest.is_file()


def test_running_database_picks_up_the_update(
    server: FixtureServer, dest: Path, city_bytes: bytes
) -> None:
    db = GeoDatabase(str(dest))
    assert db.lookup("203.0.113.10").city is None  # the ASN database installed first
    download_database(server.serve("/city.mmdb", city_bytes), str(dest))
    assert db.maybe_reload() is True
    assert db.lookup("203.0.113.10").city == "London"
    db.close()


# -- failures leave the installed database untouched ----------------------------------------


@pytest.mark.parametrize(
    ("name", "make_body", "message"),
    [
        ("random.mmdb", lambda p: p.read_bytes(), "download is not a MaxMind DB: corrupt"),
        ("random.mmdb.gz", lambda p: gzip.compress(p.read_bytes()), "is not a MaxMind DB"),
        ("cut.mmdb.gz", lambda p: gzip.compress(p.read_bytes())[:100], "not a valid gzip"),
        ("html.mmdb", lambda p: b"<html>Service unavailable</html>", "is not a MaxMind DB"),
        ("empty.mmdb", lambda p: b"", "is not a MaxMind DB"),
    ],
)
def test_corrupt_download_is_rejected_and_dest_stays(
    server: FixtureServer,
    dest: Path,
    tmp_path: Path,
    name: str,
    make_body: Callable[[Path], bytes],
    message: str,
) -> None:
    write_corrupt_file(tmp_path / "random.bin")
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match=message):
        download_database(server.serve(f"/{name}", make_body(tmp_path / "random.bin")), str(dest))
    assert_untouched(dest, before)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"GeoLite2-City_20240305/LICENSE.txt": b"x"}, "found: none"),
        ({"a/one.mmdb": b"x", "a/two.mmdb": b"y"}, "found: a/one.mmdb, a/two.mmdb"),
    ],
)
def test_archive_without_exactly_one_mmdb_is_rejected(
    server: FixtureServer, dest: Path, members: dict[str, bytes], message: str
) -> None:
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match=f"expected one .mmdb file in the archive, {message}"):
        download_database(server.serve("/x.tar.gz", tar_gz(members)), str(dest))
    assert_untouched(dest, before)


def test_http_error_status_is_reported(server: FixtureServer, dest: Path) -> None:
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match="^HTTP 404 Not Found from http") as caught:
        download_database(server.base + "/missing.mmdb", str(dest))
    assert caught.value.status == 404
    with pytest.raises(GeoUpdateError, match="^HTTP 503 Service Unavailable") as caught:
        download_database(server.serve("/busy.mmdb", b"try later", status=503), str(dest))
    assert caught.value.status == 503
    assert_untouched(dest, before)


def test_unreachable_server_is_reported(dest: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match="^cannot reach http://127.0.0.1"):
        download_database(f"http://127.0.0.1:{port}/city.mmdb", str(dest))
    assert_untouched(dest, before)


def test_stalled_server_times_out(server: FixtureServer, dest: Path) -> None:
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match="^timed out after 0.3 s"):
        download_database(server.base + "/stall", str(dest), timeout_s=0.3)
    assert_untouched(dest, before)


def test_download_bigger_than_the_limit_is_refused(
    server: FixtureServer, dest: Path, city_bytes: bytes
) -> None:
    before = dest.read_bytes()
    limit = len(city_bytes) - 1
    with pytest.raises(GeoUpdateError, match="^download too big: .* the limit is"):
        download_database(server.serve("/big.mmdb", city_bytes), str(dest), max_bytes=limit)
    # without Content-Length the stream is cut at the limit
    url = server.serve("/stream.mmdb", city_bytes, with_length=False)
    with pytest.raises(GeoUpdateError, match="bigger than the limit"):
        download_database(url, str(dest), max_bytes=limit)
    assert_untouched(dest, before)


def test_gzip_bomb_is_cut_at_the_limit(server: FixtureServer, dest: Path) -> None:
    before = dest.read_bytes()
    bomb = gzip.compress(b"\0" * (4 * 2**20))  # ~4 KB that unpacks to 4 MiB
    with pytest.raises(GeoUpdateError, match="^the unpacked database is bigger than the limit"):
        download_database(server.serve("/bomb.mmdb.gz", bomb), str(dest), max_bytes=2**20)
    assert_untouched(dest, before)


def test_non_http_url_is_refused(dest: Path, tmp_path: Path) -> None:
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match="^not an http"):
        download_database("ftp://example.com/x.mmdb", str(dest))
    with pytest.raises(GeoUpdateError, match="names a file on this machine"):
        download_database("file://elsewhere/x.mmdb", str(dest))
    assert_untouched(dest, before)


def test_a_local_file_is_installed_like_a_download(
    dest: Path, tmp_path: Path, city_bytes: bytes
) -> None:
    """Offline machines (issue 11 item 10): a path or a file: URL, checked the same way."""
    plain = tmp_path / "copied.mmdb"
    plain.write_bytes(city_bytes)
    info = download_database(str(plain), str(dest))
    assert_installed(dest, info, "GeoLite2-City")
    packed = tmp_path / "copied.mmdb.gz"
    packed.write_bytes(gzip.compress(city_bytes))
    info = download_database(packed.as_uri(), str(dest))
    assert_installed(dest, info, "GeoLite2-City")
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match="^cannot read .*missing.mmdb"):
        download_database(str(tmp_path / "missing.mmdb"), str(dest))
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a database" * 100)
    with pytest.raises(GeoUpdateError, match="not a MaxMind DB"):
        download_database(str(broken), str(dest))
    assert_untouched(dest, before)


# -- DB-IP monthly files and MaxMind URLs -----------------------------------------------


def test_default_urls() -> None:
    march = datetime.date(2024, 3, 5)
    assert default_url(march) == DBIP_CITY_LITE_URL.format(year=2024, month=3)
    assert default_url(march) == ("https://download.db-ip.com/free/dbip-city-lite-2024-03.mmdb.gz")
    assert default_url(march, "a b&c") == MAXMIND_GEOLITE2_CITY_URL.format(key="a%20b%26c")


def test_previous_month_url_steps_back_across_a_year() -> None:
    assert previous_month_url("https://x/dbip-city-lite-2024-03.mmdb.gz") == (
        "https://x/dbip-city-lite-2024-02.mmdb.gz"
    )
    assert previous_month_url("https://x/dbip-city-lite-2024-01.mmdb") == (
        "https://x/dbip-city-lite-2023-12.mmdb"
    )
    assert previous_month_url("https://x/GeoLite2-City.mmdb") is None


def test_missing_month_falls_back_to_the_previous_one(
    server: FixtureServer, dest: Path, dbip_bytes: bytes
) -> None:
    server.serve("/free/dbip-city-lite-2024-02.mmdb.gz", gzip.compress(dbip_bytes))
    template = server.base + "/free/dbip-city-lite-{year:04d}-{month:02d}.mmdb.gz"
    url = default_url(datetime.date(2024, 3, 1), dbip_template=template)
    info = download_database(url, str(dest))
    assert info["url"] == server.base + "/free/dbip-city-lite-2024-02.mmdb.gz"
    assert info["database_type"] == DBIP_CITY_TYPE
    assert [urlsplit(r).path for r in server.requests] == [
        "/free/dbip-city-lite-2024-03.mmdb.gz",
        "/free/dbip-city-lite-2024-02.mmdb.gz",
    ]


def test_two_missing_months_report_both(server: FixtureServer, dest: Path) -> None:
    template = server.base + "/free/dbip-city-lite-{year:04d}-{month:02d}.mmdb.gz"
    url = default_url(datetime.date(2024, 1, 1), dbip_template=template)
    before = dest.read_bytes()
    with pytest.raises(GeoUpdateError, match="2024-01.*previous month: HTTP 404.*2023-12"):
        download_database(url, str(dest))
    assert_untouched(dest, before)


def test_licence_key_never_appears_in_messages_or_results(
    server: FixtureServer, dest: Path, city_bytes: bytes
) -> None:
    template = server.base + "/app/geoip_download?edition_id=GeoLite2-City&license_key={key}"
    url = default_url(datetime.date(2024, 3, 5), "s3cr3t-key", maxmind_template=template)
    with pytest.raises(GeoUpdateError) as caught:
        download_database(url, str(dest))
    assert "s3cr3t-key" not in str(caught.value)
    assert "license_key=<redacted>" in str(caught.value)
    server.serve("/app/geoip_download", tar_gz({"d/GeoLite2-City.mmdb": city_bytes}))
    info = download_database(url, str(dest))
    assert "s3cr3t-key" not in repr(info)
    assert server.requests[-1].endswith("license_key=s3cr3t-key")  # it was sent, though
