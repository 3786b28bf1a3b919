"""SessionTable (session draft §4.1, §6.1.3) with seeded randomness and a fake clock."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.session.table import JoinError, SessionTable
from tunnel.wire.errors import ControlErrorCode, TunnelError


def seeded(seed: int = 1) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def scripted(*values: bytes) -> Callable[[int], bytes]:
    """A random source returning these values in turn (to force collisions)."""
    queue = list(values)

    def draw(n: int) -> bytes:
        return queue.pop(0)

    return draw


def test_create_issues_random_id_of_requested_length() -> None:
    table: SessionTable[str] = SessionTable(seeded(), id_length=16)
    session = table.create("wifi", b"video", now=1.0)
    assert len(session.session_id) == 16
    assert session.session_id == random.Random(1).randbytes(16)
    assert session.members == ["wifi"] and session.qos == b"video" and session.created_at == 1.0
    assert table.session_of("wifi") is session
    assert len(table) == 1


def test_ids_are_distinct_across_sessions() -> None:
    table: SessionTable[int] = SessionTable(seeded(7), id_length=4)
    ids = {table.create(i, b"", 0.0).session_id for i in range(200)}
    assert len(ids) == 200


def test_colliding_random_id_is_redrawn() -> None:
    table: SessionTable[str] = SessionTable(scripted(b"AA", b"AA", b"BB"), id_length=2)
    assert table.create("a", b"", 0.0).session_id == b"AA"
    assert table.create("b", b"", 0.0).session_id == b"BB"


def test_random_source_that_always_collides_gives_unknown_error() -> None:
    table: SessionTable[str] = SessionTable(lambda n: b"\x00" * n, id_length=2)
    table.create("a", b"", 0.0)
    with pytest.raises(JoinError) as info:
        table.create("b", b"", 0.0)
    assert info.value.code is ControlErrorCode.UNKNOWN_ERROR


def test_random_source_of_wrong_length_is_a_bug() -> None:
    table: SessionTable[str] = SessionTable(lambda n: b"x", id_length=16)
    with pytest.raises(ValueError, match="returned 1 bytes"):
        table.create("a", b"", 0.0)


def test_join_adds_member_to_the_session() -> None:
    table: SessionTable[str] = SessionTable(seeded())
    session = table.create("wifi", b"", 0.0)
    joined = table.join(session.session_id, "5g", 0.5)
    assert joined is session
    assert session.members == ["wifi", "5g"]
    assert table.session_of("5g") is session


def test_join_unknown_id() -> None:
    table: SessionTable[str] = SessionTable(seeded())
    table.create("wifi", b"", 0.0)
    with pytest.raises(JoinError) as info:
        table.join(b"not-an-issued-id", "5g", 0.0)
    assert info.value.code is ControlErrorCode.UNKNOWN_SESSION_ID
    assert table.session_of("5g") is None


def test_join_error_is_a_tunnel_error_with_a_sentence() -> None:
    table: SessionTable[str] = SessionTable(seeded())
    with pytest.raises(TunnelError, match="never issued"):
        table.join(b"x", "a", 0.0)


@pytest.mark.parametrize("second", ["create", "join same", "join other"])
def test_a_connection_joins_at_most_one_session(second: str) -> None:
    table: SessionTable[str] = SessionTable(seeded())
    first = table.create("wifi", b"", 0.0)
    other = table.create("5g", b"", 0.0)
    with pytest.raises(JoinError) as info:
        if second == "create":
            table.create("wifi", b"", 0.0)
        elif second == "join same":
            table.join(first.session_id, "wifi", 0.0)
        else:
            table.join(other.session_id, "wifi", 0.0)
    assert info.value.code is ControlErrorCode.CONFLICTING_STATE
    assert first.members == ["wifi"] and other.members == ["5g"]


def test_session_expires_idle_expiry_after_last_member_left() -> None:
    table: SessionTable[str] = SessionTable(seeded(), idle_expiry=30.0)
    session = table.create("wifi", b"", 0.0)
    table.join(session.session_id, "5g", 1.0)
    assert table.leave("wifi", 10.0) is session
    assert session.empty_since is None and table.next_expiry() is None
    table.leave("5g", 20.0)
    assert session.empty_since == 20.0
    assert table.next_expiry() == 50.0
    assert table.expire(49.999) == []
    assert table.get(session.session_id, 49.999) is session
    assert table.expire(50.0) == [session]
    assert len(table) == 0 and table.next_expiry() is None
    with pytest.raises(JoinError) as info:
        table.join(session.session_id, "wifi", 51.0)
    assert info.value.code is ControlErrorCode.UNKNOWN_SESSION_ID


def test_expired_but_not_yet_removed_session_cannot_be_joined() -> None:
    table: SessionTable[str] = SessionTable(seeded(), idle_expiry=5.0)
    session = table.create("wifi", b"", 0.0)
    table.leave("wifi", 1.0)
    with pytest.raises(JoinError) as info:
        table.join(session.session_id, "5g", 6.0)  # expire() not called yet
    assert info.value.code is ControlErrorCode.UNKNOWN_SESSION_ID


def test_rejoin_in_time_keeps_session_alive() -> None:
    table: SessionTable[str] = SessionTable(seeded(), idle_expiry=5.0)
    session = table.create("wifi", b"", 0.0)
    table.leave("wifi", 1.0)
    table.join(session.session_id, "wifi-again", 4.0)
    assert session.empty_since is None
    assert table.expire(100.0) == []


def test_leave_of_non_member_is_a_no_op() -> None:
    table: SessionTable[str] = SessionTable(seeded())
    assert table.leave("never-joined", 0.0) is None


def test_member_that_left_may_create_again() -> None:
    table: SessionTable[str] = SessionTable(seeded())
    table.create("wifi", b"", 0.0)
    table.leave("wifi", 1.0)
    assert table.create("wifi", b"", 2.0).members == ["wifi"]


def test_max_sessions_gives_unknown_error_and_counts_only_live_sessions() -> None:
    table: SessionTable[str] = SessionTable(seeded(), idle_expiry=1.0, max_sessions=2)
    table.create("a", b"", 0.0)
    table.create("b", b"", 0.0)
    with pytest.raises(JoinError, match="maximum of 2") as info:
        table.create("c", b"", 0.0)
    assert info.value.code is ControlErrorCode.UNKNOWN_ERROR
    table.leave("a", 0.0)
    assert table.create("c", b"", 1.0).members == ["c"]  # a's session expired at t=1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id_length": 0}, "id length"),
        ({"id_length": 256}, "id length"),
        ({"idle_expiry": -1.0}, "idle_expiry"),
        ({"max_sessions": 0}, "max_sessions"),
    ],
)
def test_bad_table_settings(kwargs: dict[str, int | float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionTable(seeded(), **kwargs)  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(st.sampled_from(["create", "join", "leave", "expire"]), st.integers(0, 5)),
        max_size=60,
    )
)
def test_membership_index_stays_consistent(ops: list[tuple[str, int]]) -> None:
    table: SessionTable[int] = SessionTable(seeded(3), id_length=8, idle_expiry=2.0)
    now = 0.0
    for op, member in ops:
        now += 0.5
        try:
            if op == "create":
                table.create(member, b"", now)
            elif op == "join":
                sessions = list(table)
                target = sessions[member % len(sessions)].session_id if sessions else b"none"
                table.join(target, member, now)
            elif op == "leave":
                table.leave(member, now)
            else:
                table.expire(now)
        except JoinError:
            pass
        # every member is in exactly one stored session, and that is the one session_of names
        seen: dict[int, bytes] = {}
        for session in table:
            for m in session.members:
                assert m not in seen
                seen[m] = session.session_id
                assert table.session_of(m) is session
            assert (session.empty_since is None) == bool(session.members)
        for m in range(6):
            if m not in seen:
                assert table.session_of(m) is None


def test_discard_frees_the_slot_and_the_members_at_once() -> None:
    table: SessionTable[str] = SessionTable(seeded(), idle_expiry=30.0, max_sessions=1)
    first = table.create("a", b"", now=0.0)
    with pytest.raises(JoinError):
        table.create("b", b"", now=1.0)
    assert table.discard(first.session_id) is first
    assert table.session_of("a") is None and len(table) == 0
    assert table.create("b", b"", now=2.0).members == ["b"]
    assert table.discard(b"unknown") is None
