"""Child process for test_udp_quic.py, run inside a qta-* namespace: a minimal aioquic server or
client driven by tunnel.aio.udp (QuicServer / QuicClient / QuicDriver).

server: echoes every stream (data + FIN), answers each DATAGRAM "ping..." with "pong...", counts
        the others, and answers a stream that says "stats" with its counts as JSON.
client: connects (optionally several connections at once), checks the stream echo and the
        datagram ping/pong, then sends 1100-byte datagrams for --seconds (bounded by count and
        time, never more than 256 waiting in aioquic), asks the server what arrived and prints
        one RESULT line of JSON.
Both live at most --lifetime seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import DatagramFrameReceived, QuicEvent, StreamDataReceived

from tunnel.aio.udp import QuicClient, QuicDriver, QuicServer, UdpEndpoint, run
from tunnel.protocol.quic_ext import datagram_budget, pending_datagram_count

ALPN = ["qta-test"]
PAYLOAD = 1100
MAX_PENDING = 256
MAX_DATAGRAMS = 2_000_000


def configuration(is_client: bool, certs: str) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=ALPN,
        max_datagram_frame_size=65535,
        max_datagram_size=1452,
        server_name="concentrator" if is_client else None,
    )
    if is_client:
        config.load_verify_locations(cafile=f"{certs}/ca.pem")
        config.verify_mode = ssl.CERT_REQUIRED
    else:
        config.load_cert_chain(f"{certs}/concentrator.pem", f"{certs}/concentrator.key")
    return config


async def serve(args: argparse.Namespace) -> None:
    endpoint = UdpEndpoint.bind(
        args.address, args.port, interface=args.interface, gso=not args.no_gso, gro=not args.no_gro
    )
    counts = {"connections": 0}
    streams: dict[tuple[int, int], bytearray] = {}

    def on_connection(driver: QuicDriver) -> None:
        counts["connections"] += 1
        mine = {"datagrams": 0, "datagram_bytes": 0}  # this connection's, for the throughput

        def on_event(event: QuicEvent) -> None:
            quic = driver.quic
            if isinstance(event, DatagramFrameReceived):
                if event.data.startswith(b"ping"):
                    quic.send_datagram_frame(b"pong" + event.data[4:])
                else:
                    mine["datagrams"] += 1
                    mine["datagram_bytes"] += len(event.data)
            elif isinstance(event, StreamDataReceived):
                key = (id(driver), event.stream_id)
                buf = streams.setdefault(key, bytearray())
                buf += event.data
                if event.end_stream:
                    data = bytes(streams.pop(key))
                    if data == b"stats":
                        stats = dict(counts, **mine, **vars(endpoint.stats))
                        data = json.dumps(stats).encode()
                    quic.send_stream_data(event.stream_id, data, end_stream=True)

        driver.on_event = on_event

    server = QuicServer(endpoint, configuration(False, args.certs), on_connection)
    server.start()
    print(f"READY {endpoint.local_address[1]} {json.dumps(vars(endpoint.buffers))}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with asyncio.timeout(args.lifetime):
            await reader.readline()  # any line or EOF: stop
    finally:
        await server.close()
    print("STOPPED " + json.dumps({"connections_left": len(server.connections)}), flush=True)


class Peer:
    """Collects a client connection's stream replies and pongs."""

    def __init__(self) -> None:
        self.streams: dict[int, bytearray] = {}
        self.done: dict[int, asyncio.Future[bytes]] = {}
        self.pongs: list[bytes] = []
        self.pong_event = asyncio.Event()

    def on_event(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.streams.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                fut = self.done.get(event.stream_id)
                if fut is not None and not fut.done():
                    fut.set_result(bytes(self.streams.pop(event.stream_id)))
        elif isinstance(event, DatagramFrameReceived):
            self.pongs.append(event.data)
            self.pong_event.set()

    async def request(self, client: QuicClient, data: bytes) -> bytes:
        quic = client.driver.quic
        stream_id = quic.get_next_available_stream_id()
        self.done[stream_id] = asyncio.get_running_loop().create_future()
        quic.send_stream_data(stream_id, data, end_stream=True)
        client.driver.transmit()
        return await asyncio.wait_for(self.done[stream_id], 10)


async def connect(args: argparse.Namespace) -> tuple[QuicClient, Peer]:
    family = socket.AF_INET6 if ":" in args.remote else socket.AF_INET
    endpoint = UdpEndpoint.bind(
        args.address,
        interface=args.interface,
        family=family,
        gso=not args.no_gso,
        gro=not args.no_gro,
    )
    peer = Peer()
    client = await QuicClient.connect(
        endpoint,
        (args.remote, args.port),
        configuration(True, args.certs),
        peer.on_event,
        pacing_slack=args.pacing_slack,
    )
    return client, peer


async def client_main(args: argparse.Namespace) -> None:
    result: dict[str, object] = {}
    async with asyncio.timeout(args.lifetime):
        pairs = await asyncio.gather(*(connect(args) for _ in range(args.connections)))
        # every connection: stream echo of 100 kB (several packets, flow control, FIN)
        blob = bytes(range(256)) * 400
        echoes = await asyncio.gather(*(peer.request(c, blob) for c, peer in pairs))
        result["stream_echo_ok"] = all(e == blob for e in echoes)
        client, peer = pairs[0]
        result["local"] = list(client.endpoint.local_address[:2])
        quic = client.driver.quic
        result["datagram_budget"] = datagram_budget(quic)
        for i in range(10):
            quic.send_datagram_frame(b"ping%d" % i)
        client.driver.transmit()
        for _ in range(100):  # bounded wait for 10 pongs
            if len(peer.pongs) >= 10:
                break
            peer.pong_event.clear()
            await asyncio.wait_for(peer.pong_event.wait(), 5)
        result["pongs"] = sorted(p.decode() for p in peer.pongs)

        # bounded datagram throughput: at most --seconds and MAX_DATAGRAMS
        payload = b"d" * PAYLOAD
        sent = 0
        start = time.monotonic()
        deadline = start + args.seconds
        while time.monotonic() < deadline and sent < MAX_DATAGRAMS:
            room = MAX_PENDING - pending_datagram_count(quic)
            for _ in range(max(0, room)):
                quic.send_datagram_frame(payload)
            sent += max(0, room)
            client.driver.transmit()
            await asyncio.sleep(0)  # let ACKs in
        elapsed = time.monotonic() - start
        loss = quic._loss
        result["cc"] = {  # diagnostics from aioquic internals
            "cwnd": loss._cc.congestion_window,
            "srtt_ms": round(loss._rtt_smoothed * 1000, 3),
            "min_rtt_ms": round(loss._rtt_min * 1000, 3),
            "ssthresh": getattr(loss._cc, "ssthresh", None),
        }
        # what arrived before the stats request: datagrams still in flight are not counted
        # (the goodput is printed, never judged)
        stats = json.loads(await peer.request(client, b"stats"))
        result.update(
            queued=sent,
            elapsed_s=round(elapsed, 3),
            server=stats,
            client_udp=vars(client.endpoint.stats),
            goodput_mbps=round(stats["datagram_bytes"] * 8 / elapsed / 1e6, 1),
        )
        for c, _ in pairs:
            await c.close()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--certs", required=True)
    parser.add_argument("--address")
    parser.add_argument("--interface")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--remote", default="")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--lifetime", type=float, default=60.0)
    parser.add_argument("--pacing-slack", type=float, default=0.001)
    parser.add_argument("--no-gso", action="store_true")
    parser.add_argument("--no-gro", action="store_true")
    arguments = parser.parse_args()
    run(serve(arguments) if arguments.role == "server" else client_main(arguments))
