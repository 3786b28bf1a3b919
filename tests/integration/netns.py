"""The root tests' harness: network namespaces, veth pairs, child processes and the qtun programs,
each removed or stopped on exit, failures included. Not a test module.

Names: a module picks a prefix of its own (3-4 letters, e.g. "qst") and makes every namespace,
interface and nft table name with `unique(prefix, ...)`, which appends this pytest process's id,
so that two runs, or two people's tests, never collide (tests/leakcheck.py, run by `make test`, then
finds anything left behind).

Waiting: never a bare sleep. `wait_until` polls a predicate (bounded, with what it waited for in
the failure); `Proc.expect` waits for a line the child prints when ready; `wait_listening`
polls a namespace's sockets; `Qtun.wait_status` polls a program's status file (rewritten every
status_interval, atomically).

    with namespaces(unique("qxx-a"), unique("qxx-b")) as (a, b):
        veth(End(a, unique("qxxa"), ["10.9.0.1/24"]), End(b, unique("qxxb"), ["10.9.0.2/24"]))
        with process(python_in(b, "tests.integration.some_peer"), ready="READY") as peer:
            ...
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
QTUN = (sys.executable, "-m", "tunnel.aio.cli")
IFNAMSIZ = 15  # longest interface name Linux takes


# -- names and commands -----------------------------------------------------------------------
def unique(prefix: str, limit: int = IFNAMSIZ) -> str:
    """`prefix` + this process's id, at most `limit` characters (an interface name's 15 by
    default): with prefixes of up to 7 characters the id is never cut."""
    name = f"{prefix}{os.getpid()}"
    assert len(name) <= limit, f"{prefix!r}: use a shorter prefix (names are cut at {limit})"
    return name


def sh(*args: str, timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), output captured; CalledProcessError if it fails and `check`."""
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip -n NS ARGS`: e.g. ip(ns, "route", "add", "10.0.0.0/8", "via", "10.1.0.1")."""
    return sh("ip", "-n", ns, *args, check=check)


def in_ns(ns: str, *argv: str) -> list[str]:
    """The command line running `argv` inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def python_in(ns: str, module: str, *args: str) -> list[str]:
    """The command line running `python -u -m module args` (from the repo) inside `ns`."""
    return in_ns(ns, sys.executable, "-u", "-m", module, *args)


def sysctl(ns: str, *settings: str) -> None:
    """sysctl -w KEY=VALUE ... inside `ns`."""
    sh(*in_ns(ns, "sysctl", "-qw", *settings))


def forwarding(ns: str) -> None:
    """`ns` routes: IPv4 and IPv6 forwarding on."""
    sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")


# -- namespaces and links ---------------------------------------------------------------------
@contextmanager
def namespaces(*names: str) -> Iterator[tuple[str, ...]]:
    """Create the namespaces (loopback up); delete them on exit, with every interface in them
    (veth ends, TUN devices) and the nft tables made inside."""
    made: list[str] = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            made.append(name)
            ip(name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in reversed(made):
            sh("ip", "netns", "del", name, check=False)


class End(NamedTuple):
    """One end of a veth pair: the namespace, the interface name, its addresses with prefix."""

    ns: str
    ifname: str
    addresses: Sequence[str] = ()


def veth(a: End, b: End) -> None:
    """A veth pair between two namespaces, addressed and up (IPv6 without DAD, so an address is
    usable at once). Removed with either namespace."""
    sh("ip", "link", "add", a.ifname, "netns", a.ns, "type", "veth", "peer", "name", b.ifname,
       "netns", b.ns)  # fmt: skip
    for end in (a, b):
        for address in end.addresses:
            extra = ["nodad"] if ":" in address else []
            ip(end.ns, "addr", "add", address, "dev", end.ifname, *extra)
        ip(end.ns, "link", "set", end.ifname, "up")


# -- waiting ----------------------------------------------------------------------------------
def wait_until(
    what: str,
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.05,
    alive: Sequence[Proc | Qtun] = (),
) -> None:
    """Poll `predicate` until it is true; AssertionError naming `what` after `timeout` s, or at
    once (with its log) if a process of `alive` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        for proc in alive:
            if not proc.running():
                raise AssertionError(
                    f"{proc.name} exited ({proc.returncode()}) while waiting for {what}:\n"
                    + proc.log_tail()
                )
        if time.monotonic() > deadline:
            logs = "".join(f"\n{p.name}:\n{p.log_tail()}" for p in alive)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{logs}")
        time.sleep(interval)


def listening(ns: str, port: int, proto: Literal["tcp", "udp"] = "tcp") -> bool:
    """A socket in `ns` listens on TCP `port` (or is bound to UDP `port`)."""
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    out = sh(*in_ns(ns, "ss", flag, f"sport = :{port}"), check=False)
    return bool(out.stdout.strip())


def wait_listening(
    ns: str,
    port: int,
    proto: Literal["tcp", "udp"] = "tcp",
    timeout: float = 10.0,
    alive: Sequence[Proc | Qtun] = (),
) -> None:
    """Readiness of a server that prints nothing when ready (iperf3 -s, http.server...)."""
    wait_until(
        f"a {proto} socket on port {port} in {ns}",
        lambda: listening(ns, port, proto),
        timeout,
        alive=alive,
    )


# -- child processes --------------------------------------------------------------------------
StopBy = Literal["eof", "term"]


class Proc:
    """A child process. Its stdout lines are read by a thread (so waiting for one is bounded in
    time even if the child prints nothing); stderr goes to a temporary file (a pipe nobody reads
    would block a chatty child)."""

    def __init__(
        self,
        popen: subprocess.Popen[str],
        log: IO[str],
        name: str,
        stop_by: StopBy,
        prompt: str | None = None,
    ) -> None:
        self.popen = popen
        self.log = log
        self.name = name
        self.stop_by = stop_by
        self.prompt = prompt
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        """Queue stdout line by line; with a `prompt`, a partial line ending in it is queued
        too (an interactive program waits for input after its prompt, without a newline)."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        pending = ""
        while chunk := os.read(fd, 65536):
            pending += chunk.decode(errors="replace")
            *complete, pending = pending.split("\n")
            for line in complete:
                self.lines.put(line + "\n")
            if self.prompt and pending.endswith(self.prompt):
                self.lines.put(pending)
                pending = ""
        if pending:
            self.lines.put(pending)
        self.lines.put(None)

    def running(self) -> bool:
        return self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll()

    def stderr(self) -> str:
        """Everything the child wrote on stderr so far."""
        self.log.seek(0)
        return self.log.read()

    def log_tail(self, chars: int = 3000) -> str:
        return self.stderr()[-chars:]

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        """The rest of the next stdout line starting with `prefix` (earlier lines are skipped);
        AssertionError with the child's stderr if none comes within `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        raise AssertionError(
            f"no {prefix!r} line from {self.name} (exit {self.returncode()}); stderr:\n"
            + self.log_tail()
        )

    def read_until(self, text: str, timeout: float = 30.0) -> str:
        """Every stdout line up to and including the first that contains `text`."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            lines.append(line)
            if text in line:
                return "".join(lines)
        raise AssertionError(
            f"no line with {text!r} from {self.name} (exit {self.returncode()}); stdout:\n"
            + "".join(lines)[-3000:]
            + "\nstderr:\n"
            + self.log_tail()
        )

    def expect_json(self, prefix: str, timeout: float = 30.0) -> Any:
        """The JSON value after `prefix` on the next such line (e.g. "RESULT {...}")."""
        return json.loads(self.expect(prefix, timeout))

    def send(self, line: str) -> None:
        """A line on the child's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def wait(self, timeout: float = 10.0) -> int:
        """Its exit code, once it exits by itself (TimeoutExpired after `timeout` s)."""
        return self.popen.wait(timeout)

    def stop(self, grace: float = 5.0) -> int:
        """Stop it (by its own pid) and return its exit code: an "eof" child (our peers stop on
        EOF) gets its stdin closed and `grace` s to finish, a "term" child (a program that
        ignores stdin: qtun, servers) SIGTERM at once; then SIGTERM, then SIGKILL."""
        popen = self.popen
        steps = ["eof", "term"] if self.stop_by == "eof" else ["term"]
        for step in steps:
            if popen.poll() is not None:
                break
            if step == "eof" and popen.stdin is not None:
                with suppress(OSError):
                    popen.stdin.close()
            elif step == "term":
                popen.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=grace)
        if popen.poll() is None:
            popen.kill()
        return popen.wait(timeout=10)


@contextmanager
def process(
    cmd: Sequence[str],
    ready: str | None = "READY",
    timeout: float = 20.0,
    stop_by: StopBy = "eof",
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = 5.0,
    merge_stderr: bool = False,
    prompt: str | None = None,
) -> Iterator[Proc]:
    """A child running `cmd` from the repo; when `ready` is given, entered once the child printed
    a line starting with it (within `timeout` s). Stopped on exit (see Proc.stop: `grace`).
    `merge_stderr`: its stderr is read as stdout lines (a program that reports on stderr);
    `prompt`: an interactive program's prompt, read as a line of its own (see Proc)."""
    with tempfile.TemporaryFile("w+") as log:
        popen = subprocess.Popen(
            list(cmd), cwd=REPO, env=dict(env or ENV), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else log, text=True,
        )  # fmt: skip
        proc = Proc(popen, log, name or " ".join(cmd[-4:]), stop_by, prompt)
        try:
            if ready is not None:
                proc.expect(ready, timeout)
            yield proc
        finally:
            proc.stop(grace)


def run_json(cmd: Sequence[str], prefix: str = "RESULT ", timeout: float = 60.0) -> Any:
    """Run a child to its end and return the JSON of its last `prefix` line."""
    done = subprocess.run(
        list(cmd), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith(prefix)]
    if not lines:
        raise AssertionError(
            f"no {prefix!r} line from {' '.join(cmd[-4:])} (exit {done.returncode}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(prefix) :])


# -- the qtun programs ------------------------------------------------------------------------
def toml_text(top: Mapping[str, object], *tables: tuple[str, Mapping[str, object]]) -> str:
    """A qtun configuration file: top-level keys, then each (header, keys) table in order, e.g.
    toml_text({"modes": ["tunnel"]}, ("[listen]", {"port": 4433}), ("[[client]]", {...}))."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, Path):
            return json.dumps(str(v))
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in top.items()]
    for header, keys in tables:
        lines.append(header)
        lines += [f"{k} = {value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Qtun:
    """A real `qtun client` or `qtun concentrator` in a namespace, with its status file and log
    (stdout and stderr, appended to across restarts). Its configuration must point
    [observability] status_file at `status_path`. Start it with `start()` (or `qtun()`)."""

    ns: str
    role: Literal["client", "concentrator", "client-group"]
    config: Path
    status_path: Path
    log_path: Path
    overrides: tuple[str, ...] = ()
    popen: subprocess.Popen[bytes] | None = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        self.name = self.name or f"qtun {self.role}"

    def start(self, *, fresh_status: bool = True) -> Qtun:
        """Start the program (again); the old status file is removed unless `fresh_status` is
        false, so that `wait_state` sees this run's."""
        assert not self.running(), f"{self.name} is already running"
        if fresh_status:
            self.status_path.unlink(missing_ok=True)
        args = [a for o in self.overrides for a in ("--set", o)]
        argv = in_ns(self.ns, *QTUN, self.role, "-c", str(self.config), *args)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv, cwd=REPO, env=ENV, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def status(self) -> dict[str, Any]:
        """The status file ({} before the first write)."""
        try:
            data = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def wait_status(
        self,
        what: str,
        predicate: Callable[[dict[str, Any]], object],
        timeout: float = 20.0,
        alive: Sequence[Proc | Qtun] = (),
    ) -> dict[str, Any]:
        """Poll the status file until `predicate(status)` holds (counters lag by up to one
        status_interval: never read one once); returns that status."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            nonlocal seen
            seen = self.status()
            return bool(seen) and bool(predicate(seen))

        wait_until(f"{self.name}: {what}", check, timeout, alive=(self, *alive))
        return seen

    def wait_state(self, state: str = "up", timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_status(f'state "{state}"', lambda s: s.get("state") == state, timeout)

    def signal(self, signum: int) -> None:
        assert self.popen is not None
        self.popen.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, and its exit code (SIGKILL after `timeout` s: returns None then)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
                return None
        return self.popen.returncode


@contextmanager
def qtun(
    ns: str,
    role: Literal["client", "concentrator"],
    config: Path,
    status_path: Path,
    *overrides: str,
    log_path: Path | None = None,
    state: str | None = "up",
    timeout: float = 20.0,
) -> Iterator[Qtun]:
    """A running qtun program (entered once its status says `state`; None: at once), stopped
    with SIGTERM on exit. The log defaults to <config>.log."""
    program = Qtun(ns, role, config, status_path, log_path or config.with_suffix(".log"), overrides)
    program.start()
    try:
        if state is not None:
            program.wait_state(state, timeout)
        yield program
    finally:
        program.stop()
