"""RFC 9484 (Proxying IP in HTTP, "CONNECT-IP") on the wire: the capsules of §4.7, the URI
template variables of §3/§4.6, and the outermost protocol number of a packet (§4.8) that routes
and scopes match against.

Each capsule is a small frozen value with `encode() -> bytes` (the whole capsule) and
`decode_value(value) -> Self` (the Capsule Value only, as CapsuleReader returns it). As in
tunnel/wire/messages.py, constructors check the RFC's rules and raise ValueError (a bad field on
the sending side is a bug) and decoders turn the same checks into CapsuleError: every "MUST" of
§4.7 a receiver can check is checked at parse time, and RFC 9297 §3.3 makes a violation a
malformed message (the request stream is aborted with H3_MESSAGE_ERROR).

Addresses are `ipaddress` networks: a prefix whose host bits are not zero (§4.7.1, §4.7.2)
cannot even be built, and the prefix length cannot exceed the version's bits.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import ClassVar, Final, Self, TypeAlias, TypeVar
from urllib.parse import quote, unquote

from aioquic._buffer import Buffer
from aioquic.buffer import encode_uint_var

from tunnel.wire.capsule import (
    MAX_VARINT,
    CapsuleError,
    encode_capsule,
    pull_bytes,
    pull_varint,
)

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

_T = TypeVar("_T")

_ADDRESS_SIZE: Final = {4: 4, 6: 16}
"""IP Version -> bytes of its IP Address fields (§4.7.1: 32 or 128 bits)."""

ICMP_PROTOCOL: Final = {4: 1, 6: 58}
"""IP Version -> its ICMP's protocol number: "ICMP traffic is always allowed" whatever a route's
or a scope's protocol (§4.6, §4.7.3), ICMP (1) in IPv4 and ICMPv6 (58) in IPv6 only: 58 in
IPv4 or 1 in IPv6 is some other protocol, held to the route's."""


def _checked(name: str, build: Callable[[], _T]) -> _T:
    """Run a constructor on received fields, turning its ValueError into CapsuleError."""
    try:
        return build()
    except ValueError as exc:
        raise CapsuleError(f"{name} capsule is malformed: {exc}") from None


def _pull_version(buf: Buffer) -> int:
    version = pull_bytes(buf, 1, "IP Version")[0]
    if version not in _ADDRESS_SIZE:
        raise ValueError(f"IP Version {version} is neither 4 nor 6")
    return version


def _pull_address(buf: Buffer, version: int, what: str) -> IPAddress:
    raw = pull_bytes(buf, _ADDRESS_SIZE[version], what)
    return IPv4Address(raw) if version == 4 else IPv6Address(raw)


def _pull_prefix(buf: Buffer) -> tuple[int, IPNetwork]:
    """Request ID, IP Version, IP Address, IP Prefix Length (§4.7.1 Figure 8, §4.7.2 Figure 10)."""
    request_id = pull_varint(buf, "Request ID")
    version = _pull_version(buf)
    address = _pull_address(buf, version, "IP Address")
    prefix_length = pull_bytes(buf, 1, "IP Prefix Length")[0]
    if prefix_length > address.max_prefixlen:
        raise ValueError(
            f"IP Prefix Length {prefix_length} exceeds the {address.max_prefixlen} bits of "
            f"an IPv{version} address"
        )
    # strict: "the lower bits ... not covered by the prefix length MUST all be set to 0"
    return request_id, ip_network((address, prefix_length), strict=True)


def _push_prefix(request_id: int, prefix: IPNetwork) -> bytes:
    return (
        encode_uint_var(request_id)
        + bytes((prefix.version,))
        + prefix.network_address.packed
        + bytes((prefix.prefixlen,))
    )


def _pull_addresses(name: str, value: bytes, build: Callable[[int, IPNetwork], _T]) -> list[_T]:
    """The Assigned or Requested Address entries filling a capsule value, each built by `build`."""
    buf = Buffer(data=value)

    def pull_one() -> _T:
        request_id, prefix = _pull_prefix(buf)
        return build(request_id, prefix)

    entries: list[_T] = []
    while not buf.eof():
        entries.append(_checked(name, pull_one))
    return entries


def _check_request_id(request_id: int, minimum: int) -> None:
    if not minimum <= request_id <= MAX_VARINT:
        raise ValueError(f"Request ID {request_id} is outside {minimum}..2^62-1")


def _as_network(prefix: IPNetwork | str) -> IPNetwork:
    return prefix if isinstance(prefix, IPv4Network | IPv6Network) else ip_network(prefix)


def unassigned(version: int) -> IPNetwork:
    """§4.7.2: the Assigned Address that refuses a request: all-zero, maximum length."""
    return IPv4Network("0.0.0.0/32") if version == 4 else IPv6Network("::/128")


# --- §4.7.1 ADDRESS_ASSIGN ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssignedAddress:
    """§4.7.1 Figure 8: an address or prefix its receiver may use as source. `request_id` is the
    ADDRESS_REQUEST entry it answers, or 0 if unsolicited."""

    request_id: int
    prefix: IPNetwork

    def __post_init__(self) -> None:
        _check_request_id(self.request_id, 0)
        object.__setattr__(self, "prefix", _as_network(self.prefix))

    @property
    def is_rejection(self) -> bool:
        """§4.7.2: all-zero at maximum length answers a request that was not granted."""
        return self.prefix == unassigned(self.prefix.version)


@dataclass(frozen=True, slots=True)
class AddressAssign:
    """§4.7.1 ADDRESS_ASSIGN capsule (type 0x01): the full list of what the receiver may use
    (each one replaces the last; empty removes every address)."""

    CAPSULE_TYPE: ClassVar[int] = 0x01

    addresses: tuple[AssignedAddress, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))

    def encode(self) -> bytes:
        value = b"".join(_push_prefix(a.request_id, a.prefix) for a in self.addresses)
        return encode_capsule(self.CAPSULE_TYPE, value)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        return cls(tuple(_pull_addresses("ADDRESS_ASSIGN", value, AssignedAddress)))

    @property
    def prefixes(self) -> tuple[IPNetwork, ...]:
        """The prefixes granted (rejections left out), each once: the receiver's allowed sources
        (§11). A prefix may come several times, answering several Request IDs (§4.7.2)."""
        return tuple(dict.fromkeys(a.prefix for a in self.addresses if not a.is_rejection))


# --- §4.7.2 ADDRESS_REQUEST ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestedAddress:
    """§4.7.2 Figure 10: Request ID (never 0) and the prefix wished for; an all-zero address
    asks for any address of that version, of that prefix length."""

    request_id: int
    prefix: IPNetwork

    def __post_init__(self) -> None:
        _check_request_id(self.request_id, 1)  # "MUST NOT be zero"
        object.__setattr__(self, "prefix", _as_network(self.prefix))

    @property
    def any_address(self) -> bool:
        return int(self.prefix.network_address) == 0


@dataclass(frozen=True, slots=True)
class AddressRequest:
    """§4.7.2 ADDRESS_REQUEST capsule (type 0x02): one or more Requested Addresses. Zero is
    malformed ("MUST abort the IP proxying request stream"), and so is one Request ID twice
    in a capsule ("Each request from a given endpoint carries a different identifier"; reuse
    across capsules is the session's to check)."""

    CAPSULE_TYPE: ClassVar[int] = 0x02

    addresses: tuple[RequestedAddress, ...]

    def __post_init__(self) -> None:
        addresses = tuple(self.addresses)
        if not addresses:
            raise ValueError("an ADDRESS_REQUEST must request at least one address")
        ids = [a.request_id for a in addresses]
        if len(set(ids)) != len(ids):
            raise ValueError("a Request ID appears twice in one ADDRESS_REQUEST")
        object.__setattr__(self, "addresses", addresses)

    def encode(self) -> bytes:
        value = b"".join(_push_prefix(a.request_id, a.prefix) for a in self.addresses)
        return encode_capsule(self.CAPSULE_TYPE, value)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        addresses = _pull_addresses("ADDRESS_REQUEST", value, RequestedAddress)
        return _checked("ADDRESS_REQUEST", lambda: cls(tuple(addresses)))


# --- §4.7.3 ROUTE_ADVERTISEMENT -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPAddressRange:
    """§4.7.3 Figure 12: an inclusive range of destinations and the IP Protocol allowed to them
    (0: every protocol; ICMP is always allowed)."""

    start: IPAddress
    end: IPAddress
    protocol: int = 0

    def __post_init__(self) -> None:
        if self.start.version != self.end.version:
            raise ValueError(f"range {self.start}..{self.end} mixes IPv4 and IPv6")
        if int(self.start) > int(self.end):
            raise ValueError(f"Start IP Address {self.start} is above End {self.end}")
        if not 0 <= self.protocol <= 0xFF:
            raise ValueError(f"IP Protocol {self.protocol} does not fit in one byte")

    @property
    def version(self) -> int:
        return self.start.version

    @classmethod
    def of_network(cls, network: IPNetwork | str, protocol: int = 0) -> Self:
        """The range a prefix covers (e.g. 0.0.0.0/0 for a full IPv4 tunnel)."""
        net = _as_network(network)
        return cls(net.network_address, net.broadcast_address, protocol)

    def contains(self, address: IPAddress) -> bool:
        return address.version == self.version and int(self.start) <= int(address) <= int(self.end)


def _range_order_error(a: IPAddressRange, b: IPAddressRange) -> str | None:
    """Why range `a` may not precede range `b` in one capsule (§4.7.3's three rules)."""
    if a.version > b.version:
        return f"an IPv{a.version} range precedes an IPv{b.version} one"
    if a.version == b.version:
        if a.protocol > b.protocol:
            return f"IP Protocol {a.protocol} precedes {b.protocol}"
        if a.protocol == b.protocol and int(a.end) >= int(b.start):
            return f"ranges {a.start}..{a.end} and {b.start}..{b.end} overlap or are out of order"
    return None


@dataclass(frozen=True, slots=True)
class RouteAdvertisement:
    """§4.7.3 ROUTE_ADVERTISEMENT capsule (type 0x03): the full list of ranges its sender will
    route (each one supersedes the last). The list must be ordered by IP Version, then IP
    Protocol, then address, ranges of one version and protocol strictly apart; and no range of
    protocol 0 may overlap one of another protocol (checking that is OPTIONAL, but one that is
    detected MUST abort the stream: we check it)."""

    CAPSULE_TYPE: ClassVar[int] = 0x03

    ranges: tuple[IPAddressRange, ...] = ()

    def __post_init__(self) -> None:
        ranges = tuple(self.ranges)
        for a, b in itertools.pairwise(ranges):
            if (why := _range_order_error(a, b)) is not None:
                raise ValueError(why)
        for version in (4, 6):
            _check_any_protocol_overlap([r for r in ranges if r.version == version])
        object.__setattr__(self, "ranges", ranges)

    def encode(self) -> bytes:
        value = b"".join(
            bytes((r.version,)) + r.start.packed + r.end.packed + bytes((r.protocol,))
            for r in self.ranges
        )
        return encode_capsule(self.CAPSULE_TYPE, value)

    @classmethod
    def decode_value(cls, value: bytes) -> Self:
        buf = Buffer(data=value)
        ranges: list[IPAddressRange] = []

        def pull_range() -> IPAddressRange:
            version = _pull_version(buf)
            start = _pull_address(buf, version, "Start IP Address")
            end = _pull_address(buf, version, "End IP Address")
            return IPAddressRange(start, end, pull_bytes(buf, 1, "IP Protocol")[0])

        while not buf.eof():
            ranges.append(_checked("ROUTE_ADVERTISEMENT", pull_range))
        return _checked("ROUTE_ADVERTISEMENT", lambda: cls(tuple(ranges)))


def _check_any_protocol_overlap(ranges: list[IPAddressRange]) -> None:
    """§4.7.3: a protocol-0 range may not overlap a range of a given protocol. The protocol-0
    ranges are sorted and disjoint (the ordering rules), so each other range is one bisection."""
    any_protocol = [r for r in ranges if r.protocol == 0]
    starts = [int(r.start) for r in any_protocol]
    for r in ranges:
        if r.protocol == 0:
            continue
        # the last protocol-0 range starting at or before r.end is the only one that can overlap
        at = bisect.bisect_right(starts, int(r.end)) - 1
        if at >= 0 and int(any_protocol[at].end) >= int(r.start):
            other = any_protocol[at]
            raise ValueError(
                f"range {r.start}..{r.end} of IP Protocol {r.protocol} overlaps "
                f"{other.start}..{other.end} of every protocol"
            )


def ordered_ranges(ranges: Iterable[IPAddressRange]) -> tuple[IPAddressRange, ...]:
    """`ranges` in the order §4.7.3 requires, ranges of one version and protocol that overlap or
    touch merged: what a sender builds a RouteAdvertisement from (e.g. a configuration's list)."""
    merged: list[IPAddressRange] = []
    for r in sorted(ranges, key=lambda r: (r.version, r.protocol, int(r.start))):
        last = merged[-1] if merged else None
        if (
            last is not None
            and (last.version, last.protocol) == (r.version, r.protocol)
            and int(r.start) <= int(last.end) + 1
        ):
            if int(r.end) > int(last.end):
                merged[-1] = IPAddressRange(last.start, r.end, r.protocol)
        else:
            merged.append(r)
    return tuple(merged)


ConnectIpCapsule: TypeAlias = AddressAssign | AddressRequest | RouteAdvertisement

CONNECT_IP_DECODERS: Final[Mapping[int, Callable[[bytes], ConnectIpCapsule]]] = {
    AddressAssign.CAPSULE_TYPE: AddressAssign.decode_value,
    AddressRequest.CAPSULE_TYPE: AddressRequest.decode_value,
    RouteAdvertisement.CAPSULE_TYPE: RouteAdvertisement.decode_value,
}
"""RFC 9484 §12.4 capsule types (the HTTP Capsule Types registry)."""


def decode_connect_ip_capsule(capsule_type: int, value: bytes) -> ConnectIpCapsule:
    """The §4.7 capsule of a known type; KeyError for another (the caller skips those)."""
    return CONNECT_IP_DECODERS[capsule_type](value)


# --- §3 / §4.6 URI template ---------------------------------------------------------------------

DEFAULT_TEMPLATE_PATH: Final = "/.well-known/masque/ip/{target}/{ipproto}/"
"""§3: the default template's path, which IP proxies "SHOULD" serve; the only one ours serves."""
WILDCARD: Final = "*"
_PATH_PREFIX, _PATH_SUFFIX = "/.well-known/masque/ip/", "/"


@dataclass(frozen=True, slots=True)
class RequestScope:
    """§4.6: the scope a request asks for. `target` None is the wildcard (any host); a DNS name
    is kept as text (the proxy must resolve it before answering). `ipproto` None: any protocol."""

    target: IPNetwork | str | None = None
    ipproto: int | None = None

    def __post_init__(self) -> None:
        if self.ipproto is not None and not 0 <= self.ipproto <= 0xFF:
            raise ValueError(f"ipproto {self.ipproto} is outside 0..255")
        if isinstance(self.target, str) and not _is_reg_name(self.target):
            raise ValueError(f"target {self.target!r} is not a host name")

    def path(self) -> str:
        """The :path of the default template expanded with this scope (§3, §4.6 Figure 6)."""
        if self.target is None:
            target = WILDCARD
        elif isinstance(self.target, str):
            target = self.target
        else:
            address = str(self.target.network_address)
            full = self.target.prefixlen == self.target.max_prefixlen
            target = quote(address if full else f"{address}/{self.target.prefixlen}", safe=".")
        ipproto = WILDCARD if self.ipproto is None else str(self.ipproto)
        return f"{_PATH_PREFIX}{target}/{ipproto}{_PATH_SUFFIX}"

    @classmethod
    def from_path(cls, path: str) -> Self | None:
        """The scope of a :path of the default template; None if the path is not one (404).
        ValueError if it is one whose variables break §4.6 (a malformed request, 400)."""
        if not (path.startswith(_PATH_PREFIX) and path.endswith(_PATH_SUFFIX)):
            return None
        parts = path[len(_PATH_PREFIX) : -len(_PATH_SUFFIX)].split("/")
        if len(parts) != 2:
            return None
        raw_target, raw_ipproto = parts
        if not raw_target or not raw_ipproto:
            raise ValueError("the target and ipproto variables must not be empty")
        ipproto: int | None = None
        if raw_ipproto != WILDCARD:
            if not (raw_ipproto.isascii() and raw_ipproto.isdigit() and len(raw_ipproto) <= 3):
                raise ValueError(f"ipproto {raw_ipproto!r} is not 0..255 or *")
            ipproto = int(raw_ipproto)
        return cls(_parse_target(raw_target), ipproto)


def _is_reg_name(text: str) -> bool:
    """A host name in the unreserved characters of RFC 3986 (§4.6 Figure 6's reg-name, without
    the percent-encodings and sub-delims no DNS name needs)."""
    return bool(text) and all(c.isascii() and (c.isalnum() or c in "-._~") for c in text)


def _parse_target(raw: str) -> IPNetwork | str | None:
    """§4.6 Figure 6 target: "*", an IP prefix (colons and the slash percent-encoded), or a host
    name. The raw text holds no "/" (the path was split on them): a slash came from %2F."""
    if raw == WILDCARD:
        return None
    if ":" in raw:
        raise ValueError("the colons of an IPv6 target must be percent-encoded (%3A)")
    text = unquote(raw)
    address, slash, length = text.partition("/")
    try:
        parsed = ip_address(address)
    except ValueError:
        if slash or not _is_reg_name(text):
            raise ValueError(f"target {text!r} is neither an IP prefix nor a host name") from None
        return text
    if "%" in address:
        raise ValueError("IPv6 zone identifiers are not supported in a target (§4.6)")
    # Figure 6: 1*2DIGIT after an IPv4 address, 1*3DIGIT after an IPv6 one
    digits = 2 if parsed.version == 4 else 3
    if slash and not (length.isascii() and length.isdigit() and len(length) <= digits):
        raise ValueError(f"target prefix length {length!r} is not a decimal number")
    prefix_length = int(length) if slash else parsed.max_prefixlen
    try:
        # strict: "the lower bits of the IP address that are not covered ... MUST all be 0"
        return ip_network((parsed, prefix_length), strict=True)
    except ValueError as exc:
        raise ValueError(f"target {text!r} is not a valid IP prefix: {exc}") from None


# --- §4.8 the outermost protocol of a packet ------------------------------------------------------

_IPV6_EXTENSION_HEADERS: Final = frozenset({0, 43, 60, 135, 139, 140})
"""IPv6 extension headers of the RFC 8200 §4 shape (Next Header, Hdr Ext Len in 8-octet units
beyond the first 8), which a route's or a scope's protocol looks past (§4.8)."""
_IPV6_FRAGMENT: Final = 44
_IPV6_AH: Final = 51
_MAX_EXTENSION_HEADERS: Final = 16
"""How many extension headers a packet may chain before we give up on it (a bound against a
packet made of nothing else)."""


def outermost_protocol(packet: bytes) -> int | None:
    """The Internet Protocol Number a route or scope matches (§4.8): IPv4's Protocol, or the
    first IPv6 Next Header that is not an extension header. None if the packet is too short to
    tell or the chain is longer than we follow."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return packet[9] if len(packet) >= 20 else None
    if version != 6 or len(packet) < 40:
        return None
    next_header, offset = packet[6], 40
    for _ in range(_MAX_EXTENSION_HEADERS):
        if next_header == _IPV6_FRAGMENT:
            size = 8
        elif next_header == _IPV6_AH:
            if len(packet) < offset + 2:
                return None
            size = (packet[offset + 1] + 2) * 4  # RFC 4302 §2.2: in 4-octet units, minus 2
        elif next_header in _IPV6_EXTENSION_HEADERS:
            if len(packet) < offset + 2:
                return None
            size = (packet[offset + 1] + 1) * 8
        else:
            return next_header
        if len(packet) < offset + size:
            return None
        next_header, offset = packet[offset], offset + size
    return None
