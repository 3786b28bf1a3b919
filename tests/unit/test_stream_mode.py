"""Stream mode TCP <-> QUIC stream mapping (-tcp draft §3, figure tcp-proxy-stream)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.protocol.stream_mode import (
    RESET_ERROR_CODE,
    STREAM_TO_TCP,
    TCP_TO_STREAM,
    HalfState,
    RelayState,
    StreamAction,
    StreamEvent,
    TcpAction,
    TcpEvent,
)
from tunnel.wire.errors import StreamErrorCode, TunnelError

S, T = StreamAction, TcpAction


def opened_by_tcp() -> RelayState:
    relay = RelayState()
    assert relay.on_tcp(TcpEvent.SYN_RECEIVED) == (S.OPEN_STREAM_SEND_TLVS,)
    return relay


def opened_by_stream() -> RelayState:
    relay = RelayState()
    assert relay.on_stream(StreamEvent.STREAM_OPENED_TLVS_RECEIVED) == (T.SEND_SYN,)
    return relay


def test_tables_are_the_drafts_figure() -> None:
    assert dict(TCP_TO_STREAM) == {
        TcpEvent.SYN_RECEIVED: (S.OPEN_STREAM_SEND_TLVS,),
        TcpEvent.FIN_RECEIVED: (S.SEND_FIN,),
        TcpEvent.RST_RECEIVED: (S.SEND_STOP_SENDING, S.SEND_RESET_STREAM),
        TcpEvent.DATA_RECEIVED: (S.SEND_DATA,),
    }
    assert dict(STREAM_TO_TCP) == {
        StreamEvent.STREAM_OPENED_TLVS_RECEIVED: (T.SEND_SYN,),
        StreamEvent.FIN_RECEIVED: (T.SEND_FIN,),
        StreamEvent.STOP_SENDING_RECEIVED: (T.SEND_RST,),
        StreamEvent.RESET_STREAM_RECEIVED: (T.SEND_RST,),
        StreamEvent.DATA_RECEIVED: (T.SEND_DATA,),
    }
    assert RESET_ERROR_CODE == 0  # TCP_CONNECTION_RESET


# -- every row of the upper table (TCP -> stream) --------------------------------------------------


def test_tcp_syn_opens_stream() -> None:
    relay = opened_by_tcp()
    assert (relay.up, relay.down) == (HalfState.OPEN, HalfState.OPEN)


def test_tcp_data_is_sent_on_stream() -> None:
    assert opened_by_tcp().on_tcp(TcpEvent.DATA_RECEIVED) == (S.SEND_DATA,)


def test_tcp_fin_sends_stream_fin() -> None:
    relay = opened_by_tcp()
    assert relay.on_tcp(TcpEvent.FIN_RECEIVED) == (S.SEND_FIN,)
    assert (relay.up, relay.down) == (HalfState.FINISHED, HalfState.OPEN)


def test_tcp_rst_sends_stop_sending_and_reset_stream() -> None:
    relay = opened_by_tcp()
    assert relay.on_tcp(TcpEvent.RST_RECEIVED) == (S.SEND_STOP_SENDING, S.SEND_RESET_STREAM)
    assert (relay.up, relay.down) == (HalfState.RESET, HalfState.RESET)
    assert relay.closed


# -- every row of the lower table (stream -> TCP) --------------------------------------------------


def test_stream_opened_sends_syn() -> None:
    relay = opened_by_stream()
    assert (relay.up, relay.down) == (HalfState.OPEN, HalfState.OPEN)


def test_stream_data_is_sent_on_tcp() -> None:
    assert opened_by_stream().on_stream(StreamEvent.DATA_RECEIVED) == (T.SEND_DATA,)


def test_stream_fin_sends_tcp_fin() -> None:
    relay = opened_by_stream()
    assert relay.on_stream(StreamEvent.FIN_RECEIVED) == (T.SEND_FIN,)
    assert (relay.up, relay.down) == (HalfState.OPEN, HalfState.FINISHED)


@pytest.mark.parametrize(
    "event", [StreamEvent.STOP_SENDING_RECEIVED, StreamEvent.RESET_STREAM_RECEIVED]
)
def test_stream_abort_sends_rst(event: StreamEvent) -> None:
    relay = opened_by_stream()
    assert relay.on_stream(event) == (T.SEND_RST,)
    assert relay.closed and relay.up is HalfState.RESET and relay.down is HalfState.RESET


# -- half-close ------------------------------------------------------------------------------------


def test_half_close_tcp_side_keeps_receiving() -> None:
    relay = opened_by_tcp()
    relay.on_tcp(TcpEvent.FIN_RECEIVED)
    for _ in range(3):  # the other direction keeps flowing after our FIN
        assert relay.on_stream(StreamEvent.DATA_RECEIVED) == (T.SEND_DATA,)
    assert not relay.closed
    assert relay.on_stream(StreamEvent.FIN_RECEIVED) == (T.SEND_FIN,)
    assert relay.closed


def test_half_close_stream_side_keeps_sending() -> None:
    relay = opened_by_stream()
    relay.on_stream(StreamEvent.FIN_RECEIVED)
    assert relay.on_tcp(TcpEvent.DATA_RECEIVED) == (S.SEND_DATA,)
    assert relay.on_tcp(TcpEvent.FIN_RECEIVED) == (S.SEND_FIN,)
    assert relay.closed


def test_tcp_rst_after_half_close_stops_only_the_open_half() -> None:
    relay = opened_by_tcp()
    relay.on_tcp(TcpEvent.FIN_RECEIVED)  # TCP->stream finished gracefully
    assert relay.on_tcp(TcpEvent.RST_RECEIVED) == (S.SEND_STOP_SENDING,)
    relay = opened_by_tcp()
    relay.on_stream(StreamEvent.FIN_RECEIVED)  # stream->TCP finished gracefully
    assert relay.on_tcp(TcpEvent.RST_RECEIVED) == (S.SEND_RESET_STREAM,)


def test_abort_of_a_finished_half_is_absorbed() -> None:
    relay = opened_by_tcp()
    relay.on_tcp(TcpEvent.FIN_RECEIVED)
    assert relay.on_stream(StreamEvent.STOP_SENDING_RECEIVED) == ()
    relay.on_stream(StreamEvent.FIN_RECEIVED)
    assert relay.on_stream(StreamEvent.RESET_STREAM_RECEIVED) == ()
    assert relay.on_tcp(TcpEvent.RST_RECEIVED) == ()  # both finished: nothing left to abort


def test_events_racing_an_abort_are_absorbed() -> None:
    relay = opened_by_tcp()
    relay.on_tcp(TcpEvent.RST_RECEIVED)
    assert relay.on_stream(StreamEvent.DATA_RECEIVED) == ()
    assert relay.on_stream(StreamEvent.FIN_RECEIVED) == ()
    assert relay.on_stream(StreamEvent.RESET_STREAM_RECEIVED) == ()
    assert relay.on_tcp(TcpEvent.DATA_RECEIVED) == ()
    assert relay.on_tcp(TcpEvent.RST_RECEIVED) == ()


# -- protocol violations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "tcp_event", "stream_event", "reason"),
    [
        ([], TcpEvent.DATA_RECEIVED, None, "before the connection was opened"),
        ([], TcpEvent.FIN_RECEIVED, None, "before the connection was opened"),
        ([], TcpEvent.RST_RECEIVED, None, "before the connection was opened"),
        ([], None, StreamEvent.DATA_RECEIVED, "before the connection was opened"),
        ([], None, StreamEvent.FIN_RECEIVED, "before the connection was opened"),
        ([], None, StreamEvent.STOP_SENDING_RECEIVED, "before the connection was opened"),
        ([], None, StreamEvent.RESET_STREAM_RECEIVED, "before the connection was opened"),
        (["syn"], TcpEvent.SYN_RECEIVED, None, "already open"),
        (["syn"], None, StreamEvent.STREAM_OPENED_TLVS_RECEIVED, "already open"),
        (["syn", "tcp fin"], TcpEvent.DATA_RECEIVED, None, "ended with FIN"),
        (["syn", "tcp fin"], TcpEvent.FIN_RECEIVED, None, "ended with FIN"),
        (["syn", "stream fin"], None, StreamEvent.DATA_RECEIVED, "ended with FIN"),
        (["syn", "stream fin"], None, StreamEvent.FIN_RECEIVED, "ended with FIN"),
        (["syn", "rst"], TcpEvent.SYN_RECEIVED, None, "already open"),
    ],
)
def test_illegal_events_raise_protocol_violation(
    setup: list[str],
    tcp_event: TcpEvent | None,
    stream_event: StreamEvent | None,
    reason: str,
) -> None:
    relay = RelayState()
    steps: dict[str, Callable[[], object]] = {
        "syn": lambda: relay.on_tcp(TcpEvent.SYN_RECEIVED),
        "tcp fin": lambda: relay.on_tcp(TcpEvent.FIN_RECEIVED),
        "stream fin": lambda: relay.on_stream(StreamEvent.FIN_RECEIVED),
        "rst": lambda: relay.on_tcp(TcpEvent.RST_RECEIVED),
    }
    for step in setup:
        steps[step]()
    before = (relay.up, relay.down)
    with pytest.raises(TunnelError, match=reason) as info:
        if tcp_event is not None:
            relay.on_tcp(tcp_event)
        else:
            assert stream_event is not None
            relay.on_stream(stream_event)
    assert info.value.code is StreamErrorCode.PROTOCOL_VIOLATION
    assert (relay.up, relay.down) == before  # a rejected event changes nothing


# -- two relays end to end -------------------------------------------------------------------------

_STREAM_ACTION_ARRIVES_AS = {
    S.OPEN_STREAM_SEND_TLVS: StreamEvent.STREAM_OPENED_TLVS_RECEIVED,
    S.SEND_DATA: StreamEvent.DATA_RECEIVED,
    S.SEND_FIN: StreamEvent.FIN_RECEIVED,
    S.SEND_STOP_SENDING: StreamEvent.STOP_SENDING_RECEIVED,
    S.SEND_RESET_STREAM: StreamEvent.RESET_STREAM_RECEIVED,
}


def across(peer: RelayState, actions: tuple[StreamAction, ...]) -> list[TcpAction]:
    """Deliver one relay's stream actions to the peer relay; the peer's TCP actions."""
    out: list[TcpAction] = []
    for action in actions:
        out += peer.on_stream(_STREAM_ACTION_ARRIVES_AS[action])
    return out


def test_example_flow_of_the_draft() -> None:
    # -tcp draft figure example-stream-mode: connect, request, response, server closes first
    client, concentrator = RelayState(), RelayState()
    assert across(concentrator, client.on_tcp(TcpEvent.SYN_RECEIVED)) == [T.SEND_SYN]
    assert across(concentrator, client.on_tcp(TcpEvent.DATA_RECEIVED)) == [T.SEND_DATA]
    assert across(client, concentrator.on_tcp(TcpEvent.DATA_RECEIVED)) == [T.SEND_DATA]
    assert across(client, concentrator.on_tcp(TcpEvent.FIN_RECEIVED)) == [T.SEND_FIN]
    assert across(concentrator, client.on_tcp(TcpEvent.FIN_RECEIVED)) == [T.SEND_FIN]
    assert client.closed and concentrator.closed


def test_rst_from_destination_reaches_client_once() -> None:
    client, concentrator = RelayState(), RelayState()
    across(concentrator, client.on_tcp(TcpEvent.SYN_RECEIVED))
    # STOP_SENDING and RESET_STREAM both arrive; the client resets its TCP connection once
    assert across(client, concentrator.on_tcp(TcpEvent.RST_RECEIVED)) == [T.SEND_RST]
    assert client.closed and concentrator.closed


@given(
    st.lists(
        st.tuples(
            st.booleans(),  # which end's TCP acts
            st.sampled_from([TcpEvent.DATA_RECEIVED, TcpEvent.FIN_RECEIVED, TcpEvent.RST_RECEIVED]),
        ),
        max_size=30,
    )
)
def test_two_relays_never_disagree(script: list[tuple[bool, TcpEvent]]) -> None:
    """Any legal TCP behaviour at both ends is relayed without a protocol violation, and a FIN
    or RST reaches the far TCP end exactly when it should."""
    client, concentrator = RelayState(), RelayState()
    across(concentrator, client.on_tcp(TcpEvent.SYN_RECEIVED))
    ended = {True: False, False: False}  # this end's TCP sent FIN or RST
    aborted = False
    for at_client, event in script:
        if ended[at_client]:
            continue  # a TCP that sent FIN sends no more data or FIN; after RST, nothing
        here, there = (client, concentrator) if at_client else (concentrator, client)
        delivered = across(there, here.on_tcp(event))
        if aborted:
            assert delivered == []
        elif event is TcpEvent.RST_RECEIVED:
            # whatever the far end did before (even FIN), its TCP gets exactly one RST
            assert delivered == [T.SEND_RST]
            aborted = True
        elif event is TcpEvent.FIN_RECEIVED:
            assert delivered == [T.SEND_FIN]
        else:
            assert delivered == [T.SEND_DATA]
        if event is not TcpEvent.DATA_RECEIVED:
            ended[at_client] = True
    assert client.closed == concentrator.closed
