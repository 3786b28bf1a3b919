"""The video workload's player logic (experiments/video_abr.py) on synthetic segment timings:
the rate-based ABR rule, and the playout buffer's startup, stall and switch accounting."""

from __future__ import annotations

import pytest

from experiments.video_abr import (
    LADDER_MBPS,
    SEGMENT_S,
    Playout,
    choose_rung,
    harmonic_mean,
    predicted_mbps,
    segment_bytes,
    session_metrics,
)


def test_segments_are_their_rate_times_their_duration() -> None:
    assert LADDER_MBPS == (1.0, 2.5, 5.0, 8.0, 16.0) and SEGMENT_S == 2.0
    assert segment_bytes(1.0) == 250_000  # 1 Mbit/s x 2 s / 8
    assert segment_bytes(16.0) == 4_000_000
    assert segment_bytes(2.5, segment_s=4.0) == 1_250_000


def test_the_first_segment_is_at_the_lowest_rate() -> None:
    assert predicted_mbps([]) is None
    assert choose_rung([]) == 0


def test_the_highest_rate_not_above_the_harmonic_mean() -> None:
    assert choose_rung([6.0]) == 2  # 5 <= 6 < 8
    assert choose_rung([8.0]) == 3  # a rate equal to the prediction fits
    assert choose_rung([100.0]) == 4
    assert choose_rung([0.5]) == 0  # nothing fits: the lowest
    assert choose_rung([0.0]) == 0  # a sample that saw nothing predicts nothing


def test_the_harmonic_mean_weighs_slow_segments_most() -> None:
    # one slow segment among fast ones: the arithmetic mean (17.6) would pick 16 Mbit/s
    samples = [20.0, 20.0, 20.0, 20.0, 8.0]
    assert harmonic_mean(samples) == pytest.approx(5 / (4 / 20 + 1 / 8))
    assert choose_rung(samples) == 3
    with pytest.raises(ValueError):
        harmonic_mean([])


def test_only_the_last_five_segments_count() -> None:
    old_slow, recent_fast = [0.5] * 10, [20.0] * 5
    assert predicted_mbps(old_slow + recent_fast) == pytest.approx(20.0)
    assert choose_rung(old_slow + recent_fast) == 4
    assert choose_rung([*recent_fast, 0.5]) == 0  # one slow sample in five pulls it right down
    assert choose_rung([3.0] * 6, history=1) == 1


def test_startup_then_smooth_playback() -> None:
    # segments arrive faster than they play: no stall, playback from the first arrival
    player = Playout(origin=10.0)
    for k, t in enumerate((10.5, 11.0, 12.0, 14.0)):
        player.segment_arrived(t, 5.0)
        assert player.segments == k + 1
    assert player.level(14.5) == pytest.approx(4 * SEGMENT_S - 4.0)  # 4 s played
    metrics = player.finish(16.0)
    assert metrics.startup_s == pytest.approx(0.5)
    assert (metrics.stalls, metrics.stall_s, metrics.switches) == (0, 0.0, 0)
    assert metrics.played_s == pytest.approx(5.5) and metrics.mean_bitrate_mbps == 5.0


def test_a_stall_when_the_buffer_runs_dry_and_playback_resumes_on_arrival() -> None:
    # one segment at 1 s (plays 1..3 s), the next only at 4.5 s: a 1.5 s stall from 3 s
    arrivals = [(1.0, 1.0), (4.5, 1.0), (5.0, 1.0)]
    metrics = session_metrics(arrivals, duration_s=8.0)
    assert metrics.startup_s == 1.0  # the startup wait is not a stall
    assert metrics.stalls == 1 and metrics.stall_s == pytest.approx(1.5)
    # 4.5 .. 8 played on without a stall: 2 + 3.5 s in all
    assert metrics.played_s == pytest.approx(5.5)


def test_a_stall_still_going_at_the_end_counts_up_to_the_end() -> None:
    metrics = session_metrics([(0.5, 2.5)], duration_s=6.0)
    assert metrics.stalls == 1 and metrics.stall_s == pytest.approx(6.0 - 2.5)
    assert metrics.played_s == pytest.approx(SEGMENT_S)


def test_a_segment_arriving_just_as_the_buffer_empties_is_no_stall() -> None:
    metrics = session_metrics([(0.0, 1.0), (2.0, 1.0), (4.0, 1.0)], duration_s=6.0)
    assert metrics.stalls == 0 and metrics.stall_s == 0.0 and metrics.played_s == 6.0
    # ... nor when float arithmetic leaves a residue (0.4 + 2 + 2 is not 4.4 exactly)
    metrics = session_metrics([(0.4 + 2 * k, 1.0) for k in range(6)], duration_s=12.0)
    assert metrics.stalls == 0 and metrics.played_s == pytest.approx(11.6)


def test_no_segment_no_playback() -> None:
    """A session that never played waited its whole length (it read 0 s of stall, so a mode
    that failed looked best on stalls)."""
    metrics = session_metrics([], duration_s=5.0)
    assert metrics.startup_s is None and metrics.mean_bitrate_mbps is None
    assert (metrics.segments, metrics.stalls, metrics.stall_s, metrics.played_s) == (0, 0, 5, 0)


def test_switches_and_mean_bitrate_count_what_was_played() -> None:
    # rates 1, 5, 5, 16 arrive at once; only 5 s play: 2 s of 1, 2 s of 5, 1 s of the 2nd 5
    arrivals = [(0.0, 1.0), (0.0, 5.0), (0.0, 5.0), (0.0, 16.0)]
    metrics = session_metrics(arrivals, duration_s=5.0)
    assert metrics.switches == 1  # 1 -> 5 played; the 16 never began
    assert metrics.mean_bitrate_mbps == pytest.approx((2 * 1.0 + 3 * 5.0) / 5)
    row = metrics.as_row()
    assert row["video_switches"] == 1 and row["video_segments"] == 4
    metrics = session_metrics(arrivals, duration_s=8.0)
    assert metrics.switches == 2 and metrics.mean_bitrate_mbps == pytest.approx(27 / 4)


def test_time_must_not_go_backwards() -> None:
    player = Playout(origin=0.0)
    player.segment_arrived(3.0, 1.0)
    with pytest.raises(ValueError):
        player.level(2.0)
