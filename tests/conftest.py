"""Shared pytest set-up.

- Tests marked `root` (or `mininet`) skip themselves for other users.
- Hypothesis profiles: "dev" (the default: few examples, for the inner loop `make check`) and
  "ci" (`make test`, `make test-unit`: Hypothesis' full default count, no deadline and no
  too-slow health check, since a shared 2-core machine makes any wall-clock bound a flake).
  Choose with `--hypothesis-profile=ci` or HYPOTHESIS_PROFILE=ci.
- `lab_certs`: one test CA per run (tests/certs.py); tests read it and never write into it.
- As root with QTL_LEAK_CHECK=1 (`make test` sets it), the whole run is checked for leaks:
  network namespaces, root-namespace interfaces, nftables tables and helper processes (qtun,
  qtwire, iperf3, tcpdump, wireguard-go) present at the end but not at the start fail the run,
  even if every test passed: tests must clean up after themselves, failures included.
- `make test` (scripts/run-tests) runs two pytest processes side by side: the root tests one
  after the other, with the leak check, and the unit and notebook tests at nice 19.
"""

from __future__ import annotations

import json
import os
import subprocess
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

WATCHED_PROGRAMS = ("qtun", "qtwire", "iperf3", "tcpdump", "wireguard-go", "mnexec")
_baseline: dict[str, set[str]] = {}


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


def _lines(argv: list[str]) -> list[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.splitlines()


def _system_state() -> dict[str, set[str]]:
    netns = {line.split()[0] for line in _lines(["ip", "netns", "list"]) if line.strip()}
    links: set[str] = set()
    for line in _lines(["ip", "-j", "link", "show"]):
        try:
            links |= {str(item["ifname"]) for item in json.loads(line)}
        except (ValueError, KeyError, TypeError):
            continue
    tables = {line.strip() for line in _lines(["nft", "list", "tables"]) if line.strip()}
    procs: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [os.path.basename(a.decode(errors="replace")) for a in argv if a]
        # a Mininet node's shell ends in "mininet:<node>"; programs may run under python -m
        if any(
            w in WATCHED_PROGRAMS or w.startswith(("qtun", "mininet:", "tunnel.aio"))
            for w in words[:6]
        ):
            procs.add(f"{entry.name} {' '.join(words[:6])}")
    return {"netns": netns, "links": links, "nft tables": tables, "processes": procs}


def _leak_check_on() -> bool:
    return os.geteuid() == 0 and os.environ.get("QTL_LEAK_CHECK") == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    if _leak_check_on():
        _baseline.update(_system_state())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _leak_check_on() or not _baseline:
        return
    now = _system_state()
    leaks = {kind: sorted(now[kind] - _baseline.get(kind, set())) for kind in now}
    leaks = {kind: items for kind, items in leaks.items() if items}
    if leaks:
        text = "; ".join(f"{kind}: {', '.join(items)}" for kind, items in leaks.items())
        print(f"\nerror: the tests left these behind (a test does not clean up): {text}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
