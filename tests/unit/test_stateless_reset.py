"""Stateless reset (RFC 9000 §10.3): tokens derived from a static key, the reset packet's
shape, a client that recognises one, and a QuicServer that answers unknown 1-RTT packets."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aioquic.quic.events import ConnectionTerminated

from tests.unit.quic_harness import make_configs
from tests.unit.test_udp_loopback import echo_server, within
from tunnel.aio.udp import QuicServer, UdpEndpoint
from tunnel.protocol.quic_ext import STATELESS_RESET_REASON, TunnelQuicConnection
from tunnel.protocol.stateless_reset import (
    CID_TAG_SIZE,
    MAX_RESET_SIZE,
    MIN_RESET_SIZE,
    TOKEN_SIZE,
    build_reset,
    is_reset,
    is_tagged_connection_id,
    reset_key_from_secret,
    reset_size,
    reset_token,
    tag_connection_id,
)

KEY = reset_key_from_secret(b"-----BEGIN PRIVATE KEY----- not a real one")
CLIENT_ADDR = ("10.0.0.2", 40000)
SERVER_ADDR = ("10.0.0.1", 4433)


def zeros(n: int) -> bytes:
    return bytes(n)


# -- the pure functions --------------------------------------------------------------------


def test_tokens_depend_on_key_and_connection_id_only() -> None:
    assert reset_token(KEY, b"12345678") == reset_token(KEY, b"12345678")
    assert len(reset_token(KEY, b"12345678")) == TOKEN_SIZE
    assert reset_token(KEY, b"12345678") != reset_token(KEY, b"12345679")
    other = reset_key_from_secret(b"another secret")
    assert reset_token(other, b"12345678") != reset_token(KEY, b"12345678")
    assert b"-----BEGIN PRIVATE KEY----- not a real one"[:32] != KEY  # never the secret itself
    with pytest.raises(ValueError, match="empty"):
        reset_key_from_secret(b"")


def test_a_tagged_connection_id_is_recognised_under_its_key_only() -> None:
    cid = tag_connection_id(KEY, bytes(range(8)))
    assert len(cid) == 8 and cid[:-CID_TAG_SIZE] == bytes(range(6))
    assert is_tagged_connection_id(KEY, cid)
    assert not is_tagged_connection_id(reset_key_from_secret(b"another secret"), cid)
    assert not is_tagged_connection_id(KEY, bytes([cid[0] ^ 1]) + cid[1:])  # the body counts
    assert not is_tagged_connection_id(KEY, cid[:-1] + bytes([cid[-1] ^ 1]))
    assert not is_tagged_connection_id(KEY, cid[:5])  # too short to carry a tag
    with pytest.raises(ValueError, match="at least 6 bytes"):
        tag_connection_id(KEY, b"12345")
    # random IDs (e.g. the bytes of another endpoint's reset) rarely carry it: 2**-16 each
    tagged = sum(is_tagged_connection_id(KEY, os.urandom(8)) for _ in range(2000))
    assert tagged < 10


@pytest.mark.parametrize(
    ("trigger", "size"),
    [(0, None), (21, None), (22, 21), (30, 29), (44, 43), (45, 43), (1200, MAX_RESET_SIZE)],
)
def test_reset_is_smaller_than_its_trigger_and_never_below_the_minimum(
    trigger: int, size: int | None
) -> None:
    assert reset_size(trigger) == size
    packet = build_reset(reset_token(KEY, b"c"), trigger, os.urandom)
    assert (None if packet is None else len(packet)) == size


def test_reset_looks_like_a_short_header_packet_ending_in_the_token() -> None:
    token = reset_token(KEY, b"cid")
    packet = build_reset(token, 1200, lambda n: b"\xff" * n)
    assert packet is not None
    assert packet[0] == 0x7F  # header form 0, fixed bit 1, six unpredictable bits
    assert packet.endswith(token)
    assert is_reset(packet, [b"x" * TOKEN_SIZE, token])
    with pytest.raises(ValueError, match="16 bytes"):
        build_reset(b"short", 1200, zeros)


def test_what_is_not_a_reset() -> None:
    token = reset_token(KEY, b"cid")
    packet = build_reset(token, 1200, zeros)
    assert packet is not None
    assert not is_reset(packet, [reset_token(KEY, b"other")])
    assert not is_reset(packet, [])
    assert not is_reset(bytes([0xC0]) + packet[1:], [token])  # long header form
    assert not is_reset(packet[-(MIN_RESET_SIZE - 1) :], [token])  # too short
    assert not is_reset(b"", [token])


# -- with aioquic connections -------------------------------------------------------------


def _connected(key: bytes | None) -> tuple[TunnelQuicConnection, TunnelQuicConnection, float]:
    """A client and a server connection after the handshake, datagrams exchanged in memory."""
    client_cfg, server_cfg = make_configs(["qt"])
    client = TunnelQuicConnection(configuration=client_cfg)
    now = 0.0
    client.connect(SERVER_ADDR, now=now)
    server = TunnelQuicConnection(
        configuration=server_cfg,
        original_destination_connection_id=client._peer_cid.cid,
        reset_key=key,
    )
    for _ in range(30):
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, CLIENT_ADDR, now)
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, SERVER_ADDR, now)
        now += 0.01
    assert client._handshake_complete and server._handshake_complete
    while client.next_event() is not None:
        pass
    return client, server, now


def test_server_announces_tokens_derived_from_the_key() -> None:
    client, _, _ = _connected(KEY)
    # the token of the handshake's connection ID (transport parameter) and of every ID given
    # in NEW_CONNECTION_ID frames; every such ID carries the key's tag
    announced = [client._peer_cid, *client._peer_cid_available]
    assert len(announced) > 1
    for cid in announced:
        assert cid.stateless_reset_token == reset_token(KEY, cid.cid)
        assert is_tagged_connection_id(KEY, cid.cid)


def test_without_a_key_the_tokens_are_aioquics_random_ones() -> None:
    client, _, _ = _connected(None)
    cid = client._peer_cid
    assert cid.stateless_reset_token and cid.stateless_reset_token != reset_token(KEY, cid.cid)
    assert not is_tagged_connection_id(KEY, cid.cid)  # aioquic's random IDs, untouched


def test_client_ends_the_connection_on_a_reset_and_sends_nothing_after() -> None:
    client, _, now = _connected(KEY)
    cid = client._peer_cid.cid
    wrong = build_reset(reset_token(KEY, b"not-this-connection"), 1200, os.urandom)
    assert wrong is not None
    client.receive_datagram(wrong, SERVER_ADDR, now)
    terminated = [e for e in iter(client.next_event, None) if isinstance(e, ConnectionTerminated)]
    assert terminated == []  # someone else's token: an undecryptable packet, ignored

    reset = build_reset(reset_token(KEY, cid), 1200, os.urandom)
    assert reset is not None
    # the right token from another address (a token seen on the wire, replayed by an
    # attacker): not a reset, the connection lives (RFC 9000 §21.11)
    client.receive_datagram(reset, ("203.0.113.66", 4433), now)
    terminated = [e for e in iter(client.next_event, None) if isinstance(e, ConnectionTerminated)]
    assert terminated == []

    client.receive_datagram(reset, SERVER_ADDR, now)
    events = list(iter(client.next_event, None))
    (closed,) = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert closed.reason_phrase == STATELESS_RESET_REASON
    client.send_ping(1)
    assert client.datagrams_to_send(now=now + 0.1) == []


def test_a_reset_that_carries_our_connection_id_still_ends_the_connection() -> None:
    """A reset's bytes before its token are random, so they may read as a packet for the
    client's own connection ID: the datagram fast path then tries it, cannot decrypt it, and
    leaves it to the reset check (it skips the check only for a packet it processed)."""
    client, _, now = _connected(KEY)
    assert client._handshake_confirmed and client.fast_datagram_path
    reset = build_reset(reset_token(KEY, client._peer_cid.cid), 1200, os.urandom)
    assert reset is not None
    cid = client.host_cid
    looks_ours = bytes((0x40 | reset[0] & 0x3F,)) + cid + reset[1 + len(cid) :]
    assert is_reset(looks_ours, (reset[-TOKEN_SIZE:],))
    taken = client._receive_short_packet(looks_ours, SERVER_ADDR, now)
    assert taken is False  # undecryptable: not the fast path's to drop
    client.receive_datagram(looks_ours, SERVER_ADDR, now)
    (closed,) = [e for e in iter(client.next_event, None) if isinstance(e, ConnectionTerminated)]
    assert closed.reason_phrase == STATELESS_RESET_REASON


# -- QuicServer on loopback ----------------------------------------------------------------


def reset_server() -> QuicServer:
    """An echo server on loopback that answers packets of unknown connections with resets
    under KEY (call inside the running loop)."""
    server = echo_server(UdpEndpoint.bind("127.0.0.1"), make_configs(["qt"])[1])
    server.reset_key = KEY
    return server


def peer_socket() -> socket.socket:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.setblocking(False)
    return peer


def test_server_answers_an_unknown_connection_with_a_reset() -> None:
    async def scenario() -> None:
        server = reset_server()
        peer = peer_socket()
        try:
            cid = tag_connection_id(KEY, bytes(range(8)))  # one we could have issued
            # a 1-RTT packet of a connection the server does not have
            trigger = bytes([0x40]) + cid + os.urandom(60)
            loop = asyncio.get_running_loop()
            peer.sendto(trigger, server.endpoint.local_address)
            answer = await asyncio.wait_for(loop.sock_recv(peer, 2048), 2.0)
            assert len(answer) == min(len(trigger) - 1, MAX_RESET_SIZE)
            assert is_reset(answer, [reset_token(KEY, cid)])
            assert server.resets_sent == 1
            # too small to answer with a smaller reset: nothing
            peer.sendto(trigger[:MIN_RESET_SIZE], server.endpoint.local_address)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(loop.sock_recv(peer, 2048), 0.3)
            assert server.resets_sent == 1
        finally:
            peer.close()
            await server.close()

    within(10, scenario)


def test_server_answers_no_connection_id_it_could_not_have_issued() -> None:
    """A made-up connection ID, or the random bytes of another endpoint's reset, draws no
    reset: two endpoints answering each other's resets (each a byte shorter, §10.3.3) would
    exchange some 20 packets per trigger."""

    async def scenario() -> None:
        server = reset_server()
        peer = peer_socket()
        try:
            loop = asyncio.get_running_loop()
            untagged = bytes(range(8))
            assert not is_tagged_connection_id(KEY, untagged)
            other_reset = build_reset(reset_token(b"k" * 32, untagged), 60, os.urandom)
            assert other_reset is not None
            for trigger in (bytes([0x40]) + untagged + os.urandom(60), other_reset):
                peer.sendto(trigger, server.endpoint.local_address)
            # the server handles datagrams in order: a tagged one sent last answers first
            tagged = tag_connection_id(KEY, untagged)
            peer.sendto(bytes([0x40]) + tagged + os.urandom(30), server.endpoint.local_address)
            answer = await asyncio.wait_for(loop.sock_recv(peer, 2048), 2.0)
            assert is_reset(answer, [reset_token(KEY, tagged)])
            assert server.resets_sent == 1
            assert server.counters()["resets_not_ours"] == 2
        finally:
            peer.close()
            await server.close()

    within(10, scenario)


def test_two_servers_do_not_answer_each_others_resets() -> None:
    """A trigger sent to server A from server B's address (spoofed, in real life): A answers
    with a reset, B takes it for a packet of a connection it does not know. Before the tag,
    B answered it a byte shorter, A answered that, and so on, ~20 resets per trigger; now B
    sees that the reset's bytes are no connection ID it issued (same key on both: it is the
    tag, not the key, that tells)."""

    async def scenario() -> None:
        server_a, server_b = reset_server(), reset_server()
        try:
            trigger = bytes([0x40]) + tag_connection_id(KEY, os.urandom(8)) + os.urandom(51)
            server_b.endpoint.send_batch([(trigger, server_a.endpoint.local_address)])
            deadline = asyncio.get_running_loop().time() + 5.0
            while server_b.counters()["resets_not_ours"] < 1:
                assert asyncio.get_running_loop().time() < deadline, "B never got A's reset"
                await asyncio.sleep(0.01)
            assert server_a.resets_sent == 1 and server_b.resets_sent == 0
        finally:
            await server_a.close()
            await server_b.close()

    within(10, scenario)
