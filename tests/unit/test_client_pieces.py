"""Pure pieces of qtun client: liveness probe, link-state rules, ICMP sources, backoff, qlog."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface, ip_network
from pathlib import Path

import pytest

from tunnel.agents.access_health import LinkState, LivenessProbe
from tunnel.agents.client import IPV4_DUMMY, Backoff, icmp_sources
from tunnel.aio.access_monitor import IFA_F_TENTATIVE, IFF_LOWER_UP, IFF_UP, link_states_from
from tunnel.aio.qlog import BoundedQlogLogger
from tunnel.config import AccessConfig, TunConfig
from tunnel.wire.messages import AccessId

UP = IFF_UP | IFF_LOWER_UP


def _access(name: str, interface: str | None, address: str | None) -> AccessConfig:
    return AccessConfig(
        name,
        AccessId.NON_THREE_GPP,
        interface,
        ip_address(address) if address is not None else None,
    )


# --- liveness probe ----------------------------------------------------------------------------


def test_probe_alive_until_misses_elapse() -> None:
    probe = LivenessProbe(interval=0.5, misses=3)
    assert probe.due(0.0) and probe.next_ping_at() is None
    probe.sent(probe.next_uid(), 0.0)
    assert not probe.due(0.4) and probe.due(0.5) and probe.next_ping_at() == 0.5
    assert probe.alive(1.49) and probe.silent_since() == 0.0
    assert not probe.alive(1.5)  # failed at the limit itself: a timer set to it sees the change


def test_probe_ack_clears_it_and_earlier() -> None:
    probe = LivenessProbe(interval=1.0, misses=2)
    first, second, third = probe.next_uid(), probe.next_uid(), probe.next_uid()
    probe.sent(first, 0.0)
    probe.sent(second, 1.0)
    probe.sent(third, 2.0)
    assert not probe.alive(2.5)
    probe.acked(second, 2.6)  # proves the path works: first is no longer waited for
    assert probe.alive(2.6)
    assert probe.silent_for(3.0) == pytest.approx(1.0)  # third still outstanding
    assert probe.last_rtt == pytest.approx(1.6)
    probe.acked(99, 3.0)  # unknown uid: ignored
    assert probe.acked_count == 1 and probe.sent_count == 3


def test_an_outage_is_not_taken_for_a_round_trip() -> None:
    """PINGs at 0 and 1 s, the second answered at 5 s when an outage ended (aioquic re-sends
    a lost PING under its uid): a 4 s round trip as long as the limit is the outage, not
    queueing. Kept, it made the next limits 3 x 4 = 12 s; and a migration forgets the old
    path's round trips."""
    probe = LivenessProbe(interval=1.0, misses=3)
    probe.sent(probe.next_uid(), 0.0)
    second = probe.next_uid()
    probe.sent(second, 1.0)
    probe.acked(second, 5.0)
    assert probe.last_rtt == pytest.approx(4.0)
    assert probe.limit() == pytest.approx(3.0)
    loaded = probe.next_uid()  # a PING held 1.5 s behind a bulk transfer's queue: kept
    probe.sent(loaded, 6.0)
    probe.acked(loaded, 7.5)
    assert probe.limit() == pytest.approx(4.5)
    probe.reset()
    assert probe.limit() == pytest.approx(3.0)


def test_probe_reset_forgets_outstanding() -> None:
    probe = LivenessProbe(interval=0.1)
    probe.sent(probe.next_uid(), 0.0)
    assert not probe.alive(10.0)
    probe.reset()
    assert probe.alive(10.0) and probe.due(10.0)


def test_probe_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        LivenessProbe(interval=0.0)


# --- link state rules --------------------------------------------------------------------------


def test_link_states_interface_and_address() -> None:
    links = {"wlan0": (2, UP), "wwan0": (3, IFF_UP), "eth9": (4, 0)}
    addresses = [(2, "10.1.0.2", 0), (3, "10.2.0.2", 0), (4, "fd00::2", IFA_F_TENTATIVE)]
    states = link_states_from(
        [
            _access("wifi", "wlan0", "10.1.0.2"),
            _access("5g", "wwan0", None),
            _access("gone", "nope0", None),
            _access("wrongaddr", "wlan0", "10.2.0.2"),
            _access("tentative", None, "fd00::2"),
            _access("byaddr", None, "10.1.0.2"),
        ],
        links,
        addresses,
    )
    assert states["wifi"].usable
    assert states["5g"] == LinkState(exists=True, up=True, carrier=False, has_address=True)
    assert states["5g"].reason() == "no carrier"
    assert states["gone"].reason() == "interface missing"
    assert states["wrongaddr"].reason() == "local address missing"
    assert not states["tentative"].usable
    assert states["byaddr"].usable


def test_link_state_of_address_follows_its_interface() -> None:
    states = link_states_from(
        [_access("byaddr", None, "10.1.0.2")], {"wlan0": (2, IFF_UP)}, [(2, "10.1.0.2", 0)]
    )
    assert states["byaddr"].reason() == "no carrier"


# --- ICMP sources, backoff ---------------------------------------------------------------------


def _tun(addresses: list[str], routes: list[str]) -> TunConfig:
    return TunConfig(
        "qtun0",
        None,
        tuple(ip_interface(a) for a in addresses),
        tuple(ip_network(r) for r in routes),
    )


def test_icmp_sources_prefer_far_end_of_tun_prefix() -> None:
    v4, v6 = icmp_sources(_tun(["10.8.0.3/16", "fd00:8::2/64"], []))
    assert v4 == IPv4Address("10.8.0.1") and v6 == IPv6Address("fd00:8::1")


def test_icmp_sources_from_routes_for_host_addresses() -> None:
    v4, v6 = icmp_sources(
        _tun(["10.8.0.3/32", "fd00:8::2/128"], ["0.0.0.0/1", "10.200.0.0/16", "fd00:200::/32"])
    )
    assert v4 == IPv4Address("10.200.0.1")  # 0.0.0.1 is "this network": skipped
    assert v6 == IPv6Address("fd00:200::1")


def test_icmp_sources_fallbacks_and_missing_family() -> None:
    assert icmp_sources(_tun(["10.8.0.3/32"], [])) == (IPV4_DUMMY, None)
    v4, v6 = icmp_sources(_tun(["fd00:8::2/128"], []))
    assert v4 is None and v6 == IPv6Address("fe80::1")


def test_backoff_doubles_to_cap_and_starts_over() -> None:
    backoff = Backoff(0.25, 1.5)
    assert [backoff.next() for _ in range(6)] == [0.25, 0.5, 1.0, 1.5, 1.5, 1.5]
    backoff.reset()
    assert [backoff.next() for _ in range(2)] == [0.25, 0.5]


# --- bounded qlog ------------------------------------------------------------------------------


def test_qlog_keeps_last_events_and_counts_dropped(tmp_path: Path) -> None:
    logger = BoundedQlogLogger(tmp_path, max_events=10)
    trace = logger.start_trace(is_client=True, odcid=b"\x01\x02")
    for i in range(25):
        trace.log_event(category="transport", event="test", data={"i": i})
    logger.end_trace(trace)
    (written,) = list(tmp_path.glob("*.qlog"))
    document = json.loads(written.read_text())
    (only,) = document["traces"]
    assert [e["data"]["i"] for e in only["events"]] == list(range(15, 25))
    assert only["common_fields"]["qtun_dropped_events"] == 15


def test_probe_limit_grows_with_recent_round_trips() -> None:
    # A loaded path: PING answers wait behind the peer's send queue; that is not a failure.
    probe = LivenessProbe(interval=0.2, misses=3)
    assert probe.limit() == pytest.approx(0.6)
    uid = probe.next_uid()
    probe.sent(uid, 0.0)
    probe.acked(uid, 0.5)
    assert probe.limit() == pytest.approx(1.5)
    probe.sent(probe.next_uid(), 1.0)
    assert probe.alive(2.4) and not probe.alive(2.6)
