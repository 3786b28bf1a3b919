"""Goodput under loss x latency: `qtlab run goodput` -> results/goodput/<time>/goodput.csv.

The same network as the overhead experiment (experiments/variants.py `Modes`): the
reference topology with c1's 5G access down, so everything crosses c1's shaped WiFi access;
plain and WireGuard traffic comes from conc (10.100.0.1 / its WireGuard address: the topology
routes the client to nothing else without a tunnel), the qtun modes' from srv1 through the
tunnel (stream mode: TCP intercepted on c1 and carried on QUIC streams).
For each mode, transport (TCP with Cubic, TCP with BBR, UDP at a constant rate) and (loss, RTT)
of the sweep: the WiFi access gets `loss_pct` random loss in each direction (a lossy access
loses both ways), half the RTT of delay each way and `rate_mbit`; one flow to c1
(experiments/traffic.py) runs `duration_s`; the row is the receiver's mean goodput after
`warmup_s`, with the CPU of every process over the same window (flows.cpu_columns) and the
inner TCP's retransmissions; goodput_timeseries.csv has the flow every
`timeseries_interval_s` with the sender's congestion window, RTT and retransmissions then (what
a slow run did: a stall, a start that ended early). The congestion control `cc` is the inner
TCP's, set on c1, conc and srv1.

Modes: the baselines "plain" and "wireguard", and every table of the `qtun` parameter (the
shipped config's [goodput.qtun.tunnel|session|stream], variants.QtunVariant). A qtun mode's
points also run over the outer dimensions of issue 13: `outer_cc`, the outer QUIC connection's
congestion control (cubic, bbr, none: paced at the link rate), and `loss_hiding` (off, on),
each value reaching both programs as the `--set` overrides of `outer_cc_settings` /
`loss_hiding_settings` (data: a setting's name can change without touching this file).
The baselines have neither: their rows say "" there. Stream mode without congestion control
is skipped (RFC 9484 §10; qtun refuses it), as is a value naming no qtun setting.

With a scenario (`--scenario FILE|NAME`, testbed/scenario.py) its changes of c1's WiFi access
are played from the start of each point's traffic on top of the point's link (a change sets
absolute values: a rate_mbit in the scenario replaces the point's), and the link is the
point's again when the scenario ends; the 5G access is down here, so a scenario may change
only WiFi.

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

from experiments import flows, variants
from experiments.procstat import CpuMeter, saturated_note
from experiments.runner import (
    NON_NEGATIVE,
    PERCENT,
    POSITIVE,
    Bounds,
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
    shipped_config,
)
from experiments.schemas import GOODPUT, GOODPUT_TIMESERIES, tables
from experiments.traffic import MAX_UDP_BYTES, UDP_HEADER, Samples, goodput_mbps, pad_bins
from experiments.variants import CLIENT, Modes, QtunVariant
from testbed.lab import Lab
from testbed.profiles import LinkProfile
from testbed.qtun import TunnelSpec

TRANSPORTS = ("tcp-cubic", "tcp-bbr", "udp")
BASELINE_MODES = ("plain", "wireguard")
COLUMNS = list(GOODPUT.columns)
FIRST_PORT = 5400
CONFIG_WHERE = "goodput (experiments/configs/goodput.toml or --config/--set)"
# The qtun modes' settings and what each outer value sets: their one home is the shipped config.
SHIPPED = shipped_config("goodput", ("qtun", "outer_cc_settings", "loss_hiding_settings"))
RATE_PLACEHOLDER = "{rate_mbit}"  # in an outer setting: the point's link rate

DEFAULTS: Params = {
    "modes": ["plain", "tunnel", "session", "stream", "wireguard"],
    "transports": list(TRANSPORTS),
    "outer_cc": ["cubic", "bbr", "none"],
    "loss_hiding": ["off", "on"],
    "loss_pct": [0.0, 0.5, 1.0, 2.0, 5.0],
    "rtt_ms": [10.0, 50.0, 100.0],
    "runs": 3,
    "seed": 1,
    "duration_s": 10.0,
    "warmup_s": 1.0,
    "rate_mbit": 50.0,
    "udp_rate_mbit": 20.0,
    "udp_size_bytes": 1000,
    # the goodput_timeseries table's step (a whole multiple of the 10 ms sampling)
    "timeseries_interval_s": 0.1,
    "backend": "auto",
    "verify_fidelity": True,
    "qtun": dict(SHIPPED["qtun"]),
    "outer_cc_settings": dict(SHIPPED["outer_cc_settings"]),
    "loss_hiding_settings": dict(SHIPPED["loss_hiding_settings"]),
    # A scenario of WiFi changes during each point's traffic (a shipped name or a TOML file;
    # `--scenario` sets it).
    "scenario": "",
}
# A few points: the outer controllers at 2 % loss and 50 ms for UDP and inner BBR, with the two
# baselines; what the tests run, and the per-point time the full run's estimate comes from.
QUICK: Params = {
    "runs": 1,
    "modes": ["plain", "tunnel", "wireguard"],
    "transports": ["udp", "tcp-bbr"],
    "outer_cc": ["cubic", "bbr", "none"],
    "loss_hiding": ["off"],
    "loss_pct": [2.0],
    "rtt_ms": [50.0],
    "duration_s": 4.0,
}


# what identifies a point's rows in goodput_timeseries (the time series' own columns follow)
SERIES_KEY = GOODPUT_TIMESERIES.columns[: GOODPUT_TIMESERIES.columns.index("t_s")]


@dataclass
class GoodputState:
    """What the points share: the lab, a scratch directory, the mode running (restarted per
    point for qtun), the qtun modes of the run, the last traffic port used."""

    lab: Lab
    workdir: Path
    modes: Modes
    qtun: dict[str, QtunVariant]
    port: int = FIRST_PORT

    def cc_nodes(self) -> tuple[str, ...]:
        """Where the inner TCP's congestion control is set: both ends of every mode's flow."""
        return (CLIENT, self.lab.plan.concentrator, self.lab.plan.servers[0])


def outer_overrides(params: Params, key: str, value: str) -> tuple[list[str], list[str]]:
    """The (client, concentrator) overrides one outer value sets (`key`: outer_cc_settings or
    loss_hiding_settings): a list for both programs, or a table with `client` / `concentrator`
    lists; RATE_PLACEHOLDER becomes the link rate."""
    entry = params[key].get(value)
    rate = f"{float(params['rate_mbit']):g}"
    if isinstance(entry, list):
        client = concentrator = entry
    elif isinstance(entry, dict):
        client, concentrator = entry.get("client", []), entry.get("concentrator", [])
    else:
        raise ExperimentError(
            f"{CONFIG_WHERE}: {key}.{value} must be a list of --set overrides (or a table of "
            "client / concentrator lists)."
        )
    for items in (client, concentrator):
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ExperimentError(f"{CONFIG_WHERE}: {key}.{value} must hold strings.")
    return (
        [i.replace(RATE_PLACEHOLDER, rate) for i in client],
        [i.replace(RATE_PLACEHOLDER, rate) for i in concentrator],
    )


def _check(params: Params) -> dict[str, QtunVariant]:
    qtun = variants.parse_qtun_variants(params["qtun"], CONFIG_WHERE)
    for key, allowed in (
        ("modes", [*BASELINE_MODES, *qtun]),
        ("transports", TRANSPORTS),
        ("outer_cc", list(params["outer_cc_settings"])),
        ("loss_hiding", list(params["loss_hiding_settings"])),
    ):
        bad = [v for v in params[key] if v not in allowed]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(map(str, bad))}; choose from {', '.join(allowed)}."
            )
    for value in params["outer_cc"]:
        outer_overrides(params, "outer_cc_settings", value)
    for value in params["loss_hiding"]:
        outer_overrides(params, "loss_hiding_settings", value)
    if not 0 <= params["warmup_s"] < params["duration_s"]:
        raise ExperimentError("need 0 <= warmup_s < duration_s.")
    return qtun


def points(params: Params) -> list[Point]:
    qtun = _check(params)
    out = []
    for mode in params["modes"]:
        outer = [(c, h) for c in params["outer_cc"] for h in params["loss_hiding"]]
        for outer_cc, loss_hiding in outer if mode in qtun else [("", "")]:
            for transport in params["transports"]:
                proto, _, cc = transport.partition("-")
                for loss in params["loss_pct"]:
                    for rtt in params["rtt_ms"]:
                        for run in range(1, int(params["runs"]) + 1):
                            values = {"mode": mode, "outer_cc": outer_cc}
                            values |= {"loss_hiding": loss_hiding, "transport": proto, "cc": cc}
                            values |= {"loss_pct": float(loss), "rtt_ms": float(rtt), "run": run}
                            out.append(Point(values))
    return out


def point_spec(params: Params, variant: QtunVariant, outer_cc: str, loss_hiding: str) -> TunnelSpec:
    """A qtun mode's TunnelSpec at one point of the outer dimensions."""
    cc_client, cc_conc = outer_overrides(params, "outer_cc_settings", outer_cc)
    lh_client, lh_conc = outer_overrides(params, "loss_hiding_settings", loss_hiding)
    return variant.spec(client=[*cc_client, *lh_client], concentrator=[*cc_conc, *lh_conc])


def plan_point(
    params: Params, qtun: dict[str, QtunVariant], point: Point
) -> tuple[TunnelSpec | None, str | None]:
    """A point's qtun TunnelSpec (None for the baselines) and why it cannot run (None: it can).
    Stream mode without outer congestion control is refused by qtun (RFC 9484 §10: its QUIC
    streams carry TCP); an unknown setting skips the point too."""
    mode = point["mode"]
    if mode not in qtun:
        missing = variants.wireguard_missing() if mode == "wireguard" else None
        return None, missing
    variant = qtun[mode]
    spec = point_spec(params, variant, point["outer_cc"], point["loss_hiding"])
    if spec.stream and point["outer_cc"] == "none":
        return spec, (
            "stream mode needs outer congestion control (its QUIC streams carry TCP; RFC 9484 "
            "§10): qtun refuses congestion_control = none with [stream]"
        )
    return spec, variant.not_ready(spec)


def qtun_settings(params: Params, qtun: dict[str, QtunVariant]) -> dict[str, dict[str, Any]]:
    """What each qtun mode ran with at each outer point (meta.json): "mode/outer_cc/loss_hiding"
    -> its TunnelSpec fields and both programs' overrides."""
    out: dict[str, dict[str, Any]] = {}
    for mode in (m for m in params["modes"] if m in qtun):
        for outer_cc in params["outer_cc"]:
            for hiding in params["loss_hiding"]:
                spec = point_spec(params, qtun[mode], outer_cc, hiding)
                out[f"{mode}/{outer_cc}/{hiding}"] = {
                    "mode": spec.mode,
                    "stream": spec.stream,
                    "scheduler": spec.scheduler,
                    "client": list(spec.client_overrides),
                    "concentrator": list(spec.concentrator_overrides),
                }
    return out


@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[GoodputState]]:
    qtun = _check(params)
    base = LinkProfile(rate_mbit=float(params["rate_mbit"]))
    with (
        tempfile.TemporaryDirectory(prefix="qex-goodput-") as tmp,
        Lab(
            "reference", backend=str(params["backend"]), profiles={"wifi": base, "5g": base}
        ) as lab,
    ):
        extra_meta: dict[str, Any] = {}
        modes = Modes(lab, Path(tmp), extra_meta)
        ctx = Context(params, GoodputState(lab, Path(tmp), modes, qtun), lab=lab)
        ctx.extra_meta = extra_meta
        ctx.backend = str(lab.backend)
        variants.wifi_only(lab, ctx, bool(params["verify_fidelity"]))
        ctx.extra_meta.update(
            {
                "topology": "reference (5G access down), as the overhead experiment",
                "direction": "conc (plain, WireGuard) or srv1 (qtun modes) -> c1",
                "impairment": "on c1's WiFi access: loss_pct in each direction, rtt_ms/2 "
                "delay each way, rate_mbit",
                "outer": "qtun modes x outer_cc x loss_hiding: the --set overrides of "
                "outer_cc_settings / loss_hiding_settings on both programs "
                f"({RATE_PLACEHOLDER} = rate_mbit)",
                "qtun_settings": qtun_settings(params, qtun),
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
    mode = point["mode"]
    spec, reason = plan_point(p, state.qtun, point)
    if reason:
        return PointResult(skipped=reason)
    # The point's link first, then the programs: a QUIC connection opened on the previous
    # point's link keeps what it measured there. Measured: BBR's RTprop from a 5 ms handshake
    # held for its 10 s window at 100 ms of RTT, a window of 2.89 x 5 ms of bandwidth, and
    # 0.4 of 20 Mbit/s of UDP through the tunnel (20.0 with the link set first).
    link = LinkProfile(
        delay_ms=point["rtt_ms"] / 2, loss_pct=point["loss_pct"], rate_mbit=float(p["rate_mbit"])
    )
    lab.shaper("wifi", CLIENT).set_profile("both", link)
    route = state.modes.ensure(mode, fresh=True, spec=spec)
    carrier = state.modes.carrier
    assert carrier is not None
    if point["transport"] == "tcp":
        for node in state.cc_nodes():
            lab.set_congestion_control(node, point["cc"])
    state.port += 1
    flow = flows.Flow(
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
    cpu = CpuMeter(carrier.programs, skip_s=float(p["warmup_s"]))
    during = flows.scenario_during(lab, ctx, point, CLIENT) if ctx.scenario is not None else None
    recv, sent = flows.run_flow(lab, flow, state.workdir, during=during, cpu=cpu)
    return PointResult(rows=measure(point, p, recv, sent, flows.cpu_columns(cpu)))


def measure(
    point: Point, params: Params, recv: Samples, sent: dict[str, Any], cpu: Row
) -> dict[str, list[Row]]:
    """A point's rows from its flow's samples: the goodput after warmup_s, and the flow every
    timeseries_interval_s (with the inner TCP's state for TCP)."""
    duration = float(params["duration_s"])
    bins = pad_bins(recv.bins, recv.interval_s, duration)
    tcp = point["transport"] == "tcp"
    lost = None
    if not tcp and "sent" in sent:
        lost = int(sent["sent"]) - recv.unique
    row: Row = {
        **point.values,
        "goodput_mbps": goodput_mbps(bins, recv.interval_s, float(params["warmup_s"]), duration),
        "rate_mbit": float(params["rate_mbit"]),
        "packets_lost": lost,
        "receiver_drops": None if tcp else recv.socket_drops,
        "inner_retransmits": sent.get("retransmits") if tcp else None,
        "detail": flows.flow_error(recv, sent),
        **cpu,
    }
    key = {column: point.values.get(column) for column in SERIES_KEY}
    step = float(params["timeseries_interval_s"])
    series = flows.flow_series(key, bins, recv.interval_s, step, sent.get("tcp_info") or [])
    return {"goodput": [row], "goodput_timeseries": series}


def summary_table(run_dir: Path) -> str:
    """Median goodput over the runs per mode / outer CC / loss hiding / transport (rows) and
    loss x RTT (columns), as the figures show it, and the points where a process saturated a
    core."""
    import pandas as pd

    path = run_dir / "goodput.csv"
    if not path.exists():
        return "no goodput rows"
    df = pd.read_csv(path, keep_default_na=False)
    for column in ("outer_cc", "loss_hiding"):
        if column not in df.columns:
            df[column] = ""
    hiding = df["loss_hiding"].map(lambda h: "hiding" if h == "on" else "")
    parts = [df["mode"], df["outer_cc"].astype(str), hiding, df["transport"], df["cc"].astype(str)]
    df["what"] = [" ".join(p for p in words if p) for words in zip(*parts, strict=True)]
    table = df.pivot_table(
        index="what", columns=["loss_pct", "rtt_ms"], values="goodput_mbps", aggfunc="median"
    )
    return str(table.round(1)) + saturated_note(
        df.to_dict("records"),
        lambda r: f"{r['what']} {r['loss_pct']}% {r['rtt_ms']}ms run {r['run']}",
    )


EXPERIMENT = Experiment(
    name="goodput",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=tables(GOODPUT, GOODPUT_TIMESERIES),
    key_columns=("mode", "outer_cc", "loss_hiding", "transport", "cc", "loss_pct", "rtt_ms", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="goodput per mode and outer congestion control under loss x RTT, TCP and UDP",
    scenario_accesses=("wifi",),
    scenario_note="goodput runs with c1's 5G access down",
    bounds={
        "loss_pct": PERCENT,
        **dict.fromkeys(("rtt_ms", "warmup_s"), NON_NEGATIVE),
        **dict.fromkeys(("duration_s", "rate_mbit", "udp_rate_mbit"), POSITIVE),
        "timeseries_interval_s": POSITIVE,
        "udp_size_bytes": Bounds(UDP_HEADER.size, MAX_UDP_BYTES),
    },
)
