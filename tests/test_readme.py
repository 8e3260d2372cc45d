"""README.md is a path that works top to bottom (issue 11, item 2): its ```sh blocks run
in order in a fresh directory, `make run` as the Makefile's `run` target runs it (the demo
on random ports), with real curl against the real server; every command must succeed and
every curl answer the status its comment documents. And `make run` installs only what
running needs (item 9)."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.doc_commands import REPO, blocks, doc_env, make_shim, run_script
from tests.geo_fixtures import DBIP_CITY_TYPE, build_city_mmdb

README = REPO / "README.md"
MAKEFILE = REPO / "Makefile"
_MAKE_LINE = re.compile(r"make (\w+)(?: ARGS='([^']*)')?\s*(?:#.*)?")
# The Makefile's run recipe, which the test runs as the demo process below.
RUN_RECIPE = "$(BIN)/linkedge demo $(ARGS)"
# What the test changes in the README's commands, and why:
# - the ports: the demo listens on random free ports, not 8080/8081;
# - `geo update` without --url downloads ~130 MB from db-ip.com: the test installs a
#   DB-IP-typed fixture file instead, through the same --url that offline installs use.


class Demo:
    """`make run`: the demo in its own process group, its output read up to its hint."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        cmd = [str(workdir / ".venv/bin/linkedge"), "demo", *args]
        cmd += ["--edge", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=doc_env({"PYTHONUNBUFFERED": "1"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while "Press Ctrl-C" not in self.output and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"make run exited: {self.output}")
            self.output += line
        edge = re.search(r"edge listening on http://([\d.]+):(\d+)", self.output)
        admin = re.search(r"admin API listening on http://[\d.]+:(\d+)", self.output)
        assert edge and admin, self.output
        self.edge_host, self.edge_port, self.admin_port = edge[1], edge[2], admin[1]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out
        return self.output + out


def test_the_makefile_runs_the_demo_as_the_readme_test_does() -> None:
    recipe = MAKEFILE.read_text().split("\nrun:", 1)[1].split("\n")[1].strip()
    assert recipe == RUN_RECIPE


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    run = subprocess.run(["make", "-n", "run"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    installs = [line for line in run.stdout.splitlines() if "pip install" in line]
    assert installs[-1].endswith("pip install -q -e ."), run.stdout
    assert "[dev]" not in run.stdout
    assert ".venv/bin/linkedge demo" in run.stdout
    test = subprocess.run(["make", "-n", "test"], cwd=tmp_path, capture_output=True, text=True)
    assert "pip install -q -e '.[dev]'" in test.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples need curl")
def test_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    make_shim(workdir)
    fixture = tmp_path / "dbip-city-lite.mmdb"
    build_city_mmdb(fixture, database_type=DBIP_CITY_TYPE)
    state = tmp_path / "exports.sh"
    demo: Demo | None = None
    outputs: list[str] = []
    skipped: list[str] = []
    try:
        for block in blocks(README):
            if block.kind != "sh":
                continue
            lines = [line for line in block.text.splitlines() if line.strip()]
            makes = [_MAKE_LINE.fullmatch(line) for line in lines]
            if any(makes):
                assert all(makes), f"README.md:{block.line}: make lines go in blocks of their own"
                for m in makes:
                    assert m is not None
                    if m[1] != "run":  # make test/check/bench: what runs this test
                        skipped.append(f"make {m[1]}")
                        continue
                    if demo is not None:
                        outputs.append(demo.stop())
                    demo = Demo(workdir, shlex.split(m[2] or ""))
                continue
            assert demo is not None, f"README.md:{block.line}: runs before `make run`"
            script = block.text.replace("127.0.0.1:8080", f"127.0.0.1:{demo.edge_port}")
            script = script.replace("127.0.0.1:8081", f"127.0.0.1:{demo.admin_port}")
            script = re.sub(
                r"geo update --dest (\S+)", rf"geo update --url file://{fixture} --dest \1", script
            )
            env = doc_env({"LINKEDGE_EDGE_PORT": demo.edge_port})
            run_script(f"README.md:{block.line}", script, workdir, env, state)
    finally:
        if demo is not None:
            outputs.append(demo.stop())
    assert skipped == [
        "make test",
        "make test",
        "make check",
        "make bench",
        "make hostile",
        "make mutation",
    ]
    first, second = outputs
    # item 9: the demo listens on 127.0.0.1 unless asked; the token is shown once, and the
    # second `make run` says one exists and how to make another
    assert "edge listening on http://127.0.0.1:" in first
    assert "linkedge admin token (shown once): le_" in first
    assert "admin token (shown once)" not in second and "an admin token already exists" in second
    assert "token create NAME" in second
    # its hint never names a slug that is taken: README's API step made `launch`
    assert "--slug launch\n" in first and "--slug launch-2\n" in second
    # the second start used the database from the GeoIP section
    assert "GeoIP: DBIP-City-Lite" in second
    # item 2: the demo link kept working through every step
    assert (workdir / "linkedge.db").exists() and (workdir / "linkedge-backup.db").exists()


def test_the_demo_listens_on_loopback_unless_asked(tmp_path: Path) -> None:
    """Item 9: `make run` exposed the demo on 0.0.0.0."""
    make_shim(tmp_path)
    for args, host in (([], "127.0.0.1"), (["--edge", "0.0.0.0:0"], "0.0.0.0")):
        proc = subprocess.Popen(
            [str(tmp_path / ".venv/bin/linkedge"), "demo", *args],
            cwd=tmp_path,
            env=doc_env(
                {"PYTHONUNBUFFERED": "1", "LINKEDGE_EDGE_PORT": "0", "LINKEDGE_ADMIN_PORT": "0"}
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            out = ""
            while "edge listening on" not in out:
                line = proc.stdout.readline()
                assert line, out
                out += line
            assert f"edge listening on http://{host}:" in out, out
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
