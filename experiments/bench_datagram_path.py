"""CPU per DATAGRAM of the outer QUIC connection, aioquic's generic path against the fast path.

    .venv/bin/python -m experiments.bench_datagram_path [--runs N] [--datagrams N] [--size B]
        [--batch N] [--step S] [--cc reno|cubic|bbr|none] [--replies N] [--burst] [--profile]

Offline, in memory, no sockets: a client and a concentrator TunnelQuicConnection (1452-byte
QUIC packets, as the programs use) after their handshake, a fake clock that moves `--step`
seconds per round, every datagram delivered at once. Each round the client queues `--batch`
DATAGRAMs of `--size` bytes (a tunnelled IP packet each) and sends what its congestion window
and pacer let out; the concentrator receives them and answers with its ACKs; timers fire when
due. The CPU time (time.process_time) of those calls — building, protecting, parsing and loss
recovery on both ends — is divided by the datagrams delivered: µs of CPU per datagram sent and
received, the two programs' QUIC share of a tunnel packet together. With `--replies N` the
concentrator answers every N datagrams with a 60-byte one (an inner TCP ACK, roughly): packets
both ways then carry DATAGRAM and ACK frames together, as in a tunnelled TCP transfer; the
replies count as datagrams. With `--burst` each end sends as the programs' QuicDriver does:
what the pacer allows within 1 ms (up to 64 datagrams) at once (tunnel/aio/udp.py paced_burst;
the fast path does it inside one call, burst_slack).

Each run measures every variant, in an order that turns each run, so that a noisy neighbour
hits all alike: aioquic's generic path (tunnel.protocol.quic_ext.FAST_DATAGRAM_PATH off), the
fast path with its packets protected by the Python steps, and the fast path with the C packet
protection (build/_qtcrypto.so, when make built it; quic_ext.use_packet_protection). The
figures are the median and the spread (min-max) over `--runs`. `--profile` prints cProfile's
top functions of one run of each variant instead. Run from the repository root.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from dataclasses import dataclass

from aioquic.quic.events import DatagramFrameReceived

from tunnel.aio.udp import DEFAULT_MAX_BURST, DEFAULT_PACING_SLACK, paced_burst
from tunnel.protocol import quic_ext
from tunnel.protocol.quic_ext import MAX_DATAGRAM_SIZE, TunnelQuicConnection
from tunnel.user_error import SentenceParser, run_command

CLIENT_ADDR = ("10.0.0.2", 40000)
SERVER_ADDR = ("10.0.0.1", 4433)
HANDSHAKE_SECONDS = 1.0


REPLY = bytes(60)  # a TCP ACK with timestamps in an IPv6 packet, roughly


@dataclass
class Pair:
    client: TunnelQuicConnection
    server: TunnelQuicConnection
    now: float = 1000.0
    received: int = 0
    replies_every: int = 0  # the server sends REPLY for every this many received (0: none)
    replied: int = 0
    slack: float = 0.0  # what paced_burst releases at once (0: one datagrams_to_send)


def _pump(pair: Pair) -> None:
    """Deliver everything both ends have to send at `now`, until both are quiet, firing due
    timers; count the DATAGRAMs the server received."""
    client, server, now = pair.client, pair.server, pair.now
    for _ in range(100):
        busy = False
        for sender, receiver, addr in (
            (client, server, CLIENT_ADDR),
            (server, client, SERVER_ADDR),
        ):
            timer = sender.get_timer()
            if timer is not None and timer <= now:
                sender.handle_timer(now=now)
            burst = paced_burst(
                sender.datagrams_to_send, sender.get_timer, now, pair.slack, DEFAULT_MAX_BURST
            )
            for data, _ in burst:
                receiver.receive_datagram(data, addr, now=now)
                busy = True
        while (event := server.next_event()) is not None:
            if isinstance(event, DatagramFrameReceived):
                pair.received += 1
                if pair.replies_every and pair.received % pair.replies_every == 0:
                    server.send_datagram_frame(REPLY)
                    pair.replied += 1
                    busy = True
        while client.next_event() is not None:
            pass
        if not busy:
            return


def connected_pair(cc: str) -> Pair:
    from tests.unit.quic_harness import make_configs

    client_config, server_config = make_configs(["qt"], max_datagram_size=MAX_DATAGRAM_SIZE)
    rate = 1e9 if cc == "none" else None  # bytes/s: never the limit here
    client_config.congestion_control_algorithm = cc
    server_config.congestion_control_algorithm = cc
    client = TunnelQuicConnection(configuration=client_config, pacing_rate=rate)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        pacing_rate=rate,
    )
    pair = Pair(client, server)
    client.connect(SERVER_ADDR, now=pair.now)
    end = pair.now + HANDSHAKE_SECONDS
    while pair.now < end:
        _pump(pair)
        pair.now += 0.001
    if not (client._handshake_confirmed and server._handshake_confirmed):
        raise RuntimeError("the in-memory handshake did not complete")
    return pair


@dataclass(frozen=True)
class Variant:
    name: str
    fast: bool
    protection: str  # quic_ext.use_packet_protection's "c" or "python"


VARIANTS = [
    Variant("generic", fast=False, protection="python"),
    Variant("fast", fast=True, protection="python"),
    Variant("fast+C", fast=True, protection="c"),
]


def one_run(
    *,
    variant: Variant,
    datagrams: int,
    size: int,
    batch: int,
    step: float,
    cc: str,
    replies: int,
    burst: bool = False,
) -> tuple[float, int]:
    """CPU seconds and datagrams delivered for `datagrams` sent client -> server (and the
    replies, which count as datagrams too)."""
    quic_ext.FAST_DATAGRAM_PATH = variant.fast
    quic_ext.use_packet_protection(variant.protection)
    pair = connected_pair(cc)
    pair.replies_every = replies
    if burst:
        pair.slack = DEFAULT_PACING_SLACK
        for quic in (pair.client, pair.server):
            quic.burst_slack, quic.burst_max = DEFAULT_PACING_SLACK, DEFAULT_MAX_BURST
    payload = bytes(size)
    sent = 0
    cpu = 0.0
    for _ in range(datagrams * 10):  # bounded: the window and pacer let a batch out per round
        if sent >= datagrams and not pair.client._datagrams_pending:
            break
        while sent < datagrams and len(pair.client._datagrams_pending) < batch:
            pair.client.send_datagram_frame(payload)
            sent += 1
        start = time.process_time()
        _pump(pair)
        cpu += time.process_time() - start
        pair.now += step
    start = time.process_time()
    _pump(pair)
    cpu += time.process_time() - start
    return cpu, pair.received + pair.replied


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.bench_datagram_path", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--datagrams", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1400, help="DATAGRAM payload, bytes")
    parser.add_argument("--batch", type=int, default=32, help="datagrams queued per round")
    parser.add_argument("--step", type=float, default=0.0005, help="fake seconds per round")
    parser.add_argument("--cc", default="reno", choices=("reno", "cubic", "bbr", "none"))
    parser.add_argument(
        "--replies",
        type=int,
        default=0,
        help="the concentrator answers every N datagrams with a 60-byte one (0: never)",
    )
    parser.add_argument(
        "--burst", action="store_true", help="send as the programs do: paced_burst, 1 ms"
    )
    parser.add_argument("--profile", action="store_true")
    # parsed inside run_command: a mistake on the command line is one line (exit code 2)
    return run_command("bench_datagram_path", lambda: _bench(parser.parse_args(argv)))


def _bench(args: argparse.Namespace) -> int:
    params = dict(
        datagrams=args.datagrams,
        size=args.size,
        batch=args.batch,
        step=args.step,
        cc=args.cc,
        replies=args.replies,
        burst=args.burst,
    )
    variants = [v for v in VARIANTS if v.protection == "python" or not quic_ext.FAST_CRYPTO_MISSING]
    if len(variants) < len(VARIANTS):
        print(f"no fast+C variant: {quic_ext.FAST_CRYPTO_MISSING}", file=sys.stderr)
    if args.profile:
        for variant in variants:
            profiler = cProfile.Profile()
            profiler.enable()
            one_run(variant=variant, **params)
            profiler.disable()
            print(f"== {variant.name} ==")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0
    figures: dict[str, list[float]] = {v.name: [] for v in variants}
    for run in range(args.runs):
        turn = run % len(variants)
        for variant in variants[turn:] + variants[:turn]:
            cpu, received = one_run(variant=variant, **params)
            if received < args.datagrams:
                print(f"only {received} of {args.datagrams} datagrams arrived", file=sys.stderr)
                return 1
            figures[variant.name].append(cpu / received * 1e6)
    answered = f", a {len(REPLY)}-byte reply per {args.replies}" if args.replies else ""
    answered += ", paced bursts of 1 ms" if args.burst else ""
    print(
        f"{args.datagrams} datagrams of {args.size} B per run{answered}, {args.runs} runs, "
        f"cc {args.cc}: µs of CPU per datagram sent and received (both ends)"
    )
    generic = statistics.median(figures["generic"])
    for name, values in figures.items():
        median = statistics.median(values)
        saved = f"  {1 - median / generic:4.0%} less than generic" if name != "generic" else ""
        print(
            f"  {name:8} median {median:6.1f}  min {min(values):6.1f}  max {max(values):6.1f}"
            f"{saved}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
