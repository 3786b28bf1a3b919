"""Ingress filtering of the Ethernet frames an L2 client sends into the tunnel.

The L2 twin of tunnel/policy/ingress.py (RFC 2827 for IP): the tunnel draft's security
considerations ask the concentrator not to become a tool for address spoofing, and on a bridge
the address is the source MAC. A frame is forwarded onto the bridge only if its source MAC is
one of the client's: those configured for it (`[[client]] macs`), or, without any, the first
`max_learned` distinct unicast source MACs it sent, locked for as long as the client stays. A
group (multicast/broadcast) source is never accepted (IEEE 802: the I/G bit of a source is
always 0), nor a runt shorter than the 14-byte header.

Per packet: two byte reads, one integer and one set lookup; no objects made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from tunnel.wire.datagram import ETHERNET_HEADER_SIZE

SOURCE_MAC = slice(6, 12)
GROUP_BIT = 0x01  # the I/G bit: the least significant bit of the first octet


class MacVerdict(Enum):
    """Why a frame was accepted or dropped; the value is the counter's name in status output."""

    ACCEPTED = "accepted"
    TRUNCATED = "truncated"  # shorter than the Ethernet header
    GROUP_SOURCE = "group_source"  # source MAC multicast or broadcast
    FOREIGN_SOURCE = "foreign_source"  # not the client's MAC (configured, or locked when learned)


@dataclass
class MacStats:
    counts: dict[MacVerdict, int] = field(default_factory=lambda: dict.fromkeys(MacVerdict, 0))

    @property
    def dropped(self) -> int:
        return sum(n for verdict, n in self.counts.items() if verdict is not MacVerdict.ACCEPTED)

    def as_dict(self) -> dict[str, int]:
        return {verdict.value: n for verdict, n in self.counts.items()}


def mac_to_int(text: str) -> int:
    """ "02:00:5e:10:00:01" (or with '-') as a 48-bit integer; ValueError if it is not one."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address like 02:00:5e:10:00:01")
    return int("".join(parts), 16)


def mac_text(mac: int) -> str:
    return ":".join(f"{b:02x}" for b in mac.to_bytes(6, "big"))


def is_group_mac(mac: int) -> bool:
    return bool((mac >> 40) & GROUP_BIT)


class MacFilter:
    """Accepts a frame only if its source MAC is the client's (see the module docstring).

    :param configured: the client's MACs; when given, nothing is learned.
    :param max_learned: without configured MACs, how many distinct source MACs are locked.
    """

    def __init__(self, configured: Iterable[int] = (), max_learned: int = 1) -> None:
        if max_learned < 1:
            raise ValueError(f"max_learned must be >= 1, got {max_learned}")
        self.stats = MacStats()
        self._allowed: set[int] = set(configured)
        self._learning = not self._allowed
        self._max_learned = max_learned

    @property
    def macs(self) -> tuple[int, ...]:
        """The client's MACs: configured, or learned so far."""
        return tuple(sorted(self._allowed))

    @property
    def learning(self) -> bool:
        """Whether MACs are learned (none configured) and room is left to learn one."""
        return self._learning and len(self._allowed) < self._max_learned

    def classify(self, frame: bytes) -> MacVerdict:
        """The verdict for `frame`, learning its source if allowed to, without counting."""
        if len(frame) < ETHERNET_HEADER_SIZE:
            return MacVerdict.TRUNCATED
        if frame[6] & GROUP_BIT:
            return MacVerdict.GROUP_SOURCE
        source = int.from_bytes(frame[SOURCE_MAC])
        allowed = self._allowed
        if source in allowed:
            return MacVerdict.ACCEPTED
        if self._learning and len(allowed) < self._max_learned:
            allowed.add(source)
            return MacVerdict.ACCEPTED
        return MacVerdict.FOREIGN_SOURCE

    def accept(self, frame: bytes) -> bool:
        """True if `frame` may go onto the bridge (counted in `stats` either way)."""
        verdict = self.classify(frame)
        self.stats.counts[verdict] += 1
        return verdict is MacVerdict.ACCEPTED
