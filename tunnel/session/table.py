"""The concentrator's table of tunneling sessions (draft-piraux-intarea-quic-tunnel-session-00
§4.1 Joining a tunneling session, §6.1 New Session / Session ID / Join Session TLVs).

A *member* is whatever identifies one QUIC tunnel connection to the caller (a connection object,
an id...): the table only needs it hashable. The table is sans-I/O: `now` is passed in and the
randomness for Session IDs is injected, so tests can be exact.

Rules:

* New Session TLV -> `create`: a fresh Session ID from the injected `random_bytes` (retried on a
  collision), with the creating connection as first member.
* Join Session TLV -> `join`: adds the connection to the session with that ID.
* A connection belongs to at most one session: creating or joining while already a member is
  CONFLICTING_STATE ("the current state of the QUIC tunnel connection could not be merged with
  the tunneling session"). The draft's "negotiation MUST NOT take place more than once per QUIC
  connection" is for the control stream to enforce; the table forgets a member once it leaves.
* An ID never issued, or of a session that expired, is UNKNOWN_SESSION_ID.
* A session expires `idle_expiry` seconds after its last member left (a member that rejoins
  in time keeps it alive, e.g. a client re-establishing its only connection after a handover).
* `max_sessions` reached -> UNKNOWN_ERROR: the draft defines no specific code for "no room",
  and the New Session TLV has no failure reply of its own, so the control stream is reset with
  UNKNOWN_ERROR (§6.1.3's catch-all) for both create and join paths.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from tunnel.wire.errors import ControlErrorCode, StreamErrorCode, TunnelError
from tunnel.wire.tlv import MAX_TLV_VALUE_SIZE

K = TypeVar("K", bound=Hashable)

DEFAULT_ID_LENGTH: Final = 16
"""Session ID bytes: 128 random bits make an ID unguessable, so knowing it is what authorises a
connection to join (any client that completed the TLS handshake could otherwise join others)."""
DEFAULT_IDLE_EXPIRY: Final = 30.0
MAX_ID_ATTEMPTS: Final = 8
"""Fresh IDs drawn before giving up: with 16 random bytes a single collision is already
practically impossible, so repeated ones mean the injected randomness is broken."""


class JoinError(TunnelError):
    """Creating or joining a session failed; `code` is the RESET_STREAM application error code
    to send on the control stream (session draft §6.1.3)."""

    # The control stream's codes are a separate registry from the bytestream codes that
    # TunnelError.code holds, hence the narrowed (incompatible) attribute type: whoever resets the
    # control stream must get the session draft's code, not PROTOCOL_VIOLATION (also 0).
    code: ControlErrorCode  # type: ignore[assignment]

    def __init__(self, code: ControlErrorCode, message: str) -> None:
        super().__init__(StreamErrorCode.PROTOCOL_VIOLATION, message)
        self.code = code


@dataclass
class Session(Generic[K]):
    """One tunneling session: the connections grouped under one Session ID."""

    session_id: bytes
    members: list[K]
    qos: bytes
    """The New Session TLV's optional QoS Flow Indication, opaque (session draft §6.1.1)."""
    created_at: float
    empty_since: float | None = None
    """When the last member left (None while it has members)."""


class SessionTable(Generic[K]):
    """All tunneling sessions of one concentrator. See the module docstring for the rules."""

    def __init__(
        self,
        random_bytes: Callable[[int], bytes],
        id_length: int = DEFAULT_ID_LENGTH,
        idle_expiry: float = DEFAULT_IDLE_EXPIRY,
        max_sessions: int | None = None,
    ) -> None:
        if not 1 <= id_length <= MAX_TLV_VALUE_SIZE:
            raise ValueError(
                f"session id length must be 1..{MAX_TLV_VALUE_SIZE} bytes to fit a Session ID TLV,"
                f" got {id_length}"
            )
        if not idle_expiry >= 0:
            raise ValueError(f"idle_expiry must be >= 0 seconds, got {idle_expiry}")
        if max_sessions is not None and max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1 (or None), got {max_sessions}")
        self._random_bytes = random_bytes
        self.id_length: Final = id_length
        self.idle_expiry: Final = idle_expiry
        self.max_sessions: Final = max_sessions
        self._sessions: dict[bytes, Session[K]] = {}
        self._session_of: dict[K, Session[K]] = {}

    def __len__(self) -> int:
        """Sessions stored, including expired ones `expire` has not removed yet."""
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session[K]]:
        return iter(list(self._sessions.values()))

    def get(self, session_id: bytes, now: float) -> Session[K] | None:
        """The live session with this ID (None if unknown or expired by `now`)."""
        session = self._sessions.get(session_id)
        if session is None or self._is_expired(session, now):
            return None
        return session

    def session_of(self, member: K) -> Session[K] | None:
        """The session this connection belongs to, if any."""
        return self._session_of.get(member)

    def create(self, member: K, qos: bytes, now: float) -> Session[K]:
        """Handle a New Session TLV: a new session with `member` in it."""
        self._refuse_if_member(member)
        if self.max_sessions is not None and self._live_count(now) >= self.max_sessions:
            raise JoinError(
                ControlErrorCode.UNKNOWN_ERROR,
                f"the concentrator already holds its maximum of {self.max_sessions} sessions",
            )
        session = Session[K](
            session_id=self._fresh_id(), members=[member], qos=bytes(qos), created_at=now
        )
        self._sessions[session.session_id] = session
        self._session_of[member] = session
        return session

    def join(self, session_id: bytes, member: K, now: float) -> Session[K]:
        """Handle a Join Session TLV: add `member` to the session with this ID."""
        self._refuse_if_member(member)
        session = self.get(session_id, now)
        if session is None:
            raise JoinError(
                ControlErrorCode.UNKNOWN_SESSION_ID,
                "the Session ID was never issued by this concentrator or its session expired",
            )
        session.members.append(member)
        session.empty_since = None
        self._session_of[member] = session
        return session

    def leave(self, member: K, now: float) -> Session[K] | None:
        """The connection closed: remove it from its session (no-op if it was in none).
        Returns the session it left."""
        session = self._session_of.pop(member, None)
        if session is None:
            return None
        session.members.remove(member)
        if not session.members:
            session.empty_since = now
        return session

    def discard(self, session_id: bytes) -> Session[K] | None:
        """Remove a session at once, members and all (its client started a new one, so it is
        dead): it no longer counts against `max_sessions` while it would wait to expire."""
        session = self._sessions.pop(session_id, None)
        if session is not None:
            for member in session.members:
                self._session_of.pop(member, None)
        return session

    def expire(self, now: float) -> list[Session[K]]:
        """Remove and return the sessions that have been empty for `idle_expiry` seconds."""
        expired = [s for s in self._sessions.values() if self._is_expired(s, now)]
        for session in expired:
            del self._sessions[session.session_id]
        return expired

    def next_expiry(self) -> float | None:
        """When `expire` next has something to do (None if every session has members)."""
        times = [s.empty_since for s in self._sessions.values() if s.empty_since is not None]
        return min(times) + self.idle_expiry if times else None

    # -- internals -------------------------------------------------------------------------

    def _is_expired(self, session: Session[K], now: float) -> bool:
        # At exactly empty_since + idle_expiry the session is expired, so that a timer set to
        # next_expiry() finds work to do.
        return session.empty_since is not None and now >= session.empty_since + self.idle_expiry

    def _live_count(self, now: float) -> int:
        return sum(1 for s in self._sessions.values() if not self._is_expired(s, now))

    def _refuse_if_member(self, member: K) -> None:
        if member in self._session_of:
            raise JoinError(
                ControlErrorCode.CONFLICTING_STATE,
                "this connection already belongs to a tunneling session; a connection joins at"
                " most one",
            )

    def _fresh_id(self) -> bytes:
        # Expired sessions still stored count as taken, so an ID is never reused while a
        # client could still present it.
        for _ in range(MAX_ID_ATTEMPTS):
            candidate = bytes(self._random_bytes(self.id_length))
            if len(candidate) != self.id_length:
                raise ValueError(f"random_bytes({self.id_length}) returned {len(candidate)} bytes")
            if candidate not in self._sessions:
                return candidate
        raise JoinError(
            ControlErrorCode.UNKNOWN_ERROR,
            f"no unused session id after {MAX_ID_ATTEMPTS} random draws: the random source is"
            " broken",
        )
