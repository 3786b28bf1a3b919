"""limits.pmtu_discovery on the reference topology with a PMTU black hole on both accesses.

Each access router's links carry 1400-byte packets, and the routers drop
the ICMP errors that would say so (frag needed, Packet Too Big): a 1500-byte packet vanishes
without a word, as behind a tunnel or a firewall that filters ICMP. Without discovery the
tunnel's 1452-byte Initials never arrive (tests/unit/test_pmtu.py shows it in memory). With it
the handshake keeps to 1200 bytes, both ends find the size the path carries, and inner TCP gets
through both ways: the inner senders learn the smaller budget from the Packet Too Big the
client and the concentrator write into their TUNs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from testbed.hosts import HostProcess
from testbed.lab import Lab
from testbed.qtun import QtunDeployment, TunnelSpec
from tests.integration.lab_fixtures import deployed, iperf3_server, lossless_lab
from tests.integration.pmtu_lab import (
    LINK_MTU,
    PMTU,
    UDP_PAYLOAD_LIMIT,
    found_within,
    iperf3_bytes,
)

pytestmark = [pytest.mark.root, pytest.mark.mininet]

IPERF_PORT = 5201


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lossless_lab() as the_lab:
        for access in ("wifi", "5g"):
            router = f"r{access}"
            # both ways: a forwarded packet is checked against the MTU of the link it leaves by
            for link in (f"{router}-up", f"{router}-c1"):
                the_lab.run(router, f"ip link set {link} mtu {LINK_MTU}")
            # the black hole: no ICMP tells the senders (the namespace goes with the lab)
            the_lab.run(router, "nft add table inet qtlab_pmtu")
            the_lab.run(
                router,
                "nft add chain inet qtlab_pmtu out '{ type filter hook output priority 0; }'",
            )
            the_lab.run(
                router,
                "nft add rule inet qtlab_pmtu out icmp type destination-unreachable "
                "icmp code frag-needed drop",
            )
            the_lab.run(router, "nft add rule inet qtlab_pmtu out icmpv6 type packet-too-big drop")
        yield the_lab


@pytest.fixture(scope="module", params=["tunnel", "session"])
def dep(lab: Lab, request: pytest.FixtureRequest) -> Iterator[QtunDeployment]:
    spec = TunnelSpec(mode=request.param, client_overrides=PMTU, concentrator_overrides=PMTU)
    with deployed(lab, spec) as deployment:  # the handshake itself has to fit
        yield deployment


@pytest.fixture()
def iperf_server(lab: Lab) -> Iterator[HostProcess]:
    with iperf3_server(lab, IPERF_PORT, idle_timeout_s=30) as server:
        yield server


def client_found(status: dict[str, Any]) -> bool:
    """Every connection of the client (tunnel mode: one; session mode: one per access)."""
    connected = [a for a in status["accesses"] if a["connected"]]
    return bool(connected) and all(found_within(a["pmtu"]) for a in connected)


def concentrator_found(status: dict[str, Any]) -> bool:
    connections = [c for client in status["clients"] for c in client["connections"]]
    return bool(connections) and all(found_within(c["pmtu"]) for c in connections)


def all_pmtus(client: dict[str, Any], conc: dict[str, Any]) -> list[dict[str, Any]]:
    return [a["pmtu"] for a in client["accesses"] if a["connected"]] + [
        c["pmtu"] for cl in conc["clients"] for c in cl["connections"]
    ]


def wait_found(dep: QtunDeployment) -> tuple[dict[str, Any], dict[str, Any]]:
    client = dep.wait_for("c1", client_found, 20, "the client's path MTUs found")
    conc = dep.wait_for(dep.concentrator, concentrator_found, 20, "the concentrator's")
    return client, conc


def test_both_ends_find_the_size_the_path_carries(dep: QtunDeployment) -> None:
    client, conc = wait_found(dep)
    pmtus = all_pmtus(client, conc)
    assert len(pmtus) == (2 if dep.spec.mode == "tunnel" else 4)
    for pmtu in pmtus:
        print(f"\nPMTU: {pmtu}")
        # the search ends within its granularity (8 bytes) of what the path carries
        assert UDP_PAYLOAD_LIMIT - 8 <= pmtu["datagram_size"] <= UDP_PAYLOAD_LIMIT
        assert pmtu["rounds_lost"] >= 1


@pytest.mark.usefixtures("iperf_server")
def test_inner_tcp_gets_through_both_ways(lab: Lab, dep: QtunDeployment) -> None:
    wait_found(dep)
    too_big_before = int(dep.status("c1")["counters"].get("icmp_too_big_sent", 0))
    upload = iperf3_bytes(lab, IPERF_PORT, 3)
    download = iperf3_bytes(lab, IPERF_PORT, 3, "-R")
    print(f"\nthrough the black hole: upload {upload} B, download {download} B in 3 s each")
    assert upload > 0 and download > 0
    # the inner senders learnt the budget from the tunnel's Packet Too Big, not from the path
    assert int(dep.status("c1")["counters"].get("icmp_too_big_sent", 0)) > too_big_before
    conc_client = dep.status(dep.concentrator)["clients"][0]
    assert int(conc_client["counters"].get("packet_too_big_sent", 0)) > 0
