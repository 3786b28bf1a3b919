"""`qtun client`: the client program of the QUIC tunnel (tunnel mode and tunnel session mode).

What it does, from the configuration (tunnel/config.py ClientConfig):
- tunnel mode (tunnel draft §4, ALPN "qt"): one QUIC connection over the first usable
  [[access]] (or an unbound socket when none is configured). When that access fails, the
  connection moves to a socket bound to the next usable access (QUIC connection migration,
  RFC 9000 §9: same connection, new local address, new connection ID per §9.5). With
  `failback` (default on) it moves back when a more preferred access becomes usable again —
  its link came back up. An access that failed silently (the probe, link still up) is not
  tried again while the connection works elsewhere: nothing could tell it healed without a
  connection on it, and moving back onto a black hole would cost a probe timeout each time.
- session mode (tunnel-session draft §4.1, ALPN "qt-session"): one connection per access, each
  socket bound to its access; the first sends New Session, the others Join Session with the
  Session ID; a TunnelSession stamps Packet Tags, schedules and reorders. A connection that
  comes back rejoins; a rejoin refused with UNKNOWN_SESSION_ID (the concentrator restarted or
  the session expired) starts a New Session.
- the TUN device is created after the first handshake, with the MTU of the real datagram budget
  (unless configured); packets larger than the budget are answered with ICMP frag needed /
  Packet Too Big written back into the TUN, as a router would.
- access monitoring (tunnel/aio/access_monitor.py): netlink link/carrier/address state plus a
  QUIC PING liveness probe on every connection; a change updates the local scheduler at once
  and, unless `access_reports = false`, sends an Access Report (tunnel draft §6) over a live
  connection.
- reconnect with exponential backoff; status JSON; optional bounded qlog and TLS key log;
  SIGINT/SIGTERM close every connection (CONNECTION_CLOSE), remove the TUN, write state
  "stopped" and exit 0.
- stream mode (tunnel-tcp draft): when `[stream] enabled`, a StreamClient gets every event of a
  stream-mode connection first (StreamHook below).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_address,
    ip_network,
)
from typing import Any, Protocol, TextIO

from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration

from tunnel.aio.access_monitor import AccessMonitor, LinkState, LivenessProbe
from tunnel.aio.qlog import BoundedQlogLogger
from tunnel.aio.status import StatusWriter, open_private
from tunnel.aio.tun import TunDevice, TunError
from tunnel.aio.udp import EndpointError, QuicClient, QuicDriver, UdpEndpoint, run
from tunnel.config import AccessConfig, ClientConfig, TunConfig
from tunnel.protocol.connection import (
    ConnectionClosed,
    PacketReceived,
    SendResult,
    SendStatus,
    SessionEstablished,
    SessionJoinFailed,
    TunnelConnection,
    TunnelEvent,
)
from tunnel.protocol.quic_ext import TunnelQuicConnection
from tunnel.session.multipath import TunnelSession
from tunnel.session.reorder import ReorderBuffer
from tunnel.session.scheduler import FailoverScheduler, make_scheduler
from tunnel.user_error import RuntimeFailure
from tunnel.wire import icmp
from tunnel.wire.errors import ControlErrorCode, DatagramError
from tunnel.wire.messages import AccessId, AccessSignal
from tunnel.wire.modes import ALPN_SESSION, ALPN_TUNNEL, TunnelMode

log = logging.getLogger("qtun.client")

# UDP payload of 1452 bytes fits a 1500-byte path over IPv6 (1500 - 40 - 8) and IPv4; with it the
# tunnel-mode datagram budget is ~1420 bytes (measured 224-399 Mbit/s vs 1200, issue 4).
MAX_DATAGRAM_SIZE = 1452
MAX_DATAGRAM_FRAME_SIZE = 65535
CONNECT_TIMEOUT = 10.0  # seconds for a handshake (capped by limits.idle_timeout)
SESSION_TIMEOUT = 5.0  # seconds for the Session ID answer after New/Join Session
BACKOFF_START = 0.25  # seconds; doubled per failed attempt up to limits.reconnect_backoff_max
STABLE_AFTER = 5.0  # seconds a connection must live before the backoff starts over
PROBE_MISSES = 3  # unanswered PING intervals before an access counts as failed
DEAD_AFTER_MISSES = 10  # ...and before its connection is given up and remade
TUN_BATCH = 64
# RFC 7600 §2: the IPv4 dummy address, for ICMP errors from a node without a usable address.
IPV4_DUMMY = IPv4Address("192.0.0.8")
IPV6_LINK_LOCAL_ROUTER = IPv6Address("fe80::1")
ACCESS_KIND_NAMES = {AccessId.NON_THREE_GPP: "wifi", AccessId.THREE_GPP: "5g"}


class _StreamHandler(Protocol):
    """What the client needs of tunnel.aio.stream_client.StreamClient (README "Stream mode")."""

    async def start(self) -> None: ...

    def handle(
        self, conn: TunnelConnection, event: TunnelEvent, transmit: Callable[[], None]
    ) -> bool: ...

    def connection_closed(self, conn: TunnelConnection) -> None: ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


class JoinRefused(Exception):
    """The concentrator refused New/Join Session (RESET_STREAM code)."""

    def __init__(self, code: ControlErrorCode | int) -> None:
        super().__init__(f"session join refused with code {code!r}")
        self.code = code


# --- pure helpers ------------------------------------------------------------------------------


def icmp_sources(tun: TunConfig) -> tuple[IPv4Address | None, IPv6Address | None]:
    """Source addresses of the ICMP errors the client writes into its TUN.

    Linux drops an IPv4 packet arriving with one of its own addresses as source
    (tunnel/wire/icmp.py),
    and reverse-path filtering wants a source routed through the TUN: so the far end of the
    TUN's prefix when it has one, else the first address of a route into the tunnel, else the
    RFC 7600 dummy address (IPv4) / a link-local router address (IPv6)."""
    own = {iface.ip for iface in tun.addresses}
    found: dict[int, IPv4Address | IPv6Address] = {}
    for iface in tun.addresses:
        network = iface.network
        if network.num_addresses >= 4 and network[1] not in own:
            found.setdefault(iface.version, network[1])
    for route in tun.routes:
        if route.num_addresses < 2 or route.version in found:
            continue
        candidate = route[1]
        if candidate in own or candidate in _THIS_NETWORK or candidate.is_loopback:
            continue
        found.setdefault(route.version, candidate)
    v4 = found.get(4, IPV4_DUMMY)
    v6 = found.get(6, IPV6_LINK_LOCAL_ROUTER)
    has_v4 = any(isinstance(i, IPv4Interface) for i in tun.addresses)
    has_v6 = any(isinstance(i, IPv6Interface) for i in tun.addresses)
    assert isinstance(v4, IPv4Address) and isinstance(v6, IPv6Address)
    return (v4 if has_v4 else None, v6 if has_v6 else None)


_THIS_NETWORK = ip_network("0.0.0.0/8")


def backoff_delays(start: float, cap: float) -> Callable[[], float]:
    """A generator of reconnect delays: start, 2*start, 4*start, ... capped at `cap`."""
    state = {"next": start}

    def next_delay() -> float:
        delay = min(state["next"], cap)
        state["next"] = min(delay * 2, cap)
        return delay

    return next_delay


def access_kind(access_id: AccessId) -> str:
    return ACCESS_KIND_NAMES.get(access_id, str(int(access_id)))


# --- one QUIC connection -----------------------------------------------------------------------


@dataclass(eq=False)
class ClientPath:
    """One QUIC tunnel connection of the client, over one access network (or unbound)."""

    access: AccessConfig | None
    probe: LivenessProbe
    quic: TunnelQuicConnection | None = None
    tunnel: TunnelConnection | None = None
    client: QuicClient | None = None
    session_answer: asyncio.Future[bytes] | None = None
    established_at: float = 0.0
    joined: bool = False
    migrations: int = 0

    @property
    def name(self) -> str:
        return self.access.name if self.access is not None else "default"

    @property
    def endpoint(self) -> UdpEndpoint:
        assert self.client is not None
        return self.client.endpoint

    @property
    def closed(self) -> bool:
        return self.tunnel is None or self.tunnel.closed or self.client is None

    def transmit(self) -> None:
        if self.client is not None and not self.client.driver.closed:
            self.client.driver.transmit()


@dataclass
class AccessStatus:
    """What the client knows about one access network."""

    config: AccessConfig
    link: LinkState | None = None
    alive: bool = True  # the liveness probe of its connection (True while none runs)
    reported: bool | None = None  # last availability acted on (scheduler, report, migration)
    report_pending: bool = False  # its Access Report found no live connection yet
    counters: Counter[str] = field(default_factory=Counter)

    @property
    def available(self) -> bool:
        link_ok = self.link is None or self.link.usable
        return link_ok and self.alive


# --- the program -------------------------------------------------------------------------------


class Client:
    """The running client (see the module docstring). `main()` returns the exit code."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.mode = config.mode
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.changed = asyncio.Event()  # an access's availability changed
        self.state = "connecting"
        self.accesses = {a.name: AccessStatus(a) for a in config.accesses}
        self.monitor = AccessMonitor(config.accesses, self._on_link_change)
        self.tun: TunDevice | None = None
        self.icmp_v4, self.icmp_v6 = icmp_sources(config.tun)
        self.counters: Counter[str] = Counter()
        self.closed_totals: Counter[str] = Counter()
        self._tun_out: list[bytes] = []
        self._tun_flush_scheduled = False
        self._fatal: BaseException | None = None
        # tunnel mode
        self.path: ClientPath | None = None
        # session mode
        self.paths: dict[str, ClientPath] = {}
        self.session: TunnelSession | None = None
        self.session_id: bytes | None = None
        self._session_lock = asyncio.Lock()
        self._reorder_timer: asyncio.TimerHandle | None = None
        self._reorder_timer_at: float | None = None
        self._by_tunnel: dict[TunnelConnection, ClientPath] = {}
        self.status = StatusWriter(
            config.observability.status_file,
            self.snapshot,
            config.observability.status_interval,
        )
        self._keylog: TextIO | None = None
        self._qlog: BoundedQlogLogger | None = None
        stream_config = getattr(config, "stream", None)
        self.stream_enabled = bool(getattr(stream_config, "enabled", False))
        self.stream: _StreamHandler | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def main(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(signum, self._request_stop, signum)
        tasks: list[asyncio.Task[None]] = []
        try:
            self._open_observability()
            self.status.start()
            await self.monitor.start()
            if self.stream_enabled:
                await self._start_stream_client()
            log.info(
                "starting mode=%s concentrator=%s port=%d accesses=%s scheduler=%s "
                "access_reports=%s stream=%s",
                self.mode.value,
                self.config.concentrator_address,
                self.config.concentrator_port,
                ",".join(self.accesses) or "-",
                self.config.scheduler,
                self.config.access_reports,
                self.stream_enabled,
            )
            tasks.append(self.loop.create_task(self._probe_loop(), name="probe"))
            if self.mode is TunnelMode.TUNNEL:
                tasks.append(self.loop.create_task(self._tunnel_mode(), name="tunnel"))
            else:
                for name in self.accesses:
                    tasks.append(self.loop.create_task(self._session_access(name), name=name))
            await self.stopping.wait()
            if self._fatal is not None:
                raise self._fatal
            return 0
        finally:
            await self._shutdown(tasks)

    def _request_stop(self, signum: int | None = None) -> None:
        if not self.stopping.is_set():
            if signum is not None:
                log.info("stopping signal=%s", signal.Signals(signum).name)
            self.stopping.set()

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        self.stopping.set()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        paths = [p for p in [self.path, *self.paths.values()] if p is not None]
        await asyncio.gather(*(self._close_path(p, "client stopping") for p in paths))
        if self.stream is not None:
            with contextlib.suppress(Exception):
                await self.stream.close()
        self._flush_tun()
        if self.tun is not None:
            self.tun.close()
        self.monitor.close()
        if self._reorder_timer is not None:
            self._reorder_timer.cancel()
        self.state = "stopped"
        await self.status.close()
        if self._keylog is not None:
            self._keylog.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.loop.remove_signal_handler(signum)
        log.info("stopped")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("state %s -> %s", self.state, state)
            self.state = state
            self.status.write()

    def _open_observability(self) -> None:
        obs = self.config.observability
        if obs.keylog_file is not None:
            try:
                self._keylog = open_private(obs.keylog_file)
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot open observability.keylog_file {obs.keylog_file} "
                    f"({exc.strerror}): choose a writable path"
                ) from None
        if obs.qlog_dir is not None:
            try:
                obs.qlog_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot create observability.qlog_dir {obs.qlog_dir} ({exc.strerror}): "
                    "choose a writable directory"
                ) from None
            self._qlog = BoundedQlogLogger(obs.qlog_dir)

    async def _start_stream_client(self) -> None:
        from tunnel.aio.stream_client import StreamClient  # lands with the stream helper

        self.stream = StreamClient(self.config.stream, self._stream_current)
        try:
            await self.stream.start()
        except Exception as exc:
            self.stream = None
            raise RuntimeFailure(f"stream mode could not start: {exc}") from None

    def _stream_quic_options(self) -> dict[str, Any]:
        """TunnelQuicConnection keyword arguments: the stream client's (stream_mode, windows)
        when stream mode is on, else none."""
        if self.stream is None:
            return {}
        options = getattr(self.stream, "quic_options", None)
        return dict(options()) if callable(options) else {"stream_mode": True}

    def _stream_current(self) -> tuple[TunnelConnection, Callable[[], None]] | None:
        """The connection that carries new TCP streams now (README "Stream mode")."""
        candidates = [self.path] if self.mode is TunnelMode.TUNNEL else self._session_candidates()
        for path in candidates:
            if (
                path is not None
                and not path.closed
                and path.tunnel is not None
                and path.tunnel.stream_mode
            ):
                return path.tunnel, path.transmit
        return None

    def _session_candidates(self) -> list[ClientPath]:
        joined = [p for p in self.paths.values() if p.joined and not p.closed]
        return sorted(joined, key=lambda p: not self._access_available(p.access))

    # -- connecting ------------------------------------------------------------------------

    def _quic_configuration(self) -> QuicConfiguration:
        alpn = ALPN_TUNNEL if self.mode is TunnelMode.TUNNEL else ALPN_SESSION
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(alpn),
            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
            max_datagram_size=MAX_DATAGRAM_SIZE,
            idle_timeout=self.config.limits.idle_timeout,
            congestion_control_algorithm=self.config.limits.congestion_control,
            server_name=self.config.server_name,
            secrets_log_file=self._keylog,
            quic_logger=self._qlog,
        )
        tls = self.config.tls
        try:
            configuration.load_verify_locations(cafile=str(tls.ca))
            configuration.load_cert_chain(str(tls.cert), str(tls.key))
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise RuntimeFailure(
                f"cannot load the TLS files ({exc}): check tls.ca, tls.cert and tls.key or make "
                "new ones with scripts/make-certs"
            ) from None
        configuration.verify_mode = ssl.CERT_REQUIRED
        return configuration

    def _remote(self) -> tuple[str, int] | tuple[str, int, int, int]:
        address, port = self.config.concentrator_address, self.config.concentrator_port
        if isinstance(address, IPv6Address):
            # recvfrom on an AF_INET6 socket gives 4-tuples and aioquic compares addresses as
            # tuples: the same shape, or every packet would look like it came from a new path.
            return (str(address), port, 0, 0)
        return (str(address), port)

    def _bind(self, access: AccessConfig | None) -> UdpEndpoint:
        family = (
            socket.AF_INET6
            if isinstance(self.config.concentrator_address, IPv6Address)
            else socket.AF_INET
        )
        if access is None:
            return UdpEndpoint.bind(family=family)
        local = str(access.local_address) if access.local_address is not None else None
        if access.local_address is not None and (
            isinstance(access.local_address, IPv6Address) != (family == socket.AF_INET6)
        ):
            raise EndpointError(
                f"access {access.name!r} has local address {access.local_address} but the "
                f"concentrator address {self.config.concentrator_address} is of the other IP "
                "family: give addresses of one family"
            )
        return UdpEndpoint.bind(local, interface=access.interface, family=family)

    async def _open_path(self, access: AccessConfig | None) -> ClientPath:
        """Bind a socket to `access`, connect and wait for the handshake."""
        path = ClientPath(access, LivenessProbe(self.config.limits.probe_interval, PROBE_MISSES))
        endpoint = self._bind(access)

        def create(**kwargs: Any) -> TunnelQuicConnection:
            quic = TunnelQuicConnection(**self._stream_quic_options(), **kwargs)
            path.quic = quic
            path.tunnel = TunnelConnection(quic, self.config.limits.max_datagram_queue)
            self._by_tunnel[path.tunnel] = path
            return quic

        quic = create(configuration=self._quic_configuration())
        driver = QuicDriver(quic, endpoint, lambda event: self._on_quic_event(path, event))
        path.client = QuicClient(endpoint, driver)
        timeout = min(CONNECT_TIMEOUT, self.config.limits.idle_timeout)
        try:
            endpoint.start(driver.receive, TUN_BATCH)
            quic.connect(self._remote(), now=self.loop.time())
            driver.transmit()
            try:
                await asyncio.wait_for(driver.wait_connected(), timeout)
            except TimeoutError:
                raise ConnectionError(
                    f"no QUIC handshake with {self.config.concentrator_address} port "
                    f"{self.config.concentrator_port} within {timeout:g} s: check that the "
                    "concentrator runs and is reachable over this access"
                ) from None
        except BaseException:
            if not driver.closed:
                driver.close()
                # The handshake future fails later, when the close completes: collect that
                # outcome so asyncio does not log it as never retrieved.
                waiter = self.loop.create_task(driver.wait_connected())
                waiter.add_done_callback(lambda t: t.cancelled() or t.exception())
            endpoint.close()
            self._by_tunnel.pop(path.tunnel, None) if path.tunnel is not None else None
            raise
        assert path.tunnel is not None
        if path.tunnel.mode is None or path.tunnel.closed:
            reason = path.tunnel.close_reason or "no tunnel ALPN negotiated"
            await path.client.close()
            raise ConnectionError(f"the concentrator did not accept the tunnel: {reason}")
        path.established_at = self.loop.time()
        log.info(
            "connected access=%s local=%s alpn=%s stream_mode=%s max_packet=%d",
            path.name,
            _address_text(endpoint.local_address),
            path.tunnel.alpn,
            path.tunnel.stream_mode,
            path.tunnel.max_packet_size(),
        )
        return path

    async def _close_path(self, path: ClientPath, reason: str) -> None:
        if path.tunnel is not None:
            if not path.tunnel.closed:
                path.tunnel.close(reason, error_code=0)
            self._forget(path)
        if path.client is not None:
            await path.client.close()

    def _forget(self, path: ClientPath) -> None:
        """Account a closed path's counters and drop it from the lookup tables."""
        tunnel = path.tunnel
        if tunnel is None or tunnel not in self._by_tunnel:
            return
        del self._by_tunnel[tunnel]
        for key, value in tunnel.counters.as_dict().items():
            self.closed_totals[key] += value
        if self.session is not None and tunnel in self.session.connections:
            self.session.remove_connection(tunnel)
        if self.stream is not None and tunnel.stream_mode:
            self.stream.connection_closed(tunnel)

    async def _wait_closed_or_stop(self, path: ClientPath) -> None:
        assert path.client is not None
        closed = self.loop.create_task(path.client.driver.wait_closed())
        stop = self.loop.create_task(self.stopping.wait())
        try:
            await asyncio.wait({closed, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            stop.cancel()

    async def _sleep_or_stop(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)

    async def _wait_change_or_stop(self, timeout: float) -> None:
        self.changed.clear()
        change = self.loop.create_task(self.changed.wait())
        stop = self.loop.create_task(self.stopping.wait())
        try:
            await asyncio.wait({change, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            change.cancel()
            stop.cancel()

    def _ensure_tun(self, budget: int) -> None:
        if self.tun is not None:
            return
        tun_config = self.config.tun
        mtu = tun_config.mtu if tun_config.mtu is not None else budget
        try:
            self.tun = TunDevice.create(
                tun_config.name,
                mtu=mtu,
                addresses=tun_config.addresses,
                routes=[str(r) for r in tun_config.routes],
            )
        except TunError as exc:
            raise RuntimeFailure(str(exc)) from None
        self.tun.start_reading(self._on_tun_packets, TUN_BATCH)
        log.info(
            "tun up name=%s mtu=%d addresses=%s routes=%s",
            self.tun.name,
            mtu,
            ",".join(str(a) for a in tun_config.addresses),
            ",".join(str(r) for r in tun_config.routes) or "-",
        )

    # -- tunnel mode -----------------------------------------------------------------------

    def _first_available_access(self) -> AccessConfig | None:
        for status in self.accesses.values():
            if status.available:
                return status.config
        return None

    async def _tunnel_mode(self) -> None:
        try:
            await self._tunnel_mode_loop()
        except RuntimeFailure as exc:
            self._fail(exc)

    async def _tunnel_mode_loop(self) -> None:
        delays = backoff_delays(BACKOFF_START, self.config.limits.reconnect_backoff_max)
        while not self.stopping.is_set():
            access = self._first_available_access()
            if self.accesses and access is None:
                self._set_state("reconnecting" if self.state != "connecting" else "connecting")
                log.warning("no access available: waiting for one")
                await self._wait_change_or_stop(self.config.limits.probe_interval * 4)
                # with every access failed by the probe alone, try again anyway
                for status in self.accesses.values():
                    status.alive = True
                continue
            try:
                path = await self._open_path(access)
            except (ConnectionError, EndpointError, OSError) as exc:
                delay = delays()
                log.warning(
                    "connect failed access=%s retry_in=%.2fs error=%r",
                    access.name if access else "default",
                    delay,
                    str(exc),
                )
                self._set_state("reconnecting" if self.state != "connecting" else "connecting")
                await self._sleep_or_stop(delay)
                continue
            assert path.tunnel is not None
            self.path = path
            path.joined = True
            self._ensure_tun(path.tunnel.max_packet_size())
            self._send_pending_reports(path)
            self._set_state("up")
            await self._wait_closed_or_stop(path)
            if self.stopping.is_set():
                return
            self.path = None
            self._forget(path)
            await path.client.close() if path.client is not None else None
            lived = self.loop.time() - path.established_at
            if lived >= STABLE_AFTER:
                delays = backoff_delays(BACKOFF_START, self.config.limits.reconnect_backoff_max)
            delay = delays()
            log.warning(
                "connection lost access=%s reason=%r lived=%.1fs retry_in=%.2fs",
                path.name,
                path.tunnel.close_reason,
                lived,
                delay,
            )
            self._set_state("reconnecting")
            await self._sleep_or_stop(delay)

    def _migrate(self, path: ClientPath, target: AccessConfig) -> None:
        """Move the tunnel-mode connection to a socket bound to `target` (RFC 9000 §9)."""
        assert path.client is not None and path.quic is not None
        try:
            endpoint = self._bind(target)
        except EndpointError as exc:
            log.warning("migration failed target=%s error=%r", target.name, str(exc))
            return
        old_endpoint = path.client.endpoint
        driver = path.client.driver
        endpoint.start(driver.receive, TUN_BATCH)
        driver.endpoint = endpoint
        path.client.endpoint = endpoint
        source = path.name
        path.access = target
        path.migrations += 1
        path.probe.reset()
        self.counters["migrations"] += 1
        # RFC 9000 §9.5: a new path uses a new connection ID, so the two paths cannot be linked.
        path.quic.change_connection_id()
        # Something to send on the new path at once: the server validates it (PATH_CHALLENGE)
        # and moves its sending there when it sees a non-probing packet from the new address.
        uid = path.probe.next_uid()
        path.quic.send_ping(uid)
        path.probe.sent(uid, self.loop.time())
        driver.transmit()
        old_endpoint.close()
        log.info(
            "migrated from=%s to=%s local=%s",
            source,
            target.name,
            _address_text(endpoint.local_address),
        )
        self.status.write()

    # -- session mode ----------------------------------------------------------------------

    async def _session_access(self, name: str) -> None:
        try:
            await self._session_access_loop(name)
        except RuntimeFailure as exc:
            self._fail(exc)

    async def _session_access_loop(self, name: str) -> None:
        status = self.accesses[name]
        delays = backoff_delays(BACKOFF_START, self.config.limits.reconnect_backoff_max)
        while not self.stopping.is_set():
            if status.link is not None and not status.link.usable:
                await self._wait_change_or_stop(self.config.limits.probe_interval * 4)
                continue
            try:
                path = await self._open_path(status.config)
                await self._join(path)
            except JoinRefused as exc:
                delay = 0.0 if exc.code == ControlErrorCode.UNKNOWN_SESSION_ID else delays()
                log.warning("join refused access=%s code=%r retry_in=%.2fs", name, exc.code, delay)
                await self._sleep_or_stop(delay)
                continue
            except (ConnectionError, EndpointError, OSError, TimeoutError) as exc:
                delay = delays()
                log.warning(
                    "connect failed access=%s retry_in=%.2fs error=%r", name, delay, str(exc)
                )
                await self._sleep_or_stop(delay)
                continue
            status.alive = True
            self.paths[name] = path
            self._after_join(path)
            await self._wait_closed_or_stop(path)
            if self.stopping.is_set():
                return
            del self.paths[name]
            self._forget(path)
            if path.client is not None:
                await path.client.close()
            lived = self.loop.time() - path.established_at
            if lived >= STABLE_AFTER:
                delays = backoff_delays(BACKOFF_START, self.config.limits.reconnect_backoff_max)
            delay = delays()
            assert path.tunnel is not None
            log.warning(
                "connection lost access=%s reason=%r lived=%.1fs retry_in=%.2fs",
                name,
                path.tunnel.close_reason,
                lived,
                delay,
            )
            if not any(not p.closed for p in self.paths.values()):
                self._set_state("reconnecting")
            self._update_access(name)
            await self._sleep_or_stop(delay)

    async def _join(self, path: ClientPath) -> None:
        """New Session on the first connection, Join Session on the others (draft §4.1)."""
        assert path.tunnel is not None
        async with self._session_lock:
            path.session_answer = self.loop.create_future()
            joining = self.session_id
            if joining is None:
                path.tunnel.request_new_session()
            else:
                path.tunnel.join_session(joining)
            path.transmit()
            try:
                session_id = await asyncio.wait_for(
                    asyncio.shield(path.session_answer), SESSION_TIMEOUT
                )
            except JoinRefused as exc:
                await self._close_path(path, "session join refused")
                if joining is not None and exc.code == ControlErrorCode.UNKNOWN_SESSION_ID:
                    self._forget_session(f"rejoin refused access={path.name}")
                raise
            except BaseException:
                await self._close_path(path, "no session answer")
                raise
            if joining is None:
                self._new_session(session_id)
            assert self.session is not None
            path.joined = True
            self.session.add_connection(path.tunnel, self._access_id(path))
            log.info(
                "%s access=%s session_id=%s",
                "session created" if joining is None else "session joined",
                path.name,
                session_id.hex(),
            )

    def _access_id(self, path: ClientPath) -> AccessId | None:
        return path.access.access_id if path.access is not None else None

    def _new_session(self, session_id: bytes) -> None:
        if self.session is not None:
            self._deliver(self.session.flush())
        scheduler = make_scheduler(self.config.scheduler)
        reorder: ReorderBuffer[bytes] = ReorderBuffer.from_setting(
            self.config.limits.reorder_timeout
        )
        self.session = TunnelSession(scheduler, reorder, session_id=session_id)
        self.session_id = session_id
        for status in self.accesses.values():
            self.session.set_available(status.config.access_id, status.available)

    def _forget_session(self, why: str) -> None:
        log.warning("session forgotten session_id=%s %s", _hex(self.session_id), why)
        self.session_id = None
        for path in list(self.paths.values()):
            if path.tunnel is not None and not path.tunnel.closed:
                path.tunnel.close("starting a new session", error_code=0)
                path.transmit()

    def _after_join(self, path: ClientPath) -> None:
        assert self.session is not None and path.tunnel is not None
        self._ensure_tun(self.session.max_packet_size())
        if (
            self.config.access_reports
            and path.access is not None
            and self._access_available(path.access)
        ):
            # The drafts do not say which access a connection runs over; an AVAILABLE report
            # for its own access on a fresh connection tells the concentrator (its scheduler
            # can then follow later reports about that access).
            path.tunnel.send_access_report(path.access.access_id, AccessSignal.AVAILABLE)
            path.transmit()
        self._send_pending_reports(path)
        self._set_state("up")

    # -- events from the network -----------------------------------------------------------

    def _on_quic_event(self, path: ClientPath, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.PingAcknowledged):
            path.probe.acked(event.uid, self.loop.time())
            if path.access is not None and not self.accesses[path.access.name].alive:
                self._update_access(path.access.name)
            return
        tunnel = path.tunnel
        if tunnel is None:
            return
        for tevent in tunnel.handle_event(event):
            if (
                self.stream is not None
                and tunnel.stream_mode
                and self.stream.handle(tunnel, tevent, path.transmit)
            ):
                continue
            if isinstance(tevent, PacketReceived):
                self._on_packet(path, tunnel, tevent)
            elif isinstance(tevent, SessionEstablished):
                if path.session_answer is not None and not path.session_answer.done():
                    path.session_answer.set_result(tevent.session_id)
            elif isinstance(tevent, SessionJoinFailed):
                if path.session_answer is not None and not path.session_answer.done():
                    path.session_answer.set_exception(JoinRefused(tevent.code))
            elif isinstance(tevent, ConnectionClosed):
                log.info(
                    "connection closed access=%s by_peer=%s code=%#x reason=%r",
                    path.name,
                    tevent.by_peer,
                    tevent.error_code,
                    tevent.reason,
                )
                if path.session_answer is not None and not path.session_answer.done():
                    path.session_answer.set_exception(
                        ConnectionError(f"connection closed: {tevent.reason}")
                    )

    def _on_packet(self, path: ClientPath, tunnel: TunnelConnection, event: PacketReceived) -> None:
        if self.mode is TunnelMode.TUNNEL or event.packet_tag is None:
            self._deliver([event.packet])
            return
        if self.session is None or tunnel not in self.session.connections:
            self.counters["drops_not_joined"] += 1
            return
        self._deliver(self.session.on_packet(tunnel, event, self.loop.time()))
        self._arm_reorder_timer()

    def _deliver(self, packets: list[bytes]) -> None:
        if not packets:
            return
        self._tun_out.extend(packets)
        if not self._tun_flush_scheduled:
            # One write pass per network batch: the events of one batch all land here first.
            self._tun_flush_scheduled = True
            self.loop.call_soon(self._flush_tun)

    def _flush_tun(self) -> None:
        self._tun_flush_scheduled = False
        packets, self._tun_out = self._tun_out, []
        if not packets:
            return
        if self.tun is None or self.tun.fd < 0:
            self.counters["drops_no_tun"] += len(packets)
            return
        self.tun.write_batch(packets)

    def _arm_reorder_timer(self) -> None:
        if self.session is None:
            return
        deadline = self.session.next_deadline()
        if deadline is None or deadline == self._reorder_timer_at:
            return
        if self._reorder_timer is not None:
            self._reorder_timer.cancel()
        self._reorder_timer_at = deadline
        self._reorder_timer = self.loop.call_at(deadline, self._on_reorder_timer)

    def _on_reorder_timer(self) -> None:
        self._reorder_timer = None
        self._reorder_timer_at = None
        if self.session is not None:
            self._deliver(self.session.poll(self.loop.time()))
            self._arm_reorder_timer()

    # -- events from the TUN ---------------------------------------------------------------

    def _on_tun_packets(self, packets: list[bytes]) -> None:
        replies: list[bytes] = []
        if self.mode is TunnelMode.TUNNEL:
            path = self.path
            if path is None or path.closed or path.tunnel is None:
                self.counters["drops_no_path"] += len(packets)
                return
            send = path.tunnel.send_packet
            for packet in packets:
                try:
                    result = send(packet)
                except DatagramError:
                    self.counters["drops_malformed"] += 1
                    continue
                if result.status is SendStatus.TOO_BIG:
                    self._too_big(packet, result, replies)
            path.transmit()
        else:
            session = self.session
            if session is None:
                self.counters["drops_no_path"] += len(packets)
                return
            now = self.loop.time()
            touched: set[TunnelConnection] = set()
            for packet in packets:
                try:
                    sent = session.send_packet(packet, now)
                except DatagramError:
                    self.counters["drops_malformed"] += 1
                    continue
                if sent.connection is None or sent.result is None:
                    self.counters["drops_no_path"] += 1
                    continue
                touched.add(sent.connection)
                if sent.result.status is SendStatus.TOO_BIG:
                    self._too_big(packet, sent.result, replies)
            for tunnel in touched:
                chosen = self._by_tunnel.get(tunnel)
                if chosen is not None:
                    chosen.transmit()
        if replies and self.tun is not None:
            self.tun.write_batch(replies)

    def _too_big(self, packet: bytes, result: SendResult, replies: list[bytes]) -> None:
        """Answer an oversized packet as a router would (tunnel/wire/icmp.py)."""
        try:
            reply = icmp.packet_too_big(packet, result.max_packet_size, self.icmp_v4, self.icmp_v6)
        except icmp.MalformedPacketError:
            reply = None
        if reply is None:
            self.counters["drops_too_big_silent"] += 1
        else:
            self.counters["icmp_too_big_sent"] += 1
            replies.append(reply)

    # -- access monitoring -----------------------------------------------------------------

    def _on_link_change(self, name: str, state: LinkState) -> None:
        status = self.accesses[name]
        status.link = state
        if state.usable:
            status.alive = True  # a link that came back deserves a fresh probe
        log.info(
            "link access=%s usable=%s%s",
            name,
            state.usable,
            "" if state.usable else f" reason={state.reason()!r}",
        )
        self._update_access(name)

    def _access_available(self, access: AccessConfig | None) -> bool:
        return access is None or self.accesses[access.name].available

    def _update_access(self, name: str) -> None:
        """Re-derive an access's availability and act at once on a change: scheduler,
        migration (tunnel mode), Access Report."""
        status = self.accesses[name]
        path = self.path if self.mode is TunnelMode.TUNNEL else self.paths.get(name)
        if path is not None and path.access is not None and path.access.name == name:
            status.alive = path.probe.alive(self.loop.time())
        available = status.available
        if status.reported is not None and status.reported == available:
            return
        first_view = status.reported is None
        status.reported = available
        self.changed.set()
        if first_view and available:
            return  # available is what the concentrator assumes (tunnel draft §6): no report
        log.info("access %s access=%s", "available" if available else "unavailable", name)
        if self.session is not None:
            self.session.set_available(status.config.access_id, available)
        if (
            self.mode is TunnelMode.TUNNEL
            and not available
            and self.path is not None
            and not self.path.closed
            and self.path.access is not None
            and self.path.access.name == name
        ):
            target = self._first_available_access()
            if target is not None:
                self._migrate(self.path, target)
        elif self.mode is TunnelMode.TUNNEL and available and self.config.failback:
            self._fail_back(name)
        self._report(status.config.access_id, available, name)
        self.status.write()

    def _fail_back(self, name: str) -> None:
        """Tunnel mode: `name` became usable again; migrate back to it if it is preferred over
        (listed before) the access the connection is on now."""
        path = self.path
        if path is None or path.closed or path.access is None or not path.joined:
            return
        order = list(self.accesses)
        if order.index(name) < order.index(path.access.name):
            log.info("failback to=%s from=%s", name, path.access.name)
            self._migrate(path, self.accesses[name].config)

    def _report(self, access_id: AccessId, available: bool, name: str) -> None:
        """Access Report TLV (tunnel draft §6) over a live connection on a usable access."""
        if not self.config.access_reports:
            return
        signal_ = AccessSignal.AVAILABLE if available else AccessSignal.UNAVAILABLE
        carriers = [self.path] if self.mode is TunnelMode.TUNNEL else list(self.paths.values())
        sent = False
        for path in carriers:
            if path is None or path.closed or not path.joined or path.tunnel is None:
                continue
            if not self._access_available(path.access):
                continue  # a report over the failed access would be lost with it
            path.tunnel.send_access_report(access_id, signal_)
            path.transmit()
            sent = True
            break
        log.info(
            "access report access=%s access_id=%s signal=%s %s",
            name,
            access_kind(access_id),
            signal_.name.lower(),
            "sent" if sent else "not sent (no live connection)",
        )
        self.accesses[name].report_pending = not sent  # sent when a connection is up again

    def _send_pending_reports(self, path: ClientPath) -> None:
        """A new connection carries the reports that could not be sent before (and, in
        session mode, tells the concentrator about accesses that are down right now)."""
        for name, status in self.accesses.items():
            self._update_access(name)
            if status.report_pending and status.reported is not None:
                self._report(status.config.access_id, status.reported, name)

    async def _probe_loop(self) -> None:
        """QUIC PING liveness probe on every connection (silent failures, e.g. a blackhole)."""
        interval = self.config.limits.probe_interval
        while True:
            await asyncio.sleep(interval / 2)
            now = self.loop.time()
            paths = [self.path] if self.mode is TunnelMode.TUNNEL else list(self.paths.values())
            for path in paths:
                if path is None or path.closed or path.quic is None:
                    continue
                if path.probe.due(now):
                    uid = path.probe.next_uid()
                    path.quic.send_ping(uid)
                    path.probe.sent(uid, now)
                    path.transmit()
                if path.access is not None:
                    self._update_access(path.access.name)
                dead_after = max(DEAD_AFTER_MISSES * interval, 3 * path.probe.limit())
                if (
                    path.probe.silent_for(now) > dead_after
                    and path.tunnel is not None
                    and self._should_abandon(path, now)
                ):
                    # No answer for that long: the concentrator may have restarted and lost
                    # the connection; make a new one instead of waiting for the idle timeout.
                    log.warning(
                        "connection silent access=%s for=%.1fs: closing it to reconnect",
                        path.name,
                        path.probe.silent_for(now),
                    )
                    path.tunnel.close("no answer to liveness probes", error_code=0)
                    path.transmit()

    def _should_abandon(self, path: ClientPath, now: float) -> bool:
        """Whether a silent connection should be closed and made again.

        Not while its link is down (the kernel explains the silence; the connection resumes if
        the link comes back before the idle timeout) nor while another connection of the
        session still gets answers: closing would leave the concentrator holding a connection
        it cannot know is dead (our CONNECTION_CLOSE is lost with the access), and a new one
        would join next to it. Only when nothing answers (e.g. the concentrator restarted and
        forgot us) does a new handshake help more than the idle timeout.
        """
        if path.access is not None:
            link = self.accesses[path.access.name].link
            if link is not None and not link.usable:
                return False
        others = [p for p in self.paths.values() if p is not path and not p.closed]
        return not any(p.probe.alive(now) for p in others)

    # -- status ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The status document (keys: README "Status file")."""
        tun_stats = self.tun.stats if self.tun is not None else None
        accesses: list[dict[str, Any]] = []
        active = self._active_paths()
        if not self.accesses:
            entries: list[tuple[str, AccessStatus | None]] = [("default", None)]
        else:
            entries = list(self.accesses.items())
        for name, status in entries:
            path = self._path_on(name)
            tunnel = path.tunnel if path is not None else None
            srtt = tunnel.srtt if tunnel is not None else None
            counters: dict[str, Any] = {}
            if path is not None and path.tunnel is not None:
                counters.update(path.tunnel.counters.as_dict())
                counters["probes_sent"] = path.probe.sent_count
                counters["probes_acked"] = path.probe.acked_count
                counters["migrations"] = path.migrations
                if path.client is not None:
                    udp = path.endpoint.stats
                    counters["udp_datagrams_sent"] = udp.datagrams_sent
                    counters["udp_datagrams_received"] = udp.datagrams_received
                    counters["udp_send_dropped"] = udp.send_dropped
            connected = path is not None and not path.closed and path.joined
            accesses.append(
                {
                    "name": name,
                    "access_id": access_kind(status.config.access_id) if status else None,
                    "available": status.available if status else connected,
                    "link": (
                        None if status is None or status.link is None else asdict(status.link)
                    ),
                    "connected": connected,
                    "active": path is not None and path in active,
                    "srtt_ms": None if srtt is None else round(srtt * 1000, 3),
                    # the outer connection's congestion state (RFC 9002 §7), for diagnosis
                    "cwnd_bytes": tunnel.congestion_window if tunnel is not None else None,
                    "ssthresh_bytes": tunnel.slow_start_threshold if tunnel is not None else None,
                    "bytes_in_flight": tunnel.bytes_in_flight if tunnel is not None else None,
                    "counters": counters,
                }
            )
        reorder = asdict(self.session.reorder_stats) if self.session is not None else {}
        totals: Counter[str] = Counter(self.closed_totals)
        for tunnel in self._by_tunnel:
            totals.update(tunnel.counters.as_dict())
        totals.update(self.counters)
        document: dict[str, Any] = {
            "role": "client",
            "name": self.config.name,
            "pid": os.getpid(),
            "time": time.time(),
            "mode": self.mode.value,
            "state": self.state,
            "session_id": _hex(self.session_id) if self.mode is TunnelMode.SESSION else None,
            "scheduler": self.config.scheduler,
            "access_reports": self.config.access_reports,
            "failback": self.config.failback,
            "tun": {
                "name": self.config.tun.name,
                "mtu": self.tun.mtu if self.tun is not None else None,
                "rx_packets": tun_stats.packets_read if tun_stats else 0,
                "tx_packets": tun_stats.packets_written if tun_stats else 0,
                "rx_bytes": tun_stats.bytes_read if tun_stats else 0,
                "tx_bytes": tun_stats.bytes_written if tun_stats else 0,
                "write_drops": tun_stats.write_drops if tun_stats else 0,
            },
            "accesses": accesses,
            "reorder": reorder,
            "counters": dict(totals),
        }
        if self.stream is not None:
            with contextlib.suppress(Exception):
                document["stream"] = self.stream.stats()
        return document

    def _path_on(self, name: str) -> ClientPath | None:
        if self.mode is TunnelMode.TUNNEL:
            path = self.path
            if path is None:
                return None
            return path if path.name == name else None
        return self.paths.get(name)

    def _active_paths(self) -> set[ClientPath]:
        if self.mode is TunnelMode.TUNNEL:
            return {self.path} if self.path is not None and not self.path.closed else set()
        if self.session is None:
            return set()
        paths = self.session.paths()
        scheduler = self.session.scheduler
        if isinstance(scheduler, FailoverScheduler):
            # FailoverScheduler.choose keeps no state: asking it does not disturb the traffic.
            chosen = scheduler.choose(paths)
            ids = set() if chosen is None else {chosen}
        else:
            ids = {p.path_id for p in paths if p.available}
        result: set[ClientPath] = set()
        for tunnel in self.session.connections:
            if self.session.path_id_of(tunnel) in ids and tunnel in self._by_tunnel:
                result.add(self._by_tunnel[tunnel])
        return result


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _address_text(address: Any) -> str:
    try:
        host = str(ip_address(str(address[0]).split("%")[0]))
    except (ValueError, IndexError, TypeError):
        return str(address)
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


async def _amain(config: ClientConfig) -> int:
    return await Client(config).main()


def run_client(config: ClientConfig) -> int:
    """Run the client until SIGINT/SIGTERM; 0 after a clean shutdown. Raises RuntimeFailure
    (one sentence) for a failure the user must fix."""
    try:
        return run(_amain(config))
    except (TunError, EndpointError) as exc:
        raise RuntimeFailure(str(exc)) from None


__all__ = ["Client", "ClientPath", "backoff_delays", "icmp_sources", "run_client"]
