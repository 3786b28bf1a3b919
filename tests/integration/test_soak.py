"""The soak-and-fault experiment for real, at its quick size (experiments/configs/quick/
soak.toml: 2 WiFi flaps, 1 blackhole, 1 SIGKILL) with 12 qtun clients instead of 20 and
compressed from one minute to 30 s (the experiment's shortest): the clients in the four modes
with checked transfers, a hostile client running every attack, two 2 s flaps, a 2 s WiFi
blackhole and a concentrator SIGKILL + restart, in that order over the faults phase (12-25.5 s).
Functional facts only: figures (RSS, latency) are reported in results, not judged here beyond
the experiment's own generous RSS bound."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.runner import get_experiment, resolve_params, run_experiment

# 30 s of soak, then up to 40 s for transfers in flight to end, plus the clients to deploy
pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow, pytest.mark.timeout(360)]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_soak_quick(tmp_path: Path) -> None:
    exp = get_experiment("soak")
    quick = resolve_params(exp, quick=True)
    faults = (quick["flaps"], quick["blackholes"], quick["kills"])
    assert quick["clients"] == 20 and faults == (2, 1, 1)
    # the blackhole (16.2-18.2 s) ends before the kill (19.6 s), as in the one-minute run, and
    # the second flap (23.0-25.0 s) before the recovery phase
    sets = ["clients=12", "duration_s=30.0", "blackhole_s=2.0", "flap_down_s=2.0"]
    params = resolve_params(exp, quick=True, sets=sets)
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == [] and summary.ran == 1, meta["failed"]
    (row,) = rows(summary.run_dir / "soak.csv")
    excerpts = meta.get("exception_excerpts")
    assert row["exceptions_in_logs"] == "0", excerpts
    assert row["internal_errors"] == "0"
    assert row["transfers_corrupt"] == "0" and row["stream_corrupt"] == "0"
    # every stream-mode transfer delivered every byte or failed clearly (never hung)
    assert row["stream_stalled"] == "0"
    assert int(row["stream_ok"]) > 0 and int(row["stream_transfers"]) == int(
        row["stream_ok"]
    ) + int(row["stream_clear_failures"])
    assert row["all_back"] == "True" and row["restart_recovery_s"] != ""
    assert row["syn_acks"] == "0"
    assert row["verdict"] == "pass", row["failures"]
    # the hostile client really ran every attack at least once
    attacks = {a["attack"] for a in rows(summary.run_dir / "soak_attacks.csv")}
    assert attacks == set(params["attacks"])
    events = [e["event"] for e in rows(summary.run_dir / "soak_events.csv")]
    for wanted in ("attacks_start", "flap_down", "flap_up", "blackhole_on", "blackhole_off"):
        assert wanted in events
    assert "kill" in events and "restart_recovered" in events
    # memory and descriptors were sampled for every qtun process over the whole run
    samples = rows(summary.run_dir / "soak_samples.csv")
    assert {s["process"] for s in samples} >= {"concentrator", "c1", "c12"}
    assert {s["lifetime"] for s in samples if s["process"] == "concentrator"} == {"1", "2"}
    pings = rows(summary.run_dir / "soak_pings.csv")
    assert {p["phase"] for p in pings} >= {"baseline", "attacks", "faults", "recovery"}
    assert row["ping_attacks_median_ms"] != ""
