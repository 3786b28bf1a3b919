"""Child process for test_tun.py, run inside a qta-* namespace: opens a TUN with TunDevice and
answers ICMP/ICMPv6 echo requests sent to any address routed into it except its own, so `ping`
through the device works. Commands on stdin: "pause" (stop reading), "resume", "stats", "stop".
Lives at most --lifetime seconds."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from ipaddress import IPv4Address, IPv6Address

from tunnel.aio.tun import TunDevice
from tunnel.aio.udp import run
from tunnel.wire.icmp import internet_checksum, packet_too_big


def echo_reply(packet: bytes) -> bytes | None:
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] != 1 or len(packet) < ihl + 8 or packet[ihl] != 8:
            return None
        header = bytearray(packet[:ihl])
        header[12:16], header[16:20] = packet[16:20], packet[12:16]
        header[10:12] = b"\0\0"
        header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
        icmp = bytearray(packet[ihl:])
        icmp[0] = 0
        icmp[2:4] = b"\0\0"
        icmp[2:4] = internet_checksum(bytes(icmp)).to_bytes(2, "big")
        return bytes(header) + bytes(icmp)
    if version == 6:
        if packet[6] != 58 or len(packet) < 48 or packet[40] != 128:
            return None
        src, dst = packet[24:40], packet[8:24]
        icmp = bytearray(packet[40:])
        icmp[0] = 129
        icmp[2:4] = b"\0\0"
        pseudo = src + dst + len(icmp).to_bytes(4, "big") + b"\0\0\0\x3a"
        icmp[2:4] = internet_checksum(pseudo + bytes(icmp)).to_bytes(2, "big")
        return packet[:8] + src + dst + bytes(icmp)
    return None


async def main(args: argparse.Namespace) -> None:
    tun = TunDevice.create(
        args.name,
        mtu=args.mtu,
        addresses=["10.77.0.1/24", "fd00:77::1/64"],
        routes=["10.79.0.0/16"],
    )
    counts = {
        "echo_replies": 0,
        "other": 0,
        "udp9": 0,
        "too_big": 0,
        "batches": [],
        "batch_size": args.batch,
    }

    source_v4 = IPv4Address(args.ptb_source_v4)
    source_v6 = IPv6Address(args.ptb_source_v6)

    def answer(packet: bytes) -> bytes | None:
        # what a tunnel endpoint does with a packet larger than its datagram budget
        if len(packet) > args.budget:
            counts["too_big"] += 1  # type: ignore[operator]
            return packet_too_big(packet, args.budget, source_v4, source_v6)
        return echo_reply(packet)

    def on_packets(batch: list[bytes]) -> None:
        counts["batches"].append(len(batch))  # type: ignore[union-attr]
        replies = [r for r in map(answer, batch) if r is not None]
        counts["other"] += len(batch) - len(replies)  # type: ignore[operator]
        # the test's burst: IPv4 UDP to port 9 (the kernel adds IPv6 RS/MLD of its own)
        counts["udp9"] += sum(  # type: ignore[operator]
            1 for p in batch if p[0] == 0x45 and p[9] == 17 and p[22:24] == b"\0\x09"
        )
        counts["echo_replies"] += sum(tun.write_batch(replies))  # type: ignore[operator]

    tun.start_reading(on_packets, batch_size=args.batch)
    print(f"READY {tun.name} {tun.index}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with asyncio.timeout(args.lifetime):
            while line := (await reader.readline()).decode().strip():
                if line == "pause":
                    tun.stop_reading()
                elif line == "resume":
                    tun.start_reading(on_packets, batch_size=args.batch)
                elif line == "stats":
                    stats = dict(counts, **vars(tun.stats))
                    print("STATS " + json.dumps(stats), flush=True)
                print(f"OK {line}", flush=True)
                if line == "stop":
                    break
    finally:
        tun.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="qtat0")
    parser.add_argument("--mtu", type=int, default=1400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lifetime", type=float, default=60.0)
    parser.add_argument("--budget", type=int, default=1400)
    parser.add_argument("--ptb-source-v4", default="10.77.0.254")
    parser.add_argument("--ptb-source-v6", default="fd00:77::fe")
    run(main(parser.parse_args()))
