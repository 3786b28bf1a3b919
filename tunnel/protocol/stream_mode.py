"""The stream mode's TCP <-> QUIC stream mapping (draft-piraux-intarea-quic-tunnel-tcp-00 §3 The
stream mode, figure "TCP connection to QUIC stream mapping"), as explicit tables.

A relay joins one TCP connection to one bidirectional QUIC stream, on the client (TCP towards the
application) or on the concentrator (TCP towards the final destination). Each event on one side
is translated into actions on the other side by the draft's two tables, reproduced row by row in
TCP_TO_STREAM and STREAM_TO_TCP.

The draft's tables say what to translate, not when an event is legal. RelayState adds that, by
tracking the two half-directions of the connection separately, so that a half-close is preserved:
after one side sent FIN, the other may keep sending for as long as it likes (the -tcp draft's
example flow, and TCP's own half-close).

    TCP -> stream half ("up"):   bytes the TCP peer sends, written on our QUIC stream
    stream -> TCP half ("down"): bytes arriving on the QUIC stream, written to the TCP peer

Errors: STOP_SENDING and RESET_STREAM sent for a TCP RST carry the application error code 0x00
TCP_CONNECTION_RESET (§3: "QUIC tunnel peers MUST use the application protocol error code 0x00").
An event that cannot happen in the current state raises TunnelError(PROTOCOL_VIOLATION).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from types import MappingProxyType
from typing import Final

from tunnel.wire.errors import TCP_CONNECTION_RESET, StreamErrorCode, TunnelError


class TcpEvent(Enum):
    """What the relay observes on its TCP connection."""

    SYN_RECEIVED = "SYN received"
    DATA_RECEIVED = "data received"
    FIN_RECEIVED = "FIN received"
    RST_RECEIVED = "RST received"


class StreamEvent(Enum):
    """What the relay observes on its QUIC stream."""

    STREAM_OPENED_TLVS_RECEIVED = "stream opened, TLVs received"
    DATA_RECEIVED = "stream data received"
    FIN_RECEIVED = "stream FIN received"
    STOP_SENDING_RECEIVED = "STOP_SENDING received"
    RESET_STREAM_RECEIVED = "RESET_STREAM received"


class StreamAction(Enum):
    """What the relay does on its QUIC stream."""

    OPEN_STREAM_SEND_TLVS = "open stream, send TLVs"
    SEND_DATA = "send stream data"
    SEND_FIN = "send stream FIN"
    SEND_STOP_SENDING = "send STOP_SENDING"
    SEND_RESET_STREAM = "send RESET_STREAM"


class TcpAction(Enum):
    """What the relay does on its TCP connection."""

    SEND_SYN = "send SYN"
    SEND_DATA = "send data"
    SEND_FIN = "send FIN"
    SEND_RST = "send RST"


RESET_ERROR_CODE: Final = TCP_CONNECTION_RESET
"""Application error code of the STOP_SENDING and RESET_STREAM sent for a TCP RST (§3)."""

# The draft's figure tcp-proxy-stream, upper table: a TCP event -> the QUIC stream actions.
TCP_TO_STREAM: Final[Mapping[TcpEvent, tuple[StreamAction, ...]]] = MappingProxyType(
    {
        TcpEvent.SYN_RECEIVED: (StreamAction.OPEN_STREAM_SEND_TLVS,),
        TcpEvent.FIN_RECEIVED: (StreamAction.SEND_FIN,),
        TcpEvent.RST_RECEIVED: (StreamAction.SEND_STOP_SENDING, StreamAction.SEND_RESET_STREAM),
        TcpEvent.DATA_RECEIVED: (StreamAction.SEND_DATA,),
    }
)

# The draft's figure tcp-proxy-stream, lower table: a QUIC stream event -> the TCP actions.
STREAM_TO_TCP: Final[Mapping[StreamEvent, tuple[TcpAction, ...]]] = MappingProxyType(
    {
        StreamEvent.STREAM_OPENED_TLVS_RECEIVED: (TcpAction.SEND_SYN,),
        StreamEvent.FIN_RECEIVED: (TcpAction.SEND_FIN,),
        StreamEvent.STOP_SENDING_RECEIVED: (TcpAction.SEND_RST,),
        StreamEvent.RESET_STREAM_RECEIVED: (TcpAction.SEND_RST,),
        StreamEvent.DATA_RECEIVED: (TcpAction.SEND_DATA,),
    }
)


class Half(Enum):
    """One direction of the relayed connection."""

    UP = "TCP->stream"
    DOWN = "stream->TCP"


class HalfState(Enum):
    """State of one half-direction."""

    IDLE = "idle"
    """Nothing opened yet (both halves are IDLE together)."""
    OPEN = "open"
    """Bytes flow."""
    FINISHED = "finished"
    """A FIN was relayed: no more bytes may come in this direction."""
    RESET = "reset"
    """The connection was aborted while this half was open."""


class _Kind(Enum):
    OPEN = "open"
    DATA = "data"
    FIN = "fin"
    ABORT = "abort"


# Which half an event belongs to, and what kind of event it is. An ABORT names the half whose
# abort it reports (None: the TCP RST, which aborts both halves at once).
_TCP_EVENT_KIND: Final[Mapping[TcpEvent, tuple[_Kind, Half | None]]] = MappingProxyType(
    {
        TcpEvent.SYN_RECEIVED: (_Kind.OPEN, None),
        TcpEvent.DATA_RECEIVED: (_Kind.DATA, Half.UP),
        TcpEvent.FIN_RECEIVED: (_Kind.FIN, Half.UP),
        TcpEvent.RST_RECEIVED: (_Kind.ABORT, None),
    }
)
_STREAM_EVENT_KIND: Final[Mapping[StreamEvent, tuple[_Kind, Half | None]]] = MappingProxyType(
    {
        StreamEvent.STREAM_OPENED_TLVS_RECEIVED: (_Kind.OPEN, None),
        StreamEvent.DATA_RECEIVED: (_Kind.DATA, Half.DOWN),
        StreamEvent.FIN_RECEIVED: (_Kind.FIN, Half.DOWN),
        # the peer no longer reads what we send: our sending half, i.e. TCP->stream
        StreamEvent.STOP_SENDING_RECEIVED: (_Kind.ABORT, Half.UP),
        # the peer abandoned what it sends: our receiving half, i.e. stream->TCP
        StreamEvent.RESET_STREAM_RECEIVED: (_Kind.ABORT, Half.DOWN),
    }
)

# Which half a stream action for a TCP RST stops: STOP_SENDING asks the peer to stop sending
# (stream->TCP), RESET_STREAM abandons what we send (TCP->stream).
_ABORT_ACTION_HALF: Final[Mapping[StreamAction, Half]] = MappingProxyType(
    {StreamAction.SEND_STOP_SENDING: Half.DOWN, StreamAction.SEND_RESET_STREAM: Half.UP}
)


class _Outcome(Enum):
    RELAY = "relay"
    """Translate the event with the draft's table."""
    ABSORB = "absorb"
    """Legal but nothing to do: it raced with an abort we already relayed."""
    VIOLATION = "violation"


# Rules for DATA and FIN on one half, (state, kind) -> (outcome, next state):
#
#   * bytes and FIN are relayed only while the half is OPEN; FIN ends the half (FINISHED), the
#     other half is untouched (half-close);
#   * after FIN, more bytes or a second FIN are a protocol violation;
#   * after an abort (RESET), bytes or FIN still in flight from the other side are absorbed:
#     they crossed our RST / STOP_SENDING / RESET_STREAM and are not the peer's fault;
#   * before the connection is opened, nothing is legal.
_HALF_RULES: Final[Mapping[tuple[HalfState, _Kind], tuple[_Outcome, HalfState]]] = MappingProxyType(
    {
        (HalfState.IDLE, _Kind.DATA): (_Outcome.VIOLATION, HalfState.IDLE),
        (HalfState.IDLE, _Kind.FIN): (_Outcome.VIOLATION, HalfState.IDLE),
        (HalfState.OPEN, _Kind.DATA): (_Outcome.RELAY, HalfState.OPEN),
        (HalfState.OPEN, _Kind.FIN): (_Outcome.RELAY, HalfState.FINISHED),
        (HalfState.FINISHED, _Kind.DATA): (_Outcome.VIOLATION, HalfState.FINISHED),
        (HalfState.FINISHED, _Kind.FIN): (_Outcome.VIOLATION, HalfState.FINISHED),
        (HalfState.RESET, _Kind.DATA): (_Outcome.ABSORB, HalfState.RESET),
        (HalfState.RESET, _Kind.FIN): (_Outcome.ABSORB, HalfState.RESET),
    }
)

# Rules for OPEN and ABORT, on the connection as a whole:
#
#   * OPEN (TCP SYN on the initiating relay, stream opened with TLVs on the other) is legal only
#     when both halves are IDLE, and makes both OPEN;
#   * an ABORT before OPEN is a protocol violation;
#   * an ABORT that concerns one half (STOP_SENDING, RESET_STREAM) is relayed if that half is
#     OPEN, and absorbed once it is FINISHED (all its bytes were relayed) or RESET;
#   * a TCP RST is relayed if any half is OPEN; of the draft's STOP_SENDING + RESET_STREAM, each
#     is sent only if the half it stops is still OPEN (a finished half is left to complete);
#   * a relayed ABORT turns every OPEN half into RESET (TCP's RST and a QUIC stream abort both
#     end the whole connection; aioquic itself answers STOP_SENDING with RESET_STREAM).


class RelayState:
    """The state of one TCP connection <-> QUIC stream relay, see the rules above."""

    def __init__(self) -> None:
        self._halves: dict[Half, HalfState] = {Half.UP: HalfState.IDLE, Half.DOWN: HalfState.IDLE}

    @property
    def up(self) -> HalfState:
        """State of the TCP -> stream direction."""
        return self._halves[Half.UP]

    @property
    def down(self) -> HalfState:
        """State of the stream -> TCP direction."""
        return self._halves[Half.DOWN]

    @property
    def closed(self) -> bool:
        """Neither direction can carry more bytes: the relay can be discarded."""
        return all(s in (HalfState.FINISHED, HalfState.RESET) for s in self._halves.values())

    def on_tcp(self, event: TcpEvent) -> tuple[StreamAction, ...]:
        """The TCP side produced `event`: the actions to take on the QUIC stream."""
        kind, half = _TCP_EVENT_KIND[event]
        if kind is _Kind.ABORT:  # TCP RST: both halves
            if self._all_idle():
                raise self._violation(f"TCP {event.value}", "before the connection was opened")
            actions = tuple(
                a
                for a in TCP_TO_STREAM[event]
                if self._halves[_ABORT_ACTION_HALF[a]] is HalfState.OPEN
            )
            if actions:
                self._abort()
            return actions
        if self._apply(f"TCP {event.value}", kind, half) is _Outcome.ABSORB:
            return ()
        return TCP_TO_STREAM[event]

    def on_stream(self, event: StreamEvent) -> tuple[TcpAction, ...]:
        """The QUIC stream produced `event`: the actions to take on the TCP connection."""
        kind, half = _STREAM_EVENT_KIND[event]
        if self._apply(event.value, kind, half) is _Outcome.ABSORB:
            return ()
        return STREAM_TO_TCP[event]

    # -- internals -------------------------------------------------------------------------

    def _all_idle(self) -> bool:
        return all(s is HalfState.IDLE for s in self._halves.values())

    def _abort(self) -> None:
        for half, state in self._halves.items():
            if state is HalfState.OPEN:
                self._halves[half] = HalfState.RESET

    def _apply(self, what: str, kind: _Kind, half: Half | None) -> _Outcome:
        """Check and apply an OPEN, DATA, FIN or one-half ABORT event."""
        if kind is _Kind.OPEN:
            if not self._all_idle():
                raise self._violation(what, "on a connection that is already open")
            self._halves = {Half.UP: HalfState.OPEN, Half.DOWN: HalfState.OPEN}
            return _Outcome.RELAY
        assert half is not None
        state = self._halves[half]
        if kind is _Kind.ABORT:
            if state is HalfState.IDLE:
                raise self._violation(what, "before the connection was opened")
            if state is not HalfState.OPEN:
                return _Outcome.ABSORB
            self._abort()
            return _Outcome.RELAY
        outcome, next_state = _HALF_RULES[(state, kind)]
        if outcome is _Outcome.VIOLATION:
            reason = (
                "before the connection was opened"
                if state is HalfState.IDLE
                else f"after the {half.value} direction already ended with FIN"
            )
            raise self._violation(what, reason)
        self._halves[half] = next_state
        return outcome

    @staticmethod
    def _violation(what: str, reason: str) -> TunnelError:
        return TunnelError(
            StreamErrorCode.PROTOCOL_VIOLATION, f"stream mode: {what} {reason} is not allowed"
        )
