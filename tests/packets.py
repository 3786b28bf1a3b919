"""Valid IP packets for tests, built from their fields with both checksums right: TCP segments
(IPv4 or IPv6, chosen by the addresses) and IPv4 UDP datagrams."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

from tunnel.wire.icmp import internet_checksum

ACK, PSH, FIN, SYN, RST = 0x10, 0x08, 0x01, 0x02, 0x04
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP TS(val 0, ecr 0)


def tcp(
    seq: int,
    payload: bytes = b"",
    *,
    flags: int = ACK,
    ack: int = 1000,
    window: int = 512,
    options: bytes = TIMESTAMPS,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 40000,
    dport: int = 5201,
    ident: int = 0,
    ttl: int = 64,
    tos: int = 0,
) -> bytes:
    """A TCP segment in IPv4 (DF set, ID `ident`) or IPv6 (`ttl` the hop limit, `tos` the
    traffic class), whichever `src` and `dst` are."""
    offset = (20 + len(options)) // 4
    segment = (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, flags, window, 0, 0)
        + options
        + payload
    )
    source, destination = ip_address(src), ip_address(dst)
    if isinstance(source, IPv4Address):
        header = ipv4_header(len(segment), 6, source, IPv4Address(destination), ident, ttl, tos)
        pseudo = source.packed + destination.packed + b"\x00\x06"
        pseudo += len(segment).to_bytes(2, "big")
    else:
        header = struct.pack(
            "!IHBB16s16s",
            6 << 28 | tos << 20,
            len(segment),
            6,
            ttl,
            source.packed,
            IPv6Address(destination).packed,
        )
        pseudo = source.packed + destination.packed + len(segment).to_bytes(4, "big")
        pseudo += b"\x00\x00\x00\x06"
    return header + with_checksum(segment, pseudo, 16)


def udp4(payload: bytes, *, sport: int = 40000, dport: int = 5201) -> bytes:
    """An IPv4 UDP datagram from 10.0.0.1 to 10.0.0.2 (UDP checksum 0: none)."""
    datagram = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    source, destination = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")
    return ipv4_header(len(datagram), 17, source, destination, 0, 64, 0) + datagram


def ipv4_header(
    length: int, proto: int, src: IPv4Address, dst: IPv4Address, ident: int, ttl: int, tos: int
) -> bytes:
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            tos,
            20 + length,
            ident,
            0x4000,
            ttl,
            proto,
            0,
            src.packed,
            dst.packed,
        )
    )
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header)


def with_checksum(data: bytes, pseudo: bytes, at: int) -> bytes:
    """`data` with the checksum over `pseudo` + `data` put at offset `at`."""
    blank = data[:at] + b"\x00\x00" + data[at + 2 :]
    return blank[:at] + internet_checksum(pseudo + blank).to_bytes(2, "big") + blank[at + 2 :]
