"""Path schedulers of the session mode: failover, smooth weighted round-robin, lowest RTT."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.session.scheduler import (
    SCHEDULER_NAMES,
    EarliestArrivalScheduler,
    FailoverScheduler,
    LowestRttScheduler,
    PathInfo,
    Scheduler,
    WeightedRoundRobinScheduler,
    arrival_estimate,
    earliest_path,
    make_scheduler,
)
from tunnel.wire.messages import AccessId

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


# -- congestion windows ----------------------------------------------------------------------------
MSS = 1200


def windowed(space: tuple[int, int], cwnd: tuple[int, int] = (60_000, 60_000)) -> list[PathInfo]:
    """WiFi (path 0, 10 ms) and 5G (path 1, 30 ms) with this much window left (bytes) once the
    next packet is counted (negative: it does not fit)."""
    return [
        PathInfo(path_id=0, access_id=WIFI, available=True, srtt=0.010, window_space=space[0],
                 cwnd=cwnd[0]),
        PathInfo(path_id=1, access_id=G5, available=True, srtt=0.030, window_space=space[1],
                 cwnd=cwnd[1]),
    ]  # fmt: skip


def send_burst(sched: Scheduler, paths: list[PathInfo], packets: int) -> list[int | None]:
    """Choose `packets` times, taking one full packet out of the chosen path's window each time
    (no acknowledgement arrives during the burst, as within one batch of the I/O layer)."""
    chosen = []
    for _ in range(packets):
        path_id = sched.choose(paths)
        chosen.append(path_id)
        for path in paths:
            if path.path_id == path_id and path.window_space is not None:
                path.window_space -= MSS
    return chosen


def test_lowest_rtt_fills_the_fast_window_then_the_slow_one() -> None:
    # MPTCP's default: the lowest RTT among the paths with room, not the lowest RTT outright.
    chosen = send_burst(LowestRttScheduler(), windowed((2 * MSS, 4 * MSS)), 8)
    assert chosen == [0, 0, 0, 1, 1, 1, 1, 1]


def test_lowest_rtt_returns_to_the_fast_path_when_its_window_opens() -> None:
    sched = LowestRttScheduler()
    paths = windowed((-MSS, 10 * MSS))
    assert sched.choose(paths) == 1
    paths[0].window_space = 0  # an acknowledgement freed room for one packet on WiFi
    assert sched.choose(paths) == 0


def test_wrr_skips_a_full_window_and_keeps_its_credit() -> None:
    sched = WeightedRoundRobinScheduler()
    paths = windowed((0, 100 * MSS))
    assert send_burst(sched, paths, 6) == [0, 1, 1, 1, 1, 1]
    paths[0].window_space = 10 * MSS
    # WiFi earned no credit while full (no burst to catch up): the 1:1 alternation resumes.
    assert Counter(send_burst(sched, paths, 10)) == {0: 5, 1: 5}


def test_full_windows_queue_where_the_packet_leaves_soonest() -> None:
    # WiFi: 10 ms, 20 kB window, 25 kB over it -> leaves after ~12.5 ms, arrives ~17.5 ms.
    # 5G: 30 ms, 60 kB window, 1.2 kB over it -> leaves after ~0.6 ms, arrives ~15.6 ms.
    paths = windowed((-25_000, -MSS), cwnd=(20_000, 60_000))
    for sched in (LowestRttScheduler(), WeightedRoundRobinScheduler()):
        assert sched.choose(paths) == 1
    paths[0].window_space = -5_000  # less backlog on WiFi: 10 ms * (0.5 + 0.25) = 7.5 ms
    for sched in (LowestRttScheduler(), WeightedRoundRobinScheduler()):
        assert sched.choose(paths) == 0


def test_backlog_spreads_in_proportion_to_the_paths_rates() -> None:
    # WiFi's packets cross 10 ms sooner (half the RTT difference), so it takes the first
    # 60 kB (50 packets) of backlog alone; beyond that the backlog grows with each path's rate
    # ~ cwnd / srtt: WiFi 60 kB / 10 ms, 5G 60 kB / 30 ms, i.e. 3:1.
    chosen = send_burst(LowestRttScheduler(), windowed((-MSS, -MSS)), 450)
    assert chosen[:50] == [0] * 50
    counts = Counter(chosen[50:])
    assert counts[0] + counts[1] == 400
    assert counts[0] / counts[1] == pytest.approx(3, rel=0.05), counts


def test_a_path_whose_queue_is_at_its_cap_takes_nothing_even_as_fallback() -> None:
    paths = windowed((-50_000, -50_000))
    paths[0].can_send = False
    for sched in (LowestRttScheduler(), WeightedRoundRobinScheduler()):
        assert sched.choose(paths) == 1
    paths[1].can_send = False
    for sched in (LowestRttScheduler(), WeightedRoundRobinScheduler()):
        assert sched.choose(paths) is None


def test_failover_ignores_the_window() -> None:
    # A full primary window queues on the primary: never spill to the backup (that would be
    # aggregation), whatever the windows say.
    sched = FailoverScheduler()
    assert send_burst(sched, windowed((-MSS, 100 * MSS)), 5) == [0] * 5
    assert send_burst(sched, windowed((-100 * MSS, 100 * MSS)), 5) == [0] * 5


def test_unknown_windows_count_as_room() -> None:
    paths = windowed((0, 0))
    paths[0].window_space = paths[1].window_space = None
    assert LowestRttScheduler().choose(paths) == 0
    assert send_burst(WeightedRoundRobinScheduler(), paths, 4) == [0, 1, 0, 1]


def test_ack_clocked_paths_share_in_proportion_to_their_capacity() -> None:
    """A sender faster than both paths together, whose windows open as acknowledgements come
    back (WiFi 4 packets per tick, 5G 8, one-tick RTTs): both aggregating schedulers must give
    each path its capacity's share, not a 1:1 split that overloads WiFi, and the excess must
    queue on both in proportion to their rates rather than all on one."""
    for sched in (WeightedRoundRobinScheduler(), LowestRttScheduler()):
        rates = (4, 8)
        paths = [
            PathInfo(path_id=i, access_id=None, available=True, srtt=0.010,
                     window_space=rate * MSS, cwnd=rate * MSS)
            for i, rate in enumerate(rates)
        ]  # fmt: skip
        chosen: Counter[int | None] = Counter()
        for _tick in range(500):
            for path, rate in zip(paths, rates, strict=True):
                assert path.window_space is not None
                path.window_space += rate * MSS  # a window's worth acknowledged per RTT
            chosen.update(send_burst(sched, paths, 15))
        assert chosen[0] / (chosen[0] + chosen[1]) == pytest.approx(1 / 3, rel=0.02)
        excess = [-(p.window_space or 0) for p in paths]
        assert excess[1] / excess[0] == pytest.approx(2, rel=0.1), (sched.name, excess)


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


@pytest.mark.parametrize(
    ("weight", "srtt", "cwnd"), [(0, None, None), (1, -0.1, None), (1, 0.1, 0)]
)
def test_pathinfo_rejects_bad_values(weight: int, srtt: float | None, cwnd: int | None) -> None:
    with pytest.raises(ValueError, match="path 3"):
        PathInfo(path_id=3, access_id=None, available=True, srtt=srtt, weight=weight, cwnd=cwnd)


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.booleans(),
            st.none() | st.floats(0, 1),
            st.integers(1, 5),
            st.none() | st.integers(-100_000, 100_000),
        ),
        max_size=6,
    ),
    st.sampled_from(SCHEDULER_NAMES),
)
def test_every_scheduler_only_picks_usable_paths(
    specs: list[tuple[bool, bool, float | None, int, int | None]], name: str
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
            window_space=space,
            cwnd=None if space is None else 60_000,
        )
        for i, (available, can_send, srtt, weight, space) in enumerate(specs)
    ]
    for _ in range(5):
        chosen = sched.choose(paths)
        if chosen is None:
            if name != "failover":
                assert not any(p.usable for p in paths)
        else:
            assert paths[chosen].usable
            if name not in ("failover", "earliest") and any(p.has_window for p in paths):
                assert paths[chosen].has_window  # a path with room always goes first


# -- earliest arrival (issue 12) --------------------------------------------------------------


def loaded(path_id: int, srtt: float, rate: float, backlog: int, min_rtt: float) -> PathInfo:
    return PathInfo(
        path_id=path_id,
        access_id=(WIFI, G5)[path_id],
        available=True,
        srtt=srtt,
        window_space=50_000 - backlog,
        cwnd=50_000,
        rate=rate,
        min_rtt=min_rtt,
        backlog=backlog,
    )


def test_earliest_sends_where_the_packet_arrives_first() -> None:
    sched = make_scheduler("earliest")
    assert isinstance(sched, EarliestArrivalScheduler) and sched.uses_window
    # WiFi 10 ms / 1 MB/s, 5G 40 ms / 4 MB/s, both idle: WiFi crosses first
    wifi, five_g = loaded(0, 0.010, 1e6, 0, 0.010), loaded(1, 0.040, 4e6, 0, 0.040)
    assert arrival_estimate(wifi) == pytest.approx(0.005)
    assert sched.choose([wifi, five_g]) == 0
    # 40 kB ahead on WiFi (its pipe holds 10 kB): 30 ms of queue, later than 5G's 20 ms
    wifi.backlog = 40_000
    assert arrival_estimate(wifi) == pytest.approx(0.035)
    assert sched.choose([wifi, five_g]) == 1
    # ... and 5G loaded too (200 kB: 40 ms of queue beyond its pipe): back to WiFi
    five_g.backlog = 320_000
    assert sched.choose([wifi, five_g]) == 0
    assert earliest_path([wifi, five_g], exclude=0) == 1
    five_g.available = False
    assert sched.choose([wifi, five_g]) == 0 and earliest_path([wifi, five_g], exclude=0) is None


def test_earliest_splits_a_backlog_in_proportion_to_the_rates() -> None:
    """Fed packet by packet with the backlogs growing as it chooses, the earliest-arrival rule
    shares the load about as the rates (1:3), once both pipes are full."""
    sched = make_scheduler("earliest")
    paths = [loaded(0, 0.02, 1e6, 0, 0.02), loaded(1, 0.02, 3e6, 0, 0.02)]
    counts = Counter[int]()
    for _ in range(4000):
        chosen = sched.choose(paths)
        assert chosen is not None
        counts[chosen] += 1
        paths[chosen].backlog = (paths[chosen].backlog or 0) + 1000
    assert 2.5 <= counts[1] / counts[0] <= 3.5
