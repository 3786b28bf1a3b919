"""Load, summarise and plot experiment results: the one module the notebooks (and `make demo`) use.

A run lives in `results/<experiment>/<YYYYmmdd-HHMMSS>/` with tidy CSVs and `meta.json`; the
columns each table must have are the contract of README "Results" (experiments/schemas.py, the
one declaration the experiments write from). Loaders check the columns and fail with one
sentence naming the file; summaries return plain DataFrames; plotting functions draw on an Axes
the caller gives; `*_figure` helpers build a whole figure and save a PNG. A notebook starts with
`notebook_setup(name, ...)`: its run, its figures directory, its meta.json and table, said in
one sentence each.

Every point of the failover, goodput and aggregation experiments records each process's CPU
(experiments/schemas.py CPU_COLUMNS); a point where one of them used >= 90 % of a core, or
where the whole machine was busy >= 90 % of its time (`cpu_host_pct`, 100 per core), has
`cpu_saturated` true. The loaders keep such points (dropping them would hide that the machine,
not the network, may have set the figure); the summaries count them (`cpu_saturated_runs`) and
the figures mark them (red crosses, hatched bars, a `*` in a heatmap cell, said in the legend).
Runs written before these columns existed load with `cpu_saturated` false; runs written before
the machine's share was part of the flag get it from `cpu_host_pct` when they load (their cores
from meta.json's `cpu_cores`, else LAB_CORES). A point where the link emulator lost frames no
setting asked for (`shaper_faults` > 0, experiments/shaper_meter.py) is flagged the same way.

The figures draw medians over runs with their exact distribution-free confidence intervals
(`median_ci`, from the order statistics and the binomial distribution: gaps and goodputs are
skewed, and one collapsed run of ten must not move a point). With the handful of runs an
experiment affords (3-10) a percentile bootstrap is too narrow; under 6 runs no 95 % interval
exists and none is drawn. `mean_ci` (Student-t, its quantile computed here by integrating the
t density: no SciPy in the environment) stays for the summaries' mean columns.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are saved to files; no display needed (CI, make demo)

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from experiments.procstat import CPU_SATURATED_PCT
from experiments.run_meta import ResultsError as ResultsError  # re-exported
from experiments.run_meta import RunDirError, read_run_meta, read_text_file
from experiments.schemas import NO_DELIVERY_BEFORE, TABLES, aqm_label
from experiments.traffic import jain_index
from experiments.video_abr import LADDER_MBPS
from testbed.paths import FIGURES_DIR, RESULTS_ROOT
from tunnel.user_error import UsageError

RUN_DIR_PATTERN = re.compile(r"^\d{8}-\d{6}$")

# Required columns per CSV (README "Results", declared in experiments/schemas.py); extra
# columns are kept.
SCHEMAS: dict[str, tuple[str, ...]] = {name: table.required for name, table in TABLES.items()}

# Plot order and colours of the variants named in the contract; unknown variants come after.
VARIANT_ORDER = (
    "engine",
    "session-failover",
    "session-failover-noreports",
    "tunnel-migration",
    "tunnel-migration-losshiding",
    "stream-migration",
    "masque-migration",
    "plain",
    "plain-5g",
    "mptcp",
    "mptcp-backup",
    "wireguard",
    "wireguard-os",
)
# The reference the failover summary divides "goodput during the outage (after the gap)" by.
FIVEG_REFERENCE = "plain-5g"
# what a flagged point is (_with_cpu_flag): the figures' legends say all of it, so a point
# flagged for a shaper fault is not read as a saturated core
CPU_MARK = "CPU ≥ 90 % of a core or of the machine, or a shaper fault"
MODE_ORDER = ("plain", "tunnel", "session", "stream", "wireguard", "masque")


# -- locating runs ---------------------------------------------------------------------------
def _finished(run_dir: Path) -> bool:
    """A run is complete once meta.json exists and its `finished` is not null (the runner
    writes null while it is still measuring)."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("finished", True) is not None


def run_dirs(experiment: str, root: Path = RESULTS_ROOT) -> list[Path]:
    """Complete runs of an experiment (timestamped directories, see _finished), oldest first."""
    base = Path(root) / experiment
    if not base.is_dir():
        return []
    return sorted(
        p for p in base.iterdir() if p.is_dir() and RUN_DIR_PATTERN.match(p.name) and _finished(p)
    )


def latest_run(experiment: str, root: Path = RESULTS_ROOT) -> Path:
    """The newest complete run of `experiment` under `root` (ResultsError if there is none)."""
    runs = run_dirs(experiment, root)
    if not runs:
        raise ResultsError(
            f"no results for experiment {experiment!r} under {Path(root) / experiment}: "
            f"run `qtlab run {experiment}` first."
        )
    return runs[-1]


def resolve_run(
    experiment: str, results_dir: str | Path | None, root: Path = RESULTS_ROOT
) -> Path | None:
    """A notebook's `results_dir` parameter made concrete: the given directory (which must
    exist), or the latest run when None/"", or None when the experiment has no run yet."""
    if results_dir:
        path = Path(results_dir)
        if not path.is_dir():
            raise ResultsError(f"results_dir {str(path)!r} is not a directory: pass a run dir.")
        return path
    runs = run_dirs(experiment, root)
    return runs[-1] if runs else None


def pinned_run(name: str, root: Path = RESULTS_ROOT) -> Path | None:
    """The run `<root>/figures/runs.toml` pins notebook `name` to, or None when it pins none.

    The committed figures are claims that results/README.md cites with their run, so `make
    notebooks` redraws each from that run rather than from whatever ran last (a later run may
    sweep other cells, like the 1/5 % loss curve after the 2 % headline grid)."""
    pins = Path(root) / "figures" / "runs.toml"
    try:
        table = tomllib.loads(pins.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ResultsError(f"{pins} cannot be read ({exc}): fix it or delete it.") from exc
    value = table.get(name)
    if value is None:
        return None
    path = Path(root) / value if isinstance(value, str) else None
    if path is None or not RUN_DIR_PATTERN.match(path.name) or not _finished(path):
        raise ResultsError(
            f"{pins} pins the {name} notebook to {value!r}, which is not a complete run under "
            f'{root}: name one as "<experiment>/<YYYYmmdd-HHMMSS>" or remove the line.'
        )
    return path


def load_meta(run_dir: Path) -> dict[str, Any]:
    """A run's meta.json (experiments/run_meta.py: one sentence if it is not a run)."""
    return read_run_meta(run_dir)


# -- loaders ---------------------------------------------------------------------------------
def load_csv(path: Path, schema: str) -> pd.DataFrame:
    """Read one results CSV and check it has every column of `schema` (see SCHEMAS)."""
    path = Path(path)
    required = TABLES[schema].required
    if not path.exists():
        raise ResultsError(f"{path} does not exist: the run has no {schema} results.")
    hint = f"it should be the run's {schema} table as the experiment wrote it"
    text = read_text_file(path, "results CSV", hint, ResultsError)
    try:
        df = pd.read_csv(io.StringIO(text), keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise ResultsError(
            f"{path} is empty: expected a header with {', '.join(required)}."
        ) from None
    except pd.errors.ParserError as exc:  # a row with more fields than the header, say
        reason = " ".join(str(exc).split())  # pandas ends its message with a newline
        raise ResultsError(f"results CSV {path} is not valid CSV ({reason}): {hint}.") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ResultsError(
            f"{path} lacks column(s) {', '.join(missing)} required by the {schema} schema."
        )
    return df


def _numbers(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """`column` of a results CSV as floats, an empty cell as NaN (no value: a run that did
    not recover has no gap); ResultsError naming the file, column and line for a cell that is
    neither, which coercing would quietly turn into "no value" (a corrupt gap into a run that
    did not recover)."""
    if column not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    values = df[column]
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        row = bad.to_numpy().nonzero()[0][0]
        # the file's line: the header is line 1 (the runner writes no blank or multi-line rows)
        raise ResultsError(
            f"{path} line {row + 2}, column {column}: {values.iloc[row]!r} is not a number: "
            "fix or empty that cell (empty means no value)."
        )
    return numbers


def _with_numbers(
    df: pd.DataFrame, run_dir: Path, table: str, columns: Sequence[str]
) -> pd.DataFrame:
    """`columns` (those the table has) as numbers, strictly (_numbers): the measurements the
    figures and `qtlab compare` read, where a corrupt cell must not pass for a missing one."""
    path = Path(run_dir) / TABLES[table].file_name
    for column in columns:
        if column in df.columns:
            df[column] = _numbers(df, column, path)
    return df


def _as_bool(series: pd.Series) -> pd.Series:
    text = series.astype(str).str.strip().str.lower()
    return text.isin(["true", "1", "yes"])


def _load(run_dir: Path, table: str) -> pd.DataFrame:
    return load_csv(Path(run_dir) / TABLES[table].file_name, table)


LAB_CORES = 2
"""The cores of the machine every committed run was measured on before runs recorded theirs
(meta.json `cpu_cores`, from 2026-12-06)."""


def _with_cpu_flag(df: pd.DataFrame, run_dir: Path, table: str) -> pd.DataFrame:
    """`cpu_saturated` as booleans (false for runs written before the column existed), also
    true where the whole machine was saturated (procstat.machine_saturated), which runs
    written before 2026-12-06 did not flag themselves, and where the link emulator lost frames
    on its own (`shaper_faults` > 0: the link was not the one configured, the machine's doing
    as much as a saturated core's)."""
    if "cpu_saturated" in df.columns:
        df["cpu_saturated"] = _as_bool(df["cpu_saturated"])
    else:
        df["cpu_saturated"] = False
    if "shaper_faults" in df.columns:
        faults = _numbers(df, "shaper_faults", Path(run_dir) / TABLES[table].file_name)
        df["cpu_saturated"] = df["cpu_saturated"] | (faults > 0)
    if "cpu_host_pct" in df.columns:
        try:
            cores = read_run_meta(run_dir).get("cpu_cores") or LAB_CORES
        except RunDirError:  # CSVs without their meta.json (copied out of a run)
            cores = LAB_CORES
        host = _numbers(df, "cpu_host_pct", Path(run_dir) / TABLES[table].file_name)
        df["cpu_saturated"] = df["cpu_saturated"] | (host >= CPU_SATURATED_PCT * int(cores))
    return df


def load_failover(run_dir: Path) -> pd.DataFrame:
    """failover.csv without the runs that are no failover result (NO_DELIVERY_BEFORE: their
    flow carried nothing before the outage, so "never recovered" would blame the failover for
    a transfer that did not start; how many were left out is `attrs["not_failover_results"]`
    and said where the figures and tables are drawn)."""
    df = _load(run_dir, "failover")
    detail = df.get("detail", pd.Series("", index=df.index)).astype(object)
    detail = detail.where(detail.notna(), "").astype(str)  # all empty reads as float NaN
    left_out = detail.str.contains(NO_DELIVERY_BEFORE, regex=False)
    if left_out.any():
        say(
            f"`{run_dir}`: {int(left_out.sum())} run(s) left out, their flow carried nothing "
            "before the outage (no failover result)."
        )
    df = df[~left_out].reset_index(drop=True)
    df.attrs["not_failover_results"] = int(left_out.sum())
    df["completed"] = _as_bool(df["completed"])
    path = Path(run_dir) / TABLES["failover"].file_name
    for column in ("gap_ms", "goodput_after_gap_mbps"):  # NaN when absent: older runs
        df[column] = _numbers(df, column, path)
    df = _with_numbers(df, run_dir, "failover", ("goodput_before_mbps",))
    ablation = df.get("ablation_off", pd.Series("", index=df.index)).astype(object)
    df["ablation_off"] = ablation.where(ablation.notna(), "").astype(str)
    return _with_cpu_flag(df, run_dir, "failover")


def load_failover_timeseries(run_dir: Path) -> pd.DataFrame:
    return _load(run_dir, "failover_timeseries")


def load_overhead(run_dir: Path) -> pd.DataFrame:
    df = _load(run_dir, "overhead")
    if "workload" not in df.columns:
        # The schema allows marking bulk rows with payload_bytes = -1 instead of a column.
        df["workload"] = np.where(df["payload_bytes"] < 0, "bulk-tcp", "udp")
    return df


def load_goodput(run_dir: Path) -> pd.DataFrame:
    df = _load(run_dir, "goodput")
    # outer_cc / loss_hiding: "" for the baselines, and for runs from before issue 13's sweep
    for column in ("cc", "outer_cc", "loss_hiding"):
        values = df.get(column, pd.Series("", index=df.index)).astype(object)
        df[column] = values.where(values.notna(), "").astype(str)
    df = _with_numbers(df, run_dir, "goodput", ("goodput_mbps",))
    return _with_cpu_flag(df, run_dir, "goodput")


def load_aggregation(run_dir: Path) -> pd.DataFrame:
    df = _with_numbers(
        _load(run_dir, "aggregation"), run_dir, "aggregation", ("goodput_mbps", "ratio")
    )
    return _with_cpu_flag(df, run_dir, "aggregation")


def load_ablation(run_dir: Path) -> pd.DataFrame:
    """The failover rows of the ablation's variants (`ablation_off` set) and of plain-5g (the
    reference of goodput during the outage); ResultsError when the run switched no mechanism
    off (the engine alone, `ablation_off` "none", is a reference, not an ablation: a run with
    only it must not replace the ablation figure)."""
    df = load_failover(run_dir)
    if not (~df["ablation_off"].isin(["", "none"])).any():
        raise ResultsError(
            f"{Path(run_dir) / 'failover.csv'} switches no mechanism off (no row with "
            "ablation_off naming one): run the failover experiment with its `ablation` list "
            "(experiments/configs/failover.toml)."
        )
    keep = (df["ablation_off"] != "") | (df["variant"] == FIVEG_REFERENCE)
    return df[keep].reset_index(drop=True)


MASQUE_VARIANT = "masque-migration"
MASQUE_PEERS = ("tunnel-migration", "session-failover", "engine", "mptcp")
"""What issue 18 sets MASQUE CONNECT-IP against in a failover run: the QUIC tunnel's one
migrating connection (the same programs, another protocol on top), its session modes (what
"considers multihomed devices from the start" buys) and kernel MPTCP."""


def load_masque(run_dir: Path) -> pd.DataFrame:
    """The failover rows of MASQUE (masque-migration), of MASQUE_PEERS and of plain-5g (the
    reference of goodput during the outage); ResultsError when the run has no MASQUE row."""
    df = load_failover(run_dir)
    if not (df["variant"] == MASQUE_VARIANT).any():
        raise ResultsError(
            f"{Path(run_dir) / 'failover.csv'} has no {MASQUE_VARIANT} variant: run the failover "
            f'experiment with it in its variants (README "MASQUE CONNECT-IP").'
        )
    keep = df["variant"].isin((MASQUE_VARIANT, *MASQUE_PEERS, FIVEG_REFERENCE))
    return df[keep].reset_index(drop=True)


def load_scale(run_dir: Path) -> pd.DataFrame:
    return _with_numbers(_load(run_dir, "scale"), run_dir, "scale", ("goodput_mbps",))


# -- statistics ------------------------------------------------------------------------------
def _t_cdf(x: float, df: int) -> float:
    """CDF of Student's t with `df` degrees of freedom, x >= 0 (Simpson's rule on the density)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    steps = 2000  # even; error far below the 3 significant digits a CI is reported with
    h = x / steps
    total = density(0.0) + density(x)
    for i in range(1, steps):
        total += (4 if i % 2 else 2) * density(i * h)
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p in (0.5, 1)) of Student's t with df >= 1, by bisection on the CDF."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}.")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(values: Sequence[float] | pd.Series, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval (NaN half-width if n < 2)."""
    data = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(data)
    if n == 0:
        return math.nan, math.nan
    mean = float(data.mean())
    if n < 2:
        return mean, math.nan
    sem = float(data.std(ddof=1)) / math.sqrt(n)
    return mean, t_quantile(0.5 + confidence / 2, n - 1) * sem


def median_ci(
    values: Sequence[float] | pd.Series, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Median and its exact distribution-free confidence interval (lo, hi): the order
    statistics x(k) and x(n+1-k) with the largest k such that the number of values below the
    median, Binomial(n, 1/2), falls in [k, n-k] with probability >= `confidence` (no assumption
    on the distribution: gaps are skewed). NaN bounds when n is too small for that confidence
    (n < 6 at 95 %)."""
    data = np.sort(np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float))
    n = len(data)
    if n == 0:
        return math.nan, math.nan, math.nan
    median = float(np.median(data))
    coverage = [math.comb(n, i) / 2**n for i in range(n + 1)]
    best = 0
    for k in range(1, n // 2 + 1):
        if sum(coverage[k : n - k + 1]) >= confidence:
            best = k
        else:
            break
    if best == 0:
        return median, math.nan, math.nan
    return median, float(data[best - 1]), float(data[n - best])


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + sorted(v for v in present if v not in order)


def failover_gap_summary(failover: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (variant, event, traffic): runs, runs that recovered, the median gap over the
    recovered runs with its exact CI (what the figures draw; also the mean and its t-CI
    half-width), the median goodput before/during/after, the median goodput during the outage
    after the gap with its exact CI, that divided by plain-5g's median goodput over the outage
    in the same (event, traffic) (`after_gap_vs_5g`, issue 12; NaN without plain-5g; the
    divisor is `fiveg_during_mbps`), and the runs where a process saturated a core. Exact CIs
    (median_ci) are NaN under 6 runs at 95 %."""
    rows: list[dict[str, Any]] = []
    after_gap = failover.get("goodput_after_gap_mbps", pd.Series(np.nan, index=failover.index))
    saturated = failover.get("cpu_saturated", pd.Series(False, index=failover.index))
    for (variant, event, traffic), group in failover.groupby(
        ["variant", "event", "traffic"], sort=False
    ):
        recovered = group[group["completed"] & group["gap_ms"].notna()]
        mean, half = mean_ci(recovered["gap_ms"], confidence)
        median, median_lo, median_hi = median_ci(recovered["gap_ms"], confidence)
        after, after_lo, after_hi = median_ci(after_gap[group.index], confidence)
        rows.append(
            {
                "variant": variant,
                "event": event,
                "traffic": traffic,
                "runs": len(group),
                "recovered": len(recovered),
                "gap_ms_mean": mean,
                "gap_ms_ci": half,
                "gap_ms_median": median,  # NaN without a recovered run
                # the median's exact CI (NaN below 6 recovered runs at 95 %)
                "gap_ms_median_lo": median_lo,
                "gap_ms_median_hi": median_hi,
                "goodput_before_mbps": float(group["goodput_before_mbps"].median()),
                "goodput_during_mbps": float(group["goodput_during_mbps"].median()),
                "goodput_after_mbps": float(group["goodput_after_mbps"].median()),
                "goodput_after_gap_mbps": after,
                "goodput_after_gap_mbps_lo": after_lo,
                "goodput_after_gap_mbps_hi": after_hi,
                "cpu_saturated_runs": int(saturated[group.index].astype(bool).sum()),
            }
        )
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    # 5G alone's goodput over the outage per (event, traffic). Plain dicts, not `.loc` on a
    # MultiIndex: that expression took mypy (pandas-stubs' overloads) minutes to check.
    fiveg: dict[tuple[str, str], float] = {
        (str(r["event"]), str(r["traffic"])): float(r["goodput_during_mbps"])
        for r in rows
        if r["variant"] == FIVEG_REFERENCE
    }
    ratios: list[float] = []
    bases: list[float] = []
    for r in rows:
        base = fiveg.get((str(r["event"]), str(r["traffic"])), math.nan)
        bases.append(base if base > 0 else math.nan)
        ratios.append(float(r["goodput_after_gap_mbps"]) / base if base > 0 else math.nan)
    summary["after_gap_vs_5g"] = ratios
    summary["fiveg_during_mbps"] = bases  # what after_gap_vs_5g divides by
    order = {v: i for i, v in enumerate(_ordered(summary["variant"].tolist(), VARIANT_ORDER))}
    summary["_order"] = summary["variant"].map(order)
    return (
        summary.sort_values(["_order", "event", "traffic"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def ablation_summary(failover: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """failover_gap_summary of the ablation's rows (ablation_off set) with the mechanism each
    variant turns off ("none" = the all-on reference, listed first), plus plain-5g's goodput
    during the outage as `fiveg_mbps` when the run has it."""
    ablation = failover[failover["ablation_off"] != ""]
    if ablation.empty:
        return pd.DataFrame()
    reference = failover[failover["variant"] == FIVEG_REFERENCE]
    summary = failover_gap_summary(pd.concat([ablation, reference]), confidence)
    turns_off = ablation.groupby("variant")["ablation_off"].first()
    fiveg = reference.groupby(["event", "traffic"])["goodput_during_mbps"].median()
    summary = summary[summary["variant"].isin(turns_off.index)].copy()
    summary["turns_off"] = summary["variant"].map(turns_off)
    summary["fiveg_mbps"] = [
        fiveg.get((r.event, r.traffic), math.nan) for r in summary.itertuples()
    ]
    summary["_first"] = summary["turns_off"] != "none"
    return (
        summary.sort_values(["event", "traffic", "_first"], kind="stable")
        .drop(columns="_first")
        .reset_index(drop=True)
    )


def masque_summary(failover: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """failover_gap_summary of MASQUE and its peers (load_masque's rows), MASQUE first, with
    plain-5g's goodput during the outage as `fiveg_mbps` when the run has it."""
    summary = failover_gap_summary(failover, confidence)
    if summary.empty:
        return summary
    fiveg = failover[failover["variant"] == FIVEG_REFERENCE]
    during = fiveg.groupby(["event", "traffic"])["goodput_during_mbps"].median()
    summary = summary[summary["variant"] != FIVEG_REFERENCE].copy()
    summary["fiveg_mbps"] = [
        during.get((r.event, r.traffic), math.nan) for r in summary.itertuples()
    ]
    order = {v: i for i, v in enumerate((MASQUE_VARIANT, *MASQUE_PEERS))}
    summary["_order"] = summary["variant"].map(order)
    return (
        summary.sort_values(["event", "traffic", "_order"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def overhead_summary(overhead: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, workload, payload_bytes): measured overhead per packet and in % of the
    application bytes (means over runs), the framing arithmetic, and measured - expected."""
    summary = (
        overhead.groupby(["mode", "workload", "payload_bytes"], sort=False)
        .agg(
            packets=("packets", "sum"),
            overhead_per_packet_bytes=("overhead_per_packet_bytes", "mean"),
            overhead_pct=("overhead_pct", "mean"),
            expected_per_packet_bytes=("expected_per_packet_bytes", "mean"),
        )
        .reset_index()
    )
    summary["measured_minus_expected_bytes"] = (
        summary["overhead_per_packet_bytes"] - summary["expected_per_packet_bytes"]
    )
    order = {m: i for i, m in enumerate(_ordered(summary["mode"].tolist(), MODE_ORDER))}
    summary["_order"] = summary["mode"].map(order)
    return (
        summary.sort_values(["workload", "_order", "payload_bytes"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def goodput_pivot(
    goodput: pd.DataFrame,
    mode: str,
    transport: str,
    cc: str = "",
    outer_cc: str = "",
    loss_hiding: str = "",
    value: str = "goodput_mbps",
) -> pd.DataFrame:
    """Median goodput (Mbit/s) over runs of a (mode, transport, cc, outer_cc, loss_hiding):
    rows loss_pct, cols rtt_ms (the median, as in results/README.md's tables: one run of five
    that collapsed must not move a cell). `value="cpu_saturated"`: whether any run of a cell
    saturated a core."""
    mask = (
        (goodput["mode"] == mode)
        & (goodput["transport"] == transport)
        & (goodput["cc"].fillna("").astype(str) == cc)
    )
    for column, wanted in (("outer_cc", outer_cc), ("loss_hiding", loss_hiding)):
        if column in goodput.columns:
            mask &= goodput[column].fillna("").astype(str) == wanted
    selected = goodput[mask]
    if value == "cpu_saturated":
        return selected.pivot_table(
            index="loss_pct", columns="rtt_ms", values=value, aggfunc="any"
        ).sort_index()
    return selected.pivot_table(
        index="loss_pct", columns="rtt_ms", values=value, aggfunc="median"
    ).sort_index()


def goodput_keys(goodput: pd.DataFrame) -> list[tuple[str, str, str, str, str]]:
    """The (mode, outer_cc, loss_hiding, transport, cc) combinations present, modes in
    MODE_ORDER."""
    modes = _ordered(goodput["mode"].tolist(), MODE_ORDER)
    columns = ["mode", "outer_cc", "loss_hiding", "transport", "cc"]
    frame = goodput.reindex(columns=columns).fillna("").astype(str).drop_duplicates()
    keys = [(m, o, h, t, c) for m, o, h, t, c in frame.itertuples(index=False, name=None)]
    return sorted(keys, key=lambda k: (modes.index(k[0]), k[1:]))


def goodput_label(mode: str, outer_cc: str, loss_hiding: str, transport: str, cc: str) -> str:
    """ "tunnel bbr +hiding udp": the mode, its outer controller and loss hiding, the traffic."""
    hiding = "+hiding" if loss_hiding == "on" else ""
    return " ".join(p for p in (mode, outer_cc, hiding, transport, cc) if p)


def aggregation_summary(aggregation: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (variant, scheduler, reorder): the median goodput and ratio to the sum of the
    access rates over runs, each with its exact confidence interval (median_ci:
    `<column>_lo`, `<column>_hi`, NaN under 6 runs at 95 %)."""
    rows: list[dict[str, Any]] = []
    for (variant, scheduler, reorder), group in aggregation.groupby(
        ["variant", "scheduler", "reorder"], sort=False, dropna=False
    ):
        goodput, goodput_lo, goodput_hi = median_ci(group["goodput_mbps"], confidence)
        ratio, ratio_lo, ratio_hi = median_ci(group["ratio"], confidence)
        saturated = group.get("cpu_saturated", pd.Series(False, index=group.index))
        rows.append(
            {
                "variant": variant,
                "scheduler": scheduler,
                "reorder": reorder,
                "runs": len(group),
                "goodput_mbps": goodput,
                "goodput_mbps_lo": goodput_lo,
                "goodput_mbps_hi": goodput_hi,
                "ratio": ratio,
                "ratio_lo": ratio_lo,
                "ratio_hi": ratio_hi,
                "cpu_saturated_runs": int(saturated.astype(bool).sum()),
            }
        )
    return pd.DataFrame(rows)


def error_bars(summary: pd.DataFrame, column: str) -> np.ndarray:
    """matplotlib's asymmetric `yerr` (2 x n) for `column` and its `_lo` / `_hi` interval
    bounds; no bar where the interval is unknown (too few runs)."""
    value = summary[column].to_numpy(dtype=float)
    below = value - summary[f"{column}_lo"].to_numpy(dtype=float)
    above = summary[f"{column}_hi"].to_numpy(dtype=float) - value
    bars: np.ndarray = np.nan_to_num(np.vstack([below, above]))
    return bars


def scale_summary(scale: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (mode, clients): runs; goodput per client (the mean over every client and run, which
    is the total / N, and the lowest and highest single client); over runs, the median of the
    total goodput and of the concentrator's CPU % with their exact confidence intervals
    (median_ci: `_lo`, `_hi`, NaN under 6 runs at 95 %), and the medians of Jain's index
    (computed per run), of the concentrator's CPU % per client, its RSS, RSS per client, the
    clients' and the whole machine's CPU %. CPU columns: 100 = one core."""
    rows: list[dict[str, Any]] = []
    keys = ["mode", "clients"] if "mode" in scale.columns else ["clients"]
    for key, group in scale.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        per_run = group.groupby("run", sort=True)
        first = per_run.first()  # the point-wide columns repeat on every client's row
        n = int(group["clients"].iloc[0])
        totals = per_run["goodput_mbps"].sum()
        jain = [j for _, g in per_run["goodput_mbps"] if (j := jain_index(g.tolist())) is not None]
        total, total_lo, total_hi = median_ci(totals, confidence)
        cpu, cpu_lo, cpu_hi = median_ci(first["conc_cpu_pct"], confidence)
        rss = float(first["conc_rss_mb"].median())
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row.update(
            {
                "runs": len(first),
                "goodput_per_client_mbps": float(group["goodput_mbps"].mean()),
                "goodput_min_mbps": float(group["goodput_mbps"].min()),
                "goodput_max_mbps": float(group["goodput_mbps"].max()),
                "goodput_total_mbps": total,
                "goodput_total_mbps_lo": total_lo,
                "goodput_total_mbps_hi": total_hi,
                "jain_fairness": float(np.median(jain)) if jain else math.nan,
                "conc_cpu_pct": cpu,
                "conc_cpu_pct_lo": cpu_lo,
                "conc_cpu_pct_hi": cpu_hi,
                "conc_cpu_per_client_pct": cpu / n,
                "conc_rss_mb": rss,
                "conc_rss_per_client_kb": rss * 1024 / n,
            }
        )
        for column in ("conc_rss_idle_mb", "clients_cpu_pct", "host_cpu_pct"):
            if column in first.columns:
                row[column] = float(pd.to_numeric(first[column], errors="coerce").median())
        rows.append(row)
    return pd.DataFrame(rows)


def rss_fit(summary: pd.DataFrame) -> tuple[float, float] | None:
    """Least-squares line through the concentrator's RSS against N (one mode's scale_summary):
    (kB per added client, MB at N = 0), or None with fewer than two client counts."""
    data = summary.dropna(subset=["conc_rss_mb"])
    if data["clients"].nunique() < 2:
        return None
    slope, intercept = np.polyfit(data["clients"].astype(float), data["conc_rss_mb"], 1)
    return float(slope) * 1024, float(intercept)


def rss_growth_sentences(summary: pd.DataFrame) -> list[str]:
    """One sentence per mode of a scale_summary: the concentrator's RSS per added client."""
    groups = summary.groupby("mode") if "mode" in summary.columns else [("all", summary)]
    out = []
    for mode, rows in groups:
        fit = rss_fit(rows)
        if fit is not None:
            out.append(
                f"{mode}: the concentrator's RSS grows by {fit[0]:.0f} kB per client "
                f"(least squares over N; {fit[1]:.1f} MB at N = 0)."
            )
    return out


# -- plotting on a given Axes ----------------------------------------------------------------
def _colour(index: int) -> str:
    return f"C{index % 10}"


# One colour per variant in every panel and figure; baselines in muted colours.
VARIANT_COLOURS = {
    "session-failover": "C0",
    "session-failover-noreports": "C1",
    "tunnel-migration": "C2",
    "tunnel-migration-losshiding": "yellowgreen",
    "stream-migration": "C3",
    "masque-migration": "black",
    "engine": "C9",
    # with path MTU discovery: a darker shade of the variant without it
    "tunnel-migration-pmtu": "darkgreen",
    "engine-pmtu": "darkblue",
    "plain": "C7",
    "plain-5g": "0.45",
    "mptcp": "C5",
    "mptcp-backup": "C8",
    "wireguard": "C4",
    "wireguard-os": "C6",
}


def mode_colour(mode: str) -> str:
    """The mode's colour in every overhead panel (MODE_ORDER; others from their name)."""
    if mode in MODE_ORDER:
        return _colour(MODE_ORDER.index(mode))
    return _colour(sum(map(ord, mode)))


def variant_colour(variant: str) -> str:
    """The variant's colour (VARIANT_COLOURS; others get a stable one from their name)."""
    return VARIANT_COLOURS.get(variant) or _colour(sum(map(ord, variant)))


def outage_window(failover: pd.DataFrame) -> tuple[float, float]:
    """When the access was down (medians over runs): (down_at_s, up_at_s)."""
    return float(failover["down_at_s"].median()), float(failover["up_at_s"].median())


def plot_goodput_timeseries(
    ax: Axes,
    timeseries: pd.DataFrame,
    outage: tuple[float, float] | None = None,
    legend: bool = True,
    outage_label: str = "WiFi outage",
) -> None:
    """Goodput over time, one line per variant (mean over runs at each sample), outage shaded.
    Give it one (event, traffic) combination at a time (see `scenarios`)."""
    variants = _ordered(timeseries["variant"].tolist(), VARIANT_ORDER)
    for variant in variants:
        rows = timeseries[timeseries["variant"] == variant]
        runs = rows["run"].nunique()
        mean = rows.groupby(rows["t_s"].round(3))["goodput_mbps"].mean()
        label = f"{variant} (mean of {runs} runs)" if runs > 1 else variant
        ax.plot(mean.index, mean.to_numpy(), color=variant_colour(variant), lw=1.2, label=label)
    if outage is not None:
        ax.axvspan(outage[0], outage[1], color="0.85", zorder=0, label=outage_label)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("goodput (Mbit/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="x-small", loc="best")


def has_inner_tcp(timeseries: pd.DataFrame) -> bool:
    """Whether the time series carries the sender's inner TCP window (runs since issue 12's
    TCP_INFO columns; TCP points only)."""
    column = "inner_cwnd_segments"
    return column in timeseries.columns and bool(timeseries[column].notna().any())


def plot_inner_window(
    ax: Axes, timeseries: pd.DataFrame, outage: tuple[float, float] | None = None
) -> None:
    """The inner TCP's congestion window over time (segments, mean over runs), one line per
    variant: how large a window the inner TCP brings into the outage, and how fast it grows
    on the other access (what sets the goodput after the gap). Variants without the column's
    values (UDP) are left out."""
    rows = timeseries.dropna(subset=["inner_cwnd_segments"])
    for variant in _ordered(rows["variant"].tolist(), VARIANT_ORDER):
        mine = rows[rows["variant"] == variant]
        mean = mine.groupby(mine["t_s"].round(3))["inner_cwnd_segments"].mean()
        ax.plot(mean.index, mean.to_numpy(), color=variant_colour(variant), lw=1.2)
    if outage is not None:
        ax.axvspan(outage[0], outage[1], color="0.85", zorder=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("inner TCP window (segments)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)


SCENARIO_COLUMNS = ("event", "traffic")


def scenarios(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    """The (event, traffic) combinations present (columns the time series may lack: then one
    empty combination standing for all rows)."""
    columns = [c for c in SCENARIO_COLUMNS if c in frame.columns]
    if not columns:
        return [()]
    combos = frame[columns].drop_duplicates().itertuples(index=False, name=None)
    return sorted(tuple(str(v) for v in combo) for combo in combos)


def select_scenario(frame: pd.DataFrame, scenario: tuple[str, ...]) -> pd.DataFrame:
    columns = [c for c in SCENARIO_COLUMNS if c in frame.columns]
    mask = pd.Series(True, index=frame.index)
    for column, value in zip(columns, scenario, strict=False):
        mask &= frame[column].astype(str) == value
    return frame[mask]


def plot_failover_gaps(
    ax: Axes, summary: pd.DataFrame, failover: pd.DataFrame | None = None
) -> None:
    """Median gap per (variant, event, traffic) with its exact 95 % CI, one row each, and the single
    runs as small dots when `failover` is given; rows that never recovered say so instead of
    being dropped. Log scale when the gaps span more than a decade; a CI reaching below the
    axis is cut at its edge."""
    labels = [
        f"{v}  {e}/{t}{recovered_note(int(k), int(n))}"
        for v, e, t, k, n in zip(
            summary["variant"],
            summary["event"],
            summary["traffic"],
            summary["recovered"],
            summary["runs"],
            strict=True,
        )
    ]
    y = np.arange(len(summary))[::-1]  # first row on top
    medians = summary["gap_ms_median"].to_numpy(dtype=float)
    errors = error_bars(summary, "gap_ms_median")
    recovered = summary["recovered"].to_numpy()
    observed: list[float] = []
    for i, row in enumerate(summary.itertuples()):
        colour = variant_colour(str(row.variant))
        if recovered[i] == 0:
            ax.annotate(
                f"no recovery ({row.runs} runs)",
                (0.02, y[i]),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize="small",
                color=colour,
            )
            continue
        if failover is not None:
            runs = failover[
                (failover["variant"] == row.variant)
                & (failover["event"] == row.event)
                & (failover["traffic"] == row.traffic)
                & failover["completed"]
            ]["gap_ms"].dropna()
            observed.extend(runs.tolist())
            ax.plot(runs, np.full(len(runs), y[i] - 0.2), ".", color=colour, alpha=0.6, ms=4)
            # over the runs drawn as dots (a run that never recovered has no gap to mark: a
            # cross at the median stood for a run that was not there; the label counts it)
            hot = _saturated_rows(failover, row)
            hot = hot[hot["completed"].astype(bool)]
            if len(hot):
                gaps = hot["gap_ms"]
                ax.plot(gaps, np.full(len(hot), y[i] - 0.2), "x", color="red", ms=7, mew=1.5)
        ax.errorbar(medians[i], y[i], xerr=errors[:, i : i + 1], fmt="o", color=colour, capsize=4)
    if "cpu_saturated_runs" in summary.columns:
        labels = [
            f"{label}  [{CPU_MARK}: {n} run(s)]" if n else label
            for label, n in zip(labels, summary["cpu_saturated_runs"], strict=True)
        ]
    ax.set_yticks(y, labels, fontsize="small")
    ax.set_ylim(-0.7, len(summary) - 0.3)
    finite = np.array([*medians[np.isfinite(medians)], *observed], dtype=float)
    finite = finite[finite > 0]
    if len(finite) and finite.max() / finite.min() > 10:
        # gaps of 100 ms and of 20 s on one axis; linear below the smallest gap measured, so
        # that a gap of 0 (shorter than one sampling interval: plain 5G, the engine's best
        # link-down runs) stays on it — a log axis left those points off the figure
        ax.set_xscale("symlog", linthresh=finite.min(), linscale=0.5)
        ax.set_xlim(left=-0.3 * finite.min(), right=finite.max() * 2)  # 0 whole, not halved
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel("gap (ms): median, exact 95 % CI over recovered runs; dots: runs")
    ax.grid(alpha=0.3, axis="x")


def recovered_note(recovered: int, runs: int) -> str:
    """What a row of gaps must say when some runs never recovered: its median is over the
    others only (a median of 2 survivors of 10 read as the variant's gap)."""
    return f" ({recovered}/{runs} recovered)" if 0 < recovered < runs else ""


def _saturated_rows(failover: pd.DataFrame, row: Any) -> pd.DataFrame:
    """The runs of one summary row (variant, event, traffic) where a process saturated a core."""
    if "cpu_saturated" not in failover.columns:
        return failover.iloc[0:0]
    hot: pd.DataFrame = failover[
        (failover["variant"] == row.variant)
        & (failover["event"] == row.event)
        & (failover["traffic"] == row.traffic)
        & failover["cpu_saturated"].astype(bool)
    ]
    return hot


def plot_outage_goodput(ax: Axes, summary: pd.DataFrame) -> None:
    """Goodput during the outage after the gap per (variant, event, traffic), the rows of
    plot_failover_gaps: as a fraction of plain-5g's goodput when the run has it (issue 12's
    figure), else in Mbit/s; the median over runs with its exact 95 % CI."""
    if (
        "goodput_after_gap_mbps" not in summary.columns
        or summary["goodput_after_gap_mbps"].isna().all()
    ):
        ax.text(0.5, 0.5, "no goodput-after-gap column in this run", ha="center", va="center",
                transform=ax.transAxes, fontsize="small")  # fmt: skip
        ax.set_axis_off()
        return
    y = np.arange(len(summary))[::-1]
    relative = bool(np.isfinite(summary["after_gap_vs_5g"].to_numpy(dtype=float)).any())
    errors = error_bars(summary, "goodput_after_gap_mbps")
    rows: list[Any] = list(summary.itertuples())  # named tuples of the summary's columns
    for i, row in enumerate(rows):
        median = float(row.goodput_after_gap_mbps)
        scale = 1.0
        if relative:
            ratio = float(row.after_gap_vs_5g)
            if not np.isfinite(ratio):  # said, not left blank: no plain 5G in its cell
                ax.annotate("no plain-5g to divide by", (0.02, y[i]), va="center",
                            xycoords=("axes fraction", "data"), fontsize="x-small")  # fmt: skip
                continue
            # the interval in plain 5G's units (ratio / median lost it when the median was 0:
            # most runs carried nothing)
            scale = 1.0 / float(row.fiveg_during_mbps)
            median = ratio
        colour = variant_colour(str(row.variant))
        xerr = errors[:, i : i + 1] * scale
        ax.errorbar(median, y[i], xerr=xerr, fmt="s", color=colour, capsize=4)
        if getattr(row, "cpu_saturated_runs", 0):
            ax.plot(median, y[i] - 0.2, "x", color="red", ms=7, mew=1.5)
    if relative:
        ax.axvline(1.0, color="0.4", lw=0.8, ls="--")
        # the bars are the numerator's interval: plain 5G's median is taken as exact
        ax.set_xlabel("goodput during the outage\nafter the gap / plain 5G\n(CI: the numerator's)")
    else:
        ax.set_xlabel("goodput during the outage after the gap\n(Mbit/s)")
    # the rows are plot_failover_gaps' (the failover figure shares its y axis, and with it the
    # tick labels: blanking them here with set_yticks(y, [""...]) blanked the gaps' names too)
    ax.set_yticks(y)
    ax.tick_params(axis="y", labelleft=False)
    ax.set_ylim(-0.7, len(summary) - 0.3)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3, axis="x")


def plot_ablation(ax_gap: Axes, ax_goodput: Axes, summary: pd.DataFrame) -> None:
    """One (event, traffic) of ablation_summary: the gap and the goodput during the outage after
    the gap (/ plain 5G when the run has it) of the all-on engine and of it with each mechanism
    off, medians with exact 95 % CIs; bars of variants that saturated a core are hatched."""
    labels = [
        f"{'all on' if t == 'none' else f'no {t}'} (n={n}){recovered_note(k, n)}"
        for t, n, k in zip(summary["turns_off"], summary["runs"], summary["recovered"], strict=True)
    ]
    colours = ["C9" if t == "none" else "C0" for t in summary["turns_off"]]
    plot_gap_and_outage_bars(ax_gap, ax_goodput, summary, labels, colours)


def plot_gap_and_outage_bars(
    ax_gap: Axes,
    ax_goodput: Axes,
    summary: pd.DataFrame,
    labels: Sequence[str],
    colours: Sequence[str],
) -> None:
    """Bars of failover_gap_summary rows (one (event, traffic), with `fiveg_mbps`): the gap and
    the goodput during the outage after the gap (/ plain 5G when every row has it), medians with
    exact 95 % CIs; bars of rows where a process saturated a core are hatched."""
    x = np.arange(len(summary))
    hatches = ["//" if n else "" for n in summary["cpu_saturated_runs"]]
    gaps = summary["gap_ms_median"].to_numpy(dtype=float)
    gap_known = np.isfinite(summary["gap_ms_median_lo"].to_numpy(dtype=float)).any()
    # no caps where there is no interval (few runs): an error bar of nothing would claim one
    bars = ax_gap.bar(x, np.nan_to_num(gaps), yerr=error_bars(summary, "gap_ms_median"),
                      capsize=4 if gap_known else 0, color=colours)  # fmt: skip
    for bar, hatch, gap, recovered in zip(bars, hatches, gaps, summary["recovered"], strict=True):
        bar.set_hatch(hatch)
        if not np.isfinite(gap) or recovered == 0:
            ax_gap.annotate("no recovery", (bar.get_x() + bar.get_width() / 2, 0), ha="center",
                            va="bottom", fontsize="x-small", rotation=90)  # fmt: skip
    ax_gap.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    ax_gap.set_ylabel("gap (ms), median, exact 95 % CI")
    ax_gap.grid(alpha=0.3, axis="y")
    fiveg = summary["fiveg_mbps"].to_numpy(dtype=float)
    relative = bool(np.isfinite(fiveg).all() and (fiveg > 0).all())
    after = summary["goodput_after_gap_mbps"].to_numpy(dtype=float)
    after_ci = error_bars(summary, "goodput_after_gap_mbps")
    if relative:
        after, after_ci = after / fiveg, after_ci / fiveg
    has_ci = np.isfinite(summary["goodput_after_gap_mbps_lo"].to_numpy(dtype=float)).any()
    bars = ax_goodput.bar(
        x, np.nan_to_num(after), yerr=after_ci, capsize=4 if has_ci else 0, color=colours
    )
    for bar, hatch in zip(bars, hatches, strict=True):
        bar.set_hatch(hatch)
    if relative:
        ax_goodput.axhline(1.0, color="0.4", lw=0.8, ls="--")
    ax_goodput.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    ax_goodput.set_ylabel(  # plain 5G's median taken as exact: the bars are the numerator's
        "goodput after the gap / plain 5G's median\n(CI: numerator's)"
        if relative
        else "goodput after the gap (Mbit/s)"
    )
    ax_goodput.set_ylim(bottom=0)
    ax_goodput.grid(alpha=0.3, axis="y")


def plot_overhead(ax: Axes, overhead: pd.DataFrame) -> None:
    """Measured per-packet overhead (markers) against the framing arithmetic (dashed) for the
    UDP payload sweep, one colour per mode."""
    summary = overhead_summary(overhead)
    udp = summary[summary["workload"] == "udp"]
    for mode in _ordered(udp["mode"].tolist(), MODE_ORDER):
        rows = udp[udp["mode"] == mode]
        ax.plot(
            rows["payload_bytes"],
            rows["overhead_per_packet_bytes"],
            "o-",
            color=mode_colour(mode),
            label=f"{mode} measured",
        )
        if rows["expected_per_packet_bytes"].notna().any():
            ax.plot(
                rows["payload_bytes"],
                rows["expected_per_packet_bytes"],
                "--",
                color=mode_colour(mode),
                alpha=0.6,
                label=f"{mode} arithmetic",
            )
    ax.set_xlabel("UDP application payload (B)")
    ax.set_ylabel("wire bytes per packet beyond the payload (B)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)


def plot_overhead_pct(ax: Axes, overhead: pd.DataFrame) -> None:
    """Overhead in % of application bytes per mode over the UDP payload sweep (log scale)."""
    summary = overhead_summary(overhead)
    udp = summary[summary["workload"] == "udp"]
    for mode in _ordered(udp["mode"].tolist(), MODE_ORDER):
        rows = udp[udp["mode"] == mode]
        ax.plot(
            rows["payload_bytes"], rows["overhead_pct"], "o-", color=mode_colour(mode), label=mode
        )
    ax.set_xlabel("UDP application payload (B)")
    ax.set_ylabel("overhead (% of application bytes)")
    if len(udp) and (udp["overhead_pct"] > 0).all():
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_bulk_overhead(ax: Axes, overhead: pd.DataFrame) -> None:
    """Overhead in % of application bytes of the bulk TCP transfer, one bar per mode."""
    summary = overhead_summary(overhead)
    bulk = summary[summary["workload"] == "bulk-tcp"]
    names = _ordered(bulk["mode"].tolist(), MODE_ORDER)
    values = [float(bulk[bulk["mode"] == m]["overhead_pct"].mean()) for m in names]
    positions = np.arange(len(names))
    ax.bar(positions, values, color=[mode_colour(m) for m in names])
    for x, value in zip(positions, values, strict=True):
        ax.text(float(x), value, f"{value:.1f}", ha="center", va="bottom", fontsize="small")
    ax.set_xticks(positions, names, rotation=30, ha="right")
    ax.set_ylabel("overhead (% of application bytes)")
    ax.grid(alpha=0.3, axis="y")


def plot_goodput_heatmap(
    ax: Axes,
    pivot: pd.DataFrame,
    title: str,
    vmax: float | None,
    saturated: pd.DataFrame | None = None,
) -> AxesImage:
    """One loss × RTT heatmap of median goodput, values written in the cells; a cell where a run
    saturated a core (`saturated`: goodput_pivot(..., value="cpu_saturated")) gets a `*`."""
    values = pivot.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto", origin="lower")
    ax.set_xticks(range(len(pivot.columns)), [f"{c:g}" for c in pivot.columns])
    ax.set_yticks(range(len(pivot.index)), [f"{i:g}" for i in pivot.index])
    ax.set_xlabel("RTT (ms)")
    ax.set_ylabel("loss (%)")
    ax.set_title(title, fontsize="small")
    limit = vmax if vmax else (np.nanmax(values) if np.isfinite(values).any() else 1.0)
    hot = (
        saturated.reindex(index=pivot.index, columns=pivot.columns).fillna(False).to_numpy(bool)
        if saturated is not None
        else np.zeros(values.shape, dtype=bool)
    )
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(
                col,
                row,
                f"{value:.1f}{'*' if hot[row, col] else ''}",
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if value < 0.6 * limit else "black",
            )
    return image


def plot_aggregation(ax: Axes, aggregation: pd.DataFrame) -> None:
    """Goodput / sum of access rates per variant and reorder setting: medians over runs with
    their exact 95 % confidence intervals."""
    summary = aggregation_summary(aggregation)
    labels = [
        f"{variant}\n{scheduler}" + ("" if reorder != reorder else f", reorder={reorder}")
        for variant, scheduler, reorder in zip(
            summary["variant"], summary["scheduler"], summary["reorder"], strict=True
        )
    ]  # MPTCP has no reorder buffer of ours: NaN, the one value not equal to itself
    x = np.arange(len(summary))
    bars = ax.bar(
        x,
        summary["ratio"],
        yerr=error_bars(summary, "ratio"),
        capsize=4,
        color=[_colour(i) for i in range(len(summary))],
    )
    hot = summary["cpu_saturated_runs"].to_numpy()
    for bar, n in zip(bars, hot, strict=True):
        if n:  # hatched and said: the machine may have set this bar, not the network
            bar.set_hatch("//")
            bar.set_edgecolor("red")
    if hot.any():
        ax.legend(
            handles=[Patch(facecolor="white", edgecolor="red", hatch="//", label=CPU_MARK)],
            fontsize="x-small",
        )
    ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("goodput / (WiFi + 5G rate)\nmedian, exact 95 % CI")
    ax.grid(alpha=0.3, axis="y")


def _scale_modes(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if "mode" not in summary.columns:
        return [("", summary)]
    return [
        (m, summary[summary["mode"] == m]) for m in _ordered(summary["mode"].tolist(), MODE_ORDER)
    ]


def _clients_axis(ax: Axes, counts: Sequence[int]) -> None:
    """N on a log axis (1 to 50 clients) with a tick at each measured count."""
    ax.set_xscale("log")
    ax.set_xticks(list(counts), [str(c) for c in counts])
    ax.minorticks_off()
    ax.set_xlabel("clients N")
    ax.grid(alpha=0.3)


def plot_scale_goodput(ax: Axes, scale: pd.DataFrame) -> None:
    """Each client's goodput (dots), the mean per client (line), Jain's index (right axis)."""
    summary = scale_summary(scale)
    fairness = ax.twinx()
    for mode, rows in _scale_modes(summary):
        colour = mode_colour(mode) if mode else "C0"
        raw = scale[scale["mode"] == mode] if mode else scale
        ax.plot(raw["clients"], raw["goodput_mbps"], ".", color=colour, alpha=0.35, ms=4)
        ax.plot(
            rows["clients"],
            rows["goodput_per_client_mbps"],
            "o-",
            color=colour,
            label=f"{mode + ': ' if mode else ''}mean per client",
        )
        fairness.plot(
            rows["clients"],
            rows["jain_fairness"],
            "s--",
            color="0.3",
            ms=4,
            label=f"{mode + ': ' if mode else ''}Jain's index",
        )
    fairness.set_ylim(0, 1.05)
    fairness.set_ylabel("Jain's fairness index")
    _clients_axis(ax, sorted(scale["clients"].unique()))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("goodput per client (Mbit/s); dots: single clients")
    handles = ax.get_legend_handles_labels()[0] + fairness.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize="x-small", loc="lower left")


def plot_scale_total(ax: Axes, scale: pd.DataFrame) -> None:
    """Total goodput over all N clients per point (median over runs, exact 95 % CI)."""
    summary = scale_summary(scale)
    for mode, rows in _scale_modes(summary):
        ax.errorbar(
            rows["clients"],
            rows["goodput_total_mbps"],
            yerr=error_bars(rows, "goodput_total_mbps"),
            fmt="o-",
            capsize=3,
            color=mode_colour(mode) if mode else "C0",
            label=mode or "total",
        )
    _clients_axis(ax, sorted(scale["clients"].unique()))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("total goodput of the N clients (Mbit/s)\nmedian over runs, exact 95 % CI")
    ax.legend(fontsize="x-small")


def plot_scale_cpu(ax: Axes, scale: pd.DataFrame) -> None:
    """CPU (100 = one core) of the concentrator, of it per client, of the N qtun clients
    together and of the whole machine, against N."""
    summary = scale_summary(scale)
    for mode, rows in _scale_modes(summary):
        prefix = f"{mode}: " if mode else ""
        colour = mode_colour(mode) if mode else "C0"
        ax.errorbar(
            rows["clients"],
            rows["conc_cpu_pct"],
            yerr=error_bars(rows, "conc_cpu_pct"),
            fmt="o-",
            capsize=3,
            color=colour,
            label=f"{prefix}concentrator",
        )
        ax.plot(
            rows["clients"],
            rows["conc_cpu_per_client_pct"],
            "o:",
            color=colour,
            label=f"{prefix}concentrator per client",
        )
        if "clients_cpu_pct" in rows:
            ax.plot(
                rows["clients"],
                rows["clients_cpu_pct"],
                "^--",
                color="C5",
                ms=4,
                label=f"{prefix}all qtun clients",
            )
        if "host_cpu_pct" in rows:
            ax.plot(
                rows["clients"],
                rows["host_cpu_pct"],
                "v--",
                color="0.4",
                ms=4,
                label=f"{prefix}whole machine",
            )
    ax.axhline(100, color="0.6", lw=0.8, ls="-")  # one asyncio loop cannot use more
    _clients_axis(ax, sorted(scale["clients"].unique()))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("CPU (%, 100 = one core)")
    ax.legend(fontsize="x-small")


def plot_scale_memory(ax: Axes, scale: pd.DataFrame) -> None:
    """The concentrator's RSS at the end of the transfer (and idle, before it) against N with
    a least-squares line; its slope is the memory one more client costs."""
    summary = scale_summary(scale)
    for mode, rows in _scale_modes(summary):
        prefix = f"{mode}: " if mode else ""
        colour = mode_colour(mode) if mode else "C0"
        ax.plot(
            rows["clients"],
            rows["conc_rss_mb"],
            "o-",
            color=colour,
            label=f"{prefix}RSS after the transfer",
        )
        if "conc_rss_idle_mb" in rows:
            ax.plot(
                rows["clients"],
                rows["conc_rss_idle_mb"],
                "o:",
                color=colour,
                alpha=0.6,
                label=f"{prefix}RSS with the clients idle",
            )
        fit = rss_fit(rows)
        if fit is not None:
            xs = np.array([rows["clients"].min(), rows["clients"].max()], dtype=float)
            ax.plot(
                xs,
                fit[1] + fit[0] / 1024 * xs,
                "-",
                color="0.5",
                lw=0.8,
                label=f"{prefix}fit: {fit[1]:.1f} MB + {fit[0]:.0f} kB per client",
            )
    # RSS / N: what each client costs when the interpreter's own memory is shared among them.
    per_client = ax.twinx()
    for mode, rows in _scale_modes(summary):
        per_client.plot(
            rows["clients"],
            rows["conc_rss_per_client_kb"] / 1024,
            "d--",
            color="0.3",
            ms=4,
            label=f"{mode + ': ' if mode else ''}RSS / N (right axis)",
        )
    per_client.set_yscale("log")  # from the whole interpreter at N = 1 to a share of it
    per_client.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    per_client.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    per_client.yaxis.set_minor_formatter(NullFormatter())
    per_client.set_ylabel("concentrator RSS / N (MB per client)")
    ax.set_xticks(sorted(scale["clients"].unique()))
    ax.set_xlabel("clients N")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("concentrator RSS (MB)")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + per_client.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize="x-small", loc="center right")


# -- whole figures saved as PNG and SVG, with the run's conditions ---------------------------
def run_conditions(run_dir: Path) -> str:
    """The conditions a figure of this run was measured under, from its meta.json: runs per
    point, the link profiles, the scenario, the shaping backend and the commit (dirty if it
    was)."""
    try:
        meta = load_meta(run_dir)
    except ResultsError:
        return ""
    parameters = meta.get("parameters")
    if not isinstance(parameters, dict):  # a hand-edited meta.json: draw without them
        parameters = {}
    parts = []
    runs = parameters.get("runs")
    if runs is not None:
        fewer = _fewer_runs(run_dir, meta, runs)
        parts.append(f"n = {runs} run{'s' if runs != 1 else ''} per point{fewer}")
    profiles = {
        key.removesuffix("_profile"): value
        for key, value in parameters.items()
        if key.endswith("_profile") and isinstance(value, str)
    }
    if profiles:
        parts.append("profiles " + ", ".join(f"{k} {v}" for k, v in profiles.items()))
    scenario = meta.get("scenario")
    if isinstance(scenario, dict) and scenario.get("name"):
        parts.append(f"scenario {scenario['name']}")
    backend = meta.get("backend") or parameters.get("backend")
    if backend:
        parts.append(f"shaping {backend}")
    commit = str(meta.get("git_commit") or "")
    if commit:
        parts.append(f"commit {commit[:10]}{' (dirty)' if meta.get('git_dirty') else ''}")
    return " · ".join(parts)


def _fewer_runs(run_dir: Path, meta: dict[str, Any], runs: object) -> str:
    """The footer's "(fewer at K of M points: LO-HI)" when the run's primary table holds fewer
    runs of some point than its `runs` parameter asked for (a point that failed, a sweep
    stopped part-way, a failover run that carried nothing before its outage), so that a
    figure's n never claims more than was measured; "" when none has fewer, or when the table
    cannot tell (the loaders say what is wrong with it)."""
    from experiments.runner import ExperimentError, get_experiment  # it imports the experiments

    name = meta.get("experiment")
    if not isinstance(runs, int) or not isinstance(name, str):
        return ""
    try:
        exp = get_experiment(name)
        text = (run_dir / f"{exp.primary}.csv").read_text(encoding="utf-8")
    except (ExperimentError, OSError, UnicodeDecodeError):
        return ""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    point = [c for c in exp.key_columns if c != "run"]
    if not set(exp.key_columns) <= set(reader.fieldnames or ()):
        return ""
    seen: dict[tuple[str, ...], set[str]] = {}
    try:
        for row in reader:
            if NO_DELIVERY_BEFORE in (row.get("detail") or ""):
                continue  # no failover result: load_failover leaves it out of the figure
            seen.setdefault(tuple(row[c] or "" for c in point), set()).add(row["run"] or "")
    except csv.Error:
        return ""
    short = sorted(len(done) for done in seen.values() if len(done) < runs)
    if not short:
        return ""
    span = str(short[0]) if short[0] == short[-1] else f"{short[0]}-{short[-1]}"
    return f" (fewer at {len(short)} of {len(seen)} points: {span})"


def add_footer(fig: Figure, text: str) -> None:
    """`text` in small grey type centred under everything the figure draws.

    A figure legend put "outside" at the bottom (failover, ablation) sits at the figure's lower
    edge, and savefig's tight bounding box re-anchors it to the edge of the *cropped* figure:
    with a footer below the content the crop reaches lower and the legend slid down onto it.
    So the figure is laid out once, the layout frozen (the axes keep their places), each figure
    legend pinned where the layout put it, and the footer placed under the lowest artist."""
    fig.draw_without_rendering()  # runs the layout engine: legends and axes take their places
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine("none")
    to_figure = fig.transFigure.inverted()
    for legend in fig.legends:
        box = to_figure.transform_bbox(legend.get_window_extent())
        legend.set_loc("center")  # centred on its own box: no padding moves it
        legend.set_bbox_to_anchor((box.x0, box.y0, box.width, box.height), fig.transFigure)
    drawn = fig.get_tightbbox()  # inches, everything drawn (outside legends included)
    width, height = fig.get_size_inches()
    pad_in = 0.05
    fig.text(
        (drawn.x0 + drawn.x1) / 2 / width,
        (drawn.y0 - pad_in) / height,
        text,
        ha="center",
        va="top",
        fontsize="small",
        color="0.35",
    )


def _save(fig: Figure, out_png: Path, run_dir: Path | None = None) -> Path:
    """Write the figure as PNG and, next to it, SVG (vector, for papers); with `run_dir`, the
    run's conditions (run_conditions) go in a footer."""
    out_png = Path(out_png)
    conditions = run_conditions(run_dir) if run_dir is not None else ""
    if conditions:
        add_footer(fig, conditions)
    try:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=120, bbox_inches="tight")
        # No date and ids from a fixed salt: the same run draws the same bytes, so redrawing
        # the committed figures (`make notebooks`) changes only those whose run changed.
        with matplotlib.rc_context({"svg.hashsalt": "qtlab"}):
            fig.savefig(out_png.with_suffix(".svg"), bbox_inches="tight", metadata={"Date": None})
    except OSError as exc:  # the .svg beside it a directory, a read-only place
        raise ResultsError(
            f"cannot write figure {exc.filename or out_png} ({exc.strerror}): give another path."
        ) from None
    return out_png


def _run_title(run_dir: Path) -> str:
    return f"{Path(run_dir).parent.name} run {Path(run_dir).name}"


def failover_figure(run_dir: Path, out_png: Path) -> Path:
    """Goodput over time per variant with the outage shaded, the gap per variant with its
    95 % CI, and next to it the goodput during the outage after the gap (/ plain 5G); needs
    only failover.csv and failover_timeseries.csv of the run. Runs where a process saturated
    a core are red crosses."""
    failover = load_failover(run_dir)
    timeseries = load_failover_timeseries(run_dir)
    combos = scenarios(timeseries)
    summary = failover_gap_summary(failover)
    # a run with a scenario (testbed/scenario.py) shades its first change to its end
    try:
        scenario = load_meta(run_dir).get("scenario")
    except ResultsError:  # a run directory without its meta.json still draws
        scenario = None
    shaded = f"scenario {scenario['name']}" if isinstance(scenario, dict) else "WiFi outage"
    # with the inner TCP's window (TCP_INFO, issue 12) a panel next to each TCP time series
    inner = has_inner_tcp(timeseries)
    widths = (1.8, 1.0, 1, 0.55) if inner else (1.8, 1, 0.55)
    fig = Figure(figsize=(19 + 6 * inner, 1.5 + 3.2 * len(combos)), layout="constrained")
    grid = fig.add_gridspec(len(combos), len(widths), width_ratios=widths)
    for row, combo in enumerate(combos):
        ax_ts = fig.add_subplot(grid[row, 0])
        rows = select_scenario(failover, combo)
        outage = outage_window(rows if len(rows) else failover)
        series = select_scenario(timeseries, combo)
        plot_goodput_timeseries(ax_ts, series, outage, False, shaded)
        what = " / ".join(combo)
        ax_ts.set_title(f"goodput at the receiver{': ' + what if what else ''}", fontsize="medium")
        if inner and has_inner_tcp(series):
            ax_cwnd = fig.add_subplot(grid[row, 1], sharex=ax_ts)
            plot_inner_window(ax_cwnd, series, outage)
            ax_cwnd.set_title(f"inner TCP window: {what}", fontsize="medium")
    ax_gap = fig.add_subplot(grid[:, len(widths) - 2])
    plot_failover_gaps(ax_gap, summary, failover)
    ax_after = fig.add_subplot(grid[:, len(widths) - 1], sharey=ax_gap)
    plot_outage_goodput(ax_after, summary)
    ax_after.set_title("goodput during the outage, after the gap", fontsize="medium")
    # One legend for every panel (colours are per variant): lines are means over the runs.
    variants = _ordered(timeseries["variant"].tolist(), VARIANT_ORDER)
    handles: list[Artist] = [Line2D([], [], color=variant_colour(v), label=v) for v in variants]
    handles.append(Patch(color="0.85", label=shaded))
    if failover["cpu_saturated"].any():
        handles.append(Line2D([], [], color="red", marker="x", ls="", label=f"run: {CPU_MARK}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small")
    ax_gap.set_title("longest delivery gap around the outage", fontsize="medium")
    fig.suptitle(_run_title(run_dir))
    return _save(fig, out_png, run_dir)


def _gap_and_outage_figure(
    run_dir: Path,
    out_png: Path,
    summary: pd.DataFrame,
    draw: Callable[[Axes, Axes, pd.DataFrame], None],
    title: str,
) -> Path:
    """One row of panels per (event, traffic) of a failover summary: `draw` puts the gap and
    the goodput after the gap of that scenario's rows on the two axes."""
    combos = sorted({(str(r.event), str(r.traffic)) for r in summary.itertuples()})
    fig = Figure(figsize=(10, 0.8 + 3.6 * len(combos)), layout="constrained")
    axes = fig.subplots(len(combos), 2, squeeze=False)
    for (ax_gap, ax_goodput), (event, traffic) in zip(axes, combos, strict=True):
        rows = summary[(summary["event"] == event) & (summary["traffic"] == traffic)]
        draw(ax_gap, ax_goodput, rows.reset_index(drop=True))
        ax_gap.set_title(f"{event} / {traffic}: gap", fontsize="medium")
        ax_goodput.set_title(f"{event} / {traffic}: goodput after the gap", fontsize="medium")
    if summary["cpu_saturated_runs"].any():
        fig.legend(
            handles=[Patch(facecolor="white", edgecolor="k", hatch="//", label=CPU_MARK)],
            loc="outside lower center",
            fontsize="small",
        )
    fig.suptitle(f"{title}: {_run_title(run_dir)}")
    return _save(fig, out_png, run_dir)


def ablation_figure(run_dir: Path, out_png: Path) -> Path:
    """The ablation (issue 12): per (event, traffic), the gap and the goodput during the outage
    after the gap of the all-on engine and of it with each mechanism off in turn. ResultsError
    when the run has no ablation variant."""
    summary = ablation_summary(load_ablation(run_dir))
    return _gap_and_outage_figure(run_dir, out_png, summary, plot_ablation, "ablation")


def plot_masque(ax_gap: Axes, ax_goodput: Axes, summary: pd.DataFrame) -> None:
    """One (event, traffic) of masque_summary: each variant's bars in its own colour."""
    labels = [
        f"{v} (n={n}){recovered_note(k, n)}"
        for v, n, k in zip(summary["variant"], summary["runs"], summary["recovered"], strict=True)
    ]
    colours = [variant_colour(str(v)) for v in summary["variant"]]
    plot_gap_and_outage_bars(ax_gap, ax_goodput, summary, labels, colours)


def masque_figure(run_dir: Path, out_png: Path) -> Path:
    """Issue 18, the seed's comparison on one failover run: per (event, traffic), the gap and
    the goodput during the outage after the gap of MASQUE CONNECT-IP (one connection, migrated
    as tunnel mode's is), the QUIC tunnel's modes and MPTCP. ResultsError when the run has no
    MASQUE variant."""
    summary = masque_summary(load_masque(run_dir))
    title = "MASQUE CONNECT-IP against the QUIC tunnel"
    return _gap_and_outage_figure(run_dir, out_png, summary, plot_masque, title)


def overhead_figure(run_dir: Path, out_png: Path) -> Path:
    """UDP sweep: per-packet overhead (measured and arithmetic) and in %; bulk TCP in %."""
    overhead = load_overhead(run_dir)
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_bytes, ax_pct, ax_bulk = fig.subplots(1, 3, width_ratios=(1, 1, 0.6))
    plot_overhead(ax_bytes, overhead)
    ax_bytes.set_title("UDP: per-packet overhead on the access link", fontsize="medium")
    plot_overhead_pct(ax_pct, overhead)
    ax_pct.set_title("UDP: overhead relative to application bytes", fontsize="medium")
    plot_bulk_overhead(ax_bulk, overhead)
    ax_bulk.set_title("bulk TCP transfer", fontsize="medium")
    fig.suptitle(_run_title(run_dir))
    return _save(fig, out_png, run_dir)


def goodput_figure(run_dir: Path, out_png: Path) -> Path:
    """One loss × RTT heatmap per (mode, outer CC, loss hiding, transport, cc), on a common
    colour scale; `*`: a run of that cell saturated a core."""
    goodput = load_goodput(run_dir)
    keys = goodput_keys(goodput)
    columns = min(4, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig = Figure(figsize=(3.6 * columns + 1, 3.0 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    vmax = float(goodput["goodput_mbps"].max())
    image = None
    for ax, key in zip(axes, keys, strict=False):
        mode, outer_cc, hiding, transport, cc = key
        pivot = goodput_pivot(goodput, mode, transport, cc, outer_cc, hiding)
        hot = goodput_pivot(goodput, mode, transport, cc, outer_cc, hiding, "cpu_saturated")
        image = plot_goodput_heatmap(ax, pivot, goodput_label(*key), vmax, hot)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(
            image,
            ax=list(axes[: len(keys)]),
            label="goodput, median of the runs (Mbit/s)",
            shrink=0.8,
        )
    hot_note = f"; *: {CPU_MARK} in a run" if goodput["cpu_saturated"].any() else ""
    fig.suptitle(_run_title(run_dir) + hot_note)
    return _save(fig, out_png, run_dir)


# Line colour per outer congestion control and marker per qtun mode in goodput_loss_figure.
OUTER_CC_COLOURS = {"cubic": "C0", "bbr": "C1", "none": "C2", "reno": "C3"}
MODE_MARKERS = {"tunnel": "o", "session": "s", "stream": "^"}


def plot_goodput_vs_loss(ax: Axes, goodput: pd.DataFrame) -> None:
    """Median goodput over the runs against loss for one (transport, cc, RTT), with a band from
    the smallest to the largest run: a line per (qtun mode, outer CC, loss hiding) — colour the
    outer CC, marker the mode, dashed with loss hiding — with plain (black) and WireGuard (grey)
    as references; red crosses: a run saturated a core."""
    for key in goodput_keys(goodput):
        mode, outer_cc, hiding = key[:3]
        rows = goodput[
            (goodput["mode"] == mode)
            & (goodput["outer_cc"] == outer_cc)
            & (goodput["loss_hiding"] == hiding)
        ]
        per_loss = rows.groupby("loss_pct")["goodput_mbps"]
        median = per_loss.median().sort_index()
        low, high = per_loss.min().sort_index(), per_loss.max().sort_index()
        if mode == "plain":
            style: dict[str, Any] = {"color": "k", "lw": 2.0}
        elif mode == "wireguard":
            style = {"color": "0.5", "lw": 2.0, "ls": "-."}
        else:
            style = {
                "color": OUTER_CC_COLOURS.get(outer_cc) or mode_colour(mode),
                "marker": MODE_MARKERS.get(mode, "D"),
                "ls": "--" if hiding == "on" else "-",
                "ms": 4,
            }
        label = " ".join(p for p in (mode, outer_cc, "+hiding" if hiding == "on" else "") if p)
        (line,) = ax.plot(median.index, median.to_numpy(), label=label, **style)
        if per_loss.size().max() > 1:
            ax.fill_between(
                median.index, low.to_numpy(), high.to_numpy(), color=line.get_color(), alpha=0.12
            )
        hot = rows[rows["cpu_saturated"]]
        ax.plot(hot["loss_pct"], hot["goodput_mbps"], "x", color="red", ms=7, mew=1.5)
    ax.set_xlabel("loss (%, each way)")
    ax.set_ylabel("goodput (Mbit/s; median, band: runs)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def goodput_loss_figure(run_dir: Path, out_png: Path) -> Path:
    """Issue 13's figure: per inner traffic (columns) and RTT (rows), goodput against loss, one
    line per qtun mode x outer congestion control x loss hiding, plain and WireGuard as
    references (plot_goodput_vs_loss)."""
    goodput = load_goodput(run_dir)
    pairs = goodput[["transport", "cc"]].astype(str).drop_duplicates()
    traffic = sorted(pairs.itertuples(index=False, name=None))
    rtts = sorted(goodput["rtt_ms"].unique())
    fig = Figure(figsize=(5 * len(traffic) + 2, 3.4 * len(rtts) + 0.8), layout="constrained")
    axes = fig.subplots(len(rtts), len(traffic), squeeze=False, sharex=True)
    for row, rtt in enumerate(rtts):
        for col, (transport, cc) in enumerate(traffic):
            ax = axes[row][col]
            chosen = goodput[
                (goodput["rtt_ms"] == rtt)
                & (goodput["transport"] == transport)
                & (goodput["cc"] == cc)
            ]
            plot_goodput_vs_loss(ax, chosen)
            inner = f"TCP {cc}" if transport == "tcp" else transport.upper()
            ax.set_title(f"inner {inner}, RTT {rtt:g} ms", fontsize="medium")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes.ravel()[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if goodput["cpu_saturated"].any():
        seen[f"run: {CPU_MARK}"] = Line2D([], [], color="red", marker="x", ls="")
    fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize="small")
    fig.suptitle(_run_title(run_dir))
    return _save(fig, out_png, run_dir)


def aggregation_figure(run_dir: Path, out_png: Path) -> Path:
    aggregation = load_aggregation(run_dir)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    plot_aggregation(fig.subplots(), aggregation)
    fig.suptitle(_run_title(run_dir))
    return _save(fig, out_png, run_dir)


def scale_figure(run_dir: Path, out_png: Path) -> Path:
    """N clients on one concentrator: goodput per client with Jain's index, total goodput,
    CPU and the concentrator's memory against N."""
    scale = load_scale(run_dir)
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    (ax_good, ax_total), (ax_cpu, ax_mem) = fig.subplots(2, 2)
    plot_scale_goodput(ax_good, scale)
    ax_good.set_title("goodput per client and fairness", fontsize="medium")
    plot_scale_total(ax_total, scale)
    ax_total.set_title("goodput of all clients together", fontsize="medium")
    plot_scale_cpu(ax_cpu, scale)
    ax_cpu.set_title("CPU over the measured window", fontsize="medium")
    plot_scale_memory(ax_mem, scale)
    ax_mem.set_title("concentrator memory (linear N axis)", fontsize="medium")
    fig.suptitle(_run_title(run_dir))
    return _save(fig, out_png, run_dir)


# -- the workload experiment ----------------------------------------------------------------
def _aqm_labelled(df: pd.DataFrame) -> pd.DataFrame:
    """`mode` as the figures name it: a qtun mode run with CoDel on its datagram queue is
    "<mode> codel" (schemas.aqm_label), so every panel shows it beside the tail-drop one."""
    if "queue_aqm" in df.columns and len(df):
        df["mode"] = [aqm_label(m, a) for m, a in zip(df["mode"], df["queue_aqm"], strict=True)]
    return df


def load_workload(run_dir: Path) -> pd.DataFrame:
    return _aqm_labelled(_with_cpu_flag(_load(run_dir, "workload"), run_dir, "workload"))


def load_workload_calls(run_dir: Path) -> pd.DataFrame:
    return _aqm_labelled(_load(run_dir, "workload_calls"))


def load_workload_flows(run_dir: Path) -> pd.DataFrame:
    return _aqm_labelled(_load(run_dir, "workload_flows"))


# -- the workload experiment's video sessions (their own figure, beside the workload one) -----
def load_workload_segments(run_dir: Path) -> pd.DataFrame:
    return _aqm_labelled(_load(run_dir, "workload_segments"))


def video_figure_path(workload_png: Path) -> Path:
    """Where workload_figure puts the video figure: beside its own, `<name>-video.png`."""
    return workload_png.with_name(f"{workload_png.stem}-video{workload_png.suffix}")


def plot_video_rates(ax: Axes, segments: pd.DataFrame) -> None:
    """The ABR rule's choices: each segment's bitrate from its arrival on (when it can play),
    per mode, for the first run of each."""
    if segments.empty:
        _nothing_to_draw(ax, "video segments")
        return
    for mode in _ordered(segments["mode"].tolist(), MODE_ORDER):
        mine = segments[segments["mode"] == mode]
        first = mine[mine["run"] == mine["run"].min()].sort_values("segment")
        ax.step(first["arrival_s"], first["rate_mbps"], where="post", marker=".",
                color=mode_colour(mode), label=mode)  # fmt: skip
    ax.set_yticks(LADDER_MBPS)
    ax.set_xlabel("time from the session's start (s), at each segment's arrival")
    ax.set_ylabel("segment bitrate (Mbit/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")


def _median_text(rows: pd.DataFrame, column: str, spec: str) -> str:
    values = pd.to_numeric(rows.get(column, pd.Series(dtype=float)), errors="coerce").dropna()
    return format(float(values.median()), spec) if len(values) else "-"


def plot_video_sessions(ax: Axes, points: pd.DataFrame) -> None:
    """Per mode: the mean bitrate played (bar: median over runs, dots: the runs), and under it
    the medians over runs of switches, stalls, stall time and startup delay; red crosses: a
    point where a process saturated a core."""
    rows = points[points["workload"] == "video"]
    if rows.empty or "video_bitrate_mbps" not in rows.columns:
        _nothing_to_draw(ax, "video sessions")
        return
    modes = _ordered(rows["mode"].tolist(), MODE_ORDER)
    labels = []
    for m, mode in enumerate(modes):
        mine = rows[rows["mode"] == mode]
        rates = pd.to_numeric(mine["video_bitrate_mbps"], errors="coerce")
        median = float(rates.median()) if rates.notna().any() else 0.0
        ax.bar(m, median, 0.6, color=mode_colour(mode), alpha=0.6)
        ax.plot([m] * len(rates), rates, ".", color="k", ms=4)
        if mine["cpu_saturated"].any():
            _mark_saturated(ax, m, median)
        labels.append(
            f"{mode}\nswitches {_median_text(mine, 'video_switches', '.0f')}\n"
            f"stalls {_median_text(mine, 'video_stalls', '.0f')} "
            f"({_median_text(mine, 'video_stall_s', '.1f')} s)\n"
            f"startup {_median_text(mine, 'video_startup_s', '.2f')} s"
        )
    ax.set_xticks(range(len(modes)), labels, fontsize="x-small")
    ax.set_ylim(0, max(LADDER_MBPS) * 1.05)
    ax.set_ylabel("mean bitrate played (Mbit/s)")
    ax.grid(alpha=0.3, axis="y")


def workload_video_figure(run_dir: Path, out_png: Path) -> Path:
    """The workload experiment's video sessions: the rate chosen for each segment over time,
    and per mode the mean bitrate played with switches, stalls and startup delay."""
    points = load_workload(run_dir)
    has_segments = (Path(run_dir) / TABLES["workload_segments"].file_name).exists()
    segments = load_workload_segments(run_dir) if has_segments else pd.DataFrame()
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax_rates, ax_sessions = fig.subplots(1, 2, width_ratios=(3, 2))
    plot_video_rates(ax_rates, segments)
    ax_rates.set_title("adaptive-bitrate video: the rate of each segment", fontsize="medium")
    plot_video_sessions(ax_sessions, points)
    ax_sessions.set_title("per session: bitrate played, switches, stalls", fontsize="medium")
    video = points[points["workload"] == "video"]
    hot = f"; x: {CPU_MARK}" if video["cpu_saturated"].any() else ""
    fig.suptitle(_run_title(run_dir) + hot)
    return _save(fig, out_png, run_dir)


def _nothing_to_draw(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", color="0.4")
    ax.set_axis_off()


def _mark_saturated(ax: Axes, x: float, y: float) -> None:
    ax.plot([x], [y], "x", color="red", ms=8, mew=1.5)


def plot_workload_calls(
    ax: Axes, calls: pd.DataFrame, points: pd.DataFrame, column: str, label: str
) -> None:
    """One of the calls' columns per mode, alone (solid) and under a bulk load (hatched):
    bars are the median over calls, dots the calls, error bars for the one-way delay reach its
    median 95th percentile; red crosses: a point where a process saturated a core."""
    voip = calls[calls["workload"].isin(["voip", "voip-bulk"])]
    if voip.empty:
        _nothing_to_draw(ax, "VoIP calls")
        return
    modes = _ordered(voip["mode"].tolist(), MODE_ORDER)
    kinds = [k for k in ("voip", "voip-bulk") if k in set(voip["workload"])]
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        for m, mode in enumerate(modes):
            rows = voip[(voip["mode"] == mode) & (voip["workload"] == kind)]
            if rows.empty:
                continue
            x = m - 0.4 + width * (k + 0.5)
            median = float(rows[column].median())
            upper = float(rows["owd_p95_ms"].median()) if column == "owd_median_ms" else median
            ax.bar(
                x, median, width * 0.9, color=mode_colour(mode),
                hatch="//" if kind == "voip-bulk" else None, edgecolor="white",
                yerr=[[0], [max(0.0, upper - median)]] if upper > median else None, capsize=3,
            )  # fmt: skip
            ax.plot([x] * len(rows), rows[column], ".", color="k", ms=3)
            # the value, said: a MOS of 1 (the scale's floor) is a bar of no height
            ax.annotate(f"{median:.3g}", (x, median), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize="x-small")  # fmt: skip
            hot = points[
                (points["mode"] == mode) & (points["workload"] == kind) & points["cpu_saturated"]
            ]
            if len(hot):
                _mark_saturated(ax, x, median)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, axis="y")
    shown = {
        "voip": Patch(facecolor="0.6", label="call alone"),
        "voip-bulk": Patch(
            facecolor="0.6", hatch="//", edgecolor="white", label="under a bulk flow"
        ),
    }
    ax.legend(handles=[shown[k] for k in kinds], fontsize="x-small")


def plot_workload_fct(ax: Axes, flows: pd.DataFrame) -> None:
    """The CDF of the web objects' completion times per mode: alone (solid) and under a bulk
    flow (dashed); objects not fetched whole are left out (their count is in workload.csv)."""
    web = flows[(flows["kind"] == "web") & (flows["outcome"] == "ok")]
    if web.empty:
        _nothing_to_draw(ax, "web objects")
        return
    for mode in _ordered(web["mode"].tolist(), MODE_ORDER):
        for kind, style in (("web", "-"), ("web-bulk", "--")):
            fct = np.sort(web[(web["mode"] == mode) & (web["workload"] == kind)]["fct_ms"])
            if len(fct):
                y = np.arange(1, len(fct) + 1) / len(fct)
                label = f"{mode}{' + bulk' if kind == 'web-bulk' else ''}"
                ax.step(fct, y, where="post", ls=style, color=mode_colour(mode), label=label)
    ax.set_xscale("log")
    ax.set_xlabel("flow completion time (ms, log)")
    ax.set_ylabel("fraction of objects")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")


def plot_workload_parallel(ax: Axes, flows: pd.DataFrame, points: pd.DataFrame) -> None:
    """Parallel bulk connections per mode: the total goodput (bar, mean over runs), each
    connection's (dots) and Jain's index over them (in the label)."""
    bulk = flows[flows["kind"] == "bulk"]
    rows = points[points["workload"] == "bulk-parallel"]
    if bulk.empty or rows.empty:
        _nothing_to_draw(ax, "parallel bulk flows")
        return
    modes = _ordered(rows["mode"].tolist(), MODE_ORDER)
    labels = []
    for m, mode in enumerate(modes):
        mine = rows[rows["mode"] == mode]
        total = float(mine["goodput_mbps"].mean())
        ax.bar(m, total, 0.6, color=mode_colour(mode), alpha=0.5)
        shares = bulk[bulk["mode"] == mode]["goodput_mbps"]
        ax.plot([m] * len(shares), shares, "o", color=mode_colour(mode), ms=4)
        if mine["cpu_saturated"].any():
            _mark_saturated(ax, m, total)
        labels.append(f"{mode}\nJain {float(mine['jain_fairness'].mean()):.2f}")
    ax.set_xticks(range(len(modes)), labels)
    ax.set_ylabel("goodput (Mbit/s): all (bar), each connection (dots)")
    ax.grid(alpha=0.3, axis="y")


def workload_figure(run_dir: Path, out_png: Path) -> Path:
    """The workload experiment: the calls' MOS per mode (alone and under a bulk flow) with the
    fixed playout buffer and with the adaptive one (a run from before it: that panel says so),
    their one-way delay, the web objects' completion-time CDFs, and the parallel bulk
    connections."""
    points = load_workload(run_dir)
    calls = (
        load_workload_calls(run_dir) if (Path(run_dir) / "workload_calls.csv").exists() else None
    )
    flows = (
        load_workload_flows(run_dir) if (Path(run_dir) / "workload_flows.csv").exists() else None
    )
    fig = Figure(figsize=(17, 8.5), layout="constrained")
    # three VoIP panels above (MOS fixed, MOS adaptive, delay), two wider ones below
    axes = fig.subplot_mosaic("MMAADD;FFFBBB")
    ax_mos, ax_adaptive, ax_owd, ax_fct, ax_bulk = (axes[k] for k in "MADFB")
    if calls is not None:
        plot_workload_calls(ax_mos, calls, points, "mos", "MOS (G.107 E-model)")
        ax_mos.set_ylim(1, 4.5)
        if "mos_adaptive" in calls.columns and calls["mos_adaptive"].notna().any():
            plot_workload_calls(ax_adaptive, calls, points, "mos_adaptive", "MOS (G.107 E-model)")
            ax_adaptive.set_ylim(1, 4.5)
        else:  # a run from before the adaptive buffer was scored
            _nothing_to_draw(ax_adaptive, "adaptive-playout MOS")
        plot_workload_calls(ax_owd, calls, points, "owd_median_ms", "one-way delay (ms)")
    else:
        for ax in (ax_mos, ax_adaptive, ax_owd):
            _nothing_to_draw(ax, "VoIP calls")
    ax_mos.set_title("VoIP: MOS per call, fixed playout buffer", fontsize="medium")
    ax_adaptive.set_title("VoIP: MOS per call, adaptive playout buffer", fontsize="medium")
    ax_owd.set_title("VoIP: median one-way delay (bar to the median p95)", fontsize="medium")
    if flows is not None:
        plot_workload_fct(ax_fct, flows)
        plot_workload_parallel(ax_bulk, flows, points)
    else:
        _nothing_to_draw(ax_fct, "web objects")
        _nothing_to_draw(ax_bulk, "parallel bulk flows")
    ax_fct.set_title("web-like short flows: completion time", fontsize="medium")
    ax_bulk.set_title("parallel bulk TCP connections", fontsize="medium")
    hot = f"; x: {CPU_MARK}" if points["cpu_saturated"].any() else ""
    fig.suptitle(_run_title(run_dir) + hot)
    if (points["workload"] == "video").any():
        workload_video_figure(run_dir, video_figure_path(out_png))
    return _save(fig, out_png, run_dir)


FIGURES: dict[str, Callable[[Path, Path], Path]] = {
    "failover": failover_figure,
    "overhead": overhead_figure,
    "goodput": goodput_figure,
    "aggregation": aggregation_figure,
    "scale": scale_figure,
    "workload": workload_figure,
}


def figure_for_run(run_dir: Path, out_png: Path | None = None) -> Path:
    """`qtlab figure RUN_DIR`: the figure of a run of any experiment that has one, by the
    experiment named in its meta.json; by default RUN_DIR/<experiment>.png (an SVG is written
    next to the PNG)."""
    if out_png is not None and Path(out_png).suffix.lower() != ".png":
        raise UsageError(
            f"--out {out_png}: give a .png path (the figure is written as PNG, and as SVG "
            "next to it)."
        )
    if out_png is not None and Path(out_png).is_dir():
        raise UsageError(f"--out {out_png} is a directory: give the path of a .png file to write.")
    experiment = str(load_meta(run_dir).get("experiment", ""))
    draw = FIGURES.get(experiment)
    if draw is None:
        raise ResultsError(
            f"{run_dir} is a run of {experiment or 'no experiment'!r}, which has no figure; "
            f"figures exist for {', '.join(sorted(FIGURES))}."
        )
    table = Path(run_dir) / f"{experiment}.csv"
    if table.is_file() and not _has_rows(table):
        raise ResultsError(f"{table} has no rows: the run measured nothing to draw.")
    return draw(Path(run_dir), out_png or Path(run_dir) / f"{experiment}.png")


def _has_rows(path: Path) -> bool:
    """Whether a CSV has a line after its header."""
    with open(path, "rb") as f:
        return len([line for _, line in zip(range(2), f, strict=False) if line.strip()]) > 1


# -- notebooks -------------------------------------------------------------------------------
# Each notebook's table: what notebook_setup loads for it.
# A notebook named other than its experiment: the experiment whose runs it reads.
NOTEBOOK_EXPERIMENTS = {"ablation": "failover", "masque": "failover"}
LOADERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "failover": load_failover,
    "ablation": load_ablation,
    "masque": load_masque,
    "overhead": load_overhead,
    "goodput": load_goodput,
    "aggregation": load_aggregation,
    "scale": load_scale,
}


def _in_notebook() -> bool:
    """Whether this runs in an IPython kernel (a notebook), where display() shows things."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def say(markdown: str) -> None:
    """Show one sentence: as Markdown in a notebook, printed elsewhere."""
    if not _in_notebook():
        print(markdown)
        return
    from IPython.display import Markdown, display

    display(Markdown(markdown))


def cpu_report(data: pd.DataFrame | None) -> pd.DataFrame | None:
    """A notebook's CPU check: says how many points saturated a core (>= 90 % of one, any
    recorded process) and returns them with their CPU columns (None: nothing to check)."""
    if data is None:
        return None
    if not any(c.startswith("cpu_") and c.endswith("_pct") for c in data.columns):
        say("This run recorded no CPU per point (it predates the CPU columns).")
        return None
    hot = data[data["cpu_saturated"].astype(bool)]
    if hot.empty:
        say(f"No point saturated a core ({len(data)} points, every process below 90 %).")
        return None
    say(f"**{len(hot)} of {len(data)} points saturated a core**: kept, and marked in the figures.")
    cpu = [c for c in data.columns if c.startswith("cpu_")]
    keys = [c for c in ("variant", "mode", "outer_cc", "loss_hiding", "transport", "cc",
                        "loss_pct", "rtt_ms", "scheduler", "reorder", "event", "traffic", "run")
            if c in data.columns]  # fmt: skip
    return hot[keys + cpu]


def run_sentence(run_dir: Path, meta: dict[str, Any]) -> str:
    """Which run this is: commit, kernel, backend, seed, when it finished, what failed."""
    failed = len(meta.get("failed") or [])
    dirty = " (dirty)" if meta.get("git_dirty") else ""
    return (
        f"Run `{run_dir}`: commit `{meta.get('git_commit', '?')}`{dirty}, "
        f"kernel {meta.get('kernel', '?')}, shaping backend {meta.get('backend', '?')}, "
        f"seed {meta.get('seed', '?')}, finished {meta.get('finished', '?')}"
        f"{f'; {failed} point(s) failed (listed in meta.json)' if failed else ''}."
    )


@dataclass
class NotebookRun:
    """What a notebook works on (notebook_setup): its run (None when the experiment has none
    yet), where its figures go, the run's meta.json and table (None: nothing to show)."""

    experiment: str
    run_dir: Path | None
    figures_dir: Path
    meta: dict[str, Any] = field(default_factory=dict)
    data: pd.DataFrame | None = None

    def figure(self, make: Callable[[Path, Path], Path], name: str) -> None:
        """`make(run_dir, figures_dir / name)` (one of the `*_figure` helpers), shown in the
        notebook; or one sentence saying why there is no figure."""
        if self.run_dir is None or self.data is None:
            return
        try:
            png = make(self.run_dir, self.figures_dir / name)
        except ResultsError as exc:
            say(f"No figure: {exc}")
            return
        if _in_notebook():
            from IPython.display import Image, display

            display(Image(filename=str(png)))
        print(f"saved {png}")


def notebook_setup(
    name: str,
    results_dir: str | Path | None = "",
    results_root: str | Path | None = "",
    figures_dir: str | Path | None = "",
) -> NotebookRun:
    """The top of every notebook, from its papermill-style parameters: `results_dir` a run
    ("": the run `<results_root>/figures/runs.toml` pins the notebook to (pinned_run), else the
    latest complete run under `results_root` that has what the notebook shows; "": results/),
    `figures_dir` where PNGs
    go ("": results/figures). Says which run it is (or that there is none yet, and what to run),
    and loads the notebook's table (LOADERS[name]; or says in one sentence why the run has
    nothing to show). `name` is the experiment's, or a notebook's reading another experiment's
    runs (NOTEBOOK_EXPERIMENTS: "ablation" reads failover runs)."""
    pd.set_option("display.precision", 2)
    experiment = NOTEBOOK_EXPERIMENTS.get(name, name)
    root = Path(results_root) if results_root else RESULTS_ROOT
    out_dir = Path(figures_dir) if figures_dir else FIGURES_DIR
    pinned = None if results_dir else pinned_run(name, root)
    run_dir = pinned or resolve_run(experiment, results_dir, root)
    if run_dir is None:
        say(
            f"No {name} results yet under `{root / experiment}`: run "
            f"`qtlab run {experiment}`, then re-run this notebook."
        )
        return NotebookRun(name, None, out_dir)
    try:
        data = LOADERS[name](run_dir)
    except ResultsError as exc:
        # No run named: an older run may have what this notebook shows (the masque and
        # ablation notebooks need variants that not every failover run has).
        older = [] if results_dir or pinned else run_dirs(experiment, root)[:-1]
        for candidate in reversed(older):
            try:
                data = LOADERS[name](candidate)
            except ResultsError:
                continue
            say(f"The latest {experiment} run `{run_dir}` has nothing for this notebook ({exc})")
            run_dir = candidate
            break
        else:
            meta = load_meta(run_dir)
            say(run_sentence(run_dir, meta))
            say(f"This {name} run has nothing to show: {exc}")
            return NotebookRun(name, run_dir, out_dir, meta)
    meta = load_meta(run_dir)
    if pinned:
        say(
            f"`{root / 'figures' / 'runs.toml'}` pins this notebook to the run its committed "
            "figures cite; set `results_dir` to draw another run."
        )
    say(run_sentence(run_dir, meta))
    return NotebookRun(name, run_dir, out_dir, meta, data)
