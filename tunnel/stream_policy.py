"""Which destinations the concentrator connects to for a TCP Connect (-tcp draft §5.1.1),
and how many TCP Connects it tries at once per connection (§7.1 Denial of Service: "the
Concentrator SHOULD rate limit the number of pending TCP Connect from a given client").

Sans-I/O: the concentrator's own addresses are passed in by the caller (tunnel/aio/
stream_server.py asks the kernel at request time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class DestinationPolicy:
    """A destination is allowed when some `allow` prefix holds it, no `deny` prefix does,
    and it is neither loopback, unspecified, multicast, nor one of the host's own addresses
    (a client must not reach services bound to the concentrator itself)."""

    allow: Sequence[IPNetwork]
    deny: Sequence[IPNetwork] = ()

    def refusal(self, address: IPAddress, is_own_address: bool = False) -> str | None:
        """None if allowed, else why not (one phrase, for the log)."""
        if address.is_loopback or address.is_unspecified or address.is_multicast:
            return f"{address} is a loopback, unspecified or multicast address"
        mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
        if mapped is not None:
            return self.refusal(mapped, is_own_address)
        if is_own_address:
            return f"{address} is one of the concentrator's own addresses"
        if any(address in prefix for prefix in self.deny if prefix.version == address.version):
            return f"{address} is in a denied prefix"
        if not any(address in p for p in self.allow if p.version == address.version):
            return f"{address} is in no allowed prefix"
        return None


class PendingConnects:
    """Counts the TCP Connects in progress of one connection against a cap."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.pending = 0
        self.refused = 0

    def try_start(self) -> bool:
        if self.pending >= self.limit:
            self.refused += 1
            return False
        self.pending += 1
        return True

    def finish(self) -> None:
        if self.pending <= 0:
            raise RuntimeError("finish() without a matching try_start()")
        self.pending -= 1
