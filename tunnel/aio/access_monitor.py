"""Watching the client's access networks: the kernel's view of each one (a LinkState, in
tunnel/agents/access_health.py with the liveness probe the client agent runs on the connections).

From rtnetlink link and address events: the interface exists, is up and has carrier
(IFF_LOWER_UP), and the access's local address is configured and not tentative. Followed with
tunnel/aio/netlink_watch.py (an event socket, the state read with pyroute2 on a worker thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from ipaddress import ip_address

from pyroute2 import IPRoute

from tunnel.agents.access_health import LinkState
from tunnel.aio.netlink_watch import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    NetlinkWatch,
)
from tunnel.aio.netns import NetNamespace
from tunnel.config import AccessConfig

log = logging.getLogger("qtun.access")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000  # carrier: the kernel's "link is physically up"
IFA_F_TENTATIVE = 0x40  # IPv6 address still in duplicate address detection: cannot bind yet
IFA_F_DADFAILED = 0x08


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


LinkChange = Callable[[str, LinkState], None]


class AccessMonitor:
    """Calls `on_change(access_name, state)` from the loop whenever the kernel's view of an
    access changes (and once per access at `start`). `state(name)` is the latest view."""

    def __init__(
        self,
        accesses: Sequence[AccessConfig],
        on_change: LinkChange,
        netns: NetNamespace | None = None,
    ) -> None:
        self.accesses = tuple(accesses)
        self.on_change = on_change
        self._states: dict[str, LinkState] = {}
        self._watch = NetlinkWatch(
            RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
            lambda: read_link_states(self.accesses),
            self._on_states,
            netns,
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


__all__ = ["AccessMonitor", "link_states_from", "read_link_states"]
