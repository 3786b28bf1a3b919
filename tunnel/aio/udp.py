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
- `QuicServer`: endpoints (listeners) demultiplexing many connections by destination
  connection ID through one table, admitting new ones (Retry, half-open cap and handshake
  timeout: tunnel/policy/address_validation.py) and bounding its replies to unknown senders per
  source prefix (tunnel/policy/rate_limit.py).

Failures stay with their connection: an exception while one connection handles a datagram,
a timer or an event closes that connection (INTERNAL_ERROR), is logged once on "qtun.udp" and
counted (QuicServer.internal_errors); the rest of the batch and the other connections go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import os
import socket
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Any, TypeVar

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import (
    TRANSPORT_CLOSE_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
)
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler

from tunnel.policy.address_validation import (
    AdmissionLimits,
    HandshakeGuard,
    InitialVerdict,
    TokenStatus,
)
from tunnel.policy.rate_limit import PrefixBudget
from tunnel.protocol.connection import INTERNAL_ERROR_REASON
from tunnel.protocol.quic_ext import (
    SoloDatagram,
    TunnelQuicConnection,
    nothing_decrypted,
    steer_connection_id,
)
from tunnel.protocol.stateless_reset import (
    build_reset,
    is_tagged_connection_id,
    reset_size,
    reset_token,
)
from tunnel.user_error import RuntimeFailure

DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024
DEFAULT_BATCH_SIZE = 64
MAX_SEND_BACKLOG = 4096  # datagrams kept while the socket is full; beyond that QUIC recovers loss
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
RECV_SIZE = 65535
SOL_UDP = 17
IP_MTU_DISCOVER = 10  # linux/in.h
IPV6_MTU_DISCOVER = 23  # linux/in6.h
IP_PMTUDISC_PROBE = 3  # DF set, no local fragmentation, the kernel's PMTU ignored (both families)
UDP_SEGMENT = 103  # linux/udp.h: setsockopt/cmsg giving the GSO segment size
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS of older kernels (newer allow 128)
GSO_MAX_BYTES = 65000  # one sendmsg carries at most a 64 KB UDP payload
UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams, segment size in a cmsg
GRO_BUFFER = 65535
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
DEFAULT_PACING_SLACK = 0.001  # seconds of paced sending released in one burst (see transmit)
DEFAULT_MAX_BURST = 64  # datagrams per transmit pass at most
# uvloop's clock reads whole milliseconds and it rounds a timer's delay to whole milliseconds,
# so a deadline under 0.5 ms away runs at once, early. Two busy loops followed, measured in the
# concentrator at a paced 50 Mbit/s with outer "none" (45,000 and then 14,600 timer wake-ups a
# second, nearly all sending nothing):
# - woken early, the connection found nothing due (its pacer and ACK timer read the clock) and
#   re-armed the same deadline. The QUIC timer woken up to TIMER_EARLY_TOLERANCE early acts as
#   at its deadline; woken earlier, it waits TIMER_RETRY more;
# - an ACK due exactly now waits for the pacer (aioquic's rule, which the fast path keeps), and
#   its deadline stays now until the clock moves on. A deadline not after the one just acted on
#   waits TIMER_RETRY too: nothing can change before the next tick but an input, which
#   transmits by itself.
TIMER_EARLY_TOLERANCE = 0.00005
TIMER_RETRY = 0.001
# stateless resets a server sends per second at most (and as many in one burst): in total, and
# to one source prefix (tunnel/policy/rate_limit.py PrefixBudget). 10 per prefix: after a restart
# the clients of one site each get theirs within a few seconds (each packet they send asks again).
RESETS_PER_SECOND = 100
RESETS_PER_PREFIX_PER_SECOND = 10
# Version Negotiation packets and INVALID_TOKEN closes per second, the same way: a real client
# needs one per connection attempt
REPLIES_PER_SECOND = 50
REPLIES_PER_PREFIX_PER_SECOND = 5
MIN_INITIAL_CID_LENGTH = 8  # RFC 9000 §7.2

Datagram = tuple[bytes, NetworkAddress]
T = TypeVar("T")

log = logging.getLogger("qtun.udp")


class EndpointError(RuntimeFailure):
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
    gso_refused: int = 0  # runs the kernel would not segment (EMSGSIZE: over the path MTU)
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
        reuse_port: bool = False,
        pmtu_probe: bool = False,
    ) -> UdpEndpoint:
        """Bind to `local_address`:`port` (default: any address of `family`, IPv4 if not
        given), pinned to `interface` with SO_BINDTODEVICE when given. `gso` sends runs of
        equal-size datagrams in one system call (measured +15-20 % QUIC datagram goodput over
        veth); it turns itself off if the kernel or device cannot segment (EIO, ENOPROTOOPT),
        and a run the path MTU refuses (EMSGSIZE/EINVAL) leaves one datagram at a time
        (`gso_refused`). `gro` lets the kernel hand
        over several datagrams in one read (UDP_GRO), off if the kernel lacks it.
        `reuse_port`: join the SO_REUSEPORT group of that address and port (the concentrator's
        workers, tunnel/aio/reuseport.py). `pmtu_probe` (limits.pmtu_discovery): every datagram
        leaves with DF set and is never fragmented here, whatever ICMP taught the kernel
        (IP_PMTUDISC_PROBE): the connection's own probes decide its size (RFC 9000 §14)."""
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
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                raise EndpointError(
                    f"this host does not support {_family_name(family)} (no "
                    f"{_family_name(family)} in its kernel or disabled): give an address of the "
                    "other family or enable it"
                ) from None
            raise EndpointError(
                f"cannot open a UDP socket ({exc.strerror}): check the host's open-file and "
                "socket limits"
            ) from None
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
            if pmtu_probe:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_PROBE)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
        self._send_each(items, 0, len(items))

    def _send_segmented(self, items: list[Datagram]) -> None:
        # A run: consecutive datagrams to the same address, all of the first one's size except
        # possibly a shorter last one (the kernel's rule for UDP_SEGMENT), at most
        # GSO_MAX_SEGMENTS and 64 KB in total. A SoloDatagram (a PMTU probe or its companion)
        # is a run of its own: one GSO send is forwarded or dropped whole.
        index = 0
        count = len(items)
        while index < count:
            data, addr = items[index]
            size = len(data)
            end = index + 1
            limit = min(count, index + GSO_MAX_SEGMENTS, index + GSO_MAX_BYTES // max(size, 1))
            if type(data) is SoloDatagram:
                limit = end
            while end < limit:
                next_data, next_addr = items[end]
                if next_addr != addr or len(next_data) > size or type(next_data) is SoloDatagram:
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
                if end - index > 1 and exc.errno in (errno.EIO, errno.ENOPROTOOPT):
                    # the route's device cannot segment: fall back to one sendto per datagram
                    self.gso = False
                    self.send_batch(items[index:])
                    return
                if end - index > 1 and exc.errno in (errno.EMSGSIZE, errno.EINVAL):
                    # A segment larger than the path MTU the socket knows (a route or learned
                    # MTU under the datagram size; older kernels say EINVAL): the kernel
                    # refuses to segment, but a lone datagram it sends (fragmented unless
                    # pmtu_probe). One by one, GSO kept for the runs that fit; the whole run
                    # was dropped before (a review: every burst to a 1492-byte path lost).
                    self.stats.gso_refused += 1
                    if self._send_each(items, index, end):
                        return
                    index = end
                    continue
                self.stats.send_dropped += end - index
                index = end
                continue
            self.stats.datagrams_sent += end - index
            self.stats.bytes_sent += sum(len(d) for d, _ in items[index:end])
            if end - index > 1:
                self.stats.gso_sends += 1
            index = end

    def _send_each(self, items: list[Datagram], index: int, end: int) -> bool:
        """items[index:end] one sendto each; True if the socket filled (it and the rest of
        `items` queued)."""
        sendto = self.sock.sendto
        sent = sent_bytes = 0
        filled = False
        for at in range(index, end):
            data, addr = items[at]
            try:
                sendto(data, addr)
            except BlockingIOError:
                self._queue(items[at:])
                filled = True
                break
            except OSError:
                self.stats.send_dropped += 1
                continue
            sent += 1
            sent_bytes += len(data)
        self.stats.datagrams_sent += sent
        self.stats.bytes_sent += sent_bytes
        return filled

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


def _family_name(family: socket.AddressFamily) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


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
# original_destination_connection_id= and, after a Retry, retry_source_connection_id=)
ConnectionFactory = Callable[..., QuicConnection]


def paced_burst(
    datagrams_to_send: Callable[[float], list[tuple[bytes, NetworkAddress]]],
    get_timer: Callable[[], float | None],
    now: float,
    slack: float,
    max_burst: int,
) -> list[tuple[bytes, NetworkAddress]]:
    """What a connection sends now, and what it would send at its next timers within `slack`
    seconds, up to `max_burst` datagrams (more only if one call gives more).

    aioquic's pacer keeps a bucket of at most 16 packets' worth of time; on a fast path that is
    a few microseconds, so each call releases ~4 packets and the loop would wake up once per 4
    packets. Releasing what is due within the slack in one burst keeps the rate over a
    millisecond and saves the wakeups. (A TunnelQuicConnection's datagram fast path does this
    inside one call: burst_slack, burst_max.)"""
    datagrams = datagrams_to_send(now)
    while datagrams and len(datagrams) < max_burst:
        due = get_timer()
        if due is None or due > now + slack:
            break
        more = datagrams_to_send(max(now, due))
        if not more:
            break
        datagrams += more
    return datagrams


class QuicDriver:
    """Drives one aioquic QuicConnection: datagrams and timers in, datagrams out.

    Give it the connection, something to send with (a UdpEndpoint) and an event handler (e.g. a
    TunnelConnection's handle_event). After changing the connection yourself (sending a
    datagram or stream data) call `transmit()` — once per batch, not per packet.

    No exception leaves it: one raised by aioquic or by the event handler while this connection
    handles a datagram, a timer or an event is logged once (with its traceback, on "qtun.udp"),
    and the connection is closed with INTERNAL_ERROR — the other connections of a batch or a
    server never notice.
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
        if isinstance(quic, TunnelQuicConnection):
            # its datagram fast path releases the burst (paced_burst) itself, without a
            # get_timer() and a call's checks every few packets
            quic.burst_slack = pacing_slack
            quic.burst_max = max_burst
        self.on_event: EventHandler = on_event or (lambda event: None)
        self._loop = loop or asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        # our own copy of the deadline: uvloop's handles for near deadlines have no .when()
        self._timer_at: float | None = None
        self._transmit_scheduled = False
        self._connected = self._loop.create_future()
        self._closed = asyncio.Event()
        self.failed = False  # an internal error happened (it is being closed)
        self._end_reason: str | None = None  # set while we end it silently (end_silently)
        # set by QuicServer to keep its connection-ID table and its counters current
        self.on_cid_issued: Callable[[bytes], None] | None = None
        self.on_cid_retired: Callable[[bytes], None] | None = None
        self.on_handshake_completed: Callable[[], None] | None = None
        self.on_terminated: Callable[[], None] | None = None
        self.on_internal_error: Callable[[BaseException], None] | None = None

    # feeding

    def receive(self, batch: Sequence[Datagram]) -> None:
        """Feed a batch of datagrams from the network, handle events, transmit once."""
        self.receive_without_transmit(batch)
        self.transmit()

    def receive_without_transmit(self, batch: Sequence[Datagram]) -> None:
        if self.closed:
            return
        now = self._loop.time()
        receive = self.quic.receive_datagram
        for data, addr in batch:
            try:
                receive(data, addr, now)
            except Exception as exc:
                # its state is not to be trusted any more: the rest of the batch is not fed
                self.fail(exc)
                break
        self._process_events()

    def transmit(self, now: float | None = None) -> None:
        """Send what the connection has to send now (or at `now`, the timer's deadline) and
        re-arm its timer."""
        self._transmit_scheduled = False
        if self.closed:
            return
        try:
            self._transmit(self._loop.time() if now is None else now)
        except Exception as exc:
            # a connection that cannot build packets cannot send its CONNECTION_CLOSE either
            self.fail(exc)
            self._abandon(INTERNAL_ERROR_REASON)

    def _transmit(self, now: float) -> None:
        quic = self.quic
        datagrams = paced_burst(
            quic.datagrams_to_send,
            quic.get_timer,
            now,
            self.pacing_slack,
            self.max_burst,
        )
        self.endpoint.send_batch(datagrams)
        self._arm_timer(quic.get_timer())

    def _arm_timer(self, timer_at: float | None) -> None:
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
        deadline, now = self._timer_at, self._loop.time()
        if deadline is not None and now < deadline - TIMER_EARLY_TOLERANCE and not self.closed:
            self._timer = self._loop.call_later(TIMER_RETRY, self._handle_timer)
            return
        now = max(deadline or 0.0, now)
        self._timer = None
        self._timer_at = None
        if self.closed:
            return
        try:
            self.quic.handle_timer(now=now)
        except Exception as exc:
            self.fail(exc)
        self._process_events()
        self.transmit(now)
        timer = self._timer
        if timer is not None and self._timer_at is not None and self._timer_at <= now:
            timer.cancel()
            self._timer = self._loop.call_later(TIMER_RETRY, self._handle_timer)

    def _process_events(self) -> None:
        quic = self.quic
        while not self.closed:  # nothing follows a ConnectionTerminated (ours or aioquic's)
            try:
                event = quic.next_event()
            except Exception as exc:
                self.fail(exc)
                return
            if event is None:
                return
            try:
                if isinstance(event, events.ConnectionTerminated) and self._end_reason:
                    event = events.ConnectionTerminated(
                        error_code=event.error_code,
                        frame_type=None,
                        reason_phrase=self._end_reason,
                    )
                self._track(event)
                self.on_event(event)
            except Exception as exc:
                self.fail(exc)

    def _track(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            if not self._connected.done():
                self._connected.set_result(None)
            if self.on_handshake_completed is not None:
                self.on_handshake_completed()
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
                # nobody may be waiting for it (a server connection): no "never retrieved"
                self._connected.exception()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = None
            self._closed.set()
            if self.on_terminated is not None:
                self.on_terminated()

    # failures

    def fail(self, exc: BaseException) -> None:
        """An exception escaped while this connection was handled: log it once, count it
        (on_internal_error) and close the connection with INTERNAL_ERROR (RFC 9000 §20.1),
        giving no detail to the peer. Later failures of the same connection are ignored."""
        if self.failed:
            log.debug("further error on failed QUIC connection %s", self.name, exc_info=exc)
            return
        self.failed = True
        log.error(
            "internal error on QUIC connection %s, closing it with INTERNAL_ERROR",
            self.name,
            exc_info=exc,
        )
        if self.on_internal_error is not None:
            with contextlib.suppress(Exception):
                self.on_internal_error(exc)
        try:
            # a transport close (a frame type given, none known: PADDING), not an application
            # one: INTERNAL_ERROR is a transport error code, also before 1-RTT keys exist
            self.quic.close(
                error_code=QuicErrorCode.INTERNAL_ERROR,
                frame_type=QuicFrameType.PADDING,
                reason_phrase=INTERNAL_ERROR_REASON,
            )
        except Exception:
            self._abandon(INTERNAL_ERROR_REASON)

    def end_silently(self, reason: str) -> None:
        """Discard the connection without sending anything, as an idle timeout does (RFC 9000
        §10.1): the handler gets a ConnectionTerminated with `reason`. For a handshake that
        did not complete in time, whose peer address may be spoofed."""
        if self.closed:
            return
        self._end_reason = reason
        try:
            # aioquic's idle-timeout path, reached through its public API: at or after the
            # idle deadline handle_timer discards the state silently, ends the qlog trace and
            # queues ConnectionTerminated (whose reason _process_events replaces).
            self.quic.handle_timer(now=math.inf)
        except Exception as exc:
            log.debug("aioquic could not end connection %s itself", self.name, exc_info=exc)
        self._process_events()
        self._abandon(reason)  # only if aioquic did not terminate it

    def _abandon(self, reason: str) -> None:
        """Forget a connection aioquic cannot end itself: the terminal bookkeeping with a
        ConnectionTerminated of our own, nothing more from aioquic."""
        if self.closed:
            return
        event = events.ConnectionTerminated(
            error_code=QuicErrorCode.INTERNAL_ERROR, frame_type=None, reason_phrase=reason
        )
        try:
            self._track(event)
            self.on_event(event)
        except Exception as exc:
            self.fail(exc)
        self._closed.set()

    @property
    def name(self) -> str:
        """How logs name the connection: its first connection ID of ours, in hex."""
        return self.quic.host_cid.hex()

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
        if self.closed:
            return
        try:
            self.quic.close(error_code=error_code, reason_phrase=reason_phrase)
        except Exception as exc:
            self.fail(exc)
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
        tunnel/protocol/quic_ext.py)."""
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


@dataclass
class ServerStats:
    """What a QuicServer did with packets it could not give to a connection, and its errors."""

    resets_sent: int = 0
    resets_suppressed: int = 0  # over the reset budget (global or the sender's prefix)
    resets_not_ours: int = 0  # no reset: the connection ID lacks our tag (not one we issued)
    retries_sent: int = 0
    invalid_token_closes_sent: int = 0
    version_negotiations_sent: int = 0
    replies_suppressed: int = 0  # VN / INVALID_TOKEN close over their budget
    unsupported_version_dropped: int = 0  # too small to answer (RFC 9000 §5.2.2)
    other_listener_dropped: int = 0  # a connection's packet arrived on another listener
    other_address_initials_dropped: int = 0  # Initials to a half-open connection from elsewhere
    internal_errors: int = 0  # exceptions caught (a connection closed, or one datagram lost)


class QuicServer:
    """UDP sockets (listeners) serving many QUIC connections, demultiplexed by destination
    connection ID through ONE table for all listeners.

    For each new connection `on_connection(driver)` is called before the first datagram is
    processed: set `driver.on_event` there. Datagrams of one batch are all fed first, then each
    connection that got any transmits once.

    Towards unknown senders (RFC 9000 §21): a client's first Initial goes through the admission
    policy of tunnel/policy/address_validation.py (Retry, half-open caps, handshake timeout); a
    new connection none of whose first datagrams decrypted is dropped at once, and a half-open
    connection takes Initials only from the address that created it; replies
    to packets of no connection (stateless reset, Version Negotiation, INVALID_TOKEN close) are
    bounded per source prefix and in total (tunnel/policy/rate_limit.py PrefixBudget).

    Several listeners (e.g. one per address of the concentrator) share one server so that a
    connection ID known on one listener is known on all: a packet carrying it that arrives on
    another listener is dropped — never answered with a stateless reset, which would hand an
    attacker the token that kills the connection (§21.11). It is not fed to the connection
    either: the client sent it to an address the connection does not use, which RFC 9000 only
    allows for a server's preferred_address (§9.6, we offer none), and our reply would leave
    from the connection's own listener, an address the client did not send to.
    """

    def __init__(
        self,
        endpoint: UdpEndpoint | Sequence[UdpEndpoint],
        configuration: QuicConfiguration,
        on_connection: NewConnectionHandler,
        *,
        max_connections: int | None = None,
        create_connection: ConnectionFactory = QuicConnection,
        pacing_slack: float = DEFAULT_PACING_SLACK,
        reset_key: bytes | None = None,
        admission: AdmissionLimits | None = None,
        resets_per_second: float = RESETS_PER_SECOND,
        resets_per_prefix_per_second: float = RESETS_PER_PREFIX_PER_SECOND,
        replies_per_second: float = REPLIES_PER_SECOND,
        replies_per_prefix_per_second: float = REPLIES_PER_PREFIX_PER_SECOND,
        cid_worker: tuple[int, int] | None = None,
    ) -> None:
        """`endpoint`: one listener or several (sharing this server's connections and limits).
        `max_connections`: all connections at once, half-open or not (None: no bound).
        `reset_key`: answer 1-RTT packets of connections we do not know with a stateless
        reset (RFC 9000 §10.3) whose token is derived from it — the connections must have
        been made with the same key (quic_ext.TunnelQuicConnection reset_key).
        `admission`: Retry policy, half-open cap and handshake timeout (AdmissionLimits).
        `resets_per_second` / `resets_per_prefix_per_second`: stateless resets sent at most
        in total / to one source prefix (/24 IPv4, /56 IPv6), bursts of as many.
        `replies_per_second` / `replies_per_prefix_per_second`: the same for Version
        Negotiation packets and INVALID_TOKEN closes.
        `cid_worker`: (index, workers) of the concentrator worker this server is
        (tunnel/aio/reuseport.py): the connection IDs of its Retry packets steer to it, as
        those of its connections must (create_connection's `cid_worker`)."""
        self.cid_worker = cid_worker
        self.endpoints = [endpoint] if isinstance(endpoint, UdpEndpoint) else list(endpoint)
        if not self.endpoints:
            raise ValueError("a QuicServer needs at least one endpoint")
        self.endpoint = self.endpoints[0]
        self.configuration = configuration
        self.on_connection = on_connection
        self.create_connection = create_connection
        self.pacing_slack = pacing_slack
        self.reset_key = reset_key
        self.guard: HandshakeGuard[QuicDriver] = HandshakeGuard(admission, max_connections)
        self.stats = ServerStats()
        # bound the work and the traffic a flood of unknown packets can cause (§10.3.3, §21.5)
        self._reset_budget = PrefixBudget(resets_per_second, resets_per_prefix_per_second)
        self._reply_budget = PrefixBudget(replies_per_second, replies_per_prefix_per_second)
        # Retry tokens (§8.1.2) sealed with a key of this process: valid for 30 s
        self._retry_tokens = QuicRetryTokenHandler()
        self._drivers: dict[bytes, QuicDriver] = {}  # every connection ID of every listener
        self._cids: dict[QuicDriver, set[bytes]] = {}  # the live connections and their IDs
        # the half-open connections and the address each was created from (first Initial)
        self._half_open_from: dict[QuicDriver, NetworkAddress] = {}
        self._created: list[QuicDriver] = []  # the connections the current batch created
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._handshake_timer_at = 0.0
        self._logged_errors: set[tuple[type[BaseException], str, int]] = set()
        self._loop = asyncio.get_running_loop()

    # counters (the concentrator's status)

    @property
    def connections(self) -> set[QuicDriver]:
        return set(self._cids)

    @property
    def max_connections(self) -> int | None:
        return self.guard.max_connections

    @property
    def resets_sent(self) -> int:
        return self.stats.resets_sent

    @property
    def internal_errors(self) -> int:
        return self.stats.internal_errors

    @property
    def refused_connections(self) -> int:
        """New connections dropped because the server was full (all or half-open slots)."""
        admission = self.guard.stats
        return admission.refused_full + admission.refused_half_open + admission.refused_prefix

    def counters(self) -> dict[str, int]:
        """Every counter of the server edge, for a status file."""
        return (
            vars(self.stats)
            | {f"admission_{k}": v for k, v in vars(self.guard.stats).items()}
            | {"connections": len(self._cids), "half_open": self.guard.half_open}
        )

    # receiving

    def start(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        for endpoint in self.endpoints:
            endpoint.start(functools.partial(self._on_datagrams, endpoint), batch_size)

    def _on_datagrams(self, endpoint: UdpEndpoint, batch: list[Datagram]) -> None:
        touched: dict[QuicDriver, list[Datagram]] = {}
        self._created.clear()
        for data, addr in batch:
            try:
                driver = self._route(endpoint, data, addr)
            except Exception as exc:
                self._internal_error(exc)
                continue
            if driver is not None:
                touched.setdefault(driver, []).append((data, addr))
        # each driver keeps its own failures (QuicDriver.fail): neither raises
        for driver, datagrams in touched.items():
            driver.receive_without_transmit(datagrams)
        for driver in self._created:
            if not driver.closed and nothing_decrypted(driver.quic):
                self._discard(driver)
        self._created.clear()  # holds no dropped connection until the next batch
        for driver in touched:
            driver.transmit()

    def _route(self, endpoint: UdpEndpoint, data: bytes, addr: NetworkAddress) -> QuicDriver | None:
        """The connection `data` belongs to, or None after handling it here."""
        # the common case first, without parsing a header: a 1-RTT packet (short header, fixed
        # bit set, RFC 9000 §17.3.1) to a connection ID we have, from its listener
        cid_length = self.configuration.connection_id_length
        if data and data[0] & 0xC0 == 0x40 and len(data) > cid_length:
            driver = self._drivers.get(data[1 : 1 + cid_length])
            if driver is not None and driver.endpoint is endpoint:
                return driver
        if len(data) >= 5 and data[0] & 0x80:
            # a long header: its version is readable whatever the version (RFC 8999 §5.1),
            # the rest of the header may not be (pull_quic_header parses version 1 and 2)
            version = int.from_bytes(data[1:5], "big")
            if version != 0 and version not in self.configuration.supported_versions:
                self._version_negotiation(endpoint, data, addr)
                return None
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.configuration.connection_id_length
            )
        except ValueError:
            return None
        driver = self._drivers.get(header.destination_cid)
        if driver is not None:
            if driver.endpoint is not endpoint:
                self.stats.other_listener_dropped += 1
                return None
            if header.packet_type == QuicPacketType.INITIAL and addr != self._half_open_from.get(
                driver, addr
            ):
                # A client does not change its address during the handshake (RFC 9000 §9:
                # not before it is confirmed). Another sender's Initial could only be junk
                # (anyone reads the DCID on the wire), and before the connection decrypted
                # anything aioquic would start it over and answer that, possibly spoofed,
                # address: a reflector and the CPU of a new TLS context per datagram.
                self.stats.other_address_initials_dropped += 1
                return None
            return driver
        if header.packet_type == QuicPacketType.ONE_RTT:
            self._send_reset(endpoint, data, addr, header.destination_cid)
        elif (
            header.packet_type == QuicPacketType.INITIAL
            and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
            # §7.2: a client's first Destination Connection ID has at least 8 bytes (and
            # after a Retry it is our own)
            and len(header.destination_cid) >= MIN_INITIAL_CID_LENGTH
        ):
            return self._maybe_accept(endpoint, addr, header)
        # anything else (Handshake, 0-RTT, a small Initial, a Version Negotiation) of a
        # connection we do not have: dropped
        return None

    def _maybe_accept(
        self, endpoint: UdpEndpoint, addr: NetworkAddress, header: Any
    ) -> QuicDriver | None:
        now = self._loop.time()
        token = TokenStatus.NONE
        original_cid = header.destination_cid
        retry_cid: bytes | None = None
        if header.token:
            try:
                original_cid = self._retry_tokens.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                token = TokenStatus.INVALID
            else:
                token = TokenStatus.VALID
                retry_cid = header.destination_cid
        decision = self.guard.admit(len(self._cids), token, addr[0])
        if decision is InitialVerdict.RETRY:
            self._send_retry(endpoint, addr, header, now)
            return None
        if decision is InitialVerdict.INVALID_TOKEN:
            self._send_invalid_token_close(endpoint, addr, header, now)
            return None
        if decision is not InitialVerdict.ACCEPT:
            return None
        return self._accept(endpoint, addr, header.destination_cid, original_cid, retry_cid, now)

    def _accept(
        self,
        endpoint: UdpEndpoint,
        addr: NetworkAddress,
        destination_cid: bytes,
        original_cid: bytes,
        retry_cid: bytes | None,
        now: float,
    ) -> QuicDriver:
        extra = {} if retry_cid is None else {"retry_source_connection_id": retry_cid}
        quic = self.create_connection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid,
            **extra,
        )
        driver = QuicDriver(quic, endpoint, loop=self._loop, pacing_slack=self.pacing_slack)
        driver.on_cid_issued = functools.partial(self._cid_issued, driver)
        driver.on_cid_retired = functools.partial(self._cid_retired, driver)
        driver.on_handshake_completed = functools.partial(self._completed, driver)
        driver.on_terminated = functools.partial(self._terminated, driver)
        driver.on_internal_error = self._count_internal_error
        self._cids[driver] = set()
        for cid in (destination_cid, quic.host_cid):
            self._cid_issued(driver, cid)
        self.guard.opened(driver, now, addr[0])
        self._half_open_from[driver] = addr
        self._created.append(driver)
        self._arm_handshake_timer()
        try:
            self.on_connection(driver)
        except Exception as exc:
            driver.fail(exc)
        return driver

    def _cid_issued(self, driver: QuicDriver, cid: bytes) -> None:
        cids = self._cids.get(driver)
        if cids is not None:
            cids.add(cid)
            self._drivers[cid] = driver

    def _cid_retired(self, driver: QuicDriver, cid: bytes) -> None:
        self._cids.get(driver, set()).discard(cid)
        if self._drivers.get(cid) is driver:
            del self._drivers[cid]

    def _completed(self, driver: QuicDriver) -> None:
        self._half_open_from.pop(driver, None)
        self.guard.completed(driver)

    def _terminated(self, driver: QuicDriver) -> None:
        for cid in self._cids.pop(driver, ()):
            if self._drivers.get(cid) is driver:
                del self._drivers[cid]
        self._half_open_from.pop(driver, None)
        self.guard.closed(driver)

    def _discard(self, driver: QuicDriver) -> None:
        """A new connection none of whose datagrams decrypted: junk padded behind an Initial
        header (a real client's Initial always decrypts with the keys of its DCID). Kept, it
        held a slot until the handshake timeout, and each further Initial to its DCID made
        aioquic start it over and answer it. Dropped silently, as at the handshake timeout;
        the guard still counts it towards the Retry threshold."""
        self.guard.discarded(driver)
        driver.end_silently("nothing in the first datagram could be decrypted")

    # handshake timeout (tunnel/policy/address_validation.py)

    def _arm_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            return
        deadline = self.guard.next_deadline()
        if deadline is not None:
            self._handshake_timer_at = deadline
            self._handshake_timer = self._loop.call_at(deadline, self._handshake_timeouts)

    def _handshake_timeouts(self) -> None:
        self._handshake_timer = None
        # the loop may run a timer a little before its deadline (clock resolution)
        now = max(self._loop.time(), self._handshake_timer_at)
        reason = f"QUIC handshake not completed within {self.guard.limits.handshake_timeout:g} s"
        for driver in self.guard.expire(now):
            driver.end_silently(reason)
        self._arm_handshake_timer()

    # replies to packets of no connection

    def _send_retry(
        self, endpoint: UdpEndpoint, addr: NetworkAddress, header: Any, now: float
    ) -> None:
        """Ask the client to prove its address (§8.1.2). Not budgeted: a Retry is a tenth of
        the 1200-byte Initial it answers (no amplification), costs less than a connection,
        and a budget spent by spoofed Initials would keep real clients out."""
        source_cid = os.urandom(self.configuration.connection_id_length)
        if self.cid_worker is not None:
            # the client's next Initial goes to this ID: it must reach this worker, whose key
            # sealed the token
            source_cid = steer_connection_id(source_cid, *self.cid_worker)
        token = self._retry_tokens.create_token(
            address=addr,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=source_cid,
            now=now,
        )
        packet = encode_quic_retry(
            version=header.version,
            source_cid=source_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
        endpoint.send_batch([(packet, addr)])
        self.stats.retries_sent += 1

    def _send_invalid_token_close(
        self, endpoint: UdpEndpoint, addr: NetworkAddress, header: Any, now: float
    ) -> None:
        """§8.1.3: a client whose Retry token we cannot accept would not accept a second
        Retry; tell it at once instead of letting it wait for its handshake timeout."""
        if not self._reply_budget.allow(addr[0], now):
            self.stats.replies_suppressed += 1
            return
        packet = _invalid_token_close(header.version, header.destination_cid, header.source_cid)
        endpoint.send_batch([(packet, addr)])
        self.stats.invalid_token_closes_sent += 1

    def _version_negotiation(
        self, endpoint: UdpEndpoint, data: bytes, addr: NetworkAddress
    ) -> None:
        # §5.2.2: a server MUST drop smaller packets of unsupported versions (a client's first
        # packet of any version fills 1200 bytes; answering less would amplify); §6.1: never
        # answer a Version Negotiation (version 0, filtered by the caller) with one.
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            self.stats.unsupported_version_dropped += 1
            return
        cids = _long_header_cids(data)
        if cids is None or cids[0] in self._drivers:
            return  # §5.2: a packet of a connection we have is never answered with a VN
        if not self._reply_budget.allow(addr[0], self._loop.time()):
            self.stats.replies_suppressed += 1
            return
        destination_cid, source_cid = cids
        packet = encode_quic_version_negotiation(
            source_cid=destination_cid,
            destination_cid=source_cid,
            supported_versions=self.configuration.supported_versions,
        )
        endpoint.send_batch([(packet, addr)])
        self.stats.version_negotiations_sent += 1

    def _send_reset(
        self, endpoint: UdpEndpoint, data: bytes, addr: NetworkAddress, cid: bytes
    ) -> None:
        """A 1-RTT packet for a connection we do not have (we restarted, or it ended): tell
        the peer at once with a stateless reset rather than let it wait for a timeout.
        `cid` is known on no listener (the one table): its token kills nothing of ours.
        Only a `cid` we could have issued (its tag, tunnel/protocol/stateless_reset.py) is
        answered: not another endpoint's reset (two endpoints answering each other's resets
        loop, §10.3.3), nor junk of made-up connection IDs."""
        if self.reset_key is None or reset_size(len(data)) is None:
            return
        if not is_tagged_connection_id(self.reset_key, cid):
            self.stats.resets_not_ours += 1
            return
        if not self._reset_budget.allow(addr[0], self._loop.time()):
            self.stats.resets_suppressed += 1
            return
        reset = build_reset(reset_token(self.reset_key, cid), len(data), os.urandom)
        if reset is not None:
            endpoint.send_batch([(reset, addr)])
            self.stats.resets_sent += 1

    # errors

    def _count_internal_error(self, exc: BaseException) -> None:
        self.stats.internal_errors += 1

    def _internal_error(self, exc: Exception) -> None:
        """An exception while routing one datagram (a bug of ours): that datagram is lost,
        nothing else. Logged with its traceback once per place it was raised from."""
        self.stats.internal_errors += 1
        frames = traceback.extract_tb(exc.__traceback__)
        where = (type(exc), frames[-1].filename, frames[-1].lineno or 0) if frames else None
        if where is not None and where not in self._logged_errors and len(self._logged_errors) < 64:
            self._logged_errors.add(where)
            log.error("internal error on a received datagram, dropped it", exc_info=exc)
        else:
            log.debug("internal error on a received datagram, dropped it", exc_info=exc)

    # life cycle

    async def close(self) -> None:
        """Close every connection (bounded wait) and the sockets."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        drivers = self.connections
        for driver in drivers:
            if not driver.closed:
                driver.close()
        if drivers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(d.wait_closed() for d in drivers)), timeout=1.0
                )
        for endpoint in self.endpoints:
            endpoint.close()


def _long_header_cids(data: bytes) -> tuple[bytes, bytes] | None:
    """(Destination, Source) Connection IDs of a long-header packet of any version (RFC 8999
    §5.1: one length byte each, up to 255 bytes), None if the datagram is too short."""
    if len(data) < 7:
        return None
    destination_end = 6 + data[5]
    if len(data) < destination_end + 1:
        return None
    source_end = destination_end + 1 + data[destination_end]
    if len(data) < source_end:
        return None
    return data[6:destination_end], data[destination_end + 1 : source_end]


def _invalid_token_close(version: int, client_dcid: bytes, client_scid: bytes) -> bytes:
    """A server Initial closing the connection with INVALID_TOKEN (§8.1.3), protected with the
    Initial keys of the client's Destination Connection ID (RFC 9001 §5.2), as aioquic's own
    asyncio server builds it."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=client_dcid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=client_dcid,
        peer_cid=client_scid,
        version=version,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(
        QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY
    )
    buf.push_uint_var(QuicErrorCode.INVALID_TOKEN)
    buf.push_uint_var(QuicFrameType.PADDING)  # the frame type that caused it: none
    buf.push_uint_var(0)  # no reason phrase
    datagrams, _ = builder.flush()
    return bytes(datagrams[0])


__all__ = [
    "BufferReport",
    "EndpointError",
    "QuicClient",
    "QuicDriver",
    "QuicServer",
    "ServerStats",
    "UdpEndpoint",
    "UdpStats",
    "run",
]
