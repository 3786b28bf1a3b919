"""Child process for test_qtun_e2e.py, run inside a client's namespace: sends ICMP echo requests
with a source address that is not ours (RFC 2827 ingress filtering must drop them) through the
routing table, so they enter the tunnel's TUN like any packet to that destination."""

from __future__ import annotations

import argparse
import socket
from ipaddress import ip_address

from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", required=True)
    parser.add_argument("--dst", required=True)
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()
    if ip_address(args.dst).version == 4:
        family = socket.AF_INET
        packet = bytes(IP(src=args.src, dst=args.dst) / ICMP(id=0x7167) / b"qgl-spoof")
    else:
        family = socket.AF_INET6
        packet = bytes(IPv6(src=args.src, dst=args.dst) / ICMPv6EchoRequest(id=0x7167))
    # IPPROTO_RAW: we give the whole IP header (IPv4: IP_HDRINCL implied; IPv6: likewise).
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        for _ in range(min(args.count, 100)):
            sock.sendto(packet, (args.dst, 0))
    print(f"sent {args.count}")


if __name__ == "__main__":
    main()
