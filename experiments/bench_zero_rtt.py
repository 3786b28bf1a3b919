"""Time from a new access becoming usable to the first tunnelled byte delivered over it, with and
without 0-RTT (issue 15 item 6, README "0-RTT").

    .venv/bin/python -m experiments.bench_zero_rtt [--rtts 20,50,100] [--runs 5] [--loss PCT]
                                                   [--netns] [--out DIR]

Offline, in memory, on a fake clock (tests/unit/client_world.py: the real client agent and the
real concentrator core, real aioquic handshakes with the certificates of scripts/make-certs, no
sockets, no CPU time in the figures); run from the repository root. A session-mode client
(alice) has a session over wifi, its 5g link down; then wifi's link goes down and 5g's comes up
at t0, and the client's TUN offers one ICMP echo request every `--step` ms. The figure is the
time from t0 to the first of them written into the concentrator's TUN: it can only have
travelled over 5g's new connection (handshake, Join Session, the Session ID answer, then the
packet). Each access has the same one-way delay (RTT / 2) both ways and, with `--loss`, that
random loss (seeded per run). Runs differ by the phase of the packet clock (and the loss seed).

`--netns` (root) measures the same with the real `qtun` programs in network namespaces, the
delay added by qtwire (experiments/zero_rtt_netns.py: wall clock, CPU included, `--loss` not
applied).

Writes results/zero_rtt/<timestamp>/zero_rtt.csv (setup, rtt_ms, loss_pct, zero_rtt, run,
first_byte_ms, first_byte_rtts, resumed, join_in_0rtt, error) and meta.json, and prints the
median per RTT.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunnel.user_error import RuntimeFailure, SentenceParser, run_command

COLUMNS = [
    "setup",
    "rtt_ms",
    "loss_pct",
    "zero_rtt",
    "early_answer",
    "run",
    "first_byte_ms",
    "first_byte_rtts",
    "resumed",
    "join_in_0rtt",
    "error",
]
ALICE_V4, SERVER_V4 = "10.8.0.2", "10.200.1.2"  # alice's static address (concentrator_harness)
GIVE_UP = 10.0  # seconds of fake clock after t0 without a delivered packet: an error row


def first_byte(
    certs: Path,
    rtt: float,
    zero_rtt: bool,
    run: int,
    step: float,
    loss: float,
    early_answer: bool = True,
) -> dict[str, Any]:
    """One measurement (see the module docstring). `early_answer=False` is the ablation of the
    rule README "0-RTT" chose: the concentrator holds a 0-RTT Join Session like everything
    else, and answers it only after the handshake (what a server that acts on no 0-RTT data
    at all would do)."""
    from scapy.layers.inet import ICMP, IP

    from testbed.hostile import client_configuration
    from tests.unit.client_world import CoreConcentrator, World, client_config
    from tests.unit.concentrator_harness import concentrator_config

    switch = f"limits.zero_rtt={'true' if zero_rtt else 'false'}"
    config = client_config("session", ("wifi", "5g"), "limits.probe_interval=0.2", switch)
    core = CoreConcentrator(concentrator_config(certs, switch), now=1000.0)
    alice = client_configuration(
        certs / "ca.pem", ["qt-session"], certs / "alice.pem", certs / "alice.key"
    )
    if not early_answer:

        def hold_only(peer: Any, event: Any, now: float) -> None:
            peer.held = event

        core.core._early_session_request = hold_only  # type: ignore[method-assign]
    world = World(config, concentrator=core, client_quic_config=alice, delay=rtt / 2)
    world.set_link("5g", False)
    world.start()
    world.run(1.0 + run * step / 7)  # the session over wifi; runs differ in the packet phase
    if loss:
        for number, access in enumerate(world.accesses.values()):
            access.shape(loss=loss / 100, seed=1000 * run + number)
    world.set_link("wifi", False)
    t0 = world.now
    world.set_link("5g", True)
    ping = bytes(IP(src=ALICE_V4, dst=SERVER_V4) / ICMP(type=8, seq=1))
    before = len(core.tun)
    delivered: float | None = None
    while world.now - t0 < GIVE_UP:
        world.from_tun([ping])
        world.run(step, until=lambda: len(core.tun) > before)
        if len(core.tun) > before:
            delivered = world.now - t0
            break
    path = world.agent.path_on("5g")
    return {
        "first_byte_ms": None if delivered is None else round(delivered * 1000, 3),
        "first_byte_rtts": None if delivered is None else round(delivered / rtt, 3),
        "resumed": core.core.counters["connections_resumed"] > 0,
        "join_in_0rtt": path is not None and path.early_join,
        "error": None if delivered is not None else f"nothing delivered within {GIVE_UP:g} s",
    }


def _netns_rows(
    tmp: Path, certs: Path, rtt_ms: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from experiments.zero_rtt_netns import NetnsError, measure

    workdir = tmp / f"netns-{rtt_ms:g}"
    workdir.mkdir()
    base = {"setup": "netns", "rtt_ms": rtt_ms, "loss_pct": 0.0}
    try:
        found = measure(workdir, certs, rtt_ms, args.runs, args.step / 1000)
    except (NetnsError, AssertionError, OSError, subprocess.SubprocessError) as exc:
        message = " ".join(str(exc).split())[:300]
        return [base | {"zero_rtt": None, "run": 0, "error": message}]
    rows = []
    for row in found:
        ms = row["first_byte_ms"]
        rows.append(base | row | {"first_byte_rtts": round(ms / rtt_ms, 3)})
    return rows


def _rtts(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"--rtts {text!r}: give round-trip times in ms separated by commas, e.g. 20,50,100"
        )
    return values


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.bench_zero_rtt", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rtts", type=_rtts, default=[20.0, 50.0, 100.0], help="ms, e.g. 20,50")
    parser.add_argument("--runs", type=int, default=5, help="repetitions per RTT and variant")
    parser.add_argument("--step", type=float, default=1.0, help="ms between packets offered")
    parser.add_argument("--loss", type=float, default=0.0, help="random loss per direction, %%")
    parser.add_argument("--netns", action="store_true", help="the real programs (root)")
    parser.add_argument(
        "--out", type=Path, help="the run directory (default results/zero_rtt/<ts>)"
    )
    # parsed inside run_command: a mistake on the command line is one line (exit code 2)
    return run_command("bench_zero_rtt", lambda: _bench(parser, parser.parse_args(argv)))


def _bench(parser: SentenceParser, args: argparse.Namespace) -> int:
    if args.runs < 1 or args.step <= 0 or not 0 <= args.loss < 50:
        parser.error("--runs must be >= 1, --step > 0 and --loss between 0 and 50")
    if args.netns and os.geteuid() != 0:
        raise RuntimeFailure("--netns builds network namespaces: run it as root")
    from experiments.runner import git_state, new_run_dir, write_meta
    from tests.certs import make_lab_certs

    run_dir: Path = args.out if args.out is not None else new_run_dir("zero_rtt")
    run_dir.mkdir(parents=True, exist_ok=True)
    commit, dirty = git_state()
    meta: dict[str, Any] = {
        "experiment": "zero_rtt",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "backend": (
            "network namespaces, qtwire delay, wall clock (experiments/zero_rtt_netns.py)"
            if args.netns
            else "in-memory fake clock (tests/unit/client_world.py)"
        ),
        "parameters": {
            "rtts_ms": args.rtts,
            "runs": args.runs,
            "step_ms": args.step,
            "loss_pct": args.loss,
        },
        "argv": sys.argv,
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qtun-0rtt-") as tmp:
        certs = make_lab_certs(Path(tmp) / "certs")
        for rtt_ms in args.rtts:
            if args.netns:
                rows += _netns_rows(Path(tmp), certs, rtt_ms, args)
                continue
            for zero_rtt, early in ((False, None), (True, True), (True, False)):
                for run in range(args.runs):
                    row = {"setup": "memory", "rtt_ms": rtt_ms, "loss_pct": args.loss}
                    row |= {"zero_rtt": zero_rtt, "early_answer": early, "run": run}
                    row |= first_byte(
                        certs,
                        rtt_ms / 1000,
                        zero_rtt,
                        run,
                        args.step / 1000,
                        args.loss,
                        early_answer=early is not False,
                    )
                    rows.append(row)
    with (run_dir / "zero_rtt.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_meta(run_dir, meta)
    print(
        f"{'rtt_ms':>7} {'without 0-RTT (ms)':>19} {'with 0-RTT (ms)':>16} {'saved (RTTs)':>13}"
        + ("" if args.netns else f" {'0-RTT, join held (ms)':>22}")
    )
    for rtt_ms in args.rtts:
        medians = []
        for zero_rtt, early in ((False, None), (True, True), (True, False)):
            got = [
                r["first_byte_ms"]
                for r in rows
                if r["rtt_ms"] == rtt_ms
                and r["zero_rtt"] is zero_rtt
                and r.get("early_answer") is early
                and r.get("first_byte_ms")
            ]
            medians.append(statistics.median(got) if got else float("nan"))
        saved = (medians[0] - medians[1]) / rtt_ms
        held = "" if args.netns else f" {medians[2]:>22.1f}"
        print(f"{rtt_ms:>7g} {medians[0]:>19.1f} {medians[1]:>16.1f} {saved:>13.2f}{held}")
    print(f"results: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
