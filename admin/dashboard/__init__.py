"""The dashboard: static HTML, CSS and JavaScript modules served by the admin listener.

Rules of this module:
- The files next to this one are the whole dashboard: no build step, no CDN, no
  third-party code. They are read once and kept in memory (a few tens of KiB).
- Served without a token (they hold no data); every number on the page comes from the
  JSON API with the operator's bearer token, which the page keeps in sessionStorage and
  sends in an Authorization header (docs/dashboard.md says why: no cookie means no CSRF).
- Every answer carries a strict Content-Security-Policy (scripts, styles and connections
  from this origin only, no inline script, no framing), nosniff and no referrer.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from admin.http import Call, Response
from edge.errors import NotFound

CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}
SECURITY_HEADERS: Final = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)

_cache: dict[str, Response] = {}


def _file(name: str) -> Response:
    cached = _cache.get(name)
    if cached is not None:
        return cached
    ext = name.rpartition(".")[2]
    if "/" in name or name.startswith(".") or ext not in CONTENT_TYPES:
        raise NotFound(f"no dashboard file {name!r}")
    path = resources.files(__name__) / name
    if not path.is_file():
        raise NotFound(f"no dashboard file {name!r}")
    response = Response(200, path.read_bytes(), CONTENT_TYPES[ext], SECURITY_HEADERS)
    _cache[name] = response
    return response


async def index(call: Call) -> Response:
    return _file("index.html")


async def asset(call: Call) -> Response:
    return _file(call.params["file"])


async def root(call: Call) -> Response:
    return Response(302, b"", "text/plain", (("Location", "/dashboard/"),))
