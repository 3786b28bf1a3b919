"""BBR (version 1) congestion control for the outer QUIC connection.

Why BBR for a tunnel: aioquic ships only loss-based Reno and CUBIC, which halve the window at
every loss. A tunnel's outer connection sees the access link's random loss *and* carries inner
flows that run their own congestion control, so a loss-based outer controller makes a lossy
access slow twice over (README "Status": 2 % random loss left tunnelled UDP 6.8 of 20 Mbit/s).
BBR models the path instead — the bottleneck bandwidth (BtlBw, a windowed maximum of delivery
rate samples) and the round-trip propagation time (RTprop, a windowed minimum of RTT samples) —
and sends at pacing_gain x BtlBw with at most cwnd_gain x BDP in flight, so random loss alone
does not shrink it.

Version 1, not 2 or 3: BBRv2/v3 add a loss threshold (an inflight bound cut once a round loses
more than 2 % of its packets), which sits exactly on the lab's 2 % test point and would bring
back the collapse this controller is meant to avoid; a tunnel's inner flows are the ones that
should respond to loss. v1's known cost — it can keep loss high on a shared bottleneck with
shallow buffers — is measured by the goodput experiment rather than assumed away.

The algorithm follows draft-cardwell-iccrg-bbr-congestion-control-00 (§4) and Linux
`tcp_bbr.c`, with the delivery-rate sampling of draft-cheng-iccrg-delivery-rate-estimation-02.
Simplifications, each deliberate: no packet-conservation cwnd during loss recovery (v1's
modulation exists for TCP's retransmissions; DATAGRAM frames are never retransmitted by QUIC);
no long-term bandwidth ("policer") mode; app-limited samples are marked when the caller says
the sender ran out of data (`note_app_limited`, from tunnel/protocol/quic_ext.py).

The state machine (§4.3), as a table; gains are applied while in the state:

    state      pacing gain          cwnd gain   leaves when                       to
    STARTUP    2/ln 2 (2.885)       2/ln 2      BtlBw grew < 25 % in 3 rounds     DRAIN
    DRAIN      ln 2/2 (0.347)       2/ln 2      bytes in flight <= BDP            PROBE_BW
    PROBE_BW   1.25, 0.75, 1 (x6)   2           RTprop not refreshed for 10 s     PROBE_RTT
    PROBE_RTT  1                    4 packets   200 ms and one round at 4 pkts    PROBE_BW*

(* STARTUP if the pipe was never full.) In PROBE_BW each gain lasts one RTprop; the 0.75 phase
ends early once in flight <= BDP, and the 1.25 phase lasts at least until in flight reached
1.25 x BDP or a loss happened (§4.3.4.3).

Under a tunnel's inner slow start. The outer connection's demand is an inner flow's: a TCP
in slow start sends two packets for each one acknowledged, its window doubling each round,
while BtlBw is measured over at least one RTprop and so trails that demand by a round.
Paced at 2.885 x that estimate, the doubled rounds were stretched (20-80 packets took 53-71
ms to cross a 50 ms path in tests/unit/test_congestion.py's model), and Linux's HyStart reads
an ACK train longer than half the minimum RTT as a full pipe: behind
an outer BBR on a 50 Mbit/s, 100 ms path inner Cubic left slow start at 160-190 packets of
the path's 430 (goodput experiment; with CoDel on the datagram queue the queue this built
cost a drop, and the inner crawled at 17 Mbit/s). Until the pipe is full the pacing rate is
therefore never below the gain over the window per RTprop: BBRInitPacingRate's rule
(§4.2.1), kept while STARTUP's window grows. That window is bounded by 2.885 x the BDP
estimate, so the bursts it allows are no larger than STARTUP's own; a greedy sender, whose
estimate keeps up, is barely affected (test_bbr.py's bottleneck at 10, 40 and 100 ms: the same
peak queue and flight, STARTUP over within 11 ms of before). Landed first on 2026-12-07 and
reverted for starving WiFi in session mode with BBR on WiFi; that starvation came without the
floor too (2 of 10 runs either way, 2026-12-08) and is the scheduler's: it ranks the loss-based
5G path by a window it never fills (results/README.md, "The scheduler's rate of a loss-based
path").

Sans-I/O: aioquic calls it with `now` and packets; it never reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from aioquic.quic.congestion.base import QuicCongestionControl
from aioquic.quic.packet_builder import QuicSentPacket

HIGH_GAIN: Final = 2 / math.log(2)  # §4.3.1.1: the smallest gain that doubles per round
DRAIN_GAIN: Final = 1 / HIGH_GAIN
PROBE_BW_CWND_GAIN: Final = 2.0
PACING_GAIN_CYCLE: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BTLBW_FILTER_ROUNDS: Final = 10  # §4.1.1.3: a max over the last 10 round trips
RTPROP_FILTER_SECONDS: Final = 10.0  # §4.1.2.3
PROBE_RTT_DURATION: Final = 0.2  # seconds
FULL_BW_GROWTH: Final = 1.25  # §4.3.2: the pipe is full when BtlBw grew less than 25 % ...
FULL_BW_ROUNDS: Final = 3  # ... three rounds in a row
MIN_PIPE_PACKETS: Final = 4  # cwnd floor, and the PROBE_RTT cwnd
INITIAL_WINDOW_PACKETS: Final = 10  # RFC 9002 §7.2


class BbrState(Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"
    PROBE_RTT = "probe_rtt"


GAINS: Final[dict[BbrState, tuple[float, float]]] = {
    # state: (pacing gain, cwnd gain); PROBE_BW's pacing gain cycles, PROBE_RTT's cwnd is fixed
    BbrState.STARTUP: (HIGH_GAIN, HIGH_GAIN),
    BbrState.DRAIN: (DRAIN_GAIN, HIGH_GAIN),
    BbrState.PROBE_BW: (1.0, PROBE_BW_CWND_GAIN),
    BbrState.PROBE_RTT: (1.0, 1.0),
}


@dataclass
class _SentState:
    """What the delivery-rate estimator remembers of a packet until it is acked or lost."""

    delivered: int
    delivered_time: float
    first_sent_time: float
    app_limited: bool
    sent_time: float
    size: int


class MaxFilter:
    """The maximum of the samples of the last `window` rounds, exact: each round's best sample
    is kept while no later round's is better (a monotone queue, oldest and best first), so at
    most `window` entries and O(1) amortised per sample.

    Not Linux's three-sample win_minmax, which approximates; a review found this filter's
    earlier form dropping the newest of four candidates, so that when three of one round
    expired together the estimate fell to the current sample (75 where the 10-round maximum
    was 98)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._samples: deque[tuple[int, float]] = deque()  # (round, value), values decreasing

    @property
    def value(self) -> float:
        return self._samples[0][1] if self._samples else 0.0

    def update(self, round_count: int, value: float) -> None:
        samples = self._samples
        while samples and samples[-1][1] <= value:
            samples.pop()  # never the maximum again: the new sample is as good and outlives it
        if not samples or samples[-1][0] != round_count:
            samples.append((round_count, value))  # (else: a better one of this round is kept)
        while round_count - samples[0][0] >= self.window:
            samples.popleft()


class BbrCongestionControl(QuicCongestionControl):
    """BBRv1 for aioquic's loss recovery (register with aioquic's congestion registry; see the
    module docstring)."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.max_datagram_size = max_datagram_size
        self.state = BbrState.STARTUP
        self.pacing_gain, self.cwnd_gain = GAINS[BbrState.STARTUP]
        self.btlbw_filter = MaxFilter(BTLBW_FILTER_ROUNDS)
        self.rtprop: float | None = None
        self.rtprop_stamp = 0.0
        self.rtprop_expired = False
        # delivery-rate estimation (draft-cheng §3)
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.app_limited_until = 0  # delivered count until which samples are app-limited
        self._sent: dict[int, _SentState] = {}
        # rounds (§4.1.1.3)
        self.round_count = 0
        self.next_round_delivered = 0
        self.round_start = False
        # full pipe detection (§4.3.2)
        self.filled_pipe = False
        self.full_bw = 0.0
        self.full_bw_count = 0
        # PROBE_BW gain cycling
        self.cycle_index = 0
        self.cycle_stamp = 0.0
        self.loss_in_cycle = False
        # PROBE_RTT
        self.idle_restart = False  # sending resumed from idle; cleared by the next RTT sample
        self.probe_rtt_done_stamp: float | None = None
        self.probe_rtt_round_done = False
        self.prior_cwnd = 0
        self.pacing_rate: float | None = None  # bytes/s; None until the first RTT sample

    # -- the model -----------------------------------------------------------------------------

    @property
    def btlbw(self) -> float:
        """Bottleneck bandwidth estimate in bytes per second (0 before the first sample)."""
        return self.btlbw_filter.value

    def bdp(self, gain: float = 1.0) -> int:
        """gain x BtlBw x RTprop in bytes (the initial window while either is unknown)."""
        if self.rtprop is None or self.btlbw == 0:
            return INITIAL_WINDOW_PACKETS * self.max_datagram_size
        return int(gain * self.btlbw * self.rtprop)

    def note_app_limited(self) -> None:
        """The sender has nothing more to send now: samples until what is in flight is
        delivered measure the application, not the path (draft-cheng §3.4)."""
        self.app_limited_until = max(self.delivered + self.bytes_in_flight, 1)

    # -- aioquic's interface -------------------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        sent_time = packet.sent_time if packet.sent_time is not None else self.delivered_time
        if self.bytes_in_flight == 0:
            # a new flight: intervals start here (draft-cheng §3.2)
            self.first_sent_time = sent_time
            self.delivered_time = sent_time
            self.idle_restart = self.app_limited_until != 0
        self.bytes_in_flight += packet.sent_bytes
        self._sent[packet.packet_number] = _SentState(
            delivered=self.delivered,
            delivered_time=self.delivered_time,
            first_sent_time=self.first_sent_time,
            # as Linux's tcp_rate_skb_sent: app-limited while the mark is set at all (it is
            # set to delivered + in flight, which is 0 only for an idle, fresh connection: 1)
            app_limited=self.app_limited_until != 0,
            sent_time=sent_time,
            size=packet.sent_bytes,
        )

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        state = self._sent.pop(packet.packet_number, None)
        self.delivered += packet.sent_bytes
        self.delivered_time = now
        if state is None:
            return
        self.first_sent_time = state.sent_time
        # the mark clears once everything in flight when it was set is delivered (tcp_rate_gen)
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        # round trips: one ends when a packet sent after the last round start is acked
        self.round_start = state.delivered >= self.next_round_delivered
        if self.round_start:
            self.next_round_delivered = self.delivered
            self.round_count += 1
        self._sample_bandwidth(now, state)
        self._update_state(now, state.app_limited)
        self._set_pacing_rate()
        self._set_cwnd(packet.sent_bytes)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(packet.packet_number, None)
            self.loss_in_cycle = True

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop(packet.packet_number, None)

    def on_persistent_congestion(self) -> None:
        # RFC 9002 §7.6.2: the path may have changed entirely (e.g. a migration): forget the
        # bandwidth (keep RTprop, its own filter expires it), restart from a minimal window and
        # let STARTUP find the new bandwidth, paced again from that window (the old rate, up
        # to 2.885 x the old bandwidth, stayed in force until STARTUP ended).
        self.congestion_window = MIN_PIPE_PACKETS * self.max_datagram_size
        self.pacing_rate = None
        self.btlbw_filter = MaxFilter(BTLBW_FILTER_ROUNDS)
        self.filled_pipe = False
        self.full_bw = 0.0
        self.full_bw_count = 0
        self._enter(BbrState.STARTUP, 0.0)

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        # The window starts with the first sample (Linux stamps min_rtt at connection start):
        # measured against a stamp of 0 on a monotonic clock it was "expired" at once and the
        # next ACK put a connection that had just begun into PROBE_RTT.
        expired = self.rtprop is not None and now > self.rtprop_stamp + RTPROP_FILTER_SECONDS
        if self.rtprop is None or rtt <= self.rtprop or expired:
            self.rtprop = rtt
            self.rtprop_stamp = now
        # After an idle period the window expired only because nothing was measured: the
        # first sample re-measures RTprop without a PROBE_RTT (Linux's idle_restart; a review
        # found the burst after every pause over 10 s cut to 4 packets for 200 ms).
        self.rtprop_expired = expired and not self.idle_restart
        self.idle_restart = False
        if self.pacing_rate is None:
            # BBRInitPacingRate (draft §4.2.1, Linux bbr_init_pacing_rate_from_rtt): STARTUP's
            # gain over the window per RTT, from which STARTUP only raises it; without it the
            # first bandwidth sample, of one or two packets, set the starting rate.
            self._set_pacing_rate()

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(
            bbr_state=self.state.value,
            btlbw_bytes_per_s=round(self.btlbw),
            rtprop_ms=None if self.rtprop is None else round(self.rtprop * 1000, 3),
            pacing_rate=None if self.pacing_rate is None else round(self.pacing_rate),
        )
        return data

    # -- the algorithm -------------------------------------------------------------------------

    def _sample_bandwidth(self, now: float, state: _SentState) -> None:
        delivered = self.delivered - state.delivered
        send_elapsed = state.sent_time - state.first_sent_time
        ack_elapsed = now - state.delivered_time
        interval = max(send_elapsed, ack_elapsed)
        # An interval shorter than RTprop is an ACK compression artefact (draft-cheng §3.3).
        if interval <= 0 or (self.rtprop is not None and interval < self.rtprop):
            return
        rate = delivered / interval
        # App-limited samples may only raise the estimate (draft-cheng §3.4).
        if not state.app_limited or rate >= self.btlbw:
            self.btlbw_filter.update(self.round_count, rate)

    def _enter(self, state: BbrState, now: float) -> None:
        self.state = state
        self.pacing_gain, self.cwnd_gain = GAINS[state]
        if state is BbrState.PROBE_BW:
            # Linux starts at a random phase except 0.75; deterministic here: phase 2 (gain 1)
            # keeps tests exact and does not matter for one connection per path.
            self.cycle_index = 2
            self.cycle_stamp = now
            self.pacing_gain = PACING_GAIN_CYCLE[self.cycle_index]

    def _update_state(self, now: float, app_limited: bool) -> None:
        self._check_full_pipe(app_limited)
        if self.state is BbrState.STARTUP and self.filled_pipe:
            self._enter(BbrState.DRAIN, now)
        if self.state is BbrState.DRAIN and self.bytes_in_flight <= self.bdp():
            self._enter(BbrState.PROBE_BW, now)
        if self.state is BbrState.PROBE_BW:
            self._advance_cycle(now)
        self._check_probe_rtt(now)

    def _check_full_pipe(self, app_limited: bool) -> None:
        # A round whose sample is app-limited says nothing about the pipe (Linux tcp_bbr.c,
        # bbr_check_full_bw_reached): a tunnel is app-limited until its inner flows ramp up,
        # and ending STARTUP on those rounds would leave the model at the idle rate.
        if self.filled_pipe or not self.round_start or app_limited:
            return
        if self.btlbw >= self.full_bw * FULL_BW_GROWTH:
            self.full_bw = self.btlbw
            self.full_bw_count = 0
            return
        self.full_bw_count += 1
        if self.full_bw_count >= FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _advance_cycle(self, now: float) -> None:
        rtprop = self.rtprop or 0.0
        full_length = now - self.cycle_stamp > rtprop
        gain = self.pacing_gain
        if gain > 1.0:
            done = full_length and (self.loss_in_cycle or self.bytes_in_flight >= self.bdp(gain))
        elif gain < 1.0:
            done = full_length or self.bytes_in_flight <= self.bdp()
        else:
            done = full_length
        if done:
            self.cycle_index = (self.cycle_index + 1) % len(PACING_GAIN_CYCLE)
            self.cycle_stamp = now
            self.pacing_gain = PACING_GAIN_CYCLE[self.cycle_index]
            self.loss_in_cycle = False

    def _check_probe_rtt(self, now: float) -> None:
        if self.state is not BbrState.PROBE_RTT and self.rtprop_expired:
            self.prior_cwnd = self.congestion_window
            self._enter(BbrState.PROBE_RTT, now)
            self.probe_rtt_done_stamp = None
        if self.state is BbrState.PROBE_RTT:
            # What a round at 4 packets delivers is the probe's own rate, not the path's:
            # marked as app-limited, it cannot lower the estimate (draft §4.3.5, Linux
            # bbr_update_min_rtt). Unmarked, a review's 10 Mbit/s, 10 ms path left PROBE_RTT
            # estimating 3.4 Mbit/s, every 10 s.
            self.note_app_limited()
            floor = MIN_PIPE_PACKETS * self.max_datagram_size
            if self.probe_rtt_done_stamp is None and self.bytes_in_flight <= floor:
                self.probe_rtt_done_stamp = now + PROBE_RTT_DURATION
                self.probe_rtt_round_done = False
                self.next_round_delivered = self.delivered
            elif self.probe_rtt_done_stamp is not None:
                if self.round_start:
                    self.probe_rtt_round_done = True
                if self.probe_rtt_round_done and now > self.probe_rtt_done_stamp:
                    self.rtprop_stamp = now  # the minimum was just re-measured
                    self.rtprop_expired = False
                    self.congestion_window = max(self.congestion_window, self.prior_cwnd)
                    self._enter(BbrState.PROBE_BW if self.filled_pipe else BbrState.STARTUP, now)

    def _set_pacing_rate(self) -> None:
        rate = self.pacing_gain * self.btlbw
        if not self.filled_pipe and self.rtprop:
            # Until the pipe is full, never below the gain over the window per RTprop
            # (BBRInitPacingRate's rule, §4.2.1, kept while the window grows): see the module
            # docstring, "Under a tunnel's inner slow start".
            rate = max(rate, self.pacing_gain * self.congestion_window / self.rtprop)
        if rate <= 0:
            return
        # In STARTUP never pace below what was set: a sample from a small flight must not
        # slow the ramp (§4.2.1).
        if self.filled_pipe or self.pacing_rate is None or rate > self.pacing_rate:
            self.pacing_rate = rate

    def _set_cwnd(self, acked: int) -> None:
        """tcp_bbr.c's bbr_set_cwnd: toward cwnd_gain x BDP (+ 3 packets of room for ACK
        aggregation, its quantization budget) by what each ACK delivered; before the pipe is
        full it only grows, while below the target or the initial window was not delivered."""
        floor = MIN_PIPE_PACKETS * self.max_datagram_size
        if self.state is BbrState.PROBE_RTT:
            self.congestion_window = floor
            return
        target = self.bdp(self.cwnd_gain) + 3 * self.max_datagram_size
        cwnd = self.congestion_window
        if self.filled_pipe:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self.delivered < INITIAL_WINDOW_PACKETS * self.max_datagram_size:
            cwnd += acked
        self.congestion_window = max(cwnd, floor)


__all__ = [
    "GAINS",
    "PACING_GAIN_CYCLE",
    "BbrCongestionControl",
    "BbrState",
    "MaxFilter",
]
