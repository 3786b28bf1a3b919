"""Run one measured flow (experiments/traffic.py) between two Mininet hosts and collect it.

    recv, sent = run_flow(lab, Flow(sender="srv1", bind="10.200.1.2", receiver="c1",
                                    dst="10.200.1.2", traffic="tcp", duration_s=12),
                          workdir, during=lambda start_at: ...)

The sender starts first (it listens), then the receiver; both get the same CLOCK_MONOTONIC
origin `start_at` (now + START_LEAD_S, the time Python needs to start in a node). `during` is
called with that origin once both run (the failover experiment fails the WiFi from there).
Returns the receiver's samples and the sender's report as parsed JSON; raises RuntimeError
(one sentence) if the receiver never got traffic. Both programs are stopped on every path.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAFFIC_SCRIPT = Path(__file__).resolve().parent / "traffic.py"
START_LEAD_S = 1.5  # programs start (Python in a node: ~0.3 s) before the measurement's origin


@dataclass
class Flow:
    sender: str  # node names
    bind: str  # the sender's address (it listens there)
    receiver: str
    dst: str  # what the receiver connects to
    traffic: str  # "tcp" | "udp"
    duration_s: float
    port: int = 5400
    mptcp: bool = False
    udp_rate_mbit: float = 10.0
    udp_size_bytes: int = 1000
    interval_s: float = 0.01


def traffic_argv(role: str, *args: str) -> list[str]:
    return [sys.executable, str(TRAFFIC_SCRIPT), role, *args]


def sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def run_flow(
    lab: Any,
    flow: Flow,
    workdir: Path,
    during: Callable[[float], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    port = str(flow.port)
    recv_out = workdir / f"recv-{port}.json"
    send_out = workdir / f"send-{port}.json"
    for stale in (recv_out, send_out):
        stale.unlink(missing_ok=True)
    start_at = time.monotonic() + START_LEAD_S
    common = ["--port", port, "--start-at", f"{start_at:.6f}", "--duration", str(flow.duration_s)]
    send_args = ["--bind", flow.bind, *common, "--out", str(send_out)]
    recv_args = ["--dst", flow.dst, *common, "--out", str(recv_out)]
    recv_args += ["--interval", str(flow.interval_s)]
    if flow.traffic == "tcp":
        extra = ["--mptcp"] if flow.mptcp else []
        sender_argv = traffic_argv("tcp-send", *send_args, *extra)
        receiver_argv = traffic_argv("tcp-recv", *recv_args, *extra)
    else:
        rate = ["--rate-mbit", str(flow.udp_rate_mbit), "--size", str(flow.udp_size_bytes)]
        sender_argv = traffic_argv("udp-send", *send_args, *rate)
        receiver_argv = traffic_argv("udp-recv", *recv_args)
    procs = []
    try:
        procs.append(lab.procs.start(lab.node(flow.sender), f"qex-send-{port}", sender_argv))
        time.sleep(0.3)  # the sender listens before the receiver connects
        receiver = lab.procs.start(lab.node(flow.receiver), f"qex-recv-{port}", receiver_argv)
        procs.append(receiver)
        if during is not None:
            during(start_at)
        with contextlib.suppress(subprocess.TimeoutExpired):
            receiver.popen.wait(max(1.0, start_at + flow.duration_s + 5 - time.monotonic()))
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                lab.procs.stop(proc)
    if not recv_out.exists():
        raise RuntimeError(f"the receiver wrote no samples; see {receiver.log_path}")
    recv = json.loads(recv_out.read_text())
    sent = json.loads(send_out.read_text()) if send_out.exists() else {}
    if not recv["connected"]:
        raise RuntimeError(
            f"the receiver never got traffic ({recv.get('error')}; sender: {sent.get('error')})"
        )
    return recv, sent
