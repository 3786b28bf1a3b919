"""Tunnel connections over the in-memory network of quic_harness (shared by the tests)."""

from __future__ import annotations

from typing import Any

from tests.unit.quic_harness import Endpoint, Network, Path, make_configs
from tunnel.protocol.connection import TunnelConnection
from tunnel.wire.modes import ALL_ALPN


def ip4(marker: int, size: int = 60) -> bytes:
    """An IPv4-looking packet (version nibble 4) of `size` bytes, tagged by `marker`."""
    body = marker.to_bytes(4, "big")
    return (b"\x45\x00" + body + bytes(size))[:size]


def ip6(marker: int, size: int = 80) -> bytes:
    body = marker.to_bytes(4, "big")
    return (b"\x60\x00" + body + bytes(size))[:size]


def attach(path: Path, **kwargs: Any) -> Path:
    path.client.tunnel = TunnelConnection(path.client.quic, **kwargs)
    path.server.tunnel = TunnelConnection(path.server.quic, **kwargs)
    return path


def add_tunnel_path(
    net: Network,
    client_alpn: list[str],
    server_alpn: list[str] | None = None,
    delay: float = 0.005,
    client_stream_mode: bool = False,
    server_stream_mode: bool = False,
    max_datagram_size: int = 1200,
    client_payload_ethertype: int | None = None,
    **kwargs: Any,
) -> Path:
    client_config, server_config = make_configs(
        client_alpn,
        list(ALL_ALPN) if server_alpn is None else server_alpn,
        max_datagram_size=max_datagram_size,
    )
    path = net.add_path(
        client_config,
        server_config,
        delay=delay,
        client_stream_mode=client_stream_mode,
        server_stream_mode=server_stream_mode,
        client_payload_ethertype=client_payload_ethertype,
    )
    return attach(path, **kwargs)


def events_of(endpoint: Endpoint, kind: type) -> list[Any]:
    return [e for e in endpoint.tunnel_events if isinstance(e, kind)]


def tunnel(endpoint: Endpoint) -> TunnelConnection:
    assert isinstance(endpoint.tunnel, TunnelConnection)
    return endpoint.tunnel
