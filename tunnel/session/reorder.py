"""Packet-Tag reordering for the tunnel session mode.

draft-piraux-intarea-quic-tunnel-session-00 §4.1.1 (Coordinate use of the Packet Tag) leaves the
meaning of the 16-bit Packet Tag to implementations and suggests a counter of the datagrams sent
over all connections of a session, so that the receiver can "distinguish, buffer and reorder"
packets that took different paths. This module implements exactly that choice:

* the sender stamps every datagram of a session with `PacketTagCounter.next()`, a session-wide
  sequence number modulo 2**16;
* the receiver feeds every datagram to a `ReorderBuffer`, which releases them in tag order.

Comparisons use serial-number arithmetic (RFC 1982 style) on 16 bits: tag `b` is *after* tag `a`
when `(b - a) mod 2**16` lies in 1..32767. As the draft says, only 32768 packets in flight can be
told apart; a tag 32768 or more ahead of the expected one is read as *behind* it.

The buffer never blocks forever: a packet that waited `timeout` seconds behind a gap makes the
buffer give up on that gap (the missing packets are presumed lost or very late). `now` is always
passed in by the caller, as in aioquic's sans-I/O core; `now` must never go backwards.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Generic, TypeVar

T = TypeVar("T")

TAG_MODULUS: Final = 1 << 16
"""The Packet Tag is a 16-bit field (session draft §4 The tunnel session mode)."""
TAG_HALF: Final = TAG_MODULUS // 2
"""Serial-number arithmetic tells apart at most this many tags in flight (session draft §4.1.1)."""

DEFAULT_CAPACITY: Final = 1024
DEFAULT_TIMEOUT: Final = 0.05
"""Gap timeout (seconds) until the paths' RTTs are known; `timeout_from_rtts` replaces it."""

MIN_TIMEOUT: Final = 0.005
MAX_TIMEOUT: Final = 0.5
RESEND_ACK_DELAY: Final = 0.025
"""A delayed ACK (RFC 9000 §18.2 max_ack_delay default): how much later a loss may be declared
than 9/8 of an RTT (timeout_from_rtts with cover_resend)."""
RTT_MARGIN_FRACTION: Final = 0.125
"""Share of the largest smoothed RTT added to the RTT spread as a jitter margin (see
`ReorderBuffer.timeout_from_rtts`)."""

# Per-tag memory of how the buffer last passed each tag, so that a packet arriving behind the
# expected tag can be told apart as a duplicate (already delivered) or late (its gap was skipped).
_PASSED_DELIVERED: Final = 1
_PASSED_SKIPPED: Final = 2
_SKIPPED_RUN: Final = memoryview(bytes((_PASSED_SKIPPED,)) * TAG_MODULUS)
_UNSEEN_RUN: Final = memoryview(bytes(TAG_MODULUS))
"""Source of `_passed` slice writes for a skipped gap (a view: slicing it copies nothing)."""
_COMPACT_SLACK: Final = 64
"""Stale index entries tolerated beyond twice the held packets before a rebuild."""


class OverflowPolicy(Enum):
    """What a full buffer does when one more out-of-order packet arrives."""

    SKIP_GAP = "skip-gap"
    """Give up on the oldest gap: release the buffered packets up to the lowest held tag (and the
    in-order run after it) early, and keep the new packet. The default: a full buffer means the
    missing packets are very likely lost, and dropping data that did arrive would turn one loss
    into many for the tunnelled transport."""
    DROP_NEW = "drop-new"
    """Drop the new packet and count it in `ReorderStats.overflow_dropped`. Keeps strict order at
    the price of losses; offered for experiments comparing the two."""


@dataclass
class ReorderStats:
    """Counters of one ReorderBuffer. All are packet counts except `gaps_skipped`."""

    delivered: int = 0
    """Packets released to the caller (in order, late, flushed or passed through)."""
    reordered: int = 0
    """Packets that arrived ahead of a gap and had to be held."""
    late: int = 0
    """Packets that arrived after the buffer had given up on their gap (released at once)."""
    duplicate: int = 0
    """Packets whose tag was already delivered or is already held (dropped)."""
    overflow_dropped: int = 0
    """Packets dropped because the buffer was full (only with OverflowPolicy.DROP_NEW)."""
    overflow_skips: int = 0
    """Times a full buffer gave up on a gap early (OverflowPolicy.SKIP_GAP)."""
    gaps_skipped: int = 0
    """Runs of consecutive missing tags that the buffer gave up on (timeout, overflow or flush)."""
    tags_skipped: int = 0
    """Missing tags given up on, i.e. packets presumed lost (each gap counts its length)."""


def serial_distance(from_tag: int, to_tag: int) -> int:
    """How many steps forward `to_tag` is from `from_tag`, modulo 2**16 (0..65535)."""
    return (to_tag - from_tag) % TAG_MODULUS


class PacketTagCounter:
    """Session-wide Packet Tag source for the sender: 0, 1, ..., 65535, 0, ...

    One counter is shared by all connections of a session, so that the tags record the order in
    which the session sent packets, whatever path each took (session draft §4.1.1).
    """

    def __init__(self, start: int = 0) -> None:
        if not 0 <= start < TAG_MODULUS:
            raise ValueError(f"a Packet Tag start value must be in 0..65535, got {start}")
        self._next = start

    def next(self) -> int:
        """The tag for the next packet sent in the session."""
        tag = self._next
        self._next = (tag + 1) % TAG_MODULUS
        return tag

    def peek(self) -> int:
        """The tag `next()` will return, without consuming it."""
        return self._next


class ReorderBuffer(Generic[T]):
    """Receiver-side reordering of session-mode datagrams by Packet Tag.

    Rules:

    * The first tag pushed starts the sequence. A packet behind the sequence start (reordered
      before the first one arrived) is treated as late.
    * A packet with the expected tag is released at once, with the held packets that follow it
      without a gap.
    * A packet ahead of the expected tag (1..32767 steps) is held, at most `capacity` packets.
    * A packet behind the expected tag (32768..65535 steps ahead) is *late* if the buffer gave up
      on it (released at once: a late packet still saves the tunnelled transport a retransmission)
      or a *duplicate* if it was already delivered (dropped). A second copy of a held packet is
      also a duplicate.
    * Each held packet waits at most `timeout` seconds: when the oldest one reaches its deadline
      the buffer gives up on every gap before it (`poll`, also run at the start of `push`).
    * When the buffer is full, `overflow` decides (see OverflowPolicy; default: skip the oldest
      gap, never drop data that arrived).
    * With `enabled=False` every packet passes straight through, in arrival order, for
      experiments that measure the effect of reordering; a second copy (a re-send or a
      duplicate of one that arrived) is still dropped as a duplicate: it was delivered twice,
      found by a review. The tag the farthest ahead so far marks where this lap of the tag
      space is; a tag up to half the space behind it is judged by whether it came this lap.

    Cost: O(log capacity) amortised per packet in every case, O(1) in order. A full buffer
    behind gaps that never fill (a lossy or hostile client) must not cost the concentrator more
    per packet than a few heap operations, so nothing here scans the held packets. Held packets
    are keyed by *position*, the tag unwrapped past 65535 (tag + 65536 x laps): a held tag is
    always 1..32767 steps ahead of the expected one, so its position is fixed when it arrives
    and positions order the held packets without wrap-around. A min-heap of positions gives the
    lowest held tag (overflow, flush, skipping); a FIFO of (arrival, position) gives the oldest
    held packet, i.e. the next deadline, because `now` never goes backwards. Both drop entries of
    released packets lazily and are compacted when stale entries outnumber live ones.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        enabled: bool = True,
        overflow: OverflowPolicy = OverflowPolicy.SKIP_GAP,
        adaptive: bool = False,
    ) -> None:
        """`adaptive`: the owner (TunnelSession) replaces `timeout` with one derived from the
        paths' RTTs as they change (timeout_from_rtts); otherwise `timeout` stays as given."""
        if not 1 <= capacity < TAG_HALF:
            raise ValueError(
                f"reorder buffer capacity must be in 1..{TAG_HALF - 1} packets "
                f"(16-bit tags tell apart at most {TAG_HALF} in flight), got {capacity}"
            )
        self.capacity: Final = capacity
        self.enabled: Final = enabled
        self.adaptive: Final = adaptive
        self.overflow: Final = overflow
        self._timeout = DEFAULT_TIMEOUT
        self.set_timeout(timeout)
        self.stats = ReorderStats()
        # Position (unwrapped tag) of the expected tag; None before the first push.
        self._expected: int | None = None
        # position -> item of every held packet (all positions are ahead of _expected).
        self._held: dict[int, T] = {}
        # Min-heap of held positions; entries below _expected were released (stale).
        self._by_tag: list[int] = []
        # (arrival time, position) in arrival order; entries not in _held are stale.
        self._by_arrival: deque[tuple[float, int]] = deque()
        # _PASSED_* of the last time the sequence moved past each tag (0: never, i.e. the tag
        # lies before the first tag seen).
        self._passed = bytearray(TAG_MODULUS)
        # enabled=False: the tag the farthest ahead so far (_pass_through)
        self._front: int | None = None

    @classmethod
    def from_setting(cls, timeout: float | None) -> ReorderBuffer[T]:
        """The buffer a `limits.reorder_timeout` setting asks for, the same on both programs:
        None follows the paths' RTTs (adaptive), 0 turns reordering off (packets are delivered
        as they arrive), a positive number is a fixed gap timeout in seconds."""
        if timeout is None:
            return cls(adaptive=True)
        if timeout == 0:
            return cls(enabled=False)
        return cls(timeout=timeout)

    @property
    def timeout(self) -> float:
        """Seconds a held packet waits for the gap before it to fill."""
        return self._timeout

    def set_timeout(self, seconds: float) -> None:
        """Change the gap timeout; deadlines of packets already held follow the new value."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(
                f"reorder timeout must be a finite number of seconds >= 0, got {seconds}"
            )
        self._timeout = seconds

    @staticmethod
    def timeout_from_rtts(rtts: Sequence[float], cover_resend: bool = False) -> float:
        """A gap timeout for a session whose paths have these smoothed RTTs (seconds).

        Packets sent back to back on two paths arrive at most about the difference of the paths'
        one-way delays apart. One-way delays are not known, so the RTT spread (max - min) is used
        as a safe upper bound, plus a margin of 1/8 of the largest RTT for jitter (the same share
        as the RTT smoothing gain of RFC 6298/9002). With `cover_resend` (the sender re-sends
        lost packets, issue 12), one smoothed RTT of the fastest path and RESEND_ACK_DELAY are
        added: a gap then waits for the loss to be declared — about 9/8 of an RTT after the
        packet left (RFC 9002 §6.1.2), later by the peer's ACK delay — and for the re-send to
        cross, i.e. for 9/8 of the slowest RTT plus a delayed ACK.
        The result is clamped to [5 ms, 500 ms]: below 5 ms, scheduling noise of the host alone
        reorders; above 500 ms, holding packets hurts the tunnelled transport more than a loss
        would. Without any RTT, the default timeout (50 ms) is returned.
        """
        for rtt in rtts:
            if not (math.isfinite(rtt) and rtt >= 0):
                raise ValueError(f"a path RTT must be a finite number of seconds >= 0, got {rtt}")
        if not rtts:
            return DEFAULT_TIMEOUT
        spread = max(rtts) - min(rtts)
        timeout = spread + RTT_MARGIN_FRACTION * max(rtts)
        if cover_resend:
            timeout += min(rtts) + RESEND_ACK_DELAY
        return min(MAX_TIMEOUT, max(MIN_TIMEOUT, timeout))

    def __len__(self) -> int:
        """Packets currently held."""
        return len(self._held)

    @property
    def expected_tag(self) -> int | None:
        """The tag the buffer waits for next (None before the first push)."""
        return None if self._expected is None else self._expected % TAG_MODULUS

    def next_deadline(self) -> float | None:
        """When `poll` must next be called (None when nothing is held)."""
        oldest = self._oldest_held()
        return None if oldest is None else oldest[0] + self._timeout

    def push(self, tag: int, item: T, now: float) -> list[T]:
        """Add the packet with this Packet Tag; return the items now releasable, in tag order."""
        if not 0 <= tag < TAG_MODULUS:
            raise ValueError(f"a Packet Tag is 16 bits (0..65535), got {tag}")
        if not self.enabled:
            return self._pass_through(tag, item)
        # In order with nothing held is the common case: it skips the deadline and run checks.
        released = self.poll(now) if self._held else []
        if self._expected is None:
            self._expected = tag
        distance = serial_distance(self._expected, tag)
        if distance == 0:
            self._release(item, released)
            self._advance_delivered()
            if self._held:
                self._release_in_order_run(released)
        elif distance < TAG_HALF:
            self._hold(self._expected + distance, item, now, released)
        else:
            self._receive_behind(tag, item, released)
        return released

    def poll(self, now: float) -> list[T]:
        """Give up on gaps whose oldest held packet waited `timeout`; return what that releases."""
        released: list[T] = []
        if not self.enabled:
            return released
        while (oldest := self._oldest_held()) is not None:
            arrival, position = oldest
            if now < arrival + self._timeout:
                break
            self._skip_to(position, released)
            self._release_in_order_run(released)
        return released

    def flush(self) -> list[T]:
        """Release everything held, in tag order, giving up on every gap (e.g. at session end)."""
        released: list[T] = []
        while self._held:
            self._skip_to(self._lowest_held(), released)
            self._release_in_order_run(released)
        return released

    # -- internals -------------------------------------------------------------------------

    def _pass_through(self, tag: int, item: T) -> list[T]:
        """enabled=False: deliver at once unless it is a second copy (class docstring). The
        tags passed when the front moves are marked unseen, one C-level copy per move, so each
        tag is written once per lap."""
        passed = self._passed
        front = self._front
        if front is None or 0 < (distance := serial_distance(front, tag)) < TAG_HALF:
            if front is not None:  # tags front+1 .. tag are this lap's from now on
                self._mark_run(front + 1, distance, _UNSEEN_RUN)
            self._front = tag
        elif passed[tag] == _PASSED_DELIVERED:
            self.stats.duplicate += 1
            return []
        passed[tag] = _PASSED_DELIVERED
        self.stats.delivered += 1
        return [item]

    def _mark_run(self, first: int, count: int, run: memoryview) -> None:
        """Write `run`'s byte into `_passed` for the `count` tags from `first` (taken modulo
        2**16; the run may wrap past 65535): one C-level copy, or two."""
        first %= TAG_MODULUS
        end = first + count
        if end <= TAG_MODULUS:
            self._passed[first:end] = run[:count]
        else:
            self._passed[first:] = run[: TAG_MODULUS - first]
            self._passed[: end - TAG_MODULUS] = run[: end - TAG_MODULUS]

    def _oldest_held(self) -> tuple[float, int] | None:
        """(arrival, position) of the held packet that arrived first, None when none is."""
        by_arrival = self._by_arrival
        while by_arrival:
            oldest = by_arrival[0]
            if oldest[1] in self._held:
                return oldest
            by_arrival.popleft()
        return None

    def _lowest_held(self) -> int:
        """Position of the lowest held tag; the buffer must hold a packet."""
        by_tag = self._by_tag
        # Released positions are all below the expected one, hence below every held position:
        # they surface at the top of the heap before any live entry.
        while by_tag[0] not in self._held:
            heapq.heappop(by_tag)
        return by_tag[0]

    def _release(self, item: T, released: list[T]) -> None:
        released.append(item)
        self.stats.delivered += 1

    def _advance_delivered(self) -> None:
        """Move the expected tag one step past a tag that was delivered."""
        assert self._expected is not None
        self._passed[self._expected % TAG_MODULUS] = _PASSED_DELIVERED
        self._expected += 1

    def _skip_missing(self, count: int) -> None:
        """Give up on the `count` missing tags starting at the expected one (one gap).

        The `_passed` write is one C-level copy of `count` bytes; each tag is written once per
        lap of the tag space, so this adds O(1) per tag passed, whatever the gaps look like."""
        assert self._expected is not None
        if count == 0:
            return
        self._mark_run(self._expected, count, _SKIPPED_RUN)
        self._expected += count
        self.stats.tags_skipped += count
        self.stats.gaps_skipped += 1

    def _release_in_order_run(self, released: list[T]) -> None:
        """Release held packets for as long as the expected tag is held."""
        held = self._held
        while self._expected in held:
            self._release(held.pop(self._expected), released)
            self._advance_delivered()

    def _skip_to(self, target: int, released: list[T]) -> None:
        """Give up on every missing tag before the held position `target`, releasing the held
        packets below it in order; stops with `target` as the expected tag (the caller then
        releases the run from it). Each released packet costs one heap pop."""
        assert self._expected is not None
        while (lowest := self._lowest_held()) < target:
            heapq.heappop(self._by_tag)
            self._skip_missing(lowest - self._expected)
            self._release(self._held.pop(lowest), released)
            self._advance_delivered()
        self._skip_missing(target - self._expected)

    def _hold(self, position: int, item: T, now: float, released: list[T]) -> None:
        held = self._held
        if position in held:
            self.stats.duplicate += 1
            return
        if len(held) >= self.capacity and self.overflow is OverflowPolicy.DROP_NEW:
            self.stats.overflow_dropped += 1
            return
        held[position] = item
        heapq.heappush(self._by_tag, position)
        self._by_arrival.append((now, position))
        self.stats.reordered += 1
        # SKIP_GAP: the new packet is held first, so that if it is the lowest tag the skip
        # releases it in its place rather than passing it by.
        while len(held) > self.capacity:
            self.stats.overflow_skips += 1
            self._skip_to(self._lowest_held(), released)
            self._release_in_order_run(released)
        self._compact()

    def _compact(self) -> None:
        """Drop stale index entries once they outnumber the held packets (amortised O(1): each
        rebuild removes more entries than it keeps)."""
        held = self._held
        limit = 2 * len(held) + _COMPACT_SLACK
        if len(self._by_tag) > limit:
            self._by_tag = [position for position in self._by_tag if position in held]
            heapq.heapify(self._by_tag)  # removing entries breaks the heap order
        if len(self._by_arrival) > limit:
            self._by_arrival = deque(entry for entry in self._by_arrival if entry[1] in held)

    def _receive_behind(self, tag: int, item: T, released: list[T]) -> None:
        if self._passed[tag] == _PASSED_DELIVERED:
            self.stats.duplicate += 1
            return
        # Its gap was given up on, or it predates the first tag seen: deliver it now, out of
        # order, and remember it so that another copy counts as a duplicate.
        self.stats.late += 1
        self._release(item, released)
        self._passed[tag] = _PASSED_DELIVERED
