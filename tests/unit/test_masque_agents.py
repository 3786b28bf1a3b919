"""Mode masque in the programs' agents (issue 18, stage 2): the client agent
(tunnel/agents/client.py) with the real concentrator core (tunnel/agents/concentrator.py),
speaking MASQUE CONNECT-IP (RFC 9484) over real aioquic HTTP/3 in the in-memory world of
tests/unit/client_world.py on its fake clock: mutual TLS at connection level, the address the
concentrator assigns (ADDRESS_ASSIGN) on the client's TUN, packets both ways through the core's
ingress rules, a spoofed source dropped, and the one connection moved to the other access when
its link goes down (QUIC migration: nothing of CONNECT-IP depends on the path)."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path as FilePath

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import IPv6

from testbed.hostile import client_configuration
from tests.unit.client_world import CoreConcentrator, World, client_config
from tests.unit.concentrator_harness import concentrator_config
from tunnel.agents.client import ClientState, CreateTun, Migrate, PathState
from tunnel.agents.concentrator import AUTH_FAILED_REASON
from tunnel.config import parse_client_config
from tunnel.protocol.masque import MasqueConnection
from tunnel.wire.modes import TunnelMode

SERVER_V4 = "10.200.1.2"
MASQUE_SERVED = 'modes=["tunnel","session","masque"]'
PROBE = "limits.probe_interval=0.2"


def masque_world(
    certs: FilePath,
    name: str = "alice",
    cert_dir: FilePath | None = None,
    *settings: str,
    served: str = MASQUE_SERVED,
    accesses: tuple[str, ...] = ("wifi", "5g"),
    both: tuple[str, ...] = (),
) -> tuple[World, CoreConcentrator]:
    """A MASQUE client (`settings`) and the core, connected; `both`: settings of the two."""
    core = CoreConcentrator(concentrator_config(certs, served, *both), now=1000.0)
    where = cert_dir if cert_dir is not None else certs
    quic_config = client_configuration(
        certs / "ca.pem", ["h3"], where / f"{name}.pem", where / f"{name}.key"
    )
    config = client_config("masque", accesses, PROBE, *settings, *both)
    world = World(config, concentrator=core, client_quic_config=quic_config)
    world.start()
    world.run(2.0, until=lambda: world.agent.state is ClientState.UP)
    return world, core


def echo(source: str, seq: int) -> tuple[bytes, bytes]:
    request = IP(src=source, dst=SERVER_V4) / ICMP(type=8, seq=seq)
    reply = IP(src=SERVER_V4, dst=source) / ICMP(type=0, seq=seq)
    return bytes(request), bytes(reply)


def test_masque_needs_no_tun_addresses_and_refuses_what_it_cannot_carry() -> None:
    text = """
mode = "masque"
[concentrator]
address = "10.100.0.1"
[tun]
name = "qtun0"
[tls]
ca = "ca.pem"
cert = "client.pem"
key = "client.key"
"""
    assert parse_client_config(text).mode is TunnelMode.MASQUE


def test_a_masque_client_and_the_core_exchange_packets_both_ways(lab_certs: FilePath) -> None:
    world, core = masque_world(lab_certs)
    assert world.agent.state is ClientState.UP
    (create,) = world.of(CreateTun)
    # the TUN's addresses are alice's [[client]] prefixes, assigned by the concentrator
    assert create.addresses == (IPv4Interface("10.8.0.2/32"), IPv6Interface("fd00:8::2/128"))
    assert create.mtu >= 1280  # MAX_DATAGRAM_SIZE 1452: IPv6 fits (RFC 9484 §7.2)
    path = world.up_path("wifi")
    assert isinstance(path.tunnel, MasqueConnection) and path.tunnel.alpn == "h3"
    request, reply = echo("10.8.0.2", 1)
    world.from_tun([request])
    world.run(0.1)
    assert core.tun == [request]
    world.tun.clear()
    core.from_tun([reply], world.now)
    world.run(0.1)
    assert world.tun == [reply]
    status = core.client_status()
    assert status["mode"] == "masque"
    (connection,) = status["connections"]
    assert connection["alpn"] == "h3"
    assert connection["counters"]["packets_in"] == 1
    assert connection["counters"]["packets_out"] == 1


def test_a_pool_client_gets_an_address_from_the_pool(lab_certs: FilePath) -> None:
    world, core = masque_world(lab_certs, "carol")
    (create,) = world.of(CreateTun)
    assert create.addresses == (IPv4Interface("10.8.1.1/32"), IPv6Interface("fd00:8:1::1/128"))
    request, _ = echo("10.8.1.1", 1)
    world.from_tun([request])
    world.run(0.1)
    assert core.tun == [request]
    assert core.client_status()["addresses"] == ["10.8.1.1/32", "fd00:8:1::1/128"]


def test_a_client_without_a_valid_certificate_is_refused(lab_certs: FilePath) -> None:
    # "alice" signed by another CA: the TLS handshake completes (aioquic's server checks no
    # client certificate), the core's verification at HandshakeCompleted refuses it
    world, core = masque_world(lab_certs, "alice", lab_certs / "foreign")
    assert world.agent.state is not ClientState.UP
    assert not world.of(CreateTun)
    assert core.core.refused["auth"] >= 1
    ended = [c.path for c in world.conns if c.path.state is PathState.CLOSED]
    assert ended and AUTH_FAILED_REASON in (ended[0].end_reason or "")


def test_a_spoofed_source_is_dropped_by_the_connect_ip_session(lab_certs: FilePath) -> None:
    world, core = masque_world(lab_certs)
    spoofed, _ = echo("10.8.0.99", 1)
    world.from_tun([spoofed])
    world.run(0.1)
    assert core.tun == []
    (connection,) = core.client_status()["connections"]
    # RFC 9484 §11: the source lies in no prefix the proxy assigned
    assert connection["counters"]["masque_drops_spoofed_source"] == 1
    # the H3 layer's aborts for an over-large frame are in the status too (the README names it)
    assert connection["counters"]["masque_h3_excessive"] == 0


def test_a_link_down_moves_the_one_connection_to_the_other_access(lab_certs: FilePath) -> None:
    world, core = masque_world(lab_certs)
    path = world.up_path("wifi")
    world.set_link("wifi", False)
    world.run(0.5)
    (migrate,) = world.of(Migrate)
    assert migrate.path is path and migrate.target.name == "5g"
    assert world.up_path("5g") is path  # the same connection, on the other access
    request, reply = echo("10.8.0.2", 2)
    world.from_tun([request])
    world.run(0.2)
    assert core.tun == [request]
    world.tun.clear()
    core.from_tun([reply], world.now)
    world.run(0.2)
    assert world.tun == [reply]
    assert len(world.conns) == 1  # never reconnected


def test_a_concentrator_not_serving_masque_says_so(lab_certs: FilePath) -> None:
    world, core = masque_world(lab_certs, served='modes=["tunnel","session"]')
    assert world.agent.state is not ClientState.UP
    assert core.core.refused["mode"] >= 1
    ended = [c.path for c in world.conns if c.path.state is PathState.CLOSED]
    assert ended and "masque mode (ALPN h3) is not offered" in (ended[0].end_reason or "")


def test_a_resumed_reconnect_carries_on(lab_certs: FilePath) -> None:
    # limits.zero_rtt: the reconnect presents a ticket (no certificate); its H3 SETTINGS may
    # come in 0-RTT, before the concentrator admitted the client: held, then served
    world, core = masque_world(lab_certs, accesses=("wifi",), both=("limits.zero_rtt=true",))
    first = world.up_path("wifi")
    world.blackhole("wifi", True)  # nothing answers: given up after 10 probe intervals
    world.run(5.0, until=lambda: world.agent.path_on("wifi") is not first)
    world.blackhole("wifi", False)
    world.run(5.0, until=lambda: world.agent.path_on("wifi") not in (None, first))
    world.run(0.5)
    again = world.up_path("wifi")
    assert again is not first and again.session_ticket is not None
    assert core.core.counters["connections_resumed"] == 1
    request, reply = echo("10.8.0.2", 3)
    core.tun.clear()
    world.from_tun([request])
    world.run(0.1)
    assert core.tun == [request]
    world.tun.clear()
    core.from_tun([reply], world.now)
    world.run(0.1)
    assert world.tun == [reply]


@pytest.mark.parametrize("direction", ["down", "up"])
def test_ipv6_below_1280_bytes_aborts_the_tunnel_and_the_client_reconnects(
    lab_certs: FilePath, direction: str
) -> None:
    # RFC 9484 §7.2: an endpoint conveying IPv6 whose QUIC MTU no longer carries 1280 bytes
    # "MUST abort the IP proxying request stream". With limits.pmtu_discovery a black hole at
    # 1300-byte UDP payloads makes the sender's budget fall to 1168 (PathMtuFell): its session
    # aborts (the concentrator's going down, the client's going up; the agents kept the event
    # from the session and the tunnel carried on with IPv6), the connection closes, and the
    # client reconnects and is given the same addresses (the new connection's own confirmation
    # fails on that path in turn: README "MASQUE CONNECT-IP")
    pm = ("limits.pmtu_discovery=true",)
    world, core = masque_world(lab_certs, accesses=("wifi",), both=pm)
    first = world.up_path("wifi")
    (conn,) = world.conns
    assert first.tunnel is not None and first.tunnel.max_packet_size() >= 1280
    link = world.accesses["wifi"]
    (link.down if direction == "down" else link.up).mtu = 1300
    down = direction == "down"
    source, destination = ("fd00:200::2", "fd00:8::2") if down else ("fd00:8::2", "fd00:200::2")
    window = [
        bytes(IPv6(src=source, dst=destination) / TCP(sport=5201, seq=seq) / (b"d" * 1340))
        for seq in range(0, 30 * 1340, 1340)
    ]
    if down:
        core.from_tun(window, world.now)
    else:
        world.from_tun(window)
    world.run(3.0, until=lambda: first.state is PathState.CLOSED)
    assert "IPv6 needs 1280 (RFC 9484 §7.2)" in (first.end_reason or "")
    aborting = conn.server_tunnel if down else first.tunnel
    assert isinstance(aborting, MasqueConnection) and aborting.connect_ip is not None
    closed = aborting.connect_ip.closed
    assert closed is not None and not closed.by_peer
    world.run(2.0, until=lambda: world.agent.path_on("wifi") not in (None, first))
    assert world.agent.path_on("wifi") not in (None, first)
    assert world.agent.tun_addresses == (
        IPv4Interface("10.8.0.2/32"),
        IPv6Interface("fd00:8::2/128"),
    )
