"""tunnel.policy.log_budget: log lines a peer can cause are bounded per key, and counted."""

from __future__ import annotations

import pytest

from tunnel.policy.log_budget import LogBudget


def test_a_flood_is_cut_to_the_burst_then_the_rate_and_the_count_is_kept() -> None:
    budget = LogBudget(per_second=5.0, burst=20)
    allowed = [budget.allow("mallory", now=0.0) for _ in range(10_000)]
    assert allowed[:20] == [0] * 20
    assert allowed[20:] == [None] * 9_980
    assert budget.suppressed_total == 9_980
    # a second later: 5 more lines; the first says how many were suppressed before it
    assert budget.allow("mallory", now=1.0) == 9_980
    assert [budget.allow("mallory", now=1.0) for _ in range(5)] == [0, 0, 0, 0, None]


def test_keys_are_independent_and_the_table_is_bounded() -> None:
    budget = LogBudget(per_second=1.0, burst=1, max_keys=3)
    assert budget.allow("mallory", 0.0) == 0
    assert budget.allow("mallory", 0.0) is None
    assert budget.allow("alice", 0.0) == 0  # another client is not affected
    for key in ("k1", "k2", "k3"):
        budget.allow(key, 0.0)
    assert len(budget._buckets) == 3  # least recently used keys forgotten


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LogBudget(per_second=0)
