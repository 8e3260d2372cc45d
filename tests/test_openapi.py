"""GET /api/openapi.json: a valid OpenAPI 3.1 document of every route, and a live server
that keeps to it (schemathesis, bounded in time)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from admin import openapi
from tests.conftest import REPO, init_db
from tests.test_api import TOKEN, Api, start_server

# schemathesis's whole run, and per operation: `make test` stays within its budget.
SCHEMATHESIS_MAX_TIME_S = 8
SCHEMATHESIS_EXAMPLES = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    db = init_db(tmp_path_factory.mktemp("openapi") / "linkedge.db")
    proc = start_server(db)
    api = Api(proc.admin_port)
    # something for the generated ids and slugs to find (ids 1 and 2, slugs a and b)
    for slug in ("a", "b"):
        status, _ = api.post("/api/links", {"url": f"https://example.com/{slug}", "slug": slug})
        assert status == 201
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


def test_the_document_is_valid_openapi_31_and_describes_every_route(served) -> None:  # type: ignore[no-untyped-def]
    status, doc = Api(served.admin_port).get("/api/openapi.json")
    assert status == 200
    validate(doc)  # raises on an invalid document
    assert doc["openapi"] == "3.1.0"
    operations = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for needed in (
        ("GET", "/healthz"),
        ("POST", "/api/links"),
        ("GET", "/api/links/{id}/qr.svg"),
        ("GET", "/api/links/{domain}/{slug}/qr.png"),
        ("POST", "/api/import"),
        ("GET", "/api/openapi.json"),
        ("DELETE", "/api/tokens/{id}"),
    ):
        assert needed in operations
    # every handler once, plus: each link route by {domain}/{slug} too, qr once per format
    by_id = {(m, p) for m, p in operations if p.startswith("/api/links/{id}")}
    by_slug = {(m, p.replace("{domain}/{slug}", "{id}")) for m, p in operations if "{slug}" in p}
    assert by_id == by_slug and len(by_id) >= 10
    assert len(operations) == len(openapi.OPERATIONS) + len(by_slug) + 1
    create = doc["paths"]["/api/links"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == ["url"]
    assert "401" in create["responses"] and doc["paths"]["/healthz"]["get"]["security"] == []
    stats = doc["paths"]["/api/links/{id}/stats"]["get"]
    assert {p["name"] for p in stats["parameters"]} >= {"id", "from", "to", "interval"}


def test_every_routed_handler_is_described() -> None:
    from admin.http import Router

    # every handler admin/api.py routes has its summary, body and status here
    names = {
        line.split("self.", 1)[1].split(",", 1)[0].split(")", 1)[0]
        for line in (REPO / "admin" / "api.py").read_text().splitlines()
        if "r.add(" in line and "self." in line
    }
    names.add("link_qr")
    assert names <= set(openapi.OPERATIONS), names - set(openapi.OPERATIONS)
    assert Router  # the generator reads Router.routes: see admin/openapi.py


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("st", path=str(Path(sys.executable).parent)) is None,
                    reason="schemathesis is not installed (pip install -e '.[dev]')")  # fmt: skip
def test_a_live_server_keeps_to_the_document(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No 5xx, and every status, content type and body as documented."""
    st = str(Path(sys.executable).parent / "st")
    cmd = [
        st,
        "run",
        f"http://127.0.0.1:{served.admin_port}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples",
        str(SCHEMATHESIS_EXAMPLES),
        "--max-time",
        str(SCHEMATHESIS_MAX_TIME_S),
        "--phases",
        "examples,fuzzing",
        "--seed",
        "15",
        "--workers",
        "2",
        # an endless stream, and revoking the token this run uses
        "--exclude-path",
        "/api/live/stream",
        "--exclude-path",
        "/api/tokens/{id}",
        "--report",
        "json",
        "--report-dir",
        str(tmp_path),
        "--no-color",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=SCHEMATHESIS_MAX_TIME_S + 60, cwd=tmp_path
    )
    failures = done.stdout.find("FAILURES")
    summary = done.stdout[max(0, failures) :][:6000] if failures >= 0 else done.stdout[-3000:]
    assert done.returncode == 0, summary + done.stderr[-2000:]
    assert "passed" in summary.lower(), summary
    _ = json  # the JSON report lies in tmp_path for a failed run's details
