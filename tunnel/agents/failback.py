"""When the tunnel-mode client may fail back to an access it left because it failed: flap
damping, pure logic (the caller passes `now`).

Why: with `failback` the connection moves back to a more preferred access as soon as that
access answers again (README "Running the tunnel"). An access that fails again and again — a
WiFi at the edge of its coverage, stalling for 150 ms every second — then pulls the connection
to and fro: in memory, 20 migrations in 10 s, each one a new path whose congestion controller
and RTT estimate start over (RFC 9000 §9.4) and whose first packets the failure strands. The
drafts say when to report an access, not when to return to it (tunnel draft §6); the rule here
is BGP route-flap damping's idea (RFC 2439): the more often a route flapped lately, the longer
it is held back before it is used again.

The rule: the first failure of an access is failed back from at once (one outage, the case the
failover experiments measure, behaves as it always did). Each further failure within
FLAP_MEMORY of the one before holds the failback for FIRST_HOLD, then twice that, and so on up
to MAX_HOLD, counted from the failure. An access that did not fail again within FLAP_MEMORY
of its hold's end (when the connection could go back to it) starts again from its first
failure. The hold never keeps the connection on a failing access: it delays
only the move back to one that answers again, and failing over away from a failing access is
never held. When a hold ends, the access's verdict may be as old as the hold (it answered a
probe once, early in the hold): the connection moves back only after the access answered a
probe sent after the hold ended (`needs_probe`), so it does not land in the next stall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

FIRST_HOLD: Final = 1.0  # s: the hold after an access's second failure in a row
MAX_HOLD: Final = 30.0  # s: the hold doubles up to this
FLAP_MEMORY: Final = 60.0  # s: a failure this long after the previous one's hold counts as a first


@dataclass
class _Flaps:
    count: int  # failures in a row, each within FLAP_MEMORY of the one before
    last: float  # when the latest one was
    answered: float = float("-inf")  # when it last answered a probe


class FailbackDamping:
    """Which accesses the connection may not fail back to yet, and until when."""

    def __init__(
        self,
        first_hold: float = FIRST_HOLD,
        max_hold: float = MAX_HOLD,
        memory: float = FLAP_MEMORY,
    ) -> None:
        if not 0 < first_hold <= max_hold or memory <= 0:
            raise ValueError(
                f"flap damping needs 0 < first_hold <= max_hold and memory > 0, got "
                f"{first_hold}, {max_hold}, {memory}"
            )
        self.first_hold = first_hold
        self.max_hold = max_hold
        self.memory = memory
        self._flaps: dict[str, _Flaps] = {}
        self.holds = 0  # failbacks held back so far (each failure that set a hold counts once)

    def failed(self, name: str, now: float) -> None:
        """The connection left access `name` because it failed (link down, suspect or dead)."""
        flaps = self._flaps.get(name)
        # memory counts from when the connection could go back (the hold's end), so that a
        # long hold is not half the memory (a review: after a 30 s hold, 31 s of use reset it)
        if flaps is None or now - (flaps.last + self.hold(name)) > self.memory:
            self._flaps[name] = _Flaps(1, now)
            return
        flaps.count += 1
        flaps.last = now
        self.holds += 1

    def hold(self, name: str) -> float:
        """How long after its latest failure `name` is held back (0: not at all)."""
        flaps = self._flaps.get(name)
        if flaps is None or flaps.count < 2:
            return 0.0
        # 2**exponent overflows a float long after the cap: bound the exponent first
        exponent = min(flaps.count - 2, 64)
        return min(self.first_hold * 2.0**exponent, self.max_hold)

    def answered(self, name: str, now: float) -> None:
        """Access `name` answered a probe (PATH_RESPONSE) at `now`."""
        flaps = self._flaps.get(name)
        if flaps is not None:
            flaps.answered = now

    def needs_probe(self, name: str, now: float) -> bool:
        """Whether `name`'s hold has ended but it has answered no probe since: its verdict is
        from before, so probe it again before failing back to it."""
        flaps = self._flaps.get(name)
        hold = self.hold(name)
        if flaps is None or not hold:
            return False
        until = flaps.last + hold
        return until <= now and flaps.answered < until

    def held_until(self, name: str, now: float) -> float | None:
        """When the connection may fail back to `name`, if not yet at `now` (else None)."""
        flaps = self._flaps.get(name)
        if flaps is None:
            return None
        until = flaps.last + self.hold(name)
        return until if until > now else None


__all__ = ["FIRST_HOLD", "FLAP_MEMORY", "MAX_HOLD", "FailbackDamping"]
