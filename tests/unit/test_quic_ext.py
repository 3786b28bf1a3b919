"""tunnel.protocol.quic_ext against real aioquic endpoints wired in memory (no sockets)."""

from __future__ import annotations

import pytest
from aioquic.quic.events import ConnectionTerminated, DatagramFrameReceived, HandshakeCompleted

from tests.unit.quic_harness import Network, Path, make_configs, throwaway_certificate
from tunnel.protocol.quic_ext import (
    STREAM_MODE_TP_ID,
    TunnelQuicConnection,
    datagram_budget,
    frame_size_budget,
    largest_datagram_payload,
    packet_datagram_budget,
    peer_certificate,
    pending_datagram_count,
    smoothed_rtt,
    transport_parameter_ids,
)


def connected_path(
    max_datagram_size: int = 1200,
    client_stream_mode: bool = False,
    server_stream_mode: bool = False,
    server_max_datagram_frame_size: int | None = None,
    connection_id_length: int | None = None,
) -> tuple[Network, Path]:
    client_config, server_config = make_configs(
        ["qt"],
        max_datagram_size=max_datagram_size,
        server_max_datagram_frame_size=server_max_datagram_frame_size,
    )
    if connection_id_length is not None:
        client_config.connection_id_length = connection_id_length
        server_config.connection_id_length = connection_id_length
    net = Network()
    path = net.add_path(
        client_config,
        server_config,
        client_stream_mode=client_stream_mode,
        server_stream_mode=server_stream_mode,
    )
    net.run(1.0)
    for endpoint in (path.client, path.server):
        assert any(isinstance(e, HandshakeCompleted) for e in endpoint.quic_events)
    return net, path


def received(path_end: list[object]) -> list[bytes]:
    return [e.data for e in path_end if isinstance(e, DatagramFrameReceived)]


# -- the stream-mode transport parameter ---------------------------------------------


@pytest.mark.parametrize(
    ("client_on", "server_on"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_stream_mode_parameter_is_negotiated_only_when_both_send_it(
    client_on: bool, server_on: bool
) -> None:
    _, path = connected_path(client_stream_mode=client_on, server_stream_mode=server_on)
    client, server = path.client.quic, path.server.quic
    assert isinstance(client, TunnelQuicConnection) and isinstance(server, TunnelQuicConnection)
    assert client.peer_stream_mode is server_on
    assert server.peer_stream_mode is client_on
    assert client.stream_mode_negotiated is (client_on and server_on)
    assert server.stream_mode_negotiated is (client_on and server_on)


def test_parameter_is_appended_with_empty_value_only_when_enabled() -> None:
    client_config, _ = make_configs(["qt"])
    on = TunnelQuicConnection(configuration=client_config, stream_mode=True)
    off = TunnelQuicConnection(configuration=client_config, stream_mode=False)
    for quic in (on, off):
        quic.connect(("10.0.0.1", 4433), now=0.0)
    # what aioquic puts in the TLS ClientHello
    ((_, on_params),) = on.tls.handshake_extensions
    ((_, off_params),) = off.tls.handshake_extensions
    assert STREAM_MODE_TP_ID in transport_parameter_ids(on_params)
    assert STREAM_MODE_TP_ID not in transport_parameter_ids(off_params)
    # id as an 8-byte varint, then a zero length: the value is null (-tcp draft).
    assert on_params.endswith(bytes.fromhex("c0000000 71745f73 00"))
    assert on.peer_stream_mode is None


def test_transport_parameter_ids_rejects_a_truncated_list() -> None:
    with pytest.raises(ValueError, match="truncated"):
        transport_parameter_ids(bytes([0x04, 0x05, 0x01]))


# -- datagram budget -------------------------------------------------------------------


def test_budget_arithmetic_matches_the_packet_layout() -> None:
    # 1200 - (1 + 8 + 2) header - 16 tag = 1173 for the frame: 1 type + 2 length.
    assert packet_datagram_budget(1200, 8) == 1170
    assert packet_datagram_budget(1452, 8) == 1422
    assert packet_datagram_budget(1200, 20) == 1158
    # the length varint shrinks to one byte below 64
    assert largest_datagram_payload(65) == 63
    assert largest_datagram_payload(66) == 63
    assert largest_datagram_payload(67) == 64
    assert frame_size_budget(None) == 0
    assert frame_size_budget(65536) == 65531


@pytest.mark.parametrize(
    ("max_datagram_size", "cid_length", "frame_limit"),
    [(1200, 8, None), (1452, 8, None), (1200, 4, None), (1350, 20, None), (1452, 8, 600)],
)
def test_budget_bytes_go_through_and_budget_plus_one_stalls_aioquic(
    max_datagram_size: int, cid_length: int, frame_limit: int | None
) -> None:
    net, path = connected_path(
        max_datagram_size=max_datagram_size,
        connection_id_length=cid_length,
        server_max_datagram_frame_size=frame_limit,
    )
    quic = path.client.quic
    budget = datagram_budget(quic)
    expected = packet_datagram_budget(max_datagram_size, cid_length)
    if frame_limit is not None:
        expected = min(expected, frame_size_budget(frame_limit))
    assert budget == expected

    quic.send_datagram_frame(b"\xaa" * budget)
    net.run(0.2)
    assert received(path.server.quic_events) == [b"\xaa" * budget]
    assert pending_datagram_count(quic) == 0

    if frame_limit is not None:
        # Above the peer's max_datagram_frame_size aioquic sends it anyway and the
        # peer closes the whole connection.
        quic.send_datagram_frame(b"\xbb" * (budget + 1))
        net.run(0.5)
        closes = [e for e in path.client.quic_events if isinstance(e, ConnectionTerminated)]
        assert closes and closes[0].reason_phrase == "Unexpected DATAGRAM frame"
        return

    # One byte more never leaves, and blocks every later datagram behind it: this
    # is why TunnelConnection checks the budget before aioquic.
    quic.send_datagram_frame(b"\xbb" * (budget + 1))
    quic.send_datagram_frame(b"small")
    net.run(1.0)
    assert received(path.server.quic_events) == [b"\xaa" * budget]
    assert pending_datagram_count(quic) == 2


def test_budget_is_zero_before_the_peer_parameters_and_without_datagram_support() -> None:
    client_config, _ = make_configs(["qt"])
    assert datagram_budget(TunnelQuicConnection(configuration=client_config)) == 0
    # server does not accept DATAGRAM frames
    client_config, server_config = make_configs(["qt"])
    server_config.max_datagram_frame_size = None
    net = Network()
    path = net.add_path(client_config, server_config)
    net.run(1.0)
    assert datagram_budget(path.client.quic) == 0
    assert datagram_budget(path.server.quic) > 0


def test_smoothed_rtt_follows_the_link_delay() -> None:
    client_config, server_config = make_configs(["qt"])
    net = Network()
    path = net.add_path(client_config, server_config, delay=0.040)
    assert smoothed_rtt(path.client.quic) is None
    net.run(2.0)
    for _ in range(20):
        path.client.quic.send_ping(1)
        net.run(0.2)
    rtt = smoothed_rtt(path.client.quic)
    assert rtt is not None and 0.079 <= rtt <= 0.110


# -- client certificate (for tunnel.policy.client_auth) ----------------------------------------


@pytest.mark.parametrize("request_certificate", [True, False])
def test_server_reads_the_client_certificate_only_when_it_asked(request_certificate: bool) -> None:
    client_config, server_config = make_configs(["qt"])
    client_cert, client_key = throwaway_certificate("client.test")
    client_config.certificate, client_config.private_key = client_cert, client_key
    client = TunnelQuicConnection(configuration=client_config)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        request_client_certificate=request_certificate,
    )
    assert peer_certificate(server) == (None, [])
    net = Network()
    path = net.add_connection_pair(client, server)
    net.run(1.0)
    assert any(isinstance(e, HandshakeCompleted) for e in path.server.quic_events)
    certificate, chain = peer_certificate(server)
    if request_certificate:
        assert certificate == client_cert and chain == []
    else:
        assert certificate is None
    # the client always sees the concentrator's certificate
    assert peer_certificate(client)[0] == throwaway_certificate()[0]
