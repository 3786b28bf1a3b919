"""Valid IP packets for tests, built from their fields with both checksums right: TCP segments
(IPv4 or IPv6, chosen by the addresses) and IPv4 UDP datagrams."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from tunnel.wire.icmp import internet_checksum, ones_complement_sum
from tunnel.wire.tcp_gro import (
    GSO_NONE,
    GSO_TCPV4,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VNET_HEADER,
    VNET_HEADER_SIZE,
)

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


def cut_gso(data: bytes) -> list[bytes]:
    """What the kernel makes of a write (linux net/ipv4/tcp_offload.c, tcp_gso_segment): the
    super-packet cut into gso_size segments, each with its sequence number, IPv4 ID, lengths
    and checksums; PSH only on the last. A plain write is its packet. `data` is a
    virtio_net_hdr and its packet, as a TUN device reads or writes them."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HEADER.unpack_from(data)
    packet = data[VNET_HEADER_SIZE:]
    if gso_type == GSO_NONE:
        assert flags == 0
        return [packet]
    assert flags == VIRTIO_NET_HDR_F_NEEDS_CSUM and csum_offset == 16
    ip = 20 if gso_type == GSO_TCPV4 else 40
    assert csum_start == ip
    headers, payload = packet[:hdr_len], packet[hdr_len:]
    tcp_header = hdr_len - ip
    # the merged packet's own checksum field holds the pseudo-header sum with its length
    if ip == 20:
        assert internet_checksum(packet[:20]) == 0  # a valid IPv4 header checksum
        assert int.from_bytes(packet[2:4], "big") == len(packet)
        pseudo = packet[12:20] + b"\x00\x06" + (len(packet) - 20).to_bytes(2, "big")
    else:
        assert int.from_bytes(packet[4:6], "big") == len(packet) - 40
        pseudo = packet[8:40] + (len(packet) - 40).to_bytes(4, "big") + b"\x00\x00\x00\x06"
    assert int.from_bytes(packet[ip + 16 : ip + 18], "big") == ones_complement_sum(pseudo)
    segments = []
    seq = int.from_bytes(headers[ip + 4 : ip + 8], "big")
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)]
    for number, chunk in enumerate(chunks):
        ip_part = bytearray(headers[:ip])
        tcp_part = bytearray(headers[ip:])
        tcp_part[4:8] = ((seq + number * gso_size) & 0xFFFFFFFF).to_bytes(4, "big")
        if number < len(chunks) - 1:
            tcp_part[13] &= ~PSH
        tcp_part[16:18] = b"\x00\x00"
        length = tcp_header + len(chunk)
        if ip == 20:
            ip_part[2:4] = (20 + length).to_bytes(2, "big")
            ident = (int.from_bytes(headers[4:6], "big") + number) & 0xFFFF
            ip_part[4:6] = ident.to_bytes(2, "big")
            ip_part[10:12] = b"\x00\x00"
            ip_part[10:12] = internet_checksum(bytes(ip_part)).to_bytes(2, "big")
            pseudo = bytes(ip_part[12:20]) + b"\x00\x06" + length.to_bytes(2, "big")
        else:
            ip_part[4:6] = length.to_bytes(2, "big")
            pseudo = bytes(ip_part[8:40]) + length.to_bytes(4, "big") + b"\x00\x00\x00\x06"
        segment = bytes(tcp_part) + chunk
        segments.append(bytes(ip_part) + with_checksum(segment, pseudo, 16))
    return segments


def random_flow(
    rng: random.Random,
    number: int,
    *,
    most: int,
    flags: Sequence[int],
    ipv6: bool = False,
) -> list[bytes]:
    """1 to `most` consecutive data segments of flow `number` (source port 1000 + number, IPv4
    IDs from number * 1000 counting up): one MSS of 536, 1200 or 1448 bytes, one segment in
    ten shorter, each segment's flags drawn from `flags`, random payloads."""
    size = rng.choice([536, 1200, 1448])
    seq = rng.randrange(1 << 32)
    addresses = {"src": "fd00::1", "dst": "fd00::2"} if ipv6 else {}
    segments = []
    for i in range(rng.randint(1, most)):
        length = size if rng.random() > 0.1 else rng.randint(0, size)
        segments.append(
            tcp(
                seq,
                rng.randbytes(length),
                ident=(number * 1000 + i) & 0xFFFF,
                sport=1000 + number,
                flags=rng.choice(flags),
                **addresses,  # type: ignore[arg-type]
            )
        )
        seq = (seq + length) & 0xFFFFFFFF
    return segments


def valid_tcp(packet: bytes) -> bool:
    """Whether a TCP segment (IPv4 without options, or IPv6 without extension headers) has
    both checksums right."""
    if packet[0] >> 4 == 4:
        length = len(packet) - 20
        pseudo = packet[12:20] + b"\x00\x06" + length.to_bytes(2, "big")
        return internet_checksum(packet[:20]) == 0 and internet_checksum(pseudo + packet[20:]) == 0
    length = len(packet) - 40
    pseudo = packet[8:40] + length.to_bytes(4, "big") + b"\x00\x00\x00\x06"
    return internet_checksum(pseudo + packet[40:]) == 0
