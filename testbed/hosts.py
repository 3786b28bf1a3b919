"""Long-running programs on Mininet hosts, their logs, pcaps, and the record that lets a crashed
run be cleaned up later (`qtlab clean`).

Every run owns a directory under RUN_ROOT holding `state.json`: the pids of its Mininet node
shells, of every program it started, and the host-wide sysctls it changed (with their old
values). A normal exit undoes all of it; after a crash (SIGKILL, power cut of the test
runner) `testbed.cleanup.clean()` reads the state files whose owner is dead and undoes it then.
Only what a state file lists, or what carries our `qtb` prefix, is ever touched: other
Mininet users on the same machine are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunnel.user_error import UsageError

RUN_ROOT = Path(os.environ.get("QTLAB_RUN_ROOT", "/tmp/qtlab"))
ALLOWED_CC_SYSCTL = "net.ipv4.tcp_allowed_congestion_control"


class Node(Protocol):
    """What the testbed uses of a Mininet host (mininet.node.Host, which has no type hints)."""

    name: str
    pid: int

    def cmd(self, *args: str) -> str: ...

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]: ...


SHELL_SETTLE_S = 1.0
"""How long settle_shell waits for an interrupted command, then for its killed processes."""


def settle_shell(node: Any, timeout_s: float = SHELL_SETTLE_S) -> None:
    """Bring a Mininet node's shell back to its prompt after an interrupt cut a `node.cmd`
    short (Ctrl-C, or the SIGTERM the lab turns into one): the command still runs there and
    Mininet's `waiting` stays set, so every later `cmd` on the node failed an assertion — the
    lab's teardown (`net.stop()` deletes each link with one) stopped at the first and left
    namespaces, veths and shells behind. Interrupt the command; kill what still runs under
    the shell if it ignores that; end the shell if even that does not bring its prompt back
    (its namespace and veths go with it)."""
    if not getattr(node, "waiting", False) or getattr(node, "shell", None) is None:
        return
    node.sendInt()
    if _read_to_prompt(node, timeout_s):
        return
    for pid in _descendants(node.shell.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not _read_to_prompt(node, timeout_s):
        node.terminate()


def _read_to_prompt(node: Any, timeout_s: float) -> bool:
    """Read a node's output until the sentinel of the command it runs (Mininet's `monitor`
    clears `waiting` there); whether it came within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while node.waiting and time.monotonic() < deadline:
        node.monitor(timeoutms=50)
    return not node.waiting


def _descendants(pid: int) -> list[int]:
    """The processes below `pid`, children first (from /proc; those gone are left out)."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10_000:  # bounded: /proc changes while it is read
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
            children = [int(c) for t in tasks for c in Path(t, "children").read_text().split()]
        except OSError:
            continue
        out += children
        todo += children
    return out


def read_sysctl(key: str) -> str:
    return Path("/proc/sys", *key.split(".")).read_text().strip()


def write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", *key.split(".")).write_text(value + "\n")


def pid_cmdline(pid: int) -> str:
    """The command line of a live process ("" if it is gone), arguments joined by spaces."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pid_start_time(pid: int) -> int:
    """When the process started (clock ticks since boot; 0 if gone): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


class RunState:
    """The on-disk record of one run: what to kill and restore if the run dies uncleanly."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.dir = run_dir or RUN_ROOT / f"run-{os.getpid()}-{int(time.time())}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "owner_pid": os.getpid(),
            # node name -> {"pid", "start"}: its shell (command line ends in "mininet:<name>")
            "nodes": {},
            "procs": [],  # [{"pid", "start", "argv0"}]: programs started in nodes
            "sysctl": {},  # host-wide key -> value before we changed it
        }
        self.save()

    @property
    def path(self) -> Path:
        return self.dir / "state.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def add_node(self, name: str, pid: int) -> None:
        self.data["nodes"][name] = {"pid": pid, "start": pid_start_time(pid)}
        self.save()

    def add_proc(self, pid: int, argv0: str) -> None:
        self.data["procs"].append({"pid": pid, "start": pid_start_time(pid), "argv0": argv0})
        self.save()

    def remove_proc(self, pid: int) -> None:
        self.data["procs"] = [p for p in self.data["procs"] if p["pid"] != pid]
        self.save()

    def change_sysctl(self, key: str, value: str) -> None:
        """Set a host-wide sysctl, remembering the first old value so it can be put back."""
        self.data["sysctl"].setdefault(key, read_sysctl(key))
        self.save()
        write_sysctl(key, value)

    def restore_sysctls(self) -> None:
        for key, old in self.data["sysctl"].items():
            with contextlib.suppress(OSError):
                write_sysctl(key, old)
        self.data["sysctl"] = {}
        self.save()

    def finish(self) -> None:
        """The run ended cleanly: nothing left to undo. Logs stay; scratch files go."""
        for path in self.dir.iterdir():
            if path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only if no logs were kept in it


@dataclass
class HostProcess:
    """A program running in a Mininet node, with its log file."""

    node_name: str
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int = 0
    """Where this run's output starts in `log_path`: a lab appends every run of a program name
    on a node to one file, and an earlier run's lines must not count as this one's."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        """What this run of the program has written to its log so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class ProcessManager:
    """Starts programs on nodes and guarantees they are stopped (see module doc)."""

    state: RunState
    log_dir: Path
    procs: list[HostProcess] = field(default_factory=list)

    def start(self, node: Node, name: str, argv: list[str]) -> HostProcess:
        """Run argv in the node's namespaces; output goes to <log_dir>/<node>-<name>.log."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{node.name}-{name}.log"
        with open(log_path, "ab") as log:
            offset = log.tell()
            popen = node.popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = HostProcess(node.name, name, popen, log_path, offset)
        self.procs.append(proc)
        self.state.add_proc(popen.pid, argv[0])
        return proc

    def start_iperf3_server(
        self, node: Node, port: int = 5201, idle_timeout_s: int = 30
    ) -> HostProcess:
        """iperf3 -s on `node`, returned once it listens (wait_listening)."""
        # --idle-timeout: a server whose client vanished exits by itself instead of lingering.
        argv = ["iperf3", "-s", "-p", str(port), "--idle-timeout", str(idle_timeout_s)]
        server = self.start(node, f"iperf3-{port}", argv)
        try:
            wait_listening(node, port, server)
        except BaseException:
            self.stop(server)
            raise
        return server

    def start_pcap(
        self, node: Node, intf: str, pcap: Path | None = None, snaplen: int = 256
    ) -> tuple[HostProcess, Path]:
        """tcpdump on one interface (snaplen 0: whole packets), returned once it captures.

        Written as it goes (-U) so a crash still leaves a pcap; --immediate-mode hands packets
        to tcpdump at once, not in blocks a stop would lose. Default file:
        <log_dir>/<node>-<intf>.pcap."""
        pcap = pcap or self.log_dir / f"{node.name}-{intf}.pcap"
        pcap.parent.mkdir(parents=True, exist_ok=True)
        argv = ["tcpdump", "-n", "-i", intf, "--immediate-mode", "-U", "-s", str(snaplen)]
        proc = self.start(node, f"tcpdump-{intf}", [*argv, "-w", str(pcap)])
        try:
            wait_in_log(proc, "listening on")
        except BaseException:
            self.stop(proc)
            raise
        return proc, pcap

    def stop(self, proc: HostProcess, timeout_s: float = 3.0) -> int | None:
        if proc.running():
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout_s)
        if proc in self.procs:
            self.procs.remove(proc)
        self.state.remove_proc(proc.pid)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def wait_listening(node: Node, port: int, proc: HostProcess, timeout_s: float = 10.0) -> None:
    """Return once a socket in `node` listens on TCP `port` (MPTCP included) or is bound to UDP
    `port`: a readiness poll where a fixed sleep would be a guess. TimeoutError (with the
    program's log tail) if `proc` exits first or the time runs out."""
    _wait_ready(
        proc,
        lambda: bool(node.cmd(f"ss -Hltun 'sport = :{port}'").strip()),
        f"is not listening on port {port}",
        timeout_s,
    )


def wait_in_log(proc: HostProcess, text: str, timeout_s: float = 10.0) -> None:
    """Return once `text` appears in this run's part of the program's log (its own word that
    it is ready);
    TimeoutError with the log tail if it exits first or the time runs out."""
    _wait_ready(
        proc,
        lambda: text in proc.log_text(),
        f"never said {text!r}",
        timeout_s,
    )


def _wait_ready(proc: HostProcess, ready: Callable[[], bool], fault: str, timeout_s: float) -> None:
    """Poll `ready` every 20 ms; TimeoutError "<program> on <node> <fault> (why); log tail: ..."
    if the program exits first or `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        exited = not proc.running()
        if exited or time.monotonic() > deadline:
            why = f"exited ({proc.popen.returncode})" if exited else f"after {timeout_s:g} s"
            tail = proc.log_text()[-300:].strip()
            raise TimeoutError(
                f"{proc.name} on {proc.node_name} {fault} ({why}); log tail: {tail or '(empty)'}"
            )
        time.sleep(0.02)


class CongestionControlError(UsageError):
    """A TCP congestion control this kernel does not have; str() is one sentence."""


def check_congestion_control(algorithm: str) -> None:
    """CongestionControlError unless the kernel has TCP congestion control `algorithm` (its
    module is loaded if it is one): asked before a lab is built for it."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,15}", algorithm):
        raise CongestionControlError(
            f"{algorithm!r} is not the name of a TCP congestion control (e.g. cubic, bbr, reno)."
        )
    available = read_sysctl("net.ipv4.tcp_available_congestion_control").split()
    if algorithm not in available:
        with contextlib.suppress(OSError):
            subprocess.run(["modprobe", f"tcp_{algorithm}"], check=False, capture_output=True)
        available = read_sysctl("net.ipv4.tcp_available_congestion_control").split()
    if algorithm not in available:
        raise CongestionControlError(
            f"TCP congestion control {algorithm!r} is not in this kernel: choose one of "
            f"{', '.join(available)} (or load its module, tcp_{algorithm})."
        )


def set_congestion_control(node: Node, algorithm: str, state: RunState) -> str:
    """Pin a node's TCP congestion control (namespaces inherit the host default, BBR here).

    A namespace may only choose algorithms the root namespace allows, so an algorithm missing
    from the host-wide allowed list is added there first; RunState puts the list back.
    Returns the algorithm the node now uses (read back, not assumed).
    """
    allowed = read_sysctl(ALLOWED_CC_SYSCTL).split()
    if algorithm not in allowed:
        check_congestion_control(algorithm)
        state.change_sysctl(ALLOWED_CC_SYSCTL, " ".join([*allowed, algorithm]))
    node.cmd(f"sysctl -q -w net.ipv4.tcp_congestion_control={algorithm}")
    return str(node.cmd("sysctl -n net.ipv4.tcp_congestion_control")).strip()
