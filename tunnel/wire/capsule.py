"""The Capsule Protocol of RFC 9297 §3: what a CONNECT-IP request stream carries after its
headers (RFC 9484 §4), as HTTP/3 DATA frame payloads.

    Capsule {
      Capsule Type (i),
      Capsule Length (i),
      Capsule Value (..),
    }

Only framing lives here; what a Value means is in tunnel/wire/connect_ip.py (RFC 9484 §4.7) and,
for the DATAGRAM capsule (§3.5, type 0x00), tunnel/wire/http_datagram.py.

Varints are QUIC's (RFC 9000 §16), read and written with aioquic's buffer helpers. A sender may
use a longer encoding than needed (RFC 9484 §2), so a decoder accepts any and an encoder writes
the shortest: decoding then re-encoding need not give the same bytes, but the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Self

from aioquic._buffer import Buffer, BufferReadError
from aioquic.buffer import encode_uint_var

from tunnel.wire.errors import StreamErrorCode, TunnelError

MAX_VARINT: Final = (1 << 62) - 1
"""The largest value a QUIC variable-length integer holds (RFC 9000 §16)."""

DEFAULT_MAX_CAPSULE_VALUE: Final = 16384
"""Default bound of the value a CapsuleReader buffers for one known capsule. Our capsules are
small (an ADDRESS_ASSIGN of one v4 and one v6 prefix is 27 bytes; a ROUTE_ADVERTISEMENT range
at most 34), so 16 KiB holds hundreds of routes while a peer cannot make us buffer megabytes.
RFC 9297 §3.2 advises against accumulating whole capsules: unknown ones are skipped as they
stream past, never buffered."""


class H3ErrorCode(IntEnum):
    """HTTP/3 error codes (RFC 9114 §8.1, RFC 9297 §5.2) a CONNECT-IP endpoint sends."""

    H3_NO_ERROR = 0x100
    H3_GENERAL_PROTOCOL_ERROR = 0x101
    H3_EXCESSIVE_LOAD = 0x107
    """A peer making us hold more of a stream than a request needs (RFC 9114 §8.1)."""
    H3_ID_ERROR = 0x108
    H3_REQUEST_CANCELLED = 0x10C
    H3_MESSAGE_ERROR = 0x10E
    """A malformed request or response (RFC 9114 §4.1.2): what a malformed capsule sequence
    is (RFC 9297 §3.3), so the request stream is aborted with it."""
    H3_DATAGRAM_ERROR = 0x33
    """RFC 9297 §2.1 / §5.2: an HTTP/3 Datagram whose Quarter Stream ID cannot be parsed or is
    too large (a connection error)."""


class CapsuleError(TunnelError):
    """A capsule (or capsule sequence) that is malformed: RFC 9297 §3.3 makes it a malformed
    HTTP message, so the receiver aborts the request stream with `h3_error_code`."""

    def __init__(self, message: str, h3_error_code: int = H3ErrorCode.H3_MESSAGE_ERROR) -> None:
        super().__init__(StreamErrorCode.MALFORMED_TLV, message)
        self.h3_error_code: int = h3_error_code


def varint_size(first_byte: int) -> int:
    """Bytes of the varint that starts with `first_byte` (its two top bits, RFC 9000 §16)."""
    return 1 << (first_byte >> 6)


def pull_varint(buf: Buffer, what: str) -> int:
    """One varint from `buf`; CapsuleError naming `what` if the bytes run out."""
    try:
        return buf.pull_uint_var()
    except BufferReadError:
        raise CapsuleError(f"{what} is truncated") from None


def pull_bytes(buf: Buffer, size: int, what: str) -> bytes:
    """`size` bytes from `buf`; CapsuleError naming `what` if fewer are left."""
    try:
        return buf.pull_bytes(size)
    except BufferReadError:
        raise CapsuleError(f"{what} is truncated") from None


def encode_capsule(capsule_type: int, value: bytes) -> bytes:
    """One capsule on the wire (RFC 9297 §3.2). ValueError for a type above 2^62-1: a bug of the
    sender, never caused by received data."""
    if not 0 <= capsule_type <= MAX_VARINT:
        raise ValueError(f"capsule type {capsule_type} does not fit in a varint (0..2^62-1)")
    return encode_uint_var(capsule_type) + encode_uint_var(len(value)) + bytes(value)


@dataclass(frozen=True, slots=True)
class Capsule:
    """One whole capsule: its type and its value, not yet interpreted."""

    capsule_type: int
    value: bytes

    def encode(self) -> bytes:
        return encode_capsule(self.capsule_type, self.value)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Exactly one capsule (RFC 9297 §3.3: no byte more, none fewer)."""
        buf = Buffer(data=data)
        capsule_type = pull_varint(buf, "capsule type")
        length = pull_varint(buf, "capsule length")
        value = pull_bytes(buf, length, f"capsule value ({length} bytes announced)")
        if not buf.eof():
            raise CapsuleError(
                f"{len(data) - buf.tell()} bytes follow the capsule's {length}-byte value"
            )
        return cls(capsule_type, value)


class CapsuleReader:
    """Streaming capsule parser for a request stream's data: bytes arrive in arbitrary chunks
    (HTTP/3 DATA frames split anywhere), and each capsule of a `known_types` type is returned
    once its last byte arrives.

    A capsule of any other type is skipped as its bytes arrive, never buffered (RFC 9297 §3.2:
    "silently drop that Capsule and skip over it"; counted in `skipped`). A known capsule whose
    Length exceeds `max_value_size` raises CapsuleError at once, before its value arrives: between
    feeds the buffer never holds more than one capsule header plus `max_value_size` bytes
    (each feed takes every capsule its data completes, unknown empty ones included). `finish()`
    raises if the stream ended inside a capsule (RFC 9297 §3.3: a truncated last capsule is a
    malformed message).
    """

    def __init__(
        self, known_types: frozenset[int], max_value_size: int = DEFAULT_MAX_CAPSULE_VALUE
    ) -> None:
        self._known = known_types
        self.max_value_size = max_value_size
        self._buffer = bytearray()
        self._skip = 0  # bytes of an unknown capsule's value still to skip
        self.skipped = 0
        """Capsules of unknown types skipped. A count, not one per type: types span 2^62, so
        a table of them would grow with every new one a peer sends."""
        self.failed: CapsuleError | None = None
        """The error that stopped the reader: once set, every later feed raises it again."""

    @property
    def pending(self) -> int:
        """Bytes of a capsule begun but not finished (buffered, or still to skip)."""
        return len(self._buffer) + self._skip

    @property
    def at_boundary(self) -> bool:
        """True when the stream may end here without truncating a capsule."""
        return self.pending == 0

    def feed(self, data: bytes) -> list[Capsule]:
        """Take `data` and return every known capsule it completes, in order."""
        if self.failed is not None:
            raise self.failed
        try:
            return self._feed(memoryview(data))
        except CapsuleError as exc:
            self.failed = exc
            self._buffer.clear()
            raise

    def _feed(self, data: memoryview) -> list[Capsule]:
        if self._skip:
            # the value of an unknown capsule streams past without being copied
            step = min(self._skip, len(data))
            self._skip -= step
            data = data[step:]
        self._buffer += data
        capsules: list[Capsule] = []
        # until no progress: an unknown capsule of Length 0 (a grease capsule, RFC 9297 §5.4)
        # is consumed whole with its header and yields nothing, yet what follows it is here
        while self._buffer:
            if self._skip:
                step = min(self._skip, len(self._buffer))
                del self._buffer[:step]
                self._skip -= step
            elif not self._take_one(capsules):
                break  # the next capsule is not all here yet
        return capsules

    def _take_one(self, capsules: list[Capsule]) -> bool:
        """Consume the capsule that starts the buffer: a known one whole (appended to
        `capsules`), an unknown one's header (its value is then skipped). False, consuming
        nothing, if more bytes are needed first."""
        buffer = self._buffer
        type_size = varint_size(buffer[0])
        if len(buffer) < type_size + 1:
            return False
        length_size = varint_size(buffer[type_size])
        header_size = type_size + length_size
        if len(buffer) < header_size:
            return False
        header = Buffer(data=bytes(buffer[:header_size]))
        capsule_type = header.pull_uint_var()
        length = header.pull_uint_var()
        if capsule_type not in self._known:
            self.skipped += 1
            del buffer[:header_size]
            self._skip = length
            return True
        if length > self.max_value_size:
            raise CapsuleError(
                f"capsule of type {capsule_type:#x} announces a {length}-byte value, more than "
                f"the {self.max_value_size} bytes this endpoint accepts"
            )
        if len(buffer) < header_size + length:
            return False
        capsules.append(Capsule(capsule_type, bytes(buffer[header_size : header_size + length])))
        del buffer[: header_size + length]
        return True

    def finish(self) -> None:
        """The stream ended cleanly (FIN): CapsuleError if it ended inside a capsule."""
        if self.failed is not None:
            raise self.failed
        if not self.at_boundary:
            self.failed = CapsuleError(
                f"the stream ended inside a capsule ({self.pending} bytes of it unread)"
            )
            raise self.failed
