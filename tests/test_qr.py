"""QR codes (admin/qr.py) and the QR marker (edge/urls.py): the code encodes the short URL
with `qr=1`, the edge takes the marker out before the redirect, the click counts as source
"qr". End to end through a real server."""

from __future__ import annotations

import http.client
import sqlite3
from pathlib import Path

import pytest
import segno
from hypothesis import given
from hypothesis import strategies as st

from admin import qr
from edge.errors import InvalidField
from edge.urls import QR_MARKER, take_qr_marker
from tests.conftest import cli
from tests.test_api import Api, assert_error, start_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def edge_location(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "localhost", "User-Agent": "Mozilla/5.0 x"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 302
        return resp.getheader("Location") or ""
    finally:
        conn.close()


def test_a_scan_is_redirected_without_the_marker_and_counted_as_qr(db_path: Path) -> None:
    proc = start_server(db_path)
    api = Api(proc.admin_port)
    status, link = api.post(
        "/api/links",
        {"url": "https://example.org/p?a=1", "slug": "poster", "utm_source": "print"},
    )
    assert status == 201
    # the QR code the API draws is the short URL with the marker
    status, headers, svg = api.call("GET", f"/api/links/{link['id']}/qr.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    want = qr.render("https://localhost/poster", "svg", qr.QrOptions())
    assert svg.encode() == want
    assert qr.qr_url("https://localhost/poster") == "https://localhost/poster?qr=1"
    conn = http.client.HTTPConnection("127.0.0.1", proc.admin_port, timeout=5)
    conn.request(
        "GET",
        "/api/links/localhost/poster/qr.png?scale=3&margin=2&error=h&dark=%23112233",
        headers={"Authorization": "Bearer " + api.token},  # type: ignore[operator]
    )
    resp = conn.getresponse()
    png = resp.read()
    conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type") == "image/png"
    assert png.startswith(PNG_MAGIC)
    opts = qr.QrOptions(scale=3, margin=2, error="h", dark="#112233")
    assert png == qr.render("https://localhost/poster", "png", opts)
    status, body = api.get(f"/api/links/{link['id']}/qr.png?scale=500")
    assert status == 400
    assert_error(body, "invalid_field", "scale")
    status, body = api.get(f"/api/links/{link['id']}/qr.svg?dark=red")
    assert status == 400
    assert_error(body, "invalid_field", "dark")

    port = proc.edge_port
    base = "https://example.org/p?a=1&utm_source=print"
    assert edge_location(port, "/poster?qr=1") == base  # the marker never reaches it
    assert edge_location(port, "/poster?qr=1&ref=wall") == base + "&ref=wall"
    assert edge_location(port, "/poster?ref=wall&qr=1") == base + "&ref=wall"
    assert edge_location(port, "/poster?qr=10") == base + "&qr=10"  # not the marker
    assert edge_location(port, "/poster") == base
    code, _out, err = proc.stop()
    assert code == 0, err
    db = sqlite3.connect(db_path)
    sources = [r[0] for r in db.execute("SELECT source FROM clicks ORDER BY id")]
    assert sources == ["qr", "qr", "qr", "direct", "direct"]


def test_link_qr_writes_the_file_the_api_draws(db_path: Path, tmp_path: Path) -> None:
    cli("link", "add", "https://example.org/", "--slug", "flyer", db=db_path)
    out = tmp_path / "flyer.png"
    done = cli(
        "link", "qr", "flyer", "-o", str(out), "--scale", "4", "--light", "transparent", db=db_path
    )
    assert "flyer?qr=1" in done.stdout
    opts = qr.QrOptions(scale=4, light="transparent")
    assert out.read_bytes() == qr.render("https://localhost/flyer", "png", opts)
    svg = tmp_path / "flyer.svg"
    cli("link", "qr", "flyer", "-o", str(svg), db=db_path)
    assert svg.read_bytes().startswith(b"<?xml")
    bad = cli("link", "qr", "flyer", "-o", str(svg), "--dark", "blue", db=db_path, check=False)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "dark must be a colour" in bad.stderr


def test_the_code_holds_the_marked_url() -> None:
    url = qr.qr_url("https://go.example.com/launch")
    code = segno.make(url, error="m", boost_error=False)
    drawn = qr.render("https://go.example.com/launch", "svg", qr.QrOptions(scale=1, margin=0))
    assert drawn.count(b"<path") >= 1
    assert code.designator.endswith("-M")  # error level m as asked
    assert url.endswith("?" + QR_MARKER)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"scale": "0"}, "scale"),
        ({"scale": "x"}, "scale"),
        ({"margin": "21"}, "margin"),
        ({"error": "z"}, "error"),
        ({"light": "transparent", "dark": "transparent"}, "dark"),
        ({"light": "#12"}, "light"),
    ],
)
def test_bad_options_name_their_field(raw: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidField) as caught:
        qr.options(raw)
    assert caught.value.field == problem


_pair = st.from_regex(r"[a-z]{1,3}=[0-9]{1,2}", fullmatch=True)


@given(st.lists(_pair, max_size=6), st.booleans())
def test_the_marker_is_taken_out_and_nothing_else(pairs: list[str], marked: bool) -> None:
    sent = [*pairs, QR_MARKER] if marked else pairs
    query = "&".join(sent).encode()
    rest, found = take_qr_marker(query)
    assert found == (QR_MARKER in sent)
    assert (rest.split(b"&") if rest else []) == [p.encode() for p in sent if p != QR_MARKER]
    if not found:
        assert rest == query
