"""CONNECT-IP sessions (tunnel/protocol/connect_ip.py) over real aioquic QUIC + HTTP/3, wired in
memory by tests/unit/quic_harness.py on its fake clock: the extended CONNECT handshake, address
assignment and routes, IPv4 and IPv6 packets each way, the RFC 9484 §11 checks, capsule errors
(RFC 9297 §3.3) and the proxy's refusals."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, TextIO

import pytest
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)

from tests.unit.quic_harness import Endpoint, Network, Path, make_configs
from tunnel.protocol.connect_ip import (
    MAX_H3_BUFFERED,
    AddressesAssigned,
    ConnectIpClient,
    ConnectIpServer,
    DropReason,
    PacketDropped,
    PacketReceived,
    ProxyPolicy,
    RequestRefused,
    RoutesAdvertised,
    RouteTable,
    TunnelClosed,
    TunnelOpened,
    TunnelRefused,
    h3_stream_buffered,
)
from tunnel.protocol.connection import SendStatus
from tunnel.protocol.quic_ext import PathMtuFell
from tunnel.wire.capsule import H3ErrorCode, encode_capsule
from tunnel.wire.connect_ip import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    IPAddressRange,
    RequestedAddress,
    RequestScope,
)
from tunnel.wire.http_datagram import IpProxyingPayload, encode_ip_packet

CLIENT_V4 = IPv4Network("10.8.0.2/32")
CLIENT_V6 = IPv6Network("fd00:8::2/128")
FULL_TUNNEL = (IPAddressRange.of_network("0.0.0.0/0"), IPAddressRange.of_network("::/0"))
AUTHORITY = "concentrator.test"


def ipv4(source: str, destination: str, protocol: int = 17, size: int = 60) -> bytes:
    """A well-formed IPv4 header (checksum left 0: nothing on this path checks it) + zeros."""
    header = (
        bytes((0x45, 0))
        + size.to_bytes(2, "big")
        + bytes(4)
        + bytes((64, protocol))
        + bytes(2)
        + IPv4Address(source).packed
        + IPv4Address(destination).packed
    )
    return header + bytes(size - len(header))


def ipv6(source: str, destination: str, next_header: int = 17, payload: int = 40) -> bytes:
    header = (
        bytes((0x60, 0, 0, 0))
        + payload.to_bytes(2, "big")
        + bytes((next_header, 64))
        + IPv6Address(source).packed
        + IPv6Address(destination).packed
    )
    return header + bytes(payload)


def connect(
    routes: tuple[IPAddressRange, ...] = FULL_TUNNEL,
    client: Callable[[QuicConnection], Any] | None = None,
    authority: str | None = AUTHORITY,
    secrets_log: TextIO | None = None,
    server: Callable[[QuicConnection], Any] | None = None,
    assigned: tuple[IPv4Network | IPv6Network, ...] = (CLIENT_V4, CLIENT_V6),
    **client_kwargs: Any,
) -> tuple[Network, Path]:
    """A client and a proxy on one in-memory path, the QUIC handshake started (ALPN h3)."""
    net = Network()
    client_config, server_config = make_configs(["h3"])
    client_config.secrets_log_file = secrets_log
    client_quic = QuicConnection(configuration=client_config)
    server_quic = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client_quic.original_destination_connection_id,
    )
    path = net.add_connection_pair(client_quic, server_quic)
    path.client.tunnel = (
        client(client_quic)
        if client is not None
        else ConnectIpClient(client_quic, AUTHORITY, **client_kwargs)
    )
    policy = ProxyPolicy(assigned, routes, authority=authority)
    path.server.tunnel = (
        server(server_quic) if server is not None else ConnectIpServer(server_quic, policy)
    )
    return net, path


def events(endpoint: Endpoint, kind: type) -> list[Any]:
    return [e for e in endpoint.tunnel_events if isinstance(e, kind)]


def opened(
    net: Network, path: Path, **client_kwargs: Any
) -> tuple[ConnectIpClient, ConnectIpServer]:
    net.run(2.0, until=lambda: bool(events(path.client, RoutesAdvertised)))
    assert events(path.client, TunnelOpened), path.client.tunnel_events
    net.run(0.1)  # let the answer to the ADDRESS_REQUEST arrive too
    return path.client.tunnel, path.server.tunnel


def test_handshake_assigns_addresses_and_routes() -> None:
    net, path = connect()
    client, server = opened(net, path)
    assert client.stream_id == server.stream_id == 0
    assert events(path.server, TunnelOpened) == [TunnelOpened(0)]
    # the unsolicited ADDRESS_ASSIGN (Request ID 0), then the answer to the client's
    # ADDRESS_REQUEST (IDs 1 and 2): the same prefixes, a full snapshot each time (§4.7.1)
    assigned = events(path.client, AddressesAssigned)
    assert [a.prefixes for a in assigned] == [(CLIENT_V4, CLIENT_V6)] * 2
    assert client.assigned_to_us == (CLIENT_V4, CLIENT_V6)
    assert events(path.client, RoutesAdvertised) == [RoutesAdvertised(FULL_TUNNEL)]
    assert client.peer_routes == FULL_TUNNEL
    # RFC 9484 §4.4 Figure 4
    assert client.request_headers() == [
        (b":method", b"CONNECT"),
        (b":protocol", b"connect-ip"),
        (b":scheme", b"https"),
        (b":authority", b"concentrator.test"),
        (b":path", b"/.well-known/masque/ip/*/*/"),
        (b"capsule-protocol", b"?1"),
    ]


def test_ipv4_and_ipv6_packets_each_way() -> None:
    net, path = connect()
    client, server = opened(net, path)
    up4 = ipv4("10.8.0.2", "192.0.2.1")
    up6 = ipv6("fd00:8::2", "2001:db8::1")
    down4 = ipv4("192.0.2.1", "10.8.0.2", size=1000)
    down6 = ipv6("2001:db8::1", "fd00:8::2", next_header=6)
    assert client.send_packet(up4).sent and client.send_packet(up6).sent
    assert server.send_packet(down4).sent and server.send_packet(down6).sent
    net.run(0.5)
    assert [e.packet for e in events(path.server, PacketReceived)] == [up4, up6]
    assert [e.packet for e in events(path.client, PacketReceived)] == [down4, down6]
    assert server.counters.packets_in == 2 and client.counters.packets_in == 2
    assert server.counters.as_dict()["drops_spoofed_source"] == 0


def test_spoofed_source_is_dropped_and_counted() -> None:
    net, path = connect()
    client, server = opened(net, path)
    for packet in (ipv4("10.9.9.9", "192.0.2.1"), ipv6("fd00:8::3", "2001:db8::1")):
        assert client.send_packet(packet).sent  # the client does not filter; the proxy must
    assert client.send_packet(ipv4("10.8.0.2", "192.0.2.1")).sent
    net.run(0.5)
    dropped = events(path.server, PacketDropped)
    assert [d.reason for d in dropped] == [DropReason.SPOOFED_SOURCE] * 2
    assert server.counters.drops["spoofed_source"] == 2
    assert len(events(path.server, PacketReceived)) == 1


def test_destination_outside_the_advertised_routes_is_dropped() -> None:
    routes = (
        IPAddressRange.of_network("192.0.2.0/24"),
        IPAddressRange.of_network("203.0.113.0/24", protocol=17),
    )
    net, path = connect(routes=routes)
    client, server = opened(net, path)
    assert client.peer_routes == routes
    sent = {
        "in route": ipv4("10.8.0.2", "192.0.2.7", protocol=6),
        "outside": ipv4("10.8.0.2", "198.51.100.1"),
        "udp in the UDP route": ipv4("10.8.0.2", "203.0.113.9", protocol=17),
        "tcp in the UDP route": ipv4("10.8.0.2", "203.0.113.9", protocol=6),
        "icmp in the UDP route": ipv4("10.8.0.2", "203.0.113.9", protocol=1),  # §4.7.3
        "no IPv6 route": ipv6("fd00:8::2", "2001:db8::1"),
    }
    for packet in sent.values():
        assert client.send_packet(packet).sent
    net.run(0.5)
    received = [e.packet for e in events(path.server, PacketReceived)]
    assert received == [
        sent["in route"],
        sent["udp in the UDP route"],
        sent["icmp in the UDP route"],
    ]
    assert server.counters.drops["outside_routes"] == 3


def test_request_scope_narrows_the_routes() -> None:
    scope = RequestScope(IPv4Network("192.0.2.0/24"), 17)
    net, path = connect(scope=scope)
    client, _ = opened(net, path)
    assert client.peer_routes == (IPAddressRange.of_network("192.0.2.0/24", protocol=17),)


def test_malformed_capsule_aborts_the_stream_with_h3_message_error() -> None:
    net, path = connect()
    client, server = opened(net, path)
    # an ADDRESS_ASSIGN whose IPv4 prefix length is 33 (RFC 9484 §4.7.1: malformed)
    client.h3.send_data(0, bytes.fromhex("0107 01 04 c000020b 21"), end_stream=False)
    net.run(0.5)
    closed = events(path.server, TunnelClosed)
    assert len(closed) == 1 and closed[0].by_peer is False
    assert closed[0].error_code == H3ErrorCode.H3_MESSAGE_ERROR
    assert "exceeds the 32 bits" in closed[0].reason
    # the client sees its stream reset with the same code (RFC 9297 §3.3, RFC 9114 §4.1.2)
    client_closed = events(path.client, TunnelClosed)
    assert len(client_closed) == 1 and client_closed[0].by_peer
    assert client_closed[0].error_code == H3ErrorCode.H3_MESSAGE_ERROR
    assert not client.is_open and not server.is_open
    assert client.send_packet(ipv4("10.8.0.2", "192.0.2.1")).status is SendStatus.NOT_READY
    # the connection itself lives on
    assert not path.client.quic._close_pending and path.client.quic._close_event is None


def test_unknown_capsule_is_skipped_and_the_next_one_answered() -> None:
    net, path = connect()
    client, server = opened(net, path)
    before = len(events(path.client, AddressesAssigned))
    request = AddressRequest((RequestedAddress(7, IPv6Network("::/128")),)).encode()
    client.h3.send_data(0, encode_capsule(0x2843, b"hello") + request, end_stream=False)
    net.run(0.5)
    assert server.counters.capsules_skipped == 1
    assert server.is_open and not events(path.server, TunnelClosed)
    assert len(events(path.client, AddressesAssigned)) == before + 1


def test_reused_request_id_aborts_the_stream() -> None:
    net, path = connect()
    client, _ = opened(net, path)
    # the client's own first request used IDs 1 and 2 (§4.7.2: "MUST NOT be reused")
    request = AddressRequest((RequestedAddress(1, IPv4Network("0.0.0.0/32")),)).encode()
    client.h3.send_data(0, request, end_stream=False)
    net.run(0.5)
    assert events(path.server, TunnelClosed)[0].error_code == H3ErrorCode.H3_MESSAGE_ERROR


def test_oversized_packet_and_unknown_context() -> None:
    net, path = connect()
    client, server = opened(net, path)
    budget = client.max_packet_size()
    assert 1100 < budget < 1200  # a 1200-byte QUIC MTU minus QUIC, quarter stream and context
    result = client.send_packet(ipv4("10.8.0.2", "192.0.2.1", size=budget + 1))
    assert result.status is SendStatus.TOO_BIG and result.max_packet_size == budget
    assert client.send_packet(ipv4("10.8.0.2", "192.0.2.1", size=budget)).sent
    client.h3.send_datagram(0, IpProxyingPayload(2, b"x").encode())
    net.run(0.5)
    assert server.counters.drops["unknown_context"] == 1
    assert server.counters.packets_in == 1


def test_clean_close_ends_both_sides() -> None:
    net, path = connect()
    client, server = opened(net, path)
    client.close()
    net.run(0.5)
    assert events(path.server, TunnelClosed) == [
        TunnelClosed(None, "the peer ended the request stream", True)
    ]
    assert not server.is_open


def test_client_refused_with_the_proxys_status() -> None:
    net, path = connect(authority="other.test")
    net.run(1.0)
    assert events(path.client, TunnelRefused)[0].status == 421
    assert events(path.server, RequestRefused)[0].status == 421
    assert not path.client.tunnel.is_open


class RawClient:
    """An HTTP/3 client that sends `headers` once the proxy's SETTINGS arrived."""

    def __init__(self, quic: QuicConnection, headers: list[tuple[bytes, bytes]], datagrams: bool):
        self.h3 = H3Connection(quic, enable_webtransport=datagrams)
        self.quic = quic
        self.headers = headers
        self.sent = False

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        out = self.h3.handle_event(event)
        if not self.sent and self.h3.received_settings is not None:
            self.sent = True
            self.h3.send_headers(self.quic.get_next_available_stream_id(), self.headers)
        return out


GOOD = {
    b":method": b"CONNECT",
    b":protocol": b"connect-ip",
    b":scheme": b"https",
    b":authority": AUTHORITY.encode(),
    b":path": b"/.well-known/masque/ip/*/*/",
    b"capsule-protocol": b"?1",
}


@pytest.mark.parametrize(
    ("changes", "datagrams", "status"),
    [
        ({}, True, 200),
        ({b":protocol": b"connect-udp"}, True, 501),
        ({b":protocol": None}, True, 501),
        ({b":method": b"GET", b":protocol": None}, True, 405),
        ({b":path": b"/vpn"}, True, 404),
        ({b":path": b"/.well-known/masque/ip/*/300/"}, True, 400),
        ({b":path": b"/.well-known/masque/ip/example.com/*/"}, True, 501),
        ({b":path": b"/.well-known/masque/ip/198.51.100.0%2F24/*/"}, True, 403),
        ({b":authority": b"elsewhere.test"}, True, 421),
        ({}, False, 400),  # no SETTINGS_H3_DATAGRAM from the client
    ],
)
def test_proxy_checks_the_request(
    changes: dict[bytes, bytes | None], datagrams: bool, status: int
) -> None:
    fields = {**GOOD, **changes}
    headers = [(k, v) for k, v in fields.items() if v is not None]
    routes = (IPAddressRange.of_network("192.0.2.0/24"),)
    net, path = connect(routes=routes, client=lambda quic: RawClient(quic, headers, datagrams))
    net.run(
        1.0, until=lambda: any(isinstance(e, HeadersReceived) for e in path.client.tunnel_events)
    )
    response = next(e for e in path.client.tunnel_events if isinstance(e, HeadersReceived))
    assert dict(response.headers)[b":status"] == str(status).encode()
    if status == 200:
        assert dict(response.headers)[b"capsule-protocol"] == b"?1"
    else:
        assert response.stream_ended
        assert path.server.tunnel.refusals[status] == 1


def test_second_request_on_one_connection_is_refused() -> None:
    net, path = connect()
    client, server = opened(net, path)
    stream = path.client.quic.get_next_available_stream_id()
    client.h3.send_headers(stream, client.request_headers())
    net.run(0.5)
    assert [r.status for r in events(path.server, RequestRefused)] == [429]
    assert server.is_open and server.stream_id == 0


def test_ip_address_helper_sanity() -> None:
    # the test's packet builders put the addresses where the RFC 791/8200 headers have them
    assert ip_address(ipv4("10.8.0.2", "192.0.2.1")[12:16]) == IPv4Address("10.8.0.2")
    assert ip_address(ipv6("fd00:8::2", "2001:db8::1")[24:40]) == IPv6Address("2001:db8::1")


class SettingsLate:
    """Hands the proxy the client's control stream (its SETTINGS) only after the request stream
    (after `release_after`, an event of it): the order QUIC may deliver them in, since they
    travel on different streams."""

    def __init__(
        self, inner: ConnectIpServer, release_after: type[QuicEvent] = StreamDataReceived
    ) -> None:
        self.inner = inner
        self.release_after = release_after
        self.held: list[QuicEvent] = []
        self.released = False

    def handle_event(self, event: QuicEvent) -> list[Any]:
        if isinstance(event, StreamDataReceived) and event.stream_id == 2 and not self.released:
            self.held.append(event)
            return []
        out = self.inner.handle_event(event)
        if (
            isinstance(event, self.release_after)
            and getattr(event, "stream_id", None) == 0
            and not self.released
        ):
            assert not self.inner.is_open  # the request is held, not answered
            self.released = True
            for late in self.held:
                out += self.inner.handle_event(late)
        return out


def test_a_request_before_the_clients_settings_is_held_with_its_capsules() -> None:
    net, path = connect()
    server = path.server.tunnel
    path.server.tunnel = late = SettingsLate(server)
    opened(net, path)
    assert late.released and late.held
    assert server.is_open and server.stream_id == 0
    # the ADDRESS_REQUEST that came with the held request was answered once it was decided
    assert len(events(path.client, AddressesAssigned)) == 2


def test_a_quarter_stream_id_above_2_60_closes_the_connection() -> None:
    # RFC 9297 §2.1: H3_DATAGRAM_ERROR, a connection error (aioquic 1.7.2 does not check it)
    net, path = connect()
    opened(net, path)
    path.client.quic.send_datagram_frame(bytes.fromhex("d000000000000000 00") + bytes(20))
    net.run(0.5)
    closed = [e for e in path.client.quic_events if isinstance(e, ConnectionTerminated)]
    assert closed and closed[0].error_code == H3ErrorCode.H3_DATAGRAM_ERROR
    assert events(path.server, TunnelClosed)


def test_a_datagram_capsule_carries_a_packet_on_the_stream() -> None:
    # RFC 9297 §3.5: the DATAGRAM capsule (0x00) has the semantics of a QUIC DATAGRAM frame
    net, path = connect()
    client, server = opened(net, path)
    packet = ipv4("10.8.0.2", "192.0.2.1")
    client.h3.send_data(0, encode_capsule(0x00, encode_ip_packet(packet)), end_stream=False)
    net.run(0.5)
    assert [e.packet for e in events(path.server, PacketReceived)] == [packet]
    assert server.counters.capsules_skipped == 0


# --- a review's findings (each test failed before its fix) ---------------------------------------


def test_an_empty_unknown_capsule_does_not_stall_the_stream() -> None:
    # RFC 9297 §3.2 / §5.4: empty grease capsules are skipped; the request after them was never
    # answered, and the FIN after it aborted the (well-formed) stream as "inside a capsule"
    net, path = connect()
    client, server = opened(net, path)
    before = len(events(path.client, AddressesAssigned))
    grease = encode_capsule(0x2843, b"")
    request = AddressRequest((RequestedAddress(7, IPv6Network("::/128")),)).encode()
    client.h3.send_data(0, grease + grease + request, end_stream=True)
    net.run(0.5)
    assert len(events(path.client, AddressesAssigned)) == before + 1
    assert events(path.server, TunnelClosed) == [
        TunnelClosed(None, "the peer ended the request stream", True)
    ]
    assert server.counters.capsules_skipped == 2


class H3Only:
    """A client's H3 layer without its CONNECT-IP session: a peer that does not react (keeps
    its side of the request stream open whatever the proxy does)."""

    def __init__(self, h3: H3Connection) -> None:
        self.h3 = h3

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        return self.h3.handle_event(event)


def test_stop_sending_with_h3_no_error_ends_an_open_tunnel() -> None:
    # RFC 9484 §4.1: the tunnel lives as long as the request stream. aioquic resets our sending
    # side on STOP_SENDING; the H3_NO_ERROR exemption (meant for a refusal on its way) applied
    # to an open tunnel too, which stayed open with a stream it could no longer send on
    net, path = connect()
    client, server = opened(net, path)
    path.client.tunnel = H3Only(client.h3)
    client.quic.stop_stream(0, H3ErrorCode.H3_NO_ERROR)
    net.run(0.5)
    assert events(path.server, TunnelClosed) == [
        TunnelClosed(H3ErrorCode.H3_NO_ERROR, "the peer aborted the stream (0x100)", True)
    ]
    assert not server.is_open and server.max_packet_size() == 0
    server.close()  # nothing left to end


@pytest.mark.parametrize("then", ["address_request", "fin"])
def test_what_came_before_a_stop_sending_is_not_answered_on_the_reset_stream(then: str) -> None:
    # Data then STOP_SENDING, in two packets handled before the proxy sees their events: aioquic
    # has reset the proxy's sending side when it answers the data (an ADDRESS_ASSIGN, or the
    # FIN that ends its side): writing it raised out of handle_event
    net, path = connect()
    client, server = opened(net, path)
    path.client.tunnel = H3Only(client.h3)
    if then == "fin":
        client.h3.send_data(0, b"", end_stream=True)
    else:
        request = AddressRequest((RequestedAddress(9, IPv4Network("0.0.0.0/32")),)).encode()
        client.h3.send_data(0, request, end_stream=False)
    net.flush()  # one packet on the link, then the STOP_SENDING in another, both due together
    client.quic.stop_stream(0, H3ErrorCode.H3_REQUEST_CANCELLED)
    net.run(0.5)
    (closed,) = events(path.server, TunnelClosed)
    assert not server.is_open and closed.by_peer
    server.close()  # nothing left to end


@pytest.mark.parametrize("stop_sending", [False, True])
def test_a_held_request_the_client_resets_is_never_opened(stop_sending: bool) -> None:
    # A request held for the client's SETTINGS, reset before they came, was opened on the dead
    # stream once they did: the connection's one tunnel taken (later requests 429) or, with
    # STOP_SENDING too, a RuntimeError out of handle_event
    net, path = connect()
    server = path.server.tunnel
    path.server.tunnel = late = SettingsLate(server, release_after=StreamReset)
    client = path.client.tunnel
    net.run(2.0, until=lambda: client.stream_id is not None)
    net.run(0.05)
    assert list(server._held) == [0]
    client.quic.reset_stream(0, H3ErrorCode.H3_REQUEST_CANCELLED)
    if stop_sending:
        client.quic.stop_stream(0, H3ErrorCode.H3_REQUEST_CANCELLED)
    net.run(1.0)
    assert late.released and not server._held
    assert server.stream_id is None and not events(path.server, TunnelOpened)
    # the client's next request gets the tunnel
    client.h3.send_headers(4, client.request_headers())
    net.run(1.0)
    assert events(path.server, TunnelOpened) == [TunnelOpened(4)]
    assert not events(path.server, RequestRefused)


def test_each_requested_address_is_answered_with_its_request_id() -> None:
    # RFC 9484 §4.7.2: "For each Requested Address ... an Assigned Address with a matching
    # Request ID"; the answer was keyed by prefix, so Request ID 10 lost its answer to 11
    net, path = connect()
    client, server = opened(net, path)
    request = AddressRequest(
        (
            RequestedAddress(10, IPv4Network("0.0.0.0/32")),
            RequestedAddress(11, IPv4Network("10.8.0.9/32")),
        )
    )
    answer = server._answer_address_request(request)
    assert answer.addresses == (
        AssignedAddress(10, CLIENT_V4),
        AssignedAddress(11, CLIENT_V4),
        AssignedAddress(0, CLIENT_V6),  # the rest of the full list (§4.7.1)
    )
    assert answer.prefixes == (CLIENT_V4, CLIENT_V6)
    later = server._answer_address_request(
        AddressRequest((RequestedAddress(20, IPv6Network("::/128")),))
    )
    assert later == AddressAssign((AssignedAddress(20, CLIENT_V6), AssignedAddress(0, CLIENT_V4)))
    # on the wire: the client's snapshot holds each prefix once
    client.h3.send_data(0, request.encode(), end_stream=False)
    net.run(0.5)
    assert events(path.client, AddressesAssigned)[-1] == AddressesAssigned((CLIENT_V4, CLIENT_V6))


class RawProxy:
    """An HTTP/3 proxy that answers any CONNECT with `response` and the capsules of an open
    tunnel."""

    def __init__(self, quic: QuicConnection, response: list[tuple[bytes, bytes]]) -> None:
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.response = response

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        out = self.h3.handle_event(event)
        for h3_event in out:
            if isinstance(h3_event, HeadersReceived):
                self.h3.send_headers(h3_event.stream_id, self.response)
                assign = AddressAssign((AssignedAddress(0, CLIENT_V4),))
                self.h3.send_data(h3_event.stream_id, assign.encode(), end_stream=False)
        return out


@pytest.mark.parametrize(
    "response",
    [
        [(b":status", b"204"), (b"capsule-protocol", b"?1")],
        [(b":status", b"205"), (b"capsule-protocol", b"?1")],
        [(b":status", b"206"), (b"capsule-protocol", b"?1")],
        [(b":status", b"200"), (b"capsule-protocol", b"?1"), (b"content-type", b"text/html")],
        [(b":status", b"200"), (b"content-length", b"0")],
    ],
)
def test_client_aborts_a_2xx_the_capsule_protocol_forbids(
    response: list[tuple[bytes, bytes]],
) -> None:
    # RFC 9297 §3.2: such a response is malformed; RFC 9484 §4.5: "the client MUST treat this
    # proxying attempt as failed and abort the request" (only Content-Length was checked)
    net, path = connect(server=lambda quic: RawProxy(quic, response))
    net.run(1.0)
    client = path.client.tunnel
    status = int(dict(response)[b":status"])
    assert [r.status for r in events(path.client, TunnelRefused)] == [status]
    assert not events(path.client, TunnelOpened)
    assert not client.is_open and client.assigned_to_us == ()
    assert client.closed is not None and client.closed.error_code == H3ErrorCode.H3_MESSAGE_ERROR


def test_icmp_is_always_allowed_only_as_its_versions_own() -> None:
    # RFC 9484 §4.7.3: ICMP is protocol 1 in IPv4 and 58 in IPv6; either number was taken as
    # ICMP in both, so a UDP-only route let protocol 58 over IPv4 and 1 over IPv6 through
    table = RouteTable(
        (
            IPAddressRange.of_network("192.0.2.0/24", protocol=17),
            IPAddressRange.of_network("2001:db8::/32", protocol=17),
        )
    )
    assert table.allows(ipv4("10.8.0.2", "192.0.2.1", protocol=1))
    assert table.allows(ipv6("fd00:8::2", "2001:db8::1", next_header=58))
    assert not table.allows(ipv4("10.8.0.2", "192.0.2.1", protocol=58))
    assert not table.allows(ipv6("fd00:8::2", "2001:db8::1", next_header=1))


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_budget_below_1280_bytes_with_ipv6_aborts_the_request_stream(side: str) -> None:
    # RFC 9484 §7.2: "If an endpoint is using QUIC DATAGRAM frames to convey IPv6 packets, and
    # it detects that the QUIC MTU is too low to allow sending 1280 bytes, it MUST abort the IP
    # proxying request stream." The harness's 1200-byte QUIC MTU is such a path; PathMtuFell
    # is how pmtu_discovery tells the connection's budget fell (nothing was checked after open)
    net, path = connect()
    opened(net, path)
    endpoint = path.client if side == "client" else path.server
    session = endpoint.tunnel
    assert session.max_packet_size() < 1280
    (closed,) = session.handle_event(PathMtuFell())
    assert closed.error_code == H3ErrorCode.H3_REQUEST_CANCELLED and not closed.by_peer
    assert "IPv6 needs 1280 (RFC 9484 §7.2)" in closed.reason and not session.is_open
    net.run(0.5)
    other = path.server if side == "client" else path.client
    assert events(other, TunnelClosed)[0].error_code == H3ErrorCode.H3_REQUEST_CANCELLED


def test_a_budget_below_1280_bytes_without_ipv6_keeps_the_tunnel() -> None:
    net, path = connect(assigned=(CLIENT_V4,), routes=(FULL_TUNNEL[0],))
    client, server = opened(net, path)
    assert client.handle_event(PathMtuFell()) == [] and client.is_open
    assert server.handle_event(PathMtuFell()) == [] and server.is_open


def test_a_headers_frame_that_never_ends_is_refused_past_16_kib() -> None:
    """Found by a review: a HEADERS frame declaring 1 GiB was held by aioquic's H3 layer until
    whole, its bytes counted as consumed, so the credit kept growing and every packet copied
    the buffer again. Past 16 KiB the stream is aborted with H3_EXCESSIVE_LOAD; the tunnel's
    own stream goes on."""
    net, path = connect()
    _client, server = opened(net, path)
    quic = path.client.quic
    stream = quic.get_next_available_stream_id()
    declared = bytes([0x01]) + (0xC0000000_40000000).to_bytes(8, "big")  # HEADERS, 2^30 bytes
    quic.send_stream_data(stream, declared)
    for _ in range(40):  # up to 40 kB of a field section that never ends
        try:
            quic.send_stream_data(stream, bytes(1000))
        except RuntimeError:  # the proxy's STOP_SENDING reset our side: it refused
            break
        net.run(0.01)
    net.run(0.2)
    assert server.counters.h3_excessive == 1
    assert h3_stream_buffered(server.h3, stream) <= MAX_H3_BUFFERED
    resets = [e for e in path.client.quic_events if isinstance(e, StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [
        (stream, H3ErrorCode.H3_EXCESSIVE_LOAD)
    ]
    assert server.is_open and server.closed is None


def test_trailers_with_the_fin_end_the_tunnel_and_a_cut_capsule_is_malformed() -> None:
    """RFC 9114 §4.1 lets a request end with trailers; aioquic reports the FIN on the HEADERS
    event, which both sides dropped: the tunnel stayed open (RFC 9484 §3: it ends with the
    stream) and a capsule the FIN cut went unnoticed (RFC 9297 §3.3: malformed)."""
    net, path = connect()
    client, server = opened(net, path)
    path.client.tunnel = H3Only(client.h3)
    client.h3.send_headers(0, [(b"x-done", b"1")], end_stream=True)
    net.run(0.5)
    assert events(path.server, TunnelClosed) == [
        TunnelClosed(None, "the peer ended the request stream", True)
    ]
    net, path = connect()
    client, server = opened(net, path)
    path.client.tunnel = H3Only(client.h3)
    client.h3.send_data(0, bytes([0x01, 0x07, 0x01, 0x04]), end_stream=False)  # cut short
    client.h3.send_headers(0, [(b"x-done", b"1")], end_stream=True)
    net.run(0.5)
    (closed,) = events(path.server, TunnelClosed)
    assert closed.error_code == H3ErrorCode.H3_MESSAGE_ERROR and not server.is_open
