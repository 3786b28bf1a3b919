"""tunnel.policy.host_guard: what a client's packets may reach on the concentrator host itself."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop

from tunnel.policy.host_guard import HostGuard

OWN = [IPv4Address("10.8.0.1"), IPv4Address("192.0.2.1"), IPv6Address("fd00:8::1")]


def packets() -> dict[str, bytes]:
    return {
        "syn-own-v4": bytes(IP(src="10.8.0.2", dst="192.0.2.1") / TCP(dport=22, flags="S")),
        "syn-tun-v4": bytes(IP(src="10.8.0.2", dst="10.8.0.1") / TCP(dport=80, flags="S")),
        "udp-own-v6": bytes(IPv6(src="fd00:8::2", dst="fd00:8::1") / UDP(dport=53)),
        "ping-own-v4": bytes(IP(src="10.8.0.2", dst="10.8.0.1") / ICMP(type=8)),
        "ping-own-v6": bytes(IPv6(src="fd00:8::2", dst="fd00:8::1") / ICMPv6EchoRequest()),
        "ping-own-v6-ext": bytes(
            IPv6(src="fd00:8::2", dst="fd00:8::1") / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest()
        ),
        "reply-own-v4": bytes(IP(src="10.8.0.2", dst="10.8.0.1") / ICMP(type=0)),
        "mdns-v4": bytes(IP(src="10.8.0.2", dst="224.0.0.251") / UDP(dport=5353)),
        "broadcast": bytes(IP(src="10.8.0.2", dst="255.255.255.255") / UDP(dport=67)),
        "syn-elsewhere": bytes(IP(src="10.8.0.2", dst="10.200.0.2") / TCP(dport=22, flags="S")),
        "syn-elsewhere-v6": bytes(IPv6(src="fd00:8::2", dst="fd00:200::2") / TCP(dport=22)),
    }


@pytest.mark.parametrize(
    ("policy", "admitted"),
    [
        ("deny", {"syn-elsewhere", "syn-elsewhere-v6"}),
        ("ping", {"syn-elsewhere", "syn-elsewhere-v6", "ping-own-v4", "ping-own-v6"}),
        ("allow", set(packets())),
    ],
)
def test_policies(policy: str, admitted: set[str]) -> None:
    guard = HostGuard(policy, OWN)
    verdicts = {name: guard.admits(packet) for name, packet in packets().items()}
    assert {name for name, ok in verdicts.items() if ok} == admitted
    assert guard.dropped == len(packets()) - len(admitted)


def test_addresses_follow_the_host() -> None:
    guard = HostGuard("deny", [])
    syn = packets()["syn-own-v4"]
    assert guard.admits(syn)
    guard.update(OWN)
    assert not guard.admits(syn)


def test_a_prefixs_broadcast_network_and_anycast_addresses_are_the_hosts() -> None:
    """Linux delivers a directed broadcast to an attached subnet, its network address and an
    IPv6 subnet-router anycast address (with forwarding on) to its own sockets."""
    guard = HostGuard(
        "ping",
        [
            IPv4Interface("10.8.0.1/24"),
            IPv6Interface("fd00:8::1/64"),
            IPv4Interface("192.0.2.1/31"),  # RFC 3021: no broadcast, no network address
            IPv6Interface("fd00:9::1/127"),  # RFC 6164: no subnet-router anycast
        ],
    )
    for dst in ("10.8.0.255", "10.8.0.0", "10.8.0.1"):
        assert not guard.admits(bytes(IP(src="10.8.0.2", dst=dst) / UDP(dport=53)))
    assert not guard.admits(bytes(IPv6(src="fd00:8::2", dst="fd00:8::") / UDP(dport=53)))
    assert guard.admits(bytes(IP(src="10.8.0.2", dst="10.8.0.255") / ICMP(type=8)))
    for dst in ("10.8.1.255", "192.0.2.0"):
        assert guard.admits(bytes(IP(src="10.8.0.2", dst=dst) / UDP(dport=53)))
    assert guard.admits(bytes(IPv6(src="fd00:8::2", dst="fd00:9::") / UDP(dport=53)))
    assert guard.dropped == 4
    # what a service answers from (PCP) stays the unicast addresses
    assert IPv4Address("10.8.0.255").packed not in guard.own_addresses
    assert IPv4Address("10.8.0.1").packed in guard.own_addresses


def test_short_or_non_ip_packets_are_left_to_the_ingress_filter() -> None:
    guard = HostGuard("deny", OWN)
    assert guard.admits(b"")
    assert guard.admits(b"\x45" + bytes(5))
    assert guard.admits(b"\x15" + bytes(60))


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="to_concentrator"):
        HostGuard("sometimes", OWN)
