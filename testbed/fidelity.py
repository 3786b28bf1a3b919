"""Is the network what was asked for? Measure a shaped link and compare with its settings.

Two uses:
* `verify_link(lab, middle)` before an experiment: RTT by ping, loss by a counted ping burst,
  each direction's rate (rate_mbit or a trace) by a short iperf3 each way, a smaller MTU
  (mtu_bytes) by pings that may not be fragmented at and one byte over it; returns rows with
  an `ok` verdict, and `require_fidelity()` refuses to go on when one is off (the way
  Mininet's reproducibility experiments checked first).
* `run_benchmark()` (`qtlab fidelity`, `make fidelity`): a two-host link swept over delay
  {5, 20, 50, 100 ms}, loss {0.1, 1, 5 %}, Gilbert-Elliott bursty loss (loss rate, mean burst
  length, share of lone losses), rate {10, 50, 100 Mbit/s}, trace-driven rate (a constant
  and a model trace, testbed/traces.py), a smaller MTU (wire backend) and queue delay under load,
  written to results/fidelity/<timestamp>/fidelity.csv.

Delay is configured on one direction and measured as median RTT minus the median RTT of the
same link unimpaired in the same run, so the machine's own latency cancels out.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testbed.hosts import Node
from testbed.lab import Lab
from testbed.paths import RESULTS_ROOT
from testbed.profiles import LINK_MTU, LinkProfile
from testbed.topologies import ShapedLink
from testbed.traces import mean_rate_mbit, read_trace, trace_path, window_rates_mbit
from tunnel.user_error import RuntimeFailure

ETH_HEADER = 14
IPV4_TCP_HEADERS = 20 + 20  # what an MSS leaves out of the packet (RFC 879)
TIMESTAMP_OPTION = 12  # Linux's segments carry it (and the MSS counts it as payload)
ICMP_ECHO_HEADERS = 20 + 8  # IPv4, ICMP: `ping -s` counts the bytes after them
FIELDS = ["parameter", "configured", "measured", "unit", "backend", "ok", "detail"]


class FidelityError(RuntimeFailure):
    """The shaped network is not what was configured."""


@dataclass
class Row:
    parameter: str
    configured: float
    measured: float
    unit: str
    backend: str
    ok: bool
    detail: str = ""


def ping_rtts(node: Node, dst: str, count: int, interval_s: float) -> list[float]:
    out = str(node.cmd(f"ping -n -c {count} -i {interval_s} -W 2 {dst}"))
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]


def ping_lost_sequence(node: Node, dst: str, count: int, interval_s: float) -> list[int]:
    """The icmp_seq numbers (1..count) of a ping burst that got no reply, in order."""
    out = str(node.cmd(f"ping -n -c {count} -i {interval_s} -W 2 {dst}"))
    answered = {int(m) for m in re.findall(r"icmp_seq=(\d+)", out)}
    return [seq for seq in range(1, count + 1) if seq not in answered]


def loss_bursts(lost: list[int]) -> list[int]:
    """Lengths of the runs of consecutive lost sequence numbers (a burst of 1 is a lone loss)."""
    bursts: list[int] = []
    previous = None
    for seq in lost:
        if previous is not None and seq == previous + 1:
            bursts[-1] += 1
        else:
            bursts.append(1)
        previous = seq
    return bursts


def ping_loss(
    node: Node, dst: str, count: int, interval_s: float, size: int | None = None
) -> tuple[int, int]:
    """(sent, received) of a counted ping burst; with `size`, echo requests of that many
    payload bytes that may not be fragmented (`-M do -s`)."""
    unfragmented = f"-M do -s {size} " if size is not None else ""
    out = str(node.cmd(f"ping -n -q {unfragmented}-c {count} -i {interval_s} -W 2 {dst}"))
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if not m:
        raise FidelityError(f"ping gave no summary: {out.strip()[-200:]}")
    return int(m.group(1)), int(m.group(2))


def tcp_goodput_fraction(mtu: int = LINK_MTU) -> float:
    """The best TCP goodput over a link's rate when its packets are `mtu` bytes long: the
    wire's rate counts whole frames, and a full TCP/IPv4 segment with timestamps carries
    mtu - 52 bytes of payload in an mtu + 14-byte frame (1448 in 1514 at 1500)."""
    return (mtu - IPV4_TCP_HEADERS - TIMESTAMP_OPTION) / (mtu + ETH_HEADER)


def trace_goodput_fraction(mtu: int = LINK_MTU) -> float:
    """The same over a trace's rate: its opportunities count IP bytes (1500 each, a packet may
    span two), so a segment of mtu - 52 payload bytes takes mtu of them (1448 of 1500)."""
    return (mtu - IPV4_TCP_HEADERS - TIMESTAMP_OPTION) / mtu


def iperf3_goodput_mbit(
    lab: Lab,
    client: Node,
    server: Node,
    dst: str,
    seconds: int = 3,
    mss: int = 0,
    reverse: bool = False,
) -> float:
    """Receiver-side TCP goodput of a short iperf3 run (first second omitted: slow start);
    `mss` > 0 sets the sender's segment size (`iperf3 -M`), for a link with a smaller MTU;
    `reverse`: the server sends to the client (`iperf3 -R`), the other direction of the link."""
    srv = lab.procs.start_iperf3_server(server, port=5299, idle_timeout_s=seconds + 10)
    options = (f" -M {mss}" if mss else "") + (" -R" if reverse else "")
    try:
        out = str(
            client.cmd(
                f"iperf3 -c {dst} -p 5299 -t {seconds} -O 1 --connect-timeout 3000 -J{options}"
            )
        )
        data = json.loads(out[out.index("{") :])
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (ValueError, KeyError) as exc:
        raise FidelityError(f"iperf3 gave no result: {exc}") from None
    finally:
        lab.procs.stop(srv)


def _median(xs: list[float]) -> float:
    if not xs:
        raise FidelityError("no ping reply came back over the link")
    return statistics.median(xs)


# A loss count counts as off only when it would happen by chance less than once in this many
# checks: an experiment refused on a false alarm costs a whole run.
LOSS_FALSE_ALARM = 1e-3


def binomial_two_sided_p(n: int, k: int, p: float) -> float:
    """P-value of seeing k of n under Binomial(n, p), both tails (exact, no normal approximation:
    with 500 probes at 0.2 % the expected count is 1 and the normal tail is far off)."""
    if not 0 <= k <= n:
        raise ValueError(f"{k} successes out of {n} trials is impossible.")
    if p <= 0.0 or p >= 1.0:
        return 1.0 if k == round(p * n) else 0.0

    def pmf(i: int) -> float:
        log = (
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * math.log(p)
            + (n - i) * math.log1p(-p)
        )
        return math.exp(log)

    lower = sum(pmf(i) for i in range(k + 1))
    upper = sum(pmf(i) for i in range(k, n + 1))
    return min(1.0, 2 * min(lower, upper))


def loss_plausible(sent: int, lost: int, want_pct: float) -> bool:
    """Whether `lost` of `sent` probes fits a configured loss of `want_pct` percent: a deviation
    that chance explains (LOSS_FALSE_ALARM), and nothing more. (A band of 0.5 percentage points
    around it once accepted no loss at all for 0.2 % configured, and three times too much.)"""
    if sent <= 0:
        return False
    return binomial_two_sided_p(sent, lost, want_pct / 100) >= LOSS_FALSE_ALARM


# The most pings a pre-flight loss check sends (5 s at 1 ms): they tell a round-trip loss of
# 0.16 % or more from none; below that, a link that loses nothing is not caught (the row says so).
LOSS_PINGS_MAX = 5000


def loss_pings(want_pct: float, at_least: int) -> int:
    """How many pings a loss check sends: enough that a link losing none of them while
    `want_pct` is configured is refused (LOSS_FALSE_ALARM), at least `at_least`, and no more
    than LOSS_PINGS_MAX for that."""
    p = want_pct / 100
    if not 0.0 < p < 1.0:
        return at_least
    # no loss in n probes: probability (1 - p)^n, judged off below half the false alarm rate
    needed = math.ceil(math.log(LOSS_FALSE_ALARM / 2) / math.log1p(-p))
    return max(at_least, min(needed, LOSS_PINGS_MAX))


def loss_row(parameter: str, want_pct: float, sent: int, received: int, backend: str) -> Row:
    """A random loss measured with `sent` pings, `received` of them answered, judged by the
    binomial test alone; the detail says when too few were sent to notice no loss at all."""
    lost = sent - received
    detail = f"{lost} of {sent} pings lost"
    if want_pct > 0 and binomial_two_sided_p(sent, 0, want_pct / 100) >= LOSS_FALSE_ALARM:
        detail += f"; too little loss not judged: {sent} pings cannot tell {want_pct:g} % from none"
    got = 100 * lost / sent if sent else 0.0
    ok = loss_plausible(sent, lost, want_pct)
    return Row(parameter, round(want_pct, 3), round(got, 3), "%", backend, ok, detail)


def verify_accesses(
    lab: Lab, accesses: tuple[str, ...] = ("wifi", "5g"), loss_burst: int = 2000
) -> list[dict[str, Any]]:
    """verify_link on each named access link, in order, refusing (FidelityError) as soon as one
    is off; returns every measured row as a dict tagged with its `link` (for meta.json)."""
    out: list[dict[str, Any]] = []
    for access in accesses:
        middle = lab.access(access).shaped
        if middle is None:
            raise FidelityError(f"the {access} access of this topology is not shaped.")
        rows = verify_link(lab, middle, loss_burst=loss_burst)
        out.extend({"link": access, **vars(r)} for r in rows)
        require_fidelity(rows)
    return out


def verify_link(lab: Lab, middle: str, loss_burst: int = 2000) -> list[Row]:
    """Measure one shaped link of a running lab against its current settings (A -> B and back):
    the round trip's added delay and loss (at least `loss_burst` pings, more when the configured
    loss needs them: loss_pings), its MTU, and each direction's rate."""
    link = lab.plan.shaped[middle]
    shaper = lab.shapers[middle]
    backend = str(lab.backend)
    a = lab.node(link.node_a)
    saved = dict(shaper.profiles)
    ab, ba = saved["ab"], saved["ba"]
    rows: list[Row] = []
    shaper.set_profile("both", LinkProfile())
    base = _median(ping_rtts(a, link.peer_v4, 10, 0.05))
    shaper.set_profile("ab", ab)
    shaper.set_profile("ba", ba)
    want = ab.delay_ms + ba.delay_ms
    got = _median(ping_rtts(a, link.peer_v4, 10, max(0.05, want / 1000))) - base
    tol = 1.0 + ab.jitter_ms + ba.jitter_ms
    rows.append(Row("rtt_added", want, round(got, 3), "ms", backend, abs(got - want) <= tol))
    rows.append(round_trip_loss_row(a, link.peer_v4, ab, ba, loss_burst, backend))
    if ab.mtu_bytes or ba.mtu_bytes:
        limit = min(m for m in (ab.mtu_bytes, ba.mtu_bytes) if m)
        rows.append(mtu_row(a, link.peer_v4, limit, backend))
    # The rate with the loss taken off, both ways, then the link as it was: loss only lowers
    # TCP's goodput, so under loss only an upper bound could be judged and a limiter at half
    # its rate passed (the WiFi profile's 0.1 % made every WiFi rate check one-sided; found by
    # a review). The loss itself was judged above.
    lossy = bool(ab.mean_loss_pct or ba.mean_loss_pct)
    if lossy:
        for direction, prof in (("ab", ab), ("ba", ba)):
            shaper.set_profile(direction, prof.with_overrides(loss_pct=0.0, ge_p_pct=0.0))
    try:
        for direction, prof in (("ab", ab), ("ba", ba)):
            row = rate_row(lab, link, direction, prof, backend)
            if row is not None:
                rows.append(row)
    finally:
        if lossy:
            shaper.set_profile("ab", ab)
            shaper.set_profile("ba", ba)
    return rows


RATE_SECONDS = 3  # of each direction's iperf3 (after a second of slow start it omits)
RATE_TOLERANCE = 0.05  # of the TCP goodput a rate allows, either way


@dataclass(frozen=True)
class Ceiling:
    """The best TCP goodput a direction's rate allows: over a long run (`mean`), and the least
    and most over any RATE_SECONDS (`low`, `high`: the same for a fixed rate, a trace's slowest
    and fastest stretch otherwise); `source` says what it comes from."""

    mean: float
    low: float
    high: float
    source: str


def goodput_ceiling(prof: LinkProfile, seconds: int = RATE_SECONDS) -> Ceiling | None:
    """What one direction's rate_mbit or trace allows TCP; None when it has no rate limit."""
    mtu = prof.mtu_bytes or LINK_MTU
    if prof.rate_mbit:
        best = prof.rate_mbit * tcp_goodput_fraction(mtu)
        return Ceiling(best, best, best, f"rate {prof.rate_mbit:g} Mbit/s")
    if prof.trace:
        times = read_trace(trace_path(prof.trace))
        fraction = trace_goodput_fraction(mtu)
        low, high = window_rates_mbit(times, seconds * 1000)
        source = (
            f"trace {prof.trace}, mean {mean_rate_mbit(times):.2f} Mbit/s, "
            f"{low:.2f}-{high:.2f} over any {seconds} s"
        )
        return Ceiling(mean_rate_mbit(times) * fraction, low * fraction, high * fraction, source)
    return None


def rate_row(
    lab: Lab, link: ShapedLink, direction: str, prof: LinkProfile, backend: str
) -> Row | None:
    """TCP goodput one way ("ab": A sends to B; "ba": B to A, by `iperf3 -R`) against what
    the direction's rate allows (goodput_ceiling): within RATE_TOLERANCE of it (of a trace's
    range over as long). The link must carry no loss meanwhile (verify_link takes it off).

    A measurement below the range is taken once more and the higher kept: a few seconds of TCP
    on a busy machine can fall short of a faithful link (the sender or the shaper kept off a
    core: `make test` runs its phases side by side, and a fresh clone's run measured 26.2 of
    28.7 Mbit/s once), while a link shaped slower falls short both times. One above the range
    is never the machine's doing and is not measured again."""
    ceiling = goodput_ceiling(prof)
    if ceiling is None:
        return None
    a, b = lab.node(link.node_a), lab.node(link.node_b)
    # a link with a smaller MTU drops full-size segments: the sender keeps to what it carries
    mss = prof.mtu_bytes - IPV4_TCP_HEADERS if prof.mtu_bytes else 0

    def measure() -> float:
        return iperf3_goodput_mbit(
            lab, a, b, link.peer_v4, seconds=RATE_SECONDS, mss=mss, reverse=direction == "ba"
        )

    low, high = (1 - RATE_TOLERANCE) * ceiling.low, (1 + RATE_TOLERANCE) * ceiling.high
    got = measure()
    again = got < low
    if again:
        got = max(got, measure())
    ok = low <= got <= high
    if direction == "ab":
        detail = f"ab: {link.node_a} -> {link.node_b}, {ceiling.source}"
    else:
        detail = f"ba: {link.node_b} -> {link.node_a} (iperf3 -R), {ceiling.source}"
    if prof.mean_loss_pct:
        detail += "; measured with the loss taken off"
    if again:
        detail += "; measured twice, the first short: the higher kept"
    mean = round(ceiling.mean, 2)
    return Row("tcp_goodput", mean, round(got, 2), "Mbit/s", backend, ok, detail)


def round_trip_loss_row(
    node: Node, dst: str, ab: LinkProfile, ba: LinkProfile, loss_burst: int, backend: str
) -> Row:
    """The loss of a ping round trip (one way, then the other) against its two directions'."""
    want = 100 * (1 - (1 - ab.mean_loss_pct / 100) * (1 - ba.mean_loss_pct / 100))
    if not (ab.ge_p_pct or ba.ge_p_pct):
        sent, received = ping_loss(node, dst, loss_pings(want, loss_burst), 0.001)
        return loss_row("loss_round_trip", want, sent, received, backend)
    sent, received = ping_loss(node, dst, loss_burst, 0.001)
    got = 100 * (sent - received) / sent
    # Bursty losses are not independent: no binomial test; the burst benchmark
    # (run_benchmark) measures the model. Only a loss far off the stationary rate fails.
    ok = abs(got - want) <= max(1.0, 0.5 * want)
    detail = "Gilbert-Elliott: judged within half the stationary loss rate"
    return Row("loss_round_trip", round(want, 3), round(got, 3), "%", backend, ok, detail)


def mtu_row(node: Node, dst: str, mtu: int, backend: str, count: int = 20) -> Row:
    """Does a round trip carry packets of `mtu` bytes and drop one byte more? Echo requests
    with DF set (`ping -M do`): their replies are as long, so the smaller of the two directions'
    limits is what a round trip sees. Measured: `mtu` when both hold, mtu + 1 when the longer
    ones got through too, 0 when none of `count` at the limit did."""
    _, at_limit = ping_loss(node, dst, count, 0.01, size=mtu - ICMP_ECHO_HEADERS)
    _, over = ping_loss(node, dst, count, 0.01, size=mtu + 1 - ICMP_ECHO_HEADERS)
    measured = mtu + 1 if over else (mtu if at_limit else 0)
    detail = f"{at_limit} of {count} echoes of {mtu} bytes answered, {over} of {mtu + 1}"
    return Row("mtu_round_trip", mtu, measured, "bytes", backend, measured == mtu, detail)


def require_fidelity(rows: list[Row]) -> None:
    """Refuse to run an experiment on a network that is not what was asked for."""
    bad = [r for r in rows if not r.ok]
    if bad:
        # the detail tells two rows of one parameter apart (tcp_goodput: ab and ba)
        text = "; ".join(
            f"{r.parameter} configured {r.configured} measured {r.measured}"
            + (f" [{r.detail}]" if r.detail else "")
            for r in bad
        )
        raise FidelityError(f"the shaped network is off ({text}); see the fidelity rows.")


def _queue_delay_under_load(lab: Lab, backend: str) -> list[Row]:
    """Bufferbloat: a full drop-tail queue adds queue_packets * frame / rate of delay."""
    h1, h2 = lab.node("h1"), lab.node("h2")
    far = lab.plan.server_address("h2")
    shaper = lab.shapers["wlink"]
    rate, queue = 10.0, 100
    shaper.set_profile("both", LinkProfile())
    shaper.set("ab", rate_mbit=rate, queue_packets=queue)
    idle = _median(ping_rtts(h1, far, 10, 0.05))
    # A loss-based algorithm fills the queue (BBR would keep it nearly empty, as it should).
    cc = lab.set_congestion_control("h1", "cubic")
    srv = lab.procs.start_iperf3_server(h2, port=5298, idle_timeout_s=20)
    load = lab.procs.start(h1, "iperf3-load", ["iperf3", "-c", far, "-p", "5298", "-t", "6"])
    try:
        time.sleep(2.0)  # past slow start: the queue is in its steady sawtooth
        loaded = ping_rtts(h1, far, 30, 0.1)
    finally:
        lab.procs.stop(load)
        lab.procs.stop(srv)
    full = queue * 1514 * 8 / (rate * 1e6) * 1000
    detail = f"idle RTT {idle:.2f} ms, cc {cc}, max {max(loaded, default=0):.1f} ms"
    med = _median(loaded) - idle
    # Loss-based TCP keeps the queue between half and full: "visible as with netem".
    ok = 0.3 * full <= med <= 1.1 * full
    return [Row("queue_delay_under_load", round(full, 2), round(med, 2), "ms", backend, ok, detail)]


GE_POINTS = ((1.0, 25.0), (2.0, 50.0), (0.5, 10.0))
"""(p, r) of the Gilbert-Elliott points the benchmark measures: mean bursts of 4, 2 and 10
packets (1 / r), stationary loss p / (p + r) = 3.8, 3.8 and 4.8 %."""


def _bursty_loss(lab: Lab, backend: str, bursts_wanted: int = 200) -> list[Row]:
    """Gilbert-Elliott loss on one direction (lost in bad, kept in good): the loss rate, the
    mean burst length and the share of lone losses against the model's (a bad period lasts a
    geometric number of packets: P(length 1) = r, mean 1 / r). Not only the mean: a random
    loss of the same rate would have the same mean loss and bursts of about 1.

    Each point sends enough pings for `bursts_wanted` bursts on average, and is judged within
    3 standard errors of the model for that many bursts (bursts, not packets, are the
    independent samples: a loss rate from 30 bursts of 10 is far noisier than its packet
    count suggests)."""
    h1 = lab.node("h1")
    far = lab.plan.server_address("h2")
    shaper = lab.shapers["wlink"]
    rows: list[Row] = []
    for p, r in GE_POINTS:
        prof = LinkProfile(ge_p_pct=p, ge_r_pct=r)
        good = r / (p + r)  # the stationary share of the good state
        pings = math.ceil(bursts_wanted / (good * p / 100))
        shaper.set_profile("both", LinkProfile())
        shaper.set_profile("ab", prof)
        lost = ping_lost_sequence(h1, far, pings, 0.0005)
        bursts = loss_bursts(lost)
        point = f"p={p:g}% r={r:g}%: {len(lost)} of {pings} lost in {len(bursts)} bursts"
        loss = 100 * len(lost) / pings
        mean = statistics.fmean(bursts) if bursts else 0.0
        lone = sum(1 for b in bursts if b == 1) / len(bursts) if bursts else 0.0
        q = r / 100
        want_mean, want_lone = 1 / q, q
        # a geometric burst length L: Var(L) / E(L)^2 = 1 - q; a sum of N of them (the losses):
        # relative variance (2 - q) / N, counting the Poisson-like number of bursts too
        loss_tol = 3 * math.sqrt((2 - q) / bursts_wanted)
        mean_tol = 3 * math.sqrt((1 - q) / bursts_wanted)
        lone_tol = 3 * math.sqrt(q * (1 - q) / bursts_wanted)
        rows += [
            Row("ge_loss", round(prof.mean_loss_pct, 3), round(loss, 3), "%", backend,
                abs(loss - prof.mean_loss_pct) <= loss_tol * prof.mean_loss_pct, point),
            Row("ge_mean_burst", round(want_mean, 3), round(mean, 3), "packets", backend,
                abs(mean - want_mean) <= mean_tol * want_mean, point),
            Row("ge_lone_losses", round(want_lone, 3), round(lone, 3), "fraction", backend,
                abs(lone - want_lone) <= lone_tol, point),
        ]  # fmt: skip
    return rows


def run_benchmark(backend: str = "auto", out_root: Path = RESULTS_ROOT / "fidelity") -> Path:
    """The configured-vs-measured table of this machine; returns the CSV path."""
    out_dir = out_root / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    with Lab("pair", backend=backend, log_dir=out_dir / "logs") as lab:
        be = str(lab.backend)
        h1, h2 = lab.node("h1"), lab.node("h2")
        far = lab.plan.server_address("h2")
        shaper = lab.shapers["wlink"]
        base = _median(ping_rtts(h1, far, 20, 0.05))
        for delay in (5.0, 20.0, 50.0, 100.0):
            shaper.set_profile("both", LinkProfile())
            shaper.set("ab", delay_ms=delay)
            got = _median(ping_rtts(h1, far, 20, 0.05)) - base
            rows.append(Row("delay", delay, round(got, 3), "ms", be, abs(got - delay) <= 1.0))
        for loss in (0.1, 1.0, 5.0):
            shaper.set_profile("both", LinkProfile())
            shaper.set("ab", loss_pct=loss)
            sent, received = ping_loss(h1, far, 10000, 0.0002)
            rows.append(loss_row("loss", loss, sent, received, be))
        for rate in (10.0, 50.0, 100.0):
            shaper.set_profile("both", LinkProfile())
            shaper.set("ab", rate_mbit=rate)
            want = rate * tcp_goodput_fraction()
            got = iperf3_goodput_mbit(lab, h1, h2, far, seconds=4)
            ok = abs(got - want) <= 0.05 * want
            detail = f"rate {rate:g} Mbit/s of frames = {want:.2f} Mbit/s TCP goodput at best"
            rows.append(Row("tcp_goodput", round(want, 2), round(got, 2), "Mbit/s", be, ok, detail))
        # a trace-driven rate (testbed/traces.py): 1448 TCP bytes per 1500-byte opportunity
        for name in ("const-20", "wifi-walk"):
            shaper.set_profile("both", LinkProfile())
            shaper.set("ab", trace=name)
            times = read_trace(trace_path(name))
            want = mean_rate_mbit(times) * trace_goodput_fraction()
            period_s = times[-1] / 1000
            got = iperf3_goodput_mbit(lab, h1, h2, far, seconds=round(period_s) + 1)
            judged = name == "const-20"  # a walk's rate depends on where the transfer falls
            ok = not judged or abs(got - want) <= 0.05 * want
            detail = f"trace {name}, mean {mean_rate_mbit(times):.2f} Mbit/s of opportunities"
            if not judged:
                detail += "; not judged: one period's TCP goodput of a varying rate"
            rows.append(
                Row("trace_goodput", round(want, 2), round(got, 2), "Mbit/s", be, ok, detail)
            )
        if be == "wire":  # netem has no per-direction size limit
            for mtu in (1400, 1280, 576):
                shaper.set_profile("both", LinkProfile())
                shaper.set("ab", mtu_bytes=mtu)
                rows.append(mtu_row(h1, far, mtu, be))
        rows += _bursty_loss(lab, be)
        rows += _queue_delay_under_load(lab, be)
        meta = lab.describe()
    path = out_dir / "fidelity.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    (out_dir / "meta.json").write_text(json.dumps({"baseline_rtt_ms": base, **meta}, indent=1))
    return path
