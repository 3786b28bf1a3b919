"""Child process for test_tun.py, run inside a qta-* namespace: a TUN opened with offload
(IFF_VNET_HDR) and a user-space TCP peer behind it. For IPv4 and IPv6 it connects to a socket
listening on the TUN's own address (SYN, the kernel's SYN-ACK read back through the device,
ACK), then writes a burst of consecutive data segments with `write_batch`, which merges them
(tunnel/wire/tcp_gro.py), and reads what the socket received. Prints one JSON line per family:
the bytes sent and received, and the device's write counters."""

from __future__ import annotations

import json
import select
import socket
import time

from tests.packets import ACK, SYN, tcp
from tunnel.aio.tun import TunDevice

PORT = 5555
PEER_PORT = 40000
SEGMENT = 1000
MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460
FAMILIES = [
    (socket.AF_INET, "10.78.0.1", "10.78.0.2"),
    (socket.AF_INET6, "fd00:78::1", "fd00:78::2"),
]


def syn_ack(tun: TunDevice, local: str, deadline: float) -> tuple[int, int]:
    """(sequence number, window) of the kernel's SYN-ACK to the peer, read from the TUN."""
    offset = 20 if ":" not in local else 40
    while time.monotonic() < deadline:
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
    raise TimeoutError(f"no SYN-ACK from {local}")


def burst(tun: TunDevice, family: int, local: str, peer: str) -> dict[str, object]:
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((local, PORT))
        listener.listen(1)
        listener.settimeout(5)
        deadline = time.monotonic() + 10
        addresses = {"src": peer, "dst": local, "sport": PEER_PORT, "dport": PORT}
        isn = 77_000
        tun.write(tcp(isn, flags=SYN, ack=0, window=65535, options=MSS_OPTION, **addresses))
        server_seq, window = syn_ack(tun, local, deadline)
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
    return {
        "family": "ipv6" if family == socket.AF_INET6 else "ipv4",
        "segments": len(segments),
        "accepted": sum(accepted),
        "writes": writes,
        "intact": received == expected,
        "received": len(received),
        "fallbacks": tun.stats.merge_fallbacks,
    }


def main() -> None:
    with TunDevice.create(
        "qtag0",
        mtu=1500,
        addresses=[local + ("/24" if "." in local else "/64") for _, local, _ in FAMILIES],
        offload=True,
    ) as tun:
        for family, local, peer in FAMILIES:
            print(json.dumps(burst(tun, family, local, peer)), flush=True)


if __name__ == "__main__":
    main()
