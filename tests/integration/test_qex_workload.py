"""The workload experiment for real, at its smallest (experiments/workload.py): plain and tunnel
mode, a VoIP call under a bulk flow, web-like fetches and parallel bulk connections, the
columns of the contract and the figure. Functional facts only: each call is heard and scored,
the objects are fetched whole, every parallel connection carries data; how well is the
experiment's figure to record."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.analysis import figure_for_run
from experiments.runner import get_experiment, resolve_params, run_experiment

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.timeout(240)]


def read(run_dir: Path, table: str) -> list[dict[str, str]]:
    with (run_dir / f"{table}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_workload_quick(tmp_path: Path) -> None:
    exp = get_experiment("workload")
    sets = [
        'modes=["plain", "tunnel"]',
        'workloads=["voip-bulk", "web", "bulk-parallel"]',
        "call_s=4.0",
        "warmup_s=1.5",
        "web_objects=6",
        "web_max_bytes=300000",
        "web_s=15.0",
        "bulk_s=3.0",
        "parallel_flows=3",
        "verify_fidelity=false",
    ]
    params = resolve_params(exp, quick=True, sets=sets)
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == [] and meta["skipped"] == []
    points, calls, flows = (
        read(summary.run_dir, t) for t in ("workload", "workload_calls", "workload_flows")
    )  # no video here: no workload_segments.csv
    assert (
        list(points[0]) == exp.tables["workload"] and list(calls[0]) == exp.tables["workload_calls"]
    )
    by = {(r["mode"], r["workload"]): r for r in points}
    for mode in ("plain", "tunnel"):
        call = next(c for c in calls if c["mode"] == mode)
        # heard and scored, under a load that was carried at the same time
        assert int(call["packets_received"]) > 0 and 1.0 <= float(call["mos"]) <= 4.5, call
        # ... and for the adaptive playout buffer, which waits at least the network's delay
        assert 1.0 <= float(call["mos_adaptive"]) <= 4.5, call
        assert float(call["mouth_to_ear_adaptive_ms"]) > float(call["owd_min_ms"]), call
        assert float(call["owd_min_ms"]) > 0, call  # the access's delay is in every packet
        assert float(by[mode, "voip-bulk"]["load_goodput_mbps"]) > 0
        web = [f for f in flows if f["mode"] == mode and f["kind"] == "web"]
        assert len(web) == 6 and all(f["outcome"] == "ok" for f in web), web
        bulk = [f for f in flows if f["mode"] == mode and f["kind"] == "bulk"]
        assert len(bulk) == 3 and all(int(f["bytes"]) > 0 for f in bulk), bulk
        assert by[mode, "web"]["cpu_saturated"] in ("True", "False")
    assert "MOS" in exp.summarize(summary.run_dir)  # type: ignore[misc]
    png = figure_for_run(summary.run_dir)
    assert png.exists() and png.with_suffix(".svg").exists()
