"""Answers to an application's held SYN (tunnel/wire/syn_answers.py) and the NFQUEUE messages
that hold it (tunnel/aio/nfqueue.py): bytes checked field by field, checksums valid."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from testbed.hostile import checksum16, ipv4_packet, ipv6_packet, tcp_syn
from tunnel.aio.nfqueue import (
    NFQA_PAYLOAD,
    QueuedPacket,
    decode_packets,
    encode_bind,
    encode_verdict,
)
from tunnel.aio.stream_client import hold_rules
from tunnel.config import StreamClientConfig
from tunnel.wire.syn_answers import parse_syn, tcp_reset_for, unreachable_for

APP4, DEST4, ROUTER4 = "10.81.0.1", "10.200.99.1", "10.200.1.2"
APP6, DEST6, ROUTER6 = "fd00:81::1", "fd00:200:99::1", "fd00:200:1::2"


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return (
            IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!I3xB", length, proto)
        )
    return IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, proto, length)


def _payload(packet: bytes) -> tuple[str, str, int, bytes]:
    if packet[0] >> 4 == 4:
        assert checksum16(packet[:20]) == 0
        return (
            str(IPv4Address(packet[12:16])),
            str(IPv4Address(packet[16:20])),
            packet[9],
            packet[20:],
        )
    return str(IPv6Address(packet[8:24])), str(IPv6Address(packet[24:40])), packet[6], packet[40:]


@pytest.mark.parametrize(("app", "dest"), [(APP4, DEST4), (APP6, DEST6)])
def test_a_syn_is_read_and_answered_with_a_rst_that_acknowledges_it(app: str, dest: str) -> None:
    packet = tcp_syn(app, dest, 40000, 80, seq=0xFFFFFFFF)
    syn = parse_syn(packet)
    assert syn is not None and syn.flow == (syn.source, 40000, syn.destination, 80)
    assert (str(syn.source), str(syn.destination), syn.sequence) == (app, dest, 0xFFFFFFFF)
    source, destination, proto, segment = _payload(tcp_reset_for(syn))
    assert (source, destination, proto) == (dest, app, 6)
    ports_seq_ack = struct.unpack_from("!HHII", segment)
    assert ports_seq_ack == (80, 40000, 0, 0)  # the ack wraps: ISN + 1 mod 2^32
    assert segment[13] == 0x14  # RST + ACK
    assert checksum16(_pseudo(source, destination, 6, len(segment)) + segment) == 0


@pytest.mark.parametrize(
    ("app", "dest", "router"), [(APP4, DEST4, ROUTER4), (APP6, DEST6, ROUTER6)]
)
def test_the_concentrators_icmp_error_is_readdressed_quoting_the_syn(
    app: str, dest: str, router: str
) -> None:
    syn = parse_syn(tcp_syn(app, dest, 40000, 80))
    assert syn is not None
    v6 = ":" in app
    unreachable = bytes((1 if v6 else 3, 3 if v6 else 1, 0, 0, 0, 0, 0, 0)) + b"quoted"
    concentrators = (
        ipv6_packet(router, "fd00:200:1::1", 58, unreachable)
        if v6
        else (ipv4_packet(router, "10.200.1.1", 1, unreachable))
    )
    for icmp in (concentrators, unreachable):  # with its IP header, or (older) without
        answer = unreachable_for(syn, icmp)
        assert answer is not None
        source, destination, proto, message = _payload(answer)
        # from the router that refused when the concentrator copied its IP header
        assert source == (router if icmp is concentrators else dest) and destination == app
        assert proto == (58 if v6 else 1) and message[:2] == unreachable[:2]
        assert message[8:] == syn.packet
        pseudo = _pseudo(source, destination, 58, len(message)) if v6 else b""
        assert checksum16(pseudo + message) == 0


def test_what_is_not_a_syn_or_an_unreachable_is_left_alone() -> None:
    syn_ack = bytearray(tcp_syn(APP4, DEST4, 40000, 80))
    syn_ack[20 + 13] = 0x12
    assert parse_syn(bytes(syn_ack)) is None
    assert parse_syn(b"\x45" + bytes(30)) is None and parse_syn(b"") is None
    syn = parse_syn(tcp_syn(APP4, DEST4, 40000, 80))
    assert syn is not None
    assert unreachable_for(syn, bytes((11, 0, 0, 0, 0, 0, 0, 0))) is None  # time exceeded
    assert unreachable_for(syn, b"") is None


def test_nfqueue_messages() -> None:
    """linux/netfilter/nfnetlink_queue.h: config (bind, copy whole packets), verdict, and a
    queued packet read back."""
    bind = encode_bind(4481, sequence=7)
    length, kind, flags, sequence, _ = struct.unpack_from("=IHHII", bind)
    assert (length, kind, flags, sequence) == (len(bind), (3 << 8) | 2, 0x5, 7)
    assert bind[16:20] == bytes((socket.AF_UNSPEC, 0)) + (4481).to_bytes(2, "big")
    verdict = encode_verdict(4481, 42, accept=True)
    assert (
        verdict[-8:] == struct.pack("!II", 1, 42)
        and struct.unpack_from("=H", verdict, 4)[0] == (3 << 8) | 1
    )
    assert encode_verdict(4481, 42, accept=False)[-8:] == struct.pack("!II", 0, 42)
    payload = tcp_syn(APP4, DEST4, 40000, 80)
    attributes = struct.pack("=HH", 4 + 7, 1) + struct.pack("!IHB", 42, 0x0800, 3) + b"\0"
    attributes += struct.pack("=HH", 4 + len(payload), NFQA_PAYLOAD) + payload
    attributes += b"\0" * (-len(attributes) % 4)
    body = bytes(4) + attributes
    message = struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body
    error = struct.pack("=IHHII", 36, 2, 0, 0, 0) + struct.pack("=i", -1) + bytes(16)
    assert decode_packets(message + error) == ([QueuedPacket(42, payload)], [1])
    assert decode_packets(message[:-3]) == ([], [])  # a cut message is skipped


def test_hold_rules_queue_syns_to_the_intercepted_prefixes_with_bypass() -> None:
    config = StreamClientConfig(
        intercept=(ip_network("10.200.0.0/16"), ip_network("fd00:200::/32")), listen_port=4481
    )
    rules = hold_rules(config, "CHAIN")
    assert rules[4] == [
        ["-t", "mangle", "-N", "CHAIN"],
        ["-t", "mangle", "-A", "CHAIN", "-p", "tcp", "--syn", "-d", "10.200.0.0/16", "-j",
         "NFQUEUE", "--queue-num", "4481", "--queue-bypass"],
        ["-t", "mangle", "-A", "OUTPUT", "-j", "CHAIN"],
    ]  # fmt: skip
    assert rules[6][1][8] == "fd00:200::/32"
