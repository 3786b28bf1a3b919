"""The overhead experiment's framing arithmetic, point list and capture summary parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import overhead
from experiments.runner import ExperimentError, resolve_params


def test_tunnel_framing_is_58_bytes_from_the_budget() -> None:
    # The figure: outer IPv4 + UDP + short header + AEAD tag + DATAGRAM frame header.
    assert overhead.quic_datagram_framing(1400) == 58
    assert overhead.quic_datagram_framing(64) == 58
    assert overhead.quic_datagram_framing(63) == 57  # 1-byte length varint


def test_expected_per_packet_udp() -> None:
    assert overhead.expected_per_packet("plain", "udp", 512) == 28
    assert overhead.expected_per_packet("tunnel", "udp", 512) == 28 + 58
    assert overhead.expected_per_packet("session", "udp", 512) == 28 + 62
    assert overhead.expected_per_packet("stream", "udp", 512) is None


@pytest.mark.parametrize(
    ("payload", "padding"),
    [(64, 4), (68, 0), (512, 4), (1200, 4), (1392, 0)],  # inner = payload + 28, padded to 16
)
def test_wireguard_framing_pads_to_16(payload: int, padding: int) -> None:
    assert overhead.expected_per_packet("wireguard", "udp", payload) == 28 + 60 + padding


def test_wireguard_padding_stops_at_the_mtu() -> None:
    assert overhead.wireguard_framing(overhead.WG_MTU) == 60
    assert overhead.wireguard_framing(overhead.WG_MTU - 2) == 62  # 1418 -> 1420, not 1424


def test_expected_per_packet_bulk() -> None:
    assert overhead.expected_per_packet("plain", "bulk-tcp", -1) == 52
    assert overhead.expected_per_packet("tunnel", "bulk-tcp", -1) == 52 + 58
    assert overhead.expected_per_packet("session", "bulk-tcp", -1) == 52 + 62
    assert overhead.expected_per_packet("wireguard", "bulk-tcp", -1) == 52 + 60
    assert overhead.expected_per_packet("stream", "bulk-tcp", -1) == 28 + 27 + 8


def test_points_grouped_by_mode_and_checked() -> None:
    params = resolve_params(overhead.EXPERIMENT, quick=True, sets=['modes=["plain","tunnel"]'])
    pts = overhead.points(params)
    modes = [p["mode"] for p in pts]
    assert modes == sorted(modes, key=["plain", "tunnel"].index)  # one set-up per mode
    assert len(pts) == 2 * (len(params["payloads"]) + 1)
    bad = resolve_params(overhead.EXPERIMENT, sets=['modes=["plain","ipsec"]'])
    with pytest.raises(ExperimentError, match="unknown mode"):
        overhead.points(bad)
    with pytest.raises(ExperimentError, match=r"16\.\.1400"):
        overhead.points(resolve_params(overhead.EXPERIMENT, sets=["payloads=[8]"]))


def test_tcpdump_missed(tmp_path: Path) -> None:
    log = tmp_path / "tcpdump.log"
    log.write_text(
        "tcpdump: listening on h1-eth0\n"
        "3078 packets captured\n3406 packets received by filter\n0 packets dropped by kernel\n"
    )
    assert overhead.tcpdump_missed(log) == 328
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write(
            "500 packets captured\n500 packets received by filter\n2 packets dropped by kernel\n"
        )
    assert overhead.tcpdump_missed(log, offset) == 2
    log.write_text("tcpdump: listening on h1-eth0\n")
    with pytest.raises(ExperimentError, match="no summary"):
        overhead.tcpdump_missed(log)


def test_summary_table(tmp_path: Path) -> None:
    from tests.unit.test_analysis import write_overhead_run

    write_overhead_run(tmp_path)
    lines = overhead.summary_table(tmp_path).splitlines()
    assert lines[0].split()[:3] == ["mode", "workload", "payload"]
    assert any(line.split()[:3] == ["tunnel", "bulk-tcp", "bulk"] for line in lines)
    assert "no table" in overhead.summary_table(tmp_path / "missing")
