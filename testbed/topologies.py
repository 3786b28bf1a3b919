"""Topologies as plain data: the nodes, links, addresses and routes of each testbed network.

No Mininet import here (unit tests, experiments and `qtun` deployment specs read the plan without
root or Debian's Mininet); `testbed.lab.Lab` hands the plan to Mininet when it builds a network.
A topology is a `LabTopo` subclass whose `build()` adds nodes and links (the shape of Mininet's
topo.py) and records what Mininet cannot express: each node's addresses and routes as `ip
-batch` lines, which nodes forward, and which links are shaped. Nodes are hosts only (no
switches, no controller): routers are hosts with forwarding on.

The addressing plan (v4 / v6), client k, server s (the functions below compute it):
  client k WiFi access   10.1.k.2/24   fd00:1:k::2/64   (router side .1 / ::1)
  client k 5G access     10.2.k.2/24   fd00:2:k::2/64
  router uplinks         10.101.0.0/24 fd00:101::/64 (WiFi), 10.102.0.0/24 fd00:102::/64 (5G)
  concentrator service   10.100.0.1/32 fd00:100::1/128 on its loopback, reachable over both
  server s               10.200.s.2/24 fd00:200:s::2/64 behind the concentrator (.1 / ::1)
Clients route only to the concentrator's service address (per access, with source rules so a
socket bound to one access's address leaves through it). Access routers route only to the
concentrator, never to the servers: a client reaches a server through the tunnel or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from testbed.profiles import LinkProfile, profile
from tunnel.user_error import UsageError

ACCESSES = ("wifi", "5g")
ACCESS_NUMBER = {"wifi": 1, "5g": 2}  # second octet of the access subnets, and table ids
CONCENTRATOR_V4 = "10.100.0.1"
CONCENTRATOR_V6 = "fd00:100::1"
SERVERS_V4 = "10.200.0.0/16"  # every server s: 10.200.s.0/24
SERVERS_V6 = "fd00:200::/32"
PAIR_H1 = ("10.0.0.1", "fd00::1")  # the pair topology: h1 -- wlink -- h2
PAIR_H2 = ("10.0.0.2", "fd00::2")


def client_access_addresses(client: int, access: str) -> tuple[str, str]:
    """Client k's (1-based) own addresses on an access network, IPv4 and IPv6."""
    n = ACCESS_NUMBER[access]
    return f"10.{n}.{client}.2", f"fd00:{n}:{client}::2"


def server_addresses(server: int) -> tuple[str, str]:
    """Server s's (1-based) addresses, IPv4 and IPv6."""
    return f"10.200.{server}.2", f"fd00:200:{server}::2"


class TopologyError(UsageError):
    """An unknown topology name or an unusable parameter."""


@dataclass(frozen=True)
class Link:
    """A veth pair between two nodes, with the interface name at each end."""

    node_a: str
    node_b: str
    intf_a: str
    intf_b: str


@dataclass
class ShapedLink:
    """A link A -- middle -- B whose middle node carries the impairment (see testbed.shaping)."""

    middle: str
    node_a: str
    node_b: str
    intf_a: str  # middle's veth towards A
    intf_b: str  # middle's veth towards B
    endpoint_intfs: list[tuple[str, str]]  # (node, intf) of A and B facing the middle
    profile_ab: LinkProfile
    profile_ba: LinkProfile
    peer_v4: str  # B's address on this link, what A pings to verify it


@dataclass
class Access:
    """A named access network ("wifi") of one client: the shaper, and where carrier drops."""

    name: str
    # What kind of access `qtun` reports it as, in its config's words (tunnel/config.py
    # ACCESS_KINDS: "wifi" is non-3GPP, "5g" is 3GPP).
    kind: str
    client: str
    client_intf: str
    client_v4: str
    client_v6: str
    shaped: str | None  # ShapedLink.middle serving it (may be shared by all clients)
    carrier: list[tuple[str, str]]  # (node, intf) to set down for a real failure of this access


@dataclass
class Plan:
    """The network: Lab builds its nodes and links with Mininet, then applies the rest."""

    hosts: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    ip_batch: dict[str, list[str]] = field(default_factory=dict)
    routers: list[str] = field(default_factory=list)
    shaped: dict[str, ShapedLink] = field(default_factory=dict)
    accesses: list[Access] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    concentrator: str = ""
    server_addrs: dict[str, tuple[str, str]] = field(default_factory=dict)

    def server_address(self, server: str | None = None, family: int = 4) -> str:
        """A server's address of that IP family (the first server when none is named)."""
        v4, v6 = self.server_addrs[server or self.servers[0]]
        return v4 if family == 4 else v6

    def access(self, name: str, client: str | None = None) -> Access | None:
        """One client's (the first client's) access of that name, None if it has none."""
        client = client or self.clients[0]
        return next((a for a in self.accesses if a.name == name and a.client == client), None)


class LabTopo:
    """Base class: `build(**params)` adds nodes and links with the helpers below, into self.plan."""

    def __init__(self, **params: Any) -> None:
        self.plan = Plan()
        self.build(**params)

    def build(self) -> None:
        raise NotImplementedError

    def host(self, name: str) -> str:
        self.plan.hosts.append(name)
        return name

    def addr(self, node: str, intf: str, v4: str, v6: str) -> None:
        self.plan.ip_batch.setdefault(node, []).extend(
            [f"addr add {v4} dev {intf}", f"-6 addr add {v6} dev {intf} nodad"]
        )

    def route(self, node: str, line: str) -> None:
        self.plan.ip_batch.setdefault(node, []).append(line)

    def link(self, a: str, b: str, intf_a: str, intf_b: str) -> None:
        self.plan.links.append(Link(a, b, intf_a, intf_b))

    def shaped_link(
        self,
        a: str,
        b: str,
        middle: str,
        intf_a: str,
        intf_b: str,
        ab: LinkProfile,
        ba: LinkProfile,
        peer_v4: str,
    ) -> None:
        """A -- middle -- B; the middle node carries no address and shapes both directions."""
        self.host(middle)
        ma, mb = f"{middle}-a", f"{middle}-b"
        self.link(a, middle, intf_a, ma)
        self.link(middle, b, mb, intf_b)
        self.plan.shaped[middle] = ShapedLink(
            middle, a, b, ma, mb, [(a, intf_a), (b, intf_b)], ab, ba, peer_v4
        )


class AccessTopo(LabTopo):
    """N multihomed clients (WiFi + 5G) -> one access router per access -> concentrator -> servers.

    shape_at="client": a shaped link per client and access (the reference topology, N = 1).
    shape_at="uplink": clients attach straight to the access routers and each access router's
    uplink to the concentrator is shaped once, shared by all clients (the economical N-client
    variant: 2 shaping processes whatever N).
    """

    def build(
        self,
        clients: int = 1,
        servers: int = 1,
        shape_at: str = "client",
        profiles: dict[str, LinkProfile] | None = None,
    ) -> None:
        if not 1 <= clients <= 250 or not 1 <= servers <= 250:
            raise TopologyError("clients and servers must each be between 1 and 250.")
        if shape_at not in ("client", "uplink"):
            raise TopologyError("shape_at must be 'client' or 'uplink'.")
        _known_links(profiles, ACCESSES)
        plan = self.plan
        profs = {a: profile(a) for a in ACCESSES}
        profs.update(profiles or {})
        conc = plan.concentrator = self.host("conc")
        plan.routers.append(conc)
        self.route(conc, f"addr add {CONCENTRATOR_V4}/32 dev lo")
        self.route(conc, f"-6 addr add {CONCENTRATOR_V6}/128 dev lo")
        for access in ACCESSES:
            n = ACCESS_NUMBER[access]
            router = self.host(f"r{access}")
            plan.routers.append(router)
            up_r, up_c = f"r{access}-up", f"conc-r{access}"
            if shape_at == "uplink":
                # Towards the concentrator is "ab" (the clients' upload direction).
                self.shaped_link(
                    router,
                    conc,
                    f"w{access}",
                    up_r,
                    up_c,
                    profs[access],
                    profs[access],
                    f"10.10{n}.0.2",
                )
            else:
                self.link(router, conc, up_r, up_c)
            self.addr(router, up_r, f"10.10{n}.0.1/24", f"fd00:10{n}::1/64")
            self.addr(conc, up_c, f"10.10{n}.0.2/24", f"fd00:10{n}::2/64")
            self.route(router, f"route add {CONCENTRATOR_V4}/32 via 10.10{n}.0.2")
            self.route(router, f"-6 route add {CONCENTRATOR_V6}/128 via fd00:10{n}::2")
            self.route(conc, f"route add 10.{n}.0.0/16 via 10.10{n}.0.1")
            self.route(conc, f"-6 route add fd00:{n}::/32 via fd00:10{n}::1")
        for k in range(1, clients + 1):
            client = self.host(f"c{k}")
            plan.clients.append(client)
            for access in ACCESSES:
                n = ACCESS_NUMBER[access]
                router = f"r{access}"
                c_intf, r_intf = f"c{k}-{access}", f"r{access}-c{k}"
                v4, v6 = client_access_addresses(k, access)
                gw4, gw6 = f"10.{n}.{k}.1", f"fd00:{n}:{k}::1"
                if shape_at == "client":
                    middle = f"w{access}" if clients == 1 else f"w{access}{k}"
                    self.shaped_link(
                        client, router, middle, c_intf, r_intf, profs[access], profs[access], gw4
                    )
                    carrier = [(middle, f"{middle}-a"), (middle, f"{middle}-b")]
                else:
                    middle = f"w{access}"
                    self.link(client, router, c_intf, r_intf)
                    carrier = [(router, r_intf)]  # router side down: the client sees NO-CARRIER
                self.addr(client, c_intf, f"{v4}/24", f"{v6}/64")
                self.addr(router, r_intf, f"{gw4}/24", f"{gw6}/64")
                table = 100 + n
                metric = 10 * n  # WiFi preferred when nothing else decides
                self.route(client, f"route add {CONCENTRATOR_V4}/32 via {gw4} metric {metric}")
                self.route(client, f"-6 route add {CONCENTRATOR_V6}/128 via {gw6} metric {metric}")
                self.route(client, f"route add {CONCENTRATOR_V4}/32 via {gw4} table {table}")
                self.route(client, f"-6 route add {CONCENTRATOR_V6}/128 via {gw6} table {table}")
                self.route(client, f"rule add from {v4} table {table} pref {1000 + n}")
                self.route(client, f"-6 rule add from {v6} table {table} pref {1000 + n}")
                # The access's name is also its kind for qtun ("wifi", "5g").
                access_row = Access(access, access, client, c_intf, v4, v6, middle, carrier)
                plan.accesses.append(access_row)
        for s in range(1, servers + 1):
            server = self.host(f"srv{s}")
            plan.servers.append(server)
            self.link(conc, server, f"conc-srv{s}", f"srv{s}-eth0")
            self.addr(conc, f"conc-srv{s}", f"10.200.{s}.1/24", f"fd00:200:{s}::1/64")
            v4, v6 = server_addresses(s)
            self.addr(server, f"srv{s}-eth0", f"{v4}/24", f"{v6}/64")
            self.route(server, f"route add default via 10.200.{s}.1")
            self.route(server, f"-6 route add ::/0 via fd00:200:{s}::1")
            plan.server_addrs[server] = (v4, v6)


class ReferenceTopo(AccessTopo):
    """The drafts' reference: one client with WiFi + 5G, each access link shaped."""

    def build(self, servers: int = 1, profiles: dict[str, LinkProfile] | None = None) -> None:  # type: ignore[override]
        super().build(clients=1, servers=servers, shape_at="client", profiles=profiles)


class NClientTopo(AccessTopo):
    """N multihomed clients sharing the access routers; the two router uplinks are shaped."""

    def build(  # type: ignore[override]
        self, clients: int = 10, servers: int = 1, profiles: dict[str, LinkProfile] | None = None
    ) -> None:
        super().build(clients=clients, servers=servers, shape_at="uplink", profiles=profiles)


class PairTopo(LabTopo):
    """Two hosts and one shaped link, h1 -- wlink -- h2: what the fidelity benchmark measures."""

    def build(self, profiles: dict[str, LinkProfile] | None = None) -> None:
        _known_links(profiles, ("link",))
        prof = (profiles or {}).get("link", LinkProfile())
        (h1_v4, h1_v6), (h2_v4, h2_v6) = PAIR_H1, PAIR_H2
        h1, h2 = self.host("h1"), self.host("h2")
        self.shaped_link(h1, h2, "wlink", "h1-eth0", "h2-eth0", prof, prof, h2_v4)
        self.addr(h1, "h1-eth0", f"{h1_v4}/24", f"{h1_v6}/64")
        self.addr(h2, "h2-eth0", f"{h2_v4}/24", f"{h2_v6}/64")
        self.plan.clients.append(h1)
        self.plan.servers.append(h2)
        self.plan.server_addrs[h2] = PAIR_H2
        # The one link is h1's access; qtun reports it as a WiFi (non-3GPP) access.
        carrier = [("wlink", "wlink-a"), ("wlink", "wlink-b")]
        self.plan.accesses.append(
            Access("link", "wifi", h1, "h1-eth0", h1_v4, h1_v6, "wlink", carrier)
        )


def _known_links(profiles: dict[str, LinkProfile] | None, links: tuple[str, ...]) -> None:
    """A profile for a link the topology does not have was ignored without a word (a review:
    `--profile WiFi=lte` built the default WiFi link): refused, naming the links there are."""
    unknown = sorted(set(profiles or {}) - set(links))
    if unknown:
        raise TopologyError(
            f"this topology has no link {', '.join(map(repr, unknown))}: give profiles for "
            f"{' or '.join(links)}."
        )


TOPOLOGIES: dict[str, type[LabTopo]] = {
    "reference": ReferenceTopo,
    "nclient": NClientTopo,
    "pair": PairTopo,
}


def make_topology(name: str, **params: Any) -> LabTopo:
    """Instantiate a registered topology; unknown names get a one-sentence error."""
    try:
        cls = TOPOLOGIES[name]
    except KeyError:
        raise TopologyError(
            f"unknown topology {name!r}; choose one of {', '.join(sorted(TOPOLOGIES))}."
        ) from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise TopologyError(f"bad parameter for topology {name!r}: {exc}.") from None
