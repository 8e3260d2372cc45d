# tests/geo_fixtures: real .mmdb files built with mmdb-writer, for any test that needs
# GeoIP (import them: `from tests.geo_fixtures import build_city_mmdb`).
#
# Rules of this module:
# - Each builder writes one real MaxMind DB file at the given path and returns what a
#   GeoDatabase must answer for the addresses it covers, so tests compare against data
#   written in one place.
# - Only documentation address space is used (RFC 5737 TEST-NET-1/2/3 for IPv4,
#   RFC 3849 2001:db8::/32 for IPv6), so no fixture can be mistaken for real data.
# - The databases are IPv6 trees with IPv4 stored the way mmdb-writer stores it
#   (ipv4_compatible=True puts 203.0.113.0/24 at ::203.0.113.0/120). Such a tree has no
#   ::ffff:0:0/96 alias (MaxMind's own files have one), so "::ffff:203.0.113.10" finds
#   nothing with a bare maxminddb reader and must be resolved by GeoDatabase mapping it
#   to the IPv4 address: build_city_mmdb's answers include that case.
from __future__ import annotations

import functools
import ipaddress
import random
from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF64, MmdbU32, MMDBWriter
from netaddr import IPSet

from geo.geoip import EMPTY_GEO, GeoResult

CITY_TYPE = "GeoLite2-City"
COUNTRY_TYPE = "GeoLite2-Country"
ASN_TYPE = "GeoLite2-ASN"
DBIP_CITY_TYPE = "DBIP-City-Lite"

# Addresses in no fixture network: every builder answers EMPTY_GEO for them.
UNKNOWN_IPV4 = "192.0.2.200"
UNKNOWN_IPV6 = "2001:db8:ffff::1"


def _names(en: str, de: str | None = None) -> dict[str, str]:
    names = {"en": en}
    if de is not None:
        names["de"] = de
    return names


def _city_record(
    country: str,
    region: str | None,
    city: str | None,
    latitude: float,
    longitude: float,
) -> dict[str, Any]:
    """A record in the GeoIP2/GeoLite2/DB-IP City layout."""
    record: dict[str, Any] = {
        "continent": {"code": "EU", "names": _names("Europe")},
        "country": {"iso_code": country, "geoname_id": MmdbU32(1), "names": _names(country)},
        "location": {
            "latitude": MmdbF64(latitude),
            "longitude": MmdbF64(longitude),
            "accuracy_radius": MmdbU32(100),
        },
    }
    if region is not None:
        record["subdivisions"] = [{"iso_code": "X1", "names": _names(region)}]
    if city is not None:
        record["city"] = {"geoname_id": MmdbU32(2), "names": _names(city, de=city + "-de")}
    return record


def _writer(database_type: str) -> MMDBWriter:
    return MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": f"linkedge test fixture ({database_type})"},
    )


def _write(writer: MMDBWriter, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))


def build_city_mmdb(path: str | Path, database_type: str = CITY_TYPE) -> dict[str, GeoResult]:
    """A City database; returns ip -> the GeoResult a GeoDatabase on it answers."""
    writer = _writer(database_type)
    networks = [
        ("203.0.113.0/24", _city_record("GB", "England", "London", 51.5, -0.12)),
        ("198.51.100.0/24", _city_record("US", "California", "San Francisco", 37.7, -122.4)),
        # a country without subdivision or city, like many mobile-carrier ranges
        ("192.0.2.0/25", _city_record("DE", None, None, 51.0, 9.0)),
        ("2001:db8:1::/48", _city_record("JP", "Tokyo", "Tokyo", 35.6, 139.7)),
        ("2001:db8:2::/48", _city_record("FR", "Île-de-France", "Paris", 48.8, 2.3)),
        # a subdivision whose names lack English: region must be None, not another language
        ("2001:db8:3::/48", {"country": {"iso_code": "CH"}, "subdivisions": [{"names": {}}]}),
    ]
    for network, record in networks:
        writer.insert_network(IPSet([network]), record)
    _write(writer, path)
    return {
        "203.0.113.10": GeoResult("GB", "England", "London", None, None),
        "::ffff:203.0.113.10": GeoResult("GB", "England", "London", None, None),
        "198.51.100.7": GeoResult("US", "California", "San Francisco", None, None),
        "192.0.2.1": GeoResult("DE", None, None, None, None),
        "2001:db8:1::1": GeoResult("JP", "Tokyo", "Tokyo", None, None),
        "2001:db8:2:abcd::1": GeoResult("FR", "Île-de-France", "Paris", None, None),
        "2001:db8:3::1": GeoResult("CH", None, None, None, None),
        UNKNOWN_IPV4: EMPTY_GEO,
        UNKNOWN_IPV6: EMPTY_GEO,
    }


# What a GeoDatabase on build_city_mmdb's file answers for any address of each network.
CITY_ANSWERS: tuple[tuple[str, GeoResult], ...] = (
    ("203.0.113.0/24", GeoResult("GB", "England", "London", None, None)),
    ("198.51.100.0/24", GeoResult("US", "California", "San Francisco", None, None)),
    ("192.0.2.0/25", GeoResult("DE", None, None, None, None)),
    ("2001:db8:1::/48", GeoResult("JP", "Tokyo", "Tokyo", None, None)),
    ("2001:db8:2::/48", GeoResult("FR", "Île-de-France", "Paris", None, None)),
    ("2001:db8:3::/48", GeoResult("CH", None, None, None, None)),
)


def city_answer(text: str) -> GeoResult:
    """What a GeoDatabase on build_city_mmdb's file must answer for `text`, worked out
    with the ipaddress module alone: the answer of the network holding the address;
    EMPTY_GEO for an address outside them, a zoned (link-local) address, or text that is
    no address. An IPv6 address carrying an IPv4 one (::ffff:a.b.c.d, and ::a.b.c.d
    where the tree stores IPv4) is that IPv4 address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return EMPTY_GEO
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return EMPTY_GEO
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif int(address) < 2**32:
            address = ipaddress.IPv4Address(int(address))
    for network, answer in CITY_ANSWERS:
        if address in ipaddress.ip_network(network):
            return answer
    return EMPTY_GEO


def build_country_mmdb(path: str | Path) -> dict[str, GeoResult]:
    """A Country database (no subdivisions, no cities)."""
    writer = _writer(COUNTRY_TYPE)
    for network, country in (
        ("203.0.113.0/24", "GB"),
        ("198.51.100.0/24", "US"),
        ("2001:db8:1::/48", "JP"),
    ):
        writer.insert_network(
            IPSet([network]),
            {"country": {"iso_code": country, "names": _names(country)}},
        )
    _write(writer, path)
    return {
        "203.0.113.10": GeoResult("GB", None, None, None, None),
        "::ffff:203.0.113.10": GeoResult("GB", None, None, None, None),
        "198.51.100.7": GeoResult("US", None, None, None, None),
        "2001:db8:1::1": GeoResult("JP", None, None, None, None),
        UNKNOWN_IPV4: EMPTY_GEO,
    }


def build_asn_mmdb(path: str | Path) -> dict[str, GeoResult]:
    """An ASN database (RFC 5398 documentation AS numbers)."""
    writer = _writer(ASN_TYPE)
    for network, asn, org in (
        ("203.0.113.0/24", 64500, "Example Transit Ltd"),
        ("198.51.100.0/24", 64501, "Example Mobile Inc"),
        ("2001:db8:1::/48", 64502, "Example IPv6 Networks"),
    ):
        writer.insert_network(
            IPSet([network]),
            {"autonomous_system_number": MmdbU32(asn), "autonomous_system_organization": org},
        )
    # an ASN record without an organisation name, as in GeoLite2-ASN
    writer.insert_network(IPSet(["2001:db8:2::/48"]), {"autonomous_system_number": MmdbU32(64503)})
    _write(writer, path)
    return {
        "203.0.113.10": GeoResult(None, None, None, 64500, "Example Transit Ltd"),
        "::ffff:203.0.113.10": GeoResult(None, None, None, 64500, "Example Transit Ltd"),
        "198.51.100.7": GeoResult(None, None, None, 64501, "Example Mobile Inc"),
        "2001:db8:1::1": GeoResult(None, None, None, 64502, "Example IPv6 Networks"),
        "2001:db8:2::1": GeoResult(None, None, None, 64503, None),
        UNKNOWN_IPV4: EMPTY_GEO,
    }


def merged(city: GeoResult, asn: GeoResult) -> GeoResult:
    """What a GeoDatabase with a City and an ASN database answers for one address."""
    return city._replace(asn=asn.asn, as_org=asn.as_org)


def write_corrupt_file(path: str | Path, size: int = 4096, seed: int = 1) -> None:
    """Random bytes (seeded, so a failure is reproducible): not a MaxMind DB."""
    Path(path).write_bytes(random.Random(seed).randbytes(size))


# -- uap-core test cases (../shared/testdata/ua) -----------------------------------------

UAP_DIR = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "ua"
UAP_MISSING_REASON = f"uap-core test cases not found at {UAP_DIR} (../shared/testdata/ua)"


@functools.cache
def load_uap_cases(name: str) -> tuple[dict[str, Any], ...]:
    """The test_cases of ../shared/testdata/ua/<name>.yaml, parsed once per session."""
    import yaml  # a development dependency, needed only by the tests that use uap-core

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with (UAP_DIR / f"{name}.yaml").open(encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)
    cases = tuple(data["test_cases"])
    assert cases, f"{name}.yaml has no test cases: the tests over them would prove nothing"
    return cases


# -- real user-agent strings of people, by the device type geo.useragent must give ------

HUMAN_UAS: dict[str, tuple[str, ...]] = {
    "desktop": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like"
        " Gecko) Version/17.5 Safari/605.1.15",
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.68",
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Safari/537.36 OPR/111.0.0.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/124.0.0.0 YaBrowser/24.6.0.0 Safari/537.36",
        "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/86.0.4240.198 Safari/537.36 SE 2.X MetaSr 1.0",  # Sogou Explorer
        # Slack's and Discord's desktop apps (Electron): not their link unfurlers
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like"
        " Gecko) Slack/4.38.125 Chrome/124.0.6367.243 Electron/30.0.8 Safari/537.36"
        " Sonic Slack_SSB/4.38.125",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " discord/1.0.9147 Chrome/120.0.6099.291 Electron/28.2.10 Safari/537.36",
    ),
    "mobile": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko)"
        " SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (Android 14; Mobile; rv:127.0) Gecko/127.0 Firefox/127.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1",
        "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80 (S60; SymbOS; Opera Mobi/23.348; U; en)"
        " Presto/2.5.25 Version/10.54",
        "Mozilla/5.0 (Mobile; LYF/F300B/LYF-F300B-001-01-15-130718-i;Android; rv:48.0)"
        " Gecko/48.0 Firefox/48.0 KAIOS/2.5",
        # CUBOT is a phone brand, not a bot
        "Mozilla/5.0 (Linux; Android 9; CUBOT P30) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Mobile Safari/537.36",
        # in-app browsers of the sites whose unfurlers are bots
        "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36"
        " (KHTML, like Gecko) Version/4.0 Chrome/126.0.6478.71 Mobile Safari/537.36"
        " [FB_IAB/FB4A;FBAV/471.0.0.35.80;]",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148 Instagram 337.0.3.23.54 (iPhone14,5; iOS 17_5; en_US; en;"
        " scale=3.00; 1170x2532; 614399066)",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148 [LinkedInApp]/9.27.5179",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148 Snapchat/13.4.0.34 (like Safari/8617.2.4.10.8, panda)",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148 Safari Line/14.9.0",
        "Mozilla/5.0 (Linux; Android 13; SM-G991B Build/TP1A.220624.014; wv) AppleWebKit/537.36"
        " (KHTML, like Gecko) Version/4.0 Chrome/126.0.6478.71 Mobile Safari/537.36"
        " [Pinterest/Android]",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148 Twitter for iPhone/10.48",
        "Mozilla/5.0 (Linux; Android 10; V2001A; wv) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Version/4.0 Chrome/87.0.4280.141 Mobile Safari/537.36 SogouMobileBrowser/5.28.12",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) GSA/323.0.647062479 Mobile/15E148 Safari/604.1",
    ),
    "tablet": (
        "Mozilla/5.0 (iPad; CPU OS 12_5_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
        " Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Silk/126.4.1 like Chrome/126.0.6478.71 Safari/537.36",
        "Mozilla/5.0 (Android 13; Tablet; rv:127.0) Gecko/127.0 Firefox/127.0",
        "Mozilla/5.0 (Linux; Android 12; Lenovo TB-X606F) AppleWebKit/537.36 (KHTML, like"
        " Gecko) Chrome/126.0.0.0 Safari/537.36",
    ),
    "other": (
        "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like"
        " Gecko) Version/13.0 Safari/605.1.15",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML,"
        " like Gecko) Chrome/116.0.0.0 Safari/537.36 Edge/44.18363.8131",
        "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko)"
        " 76.0.3809.146/6.0 TV Safari/537.36",
        "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/87.0.4280.88 Safari/537.36 WebAppManager",
        "Roku/DVP-9.10 (519.10E04111A)",
        "Mozilla/5.0 (Linux; Android 9; AFTKA Build/PS7633.3445N) AppleWebKit/537.36 (KHTML,"
        " like Gecko) Chrome/126.0.6478.71 Mobile Safari/537.36",
        "Mozilla/5.0 (X11; Linux aarch64; Quest 3) AppleWebKit/537.36 (KHTML, like Gecko)"
        " OculusBrowser/33.0.0.x.x VR Safari/537.36",
        "Mozilla/5.0 (Nintendo Switch; WifiWebAuthApplet) AppleWebKit/606.4 (KHTML, like Gecko)"
        " NF/6.0.1.15.4 NintendoBrowser/5.1.0.20393",
    ),
}
