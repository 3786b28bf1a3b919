"""Token buckets: the per-client rate limit of the concentrator, and the budgets of the
replies its server edge sends to packets of unknown senders.

The tunnel draft's security considerations ask the concentrator to protect itself and its
other clients from one client's traffic; a per-client byte rate is the simplest such limit.
A packet that finds too few tokens is dropped (never queued: a queue would only add latency
to a flow that already exceeds its share, and TCP reacts to the drop). Sans-I/O: `now` comes in.

`PrefixBudget` bounds the stateless replies (stateless resets, Version Negotiation) a server
sends to packets it cannot attribute to a connection, whose source may be spoofed (RFC 9000
§10.3.3, §21.5): one global bucket bounds the work and traffic in total, one bucket per source
prefix keeps junk from one network from spending the global budget that legitimate peers
elsewhere (e.g. clients of a restarted concentrator waiting for their reset) need.
"""

from __future__ import annotations

from collections import OrderedDict
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

DEFAULT_BURST_SECONDS: Final = 0.05
"""Bucket depth in seconds of the rate: long enough that a TCP window's burst at the rate
passes, short enough that a client cannot save up a large surge."""
MIN_BURST_BYTES: Final = 3 * 1500
"""A few full-size packets pass even at tiny rates, so a limit never blocks every packet."""


class TokenBucket:
    """`rate` bytes per second with a depth of `burst` bytes; starts full."""

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        if not rate > 0:
            raise ValueError(f"a token bucket rate must be > 0 bytes/s, got {rate}")
        depth = max(rate * DEFAULT_BURST_SECONDS, MIN_BURST_BYTES) if burst is None else burst
        if not depth > 0:
            raise ValueError(f"a token bucket burst must be > 0 bytes, got {burst}")
        self.rate: Final = float(rate)
        self.burst: Final = float(depth)
        self._tokens = self.burst
        self._updated = now
        self.passed = 0
        self.dropped = 0

    @classmethod
    def from_mbps(cls, mbps: float, now: float = 0.0) -> TokenBucket:
        """A bucket for `mbps` megabits per second (10^6 bit/s)."""
        return cls(mbps * 1_000_000 / 8, now=now)

    @property
    def tokens(self) -> float:
        """Bytes that may pass now (as of the last call)."""
        return self._tokens

    def allow(self, size: float, now: float) -> bool:
        """Take `size` bytes if the bucket holds them (counted in `passed`), else count a drop.
        A clock that goes backwards adds no tokens."""
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
        if size <= self._tokens:
            self._tokens -= size
            self.passed += 1
            return True
        self.dropped += 1
        return False


DEFAULT_IPV4_PREFIX: Final = 24
"""IPv4 prefix length sharing one budget: the longest prefix routed between networks (one site,
or one ISP customer), so a host cannot get a new budget by changing its address."""
DEFAULT_IPV6_PREFIX: Final = 56
"""IPv6 prefix length sharing one budget: the usual end-site assignment (RFC 6177 recommends
giving sites /56 or /48). A /64 would give an attacker with one site 256-65536 budgets; a /48
would make the customers of an ISP assigning /56 share one."""
DEFAULT_MAX_PREFIXES: Final = 4096
"""Prefixes tracked at once (least recently used forgotten first): ~1 MB at most, whatever
source addresses a spoofed flood uses."""


def source_prefix(
    host: str, ipv4_prefix: int = DEFAULT_IPV4_PREFIX, ipv6_prefix: int = DEFAULT_IPV6_PREFIX
) -> tuple[int, int]:
    """(IP version, network bits) of `host`'s prefix: the key of its budget. An IPv4-mapped
    IPv6 address counts as the IPv4 address; ValueError if `host` is not an address."""
    address = ip_address(host.split("%", 1)[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, IPv4Address):
        return 4, int(address) >> (32 - ipv4_prefix)
    return 6, int(address) >> (128 - ipv6_prefix)


class PrefixBudget:
    """A global token bucket and one per source prefix (at most `max_prefixes`, least recently
    used forgotten first). Units are the caller's (here: packets); each bucket starts full and
    holds one second of its rate unless a burst is given.

    A cost passes when the sender's prefix bucket AND the global one hold it. The prefix bucket
    is asked first: a prefix that spent its own budget takes nothing from the global one, so
    one network flooding us cannot silence our replies to the others. (Sources spoofed from
    many prefixes can still spend the global budget: that bound protects the victims of the
    reflection and our own uplink, and cannot also tell spoofed from real senders.)
    """

    def __init__(
        self,
        rate: float,
        per_prefix_rate: float,
        *,
        burst: float | None = None,
        per_prefix_burst: float | None = None,
        max_prefixes: int = DEFAULT_MAX_PREFIXES,
        ipv4_prefix: int = DEFAULT_IPV4_PREFIX,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
        now: float = 0.0,
    ) -> None:
        if max_prefixes < 1:
            raise ValueError(f"max_prefixes must be >= 1, got {max_prefixes}")
        if not 0 <= ipv4_prefix <= 32 or not 0 <= ipv6_prefix <= 128:
            raise ValueError(
                f"prefix lengths must be 0-32 (IPv4) and 0-128 (IPv6), got {ipv4_prefix} and "
                f"{ipv6_prefix}"
            )
        self.total = TokenBucket(rate, rate if burst is None else burst, now)
        if not per_prefix_rate > 0:
            raise ValueError(f"a per-prefix rate must be > 0, got {per_prefix_rate}")
        self.per_prefix_rate: Final = float(per_prefix_rate)
        self.per_prefix_burst: Final = float(
            per_prefix_rate if per_prefix_burst is None else per_prefix_burst
        )
        self.max_prefixes: Final = max_prefixes
        self.ipv4_prefix: Final = ipv4_prefix
        self.ipv6_prefix: Final = ipv6_prefix
        self._prefixes: OrderedDict[tuple[int, int], TokenBucket] = OrderedDict()
        self.passed = 0
        self.dropped_prefix = 0  # the sender's prefix had spent its budget
        self.dropped_total = 0  # the global budget was spent

    @property
    def tracked_prefixes(self) -> int:
        return len(self._prefixes)

    def allow(self, host: str, now: float, cost: float = 1.0) -> bool:
        """Take `cost` from `host`'s prefix bucket and the global one if both hold it."""
        try:
            key = source_prefix(host, self.ipv4_prefix, self.ipv6_prefix)
        except ValueError:
            key = (0, 0)  # not an address (cannot come from a socket): one shared bucket
        prefixes = self._prefixes
        bucket = prefixes.get(key)
        if bucket is None:
            if len(prefixes) >= self.max_prefixes:
                prefixes.popitem(last=False)
            bucket = prefixes[key] = TokenBucket(self.per_prefix_rate, self.per_prefix_burst, now)
        else:
            prefixes.move_to_end(key)
        if not bucket.allow(cost, now):
            self.dropped_prefix += 1
            return False
        if not self.total.allow(cost, now):
            self.dropped_total += 1
            return False
        self.passed += 1
        return True
