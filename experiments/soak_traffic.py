"""Checked TCP transfers for the soak experiment, run on Mininet hosts as subprocesses.

    python -m experiments.soak_traffic serve --bind 10.200.1.2 --port 6100 --until T
    python -m experiments.soak_traffic client --dst 10.200.1.2 --port 6100 --until T \
        --name c3 --seed 7 --bulk-bytes 1048576 --bulk-rate-mbit 2 --rr-interval 1 \
        --out c3-transfers.jsonl

The client runs two loops until `--until` (CLOCK_MONOTONIC, one clock for every namespace of
the machine): *bulk* — alternately a download (GET: the server sends `--bulk-bytes`, paced at
`--bulk-rate-mbit`) and an upload (PUT: a quarter of that, as fast as TCP takes it) — and
*request/response* — every `--rr-interval` seconds a new connection asks for RR_BYTES bytes.
Every transfer is checked end to end: the bytes are a deterministic function of a per-transfer
seed (random.Random(seed).randbytes in 64 KiB chunks), the receiving side compares the length
and SHA-256 with what it should have got, and one JSON line per transfer records the outcome:

    ok              every byte arrived, checksum right
    corrupt         the length is right (or over) and the checksum wrong: bytes were altered
    short           the connection ended cleanly (FIN) before every byte arrived
    reset           the connection was reset (ECONNRESET, EPIPE): a clear failure
    connect_failed  the connection could not be made (refused, unreachable, timed out)
    stalled         nothing arrived for IDLE_S seconds: the application would hang
    error           any other socket error (its text in `error`)

A transfer in flight at the deadline runs to its end (bounded by IDLE_S per read). Both
programs bound their own lifetime: the client stops at until + IDLE_S + the transfer in flight,
the server at until + SERVER_GRACE_S.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunnel.user_error import SentenceParser, run_command

CHUNK = 65536
IDLE_S = 15.0  # a read or write that makes no progress this long is a stall
CONNECT_TIMEOUT_S = 5.0
SERVER_GRACE_S = 60.0
RR_BYTES = 2000
MAX_REQUEST_LINE = 128
MAX_TRANSFER_BYTES = 1 << 30
MAX_SERVER_THREADS = 512


def content(seed: int, size: int) -> Iterator[bytes]:
    """The bytes of a transfer, in CHUNK-sized pieces (the same pieces on both sides)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        piece = rng.randbytes(min(CHUNK, left))
        left -= len(piece)
        yield piece


def digest(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for piece in content(seed, size):
        h.update(piece)
    return h.hexdigest()


# -- server ------------------------------------------------------------------------------------
def _read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        piece = conn.recv(1)
        if not piece:
            break
        data += piece
        if len(data) > MAX_REQUEST_LINE:
            raise ValueError("request line too long")
    return data.decode("ascii", errors="replace").strip()


def _send_paced(conn: socket.socket, seed: int, size: int, rate_bps: float) -> None:
    start = time.monotonic()
    sent = 0
    for piece in content(seed, size):
        if rate_bps > 0:
            due = start + sent * 8 / rate_bps
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
        conn.sendall(piece)
        sent += len(piece)


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(IDLE_S)
        try:
            words = _read_line(conn).split()
            if not words:
                return
            if words[0] in ("GET", "RR") and len(words) >= 3:
                size, seed = min(int(words[1]), MAX_TRANSFER_BYTES), int(words[2])
                rate = float(words[3]) if words[0] == "GET" and len(words) > 3 else 0.0
                _send_paced(conn, seed, size, rate)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the client closes (bounded by IDLE_S)
            elif words[0] == "PUT" and len(words) >= 2:
                size = min(int(words[1]), MAX_TRANSFER_BYTES)
                h, got = hashlib.sha256(), 0
                while got < size:
                    piece = conn.recv(min(CHUNK, size - got))
                    if not piece:
                        break
                    h.update(piece)
                    got += len(piece)
                conn.sendall(f"OK {got} {h.hexdigest()}\n".encode())
                conn.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            return  # the client sees its own side of it


def serve(bind: str, port: int, until: float) -> int:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    stop_at = until + SERVER_GRACE_S
    workers: list[threading.Thread] = []
    with socket.socket(family, socket.SOCK_STREAM) as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((bind, port))
        lsock.listen(256)
        lsock.settimeout(0.5)
        print("READY", flush=True)
        while time.monotonic() < stop_at:
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            workers = [w for w in workers if w.is_alive()]
            if len(workers) >= MAX_SERVER_THREADS:
                conn.close()
                continue
            worker = threading.Thread(target=_serve_one, args=(conn,), daemon=True)
            worker.start()
            workers.append(worker)
    return 0


# -- client ------------------------------------------------------------------------------------
def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, TimeoutError):
        return "stalled", "no progress"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset", type(exc).__name__
    return "error", f"{type(exc).__name__}: {exc}"


def _connect(dst: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect((dst, port))
    except BaseException:
        sock.close()
        raise
    sock.settimeout(IDLE_S)
    return sock


def _receive_checked(sock: socket.socket, seed: int, size: int) -> tuple[str, int, str]:
    """Read to EOF: (outcome, bytes, error) against the expected content."""
    h, got = hashlib.sha256(), 0
    buf = bytearray(CHUNK)
    while True:
        try:
            n = sock.recv_into(buf)
        except OSError as exc:
            outcome, error = _classify(exc)
            return outcome, got, error
        if n == 0:
            break
        h.update(buf[:n])
        got += n
    if got < size:
        return "short", got, ""
    if got > size or h.hexdigest() != digest(seed, size):
        return "corrupt", got, "checksum differs"
    return "ok", got, ""


def transfer(
    kind: str, dst: str, port: int, seed: int, size: int, rate_bps: float
) -> dict[str, Any]:
    """One checked transfer (GET, PUT or RR); its record."""
    row: dict[str, Any] = {"kind": kind, "size": size, "seed": seed, "bytes": 0, "error": ""}
    row["t_start"] = time.time()
    started = time.monotonic()
    try:
        sock = _connect(dst, port)
    except OSError as exc:
        row.update(outcome="connect_failed", error=f"{type(exc).__name__}: {exc}")
    else:
        with sock:
            try:
                if kind == "PUT":
                    sock.sendall(f"PUT {size}\n".encode())
                    for piece in content(seed, size):
                        sock.sendall(piece)
                    sock.shutdown(socket.SHUT_WR)
                    answer = sock.makefile("rb").readline(MAX_REQUEST_LINE).decode().split()
                    if len(answer) != 3 or answer[0] != "OK":
                        row.update(outcome="short", error=f"answer {answer!r}")
                    else:
                        got = int(answer[1])
                        row["bytes"] = got
                        if got < size:
                            row["outcome"] = "short"
                        elif answer[2] != digest(seed, size):
                            row.update(outcome="corrupt", error="checksum differs")
                        else:
                            row["outcome"] = "ok"
                else:
                    request = f"{kind} {size} {seed}" + (
                        f" {rate_bps:.0f}" if kind == "GET" else ""
                    )
                    sock.sendall((request + "\n").encode())
                    outcome, got, error = _receive_checked(sock, seed, size)
                    row.update(outcome=outcome, bytes=got, error=error)
            except OSError as exc:
                outcome, error = _classify(exc)
                row.update(outcome=outcome, error=error)
    row["t_end"] = time.time()
    row["latency_ms"] = round((time.monotonic() - started) * 1000, 3)
    return row


class _Sink:
    def __init__(self, path: Path, name: str) -> None:
        self.file = path.open("a")
        self.name = name
        self.lock = threading.Lock()

    def write(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.file.write(json.dumps({"client": self.name, **row}) + "\n")
            self.file.flush()


def _bulk_loop(args: argparse.Namespace, sink: _Sink, rng: random.Random) -> None:
    rate = args.bulk_rate_mbit * 1e6
    get = True
    while time.monotonic() < args.until:
        size = args.bulk_bytes if get else max(1, args.bulk_bytes // 4)
        row = transfer(
            "GET" if get else "PUT", args.dst, args.port, rng.getrandbits(48), size, rate
        )
        sink.write(row)
        get = not get
        if row["outcome"] != "ok":
            time.sleep(0.5)  # an outage: do not spin on connect failures


def _rr_loop(args: argparse.Namespace, sink: _Sink, rng: random.Random) -> None:
    next_at = time.monotonic()
    while (now := time.monotonic()) < args.until:
        if now < next_at:
            time.sleep(min(next_at - now, args.until - now))
            continue
        next_at += args.rr_interval
        sink.write(transfer("RR", args.dst, args.port, rng.getrandbits(48), RR_BYTES, 0.0))
        next_at = max(next_at, time.monotonic())


def client(args: argparse.Namespace) -> int:
    sink = _Sink(args.out, args.name)
    loops = [
        threading.Thread(target=_bulk_loop, args=(args, sink, random.Random(f"{args.seed}/bulk"))),
        threading.Thread(target=_rr_loop, args=(args, sink, random.Random(f"{args.seed}/rr"))),
    ]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = SentenceParser(prog="python -m experiments.soak_traffic")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--until", type=float, required=True, help="CLOCK_MONOTONIC seconds")
    c = sub.add_parser("client")
    c.add_argument("--dst", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--until", type=float, required=True, help="CLOCK_MONOTONIC seconds")
    c.add_argument("--name", required=True)
    c.add_argument("--seed", default="1")
    c.add_argument("--bulk-bytes", type=int, default=1 << 20)
    c.add_argument("--bulk-rate-mbit", type=float, default=2.0)
    c.add_argument("--rr-interval", type=float, default=1.0)
    c.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    # parsed inside run_command: a mistake on the command line is one line too (exit code 2)
    return run_command("soak_traffic", lambda: _run(build_parser().parse_args(argv)))


def _run(args: argparse.Namespace) -> int:
    if not 0 < args.until - time.monotonic() <= 7200:
        print("soak_traffic: error: --until must be 0..7200 s from now.", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(args.bind, args.port, args.until)
    if not 1 <= args.bulk_bytes <= MAX_TRANSFER_BYTES or args.rr_interval <= 0:
        print("soak_traffic: error: --bulk-bytes 1..1 GiB and --rr-interval > 0.", file=sys.stderr)
        return 2
    return client(args)


if __name__ == "__main__":
    sys.exit(main())
