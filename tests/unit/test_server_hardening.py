"""The server edge's defences: the admission policy (tunnel/policy/address_validation.py) and the
per-prefix reply budgets (tunnel/policy/rate_limit.py) on a fake clock, then QuicServer on loopback:
Retry, INVALID_TOKEN, the handshake timeout, one connection table for several listeners (no
stateless-reset oracle), and failures isolated on the timer path and in on_connection.
The attack reproductions themselves are in test_server_attacks.py."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from tests.unit.quic_harness import make_configs
from tests.unit.test_server_attacks import INTERNAL_ERROR, KEY, junk_initial, until
from tests.unit.test_udp_loopback import within
from tunnel.aio.udp import QuicClient, QuicDriver, QuicServer, UdpEndpoint
from tunnel.policy.address_validation import (
    AdmissionLimits,
    HandshakeGuard,
    InitialVerdict,
    RetryPolicy,
    TokenStatus,
)
from tunnel.policy.rate_limit import PrefixBudget, source_prefix
from tunnel.protocol.quic_ext import TunnelQuicConnection
from tunnel.protocol.stateless_reset import is_reset, reset_token, tag_connection_id

NONE, VALID, INVALID = TokenStatus.NONE, TokenStatus.VALID, TokenStatus.INVALID


def first_flight(client_cfg: QuicConfiguration) -> bytes:
    """A real client's first datagram (an Initial with its ClientHello), of a client that
    will never go on."""
    client = QuicConnection(configuration=client_cfg)
    client.connect(("127.0.0.1", 4433), now=0.0)
    return client.datagrams_to_send(now=0.0)[0][0]


# -- HandshakeGuard on a fake clock ----------------------------------------------------------


def test_auto_retries_only_while_half_open_connections_pile_up() -> None:
    guard: HandshakeGuard[int] = HandshakeGuard(
        AdmissionLimits(retry=RetryPolicy.AUTO, retry_threshold=2, max_half_open=3)
    )
    assert guard.admit(0, NONE) is InitialVerdict.ACCEPT
    guard.opened(1, now=0.0)
    assert guard.admit(1, NONE) is InitialVerdict.ACCEPT
    guard.opened(2, now=0.0)
    # at the threshold: unvalidated clients must prove their address first
    assert guard.admit(2, NONE) is InitialVerdict.RETRY
    assert guard.admit(2, INVALID) is InitialVerdict.INVALID_TOKEN
    # a validated one may take the slots between the threshold and the cap
    assert guard.admit(2, VALID) is InitialVerdict.ACCEPT
    guard.opened(3, now=0.0)
    assert guard.admit(3, VALID) is InitialVerdict.REFUSE_HALF_OPEN
    guard.completed(1)  # handshake done: an established connection, no longer half-open
    assert guard.half_open == 2
    assert guard.admit(3, VALID) is InitialVerdict.ACCEPT
    stats = guard.stats
    assert (stats.accepted, stats.retries, stats.invalid_tokens, stats.refused_half_open) == (
        4,
        1,
        1,
        1,
    )


def test_below_the_threshold_a_bad_token_counts_as_none() -> None:
    # RFC 9000 §8.1.3: "proceed as if the client did not have a validated address"
    guard: HandshakeGuard[int] = HandshakeGuard(AdmissionLimits(retry=RetryPolicy.AUTO))
    assert guard.admit(0, INVALID) is InitialVerdict.ACCEPT


def test_always_and_never() -> None:
    always: HandshakeGuard[int] = HandshakeGuard(AdmissionLimits(retry=RetryPolicy.ALWAYS))
    assert always.admit(0, NONE) is InitialVerdict.RETRY
    assert always.admit(0, VALID) is InitialVerdict.ACCEPT
    never: HandshakeGuard[int] = HandshakeGuard(
        AdmissionLimits(retry=RetryPolicy.NEVER, max_half_open=1)
    )
    assert never.admit(0, NONE) is InitialVerdict.ACCEPT
    never.opened(1, now=0.0)
    assert never.admit(1, NONE) is InitialVerdict.REFUSE_HALF_OPEN


def test_all_connection_slots_taken_refuses_before_anything_else() -> None:
    guard: HandshakeGuard[int] = HandshakeGuard(AdmissionLimits(), max_connections=5)
    assert guard.admit(5, VALID) is InitialVerdict.REFUSE_FULL
    assert guard.admit(5, NONE) is InitialVerdict.REFUSE_FULL  # no Retry round trip for nothing
    assert guard.stats.refused_full == 2


def test_handshake_timeout_on_a_fake_clock() -> None:
    guard: HandshakeGuard[str] = HandshakeGuard(AdmissionLimits(handshake_timeout=10.0))
    assert guard.next_deadline() is None
    guard.opened("a", now=100.0)
    guard.opened("b", now=101.0)
    guard.opened("c", now=102.0)
    guard.completed("a")
    guard.closed("c")
    assert guard.next_deadline() == 111.0  # a's deadline went with it
    assert guard.expire(110.9) == []
    assert guard.expire(111.0) == ["b"]
    assert guard.next_deadline() is None
    assert guard.stats.handshake_timeouts == 1
    assert not guard.is_half_open("b")


def test_one_source_prefix_holds_an_eighth_of_the_half_open_slots() -> None:
    """Before: one host answering our Retry packets with junk took all 64 slots. A /24 (or
    /56) now holds max_half_open // 8, validated or not; the others keep theirs."""
    guard: HandshakeGuard[int] = HandshakeGuard(AdmissionLimits(max_half_open=64))
    assert guard.limits.max_half_open_per_prefix == 8
    for key in range(8):
        # the first ones below the Retry threshold, unvalidated; then validated: alike
        token = NONE if key < 4 else VALID
        assert guard.admit(key, token, f"192.0.2.{key}") is InitialVerdict.ACCEPT
        guard.opened(key, now=0.0, source=f"192.0.2.{key}")
    assert guard.admit(8, VALID, "192.0.2.200") is InitialVerdict.REFUSE_PREFIX
    assert guard.admit(8, NONE, "192.0.2.201") is InitialVerdict.REFUSE_PREFIX  # no Retry
    assert guard.admit(8, VALID, "198.51.100.1") is InitialVerdict.ACCEPT  # another /24
    guard.opened(8, now=0.0, source="198.51.100.1")
    for key in range(9, 18):  # IPv6: one /56, whatever the /64
        source = f"2001:db8:0:{key:x}::1"
        if key < 17:
            assert guard.admit(key, VALID, source) is InitialVerdict.ACCEPT
            guard.opened(key, now=0.0, source=source)
        else:
            assert guard.admit(key, VALID, source) is InitialVerdict.REFUSE_PREFIX
    assert guard.admit(17, VALID, "2001:db8:0:100::1") is InitialVerdict.ACCEPT
    guard.completed(0)  # a finished handshake frees its prefix's share, as does a close
    assert guard.admit(16, VALID, "192.0.2.200") is InitialVerdict.ACCEPT
    guard.closed(9)
    assert guard.admit(16, VALID, "2001:db8:0:ff::1") is InitialVerdict.ACCEPT
    assert guard.stats.refused_prefix == 3
    assert AdmissionLimits(max_half_open=4).max_half_open_per_prefix == 1


def test_undecryptable_connections_count_towards_retry_until_their_deadline() -> None:
    """A connection dropped at once because its first datagram held nothing decryptable frees
    its slot and its prefix's share, but a flood of them still turns Retry on, as when each
    held its slot until the handshake timeout."""
    guard: HandshakeGuard[str] = HandshakeGuard(
        AdmissionLimits(retry=RetryPolicy.AUTO, retry_threshold=2, handshake_timeout=10.0)
    )
    for key, now in (("a", 0.0), ("b", 1.0)):
        assert guard.admit(0, NONE, "192.0.2.1") is InitialVerdict.ACCEPT
        guard.opened(key, now=now, source="192.0.2.1")
        guard.discarded(key)
    assert guard.half_open == 0
    assert guard.stats.undecryptable == 2
    assert guard.admit(0, NONE, "192.0.2.1") is InitialVerdict.RETRY
    assert guard.admit(0, VALID, "192.0.2.1") is InitialVerdict.ACCEPT  # the share is free
    assert guard.next_deadline() == 10.0
    assert guard.expire(10.0) == []  # nothing to drop: they hold no connection
    assert guard.admit(0, NONE, "192.0.2.1") is InitialVerdict.ACCEPT  # one left: below 2
    assert guard.next_deadline() == 11.0
    guard.expire(11.0)
    assert guard.next_deadline() is None


def test_the_retry_threshold_defaults_to_a_quarter_of_the_half_open_cap() -> None:
    assert AdmissionLimits().retry_threshold == 16
    assert AdmissionLimits(max_half_open=8).retry_threshold == 2
    assert AdmissionLimits(max_half_open=8, retry_threshold=8).retry_threshold == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry": "sometimes"}, "retry must be one of always, auto, never"),
        ({"max_half_open": 0}, "max_half_open must be >= 1"),
        ({"max_half_open": 4, "retry_threshold": 5}, "retry_threshold must be between 0 and"),
        ({"handshake_timeout": 0.0}, "handshake_timeout must be > 0 s"),
    ],
)
def test_limits_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdmissionLimits(**kwargs)  # type: ignore[arg-type]


# -- PrefixBudget on a fake clock --------------------------------------------------------------


def test_prefixes_are_slash_24_and_slash_56() -> None:
    assert source_prefix("192.0.2.1") == source_prefix("192.0.2.254")
    assert source_prefix("192.0.2.1") != source_prefix("192.0.3.1")
    assert source_prefix("2001:db8:0:ff::1") == source_prefix("2001:db8:0:1::2")
    assert source_prefix("2001:db8:0:100::1") != source_prefix("2001:db8:0:ff::1")
    assert source_prefix("::ffff:192.0.2.7") == source_prefix("192.0.2.1")
    assert source_prefix("fe80::1%eth0") == source_prefix("fe80::2")
    with pytest.raises(ValueError):
        source_prefix("not an address")


def test_one_prefix_spending_its_budget_leaves_the_global_one_to_the_others() -> None:
    budget = PrefixBudget(rate=100, per_prefix_rate=10)
    passed = sum(budget.allow("198.51.100.7", now=0.0) for _ in range(1000))
    assert passed == 10
    assert budget.dropped_prefix == 990
    assert budget.allow("203.0.113.9", now=0.0)  # another network still gets its reply
    # and the global bound holds whatever the prefixes
    spread = sum(budget.allow(f"10.{i // 256}.{i % 256}.1", now=0.0) for i in range(1000))
    assert spread == 100 - 10 - 1
    assert budget.dropped_total > 0
    # refilled at the rate
    assert budget.allow("198.51.100.7", now=0.1)
    assert not budget.allow("198.51.100.7", now=0.1)


def test_the_prefix_table_stays_bounded_under_spoofing() -> None:
    budget = PrefixBudget(rate=1e9, per_prefix_rate=1, max_prefixes=64)
    for i in range(10_000):
        budget.allow(f"{1 + i % 200}.{i // 200}.0.1", now=i * 0.001)
    assert budget.tracked_prefixes == 64
    budget.allow("192.0.2.1", now=100.0)  # a recent one is kept, the least recently used goes
    assert budget.tracked_prefixes == 64


# -- QuicServer on loopback ----------------------------------------------------------------------


def test_retry_always_then_the_client_connects() -> None:
    client_cfg, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        server = QuicServer(
            UdpEndpoint.bind("127.0.0.1"),
            server_cfg,
            lambda driver: None,
            admission=AdmissionLimits(retry=RetryPolicy.ALWAYS),
        )
        server.start()
        client = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), server.endpoint.local_address, client_cfg, timeout=5
        )
        assert server.stats.retries_sent == 1
        assert server.guard.stats.accepted == 1
        assert server.guard.half_open == 0  # handshake completed
        await client.close()
        await server.close()

    within(15, scenario)


def test_a_token_we_did_not_issue_gets_an_invalid_token_close() -> None:
    _, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        server = QuicServer(
            UdpEndpoint.bind("127.0.0.1"),
            server_cfg,
            lambda driver: None,
            admission=AdmissionLimits(retry=RetryPolicy.ALWAYS),
        )
        server.start()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.setblocking(False)
        probe.bind(("127.0.0.1", 0))
        try:
            initial = junk_initial(token=os.urandom(40))
            probe.sendto(initial, server.endpoint.local_address)
            loop = asyncio.get_running_loop()
            reply = await asyncio.wait_for(loop.sock_recv(probe, 2048), 2.0)
            header = pull_quic_header(Buffer(data=reply), host_cid_length=8)
            assert header.packet_type == QuicPacketType.INITIAL
            assert header.destination_cid == initial[15:23]  # our (the client's) SCID
            assert len(reply) < len(initial)
            assert server.stats.invalid_token_closes_sent == 1
            assert server.connections == set()
        finally:
            probe.close()
            await server.close()

    within(10, scenario)


def test_half_open_connections_are_capped_and_dropped_at_the_handshake_timeout() -> None:
    """Without Retry ("never"), first flights nobody finishes (real ClientHellos, from
    several networks: one holds max_half_open // 8) can take the half-open slots, but only
    those and only for handshake_timeout: then each is dropped silently, its handler told,
    and a real client gets in."""
    client_cfg, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        terminated: list[ConnectionTerminated] = []

        def on_connection(driver: QuicDriver) -> None:
            def on_event(event: QuicEvent) -> None:
                if isinstance(event, ConnectionTerminated):
                    terminated.append(event)

            driver.on_event = on_event

        limits = AdmissionLimits(retry=RetryPolicy.NEVER, max_half_open=4, handshake_timeout=0.3)
        server = QuicServer(
            UdpEndpoint.bind("127.0.0.1"), server_cfg, on_connection, admission=limits
        )
        server.start()
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
        try:
            for index, sender in enumerate(senders):
                sender.bind((f"127.0.{30 + index}.1", 0))  # ten /24s
                sender.sendto(first_flight(client_cfg), server.endpoint.local_address)
            await until(lambda: server.endpoint.stats.datagrams_received >= 10)
            assert len(server.connections) == 4
            assert server.refused_connections == 6
            await until(lambda: not server.connections)
            assert [e.reason_phrase for e in terminated] == [
                "QUIC handshake not completed within 0.3 s"
            ] * 4
            assert server.guard.stats.handshake_timeouts == 4
            assert server.internal_errors == 0
            client = await QuicClient.connect(
                UdpEndpoint.bind("127.0.0.1"), server.endpoint.local_address, client_cfg
            )
            await client.close()
        finally:
            for sender in senders:
                sender.close()
            await server.close()

    within(15, scenario)


def test_a_connection_id_sent_to_the_other_listener_gets_no_reset() -> None:
    """RFC 9000 §21.11: with a table per listener, listener B answered a connection ID of
    listener A with that connection's valid reset token, which killed it. One table: B knows
    the ID, drops the packet and the connection lives on."""
    client_cfg, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        listener_a = UdpEndpoint.bind("127.0.0.1")
        listener_b = UdpEndpoint.bind("127.0.0.2")
        got: list[QuicEvent] = []

        def on_connection(driver: QuicDriver) -> None:
            def on_event(event: QuicEvent) -> None:
                if isinstance(event, StreamDataReceived):
                    driver.quic.send_stream_data(event.stream_id, event.data, event.end_stream)

            driver.on_event = on_event

        server = QuicServer([listener_a, listener_b], server_cfg, on_connection, reset_key=KEY)
        server.start()
        client = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), listener_a.local_address, client_cfg, got.append
        )
        (driver,) = server.connections
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.setblocking(False)
        attacker.bind(("127.0.3.1", 0))
        loop = asyncio.get_running_loop()
        try:
            seen = driver.quic.host_cid  # on the wire in the client's 1-RTT packets
            attacker.sendto(bytes([0x40]) + seen + os.urandom(60), listener_b.local_address)
            # control: an ID nobody holds (but that we could have issued) IS answered on B,
            # so silence above means "known"
            unknown = tag_connection_id(KEY, b"unknown!")
            attacker.sendto(bytes([0x40]) + unknown + os.urandom(60), listener_b.local_address)
            answer = await asyncio.wait_for(loop.sock_recv(attacker, 2048), 2.0)
            assert is_reset(answer, [reset_token(KEY, unknown)])
            assert not is_reset(answer, [reset_token(KEY, seen)])
            assert server.stats.other_listener_dropped == 1
            assert server.resets_sent == 1
            client.driver.quic.send_stream_data(0, b"alive", end_stream=True)
            client.driver.transmit()
            await until(lambda: any(isinstance(e, StreamDataReceived) for e in got))
            assert not client.driver.closed
        finally:
            attacker.close()
            await client.close()
            await server.close()

    within(15, scenario)


@pytest.mark.parametrize("where", ["timer", "receive"])
def test_an_exception_inside_aioquic_closes_only_that_connection(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aioquic raising for one connection, on the timer path (QuicDriver._handle_timer, run by
    the loop) or while it receives a datagram: that connection is closed with a transport
    INTERNAL_ERROR, the other one goes on."""
    client_cfg, server_cfg = make_configs(["t"])
    caplog.set_level(logging.DEBUG, logger="qtun")

    async def scenario() -> None:
        drivers: list[QuicDriver] = []

        def on_connection(driver: QuicDriver) -> None:
            def on_event(event: QuicEvent) -> None:
                if isinstance(event, StreamDataReceived):
                    driver.quic.send_stream_data(event.stream_id, event.data, event.end_stream)

            driver.on_event = on_event
            drivers.append(driver)

        server = QuicServer(UdpEndpoint.bind("127.0.0.1"), server_cfg, on_connection)
        server.start()
        address = server.endpoint.local_address
        events_a: list[QuicEvent] = []
        events_b: list[QuicEvent] = []
        a = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), address, client_cfg, events_a.append
        )
        b = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), address, client_cfg, events_b.append
        )
        failing = drivers[0]

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"{where} bug of this connection")

        if where == "timer":
            failing.quic.handle_timer = broken  # type: ignore[method-assign]
            failing._arm_timer(asyncio.get_running_loop().time())  # due now, run by the loop
        else:
            failing.quic.receive_datagram = broken  # type: ignore[method-assign]
            a.driver.quic.send_ping(1)
            a.driver.transmit()
        await until(lambda: any(isinstance(e, ConnectionTerminated) for e in events_a))
        closed = [e for e in events_a if isinstance(e, ConnectionTerminated)]
        assert (closed[0].error_code, closed[0].frame_type) == (INTERNAL_ERROR, 0)  # transport
        b.driver.quic.send_stream_data(0, b"unaffected", end_stream=True)
        b.driver.transmit()
        await until(lambda: any(isinstance(e, StreamDataReceived) for e in events_b))
        assert server.internal_errors == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].name == "qtun.udp"
        await a.close()
        await b.close()
        await server.close()

    within(15, scenario)


def test_an_exception_in_on_connection_closes_that_connection_only() -> None:
    client_cfg, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        calls = 0

        def on_connection(driver: QuicDriver) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise KeyError("first connection's setup bug")

        server = QuicServer(UdpEndpoint.bind("127.0.0.1"), server_cfg, on_connection)
        server.start()
        with pytest.raises(ConnectionError, match=r"handshake: internal error \(error 0x1\)"):
            await QuicClient.connect(
                UdpEndpoint.bind("127.0.0.1"), server.endpoint.local_address, client_cfg
            )
        second = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), server.endpoint.local_address, client_cfg
        )
        assert server.internal_errors == 1
        await second.close()
        await server.close()

    within(15, scenario)


# -- QuicServer in memory: first flights (datagrams fed to _on_datagrams, sends recorded) ------

CLIENT = ("127.0.0.5", 40000)
ELSEWHERE = ("127.0.8.8", 53)  # a spoofed victim's address


def recording_server(
    server_cfg: QuicConfiguration,
) -> tuple[QuicServer, list[tuple[bytes, NetworkAddress]]]:
    """A QuicServer (default admission) whose sends are recorded instead of sent."""
    server = QuicServer(
        UdpEndpoint.bind("127.0.0.1"),
        server_cfg,
        lambda driver: None,
        create_connection=functools.partial(TunnelQuicConnection, reset_key=KEY),
        reset_key=KEY,
    )
    sent: list[tuple[bytes, NetworkAddress]] = []
    server.endpoint.send_batch = sent.extend  # type: ignore[method-assign]
    return server, sent


def feed(server: QuicServer, *datagrams: tuple[bytes, NetworkAddress]) -> None:
    server._on_datagrams(server.endpoint, list(datagrams))


def test_junk_initials_make_no_connection_and_get_no_answer() -> None:
    """Before: a junk Initial made a half-open connection, and each further junk Initial to
    its connection ID, from any (spoofed) address, started it over and made it send a
    1200-byte Initial there: 2-3x reflection at 9x the CPU of a Retry. Now nothing decrypted
    means nothing kept and nothing sent."""
    _, server_cfg = make_configs(["t"])

    async def scenario() -> None:
        server, sent = recording_server(server_cfg)
        first = junk_initial()
        dcid = first[6:14]
        feed(server, (first, CLIENT))
        assert server.connections == set()
        assert server.guard.half_open == 0
        assert server.guard.stats.undecryptable == 1
        for index in range(5):
            again = first[:6] + dcid + junk_initial()[14:]
            feed(server, (again, (f"127.7.{index}.1", 5000)))
        await asyncio.sleep(0.05)
        assert sent == []
        assert server.connections == set()
        await server.close()

    within(10, scenario)


def test_a_half_open_connection_takes_initials_only_from_its_creator() -> None:
    """A real client whose ClientHello fills two Initials (fed one batch each) completes its
    handshake, while Initials to its connection ID from another address (its own next
    Initial, copied by someone on the path and sent from a spoofed source) are dropped:
    before, aioquic took the sender as the connection's new path and answered it."""
    client_cfg, server_cfg = make_configs(["t"])
    # a ClientHello too long for one Initial (RFC 9001 §4.3: clients may need two)
    client_cfg.alpn_protocols = ["t"] + [f"{index:03d}" + "x" * 60 for index in range(20)]

    async def scenario() -> None:
        server, sent = recording_server(server_cfg)
        client = QuicConnection(configuration=client_cfg)
        now = asyncio.get_running_loop().time()
        client.connect(server.endpoint.local_address, now=now)
        flight = [data for data, _ in client.datagrams_to_send(now=now)]
        assert len(flight) == 2
        assert all(
            pull_quic_header(Buffer(data=d), 8).packet_type == QuicPacketType.INITIAL
            for d in flight
        )
        for data in flight:
            feed(server, (data, CLIENT))
        (driver,) = server.connections
        assert server.guard.is_half_open(driver)
        # the client's own retransmission of its first flight, sent from elsewhere
        timer = client.get_timer()
        assert timer is not None
        client.handle_timer(now=timer)
        copied = [data for data, _ in client.datagrams_to_send(now=timer)]
        feed(server, *((data, ELSEWHERE) for data in copied))
        assert [addr for _, addr in sent if addr != CLIENT] == []
        assert server.stats.other_address_initials_dropped == len(copied)
        # the handshake, in memory, from the client's address
        events: list[QuicEvent] = []
        for _ in range(20):
            for data, addr in sent:
                assert addr == CLIENT
                client.receive_datagram(data, server.endpoint.local_address, now=now)
            sent.clear()
            events += iter(client.next_event, None)
            feed(server, *((data, CLIENT) for data, _ in client.datagrams_to_send(now=now)))
            if not server.guard.is_half_open(driver):
                break
        assert any(isinstance(e, HandshakeCompleted) for e in events)
        assert not server.guard.is_half_open(driver)  # the server's handshake completed too
        assert server.connections == {driver}
        assert server.guard.stats.undecryptable == 0
        await server.close()

    within(10, scenario)
