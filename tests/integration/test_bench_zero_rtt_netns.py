"""experiments/bench_zero_rtt.py --netns runs the real programs in its own namespaces (unique
names, removed even on failure) and writes one row per run and variant; its figures are not
checked (README "Tests": tests never assert performance)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from experiments import bench_zero_rtt

pytestmark = [pytest.mark.root]


def test_netns_measurement_runs_and_writes_its_result(tmp_path: Path) -> None:
    before = set(
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    )
    out = tmp_path / "run"
    assert bench_zero_rtt.main(["--netns", "--rtts", "20", "--runs", "1", "--out", str(out)]) == 0
    with (out / "zero_rtt.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["setup"], r["zero_rtt"]) for r in rows] == [("netns", "False"), ("netns", "True")]
    assert all(r["first_byte_ms"] and not r["error"] for r in rows), rows
    assert [r["join_in_0rtt"] for r in rows] == ["False", "True"]
    assert (out / "meta.json").is_file()
    after = set(
        subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    )
    assert not {n for n in after - before if n.startswith("q0")}
