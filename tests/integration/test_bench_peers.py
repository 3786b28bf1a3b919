"""`make bench`'s peers in the same run (experiments/bench.py): wireguard-go and OpenVPN carry
an iperf3 transfer between the pair topology's h1 and h2 through their own tunnel devices, and
each gets its CPU and µs-per-packet figures (recorded, never judged here)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from experiments.bench import Transfer, run_bench
from experiments.variants import WG_MTU

pytestmark = [pytest.mark.root, pytest.mark.mininet]


def test_wireguard_and_openvpn_rows(tmp_path: Path) -> None:
    # two profiles: each peer starts twice in one lab (its second start must not take the first
    # one's log for its own readiness)
    out_dir, rows = run_bench(
        Transfer(1), profiles=("none", "5g"), modes=("wireguard", "openvpn"), out_root=tmp_path
    )
    by_mode = {row.mode: row for row in rows if row.profile == "none"}
    assert [r.error for r in rows] == ["", "", "", ""], [r.error for r in rows]
    for mode in ("wireguard", "openvpn"):
        row = by_mode[mode]
        assert not row.error, row.error
        assert row.goodput_mbps and row.goodput_mbps > 0
        assert row.client_cpu_pct is not None and row.concentrator_cpu_pct is not None
        assert row.client_us_per_packet and row.concentrator_us_per_packet
    # the MTU is the peer's own device's: the transfer went through it
    assert by_mode["wireguard"].mtu == WG_MTU
    with open(out_dir / "bench.csv") as f:
        assert [r["mode"] for r in csv.DictReader(f)] == ["wireguard", "openvpn"] * 2
