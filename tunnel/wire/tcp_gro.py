"""Generic receive offload in user space: the TCP segments of one TUN write batch that belong
together, merged into one super-packet the kernel takes in one write (issue 14 item 2).

Why: each packet written to a TUN device costs a system call, and the kernel runs the inner
TCP's receive path inside it once per packet. A device opened with IFF_VNET_HDR takes a
`virtio_net_hdr` before each packet; one that says "TCP segmentation, segments of gso_size bytes"
lets us hand the kernel up to 64 kB of consecutive segments of one flow at once. The kernel
treats the write as it treats a packet its own GRO merged (the receiving TCP sees one large
segment; a forwarded one is cut back into segments at the egress device), which is what
wireguard-go does on Linux.

Which segments merge is Linux GRO's rule (net/ipv4/tcp_offload.c, tcp_gro_receive): the same
addresses and ports, the next sequence number, the same ACK number, window, TCP options and IP
header fields (TTL, TOS, DF; IPv4 IDs counting up by one), only ACK (and PSH on the last) set,
every segment but the last exactly gso_size bytes long. Anything else is written as it came, and
ends the flow's merge so that no segment overtakes another of its flow. Packets of different
flows may change order with each other; a flow's own packets never do.

The merging is in C (tcp_gro.c, in build/libqtoffload.so, loaded with ctypes; issue 14 item 5):
in Python it cost about 2 us per packet, 8-10 % of the concentrator's CPU at full speed. The
rules are written out in Python in tests/gro_reference.py, which the unit tests hold the C to.
Without the library a TUN is opened without offloads (tunnel/aio/tun.py says why). Pure
functions of bytes, no I/O: tunnel/aio/tun.py writes what `Coalescer.coalesce` returns.
"""

from __future__ import annotations

import ctypes
import struct
from array import array
from collections.abc import Sequence
from itertools import accumulate
from typing import NamedTuple

from tunnel.wire import offload_library

# linux/virtio_net.h: struct virtio_net_hdr (the 10-byte legacy header a TUN device with
# IFF_VNET_HDR prepends to every read and expects before every write), native byte order
# for a device that was not switched to little- or big-endian headers. Its fields: flags,
# gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HEADER = struct.Struct("=BBHHHH")
VNET_HEADER_SIZE = VNET_HEADER.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
PLAIN = VNET_HEADER.pack(0, GSO_NONE, 0, 0, 0, 0)  # "a whole packet, checksums done"

MAX_MERGED = 65535  # the largest IP packet a write may carry (IPv4 Total Length)
TCP_CHECKSUM_OFFSET = 16


class Write(NamedTuple):
    """One write for the TUN: `data` (virtio_net_hdr + packet) carries the batch's packets
    at `members` (one index when it goes as it came)."""

    data: bytes
    members: tuple[int, ...]


class Coalescer:
    """The C merge with its buffers, grown to the largest batch seen: `coalesce` returns
    copies, so one instance serves every device of a process, from one thread (the programs'
    event loop)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        function = library.qt_gro_coalesce
        function.restype = ctypes.c_int
        function.argtypes = [
            ctypes.c_char_p,  # data
            ctypes.c_void_p,  # offsets
            ctypes.c_uint32,  # n
            ctypes.c_void_p,  # out
            ctypes.c_size_t,  # out_cap
            ctypes.c_void_p,  # write_offsets
            ctypes.c_void_p,  # member_offsets
            ctypes.c_void_p,  # members
            ctypes.c_void_p,  # scratch
        ]
        scratch_per_packet = library.qt_gro_scratch_per_packet
        scratch_per_packet.restype = ctypes.c_size_t
        scratch_per_packet.argtypes = []
        self._function = function
        self._scratch_per_packet: int = scratch_per_packet()
        self._packets = 0  # the batch size the buffers below hold
        self._out_capacity = 0
        self._grow(64, 64 * 2048)

    @classmethod
    def load(cls) -> Coalescer | str:
        """The coalescer, or one sentence saying why there is none."""
        library = offload_library.load()
        return library if isinstance(library, str) else cls(library)

    def _grow(self, packets: int, out_bytes: int) -> None:
        if packets > self._packets:
            self._packets = packets
            self._write_offsets = array("I", bytes(4 * (packets + 1)))
            self._member_offsets = array("I", bytes(4 * (packets + 1)))
            self._members = array("I", bytes(4 * packets))
            self._scratch = bytearray(packets * self._scratch_per_packet)
            self._scratch_address = _address(self._scratch)
        if out_bytes > self._out_capacity:
            self._out_capacity = out_bytes
            self._out = bytearray(out_bytes)
            self._out_view = memoryview(self._out)
            self._out_address = _address(self._out)

    def coalesce(self, packets: Sequence[bytes]) -> list[Write]:
        """The writes that carry `packets`: each TCP flow's consecutive segments merged,
        everything else as it came (with the plain virtio_net_hdr), a flow's packets in their
        order, each write at the place of its first packet."""
        count = len(packets)
        if not count:
            return []
        offsets = array("I", (0,))
        offsets.extend(accumulate(map(len, packets)))
        self._grow(count, offsets[-1] + count * VNET_HEADER_SIZE)
        writes = self._function(
            b"".join(packets),
            offsets.buffer_info()[0],
            count,
            self._out_address,
            self._out_capacity,
            self._write_offsets.buffer_info()[0],
            self._member_offsets.buffer_info()[0],
            self._members.buffer_info()[0],
            self._scratch_address,
        )
        if writes < 0:  # _grow made room for every case: a bug, not bad input
            raise RuntimeError(f"qt_gro_coalesce found no room for {count} packets")
        view, at, members, first = self._out_view, self._write_offsets, self._members, 0
        member_at = self._member_offsets
        result = []
        for write in range(writes):
            end = member_at[write + 1]
            result.append(Write(bytes(view[at[write] : at[write + 1]]), tuple(members[first:end])))
            first = end
        return result


def _address(buffer: bytearray) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
