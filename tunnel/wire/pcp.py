"""The Port Control Protocol (RFC 6887) as far as the reversed flow of stream mode needs it: the
MAP opcode for TCP, by which a client asks the concentrator to accept inbound TCP connections
on its behalf (tunnel draft §5: "The client may use PCP [RFC 6887] to request the concentrator
to accept inbound connections on their behalf"), and the UDP/IP framing PCP rides in through
the tunnel (the client sends to the concentrator's port 5351 as a PCP client would to its
default router, RFC 6887 §8.1).

As in tunnel/wire/messages.py, each message is a frozen value with `encode()` and a total
`decode()`: constructors raise ValueError (a bad field on the sending side is a bug), decoders
raise only `PcpError`, whose `result` is the RFC 6887 §7.4 result code a server answers with.
Options (§7.3) are decoded and kept; which of them a server honours is its business.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Final, Self

from tunnel.wire.icmp import internet_checksum

PCP_VERSION: Final = 2
"""RFC 6887 §7.1: the version of this specification."""
PCP_SERVER_PORT: Final = 5351
"""RFC 6887 §19.1: the server listens on UDP 5351."""
PCP_CLIENT_PORT: Final = 5350
"""RFC 6887 §19.1: 5350 is the client's port for ANNOUNCE; we send our requests from it too,
so the client can tell PCP answers from the rest of the tunnel's traffic by port alone."""
MAX_MESSAGE: Final = 1100
"""RFC 6887 §7: "All PCP messages ... MUST NOT exceed 1100 octets"."""
HEADER_SIZE: Final = 24
"""RFC 6887 §7.1 / §7.2: the common request and response headers are 24 octets."""
MAP_BODY_SIZE: Final = 36
"""RFC 6887 §11.1: the MAP opcode-specific data is 36 octets (request and response)."""
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
_V4_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"
_RESPONSE_BIT: Final = 0x80
UNSPECIFIED: Final = IPv6Address("::")


class Opcode(IntEnum):
    """RFC 6887 §19.2."""

    ANNOUNCE = 0
    MAP = 1
    PEER = 2


class ResultCode(IntEnum):
    """RFC 6887 §7.4."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


class PcpError(Exception):
    """The one error of the decoders: `result` is the code to answer with (§7.4)."""

    def __init__(self, result: ResultCode, message: str) -> None:
        super().__init__(message)
        self.result = result
        self.message = message


def encode_address(address: IPv4Address | IPv6Address) -> bytes:
    """RFC 6887 §5: addresses are 128 bits, IPv4 as an IPv4-mapped IPv6 address."""
    if isinstance(address, IPv4Address):
        return _V4_MAPPED_PREFIX + address.packed
    return address.packed


def decode_address(raw: bytes) -> IPv4Address | IPv6Address:
    if len(raw) != 16:
        raise PcpError(ResultCode.MALFORMED_REQUEST, f"an address is 16 bytes, got {len(raw)}")
    if raw[:12] == _V4_MAPPED_PREFIX:
        return IPv4Address(raw[12:])
    return IPv6Address(raw)


@dataclass(frozen=True)
class PcpOption:
    """RFC 6887 §7.3: code, then the data (padded to 4 octets on the wire)."""

    code: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 255 or len(self.data) > 0xFFFF:
            raise ValueError(f"option code {self.code} or length {len(self.data)} out of range")

    @property
    def mandatory(self) -> bool:
        """§7.3: codes 0-127 must be understood by the server, 128-255 may be skipped."""
        return self.code < 128

    def encode(self) -> bytes:
        padding = b"\x00" * (-len(self.data) % 4)
        return struct.pack("!BxH", self.code, len(self.data)) + self.data + padding


def _decode_options(raw: bytes, result: ResultCode) -> tuple[PcpOption, ...]:
    options = []
    offset = 0
    while offset < len(raw):
        if len(raw) - offset < 4:
            raise PcpError(result, "an option header is cut short")
        code, length = struct.unpack_from("!BxH", raw, offset)
        end = offset + 4 + length
        if end > len(raw):
            # §7.3: an option longer than the rest of the message is MALFORMED_OPTION
            raise PcpError(ResultCode.MALFORMED_OPTION, f"option {code} overruns the message")
        options.append(PcpOption(code, raw[offset + 4 : end]))
        offset = end + (-length % 4)
    return tuple(options)


@dataclass(frozen=True)
class MapRequest:
    """A MAP request (§7.1 header + §11.1 body): map `external_port` (0: any) to the client's
    `internal_port` for `protocol` for `lifetime` seconds (0: delete the mapping, §15)."""

    client_address: IPv4Address | IPv6Address
    nonce: bytes
    protocol: int
    internal_port: int
    lifetime: int
    suggested_port: int = 0
    suggested_address: IPv4Address | IPv6Address = UNSPECIFIED
    options: tuple[PcpOption, ...] = ()

    def __post_init__(self) -> None:
        if len(self.nonce) != 12:
            raise ValueError(f"the mapping nonce is 12 bytes (§11.1), got {len(self.nonce)}")
        if not 0 <= self.protocol <= 255:
            raise ValueError(f"protocol {self.protocol} is not 0..255")
        for name, port in (("internal", self.internal_port), ("suggested", self.suggested_port)):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"{name} port {port} is not 0..65535")
        if not 0 <= self.lifetime <= 0xFFFFFFFF:
            raise ValueError(f"lifetime {self.lifetime} is not a 32-bit number")

    def encode(self) -> bytes:
        header = struct.pack(
            "!BBxxI16s", PCP_VERSION, Opcode.MAP, self.lifetime, encode_address(self.client_address)
        )
        body = struct.pack(
            "!12sBxxxHH16s",
            self.nonce,
            self.protocol,
            self.internal_port,
            self.suggested_port,
            encode_address(self.suggested_address),
        )
        return header + body + b"".join(o.encode() for o in self.options)


@dataclass(frozen=True)
class MapResponse:
    """A MAP response (§7.2 header + §11.1 body). For an error, `lifetime` says how long the
    answer holds (§7.2: when to retry), and the body repeats the request's (§8.3)."""

    result: ResultCode
    lifetime: int
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: IPv4Address | IPv6Address
    options: tuple[PcpOption, ...] = ()

    def __post_init__(self) -> None:
        if len(self.nonce) != 12:
            raise ValueError(f"the mapping nonce is 12 bytes (§11.1), got {len(self.nonce)}")
        for value, bits in ((self.lifetime, 32), (self.epoch, 32)):
            if not 0 <= value < 1 << bits:
                raise ValueError(f"{value} does not fit {bits} bits")

    def encode(self) -> bytes:
        header = struct.pack(
            "!BBxBII12x",
            PCP_VERSION,
            _RESPONSE_BIT | Opcode.MAP,
            self.result,
            self.lifetime,
            self.epoch,
        )
        body = struct.pack(
            "!12sBxxxHH16s",
            self.nonce,
            self.protocol,
            self.internal_port,
            self.external_port,
            encode_address(self.external_address),
        )
        return header + body + b"".join(o.encode() for o in self.options)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """A MAP response as a client reads it; PcpError for anything else."""
        bad = ResultCode.MALFORMED_REQUEST
        if len(data) < HEADER_SIZE + MAP_BODY_SIZE or len(data) > MAX_MESSAGE or len(data) % 4:
            raise PcpError(bad, f"a MAP response of {len(data)} bytes")
        version, opcode, result, lifetime, epoch = struct.unpack_from("!BBxBII", data)
        if version != PCP_VERSION:
            raise PcpError(ResultCode.UNSUPP_VERSION, f"PCP version {version}")
        if opcode != _RESPONSE_BIT | Opcode.MAP:
            raise PcpError(bad, f"opcode byte {opcode:#x} is not a MAP response")
        try:
            code = ResultCode(result)
        except ValueError:
            raise PcpError(bad, f"unknown result code {result}") from None
        nonce, protocol, internal, external, address = struct.unpack_from(
            "!12sBxxxHH16s", data, HEADER_SIZE
        )
        options = _decode_options(data[HEADER_SIZE + MAP_BODY_SIZE :], bad)
        return cls(
            code, lifetime, epoch, nonce, protocol, internal, external, decode_address(address),
            options,
        )  # fmt: skip


@dataclass(frozen=True)
class Request:
    """Any PCP request as a server reads it (§8.3): the header's fields and, for MAP, the
    request itself. `raw` is kept: an error response repeats its opcode-specific data."""

    opcode: int
    lifetime: int
    client_address: IPv4Address | IPv6Address
    body: bytes
    map: MapRequest | None = None


def decode_request(data: bytes) -> Request:
    """A PCP request (§7.1), with the MAP body decoded (§11.1). PcpError says what to answer:
    UNSUPP_VERSION, MALFORMED_REQUEST, MALFORMED_OPTION. A message a server must drop silently
    (§8.3: shorter than 2 octets, or with the R bit set) raises PcpError too; the caller
    checks `is_droppable` first."""
    bad = ResultCode.MALFORMED_REQUEST
    if len(data) < 2:
        raise PcpError(bad, "shorter than 2 bytes")
    if data[1] & _RESPONSE_BIT:
        raise PcpError(bad, "a response, not a request")
    if data[0] != PCP_VERSION:
        raise PcpError(ResultCode.UNSUPP_VERSION, f"PCP version {data[0]}, this server speaks 2")
    if len(data) < HEADER_SIZE or len(data) > MAX_MESSAGE or len(data) % 4:
        raise PcpError(bad, f"{len(data)} bytes: a request is 24..1100 bytes, a multiple of 4")
    opcode = data[1] & 0x7F
    lifetime = int.from_bytes(data[4:8], "big")
    client = decode_address(data[8:24])
    body = data[HEADER_SIZE:]
    if opcode != Opcode.MAP:
        return Request(opcode, lifetime, client, body)
    if len(body) < MAP_BODY_SIZE:
        raise PcpError(bad, f"a MAP request body of {len(body)} bytes, not 36")
    nonce, protocol, internal, suggested, address = struct.unpack_from("!12sBxxxHH16s", body)
    options = _decode_options(body[MAP_BODY_SIZE:], bad)
    request = MapRequest(
        client, nonce, protocol, internal, lifetime, suggested, decode_address(address), options
    )
    return Request(opcode, lifetime, client, body, request)


def is_droppable(data: bytes) -> bool:
    """§8.3: shorter than 2 octets, or a response (R bit set): dropped without an answer."""
    return len(data) < 2 or bool(data[1] & _RESPONSE_BIT)


def error_response(data: bytes, result: ResultCode, lifetime: int, epoch: int) -> bytes:
    """The answer to a request that could not be served (§8.3): its opcode with the R bit, the
    result code, and — when the request was long enough to have them — its opcode-specific
    data copied back (the client matches the answer by the nonce), padded to 4 octets (for
    MAP, to a whole MAP body, so that a client can parse what it gets)."""
    opcode = data[1] & 0x7F if len(data) > 1 else 0
    header = struct.pack("!BBxBII12x", PCP_VERSION, _RESPONSE_BIT | opcode, result, lifetime, epoch)
    rest = data[HEADER_SIZE:MAX_MESSAGE] if len(data) > HEADER_SIZE else b""
    if opcode == Opcode.MAP and len(rest) < MAP_BODY_SIZE:
        rest += b"\x00" * (MAP_BODY_SIZE - len(rest))  # still a whole MAP response
    rest += b"\x00" * (-len(rest) % 4)
    return header + rest


# -- UDP/IP framing: PCP goes through the tunnel as an ordinary UDP datagram ------------------


@dataclass(frozen=True)
class UdpDatagram:
    source: IPv4Address | IPv6Address
    destination: IPv4Address | IPv6Address
    source_port: int
    destination_port: int
    payload: bytes


def udp_packet(datagram: UdpDatagram, hop_limit: int = 64) -> bytes:
    """An IPv4 (RFC 791) or IPv6 (RFC 8200) packet carrying `datagram` with its UDP checksum
    (RFC 768; mandatory over IPv6, RFC 8200 §8.1)."""
    src, dst = datagram.source, datagram.destination
    if src.version != dst.version:
        raise ValueError(f"source {src} and destination {dst} are of different families")
    length = 8 + len(datagram.payload)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!xBH", IPPROTO_UDP, length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, IPPROTO_UDP)
    udp = struct.pack("!HHHH", datagram.source_port, datagram.destination_port, length, 0)
    checksum = internet_checksum(pseudo + udp + datagram.payload) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", checksum) + datagram.payload
    if src.version == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, hop_limit, IPPROTO_UDP, 0,
            src.packed, dst.packed,
        )  # fmt: skip
        header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
        return header + udp
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, length, IPPROTO_UDP, hop_limit, src.packed, dst.packed
    )
    return header + udp


def parse_udp(packet: bytes, port: int | None = None) -> UdpDatagram | None:
    """The UDP datagram in an IPv4 / IPv6 packet (no extension headers, not a fragment), or
    None for anything else; with `port`, only a datagram to that destination port. Cheap
    enough to run on every packet (both agents do, on the forwarding path): the protocol and
    the port are compared before anything is decoded or copied."""
    if len(packet) < 28:
        return None
    version = packet[0] >> 4
    if version == 4:
        if packet[9] != IPPROTO_UDP:
            return None
        udp_at = (packet[0] & 0x0F) * 4
        end = int.from_bytes(packet[2:4], "big")
        fragment = int.from_bytes(packet[6:8], "big") & 0x3FFF  # MF or an offset
        if udp_at < 20 or fragment or end > len(packet):
            return None
    elif version == 6:
        if len(packet) < 48 or packet[6] != IPPROTO_UDP:
            return None
        udp_at, end = 40, 40 + int.from_bytes(packet[4:6], "big")
        if end > len(packet):
            return None
    else:
        return None
    if end - udp_at < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", packet, udp_at)
    if (port is not None and dport != port) or length < 8 or udp_at + length > end:
        return None
    if version == 4:
        src: IPv4Address | IPv6Address = IPv4Address(packet[12:16])
        dst: IPv4Address | IPv6Address = IPv4Address(packet[16:20])
    else:
        src, dst = IPv6Address(packet[8:24]), IPv6Address(packet[24:40])
    return UdpDatagram(src, dst, sport, dport, bytes(packet[udp_at + 8 : udp_at + length]))
