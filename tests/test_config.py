"""edge/config.py: settings are data, every one documented and settable."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import config as cfg
from tests.conftest import cli, init_db

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    missing = [f.name for f in cfg.settings() if f"`{f.name}`" not in text]
    assert not missing, f"add these settings to docs/configuration.md: {missing}"
    for f in cfg.settings():
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_environment_and_overrides() -> None:
    env = {
        "LINKEDGE_EDGE_PORT": "9000",
        "LINKEDGE_TRUSTED_PROXIES": "127.0.0.1/32, 10.0.0.0/8",
        "LINKEDGE_STORE_TRUNCATED_IP": "yes",
        "LINKEDGE_GEOIP_PATH": "/x.mmdb",
    }
    c = cfg.from_env(env, edge_port=9100)
    assert c.edge_port == 9100
    assert c.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8")
    assert c.store_truncated_ip is True
    assert c.geoip_path == "/x.mmdb"
    with pytest.raises(ValueError, match="keep_alive_timeout_s"):
        cfg.from_env({"LINKEDGE_KEEP_ALIVE_TIMEOUT_S": "0"})
    with pytest.raises(ValueError, match="expected an integer"):
        cfg.from_env({"LINKEDGE_EDGE_PORT": "eighty"})
    with pytest.raises(ValueError, match="unknown_host"):
        cfg.from_env({"LINKEDGE_UNKNOWN_HOST": "maybe"})


def test_every_cli_command_has_help_with_an_example() -> None:
    from admin.cli import build_parser

    parser = build_parser()
    seen = 0
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for sub in choices.values():
                    assert "example:" in (sub.epilog or ""), f"{sub.prog} has no example"
                    seen += 1
                    stack.append(sub)
    assert seen >= 10


def test_cli_rejects_bad_input_clearly(tmp_path: Path) -> None:
    db = init_db(tmp_path / "c.db")
    bad = cli("link", "add", "javascript:alert(1)", db=db, check=False)
    assert bad.returncode == 2
    assert "javascript: URLs are not allowed" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = cli("link", "add", "https://example.com/", "--expires", "soonish", db=db, check=False)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    bad = cli("serve", "--admin", "0.0.0.0:8081", db=db, check=False)
    assert bad.returncode == 2 and "--admin-public" in bad.stderr
    bad = cli("serve", "--edge", "nonsense", db=db, check=False)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    bad = cli("serve", "--trusted-proxy", "10.0.0.0/99", db=db, check=False)
    assert bad.returncode == 2 and "CIDR" in bad.stderr
    missing = cli("link", "show", "nope", db=db, check=False)
    assert missing.returncode == 2 and "no link 'nope'" in missing.stderr


# --- the settings file (issue 11 item 1) ------------------------------------------------


def test_every_other_variable_and_the_settings_file_are_documented() -> None:
    from admin import auth

    text = DOCS.read_text()
    assert auth.ENV_TOKEN in cfg.OTHER_VARIABLES
    for name, help_text in cfg.OTHER_VARIABLES.items():
        assert f"`{name}`" in text, f"add {name} to docs/configuration.md"
        assert help_text
    assert "`--config FILE`" in text


def test_a_settings_file_reads_like_a_systemd_environment_file(tmp_path: Path) -> None:
    path = tmp_path / "linkedge.env"
    path.write_text(
        "# comment\n; also a comment\n\n"
        "LINKEDGE_DB_PATH=/var/lib/linkedge/linkedge.db\n"
        "  LINKEDGE_EDGE_PORT = 9000  \n"
        'LINKEDGE_GEOIP_PATH="/srv/geo city.mmdb"\n'
        "LINKEDGE_LOG_LEVEL='debug'\n"
        "LINKEDGE_ADMIN_TOKEN=for-the-server-0123456789abcdef\n"
        "PATH_FOR_SOMETHING_ELSE=kept out\n"
    )
    values = cfg.read_settings_file(str(path))
    assert values == {
        "LINKEDGE_DB_PATH": "/var/lib/linkedge/linkedge.db",
        "LINKEDGE_EDGE_PORT": "9000",
        "LINKEDGE_GEOIP_PATH": "/srv/geo city.mmdb",
        "LINKEDGE_LOG_LEVEL": "debug",
        "LINKEDGE_ADMIN_TOKEN": "for-the-server-0123456789abcdef",
    }
    # the environment wins over the file, flags over both
    env = cfg.environment(str(path), {"LINKEDGE_EDGE_PORT": "9100"})
    config = cfg.from_env(env, log_level="warning")
    assert (config.edge_port, config.log_level) == (9100, "warning")
    assert config.db_path == "/var/lib/linkedge/linkedge.db"
    # LINKEDGE_CONFIG names the file when no --config is given
    named = cfg.environment(None, {cfg.CONFIG_VARIABLE: str(path)})
    assert named["LINKEDGE_GEOIP_PATH"] == "/srv/geo city.mmdb"
    assert cfg.environment(None, {}) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("LINKEDGE_DBPATH=x.db\n", "linkedge.env:1: unknown setting LINKEDGE_DBPATH"),
        ("# ok\nLINKEDGE_EDGE_PORT=eighty\n", "linkedge.env:2: edge_port: expected an integer"),
        ("just words\n", "linkedge.env:1: expected KEY=VALUE"),
        ("LINKEDGE_CONFIG=/other.env\n", "unknown setting LINKEDGE_CONFIG"),
    ],
)
def test_a_bad_settings_file_line_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "linkedge.env"
    path.write_text(text)
    with pytest.raises(cfg.SettingsFileError, match=message):
        cfg.read_settings_file(str(path))


def test_the_cli_and_serve_read_the_settings_file(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    db = tmp_path / "service" / "linkedge.db"
    db.parent.mkdir()
    settings = tmp_path / "linkedge.env"
    settings.write_text(
        f"LINKEDGE_DB_PATH={db}\nLINKEDGE_EDGE_HOST=127.0.0.1\nLINKEDGE_EDGE_PORT=0\n"
        "LINKEDGE_ADMIN_PORT=0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKEDGE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "admin.cli", "serve", "--config", str(settings)],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]  # the token, then the edge
        assert "edge listening on http://127.0.0.1:" in lines[1], lines
        assert db.exists()  # serve created the database the file names
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "admin.cli", *args],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(REPO), **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = run("--config", str(settings), "link", "add", "https://example.com/", "--slug", "s")
    assert added.returncode == 0 and f"(in {db})" in added.stdout, added.stderr
    for way in (
        run("link", "list", "--config", str(settings)),
        run("link", "list", LINKEDGE_CONFIG=str(settings)),
    ):
        assert way.returncode == 0 and "localhost/s" in way.stdout, way.stderr
    # the environment wins over the file, --db over both: both name a missing file here
    other = run("link", "list", LINKEDGE_CONFIG=str(settings), LINKEDGE_DB_PATH="other.db")
    assert other.returncode == 2 and f"no database at {tmp_path / 'other.db'}" in other.stderr
    flag = run("--config", str(settings), "link", "list", "--db", "flag.db")
    assert flag.returncode == 2 and "flag.db" in flag.stderr
    bad = run("--config", str(tmp_path / "missing.env"), "link", "list")
    assert bad.returncode == 2 and "cannot read settings file" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
