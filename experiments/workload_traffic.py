"""The workload experiment's traffic programs, run on Mininet hosts as subprocesses (real sockets).

    python -m experiments.workload_traffic voip-send --bind 10.200.1.2 --port 5700 \
        --start-at T --duration 30 [--calls 1] --out send.json
    python -m experiments.workload_traffic voip-recv --dst 10.200.1.2 --port 5700 \
        --start-at T --duration 30 --out recv.json
    python -m experiments.workload_traffic web-fetch --dst 10.200.1.2 --port 5800 \
        --start-at T --duration 30 --count 40 --seed 1 --parallel 2 --out fetch.json
    python -m experiments.workload_traffic video-serve --bind 10.200.1.2 --port 5900 --until T
    python -m experiments.workload_traffic video-play --dst 10.200.1.2 --port 5900 \
        --start-at T --duration 60 [--buffer-s 30] --out video.json

As experiments/traffic.py's tools: the server side sends and the client side (c1, behind the
accesses) asks, both are given an absolute start time on CLOCK_MONOTONIC (one clock for every
namespace of the machine) and every loop is bounded by its deadline.

voip-send / voip-recv: `--calls` G.711-like calls (experiments/voice_quality.py) from one UDP
socket, the server to c1 (the downlink half of a call: the direction a download fills). Each
packet is an RTP packet as a G.711 phone sends it (RFC 3550 §5.1: version 2, payload type 0
PCMU, sequence number, 8 kHz timestamp, SSRC = call number + 1) with 160 bytes of payload whose
first 8 are the sender's CLOCK_MONOTONIC time in ns at sending (the rest zero): 172 bytes, the
size a real call puts on the wire. Calls are staggered across the 20 ms period. The receiver
asks (traffic.REQUEST) until the first packet comes and records every packet's (sequence
number, send time, arrival time); the metrics are computed by the experiment
(voice_quality.call_metrics), so their parameters (playout buffer) are not baked in here.

web-fetch: `--count` objects whose sizes are web_mix.object_sizes(seed, count, max_bytes),
fetched in order by `--parallel` workers, one new TCP connection each (HTTP/1.0-like: the
handshake is part of a short flow's life), from experiments/soak_traffic.py's server
(`soak_traffic serve`; its GET sends checked bytes, so a corrupted or short object is caught).
A flow's completion time (FCT) is from before connect() to the last byte (EOF). Workers start
no new fetch after the deadline; a fetch under way is bounded by soak_traffic's IDLE_S per read.

video-serve / video-play: an adaptive-bitrate video session over HTTP/1.1 (experiments/
video_abr.py has the ladder, the ABR rule and the playout accounting). The server (a stdlib
ThreadingHTTPServer on the sending side) answers `GET /video/<rung>/<index>.m4s` with exactly
video_abr.segment_bytes(LADDER_MBPS[rung]) bytes (Content-Length, zeros: the content is not
the point, its size and timing are) and stops at `--until` + VIDEO_SERVER_GRACE_S. The player
on c1 keeps one persistent connection (as players do; a new one after an error), fetches
segments one at a time while the buffer has room below `--buffer-s`, picks each segment's
rate by the ABR rule from the throughputs measured so far, plays out in real time (Playout)
and stops at the deadline (a segment under way then is abandoned, counted). It records each
segment (rate, bytes, request and arrival times from the origin, download time, throughput,
buffer level at the request); the experiment computes the session's metrics from those
(video_abr.session_metrics, the accounting the player ran live).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from experiments.soak_traffic import transfer
from experiments.traffic import GRACE_S, REQUEST, wait_for_request, write_result
from experiments.video_abr import (
    BUFFER_GOAL_S,
    LADDER_MBPS,
    SEGMENT_S,
    Playout,
    choose_rung,
    segment_bytes,
)
from experiments.voice_quality import PACKET_INTERVAL_MS, PAYLOAD_BYTES
from experiments.web_mix import DEFAULT_MAX_BYTES, object_sizes
from tunnel.user_error import SentenceParser, run_command

RTP_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC
RTP_V2 = 0x80
PT_PCMU = 0  # RFC 3551: G.711 mu-law
SEND_TIME = struct.Struct("!Q")
SAMPLES_PER_PACKET = 160  # 20 ms of 8 kHz
MAX_CALLS = 50
MAX_PARALLEL = 16
SEGMENT_PATH = re.compile(r"/video/(\d{1,2})/(\d{1,6})\.m4s")
VIDEO_IDLE_S = 10.0  # a read (either side) that makes no progress this long gives up
VIDEO_SERVER_GRACE_S = 2.0  # the player stops at the same deadline: the server needs little
VIDEO_CHUNK = 65536


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def rtp_packet(call: int, seq: int, send_ns: int) -> bytes:
    """One call's packet number `seq` (module docstring)."""
    header = RTP_HEADER.pack(
        RTP_V2, PT_PCMU, seq & 0xFFFF, (seq * SAMPLES_PER_PACKET) & 0xFFFFFFFF, call + 1
    )
    payload = SEND_TIME.pack(send_ns) + bytes(PAYLOAD_BYTES - SEND_TIME.size)
    return header + payload


def parse_rtp(data: bytes) -> tuple[int, int, int] | None:
    """(call number, 16-bit sequence number, send time ns) of a packet, None if it is not one."""
    if len(data) < RTP_HEADER.size + SEND_TIME.size:
        return None
    first, _pt, seq, _ts, ssrc = RTP_HEADER.unpack_from(data)
    if first & 0xC0 != RTP_V2 or ssrc < 1:
        return None
    (send_ns,) = SEND_TIME.unpack_from(data, RTP_HEADER.size)
    return ssrc - 1, seq, send_ns


# -- VoIP --------------------------------------------------------------------------------------
def voip_send(bind: str, port: int, start_at: float, duration: float, calls: int) -> dict[str, Any]:
    """Wait for the receiver's request, then send every call's packets until the deadline."""
    deadline = start_at + duration
    report: dict[str, Any] = {"sent": [0] * calls, "send_errors": 0, "error": None}
    period = PACKET_INTERVAL_MS / 1000
    with socket.socket(_family(bind), socket.SOCK_DGRAM) as sock:
        sock.bind((bind, port))
        peer = wait_for_request(sock, deadline)
        if peer is None:
            report["error"] = "no receiver asked"
            return report
        sock.setblocking(False)
        t0 = max(time.monotonic(), start_at)
        slips: list[float] = []
        tick = 0  # packet slots: call c's packet k is slot k * calls + c
        while True:
            seq, call = divmod(tick, calls)
            due = t0 + seq * period + call * period / calls
            if due >= deadline:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
                continue
            slips.append(now - due)
            try:
                sock.sendto(rtp_packet(call, seq, time.monotonic_ns()), peer)
            except OSError:
                report["send_errors"] += 1  # lost, as the network would lose it
            report["sent"][call] += 1
            tick += 1
        # how late the sender itself was against its 20 ms schedule (the machine, not the
        # network: voice_quality measures from the stamped send time)
        report["slip_max_ms"] = max(slips, default=0.0) * 1000
        report["slip_mean_ms"] = sum(slips) / len(slips) * 1000 if slips else 0.0
    return report


def voip_recv(
    dst: str, port: int, start_at: float, duration: float, src: str | None = None
) -> dict[str, Any]:
    """Ask for the calls, record every packet until the deadline (+ traffic.GRACE_S)."""
    deadline = start_at + duration + GRACE_S
    calls: dict[int, dict[str, list[int]]] = {}
    result: dict[str, Any] = {"connected": False, "error": None, "calls": calls}
    with socket.socket(_family(dst), socket.SOCK_DGRAM) as sock:
        if src is not None:
            sock.bind((src, 0))
        sock.settimeout(0.05)
        next_request = 0.0
        while (now := time.monotonic()) < deadline:
            if not result["connected"] and now >= next_request:
                with contextlib.suppress(OSError):
                    sock.sendto(REQUEST, (dst, port))
                next_request = now + 0.3
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            except OSError as exc:  # ICMP errors reported on the socket: keep listening
                result["error"] = f"recv: {exc.strerror or exc}"
                continue
            arrived = time.monotonic_ns()
            packet = parse_rtp(data)
            if packet is None:
                continue
            result["connected"] = True
            call, seq, send_ns = packet
            record = calls.setdefault(call, {"seq": [], "send_ns": [], "recv_ns": []})
            record["seq"].append(seq)
            record["send_ns"].append(send_ns)
            record["recv_ns"].append(arrived)
    return result


# -- short flows -------------------------------------------------------------------------------
def web_fetch(
    dst: str,
    port: int,
    start_at: float,
    duration: float,
    sizes: list[int],
    parallel: int,
) -> dict[str, Any]:
    """Fetch the objects in order with `parallel` workers until the deadline; one record each."""
    deadline = start_at + duration
    flows: list[dict[str, Any]] = []
    lock = threading.Lock()
    next_index = 0

    def worker() -> None:
        nonlocal next_index
        while time.monotonic() < deadline:
            with lock:
                index = next_index
                next_index += 1
            if index >= len(sizes):
                return
            begun = time.monotonic()
            # the object's number seeds its content (soak_traffic checks the bytes against it)
            row = transfer("GET", dst, port, index, sizes[index], 0.0)
            record = {
                "flow": index,
                "size_bytes": sizes[index],
                "start_s": begun - start_at,
                "fct_ms": row["latency_ms"],
                "bytes": row["bytes"],
                "outcome": row["outcome"],
                "error": row["error"],
            }
            with lock:
                flows.append(record)

    while (wait := start_at - time.monotonic()) > 0:
        time.sleep(min(wait, 0.05))
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    flows.sort(key=lambda r: int(r["flow"]))
    return {"flows": flows, "objects": len(sizes), "not_started": len(sizes) - len(flows)}


# -- adaptive-bitrate video --------------------------------------------------------------------
class _SegmentHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection for the session
    timeout = VIDEO_IDLE_S

    def do_GET(self) -> None:
        match = SEGMENT_PATH.fullmatch(self.path)
        if match is None or int(match[1]) >= len(LADDER_MBPS):
            self.send_error(404, "no such segment")
            return
        size = segment_bytes(LADDER_MBPS[int(match[1])])
        self.send_response(200)
        self.send_header("Content-Type", "video/iso.segment")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        zeros = memoryview(bytes(VIDEO_CHUNK))
        left = size
        while left > 0:
            n = min(left, VIDEO_CHUNK)
            self.wfile.write(zeros[:n])
            left -= n

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per segment would fill the host's log


class SegmentServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks getfqdn(): a reverse lookup a lab namespace cannot answer
        # quickly; the name is only used in CGI variables
        super(ThreadingHTTPServer, self).server_bind()  # TCPServer's: bind only
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a player gone mid-segment: the player's record says what happened


class SegmentServer6(SegmentServer):
    address_family = socket.AF_INET6


def segment_server(bind: str, port: int) -> SegmentServer:
    """A listening segment server (port 0: any free one, in server_address)."""
    cls = SegmentServer6 if ":" in bind else SegmentServer
    return cls((bind, port), _SegmentHandler)


def serve_until(server: SegmentServer, stop_at: float) -> None:
    """Serve from a thread until `stop_at` (CLOCK_MONOTONIC), then close."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    try:
        while (left := stop_at - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))
    finally:
        server.shutdown()
        server.server_close()


def _fetch_segment(
    conn: http.client.HTTPConnection, path: str, size: int, deadline: float, buf: bytearray
) -> int:
    """GET one segment on `conn`: the bytes received, all `size` of them unless the deadline
    came first (fewer). Raises OSError / HTTPException on a failed exchange."""
    # connecting and the response's head are bounded by the deadline too
    conn.timeout = min(VIDEO_IDLE_S, max(0.05, deadline - time.monotonic()))
    if conn.sock is not None:
        conn.sock.settimeout(conn.timeout)
    conn.request("GET", path)
    response = conn.getresponse()
    if response.status != 200:
        response.read()
        raise http.client.HTTPException(f"HTTP {response.status} for {path}")
    if response.length != size:
        raise http.client.HTTPException(f"{path}: {response.length} bytes announced, not {size}")
    view = memoryview(buf)
    got = 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        assert conn.sock is not None
        conn.sock.settimeout(min(VIDEO_IDLE_S, max(0.05, left)))
        try:
            n = response.readinto(view[: min(len(buf), size - got)])
        except TimeoutError:
            if time.monotonic() >= deadline:
                break
            raise
        if n == 0:
            raise http.client.IncompleteRead(bytes(got), size - got)
        got += n
    return got


def video_play(
    dst: str,
    port: int,
    start_at: float,
    duration: float,
    buffer_goal_s: float = BUFFER_GOAL_S,
    src: str | None = None,
) -> dict[str, Any]:
    """Play one session from `start_at` to start + duration (module docstring)."""
    deadline = start_at + duration
    segments: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "connected": False,
        "error": None,
        "segments": segments,
        "abandoned": 0,
        "errors": 0,
        "duration_s": duration,
        "buffer_goal_s": buffer_goal_s,
    }
    while (wait := start_at - time.monotonic()) > 0:
        time.sleep(min(wait, 0.05))
    player = Playout(origin=start_at)
    throughputs: list[float] = []
    buf = bytearray(VIDEO_CHUNK)
    source = (src, 0) if src is not None else None
    conn = http.client.HTTPConnection(dst, port, timeout=VIDEO_IDLE_S, source_address=source)
    try:
        while (now := time.monotonic()) < deadline:
            # fetch only while the buffer has room for one more segment below the goal
            excess = player.level(now) - (buffer_goal_s - SEGMENT_S)
            if excess > 0:
                time.sleep(min(excess, deadline - now))
                continue
            rung = choose_rung(throughputs)
            rate, size = LADDER_MBPS[rung], segment_bytes(LADDER_MBPS[rung])
            level = player.level(now)
            path = f"/video/{rung}/{len(segments)}.m4s"
            asked = time.monotonic()
            try:
                got = _fetch_segment(conn, path, size, deadline, buf)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, TimeoutError) and time.monotonic() >= deadline:
                    report["abandoned"] += 1  # its answer had not begun by the deadline
                    break
                # a reset or stalled connection (an outage): a new one, the same segment again
                report["errors"] += 1
                report["error"] = f"{type(exc).__name__}: {exc}"
                conn.close()
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                continue
            report["connected"] = True
            if got < size:
                report["abandoned"] += 1  # the deadline came during its download
                break
            arrived = time.monotonic()
            took = max(arrived - asked, 1e-6)
            throughputs.append(size * 8 / took / 1e6)
            player.segment_arrived(arrived, rate)
            segments.append(
                {
                    "segment": len(segments),
                    "rate_mbps": rate,
                    "bytes": got,
                    "request_s": asked - start_at,
                    "arrival_s": arrived - start_at,
                    "download_ms": took * 1000,
                    "throughput_mbps": throughputs[-1],
                    "buffer_s": level,
                }
            )
    finally:
        conn.close()
    return report


# -- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = SentenceParser(prog="python -m experiments.workload_traffic")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("voip-send", "voip-recv", "web-fetch"):
        s = sub.add_parser(name)
        if name == "voip-send":
            s.add_argument("--bind", required=True)
            s.add_argument("--calls", type=int, default=1)
        else:
            s.add_argument("--dst", required=True)
        if name == "voip-recv":
            s.add_argument("--src", help="bind to this local address before asking")
        if name == "web-fetch":
            s.add_argument("--count", type=int, required=True, help="objects to fetch")
            s.add_argument("--seed", default="1", help="the object sizes' seed (web_mix)")
            s.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
            s.add_argument("--parallel", type=int, default=1, help="concurrent fetches")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--start-at", type=float, required=True, help="CLOCK_MONOTONIC seconds")
        s.add_argument("--duration", type=float, required=True)
        s.add_argument("--out", type=Path, help="JSON file for the record / sender report")
    serve = sub.add_parser("video-serve")
    serve.add_argument("--bind", required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--until", type=float, required=True, help="CLOCK_MONOTONIC seconds")
    play = sub.add_parser("video-play")
    play.add_argument("--dst", required=True)
    play.add_argument("--src", help="bind to this local address before connecting")
    play.add_argument("--port", type=int, required=True)
    play.add_argument("--start-at", type=float, required=True, help="CLOCK_MONOTONIC seconds")
    play.add_argument("--duration", type=float, required=True, help="the session, seconds")
    play.add_argument(
        "--buffer-s", type=float, default=BUFFER_GOAL_S, help="the buffer goal, seconds"
    )
    play.add_argument("--out", type=Path, help="JSON file for the session's record")
    return p


def _usage(message: str) -> int:
    print(f"workload_traffic: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    # parsed inside run_command: a mistake on the command line is one line too (exit code 2)
    return run_command("workload_traffic", lambda: _run(build_parser().parse_args(argv)))


def _run(args: argparse.Namespace) -> int:
    if args.command == "video-serve":
        serve_until(segment_server(args.bind, args.port), args.until + VIDEO_SERVER_GRACE_S)
        return 0
    if not 0 < args.duration <= 3600:
        return _usage("--duration must be between 0 and 3600 s.")
    result: dict[str, Any]
    if args.command == "video-play":
        if not SEGMENT_S <= args.buffer_s <= 600:
            return _usage(f"--buffer-s must be between {SEGMENT_S:g} (one segment) and 600 s.")
        result = video_play(
            args.dst, args.port, args.start_at, args.duration, args.buffer_s, args.src
        )
    elif args.command == "voip-send":
        if not 1 <= args.calls <= MAX_CALLS:
            return _usage(f"--calls must be between 1 and {MAX_CALLS}.")
        result = voip_send(args.bind, args.port, args.start_at, args.duration, args.calls)
    elif args.command == "voip-recv":
        result = voip_recv(args.dst, args.port, args.start_at, args.duration, args.src)
    else:
        if not 1 <= args.parallel <= MAX_PARALLEL or not 0 <= args.count <= 100_000:
            return _usage(f"--parallel must be 1..{MAX_PARALLEL} and --count 0..100000.")
        sizes = object_sizes(args.seed, args.count, args.max_bytes)
        result = web_fetch(args.dst, args.port, args.start_at, args.duration, sizes, args.parallel)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
