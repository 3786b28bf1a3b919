"""Hypothesis strategies for the wire values of tunnel/ (shared by round-trip and fuzz tests)."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from hypothesis import strategies as st

from tunnel.wire.capsule import encode_capsule
from tunnel.wire.connect_ip import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    ConnectIpCapsule,
    IPAddressRange,
    RequestedAddress,
    RouteAdvertisement,
    ordered_ranges,
)
from tunnel.wire.datagram import ProtocolType, SessionDatagram
from tunnel.wire.errors import StreamErrorCode
from tunnel.wire.http_datagram import H3Datagram, IpProxyingPayload
from tunnel.wire.messages import (
    AccessId,
    AccessReport,
    AccessSignal,
    ControlMessage,
    End,
    ErrorTLV,
    JoinSession,
    NewSession,
    SessionIdTLV,
    StreamMessage,
    TcpConnect,
    TcpConnectOk,
)
from tunnel.wire.tlv import encode_tlv

_BROADCAST = IPv4Address("255.255.255.255")


def is_allowed_destination(address: IPv4Address | IPv6Address) -> bool:
    """The -tcp draft §5.1.1 rule restated independently of tunnel/wire/messages.py."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_multicast
        or address.is_loopback
        or address.is_unspecified
        or address == _BROADCAST
    )


access_reports = st.builds(AccessReport, st.sampled_from(AccessId), st.sampled_from(AccessSignal))
new_sessions = st.builds(NewSession, st.binary(max_size=255))
session_id_tlvs = st.builds(SessionIdTLV, st.binary(min_size=1, max_size=255))
join_sessions = st.builds(JoinSession, st.binary(min_size=1, max_size=255))
control_messages: st.SearchStrategy[ControlMessage] = st.one_of(
    access_reports, new_sessions, session_id_tlvs, join_sessions
)

_ipv4_destinations = st.ip_addresses(v=4).filter(is_allowed_destination)
# Drawn from networks with many allowed addresses: st.ip_addresses() alone often picks one-address
# networks such as ::1/128 whose only member the filter must reject.
destinations = st.one_of(
    _ipv4_destinations,
    _ipv4_destinations.map(lambda a: IPv6Address(f"::ffff:{a}")),  # the v4-mapped spelling
    st.ip_addresses(network="2000::/3"),
    st.ip_addresses(network="fc00::/7"),
    st.ip_addresses(network="fe80::/10"),
)
tcp_connects = st.builds(TcpConnect, destinations, st.integers(1, 0xFFFF))
tcp_connect_oks = st.just(TcpConnectOk())
error_codes = st.one_of(st.sampled_from(StreamErrorCode), st.integers(0, 0xFFFF))
error_tlvs = st.builds(ErrorTLV, error_codes, st.binary(max_size=253))
ends = st.just(End())
stream_messages: st.SearchStrategy[StreamMessage] = st.one_of(
    tcp_connects, tcp_connect_oks, error_tlvs, ends
)

# TLV types the -tcp draft does not define, for the skip-unknown rule of the preamble decoder.
unknown_stream_tlvs = st.builds(
    encode_tlv,
    st.integers(0x03, 0xFE),
    st.binary(max_size=40),
)


@st.composite
def preambles(draw: st.DrawFn) -> tuple[list[StreamMessage], list[bytes], bytes]:
    """A valid preamble for a decoder without role: (messages up to and including End, the
    encoded TLVs in wire order with unknown ones mixed in, the bytestream that follows)."""
    body: list[StreamMessage] = []
    if draw(st.booleans()):
        body.append(draw(tcp_connects))
    body += draw(st.lists(st.one_of(tcp_connect_oks, error_tlvs), max_size=3))
    body = draw(st.permutations(body))
    wire = [m.encode() for m in body]
    for unknown in draw(st.lists(unknown_stream_tlvs, max_size=2)):
        wire.insert(draw(st.integers(0, len(wire))), unknown)
    wire.append(End().encode())
    # tunnel-tcp-00 §5.1.3: no bytestream may follow End once an Error TLV was sent.
    has_error = any(isinstance(m, ErrorTLV) for m in body)
    bytestream = b"" if has_error else draw(st.binary(max_size=64))
    return [*body, End()], wire, bytestream


def _ip_packet(version: int) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda low, rest: bytes(((version << 4) | low,)) + rest,
        st.integers(0, 15),
        st.binary(max_size=80),
    )


ip_packets = st.one_of(_ip_packet(4), _ip_packet(6))


@st.composite
def session_datagrams(draw: st.DrawFn) -> SessionDatagram:
    tag = draw(st.integers(0, 0xFFFF))
    kind = draw(st.sampled_from(["ipv4", "ipv6", "ethernet", "other"]))
    if kind == "ipv4":
        return SessionDatagram(ProtocolType.IPV4, tag, draw(_ip_packet(4)))
    if kind == "ipv6":
        return SessionDatagram(ProtocolType.IPV6, tag, draw(_ip_packet(6)))
    if kind == "ethernet":  # a frame has at least its 14-byte header (session draft §4)
        return SessionDatagram(
            ProtocolType.ETHERNET, tag, draw(st.binary(min_size=14, max_size=80))
        )
    # any type we do not carry: its packet is opaque (the caller's policy may drop it)
    other = draw(st.integers(0, 0xFFFF).filter(lambda t: t not in set(ProtocolType)))
    return SessionDatagram(other, tag, draw(st.binary(max_size=80)))


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at arbitrary points (empty chunks included: a STREAM frame can be empty)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- CONNECT-IP (RFC 9484 §4.7) and HTTP Datagrams (RFC 9297) -----------------------------------

_prefix_lengths = {4: 32, 6: 128}


@st.composite
def ip_prefixes(draw: st.DrawFn, version: int | None = None) -> IPv4Network | IPv6Network:
    """Any prefix of either version, its host bits zero (RFC 9484 §4.7.1)."""
    v = draw(st.sampled_from([4, 6])) if version is None else version
    length = draw(st.integers(0, _prefix_lengths[v]))
    address = draw(st.ip_addresses(v=v))
    return ip_network((address, length), strict=False)


request_ids = st.integers(0, (1 << 62) - 1)
assigned_addresses = st.builds(AssignedAddress, request_ids, ip_prefixes())
address_assigns = st.builds(AddressAssign, st.lists(assigned_addresses, max_size=6).map(tuple))
requested_addresses = st.builds(RequestedAddress, st.integers(1, (1 << 62) - 1), ip_prefixes())
address_requests = st.builds(
    AddressRequest,
    st.lists(requested_addresses, min_size=1, max_size=6, unique_by=lambda a: a.request_id).map(
        tuple
    ),
)


@st.composite
def address_ranges(draw: st.DrawFn) -> IPAddressRange:
    v = draw(st.sampled_from([4, 6]))
    a, b = draw(st.ip_addresses(v=v)), draw(st.ip_addresses(v=v))
    return IPAddressRange(min(a, b), max(a, b), draw(st.sampled_from([0, 1, 6, 17, 58, 255])))


@st.composite
def route_advertisements(draw: st.DrawFn) -> RouteAdvertisement:
    """A valid ROUTE_ADVERTISEMENT: random ranges put in §4.7.3 order (merged where they touch),
    then those of a given protocol that overlap one of protocol 0 left out."""
    ranges = list(ordered_ranges(draw(st.lists(address_ranges(), max_size=8))))
    any_protocol = [r for r in ranges if r.protocol == 0]
    kept = [
        r
        for r in ranges
        if r.protocol == 0
        or not any(
            o.version == r.version and int(o.start) <= int(r.end) and int(r.start) <= int(o.end)
            for o in any_protocol
        )
    ]
    return RouteAdvertisement(tuple(kept))


connect_ip_capsules: st.SearchStrategy[ConnectIpCapsule] = st.one_of(
    address_assigns, address_requests, route_advertisements()
)
h3_datagrams = st.builds(
    H3Datagram,
    st.integers(0, (1 << 60) - 1).map(lambda q: q * 4),
    st.binary(max_size=64),
)
ip_proxying_payloads = st.builds(
    IpProxyingPayload, st.integers(0, (1 << 62) - 1), st.binary(max_size=64)
)
# Capsule types RFC 9484 does not define (RFC 9297 §3.2: skipped), among them DATAGRAM (0x00).
unknown_capsules = st.builds(
    encode_capsule,
    st.one_of(st.just(0), st.integers(4, (1 << 62) - 1)),
    st.binary(max_size=40),
)
