"""`linkedge doctor`: one verdict per line, exit 1 when something is wrong."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from tests.conftest import ServerProcess, cli
from tests.geo_fixtures import build_city_mmdb

LINE = re.compile(r"^(ok  |warn|FAIL)  [a-z ]+: .+$")


def doctor(db: Path, **env: str) -> tuple[int, list[str]]:
    done = cli("doctor", db=db, check=False, env=env)
    lines = done.stdout.splitlines()
    return done.returncode, lines


def verdict(lines: list[str], name: str) -> str:
    return next(line for line in lines if line[6:].startswith(name + ":"))


def test_a_ready_install_passes_every_check(db_path: Path, tmp_path: Path) -> None:
    cli("token", "create", "ops", db=db_path)
    mmdb = tmp_path / "city.mmdb"
    build_city_mmdb(mmdb)
    free = {"LINKEDGE_EDGE_PORT": "0", "LINKEDGE_ADMIN_PORT": "0"}
    code, lines = doctor(db_path, LINKEDGE_GEOIP_PATH=str(mmdb), **free)
    assert code == 0, lines
    assert all(LINE.match(line) for line in lines), lines
    names = [line[6:].split(":", 1)[0] for line in lines]
    assert names == [
        "database", "disk", "token", "clock", "geoip", "edge port", "admin port", "bot list"
    ]  # fmt: skip
    assert "in WAL mode" in verdict(lines, "database")
    assert verdict(lines, "bot list").startswith("ok    bot list: crawlerdetect ")


def test_what_is_wrong_is_a_fail_line_and_exit_1(db_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code, lines = doctor(
            db_path,
            LINKEDGE_EDGE_HOST="127.0.0.1",
            LINKEDGE_EDGE_PORT=port,
            LINKEDGE_GEOIP_PATH="/nonexistent/city.mmdb",
        )
    assert code == 1
    assert verdict(lines, "token").startswith("FAIL  token: no active admin API token")
    assert verdict(lines, "edge port").startswith(f"FAIL  edge port: 127.0.0.1:{port} cannot be")
    assert verdict(lines, "geoip").startswith("FAIL  geoip: file not found")
    assert lines[-1] == "doctor: 3 problem(s) found"


def test_no_geoip_is_a_warning_and_a_missing_database_a_fail(tmp_path: Path) -> None:
    code, lines = doctor(tmp_path / "nothing-here.db")
    assert code == 1
    assert verdict(lines, "database").startswith("FAIL  database: no database at ")
    assert verdict(lines, "geoip").startswith("warn  geoip: no GeoIP database")


def test_the_ports_of_a_running_linkedge_are_fine(db_path: Path) -> None:
    proc = ServerProcess(db_path, env={"LINKEDGE_ADMIN_TOKEN": "doctor-token-0123456789abcdef"})
    try:
        env = {
            "LINKEDGE_EDGE_HOST": "127.0.0.1",
            "LINKEDGE_EDGE_PORT": str(proc.edge_port),
            "LINKEDGE_ADMIN_PORT": str(proc.admin_port),
        }
        code, lines = doctor(db_path, **env)
        assert code == 0, lines
        assert "in use by the running linkedge" in verdict(lines, "edge port")
    finally:
        proc.stop()
