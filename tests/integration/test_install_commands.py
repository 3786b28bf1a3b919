"""`make install-commands` (issue 16): `sudo qtlab ...` works although sudo's secure_path leaves
the checkout's .venv/bin out. The wrappers go to a BINDIR of the test's own; sudo runs one the
way it runs any command (environment reset, PATH its secure_path, from another directory), and
Debian's secure_path holds the default BINDIR /usr/local/bin."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        shutil.which("sudo") is None, reason="sudo is not installed: `sudo make deps` installs it"
    ),
]

REPO = Path(__file__).resolve().parents[2]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_sudo_runs_the_installed_wrappers_from_anywhere(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    done = make("install-commands", f"BINDIR={bindir}")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in bindir.iterdir()) == ["qtlab", "qtun"]

    secure_path = subprocess.run(
        ["sudo", "-n", "sh", "-c", "echo $PATH"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert "/usr/local/bin" in secure_path.split(":"), secure_path
    for argv, wanted in (([f"{bindir}/qtlab", "topologies"], "reference"),
                         ([f"{bindir}/qtun", "--help"], "concentrator")):  # fmt: skip
        ran = subprocess.run(
            ["sudo", "-n", *argv], cwd="/", env={"PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert ran.returncode == 0 and wanted in ran.stdout, ran.stderr

    done = make("uninstall-commands", f"BINDIR={bindir}")
    assert done.returncode == 0 and list(bindir.iterdir()) == [], done.stderr


def test_a_file_that_is_not_ours_is_never_overwritten_or_removed(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    theirs = bindir / "qtlab"
    theirs.write_text("#!/bin/sh\necho someone else's qtlab\n")
    done = make("install-commands", f"BINDIR={bindir}")
    assert done.returncode != 0
    assert f"{theirs} exists and is not ours" in done.stderr
    make("uninstall-commands", f"BINDIR={bindir}")
    assert theirs.read_text() == "#!/bin/sh\necho someone else's qtlab\n"
