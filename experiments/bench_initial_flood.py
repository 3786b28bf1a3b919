"""A real client connecting during a flood of junk QUIC Initials, on loopback (no root).

    .venv/bin/python -m experiments.bench_initial_flood [--rates 0,2000,10000,max]
        [--policies auto,always,never] [--seconds 4] [--connects 5] [--module old_udp.py]

For each Retry policy and flood rate: a QuicServer (its own process, uvloop, the concentrator's
connection cap of 320 and the default admission limits) serves an echo; a flooder process sends
junk Initials (random bytes behind a valid-looking version-1 Initial header, fresh connection
IDs, 1200 bytes) from 64 loopback addresses at the given rate ("max": as fast as it can) for
`seconds`; meanwhile this process connects a real client (TunnelQuicConnection through
QuicClient) `connects` times in a row and times each handshake (timeout 10 s, the qtun client's
CONNECT_TIMEOUT). Printed per point: junk offered and absorbed per second (datagrams the server
read and handled), the kernel's drops on the server socket (receive queue full), the client's
connect times (median / max, failures), and the server's connections and counters at the end.
`--module` loads another copy of tunnel/aio/udp.py (e.g. `git show HEAD~1:tunnel/aio/udp.py`)
to measure before and after on the same machine; its QuicServer gets only the arguments it knows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from types import ModuleType
from typing import Any

from tunnel.policy.address_validation import AdmissionLimits, RetryPolicy
from tunnel.user_error import SentenceParser, run_command

MAX_CONNECTIONS = 320  # the concentrator's default: 64 clients x 4 connections + 64
CONNECT_TIMEOUT = 10.0


def load_udp(path: str | None) -> ModuleType:
    if path is None:
        from tunnel.aio import udp

        return udp
    spec = importlib.util.spec_from_file_location("udp_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["udp_under_test"] = module
    spec.loader.exec_module(module)
    return module


def serve(pipe: Connection, module_path: str | None, policy: str) -> None:
    """The server process: answer requests on `pipe` ("stats", "stop")."""
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    from tests.unit.quic_harness import make_configs

    udp = load_udp(module_path)
    _, server_cfg = make_configs(["t"])

    async def main() -> None:
        endpoint = udp.UdpEndpoint.bind("127.0.0.1")

        def on_connection(driver: Any) -> None:
            def on_event(event: QuicEvent) -> None:
                if isinstance(event, StreamDataReceived):
                    driver.quic.send_stream_data(event.stream_id, event.data, event.end_stream)

            driver.on_event = on_event

        kwargs: dict[str, Any] = {"max_connections": MAX_CONNECTIONS}
        if "admission" in inspect.signature(udp.QuicServer).parameters:
            kwargs["admission"] = AdmissionLimits(retry=RetryPolicy(policy))
        server = udp.QuicServer(endpoint, server_cfg, on_connection, **kwargs)
        server.start()
        pipe.send(endpoint.local_address)
        loop = asyncio.get_running_loop()
        while True:
            request = await loop.run_in_executor(None, pipe.recv)
            if request == "stop":
                break
            counters = server.counters() if hasattr(server, "counters") else {}
            pipe.send(
                {
                    "received": endpoint.stats.datagrams_received,
                    "connections": len(server.connections),
                    "kernel_drops": socket_drops(endpoint.local_address[1]),
                    "counters": counters,
                }
            )
        await server.close()

    udp.run(main())


def socket_drops(port: int) -> int:
    """The `drops` column of /proc/net/udp for the socket bound to `port`."""
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    return 0


def flood(
    target: tuple[str, int], rate: float | None, seconds: float, result: Synchronized[int]
) -> None:
    """The flooder process: junk Initials at `rate` per second (None: as fast as it can)."""
    sockets = []
    for index in range(64):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((f"127.0.{9 + index // 32}.{index % 32 + 1}", 0))
        sockets.append(sock)
    head = bytes([0xC3]) + (1).to_bytes(4, "big") + b"\x08"
    middle_len = 1 + 8 + 1 + 2  # SCID length, SCID, token length, Length
    pad = 1200 - len(head) - 8 - middle_len
    payloads = [os.urandom(pad) for _ in range(64)]
    sent = 0
    start = time.perf_counter()
    end = start + seconds
    index = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = sent + 64 if rate is None else int((now - start) * rate)
        while sent < due:
            packet = (
                head
                + os.urandom(8)
                + b"\x08"
                + os.urandom(8)
                + b"\x00"
                + (0x4000 | pad).to_bytes(2, "big")
                + payloads[index % 64]
            )
            index += 1
            try:
                sockets[index % 64].sendto(packet, target)
            except OSError:
                due -= 1  # not sent (socket buffer full): the flood goes on
            else:
                sent += 1
        if rate is not None:
            time.sleep(0.001)
    result.value = sent
    for sock in sockets:
        sock.close()


async def connect_times(target: tuple[str, int], count: int) -> tuple[list[float], int]:
    from tests.unit.quic_harness import make_configs
    from tunnel.aio.udp import QuicClient, UdpEndpoint
    from tunnel.protocol.quic_ext import TunnelQuicConnection

    client_cfg, _ = make_configs(["t"])
    times: list[float] = []
    failures = 0
    for _ in range(count):
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            client = await QuicClient.connect(
                UdpEndpoint.bind("127.0.0.1"),
                target,
                client_cfg,
                timeout=CONNECT_TIMEOUT,
                create_connection=TunnelQuicConnection,
            )
        except ConnectionError:
            failures += 1
            continue
        times.append(loop.time() - started)
        await client.close()
    return times, failures


def point(
    module_path: str | None, policy: str, rate: float | None, args: argparse.Namespace
) -> str:
    parent, child = mp.Pipe()
    server = mp.Process(target=serve, args=(child, module_path, policy), daemon=True)
    server.start()
    try:
        target = parent.recv()
        parent.send("stats")
        before = parent.recv()
        sent = mp.Value("q", 0)
        flooder = None
        if rate != 0:
            flooder = mp.Process(target=flood, args=(target, rate, args.seconds, sent), daemon=True)
            flooder.start()
            time.sleep(min(1.0, args.seconds / 4))  # the flood is under way: now connect
        times, failures = asyncio.run(connect_times(target, args.connects))
        if flooder is not None:
            flooder.join(args.seconds + 30)
        parent.send("stats")
        after = parent.recv()
        parent.send("stop")
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()
    absorbed = (after["received"] - before["received"]) / args.seconds if rate != 0 else 0
    offered = sent.value / args.seconds if rate != 0 else 0
    drops = after["kernel_drops"] - before["kernel_drops"]
    timing = f"{statistics.median(times) * 1000:.1f} / {max(times) * 1000:.1f} ms" if times else "-"
    counters = after["counters"]
    extra = (
        f" retries={counters.get('retries_sent', '-')} half_open={counters.get('half_open', '-')}"
        if counters
        else ""
    )
    label = "max" if rate is None else f"{rate:g}"
    return (
        f"{policy:6} rate={label:>6}/s offered={offered:8.0f}/s absorbed={absorbed:8.0f}/s "
        f"kernel_drops={drops:7d} connect median/max={timing:>20} "
        f"failed={failures}/{args.connects} server_connections={after['connections']}{extra}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.bench_initial_flood", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rates", type=_rates, default="0,2000,10000,max", help="Initials/s, or max"
    )
    parser.add_argument("--policies", type=_policies, default="auto,always,never")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connects", type=int, default=5)
    parser.add_argument("--module", default=None, help="another tunnel/aio/udp.py to measure")
    # parsed inside run_command: a mistake on the command line is one line (exit code 2)
    return run_command("bench_initial_flood", lambda: _bench(parser.parse_args(argv)))


def _rates(text: str) -> list[float | None]:
    """--rates: comma-separated Initials per second (> 0 or 0: none) or `max`."""
    rates: list[float | None] = []
    for item in text.split(","):
        try:
            rate = None if item == "max" else float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a rate: give Initials per second or max, e.g. 0,2000,max"
            ) from None
        if rate is not None and not 0 <= rate < float("inf"):
            raise argparse.ArgumentTypeError(f"{item!r} is not a rate >= 0")
        rates.append(rate)
    return rates


def _policies(text: str) -> list[str]:
    """--policies: comma-separated Retry policies (limits.retry's values)."""
    policies = text.split(",")
    known = [policy.value for policy in RetryPolicy]
    for policy in policies:
        if policy not in known:
            raise argparse.ArgumentTypeError(
                f"unknown Retry policy {policy!r}: pick from {', '.join(known)}"
            )
    return policies


def _bench(args: argparse.Namespace) -> int:
    for policy in args.policies:  # (argparse applies the types to the string defaults too)
        for rate in args.rates:
            print(point(args.module, policy, rate, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
