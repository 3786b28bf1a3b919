"""DATAGRAM framing: tunnel mode (tunnel-00 §4) and tunnel session mode (tunnel-session-00 §4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import wire_strategies as ws
from tunnel.wire.datagram import (
    SESSION_HEADER_SIZE,
    ProtocolType,
    SessionDatagram,
    decode_session_datagram,
    decode_tunnel_datagram,
    encode_session_datagram,
    encode_tunnel_datagram,
    protocol_type_of,
)
from tunnel.wire.errors import DatagramError, StreamErrorCode, TunnelError

IPV4_PACKET = bytes.fromhex("4500001c000000004011") + bytes(18)  # an IPv4 header's first bytes
IPV6_PACKET = bytes.fromhex("6000000000081140") + bytes(40)


def test_session_header_vector_ipv6_tag_7() -> None:
    # tunnel-session-00 §4 figure: Protocol Type 0x86DD (IPv6), Packet Tag 7, then the packet.
    datagram = SessionDatagram(ProtocolType.IPV6, 7, IPV6_PACKET)
    assert datagram.encode() == bytes.fromhex("86dd 0007") + IPV6_PACKET
    assert SessionDatagram.decode(datagram.encode()) == datagram


def test_session_header_vector_ipv4_and_ethernet() -> None:
    assert SessionDatagram(ProtocolType.IPV4, 0xFFFF, IPV4_PACKET).encode()[:4] == bytes.fromhex(
        "0800 ffff"
    )
    frame = bytes(14)
    assert SessionDatagram(ProtocolType.ETHERNET, 0, frame).encode() == bytes.fromhex(
        "6558 0000"
    ) + bytes(14)


def test_session_header_size_constant() -> None:
    assert len(SessionDatagram(0x88B5, 1, b"").encode()) == SESSION_HEADER_SIZE


@given(ws.session_datagrams())
def test_session_datagram_round_trip(datagram: SessionDatagram) -> None:
    wire = datagram.encode()
    assert len(wire) == SESSION_HEADER_SIZE + len(datagram.packet)
    assert SessionDatagram.decode(wire) == datagram


@given(ws.session_datagrams())
def test_the_object_free_framing_is_the_datagrams(datagram: SessionDatagram) -> None:
    """The per-packet path's functions frame exactly as the typed value does."""
    wire = encode_session_datagram(datagram.protocol_type, datagram.packet_tag, datagram.packet)
    assert wire == datagram.encode()
    assert decode_session_datagram(wire) == (
        datagram.protocol_type,
        datagram.packet_tag,
        datagram.packet,
    )


@given(st.binary(max_size=64))
def test_the_object_free_decoder_refuses_what_the_typed_value_refuses(wire: bytes) -> None:
    try:
        protocol, tag, packet = decode_session_datagram(wire)
    except DatagramError:
        with pytest.raises((DatagramError, ValueError)):
            SessionDatagram(
                int.from_bytes(wire[0:2]), int.from_bytes(wire[2:4]), wire[SESSION_HEADER_SIZE:]
            ) if len(wire) >= SESSION_HEADER_SIZE else SessionDatagram.decode(wire)
        return
    assert SessionDatagram(protocol, tag, packet) == SessionDatagram(
        int.from_bytes(wire[0:2]), int.from_bytes(wire[2:4]), wire[SESSION_HEADER_SIZE:]
    )


def test_a_field_beyond_16_bits_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        encode_session_datagram(ProtocolType.IPV4, 0x10000, IPV4_PACKET)


def test_session_datagram_known_type_decodes_to_the_enum_unknown_stays_int() -> None:
    assert SessionDatagram.decode(bytes.fromhex("86dd0001") + IPV6_PACKET).protocol_type is (
        ProtocolType.IPV6
    )
    unknown = SessionDatagram.decode(bytes.fromhex("88b50001") + b"opaque")
    assert unknown.protocol_type == 0x88B5 and type(unknown.protocol_type) is int
    assert unknown.packet == b"opaque"


@pytest.mark.parametrize("size", range(SESSION_HEADER_SIZE))
def test_session_datagram_shorter_than_header(size: int) -> None:
    with pytest.raises(DatagramError, match="shorter than its 4-byte header") as info:
        SessionDatagram.decode(bytes.fromhex("86dd0007")[:size])
    assert info.value.code is StreamErrorCode.MALFORMED_TLV
    assert isinstance(info.value, TunnelError)


@pytest.mark.parametrize(
    "wire",
    [
        bytes.fromhex("0800 0001") + IPV6_PACKET,  # says IPv4, carries IPv6
        bytes.fromhex("86dd 0001") + IPV4_PACKET,  # says IPv6, carries IPv4
        bytes.fromhex("0800 0001"),  # says IPv4, carries nothing
        bytes.fromhex("86dd 0001 50"),  # version 5
    ],
)
def test_session_datagram_protocol_type_must_match_ip_version(wire: bytes) -> None:
    with pytest.raises(DatagramError, match="invalid session datagram"):
        SessionDatagram.decode(wire)


def test_session_datagram_constructor_range_checks() -> None:
    with pytest.raises(ValueError, match="packet tag"):
        SessionDatagram(ProtocolType.ETHERNET, 0x10000, b"")
    with pytest.raises(ValueError, match="protocol type"):
        SessionDatagram(-1, 0, b"")


def test_protocol_type_of_reads_the_version_nibble() -> None:
    assert protocol_type_of(IPV4_PACKET) is ProtocolType.IPV4
    assert protocol_type_of(IPV6_PACKET) is ProtocolType.IPV6
    with pytest.raises(DatagramError, match="neither 4 nor 6"):
        protocol_type_of(b"\x50")
    with pytest.raises(DatagramError, match="empty"):
        protocol_type_of(b"")


@given(ws.ip_packets)
def test_tunnel_datagram_round_trip_is_the_packet_itself(packet: bytes) -> None:
    # tunnel-00 §4: the client "simply encapsulates the entire packet" in the DATAGRAM frame.
    assert encode_tunnel_datagram(packet) == packet
    assert decode_tunnel_datagram(encode_tunnel_datagram(packet)) == packet


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x51abc", b"\xff"])
def test_tunnel_datagram_rejects_non_ip(data: bytes) -> None:
    with pytest.raises(DatagramError):
        decode_tunnel_datagram(data)
    with pytest.raises(DatagramError):
        encode_tunnel_datagram(data)
