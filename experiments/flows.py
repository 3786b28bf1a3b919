"""Run one measured flow (experiments/traffic.py) between two Mininet hosts and collect it.

    recv, sent = run_flow(lab, Flow(sender="srv1", bind="10.200.1.2", receiver="c1",
                                    dst="10.200.1.2", traffic="tcp", duration_s=12),
                          workdir, during=lambda start_at: ...)

The sender starts first and the receiver once the sender listens (polled, `wait_listening`: in
stream mode the client's own interception accepts at once and the concentrator connects to the
sender only then, so a sender not yet listening would get the stream reset); both get the same
CLOCK_MONOTONIC origin `start_at` (now + START_LEAD_S, the time Python needs to start in a
node). `during` is called with that origin once both run (the failover experiment fails the
WiFi from there). Returns the receiver's samples and the sender's report (parsed JSON); raises
RuntimeError (one sentence) if the receiver never got traffic. Both programs are stopped on
every path.

With `cpu` (a procstat.CpuMeter holding the tunnel's programs, if any), the CPU of those, of
the shapers (qtwire) and of the flow's two ends (`roles` in the meter) is sampled over the
measurement (from the origin plus the meter's `skip_s` to the sender's deadline);
`cpu_columns(meter)` is the row's share of it (schemas.CPU_COLUMNS).

`run_programs` is the same start / readiness / CPU / stop sequence for any pair of programs
(the workload experiment's VoIP and web tools, experiments/workload_traffic.py).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.procstat import CpuMeter, machine_saturated, saturation
from experiments.runner import Context, Point, Row
from experiments.schemas import CPU_PROCESSES, INNER_TCP_COLUMNS, SHAPER_COLUMNS
from experiments.shaper_meter import ShaperMeter
from experiments.traffic import SAMPLE_INTERVAL_S, Samples, resample
from testbed.hosts import HostProcess, wait_listening
from testbed.lab import Lab
from testbed.scenario_player import CarrierHook, play
from testbed.shaping import WireShaper
from testbed.topologies import ACCESSES

TRAFFIC_SCRIPT = Path(__file__).resolve().parent / "traffic.py"
START_LEAD_S = 1.5  # programs start (Python in a node: ~0.3 s) before the measurement's origin


@dataclass
class Flow:
    sender: str  # node names
    bind: str  # the sender's address (it listens there)
    receiver: str
    dst: str  # what the receiver connects to
    traffic: str  # "tcp" | "udp"
    duration_s: float  # the sender's deadline from the origin (a bound for a fixed-size flow)
    port: int = 5400
    mptcp: bool = False
    udp_rate_mbit: float = 10.0
    udp_size_bytes: int = 1000
    interval_s: float = SAMPLE_INTERVAL_S
    nbytes: int | None = None  # TCP: exactly this many bytes, then FIN (traffic.py --bytes)
    src: str | None = None  # the receiver binds to this address (its access) before connecting
    parallel: int = 1  # TCP: this many connections (traffic.py --parallel, iperf3 -P)


def traffic_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, str(TRAFFIC_SCRIPT), role, *args]


def sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def flow_argv(flow: Flow, start_at: float, recv_out: Path, send_out: Path) -> tuple[list[str], ...]:
    """(sender argv, receiver argv) of one flow."""
    port = str(flow.port)
    common = ["--port", port, "--start-at", f"{start_at:.6f}", "--duration", str(flow.duration_s)]
    send_args = ["--bind", flow.bind, *common, "--out", str(send_out)]
    recv_args = ["--dst", flow.dst, *common, "--out", str(recv_out)]
    recv_args += ["--interval", str(flow.interval_s)]
    if flow.src is not None:
        recv_args += ["--src", flow.src]
    if flow.traffic == "tcp":
        extra = ["--mptcp"] if flow.mptcp else []
        if flow.parallel != 1:
            extra += ["--parallel", str(flow.parallel)]
        size = ["--bytes", str(flow.nbytes)] if flow.nbytes is not None else []
        return (
            traffic_argv("tcp-send", *send_args, *extra, *size),
            traffic_argv("tcp-recv", *recv_args, *extra),
        )
    rate = ["--rate-mbit", str(flow.udp_rate_mbit), "--size", str(flow.udp_size_bytes)]
    return traffic_argv("udp-send", *send_args, *rate), traffic_argv("udp-recv", *recv_args)


def wire_shapers(lab: Lab, client: str) -> dict[str, WireShaper]:
    """The running qtwire on each of the client's access links, as "shaper_<access>" (none
    with the netem backend: the kernel shapes)."""
    out: dict[str, WireShaper] = {}
    for name in ACCESSES:
        access = lab.plan.access(name, client)
        shaper = lab.shapers.get(access.shaped or "") if access is not None else None
        if isinstance(shaper, WireShaper) and shaper.proc is not None:
            out[f"shaper_{name}"] = shaper
    return out


def cpu_columns(meter: CpuMeter | None) -> dict[str, Any]:
    """The CPU columns of a row (schemas.CPU_COLUMNS), and the shapers' (SHAPER_COLUMNS), from
    a meter run_flow ran; all empty without one."""
    usage = meter.usage() if meter is not None else {}
    peak = meter.peak() if meter is not None else {}
    row: dict[str, Any] = {f"cpu_{name}_pct": usage.get(name) for name in CPU_PROCESSES}
    # a single process's saturation (a concentrator's workers each have a core of their own),
    # or the whole machine's
    busiest, saturated = saturation({n: peak.get(n) for n in CPU_PROCESSES})
    host = meter.host_pct() if meter is not None else None
    row["cpu_host_pct"] = host
    row["cpu_busiest"] = busiest
    if saturated is not None and meter is not None:
        saturated = saturated or machine_saturated(host, meter.cores)
    row["cpu_saturated"] = saturated
    shapers = meter.shapers if meter is not None else None
    row.update(shapers.columns() if shapers is not None else dict.fromkeys(SHAPER_COLUMNS))
    return row


@dataclass
class Programs:
    """A sender and a receiver program of one measurement (run_programs): the sender listens
    on `port` of its node, the receiver on `receiver` comes to it; `roles` are their names in
    a CpuMeter."""

    sender: str
    sender_argv: list[str]
    receiver: str
    receiver_argv: list[str]
    port: int
    roles: tuple[str, str] = ("sender", "receiver")


def run_programs(
    lab: Lab,
    programs: Programs,
    start_at: float,
    end_at: float,
    during: Callable[[float], None] | None = None,
    cpu: CpuMeter | None = None,
    start_meter: bool = True,
    wait_s: float = 5.0,
) -> HostProcess:
    """Start the sender, and the receiver once the sender listens (polled); watch both (and the
    receiver's shapers) in `cpu`, started over [start_at, end_at] unless `start_meter` is False
    (a meter a surrounding measurement runs); call `during(start_at)`; wait for the receiver
    until end_at + wait_s; stop both on every path. Returns the receiver (its log path)."""
    procs: list[HostProcess] = []
    port = programs.port
    try:
        sender_node = lab.node(programs.sender)
        sender = lab.procs.start(sender_node, f"qex-send-{port}", programs.sender_argv)
        procs.append(sender)
        wait_listening(sender_node, port, sender)
        receiver_node = lab.node(programs.receiver)
        receiver = lab.procs.start(receiver_node, f"qex-recv-{port}", programs.receiver_argv)
        procs.append(receiver)
        if cpu is not None:
            shapers = wire_shapers(lab, programs.receiver)
            for name, shaper in shapers.items():
                assert shaper.proc is not None  # wire_shapers: running
                cpu.watch(name, shaper.proc.pid)
            cpu.watch_shapers(ShaperMeter(shapers))
            cpu.watch(programs.roles[0], sender.pid)
            cpu.watch(programs.roles[1], receiver.pid)
            if start_meter:
                cpu.start(start_at, end_at)
        if during is not None:
            during(start_at)
        with contextlib.suppress(subprocess.TimeoutExpired):
            receiver.popen.wait(max(1.0, end_at + wait_s - time.monotonic()))
    finally:
        if cpu is not None and start_meter:
            cpu.stop()
        for proc in procs:
            with contextlib.suppress(Exception):
                lab.procs.stop(proc)
    return receiver


def run_flow(
    lab: Lab,
    flow: Flow,
    workdir: Path,
    during: Callable[[float], None] | None = None,
    cpu: CpuMeter | None = None,
    roles: tuple[str, str] = ("sender", "receiver"),
) -> tuple[Samples, dict[str, Any]]:
    port = str(flow.port)
    recv_out = workdir / f"recv-{port}.json"
    send_out = workdir / f"send-{port}.json"
    for stale in (recv_out, send_out):
        stale.unlink(missing_ok=True)
    lab.forget_learned_paths()  # before start_at: it takes a few ms per host
    start_at = time.monotonic() + START_LEAD_S
    sender_argv, receiver_argv = flow_argv(flow, start_at, recv_out, send_out)
    programs = Programs(flow.sender, sender_argv, flow.receiver, receiver_argv, flow.port, roles)
    end_at = start_at + flow.duration_s
    receiver = run_programs(lab, programs, start_at, end_at, during, cpu)
    if not recv_out.exists():
        raise RuntimeError(f"the receiver wrote no samples; see {receiver.log_path}")
    recv = Samples.from_json(json.loads(recv_out.read_text()))
    sent: dict[str, Any] = json.loads(send_out.read_text()) if send_out.exists() else {}
    if not recv.connected:
        raise RuntimeError(
            f"the receiver never got traffic ({recv.error}; sender: {sent.get('error')})"
        )
    return recv, sent


def scenario_during(
    lab: Lab,
    ctx: Context[Any],
    point: Point,
    client: str,
    on_carrier: CarrierHook | None = None,
) -> Callable[[float], None]:
    """A `during` for run_flow that plays the run's scenario (ctx.scenario) on `client`'s
    accesses from the traffic's origin, links restored at its end; each point's steps applied
    and lateness go into meta.json's "scenario_played"."""
    scenario = ctx.scenario
    if scenario is None:
        raise RuntimeError("scenario_during needs a run with a scenario")

    def during(start_at: float) -> None:
        report = play(lab, scenario, start_at, client, on_carrier=on_carrier)
        played = ctx.extra_meta.setdefault("scenario_played", [])
        played.append({**point.values, **report.summary()})

    return during


def flow_error(recv: Samples, sent: dict[str, Any]) -> str:
    """What went wrong on either side of a flow ("" if nothing), for a row's detail column;
    a flow that connected but delivered nothing says so (its 0 Mbit/s is a result, but one
    to look at: stream mode accepts the application's connection before the tunnel carries
    anything)."""
    empty = "connected, but no byte arrived" if recv.connected and not recv.bytes_total else None
    return "; ".join(x for x in (recv.error, sent.get("error"), empty) if x)


def inner_tcp_at(samples: Sequence[Sequence[float]]) -> Callable[[float], Row]:
    """The time series' inner TCP columns at time t from the sender's tcp_info samples
    ([t_s, cwnd, rtt_ms, retransmits], experiments/traffic.py): the latest sample at or
    before t (empty columns before the first, and for UDP, which has none)."""
    times = [float(s[0]) for s in samples]

    def at(t: float) -> Row:
        i = bisect.bisect_right(times, t + 1e-9) - 1
        if i < 0:
            return dict.fromkeys(INNER_TCP_COLUMNS)
        _, cwnd, rtt, retransmits = samples[i]
        return {
            "inner_cwnd_segments": int(cwnd),
            "inner_rtt_ms": round(float(rtt), 3),
            "inner_retransmits": int(retransmits),
        }

    return at


def flow_series(
    key: Row, bins: Sequence[int], interval_s: float, step_s: float, tcp_info: Sequence[Any]
) -> list[Row]:
    """A flow every `step_s` (a whole multiple of the sampling `interval_s`): `key`, t_s, the
    goodput then and the inner TCP's state (inner_tcp_at; empty for UDP). The rows of
    failover_timeseries and goodput_timeseries."""
    inner = inner_tcp_at(tcp_info)
    return [
        {**key, "t_s": round(i * step_s, 6), "goodput_mbps": round(value, 4), **inner(i * step_s)}
        for i, value in enumerate(resample(bins, interval_s, step_s))
    ]
