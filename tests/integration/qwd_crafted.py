"""Child process for test_dissector.py, run in its client namespace: what the real `qtun client`
never puts on the wire, sent with testbed/hostile.py's client so that the capture holds it too.

1. session mode: New Session with a QoS Flow Indication (tunnel-session-00 §6.1.1);
2. session mode: Join Session with a made-up Session ID (refused: RESET_STREAM of stream 3 with
   UNKNOWN_SESSION_ID, §6.1.3);
3. tunnel + stream mode: a TCP Connect to the echo server split over two packets, an unknown
   TLV before End, then the bytestream; the first piece sent again (a retransmission); an
   Access Report with an invalid Access ID; a TCP Connect to a documentation address (IPv6),
   which the concentrator refuses with Error Network Failure.

Prints one RESULT line of JSON. Bounded: every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from testbed.hostile import Link, client_configuration, connect, join_bogus, stream_frame
from tunnel.aio.udp import run
from tunnel.protocol.connection import SessionEstablished, TcpConnectAccepted, TcpConnectFailed
from tunnel.wire.messages import End, TcpConnect

QOS = b"\x2a\x01"
BOGUS_SESSION = bytes.fromhex("deadbeef")
UNKNOWN_TLV = bytes((0x42, 2)) + b"hi"
INVALID_REPORT = bytes((0x00, 2, 0x30, 0x01))  # AI 3: "MUST be discarded" (tunnel-00 §7.1.1)
SPLIT_AT = 7
PAYLOAD = b"qwd split"
REFUSED = IPv6Address("2001:db8::1")  # documentation: the concentrator's policy refuses it


def relayed_up(status: Path) -> int:
    """Bytes the concentrator relayed from TCP to streams (its status file)."""
    try:
        stream = json.loads(status.read_text()).get("stream") or {}
    except (OSError, ValueError):
        return 0
    return int(stream.get("bytes_up", 0))


async def link_to(args: argparse.Namespace, alpn: str, stream_mode: bool = False) -> Link:
    certs = Path(args.certs)
    config = client_configuration(
        certs / "ca.pem", [alpn], certs / f"{args.cert}.pem", certs / f"{args.cert}.key"
    )
    client, peer = await connect(args.remote, args.port, config, stream_mode=stream_mode)
    return Link(client, peer)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    link = await link_to(args, "qt-session")
    try:
        link.tunnel.request_new_session(QOS)
        link.transmit()
        made = await link.peer.wait_for((SessionEstablished,), 5.0)
        result["qos_session"] = made is not None
    finally:
        await link.close()

    link = await link_to(args, "qt-session")
    try:
        result["join"] = await join_bogus(link, BOGUS_SESSION)
    finally:
        await link.close()

    link = await link_to(args, "qt", stream_mode=True)
    try:
        quic = link.quic
        stream_id = quic.claim_stream_id(unidirectional=False)
        preamble = TcpConnect(IPv4Address(args.server), args.echo_port).encode()
        data = preamble + UNKNOWN_TLV + End().encode() + PAYLOAD
        before = relayed_up(Path(args.status))
        pieces = ((0, data[:SPLIT_AT]), (SPLIT_AT, data[SPLIT_AT:]), (0, data[:SPLIT_AT]))
        for offset, piece in pieces:  # one packet each: transmit() writes the injected frame
            quic.inject(*stream_frame(stream_id, offset, piece, fin=False))
            link.transmit()
        report = quic.claim_stream_id(unidirectional=True)
        quic.inject(*stream_frame(report, 0, INVALID_REPORT, fin=True))
        link.transmit()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while relayed_up(Path(args.status)) < before + len(PAYLOAD) and loop.time() < deadline:
            await asyncio.sleep(0.1)  # the status file is rewritten every status_interval
        result["echoed"] = relayed_up(Path(args.status)) - before
        refused = link.tunnel.open_tcp_stream(REFUSED, 80)
        link.transmit()
        answer = await link.peer.wait_for((TcpConnectFailed, TcpConnectAccepted), 5.0)
        result["refused"] = {
            "stream_id": refused,
            "code": int(answer.code) if isinstance(answer, TcpConnectFailed) else None,
        }
        result["split_stream_id"] = stream_id
    finally:
        await link.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--certs", required=True)
    parser.add_argument("--cert", default="alice")
    parser.add_argument("--remote", required=True)
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--server", required=True, help="the echo server's IPv4 address")
    parser.add_argument("--echo-port", type=int, required=True)
    parser.add_argument("--status", required=True, help="the concentrator's status file")
    args = parser.parse_args()
    outcome = run(asyncio.wait_for(main(args), 40))
    print("RESULT " + json.dumps(outcome), flush=True)
