"""The hostile client's pieces without a network (testbed/hostile.py): its packets are what
scapy builds, its raw frames reach a real aioquic peer as written, its fuzz inputs are seeded,
bounded and cover what they claim."""

from __future__ import annotations

import random

from aioquic.quic.events import ConnectionTerminated, StreamDataReceived
from aioquic.quic.packet import QuicErrorCode
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from testbed.hostile import (
    KINDS,
    FuzzContext,
    HostileQuicConnection,
    InputGenerator,
    icmp_echo,
    is_echo_reply,
    is_syn_ack,
    stream_frame,
    tcp_syn,
    unparsable_subject_certificate,
)
from tests.unit.quic_harness import Network, make_configs
from tunnel.protocol.quic_ext import TunnelQuicConnection

CONTEXT = FuzzContext("10.8.0.4", "fd00:8::3", ("10.8.0.1",), ("fd00:8::1",), ("10.0.0.2",))


def test_packets_are_what_scapy_builds() -> None:
    v4 = IP(src="10.8.0.2", dst="10.200.0.2") / ICMP(id=0x5143, seq=3) / (b"q" * 56)
    assert icmp_echo("10.8.0.2", "10.200.0.2", 3, 56) == bytes(v4)
    v6 = IPv6(src="fd00:8::2", dst="fd00:200::2") / ICMPv6EchoRequest(id=0x5143, seq=3)
    assert icmp_echo("fd00:8::2", "fd00:200::2", 3, 0) == bytes(v6)
    for src, dst, layer in (("10.8.0.2", "192.0.2.1", IP), ("fd00:8::2", "fd00:c0::1", IPv6)):
        syn = layer(src=src, dst=dst) / TCP(sport=40000, dport=22, flags="S", seq=1)
        assert tcp_syn(src, dst, 40000, 22) == bytes(syn)
        assert not is_syn_ack(bytes(syn))
        assert is_syn_ack(bytes(layer(src=dst, dst=src) / TCP(flags="SA")))
    assert is_echo_reply(bytes(IP() / ICMP(type=0))) and not is_echo_reply(bytes(v4))
    assert is_echo_reply(bytes(IPv6() / ICMPv6EchoReply()))
    assert not is_echo_reply(b"") and not is_echo_reply(b"\x45" * 10)


def test_the_malformed_certificate_has_an_unparsable_subject() -> None:
    cert, _ = unparsable_subject_certificate()
    try:
        cert.subject.rfc4514_string()
    except ValueError:
        return
    raise AssertionError("the subject parsed")


def test_injected_frames_reach_the_peer_as_written() -> None:
    net = Network()
    client_config, server_config = make_configs(["qt"])
    client = HostileQuicConnection(configuration=client_config, stream_mode=True)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        stream_mode=True,
    )
    path = net.add_connection_pair(client, server)
    net.run(1.0)
    stream_id = client.claim_stream_id(unidirectional=True)
    assert stream_id == 2 and client.get_next_available_stream_id(is_unidirectional=True) == 6
    client.inject(*stream_frame(stream_id, 0, b"\x00\x02\x20\x01", fin=True))
    net.run(0.5)
    got = [e for e in path.server.quic_events if isinstance(e, StreamDataReceived)]
    assert [(e.stream_id, e.data, e.end_stream) for e in got] == [(2, b"\x00\x02\x20\x01", True)]
    # a stream the server should have opened: the server must close the connection
    client.inject(*stream_frame(1, 0, b"x", fin=False))
    net.run(0.5)
    closes = [e for e in path.server.quic_events if isinstance(e, ConnectionTerminated)]
    assert closes and closes[0].error_code == QuicErrorCode.STREAM_STATE_ERROR


def test_inputs_are_seeded_bounded_and_cover_every_kind() -> None:
    budget = 1422

    def draw(seed: int) -> list[tuple[str, str, bytes | None]]:
        gen = InputGenerator(seed, CONTEXT)
        out = []
        for index in range(3000):
            kind = gen.kind(session_mode=index % 2 == 0, stream_mode=True)
            item = gen.next(kind, budget)
            out.append((item.kind, item.label, item.datagram))
        out.append(("session_message", gen.session_message().label, None))
        return out

    first = draw(7)
    assert first == draw(7) and first != draw(8)
    assert {kind for kind, _, _ in first} == set(KINDS)
    sizes = [len(d) for _, _, d in first if d is not None]
    assert min(sizes) == 0 and max(sizes) == budget + 1
    assert {budget - 1, budget, budget + 1} <= set(sizes)


def test_protocol_types_walk_every_value_once_per_cycle() -> None:
    gen = InputGenerator(1, CONTEXT, pt_seed="x", pt_cursor=0)
    values = [gen.next_protocol_type() for _ in range(0x10000)]
    assert sorted(values) == list(range(0x10000))
    later = InputGenerator(2, CONTEXT, pt_seed="x", pt_cursor=100)
    assert later.next_protocol_type() == values[100]  # batches continue the same walk


def test_ip_packets_have_the_asked_size_and_mostly_our_source() -> None:
    gen = InputGenerator(3, CONTEXT)
    rng = random.Random(0)
    ours = 0
    for _ in range(500):
        size = rng.randint(0, 1500)
        packet = gen.ip_packet(size)
        assert len(packet) <= size
        if size >= 20 and packet[0] >> 4 == 4 and packet[12:16] == bytes((10, 8, 0, 4)):
            ours += 1
    assert ours > 100
