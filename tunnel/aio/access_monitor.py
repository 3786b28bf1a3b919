"""Watching the client's access networks: is each one usable right now?

Two signals (issue 4, "Access Reports"; tunnel draft §6 says when to report, not how to detect):
- the kernel's view, from rtnetlink link and address events: the interface exists, is up and has
  carrier (IFF_LOWER_UP), and the access's local address is configured and not tentative;
- a liveness probe for silent failures (link up, nothing gets through): a QUIC PING on the
  access's connection every `probe_interval`; when the oldest unanswered one is older than
  `misses` intervals the access counts as failed (`LivenessProbe`, pure logic, driven by the
  client with the loop's clock).

The kernel's view is followed with tunnel/aio/netlink_watch.py (an event socket, the state read
with pyroute2 on a worker thread).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from pyroute2 import IPRoute

from tunnel.aio.netlink_watch import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    NetlinkWatch,
)
from tunnel.config import AccessConfig

log = logging.getLogger("qtun.access")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000  # carrier: the kernel's "link is physically up"
IFA_F_TENTATIVE = 0x40  # IPv6 address still in duplicate address detection: cannot bind yet
IFA_F_DADFAILED = 0x08
DEFAULT_MISSES = 3
RTT_SAMPLES = 8  # PING round trips remembered for the adaptive limit
RTT_MARGIN = 3.0  # a PING unanswered for this many recent round trips is a failure


@dataclass(frozen=True)
class LinkState:
    """The kernel's view of one access network."""

    exists: bool
    up: bool
    carrier: bool
    has_address: bool

    @property
    def usable(self) -> bool:
        return self.exists and self.up and self.carrier and self.has_address

    def reason(self) -> str:
        """Why the access is not usable (for the log), "" when it is."""
        if not self.exists:
            return "interface missing"
        if not self.up:
            return "interface down"
        if not self.carrier:
            return "no carrier"
        if not self.has_address:
            return "local address missing"
        return ""


def read_link_states(accesses: Sequence[AccessConfig]) -> dict[str, LinkState]:
    """Each access's LinkState, read with pyroute2 (blocking: call from a thread with no
    event loop)."""
    with IPRoute() as ipr:
        links = {
            link.get_attr("IFLA_IFNAME"): (link["index"], link["flags"]) for link in ipr.get_links()
        }
        addresses: list[tuple[int, str, int]] = []
        for message in ipr.get_addr():
            address = message.get_attr("IFA_ADDRESS") or message.get_attr("IFA_LOCAL")
            flags = message.get_attr("IFA_FLAGS")
            if flags is None:
                flags = message["flags"]
            if address is not None:
                addresses.append((message["index"], str(address), int(flags)))
    return link_states_from(accesses, links, addresses)


def link_states_from(
    accesses: Iterable[AccessConfig],
    links: dict[str, tuple[int, int]],
    addresses: Iterable[tuple[int, str, int]],
) -> dict[str, LinkState]:
    """The rules of `read_link_states` on already-read data: `links` maps an interface name to
    (index, flags), `addresses` lists (interface index, address, IFA flags)."""
    addresses = list(addresses)
    flags_by_index = {index: flags for index, flags in links.values()}
    states: dict[str, LinkState] = {}
    for access in accesses:
        if access.interface is not None:
            link = links.get(access.interface)
            exists = link is not None
            index, flags = link if link is not None else (-1, 0)
            indexes = {index}
        else:
            indexes = set(flags_by_index)
            exists, flags = True, IFF_UP | IFF_LOWER_UP
        has_address = True
        if access.local_address is not None:
            wanted = access.local_address
            holders = [
                i
                for i, text, ifa_flags in addresses
                if i in indexes
                and _same_address(text, wanted)
                and not ifa_flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
            ]
            has_address = bool(holders)
            if access.interface is None and holders:
                # no interface named: the link state is that of the one holding the address
                flags = flags_by_index.get(holders[0], 0)
        states[access.name] = LinkState(
            exists=exists,
            up=bool(flags & IFF_UP),
            carrier=bool(flags & IFF_LOWER_UP),
            has_address=has_address,
        )
    return states


def _same_address(text: str, wanted: object) -> bool:
    try:
        return ip_address(text.split("%")[0]) == wanted
    except ValueError:
        return False


class LivenessProbe:
    """Silent-failure detector for one connection (pure: the caller passes `now`).

    The caller sends a QUIC PING with `next_uid()` whenever `due(now)`, reports it with
    `sent(uid, now)` and every PingAcknowledged with `acked(uid, now)`. `alive(now)` is False once
    the oldest unanswered PING is older than `limit()`: `misses` intervals, or RTT_MARGIN times
    the largest of the last RTT_SAMPLES PING round trips when that is longer. The second term
    keeps a loaded path from looking dead: under a bulk transfer the PING's acknowledgement
    waits behind the peer's send queue (measured here: over 0.6 s at 140 Mbit/s with 4 MB socket
    buffers), and that is queueing, not a failure. An answer to any PING clears it and every
    earlier one (acknowledgements prove the path works, whichever PING they answer).
    """

    def __init__(self, interval: float, misses: int = DEFAULT_MISSES) -> None:
        if interval <= 0 or misses < 1:
            raise ValueError(
                f"probe interval must be > 0 and misses >= 1, got {interval}, {misses}"
            )
        self.interval = interval
        self.misses = misses
        self._outstanding: dict[int, float] = {}
        self._last_sent: float | None = None
        self._next_uid = 1
        self.sent_count = 0
        self.acked_count = 0
        self.last_rtt: float | None = None
        self._rtts: deque[float] = deque(maxlen=RTT_SAMPLES)

    def due(self, now: float) -> bool:
        return self._last_sent is None or now - self._last_sent >= self.interval

    def next_uid(self) -> int:
        uid = self._next_uid
        self._next_uid += 1
        return uid

    def sent(self, uid: int, now: float) -> None:
        self._outstanding[uid] = now
        self._last_sent = now
        self.sent_count += 1

    def acked(self, uid: int, now: float) -> None:
        sent_at = self._outstanding.get(uid)
        if sent_at is None:
            return
        self.acked_count += 1
        self.last_rtt = now - sent_at
        self._rtts.append(self.last_rtt)
        for other, at in list(self._outstanding.items()):
            if at <= sent_at:
                del self._outstanding[other]

    def silent_for(self, now: float) -> float:
        """How long the oldest unanswered PING has waited (0 if none)."""
        if not self._outstanding:
            return 0.0
        return now - min(self._outstanding.values())

    def limit(self) -> float:
        """How long a PING may stay unanswered before the path counts as failed."""
        recent = max(self._rtts, default=0.0)
        return max(self.misses * self.interval, RTT_MARGIN * recent)

    def alive(self, now: float) -> bool:
        return self.silent_for(now) <= self.limit()

    def reset(self) -> None:
        """Forget outstanding PINGs (the connection moved to another path)."""
        self._outstanding.clear()
        self._last_sent = None


LinkChange = Callable[[str, LinkState], None]


class AccessMonitor:
    """Calls `on_change(access_name, state)` from the loop whenever the kernel's view of an
    access changes (and once per access at `start`). `state(name)` is the latest view."""

    def __init__(self, accesses: Sequence[AccessConfig], on_change: LinkChange) -> None:
        self.accesses = tuple(accesses)
        self.on_change = on_change
        self._states: dict[str, LinkState] = {}
        self._watch = NetlinkWatch(
            RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
            lambda: read_link_states(self.accesses),
            self._on_states,
        )

    @property
    def events_seen(self) -> int:
        return self._watch.events_seen

    def state(self, name: str) -> LinkState | None:
        return self._states.get(name)

    def usable(self, name: str) -> bool:
        state = self._states.get(name)
        return state is not None and state.usable

    async def start(self) -> None:
        """Open the netlink event socket and read the current state."""
        if self.accesses:
            await self._watch.start()

    def recheck(self) -> None:
        """Re-read the state soon (coalesces bursts of events into one read)."""
        self._watch.recheck()

    def _on_states(self, states: dict[str, LinkState]) -> None:
        for name, state in states.items():
            if self._states.get(name) != state:
                self._states[name] = state
                self.on_change(name, state)

    def close(self) -> None:
        self._watch.close()


__all__ = [
    "AccessMonitor",
    "LinkState",
    "LivenessProbe",
    "link_states_from",
    "read_link_states",
]
