"""The test run's leak check: `make test` (scripts/run-tests) saves what exists before the tests
and checks after every pytest process has ended that nothing new is left: network namespaces,
root-namespace interfaces, nftables tables and helper processes (qtun, qtwire, iperf3, tcpdump,
wireguard-go, dnsmasq, dhclient, Mininet node shells, Ray's daemons and workers). Tests must
clean up after themselves, failures included; a leak fails the run even if every test passed.
Checked once for the whole run, since the root tests run in two pytest processes side by side
(one would see the other's things as leaks).

    python -m tests.leakcheck save FILE     # before
    python -m tests.leakcheck check FILE    # after: exit 1 and one line per kind if leaks
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WATCHED_PROGRAMS = (
    "qtun", "qtwire", "iperf3", "tcpdump", "wireguard-go", "mnexec", "dnsmasq", "dhclient",
    "gcs_server", "raylet",  # a Ray cluster's daemons (tests/integration/test_ray_executor.py)
)  # fmt: skip


def _lines(argv: list[str]) -> list[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.splitlines()


def system_state() -> dict[str, set[str]]:
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
            w in WATCHED_PROGRAMS or w.startswith(("qtun", "mininet:", "tunnel.aio", "ray::"))
            for w in words[:6]
        ):
            procs.add(f"{entry.name} {' '.join(words[:6])}")
    return {"netns": netns, "links": links, "nft tables": tables, "processes": procs}


def leaks(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """What `after` has that `before` had not, per kind (kinds with nothing left out)."""
    found = {kind: sorted(after[kind] - before.get(kind, set())) for kind in after}
    return {kind: items for kind, items in found.items() if items}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "check"):
        print("usage: python -m tests.leakcheck save|check FILE", file=sys.stderr)
        return 2
    command, path = argv[0], Path(argv[1])
    if command == "save":
        path.write_text(json.dumps({k: sorted(v) for k, v in system_state().items()}))
        return 0
    before = {k: set(v) for k, v in json.loads(path.read_text()).items()}
    left = leaks(before, system_state())
    if left:
        text = "; ".join(f"{kind}: {', '.join(items)}" for kind, items in left.items())
        print(f"error: the tests left these behind (a test does not clean up): {text}")
        return 1
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit(0)  # without root no test made any of it
    sys.exit(main(sys.argv[1:]))
