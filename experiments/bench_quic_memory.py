"""Memory a QUIC peer can make a tunnel connection hold, and what flow control costs in speed.

    .venv/bin/python -m experiments.bench_quic_memory [--rounds N] [--streams N] [--tree DIR]

Offline, in memory (tests/unit/quic_harness.py: two aioquic endpoints, a fake clock, no
sockets); run from the repository root. `--tree` imports the `tunnel` package from another
copy of it, to measure before and after a change on the same machine, e.g.

    mkdir /tmp/before && git archive HEAD tunnel | tar -x -C /tmp/before
    .venv/bin/python -m experiments.bench_quic_memory --tree /tmp/before

Four figures, for the victim (the concentrator end) unless said otherwise:
  edge-byte attack  a client sends one byte at the edge of the credit it has, on one uni
                    stream (tunnel mode) or 16 bidi streams (stream mode, 1 MiB stream window),
                    once per round trip, `--rounds` times: the bytes aioquic then holds (gaps
                    zero-filled) and the Python memory allocated (tracemalloc, now and peak)
  open streams      a client opens every stream it may at once (the highest stream id opens
                    all below it), with one byte in each: the streams the concentrator then
                    keeps (max_streams_bidi 256 + aioquic's 128 uni) and their memory
  stream churn      `--streams` TCP streams opened and finished (FIN, Error TLV, reset in
                    turn, 100 at a time): memory left behind on both ends together, per stream
  stream speed      N relayed streams of 4 MiB each (1 MiB stream window, credit tied to
                    consumption as the relay asks for it) whose reader consumes at once, 20 ms
                    RTT, links without a rate: time on the fake clock, i.e. what flow and
                    congestion control allow (no CPU cost in it)
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

from tunnel.user_error import SentenceParser, UsageError, run_command

MIB = 1024 * 1024


def _size(n: float) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n / 1024:.1f} KiB"


def _attack(rounds: int, stream_mode: bool) -> dict[str, float]:
    from tests.unit.quic_attacks import edge_byte_attack, open_stream, stream_buffered_bytes
    from tests.unit.quic_harness import Network
    from tests.unit.tunnel_pairs import add_tunnel_path

    net = Network()
    path = add_tunnel_path(
        net, ["qt"], client_stream_mode=stream_mode, server_stream_mode=stream_mode
    )
    net.run(1.0)
    attacker, victim = path.client.quic, path.server.quic
    streams = [open_stream(attacker, unidirectional=not stream_mode) for _ in range(16)]
    if not stream_mode:
        streams = streams[:1]
    sent_bytes = 0
    link = path.up_link
    send = link.send

    def counting_send(data: bytes, now: float) -> None:
        nonlocal sent_bytes
        sent_bytes += len(data)
        send(data, now)

    link.send = counting_send  # type: ignore[method-assign]
    packets_before = link.sent
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    edge_byte_attack(net, attacker, streams, rounds)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "packets": link.sent - packets_before,
        "attacker_bytes": sent_bytes,
        "buffered": stream_buffered_bytes(victim),
        "allocated": current - base,
        "peak": peak - base,
        "closed": bool(path.server.tunnel.closed),
    }


def _open_streams() -> dict[str, float]:
    from tests.unit.quic_attacks import send_lone_byte
    from tests.unit.quic_harness import Network, make_configs
    from tests.unit.tunnel_pairs import attach
    from tunnel.protocol.quic_ext import TunnelQuicConnection
    from tunnel.wire.modes import ALL_ALPN

    client_config, server_config = make_configs(["qt"], list(ALL_ALPN))
    client = TunnelQuicConnection(configuration=client_config, stream_mode=True)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        stream_mode=True,
        max_streams_bidi=256,
    )
    net = Network()
    attach(net.add_connection_pair(client, server))
    net.run(1.0)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for stream_id in (4 * 255, 2 + 4 * 127):  # the highest bidi and uni ids allowed
        client.send_stream_data(stream_id, b"")
        send_lone_byte(client._streams[stream_id].sender, 100)
    net.run(0.5)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"streams": len(server._streams), "kib": grown / 1024}


def _churn(count: int) -> dict[str, float]:
    from tests.unit.quic_attacks import churn_tcp_streams
    from tests.unit.quic_harness import Network
    from tests.unit.tunnel_pairs import add_tunnel_path

    net = Network()
    path = add_tunnel_path(net, ["qt"], client_stream_mode=True, server_stream_mode=True)
    net.run(1.0)
    churn_tcp_streams(net, path, 300)  # warm-up: tables at their working size
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    stuck = churn_tcp_streams(net, path, count)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "streams": count,
        "stuck_batches": stuck,
        "retained_mib": grown / MIB,
        "bytes_per_stream": grown / count,
        "server_tcp_streams": len(path.server.tunnel._tcp_streams),
        "server_quic_streams": len(path.server.quic._streams),
    }


def _speed(streams: int, size: int = 4 * MIB) -> dict[str, float]:
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    from tests.unit.quic_harness import Network, make_configs
    from tunnel.protocol.quic_ext import TunnelQuicConnection

    client_config, server_config = make_configs(["qt"])
    client = TunnelQuicConnection(configuration=client_config, stream_mode=True)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        stream_mode=True,
        stream_window=MIB,
    )
    net = Network()
    path = net.add_connection_pair(client, server, delay=0.010)
    net.run(1.0)
    received = 0

    class Reader:
        def handle_event(self, event: QuicEvent) -> list[object]:
            nonlocal received
            if isinstance(event, StreamDataReceived):
                received += len(event.data)
            return []

    path.server.tunnel = Reader()
    start = net.clock.now
    for _ in range(streams):
        stream_id = client.get_next_available_stream_id()
        server.set_stream_backlog(stream_id, 0)  # as the relay does: credit per consumption
        client.send_stream_data(stream_id, b"x" * size)
    net.run(60.0, until=lambda: received == streams * size)
    seconds = net.clock.now - start
    return {
        "streams": streams,
        "delivered_mib": received / MIB,
        "fake_seconds": seconds,
        "mbit_s": received * 8 / seconds / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.bench_quic_memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=10, help="attack round trips")
    parser.add_argument("--streams", type=int, default=40_000, help="streams for the churn")
    parser.add_argument("--tree", type=Path, help="import `tunnel` from this directory")
    # parsed inside run_command: a mistake on the command line is one line (exit code 2)
    return run_command("bench_quic_memory", lambda: _bench(parser.parse_args(argv)))


def _bench(args: argparse.Namespace) -> int:
    if args.tree is not None:
        if not (args.tree / "tunnel" / "protocol" / "quic_ext.py").is_file():
            raise UsageError(
                f"{args.tree} holds no tunnel/protocol/quic_ext.py: give a copy of the repository."
            )
        # tunnel.user_error (the parser's) is imported from this checkout: forget every tunnel
        # module so that `import tunnel` and the harness's imports load the other tree's
        for name in [m for m in sys.modules if m == "tunnel" or m.startswith("tunnel.")]:
            del sys.modules[name]
        sys.path.insert(0, str(args.tree.resolve()))
    import tunnel

    print(f"tunnel package: {Path(tunnel.__file__).parent}")
    for label, stream_mode in (
        ("tunnel mode, 1 uni stream", False),
        ("stream mode, 16 bidi", True),
    ):
        r = _attack(args.rounds, stream_mode)
        print(
            f"edge-byte attack, {label}: {r['packets']:.0f} packets / "
            f"{r['attacker_bytes']:.0f} B from the attacker -> victim holds "
            f"{_size(r['buffered'])}, allocated {_size(r['allocated'])} "
            f"(peak {_size(r['peak'])}), closed={r['closed']}"
        )
    o = _open_streams()
    print(f"open streams: {o['streams']:.0f} streams kept by the victim, {o['kib']:.0f} KiB")
    c = _churn(args.streams)
    print(
        f"stream churn: {c['streams']:.0f} streams ({c['stuck_batches']:.0f} batches stuck) -> "
        f"{c['retained_mib']:.2f} MiB retained on both ends ({c['bytes_per_stream']:.0f} B per "
        f"stream); concentrator tables: {c['server_tcp_streams']:.0f} TCP streams, "
        f"{c['server_quic_streams']:.0f} aioquic streams"
    )
    for n in (1, 4, 16):
        s = _speed(n)
        print(
            f"stream speed: {s['streams']:.0f} x 4 MiB at 20 ms RTT -> {s['delivered_mib']:.0f} "
            f"MiB in {s['fake_seconds']:.3f} s of fake clock = {s['mbit_s']:.0f} Mbit/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
