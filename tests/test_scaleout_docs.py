"""docs/scale-out.md's walkthrough runs as written: two `linkedge serve` nodes sharing a
real PostgreSQL link store and a real ClickHouse click sink (the session's throwaway
servers, on free ports), block by block (tests/doc_commands.py), and prints what the
document shows."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from pathlib import Path

from tests import clickhouse_fixture
from tests.clickhouse_fixture import ClickHouseServer
from tests.doc_commands import REPO, blocks, doc_env, make_shim, run_script
from tests.pg_fixtures import PgServer

clickhouse = clickhouse_fixture.clickhouse  # the session's ClickHouse (a fixture)
SCALE_OUT = REPO / "docs" / "scale-out.md"
WALKTHROUGH = "## Walkthrough"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_two_node_walkthrough_runs(
    tmp_path: Path, pg_server: PgServer, clickhouse: ClickHouseServer
) -> None:
    text = SCALE_OUT.read_text()
    start = text.count("\n", 0, text.index(WALKTHROUGH)) + 1
    end = text.count("\n", 0, text.index("\n## ", text.index(WALKTHROUGH) + 1)) + 1
    walk = [b for b in blocks(SCALE_OUT) if start < b.line < end]
    shown = [b.text.strip() for b in walk if b.kind == ""]  # what the document says prints
    make_shim(tmp_path)
    ports = {name: str(_free_port()) for name in ("A_EDGE", "A_ADMIN", "B_EDGE", "B_ADMIN")}
    env = doc_env(
        {"LINK_STORE": pg_server.create_database(), "CLICK_SINK": clickhouse.new_database()} | ports
    )
    state = tmp_path / "exports.sh"
    out = ""
    try:
        for block in walk:
            if block.kind == "sh":
                name = f"scale-out.md:{block.line}"
                out += run_script(name, block.text, tmp_path, env, state).stdout
    finally:
        for pid_file in tmp_path.glob("*.pid"):  # a failed block leaves nodes running
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
    for line in shown:
        assert line in out, f"the walkthrough printed {out!r}, docs/scale-out.md shows {line!r}"
    assert len(re.findall(r"linkedge stopped: \d+ redirects served", out)) == 2, out
