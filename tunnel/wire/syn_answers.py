"""What an application's held SYN is answered with when the concentrator could not connect
(stream mode's faithful connect, tunnel/aio/stream_client.py).

The -tcp draft maps "SYN received" to "Open Stream, send TLVs" (§3) and a failed connect to an
Error TLV (§5.1.3). Holding the application's SYN until that answer lets its connect() fail the
way it would without the tunnel:
- Network Failure (the destination refused, a timeout, a policy): a TCP RST from the destination
  (RFC 9293 §3.10.7.3: a RST acceptable in SYN-SENT acknowledges the SYN) -> ECONNREFUSED;
- ICMP Packet Received: the ICMP error the concentrator got, re-addressed to the application —
  same type and code, from the router that sent it (the source of the ICMP packet's IP header,
  which the concentrator copies, -tcp §5.1.3), quoting the application's own SYN so its kernel
  finds the socket (RFC 792 / RFC 4443 §3.1) -> EHOSTUNREACH, ENETUNREACH...

Sans-I/O: bytes in, bytes out; the program sends the answer through a raw socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from tunnel.wire.icmp import ERROR_HOP_LIMIT, PROTO_ICMP, PROTO_ICMPV6, internet_checksum

PROTO_TCP = 6
_SYN, _RST, _ACK = 0x02, 0x04, 0x10
ICMPV4_DEST_UNREACHABLE = 3
ICMPV6_DEST_UNREACHABLE = 1

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Syn:
    """An application's SYN: who connects where, and its initial sequence number."""

    source: IPAddress
    source_port: int
    destination: IPAddress
    destination_port: int
    sequence: int
    packet: bytes

    @property
    def flow(self) -> tuple[IPAddress, int, IPAddress, int]:
        return self.source, self.source_port, self.destination, self.destination_port


def parse_syn(packet: bytes) -> Syn | None:
    """The SYN in `packet` (IPv4 or IPv6, TCP, SYN without ACK), or None."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    source: IPAddress
    destination: IPAddress
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        if packet[9] != PROTO_TCP or header < 20:
            return None
        source, destination = IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
    elif version == 6 and len(packet) >= 40:
        header = 40
        if packet[6] != PROTO_TCP:  # no extension headers on a locally made SYN
            return None
        source, destination = IPv6Address(packet[8:24]), IPv6Address(packet[24:40])
    else:
        return None
    tcp = packet[header:]
    if len(tcp) < 20 or tcp[13] & (_SYN | _ACK) != _SYN:
        return None
    source_port, destination_port, sequence = struct.unpack_from("!HHI", tcp)
    return Syn(source, source_port, destination, destination_port, sequence, bytes(packet))


def _pseudo_header(source: IPAddress, destination: IPAddress, proto: int, length: int) -> bytes:
    if isinstance(source, IPv4Address):
        return source.packed + destination.packed + struct.pack("!BBH", 0, proto, length)
    return source.packed + destination.packed + struct.pack("!I3xB", length, proto)


def _ip_packet(source: IPAddress, destination: IPAddress, proto: int, payload: bytes) -> bytes:
    if isinstance(source, IPv4Address):
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            0,
            0x4000,  # DF
            ERROR_HOP_LIMIT,
            proto,
            0,
            source.packed,
            destination.packed,
        )
        checksum = internet_checksum(header)
        return header[:10] + checksum.to_bytes(2, "big") + header[12:] + payload
    header = struct.pack("!IHBB", 6 << 28, len(payload), proto, ERROR_HOP_LIMIT)
    return header + source.packed + destination.packed + payload


def tcp_reset_for(syn: Syn) -> bytes:
    """A RST+ACK from the SYN's destination acknowledging it: the application's connect()
    fails with ECONNREFUSED."""
    segment = struct.pack(
        "!HHIIBBHHH",
        syn.destination_port,
        syn.source_port,
        0,
        (syn.sequence + 1) & 0xFFFFFFFF,
        5 << 4,
        _RST | _ACK,
        0,
        0,
        0,
    )
    pseudo = _pseudo_header(syn.destination, syn.source, PROTO_TCP, len(segment))
    checksum = internet_checksum(pseudo + segment)
    segment = segment[:16] + checksum.to_bytes(2, "big") + segment[18:]
    return _ip_packet(syn.destination, syn.source, PROTO_TCP, segment)


def unreachable_for(syn: Syn, icmp_packet: bytes) -> bytes | None:
    """The concentrator's ICMP error (its IP packet, or the ICMP message alone as older
    concentrators sent it) re-addressed to the application, or None if it is not a Destination
    Unreachable of the SYN's family."""
    if not icmp_packet:
        return None
    version = 4 if isinstance(syn.source, IPv4Address) else 6
    router: IPAddress = syn.destination
    message = icmp_packet
    first = icmp_packet[0] >> 4
    if version == 4 and first == 4 and len(icmp_packet) >= 20:
        router = IPv4Address(icmp_packet[12:16])
        message = icmp_packet[(icmp_packet[0] & 0x0F) * 4 :]
    elif version == 6 and first == 6 and len(icmp_packet) >= 40:
        router = IPv6Address(icmp_packet[8:24])
        message = icmp_packet[40:]
    wanted = ICMPV4_DEST_UNREACHABLE if version == 4 else ICMPV6_DEST_UNREACHABLE
    if len(message) < 2 or message[0] != wanted:
        return None
    # a SYN is small: quote it whole (RFC 1812 §4.3.2.3, RFC 4443 §3.1)
    body = struct.pack("!BBHI", wanted, message[1], 0, 0) + syn.packet
    if version == 4:
        proto, checksum = PROTO_ICMP, internet_checksum(body)
    else:  # the ICMPv6 checksum covers a pseudo-header (RFC 4443 §2.3)
        proto = PROTO_ICMPV6
        checksum = internet_checksum(_pseudo_header(router, syn.source, proto, len(body)) + body)
    body = body[:2] + checksum.to_bytes(2, "big") + body[4:]
    return _ip_packet(router, syn.source, proto, body)


__all__ = ["Syn", "parse_syn", "tcp_reset_for", "unreachable_for"]
