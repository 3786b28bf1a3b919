"""Atomic status file writer: readers see whole documents only; periodic rewrite; no raise."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

from tunnel.aio.status import StatusWriter, write_json_atomic


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_json_atomic(path, {"state": "connecting", "session_id": b"\x01\x02"})
    write_json_atomic(path, {"state": "up", "n": 3})
    assert json.loads(path.read_text()) == {"state": "up", "n": 3}
    assert os.listdir(tmp_path) == ["status.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


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
