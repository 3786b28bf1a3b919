"""How many clients a concentrator serves at once (`limits.max_clients`).

A concentrator with workers (README "Workers") is several processes, each with its own client
table; the limit is the operator's for the whole concentrator, so the count is kept in one
place all of them take from: `ClientSlots`. The core (tunnel/agents/concentrator.py) takes a
slot for each client it adds to its table and gives it back when it forgets the client. One
process counts with `LocalClientSlots`; workers share a `SharedClientSlots`
(tunnel/aio/workers.py), a counter in memory shared across their fork.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class ClientSlots(Protocol):
    """A bounded count of the clients served."""

    @property
    def capacity(self) -> int: ...

    def take(self) -> bool:
        """One slot for a new client; False when all are taken (the client is refused)."""
        ...

    def give_back(self) -> None:
        """A client taken before is gone."""
        ...


@dataclass
class LocalClientSlots:
    """The slots of one process."""

    capacity: int
    taken: int = 0

    def take(self) -> bool:
        if self.taken >= self.capacity:
            return False
        self.taken += 1
        return True

    def give_back(self) -> None:
        if self.taken <= 0:
            raise RuntimeError("a client slot was given back that was never taken")
        self.taken -= 1
