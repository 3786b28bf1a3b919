"""Run `qtun concentrator` and `qtun client` on the hosts of a running Lab (tests, experiments).

    with Lab("reference") as lab, QtunDeployment(lab, TunnelSpec(mode="session")) as tun:
        lab.node("c1").cmd("ping -c1 10.200.1.2")     # through the tunnel
        tun.status("c1")["accesses"]                   # the client's status file, parsed

`start()` makes test certificates with scripts/make-certs in the workdir (a CA, the concentrator,
one client certificate per client whose CN is the client's name), writes one TOML configuration
per program from the TunnelSpec, starts the concentrator and then every client with the Lab's
ProcessManager (logs in the Lab's log directory, `<node>-qtun-<role>.log`) and returns once every
status file says "up". Overrides in the spec go on the command line as `--set key=value`.

Where things run (from the topology's Plan):
* "reference" / "nclient": the concentrator on `conc`, listening on its service address
  10.100.0.1 / fd00:100::1; each client has one [[access]] per access network of the Plan
  (wifi, 5g) bound to that access's interface and address.
* "pair": the concentrator on h2 listening on 10.0.0.2; h1 is the client with its one access
  "link" (reported as a WiFi access). h2's own TUN address (10.8.0.1) is the far end to measure.

Inner addressing (address assignment is outside the drafts' scope; static per client name):
  concentrator TUN   10.8.0.1/16       fd00:8::1/64
  client k (1-based position in plan.clients)
                     10.8.<k//250>.<k%250+2>/32   fd00:8::<k+1>/128   (c1: 10.8.0.3, fd00:8::2)
The clients route the servers' prefixes 10.200.0.0/16 and fd00:200::/32 and the concentrator's
TUN addresses into the tunnel; the servers' default route points at the concentrator, which
routes 10.8.0.0/16 into its TUN: no NAT anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed.hosts import HostProcess
from testbed.lab import Lab
from testbed.paths import MAKE_CERTS
from testbed.topologies import CONCENTRATOR_V4, CONCENTRATOR_V6, SERVERS_V4, SERVERS_V6
from tunnel.aio.status import REFRESH_SIGNAL
from tunnel.config import ACCESS_KINDS
from tunnel.user_error import RuntimeFailure

QTUN_PORT = 4433
SERVER_NAME = "concentrator"
CONCENTRATOR_TUN_V4 = "10.8.0.1"
CONCENTRATOR_TUN_V6 = "fd00:8::1"
INNER_PREFIX_V4 = "10.8.0.0/16"
# What a client sends into the tunnel: the servers, and the concentrator's own TUN addresses
# (the far end of the "pair" benchmark).
CLIENT_ROUTES = (SERVERS_V4, SERVERS_V6, f"{CONCENTRATOR_TUN_V4}/32", f"{CONCENTRATOR_TUN_V6}/128")
# Status files are rewritten this often. Waits do not depend on it: they ask the program for a
# fresh write (REFRESH_SIGNAL) at each poll. A rewrite costs a client ~0.8 ms of CPU, so every
# 0.25 s, as before, was a third of a slow client's CPU (tunnel/aio/status.py).
STATUS_INTERVAL_S = 1.0
LOG_TAIL_LINES = 25


class QtunError(RuntimeFailure):
    """A qtun program did not come up (or went away); the message carries its log tail."""


@dataclass
class TunnelSpec:
    mode: str = "session"  # "tunnel" | "session" | "masque" (RFC 9484 CONNECT-IP, issue 18)
    scheduler: str = "failover"  # one of tunnel/session/scheduler.py SCHEDULER_NAMES
    access_reports: bool = True
    stream: bool = False  # also negotiate stream mode and intercept TCP
    # False: limits.reorder_timeout = 0 on both sides (ReorderBuffer.from_setting: no
    # reordering, packets delivered as they arrive), to compare with and without it.
    reorder: bool = True
    client_overrides: tuple[str, ...] = ()  # extra --set key=value for the client(s)
    concentrator_overrides: tuple[str, ...] = ()
    log_level: str = "info"
    # `qtlab up --capture DIR`: each program's TLS key log (DIR/keylog/<node>.keylog) and qlog
    # (DIR/qlog/<node>/) go there, beside the pcaps, for `qtlab decode DIR` and qvis.
    capture: Path | None = None
    # > 1: the clients run as `qtun client-group`s of up to this many clients each, one
    # process per group (README "Client groups"): the load generator of the scale experiment.
    clients_per_process: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("tunnel", "session", "masque"):
            raise ValueError(
                f"TunnelSpec.mode must be 'tunnel', 'session' or 'masque', not {self.mode!r}."
            )
        if self.clients_per_process < 1:
            raise ValueError(
                f"TunnelSpec.clients_per_process must be >= 1, not {self.clients_per_process}."
            )
        if self.stream and self.clients_per_process > 1:
            raise ValueError(
                "TunnelSpec: stream mode cannot run in client groups; set clients_per_process=1."
            )


def client_inner_addresses(k: int) -> tuple[str, str]:
    """Client k's (1-based) TUN addresses, IPv4 and IPv6, without prefix length."""
    if not 1 <= k <= 250 * 250:
        raise ValueError(f"client index {k} is out of range 1..62500.")
    return f"10.8.{k // 250}.{k % 250 + 2}", f"fd00:8::{k + 1:x}"


def qtun_command(role: str, config: Path, overrides: Sequence[str], log_level: str) -> list[str]:
    """The argv that runs one qtun program (the venv's `qtun` script, else `python -m`)."""
    script = Path(sys.executable).parent / "qtun"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "tunnel.aio.cli"]
    argv = [*base, role, "-c", str(config), "--log-level", log_level]
    for item in overrides:
        argv += ["--set", item]
    return argv


def _access_kind(kind: str) -> str:
    """A topology access's kind, checked against the names qtun's config accepts."""
    if kind not in ACCESS_KINDS:
        raise QtunError(f"access kind {kind!r} is not one of {', '.join(ACCESS_KINDS)}.")
    return kind


def _toml_value(value: object) -> str:
    """A TOML literal for the few value types the configs use (json's strings are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _toml(top: dict[str, Any], tables: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Top-level keys, then `[name]` / `[[name]]` tables in order (names given with brackets)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for header, body in tables:
        lines += ["", header]
        lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


@dataclass
class _Site:
    """Where the programs go in this topology and what the concentrator listens on."""

    concentrator: str
    listen: tuple[str, ...]
    connect_to: str  # the address the clients dial


def _site(lab: Lab) -> _Site:
    plan = lab.plan
    if plan.concentrator:
        return _Site(plan.concentrator, (CONCENTRATOR_V4, CONCENTRATOR_V6), CONCENTRATOR_V4)
    if len(plan.servers) == 1 and len(plan.clients) == 1:  # "pair": h2 is the far end
        server = plan.servers[0]
        v4, v6 = plan.server_addrs[server]
        return _Site(server, (v4, v6), v4)
    raise QtunError("this topology has no concentrator host: use reference, nclient or pair.")


class QtunDeployment:
    """One concentrator and its clients on a running Lab; a context manager (see module doc)."""

    def __init__(
        self,
        lab: Lab,
        spec: TunnelSpec,
        clients: Sequence[str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.lab = lab
        self.spec = spec
        self.site = _site(lab)
        self.clients = list(lab.plan.clients if clients is None else clients)
        for name in self.clients:
            if name not in lab.plan.clients:
                raise QtunError(
                    f"{name!r} is not a client of this topology; clients: "
                    f"{', '.join(lab.plan.clients)}."
                )
        self.concentrator = self.site.concentrator
        self.workdir = (workdir or lab.log_dir / "qtun").resolve()
        self.certs = self.workdir / "certs"
        self.procs: dict[str, HostProcess] = {}
        self.exit_codes: dict[str, int | None] = {}
        self._log_offsets: dict[str, int] = {}

    # -- files -----------------------------------------------------------------------------
    def config_path(self, node: str) -> Path:
        return self.workdir / f"{node}.toml"

    def status_path(self, node: str) -> Path:
        return self.workdir / f"{node}.status.json"

    def group_path(self, first: str) -> Path:
        """The group file of the client group whose first member is `first`."""
        return self.workdir / f"group-{first}.toml"

    def client_index(self, client: str) -> int:
        return self.lab.plan.clients.index(client) + 1

    def client_address(self, client: str = "c1", family: int = 4) -> str:
        """The client's inner (TUN) address of that IP family."""
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {family!r}.")
        v4, v6 = client_inner_addresses(self.client_index(client))
        return v4 if family == 4 else v6

    def concentrator_address(self, family: int = 4) -> str:
        """The concentrator's inner (TUN) address: the far end on the "pair" topology."""
        return CONCENTRATOR_TUN_V4 if family == 4 else CONCENTRATOR_TUN_V6

    def make_certs(self) -> None:
        argv = [
            sys.executable,
            str(MAKE_CERTS),
            "--out",
            str(self.certs),
            "--force",
            "--concentrator-name",
            SERVER_NAME,
            "--clients",
            *self.clients,
        ]
        for address in self.site.listen:
            argv += ["--concentrator-address", address]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise QtunError(f"make-certs failed: {(done.stderr or done.stdout).strip()}")

    def concentrator_toml(self) -> str:
        limits: dict[str, Any] = {}
        if not self.spec.reorder:
            limits["reorder_timeout"] = 0.0
        tables: list[tuple[str, dict[str, Any]]] = [
            ("[listen]", {"addresses": list(self.site.listen), "port": QTUN_PORT}),
            (
                "[tun]",
                {
                    "name": "qtunc0",
                    "mtu": "auto",
                    "addresses": [f"{CONCENTRATOR_TUN_V4}/16", f"{CONCENTRATOR_TUN_V6}/64"],
                    "routes": [],
                },
            ),
            ("[tls]", self._tls("concentrator")),
        ]
        for client in self.clients:
            v4, v6 = client_inner_addresses(self.client_index(client))
            tables.append(("[[client]]", {"name": client, "addresses": [f"{v4}/32", f"{v6}/128"]}))
        if limits:
            tables.append(("[limits]", limits))
        if self.spec.stream:
            tables.append(("[stream]", {"enabled": True}))
        tables.append(("[observability]", self._observability(self.concentrator)))
        # MASQUE (ALPN h3) is served only to a deployment of it
        modes = ["tunnel", "session"] + (["masque"] if self.spec.mode == "masque" else [])
        top = {"modes": modes, "scheduler": self.spec.scheduler}
        return _toml(top, tables)

    def client_toml(self, client: str) -> str:
        v4, v6 = client_inner_addresses(self.client_index(client))
        top: dict[str, Any] = {"name": client, "mode": self.spec.mode}
        top["scheduler"] = self.spec.scheduler
        if not self.spec.access_reports:
            top["access_reports"] = False
        tables: list[tuple[str, dict[str, Any]]] = [
            (
                "[concentrator]",
                {"address": self.site.connect_to, "port": QTUN_PORT, "server_name": SERVER_NAME},
            )
        ]
        # Tunnel mode gets every access too: the first carries the connection, the others are
        # its migration targets (RFC 9000 §9).
        for access in self.lab.plan.accesses:
            if access.client == client:
                tables.append(
                    (
                        "[[access]]",
                        {
                            "name": access.name,
                            "access_id": _access_kind(access.kind),
                            "interface": access.client_intf,
                            "local_address": access.client_v4,
                        },
                    )
                )
        tables += [
            (
                "[tun]",
                {
                    "name": "qtun0",
                    "mtu": "auto",
                    "addresses": [f"{v4}/32", f"{v6}/128"],
                    "routes": list(CLIENT_ROUTES),
                },
            ),
            ("[tls]", self._tls(client)),
        ]
        if not self.spec.reorder:
            tables.append(("[limits]", {"reorder_timeout": 0.0}))
        if self.spec.stream:
            # TCP to everything the tunnel routes goes into QUIC streams (-tcp draft).
            tables.append(("[stream]", {"enabled": True, "intercept": list(CLIENT_ROUTES)}))
        tables.append(("[observability]", self._observability(client)))
        return _toml(top, tables)

    def _tls(self, stem: str) -> dict[str, Any]:
        return {
            "ca": self.certs / "ca.pem",
            "cert": self.certs / f"{stem}.pem",
            "key": self.certs / f"{stem}.key",
        }

    def _observability(self, node: str) -> dict[str, Any]:
        table: dict[str, Any] = {
            "status_file": self.status_path(node),
            "status_interval": STATUS_INTERVAL_S,
        }
        capture = self._capture_files(node)
        if capture is not None:
            table["keylog_file"], table["qlog_dir"] = capture
        return table

    def _capture_files(self, node: str) -> tuple[Path, Path] | None:
        """With TunnelSpec.capture: the node's key log file and qlog directory under it."""
        if self.spec.capture is None:
            return None
        capture = self.spec.capture.resolve()
        return capture / "keylog" / f"{node}.keylog", capture / "qlog" / node

    def write_configs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in [self.concentrator, *self.clients]:
            capture = self._capture_files(node)
            if capture is not None:
                keylog, qlog_dir = capture
                keylog.parent.mkdir(parents=True, exist_ok=True)
                qlog_dir.mkdir(parents=True, exist_ok=True)
        self.config_path(self.concentrator).write_text(self.concentrator_toml())
        for client in self.clients:
            self.config_path(client).write_text(self.client_toml(client))

    # -- processes -------------------------------------------------------------------------
    def launch(
        self,
        node: str,
        role: str,
        overrides: Sequence[str] = (),
        tag: str = "",
        config: Path | None = None,
    ) -> HostProcess:
        """Start one qtun program on `node` with the node's config, or `config` (no waiting).

        `tag` names an extra program on a node that already runs one (its own log, and its own
        status file and TUN name must come in `overrides`)."""
        name = f"qtun-{role}{'-' + tag if tag else ''}"
        config = config or self.config_path(node)
        argv = qtun_command(role, config, overrides, self.spec.log_level)
        log = self.lab.log_dir / f"{node}-{name}.log"
        self._log_offsets[f"{node}/{name}"] = log.stat().st_size if log.exists() else 0
        return self.lab.procs.start(self.lab.node(node), name, argv)

    def start(self, timeout: float = 20.0) -> QtunDeployment:
        """Certificates, configs, the concentrator, then every client; returns when all are up
        (in session mode: joined on every available access).

        On failure every program started here is stopped and QtunError carries the log tails."""
        try:
            self.make_certs()
            self.write_configs()
            self._start_concentrator(timeout)
            for client in self.clients:
                with contextlib.suppress(FileNotFoundError):
                    self.status_path(client).unlink()
            self._start_clients()
            deadline = time.monotonic() + timeout
            for client in self.clients:
                try:
                    self.wait_ready(client, max(0.1, deadline - time.monotonic()))
                except QtunError as exc:
                    # The other side's view explains most client failures (auth, limits, mode).
                    raise QtunError(
                        f"{exc}\nconcentrator log tail:\n{self.log_tail(self.concentrator)}"
                    ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _start_clients(self) -> None:
        """One `qtun client` per client, or one `qtun client-group` per clients_per_process
        clients: the group runs on its first member's node and enters the others' network
        namespaces (/proc/<pid of the node's shell>/ns/net)."""
        size = self.spec.clients_per_process
        overrides = self.spec.client_overrides
        if size == 1:
            for client in self.clients:
                self.procs[client] = self.launch(client, "client", overrides)
            return
        for i in range(0, len(self.clients), size):
            members = self.clients[i : i + size]
            first = members[0]
            lines = []
            for client in members:
                lines.append(f"[[client]]\nconfig = {_toml_value(str(self.config_path(client)))}")
                if client != first:
                    netns = f"/proc/{self.lab.node(client).pid}/ns/net"
                    lines.append(f"netns = {_toml_value(netns)}")
            group = self.group_path(first)
            group.write_text("\n".join(lines) + "\n")
            proc = self.launch(first, "client-group", overrides, config=group)
            offset = self._log_offsets[f"{first}/{proc.name}"]
            for client in members:  # every member's log tail is the group's log
                self.procs[client] = proc
                self._log_offsets[f"{client}/{proc.name}"] = offset

    def _start_concentrator(self, timeout: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.status_path(self.concentrator).unlink()
        self.procs[self.concentrator] = self.launch(
            self.concentrator, "concentrator", self.spec.concentrator_overrides
        )
        self.wait_state(self.concentrator, ("up",), timeout)

    def restart_concentrator(self, timeout: float = 30.0, wait_clients: bool = True) -> None:
        """Stop the concentrator (SIGTERM) and start it again. The clients reconnect on their
        own; with wait_clients this returns once the new concentrator has them all back (a
        client's own status may still say "up" from before it noticed)."""
        deadline = time.monotonic() + timeout
        proc = self.procs.pop(self.concentrator, None)
        if proc is not None:
            self.exit_codes[self.concentrator] = self.lab.procs.stop(proc)
        self._start_concentrator(timeout)
        if wait_clients:
            self.wait_clients_back(max(0.1, deadline - time.monotonic()))

    def wait_clients_back(self, timeout: float) -> dict[str, Any]:
        """Wait until every client is ready (wait_ready) and the concentrator's status lists each
        of them with a connection: what a concentrator restart must lead back to."""
        deadline = time.monotonic() + timeout
        for client in self.clients:
            self.wait_ready(client, max(0.1, deadline - time.monotonic()))
        wanted = set(self.clients)

        def all_back(s: dict[str, Any]) -> bool:
            present = {c.get("name"): c for c in s.get("clients", [])}
            return wanted <= set(present) and all(present[n].get("connections") for n in wanted)

        return self.wait_for(
            self.concentrator,
            all_back,
            max(0.1, deadline - time.monotonic()),
            "every client connected",
        )

    def stop(self) -> None:
        """SIGTERM the clients, then the concentrator; exit codes in self.exit_codes."""
        order = [n for n in self.procs if n != self.concentrator]
        order += [n for n in self.procs if n == self.concentrator]
        codes: dict[int, int | None] = {}  # a client group's process is stopped once
        for node in order:
            proc = self.procs.pop(node)
            if id(proc) not in codes:
                codes[id(proc)] = self.lab.procs.stop(proc)
            self.exit_codes[node] = codes[id(proc)]

    def __enter__(self) -> QtunDeployment:
        if not self.procs:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------------
    def log_path(self, node: str) -> Path:
        """The log of the qtun program on `node` (kept after stop, appended to on restart)."""
        role = "concentrator" if node == self.concentrator else "client"
        return self.lab.log_dir / f"{node}-qtun-{role}.log"

    def pid(self, node: str) -> int:
        return self.procs[node].pid

    def status(self, node: str) -> dict[str, Any]:
        """The parsed status file of the program on `node` (QtunError if there is none yet)."""
        path = self.status_path(node)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise QtunError(f"{node} has written no status file yet ({path}).") from None
        except ValueError as exc:
            raise QtunError(f"the status file {path} is not JSON ({exc}).") from None
        if not isinstance(data, dict):
            raise QtunError(f"the status file {path} holds no JSON object.")
        return data

    def log_tail(self, node: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this deployment's program on `node` logged (since its last start)."""
        proc = self.procs.get(node)
        role = "concentrator" if node == self.concentrator else "client"
        path = proc.log_path if proc else self.log_path(node)
        name = proc.name if proc else f"qtun-{role}"
        try:
            with open(path, "rb") as f:
                f.seek(self._log_offsets.get(f"{node}/{name}", 0))
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(
        self,
        node: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str = "the awaited state",
    ) -> dict[str, Any]:
        """Poll the status of `node` until predicate(status) holds; QtunError (with the log tail)
        if the program exits or the time runs out."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            proc = self.procs.get(node)
            if proc is None or not proc.running():
                code = proc.popen.returncode if proc else None
                raise QtunError(
                    f"qtun on {node} is not running (exit code {code}) while waiting for {what}; "
                    f"log tail:\n{self.log_tail(node)}"
                )
            with contextlib.suppress(QtunError):
                last = self.status(node)
                if predicate(last):
                    return last
            if last is not None:
                self._ask_for_status(node, last)
            if time.monotonic() >= deadline:
                state = last.get("state") if last else "no status file"
                raise QtunError(
                    f"qtun on {node} did not reach {what} within {timeout:g} s (state: {state}); "
                    f"log tail:\n{self.log_tail(node)}"
                )
            time.sleep(0.05)

    def fresh_status(self, node: str, timeout: float = 5.0) -> dict[str, Any]:
        """The status of `node` written after this call (its counters are current, not up to
        STATUS_INTERVAL_S old); QtunError if the program exits or writes none in time."""
        asked = time.time()
        return self.wait_for(
            node, lambda s: float(s.get("time", 0)) >= asked, timeout, "a fresh status file"
        )

    def _ask_for_status(self, node: str, last: dict[str, Any]) -> None:
        # Only the process that wrote `last` is signalled, so the signal never reaches a
        # process without the handler (SIGUSR1 would end it) or one that reused a pid.
        proc = self.procs.get(node)
        if proc is None or last.get("pid") != proc.pid or last.get("state") == "stopped":
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, REFRESH_SIGNAL)

    def wait_ready(self, client: str, timeout: float) -> dict[str, Any]:
        """Wait until a client is "up" and, in session mode, has joined the session on every
        access that is available (the backups too: a failover needs them joined)."""
        pid = self.pid(client)

        def ready(s: dict[str, Any]) -> bool:
            if s.get("state") != "up" or s.get("pid") not in (pid, None):
                return False
            if s.get("mode") != "session":
                return True
            return all(a.get("connected") for a in s.get("accesses", []) if a.get("available"))

        return self.wait_for(client, ready, timeout, 'state "up" with every available access')

    def wait_state(self, node: str, states: Sequence[str], timeout: float) -> dict[str, Any]:
        """Wait until the status of `node` says one of `states` (e.g. ("up",))."""
        pid = self.pid(node)
        return self.wait_for(
            node,
            # The pid check skips a stale file left by an earlier program on the node.
            lambda s: s.get("state") in states and s.get("pid") in (pid, None),
            timeout,
            f"state {'/'.join(states)}",
        )


@dataclass(frozen=True)
class Identity:
    """An identity the concentrator admits that runs no qtun client (MixedDeployment.extra):
    its certificate, key, the CA, and its inner addresses."""

    ca: Path
    cert: Path
    key: Path
    inner_v4: str
    inner_v6: str


class MixedDeployment(QtunDeployment):
    """A QtunDeployment whose clients each run their own mode (`modes`: client -> "tunnel" or
    "session", "+stream" for stream mode too), and whose concentrator also admits `extra`
    identities (name -> inner address index, as client k gets client_inner_addresses(k)) that
    run no qtun client: the soak's hostile client, the fuzzer. The concentrator gets [stream]
    when any client uses stream mode."""

    def __init__(
        self,
        lab: Lab,
        spec: TunnelSpec,
        modes: dict[str, str],
        extra: dict[str, int],
        clients: Sequence[str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        stream = any(m.endswith("+stream") for m in modes.values()) or spec.stream
        super().__init__(lab, dataclasses.replace(spec, stream=stream), clients, workdir)
        self.modes = modes
        self.extra = extra

    def make_certs(self) -> None:
        # make-certs makes one certificate per name in self.clients: add the extra ones.
        clients = self.clients
        self.clients = [*clients, *self.extra]
        try:
            super().make_certs()
        finally:
            self.clients = clients

    def concentrator_toml(self) -> str:
        text = super().concentrator_toml()
        for name, index in self.extra.items():
            v4, v6 = client_inner_addresses(index)
            text += f'\n[[client]]\nname = "{name}"\naddresses = ["{v4}/32", "{v6}/128"]\n'
        return text

    def client_toml(self, client: str) -> str:
        mode = self.modes.get(client, self.spec.mode)
        base, _, stream = mode.partition("+")
        spec = self.spec
        self.spec = dataclasses.replace(spec, mode=base, stream=bool(stream))
        try:
            return super().client_toml(client)
        finally:
            self.spec = spec

    def identity(self, name: str) -> Identity:
        """Certificate, key, CA and inner addresses of an extra identity."""
        v4, v6 = client_inner_addresses(self.extra[name])
        certs = self.certs
        return Identity(certs / "ca.pem", certs / f"{name}.pem", certs / f"{name}.key", v4, v6)

    def kill_concentrator(self) -> int:
        """SIGKILL the concentrator (no CONNECTION_CLOSE, no clean-up) and start it again at
        once; returns the new pid (wait for it with wait_clients_back)."""
        proc = self.procs.pop(self.concentrator)
        proc.popen.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(10)
        self.exit_codes[self.concentrator] = self.lab.procs.stop(proc)  # bookkeeping only
        with contextlib.suppress(FileNotFoundError):
            self.status_path(self.concentrator).unlink()
        self.procs[self.concentrator] = self.launch(
            self.concentrator, "concentrator", self.spec.concentrator_overrides
        )
        return self.pid(self.concentrator)
