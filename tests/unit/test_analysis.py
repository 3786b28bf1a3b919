"""experiments/analysis.py on small CSVs written here (the numbers are inputs, not results)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox, BboxBase

from experiments import analysis
from experiments.analysis import ResultsError
from experiments.run_meta import RunDirError
from experiments.runner import get_experiment
from experiments.schemas import (
    AGGREGATION,
    CPU_COLUMNS,
    FAILOVER,
    GOODPUT,
    NO_DELIVERY_BEFORE,
    SHAPER_COLUMNS,
    TABLES,
    Table,
)
from tunnel.user_error import UsageError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_run(root: Path, experiment: str, stamp: str, meta: bool = True) -> Path:
    run = root / experiment / stamp
    run.mkdir(parents=True)
    if meta:
        (run / "meta.json").write_text(json.dumps({"experiment": experiment}))
    return run


FAILOVER_HEADER = list(analysis.SCHEMAS["failover"])


def failover_row(variant: str, run: int, gap_ms: float | str, completed: bool) -> list[object]:
    return [variant, run, "link-down", "tcp", 20.0, 40.0, gap_ms, 40.0, 10.0, 42.0, 3, 1, completed]


def write_failover_run(run: Path) -> None:
    """failover.csv + failover_timeseries.csv only (no meta.json: make demo must not need it)."""
    write_csv(
        run / "failover.csv",
        FAILOVER_HEADER,
        [
            failover_row("session-failover", 0, 100.0, True),
            failover_row("session-failover", 1, 110.0, True),
            failover_row("session-failover", 2, 120.0, True),
            failover_row("plain", 0, "", False),
            failover_row("plain", 1, "", False),
        ],
    )
    samples = []
    for variant in ("session-failover", "plain"):
        for run_no in range(2):
            for i in range(600):
                t = i * 0.1
                down = variant == "plain" and t >= 20.0
                samples.append([variant, run_no, round(t, 1), 0.0 if down else 40.0])
    write_csv(
        run / "failover_timeseries.csv", list(analysis.SCHEMAS["failover_timeseries"]), samples
    )


# -- locating runs ---------------------------------------------------------------------------
def test_latest_run_picks_newest_complete_run(tmp_path: Path) -> None:
    make_run(tmp_path, "failover", "20261126-100000")
    newest = make_run(tmp_path, "failover", "20261126-120000")
    make_run(tmp_path, "failover", "20261126-130000", meta=False)  # crashed before meta.json
    running = make_run(tmp_path, "failover", "20261126-140000")
    (running / "meta.json").write_text(json.dumps({"experiment": "failover", "finished": None}))
    (tmp_path / "failover" / "notes").mkdir()
    assert analysis.latest_run("failover", tmp_path) == newest
    assert len(analysis.run_dirs("failover", tmp_path)) == 2


def test_latest_run_without_results_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"no results for experiment 'goodput'.*qtlab run"):
        analysis.latest_run("goodput", tmp_path)


def test_resolve_run_default_given_and_missing(tmp_path: Path) -> None:
    assert analysis.resolve_run("overhead", None, tmp_path) is None
    run = make_run(tmp_path, "overhead", "20261126-100000")
    assert analysis.resolve_run("overhead", "", tmp_path) == run
    assert analysis.resolve_run("overhead", str(run), tmp_path) == run
    with pytest.raises(ResultsError, match="is not a directory"):
        analysis.resolve_run("overhead", tmp_path / "nope", tmp_path)


def test_load_meta_errors_are_one_sentence(tmp_path: Path) -> None:
    """What `qtlab figure`, `compare`, `rerun` and `run --resume` say of a path that is not a
    run directory (experiments/run_meta.py), with exit code 2."""
    with pytest.raises(RunDirError, match=r"meta\.json is missing") as caught:
        analysis.load_meta(tmp_path)
    assert caught.value.exit_code == 2
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        analysis.load_meta(tmp_path)
    (tmp_path / "meta.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match="holds no JSON object"):
        analysis.load_meta(tmp_path)
    with pytest.raises(RunDirError, match="is not a directory"):
        analysis.load_meta(tmp_path / "meta.json")
    with pytest.raises(RunDirError, match="does not exist"):
        analysis.load_meta(tmp_path / "nowhere")


# -- loaders ---------------------------------------------------------------------------------
def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    header = [c for c in FAILOVER_HEADER if c != "gap_ms"]
    path = write_csv(tmp_path / "failover.csv", header, [])
    with pytest.raises(ResultsError) as info:
        analysis.load_failover(tmp_path)
    message = str(info.value)
    assert str(path) in message and "gap_ms" in message and "failover schema" in message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        analysis.load_goodput(tmp_path)
    (tmp_path / "goodput.csv").write_text("")
    with pytest.raises(ResultsError, match="is empty"):
        analysis.load_goodput(tmp_path)


def test_failover_loader_types_completed_and_gap(tmp_path: Path) -> None:
    write_failover_run(tmp_path)
    df = analysis.load_failover(tmp_path)
    assert df["completed"].dtype == bool
    assert df["completed"].tolist() == [True, True, True, False, False]
    assert df["gap_ms"].isna().tolist() == [False, False, False, True, True]


def test_overhead_workload_derived_from_negative_payload(tmp_path: Path) -> None:
    header = list(analysis.SCHEMAS["overhead"])
    write_csv(
        tmp_path / "overhead.csv",
        header,
        [
            ["tunnel", 512, 10, 5120, 6000, 88.0, 17.19, 58],
            ["tunnel", -1, 5, 7000, 7500, 100, 7.1, 58],
        ],
    )
    df = analysis.load_overhead(tmp_path)
    assert df["workload"].tolist() == ["udp", "bulk-tcp"]


# -- statistics ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("df", "expected"),
    # 97.5 % quantiles of Student's t, as printed in every statistics table.
    [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)],
)
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert analysis.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_t_quantile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"0\.5 < p < 1"):
        analysis.t_quantile(0.3, 4)


def test_mean_ci() -> None:
    mean, half = analysis.mean_ci([100.0, 110.0, 120.0])
    # sd = 10, sem = 10/sqrt(3), t(0.975, 2) = 4.3027
    assert mean == 110.0
    assert half == pytest.approx(4.3027 * 10 / math.sqrt(3), rel=1e-4)
    assert analysis.mean_ci([5.0])[0] == 5.0 and math.isnan(analysis.mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in analysis.mean_ci([]))


def test_scenarios_split_the_time_series() -> None:
    import pandas as pd

    ts = pd.DataFrame(
        {
            "variant": ["plain"] * 4,
            "run": [0] * 4,
            "event": ["link-down", "link-down", "blackhole", "blackhole"],
            "traffic": ["tcp", "udp", "tcp", "tcp"],
            "t_s": [0.0, 0.0, 0.0, 0.1],
            "goodput_mbps": [1.0, 2.0, 3.0, 4.0],
        }
    )
    combos = analysis.scenarios(ts)
    assert combos == [("blackhole", "tcp"), ("link-down", "tcp"), ("link-down", "udp")]
    assert analysis.select_scenario(ts, ("blackhole", "tcp"))["goodput_mbps"].tolist() == [3, 4]
    assert analysis.scenarios(ts.drop(columns=["event", "traffic"])) == [()]


def test_failover_gap_summary(tmp_path: Path) -> None:
    write_failover_run(tmp_path)
    summary = analysis.failover_gap_summary(analysis.load_failover(tmp_path))
    assert summary["variant"].tolist() == ["session-failover", "plain"]  # contract order
    session = summary.iloc[0]
    assert (session["runs"], session["recovered"]) == (3, 3)
    assert session["gap_ms_mean"] == 110.0 and session["gap_ms_median"] == 110.0
    assert session["gap_ms_ci"] == pytest.approx(24.84, abs=0.01)
    plain = summary.iloc[1]
    assert (plain["runs"], plain["recovered"]) == (2, 0)
    assert math.isnan(plain["gap_ms_mean"])


def test_overhead_summary_difference_to_arithmetic() -> None:
    import pandas as pd

    df = pd.DataFrame(
        {
            "mode": ["tunnel", "tunnel", "plain"],
            "workload": ["udp", "udp", "udp"],
            "payload_bytes": [64, 64, 64],
            "packets": [100, 100, 100],
            "app_bytes": [6400, 6400, 6400],
            "wire_bytes": [15000, 15200, 10600],
            "overhead_per_packet_bytes": [86.0, 88.0, 42.0],
            "overhead_pct": [134.4, 137.5, 65.6],
            "expected_per_packet_bytes": [86.0, 86.0, 42.0],
        }
    )
    summary = analysis.overhead_summary(df)
    assert summary["mode"].tolist() == ["plain", "tunnel"]
    tunnel = summary[summary["mode"] == "tunnel"].iloc[0]
    assert tunnel["packets"] == 200
    assert tunnel["overhead_per_packet_bytes"] == 87.0
    assert tunnel["measured_minus_expected_bytes"] == 1.0


def test_goodput_pivot() -> None:
    import pandas as pd

    df = pd.DataFrame(
        {
            "mode": ["plain"] * 5 + ["tunnel"],
            "transport": ["tcp"] * 6,
            "cc": ["bbr"] * 6,
            "loss_pct": [0, 0, 0, 1, 1, 0],
            "rtt_ms": [10, 10, 10, 10, 40, 10],
            "run": [0, 1, 2, 0, 0, 0],
            "goodput_mbps": [40.0, 44.0, 2.0, 30.0, 20.0, 1.0],
        }
    )
    pivot = analysis.goodput_pivot(df, "plain", "tcp", "bbr")
    # the median of the runs: one that collapsed (2.0) does not move the cell
    assert pivot.loc[0, 10] == 40.0 and pivot.loc[1, 40] == 20.0
    assert math.isnan(pivot.loc[0, 40])
    assert analysis.goodput_pivot(df, "plain", "tcp", "cubic").empty


# -- figures ---------------------------------------------------------------------------------
def write_overhead_run(run: Path) -> None:
    write_csv(
        run / "overhead.csv",
        [*analysis.SCHEMAS["overhead"], "workload"],
        [
            ["plain", 64, 10, 640, 1060, 42, 65.6, 42, "udp"],
            ["plain", 512, 10, 5120, 5540, 42, 8.2, 42, "udp"],
            ["tunnel", 64, 10, 640, 1920, 128, 200.0, 100, "udp"],
            ["tunnel", 512, 10, 5120, 6400, 128, 25.0, 100, "udp"],
            ["tunnel", -1, 10, 14000, 15400, 140, 10.0, "", "bulk-tcp"],
        ],
    )


def write_goodput_run(run: Path) -> None:
    """plain and session mode (outer cubic and bbr, the latter saturating a core at 1 % loss
    and 40 ms), inner TCP BBR, 2 losses x 2 RTTs."""
    header = [*analysis.SCHEMAS["goodput"], "outer_cc", "loss_hiding", "cpu_saturated"]
    rows = [
        [mode, "tcp", "bbr", loss, rtt, 0, 50.0 / (1 + loss) / (1 + rtt / 100), outer, hiding,
         mode == "session" and outer == "bbr" and (loss, rtt) == (1, 40)]
        for mode, outer, hiding in (("plain", "", ""), ("session", "cubic", "off"),
                                    ("session", "bbr", "off"))
        for loss in (0, 1)
        for rtt in (10, 40)
    ]  # fmt: skip
    write_csv(run / "goodput.csv", header, rows)


def write_aggregation_run(run: Path) -> None:
    write_csv(
        run / "aggregation.csv",
        [*analysis.SCHEMAS["aggregation"], "cpu_client_pct", "cpu_saturated"],
        [
            ["session-aggregate", "wrr", True, 0, 50, 100, 120.0, 0.8, 97.0, True],
            ["session-aggregate", "wrr", True, 1, 50, 100, 126.0, 0.84, 60.0, False],
            ["mptcp", "", "", 0, 50, 100, 140.0, 0.93, "", ""],
            ["mptcp-backup", "", "", 0, 50, 100, 47.0, 0.31, "", ""],
        ],
    )


def write_scale_run(run: Path) -> None:
    """1, 2 and 4 clients; RSS 50 MB + 1 MB per client, CPU 40 % per client."""
    header = [*analysis.SCHEMAS["scale"], "mode", "jain_fairness", "host_cpu_pct", "uplink_mbit"]
    goodputs = {(1, 1): [90.0], (2, 1): [40.0, 40.0], (2, 2): [20.0, 60.0], (4, 1): [25.0] * 4}
    rows: list[list[object]] = []
    for (n, run_no), values in goodputs.items():
        for k, goodput in enumerate(values, start=1):
            rows.append(
                [n, f"c{k}", run_no, goodput, 40.0 * n, 50.0 + n, "tunnel", "", 150.0, 500.0]
            )
    write_csv(run / "scale.csv", header, rows)


ABLATION_HEADER = [*FAILOVER_HEADER, "goodput_after_gap_mbps", "ablation_off", "cpu_saturated"]


def ablation_row(
    variant: str, off: str, run: int, gap: float, after: float, hot: bool = False
) -> list[object]:
    return [*failover_row(variant, run, gap, True), after, off, hot]


def plain_5g_row(run: int) -> list[object]:
    """plain-5g's row of a failover run with goodput after the gap: 90 Mbit/s during the
    outage, the reference of goodput after the gap / plain 5G."""
    return [*failover_row("plain-5g", run, 0.0, True)[:8], 90.0,
            *failover_row("x", run, 0, True)[9:], 90.0, "", False]  # fmt: skip


def write_failover_with_5g(run: Path, rows: list[list[object]], plotted: str) -> None:
    """failover.csv of `rows` and plain-5g's two runs, and a flat time series of `plotted`
    and plain-5g."""
    write_csv(run / "failover.csv", ABLATION_HEADER, rows + [plain_5g_row(r) for r in range(2)])
    samples = [[v, r, i / 10, 40.0] for v in (plotted, "plain-5g") for r in range(2)
               for i in range(600)]  # fmt: skip
    write_csv(
        run / "failover_timeseries.csv", list(analysis.SCHEMAS["failover_timeseries"]), samples
    )


def write_ablation_run(run: Path) -> None:
    """A failover run with the ablation's variants (engine all on, without detection, without
    reinjection) and plain-5g (90 Mbit/s during the outage), two runs each."""
    rows = []
    for r in range(2):
        rows += [
            ablation_row("engine", "none", r, 60.0 + r, 80.0 + r),
            ablation_row("engine-no-detection", "detection", r, 900.0 + r, 40.0, hot=r == 1),
            ablation_row("engine-no-reinjection", "reinjection", r, 70.0 + r, 50.0),
            ablation_row("session-failover", "", r, 100.0, 70.0),
        ]
    write_failover_with_5g(run, rows, "engine")


def write_masque_run(run: Path) -> None:
    """A failover run with MASQUE, tunnel mode, the engine and plain-5g (90 Mbit/s during the
    outage), two runs each."""
    rows = []
    for r in range(2):
        rows += [
            ablation_row("masque-migration", "", r, 300.0 + r, 40.0),
            ablation_row("tunnel-migration", "", r, 140.0 + r, 50.0),
            ablation_row("engine", "none", r, 60.0 + r, 88.0, hot=r == 1),
        ]
    write_failover_with_5g(run, rows, "masque-migration")


def test_masque_summary_sets_masque_first_against_its_peers(tmp_path: Path) -> None:
    write_masque_run(tmp_path)
    summary = analysis.masque_summary(analysis.load_masque(tmp_path))
    assert summary["variant"].tolist() == ["masque-migration", "tunnel-migration", "engine"]
    assert summary["gap_ms_mean"].tolist() == [300.5, 140.5, 60.5]
    assert summary["fiveg_mbps"].tolist() == [90.0, 90.0, 90.0]
    assert summary["cpu_saturated_runs"].tolist() == [0, 0, 1]


def test_a_failover_run_without_masque_has_nothing_for_its_notebook(tmp_path: Path) -> None:
    write_ablation_run(tmp_path)
    with pytest.raises(analysis.ResultsError, match="no masque-migration variant"):
        analysis.load_masque(tmp_path)


WRITERS = {
    "failover": write_failover_run,
    "ablation": write_ablation_run,
    "masque": write_masque_run,
    "overhead": write_overhead_run,
    "goodput": write_goodput_run,
    "aggregation": write_aggregation_run,
    "scale": write_scale_run,
}


def test_failover_figure_one_panel_per_scenario(tmp_path: Path) -> None:
    rows = [
        [v, r, event, traffic, 20.0, 40.0, 150.0 + r, 40.0, 10.0, 42.0, 0, 0, True]
        for v in ("session-failover", "tunnel-migration")
        for event, traffic in (("link-down", "tcp"), ("blackhole", "udp"))
        for r in range(2)
    ]
    write_csv(tmp_path / "failover.csv", FAILOVER_HEADER, rows)
    samples = [
        [v, r, event, traffic, i / 10, 10.0 if 200 <= i < 202 else 40.0]
        for v, r, event, traffic, *_ in rows
        for i in range(600)
    ]
    header = ["variant", "run", "event", "traffic", "t_s", "goodput_mbps"]
    write_csv(tmp_path / "failover_timeseries.csv", header, samples)
    out = analysis.failover_figure(tmp_path, tmp_path / "f.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_the_inner_tcp_window_is_drawn_for_the_variants_that_have_one(tmp_path: Path) -> None:
    """Issue 12: the sender's TCP_INFO window over time, one line per variant that has it
    (UDP rows have none); older runs without the columns draw as before."""
    header = ["variant", "run", "event", "traffic", "t_s", "goodput_mbps", "inner_cwnd_segments"]
    samples = [
        [v, r, "link-down", "tcp", i / 10, 40.0, 30 + i if v == "tunnel-migration" else ""]
        for v in ("tunnel-migration", "mptcp")
        for r in (1, 2)
        for i in range(100)
    ]
    write_csv(tmp_path / "failover_timeseries.csv", header, samples)
    series = analysis.load_failover_timeseries(tmp_path)
    assert analysis.has_inner_tcp(series)
    assert not analysis.has_inner_tcp(series.drop(columns=["inner_cwnd_segments"]))
    ax = Figure().add_subplot()
    analysis.plot_inner_window(ax, series, (4.0, 8.0))
    (line,) = ax.get_lines()  # the variant without a window (here mptcp): no line
    assert list(line.get_ydata()[:3]) == [30, 31, 32]  # the mean of the two runs per step
    rows = [["tunnel-migration", r, "link-down", "tcp", 4.0, 8.0, 30.0, 40, 10, 40, 0, 0, True]
            for r in (1, 2)]  # fmt: skip
    write_csv(tmp_path / "failover.csv", FAILOVER_HEADER, rows)
    out = analysis.failover_figure(tmp_path, tmp_path / "f.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("experiment", sorted(WRITERS))
def test_figure_helpers_write_pngs(experiment: str, tmp_path: Path) -> None:
    WRITERS[experiment](tmp_path)
    figure = getattr(analysis, f"{experiment}_figure")
    out = figure(tmp_path, tmp_path / "figs" / f"{experiment}.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    svg = out.with_suffix(".svg").read_bytes()
    assert b"<svg" in svg[:500]  # vector, next to the PNG
    # drawn again from the same run: the same bytes (no date, no random ids), so redrawing
    # the committed figures leaves those of unchanged runs alone
    figure(tmp_path, tmp_path / "again" / f"{experiment}.png")
    assert (tmp_path / "again" / f"{experiment}.svg").read_bytes() == svg


def test_a_figure_names_its_runs_conditions(tmp_path: Path) -> None:
    """n, the link profiles, the shaping backend and the commit, from the run's meta.json."""
    meta = {
        "git_commit": "0123456789abcdef",
        "git_dirty": True,
        "backend": "wire",
        "parameters": {"runs": 5, "wifi_profile": "wifi", "fiveg_profile": "5g"},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert analysis.run_conditions(tmp_path) == (
        "n = 5 runs per point · profiles wifi wifi, fiveg 5g · shaping wire"
        " · commit 0123456789 (dirty)"
    )
    assert analysis.run_conditions(tmp_path / "nothing") == ""  # no meta.json: no footer


def test_a_figures_n_says_which_points_have_fewer_runs_than_asked(tmp_path: Path) -> None:
    """A point that failed, or a sweep stopped part-way, leaves cells with fewer runs than the
    run's `runs`: the footer says how many, rather than claim n for every point."""
    write_failover_run(tmp_path)  # session-failover 3 runs, plain 2
    meta = {"experiment": "failover", "parameters": {"runs": 3}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert analysis.run_conditions(tmp_path) == "n = 3 runs per point (fewer at 1 of 2 points: 2)"
    meta["parameters"] = {"runs": 2}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert analysis.run_conditions(tmp_path) == "n = 2 runs per point"
    # a run that carried nothing before the outage is no failover result (load_failover)
    with (tmp_path / "failover.csv").open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    rows[3] += [NO_DELIVERY_BEFORE]  # plain, run 0
    write_csv(tmp_path / "failover.csv", [*header, "detail"], rows)
    assert analysis.run_conditions(tmp_path) == "n = 2 runs per point (fewer at 1 of 2 points: 1)"
    (tmp_path / "failover.csv").write_text("variant\nplain\n")  # no key columns: cannot tell
    meta["parameters"] = {"runs": 3}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert analysis.run_conditions(tmp_path) == "n = 3 runs per point"


def test_goodput_against_loss_figure(tmp_path: Path) -> None:
    write_goodput_run(tmp_path)
    out = analysis.goodput_loss_figure(tmp_path, tmp_path / "loss.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    old = tmp_path / "old"  # a run from before the outer dimensions: one line per mode
    write_csv(
        old / "goodput.csv",
        list(analysis.SCHEMAS["goodput"]),
        [["tunnel", "udp", "", loss, 10, 0, 20.0 - loss] for loss in (0, 2)],
    )
    assert analysis.goodput_loss_figure(old, old / "l.png").read_bytes().startswith(PNG_MAGIC)


def test_goodput_against_loss_draws_the_median_and_the_runs_band() -> None:
    rows = [
        {"mode": m, "outer_cc": o, "loss_hiding": h, "loss_pct": loss, "goodput_mbps": g}
        for m, o, h in (("tunnel", "bbr", "off"), ("plain", "", ""))
        for loss, runs in ((0.0, (20.0, 19.0, 10.0)), (2.0, (18.0, 5.0, 17.0)))
        for g in runs
    ]
    import pandas as pd

    goodput = pd.DataFrame(rows).assign(transport="udp", cc="", cpu_saturated=False)
    ax = Figure().add_subplot()
    analysis.plot_goodput_vs_loss(ax, goodput)
    medians = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert medians["tunnel bbr"] == [19.0, 17.0] and medians["plain"] == [19.0, 17.0]
    bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections if c.get_paths()]
    assert len(bands) == 2 and all(min(b) == 5.0 and max(b) == 20.0 for b in bands)


# -- the multipath engine's columns: goodput after the gap, ablation, CPU ------------------
def test_failover_summary_divides_goodput_after_the_gap_by_plain_5g(tmp_path: Path) -> None:
    write_ablation_run(tmp_path)
    summary = analysis.failover_gap_summary(analysis.load_failover(tmp_path))
    by = summary.set_index("variant")
    assert by.loc["engine", "goodput_after_gap_mbps"] == pytest.approx(80.5)
    assert by.loc["engine", "after_gap_vs_5g"] == pytest.approx(80.5 / 90.0)
    assert by.loc["plain-5g", "after_gap_vs_5g"] == pytest.approx(1.0)
    assert by.loc["engine-no-detection", "cpu_saturated_runs"] == 1
    assert by.loc["engine", "cpu_saturated_runs"] == 0
    # without plain-5g in the run there is no ratio, not a made-up one
    write_failover_run(tmp_path / "old")
    old = analysis.failover_gap_summary(analysis.load_failover(tmp_path / "old"))
    assert old["after_gap_vs_5g"].isna().all() and (old["cpu_saturated_runs"] == 0).all()


def test_ablation_summary_each_mechanism_off_after_the_reference(tmp_path: Path) -> None:
    write_ablation_run(tmp_path)
    data = analysis.load_ablation(tmp_path)
    assert set(data["variant"]) == {
        "engine",
        "engine-no-detection",
        "engine-no-reinjection",
        "plain-5g",
    }
    summary = analysis.ablation_summary(data)
    assert summary["turns_off"].tolist() == ["none", "detection", "reinjection"]
    assert summary["gap_ms_mean"].tolist() == pytest.approx([60.5, 900.5, 70.5])
    assert summary["fiveg_mbps"].tolist() == pytest.approx([90.0] * 3)
    assert summary["cpu_saturated_runs"].tolist() == [0, 1, 0]


def test_a_run_without_ablation_says_so(tmp_path: Path) -> None:
    write_failover_run(tmp_path)
    with pytest.raises(ResultsError, match="switches no mechanism off"):
        analysis.load_ablation(tmp_path)
    with pytest.raises(ResultsError, match="switches no mechanism off"):
        analysis.ablation_figure(tmp_path, tmp_path / "a.png")
    assert analysis.ablation_summary(analysis.load_failover(tmp_path)).empty


def test_a_run_with_only_the_engine_all_on_is_no_ablation(tmp_path: Path) -> None:
    """A failover run measuring the engine as one more variant (ablation_off "none") must not
    become the ablation figure: the notebook then keeps looking for an older run."""
    write_ablation_run(tmp_path)
    table = tmp_path / "failover.csv"
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or [])
        writer.writeheader()
        writer.writerows(r for r in rows if r["ablation_off"] in ("", "none"))
    with pytest.raises(ResultsError, match="switches no mechanism off"):
        analysis.load_ablation(tmp_path)


def test_goodput_pivot_per_outer_cc_and_saturated_cells(tmp_path: Path) -> None:
    write_goodput_run(tmp_path)
    df = analysis.load_goodput(tmp_path)
    assert analysis.goodput_keys(df) == [
        ("plain", "", "", "tcp", "bbr"),
        ("session", "bbr", "off", "tcp", "bbr"),
        ("session", "cubic", "off", "tcp", "bbr"),
    ]
    bbr = analysis.goodput_pivot(df, "session", "tcp", "bbr", "bbr", "off")
    assert bbr.loc[0, 10] == pytest.approx(50.0 / 1.1)
    hot = analysis.goodput_pivot(df, "session", "tcp", "bbr", "bbr", "off", "cpu_saturated")
    assert bool(hot.loc[1, 40]) and not bool(hot.loc[0, 10])
    assert analysis.goodput_pivot(df, "session", "tcp", "bbr").empty  # outer CC is part of it
    assert analysis.goodput_label("session", "bbr", "on", "udp", "") == "session bbr +hiding udp"


def test_aggregation_summary_draws_medians_with_exact_intervals() -> None:
    """Issue 17: a figure's point is the median over runs with its distribution-free interval,
    so one collapsed run of ten moves neither."""
    import pandas as pd

    goodputs = [120.0, 121.0, 119.0, 122.0, 118.0, 123.0, 117.0, 124.0, 116.0, 10.0]
    aggregation = pd.DataFrame(
        {"variant": "session", "scheduler": "earliest", "reorder": True,
         "goodput_mbps": goodputs, "ratio": [g / 150 for g in goodputs], "cpu_saturated": False}
    )  # fmt: skip
    summary = analysis.aggregation_summary(aggregation)
    row = summary.iloc[0]
    assert row["runs"] == 10 and row["goodput_mbps"] == 119.5
    # n = 10 at 95 %: the 2nd and 9th order statistics
    assert (row["goodput_mbps_lo"], row["goodput_mbps_hi"]) == (116.0, 123.0)
    bars = analysis.error_bars(summary, "ratio")
    assert bars[:, 0] == pytest.approx([3.5 / 150, 3.5 / 150])
    few = analysis.aggregation_summary(aggregation.head(5))
    assert analysis.error_bars(few, "goodput_mbps").tolist() == [[0.0], [0.0]]  # no interval


def test_aggregation_summary_counts_saturated_runs(tmp_path: Path) -> None:
    write_aggregation_run(tmp_path)
    summary = analysis.aggregation_summary(analysis.load_aggregation(tmp_path))
    assert summary["cpu_saturated_runs"].tolist() == [1, 0, 0]
    assert summary["variant"].tolist() == ["session-aggregate", "mptcp", "mptcp-backup"]


def test_cpu_report_lists_the_saturated_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_aggregation_run(tmp_path)
    hot = analysis.cpu_report(analysis.load_aggregation(tmp_path))
    assert hot is not None and hot["run"].tolist() == [0]
    assert "cpu_client_pct" in hot.columns
    assert "1 of 4 points saturated a core" in capsys.readouterr().out
    write_failover_run(tmp_path / "old")
    assert analysis.cpu_report(analysis.load_failover(tmp_path / "old")) is None
    assert "predates the CPU columns" in capsys.readouterr().out
    assert analysis.cpu_report(None) is None


def test_cpu_columns_are_in_every_point_table_and_optional() -> None:
    """Runs written before them still load; every new row has them (experiments write them)."""
    for table in (FAILOVER, GOODPUT, AGGREGATION):
        assert set(CPU_COLUMNS) | set(SHAPER_COLUMNS) <= set(table.columns)
        assert set(CPU_COLUMNS) | set(SHAPER_COLUMNS) <= set(table.optional)
        assert "cpu_saturated" not in analysis.SCHEMAS[table.name]
    assert {"outer_cc", "loss_hiding"} <= set(GOODPUT.optional)
    assert {"goodput_after_gap_mbps", "ablation_off"} <= set(FAILOVER.optional)
    goodput = get_experiment("goodput")
    assert {"outer_cc", "loss_hiding"} <= set(goodput.key_columns)


# -- one declaration per table ---------------------------------------------------------------
@pytest.mark.parametrize("table", sorted(TABLES))
def test_writer_and_loader_share_one_declaration(table: str) -> None:
    experiment = get_experiment(table.split("_")[0])  # failover_timeseries: failover
    assert experiment.tables[table] == list(TABLES[table].columns)  # what the runner writes
    assert analysis.SCHEMAS[table] == TABLES[table].required  # what the loader requires
    assert set(TABLES[table].required) < set(TABLES[table].columns)


def test_a_table_declares_each_column_once() -> None:
    with pytest.raises(ValueError, match="twice"):
        Table("bad", ("a", "b", "a"))
    with pytest.raises(ValueError, match="optional"):
        Table("bad", ("a",), optional=("b",))


# -- the notebooks' preamble -----------------------------------------------------------------
def test_notebook_setup_finds_says_and_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, "failover", "20261126-100000")
    write_failover_run(run)
    nb = analysis.notebook_setup("failover", "", tmp_path, tmp_path / "figs")
    assert nb.run_dir == run and nb.data is not None and len(nb.data) == 5
    assert nb.data["completed"].dtype == bool  # loaded by load_failover
    assert f"Run `{run}`: commit `?`" in capsys.readouterr().out  # outside a notebook: printed
    nb.figure(analysis.failover_figure, "failover.png")
    assert (tmp_path / "figs" / "failover.png").read_bytes().startswith(PNG_MAGIC)
    assert "saved" in capsys.readouterr().out


def test_notebook_setup_falls_back_to_the_latest_run_that_has_its_variants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The masque notebook reads failover runs; the newest one has no MASQUE variant, an
    older one has: that one is shown, and the notebook says why. Named explicitly, the newest
    one is kept and has nothing to show."""
    older = make_run(tmp_path, "failover", "20261126-100000")
    write_masque_run(older)
    newest = make_run(tmp_path, "failover", "20261127-100000")
    write_failover_run(newest)
    nb = analysis.notebook_setup("masque", "", tmp_path, tmp_path / "figs")
    assert nb.run_dir == older and nb.data is not None
    out = capsys.readouterr().out
    assert f"The latest failover run `{newest}` has nothing for this notebook" in out
    assert f"Run `{older}`" in out
    nb = analysis.notebook_setup("masque", str(newest), tmp_path, tmp_path / "figs")
    assert nb.run_dir == newest and nb.data is None
    assert "This masque run has nothing to show" in capsys.readouterr().out


def test_notebook_setup_without_a_run_or_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nb = analysis.notebook_setup("goodput", "", tmp_path, tmp_path / "figs")
    assert nb.run_dir is None and nb.data is None
    assert "No goodput results yet under" in capsys.readouterr().out
    run = make_run(tmp_path, "goodput", "20261126-100000")
    (run / "meta.json").write_text(json.dumps({"failed": [{"point": {}}, {"point": {}}]}))
    nb = analysis.notebook_setup("goodput", str(run), "", tmp_path / "figs")
    assert nb.run_dir == run and nb.data is None
    out = capsys.readouterr().out
    assert "2 point(s) failed" in out and "This goodput run has nothing to show" in out
    nb.figure(analysis.goodput_figure, "goodput.png")
    assert not (tmp_path / "figs").exists()


def test_notebook_setup_for_a_notebook_reading_another_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """notebooks/ablation.ipynb reads failover runs."""
    nb = analysis.notebook_setup("ablation", "", tmp_path, tmp_path / "figs")
    assert nb.run_dir is None
    assert f"No ablation results yet under `{tmp_path / 'failover'}`" in capsys.readouterr().out
    run = make_run(tmp_path, "failover", "20261126-100000")
    write_failover_run(run)
    nb = analysis.notebook_setup("ablation", "", tmp_path, tmp_path / "figs")
    assert nb.run_dir == run and nb.data is None
    assert "This ablation run has nothing to show" in capsys.readouterr().out
    write_ablation_run(run)
    nb = analysis.notebook_setup("ablation", "", tmp_path, tmp_path / "figs")
    assert nb.data is not None and "engine" in set(nb.data["variant"])


def test_rss_growth_sentence(tmp_path: Path) -> None:
    write_scale_run(tmp_path)
    (sentence,) = analysis.rss_growth_sentences(
        analysis.scale_summary(analysis.load_scale(tmp_path))
    )
    assert sentence.startswith("tunnel: the concentrator's RSS grows by 1024 kB per client")


def test_the_medians_exact_confidence_interval() -> None:
    """Order statistics from the binomial: with 10 values, x(2)..x(9) cover the median with
    probability 1 - 2 * (1 + 10) / 1024 = 97.9 % >= 95 % (x(3)..x(8): 89 %, too little)."""
    values = [float(v) for v in (50, 10, 20, 30, 40, 60, 70, 80, 90, 100)]
    assert analysis.median_ci(values) == (55.0, 20.0, 90.0)
    median, lo, hi = analysis.median_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert median == 3.0 and math.isnan(lo) and math.isnan(hi)  # n = 5: no 95 % interval
    assert analysis.median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])[1:] == (1.0, 6.0)  # 96.9 %


# -- the conditions footer and the legends ---------------------------------------------------
def test_failover_footer_stays_clear_of_its_legend_and_the_gaps_keep_their_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the saved image (savefig's tight crop included) the conditions footer lies below the
    figure legend, not under it; the goodput panel sharing the gaps' rows leaves their names."""
    write_failover_run(tmp_path)
    with (tmp_path / "failover.csv").open(newline="") as fh:
        header, *rows = list(csv.reader(fh))
    # the goodput-after-the-gap panel draws only with its column
    write_csv(tmp_path / "failover.csv", [*header, "goodput_after_gap_mbps"],
              [[*row, 9.0] for row in rows])  # fmt: skip
    (tmp_path / "meta.json").write_text(
        json.dumps({"git_commit": "0123456789abcdef", "parameters": {"runs": 3}})
    )
    footer = analysis.run_conditions(tmp_path)
    drawn: list[tuple[Bbox, list[Bbox], BboxBase]] = []
    figures: list[Figure] = []

    class Recording(Figure):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            figures.append(self)
            self.canvas.mpl_connect("draw_event", self.record)

        def record(self, event: Any) -> None:
            # during savefig: the figure as saved (cropped, at the file's dpi); a draw before
            # the footer exists (laying the figure out) is not a saved image
            text = next((t for t in self.texts if t.get_text() == footer), None)
            if text is None:
                return
            legends = [leg.get_window_extent(event.renderer) for leg in self.legends]
            drawn.append((text.get_window_extent(event.renderer), legends, self.bbox))

    monkeypatch.setattr(analysis, "Figure", Recording)
    analysis.failover_figure(tmp_path, tmp_path / "f.png")
    assert len(drawn) >= 2  # the PNG and the SVG (a tight crop draws twice)
    for text, legends, _ in drawn:
        assert legends
        for legend in legends:
            assert not text.overlaps(legend) and text.y1 <= legend.y0
    text, _, page = drawn[-1]  # the SVG as written: cropped to what the figure draws
    assert page.y0 <= text.y0 and text.y1 <= page.y1
    gaps = figures[0].axes[-2]
    names = [label.get_text() for label in gaps.get_yticklabels()]
    assert any(name.startswith("session-failover") for name in names), names


def test_notebook_setup_draws_the_pinned_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`<root>/figures/runs.toml` names the run a notebook's committed figures cite: it wins
    over a newer run, and an explicit results_dir wins over it."""
    pinned = make_run(tmp_path, "failover", "20261126-100000")
    write_failover_run(pinned)
    newest = make_run(tmp_path, "failover", "20261127-100000")
    write_failover_run(newest)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "runs.toml").write_text('failover = "failover/20261126-100000"\n')
    nb = analysis.notebook_setup("failover", "", tmp_path, tmp_path / "figs")
    assert nb.run_dir == pinned and nb.data is not None
    assert "pins this notebook to the run its committed figures cite" in capsys.readouterr().out
    named = analysis.notebook_setup("failover", str(newest), tmp_path, tmp_path / "f")
    assert named.run_dir == newest
    # a notebook the file does not name: the latest run
    assert analysis.pinned_run("ablation", tmp_path) is None


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ('failover = "failover/20261128-100000"\n', "which is not a complete run under"),
        ("failover = 3\n", "which is not a complete run under"),
        ('failover = "failover"\n', "which is not a complete run under"),
        ("failover = [\n", "cannot be read"),
    ],
)
def test_a_bad_pin_says_what_to_fix(tmp_path: Path, pins: str, message: str) -> None:
    make_run(tmp_path, "failover", "20261126-100000")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "runs.toml").write_text(pins)
    with pytest.raises(analysis.ResultsError, match=message):
        analysis.notebook_setup("failover", "", tmp_path, tmp_path / "figs")


@pytest.mark.parametrize("name", sorted(analysis.LOADERS))
def test_every_committed_pin_loads(name: str) -> None:
    """The pins in results/figures/runs.toml name committed runs that have what their notebook
    shows (deleting or replacing a pinned run fails here, not in `make notebooks`)."""
    run = analysis.pinned_run(name)
    if run is not None:
        assert len(analysis.LOADERS[name](run)) > 0


def partly_recovering() -> Any:
    """A failover table: 2 of 10 runs of `tunnel` recovered; plain-5g carried 90 Mbit/s."""
    import pandas as pd

    rows = [
        {"variant": "tunnel", "event": "blackhole", "traffic": "tcp", "run": i + 1,
         "completed": i < 2, "gap_ms": 8430.0 + 3000 * i if i < 2 else math.nan,
         "goodput_before_mbps": 50.0, "goodput_during_mbps": 5.0, "goodput_after_mbps": 50.0,
         "goodput_after_gap_mbps": (30.0, 40.0, 50.0)[i - 7] if i >= 7 else 0.0,
         "cpu_saturated": False}
        for i in range(10)
    ] + [
        {"variant": "plain-5g", "event": "blackhole", "traffic": "tcp", "run": i + 1,
         "completed": True, "gap_ms": 0.0, "goodput_before_mbps": 95.0,
         "goodput_during_mbps": 90.0, "goodput_after_mbps": 95.0,
         "goodput_after_gap_mbps": 90.0, "cpu_saturated": False}
        for i in range(10)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_a_row_whose_runs_partly_never_recovered_says_how_many_did() -> None:
    """The median gap is over the recovered runs: 2 of 10 recovering read as the variant's
    gap (9.9 s) with nothing saying 8 runs never recovered."""
    failover = partly_recovering()
    summary = analysis.failover_gap_summary(failover)
    ax = Figure().add_subplot()
    analysis.plot_failover_gaps(ax, summary, failover)
    names = [label.get_text() for label in ax.get_yticklabels()]
    assert "tunnel  blackhole/tcp (2/10 recovered)" in names
    assert "plain-5g  blackhole/tcp" in names  # all recovered: nothing to say
    assert analysis.recovered_note(0, 10) == ""  # "no recovery" is drawn instead


def test_a_zero_median_keeps_its_interval_relative_to_plain_5g() -> None:
    """7 of 10 runs carried nothing after the gap: the median is 0 and its exact interval
    (0, 40) Mbit/s, drawn / plain 5G (90) as (0, 0.44); dividing by the row's own median
    drew (0, 0)."""
    failover = partly_recovering()
    summary = analysis.failover_gap_summary(failover)
    row = summary.set_index("variant").loc["tunnel"]
    assert row["goodput_after_gap_mbps"] == 0.0 and row["goodput_after_gap_mbps_hi"] == 40.0
    ax = Figure().add_subplot()
    analysis.plot_outage_goodput(ax, summary)
    bars = [c for c in ax.collections if len(c.get_segments())]
    spans = sorted(round(float(s[1][0] - s[0][0]), 3) for c in bars for s in c.get_segments())
    assert round(40.0 / 90.0, 3) in spans, spans


def test_a_run_from_before_the_machine_flag_gets_it_when_it_loads(tmp_path: Path) -> None:
    """Runs written before the flag counted the whole machine: a point with the machine 183
    of 200 busy loads as saturated (LAB_CORES, the lab machine's, without meta.json's
    cpu_cores); a run recorded on 4 cores is judged by its own count."""
    header = [*analysis.SCHEMAS["aggregation"], "cpu_host_pct", "cpu_saturated"]
    rows = [
        ["session-aggregate", "wrr", False, 1, 50, 100, 120.0, 0.8, 183.0, False],
        ["session-aggregate", "wrr", False, 2, 50, 100, 121.0, 0.8, 150.0, False],
    ]
    old = make_run(tmp_path, "aggregation", "20261205-015311")
    write_csv(old / "aggregation.csv", header, rows)
    assert analysis.load_aggregation(old)["cpu_saturated"].tolist() == [True, False]
    bigger = make_run(tmp_path, "aggregation", "20261206-015311")
    (bigger / "meta.json").write_text(json.dumps({"experiment": "aggregation", "cpu_cores": 4}))
    write_csv(bigger / "aggregation.csv", header, rows)
    assert analysis.load_aggregation(bigger)["cpu_saturated"].tolist() == [False, False]


def test_a_point_whose_shaper_lost_frames_on_its_own_is_flagged(tmp_path: Path) -> None:
    """shaper_faults > 0 (qtwire's refused sends, its cap, its socket's kernel drops): the link
    was not the one configured, flagged as a saturated core is; empty (netem, older runs) and
    0 are not."""
    header = [*analysis.SCHEMAS["aggregation"], "cpu_saturated", *SHAPER_COLUMNS]
    rows = [
        ["session-aggregate", "wrr", False, 1, 50, 100, 120.0, 0.8, False, 0.3, 12],
        ["session-aggregate", "wrr", False, 2, 50, 100, 121.0, 0.8, False, 0.2, 0],
        ["session-aggregate", "wrr", False, 3, 50, 100, 121.0, 0.8, False, "", ""],
    ]
    run = make_run(tmp_path, "aggregation", "20261206-130000")
    write_csv(run / "aggregation.csv", header, rows)
    assert analysis.load_aggregation(run)["cpu_saturated"].tolist() == [True, False, False]


def test_unreadable_results_files_are_one_sentence_naming_the_file(tmp_path: Path) -> None:
    """A results CSV that is a directory, not UTF-8 or has a row with extra fields: one
    sentence naming it (a directory is not said to be missing), never a traceback."""
    run = make_run(tmp_path, "failover", "20261206-100000")
    path = run / "failover.csv"
    path.mkdir()
    with pytest.raises(ResultsError, match=r"failover\.csv \(Is a directory\)"):
        analysis.load_failover(run)
    path.rmdir()
    path.write_bytes(b"\xff\xfe" + ",".join(FAILOVER_HEADER).encode())
    with pytest.raises(ResultsError, match=r"failover\.csv is not UTF-8 text \(byte 0xff"):
        analysis.load_failover(run)
    write_failover_run(run)
    with path.open("a") as f:
        f.write(",".join(map(str, failover_row("plain", 9, "", False))) + ",1,2,3,4,5,6\n")
    with pytest.raises(ResultsError, match=r"failover\.csv is not valid CSV \(.*Expected"):
        analysis.load_failover(run)
    (tmp_path / "x.png").mkdir()
    write_failover_run(run)
    with pytest.raises(UsageError, match=r"x\.png is a directory: give the path of a \.png file"):
        analysis.figure_for_run(run, tmp_path / "x.png")


def test_a_corrupt_number_is_refused_not_taken_for_no_value(tmp_path: Path) -> None:
    """gap_ms "abc" must not turn a recovered run into one that did not recover: the file,
    column and line are named; an empty cell stays "no value"."""
    write_failover_run(tmp_path)
    rows = list(csv.reader((tmp_path / "failover.csv").open()))
    rows[2][FAILOVER_HEADER.index("gap_ms")] = "abc"
    write_csv(tmp_path / "failover.csv", rows[0], rows[1:])
    with pytest.raises(ResultsError, match=r"failover\.csv line 3, column gap_ms: 'abc' is not"):
        analysis.load_failover(tmp_path)
    write_csv(tmp_path / "failover.csv", [*FAILOVER_HEADER, "cpu_host_pct"], [
        [*failover_row("plain", 0, "", False), "busy"]
    ])  # fmt: skip
    with pytest.raises(ResultsError, match="line 2, column cpu_host_pct: 'busy'"):
        analysis.load_failover(tmp_path)


def test_a_meta_json_whose_parameters_are_not_a_table_draws_without_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"parameters": "x", "backend": "wire"}))
    assert analysis.run_conditions(tmp_path) == "shaping wire"


def test_a_run_that_carried_nothing_before_the_outage_is_no_failover_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An MPTCP run whose transfer never started (flagged by the experiment) counted as "never
    recovered": left out of the runs now, and said."""
    rows = [failover_row("mptcp", r, 400.0, True) for r in (1, 2)]
    rows.append(failover_row("mptcp", 3, "", False))
    rows = [[*row, NO_DELIVERY_BEFORE if row[1] == 3 else ""] for row in rows]
    write_csv(tmp_path / "failover.csv", [*FAILOVER_HEADER, "detail"], rows)
    failover = analysis.load_failover(tmp_path)
    assert len(failover) == 2 and failover.attrs["not_failover_results"] == 1
    summary = analysis.failover_gap_summary(failover)
    assert list(summary["runs"]) == [2] and list(summary["recovered"]) == [2]
    assert "1 run(s) left out" in capsys.readouterr().out
