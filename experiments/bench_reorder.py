"""Offline CPU cost of the session-mode reorder buffer: microseconds per packet.

    .venv/bin/python -m experiments.bench_reorder [--packets N] [--rate PPS] [--repeat R]
                                                  [--module path/to/reorder.py]

Feeds synthetic Packet Tag sequences to a `ReorderBuffer` with its default capacity and timeout
on a fake clock (one packet every 1/rate seconds) and drives it the way the asyncio programs do:
`poll(now)` once `next_deadline()` has passed, `push()` per packet, `next_deadline()` after it,
`flush()` at the end. Prints the best of `repeat` runs per scenario, in µs per packet (CPU of
this process only: no network, no asyncio). `--module` loads another copy of
tunnel/session/reorder.py
(e.g. the previous version from `git show`) to compare before and after on the same machine.

Scenarios (tags from 0, N packets):
  in-order     0, 1, 2, ...
  loss-1pct    each tag lost with probability 1 % (seeded), the rest in order
  loss-10pct   the same with 10 %
  reversed     blocks of `capacity` tags, each block arriving highest tag first
  hostile      every other tag missing: the buffer stays full and every packet opens a gap that
               never fills (given up by overflow or timeout) -- the worst case
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from tunnel.user_error import SentenceParser, UsageError, run_command

Scenario = Callable[[int, int], Iterator[int]]


def in_order(n: int, capacity: int) -> Iterator[int]:
    for i in range(n):
        yield i % 65536


def with_loss(fraction: float) -> Scenario:
    def tags(n: int, capacity: int) -> Iterator[int]:
        rng = random.Random(1)
        sent = 0
        tag = 0
        while sent < n:
            if rng.random() >= fraction:
                yield tag
                sent += 1
            tag = (tag + 1) % 65536

    return tags


def reversed_blocks(n: int, capacity: int) -> Iterator[int]:
    for start in range(0, n, capacity):
        for i in reversed(range(start, min(n, start + capacity))):
            yield i % 65536


def hostile(n: int, capacity: int) -> Iterator[int]:
    for i in range(n):
        yield (2 * i) % 65536


SCENARIOS: dict[str, Scenario] = {
    "in-order": in_order,
    "loss-1pct": with_loss(0.01),
    "loss-10pct": with_loss(0.10),
    "reversed": reversed_blocks,
    "hostile": hostile,
}


def load_module(path: str | None) -> ModuleType:
    if path is None:
        import tunnel.session.reorder

        return tunnel.session.reorder
    spec = importlib.util.spec_from_file_location("reorder_under_test", path)
    if spec is None or spec.loader is None:
        raise UsageError(
            f"cannot load {path}: give the path of a copy of tunnel/session/reorder.py"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_once(module: ModuleType, tags: list[int], interval: float) -> tuple[float, int]:
    """Seconds of CPU for the whole sequence, and how many packets came out."""
    buf: Any = module.ReorderBuffer()
    push, poll, next_deadline = buf.push, buf.poll, buf.next_deadline
    released = 0
    deadline = None
    now = 0.0
    start = time.process_time()
    for tag in tags:
        now += interval
        if deadline is not None and now >= deadline:
            released += len(poll(now))
        released += len(push(tag, tag, now))
        deadline = next_deadline()
    released += len(buf.flush())
    return time.process_time() - start, released


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.bench_reorder", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--packets", type=int, default=100_000, help="packets per scenario")
    parser.add_argument("--rate", type=float, default=100_000.0, help="packets per second")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (best kept)")
    parser.add_argument("--module", help="path of another copy of tunnel/session/reorder.py")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    # parsed inside run_command: a mistake on the command line is one line (exit code 2)
    return run_command("bench_reorder", lambda: _bench(parser.parse_args(argv)))


def _bench(args: argparse.Namespace) -> int:
    if not (1 <= args.packets <= 10_000_000 and args.rate > 0 and 1 <= args.repeat <= 20):
        raise UsageError("--packets must be in 1..10000000, --rate > 0 and --repeat in 1..20")
    names = args.scenarios.split(",")
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {unknown[0]!r}: pick from {', '.join(SCENARIOS)}")
    module = load_module(args.module)
    capacity = module.DEFAULT_CAPACITY
    source = args.module or str(Path(module.__file__ or "tunnel/session/reorder.py"))
    print(
        f"# {source}: capacity {capacity}, timeout {module.DEFAULT_TIMEOUT * 1e3:g} ms, "
        f"{args.packets} packets at {args.rate:g} pkt/s, best of {args.repeat}"
    )
    print(f"{'scenario':<12} {'us/packet':>10} {'released':>9}")
    for name in names:
        tags = list(SCENARIOS[name](args.packets, capacity))
        best = min(run_once(module, tags, 1.0 / args.rate) for _ in range(args.repeat))
        print(f"{name:<12} {best[0] / len(tags) * 1e6:>10.2f} {best[1]:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
