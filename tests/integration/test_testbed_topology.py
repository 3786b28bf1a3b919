"""The reference and N-client topologies in real Mininet: reachability as designed, no more."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.lab import Lab
from tests.integration.lab_fixtures import lossless_lab
from tests.integration.netns import wait_until

pytestmark = [pytest.mark.root, pytest.mark.mininet]


def replies(node: Any, dst: str, src: str | None = None, count: int = 3) -> int:
    opt = f"-I {src} " if src else ""
    out = str(node.cmd(f"ping -n -c {count} -i 0.2 -W 2 {opt}{dst}"))
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module")
def reference() -> Iterator[Lab]:
    with lossless_lab(servers=2) as lab:  # reachability checks then deterministic
        yield lab


@pytest.mark.parametrize(
    "src,dst",
    [
        ("10.1.1.2", "10.100.0.1"),
        ("10.2.1.2", "10.100.0.1"),
        ("fd00:1:1::2", "fd00:100::1"),
        ("fd00:2:1::2", "fd00:100::1"),
    ],
)
def test_client_reaches_concentrator_over_each_access_and_family(
    reference: Lab, src: str, dst: str
) -> None:
    assert replies(reference.node("c1"), dst, src) >= 2


def test_concentrator_reaches_every_server(reference: Lab) -> None:
    conc = reference.node("conc")
    for v4, v6 in reference.plan.server_addrs.values():
        assert replies(conc, v4, count=2) >= 1
        assert replies(conc, v6, count=2) >= 1


def test_client_cannot_reach_a_server(reference: Lab) -> None:
    c1 = reference.node("c1")
    v4, v6 = reference.plan.server_addrs["srv1"]
    assert "unreachable" in str(c1.cmd(f"ping -c1 -W1 {v4}")).lower()
    assert replies(c1, v6, count=1) == 0
    # Even a client that adds its own default route gets nowhere: the access routers
    # have no route to the servers.
    c1.cmd("ip route add default via 10.1.1.1; ip -6 route add default via fd00:1:1::1")
    try:
        assert replies(c1, v4, count=2) == 0
        assert replies(c1, v6, count=2) == 0
    finally:
        c1.cmd("ip route del default; ip -6 route del default")


def test_wifi_down_falls_over_to_5g_and_comes_back(reference: Lab) -> None:
    c1 = reference.node("c1")
    reference.access_down("wifi")
    try:
        link = str(c1.cmd("ip -br link show c1-wifi"))
        assert "NO-CARRIER" in link or "DOWN" in link
        # Bound to the WiFi address: nothing goes through.
        assert replies(c1, "10.100.0.1", "10.1.1.2", count=2) == 0
        # Unbound: the linkdown route is ignored, 5G carries it.
        assert replies(c1, "10.100.0.1", count=2) >= 1
    finally:
        reference.access_up("wifi")
    wait_until("c1-wifi LOWER_UP", lambda: "LOWER_UP" in str(c1.cmd("ip link show c1-wifi")))
    assert replies(c1, "10.100.0.1", "10.1.1.2") >= 2
    assert replies(c1, "fd00:100::1", "fd00:1:1::2") >= 2


def test_nclient_with_50_clients_builds_and_routes() -> None:
    lab = Lab("nclient", clients=50)
    try:
        lab.start()
        print(f"nclient N=50 build: {lab.build_seconds:.2f} s, {len(lab.net.hosts)} nodes")
        assert len(lab.plan.clients) == 50
        for k in (1, 50):
            node = lab.node(f"c{k}")
            assert replies(node, "10.100.0.1", f"10.2.{k}.2") >= 1
            assert replies(node, "fd00:100::1", f"fd00:1:{k}::2") >= 1
        assert replies(lab.node("c50"), "10.200.1.2", count=1) == 0
    finally:
        lab.stop()


def test_tcp_metrics_cache_is_off_on_every_host(reference: Lab) -> None:
    # a connection must not start from the ssthresh a previous (lossy) one left behind
    hosts = reference.net.hosts
    assert len(hosts) >= 5
    for host in hosts:
        assert host.cmd("sysctl -n net.ipv4.tcp_no_metrics_save").strip() == "1", host.name
