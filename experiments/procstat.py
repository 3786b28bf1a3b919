"""CPU and memory of processes and of the machine, from /proc, and the arithmetic on them.

CPU is in % of one core everywhere (100 = one core busy; a 2-core machine tops out at 200), over
a wall-clock interval the caller measures; RSS in MiB (VmRSS).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from experiments.shaper_meter import ShaperMeter

# A process at or above this share of one core over a point's measurement saturated it: its
# figure may be the machine's limit, not the network's (issue 12 "Watch the CPU"). Not 100: a
# busy process on a shared 2-core machine rarely gets a whole core, and a single-threaded
# program (qtun's asyncio loop, qtwire) that gets 90 % is out of head-room.
CPU_SATURATED_PCT = 90.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its running child processes (a
    concentrator's workers, README "Workers"), in seconds."""
    return _with_children(pid, _own_cpu_seconds)


def _with_children(pid: int, measure: Callable[[int], float]) -> float:
    """`measure(pid)` plus `measure` of each running child (one that ends meanwhile counts
    nothing)."""
    return sum(_each_process(pid, measure).values())


def _each_process(pid: int, measure: Callable[[int], float]) -> dict[int, float]:
    """`measure` of the process and of each of its running children, by pid (a child that ends
    meanwhile is left out; the process's own failure is raised)."""
    each = {pid: measure(pid)}
    for child in child_pids(pid):
        try:
            each[child] = measure(child)
        except (OSError, ValueError, IndexError):
            continue
    return each


def _own_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The running child processes of `pid` (those any of its threads started)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return children


def cpu_pct(before_s: float, after_s: float, wall_s: float) -> float:
    """CPU seconds used over a wall-clock interval, in % of one core."""
    if wall_s <= 0:
        raise ValueError("wall_s must be > 0.")
    return 100 * (after_s - before_s) / wall_s


def host_cpu_times(stat_text: str) -> tuple[int, int, int]:
    """(busy, total) jiffies summed over all cores from /proc/stat's first line (idle and
    iowait count as idle), and the number of cores (its cpuN lines)."""
    lines = stat_text.splitlines()
    fields = [int(x) for x in lines[0].split()[1:9]]  # user .. steal; guest is inside user
    idle = fields[3] + fields[4]
    cores = sum(1 for line in lines[1:] if line.startswith("cpu"))
    return sum(fields) - idle, sum(fields), max(1, cores)


def host_busy() -> tuple[int, int, int]:
    """host_cpu_times of this machine now."""
    return host_cpu_times(Path("/proc/stat").read_text())


def host_busy_pct(before: tuple[int, int, int], after: tuple[int, int, int]) -> float | None:
    """The whole machine's busy time between two host_cpu_times in % of one core (as the
    process columns: a 2-core machine tops out at 200)."""
    total = after[1] - before[1]
    return None if total <= 0 else 100 * after[2] * (after[0] - before[0]) / total


def rss_mb(status_text: str) -> float:
    """VmRSS from a /proc/<pid>/status text, in MiB."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # the kernel writes kB (KiB)
    raise ValueError("no VmRSS line (a kernel thread, or the process is a zombie).")


def process_rss_mb(pid: int) -> float:
    """VmRSS of a process and of its running child processes (a concentrator's workers, whose
    pages shared since the fork count once per process), in MiB."""
    return _with_children(pid, lambda p: rss_mb(Path(f"/proc/{p}/status").read_text()))


def pss_mb(smaps_rollup_text: str) -> float:
    """Pss from a /proc/<pid>/smaps_rollup text, in MiB: the process's resident pages, each
    shared page divided among the processes sharing it."""
    for line in smaps_rollup_text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024  # kB (KiB)
    raise ValueError("no Pss line (a kernel thread, or the process is a zombie).")


def process_pss_mb(pid: int) -> float:
    """The proportional set size of a process and its running children, in MiB: unlike
    process_rss_mb, the pages a concentrator's forked workers share with each other and the
    supervisor count once in the sum (each process holds its share)."""
    return _with_children(pid, lambda p: pss_mb(Path(f"/proc/{p}/smaps_rollup").read_text()))


def proc_sample(pid: int) -> tuple[float, int, float] | None:
    """(RSS MiB, open fds, CPU s) of a live process, None if it is gone."""
    try:
        rss = process_rss_mb(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        cpu = cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None
    return rss, fds, cpu


def saturation(usage: dict[str, float | None]) -> tuple[str | None, bool | None]:
    """The busiest process of a CpuMeter's peak() and whether it reached CPU_SATURATED_PCT
    (None, None when nothing was measured)."""
    measured = {name: pct for name, pct in usage.items() if pct is not None}
    if not measured:
        return None, None
    busiest = max(measured, key=lambda name: measured[name])
    return busiest, measured[busiest] >= CPU_SATURATED_PCT


SATURATED_NOTE = "CPU SATURATED (a process >= 90 % of a core, or the machine >= 90 % of its cores)"
"""How a summary names a point flagged `cpu_saturated`: the flag covers both (saturation and
machine_saturated), and the summaries said only the first."""


def saturated_by(row: Mapping[Any, Any]) -> str:
    """What saturated a flagged point, from its row: its busiest process if that one reached
    CPU_SATURATED_PCT of a core, else "machine" (all of them together filled the cores)."""
    busiest = str(row.get("cpu_busiest") or "")
    try:
        pct = float(row.get(f"cpu_{busiest}_pct") or "nan")
    except ValueError:
        pct = math.nan
    return busiest if pct >= CPU_SATURATED_PCT else "machine"


def saturated_note(
    rows: Iterable[Mapping[Any, Any]], label: Callable[[Mapping[Any, Any]], str]
) -> str:
    """The line a summary ends with when points were flagged `cpu_saturated` ("" when none
    was): SATURATED_NOTE, then each flagged point as `label(row)` with what saturated it, so a
    reader of the summary sees which medians the machine may have set (issue 17)."""
    cells = sorted(
        {f"{label(r)} ({saturated_by(r)})" for r in rows if str(r.get("cpu_saturated")) == "True"}
    )
    return f"\n{SATURATED_NOTE}: " + "; ".join(cells) if cells else ""


def machine_saturated(host_pct: float | None, cores: int | None) -> bool:
    """Whether the whole machine was busy CPU_SATURATED_PCT of its time: no process of the
    point need have filled a core (on 2 cores a client at 77 % and a concentrator at 72 % of
    one, with the shapers, left 17 of 200), but they waited for the CPU."""
    if host_pct is None or not cores:
        return False
    return host_pct >= CPU_SATURATED_PCT * cores


class CpuMeter:
    """The CPU each of a point's processes used over its measurement window, in % of one core.

        meter = CpuMeter({"client": pid, ...}, skip_s=1.0)   # skip the warm-up
        meter.watch("sender", pid)                           # more once they run
        meter.start(start_at, end_at)                        # CLOCK_MONOTONIC, as the flows'
        ...
        meter.stop()
        meter.usage()   # {"client": 43.2, "sender": None (never sampled twice), ...}

    A thread samples /proc every `interval_s` from `start_at + skip_s` to `end_at` (or stop()):
    a process that exits inside the window keeps the share of the part it lived, one that was
    never sampled twice has None. Sampling costs a few /proc reads per interval in this process.
    A watched process's usage includes its running children (a concentrator's workers); `peak()`
    is the busiest single one of them, what says whether a core was saturated.
    """

    def __init__(
        self, pids: dict[str, int] | None = None, skip_s: float = 0.0, interval_s: float = 0.25
    ) -> None:
        self.pids: dict[str, int] = dict(pids or {})
        self.skip_s = skip_s
        self.interval_s = interval_s
        self.first: dict[str, tuple[float, float]] = {}  # name -> (time, CPU seconds)
        self.last: dict[str, tuple[float, float]] = {}
        # (name, pid) -> (time, CPU seconds) of the watched process itself and of each child
        self.each_first: dict[tuple[str, int], tuple[float, float]] = {}
        self.each_last: dict[tuple[str, int], tuple[float, float]] = {}
        self.host_first: tuple[int, int, int] | None = None
        self.host_last: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the link emulator's own faults over the same window (experiments/shaper_meter.py),
        # read when the meter starts and stops
        self.shapers: ShaperMeter | None = None
        self._started = False

    def watch_shapers(self, shapers: ShaperMeter) -> None:
        """Read `shapers` over this meter's window (from now on if it already started)."""
        self.shapers = shapers
        if self._started:
            shapers.start()

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid

    def sample(self) -> None:
        """One reading of every watched process (and of the machine), now."""
        now = time.monotonic()
        for name, pid in list(self.pids.items()):
            try:
                each = _each_process(pid, _own_cpu_seconds)
            except (OSError, ValueError, IndexError):
                continue  # gone (or a zombie): its last reading stands
            reading = (now, sum(each.values()))
            self.first.setdefault(name, reading)
            self.last[name] = reading
            for process, seconds in each.items():
                self.each_first.setdefault((name, process), (now, seconds))
                self.each_last[(name, process)] = (now, seconds)
        host = host_busy()
        if self.host_first is None:
            self.host_first = host
        self.host_last = host

    def start(self, start_at: float, end_at: float) -> None:
        """Sample from start_at + skip_s to end_at (monotonic seconds) in a thread."""
        begin = start_at + self.skip_s

        def run() -> None:
            if self._stop.wait(max(0.0, begin - time.monotonic())):
                return
            self.sample()
            while (left := end_at - time.monotonic()) > 0:
                if self._stop.wait(min(self.interval_s, left)):
                    return
                self.sample()

        self._thread = threading.Thread(target=run, name="cpu-meter", daemon=True)
        self._thread.start()
        self._started = True
        if self.shapers is not None:
            self.shapers.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.shapers is not None and self._started:
            self.shapers.stop()
        self._started = False

    def usage(self) -> dict[str, float | None]:
        """Each watched process's CPU over the part of the window it was sampled in."""
        out: dict[str, float | None] = {}
        for name in self.pids:
            first, last = self.first.get(name), self.last.get(name)
            if first is None or last is None or last[0] - first[0] <= 0:
                out[name] = None
            else:
                out[name] = cpu_pct(first[1], last[1], last[0] - first[0])
        return out

    def peak(self) -> dict[str, float | None]:
        """Per watched name, the CPU of its busiest single process (itself or one child) over
        the part of the window that process was sampled in; usage() where no process of it was
        sampled on its own."""
        busiest: dict[str, float] = {}
        for key, first in self.each_first.items():
            last = self.each_last[key]
            if last[0] - first[0] > 0:
                pct = cpu_pct(first[1], last[1], last[0] - first[0])
                busiest[key[0]] = max(busiest.get(key[0], pct), pct)
        return {name: busiest.get(name, pct) for name, pct in self.usage().items()}

    def host_pct(self) -> float | None:
        if self.host_first is None or self.host_last is None:
            return None
        return host_busy_pct(self.host_first, self.host_last)

    @property
    def cores(self) -> int | None:
        """The machine's cores (/proc/stat's cpuN lines), None before the first sample."""
        return None if self.host_first is None else self.host_first[2]
