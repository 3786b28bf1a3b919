"""One user-error base and one CLI boundary for every command (qtun, qtlab, the experiment
runner, demo, bench): a user's mistake is one line `<prog>: error: <sentence>` with its exit code
(2 usage, 1 runtime), Ctrl-C is 130 with what was kept, and a bug (any other exception) is not
dressed up as a user's mistake: it keeps its traceback and exits 1."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tunnel.user_error import (
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    RuntimeFailure,
    UsageError,
    UserError,
    run_command,
)

REPO = Path(__file__).resolve().parents[2]


def _one_line(stderr: str, prog: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), stderr
    return lines[0].removeprefix(f"{prog}: error: ")


def _raise(exc: BaseException) -> Any:
    def raising(*_: Any, **__: Any) -> NoReturn:
        raise exc

    return raising


# --- run_command ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("--x is wrong: give --y"), EXIT_USAGE),
        (RuntimeFailure("no TUN: load the tun module"), EXIT_RUNTIME),
        (UserError("no results: run the experiment"), EXIT_RUNTIME),
    ],
)
def test_a_user_error_is_one_line_and_its_exit_code(
    error: UserError, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command("prog", _raise(error)) == code
    assert _one_line(capsys.readouterr().err, "prog") == str(error)


@pytest.mark.parametrize(
    ("main", "argv", "prog", "parser"),
    [
        ("testbed.cli", ["run", "failover", "--runs", "x"], "qtlab", "qtlab run"),
        ("testbed.cli", ["frob"], "qtlab", "qtlab"),
        ("tunnel.aio.cli", ["client", "-c", "x.toml", "--bogus"], "qtun", "qtun"),
        ("experiments.bench", ["--seconds", "abc"], "bench", "python -m experiments.bench"),
        ("experiments.runner", ["failover", "--shard"], "qtlab", "python -m experiments.runner"),
    ],
)
def test_a_command_line_mistake_is_one_line_too(
    main: str, argv: list[str], prog: str, parser: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse's own mistakes (an unknown option, a bad value) as every UserError: one line,
    exit code 2 (tunnel/user_error.py SentenceParser), not argparse's usage block."""
    import importlib

    assert importlib.import_module(main).main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ")
    assert err.rstrip().endswith(f"run `{parser} --help` for the usage")


def test_ctrl_c_is_130_and_says_what_was_kept(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_command("prog", _raise(KeyboardInterrupt()), interrupted="the data is in d.")
    assert code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "prog: interrupted; the data is in d.\n"


@pytest.mark.parametrize("bug", [RuntimeError("boom"), ValueError("boom"), KeyError("boom")])
def test_a_bug_is_not_a_user_error(bug: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(type(bug)):
        run_command("prog", _raise(bug))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bug", ["RuntimeError", "ValueError"])
def test_a_bug_exits_1_with_its_traceback(bug: str) -> None:
    """What the user sees: Python's traceback and exit 1, never `prog: error: boom`."""
    code = (
        "import sys\n"
        "from testbed import cli\n"
        f"def boom(args): raise {bug}('boom')\n"
        "cli._dispatch = boom\n"
        "sys.exit(cli.main(['topologies']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and f"{bug}: boom" in done.stderr
    assert "qtlab: error" not in done.stderr


# --- every error class meant for the user derives from the one base ------------------------------


def _error_classes() -> list[tuple[str, str, list[str]]]:
    """(module file, class name, base names) of every `class *Error` in testbed/ and
    experiments/."""
    found = []
    for folder in ("testbed", "experiments"):
        for path in sorted((REPO / folder).glob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                    bases = [ast.unparse(b) for b in node.bases]
                    found.append((f"{folder}/{path.name}", node.name, bases))
    return found


def test_every_error_class_of_testbed_and_experiments_is_a_user_error() -> None:
    classes = _error_classes()
    names = {name for _, name, _ in classes}
    assert {"LabError", "QtunError", "ExperimentError", "ResultsError"} <= names
    allowed = {"UserError", "UsageError", "RuntimeFailure"} | names
    wrong = [(f, n, b) for f, n, b in classes if not b or not set(b) <= allowed]
    assert wrong == [], "derive these from tunnel.user_error.UserError/UsageError/RuntimeFailure"


def test_no_command_catches_a_bare_runtime_error_as_a_user_error() -> None:
    """The lab and the experiments raise their own errors; a RuntimeError there is a bug.
    (The asyncio programs may catch the loop's own RuntimeErrors, so tunnel/ is not scanned
    beyond the qtun command line.)"""
    paths = [*(REPO / "testbed").rglob("*.py"), *(REPO / "experiments").rglob("*.py")]
    catches = []
    for path in sorted([*paths, REPO / "tunnel" / "aio" / "cli.py"]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = ast.unparse(node.type)
                if "RuntimeError" in caught:
                    catches.append(f"{path.relative_to(REPO)}:{node.lineno} {caught}")
    assert catches == []


def test_the_exit_code_follows_the_kind_of_mistake() -> None:
    from experiments.analysis import ResultsError
    from experiments.run_meta import RunDirError
    from experiments.runner import ExperimentError
    from testbed.fidelity import FidelityError
    from testbed.lab import LabError
    from testbed.profiles import ProfileError
    from testbed.qtun import QtunError
    from testbed.shaping import ShapingError
    from testbed.topologies import TopologyError
    from tunnel.config import ConfigError

    usage = [ConfigError, ExperimentError, ProfileError, TopologyError, RunDirError]
    runtime = [FidelityError, LabError, QtunError, ShapingError, ResultsError]
    assert [e.exit_code for e in usage] == [EXIT_USAGE] * len(usage)
    assert [e.exit_code for e in runtime] == [EXIT_RUNTIME] * len(runtime)
    assert not any(issubclass(e, RuntimeError | ValueError) for e in usage + runtime)


# --- each command ---------------------------------------------------------------------------------


def test_qtlab_usage_runtime_and_interrupt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from testbed import cli

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.main(["up", "star"]) == EXIT_USAGE
    assert "unknown topology 'star'" in _one_line(capsys.readouterr().err, "qtlab")
    assert cli.main(["up", "reference", "--profile", "wifi"]) == EXIT_USAGE
    assert "write ACCESS=PROFILE" in _one_line(capsys.readouterr().err, "qtlab")
    assert cli.main(["up", "reference", "--profile", "wifi=moon"]) == EXIT_USAGE  # ProfileError
    assert "unknown link profile 'moon'" in _one_line(capsys.readouterr().err, "qtlab")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["clean"]) == EXIT_RUNTIME
    assert "needs root" in _one_line(capsys.readouterr().err, "qtlab")
    monkeypatch.setattr(cli, "_dispatch", _raise(KeyboardInterrupt()))
    assert cli.main(["topologies"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "qtlab: interrupted; everything was stopped.\n"
    monkeypatch.setattr(cli, "_dispatch", _raise(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["topologies"])


def test_qtlab_run_and_the_runner_give_the_same_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: an unknown experiment exited 1 from `qtlab run` and 2 from the runner."""
    from experiments import runner
    from testbed import cli

    assert cli.main(["run", "nosuch"]) == EXIT_USAGE
    from_qtlab = _one_line(capsys.readouterr().err, "qtlab")
    assert runner.main(["nosuch"]) == EXIT_USAGE
    assert _one_line(capsys.readouterr().err, "qtlab") == from_qtlab
    assert "unknown experiment 'nosuch'" in from_qtlab
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert runner.main(["failover", "--set", "runs=1"]) == EXIT_RUNTIME
    assert "experiment failover needs root" in _one_line(capsys.readouterr().err, "qtlab")
    assert cli.main(["run", "failover"]) == EXIT_RUNTIME
    capsys.readouterr()


def test_runner_interrupt_results_error_and_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import runner
    from experiments.analysis import ResultsError

    monkeypatch.setattr(runner, "run_from_args", _raise(KeyboardInterrupt()))
    assert runner.main(["failover"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == (
        "qtlab: interrupted; what was measured is in the run directory.\n"
    )
    # A summary that finds no results was a ValueError: a traceback. Now one line, exit 1.
    monkeypatch.setattr(runner, "run_from_args", _raise(ResultsError("no rows: run it again")))
    assert runner.main(["failover"]) == EXIT_RUNTIME
    assert _one_line(capsys.readouterr().err, "qtlab") == "no rows: run it again"
    monkeypatch.setattr(runner, "run_from_args", _raise(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        runner.main(["failover"])


def test_demo_needs_root_as_a_runtime_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import demo

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert demo.main() == EXIT_RUNTIME
    assert "needs root" in _one_line(capsys.readouterr().err, "qtlab")


def test_bench_usage_runtime_interrupt_and_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import bench

    assert bench.main(["--modes", "bogus"]) == EXIT_USAGE
    assert "unknown mode bogus" in _one_line(capsys.readouterr().err, "bench")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert bench.main([]) == EXIT_RUNTIME
    assert _one_line(capsys.readouterr().err, "bench").startswith("not root")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(bench, "run_bench", _raise(KeyboardInterrupt()))
    assert bench.main([]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "bench: interrupted; the lab was torn down\n"
    monkeypatch.setattr(bench, "run_bench", _raise(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        bench.main([])
