"""tunnel.wire.tcp_tso: a super-packet from a TUN with segmentation offload, cut into exactly
the segments the kernel would have sent (the reference: tests.packets.cut_gso, the rules of
tcp_gso_segment), and a packet that left its checksum to us, finished."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.packets import ACK, FIN, PSH, cut_gso, random_flow, tcp, valid_tcp, with_checksum
from tunnel.wire import offload_library
from tunnel.wire.icmp import ones_complement_sum
from tunnel.wire.tcp_gro import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    PLAIN,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VNET_HEADER,
    Coalescer,
)
from tunnel.wire.tcp_tso import MAX_SEGMENTS, Segmenter, SegmentError

CWR = 0x80


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    loaded = Segmenter.load()
    # no skip: without the library the programs silently lose TSO, which these tests guard
    assert isinstance(loaded, Segmenter), loaded
    return loaded


def super_packet(segment: bytes, gso_size: int, *, ipv6: bool = False) -> bytes:
    """What a TUN with TSO hands over for `segment` (one large TCP segment with valid
    checksums): its virtio header, and the TCP checksum field holding only the pseudo-header
    sum, as the kernel leaves it (CHECKSUM_PARTIAL)."""
    ip = 40 if ipv6 else 20
    tcp_length = len(segment) - ip
    if ipv6:
        pseudo = segment[8:40] + tcp_length.to_bytes(4, "big") + b"\x00\x00\x00\x06"
    else:
        pseudo = segment[12:20] + b"\x00\x06" + tcp_length.to_bytes(2, "big")
    partial = ones_complement_sum(pseudo).to_bytes(2, "big")
    packet = segment[: ip + 16] + partial + segment[ip + 18 :]
    header_length = ip + (segment[ip + 12] >> 4) * 4
    vnet = VNET_HEADER.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        GSO_TCPV6 if ipv6 else GSO_TCPV4,
        header_length,
        gso_size,
        ip,
        16,
    )
    return vnet + packet


def test_the_library_is_where_make_builds_it() -> None:
    library = offload_library.LIBRARY
    assert library.name == "libqtoffload.so" and library.parent.name == "build"


@pytest.mark.parametrize("ipv6", [False, True])
@pytest.mark.parametrize("payload", [1, 1447, 1448, 1449, 10 * 1448, 45 * 1448 - 7])
def test_a_super_packet_becomes_the_kernels_segments(
    segmenter: Segmenter, ipv6: bool, payload: int
) -> None:
    addresses = {"src": "fd00::1", "dst": "fd00::2"} if ipv6 else {}
    data = bytes(random.Random(payload).randrange(256) for _ in range(payload))
    frame = super_packet(tcp(4_294_960_000, data, ident=65_530, **addresses), 1448, ipv6=ipv6)
    segments = segmenter.segment(frame)
    expected = cut_gso(frame)  # the reference cut
    assert segments == expected
    assert len(segments) == -(-payload // 1448)
    assert all(valid_tcp(segment) for segment in segments)
    header = 40 + 32 if ipv6 else 20 + 32
    assert b"".join(segment[header:] for segment in segments) == data


def test_the_first_segment_keeps_cwr_and_the_last_fin_and_psh(segmenter: Segmenter) -> None:
    frame = super_packet(tcp(1, bytes(3000), flags=ACK | PSH | FIN | CWR), 1000)
    first, middle, last = segmenter.segment(frame)
    assert (first[33], middle[33], last[33]) == (ACK | CWR, ACK, ACK | PSH | FIN)
    assert all(valid_tcp(segment) for segment in (first, middle, last))


def test_merged_writes_cut_back_are_the_packets_they_merged(segmenter: Segmenter) -> None:
    """The read side undoes the write side: every merged write of random interleaved
    batches (tcp_gro's C merge) cuts back into its packets, byte for byte."""
    coalescer = Coalescer.load()
    assert isinstance(coalescer, Coalescer), coalescer
    rng = random.Random(20261204)
    for _ in range(100):
        batch = [
            segment
            for number in range(rng.randint(1, 3))
            for segment in random_flow(
                rng, number, most=40, flags=[ACK] * 8 + [ACK | PSH], ipv6=number == 2
            )
        ]
        for write in coalescer.coalesce(batch):
            assert segmenter.segment(write.data) == [batch[i] for i in write.members]


def test_a_plain_packet_is_itself(segmenter: Segmenter) -> None:
    packet = tcp(1, b"hello")
    assert segmenter.segment(PLAIN + packet) == [packet]


@pytest.mark.parametrize("ipv6", [False, True])
def test_a_packet_that_left_its_checksum_to_us_gets_it(segmenter: Segmenter, ipv6: bool) -> None:
    """TUN_F_CSUM: a UDP datagram (not segmented) whose checksum field holds the pseudo-header
    sum; we finish it (virtio: the sum from csum_start to the end, at csum_offset)."""
    payload = b"x" * 501
    udp = struct.pack("!HHHH", 5000, 53, 8 + len(payload), 0) + payload
    if ipv6:
        header = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + bytes(15) + b"\x01"
        header += bytes(15) + b"\x02"
        pseudo = header[8:40] + len(udp).to_bytes(4, "big") + b"\x00\x00\x00\x11"
    else:
        header = bytes.fromhex("45000000000040004011") + bytes(2) + bytes([10, 0, 0, 1])
        header += bytes([10, 0, 0, 2])
        header = header[:2] + (20 + len(udp)).to_bytes(2, "big") + header[4:]
        pseudo = header[12:20] + b"\x00\x11" + len(udp).to_bytes(2, "big")
    partial = udp[:6] + ones_complement_sum(pseudo).to_bytes(2, "big") + udp[8:]
    ip = len(header)
    frame = VNET_HEADER.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_NONE, 0, 0, ip, 6)
    (packet,) = segmenter.segment(frame + header + partial)
    assert packet == header + with_checksum(udp, pseudo, 6)


def frame_of(vnet: tuple[int, int, int, int, int, int], packet: bytes) -> bytes:
    return VNET_HEADER.pack(*vnet) + packet


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (frame_of((1, GSO_TCPV4, 0, 1448, 20, 16), tcp(1, b"x")[:30]), "shorter than"),
        (
            frame_of((1, GSO_TCPV4, 0, 1448, 20, 16), tcp(1, b"x", src="fd00::1", dst="fd00::2")),
            "shorter",
        ),
        (frame_of((1, GSO_TCPV6, 0, 1448, 40, 16), tcp(1, b"x")), "shorter than"),
        (frame_of((1, GSO_TCPV4, 0, 1448, 20, 6), tcp(1, b"x")), "shorter than"),
        (frame_of((1, GSO_TCPV4, 0, 0, 20, 16), tcp(1, b"x")), "shorter than"),
        (frame_of((1, GSO_TCPV4, 0, 1448, 8, 16), tcp(1, b"x")), "shorter than"),
        (frame_of((1, 5, 0, 1448, 20, 6), tcp(1, b"x")), "did not enable"),  # UDP_L4
        (frame_of((1, GSO_TCPV4 | 0x80, 0, 1448, 20, 16), tcp(1, b"x")), "did not enable"),
        (frame_of((1, GSO_TCPV4, 0, 1, 20, 16), tcp(1, bytes(MAX_SEGMENTS + 1))), "more seg"),
        (frame_of((1, GSO_NONE, 0, 0, 90, 16), tcp(1, b"x")), "outside the packet"),
        (frame_of((1, GSO_NONE, 0, 0, 20, 40), tcp(1, b"x")), "outside the packet"),
        (b"", "shorter than"),  # not even a virtio header
        (bytes(5), "shorter than"),
    ],
)
def test_a_frame_that_cannot_be_cut_is_refused_with_a_reason(
    segmenter: Segmenter, frame: bytes, reason: str
) -> None:
    with pytest.raises(SegmentError, match=reason):
        segmenter.segment(frame)


@given(
    vnet=st.tuples(
        st.integers(0, 255),
        st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, 3, 5, 0x81]),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF) | st.integers(0, 80),
        st.integers(0, 0xFFFF) | st.integers(0, 24),
    ),
    packet=st.binary(max_size=3000),
)
def test_any_frame_is_cut_or_refused_never_read_out_of_bounds(
    vnet: tuple[int, int, int, int, int, int], packet: bytes
) -> None:
    segmenter = Segmenter.load()
    assert isinstance(segmenter, Segmenter)
    try:
        segments = segmenter.segment(VNET_HEADER.pack(*vnet) + packet)
    except SegmentError as exc:
        assert "cannot be cut into segments: " in str(exc)
        return
    assert sum(map(len, segments)) <= len(packet) + len(segments) * 120


def test_a_missing_library_is_a_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "libqtoffload.so"
    reason = offload_library.load(missing)
    assert isinstance(reason, str) and "run make" in reason
