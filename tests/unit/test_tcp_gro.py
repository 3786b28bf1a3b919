"""tunnel.wire.tcp_gro: which segments of a TUN write batch merge (the C merge, held to the
Python statement of GRO's rule in tests/gro_reference.py for every batch here), and that a
merged write is exactly the segments it replaced once cut back the way the kernel cuts a GSO
packet."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import gro_reference
from tests.packets import ACK, FIN, PSH, SYN, cut_gso, random_flow, tcp, udp4
from tunnel.wire.tcp_gro import (
    GSO_TCPV4,
    GSO_TCPV6,
    MAX_MERGED,
    PLAIN,
    VNET_HEADER,
    VNET_HEADER_SIZE,
    Coalescer,
    Write,
)


@cache
def coalescer() -> Coalescer:
    loaded = Coalescer.load()
    # no skip: without the library the programs silently lose their offloads
    assert isinstance(loaded, Coalescer), loaded
    return loaded


def coalesce(packets: Sequence[bytes]) -> list[Write]:
    """The C merge's writes, checked against the reference's: the same bytes, members and
    order."""
    writes = coalescer().coalesce(packets)
    assert writes == gro_reference.coalesce(packets)
    return writes


def tcp4(seq: int, payload: bytes, **fields: object) -> bytes:
    return tcp(seq, payload, **fields)  # type: ignore[arg-type]


def tcp6(seq: int, payload: bytes, **fields: object) -> bytes:
    return tcp(seq, payload, src="fd00::1", dst="fd00::2", **fields)  # type: ignore[arg-type]


def cut(write: Write) -> list[bytes]:
    return cut_gso(write.data)


def flow(
    count: int, *, size: int = 1200, seq: int = 1, ident: int = 7, **kw: object
) -> list[bytes]:
    return [
        tcp4((seq + i * size) & 0xFFFFFFFF, bytes([i % 251]) * size, ident=ident + i, **kw)
        for i in range(count)
    ]


def delivered(packets: list[bytes]) -> list[Write]:
    """`coalesce(packets)`, checked: every packet is in exactly one write, and the writes cut
    back give each flow's packets in their order."""
    writes = coalesce(packets)
    members = sorted(index for write in writes for index in write.members)
    assert members == list(range(len(packets)))
    for write in writes:
        assert cut(write) == [packets[index] for index in write.members]
        assert list(write.members) == sorted(write.members)
    return writes


def test_a_flows_consecutive_segments_become_one_write() -> None:
    packets = flow(20)
    (write,) = delivered(packets)
    _flags, gso_type, hdr_len, gso_size, _csum_start, _csum_offset = VNET_HEADER.unpack_from(
        write.data
    )
    assert (gso_type, hdr_len, gso_size) == (GSO_TCPV4, 20 + 32, 1200)
    assert len(write.data) == VNET_HEADER_SIZE + 52 + 20 * 1200
    assert write.members == tuple(range(20))


def test_ipv6_segments_merge_too() -> None:
    packets = [tcp6(1 + i * 1000, bytes([i]) * 1000, ident=i) for i in range(5)]
    (write,) = delivered(packets)
    assert VNET_HEADER.unpack_from(write.data)[1] == GSO_TCPV6


def test_a_short_or_pushed_segment_is_the_last_of_its_merge() -> None:
    packets = [*flow(3), tcp4(3601, b"x" * 100, ident=10), tcp4(3701, b"y" * 1200, ident=11)]
    writes = delivered(packets)
    assert [w.members for w in writes] == [(0, 1, 2, 3), (4,)]
    pushed = [
        *flow(2),
        tcp4(2401, b"z" * 1200, ident=9, flags=ACK | PSH),
        *flow(2, seq=3601, ident=10),
    ]
    writes = delivered(pushed)
    assert [w.members for w in writes] == [(0, 1, 2), (3, 4)]
    assert cut(writes[0])[-1][33] == ACK | PSH


@pytest.mark.parametrize(
    "breaker",
    [
        {"ack": 2000},
        {"window": 1024},
        {"options": b"\x01\x01\x08\x0a" + bytes(4) + b"\x00\x00\x00\x01"},
        {"ttl": 63},
        {"tos": 0x10},
        {"ident": 99},
        {"seq": 5000},
    ],
    ids=["ack", "window", "options", "ttl", "tos", "ipv4-id", "sequence-gap"],
)
def test_a_segment_that_differs_starts_a_new_write(breaker: dict[str, object]) -> None:
    fields: dict[str, object] = {"seq": 1201, "ident": 8} | breaker
    second = tcp4(fields.pop("seq"), b"b" * 1200, **fields)  # type: ignore[arg-type]
    packets = [tcp4(1, b"a" * 1200, ident=7), second]
    assert [w.members for w in delivered(packets)] == [(0,), (1,)]


@pytest.mark.parametrize("flags", [SYN | ACK, FIN | ACK, ACK | 0x04, ACK | 0x40, ACK | 0x80, 0])
def test_control_segments_go_as_they_came(flags: int) -> None:
    packets = [
        *flow(2),
        tcp4(2401, b"c" * 1200, ident=9, flags=flags),
        *flow(2, seq=3601, ident=10),
    ]
    writes = delivered(packets)
    assert [w.members for w in writes] == [(0, 1), (2,), (3, 4)]
    assert writes[1].data == PLAIN + packets[2]


def test_a_pure_ack_or_udp_of_the_flow_is_not_overtaken() -> None:
    ack_only = tcp4(2401, b"", ident=9)
    packets = [*flow(2), ack_only, *flow(2, seq=2401, ident=10)]
    assert [w.members for w in delivered(packets)] == [(0, 1), (2,), (3, 4)]
    # a UDP packet of other ports leaves the TCP flow's merge open
    packets = [*flow(2), udp4(b"u" * 50, sport=9, dport=9), *flow(2, seq=2401, ident=9)]
    assert [w.members for w in delivered(packets)] == [(0, 1, 3, 4), (2,)]


def test_interleaved_flows_merge_each_and_keep_their_own_order() -> None:
    a = flow(6, sport=1111)
    b = flow(6, sport=2222, seq=90000, ident=500)
    packets = [p for pair in zip(a, b, strict=True) for p in pair]
    writes = delivered(packets)
    assert [w.members for w in writes] == [(0, 2, 4, 6, 8, 10), (1, 3, 5, 7, 9, 11)]


def test_a_merge_stops_below_the_largest_ip_packet() -> None:
    packets = flow(60, size=1400)
    writes = delivered(packets)
    assert len(writes) == 2
    assert all(len(w.data) - VNET_HEADER_SIZE <= MAX_MERGED for w in writes)


def test_the_sequence_number_wraps() -> None:
    packets = flow(4, seq=0xFFFFFFFF - 1500)
    assert [w.members for w in delivered(packets)] == [(0, 1, 2, 3)]


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x45", b"\x60" + bytes(10), b"\x47" + bytes(60), b"\x20" * 40, udp4(b"")],
    ids=["empty", "one-byte", "short-ipv6", "ipv4-options", "not-ip", "udp"],
)
def test_odd_packets_pass_untouched(packet: bytes) -> None:
    writes = coalesce([*flow(2), packet, *flow(2, seq=2401, ident=9)])
    assert Write(PLAIN + packet, (2,)) in writes
    assert sorted(i for w in writes for i in w.members) == [0, 1, 2, 3, 4]


def test_a_truncated_or_fragmented_segment_is_not_merged() -> None:
    truncated = flow(3)
    truncated[1] = truncated[1][:-100]  # Total Length now claims more than there is
    assert all(len(w.members) == 1 or 1 not in w.members for w in coalesce(truncated))
    fragment = bytearray(tcp4(1201, b"f" * 1200, ident=8))
    fragment[6] |= 0x20  # More Fragments
    writes = coalesce([tcp4(1, b"a" * 1200, ident=7), bytes(fragment)])
    assert [w.members for w in writes] == [(0,), (1,)]


def test_random_batches_of_several_flows_are_delivered_in_each_flows_order() -> None:
    rng = random.Random(20261204)
    for _ in range(200):
        flows = [
            random_flow(rng, number, most=30, flags=[ACK] * 8 + [ACK | PSH, ACK | FIN])
            for number in range(rng.randint(1, 4))
        ]
        batch: list[bytes] = []
        cursors = [0] * len(flows)
        while any(c < len(f) for c, f in zip(cursors, flows, strict=True)):
            pick = rng.choice([i for i, f in enumerate(flows) if cursors[i] < len(f)])
            batch.append(flows[pick][cursors[pick]])
            cursors[pick] += 1
        writes = delivered(batch)
        # each flow, read back in write order, is its segments in their order
        for number, segments in enumerate(flows):
            port = (1000 + number).to_bytes(2, "big")
            seen = [p for w in writes for p in cut(w) if p[20:22] == port]
            assert seen == segments


def test_batches_larger_than_the_buffers_grow_them() -> None:
    # two interleaved flows of 150 segments each: more packets and bytes than the first buffers
    first, second = flow(150), flow(150, seq=900001, sport=40001)
    batch = [packet for pair in zip(first, second, strict=True) for packet in pair]
    writes = delivered(batch)
    assert len(writes) > 2 and all(len(w.data) - VNET_HEADER_SIZE <= MAX_MERGED for w in writes)
    assert coalesce([]) == []


def mutated(packet: bytes, data: st.DataObject) -> bytes:
    """A segment with a few bytes changed, cut short or lengthened: what a peer may send."""
    changed = bytearray(packet)
    for _ in range(data.draw(st.integers(0, 3)) if changed else 0):
        at = data.draw(st.integers(0, len(changed) - 1))
        changed[at] = data.draw(st.integers(0, 255))
    end = data.draw(st.one_of(st.just(len(changed)), st.integers(0, len(changed) + 8)))
    return bytes(changed[:end]) + bytes(max(0, end - len(changed)))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_batch_merges_as_the_reference_says(data: st.DataObject) -> None:
    """Arbitrary batches: segments of two flows (IPv4 and IPv6) with bytes changed, cut or
    grown, and random bytes; the C merge writes what the reference writes, never reading
    beyond a packet (the reference's slices would differ)."""
    pool = [*flow(6, size=500), *[tcp6(1 + i * 500, b"6" * 500) for i in range(6)]]
    choices = st.one_of(
        st.sampled_from(pool),
        st.binary(max_size=80),
    )
    batch = [
        mutated(packet, data) if data.draw(st.booleans()) else packet
        for packet in data.draw(st.lists(choices, max_size=24))
    ]
    coalesce(batch)
