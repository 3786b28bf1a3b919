"""How fast a path delivers: the multipath scheduler's rate for a loss-based controller.

The earliest-arrival scheduler (tunnel/session/scheduler.py arrival_estimate) asks each path how
fast its backlog drains. For a window-based controller (Reno, Cubic) the answer used to be one
congestion window per smoothed RTT (RFC 9002 §7.7), which is the drain rate only while the
window is what holds the sender back. In session mode it rarely is: aioquic's Reno and Cubic
keep growing the window while the scheduler, not the window, limits what a path is given, and
the path's own bottleneck queue sets the pace. Measured on the aggregation experiment (5G 100
Mbit/s, 2,000-packet queue, Reno): a window of 2,300-3,000 packets over a 60-130 ms smoothed RTT
ranked 5G at 250-480 Mbit/s while 600-1,200 packets were in flight, and the scheduler, which
counts a path's queue as its backlog beyond rate x min RTT, saw no queue on 5G at all while its
RTT was three to six times its minimum. WiFi, ranked by what it really carried, got less than
it could take: 24-32 of its 50 Mbit/s with Reno on both accesses, and with BBR on WiFi, whose
pacing follows what it is offered, its estimate fell round after round to 2-7 Mbit/s in some
runs (results/README.md, "The scheduler's rate of a loss-based path").

What a path delivers is what the ACKs say: bytes newly acknowledged over an interval of at
least one smoothed RTT (shorter ones measure ACK bursts, draft-cheng-iccrg-delivery-rate-
estimation §3.3). Under-used, a path delivers what it was offered, less than it could; so the
estimate is the highest such sample of the last WINDOW_RTTS round trips (BBR's BtlBw filter,
§4.1.1.3, by time), and the scheduler gives a path at least what it delivered at its best in
that time. The sender of an under-used loss-based path sends whatever it is given at once, so
what it delivers then grows with what it is offered: unlike a pacing-limited BBR, it cannot
ratchet itself down.

Sans-I/O: the connection reports each ACK's newly delivered bytes with `now`.
"""

from __future__ import annotations

from collections import deque
from typing import Final

WINDOW_RTTS: Final = 10
"""Round trips a delivery-rate sample is remembered for (BBR's BtlBw filter length)."""
MARK_SPACING: Final = 0.001
"""Seconds between the delivery marks kept: an ACK within this of the last mark moves it (the
marks of one RTT stay bounded at ~1,000 whatever the ACK rate)."""


class DeliveryRate:
    """The highest delivery rate (bytes/s) measured over at least one smoothed RTT among the
    intervals that ended in the last WINDOW_RTTS smoothed RTTs; None before the first."""

    def __init__(self) -> None:
        self.delivered = 0
        """Bytes newly acknowledged since the connection began."""
        self._marks: deque[tuple[float, int]] = deque()  # (time, delivered), oldest first
        self._best: deque[tuple[float, float]] = deque()  # (time, rate), rates decreasing

    @property
    def rate(self) -> float | None:
        return self._best[0][1] if self._best else None

    def on_delivered(self, now: float, size: int, srtt: float) -> None:
        """`size` bytes were newly acknowledged at `now`, with the path's smoothed RTT `srtt`."""
        if size <= 0 or srtt <= 0:
            return
        self.delivered += size
        marks = self._marks
        if marks and now - marks[-1][0] < MARK_SPACING:
            marks[-1] = (marks[-1][0], self.delivered)
        else:
            marks.append((now, self.delivered))
        # the newest mark at least one RTT old starts the interval
        while len(marks) > 1 and marks[1][0] <= now - srtt:
            marks.popleft()
        start, delivered = marks[0]
        elapsed = now - start
        if elapsed >= srtt:
            self._sample(now, (self.delivered - delivered) / elapsed)
        horizon = now - WINDOW_RTTS * srtt
        best = self._best
        while best and best[0][0] < horizon:
            best.popleft()

    def _sample(self, now: float, rate: float) -> None:
        best = self._best
        while best and best[-1][1] <= rate:
            best.pop()  # never the maximum again: the new sample is as high and outlives it
        best.append((now, rate))
