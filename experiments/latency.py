"""Latency under load: `qtlab run latency` -> results/latency/<time>/latency.csv.

How much delay does each way of carrying traffic add, and how much more once a bulk transfer
fills the access (the queue a loaded link builds: "bufferbloat")? The network of the goodput and
overhead experiments (experiments/variants.py `Modes`): the reference topology with c1's 5G
access down, so everything crosses c1's WiFi access, shaped to `rate_mbit` and `rtt_ms`.
For each mode and load, c1 pings the mode's far end (plain and WireGuard: conc; the qtun modes:
srv1 through the tunnel) `ping_count` times every `ping_interval_s`:
  idle   nothing else runs;
  tcp    one bulk TCP flow (experiments/traffic.py, the inner `cc`) runs towards c1, and the
         pings start after its `warmup_s` (the queue has filled by then).
The qtun modes run once per `queue_aqm` value: the active queue management of each tunnel
connection's datagram queue (limits.queue_aqm: codel, or off for tail drop at the queue's cap),
so a run shows what the tunnel's own queue adds with and without CoDel (tunnel/protocol/
codel.py); plain and WireGuard have no such queue ("n/a").
A row: the RTT's minimum, median, 95th percentile and maximum over the replies, the replies
counted, and under load the flow's goodput over the pings' window and the CPU of every process
(a point where one saturated a core is flagged, never dropped). The inflation is the loaded
median minus the idle median of the same mode (`summary_table`).

This experiment is also the README's worked example of extending the lab ("Extending the lab"):
its parameters, points, per-point work and summary are all there is to an experiment.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from experiments import variants
from experiments.flows import Flow, cpu_columns, flow_error, run_flow
from experiments.procstat import CpuMeter
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
)
from experiments.schemas import LATENCY, QUEUE_AQMS, tables
from experiments.traffic import goodput_mbps, pad_bins
from experiments.variants import CLIENT, Modes
from testbed.fidelity import ping_rtts
from testbed.lab import Lab
from testbed.profiles import LinkProfile

MODES = ("plain", "tunnel", "session", "wireguard")
LOADS = ("idle", "tcp")
FIRST_PORT = 5600

DEFAULTS: Params = {
    "modes": list(MODES),
    "loads": list(LOADS),
    "queue_aqm": list(QUEUE_AQMS),
    "runs": 3,
    "seed": 1,
    "rtt_ms": 20.0,
    "rate_mbit": 20.0,
    "queue_packets": 200,
    "cc": "cubic",
    "ping_count": 100,
    "ping_interval_s": 0.05,
    "warmup_s": 2.0,
    "backend": "auto",
    "verify_fidelity": True,
}
QUICK: Params = {"runs": 1, "modes": ["plain", "tunnel"], "queue_aqm": ["codel"], "ping_count": 40}


@dataclass
class LatencyState:
    lab: Lab
    workdir: Path
    modes: Modes
    port: int = FIRST_PORT


def points(params: Params) -> list[Point]:
    for key, known in (("modes", MODES), ("loads", LOADS), ("queue_aqm", QUEUE_AQMS)):
        bad = [v for v in params[key] if v not in known]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(bad)}; choose from {', '.join(known)}."
            )
    if params["ping_count"] < 5 or params["ping_interval_s"] < 0.01:
        raise ExperimentError("need ping_count >= 5 and ping_interval_s >= 0.01.")
    return [
        Point({"mode": mode, "queue_aqm": aqm, "load": load, "run": run})
        for mode in params["modes"]
        for aqm in variants.aqm_values(mode, params["queue_aqm"])
        for load in params["loads"]
        for run in range(1, int(params["runs"]) + 1)
    ]


def session(params: Params) -> contextlib.AbstractContextManager[Context[LatencyState]]:
    link = LinkProfile(
        delay_ms=float(params["rtt_ms"]) / 2,
        rate_mbit=float(params["rate_mbit"]),
        queue_packets=int(params["queue_packets"]),
    )
    meta = {
        "topology": "reference (5G access down), as the goodput experiment",
        "pinged": "conc (plain, WireGuard) or srv1 (qtun modes), from c1",
        "load": "tcp: one bulk TCP flow to c1 from the same far end",
    }
    return variants.wifi_only_session(params, link, "latency", LatencyState, meta)


def rtt_columns(rtts: list[float], pings: int) -> Row:
    """The RTT statistics of one point's replies (empty ones without a reply)."""
    if not rtts:
        return {"pings": pings, "replies": 0}
    ordered = sorted(rtts)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "pings": pings,
        "replies": len(rtts),
        "rtt_min_ms": ordered[0],
        "rtt_median_ms": statistics.median(ordered),
        "rtt_p95_ms": p95,
        "rtt_max_ms": ordered[-1],
    }


def run_point(ctx: Context[LatencyState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    lab, mode = state.lab, point["mode"]
    if mode == "wireguard" and variants.wireguard_missing():
        return PointResult(skipped=str(variants.wireguard_missing()))
    # a fresh tunnel per point: no queue or congestion state left by the previous one
    route = state.modes.ensure(mode, fresh=True, spec=variants.aqm_spec(mode, point["queue_aqm"]))
    carrier = state.modes.carrier
    assert carrier is not None
    count, interval = int(p["ping_count"]), float(p["ping_interval_s"])
    client = lab.node(CLIENT)
    if point["load"] == "idle":
        rtts = ping_rtts(client, route.address, count, interval)
        return PointResult(rows={"latency": [{**point.values, **rtt_columns(rtts, count)}]})
    warmup = float(p["warmup_s"])
    window = count * interval + 2.0  # the pings, and their last replies' slack
    state.port += 1
    flow = Flow(
        sender=route.sender,
        bind=route.address,
        receiver=CLIENT,
        dst=route.address,
        traffic="tcp",
        duration_s=warmup + window,
        port=state.port,
    )
    found: list[float] = []

    def pings(start_at: float) -> None:
        time.sleep(max(0.0, start_at + warmup - time.monotonic()))
        found.extend(ping_rtts(client, route.address, count, interval))

    cpu = CpuMeter(carrier.programs, skip_s=warmup)
    recv, sent = run_flow(lab, flow, state.workdir, during=pings, cpu=cpu)
    bins = pad_bins(recv.bins, recv.interval_s, flow.duration_s)
    row: Row = {
        **point.values,
        **rtt_columns(found, count),
        "goodput_mbps": goodput_mbps(bins, recv.interval_s, warmup, warmup + count * interval),
        "detail": flow_error(recv, sent),
        **cpu_columns(cpu),
    }
    return PointResult(rows={"latency": [row]})


def summary_table(run_dir: Path) -> str:
    """Median RTT per mode, idle and under load, and the inflation (loaded - idle)."""
    import pandas as pd

    path = run_dir / "latency.csv"
    if not path.exists():
        return "no latency rows"
    df = pd.read_csv(path)
    table = df.pivot_table(
        index=["mode", "queue_aqm"], columns="load", values="rtt_median_ms", aggfunc="median"
    )
    if {"idle", "tcp"} <= set(table.columns):
        table["inflation_ms"] = table["tcp"] - table["idle"]
    return "median RTT (ms) per mode (and queue AQM), idle and under a bulk TCP load:\n" + str(
        table.round(2)
    )


EXPERIMENT = Experiment(
    name="latency",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=tables(LATENCY),
    key_columns=("mode", "queue_aqm", "load", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="ping RTT per mode, idle and under a bulk TCP load (latency inflation)",
    bounds={
        **dict.fromkeys(("rtt_ms", "warmup_s"), NON_NEGATIVE),
        **dict.fromkeys(("rate_mbit", "queue_packets", "ping_count", "ping_interval_s"), POSITIVE),
    },
)
