"""Is the network what was asked for? Measure a shaped link and compare with its settings.

Two uses:
* `verify_link(lab, middle)` before an experiment: RTT by ping, loss by a counted ping burst,
  rate by a short iperf3, a smaller MTU (mtu_bytes) by pings that may not be fragmented at and
  one byte over it; returns rows with an `ok` verdict, and `require_fidelity()` refuses
  to go on when one is off (the way Mininet's reproducibility experiments checked first).
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
from testbed.traces import mean_rate_mbit, read_trace, trace_path
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


def iperf3_goodput_mbit(
    lab: Lab, client: Node, server: Node, dst: str, seconds: int = 3, mss: int = 0
) -> float:
    """Receiver-side TCP goodput of a short iperf3 run (first second omitted: slow start);
    `mss` > 0 sets the sender's segment size (`iperf3 -M`), for a link with a smaller MTU."""
    srv = lab.procs.start_iperf3_server(server, port=5299, idle_timeout_s=seconds + 10)
    segment = f" -M {mss}" if mss else ""
    try:
        out = str(
            client.cmd(
                f"iperf3 -c {dst} -p 5299 -t {seconds} -O 1 --connect-timeout 3000 -J{segment}"
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
    """Whether `lost` of `sent` probes fits a configured loss of `want_pct` percent: within
    0.5 percentage points, or a deviation that chance explains (LOSS_FALSE_ALARM)."""
    if sent <= 0:
        return False
    got_pct = 100 * lost / sent
    if abs(got_pct - want_pct) <= 0.5:
        return True
    return binomial_two_sided_p(sent, lost, want_pct / 100) >= LOSS_FALSE_ALARM


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
    """Measure one shaped link of a running lab against its current settings (A -> B and back)."""
    link = lab.plan.shaped[middle]
    shaper = lab.shapers[middle]
    backend = str(lab.backend)
    a, b = lab.node(link.node_a), lab.node(link.node_b)
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
    want_loss = 100 * (1 - (1 - ab.mean_loss_pct / 100) * (1 - ba.mean_loss_pct / 100))
    sent, received = ping_loss(a, link.peer_v4, loss_burst, 0.001)
    got_loss = 100 * (sent - received) / sent
    if ab.ge_p_pct or ba.ge_p_pct:
        # Bursty losses are not independent: no binomial test; the burst benchmark
        # (run_benchmark) measures the model. Only a loss far off the stationary rate fails.
        ok = abs(got_loss - want_loss) <= max(1.0, 0.5 * want_loss)
        detail = "Gilbert-Elliott: judged within half the stationary loss rate"
    else:
        ok, detail = loss_plausible(sent, sent - received, want_loss), ""
    rows.append(
        Row("loss_round_trip", round(want_loss, 3), round(got_loss, 3), "%", backend, ok, detail)
    )
    if ab.mtu_bytes or ba.mtu_bytes:
        limit = min(m for m in (ab.mtu_bytes, ba.mtu_bytes) if m)
        rows.append(mtu_row(a, link.peer_v4, limit, backend))
    if ab.rate_mbit:
        want_rate = ab.rate_mbit * tcp_goodput_fraction(ab.mtu_bytes or LINK_MTU)
        # a link with a smaller MTU drops full-size segments: the sender keeps to what it carries
        mss = ab.mtu_bytes - IPV4_TCP_HEADERS if ab.mtu_bytes else 0
        got_rate = iperf3_goodput_mbit(lab, a, b, link.peer_v4, mss=mss)
        judged = ab.mean_loss_pct == 0 and ba.mean_loss_pct == 0  # TCP under loss: not the rate
        ok = not judged or abs(got_rate - want_rate) <= 0.05 * want_rate
        detail = "" if judged else "not judged: TCP goodput under random loss is below the rate"
        rows.append(
            Row(
                "tcp_goodput",
                round(want_rate, 2),
                round(got_rate, 2),
                "Mbit/s",
                backend,
                ok,
                detail,
            )
        )
    return rows


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
        text = "; ".join(
            f"{r.parameter} configured {r.configured} measured {r.measured}" for r in bad
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
            got = 100 * (sent - received) / sent
            rows.append(
                Row("loss", loss, round(got, 3), "%", be, abs(got - loss) <= 0.5, f"{sent} pings")
            )
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
            want = mean_rate_mbit(times) * 1448 / 1500
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
