"""CPU and memory of processes and of the machine, from /proc, and the arithmetic on them.

CPU is in % of one core everywhere (100 = one core busy; a 2-core machine tops out at 200), over
a wall-clock interval the caller measures; RSS in MiB (VmRSS).
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    return rss_mb(Path(f"/proc/{pid}/status").read_text())


def proc_sample(pid: int) -> tuple[float, int, float] | None:
    """(RSS MiB, open fds, CPU s) of a live process, None if it is gone."""
    try:
        rss = process_rss_mb(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        cpu = cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None
    return rss, fds, cpu
