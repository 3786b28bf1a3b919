"""One tunnelling session over several TunnelConnections, one per access network
(draft-piraux-intarea-quic-tunnel-session-00 §4.1, "Joining a tunneling session").

Sans-I/O, like TunnelConnection: the I/O layer passes `now` in. On the sending side
the session stamps every packet with the session-wide Packet Tag (§4.1.1: "a value
counting the datagrams sent over all QUIC tunnel connections") and lets the
scheduler pick the connection; on the receiving side it puts the packets of all its
connections back in tag order with a ReorderBuffer whose gap timeout follows the
paths' smoothed RTTs.

Availability of an access comes from two places, both through `set_available`: the
client's own view of its access networks, and on the concentrator the Access Reports
the client sends (`on_event` applies them, -tunnel-00 §6). A closed connection is
never chosen.

The multipath engine (issue 12; tunnel/session/resend.py, path_health.py), each part off
unless its `Resilience` switch is on:
- a path's health (`set_health`): a DEAD path is not chosen; when a path turns SUSPECT or
  DEAD, the packets in flight on it are re-sent on another path (reinjection), and those of
  them still waiting in its connection's queue are taken out of it; when it turns DEAD (or its
  access unavailable) everything still queued there is, re-sent or not: it would leave only
  once the path heals, seconds late and with a Packet Tag the receiver may place a lap of the
  16-bit tag space wrong (found by a review; STALE_TAG_DISTANCE);
- while a path is SUSPECT, a copy of every packet the scheduler gives it goes on another path,
  and packets of at most `duplicate_up_to` bytes always go on two (duplication);
- datagrams declared lost (`on_fates`) are re-sent once on another path (reinjection), or on
  the same one when no other is available (loss hiding), within the re-send deadline;
- every re-send and copy carries the original's Packet Tag: the receiver's reorder buffer puts
  it in its place and drops a second copy (counted as `duplicate` in its statistics), and the
  adaptive reorder timeout covers one re-send (ReorderBuffer.timeout_from_rtts).
Counters per path (`path_counters`) and in total (`counters`): tunnel/session/resend.py
RESEND_COUNTERS, counted on the path the original was sent on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Final

from tunnel.protocol.connection import (
    AccessReportReceived,
    PacketReceived,
    SendResult,
    SendStatus,
    TunnelConnection,
    TunnelEvent,
)
from tunnel.protocol.quic_ext import DatagramFate
from tunnel.session.path_health import PathHealth
from tunnel.session.release_pacer import ReleasePacer
from tunnel.session.reorder import (
    TAG_HALF,
    PacketTagCounter,
    ReorderBuffer,
    ReorderStats,
    serial_distance,
)
from tunnel.session.resend import (
    RESEND_DEADLINE_MAX,
    Resilience,
    SentPacket,
    SentPackets,
    new_counters,
    resend_deadline,
)
from tunnel.session.scheduler import PathInfo, Scheduler, earliest_path
from tunnel.wire.messages import AccessId, AccessSignal

STALE_TAG_DISTANCE: Final = TAG_HALF // 2
"""A re-send whose Packet Tag lies this many tags or more behind the next one is not made:
the receiver tells ahead from behind by half the tag space (TAG_HALF), so a tag that old could
land a lap wrong there, held as ahead and skipping real packets to reach it (with
`resend_deadline` up to 10 s, about 1.6 Gbit/s of 1,280-byte packets gets there)."""

TIMEOUT_REFRESH: Final = 0.01
"""Seconds between recomputations of the reorder timeout and re-send deadlines on the
per-packet path (TunnelSession._refresh_timeout)."""


@dataclass
class _Member:
    path_id: int
    connection: TunnelConnection
    access_id: AccessId | None
    weight: int
    health: PathHealth = PathHealth.ALIVE
    counters: Counter[str] = field(default_factory=new_counters)
    # the peer's Packet Tags on it are one sequence (quic_tunnel_tag_sequence): reordered and
    # deduplicated; else opaque (session draft §4.1.1), delivered as they come
    sequenced: bool = True


@dataclass(frozen=True)
class SessionSend:
    """Outcome of TunnelSession.send_packet."""

    connection: TunnelConnection | None
    """The connection chosen, None when no path could take the packet."""
    path_id: int | None
    result: SendResult | None
    """The connection's answer (None when no path was chosen)."""
    copies: tuple[TunnelConnection, ...] = ()
    """Connections that also got a copy (duplication): transmit them too."""

    @property
    def sent(self) -> bool:
        return self.result is not None and self.result.sent


class TunnelSession:
    """Groups TunnelConnections of one session (see the module docstring).

    :param scheduler: picks a path per packet (tunnel.session.scheduler.make_scheduler).
    :param reorder: receive-side buffer (ReorderBuffer.from_setting); by default an adaptive
        one, whose gap timeout follows the paths' RTTs.
    :param session_id: the Session ID, for logs and the I/O layer's bookkeeping.
    :param resilience: the multipath engine's switches (default: all off).
    :param release_pacing: pace what the reorder buffer releases after a gap
        (release_pacer.py; `[limits] release_pacing`).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        reorder: ReorderBuffer[bytes] | None = None,
        session_id: bytes | None = None,
        resilience: Resilience | None = None,
        release_pacing: bool = True,
    ) -> None:
        self.scheduler = scheduler
        self.reorder: ReorderBuffer[bytes] = (
            reorder if reorder is not None else ReorderBuffer(adaptive=True)
        )
        # what the buffer releases at once after a gap leaves paced (release_pacer.py)
        self.pacer: ReleasePacer[bytes] = ReleasePacer(release_pacing)
        self.session_id = session_id
        self.resilience = resilience if resilience is not None else Resilience()
        self.tags = PacketTagCounter()
        self._members: dict[int, _Member] = {}
        self._next_path_id = 0
        self._available: dict[AccessId, bool] = {}
        self.sent: SentPackets | None = SentPackets() if self.resilience.tracks else None
        self.counters: Counter[str] = new_counters()
        self._deadline = resend_deadline(self.resilience.resend_deadline, ())
        self._refresh_at = float("-inf")  # _refresh_timeout
        # Until when a re-send from another path may still come (_refresh_timeout): a path
        # joining counts already, and one that just went strands packets that the sender
        # re-sends on the one left, up to RESEND_DEADLINE_MAX after they left.
        self._joining = False
        self._several_paths_until = float("-inf")
        self._stranded_deadline = resend_deadline(self.resilience.resend_deadline, (), True)
        # how long a packet is remembered: never longer than any re-send may come
        self._keep = max(RESEND_DEADLINE_MAX, self.resilience.resend_deadline or 0.0)
        self._duplicate_up_to = self.resilience.duplicate_up_to
        self._duplicating = bool(self._duplicate_up_to)

    # -- membership --------------------------------------------------------------------

    def add_connection(
        self, connection: TunnelConnection, access_id: AccessId | None = None, weight: int = 1
    ) -> int:
        """Add a connection (one access network); returns its path id."""
        if weight < 1:
            raise ValueError(f"a path weight must be >= 1, got {weight}")
        if self._member_of(connection) is not None:
            raise ValueError("this connection is already part of the session")
        path_id = self._next_path_id
        self._next_path_id += 1
        # Only a peer that said its tags are a sequence has them read as one; a QUIC
        # connection that cannot say (not ours: a test's plain aioquic) is taken as ours.
        announced = getattr(connection.quic, "peer_tag_sequence", True)
        self._members[path_id] = _Member(
            path_id, connection, access_id, weight, sequenced=announced is not False
        )
        return path_id

    def expect_join(self, joining: bool) -> None:
        """Whether a connection is joining the session (its Join Session sent, not answered):
        the peer may already send on it (session draft §6.1.3 — it answers, then schedules
        on it), so a gap may be filled from there and the reorder buffer must wait as for
        any second path."""
        if joining != self._joining:
            self._joining = joining
            self._refresh_at = float("-inf")

    def remove_connection(self, connection: TunnelConnection) -> None:
        member = self._member_of(connection)
        if member is None:
            raise ValueError("this connection is not part of the session")
        del self._members[member.path_id]
        self._update_duplicating()

    def set_access(self, connection: TunnelConnection, access_id: AccessId) -> None:
        """The access network a member connection runs over, learned after it joined (the
        concentrator infers it from Access Reports, tunnel/session/access_mapping.py). The
        path keeps its id, so what it has in flight stays its own (re-sent if it fails), and
        its health, counters and scheduler state."""
        member = self._member_of(connection)
        if member is None:
            raise ValueError("this connection is not part of the session")
        member.access_id = access_id

    @property
    def connections(self) -> list[TunnelConnection]:
        return [member.connection for member in self._members.values()]

    def path_id_of(self, connection: TunnelConnection) -> int | None:
        member = self._member_of(connection)
        return None if member is None else member.path_id

    def set_available(
        self, access_id: AccessId, available: bool, now: float
    ) -> set[TunnelConnection]:
        """Mark an access network (un)available: its paths are skipped while unavailable.
        An access that becomes unavailable (a link down at the client, its Access Report at
        the concentrator) strands what was in flight on its paths: re-sent at once on another
        path (reinjection), not after loss recovery or the failure detector gave up on them —
        meanwhile the peer's reorder buffer would hold every later packet behind their tags
        (measured in memory: a 64 ms delivery gap on a WiFi link-down with 5G at 10 ms, where
        the report and the first packet over 5G take 20). Returns the connections given
        packets (transmit them)."""
        was = self.is_available(access_id)
        self._available[access_id] = available
        touched: set[TunnelConnection] = set()
        if was and not available:
            for member in self._members.values():
                # whatever its health: a suspect path is still chosen, and what it carried
                # since its verdict was doubled up only with duplication on (what was is
                # skipped, as is what was re-sent already)
                if member.access_id == access_id:
                    self._strand(member, now, touched, dead=True)
        return touched

    def is_available(self, access_id: AccessId) -> bool:
        return self._available.get(access_id, True)

    def health_of(self, connection: TunnelConnection) -> PathHealth:
        member = self._member_of(connection)
        return PathHealth.ALIVE if member is None else member.health

    def path_counters(self, connection: TunnelConnection) -> dict[str, int]:
        """The multipath engine's counters of one path (module docstring)."""
        member = self._member_of(connection)
        return {} if member is None else dict(member.counters)

    def set_health(
        self, connection: TunnelConnection, health: PathHealth, now: float
    ) -> set[TunnelConnection]:
        """The failure detector's verdict on a path (tunnel/session/path_health.py): a DEAD
        path is not chosen; a path that stops being ALIVE has its packets in flight re-sent on
        another path (reinjection), and so has a path found DEAD after being SUSPECT: it was
        still chosen meanwhile, and without duplication nothing else covers what it carried.
        Returns the connections given packets (transmit them)."""
        member = self._member_of(connection)
        if member is None or member.health is health:
            return set()
        was, member.health = member.health, health
        self._update_duplicating()
        touched: set[TunnelConnection] = set()
        if was is PathHealth.ALIVE or health is PathHealth.DEAD:
            self._strand(member, now, touched, dead=health is PathHealth.DEAD)
        return touched

    def _strand(
        self, member: _Member, now: float, touched: set[TunnelConnection], *, dead: bool
    ) -> None:
        """What is in flight on `member`'s path will not arrive: re-send it on another path
        (once: a record re-sent is never re-sent again) and take what was re-sent out of the
        path's queue if it still waits there; a `dead` path's queue is emptied (module
        docstring)."""
        sent = self.sent
        resent: set[int] = set()
        if sent is not None and self.resilience.reinjection:
            self._refresh_timeout(now, force=True)
            for token, record in sent.in_flight_on(member.path_id):
                # marked only once re-sent: a record no path could take is still loss hiding's
                # should it be lost (a suspect verdict with no other path used to end loss
                # hiding for everything in flight, found by a review)
                if self._resend(record, member, now, touched, same_path=False):
                    record.resent = True
                    resent.add(token)
        if not (dead or resent):
            return
        gone = member.connection.drop_queued_datagrams(lambda token: dead or token in resent)
        if sent is not None:
            for dropped in gone:
                sent.fate(dropped)  # never sent: no fate will come

    def paths(self, packet_size: int | None = None, resend: bool = False) -> list[PathInfo]:
        """What the scheduler sees, one PathInfo per connection, for sending a packet of
        `packet_size` bytes (None: the largest packet the connection takes); for a `resend`,
        a connection whose queue is at its cap can still take it (send_packet)."""
        infos: list[PathInfo] = []
        # Failover ignores the windows; skipping them saves a few microseconds per packet.
        windows = self.scheduler.uses_window
        for member in self._members.values():
            connection = member.connection
            available = (
                not connection.closed
                and connection.mode is not None
                and member.health is not PathHealth.DEAD
            )
            if member.access_id is not None:
                available = available and self.is_available(member.access_id)
            window_space = cwnd = backlog = None
            rate = min_rtt = None
            if windows:
                size = connection.max_packet_size() if packet_size is None else packet_size
                backlog = connection.bytes_in_flight + connection.queued_datagram_bytes
                cwnd = connection.congestion_window
                window_space = cwnd - backlog - connection.packet_bytes(size)
                rate = connection.send_rate
                min_rtt = connection.min_rtt
            infos.append(
                PathInfo(
                    path_id=member.path_id,
                    access_id=member.access_id,
                    available=available,
                    srtt=connection.srtt,
                    weight=member.weight,
                    can_send=(
                        connection.can_resend_datagram if resend else connection.can_send_datagram
                    ),
                    window_space=window_space,
                    cwnd=cwnd,
                    rate=rate,
                    min_rtt=min_rtt,
                    backlog=backlog,
                )
            )
        return infos

    def max_packet_size(self) -> int:
        """The smallest budget of the open connections: the TUN MTU that fits every path."""
        sizes = [c.max_packet_size() for c in self.connections if not c.closed]
        sizes = [size for size in sizes if size > 0]
        return min(sizes, default=0)

    # -- sending -----------------------------------------------------------------------

    def send_packet(self, packet: bytes, now: float) -> SessionSend:
        """Tag `packet` and send it on the path the scheduler picks (and a copy on another
        path when it is small, or when the chosen path is suspect: module docstring).

        The tag is consumed only when a connection accepted the packet, so a refused
        packet leaves no gap for the receiver to wait on. `now` refreshes the reorder
        timeout from the current RTTs.
        """
        self._refresh_timeout(now)
        infos = self.paths(len(packet))
        path_id = self.scheduler.choose(infos)
        if path_id is None and self._duplicating and self._suspect_full(infos):
            # The path chosen while suspect is full (failover keeps to the primary until it is
            # dead): the copy duplication would have put on another path carries it alone,
            # rather than every packet being dropped until the verdict (found by a review).
            path_id = earliest_path(infos)
        if path_id is None or path_id not in self._members:
            return SessionSend(None, None, None)
        member = self._members[path_id]
        tag = self.tags.peek()
        result, record = self._send(member, packet, tag, now, copy=False)
        if not result.sent:
            return SessionSend(member.connection, path_id, result)
        self.tags.next()
        if self._duplicating and (
            len(packet) <= self._duplicate_up_to
            or (member.health is PathHealth.SUSPECT and self.resilience.duplicate_suspect)
        ):
            other = earliest_path(infos, exclude=path_id)
            if other is not None:
                copy = self._members[other]
                copied, _ = self._send(copy, packet, tag, now, copy=True)
                if copied.sent:
                    if record is not None:
                        record.doubled = True
                    member.counters["duplicated"] += 1
                    self.counters["duplicated"] += 1
                    return SessionSend(member.connection, path_id, result, (copy.connection,))
        return SessionSend(member.connection, path_id, result)

    def on_fates(
        self, connection: TunnelConnection, fates: Iterable[DatagramFate], now: float
    ) -> set[TunnelConnection]:
        """The datagram fates of one member connection (TunnelConnection.take_datagram_fates):
        lost packets are re-sent (module docstring). Returns the connections given packets."""
        touched: set[TunnelConnection] = set()
        sent = self.sent
        if sent is None:
            return touched
        refreshed = False
        for token, acked, left_at in fates:
            record = sent.fate(token)
            if acked:
                continue
            self.counters["datagrams_lost"] += 1  # forgotten (evicted) or not, as tunnel mode
            if record is None:
                continue
            source = self._members.get(record.path) if isinstance(record.path, int) else None
            counters = source.counters if source is not None else None
            if counters is not None:
                counters["datagrams_lost"] += 1
            if record.copy or record.resent:
                continue
            if not refreshed:
                self._refresh_timeout(now, force=True)
                refreshed = True
            self._resend(record, source, now, touched, same_path=True, left_at=left_at)
        return touched

    def _resend(
        self,
        record: SentPacket,
        source: _Member | None,
        now: float,
        touched: set[TunnelConnection],
        *,
        same_path: bool,
        left_at: float | None = None,
    ) -> bool:
        """Send `record` again, once: on another path (reinjection) or, for a loss when no
        other path is available, on its own (loss hiding); within the deadline, counted from
        when it left (`left_at`, from its fate) or else from when it was queued, and while its
        tag is not STALE_TAG_DISTANCE behind. Whether it went."""
        resilience = self.resilience
        counters = source.counters if source is not None else Counter[str]()
        deadline = self._deadline if same_path else self._stranded_deadline
        too_old = now - (record.sent_at if left_at is None else left_at) > deadline
        if too_old or (
            record.tag is not None
            and serial_distance(record.tag, self.tags.peek()) >= STALE_TAG_DISTANCE
        ):
            counters["resend_too_late"] += 1
            self.counters["resend_too_late"] += 1
            return False
        infos = self.paths(len(record.packet), resend=True)
        target: int | None = None
        kind = "reinjected"
        if resilience.reinjection:
            target = earliest_path(infos, exclude=source.path_id if source else None)
        if target is None and same_path and resilience.loss_hiding and source is not None:
            own = source.path_id
            target = next((i.path_id for i in infos if i.path_id == own and i.usable), None)
            kind = "loss_hidden"
        member = self._members.get(target) if target is not None else None
        sent = False
        if member is not None:
            result, _ = self._send(member, record.packet, record.tag, now, copy=True, resend=True)
            sent = result.sent
        if member is None or not sent:
            counters["resend_no_path"] += 1
            self.counters["resend_no_path"] += 1
            return False
        counters[kind] += 1
        self.counters[kind] += 1
        touched.add(member.connection)
        return True

    def _send(
        self,
        member: _Member,
        packet: bytes,
        tag: int | None,
        now: float,
        copy: bool,
        resend: bool = False,
    ) -> tuple[SendResult, SentPacket | None]:
        """Send on `member`'s connection, remembering it (its record, if one is kept)."""
        sent = self.sent
        token: int | None = None
        record = None
        if sent is not None:
            sent.expire(now - self._keep)
            record = SentPacket(packet, tag, member.path_id, now, copy=copy)
            token = sent.add(record)
        result = member.connection.send_packet(
            packet, packet_tag=tag, token=token, now=now, resend=resend
        )
        if token is not None and result.status is not SendStatus.SENT:
            sent.fate(token)  # type: ignore[union-attr]  # never queued: no fate will come
            record = None
        return result, record

    def _suspect_full(self, infos: Iterable[PathInfo]) -> bool:
        """A SUSPECT path is available but its queue is at its cap, with duplicate_suspect on."""
        if not self.resilience.duplicate_suspect:
            return False
        members = self._members
        return any(
            info.available
            and not info.can_send
            and members[info.path_id].health is PathHealth.SUSPECT
            for info in infos
        )

    def _update_duplicating(self) -> None:
        self._duplicating = bool(self._duplicate_up_to) or (
            self.resilience.duplicate_suspect
            and any(m.health is PathHealth.SUSPECT for m in self._members.values())
        )

    # -- receiving ---------------------------------------------------------------------

    def on_packet(
        self, connection: TunnelConnection, event: PacketReceived, now: float
    ) -> list[bytes]:
        """Feed a received packet; returns the packets now deliverable, in tag order."""
        member = self._member_of(connection)
        if member is None:
            raise ValueError("packet from a connection that is not part of the session")
        if event.packet_tag is None or not member.sequenced:  # nothing to reorder by
            return [event.packet]
        self._refresh_timeout(now)
        self.pacer.arrived(now)
        return self.pacer.release(self.reorder.push(event.packet_tag, event.packet, now), now)

    def on_event(self, connection: TunnelConnection, event: TunnelEvent, now: float) -> list[bytes]:
        """Feed any event of a member connection: packets are reordered, Access Reports
        update availability (re-sends of what an unavailable access stranded are queued on the
        other connections: transmit them all); returns the packets now deliverable."""
        if isinstance(event, PacketReceived):
            return self.on_packet(connection, event, now)
        if isinstance(event, AccessReportReceived):
            self.set_available(event.access_id, event.signal is AccessSignal.AVAILABLE, now)
        return []

    def poll(self, now: float) -> list[bytes]:
        """Release packets whose gap timed out, and paced ones whose turn came; call at
        next_deadline()."""
        self._refresh_timeout(now)
        released = self.reorder.poll(now)
        return self.pacer.release(released, now) if released else self.pacer.poll(now)

    def next_deadline(self) -> float | None:
        gap, paced = self.reorder.next_deadline(), self.pacer.next_deadline()
        if gap is None or paced is None:
            return paced if gap is None else gap
        return min(gap, paced)

    def flush(self) -> list[bytes]:
        """Release everything held or paced (e.g. when the session ends), in order."""
        return self.pacer.flush() + self.reorder.flush()

    @property
    def reorder_stats(self) -> ReorderStats:
        return self.reorder.stats

    def reorder_counters(self) -> dict[str, int]:
        """The reorder buffer's counters and the pacer's, for a program's status."""
        return {**asdict(self.reorder.stats), "paced": self.pacer.paced}

    # -- internals ---------------------------------------------------------------------

    def _member_of(self, connection: TunnelConnection) -> _Member | None:
        for member in self._members.values():
            if member.connection is connection:
                return member
        return None

    def _refresh_timeout(self, now: float, force: bool = False) -> None:
        """The reorder timeout and the re-send deadlines from the members' RTTs, at most once
        per TIMEOUT_REFRESH unless `force`d (a loss or a failed path: act on the latest)."""
        # Per packet this took ~8 % of an in-memory session run's CPU (cProfile; issue 14); a
        # smoothed RTT moves by an eighth of a sample per ACK, so 10 ms old is as good as new.
        if not force and now < self._refresh_at:
            return
        self._refresh_at = now + TIMEOUT_REFRESH
        # A configured timeout stays as configured (it used to be overwritten here on every
        # packet, so limits.reorder_timeout had no effect).
        adaptive = self.reorder.adaptive
        if not adaptive and self.sent is None:
            return
        rtts = [
            rtt
            for member in self._members.values()
            if not member.connection.closed and (rtt := member.connection.srtt) is not None
        ]
        if self.sent is not None:
            self._deadline = resend_deadline(self.resilience.resend_deadline, rtts)
            self._stranded_deadline = resend_deadline(
                self.resilience.resend_deadline, rtts, stranded=True
            )
        if adaptive and rtts:
            # When a re-send may fill a gap, wait for it (issue 12); not when none can come.
            paths = self._joining + sum(
                not member.connection.closed for member in self._members.values()
            )
            if paths > 1:
                self._several_paths_until = now + RESEND_DEADLINE_MAX
            cover_resend = self.resilience.may_fill_a_gap(now < self._several_paths_until)
            self.reorder.set_timeout(ReorderBuffer.timeout_from_rtts(rtts, cover_resend))
