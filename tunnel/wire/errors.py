"""Error codes of the three drafts and the one exception every wire decoder raises.

Decoders in tunnel/ never let IndexError, struct.error or ValueError escape on bad input: they
raise `TunnelError`, whose `code` is the -tcp draft's bytestream-level error code, so the caller
can put it straight into an Error TLV or an application error code.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class StreamErrorCode(IntEnum):
    """Bytestream-level error codes (draft-piraux-intarea-quic-tunnel-tcp-00 §5.1.3 Error TLV)."""

    PROTOCOL_VIOLATION = 0x0
    """Any non-conforming behaviour, e.g. TLVs out of sequence or a stream ended before End."""
    ICMP_PACKET_RECEIVED = 0x1
    """The concentrator got an ICMP packet while connecting; the Error Payload holds it."""
    MALFORMED_TLV = 0x2
    """A TLV could not be parsed (bad length, unknown value, invalid address...)."""
    NETWORK_FAILURE = 0x3
    """A network failure prevented the connection to the final destination."""


class ControlErrorCode(IntEnum):
    """RESET_STREAM application error codes of the control stream when a join fails
    (draft-piraux-intarea-quic-tunnel-session-00 §6.1.3 Join Session TLV)."""

    UNKNOWN_ERROR = 0x0
    UNKNOWN_SESSION_ID = 0x1
    CONFLICTING_STATE = 0x2


TCP_CONNECTION_RESET: Final = 0x0
"""STOP_SENDING / RESET_STREAM code sent when the TCP side got a RST
(draft-piraux-intarea-quic-tunnel-tcp-00 §3 The stream mode)."""


class TunnelError(Exception):
    """The one typed error of the wire decoders: `code` says which draft error it maps to."""

    def __init__(self, code: StreamErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: StreamErrorCode = code
        self.message: str = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


def malformed(message: str) -> TunnelError:
    """A TunnelError for input that cannot be parsed (MALFORMED_TLV)."""
    return TunnelError(StreamErrorCode.MALFORMED_TLV, message)


def protocol_violation(message: str) -> TunnelError:
    """A TunnelError for well-formed input that breaks the drafts' sequencing or role rules."""
    return TunnelError(StreamErrorCode.PROTOCOL_VIOLATION, message)


class DatagramError(TunnelError):
    """A QUIC DATAGRAM payload that is not a valid tunnel-mode or session-mode datagram."""

    def __init__(self, message: str) -> None:
        super().__init__(StreamErrorCode.MALFORMED_TLV, message)
