"""edge/config.py: settings are data, every one documented and settable."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import config as cfg
from tests.conftest import cli

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
    db = tmp_path / "c.db"
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
