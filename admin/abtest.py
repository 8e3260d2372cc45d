"""A/B statistics: conversion rates with their intervals, the test that names a winner, and
the sample size it would need. Pure functions (no I/O); admin/conversions.py feeds them.

The rule (docs/api.md, A/B tests):
- A variant's rate is converted visitors / unique human visitors (bots never count: their
  clicks, visitors and conversions are left out), with a Wilson score 95% interval.
- A winner needs (1) every variant to have at least MIN_VISITORS visitors and at least
  MIN_EVENTS conversions and MIN_EVENTS visitors who did not convert (where the normal
  approximation behind the test holds), and (2) the leader (highest rate) to beat every
  other variant in a two-sided two-proportion z-test (pooled standard error) at
  ALPHA / (variants - 1) (Bonferroni: ALPHA overall for 2 variants, shared among the
  leader's comparisons for more).
- Otherwise no winner, and the reason; where more visitors would settle it, how many per
  variant at the current rates: the sample size of that z-test for the leader against the
  runner-up with POWER (80%) at the adjusted alpha (the standard normal-approximation
  formula, Fleiss without continuity correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Final

ALPHA: Final = 0.05
POWER: Final = 0.80
CONFIDENCE: Final = 0.95
MIN_VISITORS: Final = 100
MIN_EVENTS: Final = 5
_NORMAL: Final = NormalDist()
_Z95: Final = _NORMAL.inv_cdf(1 - (1 - CONFIDENCE) / 2)


def wilson(conversions: int, visitors: int, z: float = _Z95) -> tuple[float, float] | None:
    """The Wilson score interval of conversions / visitors (None without visitors)."""
    if visitors <= 0:
        return None
    if not 0 <= conversions <= visitors:
        raise ValueError("conversions must be from 0 to visitors")
    n = float(visitors)
    p = conversions / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # exact at the ends (floating point leaves 1e-17 where 0 or 1 is meant)
    lo = 0.0 if conversions == 0 else max(0.0, centre - half)
    hi = 1.0 if conversions == visitors else min(1.0, centre + half)
    return lo, hi


def z_test(c1: int, n1: int, c2: int, n2: int) -> tuple[float, float]:
    """Two-sided two-proportion z-test with the pooled standard error: (z, p-value). No
    difference to see (no visitors, or every rate 0 or 1 alike) is (0, 1)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    p1, p2 = c1 / n1, c2 / n2
    pooled = (c1 + c2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (p1 - p2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def sample_size(p1: float, p2: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Visitors per variant for the two-sided z-test to find p1 != p2 with `power` at
    `alpha`; None when the rates are equal (no sample is enough)."""
    if p1 == p2:
        return None
    za = _NORMAL.inv_cdf(1 - alpha / 2)
    zb = _NORMAL.inv_cdf(power)
    pbar = (p1 + p2) / 2
    root = za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root * root / ((p1 - p2) ** 2))


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    visitors: int
    conversions: int  # converted visitors (at most `visitors`)


def decide(arms: list[Arm]) -> dict[str, Any]:
    """The verdict of an A/B test: {"winner", "reason", "test", "p_values", ...}."""
    test = {
        "test": "two-sided two-proportion z-test (pooled), Bonferroni-adjusted",
        "alpha": ALPHA,
        "min_visitors": MIN_VISITORS,
        "min_conversions": MIN_EVENTS,
    }
    if len(arms) < 2:
        return {**test, "winner": None, "reason": "an A/B test needs two variants or more"}
    adjusted = ALPHA / (len(arms) - 1)
    ranked = sorted(
        arms, key=lambda a: (-(a.conversions / a.visitors if a.visitors else 0), a.name)
    )
    leader, runner = ranked[0], ranked[1]
    p_values = {}
    for other in ranked[1:]:
        p_values[other.name] = z_test(
            leader.conversions, leader.visitors, other.conversions, other.visitors
        )[1]
    out: dict[str, Any] = {
        **test,
        "alpha_per_comparison": adjusted,
        "leader": leader.name,
        "p_values": {name: round(p, 6) for name, p in p_values.items()},
    }
    empty = [a.name for a in arms if a.visitors == 0]
    if empty:
        return {**out, "winner": None, "reason": f"no visitors yet on {', '.join(empty)}"}
    if sum(a.conversions for a in arms) == 0:
        return {**out, "winner": None, "reason": "no conversions yet"}
    rate_l = leader.conversions / leader.visitors if leader.visitors else 0.0
    rate_r = runner.conversions / runner.visitors if runner.visitors else 0.0
    needed = sample_size(rate_l, rate_r, adjusted)
    fewest = min(a.visitors for a in arms)
    short = [
        a.name
        for a in arms
        if a.visitors < MIN_VISITORS
        or a.conversions < MIN_EVENTS
        or a.visitors - a.conversions < MIN_EVENTS
    ]
    significant = all(p < adjusted for p in p_values.values())
    if significant and not short:
        return {**out, "winner": leader.name, "reason": None}
    if needed is None:
        reason = "no difference between the leading variants' rates yet"
    else:
        more = max(needed - fewest, MIN_VISITORS - fewest, 1)
        reason = (
            f"needs ~{more} more visitors per variant at the current rates (the z-test "
            f"needs ~{needed} per variant for {POWER:.0%} power at alpha {adjusted:g}; "
            f"the rule at least {MIN_VISITORS})"
        )
        out["visitors_needed_per_variant"] = needed
    if significant and short:
        reason = (
            f"the difference is significant but {', '.join(short)} has too few visitors or "
            f"conversions (each variant needs {MIN_VISITORS} visitors and {MIN_EVENTS} "
            "conversions and non-conversions)"
        )
    return {**out, "winner": None, "reason": reason}
