"""The outer connection's congestion controllers: aioquic's Reno and CUBIC, our BBR, and "none".

`limits.congestion_control` picks one per connection (README "Running the tunnel"):
- "reno", "cubic": aioquic's, loss-based: every loss halves (Reno) or cuts (CUBIC) the window.
- "bbr": BBRv1 (tunnel/protocol/bbr.py), model-based: random loss does not shrink it.
- "none": no congestion control, a configured pacing rate only. RFC 9484 §10 (CONNECT-IP) lets an
  IP tunnel turn congestion control off for packets that carry only DATAGRAM frames, since the
  tunnelled IP flows run their own; RFC 9298 §6 (CONNECT-UDP) forbids it, because UDP
  applications need not. This project's tunnel mode and session mode carry IP packets, so "none"
  is allowed there — never with stream mode, whose QUIC streams carry TCP bytestreams that
  nothing else congestion-controls (tunnel/config.py refuses the combination). The pacing rate
  keeps the tunnel from flooding an access faster than it can carry.

Importing this module registers "bbr" and "none" with aioquic's registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.packet_builder import QuicSentPacket

from tunnel.protocol.bbr import BbrCongestionControl

UNLIMITED_WINDOW: Final = 1 << 30
"""The window of "none": large enough never to bind (1 GiB in flight), finite so that aioquic's
arithmetic on it stays integer."""


class PacedNoCongestionControl(QuicCongestionControl):
    """ "none": the window never limits, loss is not a signal; only `pacing_rate` (bytes per
    second, set by TunnelQuicConnection from the configuration) paces the sender."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.congestion_window = UNLIMITED_WINDOW
        self.pacing_rate: float | None = None

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_persistent_congestion(self) -> None:
        pass  # nothing to reduce: the pacing rate is the site's decision

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        pass

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data["pacing_rate"] = self.pacing_rate
        return data


register_congestion_control("bbr", BbrCongestionControl)
register_congestion_control("none", PacedNoCongestionControl)

CONGESTION_CONTROLS: Final = ("reno", "cubic", "bbr", "none")

__all__ = ["CONGESTION_CONTROLS", "UNLIMITED_WINDOW", "PacedNoCongestionControl"]
