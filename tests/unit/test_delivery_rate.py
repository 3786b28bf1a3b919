"""The delivery-rate estimate a loss-based path is ranked by (tunnel/protocol/delivery_rate.py,
quic_ext.send_rate): the most a path delivered over an RTT in the last ten, not the window per
RTT, which a path the scheduler under-feeds grows past anything its link carries."""

from __future__ import annotations

import pytest
from aioquic.quic.events import DatagramFrameReceived

from tests.unit.test_congestion import DELAY, PAYLOAD, RATE, connected_pair
from tunnel.protocol.delivery_rate import MARK_SPACING, WINDOW_RTTS, DeliveryRate
from tunnel.protocol.quic_ext import send_rate

SRTT = 0.05


def feed(estimate: DeliveryRate, start: float, seconds: float, rate: float, step: float) -> float:
    """ACKs every `step` s delivering `rate` bytes/s from `start`; returns the end time."""
    now = start
    while now < start + seconds - 1e-9:
        now += step
        estimate.on_delivered(now, round(rate * step), SRTT)
    return now


def test_nothing_is_estimated_before_an_rtt_of_acks() -> None:
    estimate = DeliveryRate()
    assert estimate.rate is None
    feed(estimate, 0.0, SRTT * 0.9, 1e6, 0.001)  # an ACK burst shorter than the RTT
    assert estimate.rate is None
    feed(estimate, SRTT * 0.9, SRTT, 1e6, 0.001)
    assert estimate.rate == pytest.approx(1e6, rel=0.03)


def test_the_best_rate_of_the_last_ten_rtts_is_kept_then_forgotten() -> None:
    estimate = DeliveryRate()
    now = feed(estimate, 0.0, 1.0, 1e6, 0.002)
    assert estimate.rate == pytest.approx(1e6, rel=0.03)
    # the offer falls to a quarter: the best of the last ten RTTs holds for that long ...
    now = feed(estimate, now, (WINDOW_RTTS - 2) * SRTT, 0.25e6, 0.002)
    assert estimate.rate == pytest.approx(1e6, rel=0.03)
    # ... then the estimate is what the path delivers now
    feed(estimate, now, 3 * SRTT, 0.25e6, 0.002)
    assert estimate.rate == pytest.approx(0.25e6, rel=0.05)


def test_an_idle_gap_never_raises_it_and_the_marks_stay_bounded() -> None:
    estimate = DeliveryRate()
    now = feed(estimate, 0.0, 0.5, 2e6, 0.0001)  # an ACK every 0.1 ms
    assert len(estimate._marks) <= SRTT / MARK_SPACING + 2
    best = estimate.rate
    assert best is not None
    # one ACK after 300 ms of silence: its low sample is not the estimate, and the best of
    # the last ten RTTs still is (the older ones expired)
    estimate.on_delivered(now + 0.3, 3000, SRTT)
    assert estimate.rate is not None and 0.95 * best <= estimate.rate <= best
    kept = estimate.rate
    estimate.on_delivered(now + 0.31, 0, SRTT)  # nothing newly delivered: no sample
    assert estimate.rate == kept


def test_a_reno_window_the_path_never_fills_does_not_set_its_rate() -> None:
    """A sender offered 60 % of a 20 Mbit/s link: Reno's window grows on every ACK although it
    never holds the sender back (nothing is lost), to more than twice what the link carries per
    RTT; the path is ranked by what it delivers."""
    net, path, client = connected_pair("reno")
    path.up_link.rate = RATE
    offered = 0.6 * RATE
    step = 0.002
    debt = 0.0
    for _ in range(int(2.0 / step)):
        debt += offered * step
        while debt >= PAYLOAD:
            client.send_datagram_frame(b"x" * PAYLOAD)
            debt -= PAYLOAD
        net.run(step)
    loss = client._loss
    window_rate = loss.congestion_window / loss._rtt_smoothed
    assert window_rate > 2 * RATE  # the case this is about
    rate = send_rate(client)
    assert rate is not None and 0.5 * RATE < rate < RATE
    received = sum(1 for e in path.server.quic_events if isinstance(e, DatagramFrameReceived))
    assert received * PAYLOAD > 0.9 * (2.0 - 4 * DELAY) * offered  # all but the last RTTs'
