"""What a tunnel carries (its payload: IP packets or Ethernet frames), on two real aioquic
endpoints in memory: session draft §4's Protocol Type per datagram, tunnel mode's payload
"signalled out of band" (tunnel draft §4) by the quic_tunnel_payload transport parameter, and
the draft's "MAY drop" for every Protocol Type a tunnel does not carry."""

from __future__ import annotations

import pytest

from tests.unit.quic_harness import Network, Path
from tests.unit.tunnel_pairs import add_tunnel_path, events_of, ip4, ip6, tunnel
from tunnel.protocol.connection import DropReason, ModeNegotiated, PacketReceived, SendStatus
from tunnel.protocol.quic_ext import PAYLOAD_TP_ID, payload_parameter
from tunnel.wire.datagram import Payload, ProtocolType
from tunnel.wire.errors import DatagramError

ETHERNET = int(ProtocolType.ETHERNET)


def frame(marker: int, size: int = 64) -> bytes:
    """An Ethernet frame: broadcast destination, a unicast source, EtherType IPv4."""
    header = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return (header + marker.to_bytes(4, "big") + bytes(size))[:size]


def connected(alpn: str, ethertype: int | None = None) -> tuple[Network, Path]:
    net = Network()
    path = add_tunnel_path(net, [alpn], client_payload_ethertype=ethertype)
    net.run(1.0)
    assert events_of(path.client, ModeNegotiated)
    return net, path


def drops(endpoint_tunnel_events: list[object]) -> list[DropReason]:
    return [e.reason for e in endpoint_tunnel_events if hasattr(e, "reason")]


@pytest.mark.parametrize("foreign", [ETHERNET, 0x0806, 0x1234])
def test_an_ip_tunnel_drops_and_counts_every_other_protocol_type_at_both_ends(
    foreign: int,
) -> None:
    """session draft §4: a Protocol Type the tunnel does not carry MAY be dropped. An Ethernet
    frame (0x6558) used to be taken as supported and handed to the TUN path."""
    net, path = connected("qt-session")
    datagram = foreign.to_bytes(2, "big") + b"\x00\x01" + frame(1)
    path.client.quic.send_datagram_frame(datagram)
    path.server.quic.send_datagram_frame(datagram)
    net.run(0.1)
    for endpoint in (path.server, path.client):
        assert drops(endpoint.tunnel_events) == [DropReason.UNSUPPORTED_PROTOCOL]
        assert events_of(endpoint, PacketReceived) == []
        assert tunnel(endpoint).counters.as_dict()["drops_unsupported_protocol"] == 1
        assert tunnel(endpoint).payload is Payload.IP


def test_without_the_transport_parameter_the_payload_is_ip() -> None:
    _, path = connected("qt")
    assert tunnel(path.server).payload_ethertype is None
    assert tunnel(path.server).payload is Payload.IP
    assert tunnel(path.client).payload is Payload.IP


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_ethernet_frames_cross_in_both_directions(alpn: str) -> None:
    net, path = connected(alpn, ETHERNET)
    client, server = tunnel(path.client), tunnel(path.server)
    assert server.payload_ethertype == ETHERNET
    assert client.payload is server.payload is Payload.ETHERNET
    tag = 7 if alpn == "qt-session" else None
    assert client.send_packet(frame(1), packet_tag=tag).sent
    assert server.send_packet(frame(2), packet_tag=tag).sent
    net.run(0.1)
    assert [(e.packet, e.protocol_type) for e in events_of(path.server, PacketReceived)] == [
        (frame(1), ETHERNET)
    ]
    assert [e.packet for e in events_of(path.client, PacketReceived)] == [frame(2)]


def test_session_mode_sends_ethernet_frames_with_protocol_type_0x6558() -> None:
    _, path = connected("qt-session", ETHERNET)
    raw: list[bytes] = []
    original = path.client.quic.send_datagram_frame

    def spy(data: bytes, *args: object) -> None:
        raw.append(data)
        original(data, *args)  # type: ignore[arg-type]

    path.client.quic.send_datagram_frame = spy  # type: ignore[method-assign]
    tunnel(path.client).send_packet(frame(3), packet_tag=0x0102)
    assert raw == [b"\x65\x58\x01\x02" + frame(3)]


def test_an_ethernet_tunnel_drops_ip_protocol_types_and_short_frames() -> None:
    net, path = connected("qt-session", ETHERNET)
    path.client.quic.send_datagram_frame(b"\x08\x00\x00\x01" + ip4(1))
    path.client.quic.send_datagram_frame(b"\x86\xdd\x00\x02" + ip6(2))
    path.client.quic.send_datagram_frame(b"\x65\x58\x00\x03" + bytes(13))  # no whole header
    net.run(0.1)
    assert drops(path.server.tunnel_events) == [
        DropReason.UNSUPPORTED_PROTOCOL,
        DropReason.UNSUPPORTED_PROTOCOL,
        DropReason.MALFORMED,
    ]
    assert events_of(path.server, PacketReceived) == []


def test_tunnel_mode_with_an_ethernet_payload_takes_any_whole_frame_and_no_runt() -> None:
    net, path = connected("qt", ETHERNET)
    client = tunnel(path.client)
    with pytest.raises(DatagramError):
        client.send_packet(bytes(13))
    path.client.quic.send_datagram_frame(bytes(13))
    path.client.quic.send_datagram_frame(ip4(1))  # 60 bytes: a frame as far as size goes
    net.run(0.1)
    assert drops(path.server.tunnel_events) == [DropReason.MALFORMED]
    assert [e.packet for e in events_of(path.server, PacketReceived)] == [ip4(1)]


def test_an_unknown_announced_payload_drops_everything() -> None:
    net, path = connected("qt-session", 0x88B5)  # an EtherType we do not carry
    server = tunnel(path.server)
    assert server.payload is None and server.payload_ethertype == 0x88B5
    path.client.quic.send_datagram_frame(b"\x88\xb5\x00\x01" + frame(1))
    path.client.quic.send_datagram_frame(b"\x08\x00\x00\x02" + ip4(2))
    net.run(0.1)
    assert drops(path.server.tunnel_events) == [DropReason.UNSUPPORTED_PROTOCOL] * 2
    assert server.send_packet(frame(3), packet_tag=1).status is SendStatus.NOT_READY


def test_the_payload_parameter_must_be_one_16_bit_ethertype() -> None:
    def params(value: bytes) -> bytes:
        from aioquic.buffer import encode_uint_var

        return encode_uint_var(PAYLOAD_TP_ID) + encode_uint_var(len(value)) + value

    assert payload_parameter(b"") is None
    assert payload_parameter(params(b"\x80\x00\x65\x58")) == ETHERNET
    for bad in (b"", b"\x80\x01\x00\x00", b"\x40\x01\x00"):
        with pytest.raises(Exception, match="EtherType"):
            payload_parameter(params(bad))
