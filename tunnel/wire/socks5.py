"""The server side of a SOCKS5 handshake (RFC 1928), CONNECT only, no authentication.

Stream mode's optional front on the client (-tcp draft: the client opens one stream per TCP
connection): an application that is told to use a SOCKS5 proxy names its destination in
the handshake, so no interception is needed, and the client can answer only once the
concentrator did (TCP Connect OK or Error TLV) - unlike transparent interception, where the
application's handshake has already completed (see tunnel/aio/stream_client.py).

Sans-I/O: `Socks5Handshake.feed(data)` consumes bytes from the application and says what to
send back and, once the request is complete, where the application wants to go.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from tunnel.wire.errors import StreamErrorCode

VERSION: Final = 5
METHOD_NO_AUTH: Final = 0x00
METHOD_NONE_ACCEPTABLE: Final = 0xFF
CMD_CONNECT: Final = 0x01
MAX_DOMAIN: Final = 255


class AddressType(IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(IntEnum):
    """RFC 1928 §6 REP field."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks5Error(Exception):
    """The application broke the protocol; `reply` is what to send before closing (b"" if
    nothing can be said, e.g. wrong version)."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class ConnectRequest:
    host: IPv4Address | IPv6Address | str  # str: a domain name, for the client to resolve
    port: int


def encode_reply(
    reply: Reply, address: IPv4Address | IPv6Address | None = None, port: int = 0
) -> bytes:
    """A reply to the request; BND.ADDR/BND.PORT default to 0.0.0.0:0 (the relay's own
    address means nothing to the application)."""
    address = address or IPv4Address(0)
    atyp = AddressType.IPV4 if isinstance(address, IPv4Address) else AddressType.IPV6
    return bytes([VERSION, reply, 0, atyp]) + address.packed + port.to_bytes(2, "big")


def reply_for_error(code: StreamErrorCode | int) -> Reply:
    """The SOCKS reply that best says what an Error TLV (-tcp §5.1.3) said."""
    if code == StreamErrorCode.ICMP_PACKET_RECEIVED:
        return Reply.HOST_UNREACHABLE
    if code == StreamErrorCode.NETWORK_FAILURE:
        return Reply.NETWORK_UNREACHABLE
    return Reply.GENERAL_FAILURE


class Socks5Handshake:
    """Feed the application's bytes; `feed` returns (bytes to send back, request or None,
    bytes that followed the request). Raises Socks5Error on a protocol error."""

    def __init__(self) -> None:
        self._buffer = b""
        self._greeted = False
        self.request: ConnectRequest | None = None

    def feed(self, data: bytes) -> tuple[bytes, ConnectRequest | None, bytes]:
        if self.request is not None:
            return b"", None, data
        self._buffer += data
        out = b""
        if not self._greeted:
            greeting = self._greeting()
            if greeting is None:
                return b"", None, b""
            out += greeting
        request = self._request()
        if request is None:
            return out, None, b""
        self.request, rest = request
        self._buffer = b""
        return out, self.request, rest

    def _greeting(self) -> bytes | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != VERSION:
            raise Socks5Error(f"SOCKS version {buf[0]} is not supported: use SOCKS5")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return None
        methods = buf[2 : 2 + buf[1]]
        self._buffer = buf[2 + buf[1] :]
        if METHOD_NO_AUTH not in methods:
            raise Socks5Error(
                "the application offers no SOCKS method without authentication: this front "
                "supports only 'no authentication'",
                bytes([VERSION, METHOD_NONE_ACCEPTABLE]),
            )
        self._greeted = True
        return bytes([VERSION, METHOD_NO_AUTH])

    def _request(self) -> tuple[ConnectRequest, bytes] | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        if buf[0] != VERSION:
            raise Socks5Error(
                f"SOCKS request version {buf[0]} is not 5", encode_reply(Reply.GENERAL_FAILURE)
            )
        if buf[1] != CMD_CONNECT:
            raise Socks5Error(
                f"SOCKS command {buf[1]} is not supported: only CONNECT (1) is",
                encode_reply(Reply.COMMAND_NOT_SUPPORTED),
            )
        atyp = buf[3]
        host: IPv4Address | IPv6Address | str
        if atyp == AddressType.IPV4:
            end = 4 + 4
            if len(buf) < end + 2:
                return None
            host = IPv4Address(buf[4:end])
        elif atyp == AddressType.IPV6:
            end = 4 + 16
            if len(buf) < end + 2:
                return None
            host = IPv6Address(buf[4:end])
        elif atyp == AddressType.DOMAIN:
            end = 5 + buf[4]
            if len(buf) < end + 2:
                return None
            try:
                host = buf[5:end].decode("ascii")
            except UnicodeDecodeError:
                host = ""
            if not host:
                raise Socks5Error(
                    "SOCKS domain name is empty or not ASCII", encode_reply(Reply.GENERAL_FAILURE)
                )
        else:
            raise Socks5Error(
                f"SOCKS address type {atyp} is unknown",
                encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        port = int.from_bytes(buf[end : end + 2], "big")
        if port == 0:
            raise Socks5Error(
                "SOCKS destination port 0 is invalid", encode_reply(Reply.NOT_ALLOWED)
            )
        return ConnectRequest(host, port), buf[end + 2 :]
