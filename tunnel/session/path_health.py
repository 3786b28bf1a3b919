"""Fast failure detection from QUIC's own state (issue 12): is one path — a connection of a
session, or the access a tunnel-mode connection runs over — alive, *suspect* or *dead*?

Pure logic: the caller passes loss recovery's view of the path (tunnel/protocol/quic_ext.py
AckState) and `now`, and gets the verdict and the next time it can change, as the liveness
probe does (tunnel/agents/access_health.py). Both ends use it: the client agent and the
concentrator core.

The rule. A path is *silent* from the send time of the first ack-eliciting packet sent since
an ACK last acknowledged something new (AckState.unanswered_since). Silent for longer than
`suspect_after` — loss recovery's probe timeout, srtt + max(4 rttvar, granularity) +
max_ack_delay (RFC 9002 §6.2.1), bounded to [SUSPECT_MIN, SUSPECT_MAX] — the path is SUSPECT:
the caller probes it (a PING, or a PATH_CHALLENGE from its socket), duplicates new packets onto
another path and re-sends what was in flight on it. Still no ACK `dead_after` after the silence
began (DEAD_FACTOR suspect intervals, bounded), it is DEAD: the caller reports it (Access Report),
moves its traffic and keeps probing it with a backoff from `suspect_after` doubling up to
`probe_max`, so a healed path comes back by itself. Any ACK that acknowledges something new (a
probe's included) makes it ALIVE again.

What others do, and why these numbers:
- Linux MPTCP marks a subflow *stale* after `stale_loss_cnt` (default 4) MPTCP-level
  retransmission intervals without progress while data is outstanding; the scheduler then
  ignores it, and any reply from the peer makes it active again (net/mptcp, "mptcp: faster
  active backup recovery", Documentation/networking/mptcp-sysctl.rst). Our SUSPECT is one probe
  timeout, not four RTOs: a suspect path is not abandoned, only doubled up (a false alarm costs
  duplicates, not a migration), so it can be fast.
- Multipath QUIC (draft-ietf-quic-multipath) leaves failure detection to the endpoint;
  picoquic switches traffic to a standby path at the first PTO of the active path and back when
  it answers (quicwg/multipath issue 293); xquic, under mqvpn, degrades a path after PTOs and
  declares it unreachable after `path_unreachable_pto_count` (6) of them, and bounds a
  reinjection by a deadline of 2 srtt (`reinj_flexible_deadline_srtt_factor`).
- Our liveness probe (3 missed PINGs, tunnel/agents/access_health.py) stays the detector of
  last resort; link events (carrier, address) stay the fast path for a link-down.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from tunnel.protocol.quic_ext import AckState

SUSPECT_MIN: Final = 0.1
"""Seconds: below this, a burst queued ahead of the ACKs on a slow access looks like silence
(15 full packets at 2 Mbit/s take 60 ms; an idle path's rttvar is near 0, so its probe
timeout is little more than srtt + max_ack_delay)."""
SUSPECT_MAX: Final = 1.0
"""Seconds: a path silent this long is suspect whatever its RTT estimate says."""
DEAD_FACTOR: Final = 3.0
"""Suspect intervals of silence after which a path is dead."""
DEAD_MIN: Final = 0.2
DEAD_MAX: Final = 3.0


class PathHealth(Enum):
    """The verdict on one path; the value is what the status files show."""

    ALIVE = "alive"
    SUSPECT = "suspect"  # silent beyond one probe timeout: probed, doubled up, re-sent
    DEAD = "dead"  # silent beyond dead_after: reported, traffic moved, probed with backoff


def suspect_after(state: AckState) -> float:
    """How long a path may stay silent before it is suspect (see the module docstring)."""
    return min(SUSPECT_MAX, max(SUSPECT_MIN, state.probe_timeout))


def dead_after(state: AckState) -> float:
    """How long after its silence began a path is dead."""
    return min(DEAD_MAX, max(DEAD_MIN, DEAD_FACTOR * suspect_after(state)))


class PathMonitor:
    """The health of one path over time (see the module docstring).

    `evaluate(state, now)` applies the silence rule to loss recovery's state; `suspect`,
    `dead` and `alive` set the verdict from elsewhere (tunnel mode: an access probed with
    PATH_CHALLENGEs after its connection moved away). `next_check()` is when the verdict can
    next change without an input, `probe_due(now)` whether a probe should go out now.
    Counters: `suspected`, `died`, `recovered` (transitions).
    """

    def __init__(self, probe_max: float) -> None:
        if probe_max <= 0:
            raise ValueError(f"probe_max must be > 0 seconds, got {probe_max}")
        self.probe_max = probe_max
        self.health = PathHealth.ALIVE
        self.since: float | None = None  # when the current verdict began
        self.suspected = self.died = self.recovered = 0
        self.quiet_before: float | None = None  # silence before this instant is not the path's
        self._dead_at: float | None = None  # SUSPECT: when it turns DEAD
        self._probe_at: float | None = None
        self._probe_gap = 0.0

    # -- verdicts ----------------------------------------------------------------------------

    def evaluate(self, state: AckState, now: float) -> PathHealth | None:
        """Apply the silence rule; returns the new verdict when it changed, else None."""
        if self.health is not PathHealth.ALIVE:
            progress = state.last_progress
            if progress is not None and self.since is not None and progress > self.since:
                self.alive(now)
                return PathHealth.ALIVE
            return self.tick(now)
        deadline = self.silence_deadline(state)
        if deadline is not None and now >= deadline:
            limit = suspect_after(state)
            self.suspect(now, limit, dead_after(state) - limit)
            return PathHealth.SUSPECT
        return None

    def silence_deadline(self, state: AckState) -> float | None:
        """ALIVE: when the current silence makes the path suspect (None: not silent)."""
        silent = state.unanswered_since
        if silent is None:
            return None
        if self.quiet_before is not None:
            silent = max(silent, self.quiet_before)
        return silent + suspect_after(state)

    def tick(self, now: float) -> PathHealth | None:
        """Only time passed: a SUSPECT path whose time is up is DEAD (returned)."""
        dead_at = self._dead_at
        if self.health is PathHealth.SUSPECT and dead_at is not None and now >= dead_at:
            self.dead(now)
            return PathHealth.DEAD
        return None

    def suspect(self, now: float, probe_gap: float, dead_in: float) -> None:
        """SUSPECT from now: DEAD in `dead_in` seconds unless it answers; probes every
        `probe_gap` seconds, doubling (the first one now)."""
        self.health = PathHealth.SUSPECT
        self.since = now
        self.suspected += 1
        self._dead_at = now + dead_in
        self._probe_gap = max(probe_gap, SUSPECT_MIN)
        self._probe_at = now

    def dead(self, now: float) -> None:
        if self.health is not PathHealth.DEAD:
            self.died += 1
        if self.health is PathHealth.ALIVE:
            self._probe_gap = SUSPECT_MIN
            self._probe_at = now
        self.health = PathHealth.DEAD
        self.since = now
        self._dead_at = None

    def alive(self, now: float) -> None:
        if self.health is not PathHealth.ALIVE:
            self.recovered += 1
        self.health = PathHealth.ALIVE
        self.since = now
        self._dead_at = self._probe_at = None

    def reset(self, now: float) -> None:
        """A fresh start (e.g. the connection moved to another path): alive, and the silence
        of packets sent before `now` is the old path's."""
        self.health = PathHealth.ALIVE
        self.since = now
        self.quiet_before = now
        self._dead_at = self._probe_at = None

    # -- probing -----------------------------------------------------------------------------

    def probe_due(self, now: float) -> bool:
        return self._probe_at is not None and now >= self._probe_at

    def probe_sent(self, now: float) -> None:
        """A probe went out: the next one after the current gap, which doubles up to
        probe_max (a healed path is found within probe_max, a dead one costs little)."""
        self._probe_at = now + self._probe_gap
        self._probe_gap = min(self.probe_max, 2 * self._probe_gap)

    def next_check(self) -> float | None:
        """Not ALIVE: when the verdict or the probing next has something to do without an
        input (ALIVE: see silence_deadline)."""
        times = [t for t in (self._dead_at, self._probe_at) if t is not None]
        return min(times, default=None)

    def stop_probing(self) -> None:
        self._probe_at = None


__all__ = [
    "DEAD_FACTOR",
    "DEAD_MAX",
    "DEAD_MIN",
    "SUSPECT_MAX",
    "SUSPECT_MIN",
    "PathHealth",
    "PathMonitor",
    "dead_after",
    "suspect_after",
]
