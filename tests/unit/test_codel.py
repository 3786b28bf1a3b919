"""CoDel at enqueue (tunnel/protocol/codel.py, RFC 8289) on a fake clock."""

from __future__ import annotations

import itertools
import math

import pytest

from tunnel.protocol.codel import CoDel

TARGET, INTERVAL = 0.005, 0.1


def drop_times(codel: CoDel, delay: float, start: float, end: float, step: float) -> list[float]:
    """Arrivals every `step` s from `start` to `end` to a queue of constant `delay`: the times
    of the dropped ones."""
    drops = []
    for n in range(round((end - start) / step) + 1):
        now = start + n * step
        if codel.should_drop(delay, backlog=10, now=now):
            drops.append(now)
    return drops


def test_a_queue_below_its_target_is_never_dropped_from() -> None:
    codel = CoDel(TARGET, INTERVAL)
    assert drop_times(codel, TARGET * 0.9, 0.0, 5.0, 0.001) == []
    assert not codel.dropping


def test_one_waiting_packet_is_never_dropped_however_long_it_waited() -> None:
    codel = CoDel(TARGET, INTERVAL)
    assert not any(codel.should_drop(1.0, backlog=1, now=n * 0.01) for n in range(1000))


def test_the_first_drop_comes_one_interval_after_the_delay_rose_above_the_target() -> None:
    codel = CoDel(TARGET, INTERVAL)
    drops = drop_times(codel, 0.020, 1.0, 1.5, 0.001)
    assert drops and drops[0] == pytest.approx(1.0 + INTERVAL)
    assert codel.dropping


def test_drops_come_closer_as_interval_over_the_square_root_of_their_count() -> None:
    codel = CoDel(TARGET, INTERVAL)
    drops = drop_times(codel, 0.020, 0.0, 2.0, 0.0005)
    gaps = [b - a for a, b in itertools.pairwise(drops)]
    # RFC 8289 §5.5: the n-th gap (n from 1) is interval / sqrt(n), to the arrival grid
    assert len(gaps) > 8
    for n, gap in enumerate(gaps[:8], start=1):
        assert gap == pytest.approx(INTERVAL / math.sqrt(n), abs=0.0005)


def test_a_delay_below_the_target_ends_the_dropping_state() -> None:
    codel = CoDel(TARGET, INTERVAL)
    assert drop_times(codel, 0.020, 0.0, 0.5, 0.001)
    assert not codel.should_drop(0.001, backlog=10, now=0.501)
    assert not codel.dropping
    # and a new episode must again last a whole interval before its first drop
    assert drop_times(codel, 0.020, 0.502, 0.55, 0.001) == []


def test_a_new_episode_soon_after_the_last_starts_from_the_last_drop_rate() -> None:
    codel = CoDel(TARGET, INTERVAL)
    first = drop_times(codel, 0.020, 0.0, 1.0, 0.0005)
    codel.should_drop(0.0, backlog=10, now=1.0005)
    second = drop_times(codel, 0.020, 1.001, 1.6, 0.0005)
    # RFC 8289 §5.5: entering again within 16 intervals keeps the count the episode built, so
    # the second episode's drops come faster from its start than the first episode's did
    assert len(first) > 3 and len(second) > 3
    assert second[1] - second[0] < first[1] - first[0]


def test_an_episode_long_after_the_last_starts_again_from_one() -> None:
    codel = CoDel(TARGET, INTERVAL)
    first = drop_times(codel, 0.020, 0.0, 1.0, 0.0005)
    codel.should_drop(0.0, backlog=10, now=1.0005)
    later = 1.0 + 20 * INTERVAL
    second = drop_times(codel, 0.020, later, later + 1.0, 0.0005)
    assert second[1] - second[0] == pytest.approx(first[1] - first[0], abs=0.0005)


@pytest.mark.parametrize(("target", "interval"), [(0.0, 0.1), (0.1, 0.1), (0.2, 0.1), (-1, 1)])
def test_a_target_not_below_its_interval_is_refused(target: float, interval: float) -> None:
    with pytest.raises(ValueError, match="target < interval"):
        CoDel(target, interval)


def test_on_a_long_outer_path_the_interval_and_target_grow_with_its_rtt() -> None:
    """RFC 8289 §4.3-§4.4 scaled to the path: a 100 ms outer RTT makes the interval 200 ms
    and the target 10 ms; a 10 ms one leaves the configured 100 ms and 5 ms; no sample, no
    change."""
    codel = CoDel(TARGET, INTERVAL)
    codel.fit_rtt(None)
    assert (codel.target, codel.interval) == (TARGET, INTERVAL)
    codel.fit_rtt(0.010)
    assert (codel.target, codel.interval) == (TARGET, INTERVAL)
    codel.fit_rtt(0.100)
    assert (codel.target, codel.interval) == (pytest.approx(0.010), pytest.approx(0.200))
    codel.fit_rtt(0.010)
    assert (codel.target, codel.interval) == (TARGET, INTERVAL)


def test_a_window_of_data_queued_for_less_than_a_long_paths_interval_is_not_dropped() -> None:
    """An inner flow's slow-start burst on a 100 ms path: 20 ms of queue for 150 ms. The
    fixed 100 ms interval drops from it; the one fitted to the path's RTT does not."""
    fixed, fitted = CoDel(TARGET, INTERVAL), CoDel(TARGET, INTERVAL)
    fitted.fit_rtt(0.100)
    assert drop_times(fixed, 0.020, 1.0, 1.15, 0.001)
    assert drop_times(fitted, 0.020, 1.0, 1.15, 0.001) == []
