"""experiments.runner: parameters, shards, seeds, results layout, meta.json and resume."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.run_meta import RunDirError
from experiments.runner import (
    NON_NEGATIVE,
    PERCENT,
    POSITIVE,
    Context,
    Experiment,
    ExperimentError,
    Point,
    PointResult,
    check_lab_params,
    execute,
    parse_shard,
    parse_value,
    point_seed,
    resolve_params,
    run_experiment,
    shard_points,
)

DEFAULTS = {"sizes": [1, 2, 3], "runs": 2, "seed": 7, "scale": 1.0, "label": "x"}


def toy(calls: list[dict[str, object]], fail_on: set[int] | None = None) -> Experiment[None]:
    """A real experiment without a testbed: each point computes size * scale."""

    def points(params: dict[str, object]) -> list[Point]:
        sizes = params["sizes"]
        assert isinstance(sizes, list)
        runs = params["runs"]
        assert isinstance(runs, int)
        return [Point({"size": s, "run": r}) for s in sizes for r in range(1, runs + 1)]

    def run_point(ctx: Context[None], point: Point) -> PointResult:
        calls.append(dict(point.values))
        if fail_on and point["size"] in fail_on:
            raise RuntimeError(f"size {point['size']} broke")
        if point["size"] == 2 and point["run"] == 2:
            return PointResult(skipped="two twice is not measured")
        value = point["size"] * ctx.params["scale"]
        rows = {
            "toy": [{"size": point["size"], "run": point["run"], "value": value}],
            "toy_series": [{"size": point["size"], "t": t, "seed": ctx.seed} for t in (0, 1)],
        }
        return PointResult(rows=rows)

    return Experiment(
        name="toy",
        defaults=DEFAULTS,
        quick={"sizes": [1], "runs": 1},
        tables={"toy": ["size", "run", "value"], "toy_series": ["size", "t", "seed"]},
        key_columns=("size", "run"),
        points=points,
        run_point=run_point,
    )


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_parameters_layer_defaults_quick_config_runs_and_sets(tmp_path: Path) -> None:
    exp = toy([])
    assert resolve_params(exp)["sizes"] == [1, 2, 3]
    assert resolve_params(exp, quick=True)["sizes"] == [1]
    config = tmp_path / "c.toml"
    config.write_text('[toy]\nlabel = "from-file"\nruns = 5\n')
    params = resolve_params(exp, config=config, runs=3, sets=["scale=2", "sizes=[4]"])
    assert params["label"] == "from-file"
    assert params["runs"] == 3  # --runs beats the file
    assert params["scale"] == 2.0 and isinstance(params["scale"], float)
    assert params["sizes"] == [4]
    flat = tmp_path / "flat.toml"
    flat.write_text("seed = 9\n")
    assert resolve_params(exp, config=flat)["seed"] == 9


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["nope=1"], "unknown parameter"),
        (["runs=many"], "must be an integer"),
        (["runs=0"], "between 1 and 1000"),
        (["runs=100000000"], "between 1 and 1000"),
        (["justakey"], "write key=value"),
    ],
)
def test_bad_parameters_get_one_sentence(sets: list[str], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        resolve_params(toy([]), sets=sets)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"backend": "bogus"}, "parameter backend: unknown backend 'bogus'; choose one of auto"),
        ({"wifi_profile": "nosuch"}, "parameter wifi_profile: unknown link profile 'nosuch'"),
        ({"congestion_control": "no such"}, "is not the name of a TCP congestion control"),
        ({"cc": "bogus"}, "parameter cc: TCP congestion control 'bogus' is not in this kernel"),
    ],
)
def test_lab_parameters_are_checked_before_anything_is_made(
    tmp_path: Path, params: dict[str, str], message: str
) -> None:
    with pytest.raises(ExperimentError, match=message) as caught:
        check_lab_params(params)
    assert caught.value.exit_code == 2
    exp = toy([])
    exp.defaults = {**DEFAULTS, **dict.fromkeys(params, "")}
    with pytest.raises(ExperimentError, match=message):
        run_experiment(exp, {**resolve_params(exp), **params}, root=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no run directory left behind
    check_lab_params({"backend": "wire", "wifi_profile": "lte", "cc": "cubic"})


def test_bad_config_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("= nope")
    with pytest.raises(ExperimentError, match="not valid TOML"):
        resolve_params(toy([]), config=bad)
    with pytest.raises(ExperimentError, match="cannot read config"):
        resolve_params(toy([]), config=tmp_path / "missing.toml")


def test_table_parameters_merge_per_entry(tmp_path: Path) -> None:
    """A parameter whose default is a table (the qtun variants): a config replaces or adds
    whole entries, --set NAME.ENTRY.KEY=... changes one key of one entry."""
    exp = toy([])
    exp.defaults = {**DEFAULTS, "qtun": {"a": {"mode": "tunnel", "client": ["x=1"]}}}
    config = tmp_path / "c.toml"
    config.write_text('[toy.qtun.b]\nmode = "session"\n')
    params = resolve_params(exp, config=config, sets=['qtun.a.client=["y=2"]'])
    assert params["qtun"] == {
        "a": {"mode": "tunnel", "client": ["y=2"]},
        "b": {"mode": "session"},
    }
    config.write_text('[toy.qtun.a]\nscheduler = "wrr"\n')  # a file's entry replaces it
    assert resolve_params(exp, config=config)["qtun"]["a"] == {"scheduler": "wrr"}
    assert exp.defaults["qtun"]["a"]["client"] == ["x=1"]  # defaults never mutated
    with pytest.raises(ExperimentError, match="must be a table"):
        resolve_params(exp, sets=["qtun=3"])
    with pytest.raises(ExperimentError, match="is given a value and keys"):
        resolve_params(exp, sets=["qtun.a=1", "qtun.a.mode=x"])


def test_set_values_are_toml_or_bare_strings() -> None:
    assert parse_value("1") == 1
    assert parse_value("0.5") == 0.5
    assert parse_value("true") is True
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("cubic") == "cubic"


def test_shards_are_disjoint_and_cover_every_point() -> None:
    points = [Point({"i": i}) for i in range(11)]
    shards = [shard_points(points, (i, 3)) for i in (1, 2, 3)]
    seen = [p.values["i"] for shard in shards for p in shard]
    assert sorted(seen) == list(range(11))
    assert len(seen) == len(set(seen))
    assert shard_points(points, (2, 3)) == shards[1]  # deterministic
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "x", "1-2"):
        with pytest.raises(ExperimentError):
            parse_shard(bad)


def test_point_seed_depends_on_seed_and_key_only() -> None:
    assert point_seed(1, ("a", "1")) == point_seed(1, ("a", "1"))
    assert point_seed(1, ("a", "1")) != point_seed(2, ("a", "1"))
    assert point_seed(1, ("a", "1")) != point_seed(1, ("a", "2"))


def test_run_writes_tables_and_meta(tmp_path: Path) -> None:
    calls: list[dict[str, object]] = []
    exp = toy(calls)
    summary = run_experiment(exp, resolve_params(exp), root=tmp_path, progress=False)
    assert summary.run_dir.parent == tmp_path / "toy"
    assert len(summary.run_dir.name) == len("20240101-120000")
    rows = read(summary.run_dir / "toy.csv")
    assert [(r["size"], r["run"]) for r in rows] == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("3", "1"),
        ("3", "2"),
    ]
    assert [float(r["value"]) for r in rows] == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert len(read(summary.run_dir / "toy_series.csv")) == 10
    meta = json.loads((summary.run_dir / "meta.json").read_text())
    for key in (
        "experiment",
        "started",
        "finished",
        "git_commit",
        "git_dirty",
        "kernel",
        "hostname",
        "backend",
        "seed",
        "parameters",
        "fidelity",
        "variants",
        "software",
    ):
        assert key in meta
    assert meta["parameters"]["sizes"] == [1, 2, 3]
    assert meta["seed"] == 7
    assert meta["skipped"] == [
        {"point": {"size": 2, "run": 2}, "reason": "two twice is not measured"}
    ]
    assert "python" in meta["software"]
    assert (summary.ran, summary.skipped, summary.failed) == (5, 1, 0)


def test_resume_runs_only_what_is_missing(tmp_path: Path) -> None:
    calls: list[dict[str, object]] = []
    exp = toy(calls, fail_on={3})
    first = run_experiment(exp, resolve_params(exp), root=tmp_path, progress=False)
    assert first.failed == 2
    meta = json.loads((first.run_dir / "meta.json").read_text())
    assert [f["point"]["size"] for f in meta["failed"]] == [3, 3]
    assert "size 3 broke" in meta["failed"][0]["error"]
    calls.clear()
    exp_fixed = toy(calls)
    again = run_experiment(
        exp_fixed, resolve_params(exp_fixed), resume=first.run_dir, root=tmp_path, progress=False
    )
    assert again.run_dir == first.run_dir
    # Done points are skipped; the skipped one (no rows) and the failed ones run again.
    assert calls == [{"size": 2, "run": 2}, {"size": 3, "run": 1}, {"size": 3, "run": 2}]
    assert again.already_done == 3
    rows = read(first.run_dir / "toy.csv")
    assert len(rows) == 5
    assert len({(r["size"], r["run"]) for r in rows}) == 5
    assert "resumed" in json.loads((first.run_dir / "meta.json").read_text())


def test_shards_of_one_sweep_add_up(tmp_path: Path) -> None:
    calls: list[dict[str, object]] = []
    exp = toy(calls)
    params = resolve_params(exp)
    dirs = [
        run_experiment(exp, params, shard=(i, 2), root=tmp_path / str(i), progress=False).run_dir
        for i in (1, 2)
    ]
    keys = [(r["size"], r["run"]) for d in dirs for r in read(d / "toy.csv")]
    assert sorted(keys) == [("1", "1"), ("1", "2"), ("2", "1"), ("3", "1"), ("3", "2")]
    assert json.loads((dirs[1] / "meta.json").read_text())["shard"] == "2/2"


def test_resume_refuses_a_wrong_directory(tmp_path: Path) -> None:
    exp = toy([])
    with pytest.raises(RunDirError, match=r"meta\.json is missing"):
        run_experiment(exp, resolve_params(exp), resume=tmp_path, root=tmp_path, progress=False)
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match="holds no JSON object"):
        run_experiment(exp, resolve_params(exp), resume=tmp_path, root=tmp_path, progress=False)
    (tmp_path / "meta.json").write_text(json.dumps({"experiment": "other"}))
    with pytest.raises(ExperimentError, match="other run"):
        run_experiment(exp, resolve_params(exp), resume=tmp_path, root=tmp_path, progress=False)


def test_a_shard_goes_on_as_the_whole_sweep_at_its_commit_only(tmp_path: Path) -> None:
    """A sweep too long for one sitting starts as a shard and is resumed as the whole sweep,
    one session after another; every resume is recorded, and only the commit the run was
    measured at may add to it."""
    calls: list[dict[str, object]] = []
    exp = toy(calls)
    params = resolve_params(exp)
    first = run_experiment(exp, params, shard=(1, 2), root=tmp_path, progress=False).run_dir
    with pytest.raises(ExperimentError, match=r"resume it with --shard 1/2, or without"):
        run_experiment(exp, params, shard=(2, 2), resume=first, root=tmp_path, progress=False)
    meta_path = first / "meta.json"
    meta = json.loads(meta_path.read_text())
    measured_at = meta["git_commit"]
    meta["git_commit"] = "0" * 40
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ExperimentError, match=r"git worktree add /tmp/qtlab-0000000000"):
        run_experiment(exp, params, resume=first, root=tmp_path, progress=False)
    meta["git_commit"] = measured_at
    meta_path.write_text(json.dumps(meta))
    calls.clear()
    run_experiment(exp, params, resume=first, root=tmp_path, progress=False)
    keys = sorted((r["size"], r["run"]) for r in read(first / "toy.csv"))
    assert keys == [("1", "1"), ("1", "2"), ("2", "1"), ("3", "1"), ("3", "2")]
    assert [c["run"] for c in calls] == [2, 2, 2]  # shard 2's points only, none again
    meta = json.loads(meta_path.read_text())
    assert meta["shard"] == "1/1"
    assert [r["shard"] for r in meta["resumed"]] == ["1/1"]
    assert meta["resumed"][0]["git_commit"] == measured_at


def test_run_help_lists_the_experiments_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    """`qtlab run failover --help`: the options, then each parameter with its default, its
    --quick value and the unit its name carries."""
    from experiments import runner

    with pytest.raises(SystemExit) as info:
        runner.main(["failover", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "parameters (--set key=value" in out
    down = next(line for line in out.splitlines() if line.strip().startswith("down_at_s"))
    assert down.split() == ["down_at_s", "20.0", "4.0", "s"]
    with pytest.raises(SystemExit):
        runner.main(["--help"])
    assert "lists that experiment's parameters" in capsys.readouterr().out
    assert runner.unit_of("udp_rate_mbit") == "Mbit/s" and runner.unit_of("runs") == ""


def test_rerun_repeats_a_run_with_its_recorded_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`qtlab rerun RUN_DIR`: the experiment named in meta.json, with the parameters it recorded
    (here --quick and --set scale=3), into a new run directory that names the one it repeats."""
    from experiments import runner

    calls: list[dict[str, object]] = []
    exp = toy(calls)
    monkeypatch.setattr(runner, "get_experiment", lambda name: exp)
    params = resolve_params(exp, quick=True, sets=["scale=3"])
    first = run_experiment(exp, params, root=tmp_path, progress=False)
    _, again = runner.rerun(first.run_dir, progress=False)
    assert again.run_dir != first.run_dir and again.run_dir.parent == first.run_dir.parent
    assert read(again.run_dir / "toy.csv") == read(first.run_dir / "toy.csv")
    meta = json.loads((again.run_dir / "meta.json").read_text())
    assert meta["parameters"] == json.loads((first.run_dir / "meta.json").read_text())["parameters"]
    assert meta["parameters"]["quick"] is True and meta["parameters"]["scale"] == 3.0
    assert meta["rerun_of"]["run"] == str(first.run_dir)
    with pytest.raises(RunDirError, match="does not exist"):
        runner.rerun(tmp_path / "nowhere")


def test_unreadable_config_meta_and_results_are_one_sentence(tmp_path: Path) -> None:
    """A --config or meta.json that is not UTF-8, a --resume whose results CSV is a directory
    or not UTF-8, a meta.json naming no experiment: one sentence naming the file, and the run
    directory left as it was."""
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'label = "caf\xe9"\n')
    with pytest.raises(ExperimentError, match=r"config .*latin1\.toml is not UTF-8 text"):
        resolve_params(toy([]), config=config)
    exp = toy([])
    first = run_experiment(exp, resolve_params(exp), root=tmp_path, progress=False).run_dir
    meta = (first / "meta.json").read_bytes()
    (first / "toy.csv").unlink()
    (first / "toy.csv").mkdir()
    with pytest.raises(ExperimentError, match=r"toy\.csv \(Is a directory\): repair it"):
        run_experiment(exp, resolve_params(exp), resume=first, root=tmp_path, progress=False)
    (first / "toy.csv").rmdir()
    (first / "toy.csv").write_bytes(b"size,run\n\xff,1\n")
    with pytest.raises(ExperimentError, match=r"toy\.csv is not UTF-8 text \(byte 0xff"):
        run_experiment(exp, resolve_params(exp), resume=first, root=tmp_path, progress=False)
    assert (first / "meta.json").read_bytes() == meta  # nothing recorded as resumed
    (first / "meta.json").write_bytes(b'{"experiment": "\xff"}')
    with pytest.raises(RunDirError, match=r"meta\.json is not UTF-8 text"):
        run_experiment(exp, resolve_params(exp), resume=first, root=tmp_path, progress=False)
    (first / "meta.json").write_text("{}")
    with pytest.raises(ExperimentError, match="that is no experiment's run"):
        run_experiment(exp, resolve_params(exp), resume=first, root=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["scale=inf"], "parameter scale is inf: it must be a finite number."),
        (["scale=1e999"], "parameter scale is inf"),
        (["scale=nan"], "parameter scale is nan"),
        (["scale=0"], r"parameter scale is 0\.0: it must be a finite number > 0\."),
        (["wait_s=-1"], r"wait_s is -1\.0: it must be a finite number >= 0 s\."),
        (["loss_pct=[1, 500]"], "each of its numbers must be a finite number between 0 and 100 %"),
    ],
)
def test_numbers_are_finite_and_within_their_declared_bounds(sets: list[str], message: str) -> None:
    exp = toy([])
    exp.defaults = {**DEFAULTS, "wait_s": 1.0, "loss_pct": [0.0]}
    exp.bounds = {"scale": POSITIVE, "wait_s": NON_NEGATIVE, "loss_pct": PERCENT}
    with pytest.raises(ExperimentError, match=message):
        resolve_params(exp, sets=sets)
    with pytest.raises(ValueError, match="bounds for unknown"):
        Experiment(**{**vars(exp), "bounds": {"nope": POSITIVE}})


def test_a_run_of_no_point_is_refused_naming_the_empty_list(tmp_path: Path) -> None:
    exp = toy([])
    with pytest.raises(ExperimentError, match="parameter sizes is empty: the toy run would"):
        execute(exp, resolve_params(exp, sets=["sizes=[]"]), root=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_resume_measures_with_the_recorded_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resume whose command line changes a recorded parameter is refused (it used to replace
    them: a resume without --config measured the defaults into a sweep, and meta.json said
    the defaults); `--resume DIR` alone takes the recorded ones; more runs may be added."""
    from experiments import runner

    calls: list[dict[str, object]] = []
    exp = toy(calls, fail_on={3})
    monkeypatch.setattr(runner, "get_experiment", lambda name: exp)
    params = resolve_params(exp, sets=["scale=3"])
    first = run_experiment(exp, params, root=tmp_path, progress=False).run_dir
    before = (first / "meta.json").read_text()
    with pytest.raises(ExperimentError, match=r"gives scale=1\.0 \(recorded 3\.0\)"):
        run_experiment(exp, resolve_params(exp), resume=first, root=tmp_path, progress=False)
    assert (first / "meta.json").read_text() == before
    calls.clear()
    exp_fixed = toy(calls)
    monkeypatch.setattr(runner, "get_experiment", lambda name: exp_fixed)
    assert runner.main(["toy", "--resume", str(first), "--no-progress"]) == 0
    assert [float(r["value"]) for r in read(first / "toy.csv")][-2:] == [9.0, 9.0]  # scale 3
    meta = json.loads((first / "meta.json").read_text())
    assert meta["parameters"]["scale"] == 3.0
    # the failed points are measured now: their old entries go, the count stays in the sitting
    assert meta["failed"] == [] and meta["resumed"][-1]["failed_before"] == 2
    assert meta["resumed"][-1]["hostname"] and "fidelity" in meta["resumed"][-1]
    more = resolve_params(exp_fixed, sets=["scale=3"], runs=3)
    calls.clear()
    run_experiment(exp_fixed, more, resume=first, root=tmp_path, progress=False)
    # the third run of each size (and size 2's second, which is skipped, so never done)
    assert sorted((c["size"], c["run"]) for c in calls) == [(1, 3), (2, 2), (2, 3), (3, 3)]
    assert json.loads((first / "meta.json").read_text())["parameters"]["runs"] == 3
    # `--resume DIR --runs N` alone: the recorded parameters (scale 3, not the default 1)
    # with more runs (and the skipped point tried again); it used to resolve the defaults
    # and be refused
    calls.clear()
    assert runner.main(["toy", "--resume", str(first), "--runs", "4", "--no-progress"]) == 0
    assert sorted((c["size"], c["run"]) for c in calls) == [(1, 4), (2, 2), (2, 4), (3, 4)]
    assert [float(r["value"]) for r in read(first / "toy.csv")][-1] == 9.0
    meta = json.loads((first / "meta.json").read_text())
    assert meta["parameters"]["runs"] == 4 and meta["parameters"]["scale"] == 3.0
    before = (first / "meta.json").read_text()
    assert runner.main(["toy", "--resume", str(first), "--runs", "2", "--no-progress"]) != 0
    assert "gives runs=2 (recorded 4)" in capsys.readouterr().err
    assert (first / "meta.json").read_text() == before  # fewer runs is not an extension


def test_a_sitting_holds_its_run_directory_and_says_it_is_not_finished(tmp_path: Path) -> None:
    """While a sitting measures, meta.json says `finished: null` (a resumed run kept the last
    sitting's end, so readers took a run being appended to for complete) and a second sitting
    on the same directory is refused instead of measuring the same points."""
    seen: list[object] = []
    exp = toy([])
    first = run_experiment(exp, resolve_params(exp), root=tmp_path, progress=False).run_dir
    assert json.loads((first / "meta.json").read_text())["finished"] is not None
    inner = exp.run_point

    def run_point(ctx: Context[None], point: Point) -> PointResult:
        seen.append(json.loads((first / "meta.json").read_text())["finished"])
        with pytest.raises(ExperimentError, match="another sitting is measuring into it"):
            run_experiment(exp, resolve_params(exp), resume=first, root=tmp_path, progress=False)
        return inner(ctx, point)

    watched = dataclasses.replace(exp, run_point=run_point)
    run_experiment(watched, resolve_params(watched, runs=3), resume=first, progress=False)
    assert seen and all(finished is None for finished in seen)
    assert json.loads((first / "meta.json").read_text())["finished"] is not None


def test_a_resume_refuses_a_table_whose_columns_changed(tmp_path: Path) -> None:
    """Rows appended under another header are read into the wrong columns."""
    exp = toy([])
    first = run_experiment(exp, resolve_params(exp), root=tmp_path, progress=False).run_dir
    series = first / "toy_series.csv"
    series.write_text(series.read_text().replace("size,t,seed", "size,t", 1))
    with pytest.raises(ExperimentError, match=r"toy_series\.csv has the columns size, t and"):
        run_experiment(
            exp, resolve_params(exp, runs=3), resume=first, root=tmp_path, progress=False
        )


def test_a_float_key_of_many_decimals_is_found_again_on_resume(tmp_path: Path) -> None:
    calls: list[dict[str, object]] = []
    exp = toy(calls)
    params = resolve_params(exp, sets=["sizes=[1, 0.1234567]"])
    first = run_experiment(exp, params, root=tmp_path, progress=False).run_dir
    calls.clear()
    again = run_experiment(exp, params, resume=first, root=tmp_path, progress=False)
    assert calls == [] and again.already_done == 4


def test_every_point_seeds_the_labs_links_with_its_own_seed_before_it_runs(
    tmp_path: Path,
) -> None:
    """The point's seed reaches the links' loss and jitter (Lab.seed_links): a point measured
    again, resumed or on another shard meets the same losses (qtwire's `seed`)."""
    events: list[tuple[str, object]] = []

    class SeededLab:  # what the runner asks of a Lab
        def seed_links(self, seed: int) -> None:
            events.append(("seeded", seed))

    calls: list[dict[str, object]] = []
    plain = toy(calls)

    def run_point(ctx: Context[None], point: Point) -> PointResult:
        events.append(("ran", point.key(plain.key_columns)))
        return plain.run_point(ctx, point)

    @contextlib.contextmanager
    def session(params: dict[str, object]) -> Iterator[Context[None]]:
        yield Context(params, None, lab=SeededLab())  # type: ignore[arg-type]

    exp = dataclasses.replace(plain, run_point=run_point, session=session)
    run_experiment(exp, resolve_params(exp), root=tmp_path, progress=False)
    ran = [key for what, key in events if what == "ran"]
    assert len(ran) == 6
    expected = [e for key in ran for e in (("seeded", point_seed(7, key)), ("ran", key))]
    assert events == expected
