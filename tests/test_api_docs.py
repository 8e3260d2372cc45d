"""docs/api.md cannot rot: every ```sh example in it is run, in order, with real curl
against a fresh `linkedge serve`, and must answer the status of the ```http block under it
and, where that block shows JSON, the same JSON: every field and value, except the values
that differ from run to run (times, tokens, the database path; `VOLATILE_FIELDS`). Every
route the server has must be documented, and every documented route must exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

from edge.worker import STATS_INTERVAL_S
from tests.conftest import REPO, ServerProcess
from tests.test_api import TOKEN, Api

DOC = REPO / "docs" / "api.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
_MARKER = re.compile(r"\n?@@STATUS (\d{3})@@\n")
# Every curl in an example runs through this: the status is appended after each transfer
# (placed after the example's own options, so it wins over an example's own -w), and a
# time limit is set (before them, so an example's own --max-time wins).
# Fields whose values are this run's and no other's: wall-clock times, the server's uptime,
# a new token's secret and prefix, the database path. Their presence is still compared.
VOLATILE_FIELDS = frozenset(
    {
        "created_at",
        "updated_at",
        "archived_at",
        "revoked_at",
        "last_used_at",
        "first_click_at",
        "first_human_click_at",
        "time_to_first_click_s",
        "time_to_peak_s",
        "to_iso",
        "from_iso",
        "started_at",
        "launched_at",
        "at",
        "now",
        "from",
        "to",
        "t",
        "uptime_s",
        "secret",
        "prefix",
        "path",
        "state_since",
        "evaluated_at",
        "ts_ms",
        "generated_at",
        # an event's times and its lag from the click (tenths of a second in a run)
        "occurred_at",
        "received_at",
        "click_at",
        "lag_s",
        "p50_s",
        "p90_s",
    }
)
CURL_WRAPPER = "curl() { command curl --max-time 10 \"$@\" -w '\\n@@STATUS %{http_code}@@\\n'; }\n"


@dataclass
class Example:
    line: int
    command: str
    response: str

    @property
    def status(self) -> int:
        first = self.response.splitlines()[0]
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) .+", first)
        assert match, f"docs/api.md:{self.line}: the response must start with a status line"
        return int(match.group(1))

    @property
    def documented_json(self) -> Any:
        _head, _, body = self.response.partition("\n\n")
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            return None


def examples(text: str) -> list[Example]:
    """The ```sh blocks of a document, each with the ```http block that follows it."""
    found: list[Example] = []
    blocks = list(_BLOCK.finditer(text))
    for i, block in enumerate(blocks):
        if block.group(1) != "sh":
            continue
        line = text.count("\n", 0, block.start()) + 1
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        assert following is not None and following.group(1) == "http", (
            f"docs/api.md:{line}: an example must be followed by its ```http response"
        )
        found.append(Example(line, block.group(2), following.group(2).strip()))
    return found


def run_example(example: Example, env: dict[str, str]) -> tuple[int, str]:
    """Run an example with bash; return the last transfer's status and its output."""
    result = subprocess.run(
        ["bash", "-c", CURL_WRAPPER + example.command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    statuses = _MARKER.findall(result.stdout)
    assert statuses, f"docs/api.md:{example.line}: no HTTP answer ({result.stderr.strip()})"
    last = list(_MARKER.finditer(result.stdout))[-1]
    previous = list(_MARKER.finditer(result.stdout, 0, last.start()))
    start = previous[-1].end() if previous else 0
    return int(statuses[-1]), result.stdout[start : last.start()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("docs") / "linkedge.db", env={"LINKEDGE_ADMIN_TOKEN": TOKEN}
    )
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


ELIDED: Final = "…"  # a documented value shown as "…" stands for any value (a long answer)


def matches(actual: Any, documented: Any) -> bool:
    """Whether an answer is the documented one: volatile fields aside (comparable), and any
    value where the documentation elides it."""
    if documented == ELIDED:
        return True
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return False
        # a key "…" stands for the keys not shown
        shown = {k: v for k, v in documented.items() if k != ELIDED}
        keys_match = (
            actual.keys() >= shown.keys()
            if ELIDED in documented
            else actual.keys() == documented.keys()
        )
        return (
            isinstance(actual, dict)
            and keys_match
            and all(
                (k in VOLATILE_FIELDS and (actual[k] is None) == (v is None))
                or matches(actual[k], v)
                for k, v in shown.items()
            )
        )
    if isinstance(documented, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(documented)
            and all(matches(a, d) for a, d in zip(actual, documented, strict=True))
        )
    return bool(comparable(actual) == comparable(documented))


def comparable(value: Any) -> Any:
    """A JSON value with every volatile field's value replaced by a placeholder."""
    if isinstance(value, dict):
        return {
            k: "<volatile>" if k in VOLATILE_FIELDS and v is not None else comparable(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


_last_edge_request = [0.0]  # when an example last sent a request to the edge


def settle(server: ServerProcess, command: str) -> None:
    """Before an example that reads numbers: every click made so far is written (and so in
    the rollups and the live counters). A worker reports what it captured every
    STATS_INTERVAL_S, so `captured` is complete only that long after the last redirect."""
    if "$EDGE" in command:
        # the stats examples read per-minute series: clicks made in the last seconds of a
        # minute would land one bucket earlier than documented, so such examples start in
        # a fresh minute
        second = time.time() % 60
        if second > 50:
            time.sleep(60.5 - second)
        _last_edge_request[0] = time.monotonic()
    if not any(word in command for word in ("/stats", "/velocity", "/live")):
        return
    wait = _last_edge_request[0] + STATS_INTERVAL_S + 0.2 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    api = Api(server.admin_port)
    deadline = time.monotonic() + 5
    while True:
        pipeline = api.get("/api/live")[1]["pipeline"]
        if pipeline["queue_depth"] == 0 and pipeline["written"] == pipeline["captured"]:
            return
        assert time.monotonic() < deadline, f"clicks not written in time: {pipeline}"
        time.sleep(0.05)


def example_env(server: ServerProcess) -> dict[str, str]:
    return {
        **os.environ,
        "ADMIN": f"http://127.0.0.1:{server.admin_port}",
        "EDGE": f"http://127.0.0.1:{server.edge_port}",
        "TOKEN": TOKEN,
    }


@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples need curl")
def test_every_curl_example_answers_as_documented(server: ServerProcess) -> None:
    found = examples(DOC.read_text())
    assert len(found) >= 30
    env = example_env(server)
    compared = 0
    for example in found:
        settle(server, example.command)
        status, output = run_example(example, env)
        assert status == example.status, (
            f"docs/api.md:{example.line}: documented {example.status}, got {status}: {output}"
        )
        documented = example.documented_json
        if isinstance(documented, dict | list):
            assert matches(json.loads(output), documented), (
                f"docs/api.md:{example.line}: the answer differs from the documented one "
                f"(regenerate with `python -m tests.test_api_docs` if the change is meant): "
                f"{output}"
            )
            compared += 1
    assert compared >= 20  # most examples show their JSON


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    from admin.api import AdminServer
    from admin.collector import Collector
    from edge.config import Config

    admin = AdminServer(Collector(Config(), "/nonexistent/collector.sock"))
    routes = {f"{r.method} /{'/'.join(r.pattern)}" for r in admin.router.routes}
    text = DOC.read_text()
    undocumented = sorted(r for r in routes if f"`{r}`" not in text)
    assert not undocumented, f"routes missing from docs/api.md: {undocumented}"
    documented = set(re.findall(r"`((?:GET|POST|PUT|PATCH|DELETE) /[^`?\s]*)`", text))
    assert documented <= routes, f"documented but not served: {sorted(documented - routes)}"


def test_every_documented_status_has_an_example() -> None:
    statuses = {e.status for e in examples(DOC.read_text())}
    assert statuses >= {200, 201, 204, 302, 400, 401, 404, 405, 409, 415, 422}


# --- regenerating the responses ----------------------------------------------------------
# `python -m tests.test_api_docs` runs every example against a fresh server and rewrites
# the ```http blocks of docs/api.md from the answers (header lines already in a block, like
# a Content-Type, are kept). Review the diff: times and ids are from that run.

RESPONSE_WIDTH = 92  # a JSON object or list shorter than this is shown on one line


def compact_json(value: Any, indent: int = 0) -> str:
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) + indent <= RESPONSE_WIDTH or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {compact_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + compact_json(v, indent + 2) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def render_response(example: Example, status: int, output: str) -> str:
    from edge.http import STATUS_REASONS

    head = [f"HTTP/1.1 {status} {STATUS_REASONS.get(status, '')}"]
    kept = [line for line in example.response.split("\n\n", 1)[0].splitlines()[1:] if ":" in line]
    text = output.strip()
    body = ""
    if text.startswith("HTTP/1.1"):  # curl -i: show its headers (not the Date)
        head += [
            h for h in text.replace("\r", "").split("\n")[1:] if h and not h.startswith("Date")
        ]
    else:
        head += kept
        if text.startswith(("{", "[")):
            body = compact_json(json.loads(text))
        elif text.startswith("retry"):  # an event stream: its first event, shortened
            lines = text.split("\n")[:4]
            body = "\n".join(x if len(x) < 120 else x[:110] + "…" for x in lines) + "\n\n…"
        elif text.startswith("#"):  # Prometheus text: its first lines
            body = "\n".join(text.split("\n")[:24]) + "\n…"
    return "\n".join(head) + ("\n\n" + body if body else "")


def regenerate(db: Path) -> None:
    text = DOC.read_text()
    server = ServerProcess(db, env={"LINKEDGE_ADMIN_TOKEN": TOKEN})
    rendered: dict[int, str] = {}
    try:
        env = example_env(server)
        for example in examples(text):
            settle(server, example.command)
            status, output = run_example(example, env)
            documented = example.documented_json
            if (
                isinstance(documented, dict | list)
                and ELIDED in orjson.dumps(documented).decode()
                and status == example.status
                and matches(json.loads(output), documented)
            ):
                rendered[example.line] = example.response  # keep what the docs elide
            else:
                rendered[example.line] = render_response(example, status, output)
    finally:
        server.stop()
    pieces: list[str] = []
    pos = 0
    blocks = list(_BLOCK.finditer(text))
    for i, block in enumerate(blocks):
        if block.group(1) == "sh":
            line = text.count("\n", 0, block.start()) + 1
            following = blocks[i + 1]
            pieces.append(text[pos : following.start()])
            pieces.append("```http\n" + rendered[line] + "\n```")
            pos = following.end()
    pieces.append(text[pos:])
    DOC.write_text("".join(pieces).replace(str(db), "/var/lib/linkedge/linkedge.db"))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        regenerate(Path(tmp) / "linkedge.db")


def test_every_live_number_and_link_field_form_is_explained(server: ServerProcess) -> None:
    """Issue 11 item 10: `rate_per_s` read 0.0 beside `rate_per_min: 3` with no word on
    what it counts; `tags` as a comma-separated string worked but was undocumented."""
    from tests.test_api import Api

    api = Api(server.admin_port)
    status, live = api.get("/api/live")
    assert status == 200
    text = DOC.read_text()
    section = text[text.index("### GET /api/live\n") : text.index("### GET /api/live/stream")]
    unexplained = [name for name in live["overall"] if f"`{name}`" not in section]
    assert not unexplained, f"explain in docs/api.md's /api/live section: {unexplained}"
    assert "last 10 s" in section  # what rate_per_s counts
    status, link = api.post("/api/links", {"url": "https://example.com/", "tags": "Launch,email"})
    assert status == 201 and link["tags"] == ["launch", "email"]
    assert '`"launch,email"` is `["launch", "email"]`' in text
