"""CoDel (RFC 8289) for a tunnel connection's datagram queue, deciding at enqueue.

Why the tunnel needs it: the packets a tunnel connection takes wait in aioquic's datagram queue
until the outer congestion window and pacer let them out. An inner TCP flow (Cubic, Reno)
fills whatever queue it finds, so this one filled to its cap (256 datagrams): measured, 226
pending datagrams — about 125 ms at 20 Mbit/s — on the concentrator beside the full access
queue, the loaded RTT through the tunnel 184 ms where plain TCP and WireGuard saw 118 ms
(README "Latency under load"). That queue is ours, not the protocol's: a tunnel should delay
an inner flow no more than the access does.

RFC 8289 drops at dequeue, when a packet's sojourn time is known. We decide when a packet
arrives instead, from the sojourn time of the packet at the head of the queue (how long the
oldest waiting one has waited: the queue's delay now), for two reasons: aioquic dequeues
inside its packet builder, and in session mode a packet dropped after it got its Packet Tag
would leave a gap the peer's reorder buffer waits on for its whole timeout
(-tunnel-session-00 §5), where a packet refused before tagging leaves none
(tunnel/session/multipath.py consumes a tag only for an accepted packet). The control law,
the interval and the target are RFC 8289's (§4.2-§4.4, §5.5); what changes is only which
packet is dropped: the arriving one rather than the head, so the inner sender learns of the
drop one queue delay later (bounded by the target once CoDel is in control).
"""

from __future__ import annotations

import math
from typing import Final

DEFAULT_INTERVAL: Final = 0.1
"""RFC 8289 §4.3: 100 ms, "a worst-case RTT through the bottleneck" for terrestrial paths."""

DEFAULT_TARGET: Final = 0.005
"""RFC 8289 §4.4: 5 ms, 5-10 % of the interval."""

INTERVAL_PER_RTT: Final = 2.0
"""The interval follows the outer path: at least this many times its minimum RTT (fit_rtt)."""

TARGET_FRACTION: Final = 0.05
"""RFC 8289 §4.4: the target is 5-10 % of the interval; the low end, as its 5 ms of 100 ms."""

_COUNT_MEMORY: Final = 16
"""RFC 8289 §5.5 (the reference pseudocode): re-entering the dropping state within 16
intervals of the last drop starts from the previous drop rate, not from 1."""


class CoDel:
    """The CoDel state machine of one queue (RFC 8289 §5), fed the queue's delay at each
    arrival: `should_drop(delay, backlog, now)`.

    `backlog` is how many packets wait: with at most one there is nothing to drain (RFC 8289
    §5.4 keeps one MTU: "if there is less than an MTU's worth of data in the queue, don't
    drop"), whatever that one has waited.
    """

    def __init__(self, target: float = DEFAULT_TARGET, interval: float = DEFAULT_INTERVAL) -> None:
        if not 0 < target < interval:
            raise ValueError(
                f"CoDel needs 0 < target < interval, got target {target} s, interval {interval} s"
            )
        self.target = self.base_target = target
        self.interval = self.base_interval = interval
        self.dropping = False
        self.drops = 0
        self._first_above: float | None = None  # when the delay may be called persistent
        self._drop_next = 0.0
        self._count = 0
        self._last_count = 0

    def fit_rtt(self, min_rtt: float | None) -> None:
        """Scale the interval and target to the outer path's minimum RTT (None: not measured).

        RFC 8289 §4.3 sets the interval to "a worst-case RTT through the bottleneck" and its
        100 ms assumes terrestrial paths. Every inner flow through this queue crosses the outer
        path, so its RTT is at least that path's minimum, plus the rest of its way: with a
        fixed 100 ms the queue called a 100 ms inner flow's own window of data "persistent"
        and halved a 5 s inner Cubic flow's goodput (README "Latency under load"). The interval
        is INTERVAL_PER_RTT times the outer minimum RTT (the rest of the way as long again),
        never below the configured one; the target keeps its share of it (§4.4)."""
        if min_rtt is None:
            return
        interval = INTERVAL_PER_RTT * min_rtt
        if interval <= self.base_interval:
            self.interval, self.target = self.base_interval, self.base_target
        elif interval != self.interval:
            self.interval = interval
            self.target = max(self.base_target, TARGET_FRACTION * interval)

    def should_drop(self, delay: float, backlog: int, now: float) -> bool:
        """Whether to drop the packet arriving at `now` to a queue whose oldest packet has
        waited `delay` seconds, `backlog` packets waiting."""
        persistent = self._persistent(delay, backlog, now)
        if self.dropping:
            if not persistent:
                self.dropping = False  # §5.6: the delay fell below the target
                return False
            if now < self._drop_next:
                return False
            self._count += 1
            self._drop_next = self._control_law(self._drop_next)
            return self._drop()
        if not persistent:
            return False
        # §5.5: enter the dropping state; a recent episode's rate is the starting point
        self.dropping = True
        delta = self._count - self._last_count
        recent = now - self._drop_next < _COUNT_MEMORY * self.interval
        self._count = delta if delta > 1 and recent else 1
        self._last_count = self._count
        self._drop_next = self._control_law(now)
        return self._drop()

    def _persistent(self, delay: float, backlog: int, now: float) -> bool:
        # §5.4: the delay must stay above the target for a whole interval
        if delay < self.target or backlog <= 1:
            self._first_above = None
            return False
        if self._first_above is None:
            self._first_above = now + self.interval
            return False
        return now >= self._first_above

    def _control_law(self, start: float) -> float:
        # §5.5: drops spaced interval / sqrt(count): the rate grows until the delay falls
        return start + self.interval / math.sqrt(self._count)

    def _drop(self) -> bool:
        self.drops += 1
        return True


__all__ = ["DEFAULT_INTERVAL", "DEFAULT_TARGET", "INTERVAL_PER_RTT", "TARGET_FRACTION", "CoDel"]
