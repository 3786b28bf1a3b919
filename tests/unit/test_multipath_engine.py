"""The multipath engine (issue 12) end to end in memory, on the fake clock: the client agent and
the real concentrator core over real QUIC connections (tests/unit/client_world.py), accesses
with delays, rates and seeded loss. Failure detection from ACK silence at both ends, reinjection
with the same Packet Tag, loss hiding on one lossy path, the earliest-arrival scheduler, and the
switches that turn each mechanism off. Behaviour is asserted, never performance figures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path as FilePath
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP

from testbed.hostile import client_configuration
from tests.unit.client_world import CoreConcentrator, World, client_config
from tests.unit.concentrator_harness import concentrator_config, lab_certs
from tunnel.agents.client import ClosePath, Migrate
from tunnel.protocol.connection import TunnelConnection
from tunnel.wire.messages import AccessId, End, TcpConnect

__all__ = ["lab_certs"]  # the fixture

ALICE_V4, SERVER_V4 = "10.8.0.2", "10.200.1.2"  # alice's static address (concentrator_harness)
PROBE = "limits.probe_interval=0.2"


def up(n: int, size: int = 0) -> bytes:
    """Alice's n-th packet to the server (an echo request, `size` bytes of payload)."""
    return bytes(
        IP(src=ALICE_V4, dst=SERVER_V4, id=n % 65536) / ICMP(type=8, seq=n) / (b"u" * size)
    )


def down(n: int, size: int = 0) -> bytes:
    return bytes(
        IP(src=SERVER_V4, dst=ALICE_V4, id=n % 65536) / ICMP(type=0, seq=n) / (b"d" * size)
    )


def core_world(
    certs: FilePath,
    mode: str = "session",
    accesses: Sequence[str] = ("wifi", "5g"),
    settings: Sequence[str] = (),
    core_settings: Sequence[str] = (),
    delays: dict[str, float] | None = None,
) -> tuple[World, CoreConcentrator]:
    """Alice's client agent and the real concentrator core, connected (and joined)."""
    config = client_config(mode, accesses, PROBE, *settings)
    core = CoreConcentrator(concentrator_config(certs, *core_settings), now=1000.0)
    alpn = ["qt-session" if mode == "session" else "qt"]
    alice = client_configuration(certs / "ca.pem", alpn, certs / "alice.pem", certs / "alice.key")
    world = World(config, concentrator=core, client_quic_config=alice)
    for name, delay in (delays or {"5g": 0.02}).items():
        if name in world.accesses:
            world.accesses[name].up.delay = world.accesses[name].down.delay = delay
    world.start()
    world.run(2.0)
    assert all(
        world.agent.path_on(name) is not None
        for name in accesses[: 1 if mode == "tunnel" else None]
    )
    return world, core


def access_entry(world: World, name: str) -> dict[str, Any]:
    (entry,) = [a for a in world.agent.status()["accesses"] if a["name"] == name]
    return dict(entry)


def connection_entry(core: CoreConcentrator, access: str) -> dict[str, Any]:
    (entry,) = [c for c in core.client_status()["connections"] if c["access_id"] == access]
    return dict(entry)


class Traffic:
    """Packets both ways through the world, `per_step` each way every `step` seconds."""

    def __init__(self, world: World, core: CoreConcentrator, size: int = 0) -> None:
        self.world, self.core, self.size = world, core, size
        self.up: list[bytes] = []
        self.down: list[bytes] = []

    def run(
        self, steps: int, per_step: int = 4, step: float = 0.005, downlink: bool = True
    ) -> None:
        world = self.world
        for _ in range(steps):
            first = len(self.up)
            ups = [up(first + i, self.size) for i in range(per_step)]
            self.up += ups
            world.from_tun(ups)
            if downlink:
                downs = [down(first + i, self.size) for i in range(per_step)]
                self.down += downs
                self.core.from_tun(downs, world.now)
            world.run(step)

    def delivered_down(self) -> list[bytes]:
        wanted = set(self.down)
        return [packet for packet in self.world.tun if packet in wanted]


# -- failure detection, reinjection, duplication (session mode, both ends) -------------------------


def test_session_blackhole_detected_at_both_ends_in_rtt_time_and_everything_arrives_once_in_order(
    lab_certs: FilePath,
) -> None:
    """WiFi goes dark mid-transfer (link up, nothing gets through). Both ends notice it from the
    ACK silence of their own connection within a probe timeout; what was in flight on WiFi is
    re-sent over 5G with the same Packet Tag and new packets are doubled up while WiFi is
    suspect, then WiFi is dead (reported) and unused. Every packet arrives, once, in order, in
    both directions; copies that arrived twice were dropped by the receivers' reorder buffers.
    Healed, WiFi answers the PINGs that kept probing it and carries traffic again."""
    world, core = core_world(lab_certs)
    traffic = Traffic(world, core)
    traffic.run(40)
    world.blackhole("wifi", True)
    traffic.run(30)  # 150 ms: well below the liveness probe's 3 x 0.2 s
    wifi, conc_wifi = access_entry(world, "wifi"), connection_entry(core, "wifi")
    assert wifi["health"] in ("suspect", "dead") and conc_wifi["health"] in ("suspect", "dead")
    traffic.run(70)
    world.run(1.0)
    # in order and once: reinjected copies and duplicates were dropped by the reorder buffers
    assert core.tun == traffic.up
    assert traffic.delivered_down() == traffic.down
    wifi, conc_wifi = access_entry(world, "wifi"), connection_entry(core, "wifi")
    assert wifi["health"] == conc_wifi["health"] == "dead" and not wifi["available"]
    for counters in (wifi["counters"], conc_wifi["counters"]):
        assert counters["suspected"] == counters["died"] == 1
        assert counters["reinjected"] > 0 and counters["duplicated"] > 0
        assert counters["resend_too_late"] == 0
    duplicates = (
        world.agent.status()["reorder"]["duplicate"] + core.client_status()["reorder"]["duplicate"]
    )
    assert duplicates > 0
    assert core.client_status()["accesses_available"]["wifi"] is False  # its Access Report
    # healed: the backed-off PINGs are answered at both ends
    world.blackhole("wifi", False)
    world.run(2.0)
    assert access_entry(world, "wifi")["health"] == connection_entry(core, "wifi")["health"]
    assert (
        access_entry(world, "wifi")["health"] == "alive"
        and access_entry(world, "wifi")["available"]
    )
    before = connection_entry(core, "wifi")["counters"]["packets_in"]
    traffic.run(10, downlink=False)
    world.run(0.2)
    assert connection_entry(core, "wifi")["counters"]["packets_in"] >= before + 40  # failover: WiFi
    assert world.of(ClosePath) == []


def test_a_link_down_strands_what_was_in_flight_on_it_and_it_is_resent_at_once(
    lab_certs: FilePath,
) -> None:
    """WiFi's carrier goes (the client is told): its Access Report reaches the concentrator
    over 5G in one one-way delay, and what the concentrator had in flight on WiFi is re-sent
    over 5G then — not after the failure detector or loss recovery gave up on it, while the
    client's reorder buffer held every later packet behind those tags. Both ends re-send
    their side before any ACK silence made WiFi suspect."""
    world, core = core_world(lab_certs, delays={"wifi": 0.005, "5g": 0.010})
    traffic = Traffic(world, core, size=1000)
    traffic.run(40, per_step=2, step=0.002)
    world.set_link("wifi", False)
    traffic.run(15, per_step=2, step=0.002)  # 30 ms: the report has arrived, no PTO yet
    conc_wifi, wifi = connection_entry(core, "wifi"), access_entry(world, "wifi")
    assert core.client_status()["accesses_available"]["wifi"] is False
    assert conc_wifi["health"] == "alive" and conc_wifi["counters"]["suspected"] == 0
    assert conc_wifi["counters"]["reinjected"] > 0  # on the report
    assert wifi["counters"]["reinjected"] > 0  # on the link event, at the client
    traffic.run(20, per_step=2, step=0.002)
    world.run(0.5)
    assert traffic.delivered_down() == traffic.down
    assert core.tun == traffic.up


def test_what_a_link_down_stranded_is_re_sent_oldest_first_ahead_of_new_packets(
    lab_certs: FilePath,
) -> None:
    """Session mode, 10 Mbit/s down over WiFi (shaped, 5G idle): WiFi's carrier goes. What
    was in flight on it is re-sent on 5G ahead of the new packets and in the order it was
    first sent, so the client's reorder buffer fills its gaps from the front: nothing waits
    behind a hole (a re-send queued in reverse made every packet wait a round trip for the
    oldest one, the last to leave)."""
    world, core = core_world(lab_certs, delays={"wifi": 0.005, "5g": 0.010})
    world.accesses["wifi"].shape(rate=50e6 / 8, queue_bytes=1000 * 1500)
    world.accesses["5g"].shape(rate=100e6 / 8, queue_bytes=2000 * 1500)
    world.run(1.0)
    traffic = Traffic(world, core, size=1200)
    traffic.run(300, per_step=1, step=0.001, downlink=True)
    world.set_link("wifi", False)
    traffic.run(60, per_step=1, step=0.001, downlink=True)
    world.run(0.5)
    assert connection_entry(core, "wifi")["counters"]["reinjected"] > 1
    assert world.agent.status()["reorder"]["reordered"] == 0
    assert traffic.delivered_down() == traffic.down


def test_tunnel_mode_validates_the_standby_access_so_a_migration_sends_at_once(
    lab_certs: FilePath,
) -> None:
    """Tunnel mode, connection on WiFi: the client probes 5G once from a socket of its own
    (PATH_CHALLENGE), so the concentrator has validated that address before a migration needs
    it. On WiFi's link-down the connection takes that socket, and the concentrator sends on it
    at once, without the round trip of validation (and its three-times-received limit) a new
    address would cost (RFC 9000 §8.1, §9.3)."""
    world, core = core_world(lab_certs, mode="tunnel", delays={"wifi": 0.005, "5g": 0.010})
    world.run(1.0)  # the probe waits for a spare connection ID (NEW_CONNECTION_ID)
    (conn,) = world.live_conns()
    standby = conn.probes["5g"]
    assert world.agent.status()["counters"]["standby_probes_sent"] == 1
    validated = {p.addr: p.is_validated for p in conn.server._network_paths}
    assert validated[standby] is True
    traffic = Traffic(world, core, size=1000)
    traffic.run(20, per_step=2, step=0.002)
    world.set_link("wifi", False)
    assert [m.target.name for m in world.of(Migrate)] == ["5g"] and conn.socket == standby
    sent = len(traffic.down)
    traffic.run(15, per_step=2, step=0.002)  # 30 ms: without the validation, about 40
    # the concentrator sends the new packets over 5G without waiting for a validation
    assert conn.server._network_paths[0].addr == standby
    assert [p for p in traffic.delivered_down() if p in traffic.down[sent:]]
    world.run(0.5)
    assert set(traffic.delivered_down()) == set(traffic.down)


def test_a_receive_only_tunnel_mode_client_sees_a_blackhole_from_its_own_ack_silence(
    lab_certs: FilePath,
) -> None:
    """Tunnel mode, a download only (the client sends nothing but ACKs): the client keeps a
    PING in flight once per round trip (RFC 9000 §13.2.4), so a WiFi blackhole shows as ACK
    silence and the client moves the connection to 5G within about a probe timeout — not at
    its next liveness PING, which here would come only 2 s later."""
    world, core = core_world(
        lab_certs,
        mode="tunnel",
        settings=["limits.probe_interval=2"],
        delays={"wifi": 0.005, "5g": 0.010},
    )
    traffic = Traffic(world, core)
    for n in range(100):  # 0.5 s of downlink only
        traffic.down.append(down(n))
        core.from_tun([traffic.down[-1]], world.now)
        world.run(0.005)
    world.blackhole("wifi", True)
    blackholed = world.now
    for n in range(100, 200):
        traffic.down.append(down(n))
        core.from_tun([traffic.down[-1]], world.now)
        world.run(0.005)
    assert [m.target.name for m in world.of(Migrate)] == ["5g"]
    assert world.times_of(Migrate)[0] - blackholed < 0.5
    world.run(0.5)
    assert set(traffic.delivered_down()) == set(traffic.down)


def test_a_stream_mode_download_sees_a_blackhole_from_its_own_ack_silence(
    lab_certs: FilePath,
) -> None:
    """Stream mode: the client receives a TCP download as stream bytes, not packets. They
    keep the path answerable as packets do (a PING per round trip), so a WiFi blackhole moves
    the connection within about a probe timeout, not at the next liveness PING (2 s here)."""
    settings = [
        "limits.probe_interval=2",
        "stream.enabled=true",
        'stream.intercept=["10.200.0.0/16"]',
    ]
    world, _core = core_world(
        lab_certs,
        mode="tunnel",
        settings=settings,
        core_settings=["stream.enabled=true"],
        delays={"wifi": 0.005, "5g": 0.010},
    )
    (conn,) = world.live_conns()
    server = conn.server
    stream_id = 1  # a stream of the concentrator's (as the -tcp draft's reversed flow opens)
    # its TLVs first (more than 4 KiB of anything else before End is refused)
    preamble = TcpConnect(IPv4Address("10.200.1.2"), 80).encode() + End().encode()
    server.send_stream_data(stream_id, preamble)
    for _ in range(100):  # 0.5 s of download only
        server.send_stream_data(stream_id, b"d" * 1000)
        world.run(0.005)
    world.blackhole("wifi", True)
    blackholed = world.now
    for _ in range(100):
        server.send_stream_data(stream_id, b"d" * 1000)
        world.run(0.005)
    assert [m.target.name for m in world.of(Migrate)] == ["5g"]
    assert world.times_of(Migrate)[0] - blackholed < 0.5


def downlink_on_wifi(world: World, core: CoreConcentrator) -> tuple[int, Callable[[], bool]]:
    """0.3 s of downlink only on WiFi's connection: the packets sent so far, and whether a
    PING (or anything ack-eliciting) of the client's is unanswered now."""
    path = world.up_path("wifi")
    assert path.tunnel is not None
    tunnel = path.tunnel

    def pinging() -> bool:
        state = tunnel.ack_state()
        return state is not None and state.unanswered_since is not None

    n = 0
    for _ in range(60):
        core.from_tun([down(n)], world.now)
        n += 1
        world.run(0.005)
    return n, pinging


def test_a_blackhole_just_after_the_clients_ping_was_acknowledged_is_still_seen(
    lab_certs: FilePath,
) -> None:
    """The race behind 300-600 ms blackhole gaps on the testbed: the client's keep-answerable
    PING is acknowledged, and at that instant WiFi starts losing everything, in flight too.
    Nothing arrives any more to prompt the next PING; the one owed since the last arrival
    goes out by the timer all the same, so the blackhole shows as ACK silence within about
    a probe timeout instead of at the next liveness PING (2 s here)."""
    world, core = core_world(
        lab_certs,
        mode="tunnel",
        settings=["limits.probe_interval=2"],
        delays={"wifi": 0.005, "5g": 0.010},
    )
    n, pinging = downlink_on_wifi(world, core)
    seen_ping = acked = False
    for _ in range(200):  # on, until a PING of the client's went out and was acknowledged
        core.from_tun([down(n)], world.now)
        n += 1
        if not seen_ping:
            world.run(0.005, until=pinging)
            seen_ping = pinging()
        else:
            world.run(0.005, until=lambda: not pinging())
            if acked := not pinging():
                break
    assert acked
    world.accesses["wifi"].cut(True, flush=True)  # a blackhole, the link stays up
    blackholed = world.now
    for _ in range(200):
        core.from_tun([down(n)], world.now)
        n += 1
        world.run(0.005)
    assert [m.target.name for m in world.of(Migrate)] == ["5g"]
    assert world.times_of(Migrate)[0] - blackholed < 0.5


def test_an_owed_ping_backs_off_while_the_only_access_stays_silent(lab_certs: FilePath) -> None:
    """The PING an arrival is owed waits for the one in flight to be answered: a look a round
    trip later, then doubling waits while nothing arrives. Before, with WiFi the only access
    and blackholed just after a PING left, the agent looked every round trip (10 ms) until
    the connection ended (found by a review): 306 timer wake-ups in these 3 s, now 16."""
    world, core = core_world(
        lab_certs,
        mode="tunnel",
        accesses=("wifi",),
        settings=["limits.probe_interval=2"],
        delays={"wifi": 0.005},
    )
    path = world.up_path("wifi")
    n, pinging = downlink_on_wifi(world, core)
    for _ in range(200):  # on, until a PING of the client's is in flight
        core.from_tun([down(n)], world.now)
        n += 1
        world.run(0.005, until=pinging)
        if pinging():
            break
    assert pinging()
    core.from_tun([down(n)], world.now)  # an arrival while it is: a PING is owed
    world.blackhole("wifi", True)
    wakeups: list[float] = []
    handle_timer = world.agent.handle_timer

    def counted(now: float) -> None:
        wakeups.append(now)
        handle_timer(now)

    world.agent.handle_timer = counted  # type: ignore[method-assign]
    world.run(3.0)
    assert world.agent.path_on("wifi") is path  # still its connection (no other access)
    # the owed look after 10, 20, 40 ... ms, at most a probe interval; the probe's own
    assert 0 < len(wakeups) < 30


def test_a_reinjection_is_taken_by_a_path_whose_queue_is_full(lab_certs: FilePath) -> None:
    """Session mode offered more than both accesses carry (WiFi 10 Mbit/s with 5 % loss, 5G
    20, ~49 offered): every datagram queue is at its cap, yet what WiFi loses is re-sent on
    5G — a re-send jumps the queue and its cap — never refused for want of a path, which
    would leave the client's reorder buffer waiting on that tag for its whole timeout."""
    world, core = core_world(
        lab_certs,
        settings=["scheduler=earliest"],
        core_settings=["scheduler=earliest"],
        delays={"wifi": 0.005, "5g": 0.010},
    )
    world.accesses["wifi"].shape(rate=10e6 / 8, loss=0.05, queue_bytes=100 * 1500)
    world.accesses["5g"].shape(rate=20e6 / 8, queue_bytes=200 * 1500)
    world.run(0.5)
    sent = 0
    for _ in range(500):
        core.from_tun([down(sent + n, 1200) for n in range(5)], world.now)
        sent += 5
        world.run(0.001)
    wifi = connection_entry(core, "wifi")
    # the queues were at their cap: new packets found no path that would take them
    assert core.client_status()["counters"]["dropped_no_path"] > 0
    assert wifi["counters"]["datagrams_lost"] > 0 and wifi["counters"]["reinjected"] > 0
    assert wifi["counters"].get("resend_no_path", 0) == 0


@pytest.mark.parametrize("switch", ["limits.reinjection=false", "limits.duplication=false"])
def test_each_mechanism_can_be_switched_off(lab_certs: FilePath, switch: str) -> None:
    """The ablation switches, at both ends: without reinjection nothing stranded is re-sent
    (packets in flight on the dead access are lost), without duplication no copies are made
    and reinjection alone delivers everything: what WiFi carried while suspect (the failover
    scheduler still chose it) is re-sent when it is found dead (it was lost, 160 packets,
    when only a path leaving ALIVE was stranded); detection still moves the traffic."""
    world, core = core_world(lab_certs, settings=[switch], core_settings=[switch])
    traffic = Traffic(world, core)
    traffic.run(40)
    world.blackhole("wifi", True)
    traffic.run(100)
    world.run(1.0)
    counters = [access_entry(world, "wifi")["counters"], connection_entry(core, "wifi")["counters"]]
    key = "reinjected" if "reinjection" in switch else "duplicated"
    other = "duplicated" if key == "reinjected" else "reinjected"
    assert all(c[key] == 0 for c in counters) and all(c[other] > 0 for c in counters)
    assert all(c["suspected"] == 1 for c in counters)
    if key == "reinjected":
        assert len(core.tun) < len(traffic.up)  # the stranded ones are lost
        assert core.tun[-100:] == traffic.up[-100:]  # moved to 5G: what followed arrived
    else:
        assert all(c["died"] == 1 for c in counters)
        assert core.tun == traffic.up and traffic.delivered_down() == traffic.down


@pytest.mark.parametrize("pacing", [True, False])
def test_release_pacing_is_set_at_both_ends(lab_certs: FilePath, pacing: bool) -> None:
    """`[limits] release_pacing` reaches the session of each end (the pacer's ablation switch;
    what it changes is tested in test_release_pacer.py and test_tunnel_session.py)."""
    switch = f"limits.release_pacing={str(pacing).lower()}"
    world, core = core_world(lab_certs, settings=[switch], core_settings=[switch])
    client_session = world.agent._mode.session  # type: ignore[attr-defined]
    core_session = core.core.session_of("alice")
    assert client_session is not None and core_session is not None
    assert client_session.pacer.enabled is pacing and core_session.pacer.enabled is pacing


def test_datagrams_that_overtake_the_join_answer_are_held_not_dropped(
    lab_certs: FilePath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5G joins while downlink flows (the concentrator's wrr scheduler gives it packets at
    once) and the one packet carrying the concentrator's answer, its control stream's FIN
    (session draft §6.1.3), is lost: the datagrams after it arrive first. The client holds
    them until the resent FIN says it joined, and every packet is delivered; it dropped them
    before (5 lost for good, each gap waited a reorder timeout: QUIC had acknowledged them,
    so nothing re-sent them)."""
    config = client_config("session", ("wifi", "5g"), PROBE)
    core = CoreConcentrator(concentrator_config(lab_certs, 'scheduler="wrr"'), now=1000.0)
    alice = client_configuration(
        lab_certs / "ca.pem", ["qt-session"], lab_certs / "alice.pem", lab_certs / "alice.key"
    )
    world = World(config, concentrator=core, client_quic_config=alice)
    world.accesses["5g"].cut(True)  # only WiFi joins at start
    world.start()
    world.run(2.0)
    answered: list[TunnelConnection] = []  # the concentrator's connections that answered a join
    confirm_join = TunnelConnection.confirm_join

    def confirm_and_note(connection: TunnelConnection) -> None:
        answered.append(connection)
        confirm_join(connection)

    monkeypatch.setattr(TunnelConnection, "confirm_join", confirm_and_note)
    wire = world.accesses["5g"].down
    send = wire.send
    lost: list[float] = []

    def lose_the_answer(data: bytes, dest: Any, now: float) -> None:
        if not lost and answered and dest[0].server_tunnel is answered[-1]:
            lost.append(now)  # the first packet after the answer was queued: it carries it
            wire.sent += 1
            wire.lost += 1
            return
        send(data, dest, now)

    monkeypatch.setattr(wire, "send", lose_the_answer)
    world.accesses["5g"].cut(False)  # the client reconnects over 5G and joins
    traffic = Traffic(world, core)
    traffic.run(600, per_step=2, downlink=True)
    world.run(1.0)
    assert world.agent.path_on("5g") is not None and len(lost) == 1
    counters = world.agent.status()["counters"]
    assert counters["held_before_join"] > 0 and counters.get("drops_not_joined", 0) == 0
    assert traffic.delivered_down() == traffic.down
    assert world.agent.status()["reorder"]["gaps_skipped"] == 0


def test_detection_off_leaves_the_liveness_probe(lab_certs: FilePath) -> None:
    world, core = core_world(
        lab_certs,
        settings=["limits.failure_detection=false"],
        core_settings=["limits.failure_detection=false"],
    )
    traffic = Traffic(world, core)
    traffic.run(20)
    world.blackhole("wifi", True)
    traffic.run(60)  # 300 ms: the liveness probe has not decided yet
    assert (
        access_entry(world, "wifi")["available"]
        and access_entry(world, "wifi")["health"] == "alive"
    )
    assert connection_entry(core, "wifi")["health"] is None  # not watched
    world.run(1.0)
    assert not access_entry(world, "wifi")["available"]  # 3 unanswered PINGs


# -- tunnel mode: the concentrator re-sends what was stranded on the path the client left ----------


def test_tunnel_mode_downlink_stranded_on_the_old_path_is_resent_on_the_new_one(
    lab_certs: FilePath,
) -> None:
    world, core = core_world(lab_certs, mode="tunnel")
    traffic = Traffic(world, core)
    traffic.run(20)
    world.blackhole("wifi", True)
    traffic.run(60)
    world.run(1.0)
    assert [m.target.name for m in world.of(Migrate)] == ["5g"]
    assert set(traffic.delivered_down()) == set(traffic.down)
    assert set(core.tun) == set(traffic.up)
    (connection,) = core.client_status()["connections"]
    assert connection["counters"]["reinjected"] > 0
    assert access_entry(world, "5g")["counters"]["reinjected"] > 0


# -- loss hiding on one lossy path -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tunnel", "session"])
def test_loss_hiding_on_one_lossy_path_delivers_almost_everything(
    lab_certs: FilePath, mode: str
) -> None:
    """One access losing 5 % each way. Without loss hiding about 5 % of the uplink is lost;
    with it a lost datagram is re-sent on the same path within the deadline and (almost) all
    arrive — in session mode the reorder buffer waits for the re-send (a re-send can be late
    when the ACK that would reveal the loss is lost too)."""
    missing: dict[str, int] = {}
    for hiding in ("off", "on"):
        setting = f'limits.loss_hiding="{hiding}"'
        world, core = core_world(
            lab_certs, mode, ("wifi",), settings=[setting], core_settings=[setting]
        )
        world.accesses["wifi"].shape(loss=0.05, seed=3)
        traffic = Traffic(world, core, size=200)
        traffic.run(100, per_step=4, downlink=False)
        world.run(1.0)
        arrived = set(core.tun)
        missing[hiding] = sum(1 for packet in traffic.up if packet not in arrived)
        counters = access_entry(world, "wifi")["counters"]
        assert counters["datagrams_lost"] > 0
        if hiding == "on":
            assert counters["loss_hidden"] > 0 and counters["resend_too_late"] == 0
            if mode == "session":
                # the reorder buffer waited for the re-sends: (almost) no gap given up
                reorder = core.client_status()["reorder"]
                assert reorder["reordered"] > 0 and reorder["tags_skipped"] <= missing["off"] // 4
        else:
            assert counters["loss_hidden"] == 0
    assert missing["off"] >= 10
    assert missing["on"] <= missing["off"] // 4


# -- the earliest-arrival scheduler ----------------------------------------------------------------


def test_earliest_arrival_scheduler_uses_both_accesses_and_delivers_in_order(
    lab_certs: FilePath,
) -> None:
    """WiFi 10 ms / 250 kB/s and 5G 20 ms / 500 kB/s, offered more than either carries: the
    earliest-arrival scheduler (both ends) puts packets on both, and the reorder buffers give
    everything back in order without giving up on a gap."""
    settings = ['scheduler="earliest"']
    world, core = core_world(
        lab_certs, settings=settings, core_settings=settings, delays={"5g": 0.02}
    )
    world.accesses["wifi"].shape(rate=250_000)
    world.accesses["5g"].shape(rate=500_000)
    traffic = Traffic(world, core, size=900)
    traffic.run(120, per_step=6, step=0.01)  # ~560 kB/s each way
    world.run(2.0)
    for side in (access_entry(world, "wifi"), access_entry(world, "5g")):
        assert side["counters"]["packets_out"] > 100
    for name in ("wifi", "5g"):
        assert connection_entry(core, name)["counters"]["packets_out"] > 100
    assert core.tun == traffic.up
    assert traffic.delivered_down() == traffic.down
    for reorder in (world.agent.status()["reorder"], core.client_status()["reorder"]):
        assert reorder["tags_skipped"] == 0 and reorder["late"] == 0
    assert world.agent.status()["scheduler"] == "earliest"


def test_small_packets_go_on_both_accesses(lab_certs: FilePath) -> None:
    settings = ["limits.duplicate_up_to=150"]
    world, core = core_world(lab_certs, settings=settings, core_settings=settings)
    traffic = Traffic(world, core)
    traffic.run(10)  # 28-byte echoes: small
    big = [up(1000 + n, 400) for n in range(5)]
    world.from_tun(big)
    world.run(0.5)
    assert core.tun == traffic.up + big  # once each, in order
    assert access_entry(world, "wifi")["counters"]["duplicated"] == 40
    assert connection_entry(core, "wifi")["counters"]["duplicated"] == 40
    assert access_entry(world, "5g")["counters"]["packets_out"] >= 40
    assert core.client_status()["reorder"]["duplicate"] >= 40


# -- Access Reports: a superseded one is cancelled -------------------------------------------------


def test_a_superseded_access_report_is_cancelled(lab_certs: FilePath) -> None:
    """WiFi's link goes down and comes back while 5G, which carries the "unavailable" report,
    is dark for a moment: the report is still unacknowledged when "available" follows, so it is
    cancelled (RESET_STREAM). Without the cancel its retransmission would reach the
    concentrator last (another connection: stream order cannot tell) and switch WiFi off."""
    world, core = core_world(lab_certs, settings=["limits.failure_detection=false"])
    world.blackhole("5g", True)
    world.set_link("wifi", False)  # reported over 5G: lost for now
    world.run(0.01)
    world.set_link("wifi", True)  # reported over WiFi
    world.run(0.03)
    world.blackhole("5g", False)
    world.run(1.0)
    assert world.agent.status()["counters"]["access_reports_cancelled"] == 1
    assert core.client_status()["accesses_available"]["wifi"] is True
    assert core.core.status()["counters"].get("access_reports_stale", 0) == 0


def test_each_access_runs_its_own_controller_at_both_ends(lab_certs: FilePath) -> None:
    """limits.congestion_control_wifi: the client opens its WiFi connection with BBR, the
    concentrator switches its end once the client's first Access Report says which access the
    connection runs over; 5G keeps congestion_control. Traffic crosses both afterwards."""
    settings = ['limits.congestion_control="cubic"', 'limits.congestion_control_wifi="bbr"']
    world, core = core_world(lab_certs, settings=settings, core_settings=settings)
    by_access = {c.access.name: c for c in world.live_conns()}
    assert {n: c.client.congestion_control for n, c in by_access.items()} == {
        "wifi": "bbr",
        "5g": "cubic",
    }
    assert {n: c.server.congestion_control for n, c in by_access.items()} == {
        "wifi": "bbr",
        "5g": "cubic",
    }
    traffic = Traffic(world, core, size=1000)
    traffic.run(50, per_step=2, step=0.002)
    world.run(0.5)
    assert set(traffic.delivered_down()) == set(traffic.down)
    assert set(core.tun) == set(traffic.up)


def test_a_migration_takes_the_target_accesss_controller(lab_certs: FilePath) -> None:
    """Tunnel mode: the connection starts on WiFi with its controller and, moved to 5G on a
    link-down, resets its path state (RFC 9000 §9.4) with 5G's."""
    settings = ['limits.congestion_control_wifi="bbr"', 'limits.congestion_control_5g="cubic"']
    world, core = core_world(lab_certs, mode="tunnel", settings=settings, core_settings=settings)
    (conn,) = world.live_conns()
    assert conn.client.congestion_control == "bbr"
    world.set_link("wifi", False)
    assert [(m.target.name, m.congestion_control) for m in world.of(Migrate)] == [("5g", "cubic")]
    assert conn.client.congestion_control == "cubic"
    traffic = Traffic(world, core, size=1000)
    traffic.run(20, per_step=2, step=0.002)
    world.run(0.5)
    assert set(traffic.delivered_down()) == set(traffic.down)


def downlink_by_access(world: World, core: CoreConcentrator, count: int = 20) -> dict[str, int]:
    """Where the concentrator sends `count` packets to alice now: packets per access."""
    before = {id(c): c.server_tunnel.counters.packets_out for c in world.live_conns()}
    core.from_tun([down(i) for i in range(count)], world.now)
    world.run(0.3)
    return {
        c.access.name: c.server_tunnel.counters.packets_out - before.get(id(c), 0)
        for c in world.live_conns()
    }


def test_a_short_wifi_flap_leaves_wifi_available_at_the_concentrator(
    lab_certs: FilePath,
) -> None:
    """WiFi (5 ms one way) flaps for 20 ms: "WiFi unavailable" went over 5G (50 ms), then
    "available" over WiFi itself, which overtook it; the concentrator applied "unavailable"
    last and kept the downlink off WiFi for good. The second report now follows the first on
    5G, where the concentrator orders them by stream."""
    world, core = core_world(lab_certs, delays={"wifi": 0.005, "5g": 0.05})
    world.set_link("wifi", False)
    world.run(0.02)
    world.set_link("wifi", True)
    world.run(2.0)
    assert core.client_status()["accesses_available"] == {"wifi": True, "5g": True}
    assert downlink_by_access(world, core) == {"wifi": 20, "5g": 0}


def test_a_new_connections_own_access_announcement_is_never_cancelled(
    lab_certs: FilePath,
) -> None:
    """The concentrator closes WiFi's connection; the client's new one (C) announces its own
    access on itself, and WiFi goes dark before that is acknowledged. "WiFi unavailable" over
    5G cancelled the announcement, which aioquic never re-sends on a reset stream: C's access
    stayed unknown for its lifetime and the downlink never used it again."""
    world, core = core_world(lab_certs)
    first = world.agent.path_on("wifi")
    assert first is not None
    world.concentrator_closes(first)

    def reconnected() -> bool:
        path = world.agent.path_on("wifi")
        return path is not None and path is not first

    world.run(5.0, until=reconnected)
    again = world.agent.path_on("wifi")
    assert again is not None and again is not first
    world.accesses["wifi"].cut(True, flush=True)
    world.run(0.8)
    world.accesses["wifi"].cut(False)
    world.run(5.0)
    assert core.core.access_of(world.conn(again).server_tunnel) is AccessId.NON_THREE_GPP
    assert downlink_by_access(world, core) == {"wifi": 20, "5g": 0}


def test_a_suspect_verdict_with_no_other_path_leaves_its_packets_to_loss_hiding(
    lab_certs: FilePath,
) -> None:
    """One access, loss hiding on, a 120 ms blackhole (suspect, not dead): the suspect
    verdict tries to re-send what is in flight elsewhere and finds no path. Those records were
    marked re-sent all the same, so loss hiding skipped them when they were declared lost: of
    96 packets lost 4 were hidden and 92 missed without a word. Each lost packet is now hidden
    or counted as too late for it."""
    settings = ['limits.loss_hiding="on"']
    world, core = core_world(
        lab_certs, "session", ("wifi",), settings=settings, core_settings=settings
    )
    traffic = Traffic(world, core, size=200)
    traffic.run(20, downlink=False)
    world.blackhole("wifi", True)
    traffic.run(24, downlink=False)  # 120 ms
    world.blackhole("wifi", False)
    traffic.run(20, downlink=False)
    world.run(1.0)
    counters = access_entry(world, "wifi")["counters"]
    assert counters["suspected"] == 1 and counters["datagrams_lost"] > 0
    assert counters["loss_hidden"] + counters["resend_too_late"] == counters["datagrams_lost"]
    arrived = set(core.tun)
    missing = sum(1 for packet in traffic.up if packet not in arrived)
    assert missing == counters["datagrams_lost"] - counters["loss_hidden"]
