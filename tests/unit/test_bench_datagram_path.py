"""experiments.bench_datagram_path: a short run of each variant (generic path, fast path with
Python or C packet protection), with and without the programs' paced bursts, delivers every
datagram (the figures themselves are the benchmark's business)."""

from __future__ import annotations

import pytest

from experiments import bench_datagram_path
from tunnel.protocol import quic_ext


@pytest.mark.parametrize("variant", bench_datagram_path.VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("burst", [False, True])
def test_a_short_run_delivers_every_datagram(
    variant: bench_datagram_path.Variant, burst: bool
) -> None:
    try:
        cpu, received = bench_datagram_path.one_run(
            variant=variant,
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
        quic_ext.use_packet_protection("c")
    assert received == 300 + 300 // 4  # the replies count as datagrams
    assert cpu > 0


def test_the_cli_prints_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = bench_datagram_path.main(["--runs", "1", "--datagrams", "200"])
    finally:
        quic_ext.FAST_DATAGRAM_PATH = True
        quic_ext.use_packet_protection("c")
    out = capsys.readouterr().out
    assert code == 0
    for variant in bench_datagram_path.VARIANTS:
        assert f"  {variant.name} " in out


def test_an_unknown_packet_protection_is_refused() -> None:
    with pytest.raises(ValueError, match="'c' or 'python'"):
        quic_ext.use_packet_protection("rust")
