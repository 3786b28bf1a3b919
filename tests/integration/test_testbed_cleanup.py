"""Nothing of ours survives a run: not a clean stop, not a SIGKILLed one (after `qtlab clean`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cleanup import clean
from testbed.hosts import ALLOWED_CC_SYSCTL, RUN_ROOT, pid_cmdline, read_sysctl
from testbed.lab import Lab
from tests.integration.netns import wait_until

pytestmark = [pytest.mark.root, pytest.mark.mininet]

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    return bool(pid_cmdline(pid))


def our_root_leftovers() -> list[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [w for w in (links + netns).split() if w.rstrip(":").startswith("qtb")]


def test_clean_stop_leaves_nothing() -> None:
    lab = Lab("reference")
    lab.start()
    state = json.loads(lab.state.path.read_text())
    wire_pids = [p.pid for p in lab.procs.procs]
    lab.stop()
    pids = [n["pid"] for n in state["nodes"].values()] + wire_pids
    assert pids
    wait_until("every node shell and qtwire gone", lambda: not [p for p in pids if alive(p)])
    assert not lab.state.path.exists()
    assert our_root_leftovers() == []


@pytest.mark.parametrize("command", ["sleep 60", "trap '' INT; sleep 60"])
def test_a_stop_after_a_command_cut_short_leaves_nothing(command: str) -> None:
    """An interrupt inside `node.cmd` (Ctrl-C, or the SIGTERM the lab turns into one) leaves
    the node's shell running the command (Mininet's `waiting`); every later `cmd` on it failed
    an assertion, so the teardown stopped at the first link it deleted. `sendCmd` leaves a
    shell as such an interrupt does; the second command ignores the interrupt as well."""
    lab = Lab("pair")
    lab.start()
    state = json.loads(lab.state.path.read_text())
    try:
        h1 = lab.node("h1")  # (Lab.node would settle the shell: it is not asked again)
        h1.sendCmd(command)
        wait_until("the command runs", lambda: "sleep 60" in subprocess.run(
            ["ps", "-o", "args=", "--ppid", str(h1.shell.pid)],
            capture_output=True, text=True).stdout)  # fmt: skip
    finally:
        lab.stop()
    pids = [n["pid"] for n in state["nodes"].values()]
    wait_until("every node shell gone", lambda: not [p for p in pids if alive(p)])
    assert not lab.state.path.exists()
    assert our_root_leftovers() == []


def test_a_node_left_mid_command_answers_again() -> None:
    """What an interrupted point's `finally` runs on the node (e.g. the failover experiment
    giving the carrier back) works: `Lab.node` settles the shell first (it failed an
    assertion, and the interrupt became that error)."""
    with Lab("pair") as lab:
        h1 = lab.node("h1")
        h1.sendCmd("trap '' INT; sleep 60")
        assert lab.node("h1").cmd("echo answered").strip().endswith("answered")
        assert "10.0.0.1" in lab.run("h1", "ip -4 addr")


def test_clean_after_a_killed_run_restores_everything() -> None:
    allowed_before = read_sysctl(ALLOWED_CC_SYSCTL)
    script = (
        "import time\n"
        "from testbed.lab import Lab\n"
        "lab = Lab('reference', congestion_control='cubic').start()\n"
        "print(lab.state.path, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        state_path = Path(proc.stdout.readline().strip())
        assert state_path.is_relative_to(RUN_ROOT)
        state = json.loads(state_path.read_text())
        pids = [n["pid"] for n in state["nodes"].values()] + [p["pid"] for p in state["procs"]]
        assert "cubic" in read_sysctl(ALLOWED_CC_SYSCTL).split()
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no finally, no atexit
        proc.wait(10)
        assert any(alive(p) for p in pids)
        done = clean()
        print("\n".join(done))
        # Node shells may exit by themselves (their stdin closed); the programs in them do not.
        assert any(line.startswith("killed") and "qtwire" in line for line in done)
        wait_until("every killed process gone", lambda: not [p for p in pids if alive(p)])
        assert read_sysctl(ALLOWED_CC_SYSCTL) == allowed_before
        assert not state_path.exists()
        assert our_root_leftovers() == []
    finally:
        if proc.poll() is None:
            proc.kill()
        clean()


def test_clean_leaves_a_live_run_and_live_scratch_namespaces_alone() -> None:
    """Issue 16: `qtlab clean` during another user's lab removes only what dead owners left."""
    script = (
        "import time\n"
        "from testbed.lab import Lab\n"
        "lab = Lab('reference').start()\n"
        "print(lab.state.path, flush=True)\n"
        "time.sleep(60)\n"
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    mine, orphan = f"qtb-test-{os.getpid()}", f"qtb-test-{dead.pid}"
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        for ns in (mine, orphan):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        assert proc.stdout is not None
        state_path = Path(proc.stdout.readline().strip())
        state = json.loads(state_path.read_text())
        pids = [n["pid"] for n in state["nodes"].values()] + [p["pid"] for p in state["procs"]]
        done = clean()
        print("\n".join(done))
        assert done == [f"deleted namespace {orphan}"]
        assert state_path.exists() and all(alive(p) for p in pids)
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        assert mine in namespaces.stdout.split()
    finally:
        proc.kill()
        proc.wait(10)
        clean()
        for ns in (mine, orphan):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
