"""The status file of `qtun client` and `qtun concentrator`: one JSON document a script can read
at any moment (keys: README "Status file").

Written atomically — to a temporary file in the same directory, then renamed over the old one —
so a reader never sees a half-written document (rename within one file system is atomic on
POSIX). The program rewrites it every `interval` seconds, at each state change and when it
receives SIGUSR1 (REFRESH_SIGNAL: a script that wants fresh counters asks, so the interval can
stay long), but never more often than every MIN_GAP seconds: state changes a peer can cause at
will (an Access Report flood wrote 25.5 MB in 6 s) coalesce into one write. The file is readable
by its owner only (0600): it names every client, its addresses and counters.

A write costs a snapshot, its JSON and a file replacement: about 0.8 ms of CPU in a client
(measured with `make bench --rate 1.2 --reverse`: a rewrite every 0.25 s cost 84-94 us per
tunnelled packet, one every 5 s 46-56), so rewriting often is what a slow program pays most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("qtun.status")

Snapshot = Callable[[], Mapping[str, Any]]
MIN_GAP = 0.1  # seconds between two writes at least (state changes in between coalesce)
REFRESH_SIGNAL = signal.SIGUSR1  # "write the status file now" (README "Status file")


def write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Replace `path` with `document` as JSON so readers see the old or the new file, never a
    mix. Raises OSError if the directory is not writable."""
    data = (json.dumps(document, sort_keys=True, default=_jsonable) + "\n").encode()
    # One temporary name per process, created exclusively (O_EXCL, O_NOFOLLOW: never through a
    # file or link someone else put there): tempfile.mkstemp's random names cost as much CPU as
    # the write itself, and a program rewrites its status file several times a second.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:  # left by a process of ours that died between open and replace
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(value: object) -> object:
    # Paths, addresses and enums end up in status documents: their text form is what a
    # script wants.
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    enum_value = getattr(value, "value", None)
    if enum_value is not None and isinstance(enum_value, str | int):
        return enum_value
    return str(value)


class StatusWriter:
    """Rewrites the status file from `snapshot()` every `interval` seconds (`start`) and on
    demand (`write`). With `path` None every call is a no-op, so callers need no `if`."""

    def __init__(
        self,
        path: Path | None,
        snapshot: Snapshot,
        interval: float = 1.0,
        min_gap: float = MIN_GAP,
        refresh_signal: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"status interval must be > 0, got {interval}")
        self.path = path
        self.snapshot = snapshot
        self.interval = interval
        self.min_gap = min(min_gap, interval)
        self.writes = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._last_write: float | None = None
        self._failed = False
        self._refresh_installed = False
        # False: the program owns REFRESH_SIGNAL (a client group writes all its clients' files)
        self._refresh_signal = refresh_signal

    def write(self) -> None:
        """Write the current snapshot: now, or (once started) at most MIN_GAP after the last
        write, so a burst of calls costs one write."""
        if self.path is None or self._pending is not None:
            return
        loop = self._loop
        if loop is None or self._last_write is None:
            self.write_now()
            return
        wait = self._last_write + self.min_gap - loop.time()
        if wait <= 0:
            self.write_now()
        else:
            self._pending = loop.call_later(wait, self.write_now)

    def write_now(self) -> None:
        """Write the current snapshot now; a failure is logged once, never raised (the
        tunnel must keep running if the status directory disappears)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.path is None:
            return
        if self._loop is not None:
            self._last_write = self._loop.time()
        try:
            write_json_atomic(self.path, self.snapshot())
        except OSError as exc:
            if not self._failed:
                log.warning("status file not written path=%s error=%r", self.path, exc.strerror)
            self._failed = True
            return
        self._failed = False
        self.writes += 1

    def start(self) -> None:
        """Begin the periodic rewrite on the running loop, and the rewrite on REFRESH_SIGNAL
        (idempotent)."""
        if self.path is None or self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="status-writer")
        if not self._refresh_signal:
            return
        try:
            self._loop.add_signal_handler(REFRESH_SIGNAL, self.write)
        except (RuntimeError, ValueError) as exc:  # not the main thread: periodic writes only
            log.debug("no status refresh signal: %s", exc)
        else:
            self._refresh_installed = True

    async def _run(self) -> None:
        while True:
            self.write_now()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Stop the periodic rewrite and write a last snapshot (e.g. state "stopped")."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._refresh_installed and self._loop is not None:
            # ignored from now on, not back to its default action: that would end a process
            # still shutting down when a script asks once more
            self._loop.remove_signal_handler(REFRESH_SIGNAL)
            signal.signal(REFRESH_SIGNAL, signal.SIG_IGN)
            self._refresh_installed = False
        self.write_now()


def open_private(path: Path) -> TextIO:
    """Open a file for appending, line-buffered, that only its owner may read (0600, also when
    it existed before): TLS key logs decrypt every session."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", buffering=1, encoding="ascii")


__all__ = ["Snapshot", "StatusWriter", "open_private", "write_json_atomic"]
