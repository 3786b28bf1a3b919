"""`qtun client`: the asyncio program around the client agent (tunnel/agents/client.py).

Every decision — which access carries the tunnel, connecting, migrating, failing back, joining
the session, Access Reports, probes, giving a connection up, where each packet goes — is the
agent's (its docstring tells them). This program owns what the agent must not touch, as
aioquic's asyncio layer does for QuicConnection: the UDP sockets bound to one access each and the
QUIC connections over them (tunnel/aio/udp.py, tunnel/aio/client_setup.py), the TUN device, the
netlink monitor of the accesses (tunnel/aio/access_monitor.py), the key log and qlog files, the
status file, the stream client (tunnel/aio/stream_client.py, when `[stream] enabled`) and the
signals. It feeds the agent every link change, every aioquic event, every batch read from the
TUN and its timer, and carries out its actions. SIGINT/SIGTERM: CONNECTION_CLOSE on every
connection, TUN removed, state "stopped", exit 0.

No silent task death: an exception escaping the agent or any callback or task of this program
is a bug; it stops the program with exit 1 and its traceback in the log (a client that kept
saying "up" with its probe or its reconnects dead would be worse). A UserError raised there
(e.g. the TUN cannot be created) stops it with its one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from ipaddress import IPv4Interface, IPv6Interface
from typing import TYPE_CHECKING, Any, TextIO

from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration

from tunnel.agents.access_health import LinkState
from tunnel.agents.client import (
    ClientAgent,
    ClientState,
    ClosePath,
    CreateTun,
    EndProbe,
    Migrate,
    OpenPath,
    Path,
    ProbeAccess,
    StatusChanged,
    Transmit,
)
from tunnel.aio.access_monitor import AccessMonitor
from tunnel.aio.client_setup import (
    address_text,
    bind_access,
    concentrator_remote,
    open_observability,
    quic_configuration,
)
from tunnel.aio.deadline import DeadlineTimer
from tunnel.aio.netns import NetNamespace, entered
from tunnel.aio.qlog import BoundedQlogLogger
from tunnel.aio.status import StatusWriter
from tunnel.aio.tun import DeviceKind, TunDevice, TunError
from tunnel.aio.udp import EndpointError, QuicClient, QuicDriver, UdpEndpoint, run
from tunnel.config import AccessConfig, ClientConfig
from tunnel.protocol.connection import TunnelConnection
from tunnel.protocol.quic_ext import FAST_CRYPTO_MISSING, TunnelQuicConnection, pacing_rate
from tunnel.user_error import EXIT_OK, EXIT_RUNTIME, RuntimeFailure, UserError
from tunnel.wire.datagram import PAYLOAD_ETHERTYPE, Payload

if TYPE_CHECKING:
    from tunnel.aio.stream_client import StreamClient

log = logging.getLogger("qtun.client")

TUN_BATCH = 64


class Client:
    """The running client (see the module docstring). `main()` returns the exit code."""

    def __init__(
        self, config: ClientConfig, netns: NetNamespace | None = None, in_group: bool = False
    ) -> None:
        """`netns`: the network namespace this client's sockets, TUN device and netlink watch
        are created in (None: the process's own). `in_group`: one client of a `qtun
        client-group` (tunnel/aio/client_group.py), which owns the signals and the loop's
        exception handler of the process."""
        self.config = config
        self.netns = netns
        self.in_group = in_group
        self.loop = asyncio.get_running_loop()
        self.agent = ClientAgent(config, self.loop.time())
        self.stopping = asyncio.Event()
        self.failure: Exception | None = None
        self.monitor = AccessMonitor(config.accesses, self._guarded(self._on_link_change), netns)
        self.timer = DeadlineTimer(self._guarded(self.agent.handle_timer), self.loop)
        self.clients: dict[Path, QuicClient] = {}  # the socket and QUIC driver of each path
        self.probes: dict[tuple[Path, str], UdpEndpoint] = {}  # ProbeAccess sockets
        self.tasks: set[asyncio.Task[None]] = set()  # supervised (_spawn)
        self.tun: TunDevice | None = None
        self.stream: StreamClient | None = None
        self.status = StatusWriter(
            config.observability.status_file,
            self.snapshot,
            config.observability.status_interval,
            refresh_signal=not in_group,
        )
        self._carry_out_soon = self._guarded(self._carry_out, carry_out=False)
        self._carry_out_scheduled = False
        self._keylog: TextIO | None = None
        self._qlog: BoundedQlogLogger | None = None
        self._quic_config: QuicConfiguration | None = None

    # -- life cycle --------------------------------------------------------------------------

    async def main(self) -> int:
        if not self.in_group:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(signum, self.request_stop, signum)
            self.loop.set_exception_handler(self._loop_exception)
        try:
            self._keylog, self._qlog = open_observability(self.config.observability)
            self._quic_config = quic_configuration(self.config, self._keylog, self._qlog)
            self.status.start()
            await self.monitor.start()
            if self.config.stream.enabled:
                await self._start_stream_client()
            log.info(
                "starting mode=%s concentrator=%s port=%d accesses=%s scheduler=%s "
                "access_reports=%s stream=%s",
                self.config.mode.value,
                self.config.concentrator_address,
                self.config.concentrator_port,
                ",".join(a.name for a in self.config.accesses) or "-",
                self.config.scheduler,
                self.config.access_reports,
                self.stream is not None,
            )
            if FAST_CRYPTO_MISSING is not None and self.config.limits.fast_datagram_path:
                log.warning("fast-path packets are protected in Python: %s", FAST_CRYPTO_MISSING)
            self._guarded(self._feed(self.agent.start))()
            await self.stopping.wait()
        finally:
            await self._shutdown()
        if isinstance(self.failure, UserError):
            raise self.failure
        return EXIT_OK if self.failure is None else EXIT_RUNTIME

    def request_stop(self, signum: int) -> None:
        if not self.stopping.is_set():
            log.info("stopping signal=%s", signal.Signals(signum).name)
            self.stopping.set()

    async def _shutdown(self) -> None:
        self.timer.cancel()
        self._guarded(self._feed(self.agent.shutdown))()
        for path in list(self.clients):  # left over if the agent failed
            self._close(path)
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=2.0)
        if self.stream is not None:
            with contextlib.suppress(Exception):
                await self.stream.close()
        if self.tun is not None:
            self.tun.close()
        self.monitor.close()
        await self.status.close()
        if self._keylog is not None:
            self._keylog.close()
        if not self.in_group:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.loop.remove_signal_handler(signum)
        log.info("stopped")

    # -- supervision ---------------------------------------------------------------------------

    def _crash(self, exc: Exception, where: str) -> None:
        """A bug (or a UserError) escaped `where`: stop the program."""
        if self.failure is None:
            self.failure = exc
            if not isinstance(exc, UserError):  # a UserError's sentence is the CLI's to print
                log.critical("internal error in %s: stopping", where, exc_info=exc)
        else:
            log.error("further internal error in %s", where, exc_info=exc)
        self.stopping.set()

    def _guarded(
        self, callback: Callable[..., None], where: str = "", carry_out: bool = True
    ) -> Callable[..., None]:
        """`callback` for the loop: carries out the agent's actions after it (unless it
        schedules that itself), and turns an exception into a stop with exit 1 (and its
        traceback in the log)."""
        where = where or getattr(callback, "__name__", "a callback")

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
                if carry_out:
                    self._carry_out()
            except Exception as exc:
                self._crash(exc, where)

        return guarded

    def _feed(self, agent_input: Callable[[float], None]) -> Callable[[], None]:
        return lambda: agent_input(self.loop.time())

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # what else the loop runs for us (stream relays, the netlink watch, tasks)
        exc = context.get("exception")
        if isinstance(exc, Exception):
            self._crash(exc, str(context.get("message", "a loop callback")))
        else:
            loop.default_exception_handler(context)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self.loop.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, Exception):
            self._crash(exc, f"task {task.get_name()}")

    # -- inputs ----------------------------------------------------------------------------------

    def _on_link_change(self, name: str, state: LinkState) -> None:
        self.agent.link_changed(name, state, self.loop.time())

    def _on_quic_event(self, path: Path, event: quic_events.QuicEvent) -> None:
        stream_events = self.agent.quic_event(path, event, self.loop.time())
        if stream_events and self.stream is not None and path.tunnel is not None:
            transmit = functools.partial(self._transmit, path)
            for stream_event in stream_events:
                self.stream.handle(path.tunnel, stream_event, transmit)
        if not self._carry_out_scheduled:
            # Once per network batch (its events all come first, then the driver transmits),
            # not once per packet.
            self._carry_out_scheduled = True
            self.loop.call_soon(self._carry_out_soon)

    def _on_tun_packets(self, packets: list[bytes]) -> None:
        for path in self.agent.from_tun(packets, self.loop.time()).paths:
            self._transmit(path)

    # -- carrying out the agent's actions -------------------------------------------------------

    def _carry_out(self) -> None:
        self._carry_out_scheduled = False
        agent = self.agent
        while (action := agent.next_action()) is not None:
            if isinstance(action, Transmit):
                self._transmit(action.path)
            elif isinstance(action, OpenPath):
                self._open(action.path)
            elif isinstance(action, ClosePath):
                self._close(action.path)
            elif isinstance(action, Migrate):
                self._migrate(action)
            elif isinstance(action, CreateTun):
                self._create_tun(action.mtu, action.addresses)
            elif isinstance(action, ProbeAccess):
                self._probe(action)
            elif isinstance(action, EndProbe):
                self._end_probe(action.path, action.access.name)
            elif isinstance(action, StatusChanged):
                self.status.write()
        self.timer.arm(agent.get_timer())
        tun = self.tun
        agent.write_tun(tun.write_batch if tun is not None and tun.fd >= 0 else None)

    def _transmit(self, path: Path) -> None:
        client = self.clients.get(path)
        if client is not None and not client.driver.closed:
            client.driver.transmit()

    def _open(self, path: Path) -> None:
        assert self._quic_config is not None
        try:
            endpoint = self._bind(path.access)
        except (EndpointError, OSError) as exc:
            self.agent.path_failed(path, str(exc), self.loop.time())
            return
        options = self.stream.quic_options() if self.stream is not None else {}
        if self.agent.tickets is not None:
            # limits.zero_rtt (README "0-RTT"): present the ticket the agent chose, keep new ones
            options["session_ticket_handler"] = self.agent.ticket_received
        quic = TunnelQuicConnection(
            configuration=dataclasses.replace(
                self._quic_config, session_ticket=path.session_ticket
            ),
            pacing_rate=pacing_rate(self.config.limits.pacing_rate_mbps),
            fast_datagram_path=self.config.limits.fast_datagram_path,
            pmtu_discovery=self.config.limits.pmtu_discovery,
            # tunnel draft §4: the payload is signalled out of band (quic_ext.PAYLOAD_TP_ID)
            payload_ethertype=PAYLOAD_ETHERTYPE[self.config.payload],
            initial_dcid_byte=self.agent.worker_byte,
            **options,
        )
        # connect() first: a Join Session the agent queues in path_opened goes out in 0-RTT
        quic.connect(concentrator_remote(self.config), now=self.loop.time())
        self.agent.path_opened(path, quic, self.loop.time())
        on_event = self._guarded(
            functools.partial(self._on_quic_event, path), "_on_quic_event", carry_out=False
        )
        driver = QuicDriver(quic, endpoint, on_event)
        self.clients[path] = QuicClient(endpoint, driver)
        endpoint.start(driver.receive, TUN_BATCH)
        log.info("connecting access=%s local=%s", path.name, address_text(endpoint.local_address))
        driver.transmit()

    def _bind(self, access: AccessConfig | None) -> UdpEndpoint:
        with entered(self.netns):  # the socket stays in the client's namespace
            return bind_access(self.config, access)

    def _probe(self, probe: ProbeAccess) -> None:
        """A path probe from a socket of its own on the probed access; its answers go to the
        connection like those of its main socket."""
        client, key = self.clients.get(probe.path), (probe.path, probe.access.name)
        if client is None:
            return
        endpoint = self.probes.get(key)
        if endpoint is None:
            try:
                endpoint = self._bind(probe.access)
            except (EndpointError, OSError) as exc:
                log.info("no probe socket access=%s error=%r", probe.access.name, str(exc))
                return
            endpoint.start(client.driver.receive, TUN_BATCH)
            self.probes[key] = endpoint
        endpoint.send_batch([(probe.datagram, concentrator_remote(self.config))])

    def _end_probe(self, path: Path, name: str) -> None:
        endpoint = self.probes.pop((path, name), None)
        if endpoint is not None:
            endpoint.close()

    def _close(self, path: Path) -> None:
        for key in [k for k in self.probes if k[0] is path]:
            self._end_probe(path, key[1])
        client = self.clients.pop(path, None)
        if self.stream is not None and path.tunnel is not None and path.tunnel.stream_mode:
            self.stream.connection_closed(path.tunnel)
        if client is not None:
            # CONNECTION_CLOSE now, the socket once it went out (bounded wait, QuicClient.close)
            self._spawn(client.close(), f"close-{path.name}")

    def _migrate(self, migrate: Migrate) -> None:
        client = self.clients.get(migrate.path)
        if client is None:
            return
        # the probe socket on the target, if any, already reaches the concentrator (and its
        # path is validated there, RFC 9000 §9.1)
        endpoint = self.probes.pop((migrate.path, migrate.target.name), None)
        old, driver = client.endpoint, client.driver
        if endpoint is None:
            try:
                endpoint = self._bind(migrate.target)
            except (EndpointError, OSError) as exc:
                self.agent.migration_failed(migrate, str(exc), self.loop.time())
                return
            endpoint.start(driver.receive, TUN_BATCH)
        driver.endpoint = client.endpoint = endpoint
        old.close()
        if isinstance(driver.quic, TunnelQuicConnection):
            # RFC 9000 §9.4: another access, another path (and maybe another controller)
            driver.quic.reset_path_state(migrate.congestion_control)
        local = address_text(endpoint.local_address)
        log.info("socket moved access=%s local=%s", migrate.target.name, local)

    def _create_tun(
        self, mtu: int, assigned: tuple[IPv4Interface | IPv6Interface, ...] | None = None
    ) -> None:
        if self.tun is not None:
            return
        tun_config = self.config.tun
        if assigned is not None:  # mode masque: the concentrator's ADDRESS_ASSIGN
            tun_config = dataclasses.replace(tun_config, addresses=assigned)
        # L2 mode (README "L2 mode"): the same device as a TAP, carrying Ethernet frames
        kind = DeviceKind.TAP if self.config.payload is Payload.ETHERNET else DeviceKind.TUN
        try:
            # the device and its configuration thread, in the client's namespace
            with entered(self.netns):
                self.tun = TunDevice.create(
                    tun_config.name,
                    mtu=mtu,
                    addresses=tun_config.addresses,
                    routes=[str(r) for r in tun_config.routes],
                    kind=kind,
                    offload=tun_config.offload,
                    tso=tun_config.tso,
                    txqueuelen=tun_config.txqueuelen,
                )
        except TunError as exc:
            raise RuntimeFailure(str(exc)) from None
        self.tun.start_reading(self._guarded(self._on_tun_packets), TUN_BATCH)
        log.info(
            "tun up kind=%s name=%s mtu=%d addresses=%s routes=%s",
            kind.value,
            self.tun.name,
            mtu,
            ",".join(str(a) for a in tun_config.addresses),
            ",".join(str(r) for r in tun_config.routes) or "-",
        )

    # -- stream mode -----------------------------------------------------------------------------

    async def _start_stream_client(self) -> None:
        from tunnel.aio.stream_client import StreamClient

        # inbound streams (the reversed flow) may name only our own tunnel addresses
        inner = tuple(a.ip for a in self.config.tun.addresses)
        stream = StreamClient(self.config.stream, self._stream_current, inner)
        try:
            await stream.start()
        except Exception as exc:
            raise RuntimeFailure(f"stream mode could not start: {exc}") from None
        self.stream = stream

    def _stream_current(self) -> tuple[TunnelConnection, Callable[[], None]] | None:
        """The connection that carries new TCP streams now (README "Stream mode")."""
        path = self.agent.stream_carrier()
        if path is None or path.tunnel is None:
            return None
        return path.tunnel, functools.partial(self._transmit, path)

    # -- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The status document (keys: README "Status file")."""
        try:
            return self._snapshot()
        except Exception as exc:
            self._crash(exc, "snapshot")
            return {"role": "client", "pid": os.getpid(), "state": ClientState.STOPPED.value}

    def _snapshot(self) -> dict[str, Any]:
        document = self.agent.status()
        for entry in document["accesses"]:
            path = self.agent.path_on(entry["name"])
            client = self.clients.get(path) if path is not None else None
            if client is not None:
                udp = client.endpoint.stats
                entry["counters"]["udp_datagrams_sent"] = udp.datagrams_sent
                entry["counters"]["udp_datagrams_received"] = udp.datagrams_received
                entry["counters"]["udp_send_dropped"] = udp.send_dropped
        tun = self.tun
        stats = tun.stats if tun is not None else None
        document.update(
            role="client",
            name=self.config.name,
            pid=os.getpid(),
            time=time.time(),
            payload=self.config.payload.value,
            tun={
                "name": self.config.tun.name,
                "kind": "TAP" if self.config.payload is Payload.ETHERNET else "TUN",
                "mtu": tun.mtu if tun is not None else None,
                "rx_packets": stats.packets_read if stats else 0,
                "tx_packets": stats.packets_written if stats else 0,
                "rx_reads": stats.reads if stats else 0,
                "tx_writes": stats.writes if stats else 0,
                "read_errors": stats.read_errors if stats else 0,
                "rx_bytes": stats.bytes_read if stats else 0,
                "tx_bytes": stats.bytes_written if stats else 0,
                "write_drops": stats.write_drops if stats else 0,
            },
        )
        if self.stream is not None:
            with contextlib.suppress(Exception):
                document["stream"] = self.stream.stats()
        return document


async def _amain(config: ClientConfig) -> int:
    return await Client(config).main()


def run_client(config: ClientConfig) -> int:
    """Run the client until SIGINT/SIGTERM: 0 after a clean shutdown, 1 after a bug stopped it
    (its traceback logged). Raises RuntimeFailure (one sentence) for a failure the user must
    fix."""
    try:
        return run(_amain(config))
    except (TunError, EndpointError) as exc:
        raise RuntimeFailure(str(exc)) from None


__all__ = ["Client", "run_client"]
