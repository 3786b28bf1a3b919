"""The concentrator core (tunnel/agents/concentrator.py) in memory, on the fake clock, against
real client connections with real certificates (tests/unit/concentrator_harness.py): every
decision the root tests used to find in the concentrator's log (session created, access
learned, session expired, pool address claimed, is revoked, crl loaded, unparsable subject...)
is checked here through the core's actions, its status and what the clients receive."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.packet import QuicTransportParameters, push_quic_transport_parameters

from testbed.hostile import (
    checksum16,
    icmp_echo,
    tcp_syn,
    unparsable_subject_certificate,
    write_pair,
)
from tests.unit.concentrator_harness import (
    Conn,
    CoreLab,
    concentrator_config,
    copy_ca,
    lab,
    lab_certs,
    make_certs,
)
from tunnel.agents.concentrator import (
    AUTH_FAILED_REASON,
    SESSION_SETUP_TIMEOUT,
    AddressesClaimed,
    ClientArrived,
    ClientLeft,
    Closed,
    CrlReloaded,
    Refusal,
    Refused,
    SessionAnswered,
    StatusChanged,
    _SessionMode,
)
from tunnel.aio.workers import SharedPoolClaims, worker_config
from tunnel.policy.client_slots import LocalClientSlots
from tunnel.protocol.connection import (
    INTERNAL_ERROR_REASON,
    ConnectionClosed,
    PacketReceived,
    SessionEstablished,
    SessionJoinFailed,
    TcpConnectRequested,
)
from tunnel.protocol.quic_ext import MAX_PEER_ACK_DELAY, AckState, TunnelQuicConnection
from tunnel.session.path_health import PathHealth, PathMonitor
from tunnel.wire.errors import ControlErrorCode
from tunnel.wire.messages import AccessId, AccessSignal

__all__ = ["lab_certs"]  # the fixture

WIFI, CELL = AccessId.NON_THREE_GPP, AccessId.THREE_GPP
ALICE, ALICE6, SERVER, SERVER6 = "10.8.0.2", "fd00:8::2", "10.200.0.2", "fd00:200::2"


def closed_reason(conn: Conn) -> str | None:
    closes = conn.of(ConnectionClosed)
    return closes[0].reason if closes else None


def session(lab_: CoreLab, name: str = "alice", paths: int = 1) -> list[Conn]:
    """`paths` session-mode connections of `name`, the first with New Session, the others
    joined."""
    first = lab_.connect(name, "qt-session")
    first.client.request_new_session()
    lab_.run(0.2)
    (made,) = first.of(SessionEstablished)
    conns = [first]
    for _ in range(paths - 1):
        other = lab_.connect(name, "qt-session")
        other.client.join_session(made.session_id)
        lab_.run(0.2)
        assert other.of(SessionEstablished) == [made]
        conns.append(other)
    return conns


def echo_replies(conn: Conn) -> int:
    return sum(1 for e in conn.of(PacketReceived) if e.packet[20] == 0)  # ICMP echo reply


def reply_to_alice(seq: int) -> bytes:
    packet = bytearray(icmp_echo(SERVER, ALICE, seq))
    packet[20] = 0  # an echo reply (the core never looks at the checksum)
    return bytes(packet)


# -- authentication and admission ---------------------------------------------------------------


def test_an_admitted_client_connects_in_either_mode(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    tunnel = core_lab.connect("alice", "qt")
    carol = core_lab.connect("carol", "qt-session")
    assert core_lab.core.client_name(tunnel.server) == "alice"
    assert core_lab.core.client_name(carol.server) == "carol"
    assert core_lab.status_of("alice")["mode"] == "tunnel"
    assert core_lab.status_of("carol")["mode"] == "session"
    status = core_lab.core.status()
    assert status["connections"] == 2 and status["counters"]["connections_accepted"] == 2
    assert closed_reason(tunnel) is None and closed_reason(carol) is None


@pytest.mark.parametrize(
    ("who", "logged"),
    [
        ("nobody", "sent no certificate"),
        ("foreign", "is not accepted"),
        ("bob", "'bob' is not served by this concentrator"),
        ("unparsable", "unparsable subject"),
    ],
)
def test_an_unauthenticated_peer_learns_nothing_but_the_operator_learns_why(
    lab_certs: Path, tmp_path: Path, who: str, logged: str
) -> None:
    """The peer gets the generic reason only (a stranger probing the concentrator learns nothing
    of its clients or CA); the Refused action (and the log) carries the detail. bob is signed
    by the CA but neither a [[client]] nor admitted by the pool; the unparsable subject used to
    raise and leave the connection open, unauthenticated (issue 10 item 1)."""
    core_lab = lab(lab_certs)
    if who == "nobody":
        conn = core_lab.connect(None)
    elif who == "foreign":
        foreign = lab_certs / "foreign"
        conn = core_lab.connect(cert=foreign / "alice.pem", key=foreign / "alice.key")
    elif who == "unparsable":
        write_pair(*unparsable_subject_certificate(), tmp_path / "mallory")
        conn = core_lab.connect(cert=tmp_path / "mallory.pem", key=tmp_path / "mallory.key")
    else:
        conn = core_lab.connect(who)
    assert closed_reason(conn) == AUTH_FAILED_REASON
    (refused,) = core_lab.of(Refused)
    assert refused.kind is Refusal.AUTH and logged in refused.reason
    assert refused.connection is conn.server and conn.server.closed
    assert core_lab.core.client_name(conn.server) is None
    status = core_lab.core.status()
    assert status["refused"]["auth"] == 1 and status["clients"] == []
    assert status["counters"]["internal_errors"] == 0


def test_a_refused_connection_ends_once_its_close_left(lab_certs: Path) -> None:
    """Found by a review: a refused connection stayed closing three PTOs, holding its slot
    (over 49 s with the largest max_ack_delay a peer may announce), so a host having itself
    refused ~6.5 times a second kept every slot taken. Now it ends as soon as its
    CONNECTION_CLOSE left (fake clock: at the same instant); the client still gets it."""
    core_lab = lab(lab_certs)
    conn = core_lab.connect(None, settle=0.0)
    quic = conn.server.quic
    refused_at = terminated_at = None
    for _ in range(2000):  # bounded: 2 s of 1 ms steps
        core_lab.run(0.001)
        if refused_at is None and core_lab.of(Refused):
            refused_at = core_lab.net.clock.now
        if quic._state is QuicConnectionState.TERMINATED:
            terminated_at = core_lab.net.clock.now
            break
    assert refused_at is not None and terminated_at is not None
    assert terminated_at - refused_at <= 0.002  # three PTOs were over 0.1 s here
    core_lab.run(0.5)  # the client drains its three PTOs, then says why it was closed
    assert closed_reason(conn) == AUTH_FAILED_REASON


def test_a_peers_max_ack_delay_counts_at_most_a_second_in_our_pto(lab_certs: Path) -> None:
    """RFC 9000 allows 16,383 ms; counted whole, each PTO (and a closing period) ran 16 s."""
    params = QuicTransportParameters(max_ack_delay=16383)
    buf = Buffer(capacity=256)
    push_quic_transport_parameters(buf, params)
    configuration = QuicConfiguration(is_client=False)
    configuration.load_cert_chain(lab_certs / "concentrator.pem", lab_certs / "concentrator.key")
    quic = TunnelQuicConnection(
        configuration=configuration, original_destination_connection_id=bytes(8)
    )
    quic._parse_transport_parameters(buf.data)
    assert quic._loss.max_ack_delay == MAX_PEER_ACK_DELAY == 1.0
    small = Buffer(capacity=256)
    push_quic_transport_parameters(small, QuicTransportParameters(max_ack_delay=25))
    quic._parse_transport_parameters(small.data)
    assert quic._loss.max_ack_delay == 0.025


def test_any_failure_while_checking_credentials_is_a_refusal(
    lab_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core_lab = lab(lab_certs)

    def broken(*args: object) -> str:
        raise RuntimeError("a bug in the verifier")

    monkeypatch.setattr(core_lab.core.verifier, "verify", broken)
    conn = core_lab.connect("alice")
    assert closed_reason(conn) == AUTH_FAILED_REASON
    (refused,) = core_lab.of(Refused)
    assert "could not be checked (RuntimeError: a bug in the verifier)" in refused.reason


def test_a_mode_not_served_is_refused_naming_the_served_ones(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, 'modes=["tunnel"]')
    conn = core_lab.connect("alice", "qt-session")
    reason = "session mode (ALPN qt-session) is not offered by this concentrator: use tunnel mode"
    assert closed_reason(conn) == reason  # authenticated: told in detail
    assert core_lab.core.status()["refused"]["mode"] == 1


def test_no_tunnel_alpn_at_all_counts_as_refused_mode(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    core_lab.connect("alice", "h2", settle=3.0)  # aioquic closes it: no common ALPN
    assert core_lab.core.status()["refused"]["mode"] == 1
    assert core_lab.core.connection_count == 0


def test_client_and_connection_limits(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, "limits.max_clients=1", "limits.max_connections_per_client=1")
    (first,) = session(core_lab, "alice")
    second = core_lab.connect("alice", "qt-session")
    assert closed_reason(second) == (
        "client 'alice' already has 1 connections, the maximum: close one first"
    )
    other = core_lab.connect("carol")
    assert closed_reason(other) == (
        "the concentrator serves its maximum of 1 clients: try again later"
    )
    assert [r.kind for r in core_lab.of(Refused)] == [Refusal.LIMIT, Refusal.LIMIT]
    assert core_lab.core.status()["refused"]["limit"] == 2
    assert closed_reason(first) is None


def test_workers_count_their_clients_together(lab_certs: Path) -> None:
    """limits.max_clients is the concentrator's: two workers' cores share one count
    (tunnel/policy/client_slots.py; across processes, tunnel/aio/workers.py SharedClientSlots).
    alice served by one keeps carol out of the other until she is gone."""
    slots = LocalClientSlots(1)
    one = lab(lab_certs, "limits.max_clients=1", client_slots=slots)
    two = lab(lab_certs, "limits.max_clients=1", client_slots=slots)
    one.connect("alice")
    refused = two.connect("carol")
    assert closed_reason(refused) == (
        "the concentrator serves its maximum of 1 clients: try again later"
    )
    assert slots.taken == 1
    one.core.shutdown(one.now)  # alice's tunnel-mode connection closes: she is gone at once
    one.carry_out()
    one.run(1.0)
    assert slots.taken == 0
    served = two.connect("carol")
    assert closed_reason(served) is None and slots.taken == 1


def test_workers_claim_pool_addresses_together(lab_certs: Path) -> None:
    """A [pool] with workers: two workers' cores share one table of claims (across processes,
    tunnel/aio/workers.py SharedPoolClaims, tested in test_workers.py). carol's first packet
    claims 10.8.1.5 at worker 0, which routes it to its TUN (AddressesClaimed); dave's from
    the same address at worker 1 claims nothing and is dropped; carol herself, on a newer
    connection at worker 1, holds it there too, and it is free only once she left both."""
    shared = SharedPoolClaims(max_clients=4)
    one = lab(lab_certs, pool_claims=shared.worker(0))
    two = lab(lab_certs, pool_claims=shared.worker(1))
    address = ip_network("10.8.1.5/32")

    def send_from_pool(core_lab: CoreLab, name: str, seq: int) -> Conn:
        conn = core_lab.connect(name)
        conn.client.send_packet(icmp_echo("10.8.1.5", SERVER, seq))
        core_lab.run(0.1)
        return conn

    send_from_pool(one, "carol", 1)
    assert one.of(AddressesClaimed) == [AddressesClaimed("carol", (address,))]
    assert one.status_of("carol")["addresses"] == ["10.8.1.5/32"]
    assert len(one.tun) == 1
    send_from_pool(two, "dave", 2)
    assert two.status_of("dave")["addresses"] == [] and two.of(AddressesClaimed) == []
    assert two.status_of("dave")["counters"]["pool_address_taken"] == 1
    assert two.tun == []  # the ingress filter dropped it
    send_from_pool(two, "carol", 3)
    assert two.of(AddressesClaimed) == [AddressesClaimed("carol", (address,))]
    assert shared.claimed() == {address.network_address: 0b11}
    for core_lab in (one, two):
        core_lab.core.shutdown(core_lab.now)
        core_lab.carry_out()
        core_lab.run(1.0)
        assert ClientLeft("carol", (address,)) in core_lab.of(ClientLeft)
    assert shared.claimed() == {}


def test_no_worker_hands_out_the_concentrators_own_address(lab_certs: Path) -> None:
    """A pool that covers the TUN's address (10.8.0.1): a client at worker 1, whose TUN has
    no address, cannot claim it either (worker 1's view dropped the TUN's addresses, and a
    client could claim the concentrator's own address, its route moved to worker 1)."""
    config = concentrator_config(lab_certs, "workers=2", "pool.ipv4=10.8.0.0/24")
    shared = SharedPoolClaims(max_clients=4)
    core_lab = CoreLab(worker_config(config, 1), lab_certs, pool_claims=shared.worker(1))
    carol = core_lab.connect("carol")
    carol.client.send_packet(icmp_echo("10.8.0.1", SERVER, 1))
    core_lab.run(0.1)
    assert core_lab.status_of("carol")["addresses"] == [] and shared.claimed() == {}
    assert core_lab.status_of("carol")["counters"]["pool_address_taken"] == 1


def test_in_tunnel_mode_a_new_connection_replaces_the_old_one(lab_certs: Path) -> None:
    """A restarted client does not wait for the idle timeout of its old connection."""
    core_lab = lab(lab_certs)
    old = core_lab.connect("alice")
    new = core_lab.connect("alice")
    assert closed_reason(old) == "replaced by a newer tunnel-mode connection"
    assert [c.connection for c in core_lab.of(Closed)] == [old.server]
    (alice,) = core_lab.core.status()["clients"]
    assert len(alice["connections"]) == 1
    new.client.send_packet(icmp_echo(ALICE, SERVER, 1))
    core_lab.run(0.1)
    assert len(core_lab.tun) == 1


def test_a_client_changing_its_mode_replaces_everything_of_the_old_one(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    a, b = session(core_lab, "alice", paths=2)
    assert core_lab.core.status()["sessions"] == 1
    core_lab.connect("alice", "qt")
    for old in (a, b):
        assert closed_reason(old) == "replaced by a newer tunnel-mode connection"
    assert core_lab.core.status()["sessions"] == 0  # freed at once, not after the expiry
    assert core_lab.status_of("alice")["mode"] == "tunnel"


def test_shutdown_closes_every_connection(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    conns = [core_lab.connect("alice"), core_lab.connect("carol", "qt-session")]
    core_lab.core.shutdown(core_lab.now)
    core_lab.carry_out()
    core_lab.run(1.0)  # the peer reports a close at the end of its draining period
    assert [closed_reason(c) for c in conns] == ["the concentrator is shutting down"] * 2
    assert {a.connection for a in core_lab.of(Closed)} == {c.server for c in conns}


def test_a_client_arriving_and_leaving_is_announced_with_its_prefixes(lab_certs: Path) -> None:
    """What a concentrator of several workers moves between their TUNs (README "Workers"):
    ClientArrived when a client is admitted, ClientLeft once it is gone. A tunnel-mode
    connection that replaces the client's old one makes it leave and arrive again, in that
    order, so its route ends at the worker of the new one; a session's second connection
    announces nothing."""
    core_lab = lab(lab_certs)
    core_lab.connect("alice")
    prefixes = (ip_network("10.8.0.2/32"), ip_network("fd00:8::2/128"))
    arrived, left = ClientArrived("alice", prefixes), ClientLeft("alice", prefixes)
    assert core_lab.of(ClientArrived) == [arrived]
    core_lab.connect("alice")

    def moves() -> list[ClientArrived | ClientLeft]:
        return [a for a in core_lab.actions if isinstance(a, ClientArrived | ClientLeft)]

    assert moves() == [arrived, left, arrived]
    session(core_lab, "carol", paths=2)
    assert [a.client for a in moves()] == ["alice", "alice", "alice", "carol"]
    core_lab.core.shutdown(core_lab.now)
    core_lab.carry_out()
    core_lab.run(1.0)
    assert moves()[4:] == [left]  # carol's session waits session_idle_expiry (30 s)
    core_lab.run(30.0)
    assert [type(a) for a in moves()[5:]] == [ClientLeft] and moves()[5].client == "carol"


# -- revocation -----------------------------------------------------------------------------------


def test_revoked_clients_are_refused_and_the_crl_follows_its_file(
    lab_certs: Path, tmp_path: Path
) -> None:
    """bob revoked at start is refused ("is revoked"); carol revoked while the concentrator
    runs is refused at her next connection (the file changed); SIGHUP reloads it explicitly;
    a broken replacement keeps the last good list."""
    ca = copy_ca(lab_certs, tmp_path / "ca")
    make_certs(ca, "--revoke", "bob")
    config = concentrator_config(
        ca, 'pool.admit=["bob", "carol", "dave"]', f'tls.crl="{ca}/crl.pem"'
    )
    core_lab = CoreLab(config, ca)
    bob = core_lab.connect("bob")
    assert closed_reason(bob) == AUTH_FAILED_REASON
    assert "is revoked" in core_lab.of(Refused)[-1].reason
    assert closed_reason(core_lab.connect("carol")) is None
    make_certs(ca, "--revoke", "carol")
    carol = core_lab.connect("carol")
    assert closed_reason(carol) == AUTH_FAILED_REASON
    assert "is revoked" in core_lab.of(Refused)[-1].reason
    reloads = core_lab.core.status()["crl"]["reloads"]
    core_lab.core.reload_crl(core_lab.now)
    core_lab.carry_out()
    assert core_lab.of(CrlReloaded) == [CrlReloaded(revoked=2, problem=None)]
    assert core_lab.core.status()["crl"] == {
        "revoked": 2,
        "reloads": reloads + 1,
        "problem": None,
    }
    (ca / "crl.pem").write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    os.utime(ca / "crl.pem", ns=(1, 1))  # a different mtime for certain
    core_lab.core.reload_crl(core_lab.now)
    core_lab.carry_out()
    kept = core_lab.of(CrlReloaded)[-1]
    assert kept.revoked == 2 and kept.problem is not None and "not a PEM or DER" in kept.problem
    assert core_lab.core.status()["crl"]["problem"] == kept.problem
    assert closed_reason(core_lab.connect("bob")) == AUTH_FAILED_REASON
    assert closed_reason(core_lab.connect("dave")) is None


def test_reload_without_a_crl_says_so(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    core_lab.core.reload_crl(core_lab.now)
    core_lab.carry_out()
    assert core_lab.of(CrlReloaded) == [CrlReloaded(revoked=None, problem=None)]


# -- sessions -------------------------------------------------------------------------------------


def test_a_session_is_created_and_joined(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    a, b = session(core_lab, "alice", paths=2)
    session_id = a.of(SessionEstablished)[0].session_id
    answers = core_lab.of(SessionAnswered)
    assert [(x.connection, x.session_id, x.error) for x in answers] == [
        (a.server, session_id, None),
        (b.server, session_id, None),
    ]
    assert core_lab.status_of("alice")["session_id"] == session_id.hex()
    tunnel_session = core_lab.core.session_of("alice")
    assert tunnel_session is not None and len(tunnel_session.connections) == 2
    assert core_lab.core.status()["sessions"] == 1


def test_joining_an_unknown_or_another_clients_session_is_refused(lab_certs: Path) -> None:
    """A Session ID of another client is as unknown as a made-up one: joining it would let
    carol send with alice's addresses."""
    core_lab = lab(lab_certs)
    (alice,) = session(core_lab, "alice")
    session(core_lab, "carol")  # carol has a session of her own
    alice_id = alice.of(SessionEstablished)[0].session_id
    for session_id, name in ((b"not-a-session-id", "alice"), (alice_id, "carol")):
        conn = core_lab.connect(name, "qt-session")
        conn.client.join_session(session_id)
        core_lab.run(0.2)
        assert conn.of(SessionJoinFailed) == [
            SessionJoinFailed(ControlErrorCode.UNKNOWN_SESSION_ID)
        ]
        assert core_lab.of(SessionAnswered)[-1].error is ControlErrorCode.UNKNOWN_SESSION_ID
    tunnel_session = core_lab.core.session_of("alice")
    assert tunnel_session is not None and len(tunnel_session.connections) == 1


def test_new_session_in_a_loop_leaves_one_session(lab_certs: Path) -> None:
    """A client's New Session replaces its old session, freed at once (it used to stay until
    its expiry, so a client restarting in a loop filled the table)."""
    core_lab = lab(lab_certs)
    conns: list[Conn] = []
    for _ in range(12):
        conns += session(core_lab, "alice")
    assert all(c.of(SessionEstablished) for c in conns)
    assert core_lab.core.status()["sessions"] == 1
    assert [closed_reason(c) for c in conns[:-1]] == [
        "replaced by a new session of the same client"
    ] * 11


def test_the_session_table_is_capped(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, "limits.max_sessions=1")
    session(core_lab, "alice")
    carol = core_lab.connect("carol", "qt-session")
    carol.client.request_new_session()
    core_lab.run(0.2)
    assert carol.of(SessionJoinFailed) == [SessionJoinFailed(ControlErrorCode.UNKNOWN_ERROR)]
    assert core_lab.core.status()["sessions"] == 1


@pytest.mark.parametrize("first_stream_mode", [False, True])
def test_join_with_other_stream_mode_is_conflicting_state(
    lab_certs: Path, first_stream_mode: bool
) -> None:
    """Session draft §6.1.3 CONFLICTING_STATE: a connection that negotiated stream mode
    differently from the session's cannot be merged with it (its TCP connections would travel
    one way on one access and another way on the other); the session goes on without it, and a
    connection like the members still joins."""
    core_lab = lab(lab_certs)
    first = core_lab.connect("alice", "qt-session", stream_mode=first_stream_mode)
    first.client.request_new_session()
    core_lab.run(0.2)
    (made,) = first.of(SessionEstablished)
    other = core_lab.connect("alice", "qt-session", stream_mode=not first_stream_mode)
    other.client.join_session(made.session_id)
    core_lab.run(0.2)
    assert other.of(SessionJoinFailed) == [SessionJoinFailed(ControlErrorCode.CONFLICTING_STATE)]
    (answer,) = [a for a in core_lab.of(SessionAnswered) if a.connection is other.server]
    assert "stream mode" in answer.reason
    same = core_lab.connect("alice", "qt-session", stream_mode=first_stream_mode)
    same.client.join_session(made.session_id)
    core_lab.run(0.2)
    assert same.of(SessionEstablished) == [made]


def test_session_qos_sets_dscp_of_forwarded_packets(lab_certs: Path) -> None:
    """Session draft §6.1.1: the New Session's QoS Flow Indication, mapped by the site's [[qos]]
    tables, marks what the concentrator forwards for that session (DSCP, ECN kept); a value no
    table names, or none, leaves packets as sent. The status shows both."""
    core_lab = lab(lab_certs, extra='[[qos]]\nvalue = "voice"\ndscp = "EF"\n')
    marked = core_lab.connect("alice", "qt-session")
    marked.client.request_new_session(qos=b"voice")
    plain = core_lab.connect("carol", "qt-session")
    plain.client.request_new_session(qos=b"bulk")
    core_lab.run(0.2)
    assert marked.of(SessionEstablished) and plain.of(SessionEstablished)
    sent = bytearray(icmp_echo(ALICE, SERVER, 1))
    sent[1] = 0x01  # ECN ECT(1), DSCP 0
    sent[10:12] = checksum16(bytes(sent[:10]) + b"\0\0" + bytes(sent[12:20])).to_bytes(2, "big")
    marked.client.send_packet(bytes(sent), packet_tag=0)
    marked.client.send_packet(icmp_echo(ALICE6, SERVER6, 2), packet_tag=1)
    plain.client.send_packet(icmp_echo("10.8.1.5", SERVER, 3), packet_tag=0)
    core_lab.run(0.1)
    v4, v6, unmarked = core_lab.tun
    assert v4[1] == (46 << 2) | 0x01 and checksum16(v4[:20]) == 0
    assert ((v6[0] & 0x0F) << 4 | v6[1] >> 4) == 46 << 2
    assert unmarked == icmp_echo("10.8.1.5", SERVER, 3)
    assert (core_lab.status_of("alice")["qos"], core_lab.status_of("alice")["dscp"]) == (
        "voice",
        46,
    )
    assert (core_lab.status_of("carol")["qos"], core_lab.status_of("carol")["dscp"]) == (
        "bulk",
        None,
    )


def test_an_empty_session_waits_for_a_rejoin_then_expires(lab_certs: Path) -> None:
    """Its last connection gone, the session is kept session_idle_expiry (1 s) for a rejoin;
    then it expires, the client is gone and its pool address is free again."""
    core_lab = lab(lab_certs, "limits.session_idle_expiry=1.0")
    (first,) = session(core_lab, "carol")
    session_id = first.of(SessionEstablished)[0].session_id
    first.client.send_packet(icmp_echo("10.8.1.5", SERVER, 1), packet_tag=0)
    core_lab.run(0.1)
    assert core_lab.status_of("carol")["addresses"] == ["10.8.1.5/32"]
    first.client.close("handover")
    core_lab.run(0.5)
    rejoined = core_lab.connect("carol", "qt-session")
    rejoined.client.join_session(session_id)
    core_lab.run(0.2)
    assert rejoined.of(SessionEstablished)
    rejoined.client.close("gone for good")
    core_lab.run_until(lambda: core_lab.core.connection_count == 0)  # its draining period
    core_lab.run(0.9)
    assert core_lab.core.status()["sessions"] == 1  # still waiting
    core_lab.run(0.2)
    status = core_lab.core.status()
    assert status["sessions"] == 0 and status["clients"] == []
    assert core_lab.core.get_timer() is None
    late = core_lab.connect("carol", "qt-session")
    late.client.join_session(session_id)
    core_lab.run(0.2)
    assert late.of(SessionJoinFailed) == [SessionJoinFailed(ControlErrorCode.UNKNOWN_SESSION_ID)]
    dave = core_lab.connect("dave")
    dave.client.send_packet(icmp_echo("10.8.1.5", SERVER, 2))  # carol's old address is free
    core_lab.run(0.1)
    assert core_lab.status_of("dave")["addresses"] == ["10.8.1.5/32"]


# -- access reports -------------------------------------------------------------------------------


def replies_per_connection(core_lab: CoreLab, conns: list[Conn], count: int = 3) -> list[int]:
    before = [echo_replies(c) for c in conns]
    for seq in range(count):
        core_lab.from_tun([reply_to_alice(seq)])
        core_lab.run(0.05)
    return [echo_replies(c) - b for c, b in zip(conns, before, strict=True)]


def test_access_reports_teach_which_access_each_connection_is_on(lab_certs: Path) -> None:
    """b reports WiFi unavailable: b must be on 5G and a on WiFi, so replies move to b at once;
    WiFi available again: back to a (failover, WiFi first)."""
    core_lab = lab(lab_certs)
    a, b = session(core_lab, "alice", paths=2)
    assert replies_per_connection(core_lab, [a, b]) == [3, 0]
    b.client.send_access_report(WIFI, AccessSignal.UNAVAILABLE)
    core_lab.run(0.1)
    assert core_lab.core.access_of(a.server) is WIFI
    assert core_lab.core.access_of(b.server) is CELL
    assert core_lab.status_of("alice")["accesses_available"] == {"wifi": False, "5g": True}
    assert replies_per_connection(core_lab, [a, b]) == [0, 3]
    b.client.send_access_report(WIFI, AccessSignal.AVAILABLE)
    core_lab.run(0.1)
    assert replies_per_connection(core_lab, [a, b]) == [3, 0]
    accesses = [c["access_id"] for c in core_lab.status_of("alice")["connections"]]
    assert accesses == ["wifi", "5g"]


def test_a_connection_announcing_an_access_replaces_the_older_one_on_it(lab_certs: Path) -> None:
    """A client that lost its WiFi connection (down and up) joins anew and announces WiFi: the
    old WiFi connection, which may never say it is dead, is closed; WiFi traffic goes to the
    new one."""
    core_lab = lab(lab_certs)
    a, b, c = session(core_lab, "alice", paths=3)
    for conn, access in ((a, WIFI), (b, CELL), (c, WIFI)):
        conn.client.send_access_report(access, AccessSignal.AVAILABLE)
        core_lab.run(0.1)
    assert [x.connection for x in core_lab.of(Closed)] == [a.server]
    core_lab.run(1.0)  # a reports the close at the end of its draining period
    assert closed_reason(a) == "replaced by a newer connection over the wifi access"
    assert replies_per_connection(core_lab, [b, c]) == [0, 3]


def test_an_access_report_flood_is_acted_on_within_the_budget(lab_certs: Path) -> None:
    """3,000 reports in about a second: 40 + 20/s are acted on, the rest ignored and counted
    (each used to write a log line and the status file)."""
    core_lab = lab(lab_certs)
    (conn,) = session(core_lab, "alice")
    for n in range(3000):
        signal = AccessSignal.AVAILABLE if n % 2 else AccessSignal.UNAVAILABLE
        conn.client.send_access_report(CELL, signal)
        if n % 100 == 99:
            core_lab.run(0.03)
    core_lab.run(0.5)
    counters = core_lab.core.status()["counters"]
    assert counters["access_reports_ignored"] >= 3000 - 40 - 20 * 2, counters
    assert core_lab.status_of("alice")["counters"]["access_reports_ignored"] > 2900
    assert closed_reason(conn) is None


def test_tunnel_mode_access_reports_stop_and_resume_the_downlink(lab_certs: Path) -> None:
    """Tunnel draft §Access Report, in tunnel mode too (issue 12): once every access the client
    reported is unavailable it has none left, and packets for it are held (bounded) until a
    report says an access is available again; then they are sent, in order."""
    core_lab = lab(lab_certs)
    conn = core_lab.connect("alice")
    conn.client.send_access_report(WIFI, AccessSignal.AVAILABLE)
    conn.client.send_access_report(CELL, AccessSignal.UNAVAILABLE)
    core_lab.run(0.1)
    core_lab.from_tun([reply_to_alice(1)])
    core_lab.run(0.1)
    assert echo_replies(conn) == 1  # WiFi is still available: not held
    conn.client.send_access_report(WIFI, AccessSignal.UNAVAILABLE)
    core_lab.run(0.1)
    assert core_lab.from_tun([reply_to_alice(n) for n in range(2, 5)]) == ()
    core_lab.run(0.2)
    status = core_lab.status_of("alice")
    assert echo_replies(conn) == 1 and status["holding"] and status["held_packets"] == 3
    conn.client.send_access_report(CELL, AccessSignal.AVAILABLE)  # it moved to 5G
    core_lab.run(0.1)
    assert [int.from_bytes(e.packet[26:28], "big") for e in conn.of(PacketReceived)][-3:] == [
        2,
        3,
        4,
    ]
    status = core_lab.status_of("alice")
    assert not status["holding"] and status["counters"]["released_after_hold"] == 3


def test_tunnel_mode_held_packets_are_dropped_after_the_hold(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, "limits.unavailable_hold=0.2", "limits.max_datagram_queue=2")
    conn = core_lab.connect("alice")
    conn.client.send_access_report(WIFI, AccessSignal.UNAVAILABLE)
    core_lab.run(0.1)
    core_lab.from_tun([reply_to_alice(n) for n in range(3)])  # the third beyond the bound
    core_lab.run(0.5)  # beyond the hold
    conn.client.send_access_report(WIFI, AccessSignal.AVAILABLE)
    core_lab.run(0.1)
    assert echo_replies(conn) == 0
    counters = core_lab.status_of("alice")["counters"]
    assert counters["held_unavailable"] == 2 and counters["dropped_unavailable"] == 3
    assert core_lab.status_of("alice")["held_packets"] == 0


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_a_stale_access_report_is_ignored(lab_certs: Path, alpn: str) -> None:
    """The TLV has no sequence number, but each report comes on a new stream: "unavailable"
    lost on the way and retransmitted after the "available" sent later arrives on a lower
    stream, and is ignored instead of switching the access off."""
    core_lab = lab(lab_certs)
    conn = session(core_lab)[0] if alpn == "qt-session" else core_lab.connect("alice")
    conn.client.send_access_report(WIFI, AccessSignal.AVAILABLE)
    core_lab.run(0.2)
    conn.cut()
    conn.client.send_access_report(WIFI, AccessSignal.UNAVAILABLE)  # lost for now
    core_lab.net.flush()
    conn.path.set_up(True)
    conn.client.send_access_report(WIFI, AccessSignal.AVAILABLE)  # overtakes it
    core_lab.run(1.0)  # the first one is retransmitted and arrives last
    counters = core_lab.core.status()["counters"]
    assert counters["access_reports_stale"] == 1
    status = core_lab.status_of("alice")
    if alpn == "qt":
        assert not status["holding"]
    else:
        assert status["accesses_available"]["wifi"] is True


def test_a_session_path_gone_silent_is_suspect_then_dead_and_its_packets_resent(
    lab_certs: Path,
) -> None:
    """The concentrator's own detector (session mode): a connection whose ACKs stop is
    suspect after a probe timeout — what was in flight on it goes out on the other one — then
    dead (not used), and PINGed with backoff until it answers."""
    core_lab = lab(lab_certs)
    wifi, cell = session(core_lab, paths=2)
    wifi.client.send_access_report(WIFI, AccessSignal.AVAILABLE)
    cell.client.send_access_report(CELL, AccessSignal.AVAILABLE)
    core_lab.run(0.3)
    wifi.cut()
    core_lab.from_tun([reply_to_alice(n) for n in range(4)])  # failover: on WiFi
    core_lab.run(0.15)
    (entry,) = [c for c in core_lab.status_of("alice")["connections"] if c["access_id"] == "wifi"]
    assert entry["health"] == "suspect" and entry["counters"]["reinjected"] == 4
    assert sorted(e.packet_tag for e in cell.of(PacketReceived)) == [0, 1, 2, 3]  # same tags
    core_lab.run(0.5)
    (entry,) = [c for c in core_lab.status_of("alice")["connections"] if c["access_id"] == "wifi"]
    assert entry["health"] == "dead" and entry["counters"]["died"] == 1
    core_lab.from_tun([reply_to_alice(9)])
    core_lab.run(0.1)
    assert cell.of(PacketReceived)[-1].packet_tag == 4  # a dead path is not used
    wifi.path.set_up(True)
    core_lab.run(1.5)  # its PINGs are answered
    (entry,) = [c for c in core_lab.status_of("alice")["connections"] if c["access_id"] == "wifi"]
    assert entry["health"] == "alive"


# -- forwarding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
@pytest.mark.parametrize(("src", "dst"), [(ALICE, SERVER), (ALICE6, SERVER6)])
def test_packets_are_forwarded_both_ways(lab_certs: Path, alpn: str, src: str, dst: str) -> None:
    core_lab = lab(lab_certs)
    conn = session(core_lab)[0] if alpn == "qt-session" else core_lab.connect("alice")
    request = icmp_echo(src, dst, 1)
    conn.client.send_packet(request, packet_tag=0 if alpn == "qt-session" else None)
    core_lab.run(0.1)
    assert core_lab.tun == [request]
    reply = icmp_echo(dst, src, 1)
    assert core_lab.from_tun([reply]) == (conn.server,)
    core_lab.run(0.1)
    assert [e.packet for e in conn.of(PacketReceived)] == [reply]
    counters = core_lab.status_of("alice")["counters"]
    assert counters["packets_from_client"] == counters["packets_to_client"] == 1


def test_packets_behind_a_tag_gap_are_delivered_at_the_reorder_deadline(lab_certs: Path) -> None:
    """Every packet behind a gap: the core's timer releases each after the gap timeout (the
    root test's gap flood raised AttributeError under uvloop before the deadline was kept by
    the program)."""
    core_lab = lab(lab_certs, "limits.reorder_timeout=0.05")
    (conn,) = session(core_lab)
    conn.client.send_packet(icmp_echo(ALICE, SERVER, 0), packet_tag=0)
    core_lab.run(0.05)
    assert len(core_lab.tun) == 1 and core_lab.core.get_timer() is None
    for seq in range(1, 20):
        conn.client.send_packet(icmp_echo(ALICE, SERVER, seq), packet_tag=2 * seq)
        core_lab.run(0.01)  # it arrived (5 ms) and waits behind its gap
        assert core_lab.core.get_timer() is not None
    core_lab.run(0.2)
    assert len(core_lab.tun) == 20
    assert core_lab.core.get_timer() is None
    status = core_lab.status_of("alice")
    assert status["reorder"]["gaps_skipped"] >= 1
    assert core_lab.core.status()["counters"]["internal_errors"] == 0


def test_a_spoofed_inner_source_is_dropped_and_counted(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    conn = core_lab.connect("alice")
    for seq in range(2):
        conn.client.send_packet(icmp_echo("10.8.0.99", SERVER, seq))
    core_lab.run(0.1)
    assert core_lab.tun == []
    assert core_lab.core.status()["counters"]["ingress_dropped"] == 2
    assert core_lab.status_of("alice")["ingress"]["spoofed_source"] == 2


def test_a_pool_client_claims_its_first_source_and_nothing_else(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    carol = core_lab.connect("carol")
    carol.client.send_packet(icmp_echo("10.8.1.5", SERVER, 1))
    core_lab.run(0.1)
    assert core_lab.status_of("carol")["addresses"] == ["10.8.1.5/32"]
    assert len(core_lab.tun) == 1
    # alice's static address is not carol's to claim, nor a second address of the family
    for src in (ALICE, "10.8.1.6"):
        carol.client.send_packet(icmp_echo(src, SERVER, 2))
    core_lab.run(0.1)
    assert len(core_lab.tun) == 1
    assert core_lab.status_of("carol")["counters"]["ingress_dropped"] == 2
    core_lab.from_tun([icmp_echo(SERVER, "10.8.1.5", 1)])  # routed back to carol
    core_lab.run(0.1)
    assert len(carol.of(PacketReceived)) == 1
    # nor is carol's address dave's
    dave = core_lab.connect("dave")
    dave.client.send_packet(icmp_echo("10.8.1.5", SERVER, 3))
    core_lab.run(0.1)
    assert core_lab.status_of("dave")["counters"]["pool_address_taken"] == 1
    assert core_lab.status_of("dave")["addresses"] == [] and len(core_lab.tun) == 1


@pytest.mark.parametrize("alpn", ["qt", "qt-session"])
def test_clients_reach_the_concentrator_host_only_as_the_policy_says(
    lab_certs: Path, alpn: str
) -> None:
    """to_concentrator "ping" (the default): a raw SYN to any of the host's addresses is
    dropped and counted (it reached services on them before), a ping passes, and so does the
    same SYN to a server behind the concentrator."""
    core_lab = lab(lab_certs)
    core_lab.core.host_addresses_changed(
        [IPv4Address("192.0.2.1"), IPv4Address("10.8.0.1"), IPv6Address("fd00:c0::1")]
    )
    conn = session(core_lab)[0] if alpn == "qt-session" else core_lab.connect("alice")
    tag = iter(range(100))

    def send(packet: bytes) -> None:
        conn.client.send_packet(packet, packet_tag=next(tag) if alpn == "qt-session" else None)
        core_lab.run(0.05)

    for src, dst in ((ALICE, "192.0.2.1"), (ALICE, "10.8.0.1"), (ALICE6, "fd00:c0::1")):
        send(tcp_syn(src, dst, 40000, 5999))
    assert core_lab.tun == []
    assert core_lab.core.status()["counters"]["to_concentrator_dropped"] == 3
    send(tcp_syn(ALICE, SERVER, 40000, 9))
    send(icmp_echo(ALICE, "10.8.0.1", 1))
    assert len(core_lab.tun) == 2


def test_the_tun_subnets_broadcast_network_and_anycast_are_the_hosts_too(
    lab_certs: Path,
) -> None:
    """Addresses reported bare get the TUN's prefix (10.8.0.1/24, fd00:8::1/64) from the
    configuration: a datagram to 10.8.0.255, 10.8.0.0 or fd00:8:: reaches the host's sockets
    as surely as one to 10.8.0.1 (the kernel delivers them locally), so it is dropped too."""
    core_lab = lab(lab_certs)
    core_lab.core.host_addresses_changed([IPv4Address("10.8.0.1"), IPv6Address("fd00:8::1")])
    conn = core_lab.connect("alice")
    for src, dst in ((ALICE, "10.8.0.255"), (ALICE, "10.8.0.0"), (ALICE6, "fd00:8::")):
        conn.client.send_packet(tcp_syn(src, dst, 40000, 5999))
    core_lab.run(0.1)
    assert core_lab.tun == []
    assert core_lab.status_of("alice")["counters"]["to_concentrator_dropped"] == 3


def test_deny_keeps_even_pings_and_multicast_off_the_host(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, 'to_concentrator="deny"')
    core_lab.core.host_addresses_changed([IPv4Address("10.8.0.1")])
    conn = core_lab.connect("alice")
    for dst in ("10.8.0.1", "224.0.0.251", "255.255.255.255"):
        conn.client.send_packet(icmp_echo(ALICE, dst, 1))
    core_lab.run(0.1)
    assert core_lab.tun == []
    assert core_lab.status_of("alice")["counters"]["to_concentrator_dropped"] == 3


def test_link_scoped_ipv6_stays_on_the_tunnel_link(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    conn = core_lab.connect("alice")
    conn.client.send_packet(icmp_echo("fe80::2", "fe80::1", 1))
    core_lab.run(0.1)
    core_lab.from_tun([icmp_echo("fe80::1", "ff02::2", 1), icmp_echo(SERVER, "10.99.0.1", 1)])
    assert core_lab.tun == []
    assert core_lab.status_of("alice")["counters"]["dropped_link_scope"] == 1
    counters = core_lab.core.status()["counters"]
    assert counters["dropped_link_scope"] == 1 and counters["dropped_no_route"] == 1


def test_packets_for_an_absent_client_are_dropped_and_counted(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    assert core_lab.from_tun([icmp_echo(SERVER, ALICE, 1)]) == ()
    assert core_lab.core.status()["counters"]["dropped_client_offline"] == 1


def test_the_rate_limit_drops_beyond_the_clients_share(lab_certs: Path) -> None:
    """0.1 Mbit/s: of 40 packets of 1028 bytes sent at once, only the bucket's depth passes."""
    core_lab = lab(lab_certs, "limits.rate_limit_mbps=0.1")
    conn = core_lab.connect("alice")
    burst = [icmp_echo(SERVER, ALICE, seq, size=1000) for seq in range(40)]
    core_lab.from_tun(burst)
    for seq in range(40):
        conn.client.send_packet(icmp_echo(ALICE, SERVER, seq, size=1000))
    core_lab.run(0.1)
    counters = core_lab.status_of("alice")["counters"]
    assert counters["rate_limited_out"] >= 25 and 1 <= counters["packets_to_client"] <= 15
    assert counters["rate_limited_in"] >= 25 and 1 <= counters["packets_from_client"] <= 15


@pytest.mark.parametrize(("src", "dst"), [(SERVER, ALICE), (SERVER6, ALICE6)])
def test_a_packet_too_big_for_the_tunnel_gets_frag_needed_or_packet_too_big(
    lab_certs: Path, src: str, dst: str
) -> None:
    core_lab = lab(lab_certs)
    conn = core_lab.connect("alice")
    budget = conn.server.max_packet_size()
    big = bytearray(icmp_echo(src, dst, 1, size=budget))  # headers on top: too big
    if ":" not in dst:
        big[6] |= 0x40  # Don't Fragment: a router answers only then (RFC 1191)
    core_lab.from_tun([bytes(big)])
    (error,) = core_lab.tun
    if ":" in dst:  # ICMPv6 Packet Too Big (type 2) with the MTU, from the destination
        assert error[40] == 2 and int.from_bytes(error[44:48], "big") == budget
        assert error[8:24] == IPv6Address(dst).packed
    else:  # ICMP Destination Unreachable, Fragmentation Needed (3/4)
        assert (error[20], error[21]) == (3, 4) and int.from_bytes(error[26:28], "big") == budget
    assert core_lab.core.status()["counters"]["packet_too_big_sent"] == 1
    core_lab.tun_accepts = False
    core_lab.from_tun([bytes(big)])
    assert core_lab.status_of("alice")["counters"]["dropped_too_big"] == 1


def test_a_session_client_gets_packet_too_big_between_its_budget_and_the_tun_mtu(
    lab_certs: Path,
) -> None:
    """The concentrator's TUN takes tunnel mode's 1422-byte packets (auto_tun_mtu: the largest
    budget served), so a packet of 1419-1422 bytes for a session client, whose datagrams carry
    4 bytes of session header, is the agent's to refuse: Packet Too Big with the session's
    budget, as a router would."""
    core_lab = lab(lab_certs)
    (conn,) = session(core_lab)
    budget = conn.server.max_packet_size()
    assert budget == 1418
    big = bytearray(icmp_echo(SERVER, ALICE, 1, size=budget + 4 - 28))  # 1422 bytes in all
    big[6] |= 0x40  # Don't Fragment
    assert len(big) == 1422
    core_lab.from_tun([bytes(big)])
    (error,) = core_lab.tun
    assert (error[20], error[21]) == (3, 4) and int.from_bytes(error[26:28], "big") == budget
    assert core_lab.status_of("alice")["counters"]["packet_too_big_sent"] == 1


def test_a_packet_the_tun_refuses_is_counted(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    core_lab.tun_accepts = False
    conn = core_lab.connect("alice")
    conn.client.send_packet(icmp_echo(ALICE, SERVER, 1))
    core_lab.run(0.1)
    counters = core_lab.status_of("alice")["counters"]
    assert counters["tun_write_dropped"] == 1 and "packets_from_client" not in counters


def test_one_bad_packet_from_the_tun_costs_that_packet_only(
    lab_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core_lab = lab(lab_certs)
    conn = core_lab.connect("alice")
    owner_of = core_lab.core.addresses.owner_of_packet

    def flaky(packet: bytes) -> str | None:
        if packet[-1:] == b"!":
            raise ValueError("a bug")
        return owner_of(packet)

    monkeypatch.setattr(core_lab.core.addresses, "owner_of_packet", flaky)
    good = [icmp_echo(SERVER, ALICE, seq) for seq in range(3)]
    core_lab.from_tun([good[0], good[1] + b"!", good[2]])
    core_lab.run(0.1)
    assert len(conn.of(PacketReceived)) == 2
    assert core_lab.core.status()["counters"]["internal_errors"] == 1


def test_a_bug_in_one_clients_reorder_buffer_ends_that_client_only(
    lab_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core's timer serves every client: a bug met for one (here its reorder buffer's
    release) closes that client's connections, counted, and the timer goes on for the rest
    (before, the exception left the timer and stopped the whole concentrator)."""
    core_lab = lab(lab_certs, "limits.reorder_timeout=0.05")
    (alice,) = session(core_lab)
    carol = core_lab.connect("carol")

    def broken(self: object, now: float) -> list[bytes]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(_SessionMode, "poll", broken)
    alice.client.send_packet(icmp_echo(ALICE, SERVER, 0), packet_tag=0)
    alice.client.send_packet(icmp_echo(ALICE, SERVER, 2), packet_tag=2)  # behind a gap
    core_lab.run(0.2)
    assert [(a.connection, a.reason) for a in core_lab.of(Closed)] == [
        (alice.server, INTERNAL_ERROR_REASON)
    ]
    assert core_lab.core.status()["counters"]["internal_errors"] == 1
    carol.client.send_packet(icmp_echo("10.8.1.5", SERVER, 1))
    core_lab.run(0.1)
    assert core_lab.tun[-1] == icmp_echo("10.8.1.5", SERVER, 1)


def test_a_bug_in_one_connections_health_check_closes_that_connection_only(
    lab_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core_lab = lab(lab_certs)
    wifi, cell = session(core_lab, paths=2)

    def broken(self: PathMonitor, state: AckState, now: float) -> PathHealth | None:
        raise RuntimeError("a bug")

    wifi.client.send_access_report(WIFI, AccessSignal.AVAILABLE)
    cell.client.send_access_report(CELL, AccessSignal.AVAILABLE)
    core_lab.run(0.3)
    monkeypatch.setattr(PathMonitor, "evaluate", broken)
    wifi.cut()  # its packets go unanswered: its health is checked
    core_lab.from_tun([reply_to_alice(n) for n in range(4)])  # failover: on WiFi
    core_lab.run(0.3)
    assert [(a.connection, a.reason) for a in core_lab.of(Closed)] == [
        (wifi.server, INTERNAL_ERROR_REASON)
    ]
    assert core_lab.core.status()["counters"]["internal_errors"] == 1
    monkeypatch.undo()
    core_lab.from_tun([reply_to_alice(9)])
    core_lab.run(0.1)
    assert cell.of(PacketReceived)[-1].packet == reply_to_alice(9)


# -- stream mode and the status ------------------------------------------------------------------


def test_stream_mode_events_go_to_the_stream_server_once_authenticated(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    conn = core_lab.connect("alice", stream_mode=True)
    assert conn.client.stream_mode and conn.server.stream_mode
    conn.client.open_tcp_stream(IPv4Address(SERVER), 80)
    core_lab.run(0.1)
    ((server, event),) = core_lab.stream_events
    assert server is conn.server and isinstance(event, TcpConnectRequested)
    assert event.port == 80


def test_status_changes_are_announced_once_per_batch(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    core_lab.connect("alice")
    core_lab.connect("carol")
    assert core_lab.of(StatusChanged)  # each admission asked for a status write
    core = core_lab.core
    core.shutdown(core_lab.now)
    # two closes, two detaches: one StatusChanged waiting, not four
    pending = []
    while (action := core.next_action()) is not None:
        pending.append(action)
    assert sum(isinstance(a, StatusChanged) for a in pending) == 1
    status = core.status()
    assert set(status) == {
        "clients", "sessions", "connections", "refused", "counters", "crl", "inbound", "tickets"
    }  # fmt: skip
    assert status["crl"] is None  # no tls.crl


def test_a_session_mode_connection_without_new_or_join_session_is_closed_with_the_reason(
    lab_certs: Path,
) -> None:
    """Session draft §4.1: the client initiates the session. A session-mode connection that
    never sent New Session or Join Session had every datagram dropped (no session to put it in)
    and stayed open for good; it is closed after SESSION_SETUP_TIMEOUT, saying why."""
    core_lab = lab(lab_certs)
    silent = core_lab.connect("alice", "qt-session")
    streams = core_lab.connect("dave", "qt-session", stream_mode=True)  # needs no session
    (joined,) = session(core_lab, "carol")
    core_lab.run(SESSION_SETUP_TIMEOUT - 2.0)
    assert core_lab.of(Closed) == []
    core_lab.run(3.0)
    assert [(a.connection, a.reason) for a in core_lab.of(Closed)] == [
        (
            silent.server,
            "no New Session or Join Session within 10 s: session mode carries packets only "
            "in a session (session draft §4.1)",
        )
    ]
    assert not joined.server.closed and not streams.server.closed
