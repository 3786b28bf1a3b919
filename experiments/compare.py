"""Two runs of one experiment, cell by cell: did a change move the results beyond their noise?

`qtlab compare BEFORE AFTER` (README "Comparing two runs") answers the question every change to
the data path must answer ("no change in behaviour: the results stay within their noise"): for
each cell the two runs share (the experiment's parameters, the run number aside), the median of
each run's points with its exact distribution-free 95 % interval (`analysis.median_ci`), the
change of the median, and a verdict:

    same          the two intervals overlap
    higher/lower  AFTER's interval lies wholly above / below BEFORE's, or (failover's gap, where
                  a run that never recovered counts as an endless gap) a significantly larger /
                  smaller share of AFTER's runs never recovered (Fisher's exact test, two-sided)
    too few runs  either side has too few points for an interval (6 at 95 %)

Two 95 % intervals that do not overlap mean a difference at well under the 5 % level (the test
is conservative: a real but small shift can still read "same"); that is the claim a results
README may make from it, and no more.

Which parameters make a cell and which measurement is compared, per experiment, is MEASURES.
The scale experiment is compared per run (its CSV has a row per client): the total goodput and
Jain's index of each run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.analysis import (
    ResultsError,
    load_aggregation,
    load_failover,
    load_goodput,
    load_meta,
    load_scale,
    median_ci,
)
from experiments.text_columns import align
from experiments.traffic import jain_index
from tunnel.user_error import UsageError

VERDICTS = ("same", "higher", "lower", "too few runs")
SCALE_KEYS = ("mode", "workers", "clients_per_process", "conc_txqueuelen", "clients")


def _scale_per_run(scale: pd.DataFrame) -> pd.DataFrame:
    """One row per scale point (a run of a cell): its clients' total goodput and Jain's index."""
    keys = [c for c in SCALE_KEYS if c in scale.columns]
    rows: list[dict[str, Any]] = []
    for key, group in scale.groupby([*keys, "run"], sort=True, dropna=False):
        jain = jain_index(group["goodput_mbps"].tolist())
        row: dict[str, Any] = dict(zip([*keys, "run"], key, strict=True))
        row["goodput_total_mbps"] = float(group["goodput_mbps"].sum())
        row["jain_fairness"] = math.nan if jain is None else jain
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Measure:
    """What makes a cell of an experiment's results, and what is compared in it."""

    load: Callable[[Path], pd.DataFrame]  # a run directory's points, one row per point
    keys: tuple[str, ...]  # the parameters of a cell (a key a run lacks is left out)
    metrics: tuple[str, ...]  # the measurements, the first compared by default


MEASURES: dict[str, Measure] = {
    "goodput": Measure(
        load_goodput,
        ("mode", "outer_cc", "loss_hiding", "transport", "cc", "loss_pct", "rtt_ms"),
        ("goodput_mbps",),
    ),
    # the gap over every run, one that never recovered counting as an endless gap (over the
    # recovered runs only, 10 of 10 recovering and 6 of 10 were "same"); the goodput during
    # the outage after the gap (issue 12) over every run
    "failover": Measure(
        lambda run_dir: endless_unrecovered(load_failover(run_dir)),
        ("variant", "event", "traffic"),
        ("gap_ms", "goodput_after_gap_mbps", "goodput_before_mbps"),
    ),
    "aggregation": Measure(
        load_aggregation, ("variant", "scheduler", "reorder"), ("goodput_mbps", "ratio")
    ),
    "scale": Measure(
        lambda run_dir: _scale_per_run(load_scale(run_dir)),
        SCALE_KEYS,
        ("goodput_total_mbps", "jain_fairness"),
    ),
}


def endless_unrecovered(failover: pd.DataFrame) -> pd.DataFrame:
    """failover.csv's rows with the gap of a run that never recovered as +inf: a median (and
    its interval) over every run then says "never" once half of them did not recover."""
    failover = failover.copy()
    failover.loc[~failover["completed"].astype(bool), "gap_ms"] = math.inf
    return failover


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test of the 2x2 table [[a, b], [c, d]]: the
    probability, given its margins, of a table at most as likely as this one."""
    row, column, n = a + b, a + c, a + b + c + d

    def probability(x: int) -> float:
        return math.comb(row, x) * math.comb(n - row, column - x) / math.comb(n, column)

    observed = probability(a)
    tables = range(max(0, column - (n - row)), min(row, column) + 1)
    return min(1.0, sum(q for x in tables if (q := probability(x)) <= observed * (1 + 1e-9)))


def _verdict(lo_a: float, hi_a: float, lo_b: float, hi_b: float) -> str:
    if any(math.isnan(x) for x in (lo_a, hi_a, lo_b, hi_b)):
        return "too few runs"
    if lo_b > hi_a:
        return "higher"
    if hi_b < lo_a:
        return "lower"
    return "same"


def _cells(points: pd.DataFrame, keys: Sequence[str]) -> dict[tuple[str, ...], pd.DataFrame]:
    """The points of each cell, keyed by the cell's parameters as text (so that 2.0 read from
    one CSV and 2.0 from another, or True and "True", are the same cell)."""
    if not keys:
        return {(): points}
    # an empty parameter (MPTCP's reorder) is a value of its own, not a point to leave out
    text = points[list(keys)].astype(object).fillna("").astype(str)
    cells: dict[tuple[str, ...], pd.DataFrame] = {}
    for key, index in text.groupby(list(keys), sort=False, dropna=False).groups.items():
        cells[tuple(str(v) for v in (key if isinstance(key, tuple) else (key,)))] = points.loc[
            index
        ]
    return cells


class CompareError(UsageError):
    """Runs or a metric `qtlab compare` was given that it cannot compare; one sentence."""


def compare_points(
    before: pd.DataFrame,
    after: pd.DataFrame,
    keys: Sequence[str],
    metric: str,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per cell present in both: n, the median and its exact interval of `metric` on each side
    (`before`, `before_lo`, `before_hi`, `after`, ...), `change_pct` (the medians' relative
    change) and `verdict` (module docstring). Cells in the order of `before`."""
    for name, points in (("before", before), ("after", after)):
        if metric not in points.columns:
            raise ResultsError(f"the {name} run has no column {metric!r} to compare.")
    keys = [k for k in keys if k in before.columns and k in after.columns]
    cells_after = _cells(after, keys)
    rows: list[dict[str, Any]] = []
    for key, group in _cells(before, keys).items():
        other = cells_after.get(key)
        if other is None:
            continue
        a = pd.to_numeric(group[metric], errors="coerce").dropna()
        b = pd.to_numeric(other[metric], errors="coerce").dropna()
        median_a, lo_a, hi_a = median_ci(a, confidence)
        median_b, lo_b, hi_b = median_ci(b, confidence)
        verdict = _verdict(lo_a, hi_a, lo_b, hi_b)
        endless_a, endless_b = int(np.isinf(a).sum()), int(np.isinf(b).sum())
        if verdict in ("same", "too few runs") and (endless_a or endless_b) and len(a) and len(b):
            # the intervals alone miss a change in how often a run never ends (10 of 10
            # recovering against 4 of 10 overlap: [101, 108] and [100, never])
            p = fisher_exact(len(a) - endless_a, endless_a, len(b) - endless_b, endless_b)
            if p < 1 - confidence:
                verdict = "higher" if endless_b / len(b) > endless_a / len(a) else "lower"
        finite = math.isfinite(median_a) and math.isfinite(median_b)
        change = (median_b / median_a - 1) * 100 if median_a and finite else math.nan
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row.update(
            {
                "metric": metric,
                "n_before": len(a),
                "before": median_a,
                "before_lo": lo_a,
                "before_hi": hi_a,
                "n_after": len(b),
                "after": median_b,
                "after_lo": lo_b,
                "after_hi": hi_b,
                "change_pct": change,
                "verdict": verdict,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def compare_runs(
    before_dir: Path, after_dir: Path, metric: str | None = None
) -> tuple[str, pd.DataFrame]:
    """The experiment both runs are of, and compare_points of its cells (the experiment's first
    metric unless `metric` names another). CompareError (exit 2), one sentence, for two different
    experiments, one this cannot compare, an unknown metric, or runs that share no cell."""
    names = [str(load_meta(d).get("experiment", "")) for d in (before_dir, after_dir)]
    if names[0] != names[1]:
        raise CompareError(
            f"{before_dir} is a {names[0] or 'unnamed'} run and {after_dir} a "
            f"{names[1] or 'unnamed'} run: compare two runs of the same experiment."
        )
    measure = MEASURES.get(names[0])
    if measure is None:
        raise CompareError(
            f"qtlab compare knows the {', '.join(sorted(MEASURES))} experiments, not "
            f"{names[0]!r}: compare its CSVs with experiments.compare.compare_points."
        )
    metric = metric or measure.metrics[0]
    if metric not in measure.metrics:
        raise CompareError(
            f"{metric!r} is not one of the {names[0]} experiment's compared metrics: pick one "
            f"of {', '.join(measure.metrics)}."
        )
    table = compare_points(measure.load(before_dir), measure.load(after_dir), measure.keys, metric)
    if table.empty:
        raise CompareError(
            f"{before_dir} and {after_dir} share no cell ({', '.join(measure.keys)}): they "
            "measured different parameters."
        )
    return names[0], table


def _number(value: float) -> str:
    if math.isinf(value):
        return "never"  # a gap of runs that never recovered (endless_unrecovered)
    return "-" if math.isnan(value) else f"{value:.4g}"


def _interval(row: Mapping[Hashable, Any], side: str) -> str:
    median, lo, hi = (_number(row[side + suffix]) for suffix in ("", "_lo", "_hi"))
    return f"{median} [{lo}, {hi}]"


def format_comparison(table: pd.DataFrame) -> str:
    """The table as aligned text: the cell, then n, median [interval] on each side, the change
    and the verdict; a last line counts the verdicts."""
    fixed = {"metric", "n_before", "before", "before_lo", "before_hi", "n_after", "after"}
    fixed |= {"after_lo", "after_hi", "change_pct", "verdict"}
    keys = [c for c in table.columns if c not in fixed]
    header = [*keys, "n", "before [95 % CI]", "n", "after [95 % CI]", "change", "verdict"]
    lines = [header]
    for row in table.to_dict("records"):
        lines.append(
            [
                *(str(row[k]) for k in keys),
                str(row["n_before"]),
                _interval(row, "before"),
                str(row["n_after"]),
                _interval(row, "after"),
                "-" if math.isnan(row["change_pct"]) else f"{row['change_pct']:+.1f} %",
                str(row["verdict"]),
            ]
        )
    text = align(lines)
    counts = table["verdict"].value_counts()
    tally = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS)
    metric = str(table["metric"].iloc[0])
    text.append(f"{metric}, {len(table)} cells: {tally} (median and its exact 95 % interval)")
    return "\n".join(text)


def compare_from_args(before: Path, after: Path, metric: str | None, csv: Path | None) -> int:
    """`qtlab compare`: print the comparison (and write it as CSV when asked)."""
    if csv is not None and csv.is_dir():
        raise CompareError(f"--csv {csv} is a directory: give the path of a file to write.")
    _, table = compare_runs(before, after, metric)
    print(format_comparison(table))
    if csv is not None:
        try:
            csv.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(csv, index=False)
        except OSError as exc:
            raise ResultsError(f"cannot write --csv {csv} ({exc.strerror}).") from None
        print(f"compare: {csv}")
    return 0
