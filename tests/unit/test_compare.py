"""experiments/compare.py and `qtlab compare`: two runs of one experiment, cell by cell."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments.analysis import ResultsError
from experiments.compare import (
    MEASURES,
    NO_CHANGE,
    CompareError,
    compare_points,
    compare_runs,
    fisher_exact,
    format_comparison,
    holm,
    rank_sum_p,
)
from experiments.schemas import TABLES
from testbed import cli

KEYS = ("variant", "scheduler", "reorder")


def points(goodputs: dict[tuple[str, str, bool], list[float]]) -> pd.DataFrame:
    rows = [
        {"variant": v, "scheduler": s, "reorder": r, "run": i + 1, "goodput_mbps": g}
        for (v, s, r), values in goodputs.items()
        for i, g in enumerate(values)
    ]
    return pd.DataFrame(rows)


TEN = [100.0 + i for i in range(10)]  # 100 .. 109: median 104.5, exact 95 % CI [101, 108]


def test_a_cell_is_higher_or_lower_by_its_ranks() -> None:
    before = points({("s", "wrr", True): TEN, ("s", "rtt", True): TEN, ("s", "e", False): TEN})
    after = points(
        {
            ("s", "wrr", True): [v + 3 for v in TEN],  # p = 0.056 alone: not detected
            ("s", "rtt", True): [v + 10 for v in TEN],  # every point above: p = 1.1e-5
            ("s", "e", False): [v - 10 for v in TEN],
        }
    )
    table = compare_points(before, after, KEYS, "goodput_mbps")
    assert table["verdict"].tolist() == [NO_CHANGE, "higher", "lower"]
    first = table.iloc[0]
    assert (first["before"], first["before_lo"], first["before_hi"]) == (104.5, 101.0, 108.0)
    assert (first["after"], first["after_lo"], first["after_hi"]) == (107.5, 104.0, 111.0)
    assert first["n_before"] == first["n_after"] == 10
    assert first["change_pct"] == pytest.approx((107.5 / 104.5 - 1) * 100)
    assert first["p"] == pytest.approx(0.0558, abs=1e-4)
    # Holm: the two smallest (tied) times the three tests, the third as it is (0.056)
    assert table["p_holm"].tolist() == pytest.approx([first["p"], 6 / 184756, 6 / 184756])


def test_a_shift_whose_intervals_overlap_is_still_found() -> None:
    """Found by a review: with 6 runs a side the 95 % interval of a median is the whole range,
    so [10, 15] and [14.5, 20] overlapped and read "same" at +40 %; the exact rank-sum test
    gives p = 4/924."""
    before = points({("s", "wrr", True): [10, 11, 12, 13, 14, 15]})
    after = points({("s", "wrr", True): [14.5, 16, 17, 18, 19, 20]})
    (row,) = compare_points(before, after, KEYS, "goodput_mbps").to_dict("records")
    assert (row["before_lo"], row["before_hi"], row["after_lo"]) == (10, 15, 14.5)
    assert row["p"] == pytest.approx(4 / 924) and row["verdict"] == "higher"


def test_many_cells_each_a_little_off_do_not_make_a_difference() -> None:
    """Holm's adjustment: one cell at p = 0.029 is a difference; twenty such are what chance
    gives among twenty cells, none is."""
    one = {("s", "wrr", True): [1.0, 2, 3, 4]}
    up = {("s", "wrr", True): [5.0, 6, 7, 8]}  # every point above: p = 2/70 = 0.029
    assert compare_points(points(one), points(up), KEYS, "goodput_mbps")["verdict"].tolist() == [
        "higher"
    ]
    many = {(f"v{i}", "wrr", True): one[("s", "wrr", True)] for i in range(20)}
    many_up = {(f"v{i}", "wrr", True): up[("s", "wrr", True)] for i in range(20)}
    table = compare_points(points(many), points(many_up), KEYS, "goodput_mbps")
    assert set(table["verdict"]) == {NO_CHANGE}
    assert table["p_holm"].tolist() == pytest.approx([20 * 2 / 70] * 20)


def test_three_runs_are_too_few_and_say_so() -> None:
    before = points({("s", "wrr", True): TEN[:3]})
    after = points({("s", "wrr", True): [v + 50 for v in TEN[:3]]})
    (row,) = compare_points(before, after, KEYS, "goodput_mbps").to_dict("records")
    assert row["verdict"] == "too few runs" and math.isnan(row["before_lo"])
    assert row["p"] == pytest.approx(0.1)  # the smallest three against three can give
    five = points({("s", "wrr", True): TEN[:5]})
    ten = points({("s", "wrr", True): [v + 50 for v in TEN]})
    # no interval at 5 runs, but a test
    assert compare_points(five, ten, KEYS, "goodput_mbps")["verdict"].tolist() == ["higher"]


def test_cells_one_run_lacks_are_listed_and_missing_values_do_not_count() -> None:
    before = points({("s", "wrr", True): TEN, ("only", "before", True): TEN})
    after = points({("s", "wrr", True): [*TEN[:9], math.nan], ("only", "after", True): TEN})
    rows = compare_points(before, after, KEYS, "goodput_mbps").to_dict("records")
    assert [(r["variant"], r["n_before"], r["n_after"], r["verdict"]) for r in rows] == [
        ("s", 10, 9, NO_CHANGE),
        ("only", 10, 0, "before only"),
        ("only", 0, 10, "after only"),
    ]


def test_rank_sum_p_counts_ties_and_never_exactly() -> None:
    assert rank_sum_p([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert rank_sum_p([5.0] * 5, [5.0] * 5) == 1.0
    # ties share their mid-rank (1, 3, 3, 3, 5.5, 5.5): of the 20 splits, 3 reach AFTER's sum
    # of 14 and 3 lie as far below the mean of 10.5 (1 + 3 + 3)
    assert rank_sum_p([1, 2, 2], [2, 3, 3]) == pytest.approx(6 / 20)
    assert rank_sum_p([1.0, 2.0], [math.inf, math.inf]) == pytest.approx(2 / 6)
    assert math.isnan(rank_sum_p([], [1.0]))


def test_rank_sum_p_approximates_above_its_exact_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import experiments.compare as compare

    before = [float(i % 17) for i in range(40)]
    after = [float(i % 17) + 2.5 for i in range(40)]
    exact = rank_sum_p(before, after)
    monkeypatch.setattr(compare, "EXACT_UP_TO", 10)
    assert rank_sum_p(before, after) == pytest.approx(exact, rel=0.1)


def test_holm_adjusts_step_down_and_keeps_nan() -> None:
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])


def test_a_cell_with_saturated_points_is_marked() -> None:
    before = points({("s", "wrr", True): TEN})
    after = points({("s", "wrr", True): [v - 10 for v in TEN]})
    after["cpu_saturated"] = [True] * 3 + [False] * 7
    table = compare_points(before, after, KEYS, "goodput_mbps")
    assert (table["saturated_before"].iloc[0], table["saturated_after"].iloc[0]) == (0, 3)
    text = format_comparison(table)
    assert text.splitlines()[1].endswith("lower *")
    assert text.splitlines()[-1].startswith("* 1 cell(s) with points where a process")


def test_cells_match_by_value_whatever_the_type_read() -> None:
    before = points({("s", "wrr", True): TEN})
    after = points({("s", "wrr", True): TEN})
    after["reorder"] = "True"  # a column read as text in one CSV, as booleans in the other
    assert compare_points(before, after, KEYS, "goodput_mbps")["verdict"].tolist() == [NO_CHANGE]


def test_an_empty_parameter_is_a_cell_of_its_own() -> None:
    # MPTCP has no reorder buffer: its rows leave the column empty (NaN when read)
    before = points({("mptcp", "default", True): TEN, ("s", "wrr", True): TEN})
    before["reorder"] = before["reorder"].astype(object)
    before.loc[before["variant"] == "mptcp", "reorder"] = math.nan
    table = compare_points(before, before.copy(), KEYS, "goodput_mbps")
    assert table["variant"].tolist() == ["mptcp", "s"] and table["reorder"].tolist() == ["", "True"]


def make_run(root: Path, name: str, experiment: str, rows: list[dict[str, Any]]) -> Path:
    run = root / name
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"experiment": experiment}))
    columns = TABLES[experiment].columns
    frame = pd.DataFrame([{c: row.get(c, "") for c in columns} for row in rows])
    frame.to_csv(run / TABLES[experiment].file_name, index=False)
    return run


def aggregation_rows(goodputs: list[float]) -> list[dict[str, Any]]:
    return [
        {"variant": "session", "scheduler": "wrr", "reorder": True, "run": i + 1,
         "wifi_mbit": 50.0, "fiveg_mbit": 100.0, "goodput_mbps": g, "ratio": g / 150}
        for i, g in enumerate(goodputs)
    ]  # fmt: skip


def test_the_command_prints_every_cell_and_writes_its_csv(tmp_path: Path, capsys: Any) -> None:
    before = make_run(tmp_path, "a", "aggregation", aggregation_rows(TEN))
    after = make_run(tmp_path, "b", "aggregation", aggregation_rows([v + 20 for v in TEN]))
    out = tmp_path / "cmp" / "compare.csv"
    assert cli.main(["compare", str(before), str(after), "--csv", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["variant", "scheduler", "reorder"]
    assert "104.5 [101, 108]" in lines[1] and "124.5 [121, 128]" in lines[1]
    assert lines[1].split()[-1] == "higher" and "1.1e-05" in lines[1]
    assert lines[2].startswith(
        "goodput_mbps, 1 cells: 0 no change detected, 1 higher, 0 lower, 0 too few runs"
    )
    assert pd.read_csv(out)["verdict"].tolist() == ["higher"]
    # another metric of the same experiment
    assert cli.main(["compare", str(before), str(after), "--metric", "ratio"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ratio, 1 cells")


def test_scale_is_compared_per_run_totals(tmp_path: Path) -> None:
    def rows(share: list[float]) -> list[dict[str, Any]]:
        return [
            {"mode": "tunnel", "workers": 1, "clients_per_process": 1, "conc_txqueuelen": 0,
             "clients": 2, "client": f"c{c + 1}", "run": r + 1, "goodput_mbps": g + r,
             "conc_cpu_pct": 50.0, "conc_rss_mb": 40.0, "uplink_mbit": 100.0}
            for r in range(8)
            for c, g in enumerate(share)
        ]  # fmt: skip

    before = make_run(tmp_path, "a", "scale", rows([10.0, 10.0]))
    after = make_run(tmp_path, "b", "scale", rows([5.0, 15.0]))
    _, totals = compare_runs(before, after)
    assert totals["verdict"].tolist() == [NO_CHANGE] and totals["before"].iloc[0] == 27.0
    _, jain = compare_runs(before, after, "jain_fairness")
    assert jain["verdict"].tolist() == ["lower"] and jain["before"].iloc[0] == 1.0


def test_what_cannot_be_compared_is_one_sentence(tmp_path: Path, capsys: Any) -> None:
    agg = make_run(tmp_path, "a", "aggregation", aggregation_rows(TEN))
    other = tmp_path / "f"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"experiment": "fuzz"}))
    with pytest.raises(CompareError, match="compare two runs of the same experiment"):
        compare_runs(agg, other)
    with pytest.raises(CompareError, match="knows the aggregation, failover, goodput, scale"):
        compare_runs(other, other)
    with pytest.raises(CompareError, match="pick one of goodput_mbps, ratio"):
        compare_runs(agg, agg, "gap_ms")
    shifted = make_run(tmp_path, "c", "aggregation", [
        {**row, "variant": "mptcp"} for row in aggregation_rows(TEN)
    ])  # fmt: skip
    with pytest.raises(CompareError, match="share no cell"):
        compare_runs(agg, shifted)
    assert cli.main(["compare", str(agg), str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist" in capsys.readouterr().err
    assert cli.main(["compare", str(agg), str(agg), "--metric", "gap_ms"]) == 2
    assert cli.main(["compare", str(agg), str(agg), "--csv", str(tmp_path)]) == 2
    assert "is a directory: give the path of a file" in capsys.readouterr().err


def test_a_corrupt_measurement_is_refused_not_left_out(tmp_path: Path, capsys: Any) -> None:
    """A goodput cell "12.x" (a hand edit, a truncated write) used to be dropped from its cell
    without a word: n one lower, the verdict drawn from what remained. Now one sentence naming
    the file, column and line, from every experiment compare reads (an empty cell stays "no
    value")."""
    rows = aggregation_rows(TEN)
    good = make_run(tmp_path, "a", "aggregation", rows)
    corrupt = make_run(tmp_path, "b", "aggregation", [*rows[:3], {**rows[3], "ratio": "0.7x"}])
    with pytest.raises(ResultsError, match=r"aggregation\.csv line 5, column ratio: '0\.7x'"):
        compare_runs(good, corrupt, "ratio")
    assert cli.main(["compare", str(good), str(corrupt)]) == 1
    assert "is not a number: fix or empty that cell" in capsys.readouterr().err
    scale = [
        {"mode": "tunnel", "workers": 1, "clients_per_process": 1, "conc_txqueuelen": 0,
         "clients": 1, "client": "c1", "run": r + 1, "goodput_mbps": "9.5" if r else "fast"}
        for r in range(2)
    ]  # fmt: skip
    corrupt_scale = make_run(tmp_path, "c", "scale", scale)
    with pytest.raises(ResultsError, match="line 2, column goodput_mbps: 'fast'"):
        compare_runs(corrupt_scale, corrupt_scale)
    empty = make_run(tmp_path, "d", "aggregation", [*rows[:9], {**rows[9], "goodput_mbps": ""}])
    _, table = compare_runs(good, empty)
    assert table["n_after"].tolist() == [9]


def test_every_measure_names_columns_of_its_table() -> None:
    for name, measure in MEASURES.items():
        columns = set(TABLES[name].columns)
        if name == "scale":  # compared per run: its totals are derived
            columns |= {"goodput_total_mbps"}
        assert set(measure.keys) <= columns and set(measure.metrics) <= columns, name


def test_the_text_table_has_a_dash_for_what_is_not_a_number() -> None:
    before = points({("s", "wrr", True): [0.0] * 3})
    text = format_comparison(compare_points(before, before, KEYS, "goodput_mbps"))
    assert "0 [-, -]" in text and "1 too few runs (exact rank-sum test" in text.splitlines()[-1]


def failover_rows(gaps: list[float | None]) -> list[dict[str, Any]]:
    """One failover cell's runs; None: a run that never recovered."""
    return [
        {"variant": "tunnel", "event": "blackhole", "traffic": "tcp", "run": i + 1,
         "gap_ms": "" if g is None else g, "completed": g is not None,
         "goodput_before_mbps": 50.0, "goodput_during_mbps": 20.0, "goodput_after_mbps": 50.0}
        for i, g in enumerate(gaps)
    ]  # fmt: skip


def test_runs_that_stop_recovering_make_the_gap_worse_not_the_same(
    tmp_path: Path, capsys: Any
) -> None:
    """10 of 10 runs recover in ~100 ms, then fewer (in the same time): over the recovered
    runs alone every case was "same". A run that never recovered is an endless gap, and the
    share of such runs is tested on its own too (the ranks alone miss it when the runs that do
    recover recover sooner: p = 0.61 and 0.37 here): 6 of 10 (Fisher's exact p = 0.087, 0.17
    Holm-adjusted over the cell's two tests) is no change detected, its interval reaching
    "never"; 4 of 10 (p = 0.011, 0.022 adjusted) is "higher", its median "never"."""
    before = make_run(tmp_path, "a", "failover", failover_rows([100.0 + i for i in range(10)]))
    fewer = make_run(tmp_path, "b", "failover", failover_rows([100.0] * 6 + [None] * 4))
    _, table = compare_runs(before, fewer)
    assert table["verdict"].tolist() == [NO_CHANGE] and table["n_after"].tolist() == [10]
    assert table["after_hi"].iloc[0] == math.inf
    assert table["p_never_holm"].iloc[0] == pytest.approx(2 * 0.08669, abs=1e-4)
    half = make_run(tmp_path, "c", "failover", failover_rows([100.0] * 4 + [None] * 6))
    assert cli.main(["compare", str(before), str(half)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "never [100, never]" in row and row.split()[-1] == "higher"


def test_fisher_exact_matches_the_tables() -> None:
    assert fisher_exact(10, 0, 6, 4) == pytest.approx(0.08669, abs=1e-5)
    assert fisher_exact(10, 0, 4, 6) == pytest.approx(0.01084, abs=1e-5)
    assert fisher_exact(3, 1, 1, 3) == pytest.approx(0.48571, abs=1e-5)  # the tea tasting
    assert fisher_exact(5, 5, 5, 5) == 1.0
