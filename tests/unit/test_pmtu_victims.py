"""The inner packets a PMTU black hole swallowed are answered with Packet Too Big when it is
confirmed (tunnel/protocol/pmtu_victims.py): the log alone, then both programs' agents in memory
(tests/unit/client_world.py, the real concentrator core) over an access whose MTU shrinks
without a word after the search."""

from __future__ import annotations

from pathlib import Path as FilePath

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6

from testbed.hostile import client_configuration
from tests.unit.client_world import CoreConcentrator, World, client_config
from tests.unit.concentrator_harness import concentrator_config
from tunnel.agents.client import ClientState
from tunnel.protocol.pmtu import PmtuSearch, PmtuState
from tunnel.protocol.pmtu_victims import LOOKBACK, MAX_FLOWS, RecentLargePackets, flow_key
from tunnel.protocol.quic_ext import TunnelQuicConnection

ALICE_V4, SERVER_V4 = "10.8.0.2", "10.200.1.2"  # alice's static address (concentrator_harness)
ALICE_V6, SERVER_V6 = "fd00:8::2", "fd00:200::2"
PMTU = "limits.pmtu_discovery=true"
SHRUNK = 1300  # the access's MTU (UDP payload) after the route change


def segment(src: str, dst: str, seq: int, size: int = 1400, sport: int = 5201) -> bytes:
    return bytes(
        IP(src=src, dst=dst, flags="DF")
        / TCP(sport=sport, dport=40000, seq=seq)
        / (b"d" * (size - 40))
    )


# -- the log alone -------------------------------------------------------------------------------


def test_the_latest_large_packet_of_each_flow_is_kept_and_returned_once() -> None:
    log = RecentLargePackets(floor=1100)
    first, latest = segment("10.0.0.1", "10.0.0.2", 1), segment("10.0.0.1", "10.0.0.2", 2)
    other = segment("10.0.0.1", "10.0.0.2", 1, sport=5202)
    small_enough = segment("10.0.0.3", "10.0.0.2", 1, size=1200)
    log.note(first, 1.0)
    log.note(latest, 1.1)
    log.note(other, 1.2)
    log.note(small_enough, 1.3)
    assert len(log) == 3
    # the new budget holds 1200-byte packets: the other two flows' latest are the victims
    assert sorted(log.victims(budget=1200, now=1.5)) == sorted([latest, other])
    assert log.victims(budget=1200, now=1.5) == []  # answered once


def test_only_packets_of_the_last_seconds_on_the_path_in_use_are_victims() -> None:
    log = RecentLargePackets(floor=1100)
    log.note(segment("10.0.0.1", "10.0.0.2", 1), 1.0)
    assert log.victims(budget=1200, now=1.0 + LOOKBACK + 0.1) == []
    log.note(segment("10.0.0.1", "10.0.0.2", 1), 5.0)  # before a migration at 5.5
    assert log.victims(budget=1200, now=6.0, since=5.5) == []
    # and what LOOKBACK has passed is forgotten as new packets come
    log.note(segment("10.0.0.1", "10.0.0.2", 1, sport=1), 10.0)
    log.note(segment("10.0.0.1", "10.0.0.2", 1, sport=2), 10.0 + LOOKBACK + 0.1)
    assert len(log) == 1


def test_flows_are_told_apart_by_addresses_protocol_and_ports_v4_and_v6() -> None:
    v6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2))
    v6_other = bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=3))
    assert flow_key(v6) != flow_key(v6_other)
    assert flow_key(segment("10.0.0.1", "10.0.0.2", 1)) == flow_key(
        segment("10.0.0.1", "10.0.0.2", 99)
    )
    # ICMP has no ports (its first bytes change with every echo): one flow per address pair
    pings = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(id=1, seq=n)) for n in (1, 2)]
    assert flow_key(pings[0]) == flow_key(pings[1])
    # nor has a later fragment
    fragments = [
        bytes(IP(src="10.0.0.1", dst="10.0.0.2", frag=185, proto=17) / (bytes([n]) * 8))
        for n in (1, 2)
    ]
    assert flow_key(fragments[0]) == flow_key(fragments[1])


def test_the_log_is_bounded_and_forgets_the_oldest_flow() -> None:
    log = RecentLargePackets(floor=1100)
    for port in range(MAX_FLOWS + 10):
        log.note(segment("10.0.0.1", "10.0.0.2", 1, sport=1000 + port), 1.0)
    assert len(log) == MAX_FLOWS
    kept = {bytes(IP(p)[TCP].sport.to_bytes(2)) for p in log.victims(budget=1200, now=1.0)}
    assert (1000).to_bytes(2) not in kept and (1000 + MAX_FLOWS + 9).to_bytes(2) in kept


# -- both programs, in memory ----------------------------------------------------------------------


def tunnel_world(
    certs: FilePath, accesses: tuple[str, ...] = ("wifi",), *settings: str, discovery: bool = True
) -> tuple[World, CoreConcentrator]:
    """Alice in tunnel mode over `accesses` to the real concentrator core, up for 2 s."""
    pmtu = [PMTU] if discovery else []
    core = CoreConcentrator(concentrator_config(certs, *pmtu), now=1000.0)
    alice = client_configuration(certs / "ca.pem", ["qt"], certs / "alice.pem", certs / "alice.key")
    world = World(
        client_config("tunnel", accesses, *pmtu, *settings),
        concentrator=core,
        client_quic_config=alice,
    )
    world.start()
    world.run(2.0)
    return world, core


def pmtu_world(certs: FilePath) -> tuple[World, CoreConcentrator]:
    world, core = tunnel_world(certs)
    assert world.agent.state is ClientState.UP
    for quic in (world.conns[0].client, world.conns[0].server):
        assert isinstance(quic, TunnelQuicConnection) and quic.pmtu is not None
        assert quic.pmtu.state is PmtuState.COMPLETE  # 1452 confirmed before the route change
    return world, core


def run_until_fell(world: World, quic: object, seconds: float) -> PmtuSearch:
    """Run until `quic`'s confirmation failed (its search's black_holes counter rose), then
    0.1 s more for the agents to answer; its search."""
    assert isinstance(quic, TunnelQuicConnection)
    search = quic.pmtu
    assert search is not None
    world.run(seconds, until=lambda: search.counters.black_holes > 0)
    world.run(0.1)
    assert search.counters.black_holes == 1
    return search


def too_big_replies(packets: list[bytes], to: str) -> list[IP]:
    replies = [IP(p) for p in packets if p[0] >> 4 == 4]
    return [
        r for r in replies if ICMP in r and r[ICMP].type == 3 and r[ICMP].code == 4 and r.dst == to
    ]


def test_the_concentrator_answers_the_downloads_black_hole_victims(lab_certs: FilePath) -> None:
    """A window of full-size segments towards alice vanishes in the new hole; none is sent
    after it. Without the answer its sender would learn the new size only from its own
    retransmission timeout."""
    world, core = pmtu_world(lab_certs)
    world.accesses["wifi"].down.mtu = SHRUNK
    window = [segment(SERVER_V4, ALICE_V4, seq) for seq in range(0, 30 * 1400, 1400)]
    core.from_tun(window, world.now)
    world.run(2.0, until=lambda: bool(too_big_replies(core.tun, SERVER_V4)))
    (reply,) = too_big_replies(core.tun, SERVER_V4)
    quoted = reply[ICMP].payload
    assert quoted.src == SERVER_V4 and quoted.dst == ALICE_V4  # the last segment sent
    assert bytes(quoted)[:28] == window[-1][:28]
    server_quic = world.conns[0].server
    assert isinstance(server_quic, TunnelQuicConnection) and server_quic.pmtu is not None
    assert server_quic.pmtu.counters.black_holes == 1
    assert reply[ICMP].nexthopmtu < SHRUNK  # the budget at the fallen size
    assert core.client_status()["counters"]["pmtu_victims_answered"] == 1


def test_the_client_answers_the_uploads_black_hole_victims(lab_certs: FilePath) -> None:
    world, _ = pmtu_world(lab_certs)
    world.accesses["wifi"].up.mtu = SHRUNK
    world.from_tun([segment(ALICE_V4, SERVER_V4, seq) for seq in range(0, 30 * 1400, 1400)])
    world.run(2.0, until=lambda: bool(too_big_replies(world.tun, ALICE_V4)))
    (reply,) = too_big_replies(world.tun, ALICE_V4)
    assert reply[ICMP].nexthopmtu < SHRUNK
    assert world.agent.status()["counters"]["pmtu_victims_answered"] == 1


def test_an_ipv6_victim_is_told_the_ipv6_minimum(lab_certs: FilePath) -> None:
    """The fallen budget (the 1200-byte base's) is below IPv6's 1280: the answer says 1280
    (RFC 8200 §5), and the connection lives on (a ValueError here closed it)."""
    world, core = pmtu_world(lab_certs)
    world.accesses["wifi"].down.mtu = SHRUNK
    window = [
        bytes(IPv6(src=SERVER_V6, dst=ALICE_V6) / TCP(sport=5201, seq=seq) / (b"d" * 1340))
        for seq in range(0, 30 * 1340, 1340)
    ]
    core.from_tun(window, world.now)

    def answered() -> list[IPv6]:
        replies = [IPv6(p) for p in core.tun if p[0] >> 4 == 6]
        return [r for r in replies if ICMPv6PacketTooBig in r and r.dst == SERVER_V6]

    world.run(2.0, until=lambda: bool(answered()))
    (reply,) = answered()
    assert reply[ICMPv6PacketTooBig].mtu == 1280
    assert world.agent.state is ClientState.UP and not world.conns[0].server_tunnel.closed
    assert core.client_status()["counters"]["pmtu_victims_answered"] == 1


def test_a_victim_no_answer_is_due_for_is_neither_answered_nor_a_drop(lab_certs: FilePath) -> None:
    """A datagram without DF gets no Packet Too Big (the sender allowed fragmenting it); it
    was lost in the hole, not dropped now."""
    world, core = pmtu_world(lab_certs)
    world.accesses["wifi"].down.mtu = SHRUNK
    no_df = [
        bytes(IP(src=SERVER_V4, dst=ALICE_V4) / UDP(sport=5201, dport=5201) / (b"u" * 1372))
        for _ in range(30)
    ]
    core.from_tun(no_df, world.now)
    run_until_fell(world, world.conns[0].server, 2.0)
    counters = core.client_status()["counters"]
    assert "pmtu_victims_answered" not in counters and "dropped_too_big" not in counters
    assert too_big_replies(core.tun, SERVER_V4) == []


def test_after_a_migration_only_the_new_paths_packets_are_victims(lab_certs: FilePath) -> None:
    """A large packet delivered on WiFi before it failed is no victim of 5G's smaller MTU; one
    queued after the move is (it waited for 5G's confirmation, which failed)."""
    world, core = tunnel_world(lab_certs, ("wifi", "5g"))
    world.accesses["5g"].up.mtu = world.accesses["5g"].down.mtu = SHRUNK
    before = segment(ALICE_V4, SERVER_V4, 1, sport=1111)
    world.from_tun([before])
    world.run(0.2, until=lambda: before in core.tun)
    assert before in core.tun  # delivered on WiFi
    world.run(0.3)  # and acknowledged (a packet stranded by the failure is re-sent on 5G)
    conn = world.conns[0]
    world.set_link("wifi", False)  # tunnel mode moves the connection to 5G
    client_quic = conn.client
    assert isinstance(client_quic, TunnelQuicConnection)
    world.run(1.0, until=lambda: client_quic.path_reset_at is not None)
    after = segment(ALICE_V4, SERVER_V4, 1, sport=2222)
    world.from_tun([after])
    run_until_fell(world, client_quic, 2.0)
    quoted = [bytes(reply[ICMP].payload)[:24] for reply in too_big_replies(world.tun, ALICE_V4)]
    assert quoted == [after[:24]]


def test_a_packet_queued_before_a_migration_that_the_new_path_refuses_is_a_victim(
    lab_certs: FilePath,
) -> None:
    """WiFi goes silent with a large packet still in the queue; tunnel mode moves to 5G, whose
    smaller MTU fails the confirmation, and the packet, queued before the move and never sent,
    is dropped from the queue: answered too (without reinjection nothing re-sends it)."""
    world, _ = tunnel_world(lab_certs, ("wifi", "5g"), "limits.reinjection=false")
    world.accesses["5g"].up.mtu = world.accesses["5g"].down.mtu = SHRUNK
    world.blackhole("wifi", True)
    start, seq = world.now, 0
    while world.now - start < 0.05:  # more than the window: the rest waits in the queue
        world.from_tun([segment(ALICE_V4, SERVER_V4, seq + 1360 * n) for n in range(20)])
        seq += 20 * 1360
        world.run(0.01)
    client_quic = world.conns[0].client
    run_until_fell(world, client_quic, 3.0)
    assert isinstance(client_quic, TunnelQuicConnection) and client_quic.path_reset_at is not None
    (reply,) = too_big_replies(world.tun, ALICE_V4)
    assert reply[ICMP].nexthopmtu < SHRUNK
    assert world.agent.status()["counters"]["pmtu_victims_answered"] == 1


def test_without_discovery_nothing_is_kept(lab_certs: FilePath) -> None:
    world, core = tunnel_world(lab_certs, discovery=False)
    tunnel = world.conns[0].server_tunnel
    core.from_tun([segment(SERVER_V4, ALICE_V4, 1)], world.now)
    assert tunnel._victims is None and tunnel.black_hole_victims(world.now) == []
