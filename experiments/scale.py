"""Scale: `qtlab run scale` -> results/scale/<time>/scale.csv.

N clients on one concentrator. The `nclient` topology is built once with max(clients) clients
(c1..cN multihomed on WiFi + 5G, sharing the two access routers, whose uplinks to `conc` are
the only shaped links); for each point the first N clients run `qtun client` (mode `mode`:
"tunnel", one QUIC connection per client over its WiFi access, or "session", one connection
per access joined into a session; scheduler "failover", so the data goes over WiFi either way)
against one `qtun concentrator` on conc; or "plain", the baseline without a tunnel, where the
flows come from conc itself over the clients' WiFi accesses and the same shaped uplinks. Every
one of the N clients then receives one bulk TCP flow from srv1 (experiments/traffic.py, one
sender per client on its own port, all started together and sharing one start time) for
`duration_s`; a row per client holds its mean goodput after `warmup_s`.

Measured over that same window [warmup_s, duration_s] on the concentrator's process
(`QtunDeployment.pid`): CPU % = utime+stime from /proc/<pid>/stat over the wall time (100 = one
core; qtun is one asyncio loop, so about 100 is its ceiling), RSS = VmRSS from
/proc/<pid>/status at the end of the transfer (`conc_rss_idle_mb`: the same once every client is
up, before any traffic), and PSS (`conc_pss_mb`, /proc/<pid>/smaps_rollup, then too): with
workers both sum the supervisor and its workers, but RSS counts each page they share since the
fork once per process, PSS once in all. Also recorded: `clients_cpu_pct`, the CPU of the
qtun client processes summed (each process once: with `clients_per_process` K > 1 the N
clients run as `qtun client-group`s of K, README "Client groups", the load generator's way to
stop N processes' wakeups from holding the machine), and `host_cpu_pct`, the whole machine's
busy time (/proc/stat), also in % of one core (200 = both cores of this machine busy).
`jain_fairness` is Jain's index over the N goodputs of the point: (sum x)^2 / (N sum x^2),
1 = equal shares, 1/N = one client has it all.

What limits the goodput: the uplinks are shaped with the `wired` profile at `uplink_mbit`
(500 Mbit/s, 1 ms), about twice what one qtun concentrator forwarded on this machine unshaped
(`make bench`: ~230 Mbit/s in tunnel mode), so the shaper is not meant to be the bottleneck;
the summary prints the total goodput against the uplink's rate so a run shows if it was.
The machine has 2 cores, and the concentrator shares them with the N qtun client processes,
the 2N traffic programs and the two qtwire shapers: from a few clients on, what is measured is
the whole machine's CPU being saturated (see host_cpu_pct), and the concentrator gets only its
share of it. The figures say how one Python concentrator behaves with N clients on this
machine, not how it would with cores of its own.

Every point gets a new qtun deployment (new certificates, a fresh concentrator, new QUIC
connections), even a run after one with the same N: connections kept from the previous run
would start with the congestion windows it left and a concentrator that already grew, and runs
would not be independent. Starting 50 clients takes tens of seconds per point.
A client whose flow got nothing has goodput 0 and its error in `error`; a point where no client
got anything fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments import variants
from experiments.flows import START_LEAD_S, Flow, flow_argv, flow_error, sleep_until
from experiments.procstat import (
    cpu_pct,
    cpu_seconds,
    host_busy,
    host_busy_pct,
    process_pss_mb,
    process_rss_mb,
)
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
)
from experiments.schemas import SCALE, tables
from experiments.traffic import GRACE_S, Samples, goodput_mbps, jain_index, pad_bins
from experiments.variants import Carrier
from testbed.fidelity import verify_accesses
from testbed.hosts import HostProcess, wait_listening
from testbed.lab import Lab
from testbed.profiles import profile
from testbed.qtun import TunnelSpec
from testbed.topologies import CONCENTRATOR_V4
from tunnel.config import MAX_WORKERS

# "plain": the baseline without a tunnel — each client receives its flow from conc itself over
# its WiFi access (servers are reachable only through the tunnel), through the same shaped
# uplink: how fairly N TCP flows share this testbed when no qtun program takes any CPU.
MODES = ("tunnel", "session", "plain")
MAX_CLIENTS = 50  # the scale; the nclient topology is tested with 50
FIRST_PORT = 5400
SAMPLE_INTERVAL_S = 0.1  # only means are needed: coarse bins keep 50 receivers' JSON small
# Starting the traffic programs: per client a sender and a receiver, each a Python start-up
# (~0.1 s of CPU) on 2 shared cores; the common start time leaves them that much more lead.
LEAD_PER_CLIENT_S = 0.15
STOP_GRACE_S = 10.0  # receivers past their own deadline (they stop at duration + GRACE_S)
COLUMNS = list(SCALE.columns)

DEFAULTS: Params = {
    "mode": "tunnel",
    "clients": [1, 5, 10, 25, 50],
    "runs": 3,
    "seed": 1,
    "duration_s": 20.0,
    "warmup_s": 3.0,
    "uplink_mbit": 500.0,
    "congestion_control": "cubic",
    "start_timeout_s": 240.0,
    "workers": 1,
    "clients_per_process": 1,
    "conc_txqueuelen": 0,
    "backend": "auto",
    "verify_fidelity": True,
}
QUICK: Params = {"clients": [1, 5, 10], "runs": 1, "duration_s": 10.0, "warmup_s": 2.0}


@dataclass
class ScaleState:
    """What the points share: the lab, a scratch directory, the next free traffic port, and the
    tunnel of the last point (stopped before the next point starts)."""

    lab: Lab
    workdir: Path
    port: int = FIRST_PORT
    tunnel: Carrier | None = None

    def drop_tunnel(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        self.tunnel = None


# -- parameters and points --------------------------------------------------------------------
def _check(params: Params) -> list[int]:
    """The validated client counts; ExperimentError (one sentence) for anything unusable."""
    if params["mode"] not in MODES:
        raise ExperimentError(f"unknown mode {params['mode']!r}; choose from {', '.join(MODES)}.")
    counts = params["clients"]
    if not isinstance(counts, list) or not counts:
        raise ExperimentError("clients must be a non-empty list of client counts, e.g. [1, 5].")
    bad = [c for c in counts if isinstance(c, bool) or not isinstance(c, int)]
    bad += [c for c in counts if isinstance(c, int) and not 1 <= c <= MAX_CLIENTS]
    if bad:
        raise ExperimentError(
            f"clients {', '.join(map(str, bad))}: each count must be an integer "
            f"from 1 to {MAX_CLIENTS}."
        )
    if len(set(counts)) != len(counts):
        raise ExperimentError("clients lists a count twice.")
    if not 0 <= params["warmup_s"] < params["duration_s"] <= 600:
        raise ExperimentError("need 0 <= warmup_s < duration_s <= 600.")
    if params["uplink_mbit"] <= 0:
        raise ExperimentError("uplink_mbit must be > 0.")
    if params["start_timeout_s"] <= 0:
        raise ExperimentError("start_timeout_s must be > 0.")
    workers = params["workers"]
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ExperimentError(
            f"workers must be an integer from 1 to {MAX_WORKERS} (concentrator processes)."
        )
    per_process = params["clients_per_process"]
    if isinstance(per_process, bool) or not isinstance(per_process, int) or per_process < 1:
        raise ExperimentError(
            "clients_per_process must be an integer >= 1 (1: one qtun client process per "
            'client; more: client groups, README "Client groups").'
        )
    ring = params["conc_txqueuelen"]
    if isinstance(ring, bool) or not isinstance(ring, int) or not 0 <= ring <= 100_000:
        raise ExperimentError(
            "conc_txqueuelen must be an integer from 0 to 100000 (the concentrator TUN's "
            "tun.txqueuelen in packets; 0: the kernel's)."
        )
    return [int(c) for c in counts]


def points(params: Params) -> list[Point]:
    counts = _check(params)
    runs = range(1, int(params["runs"]) + 1)
    # Runs of one N are consecutive: they share that N's deployment.
    workers = int(params["workers"])
    per_process = int(params["clients_per_process"])
    ring = int(params["conc_txqueuelen"])
    return [
        Point(
            {
                "mode": params["mode"],
                "workers": workers,
                "clients_per_process": per_process,
                "conc_txqueuelen": ring,
                "clients": n,
                "run": r,
            }
        )
        for n in counts
        for r in runs
    ]


def point_rows(
    point: Point, goodputs: Sequence[float], errors: Sequence[str], measured: Row
) -> list[Row]:
    """One row per client (c1..cN): its goodput and error, the point's shared measurements."""
    n = int(point["clients"])
    fairness = jain_index(goodputs)
    rss = measured.get("conc_rss_mb")
    shared = {
        **point.values,
        **measured,
        "jain_fairness": fairness,
        "conc_rss_per_client_kb": None if rss is None else rss * 1024 / n,
    }
    return [
        {**shared, "client": f"c{k}", "goodput_mbps": g, "error": e}
        for k, (g, e) in enumerate(zip(goodputs, errors, strict=True), start=1)
    ]


# -- the testbed -------------------------------------------------------------------------------
@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[ScaleState]]:
    counts = _check(params)
    uplink = profile("wired", rate_mbit=float(params["uplink_mbit"]))
    profiles = {"wifi": uplink, "5g": uplink}
    cc = params["congestion_control"] or None
    with (
        tempfile.TemporaryDirectory(prefix="qex-scale-") as tmp,
        Lab(
            "nclient",
            backend=params["backend"],
            congestion_control=cc,
            clients=max(counts),
            profiles=profiles,
        ) as lab,
    ):
        ctx = Context(params, ScaleState(lab, Path(tmp)), lab=lab)
        ctx.backend = str(lab.backend)
        ctx.extra_meta.update(
            {
                "topology": f"nclient with {max(counts)} clients; point N uses c1..cN",
                "direction": "srv1 -> each client, one TCP flow per client, all at once",
                "profiles": {k: v.as_dict() for k, v in profiles.items()},
                "lab": lab.describe(),
                "cpu": "utime+stime over [warmup_s, duration_s]; 100 = one core",
                "cpu_count": os.cpu_count(),
                "sample_interval_s": SAMPLE_INTERVAL_S,
            }
        )
        if params["verify_fidelity"]:
            ctx.fidelity.extend(verify_accesses(lab))
        try:
            yield ctx
        finally:
            ctx.state.drop_tunnel()


def _tunnel(state: ScaleState, params: Params, n: int) -> Carrier | None:
    """qtun on conc and c1..cN, started afresh for this point (see the module docstring);
    None for the plain baseline."""
    state.drop_tunnel()
    if params["mode"] == "plain":
        return None
    workers = int(params["workers"])
    overrides: tuple[str, ...] = (f"workers={workers}",) if workers > 1 else ()  # "Workers"
    ring = int(params["conc_txqueuelen"])
    if ring:  # README "Client groups": the TUN's ring
        overrides += (f"tun.txqueuelen={ring}",)
    spec = TunnelSpec(
        mode=str(params["mode"]),
        concentrator_overrides=overrides,
        clients_per_process=int(params["clients_per_process"]),
    )
    clients = state.lab.plan.clients[:n]
    workdir = state.workdir / f"qtun-{n}-{state.port}"
    timeout = float(params["start_timeout_s"])
    state.tunnel = variants.qtun(state.lab, spec, workdir, clients=clients, timeout_s=timeout)
    return state.tunnel


def _cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime summed over processes that still exist (a vanished one counts nothing)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def _flows(
    state: ScaleState, clients: Sequence[str], first_port: int, duration_s: float, plain: bool
) -> list[Flow]:
    """One TCP flow from the first server (plain: from conc) to each client, each on its own
    port."""
    if plain:
        server, address = state.lab.plan.concentrator, CONCENTRATOR_V4
    else:
        server = state.lab.plan.servers[0]
        address = state.lab.plan.server_address(server)
    return [
        Flow(
            server, address, client, address, "tcp", duration_s, port, interval_s=SAMPLE_INTERVAL_S
        )
        for port, client in enumerate(clients, start=first_port)
    ]


def _start_flows(
    lab: Lab, flows: Sequence[Flow], start_at: float, out: Path
) -> tuple[list[HostProcess], list[HostProcess]]:
    """Every sender, then (once they all listen) every receiver, told the same start time."""
    senders: list[HostProcess] = []
    receivers: list[HostProcess] = []
    argvs = [
        flow_argv(f, start_at, out / f"recv-{f.port}.json", out / f"send-{f.port}.json")
        for f in flows
    ]
    for flow, (send_argv, _) in zip(flows, argvs, strict=True):
        senders.append(lab.procs.start(lab.node(flow.sender), f"qex-send-{flow.port}", send_argv))
    for flow, sender in zip(flows, senders, strict=True):
        wait_listening(lab.node(flow.sender), flow.port, sender)
    for flow, (_, recv_argv) in zip(flows, argvs, strict=True):
        node = lab.node(flow.receiver)
        receivers.append(lab.procs.start(node, f"qex-recv-{flow.port}", recv_argv))
    return senders, receivers


def _flow_result(recv_path: Path, send_path: Path, p: Params) -> tuple[float, str]:
    """(goodput after warmup, error text) of one client's flow; 0 when it got nothing."""
    if not recv_path.exists():
        return 0.0, "the receiver wrote no samples"
    recv = Samples.from_json(json.loads(recv_path.read_text()))
    sent = json.loads(send_path.read_text()) if send_path.exists() else {}
    error = flow_error(recv, sent)
    if not recv.connected:
        return 0.0, error or "the receiver never connected"
    duration = float(p["duration_s"])
    bins = pad_bins(recv.bins, recv.interval_s, duration)
    return goodput_mbps(bins, recv.interval_s, float(p["warmup_s"]), duration), error


def run_point(ctx: Context[ScaleState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    lab = state.lab
    n = int(point["clients"])
    tunnel = _tunnel(state, p, n)
    deployment = tunnel.deployment if tunnel is not None else None
    clients = deployment.clients if deployment is not None else lab.plan.clients[:n]
    conc_pid = deployment.pid(deployment.concentrator) if deployment is not None else None
    # a client group is one process for several clients: counted once
    client_pids = sorted({deployment.pid(c) for c in clients}) if deployment is not None else []
    idle_rss = process_rss_mb(conc_pid) if conc_pid is not None else None
    first_port = state.port
    state.port += n
    out = state.workdir / f"flows-{n}-{point['run']}"
    out.mkdir(parents=True, exist_ok=True)
    duration, warmup = float(p["duration_s"]), float(p["warmup_s"])
    start_at = time.monotonic() + START_LEAD_S + LEAD_PER_CLIENT_S * n
    flows = _flows(state, clients, first_port, duration, plain=deployment is None)
    procs: list[HostProcess] = []
    try:
        senders, receivers = _start_flows(lab, flows, start_at, out)
        procs = senders + receivers
        sleep_until(start_at + warmup)
        host0, t0 = host_busy(), time.monotonic()
        conc_pids = [conc_pid] if conc_pid is not None else []
        conc0, clients0 = _cpu_seconds(conc_pids), _cpu_seconds(client_pids)
        sleep_until(start_at + duration)
        host1, t1 = host_busy(), time.monotonic()
        conc1, clients1 = _cpu_seconds(conc_pids), _cpu_seconds(client_pids)
        rss = process_rss_mb(conc_pid) if conc_pid is not None else None
        pss = process_pss_mb(conc_pid) if conc_pid is not None else None
        # Every program ends by itself at its deadline; bounded waits, then the stops below.
        stop_by = start_at + duration + GRACE_S + STOP_GRACE_S
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.1, stop_by - time.monotonic()))
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                lab.procs.stop(proc)
    results = [
        _flow_result(out / f"recv-{f.port}.json", out / f"send-{f.port}.json", p) for f in flows
    ]
    goodputs = [g for g, _ in results]
    if not any(goodputs):
        raise RuntimeError(f"no client got any traffic ({results[0][1]})")
    qtun = deployment is not None  # the plain baseline has no qtun program to measure
    measured = {
        "conc_cpu_pct": cpu_pct(conc0, conc1, t1 - t0) if qtun else None,
        "conc_rss_mb": rss,
        "conc_rss_idle_mb": idle_rss,
        "conc_pss_mb": pss,
        "clients_cpu_pct": cpu_pct(clients0, clients1, t1 - t0) if qtun else None,
        "host_cpu_pct": host_busy_pct(host0, host1),
        "uplink_mbit": float(p["uplink_mbit"]),
    }
    rows = point_rows(point, goodputs, [e for _, e in results], measured)
    return PointResult(rows={"scale": rows})


def summary_table(run_dir: Path) -> str:
    from experiments.analysis import ResultsError, load_scale, scale_summary

    try:
        df = load_scale(run_dir)
    except ResultsError:
        return "no scale rows"
    table = scale_summary(df)
    uplink = float(df["uplink_mbit"].max()) if "uplink_mbit" in df else math.nan
    note = f"\n(uplink shaped at {uplink:g} Mbit/s; total goodput near it = the shaper limited)"
    return str(table.round(2).to_string(index=False)) + note


EXPERIMENT = Experiment(
    name="scale",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=tables(SCALE),
    key_columns=("mode", "clients", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="N clients (up to 50) on one concentrator: fairness, concentrator CPU and RSS",
)
