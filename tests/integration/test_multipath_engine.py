"""The multipath engine (issue 12) end to end: the real `qtun client` and `qtun concentrator` in
the two namespaces of tests/integration/test_qtun_client.py (prefix qcl, removed even on
failure). A tunnel-mode connection whose WiFi goes silent (link up, every packet to the
concentrator dropped) moves to 5G from QUIC's ACK silence, keeps probing WiFi from a socket of
its own (PATH_CHALLENGE) and comes back by itself once WiFi heals — which the liveness probe
alone never did. The decisions are tested in memory (tests/unit/test_client_agent.py,
test_multipath_engine.py); this checks the program carries them out: the probe sockets, the
migration onto one, the status keys. Measured times are printed (run with -s)."""

from __future__ import annotations

import time

import pytest

from tests.integration.netns import in_ns, sh
from tests.integration.test_qtun_client import (
    ACCESSES,
    CONC_V4,
    NS_C,
    Net,
    net,
    pinging,
    received,
)

pytestmark = [pytest.mark.root]

__all__ = ["net"]  # the fixture

TABLE = "qcl_mp_blackhole"


def blackhole_wifi(on: bool) -> None:
    """Drop everything the client sends to the concentrator over WiFi (the link stays up)."""
    if on:
        chain = f"add chain inet {TABLE} out {{ type filter hook output priority 0 ; }}"
        rule = f'add rule inet {TABLE} out oifname "{ACCESSES["wifi"][0]}" udp dport 4433 drop'
        sh(*in_ns(NS_C, "nft", f"add table inet {TABLE}; {chain}; {rule}"))
    else:
        sh(*in_ns(NS_C, "nft", f"delete table inet {TABLE}"), check=False)


def test_tunnel_mode_leaves_a_silent_access_and_comes_back_once_it_heals(net: Net) -> None:
    net.start_client()
    assert net.ping(CONC_V4) == 3
    try:
        with pinging(CONC_V4) as pinger:
            blackhole_wifi(True)
            started = time.monotonic()
            net.wait("on 5G", lambda: net.access("5g").get("active") is True, timeout=10)
            moved = time.monotonic() - started
            assert received(pinger) >= 60, net.client.log_tail()
        wifi = net.access("wifi")
        assert wifi["link"]["carrier"] and wifi["health"] in ("suspect", "dead")
        net.client.wait_status(
            "WiFi probed", lambda s: s["counters"].get("access_probes_sent", 0) >= 2
        )
        blackhole_wifi(False)
        healed = time.monotonic()
        net.wait("back on WiFi", lambda: net.access("wifi").get("active") is True, timeout=10)
        back = time.monotonic() - healed
    finally:
        blackhole_wifi(False)
    status = net.client.status()
    assert status["counters"]["migrations"] >= 2 and net.access("wifi")["health"] == "alive"
    assert net.ping(CONC_V4) == 3, net.client.log_tail()
    assert len(net.concentrator_client()["connections"]) == 1  # the same connection throughout
    print(
        f"\ntunnel mode, silent WiFi: on 5G after {moved * 1000:.0f} ms (status polled every "
        f"0.2 s), back on WiFi {back * 1000:.0f} ms after it healed"
    )
