"""Running a document's ```sh blocks, in order, as a reader would: the shared part of
tests/test_readme.py and tests/test_operations_docs.py.

A block runs as one bash script (`set -e`: a failing command fails the block, naming its
line) in a working directory of the test's, with `.venv/bin/linkedge` there running this
checkout's code. Exported variables carry over to the next block. Every `curl` goes
through a wrapper that records its status, and a curl line whose comment starts with a
status (`# 302 ...`) must answer it; the wrapper retries a differing answer for up to
CHANGE_WAIT_S, since a running server serves a change "within a second". `make` lines
are left to the caller (a test cannot run `make run` in the checkout).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
_EXPECTED = re.compile(r"#\s*(\d{3})\b")
CHANGE_WAIT_S = 2.0
# curl --max-time ends a stream it was told to stop reading: exit 28 is what was asked.
CURL_WRAPPER = r"""
__expect=(@EXPECT@)
__n=0
curl() {
  local want="${__expect[$__n]}" status rc tries=0
  __n=$((__n + 1))
  while true; do
    rc=0
    command curl "$@" -w '\n@@STATUS %{http_code}@@\n' > "$__out" || rc=$?
    if [ "$rc" = 28 ] && [[ " $* " == *" --max-time "* ]]; then rc=0; fi
    status=$(sed -n 's/^@@STATUS \([0-9]*\)@@$/\1/p' "$__out" | tail -1)
    if [ "$want" = "-" ] || [ "$status" = "$want" ] || [ "$tries" -ge @TRIES@ ]; then break; fi
    tries=$((tries + 1)); sleep 0.2
  done
  cat "$__out"
  echo "@@CURL $__n $status $want@@" >> "$__statuses"
  return $rc
}
"""


@dataclass
class Block:
    line: int
    kind: str
    text: str


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [
        Block(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in _BLOCK.finditer(text)
    ]


def expected_statuses(script: str) -> list[str]:
    """Per curl invocation (a line that starts with curl), its documented status or "-"."""
    out = []
    for line in script.splitlines():
        if line.lstrip().startswith("curl "):
            m = _EXPECTED.search(line.split(" #", 1)[1]) if " #" in line else None
            out.append(m.group(1) if m else "-")
    return out


def make_shim(workdir: Path) -> None:
    """`.venv/bin/linkedge` in workdir: this checkout's CLI, as `make run` installs it."""
    shim = workdir / ".venv" / "bin" / "linkedge"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m admin.cli "$@"\n')
    shim.chmod(0o755)


def doc_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKEDGE_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def run_script(
    name: str, script: str, workdir: Path, env: dict[str, str], state: Path
) -> subprocess.CompletedProcess[str]:
    """Run one block's commands; assert it succeeded and its curls answered as documented.
    Exported variables are kept in `state` for the next block."""
    expect = expected_statuses(script)
    statuses = workdir / ".statuses"
    statuses.write_text("")
    tries = int(CHANGE_WAIT_S / 0.2)
    prelude = (
        f"__out={workdir / '.curl-out'}\n__statuses={statuses}\n"
        + CURL_WRAPPER.replace("@EXPECT@", " ".join(expect)).replace("@TRIES@", str(tries))
        + (f"source {state} 2>/dev/null || true\n" if state.exists() else "")
        + "set -e\ntrap 'echo \"failed: $BASH_COMMAND\" >&2' ERR\n"
    )
    full = prelude + script + f"\nexport -p > {state}\n"
    result = subprocess.run(
        ["bash", "-c", full], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{name}: {result.stderr}\n{result.stdout}"
    recorded = re.findall(r"@@CURL (\d+) (\d*) (\S+)@@", statuses.read_text())
    assert len(recorded) == len(expect), f"{name}: ran {len(recorded)} of {len(expect)} curls"
    for n, got, want in recorded:
        assert want in ("-", got), f"{name}: curl #{n} answered {got}, documented {want}"
    return result
