"""The failover experiment for real, in quick mode: WiFi down at 4 s, back at 8 s, 12 s per run.

plain TCP must break for (about) the outage; MPTCP must fail over to its 5G subflow well within
it; the qtun session-failover variant (UDP CBR: what the tunnel itself does, not inner TCP's
backoff) must too. Columns are checked against experiments/analysis.py (README "Results").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.failover import EXPERIMENT, FAILOVER_COLUMNS, TIMESERIES_COLUMNS, qtun_missing
from experiments.runner import resolve_params, run_experiment

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow]

OUTAGE_MS = 4000


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_quick_failover_plain_mptcp_session(tmp_path: Path) -> None:
    sets = [
        'variants=["plain", "mptcp", "session-failover"]',
        'traffic=["tcp", "udp"]',
        "verify_fidelity=false",
    ]
    params = resolve_params(EXPERIMENT, quick=True, sets=sets)
    summary = run_experiment(EXPERIMENT, params, root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == [], meta["failed"]
    assert meta["backend"] in ("netem", "wire")
    table = rows(summary.run_dir / "failover.csv")
    with (summary.run_dir / "failover.csv").open() as f:
        assert f.readline().strip().split(",") == FAILOVER_COLUMNS
    with (summary.run_dir / "failover_timeseries.csv").open() as f:
        assert f.readline().strip().split(",") == TIMESERIES_COLUMNS
    by = {(r["variant"], r["traffic"]): r for r in table}

    plain = by[("plain", "tcp")]
    # No tunnel: nothing arrives for the whole outage (or ever again).
    assert plain["gap_ms"] == "" or float(plain["gap_ms"]) >= 0.9 * OUTAGE_MS
    assert float(plain["goodput_before_mbps"]) > 1

    mptcp = by[("mptcp", "tcp")]
    assert mptcp["completed"] == "True"
    assert float(mptcp["gap_ms"]) < 0.5 * OUTAGE_MS
    assert float(mptcp["goodput_during_mbps"]) > 1  # the 5G subflow carried it
    assert ("mptcp", "udp") not in by  # skipped with its reason, not invented
    assert any(s["point"]["variant"] == "mptcp" for s in meta["skipped"])

    if qtun_missing("session-failover"):
        assert any(s["point"]["variant"] == "session-failover" for s in meta["skipped"])
    else:
        session = by[("session-failover", "udp")]
        assert session["completed"] == "True"
        assert float(session["gap_ms"]) < 0.5 * OUTAGE_MS
        assert int(session["packets_sent"]) > 0
