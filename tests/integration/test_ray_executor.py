"""`qtlab run latency --quick --executor ray --shards 2` on a one-node Ray cluster the test
starts and stops (experiments/ray_executor.py): two shards, each a Mininet lab run as a Ray task
on the node's one `qtlab_lab` slot (so one after the other), merged into one run directory.

The cluster is a separate `ray start --head --block` process rather than `ray.init(resources=)`
in the test: the command runs as a user runs it, a driver joining an existing cluster by its
--address, and the shards run in Ray's worker processes, not in the test's. Its GCS takes a free
port; Ray's daemons talk over this machine's own address (Ray turns a loopback
--node-ip-address into it on Linux), so nothing leaves the machine. It runs in a session of
its own, so stopping it is SIGTERM to `ray start --block` (which stops what it started) and
then SIGKILL to whatever of that session is left; the test checks no process of it lives on,
failures included."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments import ray_executor
from experiments.runner import get_experiment, resolve_params
from tunnel.user_error import RuntimeFailure

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.timeout(480)]

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_processes(sid: int) -> list[str]:
    """Live processes (zombies aside) of session `sid`: what the cluster started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(f"{entry.name} {stat.split(' (', 1)[1].split(')')[0]}")
    return found


def _stop(head: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while session_processes(head.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        time.sleep(0.2)
    if head.poll() is None:
        head.kill()
        head.wait(5)


@contextlib.contextmanager
def ray_head() -> Iterator[str]:
    """A one-node Ray cluster with one lab slot; yields its address."""
    port = _free_port()
    # short: Ray puts its sockets under the temp dir, and a socket path is at most 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="qtray-", dir="/tmp"))
    log = temp / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--resources",
                json.dumps({"qtlab_lab": 1}),
                f"--temp-dir={temp / 'ray'}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert head.poll() is None, f"ray start exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no Ray head: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(head)
        left = session_processes(head.pid)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"the Ray cluster left processes behind: {left}"


def qtlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "qtlab"), *args], capture_output=True, text=True, timeout=400, check=False
    )


def test_latency_quick_in_two_shards_on_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = get_experiment("latency")
    points = exp.points(resolve_params(exp, quick=True))
    with ray_head() as address:
        # a cluster none of whose nodes offers the resource the tasks ask for: one sentence
        with monkeypatch.context() as m:
            m.setattr(ray_executor, "RESOURCE", "qtlab_nowhere")
            with pytest.raises(RuntimeFailure, match=r"no node .* offers the qtlab_nowhere"):
                ray_executor.connect(address)
        # shards that fail on the node (here at once: a TCP congestion control the node's kernel
        # lacks, which only the node can tell) are reported with their node and error, and
        # every point of theirs is missing: exit 1
        broken = qtlab(
            "run", "latency", "--quick", "--no-progress", "--results", str(tmp_path / "broken"),
            "--executor", "ray", "--address", address, "--shards", "2", "--set", "cc=bogus",
        )  # fmt: skip
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "4 MISSING" in broken.stdout, broken.stdout
        assert "shard 2/2 on " in broken.stderr and "'bogus' is not in this kernel" in broken.stderr
        (broken_dir,) = (tmp_path / "broken" / "latency").iterdir()
        broken_meta = json.loads((broken_dir / "meta.json").read_text())
        assert [m["shard"] for m in broken_meta["missing"]] == ["1/2", "1/2", "2/2", "2/2"]
        assert all(s["node"] and "bogus" in s["error"] for s in broken_meta["shards"])
        started = time.monotonic()
        run = qtlab(
            "run", "latency", "--quick", "--no-progress", "--results", str(tmp_path),
            "--executor", "ray", "--address", address, "--shards", "2",
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert run.returncode == 0, run.stdout + run.stderr
    print(f"latency --quick, 2 shards on a one-node Ray cluster: {elapsed:.1f} s")
    (run_dir,) = (tmp_path / "latency").iterdir()
    assert "inflation_ms" in run.stdout  # the experiment's summary, printed as for a local run
    with (run_dir / "latency.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == exp.tables["latency"]
    assert [tuple(r[c] for c in exp.key_columns) for r in rows] == [
        p.key(exp.key_columns) for p in points
    ]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["executor"]["name"] == "ray" and meta["executor"]["shards"] == 2
    assert meta["missing"] == [] and meta["failed"] == [] and meta["shard"] == "1/1"
    assert [s["shard"] for s in meta["shards"]] == ["1/2", "2/2"]
    for shard in meta["shards"]:
        assert shard["error"] is None and shard["measured"] == 2, shard
        assert shard["node"] and shard["host"] and shard["started"] and shard["finished"]
        assert shard["git_commit"] == meta["git_commit"]
        shard_dir = run_dir / shard["files"]
        assert json.loads((shard_dir / "meta.json").read_text())["shard"] == shard["shard"]
        # the programs' logs came back through the object store
        assert any((shard_dir / "logs").rglob("*.log")), shard["logs"]
