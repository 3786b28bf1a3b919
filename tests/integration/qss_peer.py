"""Child process for test_stream_security.py (prefix qss), run inside a qss-* namespace: a
crafted stream-mode client of the real concentrator (`qtun concentrator`).

It opens --connections QUIC connections (ALPN --alpn, stream mode offered, client certificate
--name from --certs), and on each --streams bidirectional streams carrying the bytes given in
hex with --preamble (a TCP Connect TLV + End, maybe followed by application bytes). It stops
when --wait-ended streams have ended (FIN or reset) and --wait-answered streams have received
something or ended, or after --lifetime seconds, and prints
"RESULT <json>": for each stream, its connection, the bytes that came back (hex), whether it
ended, and its reset code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset

from tunnel.aio.udp import QuicClient, UdpEndpoint, run
from tunnel.protocol.connection import TunnelConnection
from tunnel.protocol.quic_ext import TunnelQuicConnection


class Stream:
    def __init__(self, connection: int) -> None:
        self.connection = connection
        self.received = bytearray()
        self.ended = False
        self.reset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "received": self.received.hex(),
            "ended": self.ended,
            "reset": self.reset,
        }


async def open_connection(
    args: argparse.Namespace, index: int, streams: dict[tuple[int, int], Stream]
) -> QuicClient:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[args.alpn],
        max_datagram_frame_size=65535,
        server_name="concentrator",
        idle_timeout=60.0,
    )
    config.load_verify_locations(cafile=f"{args.certs}/ca.pem")
    config.verify_mode = ssl.CERT_REQUIRED
    config.load_cert_chain(f"{args.certs}/{args.name}.pem", f"{args.certs}/{args.name}.key")
    holder: dict[str, TunnelConnection] = {}

    def make(**kw: Any) -> TunnelQuicConnection:
        quic = TunnelQuicConnection(stream_mode=True, **kw)
        holder["tunnel"] = TunnelConnection(quic)
        return quic

    def on_event(event: QuicEvent) -> None:
        holder["tunnel"].handle_event(event)  # keeps the connection's own state going
        if isinstance(event, StreamDataReceived | StreamReset):
            stream = streams.get((index, event.stream_id))
            if stream is None:
                return
            if isinstance(event, StreamDataReceived):
                stream.received += event.data
                stream.ended = stream.ended or event.end_stream
            else:
                stream.reset, stream.ended = event.error_code, True

    endpoint = UdpEndpoint.bind("0.0.0.0", 0)
    client = await QuicClient.connect(
        endpoint, (args.server, args.port), config, on_event, create_connection=make
    )
    assert holder["tunnel"].stream_mode, "stream mode was not negotiated"
    return client


async def main_async(args: argparse.Namespace) -> None:
    streams: dict[tuple[int, int], Stream] = {}
    clients = [await open_connection(args, i, streams) for i in range(args.connections)]
    preamble = bytes.fromhex(args.preamble)
    # round robin over the connections, so that every connection has TCP Connects in flight
    for _ in range(args.streams):
        for index, client in enumerate(clients):
            quic = client.driver.quic
            sid = quic.get_next_available_stream_id()
            streams[(index, sid)] = Stream(index)
            quic.send_stream_data(sid, preamble)
            client.driver.transmit()
    try:
        async with asyncio.timeout(args.lifetime):
            while (
                sum(s.ended for s in streams.values()) < args.wait_ended
                or sum(bool(s.received) or s.ended for s in streams.values()) < args.wait_answered
            ):
                await asyncio.sleep(0.01)
    except TimeoutError:
        pass
    print("RESULT " + json.dumps([s.as_dict() for s in streams.values()]), flush=True)
    for client in clients:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", required=True)
    parser.add_argument("--name", default="alice")
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--alpn", default="qt-session")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--streams", type=int, default=1, help="per connection")
    parser.add_argument("--preamble", required=True, help="hex bytes sent on each stream")
    parser.add_argument("--wait-ended", type=int, default=0)
    parser.add_argument("--wait-answered", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=10.0)
    run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
