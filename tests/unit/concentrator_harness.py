"""The real concentrator core on quic_harness's in-memory network: clients are real
TunnelQuicConnections presenting certificates of scripts/make-certs, the concentrator's side is
the program's own QUIC configuration (tunnel/aio/concentrator_setup.py) and PeerQuicConnection,
and every aioquic event of it goes to `ConcentratorCore.quic_event`, as the program's QuicDriver
hands them over. `CoreLab` plays the program's part: it carries out the actions, keeps what was
written into the TUN, and fires the core's timer on the fake clock.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from aioquic.tls import SessionTicket

from testbed.hostile import client_configuration
from tests.unit.quic_harness import Endpoint, FakeClock, Network
from tests.unit.quic_harness import Path as NetPath
from tunnel.agents.concentrator import (
    Action,
    ConcentratorCore,
    PeerQuicConnection,
    TapClosed,
    TapOpened,
)
from tunnel.aio.concentrator_setup import load_verifier, quic_configuration
from tunnel.config import ConcentratorConfig, parse_concentrator_config
from tunnel.policy.addresses import PoolClaims
from tunnel.policy.client_slots import ClientSlots
from tunnel.protocol.connection import TunnelConnection, TunnelEvent
from tunnel.protocol.quic_ext import TunnelQuicConnection

REPO = Path(__file__).resolve().parents[2]
CLIENTS = ("alice", "bob", "carol", "dave")
"""alice: a [[client]] with static addresses; carol and dave: admitted by the pool; bob: signed
by the CA, served by nobody (unless a test admits him)."""


def make_certs(out: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make-certs"), "--out", str(out), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def lab_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our CA and its certificates (made once per run); `foreign/` is another CA that also
    issued an "alice"."""
    out = tmp_path_factory.mktemp("core-certs")
    make_certs(out, "--clients", *CLIENTS)
    make_certs(out / "foreign", "--clients", "alice")
    return out


def copy_ca(certs: Path, into: Path) -> Path:
    """A copy of the CA (for tests that revoke certificates)."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("ca.pem", "ca.key", "concentrator.pem", "concentrator.key"):
        shutil.copy(certs / name, into / name)
    for client in CLIENTS:
        shutil.copy(certs / f"{client}.pem", into / f"{client}.pem")
        shutil.copy(certs / f"{client}.key", into / f"{client}.key")
    return into


def concentrator_config(
    certs: Path, *overrides: str, extra: str = "", pool: bool = True
) -> ConcentratorConfig:
    """Both modes, alice static (10.8.0.2, fd00:8::2), a pool admitting carol and dave (none
    with `pool` false: every client static, as workers need)."""
    text = f"""
modes = ["tunnel", "session"]
scheduler = "failover"
{extra}
[listen]
addresses = ["192.0.2.1"]
[tun]
name = "qcore0"
addresses = ["10.8.0.1/24", "fd00:8::1/64"]
[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/concentrator.pem"
key = "{certs}/concentrator.key"
[[client]]
name = "alice"
addresses = ["10.8.0.2/32", "fd00:8::2/128"]
"""
    if pool:
        text += '[pool]\nipv4 = "10.8.1.0/24"\nipv6 = "fd00:8:1::/64"\nadmit = ["carol", "dave"]\n'
    return parse_concentrator_config(text, overrides=list(overrides))


@dataclass
class Conn:
    """One client connection: the client's side and the core's."""

    path: NetPath
    client: TunnelConnection
    server: TunnelConnection

    @property
    def events(self) -> list[Any]:
        """The client's tunnel events so far."""
        return self.path.client.tunnel_events

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def cut(self) -> None:
        self.path.set_up(False)


class CoreNetwork(Network):
    """A Network whose concentrator endpoints hand their raw QUIC events to a handler."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__(clock)
        self.quic_handlers: dict[int, Callable[[QuicEvent], None]] = {}

    def _drain_events(self, endpoint: Endpoint) -> None:
        handler = self.quic_handlers.get(id(endpoint))
        if handler is None:
            super()._drain_events(endpoint)
            return
        while (event := endpoint.quic.next_event()) is not None:
            endpoint.quic_events.append(event)
            handler(event)


@dataclass
class CoreLab:
    config: ConcentratorConfig
    certs: Path
    net: CoreNetwork = field(default_factory=CoreNetwork)
    tun: list[bytes] = field(default_factory=list)
    """Packets the core wrote into the TUN, in order."""
    tun_accepts: bool = True
    """What TunDevice.write answers (False: the kernel refused the packet)."""
    actions: list[Action] = field(default_factory=list)
    taps: dict[str, list[bytes]] = field(default_factory=dict)
    """Frames the core wrote into each Ethernet client's TAP, in order (a TAP exists from its
    TapOpened to its TapClosed)."""
    stream_events: list[tuple[TunnelConnection, TunnelEvent]] = field(default_factory=list)
    client_slots: ClientSlots | None = None
    """Shared with another CoreLab: two workers' cores (README "Workers")."""
    pool_claims: PoolClaims | None = None
    """Likewise: the pool addresses the other worker's clients hold."""

    def __post_init__(self) -> None:
        verifier = load_verifier(self.config.tls.ca, self.config.tls.crl)
        self.core = ConcentratorCore(
            self.config,
            self.now,
            verifier=verifier,
            random_bytes=random.Random(7).randbytes,
            client_slots=self.client_slots,
            pool_claims=self.pool_claims,
        )
        self.server_quic_config, _ = quic_configuration(self.config)

    @property
    def now(self) -> float:
        return self.net.clock.now

    def connect(
        self,
        name: str | None = "alice",
        alpn: str = "qt",
        *,
        delay: float = 0.005,
        cert: Path | None = None,
        key: Path | None = None,
        client_config: QuicConfiguration | None = None,
        stream_mode: bool = False,
        payload_ethertype: int | None = None,
        settle: float = 0.5,
        ticket_handler: Callable[[SessionTicket], None] | None = None,
        early_join: bytes | None = None,
    ) -> Conn:
        """A client connection presenting `name`'s certificate (None: no certificate), run for
        `settle` seconds (the handshake and the core's answer). `ticket_handler` receives the
        session tickets the concentrator issues (client_config.session_ticket presents one);
        `early_join`: a Join Session of that ID queued right after connect(), in 0-RTT if the
        ticket allows it."""
        if client_config is None:
            if cert is None and name is not None:
                cert, key = self.certs / f"{name}.pem", self.certs / f"{name}.key"
            client_config = client_configuration(self.certs / "ca.pem", [alpn], cert, key)
        client_quic = TunnelQuicConnection(
            configuration=client_config,
            stream_mode=stream_mode,
            payload_ethertype=payload_ethertype,
            session_ticket_handler=ticket_handler,
        )
        options: dict[str, Any] = {"stream_mode": True} if stream_mode else {}
        server_quic = PeerQuicConnection(
            configuration=self.server_quic_config,
            original_destination_connection_id=client_quic.original_destination_connection_id,
            request_client_certificate=True,
            tickets=self.core.tickets,
            **options,
        )
        path = self.net.add_connection_pair(client_quic, server_quic, delay)
        path.client.tunnel = TunnelConnection(client_quic)
        if early_join is not None:
            path.client.tunnel.join_session_early(early_join)
        server = self.core.connection_opened(server_quic, self.now)
        self.net.quic_handlers[id(path.server)] = lambda event: self._feed(server, event)
        conn = Conn(path, path.client.tunnel, server)
        self.run(settle)
        return conn

    def _feed(self, connection: TunnelConnection, event: QuicEvent) -> None:
        for stream_event in self.core.quic_event(connection, event, self.now):
            self.stream_events.append((connection, stream_event))
        self.carry_out()

    def _write_tun(self, packets: list[bytes]) -> list[bool]:
        if self.tun_accepts:
            self.tun.extend(packets)
        return [self.tun_accepts] * len(packets)

    def _write_tap(self, client: str, frame: bytes) -> bool:
        tap = self.taps.get(client)
        if tap is None:
            return False
        tap.append(frame)
        return True

    def carry_out(self) -> None:
        """What the program does after each input (transmitting is the network's job here)."""
        self.core.write_tun(self._write_tun)
        while (action := self.core.next_action()) is not None:
            self.actions.append(action)
            if isinstance(action, TapOpened):
                self.taps[action.client] = []
            elif isinstance(action, TapClosed):
                self.taps.pop(action.client, None)
        self.core.write_taps(self._write_tap)

    def from_tap(self, client: str, frames: Sequence[bytes]) -> tuple[TunnelConnection, ...]:
        forwarded = self.core.from_tap(client, frames, self.now)
        self.carry_out()
        self.net.flush()
        return forwarded.connections

    def from_tun(self, packets: Sequence[bytes]) -> tuple[TunnelConnection, ...]:
        forwarded = self.core.from_tun(packets, self.now)
        self.carry_out()
        self.net.flush()
        return forwarded.connections

    def run(self, seconds: float) -> None:
        """Advance the fake clock by `seconds`, firing the core's timer when it is due."""
        clock = self.net.clock
        end = clock.now + seconds
        for _ in range(100_000):
            timer = self.core.get_timer()
            if timer is not None and timer <= clock.now:
                self.core.handle_timer(clock.now)
                self.carry_out()
                self.net.flush()
                continue
            target = end if timer is None else min(end, timer)
            self.net.run(max(0.0, target - clock.now))
            clock.now = max(clock.now, target)
            timer = self.core.get_timer()  # what arrived meanwhile may have set one
            if clock.now >= end and (timer is None or timer > end):
                return
        raise AssertionError("the core's timer kept firing")

    def run_until(self, done: Callable[[], bool], seconds: float = 5.0, step: float = 0.01) -> None:
        """Run in steps of `step` until `done()`; AssertionError after `seconds`."""
        for _ in range(round(seconds / step)):
            if done():
                return
            self.run(step)
        assert done(), f"not done within {seconds} s of the fake clock"

    def status_of(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            c for c in self.core.status()["clients"] if c["name"] == name
        ]
        (client,) = found
        return client

    def of(self, kind: type) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]


def lab(
    certs: Path,
    *overrides: str,
    extra: str = "",
    client_slots: ClientSlots | None = None,
    pool_claims: PoolClaims | None = None,
) -> CoreLab:
    config = concentrator_config(certs, *overrides, extra=extra)
    return CoreLab(config, certs, client_slots=client_slots, pool_claims=pool_claims)
