"""The L2 role guard (tunnel/policy/l2_guard.py): no router or DHCP server messages from a
client that is not the bridge's router, no ARP/ND claim for a MAC other than the frame's
source, no header chain hidden from the guard. Frames built byte by byte from the RFCs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.policy.l2_guard import GuardVerdict, check
from tunnel.policy.mac_filter import MacFilter

CLIENT = bytes.fromhex("02000000000a")
VICTIM = bytes.fromhex("020000000001")  # the gateway's MAC, say
BROADCAST = b"\xff" * 6
ALL_NODES = bytes.fromhex("333300000001")


def ethernet(payload: bytes, ethertype: int, source: bytes = CLIENT, tags: int = 0) -> bytes:
    vlan = b"".join((0x8100).to_bytes(2) + (10 + n).to_bytes(2) for n in range(tags))
    return BROADCAST + source + vlan + ethertype.to_bytes(2) + payload


def ipv4(protocol: int, upper: bytes, fragment_offset: int = 0) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[2:4] = (20 + len(upper)).to_bytes(2)
    header[6:8] = (fragment_offset // 8).to_bytes(2)
    header[8] = 64
    header[9] = protocol
    header[12:16] = bytes([10, 0, 0, 2])
    header[16:20] = bytes([255, 255, 255, 255])
    return bytes(header) + upper


def ipv6(next_header: int, payload: bytes) -> bytes:
    header = bytearray(40)
    header[0] = 0x60
    header[4:6] = len(payload).to_bytes(2)
    header[6] = next_header
    header[7] = 255
    header[8:24] = bytes.fromhex("fe80000000000000000000fffe00000a")
    header[24:40] = bytes.fromhex("ff020000000000000000000000000001")
    return bytes(header) + payload


def udp(destination_port: int, source_port: int = 40000) -> bytes:
    return source_port.to_bytes(2) + destination_port.to_bytes(2) + (8).to_bytes(2) + bytes(2)


def lladdr_option(kind: int, mac: bytes) -> bytes:
    return bytes([kind, 1]) + mac


def icmpv6(kind: int, body: bytes = b"") -> bytes:
    return bytes([kind, 0]) + bytes(2) + body


def router_advertisement(mac: bytes = CLIENT) -> bytes:
    return icmpv6(134, bytes(12) + lladdr_option(1, mac))


def neighbor_advertisement(mac: bytes) -> bytes:
    target = bytes.fromhex("fe80000000000000000000fffe000001")
    return icmpv6(136, bytes(4) + target + lladdr_option(2, mac))


def neighbor_solicitation(mac: bytes) -> bytes:
    target = bytes.fromhex("fe80000000000000000000fffe000001")
    return icmpv6(135, bytes(4) + target + lladdr_option(1, mac))


def arp_reply(sender_mac: bytes) -> bytes:
    return (
        (1).to_bytes(2)  # Ethernet
        + (0x0800).to_bytes(2)
        + bytes([6, 4])
        + (2).to_bytes(2)  # reply
        + sender_mac
        + bytes([10, 0, 0, 1])  # "10.0.0.1 is at sender_mac"
        + BROADCAST
        + bytes([10, 0, 0, 255])
    )


def extension(next_header: int, length_units: int = 0) -> bytes:
    """A hop-by-hop / destination options header of (length_units + 1) * 8 bytes."""
    return bytes([next_header, length_units]) + bytes(6 + 8 * length_units)


def fragment_header(next_header: int, offset: int = 0, more: bool = True) -> bytes:
    return bytes([next_header, 0]) + (offset | int(more)).to_bytes(2) + (7).to_bytes(4)


RA = ethernet(ipv6(58, router_advertisement()), 0x86DD)
REDIRECT_V6 = ethernet(ipv6(58, icmpv6(137, bytes(36))), 0x86DD)
REDIRECT_V4 = ethernet(ipv4(1, bytes([5, 1]) + bytes(26)), 0x0800)
DHCPV4_OFFER = ethernet(ipv4(17, udp(68, source_port=67) + bytes(240)), 0x0800)
DHCPV6_ADVERTISE = ethernet(ipv6(17, udp(546, source_port=547) + bytes([2]) + bytes(3)), 0x86DD)


@pytest.mark.parametrize(
    ("frame", "verdict"),
    [
        (RA, GuardVerdict.ROUTER_ROLE),
        (REDIRECT_V6, GuardVerdict.ROUTER_ROLE),
        (REDIRECT_V4, GuardVerdict.ROUTER_ROLE),
        (DHCPV4_OFFER, GuardVerdict.DHCP_SERVER_ROLE),
        (DHCPV6_ADVERTISE, GuardVerdict.DHCP_SERVER_ROLE),
    ],
    ids=["ra", "redirect-v6", "redirect-v4", "dhcpv4-offer", "dhcpv6-advertise"],
)
def test_router_and_dhcp_server_messages_pass_only_for_the_bridges_server(
    frame: bytes, verdict: GuardVerdict
) -> None:
    assert check(frame) is verdict
    assert check(frame, serves=True) is None


def test_a_hosts_own_dhcp_and_neighbour_messages_pass() -> None:
    discover = ethernet(ipv4(17, udp(67, source_port=68) + bytes(240)), 0x0800)
    solicit = ethernet(ipv6(17, udp(547, source_port=546) + bytes([1]) + bytes(3)), 0x86DD)
    rs = ethernet(ipv6(58, icmpv6(133, bytes(4) + lladdr_option(1, CLIENT))), 0x86DD)
    ns = ethernet(ipv6(58, neighbor_solicitation(CLIENT)), 0x86DD)
    na = ethernet(ipv6(58, neighbor_advertisement(CLIENT)), 0x86DD)
    arp = ethernet(arp_reply(CLIENT), 0x0806)
    tcp = ethernet(ipv4(6, bytes(20)), 0x0800)
    ipx = ethernet(bytes(30), 0x8137)
    for frame in (discover, solicit, rs, ns, na, arp, tcp, ipx):
        assert check(frame) is None


@pytest.mark.parametrize(
    "frame",
    [
        ethernet(arp_reply(VICTIM), 0x0806),
        ethernet(ipv6(58, neighbor_advertisement(VICTIM)), 0x86DD),
        ethernet(ipv6(58, neighbor_solicitation(VICTIM)), 0x86DD),
        ethernet(ipv6(58, router_advertisement(VICTIM)), 0x86DD),
    ],
    ids=["arp-reply", "neighbor-advertisement", "neighbor-solicitation", "router-advertisement"],
)
def test_a_link_layer_address_not_the_frames_source_is_dropped_even_from_the_server(
    frame: bytes,
) -> None:
    """Neighbours would cache an address at a MAC the client does not send from."""
    assert check(frame, serves=True) is GuardVerdict.FOREIGN_LLADDR


def test_a_short_frame_padded_to_ethernets_minimum_is_read_to_its_ip_length() -> None:
    """A sender pads a frame under 60 bytes with zeros; the padding is no ND option."""
    ns = ethernet(ipv6(58, neighbor_solicitation(CLIENT)), 0x86DD) + bytes(16)
    assert check(ns) is None


def test_a_router_advertisement_behind_extension_headers_is_found() -> None:
    """RFC 7113: an RA guard that stops at the first extension header is evaded."""
    chain = extension(44, 1) + fragment_header(58) + router_advertisement()
    assert check(ethernet(ipv6(0, chain), 0x86DD)) is GuardVerdict.ROUTER_ROLE
    assert check(ethernet(ipv6(0, chain), 0x86DD), serves=True) is None


def test_a_first_fragment_without_the_whole_header_chain_is_dropped() -> None:
    """RFC 7112: the first fragment holds every header up to the upper layer; one that does
    not is how an RA hides from a guard."""
    chain = extension(44, 1) + fragment_header(60) + extension(58, 30)[:20]
    assert check(ethernet(ipv6(0, chain), 0x86DD)) is GuardVerdict.UNREADABLE


def test_a_later_fragment_has_no_header_to_read_and_passes() -> None:
    later = fragment_header(58, offset=1448) + bytes(64)
    assert check(ethernet(ipv6(44, later), 0x86DD)) is None
    assert check(ethernet(ipv4(17, bytes(64), fragment_offset=1480), 0x0800)) is None


def test_a_chain_longer_than_any_legitimate_one_is_dropped() -> None:
    eight = extension(60) * 7 + extension(58) + router_advertisement()
    assert check(ethernet(ipv6(60, eight), 0x86DD)) is GuardVerdict.ROUTER_ROLE
    nine = extension(60) * 8 + extension(58) + router_advertisement()
    assert check(ethernet(ipv6(60, nine), 0x86DD)) is GuardVerdict.UNREADABLE


def test_vlan_tags_are_looked_through_up_to_two() -> None:
    payload = ipv6(58, router_advertisement())
    assert check(ethernet(payload, 0x86DD, tags=1)) is GuardVerdict.ROUTER_ROLE
    assert check(ethernet(payload, 0x86DD, tags=2)) is GuardVerdict.ROUTER_ROLE
    assert check(ethernet(payload, 0x86DD, tags=3)) is GuardVerdict.UNREADABLE


@pytest.mark.parametrize("cut", [15, 20, 40, 54])
def test_a_cut_short_ip_header_is_unreadable(cut: int) -> None:
    """Cut inside the headers the guard must read: nothing is let through unread."""
    assert check(RA[:cut]) is GuardVerdict.UNREADABLE
    assert check(DHCPV4_OFFER[: 14 + 20 + 3]) is GuardVerdict.UNREADABLE
    no_header = bytearray(DHCPV4_OFFER)
    no_header[14] = 0x40  # IHL 0: the "UDP ports" would be read from the IP header itself
    assert check(bytes(no_header)) is GuardVerdict.UNREADABLE
    ns = ethernet(ipv6(58, neighbor_solicitation(VICTIM)), 0x86DD)
    assert check(ns[:-3]) is GuardVerdict.UNREADABLE  # its option cut: its MAC unread


@given(st.binary(min_size=14, max_size=200), st.booleans())
def test_any_bytes_get_a_verdict_and_never_an_exception(frame: bytes, serves: bool) -> None:
    assert check(frame, serves) in (None, *GuardVerdict)


def test_the_mac_filter_counts_the_guards_drops() -> None:
    macs = MacFilter(max_learned=1)
    assert not macs.accept(RA)
    assert macs.accept(ethernet(ipv6(58, neighbor_solicitation(CLIENT)), 0x86DD))
    assert not macs.accept(ethernet(arp_reply(VICTIM), 0x0806))
    counts = macs.stats.as_dict()
    assert (counts["router_role"], counts["foreign_lladdr"], counts["accepted"]) == (1, 1, 1)
    assert macs.stats.dropped == 2
    server = MacFilter(max_learned=1, serves=True)
    assert server.accept(RA) and server.accept(DHCPV4_OFFER)
