"""Scenario files (testbed/scenario.py): parsing, every refusal, expansion, the timeline on a
fake clock, and the player (testbed/scenario_player.py) on a fake lab — no root."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from testbed.cli import main
from testbed.profiles import LinkProfile, profile
from testbed.scenario import (
    BlackholeChange,
    CarrierChange,
    LinkChange,
    Scenario,
    ScenarioError,
    Timeline,
    apply_change,
    load_scenario,
    parse_scenario,
    shipped_scenarios,
)
from testbed.scenario_player import PlayReport, check, play
from testbed.shaping import LinkShaper, ShaperUnanswered
from tunnel.user_error import UsageError

SOURCE = "test.toml"


def parse(text: str) -> Scenario:
    return parse_scenario(text, SOURCE)


def rate_of(action: object) -> float:
    assert isinstance(action, LinkChange)
    rate = dict(action.fields)["rate_mbit"]
    assert isinstance(rate, float)
    return rate


# -- the shipped scenarios ------------------------------------------------------------------------
def test_the_shipped_scenarios_parse_and_say_they_are_models() -> None:
    shipped = shipped_scenarios()
    assert {"walk-out-of-wifi", "5g-handovers", "train-tunnel"} <= set(shipped)
    for name, path in shipped.items():
        scenario = load_scenario(name)
        assert scenario.name == name
        assert scenario.description
        assert scenario.steps
        # what it models is said in a comment, and that it is a model
        comments = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        assert "MODEL" in comments and "not a measurement" in comments
        # every shipped one fits the quick failover run's 12 s of traffic
        assert scenario.duration_s < 12.0


def test_walk_out_of_wifi_decays_then_loses_the_carrier() -> None:
    scenario = load_scenario("walk-out-of-wifi")
    assert scenario.accesses == ("wifi",)
    rates = [rate_of(s.action) for s in scenario.steps if isinstance(s.action, LinkChange)]
    assert rates[0] == 50.0 and rates[-1] == 2.0
    assert all(a > b for a, b in itertools.pairwise(rates))
    last = scenario.steps[-1]
    assert last.action == CarrierChange("wifi", up=False)
    assert last.at_s > scenario.steps[-2].at_s


def test_5g_handovers_are_short_blackholes_every_few_seconds() -> None:
    scenario = load_scenario("5g-handovers")
    steps = scenario.steps
    assert all(isinstance(s.action, BlackholeChange) and s.action.access == "5g" for s in steps)
    ons, offs = steps[::2], steps[1::2]
    assert all(isinstance(s.action, BlackholeChange) and s.action.on for s in ons)
    assert all(isinstance(s.action, BlackholeChange) and not s.action.on for s in offs)
    lengths = [off.at_s - on.at_s for on, off in zip(ons, offs, strict=True)]
    assert all(0.05 - 1e-9 <= length <= 0.1 + 1e-9 for length in lengths)
    gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(ons)]
    assert gaps and all(2.0 - 1e-9 <= gap <= 4.0 + 1e-9 for gap in gaps)


def test_pmtu_black_hole_shrinks_wifi_and_needs_the_wire_backend() -> None:
    scenario = load_scenario("pmtu-black-hole")
    assert [(s.at_s, s.action) for s in scenario.steps] == [
        (2.0, LinkChange("wifi", "both", (("mtu_bytes", 1400),)))
    ]
    check(FakeLab("wire"), scenario)
    with pytest.raises(ScenarioError, match="netem has no per-direction packet size limit"):
        check(FakeLab("netem"), scenario)


def test_train_tunnel_degrades_both_accesses() -> None:
    scenario = load_scenario("train-tunnel")
    assert set(scenario.accesses) == {"wifi", "5g"}
    actions = [s.action for s in scenario.steps]
    assert BlackholeChange("wifi", True) in actions and CarrierChange("5g", False) in actions


# -- expansion ------------------------------------------------------------------------------
def test_a_change_sets_fields_blackhole_and_carrier_at_its_time() -> None:
    scenario = parse(
        "duration_s = 5\n"
        '[[change]]\nat_s = 1\naccess = "wifi"\ndirection = "up"\ndelay_ms = 30\n'
        "queue_packets = 50\n"
        '[[change]]\nat_s = 2\naccess = "5g"\nblackhole = true\ncarrier = "down"\n'
    )
    assert [(s.at_s, s.action) for s in scenario.steps] == [
        (1.0, LinkChange("wifi", "up", (("delay_ms", 30.0), ("queue_packets", 50)))),
        (2.0, BlackholeChange("5g", True)),
        (2.0, CarrierChange("5g", False)),
    ]
    assert scenario.name == "test" and scenario.first_change_s == 1.0
    assert scenario.accesses == ("wifi", "5g")


def test_one_loss_model_and_one_rate_source_at_a_time() -> None:
    scenario = parse(
        "duration_s = 5\n"
        '[[change]]\nat_s = 1\naccess = "wifi"\nge_p_pct = 1\nge_r_pct = 25\n'
        '[[change]]\nat_s = 2\naccess = "wifi"\nloss_pct = 2\n'
        '[[change]]\nat_s = 3\naccess = "wifi"\ntrace = "5g-walk"\n'
        '[[change]]\nat_s = 4\naccess = "wifi"\nrate_mbit = 10\n'
    )
    fields = [dict(s.action.fields) for s in scenario.steps if isinstance(s.action, LinkChange)]
    assert fields[0]["loss_pct"] == 0.0
    assert fields[1]["ge_p_pct"] == 0.0
    assert fields[2]["rate_mbit"] == 0.0
    assert fields[3]["trace"] == ""
    # so each applies to a profile that had the other
    wifi = {"up": profile("wifi"), "down": profile("wifi")}
    for step in scenario.steps:
        assert isinstance(step.action, LinkChange)
        wifi = apply_change(wifi, step.action)
    assert wifi["up"].rate_mbit == 10.0 and wifi["down"].loss_pct == 2.0


def test_a_ramp_is_expanded_at_its_granularity_linear_and_geometric() -> None:
    linear = parse(
        "duration_s = 5\nramp_step_s = 0.5\n"
        '[[ramp]]\naccess = "wifi"\nfrom_s = 1\nto_s = 3\nrate_mbit = [50, 10]\n'
        "queue_packets = [100, 20]\n"
    )
    times = [s.at_s for s in linear.steps]
    assert times == [1.0, 1.5, 2.0, 2.5, 3.0]
    rates = [dict(s.action.fields)["rate_mbit"] for s in linear.steps]  # type: ignore[union-attr]
    assert rates == [50.0, 40.0, 30.0, 20.0, 10.0]
    queues = [dict(s.action.fields)["queue_packets"] for s in linear.steps]  # type: ignore[union-attr]
    assert queues == [100, 80, 60, 40, 20] and all(isinstance(q, int) for q in queues)
    geometric = parse(
        "duration_s = 5\n"
        '[[ramp]]\naccess = "5g"\nfrom_s = 0\nto_s = 2\nstep_s = 1\nshape = "geometric"\n'
        "rate_mbit = [100, 1]\n"
    )
    rates = [dict(s.action.fields)["rate_mbit"] for s in geometric.steps]  # type: ignore[union-attr]
    assert rates == [100.0, 10.0, 1.0]
    # a span that is not a whole number of steps ends exactly at to_s
    uneven = parse(
        'duration_s = 5\n[[ramp]]\naccess = "wifi"\nfrom_s = 0\nto_s = 1\nstep_s = 0.4\n'
        "delay_ms = [0, 10]\n"
    )
    assert [s.at_s for s in uneven.steps] == [0.0, 0.4, 0.8, 1.0]


def test_outages_repeat_until_the_end_from_the_seed() -> None:
    text = (
        "duration_s = 10\nseed = 3\n"
        '[[outages]]\naccess = "5g"\nevery_s = 3\nlength_ms = 80\nfirst_at_s = 1\n'
    )
    steps = parse(text).steps
    assert [(s.at_s, s.action) for s in steps] == [
        (1.0, BlackholeChange("5g", True)),
        (1.08, BlackholeChange("5g", False)),
        (4.0, BlackholeChange("5g", True)),
        (4.08, BlackholeChange("5g", False)),
        (7.0, BlackholeChange("5g", True)),
        (7.08, BlackholeChange("5g", False)),
    ]
    carrier = parse(text.replace("length_ms = 80", 'length_ms = 80\nkind = "carrier"\nuntil_s = 5'))
    assert [s.action for s in carrier.steps[:2]] == [
        CarrierChange("5g", False),
        CarrierChange("5g", True),
    ]
    assert len(carrier.steps) == 4  # the third would start after until_s
    ranged = text.replace("every_s = 3", "every_s = [2, 4]").replace("80", "[50, 100]")
    assert parse(ranged).steps == parse(ranged).steps  # the same seed, the same draws
    other = parse(ranged.replace("seed = 3", "seed = 4")).steps
    assert [s.at_s for s in other] != [s.at_s for s in parse(ranged).steps]


def test_steps_at_the_same_time_apply_changes_ramps_outages_in_that_order() -> None:
    scenario = parse(
        "duration_s = 5\n"
        '[[outages]]\naccess = "wifi"\nevery_s = 2\nlength_ms = 100\nfirst_at_s = 1\n'
        '[[ramp]]\naccess = "wifi"\nfrom_s = 1\nto_s = 2\nstep_s = 1\nloss_pct = [1, 2]\n'
        '[[change]]\nat_s = 1\naccess = "wifi"\ncarrier = "up"\n'
    )
    assert [s.entry for s in scenario.steps if s.at_s == 1.0] == [
        "[[change]] 1",
        "[[ramp]] 1",
        "[[outages]] 1",
    ]


# -- every refusal: one sentence naming the file and the entry ----------------------------------
BASE = "duration_s = 10\n"
CHANGE = '[[change]]\nat_s = 1\naccess = "wifi"\n'
RAMP = '[[ramp]]\naccess = "wifi"\nfrom_s = 1\nto_s = 3\n'
OUTAGES = '[[outages]]\naccess = "5g"\n'
LONG_RAMP = RAMP.replace("to_s = 3", "to_s = 61") + "loss_pct = [0, 1]\n"
LONG_RAMPS = "duration_s = 100\nramp_step_s = 0.01\n" + LONG_RAMP + LONG_RAMP.replace("wifi", "5g")
VERY_LONG_RAMP = (
    "duration_s = 1000\nramp_step_s = 0.01\n"
    + RAMP.replace("to_s = 3", "to_s = 999")
    + "loss_pct = [0, 1]\n"
)
OVERLAPPING_RAMPS = (
    BASE
    + RAMP
    + "loss_pct = [0, 1]\n"
    + RAMP.replace("1\nto_s = 3", "2\nto_s = 4")
    + "loss_pct = [1, 2]\n"
)
OUTAGE_TRAIN = OUTAGES + "every_s = 2\nlength_ms = 500\n"
OVERLAPPING_OUTAGES = BASE + OUTAGE_TRAIN + OUTAGE_TRAIN + "first_at_s = 2.2\n"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("duration_s = ", "not valid TOML", "fix its syntax"),
        (
            "duration_s = 10\nlength = 3\n" + CHANGE + "loss_pct = 1\n",
            "the top level",
            "unknown key 'length'",
        ),
        (CHANGE + "loss_pct = 1\n", "the top level", "duration_s is missing"),
        ("duration_s = 0\n" + CHANGE, "the top level", "must be > 0"),
        ('duration_s = "ten"\n', "the top level", "must be a number"),
        ("duration_s = 10\nseed = 1.5\n", "the top level", "seed must be an integer"),
        ("duration_s = 10\nname = 3\n", "the top level", "name must be a string"),
        (BASE, "the top level", "no [[change]], [[ramp]] or [[outages]]"),
        (
            BASE + '[change]\nat_s = 1\naccess = "wifi"\n',
            "[change]",
            "write each entry as [[change]]",
        ),
        (BASE + CHANGE + "rate = 5\n", "[[change]] 1", "unknown key 'rate'"),
        (
            BASE + '[[change]]\nat_s = 1\naccess = "wlan"\nloss_pct = 1\n',
            "[[change]] 1",
            "'wlan', unknown",
        ),
        (BASE + "[[change]]\nat_s = 1\nloss_pct = 1\n", "[[change]] 1", "access is missing"),
        (BASE + '[[change]]\naccess = "wifi"\nloss_pct = 1\n', "[[change]] 1", "at_s is missing"),
        (
            BASE + '[[change]]\nat_s = -1\naccess = "wifi"\nloss_pct = 1\n',
            "[[change]] 1",
            "must be >= 0",
        ),
        (
            BASE + CHANGE + "loss_pct = 1\n" + CHANGE.replace("1", "0.5") + "loss_pct = 2\n",
            "[[change]] 2",
            "list changes in time order",
        ),
        (
            BASE + CHANGE.replace("at_s = 1", "at_s = 10") + "loss_pct = 1\n",
            "[[change]] 1",
            "not before duration_s",
        ),
        (
            BASE + CHANGE.replace("at_s = 1", "at_s = 11") + "loss_pct = 1\n",
            "[[change]] 1",
            "after duration_s",
        ),
        (BASE + CHANGE, "[[change]] 1", "it changes nothing"),
        (BASE + CHANGE + 'rate_mbit = "fast"\n', "[[change]] 1", "rate_mbit must be a number"),
        (BASE + CHANGE + "rate_mbit = true\n", "[[change]] 1", "rate_mbit must be a number"),
        (BASE + CHANGE + "delay_ms = -5\n", "[[change]] 1", "must be >= 0"),
        (BASE + CHANGE + "loss_pct = 150\n", "[[change]] 1", "give 0 to 100"),
        (BASE + CHANGE + "queue_packets = 2.5\n", "[[change]] 1", "whole number"),
        (BASE + CHANGE + "reorder = 1\n", "[[change]] 1", "reorder must be true or false"),
        (
            BASE + CHANGE + 'direction = "sideways"\nloss_pct = 1\n',
            "[[change]] 1",
            "direction must be",
        ),
        (BASE + CHANGE + 'carrier = "off"\n', "[[change]] 1", 'carrier must be "down" or "up"'),
        (BASE + CHANGE + 'blackhole = "yes"\n', "[[change]] 1", "blackhole must be true or false"),
        (
            BASE + RAMP.replace("to_s = 3", "to_s = 1") + "loss_pct = [0, 1]\n",
            "[[ramp]] 1",
            "is not after from_s",
        ),
        (
            BASE + RAMP.replace("to_s = 3", "to_s = 10") + "loss_pct = [0, 1]\n",
            "[[ramp]] 1",
            "not before duration_s",
        ),
        (BASE + RAMP + "loss_pct = 1\n", "[[ramp]] 1", "must be a pair"),
        (BASE + RAMP + "loss_pct = [1, 2, 3]\n", "[[ramp]] 1", "must be a pair"),
        (BASE + RAMP + "reorder = [true, false]\n", "[[ramp]] 1", "unknown key 'reorder'"),
        (BASE + RAMP + 'shape = "cubic"\nloss_pct = [0, 1]\n', "[[ramp]] 1", "shape must be"),
        (
            BASE + RAMP + 'shape = "geometric"\nloss_pct = [0, 1]\n',
            "[[ramp]] 1",
            "needs loss_pct > 0",
        ),
        (BASE + RAMP, "[[ramp]] 1", "it ramps nothing"),
        (BASE + RAMP + "step_s = 0.001\nloss_pct = [0, 1]\n", "[[ramp]] 1", "make it coarser"),
        (LONG_RAMPS, "the top level", "use a coarser"),
        (VERY_LONG_RAMP, "[[ramp]] 1", "use a larger step_s"),
        (OVERLAPPING_RAMPS, "[[ramp]] 2", "make them follow each other"),
        (BASE + OUTAGES + "every_s = 1\n", "[[outages]] 1", "length_ms is missing"),
        (
            BASE + OUTAGES + "every_s = 1\nlength_ms = 1000\n",
            "[[outages]] 1",
            "shorter than every_s",
        ),
        (
            BASE + OUTAGES + "every_s = [3, 2]\nlength_ms = 10\n",
            "[[outages]] 1",
            "is not [low, high]",
        ),
        (BASE + OUTAGES + "every_s = 0\nlength_ms = 10\n", "[[outages]] 1", "must be > 0"),
        (
            BASE + OUTAGES + 'every_s = 1\nlength_ms = 10\nkind = "flicker"\n',
            "[[outages]] 1",
            "kind must be",
        ),
        (
            BASE + OUTAGES + "every_s = 1\nlength_ms = 10\nfirst_at_s = 9.995\n",
            "[[outages]] 1",
            "no outage fits",
        ),
        (
            BASE + OUTAGES + "every_s = 1\nlength_ms = 10\nuntil_s = 11\n",
            "[[outages]] 1",
            "after duration_s",
        ),
        (OVERLAPPING_OUTAGES, "[[outages]] 2", "overlaps one of [[outages]] 1"),
    ],
)
def test_every_mistake_is_one_sentence_naming_file_and_entry(
    text: str, where: str, message: str
) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse(text)
    said = str(caught.value)
    assert isinstance(caught.value, UsageError)  # exit code 2 on the command line
    assert said.startswith(f"scenario {SOURCE}")
    assert where in said and message in said, said
    assert "\n" not in said


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"neither a file nor a shipped scenario.*5g-handovers"):
        load_scenario("no-such-scenario")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ScenarioError, match=f"cannot read scenario {binary}"):
        load_scenario(str(binary))
    mine = tmp_path / "mine.toml"
    mine.write_text(BASE + CHANGE + "loss_pct = 1\n")
    assert load_scenario(str(mine)).name == "mine"
    # a recorded text needs no file
    assert load_scenario("gone.toml", text=mine.read_text()).steps == load_scenario(str(mine)).steps


def test_check_accesses_names_the_entry_and_the_reason() -> None:
    scenario = load_scenario("train-tunnel")
    with pytest.raises(ScenarioError, match=r"\[\[ramp\]\] 1 changes 5g, but 5G is down: give a"):
        scenario.check_accesses(("wifi",), "5G is down")
    scenario.check_accesses(("wifi", "5g"), "unused")


# -- the timeline on a fake clock ---------------------------------------------------------------
def test_the_timeline_hands_out_each_step_once_when_due() -> None:
    scenario = parse(
        BASE + CHANGE + "loss_pct = 1\n" + CHANGE.replace("at_s = 1", "at_s = 2") + "loss_pct = 2\n"
        + CHANGE.replace("at_s = 1", "at_s = 2") + "blackhole = true\n"
    )  # fmt: skip
    timeline = Timeline(scenario)
    assert timeline.next_deadline() == 1.0
    assert timeline.due(0.5) == []
    assert [s.at_s for s in timeline.due(1.0)] == [1.0]
    assert timeline.due(1.5) == []
    assert timeline.next_deadline() == 2.0
    assert len(timeline.due(7.0)) == 2  # late: both of 2 s at once, in order
    assert timeline.next_deadline() == 10.0  # the end: restore
    assert not timeline.ended
    assert timeline.due(9.99) == [] and not timeline.ended
    assert timeline.due(10.0) == [] and timeline.ended
    assert timeline.next_deadline() is None


def test_a_timeline_asked_only_after_the_end_gives_everything_then_ends() -> None:
    timeline = Timeline(load_scenario("5g-handovers"))
    assert len(timeline.due(100.0)) == len(load_scenario("5g-handovers").steps)
    assert timeline.ended and timeline.next_deadline() is None


# -- the player on a fake lab ---------------------------------------------------------------------
class FakeShaper(LinkShaper):
    backend = "wire"

    def __init__(self, log: list[str], name: str, initial: LinkProfile) -> None:
        super().__init__(None, "a", "b")  # type: ignore[arg-type]
        self.log = log
        self.name = name
        self.profiles = {"ab": initial, "ba": initial}
        self.fail_on: str | None = None
        self.failure: type[Exception] = RuntimeError

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def seed(self, value: int) -> None: ...

    def _apply(self, direction: str) -> None:
        line = (
            f"{self.name} {direction} {self.profiles[direction].rate_mbit:g} bh={self.blackholed}"
        )
        if self.fail_on and self.fail_on in line:
            raise self.failure(f"refused {line}")
        self.log.append(line)


class FakeLab:
    def __init__(self, backend: str = "wire") -> None:
        self.backend = backend
        self.log: list[str] = []
        self.shapers = {
            "wifi": FakeShaper(self.log, "wifi", profile("wifi")),
            "5g": FakeShaper(self.log, "5g", profile("5g")),
        }
        self.down: set[str] = set()

    def shaper(self, access: str, client: str | None = None) -> LinkShaper:
        return self.shapers[access]

    def access_down(self, access: str, client: str | None = None) -> None:
        self.down.add(access)
        self.log.append(f"{access} carrier down")

    def access_up(self, access: str, client: str | None = None) -> None:
        self.down.discard(access)
        self.log.append(f"{access} carrier up")

    def access_is_down(self, access: str, client: str | None = None) -> bool:
        return access in self.down


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


WALK = (
    "duration_s = 4\n"
    '[[ramp]]\naccess = "wifi"\nfrom_s = 0\nto_s = 1\nstep_s = 1\nrate_mbit = [40, 20]\n'
    '[[change]]\nat_s = 2\naccess = "wifi"\ncarrier = "down"\n'
    '[[change]]\nat_s = 3\naccess = "5g"\nblackhole = true\nrate_mbit = 7\n'
)


def test_play_applies_each_step_on_time_then_restores_everything() -> None:
    lab, clock = FakeLab(), FakeClock()
    reactions: list[tuple[str, bool]] = []
    report = play(
        lab,
        parse(WALK),
        origin=100.5,
        on_carrier=lambda access, up: reactions.append((access, up)),
        clock=clock,
        sleep=clock.sleep,
    )
    assert isinstance(report, PlayReport)
    assert [(planned, done) for planned, done, _ in report.applied] == [
        (0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (3.0, 3.0)
    ]  # fmt: skip
    assert report.summary() == {"steps_applied": 5, "max_late_ms": 0.0}
    assert clock.now == 104.5  # it returned at the scenario's end
    assert lab.log == [
        "wifi ab 40 bh=False", "wifi ba 40 bh=False",
        "wifi ab 20 bh=False", "wifi ba 20 bh=False",
        "wifi carrier down",
        "5g ab 7 bh=False", "5g ba 7 bh=False",
        "5g ab 7 bh=True", "5g ba 7 bh=True",
        # the end: each access as it was before
        "wifi ab 50 bh=False", "wifi ba 50 bh=False", "wifi carrier up",
        "5g ab 100 bh=True", "5g ba 100 bh=True", "5g ab 100 bh=False", "5g ba 100 bh=False",
    ]  # fmt: skip
    assert reactions == [("wifi", False), ("wifi", True)]
    assert lab.shapers["wifi"].profiles["ab"] == profile("wifi")
    assert lab.shapers["5g"].profiles["ba"] == profile("5g")
    assert not lab.down and not lab.shapers["5g"].blackholed


def test_play_restores_the_links_when_a_step_fails_midway() -> None:
    lab, clock = FakeLab(), FakeClock()
    lab.shapers["5g"].fail_on = "5g ab 7"
    with pytest.raises(RuntimeError, match="refused 5g ab 7"):
        play(lab, parse(WALK), origin=100.0, clock=clock, sleep=clock.sleep)
    assert clock.now == 103.0  # it stopped at the failing step
    assert not lab.down
    assert lab.shapers["wifi"].profiles["ab"] == profile("wifi")
    assert lab.shapers["5g"].profiles["ab"] == profile("5g")
    # (5G's "ba" direction was never changed: the failing step stopped at "ab")
    assert lab.log[-4:] == [
        "wifi ab 50 bh=False", "wifi ba 50 bh=False", "wifi carrier up", "5g ab 100 bh=False"
    ]  # fmt: skip


def test_a_setting_the_shaper_did_not_answer_is_sent_again_at_the_restore() -> None:
    """A step's setting sent to qtwire that went unanswered (3 s timeout) may be in force or
    not; the record kept the old one, equal to what the restore wanted, so the restore sent
    nothing and the step's rate could stay after the run said it restored the link."""
    lab, clock = FakeLab(), FakeClock()
    lab.shapers["5g"].fail_on = "5g ab 7"
    lab.shapers["5g"].failure = ShaperUnanswered
    text = 'duration_s = 3\n[[change]]\nat_s = 1\naccess = "5g"\nrate_mbit = 7\n'
    with pytest.raises(ShaperUnanswered):
        play(lab, parse(text), origin=100.0, clock=clock, sleep=clock.sleep)
    assert lab.shapers["5g"].profiles["ab"] == profile("5g")
    assert lab.log[-1].startswith("5g ab 100 ")  # sent again
    assert lab.shapers["5g"].unsure == set()


def test_play_restores_the_links_when_interrupted() -> None:
    lab, clock = FakeLab(), FakeClock()

    def interrupted(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 102.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        play(lab, parse(WALK), origin=100.0, clock=clock, sleep=interrupted)
    assert not lab.down and lab.shapers["wifi"].profiles["ba"] == profile("wifi")


def test_play_keeps_what_was_down_before_down_after() -> None:
    lab, clock = FakeLab(), FakeClock()
    lab.down.add("wifi")
    text = 'duration_s = 2\n[[change]]\nat_s = 0.5\naccess = "wifi"\ncarrier = "up"\n'
    play(lab, parse(text), origin=100.0, clock=clock, sleep=clock.sleep)
    assert lab.log == ["wifi carrier up", "wifi carrier down"]


def test_a_late_step_is_applied_at_once_and_reported_late() -> None:
    lab, clock = FakeLab(), FakeClock()
    report = play(lab, parse(WALK), origin=98.5, clock=clock, sleep=clock.sleep)
    assert report.applied[0][:2] == (0.0, 1.5) and report.max_late_ms == 1500.0
    assert [planned for planned, _, _ in report.applied] == [0.0, 1.0, 2.0, 3.0, 3.0]


def test_a_step_the_live_link_refuses_is_caught_before_anything_changes() -> None:
    lab = FakeLab()
    # the wifi profile has 2 ms of jitter: a delay of 1 ms would be less than it
    text = 'duration_s = 3\n[[change]]\nat_s = 1\naccess = "wifi"\ndelay_ms = 1\n'
    with pytest.raises(
        ScenarioError, match=r"\[\[change\]\] 1 at 1 s cannot be applied to wifi.*jitter_ms"
    ):
        play(lab, parse(text), origin=0.0)
    assert lab.log == []
    trace = 'duration_s = 3\n[[change]]\nat_s = 1\naccess = "5g"\ntrace = "5g-walk"\n'
    check(FakeLab("wire"), parse(trace))
    with pytest.raises(ScenarioError, match="netem has no trace-driven rate"):
        check(FakeLab("netem"), parse(trace))
    # a trace name mistyped failed only when its step came, mid-traffic, at every point
    typo = trace.replace("5g-walk", "5g-wlak")
    with pytest.raises(ScenarioError, match=r"at 1 s cannot be applied to 5g.*5g-wlak"):
        check(FakeLab("wire"), parse(typo))


def test_qtlab_scenarios_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name in ("walk-out-of-wifi", "5g-handovers", "train-tunnel", "pmtu-black-hole"):
        assert name in out
