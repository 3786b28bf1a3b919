"""What the link emulator itself did over a point's measurement: frames it lost that no setting
asked for, and how late it let frames leave.

qtwire (testbed/wire/qtwire.c) is a user-space process: when the machine is busy it may be
scheduled late, and frames then leave after their due time, in bursts, or overflow its packet
socket's buffer in the kernel. Either way the link was not the one configured, and a figure from
that point measures the machine as much as the network. The CPU columns catch a saturated core;
these catch the shaper's own effect even when no core was full (README "Link impairment without
netem"). The netem backend has no such process: the columns stay empty.

    meter = ShaperMeter({"shaper_wifi": wire_shaper, ...})
    meter.start()   # a new lateness window; the faults so far
    ...             # the flow
    meter.stop()    # the window's lateness; the faults since start()
    meter.columns() # {"shaper_late_max_ms": 0.4, "shaper_faults": 1,
                    #  "shaper_fault_counters": "shaper_wifi/ab/tx_err=1"}
"""

from __future__ import annotations

from typing import Any

from testbed.shaping import ShapingError, WireShaper

FAULTS = ("tx_err", "drop_cap", "kernel_drops")
"""qtwire's counters of frames it lost on its own: a send the veth refused, its hard cap on held
frames, the kernel's drops on its receive socket (PACKET_STATISTICS)."""


class ShaperMeter:
    """The shapers of one point's links, read at the start and the end of its measurement."""

    def __init__(self, shapers: dict[str, WireShaper]) -> None:
        self.shapers = dict(shapers)
        self._faults_at_start: dict[str, float] = {}
        self.late_max_ms: float | None = None
        self.faults: int | None = None
        # which counters the faults are in ("shaper/direction/counter=n", space-separated; ""
        # for none): a fault on a send (tx_err), at the cap or in the kernel's socket buffer
        # has a different cause, and the sum alone does not say which
        self.fault_counters: str | None = None

    def _read(self) -> dict[str, dict[str, dict[str, float]]] | None:
        """Every shaper's window (None if one cannot be asked: the columns stay empty rather
        than claim a clean link)."""
        try:
            return {name: shaper.window() for name, shaper in self.shapers.items()}
        except (ShapingError, OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        read = self._read()
        self._faults_at_start = fault_counts(read) if read is not None else {}

    def stop(self) -> None:
        read = self._read()
        if read is None or not self.shapers:
            return
        self.late_max_ms = max(
            (d["late_max_us"] / 1000 for window in read.values() for d in window.values()),
            default=None,
        )
        self.faults, self.fault_counters = fault_change(self._faults_at_start, fault_counts(read))

    def columns(self) -> dict[str, Any]:
        """schemas.SHAPER_COLUMNS of a row."""
        return {
            "shaper_late_max_ms": self.late_max_ms,
            "shaper_faults": self.faults,
            "shaper_fault_counters": self.fault_counters,
        }


def fault_change(start: dict[str, float], now: dict[str, float]) -> tuple[int, str]:
    """The faults between two readings of `fault_counts`: their sum, and the counters that moved
    ("shaper/direction/counter=n", space-separated, sorted; "" when none did). A counter absent
    at the start (a shaper that could not be read then) counts from zero."""
    moved = {key: int(count - start.get(key, 0.0)) for key, count in now.items()}
    text = " ".join(f"{key}={n}" for key, n in sorted(moved.items()) if n)
    return sum(moved.values()), text


def fault_counts(read: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """(shaper, direction, counter) -> count, flattened as text keys."""
    return {
        f"{name}/{direction}/{key}": window.get(key, 0.0)
        for name, directions in read.items()
        for direction, window in directions.items()
        for key in FAULTS
    }
