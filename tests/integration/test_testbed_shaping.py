"""Each impairment measured on a real two-host link. The bounds say that the impairment is
there, in the right direction, and bounded (e.g. a delay on one direction only, a rate that is
never exceeded): loose, since 2 shared cores add noise; `make fidelity` records how close the
link comes to what was asked."""

from __future__ import annotations

import os
import re
import select
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from experiments.shaper_meter import ShaperMeter
from testbed.fidelity import (
    iperf3_goodput_mbit,
    loss_bursts,
    ping_lost_sequence,
    require_fidelity,
    verify_link,
)
from testbed.hosts import wait_listening
from testbed.lab import Lab
from testbed.profiles import LinkProfile
from testbed.shaping import WireShaper, probe_netem, resolve_backend
from testbed.topologies import PAIR_H1, PAIR_H2
from tests.integration.netns import wait_until

pytestmark = [pytest.mark.root, pytest.mark.mininet]
PEER = "10.0.0.2"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    the_lab = Lab("pair", backend="auto")
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.stop()


@pytest.fixture()
def shaper(lab: Lab) -> Iterator[WireShaper]:
    s = lab.shapers["wlink"]
    assert isinstance(s, WireShaper)
    s.set_profile("both", LinkProfile())
    yield s
    s.blackhole(False)
    lab.access_up("link")  # a test that failed with the carrier down leaves it up again
    s.set_profile("both", LinkProfile())


def rtts(node: Any, count: int = 10, interval: float = 0.05) -> list[float]:
    out = str(node.cmd(f"ping -n -c {count} -i {interval} -W 2 {PEER}"))
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]


def test_netem_probe_gives_a_definite_answer() -> None:
    probe = probe_netem()
    assert isinstance(probe.available, bool) and probe.detail
    # This project's machines have no sch_netem; auto must then pick the wire.
    if not probe.available:
        assert resolve_backend("auto") == "wire"
    assert resolve_backend("wire") == "wire"


def test_delay_per_direction(lab: Lab, shaper: WireShaper) -> None:
    h1 = lab.node("h1")
    base = statistics.median(rtts(h1))
    shaper.set("ab", delay_ms=30)
    one_way = statistics.median(rtts(h1)) - base
    shaper.set("ba", delay_ms=10)
    both = statistics.median(rtts(h1)) - base
    # at least what was asked (less a little noise on the base RTT), and on one direction only:
    # 30 ms on both would be 60
    assert 28 <= one_way < 45
    assert 38 <= both < 50


def test_a_measurement_reads_the_shapers_own_lateness_and_faults(
    lab: Lab, shaper: WireShaper
) -> None:
    """experiments/shaper_meter.py around a flow: the pings' frames left the real qtwire (its
    departures counted, how late each left by its own clock), and a clean link lost none on
    its own. Lateness is a measurement of this machine: only its presence is checked."""
    meter = ShaperMeter({"shaper_wlink": shaper})
    meter.start()
    assert len(rtts(lab.node("h1"), count=5, interval=0.02)) == 5
    window = shaper.window()
    assert window["ab"]["departures"] >= 5 and window["ba"]["departures"] >= 5
    assert window["ab"]["late_max_us"] >= 0
    meter.stop()
    columns = meter.columns()
    assert (columns["shaper_faults"], columns["shaper_fault_counters"]) == (0, "")
    assert columns["shaper_late_max_ms"] is not None and columns["shaper_late_max_ms"] >= 0


def test_jitter_with_and_without_reordering(lab: Lab, shaper: WireShaper) -> None:
    h1 = lab.node("h1")

    def reply_order(count: int = 150) -> list[int]:
        out = str(h1.cmd(f"ping -n -c {count} -i 0.002 -W 2 {PEER}"))
        return [int(x) for x in re.findall(r"icmp_seq=(\d+)", out)]

    shaper.set("ab", delay_ms=10, jitter_ms=8, reorder=False)
    samples = rtts(h1, count=30, interval=0.02)
    assert max(samples) - min(samples) > 4  # jitter is there
    in_order = reply_order()
    assert in_order == sorted(in_order)
    shaper.set("ab", reorder=True)
    shuffled = reply_order()
    assert shuffled != sorted(shuffled)


def test_random_loss(lab: Lab, shaper: WireShaper) -> None:
    shaper.set("ab", loss_pct=20)
    out = str(lab.node("h1").cmd(f"ping -n -q -c 1000 -i 0.001 -W 2 {PEER}"))
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m
    lost = 100 * (1 - int(m.group(2)) / int(m.group(1)))
    assert 14 <= lost <= 26
    assert int(shaper.counters()["ab"]["drop_loss"]) > 100


def lost_after_seed(shaper: WireShaper, node: Any, seed: int, count: int = 300) -> list[int]:
    """The echo requests lost of a ping burst after `seed`: a burst in which a frame other
    than the pings' crossed the lossy direction (it took a loss draw, shifting the rest; one
    did in a first version of the test) is measured again."""
    for _ in range(5):
        before = int(shaper.counters()["ab"]["rx"])
        shaper.seed(seed)
        lost = ping_lost_sequence(node, PEER, count, 0.002)
        if int(shaper.counters()["ab"]["rx"]) - before == count:
            return lost
    pytest.fail(f"every burst after seed {seed} met other frames on the link")


def test_a_seed_gives_the_same_losses_again(lab: Lab, shaper: WireShaper) -> None:
    """Seeded alike, a ping burst through 30 % loss loses the same echo requests; seeded
    otherwise, others (experiments/runner.py seeds every link with the point's seed before it
    runs; before, qtwire drew from a stream started from the clock). The neighbours are pinned
    so that no ARP frame takes a loss draw between the bursts."""
    h1, h2 = lab.node("h1"), lab.node("h2")

    def mac(node: Any) -> str:
        return str(node.cmd(f"cat /sys/class/net/{node.intf()}/address")).strip()

    pinned = [(h1, PAIR_H2[0], mac(h2)), (h2, PAIR_H1[0], mac(h1))]
    try:
        for node, address, lladdr in pinned:
            node.cmd(f"ip neigh replace {address} lladdr {lladdr} nud permanent dev {node.intf()}")
        shaper.set("ab", loss_pct=30)
        bursts = [lost_after_seed(shaper, h1, seed) for seed in (42, 42, 43)]
    finally:
        for node, address, _ in pinned:
            node.cmd(f"ip neigh del {address} dev {node.intf()}")
    assert 50 < len(bursts[0]) < 130, bursts[0]  # 30 % of 300
    assert bursts[0] == bursts[1] and bursts[0] != bursts[2]
    assert shaper.counters()["ab"]["seed"] == "43" and shaper.seeded_with == 43
    lab.seed_links(7)
    first = shaper.seeded_with
    lab.seed_links(7)
    assert shaper.seeded_with == first and shaper.counters()["ba"]["seed"] == str(first)
    lab.seed_links(8)
    assert shaper.seeded_with != first


def test_gilbert_elliott_loss_comes_in_bursts(lab: Lab, shaper: WireShaper) -> None:
    """Bursty loss (ge_p_pct 2 %, ge_r_pct 25 %: bad periods of 4 packets on average, all lost)
    against random loss: the lost echo requests come in runs, not alone (random loss of this
    rate, ~7 %, gives runs of about 1.1)."""
    shaper.set_profile("ab", LinkProfile(ge_p_pct=2, ge_r_pct=25))
    try:
        lost = ping_lost_sequence(lab.node("h1"), PEER, 2000, 0.001)
    finally:
        shaper.set_profile("ab", LinkProfile())
    bursts = loss_bursts(lost)
    assert len(lost) > 20 and len(bursts) > 5, lost
    assert sum(bursts) / len(bursts) > 2, bursts
    assert shaper.counters()["ab"]["ge_p_pct"] == "0"  # back to no loss


def read_until(proc: Any, marker: bytes, timeout: float) -> bytes:
    """What `proc` wrote on its stdout up to the line holding `marker` (all of it if it ended
    first); AssertionError if neither happens within `timeout` seconds."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} from iperf3 within {timeout} s: {out!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
        if ready and not chunk:
            break  # it ended
        out += chunk
    return out


def test_rate_limit_and_change_while_traffic_runs(lab: Lab, shaper: WireShaper) -> None:
    h1, h2 = lab.node("h1"), lab.node("h2")
    shaper.set("ab", rate_mbit=20)
    got = iperf3_goodput_mbit(lab, h1, h2, PEER, seconds=1)
    assert 0.5 * 20 < got <= 20  # more than half the rate, never more than it
    # Change the rate in the middle of a running transfer: the per-second reports follow it.
    srv = lab.procs.start_iperf3_server(h2, port=5301, idle_timeout_s=15)
    try:
        wait_listening(h2, 5301, srv)
        argv = ["iperf3", "-c", PEER, "-p", "5301", "-t", "4", "-i", "1", "-f", "m"]
        client = h1.popen([*argv, "--forceflush"])
        # the change once iperf3 reported its second second (its clock starts after its set-up,
        # which a sleep from the start would count on a loaded machine)
        head = read_until(client, b"1.00-2.00", timeout=15)
        shaper.set("ab", rate_mbit=5)
        out, _ = client.communicate(timeout=15)
        out = head + out
    finally:
        lab.procs.stop(srv)
    per_second = [float(x) for x in re.findall(rb"sec\s+[\d.]+ \w?Bytes\s+([\d.]+) Mbits/sec", out)]
    assert len(per_second) >= 4
    # above half of 20 Mbit/s before, within 5 Mbit/s (and its queue's slack) after
    assert per_second[0] > 0.5 * 20 and per_second[3] < 7


def test_a_trace_gives_the_rate(lab: Lab, shaper: WireShaper) -> None:
    """A Mahimahi trace (testbed/traces.py) instead of rate_mbit: the shipped constant 20 Mbit/s
    trace holds TCP to it as the configured rate does (20 * 1448 / 1500 at best), it keeps its
    timeline when another setting changes, and `trace=""` turns it off."""
    h1, h2 = lab.node("h1"), lab.node("h2")
    shaper.set_profile("ab", LinkProfile(trace="const-20"))
    try:
        got = iperf3_goodput_mbit(lab, h1, h2, PEER, seconds=1)
        assert 0.5 * 20 < got <= 20, got
        assert shaper.counters()["ab"]["trace"] == "const-20.trace"
        shaper.set("ab", delay_ms=1)  # the same trace again: kept
        assert shaper.counters()["ab"]["trace"] == "const-20.trace"
    finally:
        shaper.set_profile("ab", LinkProfile())
    assert shaper.counters()["ab"]["trace"] == "-"


def test_bounded_queue_drops_and_bounds_delay(lab: Lab, shaper: WireShaper) -> None:
    h1, h2 = lab.node("h1"), lab.node("h2")
    shaper.set("ab", rate_mbit=5, queue_packets=20)
    srv = lab.procs.start(h2, "iperf3-udp", ["iperf3", "-s", "-p", "5302", "--idle-timeout", "10"])
    try:
        wait_listening(h2, 5302, srv)
        # 7 Mbit/s into 5: the queue stays full (hundreds of drops in 3 s) yet a probe finds a
        # free slot often enough. At 4x overload iperf3's bursts kept the queue full so
        # steadily that as few as 2 of 40 probes got in (a flaky test, twice in CI).
        blast = h1.popen(["iperf3", "-c", PEER, "-p", "5302", "-u", "-b", "7M", "-t", "3"])
        wait_until("the queue full (drops)", lambda: int(shaper.counters()["ab"]["drop_queue"]) > 0)
        loaded = rtts(h1, count=40, interval=0.05)
        blast.wait(15)
    finally:
        lab.procs.stop(srv)
    assert int(shaper.counters()["ab"]["drop_queue"]) > 100
    # 20 full frames at 5 Mbit/s is 48 ms of queue: the delay is bounded by it (an unbounded
    # queue would reach a second in 3 s of 2 Mbit/s excess), plus scheduling noise.
    drops = int(shaper.counters()["ab"]["drop_queue"])
    print(f"\nfull queue: {len(loaded)} of 40 probes through, RTTs {loaded}, {drops} drops")
    assert len(loaded) >= 5, f"only {len(loaded)} of 40 probes got through the full queue"
    assert 20 < statistics.median(loaded) < 100, loaded


def test_blackhole_keeps_link_up(lab: Lab, shaper: WireShaper) -> None:
    h1 = lab.node("h1")
    shaper.blackhole(True)
    assert rtts(h1, count=3, interval=0.1) == []
    assert "LOWER_UP" in str(h1.cmd("ip link show h1-eth0"))
    shaper.blackhole(False)
    # The blackhole may have eaten h1's ARP probes for the peer (an entry gone stale meanwhile):
    # wait, bounded, for a first reply before counting (a parallel `make test` once saw 0 of 3).
    for _ in range(10):
        if rtts(h1, count=1, interval=0.1):
            break
    assert len(rtts(h1, count=3, interval=0.1)) >= 2


def df_pings(node: Any, size: int, count: int = 5, peer: str = PEER) -> int:
    """Replies to `count` echo requests of `size` bytes of IP packet, never fragmented."""
    out = str(node.cmd(f"ping -n -q -M do -s {size - 28} -c {count} -i 0.02 -W 1 {peer}"))
    return int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]


def test_a_smaller_mtu_drops_longer_packets_silently_in_its_direction(
    lab: Lab, shaper: WireShaper
) -> None:
    h1 = lab.node("h1")
    shaper.set("ab", mtu_bytes=1400)
    assert df_pings(h1, 1400) == 5
    assert df_pings(h1, 1401) == 0  # the request is lost on the way out
    assert "LOWER_UP" in str(h1.cmd("ip link show h1-eth0"))
    counters = shaper.counters()
    assert int(counters["ab"]["drop_mtu"]) == 5 and int(counters["ba"]["drop_mtu"]) == 0
    # h2's requests of 1401 bytes travel ba (no limit); their replies die on ab
    assert df_pings(lab.node("h2"), 1401, peer="10.0.0.1") == 0
    assert int(shaper.counters()["ab"]["drop_mtu"]) == 10
    # no ICMP came back to say so: h1 still believes its route carries 1500
    assert "mtu" not in str(h1.cmd(f"ip route get {PEER}")).split()
    shaper.set("ab", mtu_bytes=0)
    assert df_pings(h1, 1500) == 5


def test_link_down_is_a_carrier_loss_and_up_restores(lab: Lab, shaper: WireShaper) -> None:
    h1 = lab.node("h1")
    lab.access_down("link")
    assert "NO-CARRIER" in str(h1.cmd("ip link show h1-eth0"))
    assert rtts(h1, count=2, interval=0.1) == []
    lab.access_up("link")
    wait_until("h1-eth0 LOWER_UP", lambda: "LOWER_UP" in str(h1.cmd("ip link show h1-eth0")))
    assert len(rtts(h1, count=3, interval=0.2)) >= 2
    out = str(h1.cmd("ping -6 -n -c 3 -i 0.2 -W 2 fd00::2"))
    assert len(re.findall(r"time=", out)) >= 2


def test_frames_in_flight_at_a_link_down_are_the_links_drops_not_shaper_faults(
    lab: Lab, shaper: WireShaper
) -> None:
    """Pings held in a 1 s delay line when the carrier goes: qtwire's sends into the downed
    interface count as the link's drops, and the measurement around it reports no fault of the
    shaper (every link-down point was flagged as a busy machine when they counted as faults)."""
    h1 = lab.node("h1")
    shaper.set("ab", delay_ms=1000)
    before = shaper.counters()["ab"]
    meter = ShaperMeter({"shaper_wlink": shaper})
    meter.start()
    h1.cmd(f"ping -n -c 5 -i 0.02 -W 1 {PEER} > /dev/null 2>&1 &")
    wait_until(
        "5 echo requests held in the delay line",
        lambda: int(shaper.counters()["ab"]["rx"]) - int(before["rx"]) >= 5,
    )
    lab.access_down("link")

    def drops() -> int:
        return int(shaper.counters()["ab"]["drop_down"]) - int(before["drop_down"])

    wait_until("the held frames' drops", lambda: drops() >= 5)
    meter.stop()
    assert int(shaper.counters()["ab"]["tx_err"]) == int(before["tx_err"])
    assert (meter.columns()["shaper_faults"], meter.columns()["shaper_fault_counters"]) == (0, "")


def test_verify_link_accepts_a_faithful_link(lab: Lab, shaper: WireShaper) -> None:
    shaper.set("both", delay_ms=5, rate_mbit=30)
    rows = verify_link(lab, "wlink", loss_burst=200)
    assert {r.parameter for r in rows} == {"rtt_added", "loss_round_trip", "tcp_goodput"}
    require_fidelity(rows)
    # a smaller MTU: checked at and over the limit, and TCP's rate judged with its segments
    shaper.set("up", mtu_bytes=1280)
    rows = verify_link(lab, "wlink", loss_burst=200)
    require_fidelity(rows)
    mtu = next(r for r in rows if r.parameter == "mtu_round_trip")
    assert (mtu.configured, mtu.measured) == (1280, 1280)
