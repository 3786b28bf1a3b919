"""The reversed flow of stream mode, sans-I/O (README "Stream mode"): the mapping policy
(tunnel/policy/inbound.py), the concentrator core answering PCP through the tunnel
(concentrator_harness: real QUIC connections in memory, fake clock), and the client agent's
PCP client (tunnel/agents/port_mapper.py) against the real core (client_world)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from testbed.hostile import client_configuration
from tests.unit.client_world import CoreConcentrator, World, client_config
from tests.unit.concentrator_harness import Conn, CoreLab, concentrator_config, lab
from tests.unit.quic_harness import Network
from tests.unit.tunnel_pairs import add_tunnel_path, events_of, tunnel
from tunnel.agents.concentrator import InboundMapped, InboundUnmapped
from tunnel.agents.port_mapper import PortMapper
from tunnel.aio.stream_client import StreamClient
from tunnel.aio.stream_server import StreamServer
from tunnel.config import StreamClientConfig, StreamServerConfig
from tunnel.policy.inbound import InboundTable, Mapping
from tunnel.protocol.connection import PacketReceived, TcpConnectFailed, TcpConnectRequested
from tunnel.wire.errors import StreamErrorCode
from tunnel.wire.pcp import (
    PCP_CLIENT_PORT,
    PCP_SERVER_PORT,
    MapRequest,
    MapResponse,
    ResultCode,
    UdpDatagram,
    parse_udp,
    udp_packet,
)

ALICE, CAROL = IPv4Address("10.8.0.2"), IPv4Address("10.8.1.5")
TUN_ADDRESS = IPv4Address("10.8.0.1")  # the concentrator's TUN address (concentrator_harness)
NONCE, OTHER_NONCE = b"n" * 12, b"o" * 12


def req(port: int, lifetime: int = 600, *, nonce: bytes = NONCE, protocol: int = 6,
        suggested: int = 0, client: IPv4Address = ALICE) -> MapRequest:  # fmt: skip
    return MapRequest(client, nonce, protocol, port, lifetime, suggested_port=suggested)


# -- the policy --------------------------------------------------------------------------------


def table(
    *allowed: int, reserved: tuple[int, ...] = (), busy: tuple[int, ...] = ()
) -> InboundTable:
    return InboundTable(
        allowed, max_per_client=2, max_lifetime=3600, reserved=reserved,
        port_free=lambda p: p not in busy,
    )  # fmt: skip


def test_a_mapping_takes_the_suggestion_then_the_internal_port_then_the_lowest_free() -> None:
    t = table(8080, 8081, 8082, 9000)
    assert t.request("alice", ALICE, req(22, suggested=9000), 0).external_port == 9000
    assert t.request("alice", ALICE, req(8081), 0).external_port == 8081
    assert t.request("bob", ALICE, req(22, suggested=1), 0).external_port == 8080  # a hint only


def test_first_come_first_served_and_never_a_reserved_or_busy_port() -> None:
    t = table(8080, 8081, 8082, reserved=(8080,), busy=(8081,))
    first = t.request("alice", ALICE, req(8082), 0)
    assert first.result is ResultCode.SUCCESS and first.external_port == 8082
    second = t.request("bob", CAROL, req(8082, client=CAROL), 0)
    assert second.result is ResultCode.NO_RESOURCES and second.external_port == 0
    assert second.lifetime == 30  # §7.2: a short-lived error, retried soon


def test_refusals_carry_the_rfc_6887_result_codes() -> None:
    t = table(8080, 8081, 8082)
    cases = [
        (req(8080, protocol=17), ResultCode.UNSUPP_PROTOCOL),
        (req(8080, client=CAROL), ResultCode.ADDRESS_MISMATCH),  # not the packet's source
        (req(0), ResultCode.NOT_AUTHORIZED),  # "all ports"
    ]
    for request, result in cases:
        decision = t.request("alice", ALICE, request, 0)
        assert decision.result is result and decision.reason
    assert table().request("alice", ALICE, req(8080), 0).result is ResultCode.NOT_AUTHORIZED
    t.request("alice", ALICE, req(8080), 0)
    t.request("alice", ALICE, req(8081), 0)
    assert t.request("alice", ALICE, req(8082), 0).result is ResultCode.USER_EX_QUOTA


def test_renewal_keeps_the_port_another_nonce_is_refused_and_lifetime_zero_deletes() -> None:
    t = table(8080, 8081)
    first = t.request("alice", ALICE, req(8080, 99999), 0)
    assert first.lifetime == 3600 and first.created is not None  # capped (§11.3)
    renewed = t.request("alice", ALICE, req(8080, 600, suggested=8081), 100)
    assert renewed.external_port == 8080 and renewed.created is None
    assert t.request("alice", ALICE, req(8080, nonce=OTHER_NONCE), 100).result is (
        ResultCode.NOT_AUTHORIZED
    )
    assert t.request("alice", ALICE, req(8080, 0, nonce=OTHER_NONCE), 100).result is (
        ResultCode.NOT_AUTHORIZED
    )
    deleted = t.request("alice", ALICE, req(8080, 0), 100)
    assert deleted.result is ResultCode.SUCCESS and deleted.removed == (first.created,)
    assert len(t) == 0
    assert t.request("alice", ALICE, req(8080, 0), 100).result is ResultCode.SUCCESS  # §15


def test_mappings_expire_and_go_with_their_client() -> None:
    t = table(8080, 8081)
    t.request("alice", ALICE, req(8080, 600), 0)
    t.request("carol", CAROL, req(8081, 900, client=CAROL), 0)
    assert t.next_expiry() == 600
    assert [m.client for m in t.expire(600)] == ["alice"]
    assert [m.external_port for m in t.release("carol")] == [8081] and len(t) == 0


# -- the concentrator core ---------------------------------------------------------------------


def inbound_lab(certs: Path, ports: str = "[8080]") -> CoreLab:
    return lab(certs, "stream.enabled=true", f"stream.inbound_ports={ports}")


def pcp(conn: Conn, request: MapRequest | bytes, to: IPv4Address = TUN_ADDRESS) -> None:
    payload = request if isinstance(request, bytes) else request.encode()
    datagram = UdpDatagram(ALICE, to, PCP_CLIENT_PORT, PCP_SERVER_PORT, payload)
    conn.client.send_packet(udp_packet(datagram))


def answers(conn: Conn) -> list[MapResponse]:
    found = []
    for event in conn.of(PacketReceived):
        datagram = parse_udp(event.packet, PCP_CLIENT_PORT)
        assert datagram is not None and datagram.source_port == PCP_SERVER_PORT
        assert datagram.source == TUN_ADDRESS and datagram.destination == ALICE
        found.append(MapResponse.decode(datagram.payload))
    return found


def test_the_core_answers_a_map_request_through_the_tunnel(lab_certs: Path) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    pcp(conn, req(8080, 10))  # within the harness's idle timeout
    core_lab.run(0.1)
    (answer,) = answers(conn)
    assert answer.result is ResultCode.SUCCESS and answer.external_port == 8080
    assert answer.lifetime == 10 and answer.nonce == NONCE
    assert answer.external_address == IPv4Address("192.0.2.1")  # listen.addresses
    (mapped,) = core_lab.of(InboundMapped)
    assert (mapped.mapping.client, mapped.mapping.internal_address) == ("alice", ALICE)
    assert core_lab.core.stream_connection("alice") is conn.server
    assert core_lab.tun == []  # taken before the host guard, not forwarded
    assert core_lab.core.status()["inbound"] == [
        {"client": "alice", "external_port": 8080, "internal": "10.8.0.2:8080"}
    ]
    core_lab.run(10)
    (unmapped,) = core_lab.of(InboundUnmapped)
    assert unmapped.reason == "lifetime over" and core_lab.core.status()["inbound"] == []


def test_an_ipv6_client_maps_through_the_tun_address_of_its_family(lab_certs: Path) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    alice6, tun6 = IPv6Address("fd00:8::2"), IPv6Address("fd00:8::1")
    request = MapRequest(alice6, NONCE, 6, 8080, 10)
    conn.client.send_packet(
        udp_packet(UdpDatagram(alice6, tun6, PCP_CLIENT_PORT, PCP_SERVER_PORT, request.encode()))
    )
    core_lab.run(0.1)
    (event,) = conn.of(PacketReceived)
    datagram = parse_udp(event.packet, PCP_CLIENT_PORT)
    assert datagram is not None and (datagram.source, datagram.destination) == (tun6, alice6)
    answer = MapResponse.decode(datagram.payload)
    assert answer.result is ResultCode.SUCCESS and answer.external_port == 8080
    (mapped,) = core_lab.of(InboundMapped)
    assert mapped.mapping.internal_address == alice6


def test_the_mapping_ends_with_its_client(lab_certs: Path) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    pcp(conn, req(8080, 600))
    core_lab.run(0.1)
    conn.client.close("the test closes")
    core_lab.net.flush()
    core_lab.run(1.0)
    (unmapped,) = core_lab.of(InboundUnmapped)
    assert unmapped.reason == "client gone"


def test_bad_requests_get_an_answer_and_no_mapping(lab_certs: Path) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    pcp(conn, req(8080).encode()[:40])  # the MAP body cut short
    pcp(conn, req(8080, protocol=17))
    pcp(conn, req(8081))  # not an allowed port, and 8080 is free: the hint is not honoured
    pcp(conn, req(8082, nonce=OTHER_NONCE))  # the only allowed port is taken now
    core_lab.run(0.1)
    results = [a.result for a in answers(conn)]
    assert results == [
        ResultCode.MALFORMED_REQUEST,
        ResultCode.UNSUPP_PROTOCOL,
        ResultCode.SUCCESS,
        ResultCode.NO_RESOURCES,
    ]
    assert core_lab.core.counters["pcp_refused"] == 3


def test_without_stream_mode_a_map_request_is_not_authorized(lab_certs: Path) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice")
    pcp(conn, req(8080))
    core_lab.run(0.1)
    assert [a.result for a in answers(conn)] == [ResultCode.NOT_AUTHORIZED]
    assert core_lab.of(InboundMapped) == []


def test_udp_5351_to_another_host_is_forwarded_as_usual(lab_certs: Path) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    pcp(conn, req(8080), to=IPv4Address("10.200.1.2"))
    core_lab.run(0.1)
    assert len(core_lab.tun) == 1 and answers(conn) == []


# -- the client agent's PCP client, against the real core ----------------------------------------


def test_port_mapper_retransmits_with_backoff_until_answered() -> None:
    mapper = PortMapper([8080], ALICE, TUN_ADDRESS, 600, random_bytes=lambda n: b"n" * n)
    carrier = object()
    assert mapper.update(None, 0) == [] and mapper.next_deadline() is None
    (first,) = mapper.update(carrier, 0)
    assert mapper.update(carrier, 2.9) == [] and mapper.next_deadline() == 3.0
    assert len(mapper.update(carrier, 3.0)) == 1 and mapper.next_deadline() == 9.0  # 3, then 6
    datagram = parse_udp(first)
    assert datagram is not None and datagram.destination_port == PCP_SERVER_PORT
    request = MapRequest(ALICE, NONCE, 6, 8080, 600, suggested_port=8080)
    assert datagram.payload == request.encode()
    assert len(mapper.update(object(), 4.0)) == 1  # a new connection: asked again at once


def test_the_client_maps_its_ports_and_renews_them(lab_certs: Path) -> None:
    config = client_config(
        "tunnel", ("wifi",), "stream.enabled=true", "stream.inbound=[8080]",
        "stream.inbound_lifetime=120", 'tun.addresses=["10.8.0.2/32"]',
    )  # fmt: skip
    conc_config = concentrator_config(
        lab_certs, "stream.enabled=true", "stream.inbound_ports=[8080]",
        "stream.inbound_max_lifetime=120",
    )  # fmt: skip
    core = CoreConcentrator(conc_config, now=1000.0)
    core.core.host_addresses_changed([IPv4Address("10.100.0.1")])  # concentrator.address
    alice = client_configuration(
        lab_certs / "ca.pem", ["qt"], lab_certs / "alice.pem", lab_certs / "alice.key"
    )
    world = World(config, concentrator=core, client_quic_config=alice).start()
    world.run(2.0)
    assert world.agent.status()["inbound"] == [
        {"port": 8080, "result": "SUCCESS", "external": "192.0.2.1:8080"}
    ]
    assert world.tun == []  # the answer was the agent's, not the TUN's
    mapping = core.core.inbound.by_port(8080)
    assert mapping is not None and world.now < mapping.expires <= world.now + 120
    world.run(200.0)  # beyond the first lifetime: renewed at half of it
    renewed = core.core.inbound.by_port(8080)
    assert renewed is mapping and renewed.expires > world.now


# -- the client's stream side: only the streams it offered ------------------------------------


def test_the_stream_client_refuses_streams_it_did_not_offer() -> None:
    """A concentrator-opened stream naming a port not in `stream.inbound`, or an address that
    is not one of the client's tunnel addresses, is answered Error TLV Network Failure + End +
    FIN (-tcp §5.1.3): the concentrator sees TcpConnectFailed and nothing is connected."""
    net = Network()
    path = add_tunnel_path(net, ["qt"], client_stream_mode=True, server_stream_mode=True)
    net.run(0.5)
    client, server = tunnel(path.client), tunnel(path.server)
    stream = StreamClient(StreamClientConfig(enabled=True, inbound=(8080,)), lambda: None, (ALICE,))
    server.open_tcp_stream(ALICE, 9999)  # a port the client did not offer
    server.open_tcp_stream(IPv4Address("10.9.9.9"), 8080)  # not the client's address
    net.run(0.1)
    for event in events_of(path.client, TcpConnectRequested):
        assert stream.handle(client, event, net.flush)
    net.run(0.1)
    failed = events_of(path.server, TcpConnectFailed)
    assert [f.code for f in failed] == [StreamErrorCode.NETWORK_FAILURE] * 2
    assert stream.stats()["inbound_refused"] == 2 and stream.stats()["active"] == 0


def test_a_pcp_flood_is_answered_within_a_budget_and_pcp_is_left_alone_without_stream_mode(
    lab_certs: Path,
) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    for _ in range(50):
        pcp(conn, req(8080, protocol=17))
    core_lab.run(0.1)
    assert len(answers(conn)) == 20  # the burst: twice PCP_PER_SECOND
    assert core_lab.core.counters["pcp_dropped"] == 30
    plain = lab(lab_certs)  # stream mode off: UDP 5351 goes to the host as any packet would
    plain.core.host_guard.policy = "allow"
    other = plain.connect("alice")
    pcp(other, req(8080))
    plain.run(0.1)
    assert len(plain.tun) == 1 and answers(other) == []


# -- the concentrator's listener of a mapped port (on loopback) --------------------------------


def test_an_accept_while_the_client_has_no_stream_mode_connection_is_reset() -> None:
    """The stream server's protocol factory for a mapped port resets a connection accepted
    while `carrier` finds no stream-mode connection of the mapping's client."""

    async def scenario() -> tuple[str, dict[str, int]]:
        server = StreamServer(StreamServerConfig(enabled=True))
        mapping = Mapping("alice", ALICE, 8080, 0, NONCE, 0.0)
        listener = await asyncio.get_running_loop().create_server(
            server.inbound_relay(mapping, lambda _: None), "127.0.0.1", 0
        )
        port = listener.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                outcome = "eof" if await asyncio.wait_for(reader.read(), 5) == b"" else "data"
            except ConnectionResetError:
                outcome = "reset"
            writer.close()
        finally:
            listener.close()
            server.close()
        return outcome, server.stats()

    outcome, stats = asyncio.run(scenario())
    assert outcome == "reset" and stats["inbound_no_connection"] == 1


def test_a_mapping_whose_port_cannot_be_listened_on_is_forgotten(lab_certs: Path) -> None:
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    pcp(conn, req(8080, 10))
    core_lab.run(0.1)
    (mapped,) = core_lab.of(InboundMapped)
    core_lab.core.inbound_listen_failed(mapped.mapping, "Address already in use")
    core_lab.carry_out()
    (unmapped,) = core_lab.of(InboundUnmapped)
    assert unmapped.reason == "cannot listen: Address already in use"
    assert core_lab.core.status()["inbound"] == []
    core_lab.core.inbound_listen_failed(mapped.mapping, "again")  # forgotten already: nothing
    core_lab.carry_out()
    assert len(core_lab.of(InboundUnmapped)) == 1


def test_announce_is_answered_and_peer_is_not_supported(lab_certs: Path) -> None:
    """§14.1: ANNOUNCE gets SUCCESS with our epoch; PEER (§12) is UNSUPP_OPCODE."""
    core_lab = inbound_lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    header = bytes([2, 0, 0, 0]) + bytes(4) + bytes(10) + b"\xff\xff" + ALICE.packed
    pcp(conn, header)  # ANNOUNCE
    pcp(conn, bytes([2, 2]) + header[2:] + bytes(56))  # PEER, with a (zero) PEER body
    core_lab.run(0.1)
    replies = [parse_udp(e.packet, PCP_CLIENT_PORT) for e in conn.of(PacketReceived)]
    payloads = [r.payload for r in replies if r is not None]
    assert [(p[1], p[3], len(p)) for p in payloads] == [
        (0x80, ResultCode.SUCCESS, 24),
        (0x82, ResultCode.UNSUPP_OPCODE, 80),
    ]
