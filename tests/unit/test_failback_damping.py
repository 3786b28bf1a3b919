"""Flap damping of tunnel mode's failback (tunnel/agents/failback.py): the rule alone, and the
client in memory (tests/unit/client_world.py) on a WiFi that stalls for 150 ms every second."""

from __future__ import annotations

import pytest

from tests.unit.test_tunnel_mode_review import tunnel_world
from tests.unit.tunnel_pairs import ip4
from tunnel.agents.client import Migrate
from tunnel.agents.failback import FIRST_HOLD, FLAP_MEMORY, MAX_HOLD, FailbackDamping


def test_an_access_whose_hold_ended_is_probed_again_before_the_failback() -> None:
    damping = FailbackDamping()
    assert not damping.needs_probe("wifi", 0.0)
    damping.failed("wifi", 10.0)
    assert not damping.needs_probe("wifi", 20.0)  # a first failure holds nothing
    damping.failed("wifi", 11.0)
    damping.answered("wifi", 11.5)  # an answer during the hold is stale at its end
    assert not damping.needs_probe("wifi", 11.9)  # still held
    assert damping.needs_probe("wifi", 12.0)
    damping.answered("wifi", 12.2)
    assert not damping.needs_probe("wifi", 12.2)
    damping.answered("5g", 12.2)  # an access that never failed: nothing to remember


def test_a_first_failure_holds_nothing_and_each_further_one_doubles_the_hold() -> None:
    damping = FailbackDamping()
    damping.failed("wifi", 10.0)
    assert damping.hold("wifi") == 0.0 and damping.held_until("wifi", 10.0) is None
    damping.failed("wifi", 11.0)
    assert damping.hold("wifi") == FIRST_HOLD
    assert damping.held_until("wifi", 11.5) == 11.0 + FIRST_HOLD
    assert damping.held_until("wifi", 11.0 + FIRST_HOLD) is None
    damping.failed("wifi", 13.0)
    assert damping.hold("wifi") == 2 * FIRST_HOLD
    assert damping.held_until("5g", 13.0) is None  # per access
    assert damping.holds == 2


def test_the_hold_stops_growing_at_its_cap() -> None:
    damping = FailbackDamping()
    for n in range(200):  # far beyond 2**64 doublings' worth: no overflow
        damping.failed("wifi", float(n))
    assert damping.hold("wifi") == MAX_HOLD


def test_an_access_good_for_a_flap_memory_starts_again_from_a_first_failure() -> None:
    damping = FailbackDamping()
    for at in (0.0, 1.0, 3.0):
        damping.failed("wifi", at)
    assert damping.hold("wifi") == 2 * FIRST_HOLD
    # the memory runs from the hold's end (3 + 2 s), when the connection could go back
    damping.failed("wifi", 3.0 + 2 * FIRST_HOLD + FLAP_MEMORY + 0.1)
    assert damping.hold("wifi") == 0.0


def test_a_long_hold_does_not_eat_into_the_memory() -> None:
    """Seven quick failures hold WiFi 30 s; it fails again 61 s after the last, so after
    31 s of use: the memory used to count from the failure, the hold included, and forgot
    everything (an immediate failback); it counts from the hold's end now."""
    damping = FailbackDamping()
    for at in range(7):
        damping.failed("wifi", float(at))
    assert damping.hold("wifi") == MAX_HOLD
    damping.failed("wifi", 6.0 + 61.0)
    assert damping.hold("wifi") == MAX_HOLD


@pytest.mark.parametrize(
    ("first", "cap", "memory"), [(0.0, 30.0, 60.0), (2.0, 1.0, 60.0), (1.0, 30.0, 0.0)]
)
def test_settings_that_cannot_work_are_refused(first: float, cap: float, memory: float) -> None:
    with pytest.raises(ValueError, match="flap damping needs"):
        FailbackDamping(first, cap, memory)


def test_a_wifi_that_stalls_every_second_is_failed_back_to_less_and_less_often() -> None:
    """WiFi is silent for 150 ms at the start of every second for 10 s while packets go up every
    10 ms. Each stall moves the connection to 5G within the failure detector's time (never
    held); the failback after the first stall is at once, as it always was (before damping:
    all ten, 20 migrations in 10 s); after the second one not before FIRST_HOLD, after the third
    not before twice that, counted from the failure."""
    world = tunnel_world()
    path = world.up_path("wifi")
    start = world.now
    sent = 0
    for _ in range(10):
        for stalled, steps in ((True, 15), (False, 85)):
            world.blackhole("wifi", stalled)
            for _ in range(steps):
                world.from_tun([ip4(sent % 200)])
                sent += 1
                world.run(0.01)
    moves = [(t - start, a.target.name) for t, a in world.actions if isinstance(a, Migrate)]
    failovers = [t for t, name in moves if name == "5g"]
    failbacks = [t for t, name in moves if name == "wifi"]
    assert all(t % 1.0 < 0.15 + 0.1 for t in failovers)  # right after a stall began
    assert failbacks[0] - failovers[0] < 0.2  # the first: once WiFi answers again
    assert failbacks[1] - failovers[1] >= FIRST_HOLD
    assert failbacks[2] - failovers[2] >= 2 * FIRST_HOLD
    assert len(moves) < 10  # against 20 without damping
    assert world.agent.path_on(moves[-1][1]) is path  # one connection throughout


def test_a_held_failback_waits_for_a_fresh_answer_not_the_verdict_from_before() -> None:
    """WiFi stalls twice (the second failure holds its failback FIRST_HOLD) and is stalled
    again when the hold ends: the connection stays on 5G until WiFi answers a probe sent after
    the hold, instead of moving back on the answer it gave early in the hold."""
    world = tunnel_world()
    world.up_path("wifi")
    start = world.now
    sent = 0

    def traffic(seconds: float) -> None:
        nonlocal sent
        for _ in range(round(seconds / 0.01)):
            world.from_tun([ip4(sent % 200)])
            sent += 1
            world.run(0.01)

    for _ in range(2):  # two stalls, one second apart
        world.blackhole("wifi", True)
        traffic(0.15)
        world.blackhole("wifi", False)
        traffic(0.85)
    moves = [(t - start, a.target.name) for t, a in world.actions if isinstance(a, Migrate)]
    assert [name for _, name in moves] == ["5g", "wifi", "5g"]
    held_from = moves[-1][0]
    world.blackhole("wifi", True)  # stalled from before the hold ends until well after
    traffic(FIRST_HOLD + 0.5)
    stalled_until = world.now - start
    moves = [(t - start, a.target.name) for t, a in world.actions if isinstance(a, Migrate)]
    assert stalled_until > held_from + FIRST_HOLD
    # not moved back into the stall (before: at the hold's end, then away again)
    assert [name for t, name in moves if t > held_from] == []
    world.blackhole("wifi", False)
    traffic(2.0)
    moves = [(t - start, a.target.name) for t, a in world.actions if isinstance(a, Migrate)]
    assert moves[-1][1] == "wifi" and moves[-1][0] > stalled_until  # once it answered again
