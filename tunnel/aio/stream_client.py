"""Stream mode on the client (-tcp draft): applications' TCP connections carried on QUIC
streams, one bidirectional stream per connection (tunnel/aio/stream_relay.py relays them).

Two ways in:
- transparent interception: an nftables table (`inet qtun_stream`, created in start(),
  deleted in close()) redirects locally originated TCP towards the `intercept` prefixes to
  `listen_port` on 127.0.0.1 / ::1; the original destination comes from conntrack
  (getsockopt SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST). The application does nothing special.
- an optional SOCKS5 front (CONNECT only, RFC 1928) on socks_address:socks_port.

Early accept (transparent interception): with a REDIRECT the kernel completes the
application's TCP handshake with our listener before we even know the destination, so the
application sees "connected" before the concentrator tried the destination. We open the
stream at once (TCP Connect + End) and relay the application's first bytes optimistically
(the concentrator buffers them, within one stream window, until its connect succeeds). If the
concentrator answers with an Error TLV (refused, unreachable, denied, timeout), the
application's connection is RESET: it sees ECONNRESET on its first read or write instead of
ECONNREFUSED / EHOSTUNREACH at connect(). The trade-off: no added round trip before the
application can send (the SYN is answered locally), but connect errors become resets, and a
client that relies on connect() failing (happy eyeballs across addresses) cannot tell. The
SOCKS front has no such trade-off: it answers the application's CONNECT only once the
concentrator did, with a SOCKS reply code that mirrors the Error TLV.

Connections accepted while `current()` is None (no QUIC connection up) are reset at once.

The reversed flow (README "Stream mode"): a stream the concentrator opens (TCP Connect + End
naming one of our tunnel addresses and a port) is accepted only for a port of `[stream]
inbound` (the ports the client asked to have mapped, tunnel/agents/port_mapper.py) and one of
`inner_addresses`; anything else is refused with Error TLV Network Failure. An accepted one is
connected to `inbound_host` (unset: the address the concentrator named) within
CONNECT_TIMEOUT: TCP Connect OK + End, then the relay both ways as for our own streams; a
failed connect answers Error TLV Network Failure + End + FIN (-tcp §5.1.3), which the
concentrator turns into a reset of the outside connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Final

from tunnel.aio.stream_relay import RelayHub, TcpRelay, Transmit, set_linger_zero
from tunnel.config import StreamClientConfig
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
from tunnel.user_error import RuntimeFailure
from tunnel.wire.errors import StreamErrorCode
from tunnel.wire.socks5 import (
    ConnectRequest,
    Reply,
    Socks5Error,
    Socks5Handshake,
    encode_reply,
    reply_for_error,
)

log = logging.getLogger("qtun.stream")

SO_ORIGINAL_DST: Final = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST: Final = 80  # linux/netfilter_ipv6/ip6_tables.h
NFT_TABLE: Final = "qtun_stream"
NFT_PRIORITY: Final = -100  # dstnat
LISTEN_BACKLOG: Final = 1024  # asyncio's default 100 drops SYNs of a burst of connections
CONNECT_TIMEOUT: Final = 5.0  # seconds for the local connect of an inbound stream

Current = Callable[[], tuple[TunnelConnection, Callable[[], None]] | None]


class InterceptionError(RuntimeFailure):
    """The nftables interception could not be set up; the message says what to do."""


def original_destination(sock: socket.socket) -> tuple[IPv4Address | IPv6Address, int] | None:
    """The destination the application connected to before the nftables redirect, or None
    if this connection was not redirected (a direct connection to the listener)."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            return IPv4Address(raw[4:8]), port
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return IPv6Address(raw[8:24]), port
    except OSError:
        return None


def nft_ruleset(config: StreamClientConfig, table: str = NFT_TABLE) -> str:
    """The nftables table that redirects locally originated TCP to the intercepted prefixes
    to the transparent listener."""
    v4 = [str(p) for p in config.intercept if p.version == 4]
    v6 = [str(p) for p in config.intercept if p.version == 6]
    rules = []
    if v4:
        rules.append(
            f"    ip daddr {{ {', '.join(v4)} }} meta l4proto tcp redirect to :{config.listen_port}"
        )
    if v6:
        rules.append(
            f"    ip6 daddr {{ {', '.join(v6)} }} meta l4proto tcp "
            f"redirect to :{config.listen_port}"
        )
    body = "\n".join(rules)
    return (
        f"table inet {table} {{\n"
        f"  chain output {{\n"
        f"    type nat hook output priority {NFT_PRIORITY}; policy accept;\n"
        f"{body}\n"
        f"  }}\n"
        f"}}\n"
    )


def _nft(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["nft", *args], input=stdin, capture_output=True, text=True, timeout=10, check=False
        )
    except FileNotFoundError:
        raise InterceptionError(
            "the nft program is missing: install nftables or use stream.socks_port only"
        ) from None


class _SocksRelay(TcpRelay):
    """A relay whose first bytes are a SOCKS5 handshake."""

    def __init__(self, client: StreamClient) -> None:
        super().__init__(client.hub, client.config.window)
        self.client = client
        self.handshake = Socks5Handshake()
        self.requested = False
        self._early_up = b""  # application bytes that followed its CONNECT request

    def data_received(self, data: bytes) -> None:
        if self.requested and self.conn is not None:
            super().data_received(data)
            return
        if self.requested:
            return  # bytes before our reply: the application broke SOCKS; ignore
        try:
            answer, request, rest = self.handshake.feed(data)
        except Socks5Error as exc:
            log.info("socks refused reason=%s", exc)
            if self.transport is not None:
                if exc.reply:
                    self.transport.write(exc.reply)
                self.transport.close()
            return
        if answer and self.transport is not None:
            self.transport.write(answer)
        if request is not None:
            self.requested = True
            task = asyncio.get_running_loop().create_task(self.client._socks_open(self, request))
            self.client._tasks.add(task)
            task.add_done_callback(self.client._tasks.discard)
            self._early_up = rest

    def release_early(self) -> None:
        """The concentrator accepted: say so, then relay what the application sent early."""
        if self.transport is not None:
            self.transport.write(encode_reply(Reply.SUCCEEDED))
        early, self._early_up = self._early_up, b""
        if early:
            self.data_received(early)

    def refuse(self, reply: Reply) -> None:
        """Answer the CONNECT with a failure and close (RFC 1928 §6), no RST."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_reply(reply))
            self.transport.close()
        self._reset_stream()  # our half of the stream, if one was opened
        self.discard()

    def eof_received(self) -> bool:
        if self.conn is None:
            return False
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is None:
            self.finished = True
            return
        super().connection_lost(exc)


class StreamClient:
    """The client's stream mode (see the module docstring)."""

    def __init__(
        self,
        config: StreamClientConfig,
        current: Current,
        inner_addresses: tuple[IPv4Address | IPv6Address, ...] = (),
    ) -> None:
        self.config = config
        self.current = current
        self.inner_addresses = frozenset(inner_addresses)
        self.inbound_ports = frozenset(config.inbound)
        self.hub = RelayHub(send_buffer=config.send_buffer)
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._nft_table: str | None = None
        self._socks: dict[tuple[int, int], _SocksRelay] = {}
        self.refused_no_connection = 0
        self.refused_not_redirected = 0
        self.connect_failed = 0
        self.inbound_accepted = 0
        self.inbound_refused = 0
        self.inbound_failed = 0
        self.nft_table = NFT_TABLE

    def quic_options(self) -> dict[str, Any]:
        """Keyword arguments for TunnelQuicConnection on a stream-mode client."""
        return {"stream_mode": True, "stream_window": self.config.window}

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (transparent listener, SOCKS front) and install the nftables redirect.
        Raises InterceptionError / OSError with one sentence if that fails."""
        loop = asyncio.get_running_loop()
        try:
            if self.config.intercept:
                families = {p.version for p in self.config.intercept}
                # REDIRECT in the output hook sends to the loopback address of the family
                for host in [h for v, h in ((4, "127.0.0.1"), (6, "::1")) if v in families]:
                    server = await loop.create_server(
                        self._transparent_relay,
                        host,
                        self.config.listen_port,
                        reuse_address=True,
                        backlog=LISTEN_BACKLOG,
                    )
                    self._servers.append(server)
                self._install_nft()
            if self.config.socks_port is not None:
                server = await loop.create_server(
                    lambda: _SocksRelay(self),
                    str(self.config.socks_address),
                    self.config.socks_port,
                    reuse_address=True,
                    backlog=LISTEN_BACKLOG,
                )
                self._servers.append(server)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Remove the nftables table, stop listening, reset every relayed connection."""
        self._remove_nft()
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        self.hub.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers = []

    def _install_nft(self) -> None:
        # a table left by a crashed run would double the rules: replace it
        _nft(["delete", "table", "inet", self.nft_table])
        result = _nft(["-f", "-"], nft_ruleset(self.config, self.nft_table))
        if result.returncode != 0:
            raise InterceptionError(
                f"nft refused the interception table ({result.stderr.strip()}): run the client "
                "as root on a kernel with nf_tables NAT, or use stream.socks_port only"
            )
        self._nft_table = self.nft_table

    def _remove_nft(self) -> None:
        if self._nft_table is not None:
            _nft(["delete", "table", "inet", self._nft_table])
            self._nft_table = None

    # -- the contract --------------------------------------------------------------------------

    def handle(self, conn: TunnelConnection, event: TunnelEvent, transmit: Transmit) -> bool:
        sid = getattr(event, "stream_id", None)
        if sid is None:
            return False
        relay = self.hub.relays.get((id(conn), sid))
        if isinstance(event, TcpConnectRequested):
            self._on_inbound(conn, event, transmit)
            return True
        if isinstance(event, TcpConnectAccepted):
            if isinstance(relay, _SocksRelay):
                relay.release_early()
            return True
        if isinstance(event, TcpConnectFailed):
            self.connect_failed += 1
            log.info("tcp connect failed stream=%d code=%s", sid, event.code)
            if isinstance(relay, _SocksRelay):
                relay.refuse(reply_for_error(event.code))
            elif relay is not None:
                relay.abort(f"the concentrator could not connect (Error TLV code {event.code})")
            return True
        if isinstance(event, StreamDataReceived):
            if relay is not None:
                if relay.opened:
                    relay.on_stream_data(event.data, event.end)
                else:  # an inbound stream still connecting locally
                    relay.on_buffered(event.data, event.end)
            return True
        if isinstance(event, StreamReset | StopSendingReceived):
            if relay is not None:
                relay.on_stream_abort(
                    StreamEvent.RESET_STREAM_RECEIVED
                    if isinstance(event, StreamReset)
                    else StreamEvent.STOP_SENDING_RECEIVED
                )
            return True
        if isinstance(event, StreamRejected):
            if relay is not None:
                relay.abort(event.reason)
            return True
        return False

    def connection_closed(self, conn: TunnelConnection) -> None:
        for relay in [r for r in self.hub.relays.values() if r.conn is conn]:
            relay.abort("the QUIC connection closed")

    def stats(self) -> dict[str, int]:
        return {
            **self.hub.counters.as_dict(),
            "active": len(self.hub.relays),
            "refused_no_connection": self.refused_no_connection,
            "refused_not_redirected": self.refused_not_redirected,
            "connect_failed": self.connect_failed,
            "inbound_accepted": self.inbound_accepted,
            "inbound_refused": self.inbound_refused,
            "inbound_failed": self.inbound_failed,
        }

    # -- the reversed flow: streams the concentrator opens -------------------------------------

    def _on_inbound(
        self, conn: TunnelConnection, event: TcpConnectRequested, transmit: Transmit
    ) -> None:
        sid, port = event.stream_id, event.port
        if port not in self.inbound_ports or event.address not in self.inner_addresses:
            self.inbound_refused += 1
            log.info(
                "inbound tcp refused stream=%d to=%s:%d reason=not an offered port and address",
                sid,
                event.address,
                port,
            )
            conn.fail_tcp_stream(sid, StreamErrorCode.NETWORK_FAILURE)
            transmit()
            return
        relay = TcpRelay(self.hub, self.config.window, hold_until_open=True)
        relay.attach(conn, sid, transmit)
        host = self.config.inbound_host or event.address
        task = asyncio.get_running_loop().create_task(
            self._connect_inbound(conn, relay, host, port)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_inbound(
        self,
        conn: TunnelConnection,
        relay: TcpRelay,
        host: IPv4Address | IPv6Address,
        port: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        sid = relay.stream_id
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: relay, str(host), port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            self.inbound_failed += 1
            reason = "timeout" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            log.info("inbound tcp failed stream=%d to=%s:%d error=%s", sid, host, port, reason)
            if not relay.finished and not conn.closed:
                with contextlib.suppress(TunnelUsageError):
                    conn.fail_tcp_stream(sid, StreamErrorCode.NETWORK_FAILURE)
                    relay.transmit()
            relay.discard()
            return
        if relay.finished or conn.closed:  # the stream or the connection ended meanwhile
            if relay.transport is not None:  # the relay no longer owns it: reset it here
                set_linger_zero(relay.transport.get_extra_info("socket"))
                relay.transport.abort()
            relay.abort("gone while connecting")
            return
        try:
            conn.accept_tcp_stream(sid)
        except TunnelUsageError as exc:
            relay.abort(f"gone while connecting: {exc}")
            return
        self.inbound_accepted += 1
        relay.open(StreamEvent.STREAM_OPENED_TLVS_RECEIVED)
        relay.transmit()

    # -- new application connections -------------------------------------------------------

    def _transparent_relay(self) -> TcpRelay:
        relay = TcpRelay(self.hub, self.config.window)
        relay.on_made = self._on_transparent
        return relay

    def _on_transparent(self, relay: TcpRelay) -> None:
        assert relay.transport is not None
        sock = relay.transport.get_extra_info("socket")
        destination = original_destination(sock) if sock is not None else None
        if destination is None:
            self.refused_not_redirected += 1
            relay.abort("not a redirected connection")
            return
        refusal = self._open(relay, *destination)
        if refusal is not None:
            relay.abort(refusal)

    def _open(self, relay: TcpRelay, address: IPv4Address | IPv6Address, port: int) -> str | None:
        """Open the relay's stream on the current connection; None, or why it could not."""
        current = self.current()
        if current is None:
            self.refused_no_connection += 1
            return "no QUIC connection is up"
        conn, transmit = current
        try:
            sid = conn.open_tcp_stream(address, port)
        except ValueError as exc:  # a destination the draft forbids (loopback, multicast...)
            return str(exc)
        relay.attach(conn, sid, transmit)
        relay.open(TcpEvent.SYN_RECEIVED)
        transmit()
        return None

    async def _socks_open(self, relay: _SocksRelay, request: ConnectRequest) -> None:
        host = request.host
        if isinstance(host, str):
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, request.port, type=socket.SOCK_STREAM
                )
                host = ip_address(infos[0][4][0])
            except (OSError, IndexError, ValueError):
                relay.refuse(Reply.HOST_UNREACHABLE)
                return
        refusal = self._open(relay, host, request.port)
        if refusal is not None:
            log.info("socks connect refused reason=%s", refusal)
            relay.refuse(Reply.GENERAL_FAILURE)
