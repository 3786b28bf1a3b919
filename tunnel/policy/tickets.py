"""TLS 1.3 session tickets for resumption and 0-RTT (RFC 8446 §2.2, §4.6.1; RFC 9001 §4.6), in
memory on both ends, bounded in count and age (README "0-RTT").

The concentrator (`TicketStore`): aioquic's server makes a ticket at the end of every handshake
with a client that offered resumption (`session_ticket_handler`) and looks one up by its label
when a client presents it (`session_ticket_fetcher`). A ticket is usable only once the connection
that received it authenticated: `bind` attaches that client's identity (name, certificate serial
and expiry), so that a resumed connection, which presents no certificate, is attributed to
exactly the client that authenticated when the ticket was issued, and the CRL can still be
checked against the serial. Tickets are single-use (`take` removes the ticket): RFC 8446 §8.1's
anti-replay for one server instance, so a 0-RTT flight is accepted at most once; a restarted
concentrator knows no ticket, so nothing captured before the restart can be replayed to it.

The client (`ClientTickets`): keeps the newest tickets it received and presents each once (RFC
8446 §C.4: a client SHOULD NOT reuse a ticket, it would link its connections).

Sans-I/O: wall-clock time (tickets carry UTC validity, like certificates) comes from `utc_now`.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from aioquic.tls import SessionTicket

TICKET_LIFETIME: Final = 3600.0
"""Seconds a ticket may be used after it was issued, on both ends. Shorter than aioquic's
86400 s (RFC 8446 §4.6.1 allows up to 7 days): it bounds how long a captured ClientHello and
0-RTT flight stay replayable (RFC 8446 §8) and how long a resumption skips certificate checks
that the CRL and the certificate's expiry still cover (see TicketStore.take)."""
TICKETS_PER_CLIENT: Final = 8
"""Bound tickets per client name at the concentrator (a client keeps CLIENT_TICKETS)."""
CLIENT_TICKETS: Final = 4
"""Tickets a client keeps: one per access is what its reconnects and joins use."""


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class TicketIdentity:
    """Who authenticated on the connection a ticket was issued on: the certificate's Common
    Name (the client name), its serial (for the CRL) and its expiry."""

    name: str
    serial: int
    not_valid_after: datetime.datetime


@dataclass
class _Issued:
    ticket: SessionTicket
    issued_at: datetime.datetime
    identity: TicketIdentity | None = None  # None until the connection authenticated


class TicketStore:
    """The concentrator's tickets (see the module docstring): at most `max_tickets` usable ones
    (oldest dropped first), TICKETS_PER_CLIENT per client, each usable once within `lifetime`
    seconds; and at most `max_tickets` not yet bound. aioquic issues a ticket when the client's
    Finished arrives, before we verify its certificate: such tickets are bound or discarded at
    once (ConcentratorCore._authenticate), and kept apart so that handshakes of strangers never
    push out the tickets of authenticated clients."""

    def __init__(
        self,
        max_tickets: int,
        *,
        lifetime: float = TICKET_LIFETIME,
        utc_now: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        if max_tickets < 1:
            raise ValueError(f"max_tickets must be >= 1, got {max_tickets}")
        self.max_tickets = max_tickets
        self.lifetime = datetime.timedelta(seconds=lifetime)
        self._utc_now = utc_now
        self._tickets: OrderedDict[bytes, _Issued] = OrderedDict()  # oldest first
        self.counters: dict[str, int] = {
            "issued": 0,
            "resumed": 0,
            "unknown": 0,
            "expired": 0,
            "evicted": 0,
        }

    def __len__(self) -> int:
        return len(self._tickets)

    def issued(self, ticket: SessionTicket) -> None:
        """aioquic's server issued `ticket` (session_ticket_handler): kept, unusable until
        `bind`. The oldest ticket goes when the store is full."""
        self._tickets[ticket.ticket] = _Issued(ticket, self._utc_now())
        self.counters["issued"] += 1
        self._evict([k for k, e in self._tickets.items() if e.identity is None])

    def bind(self, labels: Iterable[bytes], identity: TicketIdentity) -> None:
        """The connection that received the tickets `labels` authenticated as `identity`: the
        tickets become usable by it. Beyond TICKETS_PER_CLIENT of that name the oldest go."""
        for label in labels:
            entry = self._tickets.get(label)
            if entry is not None:
                entry.identity = identity
        self._evict(self._labels_of(identity.name), TICKETS_PER_CLIENT)
        self._evict([k for k, e in self._tickets.items() if e.identity is not None])

    def _evict(self, labels: list[bytes], keep: int | None = None) -> None:
        """Drop the oldest of `labels` (oldest first) beyond `keep` (default max_tickets)."""
        excess = len(labels) - (self.max_tickets if keep is None else keep)
        for label in labels[: max(0, excess)]:
            del self._tickets[label]
            self.counters["evicted"] += 1

    def discard(self, labels: Iterable[bytes]) -> None:
        """The connection that received `labels` was refused or closed before authenticating."""
        for label in labels:
            entry = self._tickets.get(label)
            if entry is not None and entry.identity is None:
                del self._tickets[label]

    def take(self, label: bytes) -> tuple[SessionTicket, TicketIdentity] | None:
        """The ticket a ClientHello presents (session_ticket_fetcher) and whose it is, removed
        (single-use); None (a full handshake follows) if unknown, not bound or too old."""
        entry = self._tickets.pop(label, None)
        if entry is None or entry.identity is None:
            self.counters["unknown"] += 1
            return None
        if self._utc_now() - entry.issued_at > self.lifetime:
            self.counters["expired"] += 1
            return None
        self.counters["resumed"] += 1
        return entry.ticket, entry.identity

    def forget_client(self, name: str) -> None:
        """Drop every ticket of `name` (its resumption was refused: revoked, not admitted)."""
        for label in self._labels_of(name):
            del self._tickets[label]

    def _labels_of(self, name: str) -> list[bytes]:
        """The bound tickets of client `name`, oldest first."""
        return [k for k, e in self._tickets.items() if e.identity and e.identity.name == name]


class ClientTickets:
    """The client's tickets (see the module docstring): the newest CLIENT_TICKETS, each taken
    once, none older than `lifetime` seconds."""

    def __init__(
        self,
        capacity: int = CLIENT_TICKETS,
        *,
        lifetime: float = TICKET_LIFETIME,
        utc_now: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        self._tickets: deque[tuple[datetime.datetime, SessionTicket]] = deque(maxlen=capacity)
        self.lifetime = datetime.timedelta(seconds=lifetime)
        self._utc_now = utc_now
        self.received = 0

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, ticket: SessionTicket) -> None:
        """A ticket from the concentrator (session_ticket_handler)."""
        self._tickets.append((self._utc_now(), ticket))
        self.received += 1

    def take(self) -> SessionTicket | None:
        """The newest ticket still young enough, removed; None: a full handshake."""
        now = self._utc_now()
        while self._tickets:
            received_at, ticket = self._tickets.pop()
            if now - received_at <= self.lifetime and now <= ticket.not_valid_after:
                return ticket
        return None

    def clear(self) -> None:
        """Forget every ticket (a resumption was refused: the concentrator no longer takes
        them, e.g. it restarted or the client's certificate changed)."""
        self._tickets.clear()


__all__ = [
    "CLIENT_TICKETS",
    "TICKETS_PER_CLIENT",
    "TICKET_LIFETIME",
    "ClientTickets",
    "TicketIdentity",
    "TicketStore",
]
