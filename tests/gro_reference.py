"""Linux GRO's rule for merging TCP segments (net/ipv4/tcp_offload.c, tcp_gro_receive), written
out in Python: the reference the C merge (tunnel/wire/tcp_gro.c) is held to by
tests/unit/test_tcp_gro.py. It was the programs' own merge until the C one replaced it (issue 14
item 5): readable, and about 2 us per packet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tunnel.wire.icmp import internet_checksum, ones_complement_sum
from tunnel.wire.tcp_gro import (
    GSO_TCPV4,
    GSO_TCPV6,
    MAX_MERGED,
    PLAIN,
    TCP_CHECKSUM_OFFSET,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VNET_HEADER,
    Write,
)

TCP_ACK = 0x10
TCP_PSH = 0x08
_IPV4_HEADER = 20
_IPV6_HEADER = 40
_PROTO_TCP = 6
_PROTO_UDP = 17


@dataclass
class _Merge:
    """The segments of one flow merged so far: the first one's headers, the payloads."""

    first: bytes
    ip_header: int  # 20 (IPv4) or 40 (IPv6)
    tcp_header: int
    size: int  # gso_size: the first segment's payload length
    next_seq: int
    next_id: int  # IPv4: the ID the next segment must carry
    length: int  # the merged packet's length so far
    payloads: list[bytes] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # indices into the batch
    last_flags: int = TCP_ACK
    open: bool = True  # False once a short or PSH segment ended it


def _segment(packet: bytes) -> tuple[bytes, int, int, int] | None:
    """(flow key, IP header length, TCP header length, payload length) of a TCP data segment
    GRO may merge, or None when it must go as it came."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 40 or packet[0] != 0x45 or packet[9] != _PROTO_TCP:
            return None  # IP options, not TCP, or too short for TCP
        if packet[6] & 0x3F or packet[7]:
            return None  # a fragment (MF or an offset)
        if int.from_bytes(packet[2:4], "big") != len(packet):
            return None
        ip_header = _IPV4_HEADER
        key = packet[12:24]  # addresses and ports
    elif version == 6:
        if len(packet) < 60 or packet[6] != _PROTO_TCP:
            return None  # an extension header, not TCP, or too short for TCP
        if int.from_bytes(packet[4:6], "big") + _IPV6_HEADER != len(packet):
            return None
        ip_header = _IPV6_HEADER
        key = packet[8:44]
    else:
        return None
    tcp_header = (packet[ip_header + 12] >> 4) * 4
    payload = len(packet) - ip_header - tcp_header
    if tcp_header < 20 or payload <= 0:
        return None
    if packet[ip_header + 13] & ~TCP_PSH != TCP_ACK:
        return None  # SYN, FIN, RST, URG, ECE, CWR, or no ACK
    return key, ip_header, tcp_header, payload


def _joins(merge: _Merge, packet: bytes, tcp_header: int, payload: int) -> bool:
    """Whether `packet` (a segment of merge's flow) continues `merge` by Linux GRO's rule."""
    first = merge.first
    ip = merge.ip_header
    if not merge.open or tcp_header != merge.tcp_header or payload > merge.size:
        return False
    if merge.length + payload > MAX_MERGED:
        return False
    if int.from_bytes(packet[ip + 4 : ip + 8], "big") != merge.next_seq:
        return False
    # ACK number and data offset; window; options: all as the first segment's
    if packet[ip + 8 : ip + 13] != first[ip + 8 : ip + 13]:
        return False
    if packet[ip + 14 : ip + 16] != first[ip + 14 : ip + 16]:
        return False
    if packet[ip + 20 : ip + tcp_header] != first[ip + 20 : ip + tcp_header]:
        return False
    if ip == _IPV4_HEADER:
        # TOS, the DF flag, TTL; the ID one more than the last one's
        if packet[1] != first[1] or packet[6] != first[6] or packet[8] != first[8]:
            return False
        if int.from_bytes(packet[4:6], "big") != merge.next_id:
            return False
    else:
        # traffic class, flow label, hop limit
        if packet[0:4] != first[0:4] or packet[7] != first[7]:
            return False
    return True


def _start(packet: bytes, index: int, ip_header: int, tcp_header: int, payload: int) -> _Merge:
    merge = _Merge(
        first=packet,
        ip_header=ip_header,
        tcp_header=tcp_header,
        size=payload,
        next_seq=0,
        next_id=0,
        length=ip_header + tcp_header,
    )
    _append(merge, packet, index, payload)
    return merge


def _append(merge: _Merge, packet: bytes, index: int, payload: int) -> None:
    ip = merge.ip_header
    seq = int.from_bytes(packet[ip + 4 : ip + 8], "big")
    merge.next_seq = (seq + payload) & 0xFFFFFFFF
    if ip == _IPV4_HEADER:
        merge.next_id = (int.from_bytes(packet[4:6], "big") + 1) & 0xFFFF
    merge.payloads.append(packet[ip + merge.tcp_header :])
    merge.members.append(index)
    merge.length += payload
    flags = packet[ip + 13]
    merge.last_flags = flags
    # a short segment is the last one GRO takes; PSH ends a merge too
    if payload < merge.size or flags & TCP_PSH:
        merge.open = False


def _merged_write(merge: _Merge) -> Write:
    """The super-packet: the first segment's headers with the merged length, the TCP checksum
    left to the kernel (it holds the pseudo-header sum, as Linux's own TSO packets do)."""
    first = merge.first
    ip = merge.ip_header
    th = merge.tcp_header
    length = merge.length
    tcp_length = length - ip
    if ip == _IPV4_HEADER:
        header = bytearray(first[:20])
        header[2:4] = length.to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
        pseudo = first[12:20] + b"\x00\x06" + tcp_length.to_bytes(2, "big")
        gso_type = GSO_TCPV4
    else:
        header = bytearray(first[:40])
        header[4:6] = tcp_length.to_bytes(2, "big")
        pseudo = first[8:40] + tcp_length.to_bytes(4, "big") + b"\x00\x00\x00\x06"
        gso_type = GSO_TCPV6
    tcp = bytearray(first[ip : ip + th])
    tcp[13] = merge.last_flags
    tcp[16:18] = ones_complement_sum(pseudo).to_bytes(2, "big")
    vnet = VNET_HEADER.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, ip + th, merge.size, ip, TCP_CHECKSUM_OFFSET
    )
    return Write(b"".join((vnet, header, tcp, *merge.payloads)), tuple(merge.members))


def coalesce(packets: Sequence[bytes]) -> list[Write]:
    """The writes that carry `packets`: each TCP flow's consecutive segments merged, everything
    else as it came (with the plain virtio_net_hdr), a flow's packets in their order."""
    slots: list[_Merge | Write] = []
    merges: dict[bytes, _Merge] = {}
    for index, packet in enumerate(packets):
        segment = _segment(packet)
        if segment is None:
            # a flow's FIN, pure ACK, ...: nothing of its flow may pass it
            key = _flow_key(packet)
            if key is None:
                merges.clear()
            else:
                merges.pop(key, None)
            slots.append(Write(PLAIN + packet, (index,)))
            continue
        key, ip_header, tcp_header, payload = segment
        merge = merges.get(key)
        if merge is not None and _joins(merge, packet, tcp_header, payload):
            _append(merge, packet, index, payload)
            continue
        merge = _start(packet, index, ip_header, tcp_header, payload)
        merges[key] = merge
        slots.append(merge)
    return [slot if isinstance(slot, Write) else _merge_write(slot) for slot in slots]


def _merge_write(merge: _Merge) -> Write:
    """A merge's write: the super-packet, or its one segment as it came."""
    if len(merge.members) > 1:
        return _merged_write(merge)
    return Write(PLAIN + merge.first, (merge.members[0],))


def _flow_key(packet: bytes) -> bytes | None:
    """The key `_segment` gives the packet's flow (addresses and ports, as for TCP), or None
    when it cannot be read (then no merge may stay open past the packet)."""
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        return _ipv4_key(packet)
    if version == 6 and len(packet) >= 44 and packet[6] in (_PROTO_TCP, _PROTO_UDP):
        return packet[8:44]
    return None


def _ipv4_key(packet: bytes) -> bytes | None:
    start = (packet[0] & 0x0F) * 4
    if start < _IPV4_HEADER or len(packet) < start + 4:
        return None
    return packet[12:20] + packet[start : start + 4]
