"""What carries the traffic in an experiment: the baselines every experiment compares with (plain,
kernel MPTCP, WireGuard; this module is their one home) and qtun, each set up on a running
reference-topology Lab; and the qtun variants' settings as the experiments' configs give them.

Each setup returns a `Carrier`: the `Route` the traffic takes (which node sends, the address it
listens on, what the receiver on the client connects to), the pids of the tunnel's programs
(whose CPU a point records), what the client's operating system does when an access's link goes
down and comes back, and how to take the variant down. The direction is always server ->
client c1, the client connecting (it is the one behind the accesses).

Baselines (BASELINES):
  plain         no tunnel: c1 over its default route (WiFi) to the concentrator's service
                address. The reference topology routes clients to nothing else: the servers are
                reachable through a tunnel or not at all, so the sender runs on conc, bound to
                that address (one unshaped hop shorter than srv1: the access links dominate).
  plain-5g      the same over c1's 5G access (the receiver binds its 5G address; the source
                rules route it there): what 5G alone carries, the reference for "goodput during
                the outage" (issue 12).
  mptcp         kernel MPTCP between c1 and conc's service address: both ends use IPPROTO_MPTCP
                sockets; c1 has an `ip mptcp endpoint ... subflow` per access (the 5G subflow
                leaves through the topology's 5G source-routing table), limits `subflow 2
                add_addr_accepted 2` on both ends, every subflow active. The in-kernel path
                manager, no mptcpd: a subflow that died is not re-created when its access returns.
  mptcp-backup  the same with the 5G endpoint `subflow backup`: its MP_JOIN carries the backup
                flag (RFC 8684 §3.2), so conc sends on it only when no active subflow can send —
                the kernel marks the WiFi subflow stale after `net.mptcp.stale_loss_cnt` RTOs.
                MPTCP configured for failover rather than aggregation.
  wireguard     wireguard-go on c1 and conc (the established-VPN baseline, userspace like qtun),
                inner WG_CONCENTRATOR <-> WG_CLIENT, as a static configuration leaves it: c1's
                socket is unbound, but wireguard-go keeps the source address and interface it
                last used ("sticky sockets"), so after a WiFi link-down its packets still go to
                the dead WiFi interface and conc never sees c1 move. The sender is on conc's
                inner address, or on srv1 with `to_servers` (c1 routes the servers into it).
  wireguard-os  the same with what the client's operating system does on a link-down: the
                failed access's routes are removed with its carrier (its default route, here
                the routes to conc through its gateway, in the main and its source table),
                while the 5G route to conc, with its higher metric, was there all along.
                wireguard-go's route listener (device/sticky_linux.go) sees the RTM_DELROUTE,
                asks the kernel for the route from its sticky source to conc, gets the 5G
                interface and drops the sticky source: its next packet leaves by 5G and conc's
                WireGuard, which learns c1's endpoint from authenticated packets, roams to it.
                The endpoint is never re-pointed by hand. When the link returns its routes are
                installed again (DHCP). The access's address stays: with it removed as well,
                wireguard-go's sends from the vanished source fail with ENETUNREACH, which it
                does not retry (only EINVAL), and the route query from that source fails too,
                so it never left WiFi (measured: 3.06 s UDP gap in a 3 s outage, as unmoved).
                With a bulk transfer to c1 and the data lost, c1 sends nothing but WireGuard's
                keepalive, so the persistent keepalive bounds the gap.
A blackhole (silent loss, carrier up) gives an operating system nothing to act on: the
`-os` behaviour is a link-down one.

qtun variants (`QtunVariant`, parsed from an experiment's `qtun` tables: experiments/configs/
<experiment>.toml `[<experiment>.qtun.<name>]`): `qtun concentrator` on conc and `qtun client` on
the clients (testbed/qtun.py), the sender on srv1 reached through the tunnel. A table's keys:
mode ("tunnel" | "session"), scheduler, access_reports, stream, reorder (TunnelSpec's fields),
`client` / `concentrator` (lists of `--set key=value` overrides, passed to the programs as
they are: the settings' names live in tunnel/config.py, not here), `join_order` (accesses
whose connections are brought up one after the other, in this order: the others' carrier is
down until the one before has joined), `extends` (another variant whose keys this one starts
from; its override lists are appended to), `turns_off` (an ablation variant's mechanism turned
off, "none" for the all-on reference) and `note`. A variant whose override names no setting of
its program, or whose scheduler qtun does not have, is skipped with that reason.

`Modes` keeps one of the overhead and goodput experiments' modes (plain, tunnel, session,
stream, wireguard) running across the points that use it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from experiments.runner import Context, ExperimentError, Params
from experiments.schemas import NO_AQM
from testbed.fidelity import require_fidelity, verify_link
from testbed.hosts import HostProcess, wait_in_log
from testbed.lab import Lab, LabError
from testbed.profiles import LinkProfile
from testbed.qtun import QTUN_PORT, QtunDeployment, TunnelSpec
from testbed.topologies import ACCESSES, CONCENTRATOR_V4, SERVERS_V4, Access, Plan
from tunnel.config_schema import ConfigError, check_override_values, unknown_settings

CLIENT = "c1"
WG_PORT = 51820
WG_MTU = 1420  # wireguard-go's default, set explicitly: the overhead arithmetic depends on it
WG_CONCENTRATOR, WG_CLIENT = "10.9.0.1", "10.9.0.2"  # inner addresses, /24
WG_START_TIMEOUT_S = 5.0
# How long a baseline VPN's first ping may wait for its reply: a handshake the access's loss
# took is sent again only after 5 s (WireGuard's REKEY_TIMEOUT), and the goodput sweep's 5 %
# loss once failed a point whose three pings in 0.4 s had no tunnel yet.
FIRST_REPLY_DEADLINE_S = 12


def first_reply(node: Any, target: str, deadline_s: int = FIRST_REPLY_DEADLINE_S) -> str | None:
    """None once `target` answered a ping from `node` (pinged every 0.2 s until the first
    reply or `deadline_s`), else ping's output to say why."""
    out = str(node.cmd(f"ping -n -c 1 -i 0.2 -W 1 -w {deadline_s} {target}"))
    return None if ping_received(out) else out


def ping_received(out: str) -> int:
    """How many replies ping's summary counts. More than the one asked for can come: the echo
    requests held through WireGuard's handshake retry are answered together, and ping counts
    every reply of the batch that ends it ("26 packets transmitted, 2 received")."""
    found = re.search(r"(\d+) received", out)
    return int(found.group(1)) if found else 0


@dataclass(frozen=True)
class Route:
    """Where one variant's traffic runs (see the module docstring)."""

    sender: str  # the sending node
    address: str  # the sender's address: it listens there, the receiver connects to it
    # The UDP port (on conc's side) of the packets carrying the traffic on the access link;
    # None when the traffic's own packets cross it (plain, MPTCP).
    outer_udp_port: int | None = None
    mptcp: bool = False
    # The client's address the receiver binds (None: the default route, WiFi): plain-5g's.
    client_source: str | None = None


def _ignore_access(access: str) -> None:
    pass


def _nothing() -> None:
    pass


@dataclass
class Carrier:
    """A variant running on the lab: its route, how to take it down, the pids of its programs
    ("client" on c1 and "concentrator" on conc: whose CPU a point records; none for plain and
    MPTCP), and what the client's OS does when an access's link goes down / comes back."""

    route: Route
    stop: Callable[[], None]
    deployment: QtunDeployment | None = None  # qtun's programs, for their status and pids
    programs: dict[str, int] = field(default_factory=dict)
    on_access_down: Callable[[str], None] = _ignore_access
    on_access_up: Callable[[str], None] = _ignore_access


# -- baselines ---------------------------------------------------------------------------------
# Name -> what it is (meta.json's "baselines"; the module docstring says why each is so).
BASELINES: dict[str, str] = {
    "plain": f"c1 <-> conc {CONCENTRATOR_V4} over the default route (WiFi); servers are "
    "unreachable without a tunnel in the reference topology",
    "plain-5g": f"c1 <-> conc {CONCENTRATOR_V4} over the 5G access (receiver bound to c1's 5G "
    "address): the reference for goodput during the outage",
    "mptcp": f"c1 <-> conc {CONCENTRATOR_V4}, IPPROTO_MPTCP both ends, endpoints wifi+5g "
    "subflow, limits subflow 2 add_addr_accepted 2, in-kernel path manager",
    "mptcp-backup": "as mptcp with the 5G endpoint `subflow backup` (used only when no active "
    "subflow can send)",
    "wireguard": "wireguard-go c1 <-> conc, c1 endpoint unbound but sticky (stays on the "
    "interface it last used), routes unchanged on a link-down, sender srv1",
    "wireguard-os": "as wireguard, and on a link-down c1's OS removes the access's routes (the 5G "
    "route with its higher metric was there all along): wireguard-go's route listener drops its "
    "sticky source, it leaves by 5G, conc roams; routes re-installed when the link returns",
}


def plain(lab: Lab, client: str = CLIENT, access: str | None = None) -> Carrier:
    """No tunnel; over the default route, or bound to one access's address."""
    source = lab.access(access, client).client_v4 if access else None
    return Carrier(Route(lab.plan.concentrator, CONCENTRATOR_V4, client_source=source), _nothing)


def mptcp(lab: Lab, client: str = CLIENT, backup: Sequence[str] = ()) -> Carrier:
    """Kernel MPTCP, a subflow endpoint per access; those in `backup` are backup subflows."""
    conc = lab.plan.concentrator

    def stop() -> None:
        for node in (client, conc):
            with contextlib.suppress(Exception):
                lab.node(node).cmd("ip mptcp endpoint flush")

    try:
        for node in (client, conc):
            lab.run(node, "sysctl -q -w net.mptcp.enabled=1")
            lab.run(node, "ip mptcp limits set subflow 2 add_addr_accepted 2")
        for name in ACCESSES:
            access = lab.access(name, client)
            flags = "subflow backup" if name in backup else "subflow"
            lab.run(
                client, f"ip mptcp endpoint add {access.client_v4} dev {access.client_intf} {flags}"
            )
    except BaseException:
        stop()
        raise
    return Carrier(Route(conc, CONCENTRATOR_V4, mptcp=True), stop)


def start_baseline(
    lab: Lab,
    name: str,
    workdir: Path,
    client: str = CLIENT,
    keepalive_s: int | None = None,
    to_servers: bool = False,
) -> Carrier:
    """One of BASELINES running on the lab (WireGuard: `keepalive_s` its persistent keepalive,
    `to_servers` the sender on srv1 through it)."""
    if name == "plain":
        return plain(lab, client)
    if name == "plain-5g":
        return plain(lab, client, access="5g")
    if name in ("mptcp", "mptcp-backup"):
        return mptcp(lab, client, backup=("5g",) if name == "mptcp-backup" else ())
    if name in ("wireguard", "wireguard-os"):
        wireguard = WireGuard(
            lab, workdir, client, keepalive_s, to_servers, os_routing=name == "wireguard-os"
        )
        return wireguard.start()
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}.")


# -- what an operating system does with an access whose link comes and goes -------------------
def access_lines(plan: Plan, access: Access) -> list[str]:
    """The client's `ip -batch` lines (testbed/topologies.py) that configure one access: its
    addresses and the routes through its gateway — what DHCP / NetworkManager installs when the
    access comes up and removes when it goes. Not its source rules (`ip rule`): they stay."""
    lines = plan.ip_batch.get(access.client, [])
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    addresses, routes = [], []
    for line in lines:
        words = line.removeprefix("-6 ").split()
        if words[:2] == ["addr", "add"] and words[3:5] == ["dev", access.client_intf]:
            networks.append(ipaddress.ip_interface(words[2]).network)
            addresses.append(line)
    for line in lines:
        words = line.removeprefix("-6 ").split()
        if words[:2] == ["route", "add"] and "via" in words:
            gateway = ipaddress.ip_address(words[words.index("via") + 1])
            if any(gateway in net for net in networks):
                routes.append(line)
    return addresses + routes


class OsAccessConfig:
    """The client OS's routes through its accesses: removed with a failed access's carrier and
    installed again when the link returns (see the `wireguard-os` baseline)."""

    def __init__(self, lab: Lab, client: str = CLIENT) -> None:
        self.lab = lab
        self.client = client

    def routes(self, name: str) -> list[str]:
        """The access's route lines (access_lines without its addresses)."""
        lines = access_lines(self.lab.plan, self.lab.access(name, self.client))
        return [line for line in lines if line.removeprefix("-6 ").startswith("route add ")]

    def down(self, name: str) -> None:
        for line in self.routes(name):
            self.lab.run(self.client, f"ip {line.replace('route add', 'route del', 1)}")

    def up(self, name: str) -> None:
        for line in self.routes(name):
            self.lab.run(self.client, f"ip {line.replace('route add', 'route replace', 1)}")


# -- WireGuard ---------------------------------------------------------------------------------
def wireguard_missing() -> str | None:
    """Why the WireGuard baseline cannot run here, or None."""
    if shutil.which("wireguard-go") and shutil.which("wg"):
        return None
    return "wireguard-go or wg is not installed (Debian: wireguard-go wireguard-tools)"


class WireGuard:
    """wireguard-go on a client and the concentrator (see the module docstring)."""

    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        client: str = CLIENT,
        keepalive_s: int | None = None,
        to_servers: bool = False,
        os_routing: bool = False,
        concentrator: str | None = None,
        endpoint: str = CONCENTRATOR_V4,
    ) -> None:
        """`concentrator` and `endpoint` (its address the client sends to): the reference
        topology's by default; `make bench` runs it between the pair topology's h1 and h2."""
        self.lab = lab
        self.workdir = workdir
        self.client = client
        self.keepalive_s = keepalive_s
        self.to_servers = to_servers
        self.os_routing = os_routing  # the wireguard-os baseline (module docstring)
        self.endpoint = endpoint
        self.nodes = (concentrator or lab.plan.concentrator, client)
        self.procs: dict[str, HostProcess] = {}  # node -> its wireguard-go

    @staticmethod
    def ifname(node: str) -> str:
        # One name per node: wireguard-go's control socket is /var/run/wireguard/<name>.sock,
        # one file system for every Mininet node (the same name on both ends = `wg` talks to
        # the wrong one).
        return f"qexwg-{node}"

    def route(self) -> Route:
        if self.to_servers:
            server = self.lab.plan.servers[0]
            return Route(server, self.lab.plan.server_address(server), WG_PORT)
        return Route(self.nodes[0], WG_CONCENTRATOR, WG_PORT)

    def start(self) -> Carrier:
        missing = wireguard_missing()
        if missing:
            raise LabError(f"the WireGuard baseline cannot run: {missing}.")
        conc, client = self.nodes
        self.workdir.mkdir(parents=True, exist_ok=True)
        keys = {node: self._keys(node) for node in self.nodes}
        try:
            for node in self.nodes:
                self._start_wireguard_go(node)
            self.lab.run(
                conc,
                f"wg set {self.ifname(conc)} private-key {keys[conc][0]} listen-port {WG_PORT} "
                f"peer {keys[client][1]} allowed-ips {WG_CLIENT}/32",
            )
            allowed = f"{WG_CONCENTRATOR}/32" + (f",{SERVERS_V4}" if self.to_servers else "")
            keepalive = f" persistent-keepalive {self.keepalive_s}" if self.keepalive_s else ""
            self.lab.run(
                client,
                f"wg set {self.ifname(client)} private-key {keys[client][0]} "
                f"listen-port {WG_PORT} peer {keys[conc][1]} "
                f"endpoint {self.endpoint}:{WG_PORT} allowed-ips {allowed}{keepalive}",
            )
            for node, inner in ((conc, WG_CONCENTRATOR), (client, WG_CLIENT)):
                ifname = self.ifname(node)
                self.lab.run(node, f"ip addr add {inner}/24 dev {ifname}")
                self.lab.run(node, f"ip link set {ifname} mtu {WG_MTU} up")
            if self.to_servers:
                self.lab.run(client, f"ip route add {SERVERS_V4} dev {self.ifname(client)}")
            # The client speaks first: conc learns its endpoint from this ping.
            target = self.route().address
            out = first_reply(self.lab.node(client), target)
            if out is not None:
                raise LabError(f"no ping through WireGuard to {target}: {out.strip()[-200:]}")
        except BaseException:
            self.stop()
            raise
        programs = {"client": self.procs[client].pid, "concentrator": self.procs[conc].pid}
        if not self.os_routing:
            return Carrier(self.route(), self.stop, programs=programs)
        os_config = OsAccessConfig(self.lab, client)
        return Carrier(self.route(), self.stop, None, programs, os_config.down, os_config.up)

    def _keys(self, node: str) -> tuple[Path, str]:
        """(private key file, public key) of a fresh key pair for `node`."""
        private = subprocess.run(
            ["wg", "genkey"], capture_output=True, text=True, check=True
        ).stdout.strip()
        public = subprocess.run(
            ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True
        ).stdout.strip()
        key_file = self.workdir / f"wg-{node}.key"
        key_file.write_text(private + "\n")
        key_file.chmod(0o600)
        return key_file, public

    def _start_wireguard_go(self, node: str) -> None:
        ifname = self.ifname(node)
        # -f: stay in the foreground, so the ProcessManager owns (and stops) it.
        argv = ["env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1"]
        argv += ["wireguard-go", "-f", ifname]
        proc = self.lab.procs.start(self.lab.node(node), f"wireguard-go-{ifname}", argv)
        self.procs[node] = proc
        deadline = time.monotonic() + WG_START_TIMEOUT_S
        while "qex-up" not in self.lab.node(node).cmd(
            f"ip link show {ifname} >/dev/null 2>&1 && echo qex-up"
        ):
            if time.monotonic() > deadline or not proc.running():
                log = proc.log_path.read_text(errors="replace")[-300:]
                raise LabError(f"wireguard-go did not create {ifname} on {node}: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                self.lab.procs.stop(proc)
        self.procs = {}
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.lab.node(node).cmd(f"ip link del {self.ifname(node)} 2>/dev/null")


OVPN_PORT = 1194
OVPN_CONCENTRATOR, OVPN_CLIENT = "10.10.0.1", "10.10.0.2"  # inner addresses, point to point
OVPN_START_TIMEOUT_S = 15.0


def openvpn_missing() -> str | None:
    """Why the OpenVPN baseline cannot run here (None: it can)."""
    return None if shutil.which("openvpn") else "openvpn is not installed (Debian: openvpn)"


class OpenVpn:
    """OpenVPN 2.6 between a client and a concentrator, as a site would run it: TLS with
    certificates of our CA (scripts/make-certs), UDP, a tun device, the data channel cipher it
    negotiates (AES-256-GCM), in userspace (--disable-dco: the kernel's ovpn-dco module is not
    here, and userspace is what compares with qtun and wireguard-go), point to point
    (--ifconfig), default MTU settings. The established-VPN baseline of `make bench`."""

    def __init__(
        self,
        lab: Lab,
        workdir: Path,
        client: str = CLIENT,
        concentrator: str | None = None,
        endpoint: str = CONCENTRATOR_V4,
    ) -> None:
        self.lab = lab
        self.workdir = workdir
        self.endpoint = endpoint
        self.nodes = (concentrator or lab.plan.concentrator, client)
        self.procs: dict[str, HostProcess] = {}

    @staticmethod
    def ifname(node: str) -> str:
        return f"qexovpn-{node}"[:15]

    def start(self) -> Carrier:
        missing = openvpn_missing()
        if missing:
            raise LabError(f"the OpenVPN baseline cannot run: {missing}.")
        conc, client = self.nodes
        certs = self.workdir / "ovpn-certs"
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_certs = Path(__file__).resolve().parents[1] / "scripts" / "make-certs"
        subprocess.run(
            [sys.executable, str(make_certs), "--out", str(certs), "--clients", "ovpnclient"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        common = ["openvpn", "--dev-type", "tun", "--proto", "udp", "--disable-dco",
                  "--ca", str(certs / "ca.pem"), "--dh", "none", "--verb", "3",
                  "--ping", "5", "--ping-exit", "60"]  # fmt: skip
        try:
            self._start(conc, [*common, "--dev", self.ifname(conc), "--lport", str(OVPN_PORT),
                               "--tls-server", "--cert", str(certs / "concentrator.pem"),
                               "--key", str(certs / "concentrator.key"),
                               "--ifconfig", OVPN_CONCENTRATOR, OVPN_CLIENT])  # fmt: skip
            self._start(client, [*common, "--dev", self.ifname(client), "--nobind",
                                 "--remote", self.endpoint, str(OVPN_PORT), "--tls-client",
                                 "--cert", str(certs / "ovpnclient.pem"),
                                 "--key", str(certs / "ovpnclient.key"),
                                 "--ifconfig", OVPN_CLIENT, OVPN_CONCENTRATOR])  # fmt: skip
            self._wait_ready(client)
            out = first_reply(self.lab.node(client), OVPN_CONCENTRATOR)
            if out is not None:
                raise LabError(f"no ping through OpenVPN to {OVPN_CONCENTRATOR}: {out[-200:]}")
        except BaseException:
            self.stop()
            raise
        programs = {"client": self.procs[client].pid, "concentrator": self.procs[conc].pid}
        return Carrier(Route(conc, OVPN_CONCENTRATOR, OVPN_PORT), self.stop, programs=programs)

    def _start(self, node: str, argv: list[str]) -> None:
        self.procs[node] = self.lab.procs.start(self.lab.node(node), "openvpn", argv)

    def _wait_ready(self, client: str) -> None:
        """Until the client's log says its tunnel is up (TLS done, tun configured)."""
        try:
            wait_in_log(
                self.procs[client], "Initialization Sequence Completed", OVPN_START_TIMEOUT_S
            )
        except TimeoutError as exc:
            raise LabError(f"OpenVPN did not come up on {client}: {exc}") from None

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                self.lab.procs.stop(proc)
        self.procs = {}


# -- qtun --------------------------------------------------------------------------------------
QTUN_MODES_OF_SPEC = ("tunnel", "session", "masque")
_VARIANT_KEYS: dict[str, type] = {
    "mode": str,
    "scheduler": str,
    "access_reports": bool,
    "stream": bool,
    "reorder": bool,
    "client": list,
    "concentrator": list,
    "join_order": list,
    "extends": str,
    "turns_off": str,
    "note": str,
}
_NOT_INHERITED = ("turns_off", "note")


@dataclass(frozen=True)
class QtunVariant:
    """One qtun variant of an experiment: its programs' settings (module docstring)."""

    name: str
    mode: str = "session"
    scheduler: str = "failover"
    access_reports: bool = True
    stream: bool = False
    reorder: bool = True
    client: tuple[str, ...] = ()
    concentrator: tuple[str, ...] = ()
    join_order: tuple[str, ...] = ()
    turns_off: str = ""
    note: str = ""

    def spec(
        self, client: Sequence[str] = (), concentrator: Sequence[str] = (), **changes: Any
    ) -> TunnelSpec:
        """The TunnelSpec, with more overrides after the variant's own (and TunnelSpec fields
        changed, e.g. scheduler=...)."""
        fields: dict[str, Any] = {
            "mode": self.mode,
            "scheduler": self.scheduler,
            "access_reports": self.access_reports,
            "stream": self.stream,
            "reorder": self.reorder,
        }
        fields.update(changes)
        return TunnelSpec(
            **fields,
            client_overrides=(*self.client, *client),
            concentrator_overrides=(*self.concentrator, *concentrator),
        )

    def not_ready(self, spec: TunnelSpec | None = None) -> str | None:
        """Why this variant (or the spec made from it) cannot run, or None: a scheduler qtun
        does not have, or an override naming no setting of its program."""
        from tunnel.config import ClientConfig, ConcentratorConfig
        from tunnel.session.scheduler import SCHEDULER_NAMES

        spec = spec or self.spec()
        if spec.scheduler not in SCHEDULER_NAMES:
            return f"qtun has no scheduler {spec.scheduler!r}; known: {', '.join(SCHEDULER_NAMES)}"
        unknown = unknown_settings(spec.client_overrides, ClientConfig) + unknown_settings(
            spec.concentrator_overrides, ConcentratorConfig
        )
        if unknown:
            return (
                f'{", ".join(unknown)}: not a qtun setting (README "Configuration reference" '
                "lists them); fix the experiment's config"
            )
        try:
            check_override_values(spec.client_overrides, ClientConfig)
            check_override_values(spec.concentrator_overrides, ConcentratorConfig)
        except ConfigError as exc:
            return f"{exc}; fix the experiment's config"
        return None


def _check_table(name: str, table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ExperimentError(f"{where}: qtun.{name} must be a table of settings.")
    for key, value in table.items():
        want = _VARIANT_KEYS.get(key)
        if want is None:
            raise ExperimentError(
                f"{where}: qtun.{name} has an unknown key {key!r}; "
                f"known: {', '.join(sorted(_VARIANT_KEYS))}."
            )
        if not isinstance(value, want) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            kind = "a list of strings" if want is list else f"a {want.__name__}"
            raise ExperimentError(f"{where}: qtun.{name}.{key} must be {kind}, not {value!r}.")
    return table


def parse_qtun_variants(tables: Mapping[str, Any], where: str) -> dict[str, QtunVariant]:
    """An experiment's `qtun` parameter (variant name -> table) as QtunVariants; every mistake
    is one ExperimentError naming `where` (the experiment and its config)."""
    resolved: dict[str, dict[str, Any]] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name in resolved:
            return resolved[name]
        if name in chain:
            raise ExperimentError(f"{where}: qtun.{name} extends itself ({' -> '.join(chain)}).")
        if name not in tables:
            raise ExperimentError(
                f"{where}: qtun.{chain[-1]} extends {name!r}, which has no table."
            )
        own = _check_table(name, tables[name], where)
        merged: dict[str, Any] = {}
        if "extends" in own:
            base = resolve(own["extends"], (*chain, name))
            merged = {k: v for k, v in base.items() if k not in _NOT_INHERITED}
        for key, value in own.items():
            if key in ("client", "concentrator"):
                merged[key] = [*merged.get(key, []), *value]
            elif key != "extends":
                merged[key] = value
        resolved[name] = merged
        return merged

    out: dict[str, QtunVariant] = {}
    for name in tables:
        table = resolve(name, ())
        if table.get("mode", "session") not in QTUN_MODES_OF_SPEC:
            raise ExperimentError(
                f"{where}: qtun.{name}.mode must be one of {', '.join(QTUN_MODES_OF_SPEC)}."
            )
        bad = [a for a in table.get("join_order", []) if a not in ACCESSES]
        if bad:
            raise ExperimentError(
                f"{where}: qtun.{name}.join_order names unknown access(es) {', '.join(bad)}; "
                f"accesses: {', '.join(ACCESSES)}."
            )
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in table.items()
        }
        out[name] = QtunVariant(name, **values)
    return out


def qtun(
    lab: Lab,
    spec: TunnelSpec,
    workdir: Path,
    clients: Sequence[str] | None = None,
    timeout_s: float = 20.0,
    join_order: Sequence[str] = (),
) -> Carrier:
    """qtun's programs started afresh (new certificates, new QUIC connections); the sender on
    the first server, through the tunnel.

    `join_order`: the accesses after the first have no carrier while the programs start, then
    come up one at a time, each once the one before has joined (a session's connections are
    ranked by the order they joined when nothing else tells them apart: without Access Reports,
    which access that is must be a stated choice, not a race between two handshakes)."""
    deployment = QtunDeployment(lab, spec, clients=clients, workdir=workdir)
    later = list(join_order[1:])
    try:
        for access in later:
            for client in deployment.clients:
                lab.access_down(access, client)
        deployment.start(timeout=timeout_s)
        for access in later:
            for client in deployment.clients:
                lab.access_up(access, client)

            def joined(status: dict[str, Any], access: str = access) -> bool:
                entries = status.get("accesses", [])
                return any(a.get("name") == access and a.get("connected") for a in entries)

            for client in deployment.clients:
                deployment.wait_for(client, joined, timeout_s, f"{access} joined")
    except BaseException:
        deployment.stop()
        for access in later:
            for client in deployment.clients:
                with contextlib.suppress(Exception):
                    lab.access_up(access, client)
        raise
    server = lab.plan.servers[0]
    route = Route(server, lab.plan.server_address(server), QTUN_PORT)
    first = deployment.clients[0]
    programs = {
        "client": deployment.pid(first),
        "concentrator": deployment.pid(deployment.concentrator),
    }
    return Carrier(route, deployment.stop, deployment, programs)


# -- one mode at a time ------------------------------------------------------------------------
MODES = ("plain", "tunnel", "session", "stream", "masque", "wireguard")
# the modes run by the qtun programs (masque: RFC 9484 CONNECT-IP over HTTP/3, issue 18)
QTUN_MODES = ("tunnel", "session", "stream", "masque")


def mode_spec(mode: str) -> TunnelSpec:
    """qtun's spec for a qtun mode. Stream mode: the client intercepts TCP to what the tunnel
    routes (the servers) and carries it on QUIC streams; the concentrator opens the TCP
    connection to the server. UDP still goes in DATAGRAM frames. MASQUE: CONNECT-IP on the
    same programs (issue 18)."""
    if mode in ("tunnel", "masque"):
        return TunnelSpec(mode=mode)
    return TunnelSpec(mode="session", stream=mode == "stream")


def aqm_values(mode: str, asked: Sequence[str]) -> list[str]:
    """The `queue_aqm` values a point of `mode` runs with: those asked for a qtun mode,
    NO_AQM alone for the others."""
    return list(asked) if mode in QTUN_MODES else [NO_AQM]


def aqm_spec(mode: str, aqm: str) -> TunnelSpec | None:
    """`mode`'s qtun spec with its datagram queue's AQM set at both ends (limits.queue_aqm);
    None for a mode without a tunnel queue (Modes.ensure's default)."""
    if mode not in QTUN_MODES:
        return None
    setting = (f"limits.queue_aqm={aqm}",)
    return replace(mode_spec(mode), client_overrides=setting, concentrator_overrides=setting)


def wifi_only(lab: Lab, ctx: Context[Any], verify: bool, require: bool = True) -> None:
    """The one-access network of the overhead, goodput and latency experiments: c1's WiFi link
    measured against its settings (`verify`; with `require`, an off link refuses the run), then
    its 5G access down, so that nothing (no session-mode connection, no route) can use it."""
    middle = lab.access("wifi", CLIENT).shaped
    if middle is None:
        raise ExperimentError("the reference topology's WiFi access is not shaped.")
    if verify:
        rows = verify_link(lab, middle)
        ctx.fidelity = [vars(r) for r in rows]
        if require:
            require_fidelity(rows)
    lab.access_down("5g", CLIENT)


S = TypeVar("S")


@contextlib.contextmanager
def wifi_only_session(
    params: Params,
    link: LinkProfile,
    name: str,
    state: Callable[[Lab, Path, Modes], S],
    meta: Mapping[str, Any],
) -> Iterator[Context[S]]:
    """The session of the latency and workload experiments: the reference lab with `link` on
    both accesses, WiFi checked (`verify_fidelity`) and 5G down (wifi_only), the TCP congestion
    control `params["cc"]` on c1, conc and srv1, one Modes whose mode is stopped at the end.
    `state(lab, workdir, modes)` makes the experiment's state; `meta` joins meta.json with the
    lab's description."""
    with (
        tempfile.TemporaryDirectory(prefix=f"qex-{name}-") as tmp,
        Lab(
            "reference", backend=str(params["backend"]), profiles={"wifi": link, "5g": link}
        ) as lab,
    ):
        extra_meta: dict[str, Any] = {}
        modes = Modes(lab, Path(tmp), extra_meta)
        ctx = Context(params, state(lab, Path(tmp), modes), lab=lab)
        ctx.extra_meta = extra_meta
        ctx.backend = str(lab.backend)
        wifi_only(lab, ctx, bool(params["verify_fidelity"]))
        for node in (CLIENT, lab.plan.concentrator, lab.plan.servers[0]):
            lab.set_congestion_control(node, str(params["cc"]))
        extra_meta.update({**meta, "lab": lab.describe()})
        try:
            yield ctx
        finally:
            modes.stop()


class Modes:
    """One of MODES running on the lab at a time: `ensure(mode)` tears the previous one down.

    `meta` is the experiment's extra meta.json keys: the client's TUN MTU per qtun mode goes
    into its "tun_mtu"."""

    def __init__(self, lab: Lab, workdir: Path, meta: dict[str, Any]) -> None:
        self.lab = lab
        self.workdir = workdir
        self.meta = meta
        self.mode: str | None = None
        self.carrier: Carrier | None = None
        self.starts = 0

    def ensure(self, mode: str, fresh: bool = False, spec: TunnelSpec | None = None) -> Route:
        """Bring the network into `mode`. `fresh` restarts qtun even when it already runs in
        `mode`, so that the point starts on new QUIC connections (initial congestion window),
        not on the ones the previous point left. `spec`: a qtun mode's settings (default
        `mode_spec(mode)`)."""
        reuse = spec is None and not (fresh and mode in QTUN_MODES)
        if self.carrier is not None and self.mode == mode and reuse:
            return self.carrier.route
        self.stop()
        self.starts += 1
        workdir = self.workdir / f"{mode}-{self.starts}"
        if mode == "plain":
            carrier = plain(self.lab)
        elif mode == "wireguard":
            carrier = WireGuard(self.lab, workdir).start()
        elif spec is not None or mode in QTUN_MODES:
            carrier = qtun(self.lab, spec or mode_spec(mode), workdir)
            assert carrier.deployment is not None
            tun = carrier.deployment.status(CLIENT).get("tun", {})
            self.meta.setdefault("tun_mtu", {})[mode] = tun.get("mtu")
        else:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}.")
        self.mode, self.carrier = mode, carrier
        return carrier.route

    def stop(self) -> None:
        if self.carrier is not None:
            self.carrier.stop()
        self.mode, self.carrier = None, None
