"""Re-sending tunnelled packets (issue 12 "Reinjection", issue 13 "Loss hiding on one path"):
what is remembered of the packets in flight, and when a re-send is still worth it.

A DATAGRAM lost by the outer connection is a loss for the tunnelled transport: its TCP takes a
fast retransmit (or a timeout) and shrinks its window. Loss recovery tells which DATAGRAMs were
lost (TunnelQuicConnection.take_datagram_fates, RFC 9002 §6); the tunnel can then send the same
packet again, once:
- *reinjection*: a packet lost, or *stranded* (in flight on a path that became suspect or dead,
  tunnel/session/path_health.py), is re-sent on another access (session mode: with the same
  Packet Tag, so the receiver's reorder buffer puts it in its place and drops a second copy;
  tunnel mode: on the path the connection migrated to);
- *loss hiding*: a lost packet is re-sent on the same path, when no other is available or when
  configured (`limits.loss_hiding`); in session mode the reorder buffer hides the reordering
  completely, in tunnel mode the inner TCP sees it (Linux RACK adapts its reordering window).

A re-send is useless once the tunnelled transport has acted on the loss itself, so it is made
only within a *deadline* of the original send (`limits.resend_deadline`). Its default follows
the paths' RTTs: twice the largest smoothed RTT, plus RESEND_MARGIN for delayed ACKs, within
[RESEND_DEADLINE_MIN, RESEND_DEADLINE_MAX]. Why: loss recovery declares a packet lost about
9/8 of its path's RTT after sending it (RFC 9002 §6.1.2), the re-send takes half an RTT to
arrive, and an inner TCP whose RTT is at least the path's retransmits by itself (RACK, Linux:
one RTT plus a reordering window) from about then on; xquic bounds its reinjections by 2 srtt
for the same reason (`reinj_flexible_deadline_srtt_factor`). A packet *stranded* on a failed
path is different: the packets after it were stranded with it, so the tunnelled transport sees
no duplicate ACK or SACK, only its retransmission timeout, at least 200 ms on Linux
(TCP_RTO_MIN): it may be re-sent within max(deadline, STRANDED_DEADLINE_MIN) unless a deadline is
configured. A re-send that would be older is counted as `resend_too_late` instead.

Memory: `SentPackets` keeps a reference to each packet until its fate is known or its deadline
passed, at most `max_packets` and `max_bytes` (the oldest go first), per session or tunnel
connection: the concentrator holds at most that much per client.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tunnel.protocol.quic_ext import DatagramFate

DEFAULT_MAX_PACKETS: Final = 4096
DEFAULT_MAX_BYTES: Final = 4 * 1024 * 1024
RESEND_DEADLINE_MIN: Final = 0.05
RESEND_DEADLINE_MAX: Final = 1.0
RESEND_MARGIN: Final = 0.025  # a delayed ACK (RFC 9000 §18.2 max_ack_delay default)
RESEND_DEADLINE_UNKNOWN: Final = 0.2
"""Deadline before any RTT is known."""
STRANDED_DEADLINE_MIN: Final = 0.2
"""Seconds: the least deadline of a packet stranded on a failed path (Linux's TCP_RTO_MIN)."""


def resend_deadline(
    configured: float | None, srtts: Iterable[float | None], stranded: bool = False
) -> float:
    """The deadline in force: the configured one, else from the RTTs (module docstring);
    `stranded`: for a packet stranded on a failed path."""
    if configured is not None:
        return configured
    known = [rtt for rtt in srtts if rtt is not None]
    deadline = RESEND_DEADLINE_UNKNOWN
    if known:
        deadline = min(
            RESEND_DEADLINE_MAX, max(RESEND_DEADLINE_MIN, 2 * max(known) + RESEND_MARGIN)
        )
    return max(deadline, STRANDED_DEADLINE_MIN) if stranded else deadline


@dataclass(frozen=True)
class Resilience:
    """What a sender does beyond sending once (both programs, `[limits]`; README "The
    multipath engine"). All off: the engine behaves as before issue 12."""

    reinjection: bool = False
    """Re-send lost and stranded packets on another access (session mode; tunnel mode: on the
    path the connection migrated to)."""
    loss_hiding: bool = False
    """Re-send a lost packet on the same path when no other is available."""
    duplicate_suspect: bool = False
    """Session mode: while a path is suspect, a copy of each new packet it is given goes on
    another access."""
    duplicate_up_to: int = 0
    """Session mode: packets of at most this many bytes go on two accesses (0: none)."""
    resend_deadline: float | None = None
    """Seconds after its first sending within which a packet may be re-sent (None: from the
    RTTs, resend_deadline())."""

    @property
    def tracks(self) -> bool:
        """Whether packets in flight must be remembered (a re-send may be needed)."""
        return self.reinjection or self.loss_hiding

    def may_fill_a_gap(self, several_paths: bool) -> bool:
        """Whether the receiver's reorder buffer should wait for a re-send before it gives up
        on a gap (ReorderBuffer.timeout_from_rtts's `cover_resend`). Loss hiding re-sends on
        the same path; reinjection only on *another* one, so on a single path nothing comes,
        and waiting a round trip more holds every packet behind each loss, then releases them
        in one burst (session mode lost up to 29 % of a 20 Mbit/s UDP flow at 0.5 % loss and
        100 ms that way; results/README.md, the goodput re-run)."""
        return self.loss_hiding or (self.reinjection and several_paths)

    @classmethod
    def from_limits(cls, limits: Any) -> Resilience:
        """From a ClientLimits / ConcentratorLimits (tunnel/config.py)."""
        return cls(
            reinjection=bool(limits.reinjection),
            loss_hiding=limits.loss_hiding == "on",
            duplicate_suspect=bool(limits.duplication),
            duplicate_up_to=int(limits.duplicate_up_to) if limits.duplication else 0,
            resend_deadline=limits.resend_deadline,
        )


@dataclass(slots=True)
class SentPacket:
    """One packet in flight, as sent."""

    packet: bytes
    tag: int | None
    """Session mode: its Packet Tag (a re-send carries the same)."""
    path: Hashable
    """Where it went: a session's path id, or tunnel mode's path epoch (migrations)."""
    sent_at: float
    copy: bool = False
    """A re-send or a duplicate: never re-sent again (one re-send per packet)."""
    resent: bool = False
    """Already re-sent as stranded: its loss, declared later, needs nothing more."""
    doubled: bool = False
    """A duplicate of it went on another path (duplication): stranded, it needs nothing more
    (its loss, declared, is still re-sent: the duplicate may be lost too)."""


class SentPackets:
    """The packets in flight of one session or tunnel connection, by the token their DATAGRAM
    was queued with (TunnelQuicConnection.send_datagram_frame): bounded in count and bytes,
    oldest forgotten first (module docstring)."""

    def __init__(
        self, max_packets: int = DEFAULT_MAX_PACKETS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_packets < 1 or max_bytes < 1:
            raise ValueError(f"bounds must be >= 1, got {max_packets}, {max_bytes}")
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self._records: dict[int, SentPacket] = {}  # insertion order: oldest first
        self._bytes = 0
        self._tokens = itertools.count()
        self.evicted = 0  # forgotten before their fate was known (bounds or age)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, record: SentPacket) -> int:
        """Remember `record`; returns its token."""
        token = next(self._tokens)
        self._records[token] = record
        self._bytes += len(record.packet)
        while len(self._records) > self.max_packets or self._bytes > self.max_bytes:
            self._drop(next(iter(self._records)))
            self.evicted += 1
        return token

    def fate(self, token: Any) -> SentPacket | None:
        """The packet of `token` got its fate: forget it; returns it (None if unknown)."""
        record = self._records.pop(token, None)
        if record is not None:
            self._bytes -= len(record.packet)
        return record

    def expire(self, before: float) -> None:
        """Forget the packets sent before `before`: a re-send of them would come too late."""
        records = self._records
        while records:
            token = next(iter(records))
            if records[token].sent_at >= before:
                return
            self._drop(token)
            self.evicted += 1

    def in_flight_on(self, path: Hashable) -> list[tuple[int, SentPacket]]:
        """The originals sent on `path` whose fate is unknown and that were neither re-sent
        nor duplicated on another path yet, oldest first, with their tokens."""
        return [
            (token, r)
            for token, r in self._records.items()
            if r.path == path and not r.copy and not r.resent and not r.doubled
        ]

    def in_flight_before(self, path: int) -> list[SentPacket]:
        """Tunnel mode: the originals sent on a path epoch older than `path`."""
        return [
            r
            for r in self._records.values()
            if isinstance(r.path, int) and r.path < path and not r.copy and not r.resent
        ]

    def clear(self) -> None:
        self._records.clear()
        self._bytes = 0

    def _drop(self, token: int) -> None:
        record = self._records.pop(token)
        self._bytes -= len(record.packet)


RESEND_COUNTERS: Final = (
    "datagrams_lost",
    "reinjected",
    "loss_hidden",
    "duplicated",
    "resend_too_late",
    "resend_no_path",
)
"""The re-send counters every status shows (per connection/access and in total):
datagrams_lost (declared lost by loss recovery), reinjected (re-sent on another path, or in
tunnel mode on the path the connection migrated to), loss_hidden (re-sent on the same path),
duplicated (copies sent: small packets, packets of a suspect path), resend_too_late (lost or
stranded past the deadline), resend_no_path (no path could take the re-send)."""


def new_counters() -> Counter[str]:
    return Counter(dict.fromkeys(RESEND_COUNTERS, 0))


class TunnelResender:
    """Tunnel mode's re-sends over its one connection: a packet stranded on a path the
    connection migrated away from is re-sent on the new path (reinjection, at once when the
    migration happens); a packet lost on the path in use is re-sent on it (loss hiding).
    `epoch` counts the paths: the caller calls `migrated` when the connection moves."""

    def __init__(self, resilience: Resilience) -> None:
        self.resilience = resilience
        self.sent = SentPackets()
        self.epoch = 0
        self.counters = new_counters()
        # how long a packet is remembered: no re-send may come later than its deadline
        self._keep = max(RESEND_DEADLINE_MAX, resilience.resend_deadline or 0.0)

    def token_for(self, packet: bytes, now: float) -> int | None:
        """The token to queue `packet`'s DATAGRAM with (None: nothing to remember)."""
        if not self.resilience.tracks:
            return None
        self.sent.expire(now - self._keep)
        return self.sent.add(SentPacket(packet, None, self.epoch, now))

    def migrated(self, now: float, srtts: Sequence[float | None]) -> list[bytes]:
        """The connection moved to a new path: the packets to re-send on it now."""
        self.epoch += 1
        if not self.resilience.reinjection:
            return []
        deadline = resend_deadline(self.resilience.resend_deadline, srtts, stranded=True)
        packets: list[bytes] = []
        for record in self.sent.in_flight_before(self.epoch):
            record.resent = True
            if now - record.sent_at > deadline:
                self.counters["resend_too_late"] += 1
                continue
            packets.append(record.packet)
            self.counters["reinjected"] += 1
        return packets

    def fates(
        self, fates: Iterable[DatagramFate], now: float, srtts: Sequence[float | None]
    ) -> list[bytes]:
        """Take the connection's datagram fates: the packets to re-send now."""
        packets: list[bytes] = []
        deadline: float | None = None
        for token, acked, left_at in fates:
            record = self.sent.fate(token)
            if acked:
                continue
            self.counters["datagrams_lost"] += 1
            if record is None or record.copy or record.resent:
                continue
            stranded = isinstance(record.path, int) and record.path < self.epoch
            if stranded and not self.resilience.reinjection:
                continue
            if not stranded and not self.resilience.loss_hiding:
                continue
            if deadline is None:
                deadline = resend_deadline(self.resilience.resend_deadline, srtts, stranded)
            if now - (record.sent_at if left_at is None else left_at) > deadline:
                self.counters["resend_too_late"] += 1
                continue
            packets.append(record.packet)
            self.counters["reinjected" if stranded else "loss_hidden"] += 1
        return packets

    def copy_token(self, packet: bytes, now: float) -> int:
        """The token of a re-send (tracked so its own loss is counted, never re-sent)."""
        return self.sent.add(SentPacket(packet, None, self.epoch, now, copy=True))


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PACKETS",
    "RESEND_COUNTERS",
    "RESEND_DEADLINE_MAX",
    "RESEND_DEADLINE_MIN",
    "STRANDED_DEADLINE_MIN",
    "Resilience",
    "SentPacket",
    "SentPackets",
    "TunnelResender",
    "new_counters",
    "resend_deadline",
]
