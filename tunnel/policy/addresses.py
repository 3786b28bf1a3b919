"""Which client owns an inner address: the concentrator's forwarding table (TUN -> client).

Address assignment is outside the drafts' scope (tunnel draft §tunnel mode leaves it to the
deployment), so it is configuration plus one rule, here:

* A client with a `[[client]]` entry (its name is its certificate's Common Name) owns the
  prefixes listed there, whether connected or not.
* A client without such an entry may use the `[pool]`: the first inner packet it sends whose
  source lies inside the pool, is not the concentrator's own TUN address, lies in no static
  client's prefix and is not held by another client *claims* that address (a /32 or /128),
  one per IP family. It stays the client's alone until the client is gone (its last connection
  closed and its session expired), then it is free again. The client configures that address
  on its TUN itself; nothing is signalled (the drafts have no address assignment message).
* A concentrator of several workers (README "Workers") is one table per process: a claim is
  also taken in the `PoolClaims` the workers share (tunnel/aio/workers.py), so that two
  clients on two workers cannot hold one address. The same client may hold its address on
  two workers at once (a newer connection of it on another one, before the old one is gone).

The table answers "who owns this destination" (longest prefix first) for packets read from the
TUN, and the prefixes a client may use as source (the ingress filter, RFC 2827). Sans-I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Final, Protocol

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

MAX_ALLOCATION_SCAN: Final = 4096
"""Pool addresses tried per family by allocate_pool_addresses: a bound on its work, more than
the clients a concentrator serves (limits.max_clients is 64 by default)."""


class PoolClaims(Protocol):
    """Pool addresses claimed in every process of a concentrator (its workers share one)."""

    def take(self, owner: str, address: IPAddress) -> bool:
        """`address` for `owner` here; False if another client holds it elsewhere, or if no
        room is left to record it."""
        ...

    def give_back(self, owner: str, address: IPAddress) -> None:
        """`owner` no longer holds `address` here."""
        ...


class Claim(Enum):
    """Outcome of AddressTable.claim; the value is a counter name."""

    CLAIMED = "claimed"  # the address is now the client's
    OWNED = "owned"  # it already was
    NOT_IN_POOL = "not_in_pool"  # outside the pool (or no pool in that family)
    TAKEN = "taken"  # another client's, a static prefix, or the concentrator's own address
    STATIC_CLIENT = "static_client"  # clients with a [[client]] entry do not use the pool
    FAMILY_FULL = "family_full"  # the client already holds a pool address of that family


def _host_prefix(address: IPAddress) -> IPNetwork:
    return ip_network(address)


def is_link_scoped_ipv6(packet: bytes) -> bool:
    """Whether `packet` is IPv6 from a link-local source (fe80::/10) or to a multicast group
    (ff00::/8): router solicitations and MLD reports every TUN device sends by itself. They
    never leave the tunnel link (RFC 4291 §2.5.6), so they are dropped without counting as
    spoofed sources or unroutable destinations."""
    return (
        len(packet) >= 40
        and packet[0] >> 4 == 6
        and ((packet[8] == 0xFE and packet[9] & 0xC0 == 0x80) or packet[24] == 0xFF)
    )


class AddressTable:
    """Inner address -> client name (see the module docstring for the rules)."""

    def __init__(
        self,
        static: Mapping[str, Sequence[IPNetwork]],
        pool_v4: IPv4Network | None = None,
        pool_v6: IPv6Network | None = None,
        reserved: Iterable[IPAddress] = (),
        shared: PoolClaims | None = None,
    ) -> None:
        """`shared`: the claims of the other workers' tables (None: this is the only one)."""
        self._static = {name: tuple(prefixes) for name, prefixes in static.items()}
        self.pool_v4 = pool_v4
        self.pool_v6 = pool_v6
        self._reserved = frozenset(reserved)
        self._shared = shared
        self._learned: dict[str, dict[int, IPAddress]] = {}  # name -> {version: address}
        # Lookup structures, rebuilt on change: exact host entries by packed address (the
        # common case, one dict lookup per packet) and the other prefixes longest first.
        self._hosts: dict[bytes, str] = {}
        self._prefixes: list[tuple[int, int, int, str]] = []  # (version, net, mask, name)
        self._rebuild()

    # -- queries ---------------------------------------------------------------------------

    def is_static(self, name: str) -> bool:
        return name in self._static

    def prefixes_of(self, name: str) -> tuple[IPNetwork, ...]:
        """The prefixes `name` may use as inner source (static ones plus claimed addresses)."""
        learned = tuple(_host_prefix(a) for a in self._learned.get(name, {}).values())
        return self._static.get(name, ()) + learned

    def routed_prefixes(self) -> tuple[IPNetwork, ...]:
        """Every prefix the concentrator routes into its TUN: static ones and the pools."""
        prefixes: list[IPNetwork] = [p for ps in self._static.values() for p in ps]
        prefixes += [p for p in (self.pool_v4, self.pool_v6) if p is not None]
        return tuple(prefixes)

    def owner(self, address: IPAddress) -> str | None:
        """The client owning `address` (longest matching prefix), None if nobody does."""
        return self._lookup(address.version, address.packed)

    def owner_of_packet(self, packet: bytes) -> str | None:
        """The client owning the destination address of an IPv4/IPv6 packet (None if nobody
        does, or if the packet is too short to carry one)."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            return self._lookup(4, packet[16:20])
        if version == 6 and len(packet) >= 40:
            return self._lookup(6, packet[24:40])
        return None

    # -- pool ------------------------------------------------------------------------------

    def claim(self, name: str, address: IPAddress) -> Claim:
        """Let pool client `name` claim `address` (see the module docstring)."""
        if self.is_static(name):
            return Claim.STATIC_CLIENT
        pool = self.pool_v4 if address.version == 4 else self.pool_v6
        if pool is None or address not in pool:
            return Claim.NOT_IN_POOL
        held = self._learned.get(name, {})
        if held.get(address.version) == address:
            return Claim.OWNED
        if address.version in held:
            return Claim.FAMILY_FULL
        if (
            address in self._reserved
            or address in (pool.network_address, pool.broadcast_address)
            or self._lookup(address.version, address.packed) is not None
        ):
            return Claim.TAKEN
        if self._shared is not None and not self._shared.take(name, address):
            return Claim.TAKEN  # a client of another worker holds it
        self._learned.setdefault(name, {})[address.version] = address
        self._rebuild()
        return Claim.CLAIMED

    def release(self, name: str) -> tuple[IPAddress, ...]:
        """Free the pool addresses `name` held (it is gone); returns them."""
        held = self._learned.pop(name, {})
        if held:
            self._rebuild()
        if self._shared is not None:
            for address in held.values():
                self._shared.give_back(name, address)
        return tuple(held.values())

    # -- internals -------------------------------------------------------------------------

    def _rebuild(self) -> None:
        hosts: dict[bytes, str] = {}
        prefixes: list[tuple[int, int, int, int, str]] = []
        entries: list[tuple[str, IPNetwork]] = [
            (name, p) for name, ps in self._static.items() for p in ps
        ]
        entries += [
            (name, _host_prefix(a)) for name, held in self._learned.items() for a in held.values()
        ]
        for name, prefix in entries:
            if prefix.prefixlen == prefix.max_prefixlen:
                hosts.setdefault(prefix.network_address.packed, name)
            else:
                mask = int(prefix.netmask)
                net = int(prefix.network_address)
                prefixes.append((prefix.prefixlen, prefix.version, net, mask, name))
        prefixes.sort(key=lambda item: -item[0])
        self._hosts = hosts
        self._prefixes = [(version, net, mask, name) for _, version, net, mask, name in prefixes]

    def _lookup(self, version: int, packed: bytes) -> str | None:
        name = self._hosts.get(packed)
        if name is not None or not self._prefixes:
            return name
        value = int.from_bytes(packed, "big")
        for prefix_version, net, mask, owner in self._prefixes:
            if prefix_version == version and value & mask == net:
                return owner
        return None


def allocate_pool_addresses(table: AddressTable, name: str) -> bool:
    """Claim for pool client `name` the first free address of each pool family it holds none
    of (MASQUE CONNECT-IP: the proxy assigns an address before the first packet, RFC 9484
    §4.7.1, where tunnel mode lets the first packet's source claim it). True if one was
    claimed. Scans at most MAX_ALLOCATION_SCAN addresses per family."""
    claimed = False
    pools: tuple[IPNetwork | None, ...] = (table.pool_v4, table.pool_v6)
    for pool in pools:
        if pool is None:
            continue
        hosts: Iterable[IPAddress] = pool.hosts()
        for address in itertools.islice(hosts, MAX_ALLOCATION_SCAN):
            result = table.claim(name, address)
            if result is Claim.CLAIMED:
                claimed = True
            if result is not Claim.TAKEN:
                break  # claimed, owned, or this family is full for the client
    return claimed


__all__ = [
    "AddressTable",
    "Claim",
    "IPAddress",
    "IPNetwork",
    "PoolClaims",
    "allocate_pool_addresses",
    "is_link_scoped_ipv6",
]
