"""AddressTable: static prefixes, pool claims (exclusive, one per family), longest prefix."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from tunnel.policy.addresses import AddressTable, Claim, is_link_scoped_ipv6


def make_table() -> AddressTable:
    return AddressTable(
        {
            "alice": [ip_network("10.8.0.2/32"), ip_network("fd00:8::2/128")],
            "bob": [ip_network("10.9.0.0/16")],
            "carol": [ip_network("10.9.5.0/24")],
        },
        pool_v4=IPv4Network("10.8.0.0/24"),
        pool_v6=IPv6Network("fd00:8::/64"),
        reserved=[IPv4Address("10.8.0.1"), IPv6Address("fd00:8::1")],
    )


def test_static_lookup_longest_prefix_first() -> None:
    table = make_table()
    assert table.owner(ip_address("10.8.0.2")) == "alice"
    assert table.owner(ip_address("fd00:8::2")) == "alice"
    assert table.owner(ip_address("10.9.1.1")) == "bob"
    assert table.owner(ip_address("10.9.5.7")) == "carol"  # /24 beats /16
    assert table.owner(ip_address("10.8.0.3")) is None
    assert table.owner(ip_address("192.0.2.1")) is None


def test_owner_of_packet_reads_the_destination() -> None:
    table = make_table()
    v4 = bytes(IP(src="10.200.0.2", dst="10.9.5.9") / UDP())
    v6 = bytes(IPv6(src="fd00:200::2", dst="fd00:8::2") / UDP())
    assert table.owner_of_packet(v4) == "carol"
    assert table.owner_of_packet(v6) == "alice"
    assert table.owner_of_packet(b"") is None
    assert table.owner_of_packet(b"\x45" + bytes(10)) is None  # too short for a destination
    assert table.owner_of_packet(b"\x15" + bytes(40)) is None  # not IP


def test_pool_claim_is_exclusive_one_per_family_and_freed_on_release() -> None:
    table = make_table()
    assert table.claim("dave", IPv4Address("10.8.0.7")) is Claim.CLAIMED
    assert table.claim("dave", IPv4Address("10.8.0.7")) is Claim.OWNED
    assert table.claim("dave", IPv4Address("10.8.0.8")) is Claim.FAMILY_FULL
    assert table.claim("erin", IPv4Address("10.8.0.7")) is Claim.TAKEN
    assert table.claim("dave", IPv6Address("fd00:8::99")) is Claim.CLAIMED
    assert table.owner(ip_address("10.8.0.7")) == "dave"
    assert set(table.prefixes_of("dave")) == {
        ip_network("10.8.0.7/32"),
        ip_network("fd00:8::99/128"),
    }
    assert set(table.release("dave")) == {IPv4Address("10.8.0.7"), IPv6Address("fd00:8::99")}
    assert table.owner(ip_address("10.8.0.7")) is None
    assert table.claim("erin", IPv4Address("10.8.0.7")) is Claim.CLAIMED


def test_pool_refuses_static_reserved_outside_and_static_clients() -> None:
    table = make_table()
    assert table.claim("dave", IPv4Address("10.8.0.2")) is Claim.TAKEN  # alice's static
    assert table.claim("dave", IPv4Address("10.8.0.1")) is Claim.TAKEN  # concentrator's own
    assert table.claim("dave", IPv4Address("10.8.0.0")) is Claim.TAKEN  # network address
    assert table.claim("dave", IPv4Address("10.8.0.255")) is Claim.TAKEN  # broadcast
    assert table.claim("dave", IPv4Address("10.7.0.5")) is Claim.NOT_IN_POOL
    assert table.claim("alice", IPv4Address("10.8.0.50")) is Claim.STATIC_CLIENT
    assert table.prefixes_of("dave") == ()


def test_without_pool_nothing_is_claimed() -> None:
    table = AddressTable({"alice": [ip_network("10.8.0.2/32")]})
    assert table.claim("mallory", IPv4Address("10.8.0.9")) is Claim.NOT_IN_POOL
    assert table.routed_prefixes() == (ip_network("10.8.0.2/32"),)


def test_link_scoped_ipv6_is_recognised() -> None:
    solicitation = bytes(IPv6(src="fe80::1", dst="ff02::2") / UDP())
    mld = bytes(IPv6(src="::", dst="ff02::16") / UDP())
    unicast = bytes(IPv6(src="fd00:8::2", dst="fd00:200::2") / UDP())
    assert is_link_scoped_ipv6(solicitation) and is_link_scoped_ipv6(mld)
    assert not is_link_scoped_ipv6(unicast)
    assert not is_link_scoped_ipv6(bytes(IP(src="10.8.0.2", dst="224.0.0.1") / UDP()))
    assert not is_link_scoped_ipv6(solicitation[:39])
