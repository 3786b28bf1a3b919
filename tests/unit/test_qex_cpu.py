"""CPU per point (issue 12 "Watch the CPU"): experiments.procstat.CpuMeter, the saturation flag
and the CPU columns a row gets (experiments.flows.cpu_columns). Readings are injected where a
figure is checked: no test depends on how busy the machine is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from experiments.flows import cpu_columns
from experiments.procstat import (
    CPU_SATURATED_PCT,
    CpuMeter,
    _own_cpu_seconds,
    child_pids,
    cpu_seconds,
    machine_saturated,
    process_pss_mb,
    process_rss_mb,
    pss_mb,
    rss_mb,
    saturated_by,
    saturated_note,
    saturation,
)
from experiments.schemas import CPU_COLUMNS, CPU_PROCESSES, SHAPER_COLUMNS
from experiments.shaper_meter import fault_change, fault_counts
from testbed.shaping import stats_window


def test_saturation_is_the_busiest_process_at_90_percent_of_a_core() -> None:
    assert CPU_SATURATED_PCT == 90.0
    usage = {"client": 95.0, "sender": 20.0, "shaper_wifi": None}
    assert saturation(usage) == ("client", True)
    assert saturation({"concentrator": 89.9, "receiver": 3.0}) == ("concentrator", False)
    assert saturation({"shaper_5g": 90.0}) == ("shaper_5g", True)  # "at or above"
    assert saturation({"client": None}) == (None, None)  # nothing measured: unknown, not "no"
    assert saturation({}) == (None, None)


def meter_with(readings: dict[str, tuple[tuple[float, float], tuple[float, float]]]) -> CpuMeter:
    """A meter whose first and last (time, CPU seconds) readings are given."""
    meter = CpuMeter({name: 1 for name in readings})
    for name, (first, last) in readings.items():
        meter.first[name], meter.last[name] = first, last
    return meter


def test_cpu_columns_of_a_point() -> None:
    # 9.5 CPU seconds in 10 s: 95 % of a core; qtwire 2 s in 10 s: 20 %
    meter = meter_with(
        {
            "client": ((100.0, 1.0), (110.0, 10.5)),
            "shaper_wifi": ((100.0, 0.0), (110.0, 2.0)),
            "sender": ((100.0, 5.0), (100.0, 5.0)),  # sampled once: no interval, no figure
        }
    )
    meter.host_first, meter.host_last = (0, 0, 2), (150, 100, 2)  # 150 of 100 jiffies x 2 cores
    row = cpu_columns(meter)
    assert list(row) == [*CPU_COLUMNS, *SHAPER_COLUMNS]  # no shapers watched: those empty
    assert row["shaper_faults"] is None and row["shaper_late_max_ms"] is None
    assert row["cpu_client_pct"] == pytest.approx(95.0)
    assert row["cpu_shaper_wifi_pct"] == pytest.approx(20.0)
    assert row["cpu_sender_pct"] is None and row["cpu_concentrator_pct"] is None
    assert row["cpu_host_pct"] == pytest.approx(300.0)
    assert (row["cpu_busiest"], row["cpu_saturated"]) == ("client", True)
    calm = cpu_columns(meter_with({"receiver": ((0.0, 0.0), (4.0, 1.0))}))
    assert (calm["cpu_busiest"], calm["cpu_saturated"]) == ("receiver", False)
    assert cpu_columns(None) == dict.fromkeys((*CPU_COLUMNS, *SHAPER_COLUMNS))
    assert [c.removeprefix("cpu_").removesuffix("_pct") for c in CPU_COLUMNS[:6]] == list(
        CPU_PROCESSES
    )


def test_a_busy_machine_is_saturated_though_no_process_filled_a_core() -> None:
    """The committed aggregation run's wrr cell: client 77 % and concentrator 72 % of a core,
    the machine 183 of 200 busy; it was not flagged (each process was under 90 % of its
    core), but the processes waited for the CPU."""
    meter = meter_with(
        {"client": ((100.0, 0.0), (110.0, 7.7)), "concentrator": ((100.0, 0.0), (110.0, 7.2))}
    )
    meter.host_first, meter.host_last = (0, 0, 2), (183, 200, 2)  # 183 % of one core
    row = cpu_columns(meter)
    assert row["cpu_host_pct"] == pytest.approx(183.0)
    assert (row["cpu_busiest"], row["cpu_saturated"]) == ("client", True)
    meter.host_last = (170, 200, 2)
    assert cpu_columns(meter)["cpu_saturated"] is False
    assert machine_saturated(180.0, 2) and not machine_saturated(180.0, 4)
    assert not machine_saturated(None, 2) and not machine_saturated(190.0, None)
    # a summary names what saturated it: the machine here (its busiest process, the client,
    # was at 77 %), where the summaries used to name the client and say "a process >= 90 %"
    assert saturated_by({k: str(v) for k, v in row.items()}) == "machine"
    assert saturated_by({"cpu_busiest": "client", "cpu_client_pct": 95.0}) == "client"
    assert saturated_by({"cpu_busiest": "client", "cpu_client_pct": ""}) == "machine"


def test_a_summary_names_each_flagged_point_once() -> None:
    """saturated_note: nothing when no point was flagged; else each flagged point once, sorted,
    whether the flag is read back as text ("True", a CSV) or as a boolean (a loader's frame)."""

    def label(row: Mapping[Any, Any]) -> str:
        return f"{row['mode']} run {row['run']}"

    calm = [{"mode": "tunnel", "run": 1, "cpu_saturated": "False"}, {"mode": "plain", "run": 1}]
    assert saturated_note(calm, label) == ""
    hot = {"cpu_busiest": "client", "cpu_client_pct": "95.0", "cpu_saturated": "True"}
    rows = [*calm, {"mode": "stream", "run": 2, **hot}, {"mode": "session", "run": 1,
            "cpu_saturated": True}, {"mode": "stream", "run": 2, **hot}]  # fmt: skip
    note = saturated_note(rows, label)
    assert note.startswith("\nCPU SATURATED")
    assert note.endswith(": session run 1 (machine); stream run 2 (client)")


def test_the_failover_summary_names_the_machine_when_no_process_filled_a_core(
    tmp_path: Path,
) -> None:
    """The failover sweep's run 2 (results/failover/20261207-145340): three points flagged with
    the machine at 180-182 % and the client, the busiest, at 71-72 %."""
    from experiments import failover

    columns = ["variant", "run", "event", "traffic", "gap_ms", "goodput_after_gap_mbps"]
    columns += ["goodput_during_mbps", "completed", "detail", "cpu_busiest", "cpu_client_pct"]
    columns += ["cpu_host_pct", "cpu_saturated"]
    cpu = [("72", "178", "False"), ("77", "182", "True"), ("95", "185", "True")]  # the 3rd: client
    rows = [
        ["engine", str(run), "link-down", "tcp", "350", "93.6", "", "True", "", "client", *c]
        for run, c in enumerate(cpu, 1)
    ]
    (tmp_path / "failover.csv").write_text("\n".join(",".join(r) for r in [columns, *rows]))
    (tmp_path / "meta.json").write_text("{}")
    text = failover.summary_table(tmp_path)
    assert "CPU SATURATED in 2 run(s) (client, machine)" in text


def test_the_meter_samples_live_processes_over_its_window() -> None:
    """A real window of about half a second: both processes get a figure (how large is the
    machine's business), a pid that does not exist gets None, and the thread ends."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        meter = CpuMeter({"child": child.pid, "me": os.getpid(), "gone": 2**22 + 7})
        start = time.monotonic()
        meter.start(start, start + 0.6)
        deadline = time.monotonic() + 10
        while meter._thread is not None and meter._thread.is_alive():
            assert time.monotonic() < deadline, "the meter's thread outlived its window"
            time.sleep(0.05)
        meter.stop()
    finally:
        child.kill()
        child.wait()
    usage = meter.usage()
    assert usage["child"] is not None and usage["child"] >= 0
    assert usage["me"] is not None and usage["me"] >= 0
    assert usage["gone"] is None
    assert meter.host_pct() is not None


def test_a_stopped_meter_does_not_wait_for_its_window() -> None:
    meter = CpuMeter({"me": os.getpid()}, skip_s=60.0)
    now = time.monotonic()
    meter.start(now, now + 120.0)
    meter.stop()  # returns at once: the thread was waiting for the window's start
    assert meter._thread is not None and not meter._thread.is_alive()
    assert meter.usage() == {"me": None}


def test_a_process_counts_its_running_children() -> None:
    """A concentrator with workers is a supervisor and its forked workers (README "Workers"):
    its CPU and RSS are theirs too."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in child_pids(os.getpid())
        own_rss = rss_mb(Path(f"/proc/{os.getpid()}/status").read_text())
        assert process_rss_mb(os.getpid()) > own_rss  # the child's pages too
        # own time first: this process keeps running between the two reads
        own = _own_cpu_seconds(os.getpid())
        assert cpu_seconds(os.getpid()) >= own
    finally:
        child.kill()
        child.wait()
    assert child.pid not in child_pids(os.getpid())


def test_pss_counts_the_pages_a_forked_worker_shares_once() -> None:
    """A supervisor and its forked workers share most of their pages: RSS summed over them
    counts those pages in each process, PSS divides them."""
    assert pss_mb("Rss:  10240 kB\nPss:   4096 kB\n") == 4.0
    with pytest.raises(ValueError, match="no Pss line"):
        pss_mb("Rss: 1 kB\n")
    pid = os.fork()
    if pid == 0:  # the child: the parent's pages, shared until written
        time.sleep(30)
        os._exit(0)
    try:
        assert pid in child_pids(os.getpid())
        both_pss, both_rss = process_pss_mb(os.getpid()), process_rss_mb(os.getpid())
        own_pss = pss_mb(Path(f"/proc/{os.getpid()}/smaps_rollup").read_text())
        assert own_pss < both_pss < both_rss
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_saturation_is_one_process_s_not_a_supervisor_s_with_its_workers() -> None:
    """Two workers at 60 % of a core each are 120 % for the concentrator's usage, but neither
    saturated its core: the flag and the busiest name follow the busiest single process."""
    meter = meter_with(
        {"concentrator": ((0.0, 0.0), (10.0, 12.0)), "client": ((0.0, 0.0), (10.0, 7.0))}
    )
    for pid, seconds in ((100, 0.1), (101, 6.0), (102, 5.9)):  # the supervisor, two workers
        meter.each_first[("concentrator", pid)] = (0.0, 0.0)
        meter.each_last[("concentrator", pid)] = (10.0, seconds)
    assert meter.usage()["concentrator"] == pytest.approx(120.0)
    assert meter.peak() == {"concentrator": pytest.approx(60.0), "client": pytest.approx(70.0)}
    row = cpu_columns(meter)
    assert row["cpu_concentrator_pct"] == pytest.approx(120.0)  # the column stays the total
    assert (row["cpu_busiest"], row["cpu_saturated"]) == ("client", False)
    meter.each_last[("concentrator", 101)] = (10.0, 9.5)  # one worker at 95 %: saturated
    assert (cpu_columns(meter)["cpu_busiest"], cpu_columns(meter)["cpu_saturated"]) == (
        "concentrator", True,
    )  # fmt: skip


def test_the_meter_reads_each_child_on_its_own() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meter = CpuMeter({"me": os.getpid()})
        meter.sample()
        deadline = time.monotonic() + 10
        while time.monotonic() < meter.first["me"][0] + 0.02:  # a reading later in time
            assert time.monotonic() < deadline
        meter.sample()
    finally:
        child.kill()
        child.wait()
    assert {("me", os.getpid()), ("me", child.pid)} <= set(meter.each_first)
    peak, usage = meter.peak()["me"], meter.usage()["me"]
    assert peak is not None and usage is not None and 0 <= peak <= usage


def test_the_shaper_columns_say_which_counters_hold_the_faults() -> None:
    """experiments/shaper_meter.py between two readings of qtwire's "stats" (its own reply
    text, parsed as the lab parses it): the sum of the three fault counters that moved, and
    which moved, so a flagged point says whether a send was refused, the cap was hit or the
    kernel's socket buffer overflowed."""
    start = "ab late_max_us=0.0 tx_err=2 drop_cap=0 kernel_drops=0 | ba tx_err=0 drop_cap=0"
    end = "ab late_max_us=9.0 tx_err=3 drop_cap=0 kernel_drops=4 | ba tx_err=0 drop_cap=0"

    def read(reply: str) -> dict[str, float]:
        return fault_counts({"shaper_wifi": stats_window(reply)})

    assert fault_change(read(start), read(end)) == (
        5,
        "shaper_wifi/ab/kernel_drops=4 shaper_wifi/ab/tx_err=1",
    )
    assert fault_change(read(end), read(end)) == (0, "")
    assert fault_change({}, read(start)) == (2, "shaper_wifi/ab/tx_err=2")
