"""Network namespaces and veth pairs for helper "edges" tests (prefix qta), removed even on
failure. Not a test module: imported by test_tun.py and test_udp_quic.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout)


@contextmanager
def namespaces(*names: str) -> Iterator[tuple[str, ...]]:
    """Create the namespaces (each name must start with "qta-"); delete them on exit."""
    assert all(n.startswith("qta-") for n in names)
    made: list[str] = []
    try:
        for name in names:
            run("ip", "netns", "add", name)
            made.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in made:
            # deleting the namespace removes every interface inside it (TUN, veth ends)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def veth(
    ns_a: str, if_a: str, ns_b: str, if_b: str, addrs_a: Sequence[str], addrs_b: Sequence[str]
) -> None:
    """A veth pair between two of our namespaces, addressed and up (IPv6 without DAD)."""
    assert if_a.startswith("qta") and if_b.startswith("qta")
    run(
        "ip",
        "link",
        "add",
        if_a,
        "netns",
        ns_a,
        "type",
        "veth",
        "peer",
        "name",
        if_b,
        "netns",
        ns_b,
    )
    for ns, ifname, addrs in ((ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b)):
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            run("ip", "-n", ns, "addr", "add", addr, "dev", ifname, *extra)
        run("ip", "-n", ns, "link", "set", ifname, "up")


def python_in(ns: str, module: str, *args: str) -> list[str]:
    """Command line running `python -m module args` inside namespace `ns`, from the repo."""
    return ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args]


def popen_in(ns: str, module: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        python_in(ns, module, *args),
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def child(ns: str, module: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A child process in `ns`; killed (by its own pid) on exit if still running."""
    proc = popen_in(ns, module, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def expect_line(proc: subprocess.Popen[str], prefix: str) -> str:
    """Read the child's stdout until a line starting with `prefix` (the child bounds its own
    lifetime, so a missing line ends with EOF rather than a hang)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    stderr = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"child ended without {prefix!r}; stderr:\n{stderr}")
