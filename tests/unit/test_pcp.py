"""tunnel/wire/pcp.py: the PCP MAP messages byte for byte (RFC 6887 §7.1, §7.2, §11.1), the
decoders' refusals with their result codes (§7.4, §8.3), the UDP/IP framing, and a fuzz of
every decoder (only PcpError may escape; parse_udp never raises)."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel.wire.icmp import internet_checksum
from tunnel.wire.pcp import (
    MapRequest,
    MapResponse,
    PcpError,
    PcpOption,
    ResultCode,
    UdpDatagram,
    decode_request,
    error_response,
    is_droppable,
    parse_udp,
    udp_packet,
)

NONCE = bytes(range(12))
CLIENT = IPv4Address("10.8.0.2")
MAPPED_CLIENT = "00000000000000000000ffff0a080002"
REQUEST_HEX = (
    "02" "01" "0000" "00000e10" + MAPPED_CLIENT  # version 2, MAP, reserved, 3600 s, client
    + "000102030405060708090a0b" "06" "000000"  # nonce, TCP, reserved
    + "1f90" "1f90" + "00" * 16  # internal 8080, suggested 8080, suggested address ::
)  # fmt: skip
RESPONSE_HEX = (
    "02" "81" "00" "00" "00000e10" "0000002a" + "00" * 12  # R|MAP, reserved, SUCCESS, 3600, 42
    + "000102030405060708090a0b" "06" "000000"
    + "1f90" "2328" "00000000000000000000ffffc0000201"  # 8080 -> 192.0.2.1:9000
)  # fmt: skip


def test_map_request_is_byte_exact_and_decodes_back() -> None:
    request = MapRequest(CLIENT, NONCE, 6, 8080, 3600, suggested_port=8080)
    assert request.encode().hex() == REQUEST_HEX
    decoded = decode_request(bytes.fromhex(REQUEST_HEX))
    assert decoded.opcode == 1 and decoded.lifetime == 3600 and decoded.client_address == CLIENT
    assert decoded.map == request


def test_map_response_is_byte_exact_and_decodes_back() -> None:
    response = MapResponse(
        ResultCode.SUCCESS, 3600, 42, NONCE, 6, 8080, 9000, IPv4Address("192.0.2.1")
    )
    assert response.encode().hex() == RESPONSE_HEX
    assert MapResponse.decode(bytes.fromhex(RESPONSE_HEX)) == response


def test_options_are_padded_and_kept() -> None:
    option = PcpOption(130, b"\x01\x02\x03")  # optional (>= 128), 3 bytes + 1 of padding
    request = MapRequest(IPv6Address("fd00:8::2"), NONCE, 6, 22, 60, options=(option,))
    wire = request.encode()
    assert wire[-8:].hex() == "8200000301020300" and len(wire) == 68
    decoded = decode_request(wire).map
    assert decoded is not None and decoded.options == (option,) and not option.mandatory


@pytest.mark.parametrize(
    ("wire", "result"),
    [
        (b"\x01\x01" + bytes(58), ResultCode.UNSUPP_VERSION),  # §9: NAT-PMP's version 0/1
        (bytes.fromhex(REQUEST_HEX)[:20], ResultCode.MALFORMED_REQUEST),  # shorter than 24
        (bytes.fromhex(REQUEST_HEX) + b"\x00", ResultCode.MALFORMED_REQUEST),  # not 4-aligned
        (bytes.fromhex(REQUEST_HEX)[:40], ResultCode.MALFORMED_REQUEST),  # MAP body cut short
        (bytes.fromhex(REQUEST_HEX) + bytes(1100), ResultCode.MALFORMED_REQUEST),  # > 1100
        (bytes.fromhex(REQUEST_HEX) + bytes.fromhex("80000008"), ResultCode.MALFORMED_OPTION),
    ],
    ids=["version", "short", "unaligned", "map-body", "too-long", "option-overrun"],
)
def test_bad_requests_name_their_result_code(wire: bytes, result: ResultCode) -> None:
    with pytest.raises(PcpError) as caught:
        decode_request(wire)
    assert caught.value.result is result and caught.value.message


def test_responses_and_runts_are_dropped_and_errors_copy_the_request_body() -> None:
    assert is_droppable(b"\x02") and is_droppable(bytes.fromhex(RESPONSE_HEX))
    assert not is_droppable(bytes.fromhex(REQUEST_HEX))
    answer = error_response(bytes.fromhex(REQUEST_HEX), ResultCode.NOT_AUTHORIZED, 1800, 7)
    assert answer[:4] == bytes.fromhex("02810002") and len(answer) == 60
    assert answer[24:] == bytes.fromhex(REQUEST_HEX)[24:]  # the nonce comes back (§8.3)
    decoded = MapResponse.decode(answer)
    assert decoded.result is ResultCode.NOT_AUTHORIZED and decoded.nonce == NONCE


@pytest.mark.parametrize(
    ("src", "dst"),
    [(IPv4Address("10.8.0.2"), IPv4Address("10.8.0.1")),
     (IPv6Address("fd00:8::2"), IPv6Address("fd00:8::1"))],
    ids=["ipv4", "ipv6"],
)  # fmt: skip
def test_udp_framing_round_trips_with_valid_checksums(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address
) -> None:
    datagram = UdpDatagram(src, dst, 5350, 5351, b"pcp!")
    packet = udp_packet(datagram)
    assert parse_udp(packet) == datagram and parse_udp(packet, 5351) == datagram
    assert parse_udp(packet, 53) is None
    header = 20 if src.version == 4 else 40
    if src.version == 4:
        assert internet_checksum(packet[:20]) == 0
        pseudo = src.packed + dst.packed + bytes([0, 17]) + (12).to_bytes(2, "big")
    else:
        pseudo = src.packed + dst.packed + (12).to_bytes(4, "big") + bytes([0, 0, 0, 17])
    assert internet_checksum(pseudo + packet[header:]) == 0  # RFC 768: sums to zero


def test_parse_udp_ignores_what_is_not_a_whole_udp_datagram() -> None:
    packet = udp_packet(UdpDatagram(CLIENT, IPv4Address("10.8.0.1"), 5350, 5351, b"x" * 8))
    assert parse_udp(packet[:-1]) is None  # shorter than its Total Length
    fragment = bytearray(packet)
    fragment[6] |= 0x20  # More Fragments
    assert parse_udp(bytes(fragment)) is None
    tcp = bytearray(packet)
    tcp[9] = 6
    assert parse_udp(bytes(tcp)) is None


EXAMPLES = int(os.environ.get("QTL_FUZZ_EXAMPLES", 20 * settings().max_examples))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@fuzz
@given(st.one_of(st.binary(max_size=200), mutated(bytes.fromhex(REQUEST_HEX))))
def test_fuzz_decode_request(data: bytes) -> None:
    try:
        request = decode_request(data)
    except PcpError as exc:
        assert isinstance(exc.result, ResultCode) and exc.message
        error_response(data, exc.result, 30, 0)  # an answer can always be made
        return
    if request.map is not None:
        assert decode_request(request.map.encode()).map == request.map


@fuzz
@given(st.one_of(st.binary(max_size=200), mutated(bytes.fromhex(RESPONSE_HEX))))
def test_fuzz_decode_response(data: bytes) -> None:
    try:
        response = MapResponse.decode(data)
    except PcpError as exc:
        assert isinstance(exc.result, ResultCode)
        return
    assert MapResponse.decode(response.encode()) == response


@fuzz
@given(
    st.one_of(
        st.binary(max_size=120),
        mutated(udp_packet(UdpDatagram(CLIENT, IPv4Address("10.8.0.1"), 5350, 5351, b"abcd"))),
    )
)
def test_fuzz_parse_udp_never_raises(data: bytes) -> None:
    datagram = parse_udp(data)
    assert datagram is None or isinstance(datagram, UdpDatagram)
