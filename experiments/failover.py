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

Variants and what carries the traffic (see `VARIANTS`):
  plain       no tunnel: c1's TCP/UDP over its default route (WiFi). The reference topology routes
              the clients only to the concentrator's service address (10.100.0.1): the servers
              are reachable through a tunnel or not at all. So the plain and mptcp baselines run
              between c1 and a sender on conc bound to 10.100.0.1 (one unshaped hop shorter
              than srv1: the access links dominate).
  mptcp       kernel MPTCP between c1 and conc (10.100.0.1): both ends use IPPROTO_MPTCP sockets;
              c1 has `ip mptcp endpoint`s for its WiFi and 5G addresses (subflow), limits
              `subflow 2 add_addr_accepted 2` on both ends; the 5G subflow goes out through the
              5G source-routing table the topology installs. Kernel in-kernel path manager, no
              mptcpd: a subflow that died is not re-created when WiFi returns.
  wireguard   wireguard-go on c1 and conc (interface qexwg0, 10.9.0.2 <-> 10.9.0.1), c1 routes
              10.200.0.0/16 into it; c1's endpoint is unbound (listens on all addresses, kernel
              picks the source), so when the WiFi route is gone its packets leave over 5G and the
              concentrator's WireGuard roams to the new source address. Sender on srv1.
  session-failover, session-failover-noreports, tunnel-migration, stream-migration:
              qtun via testbed/qtun.py (TunnelSpec), sender on srv1, c1 receives on its inner
              address. A variant whose programs are not there yet is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.flows import Flow, run_flow, sleep_until
from experiments.runner import Context, Experiment, Params, Point, PointResult, Row
from experiments.traffic import delivery_gap_ms, goodput_mbps, pad_bins, resample

CLIENT = "c1"
SERVER_V4 = "10.200.1.2"
CONCENTRATOR_SERVICE_V4 = "10.100.0.1"
# One name per node: wireguard-go's control socket is /var/run/wireguard/<name>.sock, and the
# Mininet nodes share that file system (same name on both ends = `wg` talks to the wrong one).
WG_IFACE = {"conc": "qexwgc", "client": "qexwg1"}
WG_CONC, WG_CLIENT, WG_PORT = "10.9.0.1", "10.9.0.2", 51820

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

FAILOVER_COLUMNS = [
    "variant",
    "run",
    "event",
    "traffic",
    "down_at_s",
    "up_at_s",
    "gap_ms",
    "goodput_before_mbps",
    "goodput_during_mbps",
    "goodput_after_mbps",
    "packets_lost",
    "reordered",
    "completed",
    "packets_sent",
    "bytes_received",
    "detail",
]
TIMESERIES_COLUMNS = ["variant", "run", "event", "traffic", "t_s", "goodput_mbps"]

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


# -- points -----------------------------------------------------------------------------------
def _check(params: Params) -> None:
    from experiments.runner import ExperimentError

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
def session(params: Params) -> Iterator[Context]:
    from testbed.fidelity import require_fidelity, verify_link
    from testbed.lab import Lab
    from testbed.profiles import profile

    _check(params)
    profiles = {"wifi": profile(params["wifi_profile"]), "5g": profile(params["fiveg_profile"])}
    cc = params["congestion_control"] or None
    ctx = Context(params)
    with Lab(
        "reference", backend=params["backend"], congestion_control=cc, profiles=profiles
    ) as lab:
        ctx.backend = str(lab.backend)
        ctx.state["lab"] = lab
        ctx.state["port"] = 5400
        ctx.extra_meta["lab"] = lab.describe()
        ctx.extra_meta["profiles"] = {k: v.as_dict() for k, v in profiles.items()}
        ctx.extra_meta["sample_interval_s"] = params["sample_interval_s"]
        ctx.extra_meta["timeseries_interval_s"] = params["timeseries_interval_s"]
        ctx.extra_meta["baselines"] = BASELINE_NOTES
        if params["verify_fidelity"]:
            for access in ("wifi", "5g"):
                middle = lab.access(access).shaped
                assert middle is not None
                rows = verify_link(lab, middle, loss_burst=int(params["fidelity_loss_burst"]))
                ctx.fidelity.extend({"link": access, **vars(r)} for r in rows)
            require_fidelity([_row(r) for r in ctx.fidelity])
        with tempfile.TemporaryDirectory(prefix="qex-failover-") as tmp:
            ctx.state["workdir"] = Path(tmp)
            yield ctx


def _row(data: dict[str, Any]) -> Any:
    from testbed.fidelity import Row as FidelityRow

    return FidelityRow(**{k: v for k, v in data.items() if k != "link"})


BASELINE_NOTES = {
    "plain": "c1 <-> conc 10.100.0.1 over the default route (WiFi); servers are unreachable "
    "without a tunnel in the reference topology",
    "mptcp": "c1 <-> conc 10.100.0.1, IPPROTO_MPTCP both ends, endpoints wifi+5g subflow, "
    "limits subflow 2 add_addr_accepted 2, in-kernel path manager",
    "wireguard": "wireguard-go c1 <-> conc, c1 endpoint unbound (roams), sender srv1",
}


# -- variants -------------------------------------------------------------------------------
@dataclass
class Route:
    """Where the traffic runs for one variant: sender node/address, receiver's destination."""

    sender: str
    sender_bind: str
    receiver_dst: str
    mptcp: bool = False
    teardown: list[Callable[[], None]] = field(default_factory=list)


def _cmd(node: Any, line: str) -> str:
    out = str(node.cmd(f"{line}; echo qex-rc=$?"))
    text, _, rc = out.rpartition("qex-rc=")
    if rc.strip() != "0":
        raise RuntimeError(f"`{line}` failed on {node.name}: {text.strip()[-300:]}")
    return text


def _runner(node: Any, line: str) -> Callable[[], None]:
    def run() -> None:
        node.cmd(line)

    return run


def _plain(lab: Any, ctx: Context) -> Route:
    return Route(lab.plan.concentrator, CONCENTRATOR_SERVICE_V4, CONCENTRATOR_SERVICE_V4)


def _mptcp(lab: Any, ctx: Context) -> Route:
    client, conc = lab.node(CLIENT), lab.node(lab.plan.concentrator)
    path = Route(conc.name, CONCENTRATOR_SERVICE_V4, CONCENTRATOR_SERVICE_V4, mptcp=True)
    for node in (client, conc):
        _cmd(node, "sysctl -q -w net.mptcp.enabled=1")
        _cmd(node, "ip mptcp limits set subflow 2 add_addr_accepted 2")
        path.teardown.append(_runner(node, "ip mptcp endpoint flush"))
    for access in ("wifi", "5g"):
        acc = lab.access(access, CLIENT)
        _cmd(client, f"ip mptcp endpoint add {acc.client_v4} dev {acc.client_intf} subflow")
    return path


def _wireguard(lab: Any, ctx: Context) -> Route:
    if not shutil.which("wireguard-go") or not shutil.which("wg"):
        raise _Skip("wireguard-go or wg is not installed (Debian: wireguard-go wireguard-tools)")
    workdir: Path = ctx.state["workdir"]
    client, conc = lab.node(CLIENT), lab.node(lab.plan.concentrator)
    keys = {}
    for name in ("client", "conc"):
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        pub = subprocess.run(
            ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
        ).stdout
        (workdir / f"wg-{name}.key").write_text(priv)
        (workdir / f"wg-{name}.key").chmod(0o600)
        keys[name] = pub.strip()
    path = Route(lab.plan.servers[0], SERVER_V4, SERVER_V4)
    for node, role in ((conc, "conc"), (client, "client")):
        iface = WG_IFACE[role]
        # -f: stay in the foreground, so the ProcessManager owns (and stops) it.
        proc = lab.procs.start(node, f"wireguard-go-{iface}", ["wireguard-go", "-f", iface])
        path.teardown.append(functools.partial(lab.procs.stop, proc))
        deadline = time.monotonic() + 5
        while "qex-up" not in node.cmd(f"ip link show {iface} >/dev/null 2>&1 && echo qex-up"):
            if time.monotonic() > deadline or not proc.running():
                log = proc.log_path.read_text()[-300:] if proc.log_path.exists() else ""
                raise RuntimeError(f"wireguard-go did not create {iface} on {node.name}: {log}")
            time.sleep(0.05)
    wgc, wg1 = WG_IFACE["conc"], WG_IFACE["client"]
    _cmd(
        conc,
        f"wg set {wgc} private-key {workdir / 'wg-conc.key'} listen-port {WG_PORT} "
        f"peer {keys['client']} allowed-ips {WG_CLIENT}/32",
    )
    _cmd(conc, f"ip addr add {WG_CONC}/24 dev {wgc} && ip link set {wgc} up")
    _cmd(
        client,
        f"wg set {wg1} private-key {workdir / 'wg-client.key'} "
        f"peer {keys['conc']} endpoint {CONCENTRATOR_SERVICE_V4}:{WG_PORT} "
        f"allowed-ips {WG_CONC}/32,10.200.0.0/16 "
        f"persistent-keepalive {int(ctx.params['wg_keepalive_s'])}",
    )
    _cmd(client, f"ip addr add {WG_CLIENT}/24 dev {wg1} && ip link set {wg1} up")
    _cmd(client, f"ip route add 10.200.0.0/16 dev {wg1}")
    out = str(client.cmd(f"ping -n -c 3 -i 0.2 -W 2 {SERVER_V4}"))
    if " 0 received" in out or "received" not in out:
        raise RuntimeError(f"no ping through WireGuard to {SERVER_V4}: {out.strip()[-200:]}")
    return path


class _Skip(Exception):
    """The variant cannot run here (yet); the message is the reason."""


QTUN_SPECS: dict[str, dict[str, Any]] = {
    "session-failover": {"mode": "session", "scheduler": "failover"},
    "session-failover-noreports": {
        "mode": "session",
        "scheduler": "failover",
        "access_reports": False,
    },
    "tunnel-migration": {"mode": "tunnel"},
    "stream-migration": {
        "mode": "tunnel",
        "stream": True,
        # the client intercepts TCP towards the servers and carries it on QUIC streams
        "client_overrides": ('stream.intercept=["10.200.0.0/16"]',),
    },
}


def qtun_missing(variant: str) -> str | None:
    """Why a qtun variant cannot run in this checkout, or None if its programs are there."""
    modules = ["tunnel.aio.client", "tunnel.aio.concentrator"]
    if QTUN_SPECS[variant].get("stream"):
        modules += ["tunnel.aio.stream_client", "tunnel.aio.stream_server"]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"not implemented yet in this checkout: {', '.join(missing)} missing"
    return None


def _qtun(variant: str) -> Callable[[Any, Context], Route]:
    def setup(lab: Any, ctx: Context) -> Route:
        reason = qtun_missing(variant)
        if reason:
            raise _Skip(reason)
        from testbed.qtun import QtunDeployment, TunnelSpec

        spec = TunnelSpec(**QTUN_SPECS[variant])
        probe = f"limits.probe_interval={float(ctx.params['probe_interval_s'])}"
        spec.client_overrides = (*spec.client_overrides, probe)
        workdir = ctx.state["workdir"] / f"qtun-{variant}"
        deployment = QtunDeployment(lab, spec, clients=[CLIENT], workdir=workdir).start()
        path = Route(lab.plan.servers[0], SERVER_V4, SERVER_V4)
        path.teardown.append(deployment.stop)
        return path

    return setup


SETUPS: dict[str, Callable[[Any, Context], Route]] = {
    "plain": _plain,
    "mptcp": _mptcp,
    "wireguard": _wireguard,
    **{v: _qtun(v) for v in QTUN_SPECS},
}


# -- one point ------------------------------------------------------------------------------
def _event(lab: Any, event: str, failed: bool) -> None:
    if event == "link-down":
        (lab.access_down if failed else lab.access_up)("wifi", CLIENT)
    else:
        lab.shaper("wifi", CLIENT).blackhole(failed)


def run_point(ctx: Context, point: Point) -> PointResult:
    lab = ctx.state["lab"]
    p = ctx.params
    variant, event, traffic = point["variant"], point["event"], point["traffic"]
    if variant == "mptcp" and traffic == "udp":
        return PointResult(skipped="MPTCP carries TCP only: a UDP flow would be the plain one")
    try:
        path = SETUPS[variant](lab, ctx)
    except _Skip as skip:
        return PointResult(skipped=str(skip))
    ctx.state["port"] += 1
    flow = Flow(
        sender=path.sender,
        bind=path.sender_bind,
        receiver=CLIENT,
        dst=path.receiver_dst,
        traffic=traffic,
        duration_s=float(p["duration_s"]),
        port=ctx.state["port"],
        mptcp=path.mptcp,
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
        recv, sent = run_flow(lab, flow, ctx.state["workdir"], during=outage)
    finally:
        for undo in reversed(path.teardown):
            with contextlib.suppress(Exception):
                undo()
    return PointResult(rows=measure(point, p, recv, sent))


def measure(
    point: Point, p: Params, recv: dict[str, Any], sent: dict[str, Any]
) -> dict[str, list[Row]]:
    """The failover.csv row and the time series of one point, from the receiver's samples."""
    interval = float(recv["interval_s"])
    down, up, duration = float(p["down_at_s"]), float(p["up_at_s"]), float(p["duration_s"])
    bins = pad_bins(recv["bins"], interval, duration)
    gap = delivery_gap_ms(bins, interval, down, up)
    key = {k: point[k] for k in ("variant", "run", "event", "traffic")}
    udp = point["traffic"] == "udp"
    packets_sent = sent.get("sent") if udp else None
    lost: int | None = None
    if udp:
        lost = (
            int(packets_sent) - int(recv["unique"])
            if packets_sent is not None
            else int(recv["lost"])
        )
    row: Row = {
        **key,
        "down_at_s": down,
        "up_at_s": up,
        "gap_ms": None if gap is None else round(gap, 1),
        "goodput_before_mbps": goodput_mbps(bins, interval, max(1.0, down - 10), down),
        "goodput_during_mbps": goodput_mbps(bins, interval, down, up),
        "goodput_after_mbps": goodput_mbps(bins, interval, up, duration),
        "packets_lost": lost,
        "reordered": int(recv["reordered"]) if udp else None,
        "completed": gap is not None,
        "packets_sent": packets_sent,
        "bytes_received": int(recv["bytes_total"]),
        "detail": "; ".join(x for x in (recv.get("error"), sent.get("error")) if x),
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
    tables={"failover": FAILOVER_COLUMNS, "failover_timeseries": TIMESERIES_COLUMNS},
    key_columns=("variant", "event", "traffic", "run"),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="server->client transfer while WiFi fails (link-down or blackhole) and returns",
)
