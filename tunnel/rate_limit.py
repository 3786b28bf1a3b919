"""A token bucket: the per-client rate limit of the concentrator.

The tunnel draft's security considerations ask the concentrator to protect itself and its
other clients from one client's traffic; a per-client byte rate is the simplest such limit.
A packet that finds too few tokens is dropped (never queued: a queue would only add latency
to a flow that already exceeds its share, and TCP reacts to the drop). Sans-I/O: `now` comes in.
"""

from __future__ import annotations

from typing import Final

DEFAULT_BURST_SECONDS: Final = 0.05
"""Bucket depth in seconds of the rate: long enough that a TCP window's burst at the rate
passes, short enough that a client cannot save up a large surge."""
MIN_BURST_BYTES: Final = 3 * 1500
"""A few full-size packets pass even at tiny rates, so a limit never blocks every packet."""


class TokenBucket:
    """`rate` bytes per second with a depth of `burst` bytes; starts full."""

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        if not rate > 0:
            raise ValueError(f"a token bucket rate must be > 0 bytes/s, got {rate}")
        depth = max(rate * DEFAULT_BURST_SECONDS, MIN_BURST_BYTES) if burst is None else burst
        if not depth > 0:
            raise ValueError(f"a token bucket burst must be > 0 bytes, got {burst}")
        self.rate: Final = float(rate)
        self.burst: Final = float(depth)
        self._tokens = self.burst
        self._updated = now
        self.passed = 0
        self.dropped = 0

    @classmethod
    def from_mbps(cls, mbps: float, now: float = 0.0) -> TokenBucket:
        """A bucket for `mbps` megabits per second (10^6 bit/s)."""
        return cls(mbps * 1_000_000 / 8, now=now)

    @property
    def tokens(self) -> float:
        """Bytes that may pass now (as of the last call)."""
        return self._tokens

    def allow(self, size: int, now: float) -> bool:
        """Take `size` bytes if the bucket holds them (counted in `passed`), else count a drop.
        A clock that goes backwards adds no tokens."""
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        if size <= self._tokens:
            self._tokens -= size
            self.passed += 1
            return True
        self.dropped += 1
        return False
