"""What the structure-aware fuzzer (testbed/hostile.py, `make fuzz`) found, replayed in memory
against a stream-mode TunnelConnection: each input used to raise inside the concentrator (the
connection was closed with INTERNAL_ERROR and a traceback logged); each must now get the
draft's answer, and nothing may raise."""

from __future__ import annotations

from aioquic.quic.events import StreamReset

from testbed.hostile import HostileQuicConnection, stop_sending_frame, stream_frame
from tests.unit.quic_harness import Network, Path, make_configs
from tunnel.protocol.connection import (
    StreamRejected,
    TcpConnectRequested,
    TunnelConnection,
)
from tunnel.protocol.quic_ext import TunnelQuicConnection
from tunnel.wire.errors import StreamErrorCode

TCP_CONNECT_BAD_LENGTH = bytes.fromhex("0003616263ff00")  # a 3-byte TCP Connect, then End
# TCP Connect to 10.200.0.2 port 80 (v4-mapped), then End
TCP_CONNECT_V4 = bytes.fromhex("0012" + "0050" + "00" * 10 + "ffff" + "0ac80002" + "ff00")


def pair() -> tuple[Network, Path, HostileQuicConnection]:
    net = Network()
    client_config, server_config = make_configs(["qt"])
    client = HostileQuicConnection(configuration=client_config, stream_mode=True)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        stream_mode=True,
    )
    path = net.add_connection_pair(client, server)
    path.server.tunnel = TunnelConnection(server)
    net.run(1.0)
    assert path.server.tunnel.stream_mode
    return net, path, client


def test_malformed_preamble_with_stop_sending_in_the_same_packet() -> None:
    """Finding A: the Error TLV answering a malformed TCP Connect was written on a stream
    aioquic had already reset for the STOP_SENDING that came with it (RuntimeError)."""
    net, path, client = pair()
    stream_id = client.claim_stream_id(unidirectional=False)
    client.inject(*stream_frame(stream_id, 0, TCP_CONNECT_BAD_LENGTH, fin=False))
    client.inject(*stop_sending_frame(stream_id, 0))
    net.run(0.5)
    rejected = [e for e in path.server.tunnel_events if isinstance(e, StreamRejected)]
    assert [e.code for e in rejected] == [StreamErrorCode.MALFORMED_TLV]
    assert not path.server.tunnel.closed


def test_answering_a_connect_the_peer_stopped_meanwhile_writes_nothing() -> None:
    """Finding A': the concentrator's answer (Connect OK, or Error after a failed connect)
    comes after an asynchronous connect(), when the peer may have stopped the stream."""
    for answer in ("accept", "fail"):
        net, path, client = pair()
        tunnel = path.server.tunnel
        stream_id = client.claim_stream_id(unidirectional=False)
        client.inject(*stream_frame(stream_id, 0, TCP_CONNECT_V4, fin=False))
        net.run(0.5)
        assert [type(e) for e in path.server.tunnel_events][-1] is TcpConnectRequested
        client.inject(*stop_sending_frame(stream_id, 0))
        net.run(0.5)
        if answer == "accept":
            tunnel.accept_tcp_stream(stream_id)
        else:
            tunnel.fail_tcp_stream(stream_id, StreamErrorCode.NETWORK_FAILURE)
        net.run(0.5)
        assert not tunnel.closed


def test_error_tlv_alone_on_a_peer_opened_stream_is_a_protocol_violation() -> None:
    """Finding B: Error TLV + End + FIN, no TCP Connect, on a stream the client opened reached
    an assertion (a stream with nothing to answer)."""
    net, path, client = pair()
    stream_id = client.claim_stream_id(unidirectional=False)
    client.inject(*stream_frame(stream_id, 0, bytes.fromhex("02020000ff00"), fin=True))
    net.run(0.5)
    rejected = [e for e in path.server.tunnel_events if isinstance(e, StreamRejected)]
    assert [e.code for e in rejected] == [StreamErrorCode.PROTOCOL_VIOLATION]
    assert not path.server.tunnel.closed
    assert not any(isinstance(e, StreamReset) for e in path.server.quic_events)
