"""`python -m experiments.bench --profile`: py-spy samples both qtun programs while a tunnel-mode
transfer runs, and experiments/profile_stacks.py turns the samples into µs per packet by
category (what results/README.md's profile tables are made with)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from experiments.bench import Transfer, run_bench
from experiments.profile_stacks import categorize, run_table

pytestmark = [pytest.mark.root, pytest.mark.mininet]


def test_a_profiled_bench_samples_both_programs(tmp_path: Path) -> None:
    out_dir, (row,) = run_bench(
        Transfer(2), profiles=("none",), modes=("tunnel",), out_root=tmp_path, profiled=True
    )
    assert not row.error, row.error
    assert row.client_us_per_packet and row.concentrator_us_per_packet
    for role in ("client", "concentrator"):
        with gzip.open(out_dir / "profile" / f"tunnel-none-{role}.txt.gz", "rt") as fh:
            samples = categorize(fh)
        # each program was sampled while it carried the transfer: its QUIC fast path ran
        assert samples["fast path (quic_ext)"] > 0, samples
    table = run_table(out_dir).splitlines()
    assert table[0] == "| µs per packet | tunnel/none client | tunnel/none concentrator |"
    assert table[-2].startswith("| **total** | **")
