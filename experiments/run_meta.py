"""A results run directory's meta.json, read for a command that was given the directory.

`qtlab figure`, `compare`, `rerun` and `run --resume` take a run directory on the command line;
whatever the path turns out to be (a file, an empty directory, a meta.json that is not JSON or
not an object), the command says so in one sentence and exits 2, instead of failing later on
what it expected to find.
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


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """The parsed meta.json of `run_dir` (results/<experiment>/<timestamp>), or RunDirError."""
    run_dir = Path(run_dir)
    hint = "give a results run directory (results/<experiment>/<timestamp>)"
    if not run_dir.is_dir():
        what = "does not exist" if not run_dir.exists() else "is not a directory"
        raise RunDirError(f"{run_dir} {what}: {hint}.")
    path = run_dir / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: {hint}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} cannot be read ({exc}): {hint}.") from None
    except json.JSONDecodeError as exc:
        raise RunDirError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): {hint}."
        ) from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path} holds no JSON object: {hint}.")
    return meta
