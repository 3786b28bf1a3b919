"""The inner packets a smaller path MTU swallowed, to answer them with Packet Too Big.

A tunnel whose path MTU shrinks tells its inner senders the way a router does: an inner packet
larger than the new budget is answered with ICMP Packet Too Big (RFC 4459 §3.2; RFC 8899 §4.6:
the packetization layer hands what it learnt to the layer above). Packets the tunnel refuses
after the search fell are answered when they are sent (TunnelConnection.send_packet's TOO_BIG).
Those it sent at the old size *while* a black hole was being detected and confirmed vanished
without a word, as did those it queued for a size the new path then failed to carry (after the
handshake or a migration); an inner TCP that lost a window of them learns of the new size only
when its retransmission timer fires and it sends one again: in the `pmtu-black-hole` failover
scenario, with the probes of a round sent together, the size fell 64–171 ms into the hole and
delivery came back at ~250 ms, the inner TCP's first timeout, in 8 of 10 runs
(results/README.md, "Where a PMTU black hole's gap goes").

So, while discovery runs, the connection keeps the latest large packet of each inner flow
queued in the last LOOKBACK seconds on the path in use, and when a confirmation fails answers
those the fallen budget refuses, and those the fall dropped from the queue whenever they were
queued (TunnelQuicConnection.take_refused_datagrams: after a migration they waited there for the
new path's confirmation). A TCP sender lowers its MSS and retransmits at once what no
longer fits (Linux ignores a quote of data already acknowledged, so one of a packet that got
through before the hole costs nothing); other senders lower their path MTU for the
destination, which the path did in fact shrink to. One per flow is enough: the sender's path
MTU is per destination. The budget they are told is the fallen one (the base size's), which
the search then raises; a sender keeps what it learnt for minutes (Linux: 10), as it does for
every Packet Too Big of the search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

LOOKBACK: Final = 2.0  # seconds: detection (8 large losses) and confirmation take well under it
MAX_FLOWS: Final = 64  # flows kept (a packet each, ~92 KiB at most); the oldest is forgotten first
_TCP, _UDP = 6, 17


def flow_key(packet: bytes) -> bytes:
    """The addresses and protocol of an IPv4 or IPv6 packet, and its ports for TCP and UDP (not
    for a later IPv4 fragment, nor behind IPv6 extension headers: their first bytes are no
    ports, and keying on them would make each packet a flow of its own)."""
    if packet[0] >> 4 == 4:
        header = (packet[0] & 0x0F) * 4
        first = not int.from_bytes(packet[6:8], "big") & 0x1FFF  # fragment offset 0
        ports = packet[header : header + 4] if packet[9] in (_TCP, _UDP) and first else b""
        return packet[9:10] + packet[12:20] + ports
    ports = packet[40:44] if packet[6] in (_TCP, _UDP) else b""
    return packet[6:7] + packet[8:40] + ports


class RecentLargePackets:
    """The latest packet larger than `floor` of each flow, with when it was queued, for the
    last LOOKBACK seconds."""

    def __init__(self, floor: int) -> None:
        self.floor = floor  # packets at most this size fit any budget the search can fall to
        self._latest: dict[bytes, tuple[bytes, float]] = {}

    def note(self, packet: bytes, now: float) -> None:
        """`packet` (larger than `floor`, an IP packet) was queued at `now`."""
        key = flow_key(packet)
        latest = self._latest
        latest.pop(key, None)  # re-inserted last: the dict stays in the order of use
        latest[key] = (packet, now)
        # forget the oldest flow beyond MAX_FLOWS, and what LOOKBACK has passed
        oldest = next(iter(latest))
        while len(latest) > MAX_FLOWS or latest[oldest][1] < now - LOOKBACK:
            del latest[oldest]
            oldest = next(iter(latest))

    def victims(
        self, budget: int, now: float, since: float | None = None, refused: Sequence[bytes] = ()
    ) -> list[bytes]:
        """The packets queued in the last LOOKBACK seconds (and not before `since`: the path's
        start) that `budget` no longer holds, and the `refused` ones (dropped from the queue by
        the fall, whenever queued), one per flow (the latest), forgotten once returned (a
        Packet Too Big for each is enough)."""
        start = now - LOOKBACK if since is None else max(now - LOOKBACK, since)
        found = {
            key: packet
            for key, (packet, queued_at) in self._latest.items()
            if len(packet) > budget and queued_at >= start
        }
        for packet in refused:
            if packet and len(packet) > budget:
                found[flow_key(packet)] = packet
        self._latest.clear()
        return list(found.values())

    def __len__(self) -> int:
        return len(self._latest)
