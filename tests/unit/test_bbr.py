"""tunnel.protocol.bbr on a simulated bottleneck (fake clock, seeded loss): the state machine
goes the way the table says, the model finds the link, and random loss does not shrink it."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from tunnel.protocol.bbr import (
    DRAIN_GAIN,
    HIGH_GAIN,
    PACING_GAIN_CYCLE,
    BbrCongestionControl,
    BbrState,
    MaxFilter,
)

MSS = 1200


@dataclass
class Bottleneck:
    """A FIFO link of `rate` bytes/s and `rtt` seconds of propagation, losing packets at
    random with probability `loss`; the sender is greedy and paced by the controller."""

    cc: BbrCongestionControl | RenoCongestionControl
    rate: float
    rtt: float
    loss: float = 0.0
    seed: int = 1
    now: float = 0.0
    link_free: float = 0.0
    next_pn: int = 0
    next_send: float = 0.0
    delivered_bytes: int = 0
    states: list[BbrState] = field(default_factory=list)
    _events: list[tuple[float, int, bool, QuicSentPacket]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def run(self, seconds: float, step: float = 0.0005) -> None:
        end = self.now + seconds
        while self.now < end:
            self._deliver()
            self._send()
            self.now += step
            if isinstance(self.cc, BbrCongestionControl) and (
                not self.states or self.states[-1] is not self.cc.state
            ):
                self.states.append(self.cc.state)

    def _send(self) -> None:
        cc = self.cc
        # pacing credit never accumulates beyond 1 ms (like aioquic's pacer bucket)
        self.next_send = max(self.next_send, self.now - 0.001)
        while cc.bytes_in_flight + MSS <= cc.congestion_window and self.next_send <= self.now:
            packet = self._packet()
            cc.on_packet_sent(packet=packet)
            rate = getattr(cc, "pacing_rate", None)
            if rate:
                self.next_send += MSS / rate
            self.link_free = max(self.link_free, self.now) + MSS / self.rate
            lost = self.random.random() < self.loss
            # an ACK (or, for a lost packet, the loss detection) a propagation RTT after the
            # packet left the bottleneck
            heapq.heappush(
                self._events, (self.link_free + self.rtt, packet.packet_number, lost, packet)
            )

    def _packet(self) -> QuicSentPacket:
        """The next full-size packet, sent now."""
        packet = QuicSentPacket(
            epoch=Epoch.ONE_RTT,
            in_flight=True,
            is_ack_eliciting=True,
            is_crypto_packet=False,
            packet_number=self.next_pn,
            packet_type=QuicPacketType.ONE_RTT,
            sent_time=self.now,
            sent_bytes=MSS,
        )
        self.next_pn += 1
        return packet

    def app_limited_round(self, rtt: float) -> None:
        """One round trip in which the application sends one packet and says it has no more."""
        self.cc.note_app_limited()
        packet = self._packet()
        self.cc.on_packet_sent(packet=packet)
        self.now += rtt
        self._deliver()
        self.cc.on_packet_acked(now=self.now, packet=packet)
        self.cc.on_rtt_measurement(now=self.now, rtt=rtt)

    def _deliver(self) -> None:
        while self._events and self._events[0][0] <= self.now:
            when, _, lost, packet = heapq.heappop(self._events)
            if lost:
                self.cc.on_packets_lost(now=when, packets=[packet])
            else:
                self.delivered_bytes += packet.sent_bytes
                self.cc.on_packet_acked(now=when, packet=packet)
                assert packet.sent_time is not None
                self.cc.on_rtt_measurement(now=when, rtt=when - packet.sent_time)

    def goodput(self, seconds: float) -> float:
        before = self.delivered_bytes
        self.run(seconds)
        return (self.delivered_bytes - before) / seconds


RATE = 12_500_000 / 8 * 8  # 100 Mbit/s in bytes/s
RTT = 0.040


def test_states_follow_the_table_and_the_model_finds_the_link() -> None:
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE, rtt=RTT)
    link.run(3.0)
    assert link.states[:3] == [BbrState.STARTUP, BbrState.DRAIN, BbrState.PROBE_BW]
    assert cc.btlbw == pytest.approx(RATE, rel=0.1)
    assert cc.rtprop == pytest.approx(RTT, rel=0.1)
    assert cc.pacing_gain in PACING_GAIN_CYCLE and cc.cwnd_gain == 2.0
    # in steady state the queue stays short: about the BDP in flight, not a full cwnd of Reno
    assert cc.rtprop is not None
    assert cc.congestion_window <= 2 * RATE * cc.rtprop + 4 * MSS
    assert link.goodput(2.0) == pytest.approx(RATE, rel=0.1)


def test_gains_per_state() -> None:
    cc = BbrCongestionControl(max_datagram_size=MSS)
    assert (cc.pacing_gain, cc.cwnd_gain) == (HIGH_GAIN, HIGH_GAIN)
    assert pytest.approx(1 / HIGH_GAIN) == DRAIN_GAIN


@pytest.mark.parametrize("loss", [0.01, 0.02, 0.05])
def test_random_loss_does_not_shrink_the_model_where_reno_collapses(loss: float) -> None:
    """The point of BBRv1 for the outer connection: 2 % random loss keeps the link busy (Reno
    halves at every loss event and falls far below it on a 40 ms path)."""
    bbr = Bottleneck(BbrCongestionControl(max_datagram_size=MSS), rate=RATE, rtt=RTT, loss=loss)
    bbr.run(3.0)
    reno = Bottleneck(RenoCongestionControl(max_datagram_size=MSS), rate=RATE, rtt=RTT, loss=loss)
    reno.run(3.0)
    bbr_goodput, reno_goodput = bbr.goodput(3.0), reno.goodput(3.0)
    assert bbr_goodput >= 0.8 * RATE * (1 - loss)
    assert reno_goodput < 0.5 * bbr_goodput


def test_probe_rtt_after_ten_seconds_without_a_lower_rtt() -> None:
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE / 10, rtt=RTT)
    link.run(12.0)
    assert BbrState.PROBE_RTT in link.states
    after = link.states[link.states.index(BbrState.PROBE_RTT) + 1]
    assert after is BbrState.PROBE_BW  # the pipe was full: back to probing bandwidth
    assert cc.state is BbrState.PROBE_BW


def test_probe_rtt_cuts_the_window_to_four_packets() -> None:
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE / 10, rtt=RTT)
    windows: list[int] = []
    for _ in range(24_000):  # 12 s in 0.5 ms steps
        link.run(0.0005)
        if cc.state is BbrState.PROBE_RTT:
            windows.append(cc.congestion_window)
    assert windows and min(windows) == 4 * MSS


def test_app_limited_samples_do_not_lower_the_estimate() -> None:
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE, rtt=RTT)
    link.run(2.0)
    estimate = cc.btlbw
    # the application sends one packet per RTT and says so
    for _ in range(40):
        link.app_limited_round(RTT)
    assert cc.btlbw >= 0.9 * estimate


def test_max_filter_forgets_after_its_window() -> None:
    f = MaxFilter(window=10)
    f.update(0, 100.0)
    f.update(5, 50.0)
    assert f.value == 100.0
    f.update(10, 40.0)  # round 0 has left the window
    assert f.value == 50.0
    f.update(16, 10.0)
    assert f.value == 40.0  # round 10 is still inside
    f.update(20, 10.0)
    assert f.value == 10.0


def test_an_app_limited_start_does_not_end_startup() -> None:
    """Rounds in which the sender had little to send (a tunnel before its inner flow ramps up)
    say nothing about the pipe: STARTUP must not end on them (Linux tcp_bbr.c,
    bbr_check_full_bw_reached, skips app-limited samples). Ending it there left the model at the
    idle rate: measured through the real tunnel at 100 ms RTT, inner TCP got 0.46 of 50 Mbit/s."""
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE, rtt=0.100)
    for _ in range(10):  # ten round trips of one packet each, the sender saying it is idle
        link.app_limited_round(0.100)
    assert cc.state is BbrState.STARTUP
    link.run(3.0)  # then greedy: the model finds the link within a few round trips
    assert link.goodput(1.0) >= 0.8 * RATE


def test_a_new_connection_does_not_start_in_probe_rtt() -> None:
    """The RTprop window starts at the first RTT sample, whatever the clock reads (a monotonic
    clock is far from 0): the first ACKs of a connection must not send it to PROBE_RTT."""
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE, rtt=RTT, now=5000.0)
    link.run(0.5)
    assert BbrState.PROBE_RTT not in link.states, link.states


def test_max_filter_keeps_the_windows_maximum_when_one_rounds_samples_expire_together() -> None:
    """A review's sequence: four falling samples in round 0, ~98 in rounds 1-9, then 75 in
    round 10. The 10-round maximum is 98; the three-sample filter kept round 0's three best,
    dropped the newer 98s, and read 75 once round 0 expired."""
    f = MaxFilter(window=10)
    for value in (100.0, 99.5, 99.0, 98.7):
        f.update(0, value)
    for round_count in range(1, 10):
        f.update(round_count, 98.0 - round_count * 0.01)
    f.update(10, 75.0)
    assert f.value == pytest.approx(97.99)


def test_probe_rtt_does_not_lower_the_bandwidth_estimate() -> None:
    """PROBE_RTT's rounds at 4 packets measure the probe, not the path (draft §4.3.5): on a
    10 Mbit/s, 10 ms path they brought the estimate to a third of the link's every 10 s."""
    rate = 10e6 / 8
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=rate, rtt=0.010)
    estimates: list[float] = []
    for _ in range(24_000):  # 12 s in 0.5 ms steps
        link.run(0.0005)
        if BbrState.PROBE_RTT in link.states:
            estimates.append(cc.btlbw)
    assert estimates, "no PROBE_RTT within 12 s"
    assert min(estimates) >= 0.9 * rate


def test_the_first_rtt_sample_sets_startups_pacing_rate_from_the_window() -> None:
    """BBRInitPacingRate (draft §4.2.1): 2.885 x the window per RTT; a first bandwidth sample
    of one packet does not lower it in STARTUP."""
    cc = BbrCongestionControl(max_datagram_size=MSS)
    cc.on_rtt_measurement(now=1.0, rtt=0.050)
    initial = HIGH_GAIN * cc.congestion_window / 0.050
    assert cc.pacing_rate == pytest.approx(initial)
    link = Bottleneck(cc, rate=RATE, rtt=0.050, now=1.0)
    link.app_limited_round(0.050)
    assert cc.pacing_rate is not None and cc.pacing_rate >= initial


def test_until_the_pipe_is_full_it_paces_at_least_its_window_per_rtprop() -> None:
    """BBRInitPacingRate's rule kept while STARTUP's window grows (bbr.py, "Under a tunnel's
    inner slow start"); once the pipe is full, the gain over BtlBw alone."""
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE, rtt=RTT)
    link.run(0.2)
    assert cc.state is BbrState.STARTUP and cc.rtprop is not None
    # set on the last ACK, before that ACK grew the window by a packet
    window_floor = HIGH_GAIN * (cc.congestion_window - MSS) / cc.rtprop
    assert cc.pacing_rate is not None and cc.pacing_rate >= window_floor > HIGH_GAIN * cc.btlbw
    link.run(3.0)
    assert cc.state is BbrState.PROBE_BW
    assert cc.pacing_rate == pytest.approx(cc.pacing_gain * cc.btlbw)


def test_persistent_congestion_restarts_pacing_from_the_small_window() -> None:
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE, rtt=RTT)
    link.run(2.0)
    assert cc.pacing_rate is not None and cc.pacing_rate > 0.5 * RATE
    cc.on_persistent_congestion()
    assert cc.pacing_rate is None  # the pacer goes by the 4-packet window meanwhile
    cc.on_rtt_measurement(now=link.now, rtt=RTT)
    assert cc.pacing_rate == pytest.approx(HIGH_GAIN * 4 * MSS / RTT)


def test_sending_again_after_a_long_idle_period_does_not_enter_probe_rtt() -> None:
    """Nothing sent for 11 s (the sender said it had nothing): RTprop's 10 s window expired
    only because nothing was measured. The first sample after the restart re-measures it;
    before, the next ACK cut the window to 4 packets for 200 ms (Linux skips PROBE_RTT on an
    idle restart)."""
    cc = BbrCongestionControl(max_datagram_size=MSS)
    link = Bottleneck(cc, rate=RATE, rtt=RTT)
    link.run(2.0)
    cc.note_app_limited()  # the application ran out of data: the rest drains
    link.now += 1.0
    link._deliver()
    assert cc.bytes_in_flight == 0
    link.now += 11.0
    for _ in range(5):
        link.app_limited_round(RTT)
        assert cc.state is not BbrState.PROBE_RTT
    assert cc.rtprop == pytest.approx(RTT)
