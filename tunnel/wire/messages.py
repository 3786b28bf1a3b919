"""Every control and stream TLV of the three drafts as a small frozen value.

Each class has `encode() -> bytes` (the whole TLV) and `decode_value(value) -> Self` (the Value
part only). Constructors check the field invariants and raise ValueError, because a bad field on
the sending side is a bug; the decoders turn the same checks into `TunnelError` (MALFORMED_TLV),
because a bad field on the receiving side is the peer's fault. No other exception leaves a decoder.

Section numbers are those of the drafts in shared/drafts/ (draft-piraux-intarea-quic-tunnel-00,
-tunnel-session-00 and -tunnel-tcp-00).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Final, Self, TypeAlias, TypeVar

from tunnel.wire.errors import StreamErrorCode, TunnelError, malformed, protocol_violation
from tunnel.wire.tlv import MAX_TLV_VALUE_SIZE, TLV_HEADER_SIZE, TLVReader, encode_tlv

_T = TypeVar("_T")


def _expect_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise malformed(f"{name} TLV must carry {size} value bytes, got {len(value)}")


def _checked(name: str, build: Callable[[], _T]) -> _T:
    """Run a constructor on received fields, turning its ValueError into MALFORMED_TLV."""
    try:
        return build()
    except ValueError as exc:
        raise malformed(f"{name} TLV is invalid: {exc}") from None


def _check_opaque(name: str, value: bytes, min_size: int) -> None:
    if not min_size <= len(value) <= MAX_TLV_VALUE_SIZE:
        raise ValueError(
            f"{name} must be {min_size}..{MAX_TLV_VALUE_SIZE} bytes long, got {len(value)}"
        )


# --- Control TLVs ------------------------------------------------------------------------------


class AccessId(IntEnum):
    """Access ID of the Access Report TLV (draft-piraux-intarea-quic-tunnel-00 §7.1.1)."""

    THREE_GPP = 1
    NON_THREE_GPP = 2


ACCESS_NAMES: Final[dict[AccessId, str]] = {
    AccessId.THREE_GPP: "5g",
    AccessId.NON_THREE_GPP: "wifi",
}
"""The short name of each Access ID, in configuration files, logs and status files."""


def access_name(access_id: AccessId | int) -> str:
    """`ACCESS_NAMES`' name, or the number of an Access ID the draft does not define."""
    try:
        return ACCESS_NAMES[AccessId(access_id)]
    except ValueError:
        return str(int(access_id))


class AccessSignal(IntEnum):
    """Access Report signal codes (draft-piraux-intarea-quic-tunnel-00 §9.3 Signal Codes)."""

    AVAILABLE = 1
    UNAVAILABLE = 2


@dataclass(frozen=True, slots=True)
class AccessReport:
    """draft-piraux-intarea-quic-tunnel-00 §7.1.1 Access Report TLV (type 0x00, length 2):
    AI (4 bits) | R (4 bits) | Signal (8 bits)."""

    TLV_TYPE: ClassVar[int] = 0x00
    VALUE_SIZE: ClassVar[int] = 2

    access_id: AccessId
    signal: AccessSignal

    def __post_init__(self) -> None:
        object.__setattr__(self, "access_id", AccessId(self.access_id))
        object.__setattr__(self, "signal", AccessSignal(self.signal))

    def encode(self) -> bytes:
        # §7.1.1: R "MUST be zeroed on transmission", hence only AI in the first byte.
        return encode_tlv(self.TLV_TYPE, bytes((self.access_id << 4, self.signal)))

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        _expect_size("Access Report", value, cls.VALUE_SIZE)
        # §7.1.1: R is "ignored on receipt", so the low nibble is dropped, never checked; a peer
        # that sets it still gets its report through (and we re-encode it as zero).
        access_id, signal = value[0] >> 4, value[1]
        if access_id not in AccessId._value2member_map_:
            # §7.1.1: "all other values are invalid and the TLV that contains it MUST be discarded"
            raise malformed(f"Access Report TLV has unknown Access ID {access_id} (known: 1, 2)")
        if signal not in AccessSignal._value2member_map_:
            raise malformed(f"Access Report TLV has unknown Signal {signal} (known: 1, 2)")
        return cls(AccessId(access_id), AccessSignal(signal))


@dataclass(frozen=True, slots=True)
class NewSession:
    """draft-piraux-intarea-quic-tunnel-session-00 §6.1.1 New Session TLV (type 0x01): an
    optional opaque QoS Flow Indication."""

    TLV_TYPE: ClassVar[int] = 0x01

    qos: bytes = b""

    def __post_init__(self) -> None:
        _check_opaque("QoS Flow Indication", self.qos, 0)
        object.__setattr__(self, "qos", bytes(self.qos))

    def encode(self) -> bytes:
        return encode_tlv(self.TLV_TYPE, self.qos)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        return _checked("New Session", lambda: cls(value))


@dataclass(frozen=True, slots=True)
class SessionIdTLV:
    """draft-piraux-intarea-quic-tunnel-session-00 §6.1.2 Session ID TLV (type 0x02): the opaque
    Session ID. Its size is "Variable", zero included: a concentrator that serves one session
    could name it with no bytes (ours issues 16 random bytes, tunnel/session/table.py)."""

    TLV_TYPE: ClassVar[int] = 0x02

    session_id: bytes

    def __post_init__(self) -> None:
        _check_opaque("Session ID", self.session_id, 0)
        object.__setattr__(self, "session_id", bytes(self.session_id))

    def encode(self) -> bytes:
        return encode_tlv(self.TLV_TYPE, self.session_id)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        return _checked("Session ID", lambda: cls(value))


@dataclass(frozen=True, slots=True)
class JoinSession:
    """draft-piraux-intarea-quic-tunnel-session-00 §6.1.3 Join Session TLV (type 0x03): the
    Session ID of the session to join ("Variable" size, zero included, as the Session ID TLV)."""

    TLV_TYPE: ClassVar[int] = 0x03

    session_id: bytes

    def __post_init__(self) -> None:
        _check_opaque("Session ID", self.session_id, 0)
        object.__setattr__(self, "session_id", bytes(self.session_id))

    def encode(self) -> bytes:
        return encode_tlv(self.TLV_TYPE, self.session_id)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        return _checked("Join Session", lambda: cls(value))


ControlMessage: TypeAlias = AccessReport | NewSession | SessionIdTLV | JoinSession

CONTROL_DECODERS: Final[Mapping[int, Callable[[bytes], ControlMessage]]] = {
    AccessReport.TLV_TYPE: AccessReport.decode_value,
    NewSession.TLV_TYPE: NewSession.decode_value,
    SessionIdTLV.TLV_TYPE: SessionIdTLV.decode_value,
    JoinSession.TLV_TYPE: JoinSession.decode_value,
}
"""Control TLV types (tunnel-00 §9.2.1 and tunnel-session-00 §8.2.1 registries)."""


# --- Stream TLVs (draft-piraux-intarea-quic-tunnel-tcp-00 §5.1) --------------------------------

_LIMITED_BROADCAST: Final = IPv4Address("255.255.255.255")
_V4_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"


def _forbidden_destination(address: IPv4Address | IPv6Address) -> str | None:
    """Why `address` may not be a TCP Connect destination, or None if it may."""
    if address.is_multicast:
        return "multicast"
    if address == _LIMITED_BROADCAST:
        return "broadcast"
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    return None


@dataclass(frozen=True, slots=True)
class TcpConnect:
    """draft-piraux-intarea-quic-tunnel-tcp-00 §5.1.1 TCP Connect TLV (type 0x00, length 18):
    Remote Peer Port (16 bits) | Remote Peer IP Address (128 bits, IPv4 as v4-mapped IPv6).

    An IPv4-mapped IPv6 address given here is kept as the IPv4Address it stands for, so a value
    and its decoded encoding are equal. §5.1.1 forbids multicast, broadcast and loopback
    destinations (RFC 6890); the unspecified address and port 0 name no destination either.
    """

    TLV_TYPE: ClassVar[int] = 0x00
    VALUE_SIZE: ClassVar[int] = 18

    address: IPv4Address | IPv6Address
    port: int

    def __post_init__(self) -> None:
        if isinstance(self.address, IPv6Address) and self.address.ipv4_mapped is not None:
            object.__setattr__(self, "address", self.address.ipv4_mapped)
        if not 1 <= self.port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        reason = _forbidden_destination(self.address)
        if reason is not None:
            raise ValueError(f"{self.address} is a {reason} address, not a valid TCP destination")

    def encode(self) -> bytes:
        packed = self.address.packed
        if isinstance(self.address, IPv4Address):
            packed = _V4_MAPPED_PREFIX + packed  # §5.1.1: IPv4 "MUST be encoded" v4-mapped
        return encode_tlv(self.TLV_TYPE, self.port.to_bytes(2, "big") + packed)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        _expect_size("TCP Connect", value, cls.VALUE_SIZE)
        port = int.from_bytes(value[:2], "big")
        address = IPv6Address(value[2:])  # 16 bytes always parse; mapped form handled in init
        return _checked("TCP Connect", lambda: cls(address, port))


@dataclass(frozen=True, slots=True)
class TcpConnectOk:
    """draft-piraux-intarea-quic-tunnel-tcp-00 §5.1.2 TCP Connect OK TLV (type 0x01, no value)."""

    TLV_TYPE: ClassVar[int] = 0x01

    def encode(self) -> bytes:
        return encode_tlv(self.TLV_TYPE, b"")

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        _expect_size("TCP Connect OK", value, 0)
        return cls()


MAX_ERROR_PAYLOAD: Final = MAX_TLV_VALUE_SIZE - 2
"""Error Payload room: the one-byte Length covers the 2-byte Error Code too."""


@dataclass(frozen=True, slots=True)
class ErrorTLV:
    """draft-piraux-intarea-quic-tunnel-tcp-00 §5.1.3 Error TLV (type 0x02, length >= 2):
    Error Code (16 bits) | [Error Payload]. Codes outside StreamErrorCode are kept as plain
    ints (the registry may grow, and an unknown code is still a well-formed TLV).

    The constructor refuses a payload over MAX_ERROR_PAYLOAD bytes (ValueError) rather than
    silently cutting it; `from_icmp` is the one place that truncates, see there why.
    """

    TLV_TYPE: ClassVar[int] = 0x02

    code: StreamErrorCode | int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 0xFFFF:
            raise ValueError(f"error code must fit in 16 bits, got {self.code}")
        if self.code in StreamErrorCode._value2member_map_:
            object.__setattr__(self, "code", StreamErrorCode(self.code))
        if len(self.payload) > MAX_ERROR_PAYLOAD:
            raise ValueError(
                f"error payload of {len(self.payload)} bytes exceeds {MAX_ERROR_PAYLOAD}; "
                "use ErrorTLV.from_icmp() for an ICMP packet"
            )
        object.__setattr__(self, "payload", bytes(self.payload))

    @classmethod
    def from_icmp(cls, icmp_packet: bytes) -> Self:
        """An ICMP_PACKET_RECEIVED error carrying `icmp_packet` cut to MAX_ERROR_PAYLOAD bytes.

        §5.1.3 copies the ICMP packet into the payload but the TLV holds at most 253 bytes.
        Cutting is safe: the parts a client needs come first and fit — the 8-byte ICMP header,
        then the offending IPv4 (20..60 bytes) or IPv6 (40 bytes) header and the TCP header with
        its ports (RFC 792 quotes only 8 bytes of it anyway).
        """
        return cls(StreamErrorCode.ICMP_PACKET_RECEIVED, icmp_packet[:MAX_ERROR_PAYLOAD])

    def encode(self) -> bytes:
        return encode_tlv(self.TLV_TYPE, self.code.to_bytes(2, "big") + self.payload)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        if len(value) < 2:
            raise malformed(f"Error TLV must carry at least a 2-byte code, got {len(value)} bytes")
        code = int.from_bytes(value[:2], "big")
        return _checked("Error", lambda: cls(code, value[2:]))


@dataclass(frozen=True, slots=True)
class End:
    """draft-piraux-intarea-quic-tunnel-tcp-00 §5.1.4 End TLV (type 0xff, no value): the next
    stream byte belongs to the tunnelled bytestream."""

    TLV_TYPE: ClassVar[int] = 0xFF

    def encode(self) -> bytes:
        return encode_tlv(self.TLV_TYPE, b"")

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        _expect_size("End", value, 0)
        return cls()


StreamMessage: TypeAlias = TcpConnect | TcpConnectOk | ErrorTLV | End

STREAM_DECODERS: Final[Mapping[int, Callable[[bytes], StreamMessage]]] = {
    TcpConnect.TLV_TYPE: TcpConnect.decode_value,
    TcpConnectOk.TLV_TYPE: TcpConnectOk.decode_value,
    ErrorTLV.TLV_TYPE: ErrorTLV.decode_value,
    End.TLV_TYPE: End.decode_value,
}
"""Stream TLV types (tunnel-tcp-00 §8.1.1 registry)."""


# --- Whole-TLV and incremental decoders --------------------------------------------------------


def _split_whole_tlv(family: str, data: bytes) -> tuple[int, bytes]:
    if len(data) < TLV_HEADER_SIZE:
        raise malformed(f"{family} TLV is truncated: {len(data)} bytes, the header alone is 2")
    length = data[1]
    if len(data) != TLV_HEADER_SIZE + length:
        raise malformed(
            f"{family} TLV of type {data[0]:#04x} announces {length} value bytes "
            f"but {len(data) - TLV_HEADER_SIZE} follow"
        )
    return data[0], bytes(data[TLV_HEADER_SIZE:])


def _decode_control_tlv(tlv_type: int, value: bytes) -> ControlMessage:
    decode = CONTROL_DECODERS.get(tlv_type)
    if decode is None:
        raise malformed(f"unknown control TLV type {tlv_type:#04x} (known: 0x00..0x03)")
    return decode(value)


def decode_control(data: bytes) -> ControlMessage:
    """Decode exactly one whole control TLV (e.g. an Access Report stream read to its FIN)."""
    return _decode_control_tlv(*_split_whole_tlv("control", data))


def decode_stream(data: bytes) -> StreamMessage:
    """Decode exactly one whole stream TLV; an unknown type is MALFORMED_TLV here, since a single
    TLV has nothing to skip to (the preamble decoder skips unknown types, see there)."""
    tlv_type, value = _split_whole_tlv("stream", data)
    decode = STREAM_DECODERS.get(tlv_type)
    if decode is None:
        raise malformed(f"unknown stream TLV type {tlv_type:#04x} (known: 0x00..0x02, 0xff)")
    return decode(value)


class ControlStreamDecoder:
    """Incremental decoder of a control stream (tunnel-session-00 §4.1: streams 2 and 3).

    After the first error every later call raises that same error: the stream's framing can no
    longer be trusted, and the caller must reset it.
    """

    def __init__(self) -> None:
        self._reader = TLVReader()
        self._error: TunnelError | None = None

    def feed(self, data: bytes) -> list[ControlMessage]:
        if self._error is not None:
            raise self._error
        try:
            return [_decode_control_tlv(t, v) for t, v in self._reader.feed(data)]
        except TunnelError as exc:
            self._error = exc
            raise

    def finish(self) -> None:
        """Call on the stream's FIN: raises if the stream ended inside a TLV."""
        if self._error is not None:
            raise self._error
        if not self._reader.at_boundary:
            raise malformed(f"control stream ended inside a TLV ({self._reader.pending} bytes)")


MAX_PREAMBLE_BYTES: Final = 4096
"""Bytes of TLVs a stream may carry before its End TLV (StreamPreambleDecoder): ours send a TCP
Connect or TCP Connect OK (20 bytes) or an Error TLV (at most 257) and End; 4 KiB leaves room
for extensions the draft foresees (§5.1)."""


class StreamPreambleDecoder:
    """Incremental decoder of the stream TLVs that precede a TCP bytestream (tunnel-tcp-00 §5.1).

    `opened_by_peer` enables the role rules of §5.1.1/§5.1.2 when known: True on a stream the peer
    opened (it must send TCP Connect before End, never TCP Connect OK), False on a stream we
    opened (the reply must hold TCP Connect OK or an Error TLV before End, never TCP Connect).

    Unknown TLV types before End are skipped and counted in `unknown_skipped`, not rejected:
    §5.1 says "future versions of this document may define new TLVs" and End exists so several
    TLVs can precede the bytestream; the TLV framing lets us step over one we do not know and
    still find End, whereas rejecting would break every peer that uses such an extension.

    At most MAX_PREAMBLE_BYTES of TLVs may precede End: a peer streaming unknown TLVs that never
    reach End would otherwise hold the stream (and one of its stream slots) open for good
    without ever counting as a connect (found by a review).

    After the first error every later call raises that same error.
    """

    def __init__(self, opened_by_peer: bool | None = None) -> None:
        self.opened_by_peer = opened_by_peer
        self.unknown_skipped = 0
        self._preamble_bytes = 0
        self._reader = TLVReader()
        self._done = False
        self._connect_seen = False
        self._reply_seen = False
        self._error_seen = False
        self._failure: TunnelError | None = None

    @property
    def done(self) -> bool:
        """True once the End TLV was decoded: every later byte is bytestream."""
        return self._done

    def feed(self, data: bytes) -> tuple[list[StreamMessage], bytes]:
        if self._failure is not None:
            raise self._failure
        try:
            return self._feed(data)
        except TunnelError as exc:
            self._failure = exc
            raise

    def finish(self) -> None:
        """Call on the stream's FIN: raises if End never came."""
        if self._failure is not None:
            raise self._failure
        if self._done:
            return
        if not self._reader.at_boundary:
            raise malformed(f"stream ended inside a TLV ({self._reader.pending} bytes of it)")
        raise protocol_violation("stream ended before its End TLV (tunnel-tcp-00 §5.1.4)")

    def _feed(self, data: bytes) -> tuple[list[StreamMessage], bytes]:
        messages: list[StreamMessage] = []
        if self._done:
            bytestream = bytes(data)
        else:
            self._reader.append(data)
            while not self._done and (tlv := self._reader.next_tlv()) is not None:
                message = self._accept(*tlv)
                if message is not None:
                    messages.append(message)
            bytestream = self._reader.take_remaining() if self._done else b""
            self._preamble_bytes += len(data) - len(bytestream)
            if self._preamble_bytes > MAX_PREAMBLE_BYTES:
                raise protocol_violation(
                    f"more than {MAX_PREAMBLE_BYTES} bytes of TLVs before the End TLV"
                )
        if bytestream and self._error_seen:
            # §5.1.3: after Error TLVs the sender "MUST send an End TLV and terminate the stream".
            raise protocol_violation("bytestream data follows an Error TLV and its End TLV")
        return messages, bytestream

    def _accept(self, tlv_type: int, value: bytes) -> StreamMessage | None:
        decode = STREAM_DECODERS.get(tlv_type)
        if decode is None:
            self.unknown_skipped += 1
            return None
        message = decode(value)
        if isinstance(message, TcpConnect):
            if self.opened_by_peer is False:
                raise protocol_violation("TCP Connect TLV on a stream this endpoint opened")
            if self._connect_seen:
                raise protocol_violation("more than one TCP Connect TLV on one stream")
            self._connect_seen = True
        elif isinstance(message, TcpConnectOk):
            if self.opened_by_peer is True:
                raise protocol_violation("TCP Connect OK TLV on a stream the peer opened")
            self._reply_seen = True
        elif isinstance(message, ErrorTLV):
            self._reply_seen = self._error_seen = True
        else:
            self._check_ready_to_end()
            self._done = True
        return message

    def _check_ready_to_end(self) -> None:
        # An Error TLV alone does not open a stream (§5.1.1: the initiator's TLVs start with
        # TCP Connect): there is no connection the error could be about, and answering it would
        # leave nothing for the receiver to report (the fuzzer found the case).
        if self.opened_by_peer is True and not self._connect_seen:
            raise protocol_violation("End TLV before any TCP Connect TLV on a peer-opened stream")
        if self.opened_by_peer is False and not self._reply_seen:
            raise protocol_violation("End TLV before TCP Connect OK or Error on our own stream")
