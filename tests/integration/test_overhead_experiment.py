"""The overhead experiment end to end on a real pair lab (plain and WireGuard: no qtun needed).

Plain UDP and TCP and WireGuard have exact framings (28 B, 52 B, 60 B + padding), so the
measured per-packet overhead must equal the arithmetic: a check of the capture, the pcap
parsing and the accounting together.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from experiments import overhead
from experiments.runner import resolve_params, run_experiment

pytestmark = [
    pytest.mark.root,
    pytest.mark.mininet,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet)"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="needs wireguard-go"),
]


def test_plain_and_wireguard_overhead_match_the_framing(tmp_path: Path) -> None:
    params = resolve_params(
        overhead.EXPERIMENT,
        sets=[
            'modes=["plain", "wireguard"]',
            "payloads=[100]",
            "runs=1",
            "udp_seconds=1.0",
            "bulk_bytes=400000",
        ],
    )
    summary = run_experiment(overhead.EXPERIMENT, params, root=tmp_path, progress=False)
    assert (summary.ran, summary.failed, summary.skipped) == (4, 0, 0)
    with (summary.run_dir / "overhead.csv").open(newline="") as f:
        rows = {(r["mode"], r["workload"]): r for r in csv.DictReader(f)}
    assert set(rows) == {
        ("plain", "udp"),
        ("plain", "bulk-tcp"),
        ("wireguard", "udp"),
        ("wireguard", "bulk-tcp"),
    }
    for row in rows.values():
        assert int(row["capture_missed"]) == 0
        assert int(row["app_bytes"]) > 0
    # Exact framings: no other packet of these flows travels h2 -> h1 during a point.
    plain_udp = rows[("plain", "udp")]
    assert float(plain_udp["overhead_per_packet_bytes"]) == 28.0
    assert int(plain_udp["packets"]) == int(plain_udp["sent"])  # nothing lost on a clean link
    assert float(rows[("plain", "bulk-tcp")]["overhead_per_packet_bytes"]) == pytest.approx(
        52, abs=0.5
    )
    assert int(rows[("plain", "bulk-tcp")]["app_bytes"]) == 400000
    # 100 B payload: inner 128 B is a multiple of 16, so no padding; a handshake or keepalive
    # message may add a few bytes per packet on average.
    wg_udp = float(rows[("wireguard", "udp")]["overhead_per_packet_bytes"])
    assert 28 + 60 <= wg_udp <= 28 + 60 + 2
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    assert meta["backend"] in ("wire", "netem") and meta["fidelity"]
    assert meta["framing"]["quic_datagram_framing_bytes"] == 58
