"""RFC 9000 §9.4 on real aioquic connections in memory (fake clock): after a migration to
another address the congestion controller and the RTT estimator start again for the new path;
a new port alone (a NAT rebinding) keeps them; what was in flight is still accounted for."""

from __future__ import annotations

from aioquic.quic.connection import QuicNetworkPath
from aioquic.quic.events import DatagramFrameReceived

from tests.unit.quic_harness import Network, Path, make_configs
from tunnel.protocol.bbr import BbrCongestionControl
from tunnel.protocol.quic_ext import TunnelQuicConnection

NEAR, FAR = 0.005, 0.05  # one-way delays: a 10 ms access, then a 100 ms one


def bbr_pair(net: Network) -> Path:
    client_config, server_config = make_configs(["qt"], max_datagram_size=1452)
    client_config.congestion_control_algorithm = "bbr"
    server_config.congestion_control_algorithm = "bbr"
    return net.add_path(client_config, server_config, delay=NEAR)


def exchange(net: Network, path: Path, seconds: float) -> None:
    """Datagrams both ways for `seconds`, so both ends take RTT samples."""
    for _ in range(int(seconds / 0.01)):
        path.client.quic.send_datagram_frame(b"u" * 200)
        path.server.quic.send_datagram_frame(b"d" * 200)
        net.run(0.01)


def move(path: Path, addr: tuple[str, int], delay: float) -> None:
    path.client.addr = addr
    path.up_link.delay = path.down_link.delay = delay


def server_state(path: Path) -> tuple[int, float, float | None]:
    quic = path.server.quic
    assert isinstance(quic, TunnelQuicConnection)
    cc = quic._loss._cc
    assert isinstance(cc, BbrCongestionControl)
    return quic.path_resets, float(quic._loss._rtt_min), cc.rtprop


def test_the_server_starts_congestion_and_rtt_again_when_the_client_moves() -> None:
    net = Network()
    path = bbr_pair(net)
    exchange(net, path, 0.5)
    resets, rtt_min, rtprop = server_state(path)
    assert resets == 0 and rtt_min < 2 * NEAR * 2 and rtprop is not None and rtprop < 0.02
    move(path, ("10.0.9.2", 40000), FAR)  # another access: another address, 100 ms RTT
    exchange(net, path, 1.0)
    resets, rtt_min, rtprop = server_state(path)
    # without the reset both minima stay at the old access's 10 ms (BBR's for 10 s,
    # aioquic's for the connection's life), and BBR's window would be sized for it
    assert resets == 1, resets
    assert rtt_min > 1.9 * FAR and rtprop is not None and rtprop > 1.9 * FAR, (rtt_min, rtprop)


def test_a_new_port_alone_is_a_nat_rebinding_and_keeps_the_state() -> None:
    net = Network()
    path = bbr_pair(net)
    exchange(net, path, 0.5)
    move(path, (path.client.addr[0], path.client.addr[1] + 1), NEAR)
    exchange(net, path, 0.3)
    resets, rtt_min, _ = server_state(path)
    assert resets == 0 and rtt_min < 2 * NEAR * 2


def test_what_was_in_flight_is_still_accounted_for_after_a_reset() -> None:
    """A reset in the middle of a flight (the client moving its socket): the fresh controller
    starts with nothing in flight — the old path's packets do not block the new window — and
    their acknowledgements do not reach it, so its count ends at 0, never below; loss recovery
    still accounts for every packet and the transfer goes on."""
    net = Network()
    client_config, server_config = make_configs(["qt"], max_datagram_size=1452)
    for name in ("cubic", "bbr"):
        client_config.congestion_control_algorithm = name
        path = net.add_path(client_config, server_config, delay=NEAR)
        client = path.client.quic
        assert isinstance(client, TunnelQuicConnection)
        net.run(0.3)
        for n in range(40):
            client.send_datagram_frame(n.to_bytes(2, "big") + b"x" * 1000)
        net.run(0.002)  # a flight has left, none of it acknowledged yet
        old = client._loss._cc
        assert old.bytes_in_flight > 0
        client.reset_path_state()
        fresh = client._loss._cc
        assert fresh is not old and type(fresh) is type(old)
        assert fresh.bytes_in_flight == 0
        assert not client._loss._rtt_initialized
        for n in range(40, 50):
            client.send_datagram_frame(n.to_bytes(2, "big") + b"x" * 1000)
        net.flush()
        assert fresh.bytes_in_flight > 0  # the new path's own packets
        net.run(1.0)
        assert fresh.bytes_in_flight == 0, (name, fresh.bytes_in_flight)
        assert not any(space.sent_packets for space in client._loss.spaces)
        received = [e for e in path.server.quic_events if isinstance(e, DatagramFrameReceived)]
        assert len(received) == 50, (name, len(received))
        assert client.path_resets == 1


def test_the_server_probes_the_new_path_so_what_the_old_one_lost_is_known_in_a_round_trip() -> None:
    """A client that left a silent access: what the server sent there is lost. With nothing
    new to send (stream mode's sender waits for flow-control credit that the lost data holds),
    only an acknowledgement of a newer packet tells loss recovery so (RFC 9002 §6.1). The
    server's reset of the path state sends a PING on the new path, so the loss is declared a
    round trip after the move — not at a probe timeout, which with the RTT estimator just
    reset is twice the initial RTT (200 ms) and backed off."""
    net = Network()
    client_config, server_config = make_configs(["qt"], max_datagram_size=1452)
    path = net.add_path(client_config, server_config, delay=NEAR)
    client, server = path.client.quic, path.server.quic
    assert isinstance(server, TunnelQuicConnection)
    exchange(net, path, 0.3)
    path.set_up(False)  # a blackhole: the flight below never arrives
    for n in range(20):
        server.send_datagram_frame(n.to_bytes(2, "big") + b"d" * 1000)
    net.run(0.03)
    space = server._loss.spaces[-1]
    stranded = set(space.sent_packets)
    assert stranded
    # validated beforehand, as the client's standby probe does (tunnel/agents/client.py): no
    # PATH_CHALLENGE, which would elicit an acknowledgement by itself
    server._network_paths.append(QuicNetworkPath(addr=("10.0.9.2", 40000), is_validated=True))
    move(path, ("10.0.9.2", 40000), NEAR)  # the client moved to another access
    path.set_up(True)
    # the client keeps the connection ID its standby probe used there: no RETIRE_CONNECTION_ID,
    # so no NEW_CONNECTION_ID from the server either, which would also elicit an acknowledgement
    client.send_ping(1)
    net.run(4 * 2 * NEAR)  # four round trips on the new path
    assert server.path_resets == 1
    assert not stranded & set(space.sent_packets), "the old path's flight is still outstanding"
