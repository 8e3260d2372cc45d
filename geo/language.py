# geo/language: an Accept-Language header -> the visitor's preferred language.
#
# Rules of this module:
# - Pure and total: str in, str | None out; never raises. Cached with a bounded
#   functools.lru_cache (thread-safe): browsers send a few hundred distinct headers.
#   A bug that raises inside answers None, is logged and counted in `errors`, so a test
#   (and an operator) can tell a bug from a header that names no language.
# - The answer is the primary subtag (RFC 5646), lowercased, of the range with the
#   highest q-value; the first one wins a tie (RFC 9110 §12.4.2: equal weights keep the
#   client's order). "en-US,en;q=0.9,fr;q=0.8" -> "en".
# - Ranges that cannot name a language are skipped: "*", private use and grandfathered
#   tags ("x-...", "i-..."), primary subtags that are not 2-3 ASCII letters, q=0 ("not
#   acceptable"), and a q that is not a number in [0, 1] (lenient: "0.85000" is read as
#   0.85). Nothing left -> None.
# - A hostile header costs bounded time: only the first MAX_HEADER_CHARS characters and
#   MAX_RANGES ranges are read.
from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Final

logger = logging.getLogger(__name__)

# Distinct Accept-Language values of real browsers: a few hundred; 4096 covers them all.
LANGUAGE_CACHE_SIZE: Final = 4_096

# Browsers send well under 200 characters (Chrome caps its list; Firefox sends ~5 ranges).
MAX_HEADER_CHARS: Final = 1_024
MAX_RANGES: Final = 32

# Parses that raised (a bug): each answered None. Only ever grows.
errors = 0

_QVALUE = re.compile(r"[01](?:\.[0-9]*)?\Z")


@lru_cache(maxsize=LANGUAGE_CACHE_SIZE)
def primary_language(accept_language: str) -> str | None:
    """The preferred language's primary subtag ("en"), or None; never raises."""
    try:
        return _primary(accept_language)
    except Exception:  # a bug here must not stop the click flusher
        global errors
        errors += 1
        logger.exception("accept-language parse failed")
        return None


def _primary(header: str | None) -> str | None:
    if not header:
        return None
    best: str | None = None
    best_q = 0.0
    for item in header[:MAX_HEADER_CHARS].split(",", MAX_RANGES)[:MAX_RANGES]:
        tag, _, params = item.partition(";")
        q = _weight(params)
        if q is None or q <= best_q:  # not acceptable, invalid, or not better
            continue
        primary = tag.strip().replace("_", "-").split("-", 1)[0]
        if 2 <= len(primary) <= 3 and primary.isascii() and primary.isalpha():
            best, best_q = primary.lower(), q
    return best


def _weight(params: str) -> float | None:
    """The q parameter of one range (1.0 when absent); None when it is invalid."""
    q = 1.0
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() != "q":
            continue
        value = value.strip()
        if not _QVALUE.match(value):
            return None
        q = float(value)
        if q > 1.0:
            return None
    return q
