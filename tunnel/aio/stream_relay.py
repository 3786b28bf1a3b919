"""One TCP connection joined to one QUIC stream (-tcp draft §3 The stream mode), shared by the
client (tunnel/aio/stream_client.py, TCP towards the application) and the concentrator
(tunnel/aio/stream_server.py, TCP towards the final destination).

The translation itself is tunnel/protocol/stream_mode.py's RelayState (the draft's two tables plus
the half-close rules); this module does the I/O:

    TCP data     -> send_stream_data            stream data      -> write to the socket
    TCP FIN      -> stream FIN (half-close)     stream FIN       -> shutdown(SHUT_WR)
    TCP RST      -> STOP_SENDING + RESET_STREAM STOP_SENDING / RESET_STREAM -> RST
                    (code 0 TCP_CONNECTION_RESET)   (SO_LINGER 0 then close)

Backpressure, so that memory per connection stays bounded whatever the speed of either end:
- TCP -> stream: aioquic keeps every byte written on a stream until the peer acknowledges it,
  without limit. Reading the socket pauses while that backlog (quic_ext.stream_send_backlog)
  is above `send_buffer` and resumes below half of it (RelayHub polls paused relays: aioquic
  has no "acknowledged" event).
- stream -> TCP: aioquic grants receive credit as data arrives. The relay reports what it
  still holds in the socket's write buffer (quic_ext TunnelQuicConnection.set_stream_backlog),
  so the peer may send at most one window beyond what the TCP reader consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, cast

from tunnel.protocol.connection import TunnelConnection, TunnelUsageError
from tunnel.protocol.quic_ext import TunnelQuicConnection, stream_send_backlog
from tunnel.protocol.stream_mode import RelayState, StreamAction, StreamEvent, TcpEvent
from tunnel.wire.errors import TunnelError

log = logging.getLogger("qtun.stream")

POLL_INTERVAL: Final = 0.002
"""Seconds between checks of paused relays' send backlogs (the ACK clock we cannot see)."""

Transmit = Callable[[], None]


def set_linger_zero(sock: socket.socket | None) -> None:
    """Make close() send a RST instead of a FIN (SO_LINGER on, timeout 0)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class RelayCounters:
    opened: int = 0
    closed: int = 0
    resets_sent: int = 0  # TCP RST relayed as STOP_SENDING + RESET_STREAM
    resets_received: int = 0  # stream abort relayed as TCP RST
    bytes_up: int = 0  # TCP -> stream
    bytes_down: int = 0  # stream -> TCP
    paused: int = 0  # times reading TCP paused for backpressure

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class RelayHub:
    """What all relays of one side share: coalesced transmits, the poll of paused relays,
    and counters."""

    send_buffer: int
    counters: RelayCounters = field(default_factory=RelayCounters)
    relays: dict[tuple[int, int], TcpRelay] = field(default_factory=dict)
    _paused: set[TcpRelay] = field(default_factory=set)
    _kicked: dict[int, Transmit] = field(default_factory=dict)
    _to_flush: list[TcpRelay] = field(default_factory=list)
    _poll: asyncio.TimerHandle | None = None

    def kick(self, conn: TunnelConnection, transmit: Transmit) -> None:
        """Transmit `conn` at the end of this loop iteration (once, however many calls)."""
        if not self._kicked:
            asyncio.get_running_loop().call_soon(self._flush)
        self._kicked[id(conn)] = transmit

    def _flush(self) -> None:
        kicked, self._kicked = self._kicked, {}
        for transmit in kicked.values():
            transmit()

    def flush_later(self, relay: TcpRelay) -> None:
        """Have relay.flush_down() run at the end of this loop iteration."""
        if not self._to_flush:
            asyncio.get_running_loop().call_soon(self._flush_down)
        self._to_flush.append(relay)

    def _flush_down(self) -> None:
        relays, self._to_flush = self._to_flush, []
        touched: dict[int, tuple[TunnelConnection, Transmit]] = {}
        for relay in relays:
            relay.flush_down()
            if relay.conn is not None:
                touched[id(relay.conn)] = (relay.conn, relay.transmit)
        for conn, transmit in touched.values():
            self.kick(conn, transmit)  # the credit the writes freed (MAX_STREAM_DATA)

    def pause(self, relay: TcpRelay) -> None:
        self._paused.add(relay)
        self.counters.paused += 1
        if self._poll is None:
            self._poll = asyncio.get_running_loop().call_later(POLL_INTERVAL, self._check)

    def forget(self, relay: TcpRelay) -> None:
        self._paused.discard(relay)
        if self.relays.get(relay.key) is relay:
            del self.relays[relay.key]

    def _check(self) -> None:
        self._poll = None
        for relay in list(self._paused):
            if relay.send_backlog() <= self.send_buffer // 2:
                self._paused.discard(relay)
                relay.resume_reading()
        if self._paused:
            self._poll = asyncio.get_running_loop().call_later(POLL_INTERVAL, self._check)

    def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        for relay in list(self.relays.values()):
            relay.abort("shutting down")


class TcpRelay(asyncio.Protocol):
    """The asyncio protocol of one relayed TCP connection (see the module docstring).

    The stream side is attached with `attach(conn, stream_id, transmit)` (the client opens the
    stream when it accepts the socket; the concentrator has the stream first and the socket
    once connected). Stream events go to `on_stream_data`, `on_stream_abort`.
    """

    def __init__(self, hub: RelayHub, window: int, *, hold_until_open: bool = False) -> None:
        """`hold_until_open`: do not read the socket before open() (the concentrator's socket
        connects before the stream is answered; its bytes must follow TCP Connect OK)."""
        self.hub = hub
        self._hold = hold_until_open
        self.window = window
        self.state = RelayState()
        self.transport: asyncio.Transport | None = None
        self.conn: TunnelConnection | None = None
        self.stream_id = -1
        self.transmit: Transmit = lambda: None
        self.finished = False
        self.opened = False  # open() was called: events are relayed, not buffered
        self._reading_paused = False
        self._eof_pending = False  # stream FIN arrived before the socket was connected
        self._early: list[bytes] = []  # stream bytes that arrived before the socket
        self._held_up = b""  # socket bytes read before open()
        self._down: list[bytes] = []  # stream bytes to write at the end of this iteration
        self._down_size = 0
        self._tcp_eof = False
        self._stream_fin = False
        # called at connection_made (the client opens its stream then)
        self.on_made: Callable[[TcpRelay], None] | None = None
        # called once when the relay is finished, however it ends (the concentrator's
        # per-client stream budget is released then)
        self.on_finished: Callable[[TcpRelay], None] | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (id(self.conn), self.stream_id)

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, conn: TunnelConnection, stream_id: int, transmit: Transmit) -> None:
        self.conn, self.stream_id, self.transmit = conn, stream_id, transmit
        self.hub.relays[self.key] = self
        self.hub.counters.opened += 1
        self._report_backlog()

    def open(self, event: TcpEvent | StreamEvent) -> None:
        """The connection is open on both sides (SYN / TLVs): relay from now on."""
        if self.finished:  # the stream ended while the TCP side was being made
            return
        if isinstance(event, TcpEvent):
            self.state.on_tcp(event)
        else:
            self.state.on_stream(event)
        self.opened = True
        held, self._held_up = self._held_up, b""
        if held:
            self.data_received(held)
        if self._tcp_eof:
            self.eof_received()
        if self._hold and self.transport is not None and not self._reading_paused:
            self.transport.resume_reading()
        early, self._early = self._early, []
        eof, self._eof_pending = self._eof_pending, False
        if early or eof:
            self.on_stream_data(b"".join(early), eof)
        self._report_backlog()

    def send_backlog(self) -> int:
        if self.conn is None:
            return 0
        return stream_send_backlog(self.conn.quic, self.stream_id)

    # -- asyncio.Protocol: the TCP side ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        if self.finished:
            # The stream was reset (or its connection closed) while this TCP connection was
            # being made: nobody will relay it, so reset it (tcp draft §3: RESET_STREAM ->
            # RST) rather than leave it open for the life of the program.
            self._reset_tcp()
            return
        # Pause callbacks (below) tell us when the write buffer drained, to grant credit.
        self.transport.set_write_buffer_limits(high=self.window // 2, low=self.window // 8)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._hold and not self.opened:
            self.transport.pause_reading()
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or self.finished:
            return
        if not self.opened:  # read before open() despite pause_reading: keep it for open()
            self._held_up += data
            return
        try:
            self.state.on_tcp(TcpEvent.DATA_RECEIVED)
            conn.send_stream_data(self.stream_id, data)
        except (TunnelError, TunnelUsageError, ValueError) as exc:
            self.abort(f"cannot relay TCP data: {exc}")
            return
        self.hub.counters.bytes_up += len(data)
        self.hub.kick(conn, self.transmit)
        if not self._reading_paused and self.send_backlog() > self.hub.send_buffer:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
            self.hub.pause(self)

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.finished:
            self._reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        conn = self.conn
        self._tcp_eof = True
        if conn is None or self.finished:
            return False
        if not self.opened:  # relayed by open(), after the bytes held with it
            return True
        try:
            if self.state.on_tcp(TcpEvent.FIN_RECEIVED):
                conn.send_stream_data(self.stream_id, b"", end=True)
        except (TunnelError, TunnelUsageError, ValueError) as exc:
            self.abort(f"cannot relay TCP FIN: {exc}")
            return False
        self.hub.kick(conn, self.transmit)
        self._maybe_done()
        return True  # keep the socket open: the other direction may go on (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if exc is not None or not self.state.closed:
            # An error (ECONNRESET...) or a close before both FINs: the TCP peer reset.
            self._relay_tcp_reset()
        self._finish()

    def pause_writing(self) -> None:
        self._report_backlog()

    def resume_writing(self) -> None:
        self._report_backlog()
        if self.conn is not None:
            self.hub.kick(self.conn, self.transmit)

    # -- the stream side ---------------------------------------------------------------------

    def on_stream_data(self, data: bytes, end: bool) -> None:
        if self.finished:
            return
        try:
            if data:
                self.state.on_stream(StreamEvent.DATA_RECEIVED)
                self._write(data)
            if end:
                self.state.on_stream(StreamEvent.FIN_RECEIVED)
                self._write_eof()
        except TunnelError as exc:
            self.abort(str(exc))
            return
        self._report_backlog()
        self._maybe_done()

    def on_stream_abort(self, event: StreamEvent) -> None:
        """STOP_SENDING or RESET_STREAM from the peer: RST the TCP connection, and abort
        our side of the stream too (a TCP RST ends both directions) — unless it concerns a half
        that already finished."""
        if self.finished:
            return
        self.hub.counters.resets_received += 1
        try:
            if not self.state.on_stream(event):
                # absorbed: it stops a half that already finished (STOP_SENDING after our FIN:
                # everything was sent), the other half goes on — the rules RelayState states,
                # which the relay ignored by resetting both (found by a review)
                return
        except TunnelError:
            pass  # before the connection opened: abort all the same
        self._reset_stream()
        self._reset_tcp()
        self._finish()

    def on_buffered(self, data: bytes, end: bool) -> None:
        """Stream bytes before the TCP side is open (the concentrator, connecting)."""
        if data:
            self._early.append(data)
        if end:
            self._eof_pending = True
        self._report_backlog()

    def discard(self) -> None:
        """Forget the relay without touching the stream (it was answered with an error)."""
        self._finish()

    def abort(self, reason: str) -> None:
        """Reset both sides (a relay error, the connection closing, shutdown); a finished
        relay still resets a TCP connection handed to it after it finished."""
        if self.finished:
            self._reset_tcp()
            return
        # DEBUG: one line per stream, which a peer can cause at will (closing a connection
        # with 256 streams); the programs log their refusals and failures themselves.
        log.debug("stream reset stream=%d reason=%s", self.stream_id, reason)
        self._reset_stream()
        self._reset_tcp()
        self._finish()

    # -- internals -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is None:
            self._early.append(data)
            return
        # One QUIC packet's worth per StreamDataReceived: gather a loop iteration's worth and
        # write it with one call (one send syscall instead of one per ~1.2 kB).
        if not self._down:
            self.hub.flush_later(self)
        self._down.append(data)
        self._down_size += len(data)
        self.hub.counters.bytes_down += len(data)

    def flush_down(self) -> None:
        """Write what _write gathered (called once per loop iteration by the hub)."""
        if not self._down:
            return
        data = b"".join(self._down)
        self._down, self._down_size = [], 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self._report_backlog()

    def _write_eof(self) -> None:
        self._stream_fin = True
        if self.transport is None:
            self._eof_pending = True
            return
        self.flush_down()
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:
                # The TCP peer reset while we only wrote (it had sent its FIN, so nothing was
                # read to see the RST): asyncio's shutdown() raises ENOTCONN here (uvloop
                # reports it later through connection_lost). A reset, not a failure of the
                # whole QUIC connection, which is where the error went (found by a review).
                self._relay_tcp_reset()
                self._finish()

    def _report_backlog(self) -> None:
        conn = self.conn
        if conn is None or self.finished or not isinstance(conn.quic, TunnelQuicConnection):
            return  # finished: _finish forgot the stream's entry, a report would bring it back
        held = sum(len(c) for c in self._early) + self._down_size
        if self.transport is not None and not self.transport.is_closing():
            held += self.transport.get_write_buffer_size()
        conn.quic.set_stream_backlog(self.stream_id, held)

    def _maybe_done(self) -> None:
        if self.state.closed and self._tcp_eof and self._stream_fin and self.transport:
            self.transport.close()  # flushes what is buffered, then closes

    def _relay_tcp_reset(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            actions = self.state.on_tcp(TcpEvent.RST_RECEIVED)
        except TunnelError:
            actions = ()
        if not actions:
            return
        self.hub.counters.resets_sent += 1
        # only what the state asks for: after our FIN, STOP_SENDING alone, so that the bytes
        # the TCP peer finished sending before its RST still arrive (RESET_STREAM dropped them)
        self._reset_stream(
            stop_sending=StreamAction.SEND_STOP_SENDING in actions,
            reset=StreamAction.SEND_RESET_STREAM in actions,
        )

    def _reset_stream(self, *, stop_sending: bool = True, reset: bool = True) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        # ValueError: aioquic already discarded the stream (both directions finished).
        with contextlib.suppress(ValueError, TunnelUsageError):
            conn.reset_tcp_stream(self.stream_id, stop_sending=stop_sending, reset=reset)
        self.hub.kick(conn, self.transmit)

    def _reset_tcp(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            set_linger_zero(self.transport.get_extra_info("socket"))
            self.transport.abort()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._early = []
        self._down, self._down_size = [], 0
        self.hub.counters.closed += 1
        self.hub.forget(self)
        conn = self.conn
        if conn is not None and isinstance(conn.quic, TunnelQuicConnection):
            conn.quic.forget_stream_backlog(self.stream_id)
        if self.on_finished is not None:
            self.on_finished(self)
