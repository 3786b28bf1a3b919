"""MASQUE CONNECT-IP as a mode of the programs (issue 18, stage 2), sans-I/O.

Why this shape: the agents (tunnel/agents/) drive one TunnelConnection per QUIC connection and
call send_packet / max_packet_size / close on it. MasqueConnection is a TunnelConnection that,
when ALPN "h3" was negotiated (TunnelMode.MASQUE), hands every QUIC event to a CONNECT-IP
session of tunnel/protocol/connect_ip.py instead of the drafts' framing, and maps what the
session says back onto the events the agents already handle (PacketReceived,
ConnectionClosed) plus MasqueOpened. On any other ALPN it is exactly a TunnelConnection, so the
concentrator makes one for every connection before it knows the ALPN.

- Client: the ConnectIpClient is made in the constructor (the caller made it right after
  connect(): its H3 layer queues SETTINGS there, RFC 9114 §6.2.1). The tunnel counts as open
  (MasqueOpened) once the 2xx came with the proxy's ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT
  (RFC 9484 §4.5, §4.7.1, §4.7.3): the agent needs the address for its TUN.
- Proxy: `open_proxy(policy)`, called by the concentrator at HandshakeCompleted once the
  client's certificate was verified (mutual TLS at connection level, README "MASQUE
  CONNECT-IP"). Stream events that came before (0-RTT) are held, bounded, and replayed.
- The request stream's end, a refusal, a malformed capsule, or IPv6 no longer fitting in the
  datagram budget (RFC 9484 §7.2, after the agents' PathMtuFell) end the tunnel; one connection
  carries one tunnel (connect_ip.py), so the QUIC connection is closed with it and the client
  reconnects as after any loss of its connection.
- No Access Reports (MASQUE has none): send_access_report sends nothing.
- Datagram fates (issue 12's re-sends) are not offered: the datagrams go through aioquic's
  H3 layer without a token, as connect-ip-go sends them; the agents make no resender for it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from aioquic.quic import events as quic_events
from aioquic.quic.connection import QuicConnection

from tunnel.protocol.codel import CoDel
from tunnel.protocol.connect_ip import (
    AddressesAssigned,
    ConnectIpClient,
    ConnectIpCounters,
    ConnectIpEvent,
    ConnectIpServer,
    ProxyPolicy,
    RoutesAdvertised,
    TunnelClosed,
    TunnelRefused,
)
from tunnel.protocol.connect_ip import PacketReceived as IpPacketReceived
from tunnel.protocol.connection import (
    DEFAULT_MAX_PENDING_DATAGRAMS,
    ModeNegotiated,
    PacketReceived,
    SendResult,
    SendStatus,
    TunnelConnection,
    TunnelCounters,
    TunnelEvent,
)
from tunnel.protocol.connection import DropReason as TunnelDropReason
from tunnel.wire.capsule import H3ErrorCode
from tunnel.wire.connect_ip import IPAddressRange, IPNetwork
from tunnel.wire.messages import AccessId, AccessSignal
from tunnel.wire.modes import ALPN_MASQUE, TunnelMode

MAX_EARLY_EVENTS: Final = 64
"""Stream events held for the proxy before the client is authenticated (0-RTT): more are
dropped (the H3 layer then misses them and the client's request fails, as it should)."""
_ETHERTYPES: Final = {4: 0x0800, 6: 0x86DD}
# The concentrator makes a MasqueConnection for every connection, so the overrides below sit on
# the drafts' modes' per-packet path too: one attribute test each, no property call.
_MASQUE: Final = TunnelMode.MASQUE


@dataclass(frozen=True)
class MasqueOpened:
    """Client: the proxy accepted the request and told us our addresses and its routes."""

    prefixes: tuple[IPNetwork, ...]
    routes: tuple[IPAddressRange, ...]


class MasqueCounters(TunnelCounters):
    """The TunnelCounters keys (for the status files and closed totals) filled from the
    CONNECT-IP session's counters, plus its own drop reasons (`masque_drops_<reason>`)."""

    def __init__(self) -> None:
        super().__init__()
        self.session: ConnectIpCounters | None = None

    def as_dict(self) -> dict[str, int]:
        flat = super().as_dict()
        session = self.session
        if session is None:
            return flat
        flat["packets_out"] += session.packets_out
        flat["bytes_out"] += session.bytes_out
        flat["packets_in"] += session.packets_in
        flat["bytes_in"] += session.bytes_in
        for name, count in session.as_dict().items():
            if name.startswith("drops_") or name in ("capsules_skipped", "h3_excessive"):
                flat[f"masque_{name}"] = count
        return flat


class MasqueConnection(TunnelConnection):
    """A TunnelConnection that speaks CONNECT-IP on ALPN h3 (see the module docstring).

    :param authority: client only: the :authority of the request (the concentrator's name);
        None on the concentrator's side.
    :param request_versions: client only: the IP versions to ask an address of.
    """

    def __init__(
        self,
        quic: QuicConnection,
        max_pending_datagrams: int = DEFAULT_MAX_PENDING_DATAGRAMS,
        queue_delay: CoDel | None = None,
        authority: str | None = None,
        request_versions: tuple[int, ...] = (4, 6),
    ) -> None:
        super().__init__(quic, max_pending_datagrams, queue_delay)
        self.counters: MasqueCounters = MasqueCounters()
        self._max_pending_datagrams = max_pending_datagrams
        self.connect_ip: ConnectIpClient | ConnectIpServer | None = None
        self._early: list[quic_events.QuicEvent] = []
        self._assigned: AddressesAssigned | None = None
        self._routes: RoutesAdvertised | None = None
        self.opened: MasqueOpened | None = None
        if authority is not None and quic.configuration.is_client:
            client = ConnectIpClient(
                quic,
                authority,
                request_versions=request_versions,
                max_pending_datagrams=max_pending_datagrams,
            )
            self._attach(client)

    @property
    def is_masque(self) -> bool:
        return self._mode is _MASQUE

    def _attach(self, session: ConnectIpClient | ConnectIpServer) -> None:
        self.connect_ip = session
        self.counters.session = session.counters

    def open_proxy(self, policy: ProxyPolicy) -> list[TunnelEvent]:
        """Concentrator, once the client is admitted: serve its CONNECT-IP request with
        `policy` (its addresses and routes). Returns the events of the held stream events."""
        if self.connect_ip is not None or self.closed:
            return []
        self._attach(
            ConnectIpServer(self.quic, policy, max_pending_datagrams=self._max_pending_datagrams)
        )
        held, self._early = self._early, []
        out: list[TunnelEvent] = []
        for event in held:
            out += self.handle_event(event)
        return out

    # -- events ------------------------------------------------------------------------------

    def _on_protocol_negotiated(self, alpn: str | None) -> list[TunnelEvent]:
        if alpn not in ALPN_MASQUE:
            return super()._on_protocol_negotiated(alpn)
        # RFC 9484 carries IP packets (its payload is never Ethernet) and has no stream mode
        self._mode, self._alpn = TunnelMode.MASQUE, alpn
        return [ModeNegotiated(TunnelMode.MASQUE, False, alpn)]

    def handle_event(self, event: quic_events.QuicEvent) -> list[TunnelEvent]:
        if self._mode is not _MASQUE or isinstance(
            event, quic_events.ConnectionTerminated | quic_events.ProtocolNegotiated
        ):
            return super().handle_event(event)
        if self.closed:
            return []
        session = self.connect_ip
        if session is None:
            if (
                isinstance(
                    event,
                    quic_events.StreamDataReceived
                    | quic_events.StreamReset
                    | quic_events.StopSendingReceived,
                )
                and len(self._early) < MAX_EARLY_EVENTS
            ):
                self._early.append(event)
            return []
        out: list[TunnelEvent] = []
        for session_event in session.handle_event(event):
            out += self._translate(session_event)
        return out

    def _translate(self, event: ConnectIpEvent) -> list[TunnelEvent]:
        if isinstance(event, IpPacketReceived):
            packet = event.packet
            return [PacketReceived(packet, _ETHERTYPES.get(packet[0] >> 4, 0), None)]
        if isinstance(event, AddressesAssigned):
            self._assigned = event
        elif isinstance(event, RoutesAdvertised):
            self._routes = event
        elif isinstance(event, TunnelRefused):
            return [
                self.close(
                    f"the CONNECT-IP request was refused: {event.reason}",
                    error_code=H3ErrorCode.H3_NO_ERROR,
                )
            ]
        elif isinstance(event, TunnelClosed):
            code = event.error_code
            return [
                self.close(
                    f"the CONNECT-IP tunnel ended: {event.reason}",
                    error_code=H3ErrorCode.H3_NO_ERROR if code is None else code,
                )
            ]
        session = self.connect_ip
        if (
            self.opened is None
            and isinstance(session, ConnectIpClient)
            and session.is_open
            and self._assigned is not None
            and self._routes is not None
        ):
            self.opened = MasqueOpened(self._assigned.prefixes, self._routes.ranges)
            return [self.opened]  # type: ignore[list-item]  # an event the agents know
        return []

    # -- datagrams ---------------------------------------------------------------------------

    def max_packet_size(self) -> int:
        if self._mode is not _MASQUE:
            return super().max_packet_size()
        session = self.connect_ip
        return 0 if session is None or self.closed else session.max_packet_size()

    def send_packet(
        self,
        packet: bytes,
        packet_tag: int | None = None,
        token: Hashable | None = None,
        now: float | None = None,
        resend: bool = False,
    ) -> SendResult:
        if self._mode is not _MASQUE:
            return super().send_packet(packet, packet_tag, token, now, resend)
        session = self.connect_ip
        if session is None or self.closed:
            self.counters.drop(TunnelDropReason.NOT_READY)
            return SendResult(SendStatus.NOT_READY, 0)
        return session.send_packet(packet)

    # -- what MASQUE does not have -----------------------------------------------------------

    def send_access_report(self, access_id: AccessId, signal: AccessSignal) -> int:
        if self._mode is not _MASQUE:
            return super().send_access_report(access_id, signal)
        return -1  # MASQUE has no Access Report: nothing is sent (no stream: -1)

    def access_report_acknowledged(self, stream_id: int) -> bool:
        if stream_id < 0:
            return True
        return super().access_report_acknowledged(stream_id)

    def cancel_access_report(self, stream_id: int) -> None:
        if stream_id >= 0:
            super().cancel_access_report(stream_id)


def proxy_policy(prefixes: tuple[IPNetwork, ...], authority: str | None = None) -> ProxyPolicy:
    """The concentrator's CONNECT-IP policy for one client: its prefixes (ADDRESS_ASSIGN, the
    only sources it may use, RFC 9484 §11) and every destination of each IP version it has an
    address of (ROUTE_ADVERTISEMENT): the concentrator routes anything a tunnel-mode client may
    send; its host guard, ingress filter and rate limit apply afterwards as for tunnel mode."""
    versions = sorted({p.version for p in prefixes})
    routes = tuple(IPAddressRange.of_network("0.0.0.0/0" if v == 4 else "::/0") for v in versions)
    return ProxyPolicy(prefixes, routes, authority)


__all__ = ["MasqueConnection", "MasqueCounters", "MasqueOpened", "proxy_policy"]
