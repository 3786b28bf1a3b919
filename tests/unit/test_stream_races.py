"""Stream mode's races at the asyncio edge, each found by a review and reproduced before it was
fixed: a stream that ends while its TCP side is being made (the concentrator's connect, the
client's faithful accept), a SOCKS application that leaves while its host name is resolved, a
relay's backlog report after it finished. Without root: real TCP sockets on 127.0.0.1 for the
TCP side, fakes that record what the programs call on a TunnelConnection (as in
test_stream_server_limits.py), on both event loops the programs run on (asyncio and uvloop).
The connection-wide credit these relays hold is tested in test_memory_bounds.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Coroutine
from ipaddress import IPv4Address, ip_address
from typing import Any

import pytest
import uvloop
from aioquic.quic.configuration import QuicConfiguration

from tunnel.aio import stream_client
from tunnel.aio.stream_client import StreamClient, _Held, _HoldState
from tunnel.aio.stream_relay import RelayHub, TcpRelay
from tunnel.aio.stream_server import StreamServer
from tunnel.config import StreamClientConfig, StreamServerConfig
from tunnel.protocol.connection import (
    StreamReset,
    TcpConnectAccepted,
    TcpConnectRequested,
    TunnelConnection,
)
from tunnel.protocol.quic_ext import TunnelQuicConnection
from tunnel.protocol.stream_mode import StreamEvent
from tunnel.wire.syn_answers import Syn

LOOPS = ["asyncio", "uvloop"]


def run(loop: str, test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        uvloop.run(test())
    else:
        asyncio.run(test())


class FakeConnection:
    """What the stream programs call on a TunnelConnection, recorded."""

    def __init__(self, quic: Any = None) -> None:
        self.quic = quic
        self.closed = False
        self.calls: list[str] = []
        self._next = 0

    @property
    def tunnel(self) -> TunnelConnection:
        return self  # type: ignore[return-value]

    def open_tcp_stream(self, address: Any, port: int) -> int:
        sid, self._next = self._next, self._next + 4
        self.calls.append(f"open {sid}")
        return sid

    def send_stream_data(self, sid: int, data: bytes, end: bool = False) -> None:
        self.calls.append(f"data {sid}")

    def accept_tcp_stream(self, sid: int) -> None:
        self.calls.append(f"accept {sid}")

    def fail_tcp_stream(self, sid: int, code: Any, payload: bytes = b"") -> None:
        self.calls.append(f"fail {sid}")

    def reset_tcp_stream(self, sid: int, *, stop_sending: bool = True, reset: bool = True) -> None:
        what = "reset" if stop_sending and reset else "stop" if stop_sending else "reset only"
        self.calls.append(f"{what} {sid}")


async def what_the_peer_sees(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        got = await asyncio.wait_for(loop.sock_recv(sock, 100), 2.0)
    except ConnectionResetError:
        return "RST"
    except TimeoutError:
        return "nothing"
    return "FIN" if got == b"" else "data"


class AllowEverything:
    """A stream policy that refuses nothing (not even loopback)."""

    def refusal(self, *_: Any, **__: Any) -> None:
        return None


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def server_to_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[socket.socket, int, StreamServer, FakeConnection]:
    """A destination listening on loopback (its socket and port), a concentrator's stream
    server allowed to reach it, and a client connection to carry the streams."""
    destination = listener()
    server = StreamServer(StreamServerConfig(enabled=True))
    # 127.0.0.1 keeps the test on this machine; the draft and the policy forbid it
    monkeypatch.setattr(server, "policy", AllowEverything())
    return destination, destination.getsockname()[1], server, FakeConnection()


async def socks_client(
    conn: FakeConnection,
) -> tuple[StreamClient, asyncio.StreamReader, asyncio.StreamWriter]:
    """A client's SOCKS5 front on a free loopback port, carried by `conn`, and an application
    connected to it past the method negotiation."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = StreamClientConfig(
        enabled=True, socks_port=port, socks_address=IPv4Address("127.0.0.1")
    )
    client = StreamClient(config, lambda: (conn.tunnel, lambda: None))
    await client.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    return client, reader, writer


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stream_reset_while_the_concentrator_connects_resets_the_destination(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client resets its stream before the concentrator's connect completed: the
    destination connection gets a RST (tcp draft §3), where it stayed open for the life of the
    program; on asyncio the socket closed under its transport made the next connect that got
    the same descriptor number fail, its stream never answered."""

    async def scenario() -> None:
        destination, port, server, conn = server_to_loopback(monkeypatch)
        to_destination = TcpConnectRequested(0, ip_address("127.0.0.1"), port)
        server.handle(conn.tunnel, to_destination, lambda: None)
        await asyncio.sleep(0)  # the connect task starts: connecting now
        server.handle(conn.tunnel, StreamReset(0, 0), lambda: None)
        accepted, _ = await asyncio.get_running_loop().sock_accept(destination)
        assert await what_the_peer_sees(accepted) == "RST"
        assert server.stats()["active"] == 0 and server.stats()["pending_connects"] == 0
        again = TcpConnectRequested(4, ip_address("127.0.0.1"), port)
        server.handle(conn.tunnel, again, lambda: None)
        second, _ = await asyncio.get_running_loop().sock_accept(destination)
        for _ in range(200):  # bounded: the connect task ends within a few iterations
            if "accept 4" in conn.calls:
                break
            await asyncio.sleep(0.005)
        assert conn.calls == ["reset 0", "accept 4"]
        server.connection_closed(conn.tunnel)
        server.close()
        for sock in (accepted, second, destination):
            sock.close()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stream_reset_with_its_tcp_connect_makes_no_connection(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TCP Connect and RESET_STREAM in one batch: the stream ended before its connect task
    ran, which went on to open a socket and complete a handshake with the destination only to
    RST it (found by a review). Now nothing reaches the destination and the budget is free."""

    async def scenario() -> None:
        destination, port, server, conn = server_to_loopback(monkeypatch)
        server.handle(
            conn.tunnel, TcpConnectRequested(0, ip_address("127.0.0.1"), port), lambda: None
        )
        server.handle(conn.tunnel, StreamReset(0, 0), lambda: None)
        for _ in range(200):  # bounded: the task ends at its first step
            if not server._tasks:
                break
            await asyncio.sleep(0.005)
        assert not server._tasks
        with pytest.raises(BlockingIOError):
            destination.accept()  # nobody connected
        assert server.stats()["active"] == 0 and server.stats()["pending_connects"] == 0
        server.connection_closed(conn.tunnel)
        server.close()
        destination.close()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_socks_applications_early_bytes_and_fin_reach_the_stream_in_order(loop: str) -> None:
    """An application that sends before the SOCKS reply (RFC 1928 says to wait; many do not):
    bytes with its CONNECT, more after the stream opened, then its FIN. Before (found by a
    review), the later bytes went on the stream ahead of the first ones and the FIN ahead of
    both; now all wait for the concentrator's accept and leave in the order sent."""

    async def scenario() -> None:
        sent: list[tuple[bytes, bool]] = []
        quic = TunnelQuicConnection(
            configuration=QuicConfiguration(is_client=True), stream_mode=True
        )
        conn = FakeConnection(quic)
        conn.send_stream_data = lambda sid, data, end=False: sent.append((data, end))  # type: ignore[method-assign]
        client, reader, writer = await socks_client(conn)
        connect = b"\x05\x01\x00\x01" + bytes([192, 0, 2, 10]) + (80).to_bytes(2, "big")
        writer.write(connect + b"A")
        for _ in range(200):  # bounded: the stream opens within a few iterations
            if "open 0" in conn.calls:
                break
            await asyncio.sleep(0.005)
        writer.write(b"B")
        writer.write_eof()
        await writer.drain()
        for _ in range(20):  # let the client read them (it must hold them, not send them)
            await asyncio.sleep(0.005)
        assert sent == []
        client.handle(conn.tunnel, TcpConnectAccepted(0), lambda: None)
        assert await reader.readexactly(10) == b"\x05\x00\x00\x01" + bytes(6)
        assert b"".join(d for d, _ in sent) == b"AB" and sent[-1][1] is True
        writer.close()
        await client.close()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_socks_application_that_leaves_while_its_name_is_resolved_opens_no_stream(
    loop: str,
) -> None:
    """CONNECT www.example.org, then the application closes before the name is resolved: no
    stream is opened for it. One was, that nothing could end (its relay was finished), and
    the TCP Connect OK that came back wrote to the closed socket, which raised on uvloop out
    of the client's event handler (the client program stops on that)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        resolving = asyncio.Event()

        async def slow_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
            resolving.set()
            await asyncio.sleep(0.2)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.10", port))]

        loop.getaddrinfo = slow_getaddrinfo  # type: ignore[method-assign,assignment]
        conn = FakeConnection()
        client, _reader, writer = await socks_client(conn)
        name = b"www.example.org"
        writer.write(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + (80).to_bytes(2, "big"))
        await asyncio.wait_for(resolving.wait(), 5.0)
        writer.close()
        for _ in range(100):  # bounded: the resolution ends after 0.2 s
            if not client._tasks:
                break
            await asyncio.sleep(0.01)
        assert not client._tasks and conn.calls == [] and client.hub.relays == {}
        client.handle(conn.tunnel, TcpConnectAccepted(0), lambda: None)  # must not raise
        await client.close()

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_faithful_connect_whose_stream_was_reset_before_the_accept_is_reset(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faithful connect: TCP Connect OK released the application's SYN, then the stream was
    reset before our listener accepted it. The accepted connection gets a RST, as it would
    from the destination; it was handed to the finished relay and hung."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        conn = FakeConnection()
        config = StreamClientConfig(enabled=True, connect="faithful", intercept=())
        client = StreamClient(config, lambda: (conn.tunnel, lambda: None))
        queue = VerdictLog()
        client._queue = queue  # type: ignore[assignment]
        front = await loop.create_server(lambda: stream_client._HandOver(client), "127.0.0.1", 0)
        application = socket.socket()
        application.bind(("127.0.0.1", 0))
        source = application.getsockname()
        destination = (IPv4Address("192.0.2.7"), 80)
        held = hold(client, Syn(IPv4Address(source[0]), source[1], *destination, 1, b""), conn)
        # the nat redirect's SO_ORIGINAL_DST, which needs root
        monkeypatch.setattr(stream_client, "original_destination", lambda _: destination)
        client.handle(conn.tunnel, TcpConnectAccepted(0), lambda: None)
        client.handle(conn.tunnel, StreamReset(0, 0), lambda: None)
        assert held.state is _HoldState.RELEASED and queue.verdicts == [(7, True)]
        application.setblocking(False)
        await loop.sock_connect(application, front.sockets[0].getsockname())
        assert await what_the_peer_sees(application) == "RST"
        front.close()
        application.close()

    run(loop, scenario)


def test_a_held_syn_whose_stream_ends_is_answered_at_once() -> None:
    """A SYN still waiting for TCP Connect OK whose stream the concentrator resets: dropped and
    answered now (its RST is sent through a raw socket, which needs root: not here), not when
    HOLD_TIMEOUT (60 s) gives up on it."""

    async def scenario() -> None:
        conn = FakeConnection()
        config = StreamClientConfig(enabled=True, connect="faithful", intercept=())
        client = StreamClient(config, lambda: (conn.tunnel, lambda: None))
        queue = VerdictLog()
        client._queue = queue  # type: ignore[assignment]
        syn = Syn(IPv4Address("10.8.0.2"), 40000, IPv4Address("192.0.2.7"), 80, 1, b"")
        held = hold(client, syn, conn)
        client.handle(conn.tunnel, StreamReset(0, 0), lambda: None)
        assert queue.verdicts == [(7, False)] and syn.flow not in client._held
        assert held.expiry is not None and held.expiry.cancelled()
        client._queue = None  # nothing to stop reading

    run("asyncio", scenario)


class VerdictLog:
    """The NFQUEUE's verdicts (the queue needs root)."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[int, bool]] = []

    def verdict(self, packet_id: int, accept: bool) -> None:
        self.verdicts.append((packet_id, accept))


def hold(client: StreamClient, syn: Syn, conn: FakeConnection) -> _Held:
    """What StreamClient._hold does for a queued SYN (packet id 7) on stream 0."""
    relay = TcpRelay(client.hub, client.config.window)
    relay.attach(conn.tunnel, 0, lambda: None)
    held = _Held(syn, 7, relay)
    held.expiry = asyncio.get_running_loop().call_later(60.0, lambda: None)
    client._held[syn.flow] = held
    client._held_streams[relay.key] = syn.flow
    return held


def test_a_finished_relays_late_flush_does_not_bring_its_backlog_entry_back(
    lab_certs: Any,
) -> None:
    """Stream data and the peer's RESET_STREAM in one loop iteration: the flush the data
    scheduled runs after the relay finished and forgot the stream's backlog entry, and wrote
    it back, for ever."""

    async def scenario() -> None:
        configuration = QuicConfiguration(is_client=False)
        certs = lab_certs
        configuration.load_cert_chain(certs / "concentrator.pem", certs / "concentrator.key")
        quic = TunnelQuicConnection(
            configuration=configuration,
            original_destination_connection_id=bytes(8),
            stream_mode=True,
        )
        ours, theirs = socket.socketpair()
        relay = TcpRelay(RelayHub(send_buffer=65536), 65536)
        relay.attach(FakeConnection(quic).tunnel, 0, lambda: None)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: relay, ours)
        relay.open(StreamEvent.STREAM_OPENED_TLVS_RECEIVED)
        relay.on_stream_data(b"x" * 1000, False)
        relay.on_stream_abort(StreamEvent.RESET_STREAM_RECEIVED)
        await asyncio.sleep(0)  # the hub's flush runs
        await asyncio.sleep(0)
        assert quic._tunnel_backlog == {}
        theirs.close()

    run("asyncio", scenario)


async def relay_on_tcp(conn: FakeConnection) -> tuple[TcpRelay, socket.socket]:
    """A relay open on stream 0 of `conn`, its TCP side a real loopback connection; returns it
    and the TCP peer's socket."""
    server = listener()
    peer = socket.create_connection(server.getsockname())
    ours, _ = server.accept()
    server.close()
    relay = TcpRelay(RelayHub(send_buffer=65536), 65536)
    relay.attach(conn.tunnel, 0, lambda: None)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: relay, ours)
    relay.open(StreamEvent.STREAM_OPENED_TLVS_RECEIVED)
    return relay, peer


def client_quic() -> TunnelQuicConnection:
    return TunnelQuicConnection(configuration=QuicConfiguration(is_client=True), stream_mode=True)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(400):  # bounded: each condition follows from a loop iteration or two
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the relay never got there")


async def half_closed_then_reset(conn: FakeConnection) -> TcpRelay:
    """A relay on `conn` whose destination sent its FIN (relayed), then closed with a RST
    (SO_LINGER 0)."""
    relay, peer = await relay_on_tcp(conn)
    peer.shutdown(socket.SHUT_WR)
    await until(lambda: relay.state.up.value == "finished")
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    return relay


@pytest.mark.parametrize("loop", LOOPS)
def test_a_tcp_reset_after_its_fin_only_stops_the_stream(loop: str) -> None:
    """The destination half-closed (its FIN relayed), then reset while our bytes still came:
    STOP_SENDING only, the state's answer; the relay sent RESET_STREAM too, which dropped the
    bytes it had finished sending and not yet seen acknowledged (found by a review)."""

    async def scenario() -> None:
        conn = FakeConnection(client_quic())
        relay = await half_closed_then_reset(conn)
        for _ in range(100):  # bounded: a write or two after the RST fails
            if relay.finished:
                break
            relay.on_stream_data(b"x" * 1000, False)
            relay.flush_down()
            await asyncio.sleep(0.005)
        assert relay.finished
        assert conn.calls == ["data 0", "stop 0"]  # its FIN, then STOP_SENDING alone

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_our_fin_to_a_reset_destination_ends_the_relay_not_the_connection(loop: str) -> None:
    """Both FINs crossed a RST nobody read (the relay stops reading at the destination's FIN):
    asyncio's write_eof raised ENOTCONN out of the stream's event handler, which closes the
    whole QUIC connection (found by a review). Now it ends this relay, as uvloop's
    connection_lost does."""

    async def scenario() -> None:
        conn = FakeConnection(client_quic())
        relay = await half_closed_then_reset(conn)
        relay.on_stream_data(b"", True)  # must not raise
        await until(lambda: relay.finished)

    run(loop, scenario)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stop_sending_after_our_fin_leaves_the_other_direction_open(loop: str) -> None:
    """STOP_SENDING for a half that finished is absorbed by the relay's state; the relay
    reset the TCP connection all the same, cutting off the direction still open (found by a
    review). Now the destination's bytes still flow to the application and back."""

    async def scenario() -> None:
        conn = FakeConnection(client_quic())
        relay, peer = await relay_on_tcp(conn)
        peer.shutdown(socket.SHUT_WR)  # its FIN: our sending half finished
        await until(lambda: relay.state.up.value == "finished")
        relay.on_stream_abort(StreamEvent.STOP_SENDING_RECEIVED)
        relay.on_stream_data(b"still here", True)
        relay.flush_down()
        loop = asyncio.get_running_loop()
        peer.setblocking(False)
        got = await asyncio.wait_for(loop.sock_recv(peer, 100), 2.0)
        assert got == b"still here" and not any("reset" in c for c in conn.calls)
        peer.close()

    run(loop, scenario)
