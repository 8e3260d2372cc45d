# loadtests/geodb: a realistic City-layout GeoIP database, so enrichment does real work.
#
# MaxMind's test databases cover a few dozen networks with small records; a lookup in them
# is cheaper than in GeoLite2-City, where a record carries names in eight languages,
# geoname ids, location, postal code and registered country. This builds, with mmdb-writer,
# an IPv6 tree (IPv4 stored ipv4-compatible, as tests/geo_fixtures.py does) holding
# `networks` random public IPv4 networks (/16 to /24), each with a full GeoLite2-City-like
# record drawn from ~60 real places. The client addresses the benchmark sends come from
# `client_ips()`: mostly inside those networks, a few outside (lookups that find nothing).
# The data is synthetic (seeded, reproducible) and says so in its description.
from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path
from typing import Any, Final

from mmdb_writer import MmdbF64, MmdbU32, MMDBWriter
from netaddr import IPNetwork, IPSet

LANGUAGES: Final = ("de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN")
DATABASE_TYPE: Final = "GeoLite2-City"

# continent, country iso, lat, lon, time zone | country | region | city
_PLACES_TABLE: Final = """
NA US 37.77 -122.42 America/Los_Angeles | United States | California | San Francisco
NA US 34.05 -118.24 America/Los_Angeles | United States | California | Los Angeles
NA US 40.71 -74.0 America/New_York | United States | New York | New York
NA US 30.27 -97.74 America/Chicago | United States | Texas | Austin
NA US 41.88 -87.63 America/Chicago | United States | Illinois | Chicago
NA US 47.61 -122.33 America/Los_Angeles | United States | Washington | Seattle
NA US 25.76 -80.19 America/New_York | United States | Florida | Miami
NA US 33.75 -84.39 America/New_York | United States | Georgia | Atlanta
NA US 42.36 -71.06 America/New_York | United States | Massachusetts | Boston
NA US 39.74 -104.99 America/Denver | United States | Colorado | Denver
NA CA 43.65 -79.38 America/Toronto | Canada | Ontario | Toronto
NA CA 45.5 -73.57 America/Toronto | Canada | Quebec | Montreal
NA CA 49.28 -123.12 America/Vancouver | Canada | British Columbia | Vancouver
NA MX 19.43 -99.13 America/Mexico_City | Mexico | Mexico City | Mexico City
SA BR -23.55 -46.63 America/Sao_Paulo | Brazil | Sao Paulo | São Paulo
SA BR -22.91 -43.17 America/Sao_Paulo | Brazil | Rio de Janeiro | Rio de Janeiro
SA AR -34.6 -58.38 America/Argentina/Buenos_Aires | Argentina | Buenos Aires F.D. | Buenos Aires
SA CO 4.71 -74.07 America/Bogota | Colombia | Bogota D.C. | Bogotá
EU GB 51.51 -0.13 Europe/London | United Kingdom | England | London
EU GB 53.48 -2.24 Europe/London | United Kingdom | England | Manchester
EU GB 55.95 -3.19 Europe/London | United Kingdom | Scotland | Edinburgh
EU IE 53.35 -6.26 Europe/Dublin | Ireland | Leinster | Dublin
EU FR 48.86 2.35 Europe/Paris | France | Île-de-France | Paris
EU FR 45.76 4.84 Europe/Paris | France | Auvergne-Rhône-Alpes | Lyon
EU DE 52.52 13.4 Europe/Berlin | Germany | Berlin | Berlin
EU DE 48.14 11.58 Europe/Berlin | Germany | Bavaria | Munich
EU DE 53.55 9.99 Europe/Berlin | Germany | Hamburg | Hamburg
EU NL 52.37 4.9 Europe/Amsterdam | Netherlands | North Holland | Amsterdam
EU BE 50.85 4.35 Europe/Brussels | Belgium | Brussels Capital | Brussels
EU ES 40.42 -3.7 Europe/Madrid | Spain | Madrid | Madrid
EU ES 41.39 2.17 Europe/Madrid | Spain | Catalonia | Barcelona
EU IT 45.46 9.19 Europe/Rome | Italy | Lombardy | Milan
EU IT 41.9 12.5 Europe/Rome | Italy | Lazio | Rome
EU PT 38.72 -9.14 Europe/Lisbon | Portugal | Lisbon | Lisbon
EU SE 59.33 18.07 Europe/Stockholm | Sweden | Stockholm County | Stockholm
EU SE 58.41 15.62 Europe/Stockholm | Sweden | Östergötland County | Linköping
EU NO 59.91 10.75 Europe/Oslo | Norway | Oslo | Oslo
EU DK 55.68 12.57 Europe/Copenhagen | Denmark | Capital Region | Copenhagen
EU FI 60.17 24.94 Europe/Helsinki | Finland | Uusimaa | Helsinki
EU PL 52.23 21.01 Europe/Warsaw | Poland | Mazovia | Warsaw
EU CH 47.38 8.54 Europe/Zurich | Switzerland | Zurich | Zurich
EU AT 48.21 16.37 Europe/Vienna | Austria | Vienna | Vienna
EU CZ 50.08 14.44 Europe/Prague | Czechia | Prague | Prague
EU UA 50.45 30.52 Europe/Kyiv | Ukraine | Kyiv City | Kyiv
AS TR 41.01 28.98 Europe/Istanbul | Türkiye | Istanbul | Istanbul
AS IN 19.08 72.88 Asia/Kolkata | India | Maharashtra | Mumbai
AS IN 12.97 77.59 Asia/Kolkata | India | Karnataka | Bengaluru
AS IN 28.7 77.1 Asia/Kolkata | India | National Capital Territory of Delhi | Delhi
AS JP 35.68 139.69 Asia/Tokyo | Japan | Tokyo | Tokyo
AS JP 34.69 135.5 Asia/Tokyo | Japan | Osaka | Osaka
AS KR 37.57 126.98 Asia/Seoul | South Korea | Seoul | Seoul
AS CN 43.88 125.32 Asia/Harbin | China | Jilin Sheng | Changchun
AS CN 31.23 121.47 Asia/Shanghai | China | Shanghai | Shanghai
AS SG 1.35 103.82 Asia/Singapore | Singapore | Central Singapore | Singapore
AS ID -6.21 106.85 Asia/Jakarta | Indonesia | Jakarta | Jakarta
AS PH 14.6 120.98 Asia/Manila | Philippines | Metro Manila | Manila
AS VN 10.82 106.63 Asia/Ho_Chi_Minh | Vietnam | Ho Chi Minh | Ho Chi Minh City
AS AE 25.2 55.27 Asia/Dubai | United Arab Emirates | Dubai | Dubai
AS IL 32.09 34.78 Asia/Jerusalem | Israel | Tel Aviv | Tel Aviv
OC AU -33.87 151.21 Australia/Sydney | Australia | New South Wales | Sydney
OC AU -37.81 144.96 Australia/Melbourne | Australia | Victoria | Melbourne
OC NZ -36.85 174.76 Pacific/Auckland | New Zealand | Auckland | Auckland
AF ZA -26.2 28.05 Africa/Johannesburg | South Africa | Gauteng | Johannesburg
AF NG 6.52 3.38 Africa/Lagos | Nigeria | Lagos | Lagos
AF KE -1.29 36.82 Africa/Nairobi | Kenya | Nairobi County | Nairobi
AF EG 30.04 31.24 Africa/Cairo | Egypt | Cairo Governorate | Cairo
"""


def _places() -> tuple[tuple[Any, ...], ...]:
    out = []
    for line in _PLACES_TABLE.strip().splitlines():
        head, country, region, city = (part.strip() for part in line.split("|"))
        cont, iso, lat, lon, tz = head.split()
        out.append((cont, iso, country, region, city, float(lat), float(lon), tz))
    return tuple(out)


# (continent, country iso, country, region, city, lat, lon, time zone)
PLACES: Final = _places()
CONTINENTS: Final = {
    "NA": "North America",
    "SA": "South America",
    "EU": "Europe",
    "AS": "Asia",
    "OC": "Oceania",
    "AF": "Africa",
}

# First octets never used: this-network, private, CGNAT, loopback, link-local, multicast.
_RESERVED_FIRST: Final = {0, 10, 100, 127, 169, 172, 192, 198, 203, 224}


def _names(en: str) -> dict[str, str]:
    # Real databases translate; a name of the same length per language costs the same
    # to decode, which is what matters here.
    return {lang: (en if lang == "en" else f"{en} ({lang})") for lang in LANGUAGES}


def _record(place: tuple[Any, ...], n: int, rng: random.Random) -> dict[str, Any]:
    cont, iso, country, region, city, lat, lon, tz = place
    geo_country = MmdbU32(1000 + int.from_bytes(iso.encode(), "big"))
    return {
        "city": {"geoname_id": MmdbU32(2_000_000 + n), "names": _names(city)},
        "continent": {
            "code": cont,
            "geoname_id": MmdbU32(6_255_140 + len(cont)),
            "names": _names(CONTINENTS[cont]),
        },
        "country": {"geoname_id": geo_country, "iso_code": iso, "names": _names(country)},
        "location": {
            "accuracy_radius": MmdbU32(rng.choice((5, 10, 20, 50, 100, 200))),
            "latitude": MmdbF64(lat + rng.uniform(-0.2, 0.2)),
            "longitude": MmdbF64(lon + rng.uniform(-0.2, 0.2)),
            "time_zone": tz,
        },
        "postal": {"code": f"{rng.randrange(10000, 99999)}"},
        "registered_country": {
            "geoname_id": geo_country,
            "iso_code": iso,
            "names": _names(country),
        },
        "subdivisions": [
            {
                "geoname_id": MmdbU32(3_000_000 + n % 1000),
                "iso_code": region[:3].upper(),
                "names": _names(region),
            }
        ],
    }


def _random_network(rng: random.Random) -> IPNetwork:
    while True:
        first = rng.randrange(1, 224)
        if first not in _RESERVED_FIRST:
            break
    prefix = rng.choice((16, 18, 20, 22, 23, 24, 24, 24, 24, 24))
    addr = (first << 24) | rng.randrange(1 << 24)
    addr &= ~((1 << (32 - prefix)) - 1) & 0xFFFFFFFF
    return IPNetwork(f"{ipaddress.IPv4Address(addr)}/{prefix}")


def _blocks24(net: IPNetwork) -> range:
    first = int(net.first) >> 8
    return range(first, (int(net.last) >> 8) + 1)


def build(path: Path, networks: int = 50_000, seed: int = 7) -> list[str]:
    """Write the database; return its networks (CIDR strings), disjoint, in insert order."""
    rng = random.Random(seed)
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=list(LANGUAGES),
        description={lang: "linkedge loadtests synthetic City database" for lang in LANGUAGES},
    )
    taken: set[int] = set()  # /24 blocks already covered, so networks never overlap
    chosen: list[str] = []
    records = [_record(PLACES[i % len(PLACES)], i, rng) for i in range(len(PLACES) * 8)]
    while len(chosen) < networks:
        net = _random_network(rng)
        blocks = _blocks24(net)
        if not taken.isdisjoint(blocks):
            continue
        taken.update(blocks)
        writer.insert_network(IPSet([net]), records[rng.randrange(len(records))])
        chosen.append(str(net))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(path)
    path.with_suffix(".networks.json").write_text(json.dumps(chosen))
    return chosen


def ensure(path: Path, networks: int = 50_000, seed: int = 7) -> list[str]:
    """The cached database at `path` (built when missing); its networks."""
    sidecar = path.with_suffix(".networks.json")
    if path.exists() and sidecar.exists():
        nets: list[str] = json.loads(sidecar.read_text())
        if len(nets) == networks:
            return nets
    return build(path, networks, seed)


def client_ips(
    networks: list[str], count: int, seed: int = 11, outside_share: float = 0.05
) -> list[str]:
    """`count` distinct IPv4 client addresses: most inside `networks`, a few in none."""
    rng = random.Random(seed)
    covered: set[int] = set()
    for cidr in networks:
        covered.update(_blocks24(IPNetwork(cidr)))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        if rng.random() < outside_share:
            first = rng.randrange(1, 224)
            if first in _RESERVED_FIRST:
                continue
            ip = ipaddress.IPv4Address((first << 24) | rng.randrange(1 << 24))
            if int(ip) >> 8 in covered:
                continue
        else:
            net = ipaddress.IPv4Network(networks[rng.randrange(len(networks))])
            ip = net.network_address + rng.randrange(1, net.num_addresses - 1)
        text = str(ip)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out
