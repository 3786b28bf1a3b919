"""`qtun concentrator`: the asyncio program around the concentrator core.

Every decision — authentication and admission, sessions, Access Reports, where each packet
goes — is taken by `ConcentratorCore` (tunnel/agents/concentrator.py, sans-I/O; its docstring
tells what happens to a connection and to a packet). This program owns what the core must not
touch, as aioquic's asyncio layer does for QuicConnection: the UDP sockets and the QUIC server
(tunnel/aio/udp.py), the TUN device, the nftables masquerade, the netlink watch of the host's
addresses, the key log and qlog files, the status file, the stream-mode server and the signals,
and the listeners of the ports clients mapped with PCP (the reversed flow of stream mode).
It feeds the core every QUIC event, every batch read from the TUN and its timer, and carries
out its actions: send what the core queued on a connection, write packets into the TUN,
rewrite the status file.

A bug while one connection is handled closes that connection only (QuicDriver, INTERNAL_ERROR);
a bug in the program's own callbacks (TUN reader, timer, signals, netlink) stops it with exit 1
and its traceback in the log, rather than leaving a concentrator that silently stopped doing
part of its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import IO, Any, Protocol

from aioquic.quic import events as quic_events

from tunnel.agents.concentrator import (
    AddressesClaimed,
    ClientArrived,
    ClientLeft,
    ConcentratorCore,
    CrlReloaded,
    InboundMapped,
    InboundUnmapped,
    StatusChanged,
    TapClosed,
    TapOpened,
)
from tunnel.aio.concentrator_setup import (
    auto_tun_mtu,
    load_verifier,
    quic_configuration,
    quic_server,
    read_ip_forward,
)
from tunnel.aio.deadline import DeadlineTimer
from tunnel.aio.nat import Masquerade, NatError
from tunnel.aio.netlink_watch import NetlinkWatch, local_address_watch
from tunnel.aio.status import StatusWriter
from tunnel.aio.tun import DeviceKind, TunDevice, TunError, bridge_problem, interface_macs
from tunnel.aio.udp import QuicDriver, QuicServer, run
from tunnel.aio.workers import WorkerRoutes, WorkerSeat, supervise
from tunnel.config import ConcentratorConfig
from tunnel.policy.inbound import Mapping
from tunnel.protocol.connection import TunnelConnection, TunnelEvent
from tunnel.protocol.quic_ext import FAST_CRYPTO_MISSING
from tunnel.user_error import RuntimeFailure
from tunnel.wire.datagram import ETHERNET_HEADER_SIZE, Payload
from tunnel.wire.modes import TunnelMode

log = logging.getLogger("qtun.concentrator")


class ProgramState(Enum):
    """The status file's `state`."""

    STARTING = "starting"
    UP = "up"
    STOPPED = "stopped"


class StreamHandler(Protocol):
    """tunnel.aio.stream_server.StreamServer as the program uses it (README "Stream mode")."""

    def quic_options(self) -> dict[str, Any]: ...

    def handle(
        self, conn: TunnelConnection, event: TunnelEvent, transmit: Callable[[], None]
    ) -> bool: ...

    def connection_closed(self, conn: TunnelConnection) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def inbound_relay(
        self,
        mapping: Mapping,
        carrier: Callable[[str], tuple[TunnelConnection, Callable[[], None]] | None],
    ) -> Callable[[], Any]: ...


class ConcentratorProgram:
    """The running concentrator (see the module docstring). `start()`, then `stop()`."""

    def __init__(self, config: ConcentratorConfig, seat: WorkerSeat | None = None) -> None:
        """`seat`: this program is one worker of several (tunnel/aio/workers.py), `config`
        the worker's view of the configuration (worker_config)."""
        self.config = config
        self.seat = seat
        self.loop = asyncio.get_running_loop()
        self.state = ProgramState.STARTING
        verifier = load_verifier(config.tls.ca, config.tls.crl)
        self.core = ConcentratorCore(
            config,
            self.loop.time(),
            verifier=verifier,
            port_free=self._port_free,
            # workers count limits.max_clients and claim pool addresses together
            client_slots=None if seat is None else seat.client_slots,
            pool_claims=None if seat is None else seat.pool_claims,
        )
        # the listeners of mapped ports (the reversed flow), by external port
        self.inbound: dict[int, list[asyncio.AbstractServer]] = {}
        self.drivers: dict[TunnelConnection, QuicDriver] = {}
        self.timer = DeadlineTimer(self._guarded(self.core.handle_timer), self.loop)
        self._carry_out_soon = self._guarded(self._carry_out, carry_out=False)
        self._carry_out_scheduled = False
        self.tun: TunDevice | None = None
        # Ethernet clients' TAP devices on the bridge (README "L2 mode"), by client name
        self.taps: dict[str, TunDevice] = {}
        self.server: QuicServer | None = None
        self.nat: Masquerade | None = None
        self.ip_forward = read_ip_forward()
        self.stream_server = _make_stream_server(config, self.core.client_name)
        self.status = StatusWriter(
            config.observability.status_file, self.snapshot, config.observability.status_interval
        )
        self.exit_code = 0
        self._address_watch: NetlinkWatch[Any] | None = None
        # several workers: where this one's clients' prefixes are routed (README "Workers")
        self.routes: WorkerRoutes | None = None
        if seat is not None and seat.count > 1:
            self.routes = WorkerRoutes(config.tun.name, seat.home_tun)
        self._keylog: IO[str] | None = None
        self._stopped = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        # the TLS files, key log and qlog first: their errors before the host is touched
        quic_config, self._keylog = quic_configuration(config)
        mtu = config.tun.mtu or auto_tun_mtu(config.modes)
        # a worker's TUN gets its clients' prefixes as they arrive; worker 0's holds them all
        # until then, so a packet for a client that is nowhere meets one core that drops it
        addresses = config.tun.addresses  # worker 0's TUN alone carries them
        if self.seat is None:
            routes = self.core.tun_routes()
        elif self.seat.routes_prefixes:
            routes = self.core.tun_routes(every_prefix=True)
        else:
            routes, addresses = [], ()
        try:
            self.tun = TunDevice.create(
                config.tun.name,
                mtu=mtu,
                addresses=addresses,
                routes=routes,
                offload=config.tun.offload,
                tso=config.tun.tso,
                txqueuelen=config.tun.txqueuelen,
            )
        except TunError as exc:
            raise RuntimeFailure(str(exc)) from None
        if Payload.ETHERNET in config.payloads and config.l2.bridge is not None:
            problem = bridge_problem(config.l2.bridge)
            if problem is not None:
                raise RuntimeFailure(problem)
            self._tell_host_macs()
        # with workers, worker 0 installs the one table, which leaves every worker's TUN alone
        if config.nat and (self.seat is None or self.seat.routes_prefixes):
            tuns = [config.tun.name] if self.seat is None else self.seat.tun_names
            try:
                self.nat = Masquerade.install(
                    tuns, self.core.addresses.routed_prefixes(), config.nat_exclude
                )
            except NatError as exc:
                raise RuntimeFailure(str(exc)) from None
            exclude = ",".join(map(str, config.nat_exclude)) or "none"
            log.info("nat on table=%s exclude=%s", self.nat.table, exclude)
        # the host's addresses: for the host guard, and to tell PCP requests to this host
        if config.to_concentrator != "allow" or (
            config.stream.enabled and config.stream.inbound_ports
        ):
            self._address_watch = local_address_watch(self._guarded(self._addresses_changed))
            try:
                await self._address_watch.start()
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot follow this host's addresses over netlink ({exc.strerror}): run "
                    'the concentrator as root, or set to_concentrator = "allow"'
                ) from None
        options = self.stream_server.quic_options() if self.stream_server is not None else {}
        if self.core.tickets is not None:
            options["tickets"] = self.core.tickets  # limits.zero_rtt (README "0-RTT")
        self.server = quic_server(config, quic_config, self._on_connection, options, self.seat)
        self.server.start()
        self.tun.start_reading(
            self._guarded(self._on_tun_packets), on_error=self._guarded(self._tun_failed)
        )
        self.state = ProgramState.UP
        log.info(
            "up listen=%s tun=%s mtu=%d modes=%s clients=%d pool=%s",
            ",".join(f"{a}:{config.port}" for a in config.listen_addresses),
            self.tun.name,
            mtu,
            ",".join(m.value for m in config.modes),
            len(config.clients),
            ",".join(str(p) for p in (config.pool.ipv4, config.pool.ipv6) if p) or "none",
        )
        if FAST_CRYPTO_MISSING is not None and config.limits.fast_datagram_path:
            log.warning("fast-path packets are protected in Python: %s", FAST_CRYPTO_MISSING)
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

    def reload_crl(self) -> None:
        """SIGHUP: the core re-reads the CRL file now, changed or not."""
        self.core.reload_crl(self.loop.time())

    async def stop(self) -> None:
        """Close every connection (CONNECTION_CLOSE), the TUN and the sockets (also what a
        failed start left behind)."""
        was_up = self.state is ProgramState.UP
        if was_up:
            log.info("stopping connections=%d", self.core.connection_count)
        self.core.shutdown(self.loop.time())
        self._carry_out()
        for port in list(self.inbound):
            self._stop_listening(port)
        if self.stream_server is not None:
            self.stream_server.close()
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()
        self.timer.cancel()
        if self._address_watch is not None:
            self._address_watch.close()
        if self.routes is not None:
            self.routes.close()
        if self.tun is not None:
            self.tun.close()
        for name in list(self.taps):
            self._close_tap(name)
        if self.nat is not None:
            self.nat.remove()
        if self._keylog is not None:
            self._keylog.close()
        self.state = ProgramState.STOPPED
        await self.status.close()
        if was_up:
            log.info("stopped")

    # -- feeding the core, carrying out its actions --------------------------------------------

    def _on_connection(self, driver: QuicDriver) -> None:
        connection = self.core.connection_opened(driver.quic, self.loop.time())
        self.drivers[connection] = driver
        driver.on_event = functools.partial(self._on_quic_event, connection)

    def _on_quic_event(self, connection: TunnelConnection, event: quic_events.QuicEvent) -> None:
        # An exception here reaches the QuicDriver, which closes this connection only; what
        # the connection held here (its driver, its TCP relays) goes with it all the same.
        try:
            stream_events = self.core.quic_event(connection, event, self.loop.time())
            if stream_events and self.stream_server is not None:
                transmit = self.drivers[connection].transmit_soon
                for stream_event in stream_events:
                    self.stream_server.handle(connection, stream_event, transmit)
        finally:
            if isinstance(event, quic_events.ConnectionTerminated):
                self.drivers.pop(connection, None)
                if self.stream_server is not None:
                    self.stream_server.connection_closed(connection)
            if not self._carry_out_scheduled:
                # Once per network batch (its events all come first, then the driver
                # transmits), not once per packet: the batch's packets for the TUN then go in
                # one write_tun, which merges a flow's TCP segments (tun.offload).
                self._carry_out_scheduled = True
                self.loop.call_soon(self._carry_out_soon)

    def _on_tun_packets(self, packets: list[bytes]) -> None:
        forwarded = self.core.from_tun(packets, self.loop.time())
        drivers = self.drivers
        for connection in forwarded.connections:
            driver = drivers.get(connection)
            if driver is not None:
                driver.transmit()

    def _on_tap_frames(self, client: str, frames: list[bytes]) -> None:
        forwarded = self.core.from_tap(client, frames, self.loop.time())
        drivers = self.drivers
        for connection in forwarded.connections:
            driver = drivers.get(connection)
            if driver is not None:
                driver.transmit()

    def _open_tap(self, client: str, mode: TunnelMode) -> None:
        """A TAP of its own for an Ethernet client, a port of l2.bridge: the kernel bridge does
        the MAC learning and flooding between clients and whatever else is on the bridge. Its
        MTU is the client's: the datagram budget of its mode less the Ethernet header (session
        draft §4: one frame per datagram; a bridge drops frames beyond the egress port's MTU)."""
        config = self.config
        if client in self.taps or config.l2.bridge is None:
            return
        name = self._tap_name()
        # the client's auto MTU, whatever tun.mtu says of the concentrator's own TUN
        mtu = auto_tun_mtu((mode,)) - ETHERNET_HEADER_SIZE
        try:
            tap = TunDevice.create(name, mtu=mtu, kind=DeviceKind.TAP, bridge=config.l2.bridge)
        except TunError as exc:
            self.core.tap_failed(client, str(exc), self.loop.time())
            return
        self.taps[client] = tap
        self._tell_host_macs()
        tap.start_reading(
            self._guarded(functools.partial(self._on_tap_frames, client)),
            on_error=self._guarded(functools.partial(self._tap_read_failed, client)),
        )
        log.info("tap up client=%s tap=%s mtu=%d bridge=%s", client, name, mtu, config.l2.bridge)

    def _tun_failed(self, exc: OSError) -> None:
        """The TUN cannot be read any more (deleted under us): nothing can be forwarded."""
        log.critical(
            "tun %s unreadable (%s): stopping", getattr(self.tun, "name", "?"), exc.strerror
        )
        self.exit_code = 1
        self.request_stop()

    def _tap_read_failed(self, client: str, exc: OSError) -> None:
        """One Ethernet client's TAP cannot be read any more: that client cannot be served."""
        self._close_tap(client)
        self.core.tap_failed(client, f"its TAP cannot be read ({exc.strerror})", self.loop.time())

    def _tell_host_macs(self) -> None:
        """The bridge's and our TAPs' MACs to the core: an Ethernet client sourcing one would
        pose as this host, the clients' gateway on the bridge (tunnel/policy/mac_filter.py)."""
        bridge = self.config.l2.bridge
        names = ([bridge] if bridge is not None else []) + [tap.name for tap in self.taps.values()]
        self.core.host_macs_changed(interface_macs(names))

    def _tap_name(self) -> str:
        """`<tun.name>-N` with the smallest N not in use, cut to the 15 bytes of a name."""
        used = {tap.name for tap in self.taps.values()}
        for number in range(1, len(used) + 2):
            digits = str(number)
            name = f"{self.config.tun.name[: 14 - len(digits)]}-{digits}"
            if name not in used:
                return name
        raise AssertionError("unreachable: one of len(used) + 1 numbers is free")

    def _close_tap(self, client: str) -> None:
        tap = self.taps.pop(client, None)
        if tap is not None:
            tap.close()
            log.info("tap removed client=%s tap=%s", client, tap.name)
            self._tell_host_macs()

    def _write_tap(self, client: str, frame: bytes) -> bool:
        tap = self.taps.get(client)
        return tap is not None and tap.write(frame)

    def _addresses_changed(self, addresses: frozenset[IPv4Address | IPv6Address]) -> None:
        self.core.host_addresses_changed(addresses)

    def _carry_out(self) -> None:
        self._carry_out_scheduled = False
        core = self.core
        while (action := core.next_action()) is not None:
            if isinstance(action, StatusChanged):
                self.status.write()
            elif isinstance(action, TapOpened):
                self._open_tap(action.client, action.mode)
            elif isinstance(action, TapClosed):
                self._close_tap(action.client)
            elif isinstance(action, ClientArrived | AddressesClaimed):
                if self.routes is not None:
                    self.routes.claim(action.prefixes)
            elif isinstance(action, ClientLeft):
                if self.routes is not None:
                    self.routes.give_back(action.prefixes)
            elif isinstance(action, InboundMapped):
                self._listen(action.mapping)
            elif isinstance(action, InboundUnmapped):
                self._stop_listening(action.mapping.external_port)
            elif not isinstance(action, CrlReloaded):  # the core logged it
                driver = self.drivers.get(action.connection)
                if driver is not None:
                    driver.transmit_soon()
        # after the actions: a client that just arrived has its TAP, or with several workers
        # its route, before its first packets go in and are answered
        if self.tun is not None:
            core.write_tun(self.tun.write_batch)
        core.write_taps(self._write_tap)
        self.timer.arm(core.get_timer())

    # -- the reversed flow of stream mode: listeners of mapped ports -----------------------------

    def _inbound_addresses(self) -> tuple[IPv4Address | IPv6Address, ...]:
        return self.config.stream.inbound_addresses or self.config.listen_addresses

    def _port_free(self, port: int) -> bool:
        """Whether TCP `port` can be listened on at every inbound address (a probe bind)."""
        if port in self.inbound:
            return False
        for address in self._inbound_addresses():
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((str(address), port))
                except OSError:
                    return False
        return True

    def _listen(self, mapping: Mapping) -> None:
        """Listen on the mapping's external port (bound now, so a failure is known at once;
        served from the next loop iteration)."""
        if self.stream_server is None or mapping.external_port in self.inbound:
            return
        factory = self.stream_server.inbound_relay(mapping, self._stream_carrier)
        sockets: list[socket.socket] = []
        try:
            for address in self._inbound_addresses():
                family = socket.AF_INET if address.version == 4 else socket.AF_INET6
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((str(address), mapping.external_port))
                sock.listen(128)
                sock.setblocking(False)
        except OSError as exc:
            for sock in sockets:
                sock.close()
            log.warning(
                "inbound listen failed port=%d client=%s error=%s",
                mapping.external_port,
                mapping.client,
                exc.strerror or exc,
            )
            self.core.inbound_listen_failed(mapping, str(exc.strerror or exc))
            return
        servers: list[asyncio.AbstractServer] = []
        self.inbound[mapping.external_port] = servers

        async def serve() -> None:
            for sock in sockets:
                server = await self.loop.create_server(factory, sock=sock)
                if servers is not self.inbound.get(mapping.external_port):
                    server.close()  # unmapped meanwhile
                    continue
                servers.append(server)

        self.loop.create_task(serve())
        log.info(
            "inbound listening port=%d client=%s to=%s:%d",
            mapping.external_port,
            mapping.client,
            mapping.internal_address,
            mapping.internal_port,
        )

    def _stop_listening(self, port: int) -> None:
        for server in self.inbound.pop(port, []):
            server.close()

    def _stream_carrier(self, name: str) -> tuple[TunnelConnection, Callable[[], None]] | None:
        connection = self.core.stream_connection(name)
        driver = self.drivers.get(connection) if connection is not None else None
        if connection is None or driver is None:
            return None
        return connection, driver.transmit_soon

    def _guarded(
        self, callback: Callable[..., None], carry_out: bool = True
    ) -> Callable[..., None]:
        """`callback` for the loop: carries out the core's actions after it (unless it is that
        itself), and turns a bug into a stop with exit 1 (and its traceback in the log) instead
        of a silent death."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
                if carry_out:
                    self._carry_out()
            except Exception as exc:
                where = getattr(callback, "__name__", "a callback")
                log.critical("internal error in %s: stopping", where, exc_info=exc)
                self.exit_code = 1
                self.request_stop()

        return guarded

    # -- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        tun, server, core = self.tun, self.server, self.core.status()
        return {
            **core,
            "role": "concentrator",
            "pid": os.getpid(),
            "worker": None if self.seat is None else self.seat.index,
            "time": datetime.datetime.now(datetime.UTC).timestamp(),
            "state": self.state.value,
            "modes": [m.value for m in self.config.modes],
            "listen": [f"{a}:{self.config.port}" for a in self.config.listen_addresses],
            "tun": {
                "name": self.config.tun.name,
                "mtu": tun.mtu if tun is not None else None,
                "rx_packets": tun.stats.packets_read if tun is not None else 0,
                "tx_packets": tun.stats.packets_written if tun is not None else 0,
                "rx_reads": tun.stats.reads if tun is not None else 0,
                "tx_writes": tun.stats.writes if tun is not None else 0,
                "read_errors": tun.stats.read_errors if tun is not None else 0,
                "write_drops": tun.stats.write_drops if tun is not None else 0,
            },
            "payloads": [p.value for p in self.config.payloads],
            "taps": {client: tap.name for client, tap in self.taps.items()},
            "ip_forward": self.ip_forward,
            "nat": self.nat.table if self.nat is not None else None,
            "refused": core["refused"]
            | {"server_full": server.refused_connections if server else 0},
            "counters": core["counters"]
            | {
                "stateless_resets_sent": server.resets_sent if server else 0,
                "internal_errors": core["counters"]["internal_errors"]
                + (server.internal_errors if server else 0),
            },
            "server": server.counters() if server is not None else None,
            "stream": self.stream_server.stats() if self.stream_server is not None else None,
        }


# -- helpers --------------------------------------------------------------------------------


def _make_stream_server(
    config: ConcentratorConfig, client_of: Callable[[TunnelConnection], str | None]
) -> StreamHandler | None:
    if not config.stream.enabled:
        return None
    from tunnel.aio import stream_server  # type: ignore[attr-defined,unused-ignore]

    server: StreamHandler = stream_server.StreamServer(config.stream, client_of=client_of)
    return server


async def _serve(config: ConcentratorConfig, seat: WorkerSeat | None = None) -> int:
    program = ConcentratorProgram(config, seat)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, program.request_stop)
    loop.add_signal_handler(signal.SIGHUP, program._guarded(program.reload_crl))
    try:
        try:
            await program.start()
        except BaseException:
            await program.stop()
            raise
        await program.wait_stopped()
        await program.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return program.exit_code


def run_concentrator(config: ConcentratorConfig) -> int:
    """Run until SIGINT/SIGTERM; 0 after a clean shutdown, 1 after a bug stopped it. Raises
    RuntimeFailure (exit 1) or ConfigError (exit 2) with one sentence for what a user must fix.
    With `workers` above 1, as that many processes (tunnel/aio/workers.py)."""
    if config.workers > 1:
        return supervise(config, lambda view, seat: run(_serve(view, seat)))
    return run(_serve(config))


__all__ = ["ConcentratorProgram", "ProgramState", "run_concentrator"]
