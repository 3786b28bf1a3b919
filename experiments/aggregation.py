"""Aggregation: `qtlab run aggregation` -> results/aggregation/<time>/aggregation.csv.

Reference topology with the default WiFi and 5G profiles at `wifi_mbit` (50) and `fiveg_mbit`
(100) Mbit/s. One bulk TCP transfer to the client c1 per point; goodput is the receiver's mean
after `warmup_s`, ratio = goodput / (wifi_mbit + fiveg_mbit).
  session   qtun session mode over both accesses with an aggregating scheduler (wrr, or
            lowest-rtt), the Packet-Tag reorder buffer on or off (TunnelSpec.reorder); sender
            on srv1 through the tunnel.
  mptcp     kernel MPTCP, two subflows (WiFi + 5G), set up as in the failover experiment; the
            sender on conc (10.100.0.1): the reference topology routes clients to nothing else
            without a tunnel. scheduler = the kernel's "default", reorder not applicable.
The tunnel's programs are started afresh for every point (new QUIC connections): a
connection kept from the previous point would start with the congestion window it left.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from experiments.flows import Flow, run_flow
from experiments.runner import Context, Experiment, ExperimentError, Params, Point, PointResult
from experiments.traffic import goodput_mbps, pad_bins

CLIENT = "c1"
SERVER_V4 = "10.200.1.2"
VARIANTS = ("session", "mptcp")
SCHEDULERS = ("wrr", "lowest-rtt")
COLUMNS = [
    "variant",
    "scheduler",
    "reorder",
    "run",
    "wifi_mbit",
    "fiveg_mbit",
    "goodput_mbps",
    "ratio",
    "detail",
]

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
def session(params: Params) -> Iterator[Context]:
    from testbed.fidelity import verify_accesses
    from testbed.lab import Lab
    from testbed.profiles import profile

    ctx = Context(params)
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
        ctx.backend = str(lab.backend)
        ctx.state.update(lab=lab, workdir=Path(tmp), port=5400, deployment=None)
        ctx.extra_meta.update(
            {"profiles": {k: v.as_dict() for k, v in profiles.items()}, "lab": lab.describe()}
        )
        if params["verify_fidelity"]:
            ctx.fidelity.extend(verify_accesses(lab))
        try:
            yield ctx
        finally:
            _drop_deployment(ctx)


def _drop_deployment(ctx: Context) -> None:
    deployment = ctx.state.get("deployment")
    if deployment is not None:
        deployment.stop()
    ctx.state["deployment"] = None


def _tunnel(ctx: Context, scheduler: str, reorder: bool) -> Any:
    from testbed.qtun import QtunDeployment, TunnelSpec

    # Started afresh for every point, even when the previous one had the same spec: QUIC
    # connections that carried the previous point would begin this one with the congestion
    # windows (and reorder state) it left, and runs would not be independent.
    _drop_deployment(ctx)
    spec = TunnelSpec(mode="session", scheduler=scheduler, reorder=reorder)
    workdir = ctx.state["workdir"] / f"qtun-{scheduler}-{reorder}-{ctx.state['port']}"
    deployment = QtunDeployment(ctx.state["lab"], spec, clients=[CLIENT], workdir=workdir)
    ctx.state["deployment"] = deployment.start()
    return ctx.state["deployment"]


def run_point(ctx: Context, point: Point) -> PointResult:
    from experiments.failover import _mptcp

    lab = ctx.state["lab"]
    p = ctx.params
    ctx.state["port"] += 1
    teardown = []
    if point["variant"] == "mptcp":
        _drop_deployment(ctx)  # the tunnel's programs would compete for the CPU
        route = _mptcp(lab, ctx)
        teardown = route.teardown
        sender, bind, mptcp = route.sender, route.sender_bind, True
    else:
        _tunnel(ctx, point["scheduler"], point["reorder"])
        sender, bind, mptcp = lab.plan.servers[0], SERVER_V4, False
    flow = Flow(
        sender=sender,
        bind=bind,
        receiver=CLIENT,
        dst=bind,
        traffic="tcp",
        duration_s=float(p["duration_s"]),
        port=ctx.state["port"],
        mptcp=mptcp,
    )
    try:
        recv, sent = run_flow(lab, flow, ctx.state["workdir"])
    finally:
        for undo in reversed(teardown):
            with contextlib.suppress(Exception):
                undo()
    interval = float(recv["interval_s"])
    bins = pad_bins(recv["bins"], interval, flow.duration_s)
    goodput = goodput_mbps(bins, interval, float(p["warmup_s"]), flow.duration_s)
    total = float(p["wifi_mbit"]) + float(p["fiveg_mbit"])
    row = {
        **point.values,
        "wifi_mbit": float(p["wifi_mbit"]),
        "fiveg_mbit": float(p["fiveg_mbit"]),
        "goodput_mbps": goodput,
        "ratio": goodput / total,
        "detail": "; ".join(x for x in (recv.get("error"), sent.get("error")) if x),
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
    tables={"aggregation": COLUMNS},
    key_columns=("variant", "scheduler", "reorder", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="WiFi 50 + 5G 100 Mbit/s: session-mode aggregation vs MPTCP, reorder on/off",
)
