"""Atomic status file writer: readers see whole documents only; periodic rewrite; no raise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from pathlib import Path
from typing import Any

from tunnel.aio.status import REFRESH_SIGNAL, StatusWriter, write_json_atomic


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_json_atomic(path, {"state": "connecting", "session_id": b"\x01\x02"})
    write_json_atomic(path, {"state": "up", "n": 3})
    assert json.loads(path.read_text()) == {"state": "up", "n": 3}
    assert os.listdir(tmp_path) == ["status.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it names every client


def test_a_leftover_temporary_file_or_link_is_replaced_not_followed(tmp_path: Path) -> None:
    # the temporary name is fixed per process: what a dead process of the same pid, or someone
    # else, left under it is removed, and a link there is never written through
    path = tmp_path / "status.json"
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / f".status.json.{os.getpid()}.tmp").symlink_to(victim)
    write_json_atomic(path, {"state": "up"})
    assert json.loads(path.read_text()) == {"state": "up"}
    assert victim.read_text() == "untouched"
    assert sorted(os.listdir(tmp_path)) == ["status.json", "victim"]
    assert not path.is_symlink()


def test_bytes_are_hex(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_json_atomic(path, {"session_id": b"\xab\xcd", "set": (1, 2)})
    assert json.loads(path.read_text()) == {"session_id": "abcd", "set": [1, 2]}


def test_writer_periodic_and_final(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    state: dict[str, Any] = {"state": "up", "tick": 0}

    def snapshot() -> dict[str, Any]:
        state["tick"] += 1
        return dict(state)

    async def scenario() -> int:
        writer = StatusWriter(path, snapshot, interval=0.01)
        writer.start()
        await asyncio.sleep(0.1)
        state["state"] = "stopped"
        await writer.close()
        return writer.writes

    writes = asyncio.run(scenario())
    assert writes >= 3
    document = json.loads(path.read_text())
    assert document["state"] == "stopped" and document["tick"] == writes


def test_writer_without_path_is_noop() -> None:
    writer = StatusWriter(None, dict)
    writer.write()
    assert writer.writes == 0


def test_unwritable_directory_does_not_raise(tmp_path: Path) -> None:
    writer = StatusWriter(tmp_path / "missing" / "s.json", lambda: {"a": 1})
    writer.write()
    assert writer.writes == 0


def test_a_burst_of_writes_costs_one_write(tmp_path: Path) -> None:
    # An Access Report flood calls write() per report: the file is written once per min_gap.
    # The gap is long (10 s) so that a stalled CI machine cannot end it inside the burst; the
    # deferred write is then flushed by close().
    path = tmp_path / "s.json"
    state = {"reports": 0}

    async def scenario() -> tuple[int, int]:
        writer = StatusWriter(path, lambda: dict(state), interval=60.0, min_gap=10.0)
        writer.start()
        while writer.writes == 0:  # the periodic task's first write
            await asyncio.sleep(0.001)
        for _ in range(1000):
            state["reports"] += 1
            writer.write()
        during = writer.writes
        await writer.close()
        return during, writer.writes

    during, after = asyncio.run(scenario())
    assert during == 1
    assert after == 2
    assert json.loads(path.read_text())["reports"] == 1000


def test_a_deferred_write_lands_without_another_call(tmp_path: Path) -> None:
    # the write held back by min_gap happens on its own, with the state at that time
    path = tmp_path / "s.json"
    state = {"reports": 0}

    async def scenario() -> int:
        writer = StatusWriter(path, lambda: dict(state), interval=60.0, min_gap=0.05)
        writer.start()
        while writer.writes == 0:
            await asyncio.sleep(0.001)
        state["reports"] = 7
        writer.write()
        for _ in range(5000):  # bounded: min_gap is 0.05 s
            if writer.writes >= 2:
                break
            await asyncio.sleep(0.001)
        writes = writer.writes
        await writer.close()
        return writes

    assert asyncio.run(scenario()) == 2
    assert json.loads(path.read_text())["reports"] == 7


def test_refresh_signal_writes_now_and_is_ignored_after_close(tmp_path: Path) -> None:
    # waits in the testbed ask for fresh counters with SIGUSR1 instead of a short interval
    path = tmp_path / "s.json"
    state = {"tick": 0}

    def snapshot() -> dict[str, int]:
        state["tick"] += 1
        return dict(state)

    async def scenario() -> tuple[int, int]:
        writer = StatusWriter(path, snapshot, interval=60.0, min_gap=0.0)
        writer.start()
        while writer.writes == 0:  # the periodic task's first write
            await asyncio.sleep(0.001)
        os.kill(os.getpid(), REFRESH_SIGNAL)
        for _ in range(2000):  # bounded: the handler runs on the next loop iteration
            if writer.writes > 1:
                break
            await asyncio.sleep(0.001)
        refreshed = writer.writes
        await writer.close()
        os.kill(os.getpid(), REFRESH_SIGNAL)  # would end this process if not ignored now
        await asyncio.sleep(0)
        return refreshed, writer.writes

    previous = signal.getsignal(REFRESH_SIGNAL)
    try:
        refreshed, final = asyncio.run(scenario())
    finally:
        signal.signal(REFRESH_SIGNAL, previous)
    assert refreshed == 2
    assert final == 3  # close() wrote the last one; the late signal wrote nothing
    assert json.loads(path.read_text())["tick"] == 3
