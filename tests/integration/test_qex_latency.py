"""The latency experiment for real, at its smallest (experiments/latency.py): plain and tunnel
mode (with CoDel on its datagram queues and without), idle and under a bulk TCP load, the
columns of the contract. Functional facts only: a loaded 20 Mbit/s access with a 200-packet
queue holds the pings behind the bulk flow, so each mode's loaded median is above its idle
one, and the flow is measured while they run; how much is the experiment's figure to record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.runner import get_experiment, resolve_params, run_experiment

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.timeout(240)]


def test_latency_idle_and_under_load(tmp_path: Path) -> None:
    exp = get_experiment("latency")
    sets = [
        'modes=["plain", "tunnel"]',
        'queue_aqm=["codel", "off"]',
        "ping_count=20",
        "warmup_s=1.5",
        "verify_fidelity=false",
    ]
    params = resolve_params(exp, runs=1, sets=sets)
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == [] and meta["skipped"] == []
    with (summary.run_dir / "latency.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == exp.tables["latency"]
    by = {(r["mode"], r["queue_aqm"], r["load"]): r for r in table}
    assert len(by) == len(table) == 6
    for mode, aqm in (("plain", "n/a"), ("tunnel", "codel"), ("tunnel", "off")):
        idle, loaded = by[mode, aqm, "idle"], by[mode, aqm, "tcp"]
        assert int(idle["replies"]) >= 15 and int(loaded["replies"]) >= 10, (idle, loaded)
        # the access's 20 ms RTT is in every reply; the bulk flow's queue adds to it
        assert float(idle["rtt_min_ms"]) >= 19.0, idle
        assert float(loaded["rtt_median_ms"]) > float(idle["rtt_median_ms"]), (idle, loaded)
        assert float(loaded["goodput_mbps"]) > 0 and loaded["cpu_saturated"] in ("True", "False")
    assert "inflation_ms" in exp.summarize(summary.run_dir)  # type: ignore[misc]
