"""The experiments' point sets, shipped config files and variants (no testbed needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments import failover, variants
from experiments.runner import EXPERIMENTS, ExperimentError, get_experiment, resolve_params
from testbed.lab import Lab
from testbed.paths import EXPERIMENT_CONFIGS


@pytest.mark.parametrize("config", sorted(EXPERIMENT_CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
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


@pytest.fixture()
def plan_lab() -> Iterator[Lab]:
    lab = Lab("reference")  # not started: only its Plan is used
    yield lab
    lab.state.finish()


def test_variants_route_from_the_addressing_plan(plan_lab: Lab, tmp_path: Path) -> None:
    assert variants.plain(plan_lab).route == variants.Route("conc", "10.100.0.1")
    vpn = variants.WireGuard(plan_lab, tmp_path)
    assert vpn.route() == variants.Route("conc", variants.WG_CONCENTRATOR, variants.WG_PORT)
    to_servers = variants.WireGuard(plan_lab, tmp_path, to_servers=True)
    assert to_servers.route() == variants.Route("srv1", "10.200.1.2", variants.WG_PORT)
    assert {vpn.ifname(n) for n in vpn.nodes} == {"qexwg-conc", "qexwg-c1"}
    assert all(len(vpn.ifname(n)) <= 15 for n in vpn.nodes)


def test_modes_keep_one_running(plan_lab: Lab, tmp_path: Path) -> None:
    meta: dict[str, object] = {}
    modes = variants.Modes(plan_lab, tmp_path, meta)
    route = modes.ensure("plain")
    assert route.outer_udp_port is None and modes.mode == "plain"
    assert modes.ensure("plain", fresh=True) is route  # plain has no connection to renew
    assert modes.starts == 1
    with pytest.raises(ValueError, match="unknown mode 'ipsec'"):
        modes.ensure("ipsec")
    assert modes.mode is None and meta == {}
    specs = {m: variants.mode_spec(m) for m in variants.QTUN_MODES}
    assert [(s.mode, s.stream) for s in specs.values()] == [
        ("tunnel", False),
        ("session", False),
        ("session", True),
    ]


def test_failover_variants_have_a_setup_each() -> None:
    assert set(failover.SETUPS) == set(failover.VARIANTS)
    spec = failover.QTUN_SPECS["stream-migration"]
    assert spec.stream and spec.client_overrides == ('stream.intercept=["10.200.0.0/16"]',)
    assert failover.qtun_missing("stream-migration") is None
