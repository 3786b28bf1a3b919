"""`workers = N`: the concentrator as N processes sharing its UDP port (README "Workers").

One Python process carries one core's worth of packets at most. With `workers` above 1 the
concentrator binds, for each listen address, N sockets into one SO_REUSEPORT group whose BPF
program steers each datagram by the first byte of its destination connection ID
(tunnel/aio/reuseport.py), then forks N workers. Worker i
- serves the group's i-th socket of every address; every connection ID it issues steers back
  to it (tunnel/protocol/quic_ext.py `steer_connection_id`), so a connection stays in the
  process that holds its keys, and a session's connections in the one that holds the session
  (the client starts them with a DCID of that worker's, tunnel/aio/client.py);
- has its own TUN: worker 0 the configured `tun.name`, with `tun.addresses` and the routes of
  every client prefix; worker i `tun.name` + `w<i>`, no address. When a client arrives at a
  worker, its prefixes are routed to that worker's TUN (`route replace`); when it leaves, back
  to worker 0's, unless another worker took them meanwhile (WorkerRoutes);
- writes its own status file (`status.worker<i>.json` next to the configured one), which this
  process merges into the configured file (merge_status).

This process, the supervisor, keeps no event loop: it waits for signals (sigtimedwait), passes
SIGINT/SIGTERM (as SIGTERM), SIGHUP (reload the CRL) and SIGUSR1 (fresh status) to the workers,
and stops them all when one ends on its own, since the connections its socket held would
then go unanswered: a crashed worker stops the concentrator with its exit code, as a bug in a
single-process one does.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any, Final, NoReturn

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel.agents.supervisor import Action, SignalWorkers, SupervisorCore, overall_state
from tunnel.aio.reuseport import ReusePortError, attach_steering
from tunnel.aio.status import REFRESH_SIGNAL, write_json_atomic
from tunnel.aio.udp import EndpointError, UdpEndpoint
from tunnel.config import ConcentratorConfig, worker_tun_name
from tunnel.user_error import EXIT_RUNTIME, RuntimeFailure, run_command

log = logging.getLogger("qtun.concentrator")

SIGNALS: Final = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, REFRESH_SIGNAL)
REFRESH_WAIT: Final = 1.0  # seconds the supervisor waits for the workers' fresh status files
ROUTE_TIMEOUT: Final = 2.0  # seconds a client's arrival waits for its route to move at most
PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
NOT_SUMMED: Final = frozenset({"pid", "time", "mtu", "state", "role"})


class SharedClientSlots:
    """limits.max_clients for the whole concentrator (tunnel/policy/client_slots.py): one
    counter in shared memory, made before the fork, and a process-shared lock around each check
    and change, so that two workers admitting at once cannot both take the last slot."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._taken = multiprocessing.get_context("fork").Value(ctypes.c_int, 0)

    def take(self) -> bool:
        with self._taken.get_lock():
            if self._taken.value >= self.capacity:
                return False
            self._taken.value += 1
            return True

    def give_back(self) -> None:
        with self._taken.get_lock():
            if self._taken.value <= 0:
                raise RuntimeError("a client slot was given back that was never taken")
            self._taken.value -= 1

    @property
    def taken(self) -> int:
        return int(self._taken.value)


_CLAIM: Final = struct.Struct("!B16s16sQ")
"""One claimed pool address: IP version (0: a free entry), address (padded), the owner's name
digested, the workers holding it (bit i: worker i)."""


class SharedPoolClaims:
    """The `[pool]` addresses claimed in any worker (tunnel/policy/addresses.py PoolClaims): a
    table in memory shared across the fork, made before it, and a process-shared lock around
    each look and change, so that two clients on two workers cannot claim one address at once.
    Room for two entries per client slot (one address per family and client; a client on two
    workers holds its address in one entry); a worker sees it through `worker(index)`."""

    def __init__(self, max_clients: int) -> None:
        self.capacity = 2 * max_clients
        self._table = multiprocessing.get_context("fork").Array(
            ctypes.c_char, self.capacity * _CLAIM.size
        )

    def worker(self, index: int) -> WorkerPoolClaims:
        return WorkerPoolClaims(self, index)

    def claimed(self) -> dict[IPv4Address | IPv6Address, int]:
        """Each claimed address and the workers holding it (a bit mask)."""
        with self._table.get_lock():
            entries = [self._read(slot) for slot in range(self.capacity)]
        return {
            ip_address(packed[:4] if version == 4 else packed): holders
            for version, packed, _, holders in entries
            if version
        }

    def take(self, index: int, owner: str, address: IPv4Address | IPv6Address) -> bool:
        """`address` for `owner` at worker `index`: False if another client holds it, or if
        the table is full (never with at most max_clients clients)."""
        wanted = _entry(owner, address)
        with self._table.get_lock():
            free = None
            for slot in range(self.capacity):
                version, packed, digest, holders = self._read(slot)
                if version == 0:
                    free = slot if free is None else free
                elif (version, packed) == wanted[:2]:
                    if digest != wanted[2]:
                        return False
                    self._write(slot, *wanted, holders | 1 << index)
                    return True
            if free is None:
                return False
            self._write(free, *wanted, 1 << index)
            return True

    def give_back(self, index: int, owner: str, address: IPv4Address | IPv6Address) -> None:
        """Worker `index` no longer holds `address` for `owner`; free once no worker does."""
        wanted = _entry(owner, address)
        with self._table.get_lock():
            for slot in range(self.capacity):
                version, packed, digest, holders = self._read(slot)
                if (version, packed, digest) == wanted:
                    left = holders & ~(1 << index)
                    if left:
                        self._write(slot, *wanted, left)
                    else:
                        self._write(slot, 0, b"", b"", 0)
                    return

    def _read(self, slot: int) -> tuple[int, bytes, bytes, int]:
        version, packed, digest, holders = _CLAIM.unpack_from(
            self._table.get_obj(), slot * _CLAIM.size
        )
        return version, packed, digest, holders

    def _write(self, slot: int, version: int, packed: bytes, digest: bytes, holders: int) -> None:
        _CLAIM.pack_into(
            self._table.get_obj(), slot * _CLAIM.size, version, packed, digest, holders
        )


@dataclass(frozen=True)
class WorkerPoolClaims:
    """Worker `index`'s view of the shared claims: a PoolClaims for its AddressTable."""

    claims: SharedPoolClaims
    index: int

    def take(self, owner: str, address: IPv4Address | IPv6Address) -> bool:
        return self.claims.take(self.index, owner, address)

    def give_back(self, owner: str, address: IPv4Address | IPv6Address) -> None:
        self.claims.give_back(self.index, owner, address)


def _entry(owner: str, address: IPv4Address | IPv6Address) -> tuple[int, bytes, bytes]:
    """The (version, padded address, owner digest) a claim of `address` by `owner` stores."""
    return address.version, address.packed.ljust(16, b"\0"), _digest(owner)


def _digest(owner: str) -> bytes:
    """16 bytes naming a client (a certificate's Common Name may be longer)."""
    return hashlib.blake2b(owner.encode(), digest_size=16).digest()


@dataclass
class WorkerSeat:
    """What makes a concentrator process worker `index` of `count`: its socket of each listen
    address's group; `home_tun` is worker 0's TUN, where client prefixes are routed by
    default."""

    index: int
    count: int
    endpoints: list[UdpEndpoint]
    home_tun: str
    client_slots: SharedClientSlots
    pool_claims: WorkerPoolClaims

    @property
    def cid_worker(self) -> tuple[int, int]:
        return (self.index, self.count)

    @property
    def routes_prefixes(self) -> bool:
        """Whether this worker's TUN is the home of every client prefix (worker 0's)."""
        return self.index == 0

    @property
    def tun_names(self) -> list[str]:
        """Every worker's TUN, worker 0's first."""
        return [worker_tun_name(self.home_tun, index) for index in range(self.count)]


def worker_status_path(path: Path, index: int) -> Path:
    """Worker `index`'s own status file next to the configured `path`."""
    return path.with_name(f"{path.stem}.worker{index}{path.suffix}")


def worker_config(config: ConcentratorConfig, index: int) -> ConcentratorConfig:
    """The configuration worker `index` runs: its TUN's name, its status file. `tun.addresses`
    stay the concentrator's own in every worker (no pool address may be one of them, PCP is
    answered on them), though only worker 0's TUN carries them (ConcentratorProgram.start)."""
    tun = dataclasses.replace(config.tun, name=worker_tun_name(config.tun.name, index))
    status = config.observability.status_file
    observability = dataclasses.replace(
        config.observability,
        status_file=None if status is None else worker_status_path(status, index),
    )
    return dataclasses.replace(config, tun=tun, observability=observability)


def merge_status(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One status document for the workers' `snapshots`: numbers added (a key named
    largest_* or max_*: the largest), lists of objects (clients, connections) joined, anything
    else as the first worker has it; `pid`, `time`, `mtu`, `state` and `role` are not added."""
    merged: dict[str, Any] = {}
    for snapshot in snapshots:
        _merge_into(merged, snapshot)
    return merged


def _merge_into(merged: dict[str, Any], snapshot: Mapping[str, Any]) -> None:
    for key, value in snapshot.items():
        if key not in merged:
            merged[key] = json.loads(json.dumps(value))  # a copy the next merge may change
            continue
        known = merged[key]
        if isinstance(known, dict) and isinstance(value, Mapping):
            _merge_into(known, value)
        elif key not in NOT_SUMMED and _is_number(known) and _is_number(value):
            if key.startswith(("largest_", "max_")):
                merged[key] = max(known, value)
            else:
                merged[key] = known + value
        elif (
            isinstance(known, list)
            and isinstance(value, list)
            and all(isinstance(item, dict) for item in known + value)
        ):
            known.extend(json.loads(json.dumps(value)))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- routes: which worker's TUN a client's prefixes go to --------------------------------------


class WorkerRoutes:
    """Moves a client's prefixes between the workers' TUNs, in order, on a thread of its own
    (pyroute2 cannot run on uvloop's thread, tunnel/aio/tun.py)."""

    def __init__(self, own_tun: str, home_tun: str) -> None:
        self.own_tun = own_tun
        self.home_tun = home_tun
        self.failures = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="worker-routes")

    def claim(self, prefixes: Iterable[IPv4Network | IPv6Network]) -> None:
        """Route `prefixes` to this worker's TUN (a client arrived here), before returning:
        the program writes the client's first packets into the TUN only after this, so the
        answers to them find the route (an asynchronous move lost the first echo reply in
        tests/integration/test_concentrator.py). It blocks the loop for one netlink round
        trip per client admitted."""
        future = self._pool.submit(self._move, tuple(prefixes), None, self.own_tun)
        try:
            future.result(timeout=ROUTE_TIMEOUT)
        except TimeoutError:
            log.warning("worker route not moved in %.0f s to=%s", ROUTE_TIMEOUT, self.own_tun)

    def give_back(self, prefixes: Iterable[IPv4Network | IPv6Network]) -> None:
        """Route `prefixes` back to worker 0's TUN if they still go to this worker's (the
        client left here; a newer connection of it on another worker keeps them)."""
        if self.own_tun != self.home_tun:
            self._pool.submit(self._move, tuple(prefixes), self.own_tun, self.home_tun)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _move(
        self, prefixes: tuple[IPv4Network | IPv6Network, ...], only_from: str | None, to: str
    ) -> None:
        try:
            with IPRoute() as ipr:
                target = ipr.link_lookup(ifname=to)
                source = ipr.link_lookup(ifname=only_from) if only_from is not None else None
                if not target or source == []:
                    return  # the TUN is gone: the program is stopping
                for prefix in prefixes:
                    network = ip_network(prefix)
                    family = 10 if network.version == 6 else 2
                    where = {
                        "dst": str(network.network_address),
                        "dst_len": network.prefixlen,
                        "family": family,
                    }
                    if source is not None:
                        current = [r.get("oif") for r in ipr.route("get", **where)]
                        if source[0] not in current:
                            continue
                    ipr.route("replace", oif=target[0], **where)
        except (NetlinkError, OSError) as exc:
            self.failures += 1
            log.warning("worker route not moved to=%s error=%s", to, exc)


# -- the supervisor ------------------------------------------------------------------------------


def bind_groups(config: ConcentratorConfig) -> list[list[UdpEndpoint]]:
    """Each worker's endpoints (one per listen address): the sockets of each address's
    SO_REUSEPORT group, bound in worker order so that the kernel's index of a socket is its
    worker's, with the steering program attached."""
    count = config.workers
    seats: list[list[UdpEndpoint]] = [[] for _ in range(count)]
    try:
        for address in config.listen_addresses:
            # A second concentrator's group would take these sockets in silently (same user,
            # SO_REUSEPORT): they would receive nothing while the first runs, and once it
            # stopped the kernel renumbers them, every connection ID then steered to the wrong
            # worker (a review). A plain bind first fails if anyone holds the port.
            UdpEndpoint.bind(str(address), config.port, gso=False, gro=False).close()
            for index in range(count):
                seats[index].append(
                    UdpEndpoint.bind(
                        str(address),
                        config.port,
                        reuse_port=True,
                        pmtu_probe=config.limits.pmtu_discovery,
                    )
                )
            attach_steering(seats[0][-1].sock, count)
            warning = seats[0][-1].buffers.warning()
            if warning:
                log.warning(warning)
    except (EndpointError, ReusePortError) as exc:
        for endpoints in seats:
            for endpoint in endpoints:
                endpoint.close()
        raise RuntimeFailure(str(exc)) from None
    return seats


def supervise(
    config: ConcentratorConfig, serve: Callable[[ConcentratorConfig, WorkerSeat], int]
) -> int:
    """Run `serve(worker_config, seat)` in `config.workers` forked processes until SIGINT or
    SIGTERM; the exit code is 0 if every worker stopped cleanly, else the first failure's."""
    seats = bind_groups(config)
    slots = SharedClientSlots(config.limits.max_clients)
    claims = SharedPoolClaims(config.limits.max_clients)
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    children: dict[int, int] = {}  # pid -> worker index, until they are all reaped
    try:
        for index in range(len(seats)):
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                _run_worker(config, seats, slots, claims, index, parent, blocked, serve)
            children[pid] = index
        for endpoints in seats:  # the workers hold them now
            for endpoint in endpoints:
                endpoint.close()
        code = _Supervisor(config, children).wait()
        children.clear()  # reaped: their pids may belong to other processes now
        return code
    finally:
        for pid in children:  # only if the above failed: never leave a worker behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        # a script asking once more while we exit must not end us with SIGUSR1's default
        # action (as tunnel/aio/status.py does for a single process)
        signal.signal(REFRESH_SIGNAL, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _run_worker(
    config: ConcentratorConfig,
    seats: list[list[UdpEndpoint]],
    slots: SharedClientSlots,
    claims: SharedPoolClaims,
    index: int,
    parent: int,
    blocked: set[int | signal.Signals],
    serve: Callable[[ConcentratorConfig, WorkerSeat], int],
) -> NoReturn:
    """Worker `index`, in the forked process: serve, then exit with the code; whatever
    happens, it never returns into the supervisor's code."""
    code = EXIT_RUNTIME
    try:
        _end_with(parent)
        # until its status writer takes it: SIGUSR1's default action would end the worker
        # when a script asks for fresh counters while it starts (it did, in the scale
        # experiment, whose waits ask the supervisor every poll)
        signal.signal(REFRESH_SIGNAL, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        _name_in_logs(index)
        for other, others in enumerate(seats):
            if other != index:
                for endpoint in others:
                    endpoint.close()
        seat = WorkerSeat(
            index, len(seats), seats[index], config.tun.name, slots, claims.worker(index)
        )
        view = worker_config(config, index)
        code = run_command("qtun", functools.partial(serve, view, seat))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)


def _name_in_logs(index: int) -> None:
    """Start this worker's log lines with `worker=<index>` (the workers share stderr)."""

    def prefix(record: logging.LogRecord) -> bool:
        if not getattr(record, "worker_named", False):
            record.msg = f"worker={index} {record.msg}"
            record.worker_named = True
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(prefix)


def _end_with(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies (a SIGKILL it cannot
    pass on): a worker never outlives it holding the port's share and a TUN."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


class _Supervisor:
    """The I/O of the supervisor: signals, children, status files; what to do is the core's
    (tunnel/agents/supervisor.py)."""

    def __init__(self, config: ConcentratorConfig, children: dict[int, int]) -> None:
        self.config = config
        self.pids = {index: pid for pid, index in children.items()}
        self.status = config.observability.status_file
        self.core = SupervisorCore(children, config.observability.status_interval, time.monotonic())

    @property
    def live(self) -> dict[int, int]:
        return self.core.live

    def wait(self) -> int:
        core = self.core
        while not core.done:
            # every turn, not only on SIGCHLD: sigtimedwait hands out the lowest pending
            # signal first, and a script asking for fresh status (SIGUSR1, 10) more often than
            # a refresh takes would starve SIGCHLD (17) forever
            self._reap()
            if core.done:
                break
            self._carry_out(core.timer(time.monotonic()))
            wait = max(0.0, core.next_deadline() - time.monotonic())
            info = signal.sigtimedwait(SIGNALS, wait)
            if info is None:
                continue
            if info.si_signo == REFRESH_SIGNAL:
                self._refresh()
            else:
                self._carry_out(core.signal(info.si_signo, time.monotonic()))
        self.write_status(stopped=True)
        return core.exit_code or 0

    def _carry_out(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, SignalWorkers):
                self._signal_all(action.signum)
            else:
                self.write_status()

    def _reap(self) -> None:
        while not self.core.done:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # none left to reap (reaped elsewhere): nothing to wait for
                self.core.forget_workers()
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            self._carry_out(self.core.worker_ended(pid, code, time.monotonic()))

    def _signal_all(self, signum: int) -> None:
        for pid in self.live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _refresh(self) -> None:
        """SIGUSR1: each worker rewrites its file, then this merge is rewritten."""
        asked = time.time()
        self._signal_all(REFRESH_SIGNAL)
        deadline = time.monotonic() + REFRESH_WAIT
        while time.monotonic() < deadline:
            self._reap()  # a worker that ended will not answer
            live = sorted(self.live.values())
            snapshots = self._snapshots(live)
            if len(snapshots) == len(live) and all(s.get("time", 0) >= asked for s in snapshots):
                break
            time.sleep(0.01)  # polling files written by other processes: nothing to wait on
        self.write_status()

    def _snapshots(self, indices: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The status files of the workers `indices` (all by default) that could be read."""
        if self.status is None:
            return []
        snapshots = []
        for index in sorted(self.pids) if indices is None else indices:
            try:
                text = worker_status_path(self.status, index).read_text()
                snapshots.append(json.loads(text))
            except (OSError, ValueError):
                continue
        return snapshots

    def write_status(self, stopped: bool = False) -> None:
        if self.status is None:
            return
        snapshots = self._snapshots()
        merged = merge_status(snapshots)
        merged.pop("worker", None)
        states = [s.get("state") for s in snapshots]
        merged |= {
            "pid": os.getpid(),
            "time": time.time(),
            "role": "concentrator",
            "state": overall_state(states, len(self.pids), stopped),
            "workers": [
                {
                    "index": index,
                    "pid": pid,
                    "status_file": str(worker_status_path(self.status, index)),
                    "tun": worker_tun_name(self.config.tun.name, index),
                }
                for index, pid in sorted(self.pids.items())
            ],
        }
        try:
            write_json_atomic(self.status, merged)
        except OSError as exc:
            log.warning("status file not written path=%s error=%r", self.status, exc.strerror)


__all__ = [
    "WorkerRoutes",
    "WorkerSeat",
    "bind_groups",
    "merge_status",
    "supervise",
    "worker_config",
    "worker_status_path",
]
