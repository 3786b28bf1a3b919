"""testbed.qtun on the other topologies. N-client: every client gets its own certificate,
address and session, and reaches the server through the tunnel from that address. Pair (the
benchmark's): h1 reaches h2's own TUN address through either mode (where the concentrator
allows packets to its own host, as the benchmark does: to_concentrator = "allow")."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from experiments.bench import OWN_HOST_ALLOWED
from testbed.hosts import wait_listening
from testbed.lab import Lab
from testbed.qtun import QtunDeployment, TunnelSpec
from tests.integration.lab_fixtures import deployed, lossless_lab

pytestmark = [pytest.mark.root, pytest.mark.mininet]
CLIENTS = 3


@pytest.fixture(scope="module")
def deployment() -> Iterator[QtunDeployment]:
    with (
        lossless_lab("nclient", clients=CLIENTS) as lab,
        deployed(lab, TunnelSpec(mode="session"), timeout=40) as dep,
    ):
        yield dep


def test_every_client_has_its_own_session_and_address(deployment: QtunDeployment) -> None:
    def all_joined(status: dict[str, Any]) -> bool:
        # a client is ready with one connection; its second access joins moments later
        entries = status.get("clients", [])
        return len(entries) == CLIENTS and all(len(c["connections"]) == 2 for c in entries)

    conc = deployment.wait_for("conc", all_joined, timeout=20, what="both accesses joined")
    clients = {c["name"]: c for c in conc["clients"]}
    assert sorted(clients) == [f"c{k}" for k in range(1, CLIENTS + 1)]
    assert len({c["session_id"] for c in clients.values()}) == CLIENTS
    for name, entry in clients.items():
        assert f"{deployment.client_address(name, 4)}/32" in entry["addresses"]
        assert len(entry["connections"]) == 2  # WiFi and 5G joined


@pytest.mark.parametrize("family", [4, 6])
def test_every_client_reaches_the_server_from_its_tunnel_address(
    deployment: QtunDeployment, family: int
) -> None:
    server = deployment.lab.plan.server_addrs["srv1"][0 if family == 4 else 1]
    for name in deployment.clients:
        node = deployment.lab.node(name)
        source = deployment.client_address(name, family)
        out = str(node.cmd(f"ping -n -c 3 -i 0.1 -W 2 -I {source} {server}"))
        m = re.search(r"(\d+) received", out)
        assert m and int(m.group(1)) >= 2, f"{name}: {out}"


def test_after_a_concentrator_restart_every_client_is_back(deployment: QtunDeployment) -> None:
    deployment.restart_concentrator(timeout=60)  # returns once the concentrator has them all
    conc = deployment.status("conc")
    assert sorted(c["name"] for c in conc["clients"]) == deployment.clients
    server = deployment.lab.plan.server_addrs["srv1"][0]
    for name in deployment.clients:
        out = str(deployment.lab.node(name).cmd(f"ping -n -c 3 -i 0.2 -W 2 {server}"))
        m = re.search(r"(\d+) received", out)
        assert m and int(m.group(1)) >= 2, f"{name}: {out}"


@pytest.fixture(scope="module")
def pair() -> Iterator[Lab]:
    lab = Lab("pair")
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.mark.parametrize("mode", ["tunnel", "session"])
def test_pair_carries_tcp_to_the_concentrator_s_tun_address(pair: Lab, mode: str) -> None:
    # h2's TUN address is the concentrator host's own: allowed as the benchmark allows it
    spec = TunnelSpec(mode=mode, concentrator_overrides=OWN_HOST_ALLOWED)
    with QtunDeployment(pair, spec).start() as dep:
        assert dep.concentrator == "h2"
        server = pair.procs.start_iperf3_server(pair.node("h2"), port=5201, idle_timeout_s=20)
        try:
            wait_listening(pair.node("h2"), 5201, server)
            target = dep.concentrator_address(4)
            out = str(pair.node("h1").cmd(f"timeout 20 iperf3 -c {target} -t 1 -f m"))
        finally:
            pair.procs.stop(server)
        m = re.search(r"([\d.]+) Mbits/sec\s+receiver", out)
        assert m and float(m.group(1)) > 1, out
        assert f"local {dep.client_address('h1', 4)}" in out
