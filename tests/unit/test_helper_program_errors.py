"""The helper programs (the experiments' traffic tools and benchmarks, the hostile client, the
capture decoder) answer a command-line mistake as every command does (tunnel/user_error.py
SentenceParser inside run_command): one line `<prog>: error: <sentence>` naming the option and
pointing at --help, exit code 2, neither argparse's usage block nor a traceback. Each one fails
before doing any work, so this is fast and needs no root and no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

HOSTILE_ATTACKS = [
    "attacks", "--remote", "127.0.0.1", "--ca", "ca.pem", "--cert", "c.pem", "--key", "c.key",
    "--inner-v4", "10.0.0.2", "--inner-v6", "fd00::2", "--out", "out.json", "--duration", "1",
]  # fmt: skip

# module -> the prog of its error line, and the arguments it requires (a subcommand, its
# required options, a positional): argparse names a missing one before an unknown option
PROGRAMS: dict[str, tuple[str, list[str]]] = {
    "experiments.traffic": (
        "traffic",
        ["tcp-send", "--bind", "127.0.0.1", "--port", "1", "--start-at", "0", "--duration", "1"],
    ),
    "experiments.profile_stacks": ("profile", ["results/bench/no-such-run"]),
    "experiments.bench_zero_rtt": ("bench_zero_rtt", []),
    "experiments.overhead": ("overhead", []),
    "experiments.soak_traffic": (
        "soak_traffic",
        ["serve", "--bind", "127.0.0.1", "--port", "1", "--until", "0"],
    ),
    "experiments.bench_quic_memory": ("bench_quic_memory", []),
    "experiments.bench_initial_flood": ("bench_initial_flood", []),
    "experiments.bench_datagram_path": ("bench_datagram_path", []),
    "experiments.bench_reorder": ("bench_reorder", []),
    "experiments.workload_traffic": (
        "workload_traffic",
        ["video-serve", "--bind", "127.0.0.1", "--port", "1", "--until", "0"],
    ),
    "experiments.bench_connect": ("bench_connect", []),
    "testbed.hostile": ("hostile", HOSTILE_ATTACKS),
    "testbed.decode": ("decode", ["no-such-capture-dir"]),
}


def _run(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _one_line_usage_error(done: subprocess.CompletedProcess[str], prog: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "usage:" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{prog}: error: ") and "--help" in lines[0], done.stderr
    assert done.stdout == ""
    return lines[0]


@pytest.mark.parametrize("module", PROGRAMS)
def test_an_unknown_option_is_one_line_and_exit_code_2(module: str) -> None:
    prog, required = PROGRAMS[module]
    line = _one_line_usage_error(_run(["-m", module, *required, "--no-such-option"]), prog)
    assert "--no-such-option" in line


@pytest.mark.parametrize("module", [m for m, (_, required) in PROGRAMS.items() if required])
def test_a_missing_command_or_argument_is_one_line_too(module: str) -> None:
    prog, _ = PROGRAMS[module]
    line = _one_line_usage_error(_run(["-m", module]), prog)
    assert "required" in line


def test_traffic_run_as_a_script_too() -> None:
    """experiments/flows.py runs traffic.py by its path (not -m): tunnel.user_error must import
    from there as well."""
    prog, required = PROGRAMS["experiments.traffic"]
    script = str(REPO / "experiments" / "traffic.py")
    line = _one_line_usage_error(_run([script, *required, "--no-such-option"], Path("/")), prog)
    assert "--no-such-option" in line


@pytest.mark.parametrize(
    ("module", "argv", "named"),
    [
        ("experiments.bench_initial_flood", ["--rates", "abc"], "'abc' is not a rate"),
        ("experiments.bench_initial_flood", ["--policies", "sometimes"], "unknown Retry policy"),
        ("experiments.bench_reorder", ["--packets", "0"], "--packets must be in"),
        ("experiments.bench_reorder", ["--scenarios", "nope"], "unknown scenario 'nope'"),
    ],
)
def test_a_bad_value_is_one_sentence_and_exit_code_2(
    module: str, argv: list[str], named: str
) -> None:
    done = _run(["-m", module, *argv])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert named in done.stderr
