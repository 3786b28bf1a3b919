"""tunnel.aio.tun errors a user can cause, checked before or without touching a real device."""

from __future__ import annotations

import pytest

from tunnel.aio import tun
from tunnel.aio.tun import TunDevice, TunError


@pytest.mark.parametrize("name", ["", "qta" + "x" * 13, "qta/0", "qta 0"])
def test_bad_names(name: str) -> None:
    with pytest.raises(TunError, match="is invalid: use 1 to 15 characters"):
        TunDevice.create(name, mtu=1400)


def test_missing_clone_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tun, "TUN_CLONE_DEVICE", "/nonexistent/net/tun")
    with pytest.raises(TunError, match=r"is missing: load the tun module \(modprobe tun\)"):
        TunDevice.create("qtaunit0", mtu=1400)


@pytest.mark.parametrize(
    ("mtu", "addresses", "message"),
    [
        (67, [], "TUN MTU 67 is outside 68..65535"),
        (70000, [], "TUN MTU 70000 is outside 68..65535"),
        (1279, ["fd00::1/64"], "below 1280, the minimum for IPv6"),
        (1400, ["fd00::zz/64"], "TUN address 'fd00::zz/64' is not an address with prefix"),
    ],
)
def test_bad_mtu_and_addresses(mtu: int, addresses: list[str], message: str) -> None:
    with pytest.raises(TunError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TunDevice.create("qtaunit0", mtu=mtu, addresses=addresses)
