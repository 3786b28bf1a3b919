"""MASQUE CONNECT-IP (RFC 9484) sessions on aioquic's HTTP/3, sans-I/O (issue 18, stage 1).

Why here: tunnel/protocol/ holds the protocol state of one QUIC connection. TunnelConnection
layers the drafts' modes on a QuicConnection; a CONNECT-IP session is the same kind of object
layered on aioquic's H3Connection (itself layered on the QuicConnection): the I/O layer feeds it
every QUIC event through `handle_event()` and gets session events back, its send methods queue
frames, and the I/O layer flushes them with `datagrams_to_send()`. No socket, clock or thread.
Who gets which address, which routes a site offers, the TUN and the client's certificate are the
agents' decisions (tunnel/agents/, a later stage); here they are constructor arguments.

One session is one request stream ("the lifetime of the IP forwarding tunnel is tied to the IP
proxying request stream", RFC 9484 §4.1), and we serve one per connection.

- Both ends announce SETTINGS_H3_DATAGRAM=1 (RFC 9297 §2.1.1) and ENABLE_CONNECT_PROTOCOL=1
  (RFC 9220 §3). aioquic 1.7.2 sends the first only with `enable_webtransport=True`, which also
  announces SETTINGS_ENABLE_WEBTRANSPORT: harmless (a WebTransport request would be refused
  like any other that is not CONNECT-IP) and it keeps this module off aioquic's internals.
- Client (`ConnectIpClient`): once the proxy's SETTINGS arrived with both settings (RFC 9220 §3:
  no extended CONNECT before; RFC 9297 §2.1.1: no datagram before), the request of RFC 9484 §4.4
  (:method CONNECT, :protocol connect-ip, :scheme https, :authority, :path from the default
  template of §3 with `*` wildcards or a scope, capsule-protocol: ?1) and an ADDRESS_REQUEST
  for an address of each version (§4.7.1: an endpoint that needs an address "MUST send" one).
  A 2xx response opens the tunnel (§4.5); any other status is a refusal and the request is
  aborted.
- Proxy (`ConnectIpServer`): checks the request (status codes in `_refusal`), answers 200 with
  capsule-protocol: ?1, then ADDRESS_ASSIGN (its configured prefixes, Request ID 0) and
  ROUTE_ADVERTISEMENT (its routes, narrowed to the request's scope, §4.6), and answers each
  ADDRESS_REQUEST with an ADDRESS_ASSIGN carrying the Request IDs (§4.7.2).
- Either end: capsules through a bounded CapsuleReader (unknown types skipped, RFC 9297 §3.2);
  a malformed capsule, or a stream that ends inside one, is a malformed message (RFC 9297 §3.3,
  RFC 9114 §4.1.2): the stream is aborted both ways with H3_MESSAGE_ERROR. IP packets travel as
  HTTP Datagrams with Context ID 0 (RFC 9484 §6); other contexts are dropped and counted (§6:
  "drop ... silently or buffer"). A DATAGRAM capsule (RFC 9297 §3.5) is taken as a datagram.
- RFC 9484 §11 (BCP 38): an endpoint checks each received packet against what it told its peer:
  the source must lie in a prefix it assigned to the peer, the destination in a range it
  advertised (with the range's protocol, its version's ICMP always allowed, §4.7.3); anything
  else is dropped and counted. An endpoint that assigned nothing (or advertised nothing) does
  not check that side: the client leaves its own kernel to route what the proxy sends it.
- RFC 9484 §7.2: a budget that falls below 1280 bytes (PathMtuFell) while IPv6 is carried
  aborts the request stream.

What is not here yet (stage 2): DNS targets (refused 501: §4.1 needs the proxy to resolve them
before answering), Context IDs other than 0, the Hop Limit decrement of §7.2 (the kernel's
forwarding into the TUN does it), ICMP errors (§7.2.1), the §7.2 IPv6 1280-byte MTU probe.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Final, TypeAlias

from aioquic.h3.connection import H3Connection, Setting
from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from aioquic.quic import events as quic_events
from aioquic.quic.connection import QuicConnection

from tunnel.policy.ingress import IngressFilter, IngressVerdict
from tunnel.protocol.connection import SendResult, SendStatus
from tunnel.protocol.quic_ext import (
    PathMtuFell,
    datagram_budget,
    pending_datagram_count,
    stream_send_open,
)
from tunnel.wire.capsule import (
    DEFAULT_MAX_CAPSULE_VALUE,
    Capsule,
    CapsuleError,
    CapsuleReader,
    H3ErrorCode,
)
from tunnel.wire.connect_ip import (
    CONNECT_IP_DECODERS,
    ICMP_PROTOCOL,
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    IPAddressRange,
    IPNetwork,
    RequestedAddress,
    RequestScope,
    RouteAdvertisement,
    decode_connect_ip_capsule,
    ordered_ranges,
    outermost_protocol,
    unassigned,
)
from tunnel.wire.http_datagram import (
    DATAGRAM_CAPSULE_TYPE,
    MAX_QUARTER_STREAM_ID,
    IpProxyingPayload,
    encode_ip_packet,
    ip_packet_overhead,
)
from tunnel.wire.icmp import IPV6_MIN_MTU

H3_ALPN: Final = "h3"
CONNECT_IP_PROTOCOL: Final = "connect-ip"
"""RFC 9484 §12.1: the HTTP Upgrade Token, the :protocol of the extended CONNECT."""
CAPSULE_PROTOCOL_TRUE: Final = b"?1"
"""RFC 9297 §3.4: the Capsule-Protocol header's true value (a Structured Field Boolean)."""
DEFAULT_MAX_PENDING_DATAGRAMS: Final = 256
MAX_ADDRESS_REQUESTS: Final = 64
"""Distinct Request IDs a peer may use in one session. RFC 9484 §4.7.2 forbids reusing one, so
each must be remembered: a peer that asks for more is cut off rather than grow our memory."""
MAX_HELD_REQUESTS: Final = 4
"""Requests a proxy holds while the client's SETTINGS have not arrived (they travel on another
stream, so they may come later); more are refused 429."""

_KNOWN_CAPSULES: Final = frozenset({*CONNECT_IP_DECODERS, DATAGRAM_CAPSULE_TYPE})
NO_CAPSULE_FIELDS: Final = (b"content-length", b"content-type", b"transfer-encoding")
"""RFC 9297 §3.2: header fields a message that uses the Capsule Protocol MUST NOT carry."""
NO_CAPSULE_STATUSES: Final = frozenset({204, 205, 206})
"""RFC 9297 §3.2: statuses a response that uses the Capsule Protocol MUST NOT have."""


class DropReason(Enum):
    """Why a packet was not sent or not delivered; the value is the counter's name."""

    NOT_READY = "not_ready"
    """No tunnel (yet, or any more), or the peer did not announce SETTINGS_H3_DATAGRAM."""
    TOO_BIG = "too_big"
    """Larger than max_packet_size(): aioquic would block every later datagram."""
    QUEUE_FULL = "queue_full"
    OTHER_STREAM = "other_stream"
    """A datagram of a stream that carries no tunnel of ours (RFC 9297 §2.1: drop)."""
    UNKNOWN_CONTEXT = "unknown_context"
    """Context ID other than 0: none is registered (RFC 9484 §6: drop or buffer)."""
    MALFORMED = "malformed"
    """No Context ID, or not a whole IPv4/IPv6 packet (a forwarding error, §7.2)."""
    SPOOFED_SOURCE = "spoofed_source"
    """Source outside the prefixes we assigned to the peer (RFC 9484 §11, BCP 38)."""
    OUTSIDE_ROUTES = "outside_routes"
    """Destination (or protocol) outside the ranges we advertised to the peer (§4.7.3, §11)."""


_INGRESS_DROPS: Final = {
    IngressVerdict.NOT_IP: DropReason.MALFORMED,
    IngressVerdict.TRUNCATED: DropReason.MALFORMED,
    IngressVerdict.BAD_HEADER: DropReason.MALFORMED,
    IngressVerdict.SPOOFED_SOURCE: DropReason.SPOOFED_SOURCE,
}


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelOpened:
    """The request succeeded: client, a 2xx arrived; proxy, we answered 200."""

    stream_id: int


@dataclass(frozen=True)
class TunnelRefused:
    """Client: the proxy answered `status` (not 2xx), or could not be asked (status 0: its
    SETTINGS lack extended CONNECT or HTTP Datagrams)."""

    status: int
    reason: str


@dataclass(frozen=True)
class RequestRefused:
    """Proxy: we answered a request with `status` (for the log and the refusal counters)."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True)
class AddressesAssigned:
    """The peer's latest ADDRESS_ASSIGN (RFC 9484 §4.7.1: a full snapshot): the prefixes we
    may use as sources now, and the Request IDs it refused."""

    prefixes: tuple[IPNetwork, ...]
    refused_requests: tuple[int, ...] = ()


@dataclass(frozen=True)
class RoutesAdvertised:
    """The peer's latest ROUTE_ADVERTISEMENT (§4.7.3: supersedes the previous one)."""

    ranges: tuple[IPAddressRange, ...]


@dataclass(frozen=True)
class PacketReceived:
    packet: bytes


@dataclass(frozen=True)
class PacketDropped:
    reason: DropReason
    size: int


@dataclass(frozen=True)
class TunnelClosed:
    """The request stream ended: cleanly (error_code None), aborted by us (`by_peer` False,
    e.g. H3_MESSAGE_ERROR for a malformed capsule), or reset by the peer; or the connection
    closed."""

    error_code: int | None
    reason: str
    by_peer: bool


ConnectIpEvent: TypeAlias = (
    TunnelOpened
    | TunnelRefused
    | RequestRefused
    | AddressesAssigned
    | RoutesAdvertised
    | PacketReceived
    | PacketDropped
    | TunnelClosed
)


@dataclass
class ConnectIpCounters:
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    capsules_skipped: int = 0
    """Capsules of types we do not know, skipped (RFC 9297 §3.2)."""
    h3_excessive: int = 0
    """Streams aborted for holding more than MAX_H3_BUFFERED bytes of unusable H3 frames."""

    def drop(self, reason: DropReason) -> None:
        self.drops[reason.value] += 1

    def as_dict(self) -> dict[str, int]:
        """Flat name -> count, drops as drops_<reason>, for CSV rows and status files."""
        flat = {
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "capsules_skipped": self.capsules_skipped,
            "h3_excessive": self.h3_excessive,
        }
        for reason in DropReason:
            flat[f"drops_{reason.value}"] = self.drops[reason.value]
        return flat


class RouteTable:
    """The destinations a ROUTE_ADVERTISEMENT allows (§4.7.3), as integer ranges per version:
    a destination passes if a range holds it and the range's protocol is 0, the packet's
    outermost protocol (§4.8), or its version's ICMP (1 in IPv4, 58 in IPv6). A linear scan:
    sites advertise a few ranges (a full tunnel is one per version)."""

    def __init__(self, ranges: Iterable[IPAddressRange] = ()) -> None:
        self.ranges = tuple(ranges)
        self._by_version: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}
        for r in self.ranges:
            self._by_version[r.version].append((int(r.start), int(r.end), r.protocol))

    def allows(self, packet: bytes) -> bool:
        """Whether `packet` (a whole IPv4/IPv6 packet, already checked) may go to its
        destination."""
        if packet[0] >> 4 == 4:
            version, destination = 4, int.from_bytes(packet[16:20], "big")
        else:
            version, destination = 6, int.from_bytes(packet[24:40], "big")
        protocol: int | None = None
        for start, end, allowed in self._by_version[version]:
            if start <= destination <= end:
                if allowed == 0:
                    return True
                if protocol is None:
                    protocol = outermost_protocol(packet)
                if protocol in (allowed, ICMP_PROTOCOL[version]):
                    return True
        return False


def scoped_ranges(
    ranges: Iterable[IPAddressRange], scope: RequestScope
) -> tuple[IPAddressRange, ...]:
    """The part of `ranges` a request's scope asks for (RFC 9484 §4.6): clipped to its target
    prefix, restricted to its ipproto (a range of every protocol becomes one of that protocol;
    ICMP stays allowed by the range semantics). In §4.7.3 order."""
    target = scope.target
    kept: list[IPAddressRange] = []
    for r in ranges:
        start, end = int(r.start), int(r.end)
        if isinstance(target, IPv4Network | IPv6Network):
            if target.version != r.version:
                continue
            start = max(start, int(target.network_address))
            end = min(end, int(target.broadcast_address))
            if start > end:
                continue
        protocol = r.protocol
        if scope.ipproto is not None:
            if protocol not in (0, scope.ipproto):
                continue
            protocol = scope.ipproto
        if r.version == 4:
            kept.append(IPAddressRange(ip_address(start), ip_address(end), protocol))
        else:
            kept.append(
                IPAddressRange(
                    ip_address(start.to_bytes(16)), ip_address(end.to_bytes(16)), protocol
                )
            )
    return ordered_ranges(kept)


# -- the session ----------------------------------------------------------------------------


MAX_H3_BUFFERED: Final = 16 * 1024
"""Bytes of H3 frames a stream may make us hold before they can be used (a HEADERS frame not
whole yet, frames behind a QPACK block): a CONNECT-IP request's field section is a few hundred
bytes; the capsule reader's own bound is of this order too."""


def h3_stream_buffered(h3: H3Connection, stream_id: int) -> int:
    """Bytes aioquic's H3 layer holds for `stream_id` (0 for a stream it does not track)."""
    stream = h3._stream.get(stream_id)
    return 0 if stream is None else len(stream.buffer)


def drop_h3_stream_buffer(h3: H3Connection, stream_id: int) -> None:
    """Forget what aioquic's H3 layer holds for `stream_id`: the stream is being aborted."""
    stream = h3._stream.get(stream_id)
    if stream is not None:
        stream.buffer = b""


class _ConnectIpEndpoint:
    """What client and proxy share: the H3 layer, the request stream's capsules, datagrams,
    the §11 checks and the counters."""

    def __init__(
        self,
        quic: QuicConnection,
        max_capsule_value: int = DEFAULT_MAX_CAPSULE_VALUE,
        max_pending_datagrams: int = DEFAULT_MAX_PENDING_DATAGRAMS,
    ) -> None:
        self._quic = quic
        self._h3 = H3Connection(quic, enable_webtransport=True)
        self._max_pending = max_pending_datagrams
        self._reader = CapsuleReader(_KNOWN_CAPSULES, max_capsule_value)
        self.stream_id: int | None = None
        """The request stream of the tunnel, once there is one."""
        self.is_open = False
        self.closed: TunnelClosed | None = None
        self.counters = ConnectIpCounters()
        self.assigned_to_us: tuple[IPNetwork, ...] = ()
        """What the peer's last ADDRESS_ASSIGN lets us use as sources."""
        self.peer_routes: tuple[IPAddressRange, ...] = ()
        """The peer's last ROUTE_ADVERTISEMENT: where we may send."""
        self.assigned_to_peer: tuple[IPNetwork, ...] = ()
        """What our ADDRESS_ASSIGN lets the peer use as sources."""
        # what we told the peer, checked on every packet it sends (None: we told it nothing)
        self._source_filter: IngressFilter | None = None
        self._route_table: RouteTable | None = None
        self._peer_request_ids: set[int] = set()

    @property
    def quic(self) -> QuicConnection:
        return self._quic

    @property
    def h3(self) -> H3Connection:
        return self._h3

    def handle_event(self, event: quic_events.QuicEvent) -> list[ConnectIpEvent]:
        """Feed one aioquic event; returns what it meant for the tunnel."""
        if isinstance(event, PathMtuFell):
            return self._check_ipv6_budget()
        out: list[ConnectIpEvent] = []
        if isinstance(event, quic_events.ConnectionTerminated):
            if self.closed is None and self.stream_id is not None:
                self.closed = TunnelClosed(event.error_code, event.reason_phrase, by_peer=True)
                self.is_open = False
                out.append(self.closed)
            return out
        if (
            isinstance(event, quic_events.StreamReset | quic_events.StopSendingReceived)
            and event.stream_id == self.stream_id
            and self.closed is None
            and not self._refusal_on_its_way(event)
        ):
            # the peer aborted the tunnel's stream: abort our side as well
            self._abort(event.error_code, f"the peer aborted the stream ({event.error_code:#x})")
            assert self.closed is not None
            self.closed = TunnelClosed(event.error_code, self.closed.reason, by_peer=True)
            out.append(self.closed)
        for h3_event in self._h3.handle_event(event):
            out += self._on_h3_event(h3_event)
        if isinstance(event, quic_events.StreamDataReceived):
            out += self._bound_h3_buffer(event.stream_id)
        out += self._after_event()
        return out

    def _bound_h3_buffer(self, stream_id: int) -> list[ConnectIpEvent]:
        """aioquic's H3 layer keeps a frame it cannot use yet (a HEADERS frame until it is
        whole, any frame while QPACK blocks it) in the stream's buffer, whatever length the
        frame declares, and the bytes count as consumed for flow control, so the credit kept
        growing: a peer declaring a 1 GiB HEADERS frame made the concentrator hold it all and
        copy the buffer at each packet (found by a review). Past MAX_H3_BUFFERED the stream
        is aborted with H3_EXCESSIVE_LOAD (RFC 9114 §4.2.2 lets a receiver refuse a field
        section it finds too large)."""
        held = h3_stream_buffered(self._h3, stream_id)
        if held <= MAX_H3_BUFFERED:
            return []
        self.counters.h3_excessive += 1
        drop_h3_stream_buffer(self._h3, stream_id)
        reason = f"the peer made us hold {held} bytes of HTTP/3 frames on stream {stream_id}"
        if stream_id == self.stream_id and self.closed is None:
            self._abort(H3ErrorCode.H3_EXCESSIVE_LOAD, reason)
            assert self.closed is not None
            return [self.closed]
        with contextlib.suppress(ValueError):  # a side aioquic already discarded
            self._quic.stop_stream(stream_id, H3ErrorCode.H3_EXCESSIVE_LOAD)
        with contextlib.suppress(ValueError):
            self._quic.reset_stream(stream_id, H3ErrorCode.H3_EXCESSIVE_LOAD)
        return []

    def _check_ipv6_budget(self) -> list[ConnectIpEvent]:
        """After the path's MTU fell (PathMtuFell, limits.pmtu_discovery): RFC 9484 §7.2, "If
        an endpoint is using QUIC DATAGRAM frames to convey IPv6 packets, and it detects that
        the QUIC MTU is too low to allow sending 1280 bytes, it MUST abort the IP proxying
        request stream". We convey IPv6 once either side has an IPv6 address."""
        budget = self.max_packet_size()
        carries_ipv6 = any(p.version == 6 for p in (*self.assigned_to_us, *self.assigned_to_peer))
        if not self.is_open or budget >= IPV6_MIN_MTU or not carries_ipv6:
            return []
        self._abort(
            H3ErrorCode.H3_REQUEST_CANCELLED,
            f"the tunnel carries {budget}-byte packets, IPv6 needs {IPV6_MIN_MTU} (RFC 9484 §7.2)",
        )
        assert self.closed is not None
        return [self.closed]

    def _refusal_on_its_way(self, event: quic_events.QuicEvent) -> bool:
        """RFC 9114 §4.1: STOP_SENDING with H3_NO_ERROR asks to stop sending a request whose
        response is complete (a refusal on its way); before a 2xx it ends nothing by itself.
        Once the tunnel is open it ends the tunnel: aioquic has reset our sending side, and the
        tunnel lives as long as the request stream both ways (RFC 9484 §4.1)."""
        return (
            isinstance(event, quic_events.StopSendingReceived)
            and event.error_code == H3ErrorCode.H3_NO_ERROR
            and not self.is_open
        )

    def _on_h3_event(self, event: H3Event) -> list[ConnectIpEvent]:
        if isinstance(event, DatagramReceived):
            return self._receive_datagram(event.stream_id, event.data)
        if isinstance(event, HeadersReceived):
            return self._receive_headers(event)
        if isinstance(event, DataReceived) and event.stream_id == self.stream_id:
            return self._receive_capsule_data(event.data, event.stream_ended)
        return []

    def _receive_headers(self, event: HeadersReceived) -> list[ConnectIpEvent]:
        raise NotImplementedError

    def _after_event(self) -> list[ConnectIpEvent]:
        return []

    # -- capsules ----------------------------------------------------------------------------

    def _trailers(self, event: HeadersReceived) -> list[ConnectIpEvent]:
        """Trailers on the tunnel's stream (RFC 9114 §4.1): nothing to act on, but a FIN with
        them ends the stream as one after DATA does (RFC 9484 §3: the tunnel ends with it),
        and a capsule it cuts is malformed (RFC 9297 §3.3). aioquic reports that FIN on the
        HEADERS event, which was dropped: the tunnel stayed open (a review)."""
        return self._receive_capsule_data(b"", True) if event.stream_ended else []

    def _receive_capsule_data(self, data: bytes, ended: bool) -> list[ConnectIpEvent]:
        if self.closed is not None:
            return []
        out: list[ConnectIpEvent] = []
        try:
            capsules = self._reader.feed(data)
            if ended:
                self._reader.finish()
            for capsule in capsules:
                out += self._on_capsule(capsule)
        except CapsuleError as exc:
            # RFC 9297 §3.3: a malformed message (RFC 9114 §4.1.2): abort the stream
            self._abort(exc.h3_error_code, f"malformed capsule: {exc.message}")
            assert self.closed is not None
            out.append(self.closed)
            return out
        finally:
            self.counters.capsules_skipped = self._reader.skipped
        if ended and self.closed is None:
            # the peer ended the tunnel cleanly (§4.1): end our side too
            self._end_stream()
            self.is_open = False
            self.closed = TunnelClosed(None, "the peer ended the request stream", by_peer=True)
            out.append(self.closed)
        return out

    def _on_capsule(self, capsule: Capsule) -> list[ConnectIpEvent]:
        if capsule.capsule_type == DATAGRAM_CAPSULE_TYPE:
            return self._receive_payload(capsule.value)
        message = decode_connect_ip_capsule(capsule.capsule_type, capsule.value)
        if isinstance(message, AddressAssign):
            self.assigned_to_us = message.prefixes
            refused = tuple(a.request_id for a in message.addresses if a.is_rejection)
            return [AddressesAssigned(message.prefixes, refused)]
        if isinstance(message, RouteAdvertisement):
            self.peer_routes = message.ranges
            return [RoutesAdvertised(message.ranges)]
        self._note_peer_requests(message)
        self._send_capsule(self._answer_address_request(message).encode())
        return []

    def _note_peer_requests(self, request: AddressRequest) -> None:
        ids = {a.request_id for a in request.addresses}
        if ids & self._peer_request_ids:
            # §4.7.2: "Request IDs MUST NOT be reused by an endpoint"
            raise CapsuleError("the peer reused a Request ID of an earlier ADDRESS_REQUEST")
        self._peer_request_ids |= ids
        if len(self._peer_request_ids) > MAX_ADDRESS_REQUESTS:
            raise CapsuleError(f"the peer sent more than {MAX_ADDRESS_REQUESTS} address requests")

    def _answer_address_request(self, request: AddressRequest) -> AddressAssign:
        """Refuse every request: an endpoint with nothing to assign (the client) still answers
        each one (§4.7.2: "SHALL respond with an Assigned Address with a matching Request
        ID"), all-zero at maximum length."""
        return AddressAssign(
            tuple(
                AssignedAddress(a.request_id, unassigned(a.prefix.version))
                for a in request.addresses
            )
        )

    def _send_capsule(self, capsule: bytes) -> None:
        stream_id = self.stream_id
        # aioquic resets our side itself when the peer's STOP_SENDING arrives (RFC 9000 §3.5),
        # maybe in the packet that brought what we answer: then there is no one to tell
        if (
            stream_id is not None
            and self.closed is None
            and stream_send_open(self._quic, stream_id)
        ):
            self._h3.send_data(stream_id, capsule, end_stream=False)

    def _end_stream(self) -> None:
        """FIN on the request stream, unless our side of it is already reset or ended."""
        stream_id = self.stream_id
        if stream_id is not None and stream_send_open(self._quic, stream_id):
            self._h3.send_data(stream_id, b"", end_stream=True)

    def _abort(self, error_code: int, reason: str) -> None:
        """Abort the request stream both ways (RFC 9114 §4.1.2 for a malformed message)."""
        stream_id = self.stream_id
        self.is_open = False
        self.closed = TunnelClosed(error_code, reason, by_peer=False)
        if stream_id is not None:
            self._quic.reset_stream(stream_id, error_code)
            # aioquic raises ValueError for a stream whose state it already discarded
            with contextlib.suppress(ValueError):
                self._quic.stop_stream(stream_id, error_code)

    def close(self) -> None:
        """End the tunnel cleanly: FIN on the request stream (§4.1: the tunnel lives as long as
        the stream)."""
        if self.stream_id is not None and self.closed is None:
            self._end_stream()
            self.is_open = False
            self.closed = TunnelClosed(None, "we ended the request stream", by_peer=False)

    # -- datagrams ---------------------------------------------------------------------------

    def _peer_takes_datagrams(self) -> bool:
        settings = self._h3.received_settings
        return settings is not None and settings.get(Setting.H3_DATAGRAM) == 1

    def max_packet_size(self) -> int:
        """Largest IP packet send_packet() accepts now: the DATAGRAM budget minus the Quarter
        Stream ID and the Context ID (RFC 9297 §2.1, RFC 9484 §6). 0 without a tunnel."""
        if self.stream_id is None or not self.is_open:
            return 0
        return max(datagram_budget(self._quic) - ip_packet_overhead(self.stream_id), 0)

    def send_packet(self, packet: bytes) -> SendResult:
        """Queue one IP packet as an HTTP Datagram of Context ID 0 (RFC 9484 §6). Checked for
        size BEFORE aioquic: an oversized datagram would block every later one."""
        budget = self.max_packet_size()
        if budget == 0 or self.closed is not None or not self._peer_takes_datagrams():
            self.counters.drop(DropReason.NOT_READY)
            return SendResult(SendStatus.NOT_READY, budget)
        if len(packet) > budget:
            self.counters.drop(DropReason.TOO_BIG)
            return SendResult(SendStatus.TOO_BIG, budget)
        if pending_datagram_count(self._quic) >= self._max_pending:
            self.counters.drop(DropReason.QUEUE_FULL)
            return SendResult(SendStatus.QUEUE_FULL, budget)
        assert self.stream_id is not None
        self._h3.send_datagram(self.stream_id, encode_ip_packet(packet))
        self.counters.packets_out += 1
        self.counters.bytes_out += len(packet)
        return SendResult(SendStatus.SENT, budget)

    def _receive_datagram(self, stream_id: int, data: bytes) -> list[ConnectIpEvent]:
        if stream_id // 4 > MAX_QUARTER_STREAM_ID:
            # RFC 9297 §2.1: a connection error (aioquic 1.7.2 does not check it)
            self._quic.close(
                error_code=H3ErrorCode.H3_DATAGRAM_ERROR,
                reason_phrase="Quarter Stream ID above 2^60-1",
            )
            return []
        if stream_id != self.stream_id:
            return [self._drop(DropReason.OTHER_STREAM, len(data))]
        return self._receive_payload(data)

    def _receive_payload(self, data: bytes) -> list[ConnectIpEvent]:
        if not self.is_open:
            return [self._drop(DropReason.NOT_READY, len(data))]
        try:
            payload = IpProxyingPayload.decode(data)
        except CapsuleError:
            return [self._drop(DropReason.MALFORMED, len(data))]
        if not payload.is_ip_packet:
            return [self._drop(DropReason.UNKNOWN_CONTEXT, len(data))]
        packet = payload.payload
        reason = self._check_received(packet)
        if reason is not None:
            return [self._drop(reason, len(packet))]
        self.counters.packets_in += 1
        self.counters.bytes_in += len(packet)
        return [PacketReceived(packet)]

    def _check_received(self, packet: bytes) -> DropReason | None:
        """RFC 9484 §11: the source must be one we assigned, the destination one we advertised
        (each only if we told the peer anything of the kind)."""
        source_filter = self._source_filter
        if source_filter is not None:
            verdict = source_filter.check(packet)
            if verdict is not IngressVerdict.ACCEPTED:
                return _INGRESS_DROPS[verdict]
        elif (
            not packet
            or packet[0] >> 4 not in (4, 6)
            or len(packet) < (20 if packet[0] >> 4 == 4 else 40)
        ):
            return DropReason.MALFORMED
        routes = self._route_table
        if routes is not None and not routes.allows(packet):
            return DropReason.OUTSIDE_ROUTES
        return None

    def _drop(self, reason: DropReason, size: int) -> PacketDropped:
        self.counters.drop(reason)
        return PacketDropped(reason, size)


class ConnectIpClient(_ConnectIpEndpoint):
    """The client of one CONNECT-IP tunnel (see the module docstring).

    :param authority: the proxy's authority (host[:port]), the request's :authority.
    :param scope: the request's target and ipproto (RFC 9484 §4.6); the default asks for all.
    :param request_versions: the IP versions to request an address of (ADDRESS_REQUEST with an
        all-zero address at full length, §4.7.2); empty if the addresses are configured
        out of band.
    """

    def __init__(
        self,
        quic: QuicConnection,
        authority: str,
        scope: RequestScope | None = None,
        request_versions: Sequence[int] = (4, 6),
        **kwargs: int,
    ) -> None:
        super().__init__(quic, **kwargs)
        self.authority = authority
        self.scope = scope if scope is not None else RequestScope()
        self._request_versions = tuple(request_versions)
        self._requested = False

    def request_headers(self) -> list[tuple[bytes, bytes]]:
        """RFC 9484 §4.4 (Figure 4) with RFC 9220 §3's :protocol."""
        return [
            (b":method", b"CONNECT"),
            (b":protocol", CONNECT_IP_PROTOCOL.encode()),
            (b":scheme", b"https"),
            (b":authority", self.authority.encode()),
            (b":path", self.scope.path().encode()),
            (b"capsule-protocol", CAPSULE_PROTOCOL_TRUE),
        ]

    def _after_event(self) -> list[ConnectIpEvent]:
        settings = self._h3.received_settings
        if self._requested or settings is None:
            return []
        self._requested = True
        if settings.get(Setting.ENABLE_CONNECT_PROTOCOL) != 1:
            return [TunnelRefused(0, "the proxy does not allow extended CONNECT (RFC 9220)")]
        if settings.get(Setting.H3_DATAGRAM) != 1:
            return [TunnelRefused(0, "the proxy does not take HTTP Datagrams (RFC 9297)")]
        stream_id = self._quic.get_next_available_stream_id()
        self.stream_id = stream_id
        self._h3.send_headers(stream_id, self.request_headers())
        if self._request_versions:
            requests = tuple(
                RequestedAddress(i + 1, unassigned(version))
                for i, version in enumerate(self._request_versions)
            )
            # sent with the request, before the response (RFC 9484 §7.1 allows it on HTTP/3)
            self._send_capsule(AddressRequest(requests).encode())
        return []

    def _receive_headers(self, event: HeadersReceived) -> list[ConnectIpEvent]:
        if event.stream_id == self.stream_id and self.is_open:
            return self._trailers(event)
        if event.stream_id != self.stream_id or self.is_open or self.closed is not None:
            return []
        headers = dict(event.headers)
        status_text = headers.get(b":status", b"0")
        status = int(status_text) if status_text.isdigit() else 0
        if 100 <= status < 200:
            return []  # interim response (aioquic validates it); the final one follows
        if not 200 <= status < 300:
            # §4.5: "the client MUST treat this proxying attempt as failed and abort"
            self._abort(H3ErrorCode.H3_REQUEST_CANCELLED, f"the proxy answered {status}")
            return [TunnelRefused(status, f"the proxy answered {status}")]
        violation = _capsule_protocol_violation(status, headers)
        if violation is not None:
            # RFC 9297 §3.2: a malformed message; RFC 9484 §4.5: "the client MUST treat this
            # proxying attempt as failed and abort the request"
            self._abort(H3ErrorCode.H3_MESSAGE_ERROR, f"a 2xx response {violation}")
            return [TunnelRefused(status, f"the response {violation}")]
        self.is_open = True
        out: list[ConnectIpEvent] = [TunnelOpened(event.stream_id)]
        if event.stream_ended:
            out += self._receive_capsule_data(b"", True)
        return out


def _capsule_protocol_violation(status: int, headers: dict[bytes, bytes]) -> str | None:
    """What makes a 2xx response unfit for the Capsule Protocol (RFC 9297 §3.2), or None."""
    if status in NO_CAPSULE_STATUSES:
        return f"with status {status}"
    for forbidden in NO_CAPSULE_FIELDS:
        if forbidden in headers:
            return f"with {forbidden.decode()}"
    return None


@dataclass(frozen=True)
class ProxyPolicy:
    """What a proxy gives the client of one connection: decided by the agent (from the client's
    certificate, its address pool) before the request arrives.

    :param assigned: the client's prefixes (ADDRESS_ASSIGN; its only allowed sources, §11).
    :param routes: the ranges the proxy routes for it (ROUTE_ADVERTISEMENT, narrowed to each
        request's scope; its only allowed destinations).
    :param authority: if set, a request for another :authority is refused 421.
    """

    assigned: tuple[IPNetwork, ...]
    routes: tuple[IPAddressRange, ...]
    authority: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "assigned", tuple(self.assigned))
        # raises ValueError for routes that cannot be advertised (e.g. protocol-0 overlaps)
        object.__setattr__(self, "routes", RouteAdvertisement(ordered_ranges(self.routes)).ranges)


class ConnectIpServer(_ConnectIpEndpoint):
    """The proxy side of one connection's CONNECT-IP tunnel (see the module docstring)."""

    def __init__(self, quic: QuicConnection, policy: ProxyPolicy, **kwargs: int) -> None:
        super().__init__(quic, **kwargs)
        self.policy = policy
        # requests held until the client's SETTINGS arrive, with the data that followed them
        self._held: dict[int, tuple[HeadersReceived, bytearray, bool]] = {}
        self.refusals: Counter[int] = Counter()
        """HTTP status -> requests refused with it."""

    def handle_event(self, event: quic_events.QuicEvent) -> list[ConnectIpEvent]:
        if isinstance(event, quic_events.StreamReset | quic_events.StopSendingReceived):
            # the client gave up on a request we hold: answered later, it would open a tunnel
            # on a dead stream (RFC 9484 §4.1) and take the connection's one tunnel
            self._held.pop(event.stream_id, None)
        return super().handle_event(event)

    def _receive_headers(self, event: HeadersReceived) -> list[ConnectIpEvent]:
        if event.stream_id == self.stream_id:
            return self._trailers(event)
        if not stream_send_open(self._quic, event.stream_id):
            return []  # the client's STOP_SENDING came first: no one to answer (RFC 9000 §3.5)
        if self._h3.received_settings is None:
            # RFC 9297 §2.1.1 needs the client's SETTINGS; they are on their way
            if len(self._held) >= MAX_HELD_REQUESTS:
                return [self._refuse(event.stream_id, 429, "too many requests before SETTINGS")]
            self._held[event.stream_id] = (event, bytearray(), event.stream_ended)
            return []
        return self._decide(event, b"", event.stream_ended)

    def _on_h3_event(self, event: H3Event) -> list[ConnectIpEvent]:
        if isinstance(event, DataReceived) and event.stream_id in self._held:
            headers, data, _ = self._held[event.stream_id]
            # one buffer per request, its length at hand: re-summing a list of the frames
            # cost CPU in the square of their count (a review: 16,000 1-byte frames, 1 s)
            data += event.data
            if len(data) > self._reader.max_value_size:
                del self._held[event.stream_id]
                return [self._refuse(event.stream_id, 429, "too much data before SETTINGS")]
            self._held[event.stream_id] = (headers, data, event.stream_ended)
            return []
        return super()._on_h3_event(event)

    def _after_event(self) -> list[ConnectIpEvent]:
        out: list[ConnectIpEvent] = []
        if self._held and self._h3.received_settings is not None:
            held, self._held = self._held, {}
            for event, data, ended in held.values():
                out += self._decide(event, bytes(data), ended)
        return out

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str] | RequestScope:
        """The status and reason to refuse a request with (in the spirit of connect-ip-go's
        choices), or the scope of a request we accept."""
        if headers.get(b":method") != b"CONNECT":
            return 405, "only CONNECT-IP (extended CONNECT) is served here"
        protocol = headers.get(b":protocol")
        if protocol != CONNECT_IP_PROTOCOL.encode():
            return 501, f"the :protocol {protocol!r} is not connect-ip"
        if not headers.get(b":scheme") or not headers.get(b":path"):
            return 400, "an extended CONNECT needs :scheme and :path (RFC 9220 §3)"
        if headers[b":scheme"] != b"https":
            return 400, "the :scheme must be https (RFC 9484 §4)"
        authority = self.policy.authority
        if authority is not None and headers.get(b":authority") != authority.encode():
            return 421, f"this proxy serves {authority}"
        for forbidden in NO_CAPSULE_FIELDS:
            if forbidden in headers:
                return 400, f"{forbidden.decode()} is not allowed with the Capsule Protocol"
        try:
            scope = RequestScope.from_path(headers[b":path"].decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, f"malformed scope: {exc}"
        if scope is None:
            return 404, "the path is not the CONNECT-IP template /.well-known/masque/ip/{t}/{p}/"
        if isinstance(scope.target, str):
            return 501, "DNS targets are not supported (RFC 9484 §4.1 needs them resolved)"
        settings = self._h3.received_settings or {}
        if settings.get(Setting.H3_DATAGRAM) != 1:
            return 400, "the client did not announce SETTINGS_H3_DATAGRAM=1 (RFC 9297 §2.1.1)"
        if self.stream_id is not None:
            return 429, "this connection already carries a CONNECT-IP tunnel"
        return scope

    def _decide(self, event: HeadersReceived, data: bytes, ended: bool) -> list[ConnectIpEvent]:
        """Answer a request; `data` is what followed its headers so far (while it was held)."""
        if not stream_send_open(self._quic, event.stream_id):
            return []  # a held request's stream that aioquic reset or discarded meanwhile
        decision = self._refusal(dict(event.headers))
        if not isinstance(decision, RequestScope):
            return [self._refuse(event.stream_id, *decision)]
        routes = scoped_ranges(self.policy.routes, decision)
        if not routes:
            # §4.6: "the IP proxy can immediately reject the request"
            return [self._refuse(event.stream_id, 403, "the scope holds no destination we route")]
        stream_id = event.stream_id
        self.stream_id = stream_id
        self.is_open = True
        self._h3.send_headers(
            stream_id, [(b":status", b"200"), (b"capsule-protocol", CAPSULE_PROTOCOL_TRUE)]
        )
        self.assigned_to_peer = self.policy.assigned
        self._source_filter = IngressFilter(self.policy.assigned)
        self._route_table = RouteTable(routes)
        self._send_capsule(
            AddressAssign(tuple(AssignedAddress(0, p) for p in self.policy.assigned)).encode()
        )
        self._send_capsule(RouteAdvertisement(routes).encode())
        out: list[ConnectIpEvent] = [TunnelOpened(stream_id)]
        if data or ended:
            out += self._receive_capsule_data(data, ended)
        return out

    def _refuse(self, stream_id: int, status: int, reason: str) -> RequestRefused:
        self.refusals[status] += 1
        self._h3.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=True)
        # RFC 9114 §4.1: the response is complete; ask the client to stop sending, no error
        with contextlib.suppress(ValueError):
            self._quic.stop_stream(stream_id, H3ErrorCode.H3_NO_ERROR)
        return RequestRefused(stream_id, status, reason)

    def _answer_address_request(self, request: AddressRequest) -> AddressAssign:
        """§4.7.2: "For each Requested Address", an Assigned Address with its Request ID: the
        client's configured prefix of that version (whatever address it preferred: the agent
        decided the client's address), or the all-zero rejection if it has none. Then, with
        Request ID 0, each prefix no answer carried: the list is the full one (§4.7.1)."""
        answers: list[AssignedAddress] = []
        for wanted in request.addresses:
            version = wanted.prefix.version
            match = next((p for p in self.policy.assigned if p.version == version), None)
            prefix = match if match is not None else unassigned(version)
            answers.append(AssignedAddress(wanted.request_id, prefix))
        answered = {a.prefix for a in answers}
        answers += [AssignedAddress(0, p) for p in self.policy.assigned if p not in answered]
        return AddressAssign(tuple(answers))
