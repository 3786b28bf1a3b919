"""tunnel.aio.stream_server.StreamServer's refusals without a network: a TCP Connect to a denied
destination, or beyond the client's budget (pending connects, stream buffer) across all of its
connections, is answered with Error TLV Network Failure and one rate-limited log line naming
the client. The connections are fakes that record what the server answers; the connects that
pass are replaced by ones that never finish, so nothing leaves the machine."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from tunnel.aio import stream_server
from tunnel.aio.stream_server import StreamServer
from tunnel.config import StreamServerConfig
from tunnel.policy.log_budget import LogBudget
from tunnel.protocol.connection import TcpConnectRequested, TunnelConnection
from tunnel.wire.errors import StreamErrorCode

SMALL = 16 * 1024  # window and send buffer: a stream counts 32 KiB


class FakeConnection:
    """What StreamServer calls on a TunnelConnection, recorded."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.quic = None
        self.closed = False
        self.failed: dict[int, StreamErrorCode | int] = {}
        self.reset: list[int] = []
        self._next = 0

    def connect(self, server: StreamServer, address: str, port: int = 80) -> int:
        sid, self._next = self._next, self._next + 4
        event = TcpConnectRequested(sid, ip_address(address), port)
        assert server.handle(self.tunnel, event, lambda: None)
        return sid

    @property
    def tunnel(self) -> TunnelConnection:
        return self  # type: ignore[return-value]

    def fail_tcp_stream(self, stream_id: int, code: StreamErrorCode | int, _: bytes = b"") -> None:
        self.failed[stream_id] = code

    def reset_tcp_stream(
        self, stream_id: int, *, stop_sending: bool = True, reset: bool = True
    ) -> None:
        self.reset.append(stream_id)


def client_of(conn: TunnelConnection) -> str | None:
    assert isinstance(conn, FakeConnection)
    return conn.client


def server(monkeypatch: pytest.MonkeyPatch, **config: Any) -> StreamServer:
    base = StreamServerConfig(enabled=True, window=SMALL, send_buffer=SMALL)
    made = StreamServer(dataclasses.replace(base, **config), client_of=client_of)

    async def never_connects(*_: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(made, "_connect", never_connects)
    return made


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def refused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "tcp connect refused" in r.getMessage()]


def test_denied_destination_gets_network_failure_and_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qtun.stream")

    async def scenario() -> None:
        srv = server(monkeypatch)
        conn = FakeConnection("alice")
        sid = conn.connect(srv, "169.254.169.254")
        assert conn.failed == {sid: StreamErrorCode.NETWORK_FAILURE}
        assert srv.stats()["refused_policy"] == 1 and srv.stats()["active"] == 0
        srv.close()

    run(scenario)
    (line,) = refused_lines(caplog)
    assert "client=alice" in line and "to=169.254.169.254:80" in line
    assert "169.254.0.0/16 (link-local, RFC 3927)" in line


def test_explicitly_allowed_special_range_is_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        allow = (*StreamServerConfig().allow, ip_network("169.254.169.254/32"))
        srv = server(monkeypatch, allow=allow)
        conn = FakeConnection("alice")
        conn.connect(srv, "169.254.169.254")
        assert conn.failed == {} and srv.stats()["pending_connects"] == 1
        srv.close()

    run(scenario)


def test_pending_connects_are_capped_per_client_across_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        srv = server(monkeypatch, max_pending_connects=3)
        first, second = FakeConnection("alice"), FakeConnection("alice")
        other = FakeConnection("bob")
        for conn in (first, second, first, second):
            conn.connect(srv, "10.200.1.2")
        # 4 connects of alice over 2 connections: the 4th is refused, not 2 x 3 allowed
        assert (first.failed, second.failed) == ({}, {4: StreamErrorCode.NETWORK_FAILURE})
        other.connect(srv, "10.200.1.2")  # another client has its own budget
        assert other.failed == {}
        stats = srv.stats()
        assert stats["pending_connects"] == 4 and stats["refused_pending"] == 1
        assert stats["clients"] == 2
        srv.close()

    run(scenario)


def test_stream_buffer_budget_is_per_client(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        srv = server(monkeypatch, max_client_buffer=2 * 2 * SMALL)  # two streams
        first, second = FakeConnection("alice"), FakeConnection("alice")
        first.connect(srv, "10.200.1.2")
        second.connect(srv, "fd00:200:1::2")
        sid = second.connect(srv, "10.200.1.2")
        assert second.failed == {sid: StreamErrorCode.NETWORK_FAILURE}
        assert srv.stats()["refused_memory"] == 1
        assert srv.stats()["buffer_budget_used"] == 2 * 2 * SMALL
        # a stream that ends gives its share back; a gone client is forgotten
        srv.connection_closed(first.tunnel)
        assert first.reset == [0]
        assert srv.stats()["buffer_budget_used"] == 2 * SMALL
        srv.close()
        srv.connection_closed(second.tunnel)
        assert srv.stats()["clients"] == 1  # its connect task was cancelled, never finished

    run(scenario)


def test_a_flood_of_refusals_costs_a_bounded_number_of_log_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qtun.stream")
    monkeypatch.setattr(stream_server, "SUMMARY_DELAY", 0.05)
    flood = 500

    async def scenario() -> None:
        srv = server(monkeypatch)
        mallory, alice = FakeConnection("mallory"), FakeConnection("alice")
        for _ in range(flood):
            mallory.connect(srv, "169.254.169.254")
        alice.connect(srv, "192.0.2.1")  # another client's refusal is still logged
        assert len(mallory.failed) == flood  # every one refused on the wire all the same
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while loop.time() < deadline and not any("suppressed=" in m for m in caplog.messages):
            await asyncio.sleep(0.02)
        srv.close()

    run(scenario)
    lines = refused_lines(caplog)
    burst = LogBudget().burst
    assert len([m for m in lines if "client=mallory" in m]) == burst
    assert len([m for m in lines if "client=alice" in m]) == 1
    (summary,) = [m for m in caplog.messages if "suppressed=" in m]
    assert "client=mallory" in summary and f"suppressed={flood - burst}" in summary
