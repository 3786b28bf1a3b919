"""Child process for test_concentrator.py, run inside the qcc client namespace: a small tunnel
client made of the core pieces (TunnelConnection over aioquic, tunnel.aio.udp) that does what the
real `qtun client` never would — connect without a certificate or with a foreign one, offer a
wrong ALPN, join a made-up session, send a spoofed inner source — and prints one RESULT line of
JSON saying what the concentrator answered. Bounded: it lives at most --lifetime seconds.

actions:
  connect       handshake, then wait for a close (refusal tests)
  join-bogus    session mode, Join Session with a random Session ID
  ping          tunnel or session mode: ICMP echo from --src to --dst through the tunnel, wait for
                the reply (--count echoes)
  hold          print READY, stay connected until stdin closes (at most --hold seconds; the
                test sends traffic towards us meanwhile), then report what was received
  failover      session over two connections; which one carries the replies as Access Reports
                switch WiFi off and on
  replace       a third connection announcing WiFi replaces the first (WiFi) one
  report-flood  tunnel mode: --count Access Reports as fast as the connection takes them
  syn           tunnel mode: a TCP SYN from --src to --dst port --dport, wait for a SYN-ACK
  session-cycle --count times: a new connection sends New Session, then closes
  gap-flood     session mode: --count echo requests, each behind a Packet Tag gap, paced
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration

from testbed.hostile import (
    Link,
    Peer,
    Target,
    client_configuration,
    connect,
    gap_flood,
    icmp_echo,
    is_echo_reply,
    join_bogus,
    report_flood,
    session_cycle,
    syn_probe,
)
from tunnel.aio.udp import QuicClient, run
from tunnel.protocol.connection import (
    ConnectionClosed,
    PacketReceived,
    SessionEstablished,
)
from tunnel.protocol.quic_ext import TunnelQuicConnection
from tunnel.session.reorder import PacketTagCounter
from tunnel.wire.messages import AccessId, AccessSignal


def _cert_files(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if args.cert_file:
        return args.cert_file, args.key_file
    if args.cert == "none":
        return None, None
    stem = f"{args.cert_dir or args.certs}/{args.cert}"
    return f"{stem}.pem", f"{stem}.key"


def configuration(args: argparse.Namespace) -> QuicConfiguration:
    cert, key = _cert_files(args)
    return client_configuration(f"{args.certs}/ca.pem", args.alpn.split(","), cert, key)


def echo_request(src: str, dst: str, size: int, seq: int) -> bytes:
    return icmp_echo(src, dst, seq, size)


async def until_stdin_closes(seconds: float) -> None:
    """Return when stdin reaches end of file (the test closes it once it is done with us), or
    after `seconds` at the latest (stdin a file or /dev/null: just the `seconds`)."""
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            closed.set()
            loop.remove_reader(fd)

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError, NotImplementedError):  # epoll takes no regular file
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(closed.wait(), seconds)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)


def echo_seq(packet: bytes) -> int:
    """The sequence number of an ICMP or ICMPv6 echo reply (IPv4 or IPv6)."""
    offset = 40 if packet[0] >> 4 == 6 else (packet[0] & 0x0F) * 4
    return int.from_bytes(packet[offset + 6 : offset + 8], "big")


def echo_replies(peer: Peer, since: int, seq: int | None = None) -> int:
    """Echo replies among the events `peer` received after the first `since` (to `seq` only,
    if given)."""
    return sum(
        1
        for e in peer.events[since:]
        if isinstance(e, PacketReceived)
        and is_echo_reply(e.packet)
        and (seq is None or echo_seq(e.packet) == seq)
    )


async def replies_on(
    sides: dict[str, Peer], send: Callable[[], None], timeout: float = 3.0, seq: int | None = None
) -> dict[str, int]:
    """Send one echo request (`send`) and wait for its reply on any of `sides`, at most
    `timeout` s: the echo replies each side received meanwhile (to `seq` only, if given: a
    copy of an earlier reply, reinjected or duplicated, still arriving is not this one's)."""
    marks = {name: len(peer.events) for name, peer in sides.items()}
    send()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        counts = {name: echo_replies(peer, marks[name], seq) for name, peer in sides.items()}
        left = deadline - loop.time()
        if any(counts.values()) or left <= 0:
            return counts
        for peer in sides.values():
            peer.changed.clear()
        waiters = [asyncio.ensure_future(peer.changed.wait()) for peer in sides.values()]
        await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()


async def connect_one(
    args: argparse.Namespace, dcid_byte: int | None = None
) -> tuple[QuicClient, Peer]:
    """A connection; its first DCID byte (which picks a concentrator worker) `dcid_byte`, else
    --dcid-byte, else random."""
    byte = args.dcid_byte if dcid_byte is None else dcid_byte
    return await connect(args.remote, args.port, configuration(args), initial_dcid_byte=byte)


async def failover(args: argparse.Namespace) -> dict[str, Any]:
    """Two session-mode connections (a, b), one session; echo requests always go out on a,
    and which connection the concentrator puts the replies on is counted per phase:
    both accesses unknown, after b reported WiFi UNAVAILABLE, after b reported it AVAILABLE."""
    client_a, a = await connect_one(args)
    # as qtun client does: the second connection starts with the first byte of the
    # concentrator's connection ID, to reach the worker that holds the session
    quic_a = client_a.driver.quic
    byte = quic_a.peer_cid_first_byte() if isinstance(quic_a, TunnelQuicConnection) else None
    client_b, b = await connect_one(args, byte)
    assert a.tunnel is not None and b.tunnel is not None
    result: dict[str, Any] = {"action": "failover"}
    try:
        a.tunnel.request_new_session()
        client_a.driver.transmit()
        made = await a.wait_for((SessionEstablished,), 5.0)
        assert isinstance(made, SessionEstablished)
        b.tunnel.join_session(made.session_id)
        client_b.driver.transmit()
        result["joined"] = await b.wait_for((SessionEstablished,), 5.0) is not None
        tags = PacketTagCounter()
        phases: list[dict[str, int]] = []
        tunnel_a = a.tunnel

        def send(seq: int) -> Callable[[], None]:
            def on_a() -> None:
                packet = echo_request(args.src, args.dst, args.size, seq)
                tunnel_a.send_packet(packet, packet_tag=tags.next())
                client_a.driver.transmit()

            return on_a

        for phase, signal_ in enumerate((None, AccessSignal.UNAVAILABLE, AccessSignal.AVAILABLE)):
            if signal_ is not None:
                # No wait for it to take effect: the report leaves before the next echo
                # request, to the same concentrator socket over the same loss-free link, so
                # the concentrator has applied it when the request arrives.
                b.tunnel.send_access_report(AccessId.NON_THREE_GPP, signal_)
                client_b.driver.transmit()
            counts = {"a": 0, "b": 0}
            for i in range(args.count):
                # a number of its own per phase: a copy of the previous phase's last reply
                # (the multipath engine re-sends what a path may have stranded) that is still
                # arriving must not count as this phase's (the test failed at random on it)
                seq = 100 * phase + i
                got = await replies_on({"a": a, "b": b}, send(seq), seq=seq)
                counts = {name: counts[name] + got[name] for name in counts}
            phases.append(counts)
        result["phases"] = phases
    finally:
        await client_a.close()
        await client_b.close()
    return result


async def replace(args: argparse.Namespace) -> dict[str, Any]:
    """Session over a (announces WiFi) and b (announces 5G); then c joins and announces WiFi,
    as a client does after its WiFi link went down and up: a must be closed by the
    concentrator and the replies to echo requests sent on b must come back on c."""
    result: dict[str, Any] = {"action": "replace"}
    clients: list[QuicClient] = []
    try:
        client_a, a = await connect_one(args)
        clients.append(client_a)
        assert a.tunnel is not None
        a.tunnel.request_new_session()
        client_a.driver.transmit()
        made = await a.wait_for((SessionEstablished,), 5.0)
        assert isinstance(made, SessionEstablished)
        a.tunnel.send_access_report(AccessId.NON_THREE_GPP, AccessSignal.AVAILABLE)
        client_a.driver.transmit()
        joined: list[Peer] = []
        for access in (AccessId.THREE_GPP, AccessId.NON_THREE_GPP):
            client_x, x = await connect_one(args)
            clients.append(client_x)
            assert x.tunnel is not None
            x.tunnel.join_session(made.session_id)
            client_x.driver.transmit()
            assert await x.wait_for((SessionEstablished,), 5.0) is not None
            x.tunnel.send_access_report(access, AccessSignal.AVAILABLE)
            client_x.driver.transmit()
            joined.append(x)
        # Each report left before the next connection's handshake, to the same concentrator
        # socket over a loss-free link: the concentrator took them in this order.
        b, c = joined
        closed = await a.wait_for((ConnectionClosed,), 3.0)
        result["a_closed"] = closed.reason if isinstance(closed, ConnectionClosed) else None
        tags = PacketTagCounter()
        counts = {"b": 0, "c": 0}
        assert b.tunnel is not None
        tunnel_b = b.tunnel

        def send(seq: int) -> Callable[[], None]:
            def on_b() -> None:
                packet = echo_request(args.src, args.dst, args.size, seq)
                tunnel_b.send_packet(packet, packet_tag=tags.next())
                clients[1].driver.transmit()

            return on_b

        for seq in range(args.count):
            got = await replies_on({"b": b, "c": c}, send(seq))
            counts = {name: counts[name] + got[name] for name in counts}
        result["replies"] = counts
    finally:
        for each in clients:
            await each.close()
    return result


async def cycle(args: argparse.Namespace) -> dict[str, Any]:
    """New Session on a fresh connection, --count times (testbed.hostile.session_cycle)."""
    cert, key = _cert_files(args)
    target = Target(
        args.remote,
        ca=Path(args.certs) / "ca.pem",
        cert=None if cert is None else Path(cert),
        key=None if key is None else Path(key),
        port=args.port,
    )
    return {"action": "session-cycle", "outcomes": await session_cycle(target, args.count)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "session-cycle":
        return await cycle(args)
    if args.action == "replace":
        return await replace(args)
    if args.action == "failover":
        return await failover(args)
    result: dict[str, Any] = {"action": args.action}
    try:
        client, peer = await connect_one(args)
    except ConnectionError as exc:
        result.update(connected=False, error=str(exc))
        return result
    tunnel = peer.tunnel
    assert tunnel is not None
    result.update(connected=True, alpn=tunnel.alpn)
    link = Link(client, peer)

    def send(packet: bytes) -> None:
        link.send_packet(packet, tag_step=args.tag_step)

    try:
        if args.action == "connect":
            await peer.wait_for((ConnectionClosed,), args.lifetime)
        elif args.action == "join-bogus":
            result["join"] = await join_bogus(link, os.urandom(16))
        else:
            if link.session_mode:
                result["session"] = await link.open_session()
                if args.report:
                    tunnel.send_access_report(AccessId.NON_THREE_GPP, AccessSignal.AVAILABLE)
                    link.transmit()
            if args.action == "ping":
                replies = 0
                for seq in range(args.count):
                    packet = echo_request(args.src, args.dst, args.size, seq)
                    got = await replies_on({"peer": peer}, functools.partial(send, packet))
                    replies += min(1, got["peer"])
                result["replies"] = replies
            elif args.action == "gap-flood":
                result["replies"] = await gap_flood(
                    link, args.src, args.dst, args.count, args.interval, args.tag_step, args.size
                )
            elif args.action == "report-flood":
                result["reports_sent"] = await report_flood(link, args.count)
            elif args.action == "syn":
                result["syn_ack"] = await syn_probe(link, args.src, args.dst, args.dport)
            elif args.action == "hold":
                if args.ping_first:  # e.g. a pool client claiming its address
                    packet = echo_request(args.src, args.dst, args.size, 0)
                    got = await replies_on({"peer": peer}, functools.partial(send, packet))
                    result["replies"] = min(1, got["peer"])
                print("READY", flush=True)
                await until_stdin_closes(args.hold)
                received = [e for e in peer.events if isinstance(e, PacketReceived)]
                result["received"] = len(received)
    finally:
        await client.close()
    if link.send_status:
        result["send_status"] = link.send_status
    result["max_packet_size"] = tunnel.max_packet_size()
    close = next((e for e in peer.events if isinstance(e, ConnectionClosed)), None)
    if close is not None:
        result["closed"] = {
            "by_peer": close.by_peer,
            "reason": close.reason,
            "code": close.error_code,
        }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "action",
        choices=[
            "connect",
            "join-bogus",
            "ping",
            "hold",
            "failover",
            "replace",
            "report-flood",
            "syn",
            "session-cycle",
            "gap-flood",
        ],
    )
    parser.add_argument("--cert-file", help="client certificate file (instead of --cert)")
    parser.add_argument("--key-file", help="its private key")
    parser.add_argument("--dport", type=int, default=22)
    parser.add_argument("--interval", type=float, default=0.001, help="gap-flood pacing (s)")
    parser.add_argument(
        "--tag-step", type=int, default=1, help="session: Packet Tag gap between packets"
    )
    parser.add_argument("--remote", default="192.0.2.1")
    parser.add_argument(
        "--dcid-byte", type=int, help="first byte of the first DCID (picks a worker)"
    )
    parser.add_argument("--port", type=int, default=4433)
    parser.add_argument("--certs", required=True)
    parser.add_argument("--cert-dir", help="directory of --cert if not --certs (foreign CA)")
    parser.add_argument("--cert", default="alice", help="client cert stem, or none")
    parser.add_argument("--alpn", default="qt")
    parser.add_argument("--src", default="10.8.0.2")
    parser.add_argument("--dst", default="10.200.0.2")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="session: Access Report wifi up")
    parser.add_argument("--hold", type=float, default=5.0, help="hold: at most this long (s)")
    parser.add_argument(
        "--ping-first", action="store_true", help="hold: one echo from --src before READY"
    )
    parser.add_argument("--lifetime", type=float, default=5.0)
    args = parser.parse_args()
    outcome = run(asyncio.wait_for(main(args), args.lifetime + 10))
    print("RESULT " + json.dumps(outcome), flush=True)
