"""Tunnel mode's connecting, migration, failback and standby, from a review (README "Running the
tunnel", the client): each test reproduces one finding in memory on the fake clock
(tests/unit/client_world.py) and failed before its fix. Behaviour only: which access, migrated
or not, delivered or not, within a bounded simulated time."""

from __future__ import annotations

from pathlib import Path as FilePath

import pytest

from tests.unit.client_world import World, client_config
from tests.unit.test_client_agent import PROBE, WIFI, access_status, delivered
from tests.unit.test_multipath_engine import Traffic, core_world
from tests.unit.tunnel_pairs import ip4
from tunnel.agents.access_health import LivenessProbe
from tunnel.agents.client import (
    BACKOFF_START,
    CONNECT_TIMEOUT,
    ClientState,
    ClosePath,
    Migrate,
    OpenPath,
    Path,
    PathState,
    ProbeAccess,
)
from tunnel.agents.failback import FIRST_HOLD
from tunnel.protocol.quic_ext import TunnelQuicConnection
from tunnel.session.path_health import PathHealth
from tunnel.wire.messages import AccessSignal

UP, DOWN = AccessSignal.AVAILABLE, AccessSignal.UNAVAILABLE


def tunnel_world(*settings: str) -> World:
    world = World(client_config("tunnel", ("wifi", "5g"), PROBE, *settings)).start()
    world.run(1.0)
    assert world.agent.state is ClientState.UP
    return world


# -- 1: a connection attempt moves on from an access that fails it ------------------------------


def test_an_attempt_that_gets_nothing_through_is_followed_by_one_on_the_next_access() -> None:
    """WiFi's link is up but nothing gets through, 5G works: the failed handshake counts against
    WiFi, the next attempt goes to 5G (before: every attempt on WiFi, for ever). WiFi is then
    probed from the connection, and once it answers the connection fails back to it."""
    world = World(client_config("tunnel", ("wifi", "5g"), PROBE))
    world.blackhole("wifi", True)
    world.start()
    world.run(CONNECT_TIMEOUT + 2.0, until=lambda: world.agent.state is ClientState.UP)
    first, second = [o.path for o in world.of(OpenPath)]
    assert first.state is PathState.CLOSED and world.conn(first).access.name == "wifi"
    assert world.agent.path_on("5g") is second
    assert delivered(world, 3) == ["5g"]
    world.blackhole("wifi", False)
    world.run(2.0, until=lambda: world.agent.path_on("wifi") is not None)
    assert world.agent.path_on("wifi") is second  # the same connection, migrated
    assert [m.target.name for m in world.of(Migrate)] == ["wifi"]
    assert len(world.of(OpenPath)) == 2


def test_a_link_down_during_the_handshake_tries_the_next_access_at_once() -> None:
    """WiFi's link goes down while its handshake is under way: that attempt is closed and one
    on 5G starts at the same instant (before: at CONNECT_TIMEOUT), without growing the backoff
    (a later loss reconnects after BACKOFF_START)."""
    world = World(client_config("tunnel", ("wifi", "5g"), PROBE))
    world.accesses["wifi"].up.delay = world.accesses["wifi"].down.delay = 0.03
    world.start()
    world.run(0.02)  # the ClientHello is on its way
    down_at = world.now
    world.set_link("wifi", False)
    assert world.times_of(ClosePath) == [down_at] and world.times_of(OpenPath)[-1] == down_at
    world.run(1.0, until=lambda: world.agent.path_on("5g") is not None)
    path = world.up_path("5g")
    assert delivered(world, 3) == ["5g"]
    world.concentrator_closes(path)
    world.run(2.0, until=lambda: world.agent.path_on("5g") not in (None, path))
    assert world.times_of(OpenPath)[-1] - world.times_of(ClosePath)[-1] == BACKOFF_START


# -- 2: the connection moves to an access that comes back after its own failed --------------------


@pytest.mark.parametrize("failure", ["link", "blackhole"])
def test_the_connection_moves_to_an_access_that_comes_back_after_its_own_failed(
    failure: str,
) -> None:
    """5G is out; then WiFi, which carries the connection, fails too (its link goes down, or it
    turns silent and dead). When 5G comes back the same connection moves there at once and
    carries the report that WiFi is unavailable, which found no usable connection before
    (before: it sat on WiFi until the idle timeout, or until the liveness probe gave it up,
    and then made a new connection)."""
    world = tunnel_world()
    path = world.up_path("wifi")
    world.set_link("5g", False)
    world.run(0.5)
    if failure == "link":
        world.set_link("wifi", False)
    else:
        world.blackhole("wifi", True)
    world.run(1.5)
    assert not access_status(world, "wifi")["available"] and world.of(Migrate) == []
    world.set_link("5g", True)
    assert [m.target.name for m in world.of(Migrate)] == ["5g"]
    assert world.agent.path_on("5g") is path and world.of(ClosePath) == []
    assert delivered(world, 3) == ["5g"]
    world.run(0.2)
    reports = world.concentrator.report_list()
    assert ("5g", WIFI, DOWN) in reports and reports[-1][0] == "5g"


# -- 3: an access left unhealthy is probed again; stale verdicts do not persist -------------------


def test_an_access_the_connection_left_dead_is_probed_and_failed_back_to() -> None:
    """WiFi turns silent while 5G is out; 5G comes back and the connection moves there. WiFi,
    whose link stayed up, is probed from a socket of its own and, once healed, failed back to
    (before: never probed again, no failback)."""
    world = tunnel_world()
    path = world.up_path("wifi")
    world.set_link("5g", False)
    world.run(0.5)
    world.blackhole("wifi", True)
    world.run(1.5)
    world.set_link("5g", True)
    world.run(1.0)
    assert world.agent.path_on("5g") is path
    probes = [t for t, name in world.probes_sent if name == "wifi"]
    assert probes  # from the migration on
    world.blackhole("wifi", False)
    world.run(2.0, until=lambda: world.agent.path_on("wifi") is path)
    assert world.agent.path_on("wifi") is path
    assert [m.target.name for m in world.of(Migrate)] == ["5g", "wifi"]
    assert access_status(world, "wifi")["health"] == "alive"
    assert delivered(world, 3) == ["wifi"]


def stalled_world(seconds: float) -> tuple[World, Path]:
    """A tunnel-mode world (5G 30 ms away) whose two accesses were silent for `seconds` while
    packets went up every 10 ms, then 5 s of quiet after both healed; and the path that was up
    on WiFi before."""
    world = tunnel_world()
    world.accesses["5g"].up.delay = world.accesses["5g"].down.delay = 0.03
    world.run(1.0)
    before = world.up_path("wifi")
    for name in ("wifi", "5g"):
        world.blackhole(name, True)
    for n in range(round(seconds / 0.01)):
        world.from_tun([ip4(n)])
        world.run(0.01)
    for name in ("wifi", "5g"):
        world.blackhole(name, False)
    world.run(5.0)
    return world, before


def test_a_stall_of_both_accesses_leaves_no_stale_verdict_behind() -> None:
    """Both accesses are silent for a second (the concentrator stalled), then fine: the access
    the connection left dead is probed back to health, so a later link-down of WiFi still
    finds 5G (before: 5G stayed dead for good, and the connection sat on the downed WiFi until
    the idle timeout); the one it moved back onto while suspect is not left "suspect"."""
    world, path = stalled_world(1.0)
    assert world.agent.path_on("wifi") is path
    # the verdicts of the stall are gone: on the access the connection came back to (when it
    # moved onto it) and on the one it left (probed back to health)
    assert access_status(world, "wifi")["health"] == "alive"
    assert (
        access_status(world, "5g")["available"] and access_status(world, "5g")["health"] == "alive"
    )
    migrations = len(world.of(Migrate))
    world.set_link("wifi", False)
    assert [m.target.name for m in world.of(Migrate)[migrations:]] == ["5g"]
    assert world.agent.path_on("5g") is path
    assert delivered(world, 3, marker=200) == ["5g"]


def test_a_short_stall_leaves_the_idle_access_healthy_for_the_next_failover() -> None:
    """Both accesses silent for 0.6 s: 5G, suspected while the connection ran there, is not left
    "suspect" once the connection moved back to WiFi (before: for good, and a later WiFi
    blackhole then found no healthy target when WiFi turned suspect)."""
    world, _ = stalled_world(0.6)
    assert world.up_path("wifi")
    assert access_status(world, "5g")["health"] == "alive"


def test_the_access_the_connection_moves_onto_starts_with_a_fresh_verdict() -> None:
    """5G carries a "suspect" verdict from another path (here set by hand) when WiFi's link
    goes down: the connection moves there anyway (the only one left), and 5G's verdict is its
    own detector's from then on (before: "suspect" for as long as it carried the connection,
    and any availability change would have moved the connection off a working access)."""
    world = tunnel_world()
    path = world.up_path("wifi")
    world.agent.set_health(world.agent.accesses["5g"], PathHealth.SUSPECT, world.now)
    world.set_link("wifi", False)
    assert world.agent.path_on("5g") is path
    assert access_status(world, "5g")["health"] == "alive"
    world.run(1.0)
    assert world.agent.path_on("5g") is path
    assert access_status(world, "5g")["health"] == "alive"
    assert delivered(world, 3) == ["5g"]


# -- 4: two accesses with one Access ID ----------------------------------------------------------


def test_a_migration_between_two_accesses_of_one_access_id_keeps_the_downlink(
    lab_certs: FilePath,
) -> None:
    """Tunnel mode may have two accesses of one Access ID (two WiFi interfaces). The connection
    moves from one to the other: the ID stays available, so the concentrator keeps sending
    (before: the last report of the ID said "unavailable", and it held then dropped all the
    downlink)."""
    world, core = core_world(lab_certs, mode="tunnel", accesses=("wifi", "non-3gpp"))
    world.run(1.0)
    world.set_link("wifi", False)
    assert [m.target.name for m in world.of(Migrate)] == ["non-3gpp"]
    traffic = Traffic(world, core)
    traffic.run(100, per_step=1, step=0.01)
    world.run(0.5)
    assert set(traffic.delivered_down()) == set(traffic.down)
    assert not core.client_status()["holding"]


# -- 5: no migration before the handshake is confirmed, nor without a new connection ID -----------


def test_no_migration_before_the_handshake_is_confirmed() -> None:
    """WiFi's link goes down between the client's handshake completion and the server's
    HANDSHAKE_DONE: RFC 9000 §9 forbids a migration then, so the connection is made again on
    5G at once (before: migrated, with WiFi's connection ID on the new path, §9.5)."""
    world = World(client_config("tunnel", ("wifi", "5g"), PROBE)).start()
    world.run(1.0, until=lambda: world.agent.state is ClientState.UP)
    path = world.up_path("wifi")
    assert path.tunnel is not None
    assert not path.tunnel.quic._handshake_confirmed
    world.set_link("wifi", False)
    assert world.of(Migrate) == [] and path.state is PathState.CLOSED
    world.run(1.0, until=lambda: world.agent.path_on("5g") is not None)
    assert world.up_path("5g") is not path
    assert delivered(world, 3) == ["5g"]


def test_every_migration_uses_a_connection_id_of_its_own() -> None:
    """The WiFi link flaps faster than the concentrator issues new connection IDs: a migration
    without a spare one is not made (before: aioquic kept the old ID on the new path, linking
    the two, RFC 9000 §9.5). The connection ends up on WiFi and carries traffic."""
    world = tunnel_world()
    world.accesses["5g"].up.delay = world.accesses["5g"].down.delay = 0.05
    world.run(1.0)
    used: dict[int, list[bytes]] = {}
    carry_out = world._migrate

    def spy(migrate: Migrate) -> None:
        quic = world.conn(migrate.path).client
        assert isinstance(quic, TunnelQuicConnection)
        used.setdefault(id(migrate.path), []).append(quic._peer_cid.cid)
        carry_out(migrate)

    world._migrate = spy  # type: ignore[method-assign]
    for _ in range(12):
        world.set_link("wifi", False)
        world.run(0.02)
        world.set_link("wifi", True)
        world.run(0.02)
    world.run(1.0)
    assert used and all(len(set(cids)) == len(cids) for cids in used.values())
    assert delivered(world, 3) == ["wifi"]


# -- 6: a probe's connection ID is retired when the connection takes its access -------------------


def test_a_probe_connection_id_is_never_sent_from_two_sockets() -> None:
    """WiFi is blackholed briefly twice; each time the connection moves to 5G, WiFi is probed
    from a socket of its own, answers, and the connection fails back. The probe's connection
    ID is retired at the failback, so the second episode's probe socket uses another (before:
    the same ID from two local addresses, RFC 9000 §9.5): no ID is sent from two sockets."""
    world = tunnel_world()
    path = world.up_path("wifi")
    assert path.tunnel is not None
    quic = path.tunnel.quic
    sent: dict[bytes, set[tuple[str, int]]] = {}
    carry_out = world._probe

    def spy(probe: ProbeAccess) -> None:
        carry_out(probe)
        if probe.access.name == "wifi":
            socket = world.conn(probe.path).probes["wifi"]
            dcid = probe.datagram[1 : 1 + len(quic._peer_cid.cid)]
            sent.setdefault(dcid, set()).add(socket)

    world._probe = spy  # type: ignore[method-assign]
    for episode in range(2):
        world.blackhole("wifi", True)
        world.from_tun([ip4(n) for n in range(3)])
        world.run(1.0, until=lambda: path.name == "5g")
        world.run(0.05)
        world.blackhole("wifi", False)
        # the second failure within a minute holds the failback for FIRST_HOLD (flap damping);
        # meanwhile WiFi is probed as a standby access too, from a socket and an ID of its own
        world.run(FIRST_HOLD + 1.0, until=lambda: path.name == "wifi")
        world.run(0.5)
        assert [m.target.name for m in world.of(Migrate)] == ["5g", "wifi"] * (episode + 1)
        assert isinstance(quic, TunnelQuicConnection) and "wifi" not in quic._tunnel_probe_cids
    assert len(sent) >= 2 and all(len(sockets) == 1 for sockets in sent.values())


# -- 7: the liveness probe's PING is due at the time it names ------------------------------------


def test_a_ping_is_due_at_the_time_next_ping_at_names() -> None:
    """(1023.62 + 1.0) - 1023.62 rounds below 1.0: `due` compared that difference, so it was
    False at next_ping_at() and the agent's timer stood still there."""
    probe = LivenessProbe(1.0)
    probe.sent(probe.next_uid(), 1023.62)
    at = probe.next_ping_at()
    assert at is not None and probe.due(at)
    assert not probe.due(1023.62 + 0.5)


def test_the_timer_moves_on_with_the_connection_on_a_downed_access() -> None:
    """Both links down with the connection on WiFi: its PINGs go out every interval and the
    agent's timer moves on (the world asserts it) until QUIC's idle timeout ends it."""
    world = World(client_config("tunnel", ("wifi", "5g"), "limits.probe_interval=1.0")).start()
    world.run(1.0)
    path = world.up_path("wifi")
    world.set_link("5g", False)
    world.run(0.5)
    world.set_link("wifi", False)
    world.run(40.0, until=lambda: path.state is PathState.CLOSED)
    assert path.state is PathState.CLOSED
    assert world.agent.state in (ClientState.RECONNECTING, ClientState.CONNECTING)
