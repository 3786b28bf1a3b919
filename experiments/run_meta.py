"""A results run directory's meta.json, read for a command that was given the directory, and
the one way the experiment commands read a text file they were given (`read_text_file`).

`qtlab figure`, `compare`, `rerun` and `run --resume` take a run directory on the command line;
whatever the path turns out to be (a file, an empty directory, a meta.json that is not JSON or
not an object), the command says so in one sentence and exits 2, instead of failing later on
what it expected to find. The same holds for every file they read (a --config file, a results
CSV, meta.json): a directory in its place, a file that cannot be read or is not UTF-8 is said
in one sentence naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunnel.user_error import UsageError, UserError


class ResultsError(UserError):
    """Results are missing or do not follow the schema; the message is one sentence.
    (Here rather than in experiments/analysis.py so that RunDirError can be one without the
    runner importing the plotting module.)"""


class RunDirError(ResultsError, UsageError):
    """A path given as a results run directory is not one; str() is one sentence. A
    ResultsError (whatever reads results optionally catches it too) with exit code 2."""


def read_text_file(path: Path, what: str, hint: str, error: type[UserError]) -> str:
    """The UTF-8 text of the `what` (a few words: "config", "results CSV") at `path`, or
    `error` with one sentence naming the file, why it cannot be read, and then `hint` (what
    to do)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        raise error(
            f"{what} {path} is not UTF-8 text (byte {byte:#04x} at offset {exc.start}): {hint}."
        ) from None
    except OSError as exc:
        raise error(f"cannot read {what} {path} ({exc.strerror or exc}): {hint}.") from None


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """The parsed meta.json of `run_dir` (results/<experiment>/<timestamp>), or RunDirError."""
    run_dir = Path(run_dir)
    hint = "give a results run directory (results/<experiment>/<timestamp>)"
    if not run_dir.is_dir():
        what = "does not exist" if not run_dir.exists() else "is not a directory"
        raise RunDirError(f"{run_dir} {what}: {hint}.")
    path = run_dir / "meta.json"
    if not path.exists():
        raise RunDirError(f"{path} is missing: {hint}.")
    try:
        meta = json.loads(read_text_file(path, "run metadata", hint, RunDirError))
    except json.JSONDecodeError as exc:
        raise RunDirError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): {hint}."
        ) from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path} holds no JSON object: {hint}.")
    return meta
