"""The generic TLV format shared by all three drafts (draft-piraux-intarea-quic-tunnel-00 §7
Messages format): Type (1 byte), Length (1 byte), Value (Length bytes), network byte order.

Only framing lives here; what a Value means is in tunnel/wire/messages.py.
"""

from __future__ import annotations

from typing import Final

TLV_HEADER_SIZE: Final = 2
MAX_TLV_VALUE_SIZE: Final = 255
"""The Length field is one byte, so no Value can exceed 255 bytes."""


def encode_tlv(tlv_type: int, value: bytes) -> bytes:
    """Frame `value` as one TLV. Raises ValueError for a type that is not a byte or a value
    longer than 255 bytes: both are bugs of the sender, never caused by received data."""
    if not 0 <= tlv_type <= 0xFF:
        raise ValueError(f"TLV type {tlv_type} does not fit in one byte (0..255)")
    if len(value) > MAX_TLV_VALUE_SIZE:
        raise ValueError(
            f"TLV value of {len(value)} bytes exceeds the {MAX_TLV_VALUE_SIZE}-byte Length field"
        )
    return bytes((tlv_type, len(value))) + bytes(value)


class TLVReader:
    """Incremental TLV framer for a QUIC stream: bytes arrive in arbitrary chunks, and a TLV split
    at any byte boundary is returned once its last byte arrives.

    Framing alone can never be malformed (every byte pair is a valid header), so the reader does
    not raise; a stream that ends while `at_boundary` is False ended inside a TLV.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0  # start of the unread bytes in _buffer

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a whole TLV."""
        return len(self._buffer) - self._offset

    @property
    def at_boundary(self) -> bool:
        """True when no partial TLV is buffered (a stream may end here)."""
        return self.pending == 0

    def append(self, data: bytes) -> None:
        """Buffer `data` without framing it yet (see `next_tlv`)."""
        if self._offset:
            # Drop what was already read so the buffer holds at most the unread tail; that tail
            # is short (under one TLV) whenever the caller frames after every append.
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_tlv(self) -> tuple[int, bytes] | None:
        """Return the next whole (type, value) and consume it, or None if it is not all here."""
        available = self.pending
        if available < TLV_HEADER_SIZE:
            return None
        start = self._offset
        length = self._buffer[start + 1]
        end = start + TLV_HEADER_SIZE + length
        if available < TLV_HEADER_SIZE + length:
            return None
        tlv = (self._buffer[start], bytes(self._buffer[start + TLV_HEADER_SIZE : end]))
        self._offset = end
        return tlv

    def take_remaining(self) -> bytes:
        """Return and drop every buffered byte, for when what follows is no longer TLVs
        (the bytestream after the End TLV)."""
        rest = bytes(self._buffer[self._offset :])
        self._buffer.clear()
        self._offset = 0
        return rest

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Buffer `data` and return every TLV completed so far, keeping a partial tail."""
        self.append(data)
        tlvs: list[tuple[int, bytes]] = []
        while (tlv := self.next_tlv()) is not None:
            tlvs.append(tlv)
        return tlvs
