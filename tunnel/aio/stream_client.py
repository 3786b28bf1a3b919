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

Faithful connect (`connect = "faithful"`): the application's SYN is held instead (an
NFQUEUE rule in the mangle table's OUTPUT chain, before the nat redirect; tunnel/aio/nfqueue.py),
the stream opened with TCP Connect + End at once, and the SYN released only when the
concentrator answered TCP Connect OK — then the redirect and our listener complete the
handshake, and the accepted socket is handed to the relay that already holds the stream. An
Error TLV drops the SYN and answers the application as the network would have
(tunnel/wire/syn_answers.py): a RST (connect() fails with ECONNREFUSED) for Network Failure,
the concentrator's ICMP error re-addressed to it (EHOSTUNREACH...) for ICMP Packet Received.
This is the draft's mapping (-tcp §3, "SYN received -> Open Stream, send TLVs"; the
application's connection opens when the destination's did); its cost is one round trip to the
concentrator plus its connect before connect() returns (README, Stream mode). A retransmitted
SYN of a held connection is dropped; a SYN without a QUIC connection up is answered with a RST.
If the program dies, the rule's queue bypass lets SYNs through (early mode's behaviour).

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
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Final

from tunnel.aio.nfqueue import NfQueue, NfQueueError, QueuedPacket
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
from tunnel.wire.syn_answers import Syn, parse_syn, tcp_reset_for, unreachable_for

log = logging.getLogger("qtun.stream")

SO_ORIGINAL_DST: Final = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST: Final = 80  # linux/netfilter_ipv6/ip6_tables.h
NFT_TABLE: Final = "qtun_stream"
HOLD_CHAIN: Final = "QTUN_HOLD"  # the iptables (mangle) chain of the faithful connect
HOLD_TIMEOUT: Final = 60.0
"""A held SYN never answered (the concentrator lost) or never accepted is given up after this:
longer than any connect_timeout the concentrator may use."""
MAX_HELD: Final = 1024
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


def hold_rules(config: StreamClientConfig, chain: str = HOLD_CHAIN) -> dict[int, list[list[str]]]:
    """The iptables / ip6tables commands (per IP version) that queue the SYNs of locally
    originated TCP to the intercepted prefixes on NFQUEUE `listen_port`, with bypass (a SYN
    passes when nobody holds the queue)."""
    rules: dict[int, list[list[str]]] = {}
    for version in (4, 6):
        prefixes = [str(p) for p in config.intercept if p.version == version]
        if not prefixes:
            continue
        commands = [["-t", "mangle", "-N", chain]]
        for prefix in prefixes:
            commands.append(
                ["-t", "mangle", "-A", chain, "-p", "tcp", "--syn", "-d", prefix, "-j", "NFQUEUE",
                 "--queue-num", str(config.listen_port), "--queue-bypass"]
            )  # fmt: skip
        commands.append(["-t", "mangle", "-A", "OUTPUT", "-j", chain])
        rules[version] = commands
    return rules


def _iptables(version: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    program = "iptables" if version == 4 else "ip6tables"
    try:
        return subprocess.run(
            [program, "-w", *args], capture_output=True, text=True, timeout=10, check=False
        )
    except FileNotFoundError:
        raise InterceptionError(
            f'stream.connect = "faithful" needs {program} (the xtables NFQUEUE target; this '
            'kernel has no nftables queue): install iptables, or use connect = "early"'
        ) from None


class _HoldState(Enum):
    PENDING = "pending"  # the concentrator has not answered the TCP Connect yet
    RELEASED = "released"  # TCP Connect OK: the SYN went on, the socket is not accepted yet


@dataclass
class _Held:
    """An application's SYN held until the concentrator answered (faithful connect)."""

    syn: Syn
    packet_id: int
    relay: TcpRelay
    state: _HoldState = _HoldState.PENDING
    expiry: asyncio.TimerHandle | None = None


class _HandOver(asyncio.Protocol):
    """The listener's protocol for a faithful connection: on accept, hand the socket to the
    relay that holds its stream (or, for a connection nobody held, the early path)."""

    def __init__(self, client: StreamClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._accepted(transport)


class _SocksRelay(TcpRelay):
    """A relay whose first bytes are a SOCKS5 handshake."""

    def __init__(self, client: StreamClient) -> None:
        super().__init__(client.hub, client.config.window)
        self.client = client
        self.handshake = Socks5Handshake()
        self.requested = False
        self.released = False  # the concentrator accepted and the application was told
        # Application bytes that followed its CONNECT request before our reply (RFC 1928 says
        # to wait for it; many clients send at once), and its FIN among them: relayed in order
        # at release. Before, bytes that came while a host name was resolved were dropped, and
        # those after the stream attached went ahead of the ones before (found by a review).
        self._early_up = b""
        self._early_eof = False
        self._early_paused = False

    def data_received(self, data: bytes) -> None:
        if self.released:
            super().data_received(data)
            return
        if self.requested:
            self._early_up += data
            if not self._early_paused and len(self._early_up) > self.hub.send_buffer:
                self._early_paused = True  # the application waits for our reply from here
                if self.transport is not None:
                    self.transport.pause_reading()
            return
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
        if self.finished or self.transport is None or self.transport.is_closing():
            return  # the application went away (its reset reached the stream already)
        self.transport.write(encode_reply(Reply.SUCCEEDED))
        self.released = True
        early, self._early_up = self._early_up, b""
        if early:
            self.data_received(early)
        if self._early_eof and not self.finished and not super().eof_received():
            self.transport.close()  # the relay could not take the FIN: it aborted
        elif self._early_paused and not self.finished:
            self._early_paused = False
            if not self._reading_paused:  # unless relaying them filled the send buffer
                self.transport.resume_reading()

    def refuse(self, reply: Reply) -> None:
        """Answer the CONNECT with a failure and close (RFC 1928 §6), no RST."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_reply(reply))
            self.transport.close()
        self._reset_stream()  # our half of the stream, if one was opened
        self.discard()

    def eof_received(self) -> bool:
        if self.requested and not self.released and self._early_up:
            # a request sent ahead with its FIN (a half-close): relayed after it, at release
            self._early_eof = True
            return True
        # with nothing sent ahead, a FIN before our reply is an application that left
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
        # faithful connect: the queue, the SYNs it holds (by flow and by stream), the raw
        # sockets that answer a refused one, the iptables chains installed (by IP version)
        self.faithful = config.connect == "faithful" and bool(config.intercept)
        self.hold_chain = HOLD_CHAIN
        self._queue: NfQueue | None = None
        self._held: dict[tuple[Any, ...], _Held] = {}
        self._held_streams: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._raw: dict[int, socket.socket] = {}
        self._hold_chains: list[int] = []
        self.syns_held = 0
        self.syns_answered = 0

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
                        (lambda: _HandOver(self)) if self.faithful else self._transparent_relay,
                        host,
                        self.config.listen_port,
                        reuse_address=True,
                        backlog=LISTEN_BACKLOG,
                    )
                    self._servers.append(server)
                self._install_nft()
                if self.faithful:
                    self._start_holding(loop)
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
        self._stop_holding()
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

    def _start_holding(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the queue first (until then the rules' bypass lets SYNs through), then the
        raw sockets that answer refused SYNs, then the rules."""
        try:
            self._queue = NfQueue(self.config.listen_port)
        except NfQueueError as exc:
            raise InterceptionError(str(exc)) from None
        loop.add_reader(self._queue.fileno(), self._on_queued)
        for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            try:
                self._raw[version] = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            except OSError as exc:
                raise InterceptionError(
                    f"cannot open a raw IPv{version} socket ({exc.strerror}): run the client as"
                    ' root, or use stream.connect = "early"'
                ) from None
        for version, commands in hold_rules(self.config, self.hold_chain).items():
            self._remove_hold_chain(version)  # left by a crashed run
            self._hold_chains.append(version)
            for command in commands:
                result = _iptables(version, command)
                if result.returncode != 0:
                    raise InterceptionError(
                        f"iptables refused the SYN-holding rule ({result.stderr.strip()}): run"
                        " the client as root on a kernel with the xtables NFQUEUE target, or use"
                        ' stream.connect = "early"'
                    )

    def _remove_hold_chain(self, version: int) -> None:
        for command in (["-D", "OUTPUT", "-j", self.hold_chain], ["-F", self.hold_chain],
                        ["-X", self.hold_chain]):  # fmt: skip
            _iptables(version, ["-t", "mangle", *command])

    def _stop_holding(self) -> None:
        for version in self._hold_chains:
            self._remove_hold_chain(version)
        self._hold_chains = []
        for held in list(self._held.values()):
            self._give_up(held, "the stream client stopped")
        if self._queue is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._queue.fileno())
            self._queue.close()  # the kernel drops what is still queued
            self._queue = None
        for raw in self._raw.values():
            raw.close()
        self._raw = {}

    def _on_queued(self) -> None:
        queue = self._queue
        if queue is None:
            return
        for queued in queue.read():
            self._hold(queue, queued)

    def _hold(self, queue: NfQueue, queued: QueuedPacket) -> None:
        syn = parse_syn(queued.payload)
        if syn is None:
            queue.verdict(queued.packet_id, True)
            return
        held = self._held.get(syn.flow)
        if held is not None:
            # the application retransmitted its SYN: still waiting -> drop it; answered -> let
            # it through (the first one may have been lost on the way to the listener)
            queue.verdict(queued.packet_id, held.state is _HoldState.RELEASED)
            return
        current = self.current()
        if current is None or len(self._held) >= MAX_HELD:
            self.refused_no_connection += current is None
            queue.verdict(queued.packet_id, False)
            self._answer(syn, tcp_reset_for(syn))
            return
        conn, transmit = current
        try:
            sid = conn.open_tcp_stream(syn.destination, syn.destination_port)
        except ValueError:  # a destination the draft forbids (loopback, multicast...)
            queue.verdict(queued.packet_id, False)
            self._answer(syn, tcp_reset_for(syn))
            return
        relay = TcpRelay(self.hub, self.config.window)
        relay.attach(conn, sid, transmit)
        held = _Held(syn, queued.packet_id, relay)
        held.expiry = asyncio.get_running_loop().call_later(
            HOLD_TIMEOUT, self._give_up, held, "no answer or no accept in time"
        )
        self._held[syn.flow] = held
        self._held_streams[relay.key] = syn.flow
        self.syns_held += 1
        transmit()

    def _forget(self, held: _Held) -> None:
        if self._held.get(held.syn.flow) is held:
            del self._held[held.syn.flow]
        self._held_streams.pop(held.relay.key, None)
        if held.expiry is not None:
            held.expiry.cancel()

    def _give_up(self, held: _Held, reason: str) -> None:
        self._forget(held)
        if held.state is _HoldState.PENDING and self._queue is not None:
            self._queue.verdict(held.packet_id, False)
            self._answer(held.syn, tcp_reset_for(held.syn))
        held.relay.abort(reason)

    def _answer(self, syn: Syn, packet: bytes) -> None:
        """Send the application the network's answer to its (dropped) SYN."""
        raw = self._raw.get(4 if isinstance(syn.source, IPv4Address) else 6)
        if raw is None:
            return
        with contextlib.suppress(OSError):
            raw.sendto(packet, (str(syn.source), 0))
            self.syns_answered += 1

    def _released(self, key: tuple[int, int]) -> bool:
        """TCP Connect OK for a held SYN: let it go on to the redirect and our listener."""
        flow = self._held_streams.pop(key, None)
        held = self._held.get(flow) if flow is not None else None
        if held is None or self._queue is None:
            return False
        held.state = _HoldState.RELEASED
        self._queue.verdict(held.packet_id, True)
        return True

    def _refused(self, key: tuple[int, int], code: int, payload: bytes) -> bool:
        """An Error TLV for a held SYN: drop it and answer the application."""
        flow = self._held_streams.get(key)
        held = self._held.get(flow) if flow is not None else None
        if held is None or self._queue is None:
            return False
        self._forget(held)
        self._queue.verdict(held.packet_id, False)
        answer = None
        if code == StreamErrorCode.ICMP_PACKET_RECEIVED:
            answer = unreachable_for(held.syn, payload)
        self._answer(held.syn, answer if answer is not None else tcp_reset_for(held.syn))
        held.relay.abort(f"the concentrator could not connect (Error TLV code {code})")
        return True

    def _accepted(self, transport: asyncio.BaseTransport) -> None:
        """A faithful connection reached our listener: the relay holding its stream takes
        the socket; one nobody held (queue bypassed) goes the early way."""
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        destination = original_destination(sock) if sock is not None else None
        held = None
        if destination is not None and peer is not None:
            flow = (ip_address(peer[0]), peer[1], *destination)
            held = self._held.get(flow)
        if held is None or held.state is not _HoldState.RELEASED:
            relay = self._transparent_relay()
            transport.set_protocol(relay)
            relay.connection_made(transport)
            return
        self._forget(held)
        relay = held.relay
        transport.set_protocol(relay)
        relay.connection_made(transport)
        relay.open(TcpEvent.SYN_RECEIVED)

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
            else:
                self._released((id(conn), sid))
            return True
        if isinstance(event, TcpConnectFailed):
            self.connect_failed += 1
            log.info("tcp connect failed stream=%d code=%s", sid, event.code)
            if self._refused((id(conn), sid), event.code, event.payload):
                return True
            if isinstance(relay, _SocksRelay):
                relay.refuse(reply_for_error(event.code))
            elif relay is not None:
                relay.abort(f"the concentrator could not connect (Error TLV code {event.code})")
            return True
        if isinstance(event, StreamDataReceived):
            if relay is not None:
                if relay.opened:
                    relay.on_stream_data(event.data, event.end)
                else:  # a held SYN's, or an inbound stream still connecting
                    relay.on_buffered(event.data, event.end)
            return True
        if isinstance(event, StreamReset | StopSendingReceived):
            if relay is not None:
                relay.on_stream_abort(
                    StreamEvent.RESET_STREAM_RECEIVED
                    if isinstance(event, StreamReset)
                    else StreamEvent.STOP_SENDING_RECEIVED
                )
            self._stream_ended((id(conn), sid), "the stream was reset")
            return True
        if isinstance(event, StreamRejected):
            if relay is not None:
                relay.abort(event.reason)
            self._stream_ended((id(conn), sid), event.reason)
            return True
        return False

    def _stream_ended(self, key: tuple[int, int], reason: str) -> None:
        """A held SYN whose stream ended: still pending, the application gets its RST now,
        not after HOLD_TIMEOUT; released, the socket's accept hands it to the finished relay,
        which resets it (TcpRelay.connection_made)."""
        flow = self._held_streams.get(key)
        held = self._held.get(flow) if flow is not None else None
        if held is not None and held.state is _HoldState.PENDING:
            self._give_up(held, reason)

    def connection_closed(self, conn: TunnelConnection) -> None:
        for held in [h for h in self._held.values() if h.relay.conn is conn]:
            self._give_up(held, "the QUIC connection closed")
        for relay in [r for r in self.hub.relays.values() if r.conn is conn]:
            relay.abort("the QUIC connection closed")

    def stats(self) -> dict[str, int]:
        return {
            **self.hub.counters.as_dict(),
            "active": len(self.hub.relays),
            "refused_no_connection": self.refused_no_connection,
            "refused_not_redirected": self.refused_not_redirected,
            "connect_failed": self.connect_failed,
            "syns_held": self.syns_held,
            "syns_answered": self.syns_answered,
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
        if relay.finished:
            return  # the application closed while its host name was resolved: open nothing
        refusal = self._open(relay, host, request.port)
        if refusal is not None:
            log.info("socks connect refused reason=%s", refusal)
            relay.refuse(Reply.GENERAL_FAILURE)
