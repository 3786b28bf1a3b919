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
    CompareError,
    compare_points,
    compare_runs,
    fisher_exact,
    format_comparison,
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


def test_a_cell_is_same_higher_or_lower_by_its_intervals() -> None:
    before = points({("s", "wrr", True): TEN, ("s", "rtt", True): TEN, ("s", "e", False): TEN})
    after = points(
        {
            ("s", "wrr", True): [v + 3 for v in TEN],  # [104, 111] overlaps [101, 108]
            ("s", "rtt", True): [v + 10 for v in TEN],  # [111, 118]: wholly above
            ("s", "e", False): [v - 10 for v in TEN],  # [91, 98]: wholly below
        }
    )
    table = compare_points(before, after, KEYS, "goodput_mbps")
    assert table["verdict"].tolist() == ["same", "higher", "lower"]
    first = table.iloc[0]
    assert (first["before"], first["before_lo"], first["before_hi"]) == (104.5, 101.0, 108.0)
    assert (first["after"], first["after_lo"], first["after_hi"]) == (107.5, 104.0, 111.0)
    assert first["n_before"] == first["n_after"] == 10
    assert first["change_pct"] == pytest.approx((107.5 / 104.5 - 1) * 100)


def test_five_runs_have_no_interval_and_say_so() -> None:
    before = points({("s", "wrr", True): TEN[:5]})
    after = points({("s", "wrr", True): [v + 50 for v in TEN]})
    (row,) = compare_points(before, after, KEYS, "goodput_mbps").to_dict("records")
    assert row["verdict"] == "too few runs" and math.isnan(row["before_lo"])


def test_only_shared_cells_are_compared_and_missing_values_do_not_count() -> None:
    before = points({("s", "wrr", True): TEN, ("only", "before", True): TEN})
    after = points({("s", "wrr", True): [*TEN[:9], math.nan], ("only", "after", True): TEN})
    (row,) = compare_points(before, after, KEYS, "goodput_mbps").to_dict("records")
    assert (row["variant"], row["n_before"], row["n_after"]) == ("s", 10, 9)


def test_cells_match_by_value_whatever_the_type_read() -> None:
    before = points({("s", "wrr", True): TEN})
    after = points({("s", "wrr", True): TEN})
    after["reorder"] = "True"  # a column read as text in one CSV, as booleans in the other
    assert compare_points(before, after, KEYS, "goodput_mbps")["verdict"].tolist() == ["same"]


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
    assert lines[1].split()[-1] == "higher"
    assert lines[2].startswith("goodput_mbps, 1 cells: 0 same, 1 higher, 0 lower")
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
    assert totals["verdict"].tolist() == ["same"] and totals["before"].iloc[0] == 27.0
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
    assert "0 [-, -]" in text and text.splitlines()[-1].endswith(
        "1 too few runs (median and its exact 95 % interval)"
    )


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
    runs alone every case was "same". A run that never recovered is an endless gap: 6 of 10
    (Fisher's exact p = 0.087) stays "same", its interval reaching "never"; 4 of 10 (p =
    0.011) is "higher", its median "never"."""
    before = make_run(tmp_path, "a", "failover", failover_rows([100.0 + i for i in range(10)]))
    fewer = make_run(tmp_path, "b", "failover", failover_rows([100.0] * 6 + [None] * 4))
    _, table = compare_runs(before, fewer)
    assert table["verdict"].tolist() == ["same"] and table["n_after"].tolist() == [10]
    assert table["after_hi"].iloc[0] == math.inf
    half = make_run(tmp_path, "c", "failover", failover_rows([100.0] * 4 + [None] * 6))
    assert cli.main(["compare", str(before), str(half)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert "never [100, never]" in row and row.split()[-1] == "higher"


def test_fisher_exact_matches_the_tables() -> None:
    assert fisher_exact(10, 0, 6, 4) == pytest.approx(0.08669, abs=1e-5)
    assert fisher_exact(10, 0, 4, 6) == pytest.approx(0.01084, abs=1e-5)
    assert fisher_exact(3, 1, 1, 3) == pytest.approx(0.48571, abs=1e-5)  # the tea tasting
    assert fisher_exact(5, 5, 5, 5) == 1.0
