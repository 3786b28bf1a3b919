"""The workload experiment's arithmetic on its rows (experiments/workload.py) and its figure and
summary (experiments/analysis.py workload_figure), from a synthetic run: no root."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from experiments import analysis, variants, workload
from experiments.procstat import CpuMeter
from experiments.runner import ExperimentError, resolve_params
from experiments.schemas import (
    VOIP_ADAPTIVE_COLUMNS,
    WORKLOAD,
    WORKLOAD_CALLS,
    WORKLOAD_FLOWS,
    Table,
)
from experiments.traffic import jain_index

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(run: Path, table: Table, rows: list[dict[str, Any]]) -> None:
    with (run / table.file_name).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table.columns))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def synthetic_run(run: Path) -> None:
    points, calls, flows = [], [], []
    for mode in ("plain", "tunnel"):
        for kind in workload.WORKLOADS:
            hot = mode == "tunnel" and kind == "bulk-parallel"
            row: dict[str, Any] = {"mode": mode, "workload": kind, "run": 1, "cpu_saturated": hot}
            if kind.startswith("voip"):
                row.update(calls=1, mos=4.35 if kind == "voip" else 1.0, mos_adaptive=4.0)
            elif kind.startswith("web"):
                row.update(flows=5, flows_ok=5, fct_median_ms=300.0)
            else:
                row.update(flows=4, flows_ok=4, goodput_mbps=18.0, jain_fairness=0.95)
            points.append(row)
        for kind, delay, mos in (("voip", 26.0, 4.35), ("voip-bulk", 250.0, 1.0)):
            calls.append({"mode": mode, "workload": kind, "run": 1, "call": 0, "mos": mos,
                          "mos_adaptive": 4.38 if kind == "voip" else 2.9,
                          "owd_median_ms": delay, "owd_p95_ms": delay + 40})  # fmt: skip
        for kind, fct in (("web", 150.0), ("web-bulk", 700.0)):
            for k in range(5):
                flows.append({"mode": mode, "workload": kind, "run": 1, "flow": k, "kind": "web",
                              "fct_ms": fct * (k + 1), "bytes": 1000, "outcome": "ok"})  # fmt: skip
        for k in range(4):
            flows.append({"mode": mode, "workload": "bulk-parallel", "run": 1, "flow": k,
                          "kind": "bulk", "bytes": 10**6, "goodput_mbps": 4.5,
                          "outcome": "ok"})  # fmt: skip
    write(run, WORKLOAD, points)
    write(run, WORKLOAD_CALLS, calls)
    write(run, WORKLOAD_FLOWS, flows)


def test_workload_figure_and_summary(tmp_path: Path) -> None:
    synthetic_run(tmp_path)
    out = analysis.workload_figure(tmp_path, tmp_path / "figs" / "workload.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert b"<svg" in out.with_suffix(".svg").read_bytes()[:500]
    assert analysis.FIGURES["workload"] is analysis.workload_figure
    summary = workload.summary_table(tmp_path)
    assert "MOS" in summary and "flow completion" in summary and "bulk goodput" in summary
    assert "adaptive playout" in summary
    # the flagged point is named, with what saturated it (no CPU columns: the machine)
    assert summary.endswith("CPU SATURATED (a process >= 90 % of a core, or the machine >= 90 % "
                            "of its cores): tunnel bulk-parallel run 1 (machine)")  # fmt: skip


def test_a_run_from_before_the_adaptive_playout_buffer_loads_and_draws(tmp_path: Path) -> None:
    """workload_calls.csv as the committed runs wrote it: no adaptive columns, no failure."""
    assert set(VOIP_ADAPTIVE_COLUMNS) <= set(WORKLOAD_CALLS.optional)
    assert {"mos_adaptive", "late_adaptive_pct"} <= set(WORKLOAD.optional)
    old_calls = Table(
        "workload_calls",
        tuple(c for c in WORKLOAD_CALLS.columns if c not in VOIP_ADAPTIVE_COLUMNS),
    )
    old_points = Table("workload", tuple(c for c in WORKLOAD.columns if "adaptive" not in c))
    write(tmp_path, old_points, [{"mode": "plain", "workload": "voip-bulk", "run": 1}])
    call = {"mode": "plain", "workload": "voip-bulk", "run": 1, "call": 0, "mos": 1.0,
            "owd_median_ms": 260, "owd_p95_ms": 310}  # fmt: skip
    write(tmp_path, old_calls, [call])
    assert "mos_adaptive" not in analysis.load_workload_calls(tmp_path).columns
    out = analysis.workload_figure(tmp_path, tmp_path / "w.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    summary = workload.summary_table(tmp_path)
    assert "adaptive" not in summary and "SATURATED" not in summary


def test_a_run_with_only_calls_still_draws(tmp_path: Path) -> None:
    write(tmp_path, WORKLOAD, [{"mode": "plain", "workload": "voip", "run": 1}])
    call = {"mode": "plain", "workload": "voip", "run": 1, "call": 0, "mos": 4.4,
            "owd_median_ms": 20, "owd_p95_ms": 25}  # fmt: skip
    write(tmp_path, WORKLOAD_CALLS, [call])
    out = analysis.workload_figure(tmp_path, tmp_path / "w.png")  # no flows table at all
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_point_columns_from_calls_and_flows() -> None:
    calls = [{"mos": 4.0, "r_factor": 80.0, "owd_median_ms": 30.0, "jitter_ms": 1.0,
              "loss_pct": 0.0, "late_pct": 0.0},
             {"mos": 2.0, "r_factor": 40.0, "owd_median_ms": 50.0, "jitter_ms": 3.0,
              "loss_pct": 2.0, "late_pct": 4.0}]  # fmt: skip
    row = workload.call_summary(calls)
    assert row["calls"] == 2 and row["mos"] == 3.0 and row["late_pct"] == 2.0
    assert row["mos_adaptive"] is None  # calls scored before the adaptive buffer: no column
    calls[0] |= {"mos_adaptive": 4.2, "late_adaptive_pct": 0.5}
    calls[1] |= {"mos_adaptive": 3.0, "late_adaptive_pct": 1.5}
    row = workload.call_summary(calls)
    assert row["mos_adaptive"] == pytest.approx(3.6) and row["late_adaptive_pct"] == 1.0
    assert workload.call_summary([]) == {}
    flows = [{"fct_ms": float(10 * k), "outcome": "ok"} for k in range(1, 21)]
    flows.append({"fct_ms": 5.0, "outcome": "reset"})  # never completed: above every time
    row = workload.fetch_summary(flows)
    assert (row["flows"], row["flows_ok"], row["fct_median_ms"], row["fct_p95_ms"]) == (
        21, 20, 110.0, 200.0,
    )  # fmt: skip
    # the tail on the failures: the p95 has no value (it read the whole ones' 620 ms before)
    stalled = [{"fct_ms": 100.0 + k, "outcome": "ok"} for k in range(56)]
    stalled += [{"fct_ms": 15500.0, "outcome": "stalled"}] * 4
    row = workload.fetch_summary(stalled)
    assert row["fct_p95_ms"] is None and row["fct_median_ms"] == pytest.approx(129.5)


def test_cpu_row_counts_the_load_in_saturation() -> None:
    meter = CpuMeter()
    meter.first = {"sender": (0.0, 0.0), "load_sender": (0.0, 0.0)}
    meter.last = {"sender": (1.0, 0.05), "load_sender": (1.0, 0.95)}
    meter.pids = {"sender": 1, "load_sender": 2}
    row = workload.cpu_row(meter)
    assert row["cpu_sender_pct"] == pytest.approx(5.0)
    assert row["cpu_load_sender_pct"] == pytest.approx(95.0)
    assert row["cpu_busiest"] == "load_sender" and row["cpu_saturated"] is True


def test_parameters_are_checked_in_one_sentence() -> None:
    exp = workload.EXPERIMENT
    assert len(exp.points(resolve_params(exp, quick=True))) == 12  # 2 modes x 6 workloads
    bad_values = ('workloads=["movie"]', 'access_profile="moon"', "calls=0", "web_s=0")
    for bad in (*bad_values, "playout_adjust_s=0"):
        with pytest.raises(ExperimentError):
            exp.points(resolve_params(exp, sets=[bad]))


def test_the_qtun_modes_run_once_per_queue_aqm_and_the_others_once() -> None:
    """queue_aqm=["codel", "off"]: each qtun mode twice, with CoDel and with tail drop set at
    both ends; plain and WireGuard once, "n/a" (no tunnel queue). An unknown AQM is refused."""
    exp = workload.EXPERIMENT
    sets = ['modes=["plain", "tunnel", "stream"]', 'workloads=["bulk-parallel"]', "runs=1"]
    both = resolve_params(exp, sets=[*sets, 'queue_aqm=["codel", "off"]'])
    assert [(p["mode"], p["queue_aqm"]) for p in exp.points(both)] == [
        ("plain", "n/a"),
        ("tunnel", "codel"),
        ("tunnel", "off"),
        ("stream", "codel"),
        ("stream", "off"),
    ]
    default = exp.points(resolve_params(exp, sets=sets))
    assert [p["queue_aqm"] for p in default] == ["n/a", "off", "off"]
    with pytest.raises(ExperimentError, match="unknown queue_aqm red"):
        exp.points(resolve_params(exp, sets=[*sets, 'queue_aqm=["red"]']))
    spec = variants.aqm_spec("stream", "codel")
    assert spec is not None and spec.stream
    assert spec.client_overrides == spec.concentrator_overrides == ("limits.queue_aqm=codel",)
    assert variants.aqm_spec("plain", "n/a") is None


def test_a_qtun_mode_under_codel_is_drawn_and_summarised_beside_tail_drop(tmp_path: Path) -> None:
    """Rows with queue_aqm codel become "<mode> codel" in every loader, so the bulk panel has
    a bar of its own for it; a run from before the column keeps its modes' names."""
    points = []
    flows = []
    cells = (("plain", "n/a", 5.0), ("tunnel", "off", 3.0), ("tunnel", "codel", 4.0))
    for mode, aqm, share in cells:
        points.append({"mode": mode, "queue_aqm": aqm, "workload": "bulk-parallel", "run": 1,
                       "flows": 2, "flows_ok": 2, "goodput_mbps": 2 * share,
                       "jain_fairness": 1.0, "cpu_saturated": False})  # fmt: skip
        for k in range(2):
            flows.append({"mode": mode, "queue_aqm": aqm, "workload": "bulk-parallel", "run": 1,
                          "flow": k, "kind": "bulk", "bytes": 10**6, "goodput_mbps": share,
                          "outcome": "ok"})  # fmt: skip
    write(tmp_path, WORKLOAD, points)
    write(tmp_path, WORKLOAD_FLOWS, flows)
    loaded = analysis.load_workload(tmp_path)
    assert list(loaded["mode"]) == ["plain", "tunnel", "tunnel codel"]
    assert sorted(set(analysis.load_workload_flows(tmp_path)["mode"])) == [
        "plain",
        "tunnel",
        "tunnel codel",
    ]
    summary = workload.summary_table(tmp_path)
    assert "tunnel codel" in summary and "8.0" in summary
    png = analysis.workload_figure(tmp_path, tmp_path / "w.png")
    assert png.read_bytes().startswith(PNG_MAGIC)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    write(legacy, WORKLOAD, [{k: v for k, v in points[1].items() if k != "queue_aqm"}])
    assert list(analysis.load_workload(legacy)["mode"]) == ["tunnel"]


def test_a_call_without_its_senders_count_is_judged_against_its_length() -> None:
    """20 ms packets: an 8 s call holds 400. A missing or zero count ("no receiver asked")
    read 0 % loss beside a MOS of 1."""
    assert workload.sent_counts([390, 0], 2, 8.0) == [390, 400]
    assert workload.sent_counts(None, 2, 8.0) == [400, 400]


def test_jain_is_over_every_connection_asked_for() -> None:
    """3 of 4 connections opened, equal: Jain's index 0.75, not 1.0."""
    flows = workload.bulk_flows([100, 100, 100], 4, 30.0)
    assert [f["outcome"] for f in flows] == ["ok", "ok", "ok", "nothing carried"]
    assert [f["goodput_mbps"] for f in flows] == [10.0, 10.0, 10.0, 0.0]
    assert jain_index([f["goodput_mbps"] for f in flows]) == pytest.approx(0.75)
