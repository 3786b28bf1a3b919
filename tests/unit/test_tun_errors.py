"""tunnel.aio.tun errors a user can cause, checked before or without touching a real device."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnel.aio import tun
from tunnel.aio.tun import TunDevice, TunError, interface_macs


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


def test_interface_macs_reads_the_interfaces_that_exist(tmp_path: Path) -> None:
    """The concentrator's bridge and TAP MACs, which no Ethernet client may take (README "L2
    mode"): read from sysfs; an interface gone meanwhile or without a MAC is left out."""
    for name, address in (("br0", "02:00:00:00:00:01\n"), ("qtap0", "0a:1b:2c:3d:4e:5f\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(address)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "address").write_text("\n")
    macs = interface_macs(["br0", "gone", "odd", "qtap0"], root=tmp_path)
    assert macs == [0x020000000001, 0x0A1B2C3D4E5F]
