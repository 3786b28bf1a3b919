"""Path MTU discovery for the tunnel's QUIC connections (`limits.pmtu_discovery`).

DPLPMTUD (RFC 8899 §5, as RFC 9000 §14.3 applies it to QUIC): the sender learns the largest
UDP payload its path carries by sending probe packets — a PING padded to the size under test —
and watching whether they are acknowledged; ICMP is not needed, so a path that drops both the
large packets and the ICMP errors about them (a PMTU black hole, RFC 8899 §1.1) is found too.

This module is the search alone, sans-I/O: `PmtuSearch` is told when probes leave and are
acknowledged, when the path made progress, and when large packets were lost or acknowledged, and
says which probe to send and which size is in use. The QUIC side (building the probe packets,
hiding them from loss recovery, changing the datagram size) is
tunnel/protocol/quic_ext.py `TunnelQuicConnection(pmtu_ceiling=...)`.

The handshake's datagrams keep to the 1,200 bytes every QUIC path carries (RFC 9000 §14). Once
it is done the connection confirms the ceiling (the configured 1,452) with a round of probes
(CONFIRMING), and meanwhile *admits* packets of up to the ceiling's budget but sends only what
the confirmed size holds: a larger one waits in the datagram queue for the probe's answer, one
round trip. A tunnel's inner packets are sized by the TUN MTU, fixed when the TUN is made from
the admitted budget; answering them with Packet Too Big while the probes are out would leave
their senders' path MTU low for minutes, and sending them before the answer would lose them on
a smaller path (and look like a failed path to the multipath engine). When the confirmation
fails — its MAX_PROBES probes lost while the path answered other packets — the size stays
at BASE_PLPMTU, what waits and no longer fits is dropped (the program answers it with Packet
Too Big), and a binary search between the largest size acknowledged and the smallest lost one
follows (SEARCHING), each step one round (RFC 8899 §5.3.2). The search ends within
SEARCH_GRANULARITY bytes (COMPLETE); RAISE_INTERVAL later it tries upwards again (§5.1.1
PMTU_RAISE_TIMER). A new path (a migration) starts again the same way (restart).

Black hole detection after the search (§4.3): BLACK_HOLE_LOSSES lost packets larger than the
base in a row, with none acknowledged between them, start a confirmation of the size in use
(also during a search upwards, which is then given up). The QUIC side counts only losses that
say something of the path in use: not those of packets sent before a migration, nor those of
packets older than a large one acknowledged (a burst of loss, not a size the path refuses).
A size is tested by a *round*: MAX_PROBES probes of that size, each with a companion, a PING
in a packet as small as can be, the next probe one smoothed RTT after the last rather than
after the last one's timeout, and no probe (a new round's neither) within one RTT of the one
before (RFC 8899 §8: probes at least one RTT apart). One probe acknowledged: the path carries
the size. None acknowledged by the last one's deadline while a companion was acknowledged
after the last probe left: the size failed (§5.1.2's MAX_PROBES lost probes). A failed size so
takes two RTTs and one probe timeout instead of MAX_PROBES timeouts in a row, which matters
after a black hole: the sequential search fell 164–326 ms into it, after the inner TCP's first
retransmission timeout (~230 ms) in a quarter of the runs, whose gaps were then 680–870 ms
instead of 220–360 (results/README.md, "Where a PMTU black hole's gap goes"). Sending the
round's probes together (as draft-seemann-quic-ppdplpmtud does with several sizes) would save
the two RTTs but break §8's MUST, and would put the probes in one UDP GSO send whose single
loss fails the size. When no companion is answered after the last probe left (an outage), the
round says nothing about the size and is sent again later without counting (RFC 8899 §4.4:
an outage or congestion must not pass for an MTU limit), a probe timeout later, twice longer
after each such round in a row (at most 32 times).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

BASE_PLPMTU: Final = 1200  # RFC 9000 §14: every QUIC path carries 1200-byte UDP payloads
MAX_PROBES: Final = 3  # RFC 8899 §5.1.2 MAX_PROBES: lost probes that fail a size (a round)
RAISE_INTERVAL: Final = 600.0  # seconds, RFC 8899 §5.1.1 PMTU_RAISE_TIMER
SEARCH_GRANULARITY: Final = 8  # bytes: the search ends when its interval is this narrow
BLACK_HOLE_LOSSES: Final = 8  # large packets lost in a row before the size is confirmed again
MIN_PROBE_TIMEOUT: Final = 0.05  # seconds a probe waits for its ACK at least
EPISODES_KEPT: Final = 8  # black hole suspicions whose times the status shows


class PmtuState(Enum):
    """RFC 8899 §5.2's phases (its BASE and ERROR states are the moments SEARCHING starts
    from the base size)."""

    IDLE = "idle"  # the handshake runs at the base size
    CONFIRMING = "confirming"  # `target` is being checked (the ceiling at start, or the size in
    # use when a black hole is suspected)
    SEARCHING = "searching"  # binary search between `low` and `high`
    COMPLETE = "complete"  # the size in use is confirmed; RAISE_INTERVAL until the next try


@dataclass
class _Round:
    """The probes of `size` sent so far (MAX_PROBES in all, one RTT apart)."""

    size: int
    sent: int  # probes of the round that left
    last_sent_at: float
    deadline: float  # when the last probe's answer is given up on
    next_at: float  # when the next probe of the round may leave


@dataclass
class PmtuCounters:
    """What the search did, for the status file."""

    probes_sent: int = 0  # probe packets (up to MAX_PROBES a round)
    rounds_acked: int = 0  # a probe of the round was acknowledged: the size is carried
    rounds_lost: int = 0  # none, while a companion was answered after the last: the size failed
    rounds_unanswered: int = 0  # nothing answered (an outage): sent again, not counted
    black_holes: int = 0  # confirmations that failed: the size fell to the base
    raises: int = 0  # times the size in use went up
    drops: int = 0  # times it went down


@dataclass
class BlackHoleEpisode:
    """When one black hole suspicion (§4.3) went through its steps, in the connection's
    clock (the programs': CLOCK_MONOTONIC, so a script on the same machine compares them with
    its own time.monotonic()). What a failover experiment splits a PMTU outage's gap with:
    detection (the hole's start to `suspected_at`), confirmation (to `fell_at`), search (to
    `settled_at`), and the inner traffic's own recovery after it."""

    suspected_at: float  # BLACK_HOLE_LOSSES large packets lost: the size is confirmed again
    fell_at: float | None = None  # the confirmation failed: the size fell to the base
    settled_at: float | None = None  # the confirmation passed or the search that followed ended


@dataclass
class PmtuSearch:
    """The search of one connection's path (see the module docstring). `ceiling`: the largest
    UDP payload ever tried (the configured datagram size)."""

    ceiling: int
    base: int = BASE_PLPMTU
    state: PmtuState = PmtuState.IDLE
    size: int = 0  # the UDP payload size packets are sent at (PLPMTU)
    target: int = 0  # CONFIRMING: the size the probes check
    low: int = 0  # the largest size acknowledged (or the base)
    high: int = 0  # the smallest size that failed (ceiling + 1: none)
    counters: PmtuCounters = field(default_factory=PmtuCounters)
    # the latest suspicions' times, oldest first (a false alarm after a real black hole must
    # not hide it from a script that reads the status after an outage)
    episodes: deque[BlackHoleEpisode] = field(default_factory=lambda: deque(maxlen=EPISODES_KEPT))
    _round: _Round | None = None
    _next_at: float | None = None  # when the next probe (or search) may start
    # one RTT after the last probe left: no probe before (RFC 8899 §8), also a new round's
    _quiet_until: float | None = None
    _unanswered: int = 0  # rounds in a row nothing answered (an outage): each waits twice longer
    _large_lost: int = 0  # large packets lost in a row
    _raising: bool = False  # SEARCHING upwards from a confirmed size (the raise timer's)

    def __post_init__(self) -> None:
        if self.ceiling < self.base:
            raise ValueError(f"the PMTU ceiling {self.ceiling} is below the base {self.base}")
        self.size = self.low = self.base
        self.high = self.ceiling + 1

    def start(self, now: float) -> None:
        """The handshake is done: confirm the ceiling with a probe at once."""
        if self.state is PmtuState.IDLE:
            self._confirm(now, self.ceiling)

    def restart(self, now: float | None = None) -> None:
        """A new path (a migration, RFC 8899 §5.2 "path change"): back to the base size, and
        the ceiling confirmed again at once. A black hole suspicion of the old path still open
        ends here (settled at `now`): the new path's search is not about it, and the old
        path's losses are not counted against the new one."""
        if self.state is PmtuState.IDLE:
            return
        episode = self.black_hole
        if episode is not None and episode.settled_at is None and now is not None:
            episode.settled_at = now
        self._large_lost = 0
        self._round = None
        self.low = self.base
        self.high = self.ceiling + 1
        self._set_size(self.base)
        self._confirm(None, self.ceiling)

    @property
    def black_hole(self) -> BlackHoleEpisode | None:
        """The latest black hole suspicion (None: none yet)."""
        return self.episodes[-1] if self.episodes else None

    @property
    def admitted(self) -> int:
        """The UDP payload size packets are accepted for: the target while it is confirmed
        (they wait for the answer), the size in use otherwise."""
        return self.target if self.state is PmtuState.CONFIRMING else self.size

    @property
    def candidate(self) -> int | None:
        """The size the next probe tests (None: nothing to test now)."""
        if self.state is PmtuState.CONFIRMING:
            return self.target
        if self.state is PmtuState.SEARCHING:
            # a search up from a confirmed size tries the ceiling first (the path may be back
            # to what it was), then halves the interval
            return self.ceiling if self.high > self.ceiling else (self.low + self.high) // 2
        return None

    def probe_due(self, now: float) -> int | None:
        """The size of the probe to send now, if one is due (call probe_sent once it left)."""
        probe = self._round
        if probe is not None:
            return probe.size if probe.sent < MAX_PROBES and now >= probe.next_at else None
        if self._next_at is not None and now < self._next_at:
            return None
        if self.state is PmtuState.COMPLETE and self._next_at is not None:
            self._search(now)  # RAISE_INTERVAL is over: look upwards again
            self._raising = True
        return self.candidate

    def probe_sent(self, size: int, now: float, timeout: float, rtt: float) -> None:
        """A probe of `size` bytes left; its ACK is awaited `timeout` seconds (the connection's
        probe timeout, so that an ACK delayed by the peer or the queue is still seen), and the
        round's next probe waits `rtt` (the smoothed RTT: RFC 8899 §8)."""
        probe = self._round
        deadline = now + max(timeout, MIN_PROBE_TIMEOUT)
        if probe is not None and probe.size == size and probe.sent < MAX_PROBES:
            probe.sent += 1
            probe.last_sent_at, probe.deadline, probe.next_at = now, deadline, now + rtt
        else:
            self._round = _Round(size, 1, now, deadline, now + rtt)
        self._quiet_until = now + rtt
        self.counters.probes_sent += 1

    def rtt_measured(self, rtt: float) -> None:
        """The path's smoothed RTT is now `rtt`: the round's next probe waits no longer than
        that after the last (after a migration the estimate starts afresh, and a probe sent
        before the first sample was spaced by the probe timeout instead)."""
        probe = self._round
        if probe is not None and probe.sent < MAX_PROBES:
            probe.next_at = min(probe.next_at, probe.last_sent_at + rtt)
            self._quiet_until = probe.next_at

    def probe_acked(self, size: int, now: float) -> None:
        """A probe of `size` bytes was acknowledged: the path carries that size."""
        probe = self._round
        if probe is None or probe.size != size:
            return  # another of the round's, or a round given up on: decided already
        self._round = None
        self._unanswered = 0
        self.counters.rounds_acked += 1
        if self.state is PmtuState.CONFIRMING:
            self.low = max(self.low, size)
            self._set_size(size)
            self._complete(now)
            return
        self.low = size
        if size > self.size:
            self._set_size(size)
        self._next_step(now)

    @property
    def probing(self) -> bool:
        """Whether a round of probes waits for its answer."""
        return self._round is not None

    def timer(self) -> float | None:
        """When the next probe is due or on_timer wants to run (the round's next probe, its
        deadline, or the next round or search)."""
        probe = self._round
        if probe is not None:
            return probe.next_at if probe.sent < MAX_PROBES else probe.deadline
        return self._next_at

    def on_timer(self, now: float, answered: float | None) -> None:
        """Time passed; `answered`: when the path last acknowledged a probe's companion (None:
        never), which tells lost probes from an outage."""
        probe = self._round
        if probe is None or probe.sent < MAX_PROBES or now < probe.deadline:
            return
        self._round = None
        if answered is None or answered <= probe.last_sent_at:
            # no companion answered since the last probe left: an outage, not the size; the
            # next round waits a probe timeout, twice longer after each such round (at most 32
            # times: a long outage is not filled with full-size probes)
            self.counters.rounds_unanswered += 1
            self._next_at = now + (probe.deadline - probe.last_sent_at) * 2 ** min(
                self._unanswered, 5
            )
            self._unanswered += 1
            return
        self._unanswered = 0
        # MAX_PROBES probes lost while the path answered the last one's companion: the size
        # failed
        self.counters.rounds_lost += 1
        self.high = probe.size
        if self.state is PmtuState.CONFIRMING:
            # the target is not carried (§4.3): back to the size every path carries
            self.counters.black_holes += 1
            episode = self.black_hole
            if episode is not None and episode.settled_at is None:
                episode.fell_at = now
            self.low = self.base
            self._set_size(self.base)
            self.state = PmtuState.SEARCHING
        self._next_step(now)

    def large_lost(self, count: int, now: float) -> None:
        """Loss recovery declared `count` packets larger than the base lost (RFC 8899 §4.3's
        signal of a black hole: confirmed by probes before the size drops)."""
        self._large_lost += count
        settled = self.state is PmtuState.COMPLETE or self._raising
        if self._large_lost >= BLACK_HOLE_LOSSES and settled and self.size > self.base:
            # (a search upwards from a confirmed size, RAISE_INTERVAL after the last, is given
            # up: the size in use is what is in doubt now)
            self._large_lost = 0
            self._round = None
            self.episodes.append(BlackHoleEpisode(suspected_at=now))
            self._confirm(now, self.size)

    def large_acked(self) -> None:
        """A packet larger than the base was acknowledged: the size works for now."""
        self._large_lost = 0

    # -- internals ----------------------------------------------------------------------------

    def _set_size(self, size: int) -> None:
        if size > self.size:
            self.counters.raises += 1
        elif size < self.size:
            self.counters.drops += 1
        self.size = size

    def _confirm(self, now: float | None, target: int) -> None:
        self.state = PmtuState.CONFIRMING
        self._raising = False
        self.target = target
        self._unanswered = 0
        if now is None:  # a new path: at once (the old path's probes do not space its own)
            self._next_at = self._quiet_until = None
        else:
            self._next_at = self._after_quiet(now)

    def _search(self, now: float) -> None:
        self.state = PmtuState.SEARCHING
        self.low = self.size
        self.high = self.ceiling + 1
        self._next_step(now)

    def _next_step(self, now: float) -> None:
        if self.high - self.low <= SEARCH_GRANULARITY or self.low >= self.ceiling:
            self._complete(now)
        else:
            self._next_at = self._after_quiet(now)

    def _after_quiet(self, now: float) -> float:
        """`now`, or one RTT after the last probe if that is later (RFC 8899 §8)."""
        quiet = self._quiet_until
        return now if quiet is None else max(now, quiet)

    def _complete(self, now: float) -> None:
        self.state = PmtuState.COMPLETE
        self._raising = False
        episode = self.black_hole
        if episode is not None and episode.settled_at is None:
            episode.settled_at = now
        self._large_lost = 0
        self._next_at = now + RAISE_INTERVAL if self.size < self.ceiling else None
