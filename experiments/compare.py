"""Two runs of one experiment, cell by cell: did a change move the results beyond their noise?

`qtlab compare BEFORE AFTER` (README "Comparing two runs") answers the question every change to
the data path must answer ("no change in behaviour: the results stay within their noise"): for
each cell the two runs share (the experiment's parameters, the run number aside), the median of
each run's points with its exact distribution-free 95 % interval (`analysis.median_ci`), the
change of the median, the p-value of an exact two-sided rank-sum test (`rank_sum_p`), that
p-value Holm-adjusted over the compared cells, and a verdict:

    higher/lower        AFTER's points rank above / below BEFORE's: Holm-adjusted p < 5 %
    no change detected  the test cannot tell them apart at that level (not "the same": with
                        10 runs a side, a shift smaller than the runs' spread passes unseen)
    too few runs        no split of that many points could reach 5 % (4 a side is enough)
    before only / after only   a cell one run measured and the other did not

A failover run that never recovered counts as an endless gap (ranked above every finite one):
a change in how often runs fail to recover moves the ranks as a slower recovery does. Holm's
step-down adjustment holds the chance of any false "higher"/"lower" in the comparison at 5 %,
however many cells it has.

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

NO_CHANGE = "no change detected"
VERDICTS = (NO_CHANGE, "higher", "lower", "too few runs", "before only", "after only")
ALPHA = 0.05  # the level of the verdicts, Holm-adjusted over a comparison's cells
EXACT_UP_TO = 50  # points a side the rank-sum test counts exactly; above, normal approximation
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


def _doubled_midranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank among `values` (1 = smallest), tied values sharing the mean of their
    ranks, doubled so that every rank is an integer."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        ranks[order[start : end + 1]] = start + end + 2  # (start+1 + end+1) / 2, doubled
        start = end + 1
    return ranks


def rank_sum_p(before: Sequence[float] | pd.Series, after: Sequence[float] | pd.Series) -> float:
    """Two-sided p-value of the Wilcoxon-Mann-Whitney rank-sum test of `after` against
    `before` (Mann & Whitney 1947): the chance, were the two sets of points one population,
    that AFTER's rank sum lies at least as far from its mean as it does. Ties take their
    mid-rank; up to EXACT_UP_TO points a side the distribution is counted over every split of
    these very ranks (exact with ties, no assumption on the distribution: gaps are skewed);
    above, the normal approximation with the tie correction. +inf ranks above every finite
    value. NaN when a side is empty."""
    a = np.asarray(before, dtype=float)
    b = np.asarray(after, dtype=float)
    m, n = len(a), len(b)
    if m == 0 or n == 0:
        return math.nan
    total = m + n
    ranks = _doubled_midranks(np.concatenate([a, b]))
    observed = int(ranks[m:].sum())
    mean = n * (total + 1)  # of AFTER's doubled rank sum
    if max(m, n) > EXACT_UP_TO:
        _, counts = np.unique(ranks, return_counts=True)
        ties = float(((counts**3 - counts).sum()) / (total * (total - 1)))
        variance = 4 * m * n / 12 * ((total + 1) - ties)  # of the doubled sum
        if variance <= 0:
            return 1.0
        z = max(abs(observed - mean) - 1, 0) / math.sqrt(variance)  # continuity: 1/2, doubled
        return min(1.0, math.erfc(z / math.sqrt(2)))
    # ways[k, s]: how many k-point subsets of the ranks seen so far sum to s (0/1 knapsack)
    top = int(ranks.sum())
    ways = np.zeros((n + 1, top + 1))
    ways[0, 0] = 1.0
    for rank in ranks:
        ways[1:, rank:] = ways[1:, rank:] + ways[:-1, : top + 1 - rank]
    sums = np.flatnonzero(ways[n])
    far = np.abs(sums - mean) >= abs(observed - mean)
    return min(1.0, float(ways[n, sums[far]].sum() / ways[n].sum()))


def smallest_p(m: int, n: int) -> float:
    """The smallest two-sided p-value rank_sum_p can give with m and n points (no ties):
    both extreme splits, 2 / C(m+n, n)."""
    return min(1.0, 2 / math.comb(m + n, n)) if m and n else 1.0


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test of the 2x2 table [[a, b], [c, d]]: the
    probability, given its margins, of a table at most as likely as this one."""
    row, column, n = a + b, a + c, a + b + c + d

    def probability(x: int) -> float:
        return math.comb(row, x) * math.comb(n - row, column - x) / math.comb(n, column)

    observed = probability(a)
    tables = range(max(0, column - (n - row)), min(row, column) + 1)
    return min(1.0, sum(q for x in tables if (q := probability(x)) <= observed * (1 + 1e-9)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979): each p-value multiplied by the number of
    hypotheses not yet rejected at its rank, made monotone; NaN stays NaN and is not counted."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


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


def _saturated(points: pd.DataFrame) -> int:
    """How many of these points the loader flagged: a process or the machine saturated."""
    flags = points.get("cpu_saturated")
    return 0 if flags is None else int(flags.fillna(False).astype(bool).sum())


def compare_points(
    before: pd.DataFrame,
    after: pd.DataFrame,
    keys: Sequence[str],
    metric: str,
    confidence: float = 1 - ALPHA,
) -> pd.DataFrame:
    """Per cell: n, the median and its exact interval of `metric` on each side (`before`,
    `before_lo`, `before_hi`, `after`, ...), `change_pct` (the medians' relative change), `p`
    (rank_sum_p) and `p_holm`, `p_never` and `p_never_holm` (Fisher's exact test of the share
    of runs that never ended, +inf, where a side has one; both Holm-adjusted in one family over
    the cells tested), the points flagged saturated
    on each side and `verdict` (module docstring). The compared cells in the order of `before`,
    then those only BEFORE has, then those only AFTER has."""
    for name, points in (("before", before), ("after", after)):
        if metric not in points.columns:
            raise ResultsError(f"the {name} run has no column {metric!r} to compare.")
    keys = [k for k in keys if k in before.columns and k in after.columns]
    cells_before, cells_after = _cells(before, keys), _cells(after, keys)
    empty = before.iloc[0:0]
    rows: list[dict[str, Any]] = []
    for key in [*cells_before, *(k for k in cells_after if k not in cells_before)]:
        group, other = cells_before.get(key, empty), cells_after.get(key, empty)
        a = pd.to_numeric(group[metric], errors="coerce").dropna()
        b = pd.to_numeric(other[metric], errors="coerce").dropna()
        median_a, lo_a, hi_a = median_ci(a, confidence)
        median_b, lo_b, hi_b = median_ci(b, confidence)
        finite = math.isfinite(median_a) and math.isfinite(median_b)
        change = (median_b / median_a - 1) * 100 if median_a and finite else math.nan
        endless_a, endless_b = int(np.isinf(a).sum()), int(np.isinf(b).sum())
        p_never = math.nan
        if endless_a or endless_b:
            # how often a run never ended, on its own: the ranks miss a change in it when the
            # runs that do end end sooner (6 of 10 recovering faster than before, 4 never)
            p_never = fisher_exact(len(a) - endless_a, endless_a, len(b) - endless_b, endless_b)
        if key not in cells_after or key not in cells_before:
            p, verdict = math.nan, "before only" if key not in cells_after else "after only"
            p_never = math.nan
        elif smallest_p(len(a), len(b)) >= 1 - confidence:
            p, verdict = rank_sum_p(a, b), "too few runs"
        else:
            p, verdict = rank_sum_p(a, b), ""  # decided once every cell's p is known
        never_higher = "higher" if endless_b * len(a) > endless_a * len(b) else "lower"
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
                "p": p,
                "p_never": p_never,
                "saturated_before": _saturated(group),
                "saturated_after": _saturated(other),
                "verdict": verdict,
                "_ranks": _ranks_higher(a, b),
                "_never": never_higher,
            }
        )
        rows.append(row)
    # one family: every cell's rank-sum test and every never-ended share's test
    tested = [r["p"] if r["verdict"] == "" else math.nan for r in rows]
    tested += [r["p_never"] if r["verdict"] == "" else math.nan for r in rows]
    adjusted = holm(tested)
    level = 1 - confidence
    for row, by_ranks, by_never in zip(rows, adjusted, adjusted[len(rows) :], strict=False):
        row["p_holm"], row["p_never_holm"] = by_ranks, by_never
        if row["verdict"] == "":
            row["verdict"] = (
                row["_ranks"]
                if by_ranks < level
                else row["_never"]
                if by_never < level
                else NO_CHANGE
            )
        del row["_ranks"], row["_never"]
    # the compared cells first, then those only BEFORE has, then those only AFTER has
    rank = {"before only": 1, "after only": 2}
    rows.sort(key=lambda row: rank.get(row["verdict"], 0))
    table = pd.DataFrame(rows)
    if not table.empty:  # p_holm beside p, the verdict last
        table = table[[c for c in table.columns if c != "verdict"] + ["verdict"]]
    return table


def _ranks_higher(before: pd.Series, after: pd.Series) -> str:
    """The direction of a rank-sum difference: "higher" when AFTER's mean rank among both
    sides' points is above BEFORE's, else "lower"."""
    if before.empty or after.empty:
        return ""
    ranks = _doubled_midranks(np.concatenate([before.to_numpy(float), after.to_numpy(float)]))
    m = len(before)
    return "higher" if ranks[m:].mean() > ranks[:m].mean() else "lower"


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
    if table.empty or table["verdict"].isin(("before only", "after only")).all():
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


def _p(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2g}"


def format_comparison(table: pd.DataFrame) -> str:
    """The table as aligned text: the cell, then n, median [interval] on each side, the change,
    the p-value and its Holm adjustment, and the verdict (marked * where a side has points
    that saturated a core or the machine); last lines count the verdicts and explain the mark."""
    fixed = {"metric", "n_before", "before", "before_lo", "before_hi", "n_after", "after"}
    fixed |= {"after_lo", "after_hi", "change_pct", "verdict", "p", "p_holm", "p_never"}
    fixed |= {"p_never_holm", "saturated_before", "saturated_after"}
    keys = [c for c in table.columns if c not in fixed]
    never = "p_never" in table.columns and bool(table["p_never"].notna().any())
    header = [*keys, "n", "before [95 % CI]", "n", "after [95 % CI]", "change", "p", "p Holm"]
    if never:  # the share of runs that never ended, tested on its own
        header += ["p never", "p never Holm"]
    lines = [[*header, "verdict"]]
    marked = 0
    for row in table.to_dict("records"):
        saturated = int(row.get("saturated_before", 0)) + int(row.get("saturated_after", 0))
        marked += bool(saturated)
        lines.append(
            [
                *(str(row[k]) for k in keys),
                str(row["n_before"]),
                _interval(row, "before"),
                str(row["n_after"]),
                _interval(row, "after"),
                "-" if math.isnan(row["change_pct"]) else f"{row['change_pct']:+.1f} %",
                _p(row.get("p", math.nan)),
                _p(row.get("p_holm", math.nan)),
                *([_p(row["p_never"]), _p(row["p_never_holm"])] if never else []),
                str(row["verdict"]) + (" *" if saturated else ""),
            ]
        )
    text = align(lines)
    counts = table["verdict"].value_counts()
    shown = [v for v in VERDICTS if v in VERDICTS[:4] or counts.get(v, 0)]
    tally = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in shown)
    metric = str(table["metric"].iloc[0])
    text.append(
        f"{metric}, {len(table)} cells: {tally} (exact rank-sum test, Holm-adjusted, at "
        f"{ALPHA:.0%}; medians with their exact 95 % intervals)"
    )
    if marked:
        text.append(
            f"* {marked} cell(s) with points where a process or the machine saturated: the "
            "verdict may measure the machine (columns saturated_before / saturated_after)."
        )
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
