"""The failover experiment: a server->client transfer while the client's WiFi fails and comes back.

Per point (variant x event x traffic x run) on the reference topology (client c1 with WiFi + 5G,
concentrator conc, server srv1): a receiver on c1 fetches a bulk TCP transfer (or asks for a
constant-rate UDP flow) from a sender; at t = down_at_s the WiFi access fails and at t = up_at_s
it comes back, as
  * "link-down": a real carrier loss (Lab.access_down/up: the WiFi shaper's veths go down, the
    client sees NO-CARRIER; a variant whose client OS reacts to it, wireguard-os, does so), or
  * "blackhole": the WiFi shaper drops everything with the link left up (nothing tells anyone).
or, with a scenario (`--scenario FILE|NAME`, testbed/scenario.py), as the scenario's timeline of
link changes on either access, played from the start of the traffic: the point's event is then
"scenario" (the `events` parameter is not used), its outage window runs from the scenario's
first change to its end (when every link it touched comes back), and the client's OS reacts to
its carrier changes as to link-down's.
The receiver records delivered bytes per 10 ms (experiments/traffic.py); a row of failover.csv
per point (gap, goodput before/during/after and during the outage after the gap, UDP loss and
reordering, each process's CPU; with path MTU discovery, when the concentrator suspected,
confirmed and searched past a black hole) and a goodput time series.

Variants (what carries the traffic):
  baselines   plain, plain-5g, mptcp, mptcp-backup, wireguard, wireguard-os: experiments/
              variants.py BASELINES (WireGuard with the sender on srv1, c1 routing the servers
              into it; its keepalive wg_keepalive_s / wg_os_keepalive_s).
  qtun        every table of the `qtun` parameter (experiments/configs/failover.toml
              [failover.qtun.*], variants.QtunVariant): sender on srv1, c1 receives on its inner
              address, `probe_interval_s` as the client's liveness probe. A variant whose
              programs, scheduler or setting keys are not there yet is skipped with the reason.
`ablation` lists qtun variants run after `variants` whose rows carry `ablation_off` (the
mechanism they turn off, "none" for the reference with all on): the ablation figure's.

"Goodput during the outage (after the gap)" (issue 12) is `goodput_after_gap_mbps`: from the end
of the gap to the repair. Divided by plain-5g's goodput over the outage (the summary's
`after_gap_vs_5g`) it says how much of what 5G alone carries the variant delivered once it had
failed over.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import variants
from experiments.flows import (
    Flow,
    cpu_columns,
    flow_error,
    flow_series,
    run_flow,
    scenario_during,
    sleep_until,
)
from experiments.procstat import CpuMeter, saturated_by
from experiments.runner import (
    NON_NEGATIVE,
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
from experiments.schemas import (
    CPU_COLUMNS,
    FAILOVER,
    FAILOVER_TIMESERIES,
    NO_DELIVERY_BEFORE,
    PMTU_COLUMNS,
    SHAPER_COLUMNS,
    tables,
)
from experiments.traffic import (
    MAX_UDP_BYTES,
    UDP_HEADER,
    Samples,
    delivery_gap,
    goodput_mbps,
    pad_bins,
)
from experiments.variants import BASELINES, CLIENT, Carrier, QtunVariant, wireguard_missing
from testbed.fidelity import verify_accesses
from testbed.lab import Lab
from testbed.profiles import profile
from testbed.qtun import QtunError, TunnelSpec
from testbed.scenario import Scenario

EVENTS = ("link-down", "blackhole")
SCENARIO_EVENT = "scenario"  # the event of every point of a run with a scenario
TRAFFIC = ("tcp", "udp")

FAILOVER_COLUMNS = list(FAILOVER.columns)
TIMESERIES_COLUMNS = list(FAILOVER_TIMESERIES.columns)
FIRST_PORT = 5400
CONFIG_WHERE = "failover (experiments/configs/failover.toml or --config/--set)"
# The qtun variants' settings and the ablation list: their one home is the shipped config.
SHIPPED = shipped_config("failover", ("qtun", "ablation"))

DEFAULTS: Params = {
    "variants": [
        "plain",
        "plain-5g",
        "mptcp",
        "mptcp-backup",
        "wireguard",
        "wireguard-os",
        "session-failover",
        "session-failover-noreports",
        "tunnel-migration",
        "stream-migration",
    ],
    "ablation": list(SHIPPED["ablation"]),
    "qtun": dict(SHIPPED["qtun"]),
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
    "wg_os_keepalive_s": 1,
    # qtun's liveness probe (limits.probe_interval; an access is dead after 3 unanswered probes).
    # qtun's own default is 1 s (3 s to notice a blackhole, close to the quick run's 4 s outage);
    # 0.5 s notices it in 1.5 s and leaves room for queueing delay on a loaded WiFi link.
    "probe_interval_s": 0.5,
    # A scenario (a shipped name or a TOML file; `--scenario` sets it) replaces the events.
    "scenario": "",
}
QUICK: Params = {
    "runs": 1,
    "ablation": [],
    "events": ["link-down"],
    "traffic": ["tcp"],
    "down_at_s": 4.0,
    "up_at_s": 8.0,
    "duration_s": 12.0,
    "fidelity_loss_burst": 500,
}


@dataclass
class FailoverState:
    """What the points share: the lab, a scratch directory, the qtun variants of the run, the
    last traffic port used."""

    lab: Lab
    workdir: Path
    qtun: dict[str, QtunVariant]
    port: int = FIRST_PORT


# -- points -----------------------------------------------------------------------------------
def qtun_variants(params: Params) -> dict[str, QtunVariant]:
    return variants.parse_qtun_variants(params["qtun"], CONFIG_WHERE)


def _check(params: Params) -> dict[str, QtunVariant]:
    qtun = qtun_variants(params)
    clash = sorted(set(qtun) & set(BASELINES))
    if clash:
        raise ExperimentError(f"{CONFIG_WHERE}: qtun.{clash[0]} has a baseline's name.")
    known = [*BASELINES, *qtun]
    for key, allowed in (
        ("variants", known),
        ("ablation", list(qtun)),
        ("events", EVENTS),
        ("traffic", TRAFFIC),
    ):
        bad = [v for v in params[key] if v not in allowed]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(map(str, bad))}; choose from {', '.join(allowed)}."
            )
    # a scenario replaces the events and their times (its own end is checked against duration_s)
    times_used = not params["scenario"]
    if times_used and not 1 < params["down_at_s"] < params["up_at_s"] < params["duration_s"]:
        # the goodput before the outage is measured from 1 s on (slow start left out): an
        # outage in the first second left it empty, and every row was taken for a flow that
        # carried nothing (found by a review)
        raise ExperimentError(
            "need 1 < down_at_s < up_at_s < duration_s (the goodput before the outage is "
            "measured from 1 s on)."
        )
    return qtun


def run_variants(params: Params) -> list[str]:
    """`variants`, then the `ablation` variants not among them."""
    return list(dict.fromkeys([*params["variants"], *params["ablation"]]))


def points(params: Params) -> list[Point]:
    _check(params)
    events = [SCENARIO_EVENT] if params["scenario"] else params["events"]
    return [
        Point({"variant": v, "event": e, "traffic": t, "run": r})
        for v in run_variants(params)
        for e in events
        for t in params["traffic"]
        for r in range(1, int(params["runs"]) + 1)
    ]


# -- the testbed for the whole run ----------------------------------------------------------
@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[FailoverState]]:
    qtun = _check(params)
    profiles = {"wifi": profile(params["wifi_profile"]), "5g": profile(params["fiveg_profile"])}
    cc = params["congestion_control"] or None
    with (
        tempfile.TemporaryDirectory(prefix="qex-failover-") as tmp,
        Lab(
            "reference", backend=params["backend"], congestion_control=cc, profiles=profiles
        ) as lab,
    ):
        ctx = Context(params, FailoverState(lab, Path(tmp), qtun), lab=lab)
        ctx.backend = str(lab.backend)
        used = run_variants(params)
        ctx.extra_meta["lab"] = lab.describe()
        ctx.extra_meta["profiles"] = {k: v.as_dict() for k, v in profiles.items()}
        ctx.extra_meta["sample_interval_s"] = params["sample_interval_s"]
        ctx.extra_meta["timeseries_interval_s"] = params["timeseries_interval_s"]
        ctx.extra_meta["baselines"] = {v: BASELINES[v] for v in used if v in BASELINES}
        ctx.extra_meta["qtun_variants"] = {
            v: qtun_settings(qtun[v], params) for v in used if v in qtun
        }
        ctx.extra_meta["ablation"] = list(params["ablation"])
        if params["verify_fidelity"]:
            burst = int(params["fidelity_loss_burst"])
            ctx.fidelity.extend(verify_accesses(lab, loss_burst=burst))
        yield ctx


def qtun_settings(variant: QtunVariant, params: Params) -> dict[str, Any]:
    """What a qtun variant ran with (meta.json): its TunnelSpec, overrides and join order."""
    spec = _spec(variant, params)
    return {
        "mode": spec.mode,
        "scheduler": spec.scheduler,
        "access_reports": spec.access_reports,
        "stream": spec.stream,
        "reorder": spec.reorder,
        "client": list(spec.client_overrides),
        "concentrator": list(spec.concentrator_overrides),
        "join_order": list(variant.join_order),
        "turns_off": variant.turns_off,
        "note": variant.note,
    }


def _spec(variant: QtunVariant, params: Params) -> TunnelSpec:
    return variant.spec(client=[f"limits.probe_interval={float(params['probe_interval_s'])}"])


def qtun_missing(variant: str, params: Params | None = None) -> str | None:
    """Why a qtun variant cannot run (a scheduler qtun lacks, an unknown setting), or None."""
    params = params or DEFAULTS
    chosen = qtun_variants(params)[variant]
    return chosen.not_ready(_spec(chosen, params))


# -- variants -------------------------------------------------------------------------------
class _Skip(Exception):
    """The variant cannot run here (yet); the message is the reason."""


def start_variant(state: FailoverState, params: Params, name: str) -> Carrier:
    """The variant running on the lab, or _Skip with why it cannot."""
    if name in BASELINES:
        if name.startswith("wireguard"):
            missing = wireguard_missing()
            if missing:
                raise _Skip(missing)
        keepalive = params["wg_os_keepalive_s" if name == "wireguard-os" else "wg_keepalive_s"]
        workdir = state.workdir / name
        return variants.start_baseline(
            state.lab, name, workdir, CLIENT, int(keepalive), to_servers=True
        )
    variant = state.qtun[name]
    spec = _spec(variant, params)
    reason = variant.not_ready(spec)
    if reason:
        raise _Skip(reason)
    workdir = state.workdir / f"qtun-{name}-{state.port}"
    return variants.qtun(state.lab, spec, workdir, clients=[CLIENT], join_order=variant.join_order)


# -- one point ------------------------------------------------------------------------------
def _event(lab: Lab, carrier: Carrier, event: str, failed: bool) -> None:
    if event == "link-down":
        # The carrier goes, then the client's OS reacts to it (a no-op for most variants).
        if failed:
            lab.access_down("wifi", CLIENT)
            carrier.on_access_down("wifi")
        else:
            lab.access_up("wifi", CLIENT)
            carrier.on_access_up("wifi")
    else:
        lab.shaper("wifi", CLIENT).blackhole(failed)


def run_point(ctx: Context[FailoverState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    lab = state.lab
    variant, event, traffic = point["variant"], point["event"], point["traffic"]
    if variant.startswith("mptcp") and traffic == "udp":
        return PointResult(skipped="MPTCP carries TCP only: a UDP flow would be the plain one")
    try:
        carrier = start_variant(state, p, variant)
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
        src=route.client_source,
    )

    def outage(start_at: float) -> None:
        try:
            sleep_until(start_at + float(p["down_at_s"]))
            _event(lab, carrier, event, failed=True)
            sleep_until(start_at + float(p["up_at_s"]))
        finally:
            _event(lab, carrier, event, failed=False)

    def os_reaction(access: str, up: bool) -> None:
        (carrier.on_access_up if up else carrier.on_access_down)(access)

    cpu = CpuMeter(carrier.programs)
    window = outage_window(p, ctx.scenario if event == SCENARIO_EVENT else None)
    started: list[float] = []
    pmtu: Row = dict.fromkeys(PMTU_COLUMNS)
    try:
        during: Callable[[float], None] = outage
        if event == SCENARIO_EVENT:
            during = scenario_during(lab, ctx, point, CLIENT, on_carrier=os_reaction)

        def timed(start_at: float) -> None:
            started.append(start_at)
            during(start_at)

        recv, sent = run_flow(lab, flow, state.workdir, during=timed, cpu=cpu)
        deployment = carrier.deployment
        if deployment is not None and started:
            # the programs' clock is CLOCK_MONOTONIC, like start_at (tunnel/protocol/pmtu.py)
            with contextlib.suppress(QtunError):
                status = deployment.fresh_status(deployment.concentrator)
                pmtu = pmtu_columns(status, started[0] + window[0])
    finally:
        with contextlib.suppress(Exception):
            carrier.stop()
    qtun = state.qtun.get(variant)
    extra: Row = {"ablation_off": qtun.turns_off if qtun else "", **pmtu, **cpu_columns(cpu)}
    return PointResult(rows=measure(point, p, recv, sent, extra, window))


def pmtu_columns(status: dict[str, Any], outage_at: float) -> Row:
    """PMTU_COLUMNS from the concentrator's status (what it sends is the download's): its
    first black hole suspicion since `outage_at` (time.monotonic()) that fell to the base size,
    else its first; in ms from `outage_at`, empty without one (or without discovery)."""
    episodes = [
        episode
        for client in status.get("clients", [])
        for connection in client.get("connections", [])
        for episode in (connection.get("pmtu") or {}).get("black_hole_episodes", [])
        if episode["suspected_at"] >= outage_at
    ]
    if not episodes:
        return dict.fromkeys(PMTU_COLUMNS)
    fell = [episode for episode in episodes if episode["fell_at"] is not None]
    first = min(fell or episodes, key=lambda episode: float(episode["suspected_at"]))

    def ms(at: float | None) -> float | None:
        return None if at is None else round((at - outage_at) * 1000, 1)

    return {
        "pmtu_suspected_ms": ms(first["suspected_at"]),
        "pmtu_fell_ms": ms(first["fell_at"]),
        "pmtu_settled_ms": ms(first["settled_at"]),
    }


def outage_window(p: Params, scenario: Scenario | None) -> tuple[float, float]:
    """(down, up) in s from the traffic's start: the event's, or a scenario's first change and
    end (when the links it touched come back)."""
    if scenario is not None:
        return scenario.first_change_s, scenario.duration_s
    return float(p["down_at_s"]), float(p["up_at_s"])


def measure(
    point: Point,
    p: Params,
    recv: Samples,
    sent: dict[str, Any],
    extra: Row | None = None,
    outage: tuple[float, float] | None = None,
) -> dict[str, list[Row]]:
    """The failover.csv row (with `extra` columns: ablation, CPU) and the time series of one
    point, from the receiver's samples; `outage`: (down, up) (default: down_at_s, up_at_s)."""
    interval = recv.interval_s
    down, up = outage or outage_window(p, None)
    duration = float(p["duration_s"])
    bins = pad_bins(recv.bins, interval, duration)
    window = delivery_gap(bins, interval, down, up)
    gap = None if window is None else round((window[1] - window[0]) / interval) * interval * 1000
    # After the gap, still inside the outage: what the variant carries once it has failed over
    # (0 when delivery came back only with the repair, or never).
    resumed = window[1] if window is not None else up
    after_gap = goodput_mbps(bins, interval, max(down, resumed), up) if resumed < up else 0.0
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
        "goodput_after_gap_mbps": after_gap,
        "inner_retransmits": None if udp else sent.get("retransmits"),
        "ablation_off": "",
        **dict.fromkeys(PMTU_COLUMNS),
        "detail": flow_error(recv, sent),
        **dict.fromkeys(CPU_COLUMNS),
        **dict.fromkeys(SHAPER_COLUMNS),
    }
    row.update(extra or {})
    stalled = final_silence(bins, interval)
    if window is not None and stalled is not None and stalled >= window[1]:
        # recovered from the outage, then stopped for good (at the repair, say): still a
        # recovery from the outage, but said (a review found it counted with no word)
        note = f"delivery stopped at {stalled:.2f} s for the rest of the run"
        row["detail"] = "; ".join(x for x in (row["detail"], note) if x)
    began = first_delivery(bins, interval)
    if began is not None and began >= LATE_START_S:
        # the flow lost its first seconds (a slow connect, a sender that started late): its
        # goodput before the outage reads low for a reason not the variant's
        note = f"delivery began only at {began:.2f} s"
        row["detail"] = "; ".join(x for x in (row["detail"], note) if x)
    if goodput_mbps(bins, interval, max(1.0, down - 10), down) == 0:
        # Not a failover result: the flow had stopped before anything failed.
        row["detail"] = "; ".join(x for x in (row["detail"], NO_DELIVERY_BEFORE) if x)
    step = float(p["timeseries_interval_s"])
    series = flow_series(key, bins, interval, step, sent.get("tcp_info") or [])
    return {"failover": [row], "failover_timeseries": series}


STALL_S = 1.0
"""A silence this long at the end of a run is a flow that stopped, not a pause (final_silence)."""


LATE_START_S = 1.0
"""A flow whose first byte came this late after the traffic's start began late (first_delivery):
a handshake and slow start take a few round trips, well under it on every profile."""


def first_delivery(bins: Sequence[int], interval_s: float) -> float | None:
    """When the first byte arrived (s from the origin, the bin's start); None if none did."""
    first = next((i for i, b in enumerate(bins) if b), None)
    return None if first is None else first * interval_s


def final_silence(bins: Sequence[int], interval_s: float) -> float | None:
    """When the last delivery of a run was followed by at least STALL_S of silence to the
    end of the record: the time (s from the origin) the silence began; else None."""
    last = max((i for i, b in enumerate(bins) if b), default=None)
    start = 0 if last is None else last + 1
    if (len(bins) - start) * interval_s < STALL_S:
        return None
    return start * interval_s


# -- the table --------------------------------------------------------------------------------
def summary_table(run_dir: Path) -> str:
    """Per variant, event and traffic (medians over runs): the gap, the goodput during the
    outage after the gap and its ratio to plain-5g's; what did not recover, saturated a core,
    was skipped or failed."""
    import csv
    import statistics

    def median(rows: list[dict[str, str]], column: str) -> float | None:
        values = [float(r[column]) for r in rows if r.get(column)]
        return statistics.median(values) if values else None

    head = f"{'variant':<28} {'event':<10} {'traffic':<7} {'runs':>4} {'gap_ms':>8}"
    lines = [f"{head} {'after_gap':>9} {'vs_5g':>6}  note"]
    path = run_dir / "failover.csv"
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    if path.exists():
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                groups.setdefault((row["variant"], row["event"], row["traffic"]), []).append(row)
    for (variant, event, traffic), rows in groups.items():
        gap, after = median(rows, "gap_ms"), median(rows, "goodput_after_gap_mbps")
        reference = median(groups.get(("plain-5g", event, traffic), []), "goodput_during_mbps")
        ratio = after / reference if after is not None and reference else None
        # a run whose flow carried nothing before the outage measured no failover
        no_result = sum(1 for r in rows if NO_DELIVERY_BEFORE in (r.get("detail") or ""))
        broken = sum(1 for r in rows if r["completed"] != "True") - no_result
        saturated = sum(1 for r in rows if r.get("cpu_saturated") == "True")
        notes = [f"{broken} run(s) never recovered"] if broken else []
        if no_result:
            notes.append(f"{no_result} run(s) no failover result")
        if saturated:
            what = sorted({saturated_by(r) for r in rows if r.get("cpu_saturated") == "True"})
            notes.append(f"CPU SATURATED in {saturated} run(s) ({', '.join(what)})")
        settled = median(rows, "pmtu_settled_ms")
        if settled is not None:
            notes.append(f"PMTU search settled {settled:.0f} ms into the outage (median)")
        notes += sorted({r["detail"] for r in rows if r.get("detail")})
        cells = (
            f"{'-' if gap is None else f'{gap:.0f}':>8} "
            f"{'-' if after is None else f'{after:.1f}':>9} "
            f"{'-' if ratio is None else f'{ratio:.2f}':>6}"
        )
        lines.append(
            f"{variant:<28} {event:<10} {traffic:<7} {len(rows):>4} {cells}  {'; '.join(notes)}"
        )
    meta = json.loads((run_dir / "meta.json").read_text())
    seen: set[tuple[str, str, str]] = set()
    for entry in meta.get("skipped", []):
        variant = entry["point"].get("variant", "?")
        traffic = entry["point"].get("traffic", "-")
        if (variant, traffic, entry["reason"]) not in seen:
            seen.add((variant, traffic, entry["reason"]))
            lines.append(f"{variant:<28} {'-':<10} {traffic:<7} {0:>4}  skipped: {entry['reason']}")
    for entry in meta.get("failed", []):
        pt = entry["point"]
        lines.append(
            f"{pt.get('variant', '?'):<28} {pt.get('event', '-'):<10} {pt.get('traffic', '-'):<7} "
            f"{'':>4}  FAILED: {entry['error'][:120]}"
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
    bounds={
        **dict.fromkeys(("down_at_s", "up_at_s", "duration_s", "probe_interval_s"), POSITIVE),
        **dict.fromkeys(("sample_interval_s", "timeseries_interval_s", "udp_rate_mbit"), POSITIVE),
        "udp_size_bytes": Bounds(UDP_HEADER.size, MAX_UDP_BYTES),
        "fidelity_loss_burst": POSITIVE,
        # 0: WireGuard sends no keepalive
        **dict.fromkeys(("wg_keepalive_s", "wg_os_keepalive_s"), NON_NEGATIVE),
    },
)
