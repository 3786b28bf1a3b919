"""A sweep run as shards on other machines, and the shards gathered back into one run directory.

The distributed executor (experiments/ray_executor.py) runs shard i of n on some node through
the same code path a local `qtlab run --shard i/n` takes (`run_experiment`), into a scratch
results root there, and sends what that wrote back as data (`ShardOutcome`), since nodes need
not share a filesystem: the shard run's meta.json, each table's CSV text, and a tar.gz of the
other files of the run directory and of the lab's program logs when it is small. Nothing here
knows about Ray: these functions are the node's and the driver's halves of a shard.

The driver merges the outcomes into one run directory shaped like a local run's:

    <table>.csv                    every shard's rows, in the sweep's point order
    meta.json                      the run's meta (parameters, seed, shard "1/1", so `qtlab rerun`
                                   works), the experiment's own keys from the first shard,
                                   `shards` (node, host, start/end, commit, counts, error per
                                   shard) and `missing` (each point with no row, and why)
    shards/<i>-of-<n>/meta.json    each shard's own meta.json, as it wrote it
    shards/<i>-of-<n>/...          its other files and the programs' logs (logs/), if sent

A shard that failed (its session raised, its node died, its table has other columns) is in
`shards` with its node and error, and its points are in `missing`: never a silent partial run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from experiments.runner import (
    Experiment,
    Params,
    Point,
    Row,
    TableWriter,
    run_experiment,
    shard_points,
    write_meta,
)
from tunnel.user_error import UserError

SHARDS_DIR = "shards"
# Logs travel through the object store only when small (a long sweep's pcaps would not be); a
# larger archive stays on the node, and its path is in the shard's entry.
ARCHIVE_LIMIT_BYTES = 16 * 2**20
ERROR_TAIL_CHARS = 2000


@dataclass
class ShardOutcome:
    """What one shard sends back to the driver: plain data, picklable, no paths it needs."""

    shard: tuple[int, int]
    points: int  # how many points the shard had to run
    node: str  # the executor's id of the node it ran on ("" if unknown)
    host: str  # that node's hostname ("" if unknown)
    meta: dict[str, Any] | None = None  # the shard run's meta.json; None: it never started
    tables: dict[str, str] = field(default_factory=dict)  # table -> the CSV text it wrote
    archive: bytes | None = None  # tar.gz: the run dir's other files and logs/
    archive_note: str = ""  # what the archive holds, or why there is none
    error: str | None = None  # why the shard did not run all its points (None: it did)

    @property
    def label(self) -> str:
        return f"{self.shard[0]}/{self.shard[1]}"

    @property
    def dir_name(self) -> str:
        return f"{self.shard[0]}-of-{self.shard[1]}"


# -- the node's half ----------------------------------------------------------------------------
def run_shard(
    exp: Experiment[Any], params: Params, shard: tuple[int, int], node: str = ""
) -> ShardOutcome:
    """Run one shard here, as `qtlab run --shard i/n` would, and pack what it wrote. Never
    raises for the experiment's sake: an error is returned in the outcome with the rows the
    shard wrote before it."""
    host = socket.gethostname()
    count = len(shard_points(exp.points(params), shard))
    if exp.session is not None and os.geteuid() != 0:
        return ShardOutcome(
            shard,
            count,
            node,
            host,
            error=f"the executor on {host} does not run as root, which Mininet needs: start "
            "it there as root (sudo ray start ...).",
        )
    scratch = Path(tempfile.mkdtemp(prefix="qtlab-shard-"))
    error: str | None = None
    keep = False
    try:
        try:
            summary = run_experiment(exp, params, shard, root=scratch, progress=False)
            if summary.failed:
                error = f"{summary.failed} point(s) failed (see their errors in meta.json)"
        except (Exception, KeyboardInterrupt) as exc:  # KeyboardInterrupt: a cancel; keep rows
            error = _error_text(exc)
            # A cancelled task's outcome never reaches the driver (Ray raises on it): what the
            # shard measured stays here, said in the node's log, instead of being deleted (a
            # review: Ctrl-C on a long sweep lost every running shard's rows).
            keep = isinstance(exc, KeyboardInterrupt)
        run_dirs = sorted((scratch / exp.name).glob("*/"))
        if keep and run_dirs:
            error = f"{error}; what it measured is kept on {host} in {run_dirs[0]}"
            print(f"qtlab shard {shard[0]}/{shard[1]}: {error}", file=sys.stderr)
        return pack_shard(exp, run_dirs[0] if run_dirs else None, shard, count, node, host, error)
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def _error_text(exc: BaseException) -> str:
    """A user's error is its sentence; anything else (a bug) keeps its traceback's tail."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (the run was cancelled)"
    return "".join(traceback.format_exception(exc)).strip()[-ERROR_TAIL_CHARS:]


def pack_shard(
    exp: Experiment[Any],
    run_dir: Path | None,
    shard: tuple[int, int],
    points: int,
    node: str,
    host: str,
    error: str | None,
    limit_bytes: int = ARCHIVE_LIMIT_BYTES,
) -> ShardOutcome:
    """A shard run directory (and the lab's logs its meta names) as data for the driver."""
    outcome = ShardOutcome(shard, points, node, host, error=error)
    if run_dir is None:
        outcome.archive_note = "the shard wrote no run directory"
        return outcome
    import json

    with contextlib.suppress(OSError, ValueError):
        outcome.meta = json.loads((run_dir / "meta.json").read_text())
    for name in exp.tables:
        path = run_dir / f"{name}.csv"
        if path.exists():
            outcome.tables[name] = path.read_text()
    skip = {"meta.json", *(f"{name}.csv" for name in exp.tables)}
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in skip]
    members = [(p, str(p.relative_to(run_dir))) for p in files]
    logs = _log_dir(outcome.meta)
    if logs is not None:
        members += [(p, f"logs/{p.relative_to(logs)}") for p in sorted(logs.rglob("*"))]
    members = [(p, name) for p, name in members if p.is_file()]
    if not members:
        outcome.archive_note = (
            "no files beside the tables"
            if logs is None
            else f"no files beside the tables, and no logs in {logs}"
        )
        return outcome
    size = sum(p.stat().st_size for p, _ in members)
    if size > limit_bytes:
        where = f"{run_dir} (removed)" if logs is None else str(logs)
        outcome.archive_note = (
            f"not sent: {size / 2**20:.1f} MiB of files is over {limit_bytes / 2**20:.0f} MiB; "
            f"the logs stay on {host} in {where}"
        )
        return outcome
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, name in members:
            tar.add(path, arcname=name, recursive=False)
    outcome.archive = buffer.getvalue()
    outcome.archive_note = f"{len(members)} file(s), {size} bytes" + (
        f", the programs' logs from {host}:{logs}" if logs is not None else ""
    )
    return outcome


def _log_dir(meta: dict[str, Any] | None) -> Path | None:
    """The lab's program-log directory its meta records (Lab.describe), if it still exists."""
    lab = (meta or {}).get("lab")
    path = lab.get("log_dir") if isinstance(lab, dict) else None
    return Path(path) if isinstance(path, str) and Path(path).is_dir() else None


# -- the driver's half --------------------------------------------------------------------------
@dataclass
class MergeCounts:
    """What the merged run holds, in the terms of runner.RunSummary."""

    measured: int
    skipped: int
    failed: int
    missing: int


def _rows_of(text: str) -> tuple[list[str], list[Row]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def _check_tables(exp: Experiment[Any], outcome: ShardOutcome) -> dict[str, list[Row]]:
    """The outcome's rows per table; a table whose columns are not this checkout's turns the
    shard into a failed one (its node runs other code): merging it would break the schema."""
    tables: dict[str, list[Row]] = {}
    for name, text in outcome.tables.items():
        columns, rows = _rows_of(text)
        want = exp.tables.get(name)
        if want is None or (rows and columns != want):
            outcome.error = (
                f"its {name}.csv has other columns than this checkout's experiment: run the "
                "same commit on every node"
            )
            return {}
        tables[name] = rows
    return tables


def _point_order(exp: Experiment[Any], points: Sequence[Point]) -> dict[tuple[str, ...], int]:
    return {p.key(exp.key_columns): k for k, p in enumerate(points)}


def _sorted_rows(
    exp: Experiment[Any], columns: list[str], rows: list[Row], order: dict[tuple[str, ...], int]
) -> list[Row]:
    """In the sweep's point order (as a local run writes them) when the table has the key
    columns; else as the shards gave them, shard after shard."""
    if not set(exp.key_columns) <= set(columns):
        return rows
    last = len(order)
    return sorted(rows, key=lambda r: order.get(tuple(r[c] for c in exp.key_columns), last))


def extract_archive(data: bytes, into: Path) -> int:
    """Unpack a shard's archive under `into`: regular files and directories with relative paths
    only (it comes over the network), never a link or a path out of `into`. Returns the count."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                continue
            target = into.joinpath(*name.parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
            count += 1
    return count


def _agreed(values: list[Any]) -> Any:
    """One value when every shard recorded the same, else "mixed" (each is in `shards`)."""
    if not values:
        return None
    return values[0] if all(v == values[0] for v in values) else "mixed (see shards)"


def shard_entry(outcome: ShardOutcome, measured: int) -> dict[str, Any]:
    meta = outcome.meta or {}
    return {
        "shard": outcome.label,
        "node": outcome.node,
        "host": outcome.host or meta.get("hostname", ""),
        "started": meta.get("started"),
        "finished": meta.get("finished"),
        "git_commit": meta.get("git_commit"),
        "git_dirty": meta.get("git_dirty"),
        "kernel": meta.get("kernel"),
        "backend": meta.get("backend"),
        "points": outcome.points,
        "measured": measured,
        "skipped": len(meta.get("skipped") or []),
        "failed": len(meta.get("failed") or []),
        "error": outcome.error,
        "files": f"{SHARDS_DIR}/{outcome.dir_name}",
        "logs": outcome.archive_note,
    }


def merge_shards(
    exp: Experiment[Any],
    points: Sequence[Point],
    outcomes: Sequence[ShardOutcome],
    run_dir: Path,
    meta: dict[str, Any],
) -> MergeCounts:
    """Write the outcomes into `run_dir` (whose meta.json the driver began as `meta`): merged
    tables, per-shard files, and meta's shards, skipped, failed and missing points."""
    outcomes = sorted(outcomes, key=lambda o: o.shard)
    order = _point_order(exp, points)
    merged: dict[str, list[Row]] = {name: [] for name in exp.tables}
    measured_by: dict[str, int] = {}
    shard_metas: list[dict[str, Any]] = []
    for outcome in outcomes:
        tables = _check_tables(exp, outcome)
        primary = tables.get(exp.primary, [])
        measured_by[outcome.label] = len({tuple(r[c] for c in exp.key_columns) for r in primary})
        for name, rows in tables.items():
            merged[name].extend(rows)
        shard_dir = run_dir / SHARDS_DIR / outcome.dir_name
        shard_dir.mkdir(parents=True, exist_ok=True)
        if outcome.meta is not None:
            write_meta(shard_dir, outcome.meta)
            shard_metas.append(outcome.meta)
        if outcome.archive is not None:
            extract_archive(outcome.archive, shard_dir)
    for name, columns in exp.tables.items():
        rows = _sorted_rows(exp, columns, merged[name], order)
        TableWriter(run_dir / f"{name}.csv", columns).write(rows)

    # The experiment's own keys (lab, links, variants' configurations) from the first shard
    # that recorded them; the run's own keys stay the driver's.
    for shard_meta in shard_metas:
        for key, value in shard_meta.items():
            if key not in meta:
                meta[key] = value
    for key in ("backend", "kernel", "software"):
        meta[key] = _agreed([m.get(key) for m in shard_metas if m.get(key) is not None])
    meta["fidelity"] = [
        {**row, "shard": m.get("shard")} for m in shard_metas for row in m.get("fidelity") or []
    ]
    variants: list[str] = []
    for m in shard_metas:
        variants += [v for v in m.get("variants") or [] if v not in variants]
    meta["variants"] = variants
    meta["skipped"] = [
        {**entry, "shard": m.get("shard")} for m in shard_metas for entry in m.get("skipped") or []
    ]
    hosts = {o.label: o.host for o in outcomes}
    meta["failed"] = [
        {**entry, "shard": m.get("shard"), "host": hosts.get(str(m.get("shard")), "")}
        for m in shard_metas
        for entry in m.get("failed") or []
    ]
    meta["shards"] = [shard_entry(o, measured_by.get(o.label, 0)) for o in outcomes]
    commits = {m.get("git_commit") for m in shard_metas}
    if commits - {meta.get("git_commit")}:
        meta["git_commits_differ"] = sorted(str(c) for c in commits)

    # Missing: every point of the sweep with neither a row in the primary table nor a skip.
    have = {tuple(r[c] for c in exp.key_columns) for r in merged[exp.primary]}
    skipped = {Point(e["point"]).key(exp.key_columns) for e in meta["skipped"]}
    failed = {Point(e["point"]).key(exp.key_columns): e for e in meta["failed"]}
    missing: list[dict[str, Any]] = []
    for outcome in outcomes:
        for point in shard_points(points, outcome.shard):
            point_key = point.key(exp.key_columns)
            if point_key in have or point_key in skipped:
                continue
            if point_key in failed:
                reason = f"the point failed: {failed[point_key].get('error')}"
            elif outcome.error is not None:
                reason = f"shard {outcome.label} on {outcome.host or '?'}: {outcome.error}"
            else:
                reason = f"shard {outcome.label} returned no row for it"
            missing.append({"point": point.values, "shard": outcome.label, "reason": reason})
    meta["missing"] = missing
    write_meta(run_dir, meta)
    return MergeCounts(
        measured=len(have),
        skipped=len(meta["skipped"]),
        failed=len(meta["failed"]),
        missing=len(missing),
    )


def failed_outcome(
    shard: tuple[int, int], points: int, error: str, node: str = "", host: str = ""
) -> ShardOutcome:
    """A shard the executor could not run or whose result never came back."""
    return ShardOutcome(shard, points, node, host, error=error, archive_note="nothing came back")
