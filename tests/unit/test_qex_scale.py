"""The scale experiment without a testbed: its points, parameter checks, arithmetic and summary."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from experiments import analysis, procstat, scale
from experiments.runner import ExperimentError, Point, get_experiment, resolve_params
from experiments.traffic import jain_index
from tests.unit.test_analysis import write_scale_run

PROC_STAT = """cpu  100 0 50 800 50 0 0 0 0 0
cpu0 50 0 25 400 25 0 0 0 0 0
cpu1 50 0 25 400 25 0 0 0 0 0
intr 12345
ctxt 678
"""


def test_points_full_and_quick() -> None:
    exp = get_experiment("scale")
    full = exp.points(resolve_params(exp))
    assert [(p["clients"], p["run"]) for p in full[:4]] == [(1, 1), (1, 2), (1, 3), (5, 1)]
    assert len(full) == 5 * 3 and {p["mode"] for p in full} == {"tunnel"}
    assert max(p["clients"] for p in full) == 50
    quick = exp.points(resolve_params(exp, quick=True))
    assert [p["clients"] for p in quick] == [1, 5, 10]
    keys = {p.key(exp.key_columns) for p in full}
    assert len(keys) == len(full)  # resume relies on one key per point


def test_session_mode_and_config_file(tmp_path: Path) -> None:
    exp = get_experiment("scale")
    config = tmp_path / "scale.toml"
    config.write_text('[scale]\nmode = "session"\nclients = [2, 4]\nruns = 2\n')
    points = exp.points(resolve_params(exp, config=config))
    assert [(p["mode"], p["clients"], p["run"]) for p in points] == [
        ("session", 2, 1),
        ("session", 2, 2),
        ("session", 4, 1),
        ("session", 4, 2),
    ]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (['mode="stream"'], "unknown mode 'stream'; choose from tunnel, session, plain"),
        (["clients=[]"], "non-empty list"),
        (["clients=[0, 5]"], "clients 0: each count must be an integer from 1 to 50"),
        (["clients=[51]"], "from 1 to 50"),
        (['clients=["ten"]'], "clients ten"),
        (["clients=[2.5]"], "clients 2.5"),
        (["clients=[true]"], "clients True"),
        (["clients=[5, 5]"], "count twice"),
        (["warmup_s=20.0"], "warmup_s < duration_s"),
        (["duration_s=1000.0"], "duration_s <= 600"),
        (["uplink_mbit=0.0"], "uplink_mbit must be > 0"),
        (["start_timeout_s=-1.0"], "start_timeout_s must be > 0"),
        (["clients=5"], "parameter clients must be a list"),
        (["clients_per_process=0"], "clients_per_process must be an integer >= 1"),
        (["clients_per_process=true"], "clients_per_process must be an integer >= 1"),
        (["conc_txqueuelen=-1"], "conc_txqueuelen must be an integer from 0 to 100000"),
        (["conc_txqueuelen=true"], "conc_txqueuelen must be an integer from 0 to 100000"),
    ],
)
def test_bad_parameters_get_one_sentence(sets: list[str], message: str) -> None:
    exp = get_experiment("scale")
    with pytest.raises(ExperimentError, match=message) as info:
        exp.points(resolve_params(exp, sets=sets))
    assert "\n" not in str(info.value)


def test_clients_per_process_is_a_column_of_every_point() -> None:
    exp = get_experiment("scale")
    points = exp.points(resolve_params(exp, sets=["clients=[2]", "clients_per_process=25"]))
    assert {p["clients_per_process"] for p in points} == {25}
    assert "clients_per_process" in exp.tables["scale"]


def test_conc_txqueuelen_is_a_column_and_a_concentrator_setting() -> None:
    exp = get_experiment("scale")
    points = exp.points(resolve_params(exp, sets=["clients=[2]", "conc_txqueuelen=5000"]))
    assert {p["conc_txqueuelen"] for p in points} == {5000}
    assert "conc_txqueuelen" in exp.tables["scale"]


def test_jain_index() -> None:
    assert jain_index([10.0]) == 1.0
    assert jain_index([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert jain_index([9.0, 0.0, 0.0]) == pytest.approx(1 / 3)  # one client has it all
    # (1 + 3)^2 / (2 * (1 + 9)) = 16 / 20
    assert jain_index([1.0, 3.0]) == pytest.approx(0.8)
    assert jain_index([]) is None
    assert jain_index([0.0, 0.0]) is None


def test_cpu_and_memory_readers() -> None:
    assert procstat.cpu_pct(10.0, 13.0, 4.0) == 75.0
    with pytest.raises(ValueError):
        procstat.cpu_pct(0.0, 1.0, 0.0)
    before = procstat.host_cpu_times(PROC_STAT)
    assert before == (150, 1000, 2)  # idle + iowait = 850 of 1000 jiffies
    later = PROC_STAT.replace("cpu  100 0 50 800 50", "cpu  200 0 100 850 50", 1)
    after = procstat.host_cpu_times(later)
    # 150 busy of 200 jiffies over 2 cores: 1.5 cores busy = 150 % of one core
    assert procstat.host_busy_pct(before, after) == pytest.approx(150.0)
    assert procstat.host_busy_pct(before, before) is None
    status = "Name:\tqtun\nVmPeak:\t  99999 kB\nVmRSS:\t   51200 kB\nThreads:\t1\n"
    assert procstat.rss_mb(status) == 50.0
    with pytest.raises(ValueError, match="VmRSS"):
        procstat.rss_mb("Name:\tkthreadd\n")


def test_this_process_is_sampled() -> None:
    rss, fds, cpu = procstat.proc_sample(os.getpid()) or (0.0, 0, -1.0)
    assert rss > 1 and fds >= 3 and cpu >= 0
    assert procstat.proc_sample(2**22 + 1) is None  # above pid_max's default: never a process


def test_point_rows_one_per_client() -> None:
    point = Point({"mode": "tunnel", "clients": 2, "run": 1})
    measured = {"conc_cpu_pct": 90.0, "conc_rss_mb": 60.0, "conc_rss_idle_mb": 55.0}
    rows = scale.point_rows(point, [10.0, 30.0], ["", "recv: reset"], measured)
    assert [r["client"] for r in rows] == ["c1", "c2"]
    assert [r["goodput_mbps"] for r in rows] == [10.0, 30.0]
    assert rows[1]["error"] == "recv: reset"
    assert [r["jain_fairness"] for r in rows] == [pytest.approx(0.8)] * 2
    assert rows[0]["conc_rss_per_client_kb"] == 60.0 * 1024 / 2
    assert set(rows[0]) <= set(scale.COLUMNS)
    assert set(analysis.SCHEMAS["scale"]) <= set(scale.COLUMNS)


def test_scale_summary_per_client_count(tmp_path: Path) -> None:
    write_scale_run(tmp_path)
    summary = analysis.scale_summary(analysis.load_scale(tmp_path))
    assert summary["clients"].tolist() == [1, 2, 4]
    two = summary[summary["clients"] == 2].iloc[0]
    assert two["runs"] == 2
    # run 1: 40 + 40, run 2: 20 + 60 -> totals 80, 80; Jain 1.0 and 0.8
    assert two["goodput_total_mbps"] == 80.0  # the median over runs
    assert math.isnan(two["goodput_total_mbps_lo"])  # no exact 95 % interval under 6 runs
    assert two["goodput_per_client_mbps"] == 40.0
    assert (two["goodput_min_mbps"], two["goodput_max_mbps"]) == (20.0, 60.0)
    assert two["jain_fairness"] == pytest.approx(0.9)
    assert two["conc_cpu_pct"] == 80.0 and two["conc_cpu_per_client_pct"] == 40.0
    assert two["conc_rss_per_client_kb"] == pytest.approx(two["conc_rss_mb"] * 512)
    one = summary[summary["clients"] == 1].iloc[0]
    assert one["runs"] == 1 and math.isnan(one["goodput_total_mbps_hi"])
    slope_kb, intercept_mb = analysis.rss_fit(summary) or (0.0, 0.0)
    assert slope_kb == pytest.approx(1024.0) and intercept_mb == pytest.approx(50.0)


def test_summary_table_prints_per_client_count(tmp_path: Path) -> None:
    write_scale_run(tmp_path)
    text = scale.summary_table(tmp_path)
    assert "jain_fairness" in text and "conc_rss_per_client_kb" in text
    assert "uplink shaped at 500 Mbit/s" in text
    assert scale.summary_table(tmp_path / "nothing") == "no scale rows"
