"""A running tunnel whose path MTU shrinks silently: black-hole detection (limits.pmtu_discovery).

Tunnel mode on the reference topology, path MTU discovery on both programs. Once both have
confirmed the full datagram size, the WiFi link starts dropping every packet over 1400 bytes
without a word (the shaper's `mtu_bytes`, both ways), as when a route changes under a
connection. The concentrator's large datagrams to the client vanish while small packets still
pass, so nothing looks broken but the size: it must notice the streak of lost large packets
(RFC 8899 §4.3), fail the confirmation of its size, search again, and tell the inner sender the
smaller budget (Packet Too Big), so that an inner TCP download carries on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.lab import Lab
from testbed.qtun import QtunDeployment, TunnelSpec
from testbed.shaping import WireShaper
from tests.integration.lab_fixtures import deployed, iperf3_server, lossless_lab
from tests.integration.pmtu_lab import (
    LINK_MTU,
    PMTU,
    UDP_PAYLOAD_LIMIT,
    found_within,
    iperf3_bytes,
)

pytestmark = [pytest.mark.root, pytest.mark.mininet]

FULL_SIZE = 1452  # what both programs confirm on the 1500-byte path
IPERF_PORT = 5202


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lossless_lab() as the_lab:
        if the_lab.backend != "wire":
            pytest.skip("the link's mtu_bytes needs the wire backend (netem has no size limit)")
        yield the_lab


@pytest.fixture(scope="module")
def dep(lab: Lab) -> Iterator[QtunDeployment]:
    spec = TunnelSpec(mode="tunnel", client_overrides=PMTU, concentrator_overrides=PMTU)
    with deployed(lab, spec) as deployment:
        yield deployment


def conc_pmtu(status: dict[str, Any]) -> dict[str, Any] | None:
    connections = [c for client in status["clients"] for c in client["connections"]]
    return connections[0]["pmtu"] if len(connections) == 1 else None


def test_a_silent_mtu_drop_is_found_and_inner_tcp_carries_on(lab: Lab, dep: QtunDeployment) -> None:
    def confirmed_full(status: dict[str, Any]) -> bool:
        pmtu = conc_pmtu(status)
        return (
            pmtu is not None and pmtu["state"] == "complete" and pmtu["datagram_size"] == FULL_SIZE
        )

    before = conc_pmtu(dep.wait_for(dep.concentrator, confirmed_full, 20, "1452 confirmed"))
    assert before is not None and before["black_holes"] == 0
    wifi = lab.shaper("wifi")
    assert isinstance(wifi, WireShaper)  # the lab fixture skips without it
    shrunk_at = time.monotonic()
    wifi.set("both", mtu_bytes=LINK_MTU)
    try:
        with iperf3_server(lab, IPERF_PORT, idle_timeout_s=60):
            first = iperf3_bytes(lab, IPERF_PORT, 5, "-R")
            after = conc_pmtu(
                dep.wait_for(
                    dep.concentrator, lambda s: found_within(conc_pmtu(s)), 20, "the new size"
                )
            )
            second = iperf3_bytes(lab, IPERF_PORT, 3, "-R")
        drops = int(wifi.counters()["ba"]["drop_mtu"])
    finally:
        wifi.set("both", mtu_bytes=0)
    print(f"\nconcentrator PMTU before {before}\nafter {after}")
    print(
        f"downloads through the shrunk path: {first} B in 5 s, then {second} B in 3 s; "
        f"{drops} packets over {LINK_MTU} bytes dropped on the way down"
    )
    assert after is not None
    assert UDP_PAYLOAD_LIMIT - 8 <= after["datagram_size"] <= UDP_PAYLOAD_LIMIT
    assert drops > 0  # the black hole was there, and the size was found through it
    # its times, in the programs' CLOCK_MONOTONIC (what the failover experiment's pmtu_*_ms
    # columns are made of): suspected after the shrink, fell to the base, settled after
    episode = next(e for e in after["black_hole_episodes"] if e["fell_at"] is not None)
    assert shrunk_at < episode["suspected_at"] < episode["fell_at"] < episode["settled_at"]
    assert episode["settled_at"] < time.monotonic()
    assert first > 0 and second > 0
    conc_client = dep.status(dep.concentrator)["clients"][0]
    assert int(conc_client["counters"].get("packet_too_big_sent", 0)) > 0
    # among them, one for the download's segments the hole swallowed, sent when it was found
    assert int(conc_client["counters"].get("pmtu_victims_answered", 0)) >= 1
    # srv1 learnt the smaller path MTU from it, and would keep it for 10 minutes: what the
    # experiments forget before each point
    assert " mtu " in str(lab.node("srv1").cmd("ip -4 route show cache"))
    lab.forget_learned_paths()
    assert " mtu " not in str(lab.node("srv1").cmd("ip -4 route show cache"))
