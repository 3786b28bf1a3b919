"""The nftables text of the concentrator's optional NAT (no root: text only)."""

from __future__ import annotations

from ipaddress import ip_network

from tunnel.aio.nat import nat_ruleset, table_name


def test_table_name_is_an_nft_identifier_per_tun() -> None:
    assert table_name("qtunc0") == "qtun_nat_qtunc0"
    assert table_name("qcc-tun.2") == "qtun_nat_qcc_tun_2"


def test_ruleset_masquerades_client_sources_except_tun_and_excluded() -> None:
    text = nat_ruleset(
        "qtun_nat_t",
        ["t0", "t0w1"],
        [ip_network("10.8.0.0/24"), ip_network("fd00:8::/64")],
        [ip_network("10.200.0.0/16")],
    )
    # replaces a stale table in the same transaction
    assert text.startswith("table inet qtun_nat_t\ndelete table inet qtun_nat_t\n")
    assert "set clients4 { type ipv4_addr; flags interval; elements = { 10.8.0.0/24 }; }" in text
    assert "set clients6 { type ipv6_addr; flags interval; elements = { fd00:8::/64 }; }" in text
    assert "set exclude4 { type ipv4_addr; flags interval; elements = { 10.200.0.0/16 }; }" in text
    assert "set exclude6 { type ipv6_addr; flags interval; }" in text  # empty: no elements
    assert 'oifname { "t0", "t0w1" } accept' in text  # every worker's TUN
    assert "ip saddr @clients4 ip daddr != @exclude4 counter masquerade" in text
    assert "type nat hook postrouting priority srcnat" in text
