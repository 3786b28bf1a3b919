"""Attacks on the UDP/QUIC server edge (tunnel.aio.udp QuicServer), reproduced on loopback (no
root): each test sends what an attacker would and checks that other clients are unharmed.

Sources that look spoofed: every address of 127.0.0.0/8 is local on Linux, so the junk comes
from many loopback addresses and ports (other /24 prefixes included) without raw sockets.
The tests only use the QuicServer API that existed before the hardening, so they can be run
against the earlier udp.py too (where each one fails).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from aioquic.quic.packet import pull_quic_header

from tests.unit.quic_harness import make_configs
from tests.unit.test_udp_loopback import echo_server, within
from tunnel.aio.udp import EndpointError, QuicClient, QuicDriver, QuicServer, UdpEndpoint
from tunnel.protocol.quic_ext import TunnelQuicConnection
from tunnel.protocol.stateless_reset import (
    is_reset,
    reset_key_from_secret,
    reset_token,
    tag_connection_id,
)

KEY = reset_key_from_secret(b"test key of the server attacks")
INITIAL_SIZE = 1200
INTERNAL_ERROR = 0x1  # RFC 9000 §20.1


def junk_initial(size: int = INITIAL_SIZE, version: int = 1, token: bytes = b"") -> bytes:
    """Random bytes behind a valid-looking long header: Initial type, fresh 8-byte connection
    IDs, a consistent Length, padded to `size` like a client's first datagram (RFC 9000
    §14.1). Costs the attacker nothing; no key can decrypt it."""
    assert len(token) < 64
    head = bytes([0xC0 | (os.urandom(1)[0] & 0x0F)]) + version.to_bytes(4, "big")
    head += b"\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + bytes([len(token)]) + token
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


def junk_sockets(count: int, network: str = "127.0.9") -> list[socket.socket]:
    """`count` non-blocking UDP sockets on different loopback addresses of `network`.0/24."""
    sockets = []
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((f"{network}.{index % 250 + 1}", 0))
        sockets.append(sock)
    return sockets


def spray(sockets: list[socket.socket], target: tuple[str, int], count: int) -> int:
    """Send `count` junk Initials round-robin from `sockets`; the number really sent."""
    sent = 0
    for index in range(count):
        try:
            sockets[index % len(sockets)].sendto(junk_initial(), target)
        except OSError:
            continue  # a full socket buffer: the flood goes on
        sent += 1
    return sent


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll `condition` until it holds (bounded)."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


# -- 1. junk Initials must not keep a real client out (RFC 9000 §8.1) -----------------------


def test_real_client_connects_during_a_flood_of_junk_initials() -> None:
    """Before: every junk Initial made a connection that held a slot for the idle timeout, so
    2 x max_connections junk datagrams kept every real client out."""
    client_cfg, server_cfg = make_configs(["t"])
    max_connections = 64

    async def scenario() -> None:
        server = echo_server(
            UdpEndpoint.bind("127.0.0.1"), server_cfg, max_connections=max_connections
        )
        target = server.endpoint.local_address
        flooders = junk_sockets(32) + junk_sockets(32, "127.0.10")
        try:
            first = spray(flooders, target, 2 * max_connections)
            await until(lambda: server.endpoint.stats.datagrams_received >= first)
            flooding = True
            flood_sent = first

            async def flood() -> None:
                nonlocal flood_sent
                # bounded in count and time: at most 40000 datagrams, stops with the client
                for _ in range(40000 // 64):
                    if not flooding:
                        return
                    flood_sent += spray(flooders, target, 64)
                    await asyncio.sleep(0)

            flood_task = asyncio.create_task(flood())
            got: list[QuicEvent] = []
            client = await QuicClient.connect(
                UdpEndpoint.bind("127.0.0.1"),
                target,
                client_cfg,
                got.append,
                timeout=5.0,
                create_connection=TunnelQuicConnection,
            )
            client.driver.quic.send_stream_data(0, b"still served", end_stream=True)
            client.driver.transmit()
            await until(
                lambda: any(isinstance(e, StreamDataReceived) and e.end_stream for e in got)
            )
            flooding = False
            await flood_task
            echoed = b"".join(e.data for e in got if isinstance(e, StreamDataReceived))
            assert echoed == b"still served"
            assert len(server.connections) <= max_connections
            assert flood_sent > 2 * max_connections
            await client.close()
        finally:
            for sock in flooders:
                sock.close()
            await server.close()

    within(30, scenario)


# -- 2. one connection's exception stays with that connection -------------------------------


def test_one_connections_exception_leaves_the_rest_of_the_batch_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: an exception of one connection's event handler escaped from the server's batch
    callback and the other datagrams of that batch were thrown away."""
    client_cfg, server_cfg = make_configs(["t"])
    caplog.set_level(logging.DEBUG, logger="qtun")

    async def scenario() -> None:
        endpoint = UdpEndpoint.bind("127.0.0.1")
        wakeup_of: dict[bytes, int] = {}

        def on_connection(driver: QuicDriver) -> None:
            def on_event(event: QuicEvent) -> None:
                if isinstance(event, StreamDataReceived) and event.data:
                    wakeup_of[event.data] = endpoint.stats.receive_wakeups
                    if event.data == b"boom":
                        raise RuntimeError("handler bug hit by this connection only")
                    driver.quic.send_stream_data(event.stream_id, event.data, event.end_stream)

            driver.on_event = on_event

        server = QuicServer(endpoint, server_cfg, on_connection)
        server.start()
        events_a: list[QuicEvent] = []
        events_b: list[QuicEvent] = []
        a = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), endpoint.local_address, client_cfg, events_a.append
        )
        b = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), endpoint.local_address, client_cfg, events_b.append
        )
        # Both datagrams in ONE batch, the failing connection's first: the server stops
        # reading, both clients send (loopback queues each datagram before sendto returns),
        # then the server reads again.
        loop = asyncio.get_running_loop()
        loop.remove_reader(endpoint.sock.fileno())
        sent_before = (a.endpoint.stats.datagrams_sent, b.endpoint.stats.datagrams_sent)
        a.driver.quic.send_stream_data(0, b"boom", end_stream=True)
        a.driver.transmit()
        b.driver.quic.send_stream_data(0, b"fine", end_stream=True)
        b.driver.transmit()
        assert a.endpoint.stats.datagrams_sent > sent_before[0]
        assert b.endpoint.stats.datagrams_sent > sent_before[1]
        server.start()

        def closed_a() -> list[ConnectionTerminated]:
            return [e for e in events_a if isinstance(e, ConnectionTerminated)]

        await until(
            lambda: (
                bool(closed_a())
                and any(isinstance(e, StreamDataReceived) and e.end_stream for e in events_b)
            )
        )
        assert wakeup_of[b"fine"] == wakeup_of[b"boom"]  # served in the very batch that failed
        assert [(e.error_code, e.reason_phrase) for e in closed_a()] == [
            (INTERNAL_ERROR, "internal error")  # generic: nothing about our bug
        ]
        echoed = b"".join(e.data for e in events_b if isinstance(e, StreamDataReceived))
        assert echoed == b"fine"
        errors = [
            r for r in caplog.records if r.name.startswith("qtun") and r.levelno >= logging.ERROR
        ]
        assert len(errors) == 1
        assert errors[0].exc_info is not None
        assert "handler bug hit by this connection only" in str(errors[0].exc_info[1])
        assert server.internal_errors == 1
        await a.close()
        await b.close()
        await server.close()

    within(20, scenario)


# -- 4. Version Negotiation (RFC 9000 §5.2.2, §6) ------------------------------------------


def test_version_negotiation_only_for_full_size_packets_never_for_one_and_within_budget() -> None:
    """Before: an 8-byte packet got a 15-byte Version Negotiation (amplification x2), and every
    unknown-version packet got an answer, however many."""
    _, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        server = echo_server(UdpEndpoint.bind("127.0.0.1"), server_cfg)
        target = server.endpoint.local_address
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.setblocking(False)
        probe.bind(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()

        def unknown_version(scid: bytes, size: int) -> bytes:
            packet = bytes([0xC0]) + bytes.fromhex("1a2a3a4a") + b"\x08" + b"D" * 8
            packet += b"\x08" + scid
            return packet + bytes(max(0, size - len(packet)))

        try:
            # three that must stay unanswered, then one that must be: the first answer to
            # arrive has to be for the last (the server handles them in order)
            probe.sendto(unknown_version(b"tiny____", 0)[:8], target)
            probe.sendto(unknown_version(b"short___", INITIAL_SIZE - 1), target)
            vn = bytes([0x80]) + bytes(4) + b"\x08" + b"D" * 8 + b"\x08" + b"vn______"
            probe.sendto(vn + bytes(INITIAL_SIZE - len(vn)), target)  # a VN itself
            probe.sendto(unknown_version(b"answered", INITIAL_SIZE), target)
            reply = await asyncio.wait_for(loop.sock_recv(probe, 2048), 2.0)
            header = pull_quic_header(Buffer(data=reply), host_cid_length=8)
            assert header.version == 0
            assert header.destination_cid == b"answered"
            # a flood from one sender: answered within a budget, not packet for packet
            flood = 40
            for index in range(flood):
                probe.sendto(unknown_version(b"flood%03d" % index, INITIAL_SIZE), target)
            await until(lambda: server.endpoint.stats.datagrams_received >= 4 + flood)
            answers = 0
            with pytest.raises(BlockingIOError):
                while True:
                    probe.recv(2048)
                    answers += 1
            assert 0 < answers < flood
        finally:
            probe.close()
            await server.close()

    within(10, scenario)


# -- 5. junk from one network must not silence resets to the others (RFC 9000 §10.3) ---------


def test_reset_flood_from_one_prefix_leaves_resets_to_another_prefix() -> None:
    """Before: one global budget of ~100 resets/s: junk 1-RTT packets spent it and a real
    client of a restarted concentrator (here at 127.0.1.1, another /24) got no reset. (The
    junk carries connection IDs with the server's tag, as an attacker who read them on the
    wire could send: made-up ones draw no reset at all.)"""
    _, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        server = echo_server(UdpEndpoint.bind("127.0.0.1"), server_cfg)
        server.reset_key = KEY
        target = server.endpoint.local_address
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.bind(("127.0.0.1", 0))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        client.bind(("127.0.1.1", 0))
        try:
            cid = tag_connection_id(KEY, b"realcid!")
            before, after = 400, 100

            def junk_packet() -> bytes:
                return bytes([0x40]) + tag_connection_id(KEY, os.urandom(8)) + os.urandom(91)

            # all sent at once: the client's packet sits between junk the server handles
            # within a few milliseconds, whatever the machine's load
            for _ in range(before):
                junk.sendto(junk_packet(), target)
            client.sendto(bytes([0x40]) + cid + os.urandom(91), target)
            for _ in range(after):
                junk.sendto(junk_packet(), target)
            loop = asyncio.get_running_loop()
            answer = await asyncio.wait_for(loop.sock_recv(client, 2048), 2.0)
            assert is_reset(answer, [reset_token(KEY, cid)])
            await until(lambda: server.endpoint.stats.datagrams_received >= before + after + 1)
            assert server.resets_sent < before + after  # the junk prefix was bounded
        finally:
            junk.close()
            client.close()
            await server.close()

    within(10, scenario)


# -- 6. a host without IPv6 (no such host here: socket() is made to fail as it would) --------


def test_socket_family_not_supported_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))

    monkeypatch.setattr(socket, "socket", no_ipv6)
    with pytest.raises(EndpointError, match=r"^this host does not support IPv6 .*enable it$"):
        UdpEndpoint.bind("2001:db8::10")
    with pytest.raises(EndpointError, match="does not support IPv6"):
        UdpEndpoint.bind(family=socket.AF_INET6)
