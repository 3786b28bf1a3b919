"""A running testbed: Mininet network + shapers + programs, torn down on exit, Ctrl-C or SIGTERM.

with Lab("reference", backend="auto") as lab:
    lab.shaper("wifi").set("up", delay_ms=20, loss_pct=1)
    lab.access_down("wifi"); ...; lab.access_up("wifi")
    lab.node("c1").cmd("ping -c1 10.100.0.1")
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from testbed.hosts import (
    Node,
    ProcessManager,
    RunState,
    check_congestion_control,
    set_congestion_control,
    settle_shell,
)
from testbed.shaping import Backend, LinkShaper, NetemShaper, WireShaper, resolve_backend
from testbed.topologies import Access, LabTopo, make_topology
from tunnel.user_error import RuntimeFailure

# Frames copied by a packet socket keep a partial checksum and TSO/GSO super-frames are not
# real packets: every interface next to a shaping node gets offloads off.
OFFLOADS_OFF = "rx off tx off sg off tso off gso off gro off lro off"
SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers


class LabError(RuntimeFailure):
    """The testbed could not be brought up as asked."""


class Lab:
    def __init__(
        self,
        topology: str | LabTopo,
        backend: str = "auto",
        log_dir: Path | None = None,
        congestion_control: str | None = None,
        **topo_params: Any,
    ) -> None:
        self.topo = (
            make_topology(topology, **topo_params) if isinstance(topology, str) else topology
        )
        self.plan = self.topo.plan
        if congestion_control:
            check_congestion_control(congestion_control)  # before anything is built for it
        self.requested_backend = backend
        self.backend: Backend | None = None
        self.state = RunState()
        self.log_dir = log_dir or self.state.dir / "logs"
        self.procs = ProcessManager(self.state, self.log_dir)
        self.shapers: dict[str, LinkShaper] = {}
        self.congestion_control = congestion_control
        self.cc_in_use: dict[str, str] = {}
        # (access, client) pairs whose carrier access_down took away and access_up not back yet
        self.carrier_lost: set[tuple[str, str]] = set()
        self.net: Any = None  # mininet.net.Mininet (no type hints)
        self.build_seconds = 0.0
        self._old_sigterm: SignalHandler | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> Lab:
        from mininet.log import setLogLevel
        from mininet.net import Mininet

        setLogLevel("warning")
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        started = time.monotonic()
        try:
            self.backend = resolve_backend(self.requested_backend)
            self.net = Mininet(topo=None, controller=None, build=False, autoSetMacs=False)
            # Hosts first so their shells are on record before anything can fail. ip=None:
            # Mininet would otherwise put 10.0.0.x/8 on each host's first interface.
            for name in self.plan.hosts:
                node = self.net.addHost(name, ip=None)
                self.state.add_node(name, node.pid)
            for link in self.plan.links:
                self.net.addLink(
                    link.node_a, link.node_b, intfName1=link.intf_a, intfName2=link.intf_b
                )
            self.net.build()
            self.net.start()
            self._configure()
        except BaseException:
            self.stop()
            raise
        self.build_seconds = time.monotonic() - started
        return self

    def _configure(self) -> None:
        plan = self.plan
        for host in self.net.hosts:
            # Linux caches a finished TCP connection's ssthresh and RTT per destination and
            # starts the next one from them: a run after a lossy one would inherit its window.
            # Every measurement starts from the same state instead.
            host.cmd("sysctl -q -w net.ipv4.tcp_no_metrics_save=1")
        for name in plan.routers:
            self.node(name).cmd("sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        for name in plan.clients:
            # A failed access's routes must not win the lookup: traffic falls over to the other.
            self.node(name).cmd(
                "sysctl -q -w net.ipv4.conf.all.ignore_routes_with_linkdown=1 "
                "net.ipv6.conf.all.ignore_routes_with_linkdown=1"
            )
        for name, lines in plan.ip_batch.items():
            # `ip -batch` lines take no -6 option: IPv6 lines go to a second `ip -6 -batch`.
            v4 = [line for line in lines if not line.startswith("-6 ")]
            v6 = [line[3:] for line in lines if line.startswith("-6 ")]
            out = ""
            for family, batch_lines in (("", v4), ("-6 ", v6)):
                batch = self.state.dir / f"{name}.{family.strip('- ') or '4'}.ip"
                batch.write_text("\n".join(batch_lines) + "\n")
                out += self.node(name).cmd(f"ip {family}-batch {batch} 2>&1")
            if out.strip():
                raise LabError(f"configuring {name} failed: {out.strip()}")
        for link in plan.shaped.values():
            middle = self.node(link.middle)
            # The middle node must stay silent on the link: no IPv6 link-local, no RS/NS of its own.
            middle.cmd(
                f"sysctl -q -w net.ipv6.conf.{link.intf_a}.disable_ipv6=1 "
                f"net.ipv6.conf.{link.intf_b}.disable_ipv6=1"
            )
            for node_name, intf in [
                (link.middle, link.intf_a),
                (link.middle, link.intf_b),
                *link.endpoint_intfs,
            ]:
                self.node(node_name).cmd(f"ethtool -K {intf} {OFFLOADS_OFF} >/dev/null 2>&1")
            shaper: LinkShaper
            if self.backend == "netem":
                shaper = NetemShaper(middle, link.intf_a, link.intf_b)
            else:
                sock = self.state.dir / f"{link.middle}.sock"
                shaper = WireShaper(middle, link.intf_a, link.intf_b, sock, self.procs)
            shaper.profiles = {"ab": link.profile_ab, "ba": link.profile_ba}
            self.shapers[link.middle] = shaper
            shaper.start()
        if self.congestion_control:
            for name in [*plan.clients, *plan.servers, plan.concentrator]:
                if name:
                    self.set_congestion_control(name, self.congestion_control)

    def stop(self) -> None:
        for node in self.net.hosts if self.net is not None else []:
            with contextlib.suppress(Exception):  # a shell an interrupt left mid-command
                settle_shell(node)
        for shaper in self.shapers.values():
            with contextlib.suppress(Exception):
                shaper.stop()
        self.shapers = {}
        self.procs.stop_all()
        if self.net is not None:
            with contextlib.suppress(Exception):
                self.net.stop()
            self.net = None
        self.state.restore_sysctls()
        self.state.finish()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access to the running network ------------------------------------------------------
    def node(self, name: str) -> Node:
        """The Mininet host `name`, its shell at its prompt: one an interrupt left in the middle
        of a command (no code of ours leaves a command running otherwise) is settled first, so
        that the cleanup an interrupted point runs in its `finally` works (settle_shell)."""
        try:
            node: Node = self.net[name]
        except KeyError:
            raise LabError(f"no node {name!r} in this topology.") from None
        settle_shell(node)
        return node

    def run(self, node: str, line: str) -> str:
        """Run a shell line on a node and return its output; LabError (with the output) if it
        exits non-zero."""
        out = self.node(node).cmd(f"{line} 2>&1; echo qtlab-rc=$?")
        text, _, rc = out.rpartition("qtlab-rc=")
        if rc.strip() != "0":
            raise LabError(f"`{line}` failed on {node}: {text.strip()[-300:]}")
        return text

    def access(self, name: str, client: str | None = None) -> Access:
        access = self.plan.access(name, client)
        if access is None:
            names = sorted({a.name for a in self.plan.accesses})
            raise LabError(
                f"no access {name!r} for client {client or self.plan.clients[0]}; "
                f"accesses: {', '.join(names)}."
            )
        return access

    def shaper(self, access: str, client: str | None = None) -> LinkShaper:
        """The shaper serving an access (shared by all clients in the N-client topology)."""
        middle = self.access(access, client).shaped
        if middle is None or middle not in self.shapers:
            raise LabError(f"access {access!r} is not shaped in this topology.")
        return self.shapers[middle]

    def access_down(self, access: str, client: str | None = None) -> None:
        """A real failure of one client's access: carrier goes away on its interface."""
        found = self.access(access, client)
        # recorded first: interrupted between two of its interfaces, the access still counts
        # as down, so a scenario's restore brings every one up (setting up one that is up is
        # harmless)
        self.carrier_lost.add((found.name, found.client))
        for node, intf in found.carrier:
            self.node(node).cmd(f"ip link set dev {intf} down")

    def access_up(self, access: str, client: str | None = None) -> None:
        found = self.access(access, client)
        for node, intf in found.carrier:
            self.node(node).cmd(f"ip link set dev {intf} up")
        self.carrier_lost.discard((found.name, found.client))  # once every one is up

    def access_is_down(self, access: str, client: str | None = None) -> bool:
        """Whether access_down took this access's carrier away (and access_up not back)."""
        found = self.access(access, client)
        return (found.name, found.client) in self.carrier_lost

    def access_rx_bytes(self, access: str, client: str | None = None) -> int:
        """Bytes the client's interface on `access` has received (the kernel's counter, every
        packet: tunnel overhead, re-sent copies and all)."""
        found = self.access(access, client)
        text = self.run(found.client, f"cat /sys/class/net/{found.client_intf}/statistics/rx_bytes")
        return int(text.strip())

    def set_congestion_control(self, node: str, algorithm: str) -> str:
        used = set_congestion_control(self.node(node), algorithm, self.state)
        self.cc_in_use[node] = used
        return used

    def forget_learned_paths(self) -> None:
        """Drop every host's path MTUs learnt from ICMP (or a tunnel's Packet Too Big): the
        kernel keeps them for 10 minutes (net.ipv4.route.mtu_expires), so one measurement's
        black hole would shrink the next one's packets. Experiments call it before each
        point's traffic, as `tcp_no_metrics_save` keeps TCP's window from carrying over."""
        for host in self.net.hosts:
            host.cmd("ip route flush cache; ip -6 route flush cache")

    def seed_links(self, seed: int) -> None:
        """Seed every shaped link's random loss and jitter from `seed` (each link its own
        stream, from the seed and the link's name): a point measured again, resumed or on
        another shard, meets the same losses for the same traffic (LinkShaper.seed)."""
        for name, shaper in self.shapers.items():
            digest = hashlib.sha256(f"{seed}|{name}".encode()).digest()
            shaper.seed(int.from_bytes(digest[:8], "big"))

    def describe(self) -> dict[str, Any]:
        """Metadata an experiment records: backend, shapers, congestion control."""
        return {
            "backend": self.backend,
            "shapers": {name: s.describe() for name, s in self.shapers.items()},
            # accesses whose carrier access_down took away: (access, client)
            "carrier_lost": sorted(self.carrier_lost),
            "congestion_control": dict(self.cc_in_use),
            "build_seconds": round(self.build_seconds, 2),
            # where the programs' logs are (a distributed run's shard sends them back from here)
            "log_dir": str(self.log_dir),
        }


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same clean-up path as Ctrl-C.
    raise KeyboardInterrupt
