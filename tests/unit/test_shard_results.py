"""Shards run elsewhere and merged into one run directory (experiments/shard_results.py), and
the `--executor ray` checks that need no cluster (experiments/ray_executor.py, runner): no root,
no Ray; the Ray run itself is tests/integration/test_ray_executor.py."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from experiments import runner
from experiments.runner import (
    Context,
    Experiment,
    ExperimentError,
    Point,
    PointResult,
    RayExecutor,
    execute,
    executor_from_args,
    resolve_params,
    run_experiment,
)
from experiments.shard_results import (
    ShardOutcome,
    extract_archive,
    failed_outcome,
    merge_shards,
    pack_shard,
    run_shard,
)
from tunnel.user_error import RuntimeFailure


def sweep(fail: tuple[int, int] | None = None, skip: tuple[int, int] | None = None) -> Any:
    """An experiment without a testbed: points size x run, a primary table keyed by them and a
    second table without the `run` key (merged shard after shard)."""

    def points(params: dict[str, Any]) -> list[Point]:
        return [
            Point({"size": s, "run": r}) for s in params["sizes"] for r in range(params["runs"])
        ]

    def run_point(ctx: Context[None], point: Point) -> PointResult:
        if (point["size"], point["run"]) == fail:
            raise RuntimeError("the probe broke")
        if (point["size"], point["run"]) == skip:
            return PointResult(skipped="not measured on purpose")
        return PointResult(
            rows={
                "sweep": [{**point.values, "value": point["size"] * 1.5, "seed": ctx.seed}],
                "notes": [{"size": point["size"], "note": f"run {point['run']}"}],
            }
        )

    exp: Experiment[None] = Experiment(
        name="sweep",
        defaults={"sizes": [1, 2, 3, 4, 5], "runs": 2, "seed": 3},
        tables={"sweep": ["size", "run", "value", "seed"], "notes": ["size", "note"]},
        key_columns=("size", "run"),
        points=points,
        run_point=run_point,
    )
    return exp


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def driver_meta(exp: Any, params: dict[str, Any]) -> dict[str, Any]:
    return {"experiment": exp.name, "parameters": params, "shard": "1/1", "git_commit": None}


def merged_run(
    tmp_path: Path, exp: Any, outcomes: list[ShardOutcome]
) -> tuple[Path, dict[str, Any], Any]:
    params = resolve_params(exp)
    run_dir = tmp_path / "merged"
    run_dir.mkdir()
    meta = driver_meta(exp, params)
    counts = merge_shards(exp, exp.points(params), outcomes, run_dir, meta)
    return run_dir, json.loads((run_dir / "meta.json").read_text()), counts


def test_merged_shards_equal_a_local_run(tmp_path: Path) -> None:
    exp = sweep()
    params = resolve_params(exp)
    local = run_experiment(exp, params, root=tmp_path / "local", progress=False).run_dir
    outcomes = [run_shard(exp, params, (i, 3), node=f"node{i}") for i in (3, 1, 2)]
    assert [o.points for o in sorted(outcomes, key=lambda o: o.shard)] == [4, 3, 3]
    assert all(o.error is None and o.host for o in outcomes)
    run_dir, meta, counts = merged_run(tmp_path, exp, outcomes)
    # the same rows in the same (point) order as the local run, seeds included
    assert read(run_dir / "sweep.csv") == read(local / "sweep.csv")
    assert sorted(map(str, read(run_dir / "notes.csv"))) == sorted(
        map(str, read(local / "notes.csv"))
    )
    assert (counts.measured, counts.skipped, counts.failed, counts.missing) == (10, 0, 0, 0)
    assert meta["missing"] == [] and meta["shard"] == "1/1"
    assert [s["shard"] for s in meta["shards"]] == ["1/3", "2/3", "3/3"]
    first = meta["shards"][0]
    assert first["node"] == "node1" and first["measured"] == 4 and first["error"] is None
    assert first["started"] and first["finished"] and "git_commit" in first
    shard_meta = json.loads((run_dir / "shards" / "1-of-3" / "meta.json").read_text())
    assert shard_meta["shard"] == "1/3" and shard_meta["experiment"] == "sweep"


def test_a_failed_shard_and_a_failed_point_are_missing_with_their_reasons(
    tmp_path: Path,
) -> None:
    exp = sweep(fail=(2, 0), skip=(5, 0))
    params = resolve_params(exp)
    ok = run_shard(exp, params, (1, 2), node="n1")  # points 0, 2, 4...: every run 0
    assert ok.error is not None and "1 point(s) failed" in ok.error
    lost = failed_outcome((2, 2), 5, "The worker died unexpectedly", node="n2", host="far")
    run_dir, meta, counts = merged_run(tmp_path, exp, [ok, lost])
    assert counts.measured == 3 and counts.failed == 1 and counts.missing == 6
    keys = {(m["point"]["size"], m["point"]["run"]): m for m in meta["missing"]}
    assert "the probe broke" in keys[2, 0]["reason"]
    assert keys[1, 1]["shard"] == "2/2" and "far" in keys[1, 1]["reason"]
    assert "worker died" in keys[1, 1]["reason"]
    assert (5, 0) not in keys and (5, 1) in keys  # skipped on purpose; never run
    assert meta["shards"][1]["error"] == "The worker died unexpectedly"
    assert meta["failed"][0]["shard"] == "1/2" and meta["failed"][0]["host"] == ok.host
    assert len(read(run_dir / "sweep.csv")) == 3


def test_skipped_points_are_not_missing(tmp_path: Path) -> None:
    exp = sweep(skip=(5, 1))
    params = resolve_params(exp)
    outcomes = [run_shard(exp, params, (i, 2)) for i in (1, 2)]
    _, meta, counts = merged_run(tmp_path, exp, outcomes)
    assert counts.missing == 0 and counts.skipped == 1
    assert meta["skipped"][0]["point"] == {"size": 5, "run": 1}


def test_a_shard_with_other_columns_is_refused_not_merged(tmp_path: Path) -> None:
    exp = sweep()
    params = resolve_params(exp)
    good = run_shard(exp, params, (1, 2))
    other = run_shard(exp, params, (2, 2))
    other.tables["sweep"] = "size,run,value\n1,1,1.5\n"
    run_dir, meta, counts = merged_run(tmp_path, exp, [good, other])
    assert counts.missing == 5
    assert "same commit on every node" in meta["shards"][1]["error"]
    assert [r["run"] for r in read(run_dir / "sweep.csv")] == ["0"] * 5  # shard 1's alone


def test_pack_sends_the_lab_logs_when_small(tmp_path: Path) -> None:
    exp = sweep()
    run_dir, logs = tmp_path / "run", tmp_path / "lab-logs"
    run_dir.mkdir()
    (logs / "c1").mkdir(parents=True)
    (logs / "c1" / "qtun.log").write_text("client up\n")
    (run_dir / "capture.pcap").write_bytes(b"\xd4\xc3\xb2\xa1")
    (run_dir / "sweep.csv").write_text("size,run,value,seed\n1,0,1.5,9\n")
    meta = {"shard": "1/1", "lab": {"log_dir": str(logs)}}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    outcome = pack_shard(exp, run_dir, (1, 1), 1, "n", "h", None)
    assert outcome.archive is not None and "2 file(s)" in outcome.archive_note
    assert outcome.tables == {"sweep": "size,run,value,seed\n1,0,1.5,9\n"}
    into = tmp_path / "out"
    assert extract_archive(outcome.archive, into) == 2
    assert (into / "logs" / "c1" / "qtun.log").read_text() == "client up\n"
    assert (into / "capture.pcap").exists()
    big = pack_shard(exp, run_dir, (1, 1), 1, "n", "h", None, limit_bytes=4)
    assert big.archive is None and "not sent" in big.archive_note and str(logs) in big.archive_note


def test_extract_keeps_inside_its_directory(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("../escape.txt", "/abs.txt", "fine/ok.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("fine/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    into = tmp_path / "into"
    assert extract_archive(buffer.getvalue(), into) == 1
    assert [p.name for p in into.rglob("*") if p.is_file()] == ["ok.txt"]
    assert not (tmp_path / "escape.txt").exists()


def test_rerun_of_a_merged_run_runs_every_point_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = sweep()
    params = resolve_params(exp)
    run_dir = tmp_path / "sweep" / "20260101-000000"
    run_dir.mkdir(parents=True)
    meta = driver_meta(exp, params) | {"executor": {"name": "ray", "shards": 2}}
    merge_shards(exp, exp.points(params), [run_shard(exp, params, (i, 2)) for i in (1, 2)],
                 run_dir, meta)  # fmt: skip
    monkeypatch.setattr(runner, "get_experiment", lambda name: exp)
    _, summary = runner.rerun(run_dir, progress=False)
    assert summary.ran == 10 and summary.missing == 0
    assert read(summary.run_dir / "sweep.csv") == read(run_dir / "sweep.csv")
    assert json.loads((summary.run_dir / "meta.json").read_text())["rerun_of"]["run"] == str(
        run_dir
    )


def _args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**({"executor": "local", "address": None, "shards": None} | kw))


def test_executor_arguments() -> None:
    assert executor_from_args(_args()) is None
    assert executor_from_args(_args(executor="ray", address="h:1", shards=3)) == RayExecutor(
        "h:1", 3
    )
    with pytest.raises(ExperimentError, match="go with --executor ray"):
        executor_from_args(_args(address="h:1"))
    with pytest.raises(ExperimentError, match="needs --address"):
        executor_from_args(_args(executor="ray"))
    with pytest.raises(ExperimentError, match="at least 1"):
        executor_from_args(_args(executor="ray", address="h:1", shards=0))
    exp = sweep()
    with pytest.raises(ExperimentError, match="drop --shard and --resume"):
        execute(exp, resolve_params(exp), RayExecutor("h:1"), shard=(1, 2))


def test_ray_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import raises
    with pytest.raises(RuntimeFailure, match=r"pip install -e '\.\[distributed\]'"):
        ray_executor.connect("127.0.0.1:1")


def test_unreachable_or_malformed_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from experiments import ray_executor

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RuntimeFailure, match=r"no Ray cluster answers at .*ray start --head"):
        ray_executor._check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ExperimentError, match="write HOST:PORT"):
        ray_executor._check_reachable("localhost")


def test_resume_here_runs_only_what_a_failed_shard_left_missing(tmp_path: Path) -> None:
    exp = sweep()
    params = resolve_params(exp)
    lost = failed_outcome((2, 2), 5, "The node died", host="far")
    run_dir, _, counts = merged_run(tmp_path, exp, [run_shard(exp, params, (1, 2)), lost])
    assert counts.missing == 5
    summary = run_experiment(exp, params, resume=run_dir, progress=False)
    assert (summary.ran, summary.already_done) == (5, 5)
    keys = sorted((r["size"], r["run"]) for r in read(run_dir / "sweep.csv"))
    assert keys == sorted((str(s), str(r)) for s in range(1, 6) for r in range(2))


def test_a_cancelled_shard_keeps_what_it_measured_on_its_node(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ray cancels a task with a KeyboardInterrupt and its outcome never reaches the driver:
    the shard's run directory was deleted with the rows of every point it had measured. It is
    kept now, and the node's log says where."""
    exp = sweep()
    inner = exp.run_point
    done: list[int] = []

    def cancelled_at_the_third(ctx: Context[None], point: Point) -> PointResult:
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return inner(ctx, point)

    exp = dataclasses.replace(exp, run_point=cancelled_at_the_third)
    outcome = run_shard(exp, resolve_params(exp), (1, 1))
    assert outcome.error is not None and "interrupted" in outcome.error
    kept = Path(outcome.error.rsplit(" in ", 1)[1])
    try:
        assert kept.is_dir() and len(read(kept / "sweep.csv")) == 2
        assert str(kept) in capsys.readouterr().err
    finally:
        shutil.rmtree(kept.parent.parent)
