"""experiments.bench without root: arguments, the mode registry, CPU accounting, the table."""

from __future__ import annotations

import os
import time

import pytest

from experiments.bench import (
    FIELDS,
    MODES,
    Row,
    Transfer,
    compare_with_plain,
    cpu_seconds,
    format_table,
    iperf3_tcp,
    main,
)


def test_modes_are_a_registry_of_plain_the_tunnel_modes_and_our_peers() -> None:
    default = [name for name, mode in MODES.items() if mode.default]
    assert default == ["plain", "tunnel", "session", "stream", "masque", "wireguard", "openvpn"]
    # the baselines of the datagram fast path, merged TUN writes and segmentation offload,
    # run only when asked for
    baselines = {
        "tunnel-generic": "limits.fast_datagram_path=false",
        "session-generic": "limits.fast_datagram_path=false",
        "tunnel-no-offload": "tun.offload=false",
        "tunnel-no-tso": "tun.tso=false",
    }
    assert set(MODES) - set(default) == set(baselines)
    for name, off in baselines.items():
        spec = MODES[name].spec
        assert spec is not None and spec.mode == name.split("-")[0]
        assert off in spec.client_overrides and off in spec.concentrator_overrides
    assert MODES["plain"].spec is None and MODES["plain"].peer is None
    assert [(MODES[m].spec, MODES[m].peer) for m in ("wireguard", "openvpn")] == [
        (None, "wireguard"),
        (None, "openvpn"),
    ]
    assert MODES["tunnel"].spec is not None and MODES["tunnel"].spec.mode == "tunnel"
    assert MODES["session"].spec is not None and MODES["session"].spec.mode == "session"
    assert MODES["masque"].spec is not None and MODES["masque"].spec.mode == "masque"
    stream = MODES["stream"].spec
    assert stream is not None and stream.stream and stream.mode == "tunnel"
    assert "stream.allow_own_addresses=true" in stream.concentrator_overrides


def test_csv_columns_start_with_the_issue_s_columns() -> None:
    assert FIELDS[:5] == [
        "mode",
        "profile",
        "goodput_mbps",
        "client_cpu_pct",
        "concentrator_cpu_pct",
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--modes", "plain,bogus"], "unknown mode bogus: choose from plain, tunnel, session"),
        (["--profiles", "moon"], "unknown profile moon"),
        (["--profiles", ","], "unknown profile (none given)"),
        (["--seconds", "0"], "--seconds 0 is out of range"),
        (["--rate", "0"], "--rate 0 is out of range"),
        (["--rate", "nan"], "--rate nan is out of range"),
    ],
)
def test_bad_arguments_get_one_sentence_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_transfer_says_its_direction_and_reverse_asks_iperf3_for_it() -> None:
    assert Transfer(10).direction == "h1 -> h2"
    assert Transfer(10, reverse=True).direction == "h2 -> h1 (iperf3 -R)"
    commands: list[str] = []

    class Node:
        def cmd(self, command: str) -> str:
            commands.append(command)
            return '{"end": {}}'

    for reverse in (False, True):
        iperf3_tcp(Node(), "10.8.0.1", Transfer(5, reverse))  # type: ignore[arg-type]
    assert [c.endswith(" -R") for c in commands] == [False, True]
    assert all("-t 5 " in c for c in commands)
    iperf3_tcp(Node(), "10.8.0.1", Transfer(5, True, 1.5))  # type: ignore[arg-type]
    assert commands[-1].endswith(" -R -b 1.5M")


def test_cpu_seconds_counts_this_process_s_work() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # bounded busy loop: 0.2 s of CPU
        pass
    spent = cpu_seconds(os.getpid()) - before
    assert 0.1 <= spent <= 1.0


def test_table_shows_missing_figures_and_errors() -> None:
    rows = [
        Row("plain", "none", 900.5, None, None, 10.0, 0, 1500),
        Row("tunnel", "wifi", error="qtun on h2 is not running"),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:2] == ["mode", "profile"]
    assert "900.5" in lines[1] and lines[1].split()[3:5] == ["-", "-"]
    assert lines[2].endswith("error: qtun on h2 is not running")


def test_each_mode_is_compared_with_plain_on_its_own_profile() -> None:
    rows = [
        Row("plain", "wifi", 40.0),
        Row("tunnel", "wifi", 38.0),
        Row("plain", "5g", 90.0),
        Row("session", "5g", 45.0),
        Row("tunnel", "none", 100.0),  # no plain row on this profile
        Row("tunnel", "5g", error="failed"),
    ]
    compare_with_plain(rows)
    assert [r.vs_plain for r in rows] == [1.0, 0.95, 1.0, 0.5, None, None]
