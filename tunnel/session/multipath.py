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
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.protocol.connection import (
    AccessReportReceived,
    PacketReceived,
    SendResult,
    TunnelConnection,
    TunnelEvent,
)
from tunnel.session.reorder import PacketTagCounter, ReorderBuffer, ReorderStats
from tunnel.session.scheduler import PathInfo, Scheduler
from tunnel.wire.messages import AccessId, AccessSignal


@dataclass
class _Member:
    path_id: int
    connection: TunnelConnection
    access_id: AccessId | None
    weight: int


@dataclass(frozen=True)
class SessionSend:
    """Outcome of TunnelSession.send_packet."""

    connection: TunnelConnection | None
    """The connection chosen, None when no path could take the packet."""
    path_id: int | None
    result: SendResult | None
    """The connection's answer (None when no path was chosen)."""

    @property
    def sent(self) -> bool:
        return self.result is not None and self.result.sent


class TunnelSession:
    """Groups TunnelConnections of one session (see the module docstring).

    :param scheduler: picks a path per packet (tunnel.session.scheduler.make_scheduler).
    :param reorder: receive-side buffer (ReorderBuffer.from_setting); by default an adaptive
        one, whose gap timeout follows the paths' RTTs.
    :param session_id: the Session ID, for logs and the I/O layer's bookkeeping.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        reorder: ReorderBuffer[bytes] | None = None,
        session_id: bytes | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.reorder: ReorderBuffer[bytes] = (
            reorder if reorder is not None else ReorderBuffer(adaptive=True)
        )
        self.session_id = session_id
        self.tags = PacketTagCounter()
        self._members: dict[int, _Member] = {}
        self._next_path_id = 0
        self._available: dict[AccessId, bool] = {}

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
        self._members[path_id] = _Member(path_id, connection, access_id, weight)
        return path_id

    def remove_connection(self, connection: TunnelConnection) -> None:
        member = self._member_of(connection)
        if member is None:
            raise ValueError("this connection is not part of the session")
        del self._members[member.path_id]

    @property
    def connections(self) -> list[TunnelConnection]:
        return [member.connection for member in self._members.values()]

    def path_id_of(self, connection: TunnelConnection) -> int | None:
        member = self._member_of(connection)
        return None if member is None else member.path_id

    def set_available(self, access_id: AccessId, available: bool) -> None:
        """Mark an access network (un)available: its paths are skipped while unavailable."""
        self._available[access_id] = available

    def is_available(self, access_id: AccessId) -> bool:
        return self._available.get(access_id, True)

    def paths(self, packet_size: int | None = None) -> list[PathInfo]:
        """What the scheduler sees, one PathInfo per connection, for sending a packet of
        `packet_size` bytes (None: the largest packet the connection takes)."""
        infos: list[PathInfo] = []
        # Failover ignores the windows; skipping them saves a few microseconds per packet.
        windows = self.scheduler.uses_window
        for member in self._members.values():
            connection = member.connection
            available = not connection.closed and connection.mode is not None
            if member.access_id is not None:
                available = available and self.is_available(member.access_id)
            window_space = cwnd = None
            if windows:
                size = connection.max_packet_size() if packet_size is None else packet_size
                window_space = connection.window_space - connection.packet_bytes(size)
                cwnd = connection.congestion_window
            infos.append(
                PathInfo(
                    path_id=member.path_id,
                    access_id=member.access_id,
                    available=available,
                    srtt=connection.srtt,
                    weight=member.weight,
                    can_send=connection.can_send_datagram,
                    window_space=window_space,
                    cwnd=cwnd,
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
        """Tag `packet` and send it on the path the scheduler picks.

        The tag is consumed only when a connection accepted the packet, so a refused
        packet leaves no gap for the receiver to wait on. `now` refreshes the reorder
        timeout from the current RTTs.
        """
        self._refresh_timeout()
        path_id = self.scheduler.choose(self.paths(len(packet)))
        if path_id is None or path_id not in self._members:
            return SessionSend(None, None, None)
        connection = self._members[path_id].connection
        result = connection.send_packet(packet, packet_tag=self.tags.peek())
        if result.sent:
            self.tags.next()
        return SessionSend(connection, path_id, result)

    # -- receiving ---------------------------------------------------------------------

    def on_packet(
        self, connection: TunnelConnection, event: PacketReceived, now: float
    ) -> list[bytes]:
        """Feed a received packet; returns the packets now deliverable, in tag order."""
        if self._member_of(connection) is None:
            raise ValueError("packet from a connection that is not part of the session")
        if event.packet_tag is None:  # tunnel mode: nothing to reorder
            return [event.packet]
        self._refresh_timeout()
        return self.reorder.push(event.packet_tag, event.packet, now)

    def on_event(self, connection: TunnelConnection, event: TunnelEvent, now: float) -> list[bytes]:
        """Feed any event of a member connection: packets are reordered, Access Reports
        update availability; returns the packets now deliverable."""
        if isinstance(event, PacketReceived):
            return self.on_packet(connection, event, now)
        if isinstance(event, AccessReportReceived):
            self.set_available(event.access_id, event.signal is AccessSignal.AVAILABLE)
        return []

    def poll(self, now: float) -> list[bytes]:
        """Release packets whose gap timed out; call at next_deadline()."""
        self._refresh_timeout()
        return self.reorder.poll(now)

    def next_deadline(self) -> float | None:
        return self.reorder.next_deadline()

    def flush(self) -> list[bytes]:
        """Release everything held (e.g. when the session ends)."""
        return self.reorder.flush()

    @property
    def reorder_stats(self) -> ReorderStats:
        return self.reorder.stats

    # -- internals ---------------------------------------------------------------------

    def _member_of(self, connection: TunnelConnection) -> _Member | None:
        for member in self._members.values():
            if member.connection is connection:
                return member
        return None

    def _refresh_timeout(self) -> None:
        # A configured timeout stays as configured (it used to be overwritten here on every
        # packet, so limits.reorder_timeout had no effect).
        if not self.reorder.adaptive:
            return
        rtts = [
            rtt
            for member in self._members.values()
            if not member.connection.closed and (rtt := member.connection.srtt) is not None
        ]
        if rtts:
            self.reorder.set_timeout(ReorderBuffer.timeout_from_rtts(rtts))
