"""Goodput under loss x latency: `qtlab run goodput` -> results/goodput/<time>/goodput.csv.

The same network as the overhead experiment (experiments/variants.py `Modes`): the
reference topology with c1's 5G access down, so everything crosses c1's shaped WiFi access;
plain and WireGuard traffic comes from conc (10.100.0.1 / its WireGuard address: the topology
routes the client to nothing else without a tunnel), the qtun modes' from srv1 through the
tunnel (stream mode: TCP intercepted on c1 and carried on QUIC streams).
For each mode (plain, tunnel, session, stream, wireguard), transport (TCP with Cubic, TCP with
BBR, UDP at a constant rate) and (loss, RTT) of the sweep: the WiFi access gets `loss_pct`
random loss in each direction (a lossy access loses both ways), half the RTT of delay each way
and `rate_mbit`; one flow to c1 (experiments/traffic.py) runs `duration_s`; the row is the
receiver's mean goodput after `warmup_s`. The congestion control is the inner TCP's, set on
c1, conc and srv1; QUIC's own (aioquic's) is what the tunnel modes add underneath.
The qtun modes' programs are restarted for every point (`Modes.ensure(fresh=True)`): the QUIC
connection of the previous point would carry its congestion state over — measured, a
loss-free 100 ms point right after a 2 % loss point reached 4.4 of 20 Mbit/s of UDP on the
same connection, 20.0 on a new one. Linux's own per-destination TCP metrics cache is off in
the lab (testbed/lab.py) for the same reason.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from experiments.schemas import GOODPUT, tables
from experiments.traffic import goodput_mbps, pad_bins
from experiments.variants import CLIENT, MODES, Modes
from testbed.fidelity import require_fidelity, verify_link
from testbed.lab import Lab
from testbed.profiles import LinkProfile

TRANSPORTS = ("tcp-cubic", "tcp-bbr", "udp")
COLUMNS = list(GOODPUT.columns)
FIRST_PORT = 5400

DEFAULTS: Params = {
    "modes": list(MODES),
    "transports": list(TRANSPORTS),
    "loss_pct": [0.0, 0.5, 1.0, 2.0, 5.0],
    "rtt_ms": [10.0, 40.0, 100.0],
    "runs": 3,
    "seed": 1,
    "duration_s": 10.0,
    "warmup_s": 1.0,
    "rate_mbit": 50.0,
    "udp_rate_mbit": 20.0,
    "udp_size_bytes": 1000,
    "backend": "auto",
    "verify_fidelity": True,
}
QUICK: Params = {"runs": 1, "loss_pct": [0.0, 2.0], "rtt_ms": [10.0, 100.0], "duration_s": 4.0}


@dataclass
class GoodputState:
    """What the points share: the lab, a scratch directory, the mode running (restarted per
    point for qtun), the last traffic port used."""

    lab: Lab
    workdir: Path
    modes: Modes
    port: int = FIRST_PORT

    def cc_nodes(self) -> tuple[str, ...]:
        """Where the inner TCP's congestion control is set: both ends of every mode's flow."""
        return (CLIENT, self.lab.plan.concentrator, self.lab.plan.servers[0])


def _check(params: Params) -> None:
    for key, allowed in (("modes", MODES), ("transports", TRANSPORTS)):
        bad = [v for v in params[key] if v not in allowed]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(map(str, bad))}; choose from {', '.join(allowed)}."
            )
    if not 0 <= params["warmup_s"] < params["duration_s"]:
        raise ExperimentError("need 0 <= warmup_s < duration_s.")


def points(params: Params) -> list[Point]:
    _check(params)
    out = []
    for mode in params["modes"]:
        for transport in params["transports"]:
            proto, _, cc = transport.partition("-")
            for loss in params["loss_pct"]:
                for rtt in params["rtt_ms"]:
                    for run in range(1, int(params["runs"]) + 1):
                        values = {"mode": mode, "transport": proto, "cc": cc}
                        values |= {"loss_pct": float(loss), "rtt_ms": float(rtt), "run": run}
                        out.append(Point(values))
    return out


@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[GoodputState]]:
    _check(params)
    base = LinkProfile(rate_mbit=float(params["rate_mbit"]))
    with (
        tempfile.TemporaryDirectory(prefix="qex-goodput-") as tmp,
        Lab(
            "reference", backend=str(params["backend"]), profiles={"wifi": base, "5g": base}
        ) as lab,
    ):
        extra_meta: dict[str, Any] = {}
        modes = Modes(lab, Path(tmp), extra_meta)
        ctx = Context(params, GoodputState(lab, Path(tmp), modes))
        ctx.extra_meta = extra_meta
        ctx.backend = str(lab.backend)
        if params["verify_fidelity"]:
            middle = lab.access("wifi", CLIENT).shaped
            assert middle is not None
            rows = verify_link(lab, middle)
            ctx.fidelity = [vars(r) for r in rows]
            require_fidelity(rows)
        lab.access_down("5g", CLIENT)  # one path: nothing can use the other access
        ctx.extra_meta.update(
            {
                "topology": "reference (5G access down), as the overhead experiment",
                "direction": "conc (plain, WireGuard) or srv1 (qtun modes) -> c1",
                "impairment": "on c1's WiFi access: loss_pct in each direction, rtt_ms/2 "
                "delay each way, rate_mbit",
                "lab": lab.describe(),
                "sample_interval_s": 0.01,
            }
        )
        try:
            yield ctx
        finally:
            modes.stop()


def run_point(ctx: Context[GoodputState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    lab = state.lab
    route = state.modes.ensure(point["mode"], fresh=True)
    link = LinkProfile(
        delay_ms=point["rtt_ms"] / 2, loss_pct=point["loss_pct"], rate_mbit=float(p["rate_mbit"])
    )
    lab.shaper("wifi", CLIENT).set_profile("both", link)
    if point["transport"] == "tcp":
        for node in state.cc_nodes():
            lab.set_congestion_control(node, point["cc"])
    state.port += 1
    flow = Flow(
        sender=route.sender,
        bind=route.address,
        receiver=CLIENT,
        dst=route.address,
        traffic=point["transport"],
        duration_s=float(p["duration_s"]),
        port=state.port,
        udp_rate_mbit=float(p["udp_rate_mbit"]),
        udp_size_bytes=int(p["udp_size_bytes"]),
    )
    recv, sent = run_flow(lab, flow, state.workdir)
    bins = pad_bins(recv.bins, recv.interval_s, flow.duration_s)
    goodput = goodput_mbps(bins, recv.interval_s, float(p["warmup_s"]), flow.duration_s)
    lost = None
    if point["transport"] == "udp" and "sent" in sent:
        lost = int(sent["sent"]) - recv.unique
    row: Row = {
        **point.values,
        "goodput_mbps": goodput,
        "rate_mbit": float(p["rate_mbit"]),
        "packets_lost": lost,
        "detail": flow_error(recv, sent),
    }
    return PointResult(rows={"goodput": [row]})


def summary_table(run_dir: Path) -> str:
    """Mean goodput per mode/transport (rows) and loss x RTT (columns)."""
    import pandas as pd

    path = run_dir / "goodput.csv"
    if not path.exists():
        return "no goodput rows"
    df = pd.read_csv(path).fillna({"cc": ""})
    df["what"] = df["mode"] + " " + df["transport"] + " " + df["cc"].astype(str)
    table = df.pivot_table(
        index="what", columns=["loss_pct", "rtt_ms"], values="goodput_mbps", aggfunc="mean"
    )
    return str(table.round(1))


EXPERIMENT = Experiment(
    name="goodput",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=tables(GOODPUT),
    key_columns=("mode", "transport", "cc", "loss_pct", "rtt_ms", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="goodput per mode under a sweep of loss x RTT on the access, TCP and UDP",
)
