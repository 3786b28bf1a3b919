"""The client agent (tunnel/agents/client.py) in an in-memory world on a fake clock: access
networks as pairs of one-way wires that a test can take down (link down: the agent is told) or
blackhole (the link stays up: nobody tells), real aioquic connections on both ends, and on the
concentrator's side either a minimal answerer of New/Join Session over a SessionTable that
records what reaches it (`Concentrator`), or the real concentrator core (`CoreConcentrator`).
`World` carries out the agent's actions the way tunnel/aio/client.py does (sockets bound to an
access, migration to a new socket, CONNECTION_CLOSE then the socket released, the TUN).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent

from tests.unit.quic_harness import STALE_TIMER_STEP, FakeClock, make_configs
from tunnel.agents.access_health import LinkState
from tunnel.agents.client import (
    Action,
    ClientAgent,
    ClosePath,
    CreateTun,
    EndProbe,
    Migrate,
    OpenPath,
    Path,
    ProbeAccess,
)
from tunnel.agents.concentrator import ConcentratorCore, PeerQuicConnection
from tunnel.aio.concentrator_setup import load_verifier, quic_configuration
from tunnel.config import ClientConfig, ConcentratorConfig, parse_client_config
from tunnel.protocol.connection import (
    AccessReportReceived,
    ConnectionClosed,
    JoinRequested,
    PacketReceived,
    SessionRequested,
    TunnelConnection,
    TunnelEvent,
)
from tunnel.protocol.quic_ext import MAX_DATAGRAM_SIZE, TunnelQuicConnection
from tunnel.protocol.stateless_reset import build_reset
from tunnel.session.table import JoinError, SessionTable
from tunnel.wire.datagram import PAYLOAD_ETHERTYPE
from tunnel.wire.messages import AccessId, AccessSignal
from tunnel.wire.modes import ALL_ALPN, MODE_ALPNS

CONCENTRATOR = ("10.100.0.1", 4433)
MAX_STEPS = 200_000
LINK_UP = LinkState(exists=True, up=True, carrier=True, has_address=True)
LINK_DOWN = LinkState(exists=True, up=True, carrier=False, has_address=True)


def client_config(
    mode: str = "tunnel", accesses: Sequence[str] = ("wifi", "5g"), *settings: str
) -> ClientConfig:
    """A client configuration (parsed from TOML, as qtun does) with `settings` as `--set`
    overrides, e.g. "failback=false", "limits.probe_interval=0.2"."""
    tables = "".join(
        f'[[access]]\nname = "{name}"\naccess_id = "{name}"\nlocal_address = "10.0.{i}.2"\n'
        for i, name in enumerate(accesses)
    )
    text = f"""
mode = "{mode}"
[concentrator]
address = "{CONCENTRATOR[0]}"
port = {CONCENTRATOR[1]}
{tables}
[tun]
addresses = ["10.8.0.3/32", "fd00:8::2/128"]
routes = ["10.200.0.0/16", "fd00:200::/32"]
[tls]
ca = "ca.pem"
cert = "client.pem"
key = "client.key"
"""
    return parse_client_config(text, overrides=settings)


@dataclass
class Wire:
    """One direction of one access: a fixed delay; while `up` is False everything sent is lost.
    Optionally a bottleneck of `rate` bytes/s (FIFO, unbounded queue) and random loss
    (seeded), as quic_harness.Link."""

    delay: float = 0.01
    up: bool = True
    in_flight: list[tuple[float, int, bytes, Any]] = field(default_factory=list)
    sent: int = 0
    lost: int = 0
    rate: float | None = None
    queue_bytes: int | None = None  # with a rate: drop-tail beyond this backlog (None: no cap)
    loss: float = 0.0
    seed: int = 1
    mtu: int | None = None  # larger UDP payloads are lost without a word (a PMTU black hole)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _free_at: float = 0.0
    _random: random.Random | None = None

    def send(self, data: bytes, dest: Any, now: float) -> None:
        self.sent += 1
        if not self.up or (self.mtu is not None and len(data) > self.mtu):
            self.lost += 1
            return
        departure = now
        if self.rate is not None:
            backlog = max(self._free_at - now, 0.0) * self.rate
            if self.queue_bytes is not None and backlog + len(data) > self.queue_bytes:
                self.lost += 1
                return
            departure = self._free_at = max(self._free_at, now) + len(data) / self.rate
        if self.loss:
            if self._random is None:
                self._random = random.Random(self.seed)
            if self._random.random() < self.loss:
                self.lost += 1
                return
        self.in_flight.append((departure + self.delay, next(self._seq), data, dest))

    def due(self, now: float) -> list[tuple[bytes, Any]]:
        ready = sorted(item for item in self.in_flight if item[0] <= now)
        self.in_flight = [item for item in self.in_flight if item[0] > now]
        return [(data, dest) for _, _, data, dest in ready]

    def next_arrival(self) -> float | None:
        return min((item[0] for item in self.in_flight), default=None)


@dataclass(eq=False)
class Access:
    name: str
    ip: str
    up: Wire
    down: Wire

    def cut(self, cut: bool, flush: bool = False) -> None:
        """Lose everything sent from now on (or no longer); `flush`: and what is in flight, as
        a link-down does to the packets queued in its shaper and on its wire."""
        self.up.up = self.down.up = not cut
        if cut and flush:
            for wire in (self.up, self.down):
                wire.lost += len(wire.in_flight)
                wire.in_flight.clear()

    def shape(
        self,
        rate: float | None = None,
        loss: float = 0.0,
        seed: int = 1,
        queue_bytes: int | None = None,
    ) -> None:
        """Both directions: a bottleneck of `rate` bytes/s (its queue capped at `queue_bytes`)
        and `loss` random loss."""
        for number, wire in enumerate((self.up, self.down)):
            wire.rate, wire.loss, wire.seed, wire._random = rate, loss, seed + number, None
            wire.queue_bytes = queue_bytes


@dataclass(eq=False)
class Conn:
    """One connection of the client (the agent's Path) and the concentrator's side of it."""

    path: Path
    client: QuicConnection
    server: QuicConnection
    server_tunnel: TunnelConnection
    access: Access
    socket: tuple[str, int]
    open: bool = True  # the client's socket exists
    server_active: bool = False
    server_gone: bool = False  # the concentrator restarted: nothing answers for it any more
    # tunnel mode's probe sockets (ProbeAccess), by access name
    probes: dict[str, tuple[str, int]] = field(default_factory=dict)

    def receives_on(self, socket: tuple[str, int]) -> bool:
        return self.open and (socket == self.socket or socket in self.probes.values())


class ConcentratorSide(Protocol):
    """What the world needs of the concentrator's side of the connections."""

    def server_side(
        self, client: QuicConnection, now: float
    ) -> tuple[QuicConnection, TunnelConnection]: ...

    def quic_event(self, conn: Conn, via: str, event: QuicEvent, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


@dataclass
class Concentrator:
    """A minimal concentrator: answers sessions from a SessionTable, records what arrives."""

    table: SessionTable[Conn] = field(
        default_factory=lambda: SessionTable(random_bytes=_counting_ids())
    )
    answer_sessions: bool = True
    # (time, the access the report came over, the access reported, its signal)
    reports: list[tuple[float, str, AccessId, AccessSignal]] = field(default_factory=list)
    packets: list[tuple[str, bytes]] = field(default_factory=list)  # (came over, packet)
    server_config: QuicConfiguration | None = None
    cid_worker: tuple[int, int] | None = None  # issue connection IDs as this worker would

    def server_side(
        self, client: QuicConnection, now: float
    ) -> tuple[QuicConnection, TunnelConnection]:
        server = TunnelQuicConnection(
            configuration=self.server_config,
            original_destination_connection_id=client.original_destination_connection_id,
            cid_worker=self.cid_worker,
        )
        return server, TunnelConnection(server)

    def quic_event(self, conn: Conn, via: str, event: QuicEvent, now: float) -> None:
        for tunnel_event in conn.server_tunnel.handle_event(event):
            self.on_event(conn, via, tunnel_event, now)

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def on_event(self, conn: Conn, via: str, event: TunnelEvent, now: float) -> None:
        tunnel = conn.server_tunnel
        if isinstance(event, SessionRequested) and self.answer_sessions:
            tunnel.accept_session(self.table.create(conn, event.qos, now).session_id)
        elif isinstance(event, JoinRequested) and self.answer_sessions:
            try:
                self.table.join(event.session_id, conn, now)
                tunnel.confirm_join()
            except JoinError as exc:
                tunnel.reject_join(exc.code)
        elif isinstance(event, AccessReportReceived):
            self.reports.append((now, via, event.access_id, event.signal))
        elif isinstance(event, PacketReceived):
            self.packets.append((via, event.packet))
        elif isinstance(event, ConnectionClosed):
            self.table.leave(conn, now)

    def forget_sessions(self) -> None:
        """As a restarted concentrator: no session is known any more."""
        self.table = SessionTable(random_bytes=_counting_ids(start=100))

    def report_list(self) -> list[tuple[str, AccessId, AccessSignal]]:
        """(access the report came over, access reported, signal), in arrival order."""
        return [(via, a, s) for _, via, a, s in self.reports]


class CoreConcentrator:
    """The real concentrator core (tunnel/agents/concentrator.py) as the world's concentrator,
    driven the way tunnel/aio/concentrator.py drives it; what it writes into its TUN in `tun`."""

    def __init__(self, config: ConcentratorConfig, now: float) -> None:
        verifier = load_verifier(config.tls.ca, config.tls.crl)
        self.core = ConcentratorCore(
            config, now, verifier=verifier, random_bytes=random.Random(7).randbytes
        )
        self.quic_config, _ = quic_configuration(config)
        self.stream_mode = config.stream.enabled
        self.pmtu_discovery = config.limits.pmtu_discovery
        self.tun: list[bytes] = []

    def server_side(
        self, client: QuicConnection, now: float
    ) -> tuple[QuicConnection, TunnelConnection]:
        server = PeerQuicConnection(
            configuration=self.quic_config,
            original_destination_connection_id=client.original_destination_connection_id,
            request_client_certificate=True,
            stream_mode=self.stream_mode,
            tickets=self.core.tickets,
            pmtu_discovery=self.pmtu_discovery,
        )
        return server, self.core.connection_opened(server, now)

    def quic_event(self, conn: Conn, via: str, event: QuicEvent, now: float) -> None:
        self.core.quic_event(conn.server_tunnel, event, now)
        self._carry_out()

    def get_timer(self) -> float | None:
        return self.core.get_timer()

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)
        self._carry_out()

    def from_tun(self, packets: Sequence[bytes], now: float) -> None:
        self.core.from_tun(packets, now)
        self._carry_out()

    def client_status(self) -> dict[str, Any]:
        (client,) = self.core.status()["clients"]
        return dict(client)

    def _write_tun(self, packets: list[bytes]) -> list[bool]:
        self.tun.extend(packets)
        return [True] * len(packets)

    def _carry_out(self) -> None:
        self.core.write_tun(self._write_tun)
        while self.core.next_action() is not None:
            pass  # transmitting is the world's job (every connection, every step)


def _counting_ids(start: int = 1) -> Callable[[int], bytes]:
    counter = itertools.count(start)
    return lambda n: next(counter).to_bytes(n, "big")


class World:
    """The agent for `config` in an in-memory world (see the module docstring)."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        delay: float = 0.01,
        server_alpn: Sequence[str] = ALL_ALPN,
        links_known: bool = True,
        concentrator: ConcentratorSide | None = None,
        client_quic_config: QuicConfiguration | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.config = config
        self.agent = ClientAgent(config, self.clock.now)
        names = [a.name for a in config.accesses] or ["default"]
        self.accesses = {
            name: Access(name, f"10.0.{i}.2", Wire(delay), Wire(delay))
            for i, name in enumerate(names)
        }
        self.concentrator = Concentrator()
        self.server: ConcentratorSide = concentrator or self.concentrator
        self.conns: list[Conn] = []
        self.by_path: dict[Path, Conn] = {}
        self.actions: list[tuple[float, Action]] = []
        self.tun_mtu: int | None = None
        self.tun: list[bytes] = []  # packets the agent wrote into the TUN
        self.bind_fails: set[str] = set()  # accesses whose sockets cannot be made
        self.probes_sent: list[tuple[float, str]] = []  # (time, access) of each ProbeAccess
        # the restarted concentrator answers a packet of a connection it lost with a stateless
        # reset (RFC 9000 §10.3), as ours does: it derives the token from its TLS key, here the
        # one the client holds (tests/unit/test_stateless_reset.py checks the derivation)
        self.resets = False
        self._random = random.Random(0)
        alpn = MODE_ALPNS[config.mode]
        self._client_config, server_config = make_configs(
            list(alpn), list(server_alpn), max_datagram_size=MAX_DATAGRAM_SIZE
        )
        if client_quic_config is not None:
            self._client_config = client_quic_config
        for quic_config in (self._client_config, server_config):
            quic_config.idle_timeout = config.limits.idle_timeout
        self.concentrator.server_config = server_config
        self._ports = itertools.count(40000)
        self._by_ip = {access.ip: access for access in self.accesses.values()}
        if links_known:
            for name in self.accesses:
                if name != "default":
                    self.agent.link_changed(name, LINK_UP, self.clock.now)

    # -- what a test does ---------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock.now

    def start(self) -> World:
        self.agent.start(self.now)
        self._settle()
        return self

    def set_link(self, name: str, usable: bool) -> None:
        """The link goes down/up and the kernel tells the client (netlink)."""
        self.accesses[name].cut(not usable, flush=True)
        self.agent.link_changed(name, LINK_UP if usable else LINK_DOWN, self.now)
        self._settle()

    def blackhole(self, name: str, on: bool) -> None:
        """Everything on the access is lost (or no longer), the link stays up: nobody tells."""
        self.accesses[name].cut(on)

    def restart_concentrator(self, side: ConcentratorSide) -> None:
        """The concentrator is replaced (killed, restarted): its connections are gone without a
        word; new connections reach `side`."""
        for conn in self.conns:
            conn.server_gone = True
        self.server = side

    def concentrator_closes(self, path: Path, reason: str = "closed by the test") -> None:
        """The concentrator closes its side of `path`'s connection (CONNECTION_CLOSE)."""
        conn = self.by_path[path]
        conn.server_tunnel.close(reason, error_code=0)
        self.concentrator.table.leave(conn, self.now)
        self._settle()

    def from_tun(self, packets: Sequence[bytes]) -> tuple[Path, ...]:
        forwarded = self.agent.from_tun(packets, self.now)
        self._settle()
        return forwarded.paths

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Advance the fake clock by at most `seconds` (stops early once `until()`)."""
        end = self.now + seconds
        self._settle()
        for _ in range(MAX_STEPS):
            if until is not None and until():
                return
            next_time = self._next_time()
            if next_time is None or next_time > end:
                self.clock.now = end
                self._settle()
                return
            self.clock.now = max(self.clock.now, next_time)
            self._settle()
        raise AssertionError("simulation exceeded its step bound")

    # -- observations ---------------------------------------------------------------------------

    def of(self, kind: type) -> list[Any]:
        return [a for _, a in self.actions if isinstance(a, kind)]

    def times_of(self, kind: type) -> list[float]:
        return [t for t, a in self.actions if isinstance(a, kind)]

    def conn(self, path: Path) -> Conn:
        return self.by_path[path]

    def up_path(self, name: str) -> Path:
        path = self.agent.path_on(name)
        assert path is not None, f"no connection carries traffic over {name}"
        return path

    def live_conns(self) -> list[Conn]:
        return [c for c in self.conns if c.open]

    # -- the program's part: carrying out actions ----------------------------------------------

    def _carry_out(self) -> bool:
        did = False
        while (action := self.agent.next_action()) is not None:
            did = True
            self.actions.append((self.now, action))
            if isinstance(action, OpenPath):
                self._open(action.path)
            elif isinstance(action, ClosePath):
                self._close(action.path)
            elif isinstance(action, Migrate):
                self._migrate(action)
            elif isinstance(action, CreateTun):
                assert self.tun_mtu is None, "the TUN is created once"
                self.tun_mtu = action.mtu
            elif isinstance(action, ProbeAccess):
                self._probe(action)
            elif isinstance(action, EndProbe):
                conn = self.by_path.get(action.path)
                if conn is not None:
                    conn.probes.pop(action.access.name, None)
            # Transmit: every connection transmits at each step; StatusChanged: no file here
        self.agent.write_tun(self.tun.extend if self.tun_mtu is not None else None)
        return did

    def _socket(self, access: Access) -> tuple[str, int]:
        return (access.ip, next(self._ports))

    def _open(self, path: Path) -> None:
        name = path.access.name if path.access is not None else "default"
        if name in self.bind_fails:
            self.agent.path_failed(path, f"cannot bind on {name}", self.now)
            return
        client = TunnelQuicConnection(
            configuration=dataclasses.replace(
                self._client_config, session_ticket=path.session_ticket
            ),
            session_ticket_handler=self.agent.ticket_received,
            payload_ethertype=PAYLOAD_ETHERTYPE[self.config.payload],
            stream_mode=self.config.stream.enabled,
            initial_dcid_byte=self.agent.worker_byte,  # as tunnel/aio/client.py
            pmtu_discovery=self.config.limits.pmtu_discovery,
        )
        server, server_tunnel = self.server.server_side(client, self.now)
        client.connect(CONCENTRATOR, now=self.now)  # as the program: before path_opened
        self.agent.path_opened(path, client, self.now)
        access = self.accesses[name]
        conn = Conn(path, client, server, server_tunnel, access, ("", 0))
        conn.socket = self._socket(access)
        self.conns.append(conn)
        self.by_path[path] = conn

    def _close(self, path: Path) -> None:
        conn = self.by_path.get(path)
        if conn is None or not conn.open:
            return
        self._transmit_client(conn)  # its CONNECTION_CLOSE, then the socket is gone
        conn.open = False

    def _migrate(self, migrate: Migrate) -> None:
        conn = self.by_path[migrate.path]
        if migrate.target.name in self.bind_fails:
            self.agent.migration_failed(migrate, f"cannot bind on {migrate.target.name}", self.now)
            return
        conn.access = self.accesses[migrate.target.name]
        if isinstance(conn.client, TunnelQuicConnection):  # as the program does
            conn.client.reset_path_state(migrate.congestion_control)
        # the program takes the probe socket of the target, if any, as the new one
        probe = conn.probes.pop(migrate.target.name, None)
        conn.socket = probe if probe is not None else self._socket(conn.access)

    def _probe(self, probe: ProbeAccess) -> None:
        conn = self.by_path.get(probe.path)
        if conn is None or not conn.open:
            return
        access = self.accesses[probe.access.name]
        socket = conn.probes.get(access.name)
        if socket is None:
            socket = conn.probes[access.name] = self._socket(access)
        self.probes_sent.append((self.now, access.name))
        access.up.send(probe.datagram, (conn, socket), self.now)

    # -- the network ------------------------------------------------------------------------------

    def _transmit_client(self, conn: Conn) -> None:
        for data, _addr in conn.client.datagrams_to_send(now=self.now):
            conn.access.up.send(data, (conn, conn.socket), self.now)

    def _transmit(self) -> None:
        now = self.now
        for conn in self.conns:
            if conn.open:
                self._transmit_client(conn)
            if conn.server_active and not conn.server_gone:
                for data, addr in conn.server.datagrams_to_send(now=now):
                    # to the socket it was sent to, over that socket's access
                    self._by_ip[addr[0]].down.send(data, (conn, addr), now)

    def _drain(self, conn: Conn) -> bool:
        did = False
        while (event := conn.client.next_event()) is not None:
            did = True
            if conn.open:
                self._client_event(conn, event)
        return self._drain_server(conn, conn.access) or did

    def _drain_server(self, conn: Conn, via: Access) -> bool:
        did = False
        while (event := conn.server.next_event()) is not None:
            did = True
            if not conn.server_gone:
                self.server.quic_event(conn, via.name, event, self.now)
        return did

    def _reset(self, conn: Conn, socket: tuple[str, int], trigger_size: int) -> None:
        token = conn.client._peer_cid.stateless_reset_token
        if not self.resets or not token:
            return
        reset = build_reset(token, trigger_size, self._random.randbytes)
        if reset is not None:
            self._by_ip[socket[0]].down.send(reset, (conn, socket), self.now)

    def _client_event(self, conn: Conn, event: QuicEvent) -> None:
        self.agent.quic_event(conn.path, event, self.now)

    def _settle(self) -> None:
        now = self.now
        # A QUIC timer is handled once per instant: aioquic's loss time (sent_time + loss_delay)
        # can round to `now` while `now - loss_delay` rounds just below sent_time, so handling
        # it again at the same instant changes nothing; a real clock has moved on by then.
        handled: set[tuple[int, float]] = set()
        for _ in range(1000):
            busy = False
            for access in self.accesses.values():
                for data, (conn, socket) in access.up.due(now):
                    if conn.server_gone:
                        self._reset(conn, socket, len(data))
                        continue
                    conn.server.receive_datagram(data, socket, now=now)
                    conn.server_active = busy = True
                    self._drain_server(conn, access)
                for data, (conn, socket) in access.down.due(now):
                    busy = True
                    if conn.receives_on(socket):
                        conn.client.receive_datagram(data, CONCENTRATOR, now=now)
            for conn in self.conns:
                server_active = conn.server_active and not conn.server_gone
                for quic, active in ((conn.client, conn.open), (conn.server, server_active)):
                    timer = quic.get_timer() if active else None
                    if timer is not None and timer <= now and (id(quic), timer) not in handled:
                        handled.add((id(quic), timer))
                        quic.handle_timer(now=now)
                        busy = True
                busy = self._drain(conn) or busy
            timer = self.agent.get_timer()
            if timer is not None and timer <= now:
                self.agent.handle_timer(now)
                timer = self.agent.get_timer()
                assert timer is None or timer > now, "the agent's timer did not move on"
                busy = True
            timer = self.server.get_timer()
            if timer is not None and timer <= now:
                self.server.handle_timer(now)
                busy = True
            busy = self._carry_out() or busy
            self._transmit()
            if not busy:
                return
        raise AssertionError("the world did not settle at one instant")

    def _next_time(self) -> float | None:
        times = [self.agent.get_timer(), self.server.get_timer()]
        for access in self.accesses.values():
            times += [access.up.next_arrival(), access.down.next_arrival()]
        quic_timers = []
        for conn in self.conns:
            if conn.open:
                quic_timers.append(conn.client.get_timer())
            if conn.server_active and not conn.server_gone:
                quic_timers.append(conn.server.get_timer())
        # one handled at this instant already (see _settle): the next microsecond
        times += [max(t, self.now + STALE_TIMER_STEP) for t in quic_timers if t is not None]
        return min((t for t in times if t is not None), default=None)


__all__ = [
    "LINK_DOWN",
    "LINK_UP",
    "Access",
    "Concentrator",
    "Conn",
    "CoreConcentrator",
    "Wire",
    "World",
    "client_config",
]
