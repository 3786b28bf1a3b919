"""UDP sockets bound to one access network, and the batched asyncio driver of aioquic connections.

Session mode (tunnel-session draft §tunnel session mode) runs one QUIC connection per access
network, so each connection needs its own UDP socket pinned to that access: aioquic has no API
to choose the local interface, so we bind the socket ourselves (source address and/or
SO_BINDTODEVICE).

Speed (figures: tests/integration/test_udp_quic.py, QUIC DATAGRAMs of 1100 bytes between two
namespaces over veth, 2 shared cores): aioquic's own asyncio layer handles one datagram per loop
callback and, on a fast path, its pacer releases ~4 packets per wakeup (45-69 Mbit/s here).
This layer
- drains up to `batch_size` datagrams per wakeup, feeds them all, then transmits once per
  touched connection (fewer transmit passes, timer re-arms and bigger ACK batches);
- releases what the pacer would allow within `pacing_slack` (1 ms) in one burst
  (405-434 Mbit/s);
- sends runs of equal-size datagrams with one sendmsg (UDP GSO, 484-538 Mbit/s) and reads
  coalesced datagrams with UDP GRO (+~8 % at the receiver);
- runs on uvloop when it is installed (`run`).

Pieces:
- `UdpEndpoint`: the socket (bind, buffers, batched receive/send with a bounded backlog).
- `QuicDriver`: feeds one QuicConnection from datagrams and time, sends what it produces.
- `QuicClient`: one endpoint + one driver (`connect`).
- `QuicServer`: one endpoint demultiplexing many connections by destination connection ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Any, TypeVar

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from tunnel.rate_limit import TokenBucket
from tunnel.stateless_reset import MAX_RESET_SIZE, build_reset, reset_token

DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024
DEFAULT_BATCH_SIZE = 64
MAX_SEND_BACKLOG = 4096  # datagrams kept while the socket is full; beyond that QUIC recovers loss
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
RECV_SIZE = 65535
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: setsockopt/cmsg giving the GSO segment size
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels (newer allow 128)
GSO_MAX_BYTES = 65000  # one sendmsg carries at most a 64 KB UDP payload
UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams, segment size in a cmsg
GRO_BUFFER = 65535
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
DEFAULT_PACING_SLACK = 0.001  # seconds of paced sending released in one burst (see transmit)
DEFAULT_MAX_BURST = 64  # datagrams per transmit pass at most
# stateless resets a server sends per second at most (and about as many in one burst)
RESETS_PER_SECOND = 100

Datagram = tuple[bytes, NetworkAddress]
T = TypeVar("T")


class EndpointError(Exception):
    """A UDP endpoint could not be set up; the message says what to do."""


def run(main: Awaitable[T]) -> T:
    """Run `main` on uvloop when it is installed (2-3x less loop overhead), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    result: T = uvloop.run(main)  # type: ignore[arg-type]
    return result


@dataclass
class BufferReport:
    """Socket buffer sizes asked for and granted (Linux reports twice the usable size)."""

    requested: int
    receive: int
    send: int

    @property
    def capped(self) -> bool:
        return self.receive < self.requested or self.send < self.requested

    def warning(self) -> str | None:
        """One sentence for the log when the kernel capped the buffers, else None."""
        if not self.capped:
            return None
        return (
            f"UDP socket buffers capped at receive {self.receive} / send {self.send} bytes "
            f"(asked {self.requested}): raise them with sysctl -w "
            f"net.core.rmem_max={self.requested} net.core.wmem_max={self.requested}"
        )


@dataclass
class UdpStats:
    datagrams_received: int = 0
    bytes_received: int = 0
    receive_wakeups: int = 0
    largest_receive_batch: int = 0
    datagrams_sent: int = 0
    bytes_sent: int = 0
    send_backlogged: int = 0  # datagrams that had to wait for the socket to drain
    send_dropped: int = 0  # backlog full or a send error: QUIC loss recovery takes over
    gso_sends: int = 0  # sendmsg calls that carried several datagrams (UDP_SEGMENT)
    gro_reads: int = 0  # reads that returned several coalesced datagrams (UDP_GRO)


class UdpEndpoint:
    """A non-blocking UDP socket bound to one access network."""

    def __init__(
        self, sock: socket.socket, buffers: BufferReport, gso: bool = False, gro: bool = False
    ) -> None:
        self.sock = sock
        self.gso = gso
        self.gro = gro
        self.buffers = buffers
        self.stats = UdpStats()
        self.local_address: NetworkAddress = sock.getsockname()
        self.family = sock.family
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: deque[Datagram] = deque()
        self._writer_armed = False

    @classmethod
    def bind(
        cls,
        local_address: str | None = None,
        port: int = 0,
        *,
        interface: str | None = None,
        family: socket.AddressFamily | None = None,
        buffer_bytes: int = DEFAULT_SOCKET_BUFFER,
        gso: bool = True,
        gro: bool = True,
    ) -> UdpEndpoint:
        """Bind to `local_address`:`port` (default: any address of `family`, IPv4 if not
        given), pinned to `interface` with SO_BINDTODEVICE when given. `gso` sends runs of
        equal-size datagrams in one system call (measured +15-20 % QUIC datagram goodput over
        veth); it turns itself off if the kernel or device refuses. `gro` lets the kernel hand
        over several datagrams in one read (UDP_GRO), off if the kernel lacks it."""
        if local_address is not None:
            try:
                parsed = ip_address(local_address.split("%")[0])
            except ValueError:
                raise EndpointError(
                    f"local address {local_address!r} is not an IP address: give one like "
                    "192.0.2.10 or 2001:db8::10"
                ) from None
            addr_family = socket.AF_INET6 if isinstance(parsed, IPv6Address) else socket.AF_INET
            if family is not None and family != addr_family:
                raise EndpointError(
                    f"local address {local_address} does not belong to the requested family "
                    f"{family.name}: give an address of that family"
                )
            family = addr_family
        family = family or socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                # one endpoint = one access network and one family: no v4-mapped surprises
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if interface is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
                except OSError as exc:
                    if exc.errno == errno.EPERM:
                        raise EndpointError(
                            f"binding to interface {interface!r} needs root (CAP_NET_RAW): "
                            "run as root or give a local address instead"
                        ) from None
                    raise EndpointError(
                        f"cannot bind to interface {interface!r} ({exc.strerror}): check "
                        "`ip link` for its name"
                    ) from None
            buffers = _set_buffers(sock, buffer_bytes)
            host = local_address or ("::" if family == socket.AF_INET6 else "0.0.0.0")
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise EndpointError(
                    f"cannot bind UDP {host} port {port} ({exc.strerror}): check that the "
                    "address is configured on this host and the port is free"
                ) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock, buffers, gso, _enable_gro(sock) if gro else False)

    # --- receive ---------------------------------------------------------------------------

    def receive_batch(self, max_datagrams: int = DEFAULT_BATCH_SIZE) -> list[Datagram]:
        """Up to `max_datagrams` datagrams waiting now (empty list if none; with `gro` a
        coalesced read may add up to GSO_MAX_SEGMENTS more, never a partial one)."""
        batch: list[Datagram] = []
        if self.gro:
            self._receive_coalesced(batch, max_datagrams)
        else:
            recvfrom = self.sock.recvfrom
            for _ in range(max_datagrams):
                try:
                    data, addr = recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    # ICMP errors surface as ECONNREFUSED etc. on the next call: not fatal.
                    continue
                batch.append((data, addr))
        if batch:
            stats = self.stats
            stats.datagrams_received += len(batch)
            stats.bytes_received += sum(len(d) for d, _ in batch)
            stats.receive_wakeups += 1
            if len(batch) > stats.largest_receive_batch:
                stats.largest_receive_batch = len(batch)
        return batch

    def _receive_coalesced(self, batch: list[Datagram], max_datagrams: int) -> None:
        # With UDP_GRO the kernel may hand over several datagrams of one flow in one buffer
        # (e.g. a GSO send crossing a veth unsegmented) and says the segment size in a cmsg.
        recvmsg = self.sock.recvmsg
        while len(batch) < max_datagrams:
            try:
                data, ancillary, _flags, addr = recvmsg(GRO_BUFFER, GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            segment = 0
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO:
                    segment = int.from_bytes(value[:4], sys.byteorder)
            if segment and len(data) > segment:
                self.stats.gro_reads += 1
                batch.extend((data[i : i + segment], addr) for i in range(0, len(data), segment))
            else:
                batch.append((data, addr))

    def start(
        self,
        on_datagrams: Callable[[list[Datagram]], None],
        batch_size: int = DEFAULT_BATCH_SIZE,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Call `on_datagrams(batch)` from the loop whenever datagrams wait."""
        self._loop = loop or asyncio.get_running_loop()

        def ready() -> None:
            batch = self.receive_batch(batch_size)
            if batch:
                on_datagrams(batch)

        self._loop.add_reader(self.sock.fileno(), ready)

    # --- send ------------------------------------------------------------------------------

    def send_batch(self, datagrams: Iterable[Datagram]) -> None:
        """Send every datagram, in order; what the socket cannot take now waits in a bounded
        backlog flushed when the socket becomes writable. With `gso`, runs of equal-size
        datagrams to one address leave in one sendmsg (UDP generic segmentation offload)."""
        if self._backlog:
            self._queue(datagrams)
            return
        items = datagrams if isinstance(datagrams, list) else list(datagrams)
        if self.gso and len(items) > 1:
            self._send_segmented(items)
            return
        sendto = self.sock.sendto
        sent = 0
        sent_bytes = 0
        for index, (data, addr) in enumerate(items):
            try:
                sendto(data, addr)
            except BlockingIOError:
                self._queue(items[index:])
                break
            except OSError:
                self.stats.send_dropped += 1
                continue
            sent += 1
            sent_bytes += len(data)
        self.stats.datagrams_sent += sent
        self.stats.bytes_sent += sent_bytes

    def _send_segmented(self, items: list[Datagram]) -> None:
        # A run: consecutive datagrams to the same address, all of the first one's size except
        # possibly a shorter last one (the kernel's rule for UDP_SEGMENT), at most
        # GSO_MAX_SEGMENTS and 64 KB in total.
        index = 0
        count = len(items)
        while index < count:
            data, addr = items[index]
            size = len(data)
            end = index + 1
            limit = min(count, index + GSO_MAX_SEGMENTS, index + GSO_MAX_BYTES // max(size, 1))
            while end < limit:
                next_data, next_addr = items[end]
                if next_addr != addr or len(next_data) > size:
                    break
                end += 1
                if len(next_data) < size:
                    break
            try:
                if end - index == 1:
                    self.sock.sendto(data, addr)
                else:
                    payload = b"".join(d for d, _ in items[index:end])
                    segment = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
                    self.sock.sendmsg([payload], segment, 0, addr)
            except BlockingIOError:
                self._queue(items[index:])
                return
            except OSError as exc:
                if end - index > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                    # the route's device cannot segment: fall back to one sendto per datagram
                    self.gso = False
                    self.send_batch(items[index:])
                    return
                self.stats.send_dropped += end - index
                index = end
                continue
            self.stats.datagrams_sent += end - index
            self.stats.bytes_sent += sum(len(d) for d, _ in items[index:end])
            if end - index > 1:
                self.stats.gso_sends += 1
            index = end

    def _queue(self, datagrams: Iterable[Datagram]) -> None:
        for item in datagrams:
            if len(self._backlog) >= MAX_SEND_BACKLOG:
                self.stats.send_dropped += 1
            else:
                self._backlog.append(item)
                self.stats.send_backlogged += 1
        if self._backlog and not self._writer_armed:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()  # a send-only endpoint: never started
            self._loop.add_writer(self.sock.fileno(), self._flush_backlog)
            self._writer_armed = True

    def _flush_backlog(self) -> None:
        backlog = self._backlog
        while backlog:
            data, addr = backlog[0]
            try:
                self.sock.sendto(data, addr)
            except BlockingIOError:
                return
            except OSError:
                self.stats.send_dropped += 1
            else:
                self.stats.datagrams_sent += 1
                self.stats.bytes_sent += len(data)
            backlog.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())
        self._writer_armed = False

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            if self._writer_armed:
                self._loop.remove_writer(self.sock.fileno())
        self._backlog.clear()
        self.sock.close()


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def _set_buffers(sock: socket.socket, requested: int) -> BufferReport:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, requested)
        if sock.getsockopt(socket.SOL_SOCKET, option) // 2 < requested:
            # SO_RCVBUFFORCE/SO_SNDBUFFORCE pass the rmem_max/wmem_max cap when we are root.
            force = {socket.SO_RCVBUF: 33, socket.SO_SNDBUF: 32}[option]
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, force, requested)
    # Linux doubles the value for bookkeeping; report what the application can use.
    return BufferReport(
        requested=requested,
        receive=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2,
        send=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2,
    )


# --- the QUIC driver ---------------------------------------------------------------------------

EventHandler = Callable[[events.QuicEvent], None]
# called with keyword arguments configuration= (and, on a server,
# original_destination_connection_id=)
ConnectionFactory = Callable[..., QuicConnection]


class QuicDriver:
    """Drives one aioquic QuicConnection: datagrams and timers in, datagrams out.

    Give it the connection, something to send with (a UdpEndpoint) and an event handler (e.g. a
    TunnelConnection's handle_event). After changing the connection yourself (sending a
    datagram or stream data) call `transmit()` — once per batch, not per packet.
    """

    def __init__(
        self,
        quic: QuicConnection,
        endpoint: UdpEndpoint,
        on_event: EventHandler | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        pacing_slack: float = DEFAULT_PACING_SLACK,
        max_burst: int = DEFAULT_MAX_BURST,
    ) -> None:
        self.quic = quic
        self.endpoint = endpoint
        self.pacing_slack = pacing_slack
        self.max_burst = max_burst
        self.on_event: EventHandler = on_event or (lambda event: None)
        self._loop = loop or asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_scheduled = False
        self._connected = self._loop.create_future()
        self._closed = asyncio.Event()
        # set by QuicServer to keep its connection-ID table current
        self.on_cid_issued: Callable[[bytes], None] | None = None
        self.on_cid_retired: Callable[[bytes], None] | None = None
        self.on_terminated: Callable[[], None] | None = None

    # feeding

    def receive(self, batch: Sequence[Datagram]) -> None:
        """Feed a batch of datagrams from the network, handle events, transmit once."""
        self.receive_without_transmit(batch)
        self.transmit()

    def receive_without_transmit(self, batch: Sequence[Datagram]) -> None:
        now = self._loop.time()
        receive = self.quic.receive_datagram
        for data, addr in batch:
            receive(data, addr, now)
        self._process_events()

    def transmit(self) -> None:
        """Send what the connection has to send now and re-arm its timer."""
        self._transmit_scheduled = False
        quic = self.quic
        now = self._loop.time()
        datagrams = quic.datagrams_to_send(now=now)
        # aioquic's pacer keeps a bucket of at most 16 packets' worth of time; on a fast path
        # that is a few microseconds, so each call releases ~4 packets and the loop would wake
        # up once per 4 packets. Release what is due within `pacing_slack` now, in one burst
        # (bounded by max_burst): the rate over a millisecond is unchanged, the wakeups are not.
        while datagrams and len(datagrams) < self.max_burst:
            due = quic.get_timer()
            if due is None or due > now + self.pacing_slack:
                break
            more = quic.datagrams_to_send(now=max(now, due))
            if not more:
                break
            datagrams += more
        self.endpoint.send_batch(datagrams)
        timer_at = quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def transmit_soon(self) -> None:
        """Transmit at the end of this loop iteration (coalesces many calls into one)."""
        if not self._transmit_scheduled:
            self._transmit_scheduled = True
            self._loop.call_soon(self.transmit)

    def _handle_timer(self) -> None:
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = None
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            if isinstance(event, events.HandshakeCompleted):
                if not self._connected.done():
                    self._connected.set_result(None)
            elif isinstance(event, events.ConnectionIdIssued):
                if self.on_cid_issued is not None:
                    self.on_cid_issued(event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                if self.on_cid_retired is not None:
                    self.on_cid_retired(event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                if not self._connected.done():
                    self._connected.set_exception(
                        ConnectionError(
                            f"QUIC connection closed during handshake: {event.reason_phrase} "
                            f"(error {event.error_code:#x})"
                        )
                    )
                if self.on_terminated is not None:
                    self.on_terminated()
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._closed.set()
            self.on_event(event)
            event = self.quic.next_event()

    # life cycle

    async def wait_connected(self) -> None:
        """Wait for the handshake; ConnectionError if the connection closed instead."""
        await asyncio.shield(self._connected)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
        """Start closing the connection (CONNECTION_CLOSE is sent at once)."""
        self.quic.close(error_code=error_code, reason_phrase=reason_phrase)
        self.transmit()


class QuicClient:
    """A client connection: one UdpEndpoint (bound to one access network) and its driver."""

    def __init__(self, endpoint: UdpEndpoint, driver: QuicDriver) -> None:
        self.endpoint = endpoint
        self.driver = driver

    @classmethod
    async def connect(
        cls,
        endpoint: UdpEndpoint,
        remote: NetworkAddress,
        configuration: QuicConfiguration,
        on_event: EventHandler | None = None,
        *,
        timeout: float = 10.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        create_connection: ConnectionFactory = QuicConnection,
        pacing_slack: float = DEFAULT_PACING_SLACK,
    ) -> QuicClient:
        """Connect over `endpoint` to `remote` (host, port) and wait for the handshake;
        ConnectionError with one sentence if it fails or takes more than `timeout` seconds.
        `create_connection(configuration=...)` makes the QuicConnection (e.g. a subclass from
        tunnel/quic_ext.py)."""
        remote = _remote_for(endpoint, remote)
        quic = create_connection(configuration=configuration)
        driver = QuicDriver(quic, endpoint, on_event, pacing_slack=pacing_slack)
        endpoint.start(driver.receive, batch_size)
        quic.connect(remote, now=asyncio.get_running_loop().time())
        driver.transmit()
        try:
            await asyncio.wait_for(driver.wait_connected(), timeout)
        except TimeoutError:
            driver.close()
            raise ConnectionError(
                f"no QUIC handshake with {remote[0]} port {remote[1]} within {timeout:g} s: "
                "check that the concentrator runs and is reachable over this access"
            ) from None
        return cls(endpoint, driver)

    async def close(self) -> None:
        """Close the connection (bounded wait for the peer) and the socket."""
        if not self.driver.closed:
            self.driver.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.driver.wait_closed(), 1.0)
        self.endpoint.close()


def _remote_for(endpoint: UdpEndpoint, remote: NetworkAddress) -> NetworkAddress:
    host, port = remote[0], remote[1]
    try:
        parsed = ip_address(host)
    except ValueError:
        raise ConnectionError(f"remote {host!r} is not an IP address: give one") from None
    is_v6 = isinstance(parsed, IPv6Address)
    if is_v6 != (endpoint.family == socket.AF_INET6):
        raise ConnectionError(
            f"remote {host} and local {endpoint.local_address[0]} are of different IP families: "
            "bind the endpoint in the remote's family"
        )
    if is_v6:
        # recvfrom on an AF_INET6 socket gives (host, port, flowinfo, scope_id): aioquic compares
        # addresses as tuples, so the remote must have the same shape or every packet from the
        # server looks like it came from a new path.
        return (str(parsed), int(port), 0, 0)
    return (str(parsed), int(port))


NewConnectionHandler = Callable[[QuicDriver], None]


class QuicServer:
    """One UDP socket serving many QUIC connections, demultiplexed by destination connection ID.

    For each new connection `on_connection(driver)` is called before the first datagram is
    processed: set `driver.on_event` there. Datagrams of one batch are all fed first, then each
    connection that got any transmits once.
    """

    def __init__(
        self,
        endpoint: UdpEndpoint,
        configuration: QuicConfiguration,
        on_connection: NewConnectionHandler,
        *,
        max_connections: int | None = None,
        create_connection: ConnectionFactory = QuicConnection,
        pacing_slack: float = DEFAULT_PACING_SLACK,
        reset_key: bytes | None = None,
    ) -> None:
        """`reset_key`: answer 1-RTT packets of connections we do not know with a stateless
        reset (RFC 9000 §10.3) whose token is derived from it — the connections must have
        been made with the same key (quic_ext.TunnelQuicConnection reset_key)."""
        self.endpoint = endpoint
        self.create_connection = create_connection
        self.reset_key = reset_key
        self.resets_sent = 0
        # bounds the work and the traffic a flood of unknown packets can cause (§10.3.3)
        self._reset_budget = TokenBucket(RESETS_PER_SECOND * MAX_RESET_SIZE)
        self.pacing_slack = pacing_slack
        self.configuration = configuration
        self.on_connection = on_connection
        self.max_connections = max_connections
        self.refused_connections = 0
        self._drivers: dict[bytes, QuicDriver] = {}
        self._loop = asyncio.get_running_loop()

    @property
    def connections(self) -> set[QuicDriver]:
        return set(self._drivers.values())

    def start(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.endpoint.start(self._on_datagrams, batch_size)

    def _on_datagrams(self, batch: list[Datagram]) -> None:
        touched: dict[QuicDriver, list[Datagram]] = {}
        cid_length = self.configuration.connection_id_length
        for data, addr in batch:
            try:
                header = pull_quic_header(Buffer(data=data), host_cid_length=cid_length)
            except ValueError:
                continue
            driver = self._drivers.get(header.destination_cid)
            if driver is None:
                driver = self._maybe_accept(data, addr, header)
                if driver is None:
                    continue
            touched.setdefault(driver, []).append((data, addr))
        for driver, datagrams in touched.items():
            driver.receive_without_transmit(datagrams)
        for driver in touched:
            driver.transmit()

    def _maybe_accept(self, data: bytes, addr: NetworkAddress, header: Any) -> QuicDriver | None:
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self.configuration.supported_versions
        ):
            # RFC 9000 §6.1; never answer a version negotiation with one (reflection loops)
            self.endpoint.send_batch(
                [
                    (
                        encode_quic_version_negotiation(
                            source_cid=header.destination_cid,
                            destination_cid=header.source_cid,
                            supported_versions=self.configuration.supported_versions,
                        ),
                        addr,
                    )
                ]
            )
            return None
        if header.packet_type == QuicPacketType.ONE_RTT:
            self._send_reset(data, addr, header.destination_cid)
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return None
        if self.max_connections is not None and len(self.connections) >= self.max_connections:
            self.refused_connections += 1
            return None
        quic = self.create_connection(
            configuration=self.configuration,
            original_destination_connection_id=header.destination_cid,
        )
        driver = QuicDriver(quic, self.endpoint, loop=self._loop, pacing_slack=self.pacing_slack)
        drivers = self._drivers

        def issued(cid: bytes) -> None:
            drivers[cid] = driver

        def retired(cid: bytes) -> None:
            drivers.pop(cid, None)

        def terminated() -> None:
            for cid in [c for c, d in drivers.items() if d is driver]:
                del drivers[cid]

        driver.on_cid_issued = issued
        driver.on_cid_retired = retired
        driver.on_terminated = terminated
        drivers[header.destination_cid] = driver
        drivers[quic.host_cid] = driver
        self.on_connection(driver)
        return driver

    def _send_reset(self, data: bytes, addr: NetworkAddress, cid: bytes) -> None:
        """A 1-RTT packet for a connection we do not have (we restarted, or it ended): tell
        the peer at once with a stateless reset rather than let it wait for a timeout."""
        if self.reset_key is None:
            return
        reset = build_reset(reset_token(self.reset_key, cid), len(data), os.urandom)
        if reset is None or not self._reset_budget.allow(len(reset), self._loop.time()):
            return
        self.endpoint.send_batch([(reset, addr)])
        self.resets_sent += 1

    async def close(self) -> None:
        """Close every connection (bounded wait) and the socket."""
        drivers = self.connections
        for driver in drivers:
            if not driver.closed:
                driver.close()
        if drivers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(d.wait_closed() for d in drivers)), timeout=1.0
                )
        self.endpoint.close()


__all__ = [
    "BufferReport",
    "EndpointError",
    "QuicClient",
    "QuicDriver",
    "QuicServer",
    "UdpEndpoint",
    "UdpStats",
    "run",
]
