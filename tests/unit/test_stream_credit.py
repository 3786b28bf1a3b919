"""tunnel.protocol.quic_ext's stream credit hook: a receiver that does not consume stops the sender
after one window (aioquic alone would keep doubling the credit), consuming reopens it, and
stream_send_backlog reports what the peer has not acknowledged."""

from __future__ import annotations

from aioquic.quic.events import QuicEvent, StreamDataReceived

from tests.unit.quic_harness import Network, make_configs
from tunnel.protocol.quic_ext import TunnelQuicConnection, stream_send_backlog

WINDOW = 64 * 1024
TOTAL = 2 * 1024 * 1024


def _pair(window: int = WINDOW) -> tuple[Network, TunnelQuicConnection, TunnelQuicConnection]:
    client_config, server_config = make_configs(["qt"])
    client_config.max_stream_data = window
    server_config.max_stream_data = window
    net = Network()
    path = net.add_path(client_config, server_config)
    net.run(1.0)
    client, server = path.client.quic, path.server.quic
    assert isinstance(client, TunnelQuicConnection) and isinstance(server, TunnelQuicConnection)
    return net, client, server


class _Hoarder:
    """Stands in for a relay whose TCP reader reads nothing: it keeps every byte it is
    given and says so to the connection as each one arrives (the harness calls
    handle_event for each QUIC event before transmitting)."""

    def __init__(self, quic: TunnelQuicConnection, stream_id: int) -> None:
        self.quic, self.stream_id, self.held = quic, stream_id, 0

    def handle_event(self, event: QuicEvent) -> list[object]:
        if isinstance(event, StreamDataReceived) and event.stream_id == self.stream_id:
            self.held += len(event.data)
            self.quic.set_stream_backlog(self.stream_id, self.held)
        return []


def _received(server: TunnelQuicConnection, stream_id: int) -> int:
    return server._streams[stream_id].receiver.starting_offset()


def test_withheld_credit_stops_the_sender_after_one_window() -> None:
    net, client, server = _pair()
    stream_id = client.get_next_available_stream_id()
    hoarder = _Hoarder(server, stream_id)
    net.paths[0].server.tunnel = hoarder
    server.set_stream_backlog(stream_id, 0)  # before the stream's first byte arrives
    client.send_stream_data(stream_id, b"x" * TOTAL)
    net.run(2.0)
    received = _received(server, stream_id)
    # at most the initial window plus nothing more: the application consumed nothing
    assert received <= WINDOW
    assert server._streams[stream_id].max_stream_data_local <= WINDOW
    assert stream_send_backlog(client, stream_id) == TOTAL - received > 0

    # the application consumes everything it was given (and then nothing more): credit
    # opens by one window
    hoarder.held = 0
    server.set_stream_backlog(stream_id, 0)
    net.run(2.0)
    after = _received(server, stream_id)
    assert received < after <= received + WINDOW


def test_consuming_as_it_arrives_delivers_everything() -> None:
    net, client, server = _pair()
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"x" * TOTAL, end_stream=True)
    net.run(0.05, until=lambda: stream_id in server._streams)
    server.set_stream_backlog(stream_id, 0)
    net.run(10.0, until=lambda: _received(server, stream_id) == TOTAL)
    assert _received(server, stream_id) == TOTAL
    net.run(1.0)
    assert stream_send_backlog(client, stream_id) == 0
    assert server._streams.get(stream_id) is None or (
        server._streams[stream_id].max_stream_data_local <= TOTAL + WINDOW
    )


def test_without_the_hook_aioquic_lets_everything_through() -> None:
    # the reason for the hook: nobody consumes, yet aioquic keeps granting credit
    net, client, server = _pair()
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"x" * TOTAL)
    net.run(5.0)
    assert _received(server, stream_id) == TOTAL


def test_negative_backlog_is_refused() -> None:
    _net, _client, server = _pair()
    try:
        server.set_stream_backlog(0, -1)
    except ValueError as exc:
        assert "held" in str(exc)
    else:
        raise AssertionError("negative backlog accepted")


def test_unknown_stream_has_no_send_backlog() -> None:
    _net, client, _server = _pair()
    assert stream_send_backlog(client, 400) == 0


def test_max_streams_bidi_is_announced_and_enforced() -> None:
    client_config, server_config = make_configs(["qt"])
    net = Network()
    client = TunnelQuicConnection(configuration=client_config)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        max_streams_bidi=3,
    )
    net.add_connection_pair(client, server)
    net.run(1.0)
    opened = []
    for _ in range(5):
        stream_id = client.get_next_available_stream_id()
        client.send_stream_data(stream_id, b"hello")
        opened.append(stream_id)
    net.run(1.0)
    # the client may open only 3 streams: the others wait (STREAMS_BLOCKED) in aioquic
    assert sorted(server._streams) == opened[:3]


def test_stream_window_sets_the_initial_credit() -> None:
    client_config, server_config = make_configs(["qt"])
    net = Network()
    client = TunnelQuicConnection(configuration=client_config)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        stream_window=32 * 1024,
    )
    net.add_connection_pair(client, server)
    net.run(1.0)
    stream_id = client.get_next_available_stream_id()
    server.set_stream_backlog(stream_id, 0)
    net.paths[0].server.tunnel = _Hoarder(server, stream_id)
    client.send_stream_data(stream_id, b"x" * TOTAL)
    net.run(2.0)
    assert _received(server, stream_id) == 32 * 1024
