"""geo/language.py: Accept-Language -> primary language subtag."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.language import LANGUAGE_CACHE_SIZE, MAX_RANGES, primary_language


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # what browsers send
        ("en-US,en;q=0.9,fr;q=0.8", "en"),
        ("de-DE,de;q=0.9,en-US;q=0.8,en;q=0.7", "de"),
        ("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", "fr"),
        ("ja", "ja"),
        ("zh-Hant-TW,zh-TW;q=0.9", "zh"),
        ("pt-BR", "pt"),
        ("fil-PH,fil;q=0.9", "fil"),
        # q-values decide, not order
        ("fr;q=0.5, de", "de"),
        ("en;q=0.1, es;q=0.9, it;q=0.5", "es"),
        ("en;q=0.8,de;q=0.8", "en"),  # a tie keeps the first
        ("en;q=0, fr;q=0.1", "fr"),  # q=0 means not acceptable
        ("en;q=1.000", "en"),
        ("en;Q=0.2, fr;q=0.3", "fr"),
        ("en;q=0.85000,fr;q=0.8", "en"),  # lenient about extra digits
        # normalisation
        ("EN-us", "en"),
        ("de_DE", "de"),
        ("  es  ;  q=0.7 ", "es"),
        # ranges that name no language are skipped
        ("*", None),
        ("*;q=1, nl;q=0.5", "nl"),
        ("x-pig-latin, i-klingon", None),
        ("en;q=0", None),
        ("en;q=2, fr;q=0.3", "fr"),  # q above 1 is invalid: that range is skipped
        ("en;q=abc, fr;q=0.3", "fr"),
        ("e1;q=1, sv;q=0.2", "sv"),
        ("english", None),
        ("", None),
        (",,,", None),
        ("日本語, ko", "ko"),
    ],
)
def test_primary_language(header: str, expected: str | None) -> None:
    assert primary_language(header) == expected


def test_only_the_first_ranges_are_read() -> None:
    header = ",".join(["*"] * MAX_RANGES + ["en"])
    assert primary_language(header) is None
    assert primary_language(",".join(["*"] * (MAX_RANGES - 1) + ["en"])) == "en"


def test_results_are_cached_with_a_bound() -> None:
    primary_language.cache_clear()
    primary_language("en-US,en;q=0.9")
    primary_language("en-US,en;q=0.9")
    info = primary_language.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, LANGUAGE_CACHE_SIZE)


@given(st.text(max_size=300))
def test_any_header_gives_a_short_lowercase_subtag_or_none(header: str) -> None:
    result = primary_language(header)
    assert result is None or (
        2 <= len(result) <= 3 and result.isascii() and result.isalpha() and result.islower()
    )
