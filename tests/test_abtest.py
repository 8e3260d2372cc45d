"""admin/abtest.py: Wilson intervals contain the observed rate and narrow with more
visitors, the z-test is symmetric and agrees with its p-value, the sample size is what
the power calculation says, and a winner needs significance and enough visitors."""

from __future__ import annotations

import math

from hypothesis import assume, given
from hypothesis import strategies as st

from admin import abtest

COUNTS = st.integers(1, 100_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@given(COUNTS)
def test_wilson_contains_the_rate(counts: tuple[int, int]) -> None:
    c, n = counts
    interval = abtest.wilson(c, n)
    assert interval is not None
    lo, hi = interval
    assert 0.0 <= lo <= c / n <= hi <= 1.0
    assert hi - lo > 0


@given(COUNTS)
def test_wilson_narrows_with_more_of_the_same(counts: tuple[int, int]) -> None:
    c, n = counts
    small = abtest.wilson(c, n)
    big = abtest.wilson(c * 4, n * 4)
    assert small is not None and big is not None
    assert big[1] - big[0] < small[1] - small[0]


@given(COUNTS, COUNTS)
def test_the_z_test_is_symmetric(a: tuple[int, int], b: tuple[int, int]) -> None:
    z1, p1 = abtest.z_test(*a, *b)
    z2, p2 = abtest.z_test(*b, *a)
    assert math.isclose(z1, -z2, abs_tol=1e-12)
    assert math.isclose(p1, p2, rel_tol=1e-12, abs_tol=1e-300)
    assert 0.0 <= p1 <= 1.0
    assert (p1 < 0.05) == (abs(z1) > 1.959963984540054) or math.isclose(abs(z1), 1.96, abs_tol=1e-6)


def test_known_values() -> None:
    # 200/1000 vs 250/1000: z = -2.68 (pooled), p = 0.0074
    z, p = abtest.z_test(200, 1000, 250, 1000)
    assert round(z, 2) == -2.68 and round(p, 4) == 0.0074
    lo, hi = abtest.wilson(200, 1000) or (0, 0)
    assert (round(lo, 4), round(hi, 4)) == (0.1764, 0.2259)
    # 10% vs 12%, alpha 0.05, power 0.8: 3,841 per variant (Fleiss, no continuity correction)
    assert abtest.sample_size(0.10, 0.12) == 3841
    assert abtest.sample_size(0.1, 0.1) is None


@given(st.floats(0.01, 0.9), st.floats(0.01, 0.09))
def test_the_sample_size_gives_the_power_it_promises(p1: float, delta: float) -> None:
    p2 = p1 + delta
    assume(p2 < 0.99)
    n = abtest.sample_size(p1, p2)
    assert n is not None and n > 0
    # at n per variant, the expected z exceeds z_alpha/2 + z_beta's share: power >= 80%
    se0 = math.sqrt(2 * ((p1 + p2) / 2) * (1 - (p1 + p2) / 2) / n)
    se1 = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
    power = abtest._NORMAL.cdf((abs(p2 - p1) - 1.959963984540054 * se0) / se1)
    assert power >= 0.8 - 1e-6


def test_a_winner_needs_significance_and_enough_visitors() -> None:
    clear = abtest.decide([abtest.Arm("a", 5000, 500), abtest.Arm("b", 5000, 650)])
    assert clear["winner"] == "b" and clear["reason"] is None
    close = abtest.decide([abtest.Arm("a", 1000, 100), abtest.Arm("b", 1000, 110)])
    assert close["winner"] is None and "more visitors per variant" in close["reason"]
    assert close["visitors_needed_per_variant"] > 1000
    few = abtest.decide([abtest.Arm("a", 60, 0), abtest.Arm("b", 60, 30)])
    assert few["winner"] is None and "too few" in few["reason"]
    none = abtest.decide([abtest.Arm("a", 50, 0), abtest.Arm("b", 50, 0)])
    assert none["winner"] is None and none["reason"] == "no conversions yet"
    # three variants: Bonferroni, the leader against both others
    three = abtest.decide(
        [abtest.Arm("a", 5000, 500), abtest.Arm("b", 5000, 650), abtest.Arm("c", 5000, 640)]
    )
    assert three["alpha_per_comparison"] == 0.025 and three["winner"] is None
