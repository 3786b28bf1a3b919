"""`qtun concentrator`: accepts authenticated tunnel clients and forwards their packets.

What happens to a connection (tunnel draft §tunnel mode, tunnel-session draft §4.1):
1. The QUIC handshake offers the ALPNs of every mode; a client that negotiates one of a mode
   this concentrator does not run (`modes`) is closed with a reason naming the configured ones
   (aioquic itself closes a client that offers no tunnel ALPN at all: "No common ALPN
   protocols"). Both count as refused "mode".
2. At HandshakeCompleted the client certificate is verified (tunnel/policy/client_auth.py: aioquic's
   server never checks it) and its Common Name must have a `[[client]]` entry or a `[pool]`
   must exist; otherwise CONNECTION_CLOSE with the reason, refused "auth". Too many clients
   (`max_clients`) or connections of one client (`max_connections_per_client`): refused "limit".
3. Tunnel mode: one connection per client; a new one replaces the old (a restarted client does
   not wait for the idle timeout). Session mode: the connection sends New Session or Join
   Session on its control stream (SessionTable; an unknown or foreign Session ID is reset with
   UNKNOWN_SESSION_ID) and joins the client's TunnelSession, which picks a connection per packet
   (the configured scheduler) and reorders by Packet Tag. A New Session from a client that has
   one replaces the old session. A memberless session is kept `session_idle_expiry` seconds.
4. Access Reports (tunnel draft §6) switch an access off/on in the session at once. Which
   connection runs over which access is not signalled by the drafts, so it is inferred from the
   reports (tunnel/session/access_mapping.py: an AVAILABLE report for X on a connection of unknown
   access names X as its access and replaces an older connection on X, which the client must
   have lost; an UNAVAILABLE one names the other access). Until then a connection's access is
   unknown and the scheduler treats it as always available.

Forwarding (tunnel/policy/addresses.py has the address rules): packets read from the TUN go to the
client owning the destination; too big for its connection -> ICMP frag-needed / Packet Too Big
written back into the TUN from the destination's address (tunnel/wire/icmp.py explains why not from
ours). Packets from a client pass its ingress filter (RFC 2827, tunnel/policy/ingress.py) and its
rate limit, then go into the TUN; the kernel routes them on (ip_forward must be on).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import os
import secrets
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import IO, Any, Final, Protocol

from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress

from tunnel.aio.nat import Masquerade, NatError
from tunnel.aio.netlink_watch import NetlinkWatch, local_address_watch
from tunnel.aio.status import StatusWriter, open_private
from tunnel.aio.tun import TunDevice, TunError
from tunnel.aio.udp import EndpointError, QuicDriver, QuicServer, UdpEndpoint, run
from tunnel.config import ConcentratorConfig, ConfigError
from tunnel.policy.address_validation import AdmissionLimits, RetryPolicy
from tunnel.policy.addresses import AddressTable, Claim, is_link_scoped_ipv6
from tunnel.policy.client_auth import Admission, ClientAuthError, ClientVerifier, RevocationList
from tunnel.policy.host_guard import HostGuard
from tunnel.policy.ingress import IngressFilter
from tunnel.policy.log_budget import LogBudget
from tunnel.policy.rate_limit import TokenBucket
from tunnel.protocol.connection import (
    AccessReportReceived,
    ConnectionClosed,
    JoinRequested,
    ModeNegotiated,
    PacketReceived,
    SendResult,
    SendStatus,
    SessionRequested,
    TunnelConnection,
    TunnelEvent,
)
from tunnel.protocol.quic_ext import (
    TunnelQuicConnection,
    packet_datagram_budget,
    peer_certificate,
)
from tunnel.protocol.stateless_reset import reset_key_from_secret
from tunnel.session.access_mapping import infer_access
from tunnel.session.multipath import TunnelSession
from tunnel.session.reorder import ReorderBuffer
from tunnel.session.scheduler import make_scheduler
from tunnel.session.table import JoinError, SessionTable
from tunnel.user_error import RuntimeFailure
from tunnel.wire.datagram import SESSION_HEADER_SIZE
from tunnel.wire.errors import ControlErrorCode, DatagramError
from tunnel.wire.icmp import (
    MalformedPacketError,
    destination_address,
    packet_too_big,
    source_address,
)
from tunnel.wire.messages import AccessId, AccessSignal
from tunnel.wire.modes import ALPN_SESSION, ALPN_TUNNEL, TunnelMode

log = logging.getLogger("qtun.concentrator")

MAX_DATAGRAM_SIZE: Final = 1452
"""UDP payload of our QUIC packets: 1500-byte Ethernet MTU minus IPv6 (40) and UDP (8)
headers, so one tunnel packet never needs IP fragmentation outside over IPv4 or IPv6."""
CONNECTION_ID_LENGTH: Final = 8  # aioquic's default, used for the datagram budget
MAX_DATAGRAM_FRAME_SIZE: Final = 65535
HANDSHAKE_MARGIN: Final = 64  # connections beyond the limits that may still be refused politely
AUTH_FAILED_REASON: Final = (
    "client authentication failed: check the client's certificate, and the concentrator's log "
    "for why"
)
"""The only close reason an unauthenticated peer gets: the details (which name, which CA,
revoked or not) are for the operator's log, not for a stranger probing the concentrator."""
CRYPTO_ERROR_NO_APPLICATION_PROTOCOL: Final = 0x100 + 120  # RFC 9001 §4.8, TLS alert 120
ACCESS_NAMES: Final = {AccessId.NON_THREE_GPP: "wifi", AccessId.THREE_GPP: "5g"}
IP_FORWARD_SYSCTLS: Final = {
    "ipv4": Path("/proc/sys/net/ipv4/ip_forward"),
    "ipv6": Path("/proc/sys/net/ipv6/conf/all/forwarding"),
}

MODE_ALPNS: Final = {TunnelMode.TUNNEL: ALPN_TUNNEL, TunnelMode.SESSION: ALPN_SESSION}


class StreamHandler(Protocol):
    """tunnel.aio.stream_server.StreamServer as the concentrator uses it (README "Stream mode")."""

    def quic_options(self) -> dict[str, Any]: ...

    def handle(
        self, conn: TunnelConnection, event: TunnelEvent, transmit: Callable[[], None]
    ) -> bool: ...

    def connection_closed(self, conn: TunnelConnection) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


class _PeerQuicConnection(TunnelQuicConnection):
    """Remembers the address the last datagram came from (the client's current path, also
    after a migration), for the status file and the logs."""

    peer_address: NetworkAddress | None = None

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self.peer_address = addr
        super().receive_datagram(data, addr, now)


@dataclass(eq=False)
class Peer:
    """One QUIC connection of the concentrator."""

    driver: QuicDriver
    tunnel: TunnelConnection
    client: Client | None = None  # set once authenticated
    access_id: AccessId | None = None
    handshake_done: bool = False
    mode_refusal: str | None = None  # why its negotiated mode is refused (at handshake end)

    @property
    def address(self) -> str:
        quic = self.driver.quic
        addr = quic.peer_address if isinstance(quic, _PeerQuicConnection) else None
        if addr is None:
            return "?"
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


@dataclass(eq=False)
class Client:
    """An authenticated client (its certificate's Common Name) and its connections."""

    name: str
    mode: TunnelMode
    ingress: IngressFilter
    peers: list[Peer] = field(default_factory=list)
    session: TunnelSession | None = None
    reorder_timer: asyncio.TimerHandle | None = None
    bucket_in: TokenBucket | None = None  # client -> TUN
    bucket_out: TokenBucket | None = None  # TUN -> client
    reports: TokenBucket | None = None  # Access Reports acted on (one token each)
    reorder_at: float | None = None  # deadline of reorder_timer (uvloop Handles have no when())
    counters: Counter[str] = field(default_factory=Counter)


class Concentrator:
    """The running concentrator (see the module docstring). `start()`, then `stop()`."""

    def __init__(self, config: ConcentratorConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.loop = asyncio.get_running_loop()
        self.state = "starting"
        self.tun: TunDevice | None = None
        self.server: QuicServer | None = None
        self.peers: dict[TunnelConnection, Peer] = {}
        self.clients: dict[str, Client] = {}
        self.refused: Counter[str] = Counter({"auth": 0, "limit": 0, "mode": 0})
        self.counters: Counter[str] = Counter({"internal_errors": 0})
        self.table = AddressTable(
            {c.name: c.addresses for c in config.clients},
            config.pool.ipv4,
            config.pool.ipv6,
            reserved=[a.ip for a in config.tun.addresses],
        )
        self.sessions: SessionTable[Peer] = SessionTable(
            secrets.token_bytes,
            idle_expiry=self.limits.session_idle_expiry,
            max_sessions=self.limits.max_sessions or self.limits.max_clients,
        )
        self.session_owner: dict[bytes, str] = {}
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.verifier = _load_verifier(config.tls.ca, config.tls.crl)
        self._crl_problem: str | None = None
        self.admission = Admission(frozenset(c.name for c in config.clients), config.pool.admit)
        self.host_guard = HostGuard(config.to_concentrator, ())
        self._address_watch: NetlinkWatch[Any] | None = None
        # Lines a peer can cause at will (reports, refusals) are rate-limited per client.
        self.log_budget = LogBudget()
        self.ip_forward = read_ip_forward()
        self.stream_server: StreamHandler | None = _make_stream_server(config, self._client_name_of)
        self.status = StatusWriter(
            config.observability.status_file,
            self.snapshot,
            config.observability.status_interval,
        )
        self._keylog: IO[str] | None = None
        self.nat: Masquerade | None = None
        self._stopped = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        mtu = config.tun.mtu or auto_tun_mtu(config.modes)
        routes = [str(p) for p in config.tun.routes]
        covered = [a.network for a in config.tun.addresses]
        routes += [
            str(p)
            for p in self.table.routed_prefixes()
            if not any(p.version == n.version and p.subnet_of(n) for n in covered)  # type: ignore[arg-type]
        ]
        try:
            self.tun = TunDevice.create(
                config.tun.name, mtu=mtu, addresses=config.tun.addresses, routes=routes
            )
        except TunError as exc:
            raise RuntimeFailure(str(exc)) from None
        if config.nat:
            try:
                self.nat = Masquerade.install(
                    config.tun.name, self.table.routed_prefixes(), config.nat_exclude
                )
            except NatError as exc:
                raise RuntimeFailure(str(exc)) from None
            log.info(
                "nat on table=%s exclude=%s",
                self.nat.table,
                ",".join(map(str, config.nat_exclude)) or "none",
            )
        if config.to_concentrator != "allow":
            self._address_watch = local_address_watch(self.host_guard.update)
            try:
                await self._address_watch.start()
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot follow this host's addresses over netlink ({exc.strerror}): run "
                    'the concentrator as root, or set to_concentrator = "allow"'
                ) from None
        quic_config = self._quic_configuration()
        reset_key = _reset_key(config.tls.key)
        factory_kwargs: dict[str, Any] = {
            "request_client_certificate": True,
            "reset_key": reset_key,
        }
        if self.stream_server is not None:
            factory_kwargs.update(self.stream_server.quic_options())
        factory = functools.partial(_PeerQuicConnection, **factory_kwargs)
        # The server's own cap bounds the state a handshake flood can create; above the
        # accepted maximum by a margin, so that connections over a limit are still read and get
        # a CONNECTION_CLOSE with the reason instead of silence.
        max_connections = (
            self.limits.max_clients * self.limits.max_connections_per_client + HANDSHAKE_MARGIN
        )
        endpoints: list[UdpEndpoint] = []
        try:
            for address in config.listen_addresses:
                endpoint = UdpEndpoint.bind(str(address), config.port)
                endpoints.append(endpoint)
                warning = endpoint.buffers.warning()
                if warning:
                    log.warning(warning)
        except EndpointError as exc:
            for endpoint in endpoints:
                endpoint.close()
            raise RuntimeFailure(str(exc)) from None
        limits = self.limits
        # One server for every listen address: one connection table, so a connection ID seen
        # on the wire and sent to another address is never answered with its reset token
        # (RFC 9000 §21.11).
        self.server = QuicServer(
            endpoints,
            quic_config,
            self._on_connection,
            max_connections=max_connections,
            create_connection=factory,
            reset_key=reset_key,
            admission=AdmissionLimits(
                retry=RetryPolicy(limits.retry),
                retry_threshold=limits.retry_threshold,
                max_half_open=limits.max_half_open,
                handshake_timeout=limits.handshake_timeout,
            ),
            resets_per_second=limits.resets_per_second,
            resets_per_prefix_per_second=limits.resets_per_prefix_per_second,
        )
        self.server.start()
        self.tun.start_reading(self._on_tun_packets)
        self.state = "up"
        listen = ",".join(f"{a}:{config.port}" for a in config.listen_addresses)
        log.info(
            "up listen=%s tun=%s mtu=%d modes=%s clients=%d pool=%s",
            listen,
            self.tun.name,
            mtu,
            ",".join(m.value for m in config.modes),
            len(config.clients),
            ",".join(str(p) for p in (config.pool.ipv4, config.pool.ipv6) if p) or "none",
        )
        for family, on in self.ip_forward.items():
            if on is False:
                log.warning(
                    "forwarding is off family=%s: packets from clients reach only this host; "
                    "enable it with sysctl -w %s=1",
                    family,
                    "net.ipv4.ip_forward" if family == "ipv4" else "net.ipv6.conf.all.forwarding",
                )
        self.status.start()
        self.status.write()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        """Close every connection (CONNECTION_CLOSE), the TUN and the sockets (also what a
        failed start left behind)."""
        was_up = self.state == "up"
        if was_up:
            log.info("stopping connections=%d", len(self.peers))
        for peer in list(self.peers.values()):
            self._close_peer(peer, "the concentrator is shutting down")
        if self.stream_server is not None:
            self.stream_server.close()
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()
        for client in self.clients.values():
            if client.reorder_timer is not None:
                client.reorder_timer.cancel()
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
        if self._address_watch is not None:
            self._address_watch.close()
        if self.tun is not None:
            self.tun.close()
        if self.nat is not None:
            self.nat.remove()
        if self._keylog is not None:
            self._keylog.close()
        self.state = "stopped"
        await self.status.close()
        if was_up:
            log.info("stopped")

    def _quic_configuration(self) -> QuicConfiguration:
        config = self.config
        # Every tunnel ALPN is offered so that a client of a mode we do not run gets a close
        # reason naming ours (step 1 of the module docstring); configured ones come first,
        # aioquic's server picks by its own order.
        alpns = [a for mode in config.modes for a in MODE_ALPNS[mode]]
        alpns += [a for a in ALPN_TUNNEL + ALPN_SESSION if a not in alpns]
        quic_config = QuicConfiguration(
            is_client=False,
            alpn_protocols=alpns,
            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
            max_datagram_size=MAX_DATAGRAM_SIZE,
            idle_timeout=self.limits.idle_timeout,
            congestion_control_algorithm=self.limits.congestion_control,
        )
        try:
            quic_config.load_cert_chain(config.tls.cert, config.tls.key)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"tls.cert {config.tls.cert} / tls.key {config.tls.key} cannot be loaded "
                f"({exc}): give the concentrator certificate and key made by scripts/make-certs"
            ) from None
        observability = config.observability
        if observability.keylog_file is not None:
            self._keylog = open_private(observability.keylog_file)
            quic_config.secrets_log_file = self._keylog
        if observability.qlog_dir is not None:
            from tunnel.aio.qlog import BoundedQlogLogger

            observability.qlog_dir.mkdir(parents=True, exist_ok=True)
            quic_config.quic_logger = BoundedQlogLogger(observability.qlog_dir)
        return quic_config

    # -- connections -----------------------------------------------------------------------

    def _on_connection(self, driver: QuicDriver) -> None:
        tunnel = TunnelConnection(driver.quic, max_pending_datagrams=self.limits.max_datagram_queue)
        peer = Peer(driver, tunnel)
        self.peers[tunnel] = peer
        driver.on_event = functools.partial(self._on_quic_event, peer)

    def _on_quic_event(self, peer: Peer, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.HandshakeCompleted):
            peer.handshake_done = True
            self._authenticate(peer)
        elif isinstance(event, quic_events.ConnectionTerminated):
            self._on_terminated(peer, event)
        stream_server = self.stream_server
        for tunnel_event in peer.tunnel.handle_event(event):
            if (
                stream_server is not None
                and peer.tunnel.stream_mode
                and peer.client is not None
                and stream_server.handle(peer.tunnel, tunnel_event, peer.driver.transmit_soon)
            ):
                continue
            self._on_tunnel_event(peer, tunnel_event)

    def _on_tunnel_event(self, peer: Peer, event: TunnelEvent) -> None:
        client = peer.client
        if isinstance(event, PacketReceived):
            if client is None:
                self.counters["dropped_unauthenticated"] += 1
            elif client.mode is TunnelMode.TUNNEL:
                self._from_client(client, event.packet)
            elif client.session is None or peer.tunnel not in client.session.connections:
                client.counters["dropped_no_session"] += 1
            else:
                now = self.loop.time()
                for packet in client.session.on_packet(peer.tunnel, event, now):
                    self._from_client(client, packet)
                self._arm_reorder(client)
        elif isinstance(event, ModeNegotiated):
            self._check_mode(peer, event)
        elif isinstance(event, SessionRequested) and client is not None:
            self._new_session(peer, client, event.qos)
        elif isinstance(event, JoinRequested) and client is not None:
            self._join_session(peer, client, event.session_id)
        elif isinstance(event, AccessReportReceived) and client is not None:
            self._on_access_report(peer, client, event)
        elif isinstance(event, ConnectionClosed) and not event.by_peer:
            # Closed by us (a peer's rule violation, a refusal): stop using it at once rather
            # than after the draining period.
            log.info("connection closed peer=%s reason=%r", peer.address, event.reason)
            self._detach(peer)

    def _check_mode(self, peer: Peer, event: ModeNegotiated) -> None:
        modes = list(self.config.modes)
        if event.mode not in modes:
            names = ", ".join(m.value for m in self.config.modes)
            # Refused at HandshakeCompleted, not now: a close sent before 1-RTT keys exist
            # loses its reason phrase (RFC 9000 §10.2.3), and the client should read it.
            peer.mode_refusal = (
                f"{event.mode.value} mode (ALPN {event.alpn}) is not offered by this "
                f"concentrator: use {names} mode"
            )

    def _authenticate(self, peer: Peer) -> None:
        """At HandshakeCompleted, before the connection may carry anything: who is it, may it
        connect, is its mode served, is there room. Whatever goes wrong while checking the
        credentials ends in a refusal (README "Security"): the connection is closed at once,
        never left open unauthenticated."""
        if peer.tunnel.closed:
            return
        try:
            name = self._client_name(peer)
        except ClientAuthError as exc:
            self._refuse(peer, "auth", str(exc), AUTH_FAILED_REASON)
            return
        except Exception as exc:
            self._refuse(
                peer,
                "auth",
                f"the credentials could not be checked ({type(exc).__name__}: {exc})",
                AUTH_FAILED_REASON,
            )
            return
        if peer.mode_refusal is not None:
            self._refuse(peer, "mode", peer.mode_refusal)
            return
        mode = peer.tunnel.mode
        if mode is None:  # cannot happen: ALPN is negotiated before the handshake completes
            self._refuse(peer, "mode", "no tunnel mode was negotiated: offer ALPN qt or qt-session")
            return
        client = self.clients.get(name)
        if client is not None and (client.mode is TunnelMode.TUNNEL or client.mode is not mode):
            # Tunnel mode has one connection per client: the newer one wins (the old one
            # is most likely dead already, e.g. the client restarted).
            for old in list(client.peers):
                self._close_peer(old, f"replaced by a newer {mode.value}-mode connection")
            self._drop_session(client)
            client = self.clients.get(name)  # forgotten if that was its last connection
            if client is not None:
                client.mode = mode
        if client is None:
            if len(self.clients) >= self.limits.max_clients:
                self._refuse(
                    peer,
                    "limit",
                    f"the concentrator serves its maximum of {self.limits.max_clients} "
                    "clients: try again later",
                )
                return
            client = self._new_client(name, mode)
        live = [p for p in client.peers if not p.tunnel.closed]
        if len(live) >= self.limits.max_connections_per_client:
            self._refuse(
                peer,
                "limit",
                f"client {name!r} already has {len(live)} connections, the maximum: close one "
                "first",
            )
            return
        peer.client = client
        client.peers.append(peer)
        self.counters["connections_accepted"] += 1
        log.info(
            "client connected name=%s mode=%s peer=%s alpn=%s stream_mode=%s connections=%d",
            name,
            mode.value,
            peer.address,
            peer.tunnel.alpn,
            peer.tunnel.stream_mode,
            len(client.peers),
        )
        self.status.write()

    def _client_name_of(self, tunnel: TunnelConnection) -> str | None:
        """The authenticated client of a connection (stream mode's limits are per client)."""
        peer = self.peers.get(tunnel)
        return peer.client.name if peer is not None and peer.client is not None else None

    def _client_name(self, peer: Peer) -> str:
        """The authenticated name of the peer's certificate, admitted here; ClientAuthError
        (with the detailed reason, for the log) otherwise."""
        revocations = self.verifier.revocations
        if revocations is not None:
            self._note_crl(revocations.refresh())
        certificate, chain = peer_certificate(peer.driver.quic)
        name = self.verifier.verify(certificate, chain, datetime.datetime.now(datetime.UTC))
        if not self.admission.admits(name):
            raise ClientAuthError(
                f"client {name!r} is not served by this concentrator: add a [[client]] entry "
                "for it or a pattern matching it to [pool] admit"
            )
        return name

    def reload_crl(self) -> None:
        """SIGHUP: re-read the CRL file now, changed or not."""
        revocations = self.verifier.revocations
        if revocations is None:
            log.info("reload: no tls.crl configured")
            return
        problem = revocations.refresh(force=True)
        self._note_crl(problem)
        if problem is None:
            log.info(
                "crl loaded path=%s revoked=%d", revocations.path, len(revocations.revoked_serials)
            )

    def _note_crl(self, problem: str | None) -> None:
        if problem is not None and problem != self._crl_problem:
            log.warning("crl not reloaded: %s", problem)
        self._crl_problem = problem

    def _new_client(self, name: str, mode: TunnelMode) -> Client:
        client = Client(name, mode, IngressFilter(self.table.prefixes_of(name)))
        rate = self.limits.rate_limit_mbps
        now = self.loop.time()
        if rate is not None:
            client.bucket_in = TokenBucket.from_mbps(rate, now)
            client.bucket_out = TokenBucket.from_mbps(rate, now)
        per_second = self.limits.access_reports_per_second
        client.reports = TokenBucket(per_second, burst=2 * per_second, now=now)
        self.clients[name] = client
        return client

    def _refuse(self, peer: Peer, kind: str, reason: str, peer_reason: str | None = None) -> None:
        """Close the connection with `peer_reason` (default: `reason`) and log `reason`."""
        self.refused[kind] += 1
        self._log_limited(
            f"refused-{kind}",
            logging.WARNING,
            "refused kind=%s peer=%s reason=%r",
            kind,
            peer.address,
            reason,
        )
        peer.tunnel.close(peer_reason or reason)
        peer.driver.transmit_soon()

    def _log_limited(self, key: str, level: int, message: str, *args: object) -> None:
        """A log line a peer can cause at will: at most LogBudget's rate per key, and the next
        line after a pause says how many were suppressed."""
        suppressed = self.log_budget.allow(key, self.loop.time())
        if suppressed is None:
            return
        if suppressed:
            message += " suppressed_before=%d"
            args = (*args, suppressed)
        log.log(level, message, *args)

    def _close_peer(self, peer: Peer, reason: str) -> None:
        """Close one connection ourselves and detach it from its client at once."""
        if not peer.tunnel.closed:
            peer.tunnel.close(reason)
            peer.driver.transmit_soon()
        self._detach(peer)

    def _on_terminated(self, peer: Peer, event: quic_events.ConnectionTerminated) -> None:
        if not peer.handshake_done and event.error_code == CRYPTO_ERROR_NO_APPLICATION_PROTOCOL:
            self.refused["mode"] += 1
            log.warning("refused kind=mode peer=%s reason=%r", peer.address, event.reason_phrase)
        self.peers.pop(peer.tunnel, None)
        if peer.client is not None:
            log.info(
                "connection ended client=%s peer=%s error=%#x reason=%r",
                peer.client.name,
                peer.address,
                event.error_code,
                event.reason_phrase,
            )
        self._detach(peer)
        if self.stream_server is not None:
            self.stream_server.connection_closed(peer.tunnel)

    def _detach(self, peer: Peer) -> None:
        client = peer.client
        if client is None:
            return
        peer.client = None
        if peer in client.peers:
            client.peers.remove(peer)
        session = client.session
        if session is not None and peer.tunnel in session.connections:
            session.remove_connection(peer.tunnel)
        if self.sessions.leave(peer, self.loop.time()) is not None:
            self._arm_expiry()
        self._forget_if_gone(client)
        self.status.write()

    def _forget_if_gone(self, client: Client) -> None:
        if client.peers or client.session is not None:
            return
        if self.clients.get(client.name) is client:
            del self.clients[client.name]
            released = self.table.release(client.name)
            if client.reorder_timer is not None:
                client.reorder_timer.cancel()
            log.info(
                "client gone name=%s released=%s",
                client.name,
                ",".join(map(str, released)) or "none",
            )

    # -- sessions (tunnel-session draft §4.1, §6.1) ------------------------------------------

    def _new_session(self, peer: Peer, client: Client, qos: bytes) -> None:
        now = self.loop.time()
        if client.session is not None:
            # A client starts a new session only when it lost the old one (restart): the
            # old session's connections are stale.
            for old in [p for p in client.peers if p is not peer and self._in_session(p, client)]:
                self._close_peer(old, "replaced by a new session of the same client")
            self._drop_session(client)
        try:
            entry = self.sessions.create(peer, qos, now)
        except JoinError as exc:
            self._reject(peer, exc.code, str(exc))
            return
        reorder: ReorderBuffer[bytes] = ReorderBuffer.from_setting(self.limits.reorder_timeout)
        session = TunnelSession(
            make_scheduler(self.config.scheduler), reorder, session_id=entry.session_id
        )
        session.add_connection(peer.tunnel, peer.access_id)
        client.session = session
        self.session_owner[entry.session_id] = client.name
        peer.tunnel.accept_session(entry.session_id)
        log.info(
            "session created client=%s session=%s peer=%s",
            client.name,
            entry.session_id.hex(),
            peer.address,
        )
        self.status.write()

    def _join_session(self, peer: Peer, client: Client, session_id: bytes) -> None:
        now = self.loop.time()
        session = client.session
        # A Session ID of another client is as unknown to this one as a made-up one: joining
        # it would let this client send with the other's addresses.
        if (
            self.session_owner.get(session_id) != client.name
            or session is None
            or session.session_id != session_id
        ):
            self._reject(
                peer,
                ControlErrorCode.UNKNOWN_SESSION_ID,
                "the Session ID is not one of this client's sessions",
            )
            return
        try:
            self.sessions.join(session_id, peer, now)
        except JoinError as exc:
            self._reject(peer, exc.code, str(exc))
            return
        session.add_connection(peer.tunnel, peer.access_id)
        peer.tunnel.accept_session(session_id)
        log.info(
            "session joined client=%s session=%s peer=%s connections=%d",
            client.name,
            session_id.hex(),
            peer.address,
            len(session.connections),
        )
        self.status.write()

    def _reject(self, peer: Peer, code: ControlErrorCode, reason: str) -> None:
        peer.tunnel.reject_join(code)
        peer.driver.transmit_soon()
        log.warning("session refused peer=%s code=%s reason=%r", peer.address, code.name, reason)

    def _in_session(self, peer: Peer, client: Client) -> bool:
        return client.session is not None and peer.tunnel in client.session.connections

    def _drop_session(self, client: Client) -> None:
        session = client.session
        if session is None:
            return
        client.session = None
        if client.reorder_timer is not None:
            client.reorder_timer.cancel()
            client.reorder_timer = None
            client.reorder_at = None
        if session.session_id is not None:
            self.session_owner.pop(session.session_id, None)
            # Its client replaced it: free its slot in the table now, not after the expiry.
            self.sessions.discard(session.session_id)

    def _arm_expiry(self) -> None:
        when = self.sessions.next_expiry()
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
            self.expiry_timer = None
        if when is not None:
            self.expiry_timer = self.loop.call_at(when, self._expire_sessions)

    def _expire_sessions(self) -> None:
        self.expiry_timer = None
        for entry in self.sessions.expire(self.loop.time()):
            owner = self.session_owner.pop(entry.session_id, None)
            client = self.clients.get(owner) if owner is not None else None
            log.info("session expired client=%s session=%s", owner, entry.session_id.hex())
            session = client.session if client is not None else None
            if (
                client is not None
                and session is not None
                and session.session_id == entry.session_id
            ):
                client.session = None
                self._forget_if_gone(client)
        self._arm_expiry()
        self.status.write()

    def _on_access_report(self, peer: Peer, client: Client, event: AccessReportReceived) -> None:
        # Each report may switch paths, close replaced connections and rewrite the status:
        # beyond the client's budget they are ignored (and counted), so a flood costs the
        # concentrator one bucket check per report (README "Security").
        if client.reports is not None and not client.reports.allow(1, self.loop.time()):
            client.counters["access_reports_ignored"] += 1
            self.counters["access_reports_ignored"] += 1
            return
        available = event.signal is AccessSignal.AVAILABLE
        session = client.session
        if session is not None:
            self._learn_access(peer, client, session, event.access_id, available)
            session.set_available(event.access_id, available)
        self._log_limited(
            f"report-{client.name}",
            logging.INFO,
            "access report client=%s peer=%s access=%s signal=%s",
            client.name,
            peer.address,
            ACCESS_NAMES.get(event.access_id, str(int(event.access_id))),
            event.signal.name.lower(),
        )
        self.status.write()

    def _learn_access(
        self,
        peer: Peer,
        client: Client,
        session: TunnelSession,
        access: AccessId,
        available: bool,
    ) -> None:
        """Infer which access a connection runs over (tunnel/session/access_mapping.py) and act on
        it: record it in the session, close the connections it replaces."""
        members = {p: p.access_id for p in client.peers if p.tunnel in session.connections}
        inference = infer_access(members, peer, access, available)
        for old in inference.replaced:
            name = ACCESS_NAMES.get(access, str(int(access)))
            self._close_peer(old, f"replaced by a newer connection over the {name} access")
        for member, learned in inference.assign.items():
            self._set_access(member, session, learned)

    def _set_access(self, peer: Peer, session: TunnelSession, access: AccessId) -> None:
        peer.access_id = access
        session.remove_connection(peer.tunnel)
        session.add_connection(peer.tunnel, access)
        log.info("access learned peer=%s access=%s", peer.address, ACCESS_NAMES.get(access))

    def _arm_reorder(self, client: Client) -> None:
        # The deadline is kept on the client: under uvloop, call_at returns a plain Handle
        # without when() for deadlines under 0.5 ms away (DESIGN.md, "Known aioquic facts").
        session = client.session
        deadline = session.next_deadline() if session is not None else None
        if deadline == client.reorder_at and client.reorder_timer is not None:
            return
        if client.reorder_timer is not None:
            client.reorder_timer.cancel()
            client.reorder_timer = None
        client.reorder_at = deadline
        if deadline is not None:
            client.reorder_timer = self.loop.call_at(
                deadline, functools.partial(self._reorder_due, client)
            )

    def _reorder_due(self, client: Client) -> None:
        client.reorder_timer = None
        client.reorder_at = None
        if client.session is None:
            return
        for packet in client.session.poll(self.loop.time()):
            try:
                self._from_client(client, packet)
            except Exception as exc:
                self._internal_error(f"packet from client {client.name}", exc)
        self._arm_reorder(client)

    def _internal_error(self, where: str, exc: Exception) -> None:
        """A bug met while handling one packet: counted and logged (with its traceback, at
        most LogBudget's rate), and only that packet is lost."""
        self.counters["internal_errors"] += 1
        suppressed = self.log_budget.allow("internal-error", self.loop.time())
        if suppressed is not None:
            log.error("internal error in %s suppressed_before=%d", where, suppressed, exc_info=exc)

    # -- forwarding --------------------------------------------------------------------------

    def _from_client(self, client: Client, packet: bytes) -> None:
        """A packet a client sent: pool claim, ingress filter, rate limit, into the TUN."""
        if is_link_scoped_ipv6(packet):
            client.counters["dropped_link_scope"] += 1
            return
        if not self.table.is_static(client.name):
            self._claim_source(client, packet)
        if not client.ingress.accept(packet):
            # Per client while it is known, and in total (a script can read the total after
            # the client is gone).
            client.counters["ingress_dropped"] += 1
            self.counters["ingress_dropped"] += 1
            return
        if not self.host_guard.admits(packet):
            client.counters["to_concentrator_dropped"] += 1
            self.counters["to_concentrator_dropped"] += 1
            return
        bucket = client.bucket_in
        if bucket is not None and not bucket.allow(len(packet), self.loop.time()):
            client.counters["rate_limited_in"] += 1
            return
        assert self.tun is not None
        if self.tun.write(packet):
            client.counters["packets_from_client"] += 1
            client.counters["bytes_from_client"] += len(packet)
        else:
            client.counters["tun_write_dropped"] += 1

    def _claim_source(self, client: Client, packet: bytes) -> None:
        try:
            source = source_address(packet)
        except MalformedPacketError:
            return  # the ingress filter counts it
        result = self.table.claim(client.name, source)
        if result is Claim.CLAIMED:
            client.ingress.set_prefixes(self.table.prefixes_of(client.name))
            log.info("pool address claimed client=%s address=%s", client.name, source)
            self.status.write()
        elif result is Claim.TAKEN:
            client.counters["pool_address_taken"] += 1

    def _on_tun_packets(self, packets: list[bytes]) -> None:
        now = self.loop.time()
        touched: set[QuicDriver] = set()
        owner_of = self.table.owner_of_packet
        clients = self.clients
        for packet in packets:
            try:
                name = owner_of(packet)
            except Exception as exc:  # one bad packet must not cost the rest of the batch
                self._internal_error("tun packet", exc)
                continue
            client = clients.get(name) if name is not None else None
            if client is None:
                if name is not None:
                    self.counters["dropped_client_offline"] += 1
                elif is_link_scoped_ipv6(packet):  # our TUN's own router solicitations, MLD
                    self.counters["dropped_link_scope"] += 1
                else:
                    self.counters["dropped_no_route"] += 1
                continue
            bucket = client.bucket_out
            if bucket is not None and not bucket.allow(len(packet), now):
                client.counters["rate_limited_out"] += 1
                continue
            try:
                self._to_client(client, packet, now, touched)
            except Exception as exc:
                self._internal_error(f"packet to client {client.name}", exc)
        for driver in touched:
            driver.transmit()

    def _to_client(
        self, client: Client, packet: bytes, now: float, touched: set[QuicDriver]
    ) -> None:
        tunnel: TunnelConnection | None
        try:
            if client.mode is TunnelMode.TUNNEL:
                tunnel = client.peers[0].tunnel if client.peers else None
                result: SendResult | None = (
                    tunnel.send_packet(packet) if tunnel is not None else None
                )
            elif client.session is None:
                tunnel, result = None, None
            else:
                sent = client.session.send_packet(packet, now)
                tunnel, result = sent.connection, sent.result
        except DatagramError:
            client.counters["dropped_not_ip"] += 1
            return
        if tunnel is None or result is None:
            client.counters["dropped_no_path"] += 1
            return
        peer = self.peers.get(tunnel)
        if peer is not None:
            touched.add(peer.driver)
        if result.status is SendStatus.SENT:
            client.counters["packets_to_client"] += 1
            client.counters["bytes_to_client"] += len(packet)
        elif result.status is SendStatus.TOO_BIG:
            self._packet_too_big(client, packet, result.max_packet_size)
        # QUEUE_FULL / NOT_READY: counted by the connection (its drops_* counters)

    def _packet_too_big(self, client: Client, packet: bytes, mtu: int) -> None:
        """Answer as a router whose next hop (the tunnel) has this MTU (tunnel/wire/icmp.py)."""
        try:
            destination = destination_address(packet)
            v4 = destination if isinstance(destination, IPv4Address) else None
            v6 = destination if isinstance(destination, IPv6Address) else None
            error = packet_too_big(packet, mtu, v4, v6)
        except MalformedPacketError:
            error = None
        assert self.tun is not None
        if error is not None and self.tun.write(error):
            client.counters["packet_too_big_sent"] += 1
            self.counters["packet_too_big_sent"] += 1
        else:
            client.counters["dropped_too_big"] += 1

    # -- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        tun = self.tun
        return {
            "role": "concentrator",
            "pid": os.getpid(),
            "time": datetime.datetime.now(datetime.UTC).timestamp(),
            "state": self.state,
            "modes": [m.value for m in self.config.modes],
            "listen": [f"{a}:{self.config.port}" for a in self.config.listen_addresses],
            "tun": {
                "name": self.config.tun.name,
                "mtu": tun.mtu if tun is not None else None,
                "rx_packets": tun.stats.packets_read if tun is not None else 0,
                "tx_packets": tun.stats.packets_written if tun is not None else 0,
                "write_drops": tun.stats.write_drops if tun is not None else 0,
            },
            "ip_forward": self.ip_forward,
            "nat": self.nat.table if self.nat is not None else None,
            "clients": [self._client_status(c) for c in self.clients.values()],
            "sessions": len(self.sessions),
            "connections": len(self.peers),
            "refused": dict(self.refused)
            | {"server_full": self.server.refused_connections if self.server else 0},
            "counters": dict(self.counters)
            | {
                "stateless_resets_sent": self.server.resets_sent if self.server else 0,
                "internal_errors": self.counters["internal_errors"]
                + (self.server.counters()["internal_errors"] if self.server else 0),
            },
            "server": self.server.counters() if self.server is not None else None,
            "stream": self.stream_server.stats() if self.stream_server is not None else None,
        }

    def _client_status(self, client: Client) -> dict[str, Any]:
        session = client.session
        status: dict[str, Any] = {
            "name": client.name,
            "mode": client.mode.value,
            "session_id": session.session_id.hex() if session and session.session_id else None,
            "addresses": [str(p) for p in self.table.prefixes_of(client.name)],
            "connections": [
                {
                    "access_id": ACCESS_NAMES.get(p.access_id) if p.access_id else None,
                    "peer": p.address,
                    "alpn": p.tunnel.alpn,
                    "stream_mode": p.tunnel.stream_mode,
                    "srtt_ms": None if p.tunnel.srtt is None else round(p.tunnel.srtt * 1000, 3),
                    "pending_datagrams": p.tunnel.pending_datagrams,
                    "cwnd_bytes": p.tunnel.congestion_window,
                    "ssthresh_bytes": p.tunnel.slow_start_threshold,
                    "bytes_in_flight": p.tunnel.bytes_in_flight,
                    "counters": p.tunnel.counters.as_dict(),
                }
                for p in client.peers
            ],
            "ingress": client.ingress.stats.as_dict(),
            "counters": dict(client.counters),
        }
        if session is not None:
            status["accesses_available"] = {
                name: session.is_available(access) for access, name in ACCESS_NAMES.items()
            }
            status["reorder"] = vars(session.reorder_stats).copy()
        return status


# -- helpers --------------------------------------------------------------------------------


def auto_tun_mtu(modes: tuple[TunnelMode, ...]) -> int:
    """The TUN MTU when `tun.mtu = "auto"`: the largest packet one DATAGRAM frame carries with
    our MAX_DATAGRAM_SIZE, less the session header when session mode is served (tunnel
    draft §tunnel mode: one packet per datagram, never fragmented)."""
    budget = packet_datagram_budget(MAX_DATAGRAM_SIZE, CONNECTION_ID_LENGTH)
    return budget - (SESSION_HEADER_SIZE if TunnelMode.SESSION in modes else 0)


def read_ip_forward() -> dict[str, bool | None]:
    """Whether this host (network namespace) forwards IPv4 / IPv6 (None: unknown)."""
    state: dict[str, bool | None] = {}
    for family, path in IP_FORWARD_SYSCTLS.items():
        try:
            state[family] = path.read_text().strip() != "0"
        except OSError:
            state[family] = None
    return state


def _reset_key(key_file: Path) -> bytes:
    """The stateless reset key (tunnel/protocol/stateless_reset.py), derived from the TLS private
    key so that a restarted concentrator sends the tokens the previous one announced."""
    try:
        return reset_key_from_secret(key_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tls.key {key_file} cannot be read ({exc}): give the concentrator key made by "
            "scripts/make-certs"
        ) from None


def _load_verifier(ca: Path, crl: Path | None = None) -> ClientVerifier:
    try:
        revocations = RevocationList(crl) if crl is not None else None
        return ClientVerifier(ca.read_bytes(), revocations)
    except OSError as exc:
        raise ConfigError(
            f"tls.ca {ca} cannot be read ({exc.strerror}): give the CA file that issued the "
            "client certificates"
        ) from None
    except ClientAuthError as exc:
        # the CRL's sentences name tls.crl themselves; the CA's do not
        where = "" if str(exc).startswith("tls.crl") else f"tls.ca {ca}: "
        raise ConfigError(f"{where}{exc}") from None


def _make_stream_server(
    config: ConcentratorConfig, client_of: Callable[[TunnelConnection], str | None]
) -> StreamHandler | None:
    if not config.stream.enabled:
        return None
    from tunnel.aio import stream_server  # type: ignore[attr-defined,unused-ignore]

    server: StreamHandler = stream_server.StreamServer(config.stream, client_of=client_of)
    return server


async def _serve(config: ConcentratorConfig) -> int:
    concentrator = Concentrator(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, concentrator.request_stop)
    loop.add_signal_handler(signal.SIGHUP, concentrator.reload_crl)
    try:
        try:
            await concentrator.start()
        except BaseException:
            await concentrator.stop()
            raise
        await concentrator.wait_stopped()
        await concentrator.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return 0


def run_concentrator(config: ConcentratorConfig) -> int:
    """Run until SIGINT/SIGTERM; 0 after a clean shutdown. Raises RuntimeFailure (exit 1) or
    ConfigError (exit 2) with one sentence for what a user must fix."""
    return run(_serve(config))


__all__ = ["Concentrator", "auto_tun_mtu", "read_ip_forward", "run_concentrator"]
