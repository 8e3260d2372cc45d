"""geo/language.py: Accept-Language -> primary language subtag."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo import language
from geo.language import LANGUAGE_CACHE_SIZE, MAX_HEADER_CHARS, MAX_RANGES, primary_language


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


def test_a_failure_inside_is_counted_and_answers_none() -> None:
    errors = language.errors
    # raw header bytes instead of text: a caller's bug, which must not reach the flusher
    assert primary_language(b"en-US,en") is None  # type: ignore[arg-type]
    assert language.errors == errors + 1


@given(st.text(max_size=300))
def test_any_header_gives_the_subtag_that_starts_one_of_its_ranges(header: str) -> None:
    errors = language.errors
    result = primary_language(header)
    if result is not None:
        assert 2 <= len(result) <= 3 and result.isascii() and result.isalpha()
        assert result.islower()
        ranges = header[:MAX_HEADER_CHARS].split(",")[:MAX_RANGES]
        assert any(r.strip().lower().replace("_", "-").split("-")[0] == result for r in ranges)
    assert language.errors == errors


_TAGS = st.sampled_from(["en", "en-US", "de-DE", "fr", "pt_BR", "zh-Hant-TW", "fil", "*", "x-pig"])
_QS = st.sampled_from([None, "1", "1.0", "0.9", "0.85", "0.5", "0.1", "0", "0.000", "2", "abc"])


@given(st.lists(st.tuples(_TAGS, _QS, st.sampled_from(["", " "])), max_size=8))
def test_a_built_header_gives_the_first_range_of_the_highest_weight(
    ranges: list[tuple[str, str | None, str]],
) -> None:
    """The expected answer is computed from the parts, not from the header's text."""
    errors = language.errors
    header = ",".join(f"{pad}{tag}{'' if q is None else ';q=' + q}" for tag, q, pad in ranges)
    candidates = []
    for index, (tag, q, _pad) in enumerate(ranges):
        weight = 1.0 if q is None else float(q) if q not in ("2", "abc") else 0.0
        primary = tag.replace("_", "-").split("-")[0]
        if weight > 0 and primary.isalpha() and 2 <= len(primary) <= 3:
            candidates.append((-weight, index, primary.lower()))
    expected = min(candidates)[2] if candidates else None
    assert primary_language(header) == expected
    assert language.errors == errors
