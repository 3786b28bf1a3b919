"""experiments.voice_quality (the E-model, RFC 3550 jitter, a call's metrics) and
experiments.web_mix (the web objects' sizes): pure arithmetic against known values."""

from __future__ import annotations

import random

import pytest

from experiments import voice_quality as vq
from experiments.web_mix import TAIL_K_BYTES, object_sizes


# -- the E-model -------------------------------------------------------------------------------
def test_unimpaired_call_is_r_93_2_mos_4_41() -> None:
    # G.107: every parameter at its default gives R = 93.2; Annex B maps it to 4.41
    assert vq.r_factor(0.0, 0.0) == pytest.approx(93.2)
    assert vq.mos_from_r(93.2) == pytest.approx(4.409, abs=5e-4)


@pytest.mark.parametrize(
    ("r", "mos"),
    [(-5.0, 1.0), (0.0, 1.0), (50.0, 2.575), (70.0, 3.597), (80.0, 4.024), (100.0, 4.5)],
)
def test_mos_of_r_is_g107_annex_b(r: float, mos: float) -> None:
    # 1 + 0.035 R + R (R - 60)(100 - R) 7e-6, worked by hand
    assert vq.mos_from_r(r) == pytest.approx(mos, abs=1e-4)


@pytest.mark.parametrize(("d", "id_"), [(0.0, 0.0), (100.0, 2.4), (177.3, 4.2552), (300.0, 20.697)])
def test_delay_impairment_is_cole_rosenbluth(d: float, id_: float) -> None:
    # 0.024 d + 0.11 (d - 177.3) H(d - 177.3)
    assert vq.delay_impairment(d) == pytest.approx(id_, abs=1e-4)


def test_loss_impairment_is_g107_with_g113_values() -> None:
    ie_eff = vq.effective_equipment_impairment
    assert ie_eff(0.0) == 0.0
    # G.711 with PLC, Bpl 25.1: 95 * 1 / (1 + 25.1); without, Bpl 4.3: 95 / 5.3
    assert ie_eff(1.0) == pytest.approx(95 / 26.1)
    assert ie_eff(1.0, bpl=vq.BPL_G711_NO_PLC) == pytest.approx(95 / 5.3)
    # bursty loss hurts more at the same rate: BurstR 2 -> 95 * 2 / (1 + 50.2)
    assert ie_eff(2.0, burst_ratio=2.0) == pytest.approx(95 * 2 / (2 / 2 + 25.1))
    assert ie_eff(100.0) == pytest.approx(95 * 100 / 125.1)
    with pytest.raises(ValueError):
        ie_eff(101.0)
    # both impairments together
    assert vq.r_factor(200.0, 1.0) == pytest.approx(93.2 - (4.8 + 0.11 * 22.7) - 95 / 26.1)
    # heavy bursty loss takes Ie,eff past 95: R stays on the model's 0..100 scale
    assert ie_eff(80.0, burst_ratio=50.0) > 95 and vq.r_factor(300.0, 80.0, 50.0) == 0.0


def test_burst_ratio_of_loss_patterns() -> None:
    assert vq.burst_ratio([True] * 10) == 1.0  # nothing lost
    assert vq.burst_ratio([False] * 10) == 1.0  # nothing heard
    # one burst of 4 in 100: p = 1/95 (from 95 played), q = 1/4 (from 4 lost)
    pattern = [True] * 50 + [False] * 4 + [True] * 46
    assert vq.burst_ratio(pattern) == pytest.approx(1 / (1 / 95 + 1 / 4))
    # strictly alternating: smoother than random, p = q = 1
    assert vq.burst_ratio([True, False] * 20) == pytest.approx(0.5)
    # independent (Bernoulli) loss: BurstR close to 1, the G.107 random-loss value
    rng = random.Random(7)
    bernoulli = [rng.random() > 0.05 for _ in range(20000)]
    assert vq.burst_ratio(bernoulli) == pytest.approx(1.0, abs=0.1)


# -- what the receiver recorded ----------------------------------------------------------------
def test_sequence_numbers_unwrap_across_65535() -> None:
    assert vq.unwrap_sequence([65534, 65535, 0, 1]) == [65534, 65535, 65536, 65537]
    assert vq.unwrap_sequence([65535, 1, 0]) == [65535, 65537, 65536]  # reordered over the wrap
    assert vq.unwrap_sequence([5, 3, 4, 6]) == [5, 3, 4, 6]


def test_rfc3550_jitter() -> None:
    assert vq.rfc3550_jitter([]) == []
    assert vq.rfc3550_jitter([30.0] * 5) == [0.0] * 5
    # |D| = 10 ms every packet: J_n = 10 (1 - (15/16)^n)
    alternating = [0.0, 10.0] * 50
    jitter = vq.rfc3550_jitter(alternating)
    for n in (1, 2, 10, 99):
        assert jitter[n] == pytest.approx(10 * (1 - (15 / 16) ** n))


def call(transits_ms: list[float], sent: int, order: list[int] | None = None) -> vq.CallRecord:
    """Packets 0..n-1 sent every 20 ms with these transit times, arriving in `order`."""
    numbers = order if order is not None else list(range(len(transits_ms)))
    send = [1_000_000_000 + k * 20_000_000 for k in numbers]
    recv = [s + round(transits_ms[k] * 1e6) for s, k in zip(send, numbers, strict=True)]
    return vq.CallRecord([k % 65536 for k in numbers], send, recv, sent)


def test_clean_call_metrics() -> None:
    row = vq.call_metrics(call([30.0] * 100, 100), playout_buffer_ms=60.0)
    assert row["packets_lost"] == row["packets_late"] == row["duplicates"] == 0
    assert row["owd_min_ms"] == row["owd_median_ms"] == row["owd_max_ms"] == pytest.approx(30)
    assert row["jitter_ms"] == 0.0 and row["burst_ratio"] == 1.0
    # mouth to ear: 30 ms network + 60 ms buffer + 20 ms packetisation
    assert row["mouth_to_ear_ms"] == pytest.approx(110)
    assert row["r_factor"] == pytest.approx(93.2 - 0.024 * 110)
    assert row["mos"] == pytest.approx(vq.mos_from_r(93.2 - 0.024 * 110))


def test_lost_late_and_duplicate_packets() -> None:
    transits = [30.0] * 100
    transits[10] = 95.0  # 65 ms over the first packet's 30: late for a 60 ms buffer
    transits[20] = 89.0  # 59 ms over: just in time
    arrived = [k for k in range(100) if k not in (40, 41)]  # two lost in a row
    record = call(transits, 100, arrived)
    dup = vq.CallRecord(
        [*record.seq, 50], [*record.send_ns, record.send_ns[49]],
        [*record.recv_ns, record.recv_ns[49] + 1000], 100,
    )  # fmt: skip
    row = vq.call_metrics(dup, playout_buffer_ms=60.0)
    assert (row["packets_lost"], row["packets_late"], row["duplicates"]) == (2, 1, 1)
    assert row["loss_pct"] == pytest.approx(2.0) and row["late_pct"] == pytest.approx(1.0)
    assert row["effective_loss_pct"] == pytest.approx(3.0)
    assert row["owd_max_ms"] == pytest.approx(95.0)
    played = [k not in (10, 40, 41) for k in range(100)]
    expected_r = vq.r_factor(110.0, 3.0, vq.burst_ratio(played))
    assert row["r_factor"] == pytest.approx(expected_r)
    # a larger buffer takes the late packet, at the price of delay
    wide = vq.call_metrics(dup, playout_buffer_ms=100.0)
    assert wide["packets_late"] == 0 and wide["mouth_to_ear_ms"] == pytest.approx(150)


def test_tail_loss_counts_from_the_senders_report() -> None:
    row = vq.call_metrics(call([30.0] * 90, 100))
    assert row["packets_lost"] == 10 and row["loss_pct"] == pytest.approx(10.0)


def test_silent_call_is_the_floor() -> None:
    row = vq.call_metrics(vq.CallRecord([], [], [], 50))
    assert row["loss_pct"] == 100.0 and row["mos"] == 1.0 and "owd_min_ms" not in row
    with pytest.raises(ValueError):
        vq.CallRecord([1], [], [], 1)


# -- web object sizes --------------------------------------------------------------------------
def test_object_sizes_are_seeded_and_bounded() -> None:
    sizes = object_sizes("1/1", 2000, max_bytes=4_000_000)
    assert sizes == object_sizes("1/1", 2000, max_bytes=4_000_000)
    assert sizes != object_sizes("1/2", 2000, max_bytes=4_000_000)
    assert all(1 <= s <= 4_000_000 for s in sizes)
    # SURGE's body: median exp(9.357) ~ 11.6 kB; a heavy tail above k = 133 kB
    assert 8_000 < sorted(sizes)[1000] < 16_000
    assert 20 < sum(s > TAIL_K_BYTES for s in sizes) < 200
    assert max(object_sizes("1/1", 2000, max_bytes=50_000)) == 50_000
    with pytest.raises(ValueError):
        object_sizes(1, -1)


# -- the adaptive playout buffer (Ramjee et al. 1994, algorithm 1) ------------------------------
def in_arrival_order(transits_ms: list[float]) -> vq.CallRecord:
    """Packets 0..n-1 sent every 20 ms with these transit times, arriving in time order."""
    order = sorted(range(len(transits_ms)), key=lambda k: k * 20.0 + transits_ms[k])
    return call(transits_ms, len(transits_ms), order)


def schedule(record: vq.CallRecord, every: int = 50) -> tuple[list[int], list[float], list[int]]:
    """(numbers heard, their playout delays, the late ones' numbers) with a 60 ms start."""
    heard = vq.arrivals(record)
    playout = vq.adaptive_playout(heard, every, 60.0)
    late = [n for n, t, d in zip(heard.numbers, heard.transit_ms, playout, strict=True) if t > d]
    return heard.numbers, playout, late


def segment_delays(numbers: list[int], playout: list[float], every: int = 50) -> list[float]:
    """Each segment's playout delay, in segment order; one value per segment."""
    per_segment: dict[int, set[float]] = {}
    for number, delay in zip(numbers, playout, strict=True):
        per_segment.setdefault(number // every, set()).add(delay)
    assert all(len(d) == 1 for d in per_segment.values())  # changed only at adjustment points
    return [per_segment[k].pop() for k in sorted(per_segment)]


def test_adaptive_playout_of_a_constant_delay_is_that_delay() -> None:
    record = call([30.0] * 1500, 1500)  # 30 s at a constant 30 ms
    numbers, playout, late = schedule(record)
    assert late == []
    delays = segment_delays(numbers, playout)
    # the first second plays as the fixed buffer (no history yet), then at the delay itself
    assert delays[0] == pytest.approx(90.0)
    assert delays[1:] == pytest.approx([30.0] * 29)
    row = vq.call_metrics(record)
    assert row["packets_late_adaptive"] == 0 and row["effective_loss_adaptive_pct"] == 0.0
    assert row["playout_delay_adaptive_ms"] == pytest.approx((90 + 29 * 30) / 30)
    assert row["mouth_to_ear_adaptive_ms"] == pytest.approx(row["playout_delay_adaptive_ms"] + 20)
    # the adaptive buffer is scored by the same E-model as the fixed one
    expected_r = vq.r_factor(row["mouth_to_ear_adaptive_ms"], 0.0)
    assert row["r_factor_adaptive"] == pytest.approx(expected_r)
    assert row["mos_adaptive"] == pytest.approx(vq.mos_from_r(expected_r))
    assert row["mos_adaptive"] > row["mos"]  # it waits less than the fixed 60 ms


def test_adaptive_playout_follows_a_delay_step_up() -> None:
    # 10 s at 30 ms, then a queue adds 100 ms for 20 s: the fixed buffer (30 + 60 ms) loses
    # everything after the step; the adaptive one loses only while its estimates catch up
    transits = [30.0] * 500 + [130.0] * 1000
    numbers, playout, late = schedule(in_arrival_order(transits))
    assert late and min(late) == 500 and max(late) < 500 + 5 * 50  # within 5 s of the step
    assert late == list(range(500, max(late) + 1))  # one stretch, then none
    delays = segment_delays(numbers, playout)
    assert all(d >= 130 for d in delays[15:])
    row = vq.call_metrics(in_arrival_order(transits))
    assert row["packets_late"] == 1000 and row["packets_late_adaptive"] == len(late)
    assert row["mos_adaptive"] > row["mos"]


def test_adaptive_playout_never_late_after_a_delay_step_down() -> None:
    transits = [130.0] * 500 + [30.0] * 1000
    numbers, playout, late = schedule(in_arrival_order(transits))
    assert late == []
    delays = segment_delays(numbers, playout)
    assert delays[-1] < max(delays)  # and comes back down as its estimates settle


def test_adaptive_playout_under_random_jitter_and_spikes() -> None:
    rng = random.Random(3)
    jittery = [rng.uniform(20.0, 40.0) for _ in range(1500)]
    numbers, playout, late = schedule(in_arrival_order(jittery))
    assert late == []  # d + 4 v covers a uniform 20-40 ms
    assert all(40.0 < d < 60.0 for d in segment_delays(numbers, playout)[1:])
    # delay spikes (a burst of packets held 200 ms, then delivered together): the spike's
    # packets are late, none of the others; each spike raises the variation estimate
    spiky = [30.0] * 1500
    for start in range(250, 1500, 250):
        for j in range(10):
            spiky[start + j] = 230.0 - 20 * j
    numbers, playout, late = schedule(in_arrival_order(spiky))
    spikes = {start + j for start in range(250, 1500, 250) for j in range(10)}
    assert late and set(late) <= spikes
    delays = segment_delays(numbers, playout)
    assert delays[4] < delays[6] < delays[11]


def test_adaptive_playout_skips_lost_segments_and_reordering() -> None:
    transits = [30.0] * 300
    arrived = [k for k in range(300) if not 100 <= k < 160]  # 1.2 s lost
    arrived[10], arrived[11] = arrived[11], arrived[10]
    numbers, playout, late = schedule(call(transits, 300, arrived))
    assert late == [] and len(segment_delays(numbers, playout)) == 5  # segment 2 never heard
    row = vq.call_metrics(call(transits, 300, arrived))
    assert row["packets_lost"] == 60 and row["effective_loss_adaptive_pct"] == pytest.approx(20)
    silent = vq.call_metrics(vq.CallRecord([], [], [], 50))
    assert silent["mos_adaptive"] == 1.0 and silent["effective_loss_adaptive_pct"] == 100.0
    with pytest.raises(ValueError):
        vq.adaptive_playout(vq.arrivals(call(transits, 300)), 0, 60.0)
    with pytest.raises(ValueError):
        vq.call_metrics(call(transits, 300), playout_adjust_s=0.0)
