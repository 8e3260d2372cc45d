"""edge/limits.py: the collector's budgets never lease past a limit, whatever the order of
grants, writes and lost workers; a worker asks for an exhausted link at most once per
EMPTY_RETRY_S, not once per click."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import limits
from edge.limits import Budgets, Leases

ops = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(1, 4), st.integers(1, 500)),
        st.tuples(st.just("spend"), st.integers(1, 4), st.integers(1, 200)),
        st.tuples(st.just("lost"), st.integers(1, 4), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), ops)
def test_spent_plus_leased_never_passes_the_limit(limit: int, steps: list[Any]) -> None:
    b = Budgets()
    b.set_limits({7: limit}, {})
    for op, epoch, n in steps:
        if op == "grant":
            b.grant(epoch, {7: n}, workers=4)
        elif op == "spend":  # the epoch spent some of its lease and it was written
            held = b.outstanding.get(epoch, {}).get(7, 0)
            if held:
                b.written(epoch, {7: min(n, held)})
        else:
            b.lost(epoch)
        leased = sum(h.get(7, 0) for h in b.outstanding.values())
        assert b.spent.get(7, 0) + leased <= limit
        assert b.available(7) >= 0


def test_after_a_restart_what_the_workers_hold_is_leased() -> None:
    """A new collector takes each worker's HELLO as outstanding and leases only the rest."""
    b = Budgets()
    b.set_limits({7: 100}, {7: 30})
    b.hello(1, {7: 40})
    b.hello(2, {7: 20})
    assert b.available(7) == 10
    assert b.grant(3, {7: 100}, workers=3) == {7: 1}  # a sixth of what is left, at least 1
    b.hello(4, {7: 50})  # more than is left: the overshoot docs/api.md states
    assert b.available(7) == 0 and b.grant(3, {7: 100}, workers=4) == {7: 0}


def test_a_link_without_a_limit_gets_nothing() -> None:
    b = Budgets()
    assert b.grant(1, {9: 100}, workers=2) == {9: 0}


def test_an_exhausted_link_is_asked_for_once_per_retry_not_per_click(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "EMPTY_RETRY_S", 0.2)
    asks: list[dict[int, int]] = []
    leases = Leases(asks.append)
    assert leases.take(5) is False and asks == [{5: limits.LEASE_CLICKS}]
    leases.granted({5: 0})  # the collector has nothing left
    assert leases.exhausted(5)
    for _ in range(1000):
        assert leases.take(5) is False
    assert len(asks) == 1
    time.sleep(0.25)
    leases.take(5)
    assert len(asks) == 2  # asked again after the retry time
    leases.granted({5: 0})
    leases.ask([5], force=True)  # a catalog change: the limit may have been raised
    assert len(asks) == 3
    leases.granted({5: 2})
    assert not leases.exhausted(5)
    assert [leases.take(5), leases.take(5)] == [True, True]
    assert leases.held() == {5: 2}  # spent, not shipped yet
