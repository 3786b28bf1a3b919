"""The datagram fast path of tunnel.protocol.quic_ext (issue 14) against aioquic's generic path.

The same traffic on the in-memory network (fake clock, seeded loss) runs twice, once with
every connection on aioquic's generic path and once on the fast path, and everything
observable must be the same: the plaintext of every 1-RTT packet each end protects (first byte,
packet number, frames), the datagrams delivered, the packets loss recovery registers as sent,
acknowledged and lost, the congestion window after each of those, the timers (pacing, loss
detection, idle deadline) and the datagram fates. The handshake certificate is Ed25519, whose
signatures have one size, so that both runs start from the same congestion state. A peer
running plain aioquic decodes every fast-path packet. Every test runs twice: with the fast
path's C steps (packet protection and DATAGRAM frames, tunnel/protocol/quic_crypto.c) and with
their Python twins.
"""

from __future__ import annotations

import datetime
import functools
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import DatagramFrameReceived, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.quic_harness import Network, Path
from tunnel.aio.udp import paced_burst
from tunnel.protocol import quic_ext
from tunnel.protocol.quic_ext import TunnelQuicConnection, datagram_budget

DELAY = 0.010  # one way
RATE = 10e6 / 8  # bytes/s, the client's uplink when a test asks for a bottleneck


@pytest.fixture(autouse=True, scope="module", params=["c", "python"])
def protection(request: pytest.FixtureRequest) -> Iterator[str]:
    quic_ext.use_packet_protection(request.param)
    yield request.param
    quic_ext.use_packet_protection("c")


@functools.cache
def ed25519_certificate() -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "concentrator.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, None)
    )
    return cert, key


def configs(cc: str = "reno") -> tuple[QuicConfiguration, QuicConfiguration]:
    cert, key = ed25519_certificate()
    common: dict[str, Any] = dict(
        alpn_protocols=["qt"],
        max_datagram_size=1452,
        max_datagram_frame_size=65536,
        congestion_control_algorithm=cc,
    )
    client = QuicConfiguration(
        is_client=True, verify_mode=ssl.CERT_NONE, server_name="concentrator.test", **common
    )
    server = QuicConfiguration(is_client=False, certificate=cert, private_key=key, **common)
    return client, server


@dataclass
class Trace:
    """What one end did, as far as anything outside the connection can tell."""

    packets: list[tuple[int, int, bytes]] = field(default_factory=list)
    """(first byte, packet number, plaintext frames) of every 1-RTT packet protected."""
    recovery: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(sent/acked/lost, packet number, congestion window, bytes in flight) in order."""
    timers: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    """(now, get_timer(), idle deadline) after every datagrams_to_send."""
    fast_calls: int = 0
    fast_receives: int = 0


def trace(quic: TunnelQuicConnection) -> Trace:
    """Record `quic`'s 1-RTT packets and loss recovery from now on (after the handshake)."""
    record = Trace()
    crypto = quic._cryptos[tls.Epoch.ONE_RTT]
    encrypt = crypto.encrypt_packet

    def encrypt_packet(header: bytes, payload: bytes, number: int) -> bytes:
        record.packets.append((header[0], number, bytes(payload)))
        return encrypt(header, payload, number)

    crypto.encrypt_packet = encrypt_packet  # type: ignore[method-assign,assignment]
    seal = quic._seal

    def seal_recorded(pair: Any, header: bytes, payload: bytes, number: int) -> bytes:
        # the fast path's protection: the same record
        record.packets.append((header[0], number, bytes(payload)))
        return seal(pair, header, payload, number)

    quic._seal = seal_recorded  # type: ignore[method-assign,assignment]
    loss = quic._loss
    cc = loss._cc

    def wrap(name: str, label: str, many: bool) -> None:
        original: Callable[..., None] = getattr(cc, name)

        def recorded(**kwargs: Any) -> None:
            original(**kwargs)
            packets = kwargs["packets"] if many else [kwargs["packet"]]
            for packet in packets:
                record.recovery.append(
                    (label, packet.packet_number, cc.congestion_window, cc.bytes_in_flight)
                )

        setattr(cc, name, recorded)

    wrap("on_packet_sent", "sent", False)
    wrap("on_packet_acked", "acked", False)
    wrap("on_packets_lost", "lost", True)
    fast = quic._send_datagram_packets

    def counted(now: float) -> list[tuple[bytes, Any]]:
        record.fast_calls += 1
        return fast(now)

    quic._send_datagram_packets = counted  # type: ignore[method-assign]
    receive = quic._receive_short_packet

    def receive_counted(data: bytes, addr: Any, now: float) -> bool:
        taken = receive(data, addr, now)
        record.fast_receives += taken
        return taken

    quic._receive_short_packet = receive_counted  # type: ignore[method-assign]
    send = quic.datagrams_to_send

    def sending(now: float) -> list[tuple[bytes, Any]]:
        datagrams = send(now)
        record.timers.append((now, quic.get_timer(), quic._close_at))
        return datagrams

    quic.datagrams_to_send = sending  # type: ignore[method-assign]
    return record


@dataclass
class Outcome:
    client: Trace
    server: Trace
    delivered_up: list[bytes]
    delivered_down: list[bytes]
    fates: list[tuple[Any, bool]]


def connected(fast: bool, cc: str = "reno", pacing: float | None = None) -> tuple[Network, Path]:
    client_config, server_config = configs(cc)
    client = TunnelQuicConnection(configuration=client_config, pacing_rate=pacing)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        pacing_rate=pacing,
    )
    client.fast_datagram_path = server.fast_datagram_path = fast
    net = Network()
    path = net.add_connection_pair(client, server, delay=DELAY)
    net.run(0.5)
    assert client._handshake_confirmed and server._handshake_confirmed
    return net, path


def exchange(
    fast: bool,
    sizes: list[int],
    *,
    loss: float = 0.0,
    seed: int = 1,
    cc: str = "reno",
    pacing: float | None = None,
    rate: float | None = None,
    replies: bool = True,
    burst: tuple[float, int] | None = None,
) -> Outcome:
    """`sizes` datagrams client -> server in bursts (every other one tracked), and with
    `replies` one datagram server -> client for every fourth received, on links losing `loss`.
    With `burst` (slack, max datagrams), each end sends as QuicDriver does: the generic path
    through paced_burst, the fast path with burst_slack and burst_max."""
    net, path = connected(fast, cc, pacing)
    client, server = path.client.quic, path.server.quic
    assert isinstance(client, TunnelQuicConnection) and isinstance(server, TunnelQuicConnection)
    traces = trace(client), trace(server)
    if burst is not None:
        for quic in (client, server):
            if fast:
                quic.burst_slack, quic.burst_max = burst
            else:
                send = quic.datagrams_to_send
                quic.datagrams_to_send = functools.partial(  # type: ignore[method-assign]
                    paced_burst, send, quic.get_timer, slack=burst[0], max_burst=burst[1]
                )
    for link in (path.up_link, path.down_link):
        link.loss, link.seed = loss, seed
    path.up_link.rate = rate
    seen = 0
    for n, size in enumerate(sizes):
        data = n.to_bytes(2, "big")[:size] + bytes(max(0, size - 2))
        client.send_datagram_frame(data, token=n if n % 2 else None)
        if n % 16 == 15:
            net.run(0.003)
            if replies:
                arrived = [
                    e for e in path.server.quic_events if isinstance(e, DatagramFrameReceived)
                ]
                for _ in range(len(arrived) // 4 - seen):
                    server.send_datagram_frame(b"reply" + bytes(60))
                    seen += 1
    net.run(3.0)
    return Outcome(
        client=traces[0],
        server=traces[1],
        delivered_up=[
            e.data for e in path.server.quic_events if isinstance(e, DatagramFrameReceived)
        ],
        delivered_down=[
            e.data for e in path.client.quic_events if isinstance(e, DatagramFrameReceived)
        ],
        fates=client.take_datagram_fates(),
    )


def assert_same(generic: Outcome, fast: Outcome) -> None:
    assert generic.client.fast_calls == generic.server.fast_calls == 0
    assert generic.client.fast_receives == generic.server.fast_receives == 0
    assert fast.client.fast_calls > 0 and fast.server.fast_calls > 0
    assert fast.client.fast_receives > 0 and fast.server.fast_receives > 0
    for side in ("client", "server"):
        slow_trace, fast_trace = getattr(generic, side), getattr(fast, side)
        assert fast_trace.packets == slow_trace.packets, side
        assert fast_trace.recovery == slow_trace.recovery, side
        assert fast_trace.timers == slow_trace.timers, side
    assert fast.delivered_up == generic.delivered_up
    assert fast.delivered_down == generic.delivered_down
    assert fast.fates == generic.fates


def test_a_burst_gives_the_same_packets_and_recovery_on_both_paths() -> None:
    sizes = [1400] * 200 + [40, 700, 1, 2, 3] * 20
    generic, fast = exchange(False, sizes), exchange(True, sizes)
    assert_same(generic, fast)
    assert len(fast.delivered_up) == len(sizes)
    assert {label for label, *_ in fast.client.recovery} == {"sent", "acked"}


@pytest.mark.parametrize("cc", ["reno", "cubic", "bbr"])
def test_a_lossy_bottleneck_gives_the_same_losses_window_and_fates(cc: str) -> None:
    sizes = [1400] * 600
    generic = exchange(False, sizes, loss=0.03, seed=7, cc=cc, rate=RATE)
    fast = exchange(True, sizes, loss=0.03, seed=7, cc=cc, rate=RATE)
    assert_same(generic, fast)
    labels = [label for label, *_ in fast.client.recovery]
    assert "lost" in labels and "acked" in labels
    assert any(not f.acked for f in fast.fates) and any(f.acked for f in fast.fates)


@pytest.mark.parametrize("cc", ["reno", "bbr", "none"])
def test_a_paced_burst_in_one_call_sends_what_the_drivers_calls_send(cc: str) -> None:
    """QuicDriver releases what the pacer allows within its slack: on the generic path by
    calling datagrams_to_send again at each next timer (paced_burst), on the fast path inside
    one call. Both send the same packets at the same times (no loss here: a loss timer
    due inside the slack stops paced_burst, not the fast path's burst)."""
    sizes = [1400] * 400
    kind = {"cc": cc, "rate": RATE, "pacing": RATE / 2 if cc == "none" else None}
    generic = exchange(False, sizes, burst=(0.001, 64), **kind)  # type: ignore[arg-type]
    fast = exchange(True, sizes, burst=(0.001, 64), **kind)  # type: ignore[arg-type]
    assert fast.client.fast_calls > 0
    # fewer calls on the fast path: each takes the whole burst
    assert len(fast.client.timers) < len(generic.client.timers)
    for side in ("client", "server"):
        slow_trace, fast_trace = getattr(generic, side), getattr(fast, side)
        assert fast_trace.packets == slow_trace.packets, side
        assert fast_trace.recovery == slow_trace.recovery, side
    assert fast.delivered_up == generic.delivered_up
    assert fast.fates == generic.fates


def test_congestion_control_none_is_paced_the_same() -> None:
    sizes = [1200] * 300
    generic = exchange(False, sizes, cc="none", pacing=RATE / 2, rate=RATE)
    fast = exchange(True, sizes, cc="none", pacing=RATE / 2, rate=RATE)
    assert_same(generic, fast)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=1400), min_size=1, max_size=120),
    loss=st.sampled_from([0.0, 0.02, 0.1]),
    seed=st.integers(min_value=0, max_value=2**16),
    replies=st.booleans(),
)
def test_any_sizes_and_losses_give_the_same_outcome(
    sizes: list[int], loss: float, seed: int, replies: bool
) -> None:
    generic = exchange(False, sizes, loss=loss, seed=seed, replies=replies)
    fast = exchange(True, sizes, loss=loss, seed=seed, replies=replies)
    assert fast.client.packets == generic.client.packets
    assert fast.client.recovery == generic.client.recovery
    assert fast.server.packets == generic.server.packets
    assert fast.server.recovery == generic.server.recovery
    assert fast.client.timers == generic.client.timers
    assert fast.server.timers == generic.server.timers
    assert (fast.delivered_up, fast.delivered_down) == (
        generic.delivered_up,
        generic.delivered_down,
    )
    assert fast.fates == generic.fates


# -- a plain aioquic peer ---------------------------------------------------------------


def plain_peer_path(fast_client: bool = True) -> tuple[Network, Path]:
    """A fast-path client and a concentrator that is aioquic's own QuicConnection."""
    client_config, server_config = configs()
    client = TunnelQuicConnection(configuration=client_config)
    client.fast_datagram_path = fast_client
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    net = Network()
    path = net.add_connection_pair(client, server, delay=DELAY)
    net.run(0.5)
    return net, path


def test_plain_aioquic_decodes_every_fast_path_packet_key_updates_included() -> None:
    """Both ways: the fast path's packets to plain aioquic, plain aioquic's to the fast path
    (which follows the peer's key update as aioquic does, RFC 9001 §6)."""
    net, path = plain_peer_path()
    client, server = path.client.quic, path.server.quic
    assert isinstance(client, TunnelQuicConnection)
    record = trace(client)
    budget = datagram_budget(client)
    sent = [n.to_bytes(2, "big") + bytes(size) for n, size in enumerate([budget - 2, 0, 100] * 50)]
    replies = [b"reply %d" % n for n in range(len(sent))]
    for n, data in enumerate(sent):
        client.send_datagram_frame(data)
        server.send_datagram_frame(replies[n])
        for at, updating in ((75, client), (110, server)):
            if n == at:
                # One side updates while the other is quiet for a round trip: aioquic keeps no
                # old keys (RFC 9001 §6.5 allows it), so a packet of the old phase that
                # crosses the update is dropped, on either path.
                net.run(0.2)
                updating.request_key_update()
                updating.send_datagram_frame(b"key update")
                net.run(0.2)
        if n % 10 == 9:
            net.run(0.002)
    net.run(1.0)
    assert record.fast_calls > 0 and record.fast_receives > 0
    up = [e.data for e in path.server.quic_events if isinstance(e, DatagramFrameReceived)]
    assert up == [*sent[:76], b"key update", *sent[76:]]
    down = [e.data for e in path.client.quic_events if isinstance(e, DatagramFrameReceived)]
    assert down == [*replies[:111], b"key update", *replies[111:]]
    assert len({first & 0x04 for first, _, _ in record.packets}) == 2  # both key phases
    # the plain peer acknowledged every packet: nothing in flight, nothing declared lost
    assert client._loss.bytes_in_flight == 0
    assert "lost" not in {label for label, *_ in record.recovery}


def test_anything_but_datagrams_goes_the_generic_way() -> None:
    net, path = plain_peer_path()
    client = path.client.quic
    assert isinstance(client, TunnelQuicConnection)
    record = trace(client)
    assert client._only_datagrams_to_send()
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"hello", end_stream=True)
    assert not client._only_datagrams_to_send()
    client.send_datagram_frame(b"datagram")
    net.flush()  # sends, nothing arrives at this instant
    assert record.fast_calls == 0  # the STREAM frame went with the DATAGRAM, generically
    assert len(record.packets) == 1
    net.run(0.1)
    data = [e.data for e in path.server.quic_events if isinstance(e, StreamDataReceived)]
    assert data == [b"hello"]
    client.send_ping(7)
    assert not client._only_datagrams_to_send()
    net.run(0.1)
    assert client._only_datagrams_to_send()
    client.close()
    assert not client._only_datagrams_to_send()


# -- received packets the fast path must treat as aioquic does ---------------------------


def forged(sender: TunnelQuicConnection, payload: bytes, first_bits: int = 0) -> bytes:
    """A 1-RTT packet from `sender` with these frames (and header bits), protected with its
    keys and its next packet number."""
    number = sender._packet_number
    sender._packet_number += 1
    crypto = sender._cryptos[tls.Epoch.ONE_RTT]
    first = 0x40 | first_bits | (crypto.key_phase << 2) | 0x01
    header = bytes((first,)) + sender._peer_cid.cid + (number & 0xFFFF).to_bytes(2, "big")
    return crypto.encrypt_packet(header, payload, number)


CASES: dict[str, list[Any]] = {
    "datagram": [b"\x31\x03abc"],
    "datagram without length": [b"\x30abc"],
    "replayed": ["same", b"\x31\x03abc"],
    "padding only": [b"\x00" * 8],
    "datagram, padding, ping": [b"\x31\x01a\x00\x00\x01"],
    "stream frame beside a datagram": [b"\x31\x01a\x0b\x00\x02hi"],
    "reserved bits": [(0x18, b"\x31\x03abc")],
    "unknown frame after a datagram": [b"\x31\x01a\x1f"],
    "truncated datagram": [b"\x31\x05ab\x00\x00"],
    "tampered": ["tamper", b"\x31\x03abc"],
    "NEW_TOKEN to a server": [b"\x31\x01a\x07\x00"],
}


def receive_forged(fast: bool, steps: list[Any]) -> tuple[Any, ...]:
    net, path = connected(fast)
    client, server = path.client.quic, path.server.quic
    assert isinstance(client, TunnelQuicConnection) and isinstance(server, TunnelQuicConnection)
    record = trace(server)
    before = len(path.server.quic_events)
    now = net.clock.now
    previous = b""
    for step in steps:
        if step in ("same", "tamper"):
            continue
        bits, payload = step if isinstance(step, tuple) else (0, step)
        data = forged(client, payload, bits)
        if "tamper" in steps:
            data = data[:-1] + bytes((data[-1] ^ 1,))
        server.receive_datagram(data, path.client.addr, now=now)
        if "same" in steps:
            server.receive_datagram(data, path.client.addr, now=now)
        previous = data
    assert previous
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    events = path.server.quic_events[before:] + events
    space = server._spaces[tls.Epoch.ONE_RTT]
    close = server._close_event
    return (
        record.fast_receives,
        [type(e).__name__ for e in events],
        [e.data for e in events if isinstance(e, DatagramFrameReceived)],
        None if close is None else (close.error_code, close.frame_type, close.reason_phrase),
        list(space.ack_queue),
        space.ack_at,
        space.expected_packet_number,
        server._close_pending,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_received_packet_has_the_same_effect_on_both_paths(case: str) -> None:
    generic = receive_forged(False, CASES[case])
    fast = receive_forged(True, CASES[case])
    assert generic[0] == 0
    # the fast path takes every packet it can decrypt, and leaves one it cannot (it may be a
    # stateless reset: RFC 9000 §10.3.1 lets only a processed packet skip that check)
    assert fast[0] == 0 if case == "tampered" else fast[0] > 0
    assert fast[1:] == generic[1:]


def full_window_ack(fast: bool) -> tuple[Any, ...]:
    """One datagrams_to_send with an ACK of two ranges due in packet number 8k (aioquic adds a
    PING to it, "ACK-of-ACK trigger") while the congestion window has no room: the PING does
    not fit, and the builder stops after the ACK-only packet, without charging the pacer."""
    net, path = connected(fast)
    client = path.client.quic
    assert isinstance(client, TunnelQuicConnection)
    record = trace(client)
    now = net.clock.now
    space = client._spaces[tls.Epoch.ONE_RTT]
    largest = space.largest_received_packet
    space.ack_queue.add(largest + 2)  # a gap: two ranges
    space.largest_received_packet = largest + 2
    space.ack_at = now - 0.001
    client._packet_number += -client._packet_number % 8
    loss = client._loss
    loss._cc.bytes_in_flight = loss.congestion_window
    client.send_datagram_frame(b"blocked")
    pacer = loss._pacer
    datagrams = client.datagrams_to_send(now)
    numbers = sorted(space.sent_packets)[-len(datagrams) :] if datagrams else []
    return (
        record.fast_calls,
        len(datagrams),
        record.packets,
        record.timers,
        (pacer.bucket_time, pacer.evaluation_time),
        [
            (
                packet.in_flight,
                packet.is_ack_eliciting,
                packet.sent_bytes,
                [handler.__name__ for handler, _ in packet.delivery_handlers],
            )
            for packet in (space.sent_packets[number] for number in numbers)
        ],
        list(client._datagrams_pending),
        space.ack_at,
    )


def test_an_ack_whose_ping_does_not_fit_the_window_leaves_alone() -> None:
    generic, fast = full_window_ack(False), full_window_ack(True)
    assert generic[0] == 0 and fast[0] == 1
    assert fast[1:] == generic[1:]
    assert fast[1] == 1 and fast[5][0][3] == ["_on_ack_delivery"]  # the ACK, and nothing else


def test_a_subclass_that_changes_the_generic_path_keeps_it() -> None:
    from testbed.hostile import HostileQuicConnection
    from tunnel.agents.concentrator import PeerQuicConnection

    client_config, server_config = configs()
    assert TunnelQuicConnection(configuration=client_config).fast_datagram_path
    server = PeerQuicConnection(
        configuration=server_config, original_destination_connection_id=bytes(8)
    )
    assert server.fast_datagram_path
    # it writes injected frames from _write_connection_limits
    assert not HostileQuicConnection(configuration=client_config).fast_datagram_path


@pytest.mark.parametrize("fast", [False, True])
def test_a_packet_to_a_retired_connection_id_is_dropped(fast: bool) -> None:
    """A client keeps using a connection ID of its own the server retired (clients do not
    switch on receipt): aioquic drops packets to it, and so does the fast path."""
    net, path = connected(fast)
    client, server = path.client.quic, path.server.quic
    assert isinstance(client, TunnelQuicConnection) and isinstance(server, TunnelQuicConnection)
    assert server._peer_cid.cid == client.host_cid
    client._host_cids = [cid for cid in client._host_cids if cid.cid != client.host_cid]
    before = len(path.client.quic_events)
    client.receive_datagram(forged(server, b"\x31\x03abc"), path.server.addr, now=net.clock.now)
    assert client.next_event() is None and len(path.client.quic_events) == before
    assert client._spaces[tls.Epoch.ONE_RTT].ack_at is None
