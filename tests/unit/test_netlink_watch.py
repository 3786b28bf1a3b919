"""tunnel.aio.netlink_watch.read_local_addresses: the host's addresses with their prefixes, read
from a stand-in for pyroute2's IPRoute (no netlink socket, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Interface, ip_address
from types import TracebackType
from typing import ClassVar

import pytest

from tunnel.aio import netlink_watch
from tunnel.policy.host_guard import HostGuard


class FakeAddrMessage:
    def __init__(self, prefixlen: int, **attrs: str) -> None:
        self.prefixlen = prefixlen
        self.attrs = attrs

    def __getitem__(self, key: str) -> int:
        assert key == "prefixlen"
        return self.prefixlen

    def get_attr(self, name: str) -> str | None:
        return self.attrs.get(name)


class FakeIPRoute:
    messages: ClassVar[list[FakeAddrMessage]] = []

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def get_addr(self) -> list[FakeAddrMessage]:
        return self.messages


def test_addresses_come_with_their_prefix_and_a_custom_broadcast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeIPRoute.messages = [
        FakeAddrMessage(24, IFA_LOCAL="10.8.0.1", IFA_BROADCAST="10.8.0.255"),
        FakeAddrMessage(24, IFA_LOCAL="192.0.2.1", IFA_BROADCAST="192.0.2.127"),  # set apart
        FakeAddrMessage(64, IFA_ADDRESS="fd00:8::1"),
        FakeAddrMessage(64, IFA_ADDRESS="fe80::1%qcore0"),
    ]
    monkeypatch.setattr(netlink_watch, "IPRoute", FakeIPRoute)
    found = netlink_watch.read_local_addresses()
    assert found == {
        IPv4Interface("10.8.0.1/24"),
        IPv4Interface("192.0.2.1/24"),
        IPv4Address("192.0.2.127"),
        IPv6Interface("fd00:8::1/64"),
        IPv6Interface("fe80::1/64"),
    }
    # what the host guard makes of them: the kernel delivers all of these locally
    local = HostGuard("deny", found).local_addresses
    for address in ("10.8.0.255", "10.8.0.0", "192.0.2.255", "192.0.2.127", "fd00:8::"):
        assert ip_address(address).packed in local
