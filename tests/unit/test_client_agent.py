"""The client agent's decisions (tunnel/agents/client.py), in memory on the fake clock with real
QUIC connections (tests/unit/client_world.py): connecting and the TUN, migration and failback
(tunnel mode), switching and rejoining (session mode), the liveness probe, Access Reports,
backoff, giving a silent connection up, Packet Too Big, reordering and the state."""

from __future__ import annotations

import itertools
from pathlib import Path as FilePath

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6

from testbed.hostile import client_configuration
from tests.unit.client_world import CoreConcentrator, World, client_config
from tests.unit.concentrator_harness import concentrator_config
from tests.unit.tunnel_pairs import ip4
from tunnel.agents.client import (
    BACKOFF_START,
    CONNECT_TIMEOUT,
    SESSION_TIMEOUT,
    ClientState,
    ClosePath,
    CreateTun,
    Migrate,
    OpenPath,
    PathState,
)
from tunnel.wire.errors import ControlErrorCode
from tunnel.wire.messages import AccessId, AccessSignal

WIFI, FIVE_G = AccessId.NON_THREE_GPP, AccessId.THREE_GPP
UP, DOWN = AccessSignal.AVAILABLE, AccessSignal.UNAVAILABLE
PROBE = "limits.probe_interval=0.2"  # a failed access is noticed after 3 x 0.2 s
DEAD_AFTER = 2.0  # ... and its connection given up after 10 x 0.2 s (DEAD_AFTER_MISSES)


def tunnel_world(*settings: str, accesses: tuple[str, ...] = ("wifi", "5g")) -> World:
    world = World(client_config("tunnel", accesses, PROBE, *settings)).start()
    world.run(1.0)
    assert world.agent.state is ClientState.UP
    return world


def session_world(*settings: str) -> World:
    world = World(client_config("session", ("wifi", "5g"), PROBE, *settings)).start()
    world.run(2.0)
    assert world.agent.path_on("wifi") is not None and world.agent.path_on("5g") is not None
    return world


def access_status(world: World, name: str) -> dict[str, object]:
    (entry,) = [a for a in world.agent.status()["accesses"] if a["name"] == name]
    return dict(entry)


def delivered(world: World, count: int, marker: int = 0) -> list[str]:
    """Send `count` packets from the TUN: the accesses they arrived over (all arrived)."""
    before = len(world.concentrator.packets)
    world.from_tun([ip4(marker + i) for i in range(count)])
    world.run(0.5, until=lambda: len(world.concentrator.packets) >= before + count)
    arrived = world.concentrator.packets[before:]
    assert [packet for _, packet in arrived] == [ip4(marker + i) for i in range(count)]
    return sorted({via for via, _ in arrived})


# -- connecting, the TUN, the state ------------------------------------------------------------


def test_tunnel_mode_connects_on_the_first_access_and_sizes_the_tun_from_the_budget() -> None:
    world = tunnel_world()
    (open_path,) = world.of(OpenPath)
    path = world.up_path("wifi")
    assert open_path.path is path and path.tunnel is not None
    assert world.of(CreateTun) == [CreateTun(path.tunnel.max_packet_size())]
    assert world.tun_mtu == 1422  # README: tunnel mode with 1452-byte QUIC datagrams
    assert delivered(world, 3) == ["wifi"]
    assert world.agent.status()["state"] == "up"


def test_session_mode_tun_mtu_is_the_session_budget_and_a_configured_mtu_wins() -> None:
    world = session_world()
    assert world.tun_mtu == 1418  # README: the session header takes 4 bytes
    assert len(world.of(CreateTun)) == 1
    configured = World(client_config("tunnel", ("wifi",), "tun.mtu=1300")).start()
    configured.run(1.0)
    assert configured.of(CreateTun) == [CreateTun(1300)]


def test_oversized_packets_are_answered_with_packet_too_big_into_the_tun() -> None:
    world = tunnel_world()
    budget = world.tun_mtu
    assert budget is not None
    too_big_v4 = IP(src="10.8.0.3", dst="10.200.1.2", flags="DF") / UDP() / (b"x" * budget)
    too_big_v6 = IPv6(src="fd00:8::2", dst="fd00:200:1::2") / UDP() / (b"y" * budget)
    world.from_tun([bytes(too_big_v4), bytes(too_big_v6), ip4(3)])
    v4_reply, v6_reply = (IP(world.tun[0]), IPv6(world.tun[1]))
    # as a router would (tunnel/wire/icmp.py): from the far end of the tunnel, with the budget
    assert v4_reply[ICMP].type == 3 and v4_reply[ICMP].code == 4
    assert v4_reply[ICMP].nexthopmtu == budget and v4_reply.dst == "10.8.0.3"
    assert v6_reply[ICMPv6PacketTooBig].mtu == budget and v6_reply.dst == "fd00:8::2"
    assert world.agent.status()["counters"]["icmp_too_big_sent"] == 2
    world.run(0.5)
    assert len(world.concentrator.packets) == 1  # the small one went through


def test_state_connecting_up_reconnecting_up_stopped() -> None:
    world = World(client_config("tunnel", ("wifi",), PROBE)).start()
    assert world.agent.state is ClientState.CONNECTING
    world.run(1.0)
    assert world.agent.state is ClientState.UP
    world.concentrator_closes(world.up_path("wifi"))
    world.run(1.0, until=lambda: world.agent.state is ClientState.RECONNECTING)
    assert world.agent.state is ClientState.RECONNECTING
    world.run(2.0, until=lambda: world.agent.state is ClientState.UP)
    assert world.agent.state is ClientState.UP
    path = world.up_path("wifi")
    world.agent.shutdown(world.now)
    world.run(0.5)
    assert world.agent.state is ClientState.STOPPED
    assert world.agent.status()["state"] == "stopped"
    assert path.state is PathState.CLOSED and world.agent.paths() == []
    conn = world.conn(path)
    assert conn.server_tunnel.closed and conn.server_tunnel.close_reason == "client stopping"
    assert world.agent.get_timer() is None


# -- tunnel mode: migration and failback ---------------------------------------------------------


def test_tunnel_mode_link_down_migrates_the_same_connection_and_reports_it() -> None:
    world = tunnel_world()
    path = world.up_path("wifi")
    world.set_link("wifi", False)
    (migrate,) = world.of(Migrate)
    assert migrate.path is path and migrate.target.name == "5g"
    # the same connection moved: nothing closed, nothing opened
    assert world.of(ClosePath) == [] and len(world.of(OpenPath)) == 1
    assert path.access is not None and path.access.name == "5g"
    assert delivered(world, 5) == ["5g"]
    # the Access Report went over the new access (tunnel draft §6)
    assert ("5g", WIFI, DOWN) in world.concentrator.report_list()
    assert not access_status(world, "wifi")["available"]
    assert access_status(world, "5g")["active"]
    assert world.agent.status()["counters"]["migrations"] == 1


@pytest.mark.parametrize("failback", [True, False])
def test_tunnel_mode_failback_when_the_preferred_link_comes_back(failback: bool) -> None:
    world = tunnel_world(f"failback={str(failback).lower()}")
    path = world.up_path("wifi")
    world.set_link("wifi", False)
    world.run(1.0)
    world.set_link("wifi", True)
    world.run(1.0)
    assert access_status(world, "wifi")["available"]
    back_on = "wifi" if failback else "5g"
    assert world.concentrator.report_list()[-1] == (back_on, WIFI, UP)
    assert [m.target.name for m in world.of(Migrate)] == ["5g", "wifi"][: 2 if failback else 1]
    assert world.agent.path_on(back_on) is path
    assert world.of(ClosePath) == []
    assert delivered(world, 3) == [back_on]


def test_tunnel_mode_blackhole_is_detected_from_ack_silence_and_healed_by_probes() -> None:
    """Issue 12: a silent blackhole is noticed from QUIC's ACK silence (a probe timeout, not
    probe intervals), the connection moves at once and what was in flight is re-sent over the
    new path; the dead access is reported and probed from a socket of its own (PATH_CHALLENGE,
    with backoff), and once healed the connection comes back by itself."""
    world = tunnel_world()
    path = world.up_path("wifi")
    world.from_tun([ip4(n) for n in range(5)])  # in flight when WiFi goes dark
    started = world.now
    world.blackhole("wifi", True)
    world.from_tun([ip4(n) for n in range(5, 10)])
    world.run(2.0, until=lambda: bool(world.of(Migrate)))
    (migrate,) = world.of(Migrate)
    assert migrate.path is path and migrate.target.name == "5g"
    # one probe timeout of a 20 ms path: well before the liveness probe's first PING is late
    assert world.times_of(Migrate)[0] - started < 0.2
    world.run(0.5)
    assert {packet for _, packet in world.concentrator.packets} == {ip4(n) for n in range(10)}
    assert world.agent.status()["counters"]["reinjected"] >= 5
    # dead after its second threshold: reported over 5G, unavailable, probed with backoff
    assert ("5g", WIFI, DOWN) in world.concentrator.report_list()
    wifi = access_status(world, "wifi")
    assert not wifi["available"] and wifi["health"] == "dead"
    probes = [t for t, name in world.probes_sent if name == "wifi"]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(probes)]
    assert len(probes) >= 3 and gaps == sorted(gaps) and max(gaps) <= 0.2  # capped: probe_interval
    # healed: a probe is answered and the connection moves back, reported available
    healed = world.now
    world.blackhole("wifi", False)
    world.run(2.0, until=lambda: len(world.of(Migrate)) == 2)
    assert [m.target.name for m in world.of(Migrate)] == ["5g", "wifi"]
    assert world.times_of(Migrate)[1] - healed <= 0.2 + 0.05  # the backoff's cap and an RTT
    world.run(0.1)
    assert world.concentrator.report_list()[-1] == ("wifi", WIFI, UP)
    assert access_status(world, "wifi")["health"] == "alive"
    assert delivered(world, 3, marker=20) == ["wifi"]
    assert world.of(ClosePath) == [] and world.agent.path_on("wifi") is path


def test_tunnel_mode_without_detection_the_liveness_probe_notices_a_blackhole() -> None:
    """limits.failure_detection = false (the ablation): only the liveness probe of last resort
    remains, 3 unanswered intervals after the first lost PING."""
    world = tunnel_world("limits.failure_detection=false")
    started = world.now
    world.blackhole("wifi", True)
    world.run(2.0, until=lambda: bool(world.of(Migrate)))
    (migrate,) = world.of(Migrate)
    assert migrate.target.name == "5g"
    assert started + 0.6 <= world.times_of(Migrate)[0] <= started + 0.6 + 0.2
    assert delivered(world, 3) == ["5g"]
    assert world.concentrator.report_list()[-2:] == [("5g", FIVE_G, UP), ("5g", WIFI, DOWN)]
    # no probe of the failed access; 5G's one standby probe (validation ahead of a migration)
    assert [name for _, name in world.probes_sent] == ["5g"]
    assert world.agent.status()["counters"].get("access_probes_sent", 0) == 0


def test_tunnel_mode_a_failed_migration_keeps_the_connection_where_it_was() -> None:
    world = tunnel_world()
    path = world.up_path("wifi")
    world.bind_fails.add("5g")
    world.set_link("wifi", False)
    assert len(world.of(Migrate)) == 1
    assert path.access is not None and path.access.name == "wifi" and path.migrations == 0
    assert world.agent.status()["counters"]["migrations"] == 0


def test_no_usable_access_waits_and_a_pending_report_goes_on_the_first_connection() -> None:
    world = World(client_config("tunnel", ("wifi", "5g"), PROBE), links_known=False)
    world.set_link("wifi", False)
    world.set_link("5g", False)
    world.start()
    world.run(1.0)
    assert world.of(OpenPath) == [] and world.agent.state is ClientState.CONNECTING
    world.set_link("5g", True)  # wakes it at once
    assert [o.path.name for o in world.of(OpenPath)] == ["5g"]
    world.run(1.0)
    assert world.agent.state is ClientState.UP
    # "unavailable" (wifi) and "available again" (5g) found no connection when they were
    # decided: the first one carried them
    assert sorted(world.concentrator.report_list()) == [("5g", FIVE_G, UP), ("5g", WIFI, DOWN)]
    assert world.agent.accesses["wifi"].report_pending is False


# -- session mode ----------------------------------------------------------------------------------


def test_session_mode_joins_one_session_one_connection_per_access_and_announces_each() -> None:
    world = session_world()
    session_id = world.agent.session_id
    assert session_id is not None
    (session,) = list(world.concentrator.table)
    assert session.session_id == session_id and len(session.members) == 2
    # New Session on one connection, Join Session on the other, one at a time
    assert sorted(world.concentrator.report_list()) == sorted(
        [("wifi", WIFI, UP), ("5g", FIVE_G, UP)]
    )
    assert world.agent.status()["session_id"] == session_id.hex()
    assert delivered(world, 4) == ["wifi"]  # failover: WiFi first


def test_session_mode_link_down_switches_reports_and_comes_back() -> None:
    world = session_world()
    wifi = world.up_path("wifi")
    world.set_link("wifi", False)
    assert delivered(world, 4, marker=10) == ["5g"]
    assert world.concentrator.report_list()[-1] == ("5g", WIFI, DOWN)
    assert not access_status(world, "wifi")["available"]
    assert access_status(world, "5g")["active"] and not access_status(world, "wifi")["active"]
    world.run(1.0)
    world.set_link("wifi", True)
    world.run(0.5)
    assert world.concentrator.report_list()[-1][1:] == (WIFI, UP)
    assert delivered(world, 4, marker=20) == ["wifi"]
    assert world.agent.path_on("wifi") is wifi  # the connection waited out the link-down


def test_session_mode_blackhole_detected_by_the_probe_and_healed_by_itself() -> None:
    world = session_world()
    wifi = world.up_path("wifi")
    world.blackhole("wifi", True)
    world.run(1.0)
    assert not access_status(world, "wifi")["available"]
    assert world.concentrator.report_list()[-1] == ("5g", WIFI, DOWN)
    assert delivered(world, 4) == ["5g"]
    world.run(DEAD_AFTER + 1.0)
    assert world.agent.path_on("wifi") is wifi  # never given up while 5G answers
    world.blackhole("wifi", False)
    world.run(1.0)  # its probe gets answers again
    assert access_status(world, "wifi")["available"]
    assert world.concentrator.report_list()[-1][1:] == (WIFI, UP)
    assert delivered(world, 4, marker=10) == ["wifi"]
    assert world.of(ClosePath) == []


def test_session_mode_rejoins_the_same_session() -> None:
    world = session_world()
    session_id = world.agent.session_id
    old = world.up_path("wifi")
    world.concentrator_closes(old)
    world.run(3.0, until=lambda: world.agent.path_on("wifi") not in (None, old))
    new = world.up_path("wifi")
    assert new is not old and world.agent.session_id == session_id
    session = world.concentrator.table.get(session_id, world.now)
    assert session is not None and len(session.members) == 2
    assert delivered(world, 3) == ["wifi"]


def test_every_connection_starts_towards_the_concentrator_worker_of_the_session() -> None:
    """README "Workers": a session's first connections, opened at once, start with one
    Destination Connection ID byte (so they meet in one worker); once the concentrator
    answered, a new connection starts with the byte of its connection ID, which steers to the
    worker that issued it."""
    world = World(client_config("session", ("wifi", "5g"), PROBE))
    world.concentrator.cid_worker = (1, 3)
    world.start().run(2.0)
    first = [c.client.original_destination_connection_id for c in world.conns]
    assert len(first) == 2 and first[0][0] == first[1][0] and len(first[0]) == 9
    assert world.agent.worker_byte % 3 == 1
    old = world.up_path("wifi")
    world.concentrator_closes(old)
    world.run(3.0, until=lambda: world.agent.path_on("wifi") not in (None, old))
    rejoin = world.conns[-1].client.original_destination_connection_id
    assert len(rejoin) == 9 and rejoin[0] % 3 == 1


def test_session_mode_unknown_session_id_starts_a_new_session_on_every_access() -> None:
    world = session_world()
    first = world.agent.session_id
    wifi, five_g = world.up_path("wifi"), world.up_path("5g")
    world.concentrator.forget_sessions()  # e.g. restarted: the Session ID means nothing now
    world.concentrator_closes(wifi)
    world.run(
        5.0,
        until=lambda: (
            world.agent.session_id not in (None, first)
            and all(world.agent.path_on(n) not in (None, wifi, five_g) for n in ("wifi", "5g"))
        ),
    )
    refused = [c.path for c in world.of(ClosePath) if c.path.refusal is not None]
    assert refused and refused[0].refusal == ControlErrorCode.UNKNOWN_SESSION_ID
    # the 5G connection of the dead session was closed too, and both joined the new one
    assert five_g.state is PathState.CLOSED and five_g.end_reason == "starting a new session"
    second = world.agent.session_id
    assert second is not None and second != first
    session = world.concentrator.table.get(second, world.now)
    assert session is not None and len(session.members) == 2
    # the refused rejoin was retried at once (no backoff for UNKNOWN_SESSION_ID)
    refused_at = world.times_of(ClosePath)[world.of(ClosePath).index(ClosePath(refused[0]))]
    assert refused_at in world.times_of(OpenPath)


def test_session_mode_no_answer_to_new_session_is_given_up_and_retried() -> None:
    world = World(client_config("session", ("wifi",), PROBE))
    world.concentrator.answer_sessions = False
    world.start()
    world.run(SESSION_TIMEOUT + 0.5, until=lambda: bool(world.of(ClosePath)))
    (closed,) = world.of(ClosePath)
    assert closed.path.end_reason == f"no session answer within {SESSION_TIMEOUT:g} s"
    world.concentrator.answer_sessions = True
    world.run(2.0)
    assert world.agent.state is ClientState.UP and world.agent.session_id is not None


def test_access_reports_off_sends_none_but_switches_locally() -> None:
    world = session_world("access_reports=false")
    world.set_link("wifi", False)
    assert delivered(world, 3) == ["5g"]
    world.set_link("wifi", True)
    world.run(1.0)
    assert world.concentrator.report_list() == []
    assert world.agent.status()["counters"]["access_reports_sent"] == 0


# -- backoff, giving up --------------------------------------------------------------------------


def test_connect_failures_back_off_exponentially_up_to_the_cap() -> None:
    world = World(client_config("tunnel", ("wifi",), PROBE, "limits.reconnect_backoff_max=1.0"))
    world.bind_fails.add("wifi")
    world.start()
    world.run(4.0)
    opens, closes = world.times_of(OpenPath), world.times_of(ClosePath)
    gaps = [round(o - c, 6) for c, o in zip(closes, opens[1:], strict=False)]
    assert gaps[:5] == [BACKOFF_START, 0.5, 1.0, 1.0, 1.0]
    assert world.agent.state is ClientState.CONNECTING


def test_a_refused_handshake_backs_off_and_a_stable_connection_resets_the_backoff() -> None:
    refused = World(client_config("tunnel", ("wifi",), PROBE), server_alpn=["other"]).start()
    refused.run(5.0)
    opens, closes = refused.times_of(OpenPath), refused.times_of(ClosePath)
    assert len(closes) >= 3
    assert [round(o - c, 6) for c, o in zip(closes, opens[1:], strict=False)][:3] == [
        0.25,
        0.5,
        1.0,
    ]
    assert "during handshake" in (refused.of(ClosePath)[0].path.end_reason or "")

    world = tunnel_world(accesses=("wifi",))
    gaps = []
    for lived in (1.0, 1.0, 6.0, 1.0):
        world.run(lived - 1.0)
        old = world.up_path("wifi")
        world.concentrator_closes(old)
        world.run(3.0, until=lambda: world.agent.path_on("wifi") not in (None, old))  # noqa: B023
        gaps.append(round(world.times_of(OpenPath)[-1] - world.times_of(ClosePath)[-1], 6))
    # lived < STABLE_AFTER: doubling; a connection that lived 6 s starts the backoff over
    assert gaps == [0.25, 0.5, 0.25, 0.5]


def test_handshake_timeout_gives_the_attempt_up() -> None:
    world = World(client_config("tunnel", ("wifi",), PROBE))
    world.blackhole("wifi", True)
    world.start()
    started = world.now
    world.run(CONNECT_TIMEOUT + 1.0, until=lambda: bool(world.of(ClosePath)))
    (closed,) = world.of(ClosePath)
    assert world.times_of(ClosePath) == [started + CONNECT_TIMEOUT]
    assert (closed.path.end_reason or "").startswith("no QUIC handshake with 10.100.0.1 port 4433")


def test_silent_connection_is_given_up_when_nothing_answers() -> None:
    world = tunnel_world(accesses=("wifi",))
    path = world.up_path("wifi")
    started = world.now
    world.blackhole("wifi", True)
    world.run(DEAD_AFTER + 1.0, until=lambda: path.state is PathState.CLOSED)
    assert path.end_reason == "no answer to liveness probes"
    assert world.times_of(ClosePath)[0] >= started + DEAD_AFTER
    world.blackhole("wifi", False)
    world.run(3.0, until=lambda: world.agent.path_on("wifi") is not None)
    assert world.agent.state is ClientState.UP and world.up_path("wifi") is not path
    assert delivered(world, 3) == ["wifi"]


def test_silent_connection_is_kept_while_its_link_is_down() -> None:
    world = tunnel_world(accesses=("wifi",))
    path = world.up_path("wifi")
    world.set_link("wifi", False)  # the kernel explains the silence
    world.run(DEAD_AFTER / 2)
    world.set_link("wifi", True)
    world.run(1.0)
    assert world.agent.path_on("wifi") is path and access_status(world, "wifi")["available"]
    assert delivered(world, 3) == ["wifi"]
    # longer than DEAD_AFTER: kept while the link is down, given up once it is back silent
    world.set_link("wifi", False)
    world.run(DEAD_AFTER * 2)
    assert path.state is PathState.UP and world.of(ClosePath) == []
    world.set_link("wifi", True)
    world.run(0.3)  # at its next PING
    assert path.state is PathState.CLOSED and path.end_reason == "no answer to liveness probes"


def test_session_mode_every_silent_connection_is_given_up_when_none_answers() -> None:
    world = session_world()
    wifi, five_g = world.up_path("wifi"), world.up_path("5g")
    world.blackhole("wifi", True)
    world.blackhole("5g", True)
    world.run(DEAD_AFTER + 1.0, until=lambda: wifi.state is five_g.state is PathState.CLOSED)
    assert wifi.end_reason == five_g.end_reason == "no answer to liveness probes"


# -- reordering ------------------------------------------------------------------------------------


def test_session_mode_reorder_gap_is_given_up_at_the_timer() -> None:
    world = session_world("limits.reorder_timeout=0.05")
    conn = world.conn(world.up_path("wifi"))
    world.tun.clear()
    conn.server_tunnel.send_packet(ip4(1), packet_tag=100)
    conn.server_tunnel.send_packet(ip4(3), packet_tag=102)  # 101 never comes
    world.run(0.015)  # both arrived (10 ms one way): the first is out, the second held
    assert world.tun == [ip4(1)]
    timer = world.agent.get_timer()
    assert timer is not None and timer <= world.now + 0.05
    world.run(0.05)
    assert world.tun == [ip4(1), ip4(3)]
    assert world.agent.status()["reorder"]["delivered"] >= 2


def test_a_connection_closed_under_the_agent_is_made_again_at_its_end() -> None:
    # e.g. the TunnelConnection closed it on a peer's protocol violation: no timer spins while
    # the close completes (the world checks that every timer moves on), then a new one is made
    world = tunnel_world(accesses=("wifi",))
    path = world.up_path("wifi")
    assert path.tunnel is not None
    path.tunnel.close("a rule was broken")
    world.run(3.0, until=lambda: world.agent.path_on("wifi") not in (None, path))
    assert path.state is PathState.CLOSED and path.end_reason == "a rule was broken"
    assert world.agent.state is ClientState.UP


# -- with the real concentrator core ---------------------------------------------------------------

ALICE_V4, SERVER_V4 = "10.8.0.2", "10.200.1.2"  # alice's static address (concentrator_harness)


def core_world(certs: FilePath) -> tuple[World, CoreConcentrator]:
    config = client_config("session", ("wifi", "5g"), PROBE)
    core = CoreConcentrator(concentrator_config(certs), now=1000.0)
    alice = client_configuration(
        certs / "ca.pem", ["qt-session"], certs / "alice.pem", certs / "alice.key"
    )
    world = World(config, concentrator=core, client_quic_config=alice)
    assert world.now == 1000.0
    world.start()
    world.run(2.0)
    return world, core


def echo(seq: int) -> tuple[bytes, bytes]:
    """An echo request from alice to the server and its reply."""
    request = IP(src=ALICE_V4, dst=SERVER_V4) / ICMP(type=8, seq=seq)
    reply = IP(src=SERVER_V4, dst=ALICE_V4) / ICMP(type=0, seq=seq)
    return bytes(request), bytes(reply)


def test_with_the_concentrator_core_reports_switch_both_directions(lab_certs: FilePath) -> None:
    world, core = core_world(lab_certs)
    session_id = world.agent.session_id
    assert session_id is not None
    client = core.client_status()
    assert client["session_id"] == session_id.hex() and len(client["connections"]) == 2
    request, reply = echo(1)
    world.from_tun([request])
    world.run(0.1)
    assert core.tun == [request]
    world.set_link("wifi", False)
    world.run(0.5)
    # the concentrator acted on the report: its replies take 5G, the only live access
    assert core.client_status()["accesses_available"]["wifi"] is False
    world.tun.clear()
    core.from_tun([reply], world.now)
    world.run(0.1)
    assert world.tun == [reply]


def test_with_the_concentrator_core_a_restart_leads_to_a_new_session(lab_certs: FilePath) -> None:
    world, _ = core_world(lab_certs)
    first = world.agent.session_id
    restarted = CoreConcentrator(concentrator_config(lab_certs), now=world.now)
    world.restart_concentrator(restarted)  # killed: nothing answers on the old connections
    # nothing answers on any access: given up after DEAD_AFTER, made again, the rejoin refused
    # with UNKNOWN_SESSION_ID, a new session
    world.run(
        DEAD_AFTER + 5.0,
        until=lambda: (
            world.agent.session_id not in (None, first)
            and len(restarted.core.status()["clients"]) == 1
            and len(restarted.client_status()["connections"]) == 2
        ),
    )
    refused = [c.path.refusal for c in world.of(ClosePath) if c.path.refusal is not None]
    assert refused == [ControlErrorCode.UNKNOWN_SESSION_ID]
    second = world.agent.session_id
    assert second is not None and restarted.client_status()["session_id"] == second.hex()
    request, _ = echo(2)
    world.from_tun([request])
    world.run(0.1)
    assert restarted.tun == [request]


def test_a_session_access_whose_connection_died_in_a_blackhole_stays_unavailable() -> None:
    """Session mode: WiFi blackholed, reported UNAVAILABLE, its connection ends by its idle
    timeout. The connection's end used to reset the verdict (for tunnel mode's reconnects):
    WiFi was reported AVAILABLE again at once and shown usable for as long as it stayed dead.
    Now it stays unavailable until a new connection on it joins."""
    world = World(
        client_config(
            "session", ("wifi", "5g"), "limits.probe_interval=0.2", "limits.idle_timeout=5"
        )
    ).start()
    world.run(3.0)
    path = world.up_path("wifi")
    world.blackhole("wifi", True)
    world.run(20.0, until=lambda: path.state is PathState.CLOSED)
    assert path.state is PathState.CLOSED
    world.run(10.0)  # its reconnects time out meanwhile
    wifi_reports = [signal for _, _, access, signal in world.concentrator.reports if access == WIFI]
    assert wifi_reports == [UP, DOWN]
    assert not world.agent.accesses["wifi"].available
    world.blackhole("wifi", False)
    world.run(30.0, until=lambda: world.agent.accesses["wifi"].available)
    world.run(0.5)  # the report's way to the concentrator
    wifi_reports = [signal for _, _, access, signal in world.concentrator.reports if access == WIFI]
    assert wifi_reports[-1] is UP and world.agent.accesses["wifi"].available
