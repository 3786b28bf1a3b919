"""The video workload's player logic, pure: the bitrate ladder, the ABR rule and the playout
buffer's accounting (no sockets, no clock: times are passed in, in seconds on any one clock).

The video: fixed-duration segments of SEGMENT_S = 2 s, each offered at every rate of the
ladder LADDER_MBPS (1, 2.5, 5, 8, 16 Mbit/s: roughly 360p to 4K in common encoding ladders; the
numbers are ours). Segments are constant-bitrate: a segment at rate R is exactly
R x SEGMENT_S / 8 bytes (segment_bytes). Real encoders are variable-bitrate, so real segments
of one rate vary around that size; we do not model that.

The ABR rule is the rate-based ("RB") rule as the ABR literature defines it: predict the
throughput as the harmonic mean of the last HISTORY = 5 segments' download throughputs (the
predictor of Yin et al., "A Control-Theoretic Approach for Dynamic Adaptive Video Streaming
over HTTP", SIGCOMM 2015), and pick the highest rate not above the prediction (the RB baseline
of Mao et al., "Neural Adaptive Video Streaming with Pensieve", SIGCOMM 2017, §5.1; its
simulator computes the same harmonic mean of the past 5 chunks). A segment's throughput is its
bytes over the time from sending its request to its last byte (so one round trip is in it).
The first segment, with nothing measured yet, is at the lowest rate (our choice).

Why this rule and not the buffer-based BBA-0 (Huang et al., SIGCOMM 2014): BBA-0's published
reservoir and cushion (90 s and 126 s of a 240 s buffer) belong to sessions of many minutes;
sessions of tens of seconds, as the workload runs, would need them scaled down, and the scaling
would be ours, not the paper's. The rate rule's one parameter (5 segments) fits as published,
and its choice follows the throughput the path gives, which is what the modes are compared on.
The harmonic mean weighs slow samples most, so one fast segment does not pull the rate up.

Playout (Playout): playback starts when the first segment has arrived (the startup delay is
from the first request to then). It plays in real time from the buffer; when the buffer
empties a stall begins, and playback resumes when the next segment arrives (as at startup).
The startup wait is not a stall. A stall still going at the end of the session counts, up to
the end. The player fetches a segment only when the buffer has room for it below the buffer
goal (BUFFER_GOAL_S, 30 s: the forward-buffer goal of video.js's http-streaming player,
GOAL_BUFFER_LENGTH; a workload parameter).

Per session (VideoMetrics): the mean bitrate played (the rates weighted by the seconds of each
actually played), the number of switches (rate changes between consecutive segments played),
the number of stalls and their total time, the startup delay. No composite QoE score: the
published linear QoE (Yin et al. 2015) weighs these with coefficients tied to its own bitrate
ladder, and carrying them over to this ladder would be our choice, not the paper's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

LADDER_MBPS: tuple[float, ...] = (1.0, 2.5, 5.0, 8.0, 16.0)
SEGMENT_S = 2.0
HISTORY = 5  # segments in the throughput prediction (Yin et al. 2015, Mao et al. 2017)
BUFFER_GOAL_S = 30.0
# what float arithmetic on play times leaves over: no stall, no segment, of this length
_EPSILON_S = 1e-9


def segment_bytes(rate_mbps: float, segment_s: float = SEGMENT_S) -> int:
    """The size of one constant-bitrate segment of `segment_s` at `rate_mbps`."""
    return round(rate_mbps * 1e6 * segment_s / 8)


def harmonic_mean(values: Sequence[float]) -> float:
    """The harmonic mean of positive values (0.0 if any is 0: nothing came through)."""
    if not values:
        raise ValueError("the harmonic mean of no values is undefined.")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def predicted_mbps(throughputs_mbps: Sequence[float], history: int = HISTORY) -> float | None:
    """The throughput prediction: the harmonic mean of the last `history` samples (None: no
    sample yet)."""
    if not throughputs_mbps:
        return None
    return harmonic_mean(throughputs_mbps[-history:])


def choose_rung(
    throughputs_mbps: Sequence[float],
    ladder: Sequence[float] = LADDER_MBPS,
    history: int = HISTORY,
) -> int:
    """The ladder index of the next segment (module docstring: the rate-based rule): the
    highest rate not above the predicted throughput; the lowest when nothing is measured yet or
    every rate is above the prediction."""
    prediction = predicted_mbps(throughputs_mbps, history)
    if prediction is None:
        return 0
    fitting = [i for i, rate in enumerate(ladder) if rate <= prediction]
    return fitting[-1] if fitting else 0


@dataclass
class _Buffered:
    rate_mbps: float
    left_s: float
    started: bool = False


@dataclass
class VideoMetrics:
    """One session's figures (module docstring); None where nothing was played."""

    segments: int
    played_s: float
    mean_bitrate_mbps: float | None
    switches: int
    stalls: int
    stall_s: float
    startup_s: float | None

    def as_row(self) -> dict[str, float | int | None]:
        return {
            "video_segments": self.segments,
            "video_played_s": self.played_s,
            "video_bitrate_mbps": self.mean_bitrate_mbps,
            "video_switches": self.switches,
            "video_stalls": self.stalls,
            "video_stall_s": self.stall_s,
            "video_startup_s": self.startup_s,
        }


@dataclass
class Playout:
    """The playout buffer of one session, advanced by the times things happen (sans I/O).

    `origin` is when the session began (its first request). Call `segment_arrived(now, rate)`
    as each segment's last byte arrives, `level(now)` for the buffer's content in seconds, and
    `finish(end)` once. Times must not go backwards."""

    origin: float
    clock: float = field(init=False)
    playing: bool = False
    started_at: float | None = None
    stalls: int = 0
    stall_s: float = 0.0
    segments: int = 0
    stall_since: float | None = None
    played_rates: list[float] = field(default_factory=list)  # each segment that began playing
    played_s: dict[float, float] = field(default_factory=dict)  # seconds played per rate
    queue: deque[_Buffered] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.clock = self.origin

    def advance(self, now: float) -> None:
        """Play from the buffer up to `now`; a stall begins where the buffer runs dry."""
        if now < self.clock:
            raise ValueError(f"time went backwards: {now} < {self.clock}.")
        left = now - self.clock
        while self.playing and left > _EPSILON_S:
            if not self.queue:
                # the buffer ran dry `left` seconds ago: a stall from then
                self.playing = False
                self.stalls += 1
                self.stall_since = now - left
                break
            head = self.queue[0]
            if not head.started:
                head.started = True
                self.played_rates.append(head.rate_mbps)
            take = min(left, head.left_s)
            head.left_s -= take
            left -= take
            self.played_s[head.rate_mbps] = self.played_s.get(head.rate_mbps, 0.0) + take
            if head.left_s <= _EPSILON_S:
                self.queue.popleft()
        self.clock = now

    def level(self, now: float) -> float:
        """Seconds of content in the buffer at `now`."""
        self.advance(now)
        return sum((b.left_s for b in self.queue), 0.0)

    def segment_arrived(self, now: float, rate_mbps: float, segment_s: float = SEGMENT_S) -> None:
        """A whole segment is in: playback starts (first segment) or resumes (after a stall)."""
        self.advance(now)
        self.queue.append(_Buffered(rate_mbps, segment_s))
        self.segments += 1
        if self.started_at is None:
            self.started_at = now
            self.playing = True
        elif not self.playing:
            assert self.stall_since is not None
            self.stall_s += now - self.stall_since
            self.stall_since = None
            self.playing = True
        # a segment that arrives exactly as the buffer empties: play on, no stall
        self.advance(now)

    def finish(self, end: float) -> VideoMetrics:
        """The session's metrics at its end (a stall still going counts up to `end`)."""
        self.advance(end)
        if self.stall_since is not None:
            self.stall_s += end - self.stall_since
            self.stall_since = end
        if self.started_at is None:
            # Nothing ever played: the whole session waited (a review found such a session
            # reported with no stall, so a mode that failed read best on stalls).
            self.stall_s = max(0.0, end - self.origin)
        played = sum(self.played_s.values())
        mean = sum(r * s for r, s in self.played_s.items()) / played if played > 0 else None
        switches = sum(1 for a, b in pairwise(self.played_rates) if a != b)
        return VideoMetrics(
            segments=self.segments,
            played_s=played,
            mean_bitrate_mbps=mean,
            switches=switches,
            stalls=self.stalls,
            stall_s=self.stall_s,
            startup_s=None if self.started_at is None else self.started_at - self.origin,
        )


def session_metrics(
    arrivals: Sequence[tuple[float, float]], duration_s: float, segment_s: float = SEGMENT_S
) -> VideoMetrics:
    """The metrics of a session from its segments' (arrival time, rate in Mbit/s), times in
    seconds from the session's origin, over [0, duration_s]: the same accounting the player
    ran live (Playout)."""
    player = Playout(origin=0.0)
    for arrived_s, rate in sorted(arrivals):
        player.segment_arrived(arrived_s, rate, segment_s)
    return player.finish(max(duration_s, player.clock))
