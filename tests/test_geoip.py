"""geo/geoip.py against real .mmdb files: ours (tests/geo_fixtures.py) and MaxMind's."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import time
from pathlib import Path

import maxminddb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.geoip import (
    DBIP_ATTRIBUTION,
    EMPTY_GEO,
    GeoDatabase,
    GeoDatabaseError,
    GeoResult,
    database_info,
)
from tests.geo_fixtures import (
    CITY_ANSWERS,
    DBIP_CITY_TYPE,
    UNKNOWN_IPV4,
    build_asn_mmdb,
    build_city_mmdb,
    build_country_mmdb,
    city_answer,
    merged,
    write_corrupt_file,
)

MAXMIND_DIR = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "geoip"
needs_maxmind = pytest.mark.skipif(
    not MAXMIND_DIR.is_dir(),
    reason=f"MaxMind test databases not found at {MAXMIND_DIR} (../shared/testdata/geoip)",
)
HAS_C_EXTENSION = importlib.util.find_spec("maxminddb.extension") is not None


def replace_atomically(build_into: Path, dest: Path) -> None:
    """What `linkedge geo update` and operators do: write aside, then os.replace."""
    os.replace(build_into, dest)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, GeoResult]]:
    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    return path, build_city_mmdb(path)


@pytest.fixture(scope="module")
def asn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, GeoResult]]:
    path = tmp_path_factory.mktemp("geo") / "asn.mmdb"
    return path, build_asn_mmdb(path)


@pytest.fixture(scope="module")
def city_db(city: tuple[Path, dict[str, GeoResult]]) -> GeoDatabase:
    return GeoDatabase(str(city[0]))


# -- our fixtures -------------------------------------------------------------------


def test_city_database_answers_every_fixture_address(
    city: tuple[Path, dict[str, GeoResult]],
) -> None:
    path, expected = city
    db = GeoDatabase(str(path))
    assert {ip: db.lookup(ip) for ip in expected} == expected
    db.close()


def test_ipv4_mapped_ipv6_resolves_like_ipv4_without_an_alias_in_the_tree(
    city: tuple[Path, dict[str, GeoResult]],
) -> None:
    path, _ = city
    with maxminddb.open_database(str(path)) as raw:
        assert raw.get("::ffff:203.0.113.10") is None  # mmdb-writer stores IPv4 at ::/96
        assert raw.get("203.0.113.10") is not None
    db = GeoDatabase(str(path))
    assert db.lookup("::ffff:203.0.113.10") == db.lookup("203.0.113.10") != EMPTY_GEO
    assert db.lookup("::FFFF:cb00:710a") == db.lookup("203.0.113.10")  # hex form, upper case
    db.close()


def test_country_database_answers_country_only(tmp_path: Path) -> None:
    expected = build_country_mmdb(tmp_path / "country.mmdb")
    db = GeoDatabase(str(tmp_path / "country.mmdb"))
    assert {ip: db.lookup(ip) for ip in expected} == expected
    assert db.status()["database_type"] == "GeoLite2-Country"


def test_asn_database_works_as_the_main_path(asn: tuple[Path, dict[str, GeoResult]]) -> None:
    path, expected = asn
    db = GeoDatabase(str(path))
    assert {ip: db.lookup(ip) for ip in expected} == expected
    db.close()


def test_city_and_asn_databases_merge_into_one_result(
    city: tuple[Path, dict[str, GeoResult]], asn: tuple[Path, dict[str, GeoResult]]
) -> None:
    db = GeoDatabase(str(city[0]), str(asn[0]))
    for ip in ("203.0.113.10", "::ffff:203.0.113.10", "198.51.100.7", "2001:db8:1::1"):
        assert db.lookup(ip) == merged(city[1][ip], asn[1][ip])
    # in the ASN database only / in the City database only
    assert db.lookup("2001:db8:2::1") == GeoResult("FR", "Île-de-France", "Paris", 64503, None)
    assert db.lookup("192.0.2.1") == city[1]["192.0.2.1"]
    status = db.status()
    assert status["database_type"] == "GeoLite2-City"
    assert status["asn_database_type"] == "GeoLite2-ASN"
    assert status["error"] is None
    db.close()


def test_dbip_database_carries_its_attribution(tmp_path: Path) -> None:
    path = tmp_path / "dbip-city-lite.mmdb"
    expected = build_city_mmdb(path, database_type=DBIP_CITY_TYPE)
    db = GeoDatabase(str(path))
    assert db.lookup("203.0.113.10") == expected["203.0.113.10"]
    assert db.status()["attribution"] == DBIP_ATTRIBUTION
    assert database_info(str(path))["attribution"] == DBIP_ATTRIBUTION


def test_maxmind_database_carries_no_attribution(city_db: GeoDatabase) -> None:
    assert city_db.status()["attribution"] is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bogus",
        "1.2.3",  # the C reader alone would take this as 1.2.0.3
        "081.2.69.142",
        "203.0.113.256",
        "203.0.113.10:443",
        " 203.0.113.10",
        "203.0.113.10\n",
        "::ffff:999.1.1.1",
        "2001:db8:::1",
        "\x00",
        "[2001:db8:1::1]",
    ],
)
def test_invalid_address_answers_empty_and_is_counted(text: str, tmp_path: Path) -> None:
    build_city_mmdb(tmp_path / "city.mmdb")
    db = GeoDatabase(str(tmp_path / "city.mmdb"))
    assert db.lookup(text) == EMPTY_GEO
    status = db.status()
    assert status["invalid"] == 1
    assert status["errors"] == 0


def test_link_local_address_with_zone_answers_empty(city_db: GeoDatabase) -> None:
    assert city_db.lookup("fe80::1%eth0") == EMPTY_GEO


@pytest.fixture(scope="module")
def fuzz_db(city: tuple[Path, dict[str, GeoResult]]) -> GeoDatabase:
    """A database of its own, so that its error counter is this test's alone."""
    return GeoDatabase(str(city[0]))


def test_the_address_oracle_agrees_with_the_fixture_answers(
    city: tuple[Path, dict[str, GeoResult]],
) -> None:
    assert {ip: city_answer(ip) for ip in city[1]} == city[1]


_FIXTURE_ADDRESSES = st.one_of(
    *(st.ip_addresses(network=network) for network, _ in CITY_ANSWERS),
    st.ip_addresses(v=4, network="203.0.113.0/24").map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=4, network="198.51.100.0/24").map(lambda a: f"::{a}"),
).map(str)


@given(st.one_of(st.text(max_size=60), _FIXTURE_ADDRESSES, _FIXTURE_ADDRESSES.map(str.upper)))
def test_lookup_of_any_text_answers_the_fixture_record_or_empty(
    fuzz_db: GeoDatabase, text: str
) -> None:
    assert fuzz_db.lookup(text) == city_answer(text)
    assert fuzz_db.errors == 0


@given(st.one_of(st.ip_addresses(), _FIXTURE_ADDRESSES))
def test_lookup_of_any_address_answers_the_fixture_record_or_empty(
    fuzz_db: GeoDatabase, address: object
) -> None:
    text = str(address)
    assert fuzz_db.lookup(text) == city_answer(text)
    assert fuzz_db.errors == 0


def test_cache_counts_hits_and_stays_bounded(city: tuple[Path, dict[str, GeoResult]]) -> None:
    db = GeoDatabase(str(city[0]), cache_size=4)
    for _ in range(3):
        db.lookup("203.0.113.10")
    status = db.status()
    assert (status["lookups"], status["cache_hits"]) == (3, 2)
    for last_octet in range(20):
        assert db.lookup(f"203.0.113.{last_octet}").city == "London"
    assert db.status()["cache_entries"] == 4
    db.close()


def test_status_reports_the_loaded_database(
    city: tuple[Path, dict[str, GeoResult]], city_db: GeoDatabase
) -> None:
    status = city_db.status()
    assert status["enabled"] is True
    assert status["path"] == str(city[0])
    assert status["database_type"] == "GeoLite2-City"
    with maxminddb.open_database(str(city[0])) as raw:  # the file's own metadata
        epoch = raw.metadata().build_epoch
    assert status["build_epoch"] == epoch and 0 <= time.time() - epoch < 86_400  # built today
    assert status["build_date"] == dt.datetime.fromtimestamp(epoch, dt.UTC).date().isoformat()
    assert status["error"] is None
    assert status["mode"] == ("MODE_MMAP_EXT" if HAS_C_EXTENSION else "MODE_MMAP")


def test_no_path_means_disabled_and_says_how_to_get_one() -> None:
    db = GeoDatabase(None)
    assert db.lookup("203.0.113.10") == EMPTY_GEO
    assert db.maybe_reload() is False
    status = db.status()
    assert (status["enabled"], status["mode"]) == (False, None)
    assert "linkedge geo update" in str(status["error"])


def test_close_releases_the_files_and_lookups_answer_empty(
    city: tuple[Path, dict[str, GeoResult]],
) -> None:
    db = GeoDatabase(str(city[0]))
    assert db.lookup("203.0.113.10") != EMPTY_GEO
    db.close()
    db.close()
    assert db.lookup("203.0.113.10") == EMPTY_GEO
    assert db.status()["enabled"] is False


# -- missing, corrupt and replaced files ------------------------------------------------


def test_missing_file_is_reported_then_picked_up_when_it_appears(tmp_path: Path) -> None:
    dest = tmp_path / "city.mmdb"
    db = GeoDatabase(str(dest))
    assert db.lookup("203.0.113.10") == EMPTY_GEO
    assert db.status()["error"] == f"file not found: {dest}"
    assert db.status()["enabled"] is False
    assert db.maybe_reload() is False

    expected = build_city_mmdb(tmp_path / "city.mmdb.tmp")
    replace_atomically(tmp_path / "city.mmdb.tmp", dest)
    assert db.maybe_reload() is True
    assert db.lookup("203.0.113.10") == expected["203.0.113.10"]  # not the cached EMPTY_GEO
    assert db.status()["error"] is None
    assert db.maybe_reload() is False  # nothing changed since
    db.close()


def test_corrupt_file_at_start_is_reported_and_never_raises(tmp_path: Path) -> None:
    write_corrupt_file(tmp_path / "city.mmdb")
    db = GeoDatabase(str(tmp_path / "city.mmdb"))
    assert db.lookup("203.0.113.10") == EMPTY_GEO
    error = db.status()["error"]
    assert isinstance(error, str) and error.startswith("corrupt database: ")
    assert db.status()["enabled"] is False


def test_replaced_file_is_swapped_in_and_the_cache_cleared(tmp_path: Path) -> None:
    dest = tmp_path / "geo.mmdb"
    build_city_mmdb(dest)
    db = GeoDatabase(str(dest))
    assert db.lookup("203.0.113.10").city == "London"
    assert db.status()["database_type"] == "GeoLite2-City"

    country = build_country_mmdb(tmp_path / "next.mmdb")
    replace_atomically(tmp_path / "next.mmdb", dest)
    assert db.maybe_reload() is True
    assert db.lookup("203.0.113.10") == country["203.0.113.10"]  # the cached London is gone
    assert db.status()["database_type"] == "GeoLite2-Country"
    assert db.maybe_reload() is False
    db.close()


def test_corrupt_replacement_keeps_the_previous_reader_serving(tmp_path: Path) -> None:
    dest = tmp_path / "geo.mmdb"
    expected = build_city_mmdb(dest)
    db = GeoDatabase(str(dest))

    write_corrupt_file(tmp_path / "broken.mmdb")
    replace_atomically(tmp_path / "broken.mmdb", dest)
    assert db.maybe_reload() is False
    assert db.lookup("198.51.100.7") == expected["198.51.100.7"]  # not cached before
    status = db.status()
    assert status["enabled"] is True
    assert status["database_type"] == "GeoLite2-City"
    error = status["error"]
    assert isinstance(error, str)
    assert error.startswith(f"corrupt database: {dest}")
    assert "still serving the database loaded before" in error
    assert db.maybe_reload() is False  # the same broken file is not reopened every call

    # a good file after the broken one is picked up and clears the error
    build_asn_mmdb(tmp_path / "good.mmdb")
    replace_atomically(tmp_path / "good.mmdb", dest)
    assert db.maybe_reload() is True
    assert db.status()["error"] is None
    assert db.lookup("203.0.113.10").asn == 64500
    db.close()


def test_removed_file_keeps_serving_and_says_so_until_it_is_back(tmp_path: Path) -> None:
    dest = tmp_path / "geo.mmdb"
    expected = build_city_mmdb(dest)
    db = GeoDatabase(str(dest))
    os.rename(dest, tmp_path / "elsewhere.mmdb")
    assert db.maybe_reload() is False
    assert db.lookup("203.0.113.10") == expected["203.0.113.10"]
    assert db.status()["error"] == (
        f"file not found: {dest} (still serving the database loaded before)"
    )
    os.rename(tmp_path / "elsewhere.mmdb", dest)  # the same file: nothing to reload
    assert db.maybe_reload() is False
    assert db.status()["error"] is None
    db.close()


def test_lookup_of_a_non_string_is_counted_not_raised(city_db: GeoDatabase) -> None:
    errors = city_db.status()["errors"]
    assert city_db.lookup(None) == EMPTY_GEO  # type: ignore[arg-type]
    assert city_db.lookup(["203.0.113.10"]) == EMPTY_GEO  # type: ignore[arg-type]
    assert city_db.status()["errors"] == errors + 2  # type: ignore[operator]


def test_asn_file_appearing_later_is_picked_up(
    city: tuple[Path, dict[str, GeoResult]], tmp_path: Path
) -> None:
    asn_dest = tmp_path / "asn.mmdb"
    db = GeoDatabase(str(city[0]), str(asn_dest))
    assert db.lookup("203.0.113.10").asn is None
    assert db.status()["error"] == f"asn database: file not found: {asn_dest}"
    assert db.status()["enabled"] is True  # the City database works without it

    build_asn_mmdb(tmp_path / "asn.tmp")
    replace_atomically(tmp_path / "asn.tmp", asn_dest)
    assert db.maybe_reload() is True
    assert db.lookup("203.0.113.10") == GeoResult(
        "GB", "England", "London", 64500, "Example Transit Ltd"
    )
    db.close()


# -- database_info ------------------------------------------------------------------------


def test_database_info_describes_a_file(city: tuple[Path, dict[str, GeoResult]]) -> None:
    info = database_info(str(city[0]))
    assert info["database_type"] == "GeoLite2-City"
    assert info["ip_version"] == 6
    with maxminddb.open_database(str(city[0])) as raw:  # the file's own metadata
        metadata = raw.metadata()
    assert (info["record_size"], info["node_count"]) == (metadata.record_size, metadata.node_count)
    assert info["node_count"] > 0
    assert info["languages"] == ["en"]
    assert info["description"] == "linkedge test fixture (GeoLite2-City)"
    assert info["file_size"] == city[0].stat().st_size
    assert info["binary_format"] == "2.0"
    expected_date = dt.datetime.fromtimestamp(metadata.build_epoch, dt.UTC).date().isoformat()
    assert info["build_date"] == expected_date


def test_database_info_explains_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError, match="^file not found: "):
        database_info(str(tmp_path / "absent.mmdb"))
    write_corrupt_file(tmp_path / "random.mmdb")
    with pytest.raises(GeoDatabaseError, match="^corrupt database: "):
        database_info(str(tmp_path / "random.mmdb"))
    (tmp_path / "empty.mmdb").write_bytes(b"")
    with pytest.raises(GeoDatabaseError, match="^corrupt database: "):
        database_info(str(tmp_path / "empty.mmdb"))
    with pytest.raises(GeoDatabaseError):
        database_info(str(tmp_path))


# -- MaxMind's own test databases -------------------------------------------------------

KNOWN_CITY_ANSWERS = {
    "81.2.69.142": ("GB", "England", "London"),
    "::ffff:81.2.69.142": ("GB", "England", "London"),
    "2.125.160.216": ("GB", "England", "Boxford"),
    "89.160.20.112": ("SE", "Östergötland County", "Linköping"),
    "216.160.83.56": ("US", "Washington", "Milton"),
    "175.16.199.0": ("CN", "Jilin Sheng", "Changchun"),
    "2001:218::": ("JP", None, None),
    "8.8.8.8": (None, None, None),
}


@needs_maxmind
@pytest.mark.parametrize("name", ["GeoIP2-City-Test.mmdb", "GeoLite2-City-Test.mmdb"])
@pytest.mark.parametrize(("ip", "answer"), KNOWN_CITY_ANSWERS.items())
def test_maxmind_city_database_known_answers(
    name: str, ip: str, answer: tuple[str | None, str | None, str | None]
) -> None:
    db = GeoDatabase(str(MAXMIND_DIR / name))
    assert db.lookup(ip)[:3] == answer
    db.close()


@needs_maxmind
def test_maxmind_country_database_gives_country_only() -> None:
    db = GeoDatabase(str(MAXMIND_DIR / "GeoIP2-Country-Test.mmdb"))
    assert db.lookup("81.2.69.142") == GeoResult("GB", None, None, None, None)
    assert db.lookup("2001:218::").country == "JP"
    db.close()


@needs_maxmind
def test_maxmind_asn_database_alone_and_merged_with_city() -> None:
    asn_path = str(MAXMIND_DIR / "GeoLite2-ASN-Test.mmdb")
    alone = GeoDatabase(asn_path)
    assert alone.lookup("1.128.0.0") == GeoResult(None, None, None, 1221, "Telstra Pty Ltd")
    assert alone.status()["database_type"] == "GeoLite2-ASN"
    alone.close()
    both = GeoDatabase(str(MAXMIND_DIR / "GeoIP2-City-Test.mmdb"), asn_path)
    assert both.lookup("89.160.20.112") == GeoResult(
        "SE", "Östergötland County", "Linköping", 29518, "Bredband2 AB"
    )
    both.close()


@needs_maxmind
@pytest.mark.parametrize(
    ("name", "bad_ip"),
    [
        ("MaxMind-DB-test-broken-pointers-24.mmdb", "1.1.1.16"),
        ("MaxMind-DB-test-broken-pointers-24.mmdb", "1.1.1.32"),
        ("MaxMind-DB-test-broken-search-tree-24.mmdb", "128.128.128.128"),
    ],
)
def test_broken_maxmind_database_lookup_answers_empty_and_counts_an_error(
    name: str, bad_ip: str
) -> None:
    db = GeoDatabase(str(MAXMIND_DIR / name))
    assert db.status()["enabled"] is True  # these open; the damage is inside
    assert db.lookup(bad_ip) == EMPTY_GEO
    status = db.status()
    assert status["errors"] == 1
    error = status["error"]
    assert isinstance(error, str) and error.startswith("corrupt database: ")
    # IPv6 in these IPv4-only files is simply absent, not an error
    assert db.lookup("2001:db8::1") == EMPTY_GEO
    assert db.status()["errors"] == 1
    db.close()


@needs_maxmind
def test_maxmind_database_with_invalid_node_count_is_reported() -> None:
    path = MAXMIND_DIR / "GeoIP2-City-Test-Invalid-Node-Count.mmdb"
    db = GeoDatabase(str(path))
    assert db.lookup("81.2.69.142") == EMPTY_GEO
    status = db.status()
    assert status["enabled"] is False
    error = status["error"]
    assert isinstance(error, str) and error.startswith(f"corrupt database: {path}")
    with pytest.raises(GeoDatabaseError, match="^corrupt database: "):
        database_info(str(path))


@needs_maxmind
def test_unknown_fixture_address_is_not_in_maxmind_city_either() -> None:
    db = GeoDatabase(str(MAXMIND_DIR / "GeoIP2-City-Test.mmdb"))
    assert db.lookup(UNKNOWN_IPV4) == EMPTY_GEO
    db.close()


# -- the file changed under a running reader (hardening: SIGBUS) ---------------------------


def _in_child(script: str, *args: str) -> dict[str, object]:
    """Run `script` in a fresh interpreter (a SIGBUS there fails this test instead of
    killing pytest) and return the JSON it prints."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"child died with {result.returncode}: {result.stderr}"
    return dict(json.loads(result.stdout))


_TRUNCATE_SCRIPT = """
import json, os, sys
from geo.geoip import GeoDatabase
path = sys.argv[1]
db = GeoDatabase(path)
first = db.lookup("203.0.113.10")._asdict()
mode = db.status()["mode"]
with open(path, "r+b") as f:  # `: > live.mmdb`: the same inode, now empty
    f.truncate(0)
after = [db.lookup(ip)._asdict() for ip in ("198.51.100.7", "2001:db8::1", "192.0.2.1")]
reloaded = db.maybe_reload()
print(json.dumps({"first": first, "after": after, "reloaded": reloaded,
                  "status": db.status(), "mode": mode}))
"""


def test_truncating_the_file_in_place_keeps_the_loaded_database_serving(tmp_path: Path) -> None:
    dest = tmp_path / "geo.mmdb"
    expected = build_city_mmdb(dest)
    out = _in_child(_TRUNCATE_SCRIPT, str(dest))
    assert out["first"] == expected["203.0.113.10"]._asdict()
    # not cached before the truncation: read from the private copy, not the empty file
    assert out["after"] == [
        expected[ip]._asdict() if ip in expected else EMPTY_GEO._asdict()
        for ip in ("198.51.100.7", "2001:db8::1", "192.0.2.1")
    ]
    assert out["reloaded"] is False
    status = out["status"]
    assert isinstance(status, dict)
    assert status["database_type"] == "GeoLite2-City"
    assert "still serving the database loaded before" in str(status["error"])
    if HAS_C_EXTENSION:
        assert out["mode"] == "MODE_MMAP_EXT"  # the fast reader is kept


def _overwrite_in_place(dest: Path, data: bytes) -> None:
    """What `cp new.mmdb live.mmdb` does: the same inode, truncated and rewritten."""
    with open(dest, "r+b") as f:
        f.truncate(0)
        f.write(data)


def test_file_overwritten_in_place_is_loaded_once_it_holds_still(tmp_path: Path) -> None:
    dest = tmp_path / "geo.mmdb"
    city = build_city_mmdb(dest)
    inode = dest.stat().st_ino
    db = GeoDatabase(str(dest))
    country = build_country_mmdb(tmp_path / "next.mmdb")
    _overwrite_in_place(dest, (tmp_path / "next.mmdb").read_bytes())
    assert dest.stat().st_ino == inode
    assert db.maybe_reload() is False  # changing in place: wait one check
    assert db.lookup("198.51.100.7") == city["198.51.100.7"]
    assert "changing in place" in str(db.status()["error"])
    assert db.maybe_reload() is True  # it held still
    assert db.lookup("203.0.113.10") == country["203.0.113.10"]
    assert db.status()["database_type"] == "GeoLite2-Country"
    assert db.status()["error"] is None
    db.close()


def test_slow_copy_in_place_never_loads_a_partial_file(tmp_path: Path) -> None:
    dest = tmp_path / "geo.mmdb"
    city = build_city_mmdb(dest)
    db = GeoDatabase(str(dest))
    build_asn_mmdb(tmp_path / "asn.mmdb")
    data = (tmp_path / "asn.mmdb").read_bytes()
    with open(dest, "r+b") as f:
        f.truncate(0)
        for i in range(0, len(data), 97):
            f.write(data[i : i + 97])
            f.flush()
            os.utime(dest, ns=(i + 1, i + 1))  # every write is a new signature
            assert db.maybe_reload() is False
            assert db.status()["database_type"] == "GeoLite2-City"
            assert db.lookup("198.51.100.7") == city["198.51.100.7"]
    assert db.maybe_reload() is True  # held still since the last write: the whole new file
    assert db.status()["database_type"] == "GeoLite2-ASN"
    assert db.lookup("203.0.113.10").asn == 64500
    db.close()


@needs_maxmind
def test_lookup_errors_are_logged_once_per_interval_not_once_per_lookup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A corrupt database used to log one line per lookup (3,926 lines in 30 s)."""
    import logging

    from geo import geoip

    geoip._limiter._last.clear()
    db = GeoDatabase(str(MAXMIND_DIR / "MaxMind-DB-test-broken-pointers-24.mmdb"))
    with caplog.at_level(logging.WARNING, logger="geo.geoip"):
        for _ in range(250):
            for ip in ("1.1.1.16", "1.1.1.32"):  # the broken part of the tree
                db.lookup(ip)
            db._cache.clear()  # uncached each time
    lines = [r for r in caplog.records if "geoip lookup error" in r.getMessage()]
    assert db.status()["errors"] == 500
    assert len(lines) == 1
    db.close()
