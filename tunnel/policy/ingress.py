"""Ingress filtering of the inner packets a client sends into the tunnel (RFC 2827, BCP 38).

The tunnel draft's security considerations ask the concentrator not to become a tool for address
spoofing: an inner packet is forwarded only if its source address lies inside the prefixes the
concentrator assigned to that client. Anything else (not IPv4/IPv6, truncated, wrong source) is
dropped and counted by reason, so an operator can tell a broken client from a spoofing one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Network, IPv6Network

from tunnel.wire.icmp import IPV4_HEADER_MIN, IPV6_HEADER_SIZE

IPNetwork = IPv4Network | IPv6Network


class IngressVerdict(Enum):
    """Why a packet was accepted or dropped; the value is the counter's name in status output."""

    ACCEPTED = "accepted"
    NOT_IP = "not_ip"  # empty, or the version nibble is neither 4 nor 6
    TRUNCATED = "truncated"  # shorter than its header, or than the length its header claims
    BAD_HEADER = "bad_header"  # IPv4 header length < 20, or total length < header length
    SPOOFED_SOURCE = "spoofed_source"  # source outside the client's assigned prefixes


@dataclass
class IngressStats:
    """Counters of packets seen by an IngressFilter, one per verdict."""

    counts: dict[IngressVerdict, int] = field(
        default_factory=lambda: dict.fromkeys(IngressVerdict, 0)
    )

    @property
    def dropped(self) -> int:
        return sum(
            n for verdict, n in self.counts.items() if verdict is not IngressVerdict.ACCEPTED
        )

    def as_dict(self) -> dict[str, int]:
        """Counter name -> count, for JSON status output."""
        return {verdict.value: n for verdict, n in self.counts.items()}


class IngressFilter:
    """Accepts an inner packet only if it is a whole IPv4/IPv6 packet whose source address is in
    one of the client's assigned prefixes. `set_prefixes` replaces them (e.g. after a new
    address assignment); an empty set rejects every packet as spoofed."""

    def __init__(self, prefixes: Iterable[IPNetwork | str] = ()) -> None:
        self.stats = IngressStats()
        self._v4: tuple[IPv4Network, ...] = ()
        self._v6: tuple[IPv6Network, ...] = ()
        # (network, netmask) as integers: the per-packet test is two integer operations per
        # prefix instead of an ipaddress object per packet (issue 14: 1.1 -> 0.4-0.5 µs a packet)
        self._v4_masks: tuple[tuple[int, int], ...] = ()
        self._v6_masks: tuple[tuple[int, int], ...] = ()
        self.set_prefixes(prefixes)

    @property
    def prefixes(self) -> tuple[IPNetwork, ...]:
        return (*self._v4, *self._v6)

    def set_prefixes(self, prefixes: Iterable[IPNetwork | str]) -> None:
        networks = [
            p if isinstance(p, IPv4Network | IPv6Network) else _parse_network(p) for p in prefixes
        ]
        self._v4 = tuple(n for n in networks if isinstance(n, IPv4Network))
        self._v6 = tuple(n for n in networks if isinstance(n, IPv6Network))
        self._v4_masks = tuple((int(n.network_address), int(n.netmask)) for n in self._v4)
        self._v6_masks = tuple((int(n.network_address), int(n.netmask)) for n in self._v6)

    def classify(self, packet: bytes) -> IngressVerdict:
        """The verdict for `packet`, without counting it."""
        if not packet:
            return IngressVerdict.NOT_IP
        version = packet[0] >> 4
        if version == 4:
            if len(packet) < IPV4_HEADER_MIN:
                return IngressVerdict.TRUNCATED
            header_length = (packet[0] & 0x0F) * 4
            claimed = int.from_bytes(packet[2:4], "big")
            if header_length < IPV4_HEADER_MIN or claimed < header_length:
                return IngressVerdict.BAD_HEADER
            if len(packet) < header_length or len(packet) < claimed:
                return IngressVerdict.TRUNCATED
            source = int.from_bytes(packet[12:16], "big")
            masks = self._v4_masks
        elif version == 6:
            if len(packet) < IPV6_HEADER_SIZE:
                return IngressVerdict.TRUNCATED
            if len(packet) < IPV6_HEADER_SIZE + int.from_bytes(packet[4:6], "big"):
                return IngressVerdict.TRUNCATED
            source = int.from_bytes(packet[8:24], "big")
            masks = self._v6_masks
        else:
            return IngressVerdict.NOT_IP
        for network, netmask in masks:
            if source & netmask == network:
                return IngressVerdict.ACCEPTED
        return IngressVerdict.SPOOFED_SOURCE

    def check(self, packet: bytes) -> IngressVerdict:
        """The verdict for `packet`, counted in `stats`."""
        verdict = self.classify(packet)
        self.stats.counts[verdict] += 1
        return verdict

    def accept(self, packet: bytes) -> bool:
        """True if `packet` may be forwarded (counted in `stats` either way)."""
        return self.check(packet) is IngressVerdict.ACCEPTED


def _parse_network(text: str) -> IPNetwork:
    try:
        return IPv4Network(text) if ":" not in text else IPv6Network(text)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an IP prefix with its host bits zero (e.g. 10.8.0.2/32): {exc}"
        ) from None
