"""`qtlab clean`: undo what crashed runs left behind, and only that.

Unlike `mn -c`, which removes every Mininet-like thing on the host, this reads the state files
of runs whose owner process is dead (testbed.hosts.RunState) and kills exactly the node shells
and programs listed there (after checking each pid still runs what was recorded, since pids
get reused), restores the host-wide sysctls they changed, and removes the scratch namespaces
(qtb-<purpose>-<pid>: the netem probe, `qtlab doctor`) whose maker is dead. Nothing that belongs
to a live run is touched, so cleaning while another lab runs is safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from testbed.hosts import RUN_ROOT, pid_cmdline, pid_start_time, write_sysctl

PREFIX = "qtb"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_inode(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _pids_in_netns(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _netns_inode(int(entry.name)) == ns:
            pids.append(int(entry.name))
    return pids


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def clean_run(state_path: Path) -> list[str]:
    """Undo one dead run; returns what was done, one line per action."""
    done: list[str] = []
    data = json.loads(state_path.read_text())
    for proc in data.get("procs", []):
        pid, argv0 = int(proc["pid"]), str(proc["argv0"])
        # A script with a shebang (the venv's qtun) runs as "<interpreter> <script> ...":
        # the program is the first word or the second (a review found every qtun of a crashed
        # run left running: only the interpreter's name was compared).
        words = pid_cmdline(pid).split()[:2]
        same = os.path.basename(argv0) in (os.path.basename(word) for word in words)
        if same and pid_start_time(pid) == proc["start"]:
            _kill(pid)
            done.append(f"killed {argv0} (pid {pid})")
    host_ns = _netns_inode(1)
    for name, node in data.get("nodes", {}).items():
        pid = int(node["pid"])
        if not pid_cmdline(pid).endswith(f"mininet:{name}") or pid_start_time(pid) != node["start"]:
            continue  # gone, or the pid now belongs to someone else
        ns = _netns_inode(pid)
        # Programs started in the node keep its namespace (and veths) alive: kill them too.
        if ns is not None and ns != host_ns:
            for other in _pids_in_netns(ns):
                if other != pid:
                    _kill(other)
                    done.append(f"killed pid {other} in node {name}")
        _kill(pid)
        done.append(f"killed node {name} (pid {pid})")
    for key, old in data.get("sysctl", {}).items():
        with contextlib.suppress(OSError):
            write_sysctl(key, old)
            done.append(f"restored {key} = {old}")
    for path in state_path.parent.iterdir():
        if path.is_file():
            path.unlink()
    done.append(f"removed the record of {state_path.parent.name}")
    with contextlib.suppress(OSError):
        state_path.parent.rmdir()
    return done


def clean() -> list[str]:
    """Clean every dead run, then the scratch namespaces of dead processes."""
    done: list[str] = []
    for state_path in sorted(RUN_ROOT.glob("run-*/state.json")):
        try:
            owner = int(json.loads(state_path.read_text())["owner_pid"])
        except (OSError, ValueError, KeyError):
            owner = 0
        if owner and _alive(owner) and owner != os.getpid():
            continue  # a run in progress, not a leftover
        done += clean_run(state_path)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in netns.splitlines():
        name = line.split()[0] if line.split() else ""
        if _scratch_namespace_of_a_dead_process(name):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            done.append(f"deleted namespace {name}")
    return done


def _scratch_namespace_of_a_dead_process(name: str) -> bool:
    """Our scratch namespaces are named qtb-<purpose>-<pid of their maker> (the netem probe,
    `qtlab doctor`); one whose maker still runs is in use, and anything else is not ours."""
    prefix, _, pid = name.rpartition("-")
    if not name.startswith(f"{PREFIX}-") or not prefix or not pid.isdigit():
        return False
    return not _alive(int(pid))
