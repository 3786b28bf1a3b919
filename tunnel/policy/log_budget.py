"""A budget of log lines per key (e.g. per client), so a peer cannot fill the disk.

Every event a client can cause at will — an Access Report, a refused TCP Connect, a dropped
packet worth a line — would otherwise write one log line each: 9,970 Access Reports in 6 s
wrote 25.5 MB and slowed every other client (README "Security"). Each key gets `burst` lines and
then `per_second` more per second; lines beyond are counted, and the next line that is allowed
says how many were suppressed since, so the log stays truthful about volume. The table of keys
is bounded (least recently used keys are forgotten). Sans-I/O: `now` comes in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

DEFAULT_PER_SECOND: Final = 5.0
DEFAULT_BURST: Final = 20
DEFAULT_MAX_KEYS: Final = 4096


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0


class LogBudget:
    """`allow(key, now)` -> None (suppress the line) or the count of lines suppressed before
    this one (0 normally): add it to the line when positive."""

    def __init__(
        self,
        per_second: float = DEFAULT_PER_SECOND,
        burst: int = DEFAULT_BURST,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if per_second <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a log budget needs per_second > 0, burst >= 1 and max_keys >= 1")
        self.per_second = per_second
        self.burst = burst
        self.max_keys = max_keys
        self.suppressed_total = 0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, key: str, now: float) -> int | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            if now > bucket.updated:
                bucket.tokens = min(
                    float(self.burst), bucket.tokens + (now - bucket.updated) * self.per_second
                )
                bucket.updated = now
        if bucket.tokens < 1:
            bucket.suppressed += 1
            self.suppressed_total += 1
            return None
        bucket.tokens -= 1
        suppressed, bucket.suppressed = bucket.suppressed, 0
        return suppressed

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


__all__ = ["LogBudget"]
