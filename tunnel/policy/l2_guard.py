"""What an Ethernet client may not say on the bridge, whatever MAC it sends from.

The source-MAC filter (mac_filter.py) keeps a client to its own MACs, but on a bridge a station
can still take others' traffic with frames from its own MAC (tunnel draft §Security: the
concentrator must not become a tool for spoofing). This guard drops, per frame:

- what only a router sends, unless the client is configured as the bridge's router/server
  (`[[client]] l2_server`): IPv6 Router Advertisements and Redirects (RA Guard, RFC 6105) and
  ICMPv4 Redirects — one RA makes every host on the segment route through the sender;
- what only a DHCP server or relay sends, with the same exception: UDP to a DHCP client's port
  (68, RFC 2131; 546, DHCPv6-Shield, RFC 7610) — one offer hands out a gateway and resolver;
- an ARP packet whose sender hardware address, or a Neighbor Discovery message whose source or
  target link-layer address option, is not the frame's source MAC: neighbours would cache an IP
  address at a MAC the client does not send from (another station's, which it cannot take
  over by source MAC, or one nobody holds, a blackhole);
- a frame whose headers the guard cannot read to the end where it must (up to two VLAN tags
  are looked through; an IPv6 first fragment must hold the whole header chain, RFC 7112, or an
  RA could hide behind a fragment header, RFC 7113): dropped rather than let through unread.

Not prevented: a client answering ARP/ND for an IP address another station uses, with its own
MAC (that needs each client's addresses, which an Ethernet client may get by DHCP); configure
static leases and `[[client]] macs` where that matters.

Per frame: the EtherType, and for IP the protocol and one or two more bytes; nothing is made.
Non-first IPv4/IPv6 fragments carry no header to read and pass (their first fragment did not).
"""

from __future__ import annotations

from enum import Enum
from typing import Final

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_IPV6: Final = 0x86DD
VLAN_TAGS: Final = (0x8100, 0x88A8)  # IEEE 802.1Q customer tag, 802.1ad service tag
MAX_VLAN_TAGS: Final = 2  # QinQ; a third tag is not read through

IPPROTO_ICMP: Final = 1
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
ICMPV4_REDIRECT: Final = 5
DHCPV4_CLIENT_PORT: Final = 68
DHCPV6_CLIENT_PORT: Final = 546

# ICMPv6 (RFC 4861 §4): messages only routers send, and those that carry a link-layer address
ND_ROUTER_SOLICITATION: Final = 133
ND_ROUTER_ADVERTISEMENT: Final = 134
ND_NEIGHBOR_SOLICITATION: Final = 135
ND_NEIGHBOR_ADVERTISEMENT: Final = 136
ND_REDIRECT: Final = 137
# where the options start of each message whose link-layer address options are the sender's
# own, from the ICMPv6 header (RFC 4861 §4.1-4.4; a Redirect's target address is another's)
ND_OPTIONS_AT: Final = {
    ND_ROUTER_SOLICITATION: 8,
    ND_ROUTER_ADVERTISEMENT: 16,
    ND_NEIGHBOR_SOLICITATION: 24,
    ND_NEIGHBOR_ADVERTISEMENT: 24,
}
ND_SOURCE_LLADDR: Final = 1
ND_TARGET_LLADDR: Final = 2

# IPv6 extension headers walked to find the upper-layer header (RFC 8200 §4)
IPV6_HOP_BY_HOP: Final = 0
IPV6_ROUTING: Final = 43
IPV6_FRAGMENT: Final = 44
IPV6_AUTH: Final = 51
IPV6_DEST_OPTS: Final = 60
MAX_EXTENSION_HEADERS: Final = 8  # more than anything legitimate carries (RFC 8200 §4.1 lists 6)


class GuardVerdict(Enum):
    """Why the guard dropped a frame; the value is the counter's name in status output."""

    ROUTER_ROLE = "router_role"  # an RA, or an ICMPv4/ICMPv6 Redirect
    DHCP_SERVER_ROLE = "dhcp_server_role"  # UDP to port 68 or 546
    FOREIGN_LLADDR = "foreign_lladdr"  # ARP sender / ND option address not the frame's source
    UNREADABLE = "unreadable"  # cut short, a third VLAN tag, an RA-guard-evading header chain


def check(frame: bytes, serves: bool = False) -> GuardVerdict | None:
    """The reason to drop `frame` (a whole Ethernet frame whose source MAC was accepted), None
    to forward it. `serves`: the client is the bridge's router or DHCP server."""
    at = 12
    ethertype = int.from_bytes(frame[12:14])
    tags = 0
    while ethertype in VLAN_TAGS:
        if tags == MAX_VLAN_TAGS or len(frame) < at + 6:
            return GuardVerdict.UNREADABLE
        tags += 1
        at += 4
        ethertype = int.from_bytes(frame[at : at + 2])
    at += 2
    if ethertype == ETHERTYPE_IPV4:
        return _ipv4(frame, at, serves)
    if ethertype == ETHERTYPE_IPV6:
        return _ipv6(frame, at, serves)
    if ethertype == ETHERTYPE_ARP:
        return _arp(frame, at)
    return None


def _arp(frame: bytes, at: int) -> GuardVerdict | None:
    """RFC 826: hardware type, protocol type, their lengths, operation, then the sender's
    hardware address, which neighbours cache."""
    if len(frame) < at + 8:
        return GuardVerdict.UNREADABLE
    hardware_length = frame[at + 4]
    if hardware_length != 6:
        return None  # not an Ethernet ARP: no neighbour on this bridge caches it
    if len(frame) < at + 14:
        return GuardVerdict.UNREADABLE
    if frame[at + 8 : at + 14] != frame[6:12]:
        return GuardVerdict.FOREIGN_LLADDR
    return None


def _ipv4(frame: bytes, at: int, serves: bool) -> GuardVerdict | None:
    if len(frame) < at + 20:
        return GuardVerdict.UNREADABLE
    protocol = frame[at + 9]
    if protocol not in (IPPROTO_UDP, IPPROTO_ICMP):
        return None
    if int.from_bytes(frame[at + 6 : at + 8]) & 0x1FFF:
        return None  # a later fragment: no header of its own (its first one was read)
    header_length = (frame[at] & 0x0F) * 4
    if header_length < 20:
        return GuardVerdict.UNREADABLE  # no IPv4 header (IHL under 5): not a packet to forward
    upper = at + header_length
    if protocol == IPPROTO_UDP:
        return _udp(frame, upper, DHCPV4_CLIENT_PORT, serves)
    if len(frame) < upper + 1:
        return GuardVerdict.UNREADABLE
    if not serves and frame[upper] == ICMPV4_REDIRECT:
        return GuardVerdict.ROUTER_ROLE
    return None


def _ipv6(frame: bytes, at: int, serves: bool) -> GuardVerdict | None:
    if len(frame) < at + 40:
        return GuardVerdict.UNREADABLE
    header = frame[at + 6]
    upper = at + 40
    # the packet's own end: a short frame may be padded to Ethernet's 60 bytes after it
    end = min(len(frame), upper + int.from_bytes(frame[at + 4 : at + 6]))
    for _ in range(MAX_EXTENSION_HEADERS + 1):  # the last turn finds the upper layer
        if header not in (IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AUTH, IPV6_DEST_OPTS):
            break
        if len(frame) < upper + 8:
            return GuardVerdict.UNREADABLE  # a first fragment must hold the chain (RFC 7112)
        if header == IPV6_FRAGMENT:
            if int.from_bytes(frame[upper + 2 : upper + 4]) & 0xFFF8:
                return None  # a later fragment: no header chain of its own
            length = 8
        elif header == IPV6_AUTH:
            length = (frame[upper + 1] + 2) * 4
        else:
            length = (frame[upper + 1] + 1) * 8
        header = frame[upper]
        upper += length
    else:
        return GuardVerdict.UNREADABLE
    if header == IPPROTO_UDP:
        return _udp(frame, upper, DHCPV6_CLIENT_PORT, serves)
    if header != IPPROTO_ICMPV6:
        return None
    if len(frame) < upper + 1:
        return GuardVerdict.UNREADABLE
    kind = frame[upper]
    if kind in (ND_ROUTER_ADVERTISEMENT, ND_REDIRECT) and not serves:
        return GuardVerdict.ROUTER_ROLE
    options_at = ND_OPTIONS_AT.get(kind)
    if options_at is None:
        return None
    return _nd_options(frame, upper + options_at, end)


def _udp(frame: bytes, at: int, dhcp_client_port: int, serves: bool) -> GuardVerdict | None:
    """A UDP header at `at`: to a DHCP client's port, only from the bridge's server."""
    if len(frame) < at + 4:
        return GuardVerdict.UNREADABLE
    if not serves and int.from_bytes(frame[at + 2 : at + 4]) == dhcp_client_port:
        return GuardVerdict.DHCP_SERVER_ROLE
    return None


def _nd_options(frame: bytes, at: int, end: int) -> GuardVerdict | None:
    """RFC 4861 §4.6: type, length in units of 8 bytes (0 is invalid: receivers drop the
    message, so may we), value; a link-layer address option holds the MAC at +2."""
    source = frame[6:12]
    while at < end:
        if at + 2 > end:
            return GuardVerdict.UNREADABLE
        kind, length = frame[at], frame[at + 1] * 8
        if length == 0 or at + length > end:
            return GuardVerdict.UNREADABLE
        own_address = kind in (ND_SOURCE_LLADDR, ND_TARGET_LLADDR)
        if own_address and frame[at + 2 : at + 8] != source:
            return GuardVerdict.FOREIGN_LLADDR
        at += length
    return None
