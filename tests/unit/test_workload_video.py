"""The workload experiment's video part without a lab (experiments/workload.py video_summary,
its parameters, experiments/analysis.py's video figure) from a synthetic run: no root."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from experiments import analysis, workload
from experiments.runner import ExperimentError, resolve_params
from experiments.schemas import VIDEO_SESSION_COLUMNS, WORKLOAD, WORKLOAD_SEGMENTS, Table
from experiments.video_abr import segment_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(run: Path, table: Table, rows: list[dict[str, Any]]) -> None:
    with (run / table.file_name).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table.columns))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def segment(k: int, arrival_s: float, rate: float) -> dict[str, Any]:
    return {"segment": k, "rate_mbps": rate, "bytes": segment_bytes(rate),
            "request_s": arrival_s - 0.3, "arrival_s": arrival_s, "download_ms": 300.0,
            "throughput_mbps": 20.0, "buffer_s": 0.0}  # fmt: skip


def test_the_point_row_is_the_session_metrics_of_its_segments() -> None:
    # 1 Mbit/s at 0.5 s, 5 Mbit/s only at 3.0 s: a stall from 2.5 s to 3.0 s
    segments = [segment(0, 0.5, 1.0), segment(1, 3.0, 5.0), segment(2, 3.2, 5.0)]
    row = workload.video_summary(segments, 6.0, {"abandoned": 1, "errors": 0})
    assert set(row) == set(VIDEO_SESSION_COLUMNS)
    assert row["video_segments"] == 3 and row["video_startup_s"] == 0.5
    assert row["video_stalls"] == 1 and row["video_stall_s"] == pytest.approx(0.5)
    assert row["video_switches"] == 1 and row["video_abandoned"] == 1
    assert row["video_bitrate_mbps"] == pytest.approx((2 * 1.0 + 3 * 5.0) / 5)


def test_video_is_a_workload_and_its_parameters_are_checked() -> None:
    exp = workload.EXPERIMENT
    points = exp.points(resolve_params(exp, quick=True, sets=['workloads=["video"]']))
    assert [p["workload"] for p in points] == ["video", "video"]  # plain and tunnel
    assert resolve_params(exp, quick=True)["video_s"] == 20.0
    for bad in ("video_s=0", "video_buffer_s=1.0"):
        with pytest.raises(ExperimentError):
            exp.points(resolve_params(exp, sets=[bad]))


def test_runs_before_the_video_workload_still_load() -> None:
    assert set(VIDEO_SESSION_COLUMNS) <= set(WORKLOAD.optional)


def synthetic_run(run: Path, video: bool) -> None:
    points, segments = [], []
    for mode in ("plain", "tunnel"):
        points.append({"mode": mode, "workload": "bulk-parallel", "run": 1, "flows": 4,
                       "goodput_mbps": 18.0, "jain_fairness": 0.9})  # fmt: skip
        if not video:
            continue
        for run_number in (1, 2):
            mine = [segment(k, 0.4 + 2 * k, 1.0 if k == 0 else 8.0) for k in range(6)]
            segments += [{"mode": mode, "workload": "video", "run": run_number, **s} for s in mine]
            row = workload.video_summary(mine, 12.0, {"abandoned": 0, "errors": 0})
            points.append({"mode": mode, "workload": "video", "run": run_number, **row,
                           "cpu_saturated": mode == "tunnel"})  # fmt: skip
    write(run, WORKLOAD, points)
    if segments:
        write(run, WORKLOAD_SEGMENTS, segments)


def test_the_workload_figure_brings_the_video_figure_beside_it(tmp_path: Path) -> None:
    synthetic_run(tmp_path, video=True)
    out = analysis.workload_figure(tmp_path, tmp_path / "figs" / "workload.png")
    video = tmp_path / "figs" / "workload-video.png"
    assert analysis.video_figure_path(out) == video
    assert video.read_bytes().startswith(PNG_MAGIC)
    assert b"<svg" in video.with_suffix(".svg").read_bytes()[:500]
    assert "video bitrate" in workload.summary_table(tmp_path)


def test_a_run_without_video_has_no_video_figure(tmp_path: Path) -> None:
    synthetic_run(tmp_path, video=False)
    out = analysis.workload_figure(tmp_path, tmp_path / "workload.png")
    assert out.exists() and not analysis.video_figure_path(out).exists()
    # drawn on its own, it says there is nothing to draw rather than failing
    alone = analysis.workload_video_figure(tmp_path, tmp_path / "v.png")
    assert alone.read_bytes().startswith(PNG_MAGIC)
