"""Topology registry and addressing plans, built as Mininet graphs only (no root needed)."""

from __future__ import annotations

import pytest

from testbed.profiles import profile
from testbed.topologies import (
    CONCENTRATOR_V4,
    TOPOLOGIES,
    TopologyError,
    make_topology,
)


def test_registry_names_and_unknown_name() -> None:
    assert {"reference", "nclient", "pair"} <= set(TOPOLOGIES)
    with pytest.raises(TopologyError, match="unknown topology 'star'"):
        make_topology("star")
    with pytest.raises(TopologyError, match="bad parameter"):
        make_topology("reference", clients=3)


def test_reference_topology_graph() -> None:
    topo = make_topology("reference", servers=2)
    plan = topo.plan
    assert set(topo.hosts()) == {"c1", "wwifi", "w5g", "rwifi", "r5g", "conc", "srv1", "srv2"}
    assert topo.switches() == []
    assert {a.name for a in plan.accesses} == {"wifi", "5g"}
    assert set(plan.shaped) == {"wwifi", "w5g"}
    assert plan.shaped["wwifi"].profile_ab == profile("wifi")
    # Both address families on both accesses.
    lines = plan.ip_batch["c1"]
    for addr in ("10.1.1.2/24", "10.2.1.2/24"):
        assert any(line.startswith(f"addr add {addr}") for line in lines)
    for addr in ("fd00:1:1::2/64", "fd00:2:1::2/64"):
        assert any(line.startswith(f"-6 addr add {addr}") for line in lines)


def test_no_route_from_client_or_access_routers_to_servers() -> None:
    plan = make_topology("reference").plan
    for node in ("c1", "rwifi", "r5g"):
        routes = [line for line in plan.ip_batch[node] if "route add" in line]
        assert routes, node
        for line in routes:
            dst = line.split()[line.split().index("add") + 1]
            assert dst.split("/")[0] in (CONCENTRATOR_V4, "fd00:100::1"), (node, line)


def test_profiles_override_per_access() -> None:
    plan = make_topology("reference", profiles={"wifi": profile("lossy")}).plan
    assert plan.shaped["wwifi"].profile_ab == profile("lossy")
    assert plan.shaped["w5g"].profile_ab == profile("5g")


def test_nclient_shares_routers_and_shapes_uplinks_once() -> None:
    topo = make_topology("nclient", clients=50)
    plan = topo.plan
    assert len(plan.clients) == 50
    assert set(plan.shaped) == {"wwifi", "w5g"}
    assert len(topo.hosts()) == 50 + 2 + 2 + 1 + 1
    assert {a.shaped for a in plan.accesses} == {"wwifi", "w5g"}
    # Interface names fit the kernel's 15 characters.
    for _, _, info in topo.links(withInfo=True):
        assert len(info["intfName1"]) <= 15 and len(info["intfName2"]) <= 15


def test_client_counts_are_bounded() -> None:
    with pytest.raises(TopologyError, match="between 1 and 250"):
        make_topology("nclient", clients=0)
