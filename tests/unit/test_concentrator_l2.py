"""L2 mode in the concentrator core (README "L2 mode"): Ethernet clients refused or served by
their payload, a TAP per client on the bridge, the MAC ingress filter, and IP clients that
never get an Ethernet frame into the TUN. In memory, on the fake clock
(tests/unit/concentrator_harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.concentrator_harness import Conn, CoreLab, lab, lab_certs
from tests.unit.test_l2_guard import ethernet, ipv6, router_advertisement
from tunnel.agents.concentrator import TapClosed, TapOpened
from tunnel.policy.mac_filter import LEARNED_HOLD
from tunnel.protocol.connection import ConnectionClosed, PacketReceived, SessionEstablished
from tunnel.wire.datagram import ProtocolType
from tunnel.wire.modes import TunnelMode

__all__ = ["lab_certs"]  # the fixture

ETHERNET = int(ProtocolType.ETHERNET)
MODES = {"qt": "tunnel", "qt-session": "session"}
BOTH = ('payloads=["ip", "ethernet"]', 'l2.bridge="br-test"')
ALICE_MAC = bytes.fromhex("02000000000a")
ALICE_MAC_2 = bytes.fromhex("02000000000b")
CAROL_MAC = bytes.fromhex("02000000000c")
GATEWAY_MAC = bytes.fromhex("020000000001")
OTHER_MAC = bytes.fromhex("020000000066")
BROADCAST = b"\xff" * 6


def frame(source: bytes, destination: bytes = BROADCAST, marker: int = 0) -> bytes:
    return destination + source + b"\x08\x06" + marker.to_bytes(4, "big") + bytes(40)


def closed_reason(conn: Conn) -> str | None:
    closes = conn.of(ConnectionClosed)
    return closes[0].reason if closes else None


def l2_client(core_lab: CoreLab, name: str, alpn: str) -> Conn:
    conn = core_lab.connect(name, alpn, payload_ethertype=ETHERNET)
    if alpn == "qt-session":
        conn.client.request_new_session()
        core_lab.run(0.2)
        assert conn.of(SessionEstablished)
    return conn


def send(core_lab: CoreLab, conn: Conn, *frames: bytes) -> None:
    for n, data in enumerate(frames):
        tag = n if conn.client.mode is TunnelMode.SESSION else None
        assert conn.client.send_packet(data, packet_tag=tag).sent
    core_lab.run(0.1)


def test_an_ethernet_client_is_refused_where_only_ip_is_served(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    conn = core_lab.connect("alice", "qt", payload_ethertype=ETHERNET)
    assert closed_reason(conn) == (
        "the concentrator carries IP packets but this client is configured with payload = "
        '"ethernet": set the same payload on both ends'
    )
    assert core_lab.core.status()["refused"]["payload"] == 1
    assert core_lab.of(TapOpened) == []


def test_an_ip_client_is_refused_where_only_ethernet_is_served(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, 'payloads=["ethernet"]', 'l2.bridge="br-test"')
    conn = core_lab.connect("alice", "qt-session")
    assert closed_reason(conn) == (
        "the concentrator carries Ethernet frames but this client is configured with payload = "
        '"ip": set the same payload on both ends'
    )


def test_an_unknown_payload_is_refused_naming_its_ethertype(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, *BOTH)
    conn = core_lab.connect("alice", "qt", payload_ethertype=0x88B5)
    assert closed_reason(conn) == (
        "the concentrator carries IP packets and Ethernet frames but this client announces "
        "payload EtherType 0x88b5: set the same payload on both ends"
    )


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_ethernet_clients_frames_cross_their_tap_both_ways(lab_certs: Path, alpn: str) -> None:
    core_lab = lab(lab_certs, *BOTH)
    conn = l2_client(core_lab, "carol", alpn)
    assert core_lab.of(TapOpened) == [TapOpened("carol", TunnelMode(MODES[alpn]))]
    send(core_lab, conn, frame(ALICE_MAC, marker=1), frame(ALICE_MAC, marker=2))
    assert core_lab.taps["carol"] == [frame(ALICE_MAC, marker=1), frame(ALICE_MAC, marker=2)]
    assert core_lab.tun == []  # never the IP path

    reply = frame(OTHER_MAC, ALICE_MAC, marker=3)
    assert core_lab.from_tap("carol", [reply])
    core_lab.run(0.1)
    assert [e.packet for e in conn.of(PacketReceived)] == [reply]
    status = core_lab.status_of("carol")
    assert status["payload"] == "ethernet" and status["macs"] == ["02:00:00:00:00:0a"]
    assert status["counters"]["packets_from_client"] == 2
    assert status["counters"]["packets_to_client"] == 1


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_a_client_sources_only_its_first_mac_and_never_a_group_one(
    lab_certs: Path, alpn: str
) -> None:
    core_lab = lab(lab_certs, *BOTH)
    conn = l2_client(core_lab, "carol", alpn)
    send(
        core_lab,
        conn,
        frame(BROADCAST),  # a group source: never, and not learned
        frame(ALICE_MAC, marker=1),  # the first unicast source: locked
        frame(OTHER_MAC, marker=2),  # spoofed
        frame(ALICE_MAC, marker=3),
    )
    assert core_lab.taps["carol"] == [frame(ALICE_MAC, marker=1), frame(ALICE_MAC, marker=3)]
    status = core_lab.status_of("carol")
    assert status["mac_filter"] == {
        "accepted": 2,
        "truncated": 0,
        "group_source": 1,
        "foreign_source": 1,
        "taken_source": 0,
        "router_role": 0,
        "dhcp_server_role": 0,
        "foreign_lladdr": 0,
        "unreadable": 0,
    }
    assert status["counters"]["mac_dropped"] == 2
    assert core_lab.core.status()["counters"]["mac_dropped"] == 2


def test_configured_macs_are_the_only_ones_a_client_may_source(lab_certs: Path) -> None:
    macs = 'client.0.macs=["02:00:00:00:00:0a", "02:00:00:00:00:0b"]'
    core_lab = lab(lab_certs, *BOTH, macs)
    conn = l2_client(core_lab, "alice", "qt")
    send(core_lab, conn, frame(OTHER_MAC), frame(ALICE_MAC_2, marker=1), frame(ALICE_MAC))
    assert core_lab.taps["alice"] == [frame(ALICE_MAC_2, marker=1), frame(ALICE_MAC)]
    assert core_lab.status_of("alice")["mac_filter"]["foreign_source"] == 1


def test_a_client_cannot_learn_a_mac_another_client_holds(lab_certs: Path) -> None:
    """The bridge sends a MAC's traffic to the port it last heard it from: carol sourcing
    dave's learned MAC, or alice's configured one (alice offline), would take their frames."""
    core_lab = lab(lab_certs, *BOTH, 'client.0.macs=["02:00:00:00:00:0b"]')
    dave = l2_client(core_lab, "dave", "qt")
    send(core_lab, dave, frame(ALICE_MAC))
    carol = l2_client(core_lab, "carol", "qt")
    send(core_lab, carol, frame(ALICE_MAC), frame(ALICE_MAC_2), frame(CAROL_MAC, marker=1))
    assert core_lab.taps["carol"] == [frame(CAROL_MAC, marker=1)]
    status = core_lab.status_of("carol")
    assert status["macs"] == ["02:00:00:00:00:0c"]
    assert status["mac_filter"]["taken_source"] == 2
    assert status["counters"]["mac_dropped"] == 2
    assert core_lab.status_of("dave")["macs"] == ["02:00:00:00:00:0a"]


def test_a_reconnect_keeps_the_learned_macs_until_the_hold_is_over(lab_certs: Path) -> None:
    """A tunnel-mode client is forgotten with its connection; its learned MAC is not: a
    reconnect cannot change it, nor can another client take it meanwhile."""
    core_lab = lab(lab_certs, *BOTH)
    carol = l2_client(core_lab, "carol", "qt")
    send(core_lab, carol, frame(CAROL_MAC))
    carol.client.close("bye")
    core_lab.run(1.0)
    assert core_lab.of(TapClosed) == [TapClosed("carol")]

    dave = l2_client(core_lab, "dave", "qt")
    send(core_lab, dave, frame(CAROL_MAC))
    assert core_lab.taps["dave"] == []
    again = l2_client(core_lab, "carol", "qt")
    send(core_lab, again, frame(GATEWAY_MAC), frame(CAROL_MAC, marker=1))
    assert core_lab.taps["carol"] == [frame(CAROL_MAC, marker=1)]
    assert core_lab.status_of("carol")["macs"] == ["02:00:00:00:00:0c"]
    assert core_lab.status_of("carol")["mac_filter"]["foreign_source"] == 1

    again.client.close("bye")
    dave.client.close("bye")
    core_lab.run(LEARNED_HOLD + 1.0)  # as long as the bridge keeps a silent station's MAC
    dave = l2_client(core_lab, "dave", "qt")
    send(core_lab, dave, frame(CAROL_MAC, marker=2))
    assert core_lab.taps["dave"] == [frame(CAROL_MAC, marker=2)]


def test_only_the_bridges_server_may_announce_itself_as_router(lab_certs: Path) -> None:
    """RA Guard (RFC 6105) at the bridge port: carol's Router Advertisement would make every
    host on the bridge route through her; alice, configured `l2_server`, is the router."""
    core_lab = lab(lab_certs, *BOTH, "client.0.l2_server=true")
    carol, alice = l2_client(core_lab, "carol", "qt"), l2_client(core_lab, "alice", "qt")
    from_carol = ethernet(ipv6(58, router_advertisement(CAROL_MAC)), 0x86DD, source=CAROL_MAC)
    from_alice = ethernet(ipv6(58, router_advertisement(GATEWAY_MAC)), 0x86DD, source=GATEWAY_MAC)
    send(core_lab, carol, from_carol, frame(CAROL_MAC, marker=1))
    send(core_lab, alice, from_alice)
    assert core_lab.taps["carol"] == [frame(CAROL_MAC, marker=1)]
    assert core_lab.taps["alice"] == [from_alice]
    status = core_lab.status_of("carol")
    assert status["mac_filter"]["router_role"] == 1
    assert status["counters"]["mac_dropped"] == 1


def test_the_hosts_own_macs_are_never_learned(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, *BOTH)
    core_lab.core.host_macs_changed([int.from_bytes(GATEWAY_MAC)])
    carol = l2_client(core_lab, "carol", "qt")
    send(core_lab, carol, frame(GATEWAY_MAC), frame(CAROL_MAC, marker=1))
    assert core_lab.taps["carol"] == [frame(CAROL_MAC, marker=1)]
    assert core_lab.status_of("carol")["mac_filter"]["taken_source"] == 1


def test_the_tap_goes_with_the_client(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, *BOTH)
    conn = l2_client(core_lab, "carol", "qt")
    conn.client.close("bye")
    core_lab.run(1.0)
    assert core_lab.of(TapClosed) == [TapClosed("carol")]
    assert core_lab.taps == {}
    assert core_lab.from_tap("carol", [frame(OTHER_MAC)]) == ()
    assert core_lab.core.status()["counters"]["dropped_client_offline"] == 1


def test_a_client_switching_payload_loses_its_tap(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, *BOTH)
    old = l2_client(core_lab, "alice", "qt")
    core_lab.connect("alice", "qt")  # IP now
    assert closed_reason(old) == "replaced by a newer ip-payload connection"
    assert core_lab.of(TapClosed) == [TapClosed("alice")]
    assert core_lab.status_of("alice")["payload"] == "ip"


def test_a_tap_that_cannot_be_made_closes_the_client_with_the_reason(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, *BOTH)
    conn = l2_client(core_lab, "carol", "qt")
    core_lab.core.tap_failed("carol", "bridge 'br-test' does not exist: create it", core_lab.now)
    core_lab.carry_out()
    core_lab.run(0.2)
    assert closed_reason(conn) == (
        "the concentrator cannot serve Ethernet: bridge 'br-test' does not exist: create it"
    )
    assert core_lab.core.status()["counters"]["tap_failed"] == 1


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_an_ip_client_never_gets_an_ethernet_frame_into_the_tun(lab_certs: Path, alpn: str) -> None:
    """session draft §4 "MAY drop": a 0x6558 datagram from an IP client is dropped and counted
    (it used to be taken as supported); in tunnel mode a frame is not an IP packet."""
    core_lab = lab(lab_certs, *BOTH)
    conn = core_lab.connect("alice", alpn)
    if alpn == "qt-session":
        conn.client.request_new_session()
        core_lab.run(0.2)
        conn.client.quic.send_datagram_frame(b"\x65\x58\x00\x01" + frame(ALICE_MAC))
    else:
        conn.client.quic.send_datagram_frame(frame(ALICE_MAC))
    core_lab.run(0.1)
    assert core_lab.tun == [] and core_lab.taps == {}
    (connection,) = core_lab.status_of("alice")["connections"]
    dropped = "drops_unsupported_protocol" if alpn == "qt-session" else "drops_malformed"
    assert connection["counters"][dropped] == 1


def test_an_ethernet_client_changing_mode_gets_a_new_tap_for_its_new_mtu(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, *BOTH)
    old = l2_client(core_lab, "carol", "qt")
    l2_client(core_lab, "carol", "qt-session")
    assert closed_reason(old) == "replaced by a newer session-mode connection"
    assert core_lab.of(TapOpened) == [
        TapOpened("carol", TunnelMode.TUNNEL),
        TapOpened("carol", TunnelMode.SESSION),
    ]
    assert core_lab.of(TapClosed) == [TapClosed("carol")]
    assert list(core_lab.taps) == ["carol"]
