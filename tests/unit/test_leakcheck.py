"""tests/leakcheck.py: only what appeared during the run counts as left behind."""

from __future__ import annotations

import json
from pathlib import Path

from tests.leakcheck import leaks, main


def test_only_new_things_are_leaks() -> None:
    before = {"netns": {"theirs"}, "links": {"lo", "eth0"}, "processes": set()}
    after = {"netns": {"theirs", "qst-1"}, "links": {"lo"}, "processes": {"12 qtun client"}}
    assert leaks(before, after) == {"netns": ["qst-1"], "processes": ["12 qtun client"]}
    assert leaks(after, after) == {}


def test_check_fails_on_what_was_not_there_before(tmp_path: Path) -> None:
    state = tmp_path / "before.json"
    assert main(["save", str(state)]) == 0
    assert "lo" in json.loads(state.read_text())["links"]
    state.write_text(json.dumps({"netns": [], "links": [], "nft tables": [], "processes": []}))
    assert main(["check", str(state)]) == 1  # the loopback, at least, is new to it
    assert main(["bogus"]) == 2
