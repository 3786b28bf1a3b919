"""Trace-driven links (testbed/traces.py): Mahimahi's format read and checked, the shipped
model traces deterministic from their seeds, and the netem backend refusing a trace."""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest

from testbed import traces
from testbed.profiles import LinkProfile
from testbed.shaping import ShapingError, netem_args, wire_settings
from testbed.traces import (
    OPPORTUNITY_BYTES,
    SHIPPED,
    WALKS,
    TraceError,
    mean_rate_mbit,
    opportunities,
    read_trace,
    trace_path,
    walk_rates,
    walk_slots,
    window_rates_mbit,
)


def test_opportunities_carry_the_rate_per_slot() -> None:
    """12 Mbit/s for 100 ms = 100 opportunities of 1500 bytes, spread over the slot; the last
    line is the period."""
    times = opportunities([12.0, 0.0, 12.0])
    assert times[:3] == [0, 1, 2] and times[-1] == 300
    assert sum(1 for t in times[:-1] if t < 100) == 100
    assert not [t for t in times[:-1] if 100 <= t < 200]  # no opportunity at 0 Mbit/s
    assert mean_rate_mbit(opportunities([20.0] * 200)) == pytest.approx(20.0, rel=1e-3)


def test_walks_are_deterministic_and_bounded() -> None:
    for walk in WALKS.values():
        slots, events = walk_slots(walk)
        assert (slots, events) == walk_slots(walk)  # the seed decides
        assert len(slots) == 200
        assert all(walk.low_mbit <= r <= walk.high_mbit for r in slots)
        assert events, "every walk has fades or gaps"
        assert all(walk.event_ms[0] <= length <= walk.event_ms[1] for _, length in events)
    assert min(walk_rates(WALKS["5g-walk"])) == 0.0  # handover-like gaps: no opportunity


def _count(times: list[int], start: int, end: int) -> int:
    """Opportunities in [start, end) ms."""
    return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)


def test_a_5g_gap_is_a_silence_as_long_as_drawn() -> None:
    """A drawn 74 ms gap is 74 ms without an opportunity (give or take the spacing of one at
    the walk's lowest rate), not every 100 ms slot it touches (the first version: all 100)."""
    walk = WALKS["5g-walk"]
    times = SHIPPED["5g-walk"]()
    spacing = OPPORTUNITY_BYTES * 8 / (walk.low_mbit * 1e3)  # ms between two at the lowest rate
    _, events = walk_slots(walk)
    for start, length in events:
        before = times[bisect.bisect_left(times, start) - 1]
        after = times[bisect.bisect_left(times, start)]
        silence = after - before - 1  # whole milliseconds with no opportunity
        assert length <= silence <= length + 2 * spacing, (start, length, silence)


def test_a_wifi_fade_ends_when_drawn() -> None:
    """Right after a fade's drawn length the rate is back (rounded up to a whole slot, the
    first version kept up to 99 ms more at a tenth)."""
    walk = WALKS["wifi-walk"]
    times = SHIPPED["wifi-walk"]()
    slots, events = walk_slots(walk)
    for start, length in events:
        end = start + length
        want = slots[end // 100] * 1e6 * 0.020 / (OPPORTUNITY_BYTES * 8)  # in 20 ms at the rate
        assert _count(times, end, end + 20) >= 0.8 * want, (start, length)
        faded = sum(walk_rates(walk)[start:end]) * 1e3 / (OPPORTUNITY_BYTES * 8)
        assert _count(times, start, end) == pytest.approx(faded, abs=1.5), (start, length)


def test_window_rates_see_the_slowest_and_fastest_stretch() -> None:
    """12 Mbit/s (one opportunity a ms) then nothing for 100 ms, looped: a 100 ms window sees
    between nothing and everything (plus the period line, an opportunity at the restart)."""
    times = opportunities([12.0, 0.0])
    low, high = window_rates_mbit(times, 100)
    assert low == 0.0 and high == pytest.approx(101 * 12 / 100)
    assert window_rates_mbit(times, 400) == pytest.approx((2 * 101 * 12 / 400,) * 2)
    const = opportunities([20.0] * 200)
    assert window_rates_mbit(const, 3000) == pytest.approx((20.0, 20.0), rel=1e-3)


def test_shipped_traces_are_written_once_and_read_back(tmp_path: Path) -> None:
    for name in SHIPPED:
        path = trace_path(name)
        assert path.name == f"{name}.trace"
        assert read_trace(path) == SHIPPED[name]()


def test_a_stale_shipped_trace_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written by an older model is replaced by what the model gives now."""
    monkeypatch.setattr(traces, "TRACE_DIR", tmp_path)
    (tmp_path / "5g-walk.trace").write_text("0\n100\n")
    assert read_trace(trace_path("5g-walk")) == SHIPPED["5g-walk"]()


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "usable"), ("5\n3\n", "non-decreasing"), ("0\n0\n", "usable"), ("1.5\n", "integer")],
)
def test_bad_traces_get_one_sentence(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.trace"
    bad.write_text(text)
    with pytest.raises(TraceError, match=message):
        trace_path(str(bad))
    with pytest.raises(TraceError, match="cannot read"):
        trace_path(str(tmp_path / "missing.trace"))


def test_a_trace_goes_to_the_wire_and_not_to_netem(tmp_path: Path) -> None:
    good = tmp_path / "mine.trace"
    good.write_text("0\n0\n5\n10\n")
    assert wire_settings(LinkProfile(trace=str(good)))["trace"] == str(good.resolve())
    assert wire_settings(LinkProfile())["trace"] == ""
    with pytest.raises(ShapingError, match="wire backend"):
        netem_args(LinkProfile(trace=str(good)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"-5\n10\n", "non-decreasing times in ms from 0"),  # a negative time
        (b"\xff\xfe1\n", "is not a Mahimahi trace"),  # not text at all
        (b"1\n100000000000\n", r"loops every 100000000000 ms, more than the 3600000 ms"),
    ],
)
def test_impossible_traces_are_one_sentence(tmp_path: Path, content: bytes, message: str) -> None:
    """Not a traceback, and no MemoryError from window_rates_mbit for a 3-year loop."""
    path = tmp_path / "t.trace"
    path.write_bytes(content)
    with pytest.raises(TraceError, match=message):
        trace_path(str(path))


def test_window_rates_of_a_long_loop_stay_small() -> None:
    """An hour's loop (the longest a trace may have) in machine integers: the least and most
    over 10 s, and the same answer as counting by hand for a short one."""
    low, high = window_rates_mbit([0, 5, 1000, traces.MAX_PERIOD_MS], 10_000)
    # the most: 0, 5, 1000 and the last line (the loop's restart, at 0 again)
    assert low == 0.0 and high == pytest.approx(4 * OPPORTUNITY_BYTES * 8 / 10 / 1e6)
    assert window_rates_mbit([3, 7, 10], 4) == pytest.approx((3.0, 6.0))


def test_a_trace_reads_as_the_shaper_reads_it(tmp_path: Path) -> None:
    """qtwire.c skips empty lines and lines starting with "#" and takes one time per line: so
    does the check (it refused a commented trace the shaper would have played), and two times
    on one line, which the shaper refuses, are refused here too."""
    path = tmp_path / "t.trace"
    path.write_bytes(b"# a comment\n0\n\n5\r\n12\n")
    assert read_trace(path) == [0, 5, 12]
    path.write_bytes(b"0 5\n12\n")
    with pytest.raises(TraceError, match="not a Mahimahi trace"):
        read_trace(path)
