"""Play a scenario (testbed/scenario.py) against a running Lab: the timeline's I/O edge.

    report = play(lab, scenario, origin)   # origin: time.monotonic() of the scenario's time 0

`play` first checks every link change against the accesses' profiles as they are (a ProfileError
or a setting the backend lacks, e.g. a trace on netem, is refused before anything changes),
then blocks until the scenario's `duration_s`, applying each step when its time comes through
the lab's own link API (LinkShaper.set / blackhole, Lab.access_down / access_up), so the wire and
netem backends both play it. At the end, and on any failure or interrupt on the way, every
access it touched gets back its profiles, blackhole and carrier from before (`restore`).
`on_carrier(access, up)` is called after each carrier change (the failover experiment's client
OS reacting to it, as for its link-down event). Bounded: one pass over the scenario's steps, no
later than its end plus however late the last step runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from testbed.profiles import LinkProfile, ProfileError
from testbed.scenario import (
    Action,
    BlackholeChange,
    CarrierChange,
    LinkChange,
    Scenario,
    ScenarioError,
    Step,
    Timeline,
    apply_change,
)
from testbed.shaping import LinkShaper, ShapingError, netem_args, wire_settings
from testbed.traces import TraceError

CarrierHook = Callable[[str, bool], None]
# Client-side names of a shaper's directions (an access link's A end is the client).
SIDES = {"up": "ab", "down": "ba"}


class ScenarioLab(Protocol):
    """What playing needs of testbed.lab.Lab (a fake in the unit tests)."""

    @property
    def backend(self) -> str | None: ...

    def shaper(self, access: str, client: str | None = None) -> LinkShaper: ...

    def access_down(self, access: str, client: str | None = None) -> None: ...

    def access_up(self, access: str, client: str | None = None) -> None: ...

    def access_is_down(self, access: str, client: str | None = None) -> bool: ...


@dataclass(frozen=True)
class AccessState:
    """One access as it was before the scenario: what `restore` puts back."""

    up: LinkProfile
    down: LinkProfile
    blackholed: bool
    carrier_down: bool


@dataclass
class PlayReport:
    """What was played: each step's planned and actual time (s from the origin)."""

    applied: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def max_late_ms(self) -> float:
        return max((1000 * (done - planned) for planned, done, _ in self.applied), default=0.0)

    def summary(self) -> dict[str, float | int]:
        return {"steps_applied": len(self.applied), "max_late_ms": round(self.max_late_ms, 1)}


def snapshot(
    lab: ScenarioLab, accesses: tuple[str, ...], client: str | None
) -> dict[str, AccessState]:
    out = {}
    for access in accesses:
        shaper = lab.shaper(access, client)
        out[access] = AccessState(
            shaper.profiles[SIDES["up"]],
            shaper.profiles[SIDES["down"]],
            shaper.blackholed,
            lab.access_is_down(access, client),
        )
    return out


def check(lab: ScenarioLab, scenario: Scenario, client: str | None = None) -> None:
    """Every link change of the scenario applied in order to the profiles the accesses have
    now, without touching them: ScenarioError naming the step if one cannot be applied."""
    profiles = {
        access: {"up": state.up, "down": state.down}
        for access, state in snapshot(lab, scenario.accesses, client).items()
    }
    for step in scenario.steps:
        action = step.action
        if not isinstance(action, LinkChange):
            continue
        try:
            profiles[action.access] = apply_change(profiles[action.access], action)
            for side in ("up", "down"):
                if lab.backend == "netem":
                    netem_args(profiles[action.access][side])
                else:  # resolves a trace: a wrong name failed only once its step came
                    wire_settings(profiles[action.access][side])
        except (ProfileError, ShapingError, TraceError) as exc:
            raise ScenarioError(
                f"scenario {scenario.source}: {step.entry} at {step.at_s:g} s cannot be applied "
                f"to {action.access} as this run's link is ({str(exc).rstrip('.')}): change the "
                "scenario or the link profile"
            ) from None


def apply(
    lab: ScenarioLab, action: Action, client: str | None, on_carrier: CarrierHook | None
) -> None:
    if isinstance(action, LinkChange):
        lab.shaper(action.access, client).set(action.direction, **dict(action.fields))
    elif isinstance(action, BlackholeChange):
        lab.shaper(action.access, client).blackhole(action.on)
    else:
        (lab.access_up if action.up else lab.access_down)(action.access, client)
        if on_carrier is not None:
            on_carrier(action.access, action.up)


def restore(
    lab: ScenarioLab,
    before: dict[str, AccessState],
    client: str | None,
    on_carrier: CarrierHook | None = None,
) -> None:
    """Put every access back as `before`; each part is tried even when another fails (the
    first failure is raised after)."""
    failures: list[Exception] = []
    for access, state in before.items():
        shaper = lab.shaper(access, client)
        parts: list[Callable[[], None]] = [
            partial(shaper.set_profile, side, prof)
            for side, prof in (("up", state.up), ("down", state.down))
            if shaper.profiles[SIDES[side]] != prof or SIDES[side] in shaper.unsure
        ]
        if shaper.blackholed != state.blackholed:
            parts.append(partial(shaper.blackhole, state.blackholed))
        if lab.access_is_down(access, client) != state.carrier_down:
            back = CarrierChange(access, up=not state.carrier_down)
            parts.append(partial(apply, lab, back, client, on_carrier))
        for part in parts:
            try:
                part()
            except Exception as exc:  # the other parts must still run
                failures.append(exc)
    if failures:
        raise failures[0]


def play(
    lab: ScenarioLab,
    scenario: Scenario,
    origin: float,
    client: str | None = None,
    on_carrier: CarrierHook | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PlayReport:
    """Play the scenario with time 0 at `origin` (on `clock`) until its end, then restore."""
    check(lab, scenario, client)
    before = snapshot(lab, scenario.accesses, client)
    timeline = Timeline(scenario)
    report = PlayReport()
    try:
        while (deadline := timeline.next_deadline()) is not None:
            wait = origin + deadline - clock()
            if wait > 0:
                sleep(wait)
            step: Step
            for step in timeline.due(clock() - origin):
                apply(lab, step.action, client, on_carrier)
                report.applied.append((step.at_s, clock() - origin, step.action.describe()))
    finally:
        restore(lab, before, client, on_carrier)
    return report


__all__ = ["PlayReport", "ScenarioLab", "check", "play", "restore", "snapshot"]
