"""The real `qtun client` against the real `qtun concentrator`, in two namespaces joined by two
veth pairs (two accesses: "wifi" and "5g"). Prefix qcl, names made unique per run; the
namespaces are removed even on failure (their TUN and veth devices go with them).

    client ns (qcl-c)                                concentrator ns (qcl-s)
      qclw0 10.91.1.2 fd00:91:1::2  ---- wifi ----  qclw1 10.91.1.1 fd00:91:1::1
      qclg0 10.91.2.2 fd00:91:2::2  ---- 5g   ----  qclg1 10.91.2.1 fd00:91:2::1
      TUN qclt0 10.8.0.3 fd00:8::2                   lo 10.91.0.1 fd00:91::1 (service address)
                                                     TUN qclc0 10.8.0.1/16 fd00:8::1/64

Checked end to end, from the status files, the traffic and the exit codes (the decisions
themselves are tested in memory: tests/unit/test_client_agent.py): ping v4+v6 inside through
tunnel mode (over IPv4 and IPv6 outside) and session mode, migration of the tunnel-mode
connection when its access goes down and failback, session failover on link down and on a
silent blackhole, recovery after a concentrator restart, clean SIGTERM, a bug stopping the
client with exit 1, a new access joining its session in 0-RTT (limits.zero_rtt).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.integration.netns import (
    End,
    Proc,
    Qtun,
    in_ns,
    ip,
    namespaces,
    process,
    sh,
    toml_text,
    unique,
    veth,
    wait_until,
)
from tests.integration.test_stream_mode import iperf3_server

pytestmark = [pytest.mark.root]

NS_C, NS_S, NS_D = unique("qcl-c"), unique("qcl-s"), unique("qcl-d")
CONC_V4, CONC_V6 = "10.8.0.1", "fd00:8::1"
ACCESSES = {  # name: (client if, server if, v4 /24 prefix, v6 /64 prefix)
    "wifi": (unique("qclw0"), unique("qclw1"), "10.91.1", "fd00:91:1"),
    "5g": (unique("qclg0"), unique("qclg1"), "10.91.2", "fd00:91:2"),
}
STATUS_INTERVAL = 0.2


@dataclass
class Net:
    """The two namespaces and their programs: the concentrator (running) and the client (not
    started: tests set its `overrides` and start it, see `start_client`)."""

    workdir: Path
    conc: Qtun
    client: Qtun

    def start_client(self, *overrides: str) -> Qtun:
        """The client with `overrides` (--set key=value), once its status says "up"."""
        self.client.overrides = overrides
        self.client.start()
        self.client.wait_status('state "up"', lambda s: s.get("state") == "up", alive=[self.conc])
        return self.client

    def wait(
        self,
        what: str,
        predicate: Callable[[], object],
        timeout: float = 20.0,
        alive: Sequence[Proc | Qtun] | None = None,
    ) -> None:
        """wait_until, failing at once if the client or the concentrator exits meanwhile
        (`alive`: the programs that must keep running, when not both)."""
        wait_until(
            what, predicate, timeout, alive=(self.client, self.conc) if alive is None else alive
        )

    def ping(self, target: str, count: int = 3, interval: float = 0.2) -> int:
        """Replies received from `target` (v4 or v6) through the tunnel, from the client ns."""
        argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", target]
        result = sh(*in_ns(NS_C, *argv), check=False, timeout=count * interval + 15)
        return replies(result.stdout)

    def set_access(self, name: str, up: bool) -> None:
        ip(NS_C, "link", "set", ACCESSES[name][0], "up" if up else "down")

    def access(self, name: str) -> dict[str, Any]:
        for entry in self.client.status().get("accesses", []):
            if entry["name"] == name:
                return dict(entry)
        return {}

    def concentrator_client(self) -> dict[str, Any]:
        """The concentrator's status entry for the client (empty before it has one)."""
        clients = self.conc.status().get("clients", [])
        return dict(clients[0]) if clients else {}

    def reports_received(self) -> int:
        """Access Reports the concentrator received from the client's current connections."""
        connections = self.concentrator_client().get("connections", [])
        return sum(int(c["counters"].get("access_reports_received", 0)) for c in connections)


def replies(ping_output: str) -> int:
    """The replies a ping counted in its summary line."""
    match = re.search(r"(\d+) received", ping_output)
    return int(match.group(1)) if match else 0


def pinging(target: str, count: int = 80, interval: float = 0.05) -> AbstractContextManager[Proc]:
    """A ping running in the client namespace, entered once its first reply came (traffic
    flows before the test breaks an access: the gap is what the test is about)."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", target]
    return process(in_ns(NS_C, *argv), ready="64 bytes", stop_by="term", name="ping")


def received(pinger: Proc) -> int:
    """The ping's replies once it ends (by itself: it has a count)."""
    return replies(pinger.read_until(" received", timeout=30))


def configs(workdir: Path, certs: Path) -> None:
    """concentrator.toml and client.toml in `workdir` (status files next to them)."""
    tls = {"ca": certs / "ca.pem"}
    conc = toml_text(
        {"modes": ["tunnel", "session"], "scheduler": "failover"},
        ("[listen]", {"addresses": ["10.91.0.1", "fd00:91::1"], "port": 4433}),
        ("[tun]", {"name": "qclc0", "addresses": [f"{CONC_V4}/16", f"{CONC_V6}/64"]}),
        ("[tls]", {**tls, "cert": certs / "concentrator.pem", "key": certs / "concentrator.key"}),
        ("[[client]]", {"name": "alice", "addresses": ["10.8.0.3/32", "fd00:8::2/128"]}),
        ("[limits]", {"idle_timeout": 10.0}),
        ("[observability]", {"status_file": workdir / "concentrator-status.json",
                             "status_interval": STATUS_INTERVAL}),
    )  # fmt: skip
    accesses = [
        ("[[access]]", {"name": name, "access_id": name, "interface": client_if,
                        "local_address": f"{v4}.2"})
        for name, (client_if, _s, v4, _v6) in ACCESSES.items()
    ]  # fmt: skip
    client = toml_text(
        {"name": "alice", "mode": "tunnel", "scheduler": "failover"},
        ("[concentrator]", {"address": "10.91.0.1", "port": 4433, "server_name": "concentrator"}),
        *accesses,
        ("[tun]", {"name": "qclt0", "addresses": ["10.8.0.3/32", "fd00:8::2/128"],
                   "routes": [f"{CONC_V4}/32", f"{CONC_V6}/128"]}),
        ("[tls]", {**tls, "cert": certs / "alice.pem", "key": certs / "alice.key"}),
        ("[limits]", {"probe_interval": 0.2, "reconnect_backoff_max": 1.0, "idle_timeout": 10.0}),
        ("[observability]", {"status_file": workdir / "client-status.json",
                             "status_interval": STATUS_INTERVAL}),
    )  # fmt: skip
    (workdir / "concentrator.toml").write_text(conc)
    (workdir / "client.toml").write_text(client)


@pytest.fixture
def net(tmp_path: Path, lab_certs: Path) -> Iterator[Net]:
    with namespaces(NS_C, NS_S):
        ip(NS_S, "addr", "add", "10.91.0.1/32", "dev", "lo")
        ip(NS_S, "addr", "add", "fd00:91::1/128", "dev", "lo")
        for metric, (client_if, server_if, v4, v6) in enumerate(ACCESSES.values(), start=1):
            veth(
                End(NS_C, client_if, [f"{v4}.2/24", f"{v6}::2/64"]),
                End(NS_S, server_if, [f"{v4}.1/24", f"{v6}::1/64"]),
            )
            ip(NS_C, "route", "add", "10.91.0.1/32", "via", f"{v4}.1", "dev", client_if,
               "metric", str(metric))  # fmt: skip
            ip(NS_C, "-6", "route", "add", "fd00:91::1/128", "via", f"{v6}::1", "dev", client_if,
               "metric", str(metric))  # fmt: skip
        configs(tmp_path, lab_certs)

        def program(ns: str, role: Literal["client", "concentrator"]) -> Qtun:
            config = tmp_path / f"{role}.toml"
            status = tmp_path / f"{role}-status.json"
            return Qtun(ns, role, config, status, tmp_path / f"{role}.log")

        n = Net(tmp_path, program(NS_S, "concentrator"), program(NS_C, "client"))
        with ExitStack() as stop:  # each stopped even if stopping the other fails
            stop.callback(n.conc.stop)
            stop.callback(n.client.stop)
            n.conc.start().wait_state()
            yield n


def test_tunnel_mode_ping_and_migration(net: Net) -> None:
    net.start_client()
    assert net.ping(CONC_V4) == 3
    assert net.ping(CONC_V6) == 3
    status = net.client.status()
    assert status["mode"] == "tunnel" and status["tun"]["mtu"] >= 1280
    assert net.access("wifi")["active"] and not net.access("5g")["connected"]

    with pinging(CONC_V4) as pinger:
        net.set_access("wifi", up=False)
        assert received(pinger) >= 60, net.client.log_tail()
    # the same connection moved (one concentrator connection, counted as a migration; "at
    # least": a 0.1 s stall of either program on a loaded machine can pass for a suspect WiFi
    # and move it twice more, which the failure detector is right to do)
    status = net.client.wait_status("a migration", lambda s: s["counters"]["migrations"] >= 1)
    assert net.access("5g")["active"] and net.access("5g")["connected"]
    assert not net.access("wifi")["available"]
    assert len(net.concentrator_client()["connections"]) == 1
    assert net.ping(CONC_V6) == 3

    # failback (default on): WiFi, the preferred access, comes back and the connection follows
    net.set_access("wifi", up=True)
    net.wait("back on wifi", lambda: net.access("wifi").get("active") is True, timeout=10)
    assert net.client.status()["counters"]["migrations"] >= 2
    assert net.ping(CONC_V4) == 3, net.client.log_tail()
    assert len(net.concentrator_client()["connections"]) == 1


def test_tunnel_mode_without_failback_stays_on_the_backup(net: Net) -> None:
    net.start_client("failback=false")
    assert net.ping(CONC_V4) == 3
    net.set_access("wifi", up=False)
    net.wait("on 5g", lambda: net.access("5g").get("active") is True, timeout=10)
    net.set_access("wifi", up=True)
    net.wait("wifi usable", lambda: net.access("wifi").get("available") is True, timeout=10)
    assert net.ping(CONC_V4) == 3
    assert net.access("5g")["active"] and net.client.status()["counters"]["migrations"] >= 1


def test_tunnel_mode_over_ipv6(net: Net) -> None:
    net.start_client(
        "concentrator.address=fd00:91::1",
        "access.0.local_address=fd00:91:1::2",
        "access.1.local_address=fd00:91:2::2",
    )
    assert net.ping(CONC_V4) == 3
    assert net.ping(CONC_V6) == 3


def test_session_mode_ping_and_failover_on_link_down(net: Net) -> None:
    net.start_client("mode=session")
    net.wait("both accesses joined", lambda: net.access("5g").get("connected") is True)
    status = net.client.status()
    assert status["mode"] == "session" and re.fullmatch(r"[0-9a-f]+", status["session_id"])
    assert net.ping(CONC_V4) == 3
    assert net.ping(CONC_V6) == 3

    with pinging(CONC_V4) as pinger:
        net.set_access("wifi", up=False)
        assert received(pinger) >= 60, net.client.log_tail() + net.conc.log_tail()
    assert not net.access("wifi")["available"]
    # the Access Report reached the concentrator, whose session stopped using WiFi
    net.wait(
        "the concentrator knows WiFi is down",
        lambda: net.concentrator_client().get("accesses_available", {}).get("wifi") is False,
        timeout=5,
    )

    net.set_access("wifi", up=True)
    net.wait("wifi back", lambda: net.access("wifi").get("available") is True)
    assert net.client.status()["session_id"] == status["session_id"]  # rejoined, same session
    assert net.ping(CONC_V4) == 3, net.client.log_tail() + net.conc.log_tail()


def test_session_mode_against_a_concentrator_of_four_workers(net: Net) -> None:
    """README "Workers": the client's two connections, opened at once, meet in one worker and
    form one session there; an access lost and back rejoins that session (its new connection
    starts with the concentrator's connection-ID byte). With random first DCIDs the two would
    land in different workers 3 times in 4 and the join would fail."""
    assert net.conc.stop() == 0
    net.conc.overrides = ("workers=4",)
    net.conc.start().wait_state()

    def holders() -> list[dict[str, Any]]:
        """Per worker holding alice: her entry in its own status file."""
        found = []
        for worker in net.conc.status().get("workers", []):
            try:
                own = json.loads(Path(worker["status_file"]).read_text())
            except (OSError, ValueError):
                continue
            found += [c for c in own["clients"] if c["name"] == "alice"]
        return found

    net.start_client("mode=session")
    net.wait("both accesses joined", lambda: net.access("5g").get("connected") is True)
    session = net.client.status()["session_id"]

    def in_one_worker() -> bool:
        return [len(c["connections"]) for c in holders()] == [2]

    net.wait("one worker holds both", in_one_worker)
    assert net.ping(CONC_V4) == 3 and net.ping(CONC_V6) == 3, net.conc.log_tail()
    net.set_access("wifi", up=False)
    net.wait("wifi unavailable", lambda: net.access("wifi").get("available") is False)
    net.set_access("wifi", up=True)
    net.wait("wifi back", lambda: net.access("wifi").get("connected") is True, timeout=30)
    assert net.client.status()["session_id"] == session
    net.wait(
        "one worker holds both again", lambda: [len(c["connections"]) for c in holders()] == [2]
    )
    assert net.ping(CONC_V4) == 3, net.client.log_tail() + net.conc.log_tail()


def test_session_mode_blackhole_detected_by_probe(net: Net) -> None:
    net.start_client("mode=session")
    net.wait("both accesses joined", lambda: net.access("5g").get("connected") is True)
    wifi_if = ACCESSES["wifi"][0]
    with pinging(CONC_V4) as pinger:
        # Silent failure: the link stays up, every tunnel packet leaving over wifi is dropped.
        rule = f'add rule inet qcl_blackhole out oifname "{wifi_if}" udp dport 4433 drop'
        chain = "add chain inet qcl_blackhole out { type filter hook output priority 0 ; }"
        sh(*in_ns(NS_C, "nft", f"add table inet qcl_blackhole; {chain}; {rule}"))
        # the link stayed up: only the liveness probe can tell
        net.wait(
            "wifi unavailable", lambda: net.access("wifi").get("available") is False, timeout=10
        )
        assert net.access("wifi")["link"]["carrier"]
        assert received(pinger) >= 50, net.client.log_tail() + net.conc.log_tail()


def test_concentrator_restart_then_clean_stop(net: Net) -> None:
    net.start_client("mode=session")
    first = net.client.status()["session_id"]
    assert net.ping(CONC_V4) == 3
    assert net.conc.stop() == 0
    net.wait(
        "client notices",
        lambda: net.client.status().get("state") == "reconnecting",
        alive=[net.client],
    )
    net.conc.start().wait_state()
    net.wait("client back up", lambda: net.client.status().get("state") == "up", timeout=30)
    assert net.ping(CONC_V4, count=5) >= 4
    assert net.client.status()["session_id"] != first  # the old session died with it

    assert net.client.stop() == 0
    assert net.client.status()["state"] == "stopped"
    assert "qclt0" not in ip(NS_C, "link", "show").stdout


def test_packet_above_datagram_budget_gets_icmp_from_the_client(net: Net) -> None:
    # A TUN MTU above the budget (configured by hand): the client itself answers packets that
    # do not fit with frag needed / Packet Too Big carrying the budget, as a router would.
    net.start_client("tun.mtu=1500")
    assert net.client.status()["tun"]["mtu"] == 1500
    for family, target in ((4, CONC_V4), (6, CONC_V6)):
        argv = ["ping", f"-{family}", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-s", "1440",
                "-M", "do", target]  # fmt: skip
        result = sh(*in_ns(NS_C, *argv), check=False)
        budget = re.search(r"mtu[ =:]+(\d+)", result.stdout + result.stderr)
        assert budget is not None, result.stdout + result.stderr
        assert 1280 <= int(budget.group(1)) < 1500
    net.client.wait_status(
        "Packet Too Big counted",
        lambda s: s.get("counters", {}).get("icmp_too_big_sent", 0) >= 2,
        timeout=5,
    )
    assert net.ping(CONC_V4) == 3  # small packets still pass


def test_stream_mode_hook_carries_tcp(net: Net) -> None:
    # Stream mode (-tcp draft) through the client's hook: a TCP connection from the client
    # namespace to a server behind the concentrator is intercepted by the StreamClient and
    # carried in a QUIC stream; the concentrator opens the TCP connection on its side.
    with namespaces(NS_D):
        veth(
            End(NS_S, unique("qcld0"), ["10.93.0.1/24"]),
            End(NS_D, unique("qcld1"), ["10.93.0.2/24"]),
        )
        assert net.conc.stop() == 0
        net.conc.overrides = ("stream.enabled=true",)
        net.conc.start().wait_state()
        net.start_client(
            "stream.enabled=true",
            'stream.intercept=["10.93.0.0/24"]',
            'tun.routes=["10.8.0.1/32", "fd00:8::1/128", "10.93.0.0/24"]',
        )
        with iperf3_server(NS_D):
            argv = ["iperf3", "-c", "10.93.0.2", "-t", "2", "-J"]
            result = sh(*in_ns(NS_C, *argv), check=False, timeout=30)
        assert result.returncode == 0, result.stdout[-2000:] + net.client.log_tail()
        transferred = json.loads(result.stdout)["end"]["sum_received"]["bytes"]
        assert transferred > 0
        # iperf3's control and data connections, and the data went through the streams (the
        # status file is rewritten every 0.2 s: wait for the last bytes to show)
        status = net.client.wait_status(
            "stream counters", lambda s: s["stream"]["bytes_up"] >= transferred, timeout=5
        )
        assert status["stream"]["opened"] >= 2


@pytest.mark.parametrize("mode", ["tunnel", "session"])
def test_concentrator_killed_client_recovers_by_stateless_reset(net: Net, mode: str) -> None:
    # SIGKILL: no CONNECTION_CLOSE. The restarted concentrator has no state for the old
    # connection, but derives the same reset tokens from its TLS key: the client's next packet
    # draws a stateless reset (RFC 9000 §10.3) and the client reconnects at once. With a probe
    # every 5 s the probe could not even tell before 15 s (and give up before 50 s): traffic
    # again before that is the reset's doing.
    net.start_client(f"mode={mode}", "limits.probe_interval=5")
    assert net.ping(CONC_V4) == 3
    net.conc.signal(signal.SIGKILL)
    net.wait("the concentrator gone", lambda: not net.conc.running(), alive=[net.client])
    # Traffic meanwhile: the failure detector judges the accesses dead, as it may whenever a
    # packet goes out in the outage (CI once caught a PING the client sent just after the kill)
    assert net.ping(CONC_V4, count=2) == 0
    net.conc.start().wait_state()
    started = time.monotonic()
    net.wait("traffic again", lambda: net.ping(CONC_V4, count=1) == 1, timeout=14)
    print(f"\n{mode} mode: traffic again {time.monotonic() - started:.2f} s after the restart")
    net.conc.wait_status(
        "reset counted",
        lambda s: s.get("counters", {}).get("stateless_resets_sent", 0) >= 1,
        timeout=5,
    )
    # the reset said the concentrator had lost the connection: the verdicts of its outage are
    # forgotten and the client is back on WiFi, its preferred access
    net.client.wait_status(
        "wifi available and carrying",
        lambda s: any(
            a["name"] == "wifi" and a["available"] and a["active"] for a in s["accesses"]
        ),
        timeout=5,
    )


def test_access_reports_off_sends_none_but_switches_locally(net: Net) -> None:
    net.start_client("mode=session", "access_reports=false")
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
    assert net.client.status()["counters"]["access_reports_sent"] == 0
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
    # the client's own configuration, run by `python -c script` instead of Qtun's `python -m`
    argv = in_ns(NS_C, sys.executable, "-c", script, "client", "-c", str(net.client.config))
    with process(argv, ready=None, stop_by="term", name="qtun client (probe bug)") as broken:
        net.wait("client up", lambda: net.client.status().get("state") == "up",
                 alive=[broken, net.conc])  # fmt: skip
        assert net.ping(CONC_V4) == 3
        trigger.touch()
        wait_until("the client to exit (it kept running with its probe dead)",
                   lambda: not broken.running(), timeout=15)  # fmt: skip
        assert broken.returncode() == 1
        log = broken.stderr()
    assert "RuntimeError: injected probe bug" in log and "traceback=" in log, log[-2000:]
    assert net.client.status()["state"] == "stopped"
    assert "qclt0" not in ip(NS_C, "link", "show").stdout


def test_session_mode_new_access_joins_in_0rtt(net: Net) -> None:
    """limits.zero_rtt on both ends (README "0-RTT"): the client keeps the concentrator's
    session ticket; when 5g comes up its connection resumes with it, sends its Join Session in
    0-RTT and is answered at once; the resumed connection then carries the traffic."""
    assert net.conc.stop() == 0
    net.conc.overrides = ("limits.zero_rtt=true",)
    net.conc.start().wait_state()
    net.set_access("5g", up=False)
    net.start_client("mode=session", "limits.zero_rtt=true")
    assert net.ping(CONC_V4) == 3
    net.set_access("5g", up=True)
    net.wait("5g joined", lambda: net.access("5g").get("connected") is True)
    assert net.client.status()["counters"].get("joins_in_0rtt") == 1, net.client.log_tail()
    net.wait(
        "the concentrator shows both connections",
        lambda: len(net.concentrator_client().get("connections", [])) == 2,
    )
    status = net.conc.status()
    assert status["counters"].get("connections_resumed") == 1, net.conc.log_tail()
    assert status["counters"].get("joins_answered_early") == 1
    assert status["tickets"]["resumed"] == 1
    net.set_access("wifi", up=False)
    net.wait("wifi unavailable", lambda: net.access("wifi").get("available") is False)
    assert net.ping(CONC_V4) == 3, net.client.log_tail() + net.conc.log_tail()
