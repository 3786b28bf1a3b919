"""What a tunnel- or session-mode client may reach on the concentrator host itself.

The concentrator writes its clients' packets into its TUN and lets the kernel route them on.
A packet whose destination is one of the host's own addresses (the TUN address, a listen
address, any other interface's) is delivered to the host's local services instead — SSH, a
metadata agent, the status port of some daemon — which the tunnel draft's security
considerations ask the concentrator to protect itself from, and which stream mode already
refuses (tunnel/policy/stream_policy.py). So, before a packet enters the TUN, `HostGuard.admits`
checks its destination against the host's addresses (kept current by the program from the kernel's
address events) under the site's `to_concentrator` policy:

* "deny": nothing reaches the host;
* "ping" (default): only ICMP Echo Request / ICMPv6 Echo Request (a client checks its tunnel,
  as it would ping a router's interface) — nothing that reaches a socket of a service;
* "allow": everything (a lab whose server runs on the concentrator host, `make bench`).

Multicast and the IPv4 limited broadcast count as the host's own under "deny" and "ping": the
kernel does not forward them without a multicast router, so they could only reach local
listeners (mDNS, LLMNR, ...). So do, for every address given with its prefix, that IPv4
prefix's broadcast and network addresses and that IPv6 prefix's subnet-router anycast address
(RFC 4291 §2.6.1): Linux puts them in its local routing table (a directed broadcast to an
attached subnet, the anycast address once forwarding is on) and delivers a packet to them to
the host's sockets, so a UDP datagram to 10.8.0.255 or fd00:8:: reached a service as surely as
one to 10.8.0.1.

Works on the raw bytes (a slice and a set lookup per packet, no address objects): it runs for
every packet a client sends. Sans-I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import Final

POLICIES: Final = ("deny", "ping", "allow")
IPPROTO_ICMP: Final = 1
IPPROTO_ICMPV6: Final = 58
ICMP_ECHO_REQUEST: Final = 8
ICMPV6_ECHO_REQUEST: Final = 128
LIMITED_BROADCAST: Final = b"\xff\xff\xff\xff"
# Prefixes from these lengths have neither (RFC 3021 for IPv4 /31, RFC 6164 for IPv6 /127, and
# Linux adds no broadcast or anycast route for them).
IPV4_NO_BROADCAST_FROM: Final = 31
IPV6_NO_ANYCAST_FROM: Final = 127

# The host's addresses; an interface (address with prefix) is an address too (a subclass).
HostAddress = IPv4Address | IPv6Address | IPv4Interface | IPv6Interface


def prefix_addresses(address: HostAddress) -> tuple[IPv4Address | IPv6Address, ...]:
    """The addresses the kernel delivers locally because of `address`'s prefix: an IPv4
    prefix's network and broadcast addresses, an IPv6 prefix's subnet-router anycast address;
    none for an address given without its prefix."""
    if isinstance(address, IPv4Interface):
        network = address.network
        if network.prefixlen < IPV4_NO_BROADCAST_FROM:
            return (network.network_address, network.broadcast_address)
    elif isinstance(address, IPv6Interface):
        network6 = address.network
        if network6.prefixlen < IPV6_NO_ANYCAST_FROM:
            return (network6.network_address,)
    return ()


class HostGuard:
    """Decides whether a client's packet may be delivered to the concentrator host."""

    def __init__(self, policy: str, own_addresses: Iterable[HostAddress]) -> None:
        if policy not in POLICIES:
            raise ValueError(f"to_concentrator policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self._own: frozenset[bytes] = frozenset()
        self._local: frozenset[bytes] = frozenset()
        self.dropped = 0
        self.update(own_addresses)

    def update(self, own_addresses: Iterable[HostAddress]) -> None:
        """The host's addresses changed (all of them, every interface and family), each with
        its prefix where known (see the module docstring)."""
        own: set[bytes] = set()
        local: set[bytes] = set()
        for address in own_addresses:
            own.add(address.packed)
            local.update(a.packed for a in prefix_addresses(address))
        self._own = frozenset(own)
        self._local = frozenset(own | local)

    @property
    def own_addresses(self) -> frozenset[bytes]:
        """The host's unicast addresses (those a service answers from, e.g. PCP)."""
        return self._own

    @property
    def local_addresses(self) -> frozenset[bytes]:
        """Every destination the kernel delivers to the host: its addresses and their
        prefixes' broadcast, network and subnet-router anycast addresses."""
        return self._local

    def admits(self, packet: bytes) -> bool:
        """False when the packet would reach the host itself and the policy forbids it
        (counted in `dropped`). Packets too short to carry a destination are left to the
        ingress filter, which refuses them."""
        if self.policy == "allow" or not packet:
            return True
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            destination = packet[16:20]
            local = (
                destination in self._local
                or 224 <= destination[0] <= 239
                or destination == LIMITED_BROADCAST
            )
            if not local:
                return True
            header = (packet[0] & 0x0F) * 4
            ping = (
                packet[9] == IPPROTO_ICMP
                and len(packet) > header
                and packet[header] == ICMP_ECHO_REQUEST
            )
        elif version == 6 and len(packet) >= 40:
            destination = packet[24:40]
            if destination not in self._local and destination[0] != 0xFF:
                return True
            # An echo request behind extension headers is refused under "ping": simpler than
            # walking the chain, and no ping tool sends one.
            ping = (
                packet[6] == IPPROTO_ICMPV6
                and len(packet) > 40
                and packet[40] == (ICMPV6_ECHO_REQUEST)
            )
        else:
            return True
        if ping and self.policy == "ping":
            return True
        self.dropped += 1
        return False


__all__ = ["POLICIES", "HostAddress", "HostGuard", "prefix_addresses"]
