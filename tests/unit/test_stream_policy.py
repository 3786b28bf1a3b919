"""tunnel.policy.stream_policy: which destinations stream mode reaches (-tcp §5.1.1, the built-in
special-purpose denials and the site's allow/deny) and the per-client budget of pending TCP
Connects and stream buffer (-tcp §7.1)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from tunnel.config import StreamServerConfig
from tunnel.policy.stream_policy import (
    SPECIAL_PURPOSE,
    DestinationPolicy,
    IPAddress,
    SpecialRange,
    StreamBudget,
    special_range,
)

DEFAULT = DestinationPolicy(StreamServerConfig().allow)
EVERYTHING = [ip_network("0.0.0.0/0"), ip_network("::/0")]


def middle(prefix: str) -> str:
    """The address in the middle of `prefix` (clear of ::1, 0.0.0.0 and the like)."""
    network = ip_network(prefix)
    return str(network[network.num_addresses // 2])


def test_the_table_cites_a_reference_and_a_reason_for_each_range() -> None:
    assert all(row.reference and row.why and row.name for row in SPECIAL_PURPOSE)
    prefixes = [row.prefix for row in SPECIAL_PURPOSE]
    assert len(prefixes) == len(set(prefixes))


@pytest.mark.parametrize(
    "row", [r for r in SPECIAL_PURPOSE if r.denied], ids=lambda r: str(r.prefix)
)
def test_every_default_denied_range_is_refused_and_explicitly_allowable(
    row: SpecialRange,
) -> None:
    address = ip_address(middle(str(row.prefix)))
    assert special_range(address) == row
    reason = DEFAULT.refusal(address)
    assert reason is not None and str(row.prefix) in reason and "stream.allow" in reason
    # the rule: listing the range (or the part holding the address) in `allow` overrides it
    assert DestinationPolicy([*EVERYTHING, row.prefix]).refusal(address) is None
    host = ip_network(f"{address}/{address.max_prefixlen}")
    assert DestinationPolicy([host]).refusal(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # cloud instance metadata (AWS, GCP, Azure, OpenStack)
        "169.254.1.1",
        "fe80::1",
        "0.0.0.1",
        "0.255.255.255",
        "100.64.0.1",
        "100.100.100.200",  # Alibaba Cloud metadata, in the shared address space
        "192.0.0.9",  # PCP anycast
        "192.0.0.170",  # NAT64 discovery
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "198.18.0.1",
        "198.19.255.254",
        "192.88.99.1",
        "240.0.0.1",
        "254.255.255.255",
        "168.63.129.16",  # Azure WireServer
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::808:808",  # NAT64 of an ordinary address: the prefix itself is denied
        "64:ff9b:1::1",
        "100::1",  # discard-only
        "100:0:0:1::1",  # dummy prefix
        "2001::1",  # Teredo
        "2001:2::1",  # benchmarking
        "2001:20::1",  # ORCHIDv2
        "2001:1::1",  # PCP anycast
        "2001:db8::1",
        "3fff::1",
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "5f00::1",
        "::a9fe:a9fe",  # IPv4-compatible (deprecated)
        "::ffff:0:a9fe:a9fe",  # IPv4-translated (SIIT)
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fec0::1",
        "4000::1",  # reserved IPv6 space
        "fe00::1",
    ],
)
def test_default_denies(address: str) -> None:
    assert DEFAULT.refusal(ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        "10.200.1.2",  # the testbed's servers: private-use ranges stay reachable
        "172.16.0.1",
        "192.168.1.1",
        "fd00:200:1::2",
        "fd00:ec2::253",  # the ULA range around the metadata address
        "8.8.8.8",
        "2606:4700::1111",
        "192.31.196.1",  # AS112, globally reachable
        "2001:3::1",  # AMT inside 2001::/23, globally reachable
        "2001:4:112::1",
        "100.63.255.255",  # just outside 100.64/10
        "100.128.0.0",
        "169.253.255.255",
    ],
)
def test_default_allows(address: str) -> None:
    assert DEFAULT.refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
                "255.255.255.255", "::ffff:127.0.0.1", "::ffff:255.255.255.255"]
)  # fmt: skip
def test_never_allowed_even_when_listed(address: str) -> None:
    parsed = ip_address(address)
    listed = ip_network(f"{parsed}/{parsed.max_prefixlen}")
    assert DestinationPolicy([*EVERYTHING, listed]).refusal(parsed) is not None


def test_a_broader_allow_does_not_open_a_special_range() -> None:
    """Only a prefix inside the special-purpose range opens it: 0.0.0.0/0, or 192.0.0.0/8
    around TEST-NET-1, do not."""
    policy = DestinationPolicy([ip_network("192.0.0.0/8"), ip_network("169.254.169.254/32")])
    assert policy.refusal(IPv4Address("192.0.2.1")) is not None
    assert policy.refusal(IPv4Address("192.1.2.3")) is None
    assert policy.refusal(IPv4Address("169.254.169.254")) is None
    assert policy.refusal(IPv4Address("169.254.169.253")) is not None  # in no allowed prefix


def test_a_more_specific_denied_row_inside_an_allowed_one() -> None:
    """fd00:ec2::254 is denied inside fc00::/7; allowing fc00::/7 does not open it (fc00::/7
    is not inside the /128), listing the /128 does."""
    address = IPv6Address("fd00:ec2::254")
    assert special_range(address) is not None
    assert DestinationPolicy([*EVERYTHING, ip_network("fc00::/7")]).refusal(address) is not None
    assert DestinationPolicy([ip_network("fd00:ec2::254/128")]).refusal(address) is None


def test_mapped_addresses_are_judged_as_ipv4() -> None:
    assert DEFAULT.refusal(IPv6Address("::ffff:169.254.169.254")) is not None
    assert DEFAULT.refusal(IPv6Address("::ffff:10.200.1.2")) is None
    allow_ll = DestinationPolicy([*EVERYTHING, ip_network("169.254.0.0/16")])
    assert allow_ll.refusal(IPv6Address("::ffff:169.254.169.254")) is None
    # an IPv4-only allow list covers the mapped form, an IPv6 one does not
    v4_only = DestinationPolicy([ip_network("10.0.0.0/8")])
    assert v4_only.refusal(IPv6Address("::ffff:10.1.2.3")) is None
    assert DestinationPolicy([ip_network("::/0")]).refusal(IPv6Address("::ffff:10.1.2.3"))


def test_allowed_nat64_is_judged_by_the_ipv4_address_it_embeds() -> None:
    policy = DestinationPolicy([*EVERYTHING, ip_network("64:ff9b::/96")])
    assert policy.refusal(IPv6Address("64:ff9b::808:808")) is None  # 8.8.8.8
    reason = policy.refusal(IPv6Address("64:ff9b::a9fe:a9fe"))  # 169.254.169.254
    assert reason is not None and "169.254.169.254" in reason
    assert policy.refusal(IPv6Address("64:ff9b::7f00:1")) is not None  # 127.0.0.1
    assert policy.refusal(IPv6Address("64:ff9b::a00:1")) is None  # 10.0.0.1
    denying = DestinationPolicy(
        [*EVERYTHING, ip_network("64:ff9b::/96")], deny=[ip_network("10.0.0.0/8")]
    )
    assert denying.refusal(IPv6Address("64:ff9b::a00:1")) is not None
    # the site may open the embedded special range too
    both = DestinationPolicy(
        [*EVERYTHING, ip_network("64:ff9b::/96"), ip_network("169.254.169.254/32")]
    )
    assert both.refusal(IPv6Address("64:ff9b::a9fe:a9fe")) is None


def test_own_addresses() -> None:
    own: set[IPAddress] = {IPv4Address("10.81.0.2"), IPv4Address("169.254.0.9")}
    reason = DEFAULT.refusal(IPv4Address("10.81.0.2"), own.__contains__)
    assert reason is not None and "own" in reason
    assert DEFAULT.refusal(IPv6Address("::ffff:10.81.0.2"), own.__contains__) is not None
    assert DEFAULT.refusal(IPv4Address("10.81.0.3"), own.__contains__) is None
    # listing an own address in allow does not open it: only allow_own_addresses does (the
    # caller then passes an is_own that says False)
    listed = DestinationPolicy([*EVERYTHING, ip_network("169.254.0.9/32")])
    assert listed.refusal(IPv4Address("169.254.0.9"), own.__contains__) is not None
    assert listed.refusal(IPv4Address("169.254.0.9")) is None


def test_allow_and_deny_lists() -> None:
    policy = DestinationPolicy(
        allow=[ip_network("10.200.0.0/16"), ip_network("fd00:200::/32")],
        deny=[ip_network("10.200.9.0/24")],
    )
    assert policy.refusal(IPv4Address("10.200.1.2")) is None
    assert "denied" in (policy.refusal(IPv4Address("10.200.9.1")) or "")
    assert "no allowed" in (policy.refusal(IPv4Address("10.201.0.1")) or "")
    assert policy.refusal(IPv6Address("fd00:200:1::2")) is None
    assert policy.refusal(IPv6Address("fd00:201::2")) is not None
    # deny wins over an explicit allow of a special range
    both = DestinationPolicy(
        [ip_network("169.254.0.0/16")], deny=[ip_network("169.254.169.254/32")]
    )
    assert both.refusal(IPv4Address("169.254.169.254")) is not None
    assert both.refusal(IPv4Address("169.254.1.1")) is None


# -- the per-client budget ----------------------------------------------------------------------


def test_pending_connects_cap() -> None:
    budget = StreamBudget(max_pending=2, max_buffer=100, per_stream=10)
    assert budget.try_open() is None and budget.try_open() is None
    refusal = budget.try_open()
    assert refusal is not None and refusal.kind == "pending"
    budget.connect_done()
    assert budget.try_open() is None
    assert budget.pending == 2 and budget.streams == 3
    with pytest.raises(ValueError, match="max_pending"):
        StreamBudget(0, 100, 10)


def test_stream_buffer_cap() -> None:
    budget = StreamBudget(max_pending=10, max_buffer=35, per_stream=10)
    assert budget.max_streams == 3
    for _ in range(3):
        assert budget.try_open() is None
        budget.connect_done()
    refusal = budget.try_open()
    assert refusal is not None and refusal.kind == "memory" and "30 bytes" in refusal.reason
    assert budget.buffer == 30
    budget.stream_closed()
    assert budget.try_open() is None
    with pytest.raises(ValueError, match="holds no stream"):
        StreamBudget(1, 9, 10)


def test_budget_accounting_errors_are_bugs() -> None:
    budget = StreamBudget(1, 10, 10)
    with pytest.raises(RuntimeError):
        budget.connect_done()
    with pytest.raises(RuntimeError):
        budget.stream_closed()
    assert budget.idle
