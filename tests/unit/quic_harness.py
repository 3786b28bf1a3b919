"""In-memory network for aioquic endpoints: a fake clock, links with delays that a
test can cut, and no sockets (the shape of aioquic's tests/test_connection.py,
plus time and failures).

A `Path` is one client<->concentrator QUIC connection over two one-way `Link`s.
`Network.run(seconds)` advances the fake clock from event to event (datagram
arrivals and QUIC timers), feeding every QUIC event to the endpoint's
TunnelConnection (if any) and recording the tunnel events it returns.
"""

from __future__ import annotations

import datetime
import functools
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tunnel.protocol.quic_ext import TunnelQuicConnection

MAX_STEPS = 200_000


@functools.cache
def throwaway_certificate(
    common_name: str = "concentrator.test",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 certificate for `common_name`, made once per run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_configs(
    client_alpn: list[str],
    server_alpn: list[str] | None = None,
    max_datagram_size: int = 1200,
    max_datagram_frame_size: int | None = 65536,
    server_max_datagram_frame_size: int | None = None,
) -> tuple[QuicConfiguration, QuicConfiguration]:
    cert, key = throwaway_certificate()
    client = QuicConfiguration(
        is_client=True,
        alpn_protocols=client_alpn,
        max_datagram_size=max_datagram_size,
        max_datagram_frame_size=max_datagram_frame_size,
        verify_mode=ssl.CERT_NONE,
        server_name="concentrator.test",
    )
    server = QuicConfiguration(
        is_client=False,
        alpn_protocols=server_alpn if server_alpn is not None else client_alpn,
        max_datagram_size=max_datagram_size,
        max_datagram_frame_size=(
            server_max_datagram_frame_size
            if server_max_datagram_frame_size is not None
            else max_datagram_frame_size
        ),
        certificate=cert,
        private_key=key,
    )
    return client, server


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start


STALE_TIMER_STEP = 1e-6  # seconds the fake clock moves for a timer that asks for "now" again


@dataclass
class Link:
    """One direction of a path: fixed delay, can be cut (everything sent is lost); optionally
    a bottleneck of `rate` bytes/s (FIFO, unbounded queue), random loss (seeded) and an `mtu`
    above which datagrams vanish."""

    delay: float = 0.005
    up: bool = True
    in_flight: list[tuple[float, int, bytes]] = field(default_factory=list)
    sent: int = 0
    lost: int = 0
    rate: float | None = None
    loss: float = 0.0
    seed: int = 1
    mtu: int | None = None  # larger UDP payloads are dropped without a word (a PMTU black hole)
    too_big: int = 0
    _seq: int = 0
    _free_at: float = 0.0
    _random: random.Random | None = None

    def send(self, data: bytes, now: float) -> None:
        self.sent += 1
        if not self.up:
            self.lost += 1
            return
        if self.mtu is not None and len(data) > self.mtu:
            self.too_big += 1
            return
        departure = now
        if self.rate is not None:
            departure = self._free_at = max(self._free_at, now) + len(data) / self.rate
        if self.loss:
            if self._random is None:
                self._random = random.Random(self.seed)
            if self._random.random() < self.loss:
                self.lost += 1
                return
        self._seq += 1
        self.in_flight.append((departure + self.delay, self._seq, data))

    def due(self, now: float) -> list[bytes]:
        ready = sorted(item for item in self.in_flight if item[0] <= now)
        self.in_flight = [item for item in self.in_flight if item[0] > now]
        return [data for _, _, data in ready]

    def next_arrival(self) -> float | None:
        return min((item[0] for item in self.in_flight), default=None)


@dataclass
class Endpoint:
    quic: QuicConnection
    addr: tuple[str, int]
    tunnel: Any = None  # a TunnelConnection once the test attaches one
    quic_events: list[QuicEvent] = field(default_factory=list)
    tunnel_events: list[Any] = field(default_factory=list)
    on_tunnel_event: Callable[[Endpoint, Any], None] | None = None
    # A server has nowhere to send (and aioquic would fail) before its first datagram.
    active: bool = False


@dataclass
class Path:
    client: Endpoint
    server: Endpoint
    up_link: Link  # client -> server
    down_link: Link  # server -> client

    def set_up(self, up: bool) -> None:
        self.up_link.up = up
        self.down_link.up = up


class Network:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.paths: list[Path] = []

    def add_path(
        self,
        client_config: QuicConfiguration,
        server_config: QuicConfiguration,
        delay: float = 0.005,
        client_stream_mode: bool = False,
        server_stream_mode: bool = False,
        client_payload_ethertype: int | None = None,
    ) -> Path:
        client_quic = TunnelQuicConnection(
            configuration=client_config,
            stream_mode=client_stream_mode,
            payload_ethertype=client_payload_ethertype,
        )
        server_quic = TunnelQuicConnection(
            configuration=server_config,
            original_destination_connection_id=client_quic.original_destination_connection_id,
            stream_mode=server_stream_mode,
        )
        return self.add_connection_pair(client_quic, server_quic, delay)

    def add_connection_pair(
        self, client_quic: QuicConnection, server_quic: QuicConnection, delay: float = 0.005
    ) -> Path:
        """Wire an existing client/server pair (the server made with the client's
        original_destination_connection_id) and start the client's handshake."""
        index = len(self.paths)
        path = Path(
            client=Endpoint(client_quic, (f"10.0.{index}.2", 40000 + index)),
            server=Endpoint(server_quic, (f"10.0.{index}.1", 4433)),
            up_link=Link(delay=delay),
            down_link=Link(delay=delay),
        )
        client_quic.connect(path.server.addr, now=self.clock.now)
        path.client.active = True
        self.paths.append(path)
        return path

    # -- driving -----------------------------------------------------------------

    def _drain_events(self, endpoint: Endpoint) -> None:
        while (event := endpoint.quic.next_event()) is not None:
            endpoint.quic_events.append(event)
            if endpoint.tunnel is not None:
                for tunnel_event in endpoint.tunnel.handle_event(event):
                    endpoint.tunnel_events.append(tunnel_event)
                    if endpoint.on_tunnel_event is not None:
                        endpoint.on_tunnel_event(endpoint, tunnel_event)

    def _transmit(self) -> None:
        now = self.clock.now
        for path in self.paths:
            for endpoint, link in ((path.client, path.up_link), (path.server, path.down_link)):
                if not endpoint.active:
                    continue
                for data, _addr in endpoint.quic.datagrams_to_send(now=now):
                    link.send(data, now)

    def _settle(self) -> None:
        """Deliver everything due, fire due timers, and send, until quiet at `now`."""
        now = self.clock.now
        # A timer that asks again for the same instant once it was handled (aioquic's ACK due
        # exactly now while the pacer holds the packet: it treats ack_at == now as not due yet)
        # waits for the clock to move, as it would on a real one.
        handled: set[tuple[int, float]] = set()
        for _ in range(1000):
            busy = False
            for path in self.paths:
                for endpoint, link, peer in (
                    (path.server, path.up_link, path.client),
                    (path.client, path.down_link, path.server),
                ):
                    for data in link.due(now):
                        endpoint.quic.receive_datagram(data, peer.addr, now=now)
                        endpoint.active = True
                        busy = True
                    timer = endpoint.quic.get_timer() if endpoint.active else None
                    if timer is not None and timer <= now and (id(endpoint), timer) not in handled:
                        handled.add((id(endpoint), timer))
                        endpoint.quic.handle_timer(now=now)
                        busy = True
                    self._drain_events(endpoint)
            self._transmit()
            if not busy and not any(
                (arrival := link.next_arrival()) is not None and arrival <= now
                for path in self.paths
                for link in (path.up_link, path.down_link)
            ):
                return
        raise AssertionError("network did not settle at one instant")

    def _next_time(self) -> float | None:
        times: list[float] = []
        for path in self.paths:
            for link in (path.up_link, path.down_link):
                arrival = link.next_arrival()
                if arrival is not None:
                    times.append(arrival)
            for endpoint in (path.client, path.server):
                timer = endpoint.quic.get_timer() if endpoint.active else None
                if timer is not None:
                    # one handled at this instant already (see _settle): the next microsecond
                    times.append(max(timer, self.clock.now + STALE_TIMER_STEP))
        return min(times, default=None)

    def flush(self) -> None:
        """Send what the applications queued, without advancing time."""
        self._settle()

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Advance the fake clock by at most `seconds` (stops early once `until()`)."""
        end = self.clock.now + seconds
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
