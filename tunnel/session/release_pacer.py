"""Pacing of what the reorder buffer releases (session mode's receiver side).

A gap in the Packet Tags (session draft §4.1.1) holds every packet behind it until the missing
one arrives or the buffer gives up on it — a round trip or more when a re-send is waited for
(ReorderBuffer.timeout_from_rtts). Then the whole run leaves at once: at 20 Mbit/s and 100 ms
RTT about 250 datagrams written to the TUN within a millisecond. Routers do not do that, and the
tunnelled application pays for it: the goodput experiment found a UDP receiver's socket (the
default 208 KiB buffer holds about 90 such datagrams) dropping 3,644 of 48,551 datagrams at
0.5 % loss with loss hiding, 80 % of the flow's loss (results/README.md).

`ReleasePacer` spreads such a run: a token bucket of RELEASE_BURST packets refilled at
RELEASE_SPEEDUP times the rate packets arrive at. A flow that arrives in order never waits (the
bucket stays full); a run released at once leaves its first RELEASE_BURST packets at once and
the rest at RELEASE_SPEEDUP times the flow's own rate, so a backlog of 100 ms drains in 25 ms.
Order is kept: while anything waits, what the buffer releases next queues behind it.
`[limits] release_pacing = false` turns it off (everything released goes at once), so the pacer
itself can be measured against its absence.
Sans-I/O: `now` comes from the caller, who calls `poll` at `next_deadline`.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

T = TypeVar("T")

RELEASE_BURST: Final = 32
"""Packets released back to back at most (the bucket's depth): well under what a default UDP
socket buffer holds (about 90 datagrams of 1,000 bytes), above a QUIC ACK's worth of a TCP
flow's segments."""
RELEASE_SPEEDUP: Final = 4.0
"""A run drains at this many times the rate packets arrive at: the backlog of a hold of T
seconds is gone within T / (RELEASE_SPEEDUP - 1), while the receiver sees at most this times
the flow's rate."""
RATE_WINDOW: Final = 0.05
"""Seconds over which the arrival rate is counted: the rate in force is the last full
window's."""
RELEASE_BATCH: Final = 8
"""Packets a waiting run leaves in at least (unless fewer wait): one timer per packet would cost
the program a wake-up every 0.1 ms of a drain at 10,000 packets a second."""
MIN_RATE: Final = 1000.0
"""Packets per second the bucket refills at whatever the arrivals: a sparse flow's run (its
rate not yet known, or low) does not wait more than RELEASE_BURST / MIN_RATE per burst."""


class ReleasePacer(Generic[T]):
    """Token-bucket pacing of released packets (module docstring).

    :param enabled: False: every packet offered goes at once (nothing waits).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._queue: deque[T] = deque()
        self._tokens = float(RELEASE_BURST)
        self._refilled_at: float | None = None
        self._window_start: float | None = None
        self._window_count = 0
        self._rate = MIN_RATE  # packets per second arriving, from the last full window
        self.paced = 0
        """Packets that waited in the pacer (a count for status and tests)."""

    def __len__(self) -> int:
        """Packets waiting."""
        return len(self._queue)

    def arrived(self, now: float) -> None:
        """Count one packet arriving (whatever the buffer does with it): the flow's rate."""
        start = self._window_start
        if start is None or now - start >= RATE_WINDOW:
            if start is not None:
                elapsed = now - start
                # a window followed by silence says less than its count: spread over the gap
                self._rate = max(MIN_RATE, self._window_count / max(elapsed, RATE_WINDOW))
            self._window_start = now
            self._window_count = 0
        self._window_count += 1

    def release(self, packets: list[T], now: float) -> list[T]:
        """Offer what the reorder buffer released, in order; returns what may go now (the rest
        waits for `poll`). `packets` is handed back, not copied, when all may go."""
        queue = self._queue
        if not queue:
            if not packets or not self.enabled:
                return packets
            self._refill(now)
            if len(packets) <= self._tokens:  # the common case: nothing waits
                self._tokens -= len(packets)
                return packets
        queue.extend(packets)
        out = self.poll(now)
        self.paced += min(len(packets), len(queue))  # those of these that must wait
        return out

    def poll(self, now: float) -> list[T]:
        """The waiting packets whose turn has come."""
        queue = self._queue
        if not queue:
            return []
        self._refill(now)
        # (a deadline computed for n tokens may find n - 1e-12 of them: no empty wake-up)
        count = min(len(queue), int(self._tokens + 1e-9))
        self._tokens -= count
        return [queue.popleft() for _ in range(count)]

    def next_deadline(self) -> float | None:
        """When the next waiting packet may go (None: none waits)."""
        if not self._queue or self._refilled_at is None:
            return None
        missing = max(0.0, min(len(self._queue), RELEASE_BATCH) - self._tokens)
        return self._refilled_at + missing / (RELEASE_SPEEDUP * self._rate)

    def flush(self) -> list[T]:
        """Everything waiting, at once (the session ends)."""
        out = list(self._queue)
        self._queue.clear()
        return out

    def _refill(self, now: float) -> None:
        last = self._refilled_at
        if last is not None and now > last:
            refill = (now - last) * RELEASE_SPEEDUP * self._rate
            self._tokens = min(float(RELEASE_BURST), self._tokens + refill)
        self._refilled_at = now if last is None else max(last, now)


__all__ = [
    "MIN_RATE",
    "RATE_WINDOW",
    "RELEASE_BATCH",
    "RELEASE_BURST",
    "RELEASE_SPEEDUP",
    "ReleasePacer",
]
