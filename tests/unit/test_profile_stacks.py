"""experiments/profile_stacks.py: py-spy's raw samples put in categories, and a bench run's
table of µs per packet by category (the recording: tests/integration/test_bench_profile.py)."""

from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path

import pytest

from experiments import profile_stacks
from experiments.profile_stacks import (
    OTHER,
    categorize,
    category_of,
    leaf,
    parse_stacks,
    run_table,
    us_per_category,
)
from tunnel.user_error import RuntimeFailure, UsageError

ROOT = "<module> (qtun:6);run (tunnel/aio/udp.py:124);Runner.run (asyncio/runners.py:118)"


def stack(*frames: str, samples: int = 1) -> str:
    return ";".join((ROOT, *frames)) + f" {samples}\n"


@pytest.mark.parametrize(
    ("frame", "category"),
    [
        ("_seal_short_c (tunnel/protocol/quic_ext.py:301)", "crypto"),
        ("_open_short_python (tunnel/protocol/quic_ext.py:420)", "crypto"),
        ("HeaderProtection._mask (aioquic/_crypto.py:12)", "crypto"),
        ("AESGCM.encrypt (cryptography/hazmat/primitives/ciphers/aead.py:9)", "crypto"),
        ("UdpEndpoint._send_segmented (tunnel/aio/udp.py:210)", "UDP send / receive"),
        ("UdpEndpoint._receive_coalesced (tunnel/aio/udp.py:330)", "UDP send / receive"),
        ("Segmenter.segment (tunnel/wire/tcp_tso.py:80)", "TUN offloads (merge, cut)"),
        ("TunDevice._read_segmented (tunnel/aio/tun.py:272)", "TUN offloads (merge, cut)"),
        ("TunDevice._write_one (tunnel/aio/tun.py:300)", "TUN read / write"),
        ("TunnelQuicConnection._datagram_pass (tunnel/protocol/quic_ext.py:900)",
         "fast path (quic_ext)"),
        ("QuicPacketRecovery.on_ack_received (aioquic/quic/recovery.py:200)",
         "aioquic (recovery, ACKs, timers)"),
        ("BaseEventLoop._run_once (asyncio/base_events.py:1900)", "event loop"),
        ("QuicDriver._arm_timer (tunnel/aio/udp.py:500)",
         "our program (agents, connection, driver)"),
        ("ClientAgent.quic_event (tunnel/agents/client.py:1200)",
         "our program (agents, connection, driver)"),
        ("__create_fn__.<locals>.__init__ (<string>:2)", OTHER),
        ("<lambda> (<string>)", OTHER),
    ],
)  # fmt: skip
def test_a_sample_goes_where_its_leaf_frame_ran(frame: str, category: str) -> None:
    assert category_of(*leaf(stack(frame).rpartition(" ")[0].split(";"))) == category


def test_a_file_is_counted_by_category_and_bad_lines_are_skipped() -> None:
    lines = [
        stack("_seal_short_c (tunnel/protocol/quic_ext.py:301)", samples=30),
        stack("UdpEndpoint._send_segmented (tunnel/aio/udp.py:210)", samples=10),
        stack("_seal_short_c (tunnel/protocol/quic_ext.py:305)", samples=5),
        "\n",
        "a line without a count\n",
        stack("TunDevice._write_one (tunnel/aio/tun.py:300)", samples=7)[:-4],  # cut short
    ]
    assert list(parse_stacks(["f (a.py:1);g (b.py:2) 3\n"])) == [(["f (a.py:1)", "g (b.py:2)"], 3)]
    assert categorize(lines) == {"crypto": 35, "UDP send / receive": 10}


def test_a_share_of_the_samples_is_that_share_of_the_cost_per_packet() -> None:
    table = us_per_category(categorize([stack("x (tunnel/aio/tun.py:1)", samples=1)]), 20.0)
    assert table == {"TUN read / write": 20.0}
    split = us_per_category({"crypto": 1, "event loop": 3}, 16.0)
    assert split == {"crypto": 4.0, "event loop": 12.0}
    assert us_per_category({}, 16.0) == {}


def write_run(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    fields = ["mode", "profile", "goodput_mbps", "client_us_per_packet",
              "concentrator_us_per_packet"]  # fmt: skip
    with open(tmp_path / "bench.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_the_run_table_gives_each_profiled_program_a_column(tmp_path: Path) -> None:
    run = write_run(tmp_path, [
        {"mode": "tunnel", "profile": "none", "goodput_mbps": "400",
         "client_us_per_packet": "16.0", "concentrator_us_per_packet": "18.0"},
        {"mode": "wireguard", "profile": "none", "goodput_mbps": "400",
         "client_us_per_packet": "12.0", "concentrator_us_per_packet": "12.0"},
    ])  # fmt: skip
    (run / "profile").mkdir()
    for role, lines in (
        ("client", [stack("_seal_short_c (tunnel/protocol/quic_ext.py:1)", samples=3),
                    stack("x (tunnel/aio/tun.py:1)", samples=1)]),
        ("concentrator", [stack("y (aioquic/quic/recovery.py:1)", samples=2)]),
    ):  # fmt: skip
        with gzip.open(run / "profile" / f"tunnel-none-{role}.txt.gz", "wt") as fh:
            fh.writelines(lines)
    table = run_table(run).splitlines()
    assert table[0] == "| µs per packet | tunnel/none client | tunnel/none concentrator |"
    assert "| crypto | 12.0 | 0.0 |" in table
    assert "| TUN read / write | 4.0 | 0.0 |" in table
    assert "| aioquic (recovery, ACKs, timers) | 0.0 | 18.0 |" in table
    assert table[-2:] == ["| **total** | **16.0** | **18.0** |", "| samples | 4 | 2 |"]


def test_what_cannot_be_read_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"bench\.csv cannot be read"):
        run_table(tmp_path)
    row = {"mode": "tunnel", "profile": "none", "goodput_mbps": "1"}
    run = write_run(tmp_path, [{**row, "client_us_per_packet": "1"}])
    with pytest.raises(UsageError, match="run the bench with --profile"):
        run_table(run)
    (run / "profile").mkdir()
    (run / "profile" / "tunnel-none-client.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(UsageError, match="cannot be read as a py-spy raw profile"):
        run_table(run)


def test_a_missing_py_spy_is_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeFailure, match="py-spy is missing: run `make venv`"):
        profile_stacks.py_spy()
