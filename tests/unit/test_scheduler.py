"""Path schedulers of the session mode: failover, smooth weighted round-robin, lowest RTT."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.messages import AccessId
from tunnel.scheduler import (
    SCHEDULER_NAMES,
    FailoverScheduler,
    LowestRttScheduler,
    PathInfo,
    Scheduler,
    WeightedRoundRobinScheduler,
    make_scheduler,
)

WIFI, G5 = AccessId.NON_THREE_GPP, AccessId.THREE_GPP


def wifi_and_5g() -> list[PathInfo]:
    return [
        PathInfo(path_id=0, access_id=G5, available=True, srtt=0.040),
        PathInfo(path_id=1, access_id=WIFI, available=True, srtt=0.010),
    ]


# -- failover ------------------------------------------------------------------------------------


def test_failover_prefers_wifi_then_5g_and_comes_back() -> None:
    sched = FailoverScheduler()
    paths = wifi_and_5g()
    assert sched.choose(paths) == 1  # WiFi primary, although listed second
    paths[1].available = False  # Access Report: WiFi UNAVAILABLE
    assert sched.choose(paths) == 0
    paths[1].available = True  # WiFi AVAILABLE again
    assert sched.choose(paths) == 1
    paths[0].available = paths[1].available = False
    assert sched.choose(paths) is None


def test_failover_custom_priority() -> None:
    sched = FailoverScheduler(priority=[G5, WIFI])
    assert sched.choose(wifi_and_5g()) == 0


def test_failover_does_not_spill_to_backup_when_primary_cannot_send() -> None:
    sched = FailoverScheduler()
    paths = wifi_and_5g()
    paths[1].can_send = False
    assert sched.choose(paths) is None


def test_failover_uses_another_path_of_the_same_access_type() -> None:
    sched = FailoverScheduler()
    paths = [
        *wifi_and_5g(),
        PathInfo(path_id=2, access_id=WIFI, available=True, srtt=None),  # WiFi over IPv6
    ]
    assert sched.choose(paths) == 1
    paths[1].can_send = False
    assert sched.choose(paths) == 2


def test_failover_unknown_access_ranks_last() -> None:
    sched = FailoverScheduler()
    paths = [
        PathInfo(path_id=7, access_id=None, available=True, srtt=0.001),
        PathInfo(path_id=8, access_id=G5, available=True, srtt=0.5),
    ]
    assert sched.choose(paths) == 8
    paths[1].available = False
    assert sched.choose(paths) == 7


@pytest.mark.parametrize(
    ("priority", "message"),
    [([], "empty"), ([WIFI, WIFI], "twice"), ([9], "9 is not a valid AccessId")],
)
def test_failover_bad_priority(priority: list[AccessId | int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FailoverScheduler(priority=priority)


# -- weighted round-robin --------------------------------------------------------------------------


def test_wrr_is_smooth() -> None:
    sched = WeightedRoundRobinScheduler()
    paths = [
        PathInfo(path_id=ord(name), access_id=None, available=True, srtt=None, weight=w)
        for name, w in (("a", 5), ("b", 1), ("c", 1))
    ]
    picks = "".join(chr(sched.choose(paths) or 0) for _ in range(7))
    assert picks == "aabacaa"


@given(st.lists(st.integers(1, 10), min_size=1, max_size=5), st.integers(1, 20))
def test_wrr_proportions_are_exact_over_whole_rounds(weights: list[int], rounds: int) -> None:
    sched = WeightedRoundRobinScheduler()
    paths = [
        PathInfo(path_id=i, access_id=None, available=True, srtt=None, weight=w)
        for i, w in enumerate(weights)
    ]
    counts = Counter(sched.choose(paths) for _ in range(rounds * sum(weights)))
    assert counts == {i: rounds * w for i, w in enumerate(weights)}


def test_wrr_proportions_over_many_picks_with_wifi_and_5g() -> None:
    sched = WeightedRoundRobinScheduler()
    paths = wifi_and_5g()
    paths[0].weight, paths[1].weight = 1, 3
    counts = Counter(sched.choose(paths) for _ in range(10_000))
    assert counts == {1: 7500, 0: 2500}


def test_wrr_skips_unavailable_and_blocked_paths() -> None:
    sched = WeightedRoundRobinScheduler()
    paths = wifi_and_5g()
    paths[0].available = False
    assert {sched.choose(paths) for _ in range(10)} == {1}
    paths[0].available = True
    paths[1].can_send = False
    assert {sched.choose(paths) for _ in range(10)} == {0}
    paths[0].can_send = False
    assert sched.choose(paths) is None


def test_wrr_path_returning_from_unavailable_starts_without_credit() -> None:
    sched = WeightedRoundRobinScheduler()
    paths = wifi_and_5g()
    paths[1].weight = 3
    paths[1].available = False
    for _ in range(100):
        sched.choose(paths)  # only path 0 is chosen meanwhile
    paths[1].available = True
    picks = [sched.choose(paths) for _ in range(4)]
    assert Counter(picks) == {1: 3, 0: 1}  # no burst paying back the time it was away


# -- lowest RTT ------------------------------------------------------------------------------------


def test_lowest_rtt_picks_fastest_usable_path() -> None:
    sched = LowestRttScheduler()
    paths = wifi_and_5g()
    assert sched.choose(paths) == 1
    paths[1].can_send = False
    assert sched.choose(paths) == 0
    paths[1].can_send = True
    paths[1].available = False
    assert sched.choose(paths) == 0
    paths[0].available = False
    assert sched.choose(paths) is None


def test_lowest_rtt_unknown_rtt_is_worst_and_ties_are_stable() -> None:
    sched = LowestRttScheduler()
    paths = [
        PathInfo(path_id=3, access_id=None, available=True, srtt=None),
        PathInfo(path_id=4, access_id=None, available=True, srtt=0.02),
        PathInfo(path_id=5, access_id=None, available=True, srtt=0.02),
    ]
    assert [sched.choose(paths) for _ in range(3)] == [4, 4, 4]
    paths[1].srtt = paths[2].srtt = None
    assert sched.choose(paths) == 3


# -- registry and PathInfo -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("failover", FailoverScheduler),
        ("wrr", WeightedRoundRobinScheduler),
        ("aggregate", WeightedRoundRobinScheduler),
        ("lowest-rtt", LowestRttScheduler),
    ],
)
def test_make_scheduler(name: str, cls: type) -> None:
    sched: Scheduler = make_scheduler(name)
    assert isinstance(sched, cls)
    assert sched.choose(wifi_and_5g()) in (0, 1)


def test_make_scheduler_passes_options() -> None:
    sched = make_scheduler("failover", priority=[G5])
    assert sched.choose(wifi_and_5g()) == 0


def test_make_scheduler_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'minrtt': choose one of failover, wrr"):
        make_scheduler("minrtt")


def test_make_scheduler_bad_option() -> None:
    with pytest.raises(ValueError, match="'wrr' does not take the options \\['priority'\\]"):
        make_scheduler("wrr", priority=[WIFI])


def test_config_knows_the_same_scheduler_names() -> None:
    config = pytest.importorskip("tunnel.config")
    assert set(config.SCHEDULER_NAMES) == set(SCHEDULER_NAMES)


@pytest.mark.parametrize(("weight", "srtt"), [(0, None), (1, -0.1)])
def test_pathinfo_rejects_bad_values(weight: int, srtt: float | None) -> None:
    with pytest.raises(ValueError, match="path 3"):
        PathInfo(path_id=3, access_id=None, available=True, srtt=srtt, weight=weight)


@given(
    st.lists(
        st.tuples(st.booleans(), st.booleans(), st.none() | st.floats(0, 1), st.integers(1, 5)),
        max_size=6,
    ),
    st.sampled_from(SCHEDULER_NAMES),
)
def test_every_scheduler_only_picks_usable_paths(
    specs: list[tuple[bool, bool, float | None, int]], name: str
) -> None:
    sched = make_scheduler(name)
    paths = [
        PathInfo(
            path_id=i,
            access_id=(WIFI, G5, None)[i % 3],
            available=available,
            srtt=srtt,
            weight=weight,
            can_send=can_send,
        )
        for i, (available, can_send, srtt, weight) in enumerate(specs)
    ]
    for _ in range(5):
        chosen = sched.choose(paths)
        if chosen is None:
            if name != "failover":
                assert not any(p.usable for p in paths)
        else:
            assert paths[chosen].usable
