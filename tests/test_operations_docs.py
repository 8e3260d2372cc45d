"""docs/operations.md and docs/configuration.md say what works (issue 11, docs items):
the systemd unit passes `systemd-analyze verify` and starts what the install steps create,
the settings file is one linkedge reads, the wrapper and every linkedge command in them
parse, the cron lines are /etc/cron.d lines, and configuration.md's commands run.

The install itself (a system user, /opt, /etc, apt-get) is not run here: it needs root on a
machine of its own. What can be checked without changing this machine is."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge import config as cfg
from tests.doc_commands import REPO, blocks, doc_env, make_shim, run_script

OPERATIONS = REPO / "docs" / "operations.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
_HEREDOC = re.compile(r"^cat > (\S+) <<'EOF'\n(.*?)^EOF$", re.M | re.S)
# Where Debian keeps the unit files systemd ships (the root given to verify needs them).
SYSTEM_UNITS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def section(title: str) -> str:
    """The ```sh block of operations.md under `## title`."""
    text = OPERATIONS.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else None]
    return re.search(r"^```sh\n(.*?)^```$", body, re.M | re.S)[1]  # type: ignore[index]


def heredocs(script: str) -> dict[str, str]:
    return {m[1]: m[2] for m in _HEREDOC.finditer(script)}


def linkedge_commands(script: str) -> list[list[str]]:
    """The `linkedge ...` lines of a script (heredocs left out), as argv after `linkedge`."""
    plain = re.sub(r"\$\([^)]*\)", "x", _HEREDOC.sub("", script))  # $(date +%F) -> x
    return [
        shlex.split(line, comments=True)[1:]
        for line in plain.splitlines()
        if line.startswith("linkedge ")
    ]


def parses(argv: list[str]) -> None:
    from admin.cli import build_parser

    build_parser().parse_args(argv)


def systemd_analyze() -> str:
    """systemd-analyze, installed with apt-get when missing and possible; else a skip."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "systemd-analyze is missing and cannot be installed here (needs root and apt-get)"
        )
    apt = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "systemd"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("systemd-analyze")
    if apt.returncode != 0 or not found:
        pytest.skip(f"apt-get install systemd failed: {apt.stderr.strip()[-300:]}")
    return found


def test_the_unit_verifies_and_starts_what_the_install_creates(tmp_path: Path) -> None:
    install = section("Install on a VPS")
    unit = heredocs(section("systemd"))["/etc/systemd/system/linkedge.service"]
    # the unit names what the install steps make: the venv's console script, the user,
    # the data directory and the settings file
    venv = re.search(r"^python3 -m venv (\S+)$", install, re.M)[1]  # type: ignore[index]
    assert re.search(rf"^{venv}/bin/pip install ", install, re.M)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["linkedge"] == "admin.cli:main"
    fields = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line)
    assert fields["ExecStart"] == f"{venv}/bin/linkedge serve"
    user = re.search(r"^useradd .* (\S+)$", install, re.M)[1]  # type: ignore[index]
    assert fields["User"] == user == fields["Group"]
    data = re.search(rf"^install -d -o {user} -g {user} -m 0750 (\S+)$", install, re.M)
    assert data and fields["WorkingDirectory"] == data[1]
    assert fields["EnvironmentFile"] in heredocs(install)
    # systemd-analyze verify, in a root that has systemd's own units and that script
    analyze = systemd_analyze()
    units = next((d for d in SYSTEM_UNITS if (d / "sysinit.target").exists()), None)
    if units is None:
        pytest.skip(f"no systemd unit directory with sysinit.target in {SYSTEM_UNITS}")
    root = tmp_path / "root"
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/linkedge.service").write_text(unit)
    script = root / venv.lstrip("/") / "bin" / "linkedge"
    script.parent.mkdir(parents=True)
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m admin.cli "$@"\n')
    script.chmod(0o755)
    verify = subprocess.run(
        [analyze, "verify", f"--root={root}", "/etc/systemd/system/linkedge.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def test_the_settings_file_wrapper_and_commands_work(tmp_path: Path) -> None:
    install = section("Install on a VPS")
    files = heredocs(install)
    # the settings file: linkedge's own reader takes it; with its paths moved under tmp,
    # `init` as the install runs it creates the database it names
    settings = files["/etc/linkedge.env"]
    moved = settings.replace("/var/lib/linkedge", str(tmp_path / "var"))
    (tmp_path / "var").mkdir()
    env_file = tmp_path / "linkedge.env"
    env_file.write_text(moved)
    values = cfg.read_settings_file(str(env_file))
    assert values["LINKEDGE_DB_PATH"] == str(tmp_path / "var" / "linkedge.db")
    init = subprocess.run(
        [sys.executable, "-m", "admin.cli", "--config", str(env_file), "init"],
        cwd=tmp_path,
        env=doc_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0 and (tmp_path / "var" / "linkedge.db").exists(), init.stderr
    # the wrapper: valid sh, running the venv's linkedge with the settings file
    wrapper = files["/usr/local/bin/linkedge"]
    assert subprocess.run(["sh", "-n"], input=wrapper, text=True).returncode == 0
    venv = re.search(r"^python3 -m venv (\S+)$", install, re.M)[1]  # type: ignore[index]
    assert f'{venv}/bin/linkedge --config /etc/linkedge.env "$@"' in wrapper
    # every linkedge command on the page parses
    text = OPERATIONS.read_text()
    commands = [
        argv
        for block in blocks(OPERATIONS)
        if block.kind == "sh"
        for argv in linkedge_commands(block.text)
    ]
    assert ["init"] in commands and ["geo", "update"] in commands
    assert any(argv[:1] == ["backup"] for argv in commands)
    for argv in commands:
        parses(argv)
    assert 'sqlite3 /var/lib/linkedge/linkedge.db ".backup' not in text  # linkedge backup


def test_cron_lines_are_cron_d_lines() -> None:
    """Five time fields, then the user (the /etc/cron.d format the page names), then a
    linkedge command that parses."""
    install = section("Install on a VPS")
    venv = re.search(r"^python3 -m venv (\S+)$", install, re.M)[1]  # type: ignore[index]
    user = re.search(r"^useradd .* (\S+)$", install, re.M)[1]  # type: ignore[index]
    cron = [
        line
        for block in blocks(OPERATIONS)
        if block.kind == ""
        for line in block.text.splitlines()
        if re.match(r"^[\d*/,-]+( [\d*/,-]+){4} ", line)
    ]
    assert len(cron) == 2, cron
    for line in cron:
        fields = line.split(maxsplit=6)
        assert fields[5] == user, line
        argv = shlex.split(fields[6])
        assert argv[0] == f"{venv}/bin/linkedge" and argv[1:3] == ["--config", "/etc/linkedge.env"]
        parses(argv[1:])
    assert "/etc/cron.d/" in OPERATIONS.read_text()


def test_configuration_md_commands_run(tmp_path: Path) -> None:
    make_shim(tmp_path)
    state = tmp_path / "exports.sh"
    ran = 0
    for block in blocks(CONFIGURATION):
        if block.kind == "sh":
            run_script(f"configuration.md:{block.line}", block.text, tmp_path, doc_env(), state)
            ran += 1
    assert ran >= 1 and (tmp_path / "linkedge.db").exists()
