"""qtun end to end on the reference topology (c1 with WiFi + 5G -> conc -> srv1), real traffic.

Through tunnel mode and session mode: ping, iperf3 TCP and UDP, IPv4 and IPv6 inside. Session
mode: failover when WiFi goes down mid-transfer and when it silently blackholes (the liveness
probe must notice), WiFi used again once back; the aggregation scheduler puts traffic on both
accesses; a client with a certificate of an unknown CA is refused; packets with a spoofed inner
source are dropped and counted; an oversized packet gets Packet Too Big / frag needed; a
restarted concentrator gets its client back. Measured gaps are printed (run with -s to see them).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.hosts import HostProcess, wait_listening
from testbed.lab import Lab
from testbed.qtun import QtunDeployment, QtunError, TunnelSpec
from tests.certs import make_certs
from tests.integration.lab_fixtures import deployed, iperf3_server, lossless_lab
from tests.integration.netns import wait_until

pytestmark = [pytest.mark.root, pytest.mark.mininet]

HERE = Path(__file__).resolve().parent
SERVER = {4: "10.200.1.2", 6: "fd00:200:1::2"}
IPERF_PORT = 5201
OUTAGE_PORT = 5202  # a one-off JSON server per outage transfer
# Each outage transfer: WiFi fails at 2 s and is back at 5 s, 3 s after that to judge.
OUTAGE_TRANSFER_S, OUTAGE_DOWN_AT_S, OUTAGE_UP_AT_S = 8, 2.0, 5.0
OUTAGE_S = OUTAGE_UP_AT_S - OUTAGE_DOWN_AT_S
# The client's liveness probe runs this often in session mode (blackhole detection time).
PROBE_INTERVAL_S = 0.2


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lossless_lab() as the_lab:
        yield the_lab


@pytest.fixture()
def iperf_server(lab: Lab) -> Iterator[HostProcess]:
    with iperf3_server(lab, IPERF_PORT, idle_timeout_s=40) as server:
        yield server


# -- helpers ------------------------------------------------------------------------------------
def ping_replies(node: Any, dst: str, count: int = 5, extra: str = "") -> tuple[int, str]:
    out = str(node.cmd(f"ping -n -c {count} -i 0.1 -W 2 {extra} {dst}"))
    m = re.search(r"(\d+) received", out)
    return (int(m.group(1)) if m else 0), out


def iperf3(node: Any, dst: str, options: str, seconds: int) -> dict[str, Any]:
    out = str(
        node.cmd(
            f"timeout {seconds + 20} iperf3 -c {dst} -p {IPERF_PORT} -t {seconds} -J "
            f"--connect-timeout 3000 {options}"
        )
    )
    try:
        data: dict[str, Any] = json.loads(out[out.index("{") :])
    except ValueError:
        pytest.fail(f"iperf3 printed no JSON: {out.strip()[-300:]}")
    assert "error" not in data, data["error"]
    return data


def access(status: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in status["accesses"]:
        if entry["name"] == name:
            return dict(entry)
    raise AssertionError(f"no access {name!r} in the client status: {status['accesses']}")


def access_tx(status: dict[str, Any], name: str) -> int:
    """Tunneled packets the client sent on one access so far (0 while it has no connection)."""
    counters = access(status, name)["counters"]
    return int(counters.get("packets_out", 0))


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def read_new(proc: HostProcess, offset: int) -> str:
    with open(proc.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(lab: Lab, node: str, name: str) -> int:
    path = lab.log_dir / f"{node}-{name}.log"
    return path.stat().st_size if path.exists() else 0


def longest_ping_gap(ping_output: str) -> tuple[float, int]:
    """(longest time between two consecutive echo replies in seconds, replies) of `ping -D`."""
    times = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", ping_output, re.M)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return (max(gaps) if gaps else float("inf")), len(times)


def longest_zero_run(intervals: list[dict[str, Any]]) -> float:
    """Longest stretch (s) of consecutive iperf3 intervals in which nothing was received."""
    best = run = 0.0
    for interval in intervals:
        s = interval["sum"]
        if int(s["bytes"]) == 0:
            run += float(s["end"]) - float(s["start"])
            best = max(best, run)
        else:
            run = 0.0
    return best


def delivery_resumed_at(intervals: list[dict[str, Any]], down_at: float, up_at: float) -> float:
    """When the receiver got data again after the outage began at `down_at`: the end of the
    first run of empty iperf3 intervals that starts in the outage (`down_at` when none does:
    the failover was quicker than one interval); inf if nothing came after it."""
    in_gap = False
    for interval in intervals:
        s = interval["sum"]
        start, empty = float(s["start"]), int(s["bytes"]) == 0
        if float(s["end"]) <= down_at:
            continue
        if empty and not in_gap and start < up_at:
            in_gap = True
        elif not empty and in_gap:
            return start
        elif not in_gap and start >= up_at:
            break
    return float("inf") if in_gap else down_at


def transfer_through_outage(
    lab: Lab,
    dep: QtunDeployment,
    tag: str,
    break_access: Callable[[], None],
    heal_access: Callable[[], None],
    seconds: int = OUTAGE_TRANSFER_S,
    down_at: float = OUTAGE_DOWN_AT_S,
    up_at: float = OUTAGE_UP_AT_S,
) -> dict[str, Any]:
    """An iperf3 TCP upload and a 20 ms ping running while an access fails at `down_at` and
    comes back at `up_at`; returns the measured gaps (100 ms resolution for TCP, the receiver's
    intervals), bytes delivered in the outage and after it, and the client status during it."""
    c1 = lab.node("c1")
    names = (f"qgl-ping-{tag}", f"qgl-iperf3-{tag}")
    offsets = [log_size(lab, "c1", n) for n in names]
    ping_argv = ["ping", "-D", "-n", "-i", "0.02", "-W", "1", "-w", str(seconds), SERVER[4]]
    iperf_argv = ["iperf3", "-c", SERVER[4], "-p", str(OUTAGE_PORT), "-t", str(seconds)]
    iperf_argv += ["-i", "0.1", "-J", "--get-server-output", "--connect-timeout", "3000"]
    # A server of its own with JSON output: --get-server-output then hands the client the
    # receiver's intervals, i.e. what was delivered when.
    server_argv = ["iperf3", "-s", "-1", "-J", "-i", "0.1", "-p", str(OUTAGE_PORT)]
    server = lab.procs.start(lab.node("srv1"), f"qgl-iperf3s-{tag}", server_argv)
    wait_listening(lab.node("srv1"), OUTAGE_PORT, server)
    pinger = lab.procs.start(c1, names[0], ping_argv)
    transfer = lab.procs.start(c1, names[1], iperf_argv)
    started = time.monotonic()
    healed = False
    try:
        sleep_until(started + down_at)  # the outage's place in the transfer's timeline
        break_access()
        during = dep.wait_for(
            "c1",
            lambda s: not access(s, "wifi")["available"],
            max(0.1, started + up_at - time.monotonic()),
            "WiFi unavailable before the outage ends",
        )
        sleep_until(started + up_at)
        heal_access()
        healed = True
        transfer.popen.wait(timeout=seconds + 25)
        finished = time.monotonic() - started
        pinger.popen.wait(timeout=10)
    finally:
        if not healed:
            heal_access()
        lab.procs.stop(transfer)
        lab.procs.stop(pinger)
        lab.procs.stop(server)
    ping_gap, replies = longest_ping_gap(read_new(pinger, offsets[0]))
    text = read_new(transfer, offsets[1])
    data = json.loads(text[text.index("{") :])
    assert "error" not in data, data["error"]
    server_intervals = data["server_output_json"]["intervals"]

    def received(start: float, end: float) -> int:
        return sum(
            int(i["sum"]["bytes"])
            for i in server_intervals
            if start <= float(i["sum"]["start"]) and float(i["sum"]["end"]) <= end + 0.01
        )

    resumed = delivery_resumed_at(server_intervals, down_at, up_at)
    return {
        "ping_gap_s": ping_gap,
        "ping_replies": replies,
        "tcp_gap_s": longest_zero_run(server_intervals),
        "tcp_mbps": float(data["end"]["sum_received"]["bits_per_second"]) / 1e6,
        # Once delivery resumed (over 5G), traffic flows until WiFi is back...
        "bytes_while_down": received(resumed, up_at) if resumed < up_at else 0,
        # ... and in the last second of the transfer, once WiFi is back (the scheduler
        # returns to it).
        "bytes_after": received(seconds - 1.0, seconds),
        "transfer_s": finished,
        "status_during": during,
    }


def wifi_carries_traffic_again(lab: Lab, dep: QtunDeployment, timeout: float = 15.0) -> None:
    """The failover scheduler goes back to its primary once WiFi is available again."""
    dep.wait_for(
        "c1",
        lambda s: bool(access(s, "wifi")["available"] and access(s, "wifi")["active"]),
        timeout,
        "WiFi available and active again",
    )
    before = access_tx(dep.status("c1"), "wifi")
    replies, out = ping_replies(lab.node("c1"), SERVER[4], count=10)
    assert replies >= 9, out
    # the status file is rewritten every STATUS_INTERVAL_S: wait for it to catch up
    dep.wait_for("c1", lambda s: access_tx(s, "wifi") - before >= 10, 5, "10 packets on WiFi")


# -- traffic through either mode ----------------------------------------------------------------
class TrafficChecks:
    """ping and iperf3 TCP/UDP, IPv4 and IPv6 inside, from c1's tunnel address to srv1."""

    @pytest.mark.parametrize("family", [4, 6])
    def test_ping(self, lab: Lab, dep: QtunDeployment, family: int) -> None:
        before = dep.status("c1")["tun"]
        replies, out = ping_replies(lab.node("c1"), SERVER[family], count=5)
        assert replies >= 4, out
        assert f"from {SERVER[family]}" in out
        # The echo requests were read from the TUN, the replies written to it.
        dep.wait_for(
            "c1",
            lambda s: (
                s["tun"]["rx_packets"] - before["rx_packets"] >= 5
                and s["tun"]["tx_packets"] - before["tx_packets"] >= replies
            ),
            5,
            "the pings counted on the TUN",
        )

    @pytest.mark.parametrize("family", [4, 6])
    def test_iperf3_tcp(
        self, lab: Lab, dep: QtunDeployment, iperf_server: HostProcess, family: int
    ) -> None:
        data = iperf3(lab.node("c1"), SERVER[family], "", seconds=3)
        # The connection's source is c1's tunnel address: it went through the tunnel.
        assert data["start"]["connected"][0]["local_host"] == dep.client_address("c1", family)
        mbps = float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
        print(f"\n{dep.spec.mode} mode TCP IPv{family}: {mbps:.1f} Mbit/s (WiFi shaped 50 Mbit/s)")
        assert mbps > 5

    @pytest.mark.parametrize("family", [4, 6])
    def test_iperf3_udp(
        self, lab: Lab, dep: QtunDeployment, iperf_server: HostProcess, family: int
    ) -> None:
        data = iperf3(lab.node("c1"), SERVER[family], "-u -b 20M -l 1200", seconds=2)
        total = data["end"]["sum"]
        print(
            f"\n{dep.spec.mode} mode UDP IPv{family} at 20 Mbit/s: "
            f"{total['lost_percent']:.2f} % lost"
        )
        assert total["packets"] > 1000
        assert total["lost_percent"] < 5

    def test_a_download_fits_without_a_packet_too_big(
        self, lab: Lab, dep: QtunDeployment, iperf_server: HostProcess
    ) -> None:
        """The client's TCP advertises an MSS from its TUN's MTU (its mode's budget); the
        concentrator's TUN takes packets that large whatever modes it serves, so the server's
        full-size segments pass without a Packet Too Big that would change its path MTU in
        the middle of slow start (a 1418-byte concentrator TUN did, for tunnel mode)."""
        lab.forget_learned_paths()
        data = iperf3(lab.node("c1"), SERVER[4], "-R", seconds=2)
        assert float(data["end"]["sum_received"]["bytes"]) > 0
        assert dep.status("conc")["tun"]["mtu"] >= dep.status("c1")["tun"]["mtu"]
        assert str(lab.node("srv1").cmd("ip -4 route show cache")).strip() == ""


class TestTunnelMode(TrafficChecks):
    @pytest.fixture(scope="class")
    @classmethod
    def dep(cls, lab: Lab) -> Iterator[QtunDeployment]:
        with deployed(lab, TunnelSpec(mode="tunnel")) as dep:
            yield dep


class TestSessionMode(TrafficChecks):
    @pytest.fixture(scope="class")
    @classmethod
    def dep(cls, lab: Lab) -> Iterator[QtunDeployment]:
        spec = TunnelSpec(
            mode="session",
            # the New Session's QoS value, mapped to a DSCP by the concentrator's policy
            client_overrides=(f"limits.probe_interval={PROBE_INTERVAL_S}", "qos=voice"),
            concentrator_overrides=('qos=[{value = "voice", dscp = "EF"}]',),
        )
        with deployed(lab, spec) as dep:
            yield dep

    @pytest.mark.parametrize("family", [4, 6])
    def test_the_sessions_qos_marks_what_reaches_the_server(
        self, lab: Lab, dep: QtunDeployment, family: int
    ) -> None:
        """Session draft §6.1.1: the client's QoS Flow Indication ("voice"), mapped by the
        concentrator's [[qos]] table to DSCP EF, marks the packets it forwards: the server
        counts echo requests from c1 arriving with DSCP EF."""
        srv1, table = lab.node("srv1"), "qtl_dscp"
        match = (
            "ip dscp ef icmp type echo-request"
            if family == 4
            else ("ip6 dscp ef icmpv6 type echo-request")
        )
        srv1.cmd(f"nft 'add table inet {table}; add chain inet {table} in "
                 f"{{ type filter hook input priority 0; }}; add rule inet {table} in {match} "
                 f"counter'")  # fmt: skip
        try:
            replies, out = ping_replies(lab.node("c1"), SERVER[family], count=3)
            assert replies == 3, out
            rules = str(srv1.cmd(f"nft list chain inet {table} in"))
            counted = re.search(r"counter packets (\d+)", rules)
            assert counted is not None and int(counted.group(1)) == 3, rules
        finally:
            srv1.cmd(f"nft delete table inet {table}")
        (client,) = [c for c in dep.status("conc")["clients"] if c["name"] == "c1"]
        assert (client["qos"], client["dscp"]) == ("voice", 46)

    def test_both_accesses_joined_one_session(self, dep: QtunDeployment) -> None:
        status = dep.status("c1")
        assert status["mode"] == "session" and status["session_id"]
        assert all(a["connected"] for a in status["accesses"]), status["accesses"]
        # the concentrator's file may lag the client's (its write after the 5G join): poll it
        conc = dep.wait_for(
            "conc",
            lambda s: any(len(c["connections"]) == 2 for c in s["clients"] if c["name"] == "c1"),
            5.0,
            "c1's two connections",
        )
        (client,) = [c for c in conc["clients"] if c["name"] == "c1"]
        assert client["session_id"] == status["session_id"]

    def test_failover_when_wifi_goes_down(self, lab: Lab, dep: QtunDeployment) -> None:
        result = transfer_through_outage(
            lab, dep, "down", lambda: lab.access_down("wifi"), lambda: lab.access_up("wifi")
        )
        print(
            f"\nWiFi down mid-transfer: ping gap {result['ping_gap_s'] * 1000:.0f} ms, "
            f"TCP gap {result['tcp_gap_s'] * 1000:.0f} ms, TCP {result['tcp_mbps']:.1f} Mbit/s, "
            f"{OUTAGE_TRANSFER_S} s transfer done after {result['transfer_s']:.1f} s"
        )
        assert not access(result["status_during"], "wifi")["available"]
        assert result["bytes_while_down"] > 0, "nothing arrived over 5G while WiFi was down"
        assert result["bytes_after"] > 0, "nothing arrived after WiFi came back"
        assert result["transfer_s"] < OUTAGE_TRANSFER_S + 3, "the transfer hung"
        # traffic came back (over 5G) before WiFi did: the failover, not the repair
        assert result["ping_gap_s"] < OUTAGE_S
        assert result["tcp_gap_s"] < OUTAGE_S
        wifi_carries_traffic_again(lab, dep)

    def test_failover_when_wifi_blackholes(self, lab: Lab, dep: QtunDeployment) -> None:
        shaper = lab.shaper("wifi")
        result = transfer_through_outage(
            lab, dep, "blackhole", lambda: shaper.blackhole(True), lambda: shaper.blackhole(False)
        )
        print(
            f"\nWiFi blackholed mid-transfer: ping gap {result['ping_gap_s'] * 1000:.0f} ms, "
            f"TCP gap {result['tcp_gap_s'] * 1000:.0f} ms, TCP {result['tcp_mbps']:.1f} Mbit/s, "
            f"{OUTAGE_TRANSFER_S} s transfer done after {result['transfer_s']:.1f} s "
            f"(probe interval {PROBE_INTERVAL_S} s)"
        )
        # The link stayed up: only the liveness probe can have told.
        assert not access(result["status_during"], "wifi")["available"]
        assert result["bytes_while_down"] > 0, "nothing arrived over 5G while WiFi was dark"
        assert result["bytes_after"] > 0, "nothing arrived after WiFi came back"
        assert result["transfer_s"] < OUTAGE_TRANSFER_S + 3, "the transfer hung"
        # traffic came back (over 5G) before WiFi did: the failover, not the repair
        assert result["ping_gap_s"] < OUTAGE_S
        assert result["tcp_gap_s"] < OUTAGE_S
        wifi_carries_traffic_again(lab, dep)

    @pytest.mark.parametrize("family", [4, 6])
    def test_spoofed_inner_source_is_dropped_and_counted(
        self, lab: Lab, dep: QtunDeployment, family: int
    ) -> None:
        spoofed = {4: "10.8.0.99", 6: "fd00:8::99"}[family]
        srv1, c1 = lab.node("srv1"), lab.node("c1")
        seen_before = echo_requests_received(srv1, family)
        dropped_before = spoofed_drops(dep)
        out = str(
            c1.cmd(
                f"{sys.executable} {HERE / 'qgl_spoof.py'} --src {spoofed} "
                f"--dst {SERVER[family]} --count 5 2>&1"
            )
        )
        assert "sent 5" in out, out
        dep.wait_for(
            "conc",
            lambda s: spoofed_drops_in(s) - dropped_before >= 5,
            5,
            "5 spoofed packets dropped",
        )
        assert echo_requests_received(srv1, family) == seen_before
        # The client's own address still gets through.
        assert ping_replies(c1, SERVER[family], count=2)[0] >= 1

    def test_unknown_certificate_is_refused(self, lab: Lab, dep: QtunDeployment) -> None:
        rogue = dep.workdir / "rogue"
        make_certs(rogue, "--clients", "c1", "--force")  # a CA of its own
        refused_before = int(dep.status("conc")["refused"]["auth"])
        overrides = [
            f"tls.cert={rogue / 'c1.pem'}",
            f"tls.key={rogue / 'c1.key'}",
            "tun.name=qglrogue0",
            f"observability.status_file={rogue / 'status.json'}",
        ]
        proc = dep.launch("c1", "client", overrides, tag="rogue")
        try:
            dep.wait_for(
                "conc",
                lambda s: int(s["refused"]["auth"]) > refused_before,
                15,
                "a refused authentication",
            )
            # the refused client keeps trying, never up (it says why in its log)
            rogue_status = rogue / "status.json"
            wait_until("the refused client's status file", rogue_status.exists, timeout=10)
            status = json.loads(rogue_status.read_text())
            assert status["state"] == "connecting" and not status["tun"]["mtu"], status
            assert proc.popen.poll() is None
        finally:
            lab.procs.stop(proc)
        # The legitimate client was not disturbed.
        assert ping_replies(lab.node("c1"), SERVER[4], count=2)[0] >= 1

    def test_concentrator_restart_client_reconnects(self, lab: Lab, dep: QtunDeployment) -> None:
        c1 = lab.node("c1")
        started = time.monotonic()
        dep.restart_concentrator(wait_clients=False)  # the test times the recovery itself
        try:
            wait_until(
                "traffic after the concentrator restart",
                lambda: ping_replies(c1, SERVER[4], count=1)[0] > 0,
                timeout=60,
                interval=0.2,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; client log:\n{dep.log_tail('c1')}") from None
        recovered = time.monotonic() - started
        print(f"\nconcentrator restart: traffic flows again after {recovered:.1f} s")
        conc = dep.wait_clients_back(10)
        assert [c["name"] for c in conc["clients"]] == ["c1"]
        assert ping_replies(c1, SERVER[6], count=3)[0] >= 2
        assert dep.status("c1")["session_id"]


class TestAggregation:
    @pytest.fixture(scope="class")
    @classmethod
    def dep(cls, lab: Lab) -> Iterator[QtunDeployment]:
        with deployed(lab, TunnelSpec(mode="session", scheduler="wrr")) as dep:
            yield dep

    def test_both_accesses_carry_traffic(
        self, lab: Lab, dep: QtunDeployment, iperf_server: HostProcess
    ) -> None:
        before = dep.status("c1")
        data = iperf3(lab.node("c1"), SERVER[4], "", seconds=3)
        finished = time.time()
        after = dep.wait_for("c1", lambda s: s["time"] > finished, 5, "a status after the transfer")
        sent = {a: access_tx(after, a) - access_tx(before, a) for a in ("wifi", "5g")}
        mbps = float(data["end"]["sum_received"]["bits_per_second"]) / 1e6
        print(f"\nwrr scheduler: {mbps:.1f} Mbit/s, packets per access {sent}")
        total = sum(sent.values())
        assert total > 1000
        assert min(sent.values()) > 0.1 * total, sent


class TestPacketTooBig:
    """A TUN MTU above the datagram budget: the client must answer oversized packets as a
    router would (ICMP frag needed / ICMPv6 Packet Too Big), and the sender's kernel learns it."""

    @pytest.fixture(scope="class")
    @classmethod
    def dep(cls, lab: Lab) -> Iterator[QtunDeployment]:
        with deployed(lab, TunnelSpec(mode="tunnel", client_overrides=("tun.mtu=1500",))) as dep:
            yield dep

    @pytest.mark.parametrize("family", [4, 6])
    def test_oversized_packet_gets_packet_too_big(
        self, lab: Lab, dep: QtunDeployment, family: int
    ) -> None:
        c1 = lab.node("c1")
        answered_before = int(dep.status("c1")["counters"].get("icmp_too_big_sent", 0))
        size = 1472 if family == 4 else 1452  # a 1500-byte packet
        out = str(c1.cmd(f"ping -{family} -n -c 2 -i 0.2 -W 1 -M do -s {size} {SERVER[family]}"))
        route = str(c1.cmd(f"ip -{family} route get {SERVER[family]}"))
        print(f"\nIPv{family} 1500-byte ping: {out.strip()[-300:]}\nroute: {route.strip()}")
        assert re.search(r"frag needed|packet too big|message too long", out, re.I), out
        m = re.search(r"mtu (\d+)", route)
        assert m and int(m.group(1)) < 1500, route
        # qtun itself answered (not a kernel on the way).
        dep.wait_for(
            "c1",
            lambda s: int(s["counters"].get("icmp_too_big_sent", 0)) > answered_before,
            5,
            "a Packet Too Big counted",
        )
        # A packet that fits still goes through.
        assert (
            ping_replies(c1, SERVER[family], count=2, extra=f"-M do -s {int(m.group(1)) - 60}")[0]
            >= 1
        )


# -- counters read from /proc and the status files ----------------------------------------------
def echo_requests_received(node: Any, family: int) -> int:
    if family == 4:
        lines = str(node.cmd("cat /proc/net/snmp")).splitlines()
        icmp = [line.split() for line in lines if line.startswith("Icmp:")]
        return int(dict(zip(icmp[0], icmp[1], strict=True))["InEchos"])
    out = str(node.cmd("cat /proc/net/snmp6"))
    m = re.search(r"^Icmp6InEchos\s+(\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def spoofed_drops(dep: QtunDeployment) -> int:
    """Packets from c1 the concentrator's ingress filter dropped for their source (RFC 2827)."""
    return spoofed_drops_in(dep.status("conc"))


def spoofed_drops_in(conc_status: dict[str, Any]) -> int:
    """spoofed_drops, from a concentrator status."""
    (client,) = [c for c in conc_status["clients"] if c["name"] == "c1"]
    return int(client["ingress"]["spoofed_source"])


class TestGlue:
    def test_a_program_that_cannot_start_fails_fast_with_its_log(self, lab: Lab) -> None:
        spec = TunnelSpec(concentrator_overrides=("listen.qgl_typo=1",))
        dep = QtunDeployment(lab, spec)
        started = time.monotonic()
        with pytest.raises(QtunError, match=r"(?s)not running.*qgl_typo"):
            dep.start(timeout=20)
        assert time.monotonic() - started < 10
        assert dep.exit_codes["conc"] == 2  # a configuration error (README: exit codes)
        assert "qgl_typo" in dep.log_path("conc").read_text()  # the log is kept
        assert not dep.procs
        assert not [p for p in lab.procs.procs if p.name.startswith("qtun")]

    def test_a_refused_client_fails_start_with_both_logs(self, lab: Lab) -> None:
        spec = TunnelSpec(mode="session", concentrator_overrides=('modes=["tunnel"]',))
        dep = QtunDeployment(lab, spec)
        with pytest.raises(QtunError, match=r"(?s)log tail:.*concentrator log tail:") as e:
            dep.start(timeout=5)
        print(f"\n{e.value}")
        assert not dep.procs
        assert int(dep.status("conc")["refused"]["mode"]) >= 1  # refused for its mode
