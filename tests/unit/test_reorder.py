"""ReorderBuffer and PacketTagCounter (session draft §4.1.1): a fake clock is just a float."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.reorder import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    OverflowPolicy,
    PacketTagCounter,
    ReorderBuffer,
    serial_distance,
)


def push_all(buf: ReorderBuffer[int], tags: list[int], now: float = 0.0) -> list[int]:
    out: list[int] = []
    for tag in tags:
        out += buf.push(tag, tag, now)
    return out


# -- PacketTagCounter --------------------------------------------------------------------------


def test_counter_counts_and_wraps() -> None:
    counter = PacketTagCounter(start=65534)
    assert [counter.next() for _ in range(4)] == [65534, 65535, 0, 1]
    assert counter.peek() == 2


def test_counter_rejects_start_outside_16_bits() -> None:
    with pytest.raises(ValueError, match=r"0\.\.65535"):
        PacketTagCounter(start=65536)


def test_serial_distance_wraps() -> None:
    assert serial_distance(65535, 0) == 1
    assert serial_distance(0, 65535) == 65535
    assert serial_distance(10, 10) == 0


# -- in order, held, timeouts ------------------------------------------------------------------


def test_in_order_packets_are_released_at_once() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    assert push_all(buf, [5, 6, 7]) == [5, 6, 7]
    assert buf.stats.delivered == 3 and buf.stats.reordered == 0
    assert buf.next_deadline() is None


def test_first_tag_starts_the_sequence() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    assert buf.expected_tag is None
    assert buf.push(40000, 40000, 0.0) == [40000]
    assert buf.expected_tag == 40001


def test_out_of_order_packet_is_held_until_the_gap_fills() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    assert buf.push(0, 0, 0.0) == [0]
    assert buf.push(2, 2, 0.001) == []
    assert buf.push(3, 3, 0.002) == []
    assert len(buf) == 2
    assert buf.push(1, 1, 0.003) == [1, 2, 3]
    assert len(buf) == 0
    assert buf.stats.reordered == 2
    assert buf.stats.gaps_skipped == 0


def test_gap_is_given_up_after_timeout_of_oldest_held_packet() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(timeout=0.05)
    buf.push(0, 0, 0.0)
    buf.push(2, 2, 1.0)
    buf.push(4, 4, 1.02)
    assert buf.next_deadline() == pytest.approx(1.05)
    assert buf.poll(1.049) == []
    # at the deadline of tag 2 the buffer skips tag 1, releases 2, then waits for 3 again
    assert buf.poll(1.05) == [2]
    assert buf.next_deadline() == pytest.approx(1.07)
    assert buf.poll(1.07) == [4]
    assert buf.stats.gaps_skipped == 2 and buf.stats.tags_skipped == 2
    assert buf.next_deadline() is None


def test_timeout_releases_lower_held_packets_first() -> None:
    # 5 arrives before 3: when 5's deadline passes, 3 (held, lower tag) must come out before it
    buf: ReorderBuffer[int] = ReorderBuffer(timeout=0.01)
    buf.push(0, 0, 0.0)
    buf.push(5, 5, 0.0)
    buf.push(3, 3, 0.005)
    assert buf.poll(0.01) == [3, 5]
    assert buf.stats.gaps_skipped == 2  # {1, 2} and {4}
    assert buf.stats.tags_skipped == 3


def test_push_past_a_deadline_first_gives_up_the_expired_gap() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(timeout=0.01)
    buf.push(0, 0, 0.0)
    buf.push(2, 2, 0.0)
    # the caller was late to poll: pushing 4 at t=1 first releases 2, then holds 4 behind 3
    assert buf.push(4, 4, 1.0) == [2]
    assert buf.expected_tag == 3


def test_set_timeout_moves_deadlines_of_held_packets() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(timeout=0.5)
    buf.push(0, 0, 0.0)
    buf.push(2, 2, 0.0)
    buf.set_timeout(0.01)
    assert buf.next_deadline() == pytest.approx(0.01)
    assert buf.poll(0.01) == [2]


def test_late_packet_is_released_once_then_duplicate() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(timeout=0.01)
    buf.push(0, 0, 0.0)
    buf.push(2, 2, 0.0)
    assert buf.poll(0.02) == [2]
    assert buf.push(1, 1, 0.03) == [1]
    assert buf.stats.late == 1
    assert buf.push(1, 1, 0.04) == []
    assert buf.stats.duplicate == 1


def test_packet_before_sequence_start_is_late_once() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    buf.push(10, 10, 0.0)
    assert buf.push(9, 9, 0.0) == [9]
    assert buf.push(9, 9, 0.0) == []
    assert (buf.stats.late, buf.stats.duplicate) == (1, 1)


def test_duplicates_of_delivered_and_held_packets_are_dropped() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    push_all(buf, [0, 1])
    assert buf.push(0, 0, 0.0) == []
    buf.push(3, 3, 0.0)
    assert buf.push(3, 3, 0.0) == []
    assert buf.stats.duplicate == 2
    assert buf.push(2, 2, 0.0) == [2, 3]


def test_flush_releases_everything_in_tag_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    buf.push(0, 0, 0.0)
    push_all(buf, [9, 4, 6])
    assert buf.flush() == [4, 6, 9]
    assert len(buf) == 0 and buf.expected_tag == 10
    assert buf.stats.gaps_skipped == 3 and buf.stats.tags_skipped == 6


def test_wraparound_across_65535() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer()
    buf.push(65534, 65534, 0.0)
    assert buf.push(0, 0, 0.0) == []
    assert buf.push(1, 1, 0.0) == []
    assert buf.push(65535, 65535, 0.0) == [65535, 0, 1]


def test_gap_that_wraps_is_skipped_and_remembered() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(timeout=0.01)
    buf.push(65530, 65530, 0.0)
    buf.push(3, 3, 0.0)
    assert buf.poll(0.01) == [3]
    assert buf.stats.tags_skipped == 8  # 65531..65535 and 0..2
    assert buf.push(65535, 65535, 0.02) == [65535]  # late, released
    assert buf.push(1, 1, 0.02) == [1]
    assert buf.stats.late == 2


def test_tag_half_the_space_ahead_counts_as_behind() -> None:
    # 32768 steps ahead is ambiguous; serial arithmetic reads it as behind (the draft's limit)
    buf: ReorderBuffer[int] = ReorderBuffer()
    buf.push(0, 0, 0.0)
    assert buf.push(32767, 32767, 0.0) == []  # ahead: held
    assert buf.push(32769, 32769, 0.0) == [32769]  # behind the start: late, released
    assert buf.stats.late == 1


# -- overflow ------------------------------------------------------------------------------------


def test_full_buffer_skips_oldest_gap_and_keeps_new_packet() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(capacity=3)
    buf.push(0, 0, 0.0)
    assert push_all(buf, [2, 3, 5]) == []
    assert push_all(buf, [7]) == [2, 3]  # gap {1} given up, 2 and 3 released; 5, 7 held
    assert len(buf) == 2
    assert buf.stats.overflow_skips == 1 and buf.stats.overflow_dropped == 0


def test_full_buffer_new_lowest_tag_is_released_not_passed_by() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(capacity=2)
    buf.push(0, 0, 0.0)
    push_all(buf, [8, 9])
    assert buf.push(4, 4, 0.0) == [4]
    assert buf.expected_tag == 5 and len(buf) == 2


def test_full_buffer_drop_new_policy() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(capacity=2, overflow=OverflowPolicy.DROP_NEW)
    buf.push(0, 0, 0.0)
    push_all(buf, [2, 3])
    assert buf.push(4, 4, 0.0) == []
    assert buf.stats.overflow_dropped == 1 and len(buf) == 2
    assert buf.push(1, 1, 0.0) == [1, 2, 3]


# -- disabled mode, timeouts from RTTs, bad arguments --------------------------------------------


def test_disabled_buffer_passes_everything_through() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(enabled=False)
    assert push_all(buf, [3, 1, 1, 2]) == [3, 1, 1, 2]
    assert buf.stats.delivered == 4 and buf.stats.reordered == 0 and buf.stats.duplicate == 0
    assert buf.poll(10.0) == [] and buf.next_deadline() is None and buf.flush() == []


def test_timeout_from_rtts() -> None:
    # spread 40 ms + 1/8 of 60 ms
    assert ReorderBuffer.timeout_from_rtts([0.020, 0.060]) == pytest.approx(0.0475)
    assert ReorderBuffer.timeout_from_rtts([0.001]) == MIN_TIMEOUT
    assert ReorderBuffer.timeout_from_rtts([0.010, 2.0]) == MAX_TIMEOUT
    assert ReorderBuffer.timeout_from_rtts([]) == DEFAULT_TIMEOUT
    with pytest.raises(ValueError, match="RTT"):
        ReorderBuffer.timeout_from_rtts([0.01, float("nan")])


@pytest.mark.parametrize("capacity", [0, 32768])
def test_bad_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        ReorderBuffer(capacity=capacity)


def test_bad_timeout_and_tag() -> None:
    with pytest.raises(ValueError, match="timeout"):
        ReorderBuffer(timeout=-1.0)
    buf: ReorderBuffer[int] = ReorderBuffer()
    with pytest.raises(ValueError, match="16 bits"):
        buf.push(65536, 0, 0.0)


# -- properties ------------------------------------------------------------------------------------


@st.composite
def windowed_permutation(draw: st.DrawFn) -> tuple[int, list[int], int]:
    """A start tag, and a sequence of consecutive tags where each moved at most `window` places."""
    start = draw(st.integers(0, 65535))
    n = draw(st.integers(1, 300))
    window = draw(st.integers(1, 64))
    keys = [i + draw(st.integers(0, window)) for i in range(n)]
    order = sorted(range(n), key=lambda i: (keys[i], i))
    return start, [(start + i) % 65536 for i in order], window


@given(windowed_permutation())
def test_any_permutation_without_loss_is_released_in_order(
    case: tuple[int, list[int], int],
) -> None:
    start, tags, _ = case
    buf: ReorderBuffer[int] = ReorderBuffer(capacity=1024, timeout=1.0)
    buf.push(start, start, 0.0)  # the first packet fixes where the sequence starts
    out = [start, *push_all(buf, [t for t in tags if t != start], now=0.5)]
    assert out == [(start + i) % 65536 for i in range(len(tags))]
    assert len(buf) == 0
    assert buf.stats.gaps_skipped == buf.stats.late == buf.stats.duplicate == 0


@given(st.integers(65000, 65535), st.permutations(list(range(40))))
def test_wraparound_permutation(start: int, offsets: list[int]) -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(timeout=1.0)
    buf.push(start, start, 0.0)
    tags = [(start + 1 + o) % 65536 for o in offsets]
    assert push_all(buf, tags) == [(start + 1 + i) % 65536 for i in range(40)]


events = st.lists(
    st.tuples(
        st.integers(0, 200),  # tag offset from a base (duplicates and losses happen naturally)
        st.floats(0.0, 0.02),  # time step
        st.booleans(),  # poll after the push
    ),
    max_size=400,
)


@settings(max_examples=200)
@given(
    st.integers(0, 65535),
    events,
    st.integers(1, 16),
    st.sampled_from(list(OverflowPolicy)),
)
def test_never_twice_never_over_capacity_and_every_packet_accounted(
    base: int,
    evs: list[tuple[int, float, bool]],
    capacity: int,
    policy: OverflowPolicy,
) -> None:
    buf: ReorderBuffer[tuple[int, int]] = ReorderBuffer(
        capacity=capacity, timeout=0.01, overflow=policy
    )
    now = 0.0
    released: list[tuple[int, int]] = []
    for serial, (offset, step, poll) in enumerate(evs):
        now += step
        # item = (tag, serial): a copy of a tag is a different item, but its tag must not be
        # released again (400 events cannot wrap the 16-bit space, so tags are unique here)
        tag = (base + offset) % 65536
        released += buf.push(tag, (tag, serial), now)
        assert len(buf) <= capacity
        if poll:
            released += buf.poll(now)
        deadline = buf.next_deadline()
        assert deadline is None or deadline >= now
    released += buf.flush()
    released_tags = [tag for tag, _ in released]
    assert len(released_tags) == len(set(released_tags))
    s = buf.stats
    assert s.delivered == len(released)
    assert s.delivered + s.duplicate + s.overflow_dropped == len(evs)


@given(st.lists(st.integers(0, 100), max_size=300), st.integers(1, 32))
def test_without_late_packets_release_order_is_increasing(
    offsets: list[int], capacity: int
) -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(capacity=capacity, timeout=0.01)
    released: list[int] = []
    for i, off in enumerate(offsets):
        released += buf.push(off, off, i * 0.003)
    released += buf.flush()
    if buf.stats.late == 0 and released:
        first = released[0]
        distances = [serial_distance(first, t) for t in released]
        assert distances == sorted(distances)
