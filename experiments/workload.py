"""Workloads: `qtlab run workload` -> results/workload/<time>/workload.csv (+ _calls, _flows,
_segments).

What each way of carrying traffic (experiments/variants.py `Modes`: plain, tunnel, session,
stream, WireGuard) does to the traffic people run, not only to one bulk flow. The network of the
latency experiment: the reference topology with c1's 5G access down, everything over c1's WiFi
access shaped with the named `access_profile` (testbed/profiles.py; default "lte": 20 Mbit/s,
25 ms and 5 ms jitter each way, a 500-packet queue). The server side sends: conc for plain and
WireGuard, srv1 through the tunnel for the qtun modes. Workloads (experiments/workload_traffic.py
runs them on the hosts):

  voip           `calls` G.711-like calls (20 ms packets of 160 B + RTP header) to c1 for
                 `call_s`; per call: one-way delay, RFC 3550 jitter, loss, and packets late and
                 the E-model's R and MOS twice: for a fixed `playout_buffer_ms` playout buffer,
                 and (`..._adaptive`) for an adaptive one that sets its delay every
                 `playout_adjust_s` (Ramjee et al. 1994; experiments/voice_quality.py has the
                 formulas and their sources).
  voip-bulk      the same while one bulk TCP flow (experiments/traffic.py, the inner `cc`) runs
                 to c1: the calls start `warmup_s` after it, once its queue has built.
  web            `web_objects` objects, sizes from SURGE's Web file-size model (experiments/
                 web_mix.py, seeded by the run's seed and repetition: every mode fetches the
                 same objects), fetched by `web_parallel` concurrent TCP connections, one
                 connection per object; the flow completion time of each (connect to last byte).
                 Fetching stops starting new objects after `web_s`.
  web-bulk       the same under one bulk TCP flow (started `warmup_s` before).
  bulk-parallel  `parallel_flows` TCP connections at once for `bulk_s` (iperf3 -P N): the
                 total goodput and how fairly the connections share it (Jain's index).
  video          one adaptive-bitrate video session of `video_s` over HTTP/1.1 (a segment
                 server on the sending side, a player on c1): 2 s segments at a ladder of 1,
                 2.5, 5, 8, 16 Mbit/s, the rate of each chosen by the rate-based ABR rule
                 (harmonic mean of the last 5 segments' throughputs), played out in real time
                 from a buffer of at most `video_buffer_s`; per session: the mean bitrate
                 played, switches, stalls and their total time, the startup delay
                 (experiments/video_abr.py has the rule, the accounting and their sources).

The qtun modes run once per `queue_aqm` value (default ["off"], the programs' default; with
["codel", "off"] each qtun mode is measured with CoDel on its datagram queue and with tail drop,
as in the latency experiment); plain and WireGuard have no tunnel queue: "n/a". The figure
names a qtun mode run with CoDel "<mode> codel".

Rows: workload.csv one per point (the medians, and the CPU of every process: the tunnel's
programs, the shaper, the workload's two programs and the load's, a saturated core flagged),
workload_calls.csv one per call, workload_flows.csv one per web object or bulk connection,
workload_segments.csv one per video segment.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import variants
from experiments.flows import (
    START_LEAD_S,
    Flow,
    Programs,
    cpu_columns,
    flow_error,
    run_flow,
    run_programs,
)
from experiments.procstat import CpuMeter, machine_saturated, saturated_note, saturation
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
)
from experiments.schemas import (
    QUEUE_AQMS,
    WORKLOAD,
    WORKLOAD_CALLS,
    WORKLOAD_FLOWS,
    WORKLOAD_SEGMENTS,
    tables,
)
from experiments.traffic import goodput_mbps, jain_index
from experiments.variants import CLIENT, Modes, Route
from experiments.video_abr import BUFFER_GOAL_S, SEGMENT_S, session_metrics
from experiments.voice_quality import (
    PACKET_INTERVAL_MS,
    PLAYOUT_ADJUST_S,
    CallRecord,
    call_metrics,
    percentile,
)
from testbed.lab import Lab
from testbed.profiles import PROFILES, profile

MODES = variants.MODES
WORKLOADS = ("voip", "voip-bulk", "web", "web-bulk", "bulk-parallel", "video")
FIRST_PORT = 5700
LOAD_ROLES = ("load_sender", "load_receiver")

DEFAULTS: Params = {
    "modes": list(MODES),
    "workloads": list(WORKLOADS),
    # the qtun modes' datagram queue (schemas.QUEUE_AQMS); "off" is the programs' default
    "queue_aqm": ["off"],
    "runs": 3,
    "seed": 1,
    "access_profile": "lte",
    "cc": "cubic",
    "call_s": 30.0,
    "calls": 1,
    "playout_buffer_ms": 60.0,
    "playout_adjust_s": PLAYOUT_ADJUST_S,  # the adaptive playout buffer's adjustment points
    "plc": True,  # G.711 with Appendix I packet loss concealment (Bpl 25.1, else 4.3)
    "web_objects": 60,
    "web_parallel": 2,
    "web_max_bytes": 4_000_000,
    "web_s": 60.0,
    "parallel_flows": 4,
    "bulk_s": 15.0,
    "warmup_s": 3.0,
    "video_s": 60.0,  # one adaptive-bitrate video session's length
    "video_buffer_s": BUFFER_GOAL_S,  # the player's buffer goal (video_abr)
    "backend": "auto",
    "verify_fidelity": True,
}
QUICK: Params = {
    "runs": 1,
    "modes": ["plain", "tunnel"],
    "call_s": 8.0,
    "web_objects": 15,
    "web_s": 20.0,
    "bulk_s": 5.0,
    "warmup_s": 2.0,
    "video_s": 20.0,
}


@dataclass
class WorkloadState:
    lab: Lab
    workdir: Path
    modes: Modes
    port: int = FIRST_PORT

    def next_port(self) -> int:
        self.port += 1
        return self.port


def points(params: Params) -> list[Point]:
    for key, known in (
        ("modes", MODES),
        ("workloads", WORKLOADS),
        ("queue_aqm", QUEUE_AQMS),
    ):
        bad = [v for v in params[key] if v not in known]
        if bad:
            raise ExperimentError(
                f"unknown {key} {', '.join(bad)}; choose from {', '.join(known)}."
            )
    if params["access_profile"] not in PROFILES:
        raise ExperimentError(
            f"unknown access_profile {params['access_profile']!r}; "
            f"choose from {', '.join(PROFILES)}."
        )
    if not 1 <= params["calls"] <= 50 or not 1 <= params["web_parallel"] <= 16:
        raise ExperimentError("need calls between 1 and 50 and web_parallel between 1 and 16.")
    if not 1 <= params["parallel_flows"] <= 64:
        raise ExperimentError("parallel_flows must be between 1 and 64.")
    if min(params["call_s"], params["web_s"], params["bulk_s"]) <= 0 or params["warmup_s"] < 0:
        raise ExperimentError("call_s, web_s and bulk_s must be > 0 and warmup_s >= 0.")
    if params["playout_adjust_s"] <= 0:
        raise ExperimentError("playout_adjust_s must be > 0 (seconds between playout changes).")
    if not 0 < params["video_s"] <= 3600 or not SEGMENT_S <= params["video_buffer_s"] <= 600:
        raise ExperimentError(
            f"video_s must be in (0, 3600] s and video_buffer_s in [{SEGMENT_S:g}, 600] s."
        )
    return [
        Point({"mode": mode, "queue_aqm": aqm, "workload": workload, "run": run})
        for mode in params["modes"]
        for aqm in variants.aqm_values(mode, params["queue_aqm"])
        for workload in params["workloads"]
        for run in range(1, int(params["runs"]) + 1)
    ]


def session(params: Params) -> contextlib.AbstractContextManager[Context[WorkloadState]]:
    link = profile(str(params["access_profile"]))
    meta = {
        "topology": "reference (5G access down), as the latency experiment",
        "access_link": link.as_dict(),
        "sender": "conc (plain, WireGuard) or srv1 (qtun modes), to c1",
        "voip": "G.711-like, 20 ms, 172 B UDP payload (RTP + 160 B), E-model per "
        "experiments/voice_quality.py",
        "web_sizes": "SURGE lognormal body + Pareto tail, experiments/web_mix.py",
        "video": "HTTP/1.1 segments of 2 s at 1/2.5/5/8/16 Mbit/s, rate-based ABR (harmonic "
        "mean of 5), experiments/video_abr.py",
    }
    return variants.wifi_only_session(params, link, "workload", WorkloadState, meta)


def _tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.workload_traffic", *args]


def _server(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.soak_traffic", "serve", *args]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


# -- one workload's programs -------------------------------------------------------------------
def run_calls(
    ctx: Context[WorkloadState],
    route: Route,
    start_at: float,
    cpu: CpuMeter | None,
    start_meter: bool,
) -> tuple[list[Row], str]:
    """The calls from `start_at` for call_s: their rows (workload_calls) and any error text."""
    state, p = ctx.state, ctx.params
    port = state.next_port()
    send_out, recv_out = (
        state.workdir / f"voip-send-{port}.json",
        state.workdir / f"voip-{port}.json",
    )
    duration = float(p["call_s"])
    common = ["--port", str(port), "--start-at", f"{start_at:.6f}", "--duration", str(duration)]
    receiver_argv = _tool("voip-recv", "--dst", route.address, *common, "--out", str(recv_out))
    if route.client_source is not None:
        receiver_argv += ["--src", route.client_source]
    programs = Programs(
        route.sender,
        _tool("voip-send", "--bind", route.address, "--calls", str(p["calls"]), *common,
              "--out", str(send_out)),
        CLIENT,
        receiver_argv,
        port,
        ("sender", "receiver"),
    )  # fmt: skip
    receiver = run_programs(
        state.lab, programs, start_at, start_at + duration, cpu=cpu, start_meter=start_meter
    )
    recv, sent = _read_json(recv_out), _read_json(send_out)
    if not recv:
        raise RuntimeError(f"the VoIP receiver wrote nothing; see {receiver.log_path}")
    counts = sent_counts(sent.get("sent"), int(p["calls"]), duration)
    rows: list[Row] = []
    for call in range(len(counts)):
        record = recv.get("calls", {}).get(str(call), {"seq": [], "send_ns": [], "recv_ns": []})
        metrics = call_metrics(
            CallRecord(record["seq"], record["send_ns"], record["recv_ns"], counts[call]),
            float(p["playout_buffer_ms"]),
            bool(p["plc"]),
            playout_adjust_s=float(p["playout_adjust_s"]),
        )
        rows.append({"call": call, **metrics, "send_slip_max_ms": sent.get("slip_max_ms")})
    error = "; ".join(x for x in (recv.get("error"), sent.get("error")) if x)
    return rows, error


def run_fetches(
    ctx: Context[WorkloadState],
    route: Route,
    start_at: float,
    run: int,
    cpu: CpuMeter | None,
    start_meter: bool,
) -> tuple[list[Row], str]:
    """The web objects from `start_at`: their rows (workload_flows) and any error text."""
    state, p = ctx.state, ctx.params
    port = state.next_port()
    out = state.workdir / f"web-{port}.json"
    duration = float(p["web_s"])
    # the server outlives the fetches' deadline by what one stalled fetch may take
    until = start_at + duration
    fetch_argv = _tool(
        "web-fetch", "--dst", route.address, "--port", str(port),
        "--start-at", f"{start_at:.6f}", "--duration", str(duration),
        "--count", str(p["web_objects"]), "--seed", f"{p['seed']}/{run}",
        "--max-bytes", str(p["web_max_bytes"]), "--parallel", str(p["web_parallel"]),
        "--out", str(out),
    )  # fmt: skip
    server_argv = _server("--bind", route.address, "--port", str(port), "--until", f"{until:.6f}")
    programs = Programs(route.sender, server_argv, CLIENT, fetch_argv, port)
    # a fetch under way at the deadline may stall up to soak_traffic.IDLE_S (15 s) per read
    receiver = run_programs(
        state.lab, programs, start_at, until, cpu=cpu, start_meter=start_meter, wait_s=35.0
    )
    result = _read_json(out)
    if not result:
        raise RuntimeError(f"the web fetcher wrote nothing; see {receiver.log_path}")
    rows = [{**flow, "kind": "web"} for flow in result.get("flows", [])]
    skipped = int(result.get("not_started", 0))
    return rows, f"{skipped} object(s) not started before web_s" if skipped else ""


def run_video(
    ctx: Context[WorkloadState],
    route: Route,
    start_at: float,
    cpu: CpuMeter | None,
    start_meter: bool,
) -> tuple[Row, list[Row], str]:
    """One video session from `start_at` for video_s: the point's video columns, the rows of
    its segments (workload_segments) and any error text."""
    state, p = ctx.state, ctx.params
    port = state.next_port()
    out = state.workdir / f"video-{port}.json"
    duration = float(p["video_s"])
    play_argv = _tool(
        "video-play", "--dst", route.address, "--port", str(port),
        "--start-at", f"{start_at:.6f}", "--duration", str(duration),
        "--buffer-s", str(p["video_buffer_s"]), "--out", str(out),
    )  # fmt: skip
    if route.client_source is not None:
        play_argv += ["--src", route.client_source]
    serve_argv = _tool(
        "video-serve", "--bind", route.address, "--port", str(port),
        "--until", f"{start_at + duration:.6f}",
    )  # fmt: skip
    programs = Programs(route.sender, serve_argv, CLIENT, play_argv, port)
    receiver = run_programs(
        state.lab, programs, start_at, start_at + duration, cpu=cpu, start_meter=start_meter
    )
    result = _read_json(out)
    if not result:
        raise RuntimeError(f"the video player wrote nothing; see {receiver.log_path}")
    segments: list[Row] = list(result.get("segments", []))
    return video_summary(segments, duration, result), segments, str(result.get("error") or "")


# -- the point ---------------------------------------------------------------------------------
def video_summary(segments: list[Row], duration_s: float, report: dict[str, Any]) -> Row:
    """The point's video columns: the session's metrics (video_abr.session_metrics) from its
    segments' arrivals, and the player's abandoned segments and failed exchanges."""
    metrics = session_metrics(
        [(float(s["arrival_s"]), float(s["rate_mbps"])) for s in segments], duration_s
    )
    return {
        **metrics.as_row(),
        "video_abandoned": report.get("abandoned"),
        "video_errors": report.get("errors"),
    }


def sent_counts(reported: list[int] | None, calls: int, duration_s: float) -> list[int]:
    """Each call's packets sent: the sender's count, or, where it is missing or 0 ("no
    receiver asked"), the packets the call's length holds (its loss read 0 % beside a MOS of
    1 without it, a review found)."""
    expected = round(duration_s * 1000 / PACKET_INTERVAL_MS)
    return [count or expected for count in (reported or [0] * calls)]


def bulk_flows(streams: list[int], asked: int, total_mbps: float) -> list[Row]:
    """The parallel bulk connections' rows: the window's goodput shared out in proportion
    of each one's bytes, over every connection asked for: one that never opened carried
    nothing (Jain's index was computed over those that opened: 3 equal of 4 read 1.0, not
    0.75, a review found)."""
    carried = [*streams, *[0] * max(0, asked - len(streams))]
    delivered = sum(carried)
    return [
        {
            "flow": i,
            "kind": "bulk",
            "bytes": b,
            "goodput_mbps": total_mbps * b / delivered if delivered else 0.0,
            "outcome": "ok" if b > 0 else "nothing carried",
        }
        for i, b in enumerate(carried)
    ]


# the calls' columns (schemas.VOIP_CALL_COLUMNS) a point's row carries, as medians
CALL_MEDIANS = (
    *("mos", "r_factor", "owd_median_ms", "jitter_ms", "loss_pct", "late_pct"),
    *("mos_adaptive", "r_factor_adaptive", "late_adaptive_pct", "mouth_to_ear_adaptive_ms"),
)


def call_summary(calls: list[Row]) -> Row:
    """The point's VoIP columns: medians over its calls."""
    if not calls:
        return {}

    def median(key: str) -> float | None:
        values = [c[key] for c in calls if c.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "calls": len(calls),
        **{k: median(k) for k in CALL_MEDIANS},
    }


def fetch_summary(flows: list[Row]) -> Row:
    """The point's web columns: objects started, fetched whole, and the FCT median and p95
    over every object started, one not fetched whole counting as never completed: a
    quantile that falls on one has no value (empty). Over the whole ones alone, the mode
    that failed most read best in the tail (a review: 4 of 60 stalled 15 s, p95 620 ms)."""
    done = sorted(float(f["fct_ms"]) for f in flows if f.get("outcome") == "ok")
    times = done + [math.inf] * (len(flows) - len(done))

    def finite(value: float) -> float | None:
        return None if math.isinf(value) else value

    return {
        "flows": len(flows),
        "flows_ok": len(done),
        "fct_median_ms": finite(statistics.median(times)) if times else None,
        "fct_p95_ms": finite(percentile(times, 0.95)) if times else None,
    }


def cpu_row(meter: CpuMeter) -> Row:
    """schemas.CPU_COLUMNS plus the background load's two ends; busiest and saturated over all
    of them."""
    row = cpu_columns(meter)
    usage = meter.usage()
    row["cpu_load_sender_pct"] = usage.get(LOAD_ROLES[0])
    row["cpu_load_receiver_pct"] = usage.get(LOAD_ROLES[1])
    busiest, saturated = saturation(meter.peak())
    if saturated is not None:
        saturated = saturated or machine_saturated(meter.host_pct(), meter.cores)
    row["cpu_busiest"], row["cpu_saturated"] = busiest, saturated
    return row


def _under_load(
    ctx: Context[WorkloadState],
    route: Route,
    meter: CpuMeter,
    duration_s: float,
    work: Callable[[float], None],
) -> tuple[float, str]:
    """Run `work(origin)` `warmup_s` into one bulk TCP flow to c1 lasting `duration_s` after
    that: the load's goodput over the work's window (Mbit/s), and what went wrong with it."""
    state, warmup = ctx.state, float(ctx.params["warmup_s"])
    flow = Flow(
        sender=route.sender,
        bind=route.address,
        receiver=CLIENT,
        dst=route.address,
        traffic="tcp",
        duration_s=warmup + duration_s,
        port=state.next_port(),
        src=route.client_source,
    )
    window: list[float] = []

    def during(start_at: float) -> None:
        begin = start_at + warmup
        # the work's own programs start START_LEAD_S before its origin
        time.sleep(max(0.0, begin - START_LEAD_S - time.monotonic()))
        work(begin)
        window.append(time.monotonic() - start_at)

    recv, sent = run_flow(
        state.lab, flow, state.workdir, during=during, cpu=meter, roles=LOAD_ROLES
    )
    end = min(window[0] if window else flow.duration_s, flow.duration_s)
    error = flow_error(recv, sent)
    goodput = goodput_mbps(recv.bins, recv.interval_s, warmup, max(end, warmup + recv.interval_s))
    return goodput, f"load: {error}" if error else ""


def run_point(ctx: Context[WorkloadState], point: Point) -> PointResult:
    state, p = ctx.state, ctx.params
    mode, workload, run = point["mode"], point["workload"], int(point["run"])
    if mode == "wireguard" and variants.wireguard_missing():
        return PointResult(skipped=str(variants.wireguard_missing()))
    # a fresh tunnel per point: no queue or congestion state left by the previous one
    route = state.modes.ensure(mode, fresh=True, spec=variants.aqm_spec(mode, point["queue_aqm"]))
    state.lab.forget_learned_paths()
    carrier = state.modes.carrier
    assert carrier is not None
    loaded = workload.endswith("-bulk")
    meter = CpuMeter(carrier.programs, skip_s=float(p["warmup_s"]) if loaded else 0.0)
    calls: list[Row] = []
    flows: list[Row] = []
    segments: list[Row] = []
    row: Row = {**point.values}
    errors: list[str] = []

    def voip(start_at: float, start_meter: bool = True) -> None:
        rows, error = run_calls(ctx, route, start_at, meter, start_meter)
        calls.extend(rows)
        errors.append(error)

    def web(start_at: float, start_meter: bool = True) -> None:
        rows, error = run_fetches(ctx, route, start_at, run, meter, start_meter)
        flows.extend(rows)
        errors.append(error)

    if workload == "voip":
        voip(time.monotonic() + START_LEAD_S)
    elif workload == "web":
        web(time.monotonic() + START_LEAD_S)
    elif workload == "video":
        video_row, segments, error = run_video(
            ctx, route, time.monotonic() + START_LEAD_S, meter, True
        )
        row.update(video_row)
        errors.append(error)
    elif workload in ("voip-bulk", "web-bulk"):
        # the load lasts as long as the work may (the calls, or web_s of fetching)
        work_s = float(p["call_s"]) + 1.0 if workload == "voip-bulk" else float(p["web_s"])
        what = voip if workload == "voip-bulk" else web
        row["load_goodput_mbps"], error = _under_load(
            ctx, route, meter, work_s, lambda t: what(t, start_meter=False)
        )
        errors.append(error)
    else:
        bulk_s, n = float(p["bulk_s"]), int(p["parallel_flows"])
        flow = Flow(
            sender=route.sender,
            bind=route.address,
            receiver=CLIENT,
            dst=route.address,
            traffic="tcp",
            duration_s=bulk_s,
            port=state.next_port(),
            src=route.client_source,
            parallel=n,
        )
        recv, sent = run_flow(state.lab, flow, state.workdir, cpu=meter)
        errors.append(flow_error(recv, sent))
        total = goodput_mbps(recv.bins, recv.interval_s, 0.0, bulk_s)
        # Per-connection bytes are counted to the end (the queue's drain after the sender's
        # deadline included); the window's goodput is shared out in their proportion.
        flows = bulk_flows(recv.streams, n, total)
        row["flows"] = len(flows)
        row["flows_ok"] = sum(1 for f in flows if f["outcome"] == "ok")
        row["goodput_mbps"] = total
        row["jain_fairness"] = jain_index([f["goodput_mbps"] for f in flows])
    if calls:
        row.update(call_summary(calls))
    if any(f["kind"] == "web" for f in flows):
        row.update(fetch_summary(flows))
    row["detail"] = "; ".join(e for e in errors if e)
    row.update(cpu_row(meter))
    keys = point.values
    return PointResult(
        rows={
            "workload": [row],
            "workload_calls": [{**keys, **c} for c in calls],
            "workload_flows": [{**keys, **f} for f in flows],
            "workload_segments": [{**keys, **s} for s in segments],
        }
    )


def summary_table(run_dir: Path) -> str:
    """Per mode: the median MOS and one-way delay of the calls, the median FCT of the web
    objects, the parallel bulk goodput; alone and under a bulk load; then the points flagged
    `cpu_saturated`, if any."""
    from experiments.analysis import ResultsError, load_workload

    try:
        df = load_workload(run_dir)  # a qtun mode under CoDel named as its own: "<mode> codel"
    except ResultsError:
        return "no workload rows"
    lines = []
    for column, what in (
        ("mos", "median MOS (G.107 E-model), fixed playout buffer"),
        ("mos_adaptive", "median MOS, adaptive playout buffer (Ramjee et al. 1994)"),
        ("owd_median_ms", "median one-way delay of the calls (ms)"),
        ("fct_median_ms", "median flow completion time of the web objects (ms)"),
        ("goodput_mbps", "parallel bulk goodput (Mbit/s)"),
        ("video_bitrate_mbps", "mean video bitrate played (Mbit/s)"),
        ("video_stall_s", "video stall time (s)"),
    ):
        if column in df.columns and df[column].notna().any():
            table = df.pivot_table(
                index="mode", columns="workload", values=column, aggfunc="median"
            )
            lines.append(f"{what}:\n{table.round(2)}")
    if not lines:
        return "no measured workload rows"
    return "\n".join(lines) + saturated_note(
        df.to_dict("records"), lambda r: f"{r['mode']} {r['workload']} run {r['run']}"
    )


EXPERIMENT = Experiment(
    name="workload",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=tables(WORKLOAD, WORKLOAD_CALLS, WORKLOAD_FLOWS, WORKLOAD_SEGMENTS),
    key_columns=("mode", "queue_aqm", "workload", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="VoIP calls (MOS), web-like short flows (FCT), parallel bulk flows and "
    "adaptive-bitrate video (bitrate, stalls) per mode",
)
