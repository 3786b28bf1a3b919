"""The one experiment framework: named points, one function per point, tidy CSVs and meta.json.

An `Experiment` is a set of points (parameter combinations x repetitions) and a function that
runs one point and returns rows for one or more CSV tables. `run_experiment()` writes

    results/<experiment>/<YYYYmmdd-HHMMSS>/<table>.csv   one row per measurement, appended as
                                                        each point finishes (a crash keeps them)
    results/<experiment>/<YYYYmmdd-HHMMSS>/meta.json     git commit/dirty, kernel, hostname,
                                                        backend, seed, every parameter, fidelity
                                                        rows, variants, skipped points, software

An experiment keeps what its session set up (the Lab, a work directory, programs it keeps
running between points) in a dataclass of its own, `Context.state`: an `Experiment[S]` runs
points with a `Context[S]`.

Resume (`--resume DIR`): points whose key columns are already in the primary table are not run
again; only at the commit the run was measured at, with its shard or as the whole sweep
(check_resumable), each resume recorded in meta.json `resumed`. Shards (`--shard i/n`): point
number k (in the deterministic order `points()` returns) belongs to shard k % n, so n machines
with the same parameters run disjoint sets whose union is the whole sweep. Seeds: every point
gets `point_seed(seed, key)`, a pure function of the run's seed and the point's key, so a
resumed or sharded point sees the same randomness.

Parameters come from, in increasing priority: the experiment's defaults, its quick overrides
(`--quick`), a TOML file (`--config F`, a flat table or an `[<experiment>]` table), `--runs N`
and `--set key=value` (value parsed as TOML, bare words as strings). A parameter whose default
is a table (the qtun variants' settings: `qtun`) is merged one level deep: a layer's entry
replaces the entry of that name and adds new ones, so a config may redefine one variant or add
one; `--set qtun.NAME.KEY=VALUE` sets one key of one entry.

Scenarios (testbed/scenario.py): an experiment whose defaults have a `scenario` parameter takes
one (`--scenario FILE|NAME` sets it); the runner loads and checks it before anything starts,
records it in meta.json with its text (and a copy, scenario.toml), and hands it to the points
as `Context.scenario`; a rerun or resume plays the recorded text, not the file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from experiments.run_meta import read_run_meta, read_text_file
from experiments.text_columns import align
from testbed.hosts import CongestionControlError, check_congestion_control
from testbed.paths import EXPERIMENT_CONFIGS, REPO_ROOT
from testbed.paths import RESULTS_ROOT as RESULTS_ROOT  # re-exported: the CLIs default to it
from testbed.profiles import ProfileError, profile
from testbed.scenario import Scenario, load_scenario, shipped_scenarios
from testbed.shaping import BACKENDS
from testbed.topologies import ACCESSES
from tunnel.user_error import RuntimeFailure, SentenceParser, UsageError, run_command

if TYPE_CHECKING:
    from testbed.lab import Lab

Row = dict[str, Any]
Params = dict[str, Any]
S = TypeVar("S")  # an experiment's session state


# More runs per point than any sweep needs (the full ones have 5-10): a typo such as 100000000
# would only build a list of points too long for the memory.
MAX_RUNS = 1000
TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


class ExperimentError(UsageError):
    """A mistake in how an experiment was asked for (parameter, shard, resume dir): one sentence."""


@dataclass(frozen=True)
class Bounds:
    """The numbers a parameter may take (or, for a list parameter, each of its numbers): an
    experiment declares them beside its defaults (`Experiment.bounds`) and resolve_params
    refuses any other before a lab is built. Every number parameter must be finite anyway."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # `low` itself is refused too (a duration, an interval, a rate)

    def admits(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"<= {self.high:g}" if self.high is not None else "any"


POSITIVE = Bounds(0, low_open=True)  # durations, intervals, rates, sizes, counts
NON_NEGATIVE = Bounds(0)  # a start time or a warm-up that may be 0
PERCENT = Bounds(0, 100)


@dataclass(frozen=True)
class Point:
    """One thing to measure: its parameters (including `run`, the repetition number)."""

    values: dict[str, Any]

    def key(self, columns: Sequence[str]) -> tuple[str, ...]:
        # As strings, as TableWriter writes them (a float rounded as _cell does): the same
        # key whether it comes from here or back from a CSV. With str() alone a float of 7
        # decimals never matched its own row and was measured again at every resume.
        return tuple(str(_cell(self.values[c])) for c in columns)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


@dataclass
class PointResult:
    """What running one point gave: rows per table, or the reason it could not run."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    skipped: str | None = None


class Context(Generic[S]):
    """What an experiment's session set up (`state`, the experiment's own dataclass) and what
    it records into meta.json (backend, fidelity rows, extra keys)."""

    def __init__(self, params: Params, state: S, lab: Lab | None = None) -> None:
        self.params = params
        self.state = state
        # The session's testbed, if it has one: run_experiment seeds its links' loss and jitter
        # with each point's seed (Lab.seed_links).
        self.lab = lab
        # This point's seed: point_seed(the run's seed, the point's key), set before each point.
        self.seed = int(params.get("seed", 0))
        self.backend: str | None = None
        self.fidelity: list[Row] = []
        self.extra_meta: dict[str, Any] = {}
        # The run's scenario (--scenario, testbed/scenario.py), set by run_experiment once the
        # session is open: the experiment plays it during each point's traffic.
        self.scenario: Scenario | None = None


@dataclass
class Experiment(Generic[S]):
    name: str
    defaults: Params
    tables: dict[str, list[str]]  # table name -> columns; the first table is the primary one
    key_columns: tuple[str, ...]  # columns of the primary table that identify a point
    points: Callable[[Params], list[Point]]
    run_point: Callable[[Context[S], Point], PointResult]
    # What the points share (a Lab); None: an experiment without a testbed, whose state is None.
    session: Callable[[Params], contextlib.AbstractContextManager[Context[S]]] | None = None
    quick: Params = field(default_factory=dict)
    summarize: Callable[[Path], str] | None = None  # the table printed after a run
    description: str = ""
    # An experiment takes a scenario (`--scenario`) when its defaults have a "scenario"
    # parameter; it may change these accesses (`scenario_note`: why not the others), and must
    # end before each point's traffic (its "duration_s" parameter) does.
    scenario_accesses: tuple[str, ...] = ACCESSES
    scenario_note: str = ""
    # The range of a number parameter (or of each number of a list parameter), checked by
    # resolve_params; a parameter not named here need only be finite.
    bounds: dict[str, Bounds] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.bounds) - set(self.defaults))
        if unknown:  # a typo would leave the parameter it meant unchecked
            raise ValueError(f"experiment {self.name}: bounds for unknown {unknown}.")

    @property
    def primary(self) -> str:
        return next(iter(self.tables))


# -- parameters -------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A `--set` value: TOML syntax (1, 0.5, true, ["a", "b"]) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: Sequence[str]) -> Params:
    """--set items as one layer; a dotted key (qtun.NAME.KEY) becomes nested tables."""
    out: Params = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or not all(parts):
            raise ExperimentError(f"--set {item!r}: write key=value.")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ExperimentError(f"--set {item!r}: {part} is given a value and keys.")
            node = child
        node[parts[-1]] = parse_value(value.strip())
    return out


def _merge_table(old: dict[str, Any], new: dict[str, Any], deep: bool) -> dict[str, Any]:
    """A table parameter's layer over its value so far: entries replaced or added (a config
    file), or with `deep` (--set qtun.NAME.KEY=...) only the given keys of an entry changed."""
    merged = copy.deepcopy(old)
    for name, entry in new.items():
        if deep and isinstance(entry, dict) and isinstance(merged.get(name), dict):
            merged[name].update(entry)
        else:
            merged[name] = entry
    return merged


def load_config(path: Path, experiment: str) -> Params:
    text = read_text_file(path, "config", "give a readable UTF-8 TOML file", ExperimentError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"config {path} is not valid TOML: {exc}.") from None
    section = data.get(experiment)
    return dict(section) if isinstance(section, dict) else data


def shipped_config(experiment: str, keys: Sequence[str]) -> Params:
    """These keys of the experiment's shipped config (experiments/configs/<experiment>.toml):
    data an experiment keeps there as its defaults too (the qtun variants' settings), so it has
    one home whether a run gives --config or not."""
    values = load_config(EXPERIMENT_CONFIGS / f"{experiment}.toml", experiment)
    missing = [k for k in keys if k not in values]
    if missing:
        raise ExperimentError(
            f"experiments/configs/{experiment}.toml lacks {', '.join(missing)} under "
            f"[{experiment}]: restore it from git."
        )
    return {k: values[k] for k in keys}


def resolve_params(
    exp: Experiment[S],
    config: Path | None = None,
    quick: bool = False,
    runs: int | None = None,
    sets: Sequence[str] = (),
    recorded: Params | None = None,
) -> Params:
    """The parameters of a run: defaults, --quick, `recorded` (a run's meta.json parameters,
    for `qtlab rerun`), the --config file, --runs, then --set."""
    params: Params = copy.deepcopy(exp.defaults)
    if quick:
        params.update(copy.deepcopy(exp.quick))
    layers: list[Params] = []
    if recorded is not None:
        layers.append({k: v for k, v in recorded.items() if k != "quick"})
    if config is not None:
        layers.append(load_config(config, exp.name))
    if runs is not None:
        layers.append({"runs": runs})
    layers.append(parse_sets(sets))
    for number, layer in enumerate(layers):
        deep = number == len(layers) - 1  # the --set layer: keys of entries, not whole entries
        unknown = sorted(set(layer) - set(exp.defaults))
        if unknown:
            raise ExperimentError(
                f"unknown parameter(s) {', '.join(unknown)} for {exp.name}; "
                f"known: {', '.join(sorted(exp.defaults))}."
            )
        for key, value in layer.items():
            want = type(exp.defaults[key])
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want):
                kind = TYPE_NAMES.get(want, want.__name__)
                raise ExperimentError(f"parameter {key} must be {kind}, not {value!r}.")
            if isinstance(value, dict):
                value = _merge_table(params[key], value, deep)
            params[key] = value
    params["quick"] = quick
    if not 1 <= int(params.get("runs", 1)) <= MAX_RUNS:
        raise ExperimentError(f"runs must be between 1 and {MAX_RUNS}.")
    check_bounds(exp, params)
    return params


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_bounds(exp: Experiment[S], params: Params) -> None:
    """Every number parameter (and every number of a list parameter) finite and within the
    experiment's declared `bounds`: nan, inf or a zero interval would reach the lab otherwise,
    and hang it or measure nothing."""
    for key, value in params.items():
        bounds = exp.bounds.get(key, Bounds())
        numbers = [v for v in value if _is_number(v)] if isinstance(value, list) else [value]
        for number in filter(_is_number, numbers):
            if not math.isfinite(number) or not bounds.admits(number):
                each = "each of its numbers" if isinstance(value, list) else "it"
                unit = f" {unit_of(key)}" if unit_of(key) else ""
                wanted = "" if bounds == Bounds() else f" {bounds}{unit}"
                raise ExperimentError(
                    f"parameter {key} is {number!r}: {each} must be a finite number{wanted}."
                )


def some_points(exp: Experiment[S], params: Params) -> list[Point]:
    """The sweep's points; ExperimentError, naming the empty list parameter, when there is
    none: a run that measures nothing would still build a lab and report success."""
    points = exp.points(params)
    if not points:
        empty = [k for k, v in params.items() if isinstance(v, list) and not v]
        several = len(empty) > 1
        named = (
            f"parameter{'s' if several else ''} {' and '.join(empty)} "
            f"{'are' if several else 'is'} empty"
            if empty
            else "these parameters select no point"
        )
        raise ExperimentError(
            f"{named}: the {exp.name} run would measure nothing; give at least one value "
            f"(`qtlab run {exp.name} --help` lists the defaults)."
        )
    return points


def check_lab_params(params: Params, kernel: bool = True) -> None:
    """The lab parameters experiments share, checked before a run directory is made or a lab
    built: the shaping `backend`, the link profiles (`*_profile`), and with `kernel` (which
    may load a module: root) the hosts' TCP congestion control (`congestion_control`, `cc`)."""
    backend = params.get("backend")
    if isinstance(backend, str) and backend not in BACKENDS:
        raise ExperimentError(
            f"parameter backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}."
        )
    for key, value in params.items():
        if key.endswith("_profile") and isinstance(value, str):
            try:
                profile(value)
            except ProfileError as exc:
                raise ExperimentError(f"parameter {key}: {exc}") from None
        if kernel and key in ("congestion_control", "cc") and isinstance(value, str) and value:
            try:
                check_congestion_control(value)
            except CongestionControlError as exc:
                raise ExperimentError(f"parameter {key}: {exc}") from None


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "2/4" -> (2, 4): shards are numbered 1..n."""
    if text is None:
        return 1, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ExperimentError(f"--shard {text!r}: write i/n, e.g. 1/4.") from None
    if not 1 <= i <= n:
        raise ExperimentError(f"--shard {text!r}: i must be between 1 and n.")
    return i, n


def shard_points(points: Sequence[Point], shard: tuple[int, int]) -> list[Point]:
    i, n = shard
    return [p for k, p in enumerate(points) if k % n == i - 1]


def point_seed(seed: int, key: Sequence[str]) -> int:
    digest = hashlib.sha256(f"{seed}|{'|'.join(key)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


# -- the results directory ------------------------------------------------------------------
def new_run_dir(experiment: str, root: Path = RESULTS_ROOT) -> Path:
    base = root / experiment
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = base / stamp
    while run_dir.exists():  # two runs in the same second: wait for a fresh stamp
        time.sleep(0.2)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_dir = base / stamp
    run_dir.mkdir(parents=True)
    return run_dir


def done_keys(run_dir: Path, exp: Experiment[S]) -> set[tuple[str, ...]]:
    """Keys of the points the primary table of an earlier run already holds."""
    path = run_dir / f"{exp.primary}.csv"
    if not path.exists():
        return set()
    # the points measured so far are in it: say what is wrong, never write over it
    hint = "repair it (it holds the points measured so far) or start a new run without --resume"
    text = read_text_file(path, "results CSV", hint, ExperimentError)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in exp.key_columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ExperimentError(f"{path} lacks the key column(s) {', '.join(missing)}.")
        return {tuple(row[c] for c in exp.key_columns) for row in reader}
    except csv.Error as exc:
        raise ExperimentError(f"results CSV {path} is not valid CSV ({exc}): {hint}.") from None


def check_headers(run_dir: Path, exp: Experiment[S]) -> None:
    """Each table of an earlier run has the columns this code writes: rows appended under
    another header would be read into the wrong columns (a dirty tree, or a checkout outside
    git, may resume at a commit that cannot be told apart)."""
    for name, columns in exp.tables.items():
        path = run_dir / f"{name}.csv"
        if not path.is_file() or path.stat().st_size == 0:
            continue
        hint = "repair it (it holds the points measured so far) or start a new run"
        text = read_text_file(path, "results CSV", hint, ExperimentError)
        header = next(csv.reader(io.StringIO(text, newline="")), [])
        if header != columns:
            raise ExperimentError(
                f"--resume {run_dir}: its {name}.csv has the columns {', '.join(header)} and "
                f"this code writes {', '.join(columns)}: resume it from the code it was "
                "measured with, or start a new run."
            )


@contextlib.contextmanager
def sitting_lock(run_dir: Path) -> Any:
    """Hold the run directory for one sitting: a second sitting on it at once (another
    --resume) is refused instead of measuring the same points and overwriting meta.json."""
    import fcntl

    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExperimentError(
                f"--resume {run_dir}: another sitting is measuring into it now: wait for it to "
                "end (or stop it) first."
            ) from None
        yield
    finally:
        os.close(fd)


class TableWriter:
    """Appends rows to one CSV, header once, flushed per point so a crash loses nothing done."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="raise")
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({c: _cell(row.get(c)) for c in self.columns})


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 6)
    return value


def _run(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_state() -> tuple[str | None, bool]:
    """The checkout's commit (None outside git) and whether tracked files differ from it."""
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return _run(["git", "rev-parse", "HEAD"]) or None, bool(status)


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("aioquic", "pandas", "pyroute2", "uvloop"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[module] = version(module)
    for name, argv in {
        "iperf3": ["iperf3", "--version"],
        "iproute2": ["ip", "-V"],
        "wireguard-tools": ["wg", "--version"],
        "wireguard-go": ["wireguard-go", "--version"],
        "mininet": ["mn", "--version"],
    }.items():
        out = _run(argv)
        if out:
            versions[name] = out.splitlines()[0]
    return versions


def check_resumable(
    run_dir: Path, meta: dict[str, Any], shard: tuple[int, int], commit: str | None
) -> None:
    """A run resumed here must stay one measurement: the same code (a resume from another
    commit is refused, with the way to get that commit's checkout) and the same shard of the
    sweep, or the whole sweep (a run started as `--shard 1/6` may go on as the whole sweep,
    one session after another, on machines that cannot run it at once). `commit`: this
    checkout's (git_state)."""
    recorded = meta.get("git_commit")
    if recorded and commit and recorded != commit:
        raise ExperimentError(
            f"--resume {run_dir}: that run was measured at commit {str(recorded)[:10]} and this "
            f"checkout is at {commit[:10]}: resume it from a checkout of that commit (git "
            f"worktree add /tmp/qtlab-{str(recorded)[:10]} {str(recorded)[:10]}) so that every "
            "point measures the same code."
        )
    started = parse_shard(str(meta.get("shard") or "1/1"))
    if shard not in (started, (1, 1)):
        raise ExperimentError(
            f"--resume {run_dir}: that run is shard {started[0]}/{started[1]} of its sweep: "
            f"resume it with --shard {started[0]}/{started[1]}, or without --shard to go on "
            "with the whole sweep."
        )


def check_same_parameters(run_dir: Path, meta: dict[str, Any], params: Params) -> None:
    """A resumed run measures its remaining points with the parameters it recorded: a
    command whose --config, --set, --quick or --scenario changes one is refused (it used to
    replace them, so a resume without --config measured the defaults' runs and durations
    into the sweep and meta.json said the defaults). More `runs` is the one change allowed:
    more repetitions of the same points (meta.json then says the new number)."""
    recorded = meta.get("parameters")
    if not isinstance(recorded, dict):
        raise ExperimentError(f"--resume {run_dir}: its meta.json records no parameters.")
    given = json.loads(json.dumps(params, default=str))
    changed = sorted(k for k in set(recorded) | set(given) if recorded.get(k) != given.get(k))
    runs, before = given.get("runs"), recorded.get("runs")
    if changed == ["runs"] and isinstance(runs, int) and isinstance(before, int) and runs > before:
        return  # more repetitions of the same points: the one change that extends a run
    if changed:
        shown = ", ".join(
            f"{k}={given.get(k)!r} (recorded {recorded.get(k)!r})" for k in changed[:3]
        )
        raise ExperimentError(
            f"--resume {run_dir}: this command gives {shown}: resume with the parameters the "
            "run recorded, by --resume alone (it takes them) or the same --config/--set."
        )


def base_meta(exp: Experiment[S], params: Params, shard: tuple[int, int]) -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        "experiment": exp.name,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "finished": None,
        "git_commit": commit,
        "git_dirty": dirty,
        "kernel": platform.release(),
        "hostname": socket.gethostname(),
        "cpu_cores": os.cpu_count(),  # what cpu_host_pct tops out at (x 100)
        "backend": None,
        "seed": params.get("seed"),
        "parameters": params,
        "shard": f"{shard[0]}/{shard[1]}",
        "fidelity": [],
        "variants": [],
        "skipped": [],
        "failed": [],
        "software": software_versions(),
        "argv": sys.argv,
    }


def write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    tmp = run_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=str) + "\n")
    tmp.replace(run_dir / "meta.json")


def _open_session(
    exp: Experiment[S], params: Params
) -> contextlib.AbstractContextManager[Context[S]]:
    if exp.session is not None:
        return exp.session(params)
    # No testbed: the experiment is an Experiment[None] and its state is None.
    return contextlib.nullcontext(Context(params, cast(S, None)))


@dataclass
class RunSummary:
    run_dir: Path
    ran: int
    skipped: int
    failed: int
    already_done: int
    missing: int = 0  # a distributed run: points of the sweep with no row (meta.json `missing`)


@dataclass(frozen=True)
class RayExecutor:
    """`--executor ray`: the sweep's shards as tasks on the Ray cluster at `address`
    (experiments/ray_executor.py); `shards` None: one per lab slot of the cluster."""

    address: str
    shards: int | None = None


def execute(
    exp: Experiment[S],
    params: Params,
    executor: RayExecutor | None = None,
    shard: tuple[int, int] = (1, 1),
    resume: Path | None = None,
    root: Path = RESULTS_ROOT,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    scenario_text: str | None = None,
) -> RunSummary:
    """A run here (`run_experiment`, the default) or, with an executor, split into shards that
    run elsewhere through the same function and are merged into one run directory.
    `scenario_text`: a recorded scenario's text (run_experiment), replayed here only."""
    if executor is None:
        # a mistake in the parameters is said before "needs root"
        check_lab_params(params, kernel=False)
        some_points(exp, params)
        if exp.session is not None and os.geteuid() != 0:
            raise RuntimeFailure(f"experiment {exp.name} needs root (Mininet): run it with sudo.")
        return run_experiment(exp, params, shard, resume, root, progress, extra_meta, scenario_text)
    if scenario_text is not None:
        raise ExperimentError(
            "a recorded scenario is replayed on this machine only: rerun it without --executor."
        )
    if shard != (1, 1) or resume is not None:
        raise ExperimentError(
            "--executor ray splits the whole sweep into shards itself: drop --shard and --resume."
        )
    from experiments.ray_executor import run_on_ray

    some_points(exp, params)
    return run_on_ray(exp, params, executor, root, progress, extra_meta)


def run_experiment(
    exp: Experiment[S],
    params: Params,
    shard: tuple[int, int] = (1, 1),
    resume: Path | None = None,
    root: Path = RESULTS_ROOT,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    scenario_text: str | None = None,
) -> RunSummary:
    """Run the experiment's points (this shard's, minus those already done) into a run dir.
    `scenario_text`: the text of the run's scenario as a run recorded it (rerun, resume), so
    the file need not exist any more."""
    if resume is not None and scenario_text is None:
        scenario_text = recorded_scenario_text(resume)
    scenario = scenario_for_run(exp, params, scenario_text)
    check_lab_params(params)
    all_points = exp.points(params)
    mine = shard_points(all_points, shard)
    if resume is not None:
        run_dir = resume
        meta = read_run_meta(resume)
        if meta.get("experiment") != exp.name:
            recorded = meta.get("experiment")
            what = f"a {recorded} run" if recorded else "no experiment's run (meta.json names none)"
            raise ExperimentError(
                f"--resume {resume}: that is {what}, not {exp.name}'s: resume it with its own "
                "experiment, or give a run directory of this one."
            )
        commit, dirty = git_state()
        check_resumable(resume, meta, shard, commit)
        check_same_parameters(resume, meta, params)
        done = done_keys(run_dir, exp)
        check_headers(resume, exp)
        mine_keys = {p.key(exp.key_columns) for p in mine}
        failed_before = meta.get("failed") or []
        # what failed before and is measured again now (or was since) is this sitting's to
        # say: a point that fails again is listed again, one that succeeds has its row
        meta["failed"] = [
            entry
            for entry in failed_before
            if Point(dict(entry.get("point") or {})).key(exp.key_columns) not in done | mine_keys
        ]
        meta.setdefault("resumed", []).append(
            {
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "shard": f"{shard[0]}/{shard[1]}",
                "git_commit": commit,
                "git_dirty": dirty,
                # where and how this sitting measured (the top level is the first sitting's)
                "hostname": socket.gethostname(),
                "kernel": platform.release(),
                "cpu_cores": os.cpu_count(),
                "argv": sys.argv,
                "failed_before": len(failed_before),
            }
        )
        # the run holds what every part of it was measured with: dirty if any part was
        meta["git_dirty"] = bool(meta.get("git_dirty")) or dirty
        meta["shard"] = f"{shard[0]}/{shard[1]}"
        meta["finished"] = None  # measuring again: readers must not take it for complete
        meta["parameters"] = params  # the same, but for more runs
    else:
        run_dir = new_run_dir(exp.name, root)
        meta = base_meta(exp, params, shard) | (extra_meta or {})
        done = set()
    todo = [p for p in mine if p.key(exp.key_columns) not in done]
    if scenario is not None:
        meta["scenario"] = {"given": params["scenario"], **scenario.describe()}
        (run_dir / "scenario.toml").write_text(scenario.text)  # a copy to read; meta has it too
    write_meta(run_dir, meta)
    writers = {
        name: TableWriter(run_dir / f"{name}.csv", cols) for name, cols in exp.tables.items()
    }
    ran = skipped = failed = 0
    from tqdm import tqdm

    variants: list[str] = list(meta.get("variants", []))
    sitting = meta["resumed"][-1] if resume is not None else meta
    # the primary table last: a point counts as done once its row is there, so an interrupt
    # between the writes leaves it to be measured again rather than half recorded
    order = [name for name in exp.tables if name != exp.primary] + [exp.primary]
    try:
        with sitting_lock(run_dir), _open_session(exp, params) as ctx:
            ctx.scenario = scenario
            sitting["backend"] = ctx.backend
            sitting["fidelity"] = ctx.fidelity
            meta.update(ctx.extra_meta)
            write_meta(run_dir, meta)
            bar = tqdm(todo, desc=exp.name, unit="point", disable=not progress, file=sys.stderr)
            for point in bar:
                bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in point.values.items())[:60])
                key = point.key(exp.key_columns)
                ctx.seed = point_seed(int(params.get("seed", 0)), key)
                try:
                    if ctx.lab is not None:
                        ctx.lab.seed_links(ctx.seed)
                    result = exp.run_point(ctx, point)
                except Exception as exc:  # one broken point must not lose the rest of a sweep
                    failed += 1
                    meta["failed"].append({"point": point.values, "error": str(exc)[-500:]})
                    write_meta(run_dir, meta)
                    continue
                if result.skipped is not None:
                    skipped += 1
                    entry = {"point": point.values, "reason": result.skipped}
                    if entry not in meta["skipped"]:
                        meta["skipped"].append(entry)
                else:
                    ran += 1
                    unknown = set(result.rows) - set(writers)
                    if unknown:  # a bug of the experiment's, said as such
                        raise ExperimentError(
                            f"experiment {exp.name} gave rows for {', '.join(sorted(unknown))}, "
                            "which is not one of its tables"
                        )
                    for name in order:
                        writers[name].write(result.rows.get(name, ()))
                    variant = point.values.get("variant")
                    if variant is not None and variant not in variants:
                        variants.append(variant)
                meta["variants"] = variants
                meta.update(ctx.extra_meta)
                write_meta(run_dir, meta)
    finally:
        meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_meta(run_dir, meta)
    return RunSummary(run_dir, ran, skipped, failed, len(mine) - len(todo))


# -- scenarios ----------------------------------------------------------------------------------
def with_scenario(exp: Experiment[S], params: Params, given: str) -> Params:
    """`--scenario FILE|NAME`: the run's `scenario` parameter (what `--set scenario=...` sets)."""
    if "scenario" not in exp.defaults:
        raise ExperimentError(
            f"experiment {exp.name} takes no --scenario; `qtlab run NAME --help` shows a "
            "`scenario` parameter in the experiments that do."
        )
    return {**params, "scenario": given}


def scenario_for_run(
    exp: Experiment[S], params: Params, text: str | None = None
) -> Scenario | None:
    """The run's scenario (its `scenario` parameter: a shipped name or a file; with `text`, the
    text a run recorded), checked against what the experiment lets it change and how long a
    point's traffic lasts; None without one."""
    given = str(params.get("scenario") or "")
    if not given:
        return None
    scenario = load_scenario(given, text)
    note = exp.scenario_note or f"{exp.name} changes no other access"
    scenario.check_accesses(exp.scenario_accesses, note)
    traffic_s = params.get("duration_s")
    if isinstance(traffic_s, int | float) and scenario.duration_s >= traffic_s:
        raise ExperimentError(
            f"scenario {scenario.name} lasts {scenario.duration_s:g} s but a point's traffic "
            f"only {traffic_s:g} s (duration_s): give --set "
            f"duration_s={int(scenario.duration_s) + 2} or a shorter scenario."
        )
    return scenario


def recorded_scenario_text(run_dir: Path) -> str | None:
    """The scenario text a run's meta.json recorded, or None (RunDirError, one sentence, when
    the directory is not a run: a resume or rerun of it could not go on anyway)."""
    recorded = read_run_meta(Path(run_dir)).get("scenario")
    if isinstance(recorded, dict) and isinstance(recorded.get("toml"), str):
        return str(recorded["toml"])
    return None


def scenario_list() -> str:
    """`qtlab scenarios`: the shipped scenarios, each with its length and description."""
    lines = []
    for name in shipped_scenarios():
        scenario = load_scenario(name)
        lines.append(f"{name:<18} {scenario.duration_s:>5g} s  {scenario.description}")
    return "\n".join(lines)


# -- registry and CLI -------------------------------------------------------------------------
# Experiment name -> the module whose EXPERIMENT it is (imported only when that one runs).
EXPERIMENTS: dict[str, str] = {
    "failover": "experiments.failover",
    "overhead": "experiments.overhead",
    "goodput": "experiments.goodput",
    "aggregation": "experiments.aggregation",
    "scale": "experiments.scale",
    "latency": "experiments.latency",
    "workload": "experiments.workload",
    "soak": "experiments.soak",
    "fuzz": "experiments.fuzz",
}


def get_experiment(name: str) -> Experiment[Any]:
    """The registered experiment of that name (its state type is the module's own)."""
    import importlib

    if name not in EXPERIMENTS:
        raise ExperimentError(
            f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}."
        )
    try:
        module = importlib.import_module(EXPERIMENTS[name])
    except ModuleNotFoundError as exc:
        raise ExperimentError(f"experiment {name} is not available here ({exc}).") from None
    exp: Experiment[Any] = module.EXPERIMENT
    return exp


UNITS: dict[str, str] = {
    "_s": "s",
    "_ms": "ms",
    "_mbit": "Mbit/s",
    "_mbps": "Mbit/s",
    "_pct": "%",
    "_bytes": "bytes",
    "_kb": "kB",
    "_mb": "MB",
}
"""A parameter's unit, from the suffix of its name (the lab's convention: units in the names)."""


def unit_of(key: str) -> str:
    return next((unit for suffix, unit in UNITS.items() if key.endswith(suffix)), "")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        names = ", ".join(list(value)[:4]) + (", ..." if len(value) > 4 else "")
        return f"table of {len(value)} ({names})"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def parameter_help(exp: Experiment[Any]) -> str:
    """`qtlab run <exp> --help`'s table: each parameter, its default, its --quick value when
    that differs, and its unit (`--set key=value` or a --config TOML file changes them)."""
    rows = [("parameter", "default", "--quick", "unit")]
    for key, value in exp.defaults.items():
        quick = _shown(exp.quick[key]) if key in exp.quick else ""
        rows.append((key, _shown(value), quick, unit_of(key)))
    lines = [f"{exp.name}: {exp.description}".rstrip(": ")] if exp.description else [exp.name]
    lines.append("parameters (--set key=value, or a --config TOML file):")
    lines += ["  " + line for line in align(rows, max_width=48)]
    return "\n".join(lines)


class _RunHelp(argparse.Action):
    """-h/--help: the options, and after `qtlab run <experiment>` that experiment's parameters."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help")
        )

    def __call__(
        self, parser: Any, namespace: Any, values: Any, option_string: str | None = None
    ) -> None:
        parser.print_help()
        name = getattr(namespace, "experiment", None)
        if name in EXPERIMENTS:
            print()
            print(parameter_help(get_experiment(name)))
        else:
            print(f"\n`{parser.prog} EXPERIMENT --help` lists that experiment's parameters.")
        parser.exit()


def add_run_arguments(p: Any) -> None:
    """The `qtlab run` options (shared with `python -m experiments.runner`); the parser must be
    made with add_help=False (its -h lists the experiment's parameters too)."""
    p.add_argument(
        "-h",
        "--help",
        action=_RunHelp,
        help="show this help (and the parameters of the experiment named before it)",
    )
    p.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}")
    p.add_argument("--config", type=Path, help="TOML file with parameters")
    p.add_argument("--runs", type=int, help="repetitions per point")
    p.add_argument("--shard", help="run only shard i of n (i/n)")
    p.add_argument(
        "--resume",
        type=Path,
        help="continue this run directory with its recorded parameters (--runs N adds runs)",
    )
    p.add_argument("--quick", action="store_true", help="the short version")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--scenario",
        metavar="FILE|NAME",
        help="play this scenario of link changes during each point's traffic (failover, "
        f"goodput): a TOML file or a shipped one ({', '.join(shipped_scenarios())}; "
        "`qtlab scenarios`)",
    )
    p.add_argument("--results", type=Path, default=RESULTS_ROOT, help="results root")
    p.add_argument("--no-progress", action="store_true")
    add_executor_arguments(p)


def add_executor_arguments(p: Any) -> None:
    """Where the points run (`qtlab run` and `qtlab rerun`): here, or shards on a Ray cluster."""
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: on this machine (default); ray: shards as tasks on the Ray cluster at "
        "--address, merged into one run directory here",
    )
    p.add_argument("--address", help="with --executor ray: the cluster's HOST:PORT (or auto)")
    p.add_argument(
        "--shards", type=int, help="with --executor ray: how many shards (default: one per node)"
    )


def executor_from_args(args: Any) -> RayExecutor | None:
    if args.executor == "local":
        if args.address is not None or args.shards is not None:
            raise ExperimentError("--address and --shards go with --executor ray.")
        return None
    if not args.address:
        raise ExperimentError(
            "--executor ray needs --address HOST:PORT, the address `ray start --head` printed."
        )
    if args.shards is not None and args.shards < 1:
        raise ExperimentError("--shards must be at least 1.")
    return RayExecutor(args.address, args.shards)


def report_run(exp: Experiment[Any], summary: RunSummary) -> int:
    """The closing lines of `qtlab run` and `qtlab rerun`; the exit code (1: a point failed or
    is missing)."""
    missing = f", {summary.missing} MISSING (meta.json `missing`)" if summary.missing else ""
    print(
        f"{exp.name}: {summary.ran} point(s) measured, {summary.skipped} skipped, "
        f"{summary.failed} failed, {summary.already_done} already done{missing} -> "
        f"{summary.run_dir}"
    )
    if exp.summarize is not None:
        print(exp.summarize(summary.run_dir))
    return 1 if summary.failed or summary.missing else 0


def run_from_args(args: Any) -> int:
    exp = get_experiment(args.experiment)
    if args.resume is not None and not (args.config or args.quick or args.set or args.scenario):
        # --resume alone, or with more --runs: the parameters the run recorded, so adding
        # repetitions to a sweep does not need its --config/--set again (without them the
        # defaults were resolved and the resume refused as a change of parameters)
        recorded = read_run_meta(args.resume).get("parameters")
        if not isinstance(recorded, dict):
            raise ExperimentError(f"--resume {args.resume}: its meta.json records no parameters.")
        params = resolve_params(
            exp, quick=bool(recorded.get("quick")), runs=args.runs, recorded=recorded
        )
    else:
        params = resolve_params(exp, args.config, args.quick, args.runs, args.set)
    if args.scenario:
        params = with_scenario(exp, params, args.scenario)
    scenario_for_run(exp, params)  # a bad scenario is said before anything starts
    shard = parse_shard(args.shard)
    executor = executor_from_args(args)
    summary = execute(
        exp,
        params,
        executor,
        shard,
        args.resume,
        args.results,
        progress=not args.no_progress,
    )
    return report_run(exp, summary)


def rerun(
    run_dir: Path,
    root: Path | None = None,
    progress: bool = True,
    executor: RayExecutor | None = None,
) -> tuple[Experiment[Any], RunSummary]:
    """`qtlab rerun RUN_DIR`: the same experiment with the parameters and shard its meta.json
    recorded, into a new run directory beside it (or under `root`), whose meta.json names the
    run it repeats (`rerun_of`). A scenario is played from the text meta.json recorded, not
    from its file. Here by default, whichever executor ran it (a distributed run records shard
    1/1: its whole sweep), or on `executor`."""
    meta_path = Path(run_dir) / "meta.json"
    meta = read_run_meta(Path(run_dir))
    exp = get_experiment(str(meta.get("experiment", "")))
    recorded = meta.get("parameters")
    if not isinstance(recorded, dict):
        raise ExperimentError(f"{meta_path} records no parameters: it cannot be re-run.")
    params = resolve_params(exp, quick=bool(recorded.get("quick")), recorded=recorded)
    shard = parse_shard(str(meta.get("shard") or "1/1"))
    if executor is not None and shard != (1, 1):
        raise ExperimentError(
            f"{run_dir} is shard {shard[0]}/{shard[1]} of a sweep: rerun it without --executor."
        )
    commit, _ = git_state()
    if meta.get("git_commit") and commit and meta["git_commit"] != commit:
        print(
            f"rerun: {run_dir} was measured at commit {str(meta['git_commit'])[:10]}; this"
            f" checkout is {commit[:10]} (both are in the new meta.json)",
            file=sys.stderr,
        )
    extra = {"rerun_of": {"run": str(run_dir), "git_commit": meta.get("git_commit")}}
    root = root if root is not None else Path(run_dir).resolve().parent.parent
    summary = execute(
        exp, params, executor, shard, None, root, progress, extra, recorded_scenario_text(run_dir)
    )
    return exp, summary


def rerun_from_args(args: Any) -> int:
    executor = executor_from_args(args)
    exp, summary = rerun(args.run_dir, args.results, not args.no_progress, executor)
    return report_run(exp, summary)


def main(argv: list[str] | None = None) -> int:
    p = SentenceParser(prog="python -m experiments.runner", add_help=False)
    add_run_arguments(p)
    return run_command(
        "qtlab",
        lambda: run_from_args(p.parse_args(argv)),
        interrupted="what was measured is in the run directory.",
    )


if __name__ == "__main__":
    sys.exit(main())
