"""Launches over real sockets: marking a link's or a campaign's send, checkpoints from it,
minutes since it on /api/live, and mail scanners labelled in the seconds after it (their
rewrite hosts, their networks from a real ASN .mmdb, no Accept-Language)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.conftest import ServerProcess
from tests.geo_fixtures import build_city_mmdb
from tests.test_api import TOKEN, Api, assert_error
from tests.test_api_stats import LONDON, visit, wait_for
from tests.test_routes import clicks_of

SCANNER_NET_IP = "192.0.2.77"  # on AS8075 in this test's ASN database
LANG = {"Accept-Language": "en-GB,en;q=0.9"}


def build_scanner_asn_mmdb(path: Path) -> None:
    from mmdb_writer import MmdbU32

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN")
    writer.insert_network(
        IPSet(["192.0.2.0/24"]),
        {"autonomous_system_number": MmdbU32(8075), "autonomous_system_organization": "MSFT"},
    )
    writer.to_db_file(str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("launches")
    build_city_mmdb(tmp / "city.mmdb")
    build_scanner_asn_mmdb(tmp / "asn.mmdb")
    proc = ServerProcess(
        tmp / "linkedge.db",
        "--geoip",
        str(tmp / "city.mmdb"),
        "--geoip-asn",
        str(tmp / "asn.mmdb"),
        "--trusted-proxy",
        "127.0.0.1/32",
        env={"LINKEDGE_ADMIN_TOKEN": TOKEN},
    )
    yield proc
    if proc.proc.poll() is None:
        code, _out, err = proc.stop()
        assert code == 0, err


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Api:
    return Api(server.admin_port)


def make(api: Api, slug: str, **fields: Any) -> dict[str, Any]:
    status, link = api.post(
        "/api/links", {"url": f"https://example.com/{slug}", "slug": slug, **fields}
    )
    assert status == 201, link
    return link  # type: ignore[no-any-return]


def labels(server: ServerProcess, link_id: int, n: int) -> list[tuple[Any, ...]]:
    """(bot_kind, bot_reason) of the link's clicks in time order once `n` are written."""
    return clicks_of(server, link_id, "bot_kind, bot_reason", n, order="ts, id")


def test_a_link_launch_starts_its_checkpoints_and_shows_on_live(
    api: Api, server: ServerProcess
) -> None:
    link = make(api, "send")
    visit(server, "send", headers=LANG)  # a click before the launch: not the clock's start
    wait_for(lambda: labels(server, link["id"], 1))
    status, launched = api.post(f"/api/links/{link['id']}/launch", {})  # now
    assert status == 200
    at = launched["launched_at"]
    assert at is not None
    visit(server, "send", headers=LANG)
    status, body = api.get(f"/api/links/{link['id']}/checkpoints")
    assert status == 200
    launch = body["launch"]
    assert (launch["started_by"], launch["launch_from"], launch["started_at"]) == (
        "launch",
        "link",
        at,
    )
    wait_for(lambda: api.get(f"/api/links/{link['id']}/checkpoints")[1]["launch"]["first_click_at"])
    wait_for(
        lambda: (
            api.get(f"/api/links/{link['id']}/checkpoints")[1]["launch"]["checkpoints"][0]["humans"]
            == 1
        )
    )

    def live_entry() -> dict[str, Any] | None:
        return next((e for e in api.get("/api/live")[1]["links"] if e["id"] == link["id"]), None)

    entry = wait_for(live_entry)
    assert entry["launched_at"] == at and entry["minutes_since_launch"] in (0, 1)
    # cleared: the clock goes back to the first human click
    status, cleared = api.call("DELETE", f"/api/links/{link['id']}/launch")[::2]
    assert status == 200 and cleared["launched_at"] is None
    launch = api.get(f"/api/links/{link['id']}/checkpoints")[1]["launch"]
    assert launch["started_by"] == "first_human_click"


def test_a_campaign_launch_applies_to_its_links(api: Api, server: ServerProcess) -> None:
    a = make(api, "spring-a", campaign="spring")
    b = make(api, "spring-b", campaign="spring", launched_at="-1h")  # its own launch wins
    status, launch = api.post("/api/campaigns/spring/launch", {"at": "2026-03-01T09:00:00Z"})
    assert status == 200
    assert launch == {"campaign": "spring", "launched_at": "2026-03-01T09:00:00Z", "links": 2}
    assert api.get("/api/campaigns/spring/launch") == (200, launch)
    first = api.get(f"/api/links/{a['id']}/checkpoints")[1]["launch"]
    assert (first["launch_from"], first["started_at"]) == ("campaign", "2026-03-01T09:00:00Z")
    second = api.get(f"/api/links/{b['id']}/checkpoints")[1]["launch"]
    assert second["launch_from"] == "link" and second["started_at"] == b["launched_at"]
    status, none = api.post("/api/campaigns/no%20such/launch", {})
    assert status == 404
    assert_error(none, "not_found")
    assert "no such" in none["error"]["message"]
    status, bad = api.post("/api/campaigns/spring/launch", {"at": "whenever"})
    assert status == 400
    assert_error(bad, "invalid_field", "at")
    status, bad = api.post("/api/campaigns/spring/launch", {"when": "now"})
    assert status == 400
    assert_error(bad, "invalid_field", "when")
    status, cleared = api.call("DELETE", "/api/campaigns/spring/launch")[::2]
    assert status == 200 and cleared["launched_at"] is None


def test_mail_scanners_in_the_seconds_after_a_launch_are_labelled(
    api: Api, server: ServerProcess
) -> None:
    link = make(api, "news")
    before = [  # before the launch, none of these signals labels anything
        dict(headers={}),
    ]
    for case in before:
        assert visit(server, "news", **case) == 302  # type: ignore[arg-type]
    status, _ = api.post(f"/api/links/{link['id']}/launch", {})
    assert status == 200
    after = [
        dict(headers={**LANG, "Referer": "https://eur01.safelinks.protection.outlook.com/?url=x"}),
        dict(ip=SCANNER_NET_IP, headers=LANG),
        dict(headers={}),  # no Accept-Language
        dict(headers=LANG),  # a person
        dict(headers={**LANG, "Referer": "https://news.example.org/"}),  # a person from a site
    ]
    for case in after:
        time.sleep(0.01)  # in order of time
        assert visit(server, "news", **case) == 302  # type: ignore[arg-type]
    got = labels(server, link["id"], len(before) + len(after))
    assert got == [
        (None, None),
        ("scanner", "launch:referrer:safelinks.protection.outlook.com"),
        ("scanner", "launch:asn:8075"),
        ("scanner", "launch:no-accept-language"),
        (None, None),
        (None, None),
    ]
    # the stats leave the scanners out of the humans
    totals = api.get(f"/api/links/{link['id']}/stats")[1]["totals"]
    assert (totals["clicks"], totals["humans"]) == (6, 3)


def test_outside_the_window_the_same_signals_label_nothing(api: Api, server: ServerProcess) -> None:
    link = make(api, "old-send", launched_at="-2h")
    visit(server, "old-send", ip=SCANNER_NET_IP, headers={})
    visit(server, "old-send", ip=LONDON, headers={"Referer": "https://urldefense.com/v3/x"})
    assert labels(server, link["id"], 2) == [(None, None), (None, None)]
