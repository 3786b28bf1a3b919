"""CONNECT-IP on the wire, checked byte for byte against RFC 9484 and RFC 9297: the expected bytes
are written by hand from the RFCs' figures (RFC 9484 §4.7 Figures 7-12 and the examples of §8.1
and §8.4; RFC 9297 §2.1 and §3.2), then every value round-trips."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import wire_strategies as ws
from tunnel.wire.capsule import (
    Capsule,
    CapsuleError,
    CapsuleReader,
    H3ErrorCode,
    encode_capsule,
)
from tunnel.wire.connect_ip import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    ConnectIpCapsule,
    IPAddressRange,
    RequestedAddress,
    RequestScope,
    RouteAdvertisement,
    decode_connect_ip_capsule,
    ordered_ranges,
    outermost_protocol,
)
from tunnel.wire.errors import StreamErrorCode, TunnelError
from tunnel.wire.http_datagram import (
    H3Datagram,
    IpProxyingPayload,
    encode_ip_packet,
    ip_packet_overhead,
)

KNOWN = frozenset({1, 2, 3})


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- RFC 9484 §8.1 (remote access VPN) ---------------------------------------------------------


def test_address_request_of_section_8_1() -> None:
    # Type 0x02, Length 7: Request ID 1, IP Version 4, 0.0.0.0, Prefix Length 32
    wire = h("02 07  01 04 00000000 20")
    capsule = AddressRequest((RequestedAddress(1, IPv4Network("0.0.0.0/32")),))
    assert capsule.encode() == wire
    assert AddressRequest.decode_value(wire[2:]) == capsule
    assert capsule.addresses[0].any_address


def test_address_assign_of_section_8_1() -> None:
    # Type 0x01, Length 7: Request ID 1, IP Version 4, 192.0.2.11, Prefix Length 32
    wire = h("01 07  01 04 c000020b 20")
    capsule = AddressAssign((AssignedAddress(1, IPv4Network("192.0.2.11/32")),))
    assert capsule.encode() == wire
    assert AddressAssign.decode_value(wire[2:]) == capsule
    assert capsule.prefixes == (IPv4Network("192.0.2.11/32"),)


def test_route_advertisement_of_section_8_1() -> None:
    # Type 0x03, Length 10: IP Version 4, 0.0.0.0, 255.255.255.255, IP Protocol 0 (any)
    wire = h("03 0a  04 00000000 ffffffff 00")
    capsule = RouteAdvertisement((IPAddressRange.of_network("0.0.0.0/0"),))
    assert capsule.encode() == wire
    assert RouteAdvertisement.decode_value(wire[2:]) == capsule


# --- RFC 9484 §8.4 (proxied connection racing) -------------------------------------------------


def test_address_assign_of_section_8_4_two_versions() -> None:
    # Length 26 = (1 + 1 + 4 + 1) + (1 + 1 + 16 + 1)
    wire = h("01 1a00 04 c0000203 2000 06 20010db8000000000000000012341234 80")
    capsule = AddressAssign(
        (
            AssignedAddress(0, IPv4Network("192.0.2.3/32")),
            AssignedAddress(0, IPv6Network("2001:db8::1234:1234/128")),
        )
    )
    assert capsule.encode() == wire
    assert AddressAssign.decode_value(wire[2:]) == capsule


def test_route_advertisement_of_section_8_4_udp_only() -> None:
    # Length 44 = (1 + 4 + 4 + 1) + (1 + 16 + 16 + 1); IP Protocol 17 (UDP)
    wire = h(
        "03 2c"
        "04 c6336402 c6336402 11"
        "06 20010db834560000000000000000000b 20010db834560000000000000000000b 11"
    )
    v4, v6 = IPv4Address("198.51.100.2"), IPv6Address("2001:db8:3456::b")
    capsule = RouteAdvertisement((IPAddressRange(v4, v4, 17), IPAddressRange(v6, v6, 17)))
    assert capsule.encode() == wire
    assert RouteAdvertisement.decode_value(wire[2:]) == capsule


def test_empty_address_assign_removes_everything() -> None:
    # §4.7.1: "An ADDRESS_ASSIGN capsule can also be empty"
    assert AddressAssign().encode() == h("01 00")
    assert AddressAssign.decode_value(b"") == AddressAssign(())


def test_rejection_is_all_zero_at_maximum_length() -> None:
    # §4.7.2: a refused request is answered 0.0.0.0/32 or ::/128 with its Request ID
    wire = h("01 13  05 06 00000000000000000000000000000000 80")
    capsule = AddressAssign((AssignedAddress(5, IPv6Network("::/128")),))
    assert capsule.encode() == wire
    assert capsule.addresses[0].is_rejection
    assert capsule.prefixes == ()


def test_two_byte_request_id_and_non_minimal_varints_decode() -> None:
    # RFC 9484 §2: "Variable-length integer values do not need to be encoded in the minimum
    # number of bytes": Request ID 1 as 0x4001, the capsule type 1 as 0x4001, length 0x4008.
    value = h("4001 04 0a000000 08")
    assert AddressAssign.decode_value(value).addresses == (
        AssignedAddress(1, IPv4Network("10.0.0.0/8")),
    )
    assert Capsule.decode(h("4001 4008") + value) == Capsule(1, value)
    # re-encoded in the shortest form
    assert (
        AssignedAddress(300, IPv4Network("10.0.0.0/8"))
        == AddressAssign.decode_value(h("412c 04 0a000000 08")).addresses[0]
    )


# --- validation at parse time ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decode", "value", "why"),
    [
        (AddressAssign.decode_value, h("00 04 c0000200 21"), "exceeds the 32 bits"),
        (AddressAssign.decode_value, h("00 06" + "00" * 16 + "81"), "exceeds the 128 bits"),
        (AddressAssign.decode_value, h("00 04 c0000201 18"), "host bits"),
        (AddressAssign.decode_value, h("00 05 c0000201 20"), "IP Version 5"),
        (AddressAssign.decode_value, h("00 04 c00002"), "truncated"),
        (AddressAssign.decode_value, h("00 04 c000020b"), "truncated"),
        (AddressRequest.decode_value, b"", "at least one address"),
        (AddressRequest.decode_value, h("00 04 00000000 20"), "Request ID 0"),
        (AddressRequest.decode_value, h("07 04 00000000 20  07 06" + "00" * 16 + "80"), "twice"),
        (RouteAdvertisement.decode_value, h("04 0a000002 0a000001 00"), "above End"),
        (
            RouteAdvertisement.decode_value,
            h("06" + "00" * 32 + "00" + "04 00000000 ffffffff 00"),
            "IPv6 range precedes an IPv4",
        ),
        (
            RouteAdvertisement.decode_value,
            h("04 0a000000 0a0000ff 11  04 0b000000 0b0000ff 06"),
            "IP Protocol 17 precedes 6",
        ),
        (
            RouteAdvertisement.decode_value,
            h("04 0a000000 0a0000ff 06  04 0a000080 0a0001ff 06"),
            "overlap",
        ),
        (
            # "End IP Address of A MUST be strictly less than the Start IP Address of B"
            RouteAdvertisement.decode_value,
            h("04 0a000000 0a0000ff 06  04 0a0000ff 0a0001ff 06"),
            "overlap",
        ),
        (
            RouteAdvertisement.decode_value,
            h("04 00000000 ffffffff 00  04 0a000000 0a0000ff 11"),
            "of every protocol",
        ),
        (RouteAdvertisement.decode_value, h("04 00000000 ffffffff"), "truncated"),
    ],
)
def test_malformed_capsule_values_are_rejected(decode: object, value: bytes, why: str) -> None:
    with pytest.raises(CapsuleError, match=why) as info:
        decode(value)  # type: ignore[operator]
    assert isinstance(info.value, TunnelError)
    assert info.value.code is StreamErrorCode.MALFORMED_TLV
    # RFC 9297 §3.3: a malformed capsule is a malformed message (RFC 9114 §4.1.2)
    assert info.value.h3_error_code == H3ErrorCode.H3_MESSAGE_ERROR


def test_adjacent_ranges_and_protocol_specific_ranges_apart_are_fine() -> None:
    capsule = RouteAdvertisement.decode_value(
        h(
            "04 0a000000 0a0000ff 00  04 0a000100 0a0001ff 00"  # 10.0.0/24 then 10.0.1/24
            "04 0b000000 0b0000ff 06  04 0b000000 0b0000ff 11"  # TCP, then UDP, same range
        )
    )
    assert len(capsule.ranges) == 4


def test_ordered_ranges_sorts_and_merges() -> None:
    a = IPAddressRange.of_network("10.0.1.0/24")
    b = IPAddressRange.of_network("10.0.0.0/24")
    v6 = IPAddressRange.of_network("2001:db8::/32")
    udp = IPAddressRange.of_network("192.0.2.0/24", 17)
    assert ordered_ranges([v6, udp, a, b]) == (
        IPAddressRange.of_network("10.0.0.0/23"),
        udp,
        v6,
    )


# --- RFC 9297 §3.2 capsule framing -------------------------------------------------------------


def test_capsule_framing_vectors() -> None:
    assert encode_capsule(0x01, b"") == h("01 00")
    # a 64-byte value needs a two-byte Length (0x4040)
    assert encode_capsule(0x03, bytes(64))[:3] == h("03 4040")
    # capsule type 0x2843 (from WebTransport) is a two-byte varint too: 0x6843
    assert encode_capsule(0x2843, b"x") == h("6843 01 78")
    with pytest.raises(CapsuleError, match="bytes follow"):
        Capsule.decode(h("01 00 00"))
    with pytest.raises(CapsuleError, match="truncated"):
        Capsule.decode(h("01 05 00"))


def test_reader_returns_capsules_split_anywhere() -> None:
    wire = AddressRequest((RequestedAddress(1, IPv4Network("0.0.0.0/32")),)).encode()
    wire += RouteAdvertisement((IPAddressRange.of_network("::/0"),)).encode()
    reader = CapsuleReader(KNOWN)
    got = [c for byte in wire for c in reader.feed(bytes((byte,)))]
    assert [c.capsule_type for c in got] == [2, 3]
    assert reader.at_boundary
    reader.finish()


def test_reader_skips_unknown_capsules_without_buffering_them() -> None:
    reader = CapsuleReader(KNOWN, max_value_size=16)
    # an unknown type (0x2843) with a 100000-byte value, larger than any buffer we allow
    header = encode_capsule(0x2843, b"")[:2] + h("80 0186a0")
    assert reader.feed(header) == []
    for _ in range(100):
        assert reader.feed(bytes(1000)) == []
        assert len(reader._buffer) == 0  # streamed past, never copied
    assert reader.feed(AddressAssign().encode()) == [Capsule(1, b"")]
    assert reader.skipped == 1


def test_reader_takes_what_follows_an_empty_unknown_capsule() -> None:
    # RFC 9297 §5.4: a grease capsule may be empty; skipping it must not stall the stream (the
    # reader took its header, then waited for more data with the next capsule in hand)
    grease = encode_capsule(0x29 * 7 + 0x17, b"")
    request = AddressRequest((RequestedAddress(1, IPv4Network("0.0.0.0/32")),)).encode()
    reader = CapsuleReader(KNOWN)
    assert [c.capsule_type for c in reader.feed(grease + grease + request)] == [2]
    assert reader.skipped == 2 and reader.at_boundary
    reader.finish()  # it said "ended inside a capsule"


def test_reader_buffer_stays_bounded_under_empty_unknown_capsules() -> None:
    # the bound of the docstring: one capsule header plus max_value_size between feeds (the
    # stalled reader kept each chunk and consumed one capsule per feed: 3 MB after 1,000)
    reader = CapsuleReader(KNOWN, max_value_size=16)
    chunk = encode_capsule(0x2843, b"") * 1000
    for _ in range(1000):
        assert reader.feed(chunk) == []
        assert reader.pending == 0
    assert reader.skipped == 1000 * 1000


def test_reader_counts_skipped_capsules_not_their_types() -> None:
    # types span 2^62: one table entry per type seen let a peer grow our memory with each new
    # one (200,000 distinct types held ~9 times the bytes that carried them)
    reader = CapsuleReader(KNOWN)
    for capsule_type in range(0x2843, 0x2843 + 1000):
        reader.feed(encode_capsule(capsule_type, b"x"))
    assert reader.skipped == 1000


def test_reader_rejects_an_oversized_known_capsule_before_its_value() -> None:
    reader = CapsuleReader(KNOWN, max_value_size=16)
    with pytest.raises(CapsuleError, match="17-byte value"):
        reader.feed(h("01 11"))
    with pytest.raises(CapsuleError):
        reader.feed(b"")  # stays failed


def test_reader_finish_inside_a_capsule_is_malformed() -> None:
    reader = CapsuleReader(KNOWN)
    reader.feed(h("01 07 01 04"))
    with pytest.raises(CapsuleError, match="ended inside a capsule"):
        reader.finish()


# --- RFC 9297 §2.1 / RFC 9484 §6 datagrams -----------------------------------------------------

IPV4_PACKET = h("4500001c 00000000 4011 0000 c000020b c6336402") + bytes(8)


def test_h3_datagram_of_section_8() -> None:
    # RFC 9484 §8: stream 44 -> Quarter Stream ID 11, Context ID 0, then the packet
    wire = h("0b 00") + IPV4_PACKET
    assert H3Datagram(44, encode_ip_packet(IPV4_PACKET)).encode() == wire
    datagram = H3Datagram.decode(wire)
    assert datagram.stream_id == 44
    payload = IpProxyingPayload.decode(datagram.payload)
    assert payload == IpProxyingPayload(0, IPV4_PACKET)
    assert payload.is_ip_packet
    # what the budget subtracts is exactly what the encoding put before the packet
    assert ip_packet_overhead(44) == len(wire) - len(IPV4_PACKET) == 2
    assert ip_packet_overhead(64 * 4) == 3  # Quarter Stream ID 64 takes a 2-byte varint


def test_h3_datagram_limits() -> None:
    # 2^60-1 is the last legal Quarter Stream ID; 2^60 (8-byte varint d0 00..) is an error
    assert H3Datagram.decode(h("cfffffffffffffff")).stream_id == ((1 << 60) - 1) * 4
    with pytest.raises(CapsuleError, match="exceeds") as info:
        H3Datagram.decode(h("d000000000000000"))
    assert info.value.h3_error_code == H3ErrorCode.H3_DATAGRAM_ERROR
    with pytest.raises(CapsuleError, match="too short"):
        H3Datagram.decode(b"")
    with pytest.raises(CapsuleError, match="too short"):
        H3Datagram.decode(h("40"))  # a two-byte varint cut after its first byte
    with pytest.raises(ValueError, match="client-initiated bidirectional"):
        H3Datagram(2, b"")


def test_context_ids_and_empty_payloads() -> None:
    # §5: context IDs are varints; §6: "this field can be empty"
    assert IpProxyingPayload(2, b"").encode() == h("02")
    assert IpProxyingPayload(0x3FFF, b"x").encode() == h("7fff 78")
    assert IpProxyingPayload.decode(h("00")) == IpProxyingPayload(0, b"")
    with pytest.raises(CapsuleError, match="Context ID"):
        IpProxyingPayload.decode(b"")


# --- §3 / §4.6 URI template --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/.well-known/masque/ip/*/*/", RequestScope()),
        (
            "/.well-known/masque/ip/2001%3Adb8%3A%3A42/17/",
            RequestScope(IPv6Network("2001:db8::42/128"), 17),
        ),
        ("/.well-known/masque/ip/192.0.2.0%2F24/*/", RequestScope(IPv4Network("192.0.2.0/24"))),
        ("/.well-known/masque/ip/target.example.com/132/", RequestScope("target.example.com", 132)),
    ],
)
def test_scope_paths(path: str, scope: RequestScope) -> None:
    assert RequestScope.from_path(path) == scope
    assert scope.path() == path


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/masque/ip/2001:db8::42/*/",  # colons not percent-encoded
        "/.well-known/masque/ip/192.0.2.1%2F24/*/",  # host bits set
        "/.well-known/masque/ip/192.0.2.0%2F33/*/",  # longer than 32 bits
        "/.well-known/masque/ip/*/256/",
        "/.well-known/masque/ip/*/-1/",
        "/.well-known/masque/ip//*/",  # empty target
        "/.well-known/masque/ip/bad%20name/*/",
        "/.well-known/masque/ip/fe80%3A%3A1%25eth0/*/",  # zone identifiers are not supported
        "/.well-known/masque/ip/192.0.2.0%2F024/*/",  # IPv4: at most 2 digits (Figure 6)
    ],
)
def test_malformed_scopes(path: str) -> None:
    with pytest.raises(ValueError):
        RequestScope.from_path(path)


@pytest.mark.parametrize(
    "path", ["/", "/vpn", "/.well-known/masque/udp/a/1/", "/.well-known/masque/ip/*/*/x/"]
)
def test_other_paths_are_not_the_template(path: str) -> None:
    assert RequestScope.from_path(path) is None


# --- §4.8 outermost protocol -------------------------------------------------------------------


def test_outermost_protocol() -> None:
    assert outermost_protocol(IPV4_PACKET) == 17
    tcp6 = h("60000000 0000 06 40") + bytes(32)
    assert outermost_protocol(tcp6) == 6
    # Hop-by-Hop (0, 8 bytes) then Destination Options (60, 16 bytes) then UDP (17)
    chained = h("60000000 0018 00 40") + bytes(32) + h("3c00") + bytes(6) + h("1101") + bytes(14)
    assert outermost_protocol(chained) == 17
    assert outermost_protocol(chained[:45]) is None  # chain cut short
    assert outermost_protocol(b"") is None
    assert outermost_protocol(h("45")) is None


# --- round trips -------------------------------------------------------------------------------


@given(ws.connect_ip_capsules)
def test_capsules_round_trip(capsule: ConnectIpCapsule) -> None:
    framed = Capsule.decode(capsule.encode())
    assert decode_connect_ip_capsule(framed.capsule_type, framed.value) == capsule


@given(st.lists(ws.connect_ip_capsules, max_size=4), st.data())
def test_reader_round_trip_any_chunking(
    capsules: list[ConnectIpCapsule], data: st.DataObject
) -> None:
    wire = b"".join(c.encode() for c in capsules)
    reader = CapsuleReader(KNOWN)
    got = [c for chunk in data.draw(ws.chunkings(wire)) for c in reader.feed(chunk)]
    reader.finish()
    assert [decode_connect_ip_capsule(c.capsule_type, c.value) for c in got] == capsules


@given(ws.h3_datagrams)
def test_h3_datagrams_round_trip(datagram: H3Datagram) -> None:
    assert H3Datagram.decode(datagram.encode()) == datagram


@given(ws.ip_proxying_payloads)
def test_ip_proxying_payloads_round_trip(payload: IpProxyingPayload) -> None:
    assert IpProxyingPayload.decode(payload.encode()) == payload


@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda t, p: f"/.well-known/masque/ip/{t}/{p}/",
            st.text(alphabet="0123456789abcdef.:%2FA*x-", max_size=30),
            st.text(alphabet="0123456789*-", max_size=4),
        ),
    )
)
def test_any_path_parses_or_raises_value_error(path: str) -> None:
    try:
        scope = RequestScope.from_path(path)
    except ValueError:
        return
    if scope is not None:
        assert RequestScope.from_path(scope.path()) == scope
