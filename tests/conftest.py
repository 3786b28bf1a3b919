"""Shared pytest set-up.

- Tests marked `root` (or `mininet`) skip themselves for other users.
- Hypothesis profiles: "dev" (the default: few examples, for the inner loop `make check`) and
  "ci" (`make test`, `make test-unit`: Hypothesis' full default count, no deadline and no
  too-slow health check, since a shared 2-core machine makes any wall-clock bound a flake).
  Choose with `--hypothesis-profile=ci` or HYPOTHESIS_PROFILE=ci.
- `lab_certs`: one test CA per run (tests/certs.py); tests read it and never write into it.
- `make test` (scripts/run-tests) runs three pytest processes side by side (the Mininet tests,
  the other root tests, the unit and notebook tests at nice 19), then checks the whole run for
  leaks (tests/leakcheck.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.certs import make_lab_certs

settings.register_profile(
    "ci",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: run `sudo make test`, or `make test-unit` alone")
    for item in items:
        if "root" in item.keywords or "mininet" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's test CA (tests/certs.py: CLIENTS, and foreign/ with its own "alice")."""
    return make_lab_certs(tmp_path_factory.mktemp("lab-certs"))
