"""Which inbound TCP port mappings the concentrator grants its clients (the reversed flow of
stream mode; README "Stream mode"). A client asks with a PCP MAP request (RFC 6887 §11,
tunnel/wire/pcp.py, carried through the tunnel); the concentrator's core asks this table, which
decides and remembers, sans-I/O (every input takes `now`):

- only TCP (any other protocol: UNSUPP_PROTOCOL, §11.1), only for a specific internal port (0 is
  "all ports": NOT_AUTHORIZED), and only for the address the request came from (the Client IP
  Address field must equal the packet's source: ADDRESS_MISMATCH, §8.3);
- the external port is one of `allowed` (the site's choice; none: every request
  NOT_AUTHORIZED), never one of `reserved` (the concentrator's own ports) nor one `port_free`
  says is busy on the host; the client's suggestion, else its internal port, else the lowest
  free allowed port (§11.3: a suggestion is a hint); first come, first served: none free ->
  NO_RESOURCES;
- at most `max_per_client` mappings per client (USER_EX_QUOTA, the per-subscriber quota of
  §7.4); a lifetime of at most `max_lifetime` seconds (§11.3: the server may shorten it);
- a mapping is the client's (name) + internal port + nonce: the same request again renews it
  (same external port), another nonce for it is NOT_AUTHORIZED (§11.3, §15); lifetime 0
  deletes it (§15: deleting one that does not exist is a SUCCESS as well).
Mappings end at their lifetime (`expire`) or when their client is gone (`release`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from tunnel.wire.pcp import IPPROTO_TCP, MapRequest, ResultCode

LONG_ERROR_LIFETIME: Final = 1800
"""§7.2: how long a refusal that will not change by itself holds (NOT_AUTHORIZED...), s."""
SHORT_ERROR_LIFETIME: Final = 30
"""§7.2: how long a refusal for want of resources holds before the client may retry, s."""
_SHORT_ERRORS: Final = frozenset({ResultCode.NO_RESOURCES, ResultCode.USER_EX_QUOTA})


@dataclass
class Mapping:
    """One granted mapping: TCP to `external_port` goes to `internal_address:internal_port`
    of `client`."""

    client: str
    internal_address: IPv4Address | IPv6Address
    internal_port: int
    external_port: int
    nonce: bytes
    expires: float


@dataclass(frozen=True)
class Decision:
    """What `request` decided: the result, the lifetime to answer, the external port (0 on a
    refusal or a deletion), the mapping made (None when it existed already or on a refusal)
    and the one removed (a deletion), and a sentence for the log."""

    result: ResultCode
    lifetime: int
    external_port: int
    created: Mapping | None = None
    removed: tuple[Mapping, ...] = ()
    reason: str = ""


def _refuse(result: ResultCode, reason: str) -> Decision:
    lifetime = SHORT_ERROR_LIFETIME if result in _SHORT_ERRORS else LONG_ERROR_LIFETIME
    return Decision(result, lifetime, 0, reason=reason)


class InboundTable:
    """The granted mappings and the rules (see the module docstring)."""

    def __init__(
        self,
        allowed: Iterable[int],
        *,
        max_per_client: int,
        max_lifetime: int,
        reserved: Iterable[int] = (),
        port_free: Callable[[int], bool] = lambda _: True,
    ) -> None:
        self.allowed = sorted(set(allowed))
        self.max_per_client = max_per_client
        self.max_lifetime = max_lifetime
        self.reserved = frozenset(reserved)
        self.port_free = port_free
        self._by_port: dict[int, Mapping] = {}

    def __len__(self) -> int:
        return len(self._by_port)

    def by_port(self, port: int) -> Mapping | None:
        return self._by_port.get(port)

    def of_all(self) -> list[Mapping]:
        return list(self._by_port.values())

    def of_client(self, client: str) -> list[Mapping]:
        return [m for m in self._by_port.values() if m.client == client]

    def request(
        self,
        client: str,
        source: IPv4Address | IPv6Address,
        request: MapRequest,
        now: float,
    ) -> Decision:
        """Decide a MAP request of `client` that came from `source` (see the module docstring)."""
        if request.protocol != IPPROTO_TCP:
            return _refuse(
                ResultCode.UNSUPP_PROTOCOL, f"protocol {request.protocol}: only TCP (6) is mapped"
            )
        if request.client_address != source:
            return _refuse(
                ResultCode.ADDRESS_MISMATCH,
                f"client address {request.client_address} is not the source {source}",
            )
        mine = [m for m in self.of_client(client) if m.internal_address == source]
        if request.lifetime == 0:  # §15: a deletion
            doomed = [
                m
                for m in mine
                if request.internal_port in (0, m.internal_port) and m.nonce == request.nonce
            ]
            if not doomed and any(m.internal_port == request.internal_port for m in mine):
                return _refuse(ResultCode.NOT_AUTHORIZED, "the nonce is not the mapping's")
            for mapping in doomed:
                del self._by_port[mapping.external_port]
            return Decision(ResultCode.SUCCESS, 0, 0, removed=tuple(doomed), reason="deleted")
        if request.internal_port == 0:
            return _refuse(ResultCode.NOT_AUTHORIZED, "all ports (internal port 0) is not mapped")
        lifetime = min(request.lifetime, self.max_lifetime)
        for mapping in mine:
            if mapping.internal_port == request.internal_port:
                if mapping.nonce != request.nonce:
                    return _refuse(ResultCode.NOT_AUTHORIZED, "the nonce is not the mapping's")
                mapping.expires = now + lifetime
                external = mapping.external_port
                return Decision(ResultCode.SUCCESS, lifetime, external, reason="renewed")
        if not self.allowed:
            return _refuse(ResultCode.NOT_AUTHORIZED, "no inbound ports are configured")
        if len(self.of_client(client)) >= self.max_per_client:
            return _refuse(
                ResultCode.USER_EX_QUOTA,
                f"the client has its maximum of {self.max_per_client} mappings",
            )
        port = self._choose(request.suggested_port, request.internal_port)
        if port is None:
            return _refuse(ResultCode.NO_RESOURCES, "every allowed external port is taken")
        expires = now + lifetime
        mapping = Mapping(client, source, request.internal_port, port, request.nonce, expires)
        self._by_port[port] = mapping
        return Decision(ResultCode.SUCCESS, lifetime, port, created=mapping, reason="mapped")

    def _usable(self, port: int) -> bool:
        return port not in self._by_port and port not in self.reserved and self.port_free(port)

    def _choose(self, suggested: int, internal: int) -> int | None:
        allowed = set(self.allowed)
        for wish in (suggested, internal):
            if wish in allowed and self._usable(wish):
                return wish
        return next((p for p in self.allowed if self._usable(p)), None)

    def remove(self, mapping: Mapping) -> bool:
        """Forget `mapping` (the program could not listen on its port); False if gone already."""
        if self._by_port.get(mapping.external_port) is not mapping:
            return False
        del self._by_port[mapping.external_port]
        return True

    def expire(self, now: float) -> list[Mapping]:
        """The mappings whose lifetime ended, removed."""
        gone = [m for m in self._by_port.values() if m.expires <= now]
        for mapping in gone:
            del self._by_port[mapping.external_port]
        return gone

    def release(self, client: str) -> list[Mapping]:
        """The client is gone: its mappings, removed."""
        gone = self.of_client(client)
        for mapping in gone:
            del self._by_port[mapping.external_port]
        return gone

    def next_expiry(self) -> float | None:
        return min((m.expires for m in self._by_port.values()), default=None)
