"""Link profiles, overrides and the CLI's profile syntax (no root, no Mininet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.cli import parse_profile_args
from testbed.profiles import PROFILES, LinkProfile, ProfileError, parse_overrides, profile
from testbed.traces import TraceError


def test_every_required_profile_exists_with_units_in_field_names() -> None:
    assert {"wifi", "5g", "lte", "wired", "lossy"} <= set(PROFILES)
    fields = set(LinkProfile().as_dict())
    assert fields == {
        "delay_ms",
        "jitter_ms",
        "reorder",
        "loss_pct",
        "ge_p_pct",
        "ge_r_pct",
        "ge_good_loss_pct",
        "ge_bad_loss_pct",
        "rate_mbit",
        "trace",
        "queue_packets",
        "queue_bytes",
        "mtu_bytes",
    }


def test_override_replaces_only_named_fields() -> None:
    base = profile("wifi")
    changed = profile("wifi", delay_ms=30, loss_pct=2)
    assert changed.delay_ms == 30 and changed.loss_pct == 2
    assert changed.rate_mbit == base.rate_mbit and changed.jitter_ms == base.jitter_ms


def test_unknown_profile_and_field_get_clear_errors() -> None:
    with pytest.raises(ProfileError, match="unknown link profile 'wlan'"):
        profile("wlan")
    with pytest.raises(ProfileError, match="unknown profile field"):
        profile("wifi", latency=3)


@pytest.mark.parametrize(
    "bad",
    [
        {"delay_ms": -1},
        {"loss_pct": 101},
        {"rate_mbit": -5},
        {"queue_packets": -1},
        {"delay_ms": 1, "jitter_ms": 2},
        {"ge_p_pct": 101},
        {"ge_p_pct": 1, "loss_pct": 1},  # two loss models at once
        {"ge_p_pct": 1, "ge_r_pct": 0},  # a bad state that never ends
        {"trace": "5g-walk", "rate_mbit": 10},  # a trace gives the rate
        {"mtu_bytes": 575},  # below what every IPv4 host must accept
        {"mtu_bytes": 1501},  # more than the lab's veths carry
        {"delay_ms": float("nan")},  # passes every `< 0`
        {"rate_mbit": float("inf")},
        {"delay_ms": 1e400},  # inf once parsed
        {"jitter_ms": float("nan")},
    ],
)
def test_impossible_values_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ProfileError):
        LinkProfile(**bad)


def test_parse_overrides_types_each_field() -> None:
    got = parse_overrides("delay_ms=20, queue_packets=50,reorder=on,loss_pct=0.5")
    assert got == {"delay_ms": 20.0, "queue_packets": 50, "reorder": True, "loss_pct": 0.5}
    assert isinstance(got["queue_packets"], int)
    with pytest.raises(ProfileError, match="field=value"):
        parse_overrides("delay=20")
    with pytest.raises(ProfileError, match="not a number"):
        parse_overrides("delay_ms=fast")
    assert parse_overrides("mtu_bytes=1400") == {"mtu_bytes": 1400}


def test_cli_profile_argument_maps_access_to_profile() -> None:
    got = parse_profile_args(["wifi=lte,delay_ms=30", "5g=wired"])
    assert got["wifi"] == profile("lte", delay_ms=30)
    assert got["5g"] == profile("wired")


def test_gilbert_elliott_mean_loss_is_the_stationary_mix() -> None:
    """In the bad state p / (p + r) of the time: with p = 1 %, r = 24 %, h = 0 (all lost in
    bad), k = 1 (none in good) the mean loss is 4 %, in bursts of mean length 1 / r ≈ 4.2."""
    assert LinkProfile(ge_p_pct=1, ge_r_pct=24).mean_loss_pct == pytest.approx(4.0)
    mixed = LinkProfile(ge_p_pct=10, ge_r_pct=30, ge_bad_loss_pct=50, ge_good_loss_pct=2)
    assert mixed.mean_loss_pct == pytest.approx(0.25 * 50 + 0.75 * 2)
    assert LinkProfile(loss_pct=3).mean_loss_pct == 3


def test_an_override_names_what_is_wrong_with_its_value() -> None:
    with pytest.raises(ProfileError, match="queue_packets must be a whole number"):
        parse_overrides("queue_packets=1.5")
    with pytest.raises(ProfileError, match="delay_ms must be a finite number >= 0, got nan"):
        parse_profile_args(["wifi=wifi,delay_ms=nan"])


def test_a_profiles_trace_is_read_when_the_profile_is_given(tmp_path: Path) -> None:
    """`qtlab up --profile wifi=wifi,trace=FILE`: an unreadable trace is one sentence before
    the lab is built (the shaper refused it only once the lab was up)."""
    with pytest.raises(TraceError, match=r"cannot read trace .*nosuch\.trace"):
        parse_profile_args([f"wifi=wifi,rate_mbit=0,trace={tmp_path / 'nosuch.trace'}"])
    good = tmp_path / "ok.trace"
    good.write_text("0\n5\n10\n")
    assert parse_profile_args([f"wifi=wifi,rate_mbit=0,trace={good}"])["wifi"].trace == str(good)
