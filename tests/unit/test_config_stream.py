"""The [stream] table of the client and concentrator configurations (-tcp draft stream mode)."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, ip_network
from pathlib import Path

import pytest

from tunnel.config import (
    ConfigError,
    StreamClientConfig,
    StreamServerConfig,
    parse_client_config,
    parse_concentrator_config,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _client(*overrides: str) -> StreamClientConfig:
    text = (EXAMPLES / "client-tunnel.toml").read_text()
    return parse_client_config(text, base_dir=EXAMPLES, overrides=overrides).stream


def _server(*overrides: str) -> StreamServerConfig:
    text = (EXAMPLES / "concentrator.toml").read_text()
    return parse_concentrator_config(text, base_dir=EXAMPLES, overrides=overrides).stream


def test_disabled_by_default_and_examples_parse() -> None:
    assert StreamClientConfig().enabled is False
    assert StreamServerConfig().enabled is False
    client = _client()
    assert client.enabled is False
    assert ip_network("10.200.0.0/16") in client.intercept
    server = _server()
    assert server.max_streams == 256
    assert server.allow == StreamServerConfig().allow


def test_client_keys() -> None:
    client = _client(
        "stream.enabled=true", "stream.socks_port=1080", "stream.socks_address=127.0.0.2"
    )
    assert client.enabled and client.socks_port == 1080
    assert client.socks_address == IPv4Address("127.0.0.2")


def test_enabled_client_needs_interception_or_socks() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("none of stream.intercept, stream.socks_port and stream.inbound"),
    ):
        _client("stream.enabled=true", "stream.intercept=[]")


def test_server_keys() -> None:
    server = _server(
        "stream.enabled=true",
        'stream.allow=["10.200.0.0/16"]',
        'stream.deny=["10.200.9.0/24"]',
        "stream.max_pending_connects=4",
        "stream.connect_timeout=0.5",
    )
    assert server.allow == (ip_network("10.200.0.0/16"),)
    assert server.deny == (ip_network("10.200.9.0/24"),)
    assert server.max_pending_connects == 4 and server.connect_timeout == 0.5
    assert server.allow_own_addresses is False  # the concentrator's own services stay closed
    assert _server("stream.allow_own_addresses=true").allow_own_addresses is True


def test_client_buffer_budget() -> None:
    server = _server()
    assert server.max_client_buffer == StreamServerConfig().max_client_buffer == 512 * 1024 * 1024
    assert _server("stream.max_client_buffer=65536", "stream.window=16384",
                   "stream.send_buffer=16384").max_client_buffer == 65536  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "stream.max_client_buffer = 1048576 holds not one stream of window + send_buffer = "
            "2097152 bytes: raise it or lower those two"
        ),
    ):
        _server("stream.max_client_buffer=1048576")


def test_special_purpose_ranges_are_allowed_by_listing_them() -> None:
    server = _server('stream.allow=["0.0.0.0/0", "::/0", "169.254.169.254/32"]')
    assert ip_network("169.254.169.254/32") in server.allow


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stream.max_client_buffer=1024", "stream.max_client_buffer = 1024 is not an integer"),
        ("stream.window=10", "stream.window = 10 is not an integer from 16384"),
        ("stream.max_streams=0", "stream.max_streams = 0 is not an integer from 1"),
        ('stream.deny=["10.0.0.1/8"]', "stream.deny"),
        ("stream.enabled=1", "stream.enabled = 1 is not true or false"),
        ("stream.colour=1", "stream.colour is not a known key"),
    ],
)
def test_server_bad_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _server(override)


def test_client_bad_port() -> None:
    with pytest.raises(ConfigError, match=re.escape("stream.listen_port = 0")):
        _client("stream.listen_port=0")


def test_inbound_keys_parse_ports_and_ranges() -> None:
    client = _client(
        "stream.enabled=true", "stream.intercept=[]", "stream.inbound=[8080, 22]",
        'stream.inbound_host="127.0.0.1"', 'stream.pcp_server="10.0.0.1"',
    )  # fmt: skip
    assert client.inbound == (22, 8080) and client.inbound_host == IPv4Address("127.0.0.1")
    assert client.pcp_server == IPv4Address("10.0.0.1") and client.inbound_lifetime == 3600
    server = _server('stream.inbound_ports=[8080, "9000-9002"]', 'stream.inbound_addresses=["::"]')
    assert server.inbound_ports == (8080, 9000, 9001, 9002)
    assert server.inbound_max_per_client == 8 and server.inbound_max_lifetime == 7200
    assert _server().inbound_ports == () and _server().inbound_addresses == ()


@pytest.mark.parametrize("bad", ["[0]", '["9002-9000"]', '["80-x"]', "[true]", "8080", "[70000]"])
def test_bad_inbound_ports_get_one_sentence(bad: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("stream.inbound_ports = ")) as caught:
        _server(f"stream.inbound_ports={bad}")
    assert 'ports (1-65535) and "low-high" ranges' in str(caught.value)
