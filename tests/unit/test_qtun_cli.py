"""qtun command line: exit codes and one-sentence errors (no root needed), log line format."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tunnel.aio import cli
from tunnel.user_error import EXIT_RUNTIME, EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]


def _one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("qtun: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_unknown_role_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["server", "-c", "x.toml"]) == EXIT_USAGE
    line = _one_sentence(capsys.readouterr().err)
    assert "server" in line and "qtun --help" in line


def test_missing_config_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["client"]) == EXIT_USAGE
    assert "-c/--config" in _one_sentence(capsys.readouterr().err)


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["client", "-c", str(tmp_path / "nope.toml")]) == EXIT_USAGE
    assert "does not exist" in _one_sentence(capsys.readouterr().err)


def test_bad_override_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "examples" / "client-tunnel.toml"
    assert cli.main(["client", "-c", str(config), "--set", "nonsense"]) == EXIT_USAGE
    assert "key=value" in _one_sentence(capsys.readouterr().err)


def test_bad_value_names_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "examples" / "client-tunnel.toml"
    code = cli.main(["client", "-c", str(config), "--set", "concentrator.port=70000"])
    assert code == EXIT_USAGE
    assert "concentrator.port" in _one_sentence(capsys.readouterr().err)


def test_preflight_not_root() -> None:
    sentence = cli.preflight(net_admin=False)
    assert sentence is not None and "root" in sentence


def test_preflight_missing_tun(tmp_path: Path) -> None:
    sentence = cli.preflight(tun_device=tmp_path / "tun", net_admin=True)
    assert sentence is not None and "modprobe tun" in sentence


def test_preflight_ok(tmp_path: Path) -> None:
    device = tmp_path / "tun"
    device.touch()
    assert cli.preflight(tun_device=device, net_admin=True) is None


def test_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunnel.aio.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0
    assert "client" in result.stdout and "concentrator" in result.stdout


def test_log_line_format() -> None:
    formatter = cli._LineFormatter("client")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord(
            "qtun.client", logging.WARNING, __file__, 1, "up mtu=%d", (1400,), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    date, role, level, rest = line.split(" ", 3)
    assert date.endswith("Z") and "T" in date
    assert (role, level) == ("client", "WARNING")
    assert rest.startswith("up mtu=1400") and "ValueError" in rest


def test_python_m_runtime_failure_is_one_sentence(tmp_path: Path) -> None:
    # Run as `python -m tunnel.aio.cli` (how the testbed starts it without the script): a
    # RuntimeFailure from the program must still be one sentence, exit 1.
    script = (
        "import sys, runpy\n"
        "import tunnel.aio.cli as cli\n"
        "cli.preflight = lambda *a, **k: None\n"
        "import tunnel.aio.client as client\n"
        "def boom(config):\n"
        "    raise cli.RuntimeFailure('TUN busy: pick another name')\n"
        "client.run_client = boom\n"
        f"sys.argv = ['qtun', 'client', '-c', {str(REPO / 'examples' / 'client-tunnel.toml')!r}]\n"
        f"sys.argv += ['--set', 'tls.ca={__file__}', '--set', 'tls.cert={__file__}']\n"
        f"sys.argv += ['--set', 'tls.key={__file__}', '--set', 'observability.status_file=']\n"
        "runpy.run_module('tunnel.aio.cli', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore::RuntimeWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == EXIT_RUNTIME, result.stderr
    assert _one_sentence(result.stderr) == "qtun: error: TUN busy: pick another name"
