"""The inner packets a PMTU black hole swallowed, to answer them with Packet Too Big.

A tunnel whose path MTU shrinks tells its inner senders the way a router does: an inner packet
larger than the new budget is answered with ICMP Packet Too Big (RFC 4459 §3.2, RFC 8899 §4.6:
the packetization layer hands what it learnt to the layer above). Packets the tunnel refuses
after the search fell are answered when they are sent (TunnelConnection.send_packet's TOO_BIG).
Those it sent at the old size *while* the black hole was being detected and confirmed vanished
without a word, and an inner TCP that lost a window of them learns of the new size only when
its retransmission timer fires and it sends one again: in the `pmtu-black-hole` failover
scenario the size fell 64–171 ms into the hole, and delivery came back at ~250 ms, the inner
TCP's first timeout, in 8 of 10 runs (results/README.md, "Where a PMTU black hole's gap goes").

So, while discovery runs, the connection keeps the latest large packet of each inner flow, and
when a black hole is confirmed answers those of the last LOOKBACK seconds that the new budget
refuses: each such Packet Too Big quotes a packet that was in fact lost for its size, and a
Linux TCP sender lowers its MSS and retransmits at once what no longer fits (it ignores one
that quotes data already acknowledged). One per flow is enough: the sender's path MTU is per
destination.
"""

from __future__ import annotations

from typing import Final

LOOKBACK: Final = 2.0  # seconds: detection (8 large losses) and confirmation take well under it
MAX_FLOWS: Final = 256  # flows kept; the oldest is forgotten first


def flow_key(packet: bytes) -> bytes:
    """The addresses, the protocol and the first four bytes of its header (the ports of TCP
    and UDP) of an IPv4 or IPv6 packet; what an IPv6 extension header hides is left out."""
    if packet[0] >> 4 == 4:
        header = (packet[0] & 0x0F) * 4
        return packet[9:10] + packet[12:20] + packet[header : header + 4]
    return packet[6:7] + packet[8:40] + packet[40:44]


class RecentLargePackets:
    """The latest packet larger than `floor` of each flow, with when it was sent."""

    def __init__(self, floor: int) -> None:
        self.floor = floor  # packets at most this size fit any budget the search can fall to
        self._latest: dict[bytes, tuple[bytes, float]] = {}

    def note(self, packet: bytes, now: float) -> None:
        """`packet` (larger than `floor`, an IP packet) was sent at `now`."""
        key = flow_key(packet)
        latest = self._latest
        latest.pop(key, None)  # re-inserted last: the dict stays in order of use
        latest[key] = (packet, now)
        if len(latest) > MAX_FLOWS:
            del latest[next(iter(latest))]

    def victims(self, budget: int, now: float) -> list[bytes]:
        """The packets sent in the last LOOKBACK seconds that `budget` no longer holds, one per
        flow, forgotten once returned (a Packet Too Big for each is enough)."""
        found = [
            packet
            for packet, sent_at in self._latest.values()
            if len(packet) > budget and sent_at >= now - LOOKBACK
        ]
        self._latest.clear()
        return found

    def __len__(self) -> int:
        return len(self._latest)
