"""What the concentrator's stream mode lets a client do (-tcp draft): which destinations it
connects to for a TCP Connect (§5.1.1), how many TCP Connects and streams one client may have
at once across all its connections (§7.1 Denial of Service: "the Concentrator SHOULD rate limit
the number of pending TCP Connect from a given client"). (How many log lines a client's
refusals may cost: tunnel/policy/log_budget.py.)

Sans-I/O: whether an address is the host's own is asked through a callable the caller gives
(tunnel/aio/stream_server.py asks the kernel).

The destination rule, in order (the first that applies decides):
1. loopback, unspecified, multicast and limited broadcast: never (§5.1.1 forbids them in a TCP
   Connect; the decoder already rejects them as Malformed TLV, this is defence in depth);
2. the concentrator's own addresses: refused unless `allow_own_addresses`;
3. a `deny` prefix holds it: refused;
4. it lies in a special-purpose range that SPECIAL_PURPOSE denies by default (the most specific
   entry holding it decides): refused, unless an `allow` prefix *inside that range* (the range
   itself or a part of it) holds it - the default allow-all (0.0.0.0/0, ::/0) never does;
5. no `allow` prefix holds it: refused;
6. an IPv4-mapped address (::ffff:0:0/96) is judged as the IPv4 address it stands for, and an
   allowed NAT64 well-known-prefix address (64:ff9b::/96) must also pass steps 1 to 4 as the
   IPv4 address it embeds (RFC 6052 §2.2), so NAT64 is no way around the IPv4 rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Final, NamedTuple

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class SpecialRange:
    """One row of the IANA IPv4/IPv6 Special-Purpose Address Registries (RFC 6890 and its
    updates) or of the IPv6 Address Space registry, with our default for it."""

    prefix: IPNetwork
    name: str
    reference: str
    denied: bool  # by default; an `allow` prefix inside the range overrides it
    why: str


def _row(prefix: str, name: str, reference: str, denied: bool, why: str) -> SpecialRange:
    return SpecialRange(ip_network(prefix), name, reference, denied, why)


_PRIVATE = "a site's own networks: what a concentrator usually serves"
_GLOBAL = "globally reachable in the registry: an ordinary destination"
_DOCS = "documentation only: never a real destination (tests allow it explicitly)"
_RESERVED = "reserved by the IETF, not assigned: no host has one"
_RESERVED_V6 = ("200::/7", "400::/6", "800::/5", "1000::/4", "4000::/3", "6000::/3", "8000::/3",
                "a000::/3", "c000::/3", "e000::/4", "f000::/5", "f800::/6", "fe00::/9")  # fmt: skip

# Every special-purpose range, each decided on purpose. Denied: what is not a remote host, or is
# the concentrator's own surroundings (its links, its cloud's metadata service, its operator's
# infrastructure, relays that would forward around these rules), or is never a real destination
# (documentation, benchmarking, reserved). Not denied: the private-use ranges (RFC 1918, ULA),
# since a concentrator's job is mostly to reach its site's networks, and what the registries
# mark globally reachable. A not-denied row changes nothing by itself (the site's `allow` and
# `deny` still apply); inside a denied range it re-opens a globally reachable part (AMT, AS112
# in 2001::/23). The most specific row holding an address decides.
SPECIAL_PURPOSE: Final[tuple[SpecialRange, ...]] = (
    # -- IPv4 (IANA IPv4 Special-Purpose Address Registry) --
    _row("0.0.0.0/8", '"this network"', "RFC 791 §3.2", True,
         "names no remote host: Linux connects 0.x to the local host"),
    _row("10.0.0.0/8", "private-use", "RFC 1918", False, _PRIVATE),
    _row("100.64.0.0/10", "shared address space (CGN)", "RFC 6598", True,
         "a carrier's NAT space, not the client's; cloud metadata lives there "
         "(Alibaba 100.100.100.200)"),
    _row("169.254.0.0/16", "link-local", "RFC 3927", True,
         "the concentrator's own links: cloud instance metadata 169.254.169.254"),
    _row("172.16.0.0/12", "private-use", "RFC 1918", False, _PRIVATE),
    _row("192.0.0.0/24", "IETF protocol assignments", "RFC 6890 §2.1", True,
         "the operator's own infrastructure: DS-Lite (RFC 6333), PCP and TURN anycast "
         "(RFC 7723, RFC 8155), NAT64 discovery (RFC 7050)"),
    _row("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737", True, _DOCS),
    _row("192.31.196.0/24", "AS112-v4", "RFC 7535", False, _GLOBAL),
    _row("192.52.193.0/24", "AMT", "RFC 7450", False, _GLOBAL),
    _row("192.88.99.0/24", "6to4 relay anycast (deprecated)", "RFC 7526", True,
         "a relay that forwards to the IPv4 address it is given, not a destination"),
    _row("192.168.0.0/16", "private-use", "RFC 1918", False, _PRIVATE),
    _row("192.175.48.0/24", "AS112 direct delegation", "RFC 7534", False, _GLOBAL),
    _row("198.18.0.0/15", "benchmarking", "RFC 2544", True,
         "a lab's device-under-test network, not the Internet"),
    _row("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737", True, _DOCS),
    _row("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737", True, _DOCS),
    _row("240.0.0.0/4", "reserved", "RFC 1112 §4", True, _RESERVED),
    _row("168.63.129.16/32", "Azure platform endpoint (WireServer)",
         "Azure docs: what is IP address 168.63.129.16", True,
         "a cloud's metadata and agent service, outside any special-purpose range"),
    # -- IPv6 (IANA IPv6 Special-Purpose Address Registry and IPv6 Address Space) --
    _row("::/8", "reserved by IETF (IPv4-compatible, IPv4-translated)", "RFC 4291 §2.4", True,
         "deprecated IPv4 embeddings (RFC 4291 §2.5.5.1, RFC 2765); ::ffff:0:0/96 is judged "
         "as its IPv4 address"),
    _row("64:ff9b::/96", "NAT64 well-known prefix", "RFC 6052", True,
         "a NAT64 carries it to any IPv4 address; if allowed, the embedded IPv4 address is "
         "judged too"),
    _row("64:ff9b:1::/48", "NAT64 local-use prefix", "RFC 8215", True,
         "a site's NAT64, to any IPv4 address it chooses"),
    _row("100::/8", "reserved by IETF (discard-only 100::/64)", "RFC 6666", True,
         "discard-only and dummy prefixes: never a real destination"),
    *(_row(p, "reserved by IETF", "RFC 4291 §2.4", True, _RESERVED) for p in _RESERVED_V6),
    _row("2001::/23", "IETF protocol assignments", "RFC 2928", True,
         "Teredo (RFC 4380), benchmarking (RFC 5180), ORCHIDv2 (RFC 7343), DRIP (RFC 9374), "
         "PCP/TURN/DNS-SD anycast: relays and infrastructure"),
    _row("2001:3::/32", "AMT", "RFC 7450", False, _GLOBAL),
    _row("2001:4:112::/48", "AS112-v6", "RFC 7535", False, _GLOBAL),
    _row("2001:db8::/32", "documentation", "RFC 3849", True, _DOCS),
    _row("2002::/16", "6to4", "RFC 3056", True,
         "relayed to the IPv4 address it embeds, around the IPv4 rules"),
    _row("2620:4f:8000::/48", "AS112 direct delegation", "RFC 7534", False, _GLOBAL),
    _row("3fff::/20", "documentation", "RFC 9637", True, _DOCS),
    _row("5f00::/16", "segment routing SIDs", "RFC 9602", True,
         "SRv6 functions of a network, not hosts"),
    _row("fc00::/7", "unique local", "RFC 4193", False, _PRIVATE),
    _row("fd00:ec2::254/128", "AWS instance metadata (IPv6)", "AWS: IMDS IPv6 endpoint", True,
         "a cloud's metadata service inside the unique local range"),
    _row("fe80::/10", "link-local", "RFC 4291 §2.5.6", True,
         "the concentrator's own links (needs a scope; neighbours, routers)"),
    _row("fec0::/10", "site-local (deprecated)", "RFC 3879", True, _RESERVED),
)  # fmt: skip

NAT64_WELL_KNOWN: Final = IPv6Network("64:ff9b::/96")
LIMITED_BROADCAST: Final = IPv4Address("255.255.255.255")


def special_range(address: IPAddress) -> SpecialRange | None:
    """The most specific SPECIAL_PURPOSE row holding `address` (None: an ordinary address)."""
    holding = [
        r for r in SPECIAL_PURPOSE if r.prefix.version == address.version and address in r.prefix
    ]
    return max(holding, key=lambda r: r.prefix.prefixlen, default=None)


def _never(address: IPAddress) -> bool:
    return (
        address.is_loopback
        or address.is_unspecified
        or address.is_multicast
        or address == LIMITED_BROADCAST
    )


@dataclass(frozen=True)
class DestinationPolicy:
    """Whether the concentrator connects to a destination (the rule in the module docstring).
    `allow` and `deny` are the site's prefixes (StreamServerConfig)."""

    allow: Sequence[IPNetwork]
    deny: Sequence[IPNetwork] = ()

    def refusal(
        self, address: IPAddress, is_own: Callable[[IPAddress], bool] = lambda _: False
    ) -> str | None:
        """None if allowed, else why not (one phrase, for the log). `is_own(address)`: whether
        the host has that address (pass a callable that says False when own addresses are
        allowed)."""
        mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
        if mapped is not None:
            return self.refusal(mapped, is_own)
        if _never(address):
            return f"{address} is a loopback, unspecified, multicast or broadcast address"
        refusal = self._denied(address, is_own)
        if refusal is not None:
            return refusal
        if not any(address in p for p in self.allow if p.version == address.version):
            return f"{address} is in no allowed prefix"
        if isinstance(address, IPv6Address) and address in NAT64_WELL_KNOWN:
            embedded = IPv4Address(int(address) & 0xFFFF_FFFF)  # RFC 6052 §2.2, /96 format
            refusal = None if not _never(embedded) else "a never-allowed address"
            refusal = refusal or self._denied(embedded, is_own)
            if refusal is not None:
                return f"{address} is NAT64 for {embedded}: {refusal}"
        return None

    def _denied(self, address: IPAddress, is_own: Callable[[IPAddress], bool]) -> str | None:
        """Steps 2 to 4: own address, site deny, default-denied special-purpose range."""
        if is_own(address):
            return f"{address} is one of the concentrator's own addresses"
        if any(address in p for p in self.deny if p.version == address.version):
            return f"{address} is in a denied prefix"
        row = special_range(address)
        if row is not None and row.denied and not self._explicitly_allowed(address, row):
            return (
                f"{address} is in {row.prefix} ({row.name}, {row.reference}), denied by "
                "default: list it in stream.allow to reach it"
            )
        return None

    def _explicitly_allowed(self, address: IPAddress, row: SpecialRange) -> bool:
        """An `allow` prefix inside the special-purpose range holds `address`."""
        return any(
            p.version == address.version and address in p and p.subnet_of(row.prefix)  # type: ignore[arg-type]
            for p in self.allow
        )


# -- per-client limits (-tcp §7.1) ---------------------------------------------------------------


class BudgetRefusal(NamedTuple):
    kind: str  # "pending" (TCP Connects in progress) or "memory" (stream buffer budget)
    reason: str  # one phrase, for the log


class StreamBudget:
    """One client's stream mode across all of its connections (a client may hold several: one
    per access network in session mode): TCP Connects in progress (§7.1: a SYN per TCP Connect
    is the amplification the draft worries about) and streams, each of which may hold up to
    `per_stream` bytes (window + send_buffer, see tunnel/aio/stream_relay.py), within
    `max_buffer` bytes.

    A stream is counted from its TCP Connect until it ends (`stream_closed`); its connect is
    pending until `connect_done`."""

    def __init__(self, max_pending: int, max_buffer: int, per_stream: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if per_stream < 1 or max_buffer < per_stream:
            raise ValueError(f"max_buffer {max_buffer} holds no stream of {per_stream} bytes")
        self.max_pending = max_pending
        self.max_streams = max_buffer // per_stream
        self.per_stream = per_stream
        self.pending = 0
        self.streams = 0

    @property
    def buffer(self) -> int:
        """Bytes the client's streams may hold at most right now."""
        return self.streams * self.per_stream

    @property
    def idle(self) -> bool:
        return self.pending == 0 and self.streams == 0

    def try_open(self) -> BudgetRefusal | None:
        """Count a new TCP Connect and its stream; None if within the budget, else why not."""
        if self.pending >= self.max_pending:
            return BudgetRefusal(
                "pending", f"the client has {self.pending} TCP Connects pending, the maximum"
            )
        if self.streams >= self.max_streams:
            return BudgetRefusal(
                "memory",
                f"the client has {self.streams} streams, all its stream buffer budget of "
                f"{self.max_streams * self.per_stream} bytes holds",
            )
        self.pending += 1
        self.streams += 1
        return None

    def connect_done(self) -> None:
        if self.pending <= 0:
            raise RuntimeError("connect_done() without a matching try_open()")
        self.pending -= 1

    def stream_closed(self) -> None:
        if self.streams <= 0:
            raise RuntimeError("stream_closed() without a matching try_open()")
        self.streams -= 1
