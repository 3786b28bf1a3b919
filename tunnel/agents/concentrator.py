"""The concentrator's decisions, sans-I/O: who may connect, which session a connection joins,
which access it runs over, and where each packet goes (issue 11 §1). The asyncio program
(tunnel/aio/concentrator.py) owns the sockets, the TUN, the timers and the files; it feeds this
core and carries out its actions, as aioquic's asyncio layer drives a QuicConnection.

Inputs, each taking `now` (the loop's monotonic clock):
- `connection_opened(quic, now)`: the QUIC server accepted a connection; returns its
  TunnelConnection. Then `quic_event(connection, event, now)` for every aioquic event of it.
- `from_tun(packets, now)`: packets read from the TUN, forwarded to their clients.
- `handle_timer(now)` at `get_timer()`: reorder gaps given up, empty sessions expired.
- `host_addresses_changed(addresses)`, `host_macs_changed(macs)`, `reload_crl(now)` (SIGHUP),
  `shutdown(now)`.
Outputs: `next_action()` (Action, below: the edge transmits the connection it names, or rewrites
the status file), `write_tun(write_batch)` (the packets for the TUN, counted by what it accepted),
`get_timer()`, `status()` (the status file's clients, sessions, refusals, counters and CRL).

What happens to a connection (tunnel draft §4, tunnel-session draft §4.1):
1. The handshake offers the ALPNs of every mode; one of a mode not in `modes` is refused "mode"
   at handshake end with a reason naming the configured modes (before it, a close loses its
   reason phrase, RFC 9000 §10.2.3). aioquic itself closes a client offering no tunnel ALPN
   ("No common ALPN protocols"): also counted as refused "mode".
2. At HandshakeCompleted the client certificate is verified (tunnel/policy/client_auth.py:
   aioquic's server never checks it), against the CRL if any, and the name must be admitted
   (`[[client]]` or `[pool] admit`). Any failure, even an exception while checking, closes the
   connection at once with AUTH_FAILED_REASON (refused "auth"; the log and the Refused action
   say why). No connection carries anything before this. With `limits.zero_rtt` a connection
   that resumed with one of our session tickets (tunnel/policy/tickets.py) presents no
   certificate: it is the client the ticket was issued to, whose certificate (serial, expiry)
   is checked again, CRL included. A New/Join Session that came in 0-RTT is held until here;
   only a Join of the ticket's own session is answered before (`_early_session_request`).
   Too many clients (`max_clients`) or connections of one client
   (`max_connections_per_client`): refused "limit".
3. The client's mode is a strategy (`_TunnelMode`, `_SessionMode`). Tunnel mode: one connection
   per client, a new one replaces the old (a restarted client does not wait for the idle
   timeout). Session mode: New Session / Join Session (SessionTable; a Session ID of another
   client or an unknown one is answered UNKNOWN_SESSION_ID; a New Session from a client that has
   one replaces it and frees it at once; at most `max_sessions`); a memberless session is kept
   `session_idle_expiry` seconds for a rejoin. A connection of the other mode replaces them all.
4. Access Reports (tunnel draft §6), at most `access_reports_per_second` per client (the rest
   ignored and counted), switch an access off/on in the session at once. Which connection runs
   over which access is not signalled by the drafts: tunnel/session/access_mapping.py infers it
   and names the connections a report replaces, which are closed; a connection whose access
   is learned takes that access's controller (limits.congestion_control_wifi / _5g). A report
   on a lower stream than the last one applied for its access on the same connection is stale
   (it was sent earlier: streams are opened in order) and ignored, counted as
   `access_reports_stale`. Tunnel mode (issue 12): while every access the client reported is
   unavailable, its packets are held (bounded by `unavailable_hold` and `max_datagram_queue`)
   until a report of resumption.
5. The multipath engine (issue 12; README "The multipath engine"): each connection of a session
   is watched by the failure detector (tunnel/session/path_health.py: ACK silence -> suspect ->
   dead, PINGs with backoff until it answers); lost and stranded datagrams are re-sent
   (tunnel/session/resend.py), in tunnel mode on the path the client moved the connection to.

Forwarding (tunnel/policy/addresses.py has the address rules). From a client: link-scoped IPv6
dropped, a pool client's first source claims its address, the ingress filter (RFC 2827), the
`to_concentrator` policy (tunnel/policy/host_guard.py), the rate limit, then into the TUN; the
kernel routes it on. From the TUN: the client owning the destination, its rate limit, its
connection (tunnel mode) or its session's scheduler; too big for it -> ICMP frag-needed / Packet
Too Big written back into the TUN (tunnel/wire/icmp.py explains from which address).

Ethernet clients (README "L2 mode", `payloads`): a client announces its payload in the
quic_tunnel_payload transport parameter (tunnel draft §4: "signalled out of band"); one the
configuration does not serve is refused "payload" at handshake end with a sentence naming both.
An Ethernet client gets a TAP of its own on `l2.bridge` (TapOpened when it is admitted,
TapClosed when it is forgotten); its frames pass the MAC filter (tunnel/policy/mac_filter.py)
and the rate limit into that TAP (`write_taps`), and what the bridge sends into the TAP goes
back to it (`from_tap`). The IP rules above (addresses, RFC 2827, `to_concentrator`, Packet Too
Big) are IP's and do not apply to frames.
The reversed flow of stream mode (README "Stream mode"): a UDP packet of a stream-mode client to
port 5351 (PCP, RFC 6887) of one of the host's or the TUN's addresses is taken before the host
guard: a MAP request is decided by tunnel/policy/inbound.py and answered with a UDP packet back
through the tunnel; a granted mapping is the InboundMapped action (the program listens on the
external port, and opens a stream to `stream_connection(client)` for each connection it
accepts), its end (lifetime over, deleted, client gone) InboundUnmapped.

A bug met while handling one packet costs that packet only: counted as internal_errors and
logged with its traceback within a LogBudget. Lines a peer can cause at will (refusals, reports)
are rate-limited per key the same way.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_network
from typing import Any, Final

from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress, QuicConnection

from tunnel.config import ConcentratorConfig
from tunnel.policy.addresses import (
    AddressTable,
    Claim,
    IPNetwork,
    PoolClaims,
    allocate_pool_addresses,
    is_link_scoped_ipv6,
)
from tunnel.policy.client_auth import Admission, ClientAuthError, ClientVerifier
from tunnel.policy.client_slots import ClientSlots, LocalClientSlots
from tunnel.policy.host_guard import HostGuard
from tunnel.policy.inbound import LONG_ERROR_LIFETIME, Decision, InboundTable, Mapping
from tunnel.policy.ingress import IngressFilter
from tunnel.policy.log_budget import LogBudget
from tunnel.policy.mac_filter import MacFilter, MacOwners, mac_text
from tunnel.policy.qos import QosPolicy, qos_label, qos_value, set_dscp
from tunnel.policy.rate_limit import TokenBucket
from tunnel.policy.tickets import TICKETS_PER_CLIENT, TicketIdentity, TicketStore
from tunnel.protocol.connection import (
    INTERNAL_ERROR_REASON,
    STREAM_EVENTS,
    AccessReportReceived,
    ConnectionClosed,
    JoinRequested,
    ModeNegotiated,
    PacketReceived,
    SendResult,
    SendStatus,
    SessionRequested,
    TunnelConnection,
    TunnelEvent,
)
from tunnel.protocol.masque import MasqueConnection, proxy_policy
from tunnel.protocol.quic_ext import (
    DatagramFatesReady,
    PathMtuFell,
    TunnelQuicConnection,
    peer_certificate,
    resumed_identity,
)
from tunnel.session.access_mapping import infer_access
from tunnel.session.multipath import TunnelSession
from tunnel.session.path_health import PathHealth, PathMonitor
from tunnel.session.reorder import ReorderBuffer
from tunnel.session.resend import RESEND_COUNTERS, Resilience, TunnelResender
from tunnel.session.scheduler import make_scheduler
from tunnel.session.table import JoinError, SessionTable
from tunnel.wire.datagram import Payload
from tunnel.wire.errors import ControlErrorCode, DatagramError
from tunnel.wire.icmp import (
    MalformedPacketError,
    destination_address,
    packet_too_big,
    source_address,
)
from tunnel.wire.messages import ACCESS_NAMES, AccessId, AccessSignal, access_name
from tunnel.wire.modes import TunnelMode
from tunnel.wire.pcp import (
    PCP_SERVER_PORT,
    Opcode,
    PcpError,
    ResultCode,
    UdpDatagram,
    decode_request,
    error_response,
    is_droppable,
    parse_udp,
    udp_packet,
)
from tunnel.wire.pcp import MapResponse as PcpMapResponse

log = logging.getLogger("qtun.concentrator")

PCP_PER_SECOND: Final = 10.0
"""PCP requests a client gets answered per second (burst twice that); the rest are dropped and
counted (`pcp_dropped`): each may cost a probe bind per candidate port and a log line."""
PROBE_BACKOFF_MAX: Final = 1.0
# How long a session-mode connection may stay authenticated without a New Session or Join
# Session (session draft §4.1: the client "initiates the procedure"): its datagrams are
# dropped meanwhile (no session to put them in), and a peer that never sends one was left
# open for good with all its traffic dropped (found by a review); closed with the reason.
# Not a stream-mode connection, whose streams carry its TCP connections without a session.
SESSION_SETUP_TIMEOUT: Final = 10.0
"""Seconds between PINGs at most on a dead path of a session (the backoff's cap)."""
AUTH_FAILED_REASON: Final = (
    "client authentication failed: check the client's certificate, and the concentrator's log "
    "for why"
)
"""The only close reason an unauthenticated peer gets: the details (which name, which CA,
revoked or not) are for the operator's log, not for a stranger probing the concentrator."""
CRYPTO_ERROR_NO_APPLICATION_PROTOCOL: Final = 0x100 + 120  # RFC 9001 §4.8, TLS alert 120
_NO_EVENTS: Final[tuple[TunnelEvent, ...]] = ()
_PAYLOAD_WORDS: Final = {Payload.IP: "IP packets", Payload.ETHERNET: "Ethernet frames"}


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Refusal(Enum):
    """Why a connection was refused; the value is its key under the status file's `refused`."""

    AUTH = "auth"
    MODE = "mode"
    PAYLOAD = "payload"
    LIMIT = "limit"


class PeerQuicConnection(TunnelQuicConnection):
    """The concentrator's QuicConnection: remembers the address of the client's current path
    (also after a migration; not the address a probe came from, RFC 9000 §9.1), for the status
    file and the logs, and counts the changes of path (`path_changes`: tunnel mode re-sends what
    was stranded on the old one, issue 12)."""

    peer_address: NetworkAddress | None = None
    path_changes: int = 0

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        super().receive_datagram(data, addr, now)
        active = self.get_peer_address() or addr
        if self.peer_address is not None and active != self.peer_address:
            self.path_changes += 1
        self.peer_address = active


def describe_peer(quic: QuicConnection) -> str:
    addr = quic.peer_address if isinstance(quic, PeerQuicConnection) else None
    if addr is None:
        return "?"
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


# -- actions ------------------------------------------------------------------------------------
# The core has already queued what the peer must receive (CONNECTION_CLOSE, a Session ID TLV, a
# RESET_STREAM) on the TunnelConnection; the edge sends it (QuicDriver.transmit_soon).


@dataclass(frozen=True)
class Refused:
    """A connection was refused and closed. `reason` is the detail for the operator; an
    unauthenticated peer was told AUTH_FAILED_REASON only."""

    connection: TunnelConnection
    kind: Refusal
    reason: str


@dataclass(frozen=True)
class Closed:
    """The core closed an accepted connection (replaced by a newer one, shutdown)."""

    connection: TunnelConnection
    reason: str


@dataclass(frozen=True)
class SessionAnswered:
    """A New Session / Join Session was answered on the control stream (session draft §6.1):
    with `session_id`, or refused with `error` (the RESET_STREAM code) for `reason`."""

    connection: TunnelConnection
    session_id: bytes | None
    error: ControlErrorCode | None = None
    reason: str = ""


@dataclass(frozen=True)
class CrlReloaded:
    """`reload_crl` ran: `revoked` serials are in force (None: no tls.crl configured);
    `problem` says why a changed file was not taken (the last good list stays)."""

    revoked: int | None
    problem: str | None


@dataclass(frozen=True)
class Transmit:
    """The core queued frames on `connection` outside `from_tun` (a re-send, a copy, a
    probe, held packets released): send them."""

    connection: TunnelConnection


@dataclass(frozen=True)
class StatusChanged:
    """Something the status file shows changed: rewrite it (StatusWriter coalesces)."""


@dataclass(frozen=True)
class TapOpened:
    """An Ethernet client arrived (README "L2 mode"): give it a TAP device of its own on the
    bridge, read it with `from_tap(client, ...)`; `tap_failed` if it cannot be made. `mode`
    sizes the TAP: the client's device has its mode's budget less the Ethernet header, and a
    bridge drops a frame larger than the port it leaves by, so the two must agree."""

    client: str
    mode: TunnelMode


@dataclass(frozen=True)
class TapClosed:
    """The Ethernet client is gone (its last connection, and its session's idle wait, ended):
    remove its TAP."""

    client: str


@dataclass(frozen=True)
class ClientArrived:
    """An IP client's first connection was admitted: its packets are `prefixes` (a
    concentrator of several workers routes them to this worker's TUN, README "Workers")."""

    client: str
    prefixes: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class AddressesClaimed:
    """The IP client claimed `prefixes` of the `[pool]` (its first packet from a free address,
    or MASQUE's assignment): a concentrator of several workers routes them to this worker's
    TUN, as for ClientArrived; ClientLeft gives them back."""

    client: str
    prefixes: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class ClientLeft:
    """The IP client is gone from here (its last connection, and its session's idle wait,
    ended): its `prefixes` are no longer this worker's to route."""

    client: str
    prefixes: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class InboundMapped:
    """A client's PCP MAP request was granted (tunnel/policy/inbound.py): accept TCP on
    `mapping.external_port` and carry each connection to the client on a stream."""

    mapping: Mapping


@dataclass(frozen=True)
class InboundUnmapped:
    """A mapping ended (`reason`: lifetime over, deleted, client gone): stop listening."""

    mapping: Mapping
    reason: str


Action = (
    Refused
    | Closed
    | SessionAnswered
    | Transmit
    | CrlReloaded
    | StatusChanged
    | TapOpened
    | TapClosed
    | ClientArrived
    | AddressesClaimed
    | ClientLeft
    | InboundMapped
    | InboundUnmapped
)
"""What `next_action()` returns. The edge transmits the `connection` of Refused, Closed,
SessionAnswered and Transmit, rewrites the status file on StatusChanged, makes or removes the
client's TAP on TapOpened / TapClosed, routes a client's prefixes to this worker's TUN on
ClientArrived and AddressesClaimed and back on ClientLeft (several workers), listens on a
mapped port for InboundMapped and stops for InboundUnmapped; CrlReloaded is for the log."""


@dataclass(frozen=True)
class Forwarded:
    """What `from_tun` did with a batch: the connections it queued datagrams on (transmit each
    once). Packet Too Big replies wait in `write_tun`."""

    connections: tuple[TunnelConnection, ...]


# -- connections and clients ----------------------------------------------------------------------


@dataclass(eq=False)
class _Peer:
    """One QUIC connection of the concentrator."""

    connection: TunnelConnection
    client: _Client | None = None  # set once authenticated
    access_id: AccessId | None = None
    handshake_done: bool = False
    mode_refusal: str | None = None  # why its negotiated mode is refused (at handshake end)
    # Access Reports (issue 12): the stream of the last one applied per access (a report on a
    # lower stream was sent earlier: stale), and tunnel mode's view of the client's accesses
    report_streams: dict[AccessId, int] = field(default_factory=dict)
    reported: dict[AccessId, bool] = field(default_factory=dict)
    # the failure detector of its path (session mode, issue 12); None: not watched
    monitor: PathMonitor | None = None
    # 0-RTT (README "0-RTT"): the New/Join Session that arrived before the handshake completed,
    # acted on once it did; and whether its Join was answered already, in 0.5-RTT
    held: SessionRequested | JoinRequested | None = None
    answered_early: bool = False

    @property
    def address(self) -> str:
        return describe_peer(self.connection.quic)


_Sent = tuple[TunnelConnection | None, SendResult | None, tuple[TunnelConnection, ...]]
"""What a strategy's send did: the connection used (None: none), its answer (HELD: held for
later), the connections that got a copy."""
HELD: Final = SendResult(SendStatus.NOT_READY, 0)


class _ClientMode:
    """What differs between tunnel and session mode, for one client. This base is a client
    without a session: New Session / Join Session arrive on session-mode connections only
    (TunnelConnection emits them nowhere else), so every session method is a no-op here."""

    mode: TunnelMode
    session: TunnelSession | None = None

    def __init__(self, core: ConcentratorCore, client: _Client) -> None:
        self.core = core
        self.client = client

    def admitting(self, peer: _Peer, now: float) -> None:
        """A new connection of this client is being admitted: close what it replaces."""

    def received(self, peer: _Peer, event: PacketReceived, now: float) -> Sequence[bytes] | None:
        """The packets now deliverable into the TUN; None if `peer` may not send yet."""
        raise NotImplementedError

    def send(self, packet: bytes, now: float) -> _Sent:
        """Send a packet from the TUN: the connection used and its answer (None: no path; the
        answer HELD: held while the client's accesses are reported unavailable), and the
        connections that got a copy."""
        raise NotImplementedError

    def fates(self, peer: _Peer, now: float) -> None:
        """Datagram fates of `peer`'s connection are waiting: re-send what needs it."""
        peer.connection.take_datagram_fates()

    def watches(self, peer: _Peer) -> bool:
        """Whether the failure detector watches `peer` (its verdict can be acted on)."""
        return False

    def health_changed(self, peer: _Peer, health: PathHealth, now: float) -> None:
        """The failure detector changed its verdict on `peer`'s path."""

    def peer_counters(self, peer: _Peer) -> dict[str, int]:
        """The multipath engine's counters of one connection (RESEND_COUNTERS)."""
        return {}

    def session_requested(self, peer: _Peer, qos: bytes, now: float) -> None:
        return None

    def join_requested(self, peer: _Peer, session_id: bytes, now: float) -> None:
        return None

    def access_reported(self, peer: _Peer, access: AccessId, up: bool, now: float) -> None:
        return None

    def left(self, peer: _Peer, now: float) -> None:
        """`peer` is no longer one of the client's connections."""

    def end_session(self) -> None:
        """The client's session is dead (replaced): free it now."""

    def session_expired(self, session_id: bytes) -> bool:
        """The table expired `session_id`; True if it was this client's."""
        return False

    def poll(self, now: float) -> list[bytes]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"session_id": None}


class _TunnelMode(_ClientMode):
    """Tunnel mode (tunnel draft §4): one connection per client, every packet as it is.

    Issue 12: the connection follows the client across its accesses (the client migrates it,
    RFC 9000 §9); what was in flight on the old path is re-sent on the new one at once
    (reinjection), and with loss hiding a lost packet is re-sent on the path in use
    (tunnel/session/resend.py TunnelResender). Access Reports (tunnel draft §Access Report:
    the client "can signal when the network is unstable to stop incoming data"): while every
    access the client reported on this connection is unavailable — it has no access left —
    packets for it are held, at most `unavailable_hold` seconds and `max_datagram_queue`
    packets (older and further ones are dropped and counted), and sent as soon as a report
    says an access is available again or a new connection comes."""

    mode = TunnelMode.TUNNEL

    def __init__(self, core: ConcentratorCore, client: _Client) -> None:
        super().__init__(core, client)
        self.resender: TunnelResender | None = None
        self._resender_of: TunnelConnection | None = None
        self._path_changes = 0
        self.held: deque[tuple[float, bytes]] = deque()

    def admitting(self, peer: _Peer, now: float) -> None:
        # The newer connection wins: the old one is most likely dead already (the client
        # restarted, or lost its access) and may never say so.
        for old in list(self.client.peers):
            self.core._close_peer(old, "replaced by a newer tunnel-mode connection", now)

    def received(self, peer: _Peer, event: PacketReceived, now: float) -> Sequence[bytes] | None:
        return (event.packet,)

    def holding(self, peer: _Peer) -> bool:
        """The client reported every access it reported on this connection unavailable."""
        return bool(peer.reported) and not any(peer.reported.values())

    def send(self, packet: bytes, now: float) -> _Sent:
        peers = self.client.peers
        if not peers:
            return None, None, ()
        peer = peers[0]
        connection = peer.connection
        if self.holding(peer):
            self._hold(packet, now)
            return None, HELD, ()
        if self.held:
            self._release(peer, now)
        resender = self._resender_for(peer, now)
        token = resender.token_for(packet, now) if resender is not None else None
        result = connection.send_packet(packet, token=token, now=now)
        if token is not None and resender is not None and not result.sent:
            resender.sent.fate(token)  # never queued: no fate will come
        return connection, result, ()

    def fates(self, peer: _Peer, now: float) -> None:
        fates = peer.connection.take_datagram_fates()
        if not fates or not self.client.peers or self.client.peers[0] is not peer:
            return
        resender = self._resender_for(peer, now)
        if resender is not None:
            self._resend(peer, resender.fates(fates, now, [peer.connection.srtt]), now)

    def _resender_for(self, peer: _Peer, now: float) -> TunnelResender | None:
        """The re-sends of the client's connection (a new one for a new connection); a path
        change since the last look re-sends what was stranded on the old path."""
        resilience = self.core.resilience
        if not resilience.tracks:
            return None
        connection = peer.connection
        changes = getattr(connection.quic, "path_changes", 0)
        if self._resender_of is not connection or self.resender is None:
            self.resender = TunnelResender(resilience)
            self._resender_of = connection
            self._path_changes = changes
        elif changes != self._path_changes:
            self._path_changes = changes
            self._resend(peer, self.resender.migrated(now, [connection.srtt]), now)
        return self.resender

    def _resend(self, peer: _Peer, packets: list[bytes], now: float) -> None:
        resender, connection = self.resender, peer.connection
        if not packets or resender is None:
            return
        for packet in packets:  # ahead of new packets, in this order (send_packet)
            token = resender.copy_token(packet, now)
            if not connection.send_packet(packet, token=token, now=now, resend=True).sent:
                resender.sent.fate(token)
                resender.counters["resend_no_path"] += 1
        self.core._actions.append(Transmit(connection))

    def peer_counters(self, peer: _Peer) -> dict[str, int]:
        if self.resender is None or self._resender_of is not peer.connection:
            return {}
        return dict(self.resender.counters)

    def access_reported(self, peer: _Peer, access: AccessId, up: bool, now: float) -> None:
        was = self.holding(peer)
        peer.reported[access] = up
        holding = self.holding(peer)
        if holding == was:
            return
        log.info(
            "client %s: %s", self.client.name, "holding its packets" if holding else "resuming"
        )
        if not holding and self.client.peers and self.client.peers[0] is peer:
            self._release(peer, now)

    # -- holding (Access Reports) --------------------------------------------------------------

    def _hold(self, packet: bytes, now: float) -> None:
        counters, limits = self.client.counters, self.core.limits
        self._expire(now)
        if limits.unavailable_hold <= 0 or len(self.held) >= limits.max_datagram_queue:
            counters["dropped_unavailable"] += 1
            return
        self.held.append((now, packet))
        counters["held_unavailable"] += 1

    def _expire(self, now: float) -> None:
        hold = self.core.limits.unavailable_hold
        held = self.held
        while held and held[0][0] + hold <= now:
            held.popleft()
            self.client.counters["dropped_unavailable"] += 1

    def _release(self, peer: _Peer, now: float) -> None:
        self._expire(now)
        held, self.held = self.held, deque()
        if not held:
            return
        resender = self._resender_for(peer, now)
        connection = peer.connection
        for sent_at, packet in held:
            token = resender.token_for(packet, sent_at) if resender is not None else None
            result = connection.send_packet(packet, token=token, now=now)
            if result.sent:
                self.client.counters["released_after_hold"] += 1
            elif token is not None and resender is not None:
                resender.sent.fate(token)
        self.core._actions.append(Transmit(connection))

    def poll(self, now: float) -> list[bytes]:
        self._expire(now)
        return []  # held packets go to the client, never into the TUN

    def next_deadline(self) -> float | None:
        return self.held[0][0] + self.core.limits.unavailable_hold if self.held else None

    def status(self) -> dict[str, Any]:
        peers = self.client.peers
        return {
            "session_id": None,
            "holding": bool(peers) and self.holding(peers[0]),
            "held_packets": len(self.held),
        }


class _SessionMode(_ClientMode):
    """Session mode (tunnel-session draft §4): the client's connections form one TunnelSession,
    which picks a connection per packet (the configured scheduler) and reorders by Packet Tag."""

    mode = TunnelMode.SESSION
    qos = b""
    """The QoS Flow Indication of its session's New Session (session draft §6.1.1)."""

    def received(self, peer: _Peer, event: PacketReceived, now: float) -> Sequence[bytes] | None:
        session = self.session
        if session is None or session.path_id_of(peer.connection) is None:
            return None
        return session.on_packet(peer.connection, event, now)

    def send(self, packet: bytes, now: float) -> _Sent:
        if self.session is None:
            return None, None, ()
        sent = self.session.send_packet(packet, now)
        return sent.connection, sent.result, sent.copies

    def fates(self, peer: _Peer, now: float) -> None:
        fates = peer.connection.take_datagram_fates()
        if fates and self.session is not None and self._has(peer):
            self._transmit(self.session.on_fates(peer.connection, fates, now))

    def watches(self, peer: _Peer) -> bool:
        return self._has(peer)

    def health_changed(self, peer: _Peer, health: PathHealth, now: float) -> None:
        """Suspect: what was in flight on it re-sent elsewhere, new packets doubled up; dead:
        not used until it answers (tunnel/session/multipath.py)."""
        if self.session is not None and self._has(peer):
            self._transmit(self.session.set_health(peer.connection, health, now))

    def _transmit(self, connections: set[TunnelConnection]) -> None:
        for connection in connections:
            self.core._actions.append(Transmit(connection))

    def peer_counters(self, peer: _Peer) -> dict[str, int]:
        return {} if self.session is None else self.session.path_counters(peer.connection)

    def session_requested(self, peer: _Peer, qos: bytes, now: float) -> None:
        core, client = self.core, self.client
        if self.session is not None:
            # A client starts a new session only when it lost the old one (it restarted): the
            # old session's connections are stale.
            for old in [p for p in client.peers if p is not peer and self._has(p)]:
                core._close_peer(old, "replaced by a new session of the same client", now)
            self.end_session()
        try:
            entry = core.sessions.create(peer, qos, now)
        except JoinError as exc:
            core._reject_join(peer, exc.code, str(exc))
            return
        session = TunnelSession(
            make_scheduler(core.config.scheduler),
            ReorderBuffer.from_setting(core.limits.reorder_timeout),
            session_id=entry.session_id,
            resilience=core.resilience,
            release_pacing=core.limits.release_pacing,
        )
        session.add_connection(peer.connection, peer.access_id)
        self.session = session
        self.qos = entry.qos
        client.dscp = core.qos_policy.dscp_for(entry.qos)
        core.session_owner[entry.session_id] = client.name
        core._accept_session(peer, entry.session_id)
        core._watch(peer, now)
        log.info(
            "session created client=%s session=%s peer=%s",
            client.name,
            entry.session_id.hex(),
            peer.address,
        )

    def join_requested(self, peer: _Peer, session_id: bytes, now: float) -> None:
        core, session = self.core, self.session
        # A Session ID of another client is as unknown to this one as a made-up one: joining it
        # would let this client send with the other's addresses.
        if (
            core.session_owner.get(session_id) != self.client.name
            or session is None
            or session.session_id != session_id
        ):
            reason = "the Session ID is not one of this client's sessions"
            core._reject_join(peer, ControlErrorCode.UNKNOWN_SESSION_ID, reason)
            return
        conflict = self._conflict(peer)
        if conflict is not None:
            # §6.1.3 CONFLICTING_STATE: "The current state of the QUIC tunnel connection could
            # not be merged with the tunneling session."
            core._reject_join(peer, ControlErrorCode.CONFLICTING_STATE, conflict)
            return
        try:
            core.sessions.join(session_id, peer, now)
        except JoinError as exc:
            core._reject_join(peer, exc.code, str(exc))
            return
        session.add_connection(peer.connection, peer.access_id)
        core._accept_session(peer, session_id, joined=True)
        core._watch(peer, now)
        log.info(
            "session joined client=%s session=%s peer=%s connections=%d",
            self.client.name,
            session_id.hex(),
            peer.address,
            len(session.connections),
        )

    def _conflict(self, joining: _Peer) -> str | None:
        """Why the joining connection's state cannot be merged with the session's, if it
        cannot: its TCP connections would be carried one way on some accesses and another way
        on others if it negotiated stream mode (-tcp draft §4) differently from the members.
        (A connection of another payload never gets here: it replaces the client, as a
        restarted client would, at authentication.)"""
        members = [p for p in self.client.peers if p is not joining and self._has(p)]
        if members and members[0].connection.stream_mode != joining.connection.stream_mode:
            state = "on" if joining.connection.stream_mode else "off"
            return (
                f"the joining connection has stream mode {state} and the session's connections"
                " do not: open every connection of a session with the same stream mode setting"
            )
        return None

    def access_reported(self, peer: _Peer, access: AccessId, up: bool, now: float) -> None:
        session = self.session
        if session is None:
            return
        # Which access a connection runs over is inferred (tunnel/session/access_mapping.py):
        # record it in the session, close the connections it replaces.
        members = {p: p.access_id for p in self.client.peers if self._has(p)}
        inference = infer_access(members, peer, access, up)
        for old in inference.replaced:
            reason = f"replaced by a newer connection over the {access_name(access)} access"
            self.core._close_peer(old, reason, now)
        for member, learned in inference.assign.items():
            member.access_id = learned
            session.set_access(member.connection, learned)
            log.info("access learned peer=%s access=%s", member.address, access_name(learned))
            # limits.congestion_control_wifi / _5g: the connection's controller follows its access
            algorithm = self.core.limits.congestion_control_on(learned)
            quic = member.connection.quic
            if isinstance(quic, TunnelQuicConnection) and quic.use_congestion_control(algorithm):
                log.info("congestion control peer=%s algorithm=%s", member.address, algorithm)
        self._transmit(session.set_available(access, up, now))

    def left(self, peer: _Peer, now: float) -> None:
        if self.session is not None and self._has(peer):
            # what was in flight on it is stranded: re-sent on the others (reinjection)
            self._transmit(self.session.set_health(peer.connection, PathHealth.DEAD, now))
            self.session.remove_connection(peer.connection)

    def end_session(self) -> None:
        session, self.session = self.session, None
        self.qos, self.client.dscp = b"", None
        if session is not None and session.session_id is not None:
            self.core.session_owner.pop(session.session_id, None)
            # Its client replaced it: free its slot in the table now, not after the expiry.
            self.core.sessions.discard(session.session_id)
            self.core._sessions_changed()

    def session_expired(self, session_id: bytes) -> bool:
        if self.session is None or self.session.session_id != session_id:
            return False
        self.session = None
        self.qos, self.client.dscp = b"", None
        return True

    def poll(self, now: float) -> list[bytes]:
        return [] if self.session is None else self.session.poll(now)

    def next_deadline(self) -> float | None:
        return None if self.session is None else self.session.next_deadline()

    def status(self) -> dict[str, Any]:
        session = self.session
        if session is None:
            return {"session_id": None}
        return {
            "session_id": session.session_id.hex() if session.session_id is not None else None,
            # the New Session's QoS Flow Indication and what the site's policy made of it
            "qos": qos_label(self.qos) if self.qos else None,
            "dscp": self.client.dscp,
            "accesses_available": {
                name: session.is_available(access) for access, name in ACCESS_NAMES.items()
            },
            "reorder": session.reorder_counters(),
        }

    def _has(self, peer: _Peer) -> bool:
        return self.session is not None and self.session.path_id_of(peer.connection) is not None


class _MasqueMode(_TunnelMode):
    """MASQUE CONNECT-IP (RFC 9484, issue 18): tunnel mode's one connection per client, the
    newest replacing the older, without Access Reports (MASQUE has none, so nothing is ever
    held) and without re-sends (its datagrams carry no fate token: a MASQUE proxy as users
    get it, tunnel/protocol/masque.py)."""

    mode = TunnelMode.MASQUE

    def _resender_for(self, peer: _Peer, now: float) -> TunnelResender | None:
        return None


_MODES: Final[dict[TunnelMode, type[_ClientMode]]] = {
    TunnelMode.TUNNEL: _TunnelMode,
    TunnelMode.SESSION: _SessionMode,
    TunnelMode.MASQUE: _MasqueMode,
}


@dataclass(eq=False)
class _Client:
    """An authenticated client (its certificate's Common Name) and its connections."""

    name: str
    ingress: IngressFilter
    reports: TokenBucket  # Access Reports acted on (one token each)
    payload: Payload = Payload.IP
    macs: MacFilter | None = None  # the L2 ingress filter of an Ethernet client
    bucket_in: TokenBucket | None = None  # client -> TUN
    bucket_out: TokenBucket | None = None  # TUN -> client
    peers: list[_Peer] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    dscp: int | None = None
    """The DSCP its forwarded packets get: its session's QoS Flow Indication mapped by the site's
    [[qos]] tables (tunnel/policy/qos.py); None leaves them as sent."""
    strategy: _ClientMode = field(init=False)
    pcp: TokenBucket | None = None  # PCP requests answered, one token each (made at the first)


# -- the core -------------------------------------------------------------------------------------


class ConcentratorCore:
    """The concentrator's decisions (see the module docstring).

    :param config: the concentrator configuration.
    :param now: the time of construction, on the clock every input uses.
    :param verifier: checks client certificates (with the CRL, if any).
    :param random_bytes: the source of Session IDs.
    :param utc_now: wall-clock time, for certificate validity.
    :param port_free: whether a TCP port can be listened on (the program binds a probe socket);
        a mapping is never granted on a busy one.
    """

    def __init__(
        self,
        config: ConcentratorConfig,
        now: float,
        *,
        verifier: ClientVerifier,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        utc_now: Callable[[], datetime.datetime] = _utc_now,
        port_free: Callable[[int], bool] = lambda _: True,
        client_slots: ClientSlots | None = None,
        pool_claims: PoolClaims | None = None,
    ) -> None:
        """`client_slots`: where limits.max_clients is counted (tunnel/policy/client_slots.py;
        the concentrator's workers share one); None: this core's own. `pool_claims`: the
        `[pool]` addresses the other workers' clients hold (None: this core is the only
        one)."""
        self.config = config
        self.limits = config.limits
        self.verifier = verifier
        self._utc_now = utc_now
        self._peers: dict[TunnelConnection, _Peer] = {}
        self._clients: dict[str, _Client] = {}
        self.client_slots: ClientSlots = client_slots or LocalClientSlots(config.limits.max_clients)
        self.refused: Counter[str] = Counter(dict.fromkeys((r.value for r in Refusal), 0))
        self.counters: Counter[str] = Counter({"internal_errors": 0})
        self.addresses = AddressTable(
            {c.name: c.addresses for c in config.clients},
            config.pool.ipv4,
            config.pool.ipv6,
            reserved=[a.ip for a in config.tun.addresses],
            shared=pool_claims,
        )
        self.sessions: SessionTable[_Peer] = SessionTable(
            random_bytes,
            idle_expiry=self.limits.session_idle_expiry,
            max_sessions=self.limits.max_sessions or self.limits.max_clients,
        )
        self.session_owner: dict[bytes, str] = {}
        self.qos_policy = QosPolicy((qos_value(mark.value), mark.dscp) for mark in config.qos)
        self.admission = Admission(frozenset(c.name for c in config.clients), config.pool.admit)
        self.host_guard = HostGuard(config.to_concentrator, ())
        # Lines a peer can cause at will (reports, refusals) are rate-limited per key.
        self.log_budget = LogBudget()
        self._crl_problem: str | None = None
        self._actions: deque[Action] = deque()
        self._status_pending = False
        self._to_tun: list[tuple[bytes, _Client, bool]] = []  # (packet, client, is a reply)
        self._to_taps: list[tuple[bytes, _Client]] = []  # Ethernet clients' frames for the bridge
        # session-mode connections authenticated but without New/Join Session yet: deadline
        self._awaiting_session: dict[_Peer, float] = {}
        self._static_macs = {c.name: c.macs for c in config.clients if c.macs}
        self._l2_servers = frozenset(c.name for c in config.clients if c.l2_server)
        # who holds which MAC across clients, so that none learns another's or the host's
        # (tunnel/policy/mac_filter.py); a client's learned MACs outlive its reconnects there
        self.mac_owners = MacOwners(self._static_macs)
        # The clients whose reorder buffer holds packets. Their deadlines are read afresh at
        # each get_timer: the timeout follows the RTTs (it may shorten on any send or loss),
        # and a deadline kept from the last arrival released a gap up to 0.5 s late.
        self._reordering: set[_Client] = set()
        # the multipath engine (issue 12, README "The multipath engine")
        self.resilience = Resilience.from_limits(self.limits)
        self.detection = self.limits.failure_detection
        # failure detector deadlines of the watched connections; those touched since get_timer
        # last ran are recomputed there (loss recovery's state changed when they sent)
        self._health_due: dict[_Peer, float] = {}
        self._health_dirty: set[_Peer] = set()
        self._ping_uids = itertools.count(1)
        # the session table's next expiry, recomputed only after the table changed (get_timer
        # runs after every input)
        self._expiry: float | None = None
        self._expiry_stale = False
        # the reversed flow of stream mode: PCP mappings (tunnel/policy/inbound.py)
        stream = config.stream
        self.inbound = InboundTable(
            stream.inbound_ports if stream.enabled else (),
            max_per_client=stream.inbound_max_per_client,
            max_lifetime=stream.inbound_max_lifetime,
            # its own port (QUIC's is UDP, but a TCP mapping on it would only confuse); the
            # TCP ports it listens on are busy, which port_free finds
            reserved=(config.port,),
            port_free=port_free,
        )
        self._epoch_start = now  # RFC 6887 §8.5: the Epoch Time counts from here
        # session tickets (README "0-RTT"): the program gives this store to every connection
        self.tickets: TicketStore | None = None
        if self.limits.zero_rtt:
            self.tickets = TicketStore(
                self.limits.max_clients * TICKETS_PER_CLIENT, utc_now=utc_now
            )

    # -- outputs ---------------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        if not self._actions:
            return None
        action = self._actions.popleft()
        if isinstance(action, StatusChanged):
            self._status_pending = False
        return action

    def get_timer(self) -> float | None:
        """When `handle_timer` next has work: a reorder gap to give up, a session to expire."""
        timer = self._next_expiry()
        for client in self._reordering:
            deadline = client.strategy.next_deadline()
            if deadline is not None and (timer is None or deadline < timer):
                timer = deadline
        if self._health_dirty:
            for peer in self._health_dirty:
                self._schedule_health(peer)
            self._health_dirty.clear()
        if self._health_due:
            soonest = min(self._health_due.values())
            if timer is None or soonest < timer:
                timer = soonest
        inbound = self.inbound.next_expiry()
        if inbound is not None and (timer is None or inbound < timer):
            timer = inbound
        if self._awaiting_session:
            setup = min(self._awaiting_session.values())
            if timer is None or setup < timer:
                timer = setup
        return timer

    def write_tun(self, write_batch: Callable[[list[bytes]], list[bool]]) -> None:
        """Hand every packet decided for the TUN to `write_batch` (TunDevice.write_batch: for
        each packet, whether the kernel accepted it), in order, and count the outcome per
        client."""
        if not self._to_tun:
            return
        batch, self._to_tun = self._to_tun, []
        accepted = write_batch([packet for packet, _client, _reply in batch])
        for (packet, client, reply), written in zip(batch, accepted, strict=True):
            counters = client.counters
            if reply:
                if written:
                    counters["packet_too_big_sent"] += 1
                    self.counters["packet_too_big_sent"] += 1
                else:
                    counters["dropped_too_big"] += 1
            elif written:
                counters["packets_from_client"] += 1
                counters["bytes_from_client"] += len(packet)
            else:
                counters["tun_write_dropped"] += 1

    def write_taps(self, write: Callable[[str, bytes], bool]) -> None:
        """Hand every frame decided for the bridge to `write(client, frame)` (the client's TAP:
        False when the kernel refused it, or it has none), in order, counted per client."""
        if not self._to_taps:
            return
        batch, self._to_taps = self._to_taps, []
        for frame, client in batch:
            if write(client.name, frame):
                client.counters["packets_from_client"] += 1
                client.counters["bytes_from_client"] += len(frame)
            else:
                client.counters["tap_write_dropped"] += 1

    def client_name(self, connection: TunnelConnection) -> str | None:
        """The authenticated client of a connection (stream mode's limits are per client)."""
        peer = self._peers.get(connection)
        return peer.client.name if peer is not None and peer.client is not None else None

    def access_of(self, connection: TunnelConnection) -> AccessId | None:
        """The access the connection runs over, as inferred from Access Reports."""
        peer = self._peers.get(connection)
        return None if peer is None else peer.access_id

    def session_of(self, name: str) -> TunnelSession | None:
        """The client's tunneling session (session mode); None if it has none."""
        client = self._clients.get(name)
        return None if client is None else client.strategy.session

    def stream_connection(self, name: str) -> TunnelConnection | None:
        """The open stream-mode connection of client `name` that inbound connections go to
        (its newest), or None."""
        client = self._clients.get(name)
        if client is None:
            return None
        for peer in reversed(client.peers):
            connection = peer.connection
            if connection.stream_mode and not connection.closed:
                return connection
        return None

    @property
    def connection_count(self) -> int:
        return len(self._peers)

    def tun_routes(self, every_prefix: bool = False) -> list[str]:
        """The TUN's routes: the configured ones, and each client prefix (static or pool) its
        own addresses do not cover, so the kernel sends the clients' packets to us;
        `every_prefix`: covered ones too (workers move each between their TUNs, README
        "Workers", and another TUN may cover the same addresses)."""
        covered = [] if every_prefix else [a.network for a in self.config.tun.addresses]
        return [str(p) for p in self.config.tun.routes] + [
            str(p)
            for p in self.addresses.routed_prefixes()
            if not any(p.version == n.version and p.subnet_of(n) for n in covered)  # type: ignore[arg-type]
        ]

    def status(self) -> dict[str, Any]:
        """The status file's `clients`, `sessions`, `connections`, `refused`, `counters`, `crl`
        and `tickets` (README "Status file"); the program adds the keys of the I/O edge."""
        revocations = self.verifier.revocations
        tickets = self.tickets
        return {
            "tickets": None if tickets is None else {"held": len(tickets), **tickets.counters},
            "clients": [self._client_status(c) for c in self._clients.values()],
            "sessions": len(self.sessions),
            "connections": len(self._peers),
            "refused": dict(self.refused),
            "counters": dict(self.counters),
            "inbound": [
                {
                    "client": m.client,
                    "external_port": m.external_port,
                    "internal": f"{m.internal_address}:{m.internal_port}",
                }
                for m in sorted(self.inbound.of_all(), key=lambda m: m.external_port)
            ],
            "crl": None
            if revocations is None
            else {
                "revoked": len(revocations.revoked_serials),
                "reloads": revocations.reloads,
                "problem": self._crl_problem,
            },
        }

    # -- inputs: connections -----------------------------------------------------------------

    def connection_opened(self, quic: QuicConnection, now: float) -> TunnelConnection:
        """The QUIC server accepted a new connection: the TunnelConnection to feed."""
        limits = self.limits
        # a MasqueConnection is a TunnelConnection until ALPN h3 makes it speak CONNECT-IP
        connection = MasqueConnection(quic, limits.max_datagram_queue, limits.queue_delay_control())
        self._peers[connection] = _Peer(connection)
        return connection

    def quic_event(
        self, connection: TunnelConnection, event: quic_events.QuicEvent, now: float
    ) -> Sequence[TunnelEvent]:
        """Feed one aioquic event of `connection`. Returns its stream-mode events (-tcp draft)
        for the program's stream server, only once the connection is authenticated."""
        peer = self._peers.get(connection)
        if peer is None:
            return _NO_EVENTS
        if isinstance(event, DatagramFatesReady):
            if peer.client is not None:
                peer.client.strategy.fates(peer, now)
            self._health_event(peer, now)
            return _NO_EVENTS
        if isinstance(event, quic_events.PingAcknowledged):
            self._health_event(peer, now)
            return _NO_EVENTS
        if isinstance(event, PathMtuFell):
            # the path carries less than was sent: tell the senders of what it swallowed
            # (pmtu_victims.py); nothing is dropped now, so a packet with no answer due is not
            # counted as a drop
            client = peer.client
            if client is not None:
                budget = connection.max_packet_size()
                for packet in connection.black_hole_victims(now):
                    error = self._too_big_error(client, packet, budget)
                    if error is not None:
                        client.counters["pmtu_victims_answered"] += 1
                        self._to_tun.append((error, client, True))
            if not (isinstance(connection, MasqueConnection) and connection.is_masque):
                return _NO_EVENTS
            # CONNECT-IP: the session aborts its request stream if IPv6 no longer fits (RFC 9484
            # §7.2), which closes the connection
        if isinstance(event, quic_events.HandshakeCompleted):
            peer.handshake_done = True
            self._authenticate(peer, now)
        elif isinstance(event, quic_events.ConnectionTerminated):
            self._terminated(peer, event, now)
        stream: list[TunnelEvent] | None = None
        for tunnel_event in connection.handle_event(event):
            if isinstance(tunnel_event, STREAM_EVENTS):
                if peer.client is not None and connection.stream_mode:
                    stream = stream or []
                    stream.append(tunnel_event)
                continue
            self._tunnel_event(peer, tunnel_event, now)
        return _NO_EVENTS if stream is None else stream

    def inbound_listen_failed(self, mapping: Mapping, reason: str) -> None:
        """The program could not listen on a granted mapping's port (taken meanwhile): forget
        the mapping; the client's renewal asks again and gets another port or a refusal."""
        if self.inbound.remove(mapping):
            self._unmapped(mapping, f"cannot listen: {reason}")

    def host_addresses_changed(self, addresses: Iterable[IPv4Address | IPv6Address]) -> None:
        """The host's own addresses (all interfaces, netlink-followed) for `to_concentrator`.
        An address given with its prefix (an IPv4Interface / IPv6Interface, as netlink reads
        them) brings its prefix's broadcast, network and subnet-router anycast addresses, which
        the kernel delivers locally too; one given bare that is the TUN's gets the TUN's prefix
        from the configuration."""
        tun = {interface.ip: interface for interface in self.config.tun.addresses}
        self.host_guard.update(
            a if isinstance(a, IPv4Interface | IPv6Interface) else tun.get(a, a) for a in addresses
        )

    def host_macs_changed(self, macs: Iterable[int]) -> None:
        """The host's own MACs (its bridge's and TAPs', as 48-bit integers): no Ethernet client
        may learn one (README "L2 mode"), and one a client learned already is taken back."""
        self.mac_owners.set_host_macs(macs)

    def reload_crl(self, now: float) -> None:
        """SIGHUP: re-read the CRL file now, changed or not."""
        revocations = self.verifier.revocations
        if revocations is None:
            log.info("reload: no tls.crl configured")
            self._actions.append(CrlReloaded(None, None))
            return
        problem = revocations.refresh(force=True)
        self._note_crl(problem)
        revoked = len(revocations.revoked_serials)
        if problem is None:
            log.info("crl loaded path=%s revoked=%d", revocations.path, revoked)
        self._actions.append(CrlReloaded(revoked, problem))

    def shutdown(self, now: float) -> None:
        """Close every connection (CONNECTION_CLOSE): the program is stopping."""
        for peer in list(self._peers.values()):
            self._close_peer(peer, "the concentrator is shutting down", now)

    # -- inputs: time ------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        for peer, due in list(self._awaiting_session.items()):
            if due <= now:
                del self._awaiting_session[peer]
                reason = (
                    f"no New Session or Join Session within {SESSION_SETUP_TIMEOUT:g} s: session "
                    "mode carries packets only in a session (session draft §4.1)"
                )
                self._close_peer(peer, reason, now)
        # A bug met for one connection (its health check) or one client (its reorder buffer)
        # closes that one, as a bug in a connection's QUIC events does: the timer serves every
        # client, and an exception out of it would stop the concentrator.
        for peer, due in list(self._health_due.items()):
            if due <= now:
                try:
                    self._check_health(peer, now)
                except Exception as exc:
                    self._health_due.pop(peer, None)
                    self._internal_error("a connection's health check", exc, now)
                    self._close_peer(peer, INTERNAL_ERROR_REASON, now)
        for client in list(self._reordering):
            try:
                deadline = client.strategy.next_deadline()
                if deadline is not None and deadline > now:
                    continue
                released = client.strategy.poll(now)
            except Exception as exc:
                self._reordering.discard(client)
                self._internal_error(f"the reorder buffer of client {client.name}", exc, now)
                self._end_client(client, INTERNAL_ERROR_REASON, now)
                continue
            for packet in released:
                try:
                    self._from_client(client, packet, now)
                except Exception as exc:
                    self._internal_error(f"packet from client {client.name}", exc, now)
            self._track_reorder(client)
        expiry = self._next_expiry()
        if expiry is not None and expiry <= now:
            self._expire_sessions(now)
        for mapping in self.inbound.expire(now):
            self._unmapped(mapping, "lifetime over")

    # -- authentication and admission --------------------------------------------------------

    def _authenticate(self, peer: _Peer, now: float) -> None:
        """At HandshakeCompleted, before the connection may carry anything: who is it, may it
        connect, is its mode served, is there room. Whatever goes wrong while checking the
        credentials ends in a refusal (README "Security"): the connection is closed at once,
        never left open unauthenticated."""
        connection = peer.connection
        if connection.closed:
            return
        try:
            identity = self._client_identity(peer)
            name = identity.name
        except ClientAuthError as exc:
            resumed = resumed_identity(connection.quic)
            if resumed is not None and self.tickets is not None:
                self.tickets.forget_client(resumed.name)  # revoked or no longer admitted
            self._refuse(peer, Refusal.AUTH, str(exc), now, AUTH_FAILED_REASON)
            return
        except Exception as exc:
            detail = f"the credentials could not be checked ({type(exc).__name__}: {exc})"
            self._refuse(peer, Refusal.AUTH, detail, now, AUTH_FAILED_REASON)
            return
        if peer.mode_refusal is not None:
            self._refuse(peer, Refusal.MODE, peer.mode_refusal, now)
            return
        mode = connection.mode
        if mode is None:  # cannot happen: ALPN is negotiated before the handshake completes
            reason = "no tunnel mode was negotiated: offer ALPN qt or qt-session"
            self._refuse(peer, Refusal.MODE, reason, now)
            return
        payload = connection.payload
        if payload not in self.config.payloads:
            self._refuse(peer, Refusal.PAYLOAD, self._payload_refusal(connection), now)
            return
        assert payload is not None  # None is never served
        client = self._clients.get(name)
        if client is not None and client.payload is not payload:
            # A client that changed its payload restarted: everything of the old one is stale,
            # its TAP included.
            self._end_client(client, f"replaced by a newer {payload.value}-payload connection", now)
            client = None
        elif client is not None and client.macs is not None and client.strategy.mode is not mode:
            # An Ethernet client that changed its mode: its TAP's MTU was its old mode's.
            self._end_client(client, f"replaced by a newer {mode.value}-mode connection", now)
            client = None
        if client is not None:
            self._make_room(client, peer, mode, now)
            client = self._clients.get(name)  # forgotten if that was its last connection
        if client is None:
            if not self.client_slots.take():
                reason = (
                    f"the concentrator serves its maximum of {self.limits.max_clients} clients: "
                    "try again later"
                )
                self._refuse(peer, Refusal.LIMIT, reason, now)
                return
            client = self._new_client(name, mode, payload, now)
        live = [p for p in client.peers if not p.connection.closed]
        if len(live) >= self.limits.max_connections_per_client:
            reason = (
                f"client {name!r} already has {len(live)} connections, the maximum: close one first"
            )
            self._refuse(peer, Refusal.LIMIT, reason, now)
            return
        peer.client = client
        client.peers.append(peer)
        self.counters["connections_accepted"] += 1
        was_resumed = resumed_identity(connection.quic) is not None
        if was_resumed:
            self.counters["connections_resumed"] += 1
        quic = connection.quic
        if self.tickets is not None and isinstance(quic, TunnelQuicConnection):
            self.tickets.bind(quic.issued_tickets, identity)
        log.info(
            "client connected name=%s mode=%s payload=%s peer=%s alpn=%s stream_mode=%s "
            "connections=%d resumed=%s",
            name,
            mode.value,
            payload.value,
            peer.address,
            connection.alpn,
            connection.stream_mode,
            len(client.peers),
            was_resumed,
        )
        self._status_changed()
        held, peer.held = peer.held, None
        if held is not None:
            self._tunnel_event(peer, held, now)
        if (
            mode is TunnelMode.SESSION
            and not connection.session_requested
            and not connection.stream_mode  # streams alone need no session (-tcp draft)
        ):
            self._awaiting_session[peer] = now + SESSION_SETUP_TIMEOUT
        if mode is TunnelMode.MASQUE:
            self._open_proxy(peer, client, now)

    def _open_proxy(self, peer: _Peer, client: _Client, now: float) -> None:
        """MASQUE (README "MASQUE CONNECT-IP"): the verified certificate named the client; its
        addresses (static, or one pool address per family taken now: CONNECT-IP assigns them
        before any packet, RFC 9484 §4.7.1) and every route go in its ADDRESS_ASSIGN and
        ROUTE_ADVERTISEMENT, and the session's §11 checks hold it to them."""
        connection = peer.connection
        assert isinstance(connection, MasqueConnection)
        name = client.name
        if not self.addresses.is_static(name) and allocate_pool_addresses(self.addresses, name):
            client.ingress.set_prefixes(self.addresses.prefixes_of(name))
            self._actions.append(AddressesClaimed(name, self.addresses.prefixes_of(name)))
            log.info(
                "pool addresses assigned client=%s addresses=%s",
                name,
                ",".join(str(p) for p in self.addresses.prefixes_of(name)),
            )
        prefixes = self.addresses.prefixes_of(name)
        if not prefixes:
            self._close_peer(
                peer, "no address is free for this client: the concentrator's pool is full", now
            )
            return
        for event in connection.open_proxy(proxy_policy(prefixes)):
            self._tunnel_event(peer, event, now)
        self._actions.append(Transmit(connection))

    def _payload_refusal(self, connection: TunnelConnection) -> str:
        """One sentence for a client whose payload is not served (tunnel draft §4: tunnel mode's
        payload is signalled out of band, so both ends must be configured alike)."""
        served = " and ".join(_PAYLOAD_WORDS[p] for p in self.config.payloads)
        payload = connection.payload
        if payload is None:
            asked = f"announces payload EtherType {connection.payload_ethertype:#06x}"
        else:
            asked = f'is configured with payload = "{payload.value}"'
        return (
            f"the concentrator carries {served} but this client {asked}: set the same payload "
            "on both ends"
        )

    def _end_client(self, client: _Client, reason: str, now: float) -> None:
        """Close every connection of `client` and forget it (its session, addresses, TAP)."""
        for old in list(client.peers):
            self._close_peer(old, reason, now)
        client.strategy.end_session()
        if self._clients.get(client.name) is client:
            self._forget(client)

    def _make_room(self, client: _Client, peer: _Peer, mode: TunnelMode, now: float) -> None:
        """Close what a new connection of a known client replaces."""
        if client.strategy.mode is mode:
            client.strategy.admitting(peer, now)
            return
        # A client that changed its mode restarted: everything of the old one is stale.
        for old in list(client.peers):
            self._close_peer(old, f"replaced by a newer {mode.value}-mode connection", now)
        client.strategy.end_session()
        client.strategy = _MODES[mode](self, client)

    def _client_identity(self, peer: _Peer) -> TicketIdentity:
        """Who the peer is, admitted here; ClientAuthError (with the detailed reason, for the
        log) otherwise. A full handshake: the name of its certificate, verified. A resumption
        (no certificate, RFC 8446 §2.2): the identity our own ticket store recorded when the
        ticket was issued, on a connection that authenticated with a certificate then; that
        certificate must still be unexpired and not revoked (the CRL is read as for the
        others), and the name still admitted."""
        revocations = self.verifier.revocations
        if revocations is not None:
            self._note_crl(revocations.refresh())  # one stat: re-read only when it changed
        resumed = resumed_identity(peer.connection.quic)
        if resumed is not None:
            name = self.verifier.verify_resumed(
                resumed.name, resumed.serial, resumed.not_valid_after, self._utc_now()
            )
            identity = resumed
        else:
            certificate, chain = peer_certificate(peer.connection.quic)
            name = self.verifier.verify(certificate, chain, self._utc_now())
            assert certificate is not None  # verify refuses a missing one
            identity = TicketIdentity(
                name, certificate.serial_number, certificate.not_valid_after_utc
            )
        if not self.admission.admits(name):
            raise ClientAuthError(
                f"client {name!r} is not served by this concentrator: add a [[client]] entry "
                "for it or a pattern matching it to [pool] admit"
            )
        return identity

    def _note_crl(self, problem: str | None) -> None:
        if problem is not None and problem != self._crl_problem:
            log.warning("crl not reloaded: %s", problem)
        self._crl_problem = problem

    def _new_client(self, name: str, mode: TunnelMode, payload: Payload, now: float) -> _Client:
        per_second = self.limits.access_reports_per_second
        client = _Client(
            name,
            IngressFilter(self.addresses.prefixes_of(name)),
            reports=TokenBucket(per_second, burst=2 * per_second, now=now),
            payload=payload,
        )
        if payload is Payload.ETHERNET:
            self.mac_owners.expire(now)  # a hold over must not come back to the client
            client.macs = MacFilter(
                self._static_macs.get(name, ()),
                self.config.l2.max_macs,
                owners=self.mac_owners,
                client=name,
                serves=name in self._l2_servers,
            )
            client.macs.last_frame = now  # a reconnect holds what it got back, sent or not
            self._actions.append(TapOpened(name, mode))
        else:
            self._actions.append(ClientArrived(name, self.addresses.prefixes_of(name)))
        client.strategy = _MODES[mode](self, client)
        rate = self.limits.rate_limit_mbps
        if rate is not None:
            client.bucket_in = TokenBucket.from_mbps(rate, now)
            client.bucket_out = TokenBucket.from_mbps(rate, now)
        self._clients[name] = client
        return client

    def _refuse(
        self, peer: _Peer, kind: Refusal, reason: str, now: float, peer_reason: str | None = None
    ) -> None:
        """Close the connection with `peer_reason` (default: `reason`) and log `reason`."""
        self.refused[kind.value] += 1
        self._log_limited(
            f"refused-{kind.value}",
            logging.WARNING,
            now,
            "refused kind=%s peer=%s reason=%r",
            kind.value,
            peer.address,
            reason,
        )
        peer.connection.close(peer_reason or reason)
        quic = peer.connection.quic
        if isinstance(quic, TunnelQuicConnection):
            quic.close_briefly()  # no closing period: its slot is free once the close left
            if self.tickets is not None:
                self.tickets.discard(quic.issued_tickets)
        self._actions.append(Refused(peer.connection, kind, reason))
        self._status_changed()

    def _close_peer(self, peer: _Peer, reason: str, now: float) -> None:
        """Close one connection ourselves and detach it from its client at once."""
        if not peer.connection.closed:
            peer.connection.close(reason)
            self._actions.append(Closed(peer.connection, reason))
        self._detach(peer, now)

    def _terminated(self, peer: _Peer, event: quic_events.ConnectionTerminated, now: float) -> None:
        if not peer.handshake_done and event.error_code == CRYPTO_ERROR_NO_APPLICATION_PROTOCOL:
            self.refused[Refusal.MODE.value] += 1
            self._log_limited(
                "refused-mode",
                logging.WARNING,
                now,
                "refused kind=mode peer=%s reason=%r",
                peer.address,
                event.reason_phrase,
            )
            self._status_changed()
        self._peers.pop(peer.connection, None)
        if peer.client is not None:
            log.info(
                "connection ended client=%s peer=%s error=%#x reason=%r",
                peer.client.name,
                peer.address,
                event.error_code,
                event.reason_phrase,
            )
        self._detach(peer, now)

    def _detach(self, peer: _Peer, now: float) -> None:
        client = peer.client
        if client is None:
            return
        peer.client = None
        if peer in client.peers:
            client.peers.remove(peer)
        client.strategy.left(peer, now)
        self._awaiting_session.pop(peer, None)
        self._health_due.pop(peer, None)
        self._health_dirty.discard(peer)
        self.sessions.leave(peer, now)  # an emptied session waits session_idle_expiry
        self._sessions_changed()
        self._forget_if_gone(client)
        self._status_changed()

    def _forget_if_gone(self, client: _Client) -> None:
        if client.peers or client.strategy.session is not None:
            return
        if self._clients.get(client.name) is client:
            self._forget(client)

    def _forget(self, client: _Client) -> None:
        del self._clients[client.name]
        self.client_slots.give_back()
        self._reordering.discard(client)
        for mapping in self.inbound.release(client.name):
            self._unmapped(mapping, "client gone")
        prefixes = self.addresses.prefixes_of(client.name)
        released = self.addresses.release(client.name)
        if client.payload is Payload.ETHERNET:
            self._actions.append(TapClosed(client.name))
            if client.macs is not None:
                # held a while, not freed: a reconnect must not let it (or another) take others
                self.mac_owners.left(client.name, client.macs.last_frame)
        else:
            self._actions.append(ClientLeft(client.name, prefixes))
        log.info(
            "client gone name=%s released=%s",
            client.name,
            ",".join(map(str, released)) or "none",
        )

    # -- tunnel events ---------------------------------------------------------------------------

    def _tunnel_event(self, peer: _Peer, event: TunnelEvent, now: float) -> None:
        client = peer.client
        if isinstance(event, PacketReceived):
            if client is None:
                self.counters["dropped_unauthenticated"] += 1
                return
            packets = client.strategy.received(peer, event, now)
            if packets is None:
                client.counters["dropped_no_session"] += 1
                return
            for packet in packets:
                self._from_client(client, packet, now)
            self._track_reorder(client)
        elif isinstance(event, ModeNegotiated):
            if event.mode not in self.config.modes:
                names = ", ".join(m.value for m in self.config.modes)
                # Refused at HandshakeCompleted, not now: a close sent before 1-RTT keys exist
                # loses its reason phrase (RFC 9000 §10.2.3), and the client should read it.
                peer.mode_refusal = (
                    f"{event.mode.value} mode (ALPN {event.alpn}) is not offered by this "
                    f"concentrator: use {names} mode"
                )
        elif isinstance(event, ConnectionClosed):
            if not event.by_peer:
                # Closed by the TunnelConnection on a rule violation: stop using it at once
                # rather than after the draining period.
                log.info("connection closed peer=%s reason=%r", peer.address, event.reason)
                self._detach(peer, now)
        elif client is None:
            # Nothing else counts before authentication. A New/Join Session can only be here
            # before it if it came in 0-RTT (README "0-RTT"): kept for then.
            if isinstance(event, SessionRequested | JoinRequested) and not peer.handshake_done:
                self._early_session_request(peer, event, now)
            return
        elif isinstance(event, SessionRequested):
            self._awaiting_session.pop(peer, None)
            client.strategy.session_requested(peer, event.qos, now)
            self._status_changed()
        elif isinstance(event, JoinRequested):
            self._awaiting_session.pop(peer, None)
            client.strategy.join_requested(peer, event.session_id, now)
            self._status_changed()
        elif isinstance(event, AccessReportReceived):
            self._access_report(peer, client, event, now)

    def _early_session_request(
        self, peer: _Peer, event: SessionRequested | JoinRequested, now: float
    ) -> None:
        """A New/Join Session in 0-RTT, before the handshake completed (README "0-RTT").

        0-RTT data can be replayed (RFC 8446 §8, RFC 9001 §9.2): a captured ClientHello with its
        0-RTT flight, sent again, reaches us as a connection that never completes its handshake.
        Nothing a 0-RTT message asks for changes state here before the handshake completes: the
        request is held and acted on after authentication, as if it had come in 1-RTT. A Join
        Session of a resumed connection whose ticket's client owns that session is *answered*
        at once (the FIN of our control stream, session draft §6.1.3, sent as 0.5-RTT data):
        that answer tells nothing new (the client sent the ID) and changes nothing, so a replay
        of it is harmless, and it saves the client a round trip. Should the join fail after
        all at handshake completion (the session expired meanwhile, a limit), the connection is
        closed instead of answered twice. New Session is never answered early: it creates and
        replaces sessions."""
        peer.held = event
        if not isinstance(event, JoinRequested) or self.tickets is None:
            return
        resumed = resumed_identity(peer.connection.quic)
        if resumed is None:
            return
        revocations = self.verifier.revocations
        if revocations is not None:
            self._note_crl(revocations.refresh())  # a client revoked since gets no answer
        try:
            self.verifier.verify_resumed(
                resumed.name, resumed.serial, resumed.not_valid_after, self._utc_now()
            )
        except ClientAuthError:
            return  # refused at handshake end, with the reason
        client = self._clients.get(resumed.name)
        session = None if client is None else client.strategy.session
        if (
            session is None
            or session.session_id != event.session_id
            or self.session_owner.get(event.session_id) != resumed.name
        ):
            return  # answered (refused) after authentication, with its RESET_STREAM code
        peer.connection.confirm_join()
        peer.answered_early = True
        self.counters["joins_answered_early"] += 1
        self._actions.append(Transmit(peer.connection))

    def _access_report(
        self, peer: _Peer, client: _Client, event: AccessReportReceived, now: float
    ) -> None:
        # Each report may switch paths, close replaced connections and rewrite the status:
        # beyond the client's budget they are ignored (and counted), so a flood costs the
        # concentrator one bucket check per report (README "Security").
        # The TLV has no sequence number, but each report comes on its own new stream and a
        # peer opens its streams in order (RFC 9000 §2.1): a report on a lower stream than the
        # last one applied for the same access was sent before it (a retransmission that
        # arrived late) and is stale. Ordering holds within one connection; across a session's
        # connections the last to arrive wins (README "The multipath engine").
        last = peer.report_streams.get(event.access_id)
        if last is not None and event.stream_id <= last:
            client.counters["access_reports_stale"] += 1
            self.counters["access_reports_stale"] += 1
            return
        if not client.reports.allow(1, now):
            client.counters["access_reports_ignored"] += 1
            self.counters["access_reports_ignored"] += 1
            return
        peer.report_streams[event.access_id] = event.stream_id
        available = event.signal is AccessSignal.AVAILABLE
        client.strategy.access_reported(peer, event.access_id, available, now)
        self._log_limited(
            f"report-{client.name}",
            logging.INFO,
            now,
            "access report client=%s peer=%s access=%s signal=%s",
            client.name,
            peer.address,
            access_name(event.access_id),
            event.signal.name.lower(),
        )
        self._status_changed()

    # -- failure detection (issue 12, tunnel/session/path_health.py) -------------------------------

    def _watch(self, peer: _Peer, now: float) -> None:
        """`peer` joined a session: its path is watched from now on (with detection on)."""
        if self.detection and peer.monitor is None:
            peer.monitor = PathMonitor(PROBE_BACKOFF_MAX)
            peer.monitor.reset(now)
            self._health_dirty.add(peer)

    def _health_event(self, peer: _Peer, now: float) -> None:
        """An ACK arrived (fates, a PING's answer): a path that is not ALIVE may be again."""
        monitor = peer.monitor
        if monitor is None:
            return
        if monitor.health is not PathHealth.ALIVE:
            self._check_health(peer, now)
        else:
            self._health_dirty.add(peer)

    def _schedule_health(self, peer: _Peer) -> None:
        monitor = peer.monitor
        due: float | None = None
        if monitor is not None and not peer.connection.closed and peer.client is not None:
            if monitor.health is not PathHealth.ALIVE:
                due = monitor.next_check()
            else:
                state = peer.connection.ack_state()
                due = None if state is None else monitor.silence_deadline(state)
        if due is None:
            self._health_due.pop(peer, None)
        else:
            self._health_due[peer] = due

    def _check_health(self, peer: _Peer, now: float) -> None:
        """Apply the failure detector to `peer`'s path, act on a new verdict (the client's
        strategy), and probe a path that is not ALIVE (a PING, with backoff)."""
        monitor, client, connection = peer.monitor, peer.client, peer.connection
        state = connection.ack_state()
        if monitor is None or client is None or connection.closed or state is None:
            self._health_due.pop(peer, None)
            return
        change = monitor.evaluate(state, now)
        if change is not None:
            self._log_limited(
                f"health-{client.name}",
                logging.INFO,
                now,
                "path %s client=%s peer=%s",
                change.value,
                client.name,
                peer.address,
            )
            client.strategy.health_changed(peer, change, now)
            self._status_changed()
        if monitor.probe_due(now):
            connection.quic.send_ping(next(self._ping_uids))
            monitor.probe_sent(now)
            self._actions.append(Transmit(connection))
        self._schedule_health(peer)

    # -- sessions (tunnel-session draft §4.1, §6.1): the table's side ------------------------------

    def _next_expiry(self) -> float | None:
        if self._expiry_stale:
            self._expiry = self.sessions.next_expiry()
            self._expiry_stale = False
        return self._expiry

    def _sessions_changed(self) -> None:
        """The session table changed (created, joined, left, discarded, expired)."""
        self._expiry_stale = True

    def _accept_session(self, peer: _Peer, session_id: bytes, joined: bool = False) -> None:
        """New Session: Session ID TLV + FIN; Join Session: FIN alone (session §6.1.3)."""
        self._sessions_changed()
        if joined:
            if not peer.answered_early:
                peer.connection.confirm_join()
        else:
            peer.connection.accept_session(session_id)
        self._actions.append(SessionAnswered(peer.connection, session_id))

    def _reject_join(self, peer: _Peer, code: ControlErrorCode, reason: str) -> None:
        if peer.answered_early:
            # its join was answered in 0.5-RTT already (_early_session_request): it cannot be
            # refused on the control stream any more
            peer.connection.close(f"session join failed after it was confirmed: {reason}")
            self._actions.append(SessionAnswered(peer.connection, None, code, reason))
            log.warning("early-answered join failed peer=%s reason=%r", peer.address, reason)
            return
        peer.connection.reject_join(code)
        self._actions.append(SessionAnswered(peer.connection, None, code, reason))
        log.warning("session refused peer=%s code=%s reason=%r", peer.address, code.name, reason)

    def _expire_sessions(self, now: float) -> None:
        self._sessions_changed()
        for entry in self.sessions.expire(now):
            owner = self.session_owner.pop(entry.session_id, None)
            log.info("session expired client=%s session=%s", owner, entry.session_id.hex())
            client = self._clients.get(owner) if owner is not None else None
            if client is not None and client.strategy.session_expired(entry.session_id):
                self._reordering.discard(client)
                self._forget_if_gone(client)
        self._status_changed()

    def _track_reorder(self, client: _Client) -> None:
        if client.strategy.next_deadline() is None:
            self._reordering.discard(client)
        else:
            self._reordering.add(client)

    # -- forwarding ------------------------------------------------------------------------------

    def _from_client(self, client: _Client, packet: bytes, now: float) -> None:
        """A packet a client sent: pool claim, ingress filter, host guard, rate limit, TUN."""
        if client.macs is not None:
            self._frame_from_client(client, client.macs, packet, now)
            return
        if is_link_scoped_ipv6(packet):
            client.counters["dropped_link_scope"] += 1
            return
        if not self.addresses.is_static(client.name):
            self._claim_source(client, packet)
        if not client.ingress.accept(packet):
            # Per client while it is known, and in total (a script can read the total after
            # the client is gone).
            client.counters["ingress_dropped"] += 1
            self.counters["ingress_dropped"] += 1
            return
        if self._pcp(client, packet, now):
            return
        if not self.host_guard.admits(packet):
            client.counters["to_concentrator_dropped"] += 1
            self.counters["to_concentrator_dropped"] += 1
            return
        bucket = client.bucket_in
        if bucket is not None and not bucket.allow(len(packet), now):
            client.counters["rate_limited_in"] += 1
            return
        if client.dscp is not None:
            packet = set_dscp(packet, client.dscp)
        self._to_tun.append((packet, client, False))

    def _frame_from_client(
        self, client: _Client, macs: MacFilter, frame: bytes, now: float
    ) -> None:
        """An Ethernet client's frame: its source MAC must be the client's (the L2 ingress
        filter), then the rate limit, then its TAP, where the bridge forwards it."""
        learning = macs.learning
        if learning:
            self.mac_owners.expire(now)  # a gone client's MACs may be free for another by now
        if not macs.accept(frame):
            client.counters["mac_dropped"] += 1
            self.counters["mac_dropped"] += 1
            return
        macs.last_frame = now
        if learning and not macs.learning:
            log.info(
                "client macs locked client=%s macs=%s",
                client.name,
                ",".join(map(mac_text, macs.macs)),
            )
            self._status_changed()
        bucket = client.bucket_in
        if bucket is not None and not bucket.allow(len(frame), now):
            client.counters["rate_limited_in"] += 1
            return
        self._to_taps.append((frame, client))

    def from_tap(self, name: str, frames: Sequence[bytes], now: float) -> Forwarded:
        """Frames read from client `name`'s TAP (the bridge sent them its way): to the client."""
        touched: set[TunnelConnection] = set()
        client = self._clients.get(name)
        if client is None or client.payload is not Payload.ETHERNET:
            self.counters["dropped_client_offline"] += len(frames)
            return Forwarded(())
        try:
            for frame in frames:
                self._limited_to_client(client, frame, now, touched, "frame")
            return Forwarded(tuple(touched))
        finally:
            self._touched(touched)

    def tap_failed(self, name: str, reason: str, now: float) -> None:
        """The TAP of client `name` could not be made (`reason`: one sentence): the client
        cannot be served, its connections are closed with the reason."""
        client = self._clients.get(name)
        log.error("client tap failed client=%s reason=%r", name, reason)
        self.counters["tap_failed"] += 1
        if client is not None:
            self._end_client(client, f"the concentrator cannot serve Ethernet: {reason}", now)

    # -- PCP (RFC 6887) through the tunnel: the reversed flow of stream mode -------------------

    def _pcp(self, client: _Client, packet: bytes, now: float) -> bool:
        """Take a client's PCP request to this host (UDP 5351 of one of its addresses or the
        TUN's), answer it, and act on it; False for any other packet (the cost on the
        forwarding path: a few byte comparisons)."""
        if not self.config.stream.enabled:
            return False  # the reversed flow is stream mode's: UDP 5351 is left to the host
        datagram = parse_udp(packet, PCP_SERVER_PORT)
        if datagram is None:
            return False
        destination = datagram.destination
        if destination.packed not in self.host_guard.own_addresses and not any(
            a.ip == destination for a in self.config.tun.addresses
        ):
            return False
        client.counters["pcp_requests"] += 1
        self.counters["pcp_requests"] += 1
        if client.pcp is None:
            client.pcp = TokenBucket(PCP_PER_SECOND, burst=2 * PCP_PER_SECOND, now=now)
        data = datagram.payload
        if not client.pcp.allow(1, now) or is_droppable(data):  # §8.3: runts, responses
            client.counters["pcp_dropped"] += 1
            self.counters["pcp_dropped"] += 1
            return True
        epoch = max(0, int(now - self._epoch_start)) & 0xFFFFFFFF
        try:
            request = decode_request(data)
        except PcpError as exc:
            self._pcp_refused(client, exc.result, exc.message, now)
            answer = error_response(data, exc.result, LONG_ERROR_LIFETIME, epoch)
            self._pcp_answer(client, datagram, answer, now)
            return True
        if request.map is None:
            # §14.1: ANNOUNCE is answered (the client learns our epoch); PEER is not served.
            result = ResultCode.SUCCESS if request.opcode == Opcode.ANNOUNCE else (
                ResultCode.UNSUPP_OPCODE
            )  # fmt: skip
            if result is not ResultCode.SUCCESS:
                self._pcp_refused(client, result, f"opcode {request.opcode}", now)
            self._pcp_answer(client, datagram, error_response(data, result, 0, epoch), now)
            return True
        mandatory = [o.code for o in request.map.options if o.mandatory]
        if mandatory:  # §7.3: a mandatory option we do not know
            decision = Decision(
                ResultCode.UNSUPP_OPTION,
                LONG_ERROR_LIFETIME,
                0,
                reason=f"options {mandatory} not supported",
            )
        elif self.stream_connection(client.name) is None:
            decision = Decision(
                ResultCode.NOT_AUTHORIZED,
                LONG_ERROR_LIFETIME,
                0,
                reason="inbound TCP needs stream mode on the client's connection",
            )
        else:
            decision = self.inbound.request(client.name, datagram.source, request.map, now)
        if decision.result is not ResultCode.SUCCESS:
            self._pcp_refused(client, decision.result, decision.reason, now)
        for mapping in decision.removed:
            self._unmapped(mapping, "deleted by the client")
        if decision.created is not None:
            mapping = decision.created
            log.info(
                "inbound mapped client=%s external=%d internal=%s:%d lifetime=%d",
                client.name,
                mapping.external_port,
                mapping.internal_address,
                mapping.internal_port,
                decision.lifetime,
            )
            self._actions.append(InboundMapped(mapping))
            self._status_changed()
        map_request = request.map
        response = PcpMapResponse(
            decision.result,
            decision.lifetime,
            epoch,
            map_request.nonce,
            map_request.protocol,
            map_request.internal_port,
            decision.external_port,
            self._external_address(datagram.destination)
            if decision.external_port
            else map_request.suggested_address,
        )
        self._pcp_answer(client, datagram, response.encode(), now)
        return True

    def _external_address(self, fallback: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
        """The address outside hosts reach a mapped port at (§11.1 Assigned External IP)."""
        addresses = self.config.stream.inbound_addresses or self.config.listen_addresses
        specific = [a for a in addresses if not a.is_unspecified]
        return specific[0] if specific else fallback

    def _pcp_refused(self, client: _Client, result: ResultCode, reason: str, now: float) -> None:
        client.counters["pcp_refused"] += 1
        self.counters["pcp_refused"] += 1
        self._log_limited(
            f"pcp-{client.name}",
            logging.INFO,
            now,
            "pcp refused client=%s result=%s reason=%s",
            client.name,
            result.name,
            reason,
        )

    def _pcp_answer(self, client: _Client, request: UdpDatagram, answer: bytes, now: float) -> None:
        reply = UdpDatagram(
            request.destination, request.source, PCP_SERVER_PORT, request.source_port, answer
        )
        touched: set[TunnelConnection] = set()
        self._to_client(client, udp_packet(reply), now, touched)
        for connection in touched:
            self._actions.append(Transmit(connection))

    def _unmapped(self, mapping: Mapping, reason: str) -> None:
        log.info(
            "inbound unmapped client=%s external=%d reason=%s",
            mapping.client,
            mapping.external_port,
            reason,
        )
        self._actions.append(InboundUnmapped(mapping, reason))
        self._status_changed()

    def _claim_source(self, client: _Client, packet: bytes) -> None:
        try:
            source = source_address(packet)
        except MalformedPacketError:
            return  # the ingress filter counts it
        result = self.addresses.claim(client.name, source)
        if result is Claim.CLAIMED:
            client.ingress.set_prefixes(self.addresses.prefixes_of(client.name))
            self._actions.append(AddressesClaimed(client.name, (ip_network(source),)))
            log.info("pool address claimed client=%s address=%s", client.name, source)
            self._status_changed()
        elif result is Claim.TAKEN:
            client.counters["pool_address_taken"] += 1

    def from_tun(self, packets: Sequence[bytes], now: float) -> Forwarded:
        """Packets read from the TUN: each to the client owning its destination."""
        touched: set[TunnelConnection] = set()
        try:
            return self._from_tun(packets, now, touched)
        finally:
            self._touched(touched)

    def _touched(self, touched: set[TunnelConnection]) -> None:
        """The failure detector's deadlines of these connections are stale (they sent)."""
        if self.detection:
            peers = self._peers
            for connection in touched:
                peer = peers.get(connection)
                if peer is not None and peer.monitor is not None:
                    self._health_dirty.add(peer)

    def _from_tun(
        self, packets: Sequence[bytes], now: float, touched: set[TunnelConnection]
    ) -> Forwarded:
        owner_of = self.addresses.owner_of_packet
        clients = self._clients
        for packet in packets:
            try:
                name = owner_of(packet)
            except Exception as exc:  # one bad packet must not cost the rest of the batch
                self._internal_error("tun packet", exc, now)
                continue
            client = clients.get(name) if name is not None else None
            if client is None or client.macs is not None:
                if name is not None:
                    self.counters["dropped_client_offline"] += 1
                elif is_link_scoped_ipv6(packet):  # our TUN's own router solicitations, MLD
                    self.counters["dropped_link_scope"] += 1
                else:
                    self.counters["dropped_no_route"] += 1
                continue
            self._limited_to_client(client, packet, now, touched, "packet")
        return Forwarded(tuple(touched))

    def _limited_to_client(
        self, client: _Client, data: bytes, now: float, touched: set[TunnelConnection], what: str
    ) -> None:
        """A packet (or Ethernet frame) from the TUN (or TAP) to its client: the client's rate
        limit, then `_to_client`; a bug there costs this packet, not the batch."""
        bucket = client.bucket_out
        if bucket is not None and not bucket.allow(len(data), now):
            client.counters["rate_limited_out"] += 1
            return
        try:
            self._to_client(client, data, now, touched)
        except Exception as exc:
            self._internal_error(f"{what} to client {client.name}", exc, now)

    def _to_client(
        self, client: _Client, packet: bytes, now: float, touched: set[TunnelConnection]
    ) -> None:
        try:
            connection, result, copies = client.strategy.send(packet, now)
        except DatagramError:
            client.counters["dropped_not_ip"] += 1
            return
        if result is HELD:
            self._track_reorder(client)  # the held packets' expiry
            return
        if connection is None or result is None:
            client.counters["dropped_no_path"] += 1
            return
        touched.add(connection)
        touched.update(copies)
        if result.status is SendStatus.SENT:
            client.counters["packets_to_client"] += 1
            client.counters["bytes_to_client"] += len(packet)
        elif result.status is SendStatus.TOO_BIG:
            if client.macs is not None:
                # A bridge has no Packet Too Big: the TAP's MTU keeps frames within the budget,
                # so only a frame beyond it (a VLAN tag, a bigger bridge port) comes here.
                client.counters["dropped_too_big"] += 1
            else:
                self._packet_too_big(client, packet, result.max_packet_size)
        # QUEUE_FULL / NOT_READY: counted by the connection (its drops_* counters)

    def _packet_too_big(self, client: _Client, packet: bytes, mtu: int) -> None:
        """Answer as a router whose next hop (the tunnel) has this MTU (tunnel/wire/icmp.py)."""
        error = self._too_big_error(client, packet, mtu)
        if error is None:
            client.counters["dropped_too_big"] += 1
        else:
            self._to_tun.append((error, client, True))

    @staticmethod
    def _too_big_error(client: _Client, packet: bytes, mtu: int) -> bytes | None:
        """The Packet Too Big for `packet` (None: none is due or possible), from the client's
        own address, the far end of its tunnel."""
        if client.macs is not None:
            return None  # a bridge has no Packet Too Big (_to_client)
        try:
            destination = destination_address(packet)
            v4 = destination if isinstance(destination, IPv4Address) else None
            v6 = destination if isinstance(destination, IPv6Address) else None
            return packet_too_big(packet, mtu, v4, v6)
        except MalformedPacketError:
            return None

    # -- bookkeeping -----------------------------------------------------------------------------

    def _status_changed(self) -> None:
        if not self._status_pending:
            self._status_pending = True
            self._actions.append(StatusChanged())

    def _internal_error(self, where: str, exc: Exception, now: float) -> None:
        """A bug met while handling one packet: counted and logged (with its traceback, at
        most LogBudget's rate), and only that packet is lost."""
        self.counters["internal_errors"] += 1
        suppressed = self.log_budget.allow("internal-error", now)
        if suppressed is not None:
            log.error("internal error in %s suppressed_before=%d", where, suppressed, exc_info=exc)

    def _log_limited(self, key: str, level: int, now: float, message: str, *args: object) -> None:
        """A log line a peer can cause at will: at most LogBudget's rate per key, and the next
        line after a pause says how many were suppressed."""
        suppressed = self.log_budget.allow(key, now)
        if suppressed is None:
            return
        if suppressed:
            message += " suppressed_before=%d"
            args = (*args, suppressed)
        log.log(level, message, *args)

    def _client_status(self, client: _Client) -> dict[str, Any]:
        connections = []
        for peer in client.peers:
            connection = peer.connection
            srtt = connection.srtt
            connections.append(
                {
                    "access_id": access_name(peer.access_id) if peer.access_id else None,
                    "peer": peer.address,
                    "alpn": connection.alpn,
                    "stream_mode": connection.stream_mode,
                    "srtt_ms": None if srtt is None else round(srtt * 1000, 3),
                    "pending_datagrams": connection.pending_datagrams,
                    "cwnd_bytes": connection.congestion_window,
                    "ssthresh_bytes": connection.slow_start_threshold,
                    "bytes_in_flight": connection.bytes_in_flight,
                    "pmtu": connection.pmtu,
                    # what the multipath engine did on this connection (issue 12)
                    "health": peer.monitor.health.value if peer.monitor else None,
                    "counters": {
                        **connection.counters.as_dict(),
                        **dict.fromkeys(RESEND_COUNTERS, 0),
                        **client.strategy.peer_counters(peer),
                        "suspected": peer.monitor.suspected if peer.monitor else 0,
                        "died": peer.monitor.died if peer.monitor else 0,
                    },
                }
            )
        macs = client.macs
        return {
            "name": client.name,
            "mode": client.strategy.mode.value,
            "payload": client.payload.value,
            "addresses": [str(p) for p in self.addresses.prefixes_of(client.name)],
            "macs": None if macs is None else [mac_text(m) for m in macs.macs],
            "connections": connections,
            "ingress": client.ingress.stats.as_dict(),
            "mac_filter": None if macs is None else macs.stats.as_dict(),
            "counters": dict(client.counters),
            **client.strategy.status(),
        }


__all__ = [
    "AUTH_FAILED_REASON",
    "Action",
    "AddressesClaimed",
    "ClientArrived",
    "ClientLeft",
    "Closed",
    "ConcentratorCore",
    "CrlReloaded",
    "Forwarded",
    "InboundMapped",
    "InboundUnmapped",
    "PeerQuicConnection",
    "Refusal",
    "Refused",
    "SessionAnswered",
    "StatusChanged",
    "TapClosed",
    "TapOpened",
    "describe_peer",
]
