"""The generic TLV framing (draft-piraux-intarea-quic-tunnel-00 §7 Messages format)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.wire_strategies import chunkings
from tunnel.wire.tlv import TLVReader, encode_tlv

tlv_pairs = st.tuples(st.integers(0, 255), st.binary(max_size=255))


def test_encode_tlv_is_type_length_value() -> None:
    assert encode_tlv(0x02, b"\xaa\xbb\xcc") == bytes.fromhex("02 03 aabbcc")


def test_encode_tlv_zero_length_has_no_value() -> None:
    # §7: "A value of zero indicates that no Value field is present."
    assert encode_tlv(0xFF, b"") == b"\xff\x00"


def test_encode_tlv_accepts_the_largest_value() -> None:
    assert encode_tlv(1, bytes(255))[:2] == b"\x01\xff"


@pytest.mark.parametrize(("tlv_type", "value"), [(256, b""), (-1, b""), (0, bytes(256))])
def test_encode_tlv_refuses_what_the_one_byte_fields_cannot_hold(
    tlv_type: int, value: bytes
) -> None:
    with pytest.raises(ValueError, match="byte"):
        encode_tlv(tlv_type, value)


def test_reader_returns_a_tlv_only_when_its_last_byte_arrived() -> None:
    reader = TLVReader()
    assert reader.feed(b"\x02") == []
    assert reader.pending == 1 and not reader.at_boundary
    assert reader.feed(b"\x03\xaa\xbb") == []
    assert reader.pending == 4
    assert reader.feed(b"\xcc\x01") == [(0x02, b"\xaa\xbb\xcc")]
    assert reader.pending == 1
    assert reader.feed(b"\x00") == [(0x01, b"")]
    assert reader.at_boundary


def test_reader_splits_every_byte_boundary_of_a_multi_tlv_sequence() -> None:
    wire = encode_tlv(0, bytes(range(18))) + encode_tlv(0x77, b"x") + encode_tlv(0xFF, b"")
    expected = [(0, bytes(range(18))), (0x77, b"x"), (0xFF, b"")]
    for cut in range(len(wire) + 1):
        reader = TLVReader()
        assert reader.feed(wire[:cut]) + reader.feed(wire[cut:]) == expected, cut
        assert reader.at_boundary


def test_reader_take_remaining_returns_unframed_tail() -> None:
    reader = TLVReader()
    reader.append(encode_tlv(0xFF, b"") + b"payload")
    assert reader.next_tlv() == (0xFF, b"")
    assert reader.take_remaining() == b"payload"
    assert reader.at_boundary


def test_reader_buffer_keeps_only_the_unread_tail() -> None:
    reader = TLVReader()
    for _ in range(1000):
        reader.feed(encode_tlv(1, bytes(200)) + b"\x01")
        reader.feed(b"\xc8")
        reader.feed(bytes(200))
    assert reader.at_boundary
    assert len(reader._buffer) <= 2 * 202  # consumed TLVs are dropped, not kept forever


@given(tlvs=st.lists(tlv_pairs, max_size=6), data=st.data())
def test_reader_round_trips_any_tlv_sequence_in_any_chunking(
    tlvs: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    wire = b"".join(encode_tlv(t, v) for t, v in tlvs)
    reader = TLVReader()
    decoded = [tlv for chunk in data.draw(chunkings(wire)) for tlv in reader.feed(chunk)]
    assert decoded == tlvs
    assert reader.at_boundary
