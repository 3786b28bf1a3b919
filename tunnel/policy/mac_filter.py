"""Ingress filtering of the Ethernet frames an L2 client sends into the tunnel.

The L2 twin of tunnel/policy/ingress.py (RFC 2827 for IP): the tunnel draft's security
considerations ask the concentrator not to become a tool for address spoofing, and on a bridge
the address is the source MAC. A frame is forwarded onto the bridge only if its source MAC is
one of the client's: those configured for it (`[[client]] macs`), or, without any, the first
`max_learned` distinct unicast source MACs it sent, locked for as long as the client stays. A
group (multicast/broadcast) source is never accepted (IEEE 802: the I/G bit of a source is
always 0), nor a runt shorter than the 14-byte header.

What one client learns is checked against everyone else (`MacOwners`, one per concentrator): a
MAC configured for another client, learned by another, or the concentrator host's own is never
learned (`taken_source`) — a bridge sends a MAC's traffic to the port it last heard it from, so
a second holder would take over the first one's frames. A client's learned MACs stay its own for
`LEARNED_HOLD` seconds after its last frame even when it leaves, so a reconnect (a tunnel-mode
client is forgotten with its connection) neither frees them for another client nor lets it
change them.

A frame from an accepted source then passes the role guard (l2_guard.py): no Router
Advertisements, Redirects or DHCP server messages unless the client is the bridge's router or
server (`serves`), no ARP/ND claim of a link-layer address other than the frame's source.

Per packet: two byte reads, one integer and one set lookup, then the guard's few byte reads; no
objects made. The owners are asked only while a client still has room to learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from tunnel.policy import l2_guard
from tunnel.policy.l2_guard import GuardVerdict
from tunnel.wire.datagram import ETHERNET_HEADER_SIZE

SOURCE_MAC = slice(6, 12)
GROUP_BIT = 0x01  # the I/G bit: the least significant bit of the first octet
# How long a client's learned MACs stay its own after its last frame. The Linux bridge's default
# ageing time (`ageing_time`, 300 s): as long as the bridge itself keeps sending a silent
# station's traffic to the port it learned it on, and the order of the time the neighbours'
# ARP/ND caches keep pointing at it. Bounded: the table holds only clients heard from in the last
# LEARNED_HOLD seconds, at most l2.max_macs MACs each.
LEARNED_HOLD: Final = 300.0


class MacVerdict(Enum):
    """Why a frame was accepted or dropped; the value is the counter's name in status output."""

    ACCEPTED = "accepted"
    TRUNCATED = "truncated"  # shorter than the Ethernet header
    GROUP_SOURCE = "group_source"  # source MAC multicast or broadcast
    FOREIGN_SOURCE = "foreign_source"  # not the client's MAC (configured, or locked when learned)
    TAKEN_SOURCE = "taken_source"  # would be learned, but another client or the host holds it


Verdict = MacVerdict | GuardVerdict


def _zero_counts() -> dict[Verdict, int]:
    return {**dict.fromkeys(MacVerdict, 0), **dict.fromkeys(GuardVerdict, 0)}


@dataclass
class MacStats:
    counts: dict[Verdict, int] = field(default_factory=_zero_counts)

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


class MacOwners:
    """Who holds which MAC on the bridge, for every client of one concentrator: the MACs
    configured for each client, those each learned (kept `hold` seconds after its last frame
    once it is gone), and the concentrator host's own. Sans-I/O: times are passed in."""

    def __init__(self, configured: Mapping[str, Iterable[int]], hold: float = LEARNED_HOLD) -> None:
        self.hold = hold
        self._holder: dict[int, str] = {
            mac: name for name, macs in configured.items() for mac in macs
        }
        self._host: frozenset[int] = frozenset()
        # Each learning client's set is shared with its MacFilter (its `_allowed`), so a claim
        # granted here is the filter's lock at once.
        self._learned: dict[str, set[int]] = {}
        self._held_until: dict[str, float] = {}  # clients gone whose learned MACs are still held
        self._next_expiry = math.inf

    def joined(self, client: str) -> set[int]:
        """The learned MACs of `client` (connecting): those it still holds from before, else
        an empty set to learn into. Call `expire` first: a hold over must not come back."""
        self._held_until.pop(client, None)
        return self._learned.setdefault(client, set())

    def left(self, client: str, last_frame: float) -> None:
        """`client` is gone: its learned MACs stay its own until `last_frame` + hold."""
        if not self._learned.get(client):
            self._learned.pop(client, None)
            return
        until = last_frame + self.hold
        self._held_until[client] = until
        self._next_expiry = min(self._next_expiry, until)

    def expire(self, now: float) -> None:
        """Free the MACs of gone clients whose hold is over (a float comparison until then)."""
        if now < self._next_expiry:
            return
        for client, until in list(self._held_until.items()):
            if until <= now:
                del self._held_until[client]
                for mac in self._learned.pop(client, ()):
                    del self._holder[mac]
        self._next_expiry = min(self._held_until.values(), default=math.inf)

    def claim(self, client: str, mac: int) -> bool:
        """Learn `mac` for `client` unless someone else (or the host) holds it."""
        if mac in self._host or self._holder.setdefault(mac, client) != client:
            return False
        self._learned.setdefault(client, set()).add(mac)
        return True

    def set_host_macs(self, macs: Iterable[int]) -> None:
        """The concentrator host's own MACs (its bridge's, its TAPs'): never a client's. One a
        client learned before the host reported it is taken back from it."""
        self._host = frozenset(macs)
        for mac in self._host:
            client = self._holder.get(mac)
            if client is not None and mac in self._learned.get(client, ()):
                del self._holder[mac]
                self._learned[client].discard(mac)

    def holder(self, mac: int) -> str | None:
        """The client holding `mac` (configured or learned), None if none does."""
        return self._holder.get(mac)


class MacFilter:
    """Accepts a frame only if its source MAC is the client's (see the module docstring).

    :param configured: the client's MACs; when given, nothing is learned.
    :param max_learned: without configured MACs, how many distinct source MACs are locked.
    :param owners: the concentrator's MAC owners, consulted before learning a MAC (and holding
        what `client` learned before); None: learn without asking (a filter on its own).
    :param client: the client's name in `owners`.
    :param serves: the client is the bridge's router or DHCP server (`[[client]] l2_server`):
        its Router Advertisements, Redirects and DHCP server messages pass the guard.
    """

    def __init__(
        self,
        configured: Iterable[int] = (),
        max_learned: int = 1,
        owners: MacOwners | None = None,
        client: str = "",
        serves: bool = False,
    ) -> None:
        if max_learned < 1:
            raise ValueError(f"max_learned must be >= 1, got {max_learned}")
        self.stats = MacStats()
        self._allowed: set[int] = set(configured)
        self._learning = not self._allowed
        self._max_learned = max_learned
        self._owners = owners
        self._client = client
        self._serves = serves
        if self._learning and owners is not None:
            self._allowed = owners.joined(client)
        # when the client's last accepted frame came (set by the concentrator, on its clock):
        # its learned MACs are held from then on once it is gone
        self.last_frame = 0.0

    @property
    def macs(self) -> tuple[int, ...]:
        """The client's MACs: configured, or learned so far."""
        return tuple(sorted(self._allowed))

    @property
    def learning(self) -> bool:
        """Whether MACs are learned (none configured) and room is left to learn one."""
        return self._learning and len(self._allowed) < self._max_learned

    def classify(self, frame: bytes) -> Verdict:
        """The verdict for `frame`, learning its source if allowed to, without counting."""
        verdict = self._classify_source(frame)
        if verdict is MacVerdict.ACCEPTED:
            return l2_guard.check(frame, self._serves) or verdict
        return verdict

    def _classify_source(self, frame: bytes) -> MacVerdict:
        if len(frame) < ETHERNET_HEADER_SIZE:
            return MacVerdict.TRUNCATED
        if frame[6] & GROUP_BIT:
            return MacVerdict.GROUP_SOURCE
        source = int.from_bytes(frame[SOURCE_MAC])
        allowed = self._allowed
        if source in allowed:
            return MacVerdict.ACCEPTED
        if self._learning and len(allowed) < self._max_learned:
            owners = self._owners
            if owners is None:
                allowed.add(source)
            elif not owners.claim(self._client, source):  # adds it to `allowed` if granted
                return MacVerdict.TAKEN_SOURCE
            return MacVerdict.ACCEPTED
        return MacVerdict.FOREIGN_SOURCE

    def accept(self, frame: bytes) -> bool:
        """True if `frame` may go onto the bridge (counted in `stats` either way)."""
        verdict = self.classify(frame)
        self.stats.counts[verdict] += 1
        return verdict is MacVerdict.ACCEPTED
