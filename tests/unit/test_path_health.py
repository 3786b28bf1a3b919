"""The failure detector (tunnel/session/path_health.py) on synthetic loss-recovery states, and
what tunnel/protocol/quic_ext.py reports of a real connection: ACK progress, silence, path
probes (PATH_CHALLENGE from another socket) and the event announcing datagram fates."""

from __future__ import annotations

import pytest

from tests.unit.quic_harness import Network, make_configs
from tunnel.protocol.quic_ext import (
    AckState,
    DatagramFatesReady,
    PathProbeAnswered,
    TunnelQuicConnection,
)
from tunnel.session.path_health import (
    DEAD_MAX,
    SUSPECT_MAX,
    SUSPECT_MIN,
    PathHealth,
    PathMonitor,
    dead_after,
    suspect_after,
)


def state(
    unanswered: float | None = None,
    progress: float | None = None,
    pto: float = 0.2,
) -> AckState:
    return AckState(
        srtt=0.05,
        rttvar=0.01,
        min_rtt=0.05,
        max_ack_delay=0.025,
        probe_timeout=pto,
        last_progress=progress,
        unanswered_since=unanswered,
    )


def test_thresholds_follow_the_probe_timeout_within_bounds() -> None:
    assert suspect_after(state(pto=0.2)) == 0.2
    assert suspect_after(state(pto=0.001)) == SUSPECT_MIN
    assert suspect_after(state(pto=30.0)) == SUSPECT_MAX
    assert dead_after(state(pto=0.2)) == pytest.approx(0.6)
    assert dead_after(state(pto=30.0)) == DEAD_MAX


def test_silence_makes_a_path_suspect_then_dead_and_an_ack_makes_it_alive() -> None:
    monitor = PathMonitor(probe_max=1.0)
    assert monitor.evaluate(state(), 10.0) is None  # nothing in flight: not silent
    silent = state(unanswered=10.0, progress=9.0)
    assert monitor.silence_deadline(silent) == pytest.approx(10.2)
    assert monitor.evaluate(silent, 10.19) is None
    assert monitor.evaluate(silent, 10.2) is PathHealth.SUSPECT
    assert monitor.probe_due(10.2)  # probed at once
    monitor.probe_sent(10.2)
    assert monitor.next_check() == pytest.approx(10.4)  # the next probe, after one interval
    assert monitor.evaluate(silent, 10.5) is None
    assert monitor.evaluate(silent, 10.6) is PathHealth.DEAD  # dead_after from the silence
    assert monitor.suspected == monitor.died == 1
    # probes back off, doubling up to probe_max
    gaps = []
    at = 10.6
    for _ in range(6):
        due = monitor.next_check()
        assert due is not None
        gaps.append(round(due - at, 6))
        at = due
        monitor.probe_sent(at)
    assert gaps == sorted(gaps) and max(gaps) == 1.0
    assert monitor.evaluate(state(unanswered=10.0, progress=at + 0.01), at + 0.01) is (
        PathHealth.ALIVE
    )
    assert monitor.recovered == 1 and monitor.next_check() is None


def test_silence_before_a_reset_is_not_the_new_paths() -> None:
    monitor = PathMonitor(probe_max=1.0)
    monitor.reset(20.0)  # e.g. the connection migrated at 20.0
    old = state(unanswered=19.0)
    assert monitor.silence_deadline(old) == pytest.approx(20.2)
    assert monitor.evaluate(old, 20.1) is None


def test_an_access_probed_from_elsewhere_turns_dead_on_time_alone() -> None:
    monitor = PathMonitor(probe_max=0.5)
    monitor.suspect(5.0, probe_gap=0.1, dead_in=0.3)
    assert monitor.tick(5.29) is None
    assert monitor.tick(5.3) is PathHealth.DEAD
    monitor.alive(5.5)
    assert monitor.health is PathHealth.ALIVE and not monitor.probe_due(9.0)


# -- what quic_ext reports of a real connection -------------------------------------------------


def connected(delay: float = 0.01) -> tuple[Network, TunnelQuicConnection, TunnelQuicConnection]:
    net = Network()
    client_config, server_config = make_configs(["qt"], max_datagram_size=1452)
    path = net.add_path(client_config, server_config, delay=delay)
    net.run(0.5)
    client, server = path.client.quic, path.server.quic
    assert isinstance(client, TunnelQuicConnection) and isinstance(server, TunnelQuicConnection)
    return net, client, server


def test_ack_state_follows_progress_and_silence() -> None:
    net, client, _server = connected()
    net.run(0.5)
    quiet = client.ack_state()
    assert quiet.unanswered_since is None and quiet.srtt == pytest.approx(0.02, abs=0.002)
    assert quiet.probe_timeout >= quiet.srtt + quiet.max_ack_delay
    net.paths[0].set_up(False)  # a blackhole
    sent_at = net.clock.now
    client.send_ping(1)
    net.run(0.2)
    silent = client.ack_state()
    assert silent.unanswered_since == sent_at and silent.last_progress is not None
    assert silent.last_progress < sent_at
    net.paths[0].set_up(True)
    net.run(1.0)
    assert client.ack_state().unanswered_since is None
    assert client.ack_state().last_progress > sent_at  # type: ignore[operator]


def test_fates_are_announced_once_until_taken() -> None:
    net, client, _server = connected()
    for n in range(5):
        client.send_datagram_frame(b"x" * 50, token=n)
    net.run(0.2)
    announced = [e for e in net.paths[0].client.quic_events if isinstance(e, DatagramFatesReady)]
    assert len(announced) == 1
    assert sorted((f.token, f.acked) for f in client.take_datagram_fates()) == [
        (n, True) for n in range(5)
    ]
    client.send_datagram_frame(b"y", token=9)
    net.run(0.2)
    announced = [e for e in net.paths[0].client.quic_events if isinstance(e, DatagramFatesReady)]
    assert len(announced) == 2


def test_a_path_probe_is_answered_on_its_own_address_without_moving_the_connection() -> None:
    """RFC 9000 §9.1: a PATH_CHALLENGE from another local address; the server answers there
    and keeps sending on the path in use. The probe's packet number is hidden from loss
    recovery, so a lost probe costs the path in use nothing."""
    net, client, server = connected()
    cwnd = client._loss.congestion_window
    probe = client.path_probe("wifi", net.clock.now)
    assert probe is not None and len(probe) >= 1200  # padded (§8.2.1)
    server.receive_datagram(probe, ("10.9.9.9", 5555), net.clock.now)
    answers = server.datagrams_to_send(net.clock.now)
    assert [address for _, address in answers] == [("10.9.9.9", 5555)]
    assert server.get_peer_address() == net.paths[0].client.addr  # not moved
    for data, _ in answers:
        client.receive_datagram(data, net.paths[0].server.addr, net.clock.now)
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    assert PathProbeAnswered("wifi") in events
    # lost probes: nothing in flight for them, no loss on the path in use
    for _ in range(3):
        assert client.path_probe("wifi", net.clock.now) is not None
    net.run(1.0)
    assert client._loss.congestion_window >= cwnd
    client.end_path_probe("wifi")
    assert client.path_probe("wifi", net.clock.now) is not None  # a new connection ID
