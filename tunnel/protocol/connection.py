"""A QUIC tunnel connection, layered on an aioquic QuicConnection the way aioquic's
H3Connection is: the I/O layer feeds it every QUIC event through `handle_event()`
and gets tunnel events back; its send methods queue frames on the QuicConnection,
which the I/O layer then flushes with `datagrams_to_send()`. Sans-I/O: no sockets,
no clock, no threads.

What it implements:
- tunnel mode (draft-piraux-intarea-quic-tunnel-00 §4, ALPN "qt"/"qt-00"): each IP
  packet whole in one DATAGRAM frame, Access Reports on their own uni streams (§6);
- tunnel session mode (-tunnel-session-00, ALPN "qt-session"/"qt-session-00"):
  Protocol Type + Packet Tag datagrams (§4), the control streams 2 and 3 with New
  Session / Session ID / Join Session and the RESET_STREAM join errors (§4.1, §6.1);
- stream mode (-tunnel-tcp-00, transport parameter quic_tunnel_stream_mode, see
  tunnel.protocol.quic_ext): one bidirectional stream per TCP connection, TLV preamble
  (§5.1), FIN/RST mapping (§3).
- the payload (IP packets or Ethernet frames, README "L2 mode"): the client's, announced in
  our quic_tunnel_payload transport parameter (tunnel-00 §4: "signalled out of band"; absent:
  IP); session datagrams of any other Protocol Type are dropped and counted (-session-00 §4).

A peer that breaks a connection-level rule gets the connection closed with a reason
phrase saying which rule; a peer that breaks a stream-level rule gets an Error TLV
on that stream (-tcp §5.1.3). Misuse of this API raises TunnelUsageError.
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final, TypeAlias

from aioquic.buffer import size_uint_var
from aioquic.quic import events as quic_events
from aioquic.quic.connection import QuicConnection, stream_is_client_initiated
from aioquic.quic.connection import stream_is_unidirectional as _is_uni
from aioquic.quic.packet import CONNECTION_ID_MAX_SIZE

from tunnel.protocol.codel import CoDel
from tunnel.protocol.pmtu_victims import RecentLargePackets
from tunnel.protocol.quic_ext import (
    AEAD_TAG_SIZE,
    DATAGRAM_FRAME_TYPE_SIZE,
    SHORT_HEADER_FIXED_SIZE,
    AckState,
    DatagramFate,
    TunnelQuicConnection,
    datagram_budget,
    is_ending,
    minimum_rtt,
    packet_datagram_budget,
    pending_datagram_count,
    queue_datagram_at,
    send_rate,
    smoothed_rtt,
    stream_acknowledged,
    stream_send_open,
)
from tunnel.wire.datagram import (
    PAYLOAD_PROTOCOL_TYPES,
    SESSION_HEADER_SIZE,
    Payload,
    decode_session_datagram,
    decode_tunnel_datagram,
    encode_session_datagram,
    encode_tunnel_datagram,
    payload_of_ethertype,
    protocol_type_for,
)
from tunnel.wire.errors import (
    TCP_CONNECTION_RESET,
    ControlErrorCode,
    DatagramError,
    StreamErrorCode,
    TunnelError,
)
from tunnel.wire.messages import (
    CONTROL_DECODERS,
    AccessId,
    AccessReport,
    AccessSignal,
    ControlMessage,
    End,
    ErrorTLV,
    JoinSession,
    NewSession,
    SessionIdTLV,
    StreamPreambleDecoder,
    TcpConnect,
    TcpConnectOk,
)
from tunnel.wire.modes import ALL_ALPN, TunnelMode, mode_of_alpn
from tunnel.wire.tlv import TLVReader

CONNECTION_PROTOCOL_VIOLATION: Final = 0x0
"""Application error code of our CONNECTION_CLOSE on a peer's rule violation. The
drafts define no connection-level codes; 0x0 mirrors PROTOCOL_VIOLATION of -tcp
§5.1.3 and the reason phrase names the rule."""

INTERNAL_ERROR_REASON: Final = "internal error"
"""The reason phrase of a connection closed for a bug of ours: the peer learns nothing of it
(RFC 9000 §20.1, INTERNAL_ERROR)."""

ACCESS_REPORT_CANCELLED: Final = 0x0
"""RESET_STREAM code when cancelling an Access Report (-tunnel-00 §6 defines none)."""

DEFAULT_MAX_PENDING_DATAGRAMS: Final = 256
"""Cap on aioquic's datagram queue: aioquic never drops from it, so without a cap a
congested path would buffer without bound and add latency to every tunnelled flow."""

CLIENT_CONTROL_STREAM: Final = 2
SERVER_CONTROL_STREAM: Final = 3
"""-tunnel-session-00 §4.1: each endpoint's first unidirectional stream."""


class TunnelUsageError(RuntimeError):
    """A method was called when the connection's mode, role or state does not allow it."""


class DropReason(Enum):
    OVERSIZED = "oversized"
    """Larger than max_packet_size(): aioquic would block every later datagram."""
    QUEUE_FULL = "queue_full"
    """aioquic's pending-datagram queue reached its cap."""
    QUEUE_DELAY = "queue_delay"
    """CoDel refused it: the queue's delay stayed above its target (tunnel/protocol/codel.py)."""
    NOT_READY = "not_ready"
    """No mode negotiated yet, or the connection is closed."""
    DEAD_PATH = "dead_path"
    """Queued for a session path then found dead (or its access unavailable): re-sent on
    another path, or stale by the time it healed (TunnelSession, drop_queued_datagrams)."""
    MALFORMED = "malformed"
    """A received DATAGRAM that is not a valid tunnel / session datagram."""
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    """Session mode Protocol Type this connection's payload does not carry (-tunnel-session-00
    §4: MAY drop): anything but IPv4/IPv6 with an IP payload, anything but 0x6558 with an
    Ethernet one, everything when the client announced a payload we do not know."""
    INVALID_ACCESS_REPORT = "invalid_access_report"
    """Access Report with an unknown AI or Signal: MUST be discarded (-tunnel-00 §7.1.1)."""
    UNKNOWN_CONTROL_TLV = "unknown_control_tlv"
    """A control TLV of a type we do not know, skipped: the registry grows by IETF Review
    (-tunnel-00 §9.2.1), so a peer implementing a later document may send one."""


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeNegotiated:
    mode: TunnelMode
    stream_mode: bool
    alpn: str


@dataclass(frozen=True)
class PacketReceived:
    packet: bytes
    protocol_type: int
    packet_tag: int | None
    """Session mode only (-tunnel-session-00 §4); None in tunnel mode."""


@dataclass(frozen=True)
class DatagramDropped:
    reason: DropReason
    size: int


@dataclass(frozen=True)
class AccessReportReceived:
    access_id: AccessId
    signal: AccessSignal
    stream_id: int = field(default=-1, compare=False)
    """The unidirectional stream it came on (not part of the report's value). The TLV carries
    no sequence number, but each report travels on its own new stream (-tunnel-00 §7.1) and a
    peer opens its streams in
    increasing order (RFC 9000 §2.1): of two reports of one connection, the one on the higher
    stream was sent later, whatever order they arrive in (issue 12)."""


@dataclass(frozen=True)
class SessionRequested:
    """Concentrator: the client sent New Session; answer with accept_session()."""

    qos: bytes


@dataclass(frozen=True)
class JoinRequested:
    """Concentrator: the client sent Join Session; answer accept_session() or reject_join()."""

    session_id: bytes


@dataclass(frozen=True)
class SessionEstablished:
    """Client: the concentrator closed its control stream after a Session ID TLV."""

    session_id: bytes


@dataclass(frozen=True)
class SessionJoinFailed:
    """Client: the concentrator reset its control stream with this code."""

    code: ControlErrorCode | int


@dataclass(frozen=True)
class TcpConnectRequested:
    stream_id: int
    address: IPv4Address | IPv6Address
    port: int


@dataclass(frozen=True)
class TcpConnectAccepted:
    stream_id: int


@dataclass(frozen=True)
class TcpConnectFailed:
    stream_id: int
    code: StreamErrorCode | int
    payload: bytes


@dataclass(frozen=True)
class StreamDataReceived:
    stream_id: int
    data: bytes
    end: bool


@dataclass(frozen=True)
class StreamReset:
    stream_id: int
    code: int


@dataclass(frozen=True)
class StopSendingReceived:
    stream_id: int
    code: int


@dataclass(frozen=True)
class StreamRejected:
    """We refused a stream whose TLVs broke -tcp §5.1 (Error TLV or reset sent)."""

    stream_id: int
    code: StreamErrorCode
    reason: str


@dataclass(frozen=True)
class ConnectionClosed:
    error_code: int
    reason: str
    by_peer: bool


TunnelEvent: TypeAlias = (
    ModeNegotiated
    | PacketReceived
    | DatagramDropped
    | AccessReportReceived
    | SessionRequested
    | JoinRequested
    | SessionEstablished
    | SessionJoinFailed
    | TcpConnectRequested
    | TcpConnectAccepted
    | TcpConnectFailed
    | StreamDataReceived
    | StreamReset
    | StopSendingReceived
    | StreamRejected
    | ConnectionClosed
)


STREAM_EVENTS: Final = (
    TcpConnectRequested,
    TcpConnectAccepted,
    TcpConnectFailed,
    StreamDataReceived,
    StreamReset,
    StopSendingReceived,
    StreamRejected,
)
"""The -tcp draft's events: what a program hands to its stream-mode relay (tunnel/aio/
stream_server.py, stream_client.py) rather than handling itself."""


# -- sending results and counters --------------------------------------------------------


class SendStatus(Enum):
    SENT = "sent"
    TOO_BIG = "too_big"
    QUEUE_FULL = "queue_full"
    QUEUE_DELAY = "queue_delay"
    NOT_READY = "not_ready"


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    max_packet_size: int
    """The budget at send time: the MTU to report in ICMP Packet Too Big / Frag Needed."""

    @property
    def sent(self) -> bool:
        return self.status is SendStatus.SENT


@dataclass
class TunnelCounters:
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0
    access_reports_sent: int = 0
    access_reports_received: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: DropReason, count: int = 1) -> None:
        self.drops[reason.value] += count

    def as_dict(self) -> dict[str, int]:
        """Flat name -> count, drops as drops_<reason>, for CSV rows."""
        flat = {
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "access_reports_sent": self.access_reports_sent,
            "access_reports_received": self.access_reports_received,
        }
        for reason in DropReason:
            flat[f"drops_{reason.value}"] = self.drops[reason.value]
        return flat


# -- per-stream state --------------------------------------------------------------------


class _Violation(Exception):
    """A peer broke a connection-level rule: close with this reason."""


@dataclass
class _UniStream:
    reader: TLVReader = field(default_factory=TLVReader)
    messages: list[ControlMessage] = field(default_factory=list)
    discarded: bool = False  # an invalid Access Report or unknown TLV was skipped (counted)


@dataclass
class _TcpStream:
    opened_by_peer: bool
    decoder: StreamPreambleDecoder
    preamble_sent: bool  # our TLVs up to End are written
    finished_sending: bool = False  # our FIN or RESET_STREAM is queued
    finished_receiving: bool = False  # the peer's FIN was delivered or its RESET_STREAM came
    connect: TcpConnect | None = None
    # the first Error TLV only: the one reported (§5.1.3 allows several, a peer could send
    # them without end)
    first_error: ErrorTLV | None = None
    rejected: bool = False
    failed: bool = False


class TunnelConnection:
    """One QUIC tunnel connection (see the module docstring).

    :param quic: the QuicConnection to drive; use tunnel.protocol.quic_ext.TunnelQuicConnection
        for stream mode (a plain QuicConnection never negotiates it).
    :param max_pending_datagrams: cap on aioquic's unsent datagram queue.
    :param queue_delay: CoDel on that queue (tunnel/protocol/codel.py), None for none; then
        send_packet needs `now`.
    """

    def __init__(
        self,
        quic: QuicConnection,
        max_pending_datagrams: int = DEFAULT_MAX_PENDING_DATAGRAMS,
        queue_delay: CoDel | None = None,
    ) -> None:
        if max_pending_datagrams < 1:
            raise ValueError(f"max_pending_datagrams must be >= 1, got {max_pending_datagrams}")
        self._quic = quic
        self._is_client = quic.configuration.is_client
        self._max_pending = max_pending_datagrams
        self.queue_delay = queue_delay
        self._mode: TunnelMode | None = None
        self._stream_mode = False
        self._payload: Payload | None = Payload.IP
        self._accepted_types: frozenset[int] = PAYLOAD_PROTOCOL_TYPES[Payload.IP]
        self._alpn: str | None = None
        self._closed: ConnectionClosed | None = None
        self.counters = TunnelCounters()
        # Estimated packet bytes of each datagram we queued in aioquic, oldest first, and their
        # sum: aioquic sends its queue in order, so whatever it no longer holds is the oldest of
        # ours (see queued_datagram_bytes).
        self._queued_sizes: deque[int] = deque()
        self._queued_bytes = 0
        # ... and when each was queued (None: no `now` given), for the queue's delay
        self._queued_times: deque[float | None] = deque()
        # re-sends at the head of the queue not sent yet: the next one goes after them
        self._queued_resends = 0
        self._budget_key: tuple[TunnelMode, int, int | None, int, int | None] | None = None
        self._budget = 0

        # session control (-tunnel-session-00 §4.1)
        self._control_sent = False
        self._control_received: NewSession | JoinSession | None = None
        self._control_stream_finished = False
        self._session_id: bytes | None = None
        self._requested_join: bytes | None = None

        # Per-stream state lives only while the stream is open: a stream is forgotten once
        # both of its directions ended, so that many short streams leave nothing behind.
        self._uni_streams: dict[int, _UniStream] = {}
        self._tcp_streams: dict[int, _TcpStream] = {}
        # with pmtu_discovery: the latest large inner packet of each flow, answered with Packet
        # Too Big if a black hole swallowed it (black_hole_victims); packets that fit the
        # budget at the base size with the longest connection ID are never refused
        search = quic.pmtu if isinstance(quic, TunnelQuicConnection) else None
        self._victims = (
            None
            if search is None
            else RecentLargePackets(
                packet_datagram_budget(search.base, CONNECTION_ID_MAX_SIZE) - SESSION_HEADER_SIZE
            )
        )
        self.access_availability: dict[AccessId, AccessSignal] = {}
        """Receiver's view: the last signal reported for each access (-tunnel-00 §6)."""

    # -- properties ----------------------------------------------------------------------

    @property
    def quic(self) -> QuicConnection:
        return self._quic

    @property
    def is_client(self) -> bool:
        return self._is_client

    @property
    def mode(self) -> TunnelMode | None:
        return self._mode

    @property
    def alpn(self) -> str | None:
        return self._alpn

    @property
    def stream_mode(self) -> bool:
        return self._stream_mode

    @property
    def payload(self) -> Payload | None:
        """What the tunnel carries, known once the mode is: the payload the client announced in
        quic_tunnel_payload (tunnel/protocol/quic_ext.py; absent: IP). None when it announced an
        EtherType we do not carry: every datagram is then dropped, and the concentrator closes
        the connection."""
        return self._payload

    @property
    def payload_ethertype(self) -> int | None:
        """The EtherType the client announced in quic_tunnel_payload (None: not announced)."""
        quic = self._quic
        if not isinstance(quic, TunnelQuicConnection):
            return None
        return quic.local_payload_ethertype if self._is_client else quic.peer_payload_ethertype

    @property
    def session_id(self) -> bytes | None:
        return self._session_id

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def ending(self) -> bool:
        """Closed, or closing or draining: a peer's CONNECTION_CLOSE arrived (or we sent one)
        and aioquic has not yet said the connection ended (three PTOs later, RFC 9000 §10.2).
        Nothing more gets through it: its silence meanwhile says nothing of its path."""
        return self._closed is not None or is_ending(self._quic)

    @property
    def close_reason(self) -> str | None:
        return None if self._closed is None else self._closed.reason

    @property
    def srtt(self) -> float | None:
        """Smoothed RTT of the path in seconds, None before the first sample."""
        return smoothed_rtt(self._quic)

    @property
    def pending_datagrams(self) -> int:
        return pending_datagram_count(self._quic)

    @property
    def pmtu(self) -> dict[str, Any] | None:
        """Path MTU discovery's state for the status file (limits.pmtu_discovery; None without
        it): the UDP payload size in use and what the search did (tunnel/protocol/pmtu.py)."""
        quic = self._quic
        search = quic.pmtu if isinstance(quic, TunnelQuicConnection) else None
        if search is None:
            return None
        return {
            "state": search.state.value,
            "datagram_size": search.size,
            "largest_acked": search.low,
            "smallest_lost": search.high if search.high <= search.ceiling else None,
            **asdict(search.counters),
            # the latest black hole suspicions' times (CLOCK_MONOTONIC s, as time.monotonic())
            "black_hole_episodes": [asdict(episode) for episode in search.episodes],
        }

    @property
    def can_send_datagram(self) -> bool:
        """send_packet would accept a packet of the budget's size now (the queue is not at
        its cap). Says nothing about the congestion window: see window_space."""
        return self.can_resend_datagram and self.pending_datagrams < self._max_pending

    @property
    def can_resend_datagram(self) -> bool:
        """send_packet(resend=True) would accept a packet of the budget's size now (a
        re-send is not held to the queue's cap)."""
        return self._mode is not None and not self.closed and self.max_packet_size() > 0

    @property
    def congestion_window(self) -> int:
        """The path's congestion window in bytes (RFC 9002 §7), aioquic's loss recovery."""
        return int(self._quic._loss.congestion_window)

    @property
    def slow_start_threshold(self) -> int | None:
        """The congestion controller's ssthresh in bytes; None while still in slow start."""
        value = getattr(self._quic._loss._cc, "ssthresh", None)
        return None if value is None else int(value)

    @property
    def bytes_in_flight(self) -> int:
        """Bytes of sent, ack-eliciting packets neither acknowledged nor declared lost."""
        return int(self._quic._loss.bytes_in_flight)

    @property
    def queued_datagram_bytes(self) -> int:
        """Estimated packet bytes of the datagrams still waiting in aioquic's queue.

        aioquic only writes queued DATAGRAM frames while the congestion window and the pacer
        allow, and the I/O layer flushes once per batch of packets, so between two flushes
        the window's room is taken by this queue as much as by the bytes in flight. Each
        datagram counts as the 1-RTT packet that would carry it alone (header, frame, AEAD
        tag), what bytes_in_flight will count once it is sent.
        """
        pending = self._forget_sent_datagrams()
        # Datagrams queued on the QuicConnection directly (not through send_packet) have no
        # recorded size: count them as full packets.
        unknown = pending - len(self._queued_sizes)
        return self._queued_bytes + unknown * int(self._quic._max_datagram_size)

    @property
    def window_space(self) -> int:
        """Bytes the congestion window can still take: the window minus the bytes in flight
        and the bytes queued (negative when more is queued than the window will let out before
        acknowledgements arrive)."""
        return self.congestion_window - self.bytes_in_flight - self.queued_datagram_bytes

    @property
    def min_rtt(self) -> float | None:
        """The least RTT seen on the path (s), None before the first sample."""
        return minimum_rtt(self._quic)

    @property
    def send_rate(self) -> float | None:
        """Bytes per second the path lets out: the controller's pacing rate when it has one
        (BBR, "none"), else one congestion window per smoothed RTT; None before an RTT."""
        return send_rate(self._quic)

    def ack_state(self) -> AckState | None:
        """Loss recovery's view of the path, for failure detection (None without a
        TunnelQuicConnection)."""
        quic = self._quic
        return quic.ack_state() if isinstance(quic, TunnelQuicConnection) else None

    def path_probe(self, key: Hashable, now: float) -> bytes | None:
        """A PATH_CHALLENGE probe to send from the local socket `key` names
        (TunnelQuicConnection.path_probe); None without a TunnelQuicConnection."""
        quic = self._quic
        return quic.path_probe(key, now) if isinstance(quic, TunnelQuicConnection) else None

    def end_path_probe(self, key: Hashable) -> None:
        """The probe socket `key` is closed (TunnelQuicConnection.end_path_probe)."""
        quic = self._quic
        if isinstance(quic, TunnelQuicConnection):
            quic.end_path_probe(key)

    def black_hole_victims(self, now: float) -> list[bytes]:
        """After a PathMtuFell event: the inner IP packets queued on the path in use in the
        last seconds that the fallen budget no longer holds, one per flow, to be answered with
        Packet Too Big (tunnel/protocol/pmtu_victims.py); [] without pmtu_discovery."""
        victims, quic = self._victims, self._quic
        if victims is None or not isinstance(quic, TunnelQuicConnection):
            return []
        # and those dropped from the queue by the fall, whenever they were queued (before a
        # migration, a packet waits for the new path's confirmation)
        refused: list[bytes] = []
        payload = self._payload
        for data in quic.take_refused_datagrams():
            with contextlib.suppress(DatagramError):
                if self._mode is TunnelMode.SESSION:
                    refused.append(decode_session_datagram(data)[2])
                elif payload is not None:
                    refused.append(decode_tunnel_datagram(data, payload))
        return victims.victims(
            self.max_packet_size(), now, since=quic.path_reset_at, refused=refused
        )

    def drop_queued_datagrams(
        self, drop: Callable[[Hashable | None], bool]
    ) -> list[Hashable | None]:
        """Take the datagrams still waiting in aioquic's queue whose token `drop` names out of
        it (TunnelQuicConnection.drop_queued_datagrams), and out of our records of the queue;
        returns their tokens. Without a TunnelQuicConnection, nothing."""
        quic = self._quic
        if not isinstance(quic, TunnelQuicConnection):
            return []
        pending = self._forget_sent_datagrams()
        gone = quic.drop_queued_datagrams(drop)
        if not gone:
            return []
        # our records mirror the tail of aioquic's queue (untracked ones may lead it)
        offset = pending - len(self._queued_sizes)
        for position, _ in reversed(gone):
            mine = position - offset
            if mine >= 0:
                self._queued_bytes -= self._queued_sizes[mine]
                del self._queued_sizes[mine]
                del self._queued_times[mine]
            if position < self._queued_resends:
                self._queued_resends -= 1
        self.counters.drop(DropReason.DEAD_PATH, len(gone))
        return [token for _, token in gone]

    def take_datagram_fates(self) -> list[DatagramFate]:
        """The fates of the datagrams sent with a token known since the last call
        (TunnelQuicConnection.take_datagram_fates)."""
        quic = self._quic
        return quic.take_datagram_fates() if isinstance(quic, TunnelQuicConnection) else []

    def is_available(self, access_id: AccessId) -> bool:
        """Whether the peer's last report for `access_id` (if any) said available."""
        return self.access_availability.get(access_id, AccessSignal.AVAILABLE) is (
            AccessSignal.AVAILABLE
        )

    # -- datagrams -----------------------------------------------------------------------

    def max_packet_size(self) -> int:
        """Largest packet send_packet() accepts now: the DATAGRAM budget minus the
        session header. 0 before the mode and the peer's parameters are known."""
        if self._mode is None:
            return 0
        # Asked several times per packet (by the session's scheduler for every path, then by
        # send_packet): recompute only when one of the budget's inputs changed.
        quic = self._quic
        key = (
            self._mode,
            quic._max_datagram_size,
            getattr(quic, "_tunnel_admitted", None),  # pmtu_discovery's admitted size
            len(quic._peer_cid.cid),
            quic._remote_max_datagram_frame_size,
        )
        if key != self._budget_key:
            header = SESSION_HEADER_SIZE if self._mode is TunnelMode.SESSION else 0
            self._budget = max(datagram_budget(quic) - header, 0)
            self._budget_key = key
        return self._budget

    def send_packet(
        self,
        packet: bytes,
        packet_tag: int | None = None,
        token: Hashable | None = None,
        now: float | None = None,
        resend: bool = False,
    ) -> SendResult:
        """Queue one IP packet in a DATAGRAM frame.

        The size is checked BEFORE aioquic: an oversized datagram would stay at the
        head of aioquic's queue and block every later one. A refused packet is
        counted and the result carries the budget, for an ICMP Packet Too Big.
        With a `token` (and a TunnelQuicConnection), the DATAGRAM's fate is reported by
        take_datagram_fates() (issue 12: reinjection, loss hiding). `now` is needed with a
        queue_delay CoDel, which may refuse the packet (QUEUE_DELAY) when the queue's delay
        stayed above its target. A `resend` (reinjection, loss hiding: issue 12) goes ahead of
        the new packets in the queue (after the re-sends still there), and is refused by
        neither the queue's cap nor CoDel: it fills a hole the peer's reorder buffer or the
        inner flow waits on, and a packet is re-sent at most once, so re-sends stay bounded by
        what was sent.
        Raises DatagramError if `packet` is not a packet of the payload (an IPv4/IPv6 packet, or
        an Ethernet frame), ValueError if session mode lacks a packet tag.
        """
        budget = self.max_packet_size()
        payload = self._payload
        if self._mode is None or self.closed or budget == 0 or payload is None:
            self.counters.drop(DropReason.NOT_READY)
            return SendResult(SendStatus.NOT_READY, budget)
        if self._mode is TunnelMode.SESSION:
            if packet_tag is None:
                raise ValueError(
                    "session mode needs a packet tag: send through TunnelSession.send_packet "
                    "or pass packet_tag"
                )
            # session draft §4: 0x0800/0x86DD for IP, 0x6558 for an Ethernet frame
            protocol = protocol_type_for(payload, packet)
            data = encode_session_datagram(protocol, packet_tag, packet)
        else:
            data = encode_tunnel_datagram(packet, payload)
        if len(packet) > budget:
            self.counters.drop(DropReason.OVERSIZED)
            return SendResult(SendStatus.TOO_BIG, budget)
        pending = self._forget_sent_datagrams()  # before queuing: the new one is not sent yet
        if resend:
            return self._queue_first(data, packet, token, now, budget)
        if pending >= self._max_pending:
            self.counters.drop(DropReason.QUEUE_FULL)
            return SendResult(SendStatus.QUEUE_FULL, budget)
        quic = self._quic
        codel = self.queue_delay
        if codel is not None:
            if now is None:
                raise ValueError("a connection with a queue_delay CoDel needs send_packet(now=)")
            if isinstance(quic, TunnelQuicConnection):
                codel.fit_rtt(quic.min_rtt())
            if codel.should_drop(self._queue_delay(now), pending, now):
                self.counters.drop(DropReason.QUEUE_DELAY)
                return SendResult(SendStatus.QUEUE_DELAY, budget)
        if token is not None and isinstance(quic, TunnelQuicConnection):
            quic.send_datagram_frame(data, token)
        else:
            quic.send_datagram_frame(data)
        return self._record_queued(len(data), packet, now, budget, at=None)

    def _queue_first(
        self,
        data: bytes,
        packet: bytes,
        token: Hashable | None,
        now: float | None,
        budget: int,
    ) -> SendResult:
        """send_packet for a re-send: ahead of every new packet in aioquic's queue (and in
        ours, which mirror it in order), after the re-sends still waiting there: re-sends
        leave in the order they were made (oldest holes first), the peer's reorder buffer
        fills its gaps from the front."""
        at = min(self._queued_resends, len(self._queued_sizes))
        queue_datagram_at(self._quic, data, token, at)
        self._queued_resends = at + 1
        return self._record_queued(len(data), packet, now, budget, at)

    def _record_queued(
        self, data_size: int, packet: bytes, now: float | None, budget: int, at: int | None
    ) -> SendResult:
        """Mirror a datagram just queued in aioquic (at position `at`, None: the tail) in our
        size and time records, and count it sent."""
        packet_size = len(packet)
        victims = self._victims
        if (
            victims is not None
            and packet_size > victims.floor
            and now is not None
            and self._payload is Payload.IP
        ):
            victims.note(packet, now)
        size = self._datagram_packet_size(data_size)
        self._queued_bytes += size
        sizes, times = self._queued_sizes, self._queued_times
        if at is None:
            sizes.append(size)
            times.append(now)
        else:
            sizes.insert(at, size)
            # the queue's delay (CoDel) stays that of the packet that has waited longest
            times.insert(at, times[0] if times else now)
        self.counters.packets_out += 1
        self.counters.bytes_out += packet_size
        return SendResult(SendStatus.SENT, budget)

    def _receive_datagram(self, data: bytes) -> list[TunnelEvent]:
        if self._mode is None:
            return [self._drop_received(DropReason.NOT_READY, len(data))]
        payload = self._payload
        try:
            if self._mode is TunnelMode.SESSION:
                if len(data) >= 2 and int.from_bytes(data[0:2]) not in self._accepted_types:
                    # session draft §4: a Protocol Type this tunnel does not carry "MAY" be
                    # dropped; it must never reach the device of the other payload (an
                    # Ethernet frame into a TUN, an IP packet onto a bridge).
                    return [self._drop_received(DropReason.UNSUPPORTED_PROTOCOL, len(data))]
                protocol, tag, packet = decode_session_datagram(data)
            elif payload is None:
                return [self._drop_received(DropReason.UNSUPPORTED_PROTOCOL, len(data))]
            else:
                # tunnel draft §4: no Protocol Type, the payload was signalled out of band
                packet = decode_tunnel_datagram(data, payload)
                protocol, tag = protocol_type_for(payload, packet), None
        except DatagramError:
            return [self._drop_received(DropReason.MALFORMED, len(data))]
        self.counters.packets_in += 1
        self.counters.bytes_in += len(packet)
        return [PacketReceived(packet, protocol, tag)]

    def _forget_sent_datagrams(self) -> int:
        """Drop the recorded sizes of the datagrams aioquic has sent since the last call
        (it sends its queue in order, so they are our oldest); returns its queue length."""
        pending = pending_datagram_count(self._quic)
        sizes = self._queued_sizes
        sent = len(sizes) - pending
        if sent > 0:
            self._queued_resends = max(0, self._queued_resends - sent)
        while len(sizes) > pending:
            self._queued_bytes -= sizes.popleft()
            self._queued_times.popleft()
        return pending

    def _queue_delay(self, now: float) -> float:
        """How long the oldest datagram we queued (and aioquic still holds) has waited."""
        queued_at = self._queued_times[0] if self._queued_times else None
        return 0.0 if queued_at is None else max(now - queued_at, 0.0)

    def packet_bytes(self, packet_size: int) -> int:
        """What sending a tunnelled packet of `packet_size` bytes will take from the
        congestion window: the 1-RTT packet that carries its DATAGRAM frame alone."""
        header = SESSION_HEADER_SIZE if self._mode is TunnelMode.SESSION else 0
        return self._datagram_packet_size(header + packet_size)

    def _datagram_packet_size(self, payload_size: int) -> int:
        """Bytes of the 1-RTT packet that carries one DATAGRAM frame of this payload alone
        (the unit of bytes_in_flight): short header, frame type and length, payload, tag."""
        return (
            SHORT_HEADER_FIXED_SIZE
            + len(self._quic._peer_cid.cid)
            + DATAGRAM_FRAME_TYPE_SIZE
            + size_uint_var(payload_size)
            + payload_size
            + AEAD_TAG_SIZE
        )

    def _drop_received(self, reason: DropReason, size: int) -> DatagramDropped:
        self.counters.drop(reason)
        return DatagramDropped(reason, size)

    # -- session control (-tunnel-session-00 §4.1, §6.1) -----------------------------------

    def request_new_session(self, qos: bytes = b"") -> int:
        """Client: New Session TLV then FIN on our control stream; returns its id."""
        return self._send_client_control(NewSession(qos).encode())

    def join_session(self, session_id: bytes) -> int:
        """Client: Join Session TLV then FIN on our control stream; returns its id."""
        stream_id = self._send_client_control(JoinSession(session_id).encode())
        self._requested_join = bytes(session_id)
        return stream_id

    def join_session_early(self, session_id: bytes) -> int:
        """Client, right after connect() with a session ticket and before any tunnel mode is
        negotiated: Join Session TLV then FIN on our control stream, which aioquic then sends
        in 0-RTT (README "0-RTT": the one message we send there). The connection must offer
        only session-mode ALPNs, so that the mode the join assumes is the one negotiated."""
        if not self._is_client:
            raise TunnelUsageError("only the client may do this")
        if self._mode is not None:
            raise TunnelUsageError("the mode is negotiated already: use join_session")
        offered = self._quic.configuration.alpn_protocols or []
        if not offered or any(mode_of_alpn(alpn) is not TunnelMode.SESSION for alpn in offered):
            raise TunnelUsageError(
                "an early Join Session needs a connection offering only qt-session"
            )
        stream_id = self._send_client_control(JoinSession(session_id).encode(), early=True)
        self._requested_join = bytes(session_id)
        return stream_id

    def _send_client_control(self, tlv: bytes, early: bool = False) -> int:
        if not early:
            self._require_mode(TunnelMode.SESSION, client=True)
        elif self.closed:
            raise TunnelUsageError(f"the connection is closed ({self.close_reason})")
        if self._control_sent:
            # §4.1: "This negotiation MUST NOT take place more than once per QUIC connection."
            raise TunnelUsageError("this connection already sent New Session or Join Session")
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        if stream_id != CLIENT_CONTROL_STREAM:
            raise TunnelUsageError(
                f"the control stream must be stream {CLIENT_CONTROL_STREAM}, but stream "
                f"{stream_id} is next: open the session before sending Access Reports"
            )
        self._quic.send_stream_data(stream_id, tlv, end_stream=True)
        self._control_sent = True
        return stream_id

    def accept_session(self, session_id: bytes) -> int:
        """Concentrator: Session ID TLV then FIN on our control stream, the answer to a
        New Session (§6.1.1 "MUST send a Session ID TLV in response")."""
        self._pending_request(NewSession)
        stream_id = self._open_server_control_stream()
        self._quic.send_stream_data(stream_id, SessionIdTLV(session_id).encode(), end_stream=True)
        self._session_id = bytes(session_id)
        return stream_id

    def confirm_join(self) -> int:
        """Concentrator: FIN alone on our control stream, the answer to a successful Join
        Session (§6.1.3: "A successful joining of connection is indicated by the closure of the
        QUIC tunnel control stream of the concentrator"; the client knows the ID it sent)."""
        request = self._pending_request(JoinSession)
        assert isinstance(request, JoinSession)
        stream_id = self._open_server_control_stream()
        self._quic.send_stream_data(stream_id, b"", end_stream=True)
        self._session_id = request.session_id
        return stream_id

    def reject_join(self, code: ControlErrorCode) -> int:
        """Concentrator: RESET_STREAM of our control stream with `code` (§6.1.3)."""
        self._pending_request()  # a New Session too: a full session table (UNKNOWN_ERROR)
        stream_id = self._open_server_control_stream()
        self._quic.reset_stream(stream_id, int(code))
        return stream_id

    @property
    def session_requested(self) -> bool:
        """Concentrator, session mode: whether the client sent its New Session or Join Session
        (answered or not)."""
        return self._control_received is not None

    def _pending_request(
        self, kind: type[NewSession] | type[JoinSession] | None = None
    ) -> NewSession | JoinSession:
        """The client's New Session or Join Session still to answer (of type `kind` if given)."""
        self._require_mode(TunnelMode.SESSION, client=False)
        request = self._control_received
        if request is None:
            raise TunnelUsageError("no New Session or Join Session was received to answer")
        if self._control_sent:
            raise TunnelUsageError("this connection already answered its session request")
        if kind is not None and not isinstance(request, kind):
            raise TunnelUsageError(
                f"the client sent a {type(request).__name__} TLV, not a {kind.__name__} TLV"
            )
        return request

    def _open_server_control_stream(self) -> int:
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        if stream_id != SERVER_CONTROL_STREAM:
            raise TunnelUsageError(
                f"the control stream must be stream {SERVER_CONTROL_STREAM}, "
                f"but stream {stream_id} is next"
            )
        self._control_sent = True
        return stream_id

    def _require_mode(self, mode: TunnelMode, client: bool | None = None) -> None:
        if self.closed:
            raise TunnelUsageError(f"the connection is closed ({self.close_reason})")
        if self._mode is not mode:
            raise TunnelUsageError(
                f"this needs {mode.value} mode, the connection is in "
                f"{self._mode.value if self._mode else 'no'} mode"
            )
        if client is not None and client != self._is_client:
            raise TunnelUsageError(f"only the {'client' if client else 'concentrator'} may do this")

    def _is_peer_control_stream(self, stream_id: int) -> bool:
        peer_control = SERVER_CONTROL_STREAM if self._is_client else CLIENT_CONTROL_STREAM
        return self._mode is TunnelMode.SESSION and stream_id == peer_control

    def _receive_control(self, stream_id: int, data: bytes, end: bool) -> list[TunnelEvent]:
        state = self._uni_streams.setdefault(stream_id, _UniStream())
        if self._control_stream_finished:
            raise _Violation(f"data on control stream {stream_id} after its FIN")
        result: list[TunnelEvent] = []
        for message in self._decode_control_tlvs(stream_id, state, data):
            result.extend(self._on_control_message(stream_id, message))
        if end:
            self._control_stream_finished = True
            del self._uni_streams[stream_id]
            if not state.reader.at_boundary:
                raise _Violation(f"control stream {stream_id} ended inside a TLV")
            if self._is_client:
                if not self._control_sent:
                    raise _Violation("the concentrator closed its control stream unasked")
                # New Session: the Session ID TLV received; Join Session: the ID we sent
                # (a Session ID may be zero bytes long: the TLV's length is "Variable").
                session_id = (
                    self._session_id if self._session_id is not None else self._requested_join
                )
                if session_id is None:
                    raise _Violation(
                        "the concentrator closed its control stream without a Session ID TLV"
                    )
                if self._requested_join is not None:  # a New Session's came with its TLV
                    self._session_id = session_id
                    result.append(SessionEstablished(session_id))
            elif self._control_received is None:
                raise _Violation(
                    "the client closed its control stream without New Session or Join Session"
                )
        return result

    def _decode_control_tlvs(
        self, stream_id: int, state: _UniStream, data: bytes
    ) -> list[ControlMessage]:
        messages: list[ControlMessage] = []
        for tlv_type, value in state.reader.feed(data):
            decode = CONTROL_DECODERS.get(tlv_type)
            if decode is None:
                # New control TLV types come by IETF Review (-tunnel-00 §9.2.1): skip and count
                # one, as unknown stream TLVs are, rather than close a newer peer's connection.
                self.counters.drop(DropReason.UNKNOWN_CONTROL_TLV)
                state.discarded = True
                continue
            try:
                messages.append(decode(value))
            except TunnelError as exc:
                if tlv_type == AccessReport.TLV_TYPE:
                    # -tunnel-00 §7.1.1: an invalid AI "MUST be discarded".
                    self.counters.drop(DropReason.INVALID_ACCESS_REPORT)
                    state.discarded = True
                    continue
                raise _Violation(f"malformed control TLV on stream {stream_id}: {exc}") from None
        return messages

    def _on_control_message(self, stream_id: int, message: ControlMessage) -> list[TunnelEvent]:
        if isinstance(message, AccessReport):
            # -tunnel-session-00 §6.1: Access Reports "MUST be sent on other streams".
            raise _Violation(f"Access Report TLV on control stream {stream_id}")
        if self._is_client:
            if not isinstance(message, SessionIdTLV):
                # §6.1.1/§6.1.3: the concentrator MUST NOT send New Session / Join Session.
                raise _Violation(f"the concentrator sent a {type(message).__name__} TLV")
            if not self._control_sent or self._session_id is not None:
                raise _Violation("unexpected Session ID TLV from the concentrator")
            joining = self._requested_join
            if joining is not None and message.session_id != joining:
                # A join is answered by the FIN alone (§6.1.3); a Session ID TLV before it (as
                # this implementation sent until 2026-12) is accepted if it names that session.
                raise _Violation("the concentrator answered Join Session with another Session ID")
            self._session_id = message.session_id
            if joining is None:
                # New Session: established by its answer, the Session ID TLV (§6.1.1), not
                # by the FIN after it, which §4.1's "MUST NOT close its control stream" lets
                # a concentrator leave out (a review: such a peer never got a session here)
                return [SessionEstablished(message.session_id)]
            return []
        if isinstance(message, SessionIdTLV):
            # §6.1.2: "The client MUST NOT send a Session ID TLV."
            raise _Violation("the client sent a Session ID TLV")
        if self._control_received is not None:
            raise _Violation("New Session / Join Session sent more than once on this connection")
        self._control_received = message
        if isinstance(message, NewSession):
            return [SessionRequested(message.qos)]
        return [JoinRequested(message.session_id)]

    # -- access reports (-tunnel-00 §6, §7.1.1) --------------------------------------------

    def send_access_report(self, access_id: AccessId, signal: AccessSignal) -> int:
        """Client: one Access Report TLV on its own new uni stream, then FIN."""
        if self.closed or self._mode is None:
            raise TunnelUsageError("no tunnel mode negotiated yet (or the connection is closed)")
        if not self._is_client:
            raise TunnelUsageError("only the client sends Access Reports (-tunnel-00 §7.1)")
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        if self._mode is TunnelMode.SESSION and stream_id == CLIENT_CONTROL_STREAM:
            raise TunnelUsageError(
                "in session mode the first uni stream is the control stream: call "
                "request_new_session() or join_session() before sending Access Reports"
            )
        self._quic.send_stream_data(
            stream_id, AccessReport(access_id, signal).encode(), end_stream=True
        )
        self.counters.access_reports_sent += 1
        return stream_id

    def access_report_acknowledged(self, stream_id: int) -> bool:
        """Whether the peer acknowledged all of the report sent on `stream_id` (a
        superseded report still in flight should be cancelled instead, issue 12)."""
        return stream_acknowledged(self._quic, stream_id)

    def cancel_access_report(self, stream_id: int) -> None:
        """Reset the report's stream (-tunnel-00 §7.1.1: "MUST be able to cancel");
        no effect if the report was already acknowledged."""
        if not self._is_sent_access_report(stream_id):
            raise TunnelUsageError(f"stream {stream_id} is not one of our Access Reports")
        self._quic.reset_stream(stream_id, ACCESS_REPORT_CANCELLED)

    def _is_sent_access_report(self, stream_id: int) -> bool:
        """Every uni stream the client opened carries an Access Report, but the control stream
        in session mode (the id says it: no set of report streams that would only grow)."""
        return (
            self._is_client
            and _is_uni(stream_id)
            and stream_is_client_initiated(stream_id)
            and stream_id < self._quic.get_next_available_stream_id(is_unidirectional=True)
            and not (self._mode is TunnelMode.SESSION and stream_id == CLIENT_CONTROL_STREAM)
        )

    def _receive_access_report_stream(
        self, stream_id: int, data: bytes, end: bool
    ) -> list[TunnelEvent]:
        state = self._uni_streams.setdefault(stream_id, _UniStream())
        for message in self._decode_control_tlvs(stream_id, state, data):
            if not isinstance(message, AccessReport):
                # -tunnel-session-00 §6.1: control TLVs only on the control streams.
                raise _Violation(
                    f"{type(message).__name__} TLV on stream {stream_id}, "
                    "which is not a control stream"
                )
            if self._is_client:
                raise _Violation("the concentrator sent an Access Report (client-only TLV)")
            state.messages.append(message)
            if len(state.messages) > 1:
                # -tunnel-00 §7.1: "Each Access Report TLV MUST be sent on a separate stream"
                raise _Violation(f"more than one Access Report TLV on stream {stream_id}")
        if not end:
            return []
        del self._uni_streams[stream_id]
        if not state.messages:
            # Cut TLV or empty stream; an invalid one was already counted when decoded.
            if not state.reader.at_boundary or not state.discarded:
                self.counters.drop(DropReason.INVALID_ACCESS_REPORT)
            return []
        report = state.messages[0]
        assert isinstance(report, AccessReport)
        self.access_availability[report.access_id] = report.signal
        self.counters.access_reports_received += 1
        return [AccessReportReceived(report.access_id, report.signal, stream_id)]

    # -- stream mode (-tunnel-tcp-00) ------------------------------------------------------

    def open_tcp_stream(self, address: IPv4Address | IPv6Address, port: int) -> int:
        """Open a bidi stream carrying TCP Connect + End (§5.1.1); returns its id.
        Raises ValueError for a forbidden address or port."""
        self._require_stream_mode()
        preamble = TcpConnect(address, port).encode() + End().encode()
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, preamble)
        self._tcp_streams[stream_id] = _TcpStream(
            opened_by_peer=False,
            decoder=StreamPreambleDecoder(opened_by_peer=False),
            preamble_sent=True,
        )
        return stream_id

    def accept_tcp_stream(self, stream_id: int) -> None:
        """Answer a TcpConnectRequested with TCP Connect OK + End (§5.1.2)."""
        stream = self._peer_stream_awaiting_answer(stream_id)
        stream.preamble_sent = True
        if not self._write(stream_id, TcpConnectOk().encode() + End().encode()):
            self._finished_sending(stream_id, stream)  # the peer stopped the stream meanwhile

    def fail_tcp_stream(
        self, stream_id: int, code: StreamErrorCode | int, payload: bytes = b""
    ) -> None:
        """Answer a TcpConnectRequested with Error TLV + End + FIN (§5.1.3)."""
        stream = self._peer_stream_awaiting_answer(stream_id)
        self._send_error(stream_id, stream, ErrorTLV(code, payload))

    def send_stream_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Relay TCP bytestream data (and its FIN, -tcp §3) once our TLVs are sent."""
        self._require_stream_mode()
        stream = self._tcp_streams.get(stream_id)
        if stream is None or not stream.preamble_sent or stream.finished_sending:
            raise TunnelUsageError(
                f"stream {stream_id} is not an open TCP stream whose TLVs were sent"
            )
        if not self._write(stream_id, data, end) or end:
            self._finished_sending(stream_id, stream)

    def reset_tcp_stream(
        self, stream_id: int, *, stop_sending: bool = True, reset: bool = True
    ) -> None:
        """TCP RST -> STOP_SENDING + RESET_STREAM with TCP_CONNECTION_RESET (-tcp §3), or only
        the one the relay's state asks for (stream_mode.RelayState.on_tcp): after our FIN, a
        RESET_STREAM would throw away the bytes sent before it that the peer has not
        acknowledged yet (aioquic drops them), truncating what the TCP peer had finished
        sending (found by a review)."""
        self._require_stream_mode()
        if stream_id not in self._tcp_streams:
            raise TunnelUsageError(f"stream {stream_id} is not a TCP stream")
        self._abort_stream(stream_id, stop_sending=stop_sending, reset=reset)

    def _abort_stream(
        self, stream_id: int, *, stop_sending: bool = True, reset: bool = True
    ) -> None:
        # ValueError: aioquic already discarded the stream's receive (or send) side.
        if stop_sending:
            with contextlib.suppress(ValueError):
                self._quic.stop_stream(stream_id, TCP_CONNECTION_RESET)
        if reset:
            with contextlib.suppress(ValueError):
                self._quic.reset_stream(stream_id, TCP_CONNECTION_RESET)
            self._finished_sending(stream_id, self._tcp_streams[stream_id])

    def _finished_sending(self, stream_id: int, stream: _TcpStream) -> None:
        stream.finished_sending = True
        self._forget_if_done(stream_id, stream)

    def _forget_if_done(self, stream_id: int, stream: _TcpStream) -> None:
        """Forget a stream whose two directions ended: aioquic gives no more events for it
        once its receiving part ended, and this API refuses to send on it once ours did."""
        if stream.finished_sending and stream.finished_receiving:
            self._tcp_streams.pop(stream_id, None)

    def _require_stream_mode(self) -> None:
        if self.closed:
            raise TunnelUsageError(f"the connection is closed ({self.close_reason})")
        if not self._stream_mode:
            raise TunnelUsageError(
                "stream mode was not negotiated (both endpoints must send the "
                "quic_tunnel_stream_mode transport parameter)"
            )

    def _peer_stream_awaiting_answer(self, stream_id: int) -> _TcpStream:
        self._require_stream_mode()
        stream = self._tcp_streams.get(stream_id)
        if stream is None or not stream.opened_by_peer or stream.connect is None:
            raise TunnelUsageError(f"stream {stream_id} carries no TCP Connect from the peer")
        if stream.preamble_sent:
            raise TunnelUsageError(f"stream {stream_id} was already answered")
        return stream

    def _send_error(self, stream_id: int, stream: _TcpStream, error: ErrorTLV) -> None:
        # -tcp §5.1.3: "After sending one or more Error TLVs, the sender MUST send an End
        # TLV and terminate the stream, i.e. set the FIN bit after the End TLV."
        self._write(stream_id, error.encode() + End().encode(), end=True)
        stream.preamble_sent = True
        self._finished_sending(stream_id, stream)

    def _write(self, stream_id: int, data: bytes, end: bool = False) -> bool:
        """Write on a TCP stream the peer may have stopped: False (nothing written) when our
        side is already finished or reset — e.g. its STOP_SENDING arrived in the same packet
        as the data we answer, and aioquic reset the stream before we saw either."""
        if not stream_send_open(self._quic, stream_id):
            return False
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        return True

    def _receive_tcp_stream(self, stream_id: int, data: bytes, end: bool) -> list[TunnelEvent]:
        if not self._stream_mode:
            raise _Violation(
                f"bidirectional stream {stream_id} used but stream mode was not negotiated"
            )
        stream = self._tcp_streams.get(stream_id)
        if stream is None:
            opened_by_peer = stream_is_client_initiated(stream_id) != self._is_client
            stream = _TcpStream(
                opened_by_peer=opened_by_peer,
                decoder=StreamPreambleDecoder(opened_by_peer=opened_by_peer),
                preamble_sent=not opened_by_peer,
            )
            self._tcp_streams[stream_id] = stream
        result = self._receive_tcp_data(stream_id, stream, data, end)
        if end:
            stream.finished_receiving = True
            self._forget_if_done(stream_id, stream)
        return result

    def _receive_tcp_data(
        self, stream_id: int, stream: _TcpStream, data: bytes, end: bool
    ) -> list[TunnelEvent]:
        if stream.rejected or stream.failed:
            return []  # we already answered this stream with an error
        try:
            was_done = stream.decoder.done
            messages, bytestream = stream.decoder.feed(data)
            if end:
                stream.decoder.finish()
        except TunnelError as exc:
            return self._reject_stream(stream_id, stream, exc)
        result: list[TunnelEvent] = []
        for message in messages:
            if isinstance(message, TcpConnect):
                stream.connect = message
            elif isinstance(message, ErrorTLV) and stream.first_error is None:
                stream.first_error = message
        if stream.decoder.done and not was_done:
            result.append(self._preamble_complete(stream_id, stream))
        if stream.failed:
            return result
        if stream.decoder.done and (bytestream or end):
            result.append(StreamDataReceived(stream_id, bytestream, end))
        return result

    def _preamble_complete(self, stream_id: int, stream: _TcpStream) -> TunnelEvent:
        if stream.opened_by_peer:
            assert stream.connect is not None  # the decoder refuses End before TCP Connect
            return TcpConnectRequested(stream_id, stream.connect.address, stream.connect.port)
        if stream.first_error is not None:
            stream.failed = True
            first = stream.first_error
            return TcpConnectFailed(stream_id, first.code, first.payload)
        return TcpConnectAccepted(stream_id)

    def _reject_stream(
        self, stream_id: int, stream: _TcpStream, exc: TunnelError
    ) -> list[TunnelEvent]:
        stream.rejected = True
        if not stream.preamble_sent:
            # Our TLV sequence is still open: answer in band (-tcp §5.1.3), and stop the peer's
            # side: nothing more it sends on this stream will be read (a review found a peer
            # could go on pushing bytes into a stream refused for good).
            self._send_error(stream_id, stream, ErrorTLV(exc.code))
            with contextlib.suppress(ValueError):  # its receiving side already gone
                self._quic.stop_stream(stream_id, TCP_CONNECTION_RESET)
        else:
            # Our End TLV is already sent (a stream we opened), so an Error TLV would
            # land in the bytestream: abort both directions instead (code 0x0, which is
            # both PROTOCOL_VIOLATION and TCP_CONNECTION_RESET).
            self._abort_stream(stream_id)
        return [StreamRejected(stream_id, exc.code, exc.message)]

    # -- QUIC event dispatch ---------------------------------------------------------------

    def handle_event(self, event: quic_events.QuicEvent) -> list[TunnelEvent]:
        """Map one QUIC event to tunnel events (call for every event of the QuicConnection)."""
        if isinstance(event, quic_events.ConnectionTerminated):
            if self._closed is not None:
                return []
            self._closed = ConnectionClosed(event.error_code, event.reason_phrase, by_peer=True)
            return [self._closed]
        if self._closed is not None:
            return []
        try:
            return self._dispatch(event)
        except _Violation as violation:
            return [self.close(str(violation))]

    def close(
        self, reason: str, error_code: int = CONNECTION_PROTOCOL_VIOLATION
    ) -> ConnectionClosed:
        """Close the QUIC connection (CONNECTION_CLOSE with `reason`)."""
        if self._closed is None:
            self._quic.close(error_code=error_code, reason_phrase=reason)
            self._closed = ConnectionClosed(error_code, reason, by_peer=False)
        return self._closed

    def _dispatch(self, event: quic_events.QuicEvent) -> list[TunnelEvent]:
        if isinstance(event, quic_events.ProtocolNegotiated):
            return self._on_protocol_negotiated(event.alpn_protocol)
        if isinstance(event, quic_events.DatagramFrameReceived):
            return self._receive_datagram(event.data)
        if isinstance(event, quic_events.StreamDataReceived):
            sid, data, end = event.stream_id, event.data, event.end_stream
            if self._mode is None:
                raise _Violation(f"stream {sid} data before a tunnel mode was negotiated")
            if not _is_uni(sid):
                return self._receive_tcp_stream(sid, data, end)
            if self._is_peer_control_stream(sid):
                return self._receive_control(sid, data, end)
            return self._receive_access_report_stream(sid, data, end)
        if isinstance(event, quic_events.StreamReset):
            return self._on_stream_reset(event.stream_id, event.error_code)
        if (
            isinstance(event, quic_events.StopSendingReceived)
            and event.stream_id in self._tcp_streams
        ):
            return [StopSendingReceived(event.stream_id, event.error_code)]
        return []

    def _on_protocol_negotiated(self, alpn: str | None) -> list[TunnelEvent]:
        mode = mode_of_alpn(alpn)
        if mode is None or alpn is None:
            raise _Violation(
                f"no tunnel ALPN was negotiated (got {alpn!r}, expected one of {ALL_ALPN})"
            )
        self._mode, self._alpn = mode, alpn
        self._stream_mode = (
            isinstance(self._quic, TunnelQuicConnection) and self._quic.stream_mode_negotiated
        )
        # The peer's transport parameters arrived with its ALPN choice (the client's in its
        # ClientHello, the server's in EncryptedExtensions): the client's payload is known now.
        self._payload = payload_of_ethertype(self.payload_ethertype)
        self._accepted_types = (
            frozenset() if self._payload is None else PAYLOAD_PROTOCOL_TYPES[self._payload]
        )
        return [ModeNegotiated(mode, self._stream_mode, alpn)]

    def _on_stream_reset(self, stream_id: int, code: int) -> list[TunnelEvent]:
        if self._is_peer_control_stream(stream_id):
            self._uni_streams.pop(stream_id, None)
            if self._is_client and self._control_sent and self._session_id is None:
                known = code in ControlErrorCode._value2member_map_
                return [SessionJoinFailed(ControlErrorCode(code) if known else code)]
            return []
        if _is_uni(stream_id):
            self._uni_streams.pop(stream_id, None)  # a cancelled Access Report
            return []
        stream = self._tcp_streams.get(stream_id)
        if stream is None:
            return []
        stream.finished_receiving = True
        self._forget_if_done(stream_id, stream)
        return [StreamReset(stream_id, code)]
