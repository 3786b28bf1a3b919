"""What the supervisor of `workers = N` decides (README "Workers"), pure: the caller passes the
signals it received, the workers that ended and the time, and carries out the actions returned.

tunnel/aio/workers.py forks the workers and keeps this process as their supervisor, with no
event loop: it waits for signals (sigtimedwait) until `next_deadline()`, reaps the children
that ended, and tells this core:

    core = SupervisorCore({pid: index, ...}, status_interval=1.0, now=time.monotonic())
    core.signal(signum, now)          SIGINT, SIGTERM, SIGHUP
    core.worker_ended(pid, code, now) os.waitstatus_to_exitcode's code (negative: a signal)
    core.timer(now)                   at or after next_deadline()
each returning the actions to carry out, in order; `done` once every worker has ended, then
`exit_code` is the program's.

The rules:
- SIGINT and SIGTERM stop the concentrator: SIGTERM to every worker (each closes its
  connections), exit 0; a worker still there STOP_TIMEOUT later gets SIGKILL.
- A worker that ends on its own stops the others, since the connections its socket held would
  go unanswered: the program exits with that worker's code (EXIT_RUNTIME when a signal killed
  it), as a single-process concentrator ends with a crash's. While stopping, a worker that
  ends with an error turns a clean exit into its code.
- SIGHUP (reload the CRL) goes to every worker. (SIGUSR1, a fresh status, the caller passes
  on itself: the workers rewrite their files and it merges them; nothing to decide.)
- The merged status file is rewritten every `status_interval` seconds.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from tunnel.user_error import EXIT_RUNTIME

log = logging.getLogger("qtun.concentrator")

STOP_TIMEOUT: Final = 15.0  # seconds a worker has to close its connections before SIGKILL


@dataclass(frozen=True)
class SignalWorkers:
    """Send `signum` to every worker still running."""

    signum: int


@dataclass(frozen=True)
class WriteStatus:
    """Merge the workers' status files into the configured one."""


Action = SignalWorkers | WriteStatus


class SupervisorCore:
    def __init__(self, workers: Mapping[int, int], status_interval: float, now: float) -> None:
        if not workers:
            raise ValueError("a supervisor needs at least one worker")
        if status_interval <= 0:
            raise ValueError(f"status_interval must be > 0, got {status_interval}")
        self.live: dict[int, int] = dict(workers)  # pid -> worker index
        self.status_interval = status_interval
        self.exit_code: int | None = None
        self.stop_deadline: float | None = None
        self._next_status = now  # the first status at once

    @property
    def done(self) -> bool:
        return not self.live

    @property
    def stopping(self) -> bool:
        return self.exit_code is not None

    def next_deadline(self) -> float:
        """When `timer` has something to do: the next status file, or SIGKILL's turn."""
        if self.stop_deadline is None:
            return self._next_status
        return min(self._next_status, self.stop_deadline)

    def signal(self, signum: int, now: float) -> list[Action]:
        if signum in (signal.SIGINT, signal.SIGTERM):
            return self._stop(0, now)
        if signum == signal.SIGHUP:
            return [SignalWorkers(signal.SIGHUP)]
        return []  # SIGCHLD: the caller reaps, then calls worker_ended

    def worker_ended(self, pid: int, code: int, now: float) -> list[Action]:
        index = self.live.pop(pid, None)
        if index is None:
            return []  # not one of ours (or told twice)
        failed = code if code > 0 else EXIT_RUNTIME  # a negative code: killed by a signal
        if not self.stopping:
            log.error("worker %d ended on its own (exit %d): stopping the others", index, code)
            return self._stop(failed, now)
        if code != 0 and self.exit_code == 0:
            self.exit_code = failed
        return []

    def forget_workers(self) -> None:
        """No worker is left to wait for, whatever their end (the caller has no child
        left to reap): done, the exit code as it stands."""
        self.live.clear()

    def timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if now >= self._next_status:
            actions.append(WriteStatus())
            self._next_status = now + self.status_interval
        if self.stop_deadline is not None and now >= self.stop_deadline:
            log.warning("workers did not stop in %.0f s: killing them", STOP_TIMEOUT)
            actions.append(SignalWorkers(signal.SIGKILL))
            self.stop_deadline = None
        return actions

    def _stop(self, code: int, now: float) -> list[Action]:
        if self.exit_code is None:
            self.exit_code = code
            self.stop_deadline = now + STOP_TIMEOUT
            return [SignalWorkers(signal.SIGTERM)]
        return []  # already stopping: the first reason and deadline stand


def overall_state(worker_states: Sequence[object], workers: int, stopped: bool) -> str:
    """The merged status file's state: "up" once every worker says so, "stopped" at the end,
    "starting" otherwise (a worker not up yet, or whose file could not be read)."""
    if stopped:
        return "stopped"
    if len(worker_states) == workers and all(state == "up" for state in worker_states):
        return "up"
    return "starting"


__all__ = [
    "STOP_TIMEOUT",
    "Action",
    "SignalWorkers",
    "SupervisorCore",
    "WriteStatus",
    "overall_state",
]
