"""Trace-driven links (testbed/traces.py): Mahimahi's format read and checked, the shipped
model traces deterministic from their seeds, and the netem backend refusing a trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.profiles import LinkProfile
from testbed.shaping import ShapingError, netem_args, wire_settings
from testbed.traces import (
    SHIPPED,
    WALKS,
    TraceError,
    mean_rate_mbit,
    opportunities,
    read_trace,
    slot_rates,
    trace_path,
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
        rates = slot_rates(walk)
        assert rates == slot_rates(walk)  # the seed decides
        assert len(rates) == 200
        assert all(r <= walk.high_mbit for r in rates)
        events = [r for r in rates if r < walk.low_mbit]
        assert events, "every walk has fades or gaps"
    assert min(slot_rates(WALKS["5g-walk"])) == 0.0  # handover-like gaps: no opportunity


def test_shipped_traces_are_written_once_and_read_back(tmp_path: Path) -> None:
    for name in SHIPPED:
        path = trace_path(name)
        assert path.name == f"{name}.trace"
        assert read_trace(path) == SHIPPED[name]()


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
