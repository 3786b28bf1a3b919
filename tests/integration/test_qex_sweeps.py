"""The goodput and aggregation experiments for real, at the smallest size that still says
something: columns per the contract, plain TCP near the link rate, MPTCP using both accesses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.runner import get_experiment, resolve_params, run_experiment
from testbed.fidelity import TCP_GOODPUT_FRACTION

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.slow]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_goodput_plain_and_udp(tmp_path: Path) -> None:
    exp = get_experiment("goodput")
    sets = [
        'modes=["plain"]',
        'transports=["tcp-cubic", "udp"]',
        "loss_pct=[0.0]",
        "rtt_ms=[10.0]",
        "duration_s=4.0",
        "rate_mbit=20.0",
        "udp_rate_mbit=5.0",
        "verify_fidelity=false",
    ]
    summary = run_experiment(exp, resolve_params(exp, sets=sets), root=tmp_path, progress=False)
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["failed"] == []
    table = rows(summary.run_dir / "goodput.csv")
    assert list(table[0]) == exp.tables["goodput"]
    by = {r["transport"]: r for r in table}
    # A clean 20 Mbit/s access: TCP gets close to the rate, all of UDP's 5 Mbit/s arrives.
    assert float(by["tcp"]["goodput_mbps"]) > 0.8 * 20 * TCP_GOODPUT_FRACTION
    assert float(by["tcp"]["goodput_mbps"]) < 20
    assert float(by["udp"]["goodput_mbps"]) == pytest.approx(5.0, rel=0.05)
    assert by["udp"]["packets_lost"] == "0"


def test_aggregation_mptcp_uses_both_accesses(tmp_path: Path) -> None:
    exp = get_experiment("aggregation")
    sets = ['variants=["mptcp"]', "duration_s=6.0", "warmup_s=2.0", "verify_fidelity=false"]
    params = resolve_params(exp, runs=1, sets=sets)
    summary = run_experiment(exp, params, root=tmp_path, progress=False)
    (row,) = rows(summary.run_dir / "aggregation.csv")
    assert list(row) == exp.tables["aggregation"]
    # More than the faster access (5G, 100 of 150 Mbit/s) alone could carry.
    assert float(row["ratio"]) > 100 / 150
    assert float(row["goodput_mbps"]) == pytest.approx(150 * float(row["ratio"]))


def test_goodput_points_start_on_new_quic_connections(tmp_path: Path) -> None:
    """A loss-free point right after a 2 % loss point at 100 ms RTT: on the QUIC connection the
    lossy point left, aioquic's Reno window would still be small (4.4 of 20 Mbit/s of UDP
    measured before the fix); a new connection carries the whole constant-rate flow."""
    exp = get_experiment("goodput")
    sets = [
        'modes=["tunnel"]',
        'transports=["udp"]',
        "loss_pct=[2.0, 0.0]",
        "rtt_ms=[100.0]",
        "duration_s=4.0",
        "udp_rate_mbit=20.0",
        "verify_fidelity=false",
    ]
    summary = run_experiment(exp, resolve_params(exp, sets=sets), root=tmp_path, progress=False)
    by = {r["loss_pct"]: r for r in rows(summary.run_dir / "goodput.csv")}
    assert list(by) == ["2.0", "0.0"], by  # run in this order
    assert float(by["0.0"]["goodput_mbps"]) > 0.9 * 20.0, by
