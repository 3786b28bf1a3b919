"""experiments/bench_zero_rtt.py runs and writes its table and meta.json (never a threshold on
its figures); bad arguments get one sentence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments import bench_zero_rtt


def test_it_runs_and_writes_its_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert bench_zero_rtt.main(["--rtts", "20", "--runs", "1", "--out", str(out)]) == 0
    with (out / "zero_rtt.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["zero_rtt"], r["early_answer"]) for r in rows] == [
        ("False", ""),
        ("True", "True"),
        ("True", "False"),  # the ablation: the 0-RTT join held like everything else
    ]
    assert all(r["first_byte_ms"] and not r["error"] for r in rows)
    assert set(bench_zero_rtt.COLUMNS) <= set(rows[0])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["parameters"]["rtts_ms"] == [20.0]
    assert "results:" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--rtts", "fast"], ["--rtts", "0"], ["--runs", "0"]])
def test_bad_arguments_get_one_sentence(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_zero_rtt.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("--rtts" in err or "--runs" in err)
