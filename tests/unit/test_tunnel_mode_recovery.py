"""Tunnel mode recovers from a closed or silent connection, a stale verdict and a failed
migration without waiting on a decision of its own (found by a review of the client agent,
each reproduced in memory first): tests/unit/client_world.py, fake clock."""

from __future__ import annotations

from tests.unit.client_world import Concentrator, World, client_config
from tests.unit.test_client_agent import PROBE, access_status, delivered
from tests.unit.test_tunnel_mode_review import tunnel_world
from tests.unit.tunnel_pairs import ip4
from tunnel.agents.client import (
    CONNECT_TIMEOUT,
    ClientState,
    Migrate,
    OpenPath,
    Path,
    PathState,
)
from tunnel.protocol.quic_ext import STATELESS_RESET_REASON
from tunnel.session.path_health import PathHealth


def opened_after(world: World, since: float, skip: int) -> list[tuple[float, str]]:
    """(seconds after `since`, access) of the OpenPath actions after the first `skip`."""
    opens = [(t, a) for t, a in world.actions if isinstance(a, OpenPath)][skip:]
    return [(round(t - since, 2), a.path.name) for t, a in opens]


def up_on_5g_beside_a_silent_wifi() -> tuple[World, Path]:
    """WiFi's link is up but nothing gets through it: its handshake fails, 5G carries."""
    world = World(client_config("tunnel", ("wifi", "5g"), PROBE))
    world.blackhole("wifi", True)
    world.start()
    world.run(CONNECT_TIMEOUT + 2.0, until=lambda: world.agent.state is ClientState.UP)
    return world, world.up_path("5g")


def test_a_connection_the_concentrator_closed_is_not_judged_while_it_drains() -> None:
    """aioquic says a connection ended three PTOs after the peer's CONNECTION_CLOSE; meanwhile
    the detector took its silence for the access's: it migrated the closing connection to 5G
    and left WiFi dead, so the reconnect went to 5G and failed back later."""
    world = tunnel_world()
    path = world.up_path("wifi")
    migrations = len(world.of(Migrate))
    opens = len(world.of(OpenPath))
    world.from_tun([ip4(i) for i in range(3)])
    world.concentrator_closes(path)
    world.run(1.0, until=lambda: path.state is PathState.CLOSED)
    assert len(world.of(Migrate)) == migrations  # nothing decided on the closing connection
    world.run(1.0, until=lambda: world.agent.state is ClientState.UP)
    assert [name for _, name in opened_after(world, 0.0, opens)] == ["wifi"]
    assert access_status(world, "wifi")["health"] == "alive"


def test_a_closed_connection_on_5g_does_not_leave_5g_dead_and_the_client_on_a_broken_wifi() -> None:
    """WiFi's link is up but carries nothing; 5G carries the connection, then the
    concentrator closes it. Before: 5G judged dead while draining, the client retried only
    WiFi, each attempt timing out after 10 s, for good."""
    world, path = up_on_5g_beside_a_silent_wifi()
    world.run(2.0)
    opens = len(world.of(OpenPath))
    world.concentrator_closes(path)
    closed = world.now
    world.run(1.0, until=lambda: path.state is PathState.CLOSED)
    world.run(45.0, until=lambda: world.agent.state is ClientState.UP)
    assert world.agent.state is ClientState.UP
    assert [name for _, name in opened_after(world, closed, opens)] == ["5g"]


def test_a_healthy_access_probed_without_answer_turns_dead() -> None:
    """WiFi's handshake failed (its link up, nothing through): it is probed from 5G's
    connection. Before, it stayed healthy however many probes went unanswered, and the
    reconnect after 5G's connection was lost went to WiFi first (a 10 s handshake timeout)."""
    world, path = up_on_5g_beside_a_silent_wifi()
    world.run(10.0)
    wifi = world.agent.accesses["wifi"]
    assert wifi.probing is not None and wifi.probes_answered == 0
    assert wifi.health is PathHealth.DEAD and not wifi.available
    opens = len(world.of(OpenPath))
    world.concentrator_closes(path)
    world.run(1.0, until=lambda: path.state is PathState.CLOSED)
    closed = world.now
    world.run(15.0, until=lambda: world.agent.state is ClientState.UP)
    assert [name for _, name in opened_after(world, closed, opens)] == ["5g"]
    world.blackhole("wifi", False)  # it heals: its probe is answered, the connection fails back
    world.run(5.0, until=lambda: world.agent.paths()[-1].name == "wifi")
    assert wifi.health is PathHealth.ALIVE and world.agent.paths()[-1].name == "wifi"


def test_a_connection_given_up_as_silent_is_made_again_after_the_backoff() -> None:
    """The concentrator restarted and forgot the client: the liveness probe gives the silent
    connection up. Its verdict (`alive` False) stayed, no access was available, and the
    reconnect waited 4 probe intervals instead of the 0.25 s backoff."""
    for accesses in (("wifi",), ("wifi", "5g")):
        world = World(client_config("tunnel", accesses, "limits.probe_interval=1.0")).start()
        world.run(2.0)
        assert world.agent.state is ClientState.UP
        path = world.agent.paths()[0]
        restarted = Concentrator(server_config=world.concentrator.server_config)
        world.restart_concentrator(restarted)
        world.concentrator = restarted
        world.run(30.0, until=lambda: path.state is PathState.CLOSED)  # noqa: B023
        assert path.state is PathState.CLOSED
        closed = world.now
        opens = len(world.of(OpenPath))
        world.run(20.0, until=lambda: world.agent.state is ClientState.UP)  # noqa: B023
        assert world.agent.state is ClientState.UP, accesses
        (first, *_) = opened_after(world, closed, opens)
        assert first[0] < 1.0, (accesses, first)  # the backoff's 0.25 s, not 4 s


def test_a_failback_whose_migration_failed_is_tried_again() -> None:
    """The socket on WiFi could not be made once, when the failback migrated: the connection
    stayed on 5G for good while WiFi was healthy. Now it tries again a probe interval later."""
    world = tunnel_world()
    path = world.up_path("wifi")
    world.set_link("wifi", False)  # fails over to 5G
    world.run(1.0)
    world.bind_fails.add("wifi")
    world.set_link("wifi", True)  # the failback's Migrate fails
    world.bind_fails.discard("wifi")
    world.run(0.001)
    assert path.name == "5g" and [m.target.name for m in world.of(Migrate)] == ["5g", "wifi"]
    world.run(5.0, until=lambda: path.name == "wifi")
    assert path.name == "wifi" and [m.target.name for m in world.of(Migrate)][-1] == "wifi"
    assert delivered(world, 3) == ["wifi"]


def test_a_healed_access_judged_dead_is_tried_again_when_the_other_one_fails_too() -> None:
    """WiFi blackholed and judged dead by its probes from 5G's connection; then 5G is
    blackholed too and its connection given up; then WiFi heals. With no connection carrying
    traffic WiFi's probes could not be sent, so its verdict stayed DEAD and every reconnect
    went to the broken 5G: no connection for good (a review reproduced 60 s of it). Now each
    round of failed attempts gives every access another chance, and no verdict decays without
    its probes."""
    world, path = up_on_5g_beside_a_silent_wifi()
    world.run(10.0)
    wifi = world.agent.accesses["wifi"]
    assert wifi.health is PathHealth.DEAD
    world.blackhole("5g", True)
    world.run(30.0, until=lambda: path.state is PathState.CLOSED)
    assert path.state is PathState.CLOSED
    opens = len(world.of(OpenPath))
    world.blackhole("wifi", False)
    healed = world.now
    world.run(30.0, until=lambda: world.agent.state is ClientState.UP)
    assert world.agent.state is ClientState.UP
    assert world.agent.paths()[-1].name == "wifi"
    assert "wifi" in [name for _, name in opened_after(world, healed, opens)]
    assert wifi.health is PathHealth.ALIVE and wifi.probing is None


def test_after_a_concentrator_restart_the_client_comes_back_on_its_preferred_access() -> None:
    """The concentrator killed while traffic ran: the detector judges WiFi, then 5G dead (the
    silence was the concentrator's), and the restarted concentrator's stateless reset ends the
    connection. Before: the reconnect went to 5G and WiFi came back only when its backed-off
    probe was answered (3.2 s after the reconnect, measured in the namespace test); the reset
    says the concentrator lost the connection, so its outage's verdicts are forgotten."""
    world = tunnel_world()
    path = world.up_path("wifi")
    restarted = Concentrator(server_config=world.concentrator.server_config)
    world.restart_concentrator(restarted)
    world.concentrator = restarted
    world.from_tun([ip4(i) for i in range(3)])
    world.run(2.0)
    assert not world.agent.accesses["wifi"].available and path.name == "5g"
    world.resets = True  # up again: a packet of the old connection draws a reset
    world.from_tun([ip4(3)])
    world.run(1.0, until=lambda: path.state is PathState.CLOSED)
    assert path.end_reason == STATELESS_RESET_REASON
    opens = len(world.of(OpenPath))
    world.run(1.0, until=lambda: world.agent.state is ClientState.UP)
    assert [name for _, name in opened_after(world, 0.0, opens)] == ["wifi"]
    assert world.agent.accesses["wifi"].available and world.agent.accesses["5g"].available
    assert delivered(world, 3) == ["wifi"]
