"""Admitting new QUIC connections on the server: Retry, half-open connections, their timeout.

A client's first Initial (RFC 9000 §17.2.2) carries nothing a server can check: its source
address can be spoofed and, before the handshake, the server cannot tell a client from junk
padded to 1200 bytes. Each one that creates a connection holds a connection slot (and aioquic
arms the full idle timeout for it), so a few hundred datagrams would fill every slot of a
concentrator for as long as the idle timeout. Three defences, all decided here (sans-I/O: counts
and `now` in, a decision out; tunnel/aio/udp.py carries them out):

- *Address validation with Retry* (§8.1.2): instead of creating a connection, the server
  answers with a Retry carrying a token bound to the client's address; only a client that
  really receives packets at that address comes back with it. Policy "always" costs every
  client one round trip; "auto" asks for it only while half-open connections pile up (at
  least `retry_threshold` of them), so normal operation has no extra round trip and a
  spoofed flood can hold at most `retry_threshold` slots; "never" turns it off.
- *A cap on half-open connections* (handshake not completed), `max_half_open`, below the cap
  on all connections: a flood can take at most these, never the slots of established clients.
  Clients with a valid Retry token may use the slots between `retry_threshold` and the cap.
  One source prefix (/24 IPv4, /56 IPv6, as the reply budgets of tunnel/policy/rate_limit.py)
  holds at most `max_half_open // 8` of them, validated or not: a Retry token only proves that
  its holder receives at its address, so without this one ordinary host answering our Retry
  packets with junk took every slot and kept all new clients out for as long as it went on.
- *A handshake timeout*: a connection whose handshake has not completed `handshake_timeout`
  seconds after it was created is dropped silently (like an idle timeout, §10.1) and its slot
  is free again — rather than after the idle timeout.

The server's handshake completes when the client's Finished arrives, which also proves the
client's address (§8.1: a Handshake packet from it), so "half-open" = "address not validated".

A connection whose first datagram held nothing the server could decrypt (junk: anyone can pad
random bytes behind an Initial header) is dropped by the caller at once (`discarded`): it frees
its slot at once but still counts towards the Retry threshold until its handshake deadline, so
a flood of junk still turns Retry on as when such connections held their slots.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from tunnel.policy.rate_limit import source_prefix

DEFAULT_MAX_HALF_OPEN: Final = 64
"""Half-open connections at once: what a burst of validated clients (e.g. the 50-client scale
experiment reconnecting together) needs, and a bound on the handshake state (each one a
QuicConnection with its TLS context) that anyone able to receive our Retry can create."""
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a handshake may take: the client's own handshake timeout (tunnel/aio/client.py
CONNECT_TIMEOUT) and msquic's default handshake idle timeout; covers three backed-off probe
timeouts on a 300 ms path (0.9 + 1.9 + 3.7 s). A third of the idle timeout (30 s) for which
the slot was held before."""
DEFAULT_RETRY_THRESHOLD: Final = DEFAULT_MAX_HALF_OPEN // 4
"""Half-open connections from which "auto" asks for Retry (a quarter of the cap unless given):
16 is above what clients starting together create (a restarted concentrator's clients come
back spread over a few round trips), so Retry stays off in normal operation, and small enough
that a spoofed flood holds few slots; the other three quarters stay for validated clients."""
HALF_OPEN_PREFIX_SHARE: Final = 8
"""One source prefix may hold max_half_open // 8 half-open connections (at least 1; 8 by
default): a site's clients reconnecting together get through within a few handshake round
trips (a refused Initial is dropped, the client resends it), and it takes eight networks, not
one host, to hold every slot."""


class RetryPolicy(enum.StrEnum):
    """When the server answers a client's first Initial with a Retry (RFC 9000 §8.1.2)."""

    ALWAYS = "always"  # every new connection: one extra round trip each
    AUTO = "auto"  # only while at least retry_threshold connections are half-open
    NEVER = "never"  # no Retry; the half-open cap and handshake timeout remain


class TokenStatus(enum.Enum):
    """What the token field of a client's Initial holds."""

    NONE = "none"  # empty: a first Initial
    VALID = "valid"  # a Retry token of ours for this address and connection ID
    INVALID = "invalid"  # anything else: expired, another address, junk


class InitialVerdict(enum.Enum):
    """What to do with a client's Initial for a connection the server does not have."""

    ACCEPT = "accept"  # create the connection
    RETRY = "retry"  # send a Retry with a token (§8.1.2), create nothing
    INVALID_TOKEN = "invalid_token"  # close with INVALID_TOKEN (§8.1.3), create nothing
    REFUSE_FULL = "refuse_full"  # every connection slot is taken: drop the packet
    REFUSE_HALF_OPEN = "refuse_half_open"  # every half-open slot is taken: drop the packet
    REFUSE_PREFIX = "refuse_prefix"  # the source prefix holds its share: drop the packet


@dataclass(frozen=True)
class AdmissionLimits:
    """The knobs of `HandshakeGuard` (see the module docstring)."""

    retry: RetryPolicy = RetryPolicy.AUTO
    retry_threshold: int | None = None  # None: max_half_open // 4 (16 by default)
    max_half_open: int = DEFAULT_MAX_HALF_OPEN
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT

    @property
    def max_half_open_per_prefix(self) -> int:
        """Half-open connections one source prefix may hold (HALF_OPEN_PREFIX_SHARE)."""
        return max(1, self.max_half_open // HALF_OPEN_PREFIX_SHARE)

    def __post_init__(self) -> None:
        # accept the policy by its name too (a config value)
        try:
            object.__setattr__(self, "retry", RetryPolicy(self.retry))
        except ValueError:
            raise ValueError(
                f"retry must be one of {', '.join(p.value for p in RetryPolicy)}, "
                f"got {self.retry!r}"
            ) from None
        if self.max_half_open < 1:
            raise ValueError(f"max_half_open must be >= 1, got {self.max_half_open}")
        if self.retry_threshold is None:
            object.__setattr__(self, "retry_threshold", self.max_half_open // 4)
        elif not 0 <= self.retry_threshold <= self.max_half_open:
            raise ValueError(
                f"retry_threshold must be between 0 and max_half_open ({self.max_half_open}), "
                f"got {self.retry_threshold}"
            )
        if not self.handshake_timeout > 0:
            raise ValueError(f"handshake_timeout must be > 0 s, got {self.handshake_timeout}")


K = TypeVar("K", bound=Hashable)
Prefix = tuple[int, int]  # tunnel/policy/rate_limit.py source_prefix


@dataclass
class AdmissionStats:
    accepted: int = 0
    retries: int = 0  # Retry packets asked for
    invalid_tokens: int = 0
    refused_full: int = 0
    refused_half_open: int = 0
    refused_prefix: int = 0  # the source prefix held its share of the half-open slots
    handshake_timeouts: int = 0  # half-open connections dropped by the timeout
    undecryptable: int = 0  # dropped at once: nothing in their first datagram decrypted


class HandshakeGuard(Generic[K]):
    """Decides on new connections and keeps the half-open ones (keys: the caller's connection
    objects) with their handshake deadlines. `max_connections` bounds all connections,
    established or not (None: no bound).

    Call `admit` for each Initial of an unknown connection, `opened` when the connection was
    created, `completed` at its HandshakeCompleted, `discarded` when its first datagram held
    nothing decryptable and it was dropped, `closed` when it ended (any state), and
    `expire(now)` at `next_deadline()`: it returns the connections to drop.

    `source` is the sender's IP address (a string, as a socket gives it); None counts in no
    prefix (a caller that has no address).
    """

    def __init__(
        self, limits: AdmissionLimits | None = None, max_connections: int | None = None
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.limits = limits or AdmissionLimits()
        self.max_connections = max_connections
        self.stats = AdmissionStats()
        # connection -> handshake deadline; the timeout is one constant, so insertion order is
        # deadline order and the earliest is always first
        self._half_open: OrderedDict[K, float] = OrderedDict()
        # half-open connections per source prefix, and each one's prefix
        self._per_prefix: dict[Prefix, int] = {}
        self._prefix_of: dict[K, Prefix] = {}
        # handshake deadlines of the connections dropped as undecryptable, counted towards the
        # Retry threshold only; beyond the threshold more would change nothing
        self._undecryptable: deque[float] = deque(maxlen=max(1, self.limits.retry_threshold or 0))

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def is_half_open(self, key: K) -> bool:
        return key in self._half_open

    def admit(
        self, connections: int, token: TokenStatus, source: str | None = None
    ) -> InitialVerdict:
        """The decision for a client's Initial from `source` when `connections` connections
        exist now."""
        decision = self._decide(connections, token, _prefix(source))
        stats = self.stats
        if decision is InitialVerdict.ACCEPT:
            stats.accepted += 1
        elif decision is InitialVerdict.RETRY:
            stats.retries += 1
        elif decision is InitialVerdict.INVALID_TOKEN:
            stats.invalid_tokens += 1
        elif decision is InitialVerdict.REFUSE_FULL:
            stats.refused_full += 1
        elif decision is InitialVerdict.REFUSE_PREFIX:
            stats.refused_prefix += 1
        else:
            stats.refused_half_open += 1
        return decision

    def _decide(
        self, connections: int, token: TokenStatus, prefix: Prefix | None
    ) -> InitialVerdict:
        limits = self.limits
        if self.max_connections is not None and connections >= self.max_connections:
            return InitialVerdict.REFUSE_FULL
        if (
            prefix is not None
            and self._per_prefix.get(prefix, 0) >= limits.max_half_open_per_prefix
        ):
            # before the Retry: a token would not change the answer, and a validated address
            # is no reason to hold more than the prefix's share
            return InitialVerdict.REFUSE_PREFIX
        half_open = len(self._half_open)
        if token is TokenStatus.VALID:
            # a validated address: may use the slots above the Retry threshold
            if half_open < limits.max_half_open:
                return InitialVerdict.ACCEPT
            return InitialVerdict.REFUSE_HALF_OPEN
        threshold = limits.retry_threshold or 0  # set by AdmissionLimits
        wants_retry = limits.retry is RetryPolicy.ALWAYS or (
            limits.retry is RetryPolicy.AUTO and half_open + len(self._undecryptable) >= threshold
        )
        if wants_retry:
            # §8.1.3: a client whose token we reject will not accept a second Retry; an
            # immediate INVALID_TOKEN close spares it a handshake timeout. Otherwise a token
            # we cannot use counts as none ("proceed as if the client did not have a
            # validated address").
            return (
                InitialVerdict.INVALID_TOKEN
                if token is TokenStatus.INVALID
                else InitialVerdict.RETRY
            )
        if half_open >= limits.max_half_open:
            return InitialVerdict.REFUSE_HALF_OPEN
        return InitialVerdict.ACCEPT

    def opened(self, key: K, now: float, source: str | None = None) -> None:
        """A connection from `source` was created: half-open until `completed`, dropped at the
        timeout."""
        self._half_open[key] = now + self.limits.handshake_timeout
        prefix = _prefix(source)
        if prefix is not None:
            self._prefix_of[key] = prefix
            self._per_prefix[prefix] = self._per_prefix.get(prefix, 0) + 1

    def completed(self, key: K) -> None:
        """Its handshake completed (address validated): no longer half-open."""
        self._forget(key)

    def closed(self, key: K) -> None:
        """It ended (also before completing)."""
        self._forget(key)

    def discarded(self, key: K) -> None:
        """Nothing in its first datagram could be decrypted and the caller dropped it: its
        slot is free, but until its deadline it counts towards the Retry threshold."""
        deadline = self._forget(key)
        if deadline is not None:
            self._undecryptable.append(deadline)
            self.stats.undecryptable += 1

    def _forget(self, key: K) -> float | None:
        deadline = self._half_open.pop(key, None)
        prefix = self._prefix_of.pop(key, None)
        if prefix is not None:
            left = self._per_prefix[prefix] - 1
            if left:
                self._per_prefix[prefix] = left
            else:
                del self._per_prefix[prefix]
        return deadline

    def next_deadline(self) -> float | None:
        """When the earliest half-open connection times out, or an undecryptable one stops
        counting (None: neither is left)."""
        # both in deadline order (one timeout for all): the earliest of each is first
        firsts = [next(iter(self._half_open.values()))] if self._half_open else []
        if self._undecryptable:
            firsts.append(self._undecryptable[0])
        return min(firsts, default=None)

    def expire(self, now: float) -> list[K]:
        """The half-open connections whose handshake timed out by `now` (forgotten here: the
        caller drops them)."""
        undecryptable = self._undecryptable
        while undecryptable and undecryptable[0] <= now:
            undecryptable.popleft()
        expired: list[K] = []
        half_open = self._half_open
        while half_open:
            key, deadline = next(iter(half_open.items()))
            if deadline > now:
                break
            self._forget(key)
            expired.append(key)
        self.stats.handshake_timeouts += len(expired)
        return expired


def _prefix(source: str | None) -> Prefix | None:
    if source is None:
        return None
    try:
        return source_prefix(source)
    except ValueError:
        return (0, 0)  # not an address (a socket never gives one): one shared prefix


__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_MAX_HALF_OPEN",
    "DEFAULT_RETRY_THRESHOLD",
    "HALF_OPEN_PREFIX_SHARE",
    "AdmissionLimits",
    "AdmissionStats",
    "HandshakeGuard",
    "InitialVerdict",
    "RetryPolicy",
    "TokenStatus",
]
