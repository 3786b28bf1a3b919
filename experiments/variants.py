"""What carries the traffic in an experiment: the baselines every experiment compares with (plain,
kernel MPTCP, WireGuard) and qtun, each set up on a running reference-topology Lab.

Each setup returns a `Carrier`: the `Route` the traffic takes (which node sends, the address it
listens on, what the receiver on the client connects to) and how to take the variant down.
The direction is always server -> client c1, the client connecting (it is the one behind the
accesses).

  plain      no tunnel: c1 over its default route (WiFi) to the concentrator's service address.
             The reference topology routes clients to nothing else: the servers are reachable
             through a tunnel or not at all, so the sender runs on conc, bound to that address
             (one unshaped hop shorter than srv1: the access links dominate).
  mptcp      kernel MPTCP between c1 and conc's service address: both ends use IPPROTO_MPTCP
             sockets; c1 has an `ip mptcp endpoint ... subflow` per access (the 5G subflow leaves
             through the topology's 5G source-routing table), limits `subflow 2
             add_addr_accepted 2` on both ends. The in-kernel path manager, no mptcpd: a subflow
             that died is not re-created when its access returns.
  wireguard  wireguard-go on c1 and conc (the established-VPN baseline, userspace like qtun),
             inner WG_CONCENTRATOR <-> WG_CLIENT. c1's peer is conc's service address and its
             socket is unbound (the kernel picks the source): when the WiFi route is gone its
             packets leave over 5G and conc's WireGuard, which has no endpoint configured and
             learns c1's from its packets, roams to the new source address. The sender is on
             conc's inner address, or on srv1 with `to_servers` (c1 routes the servers into it).
  qtun       `qtun concentrator` on conc and `qtun client` on the clients (testbed/qtun.py); the
             sender on srv1, reached through the tunnel.

`Modes` keeps one of the overhead and goodput experiments' modes (plain, tunnel, session,
stream, wireguard) running across the points that use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.hosts import HostProcess
from testbed.lab import Lab, LabError
from testbed.qtun import QTUN_PORT, QtunDeployment, TunnelSpec
from testbed.topologies import ACCESSES, CONCENTRATOR_V4, SERVERS_V4

CLIENT = "c1"
WG_PORT = 51820
WG_MTU = 1420  # wireguard-go's default, set explicitly: the overhead arithmetic depends on it
WG_CONCENTRATOR, WG_CLIENT = "10.9.0.1", "10.9.0.2"  # inner addresses, /24
WG_START_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Route:
    """Where one variant's traffic runs (see the module docstring)."""

    sender: str  # the sending node
    address: str  # the sender's address: it listens there, the receiver connects to it
    # The UDP port (on conc's side) of the packets carrying the traffic on the access link;
    # None when the traffic's own packets cross it (plain, MPTCP).
    outer_udp_port: int | None = None
    mptcp: bool = False


@dataclass
class Carrier:
    """A variant running on the lab: its route and how to take it down."""

    route: Route
    stop: Callable[[], None]
    deployment: QtunDeployment | None = None  # qtun's programs, for their status and pids


def _nothing() -> None:
    pass


# -- plain and MPTCP ---------------------------------------------------------------------------
def plain(lab: Lab) -> Carrier:
    return Carrier(Route(lab.plan.concentrator, CONCENTRATOR_V4), _nothing)


def mptcp(lab: Lab, client: str = CLIENT) -> Carrier:
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
            lab.run(
                client, f"ip mptcp endpoint add {access.client_v4} dev {access.client_intf} subflow"
            )
    except BaseException:
        stop()
        raise
    return Carrier(Route(conc, CONCENTRATOR_V4, mptcp=True), stop)


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
    ) -> None:
        self.lab = lab
        self.workdir = workdir
        self.client = client
        self.keepalive_s = keepalive_s
        self.to_servers = to_servers
        self.nodes = (lab.plan.concentrator, client)
        self.procs: list[HostProcess] = []

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
        return Route(self.lab.plan.concentrator, WG_CONCENTRATOR, WG_PORT)

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
                f"endpoint {CONCENTRATOR_V4}:{WG_PORT} allowed-ips {allowed}{keepalive}",
            )
            for node, inner in ((conc, WG_CONCENTRATOR), (client, WG_CLIENT)):
                ifname = self.ifname(node)
                self.lab.run(node, f"ip addr add {inner}/24 dev {ifname}")
                self.lab.run(node, f"ip link set {ifname} mtu {WG_MTU} up")
            if self.to_servers:
                self.lab.run(client, f"ip route add {SERVERS_V4} dev {self.ifname(client)}")
            # The client speaks first: conc learns its endpoint from this ping.
            target = self.route().address
            out = self.lab.node(client).cmd(f"ping -n -c 3 -i 0.2 -W 2 {target}")
            if " 0 received" in out or "received" not in out:
                raise LabError(f"no ping through WireGuard to {target}: {out.strip()[-200:]}")
        except BaseException:
            self.stop()
            raise
        return Carrier(self.route(), self.stop)

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
        self.procs.append(proc)
        deadline = time.monotonic() + WG_START_TIMEOUT_S
        while "qex-up" not in self.lab.node(node).cmd(
            f"ip link show {ifname} >/dev/null 2>&1 && echo qex-up"
        ):
            if time.monotonic() > deadline or not proc.running():
                log = proc.log_path.read_text(errors="replace")[-300:]
                raise LabError(f"wireguard-go did not create {ifname} on {node}: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                self.lab.procs.stop(proc)
        self.procs = []
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.lab.node(node).cmd(f"ip link del {self.ifname(node)} 2>/dev/null")


# -- qtun --------------------------------------------------------------------------------------
def qtun_missing(spec: TunnelSpec) -> str | None:
    """Why qtun with this spec cannot run in this checkout, or None if its programs are there."""
    modules = ["tunnel.aio.client", "tunnel.aio.concentrator"]
    if spec.stream:
        modules += ["tunnel.aio.stream_client", "tunnel.aio.stream_server"]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"not implemented yet in this checkout: {', '.join(missing)} missing"
    return None


def qtun(
    lab: Lab,
    spec: TunnelSpec,
    workdir: Path,
    clients: Sequence[str] | None = None,
    timeout_s: float = 20.0,
) -> Carrier:
    """qtun's programs started afresh (new certificates, new QUIC connections); the sender on
    the first server, through the tunnel."""
    deployment = QtunDeployment(lab, spec, clients=clients, workdir=workdir)
    deployment.start(timeout=timeout_s)
    server = lab.plan.servers[0]
    route = Route(server, lab.plan.server_address(server), QTUN_PORT)
    return Carrier(route, deployment.stop, deployment)


# -- one mode at a time ------------------------------------------------------------------------
MODES = ("plain", "tunnel", "session", "stream", "wireguard")
QTUN_MODES = ("tunnel", "session", "stream")  # the modes run by the qtun programs


def mode_spec(mode: str) -> TunnelSpec:
    """qtun's spec for a qtun mode. Stream mode: the client intercepts TCP to what the tunnel
    routes (the servers) and carries it on QUIC streams; the concentrator opens the TCP
    connection to the server. UDP still goes in DATAGRAM frames."""
    return TunnelSpec(mode="tunnel" if mode == "tunnel" else "session", stream=mode == "stream")


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

    def ensure(self, mode: str, fresh: bool = False) -> Route:
        """Bring the network into `mode`. `fresh` restarts qtun even when it already runs in
        `mode`, so that the point starts on new QUIC connections (initial congestion window),
        not on the ones the previous point left."""
        reuse = not (fresh and mode in QTUN_MODES)
        if self.carrier is not None and self.mode == mode and reuse:
            return self.carrier.route
        self.stop()
        self.starts += 1
        workdir = self.workdir / f"{mode}-{self.starts}"
        if mode == "plain":
            carrier = plain(self.lab)
        elif mode == "wireguard":
            carrier = WireGuard(self.lab, workdir).start()
        elif mode in QTUN_MODES:
            carrier = qtun(self.lab, mode_spec(mode), workdir)
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
