"""Ingress filtering (RFC 2827): only the client's own source prefixes get through."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from tunnel.policy.ingress import IngressFilter, IngressVerdict

V = IngressVerdict


def v4(src: str) -> bytes:
    return bytes(IP(src=src, dst="192.0.2.1") / UDP() / b"data")


def v6(src: str) -> bytes:
    return bytes(IPv6(src=src, dst="2001:db8::1") / UDP() / b"data")


@pytest.fixture
def filt() -> IngressFilter:
    return IngressFilter(["10.8.0.2/32", IPv4Network("10.9.0.0/24"), "fd00:8::/64"])


def test_accepts_sources_inside_assigned_prefixes(filt: IngressFilter) -> None:
    assert filt.accept(v4("10.8.0.2"))
    assert filt.accept(v4("10.9.0.200"))
    assert filt.accept(v6("fd00:8::1234"))
    assert filt.stats.counts[V.ACCEPTED] == 3 and filt.stats.dropped == 0


def test_rejects_spoofed_sources(filt: IngressFilter) -> None:
    assert filt.check(v4("10.8.0.3")) is V.SPOOFED_SOURCE
    assert filt.check(v6("fd00:9::1")) is V.SPOOFED_SOURCE
    # a v4-mapped address inside v6 does not pass because an IPv4 prefix is assigned
    assert filt.check(v6("::ffff:10.8.0.2")) is V.SPOOFED_SOURCE
    assert filt.stats.as_dict()["spoofed_source"] == 3


@pytest.mark.parametrize(
    ("packet", "verdict"),
    [
        (b"", V.NOT_IP),
        (b"\x50" + bytes(40), V.NOT_IP),
        (b"\x00" * 60, V.NOT_IP),
        (b"\x45" + bytes(10), V.TRUNCATED),
        (v4("10.8.0.2")[:-1], V.TRUNCATED),
        (b"\x60" + bytes(20), V.TRUNCATED),
        (v6("fd00:8::1")[:-1], V.TRUNCATED),
        (b"\x44" + bytes(40), V.BAD_HEADER),
        (b"\x45\x00\x00\x10" + bytes(30), V.BAD_HEADER),
        (b"\x4f\x00\x00\x3c" + bytes(30), V.TRUNCATED),  # IHL 60 bytes > 34 present
    ],
)
def test_rejects_malformed(filt: IngressFilter, packet: bytes, verdict: IngressVerdict) -> None:
    assert filt.check(packet) is verdict
    assert not filt.accept(packet)
    assert filt.stats.counts[verdict] == 2
    assert filt.stats.dropped == 2


def test_classify_does_not_count(filt: IngressFilter) -> None:
    assert filt.classify(v4("10.8.0.2")) is V.ACCEPTED
    assert sum(filt.stats.counts.values()) == 0


def test_set_prefixes_replaces_and_empty_rejects_all(filt: IngressFilter) -> None:
    filt.set_prefixes(["10.8.0.3/32"])
    assert filt.accept(v4("10.8.0.3")) and not filt.accept(v4("10.8.0.2"))
    assert not filt.accept(v6("fd00:8::1"))
    filt.set_prefixes([])
    assert filt.check(v4("10.8.0.3")) is V.SPOOFED_SOURCE
    assert filt.prefixes == ()


def test_bad_prefix_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="host bits zero"):
        IngressFilter(["10.8.0.2/24"])


def test_padded_packet_is_accepted(filt: IngressFilter) -> None:
    assert filt.accept(v4("10.8.0.2") + b"\x00\x00")


@settings(max_examples=5 * settings().max_examples, deadline=None)  # 500 under ci
@given(st.binary(max_size=200))
def test_arbitrary_bytes_get_a_verdict_never_an_exception(data: bytes) -> None:
    filt = IngressFilter(["0.0.0.0/0", "::/0"])
    verdict = filt.check(data)
    if verdict is V.ACCEPTED:
        assert data[0] >> 4 in (4, 6)
    assert sum(filt.stats.counts.values()) == 1


@given(
    st.lists(st.ip_addresses(), min_size=1, max_size=4),
    st.lists(st.integers(0, 128), min_size=4, max_size=4),
    st.ip_addresses(),
)
def test_the_integer_test_agrees_with_ipaddress(
    bases: list[IPv4Address | IPv6Address], lengths: list[int], source: IPv4Address | IPv6Address
) -> None:
    """The per-packet test on integers (network & mask) says what `source in network` says,
    for any prefixes and any source of either family."""
    networks = [
        ip_network(f"{base}/{min(n, base.max_prefixlen)}", strict=False)
        for base, n in zip(bases, lengths, strict=False)
    ]
    filt = IngressFilter(networks)
    packet = v4(str(source)) if source.version == 4 else v6(str(source))
    expected = any(source in net for net in networks if net.version == source.version)
    accepted = filt.classify(packet) is IngressVerdict.ACCEPTED
    assert accepted == expected
