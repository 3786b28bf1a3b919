"""experiments.bench_datagram_path: a short run of each path, with and without the programs'
paced bursts, delivers every datagram (the figures themselves are `make bench`'s business)."""

from __future__ import annotations

import pytest

from experiments import bench_datagram_path
from tunnel.protocol import quic_ext


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("burst", [False, True])
def test_a_short_run_delivers_every_datagram(fast: bool, burst: bool) -> None:
    try:
        cpu, received = bench_datagram_path.one_run(
            fast=fast,
            datagrams=300,
            size=1400,
            batch=32,
            step=0.0005,
            cc="reno",
            replies=4,
            burst=burst,
        )
    finally:
        quic_ext.FAST_DATAGRAM_PATH = True
    assert received == 300 + 300 // 4  # the replies count as datagrams
    assert cpu > 0
