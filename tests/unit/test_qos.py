"""The QoS policy (tunnel/policy/qos.py): labels of opaque QoS Flow Indications, DSCP names, and
marking IPv4/IPv6 packets with the header checksum kept valid."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.hostile import checksum16, icmp_echo
from tunnel.policy.qos import DSCP_NAMES, QosPolicy, dscp_value, qos_label, qos_value, set_dscp


@pytest.mark.parametrize(
    ("value", "label"),
    [(b"video", "video"), (b"\x2a\x01", "0x2a01"), (b"0x12", "0x30783132"), (b"a b", "a b")],
)
def test_labels_are_text_when_printable_and_hex_otherwise(value: bytes, label: str) -> None:
    """Text that would read as hex ("0x12") is written in hex, so labels stay unambiguous."""
    assert qos_label(value) == label
    assert qos_value(label) == value


@given(st.binary(max_size=255))
def test_a_label_names_its_bytes(value: bytes) -> None:
    assert qos_value(qos_label(value)) == value


@pytest.mark.parametrize("label", ["vidéo", "x" * 256, "0x" + "00" * 256])
def test_a_bad_label_says_what_is_wrong(label: str) -> None:
    with pytest.raises(ValueError, match="QoS value"):
        qos_value(label)


def test_dscp_names_and_numbers() -> None:
    assert (dscp_value("EF"), dscp_value("af41"), dscp_value("CS1"), dscp_value(63)) == (
        46,
        34,
        8,
        63,
    )
    assert DSCP_NAMES["AF11"] == 10 and DSCP_NAMES["LE"] == 1
    for bad in (64, -1, "AF5", True, 1.5):
        with pytest.raises(ValueError, match="DSCP"):
            dscp_value(bad)  # type: ignore[arg-type]


def test_the_policy_maps_values_and_refuses_one_value_twice() -> None:
    policy = QosPolicy([(b"video", "AF41"), (b"voice", 46)])  # type: ignore[list-item]
    assert policy.dscp_for(b"video") == 34 and policy.dscp_for(b"voice") == 46
    assert policy.dscp_for(b"") is None and policy.dscp_for(b"bulk") is None
    assert not QosPolicy()
    with pytest.raises(ValueError, match="twice"):
        QosPolicy([(b"v", 1), (b"v", 2)])


@pytest.mark.parametrize("ecn", [0, 1, 2, 3])
def test_ipv4_marking_keeps_ecn_and_a_valid_checksum(ecn: int) -> None:
    packet = bytearray(icmp_echo("10.8.0.2", "192.0.2.7", 1))
    packet[1] = (10 << 2) | ecn  # AF11 + ECN
    packet[10:12] = b"\0\0"
    packet[10:12] = checksum16(bytes(packet[:20])).to_bytes(2, "big")
    marked = set_dscp(bytes(packet), 46)
    assert marked[1] == (46 << 2) | ecn
    assert checksum16(marked[:20]) == 0  # a header with a valid checksum sums to 0
    assert marked[:1] + marked[2:10] + marked[12:] == packet[:1] + packet[2:10] + packet[12:]


@given(st.integers(0, 255), st.integers(0, 63))
def test_ipv4_checksum_stays_valid_for_any_tos(tos: int, dscp: int) -> None:
    packet = bytearray(icmp_echo("10.8.0.2", "192.0.2.7", 1))
    packet[1], packet[10:12] = tos, b"\0\0"
    packet[10:12] = checksum16(bytes(packet[:20])).to_bytes(2, "big")
    assert checksum16(set_dscp(bytes(packet), dscp)[:20]) == 0


def test_ipv6_marking_rewrites_the_traffic_class_only() -> None:
    packet = bytearray(icmp_echo("fd00:8::2", "2001:db8::7", 1))
    packet[0:4] = bytes((0x60 | 0x0, 0x3A, 0xBC, 0xDE))  # traffic class 0x03 (ECN CE), flow label
    marked = set_dscp(bytes(packet), 46)
    traffic_class = ((marked[0] & 0x0F) << 4) | (marked[1] >> 4)
    assert traffic_class == (46 << 2) | 0x03
    assert marked[0] >> 4 == 6 and (marked[1] & 0x0F, marked[2:4]) == (0x0A, b"\xbc\xde")
    assert marked[4:] == packet[4:]


@pytest.mark.parametrize("packet", [b"", b"\x45" * 10, b"\x60" * 20, b"\x50" * 40])
def test_what_is_not_an_ip_header_is_left_alone(packet: bytes) -> None:
    assert set_dscp(packet, 46) == packet
