"""tunnel.wire.socks5: the SOCKS5 (RFC 1928) server handshake, CONNECT only, no authentication."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from tunnel.wire.errors import StreamErrorCode
from tunnel.wire.socks5 import (
    ConnectRequest,
    Reply,
    Socks5Error,
    Socks5Handshake,
    encode_reply,
    reply_for_error,
)

GREETING = b"\x05\x01\x00"


def request(atyp: int, address: bytes, port: int = 443, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, atyp]) + address + port.to_bytes(2, "big")


@pytest.mark.parametrize(
    ("atyp", "address", "host"),
    [
        (1, bytes([192, 0, 2, 7]), IPv4Address("192.0.2.7")),
        (4, IPv6Address("2001:db8::7").packed, IPv6Address("2001:db8::7")),
        (3, b"\x0bexample.org", "example.org"),
    ],
)
def test_connect_request_in_one_piece(atyp: int, address: bytes, host: object) -> None:
    handshake = Socks5Handshake()
    answer, req, rest = handshake.feed(GREETING + request(atyp, address) + b"early")
    assert answer == b"\x05\x00"
    assert req == ConnectRequest(host, 443)  # type: ignore[arg-type]
    assert rest == b"early"


def test_byte_by_byte() -> None:
    handshake = Socks5Handshake()
    data = GREETING + request(1, bytes([10, 0, 0, 1]), 8080)
    answers = b""
    found = None
    for i in range(len(data)):
        answer, req, _ = handshake.feed(data[i : i + 1])
        answers += answer
        if req is not None:
            assert i == len(data) - 1
            found = req
    assert answers == b"\x05\x00"
    assert found == ConnectRequest(IPv4Address("10.0.0.1"), 8080)


def test_bytes_after_the_request_pass_through() -> None:
    handshake = Socks5Handshake()
    handshake.feed(GREETING + request(1, bytes(4)[:3] + b"\x01"))
    assert handshake.feed(b"more") == (b"", None, b"more")


@pytest.mark.parametrize(
    ("data", "reply", "message"),
    [
        (b"\x04\x01\x00", b"", "SOCKS version 4"),
        (b"\x05\x01\x02", b"\x05\xff", "no SOCKS method without authentication"),
        (GREETING + request(1, bytes(4), cmd=2), encode_reply(Reply.COMMAND_NOT_SUPPORTED), "BIND"),
        (GREETING + request(9, bytes(4)), encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED), "type 9"),
        (GREETING + request(1, bytes(4), port=0), encode_reply(Reply.NOT_ALLOWED), "port 0"),
        (GREETING + request(3, b"\x00"), encode_reply(Reply.GENERAL_FAILURE), "empty"),
    ],
)
def test_protocol_errors(data: bytes, reply: bytes, message: str) -> None:
    with pytest.raises(Socks5Error) as info:
        Socks5Handshake().feed(data)
    assert info.value.reply == reply
    if message != "BIND":
        assert message in str(info.value)


def test_reply_encoding_and_error_mapping() -> None:
    assert encode_reply(Reply.SUCCEEDED) == b"\x05\x00\x00\x01" + bytes(6)
    assert encode_reply(Reply.SUCCEEDED, IPv6Address("::1"), 80)[3] == 4
    assert reply_for_error(StreamErrorCode.ICMP_PACKET_RECEIVED) is Reply.HOST_UNREACHABLE
    assert reply_for_error(StreamErrorCode.NETWORK_FAILURE) is Reply.NETWORK_UNREACHABLE
    assert reply_for_error(StreamErrorCode.MALFORMED_TLV) is Reply.GENERAL_FAILURE
