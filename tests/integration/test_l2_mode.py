"""L2 mode end to end (README "L2 mode"): two real `qtun client`s with payload = "ethernet"
behind one real `qtun concentrator`, whose Linux bridge joins their TAP devices. Prefix ql2,
names made unique per run; the namespaces are removed even on failure (the bridge, TUN, TAP and
veth devices go with them), and every program is stopped.

    alice ns (ql2-a)               concentrator ns (ql2-s)                bob ns (ql2-b)
      ql2a0 10.92.1.2 ---- ql2a1 10.92.1.1     ql2b1 10.92.2.1 ---- ql2b0 10.92.2.2
      TAP ql2t 10.77.0.11/24    bridge ql2br: one TAP per client    TAP ql2t 10.77.0.12/24
           fd77::11/64                                                   fd77::12/64

Checked: the clients ping each other over IPv4 (ARP crosses the tunnel and the bridge floods
it) and IPv6 (Neighbour Discovery, global and link-local), in tunnel mode and session mode; the
concentrator locked each client's TAP MAC; each TAP leaves the bridge with its client and all
with the concentrator; a client without addresses gets IPv4 by DHCP (dnsmasq on the bridge,
dhclient on the TAP) and IPv6 by SLAAC from dnsmasq's Router Advertisements, across the tunnel;
a client whose payload the concentrator does not serve is told why; a missing bridge stops the
concentrator with one sentence; a client's own router (dnsmasq's Router Advertisements) reaches
no one until it is configured as the bridge's server.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.netns import (
    End,
    Qtun,
    in_ns,
    ip,
    listening,
    namespaces,
    process,
    sh,
    toml_text,
    unique,
    veth,
    wait_until,
)

pytestmark = [pytest.mark.root]

NS_S, NS_A, NS_B = unique("ql2-s"), unique("ql2-a"), unique("ql2-b")
BRIDGE, CONC_TUN, CLIENT_TAP = unique("ql2br"), unique("ql2c"), unique("ql2t")
CLIENTS = {  # name: (namespace, client-side veth, concentrator-side veth, outer /24, inner host)
    "alice": (NS_A, unique("ql2a0"), unique("ql2a1"), "10.92.1", 11),
    "bob": (NS_B, unique("ql2b0"), unique("ql2b1"), "10.92.2", 12),
}
STATUS_INTERVAL = 0.2


@dataclass
class Lab:
    workdir: Path
    certs: Path
    conc: Qtun
    clients: dict[str, Qtun]

    def start_clients(self, mode: str) -> None:
        for client in self.clients.values():
            client.overrides = (f"mode={mode}",)
            client.start()
        for client in self.clients.values():
            client.wait_status('state "up"', lambda s: s.get("state") == "up", alive=[self.conc])
        self.conc.wait_status("a TAP per client", lambda s: len(s.get("taps", {})) == 2)


def inner(host: int, v6: bool = False) -> str:
    return f"fd77::{host}" if v6 else f"10.77.0.{host}"


def ping(ns: str, target: str, *options: str, count: int = 3) -> int:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", *options, target]
    result = sh(*in_ns(ns, *argv), check=False, timeout=count * 0.2 + 20)
    match = re.search(r"(\d+) received", result.stdout)
    return int(match.group(1)) if match else 0


def mac_of(ns: str, ifname: str) -> str:
    out = ip(ns, "-o", "link", "show", ifname).stdout
    match = re.search(r"link/ether ([0-9a-f:]{17})", out)
    assert match, out
    return match.group(1)


def link_local(ns: str, ifname: str) -> str:
    out = ip(ns, "-o", "-6", "addr", "show", "dev", ifname, "scope", "link").stdout
    match = re.search(r"inet6 (fe80::[0-9a-f:]+)/64", out)
    return match.group(1) if match else ""


def bridge_ports(ns: str = NS_S) -> list[str]:
    out = ip(ns, "-o", "link", "show", "master", BRIDGE, check=False).stdout
    return re.findall(r"^\d+: ([^:@]+)", out, re.M)


def configs(workdir: Path, certs: Path) -> None:
    tls = {"ca": certs / "ca.pem"}
    conc = toml_text(
        {"modes": ["tunnel", "session"], "payloads": ["ip", "ethernet"]},
        ("[listen]", {"addresses": ["10.92.1.1", "10.92.2.1"], "port": 4433}),
        ("[tun]", {"name": CONC_TUN, "addresses": ["10.8.0.1/24"]}),
        ("[tls]", {**tls, "cert": certs / "concentrator.pem", "key": certs / "concentrator.key"}),
        ("[pool]", {"ipv4": "10.8.0.0/24", "admit": ["alice", "bob"]}),
        ("[l2]", {"bridge": BRIDGE}),
        ("[limits]", {"idle_timeout": 10.0, "session_idle_expiry": 0.5}),
        ("[observability]", {"status_file": workdir / "concentrator-status.json",
                             "status_interval": STATUS_INTERVAL}),
    )  # fmt: skip
    (workdir / "concentrator.toml").write_text(conc)
    for name, (_ns, client_if, _s, outer, host) in CLIENTS.items():
        client = toml_text(
            {"name": name, "payload": "ethernet"},
            ("[concentrator]", {"address": f"{outer}.1", "port": 4433,
                                "server_name": "concentrator"}),
            ("[[access]]", {"name": "wifi", "access_id": "wifi", "interface": client_if,
                            "local_address": f"{outer}.2"}),
            ("[tun]", {"name": CLIENT_TAP,
                       "addresses": [f"{inner(host)}/24", f"{inner(host, v6=True)}/64"]}),
            ("[tls]", {**tls, "cert": certs / f"{name}.pem", "key": certs / f"{name}.key"}),
            ("[limits]", {"probe_interval": 0.2, "idle_timeout": 10.0}),
            ("[observability]", {"status_file": workdir / f"{name}-status.json",
                                 "status_interval": STATUS_INTERVAL}),
        )  # fmt: skip
        (workdir / f"{name}.toml").write_text(client)


@pytest.fixture
def lab(tmp_path: Path, lab_certs: Path) -> Iterator[Lab]:
    with namespaces(NS_S, NS_A, NS_B):
        ip(NS_S, "link", "add", BRIDGE, "type", "bridge")
        ip(NS_S, "link", "set", BRIDGE, "up")
        for ns, client_if, server_if, outer, _host in CLIENTS.values():
            veth(End(ns, client_if, [f"{outer}.2/24"]), End(NS_S, server_if, [f"{outer}.1/24"]))
        configs(tmp_path, lab_certs)

        def program(ns: str, role: str, name: str) -> Qtun:
            return Qtun(
                ns,
                "client" if role == "client" else "concentrator",
                tmp_path / f"{name}.toml",
                tmp_path / f"{name}-status.json",
                tmp_path / f"{name}.log",
                name=f"qtun {name}",
            )

        conc = program(NS_S, "concentrator", "concentrator")
        clients = {n: program(c[0], "client", n) for n, c in CLIENTS.items()}
        with ExitStack() as stop:  # each stopped even if stopping another fails
            stop.callback(conc.stop)
            for client in clients.values():
                stop.callback(client.stop)
            conc.start().wait_state()
            yield Lab(tmp_path, lab_certs, conc, clients)


@pytest.mark.parametrize("mode", ["tunnel", "session"])
def test_two_l2_clients_on_one_bridge_ping_each_other(lab: Lab, mode: str) -> None:
    lab.start_clients(mode)
    (alice_ns, *_), (bob_ns, *_) = CLIENTS["alice"], CLIENTS["bob"]
    taps = lab.conc.status()["taps"]
    assert sorted(taps) == ["alice", "bob"] and sorted(bridge_ports()) == sorted(taps.values())
    for name in CLIENTS:
        status = lab.clients[name].status()
        assert status["mode"] == mode and status["payload"] == "ethernet"
        # the IP budget (README "Datagram budget": 1422 / 1418) less the Ethernet header
        assert status["tun"]["kind"] == "TAP"
        assert status["tun"]["mtu"] == (1408 if mode == "tunnel" else 1404)

    # IPv4: alice's ARP request is broadcast through her tunnel, flooded by the bridge into
    # bob's TAP and tunnel; bob's answer comes back unicast, learned by the bridge.
    assert ping(alice_ns, inner(12)) == 3, lab.conc.log_tail()
    assert ping(bob_ns, inner(11)) == 3
    # IPv6: Neighbour Discovery (multicast solicitations) the same way, global and link-local
    assert ping(alice_ns, inner(12, v6=True)) == 3
    bob_link_local = link_local(bob_ns, CLIENT_TAP)
    assert bob_link_local, "bob's TAP has no IPv6 link-local address"
    assert ping(alice_ns, f"{bob_link_local}%{CLIENT_TAP}") == 3
    # a packet of the TAP's whole MTU crosses unfragmented: the concentrator's TAPs have the
    # clients' MTU (a bridge drops a frame beyond the MTU of the port it leaves by)
    mtu = lab.clients["alice"].status()["tun"]["mtu"]
    assert ping(alice_ns, inner(12), "-M", "do", "-s", str(mtu - 28)) == 3
    assert ping(alice_ns, inner(12), "-M", "do", "-s", str(mtu - 27)) == 0  # one byte more

    # the concentrator locked each client's own MAC (the first it sent), and nothing was refused
    status = lab.conc.wait_status(
        "both clients' MACs locked", lambda s: all(c.get("macs") for c in s["clients"])
    )
    for client in status["clients"]:
        ns = CLIENTS[client["name"]][0]
        assert client["payload"] == "ethernet" and client["mode"] == mode
        assert client["macs"] == [mac_of(ns, CLIENT_TAP)]
        assert client["mac_filter"]["accepted"] > 0
        assert client["mac_filter"]["foreign_source"] == 0
    assert status["refused"]["payload"] == 0

    # alice takes another MAC: the concentrator drops her frames (the MAC filter locked her
    # first one), so her ARP requests never reach bob
    ip(alice_ns, "link", "set", CLIENT_TAP, "address", "02:00:00:00:0a:0b")
    ip(alice_ns, "neigh", "flush", "dev", CLIENT_TAP)
    assert ping(alice_ns, inner(12), count=2) == 0
    alice = lab.conc.wait_status(
        "alice's frames from a foreign MAC dropped",
        lambda s: any(
            c["name"] == "alice" and c["mac_filter"]["foreign_source"] > 0 for c in s["clients"]
        ),
    )
    assert alice["counters"]["mac_dropped"] > 0

    # a TAP goes with its client (session mode: once the session's idle wait is over)
    assert lab.clients["alice"].stop() == 0
    lab.conc.wait_status("alice's TAP removed", lambda s: sorted(s.get("taps", {})) == ["bob"])
    assert bridge_ports() == [taps["bob"]]
    # and every TAP with the concentrator
    assert lab.conc.stop() == 0
    assert bridge_ports() == []
    assert ip(NS_S, "link", "show", BRIDGE).returncode == 0  # the bridge is the operator's


def test_a_payload_the_concentrator_does_not_serve_is_refused_with_the_reason(lab: Lab) -> None:
    lab.conc.stop()
    lab.conc.overrides = ('payloads=["ip"]',)
    lab.conc.start().wait_state()
    alice = lab.clients["alice"]
    alice.start()
    expected = (
        "connection lost access=wifi reason='the concentrator carries IP packets but this "
        'client is configured with payload = "ethernet": set the same payload on both ends\''
    )
    wait_until(
        "the client's log names the refusal",
        lambda: expected in alice.log(),
        timeout=20,
        alive=[alice, lab.conc],
    )
    lab.conc.wait_status("one payload refusal", lambda s: s["refused"]["payload"] >= 1)
    assert lab.conc.status()["taps"] == {}


def test_a_missing_bridge_stops_the_concentrator_with_one_sentence(lab: Lab) -> None:
    lab.conc.stop()
    lab.conc.overrides = ('l2.bridge="nosuchbr0"',)
    lab.conc.start()
    wait_until("the concentrator exits", lambda: not lab.conc.running(), timeout=20)
    assert lab.conc.returncode() == 1
    assert (
        "qtun: error: bridge 'nosuchbr0' does not exist: create it (ip link add nosuchbr0 type "
        "bridge; ip link set it up) or set l2.bridge to an existing one"
    ) in lab.conc.log()
    assert "Traceback" not in lab.conc.log()


DHCP_SCRIPT = """#!/bin/sh
# dhclient's hook: only put the leased address on the TAP (its stock script would also rewrite
# /etc/resolv.conf, which the namespace shares with the host)
case "$reason" in
BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
esac
exit 0
"""


def addresses_of(ns: str, ifname: str, family: str) -> list[str]:
    out = ip(ns, "-o", family, "addr", "show", "dev", ifname, "scope", "global").stdout
    return re.findall(r"inet6? ([0-9a-f.:]+)/", out)


@pytest.mark.parametrize("mode", ["tunnel", "session"])
def test_dhcp_and_router_advertisements_cross_the_tunnel(lab: Lab, mode: str) -> None:
    """A real DHCP server (dnsmasq, also sending RAs for fd78::/64) on the bridge, a real DHCP
    client (ISC dhclient) on alice's TAP, which has no address of its own."""
    missing = [tool for tool in ("dnsmasq", "dhclient") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: run make deps (dnsmasq-base, isc-dhcp-client)"
        )
    alice_ns = CLIENTS["alice"][0]
    ip(NS_S, "addr", "add", "10.77.0.1/24", "dev", BRIDGE)
    ip(NS_S, "addr", "add", "fd78::1/64", "dev", BRIDGE, "nodad")
    config = lab.workdir / "alice.toml"
    config.write_text(config.read_text().replace('"10.77.0.11/24", "fd77::11/64"', ""))
    script = lab.workdir / "dhclient-script"
    script.write_text(DHCP_SCRIPT)
    script.chmod(0o755)
    dnsmasq = in_ns(
        NS_S, "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
        "--no-resolv", "--no-hosts", "--port=0", "--user=root", f"--interface={BRIDGE}",
        "--bind-interfaces", "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
        "--enable-ra", "--dhcp-range=fd78::,ra-only,64",
        f"--dhcp-leasefile={lab.workdir / 'dnsmasq.leases'}",
        f"--pid-file={lab.workdir / 'dnsmasq.pid'}",
    )  # fmt: skip
    with process(dnsmasq, ready=None, stop_by="term", name="dnsmasq") as server:
        wait_until("dnsmasq serves DHCP", lambda: listening(NS_S, 67, "udp"), alive=[server])
        lab.start_clients(mode)
        dhclient = in_ns(
            alice_ns, "dhclient", "-4", "-d", "-v", "-sf", str(script),
            "-lf", str(lab.workdir / "dhclient.leases"), "-pf", str(lab.workdir / "dhclient.pid"),
            CLIENT_TAP,
        )  # fmt: skip
        with process(dhclient, ready=None, stop_by="term", name="dhclient") as client:
            wait_until(
                "alice's TAP leased an IPv4 address",
                lambda: addresses_of(alice_ns, CLIENT_TAP, "-4"),
                timeout=30,
                alive=[client, server, lab.conc, *lab.clients.values()],
            )
        (leased,) = addresses_of(alice_ns, CLIENT_TAP, "-4")
        assert leased.startswith("10.77.0.1")  # from the range 10.77.0.100-150
        assert f" {leased} " in (lab.workdir / "dnsmasq.leases").read_text()
        wait_until(
            "alice's TAP configured fd78::/64 from a Router Advertisement",
            lambda: any(a.startswith("fd78::") for a in addresses_of(alice_ns, CLIENT_TAP, "-6")),
            timeout=30,
            alive=[server, lab.conc],
        )
        assert ping(alice_ns, inner(12)) == 3  # bob, static, on the same bridge
        assert ping(alice_ns, "10.77.0.1") == 3  # the DHCP server's host, on the bridge
        assert ping(alice_ns, "fd78::1") == 3


def test_a_rogue_router_on_a_client_is_dropped_unless_it_is_the_bridges_server(lab: Lab) -> None:
    """Alice runs a real router (dnsmasq sending Router Advertisements for fd66::/64 every
    3 s): the concentrator's role guard drops them (bob configures nothing from them) until
    alice is configured as the bridge's server (`[[client]] l2_server`), when bob does."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not installed: run make deps (dnsmasq-base)")
    (alice_ns, *_), (bob_ns, *_) = CLIENTS["alice"], CLIENTS["bob"]
    lab.start_clients("tunnel")
    ip(alice_ns, "addr", "add", "fd66::11/64", "dev", CLIENT_TAP, "nodad")
    dnsmasq = in_ns(
        alice_ns, "dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
        "--no-resolv", "--no-hosts", "--port=0", "--user=root", f"--interface={CLIENT_TAP}",
        "--bind-interfaces", "--enable-ra", "--dhcp-range=fd66::,ra-only,64",
        f"--ra-param={CLIENT_TAP},3", f"--pid-file={lab.workdir / 'rogue.pid'}",
    )  # fmt: skip

    def bob_has_the_rogue_prefix() -> bool:
        return any(a.startswith("fd66:") for a in addresses_of(bob_ns, CLIENT_TAP, "-6"))

    with process(dnsmasq, ready=None, stop_by="term", name="dnsmasq") as rogue:
        lab.conc.wait_status(
            "two of alice's Router Advertisements dropped",
            lambda s: any(
                c["name"] == "alice" and c["mac_filter"]["router_role"] >= 2 for c in s["clients"]
            ),
            alive=[rogue],
            timeout=30,
        )
        assert not bob_has_the_rogue_prefix()
        assert "fd66" not in ip(bob_ns, "-6", "route", "show").stdout

        # the control: the same RAs reach bob once alice is the bridge's server
        lab.conc.stop()
        config = lab.workdir / "concentrator.toml"
        config.write_text(config.read_text() + '\n[[client]]\nname = "alice"\nl2_server = true\n')
        lab.conc.start().wait_state()
        lab.conc.wait_status("both clients back", lambda s: len(s.get("taps", {})) == 2)
        wait_until(
            "bob configured fd66::/64 from alice's Router Advertisement",
            bob_has_the_rogue_prefix,
            timeout=30,
            alive=[rogue, lab.conc, *lab.clients.values()],
        )
        alice = next(c for c in lab.conc.status()["clients"] if c["name"] == "alice")
        assert alice["mac_filter"]["router_role"] == 0
