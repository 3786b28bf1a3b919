"""Overhead experiment: bytes on the access link per application packet and byte, per mode.

    qtlab run overhead [--quick] [--runs N] [--set modes=["plain","wireguard"]] ...
    python -m experiments.overhead [same options]

Topology "reference" (c1 -- WiFi -- rwifi -- conc -- srv1) with c1's 5G access down, so that
everything crosses the one WiFi access; its shaped link is set to `rate_mbit` / `delay_ms`.
The direction is towards the client, as in the failover experiment: experiments/traffic.py's
sender (or the bulk sender below) runs on conc for plain and WireGuard and on srv1 for the qtun
modes, the receiver on c1. tcpdump runs on c1's WiFi interface c1-wifi and the pcap is parsed
with scapy afterwards; the receiver's JSON report says what the application got.

Modes (MODES): plain (no tunnel: conc's service address 10.100.0.1 straight over WiFi),
tunnel / session (qtun through testbed/qtun.py, traffic from srv1 10.200.1.2 through the
tunnel), stream (session mode with stream mode on: TCP on QUIC streams, the concentrator opening
the connection to srv1; UDP still in DATAGRAM frames, so only the bulk TCP point runs),
wireguard (wireguard-go + wg on c1 and conc, inner 10.9.0.1 / 10.9.0.2, traffic from conc).
Workloads: a sweep of UDP payload sizes (each datagram carries `payload_bytes` of application
data, traffic.py's 16-byte sequence/time header included) at a fixed packet rate, and a bulk
TCP transfer of exactly `bulk_bytes`.

What is counted ("wire" = IPv4 packets on c1-wifi, IP header included, Ethernet framing not):
* wire_bytes / wire_packets: packets of the mode's outer flow in the forward direction
  (10.100.0.1 -> 10.1.1.2: UDP from port 5400 for plain UDP, TCP from 5400 for plain TCP, UDP
  from 4433 for qtun, from 51820 for WireGuard): ACK frames, PINGs and retransmissions
  included, because they are on the wire; reverse_* the same towards conc (QUIC ACKs, TCP
  ACKs, requests).
* UDP rows: packets = datagrams the receiver got (unique), app_bytes = packets x payload;
  overhead_per_packet_bytes = (wire_bytes - app_bytes) / packets.
* bulk-tcp rows (payload_bytes = -1): app_bytes = bytes the receiving application read,
  packets = forward wire packets (there is no application packet in a byte stream),
  overhead_per_packet_bytes = (wire_bytes - app_bytes) / wire_packets.
* overhead_pct = 100 x (wire_bytes - app_bytes) / app_bytes.

Framing arithmetic (expected_per_packet_bytes, from the code's real budget, see
`quic_datagram_framing`): inner IPv4+UDP 28 B (TCP: 20 + 20 + 12 B of timestamps = 52 B) plus
  tunnel:    outer IPv4+UDP 28 + (max_datagram_size - packet_datagram_budget(...)) = 28 + 30
             = 58 B (1-byte header flags, 8-byte DCID, 2-byte packet number, 16-byte AEAD tag,
             DATAGRAM type and 2-byte length; 57 B for an inner packet of <= 63 B)
  session:   tunnel + SESSION_HEADER_SIZE (4 B: Protocol Type + Packet Tag) = 62 B
  wireguard: outer IPv4+UDP 28 + data message header 16 + Poly1305 tag 16 = 60 B, plus the
             zero padding of the inner packet to a multiple of 16 (capped at the MTU)
  stream:    outer 28 + short header 11 + tag 16 + STREAM frame header (type 1, stream id 1,
             offset 4, length 2) = 63 B per packet, and no inner TCP/IP header at all.
Where measured and expected differ, the reason is on the wire (ACK frames bundled into the
forward packets, several DATAGRAM frames in one packet, inner fragmentation when the payload
exceeds the TUN MTU): the results README discusses the numbers.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.buffer import size_uint_var

from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
    resolve_params,
    run_experiment,
)
from testbed.qtun import QTUN_PORT
from testbed.topologies import CONCENTRATOR_V4
from tunnel.aio.client import MAX_DATAGRAM_SIZE as CLIENT_MAX_DATAGRAM_SIZE
from tunnel.protocol.quic_ext import AEAD_TAG_SIZE, SHORT_HEADER_FIXED_SIZE, packet_datagram_budget
from tunnel.wire.datagram import SESSION_HEADER_SIZE

# The reference topology (testbed/topologies.py): c1 -- WiFi -- rwifi -- conc -- srv1.
CLIENT, CONCENTRATOR, SERVER = "c1", "conc", "srv1"
ACCESS = "wifi"  # the access measured; 5G is taken down so that nothing uses it
CLIENT_V4 = "10.1.1.2"  # c1's WiFi address
SERVER_V4 = "10.200.1.2"  # srv1, reachable from c1 only through the tunnel
TRAFFIC_PORT = 5400
WG_PORT = 51820
WG_INNER = {CLIENT: "10.9.0.1", CONCENTRATOR: "10.9.0.2"}
# Distinct names: wireguard-go's UAPI socket (/var/run/wireguard/<name>.sock) is one file
# system for every namespace.
WG_IFNAME = {CLIENT: "qnbwg1", CONCENTRATOR: "qnbwg2"}
WG_MTU = 1420  # wireguard-go's default

IPV4_HEADER = 20
UDP_HEADER = 8
TCP_HEADER_WITH_TIMESTAMPS = 20 + 20 + 12  # IPv4 + TCP + timestamp option (Linux default)
# What the programs run with: aioquic's 8-byte connection IDs and the client's UDP payload size
# (the framing does not depend on the latter as long as the budget is above 63 bytes).
QUIC_CID_LENGTH = 8
QUIC_MAX_DATAGRAM_SIZE = CLIENT_MAX_DATAGRAM_SIZE
WG_DATA_HEADER = 16  # type 4 + receiver index 4 + counter 8 (WireGuard §5.4.6)
WG_TAG = 16
STREAM_FRAME_HEADER = 1 + 1 + 4 + 2  # type, stream id, offset (16 KiB..1 GiB), length

COLUMNS = [
    "mode",
    "workload",
    "payload_bytes",
    "run",
    "packets",
    "app_bytes",
    "wire_bytes",
    "wire_packets",
    "overhead_per_packet_bytes",
    "overhead_pct",
    "expected_per_packet_bytes",
    "reverse_wire_bytes",
    "reverse_packets",
    "sent",
    "capture_missed",
]

MODES = ("plain", "tunnel", "session", "stream", "wireguard")
QTUN_MODES = ("tunnel", "session", "stream")  # the modes run by the qtun programs


# -- framing arithmetic ---------------------------------------------------------------------
def quic_datagram_framing(inner_len: int) -> int:
    """Bytes a QUIC 1-RTT packet adds around one DATAGRAM payload of `inner_len` bytes (outer
    IPv4 + UDP included), from the budget the programs size their TUN MTU with: the budget
    assumes a 2-byte length varint, so a short payload saves one byte."""
    fixed = QUIC_MAX_DATAGRAM_SIZE - packet_datagram_budget(QUIC_MAX_DATAGRAM_SIZE, QUIC_CID_LENGTH)
    return IPV4_HEADER + UDP_HEADER + fixed - 2 + size_uint_var(inner_len)


def wireguard_framing(inner_len: int) -> int:
    padded = min(-(-inner_len // 16) * 16, max(WG_MTU, inner_len))
    return IPV4_HEADER + UDP_HEADER + WG_DATA_HEADER + WG_TAG + (padded - inner_len)


def expected_per_packet(mode: str, workload: str, payload: int) -> float | None:
    """The framing arithmetic for one application packet (UDP) or one full segment (TCP)."""
    if workload == "udp":
        inner = IPV4_HEADER + UDP_HEADER + payload
        extra = {
            "plain": 0,
            "tunnel": quic_datagram_framing(inner),
            "session": quic_datagram_framing(inner + SESSION_HEADER_SIZE) + SESSION_HEADER_SIZE,
            "wireguard": wireguard_framing(inner),
        }.get(mode)
        return None if extra is None else IPV4_HEADER + UDP_HEADER + extra
    full = 1400  # a full inner segment: any length > 63 gives the same QUIC framing
    if mode == "stream":
        quic_short = SHORT_HEADER_FIXED_SIZE + QUIC_CID_LENGTH + AEAD_TAG_SIZE
        return IPV4_HEADER + UDP_HEADER + quic_short + STREAM_FRAME_HEADER
    extra = {
        "plain": 0,
        "tunnel": quic_datagram_framing(full),
        "session": quic_datagram_framing(full) + SESSION_HEADER_SIZE,
        "wireguard": IPV4_HEADER + UDP_HEADER + WG_DATA_HEADER + WG_TAG,
    }.get(mode)
    return None if extra is None else TCP_HEADER_WITH_TIMESTAMPS + extra


# -- pcap ------------------------------------------------------------------------------------
@dataclass
class FlowBytes:
    packets: int = 0
    bytes: int = 0


def count_flow(pcap: Path, proto: int, far_port: int) -> tuple[FlowBytes, FlowBytes]:
    """IPv4 bytes (IP total length) of the flow between conc:far_port and c1's WiFi address,
    per direction (forward = conc -> c1, reverse = c1 -> conc); proto 17 UDP or 6 TCP. The IP
    length field counts what was on the wire even though the capture keeps only headers."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.utils import PcapReader

    layer = UDP if proto == 17 else TCP
    forward, reverse = FlowBytes(), FlowBytes()
    with PcapReader(str(pcap)) as reader:
        for packet in reader:
            if IP not in packet:
                continue
            ip = packet[IP]
            if ip.proto != proto or layer not in ip:
                continue
            l4 = ip[layer]
            if ip.src == CONCENTRATOR_V4 and ip.dst == CLIENT_V4 and l4.sport == far_port:
                forward.packets += 1
                forward.bytes += int(ip.len)
            elif ip.src == CLIENT_V4 and ip.dst == CONCENTRATOR_V4 and l4.dport == far_port:
                reverse.packets += 1
                reverse.bytes += int(ip.len)
    return forward, reverse


def tcpdump_missed(log: Path, offset: int = 0) -> int:
    """Packets that matched the capture but are not in the pcap, from tcpdump's exit summary:
    dropped by the kernel, or still queued when tcpdump stopped ("received by filter" minus
    "captured"). Anything but 0 makes the point's wire counts too low."""
    counts: dict[str, int] = {}
    for line in _read_log(log, offset).splitlines():
        for label in ("packets captured", "packets received by filter", "dropped by kernel"):
            if line.endswith(label) and line.split()[0].isdigit():
                counts[label] = int(line.split()[0])
    if "packets captured" not in counts:
        raise ExperimentError(f"tcpdump printed no summary in {log}: did it stop cleanly?")
    queued = counts.get("packets received by filter", 0) - counts["packets captured"]
    return max(0, queued) + counts.get("dropped by kernel", 0)


# -- the network under each mode --------------------------------------------------------------
def _python() -> str:
    return sys.executable


class WireGuardPair:
    """wireguard-go on c1 and conc over the WiFi access (a TUN per node, wg for the keys)."""

    def __init__(self, lab: Any, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.procs: list[Any] = []

    def start(self) -> WireGuardPair:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys: dict[str, tuple[Path, str]] = {}
        for node in (CLIENT, CONCENTRATOR):
            private = subprocess.run(
                ["wg", "genkey"], capture_output=True, text=True, check=True
            ).stdout.strip()
            public = subprocess.run(
                ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
            ).stdout.strip()
            key_file = self.workdir / f"{node}.key"
            key_file.write_text(private + "\n")
            key_file.chmod(0o600)
            keys[node] = (key_file, public)
        try:
            ends = ((CLIENT, CONCENTRATOR, CONCENTRATOR_V4), (CONCENTRATOR, CLIENT, CLIENT_V4))
            for node, peer, peer_addr in ends:
                host, ifname = self.lab.node(node), WG_IFNAME[node]
                argv = [
                    "env",
                    "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
                    "wireguard-go",
                    "-f",
                    ifname,
                ]
                self.procs.append(self.lab.procs.start(host, f"qnb-wireguard-go-{ifname}", argv))
                self._wait_for_interface(host, ifname)
                out = host.cmd(
                    f"wg set {ifname} private-key {keys[node][0]} listen-port {WG_PORT} "
                    f"peer {keys[peer][1]} allowed-ips {WG_INNER[peer]}/32 "
                    f"endpoint {peer_addr}:{WG_PORT} 2>&1; "
                    f"ip addr add {WG_INNER[node]}/24 dev {ifname} 2>&1; "
                    f"ip link set {ifname} mtu {WG_MTU} up 2>&1"
                ).strip()
                if out:
                    raise ExperimentError(f"configuring WireGuard on {node} failed: {out}.")
            ping = self.lab.node(CLIENT).cmd(f"ping -c 3 -i 0.2 -W 2 {WG_INNER[CONCENTRATOR]}")
            if " 0% packet loss" not in ping and " 33% packet loss" not in ping:
                raise ExperimentError("WireGuard between c1 and conc does not pass pings.")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_interface(self, host: Any, ifname: str) -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if "state" in host.cmd(f"ip link show {ifname} 2>/dev/null"):
                return
            time.sleep(0.05)
        raise ExperimentError(f"wireguard-go did not create {ifname} within 5 s.")

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                self.lab.procs.stop(proc)
        self.procs = []
        for node in (CLIENT, CONCENTRATOR):
            with contextlib.suppress(Exception):
                self.lab.node(node).cmd(f"ip link del {WG_IFNAME[node]} 2>/dev/null")


@dataclass
class Route:
    """Where the traffic comes from in one mode: the sending node, its address (what the
    receiver on c1 connects to) and the outer UDP port on conc (None: plain, the traffic's
    own flow)."""

    sender: str
    target: str
    udp_port: int | None


def ensure_mode(ctx: Context, mode: str, fresh: bool = False) -> Route:
    """Bring the network into `mode` (tearing down the previous mode's programs). `fresh`
    restarts qtun even when it already runs in `mode`, so that the point starts on new QUIC
    connections (initial congestion window), not on the ones the previous point left."""
    state = ctx.state
    if state.get("mode") == mode and not (fresh and mode in QTUN_MODES):
        current: Route = state["route"]
        return current
    teardown = state.pop("teardown", None)
    if teardown is not None:
        teardown()
    state["mode"] = None
    lab = state["lab"]
    state["starts"] = state.get("starts", 0) + 1
    workdir: Path = state["workdir"] / f"{mode}-{state['starts']}"
    route: Route
    if mode == "plain":
        route = Route(CONCENTRATOR, CONCENTRATOR_V4, None)
    elif mode == "wireguard":
        wg = WireGuardPair(lab, workdir).start()
        state["teardown"] = wg.stop
        route = Route(CONCENTRATOR, WG_INNER[CONCENTRATOR], WG_PORT)
    else:
        from testbed.qtun import QtunDeployment, TunnelSpec

        # Stream mode: the client intercepts TCP to what the tunnel routes (srv1 among it) and
        # carries it on QUIC streams; the concentrator opens the TCP connection to srv1.
        spec = TunnelSpec(mode="tunnel" if mode == "tunnel" else "session", stream=mode == "stream")
        dep = QtunDeployment(lab, spec, workdir=workdir).start()
        state["teardown"] = dep.stop
        tun = dep.status(CLIENT).get("tun", {})
        ctx.extra_meta.setdefault("tun_mtu", {})[mode] = tun.get("mtu")
        route = Route(SERVER, SERVER_V4, QTUN_PORT)
    state["mode"], state["route"] = mode, route
    return route


# -- traffic ---------------------------------------------------------------------------------
# The UDP sweep uses experiments/traffic.py (constant rate, numbered datagrams). The bulk
# transfer needs a fixed number of bytes that all arrive (the receiver reads to EOF, both sides
# close with FIN): a time-bounded transfer would leave bytes on the wire the application never
# read, and bias the per-byte overhead. These two small commands do that.
CONNECT_WINDOW_S = 10.0
# --immediate-mode: packets reach tcpdump at once, not in 1-s blocks that a stop would lose;
# 128 bytes keep every header (the IP total length gives the size on the wire).
TCPDUMP = ["tcpdump", "-n", "--immediate-mode", "-U", "-s", "128"]
BULK_CHUNK = 65536


def bulk_send(bind: str, port: int, nbytes: int, timeout_s: float) -> dict[str, Any]:
    """Accept one receiver, send `nbytes` zero bytes, half-close, wait for its EOF."""
    import socket

    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((bind, port))
        listener.listen(1)
        listener.settimeout(CONNECT_WINDOW_S)
        conn, _ = listener.accept()
    with conn:
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        chunk = bytes(BULK_CHUNK)
        left = nbytes
        while left > 0:
            left -= conn.send(chunk[: min(left, BULK_CHUNK)])
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):  # the receiver closes once it has read everything
            pass
    return {"sent_bytes": nbytes}


def bulk_recv(dst: str, port: int, timeout_s: float) -> dict[str, Any]:
    """Connect (retrying while the sender starts), read to EOF, report the byte count."""
    import socket

    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while True:
        try:
            sock = socket.create_connection((dst, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() - started > CONNECT_WINDOW_S:
                raise
            time.sleep(0.1)
    total = 0
    with sock:
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        while data := sock.recv(BULK_CHUNK):
            total += len(data)
    return {"bytes_total": total, "seconds": round(time.monotonic() - started, 3)}


def _start_traffic(
    ctx: Context, workload: str, route: Route, payload: int, out_dir: Path
) -> tuple[Any, Any, Path, Path]:
    lab, params = ctx.state["lab"], ctx.params
    send_out, recv_out = out_dir / "send.json", out_dir / "recv.json"
    if workload == "udp":
        start_at = time.monotonic() + 1.0  # both sides ready by then
        common = ["--port", str(TRAFFIC_PORT), "--start-at", f"{start_at:.3f}"]
        common += ["--duration", f"{float(params['udp_seconds']):g}"]
        rate = float(params["udp_pps"]) * payload * 8 / 1e6
        base = [_python(), "-m", "experiments.traffic"]
        send = [*base, "udp-send", "--bind", route.target, "--rate-mbit", f"{rate:.6f}"]
        send += ["--size", str(payload), *common, "--out", str(send_out)]
        recv = [*base, "udp-recv", "--dst", route.target, *common, "--out", str(recv_out)]
    else:
        base = [_python(), "-m", "experiments.overhead"]
        timeout = f"{bulk_timeout(params):g}"
        send = [*base, "bulk-send", "--bind", route.target, "--port", str(TRAFFIC_PORT)]
        send += ["--bytes", str(int(params["bulk_bytes"])), "--timeout", timeout]
        send += ["--out", str(send_out)]
        recv = [*base, "bulk-recv", "--dst", route.target, "--port", str(TRAFFIC_PORT)]
        recv += ["--timeout", timeout, "--out", str(recv_out)]
    sender = lab.procs.start(lab.node(route.sender), "qnb-send", send)
    if workload != "udp":
        # In stream mode c1's own interception accepts at once and the concentrator connects
        # to srv1 only then: the sender must already listen or the stream is reset.
        _wait_tcp_listening(lab.node(route.sender), TRAFFIC_PORT, sender)
    receiver = lab.procs.start(lab.node(CLIENT), "qnb-recv", recv)
    return sender, receiver, send_out, recv_out


def _wait_tcp_listening(node: Any, port: int, proc: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if str(port) in str(node.cmd(f"ss -Hltn 'sport = :{port}'")):
            return
        if not proc.running():
            break
        time.sleep(0.05)
    raise ExperimentError(f"the bulk sender on {node.name} is not listening on port {port}.")


def bulk_timeout(params: Params) -> float:
    """Bound of one bulk transfer: 4x its time at the link rate, at least 20 s."""
    return max(20.0, 4 * int(params["bulk_bytes"]) * 8 / (float(params["rate_mbit"]) * 1e6))


# -- one point --------------------------------------------------------------------------------
def run_point(ctx: Context, point: Point) -> PointResult:
    mode, workload = str(point["mode"]), str(point["workload"])
    payload = int(point["payload_bytes"])
    if mode == "stream" and workload == "udp":
        return PointResult(skipped="stream mode carries TCP only; its UDP is tunnel datagrams")
    try:
        route = ensure_mode(ctx, mode)
    except Exception as exc:
        ctx.state["mode"] = None
        return PointResult(skipped=f"{mode} could not be set up: {str(exc).splitlines()[0]}")
    lab, params = ctx.state["lab"], ctx.params
    seconds = float(params["udp_seconds"]) if workload == "udp" else bulk_timeout(params)
    out_dir: Path = ctx.state["workdir"] / "points" / f"{mode}-{workload}-{payload}-{point['run']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    pcap = out_dir / "access.pcap"
    log_offset = _log_size(lab, "qnb-tcpdump")
    dump = lab.procs.start(
        lab.node(CLIENT),
        "qnb-tcpdump",
        [*TCPDUMP, "-i", ctx.state["access_intf"], "-w", str(pcap), "ip"],
    )
    try:
        _wait_listening(dump.log_path, log_offset)
        sender, receiver, send_out, recv_out = _start_traffic(
            ctx, workload, route, payload, out_dir
        )
        limit = seconds + 15.0
        for proc in (receiver, sender):
            try:
                proc.popen.wait(limit)
            except subprocess.TimeoutExpired:
                lab.procs.stop(proc)
                raise ExperimentError(f"{proc.name} did not finish within {limit:g} s.") from None
            lab.procs.stop(proc)
        time.sleep(0.5)  # trailing ACKs into the capture
    finally:
        lab.procs.stop(dump)
    missed = tcpdump_missed(dump.log_path, log_offset)
    if missed:
        raise ExperimentError(f"the capture missed {missed} packets; the counts would be low.")
    received = json.loads(recv_out.read_text())
    sent = json.loads(send_out.read_text()) if send_out.exists() else {}
    if workload == "bulk-tcp" and received.get("bytes_total") != params["bulk_bytes"]:
        errors = "; ".join(str(r["error"]) for r in (received, sent) if r.get("error"))
        raise ExperimentError(
            f"the bulk receiver read {received.get('bytes_total')} of {params['bulk_bytes']} "
            f"bytes ({errors or 'no error reported'})."
        )
    if workload == "udp":
        proto, port = 17, route.udp_port or TRAFFIC_PORT
    else:
        proto, port = (17, route.udp_port) if route.udp_port else (6, TRAFFIC_PORT)
    forward, reverse = count_flow(pcap, proto, port)
    if workload == "udp":
        packets = int(received.get("unique", 0))
        app_bytes = packets * payload
    else:
        app_bytes = int(received.get("bytes_total", 0))
        packets = forward.packets
    if packets == 0 or app_bytes == 0:
        raise ExperimentError(f"no application data reached c1 ({mode}, {workload}).")
    overhead = forward.bytes - app_bytes
    row: Row = {
        "mode": mode,
        "workload": workload,
        "payload_bytes": payload,
        "run": point["run"],
        "packets": packets,
        "app_bytes": app_bytes,
        "wire_bytes": forward.bytes,
        "wire_packets": forward.packets,
        "overhead_per_packet_bytes": round(overhead / packets, 3),
        "overhead_pct": round(100 * overhead / app_bytes, 3),
        "expected_per_packet_bytes": expected_per_packet(mode, workload, payload),
        "reverse_wire_bytes": reverse.bytes,
        "reverse_packets": reverse.packets,
        "sent": sent.get("sent", ""),
        "capture_missed": missed,
    }
    with contextlib.suppress(OSError):
        pcap.unlink()  # pcaps are not kept: they are large and the rows say what they held
    return PointResult(rows={"overhead": [row]})


def _log_size(lab: Any, name: str) -> int:
    log = lab.log_dir / f"{CLIENT}-{name}.log"
    return log.stat().st_size if log.exists() else 0


def _read_log(log: Path, offset: int) -> str:
    """What a program logged since `offset` (logs are appended to across points)."""
    if not log.exists():
        return ""
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _wait_listening(log: Path, offset: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "listening on" in _read_log(log, offset):
            return
        time.sleep(0.05)
    raise ExperimentError(f"tcpdump did not start within {timeout:g} s ({log}).")


# -- the sweep --------------------------------------------------------------------------------
def points(params: Params) -> list[Point]:
    """Grouped by mode, so each mode's tunnel is set up once for all its points."""
    unknown = [m for m in params["modes"] if m not in MODES]
    if unknown:
        raise ExperimentError(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}.")
    bad = [p for p in params["payloads"] if not 16 <= int(p) <= 1400]
    if bad:
        raise ExperimentError(f"payload sizes must be 16..1400 bytes, not {bad}.")
    out: list[Point] = []
    for mode in params["modes"]:
        for run in range(int(params["runs"])):
            for payload in params["payloads"]:
                out.append(
                    Point({"mode": mode, "workload": "udp", "payload_bytes": payload, "run": run})
                )
            if params["bulk"]:
                out.append(
                    Point({"mode": mode, "workload": "bulk-tcp", "payload_bytes": -1, "run": run})
                )
    return out


@contextlib.contextmanager
def session(params: Params) -> Iterator[Context]:
    import tempfile

    from testbed.fidelity import verify_link
    from testbed.lab import Lab
    from testbed.profiles import profile

    ctx = Context(params)
    workdir = Path(tempfile.mkdtemp(prefix="qnb-overhead-"))
    link = profile("none", rate_mbit=float(params["rate_mbit"]), delay_ms=float(params["delay_ms"]))
    profiles = {"wifi": link, "5g": link}
    with Lab(
        "reference", backend=str(params["backend"]), log_dir=workdir / "logs", profiles=profiles
    ) as lab:
        access = lab.access(ACCESS, CLIENT)
        if access.client_v4 != CLIENT_V4:
            raise ExperimentError(f"c1's WiFi address is {access.client_v4}, not {CLIENT_V4}.")
        for node in (CLIENT, CONCENTRATOR, SERVER):
            lab.set_congestion_control(node, "cubic")
        ctx.state.update(lab=lab, workdir=workdir, mode=None, access_intf=access.client_intf)
        ctx.backend = str(lab.backend)
        if access.shaped is None:
            raise ExperimentError("the reference topology's WiFi access is not shaped.")
        ctx.fidelity = [vars(r) for r in verify_link(lab, access.shaped)]
        # Only WiFi carries anything: no session-mode connection or route on 5G to miss.
        lab.access_down("5g", CLIENT)
        ctx.extra_meta.update(
            {
                "topology": "reference (5G access down)",
                "capture": f"tcpdump on {CLIENT}:{access.client_intf}, IPv4 total length",
                "direction": "conc (plain, WireGuard) or srv1 (qtun modes) -> c1",
                "link": link.as_dict(),
                "lab": lab.describe(),
                "framing": {
                    "quic_datagram_framing_bytes": quic_datagram_framing(1400),
                    "quic_max_datagram_size": QUIC_MAX_DATAGRAM_SIZE,
                    "quic_cid_length": QUIC_CID_LENGTH,
                    "session_header_bytes": SESSION_HEADER_SIZE,
                    "wireguard_framing_bytes": IPV4_HEADER + UDP_HEADER + WG_DATA_HEADER + WG_TAG,
                    "wireguard_mtu": WG_MTU,
                },
                "workdir": str(workdir),
            }
        )
        try:
            yield ctx
        finally:
            teardown = ctx.state.pop("teardown", None)
            if teardown is not None:
                teardown()
    if not params["keep_logs"]:
        shutil.rmtree(workdir, ignore_errors=True)


def summary_table(run_dir: Path) -> str:
    """What `qtlab run overhead` prints at the end: measured vs arithmetic per mode and size."""
    from experiments.analysis import ResultsError, load_overhead, overhead_summary

    try:
        summary = overhead_summary(load_overhead(run_dir))
    except ResultsError as exc:
        return f"overhead: no table ({exc})"
    columns = {
        "mode": "mode",
        "workload": "workload",
        "payload_bytes": "payload B",
        "overhead_per_packet_bytes": "measured B/pkt",
        "expected_per_packet_bytes": "arithmetic B/pkt",
        "overhead_pct": "overhead %",
    }
    table = summary[list(columns)].rename(columns=columns)
    table["payload B"] = table["payload B"].map(lambda v: "bulk" if v < 0 else str(v))
    return str(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))


EXPERIMENT = Experiment(
    name="overhead",
    defaults={
        "runs": 3,
        "seed": 1,
        "modes": list(MODES),
        "payloads": [64, 256, 512, 1024, 1200],
        "bulk": True,
        "udp_pps": 500,
        "udp_seconds": 2.0,
        "bulk_bytes": 8_000_000,
        "rate_mbit": 20.0,
        "delay_ms": 2.0,
        "backend": "auto",
        "keep_logs": False,  # True: keep program logs (not pcaps) in the workdir named in meta
    },
    tables={"overhead": COLUMNS},
    key_columns=("mode", "workload", "payload_bytes", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    quick={"runs": 1, "payloads": [64, 512, 1200], "udp_seconds": 1.0, "bulk_bytes": 3_000_000},
    description="per-packet and per-byte overhead on the wire per mode, from pcaps",
)


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments.overhead`: the same options as `qtlab run overhead`."""
    import argparse
    import os

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("bulk-send", "bulk-recv"):
        return bulk_tool(argv)
    p = argparse.ArgumentParser(prog="python -m experiments.overhead")
    p.add_argument("--config", type=Path)
    p.add_argument("--runs", type=int)
    p.add_argument("--shard")
    p.add_argument("--resume", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from experiments.runner import parse_shard

    try:
        if os.geteuid() != 0:
            raise ExperimentError("the overhead experiment needs root (Mininet): run it with sudo.")
        params = resolve_params(EXPERIMENT, args.config, args.quick, args.runs, args.set)
        summary = run_experiment(
            EXPERIMENT, params, parse_shard(args.shard), args.resume, progress=not args.no_progress
        )
    except ExperimentError as exc:
        print(f"overhead: error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(summary.run_dir))
    print(
        f"overhead: {summary.ran} point(s) measured, {summary.skipped} skipped, "
        f"{summary.failed} failed -> {summary.run_dir}"
    )
    return 1 if summary.failed else 0


def bulk_tool(argv: list[str]) -> int:
    """`bulk-send` / `bulk-recv` (run on the Mininet hosts by run_point)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.overhead")
    sub = p.add_subparsers(dest="command", required=True)
    send = sub.add_parser("bulk-send")
    send.add_argument("--bind", required=True)
    send.add_argument("--bytes", type=int, required=True)
    recv = sub.add_parser("bulk-recv")
    recv.add_argument("--dst", required=True)
    for s in (send, recv):
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--timeout", type=float, default=60.0)
        s.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    code = 0
    try:
        if args.command == "bulk-send":
            result = bulk_send(args.bind, args.port, args.bytes, args.timeout)
        else:
            result = bulk_recv(args.dst, args.port, args.timeout)
    except OSError as exc:  # timeouts, resets: reported to run_point, not a traceback
        result = {"error": f"{args.command}: {exc.strerror or exc!r}", "bytes_total": 0}
        code = 1
    args.out.write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
