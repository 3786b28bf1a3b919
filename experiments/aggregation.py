"""Aggregation: `qtlab run aggregation` -> results/aggregation/<time>/aggregation.csv.

Reference topology with the default WiFi and 5G profiles at `wifi_mbit` (50) and `fiveg_mbit`
(100) Mbit/s. One bulk TCP transfer to the client c1 per point; goodput is the receiver's mean
after `warmup_s`, ratio = goodput / (wifi_mbit + fiveg_mbit); the CPU of every process over the
same window (flows.cpu_columns).
  qtun variants  every table of the `qtun` parameter (the shipped config's
                 [aggregation.qtun.*], variants.QtunVariant) x `schedulers` (wrr, lowest-rtt,
                 the engine's earliest) x the Packet-Tag reorder buffer on or off
                 (TunnelSpec.reorder); sender on srv1 through the tunnel. A scheduler this
                 checkout's qtun does not register yet is skipped with that reason.
                 A variant of one connection (mode tunnel or masque: MASQUE CONNECT-IP, issue
                 18) has no scheduler and no reorder buffer: one point per run, scheduler
                 "none", reorder empty — what a single-path tunnel gets from two accesses.
  mptcp          kernel MPTCP, both subflows active (experiments/variants.py BASELINES, as in
                 the failover experiment); the sender on conc's service address: the reference
                 topology routes clients to nothing else without a tunnel. scheduler = the
                 kernel's "default", reorder not applicable.
  mptcp-backup   the same with the 5G subflow as backup: MPTCP configured for failover, what
                 it then aggregates (nothing, by design: the baseline of issue 12 item 6).
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
from experiments.flows import Flow, cpu_columns, flow_error, run_flow
from experiments.procstat import CpuMeter, saturated_note
from experiments.runner import (
    NON_NEGATIVE,
    PERCENT,
    POSITIVE,
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
    shipped_config,
)
from experiments.schemas import AGGREGATION, tables
from experiments.traffic import goodput_mbps, pad_bins
from experiments.variants import CLIENT, Carrier, QtunVariant
from testbed.fidelity import verify_accesses
from testbed.lab import Lab
from testbed.profiles import profile
from tunnel.session.scheduler import SCHEDULER_NAMES

MPTCP_VARIANTS = ("mptcp", "mptcp-backup")
# Schedulers of the multipath engine (issue 12) being built: accepted here, skipped until qtun
# registers them.
PLANNED_SCHEDULERS = ("earliest",)
SCHEDULERS = (*SCHEDULER_NAMES, *PLANNED_SCHEDULERS)
COLUMNS = list(AGGREGATION.columns)
FIRST_PORT = 5400
CONFIG_WHERE = "aggregation (experiments/configs/aggregation.toml or --config/--set)"
SHIPPED = shipped_config("aggregation", ("qtun",))

DEFAULTS: Params = {
    "variants": ["session", "mptcp", "mptcp-backup"],
    "schedulers": ["wrr", "lowest-rtt", "earliest"],
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
    "qtun": dict(SHIPPED["qtun"]),
}
QUICK: Params = {"runs": 1, "duration_s": 8.0, "warmup_s": 2.0}


@dataclass
class AggregationState:
    """What the points share: the lab, a scratch directory, the qtun variants, the last
    traffic port used, and the tunnel of the last qtun point (stopped before the next point
    starts)."""

    lab: Lab
    workdir: Path
    qtun: dict[str, QtunVariant]
    port: int = FIRST_PORT
    tunnel: Carrier | None = None

    def drop_tunnel(self) -> None:
        if self.tunnel is not None:
            self.tunnel.stop()
        self.tunnel = None


def _check(params: Params) -> dict[str, QtunVariant]:
    qtun = variants.parse_qtun_variants(params["qtun"], CONFIG_WHERE)
    for key, allowed in (
        ("variants", [*qtun, *MPTCP_VARIANTS]),
        ("schedulers", list(SCHEDULERS)),
    ):
        bad = [v for v in params[key] if v not in allowed]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(map(str, bad))}; choose from {', '.join(allowed)}."
            )
    return qtun


ONE_CONNECTION = "none"  # the scheduler column of a variant of one connection (tunnel, masque)


def points(params: Params) -> list[Point]:
    qtun = _check(params)
    runs = range(1, int(params["runs"]) + 1)
    out = []
    for variant in params["variants"]:
        if variant in MPTCP_VARIANTS:
            out += [Point({"variant": variant, "scheduler": "default", "reorder": "", "run": r})
                    for r in runs]  # fmt: skip
            continue
        if qtun[variant].mode != "session":
            out += [Point({"variant": variant, "scheduler": ONE_CONNECTION, "reorder": "",
                           "run": r}) for r in runs]  # fmt: skip
            continue
        for scheduler in params["schedulers"]:
            for reorder in params["reorder"]:
                out += [Point({"variant": variant, "scheduler": scheduler, "reorder": bool(reorder),
                               "run": r}) for r in runs]  # fmt: skip
    return out


@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[AggregationState]]:
    qtun = _check(params)
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
        ctx = Context(params, AggregationState(lab, Path(tmp), qtun), lab=lab)
        ctx.backend = str(lab.backend)
        used = params["variants"]
        ctx.extra_meta.update(
            {
                "profiles": {k: v.as_dict() for k, v in profiles.items()},
                "lab": lab.describe(),
                "baselines": {v: variants.BASELINES[v] for v in used if v in MPTCP_VARIANTS},
            }
        )
        if params["verify_fidelity"]:
            ctx.fidelity.extend(verify_accesses(lab))
        try:
            yield ctx
        finally:
            ctx.state.drop_tunnel()


def run_point(ctx: Context[AggregationState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    state.port += 1
    mptcp: Carrier | None = None
    name = point["variant"]
    # Every point on new programs and connections, even when the previous one had the same
    # spec: QUIC connections that carried the previous point would begin this one with the
    # congestion windows (and reorder state) it left, and runs would not be independent. The
    # previous tunnel's programs would also compete for the CPU.
    state.drop_tunnel()
    if name in MPTCP_VARIANTS:
        mptcp = variants.start_baseline(state.lab, name, state.workdir, CLIENT)
        carrier = mptcp
    else:
        variant = state.qtun[name]
        if point["scheduler"] == ONE_CONNECTION:
            spec = variant.spec()
        else:
            spec = variant.spec(scheduler=point["scheduler"], reorder=point["reorder"])
        reason = variant.not_ready(spec)
        if reason:
            return PointResult(skipped=reason)
        workdir = state.workdir / f"qtun-{name}-{point['scheduler']}-{state.port}"
        carrier = variants.qtun(
            state.lab, spec, workdir, clients=[CLIENT], join_order=variant.join_order
        )
        state.tunnel = carrier
    route = carrier.route
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
    cpu = CpuMeter(carrier.programs, skip_s=float(p["warmup_s"]))
    links = ("wifi", "5g")
    try:
        before = [state.lab.access_rx_bytes(name, CLIENT) for name in links]
        recv, sent = run_flow(state.lab, flow, state.workdir, cpu=cpu)
        after = [state.lab.access_rx_bytes(name, CLIENT) for name in links]
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
        "wifi_link_mbps": (after[0] - before[0]) * 8 / flow.duration_s / 1e6,
        "fiveg_link_mbps": (after[1] - before[1]) * 8 / flow.duration_s / 1e6,
        "detail": flow_error(recv, sent),
        **cpu_columns(cpu),
    }
    return PointResult(rows={"aggregation": [row]})


def summary_table(run_dir: Path) -> str:
    import pandas as pd

    path = run_dir / "aggregation.csv"
    if not path.exists():
        return "no aggregation rows"
    df = pd.read_csv(path, keep_default_na=False)
    table = df.groupby(["variant", "scheduler", "reorder"])[["goodput_mbps", "ratio"]].mean()
    return str(table.round(2)) + saturated_note(
        df.to_dict("records"),
        lambda r: f"{r['variant']} {r['scheduler']} {r['reorder']} run {r['run']}",
    )


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
    description="WiFi 50 + 5G 100 Mbit/s: session-mode aggregation vs MPTCP (active, backup)",
    bounds={
        **dict.fromkeys(("wifi_mbit", "fiveg_mbit", "duration_s"), POSITIVE),
        "wifi_loss_pct": PERCENT,
        "warmup_s": NON_NEGATIVE,
    },
)
