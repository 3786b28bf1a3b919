"""What a peer can make a connection hold is bounded by its configured windows, whatever the
stream kind, and finished streams leave nothing behind.

The attacker (tests/unit/quic_attacks.py) sends one byte at the edge of the credit it was given
and never the bytes before it: aioquic zero-fills the gap and, left alone, doubles both windows
every round trip (DESIGN.md "Known aioquic facts"). Figures before/after the fix:
experiments/bench_quic_memory.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicTransportParameters,
    pull_quic_transport_parameters,
)
from aioquic.tls import Epoch

from tests.unit.quic_attacks import (
    churn_tcp_streams,
    connection_room,
    container_sizes,
    credit_granted,
    crypto_buffered_bytes,
    edge_byte_attack,
    grown_tables,
    open_stream,
    overrun,
    send_lone_byte,
    stream_buffered_bytes,
)
from tests.unit.quic_harness import Endpoint, Network, Path, make_configs, throwaway_certificate
from tests.unit.tunnel_pairs import add_tunnel_path, attach, tunnel
from tunnel.protocol.connection import TunnelUsageError
from tunnel.protocol.quic_ext import (
    CONNECTION_WINDOW_STREAMS,
    CRYPTO_BUFFER_LIMIT,
    TLV_STREAM_WINDOW,
    TunnelQuicConnection,
)
from tunnel.wire.messages import AccessId, AccessSignal
from tunnel.wire.modes import ALL_ALPN

ROUNDS = 6  # round trips of the attack: aioquic alone would double its windows 6 times
STREAM_WINDOW = 64 * 1024


def _tunnel_pair(alpn: str) -> tuple[Network, Path]:
    net = Network()
    path = add_tunnel_path(net, [alpn])
    net.run(1.0)
    assert tunnel(path.server).mode is not None
    return net, path


def _pair(
    *, stream_mode: bool, max_data: int, max_stream_data: int = STREAM_WINDOW, **server: Any
) -> tuple[Network, Path]:
    """A client (the attacker) and a concentrator (the victim) with TunnelConnections."""
    client_config, server_config = make_configs(["qt"], list(ALL_ALPN))
    server_config.max_data = max_data
    server_config.max_stream_data = max_stream_data
    client = TunnelQuicConnection(configuration=client_config, stream_mode=stream_mode)
    victim = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        stream_mode=stream_mode,
        **server,
    )
    net = Network()
    path = attach(net.add_connection_pair(client, victim))
    net.run(1.0)
    assert tunnel(path.server).stream_mode is stream_mode
    return net, path


def _terminated(endpoint: Endpoint) -> ConnectionTerminated | None:
    closes = [e for e in endpoint.quic_events if isinstance(e, ConnectionTerminated)]
    return closes[0] if closes else None


# -- stream credit -------------------------------------------------------------------------------


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
@pytest.mark.parametrize("victim_side", ["server", "client"])
def test_edge_bytes_on_uni_streams_stay_within_their_fixed_window(
    alpn: str, victim_side: str
) -> None:
    net, path = _tunnel_pair(alpn)
    attacker_end, victim_end = (
        (path.client, path.server) if victim_side == "server" else (path.server, path.client)
    )
    attacker, victim = attacker_end.quic, victim_end.quic
    # every uni stream the victim lets the attacker open (in session mode the first is the
    # control stream, the others Access Report streams; the concentrator sends none of those)
    streams = [open_stream(attacker, unidirectional=True) for _ in range(16)]
    sent = edge_byte_attack(net, attacker, streams, ROUNDS)

    assert stream_buffered_bytes(victim) <= len(streams) * TLV_STREAM_WINDOW
    assert sent == len(streams)  # one byte per stream: never any new credit
    assert credit_granted(victim)["max_stream_data_uni"] == TLV_STREAM_WINDOW
    assert not victim_end.tunnel.closed  # gaps alone deliver nothing to close for


def test_a_byte_beyond_the_uni_credit_is_a_flow_control_error() -> None:
    net, path = _tunnel_pair("qt")
    attacker = path.client.quic
    stream_id = open_stream(attacker, unidirectional=True)
    overrun(attacker, stream_id, TLV_STREAM_WINDOW)  # one past the last byte it may send
    net.run(2.0)
    close = _terminated(path.client)
    assert close is not None and close.error_code == QuicErrorCode.FLOW_CONTROL_ERROR
    assert stream_buffered_bytes(path.server.quic) == 0


@pytest.mark.parametrize(
    ("stream_mode", "max_data", "window"),
    [
        # stream mode: max(max_data, CONNECTION_WINDOW_STREAMS stream windows)
        (True, 64 * 1024, CONNECTION_WINDOW_STREAMS * STREAM_WINDOW),
        # bidirectional streams where none is expected: max_data
        (False, 128 * 1024, 128 * 1024),
    ],
)
def test_edge_bytes_on_bidi_streams_stay_within_the_connection_window(
    stream_mode: bool, max_data: int, window: int
) -> None:
    net, path = _pair(stream_mode=stream_mode, max_data=max_data)
    attacker, victim = path.client.quic, path.server.quic
    assert isinstance(victim, TunnelQuicConnection)
    streams = [open_stream(attacker, unidirectional=False) for _ in range(16)]
    edge_byte_attack(net, attacker, streams, ROUNDS)

    assert stream_buffered_bytes(victim) <= window
    assert victim.unconsumed_bytes() <= window
    granted = credit_granted(victim)
    assert granted["max_data"] == window  # nothing was consumed: no new credit
    assert granted["max_stream_data_bidi"] == STREAM_WINDOW
    assert not tunnel(path.server).closed

    # beyond the connection's credit: FLOW_CONTROL_ERROR
    fresh = next(s for s in streams if attacker._streams[s].sender.highest_offset == 0)
    assert connection_room(attacker) == 0
    overrun(attacker, fresh, STREAM_WINDOW - 1)
    net.run(2.0)
    close = _terminated(path.client)
    assert close is not None and close.error_code == QuicErrorCode.FLOW_CONTROL_ERROR
    assert "connection" in close.reason_phrase


class _Consumer:
    """The application side of the victim in the credit tests: takes every stream's bytes and
    holds those of the streams in `holding` (reporting them, as the stream relay does)."""

    def __init__(self, quic: TunnelQuicConnection, holding: set[int]) -> None:
        self.quic, self.holding = quic, holding
        self.received: dict[int, int] = {}

    def handle_event(self, event: QuicEvent) -> list[object]:
        if isinstance(event, StreamDataReceived):
            sid = event.stream_id
            self.received[sid] = self.received.get(sid, 0) + len(event.data)
            if sid in self.holding:
                self.quic.set_stream_backlog(sid, self.received[sid])
        return []

    def release(self, stream_id: int) -> None:
        self.holding.discard(stream_id)
        self.quic.set_stream_backlog(stream_id, 0)


def test_credit_follows_consumption_at_stream_and_connection_level() -> None:
    """Four streams whose application holds a window each (TCP readers that stopped): their
    streams stop at one window, but what the application holds is not the connection's to
    withhold, so a fifth stream goes to the end at once (it waited for them: cross-stream
    head-of-line blocking); released, a held stream goes to the end too."""
    net, path = _pair(stream_mode=True, max_data=1024, stream_window=STREAM_WINDOW)
    sender, victim = path.client.quic, path.server.quic
    assert isinstance(victim, TunnelQuicConnection)
    held = [sender.get_next_available_stream_id() + 4 * i for i in range(4)]
    consumer = _Consumer(victim, set(held))
    path.server.tunnel = consumer
    total = 4 * STREAM_WINDOW
    for stream_id in held:
        sender.send_stream_data(stream_id, b"x" * total, end_stream=True)
    net.run(3.0)
    assert all(consumer.received[s] == STREAM_WINDOW for s in held)  # one window each
    assert victim.unconsumed_bytes() == 0  # aioquic holds nothing: all delivered in order
    free = held[-1] + 4
    sender.send_stream_data(free, b"x" * total, end_stream=True)
    net.run(10.0, until=lambda: consumer.received.get(free) == total)
    assert consumer.received[free] == total
    assert all(consumer.received[s] == STREAM_WINDOW for s in held)  # still held back

    consumer.release(held[0])
    net.run(10.0, until=lambda: consumer.received.get(held[0]) == total)
    assert consumer.received[held[0]] == total
    assert all(consumer.received[s] == STREAM_WINDOW for s in held[1:])


# -- CRYPTO ------------------------------------------------------------------------------------


def test_a_crypto_gap_after_the_handshake_is_refused() -> None:
    net, path = _tunnel_pair("qt")
    attacker, victim = path.client.quic, path.server.quic
    send_lone_byte(attacker._crypto_streams[Epoch.ONE_RTT].sender, 500_000)
    net.run(2.0)
    close = _terminated(path.client)
    assert close is not None and close.error_code == QuicErrorCode.CRYPTO_BUFFER_EXCEEDED
    assert crypto_buffered_bytes(victim) <= CRYPTO_BUFFER_LIMIT


def test_a_crypto_gap_in_the_first_initial_is_refused() -> None:
    # before any authentication: one datagram would otherwise make the server allocate 500 kB
    client_config, server_config = make_configs(["qt"])
    client = TunnelQuicConnection(configuration=client_config)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    net = Network()
    path = net.add_connection_pair(client, server)  # the ClientHello is queued
    sender = client._crypto_streams[Epoch.INITIAL].sender
    hello_end = sender._buffer_stop
    sender.write(bytes(500_000 - hello_end) + b"\x01")
    sender._pending.subtract(hello_end, 500_000)  # the ClientHello, then one byte at 500 000
    net.run(2.0)
    close = _terminated(path.client)
    assert close is not None and close.error_code == QuicErrorCode.CRYPTO_BUFFER_EXCEEDED
    assert crypto_buffered_bytes(server) <= CRYPTO_BUFFER_LIMIT


def test_a_normal_handshake_with_a_client_certificate_fits_the_crypto_limit() -> None:
    client_config, server_config = make_configs(["qt"])
    client_config.certificate, client_config.private_key = throwaway_certificate("client.test")
    client = TunnelQuicConnection(configuration=client_config)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        request_client_certificate=True,
    )
    net = Network()
    path = net.add_connection_pair(client, server)
    net.run(1.0)
    assert client._handshake_complete and server._handshake_complete
    assert _terminated(path.client) is None


# -- finished streams are forgotten (the stream table never shrank) ---------------------------


def _state_tables(path: Path) -> dict[str, dict[str, int]]:
    return {
        f"{side}.{layer}": container_sizes(obj)
        for side, endpoint in (("client", path.client), ("server", path.server))
        for layer, obj in (("tunnel", endpoint.tunnel), ("quic", endpoint.quic))
    }


def _assert_no_table_grew(before: dict[str, dict[str, int]], path: Path) -> None:
    after = _state_tables(path)
    grown = {name: grown_tables(before[name], sizes, slack=16) for name, sizes in after.items()}
    assert not any(grown.values()), grown


def test_finished_tcp_streams_leave_no_state() -> None:
    net = Network()
    path = add_tunnel_path(net, ["qt"], client_stream_mode=True, server_stream_mode=True)
    net.run(1.0)
    assert churn_tcp_streams(net, path, 100) == 0
    before = _state_tables(path)
    # FIN both ways, Error TLV answers, resets: 1000 of each, 100 at a time
    assert churn_tcp_streams(net, path, 3000) == 0
    _assert_no_table_grew(before, path)
    for endpoint in (path.client, path.server):
        assert tunnel(endpoint)._tcp_streams == {}
        assert endpoint.quic._streams == {}
        assert not tunnel(endpoint).closed
    assert path.client.quic.get_next_available_stream_id() == 4 * 3100


def test_access_report_streams_leave_no_state() -> None:
    net, path = _tunnel_pair("qt")
    client = tunnel(path.client)
    signals = (AccessSignal.AVAILABLE, AccessSignal.UNAVAILABLE)
    first = client.send_access_report(AccessId.THREE_GPP, AccessSignal.AVAILABLE)
    before: dict[str, dict[str, int]] = {}
    for batch in range(21):
        for i in range(100):
            client.send_access_report(AccessId.THREE_GPP, signals[i % 2])
        net.run(5.0, until=lambda: not path.client.quic._streams and not path.server.quic._streams)
        path.server.tunnel_events.clear()
        if batch == 0:
            before = _state_tables(path)
    assert tunnel(path.server).counters.access_reports_received == 2101
    _assert_no_table_grew(before, path)
    assert tunnel(path.server)._uni_streams == {} and path.server.quic._streams == {}
    # an old report, long acknowledged, is still ours: cancelling it does nothing
    client.cancel_access_report(first)
    with pytest.raises(TunnelUsageError):
        client.cancel_access_report(first + 4 * 2101)  # not sent yet


def test_a_late_zero_backlog_report_does_not_bring_a_stream_back() -> None:
    net, path = _pair(stream_mode=True, max_data=1024 * 1024)
    path.server.tunnel = None  # the application is this test
    sender, victim = path.client.quic, path.server.quic
    assert isinstance(victim, TunnelQuicConnection)
    stream_id = sender.get_next_available_stream_id()
    victim.set_stream_backlog(stream_id, 0)  # before the stream exists: remembered
    sender.send_stream_data(stream_id, b"x", end_stream=True)
    net.run(0.5)
    victim.send_stream_data(stream_id, b"", end_stream=True)
    net.run(0.5)
    assert stream_id not in victim._streams  # aioquic is done with it
    victim.forget_stream_backlog(stream_id)
    victim.set_stream_backlog(stream_id, 0)  # a report after the relay finished
    assert victim._tunnel_backlog == {}
    # what the application still holds of a finished stream is kept until it is released
    victim.set_stream_backlog(stream_id, 10)
    assert victim._tunnel_backlog == {stream_id: 10}
    victim.set_stream_backlog(stream_id, 0)
    assert victim._tunnel_backlog == {}


def _announced(quic: TunnelQuicConnection) -> QuicTransportParameters:
    quic.connect(("192.0.2.1", 4433), now=0.0)  # puts them in the ClientHello
    ((_, data),) = quic.tls.handshake_extensions
    return pull_quic_transport_parameters(Buffer(data=data))


def test_windows_are_announced_in_the_transport_parameters() -> None:
    config = QuicConfiguration(is_client=True)
    params = _announced(
        TunnelQuicConnection(configuration=config, stream_mode=True, stream_window=256 * 1024)
    )
    assert params.initial_max_stream_data_uni == TLV_STREAM_WINDOW
    assert params.initial_max_stream_data_bidi_remote == 256 * 1024
    assert params.initial_max_data == CONNECTION_WINDOW_STREAMS * 256 * 1024
    params = _announced(TunnelQuicConnection(configuration=config))
    assert params.initial_max_data == config.max_data  # no stream mode: aioquic's setting
    params = _announced(
        TunnelQuicConnection(configuration=config, connection_window=8 * 1024 * 1024)
    )
    assert params.initial_max_data == 8 * 1024 * 1024
    with pytest.raises(ValueError, match="connection_window"):
        TunnelQuicConnection(configuration=config, connection_window=10)
