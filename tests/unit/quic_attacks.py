"""A misbehaving QUIC peer and the victim's memory figures, for tests/unit/test_memory_bounds.py
and experiments/bench_quic_memory.py.

The attacker is an ordinary aioquic endpoint whose stream (or CRYPTO) sender is made to skip
ahead: it sends one byte at a high offset and never the bytes before it, so the receiver must
keep the gap (aioquic zero-fills it with a bytearray). Everything else -- packet protection,
framing, its own flow control -- stays aioquic's, so the victim sees real, valid packets.
"""

from __future__ import annotations

import contextlib
from collections import deque
from ipaddress import IPv4Address
from typing import Any

from aioquic.quic.connection import QuicConnection, stream_is_unidirectional
from aioquic.quic.stream import QuicStreamSender

from tests.unit.quic_harness import Endpoint, Network, Path
from tunnel.protocol.connection import (
    StreamDataReceived,
    StreamReset,
    TcpConnectAccepted,
    TcpConnectRequested,
    TunnelUsageError,
)
from tunnel.wire.errors import StreamErrorCode


def send_lone_byte(sender: QuicStreamSender, offset: int) -> None:
    """Queue one byte at `offset`; the bytes between what was sent before and it never are.

    The sender must have nothing pending (what it sent may still be unacknowledged: the
    harness loses nothing, so nothing will be re-sent from the buffer dropped here)."""
    if len(sender._pending):
        raise ValueError("the sender still has bytes to send")
    sender._buffer = bytearray()
    sender._buffer_start = sender._buffer_stop = offset
    sender.write(b"\x01")


def connection_room(quic: QuicConnection) -> int:
    """Bytes beyond the highest offsets sent so far that the peer's MAX_DATA still allows."""
    return int(quic._remote_max_data - quic._remote_max_data_used)


def open_stream(quic: QuicConnection, unidirectional: bool) -> int:
    stream_id = quic.get_next_available_stream_id(is_unidirectional=unidirectional)
    quic.send_stream_data(stream_id, b"")  # creates the stream, sends nothing
    return stream_id


def edge_byte_round(quic: QuicConnection, stream_ids: list[int]) -> int:
    """Send one byte at the credit edge (stream and connection flow control) of each stream
    that has new credit; returns how many bytes that was."""
    sent = 0
    room = connection_room(quic)
    for stream_id in stream_ids:
        stream = quic._streams.get(stream_id)
        if stream is None:
            continue
        highest = stream.sender.highest_offset
        edge = min(stream.max_stream_data_remote, highest + room)
        if edge > highest:
            send_lone_byte(stream.sender, edge - 1)
            room -= edge - highest
            sent += 1
    return sent


def edge_byte_attack(net: Network, quic: QuicConnection, stream_ids: list[int], rounds: int) -> int:
    """`rounds` round trips of edge_byte_round (each followed by 50 ms of the fake clock, enough
    for the victim's credit update to come back); returns the bytes the attacker sent."""
    sent = 0
    for _ in range(rounds):
        sent += edge_byte_round(quic, stream_ids)
        net.run(0.05)
    return sent


def overrun(quic: QuicConnection, stream_id: int, offset: int) -> None:
    """Send one byte at `offset` whatever credit the peer gave (a flow control violation)."""
    stream = quic._streams[stream_id]
    stream.max_stream_data_remote = max(stream.max_stream_data_remote, offset + 1)
    quic._remote_max_data = max(quic._remote_max_data, quic._remote_max_data_used + offset + 1)
    send_lone_byte(stream.sender, offset)


# -- what the victim holds --------------------------------------------------------------------


def stream_buffered_bytes(quic: QuicConnection) -> int:
    """Bytes aioquic holds for received stream data not yet delivered in order (gaps included)."""
    return sum(len(stream.receiver._buffer) for stream in quic._streams.values())


def crypto_buffered_bytes(quic: QuicConnection) -> int:
    """Bytes held for the TLS handshake: CRYPTO data out of order (gaps included) and the
    partial TLS message aioquic's TLS layer waits to complete."""
    held = sum(len(stream.receiver._buffer) for stream in quic._crypto_streams.values())
    tls: Any = getattr(quic, "tls", None)
    return held + (len(tls._receive_buffer) if tls is not None else 0)


def credit_granted(quic: QuicConnection) -> dict[str, int]:
    """The receive credit `quic` has granted: connection MAX_DATA and the largest
    MAX_STREAM_DATA of each stream kind."""
    uni = [s.max_stream_data_local for i, s in quic._streams.items() if stream_is_unidirectional(i)]
    bidi = [
        s.max_stream_data_local for i, s in quic._streams.items() if not stream_is_unidirectional(i)
    ]
    return {
        "max_data": int(quic._local_max_data.value),
        "max_stream_data_uni": max(uni, default=0),
        "max_stream_data_bidi": max(bidi, default=0),
    }


# -- many short streams (the stream table) ----------------------------------------------------


def _stream_kind(stream_id: int) -> int:
    """0: FIN both ways; 1: the concentrator answers with an Error TLV; 2: the client resets
    after the concentrator accepted."""
    return (stream_id // 4) % 3


def _client_on_event(endpoint: Endpoint, event: object) -> None:
    if isinstance(event, TcpConnectAccepted) and _stream_kind(event.stream_id) == 2:
        endpoint.tunnel.reset_tcp_stream(event.stream_id)


def _server_on_event(endpoint: Endpoint, event: object) -> None:
    tunnel = endpoint.tunnel
    if isinstance(event, TcpConnectRequested):
        if _stream_kind(event.stream_id) == 1:
            tunnel.fail_tcp_stream(event.stream_id, StreamErrorCode.NETWORK_FAILURE)
        else:
            tunnel.accept_tcp_stream(event.stream_id)
    elif isinstance(event, StreamDataReceived) and event.end and _stream_kind(event.stream_id) == 0:
        tunnel.send_stream_data(event.stream_id, b"", end=True)
    elif isinstance(event, StreamReset):
        # what the relay does: a reset ends both directions (-tcp §3)
        with contextlib.suppress(TunnelUsageError):
            tunnel.reset_tcp_stream(event.stream_id)


def churn_tcp_streams(net: Network, path: Path, count: int, batch: int = 100) -> int:
    """Open and finish `count` TCP streams from the client, `batch` at a time, each one of the
    three kinds of _stream_kind in turn; returns how many batches did not end within 10 s of
    the fake clock (0 when all went well). The harness's event lists are emptied after each
    batch so that they do not count as the victim's memory."""
    client, server = path.client, path.server
    client.on_tunnel_event, server.on_tunnel_event = _client_on_event, _server_on_event
    stuck = 0
    for start in range(0, count, batch):
        for _ in range(min(batch, count - start)):
            stream_id = client.tunnel.open_tcp_stream(IPv4Address("192.0.2.1"), 80)
            if _stream_kind(stream_id) != 2:
                client.tunnel.send_stream_data(stream_id, b"x", end=True)
        net.run(10.0, until=lambda: not client.quic._streams and not server.quic._streams)
        stuck += bool(client.quic._streams or server.quic._streams)
        for endpoint in (client, server):
            endpoint.quic_events.clear()
            endpoint.tunnel_events.clear()
    return stuck


def container_sizes(obj: object) -> dict[str, int]:
    """len() of every dict, set, list and deque attribute of `obj` (its per-stream tables among
    them), to compare before and after many streams."""
    return {
        name: len(value)
        for name, value in vars(obj).items()
        if isinstance(value, dict | set | list | deque)
    }


def grown_tables(before: dict[str, int], after: dict[str, int], slack: int) -> dict[str, int]:
    """The containers that grew by more than `slack` entries (name -> size after)."""
    return {name: size for name, size in after.items() if size > before.get(name, 0) + slack}
