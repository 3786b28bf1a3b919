"""Structure-aware fuzzing through a real connection: `qtlab run fuzz` -> results/fuzz/<time>/.

The real `qtun concentrator` runs on h2 of the `pair` topology (tunnel and session mode, stream
mode on), a real `qtun client` on h1 keeps a tunnel-mode connection, and the fuzzer
(testbed/hostile.py `fuzz`) connects from h1 as a client of its own (certificate "fuzz",
admitted with static inner addresses) and feeds `inputs` structure-aware inputs — DATAGRAMs of
every size up to one byte over the budget in both modes with every Protocol Type, control TLVs,
session messages, TCP Connect preambles, odd streams, random frames — in batches of `batch`,
one fuzzer process per batch (seeded by the run's seed and the batch number; the Protocol Types
walk one permutation of 0..65535 across the batches). The fuzzer reconnects whenever the
concentrator closes its connection: a close is a correct answer to a violation.

Between batches (no input in flight) the concentrator is checked: still the same process
(a crash or a restart is a failure), its RSS (/proc/<pid>/status VmRSS) and open fds, its status
counters (`internal_errors` must stay 0) and its log (no exception line, see
experiments/health.py EXCEPTION_PATTERN), and the real client's liveness: `ping` from h1 through
the tunnel to the concentrator's TUN address must be answered.

Tables: fuzz.csv (one row per batch: inputs by kind, connections, closes, the checks above),
fuzz_closes.csv (why connections were closed, counted), fuzz_labels.csv (each mutation and how
often it was sent), fuzz_summary.csv (the verdict, one row per run).
"Unbounded growth": the concentrator's RSS after the first batch (warm-up) against the end is
reported; the verdict only bounds it generously (experiments/health.py: twice the warm-up +
100 MiB).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from experiments.health import RSS_BOUND_TEXT, rss_bound_mb, scan_log
from experiments.procstat import proc_sample
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Params,
    Point,
    PointResult,
    load_config,
)
from testbed.hosts import HostProcess
from testbed.lab import Lab
from testbed.paths import EXPERIMENT_CONFIGS
from testbed.qtun import (
    CONCENTRATOR_TUN_V4,
    CONCENTRATOR_TUN_V6,
    MixedDeployment,
    TunnelSpec,
    client_inner_addresses,
)
from testbed.topologies import PAIR_H1, PAIR_H2

FUZZ_NAME = "fuzz"
FUZZ_INDEX = 2  # inner addresses client_inner_addresses(2): 10.8.0.4, fd00:8::3
REAL_CLIENT = "h1"  # the pair topology's client: qtun client 1
CONCENTRATOR_ADDRESSES = PAIR_H2  # h2 on the pair topology
TUN_V4, TUN_V6 = CONCENTRATOR_TUN_V4, CONCENTRATOR_TUN_V6
NAT64_PREFIX = IPv6Address("64:ff9b::")  # RFC 6052 §2.1
# Destinations of the fuzzed IP packets and TCP Connects, besides random ones: the concentrator
# itself, the real client (its host and its inner address), and every special-purpose kind.
SPECIAL_ADDRESSES = (
    PAIR_H1[0], *client_inner_addresses(1), "127.0.0.1", "::1", "0.0.0.0", "::",
    "255.255.255.255", "224.0.0.1", "ff02::1", "169.254.169.254", "fe80::1", "192.0.2.1",
    "100.64.0.1", f"::ffff:{PAIR_H2[0]}",
    str(IPv6Address(int(NAT64_PREFIX) | int(IPv4Address(PAIR_H2[0])))),
)  # fmt: skip
KIND_COLUMNS = [
    "datagram_tunnel",
    "datagram_session",
    "control_tlv",
    "session_message",
    "tcp_preamble",
    "odd_stream",
    "raw_frame",
]
COLUMNS = [
    "run",
    "batch",
    "inputs_total",
    "inputs",
    *KIND_COLUMNS,
    "connections",
    "connect_failures",
    "closes_by_peer",
    "closes_by_us",
    "stalls",
    "protocol_types_covered",
    "datagram_sizes_covered",
    "stopped",
    "batch_s",
    "conc_alive",
    "conc_pid",
    "conc_rss_mb",
    "conc_fds",
    "internal_errors",
    "exceptions_in_log",
    "client_state",
    "ping_replies",
    "error",
]
SUMMARY_COLUMNS = [
    "run",
    "verdict",
    "failures",
    "inputs",
    "crashes",
    "internal_errors",
    "exceptions_in_log",
    "liveness_failures",
    "connections",
    "closes_by_peer",
    "protocol_types_covered",
    "datagram_sizes_covered",
    "datagram_budget",
    "conc_rss_start_mb",
    "conc_rss_warm_mb",
    "conc_rss_end_mb",
    "conc_rss_max_mb",
    "conc_fds_start",
    "conc_fds_warm",
    "conc_fds_end",
    "elapsed_s",
]
TABLES = {
    "fuzz": COLUMNS,
    "fuzz_closes": ["run", "reason", "count"],
    "fuzz_labels": ["run", "label", "count"],
    "fuzz_findings": ["run", "batch", "connection", "exception", "where", "last_inputs"],
    "fuzz_summary": SUMMARY_COLUMNS,
}
# tunnel/aio/udp.py QuicDriver.fail's log line: the connection (its first ID of ours, which the
# fuzzer's trace records as the ID it sends to), the exception and where it was raised.
DRIVER_ERROR = re.compile(
    r"internal error on QUIC connection (?P<cid>[0-9a-f]+).*?exception=(?P<exc>.*?)"
    r"(?: traceback=(?P<where>.*))?$"
)
LAST_INPUTS = 4  # inputs of the failing connection kept per finding
DEFAULTS: Params = {
    "inputs": 300_000,
    "batch": 10_000,
    "runs": 1,
    "seed": 1,
    "batch_max_seconds": 600.0,
    "max_seconds": 5400.0,
    "ping_count": 3,
    "start_timeout_s": 60.0,
    "backend": "auto",
}
QUICK: Params = load_config(EXPERIMENT_CONFIGS / "quick" / "fuzz.toml", "fuzz")
PING_REPLIES = re.compile(r"(\d+) received")


def _check(params: Params) -> None:
    if not 1 <= params["inputs"] <= 10_000_000:
        raise ExperimentError("inputs must be between 1 and 10,000,000.")
    if not 1 <= params["batch"] <= 1_000_000:
        raise ExperimentError("batch must be between 1 and 1,000,000.")
    if params["batch_max_seconds"] <= 0 or params["max_seconds"] <= 0:
        raise ExperimentError("batch_max_seconds and max_seconds must be > 0.")
    if params["ping_count"] < 1:
        raise ExperimentError("ping_count must be >= 1.")


def points(params: Params) -> list[Point]:
    _check(params)
    return [Point({"run": r}) for r in range(1, int(params["runs"]) + 1)]


@dataclass
class FuzzState:
    """What the runs share: the lab and a scratch directory."""

    lab: Lab
    workdir: Path


@contextlib.contextmanager
def session(params: Params) -> Iterator[Context[FuzzState]]:
    _check(params)
    with (
        tempfile.TemporaryDirectory(prefix="qex-fuzz-") as tmp,
        Lab("pair", backend=params["backend"]) as lab,
    ):
        ctx = Context(params, FuzzState(lab, Path(tmp)), lab=lab)
        ctx.backend = str(lab.backend)
        ctx.extra_meta.update(
            {
                "topology": "pair: qtun concentrator on h2, real qtun client and fuzzer on h1",
                "lab": lab.describe(),
                "log_dir": str(lab.log_dir),
                "rss_bound": RSS_BOUND_TEXT,
            }
        )
        yield ctx


class _Fuzz:
    """One fuzz run; the deployment and every batch process are stopped in close()."""

    def __init__(self, ctx: Context[FuzzState], point: Point) -> None:
        self.ctx = ctx
        self.p = ctx.params
        self.run_no = int(point["run"])
        self.lab = ctx.state.lab
        self.workdir = ctx.state.workdir / f"run-{self.run_no}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dep: MixedDeployment | None = None
        self.proc: HostProcess | None = None
        self.budget = 0  # the DATAGRAM budget the fuzzer found

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.lab.procs.stop(self.proc)
        if self.dep is not None:
            with contextlib.suppress(Exception):
                self.dep.stop()

    def deploy(self) -> MixedDeployment:
        # Stream mode on at the concentrator (the real client runs plain tunnel mode).
        spec = TunnelSpec(mode="tunnel", stream=True)
        self.dep = MixedDeployment(
            self.lab,
            spec,
            {REAL_CLIENT: "tunnel"},
            {FUZZ_NAME: FUZZ_INDEX},
            workdir=self.workdir / "qtun",
        )
        self.dep.start(timeout=float(self.p["start_timeout_s"]))
        return self.dep

    def argv(self, batch: int, count: int, pt_cursor: int) -> list[str]:
        assert self.dep is not None
        me = self.dep.identity(FUZZ_NAME)
        argv = [
            sys.executable, "-m", "testbed.hostile", "fuzz",
            "--remote", CONCENTRATOR_ADDRESSES[0], "--remote", CONCENTRATOR_ADDRESSES[1],
            "--ca", str(me.ca), "--cert", str(me.cert), "--key", str(me.key),
            "--inner-v4", me.inner_v4, "--inner-v6", me.inner_v6,
            "--server", TUN_V4,
            "--seed", f"{self.p['seed']}-{self.run_no}-{batch}",
            "--pt-seed", f"{self.p['seed']}-{self.run_no}", "--pt-cursor", str(pt_cursor),
            "--count", str(count), "--max-seconds", str(self.p["batch_max_seconds"]),
            "--out", str(self.workdir / f"batch-{batch}.json"),
            "--trace", str(self.trace_path(batch)),
        ]  # fmt: skip
        for address in (*CONCENTRATOR_ADDRESSES, TUN_V4, TUN_V6):
            argv += ["--own-address", address]
        for address in SPECIAL_ADDRESSES:
            argv += ["--destination", address, "--connect-target", address]
        return argv

    def trace_path(self, batch: int) -> Path:
        return self.workdir / f"trace-{batch}.jsonl"

    def findings(self, batch: int, new_lines: list[str]) -> list[dict[str, Any]]:
        """For each connection the concentrator closed on an exception: the exception, where,
        and the last inputs the fuzzer sent on that connection (from its trace)."""
        errors = [m for m in map(DRIVER_ERROR.search, new_lines) if m is not None]
        # anything else (an exception that escaped a task, a traceback): the line itself
        out: list[dict[str, Any]] = [
            {"run": self.run_no, "batch": batch, "connection": "", "exception": line[:500],
             "where": "", "last_inputs": ""}
            for line in new_lines
            if DRIVER_ERROR.search(line) is None
        ][:20]  # fmt: skip
        by_conn: dict[str, list[str]] = {}
        path = self.trace_path(batch)
        wanted = {m["cid"] for m in errors}
        for line in path.read_text().splitlines() if path.exists() else []:
            conn = json.loads(line).get("conn")
            if conn in wanted:
                by_conn.setdefault(conn, []).append(line)
        for m in errors[:50]:
            out.append(
                {
                    "run": self.run_no,
                    "batch": batch,
                    "connection": m["cid"],
                    "exception": m["exc"][:300],
                    "where": (m["where"] or "")[:500],
                    "last_inputs": "\n".join(by_conn.get(m["cid"], [])[-LAST_INPUTS:]),
                }
            )
        return out

    def check(self, pid: int) -> dict[str, Any]:
        """The concentrator and the real client, between two batches."""
        assert self.dep is not None
        dep = self.dep
        proc = dep.procs[dep.concentrator]
        alive = proc.running() and proc.pid == pid
        measured = proc_sample(pid) if alive else None
        row: dict[str, Any] = {
            "conc_alive": alive,
            "conc_pid": pid,
            "conc_rss_mb": measured[0] if measured else None,
            "conc_fds": measured[1] if measured else None,
        }
        with contextlib.suppress(Exception):
            counters = dep.fresh_status(dep.concentrator).get("counters", {})
            row["internal_errors"] = int(counters.get("internal_errors", 0))
        row["exceptions_in_log"] = len(scan_log(dep.log_path(dep.concentrator))[1])
        with contextlib.suppress(Exception):
            row["client_state"] = dep.status(REAL_CLIENT).get("state")
        count = int(self.p["ping_count"])
        out = str(
            self.lab.node(REAL_CLIENT).cmd(
                f"timeout {count + 5} ping -n -c {count} -i 0.2 -W 2 {TUN_V4}"
            )
        )
        match = PING_REPLIES.search(out)
        row["ping_replies"] = int(match.group(1)) if match else 0
        return row

    def run(self) -> PointResult:
        p = self.p
        dep = self.deploy()
        pid = dep.pid(dep.concentrator)
        started = time.monotonic()
        first = self.check(pid)
        rows: list[dict[str, Any]] = []
        found: list[dict[str, Any]] = []
        seen_lines = set(scan_log(dep.log_path(dep.concentrator))[1])
        closes: Counter[str] = Counter()
        labels: Counter[str] = Counter()
        total = 0
        pt_cursor = 0
        protocol_types = 0
        sizes: set[int] = set()
        batch = 0
        while total < int(p["inputs"]) and time.monotonic() - started < float(p["max_seconds"]):
            batch += 1
            count = min(int(p["batch"]), int(p["inputs"]) - total)
            out = self.workdir / f"batch-{batch}.json"
            t_batch = time.monotonic()
            self.proc = self.lab.procs.start(
                self.lab.node(REAL_CLIENT), f"fuzz-{batch}", self.argv(batch, count, pt_cursor)
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.popen.wait(float(p["batch_max_seconds"]) + 60)
            self.lab.procs.stop(self.proc)
            self.proc = None
            row: dict[str, Any] = {"run": self.run_no, "batch": batch, "error": ""}
            report: dict[str, Any] = {}
            if out.exists():
                report = json.loads(out.read_text())
            else:
                row["error"] = f"the fuzzer wrote no report; see {self.lab.log_dir}"
            done = int(report.get("inputs", 0))
            total += done
            pt_cursor = int(report.get("pt_cursor", pt_cursor))
            protocol_types = min(0x10000, max(protocol_types, pt_cursor))
            sizes.update(report.get("datagram_sizes", []))
            self.budget = max(self.budget, int(report.get("budget", 0)))
            closes.update(report.get("close_reasons", {}))
            labels.update(report.get("labels", {}))
            row.update(
                {
                    "inputs_total": total,
                    "inputs": done,
                    **{k: report.get("by_kind", {}).get(k, 0) for k in KIND_COLUMNS},
                    "connections": report.get("connections", 0),
                    "connect_failures": report.get("connect_failures", 0),
                    "closes_by_peer": report.get("closes_by_peer", 0),
                    "closes_by_us": report.get("closes_by_us", 0),
                    "stalls": report.get("stalls", 0),
                    "protocol_types_covered": protocol_types,
                    "datagram_sizes_covered": len(sizes),
                    "stopped": report.get("stopped", ""),
                    "batch_s": time.monotonic() - t_batch,
                    **self.check(pid),
                }
            )
            rows.append(row)
            bad = scan_log(dep.log_path(dep.concentrator))[1]
            found += self.findings(batch, [line for line in bad if line not in seen_lines])
            seen_lines.update(bad)
            if not row["conc_alive"] or (done == 0 and report.get("stopped") == "unreachable"):
                break  # a crash (or an unreachable concentrator) ends the run: nothing to fuzz
        summary = self.summary(rows, first, time.monotonic() - started)
        self.ctx.extra_meta.setdefault("verdicts", {})[str(self.run_no)] = {
            "verdict": summary["verdict"],
            "failures": summary["failures"],
        }
        return PointResult(
            rows={
                "fuzz": rows,
                "fuzz_closes": [
                    {"run": self.run_no, "reason": r, "count": c} for r, c in closes.most_common()
                ],
                "fuzz_labels": [
                    {"run": self.run_no, "label": k, "count": c} for k, c in sorted(labels.items())
                ],
                "fuzz_findings": found,
                "fuzz_summary": [summary],
            }
        )

    def summary(
        self, rows: list[dict[str, Any]], first: dict[str, Any], elapsed: float
    ) -> dict[str, Any]:
        last = rows[-1] if rows else first
        warm = rows[0] if rows else first
        rss = [r["conc_rss_mb"] for r in rows if r.get("conc_rss_mb") is not None]
        inputs = last.get("inputs_total", 0)
        summary: dict[str, Any] = {
            "run": self.run_no,
            "inputs": inputs,
            "crashes": sum(1 for r in rows if not r["conc_alive"]),
            "internal_errors": max((r.get("internal_errors") or 0 for r in rows), default=0),
            "exceptions_in_log": last.get("exceptions_in_log", 0),
            "liveness_failures": sum(
                1 for r in rows if r["ping_replies"] == 0 or r.get("client_state") != "up"
            ),
            "connections": sum(r["connections"] for r in rows),
            "closes_by_peer": sum(r["closes_by_peer"] for r in rows),
            "protocol_types_covered": last.get("protocol_types_covered", 0),
            "datagram_sizes_covered": last.get("datagram_sizes_covered", 0),
            "datagram_budget": self.budget,
            "conc_rss_start_mb": first["conc_rss_mb"],
            "conc_rss_warm_mb": warm.get("conc_rss_mb"),
            "conc_rss_end_mb": last.get("conc_rss_mb"),
            "conc_rss_max_mb": max(rss) if rss else None,
            "conc_fds_start": first["conc_fds"],
            "conc_fds_warm": warm.get("conc_fds"),
            "conc_fds_end": last.get("conc_fds"),
            "elapsed_s": elapsed,
        }
        failures: list[str] = []
        if summary["crashes"]:
            failures.append("the concentrator died")
        if summary["internal_errors"]:
            failures.append(f"{summary['internal_errors']} internal error(s) counted")
        if summary["exceptions_in_log"]:
            failures.append(f"{summary['exceptions_in_log']} exception line(s) in its log")
        if summary["liveness_failures"]:
            failures.append(
                f"the real client failed {summary['liveness_failures']} liveness check(s)"
            )
        if inputs < int(self.p["inputs"]):
            failures.append(f"only {inputs} of {self.p['inputs']} inputs were sent")
        warm_rss, end_rss = summary["conc_rss_warm_mb"], summary["conc_rss_end_mb"]
        if warm_rss is not None and end_rss is not None:
            bound = rss_bound_mb(warm_rss)
            if end_rss > bound:
                failures.append(f"RSS {end_rss:.0f} MiB above {bound:.0f} MiB")
        summary["verdict"] = "pass" if not failures else "fail"
        summary["failures"] = "; ".join(failures)
        return summary


def run_point(ctx: Context[FuzzState], point: Point) -> PointResult:
    fuzz = _Fuzz(ctx, point)
    try:
        return fuzz.run()
    finally:
        fuzz.close()


def summary_table(run_dir: Path) -> str:
    import pandas as pd

    path = run_dir / "fuzz_summary.csv"
    if not path.exists():
        return "no fuzz summary"
    df = pd.read_csv(path).fillna("")
    lines = []
    for _, row in df.iterrows():
        lines.append(f"run {row['run']}: {row['verdict'].upper()} {row['failures']}".rstrip())
        for key in SUMMARY_COLUMNS[3:]:
            lines.append(f"  {key:24s} {row[key]}")
    findings = run_dir / "fuzz_findings.csv"
    if findings.exists() and findings.stat().st_size:
        found = pd.read_csv(findings).fillna("")
        lines.append(f"exceptions in the concentrator (first of {len(found)}):")
        for exc, group in found.groupby("exception"):
            lines.append(f"  {len(group):5d} x {exc}  at {str(group['where'].iloc[0])[-160:]}")
    closes = run_dir / "fuzz_closes.csv"
    if closes.exists():
        top = pd.read_csv(closes).head(8)
        lines.append("most frequent closes:")
        lines += [f"  {int(r['count']):7d}  {r['reason']}" for _, r in top.iterrows()]
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="fuzz",
    defaults=DEFAULTS,
    quick=QUICK,
    tables=TABLES,
    key_columns=("run",),
    points=points,
    run_point=run_point,
    session=session,
    summarize=summary_table,
    description="structure-aware inputs through a real connection to a real concentrator: "
    "crashes, internal errors, exceptions, liveness, RSS and fds",
)
