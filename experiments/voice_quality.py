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
So an unimpaired call has R = 93.2, MOS 4.41.
"""

from __future__ import annotations

import itertools
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
    """The nearest-rank q-quantile (0..1) of sorted values (as the latency experiment's p95)."""
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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


def call_metrics(
    call: CallRecord,
    playout_buffer_ms: float = 60.0,
    plc: bool = True,
    interval_ms: float = PACKET_INTERVAL_MS,
) -> dict[str, Any]:
    """A call's columns (module docstring): delays in ms, loss and lateness in % of the
    packets sent, R and MOS. A call of which nothing arrived has loss 100 %, R 0 and MOS 1."""
    sent = max(call.sent, 0)
    numbers = unwrap_sequence(call.seq)
    first_seen: dict[int, int] = {}
    for index, number in enumerate(numbers):
        first_seen.setdefault(number, index)
    duplicates = len(numbers) - len(first_seen)
    order = sorted(first_seen.values())  # unique packets, in arrival order
    transit = [(call.recv_ns[i] - call.send_ns[i]) / 1e6 for i in order]
    unique = len(order)
    # The sender numbers a call from 0. A number beyond what it says it sent (its report
    # missing) counts as sent: the loss is never negative.
    sent = max(sent, max(first_seen, default=-1) + 1)
    lost = sent - unique
    row: dict[str, Any] = {
        "packets_sent": sent,
        "packets_received": unique,
        "duplicates": duplicates,
        "packets_lost": lost,
        "loss_pct": 100 * lost / sent if sent else 0.0,
        "playout_buffer_ms": playout_buffer_ms,
    }
    if not transit:
        # Nothing heard: the E-model is not meant for silence (its 100 % loss still leaves
        # R ~ 17), so the scale's floor.
        return row | {
            "packets_late": 0,
            "late_pct": 0.0,
            "effective_loss_pct": 100.0,
            "burst_ratio": 1.0,
            "r_factor": 0.0,
            "mos": 1.0,
        }
    ordered = sorted(transit)
    jitter = rfc3550_jitter(transit)
    anchor_ms = transit[0]  # the first packet to arrive starts the playout clock
    late_numbers = {
        numbers[i] for i, t in zip(order, transit, strict=True) if t > anchor_ms + playout_buffer_ms
    }
    played_numbers = set(first_seen) - late_numbers
    played = [k in played_numbers for k in range(sent)]
    effective_pct = 100 * (sent - len(played_numbers)) / sent
    burst = burst_ratio(played)
    mouth_to_ear = anchor_ms + playout_buffer_ms + interval_ms
    bpl = BPL_G711_PLC if plc else BPL_G711_NO_PLC
    r = r_factor(mouth_to_ear, min(100.0, effective_pct), burst, IE_G711, bpl)
    return row | {
        "owd_min_ms": ordered[0],
        "owd_median_ms": statistics.median(ordered),
        "owd_p95_ms": percentile(ordered, 0.95),
        "owd_max_ms": ordered[-1],
        "jitter_ms": jitter[-1],
        "jitter_mean_ms": statistics.fmean(jitter),
        "packets_late": len(late_numbers),
        "late_pct": 100 * len(late_numbers) / sent,
        "effective_loss_pct": effective_pct,
        "burst_ratio": burst,
        "mouth_to_ear_ms": mouth_to_ear,
        "r_factor": r,
        "mos": mos_from_r(r),
    }
