"""Child process for test_stream_mode.py (helper "stream", prefix qst), run inside a qst-*
namespace: a stream-mode concentrator or client made of tunnel.aio.udp's QuicServer /
QuicClient, a TunnelConnection, and tunnel.aio.stream_server.StreamServer /
tunnel.aio.stream_client.StreamClient - the pieces the qtun programs use, without the TUN.

server: serves stream mode; prints "READY".
client: connects, starts interception (nft table --nft-table) and/or the SOCKS front;
        prints "READY".
raw:    a crafted client (no StreamClient): sends the TLV bytes given in hex with
        --preamble on a new bidi stream and prints "RAW <json>" with what came back (bytes
        in hex, whether the stream ended / was reset).
server and client answer a stdin line "stats" with "STATS <json>" (stream stats + VmRSS)
and stop on EOF; every role lives at most --lifetime seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import ssl
import sys
from ipaddress import ip_network
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from aioquic.quic.events import StreamDataReceived as QuicStreamData
from aioquic.quic.events import StreamReset as QuicStreamReset

from tunnel.aio.stream_client import StreamClient
from tunnel.aio.stream_server import StreamServer
from tunnel.aio.udp import QuicClient, QuicDriver, QuicServer, UdpEndpoint, run
from tunnel.config import StreamClientConfig, StreamServerConfig
from tunnel.protocol.connection import ConnectionClosed, TunnelConnection
from tunnel.protocol.quic_ext import TunnelQuicConnection


def configuration(is_client: bool, certs: str) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=["qt"],
        max_datagram_frame_size=65535,
        max_datagram_size=1452,
        server_name="concentrator" if is_client else None,
        idle_timeout=30.0,
    )
    if is_client:
        config.load_verify_locations(cafile=f"{certs}/ca.pem")
        config.verify_mode = ssl.CERT_REQUIRED
    else:
        config.load_cert_chain(f"{certs}/concentrator.pem", f"{certs}/concentrator.key")
    return config


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def control_loop(lifetime: float, stats: Any) -> None:
    """Answer "stats" lines on stdin until EOF or the lifetime ends."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async with asyncio.timeout(lifetime):
            while line := await reader.readline():
                if line.strip() == b"stats":
                    print("STATS " + json.dumps({**stats(), "rss_kb": rss_kb()}), flush=True)
    except TimeoutError:
        pass


async def serve(args: argparse.Namespace) -> None:
    config = dataclasses.replace(StreamServerConfig(enabled=True), **json.loads(args.options))
    stream = StreamServer(config)
    endpoint = UdpEndpoint.bind(args.address, args.port)

    def on_connection(driver: QuicDriver) -> None:
        tunnel = TunnelConnection(driver.quic)

        def on_event(event: QuicEvent) -> None:
            for tev in tunnel.handle_event(event):
                if tunnel.stream_mode and stream.handle(tunnel, tev, driver.transmit):
                    continue
                if isinstance(tev, ConnectionClosed):
                    stream.connection_closed(tunnel)

        driver.on_event = on_event

    server = QuicServer(
        endpoint,
        configuration(False, args.certs),
        on_connection,
        create_connection=lambda **kw: TunnelQuicConnection(**stream.quic_options(), **kw),
    )
    server.start()
    print("READY", flush=True)
    try:
        await control_loop(args.lifetime, stream.stats)
    finally:
        stream.close()
        await server.close()


async def connect(
    args: argparse.Namespace, quic_options: dict[str, Any], handler: Any
) -> tuple[QuicClient, TunnelConnection]:
    holder: dict[str, TunnelConnection] = {}
    client_box: dict[str, QuicClient] = {}

    def make(**kw: Any) -> TunnelQuicConnection:
        quic = TunnelQuicConnection(**quic_options, **kw)
        holder["tunnel"] = TunnelConnection(quic)
        return quic

    def on_event(event: QuicEvent) -> None:
        tunnel = holder["tunnel"]
        for tev in tunnel.handle_event(event):
            if handler is not None and tunnel.stream_mode and "client" in client_box:
                handler(tunnel, tev, client_box["client"].driver.transmit)
        if args.role == "raw":
            raw_events.append(event)

    raw_events: list[QuicEvent] = []
    endpoint = UdpEndpoint.bind("::" if ":" in args.server else "0.0.0.0", 0)
    client = await QuicClient.connect(
        endpoint,
        (args.server, args.port),
        configuration(True, args.certs),
        on_event,
        create_connection=make,
    )
    client_box["client"] = client
    client.raw_events = raw_events  # type: ignore[attr-defined]
    return client, holder["tunnel"]


async def client_role(args: argparse.Namespace) -> None:
    options = json.loads(args.options)
    if "intercept" in options:
        options["intercept"] = tuple(ip_network(p) for p in options["intercept"])
    config = dataclasses.replace(StreamClientConfig(enabled=True), **options)
    box: dict[str, Any] = {}

    def current() -> tuple[TunnelConnection, Any] | None:
        tunnel = box.get("tunnel")
        if tunnel is None or tunnel.closed:
            return None
        return tunnel, box["client"].driver.transmit

    stream = StreamClient(config, current)
    stream.nft_table = args.nft_table
    quic, tunnel = await connect(args, stream.quic_options(), stream.handle)
    box.update(tunnel=tunnel, client=quic)
    assert tunnel.stream_mode, "stream mode was not negotiated"
    await stream.start()
    print("READY", flush=True)
    try:
        await control_loop(args.lifetime, stream.stats)
    finally:
        await stream.close()
        await quic.close()


async def raw_role(args: argparse.Namespace) -> None:
    client, tunnel = await connect(args, {"stream_mode": True}, None)
    assert tunnel.stream_mode
    quic = client.driver.quic
    sid = quic.get_next_available_stream_id()
    quic.send_stream_data(sid, bytes.fromhex(args.preamble))
    client.driver.transmit()
    received = bytearray()
    result: dict[str, Any] = {"ended": False, "reset": None}
    events: list[QuicEvent] = client.raw_events  # type: ignore[attr-defined]
    async with asyncio.timeout(args.lifetime):
        while not result["ended"] and result["reset"] is None:
            await asyncio.sleep(0.01)
            for event in events:
                if isinstance(event, QuicStreamData) and event.stream_id == sid:
                    received += event.data
                    result["ended"] = result["ended"] or event.end_stream
                elif isinstance(event, QuicStreamReset) and event.stream_id == sid:
                    result["reset"] = event.error_code
            events.clear()
    result["received"] = received.hex()
    result["closed"] = tunnel.close_reason
    print("RAW " + json.dumps(result), flush=True)
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client", "raw"])
    parser.add_argument("--certs", required=True)
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--server", default="")
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--options", default="{}", help="config fields as JSON")
    parser.add_argument("--nft-table", default="qst_stream")
    parser.add_argument("--preamble", default="")
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"{args.role} %(message)s")
    roles = {"server": serve, "client": client_role, "raw": raw_role}
    run(roles[args.role](args))


if __name__ == "__main__":
    main()
