"""Optional, bounded qlog output for qtun programs.

aioquic's QuicFileLogger keeps every event of a connection in memory until the connection ends
(and logging roughly halves throughput), so a long transfer would grow without bound. This
logger writes the same one-file-per-connection qlog (qvis opens it) but keeps only the last
`max_events` events of each connection (older ones are dropped, and the count of dropped events
is written into the trace's common fields).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from aioquic.quic.logger import QuicFileLogger, QuicLoggerTrace

DEFAULT_MAX_EVENTS = 50_000  # ~ tens of MB of JSON per connection at most


class _BoundedTrace(QuicLoggerTrace):
    def __init__(self, *, is_client: bool, odcid: bytes, max_events: int) -> None:
        super().__init__(is_client=is_client, odcid=odcid)
        # QuicLoggerTrace appends to this deque; a maxlen makes it a ring buffer.
        self._events = deque(maxlen=max_events)
        self.logged = 0

    def log_event(self, *, category: str, event: str, data: dict[str, Any]) -> None:
        self.logged += 1
        super().log_event(category=category, event=event, data=data)

    def to_dict(self) -> dict[str, Any]:
        trace: dict[str, Any] = super().to_dict()
        dropped = self.logged - len(self._events)
        trace.setdefault("common_fields", {})["qtun_dropped_events"] = dropped
        return trace


class BoundedQlogLogger(QuicFileLogger):
    """One `<odcid>.qlog` file per connection in `directory`, written when it ends."""

    def __init__(self, directory: Path, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        super().__init__(str(directory))
        self.max_events = max_events

    def start_trace(self, is_client: bool, odcid: bytes) -> QuicLoggerTrace:
        trace = _BoundedTrace(is_client=is_client, odcid=odcid, max_events=self.max_events)
        self._traces.append(trace)
        return trace


__all__ = ["DEFAULT_MAX_EVENTS", "BoundedQlogLogger"]
