"""What is remembered for re-sends and when a re-send is still worth it
(tunnel/session/resend.py): bounds, deadlines, tunnel mode's re-sends over one connection."""

from __future__ import annotations

import pytest

from tunnel.protocol.quic_ext import DatagramFate
from tunnel.session.resend import (
    RESEND_DEADLINE_MAX,
    RESEND_DEADLINE_MIN,
    STRANDED_DEADLINE_MIN,
    Resilience,
    SentPacket,
    SentPackets,
    TunnelResender,
    resend_deadline,
)


def test_the_deadline_follows_the_rtts_within_bounds_unless_configured() -> None:
    assert resend_deadline(None, [0.02, 0.05]) == pytest.approx(0.125)
    assert resend_deadline(None, [0.001]) == RESEND_DEADLINE_MIN
    assert resend_deadline(None, [3.0]) == RESEND_DEADLINE_MAX
    assert resend_deadline(None, [0.02], stranded=True) == STRANDED_DEADLINE_MIN
    assert resend_deadline(0.03, [0.5], stranded=True) == 0.03


def test_sent_packets_are_bounded_in_count_and_bytes_oldest_first() -> None:
    sent = SentPackets(max_packets=3, max_bytes=250)
    tokens = [sent.add(SentPacket(b"x" * 100, None, 0, float(n))) for n in range(3)]
    assert len(sent) == 2 and sent.bytes == 200 and sent.evicted == 1
    assert sent.fate(tokens[0]) is None  # forgotten
    assert sent.fate(tokens[2]) is not None and sent.bytes == 100
    sent.expire(before=5.0)
    assert len(sent) == 0 and sent.bytes == 0


def test_in_flight_on_a_path_leaves_out_copies_and_those_resent_or_doubled() -> None:
    sent = SentPackets()
    sent.add(SentPacket(b"a", 1, 0, 0.0))
    sent.add(SentPacket(b"b", 2, 0, 0.0, copy=True))
    resent = SentPacket(b"c", 3, 0, 0.0)
    resent.resent = True
    sent.add(resent)
    sent.add(SentPacket(b"d", 4, 1, 0.0))
    sent.add(SentPacket(b"e", 5, 0, 0.0, doubled=True))  # a duplicate went on path 1
    assert [(t, r.packet) for t, r in sent.in_flight_on(0)] == [(0, b"a")]


def lost(token: int | None, left_at: float | None = None) -> DatagramFate:
    return DatagramFate(token, False, left_at)


def test_a_resends_deadline_counts_from_when_the_packet_left_not_when_it_was_queued() -> None:
    """A packet that waited 0.3 s in the datagram queue and was lost 50 ms after it left is
    still worth re-sending (deadline 2 x 20 ms + 25 ms): the peer has waited 50 ms, not 0.35 s."""
    resender = TunnelResender(Resilience(loss_hiding=True))
    queued = resender.token_for(b"queued", 1.0)
    assert resender.fates([lost(queued, left_at=1.3)], 1.35, [0.02]) == [b"queued"]
    unknown = resender.token_for(b"unknown", 2.0)
    assert resender.fates([lost(unknown)], 2.35, [0.02]) == []
    assert resender.counters["resend_too_late"] == 1


def test_tunnel_resender_resends_what_was_stranded_once_and_hides_losses_if_asked() -> None:
    resender = TunnelResender(Resilience(reinjection=True, loss_hiding=True))
    early = resender.token_for(b"early", 0.0)
    recent = resender.token_for(b"recent", 0.9)
    assert early is not None and recent is not None
    # the connection moved at 1.0: the stranded packets young enough go again
    assert resender.migrated(1.0, [0.02]) == [b"recent"]
    assert resender.counters["reinjected"] == 1 and resender.counters["resend_too_late"] == 1
    # their loss, declared later, needs nothing more
    assert resender.fates([lost(early), lost(recent)], 1.1, [0.02]) == []
    assert resender.counters["datagrams_lost"] == 2
    # a loss on the path in use: loss hiding
    token = resender.token_for(b"new", 1.2)
    assert resender.fates([lost(token)], 1.25, [0.02]) == [b"new"]
    assert resender.counters["loss_hidden"] == 1
    # a re-send is never re-sent
    copy = resender.copy_token(b"new", 1.25)
    assert resender.fates([lost(copy)], 1.3, [0.02]) == []


def test_without_the_switches_nothing_is_remembered() -> None:
    resender = TunnelResender(Resilience())
    assert resender.token_for(b"x", 0.0) is None
    assert resender.migrated(1.0, [0.02]) == []
    off = Resilience.from_limits(
        type(
            "Limits",
            (),
            {
                "reinjection": False,
                "loss_hiding": "off",
                "duplication": False,
                "duplicate_up_to": 150,
                "resend_deadline": None,
            },
        )()
    )
    assert not off.tracks and off.duplicate_up_to == 0  # duplication off: no small copies


def test_a_gap_is_worth_waiting_for_only_when_a_resend_can_come() -> None:
    """Reinjection re-sends on another path only: on a single path the reorder buffer must not
    hold packets a round trip longer behind every loss (results/README.md, the goodput re-run)."""
    reinjection = Resilience(reinjection=True)
    assert reinjection.may_fill_a_gap(several_paths=True)
    assert not reinjection.may_fill_a_gap(several_paths=False)
    hiding = Resilience(loss_hiding=True)
    assert hiding.may_fill_a_gap(several_paths=False) and hiding.may_fill_a_gap(True)
    assert not Resilience().may_fill_a_gap(several_paths=True)
