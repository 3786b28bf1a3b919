"""Topology registry and addressing plans: plain data, no root and no Mininet needed."""

from __future__ import annotations

import pytest

from testbed.profiles import profile
from testbed.topologies import (
    CONCENTRATOR_V4,
    SERVERS_V4,
    TOPOLOGIES,
    TopologyError,
    client_access_addresses,
    make_topology,
    server_addresses,
)


def test_registry_names_and_unknown_name() -> None:
    assert {"reference", "nclient", "pair"} <= set(TOPOLOGIES)
    with pytest.raises(TopologyError, match="unknown topology 'star'"):
        make_topology("star")
    with pytest.raises(TopologyError, match="bad parameter"):
        make_topology("reference", clients=3)


def test_reference_topology_graph() -> None:
    plan = make_topology("reference", servers=2).plan
    assert set(plan.hosts) == {"c1", "wwifi", "w5g", "rwifi", "r5g", "conc", "srv1", "srv2"}
    assert len(plan.hosts) == len(set(plan.hosts))
    linked = {n for link in plan.links for n in (link.node_a, link.node_b)}
    assert linked == set(plan.hosts)  # every node is wired, and only to nodes of the plan
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


def test_a_profile_for_a_link_the_topology_has_not_is_refused() -> None:
    """`--profile WiFi=lte` (a capital letter) built the default WiFi link without a word."""
    with pytest.raises(TopologyError, match=r"no link 'WiFi': give profiles for wifi or 5g"):
        make_topology("reference", profiles={"WiFi": profile("lte")})
    with pytest.raises(TopologyError, match=r"no link 'wifi': give profiles for link"):
        make_topology("pair", profiles={"wifi": profile("lossy")})
    with pytest.raises(TopologyError, match="no link 'link'"):
        make_topology("nclient", clients=2, profiles={"link": profile("lossy")})


def test_nclient_shares_routers_and_shapes_uplinks_once() -> None:
    plan = make_topology("nclient", clients=50).plan
    assert len(plan.clients) == 50
    assert set(plan.shaped) == {"wwifi", "w5g"}
    assert len(plan.hosts) == 50 + 2 + 2 + 1 + 1
    assert {a.shaped for a in plan.accesses} == {"wwifi", "w5g"}
    # Interface names fit the kernel's 15 characters, and none is used twice on a node.
    ends = [(link.node_a, link.intf_a) for link in plan.links]
    ends += [(link.node_b, link.intf_b) for link in plan.links]
    assert all(len(intf) <= 15 for _, intf in ends)
    assert len(ends) == len(set(ends))


def test_client_counts_are_bounded() -> None:
    with pytest.raises(TopologyError, match="between 1 and 250"):
        make_topology("nclient", clients=0)


def test_the_addressing_plan_is_what_the_plan_holds() -> None:
    plan = make_topology("nclient", clients=3, servers=2).plan
    access = plan.access("5g", "c3")
    assert access is not None and access.kind == "5g"
    assert (access.client_v4, access.client_v6) == client_access_addresses(3, "5g")
    assert client_access_addresses(3, "5g") == ("10.2.3.2", "fd00:2:3::2")
    assert plan.server_addrs["srv2"] == server_addresses(2) == ("10.200.2.2", "fd00:200:2::2")
    assert plan.server_address() == "10.200.1.2"
    assert plan.server_address("srv2", family=6) == "fd00:200:2::2"
    assert plan.access("lte") is None
    assert all(v4.startswith(SERVERS_V4.split(".0.0/")[0]) for v4, _ in plan.server_addrs.values())


def test_the_pair_link_is_reported_as_a_wifi_access() -> None:
    plan = make_topology("pair").plan
    (access,) = plan.accesses
    assert (access.name, access.kind, access.client) == ("link", "wifi", "h1")
    assert plan.server_address() == "10.0.0.2"
