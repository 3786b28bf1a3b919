"""QUIC DATAGRAM framing of the tunnel mode and of the tunnel session mode.

- Tunnel mode (draft-piraux-intarea-quic-tunnel-00 §4): the IP packet whole, no header.
- Tunnel session mode (draft-piraux-intarea-quic-tunnel-session-00 §4): Protocol Type (16 bits,
  an EtherType) | Packet Tag (16 bits, opaque) | Packet.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Self

from tunnel.wire.errors import DatagramError


class ProtocolType(IntEnum):
    """EtherTypes this implementation carries (tunnel-session-00 §4 Protocol Type)."""

    IPV4 = 0x0800
    IPV6 = 0x86DD
    ETHERNET = 0x6558
    """Transparent Ethernet Bridging (RFC 1701), named by §4 for Ethernet frames."""


SESSION_HEADER_SIZE: Final = 4

_IP_VERSIONS: Final = {4: ProtocolType.IPV4, 6: ProtocolType.IPV6}


def protocol_type_of(packet: bytes) -> ProtocolType:
    """The EtherType of an IP packet, read from its version nibble (as a TUN device hands it)."""
    if not packet:
        raise DatagramError("empty packet: an IP packet has at least a version nibble")
    version = packet[0] >> 4
    protocol = _IP_VERSIONS.get(version)
    if protocol is None:
        raise DatagramError(f"IP version {version} is neither 4 nor 6")
    return protocol


@dataclass(frozen=True, slots=True)
class SessionDatagram:
    """draft-piraux-intarea-quic-tunnel-session-00 §4 session-mode DATAGRAM payload.

    Unknown Protocol Types decode fine (§4: the receiver "MAY drop" them, a policy decision of
    the caller, not a framing error). For IPv4/IPv6 the packet's version nibble must agree with
    the Protocol Type: a disagreement means a corrupt or lying datagram, which must not reach a
    TUN device as the other protocol.
    """

    protocol_type: int
    packet_tag: int
    packet: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.protocol_type <= 0xFFFF:
            raise ValueError(f"protocol type must fit in 16 bits, got {self.protocol_type}")
        if not 0 <= self.packet_tag <= 0xFFFF:
            raise ValueError(f"packet tag must fit in 16 bits, got {self.packet_tag}")
        if self.protocol_type in ProtocolType._value2member_map_:
            object.__setattr__(self, "protocol_type", ProtocolType(self.protocol_type))
        object.__setattr__(self, "packet", bytes(self.packet))
        if self.protocol_type in _IP_VERSIONS.values():
            try:
                actual = protocol_type_of(self.packet)
            except DatagramError as exc:
                raise ValueError(exc.message) from None
            if actual != self.protocol_type:
                raise ValueError(
                    f"protocol type {self.protocol_type:#06x} but the packet is {actual.name}"
                )

    def encode(self) -> bytes:
        header = self.protocol_type.to_bytes(2, "big") + self.packet_tag.to_bytes(2, "big")
        return header + self.packet

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if len(data) < SESSION_HEADER_SIZE:
            raise DatagramError(
                f"session datagram of {len(data)} bytes is shorter than its 4-byte header"
            )
        protocol_type = int.from_bytes(data[0:2], "big")
        packet_tag = int.from_bytes(data[2:4], "big")
        try:
            return cls(protocol_type, packet_tag, bytes(data[SESSION_HEADER_SIZE:]))
        except ValueError as exc:
            raise DatagramError(f"invalid session datagram: {exc}") from None


def encode_tunnel_datagram(packet: bytes) -> bytes:
    """Tunnel mode (tunnel-00 §4): the packet is the whole DATAGRAM payload, so this only checks
    it is an IP packet (DatagramError otherwise), since the mode has no protocol field."""
    protocol_type_of(packet)
    return bytes(packet)


def decode_tunnel_datagram(data: bytes) -> bytes:
    """Tunnel mode (tunnel-00 §4): the DATAGRAM payload is one IPv4 or IPv6 packet."""
    protocol_type_of(data)
    return bytes(data)
