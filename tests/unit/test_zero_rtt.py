"""0-RTT resumption (issue 15 item 6, README "0-RTT"): session tickets on both ends, a resumed
connection attributed to the client its ticket was issued to (the CRL still applies), what may
travel in 0-RTT (a Join Session only, answered at once; nothing acted on before the handshake
completes), and the fall back to a full handshake. On the in-memory network and fake clock
(concentrator_harness, client_world); behaviour only, never timing."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted
from aioquic.tls import CipherSuite, SessionTicket

from testbed.hostile import client_configuration
from tests.certs import copy_ca, make_certs
from tests.unit.client_world import LINK_UP, CoreConcentrator, World, client_config
from tests.unit.concentrator_harness import Conn, CoreLab, concentrator_config, lab
from tunnel.agents.client import SESSION_TIMEOUT, PathState
from tunnel.agents.concentrator import AUTH_FAILED_REASON, Refused
from tunnel.policy.client_auth import ClientAuthError, ClientVerifier
from tunnel.policy.tickets import ClientTickets, TicketIdentity, TicketStore
from tunnel.protocol.connection import (
    ConnectionClosed,
    SessionEstablished,
    SessionJoinFailed,
    TunnelUsageError,
)
from tunnel.wire.errors import ControlErrorCode
from tunnel.wire.messages import NewSession

ON = "limits.zero_rtt=true"


def closed_reason(conn: Conn) -> str | None:
    closes = conn.of(ConnectionClosed)
    return closes[0].reason if closes else None


def ticket_config(certs: Path, ticket: SessionTicket, name: str | None = None) -> QuicConfiguration:
    """A session-mode client configuration presenting `ticket`, and `name`'s certificate (None:
    none at all: only the ticket can authenticate it)."""
    cert = None if name is None else certs / f"{name}.pem"
    key = None if name is None else certs / f"{name}.key"
    config = client_configuration(certs / "ca.pem", ["qt-session"], cert, key)
    return dataclasses.replace(config, session_ticket=ticket)


def first_session(
    core_lab: CoreLab, name: str = "alice"
) -> tuple[Conn, bytes, list[SessionTicket]]:
    """`name`'s first connection (full handshake, New Session) and the tickets it received."""
    tickets: list[SessionTicket] = []
    conn = core_lab.connect(name, "qt-session", ticket_handler=tickets.append)
    conn.client.request_new_session()
    core_lab.run(0.5)
    (established,) = conn.of(SessionEstablished)
    return conn, established.session_id, tickets


def server_handshake(conn: Conn) -> HandshakeCompleted:
    (done,) = [e for e in conn.path.server.quic_events if isinstance(e, HandshakeCompleted)]
    return done


# -- the concentrator: tickets, attribution, revocation -------------------------------------------


def test_tickets_are_issued_and_a_resumed_connection_is_its_clients(lab_certs: Path) -> None:
    """A ticket resumes a connection that presents no certificate at all: it is attributed to
    the client that authenticated when the ticket was issued, and joins that client's session
    with its Join Session sent in 0-RTT and answered at once."""
    core_lab = lab(lab_certs, ON)
    _, session_id, tickets = first_session(core_lab)
    assert len(tickets) == 1 and len(core_lab.core.tickets or ()) == 1
    resumed = core_lab.connect(
        None,
        client_config=ticket_config(lab_certs, tickets[0]),
        ticket_handler=tickets.append,
        early_join=session_id,
    )
    done = server_handshake(resumed)
    assert done.session_resumed and done.early_data_accepted
    assert closed_reason(resumed) is None
    assert core_lab.core.client_name(resumed.server) == "alice"
    assert resumed.of(SessionEstablished) == [SessionEstablished(session_id)]
    assert core_lab.core.counters["connections_resumed"] == 1
    assert core_lab.core.counters["joins_answered_early"] == 1
    assert len(core_lab.status_of("alice")["connections"]) == 2
    assert len(tickets) == 2  # a new ticket on the resumed connection too
    status = core_lab.core.status()["tickets"]
    assert status["issued"] == 2 and status["resumed"] == 1 and status["held"] == 1


def test_a_ticket_is_used_once(lab_certs: Path) -> None:
    """Single-use (RFC 8446 §8.1): the same ticket again finds nothing, the full handshake that
    follows needs a certificate, and this client has none."""
    core_lab = lab(lab_certs, ON)
    _, _, tickets = first_session(core_lab)
    config = ticket_config(lab_certs, tickets[0])
    assert closed_reason(core_lab.connect(None, client_config=config)) is None
    again = core_lab.connect(None, client_config=config)
    assert closed_reason(again) == AUTH_FAILED_REASON
    assert "sent no certificate" in core_lab.of(Refused)[-1].reason


def test_a_ticket_resumes_as_its_own_client_whatever_certificate_is_configured(
    lab_certs: Path,
) -> None:
    """The ticket, not a certificate, names a resumed connection: a client configured with
    carol's certificate that presents alice's ticket is alice (it holds alice's resumption
    secret); no certificate is asked for on a resumption (RFC 8446 §4.3.2)."""
    core_lab = lab(lab_certs, ON)
    _, _, tickets = first_session(core_lab)
    resumed = core_lab.connect(None, client_config=ticket_config(lab_certs, tickets[0], "carol"))
    assert core_lab.core.client_name(resumed.server) == "alice"


def test_a_client_revoked_since_cannot_resume(lab_certs: Path, tmp_path: Path) -> None:
    ca = copy_ca(lab_certs, tmp_path / "ca")
    make_certs(ca, "--revoke", "bob")  # a CRL from the start
    core_lab = CoreLab(concentrator_config(ca, ON, f'tls.crl="{ca}/crl.pem"'), ca)
    _, _, tickets = first_session(core_lab, "carol")
    make_certs(ca, "--revoke", "carol")
    resumed = core_lab.connect(None, client_config=ticket_config(ca, tickets[0]))
    assert server_handshake(resumed).session_resumed
    assert closed_reason(resumed) == AUTH_FAILED_REASON
    refusal = core_lab.of(Refused)[-1]
    assert "carol" in refusal.reason and "is revoked" in refusal.reason
    assert core_lab.core.counters["joins_answered_early"] == 0
    assert len(core_lab.core.tickets or ()) == 0  # carol's tickets went with her


def test_a_ticket_outliving_its_certificate_is_refused(lab_certs: Path) -> None:
    verifier = ClientVerifier((lab_certs / "ca.pem").read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    assert verifier.verify_resumed("alice", 7, now + datetime.timedelta(days=1), now) == "alice"
    with pytest.raises(ClientAuthError, match="has expired"):
        verifier.verify_resumed("alice", 7, now - datetime.timedelta(seconds=1), now)


def test_without_zero_rtt_no_ticket_is_issued(lab_certs: Path) -> None:
    core_lab = lab(lab_certs)
    assert core_lab.core.tickets is None and core_lab.core.status()["tickets"] is None
    _, _, tickets = first_session(core_lab)
    assert tickets == []


# -- what 0-RTT may carry -------------------------------------------------------------------------


def test_an_early_join_whose_handshake_never_completes_changes_nothing(lab_certs: Path) -> None:
    """A replayed ClientHello + 0-RTT Join (or a client gone after its first flight) gets its
    answer but is never part of the session: nothing is acted on before the handshake."""
    core_lab = lab(lab_certs, ON)
    _, session_id, tickets = first_session(core_lab)
    config = ticket_config(lab_certs, tickets[0])
    replay = core_lab.connect(None, client_config=config, early_join=session_id, settle=0.0)
    core_lab.net.run(0.006)  # the first flight reached the concentrator...
    replay.path.up_link.up = False  # ...and nothing more ever will (no client Finished)
    core_lab.run(0.5)
    assert core_lab.core.counters["joins_answered_early"] == 1
    assert core_lab.core.client_name(replay.server) is None
    assert len(core_lab.status_of("alice")["connections"]) == 1
    session = core_lab.core.session_of("alice")
    assert session is not None and replay.server not in session.connections


def test_a_new_session_in_early_data_waits_for_the_handshake(lab_certs: Path) -> None:
    """New Session is not replay-safe (it creates sessions and replaces the client's): one that
    came in 0-RTT is held, acted on after authentication, never answered early."""
    core_lab = lab(lab_certs, ON)
    first, old_id, tickets = first_session(core_lab)
    config = ticket_config(lab_certs, tickets[0])
    conn = core_lab.connect(None, client_config=config, settle=0.0)
    # what another implementation might send in 0-RTT: New Session on the control stream
    conn.client._send_client_control(NewSession(b"").encode(), early=True)
    core_lab.run(0.5)
    (established,) = conn.of(SessionEstablished)
    session = core_lab.core.session_of("alice")
    assert session is not None and session.session_id == established.session_id != old_id
    assert session.connections == [conn.server]
    assert core_lab.core.counters["joins_answered_early"] == 0
    assert closed_reason(first) is not None  # replaced by the new session, as without 0-RTT


def test_an_early_join_of_a_session_not_its_own_is_refused_after_the_handshake(
    lab_certs: Path,
) -> None:
    core_lab = lab(lab_certs, ON)
    _, _, tickets = first_session(core_lab)
    _, carols_id, _ = first_session(core_lab, "carol")
    config = ticket_config(lab_certs, tickets[0])
    conn = core_lab.connect(None, client_config=config, early_join=carols_id)
    assert conn.of(SessionJoinFailed) == [SessionJoinFailed(ControlErrorCode.UNKNOWN_SESSION_ID)]
    assert core_lab.core.counters["joins_answered_early"] == 0


def test_an_early_answered_join_that_fails_at_handshake_end_closes_the_connection(
    lab_certs: Path,
) -> None:
    """The early answer cannot be taken back on the control stream: a join found impossible
    once the handshake completed (here CONFLICTING_STATE, session draft §6.1.3: stream mode
    negotiated unlike the session's) closes the connection, saying why."""
    core_lab = lab(lab_certs, ON)
    _, session_id, tickets = first_session(core_lab)
    config = ticket_config(lab_certs, tickets[0])
    conn = core_lab.connect(None, client_config=config, early_join=session_id, stream_mode=True)
    assert core_lab.core.counters["joins_answered_early"] == 1
    reason = closed_reason(conn)
    assert reason is not None and "after it was confirmed" in reason and "stream mode" in reason
    session = core_lab.core.session_of("alice")
    assert session is not None and conn.server not in session.connections


def test_early_join_needs_a_session_only_connection(lab_certs: Path) -> None:
    config = client_configuration(lab_certs / "ca.pem", ["qt", "qt-session"])
    core_lab = lab(lab_certs, ON)
    with pytest.raises(TunnelUsageError, match="only qt-session"):
        core_lab.connect(None, client_config=config, early_join=b"x", settle=0.0)


# -- falling back to a full handshake -------------------------------------------------------------


def test_a_ticket_the_concentrator_does_not_know_falls_back_to_a_full_handshake(
    lab_certs: Path,
) -> None:
    """A restarted concentrator knows no ticket: a full handshake with the certificate, the
    0-RTT rejected, the Join Session re-sent by QUIC in 1-RTT and answered after
    authentication (here: that session is gone with the restart)."""
    first_lab = lab(lab_certs, ON)
    _, session_id, tickets = first_session(first_lab)
    restarted = lab(lab_certs, ON)
    conn = restarted.connect(
        None,
        client_config=ticket_config(lab_certs, tickets[0], "alice"),
        early_join=session_id,
        settle=2.0,
    )
    done = server_handshake(conn)
    assert not done.session_resumed and not done.early_data_accepted
    assert restarted.core.client_name(conn.server) == "alice"
    assert conn.of(SessionJoinFailed) == [SessionJoinFailed(ControlErrorCode.UNKNOWN_SESSION_ID)]
    assert restarted.core.counters["connections_resumed"] == 0


def test_an_expired_ticket_falls_back_to_a_full_handshake(lab_certs: Path) -> None:
    core_lab = lab(lab_certs, ON)
    _, session_id, tickets = first_session(core_lab)
    assert core_lab.core.tickets is not None
    core_lab.core.tickets.lifetime = datetime.timedelta(0)  # every ticket is too old now
    conn = core_lab.connect(
        None,
        client_config=ticket_config(lab_certs, tickets[0], "alice"),
        early_join=session_id,
        settle=2.0,
    )
    assert not server_handshake(conn).session_resumed
    assert core_lab.core.tickets.counters["expired"] == 1
    assert conn.of(SessionEstablished) == [SessionEstablished(session_id)]  # joined, in 1-RTT


# -- the stores -----------------------------------------------------------------------------------


class Wall:
    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def fake_ticket(label: bytes, wall: Wall) -> SessionTicket:
    return SessionTicket(
        age_add=0,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=wall.now + datetime.timedelta(days=1),
        not_valid_before=wall.now,
        resumption_secret=b"s",
        server_name="concentrator",
        ticket=label,
    )


def test_the_store_is_bounded_single_use_and_needs_an_authenticated_owner() -> None:
    wall = Wall()
    store = TicketStore(3, lifetime=60, utc_now=wall)
    alice = TicketIdentity("alice", 1, wall.now + datetime.timedelta(days=30))
    for label in (b"a", b"b", b"c", b"d"):
        store.issued(fake_ticket(label, wall))
    assert len(store) == 3 and store.counters["evicted"] == 1  # b"a", the oldest, went
    assert store.take(b"b") is None  # not bound to an authenticated client: unusable
    store.bind([b"c"], alice)
    found = store.take(b"c")
    assert found is not None and found[1] == alice
    assert store.take(b"c") is None  # used once
    store.bind([b"d"], alice)
    wall.now += datetime.timedelta(seconds=61)
    assert store.take(b"d") is None and store.counters["expired"] == 1


def test_tickets_of_unauthenticated_handshakes_never_push_out_usable_ones() -> None:
    wall = Wall()
    store = TicketStore(2, lifetime=60, utc_now=wall)
    alice = TicketIdentity("alice", 1, wall.now + datetime.timedelta(days=30))
    for label in (b"a", b"b"):
        store.issued(fake_ticket(label, wall))
        store.bind([label], alice)
    for label in (b"x", b"y", b"z"):  # strangers' handshakes: issued, never bound
        store.issued(fake_ticket(label, wall))
    assert store.take(b"a") is not None and store.take(b"b") is not None
    assert len(store) == 2  # y, z: at most max_tickets unbound


def test_the_client_keeps_the_newest_tickets_and_presents_each_once() -> None:
    wall = Wall()
    tickets = ClientTickets(2, lifetime=60, utc_now=wall)
    for label in (b"a", b"b", b"c"):
        tickets.add(fake_ticket(label, wall))
    first = tickets.take()
    assert first is not None and first.ticket == b"c"
    wall.now += datetime.timedelta(seconds=61)
    assert tickets.take() is None and len(tickets) == 0


# -- the client agent -----------------------------------------------------------------------------


def session_world(certs: Path, *settings: str) -> tuple[World, CoreConcentrator]:
    """alice in session mode over wifi only (5g's link down), with the real concentrator."""
    config = client_config("session", ("wifi", "5g"), "limits.probe_interval=0.2", *settings)
    core = CoreConcentrator(concentrator_config(certs, *settings), now=1000.0)
    alice = client_configuration(
        certs / "ca.pem", ["qt-session"], certs / "alice.pem", certs / "alice.key"
    )
    world = World(config, concentrator=core, client_quic_config=alice)
    world.set_link("5g", False)
    world.start()
    world.run(1.0)
    return world, core


def test_a_new_access_joins_the_session_in_0rtt(lab_certs: Path) -> None:
    world, core = session_world(lab_certs, ON)
    assert world.agent.tickets is not None and len(world.agent.tickets) == 1
    world.set_link("5g", True)
    world.run(1.0)
    five_g = world.up_path("5g")
    assert five_g.early_join and five_g.state is PathState.UP
    assert world.agent.counters["joins_in_0rtt"] == 1
    assert core.core.counters["connections_resumed"] == 1
    assert core.core.counters["joins_answered_early"] == 1
    assert len(core.client_status()["connections"]) == 2


def test_without_zero_rtt_the_new_access_joins_after_its_handshake(lab_certs: Path) -> None:
    world, core = session_world(lab_certs)
    assert world.agent.tickets is None
    world.set_link("5g", True)
    world.run(1.0)
    assert not world.up_path("5g").early_join
    assert core.core.counters["connections_resumed"] == 0


def test_after_a_concentrator_restart_the_client_falls_back_to_a_full_handshake(
    lab_certs: Path,
) -> None:
    world, _ = session_world(lab_certs, ON)
    restarted = CoreConcentrator(concentrator_config(lab_certs, ON), now=world.now)
    world.restart_concentrator(restarted)  # killed: its tickets are gone with it
    world.run(
        10.0,
        until=lambda: (
            restarted.core.session_of("alice") is not None
            and world.agent.path_on("wifi") is not None
        ),
    )
    assert restarted.core.session_of("alice") is not None
    assert world.agent.path_on("wifi") is not None
    assert restarted.core.counters["connections_resumed"] == 0
    assert restarted.core.counters["connections_accepted"] >= 1
    assert restarted.core.tickets is not None
    assert restarted.core.tickets.counters["unknown"] >= 1  # the old ticket was presented


def test_a_tunnel_mode_reconnect_resumes_and_sends_nothing_early(lab_certs: Path) -> None:
    """Tunnel mode: the reconnect after a silent access presents the ticket (no certificate
    check), but nothing travels in 0-RTT: its packets wait for the handshake."""
    config = client_config("tunnel", ("wifi",), "limits.probe_interval=0.2", ON)
    core = CoreConcentrator(concentrator_config(lab_certs, ON), now=1000.0)
    alice = client_configuration(
        lab_certs / "ca.pem", ["qt"], lab_certs / "alice.pem", lab_certs / "alice.key"
    )
    world = World(config, concentrator=core, client_quic_config=alice).start()
    world.run(1.0)
    first = world.up_path("wifi")
    world.blackhole("wifi", True)  # nothing answers: given up after 10 probe intervals
    world.run(5.0, until=lambda: world.agent.path_on("wifi") is not first)
    world.blackhole("wifi", False)
    world.run(5.0, until=lambda: world.agent.path_on("wifi") not in (None, first))
    world.run(0.5)  # the concentrator's end completes half a round trip after the client's
    again = world.up_path("wifi")
    assert again is not first and again.session_ticket is not None and not again.early_join
    assert core.core.counters["connections_resumed"] == 1
    assert core.core.counters["joins_answered_early"] == 0


def test_an_attempt_the_concentrator_never_answered_keeps_the_other_tickets(
    lab_certs: Path,
) -> None:
    """5G's link comes up but nothing gets through: its attempt presents a ticket and times
    out. The concentrator never saw it, so the other tickets are as good as before; each such
    attempt used to wipe them all, and the next connection lost its 0-RTT join."""
    world, _ = session_world(lab_certs, ON)
    tickets = world.agent.tickets
    assert tickets is not None and len(tickets) == 1
    wall = Wall()
    wall.now = datetime.datetime.now(datetime.UTC)  # the client's tickets go by the real clock
    tickets.add(fake_ticket(b"another", wall))  # the newest: 5G's attempt presents it
    world.accesses["5g"].cut(False, flush=True)
    world.blackhole("5g", True)
    world.agent.link_changed("5g", LINK_UP, world.now)
    world.run(0.05)
    (first,) = [p for p in world.agent.paths() if p.name == "5g"]
    assert first.session_ticket is not None
    world.run(15.0, until=lambda: first.state is PathState.CLOSED)
    assert first.state is PathState.CLOSED and not first.heard
    assert len(tickets) == 1


def test_an_early_join_on_a_dead_access_holds_the_join_slot_no_longer_than_a_join(
    lab_certs: Path,
) -> None:
    """5G's link comes up but nothing gets through: its connection sends its Join in 0-RTT
    and holds the one join slot. The concentrator then closes WiFi's connection, whose
    rejoin waits for that slot: the early join's deadline was its handshake's (10 s), so the
    rejoin took 9.7 s; it is a join's (SESSION_TIMEOUT) now."""
    world, _ = session_world(lab_certs, ON)
    wifi = world.up_path("wifi")
    world.accesses["5g"].cut(False, flush=True)
    world.blackhole("5g", True)
    world.agent.link_changed("5g", LINK_UP, world.now)
    world.run(0.3)
    (early,) = [p for p in world.agent.paths() if p.name == "5g"]
    assert early.early_join and early.state is PathState.JOINING
    world.concentrator_closes(wifi)
    closed = world.now
    world.run(1.0, until=lambda: wifi.state is PathState.CLOSED)
    world.run(
        20.0,
        until=lambda: any(
            p.name == "wifi" and p.state is PathState.UP for p in world.agent.paths()
        ),
    )
    assert world.agent.path_on("wifi") is not None
    assert world.now - closed <= SESSION_TIMEOUT + 0.5
