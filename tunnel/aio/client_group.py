"""`qtun client-group -c GROUP.toml`: several `qtun client`s in one process and one event loop,
each in a network namespace of its own — the testbed's load generator for a concentrator with
many clients (README "Client groups").

Why: on one small machine, N client processes that each wake for every few packets cost far
more CPU per packet than one process that serves all N from one loop (one wakeup, many ready
sockets). The scale experiment measured 19 µs of client CPU per packet with one client and 194
µs each with 50 processes; the clients then held the machine, not the concentrator under test.
Each client of a group is still the whole client — its own configuration, QUIC connections,
sockets bound on its accesses, TUN device, access monitor, status file — only the process and
the loop are shared.

The group file:

    [[client]]
    config = "c1.toml"              # a client configuration, relative to this file
    netns = "/proc/4242/ns/net"     # optional: the namespace it runs in (a path, or a name
                                    # from `ip netns list`); without it, the process's own

Not for stream mode (its nftables rules and raw sockets belong to one namespace each): a
client with `[stream] enabled` is refused, as are two clients sharing a status file.

Signals are the group's: SIGINT/SIGTERM stop every client, SIGUSR1 rewrites every status file.
A client that stops on its own (a bug, or a failure the user must fix) stops the group: a
load generator that carried on with a client fewer would skew what it measures. Log lines
start with `client=<name>` (the client's `name`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tunnel.aio.netns import NetNamespace
from tunnel.aio.status import REFRESH_SIGNAL
from tunnel.config import ClientConfig, ConfigError
from tunnel.user_error import EXIT_OK, EXIT_RUNTIME, RuntimeFailure, UserError

if TYPE_CHECKING:  # the program's imports (aioquic) wait until the group file was read
    from tunnel.aio.client import Client

log = logging.getLogger("qtun.client")

MAX_GROUP_CLIENTS: Final = 1024
_KEYS: Final = frozenset({"config", "netns"})

Member = tuple[ClientConfig, str | None]  # a configuration and its namespace's path or name

_client_name: contextvars.ContextVar[str] = contextvars.ContextVar("qtun_client", default="")


@dataclass(frozen=True)
class GroupMember:
    """One client of a group: its configuration file, and its namespace (None: the
    process's own)."""

    config: Path
    netns: str | None


def parse_group(text: str, base_dir: Path = Path("."), source: str = "group") -> list[GroupMember]:
    """The members listed in a group file's TOML `text` (ConfigError, one sentence, if it is
    not one)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML ({exc}): fix the syntax") from None
    extra = sorted(set(data) - {"client"})
    if extra:
        raise ConfigError(
            f"{source} has unknown key {extra[0]!r}: a group file holds only [[client]] tables"
        )
    entries = data.get("client")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'{source} lists no client: add [[client]] tables with config = "FILE"')
    if len(entries) > MAX_GROUP_CLIENTS:
        raise ConfigError(
            f"{source} lists {len(entries)} clients: split them into groups of at most "
            f"{MAX_GROUP_CLIENTS}"
        )
    members = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}: client {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not a table: write it as [[client]]")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise ConfigError(f"{where} has unknown key {unknown[0]!r}: give only config and netns")
        config, netns = entry.get("config"), entry.get("netns")
        if not isinstance(config, str) or not config:
            raise ConfigError(f'{where} has no config = "FILE": name its configuration file')
        if netns is not None and (not isinstance(netns, str) or not netns):
            raise ConfigError(
                f"{where}: netns = {netns!r} is not a path or a name: give /proc/<pid>/ns/net "
                "or a name from `ip netns list`"
            )
        members.append(GroupMember(base_dir / config, netns))
    return members


def check_group(configs: Sequence[ClientConfig], source: str = "group") -> None:
    """Refuse what one process cannot run for several clients (ConfigError)."""
    status_files: dict[Path, str] = {}
    for config in configs:
        if config.stream.enabled:
            raise ConfigError(
                f"{source}: client {config.name!r} has [stream] enabled, which a client group "
                "cannot run: run it as its own `qtun client`"
            )
        status = config.observability.status_file
        if status is not None:
            other = status_files.setdefault(status.resolve(), config.name)
            if other != config.name:
                raise ConfigError(
                    f"{source}: clients {other!r} and {config.name!r} share the status file "
                    f"{status}: give each its own observability.status_file"
                )


class _NameInLogs(logging.Filter):
    """Start a line with `client=<name>` when it comes from one client of the group (the
    context each client's task and its callbacks run in)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = _client_name.get()
        if name and not getattr(record, "client_named", False):
            record.msg = f"client={name} {record.msg}"
            record.client_named = True
        return True


class ClientGroup:
    """The running group (see the module docstring)."""

    def __init__(self, members: Sequence[tuple[ClientConfig, NetNamespace | None]]) -> None:
        from tunnel.aio.client import Client

        self.loop = asyncio.get_running_loop()
        self.clients = [Client(config, netns, in_group=True) for config, netns in members]
        self.failure: Exception | None = None

    async def main(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(signum, self._stop_all, signum)
        self.loop.add_signal_handler(REFRESH_SIGNAL, self._refresh)
        self.loop.set_exception_handler(self._loop_exception)
        tasks = [self._spawn(client) for client in self.clients]
        log.info("group starting clients=%d", len(self.clients))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # one ended: on a signal they all end; else the others are stopped with it
            self._stop_all(signal.SIGTERM)
            await asyncio.wait(tasks)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.loop.remove_signal_handler(signum)
            self.loop.remove_signal_handler(REFRESH_SIGNAL)
            # ignored from now on, as one client's status writer does (tunnel/aio/status.py)
            signal.signal(REFRESH_SIGNAL, signal.SIG_IGN)
        for client, task in zip(self.clients, tasks, strict=True):
            exc = task.exception()
            if isinstance(exc, UserError):  # its sentence is the CLI's to print, with whose
                exc.args = (f"client {client.config.name!r}: {exc}",)
                raise exc
        codes = [task.result() for task in tasks]  # a bug in main itself raises here
        ok = self.failure is None and all(code == EXIT_OK for code in codes)
        return EXIT_OK if ok else EXIT_RUNTIME

    def _spawn(self, client: Client) -> asyncio.Task[int]:
        context = contextvars.copy_context()
        context.run(_client_name.set, client.config.name)
        return self.loop.create_task(
            client.main(), name=f"client-{client.config.name}", context=context
        )

    def _stop_all(self, signum: int) -> None:
        for client in self.clients:
            client.request_stop(signum)

    def _refresh(self) -> None:
        for client in self.clients:
            client.status.write()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A client's own callbacks stop that client on a bug (Client._guarded); what reaches
        # the loop's handler cannot be told apart (the handler runs outside the callback's
        # context), so it stops the group.
        exc = context.get("exception")
        if not isinstance(exc, Exception):
            loop.default_exception_handler(context)
            return
        if self.failure is None:
            self.failure = exc
            where = str(context.get("message", "a loop callback"))
            log.critical("internal error in %s: stopping the group", where, exc_info=exc)
        self._stop_all(signal.SIGTERM)


def load_group(path: str | Path, overrides: Sequence[str] = ()) -> list[Member]:
    """Read a group file and its members' configurations (each with `overrides` applied)."""
    from tunnel.aio.config_file import load_client_config, read_config_text

    path = Path(path)
    members = parse_group(read_config_text(path), path.parent, str(path))
    configs = []
    for i, member in enumerate(members, 1):
        try:
            configs.append((load_client_config(member.config, overrides), member.netns))
        except ConfigError as exc:
            # the member's sentence names a key, not which of the group's files holds it
            raise ConfigError(f"{path}: client {i} ({member.config}): {exc}") from None
    check_group([config for config, _ in configs], str(path))
    return configs


async def _amain(members: Sequence[Member]) -> int:
    opened: list[NetNamespace] = []
    try:
        pairs = []
        for config, netns in members:
            namespace = NetNamespace(netns) if netns is not None else None
            if namespace is not None:
                opened.append(namespace)
            pairs.append((config, namespace))
        return await ClientGroup(pairs).main()
    finally:
        for namespace in opened:
            namespace.close()


def run_client_group(members: Sequence[Member]) -> int:
    """Run the group until SIGINT/SIGTERM or until one client stops: 0 after a clean
    shutdown, 1 after a bug; RuntimeFailure (one sentence) for a failure the user must fix."""
    from tunnel.aio.tun import TunError
    from tunnel.aio.udp import EndpointError, run

    for handler in logging.getLogger().handlers:
        handler.addFilter(_NameInLogs())
    try:
        return run(_amain(members))
    except (TunError, EndpointError) as exc:
        raise RuntimeFailure(str(exc)) from None


__all__ = [
    "ClientGroup",
    "GroupMember",
    "check_group",
    "load_group",
    "parse_group",
    "run_client_group",
]
