"""A short scenario played against a live reference lab (testbed/scenario_player.py): each
change reaches the live link at (never before) its time — the WiFi shaper's rate, the client's
WiFi carrier, the 5G blackhole, read from the shaper and the client's kernel while the
scenario plays — and when it ends every link is back as before (state and ping). About 15 s.

The scenario plays in a thread while this test watches: the player works through the shaper
nodes' shells and qtwire's control socket, the watcher through separate processes (`popen`)
and new control connections, so the two never share a Mininet shell.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from testbed.lab import Lab
from testbed.profiles import LinkProfile
from testbed.scenario import parse_scenario
from testbed.scenario_player import PlayReport, play
from testbed.shaping import LinkShaper, WireShaper

pytestmark = [pytest.mark.root, pytest.mark.mininet, pytest.mark.timeout(90)]

WIFI = LinkProfile(delay_ms=2.0, rate_mbit=50.0)
FIVEG = LinkProfile(delay_ms=4.0, rate_mbit=100.0)
SCENARIO = """
duration_s = 2.5
[[change]]
at_s = 0.5
access = "wifi"
rate_mbit = 7
[[change]]
at_s = 1.0
access = "wifi"
carrier = "down"
[[change]]
at_s = 1.0
access = "5g"
blackhole = true
"""
LEAD_S = 1.0  # the scenario's time 0, after the watcher has seen the links as they start


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    the_lab = Lab("reference", backend="auto", profiles={"wifi": WIFI, "5g": FIVEG})
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.stop()


def carrier(lab: Lab, access: str) -> str:
    """The client's view of its access interface's carrier ("1" or "0"), read by a process of
    its own (not the node's shell, which the player may be using)."""
    intf = lab.access(access).client_intf
    proc = lab.node("c1").popen(["cat", f"/sys/class/net/{intf}/carrier"])
    out, _ = proc.communicate(timeout=10)
    return out.decode().strip() or "0"  # reading carrier of a down interface fails: no carrier


def live(shaper: LinkShaper, key: str) -> set[str]:
    """A setting as the running shaper has it, both directions (qtwire's own report; with the
    netem backend, the shaper's record of what tc accepted)."""
    if isinstance(shaper, WireShaper):
        return {shaper.counters()[d][key] for d in ("ab", "ba")}
    if key == "down":
        return {"1" if shaper.blackholed else "0"}
    return {str(round(shaper.profiles[d].rate_mbit * 1e6)) for d in ("ab", "ba")}


def first_seen(
    origin: float, checks: dict[str, Callable[[], bool]], timeout_s: float
) -> dict[str, float]:
    """When each check first came true, in s from `origin`; polled, bounded by `timeout_s`."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < len(checks) and time.monotonic() < deadline:
        for name, check in checks.items():
            if name not in seen and check():
                seen[name] = time.monotonic() - origin
        time.sleep(0.02)
    return seen


def test_a_scenario_changes_the_live_links_on_time_and_restores_them(lab: Lab) -> None:
    wifi, fiveg = lab.shaper("wifi"), lab.shaper("5g")
    scenario = parse_scenario(SCENARIO, "test scenario")
    assert carrier(lab, "wifi") == "1" and live(wifi, "rate_bps") == {"50000000"}
    assert live(fiveg, "down") == {"0"}

    origin = time.monotonic() + LEAD_S
    reports: list[PlayReport] = []
    failures: list[BaseException] = []

    def player() -> None:
        try:
            reports.append(play(lab, scenario, origin))
        except BaseException as exc:  # the test below fails with it
            failures.append(exc)

    thread = threading.Thread(target=player, name="scenario-player")
    thread.start()
    try:
        seen = first_seen(
            origin,
            {
                "wifi rate 7": lambda: live(wifi, "rate_bps") == {"7000000"},
                "wifi carrier lost": lambda: carrier(lab, "wifi") == "0",
                "5g blackhole": lambda: live(fiveg, "down") == {"1"},
            },
            timeout_s=LEAD_S + scenario.duration_s + 10,
        )
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive(), "the player did not return"
    assert not failures, failures
    assert set(seen) == {"wifi rate 7", "wifi carrier lost", "5g blackhole"}, seen
    # never before its time (how late is the machine's business, and reported)
    assert seen["wifi rate 7"] >= 0.5
    assert seen["wifi carrier lost"] >= 1.0
    assert seen["5g blackhole"] >= 1.0
    assert reports[0].summary()["steps_applied"] == 3

    # the end of the scenario put everything back
    assert live(wifi, "rate_bps") == {"50000000"}
    assert live(fiveg, "down") == {"0"}
    assert wifi.profiles["ab"] == WIFI and fiveg.profiles["ba"] == FIVEG
    assert not lab.access_is_down("wifi")
    deadline = time.monotonic() + 10
    while carrier(lab, "wifi") != "1" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert carrier(lab, "wifi") == "1"
    client = lab.node("c1")
    for gateway in ("10.1.1.1", "10.2.1.1"):  # both accesses carry traffic again
        deadline = time.monotonic() + 10
        while "bytes from" not in client.cmd(f"ping -n -c 1 -W 1 {gateway}"):
            assert time.monotonic() < deadline, f"c1 cannot reach {gateway} after the scenario"
