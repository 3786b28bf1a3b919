"""Overhead experiment: bytes on the access link per application packet and byte, per mode.

    qtlab run overhead [--quick] [--runs N] [--set modes=["plain","wireguard"]] ...
    python -m experiments.overhead [same options]

Topology "reference" (c1 -- WiFi -- rwifi -- conc -- srv1) with c1's 5G access down, so that
everything crosses the one WiFi access; its shaped link is set to `rate_mbit` / `delay_ms`.
The direction is towards the client, as in the failover experiment: experiments/traffic.py's
sender runs on conc for plain and WireGuard and on srv1 for the qtun modes, the receiver on c1.
tcpdump runs on c1's WiFi interface c1-wifi and the pcap is parsed with scapy afterwards; the
receiver's JSON report says what the application got.

Modes (experiments/variants.py MODES, one at a time: `Modes`): plain (no tunnel: conc's service
address straight over WiFi), tunnel / session (qtun, traffic from srv1 through the tunnel),
stream (session mode with stream mode on: TCP on QUIC streams, the concentrator opening the
connection to srv1; UDP still in DATAGRAM frames, so only the bulk TCP point runs), wireguard
(wireguard-go on c1 and conc, traffic from conc's inner WireGuard address).
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
  masque:    tunnel + MASQUE_PREFIX (2 B: Quarter Stream ID 0 and Context ID 0, RFC 9484 §6)
             = 60 B (CONNECT-IP on the same programs, issue 18)
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
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aioquic.buffer import size_uint_var

from experiments.flows import Flow, flow_error, run_flow
from experiments.runner import (
    NON_NEGATIVE,
    POSITIVE,
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
from experiments.schemas import OVERHEAD, tables
from experiments.variants import CLIENT, MODES, WG_MTU, Modes, Route, wifi_only
from testbed.lab import Lab
from testbed.profiles import profile
from testbed.topologies import CONCENTRATOR_V4
from tunnel.protocol.quic_ext import (
    AEAD_TAG_SIZE,
    CONNECTION_ID_LENGTH,
    SHORT_HEADER_FIXED_SIZE,
    packet_datagram_budget,
)
from tunnel.protocol.quic_ext import MAX_DATAGRAM_SIZE as CLIENT_MAX_DATAGRAM_SIZE
from tunnel.user_error import RuntimeFailure, SentenceParser, run_command
from tunnel.wire.datagram import SESSION_HEADER_SIZE
from tunnel.wire.http_datagram import H3Datagram, encode_ip_packet

# The reference topology (testbed/topologies.py): c1 -- WiFi -- rwifi -- conc -- srv1.
ACCESS = "wifi"  # the access measured; 5G is taken down so that nothing uses it
TRAFFIC_PORT = 5400

IPV4_HEADER = 20
UDP_HEADER = 8
TCP_HEADER_WITH_TIMESTAMPS = 20 + 20 + 12  # IPv4 + TCP + timestamp option (Linux default)
# What the programs run with: aioquic's connection IDs (8 bytes: neither program sets another
# length) and the client's UDP payload size (the framing does not depend on the latter as long
# as the budget is above 63 bytes).
QUIC_CID_LENGTH = CONNECTION_ID_LENGTH
QUIC_MAX_DATAGRAM_SIZE = CLIENT_MAX_DATAGRAM_SIZE
WG_DATA_HEADER = 16  # type 4 + receiver index 4 + counter 8 (WireGuard §5.4.6)
WG_TAG = 16
STREAM_FRAME_HEADER = 1 + 1 + 4 + 2  # type, stream id, offset (16 KiB..1 GiB), length
# MASQUE (RFC 9484 §6 on RFC 9297 §2.1): each DATAGRAM payload starts with the request stream's
# Quarter Stream ID (the client's first request stream, 0: a 1-byte varint) and Context ID 0
# (a full IP packet: 1 byte)
MASQUE_PREFIX = len(H3Datagram(0, encode_ip_packet(b"")).encode())

COLUMNS = list(OVERHEAD.columns)


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
            "masque": quic_datagram_framing(inner + MASQUE_PREFIX) + MASQUE_PREFIX,
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
        "masque": quic_datagram_framing(full) + MASQUE_PREFIX,
        "wireguard": IPV4_HEADER + UDP_HEADER + WG_DATA_HEADER + WG_TAG,
    }.get(mode)
    return None if extra is None else TCP_HEADER_WITH_TIMESTAMPS + extra


# -- pcap ------------------------------------------------------------------------------------
@dataclass
class FlowBytes:
    packets: int = 0
    bytes: int = 0


def count_flow(
    pcap: Path, proto: int, far_port: int, client_v4: str, far_v4: str = CONCENTRATOR_V4
) -> tuple[FlowBytes, FlowBytes]:
    """IPv4 bytes (IP total length) of the flow between far_v4:far_port (conc) and client_v4
    (c1's WiFi address), per direction (forward = conc -> c1, reverse = c1 -> conc); proto 17
    UDP or 6 TCP. The IP length field counts what was on the wire even though the capture keeps
    only headers."""
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
            if ip.src == far_v4 and ip.dst == client_v4 and l4.sport == far_port:
                forward.packets += 1
                forward.bytes += int(ip.len)
            elif ip.src == client_v4 and ip.dst == far_v4 and l4.dport == far_port:
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


# -- one point --------------------------------------------------------------------------------
# The UDP sweep is experiments/traffic.py's constant-rate flow; the bulk transfer a fixed number
# of bytes that all arrive (traffic.py tcp-send --bytes: the receiver reads to EOF, both sides
# close with FIN): a time-bounded transfer would leave bytes on the wire the application never
# read, and bias the per-byte overhead.
# --immediate-mode: packets reach tcpdump at once, not in 1-s blocks that a stop would lose;
# 128 bytes keep every header (the IP total length gives the size on the wire).
TCPDUMP = ["tcpdump", "-n", "--immediate-mode", "-U", "-s", "128"]


@dataclass
class OverheadState:
    """What the points share: the lab, a scratch directory, the mode running, and the client's
    WiFi interface and address (the capture's)."""

    lab: Lab
    workdir: Path
    modes: Modes
    access_intf: str
    client_v4: str


def bulk_timeout(params: Params) -> float:
    """Bound of one bulk transfer: 4x its time at the link rate, at least 20 s."""
    return max(20.0, 4 * int(params["bulk_bytes"]) * 8 / (float(params["rate_mbit"]) * 1e6))


def point_flow(params: Params, workload: str, route: Route, payload: int) -> Flow:
    """The flow of one point: `udp_pps` datagrams of `payload` bytes a second, or the bulk
    transfer of exactly `bulk_bytes`."""
    if workload == "udp":
        rate = float(params["udp_pps"]) * payload * 8 / 1e6
        return Flow(route.sender, route.address, CLIENT, route.address, "udp",
                    float(params["udp_seconds"]), TRAFFIC_PORT, udp_rate_mbit=rate,
                    udp_size_bytes=payload)  # fmt: skip
    return Flow(route.sender, route.address, CLIENT, route.address, "tcp", bulk_timeout(params),
                TRAFFIC_PORT, nbytes=int(params["bulk_bytes"]))  # fmt: skip


def run_point(ctx: Context[OverheadState], point: Point) -> PointResult:
    state, params = ctx.state, ctx.params
    mode, workload = str(point["mode"]), str(point["workload"])
    payload = int(point["payload_bytes"])
    if mode == "stream" and workload == "udp":
        return PointResult(skipped="stream mode carries TCP only; its UDP is tunnel datagrams")
    try:
        route = state.modes.ensure(mode)
    except Exception as exc:
        return PointResult(skipped=f"{mode} could not be set up: {str(exc).splitlines()[0]}")
    lab = state.lab
    out_dir = state.workdir / "points" / f"{mode}-{workload}-{payload}-{point['run']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    pcap = out_dir / "access.pcap"
    log_offset = _log_size(lab, "qnb-tcpdump")
    dump = lab.procs.start(
        lab.node(CLIENT),
        "qnb-tcpdump",
        [*TCPDUMP, "-i", state.access_intf, "-w", str(pcap), "ip"],
    )
    try:
        _wait_capturing(dump.log_path, log_offset)
        recv, sent = run_flow(lab, point_flow(params, workload, route, payload), out_dir)
        time.sleep(0.5)  # trailing ACKs into the capture
    finally:
        lab.procs.stop(dump)
    missed = tcpdump_missed(dump.log_path, log_offset)
    if missed:
        raise ExperimentError(f"the capture missed {missed} packets; the counts would be low.")
    if workload == "bulk-tcp" and recv.bytes_total != params["bulk_bytes"]:
        raise ExperimentError(
            f"the bulk receiver read {recv.bytes_total} of {params['bulk_bytes']} "
            f"bytes ({flow_error(recv, sent) or 'no error reported'})."
        )
    if workload == "udp":
        proto, port = 17, route.outer_udp_port or TRAFFIC_PORT
    else:
        proto, port = (17, route.outer_udp_port) if route.outer_udp_port else (6, TRAFFIC_PORT)
    forward, reverse = count_flow(pcap, proto, port, state.client_v4)
    if workload == "udp":
        packets = recv.unique
        app_bytes = packets * payload
    else:
        app_bytes = recv.bytes_total
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
        # the UDP sender's datagram count (a bulk transfer's is its byte count: not a packet)
        "sent": sent.get("sent", "") if workload == "udp" else "",
        "capture_missed": missed,
    }
    with contextlib.suppress(OSError):
        pcap.unlink()  # pcaps are not kept: they are large and the rows say what they held
    return PointResult(rows={"overhead": [row]})


def _log_size(lab: Lab, name: str) -> int:
    log = lab.log_dir / f"{CLIENT}-{name}.log"
    return log.stat().st_size if log.exists() else 0


def _read_log(log: Path, offset: int) -> str:
    """What a program logged since `offset` (logs are appended to across points)."""
    if not log.exists():
        return ""
    with open(log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _wait_capturing(log: Path, offset: int, timeout: float = 5.0) -> None:
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
def session(params: Params) -> Iterator[Context[OverheadState]]:
    workdir = Path(tempfile.mkdtemp(prefix="qnb-overhead-"))
    link = profile("none", rate_mbit=float(params["rate_mbit"]), delay_ms=float(params["delay_ms"]))
    profiles = {"wifi": link, "5g": link}
    with Lab(
        "reference", backend=str(params["backend"]), log_dir=workdir / "logs", profiles=profiles
    ) as lab:
        access = lab.access(ACCESS, CLIENT)
        extra_meta: dict[str, object] = {}
        modes = Modes(lab, workdir, extra_meta)
        ctx = Context(
            params,
            OverheadState(lab, workdir, modes, access.client_intf, access.client_v4),
            lab=lab,
        )
        ctx.extra_meta = extra_meta
        for node in (CLIENT, lab.plan.concentrator, lab.plan.servers[0]):
            lab.set_congestion_control(node, "cubic")
        ctx.backend = str(lab.backend)
        # measured and recorded, not required: the overhead is counted on the wire either way
        wifi_only(lab, ctx, verify=True, require=False)
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
            modes.stop()
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
    tables=tables(OVERHEAD),
    key_columns=("mode", "workload", "payload_bytes", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    quick={"runs": 1, "payloads": [64, 512, 1200], "udp_seconds": 1.0, "bulk_bytes": 3_000_000},
    description="per-packet and per-byte overhead on the wire per mode, from pcaps",
    bounds={
        **dict.fromkeys(("udp_pps", "udp_seconds", "bulk_bytes", "rate_mbit"), POSITIVE),
        "delay_ms": NON_NEGATIVE,
    },
)


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments.overhead`: the same options as `qtlab run overhead`."""
    import os

    argv = sys.argv[1:] if argv is None else argv
    p = SentenceParser(prog="python -m experiments.overhead")
    p.add_argument("--config", type=Path)
    p.add_argument("--runs", type=int)
    p.add_argument("--shard")
    p.add_argument("--resume", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")

    def run() -> int:
        from experiments.runner import parse_shard

        # parsed here, inside run_command: a mistake on the command line is one line too
        args = p.parse_args(argv)
        if os.geteuid() != 0:
            raise RuntimeFailure("the overhead experiment needs root (Mininet): run it with sudo.")
        params = resolve_params(EXPERIMENT, args.config, args.quick, args.runs, args.set)
        summary = run_experiment(
            EXPERIMENT, params, parse_shard(args.shard), args.resume, progress=not args.no_progress
        )
        print(summary_table(summary.run_dir))
        print(
            f"overhead: {summary.ran} point(s) measured, {summary.skipped} skipped, "
            f"{summary.failed} failed -> {summary.run_dir}"
        )
        return 1 if summary.failed else 0

    return run_command("overhead", run, interrupted="what was measured is in the run directory.")


if __name__ == "__main__":
    sys.exit(main())
