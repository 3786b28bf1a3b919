"""The client's PCP client (RFC 6887) for the reversed flow of stream mode, sans-I/O: it asks the
concentrator to accept inbound TCP for each port of `[stream] inbound` (MAP opcode, §11) and
keeps the mappings alive. The client agent (tunnel/agents/client.py) sends the UDP/IP packets it
returns through the tunnel and hands it the packets that come back.

- A MAP request per port as soon as a stream-mode connection carries traffic, and again on
  every new one (the concentrator forgets a client's mappings when the client is gone, and a
  restarted concentrator knows none: §8.5's epoch check would tell, but re-asking on each new
  connection is simpler and as cheap).
- Unanswered: re-sent after 3 s, doubling up to 1024 s (§8.1.1's IRT and MRT, without the
  random factor: there is one server and few clients behind each tunnel).
- SUCCESS: renewed at half of the granted lifetime (§11.2.1). An error: asked again once the
  error's lifetime is over (§7.2), at least IRT later.
- The nonce (§11.1) is one random value per port for the life of the program, so a renewal
  after a reconnect is recognised as the same mapping.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

from tunnel.wire.pcp import (
    IPPROTO_TCP,
    PCP_CLIENT_PORT,
    PCP_SERVER_PORT,
    MapRequest,
    MapResponse,
    PcpError,
    ResultCode,
    UdpDatagram,
    parse_udp,
    udp_packet,
)

log = logging.getLogger("qtun.client")

INITIAL_RETRANSMIT: Final = 3.0
"""§8.1.1 IRT, seconds."""
MAX_RETRANSMIT: Final = 1024.0
"""§8.1.1 MRT, seconds."""


@dataclass
class _Port:
    port: int
    nonce: bytes
    due: float | None = None  # when to send the next request (None: not before a carrier)
    backoff: float = INITIAL_RETRANSMIT
    result: ResultCode | None = None
    external_port: int = 0
    external_address: IPv4Address | IPv6Address | None = None
    expires: float | None = None


class PortMapper:
    """Mappings for `ports` of `client_address`, asked of `server` (see the module docstring)."""

    def __init__(
        self,
        ports: Iterable[int],
        client_address: IPv4Address | IPv6Address,
        server: IPv4Address | IPv6Address,
        lifetime: int,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if client_address.version != server.version:
            raise ValueError(
                f"the PCP server {server} and the client address {client_address} are of "
                "different families"
            )
        self.client_address = client_address
        self.server = server
        self.lifetime = lifetime
        self._ports = {p: _Port(p, random_bytes(12)) for p in ports}
        self._carrier: object | None = None

    def update(self, carrier: object | None, now: float) -> list[bytes]:
        """`carrier`: what identifies the stream-mode connection now (None: none). The
        requests due now, as UDP/IP packets to send through the tunnel."""
        if carrier is None:
            self._carrier = None
            return []
        if carrier is not self._carrier:  # a new connection: ask again at once
            self._carrier = carrier
            for entry in self._ports.values():
                entry.due, entry.backoff = now, INITIAL_RETRANSMIT
        packets = []
        for entry in self._ports.values():
            if entry.due is not None and entry.due <= now:
                packets.append(self._request(entry))
                # until an answer comes: retransmit (§8.1.1)
                entry.due = now + entry.backoff
                entry.backoff = min(entry.backoff * 2, MAX_RETRANSMIT)
        return packets

    def next_deadline(self) -> float | None:
        if self._carrier is None:
            return None
        return min((e.due for e in self._ports.values() if e.due is not None), default=None)

    def received(self, packet: bytes, now: float) -> bool:
        """Whether `packet` (from the tunnel) is a PCP answer for us: then it is consumed (the
        agent does not write it into the TUN)."""
        datagram = parse_udp(packet, PCP_CLIENT_PORT)
        if (
            datagram is None
            or datagram.source_port != PCP_SERVER_PORT
            or datagram.source != self.server
            or datagram.destination != self.client_address
        ):
            return False
        try:
            response = MapResponse.decode(datagram.payload)
        except PcpError as exc:
            log.info("pcp answer ignored reason=%s", exc.message)
            return True
        entry = self._ports.get(response.internal_port)
        if entry is None or response.nonce != entry.nonce or response.protocol != IPPROTO_TCP:
            return True  # §11.4: an answer whose nonce does not match is not ours
        entry.result = response.result
        entry.backoff = INITIAL_RETRANSMIT
        if response.result is ResultCode.SUCCESS:
            changed = entry.external_port != response.external_port
            entry.external_port = response.external_port
            entry.external_address = response.external_address
            entry.expires = now + response.lifetime
            entry.due = now + max(response.lifetime / 2, INITIAL_RETRANSMIT)  # §11.2.1
            if changed:
                log.info(
                    "inbound port mapped port=%d external=%s:%d lifetime=%d",
                    entry.port,
                    response.external_address,
                    response.external_port,
                    response.lifetime,
                )
        else:
            entry.external_port, entry.expires = 0, None
            entry.due = now + max(response.lifetime, INITIAL_RETRANSMIT)  # §7.2
            log.warning(
                "inbound port refused port=%d result=%s retry_in=%d",
                entry.port,
                response.result.name,
                max(response.lifetime, int(INITIAL_RETRANSMIT)),
            )
        return True

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "port": e.port,
                "result": e.result.name if e.result is not None else None,
                "external": f"{e.external_address}:{e.external_port}" if e.external_port else None,
            }
            for e in self._ports.values()
        ]

    def _request(self, entry: _Port) -> bytes:
        request = MapRequest(
            self.client_address,
            entry.nonce,
            IPPROTO_TCP,
            entry.port,
            self.lifetime,
            suggested_port=entry.external_port or entry.port,
        )
        datagram = UdpDatagram(
            self.client_address, self.server, PCP_CLIENT_PORT, PCP_SERVER_PORT, request.encode()
        )
        return udp_packet(datagram)
