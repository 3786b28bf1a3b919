"""Which access network each connection of a session runs over, as the concentrator infers it
from Access Reports (tunnel draft §6, tunnel-session draft §4.1).

The drafts never say which access a connection uses: a connection is just a QUIC connection
joined to the session, and an Access Report names an access, not a connection. Yet the
concentrator needs the mapping to "stop using an unavailable access". The rules, applied to
each report received on a connection whose access is still unknown:

* AVAILABLE for X: the connection is on X. A client announces its own access this way right
  after each join; an older connection of the session on X is *replaced* (the caller closes
  it): a client opens a second connection over the same access only after losing the first one
  (link down and up), and that one may never tell the concentrator it is dead.
* UNAVAILABLE for X: the report travelled over an access that works, so the connection is not
  on X; with the drafts' two Access IDs (3GPP, non-3GPP) it is on the other one, and a single
  other connection whose access is still unknown is on X.

A connection keeps the first access inferred for it; reports received on a connection whose
access is known only change availability. Sans-I/O and pure.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tunnel.wire.messages import AccessId

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class AccessInference(Generic[K]):
    """What one report teaches: accesses to record, and older connections it replaces."""

    assign: dict[K, AccessId] = field(default_factory=dict)
    replaced: tuple[K, ...] = ()


def infer_access(
    members: Mapping[K, AccessId | None], reporter: K, access: AccessId, available: bool
) -> AccessInference[K]:
    """Apply the module's rules to a report (`access`, `available`) received on `reporter`,
    one of the session's `members` (connection -> access, None while unknown)."""
    if reporter not in members or members[reporter] is not None:
        return AccessInference()
    if available:
        replaced = tuple(m for m, a in members.items() if a is access and m != reporter)
        return AccessInference({reporter: access}, replaced)
    taken = set(members.values())
    assign: dict[K, AccessId] = {}
    other = next(a for a in AccessId if a is not access)
    if other not in taken:
        assign[reporter] = other
    unknown = [m for m, a in members.items() if a is None and m not in assign]
    if len(unknown) == 1 and access not in taken and unknown[0] != reporter:
        assign[unknown[0]] = access
    return AccessInference(assign)


__all__ = ["AccessInference", "infer_access"]
