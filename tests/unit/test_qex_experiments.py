"""The experiments' point sets and shipped config files (no testbed needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.runner import EXPERIMENTS, ExperimentError, get_experiment, resolve_params

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_resolve(config: Path) -> None:
    exp = get_experiment(config.stem)
    params = resolve_params(exp, config=config)
    assert exp.points(params)


def test_failover_points_and_quick() -> None:
    exp = get_experiment("failover")
    full = exp.points(resolve_params(exp))
    assert len(full) == 7 * 2 * 2 * 3
    quick = resolve_params(exp, quick=True)
    assert quick["duration_s"] <= 12 and quick["down_at_s"] < quick["up_at_s"]
    assert [p["variant"] for p in exp.points(quick)][:2] == ["plain", "mptcp"]
    keys = {p.key(exp.key_columns) for p in full}
    assert len(keys) == len(full)  # every point has its own key (resume relies on it)


@pytest.mark.parametrize(
    ("name", "sets", "message"),
    [
        ("failover", ['variants=["nope"]'], "unknown variants nope"),
        ("failover", ["down_at_s=50.0"], "down_at_s < up_at_s"),
        ("goodput", ['transports=["tcp-vegas"]'], "unknown transports"),
        ("aggregation", ['schedulers=["random"]'], "unknown schedulers"),
    ],
)
def test_bad_sweeps_are_refused(name: str, sets: list[str], message: str) -> None:
    exp = get_experiment(name)
    with pytest.raises(ExperimentError, match=message):
        exp.points(resolve_params(exp, sets=sets))


def test_goodput_and_aggregation_points() -> None:
    goodput = get_experiment("goodput")
    points = goodput.points(resolve_params(goodput))
    assert len(points) == 5 * 3 * 5 * 3 * 3
    assert {(p["transport"], p["cc"]) for p in points} == {
        ("tcp", "cubic"),
        ("tcp", "bbr"),
        ("udp", ""),
    }
    aggregation = get_experiment("aggregation")
    points = aggregation.points(resolve_params(aggregation, runs=1))
    assert [(p["variant"], p["scheduler"], p["reorder"]) for p in points] == [
        ("session", "wrr", True),
        ("session", "wrr", False),
        ("session", "lowest-rtt", True),
        ("session", "lowest-rtt", False),
        ("mptcp", "default", ""),
    ]


def test_every_registered_experiment_loads() -> None:
    for name in EXPERIMENTS:
        assert get_experiment(name).name == name
