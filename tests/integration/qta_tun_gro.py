"""Child process for test_tun.py, run inside a qta-* namespace: a TUN opened with offload
(IFF_VNET_HDR) and segmentation offload (tso), and a user-space TCP peer behind it. For IPv4
and IPv6 it connects to a socket listening on the TUN's own address (SYN, the kernel's SYN-ACK
read back through the device, ACK), then
- writes a burst of consecutive data segments with `write_batch`, which merges them
  (tunnel/wire/tcp_gro.py), and reads what the socket received;
- has the socket send 60 kB to the peer, and reads it from the TUN, which hands over TCP
  super-packets cut into segments by `read_batch` (tunnel/wire/tcp_tso.py), acknowledging as
  it goes.
Prints two JSON lines per family ("direction": "write", "read"): the bytes sent and received,
and the device's counters."""

from __future__ import annotations

import json
import os
import select
import socket
import time

from tests.packets import ACK, SYN, tcp, valid_tcp
from tunnel.aio.tun import TunDevice

PORT = 5555
PEER_PORT = 40000
SEGMENT = 1000
DOWNLOAD = 60_000
MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460
FAMILIES = [
    (socket.AF_INET, "10.78.0.1", "10.78.0.2"),
    (socket.AF_INET6, "fd00:78::1", "fd00:78::2"),
]


def syn_ack(tun: TunDevice, syn: bytes, local: str, deadline: float) -> tuple[int, int]:
    """Send `syn` (again each second, as a TCP would) until the kernel's SYN-ACK to the peer
    comes out of the TUN: its (sequence number, window)."""
    offset = 20 if ":" not in local else 40
    sent_at = -1.0
    while time.monotonic() < deadline:
        if time.monotonic() - sent_at >= 1.0:
            tun.write(syn)
            sent_at = time.monotonic()
        select.select([tun.fd], [], [], 0.2)
        for packet in tun.read_batch():
            tcp_part = packet[offset:]
            if (
                len(tcp_part) >= 20
                and int.from_bytes(tcp_part[0:2], "big") == PORT
                and int.from_bytes(tcp_part[2:4], "big") == PEER_PORT
                and tcp_part[13] & (SYN | ACK) == SYN | ACK
            ):
                return int.from_bytes(tcp_part[4:8], "big"), int.from_bytes(tcp_part[14:16], "big")
    raise TimeoutError(f"no SYN-ACK from {local} (the device's counters: {tun.stats})")


def burst(tun: TunDevice, family: int, local: str, peer: str) -> list[dict[str, object]]:
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((local, PORT))
        listener.listen(1)
        listener.settimeout(5)
        deadline = time.monotonic() + 10
        addresses = {"src": peer, "dst": local, "sport": PEER_PORT, "dport": PORT}
        isn = 77_000
        syn = tcp(isn, flags=SYN, ack=0, window=65535, options=MSS_OPTION, **addresses)
        server_seq, window = syn_ack(tun, syn, local, deadline)
        ack = server_seq + 1
        tun.write(tcp(isn + 1, ack=ack, window=65535, options=b"", **addresses))
        connection, _ = listener.accept()
        with connection:
            count = min(30, window // SEGMENT)
            payloads = [bytes([65 + i % 26]) * SEGMENT for i in range(count)]
            segments = [
                tcp(
                    isn + 1 + i * SEGMENT,
                    payload,
                    ack=ack,
                    window=65535,
                    options=b"",
                    ident=1 + i,
                    **addresses,
                )
                for i, payload in enumerate(payloads)
            ]
            before = tun.stats.writes
            accepted = tun.write_batch(segments)
            writes = tun.stats.writes - before
            expected = b"".join(payloads)
            received = b""
            connection.settimeout(5)
            while len(received) < len(expected) and time.monotonic() < deadline:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
            written = {
                "direction": "write",
                "family": "ipv6" if family == socket.AF_INET6 else "ipv4",
                "segments": len(segments),
                "accepted": sum(accepted),
                "writes": writes,
                "intact": received == expected,
                "received": len(received),
                "fallbacks": tun.stats.merge_fallbacks,
            }
            next_seq = isn + 1 + len(expected)
            read = download(tun, connection, addresses, next_seq, ack, deadline)
    read["family"] = written["family"]
    return [written, read]


def of_the_flow(packet: bytes, offset: int, addresses: dict[str, object]) -> bool:
    """Whether `packet` is a TCP segment from the socket to the peer: the TUN also hands over
    what the kernel sends on its own (an IPv6 router solicitation from the device's link-local
    address at 0, 4 and 12 s), which is not the socket's and has no TCP checksum to check."""
    version = 4 if offset == 20 else 6
    protocol = packet[9] if version == 4 else packet[6]
    tcp_part = packet[offset:]
    return (
        packet[0] >> 4 == version
        and protocol == 6
        and len(tcp_part) >= 20
        and int.from_bytes(tcp_part[0:2], "big") == addresses["dport"]
        and int.from_bytes(tcp_part[2:4], "big") == addresses["sport"]
    )


def download(
    tun: TunDevice,
    connection: socket.socket,
    addresses: dict[str, object],
    seq: int,
    ack: int,
    deadline: float,
) -> dict[str, object]:
    """The socket sends DOWNLOAD bytes; the peer reads them from the TUN, in order, and
    acknowledges each batch (window 65535, no scaling: the kernel's TCP sends no more)."""
    sent = os.urandom(DOWNLOAD)
    connection.sendall(sent)
    offset = 20 if ":" not in str(addresses["dst"]) else 40
    received = b""
    reads_before, packets_before = tun.stats.reads, tun.stats.packets_read
    largest = 0
    others = 0
    checksums_valid = True
    while len(received) < len(sent) and time.monotonic() < deadline:
        select.select([tun.fd], [], [], 0.2)
        for packet in tun.read_batch():
            tcp_part = packet[offset:]
            if not of_the_flow(packet, offset, addresses):
                others += 1  # e.g. the kernel's router solicitations, every few seconds
                continue
            largest = max(largest, len(packet))
            checksums_valid = checksums_valid and valid_tcp(packet)
            data = tcp_part[(tcp_part[12] >> 4) * 4 :]
            if int.from_bytes(tcp_part[4:8], "big") == (ack + len(received)) & 0xFFFFFFFF:
                received += data  # in order; a retransmission or a gap is left out
        acknowledged = (ack + len(received)) & 0xFFFFFFFF
        tun.write(tcp(seq, ack=acknowledged, window=65535, options=b"", **addresses))  # type: ignore[arg-type]
    return {
        "direction": "read",
        "sent": len(sent),
        "intact": received == sent,
        "reads": tun.stats.reads - reads_before,
        "packets": tun.stats.packets_read - packets_before,
        "largest": largest,
        "mtu": tun.mtu,
        "checksums_valid": checksums_valid,
        "others": others,
        "read_errors": tun.stats.read_errors,
        "tso": tun.segmenter is not None,
    }


def main() -> None:
    with TunDevice.create(
        "qtag0",
        mtu=1500,
        addresses=[local + ("/24" if "." in local else "/64") for _, local, _ in FAMILIES],
        offload=True,
        tso=True,
    ) as tun:
        for family, local, peer in FAMILIES:
            for report in burst(tun, family, local, peer):
                print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
