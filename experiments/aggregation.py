"""Aggregation: `qtlab run aggregation` -> results/aggregation/<time>/aggregation.csv.

Reference topology with the default WiFi and 5G profiles at `wifi_mbit` (50) and `fiveg_mbit`
(100) Mbit/s. One bulk TCP transfer to the client c1 per point; goodput is the receiver's mean
after `warmup_s`, ratio = goodput / (wifi_mbit + fiveg_mbit).
  session   qtun session mode over both accesses with an aggregating scheduler (wrr, or
            lowest-rtt), the Packet-Tag reorder buffer on or off (TunnelSpec.reorder); sender
            on srv1 through the tunnel.
  mptcp     kernel MPTCP, two subflows (WiFi + 5G: experiments/variants.py, as in the failover
            experiment); the sender on conc's service address: the reference topology routes
            clients to nothing else without a tunnel. scheduler = the kernel's "default",
            reorder not applicable.
The tunnel's programs are started afresh for every point (new QUIC connections): a
connection kept from the previous point would start with the congestion window it left.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from experiments import variants
from experiments.flows import Flow, flow_error, run_flow
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
)
from experiments.schemas import AGGREGATION, tables
from experiments.traffic import goodput_mbps, pad_bins
from experiments.variants import CLIENT, Carrier
from testbed.fidelity import verify_accesses
from testbed.lab import Lab
from testbed.profiles import profile
from testbed.qtun import TunnelSpec

VARIANTS = ("session", "mptcp")
SCHEDULERS = ("wrr", "lowest-rtt")
COLUMNS = list(AGGREGATION.columns)
FIRST_PORT = 5400

DEFAULTS: Params = {
    "variants": list(VARIANTS),
    "schedulers": list(SCHEDULERS),
    "reorder": [True, False],
    "runs": 3,
    "seed": 1,
    "wifi_mbit": 50.0,
    "fiveg_mbit": 100.0,
    # Random loss on the WiFi access, each way (the wifi profile's 0.1 % by default). A single
    # TCP flow in session mode sees every access loss (DATAGRAM frames are not retransmitted)
    # at the slower path's RTT, so this is the knob that decides whether it aggregates.
    "wifi_loss_pct": 0.1,
    "duration_s": 20.0,
    "warmup_s": 3.0,
    "congestion_control": "cubic",
    "backend": "auto",
    "verify_fidelity": True,
}
QUICK: Params = {"runs": 1, "duration_s": 8.0, "warmup_s": 2.0}


@dataclass
class AggregationState:
    """What the points share: the lab, a scratch directory, the last traffic port used, and the
    tunnel of the last session-mode point (stopped before the next point starts)."""

    lab: Lab
    workdir: Path
    port: int = FIRST_PORT
    tunnel: Carrier | None = None

    def drop_tunnel(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        self.tunnel = None


def points(params: Params) -> list[Point]:
    for key, allowed in (("variants", VARIANTS), ("schedulers", SCHEDULERS)):
        bad = [v for v in params[key] if v not in allowed]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(map(str, bad))}; choose from {', '.join(allowed)}."
            )
    runs = range(1, int(params["runs"]) + 1)
    out = []
    for variant in params["variants"]:
        if variant == "mptcp":
            out += [Point({"variant": "mptcp", "scheduler": "default", "reorder": "", "run": r})
                    for r in runs]  # fmt: skip
            continue
        for scheduler in params["schedulers"]:
            for reorder in params["reorder"]:
                out += [Point({"variant": variant, "scheduler": scheduler, "reorder": bool(reorder),
                               "run": r}) for r in runs]  # fmt: skip
    return out


@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[AggregationState]]:
    wifi_loss = (
        {} if params["wifi_loss_pct"] is None else {"loss_pct": float(params["wifi_loss_pct"])}
    )
    profiles = {
        "wifi": profile("wifi", rate_mbit=float(params["wifi_mbit"]), **wifi_loss),
        "5g": profile("5g", rate_mbit=float(params["fiveg_mbit"])),
    }
    cc = params["congestion_control"] or None
    with (
        tempfile.TemporaryDirectory(prefix="qex-aggregation-") as tmp,
        Lab(
            "reference", backend=params["backend"], congestion_control=cc, profiles=profiles
        ) as lab,
    ):
        ctx = Context(params, AggregationState(lab, Path(tmp)))
        ctx.backend = str(lab.backend)
        ctx.extra_meta.update(
            {"profiles": {k: v.as_dict() for k, v in profiles.items()}, "lab": lab.describe()}
        )
        if params["verify_fidelity"]:
            ctx.fidelity.extend(verify_accesses(lab))
        try:
            yield ctx
        finally:
            ctx.state.drop_tunnel()


def _tunnel(state: AggregationState, scheduler: str, reorder: bool) -> Carrier:
    # Started afresh for every point, even when the previous one had the same spec: QUIC
    # connections that carried the previous point would begin this one with the congestion
    # windows (and reorder state) it left, and runs would not be independent.
    state.drop_tunnel()
    spec = TunnelSpec(mode="session", scheduler=scheduler, reorder=reorder)
    workdir = state.workdir / f"qtun-{scheduler}-{reorder}-{state.port}"
    state.tunnel = variants.qtun(state.lab, spec, workdir, clients=[CLIENT])
    return state.tunnel


def run_point(ctx: Context[AggregationState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    state.port += 1
    mptcp: Carrier | None = None
    if point["variant"] == "mptcp":
        state.drop_tunnel()  # the tunnel's programs would compete for the CPU
        mptcp = variants.mptcp(state.lab, CLIENT)
        route = mptcp.route
    else:
        route = _tunnel(state, point["scheduler"], point["reorder"]).route
    flow = Flow(
        sender=route.sender,
        bind=route.address,
        receiver=CLIENT,
        dst=route.address,
        traffic="tcp",
        duration_s=float(p["duration_s"]),
        port=state.port,
        mptcp=route.mptcp,
    )
    try:
        recv, sent = run_flow(state.lab, flow, state.workdir)
    finally:
        if mptcp is not None:
            with contextlib.suppress(Exception):
                mptcp.stop()
    interval = recv.interval_s
    bins = pad_bins(recv.bins, interval, flow.duration_s)
    goodput = goodput_mbps(bins, interval, float(p["warmup_s"]), flow.duration_s)
    total = float(p["wifi_mbit"]) + float(p["fiveg_mbit"])
    row: Row = {
        **point.values,
        "wifi_mbit": float(p["wifi_mbit"]),
        "fiveg_mbit": float(p["fiveg_mbit"]),
        "goodput_mbps": goodput,
        "ratio": goodput / total,
        "detail": flow_error(recv, sent),
    }
    return PointResult(rows={"aggregation": [row]})


def summary_table(run_dir: Path) -> str:
    import pandas as pd

    path = run_dir / "aggregation.csv"
    if not path.exists():
        return "no aggregation rows"
    df = pd.read_csv(path, keep_default_na=False)
    table = df.groupby(["variant", "scheduler", "reorder"])[["goodput_mbps", "ratio"]].mean()
    return str(table.round(2))


EXPERIMENT = Experiment(
    name="aggregation",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=tables(AGGREGATION),
    key_columns=("variant", "scheduler", "reorder", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="WiFi 50 + 5G 100 Mbit/s: session-mode aggregation vs MPTCP, reorder on/off",
)
