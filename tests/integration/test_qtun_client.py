"""The real `qtun client` against the real `qtun concentrator`, in two namespaces joined by two
veth pairs (two accesses: "wifi" and "5g"). Prefix qcl; the namespaces are removed even on
failure (their TUN and veth devices go with them).

    client ns (qcl-c*)                               concentrator ns (qcl-s*)
      qclw0 10.91.1.2 fd00:91:1::2  ---- wifi ----  qclw1 10.91.1.1 fd00:91:1::1
      qclg0 10.91.2.2 fd00:91:2::2  ---- 5g   ----  qclg1 10.91.2.1 fd00:91:2::1
      TUN qclt0 10.8.0.3 fd00:8::2                   lo 10.91.0.1 fd00:91::1 (service address)
                                                     TUN qclc0 10.8.0.1/16 fd00:8::1/64

Checked end to end, from the status files, the traffic and the exit codes (the decisions
themselves are tested in memory: tests/unit/test_client_agent.py): ping v4+v6 inside through
tunnel mode (over IPv4 and IPv6 outside) and session mode, migration of the tunnel-mode
connection when its access goes down and failback, session failover on link down and on a
silent blackhole, recovery after a concentrator restart, clean SIGTERM, a bug stopping the
client with exit 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
QTUN = [sys.executable, "-m", "tunnel.aio.cli"]
CONC_V4, CONC_V6 = "10.8.0.1", "fd00:8::1"
ACCESSES = {  # name: (client if, server if, v4 /24 prefix, v6 /64 prefix)
    "wifi": ("qclw0", "qclw1", "10.91.1", "fd00:91:1"),
    "5g": ("qclg0", "qclg1", "10.91.2", "fd00:91:2"),
}

if os.geteuid() != 0:  # pragma: no cover - the marker deselects these without root
    pytest.skip("needs root (namespaces, TUN)", allow_module_level=True)


def sh(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Net:
    client_ns: str
    server_ns: str
    workdir: Path
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def start(
        self, role: str, *overrides: str, program: Sequence[str] = QTUN
    ) -> subprocess.Popen[str]:
        ns = self.client_ns if role == "client" else self.server_ns
        args: list[str] = [a for o in overrides for a in ("--set", o)]
        config = self.workdir / f"{role}.toml"
        log = open(self.workdir / f"{role}.log", "a")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *program, role, "-c", str(config), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        log.close()
        self.procs[role] = proc
        return proc

    def stop(self, role: str, timeout: float = 10.0) -> int | None:
        proc = self.procs.pop(role, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                return None
        return proc.returncode

    def status(self, role: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.workdir / f"{role}-status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def log(self, role: str) -> str:
        path = self.workdir / f"{role}.log"
        return path.read_text() if path.exists() else ""

    def wait(self, what: str, predicate: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(
                        f"{role} exited ({proc.returncode}) waiting for {what}:\n"
                        + self.log(role)[-3000:]
                    )
            time.sleep(0.1)
        pytest.fail(
            f"timed out waiting for {what}\nclient log:\n{self.log('client')[-3000:]}\n"
            f"concentrator log:\n{self.log('concentrator')[-3000:]}"
        )

    def wait_up(self, role: str = "client", timeout: float = 20.0) -> None:
        self.wait(f"{role} up", lambda: self.status(role).get("state") == "up", timeout)

    def ping(self, target: str, count: int = 3, interval: float = 0.2) -> int:
        """Replies received from `target` (v4 or v6) through the tunnel, from the client ns."""
        result = sh(
            "ip",
            "netns",
            "exec",
            self.client_ns,
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "1",
            target,
            check=False,
            timeout=count * interval + 15,
        )
        match = re.search(r"(\d+) received", result.stdout)
        return int(match.group(1)) if match else 0

    def ping_background(self, target: str, count: int, interval: float) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.client_ns,
                "ping",
                "-n",
                "-c",
                str(count),
                "-i",
                str(interval),
                "-W",
                "1",
                target,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def set_access(self, name: str, up: bool) -> None:
        sh("ip", "-n", self.client_ns, "link", "set", ACCESSES[name][0], "up" if up else "down")

    def access(self, name: str) -> dict[str, Any]:
        for entry in self.status("client").get("accesses", []):
            if entry["name"] == name:
                return dict(entry)
        return {}

    def concentrator_client(self) -> dict[str, Any]:
        """The concentrator's status entry for the client (empty before it has one)."""
        clients = self.status("concentrator").get("clients", [])
        return dict(clients[0]) if clients else {}

    def reports_received(self) -> int:
        """Access Reports the concentrator received from the client's current connections."""
        connections = self.concentrator_client().get("connections", [])
        return sum(int(c["counters"].get("access_reports_received", 0)) for c in connections)


def _received(proc: subprocess.Popen[str], timeout: float) -> int:
    out, _ = proc.communicate(timeout=timeout)
    match = re.search(r"(\d+) received", out)
    return int(match.group(1)) if match else 0


def _write_configs(workdir: Path) -> None:
    certs = workdir / "certs"
    sh(
        sys.executable,
        str(REPO / "scripts" / "make-certs"),
        "--out",
        str(certs),
        "--clients",
        "alice",
        timeout=60,
    )
    (workdir / "concentrator.toml").write_text(f"""
modes = ["tunnel", "session"]
scheduler = "failover"
[listen]
addresses = ["10.91.0.1", "fd00:91::1"]
port = 4433
[tun]
name = "qclc0"
addresses = ["{CONC_V4}/16", "{CONC_V6}/64"]
[tls]
ca = "certs/ca.pem"
cert = "certs/concentrator.pem"
key = "certs/concentrator.key"
[[client]]
name = "alice"
addresses = ["10.8.0.3/32", "fd00:8::2/128"]
[limits]
idle_timeout = 10.0
[observability]
status_file = "concentrator-status.json"
status_interval = 0.2
""")
    accesses = "".join(
        f"""
[[access]]
name = "{name}"
access_id = "{name}"
interface = "{client_if}"
local_address = "{v4}.2"
"""
        for name, (client_if, _s, v4, _v6) in ACCESSES.items()
    )
    (workdir / "client.toml").write_text(f"""
name = "alice"
mode = "tunnel"
scheduler = "failover"
[concentrator]
address = "10.91.0.1"
port = 4433
server_name = "concentrator"
{accesses}
[tun]
name = "qclt0"
addresses = ["10.8.0.3/32", "fd00:8::2/128"]
routes = ["{CONC_V4}/32", "{CONC_V6}/128"]
[tls]
ca = "certs/ca.pem"
cert = "certs/alice.pem"
key = "certs/alice.key"
[limits]
probe_interval = 0.2
reconnect_backoff_max = 1.0
idle_timeout = 10.0
[observability]
status_file = "client-status.json"
status_interval = 0.2
""")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    tag = f"{os.getpid() % 100000}"
    n = Net(f"qcl-c{tag}", f"qcl-s{tag}", tmp_path)
    made: list[str] = []
    try:
        for ns in (n.client_ns, n.server_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        c, s = n.client_ns, n.server_ns
        sh("ip", "-n", s, "addr", "add", "10.91.0.1/32", "dev", "lo")
        sh("ip", "-n", s, "addr", "add", "fd00:91::1/128", "dev", "lo")
        for metric, (client_if, server_if, v4, v6) in enumerate(ACCESSES.values(), start=1):
            sh(
                "ip",
                "link",
                "add",
                client_if,
                "netns",
                c,
                "type",
                "veth",
                "peer",
                "name",
                server_if,
                "netns",
                s,
            )
            for ns, ifname, host in ((c, client_if, 2), (s, server_if, 1)):
                sh("ip", "-n", ns, "addr", "add", f"{v4}.{host}/24", "dev", ifname)
                sh("ip", "-n", ns, "addr", "add", f"{v6}::{host}/64", "dev", ifname, "nodad")
                sh("ip", "-n", ns, "link", "set", ifname, "up")
            sh(
                "ip",
                "-n",
                c,
                "route",
                "add",
                "10.91.0.1/32",
                "via",
                f"{v4}.1",
                "dev",
                client_if,
                "metric",
                str(metric),
            )
            sh(
                "ip",
                "-n",
                c,
                "-6",
                "route",
                "add",
                "fd00:91::1/128",
                "via",
                f"{v6}::1",
                "dev",
                client_if,
                "metric",
                str(metric),
            )
        _write_configs(tmp_path)
        n.start("concentrator")
        n.wait_up("concentrator")
        yield n
    finally:
        for role in list(n.procs):
            n.stop(role)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_tunnel_mode_ping_and_migration(net: Net) -> None:
    net.start("client")
    net.wait_up()
    assert net.ping(CONC_V4) == 3
    assert net.ping(CONC_V6) == 3
    status = net.status("client")
    assert status["mode"] == "tunnel" and status["tun"]["mtu"] >= 1280
    assert net.access("wifi")["active"] and not net.access("5g")["connected"]

    pinger = net.ping_background(CONC_V4, count=80, interval=0.05)
    time.sleep(1.0)  # pings flow before the access fails (the gap is what is measured)
    net.set_access("wifi", up=False)
    received = _received(pinger, timeout=30)
    assert received >= 60, net.log("client")[-3000:]
    # the same connection moved (one concentrator connection, counted as a migration)
    assert net.status("client")["counters"]["migrations"] == 1
    assert net.access("5g")["active"] and net.access("5g")["connected"]
    assert not net.access("wifi")["available"]
    assert len(net.concentrator_client()["connections"]) == 1
    assert net.ping(CONC_V6) == 3

    # failback (default on): WiFi, the preferred access, comes back and the connection follows
    net.set_access("wifi", up=True)
    net.wait("back on wifi", lambda: net.access("wifi").get("active") is True, timeout=10)
    assert net.status("client")["counters"]["migrations"] == 2
    assert net.ping(CONC_V4) == 3, net.log("client")[-3000:]
    assert len(net.concentrator_client()["connections"]) == 1


def test_tunnel_mode_without_failback_stays_on_the_backup(net: Net) -> None:
    net.start("client", "failback=false")
    net.wait_up()
    assert net.ping(CONC_V4) == 3
    net.set_access("wifi", up=False)
    net.wait("on 5g", lambda: net.access("5g").get("active") is True, timeout=10)
    net.set_access("wifi", up=True)
    net.wait("wifi usable", lambda: net.access("wifi").get("available") is True, timeout=10)
    assert net.ping(CONC_V4) == 3
    assert net.access("5g")["active"] and net.status("client")["counters"]["migrations"] == 1


def test_tunnel_mode_over_ipv6(net: Net) -> None:
    net.start(
        "client",
        "concentrator.address=fd00:91::1",
        "access.0.local_address=fd00:91:1::2",
        "access.1.local_address=fd00:91:2::2",
    )
    net.wait_up()
    assert net.ping(CONC_V4) == 3
    assert net.ping(CONC_V6) == 3


def test_session_mode_ping_and_failover_on_link_down(net: Net) -> None:
    net.start("client", "mode=session")
    net.wait_up()
    net.wait("both accesses joined", lambda: net.access("5g").get("connected") is True)
    status = net.status("client")
    assert status["mode"] == "session" and re.fullmatch(r"[0-9a-f]+", status["session_id"])
    assert net.ping(CONC_V4) == 3
    assert net.ping(CONC_V6) == 3

    pinger = net.ping_background(CONC_V4, count=80, interval=0.05)
    time.sleep(1.0)  # pings flow before the access fails (the gap is what is measured)
    net.set_access("wifi", up=False)
    received = _received(pinger, timeout=30)
    assert received >= 60, net.log("client")[-3000:] + net.log("concentrator")[-3000:]
    assert not net.access("wifi")["available"]
    # the Access Report reached the concentrator, whose session stopped using WiFi
    net.wait(
        "the concentrator knows WiFi is down",
        lambda: net.concentrator_client().get("accesses_available", {}).get("wifi") is False,
        timeout=5,
    )

    net.set_access("wifi", up=True)
    net.wait("wifi back", lambda: net.access("wifi").get("available") is True)
    assert net.status("client")["session_id"] == status["session_id"]  # rejoined, same session
    assert net.ping(CONC_V4) == 3, net.log("client")[-4000:] + net.log("concentrator")[-4000:]


def test_session_mode_blackhole_detected_by_probe(net: Net) -> None:
    net.start("client", "mode=session")
    net.wait_up()
    net.wait("both accesses joined", lambda: net.access("5g").get("connected") is True)
    pinger = net.ping_background(CONC_V4, count=80, interval=0.05)
    time.sleep(1.0)  # pings flow before the access fails (the gap is what is measured)
    # Silent failure: the link stays up, every tunnel packet leaving over wifi is dropped.
    sh(
        "ip",
        "netns",
        "exec",
        net.client_ns,
        "nft",
        "add table inet qcl_blackhole; add chain inet qcl_blackhole out "
        "{ type filter hook output priority 0 ; } ; "
        'add rule inet qcl_blackhole out oifname "qclw0" udp dport 4433 drop',
    )
    # the link stayed up: only the liveness probe can tell
    net.wait("wifi unavailable", lambda: net.access("wifi").get("available") is False, timeout=10)
    assert net.access("wifi")["link"]["carrier"]
    received = _received(pinger, timeout=30)
    assert received >= 50, net.log("client")[-3000:] + net.log("concentrator")[-3000:]


def test_concentrator_restart_then_clean_stop(net: Net) -> None:
    net.start("client", "mode=session")
    net.wait_up()
    first = net.status("client")["session_id"]
    assert net.ping(CONC_V4) == 3
    assert net.stop("concentrator") == 0
    net.wait("client notices", lambda: net.status("client").get("state") == "reconnecting")
    net.start("concentrator")
    net.wait_up("concentrator")
    net.wait("client back up", lambda: net.status("client").get("state") == "up", timeout=30)
    assert net.ping(CONC_V4, count=5) >= 4
    assert net.status("client")["session_id"] != first  # the old session died with it

    assert net.stop("client") == 0
    assert net.status("client")["state"] == "stopped"
    links = sh("ip", "-n", net.client_ns, "link", "show").stdout
    assert "qclt0" not in links


def test_packet_above_datagram_budget_gets_icmp_from_the_client(net: Net) -> None:
    # A TUN MTU above the budget (configured by hand): the client itself answers packets that
    # do not fit with frag needed / Packet Too Big carrying the budget, as a router would.
    net.start("client", "tun.mtu=1500")
    net.wait_up()
    assert net.status("client")["tun"]["mtu"] == 1500
    for family, target in ((4, CONC_V4), (6, CONC_V6)):
        result = sh(
            "ip",
            "netns",
            "exec",
            net.client_ns,
            "ping",
            f"-{family}",
            "-n",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "-s",
            "1440",
            "-M",
            "do",
            target,
            check=False,
        )
        budget = re.search(r"mtu[ =:]+(\d+)", result.stdout + result.stderr)
        assert budget is not None, result.stdout + result.stderr
        assert 1280 <= int(budget.group(1)) < 1500
    net.wait(
        "Packet Too Big counted",
        lambda: net.status("client").get("counters", {}).get("icmp_too_big_sent", 0) >= 2,
        timeout=5,
    )
    assert net.ping(CONC_V4) == 3  # small packets still pass


def test_stream_mode_hook_carries_tcp(net: Net) -> None:
    # Stream mode (-tcp draft) through the client's hook: a TCP connection from the client
    # namespace to a server behind the concentrator is intercepted by the StreamClient and
    # carried in a QUIC stream; the concentrator opens the TCP connection on its side.
    dest = f"qcl-d{os.getpid() % 100000}"
    sh("ip", "netns", "add", dest)
    try:
        sh("ip", "-n", dest, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            "qcld0",
            "netns",
            net.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            "qcld1",
            "netns",
            dest,
        )
        sh("ip", "-n", net.server_ns, "addr", "add", "10.93.0.1/24", "dev", "qcld0")
        sh("ip", "-n", dest, "addr", "add", "10.93.0.2/24", "dev", "qcld1")
        sh("ip", "-n", net.server_ns, "link", "set", "qcld0", "up")
        sh("ip", "-n", dest, "link", "set", "qcld1", "up")
        assert net.stop("concentrator") == 0
        net.start("concentrator", "stream.enabled=true")
        net.wait_up("concentrator")
        net.start(
            "client",
            "stream.enabled=true",
            'stream.intercept=["10.93.0.0/24"]',
            'tun.routes=["10.8.0.1/32", "fd00:8::1/128", "10.93.0.0/24"]',
        )
        net.wait_up()
        server = subprocess.Popen(
            ["ip", "netns", "exec", dest, "iperf3", "-s", "-1", "-B", "10.93.0.2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            net.wait(
                "iperf3 listening",
                lambda: ":5201 " in sh("ip", "netns", "exec", dest, "ss", "-Hltn").stdout,
                timeout=10,
            )
            result = sh(
                "ip",
                "netns",
                "exec",
                net.client_ns,
                "iperf3",
                "-c",
                "10.93.0.2",
                "-t",
                "2",
                "-J",
                check=False,
                timeout=30,
            )
        finally:
            if server.poll() is None:
                server.kill()
            server.wait(5)
        assert result.returncode == 0, result.stdout[-2000:] + net.log("client")[-3000:]
        received = json.loads(result.stdout)["end"]["sum_received"]["bytes"]
        assert received > 0
        # iperf3's control and data connections, and the data went through the streams (the
        # status file is rewritten every 0.2 s: wait for the last bytes to show)
        net.wait(
            "stream counters",
            lambda: net.status("client")["stream"]["bytes_up"] >= received,
            timeout=5,
        )
        assert net.status("client")["stream"]["opened"] >= 2
    finally:
        subprocess.run(["ip", "netns", "del", dest], capture_output=True, timeout=20)


@pytest.mark.parametrize("mode", ["tunnel", "session"])
def test_concentrator_killed_client_recovers_by_stateless_reset(net: Net, mode: str) -> None:
    # SIGKILL: no CONNECTION_CLOSE. The restarted concentrator has no state for the old
    # connection, but derives the same reset tokens from its TLS key: the client's next packet
    # draws a stateless reset (RFC 9000 §10.3) and the client reconnects at once. With a probe
    # every 5 s the probe could not even tell before 15 s (and give up before 50 s): traffic
    # again before that is the reset's doing.
    net.start("client", f"mode={mode}", "limits.probe_interval=5")
    net.wait_up()
    assert net.ping(CONC_V4) == 3
    proc = net.procs.pop("concentrator")
    proc.kill()
    proc.wait(10)
    net.start("concentrator")
    net.wait_up("concentrator")
    started = time.monotonic()
    net.wait("traffic again", lambda: net.ping(CONC_V4, count=1) == 1, timeout=14)
    print(f"\n{mode} mode: traffic again {time.monotonic() - started:.2f} s after the restart")
    assert net.access("wifi")["available"]  # the probe never declared the access dead
    net.wait(
        "reset counted",
        lambda: net.status("concentrator").get("counters", {}).get("stateless_resets_sent", 0) >= 1,
        timeout=5,
    )


def test_access_reports_off_sends_none_but_switches_locally(net: Net) -> None:
    net.start("client", "mode=session", "access_reports=false")
    net.wait_up()
    net.wait("both accesses joined", lambda: net.access("5g").get("connected") is True)
    net.set_access("wifi", up=False)
    net.wait("wifi unavailable", lambda: net.access("wifi").get("available") is False)
    net.wait("5g carries", lambda: net.access("5g").get("active") is True)
    # the requests leave over 5G (the replies may not come back: without a report the
    # concentrator still answers over WiFi, the point of the no-reports variant)
    before = int(net.access("5g")["counters"]["packets_out"])
    net.ping(CONC_V4, count=3)
    net.wait(
        "pings sent over 5g",
        lambda: int(net.access("5g")["counters"]["packets_out"]) >= before + 3,
        timeout=5,
    )
    assert net.status("client")["counters"]["access_reports_sent"] == 0
    assert net.reports_received() == 0
    assert net.concentrator_client().get("accesses_available", {}).get("wifi") is not False


def test_a_bug_stops_the_client(net: Net) -> None:
    # No silent task death (issue 11 §4): a bug in the probe (here an exception injected once a
    # trigger file exists) must stop the client with exit 1 and its traceback in the log, not
    # leave it saying "up" with the probe dead until a SIGTERM exits 0.
    trigger = net.workdir / "break-the-probe"
    script = (
        "import os, runpy, sys\n"
        "from tunnel.agents.access_health import LivenessProbe\n"
        "due = LivenessProbe.due\n"
        "def broken(self, now):\n"
        f"    if os.path.exists({str(trigger)!r}):\n"
        "        raise RuntimeError('injected probe bug')\n"
        "    return due(self, now)\n"
        "LivenessProbe.due = broken\n"
        "sys.argv[0] = 'qtun'\n"
        "runpy.run_module('tunnel.aio.cli', run_name='__main__')\n"
    )
    proc = net.start("client", program=[sys.executable, "-c", script])
    net.wait_up()
    assert net.ping(CONC_V4) == 3
    trigger.touch()
    deadline = time.monotonic() + 15
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() == 1, "the client kept running with its probe dead"
    net.procs.pop("client")
    log = net.log("client")
    assert "RuntimeError: injected probe bug" in log and "traceback=" in log, log[-2000:]
    assert net.status("client")["state"] == "stopped"
    assert "qclt0" not in sh("ip", "-n", net.client_ns, "link", "show").stdout
