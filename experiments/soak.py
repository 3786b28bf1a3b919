"""Soak and fault: `qtlab run soak` -> results/soak/<time>/ (issue 10: "prove it holds under
load").

N qtun clients (`nclient` topology, default 20) on one concentrator, in four modes taken in
turn — tunnel, session, tunnel + stream mode, session + stream mode — each running checked
transfers to srv1 for `duration_s` (experiments/soak_traffic.py: bulk downloads paced at
`bulk_rate_mbit` and uploads, and a request/response on a new connection every
`rr_interval_s`; every transfer checked by length and SHA-256 end to end: through the stream
mode clients' TCP those are QUIC streams). One more host of the topology runs the hostile
client (testbed/hostile.py, every attack in turn, round after round), authenticated with a
certificate of its own, while the faults happen. The run is cut into phases (fractions of
`duration_s`):

    baseline   [0, 0.2)      traffic only: the reference for latency
    attacks    [0.2, 0.4)    + the hostile client
    faults     [0.4, 0.85)   + `flaps` link flaps (one client's WiFi down for `flap_down_s`),
                               `blackholes` (the shared WiFi uplink drops everything for
                               `blackhole_s`), `kills` (concentrator SIGKILL, then started again)
    recovery   [0.85, 1]     traffic only again; at the end every client must be back

Measured and written (every table one row per measurement):
- soak_samples.csv: RSS, open file descriptors and CPU seconds of every qtun process and of the
  hostile client every `sample_interval_s` (lifetime = the concentrator's start number);
- soak_pings.csv: every ICMP echo of the observers (the first client of each mode, never
  flapped) to srv1 through the tunnel, every `ping_interval_s`: RTT or lost, and its phase;
- soak_transfers.csv: every checked transfer (outcome, bytes, latency, phase);
- soak_attacks.csv: every attack run and what the concentrator answered;
- soak_events.csv: the faults as they happened (and how long the restart took);
- soak_logs.csv: per qtun log, its lines and the lines that show an exception
  (EXCEPTION_PATTERN) — there must be none;
- soak.csv: the run's figures and its verdict (one row).

The verdict is functional: no exception in any qtun log and no internal error counted, no
transfer corrupt, no stream-mode transfer stalled (each either delivered every byte or failed
clearly: reset, short, refused), the concentrator back after every kill and every client back
at the end, no SYN-ACK from the concentrator's own addresses, the malformed certificate closed.
Memory and descriptors are reported (warm-up against the end of each process's life) and only
bounded generously (`RSS_BOUND`); ping latency is reported per phase, never judged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.health import RSS_BOUND_TEXT, rss_bound_mb, scan_log
from experiments.procstat import host_busy, host_busy_pct, proc_sample
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    Row,
    load_config,
)
from testbed.hostile import ATTACKS
from testbed.hosts import HostProcess, wait_listening
from testbed.lab import Lab
from testbed.paths import EXPERIMENT_CONFIGS
from testbed.profiles import profile
from testbed.qtun import (
    CONCENTRATOR_TUN_V4,
    CONCENTRATOR_TUN_V6,
    MixedDeployment,
    TunnelSpec,
)
from testbed.topologies import CONCENTRATOR_V4, CONCENTRATOR_V6, Plan

TRAFFIC_PORT = 6100
BAIT_PORT = 5999  # a TCP listener on the concentrator: a SYN-ACK from it would show
MODES = ("tunnel", "session", "tunnel+stream", "session+stream")
HOSTILE_NAME = "hostile"
PHASES = (("baseline", 0.0), ("attacks", 0.2), ("faults", 0.4), ("recovery", 0.85))
RECOVERY_TIMEOUT_S = 90.0
TRAFFIC_GRACE_S = 40.0  # a transfer in flight at the end may take up to 2 idle timeouts + margin

SUMMARY_COLUMNS = [
    "run",
    "clients",
    "modes",
    "duration_s",
    "verdict",
    "failures",
    "transfers",
    "transfers_ok",
    "transfers_corrupt",
    "bytes_verified",
    "stream_transfers",
    "stream_ok",
    "stream_clear_failures",
    "stream_stalled",
    "stream_corrupt",
    "exceptions_in_logs",
    "internal_errors",
    "kills",
    "restart_recovery_s",
    "all_back",
    "attack_runs",
    "attack_errors",
    "syn_acks",
    "conc_rss_warm_mb",
    "conc_rss_end_mb",
    "conc_rss_max_mb",
    "conc_fds_warm",
    "conc_fds_end",
    "clients_rss_growth_max_mb",
    "clients_fds_growth_max",
    "ping_baseline_median_ms",
    "ping_baseline_p99_ms",
    "ping_attacks_median_ms",
    "ping_attacks_p99_ms",
    "ping_faults_median_ms",
    "ping_faults_p99_ms",
    "ping_recovery_median_ms",
    "ping_recovery_p99_ms",
    "ping_baseline_loss_pct",
    "ping_attacks_loss_pct",
    "ping_faults_loss_pct",
    "ping_recovery_loss_pct",
    "host_cpu_pct",
]
TABLES: dict[str, list[str]] = {
    "soak": SUMMARY_COLUMNS,
    "soak_samples": ["run", "t_s", "process", "role", "lifetime", "pid", "rss_mb", "fds", "cpu_s"],
    "soak_pings": ["run", "client", "mode", "t_s", "seq", "rtt_ms", "phase"],
    "soak_transfers": [
        "run",
        "client",
        "mode",
        "kind",
        "t_start_s",
        "t_end_s",
        "size",
        "bytes",
        "outcome",
        "latency_ms",
        "error",
        "phase",
    ],
    "soak_attacks": ["run", "t_start_s", "t_end_s", "round", "attack", "ok", "result"],
    "soak_events": ["run", "t_s", "event", "detail"],
    "soak_logs": ["run", "process", "log", "lines", "exceptions", "first_exception"],
}

DEFAULTS: Params = {
    "clients": 20,
    "modes": list(MODES),
    "duration_s": 600.0,
    "runs": 1,
    "seed": 1,
    "bulk_bytes": 1048576,
    "bulk_rate_mbit": 2.0,
    "rr_interval_s": 1.0,
    "ping_interval_s": 0.2,
    "sample_interval_s": 5.0,
    "flaps": 8,
    "flap_down_s": 4.0,
    "blackholes": 2,
    "blackhole_s": 8.0,
    "kills": 1,
    "attacks": list(ATTACKS),  # every attack of testbed/hostile.py, in its order
    "attack_scale": 1.0,
    "probe_interval_s": 1.0,
    "uplink_mbit": 200.0,
    "start_timeout_s": 240.0,
    "backend": "auto",
}
QUICK: Params = load_config(EXPERIMENT_CONFIGS / "quick" / "soak.toml", "soak")


def concentrator_own(plan: Plan) -> list[str]:
    """What the concentrator host is reachable at: its service address, its TUN, the IPv4
    addresses of its links (what the hostile client's SYNs to the concentrator try)."""
    links = [
        line.split()[2].split("/")[0]
        for line in plan.ip_batch[plan.concentrator]
        if line.startswith("addr add ")
    ]
    own = [CONCENTRATOR_V4, CONCENTRATOR_V6, CONCENTRATOR_TUN_V4, CONCENTRATOR_TUN_V6]
    return own + [a for a in links if a not in own]


@dataclass
class SoakState:
    """What the runs share: the lab and a scratch directory."""

    lab: Lab
    workdir: Path


# -- parameters, points, schedule ---------------------------------------------------------------
def _check(params: Params) -> None:
    n = params["clients"]
    if not 1 <= n <= 100:
        raise ExperimentError("clients must be between 1 and 100.")
    bad = [m for m in params["modes"] if m not in MODES]
    if bad or not params["modes"]:
        raise ExperimentError(f"modes must be some of {', '.join(MODES)} (got {bad}).")
    if not 30 <= params["duration_s"] <= 7200:
        raise ExperimentError("duration_s must be between 30 and 7200.")
    unknown = [a for a in params["attacks"] if a not in ATTACKS]
    if unknown:
        raise ExperimentError(f"unknown attacks {', '.join(unknown)}; known: {', '.join(ATTACKS)}.")
    for key in ("flaps", "blackholes", "kills"):
        if params[key] < 0:
            raise ExperimentError(f"{key} must be >= 0.")
    for key in ("sample_interval_s", "ping_interval_s", "rr_interval_s", "bulk_rate_mbit"):
        if params[key] <= 0:
            raise ExperimentError(f"{key} must be > 0.")


def points(params: Params) -> list[Point]:
    _check(params)
    return [Point({"run": r}) for r in range(1, int(params["runs"]) + 1)]


def client_modes(clients: Sequence[str], modes: Sequence[str]) -> dict[str, str]:
    """Modes taken in turn: c1 the first, c2 the second, ..."""
    return {c: modes[k % len(modes)] for k, c in enumerate(clients)}


def phase_of(t_s: float, duration_s: float) -> str:
    name = PHASES[0][0]
    for phase, start in PHASES:
        if t_s >= start * duration_s:
            name = phase
    return name if t_s <= duration_s else "after"


def fault_schedule(params: Params) -> list[tuple[float, str]]:
    """(time from the start, fault) spread evenly over the faults phase, kinds interleaved."""
    duration = float(params["duration_s"])
    start, end = 0.4 * duration, 0.85 * duration
    placed: list[tuple[float, int, str]] = []
    for order, kind in enumerate(("flap", "blackhole", "kill")):
        count = int(params[f"{kind}s"])
        placed += [((j + 0.5) / count, order, kind) for j in range(count)]
    placed.sort()
    step = (end - start) / max(1, len(placed))
    return [(start + (rank + 0.25) * step, kind) for rank, (_, _, kind) in enumerate(placed)]


# -- measurements ------------------------------------------------------------------------------
PING_LINE = re.compile(
    r"^\[(?P<t>[\d.]+)\] (?:\d+ bytes from .*icmp_seq=(?P<seq>\d+) .*time=(?P<rtt>[\d.]+) ms"
    r"|no answer yet for icmp_seq=(?P<lost>\d+))"
)


def parse_ping(text: str) -> list[tuple[float, int, float | None]]:
    """(wall time, seq, RTT ms or None when lost) of `ping -D -O` output."""
    out: list[tuple[float, int, float | None]] = []
    for line in text.splitlines():
        m = PING_LINE.match(line.strip())
        if m is None:
            continue
        if m["lost"] is not None:
            out.append((float(m["t"]), int(m["lost"]), None))
        else:
            out.append((float(m["t"]), int(m["seq"]), float(m["rtt"])))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def memory_summary(samples: list[dict[str, Any]], warm_at_s: float) -> dict[str, Any]:
    """Warm-up vs end of each process lifetime: the concentrator's last lifetime (its first
    sample at or after warm-up, or 20 s after its restart), the clients' largest growth."""
    by_life: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in samples:
        by_life.setdefault((row["process"], row["lifetime"]), []).append(row)
    out: dict[str, Any] = {"clients_rss_growth_max_mb": None, "clients_fds_growth_max": None}
    client_rss: list[float] = []
    client_fds: list[int] = []
    conc_lives = sorted(life for (proc, life) in by_life if proc == "concentrator")
    for (process, life), rows in by_life.items():
        rows.sort(key=lambda r: r["t_s"])
        start = rows[0]["t_s"] if life > 1 else warm_at_s
        warm_from = max(warm_at_s, start + (20.0 if life > 1 else 0.0))
        warm = next((r for r in rows if r["t_s"] >= warm_from), rows[-1])
        end = rows[-1]
        if process == "concentrator":
            if conc_lives and life == conc_lives[-1]:
                out.update(
                    conc_rss_warm_mb=warm["rss_mb"],
                    conc_rss_end_mb=end["rss_mb"],
                    conc_rss_max_mb=max(r["rss_mb"] for r in rows),
                    conc_fds_warm=warm["fds"],
                    conc_fds_end=end["fds"],
                )
        elif process != HOSTILE_NAME:
            client_rss.append(end["rss_mb"] - warm["rss_mb"])
            client_fds.append(end["fds"] - warm["fds"])
    if client_rss:
        out["clients_rss_growth_max_mb"] = max(client_rss)
        out["clients_fds_growth_max"] = max(client_fds)
    return out


def ping_summary(pings: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase, _ in PHASES:
        rows = [p for p in pings if p["phase"] == phase]
        rtts = [p["rtt_ms"] for p in rows if p["rtt_ms"] is not None]
        out[f"ping_{phase}_median_ms"] = statistics.median(rtts) if rtts else None
        out[f"ping_{phase}_p99_ms"] = percentile(rtts, 99)
        lost = sum(1 for p in rows if p["rtt_ms"] is None)
        out[f"ping_{phase}_loss_pct"] = 100 * lost / len(rows) if rows else None
    return out


def verdict(summary: dict[str, Any], attacks: list[dict[str, Any]]) -> list[str]:
    """The functional checks that failed (empty: the run passed)."""
    failures: list[str] = []
    if summary["exceptions_in_logs"]:
        failures.append(f"{summary['exceptions_in_logs']} exception line(s) in the qtun logs")
    if summary["internal_errors"]:
        failures.append(f"{summary['internal_errors']} internal error(s) counted")
    if summary["transfers_corrupt"]:
        failures.append(f"{summary['transfers_corrupt']} transfer(s) corrupt")
    if summary["stream_stalled"]:
        failures.append(f"{summary['stream_stalled']} stream-mode transfer(s) stalled")
    if summary["kills"] and summary["restart_recovery_s"] is None:
        failures.append("the concentrator did not get every client back after a kill")
    if not summary["all_back"]:
        failures.append("not every client was back at the end")
    if summary["syn_acks"]:
        failures.append(f"{summary['syn_acks']} SYN-ACK(s) from the concentrator's own addresses")
    for row in attacks:
        result = row["result"]
        refused = (result.get("closed") or {}).get("by_peer") or not result.get("connected")
        if row["attack"] == "malformed-cert" and not refused:
            failures.append("a malformed certificate was not refused at once")
    warm, end = summary.get("conc_rss_warm_mb"), summary.get("conc_rss_end_mb")
    if warm is not None and end is not None:
        bound = rss_bound_mb(warm)
        if end > bound:
            failures.append(f"concentrator RSS {end:.0f} MiB above {bound:.0f} (2 x warm-up + 100)")
    return failures


# -- the testbed -------------------------------------------------------------------------------
@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[SoakState]]:
    _check(params)
    n = int(params["clients"])
    uplink = profile("wired", rate_mbit=float(params["uplink_mbit"]))
    profiles = {"wifi": uplink, "5g": uplink}
    with (
        tempfile.TemporaryDirectory(prefix="qex-soak-") as tmp,
        Lab("nclient", backend=params["backend"], clients=n + 1, profiles=profiles) as lab,
    ):
        ctx = Context(params, SoakState(lab, Path(tmp)), lab=lab)
        ctx.backend = str(lab.backend)
        ctx.extra_meta.update(
            {
                "topology": f"nclient with {n + 1} clients: c1..c{n} run qtun, c{n + 1} the "
                "hostile client",
                "profiles": {k: v.as_dict() for k, v in profiles.items()},
                "lab": lab.describe(),
                "log_dir": str(lab.log_dir),
                "cpu_count": os.cpu_count(),
                "phases": {name: start for name, start in PHASES},
                "rss_bound": RSS_BOUND_TEXT,
            }
        )
        yield ctx


class _Soak:
    """One soak run: everything started here is stopped in close(), whatever happened."""

    def __init__(self, ctx: Context[SoakState], point: Point) -> None:
        self.ctx = ctx
        self.p = ctx.params
        self.run_no = int(point["run"])
        self.lab = ctx.state.lab
        self.workdir = ctx.state.workdir / f"run-{self.run_no}"
        self.server = self.lab.plan.servers[0]
        self.server_v4 = self.lab.plan.server_address(self.server)
        self.workdir.mkdir(parents=True, exist_ok=True)
        n = int(self.p["clients"])
        self.clients = self.lab.plan.clients[:n]
        self.hostile_node = self.lab.plan.clients[n]
        self.modes = client_modes(self.clients, self.p["modes"])
        self.observers = [next(c for c in self.clients if self.modes[c] == m) for m in
                          dict.fromkeys(self.modes.values())]  # fmt: skip
        self.procs: list[HostProcess] = []
        self.dep: MixedDeployment | None = None
        self.samples: list[Row] = []
        self.events: list[Row] = []
        self.lifetime = 1
        self.recoveries: list[float | None] = []
        self.internal_errors: dict[int, int] = {}  # concentrator pid -> its last count
        self.t0 = 0.0
        self.t0_wall = 0.0

    # -- helpers -----------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, name: str, detail: str = "") -> None:
        self.events.append({"run": self.run_no, "t_s": self.now(), "event": name, "detail": detail})

    def start(self, node: str, name: str, argv: list[str]) -> HostProcess:
        proc = self.lab.procs.start(self.lab.node(node), name, argv)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.lab.procs.stop(proc)
        self.procs = []
        if self.dep is not None:
            with contextlib.suppress(Exception):
                self.dep.stop()

    # -- setup -------------------------------------------------------------------------------
    def deploy(self) -> None:
        n = len(self.clients)
        spec = TunnelSpec(
            mode="tunnel",
            client_overrides=(f"limits.probe_interval={float(self.p['probe_interval_s'])}",),
        )
        self.dep = MixedDeployment(
            self.lab,
            spec,
            self.modes,
            {HOSTILE_NAME: n + 1},
            clients=self.clients,
            workdir=self.workdir / "qtun",
        )
        self.dep.start(timeout=float(self.p["start_timeout_s"]))

    def start_traffic(self, until: float) -> None:
        lifetime = until - time.monotonic() + 30
        bait = (
            "import socket,time\n"
            "s=socket.socket(socket.AF_INET6)\n"
            "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n"
            f"s.bind(('::',{BAIT_PORT}));s.listen();time.sleep({lifetime:.0f})\n"
        )
        self.start(self.lab.plan.concentrator, "soak-bait", [sys.executable, "-c", bait])
        common = ["--port", str(TRAFFIC_PORT), "--until", f"{until:.6f}"]
        server = self.start(
            self.server, "soak-server", _tool("serve", "--bind", self.server_v4, *common)
        )
        wait_listening(self.lab.node(self.server), TRAFFIC_PORT, server)
        for k, client in enumerate(self.clients):
            argv = _tool(
                "client", "--dst", self.server_v4, *common, "--name", client,
                "--seed", f"{self.p['seed']}-{self.run_no}-{k}",
                "--bulk-bytes", str(self.p["bulk_bytes"]),
                "--bulk-rate-mbit", str(self.p["bulk_rate_mbit"]),
                "--rr-interval", str(self.p["rr_interval_s"]),
                "--out", str(self.workdir / f"transfers-{client}.jsonl"),
            )  # fmt: skip
            self.start(client, "soak-traffic", argv)
        seconds = max(1, round(until - time.monotonic()))
        for client in self.observers:
            argv = ["stdbuf", "-oL", "ping", "-D", "-O", "-n", "-i", str(self.p["ping_interval_s"]),
                    "-W", "1", "-w", str(seconds), self.server_v4]  # fmt: skip
            self.start(client, "soak-ping", argv)

    def start_hostile(self, duration_s: float) -> HostProcess:
        assert self.dep is not None
        me = self.dep.identity(HOSTILE_NAME)
        # over its 5G access: the WiFi blackhole of the faults phase must not silence it
        access = self.lab.access("5g", self.hostile_node)
        own = concentrator_own(self.lab.plan)
        argv = [
            sys.executable, "-m", "testbed.hostile", "attacks",
            "--remote", own[0], "--ca", str(me.ca), "--cert", str(me.cert), "--key", str(me.key),
            "--inner-v4", me.inner_v4, "--inner-v6", me.inner_v6,
            "--server", self.server_v4, "--local-address", access.client_v4,
            "--seed", f"{self.p['seed']}-{self.run_no}",
            "--duration", f"{duration_s:.1f}", "--scale", str(self.p["attack_scale"]),
            "--attacks", ",".join(self.p["attacks"]),
            "--out", str(self.workdir / "attacks.jsonl"),
        ]  # fmt: skip
        for address in own:
            argv += ["--own-address", address]
        self.event("attacks_start", ",".join(self.p["attacks"]))
        return self.start(self.hostile_node, "soak-hostile", argv)

    # -- the run -----------------------------------------------------------------------------
    def sample(self, hostile: HostProcess | None) -> None:
        assert self.dep is not None
        targets = [(node, proc) for node, proc in self.dep.procs.items()]
        if hostile is not None and hostile.running():
            targets.append((HOSTILE_NAME, hostile))
        t = self.now()
        for node, proc in targets:
            measured = proc_sample(proc.pid)
            if measured is None:
                continue
            role = "concentrator" if node == self.dep.concentrator else "client"
            self.samples.append(
                {
                    "run": self.run_no,
                    "t_s": t,
                    "process": "concentrator" if role == "concentrator" else node,
                    "role": role if node != HOSTILE_NAME else "hostile",
                    "lifetime": self.lifetime if role == "concentrator" else 1,
                    "pid": proc.pid,
                    "rss_mb": measured[0],
                    "fds": measured[1],
                    "cpu_s": measured[2],
                }
            )
        with contextlib.suppress(Exception):
            status = self.dep.fresh_status(self.dep.concentrator)
            count = int(status.get("counters", {}).get("internal_errors", 0))
            self.internal_errors[int(status["pid"])] = count

    def back(self) -> bool:
        """The concentrator (its current process) lists every client with a connection."""
        assert self.dep is not None
        try:
            status = self.dep.status(self.dep.concentrator)
        except Exception:
            return False
        if status.get("pid") != self.dep.pid(self.dep.concentrator) or status.get("state") != "up":
            return False
        present = {c.get("name"): c for c in status.get("clients", [])}
        return all(present.get(c, {}).get("connections") for c in self.clients)

    def run(self) -> PointResult:
        p = self.p
        duration = float(p["duration_s"])
        self.deploy()
        assert self.dep is not None
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        until = self.t0 + duration
        self.start_traffic(until)
        host0 = host_busy()
        self.event("start", f"{len(self.clients)} clients: {dict(Counter(self.modes.values()))}")
        schedule = [(0.2 * duration, "attacks"), *fault_schedule(p)]
        pending: list[tuple[float, str, str]] = [(t, kind, "") for t, kind in schedule]
        flap_victims = [c for c in self.clients if c not in self.observers] or self.clients
        flap_index = 0
        hostile: HostProcess | None = None
        kill_at: float | None = None
        next_sample = 0.0
        while self.now() < duration:
            now = self.now()
            if now >= next_sample:
                self.sample(hostile)
                next_sample = now + float(p["sample_interval_s"])
            if kill_at is not None and self.back():
                self.recoveries.append(self.now() - kill_at)
                self.event("restart_recovered", f"{self.now() - kill_at:.2f} s")
                kill_at = None
            elif kill_at is not None and self.now() - kill_at > RECOVERY_TIMEOUT_S:
                self.recoveries.append(None)
                self.event("restart_not_recovered", f"after {RECOVERY_TIMEOUT_S:g} s")
                kill_at = None
            while pending and pending[0][0] <= now:
                _, kind, detail = pending.pop(0)
                if kind == "attacks":
                    hostile = self.start_hostile(0.65 * duration)
                elif kind == "flap":
                    victim = flap_victims[flap_index % len(flap_victims)]
                    flap_index += 1
                    self.lab.access_down("wifi", victim)
                    self.event("flap_down", f"{victim} wifi")
                    pending.append((now + float(p["flap_down_s"]), "flap_up", victim))
                elif kind == "flap_up":
                    self.lab.access_up("wifi", detail)
                    self.event("flap_up", f"{detail} wifi")
                elif kind == "blackhole":
                    self.lab.shaper("wifi").blackhole(True)
                    self.event("blackhole_on", "wifi uplink (every client)")
                    pending.append((now + float(p["blackhole_s"]), "blackhole_off", ""))
                elif kind == "blackhole_off":
                    self.lab.shaper("wifi").blackhole(False)
                    self.event("blackhole_off", "wifi uplink")
                elif kind == "kill":
                    self.sample(hostile)  # the last sample of this lifetime
                    pid = self.dep.kill_concentrator()
                    self.lifetime += 1
                    kill_at = self.now()
                    self.event("kill", f"SIGKILL, restarted as pid {pid}")
                pending.sort()
            time.sleep(0.05)
        host1 = host_busy()
        self.event("end")
        # the end: every client must be back (bounded wait), traffic and pings finish
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while not self.back() and time.monotonic() < deadline:
            time.sleep(0.25)
        all_back = self.back()
        self.event("all_back" if all_back else "not_all_back")
        if kill_at is not None:
            self.recoveries.append(self.now() - kill_at if all_back else None)
        self.sample(hostile)
        stop_by = until + TRAFFIC_GRACE_S
        for proc in self.procs:
            if proc.name in ("soak-traffic", "soak-ping", "soak-hostile"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(max(0.1, stop_by - time.monotonic()))
        clients_alive = all(self.dep.procs[c].running() for c in self.clients)
        return self.collect(all_back and clients_alive, host0, host1)

    # -- results -----------------------------------------------------------------------------
    def collect(
        self, all_back: bool, host0: tuple[int, int, int], host1: tuple[int, int, int]
    ) -> PointResult:
        assert self.dep is not None
        duration = float(self.p["duration_s"])
        t0w = self.t0_wall
        transfers: list[dict[str, Any]] = []
        for client in self.clients:
            path = self.workdir / f"transfers-{client}.jsonl"
            for line in path.read_text().splitlines() if path.exists() else []:
                row = json.loads(line)
                t_start = row["t_start"] - t0w
                transfers.append(
                    {
                        "run": self.run_no,
                        "client": client,
                        "mode": self.modes[client],
                        "kind": row["kind"],
                        "t_start_s": t_start,
                        "t_end_s": row["t_end"] - t0w,
                        "size": row["size"],
                        "bytes": row["bytes"],
                        "outcome": row["outcome"],
                        "latency_ms": row["latency_ms"],
                        "error": row["error"][:200],
                        "phase": phase_of(t_start, duration),
                    }
                )
        pings: list[dict[str, Any]] = []
        for client in self.observers:
            log = self.lab.log_dir / f"{client}-soak-ping.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            for t_wall, seq, rtt in parse_ping(text):
                t = t_wall - t0w
                pings.append(
                    {
                        "run": self.run_no,
                        "client": client,
                        "mode": self.modes[client],
                        "t_s": t,
                        "seq": seq,
                        "rtt_ms": rtt,
                        "phase": phase_of(t, duration),
                    }
                )
        attacks: list[dict[str, Any]] = []
        path = self.workdir / "attacks.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            row = json.loads(line)
            attacks.append(
                {
                    "run": self.run_no,
                    "t_start_s": row["t_start"] - t0w,
                    "t_end_s": row["t_end"] - t0w,
                    "round": row["round"],
                    "attack": row["attack"],
                    "ok": row["ok"],
                    "result": row["result"],
                }
            )
        logs: list[dict[str, Any]] = []
        exceptions = 0
        excerpts: dict[str, list[str]] = {}
        for node in [self.dep.concentrator, *self.clients]:
            path = self.dep.log_path(node)
            lines, bad = scan_log(path)
            exceptions += len(bad)
            if bad:
                excerpts[node] = bad[:10]
            name = "concentrator" if node == self.dep.concentrator else node
            logs.append(
                {
                    "run": self.run_no,
                    "process": name,
                    "log": str(path),
                    "lines": lines,
                    "exceptions": len(bad),
                    "first_exception": bad[0][:300] if bad else "",
                }
            )
        # the attacker's own log: its failures are reported, they are not the concentrator's
        path = self.lab.log_dir / f"{self.hostile_node}-soak-hostile.log"
        lines, bad = scan_log(path)
        logs.append(
            {
                "run": self.run_no,
                "process": HOSTILE_NAME,
                "log": str(path),
                "lines": lines,
                "exceptions": len(bad),
                "first_exception": bad[0][:300] if bad else "",
            }
        )
        self.ctx.extra_meta.setdefault("exception_excerpts", {})[str(self.run_no)] = excerpts
        stream = [t for t in transfers if t["mode"].endswith("+stream")]
        clear = ("short", "reset", "connect_failed", "error")
        recoveries = self.recoveries
        summary: dict[str, Any] = {
            "run": self.run_no,
            "clients": len(self.clients),
            "modes": " ".join(f"{m}:{c}" for m, c in Counter(self.modes.values()).items()),
            "duration_s": duration,
            "transfers": len(transfers),
            "transfers_ok": sum(1 for t in transfers if t["outcome"] == "ok"),
            "transfers_corrupt": sum(1 for t in transfers if t["outcome"] == "corrupt"),
            "bytes_verified": sum(t["bytes"] for t in transfers if t["outcome"] == "ok"),
            "stream_transfers": len(stream),
            "stream_ok": sum(1 for t in stream if t["outcome"] == "ok"),
            "stream_clear_failures": sum(1 for t in stream if t["outcome"] in clear),
            "stream_stalled": sum(1 for t in stream if t["outcome"] == "stalled"),
            "stream_corrupt": sum(1 for t in stream if t["outcome"] == "corrupt"),
            "exceptions_in_logs": exceptions,
            "internal_errors": sum(self.internal_errors.values()),
            "kills": int(self.p["kills"]),
            "restart_recovery_s": (
                None if not recoveries or None in recoveries else max(r or 0.0 for r in recoveries)
            ),
            "all_back": all_back,
            "attack_runs": len(attacks),
            "attack_errors": sum(1 for a in attacks if not a["ok"]),
            "syn_acks": sum(
                int(a["result"].get("syn_acks", 0)) for a in attacks if a["attack"] == "syn-to-conc"
            ),
            "host_cpu_pct": host_busy_pct(host0, host1),
            **memory_summary(self.samples, 0.2 * duration),
            **ping_summary(pings),
        }
        failures = verdict(summary, attacks)
        summary["verdict"] = "pass" if not failures else "fail"
        summary["failures"] = "; ".join(failures)
        for row in attacks:
            row["result"] = json.dumps(row["result"], sort_keys=True)[:2000]
        return PointResult(
            rows={
                "soak": [summary],
                "soak_samples": self.samples,
                "soak_pings": pings,
                "soak_transfers": transfers,
                "soak_attacks": attacks,
                "soak_events": self.events,
                "soak_logs": logs,
            }
        )


def _tool(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.soak_traffic", *args]


def run_point(ctx: Context[SoakState], point: Point) -> PointResult:
    soak = _Soak(ctx, point)
    try:
        return soak.run()
    finally:
        soak.close()


def summary_table(run_dir: Path) -> str:
    import pandas as pd

    path = run_dir / "soak.csv"
    if not path.exists():
        return "no soak rows"
    df = pd.read_csv(path).fillna("")
    lines = []
    for _, row in df.iterrows():
        lines.append(f"run {row['run']}: {row['verdict'].upper()} {row['failures']}".rstrip())
        for key in SUMMARY_COLUMNS[5:]:
            lines.append(f"  {key:28s} {row[key]}")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="soak",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=TABLES,
    key_columns=("run",),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="N clients in every mode, checked transfers, link flaps, a blackhole, a killed "
    "concentrator and a hostile client at once: memory, fds, exceptions, checksums, latency",
)
