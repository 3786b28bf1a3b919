"""Stream mode on the concentrator (-tcp draft): connect to the destination of each TCP Connect
and relay the stream's bytestream to it (tunnel/aio/stream_relay.py).

For every TcpConnectRequested (the client opened a stream with TCP Connect + End, §5.1.1):
1. policy (tunnel/policy/stream_policy.py): the destination must be allowed (StreamServerConfig
   allow/deny, the built-in special-purpose denials, own addresses), and the client - across
   all of its connections - must have fewer than `max_pending_connects` connects in progress
   (§7.1: rate-limit pending TCP Connects "from a given client", the SYN amplification
   concern) and room for one more stream in `max_client_buffer` (each stream may hold
   window + send_buffer bytes). Refused -> Error TLV Network Failure (0x3, the draft's only
   code for "no connection was made"; it has none for "not allowed") + End + FIN, and one
   INFO line on the "qtun.stream" logger naming the client, the destination and the reason,
   within a per-client log budget (tunnel/policy/log_budget.py; the lines beyond are counted and
   reported as "suppressed=K").
2. a non-blocking connect() bounded by `connect_timeout`;
3. success -> TCP Connect OK + End (§5.1.2), then relay both ways; failure -> Error TLV +
   End + FIN (§5.1.3): ICMP Packet Received with "the ICMP packet received by the
   concentrator" copied in — the IP packet, header included (it names the router that sent
   the error), cut to the 253 bytes an Error TLV holds — when the failure came with one (seen
   on a raw ICMP socket: Linux does not hand a TCP socket the ICMP packet that aborted its
   connect), else Network Failure (refused = the destination sent a RST, a timeout, a local
   routing error).
A malformed TCP Connect never reaches us: TunnelConnection answers it with Error TLV Malformed
TLV + End + FIN and emits StreamRejected.

Who the client is: `client_of(conn)`, given by the concentrator (the name it authenticated,
tunnel/policy/client_auth.py, before it hands us any event of that connection); without it (test
harnesses) each connection is a client of its own.

The reversed flow (README "Stream mode"): for a mapping the core granted over PCP
(tunnel/policy/inbound.py), the program listens on its external port with `inbound_relay` as
the protocol factory. Each accepted connection opens a stream on the client's stream-mode
connection (TCP Connect + End naming the client's internal address and port, §5.1.1) and is
relayed at once, its first bytes sent optimistically as the client's own transparent
connections are (tunnel/aio/stream_client.py); an Error TLV from the client (its local connect
failed, or it does not offer the port) resets the outside connection, and so does an accept
while the client has no stream-mode connection.

The program (tunnel/aio/concentrator.py) makes each stream-mode connection with
`PeerQuicConnection(**server.quic_options(), ...)` (stream_mode, max_streams_bidi =
max_streams, stream_window = window), calls `handle(conn, event, transmit)` for each stream-mode
TunnelEvent the concentrator core hands it (only of authenticated connections,
tunnel/agents/concentrator.py), and `connection_closed(conn)` when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

from tunnel.aio.stream_relay import RelayHub, TcpRelay, Transmit
from tunnel.config import StreamServerConfig
from tunnel.policy.inbound import Mapping
from tunnel.policy.log_budget import LogBudget
from tunnel.policy.stream_policy import DestinationPolicy, StreamBudget
from tunnel.protocol.connection import (
    StopSendingReceived,
    StreamDataReceived,
    StreamRejected,
    StreamReset,
    TcpConnectAccepted,
    TcpConnectFailed,
    TcpConnectRequested,
    TunnelConnection,
    TunnelEvent,
    TunnelUsageError,
)
from tunnel.protocol.stream_mode import StreamEvent, TcpEvent
from tunnel.wire.errors import StreamErrorCode

log = logging.getLogger("qtun.stream")

ClientOf = Callable[[TunnelConnection], str | None]
StreamCarrier = Callable[[str], tuple[TunnelConnection, Transmit] | None]
"""The client's stream-mode connection now (and how to transmit it), or None."""

ICMP_PAYLOAD_MAX: Final = 253
"""Error TLV value = 2-byte code + payload, in a TLV whose length is one byte (-tunnel §5)."""
ICMP_MEMORY: Final = 64
"""Recent ICMP errors kept for matching (a connect fails right after its ICMP arrives)."""
ICMP_MAX_AGE: Final = 5.0
IPPROTO_TCP: Final = 6
IPPROTO_ICMPV6: Final = 58
ICMP_DEST_UNREACH: Final = 3
ICMP_TIME_EXCEEDED: Final = 11
ICMP6_DST_UNREACH: Final = 1
ICMP6_TIME_EXCEEDED: Final = 3
UNREACHABLE_ERRNOS: Final = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED, errno.EPROTO, errno.EACCES}
)
SUMMARY_DELAY: Final = 1.0
"""Seconds after a suppressed log line before its client's "suppressed=K" summary is tried."""


def no_client(_: TunnelConnection) -> str | None:
    """Without a concentrator to say who is who, each connection counts as its own client."""
    return None


def _not_own(_: IPv4Address | IPv6Address) -> bool:
    return False


def is_own_address(address: IPv4Address | IPv6Address) -> bool:
    """Whether the host has `address` (binding a socket to it succeeds)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def ipv6_header(source: str, ancillary: list[tuple[int, int, bytes]], payload_length: int) -> bytes:
    """The IPv6 header of an ICMPv6 packet read from a raw socket (which strips it), from its
    source address and the IPV6_PKTINFO (destination) and IPV6_HOPLIMIT control messages;
    traffic class and flow label are not reported by the kernel and written as 0."""
    destination, hop_limit = bytes(16), 0
    for level, kind, value in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(value) >= 16:
            destination = value[:16]
        elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
            hop_limit = int.from_bytes(value[:4], sys.byteorder)
    return (
        struct.pack("!IHBB", 6 << 28, payload_length, IPPROTO_ICMPV6, hop_limit & 0xFF)
        + IPv6Address(source.split("%")[0]).packed
        + destination
    )


def quoted_tcp_ports(message: bytes, version: int) -> tuple[str, int, int] | None:
    """From an ICMP/ICMPv6 Destination Unreachable / Time Exceeded message (starting at its
    type byte), the (destination, source port, destination port) of the TCP segment it
    quotes, or None if it quotes something else."""
    if len(message) < 8:
        return None
    kinds = (
        (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED)
        if version == 4
        else (
            ICMP6_DST_UNREACH,
            ICMP6_TIME_EXCEEDED,
        )
    )
    if message[0] not in kinds:
        return None
    quoted = message[8:]
    if version == 4:
        if len(quoted) < 20 or quoted[0] >> 4 != 4 or quoted[9] != IPPROTO_TCP:
            return None
        header = (quoted[0] & 0x0F) * 4
        destination = str(IPv4Address(quoted[16:20]))
    else:
        if len(quoted) < 40 or quoted[0] >> 4 != 6 or quoted[6] != IPPROTO_TCP:
            return None
        header = 40
        destination = str(IPv6Address(quoted[24:40]))
    ports = quoted[header : header + 4]
    if len(ports) < 4:
        return None
    return destination, int.from_bytes(ports[:2], "big"), int.from_bytes(ports[2:], "big")


class IcmpWatcher:
    """Raw ICMP and ICMPv6 sockets keeping the last few errors that quote a TCP segment, so a
    failed connect can be answered with the ICMP message itself (-tcp §5.1.3). Needs
    CAP_NET_RAW; without it `available` is False and failures report Network Failure."""

    def __init__(self) -> None:
        self._sockets: list[tuple[socket.socket, int]] = []
        self._recent: deque[tuple[float, tuple[str, int, int], bytes]] = deque(maxlen=ICMP_MEMORY)
        for family, proto, version in (
            (socket.AF_INET, socket.IPPROTO_ICMP, 4),
            (socket.AF_INET6, socket.IPPROTO_ICMPV6, 6),
        ):
            try:
                sock = socket.socket(family, socket.SOCK_RAW, proto)
            except OSError:
                continue
            if version == 6:
                # An IPv6 raw socket never returns the IPv6 header (RFC 3542 §3): ask for the
                # destination address and hop limit to write it back (ipv6_header).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            sock.setblocking(False)
            self._sockets.append((sock, version))

    @property
    def available(self) -> bool:
        return bool(self._sockets)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for sock, version in self._sockets:
            loop.add_reader(sock.fileno(), self._read, sock, version)

    def _read(self, sock: socket.socket, version: int) -> None:
        for _ in range(64):
            try:
                data, ancillary, _, source = sock.recvmsg(2048, 256)
            except OSError:
                return
            if version == 4:
                # IPv4 raw sockets deliver the IP header too: the packet as received.
                packet = data
                message = data[(data[0] & 0x0F) * 4 :] if data else data
            else:
                message = data
                packet = ipv6_header(source[0], ancillary, len(message)) + message
            key = quoted_tcp_ports(message, version)
            if key is not None:
                self._recent.append((time.monotonic(), key, packet[:ICMP_PAYLOAD_MAX]))

    def find(self, destination: str, source_port: int, destination_port: int) -> bytes | None:
        """The ICMP message that quoted our SYN to destination:destination_port from
        source_port, if one arrived lately. The kernel queues the ICMP packet on the raw
        socket before it fails the connect, so read what is queued first."""
        for sock, version in self._sockets:
            self._read(sock, version)
        key = (destination, source_port, destination_port)
        now = time.monotonic()
        for when, seen, message in reversed(self._recent):
            if seen == key and now - when <= ICMP_MAX_AGE:
                return message
        return None

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            for sock, _ in self._sockets:
                loop.remove_reader(sock.fileno())
        for sock, _ in self._sockets:
            sock.close()
        self._sockets = []


@dataclass(eq=False)
class _Client:
    """One client's stream mode: its budget (all its connections share it) and connections."""

    key: str  # the client name, or "connection-<id>" for a connection without one
    budget: StreamBudget
    connections: set[int] = field(default_factory=set)


class StreamServer:
    """The concentrator's stream mode (see the module docstring); one per concentrator."""

    def __init__(self, config: StreamServerConfig, client_of: ClientOf = no_client) -> None:
        self.config = config
        self.client_of = client_of
        self.policy = DestinationPolicy(config.allow, config.deny)
        self.hub = RelayHub(send_buffer=config.send_buffer)
        self.log_budget = LogBudget()
        self._clients: dict[str, _Client] = {}
        self._client_by_connection: dict[int, _Client] = {}
        self._summaries: dict[str, asyncio.TimerHandle] = {}
        self._summary_misses: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._icmp: IcmpWatcher | None = None
        self.refused_policy = 0
        self.refused_pending = 0
        self.refused_memory = 0
        self.connect_failures = 0
        self.rejected_malformed = 0
        self.inbound_opened = 0
        self.inbound_no_connection = 0
        self.inbound_refused = 0

    def quic_options(self) -> dict[str, Any]:
        """Keyword arguments for TunnelQuicConnection on a stream-mode concentrator."""
        return {
            "stream_mode": True,
            "max_streams_bidi": self.config.max_streams,
            "stream_window": self.config.window,
        }

    # -- the contract --------------------------------------------------------------------------

    def handle(self, conn: TunnelConnection, event: TunnelEvent, transmit: Transmit) -> bool:
        """Handle a stream-mode event of `conn`; True if it was one (consumed)."""
        if isinstance(event, TcpConnectRequested):
            self._on_connect_requested(conn, event, transmit)
            return True
        relay = self.hub.relays.get((id(conn), getattr(event, "stream_id", -1)))
        if isinstance(event, TcpConnectAccepted):
            return True  # an inbound stream: relayed since it was opened
        if isinstance(event, TcpConnectFailed):
            # the client could not (or would not) connect an inbound stream: reset outside
            self.inbound_refused += 1
            self._log(
                self._client(conn),
                "inbound tcp failed client=%s stream=%d code=%d",
                event.stream_id,
                event.code,
            )
            if relay is not None:
                relay.abort(f"the client answered Error TLV code {event.code}")
            return True
        if isinstance(event, StreamDataReceived):
            if relay is not None:
                if not relay.opened:
                    relay.on_buffered(event.data, event.end)
                else:
                    relay.on_stream_data(event.data, event.end)
            return True
        if isinstance(event, StreamReset | StopSendingReceived):
            if relay is not None:
                kind = (
                    StreamEvent.RESET_STREAM_RECEIVED
                    if isinstance(event, StreamReset)
                    else StreamEvent.STOP_SENDING_RECEIVED
                )
                relay.on_stream_abort(kind)
            return True
        if isinstance(event, StreamRejected):
            self.rejected_malformed += 1
            self._log(
                self._client(conn),
                "stream rejected client=%s stream=%d reason=%s",
                event.stream_id,
                event.reason,
            )
            if relay is not None:
                relay.abort(event.reason)
            return True
        return False

    def connection_closed(self, conn: TunnelConnection) -> None:
        """The connection is gone: reset every TCP connection it carried."""
        for relay in [r for r in self.hub.relays.values() if r.conn is conn]:
            relay.abort("the QUIC connection closed")
        client = self._client_by_connection.pop(id(conn), None)
        if client is not None:
            client.connections.discard(id(conn))
            self._forget_if_idle(client)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.hub.close()
        for timer in self._summaries.values():
            timer.cancel()
        self._summaries.clear()
        if self._icmp is not None:
            self._icmp.close()
            self._icmp = None

    def stats(self) -> dict[str, int]:
        clients = self._clients.values()
        return {
            **self.hub.counters.as_dict(),
            "active": len(self.hub.relays),
            "clients": len(self._clients),
            "pending_connects": sum(c.budget.pending for c in clients),
            "buffer_budget_used": sum(c.budget.buffer for c in clients),
            "refused_policy": self.refused_policy,
            "refused_pending": self.refused_pending,
            "refused_memory": self.refused_memory,
            "connect_failures": self.connect_failures,
            "rejected_malformed": self.rejected_malformed,
            "inbound_opened": self.inbound_opened,
            "inbound_no_connection": self.inbound_no_connection,
            "inbound_refused": self.inbound_refused,
        }

    # -- the reversed flow: connections accepted on a mapped port --------------------------------

    def inbound_relay(self, mapping: Mapping, carrier: StreamCarrier) -> Callable[[], TcpRelay]:
        """The protocol factory of the listener of `mapping`'s external port."""

        def make() -> TcpRelay:
            relay = TcpRelay(self.hub, self.config.window)
            relay.on_made = lambda made: self._inbound_made(made, mapping, carrier)
            return relay

        return make

    def _inbound_made(self, relay: TcpRelay, mapping: Mapping, carrier: StreamCarrier) -> None:
        current = carrier(mapping.client)
        if current is None:
            self.inbound_no_connection += 1
            relay.abort("the client has no stream-mode connection")
            return
        conn, transmit = current
        client = self._client(conn)
        over = client.budget.try_open()
        if over is not None:
            self._log(client, "inbound tcp refused client=%s reason=%s", over.reason)
            relay.abort(over.reason)
            return
        client.budget.connect_done()  # nothing to connect here: only the memory counts
        try:
            sid = conn.open_tcp_stream(mapping.internal_address, mapping.internal_port)
        except (ValueError, TunnelUsageError) as exc:
            client.budget.stream_closed()
            self._log(client, "inbound tcp refused client=%s reason=%s", exc)
            relay.abort(str(exc))
            return
        relay.on_finished = lambda _: self._stream_closed(client)
        relay.attach(conn, sid, transmit)
        relay.open(TcpEvent.SYN_RECEIVED)
        self.inbound_opened += 1
        transmit()

    # -- clients -------------------------------------------------------------------------------

    def _client(self, conn: TunnelConnection) -> _Client:
        client = self._client_by_connection.get(id(conn))
        if client is not None:
            return client
        key = self.client_of(conn) or f"connection-{id(conn):x}"
        client = self._clients.get(key)
        if client is None:
            config = self.config
            budget = StreamBudget(
                config.max_pending_connects,
                config.max_client_buffer,
                config.window + config.send_buffer,
            )
            client = self._clients[key] = _Client(key, budget)
        client.connections.add(id(conn))
        self._client_by_connection[id(conn)] = client
        return client

    def _forget_if_idle(self, client: _Client) -> None:
        if (
            not client.connections
            and client.budget.idle
            and self._clients.get(client.key) is client
        ):
            del self._clients[client.key]

    def _stream_closed(self, client: _Client) -> None:
        client.budget.stream_closed()
        self._forget_if_idle(client)

    def _log(self, client: _Client, message: str, *args: object) -> None:
        """An INFO line about `client` (its name is the first argument) that the client can
        cause at will: within the client's log budget; the lines beyond are counted and
        reported by the next line allowed (suppressed_before=K) or by a summary line."""
        suppressed = self._allow_line(client.key)
        if suppressed is None:
            self._arm_summary(client.key)
            return
        if suppressed:
            message += " suppressed_before=%d"
            args = (*args, suppressed)
        log.info(message, client.key, *args)

    def _allow_line(self, key: str, *, summary: bool = False) -> int | None:
        """LogBudget.allow, without counting a summary that found no budget as a line."""
        suppressed = self.log_budget.allow(key, asyncio.get_running_loop().time())
        if suppressed is None:
            if summary:
                self._summary_misses[key] = self._summary_misses.get(key, 0) + 1
            return None
        return max(0, suppressed - self._summary_misses.pop(key, 0))

    def _arm_summary(self, key: str) -> None:
        if key not in self._summaries:
            loop = asyncio.get_running_loop()
            self._summaries[key] = loop.call_later(SUMMARY_DELAY, self._summarise, key)

    def _summarise(self, key: str) -> None:
        del self._summaries[key]
        suppressed = self._allow_line(key, summary=True)
        if suppressed is None:  # still flooding: try again later
            self._arm_summary(key)
        elif suppressed:
            log.info("stream log lines suppressed client=%s suppressed=%d", key, suppressed)

    # -- TCP Connect -----------------------------------------------------------------------------

    def _on_connect_requested(
        self, conn: TunnelConnection, event: TcpConnectRequested, transmit: Transmit
    ) -> None:
        if self._icmp is None:
            self._icmp = IcmpWatcher()
            self._icmp.start(asyncio.get_running_loop())
        sid = event.stream_id
        client = self._client(conn)
        is_own = _not_own if self.config.allow_own_addresses else is_own_address
        refusal = self.policy.refusal(event.address, is_own)
        if refusal is not None:
            self.refused_policy += 1
        else:
            over = client.budget.try_open()
            if over is not None:
                refusal = over.reason
                if over.kind == "pending":
                    self.refused_pending += 1
                else:
                    self.refused_memory += 1
        if refusal is not None:
            self._log(
                client,
                "tcp connect refused client=%s stream=%d to=%s:%d reason=%s",
                sid,
                event.address,
                event.port,
                refusal,
            )
            conn.fail_tcp_stream(sid, StreamErrorCode.NETWORK_FAILURE)
            transmit()
            return
        relay = TcpRelay(self.hub, self.config.window, hold_until_open=True)
        relay.on_finished = lambda _: self._stream_closed(client)
        relay.attach(conn, sid, transmit)
        task = asyncio.get_running_loop().create_task(
            self._connect(conn, relay, event.address, event.port, client)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _drop(relay: TcpRelay, sock: socket.socket, reason: str) -> None:
        """Reset the stream and the destination connection of a connect that cannot go on:
        the socket is the relay's transport's once it made one (closing it underneath would
        leave the transport, and the fd number it registered, behind), else closed here."""
        if relay.transport is None:
            sock.close()
        relay.abort(reason)

    async def _connect(
        self,
        conn: TunnelConnection,
        relay: TcpRelay,
        address: IPv4Address | IPv6Address,
        port: int,
        client: _Client,
    ) -> None:
        if relay.finished or conn.closed:
            # reset (or closed) in the same batch as its TCP Connect: connecting would only
            # open a socket and a handshake to RST at once (found by a review)
            client.budget.connect_done()
            self._forget_if_idle(client)
            return
        loop = asyncio.get_running_loop()
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code: StreamErrorCode | None = None
        payload = b""
        sid = relay.stream_id
        try:
            sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
            local_port = sock.getsockname()[1]
            try:
                await asyncio.wait_for(
                    loop.sock_connect(sock, (str(address), port)), self.config.connect_timeout
                )
            except TimeoutError:
                code = StreamErrorCode.NETWORK_FAILURE
                self._log(
                    client, "tcp connect timeout client=%s stream=%d to=%s:%d", sid, address, port
                )
            except OSError as exc:
                code = StreamErrorCode.NETWORK_FAILURE
                if exc.errno in UNREACHABLE_ERRNOS and self._icmp is not None:
                    icmp = self._icmp.find(str(address), local_port, port)
                    if icmp is not None:
                        code, payload = StreamErrorCode.ICMP_PACKET_RECEIVED, icmp
                self._log(
                    client,
                    "tcp connect failed client=%s stream=%d to=%s:%d error=%s",
                    sid,
                    address,
                    port,
                    exc.strerror or exc,
                )
            if code is None:
                await loop.connect_accepted_socket(lambda: relay, sock)
        except OSError as exc:  # the socket died between connect and accept
            code = StreamErrorCode.NETWORK_FAILURE
            self._log(client, "tcp connect failed client=%s stream=%d error=%s", sid, exc)
        except BaseException:  # cancelled (shutdown) or a bug: neither socket nor stream left
            self._drop(relay, sock, "connect abandoned")
            raise
        finally:
            client.budget.connect_done()
        if relay.finished or conn.closed:  # the stream or connection went away meanwhile
            self._drop(relay, sock, "gone while connecting")
            self._forget_if_idle(client)
            return
        try:
            if code is not None:
                sock.close()
                self.connect_failures += 1
                conn.fail_tcp_stream(relay.stream_id, code, payload)
                relay.transmit()
                relay.discard()
                return
            conn.accept_tcp_stream(relay.stream_id)
        except TunnelUsageError as exc:  # the peer ended the stream while we connected
            self._drop(relay, sock, f"gone while connecting: {exc}")
            self._forget_if_idle(client)
            return
        relay.open(StreamEvent.STREAM_OPENED_TLVS_RECEIVED)
        relay.transmit()
