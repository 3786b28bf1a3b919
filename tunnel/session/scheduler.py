"""Path choice for the tunnel session mode: which connection of a session carries the next packet.

draft-piraux-intarea-quic-tunnel-session-00 §3 says access networks "can be used for
load-sharing, failover or other purposes" and leaves the policy to implementations; the tunnel
draft's Access Report TLV (§7.1.1) tells the peer when an access network becomes available or
unavailable. The schedulers here are that policy, as pure functions of the paths' state plus
their own small memory, so they can be tested without any network:

* every scheduler only ever returns a path that is `available` (no Access Report said
  UNAVAILABLE, and the connection is up) and that `can_send` now (its datagram queue is not at
  its cap);
* the aggregating schedulers (wrr, lowest-rtt) prefer paths whose congestion window has room
  for the packet (`window_space` >= 0, RFC 9002 §7: cwnd minus bytes in flight minus datagrams
  already queued minus this packet; a packet that does not fit whole waits for an ACK),
  so that each path carries what its own congestion controller lets out, as MPTCP does with its
  subflows; only when no path has room do they queue where the packet will leave soonest
  (`_soonest_departure`), bounded by the connection's datagram queue;
* earliest (issue 12) sends each packet where it arrives first, by the paths' RTT, backlog and
  rate (`arrival_estimate`), whether or not a window has room;
* failover never looks at the window: a full primary window does not move traffic to the backup;
* `choose` returns None when no path qualifies: the caller queues or drops the packet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from tunnel.wire.messages import AccessId

DEFAULT_PRIORITY: Final = (AccessId.NON_THREE_GPP, AccessId.THREE_GPP)
"""Failover order by default: the non-3GPP access (WiFi) first, the 3GPP one (5G) as backup,
the usual preference of a phone for its cheaper, usually faster access."""


@dataclass
class PathInfo:
    """What a scheduler knows about one path (one QUIC connection of the session)."""

    path_id: int
    access_id: AccessId | None
    """Access network type (tunnel draft §7.1.1); None when unknown."""
    available: bool
    """False after an Access Report UNAVAILABLE for it, or while its connection is down."""
    srtt: float | None
    """Smoothed RTT in seconds; None before the first RTT sample."""
    weight: int = 1
    """Share of packets for weighted round-robin (>= 1)."""
    can_send: bool = True
    """The connection accepts a packet now (its datagram queue is not at its cap)."""
    window_space: int | None = None
    """Bytes of congestion window left once the packet to send is counted: cwnd - bytes in
    flight - bytes of datagrams queued but not sent yet - the packet's bytes. >= 0: it leaves at
    once; negative: it waits until that many bytes are acknowledged (aioquic sends no packet
    the window cannot take whole). None when unknown, which counts as room."""
    cwnd: int | None = None
    """Congestion window in bytes; None when unknown. With srtt, how fast a backlog drains."""
    rate: float | None = None
    """Bytes per second the path lets out (the controller's pacing rate, else cwnd / srtt);
    None when unknown (then cwnd / srtt is used if known)."""
    min_rtt: float | None = None
    """The least RTT seen (s): the path's RTT without queueing."""
    backlog: int | None = None
    """Bytes ahead of a packet given to the path now: in flight plus queued in aioquic."""

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"path {self.path_id}: weight must be >= 1, got {self.weight}")
        if self.srtt is not None and not self.srtt >= 0:
            raise ValueError(f"path {self.path_id}: srtt must be >= 0 seconds, got {self.srtt}")
        if self.cwnd is not None and self.cwnd <= 0:
            raise ValueError(f"path {self.path_id}: cwnd must be > 0 bytes, got {self.cwnd}")

    @property
    def usable(self) -> bool:
        """Available and accepting a packet (possibly only into its queue)."""
        return self.available and self.can_send

    @property
    def has_window(self) -> bool:
        """Usable, and its congestion window takes the packet: it leaves at once."""
        return self.usable and (self.window_space is None or self.window_space >= 0)


class Scheduler(Protocol):
    """Chooses the path for the next packet."""

    name: str
    uses_window: bool
    """Whether choose() reads PathInfo.window_space and cwnd (else they may be left None)."""

    def choose(self, paths: Sequence[PathInfo]) -> int | None:
        """The path_id to send the next packet on, or None if no path can take it now."""
        ...


class FailoverScheduler:
    """Primary/backup: all traffic on the most preferred access that is available.

    Rules: paths are ranked by the position of their access_id in `priority` (paths with an
    access id not in it, or none, rank last); among paths of equal rank, the first given wins.
    The *active rank* is the best rank with an available path; the packet goes to the first path
    of that rank that can send, else nowhere (None). A backup path is therefore never used just
    because the primary's congestion window is full (that would be aggregation, not failover),
    only once the primary is reported unavailable; and traffic moves back as soon as the primary
    is available again.
    """

    name = "failover"
    uses_window = False
    """choose() never reads window_space/cwnd: the session need not compute them per packet."""

    def __init__(self, priority: Sequence[AccessId | int] = DEFAULT_PRIORITY) -> None:
        if not priority:
            raise ValueError("failover priority is empty: list the access ids, primary first")
        try:
            order = tuple(AccessId(p) for p in priority)
        except ValueError as e:
            valid = ", ".join(f"{a.value} ({a.name})" for a in AccessId)
            raise ValueError(f"failover priority: {e}; use access ids among {valid}") from e
        if len(set(order)) != len(order):
            raise ValueError(f"failover priority lists an access id twice: {list(order)}")
        self.priority: Final = order

    def _rank(self, path: PathInfo) -> int:
        if path.access_id in self.priority:
            return self.priority.index(path.access_id)
        return len(self.priority)

    def choose(self, paths: Sequence[PathInfo]) -> int | None:
        available = [p for p in paths if p.available]
        if not available:
            return None
        active_rank = min(self._rank(p) for p in available)
        for path in available:
            if self._rank(path) == active_rank and path.can_send:
                return path.path_id
        return None


class WeightedRoundRobinScheduler:
    """Aggregation: packets spread over all usable paths in proportion to their weights.

    Smooth weighted round-robin (as in nginx's upstream balancer): on each pick every usable path
    earns its weight, the path with the most credit is chosen (first given on a tie) and pays
    back the sum of the weights. Over any window of sum(weights) picks each path gets exactly
    its weight's worth, interleaved rather than in bursts (weights 5,1,1 give a a b a c a a, not
    a a a a a b c).

    Only paths whose congestion window has room take part (`PathInfo.has_window`): a path
    that cannot take more now is skipped, so the split follows what each path's congestion
    controller lets out rather than the weights alone (a 1:1 split over a 50 and a 100 Mbit/s
    access would overload the first). A skipped path keeps its credit without earning more; a
    path that becomes unavailable or disappears loses its credit, so it restarts from zero
    when it comes back instead of taking a burst. When no window has room the packet is queued
    where it leaves soonest (`_soonest_departure`), without touching the credits.
    """

    name = "wrr"
    uses_window = True

    def __init__(self) -> None:
        self._credit: dict[int, int] = {}

    def choose(self, paths: Sequence[PathInfo]) -> int | None:
        available_ids = {p.path_id for p in paths if p.available}
        for path_id in list(self._credit):
            if path_id not in available_ids:
                del self._credit[path_id]
        usable = [p for p in paths if p.has_window]
        if not usable:
            return _soonest_departure(paths)
        total = 0
        best: PathInfo | None = None
        for path in usable:
            credit = self._credit.get(path.path_id, 0) + path.weight
            self._credit[path.path_id] = credit
            total += path.weight
            if best is None or credit > self._credit[best.path_id]:
                best = path
        assert best is not None
        self._credit[best.path_id] -= total
        return best.path_id


class LowestRttScheduler:
    """Each packet on the path with the lowest smoothed RTT among those whose congestion window
    has room: MPTCP's default scheduler. The fastest path is filled up to its window, the next
    one takes what does not fit, and so on, so a slower path adds capacity without holding back
    the packets the fast one could carry.

    A path without an RTT sample yet counts as the slowest, so a new path is only used when no
    measured one has room; ties go to the first path given, so the choice is stable. When no
    window has room, the packet is queued where it leaves soonest (`_soonest_departure`).
    """

    name = "lowest-rtt"
    uses_window = True

    def choose(self, paths: Sequence[PathInfo]) -> int | None:
        best: PathInfo | None = None
        for path in paths:
            if path.has_window and (best is None or _rtt_key(path) < _rtt_key(best)):
                best = path
        if best is None:
            return _soonest_departure(paths)
        return best.path_id


def _rtt_key(path: PathInfo) -> tuple[bool, float]:
    return (path.srtt is None, path.srtt or 0.0)


def _soonest_departure(paths: Sequence[PathInfo]) -> int | None:
    """The usable path where a packet queued now arrives first, when no window has room.

    Dropping here would be a loss for the tunnelled transport although every path is merely
    busy, so the packet is queued (bounded by each connection's datagram queue: a path whose
    queue is at its cap is not usable). Always queuing on the lowest-RTT path would pile the
    backlog on one path: its queue waits there before the RTT samples see it, and the packets
    behind it on the other paths wait in the receiver's reorder buffer. Instead, estimate when
    the packet would arrive: a congestion controller lets about one window out per RTT, so a
    backlog of `excess` bytes beyond the window leaves after srtt * excess / cwnd, and then
    takes about srtt / 2 to cross. Beyond the head start a shorter path's crossing gives it,
    the backlog thereby grows on each path in proportion to its rate (cwnd / srtt).
    Paths without an RTT sample or a window rank after those with both; ties go to the first
    path given.
    """
    best: PathInfo | None = None
    best_key: tuple[bool, float] = (True, 0.0)
    for path in paths:
        if not path.usable:
            continue
        if path.srtt is None or path.cwnd is None:
            key = (True, 0.0)
        else:
            excess = max(0, -(path.window_space or 0))
            key = (False, path.srtt * (0.5 + excess / path.cwnd))
        if best is None or key < best_key:
            best, best_key = path, key
    return None if best is None else best.path_id


def arrival_estimate(path: PathInfo) -> float | None:
    """Seconds until a packet given to `path` now reaches the other end. The path holds about
    rate x min_rtt bytes on the wire without queueing; whatever is ahead of the packet beyond
    that (its `backlog`: bytes in flight and queued in aioquic) waits in a queue — aioquic's,
    for the congestion window, or the bottleneck's — and drains at the path's rate; then the
    packet crosses in half the unqueued RTT. Without a backlog figure: half the smoothed RTT,
    plus the bytes the window cannot take yet (-window_space) at the rate. None without an
    RTT sample."""
    srtt = path.srtt
    if srtt is None:
        return None
    rate = path.rate
    if not rate:
        if not path.cwnd:
            return srtt / 2 if not path.window_space or path.window_space >= 0 else None
        rate = path.cwnd / max(srtt, 1e-6)
    if path.backlog is not None:
        base = path.min_rtt if path.min_rtt is not None else srtt
        queued = max(0.0, path.backlog - rate * base)
        return base / 2 + queued / rate
    excess = max(0, -(path.window_space or 0))
    return srtt / 2 + excess / rate


def earliest_path(paths: Sequence[PathInfo], exclude: int | None = None) -> int | None:
    """The usable path (other than `exclude`) where a packet arrives first
    (arrival_estimate); paths without an estimate rank after those with one, ties go to the
    first given. None when no path is usable."""
    best: PathInfo | None = None
    best_key: tuple[bool, float] = (True, 0.0)
    for path in paths:
        if path.path_id == exclude or not path.usable:
            continue
        arrival = arrival_estimate(path)
        key = (True, 0.0) if arrival is None else (False, arrival)
        if best is None or key < best_key:
            best, best_key = path, key
    return None if best is None else best.path_id


class EarliestArrivalScheduler:
    """Aggregation by arrival time (issue 12): each packet goes where it arrives earliest
    (arrival_estimate: half the path's smoothed RTT, plus the time its backlog takes to leave
    at the rate the path lets out, with the packet's room in the congestion window counted).

    While the fastest path's window has room it takes every packet; as its backlog grows, its
    arrival time reaches the slower path's crossing time and the slower path takes the next
    ones, so each path carries what it can deliver in time and no packet is sent where it
    would arrive after packets sent later on another path (beyond the estimates' error, which
    the receiver's reorder buffer absorbs). Unlike lowest-rtt, a packet is not put on a slower
    path just because the faster one's window is momentarily full when the faster path would
    still deliver it first; unlike wrr, the split follows the paths' rates, not fixed weights.
    The session may also duplicate small packets onto a second path (`limits.duplicate_up_to`).
    """

    name = "earliest"
    uses_window = True

    def choose(self, paths: Sequence[PathInfo]) -> int | None:
        return earliest_path(paths)


_REGISTRY: Final[dict[str, Callable[..., Scheduler]]] = {
    "failover": FailoverScheduler,
    "wrr": WeightedRoundRobinScheduler,
    "aggregate": WeightedRoundRobinScheduler,
    "lowest-rtt": LowestRttScheduler,
    "earliest": EarliestArrivalScheduler,
}
SCHEDULER_NAMES: Final = tuple(_REGISTRY)
"""Every name make_scheduler accepts ("aggregate" is another name for "wrr")."""


def make_scheduler(name: str, **options: Any) -> Scheduler:
    """A new scheduler by name, e.g. make_scheduler("failover", priority=[AccessId.THREE_GPP])."""
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULER_NAMES)}")
    try:
        return factory(**options)
    except TypeError as e:
        raise ValueError(
            f"scheduler {name!r} does not take the options {sorted(options)}: {e}"
        ) from e
