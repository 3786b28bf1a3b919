"""Fuzz every wire decoder: random bytes and mutated valid encodings (bit flips, truncations,
insertions, deletions). Only TunnelError may escape; whatever decodes must re-encode to a value
that decodes equal.

QTL_FUZZ_EXAMPLES sets the number of examples per decoder; by default 20 times the Hypothesis
profile's count (tests/conftest.py): 2000 under "ci" (`make test`), 200 under "dev" (`make
check`), e.g.
    QTL_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/unit/test_decoder_fuzz.py
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.unit import wire_strategies as ws
from tunnel.wire.capsule import Capsule, CapsuleReader
from tunnel.wire.connect_ip import (
    CONNECT_IP_DECODERS,
    AddressAssign,
    AddressRequest,
    ConnectIpCapsule,
    RouteAdvertisement,
    decode_connect_ip_capsule,
)
from tunnel.wire.datagram import SessionDatagram, decode_tunnel_datagram, protocol_type_of
from tunnel.wire.errors import StreamErrorCode, TunnelError
from tunnel.wire.http_datagram import H3Datagram, IpProxyingPayload
from tunnel.wire.messages import (
    AccessReport,
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
from tunnel.wire.tlv import TLVReader, encode_tlv

# settings() holds the profile tests/conftest.py (or --hypothesis-profile) loaded
EXAMPLES = int(os.environ.get("QTL_FUZZ_EXAMPLES", 20 * settings().max_examples))
fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


def fuzz_inputs(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(valid))


def only_tunnel_errors(decode: Callable[[bytes], object], data: bytes) -> object | None:
    """Run `decode`; a TunnelError is fine (and must be well-formed), anything else fails."""
    try:
        result = decode(data)
    except TunnelError as exc:
        assert isinstance(exc.code, StreamErrorCode)
        assert str(exc)
        event(f"rejected: {exc.code.name}")  # see --hypothesis-show-statistics
        return None
    event("accepted")
    return result


def encoded(
    strategy: st.SearchStrategy[ControlMessage | StreamMessage],
) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda m: m.encode())


VALUE_DECODERS: list[tuple[type[ControlMessage | StreamMessage], st.SearchStrategy[bytes]]] = [
    (AccessReport, encoded(ws.access_reports)),
    (NewSession, encoded(ws.new_sessions)),
    (SessionIdTLV, encoded(ws.session_id_tlvs)),
    (JoinSession, encoded(ws.join_sessions)),
    (TcpConnect, encoded(ws.tcp_connects)),
    (TcpConnectOk, encoded(ws.tcp_connect_oks)),
    (ErrorTLV, encoded(ws.error_tlvs)),
    (End, encoded(ws.ends)),
]


@pytest.mark.parametrize(
    ("cls", "valid"), VALUE_DECODERS, ids=[c.__name__ for c, _ in VALUE_DECODERS]
)
@fuzz_settings
@given(data=st.data())
def test_fuzz_decode_value(
    cls: type[ControlMessage | StreamMessage], valid: st.SearchStrategy[bytes], data: st.DataObject
) -> None:
    value = data.draw(fuzz_inputs(valid.map(lambda wire: wire[2:])), label="value")
    message = only_tunnel_errors(cls.decode_value, value)
    if message is not None:
        assert isinstance(message, cls)
        assert cls.decode_value(message.encode()[2:]) == message


@fuzz_settings
@given(fuzz_inputs(encoded(ws.control_messages)))
def test_fuzz_decode_control(data: bytes) -> None:
    message = only_tunnel_errors(decode_control, data)
    if message is not None:
        assert decode_control(message.encode()) == message  # type: ignore[attr-defined]


@fuzz_settings
@given(fuzz_inputs(encoded(ws.stream_messages)))
def test_fuzz_decode_stream(data: bytes) -> None:
    message = only_tunnel_errors(decode_stream, data)
    if message is not None:
        assert decode_stream(message.encode()) == message  # type: ignore[attr-defined]


def _feed_all(decoder: ControlStreamDecoder | StreamPreambleDecoder, chunks: list[bytes]) -> None:
    for chunk in chunks:
        decoder.feed(chunk)
    decoder.finish()


@fuzz_settings
@given(
    data=fuzz_inputs(st.lists(encoded(ws.control_messages), max_size=4).map(b"".join)),
    split=st.data(),
)
def test_fuzz_control_stream_decoder(data: bytes, split: st.DataObject) -> None:
    chunks = split.draw(ws.chunkings(data))
    only_tunnel_errors(lambda _: _feed_all(ControlStreamDecoder(), chunks), data)


def _preamble_wire(preamble: tuple[list[StreamMessage], list[bytes], bytes]) -> bytes:
    return b"".join(preamble[1]) + preamble[2]


@fuzz_settings
@given(
    data=fuzz_inputs(ws.preambles().map(_preamble_wire)),
    role=st.sampled_from([None, True, False]),
    split=st.data(),
)
def test_fuzz_stream_preamble_decoder(data: bytes, role: bool | None, split: st.DataObject) -> None:
    chunks = split.draw(ws.chunkings(data))
    only_tunnel_errors(lambda _: _feed_all(StreamPreambleDecoder(role), chunks), data)


@fuzz_settings
@given(fuzz_inputs(ws.session_datagrams().map(SessionDatagram.encode)))
def test_fuzz_session_datagram(data: bytes) -> None:
    datagram = only_tunnel_errors(SessionDatagram.decode, data)
    if datagram is not None:
        assert isinstance(datagram, SessionDatagram)
        assert datagram.encode() == data  # no field is ignored, so decoding is exact


@fuzz_settings
@given(fuzz_inputs(ws.ip_packets))
def test_fuzz_tunnel_datagram(data: bytes) -> None:
    packet = only_tunnel_errors(decode_tunnel_datagram, data)
    assert packet is None or packet == data
    only_tunnel_errors(protocol_type_of, data)


@fuzz_settings
@given(
    data=fuzz_inputs(st.lists(encoded(ws.stream_messages), max_size=4).map(b"".join)),
    split=st.data(),
)
def test_fuzz_tlv_reader_never_raises_and_loses_nothing(data: bytes, split: st.DataObject) -> None:
    # Framing alone has no invalid input: every byte ends up in a TLV or in the pending tail.
    reader = TLVReader()
    tlvs = [tlv for chunk in split.draw(ws.chunkings(data)) for tlv in reader.feed(chunk)]
    framed = b"".join(encode_tlv(t, v) for t, v in tlvs)
    assert framed + reader.take_remaining() == data


# --- CONNECT-IP (RFC 9484) and HTTP Datagrams (RFC 9297) ---------------------------------------

CAPSULE_DECODERS: list[tuple[type[ConnectIpCapsule], st.SearchStrategy[ConnectIpCapsule]]] = [
    (AddressAssign, ws.address_assigns),
    (AddressRequest, ws.address_requests),
    (RouteAdvertisement, ws.route_advertisements()),
]


@pytest.mark.parametrize(
    ("cls", "valid"), CAPSULE_DECODERS, ids=[c.__name__ for c, _ in CAPSULE_DECODERS]
)
@fuzz_settings
@given(data=st.data())
def test_fuzz_connect_ip_capsule_value(
    cls: type[ConnectIpCapsule], valid: st.SearchStrategy[ConnectIpCapsule], data: st.DataObject
) -> None:
    values = valid.map(lambda capsule: Capsule.decode(capsule.encode()).value)
    value = data.draw(fuzz_inputs(values), label="value")
    capsule = only_tunnel_errors(cls.decode_value, value)
    if capsule is not None:
        assert isinstance(capsule, cls)
        assert cls.decode_value(Capsule.decode(capsule.encode()).value) == capsule


def _read_capsules(chunks: list[bytes]) -> list[ConnectIpCapsule]:
    reader = CapsuleReader(frozenset(CONNECT_IP_DECODERS), max_value_size=64)
    capsules = [
        decode_connect_ip_capsule(c.capsule_type, c.value)
        for chunk in chunks
        for c in reader.feed(chunk)
    ]
    reader.finish()
    return capsules


@fuzz_settings
@given(
    data=fuzz_inputs(
        st.lists(
            st.one_of(ws.connect_ip_capsules.map(lambda c: c.encode()), ws.unknown_capsules),
            max_size=4,
        ).map(b"".join)
    ),
    split=st.data(),
)
def test_fuzz_capsule_stream(data: bytes, split: st.DataObject) -> None:
    chunks = split.draw(ws.chunkings(data))
    only_tunnel_errors(lambda _: _read_capsules(chunks), data)


@fuzz_settings
@given(fuzz_inputs(ws.h3_datagrams.map(H3Datagram.encode)))
def test_fuzz_h3_datagram(data: bytes) -> None:
    datagram = only_tunnel_errors(H3Datagram.decode, data)
    if datagram is not None:
        assert isinstance(datagram, H3Datagram)
        assert H3Datagram.decode(datagram.encode()) == datagram


@fuzz_settings
@given(fuzz_inputs(ws.ip_proxying_payloads.map(IpProxyingPayload.encode)))
def test_fuzz_ip_proxying_payload(data: bytes) -> None:
    payload = only_tunnel_errors(IpProxyingPayload.decode, data)
    if payload is not None:
        assert isinstance(payload, IpProxyingPayload)
        assert IpProxyingPayload.decode(payload.encode()) == payload
