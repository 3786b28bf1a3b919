"""The structure-aware fuzzer through a real connection, at its quick size (experiments/
configs/quick/fuzz.toml: 3,000 inputs in 3 batches, at most 4 minutes): the real concentrator
survives every input without an exception, keeps serving a real client, and its RSS stays
within the experiment's generous bound (2 x the warm-up RSS + 100 MiB: Python keeps what it
allocated, a leak per input would not stop there)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.runner import get_experiment, resolve_params, run_experiment

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow, pytest.mark.timeout(360)]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_fuzz_quick(tmp_path: Path) -> None:
    exp = get_experiment("fuzz")
    params = resolve_params(exp, quick=True)
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == [] and summary.ran == 1, meta["failed"]
    batches = rows(summary.run_dir / "fuzz.csv")
    assert len(batches) == 3
    assert int(batches[-1]["inputs_total"]) == params["inputs"]
    for kind in ("datagram_tunnel", "datagram_session", "control_tlv", "session_message",
                 "tcp_preamble", "odd_stream", "raw_frame"):  # fmt: skip
        assert sum(int(b[kind]) for b in batches) > 0, kind
    assert sum(int(b["closes_by_peer"]) for b in batches) > 0  # violations were answered
    findings = (
        rows(summary.run_dir / "fuzz_findings.csv")
        if (summary.run_dir / "fuzz_findings.csv").exists()
        else []
    )
    (result,) = rows(summary.run_dir / "fuzz_summary.csv")
    assert result["crashes"] == "0"
    assert result["exceptions_in_log"] == "0", [(f["exception"], f["where"]) for f in findings]
    assert result["internal_errors"] == "0"
    assert result["liveness_failures"] == "0"
    assert result["verdict"] == "pass", result["failures"]
