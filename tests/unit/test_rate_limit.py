"""TokenBucket: passes the rate and its burst, drops the excess, never goes negative."""

from __future__ import annotations

import pytest

from tunnel.policy.rate_limit import MIN_BURST_BYTES, TokenBucket


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10_000, burst=3000, now=0.0)
    assert [bucket.allow(1000, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(1000, 0.05)  # 500 bytes refilled
    assert bucket.allow(1000, 0.1)  # 1000 bytes refilled
    assert (bucket.passed, bucket.dropped) == (4, 2)


def test_long_run_rate_is_the_configured_one() -> None:
    bucket = TokenBucket.from_mbps(8.0)  # 1 MB/s
    passed = sum(1000 for i in range(20_000) if bucket.allow(1000, i * 0.0001))  # 2 s offered 10x
    assert 1_950_000 <= passed <= 2_000_000 + bucket.burst


def test_refill_caps_at_burst_and_ignores_backwards_clock() -> None:
    bucket = TokenBucket(rate=1000, burst=2000, now=10.0)
    assert bucket.allow(2000, 10.0)
    assert not bucket.allow(1, 5.0)  # clock went backwards: no tokens appear
    assert bucket.allow(2000, 1000.0)
    assert not bucket.allow(1, 1000.0)


def test_default_burst_lets_full_packets_through_at_tiny_rates() -> None:
    bucket = TokenBucket.from_mbps(0.001)
    assert bucket.burst == MIN_BURST_BYTES
    assert bucket.allow(1500, 0.0)


@pytest.mark.parametrize("rate", [0, -1.0])
def test_rejects_nonpositive_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(rate)
