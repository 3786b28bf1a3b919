"""tunnel.stream_policy: destination allow/deny and the pending TCP Connect cap (-tcp §7.1)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from tunnel.config import StreamServerConfig
from tunnel.stream_policy import DestinationPolicy, PendingConnects

DEFAULT = DestinationPolicy(StreamServerConfig().allow)


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
                "::ffff:127.0.0.1"]
)  # fmt: skip
def test_never_allowed(address: str) -> None:
    assert DEFAULT.refusal(ip_address(address)) is not None


def test_default_allows_any_unicast_but_own_addresses() -> None:
    assert DEFAULT.refusal(IPv4Address("192.0.2.1")) is None
    assert DEFAULT.refusal(IPv6Address("2001:db8::1")) is None
    reason = DEFAULT.refusal(IPv4Address("192.0.2.1"), is_own_address=True)
    assert reason is not None and "own" in reason


def test_allow_and_deny_lists() -> None:
    policy = DestinationPolicy(
        allow=[ip_network("10.200.0.0/16"), ip_network("fd00:200::/32")],
        deny=[ip_network("10.200.9.0/24")],
    )
    assert policy.refusal(IPv4Address("10.200.1.2")) is None
    assert "denied" in (policy.refusal(IPv4Address("10.200.9.1")) or "")
    assert "no allowed" in (policy.refusal(IPv4Address("10.201.0.1")) or "")
    assert policy.refusal(IPv6Address("fd00:200:1::2")) is None
    assert policy.refusal(IPv6Address("fd00:201::2")) is not None


def test_pending_connects_cap() -> None:
    pending = PendingConnects(2)
    assert pending.try_start() and pending.try_start()
    assert not pending.try_start()
    assert pending.refused == 1
    pending.finish()
    assert pending.try_start()
    with pytest.raises(ValueError, match="limit"):
        PendingConnects(0)


def test_finish_without_start_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        PendingConnects(1).finish()
