"""The scale experiment for real at its smallest: 1 and then 3 clients on one concentrator,
every client's flow through the tunnel, the concentrator's CPU and memory measured."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.runner import get_experiment, resolve_params, run_experiment

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow, pytest.mark.timeout(240)]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_scale_one_and_three_clients(tmp_path: Path) -> None:
    exp = get_experiment("scale")
    sets = ["clients=[1, 3]", "duration_s=3.0", "warmup_s=1.0", "verify_fidelity=false"]
    params = resolve_params(exp, runs=1, sets=sets)
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == [] and summary.ran == 2
    table = rows(summary.run_dir / "scale.csv")
    assert list(table[0]) == exp.tables["scale"]
    assert [(r["clients"], r["client"]) for r in table] == [
        ("1", "c1"),
        ("3", "c1"),
        ("3", "c2"),
        ("3", "c3"),
    ]
    for row in table:
        assert float(row["goodput_mbps"]) > 0, row
        assert row["error"] == "", row
        assert 0 < float(row["conc_cpu_pct"]) <= 110  # one asyncio loop: at most one core
        assert 10 < float(row["conc_rss_mb"]) < 1000
        assert 0 < float(row["jain_fairness"]) <= 1
        assert float(row["host_cpu_pct"]) >= float(row["conc_cpu_pct"]) - 5
    assert float(table[0]["jain_fairness"]) == 1.0  # one client has all there is
    # The concentrator holds one connection per client: more clients, no less memory.
    assert float(table[1]["conc_rss_idle_mb"]) >= 0.9 * float(table[0]["conc_rss_idle_mb"])
    assert exp.summarize is not None and "tunnel" in exp.summarize(summary.run_dir)


def test_scale_with_client_groups(tmp_path: Path) -> None:
    """Three clients in groups of two (README "Client groups"): c1 and c2 share one `qtun
    client-group` process, c3 has one of its own; every flow goes through its own client's
    tunnel, and the clients' CPU counts each process once. The concentrator's TUN ring is
    set too (tun.txqueuelen)."""
    exp = get_experiment("scale")
    sets = [
        "clients=[3]",
        "clients_per_process=2",
        "conc_txqueuelen=2000",
        "duration_s=3.0",
        "warmup_s=1.0",
        "verify_fidelity=false",
    ]
    params = resolve_params(exp, runs=1, sets=sets)
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == [] and summary.ran == 1
    table = rows(summary.run_dir / "scale.csv")
    assert [r["client"] for r in table] == ["c1", "c2", "c3"]
    for row in table:
        assert row["clients_per_process"] == "2" and row["conc_txqueuelen"] == "2000"
        assert float(row["goodput_mbps"]) > 0 and row["error"] == "", row
        assert 0 < float(row["clients_cpu_pct"]) <= float(row["host_cpu_pct"]) + 5


def test_scale_plain_baseline(tmp_path: Path) -> None:
    """mode "plain": the same flows from conc without a tunnel; no qtun program to measure."""
    exp = get_experiment("scale")
    sets = ['mode="plain"', "clients=[2]", "duration_s=3.0", "warmup_s=1.0"]
    params = resolve_params(exp, runs=1, sets=[*sets, "verify_fidelity=false"])
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    table = rows(summary.run_dir / "scale.csv")
    assert [r["client"] for r in table] == ["c1", "c2"]
    for row in table:
        assert row["mode"] == "plain" and float(row["goodput_mbps"]) > 0, row
        assert row["conc_cpu_pct"] == row["clients_cpu_pct"] == row["conc_rss_mb"] == ""
        assert float(row["host_cpu_pct"]) > 0
