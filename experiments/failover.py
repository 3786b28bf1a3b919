"""The failover experiment: a server->client transfer while the client's WiFi fails and comes back.

Per point (variant x event x traffic x run) on the reference topology (client c1 with WiFi + 5G,
concentrator conc, server srv1): a receiver on c1 fetches a bulk TCP transfer (or asks for a
constant-rate UDP flow) from a sender; at t = down_at_s the WiFi access fails and at t = up_at_s
it comes back, as
  * "link-down": a real carrier loss (Lab.access_down/up: the WiFi shaper's veths go down, the
    client sees NO-CARRIER), or
  * "blackhole": the WiFi shaper drops everything with the link left up (nothing tells anyone).
The receiver records delivered bytes per 10 ms (experiments/traffic.py); a row of failover.csv
per point (gap, goodput before/during/after, UDP loss and reordering) and a goodput time series.

Variants (what carries the traffic: experiments/variants.py):
  plain       no tunnel: c1 <-> a sender on conc's service address over the default route (WiFi).
  mptcp       kernel MPTCP between c1 and conc's service address, a subflow per access.
  wireguard   wireguard-go on c1 and conc, c1 routing the servers into it; sender on srv1.
  session-failover, session-failover-noreports, tunnel-migration, stream-migration:
              qtun (QTUN_SPECS), sender on srv1, c1 receives on its inner address, with
              `probe_interval_s` as the client's liveness probe. A variant whose programs are
              not there is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import variants
from experiments.flows import Flow, flow_error, run_flow, sleep_until
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
)
from experiments.schemas import FAILOVER, FAILOVER_TIMESERIES, tables
from experiments.traffic import Samples, delivery_gap_ms, goodput_mbps, pad_bins, resample
from experiments.variants import CLIENT, Carrier, WireGuard, wireguard_missing
from testbed.fidelity import verify_accesses
from testbed.lab import Lab
from testbed.profiles import profile
from testbed.qtun import TunnelSpec
from testbed.topologies import CONCENTRATOR_V4, SERVERS_V4

VARIANTS = (
    "plain",
    "mptcp",
    "wireguard",
    "session-failover",
    "session-failover-noreports",
    "tunnel-migration",
    "stream-migration",
)
EVENTS = ("link-down", "blackhole")
TRAFFIC = ("tcp", "udp")

FAILOVER_COLUMNS = list(FAILOVER.columns)
TIMESERIES_COLUMNS = list(FAILOVER_TIMESERIES.columns)
FIRST_PORT = 5400

DEFAULTS: Params = {
    "variants": list(VARIANTS),
    "events": list(EVENTS),
    "traffic": list(TRAFFIC),
    "runs": 3,
    "seed": 1,
    "down_at_s": 20.0,
    "up_at_s": 40.0,
    "duration_s": 60.0,
    "sample_interval_s": 0.01,
    "timeseries_interval_s": 0.1,
    "udp_rate_mbit": 10.0,
    "udp_size_bytes": 1000,
    "backend": "auto",
    "wifi_profile": "wifi",
    "fiveg_profile": "5g",
    "congestion_control": "cubic",
    "verify_fidelity": True,
    "fidelity_loss_burst": 2000,
    "wg_keepalive_s": 25,
    # qtun's liveness probe (limits.probe_interval; an access is dead after 3 unanswered probes).
    # qtun's own default is 1 s (3 s to notice a blackhole, close to the quick run's 4 s outage);
    # 0.5 s notices it in 1.5 s and leaves room for queueing delay on a loaded WiFi link.
    "probe_interval_s": 0.5,
}
QUICK: Params = {
    "runs": 1,
    "events": ["link-down"],
    "traffic": ["tcp"],
    "down_at_s": 4.0,
    "up_at_s": 8.0,
    "duration_s": 12.0,
    "fidelity_loss_burst": 500,
}


@dataclass
class FailoverState:
    """What the points share: the lab, a scratch directory, the last traffic port used."""

    lab: Lab
    workdir: Path
    port: int = FIRST_PORT


# -- points -----------------------------------------------------------------------------------
def _check(params: Params) -> None:
    for key, allowed in (("variants", VARIANTS), ("events", EVENTS), ("traffic", TRAFFIC)):
        bad = [v for v in params[key] if v not in allowed]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(map(str, bad))}; choose from {', '.join(allowed)}."
            )
    if not 0 < params["down_at_s"] < params["up_at_s"] < params["duration_s"]:
        raise ExperimentError("need 0 < down_at_s < up_at_s < duration_s.")


def points(params: Params) -> list[Point]:
    _check(params)
    return [
        Point({"variant": v, "event": e, "traffic": t, "run": r})
        for v in params["variants"]
        for e in params["events"]
        for t in params["traffic"]
        for r in range(1, int(params["runs"]) + 1)
    ]


# -- the testbed for the whole run ----------------------------------------------------------
@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[FailoverState]]:
    _check(params)
    profiles = {"wifi": profile(params["wifi_profile"]), "5g": profile(params["fiveg_profile"])}
    cc = params["congestion_control"] or None
    with (
        tempfile.TemporaryDirectory(prefix="qex-failover-") as tmp,
        Lab(
            "reference", backend=params["backend"], congestion_control=cc, profiles=profiles
        ) as lab,
    ):
        ctx = Context(params, FailoverState(lab, Path(tmp)))
        ctx.backend = str(lab.backend)
        ctx.extra_meta["lab"] = lab.describe()
        ctx.extra_meta["profiles"] = {k: v.as_dict() for k, v in profiles.items()}
        ctx.extra_meta["sample_interval_s"] = params["sample_interval_s"]
        ctx.extra_meta["timeseries_interval_s"] = params["timeseries_interval_s"]
        ctx.extra_meta["baselines"] = BASELINE_NOTES
        if params["verify_fidelity"]:
            burst = int(params["fidelity_loss_burst"])
            ctx.fidelity.extend(verify_accesses(lab, loss_burst=burst))
        yield ctx


BASELINE_NOTES = {
    "plain": f"c1 <-> conc {CONCENTRATOR_V4} over the default route (WiFi); servers are "
    "unreachable without a tunnel in the reference topology",
    "mptcp": f"c1 <-> conc {CONCENTRATOR_V4}, IPPROTO_MPTCP both ends, endpoints wifi+5g "
    "subflow, limits subflow 2 add_addr_accepted 2, in-kernel path manager",
    "wireguard": "wireguard-go c1 <-> conc, c1 endpoint unbound (roams), sender srv1",
}


# -- variants -------------------------------------------------------------------------------
Setup = Callable[[FailoverState, Params], Carrier]


def _plain(state: FailoverState, params: Params) -> Carrier:
    return variants.plain(state.lab)


def _mptcp(state: FailoverState, params: Params) -> Carrier:
    return variants.mptcp(state.lab, CLIENT)


def _wireguard(state: FailoverState, params: Params) -> Carrier:
    missing = wireguard_missing()
    if missing:
        raise _Skip(missing)
    keepalive = int(params["wg_keepalive_s"])
    wireguard = WireGuard(state.lab, state.workdir / "wireguard", CLIENT, keepalive, True)
    return wireguard.start()


class _Skip(Exception):
    """The variant cannot run here (yet); the message is the reason."""


QTUN_SPECS: dict[str, TunnelSpec] = {
    "session-failover": TunnelSpec(mode="session", scheduler="failover"),
    "session-failover-noreports": TunnelSpec(
        mode="session", scheduler="failover", access_reports=False
    ),
    "tunnel-migration": TunnelSpec(mode="tunnel"),
    "stream-migration": TunnelSpec(
        mode="tunnel",
        stream=True,
        # the client intercepts TCP towards the servers and carries it on QUIC streams
        client_overrides=(f'stream.intercept=["{SERVERS_V4}"]',),
    ),
}


def qtun_missing(variant: str) -> str | None:
    """Why a qtun variant cannot run in this checkout, or None if its programs are there."""
    return variants.qtun_missing(QTUN_SPECS[variant])


def _qtun(variant: str) -> Setup:
    def setup(state: FailoverState, params: Params) -> Carrier:
        spec = QTUN_SPECS[variant]
        reason = variants.qtun_missing(spec)
        if reason:
            raise _Skip(reason)
        probe = f"limits.probe_interval={float(params['probe_interval_s'])}"
        spec = dataclasses.replace(spec, client_overrides=(*spec.client_overrides, probe))
        workdir = state.workdir / f"qtun-{variant}"
        return variants.qtun(state.lab, spec, workdir, clients=[CLIENT])

    return setup


SETUPS: dict[str, Setup] = {
    "plain": _plain,
    "mptcp": _mptcp,
    "wireguard": _wireguard,
    **{v: _qtun(v) for v in QTUN_SPECS},
}


# -- one point ------------------------------------------------------------------------------
def _event(lab: Lab, event: str, failed: bool) -> None:
    if event == "link-down":
        (lab.access_down if failed else lab.access_up)("wifi", CLIENT)
    else:
        lab.shaper("wifi", CLIENT).blackhole(failed)


def run_point(ctx: Context[FailoverState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    lab = state.lab
    variant, event, traffic = point["variant"], point["event"], point["traffic"]
    if variant == "mptcp" and traffic == "udp":
        return PointResult(skipped="MPTCP carries TCP only: a UDP flow would be the plain one")
    try:
        carrier = SETUPS[variant](state, p)
    except _Skip as skip:
        return PointResult(skipped=str(skip))
    state.port += 1
    route = carrier.route
    flow = Flow(
        sender=route.sender,
        bind=route.address,
        receiver=CLIENT,
        dst=route.address,
        traffic=traffic,
        duration_s=float(p["duration_s"]),
        port=state.port,
        mptcp=route.mptcp,
        udp_rate_mbit=float(p["udp_rate_mbit"]),
        udp_size_bytes=int(p["udp_size_bytes"]),
        interval_s=float(p["sample_interval_s"]),
    )

    def outage(start_at: float) -> None:
        try:
            sleep_until(start_at + float(p["down_at_s"]))
            _event(lab, event, failed=True)
            sleep_until(start_at + float(p["up_at_s"]))
        finally:
            _event(lab, event, failed=False)

    try:
        recv, sent = run_flow(lab, flow, state.workdir, during=outage)
    finally:
        with contextlib.suppress(Exception):
            carrier.stop()
    return PointResult(rows=measure(point, p, recv, sent))


def measure(point: Point, p: Params, recv: Samples, sent: dict[str, Any]) -> dict[str, list[Row]]:
    """The failover.csv row and the time series of one point, from the receiver's samples."""
    interval = recv.interval_s
    down, up, duration = float(p["down_at_s"]), float(p["up_at_s"]), float(p["duration_s"])
    bins = pad_bins(recv.bins, interval, duration)
    gap = delivery_gap_ms(bins, interval, down, up)
    key = {k: point[k] for k in ("variant", "run", "event", "traffic")}
    udp = point["traffic"] == "udp"
    packets_sent = sent.get("sent") if udp else None
    lost: int | None = None
    if udp:
        lost = int(packets_sent) - recv.unique if packets_sent is not None else recv.lost
    row: Row = {
        **key,
        "down_at_s": down,
        "up_at_s": up,
        "gap_ms": None if gap is None else round(gap, 1),
        "goodput_before_mbps": goodput_mbps(bins, interval, max(1.0, down - 10), down),
        "goodput_during_mbps": goodput_mbps(bins, interval, down, up),
        "goodput_after_mbps": goodput_mbps(bins, interval, up, duration),
        "packets_lost": lost,
        "reordered": recv.reordered if udp else None,
        "completed": gap is not None,
        "packets_sent": packets_sent,
        "bytes_received": recv.bytes_total,
        "detail": flow_error(recv, sent),
    }
    if goodput_mbps(bins, interval, max(1.0, down - 10), down) == 0:
        # Not a failover result: the flow had stopped before anything failed.
        row["detail"] = "; ".join(x for x in (row["detail"], "no delivery before the outage") if x)
    out_interval = float(p["timeseries_interval_s"])
    series = [
        {**key, "t_s": round(i * out_interval, 6), "goodput_mbps": round(v, 4)}
        for i, v in enumerate(resample(bins, interval, out_interval))
    ]
    return {"failover": [row], "failover_timeseries": series}


# -- the table --------------------------------------------------------------------------------
def summary_table(run_dir: Path) -> str:
    """Gap per variant (median over runs), what did not recover, and what was skipped."""
    import csv
    import statistics

    lines = [f"{'variant':<28} {'event':<10} {'traffic':<7} {'runs':>4} {'gap_ms':>9}  note"]
    path = run_dir / "failover.csv"
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    if path.exists():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                groups.setdefault((row["variant"], row["event"], row["traffic"]), []).append(row)
    for (variant, event, traffic), rows in groups.items():
        gaps = [float(r["gap_ms"]) for r in rows if r["gap_ms"]]
        broken = sum(1 for r in rows if r["completed"] != "True")
        gap = f"{statistics.median(gaps):9.0f}" if gaps else f"{'-':>9}"
        notes = [f"{broken} run(s) never recovered"] if broken else []
        notes += sorted({r["detail"] for r in rows if r.get("detail")})
        note = "; ".join(notes)
        lines.append(f"{variant:<28} {event:<10} {traffic:<7} {len(rows):>4} {gap}  {note}")
    meta = json.loads((run_dir / "meta.json").read_text())
    seen: set[tuple[str, str, str]] = set()
    for entry in meta.get("skipped", []):
        variant = entry["point"].get("variant", "?")
        traffic = entry["point"].get("traffic", "-")
        if (variant, traffic, entry["reason"]) not in seen:
            seen.add((variant, traffic, entry["reason"]))
            lines.append(
                f"{variant:<28} {'-':<10} {traffic:<7} {0:>4} {'-':>9}  skipped: {entry['reason']}"
            )
    for entry in meta.get("failed", []):
        pt = entry["point"]
        lines.append(
            f"{pt.get('variant', '?'):<28} {pt.get('event', '-'):<10} {pt.get('traffic', '-'):<7} "
            f"{'':>4} {'-':>9}  FAILED: {entry['error'][:120]}"
        )
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="failover",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=tables(FAILOVER, FAILOVER_TIMESERIES),
    key_columns=("variant", "event", "traffic", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="server->client transfer while WiFi fails (link-down or blackhole) and returns",
)
