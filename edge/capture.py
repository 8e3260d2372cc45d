"""The captured click: the contract between the edge that answers and the pipeline that
records.

Rules:
- The redirect path appends one RawClick per served redirect and does nothing else for
  it: no parsing, lookups or I/O. The raw header bytes travel as the parser handed them
  over; the pipeline (edge/clicks.py) decodes, enriches and writes them in batches.
- A RawClick is (unix time s, link id, domain id, client ip, user-agent bytes, referer
  bytes, accept-language bytes, flags); the flags are the bits below.
"""

from __future__ import annotations

from typing import Final

FLAG_HEAD: Final = 1  # a HEAD request: a probe, never a person navigating
FLAG_PREFETCH: Final = 2  # Sec-Purpose/Purpose: prefetch or prerender
FLAG_DNT: Final = 4  # DNT: 1 (counted without a visitor id or geo below country)
FLAG_GPC: Final = 8  # Sec-GPC: 1 (the same)

RawClick = tuple[float, int, int, str, bytes, bytes, bytes, int]
