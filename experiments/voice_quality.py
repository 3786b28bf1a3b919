"""Call quality of a VoIP-like stream, from what its receiver recorded: pure arithmetic.

A call is G.711-like (experiments/workload_traffic.py `voip-send`): a 172-byte UDP payload every
20 ms (a 12-byte RTP header, RFC 3550 §5.1, and 160 bytes of 8 kHz 8-bit samples). For every
packet the receiver records its sequence number, the sender's send time (carried in the payload)
and its arrival time. Every Mininet host is a namespace of one machine with one CLOCK_MONOTONIC,
so arrival - send is the exact one-way delay: no clock offset or drift to estimate.

The metrics (`call_metrics`):
  one-way delay    arrival - send time per packet (min, median, 95th percentile, max).
  jitter           RFC 3550 §6.4.1's interarrival jitter: J += (|D(i-1,i)| - J) / 16 over the
                   packets in arrival order, D the difference of their transit times. S is the
                   send time the sender stamped (its actual send instant), not the RTP media
                   timestamp: a Python sender's own scheduling slip is the machine, not the
                   network, and is reported apart (the sender's `slip_max_ms`). Both J at the
                   end of the call (what an RTCP report would carry) and its mean over the call.
  loss             packets the sender sent that never arrived (duplicates counted once).
  late             packets that arrived after their playout time in a fixed playout (jitter)
                   buffer of B ms: the buffer starts playing B ms after the first packet
                   arrives and plays one packet every 20 ms from there, so packet i is late
                   when its one-way delay exceeds the first packet's plus B (a simple fixed
                   buffer, causal: it knows only the first packet when it starts).
  R and MOS        the ITU-T G.107 E-model in a simplified form (below) with the effective
                   loss (lost + late: what the listener does not hear) and the mouth-to-ear
                   delay d = the first packet's one-way delay + B + the 20 ms packetisation
                   (every played packet waits the same: a fixed buffer).
  ..._adaptive     the same scored for an adaptive playout buffer (`adaptive_playout`, below):
                   late = arrived after its scheduled playout, d = the mean over the packets
                   received of their playout delay + the 20 ms packetisation. A fixed buffer
                   anchored on the first packet says more about that packet than about the
                   network (beside a bulk flow the queue's delay varies by ~100 ms and nearly
                   everything is late for it); real VoIP clients adapt their playout delay.

The adaptive playout buffer: Ramjee, Kurose, Towsley & Schulzrinne, "Adaptive playout
mechanisms for packetized audio applications in wide-area networks", IEEE INFOCOM 1994,
algorithm 1. Per packet i received, n_i its one-way delay (arrival - send: one clock, exact):
  d_i = a d_(i-1) + (1 - a) n_i            a = 0.998002, the paper's value
  v_i = a v_(i-1) + (1 - a) |d_i - n_i|
and at the first packet i of a talkspurt the playout delay becomes D = d_i + 4 v_i: every
packet j of the talkspurt is played at its send time + D (t_j + D in the paper's notation), so
it is late when n_j > D. Two choices the paper leaves to us, and why:
  adjustment points  our source never falls silent (a G.711 stream without voice activity
                     detection), so there are no talkspurts: the stream is cut into segments of
                     `playout_adjust_s` (1 s: close to the 1.004 s mean talkspurt of ITU-T
                     P.59's conversational speech model) by sequence number, and a segment's D
                     is set when its first packet to arrive does (the estimates then include
                     that packet, as the paper's d_i does). Changing the delay inside speech
                     stretches or shortens the audio; time-scale modification makes that near
                     inaudible (Liang, Faerber & Girod, IEEE Trans. Multimedia 5(4), 2003), so
                     the adjustments themselves cost nothing here.
  start              with one sample the estimates know nothing of the variation (v = 0): the
                     segment of the first packet to arrive plays as the fixed buffer does (its
                     delay + B), and until the estimator has 1/(1 - a) ~ 500 samples its gain
                     is 1/n instead of 1 - a (the running mean; with 1 - a from the first
                     sample v would stay near 0 for ~10 s and half of a jittery call's packets
                     would be late only because the estimator had just started).
What it does (tests/unit/test_voice_quality.py): at a constant delay D is that delay and nothing
is late; a step of +100 ms makes ~3 s of packets late while d and v catch up, after which v has
overshot and D stays well above the new delay for ~10 s; the packets of a sudden delay spike are
late (the paper's algorithm 4 detects spikes; algorithm 1, the simple one, does not).

The E-model, simplified (every G.107 default except delay and loss):
  R = 93.2 - Id - Ie,eff                         G.107 (06/2015): 93.2 is R with every
                                                 parameter at its default (Cole & Rosenbluth
                                                 start from the 94.2 of the G.107 of their day)
  Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)   Cole & Rosenbluth, "Voice over IP performance
                                                 monitoring", ACM CCR 31(2), 2001 (their fit of
                                                 G.107's Idd + Idte with default echo values;
                                                 d in ms, H the Heaviside step)
  Ie,eff = Ie + (95 - Ie) Ppl / (Ppl/BurstR + Bpl)   G.107 §7.4, Ppl in %
  G.711: Ie = 0; Bpl = 25.1 with packet loss concealment (G.711 Appendix I), 4.3 without
                                                 ITU-T G.113 Appendix I (its G.711 rows)
  BurstR = 1 / (p + q)                           G.107 §7.4: p = P(lost | previous played),
                                                 q = P(played | previous lost), estimated from
                                                 the call's own loss pattern (1 when nothing,
                                                 or everything, was lost)
  MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6  G.107 Annex B, for 0 < R < 100
        (1 below, 4.5 above); R is reported clamped at 0 (`r_factor`)
So an unimpaired call has R = 93.2, MOS 4.41. d is one number per connection, as G.107's own
delay inputs are (T, its "mean one-way delay of the echo path", and Ta, the absolute delay;
Cole & Rosenbluth's fit sets both to d): with the adaptive buffer, whose delay varies over the
call, it is the mean.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PACKET_INTERVAL_MS = 20.0  # G.711 at 20 ms packetisation: 160 samples of 8 kHz per packet
PAYLOAD_BYTES = 160
R_UNIMPAIRED = 93.2  # G.107 §7: R with every parameter at its default
IE_G711 = 0.0  # G.113 Appendix I: G.711's equipment impairment
BPL_G711_PLC = 25.1  # G.113 Appendix I: G.711 with its Appendix I concealment
BPL_G711_NO_PLC = 4.3  # the same, without concealment (random loss)
SEQ_MODULUS = 1 << 16  # RTP sequence numbers are 16 bits (RFC 3550 §5.1)
PLAYOUT_ALPHA = 0.998002  # Ramjee et al. 1994: the weight of the delay and variation estimates
PLAYOUT_VARIATION_FACTOR = 4.0  # ... and D = d + 4 v
PLAYOUT_ADJUST_S = 1.0  # an adjustment point every second (ITU-T P.59: mean talkspurt 1.004 s)


# -- the E-model -------------------------------------------------------------------------------
def delay_impairment(mouth_to_ear_ms: float) -> float:
    """Id (Cole & Rosenbluth 2001): 0.024 d + 0.11 (d - 177.3) H(d - 177.3)."""
    d = max(0.0, mouth_to_ear_ms)
    return 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)


def effective_equipment_impairment(
    loss_pct: float, burst_ratio: float = 1.0, ie: float = IE_G711, bpl: float = BPL_G711_PLC
) -> float:
    """Ie,eff (G.107 §7.4): Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl), Ppl in %."""
    if not 0 <= loss_pct <= 100:
        raise ValueError(f"loss_pct must be between 0 and 100, got {loss_pct}.")
    if burst_ratio <= 0:
        raise ValueError(f"burst_ratio must be > 0, got {burst_ratio}.")
    return ie + (95 - ie) * loss_pct / (loss_pct / burst_ratio + bpl)


def r_factor(
    mouth_to_ear_ms: float,
    loss_pct: float,
    burst_ratio: float = 1.0,
    ie: float = IE_G711,
    bpl: float = BPL_G711_PLC,
) -> float:
    """R = 93.2 - Id - Ie,eff (module docstring), at least 0: the E-model's scale is 0..100
    (with heavy bursty loss Ie,eff can exceed 95, and an R of -200 would only say "unusable"
    less plainly; MOS is 1 from R = 0 down either way)."""
    r = (
        R_UNIMPAIRED
        - delay_impairment(mouth_to_ear_ms)
        - effective_equipment_impairment(loss_pct, burst_ratio, ie, bpl)
    )
    return max(0.0, r)


def mos_from_r(r: float) -> float:
    """G.107 Annex B: the estimated conversational MOS of an R-factor."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def burst_ratio(played: Sequence[bool]) -> float:
    """BurstR = 1 / (p + q) of a loss pattern (True: played, False: lost or late), with p and q
    the transition probabilities of a two-state Markov model fitted to it (G.107 §7.4); 1 (the
    random-loss value) when nothing or everything was lost."""
    ok_to_lost = ok_from = lost_to_ok = lost_from = 0
    for before, after in itertools.pairwise(played):
        if before:
            ok_from += 1
            ok_to_lost += not after
        else:
            lost_from += 1
            lost_to_ok += after
    if not ok_from or not lost_from or not (ok_to_lost or lost_to_ok):
        return 1.0
    p, q = ok_to_lost / ok_from, lost_to_ok / lost_from
    return 1.0 / (p + q) if p + q > 0 else 1.0


# -- what the receiver recorded ----------------------------------------------------------------
def unwrap_sequence(seqs: Sequence[int], modulus: int = SEQ_MODULUS) -> list[int]:
    """16-bit RTP sequence numbers (in arrival order) as a count from the first: each one is
    taken as the value nearest the highest seen so far (RFC 3550 Appendix A.1's idea)."""
    out: list[int] = []
    highest: int | None = None
    for seq in seqs:
        if highest is None:
            value = seq
        else:
            delta = (seq - highest) % modulus
            if delta >= modulus // 2:
                delta -= modulus
            value = highest + delta
        out.append(value)
        highest = value if highest is None else max(highest, value)
    return out


def rfc3550_jitter(transit_ms: Sequence[float]) -> list[float]:
    """RFC 3550 §6.4.1's interarrival jitter after each packet (the first: 0), from the packets'
    transit times (arrival - send) in arrival order: J += (|D| - J) / 16."""
    jitter, out = 0.0, []
    for before, after in itertools.pairwise(transit_ms):
        jitter += (abs(after - before) - jitter) / 16
        out.append(jitter)
    return [0.0, *out] if transit_ms else []


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0..1) of sorted values: the smallest value at or above
    which a share q of them lie (ceil(q n)-th). It used round(q (n - 1)), which read the 14th
    of 15 for a p95 (a review): low on the small samples of --quick."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class CallRecord:
    """One call as its two ends saw it: per packet received (arrival order) its sequence number
    (16-bit, as on the wire), send and arrival times (CLOCK_MONOTONIC ns), and how many the
    sender sent."""

    seq: Sequence[int]
    send_ns: Sequence[int]
    recv_ns: Sequence[int]
    sent: int

    def __post_init__(self) -> None:
        if not len(self.seq) == len(self.send_ns) == len(self.recv_ns):
            raise ValueError("seq, send_ns and recv_ns must have one entry per packet.")


@dataclass(frozen=True)
class Arrivals:
    """A call's packets as heard: each packet once (its first copy), in arrival order, by its
    number counted from the call's first (unwrapped), with its one-way delay in ms."""

    numbers: list[int]
    transit_ms: list[float]
    duplicates: int


def arrivals(call: CallRecord) -> Arrivals:
    numbers = unwrap_sequence(call.seq)
    first_seen: dict[int, int] = {}
    for index, number in enumerate(numbers):
        first_seen.setdefault(number, index)
    order = sorted(first_seen.values())  # unique packets, in arrival order
    return Arrivals(
        [numbers[i] for i in order],
        [(call.recv_ns[i] - call.send_ns[i]) / 1e6 for i in order],
        len(numbers) - len(first_seen),
    )


def adaptive_playout(
    heard: Arrivals,
    packets_per_adjustment: int,
    first_buffer_ms: float,
    alpha: float = PLAYOUT_ALPHA,
    variation_factor: float = PLAYOUT_VARIATION_FACTOR,
) -> list[float]:
    """The playout delay (ms after its send time) of each packet heard, in `heard`'s order:
    Ramjee et al. 1994's algorithm 1 with an adjustment point every `packets_per_adjustment`
    packets by number (module docstring). A packet is late when its delay exceeds its own."""
    if packets_per_adjustment < 1:
        raise ValueError(f"packets_per_adjustment must be >= 1, got {packets_per_adjustment}.")
    delay_est = variation_est = 0.0
    playout: dict[int, float] = {}  # segment -> its playout delay, from its first arrival
    out: list[float] = []
    for count, (number, transit) in enumerate(
        zip(heard.numbers, heard.transit_ms, strict=True), start=1
    ):
        # the running mean until 1/(1 - alpha) samples, then the paper's weight (start, above)
        gain = max(1.0 - alpha, 1.0 / count)
        delay_est += gain * (transit - delay_est)
        variation_est += gain * (abs(delay_est - transit) - variation_est)
        segment = number // packets_per_adjustment
        if segment not in playout:
            playout[segment] = (
                transit + first_buffer_ms
                if count == 1  # no history yet: the fixed buffer's start
                else delay_est + variation_factor * variation_est
            )
        out.append(playout[segment])
    return out


def _e_model(
    played: set[int], sent: int, mouth_to_ear_ms: float, bpl: float
) -> tuple[float, float, float, float]:
    """(effective loss %, BurstR, R, MOS) of a call of `sent` packets of which the numbers in
    `played` were played (heard in time): the E-model (module docstring)."""
    pattern = [k in played for k in range(sent)]
    effective_pct = 100 * (sent - len(played)) / sent
    burst = burst_ratio(pattern)
    r = r_factor(mouth_to_ear_ms, min(100.0, effective_pct), burst, IE_G711, bpl)
    return effective_pct, burst, r, mos_from_r(r)


def call_metrics(
    call: CallRecord,
    playout_buffer_ms: float = 60.0,
    plc: bool = True,
    interval_ms: float = PACKET_INTERVAL_MS,
    playout_adjust_s: float = PLAYOUT_ADJUST_S,
) -> dict[str, Any]:
    """A call's columns (module docstring): delays in ms, loss and lateness in % of the
    packets sent, R and MOS, for the fixed playout buffer and (`..._adaptive`) the adaptive
    one. A call of which nothing arrived has loss 100 %, R 0 and MOS 1."""
    if playout_adjust_s <= 0:
        raise ValueError(f"playout_adjust_s must be > 0, got {playout_adjust_s}.")
    heard = arrivals(call)
    numbers, transit = heard.numbers, heard.transit_ms
    unique = len(numbers)
    # The sender numbers a call from 0. A number beyond what it says it sent (its report
    # missing) counts as sent: the loss is never negative.
    sent = max(call.sent, 0, max(numbers, default=-1) + 1)
    lost = sent - unique
    row: dict[str, Any] = {
        "packets_sent": sent,
        "packets_received": unique,
        "duplicates": heard.duplicates,
        "packets_lost": lost,
        "loss_pct": 100 * lost / sent if sent else 0.0,
        "playout_buffer_ms": playout_buffer_ms,
        "playout_adjust_s": playout_adjust_s,
    }
    if not transit:
        # Nothing heard: the E-model is not meant for silence (its 100 % loss still leaves
        # R ~ 17), so the scale's floor.
        floor = {"effective_loss_pct": 100.0, "burst_ratio": 1.0, "r_factor": 0.0, "mos": 1.0}
        return row | {
            "packets_late": 0,
            "late_pct": 0.0,
            **floor,
            "packets_late_adaptive": 0,
            "late_adaptive_pct": 0.0,
            "effective_loss_adaptive_pct": 100.0,
            "burst_ratio_adaptive": 1.0,
            "r_factor_adaptive": 0.0,
            "mos_adaptive": 1.0,
        }
    ordered = sorted(transit)
    jitter = rfc3550_jitter(transit)
    bpl = BPL_G711_PLC if plc else BPL_G711_NO_PLC
    # the fixed buffer: the first packet to arrive starts the playout clock
    anchor_ms = transit[0]
    late = {n for n, t in zip(numbers, transit, strict=True) if t > anchor_ms + playout_buffer_ms}
    mouth_to_ear = anchor_ms + playout_buffer_ms + interval_ms
    effective_pct, burst, r, mos = _e_model(set(numbers) - late, sent, mouth_to_ear, bpl)
    # the adaptive buffer: a packet is late when it arrives after its scheduled playout
    per_adjustment = max(1, round(playout_adjust_s * 1000 / interval_ms))
    playout = adaptive_playout(heard, per_adjustment, playout_buffer_ms)
    late_adaptive = {n for n, t, d in zip(numbers, transit, playout, strict=True) if t > d}
    playout_mean = statistics.fmean(playout)
    adaptive = _e_model(set(numbers) - late_adaptive, sent, playout_mean + interval_ms, bpl)
    return row | {
        "owd_min_ms": ordered[0],
        "owd_median_ms": statistics.median(ordered),
        "owd_p95_ms": percentile(ordered, 0.95),
        "owd_max_ms": ordered[-1],
        "jitter_ms": jitter[-1],
        "jitter_mean_ms": statistics.fmean(jitter),
        "packets_late": len(late),
        "late_pct": 100 * len(late) / sent,
        "effective_loss_pct": effective_pct,
        "burst_ratio": burst,
        "mouth_to_ear_ms": mouth_to_ear,
        "r_factor": r,
        "mos": mos,
        "packets_late_adaptive": len(late_adaptive),
        "late_adaptive_pct": 100 * len(late_adaptive) / sent,
        "effective_loss_adaptive_pct": adaptive[0],
        "burst_ratio_adaptive": adaptive[1],
        "playout_delay_adaptive_ms": playout_mean,
        "mouth_to_ear_adaptive_ms": playout_mean + interval_ms,
        "r_factor_adaptive": adaptive[2],
        "mos_adaptive": adaptive[3],
    }
