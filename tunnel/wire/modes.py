"""The tunnel modes and the ALPN tokens that select them.

The mode of a connection is negotiated by ALPN (tunnel draft §5, tunnel-session draft §5); stream
mode is not a mode of its own but a transport parameter next to either (tunnel/protocol/
quic_ext.py). One enum serves the wire, the configuration (`mode = "tunnel"`) and the programs.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

ALPN_TUNNEL: Final = ("qt", "qt-00")
"""-tunnel-00 §5: "qt", or "qt-00" for this draft version."""
ALPN_SESSION: Final = ("qt-session", "qt-session-00")
"""-tunnel-session-00 §5: "qt-session", or "qt-session-00"."""
ALPN_MASQUE: Final = ("h3",)
"""RFC 9484 runs on HTTP/3 (RFC 9114 §3.1: ALPN "h3"): MASQUE CONNECT-IP (issue 18)."""
ALL_ALPN: Final = ALPN_TUNNEL + ALPN_SESSION
"""The drafts' tokens (MASQUE's "h3" is not a token of theirs: ALPN_MASQUE)."""


class TunnelMode(Enum):
    TUNNEL = "tunnel"
    """-tunnel-00: whole IP packets in DATAGRAM frames."""
    SESSION = "session"
    """-tunnel-session-00: Protocol Type + Packet Tag header, joinable sessions."""
    MASQUE = "masque"
    """RFC 9484 CONNECT-IP over HTTP/3 (issue 18): what a user would pick instead; one
    connection, migrated like tunnel mode; no session (MASQUE has none)."""


MODE_ALPNS: Final = {
    TunnelMode.TUNNEL: ALPN_TUNNEL,
    TunnelMode.SESSION: ALPN_SESSION,
    TunnelMode.MASQUE: ALPN_MASQUE,
}
"""The ALPN tokens a client of each mode offers (and a concentrator serving it accepts)."""


def mode_of_alpn(alpn: str | None) -> TunnelMode | None:
    """The drafts' tunnel mode an ALPN token selects, None if it selects none ("h3" is not
    theirs: only tunnel/protocol/masque.py's MasqueConnection takes it)."""
    if alpn in ALPN_TUNNEL:
        return TunnelMode.TUNNEL
    if alpn in ALPN_SESSION:
        return TunnelMode.SESSION
    return None


__all__ = [
    "ALL_ALPN",
    "ALPN_MASQUE",
    "ALPN_SESSION",
    "ALPN_TUNNEL",
    "MODE_ALPNS",
    "TunnelMode",
    "mode_of_alpn",
]
