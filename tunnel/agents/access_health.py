"""Is one of the client's access networks usable? Two views, pure logic (issue 4, "Access Reports";
the tunnel draft §6 says when to report an access, not how to tell that it failed):

- `LinkState`: the kernel's view (the interface exists, is up, has carrier, holds the access's
  local address), read from netlink by tunnel/aio/access_monitor.py;
- `LivenessProbe`: a detector of silent failures (link up, nothing gets through), fed with the
  QUIC PINGs the client agent sends on the access's connection and their acknowledgements.

The client agent (tunnel/agents/client.py) combines both: an access is available when its link
is usable (or unknown) and its connection's probe says it is alive.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

DEFAULT_MISSES: Final = 3
RTT_SAMPLES: Final = 8  # PING round trips remembered for the adaptive limit
RTT_MARGIN: Final = 3.0  # a PING unanswered for this many recent round trips is a failure


@dataclass(frozen=True)
class LinkState:
    """The kernel's view of one access network."""

    exists: bool
    up: bool
    carrier: bool
    has_address: bool

    @property
    def usable(self) -> bool:
        return self.exists and self.up and self.carrier and self.has_address

    def reason(self) -> str:
        """Why the access is not usable (for the log), "" when it is."""
        if not self.exists:
            return "interface missing"
        if not self.up:
            return "interface down"
        if not self.carrier:
            return "no carrier"
        if not self.has_address:
            return "local address missing"
        return ""


class LivenessProbe:
    """Silent-failure detector for one connection (pure: the caller passes `now`).

    The caller sends a QUIC PING with `next_uid()` whenever `due(now)`, reports it with
    `sent(uid, now)` and every PingAcknowledged with `acked(uid, now)`. `alive(now)` is False once
    the oldest unanswered PING has waited `limit()`: `misses` intervals, or RTT_MARGIN times
    the largest of the last RTT_SAMPLES PING round trips when that is longer. The second term
    keeps a loaded path from looking dead: under a bulk transfer the PING's acknowledgement
    waits behind the peer's send queue (measured here: over 0.6 s at 140 Mbit/s with 4 MB socket
    buffers), and that is queueing, not a failure. An answer to any PING clears it and every
    earlier one (acknowledgements prove the path works, whichever PING they answer).

    Every verdict changes at a time the probe can name (`next_ping_at`, `silent_since`), so the
    agent sets its timer to it instead of polling.
    """

    def __init__(self, interval: float, misses: int = DEFAULT_MISSES) -> None:
        if interval <= 0 or misses < 1:
            raise ValueError(
                f"probe interval must be > 0 and misses >= 1, got {interval}, {misses}"
            )
        self.interval = interval
        self.misses = misses
        self._outstanding: dict[int, float] = {}
        self._last_sent: float | None = None
        self._next_uid = 1
        self.sent_count = 0
        self.acked_count = 0
        self.last_rtt: float | None = None
        self._rtts: deque[float] = deque(maxlen=RTT_SAMPLES)

    def due(self, now: float) -> bool:
        # Against next_ping_at() itself, not `now - last_sent >= interval`: the agent's timer is
        # set to next_ping_at(), and (last_sent + interval) - last_sent can round below interval
        # (1023.62 + 1.0), so the PING was never due at its own time and the timer stood still
        # (found by a review).
        at = self.next_ping_at()
        return at is None or now >= at

    def next_ping_at(self) -> float | None:
        """When the next PING is due (None: at once, none was sent yet)."""
        return None if self._last_sent is None else self._last_sent + self.interval

    def next_uid(self) -> int:
        uid = self._next_uid
        self._next_uid += 1
        return uid

    def sent(self, uid: int, now: float) -> None:
        self._outstanding[uid] = now
        self._last_sent = now
        self.sent_count += 1

    def acked(self, uid: int, now: float) -> None:
        sent_at = self._outstanding.get(uid)
        if sent_at is None:
            return
        self.acked_count += 1
        self.last_rtt = now - sent_at
        if self.last_rtt < self.limit():
            # A round trip as long as the limit spanned an outage (aioquic re-sends a lost PING
            # under its uid, so it is answered when the outage ends), not queueing: kept, it
            # made the next limits RTT_MARGIN x the outage (a review: 3 s became 12).
            self._rtts.append(self.last_rtt)
        for other, at in list(self._outstanding.items()):
            if at <= sent_at:
                del self._outstanding[other]

    def silent_since(self) -> float | None:
        """When the oldest unanswered PING was sent (None if every PING was answered)."""
        return min(self._outstanding.values(), default=None)

    def silent_for(self, now: float) -> float:
        """How long the oldest unanswered PING has waited (0 if none)."""
        since = self.silent_since()
        return 0.0 if since is None else now - since

    def limit(self) -> float:
        """How long a PING may stay unanswered before the path counts as failed."""
        recent = max(self._rtts, default=0.0)
        return max(self.misses * self.interval, RTT_MARGIN * recent)

    def alive(self, now: float) -> bool:
        # Failed from the instant the limit is reached (not after it): a timer set to that
        # instant then finds the verdict changed.
        return self.silent_for(now) < self.limit()

    def reset(self) -> None:
        """Forget outstanding PINGs and the round trips (the connection moved to another
        path: the old one's queueing says nothing of the new one)."""
        self._outstanding.clear()
        self._last_sent = None
        self._rtts.clear()


__all__ = ["DEFAULT_MISSES", "LinkState", "LivenessProbe"]
