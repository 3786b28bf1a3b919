"""QUIC DATAGRAM framing of the tunnel mode and of the tunnel session mode.

- Tunnel mode (draft-piraux-intarea-quic-tunnel-00 §4): the IP packet whole, no header.
- Tunnel session mode (draft-piraux-intarea-quic-tunnel-session-00 §4): Protocol Type (16 bits,
  an EtherType) | Packet Tag (16 bits, opaque) | Packet.

What a tunnel carries, its *payload*, is IP packets or Ethernet frames (`Payload`). Session mode
says which per datagram (Protocol Type 0x0800/0x86DD, or 0x6558 for Ethernet, session draft §4);
tunnel mode has no such field, so the payload is "signalled out of band" (tunnel draft §4): both
ends are configured with it, and tunnel/protocol/quic_ext.py announces it in a transport
parameter so that a mismatch is refused rather than mis-delivered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, Self

from tunnel.wire.errors import DatagramError


class ProtocolType(IntEnum):
    """EtherTypes this implementation carries (tunnel-session-00 §4 Protocol Type)."""

    IPV4 = 0x0800
    IPV6 = 0x86DD
    ETHERNET = 0x6558
    """Transparent Ethernet Bridging (RFC 1701), named by §4 for Ethernet frames."""


SESSION_HEADER_SIZE: Final = 4
ETHERNET_HEADER_SIZE: Final = 14
"""Destination MAC, source MAC, EtherType: what an Ethernet payload adds to each IP packet, so
a TAP device's MTU is the datagram budget minus this (the FCS is not carried)."""


class Payload(Enum):
    """What a tunnel carries; the value is the configuration's `payload`."""

    IP = "ip"
    """IPv4/IPv6 packets, through a TUN device."""
    ETHERNET = "ethernet"
    """Ethernet frames, through a TAP device (session draft §4: Protocol Type 0x6558)."""


PAYLOAD_PROTOCOL_TYPES: Final[dict[Payload, frozenset[int]]] = {
    Payload.IP: frozenset({ProtocolType.IPV4, ProtocolType.IPV6}),
    Payload.ETHERNET: frozenset({ProtocolType.ETHERNET}),
}
"""The session-mode Protocol Types a tunnel of each payload accepts; any other is dropped and
counted (session draft §4: "MAY drop"), never handed to the device of the other payload."""
PAYLOAD_ETHERTYPE: Final[dict[Payload, int | None]] = {
    Payload.IP: None,
    Payload.ETHERNET: ProtocolType.ETHERNET,
}
"""What the quic_tunnel_payload transport parameter announces for each payload (None: nothing,
IP is what a peer that does not know the parameter carries)."""


def payload_of_ethertype(ethertype: int | None) -> Payload | None:
    """The payload a quic_tunnel_payload value announces; None for an EtherType we do not
    carry."""
    for payload, announced in PAYLOAD_ETHERTYPE.items():
        if announced == ethertype:
            return payload
    return None


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
        object.__setattr__(
            self, "protocol_type", _KNOWN.get(self.protocol_type, self.protocol_type)
        )
        object.__setattr__(self, "packet", bytes(self.packet))
        problem = _packet_problem(self.protocol_type, self.packet)
        if problem is not None:
            raise ValueError(problem)

    def encode(self) -> bytes:
        header = self.protocol_type.to_bytes(2, "big") + self.packet_tag.to_bytes(2, "big")
        return header + self.packet

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(*decode_session_datagram(data))


_SESSION_HEADER: Final = struct.Struct("!HH")


def encode_session_datagram(protocol_type: int, packet_tag: int, packet: bytes) -> bytes:
    """Session mode (§4): the DATAGRAM payload of a packet whose Protocol Type the caller took
    from it (protocol_type_for), built without a SessionDatagram: the per-packet path makes
    no object it does not need (issue 14 item 3). ValueError if a field exceeds 16 bits."""
    try:
        return _SESSION_HEADER.pack(protocol_type, packet_tag) + packet
    except struct.error:
        raise ValueError(
            f"protocol type {protocol_type} and packet tag {packet_tag} must fit in 16 bits"
        ) from None


def decode_session_datagram(data: bytes) -> tuple[int, int, bytes]:
    """Session mode (§4): (Protocol Type, Packet Tag, packet) of a DATAGRAM payload, with the
    checks of SessionDatagram (DatagramError: too short, an IP packet whose version disagrees
    with its Protocol Type, an Ethernet frame shorter than its header), without building one.
    A Protocol Type this implementation knows comes back as a ProtocolType."""
    if len(data) < SESSION_HEADER_SIZE:
        raise DatagramError(
            f"session datagram of {len(data)} bytes is shorter than its 4-byte header"
        )
    protocol_type, packet_tag = _SESSION_HEADER.unpack_from(data)
    packet = bytes(data[SESSION_HEADER_SIZE:])
    problem = _packet_problem(protocol_type, packet)
    if problem is not None:
        raise DatagramError(f"invalid session datagram: {problem}")
    return _KNOWN.get(protocol_type, protocol_type), packet_tag, packet


_KNOWN: Final[dict[int, ProtocolType]] = {int(t): t for t in ProtocolType}
_PAYLOAD_OF_TYPE: Final = {
    protocol_type: payload
    for payload, types in PAYLOAD_PROTOCOL_TYPES.items()
    for protocol_type in types
}


def _packet_problem(protocol_type: int, packet: bytes) -> str | None:
    """Why `packet` cannot travel as `protocol_type` (session draft §4: the Protocol Type says
    what the packet is), or None; None for a type we do not carry (dropping it is the
    caller's policy, not a framing error)."""
    payload = _PAYLOAD_OF_TYPE.get(protocol_type)
    if payload is None:
        return None
    try:
        actual = protocol_type_for(payload, packet)
    except DatagramError as exc:
        return exc.message
    if actual != protocol_type:
        return f"protocol type {protocol_type:#06x} but the packet is {actual.name}"
    return None


def protocol_type_for(payload: Payload, packet: bytes) -> ProtocolType:
    """The Protocol Type of a packet of this payload (DatagramError if it is not one): an IP
    packet's from its version nibble, an Ethernet frame's 0x6558 (session draft §4)."""
    if payload is Payload.IP:
        return protocol_type_of(packet)
    if len(packet) < ETHERNET_HEADER_SIZE:
        raise DatagramError(
            f"an Ethernet frame of {len(packet)} bytes is shorter than its "
            f"{ETHERNET_HEADER_SIZE}-byte header"
        )
    return ProtocolType.ETHERNET


def encode_tunnel_datagram(packet: bytes, payload: Payload = Payload.IP) -> bytes:
    """Tunnel mode (tunnel-00 §4): the packet is the whole DATAGRAM payload, so this only checks
    it is a packet of the payload (DatagramError otherwise), since the mode has no protocol
    field: the payload is signalled out of band."""
    protocol_type_for(payload, packet)
    return bytes(packet)


def decode_tunnel_datagram(data: bytes, payload: Payload = Payload.IP) -> bytes:
    """Tunnel mode (tunnel-00 §4): the DATAGRAM payload is one IPv4 or IPv6 packet, or with an
    Ethernet payload one Ethernet frame (DatagramError otherwise)."""
    protocol_type_for(payload, data)
    return bytes(data)
