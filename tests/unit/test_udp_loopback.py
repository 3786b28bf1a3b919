"""tunnel.aio.udp on loopback (no root): QuicServer + QuicClient through QuicDriver, version
negotiation, connection cap, and the one-sentence errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import DatagramFrameReceived, QuicEvent, StreamDataReceived

from tunnel.aio.udp import (
    TIMER_EARLY_TOLERANCE,
    TIMER_RETRY,
    BufferReport,
    EndpointError,
    QuicClient,
    QuicDriver,
    QuicServer,
    UdpEndpoint,
    run,
)
from tunnel.protocol.quic_ext import SoloDatagram

REPO = Path(__file__).resolve().parents[2]


def configs(certs: Path) -> tuple[QuicConfiguration, QuicConfiguration]:
    server = QuicConfiguration(is_client=False, alpn_protocols=["t"], max_datagram_frame_size=1500)
    server.load_cert_chain(certs / "concentrator.pem", certs / "concentrator.key")
    client = QuicConfiguration(
        is_client=True,
        alpn_protocols=["t"],
        server_name="concentrator",
        max_datagram_frame_size=1500,
    )
    client.load_verify_locations(cafile=str(certs / "ca.pem"))
    return server, client


def echo_server(endpoint: UdpEndpoint, config: QuicConfiguration, **kw: int) -> QuicServer:
    def on_connection(driver: QuicDriver) -> None:
        def on_event(event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived):
                driver.quic.send_stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, DatagramFrameReceived):
                driver.quic.send_datagram_frame(event.data.upper())

        driver.on_event = on_event

    server = QuicServer(endpoint, config, on_connection, **kw)  # type: ignore[arg-type]
    server.start()
    return server


def within(seconds: float, coro: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(seconds):
            await coro()

    run(bounded())


def test_stream_and_datagram_round_trip_and_clean_close(lab_certs: Path) -> None:
    server_cfg, client_cfg = configs(lab_certs)

    async def scenario() -> None:
        server = echo_server(UdpEndpoint.bind("127.0.0.1"), server_cfg)
        got: list[QuicEvent] = []
        arrived = asyncio.Event()

        def on_event(event: QuicEvent) -> None:
            got.append(event)
            if isinstance(event, DatagramFrameReceived) or (
                isinstance(event, StreamDataReceived) and event.end_stream
            ):
                arrived.set()

        client = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), server.endpoint.local_address, client_cfg, on_event
        )
        assert len(server.connections) == 1
        quic = client.driver.quic
        quic.send_stream_data(0, b"hello", end_stream=True)
        quic.send_datagram_frame(b"abc")
        client.driver.transmit()
        while not (
            any(isinstance(e, DatagramFrameReceived) for e in got)
            and any(isinstance(e, StreamDataReceived) and e.end_stream for e in got)
        ):
            arrived.clear()
            await arrived.wait()
        data = b"".join(e.data for e in got if isinstance(e, StreamDataReceived))
        assert data == b"hello"
        assert [e.data for e in got if isinstance(e, DatagramFrameReceived)] == [b"ABC"]
        assert client.endpoint.stats.datagrams_received > 0
        assert server.endpoint.stats.largest_receive_batch >= 1
        await client.close()
        await server.close()
        assert server.connections == set()
        assert client.driver.closed

    within(15, scenario)


@contextlib.asynccontextmanager
async def timer_recorded(
    certs: Path,
) -> AsyncIterator[tuple[QuicDriver, list[tuple[float, float]]]]:
    """A client's driver, connected to an echo server on loopback, and its connection's
    handle_timer calls as they happen: (the time given, the loop's time)."""
    server_cfg, client_cfg = configs(certs)
    server = echo_server(UdpEndpoint.bind("127.0.0.1"), server_cfg)
    client = await QuicClient.connect(
        UdpEndpoint.bind("127.0.0.1"), server.endpoint.local_address, client_cfg
    )
    loop, quic = asyncio.get_running_loop(), client.driver.quic
    calls: list[tuple[float, float]] = []
    handle_timer = quic.handle_timer

    def recording(now: float) -> None:
        calls.append((now, loop.time()))
        handle_timer(now=now)

    quic.handle_timer = recording  # type: ignore[method-assign]
    try:
        yield client.driver, calls
    finally:
        await client.close()
        await server.close()


def test_a_timer_woken_early_waits_for_its_deadline(lab_certs: Path) -> None:
    """uvloop runs a deadline under 0.5 ms away at once. Handing the connection the timer then
    found nothing due and re-armed the same deadline: a busy loop (45,000 wake-ups a second at
    a paced 50 Mbit/s). The driver waits instead and acts at or after the deadline."""

    async def scenario() -> None:
        async with timer_recorded(lab_certs) as (driver, calls):
            deadline = asyncio.get_running_loop().time() + 0.0004
            driver._arm_timer(deadline)
            assert driver._timer is not None
            driver._timer.cancel()  # the loop's own call, replaced by an early one:
            driver._handle_timer()
            # nothing before the deadline (a loaded machine may stall past it before the
            # early call: then the call is on time, and acting is right)
            assert all(at >= deadline - TIMER_EARLY_TOLERANCE for _, at in calls)
            while not calls:  # bounded by within()
                await asyncio.sleep(0.0005)
            given, at = calls[0]  # (a later call may follow: a deadline the connection set)
            assert given >= deadline and at >= deadline - TIMER_EARLY_TOLERANCE

    within(15, scenario)


def test_a_deadline_still_due_after_its_timer_ran_waits_a_tick(lab_certs: Path) -> None:
    """An ACK due exactly now waits for the pacer (aioquic's rule), so the connection's next
    deadline is again now until the clock moves on; uvloop's clock reads whole milliseconds,
    and the driver ran the timer again and again within one (14,600 times a second in the
    concentrator at a paced 50 Mbit/s). A connection that is always due now is woken no more
    than once per tick."""

    async def scenario() -> None:
        async with timer_recorded(lab_certs) as (driver, calls):
            loop = asyncio.get_running_loop()
            driver.quic.get_timer = loop.time  # type: ignore[method-assign]  # always due now
            driver._arm_timer(loop.time())
            while len(calls) < 5:  # bounded by within()
                await asyncio.sleep(0.001)
            driver.quic.get_timer = lambda: None  # type: ignore[method-assign]
            # the times the driver acted at, as it read them: on a loaded machine the clock can
            # tick between its reading and the call's (a call given X seen at X + 1 ms, then
            # the next one given X + 1 ms), so the loop's time at each call can repeat
            gaps = [b - a for (a, _), (b, _) in itertools.pairwise(calls)]
            assert min(gaps) >= TIMER_RETRY / 2

    within(15, scenario)


def test_connection_cap_refuses_second_client(lab_certs: Path) -> None:
    server_cfg, client_cfg = configs(lab_certs)

    async def scenario() -> None:
        server = echo_server(UdpEndpoint.bind("127.0.0.1"), server_cfg, max_connections=1)
        first = await QuicClient.connect(
            UdpEndpoint.bind("127.0.0.1"), server.endpoint.local_address, client_cfg
        )
        endpoint = UdpEndpoint.bind("127.0.0.1")
        with pytest.raises(ConnectionError, match=r"no QUIC handshake with 127\.0\.0\.1"):
            await QuicClient.connect(
                endpoint, server.endpoint.local_address, client_cfg, timeout=0.5
            )
        endpoint.close()
        assert server.refused_connections >= 1
        await first.close()
        await server.close()

    within(15, scenario)


def test_version_negotiation_answer(lab_certs: Path) -> None:
    server_cfg, _ = configs(lab_certs)

    async def scenario() -> None:
        server = echo_server(UdpEndpoint.bind("127.0.0.1"), server_cfg)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.setblocking(False)
        probe.bind(("127.0.0.1", 0))
        # long header, unknown version 0x1a2a3a4a, DCID 8 bytes, SCID 8 bytes, padded to 1200
        packet = bytes([0xC0]) + bytes.fromhex("1a2a3a4a") + b"\x08" + b"D" * 8 + b"\x08"
        packet += b"S" * 8
        packet += bytes(1200 - len(packet))
        loop = asyncio.get_running_loop()
        probe.sendto(packet, server.endpoint.local_address)
        reply = await loop.sock_recv(probe, 2000)
        assert reply[1:5] == b"\0\0\0\0"  # version 0: Version Negotiation (RFC 9000 §17.2.1)
        assert reply[6:14] == b"S" * 8  # its DCID is our SCID
        assert server.connections == set()
        probe.close()
        await server.close()

    within(10, scenario)


def test_handshake_timeout_and_family_errors(lab_certs: Path) -> None:
    _, client_cfg = configs(lab_certs)

    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))  # nobody answers here
        endpoint = UdpEndpoint.bind("127.0.0.1")
        with pytest.raises(ConnectionError, match=r"within 0\.3 s: check that the concentrator"):
            await QuicClient.connect(endpoint, silent.getsockname(), client_cfg, timeout=0.3)
        endpoint.close()
        endpoint = UdpEndpoint.bind("127.0.0.1")
        with pytest.raises(ConnectionError, match="different IP families"):
            await QuicClient.connect(endpoint, ("::1", 4433), client_cfg)
        with pytest.raises(ConnectionError, match="is not an IP address"):
            await QuicClient.connect(endpoint, ("localhost", 4433), client_cfg)
        endpoint.close()
        silent.close()

    within(10, scenario)


def test_bind_errors_are_one_sentence() -> None:
    with pytest.raises(EndpointError, match="is not an IP address"):
        UdpEndpoint.bind("10.0.0.300")
    with pytest.raises(EndpointError, match="does not belong to the requested family AF_INET"):
        UdpEndpoint.bind("::1", family=socket.AF_INET)
    taken = UdpEndpoint.bind("127.0.0.1")
    port = taken.local_address[1]
    with pytest.raises(EndpointError, match=f"cannot bind UDP 127.0.0.1 port {port}"):
        UdpEndpoint.bind("127.0.0.1", port)
    taken.close()


def test_ipv6_loopback_endpoint() -> None:
    endpoint = UdpEndpoint.bind("::1")
    assert endpoint.family == socket.AF_INET6
    assert endpoint.local_address[0] == "::1"
    endpoint.close()


def test_buffer_report_warning() -> None:
    assert BufferReport(requested=4 << 20, receive=4 << 20, send=4 << 20).warning() is None
    capped = BufferReport(requested=4 << 20, receive=212992, send=4 << 20)
    assert capped.capped
    warning = capped.warning()
    assert warning is not None
    assert "sysctl -w net.core.rmem_max=4194304" in warning


@pytest.mark.parametrize("gso", [True, False])
def test_send_batch_keeps_datagram_boundaries_and_order(gso: bool) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(5)
    sender = UdpEndpoint.bind("127.0.0.1", gso=gso)
    to, to_other = receiver.getsockname(), other.getsockname()
    sizes = [1200] * 70 + [500, 1200, 1200, 300, 300, 1300, 1]
    batch = [(bytes([i % 256]) * n, to) for i, n in enumerate(sizes)]
    batch.insert(10, (b"elsewhere", to_other))
    sender.send_batch(batch)
    got = [receiver.recv(2000) for _ in sizes]
    assert got == [d for d, a in batch if a == to]
    assert other.recv(2000) == b"elsewhere"
    assert sender.stats.datagrams_sent == len(batch)
    assert (sender.stats.gso_sends > 0) is gso
    for s in (receiver, other):
        s.close()
    sender.close()


def test_a_solo_datagram_leaves_in_a_send_of_its_own() -> None:
    """A PMTU probe and its companion (SoloDatagram) never share a GSO send with data, whose
    fate at a router they would share."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender = UdpEndpoint.bind("127.0.0.1", gso=True)
    real = sender.sock
    sends: list[int] = []  # datagrams per send call

    class Counting:
        def sendto(self, data: bytes, addr: object) -> int:
            sends.append(1)
            return real.sendto(data, addr)

        def sendmsg(self, buffers: list[bytes], ancillary: object, flags: int, addr: object) -> int:
            size = int.from_bytes(ancillary[0][2], sys.byteorder)  # type: ignore[index]
            sends.append(-(-len(buffers[0]) // size))
            return real.sendmsg(buffers, ancillary, flags, addr)  # type: ignore[arg-type]

    sender.sock = Counting()  # type: ignore[assignment]
    to = receiver.getsockname()
    batch = [(b"d" * 1200, to)] * 4 + [
        (SoloDatagram(b"c" * 40), to),
        (SoloDatagram(b"p" * 1200), to),
    ]
    batch += [(b"e" * 1200, to)] * 3 + [(b"s" * 40, to)]
    sender.send_batch(batch)
    assert [receiver.recv(2000) for _ in batch] == [data for data, _ in batch]
    # the data's runs, each solo datagram alone (the companion did not end the first run, nor
    # the data after the probe join it)
    assert sends == [4, 1, 1, 4]
    receiver.close()
    sender.sock = real
    sender.close()


def test_gro_receive_splits_coalesced_datagrams() -> None:
    receiver = UdpEndpoint.bind("127.0.0.1", gro=True)
    sender = UdpEndpoint.bind("127.0.0.1", gso=True)
    sizes = [1200] * 40 + [700] + [900] * 5
    batch = [(bytes([i]) * n, receiver.local_address) for i, n in enumerate(sizes)]
    sender.send_batch(batch)
    got: list[bytes] = []
    for _ in range(1000):  # bounded: loopback delivers at once
        got += [d for d, _ in receiver.receive_batch(64)]
        if len(got) >= len(batch):
            break
    assert got == [d for d, _ in batch]
    assert receiver.gro and sender.stats.gso_sends > 0
    assert receiver.stats.gro_reads > 0  # the kernel really coalesced
    receiver.close()
    sender.close()


def test_a_run_over_the_path_mtu_goes_one_by_one_and_gso_stays_on() -> None:
    """A route or learned path MTU under the datagram size (PPPoE's 1492, here the socket's
    IPV6_MTU): the kernel refuses to segment a run (EMSGSIZE) but sends, fragmenting, a lone
    datagram. The whole run was dropped, every burst to such a path."""
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.bind(("::1", 0))
    receiver.settimeout(5)
    sender = UdpEndpoint.bind("::1", family=socket.AF_INET6, gso=True)
    ipv6_mtu = 24  # IPV6_MTU, linux/in6.h (Python's socket module does not name it)
    sender.sock.setsockopt(socket.IPPROTO_IPV6, ipv6_mtu, 1492)
    to = receiver.getsockname()[:2]
    batch = [(bytes([n]) * 1452, to) for n in range(3)]
    sender.send_batch(batch)
    assert [receiver.recv(2000) for _ in batch] == [data for data, _ in batch]
    assert sender.stats.send_dropped == 0 and sender.stats.gso_refused == 1
    assert sender.gso  # a run that fits still leaves in one send
    small = [(bytes([n]) * 1200, to) for n in range(3)]
    sender.send_batch(small)
    assert [receiver.recv(2000) for _ in small] == [data for data, _ in small]
    assert sender.stats.gso_sends == 1
    receiver.close()
    sender.close()
