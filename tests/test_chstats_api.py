"""tests/test_api_stats.py's stats tests with real clicks, run again against a
`linkedge serve --click-sink clickhouse+http://...`: the same redirects, the same JSON and
numbers from ClickHouse (admin/chstats.py), the CLI's stats too (LINKEDGE_CLICK_SINK)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.clickhouse_fixture import ClickHouseServer, clickhouse, database_of  # noqa: F401
from tests.conftest import ServerProcess
from tests.geo_fixtures import build_city_mmdb
from tests.test_api import TOKEN, Api
from tests.test_api_stats import (  # noqa: F401 (collected here, with this module's server)
    test_group_by_campaign_tag_link_with_real_clicks,
    test_link_stats_from_real_clicks,
)


@pytest.fixture(scope="module")
def sink_url(clickhouse: ClickHouseServer) -> Iterator[str]:  # noqa: F811
    url = clickhouse.new_database()
    before = os.environ.get("LINKEDGE_CLICK_SINK")
    os.environ["LINKEDGE_CLICK_SINK"] = url  # for the server and the tests' `linkedge stats`
    yield url
    if before is None:
        del os.environ["LINKEDGE_CLICK_SINK"]
    else:
        os.environ["LINKEDGE_CLICK_SINK"] = before


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    sink_url: str,
    clickhouse: ClickHouseServer,  # noqa: F811
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("chstats")
    build_city_mmdb(tmp / "city.mmdb")
    proc = ServerProcess(
        tmp / "linkedge.db",
        "--geoip",
        str(tmp / "city.mmdb"),
        "--trusted-proxy",
        "127.0.0.1/32",
        env={"LINKEDGE_ADMIN_TOKEN": TOKEN},
    )
    yield proc
    if proc.proc.poll() is None:
        proc.stop()
    # the clicks went to ClickHouse, none to SQLite
    assert int(clickhouse.query("SELECT count() FROM clicks", database_of(sink_url))) > 0
    import sqlite3

    conn = sqlite3.connect(tmp / "linkedge.db")
    assert conn.execute("SELECT count(*) FROM clicks").fetchone()[0] == 0
    conn.close()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Api:
    return Api(server.admin_port)
