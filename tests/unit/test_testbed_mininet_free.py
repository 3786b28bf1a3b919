"""Without Debian's Mininet (a pip install, CI, a laptop) the unit tests still collect and run:
no module of testbed/ or experiments/ imports mininet at import time (the addressing plan is
plain data); only Lab.start, which builds the network, needs it.

Each check runs in a fresh interpreter where importing mininet (or any mininet.*) fails as it
would without the package, so what this process already imported cannot hide it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from testbed.paths import REPO_ROOT

# a fresh interpreter importing testbed/ and experiments/ per check: not in `make check`
pytestmark = pytest.mark.slow

BLOCKED = "hidden: Debian's mininet is not installed"  # in the ImportError's message
NO_MININET = f"""
import sys


class NoMininet:
    def find_spec(self, name, path=None, target=None):
        if name == "mininet" or name.startswith("mininet."):
            raise ModuleNotFoundError(f"No module named {{name!r}} ({BLOCKED})", name=name)
        return None


sys.meta_path.insert(0, NoMininet())
"""


def run_without_mininet(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_MININET + textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_every_testbed_and_experiments_module_imports_without_mininet() -> None:
    done = run_without_mininet(
        """
        import importlib, pkgutil
        import experiments, testbed
        names = [
            m.name
            for package in (testbed, experiments)
            for m in pkgutil.iter_modules(package.__path__, package.__name__ + ".")
        ]
        failed = []
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                failed.append(f"{name}: {exc}")
        print(len(names), "modules")
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
        """
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout.split()[0]) >= 20  # the walk found the packages' modules


def test_a_lab_plans_without_mininet_and_needs_it_only_to_start() -> None:
    done = run_without_mininet(
        """
        from testbed.lab import Lab
        from testbed.qtun import QtunDeployment, TunnelSpec
        lab = Lab("reference")
        try:
            deployment = QtunDeployment(lab, TunnelSpec(mode="session"))
            assert "[[access]]" in deployment.client_toml("c1")
            assert lab.plan.server_address() == "10.200.1.2"
            try:
                lab.start()
            except ImportError as exc:
                print("start:", exc)
            else:
                sys.exit("Lab.start ran without mininet")
        finally:
            lab.stop()
        """
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert BLOCKED in done.stdout


def test_the_tests_collect_without_mininet() -> None:
    """`make test-unit` collects every test module (root ones are skipped after collection):
    none may fail to import for want of mininet."""
    done = run_without_mininet(
        """
        import pytest
        sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"]))
        """,
        timeout=120.0,
    )
    assert "tests collected" in done.stdout or "test collected" in done.stdout, done.stdout
    assert BLOCKED not in done.stdout + done.stderr, done.stdout[-3000:]
