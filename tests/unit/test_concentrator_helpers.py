"""The concentrator program's own pieces (tunnel/aio/concentrator.py, concentrator_setup.py),
without root or sockets: the TUN MTU, the forwarding sysctls, the status document it writes,
and a bug in its callbacks stopping it with exit 1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from aioquic.quic import events as quic_events

from tests.unit.concentrator_harness import concentrator_config, lab_certs
from tunnel.aio.concentrator import ConcentratorProgram
from tunnel.aio.concentrator_setup import (
    IP_FORWARD_SYSCTLS,
    auto_tun_mtu,
    quic_configuration,
    read_ip_forward,
)
from tunnel.aio.tun import TunDevice
from tunnel.aio.udp import QuicDriver
from tunnel.config import ConcentratorConfig, ConfigError
from tunnel.protocol.connection import TunnelConnection
from tunnel.protocol.quic_ext import MAX_DATAGRAM_SIZE, packet_datagram_budget
from tunnel.user_error import RuntimeFailure
from tunnel.wire.datagram import SESSION_HEADER_SIZE
from tunnel.wire.modes import TunnelMode

__all__ = ["lab_certs"]  # the fixture

STATUS_KEYS = {
    # README "Status file", the concentrator's keys
    "role", "pid", "worker", "time", "state", "modes", "payloads", "listen", "tun", "taps",
    "ip_forward", "nat", "clients",
    "sessions", "connections", "refused", "counters", "server", "stream", "crl", "inbound",
    "tickets",
}  # fmt: skip


def test_auto_mtu_is_the_largest_budget_of_the_served_modes() -> None:
    # 1452 - 1 (short header byte) - 8 (CID) - 2 (packet number) - 16 (AEAD tag) = 1425 bytes
    # for the frame, of which DATAGRAM type (1) and length (2) leave 1422 for the packet.
    assert packet_datagram_budget(MAX_DATAGRAM_SIZE, 8) == 1422
    assert auto_tun_mtu((TunnelMode.TUNNEL,)) == 1422
    assert auto_tun_mtu((TunnelMode.SESSION,)) == 1422 - SESSION_HEADER_SIZE == 1418
    assert auto_tun_mtu((TunnelMode.MASQUE,)) == 1420  # README: a MASQUE client's TUN
    # a tunnel-mode client's TCP advertises an MSS from its 1422-byte TUN: the concentrator's
    # TUN must take such packets, whatever other modes it serves (session clients get the
    # agent's Packet Too Big above their 1418)
    assert auto_tun_mtu((TunnelMode.TUNNEL, TunnelMode.SESSION)) == 1422
    assert auto_tun_mtu((TunnelMode.SESSION, TunnelMode.MASQUE)) == 1420


def test_ip_forward_state_matches_the_sysctls() -> None:
    state = read_ip_forward()
    assert set(state) == {"ipv4", "ipv6"}
    for family, path in IP_FORWARD_SYSCTLS.items():
        expected = path.read_text().strip() != "0" if path.exists() else None
        assert state[family] is expected


def test_the_status_document_has_every_documented_key(lab_certs: Path) -> None:
    async def main() -> None:
        program = ConcentratorProgram(concentrator_config(lab_certs))
        status = program.snapshot()
        assert set(status) == STATUS_KEYS
        assert status["state"] == "starting" and status["role"] == "concentrator"
        assert set(status["refused"]) == {"auth", "mode", "payload", "limit", "server_full"}
        assert status["counters"]["internal_errors"] == 0
        assert status["counters"]["stateless_resets_sent"] == 0

    asyncio.run(main())


def test_a_bug_in_the_programs_callbacks_stops_it_with_exit_1(lab_certs: Path) -> None:
    """The TUN reader, the core's timer, SIGHUP and the netlink watch run as loop callbacks: a
    bug there used to be logged by the loop and forgotten, leaving a concentrator that had
    silently stopped part of its job."""

    async def main() -> None:
        program = ConcentratorProgram(concentrator_config(lab_certs))

        def broken(now: float) -> None:
            raise RuntimeError("a bug")

        program.loop.call_soon(program._guarded(broken), 0.0)
        await asyncio.wait_for(program.wait_stopped(), timeout=5)
        assert program.exit_code == 1

    asyncio.run(main())


def test_a_bug_on_a_connections_end_still_frees_its_driver_and_relays(
    lab_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the core while it handles ConnectionTerminated closes that connection only
    (the QuicDriver catches it); its driver and its stream relays went with it all the same
    (they used to stay: the TCP connections of its streams open for good)."""

    async def main() -> None:
        program = ConcentratorProgram(concentrator_config(lab_certs, "stream.enabled=true"))
        assert program.stream_server is not None
        closed: list[TunnelConnection] = []
        monkeypatch.setattr(program.stream_server, "connection_closed", closed.append)

        def broken(connection: TunnelConnection, event: object, now: float) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(program.core, "quic_event", broken)
        connection = cast(TunnelConnection, object())
        program.drivers[connection] = cast(QuicDriver, SimpleNamespace())
        end = quic_events.ConnectionTerminated(error_code=0, frame_type=None, reason_phrase="")
        with pytest.raises(RuntimeError, match="a bug"):
            program._on_quic_event(connection, end)
        assert closed == [connection]
        assert connection not in program.drivers

    asyncio.run(main())


def test_tap_names_take_the_smallest_free_number_within_15_bytes(lab_certs: Path) -> None:
    """L2 mode: one TAP per Ethernet client, `<tun.name>-N`, N reused once its client left (a
    counter would outgrow the 15 bytes of an interface name on a long-running concentrator)."""

    def taps(*names: str) -> dict[str, TunDevice]:
        return {name: cast(TunDevice, SimpleNamespace(name=name)) for name in names}

    async def main() -> None:
        program = ConcentratorProgram(concentrator_config(lab_certs, 'tun.name="qtunconcentr00"'))
        assert program._tap_name() == "qtunconcentr0-1"
        program.taps = taps("qtunconcentr0-1", "qtunconcentr0-3")
        assert program._tap_name() == "qtunconcentr0-2"
        program.taps = taps(*(f"qtunconcentr0-{n}" for n in range(1, 10)), "qtunconcentr-10")
        assert program._tap_name() == "qtunconcentr-11"

    asyncio.run(main())


def test_observability_errors_name_the_key_and_come_before_the_tun(
    lab_certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The concentrator opens its key log and qlog as the client does (open_observability),
    before its TUN and NAT: it used to fail after them with "Is a directory" and no key. (The
    configuration file's loader refuses these paths earlier still, tests/unit/test_config.py.)"""

    def tun_created(*args: object, **kwargs: object) -> TunDevice:
        raise AssertionError("the TUN was set up first")

    monkeypatch.setattr(TunDevice, "create", tun_created)
    (tmp_path / "file").write_text("x")
    for override, sentence in (
        (
            f"observability.keylog_file={tmp_path}",
            f"cannot open observability.keylog_file {tmp_path} (Is a directory): choose a "
            "writable path",
        ),
        (
            f"observability.qlog_dir={tmp_path}/file",
            f"cannot create observability.qlog_dir {tmp_path}/file (File exists): choose a "
            "writable directory",
        ),
    ):

        async def main(config: ConcentratorConfig) -> None:
            program = ConcentratorProgram(config)
            try:
                await program.start()
            finally:
                await program.stop()

        with pytest.raises(RuntimeFailure) as info:
            asyncio.run(main(concentrator_config(lab_certs, override)))
        assert str(info.value) == sentence


def test_a_key_that_is_not_the_certificates_is_refused(lab_certs: Path) -> None:
    """tls.key of another pair (here a client's) than tls.cert: every client's handshake would
    fail at its CertificateVerify, without a word on the concentrator's files."""
    config = concentrator_config(lab_certs, f"tls.key={lab_certs / 'alice.key'}")
    with pytest.raises(ConfigError, match=r"tls.key .*alice.key is not the key of tls.cert"):
        quic_configuration(config)
