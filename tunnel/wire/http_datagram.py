"""HTTP Datagrams as CONNECT-IP carries them: the HTTP/3 framing in a QUIC DATAGRAM frame
(RFC 9297 §2.1) and, inside it, the IP proxying payload (RFC 9484 §6).

    HTTP/3 Datagram {                 IP Proxying HTTP Datagram Payload {
      Quarter Stream ID (i),            Context ID (i),
      HTTP Datagram Payload (..),       Payload (..),
    }                                 }

So a tunnelled IP packet costs the Quarter Stream ID (1 byte for request streams 0..252) plus
the Context ID (1 byte: 0, "reserved for IP payloads", §5) on top of the QUIC DATAGRAM frame.

aioquic's H3Connection reads and writes the Quarter Stream ID itself (`send_datagram`,
`DatagramReceived`); `H3Datagram` exists to check that framing byte for byte and, in the session,
its upper bound, which aioquic 1.7.2 does not enforce. The DATAGRAM capsule (RFC 9297 §3.5, type
0x00) carries the same HTTP Datagram Payload on the request stream instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Self

from aioquic._buffer import Buffer, BufferReadError
from aioquic.buffer import encode_uint_var, size_uint_var

from tunnel.wire.capsule import MAX_VARINT, CapsuleError, H3ErrorCode

MAX_QUARTER_STREAM_ID: Final = (1 << 60) - 1
"""RFC 9297 §2.1: stream IDs stop at 2^62-1, so a larger Quarter Stream ID is a connection
error H3_DATAGRAM_ERROR."""
DATAGRAM_CAPSULE_TYPE: Final = 0x00
"""RFC 9297 §3.5: an HTTP Datagram sent as a capsule on the request stream."""
IP_PACKET_CONTEXT: Final = 0
"""RFC 9484 §5/§6: Context ID 0 means the Payload is one full IP packet."""
_IP_PACKET_PREFIX: Final = encode_uint_var(IP_PACKET_CONTEXT)


def _datagram_error(message: str) -> CapsuleError:
    return CapsuleError(message, H3ErrorCode.H3_DATAGRAM_ERROR)


def ip_packet_overhead(stream_id: int) -> int:
    """Bytes an HTTP Datagram puts before a tunnelled IP packet on request stream `stream_id`:
    its Quarter Stream ID and the Context ID 0 (RFC 9297 §2.1, RFC 9484 §6)."""
    return size_uint_var(stream_id // 4) + len(_IP_PACKET_PREFIX)


def is_request_stream(stream_id: int) -> bool:
    """A client-initiated bidirectional stream (RFC 9000 §2.1), the only kind an HTTP Datagram
    can be associated with (RFC 9297 §2.1)."""
    return stream_id % 4 == 0


@dataclass(frozen=True, slots=True)
class H3Datagram:
    """RFC 9297 §2.1 HTTP/3 Datagram: the request stream it belongs to and its payload."""

    stream_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not is_request_stream(self.stream_id) or not (
            0 <= self.stream_id // 4 <= MAX_QUARTER_STREAM_ID
        ):
            raise ValueError(
                f"stream {self.stream_id} is not a client-initiated bidirectional stream"
            )
        object.__setattr__(self, "payload", bytes(self.payload))

    def encode(self) -> bytes:
        return encode_uint_var(self.stream_id // 4) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """CapsuleError with H3_DATAGRAM_ERROR for what §2.1 makes a connection error."""
        buf = Buffer(data=data)
        try:
            quarter = buf.pull_uint_var()
        except BufferReadError:
            raise _datagram_error("the datagram is too short for a Quarter Stream ID") from None
        if quarter > MAX_QUARTER_STREAM_ID:
            raise _datagram_error(
                f"Quarter Stream ID {quarter} exceeds 2^60-1, so no stream can carry it"
            )
        return cls(quarter * 4, data[buf.tell() :])


@dataclass(frozen=True, slots=True)
class IpProxyingPayload:
    """RFC 9484 §6 IP Proxying HTTP Datagram Payload: a Context ID and what it frames (with
    context 0, a full IP packet; the Payload "can be empty" whatever the context)."""

    context_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.context_id <= MAX_VARINT:
            raise ValueError(f"context ID {self.context_id} does not fit in a varint")
        object.__setattr__(self, "payload", bytes(self.payload))

    @property
    def is_ip_packet(self) -> bool:
        return self.context_id == IP_PACKET_CONTEXT

    def encode(self) -> bytes:
        return encode_uint_var(self.context_id) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Only an absent Context ID is malformed: an unknown one is dropped or held by the
        receiver (§6), and whether the payload is a good IP packet is a forwarding question,
        "not a protocol violation" (§7.2)."""
        buf = Buffer(data=data)
        try:
            context_id = buf.pull_uint_var()
        except BufferReadError:
            raise _datagram_error(
                "the HTTP Datagram payload is too short for a Context ID"
            ) from None
        return cls(context_id, data[buf.tell() :])


def encode_ip_packet(packet: bytes) -> bytes:
    """The HTTP Datagram Payload of one IP packet (§6: Context ID 0, then the packet): the fast
    path of the data plane, without building an IpProxyingPayload."""
    return _IP_PACKET_PREFIX + packet
