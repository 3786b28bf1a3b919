"""tunnel.aio.tun errors a user can cause, checked before or without touching a real device."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def test_a_device_that_cannot_be_read_any_more_stops_the_reading_once() -> None:
    """A TUN deleted under the program stays readable and each read fails (EBADFD): the
    reader stayed registered and the loop spun on the error, a traceback logged each turn. The
    reading stops at the first failure, which goes to on_error (or the loop's handler) once.
    Stand-in: a pipe that always has data, whose reads fail as a deleted TUN's do."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"x")
    device = TunDevice(read_end, "qtaunit0", 0, 1400)
    attempts = 0

    def failing_read(max_packets: int = 0) -> list[bytes]:
        nonlocal attempts
        attempts += 1
        raise OSError(errno.EBADFD, "File descriptor in bad state")

    device.read_batch = failing_read  # type: ignore[method-assign]

    async def main(on_error: Callable[[OSError], None] | None) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        handled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: handled.append(context))
        device.start_reading(lambda packets: None, on_error=on_error)
        for _ in range(50):  # loop turns: a registered reader would be called at each
            await asyncio.sleep(0)
        return handled

    errors: list[OSError] = []
    assert asyncio.run(main(errors.append)) == []
    assert attempts == 1 and [e.errno for e in errors] == [errno.EBADFD]
    attempts = 0
    handled = asyncio.run(main(None))
    assert attempts == 1 and len(handled) == 1
    assert isinstance(handled[0]["exception"], OSError)
    os.close(read_end)
    os.close(write_end)
