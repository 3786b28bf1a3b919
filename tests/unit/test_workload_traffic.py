"""The workload experiment's programs on loopback, real sockets on 127.0.0.1, each bounded by
its deadline and a subprocess timeout: VoIP calls (experiments/workload_traffic.py voip-*),
web-like fetches from soak_traffic's server (web-fetch), and traffic.py's parallel bulk
connections (--parallel). Functional facts only, never rates."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from experiments.flows import TRAFFIC_SCRIPT, Flow, flow_argv
from experiments.voice_quality import CallRecord, call_metrics
from experiments.web_mix import object_sizes
from experiments.workload_traffic import parse_rtp, rtp_packet

pytestmark = pytest.mark.slow  # programs exchanging traffic for a second or two each

TOOL = [sys.executable, "-m", "experiments.workload_traffic"]


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_rtp_packet_is_g711_sized_and_parses_back() -> None:
    packet = rtp_packet(2, 70000, 123456789)
    assert len(packet) == 172  # 12-byte RTP header + 160 bytes of 20 ms G.711
    assert packet[0] == 0x80 and packet[1] == 0  # RTP version 2, payload type 0 (PCMU)
    assert parse_rtp(packet) == (2, 70000 % 65536, 123456789)
    assert parse_rtp(b"qex-start") is None


def test_voip_calls_on_loopback(tmp_path: Path) -> None:
    port = _free_port(socket.SOCK_DGRAM)
    start_at = time.monotonic() + 0.8
    common = ["--port", str(port), "--start-at", str(start_at), "--duration", "1.0"]
    send_out, recv_out = tmp_path / "send.json", tmp_path / "recv.json"
    with running([*TOOL, "voip-send", "--bind", "127.0.0.1", "--calls", "2", *common,
                  "--out", str(send_out)]) as send:  # fmt: skip
        recv = subprocess.run(
            [*TOOL, "voip-recv", "--dst", "127.0.0.1", *common, "--out", str(recv_out)],
            timeout=15,
        )
        assert recv.returncode == 0
        assert send.wait(timeout=10) == 0
    sent, got = json.loads(send_out.read_text()), json.loads(recv_out.read_text())
    assert got["connected"] and got["error"] is None
    # 1 s of 20 ms packets per call (fewer if the receiver asked late), none lost on loopback
    assert len(sent["sent"]) == 2 and all(0 < n <= 51 for n in sent["sent"])
    for number in (0, 1):
        record = got["calls"][str(number)]
        row = call_metrics(
            CallRecord(record["seq"], record["send_ns"], record["recv_ns"], sent["sent"][number])
        )
        assert row["packets_received"] == sent["sent"][number] and row["packets_lost"] == 0
        assert 0 <= row["owd_min_ms"] <= row["owd_max_ms"] and 1.0 <= row["mos"] <= 4.5


def test_web_fetches_on_loopback(tmp_path: Path) -> None:
    port = _free_port(socket.SOCK_STREAM)
    start_at = time.monotonic() + 0.8
    server = [sys.executable, "-m", "experiments.soak_traffic", "serve", "--bind", "127.0.0.1",
              "--port", str(port), "--until", str(start_at + 10)]  # fmt: skip
    out = tmp_path / "fetch.json"
    with running(server):
        fetch = subprocess.run(
            [*TOOL, "web-fetch", "--dst", "127.0.0.1", "--port", str(port),
             "--start-at", str(start_at), "--duration", "10", "--count", "6", "--seed", "3/1",
             "--max-bytes", "300000", "--parallel", "2", "--out", str(out)],
            timeout=40,
        )  # fmt: skip
        assert fetch.returncode == 0
    result = json.loads(out.read_text())
    flows = result["flows"]
    assert result["not_started"] == 0 and [f["flow"] for f in flows] == list(range(6))
    # the sizes are web_mix's for that seed, each fetched whole (soak_traffic checks the bytes)
    assert [f["size_bytes"] for f in flows] == object_sizes("3/1", 6, 300000)
    assert all(f["outcome"] == "ok" and f["bytes"] == f["size_bytes"] for f in flows), flows
    assert all(f["fct_ms"] > 0 and f["start_s"] >= 0 for f in flows)


def test_parallel_bulk_connections_on_loopback(tmp_path: Path) -> None:
    port = _free_port(socket.SOCK_STREAM)
    flow = Flow("srv1", "127.0.0.1", "c1", "127.0.0.1", "tcp", 1.0, port, parallel=3)
    send_argv, recv_argv = flow_argv(flow, time.monotonic() + 0.8, tmp_path / "r", tmp_path / "s")
    assert send_argv[1] == str(TRAFFIC_SCRIPT)
    assert send_argv[send_argv.index("--parallel") + 1] == "3" and "--parallel" in recv_argv
    with running(send_argv) as send:
        assert subprocess.run(recv_argv, timeout=15).returncode == 0
        assert send.wait(timeout=10) == 0
    got, sent = json.loads((tmp_path / "r").read_text()), json.loads((tmp_path / "s").read_text())
    assert got["connected"] and got["error"] is None and sent["error"] is None
    # every connection carried data; the bins hold all of it
    assert len(got["streams"]) == 3 and all(n > 0 for n in got["streams"])
    assert sum(got["streams"]) == got["bytes_total"] == sum(got["bins"])
    assert sent["sent"] >= got["bytes_total"]


def test_bad_arguments_are_one_sentence() -> None:
    out = subprocess.run(
        [*TOOL, "voip-send", "--bind", "127.0.0.1", "--port", "1", "--start-at", "0",
         "--duration", "1", "--calls", "0"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith("workload_traffic: error:") and "Traceback" not in out.stderr
