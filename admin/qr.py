"""QR codes of short links: `GET /api/links/{id}/qr.svg|.png` and `linkedge link qr`.

Rules:
- The code encodes the short URL with the edge's QR marker (edge/urls.py QR_MARKER:
  `https://go.example.com/launch?qr=1`), so a poster's scans are counted as source "qr";
  the edge takes the marker out before the redirect, the destination never sees it.
- Drawn by segno (a maintained, pure-Python QR encoder). One set of options for the API
  and the CLI, validated here, each error naming its field: scale (pixels per module),
  margin (modules of quiet zone; 4 is the standard's), error correction (l, m, q, h:
  7-30% of the code may be damaged or covered by a logo), dark and light colours
  (#rgb or #rrggbb; light may be "transparent").
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any, Final

import segno

from edge.errors import InvalidField
from edge.urls import QR_MARKER

FORMATS: Final = ("svg", "png")
ERROR_LEVELS: Final = ("l", "m", "q", "h")
# A module 1-50 px: 50 px of a 177-module code (version 40) is ~9,000 px a side, the most
# anyone prints from a PNG; more is a request to make the server draw a huge image.
MAX_SCALE: Final = 50
MAX_MARGIN: Final = 20
_COLOUR: Final = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


@dataclass(frozen=True, slots=True)
class QrOptions:
    scale: int = 10
    margin: int = 4
    error: str = "m"
    dark: str = "#000000"
    light: str = "#ffffff"  # or "transparent"


def _int(raw: Any, name: str, low: int, high: int) -> int:
    text = str(raw)
    if not text.isdigit() or not low <= int(text) <= high:
        raise InvalidField(f"{name} must be a whole number from {low} to {high}", name)
    return int(text)


def options(raw: dict[str, Any]) -> QrOptions:
    """QrOptions from the API's query or the CLI's flags (absent values take defaults)."""
    base = QrOptions()
    scale = _int(raw["scale"], "scale", 1, MAX_SCALE) if raw.get("scale") is not None else None
    margin = raw.get("margin")
    error = raw.get("error")
    if error is not None and str(error).lower() not in ERROR_LEVELS:
        raise InvalidField("error must be one of l, m, q, h (7, 15, 25, 30% recoverable)", "error")
    colours = {}
    for name in ("dark", "light"):
        value = raw.get(name)
        if value is None:
            continue
        value = str(value)
        if not (_COLOUR.fullmatch(value) or (name == "light" and value == "transparent")):
            allowed = "#rgb or #rrggbb" + (", or transparent" if name == "light" else "")
            raise InvalidField(f"{name} must be a colour: {allowed}", name)
        colours[name] = value
    return QrOptions(
        scale=scale if scale is not None else base.scale,
        margin=_int(margin, "margin", 0, MAX_MARGIN) if margin is not None else base.margin,
        error=str(error).lower() if error is not None else base.error,
        dark=colours.get("dark", base.dark),
        light=colours.get("light", base.light),
    )


def qr_url(short_url: str) -> str:
    """The URL a QR code of this short link encodes."""
    return f"{short_url}{'&' if '?' in short_url else '?'}{QR_MARKER}"


def render(short_url: str, kind: str, opts: QrOptions) -> bytes:
    """The QR code of `short_url` (marker added) as SVG or PNG bytes."""
    if kind not in FORMATS:
        raise InvalidField(f"format must be one of {', '.join(FORMATS)}", "format")
    code = segno.make(qr_url(short_url), error=opts.error, boost_error=False)
    out = io.BytesIO()
    light = None if opts.light == "transparent" else opts.light
    code.save(out, kind=kind, scale=opts.scale, border=opts.margin, dark=opts.dark, light=light)
    return out.getvalue()


CONTENT_TYPES: Final = {"svg": "image/svg+xml", "png": "image/png"}
