"""`make bench`: iperf3 TCP goodput and CPU of the tunnel modes against the plain path.

    python -m experiments.bench [--seconds N] [--profiles none,wifi,5g] [--reverse] [--rate MBIT]
                                [--modes plain,tunnel,session,stream,masque,wireguard,openvpn]
                                [--profile]

One Lab on the "pair" topology (h1 -- shaped link -- h2) for the whole run. For each link profile
(testbed/profiles.py, the same profile both ways) and each mode, one iperf3 TCP transfer h1 -> h2
(h2 -> h1 with --reverse), as fast as it goes or at `--rate` Mbit/s (iperf3 -b):
  plain    straight over the link to 10.0.0.2
  tunnel   through `qtun` tunnel mode (client on h1, concentrator on h2) to h2's TUN 10.8.0.1
  session  the same through tunnel session mode (one access: the link)
  stream   tunnel mode with stream mode: the client intercepts the TCP connection to 10.8.0.1
           and carries it on a QUIC stream; the concentrator connects to its own TUN address
           (allowed here by `stream.allow_own_addresses`)
  masque   MASQUE CONNECT-IP (RFC 9484) over HTTP/3 (ALPN h3), what a user would pick instead
           (issue 18): the same programs, `mode = "masque"`, one connection
  wireguard  our peers, in the same run: wireguard-go between h1 and h2 (userspace, like qtun)
  openvpn    OpenVPN 2.6, TLS, UDP, its negotiated AES-256-GCM, userspace (experiments/variants.py)
Goodput is iperf3's receiver-side figure (its JSON output); CPU% is the client's and the
concentrator's utime+stime from /proc/<pid>/stat over the transfer's wall time (100 % = one core).
µs per packet: that CPU time divided by the inner packets a program's TUN moved (read plus
written, from its status file: tun.rx_packets + tun.tx_packets, which count a merged write or a
segmented read by its packets, where the kernel's interface statistics count one; the larger
count of the two programs, which carry the same packets) — what carrying one inner packet costs
each program. For our peers, their devices' kernel statistics. At a low `--rate` each wakeup
of a program carries one packet or a few, so µs per packet there is the cost of a wakeup: what
each of the scale experiment's many slow clients pays (README "Benchmarks").
(in stream mode the TUN carries only what is not relayed on streams, so no figure).

Writes results/bench/<YYYYmmdd-HHMMSS>/bench.csv (mode, profile, goodput_mbps, client_cpu_pct,
concentrator_cpu_pct, duration_s, retransmits, mtu, error) and meta.json. A mode that fails gets
a row with its error and the run goes on.
A new mode is one entry in MODES.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experiments.procstat import cpu_seconds
from experiments.profile_stacks import py_spy, recording
from experiments.runner import git_state, software_versions, write_meta
from experiments.text_columns import align
from experiments.variants import OpenVpn, WireGuard
from testbed.hosts import Node, check_congestion_control
from testbed.lab import Lab, LabError
from testbed.paths import RESULTS_ROOT
from testbed.profiles import PROFILES, profile
from testbed.qtun import CONCENTRATOR_TUN_V4, QtunDeployment, QtunError, TunnelSpec
from testbed.shaping import BACKENDS
from tunnel.user_error import RuntimeFailure, SentenceParser, UsageError, run_command

IPERF_PORT = 5201
CLIENT, SERVER = "h1", "h2"
FIELDS = [
    "mode",
    "profile",
    "goodput_mbps",
    "client_cpu_pct",
    "concentrator_cpu_pct",
    "duration_s",
    "retransmits",
    "mtu",
    "vs_plain",
    "client_us_per_packet",
    "concentrator_us_per_packet",
    "error",
]
DEFAULT_PROFILES = ("none", "wifi", "5g")


@dataclass(frozen=True)
class BenchMode:
    """One way of carrying the transfer: qtun (`spec`), a peer VPN (`peer`: "wireguard",
    "openvpn"), or neither: the plain path."""

    name: str
    spec: TunnelSpec | None
    description: str
    peer: str | None = None
    default: bool = True  # run without --modes


# iperf3's server runs on h2, the concentrator's own host, which clients may not reach by
# default (to_concentrator = "ping": README "Security").
OWN_HOST_ALLOWED = ('to_concentrator="allow"',)
# both programs without the datagram fast path (README "Benchmarks")
GENERIC_PATH = "limits.fast_datagram_path=false"
# both programs writing their TUN a packet at a time (README "Merged TCP writes")
NO_OFFLOAD = "tun.offload=false"
# both programs reading their TUN a packet at a time (README "Segmentation offload")
NO_TSO = "tun.tso=false"


def baseline(name: str, override: str, description: str) -> BenchMode:
    """A mode `name` ("<tunnel mode>-<what>") run with `override` on both programs, as the
    baseline of an optimisation in the same run; only with --modes."""
    spec = TunnelSpec(
        mode=name.split("-")[0],
        client_overrides=(override,),
        concentrator_overrides=(*OWN_HOST_ALLOWED, override),
    )
    return BenchMode(name, spec, f"{description}; only with --modes", default=False)


MODES: dict[str, BenchMode] = {
    m.name: m
    for m in (
        BenchMode("plain", None, "no tunnel: iperf3 straight over the link"),
        BenchMode(
            "tunnel",
            TunnelSpec(mode="tunnel", concentrator_overrides=OWN_HOST_ALLOWED),
            "tunnel mode (ALPN qt), one connection",
        ),
        BenchMode(
            "session",
            TunnelSpec(mode="session", concentrator_overrides=OWN_HOST_ALLOWED),
            "tunnel session mode (ALPN qt-session), one connection on the one access",
        ),
        BenchMode(
            "stream",
            TunnelSpec(
                mode="tunnel",
                stream=True,
                # iperf3's TCP to h2's TUN address goes on a QUIC stream (-tcp draft); the
                # concentrator then connects to its own address, which it refuses by default.
                client_overrides=(f'stream.intercept=["{CONCENTRATOR_TUN_V4}/32"]',),
                concentrator_overrides=("stream.allow_own_addresses=true",),
            ),
            "stream mode (tunnel mode + quic_tunnel_stream_mode): the TCP connection on a QUIC "
            "stream, relayed by the concentrator",
        ),
        BenchMode(
            "masque",
            TunnelSpec(mode="masque", concentrator_overrides=OWN_HOST_ALLOWED),
            "MASQUE CONNECT-IP (RFC 9484, ALPN h3), one connection: IP packets as HTTP Datagrams",
        ),
        baseline(
            "tunnel-generic",
            GENERIC_PATH,
            "tunnel mode on aioquic's generic packet path (limits.fast_datagram_path = false): "
            "the datagram fast path's baseline in the same run",
        ),
        baseline(
            "session-generic",
            GENERIC_PATH,
            "session mode on aioquic's generic packet path",
        ),
        baseline(
            "tunnel-no-offload",
            NO_OFFLOAD,
            "tunnel mode writing its TUN a packet at a time (tun.offload = false): merged TCP "
            "writes' baseline in the same run",
        ),
        baseline(
            "tunnel-no-tso",
            NO_TSO,
            "tunnel mode reading its TUN a packet at a time (tun.tso = false), still merging "
            "writes: segmentation offload's baseline in the same run",
        ),
        BenchMode(
            "wireguard",
            None,
            "wireguard-go h1 <-> h2 (userspace WireGuard, MTU 1420)",
            peer="wireguard",
        ),
        BenchMode(
            "openvpn",
            None,
            "OpenVPN 2.6 h1 <-> h2: TLS, UDP, AES-256-GCM, userspace (no DCO), tun",
            peer="openvpn",
        ),
    )
}


class BenchError(RuntimeFailure):
    """One transfer gave no usable result."""


@dataclass
class Row:
    mode: str
    profile: str
    goodput_mbps: float | None = None
    client_cpu_pct: float | None = None
    concentrator_cpu_pct: float | None = None
    duration_s: float | None = None
    retransmits: int | None = None
    mtu: int | None = None
    vs_plain: float | None = None  # goodput / plain goodput on the same profile, same run
    client_us_per_packet: float | None = None
    concentrator_us_per_packet: float | None = None
    error: str = ""

    def csv_row(self) -> dict[str, Any]:
        return {k: "" if getattr(self, k) is None else getattr(self, k) for k in FIELDS}


@dataclass(frozen=True)
class Transfer:
    """Each cell's iperf3 TCP transfer: `seconds` long, h1 -> h2 (the upload: the client's TUN
    reads the sending TCP's packets), or h2 -> h1 with `reverse` (the download, iperf3 -R: the
    concentrator's TUN reads them)."""

    seconds: int = 10
    reverse: bool = False
    rate_mbit: float | None = None  # iperf3 -b: the sender's pace; None = as fast as it goes

    @property
    def direction(self) -> str:
        return "h2 -> h1 (iperf3 -R)" if self.reverse else "h1 -> h2"

    def iperf3_options(self) -> str:
        rate = f" -b {self.rate_mbit:g}M" if self.rate_mbit is not None else ""
        return f"{' -R' if self.reverse else ''}{rate}"


def iperf3_tcp(node: Node, target: str, transfer: Transfer) -> dict[str, Any]:
    """Run an iperf3 TCP client on `node` and return its parsed JSON (bounded in time)."""
    seconds = transfer.seconds
    out = str(
        node.cmd(
            f"timeout {seconds + 20} iperf3 -c {target} -p {IPERF_PORT} -t {seconds} -J "
            f"--connect-timeout 3000{transfer.iperf3_options()}"
        )
    )
    try:
        data: dict[str, Any] = json.loads(out[out.index("{") :])
    except ValueError:
        raise BenchError(f"iperf3 printed no JSON: {out.strip()[-200:]}") from None
    if "error" in data:
        raise BenchError(f"iperf3: {data['error']}")
    return data


PacketCounter = Callable[[], dict[str, int]]  # inner packets each role's tunnel moved so far


def device_packets(node: Node, device: str) -> int:
    """Packets `device` received plus sent so far (0 if it cannot be read)."""
    out = str(
        node.cmd(
            f"cat /sys/class/net/{device}/statistics/rx_packets"
            f" /sys/class/net/{device}/statistics/tx_packets"
        )
    ).split()
    return sum(int(n) for n in out if n.isdigit())


def device_counter(lab: Lab, devices: dict[str, str]) -> PacketCounter:
    """For our peers: the kernel's statistics of each role's device (h1 client, h2 server)."""
    nodes = {"client": CLIENT, "concentrator": SERVER}
    return lambda: {r: device_packets(lab.node(nodes[r]), d) for r, d in devices.items()}


def status_counter(dep: QtunDeployment) -> PacketCounter:
    """For qtun: each program's status file, which counts a merged write or a segmented read
    by its packets (the kernel's statistics count one)."""

    def counts() -> dict[str, int]:
        now = time.time()
        return {role: tun_packets(dep, node, now) for role, node in dep_roles(dep).items()}

    return counts


STATUS_WAIT_S = 5.0  # for a status file written after the transfer (the program is asked)


def dep_roles(dep: QtunDeployment) -> dict[str, str]:
    """The node of each role whose CPU and packets the bench measures."""
    return {"client": CLIENT, "concentrator": dep.concentrator}


def tun_packets(dep: QtunDeployment, node: str, after: float) -> int:
    """Inner packets the TUN of the program on `node` read plus wrote, from a status file
    written after `after` (wall clock)."""
    status = dep.wait_for(
        node,
        lambda s: float(s.get("time", 0)) >= after,
        STATUS_WAIT_S,
        "a status file written after the transfer",
    )
    tun = status.get("tun", {})
    return int(tun.get("rx_packets", 0)) + int(tun.get("tx_packets", 0))


def measure(
    lab: Lab,
    target: str,
    transfer: Transfer,
    pids: dict[str, int],
    row: Row,
    mtu_intf: str,
    counts: PacketCounter = dict,
    profile_prefix: Path | None = None,
) -> None:
    """One transfer to `target`; fills goodput, CPU of `pids`, the MTU and (given what counts
    the packets each role's tunnel moved) the µs of CPU per packet into `row`. With
    `profile_prefix`, py-spy samples each of `pids` during the transfer (profile_stacks)."""
    h1, h2 = lab.node(CLIENT), lab.node(SERVER)
    server = lab.procs.start_iperf3_server(
        h2, port=IPERF_PORT, idle_timeout_s=transfer.seconds + 20
    )
    try:
        with recording(pids, profile_prefix) if profile_prefix else nullcontext():
            packets = counts()
            before = {role: cpu_seconds(pid) for role, pid in pids.items()}
            started = time.monotonic()
            data = iperf3_tcp(h1, target, transfer)
            wall = time.monotonic() - started
            after = {role: cpu_seconds(pid) for role, pid in pids.items()}
            packets = {role: count - packets[role] for role, count in counts().items()}
    finally:
        lab.procs.stop(server)
    # Both programs carry the same inner packets: the larger count of the two.
    moved = max(packets.values(), default=0)
    for role in packets:
        if role in pids and moved > 0:
            per_packet = round(1e6 * (after[role] - before[role]) / moved, 2)
            setattr(row, f"{role}_us_per_packet", per_packet)
    end = data["end"]
    row.goodput_mbps = round(float(end["sum_received"]["bits_per_second"]) / 1e6, 2)
    row.duration_s = round(float(end["sum_received"]["seconds"]), 2)
    row.retransmits = int(end["sum_sent"].get("retransmits", 0))
    if "client" in pids:
        row.client_cpu_pct = round(100 * (after["client"] - before["client"]) / wall, 1)
    if "concentrator" in pids:
        row.concentrator_cpu_pct = round(
            100 * (after["concentrator"] - before["concentrator"]) / wall, 1
        )
    mtu = str(h1.cmd(f"cat /sys/class/net/{mtu_intf}/mtu")).strip()
    row.mtu = int(mtu) if mtu.isdigit() else None


def run_mode(
    lab: Lab,
    mode: BenchMode,
    profile_name: str,
    transfer: Transfer,
    workdir: Path,
    profile_dir: Path | None = None,
) -> Row:
    row = Row(mode.name, profile_name)
    try:
        if mode.peer is not None:
            run_peer(lab, mode.peer, transfer, row, workdir / f"{mode.name}-{profile_name}")
            return row
        if mode.spec is None:  # straight over the link to h2
            target = lab.plan.server_address(SERVER)
            measure(lab, target, transfer, {}, row, lab.plan.accesses[0].client_intf)
            return row
        with QtunDeployment(
            lab, mode.spec, workdir=workdir / f"{mode.name}-{profile_name}"
        ).start() as dep:
            pids = {role: dep.pid(node) for role, node in dep_roles(dep).items()}
            tun = str(dep.status(CLIENT).get("tun", {}).get("name", "qtun0"))
            # stream mode relays the transfer on a QUIC stream, not through the TUN devices
            counts = dict if mode.spec.stream else status_counter(dep)
            prefix = profile_dir / f"{mode.name}-{profile_name}" if profile_dir else None
            measure(lab, dep.concentrator_address(4), transfer, pids, row, tun, counts, prefix)
    except (BenchError, QtunError, LabError, OSError, KeyError, ValueError) as exc:
        row.error = str(exc).splitlines()[0]
        print(f"bench: {mode.name}/{profile_name} failed: {exc}", file=sys.stderr)
    return row


def run_peer(lab: Lab, peer: str, transfer: Transfer, row: Row, workdir: Path) -> None:
    """One transfer through wireguard-go or OpenVPN between h1 (client) and h2."""
    endpoint = lab.plan.server_address(SERVER)
    vpn: WireGuard | OpenVpn
    if peer == "wireguard":
        vpn = WireGuard(lab, workdir, client=CLIENT, concentrator=SERVER, endpoint=endpoint)
    else:
        vpn = OpenVpn(lab, workdir, client=CLIENT, concentrator=SERVER, endpoint=endpoint)
    carrier = vpn.start()
    try:
        devices = {"client": vpn.ifname(CLIENT), "concentrator": vpn.ifname(SERVER)}
        counts = device_counter(lab, devices)
        measure(
            lab, carrier.route.address, transfer, carrier.programs, row, vpn.ifname(CLIENT), counts
        )
    finally:
        carrier.stop()


def compare_with_plain(rows: Sequence[Row]) -> None:
    """Fill vs_plain: each mode's goodput as a fraction of the plain path's on that profile (the
    issue's target: 0.95 on the WiFi and 5G profiles)."""
    plain = {r.profile: r.goodput_mbps for r in rows if r.mode == "plain" and r.goodput_mbps}
    for row in rows:
        base = plain.get(row.profile)
        if base and row.goodput_mbps is not None:
            row.vs_plain = round(row.goodput_mbps / base, 3)


def format_table(rows: Sequence[Row]) -> str:
    header = ["mode", "profile", "goodput Mbit/s", "vs plain", "client CPU %", "conc CPU %"]
    header += ["client µs/pkt", "conc µs/pkt", "retr", "mtu"]
    lines = [header]
    for r in rows:
        cells = [r.goodput_mbps, r.vs_plain, r.client_cpu_pct, r.concentrator_cpu_pct]
        cells += [r.client_us_per_packet, r.concentrator_us_per_packet, r.retransmits, r.mtu]
        lines.append([r.mode, r.profile, *("-" if c is None else str(c) for c in cells)])
    errors = [""] + [f"  error: {r.error}" if r.error else "" for r in rows]
    return "\n".join(text + error for text, error in zip(align(lines), errors, strict=True))


def run_bench(
    transfer: Transfer = Transfer(),
    profiles: Sequence[str] = DEFAULT_PROFILES,
    modes: Sequence[str] = tuple(MODES),
    out_root: Path = RESULTS_ROOT / "bench",
    backend: str = "auto",
    congestion_control: str = "cubic",
    profiled: bool = False,
) -> tuple[Path, list[Row]]:
    """Run every (profile, mode) once, each cell one `transfer`; returns the run directory and
    the rows. `profiled`: py-spy samples the qtun programs of each transfer into
    `<run>/profile/` (experiments/profile_stacks.py)."""
    started = datetime.now(UTC)
    out_dir = out_root / started.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    load_before = os.getloadavg()
    with Lab("pair", backend=backend, log_dir=out_dir / "logs") as lab:
        for node in (CLIENT, SERVER):
            lab.set_congestion_control(node, congestion_control)
        shaper = lab.shapers["wlink"]
        for profile_name in profiles:
            shaper.set_profile("both", profile(profile_name))
            for mode_name in modes:
                row = run_mode(
                    lab,
                    MODES[mode_name],
                    profile_name,
                    transfer,
                    out_dir / "qtun",
                    out_dir / "profile" if profiled else None,
                )
                rows.append(row)
                print(
                    f"bench: {row.mode}/{row.profile}: {row.goodput_mbps} Mbit/s "
                    f"{'(' + row.error + ')' if row.error else ''}",
                    flush=True,
                )
        lab_meta = lab.describe()
    compare_with_plain(rows)
    commit, dirty = git_state()
    with open(out_dir / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.csv_row())
    meta = {
        "experiment": "bench",
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "git_commit": commit or "",
        "git_dirty": dirty,
        "kernel": platform.release(),
        "hostname": socket.gethostname(),
        "backend": lab_meta["backend"],
        "seed": None,
        "parameters": {
            "seconds": transfer.seconds,
            "direction": transfer.direction,
            "rate_mbit": transfer.rate_mbit,  # null: as fast as the path goes
            "profiles": {p: profile(p).as_dict() for p in profiles},
            "modes": {m: MODES[m].description for m in modes},
            "congestion_control": lab_meta["congestion_control"],
            "cpu": "utime+stime of the process over the transfer's wall time; 100 = one core",
            # py-spy sampled the qtun programs (profile/): it takes CPU of its own, so the
            # goodput of a profiled run is not a headline figure
            "profiled": profiled,
            "us_per_packet": (
                "the same CPU time / inner packets a program's TUN read + wrote, from its status "
                "file (the larger count of the two programs); our peers: their devices' kernel "
                "statistics"
            ),
        },
        # The machine is shared: its load says how much to trust the figures.
        "load_average_before_after": [load_before, os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "fidelity": [],
        "variants": list(modes),
        "software": software_versions(),
        "lab": lab_meta,
        "client_mtu": {f"{r.mode}/{r.profile}": r.mtu for r in rows},
    }
    write_meta(out_dir, meta)
    return out_dir, rows


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UsageError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.bench",
        description="iperf3 TCP goodput and CPU: plain vs tunnel modes, per link profile.",
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each transfer")
    parser.add_argument("--profiles", default=",".join(DEFAULT_PROFILES), help="link profiles")
    parser.add_argument(
        "--modes",
        default=",".join(name for name, mode in MODES.items() if mode.default),
        help="modes, comma-separated",
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="results root")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="shaping backend")
    parser.add_argument("--cc", default="cubic", help="TCP congestion control of h1 and h2")
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="transfer h2 -> h1 (the download: through the concentrator's TUN first)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="MBIT",
        help="pace each transfer at MBIT Mbit/s (iperf3 -b): µs per packet at a low rate",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the qtun programs with py-spy (python -m experiments.profile_stacks RUN)",
    )
    return run_command(
        "bench", lambda: _bench(parser.parse_args(argv)), interrupted="the lab was torn down"
    )


def _bench(args: argparse.Namespace) -> int:
    if not 1 <= args.seconds <= 600:
        raise UsageError(f"--seconds {args.seconds} is out of range: give 1 to 600")
    if args.rate is not None and not 0.01 <= args.rate <= 100_000:
        raise UsageError(f"--rate {args.rate:g} is out of range: give 0.01 to 100000 Mbit/s")
    profiles = _names(args.profiles, list(PROFILES), "profile")
    modes = _names(args.modes, list(MODES), "mode")
    if os.geteuid() != 0:
        raise RuntimeFailure("not root: run it as root (it builds Mininet hosts)")
    check_congestion_control(args.cc)  # before the lab is built for it
    transfer = Transfer(args.seconds, args.reverse, args.rate)
    if args.profile:
        py_spy()  # missing: say so before building the lab
    out_dir, rows = run_bench(
        transfer, profiles, modes, args.out, args.backend, args.cc, args.profile
    )
    print(format_table(rows))
    print(f"bench: wrote {out_dir / 'bench.csv'} (figures from a shared machine are noisy)")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
