"""One loop timer that follows a deadline: the asyncio side of a sans-I/O `get_timer()`.

Every sans-I/O object here (aioquic's QuicConnection, the agents, reorder buffers, session
tables) says when it next needs `handle_timer(now)`; the program keeps one timer per object and
re-arms it after each input. That re-arming is done here, in one place, because it has a trap:
under uvloop, `loop.call_at` returns a plain Handle without `.when()` for deadlines under
0.5 ms away (DESIGN.md, "Known aioquic facts"), so the deadline is kept here, never read back
from the handle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineTimer:
    """Calls `callback(now)` at the deadline last given to `arm` (None: no call). Re-arming to
    the same deadline keeps the scheduled call; `now` passed to the callback is never earlier
    than the deadline (the loop may wake a little early)."""

    def __init__(
        self, callback: Callable[[float], None], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._callback = callback
        self._loop = loop or asyncio.get_running_loop()
        self._handle: asyncio.Handle | None = None
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def arm(self, deadline: float | None) -> None:
        if deadline == self._deadline and (deadline is None or self._handle is not None):
            return
        self.cancel()
        self._deadline = deadline
        if deadline is not None:
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._deadline = None

    def _fire(self) -> None:
        deadline = self._deadline
        self._handle = None
        self._deadline = None
        now = self._loop.time()
        self._callback(now if deadline is None else max(now, deadline))


__all__ = ["DeadlineTimer"]
