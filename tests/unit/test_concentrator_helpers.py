"""Pure helpers of tunnel/aio/concentrator.py (no root, no sockets)."""

from __future__ import annotations

from tunnel.aio.concentrator import (
    IP_FORWARD_SYSCTLS,
    MAX_DATAGRAM_SIZE,
    auto_tun_mtu,
    read_ip_forward,
)
from tunnel.protocol.quic_ext import packet_datagram_budget
from tunnel.wire.datagram import SESSION_HEADER_SIZE
from tunnel.wire.modes import TunnelMode


def test_auto_mtu_is_the_datagram_budget_less_the_session_header() -> None:
    # 1452 - 1 (short header byte) - 8 (CID) - 2 (packet number) - 16 (AEAD tag) = 1425 bytes
    # for the frame, of which DATAGRAM type (1) and length (2) leave 1422 for the packet.
    assert packet_datagram_budget(MAX_DATAGRAM_SIZE, 8) == 1422
    assert auto_tun_mtu((TunnelMode.TUNNEL,)) == 1422
    assert auto_tun_mtu((TunnelMode.TUNNEL, TunnelMode.SESSION)) == 1422 - SESSION_HEADER_SIZE
    assert auto_tun_mtu((TunnelMode.SESSION,)) == 1418


def test_ip_forward_state_matches_the_sysctls() -> None:
    state = read_ip_forward()
    assert set(state) == {"ipv4", "ipv6"}
    for family, path in IP_FORWARD_SYSCTLS.items():
        expected = path.read_text().strip() != "0" if path.exists() else None
        assert state[family] is expected
