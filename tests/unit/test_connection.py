"""TunnelConnection between two real aioquic endpoints, in memory with a fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from aioquic.quic import events as quic_events

from tests.unit.quic_harness import Network, Path
from tests.unit.tunnel_pairs import add_tunnel_path, events_of, ip4, ip6, tunnel
from tunnel.protocol.codel import CoDel
from tunnel.protocol.connection import (
    AccessReportReceived,
    ConnectionClosed,
    DropReason,
    JoinRequested,
    ModeNegotiated,
    PacketReceived,
    SendStatus,
    SessionEstablished,
    SessionJoinFailed,
    SessionRequested,
    StopSendingReceived,
    StreamDataReceived,
    StreamRejected,
    StreamReset,
    TcpConnectAccepted,
    TcpConnectFailed,
    TcpConnectRequested,
    TunnelUsageError,
)
from tunnel.protocol.quic_ext import packet_datagram_budget
from tunnel.wire.datagram import ProtocolType
from tunnel.wire.errors import ControlErrorCode, StreamErrorCode
from tunnel.wire.messages import (
    AccessId,
    AccessReport,
    AccessSignal,
    End,
    ErrorTLV,
    JoinSession,
    NewSession,
    SessionIdTLV,
    TcpConnect,
)
from tunnel.wire.modes import ALL_ALPN, ALPN_SESSION, ALPN_TUNNEL, TunnelMode


def connected(
    alpn: str = "qt",
    client_stream_mode: bool = False,
    server_stream_mode: bool = False,
    **kwargs: object,
) -> tuple[Network, Path]:
    net = Network()
    path = add_tunnel_path(
        net,
        [alpn],
        client_stream_mode=client_stream_mode,
        server_stream_mode=server_stream_mode,
        **kwargs,  # type: ignore[arg-type]
    )
    net.run(1.0)
    assert events_of(path.client, ModeNegotiated), path.client.tunnel_events
    return net, path


def raw_stream_data(endpoint_events: list[quic_events.QuicEvent], stream_id: int) -> bytes:
    return b"".join(
        e.data
        for e in endpoint_events
        if isinstance(e, quic_events.StreamDataReceived) and e.stream_id == stream_id
    )


def raw_fin(endpoint_events: list[quic_events.QuicEvent], stream_id: int) -> bool:
    return any(
        isinstance(e, quic_events.StreamDataReceived) and e.stream_id == stream_id and e.end_stream
        for e in endpoint_events
    )


def closed_with(path: Path, reason_part: str) -> None:
    """The server closed on a violation and the client learnt why."""
    server_close = events_of(path.server, ConnectionClosed)
    assert server_close and not server_close[0].by_peer
    assert reason_part in server_close[0].reason
    client_close = events_of(path.client, ConnectionClosed)
    assert client_close and client_close[0].by_peer and reason_part in client_close[0].reason


# -- ALPN ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpn", ALL_ALPN)
def test_each_alpn_token_selects_its_mode(alpn: str) -> None:
    _, path = connected(alpn)
    expected = TunnelMode.TUNNEL if alpn in ALPN_TUNNEL else TunnelMode.SESSION
    for endpoint in (path.client, path.server):
        assert events_of(endpoint, ModeNegotiated) == [ModeNegotiated(expected, False, alpn)]
        assert tunnel(endpoint).mode is expected


def test_alpn_mismatch_fails_the_handshake_cleanly() -> None:
    net = Network()
    path = add_tunnel_path(net, ["qt"], ["qt-session"])
    net.run(1.0)
    for endpoint in (path.client, path.server):
        assert not events_of(endpoint, ModeNegotiated)
        assert tunnel(endpoint).closed
    (client_close,) = events_of(path.client, ConnectionClosed)
    assert client_close.by_peer
    assert client_close.error_code == 0x100 + 120  # TLS alert no_application_protocol


def test_a_non_tunnel_alpn_closes_with_a_reason() -> None:
    net = Network()
    path = add_tunnel_path(net, ["h3"], ["h3"])
    net.run(1.0)
    (server_close,) = events_of(path.server, ConnectionClosed)
    assert "no tunnel ALPN was negotiated" in server_close.reason
    # Closed during the handshake: RFC 9000 §10.2.3 sends it as a transport-level
    # APPLICATION_ERROR (0xc) without the reason phrase.
    (client_close,) = events_of(path.client, ConnectionClosed)
    assert client_close.by_peer and client_close.error_code == 0xC


# -- datagrams ----------------------------------------------------------------------------


def test_a_resend_jumps_the_queue_and_its_cap_and_is_sent_first() -> None:
    """A re-send (issue 12: reinjection, loss hiding) fills a hole the peer waits on: it goes
    ahead of the new packets queued, after the earlier re-sends, and is taken even when the
    queue is at its cap (CoDel's too)."""
    net, path = connected("qt", max_pending_datagrams=3, queue_delay=CoDel(0.005, 0.1))
    client = tunnel(path.client)
    assert all(client.send_packet(ip4(n), now=0.0).sent for n in range(3))
    assert client.send_packet(ip4(3), now=0.0).status is SendStatus.QUEUE_FULL
    assert not client.can_send_datagram and client.can_resend_datagram
    assert client.send_packet(ip4(9), now=0.0, resend=True).sent
    assert client.send_packet(ip4(10), now=0.0, resend=True).sent
    assert client.pending_datagrams == 5
    net.run(0.1)
    received = [e.packet for e in events_of(path.server, PacketReceived)]
    # re-sends first, in the order they were made
    assert received == [ip4(9), ip4(10), ip4(0), ip4(1), ip4(2)]
    assert client.pending_datagrams == 0


def test_queued_datagrams_dropped_by_token_leave_the_rest_in_order() -> None:
    """drop_queued_datagrams (a session path found dead): the datagrams named go, with their
    share of the queue's bytes; the others, a re-send at the head among them, keep their
    order and place."""
    net, path = connected("qt", max_pending_datagrams=10)
    client = tunnel(path.client)
    for n in range(4):
        assert client.send_packet(ip4(n, 100), token=n, now=0.0).sent
    assert client.send_packet(ip4(9, 100), token=9, now=0.0, resend=True).sent
    each = client.queued_datagram_bytes // 5
    assert client.drop_queued_datagrams(lambda token: token in (1, 9)) == [9, 1]
    assert client.pending_datagrams == 3 and client.queued_datagram_bytes == 3 * each
    assert client.counters.drops["dead_path"] == 2
    assert client.send_packet(ip4(8, 100), token=8, now=0.0, resend=True).sent  # at the head
    net.run(0.1)
    received = [e.packet for e in events_of(path.server, PacketReceived)]
    assert received == [ip4(8, 100), ip4(0, 100), ip4(2, 100), ip4(3, 100)]


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_datagrams_flow_both_ways(alpn: str) -> None:
    net, path = connected(alpn)
    client, server = tunnel(path.client), tunnel(path.server)
    session = alpn in ALPN_SESSION
    assert client.send_packet(ip4(1), packet_tag=7 if session else None).sent
    assert server.send_packet(ip6(2), packet_tag=8 if session else None).sent
    net.run(0.1)
    assert events_of(path.server, PacketReceived) == [
        PacketReceived(ip4(1), ProtocolType.IPV4, 7 if session else None)
    ]
    assert events_of(path.client, PacketReceived) == [
        PacketReceived(ip6(2), ProtocolType.IPV6, 8 if session else None)
    ]
    assert client.counters.packets_out == 1 and server.counters.packets_in == 1
    assert server.counters.bytes_in == len(ip4(1))


def test_session_mode_requires_a_packet_tag() -> None:
    _, path = connected("qt-session")
    with pytest.raises(ValueError, match="packet tag"):
        tunnel(path.client).send_packet(ip4(1))


@pytest.mark.parametrize(
    ("alpn", "max_datagram_size", "expected"),
    [
        ("qt", 1200, 1170),
        ("qt", 1452, 1422),
        ("qt-session", 1200, 1166),
        ("qt-session", 1452, 1418),
    ],
)
def test_max_packet_size_is_the_measured_budget(
    alpn: str, max_datagram_size: int, expected: int
) -> None:
    net, path = connected(alpn, max_datagram_size=max_datagram_size)
    client = tunnel(path.client)
    assert client.max_packet_size() == expected
    tag = 1 if alpn in ALPN_SESSION else None
    assert client.send_packet(ip4(1, expected), packet_tag=tag).sent
    net.run(0.1)
    assert [e.packet for e in events_of(path.server, PacketReceived)] == [ip4(1, expected)]


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_oversized_packet_is_refused_before_aioquic_and_later_ones_flow(alpn: str) -> None:
    net, path = connected(alpn)
    client = tunnel(path.client)
    budget = client.max_packet_size()
    tag = 1 if alpn in ALPN_SESSION else None
    result = client.send_packet(ip4(1, budget + 1), packet_tag=tag)
    assert result.status is SendStatus.TOO_BIG and result.max_packet_size == budget
    assert client.counters.drops[DropReason.OVERSIZED.value] == 1
    assert client.pending_datagrams == 0
    for marker in (2, 3):
        assert client.send_packet(ip4(marker, 100), packet_tag=tag).sent
    net.run(0.1)
    assert [e.packet for e in events_of(path.server, PacketReceived)] == [
        ip4(2, 100),
        ip4(3, 100),
    ]
    assert client.counters.as_dict()["drops_oversized"] == 1


def test_without_the_check_aioquic_blocks_every_later_datagram() -> None:
    net, path = connected("qt")
    client = tunnel(path.client)
    budget = client.max_packet_size()
    assert budget == packet_datagram_budget(1200, 8)
    path.client.quic.send_datagram_frame(ip4(1, budget + 1))  # bypassing send_packet
    assert client.send_packet(ip4(2, 100)).sent  # accepted into aioquic's queue...
    net.run(1.0)
    assert events_of(path.server, PacketReceived) == []  # ...but never delivered
    assert client.pending_datagrams == 2


def test_pending_queue_cap_drops_and_counts() -> None:
    _, path = connected("qt", max_pending_datagrams=3)
    client = tunnel(path.client)
    results = [client.send_packet(ip4(n)).status for n in range(5)]
    assert results == [SendStatus.SENT] * 3 + [SendStatus.QUEUE_FULL] * 2
    assert client.counters.drops[DropReason.QUEUE_FULL.value] == 2
    assert not client.can_send_datagram


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_codel_refuses_arrivals_once_the_queue_waited_above_its_target_for_an_interval(
    alpn: str,
) -> None:
    # times in 1/128 s (exact in binary): arrivals every 1/128 s, interval 16/128 s
    _, path = connected(alpn, max_pending_datagrams=1000, queue_delay=CoDel(1 / 256, 16 / 128))
    client = tunnel(path.client)
    tag = 1 if alpn in ALPN_SESSION else None
    # Nothing is flushed: the queue only grows, so its delay is the oldest one's age.
    statuses = [client.send_packet(ip4(n), packet_tag=tag, now=n / 128).status for n in range(20)]
    # from the third arrival two packets wait, the oldest above the target: one interval
    # later the first drop, the next one an interval after it
    assert statuses == [SendStatus.SENT] * 18 + [SendStatus.QUEUE_DELAY, SendStatus.SENT]
    assert client.counters.drops[DropReason.QUEUE_DELAY.value] == 1
    assert client.pending_datagrams == 19  # the refused one was not queued


def test_codel_sees_the_queue_of_the_datagrams_aioquic_still_holds() -> None:
    net, path = connected("qt", queue_delay=CoDel(0.005, 0.1))
    client = tunnel(path.client)
    for n in range(5):
        assert client.send_packet(ip4(n), now=0.0).sent
    net.flush()  # sent: the queue is empty again, so its delay is 0 whatever time it is
    assert client.pending_datagrams == 0
    assert all(client.send_packet(ip4(n), now=10.0 + n * 0.05).sent for n in range(2))
    assert client.queue_delay is not None and not client.queue_delay.dropping


def test_a_connection_with_codel_needs_the_time() -> None:
    _, path = connected("qt", queue_delay=CoDel())
    client = tunnel(path.client)
    with pytest.raises(ValueError, match="now="):
        client.send_packet(ip4(1))


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_window_space_counts_queued_datagrams_as_the_packets_that_will_carry_them(
    alpn: str,
) -> None:
    net, path = connected(alpn)
    client = tunnel(path.client)
    tag = 1 if alpn in ALPN_SESSION else None
    cwnd, in_flight = client.congestion_window, client.bytes_in_flight
    assert client.queued_datagram_bytes == 0
    assert client.window_space == cwnd - in_flight
    # Full-budget packets: each DATAGRAM frame fills one QUIC packet of max_datagram_size.
    budget = client.max_packet_size()
    for n in range(5):
        assert client.send_packet(ip4(n, budget), packet_tag=tag).sent
    assert client.queued_datagram_bytes == 5 * 1200
    assert client.window_space == cwnd - in_flight - 5 * 1200
    # Sent but not yet acknowledged (no time passes; the pacer may hold some back): the bytes
    # move from the queue to the flight, exactly as aioquic counts them.
    net.flush()
    sent = 5 - client.pending_datagrams
    assert sent > 0
    assert client.queued_datagram_bytes == client.pending_datagrams * 1200
    assert client.bytes_in_flight - in_flight == sent * 1200
    net.run(0.2)  # acknowledged
    assert client.window_space == client.congestion_window - client.bytes_in_flight
    assert client.bytes_in_flight == 0


def test_window_space_goes_negative_when_more_is_queued_than_the_window_takes() -> None:
    _, path = connected("qt", max_pending_datagrams=1000)
    client = tunnel(path.client)
    packets = client.window_space // 1200 + 10
    for n in range(packets):
        assert client.send_packet(ip4(n, client.max_packet_size())).sent
    assert client.window_space < 0
    assert client.can_send_datagram  # the queue still takes packets: only a scheduler cares


def test_queued_bytes_count_a_datagram_queued_behind_our_back_as_a_full_packet() -> None:
    _, path = connected("qt")
    client = tunnel(path.client)
    client.send_packet(ip4(1, 100))
    path.client.quic.send_datagram_frame(ip4(2, 100))  # bypassing send_packet
    small = client.queued_datagram_bytes - 1200
    assert 100 < small < 200  # ours: 100 bytes plus header, frame and tag


def test_malformed_datagram_is_dropped_with_an_event() -> None:
    net, path = connected("qt-session")
    path.client.quic.send_datagram_frame(b"\x08")  # shorter than the 4-byte header
    path.client.quic.send_datagram_frame(b"\x12\x34\x00\x01" + ip4(1))  # unknown EtherType
    net.run(0.1)
    reasons = [e.reason for e in path.server.tunnel_events if hasattr(e, "reason")]
    assert reasons == [DropReason.MALFORMED, DropReason.UNSUPPORTED_PROTOCOL]
    assert events_of(path.server, PacketReceived) == []


def test_send_before_negotiation_is_not_ready() -> None:
    net = Network()
    path = add_tunnel_path(net, ["qt"])
    assert tunnel(path.client).send_packet(ip4(1)).status is SendStatus.NOT_READY


# -- sessions -----------------------------------------------------------------------------


def test_new_session_then_a_second_connection_joins_it() -> None:
    net = Network()
    first = add_tunnel_path(net, ["qt-session"])
    second = add_tunnel_path(net, ["qt-session"])
    net.run(1.0)
    assert tunnel(first.client).request_new_session(qos=b"video") == 2
    net.run(0.1)
    assert events_of(first.server, SessionRequested) == [SessionRequested(b"video")]
    assert tunnel(first.server).accept_session(b"S-1") == 3
    net.run(0.1)
    assert events_of(first.client, SessionEstablished) == [SessionEstablished(b"S-1")]

    tunnel(second.client).join_session(b"S-1")
    net.run(0.1)
    assert events_of(second.server, JoinRequested) == [JoinRequested(b"S-1")]
    with pytest.raises(TunnelUsageError, match="not a NewSession"):
        tunnel(second.server).accept_session(b"S-1")  # a Session ID answers New Session only
    assert tunnel(second.server).confirm_join() == 3
    net.run(0.1)
    assert events_of(second.client, SessionEstablished) == [SessionEstablished(b"S-1")]
    assert tunnel(second.client).session_id == b"S-1"
    for path in (first, second):
        assert not tunnel(path.client).closed and not tunnel(path.server).closed


def test_a_new_session_is_established_by_its_session_id_without_the_fin() -> None:
    """§6.1.1: the concentrator MUST answer New Session with a Session ID TLV; §4.1 says
    neither end may close its control stream. A concentrator that keeps its stream open
    never gave our client a session (it waited for the FIN, then gave up after 5 s)."""
    net, path = connected("qt-session")
    tunnel(path.client).request_new_session()
    net.run(0.1)
    path.server.quic.send_stream_data(3, SessionIdTLV(b"S-7").encode(), end_stream=False)
    net.run(0.1)
    assert events_of(path.client, SessionEstablished) == [SessionEstablished(b"S-7")]
    path.server.quic.send_stream_data(3, b"", end_stream=True)  # a FIN later: nothing more
    net.run(0.1)
    assert events_of(path.client, SessionEstablished) == [SessionEstablished(b"S-7")]
    assert not tunnel(path.client).closed


def test_join_success_is_signalled_by_fin_alone() -> None:
    """Session draft §6.1.3: "A successful joining of connection is indicated by the closure of
    the QUIC tunnel control stream of the concentrator" — no TLV on it, the client knows the ID."""
    net, path = connected("qt-session")
    tunnel(path.client).join_session(b"S-1")
    net.run(0.1)
    assert tunnel(path.server).confirm_join() == 3
    assert tunnel(path.server).session_id == b"S-1"
    net.run(0.1)
    assert raw_stream_data(path.client.quic_events, 3) == b"" and raw_fin(
        path.client.quic_events, 3
    )
    assert events_of(path.client, SessionEstablished) == [SessionEstablished(b"S-1")]
    assert tunnel(path.client).session_id == b"S-1"


@pytest.mark.parametrize(("answered", "accepted"), [(b"S-1", True), (b"S-2", False)])
def test_a_session_id_tlv_before_the_join_fin_is_accepted_if_it_names_the_session(
    answered: bytes, accepted: bool
) -> None:
    """What this concentrator sent until it followed §6.1.3 (Session ID TLV, then FIN) still
    joins; a Session ID of another session is a violation."""
    net, path = connected("qt-session")
    tunnel(path.client).join_session(b"S-1")
    net.run(0.1)
    path.server.quic.send_stream_data(3, SessionIdTLV(answered).encode(), end_stream=True)
    net.run(0.1)
    if accepted:
        assert events_of(path.client, SessionEstablished) == [SessionEstablished(b"S-1")]
    else:
        assert not events_of(path.client, SessionEstablished)
        assert "another Session ID" in events_of(path.client, ConnectionClosed)[0].reason


def test_a_zero_length_session_id_names_a_session() -> None:
    """The Session ID's size is "Variable" (§6.1.2): zero bytes name a session too."""
    net, path = connected("qt-session")
    tunnel(path.client).request_new_session()
    net.run(0.1)
    tunnel(path.server).accept_session(b"")
    net.run(0.1)
    assert events_of(path.client, SessionEstablished) == [SessionEstablished(b"")]
    assert tunnel(path.client).session_id == b""


def test_join_with_unknown_id_fails_with_reset_stream_code_1() -> None:
    net, path = connected("qt-session")
    tunnel(path.client).join_session(b"nope")
    net.run(0.1)
    assert events_of(path.server, JoinRequested) == [JoinRequested(b"nope")]
    tunnel(path.server).reject_join(ControlErrorCode.UNKNOWN_SESSION_ID)
    net.run(0.1)
    resets = [e for e in path.client.quic_events if isinstance(e, quic_events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(3, 1)]
    assert events_of(path.client, SessionJoinFailed) == [
        SessionJoinFailed(ControlErrorCode.UNKNOWN_SESSION_ID)
    ]
    assert tunnel(path.client).session_id is None


def test_session_negotiation_happens_at_most_once() -> None:
    net, path = connected("qt-session")
    tunnel(path.client).request_new_session()
    with pytest.raises(TunnelUsageError, match="already"):
        tunnel(path.client).join_session(b"x")
    net.run(0.1)
    tunnel(path.server).accept_session(b"S")
    with pytest.raises(TunnelUsageError, match="already answered"):
        tunnel(path.server).reject_join(ControlErrorCode.UNKNOWN_ERROR)


def test_role_and_mode_misuse_raise_usage_errors() -> None:
    _, path = connected("qt-session")
    with pytest.raises(TunnelUsageError, match="only the client"):
        tunnel(path.server).request_new_session()
    with pytest.raises(TunnelUsageError, match="no New Session"):
        tunnel(path.server).accept_session(b"S")
    _, tunnel_mode = connected("qt")
    with pytest.raises(TunnelUsageError, match="session mode"):
        tunnel(tunnel_mode.client).request_new_session()


@pytest.mark.parametrize(
    ("stream_id", "payload", "end", "reason"),
    [
        (2, SessionIdTLV(b"S").encode(), True, "the client sent a Session ID TLV"),
        (
            2,
            AccessReport(AccessId.THREE_GPP, AccessSignal.AVAILABLE).encode(),
            True,
            "Access Report TLV on control stream 2",
        ),
        (2, NewSession().encode() + JoinSession(b"S").encode(), True, "more than once"),
        (2, b"", True, "without New Session or Join Session"),
        (2, NewSession().encode()[:1], True, "ended inside a TLV"),
    ],
)
def test_control_stream_violations_close_the_connection(
    stream_id: int, payload: bytes, end: bool, reason: str
) -> None:
    net, path = connected("qt-session")
    path.client.quic.send_stream_data(stream_id, payload, end_stream=end)
    net.run(0.5)
    closed_with(path, reason)


@pytest.mark.parametrize("stream_id", [2, 6])
def test_unknown_control_tlvs_are_skipped_and_counted(stream_id: int) -> None:
    """New control TLV types come by IETF Review (tunnel draft §9.2.1): one we do not know is
    skipped and counted, on the control stream and on a report stream, and what follows it
    still counts."""
    net, path = connected("qt-session")
    unknown = b"\x09\x03abc"
    if stream_id == 2:
        path.client.quic.send_stream_data(2, unknown + NewSession(b"v").encode(), end_stream=True)
    else:
        tunnel(path.client).request_new_session()
        report = AccessReport(AccessId.THREE_GPP, AccessSignal.AVAILABLE).encode()
        path.client.quic.send_stream_data(6, unknown + report, end_stream=True)
    net.run(0.5)
    server = tunnel(path.server)
    assert not server.closed
    assert server.counters.drops["unknown_control_tlv"] == 1
    assert server.counters.drops["invalid_access_report"] == 0
    if stream_id == 2:
        assert events_of(path.server, SessionRequested) == [SessionRequested(b"v")]
    else:
        assert [e.access_id for e in events_of(path.server, AccessReportReceived)] == [
            AccessId.THREE_GPP
        ]


def test_control_tlv_off_the_control_stream_closes() -> None:
    net, path = connected("qt-session")
    tunnel(path.client).request_new_session()
    path.client.quic.send_stream_data(6, NewSession().encode(), end_stream=True)
    net.run(0.5)
    closed_with(path, "NewSession TLV on stream 6, which is not a control stream")


def test_session_tlvs_are_refused_in_tunnel_mode() -> None:
    net, path = connected("qt")
    path.client.quic.send_stream_data(2, NewSession().encode(), end_stream=True)
    net.run(0.5)
    closed_with(path, "not a control stream")


@pytest.mark.parametrize("message", [NewSession(), JoinSession(b"S")])
def test_concentrator_must_not_send_new_session(message: NewSession | JoinSession) -> None:
    """Session draft §6.1.1 / §6.1.3: the concentrator MUST NOT send New Session or Join
    Session TLVs."""
    net, path = connected("qt-session")
    tunnel(path.client).request_new_session()
    net.run(0.1)
    path.server.quic.send_stream_data(3, message.encode(), end_stream=True)
    net.run(0.5)
    (close,) = events_of(path.client, ConnectionClosed)
    name = type(message).__name__
    assert not close.by_peer and f"the concentrator sent a {name} TLV" in close.reason


@pytest.mark.parametrize("join", [False, True])
def test_the_client_closes_its_control_stream_after_its_request(join: bool) -> None:
    """§6.1.1 / §6.1.3: "After sending a New Session [Join Session] TLV, the client MUST close
    the QUIC tunnel control stream": the TLV and the FIN, nothing else, on stream 2."""
    net, path = connected("qt-session")
    if join:
        tunnel(path.client).join_session(b"S")
        expected = JoinSession(b"S").encode()
    else:
        tunnel(path.client).request_new_session(qos=b"voice")
        expected = NewSession(b"voice").encode()
    net.run(0.1)
    assert raw_stream_data(path.server.quic_events, 2) == expected
    assert raw_fin(path.server.quic_events, 2)


# -- access reports -----------------------------------------------------------------------


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_access_reports_update_the_receiver_view(alpn: str) -> None:
    net, path = connected(alpn)
    client = tunnel(path.client)
    if alpn == "qt-session":
        with pytest.raises(TunnelUsageError, match="control stream"):
            client.send_access_report(AccessId.THREE_GPP, AccessSignal.UNAVAILABLE)
        client.request_new_session()
    stream_id = client.send_access_report(AccessId.THREE_GPP, AccessSignal.UNAVAILABLE)
    assert stream_id == (2 if alpn == "qt" else 6)
    net.run(0.1)
    server = tunnel(path.server)
    assert events_of(path.server, AccessReportReceived) == [
        AccessReportReceived(AccessId.THREE_GPP, AccessSignal.UNAVAILABLE)
    ]
    assert not server.is_available(AccessId.THREE_GPP)
    assert server.is_available(AccessId.NON_THREE_GPP)  # never reported
    client.send_access_report(AccessId.THREE_GPP, AccessSignal.AVAILABLE)
    net.run(0.1)
    assert server.is_available(AccessId.THREE_GPP)
    assert server.counters.access_reports_received == 2
    assert raw_fin(path.server.quic_events, stream_id)


def test_cancelled_access_report_is_not_applied() -> None:
    net, path = connected("qt")
    client = tunnel(path.client)
    stream_id = client.send_access_report(AccessId.NON_THREE_GPP, AccessSignal.UNAVAILABLE)
    client.cancel_access_report(stream_id)  # before it left: only RESET_STREAM goes out
    net.run(0.1)
    resets = [e for e in path.server.quic_events if isinstance(e, quic_events.StreamReset)]
    assert [e.stream_id for e in resets] == [stream_id]
    assert events_of(path.server, AccessReportReceived) == []
    assert tunnel(path.server).is_available(AccessId.NON_THREE_GPP)
    with pytest.raises(TunnelUsageError):
        client.cancel_access_report(99)


def test_invalid_access_id_is_discarded_not_fatal() -> None:
    net, path = connected("qt")
    path.client.quic.send_stream_data(2, b"\x00\x02\x50\x01", end_stream=True)  # AI 5
    net.run(0.1)
    server = tunnel(path.server)
    assert not server.closed and events_of(path.server, AccessReportReceived) == []
    assert server.counters.drops[DropReason.INVALID_ACCESS_REPORT.value] == 1


def test_two_reports_on_one_stream_and_reports_from_the_concentrator_close() -> None:
    net, path = connected("qt")
    report = AccessReport(AccessId.THREE_GPP, AccessSignal.AVAILABLE).encode()
    path.client.quic.send_stream_data(2, report + report, end_stream=True)
    net.run(0.5)
    closed_with(path, "more than one Access Report TLV")

    net, path = connected("qt")
    with pytest.raises(TunnelUsageError, match="only the client"):
        tunnel(path.server).send_access_report(AccessId.THREE_GPP, AccessSignal.AVAILABLE)
    path.server.quic.send_stream_data(3, report, end_stream=True)
    net.run(0.5)
    (close,) = events_of(path.client, ConnectionClosed)
    assert "concentrator sent an Access Report" in close.reason


# -- stream mode --------------------------------------------------------------------------


def stream_mode_pair() -> tuple[Network, Path]:
    net, path = connected("qt", client_stream_mode=True, server_stream_mode=True)
    assert tunnel(path.client).stream_mode and tunnel(path.server).stream_mode
    return net, path


@pytest.mark.parametrize(("client_on", "server_on"), [(True, False), (False, True), (False, False)])
def test_stream_mode_needs_both_parameters(client_on: bool, server_on: bool) -> None:
    net, path = connected("qt", client_stream_mode=client_on, server_stream_mode=server_on)
    (negotiated,) = events_of(path.client, ModeNegotiated)
    assert not negotiated.stream_mode
    with pytest.raises(TunnelUsageError, match="stream mode was not negotiated"):
        tunnel(path.client).open_tcp_stream(IPv4Address("192.0.2.1"), 80)
    path.client.quic.send_stream_data(0, b"\x00", end_stream=False)
    net.run(0.5)
    closed_with(path, "stream mode was not negotiated")


def test_tcp_stream_connect_accept_data_and_fin() -> None:
    net, path = stream_mode_pair()
    client, server = tunnel(path.client), tunnel(path.server)
    stream_id = client.open_tcp_stream(IPv4Address("192.0.2.10"), 8080)
    client.send_stream_data(stream_id, b"hello")
    net.run(0.1)
    assert raw_stream_data(path.server.quic_events, stream_id).startswith(
        TcpConnect(IPv4Address("192.0.2.10"), 8080).encode() + End().encode()
    )
    assert events_of(path.server, TcpConnectRequested) == [
        TcpConnectRequested(stream_id, IPv4Address("192.0.2.10"), 8080)
    ]
    assert events_of(path.server, StreamDataReceived) == [
        StreamDataReceived(stream_id, b"hello", False)
    ]
    server.accept_tcp_stream(stream_id)
    server.send_stream_data(stream_id, b"world", end=True)
    net.run(0.1)
    assert events_of(path.client, TcpConnectAccepted) == [TcpConnectAccepted(stream_id)]
    data = events_of(path.client, StreamDataReceived)
    assert b"".join(e.data for e in data) == b"world" and data[-1].end
    client.send_stream_data(stream_id, b"", end=True)
    net.run(0.1)
    assert events_of(path.server, StreamDataReceived)[-1] == StreamDataReceived(
        stream_id, b"", True
    )
    with pytest.raises(TunnelUsageError):
        client.send_stream_data(stream_id, b"after fin")


def test_the_concentrator_may_open_streams_too() -> None:
    net, path = stream_mode_pair()
    stream_id = tunnel(path.server).open_tcp_stream(IPv6Address("2001:db8::5"), 22)
    net.run(0.1)
    assert events_of(path.client, TcpConnectRequested) == [
        TcpConnectRequested(stream_id, IPv6Address("2001:db8::5"), 22)
    ]
    tunnel(path.client).accept_tcp_stream(stream_id)
    net.run(0.1)
    assert events_of(path.server, TcpConnectAccepted) == [TcpConnectAccepted(stream_id)]


def test_failed_connect_is_error_end_and_fin() -> None:
    net, path = stream_mode_pair()
    stream_id = tunnel(path.client).open_tcp_stream(IPv4Address("192.0.2.10"), 80)
    net.run(0.1)
    tunnel(path.server).fail_tcp_stream(stream_id, StreamErrorCode.NETWORK_FAILURE, b"why")
    net.run(0.1)
    expected = ErrorTLV(StreamErrorCode.NETWORK_FAILURE, b"why").encode() + End().encode()
    assert raw_stream_data(path.client.quic_events, stream_id) == expected
    assert raw_fin(path.client.quic_events, stream_id)
    assert events_of(path.client, TcpConnectFailed) == [
        TcpConnectFailed(stream_id, StreamErrorCode.NETWORK_FAILURE, b"why")
    ]
    assert events_of(path.client, StreamDataReceived) == []


def test_reset_maps_to_stop_sending_and_reset_stream_code_0() -> None:
    net, path = stream_mode_pair()
    stream_id = tunnel(path.client).open_tcp_stream(IPv4Address("192.0.2.10"), 80)
    net.run(0.1)
    tunnel(path.server).accept_tcp_stream(stream_id)
    tunnel(path.server).reset_tcp_stream(stream_id)
    net.run(0.1)
    assert events_of(path.client, StreamReset) == [StreamReset(stream_id, 0)]
    assert events_of(path.client, StopSendingReceived) == [StopSendingReceived(stream_id, 0)]


def test_a_reset_after_our_fin_stops_the_peer_and_keeps_what_we_finished_sending() -> None:
    """The destination sent 200 kB and its FIN, then a RST: the relay's state asks for
    STOP_SENDING only (our half finished). A RESET_STREAM as well made aioquic drop the bytes
    not acknowledged yet, so the client read a truncated stream and a reset (found by a
    review); now it reads every byte and the FIN, and is asked to stop sending."""
    net, path = stream_mode_pair()
    client, server = tunnel(path.client), tunnel(path.server)
    stream_id = client.open_tcp_stream(IPv4Address("192.0.2.10"), 80)
    net.run(0.1)
    server.accept_tcp_stream(stream_id)
    body = bytes(range(256)) * 800
    server.send_stream_data(stream_id, body, end=True)
    server.reset_tcp_stream(stream_id, stop_sending=True, reset=False)
    net.run(1.0)
    data = events_of(path.client, StreamDataReceived)
    assert b"".join(e.data for e in data) == body and data[-1].end
    assert events_of(path.client, StreamReset) == []
    assert events_of(path.client, StopSendingReceived) == [StopSendingReceived(stream_id, 0)]


def test_a_stream_refused_for_a_violation_is_also_stopped() -> None:
    """Error TLV, End and FIN answer the bad preamble; a STOP_SENDING now tells the peer that
    nothing more it sends there is read (it could go on pushing bytes, found by a review)."""
    net, path = stream_mode_pair()
    path.client.quic.send_stream_data(0, End().encode())
    net.run(0.1)
    stops = [e for e in path.client.quic_events if isinstance(e, quic_events.StopSendingReceived)]
    assert [(e.stream_id, e.error_code) for e in stops] == [(0, 0)]


def test_tlvs_that_never_reach_end_are_refused_past_4_kib() -> None:
    """Unknown TLVs are skipped (extensions, -tcp §5.1), but a stream of them that never
    reaches End held its stream and a stream slot for good without counting as a connect."""
    net, path = stream_mode_pair()
    unknown = bytes([0x7F, 255]) + bytes(255)  # an unknown type, 257 bytes
    path.client.quic.send_stream_data(0, unknown * 16)  # 4,112 bytes
    net.run(0.1)
    (rejected,) = events_of(path.server, StreamRejected)
    assert rejected.code is StreamErrorCode.PROTOCOL_VIOLATION
    assert "4096 bytes of TLVs before the End TLV" in rejected.reason


def _malformed_loopback_connect() -> bytes:
    return bytes([0x00, 18]) + (80).to_bytes(2, "big") + IPv6Address("::1").packed


@pytest.mark.parametrize(
    ("preamble", "code"),
    [
        (
            TcpConnect(IPv4Address("192.0.2.1"), 80).encode() * 2 + End().encode(),
            StreamErrorCode.PROTOCOL_VIOLATION,
        ),
        (_malformed_loopback_connect() + End().encode(), StreamErrorCode.MALFORMED_TLV),
        (End().encode(), StreamErrorCode.PROTOCOL_VIOLATION),
    ],
    ids=["connect-twice", "malformed-connect", "end-without-connect"],
)
def test_bad_preamble_gets_error_end_fin(preamble: bytes, code: StreamErrorCode) -> None:
    net, path = stream_mode_pair()
    path.client.quic.send_stream_data(0, preamble + b"bytestream")
    net.run(0.1)
    (rejected,) = events_of(path.server, StreamRejected)
    assert (rejected.stream_id, rejected.code) == (0, code)
    assert events_of(path.server, TcpConnectRequested) == []
    assert raw_stream_data(path.client.quic_events, 0) == ErrorTLV(code).encode() + End().encode()
    assert raw_fin(path.client.quic_events, 0)
    # the client's TunnelConnection reads it as a failed connect on its own stream
    assert events_of(path.client, TcpConnectFailed) == [TcpConnectFailed(0, code, b"")]
    assert not tunnel(path.server).closed


def test_tcp_connect_on_a_stream_the_receiver_opened_aborts_that_stream() -> None:
    net, path = stream_mode_pair()
    stream_id = tunnel(path.client).open_tcp_stream(IPv4Address("192.0.2.1"), 80)
    net.run(0.1)
    # The concentrator answers with a TCP Connect of its own on the client's stream.
    path.server.quic.send_stream_data(
        stream_id, TcpConnect(IPv4Address("192.0.2.2"), 80).encode() + End().encode()
    )
    net.run(0.1)
    (rejected,) = events_of(path.client, StreamRejected)
    assert rejected.code is StreamErrorCode.PROTOCOL_VIOLATION
    assert "stream this endpoint opened" in rejected.reason
    # The client's End TLV is already sent, so it cannot answer in band: it aborts.
    resets = [e for e in path.server.quic_events if isinstance(e, quic_events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(stream_id, 0)]
    assert events_of(path.client, TcpConnectAccepted) == []


def test_answer_misuse_raises() -> None:
    net, path = stream_mode_pair()
    stream_id = tunnel(path.client).open_tcp_stream(IPv4Address("192.0.2.1"), 80)
    with pytest.raises(TunnelUsageError, match="no TCP Connect"):
        tunnel(path.client).accept_tcp_stream(stream_id)
    net.run(0.1)
    tunnel(path.server).accept_tcp_stream(stream_id)
    with pytest.raises(TunnelUsageError, match="already answered"):
        tunnel(path.server).fail_tcp_stream(stream_id, StreamErrorCode.NETWORK_FAILURE)
    with pytest.raises(ValueError):
        tunnel(path.client).open_tcp_stream(IPv4Address("127.0.0.1"), 80)
