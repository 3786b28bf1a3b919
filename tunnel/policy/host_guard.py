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
listeners (mDNS, LLMNR, ...).

Works on the raw bytes (a slice and a set lookup per packet, no address objects): it runs for
every packet a client sends. Sans-I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Final

POLICIES: Final = ("deny", "ping", "allow")
IPPROTO_ICMP: Final = 1
IPPROTO_ICMPV6: Final = 58
ICMP_ECHO_REQUEST: Final = 8
ICMPV6_ECHO_REQUEST: Final = 128
LIMITED_BROADCAST: Final = b"\xff\xff\xff\xff"


class HostGuard:
    """Decides whether a client's packet may be delivered to the concentrator host."""

    def __init__(self, policy: str, own_addresses: Iterable[IPv4Address | IPv6Address]) -> None:
        if policy not in POLICIES:
            raise ValueError(f"to_concentrator policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self._own: frozenset[bytes] = frozenset()
        self.dropped = 0
        self.update(own_addresses)

    def update(self, own_addresses: Iterable[IPv4Address | IPv6Address]) -> None:
        """The host's addresses changed (all of them, every interface and family)."""
        self._own = frozenset(a.packed for a in own_addresses)

    @property
    def own_addresses(self) -> frozenset[bytes]:
        return self._own

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
                destination in self._own
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
            if destination not in self._own and destination[0] != 0xFF:
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


__all__ = ["POLICIES", "HostGuard"]
