"""Scenarios in experiment runs (experiments/runner.py): `--scenario`, meta.json, the figure's
footer and `qtlab rerun` from the recorded text — on a toy experiment, no root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments import failover, goodput, runner
from experiments.analysis import run_conditions
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Point,
    PointResult,
    rerun,
    resolve_params,
    run_experiment,
    scenario_for_run,
    with_scenario,
)
from testbed.cli import main
from testbed.scenario import ScenarioError, load_scenario

MINE = """# a test scenario: a model
duration_s = 3
[[change]]
at_s = 1
access = "wifi"
carrier = "down"
"""


def toy(seen: list[Any]) -> Experiment[None]:
    """An experiment without a testbed that takes a scenario and notes what each point got."""

    def run_point(ctx: Context[None], point: Point) -> PointResult:
        scenario = ctx.scenario
        seen.append(None if scenario is None else (scenario.name, len(scenario.steps)))
        return PointResult(rows={"toy": [{"run": point["run"]}]})

    return Experiment(
        name="toy",
        defaults={"runs": 2, "seed": 1, "duration_s": 5.0, "scenario": ""},
        tables={"toy": ["run"]},
        key_columns=("run",),
        points=lambda p: [Point({"run": r}) for r in range(1, int(p["runs"]) + 1)],
        run_point=run_point,
    )


def test_a_run_records_its_scenario_and_reruns_it_without_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    exp = toy(seen)
    mine = tmp_path / "mine.toml"
    mine.write_text(MINE)
    params = with_scenario(exp, resolve_params(exp), str(mine))
    summary = run_experiment(exp, params, root=tmp_path / "results", progress=False)
    assert seen == [("mine", 1), ("mine", 1)]
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    recorded = meta["scenario"]
    assert recorded["given"] == str(mine) and recorded["name"] == "mine"
    assert recorded["toml"] == MINE and recorded["sha256"] == load_scenario(str(mine)).sha256
    assert recorded["accesses"] == ["wifi"] and recorded["steps"] == 1
    assert meta["parameters"]["scenario"] == str(mine)
    assert (summary.run_dir / "scenario.toml").read_text() == MINE
    assert "scenario mine" in run_conditions(summary.run_dir)

    mine.unlink()  # a rerun plays what the run recorded
    monkeypatch.setattr(runner, "get_experiment", lambda name: exp)
    _, again = rerun(summary.run_dir, tmp_path / "results", progress=False)
    assert seen[2:] == [("mine", 1), ("mine", 1)]
    meta_again = json.loads((again.run_dir / "meta.json").read_text())
    assert meta_again["scenario"]["toml"] == MINE


def test_a_run_without_a_scenario_records_none(tmp_path: Path) -> None:
    seen: list[Any] = []
    exp = toy(seen)
    summary = run_experiment(exp, resolve_params(exp), root=tmp_path, progress=False)
    assert seen == [None, None]
    assert "scenario" not in json.loads((summary.run_dir / "meta.json").read_text())
    assert "scenario" not in run_conditions(summary.run_dir)


def test_a_scenario_must_end_before_the_traffic_does() -> None:
    exp = toy([])
    params = with_scenario(exp, resolve_params(exp, sets=["duration_s=10"]), "5g-handovers")
    with pytest.raises(ExperimentError, match=r"lasts 10 s .* --set duration_s=12"):
        scenario_for_run(exp, params)
    assert scenario_for_run(exp, {**params, "duration_s": 10.5}) is not None


def test_an_experiment_without_the_parameter_takes_no_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exp = toy([])
    exp.defaults = {"runs": 1}
    with pytest.raises(ExperimentError, match="takes no --scenario"):
        with_scenario(exp, resolve_params(exp), "5g-handovers")
    assert main(["run", "latency", "--scenario", "5g-handovers"]) == 2
    assert "experiment latency takes no --scenario" in capsys.readouterr().err


def test_a_bad_scenario_is_said_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "failover", "--quick", "--scenario", "no-such"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qtlab: error: scenario 'no-such' is neither a file")
    assert err.count("\n") == 1


def test_goodput_takes_only_wifi_scenarios() -> None:
    exp = goodput.EXPERIMENT
    params = resolve_params(exp, sets=["duration_s=12"])
    with pytest.raises(ScenarioError, match="changes 5g, but goodput runs with c1's 5G access"):
        scenario_for_run(exp, with_scenario(exp, params, "train-tunnel"))
    assert scenario_for_run(exp, with_scenario(exp, params, "walk-out-of-wifi")) is not None


def test_failover_with_a_scenario_has_one_event_and_the_scenario_s_window() -> None:
    exp = failover.EXPERIMENT
    params = with_scenario(exp, resolve_params(exp, quick=True), "walk-out-of-wifi")
    points = exp.points(params)
    assert {p["event"] for p in points} == {"scenario"}
    assert len(points) == len(exp.points(resolve_params(exp, quick=True)))
    scenario = scenario_for_run(exp, params)
    assert failover.outage_window(params, scenario) == (2.0, 10.0)
    assert failover.outage_window(params, None) == (4.0, 8.0)


def test_a_resumed_run_plays_its_recorded_scenario(tmp_path: Path) -> None:
    seen: list[Any] = []
    exp = toy(seen)
    mine = tmp_path / "mine.toml"
    mine.write_text(MINE)
    params = with_scenario(exp, resolve_params(exp, runs=1), str(mine))
    first = run_experiment(exp, params, root=tmp_path, progress=False)
    mine.unlink()
    more = with_scenario(exp, resolve_params(exp, runs=2), str(mine))
    again = run_experiment(exp, more, resume=first.run_dir, progress=False)
    assert again.ran == 1 and again.already_done == 1
    assert seen == [("mine", 1), ("mine", 1)]
