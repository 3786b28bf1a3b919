"""Pure helpers of tunnel/aio/stream_client.py and stream_server.py: the nftables ruleset the
client installs and the matching of ICMP errors to a failed connect."""

from __future__ import annotations

import socket
import struct
import sys
from ipaddress import IPv4Address, IPv6Address, ip_network

from tunnel.aio.stream_client import nft_ruleset
from tunnel.aio.stream_server import ipv6_header, quoted_tcp_ports
from tunnel.config import StreamClientConfig


def test_ruleset_redirects_each_family_to_the_listener() -> None:
    config = StreamClientConfig(
        enabled=True,
        intercept=(ip_network("10.200.0.0/16"), ip_network("fd00:200::/32")),
        listen_port=4999,
    )
    text = nft_ruleset(config, "qst_test")
    assert text.startswith("table inet qst_test {")
    assert "type nat hook output priority -100" in text
    assert "ip daddr { 10.200.0.0/16 } meta l4proto tcp redirect to :4999" in text
    assert "ip6 daddr { fd00:200::/32 } meta l4proto tcp redirect to :4999" in text


def test_ruleset_without_ipv6_prefixes_has_no_ipv6_rule() -> None:
    config = StreamClientConfig(enabled=True, intercept=(ip_network("10.0.0.0/8"),))
    assert "ip6" not in nft_ruleset(config)


def _tcp_syn(source_port: int, destination_port: int) -> bytes:
    return struct.pack("!HHIIBBHHH", source_port, destination_port, 1, 0, 0x50, 0x02, 64240, 0, 0)


def test_icmpv4_unreachable_quoting_a_syn() -> None:
    ip = (
        bytes([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0])
        + IPv4Address("10.200.1.1").packed
        + IPv4Address("10.200.99.1").packed
    )
    message = bytes([3, 1, 0, 0, 0, 0, 0, 0]) + ip + _tcp_syn(40000, 80)[:8]
    assert quoted_tcp_ports(message, 4) == ("10.200.99.1", 40000, 80)
    assert quoted_tcp_ports(bytes([0, 0]) + message[2:], 4) is None  # an echo reply
    assert quoted_tcp_ports(message[:30], 4) is None  # quote too short for the ports


def test_icmpv6_unreachable_quoting_a_syn() -> None:
    ip6 = (
        bytes([0x60, 0, 0, 0, 0, 20, 6, 64])
        + IPv6Address("fd00:200:1::1").packed
        + IPv6Address("fd00:200:99::1").packed
    )
    message = bytes([1, 0, 0, 0, 0, 0, 0, 0]) + ip6 + _tcp_syn(40001, 443)
    assert quoted_tcp_ports(message, 6) == ("fd00:200:99::1", 40001, 443)
    udp = ip6[:6] + bytes([17]) + ip6[7:]
    assert quoted_tcp_ports(message[:8] + udp + _tcp_syn(1, 2), 6) is None


def test_ipv6_header_is_rebuilt_from_the_raw_sockets_control_messages() -> None:
    """An IPv6 raw socket strips the header the Error TLV must carry (-tcp §5.1.3): it is
    written back from the source address and the IPV6_PKTINFO / IPV6_HOPLIMIT messages."""
    destination = IPv6Address("fd00:200:1::1")
    ancillary = [
        (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, destination.packed + (7).to_bytes(4, "little")),
        (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, (63).to_bytes(4, sys.byteorder)),
    ]
    header = ipv6_header("fd00:200:1::2%eth0", ancillary, 48)
    assert len(header) == 40 and header[0] >> 4 == 6
    assert struct.unpack("!IHBB", header[:8]) == (6 << 28, 48, 58, 63)
    assert header[8:24] == IPv6Address("fd00:200:1::2").packed and header[24:] == destination.packed
    assert ipv6_header("fd00::2", [], 8)[24:] == bytes(16)  # no PKTINFO: unspecified
