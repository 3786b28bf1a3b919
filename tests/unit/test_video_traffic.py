"""The video workload's programs on loopback (experiments/workload_traffic.py video-serve /
video-play): a real HTTP/1.1 segment server and ABR player exchanging a few segments on
127.0.0.1, each bounded by its deadline and a subprocess timeout. Functional facts only: every
segment comes whole at its ladder size, the player starts at the lowest rate, keeps within its
buffer goal and plays; a wrong answer is retried and a segment under way at the deadline is
abandoned, both within the session's time. Never rates or stall counts."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from experiments.video_abr import LADDER_MBPS, SEGMENT_S, segment_bytes, session_metrics
from experiments.workload_traffic import segment_server, video_play

TOOL = [sys.executable, "-m", "experiments.workload_traffic"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # a session of a few seconds, in real time
def test_a_video_session_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    start_at = time.monotonic() + 0.8
    duration, goal = 3.0, 4.0
    out = tmp_path / "video.json"
    server = subprocess.Popen([*TOOL, "video-serve", "--bind", "127.0.0.1", "--port", str(port),
                               "--until", str(start_at + duration)])  # fmt: skip
    try:
        play = subprocess.run(
            [*TOOL, "video-play", "--dst", "127.0.0.1", "--port", str(port),
             "--start-at", str(start_at), "--duration", str(duration),
             "--buffer-s", str(goal), "--out", str(out)],
            timeout=30,
        )  # fmt: skip
        assert play.returncode == 0
        assert server.wait(timeout=15) == 0  # it stops by itself after its deadline
    finally:
        server.kill()
        server.wait()
    report = json.loads(out.read_text())
    assert report["connected"] and report["errors"] == 0, report
    segments = report["segments"]
    assert len(segments) >= 2, segments
    assert [s["segment"] for s in segments] == list(range(len(segments)))
    assert segments[0]["rate_mbps"] == LADDER_MBPS[0] and segments[0]["buffer_s"] == 0
    for s in segments:
        assert s["rate_mbps"] in LADDER_MBPS and s["bytes"] == segment_bytes(s["rate_mbps"])
        assert 0 <= s["request_s"] <= s["arrival_s"] and s["throughput_mbps"] > 0
        # it asks only with room for the segment below the buffer goal
        assert s["buffer_s"] <= goal - SEGMENT_S + 0.05, s
    # the player asks no segment after its deadline; a stall on a loaded machine between the
    # last byte and the player's clock may put only the last arrival past it
    assert all(s["arrival_s"] <= duration for s in segments[:-1]), segments
    metrics = session_metrics([(s["arrival_s"], s["rate_mbps"]) for s in segments], duration)
    assert metrics.segments == len(segments) and metrics.startup_s is not None
    assert metrics.played_s > 0 and metrics.mean_bitrate_mbps is not None


def test_the_server_sends_exactly_the_ladder_size_and_refuses_other_paths() -> None:
    server = segment_server("127.0.0.1", 0)
    port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for path in ("/video/9/0.m4s", "/video/x/0.m4s", "/etc/passwd"):
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == 404, path
        # and on the same connection (keep-alive), a segment of the second rung, whole
        conn.request("GET", "/video/1/7.m4s")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200 and len(body) == segment_bytes(LADDER_MBPS[1])
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_bad_player_arguments_are_one_sentence() -> None:
    out = subprocess.run(
        [*TOOL, "video-play", "--dst", "127.0.0.1", "--port", "1", "--start-at", "0",
         "--duration", "5", "--buffer-s", "1"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.startswith("workload_traffic: error:") and "--buffer-s" in out.stderr
    assert "Traceback" not in out.stderr


@contextmanager
def misbehaving_server(reply: bytes) -> Iterator[int]:
    """A TCP server on loopback that answers each connection's first request with `reply` and
    then holds the connection open, silent (a server that lies or stalls)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2.0)
            conn.recv(4096)  # the request
            conn.sendall(reply)
            held.append(conn)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_wrong_answer_is_counted_and_retried_until_the_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"  # not the segment's size
    with misbehaving_server(head) as port:
        start_at = time.monotonic() + 0.1
        report = video_play("127.0.0.1", port, start_at, 1.0, buffer_goal_s=4.0)
    assert report["segments"] == [] and not report["connected"]
    assert report["errors"] >= 1 and "5 bytes announced" in report["error"]


@pytest.mark.parametrize("begun", [True, False], ids=["body-begun", "no-answer-yet"])
def test_a_segment_under_way_at_the_deadline_is_abandoned(begun: bool) -> None:
    size = segment_bytes(LADDER_MBPS[0])
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode() + bytes(1000)
    # then silence: the segment never completes (or its answer never starts)
    with misbehaving_server(head if begun else b"") as port:
        start_at = time.monotonic() + 0.1
        report = video_play("127.0.0.1", port, start_at, 1.0, buffer_goal_s=4.0)
    assert report["segments"] == [] and report["connected"] is begun  # an answer came
    assert report["abandoned"] == 1 and report["errors"] == 0
