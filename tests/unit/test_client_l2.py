"""The client agent with payload = "ethernet" (README "L2 mode"), in memory on the fake clock
(tests/unit/client_world.py): a TAP sized to the datagram budget less the Ethernet header, frames
carried in both modes, and no ICMP answer for a frame, which has none."""

from __future__ import annotations

import pytest

from tests.unit.client_world import World, client_config
from tunnel.agents.client import ClientState, CreateTun
from tunnel.protocol.connection import TunnelConnection
from tunnel.wire.datagram import ETHERNET_HEADER_SIZE, Payload


def frame(marker: int, size: int = 64) -> bytes:
    header = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x0a" + b"\x08\x06"
    return (header + marker.to_bytes(4, "big") + bytes(size))[:size]


def l2_world(mode: str) -> World:
    world = World(client_config(mode, ("wifi", "5g"), 'payload="ethernet"')).start()
    world.run(2.0)
    assert world.agent.state is ClientState.UP
    return world


@pytest.mark.parametrize(("mode", "ip_mtu"), [("tunnel", 1422), ("session", 1418)])
def test_the_tap_mtu_is_the_ip_mtu_less_the_ethernet_header(mode: str, ip_mtu: int) -> None:
    world = l2_world(mode)
    assert world.of(CreateTun) == [CreateTun(ip_mtu - ETHERNET_HEADER_SIZE)]
    assert world.config.payload is Payload.ETHERNET


@pytest.mark.parametrize("mode", ["tunnel", "session"])
def test_frames_reach_the_concentrator_as_ethernet(mode: str) -> None:
    world = l2_world(mode)
    frames = [frame(n) for n in range(3)]
    world.from_tun(frames)
    world.run(0.5, until=lambda: len(world.concentrator.packets) >= 3)
    assert [packet for _, packet in world.concentrator.packets] == frames
    conn = world.conns[0]
    assert isinstance(conn.server_tunnel, TunnelConnection)
    assert conn.server_tunnel.payload is Payload.ETHERNET


def test_a_frame_beyond_the_budget_is_dropped_silently_not_answered_with_icmp() -> None:
    world = l2_world("tunnel")
    assert world.tun_mtu is not None
    # a frame that starts like an IPv4 header (destination MAC 45:00:...): still no ICMP
    oversized = frame(1, size=world.tun_mtu + ETHERNET_HEADER_SIZE + 1)
    world.from_tun([b"\x45\x00" + oversized[2:]])
    world.run(0.2)
    assert world.tun == []
    assert world.agent.counters["drops_too_big_silent"] == 1
