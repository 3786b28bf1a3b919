"""Traffic tools run on Mininet hosts as subprocesses (real sockets), and the arithmetic on what
their receivers record.

    python -m experiments.traffic tcp-send --bind 10.200.1.2 --port 5400 --start-at T --duration 12
    python -m experiments.traffic tcp-recv --dst 10.200.1.2 --port 5400 --start-at T --duration 12 \
        --out recv.json [--mptcp]
    python -m experiments.traffic udp-send --bind ... --rate-mbit 10 --size 1000 ...
    python -m experiments.traffic udp-recv --dst ... --out recv.json [--src 10.2.1.2]

The server side sends, the client side receives (the failover experiment's direction), and the
client side connects (as a real client would: it is the one behind the accesses). Both sides
are told an absolute start time `--start-at` on CLOCK_MONOTONIC, which is one clock for every
namespace of the machine, so the orchestrator's "WiFi down at t = 20 s" and the receiver's bins
share an origin. The sender stops at start + duration; the receiver records until start +
duration + grace and then writes its samples as JSON: bytes delivered per `--interval` (10 ms)
bin from the start time, and for UDP the sequence statistics (lost, reordered, duplicates).
Every loop is bounded by those deadlines; socket errors during an outage (ENETUNREACH,
timeouts) are counted, not fatal.

A fixed-size transfer (`tcp-send --bytes N`, the overhead experiment's bulk transfer) sends
exactly N bytes and then a FIN; the receiver reads to EOF, so its `bytes_total` is what the
application read.

Parallel bulk flows (`--parallel N` on both sides, iperf3 -P's counterpart): the receiver
opens N connections, the sender accepts N and sends on each from a thread of its own; the bins
sum them and `streams` holds each connection's bytes (its share, for fairness).

`--src ADDR` binds a receiver's socket to one of its addresses before it connects: the client's
source-routing rules then send it (and the answers come back) over that address's access.

MPTCP (`--mptcp`): the socket is socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP); the kernel's
path manager adds subflows from the `ip mptcp endpoint`s configured on the host.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunnel.user_error import SentenceParser, run_command

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
SAMPLE_INTERVAL_S = 0.01
GRACE_S = 0.5  # the receiver listens this long after the sender's deadline
CONNECT_WINDOW_S = 10.0  # how long either side waits for the other to show up
UDP_HEADER = struct.Struct("!QQ")  # sequence number, sender's monotonic time in ns
MAX_UDP_BYTES = 65000  # a datagram's payload: under IPv4's 65507, with room for a tunnel's header
REQUEST = b"qex-start"


@dataclass
class Samples:
    """What a receiver recorded; written as JSON, read back by the experiment."""

    kind: str  # "tcp" | "udp"
    start_at: float  # CLOCK_MONOTONIC origin of bin 0
    interval_s: float
    bins: list[int] = field(default_factory=list)  # bytes delivered in each interval
    connected: bool = False
    error: str | None = None
    bytes_total: int = 0
    # UDP only
    received: int = 0
    unique: int = 0
    highest_seq: int = -1
    reordered: int = 0
    duplicates: int = 0
    # datagrams the receiver's own socket dropped (its buffer full: a burst it could not
    # take), part of the flow's loss; None where the kernel does not say
    socket_drops: int | None = None
    # TCP with --parallel: bytes delivered on each connection
    streams: list[int] = field(default_factory=list)

    def add(self, now: float, nbytes: int) -> None:
        # floor, not int(): a time just before the origin must not land in bin 0
        index = math.floor((now - self.start_at) / self.interval_s)
        if index < 0:
            return  # before the measurement's origin: not part of the record
        if index >= len(self.bins):
            self.bins.extend([0] * (index + 1 - len(self.bins)))
        self.bins[index] += nbytes
        self.bytes_total += nbytes

    @property
    def lost(self) -> int:
        """Sequence numbers up to the highest seen that never arrived."""
        return self.highest_seq + 1 - self.unique

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lost"] = self.lost
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Samples:
        data = {k: v for k, v in data.items() if k != "lost"}
        return cls(**data)


# -- arithmetic on the samples ----------------------------------------------------------------
def pad_bins(bins: Sequence[int], interval_s: float, duration_s: float) -> list[int]:
    """The bins up to the end of the measurement (a receiver that saw nothing late has fewer)."""
    n = round(duration_s / interval_s)
    return [*bins[:n], *([0] * max(0, n - len(bins)))]


def goodput_mbps(bins: Sequence[int], interval_s: float, t_from: float, t_to: float) -> float:
    """Mean goodput between two times (seconds from the origin), in Mbit/s."""
    lo, hi = round(t_from / interval_s), round(t_to / interval_s)
    if hi <= lo:
        return 0.0
    return sum(bins[lo:hi]) * 8 / ((hi - lo) * interval_s) / 1e6


def delivery_gap(
    bins: Sequence[int], interval_s: float, down_at_s: float, up_at_s: float, lead_s: float = 0.25
) -> tuple[float, float] | None:
    """The longest run of empty bins that starts around the outage start: (its start, its end)
    in seconds from the origin.

    A run counts if it starts between `lead_s` before the outage and half-way to the repair
    (a gap caused by the repair itself, later, is not the failover gap) and does not end before
    the outage begins: a silence over by then (a stall of the receiver, of the flow) is not the
    outage's, yet it was taken when longer (found by a review). None when that run lasts to the
    end of the record: delivery never resumed. (t, t) with t the outage start when no bin was
    empty: the gap was shorter than one interval.

    Resolution: a run of k empty bins is a silence of between k and k + 2 intervals (k + 1 on
    average: the bins at its two ends each hold a delivery), so a gap reads one interval short
    on average, the same for every variant compared; 0 means under two intervals.
    """
    first = max(0, round((down_at_s - lead_s) / interval_s))
    outage = round(down_at_s / interval_s)
    last_start = round((down_at_s + up_at_s) / 2 / interval_s)
    n = len(bins)
    longest: tuple[int, int] | None = None
    k = first
    while k < n and k <= last_start:
        if bins[k]:
            k += 1
            continue
        end = k
        while end < n and not bins[end]:
            end += 1
        if end == n:
            return None  # nothing was delivered after this run began
        if end > outage and (longest is None or end - k > longest[1] - longest[0]):
            longest = (k, end)
        k = end
    if longest is None:
        return down_at_s, down_at_s
    return longest[0] * interval_s, longest[1] * interval_s


def delivery_gap_ms(
    bins: Sequence[int], interval_s: float, down_at_s: float, up_at_s: float, lead_s: float = 0.25
) -> float | None:
    """The length of `delivery_gap` in ms (None: delivery never resumed; 0.0: no empty bin)."""
    gap = delivery_gap(bins, interval_s, down_at_s, up_at_s, lead_s)
    return None if gap is None else round((gap[1] - gap[0]) / interval_s) * interval_s * 1000


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n sum x^2) over receivers' goodputs: 1 when all are
    equal, 1/n when one has everything; None when there is nothing to share (no values, or all
    zero)."""
    xs = [float(v) for v in values]
    squares = sum(x * x for x in xs)
    if not xs or squares == 0:
        return None
    return sum(xs) ** 2 / (len(xs) * squares)


def resample(bins: Sequence[int], interval_s: float, out_interval_s: float) -> list[float]:
    """Goodput in Mbit/s per `out_interval_s` (a whole multiple of the sampling interval)."""
    step = max(1, round(out_interval_s / interval_s))
    return [
        sum(bins[i : i + step]) * 8 / (step * interval_s) / 1e6 for i in range(0, len(bins), step)
    ]


# -- TCP --------------------------------------------------------------------------------------
def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_socket(addr: str, mptcp: bool) -> socket.socket:
    proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
    try:
        return socket.socket(_family(addr), socket.SOCK_STREAM, proto)
    except OSError as exc:
        if mptcp and exc.errno in (errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.EINVAL):
            raise SystemExit(
                "traffic: error: this kernel refuses MPTCP sockets: enable net.mptcp.enabled."
            ) from None
        raise


def _send_until(
    conn: socket.socket, deadline: float, nbytes: int | None, report: dict[str, Any]
) -> None:
    """Send on one connection as fast as it takes until the deadline (or `nbytes`), then FIN."""
    chunk = memoryview(b"\0" * 65536)
    sent = 0
    with conn:
        conn.settimeout(0.2)
        while time.monotonic() < deadline:
            left = len(chunk) if nbytes is None else nbytes - sent
            if left <= 0:
                break
            try:
                n = conn.send(chunk[:left])
            except TimeoutError:
                continue  # a stalled connection (outage): keep trying until the deadline
            except OSError as exc:
                report["error"] = f"send: {exc.strerror or exc}"
                break
            sent += n
            report["sent"] += n  # one thread per connection: += on an int is atomic enough
        info = tcp_info(conn)
        if info is not None:
            report["retransmits_per_connection"].append(info.retransmits)  # append: thread-safe
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)


# struct tcp_info (linux/tcp.h): eight u8 fields, then u32 fields from offset 8; the ones read
# here are in every kernel since 2.6 (the struct only grows at its end).
_TCPI_U32 = struct.Struct("=I")
_TCPI_RTT_US = 68  # tcpi_rtt: the smoothed RTT in µs
_TCPI_SND_CWND = 80  # tcpi_snd_cwnd: the congestion window in segments
_TCPI_TOTAL_RETRANS = 100  # tcpi_total_retrans: segments retransmitted over the connection
TCP_INFO_INTERVAL_S = 0.1  # how often tcp_send samples the first connection's tcp_info


@dataclass(frozen=True)
class TcpInfo:
    """What the sender's kernel TCP says of one connection (TCP_INFO)."""

    retransmits: int
    cwnd_segments: int
    rtt_ms: float


def tcp_info(conn: socket.socket) -> TcpInfo | None:
    """`conn`'s TCP_INFO, or None where the kernel gives none. On an MPTCP socket this
    kernel answers with one subflow's state (its first), not the connection's."""
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < _TCPI_TOTAL_RETRANS + 4:
        return None
    return TcpInfo(
        retransmits=_TCPI_U32.unpack_from(info, _TCPI_TOTAL_RETRANS)[0],
        cwnd_segments=_TCPI_U32.unpack_from(info, _TCPI_SND_CWND)[0],
        rtt_ms=_TCPI_U32.unpack_from(info, _TCPI_RTT_US)[0] / 1000,
    )


def _sample_tcp_info(
    conn: socket.socket, start_at: float, deadline: float, series: list[list[float]]
) -> None:
    """Every TCP_INFO_INTERVAL_S from start_at to the deadline: [t_s, cwnd, rtt_ms, retransmits]
    of `conn` (the inner TCP's state over time: what a failover did to it, issue 12)."""
    tick = 0
    while (at := start_at + tick * TCP_INFO_INTERVAL_S) < deadline:
        if (wait := at - time.monotonic()) > 0:
            time.sleep(wait)
        info = tcp_info(conn)
        if info is None:
            return
        series.append(
            [
                round(tick * TCP_INFO_INTERVAL_S, 3),
                info.cwnd_segments,
                info.rtt_ms,
                info.retransmits,
            ]
        )
        tick += 1


def tcp_send(
    bind: str,
    port: int,
    start_at: float,
    duration: float,
    mptcp: bool,
    nbytes: int | None = None,
    parallel: int = 1,
) -> dict[str, Any]:
    """Accept `parallel` receiver connections and send on each as fast as it takes until start +
    duration, or exactly `nbytes` (then FIN: the receiver reads to EOF, every byte counted)."""
    deadline = start_at + duration
    report: dict[str, Any] = {
        "sent": 0,
        "error": None,
        "accepted": False,
        "retransmits_per_connection": [],
    }
    # The listener stays open until the end: MPTCP joins (new subflows) arrive through it.
    with tcp_socket(bind, mptcp) as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((bind, port))
        lsock.listen(max(4, parallel))
        conns: list[socket.socket] = []
        accept_until = min(deadline, time.monotonic() + CONNECT_WINDOW_S)
        try:
            while len(conns) < parallel:
                lsock.settimeout(max(1.0, accept_until - time.monotonic()))
                conns.append(lsock.accept()[0])
        except TimeoutError:
            if not conns:
                report["error"] = "no receiver connected"
                del report["retransmits_per_connection"]
                report["retransmits"] = None
                return report
            report["error"] = f"only {len(conns)} of {parallel} connections came"
        report["accepted"] = True
        while (wait := start_at - time.monotonic()) > 0:  # the record starts at start_at
            time.sleep(min(wait, 0.05))
        senders = [
            threading.Thread(target=_send_until, args=(c, deadline, nbytes, report), daemon=True)
            for c in conns[1:]
        ]
        series: list[list[float]] = []
        senders.append(
            threading.Thread(
                target=_sample_tcp_info, args=(conns[0], start_at, deadline, series), daemon=True
            )
        )
        for thread in senders:
            thread.start()
        _send_until(conns[0], deadline, nbytes, report)
        for thread in senders:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
    counts = report.pop("retransmits_per_connection")
    # The inner TCP's own retransmissions: what a tunnel let it see as lost (None: not known)
    report["retransmits"] = sum(counts) if counts else None
    report["tcp_info"] = series  # [t_s, cwnd, rtt_ms, retransmits] of the first connection
    return report


def _bound(sock: socket.socket, src: str | None) -> socket.socket:
    if src is not None:
        sock.bind((src, 0))
    return sock


def _connect_retrying(
    dst: str, port: int, mptcp: bool, src: str | None, until: float
) -> socket.socket | str:
    """A connected socket, retried until `until`; or why it could not connect."""
    sock = _bound(tcp_socket(dst, mptcp), src)
    while True:
        try:
            sock.settimeout(max(0.1, until - time.monotonic()))
            sock.connect((dst, port))
            return sock
        except (ConnectionRefusedError, TimeoutError, OSError) as exc:
            sock.close()
            if time.monotonic() >= until:
                return f"connect: {getattr(exc, 'strerror', None) or exc}"
            sock = _bound(tcp_socket(dst, mptcp), src)
            time.sleep(0.1)


def tcp_recv(
    dst: str,
    port: int,
    start_at: float,
    duration: float,
    mptcp: bool,
    interval: float,
    src: str | None = None,
    parallel: int = 1,
) -> Samples:
    samples = Samples("tcp", start_at, interval)
    deadline = start_at + duration + GRACE_S
    buf = bytearray(262144)
    connect_until = min(deadline, time.monotonic() + CONNECT_WINDOW_S)
    socks: list[socket.socket] = []
    try:
        for _ in range(parallel):
            sock = _connect_retrying(dst, port, mptcp, src, connect_until)
            if isinstance(sock, str):
                samples.error = sock
                if not socks:
                    return samples
                break
            socks.append(sock)
        samples.connected = True
        samples.streams = [0] * len(socks)
        with selectors.DefaultSelector() as selector:
            for number, sock in enumerate(socks):
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, number)
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.05):
                    ready: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        n = ready.recv_into(buf)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        samples.error = f"recv: {exc.strerror or exc}"
                        n = 0
                    if n == 0:  # EOF (or an error): this connection is done
                        selector.unregister(ready)
                        continue
                    samples.add(time.monotonic(), n)
                    samples.streams[key.data] += n
    finally:
        for sock in socks:
            sock.close()
    return samples


# -- UDP constant bit rate --------------------------------------------------------------------
def write_result(result: dict[str, Any], out: Path | None) -> None:
    """A tool's JSON report: into `out` whole (written beside it, then renamed, so a reader
    never sees half of it), or on stdout without one."""
    text = json.dumps(result)
    if out is None:
        print(text)
        return
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)


def wait_for_request(sock: socket.socket, deadline: float) -> Any:
    """The address of the receiver that sent REQUEST to `sock` (where to send), or None when
    none asked within the connect window (or before `deadline`, at least 1 s)."""
    sock.settimeout(max(1.0, min(CONNECT_WINDOW_S, deadline - time.monotonic())))
    try:
        while True:
            data, peer = sock.recvfrom(2048)
            if data == REQUEST:
                return peer
    except TimeoutError:
        return None


def udp_send(
    bind: str, port: int, start_at: float, duration: float, rate_mbit: float, size: int
) -> dict[str, Any]:
    """Wait for the receiver's request, then send `size`-byte datagrams at the rate, numbered."""
    deadline = start_at + duration
    report: dict[str, Any] = {"sent": 0, "send_errors": 0, "error": None}
    with socket.socket(_family(bind), socket.SOCK_DGRAM) as sock:
        sock.bind((bind, port))
        peer = wait_for_request(sock, deadline)
        if peer is None:
            report["error"] = "no receiver asked"
            return report
        sock.setblocking(False)
        period = size * 8 / (rate_mbit * 1e6)
        pad = b"\0" * (size - UDP_HEADER.size)
        seq = 0
        t0 = max(time.monotonic(), start_at)
        while (now := time.monotonic()) < deadline:
            due = t0 + seq * period
            if due > now:
                time.sleep(min(due - now, 0.002))
                continue
            try:
                sock.sendto(UDP_HEADER.pack(seq, time.monotonic_ns()) + pad, peer)
            except (BlockingIOError, OSError):
                report["send_errors"] += 1  # the datagram is lost, as the network would lose it
            seq += 1
        report["sent"] = seq
    return report


def udp_recv(
    dst: str, port: int, start_at: float, duration: float, interval: float, src: str | None = None
) -> Samples:
    samples = Samples("udp", start_at, interval)
    deadline = start_at + duration + GRACE_S
    seen = bytearray()
    with _bound(socket.socket(_family(dst), socket.SOCK_DGRAM), src) as sock:
        sock.settimeout(0.05)
        next_request = 0.0
        while (now := time.monotonic()) < deadline:
            if not samples.connected and now >= next_request:
                with contextlib.suppress(OSError):
                    sock.sendto(REQUEST, (dst, port))
                next_request = now + 0.3
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:  # ICMP errors reported on the socket: keep listening
                samples.error = f"recv: {exc.strerror or exc}"
                continue
            if len(data) < UDP_HEADER.size:
                continue
            samples.connected = True
            seq, _sent_ns = UDP_HEADER.unpack_from(data)
            samples.received += 1
            if seq >= len(seen):
                seen.extend(b"\0" * max(seq + 1 - len(seen), 4096))
            if seen[seq]:
                # a second copy is not goodput, nor a delivery that could hide a gap (it was
                # counted before the check, found by a review)
                samples.duplicates += 1
                continue
            samples.add(time.monotonic(), len(data))
            seen[seq] = 1
            samples.unique += 1
            if seq < samples.highest_seq:
                samples.reordered += 1
            samples.highest_seq = max(samples.highest_seq, seq)
        samples.socket_drops = socket_drops(sock)
    return samples


def socket_drops(sock: socket.socket) -> int | None:
    """How many datagrams the kernel dropped at this UDP socket (a full receive buffer): the
    last column of its line in /proc/net/udp(6), which lists the sockets of the reading
    process's network namespace, found by the socket's inode. None if it is not there."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    table = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
    try:
        with open(table, encoding="ascii") as lines:
            for line in lines:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == inode:
                    return int(fields[-1])
    except (OSError, ValueError):
        pass
    return None


# -- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = SentenceParser(prog="python -m experiments.traffic")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("tcp-send", "tcp-recv", "udp-send", "udp-recv"):
        s = sub.add_parser(name)
        if name.endswith("send"):
            s.add_argument("--bind", required=True)
            if name == "tcp-send":
                s.add_argument("--bytes", type=int, help="send exactly this many, then FIN")
        else:
            s.add_argument("--dst", required=True)
            s.add_argument("--src", help="bind to this local address before connecting")
            s.add_argument("--interval", type=float, default=SAMPLE_INTERVAL_S)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--start-at", type=float, required=True, help="CLOCK_MONOTONIC seconds")
        s.add_argument("--duration", type=float, required=True)
        s.add_argument("--out", type=Path, help="JSON file for the samples / sender report")
        if name.startswith("tcp"):
            s.add_argument("--mptcp", action="store_true")
            s.add_argument("--parallel", type=int, default=1, help="connections (iperf3 -P)")
        if name == "udp-send":
            s.add_argument("--rate-mbit", type=float, default=10.0)
            s.add_argument("--size", type=int, default=1000)
    return p


def main(argv: list[str] | None = None) -> int:
    # parsed inside run_command: a mistake on the command line is one line too (exit code 2)
    return run_command("traffic", lambda: _run(build_parser().parse_args(argv)))


def _run(args: argparse.Namespace) -> int:
    if not 0 < args.duration <= 3600:
        print("traffic: error: --duration must be between 0 and 3600 s.", file=sys.stderr)
        return 2
    result: dict[str, Any]
    if args.command.startswith("tcp") and not 1 <= args.parallel <= 64:
        print("traffic: error: --parallel must be between 1 and 64.", file=sys.stderr)
        return 2
    if args.command == "tcp-send":
        result = tcp_send(
            args.bind,
            args.port,
            args.start_at,
            args.duration,
            args.mptcp,
            args.bytes,
            args.parallel,
        )
    elif args.command == "udp-send":
        if not UDP_HEADER.size <= args.size <= MAX_UDP_BYTES or args.rate_mbit <= 0:
            print(
                f"traffic: error: --size must be {UDP_HEADER.size}..{MAX_UDP_BYTES} and "
                "--rate-mbit > 0.",
                file=sys.stderr,
            )
            return 2
        result = udp_send(
            args.bind, args.port, args.start_at, args.duration, args.rate_mbit, args.size
        )
    elif args.command == "tcp-recv":
        result = tcp_recv(
            args.dst,
            args.port,
            args.start_at,
            args.duration,
            args.mptcp,
            args.interval,
            args.src,
            args.parallel,
        ).to_json()
    else:
        result = udp_recv(
            args.dst, args.port, args.start_at, args.duration, args.interval, args.src
        ).to_json()
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
