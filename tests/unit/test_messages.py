"""Control and stream TLVs of the three drafts: byte vectors from the draft figures, round trips,
strict validation, and the incremental stream decoders."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import wire_strategies as ws
from tunnel.wire.errors import StreamErrorCode, TunnelError
from tunnel.wire.messages import (
    MAX_ERROR_PAYLOAD,
    AccessId,
    AccessReport,
    AccessSignal,
    ControlMessage,
    ControlStreamDecoder,
    End,
    ErrorTLV,
    JoinSession,
    NewSession,
    SessionIdTLV,
    StreamMessage,
    StreamPreambleDecoder,
    TcpConnect,
    TcpConnectOk,
    decode_control,
    decode_stream,
)

MALFORMED = StreamErrorCode.MALFORMED_TLV
VIOLATION = StreamErrorCode.PROTOCOL_VIOLATION


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- byte-exact vectors, built by hand from the draft figures ----------------------------------

CONTROL_VECTORS: list[tuple[ControlMessage, str]] = [
    # tunnel-00 §7.1.1 figure: Type=0x00, Length=0x02, AI=2 (non-3GPP) R=0, Signal=2 (unavailable)
    (AccessReport(AccessId.NON_THREE_GPP, AccessSignal.UNAVAILABLE), "00 02 20 02"),
    (AccessReport(AccessId.THREE_GPP, AccessSignal.AVAILABLE), "00 02 10 01"),
    # tunnel-session-00 §6.1.1: the QoS Flow Indication is optional
    (NewSession(), "01 00"),
    (NewSession(b"\x05"), "01 01 05"),
    # tunnel-session-00 §6.1.2 / §6.1.3: opaque Session ID after Type and Length
    (SessionIdTLV(h("deadbeef")), "02 04 deadbeef"),
    (JoinSession(h("deadbeef")), "03 04 deadbeef"),
]

STREAM_VECTORS: list[tuple[StreamMessage, str]] = [
    # tunnel-tcp-00 §5.1.1: port 80 then 192.0.2.1 as IPv4-mapped IPv6 (RFC 4291 ::ffff:0:0/96)
    (TcpConnect(IPv4Address("192.0.2.1"), 80), "00 12 0050 00000000000000000000ffffc0000201"),
    (TcpConnect(IPv6Address("2001:db8::1"), 443), "00 12 01bb 20010db8000000000000000000000001"),
    (TcpConnectOk(), "01 00"),  # §5.1.2: no value
    (ErrorTLV(StreamErrorCode.NETWORK_FAILURE), "02 02 0003"),  # §5.1.3: code, no payload
    (ErrorTLV(StreamErrorCode.ICMP_PACKET_RECEIVED, h("0301")), "02 04 0001 0301"),
    (End(), "ff 00"),  # §5.1.4: no value
]


@pytest.mark.parametrize(("message", "wire"), CONTROL_VECTORS)
def test_control_vector(message: ControlMessage, wire: str) -> None:
    assert message.encode() == h(wire)
    assert decode_control(h(wire)) == message


@pytest.mark.parametrize(("message", "wire"), STREAM_VECTORS)
def test_stream_vector(message: StreamMessage, wire: str) -> None:
    assert message.encode() == h(wire)
    assert decode_stream(h(wire)) == message


def test_stream_figure_offsets() -> None:
    # tunnel-tcp-00 §5.1 figure: TCP Connect at offset 0, End at 20, bytestream at 22.
    wire = TcpConnect(IPv4Address("192.0.2.1"), 80).encode() + End().encode()
    assert len(wire) == 22 and wire[20:] == h("ff00")


# --- round trips: one property per message ----------------------------------------------------


def _round_trip(message: ControlMessage | StreamMessage) -> None:
    wire = message.encode()
    assert wire[1] == len(wire) - 2
    assert type(message).decode_value(wire[2:]) == message


@given(ws.access_reports)
def test_access_report_round_trip(message: AccessReport) -> None:
    _round_trip(message)
    assert decode_control(message.encode()) == message


@given(ws.new_sessions)
def test_new_session_round_trip(message: NewSession) -> None:
    _round_trip(message)
    assert decode_control(message.encode()) == message


@given(ws.session_id_tlvs)
def test_session_id_round_trip(message: SessionIdTLV) -> None:
    _round_trip(message)
    assert decode_control(message.encode()) == message


@given(ws.join_sessions)
def test_join_session_round_trip(message: JoinSession) -> None:
    _round_trip(message)
    assert decode_control(message.encode()) == message


@given(ws.tcp_connects)
def test_tcp_connect_round_trip(message: TcpConnect) -> None:
    _round_trip(message)
    assert decode_stream(message.encode()) == message


@given(ws.error_tlvs)
def test_error_tlv_round_trip(message: ErrorTLV) -> None:
    _round_trip(message)
    assert decode_stream(message.encode()) == message


def test_valueless_stream_tlvs_round_trip() -> None:
    for message in (TcpConnectOk(), End()):
        _round_trip(message)


# --- Access Report ------------------------------------------------------------------------------


@pytest.mark.parametrize("reserved", range(16))
def test_access_report_reserved_nibble_ignored_on_receipt_and_zeroed_on_send(reserved: int) -> None:
    # tunnel-00 §7.1.1: R "MUST be zeroed on transmission and ignored on receipt".
    received = decode_control(bytes((0x00, 0x02, 0x10 | reserved, 0x02)))
    assert received == AccessReport(AccessId.THREE_GPP, AccessSignal.UNAVAILABLE)
    assert received.encode() == h("00 02 10 02")


@pytest.mark.parametrize("access_id", [0, 3, 15])
def test_access_report_unknown_access_id_is_malformed(access_id: int) -> None:
    # §7.1.1: other Access ID values "are invalid and the TLV that contains it MUST be discarded".
    with pytest.raises(TunnelError, match="Access ID") as info:
        decode_control(bytes((0, 2, access_id << 4, 1)))
    assert info.value.code is MALFORMED


@pytest.mark.parametrize("signal", [0, 3, 255])
def test_access_report_unknown_signal_is_malformed(signal: int) -> None:
    with pytest.raises(TunnelError, match="Signal") as info:
        decode_control(bytes((0, 2, 0x20, signal)))
    assert info.value.code is MALFORMED


@pytest.mark.parametrize("wire", ["00 01 20", "00 03 20 02 00", "00 00"])
def test_access_report_wrong_fixed_size_is_malformed(wire: str) -> None:
    with pytest.raises(TunnelError, match="2 value bytes") as info:
        decode_control(h(wire))
    assert info.value.code is MALFORMED


def test_access_report_constructor_refuses_unknown_values() -> None:
    with pytest.raises(ValueError):
        AccessReport(3, AccessSignal.AVAILABLE)  # type: ignore[arg-type]


# --- session control TLVs -----------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "cls"), [("02 00", SessionIdTLV), ("03 00", JoinSession)])
def test_zero_length_session_id_is_valid(
    wire: str, cls: type[SessionIdTLV] | type[JoinSession]
) -> None:
    """The Session ID's size is "Variable" (session draft §6.1.2, §6.1.3): zero included."""
    assert decode_control(h(wire)) == cls(b"")
    assert cls(b"").encode() == h(wire)


@pytest.mark.parametrize("cls", [SessionIdTLV, JoinSession])
def test_session_id_constructor_refuses_oversized(
    cls: type[SessionIdTLV] | type[JoinSession],
) -> None:
    with pytest.raises(ValueError, match="Session ID"):
        cls(bytes(256))


@pytest.mark.parametrize("tlv_type", [0x04, 0x7F, 0xFF])
def test_unknown_control_tlv_type_is_malformed(tlv_type: int) -> None:
    with pytest.raises(TunnelError, match="unknown control TLV type") as info:
        decode_control(bytes((tlv_type, 0)))
    assert info.value.code is MALFORMED


@pytest.mark.parametrize("wire", ["", "00", "01 02 aa", "01 00 00"])
def test_decode_control_needs_exactly_one_whole_tlv(wire: str) -> None:
    with pytest.raises(TunnelError) as info:
        decode_control(h(wire))
    assert info.value.code is MALFORMED


# --- TCP Connect address and port rules (tunnel-tcp-00 §5.1.1) ------------------------------------

FORBIDDEN_DESTINATIONS = [
    "224.0.0.1",  # IPv4 multicast
    "239.255.255.250",
    "255.255.255.255",  # limited broadcast
    "127.0.0.1",  # loopback
    "127.8.9.10",
    "0.0.0.0",  # unspecified
    "ff02::1",  # IPv6 multicast
    "::1",  # IPv6 loopback
    "::",  # IPv6 unspecified
    "::ffff:127.0.0.1",  # the same classes behind the v4-mapped form
    "::ffff:224.0.0.1",
    "::ffff:255.255.255.255",
    "::ffff:0.0.0.0",
]


def _connect_wire(address: str, port: int) -> bytes:
    return h("00 12") + port.to_bytes(2, "big") + IPv6Address(address).packed


def _mapped(address: str) -> str:
    return f"::ffff:{address}" if "." in address and ":" not in address else address


@pytest.mark.parametrize("address", FORBIDDEN_DESTINATIONS)
def test_tcp_connect_forbidden_destination_is_malformed(address: str) -> None:
    # §5.1.3: "A peer receiving a TCP Connect TLV with an invalid IP address MUST send an Error
    # TLV with this error code" (Malformed TLV).
    with pytest.raises(TunnelError, match="not a valid TCP destination") as info:
        decode_stream(_connect_wire(_mapped(address), 80))
    assert info.value.code is MALFORMED
    with pytest.raises(ValueError, match="not a valid TCP destination"):
        TcpConnect(ip_address(address), 80)


def test_tcp_connect_port_zero_is_malformed() -> None:
    with pytest.raises(TunnelError, match="port") as info:
        decode_stream(_connect_wire("::ffff:192.0.2.1", 0))
    assert info.value.code is MALFORMED
    with pytest.raises(ValueError, match="port"):
        TcpConnect(IPv4Address("192.0.2.1"), 0)
    with pytest.raises(ValueError, match="port"):
        TcpConnect(IPv4Address("192.0.2.1"), 65536)


def test_tcp_connect_mapped_address_is_kept_as_ipv4() -> None:
    message = TcpConnect(IPv6Address("::ffff:192.0.2.1"), 80)
    assert message.address == IPv4Address("192.0.2.1")
    assert message == TcpConnect(IPv4Address("192.0.2.1"), 80)
    assert decode_stream(_connect_wire("::ffff:192.0.2.1", 80)) == message


@pytest.mark.parametrize("size", [0, 6, 17, 19, 20])
def test_tcp_connect_wrong_fixed_size_is_malformed(size: int) -> None:
    with pytest.raises(TunnelError, match="18 value bytes") as info:
        TcpConnect.decode_value(bytes(size))
    assert info.value.code is MALFORMED


# --- valueless TLVs and the Error TLV -------------------------------------------------------------


@pytest.mark.parametrize("wire", ["01 01 00", "ff 01 00", "ff 02 0000"])
def test_valueless_tlv_with_a_value_is_malformed(wire: str) -> None:
    with pytest.raises(TunnelError, match="0 value bytes") as info:
        decode_stream(h(wire))
    assert info.value.code is MALFORMED


@pytest.mark.parametrize("wire", ["02 00", "02 01 00"])
def test_error_tlv_without_a_full_code_is_malformed(wire: str) -> None:
    with pytest.raises(TunnelError, match="2-byte code") as info:
        decode_stream(h(wire))
    assert info.value.code is MALFORMED


def test_error_tlv_unknown_code_is_kept_as_int() -> None:
    message = decode_stream(h("02 02 1234"))
    assert message == ErrorTLV(0x1234)
    assert isinstance(message, ErrorTLV) and type(message.code) is int


def test_error_tlv_known_code_becomes_the_enum() -> None:
    assert ErrorTLV(2).code is StreamErrorCode.MALFORMED_TLV


def test_error_tlv_refuses_oversized_payload_and_code() -> None:
    ErrorTLV(StreamErrorCode.ICMP_PACKET_RECEIVED, bytes(MAX_ERROR_PAYLOAD))  # the largest fits
    with pytest.raises(ValueError, match="from_icmp"):
        ErrorTLV(StreamErrorCode.ICMP_PACKET_RECEIVED, bytes(MAX_ERROR_PAYLOAD + 1))
    with pytest.raises(ValueError, match="16 bits"):
        ErrorTLV(0x10000)


def test_error_tlv_from_icmp_truncates_to_fit_the_tlv() -> None:
    icmp = bytes(range(256)) * 2  # e.g. an ICMPv6 error quoting a large packet
    message = ErrorTLV.from_icmp(icmp)
    assert message.code is StreamErrorCode.ICMP_PACKET_RECEIVED
    assert message.payload == icmp[:253]
    wire = message.encode()
    assert len(wire) == 2 + 255 and wire[1] == 255
    assert ErrorTLV.from_icmp(icmp[:60]).payload == icmp[:60]  # a short one is kept whole


@pytest.mark.parametrize("tlv_type", [0x03, 0x80, 0xFE])
def test_decode_stream_unknown_type_is_malformed(tlv_type: int) -> None:
    with pytest.raises(TunnelError, match="unknown stream TLV type") as info:
        decode_stream(bytes((tlv_type, 0)))
    assert info.value.code is MALFORMED


# --- ControlStreamDecoder -------------------------------------------------------------------------


@given(messages=st.lists(ws.control_messages, max_size=5), data=st.data())
def test_control_stream_decoder_round_trip_in_any_chunking(
    messages: list[ControlMessage], data: st.DataObject
) -> None:
    wire = b"".join(m.encode() for m in messages)
    decoder = ControlStreamDecoder()
    decoded = [m for chunk in data.draw(ws.chunkings(wire)) for m in decoder.feed(chunk)]
    decoder.finish()
    assert decoded == messages


def test_control_stream_decoder_fin_inside_a_tlv_is_malformed() -> None:
    decoder = ControlStreamDecoder()
    assert decoder.feed(h("03 04 dead")) == []
    with pytest.raises(TunnelError, match="inside a TLV") as info:
        decoder.finish()
    assert info.value.code is MALFORMED


def test_control_stream_decoder_stays_failed_after_an_error() -> None:
    decoder = ControlStreamDecoder()
    with pytest.raises(TunnelError) as first:
        decoder.feed(h("09 00"))
    with pytest.raises(TunnelError) as again:
        decoder.feed(NewSession().encode())
    assert again.value is first.value


# --- StreamPreambleDecoder ------------------------------------------------------------------------

PREAMBLE = (
    TcpConnect(IPv4Address("192.0.2.1"), 80).encode()
    + h("80 03 abcdef")  # a TLV type this draft does not define
    + End().encode()
)
BYTESTREAM = b"GET / HTTP/1.0\r\n\r\n"


def test_preamble_every_split_point_of_preamble_and_bytestream() -> None:
    wire = PREAMBLE + BYTESTREAM
    expected = [TcpConnect(IPv4Address("192.0.2.1"), 80), End()]
    for cut in range(len(wire) + 1):
        decoder = StreamPreambleDecoder(opened_by_peer=True)
        first, stream1 = decoder.feed(wire[:cut])
        assert decoder.done == (cut >= len(PREAMBLE)), cut
        second, stream2 = decoder.feed(wire[cut:])
        assert first + second == expected, cut
        assert stream1 + stream2 == BYTESTREAM, cut
        assert decoder.unknown_skipped == 1
        decoder.finish()


def test_preamble_one_byte_at_a_time() -> None:
    decoder = StreamPreambleDecoder()
    messages: list[StreamMessage] = []
    stream = b""
    for byte in PREAMBLE + BYTESTREAM:
        got, data = decoder.feed(bytes((byte,)))
        messages += got
        stream += data
    assert messages == [TcpConnect(IPv4Address("192.0.2.1"), 80), End()]
    assert stream == BYTESTREAM


@given(preamble=ws.preambles(), data=st.data())
def test_preamble_round_trip_in_any_chunking(
    preamble: tuple[list[StreamMessage], list[bytes], bytes], data: st.DataObject
) -> None:
    messages, wire, bytestream = preamble
    decoder = StreamPreambleDecoder()
    decoded: list[StreamMessage] = []
    stream = b""
    for chunk in data.draw(ws.chunkings(b"".join(wire) + bytestream)):
        got, more = decoder.feed(chunk)
        decoded += got
        stream += more
    decoder.finish()
    assert decoded == messages
    assert stream == bytestream
    assert decoder.unknown_skipped == len(wire) - len(messages)


def test_preamble_fin_without_end_is_a_protocol_violation() -> None:
    decoder = StreamPreambleDecoder()
    decoder.feed(TcpConnect(IPv4Address("192.0.2.1"), 80).encode())
    with pytest.raises(TunnelError, match="before its End TLV") as info:
        decoder.finish()
    assert info.value.code is VIOLATION


def test_preamble_empty_stream_fin_is_a_protocol_violation() -> None:
    with pytest.raises(TunnelError) as info:
        StreamPreambleDecoder().finish()
    assert info.value.code is VIOLATION


def test_preamble_fin_inside_a_tlv_is_malformed() -> None:
    decoder = StreamPreambleDecoder()
    decoder.feed(PREAMBLE[:5])
    with pytest.raises(TunnelError, match="inside a TLV") as info:
        decoder.finish()
    assert info.value.code is MALFORMED


def test_preamble_second_tcp_connect_is_a_protocol_violation() -> None:
    # tunnel-tcp-00 §5.1.1: "MUST NOT send more than one TCP Connect TLV per QUIC stream".
    connect = TcpConnect(IPv4Address("192.0.2.1"), 80).encode()
    with pytest.raises(TunnelError, match="more than one TCP Connect") as info:
        StreamPreambleDecoder().feed(connect + connect)
    assert info.value.code is VIOLATION


def test_preamble_bad_tlv_inside_is_malformed_and_sticks() -> None:
    decoder = StreamPreambleDecoder()
    with pytest.raises(TunnelError) as first:
        decoder.feed(h("01 01 00"))
    assert first.value.code is MALFORMED
    with pytest.raises(TunnelError) as again:
        decoder.feed(End().encode())
    assert again.value is first.value
    with pytest.raises(TunnelError):
        decoder.finish()


@pytest.mark.parametrize(
    ("opened_by_peer", "wire", "match"),
    [
        # §5.1.1: "MUST NOT send a TCP Connect TLV on non-self initiated streams"
        (False, TcpConnect(IPv4Address("192.0.2.1"), 80).encode(), "stream this endpoint opened"),
        # §5.1.2: "MUST NOT send a TCP Connect OK TLV on self-initiated streams"
        (True, TcpConnectOk().encode(), "stream the peer opened"),
        (True, End().encode(), "before any TCP Connect"),
        (False, End().encode(), "before TCP Connect OK or Error"),
    ],
)
def test_preamble_role_rules(opened_by_peer: bool, wire: bytes, match: str) -> None:
    with pytest.raises(TunnelError, match=match) as info:
        StreamPreambleDecoder(opened_by_peer=opened_by_peer).feed(wire)
    assert info.value.code is VIOLATION


def test_preamble_role_rules_accept_the_draft_example_flow() -> None:
    # tunnel-tcp-00 §6 figure: "TCP Connect, End" one way, "TCP Connect OK, End" back.
    concentrator = StreamPreambleDecoder(opened_by_peer=True)
    assert concentrator.feed(PREAMBLE)[0][-1] == End()
    client = StreamPreambleDecoder(opened_by_peer=False)
    assert client.feed(TcpConnectOk().encode() + End().encode() + b"reply") == (
        [TcpConnectOk(), End()],
        b"reply",
    )
    refused = StreamPreambleDecoder(opened_by_peer=False)
    assert refused.feed(ErrorTLV(StreamErrorCode.NETWORK_FAILURE).encode() + End().encode())[0]
    refused.finish()


def test_preamble_bytestream_after_error_and_end_is_a_protocol_violation() -> None:
    # §5.1.3: after Error TLVs the sender "MUST send an End TLV and terminate the stream".
    decoder = StreamPreambleDecoder()
    decoder.feed(ErrorTLV(StreamErrorCode.NETWORK_FAILURE).encode() + End().encode())
    with pytest.raises(TunnelError, match="follows an Error TLV") as info:
        decoder.feed(b"x")
    assert info.value.code is VIOLATION


def test_preamble_after_end_passes_bytes_through_unparsed() -> None:
    decoder = StreamPreambleDecoder()
    decoder.feed(PREAMBLE)
    assert decoder.feed(h("ff 00 00")) == ([], h("ff 00 00"))  # an End-like byte pair is data now
