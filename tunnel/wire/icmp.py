"""IP packet inspection and the ICMP errors a tunnel endpoint sends for packets too big to tunnel.

Sans-I/O: bytes in, bytes out. The tunnel endpoint behaves as an IP router whose next hop is the
QUIC tunnel (tunnel draft §tunnel mode carries each packet whole in one DATAGRAM frame, so a packet
larger than the datagram budget cannot be forwarded). A router answers such a packet with:

- IPv4: Destination Unreachable, code 4 "fragmentation needed and DF set", with the next-hop MTU
  in the second half of the unused field (RFC 792, RFC 1191 §4); the quoted original is as much of
  it as fits in a 576-byte error datagram (RFC 1812 §4.3.2.3).
- IPv6: Packet Too Big carrying the MTU (RFC 4443 §3.2); the quoted original is as much of it as
  fits in a 1280-byte error datagram (RFC 4443 §2.4 (c)).

An IPv4 packet without DF may be fragmented by a router, so no ICMP error is due for it:
`packet_too_big` returns None and the caller fragments or drops it.

Choosing the source address (checked in tests/integration/test_tun.py): an error written back
into the TUN device is input to the local kernel, and Linux drops an IPv4 packet arriving there
whose source is one of the host's own addresses (martian source); IPv6 accepts it. So when writing
into the TUN, use an address that is not local to the host, e.g. the peer's tunnel address (the
"router" at the far end of the tunnel link); with the host's own address, send the error through
a raw socket instead. While the datagram budget is fixed, setting the TUN MTU to it lets the kernel
itself send these errors; this module covers packets that are larger than the budget anyway
(the budget shrank, or differs between the connections of a session).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

IPV4_HEADER_MIN = 20
IPV6_HEADER_SIZE = 40
ICMP_HEADER_SIZE = 8
PROTO_ICMP = 1
PROTO_ICMPV6 = 58

# RFC 1812 §4.3.2.3: an ICMPv4 error must not exceed 576 bytes.
ICMPV4_ERROR_MAX = 576
# RFC 4443 §2.4 (c): an ICMPv6 error must not exceed the IPv6 minimum MTU.
ICMPV6_ERROR_MAX = 1280
IPV4_MIN_MTU = 68  # RFC 791: every IPv4 module must forward 68-byte datagrams
IPV6_MIN_MTU = 1280  # RFC 8200 §5

ICMPV4_DEST_UNREACHABLE = 3
ICMPV4_CODE_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2
# RFC 792 types of ICMPv4 error messages (never answered with another error, RFC 1122 §3.2.2).
_ICMPV4_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
_IPV4_FLAG_DF = 0x4000
_IPV4_FRAGMENT_OFFSET_MASK = 0x1FFF
ERROR_HOP_LIMIT = 64


class MalformedPacketError(ValueError):
    """The bytes are not a well-formed IPv4 or IPv6 packet header."""


IPAddress = IPv4Address | IPv6Address


def ip_version(packet: bytes) -> int:
    """The IP version (4 or 6) from the first nibble; MalformedPacketError for anything else."""
    if not packet:
        raise MalformedPacketError("the packet is empty, so it has no IP version")
    version = packet[0] >> 4
    if version not in (4, 6):
        raise MalformedPacketError(f"IP version {version} is neither 4 nor 6")
    return version


def _check_header(packet: bytes) -> int:
    version = ip_version(packet)
    if version == 4:
        if len(packet) < IPV4_HEADER_MIN:
            raise MalformedPacketError(
                f"IPv4 packet of {len(packet)} bytes is shorter than a 20-byte header"
            )
        header_length = (packet[0] & 0x0F) * 4
        if header_length < IPV4_HEADER_MIN or header_length > len(packet):
            raise MalformedPacketError(
                f"IPv4 header length {header_length} is invalid for a {len(packet)}-byte packet"
            )
    elif len(packet) < IPV6_HEADER_SIZE:
        raise MalformedPacketError(
            f"IPv6 packet of {len(packet)} bytes is shorter than a 40-byte header"
        )
    return version


def source_address(packet: bytes) -> IPAddress:
    """The source address of an IPv4 or IPv6 packet."""
    if _check_header(packet) == 4:
        return IPv4Address(packet[12:16])
    return IPv6Address(packet[8:24])


def destination_address(packet: bytes) -> IPAddress:
    """The destination address of an IPv4 or IPv6 packet."""
    if _check_header(packet) == 4:
        return IPv4Address(packet[16:20])
    return IPv6Address(packet[24:40])


def total_length(packet: bytes) -> int:
    """The length the header claims for the whole packet (IPv4 Total Length; IPv6 40 + Payload
    Length). It may differ from len(packet) when the packet is truncated or padded."""
    if _check_header(packet) == 4:
        return int.from_bytes(packet[2:4], "big")
    return IPV6_HEADER_SIZE + int.from_bytes(packet[4:6], "big")


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, folded to 16 bits, not complemented
    (the partial sum an offloaded checksum starts from, tunnel/wire/tcp_gro.py)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, complemented."""
    return ~ones_complement_sum(data) & 0xFFFF


def _is_unanswerable_source(address: IPAddress) -> bool:
    # RFC 1812 §4.3.2.7 / RFC 4443 §2.4 (e): never send an error to an address that does not
    # identify a single host.
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        return True
    return isinstance(address, IPv4Address) and address == IPv4Address("255.255.255.255")


def icmpv4_frag_needed(packet: bytes, mtu: int, source: IPv4Address) -> bytes | None:
    """The ICMPv4 "fragmentation needed" datagram answering `packet` (sent from `source`, the
    tunnel's own IPv4 address, to the packet's source), or None when a router must not answer:
    DF not set (the caller may fragment or drop), a non-first fragment, an ICMP error, or a
    source that is not a single host (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7)."""
    if _check_header(packet) != 4:
        raise MalformedPacketError("icmpv4_frag_needed needs an IPv4 packet")
    if not IPV4_MIN_MTU <= mtu <= 0xFFFF:
        raise ValueError(f"next-hop MTU {mtu} is outside {IPV4_MIN_MTU}..65535")
    flags_fragment = int.from_bytes(packet[6:8], "big")
    if not flags_fragment & _IPV4_FLAG_DF:
        return None
    if flags_fragment & _IPV4_FRAGMENT_OFFSET_MASK:
        return None
    header_length = (packet[0] & 0x0F) * 4
    if (
        packet[9] == PROTO_ICMP
        and len(packet) > header_length
        and packet[header_length] in _ICMPV4_ERROR_TYPES
    ):
        return None
    original_source = IPv4Address(packet[12:16])
    if _is_unanswerable_source(original_source):
        return None

    quoted = packet[: ICMPV4_ERROR_MAX - IPV4_HEADER_MIN - ICMP_HEADER_SIZE]
    # RFC 1191 §4: the low-order 16 bits of the unused field carry the next-hop MTU.
    icmp_without_sum = struct.pack(
        "!BBHHH", ICMPV4_DEST_UNREACHABLE, ICMPV4_CODE_FRAG_NEEDED, 0, 0, mtu
    )
    icmp_checksum = internet_checksum(icmp_without_sum + quoted)
    icmp = icmp_without_sum[:2] + icmp_checksum.to_bytes(2, "big") + icmp_without_sum[4:] + quoted

    length = IPV4_HEADER_MIN + len(icmp)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        length,
        0,
        0,
        ERROR_HOP_LIMIT,
        PROTO_ICMP,
        0,
        source.packed,
        original_source.packed,
    )
    header_checksum = internet_checksum(header)
    return header[:10] + header_checksum.to_bytes(2, "big") + header[12:] + icmp


def _is_icmpv6_error(packet: bytes) -> bool:
    # Only a directly following ICMPv6 header is inspected: walking every extension header is
    # not worth it here, and the quoted packet is still bounded, so a rare miss is harmless.
    return (
        packet[6] == PROTO_ICMPV6
        and len(packet) > IPV6_HEADER_SIZE
        and packet[IPV6_HEADER_SIZE] < 128
    )


def icmpv6_packet_too_big(packet: bytes, mtu: int, source: IPv6Address) -> bytes | None:
    """The ICMPv6 Packet Too Big datagram answering `packet` (sent from `source`, the tunnel's own
    IPv6 address, to the packet's source), or None when RFC 4443 §2.4 (e) forbids an answer
    (the packet is an ICMPv6 error, or its source is not a single host). Unlike other errors,
    Packet Too Big is also sent for multicast destinations (RFC 4443 §2.4 (e.2))."""
    if _check_header(packet) != 6:
        raise MalformedPacketError("icmpv6_packet_too_big needs an IPv6 packet")
    if not IPV6_MIN_MTU <= mtu <= 0xFFFFFFFF:
        raise ValueError(f"MTU {mtu} is below the IPv6 minimum of {IPV6_MIN_MTU}")
    if _is_icmpv6_error(packet):
        return None
    original_source = IPv6Address(packet[8:24])
    if _is_unanswerable_source(original_source):
        return None

    quoted = packet[: ICMPV6_ERROR_MAX - IPV6_HEADER_SIZE - ICMP_HEADER_SIZE]
    icmp_length = ICMP_HEADER_SIZE + len(quoted)
    # RFC 4443 §2.3: the checksum covers an IPv6 pseudo-header (RFC 8200 §8.1).
    pseudo_header = (
        source.packed + original_source.packed + struct.pack("!I3xB", icmp_length, PROTO_ICMPV6)
    )
    icmp_without_sum = struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu)
    icmp_checksum = internet_checksum(pseudo_header + icmp_without_sum + quoted)
    icmp = icmp_without_sum[:2] + icmp_checksum.to_bytes(2, "big") + icmp_without_sum[4:] + quoted
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        icmp_length,
        PROTO_ICMPV6,
        ERROR_HOP_LIMIT,
        source.packed,
        original_source.packed,
    )
    return header + icmp


def packet_too_big(
    packet: bytes, mtu: int, source_v4: IPv4Address | None, source_v6: IPv6Address | None
) -> bytes | None:
    """The ICMP error a router sends for `packet`, too big for the next-hop `mtu`, in the packet's
    family; None when no error is due (see the two functions above) or the tunnel has no
    address in that family to send it from (the caller then drops the packet and counts it).
    An IPv6 path is never below 1280 bytes (RFC 8200 §5): a smaller `mtu` (the tunnel's budget
    while path MTU discovery searches from its 1200-byte base) is told as 1280, and packets
    between the two are lost until the budget is back above it. An IPv4 `mtu` below 68 (a
    peer that announced a tiny max_datagram_frame_size) has no error to tell it with (RFC 791
    makes 68 the least a link carries): None, and the packet is dropped (found by a review:
    each such packet raised, counted as the concentrator's internal error)."""
    if ip_version(packet) == 4:
        if source_v4 is None or mtu < IPV4_MIN_MTU:
            return None
        return icmpv4_frag_needed(packet, mtu, source_v4)
    if source_v6 is None:
        return None
    return icmpv6_packet_too_big(packet, max(mtu, IPV6_MIN_MTU), source_v6)
