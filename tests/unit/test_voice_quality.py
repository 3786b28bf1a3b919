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
