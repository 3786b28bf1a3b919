"""Scenario files: a timeline of link changes on the lab's accesses, as TOML (sans-I/O).

A scenario is data: `parse_scenario(text, source)` validates a TOML text and expands it into
typed steps (at time t: on access A set some link fields, carrier down/up, blackhole on/off);
`Timeline` hands the steps out as a clock passes them (`due(now_s)`, `next_deadline()`), so it
is tested on a fake clock. testbed/scenario_player.py plays one against a running Lab. Time 0 is
the start of an experiment point's traffic; at `duration_s` the scenario ends and every link it
touched gets back what it had before (the player does that, and also when anything fails).

    # what it models (a model, never a measurement)
    name = "walk-out-of-wifi"          # optional: the file's stem
    description = "one line"           # optional
    duration_s = 9.0                   # required: when the scenario ends and links come back
    ramp_step_s = 0.25                 # optional (0.5): granularity of every [[ramp]]
    seed = 1                           # optional (1): the draws of [[outages]] ranges

    [[change]]                         # one change at a time, listed in time order
    at_s = 6.5
    access = "wifi"                    # an access of the reference topology: wifi, 5g
    direction = "both"                 # optional: up (client to network), down, both
    carrier = "down"                   # optional: down | up (a real carrier loss, Lab.access_down)
    blackhole = true                   # optional: everything dropped, link left up
    rate_mbit = 5.0                    # optional: any LinkProfile field (delay_ms, jitter_ms,
                                       #   loss_pct, ge_p_pct, ..., queue_packets, trace, reorder)
    [[ramp]]                           # numeric fields from a value to another, in steps
    access = "wifi"
    from_s = 1.0
    to_s = 6.0
    shape = "linear"                   # optional: linear | geometric (equal ratios per step)
    rate_mbit = [50.0, 2.0]            # [at from_s, at to_s]
    step_s = 0.25                      # optional: this ramp's granularity

    [[outages]]                        # a short outage every few seconds
    access = "5g"
    kind = "blackhole"                 # optional: blackhole (link up) | carrier (link down)
    every_s = [2.0, 4.0]               # a period, or a range drawn from per outage (seeded)
    length_ms = [50, 100]              # a length, or a range drawn from per outage
    first_at_s = 1.0                   # optional: the first outage's start (default: every_s)
    until_s = 9.0                      # optional: no outage ends after this (default duration_s)

Steps at the same time apply in the order [[change]], [[ramp]], [[outages]]. Setting a loss
model turns the other off (loss_pct vs the Gilbert-Elliott ge_p_pct), and a rate turns a trace
off and a trace the rate, as the `qtlab up` CLI's verbs do.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from testbed.paths import SCENARIOS_DIR
from testbed.profiles import LinkProfile
from testbed.topologies import ACCESSES
from tunnel.user_error import UsageError

FieldValue = float | int | bool | str
DIRECTIONS = ("up", "down", "both")
DEFAULT_RAMP_STEP_S = 0.5
MIN_STEP_S = 0.01  # finer than the shaper's control exchange can follow reliably
MAX_STEPS = 10_000  # a bound on every expansion: a scenario is played, not simulated
PROFILE_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(LinkProfile)}
RAMPABLE = tuple(name for name, kind in PROFILE_TYPES.items() if kind in ("float", "int"))
TOP_KEYS = ("name", "description", "duration_s", "ramp_step_s", "seed", "change", "ramp", "outages")
CHANGE_KEYS = ("at_s", "access", "direction", "carrier", "blackhole", *PROFILE_TYPES)
RAMP_KEYS = ("access", "from_s", "to_s", "direction", "shape", "step_s", *RAMPABLE)
OUTAGE_KEYS = ("access", "kind", "every_s", "length_ms", "first_at_s", "until_s")


class ScenarioError(UsageError):
    """A scenario file that cannot be used: one sentence naming the file, the entry and what
    to do."""


# -- what a scenario does -----------------------------------------------------------------------
@dataclass(frozen=True)
class LinkChange:
    """Set some LinkProfile fields of one access, in one or both directions."""

    access: str
    direction: str  # up | down | both (testbed.shaping.DIRECTIONS)
    fields: tuple[tuple[str, FieldValue], ...]

    def describe(self) -> str:
        values = ", ".join(f"{k}={v:g}" if _is_number(v) else f"{k}={v}" for k, v in self.fields)
        return f"{self.access} {self.direction}: {values}"


@dataclass(frozen=True)
class CarrierChange:
    """A real carrier loss (Lab.access_down) or its return."""

    access: str
    up: bool

    def describe(self) -> str:
        return f"{self.access}: carrier {'up' if self.up else 'down'}"


@dataclass(frozen=True)
class BlackholeChange:
    """Everything dropped on the access with its link left up (LinkShaper.blackhole), or not."""

    access: str
    on: bool

    def describe(self) -> str:
        return f"{self.access}: blackhole {'on' if self.on else 'off'}"


Action = LinkChange | CarrierChange | BlackholeChange


@dataclass(frozen=True)
class Step:
    at_s: float  # from the start of the point's traffic
    action: Action
    entry: str  # where it comes from in the file, e.g. "[[ramp]] 2"

    def describe(self) -> str:
        return f"{self.at_s:g} s {self.action.describe()} ({self.entry})"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    seed: int
    steps: tuple[Step, ...]  # in the order they apply
    source: str  # the file (or where its text was recorded), for messages
    text: str  # the TOML as given: a run stores it, a rerun parses it again

    @property
    def accesses(self) -> tuple[str, ...]:
        """The accesses the scenario changes, in the order they first appear."""
        return tuple(dict.fromkeys(step.action.access for step in self.steps))

    @property
    def first_change_s(self) -> float:
        return self.steps[0].at_s if self.steps else self.duration_s

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def check_accesses(self, allowed: Sequence[str], why: str) -> None:
        """ScenarioError when a step changes an access outside `allowed` (`why`: the reason,
        e.g. what the experiment does with the other access)."""
        for step in self.steps:
            if step.action.access not in allowed:
                raise ScenarioError(
                    f"scenario {self.source}: {step.entry} changes {step.action.access}, but "
                    f"{why}: give a scenario that changes only {', '.join(allowed)}"
                )

    def describe(self) -> dict[str, Any]:
        """What a run records in meta.json (with the text itself, so a rerun needs no file)."""
        return {
            "name": self.name,
            "description": self.description,
            "duration_s": self.duration_s,
            "seed": self.seed,
            "accesses": list(self.accesses),
            "steps": len(self.steps),
            "first_change_s": self.first_change_s,
            "source": self.source,
            "sha256": self.sha256,
            "toml": self.text,
        }


def apply_change(profiles: Mapping[str, LinkProfile], change: LinkChange) -> dict[str, LinkProfile]:
    """The up/down profiles of an access after a LinkChange (a ProfileError from LinkProfile
    when the result is not a valid profile): how the player checks a scenario before playing."""
    out = dict(profiles)
    values = dict(change.fields)
    for direction in ("up", "down") if change.direction == "both" else (change.direction,):
        out[direction] = out[direction].with_overrides(**values)
    return out


# -- the timeline -------------------------------------------------------------------------------
class Timeline:
    """The steps of a scenario handed out as a clock passes them (seconds from time 0).

    `due(now_s)` returns the steps whose time has come and were not handed out yet, in order;
    `next_deadline()` is when the next one is due, or the scenario's end, or None once `due`
    has been asked at or after the end (then `ended` is True: restore the links)."""

    def __init__(self, scenario: Scenario) -> None:
        self.steps = scenario.steps
        self.end_s = scenario.duration_s
        self._times = [step.at_s for step in self.steps]
        self._next = 0
        self.ended = False

    def due(self, now_s: float) -> list[Step]:
        upto = bisect.bisect_right(self._times, now_s, lo=self._next)
        out = list(self.steps[self._next : upto])
        self._next = upto
        if now_s >= self.end_s:
            self.ended = True
        return out

    def next_deadline(self) -> float | None:
        if self.ended:
            return None
        if self._next < len(self.steps):
            return self._times[self._next]
        return self.end_s


# -- files ----------------------------------------------------------------------------------------
def shipped_scenarios() -> dict[str, Path]:
    """The scenarios the lab ships (experiments/scenarios/<name>.toml), by name."""
    return {path.stem: path for path in sorted(SCENARIOS_DIR.glob("*.toml"))}


def load_scenario(
    name_or_path: str, text: str | None = None, accesses: Sequence[str] = ACCESSES
) -> Scenario:
    """A scenario by the name of a shipped one or a path; with `text` (what a run recorded),
    that text, labelled `name_or_path` in messages, without reading any file."""
    if text is not None:
        return parse_scenario(text, name_or_path, accesses, default_name=_stem(name_or_path))
    shipped = shipped_scenarios()
    path = shipped.get(name_or_path) or Path(name_or_path).expanduser()
    if not path.is_file():
        raise ScenarioError(
            f"scenario {name_or_path!r} is neither a file nor a shipped scenario: give a TOML "
            f"file or one of {', '.join(shipped) or 'none'} (`qtlab scenarios` lists them)"
        )
    try:
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            f"cannot read scenario {path} ({exc}): give a readable TOML file"
        ) from None
    return parse_scenario(content, str(path), accesses, default_name=path.stem)


def _stem(name_or_path: str) -> str:
    return Path(name_or_path).stem or name_or_path


def parse_scenario(
    text: str, source: str, accesses: Sequence[str] = ACCESSES, default_name: str = ""
) -> Scenario:
    """Validate a scenario's TOML and expand it into its steps; ScenarioError on any mistake."""
    return _Parser(source, accesses).parse(text, default_name or _stem(source))


class _Parser:
    def __init__(self, source: str, accesses: Sequence[str]) -> None:
        self.source = source
        self.accesses = tuple(accesses)

    def fail(self, where: str, what: str) -> ScenarioError:
        return ScenarioError(f"scenario {self.source}: {where}: {what}")

    def parse(self, text: str, default_name: str) -> Scenario:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(
                f"scenario {self.source} is not valid TOML ({exc}): fix its syntax"
            ) from None
        self.keys("the top level", data, TOP_KEYS)
        if "duration_s" not in data:
            raise self.fail("the top level", "duration_s is missing: say when the scenario ends")
        duration = self.number("the top level", "duration_s", data["duration_s"], positive=True)
        name = self.text("the top level", "name", data.get("name", default_name))
        description = self.text("the top level", "description", data.get("description", ""))
        seed = data.get("seed", 1)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise self.fail("the top level", f"seed must be an integer, not {seed!r}")
        ramp_step = self.step_size("the top level", "ramp_step_s", data, DEFAULT_RAMP_STEP_S)
        steps: list[Step] = []
        for number, entry in enumerate(self.tables(data, "change"), 1):
            steps += self.change(f"[[change]] {number}", entry, duration, steps)
        ramps = [
            self.ramp(f"[[ramp]] {number}", entry, duration, ramp_step)
            for number, entry in enumerate(self.tables(data, "ramp"), 1)
        ]
        self.no_overlapping_ramps(ramps)
        for _, _, ramp_steps in ramps:
            steps += ramp_steps
        rng = random.Random(seed)
        outages = [
            self.outages(f"[[outages]] {number}", entry, duration, rng)
            for number, entry in enumerate(self.tables(data, "outages"), 1)
        ]
        self.no_overlapping_outages(outages)
        for outage_steps in outages:
            steps += outage_steps
        if not steps:
            raise self.fail("the top level", "no [[change]], [[ramp]] or [[outages]]: add one")
        if len(steps) > MAX_STEPS:
            raise self.fail(
                "the top level",
                f"{len(steps)} steps after expansion (at most {MAX_STEPS}): use a coarser "
                "ramp_step_s or fewer outages",
            )
        # A stable sort: at the same time, the order above (changes, ramps, outages).
        steps.sort(key=lambda step: step.at_s)
        return Scenario(name, description, duration, seed, tuple(steps), self.source, text)

    # -- entries ------------------------------------------------------------------------------
    def change(
        self, where: str, entry: dict[str, Any], duration: float, before: list[Step]
    ) -> list[Step]:
        self.keys(where, entry, CHANGE_KEYS)
        at = self.time(where, "at_s", entry, duration)
        if at >= duration:
            raise self.fail(where, f"at_s = {at:g} is not before duration_s = {duration:g}")
        changes = [step for step in before if step.entry.startswith("[[change]]")]
        if changes and at < changes[-1].at_s:
            raise self.fail(
                where,
                f"at_s = {at:g} is before the previous change's {changes[-1].at_s:g}: "
                "list changes in time order",
            )
        access = self.access(where, entry)
        direction = self.direction(where, entry)
        out: list[Step] = []
        link = {k: self.field(where, k, v) for k, v in entry.items() if k in PROFILE_TYPES}
        if link:
            out.append(Step(at, LinkChange(access, direction, _exclusive(link)), where))
        if "blackhole" in entry:
            if not isinstance(entry["blackhole"], bool):
                raise self.fail(
                    where, f"blackhole must be true or false, not {entry['blackhole']!r}"
                )
            out.append(Step(at, BlackholeChange(access, entry["blackhole"]), where))
        if "carrier" in entry:
            if entry["carrier"] not in ("down", "up"):
                raise self.fail(where, f'carrier must be "down" or "up", not {entry["carrier"]!r}')
            out.append(Step(at, CarrierChange(access, entry["carrier"] == "up"), where))
        if not out:
            raise self.fail(where, "it changes nothing: give carrier, blackhole or a link field")
        return out

    def ramp(
        self, where: str, entry: dict[str, Any], duration: float, default_step: float
    ) -> tuple[str, tuple[str, str, float, float, tuple[str, ...]], list[Step]]:
        self.keys(where, entry, RAMP_KEYS)
        access = self.access(where, entry)
        direction = self.direction(where, entry)
        start = self.time(where, "from_s", entry, duration)
        end = self.time(where, "to_s", entry, duration)
        if end <= start:
            raise self.fail(where, f"to_s = {end:g} is not after from_s = {start:g}")
        if end >= duration:
            raise self.fail(where, f"to_s = {end:g} is not before duration_s = {duration:g}")
        shape = entry.get("shape", "linear")
        if shape not in ("linear", "geometric"):
            raise self.fail(where, f'shape must be "linear" or "geometric", not {shape!r}')
        step = self.step_size(where, "step_s", entry, default_step)
        ends: dict[str, tuple[float, float]] = {}
        for key in (k for k in entry if k in RAMPABLE):
            pair = entry[key]
            if not (isinstance(pair, list) and len(pair) == 2):
                raise self.fail(where, f"{key} must be a pair [value at from_s, value at to_s]")
            a, b = (self.field(where, key, value) for value in pair)
            assert isinstance(a, int | float) and isinstance(b, int | float)
            if shape == "geometric" and (a <= 0 or b <= 0):
                raise self.fail(where, f"a geometric ramp needs {key} > 0 at both ends")
            ends[key] = (float(a), float(b))
        if not ends:
            raise self.fail(where, "it ramps nothing: give a field such as rate_mbit = [50, 5]")
        count = math.ceil((end - start) / step - 1e-9)
        if count > MAX_STEPS:
            raise self.fail(where, f"{count} steps (at most {MAX_STEPS}): use a larger step_s")
        steps = []
        for i in range(count + 1):
            at = min(end, start + i * step)
            fraction = (at - start) / (end - start)
            values = {key: _between(a, b, fraction, shape) for key, (a, b) in ends.items()}
            typed = {k: round(v) if PROFILE_TYPES[k] == "int" else v for k, v in values.items()}
            steps.append(
                Step(round(at, 6), LinkChange(access, direction, _exclusive(typed)), where)
            )
        span = (access, direction, start, end, tuple(ends))
        return where, span, steps

    def outages(
        self, where: str, entry: dict[str, Any], duration: float, rng: random.Random
    ) -> list[Step]:
        self.keys(where, entry, OUTAGE_KEYS)
        access = self.access(where, entry)
        kind = entry.get("kind", "blackhole")
        if kind not in ("blackhole", "carrier"):
            raise self.fail(where, f'kind must be "blackhole" or "carrier", not {kind!r}')
        for key in ("every_s", "length_ms"):
            if key not in entry:
                raise self.fail(where, f"{key} is missing: give a number or a range [low, high]")
        every = self.range(where, "every_s", entry["every_s"])
        length_ms = self.range(where, "length_ms", entry["length_ms"])
        if length_ms[1] >= every[0] * 1000:
            raise self.fail(
                where,
                f"outages of up to {length_ms[1]:g} ms do not fit in a period of {every[0]:g} s: "
                "make length_ms shorter than every_s",
            )
        first = (
            self.time(where, "first_at_s", entry, duration) if "first_at_s" in entry else every[0]
        )
        until = self.time(where, "until_s", entry, duration) if "until_s" in entry else duration
        if until > duration:
            raise self.fail(where, f"until_s = {until:g} is after duration_s = {duration:g}")
        steps: list[Step] = []
        start = first
        while len(steps) <= MAX_STEPS:
            length = round(rng.uniform(*length_ms)) / 1000
            if start + length >= until:
                break
            if kind == "blackhole":
                pair: tuple[Action, Action] = (
                    BlackholeChange(access, True),
                    BlackholeChange(access, False),
                )
            else:
                pair = (CarrierChange(access, False), CarrierChange(access, True))
            steps.append(Step(round(start, 6), pair[0], where))
            steps.append(Step(round(start + length, 6), pair[1], where))
            start += round(rng.uniform(*every), 3)
        if not steps:
            raise self.fail(
                where, f"no outage fits between {first:g} and {until:g} s: start it earlier"
            )
        return steps

    def no_overlapping_ramps(
        self, ramps: Iterable[tuple[str, tuple[str, str, float, float, tuple[str, ...]], Any]]
    ) -> None:
        seen: list[tuple[str, tuple[str, str, float, float, tuple[str, ...]]]] = []
        for where, span in ((w, s) for w, s, _ in ramps):
            access, direction, start, end, keys = span
            for other_where, (o_access, o_direction, o_start, o_end, o_keys) in seen:
                both_ways = "both" in (direction, o_direction) or direction == o_direction
                shared = sorted(set(keys) & set(o_keys))
                if access == o_access and both_ways and shared and start < o_end and o_start < end:
                    raise self.fail(
                        where,
                        f"it ramps {access} {shared[0]} while {other_where} does "
                        f"({max(start, o_start):g}-{min(end, o_end):g} s): make them follow "
                        "each other",
                    )
            seen.append((where, span))

    def no_overlapping_outages(self, outages: Sequence[list[Step]]) -> None:
        windows: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
        for steps in outages:
            for begin, finish in zip(steps[::2], steps[1::2], strict=True):
                kind = type(begin.action).__name__
                key = (begin.action.access, kind)
                windows.setdefault(key, []).append((begin.at_s, finish.at_s, begin.entry))
        for (access, _), spans in windows.items():
            spans.sort()
            for (_, end, first), (start, _, second) in itertools.pairwise(spans):
                if start < end and first != second:
                    raise self.fail(
                        second,
                        f"its outage at {start:g} s on {access} overlaps one of {first}: give "
                        "them different first_at_s / until_s windows",
                    )

    # -- values -------------------------------------------------------------------------------
    def tables(self, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(f"[{key}]", f"write each entry as [[{key}]] (an array of tables)")
        return value

    def keys(self, where: str, entry: dict[str, Any], known: Sequence[str]) -> None:
        unknown = [k for k in entry if k not in known]
        if unknown:
            raise self.fail(where, f"unknown key {unknown[0]!r}; use one of {', '.join(known)}")

    def text(self, where: str, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"{key} must be a string, not {value!r}")
        return value

    def number(self, where: str, key: str, value: Any, positive: bool = False) -> float:
        if not _is_number(value) or not math.isfinite(float(value)):
            raise self.fail(where, f"{key} must be a number, not {value!r}")
        if float(value) < 0 or (positive and float(value) == 0):
            raise self.fail(where, f"{key} = {value:g} must be {'> 0' if positive else '>= 0'}")
        return float(value)

    def time(self, where: str, key: str, entry: dict[str, Any], duration: float) -> float:
        if key not in entry:
            raise self.fail(where, f"{key} is missing: give a time in seconds from the start")
        value = self.number(where, key, entry[key])
        if value > duration:
            raise self.fail(where, f"{key} = {value:g} is after duration_s = {duration:g}")
        return value

    def step_size(self, where: str, key: str, entry: dict[str, Any], default: float) -> float:
        value = self.number(where, key, entry.get(key, default), positive=True)
        if value < MIN_STEP_S:
            raise self.fail(where, f"{key} = {value:g} is below {MIN_STEP_S:g} s: make it coarser")
        return value

    def range(self, where: str, key: str, value: Any) -> tuple[float, float]:
        low, high = value if isinstance(value, list) and len(value) == 2 else [value, value]
        low = self.number(where, key, low, positive=True)
        high = self.number(where, key, high, positive=True)
        if high < low:
            raise self.fail(where, f"{key} = [{low:g}, {high:g}] is not [low, high]")
        return low, high

    def access(self, where: str, entry: dict[str, Any]) -> str:
        access = entry.get("access")
        if access not in self.accesses:
            given = "missing" if access is None else f"{access!r}, unknown"
            raise self.fail(where, f"access is {given}: use one of {', '.join(self.accesses)}")
        assert isinstance(access, str)
        return access

    def direction(self, where: str, entry: dict[str, Any]) -> str:
        direction = entry.get("direction", "both")
        if direction not in DIRECTIONS:
            raise self.fail(where, f"direction must be one of {', '.join(DIRECTIONS)}")
        assert isinstance(direction, str)
        return direction

    def field(self, where: str, key: str, value: Any) -> FieldValue:
        """One LinkProfile field's value, checked alone (a combination is checked against the
        live links' profiles before playing: scenario_player.check)."""
        kind = PROFILE_TYPES[key]
        if kind == "bool":
            if not isinstance(value, bool):
                raise self.fail(where, f"{key} must be true or false, not {value!r}")
            return value
        if kind == "str":
            return self.text(where, key, value)
        number = self.number(where, key, value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise self.fail(where, f"{key} must be a whole number, not {value!r}")
            return int(number)
        if key.endswith("_pct") and number > 100:
            raise self.fail(where, f"{key} = {number:g} is a percentage: give 0 to 100")
        return number


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _between(a: float, b: float, fraction: float, shape: str) -> float:
    value = a * (b / a) ** fraction if shape == "geometric" else a + (b - a) * fraction
    return round(float(value), 6)


def _exclusive(values: Mapping[str, FieldValue]) -> tuple[tuple[str, FieldValue], ...]:
    """One loss model and one rate source at a time (LinkProfile refuses both): setting one
    turns the other off unless the step sets it too."""
    out = dict(values)
    if _is_number(out.get("ge_p_pct")) and float(out["ge_p_pct"]) > 0:
        out.setdefault("loss_pct", 0.0)
    if _is_number(out.get("loss_pct")) and float(out["loss_pct"]) > 0:
        out.setdefault("ge_p_pct", 0.0)
    if out.get("trace"):
        out.setdefault("rate_mbit", 0.0)
    if "rate_mbit" in values:
        out.setdefault("trace", "")
    return tuple(out.items())


__all__ = [
    "Action",
    "BlackholeChange",
    "CarrierChange",
    "LinkChange",
    "Scenario",
    "ScenarioError",
    "Step",
    "Timeline",
    "apply_change",
    "load_scenario",
    "parse_scenario",
    "shipped_scenarios",
]
