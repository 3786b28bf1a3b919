"""Stream mode end to end (-tcp draft, issue 5) between three namespaces of our own:

    qst-c (applications + StreamClient, nft interception, SOCKS front)
      -- veth 10.81.0.0/24, fd00:81::/64 -- qst-s (StreamServer)
      -- veth 10.200.1.0/24, fd00:200:1::/64 -- qst-d (destination servers; routes
         10.200.99.0/24 and fd00:200:99::/48 as unreachable, so it answers with ICMP)

The tunnel endpoints are tests/integration/qst_peer.py (QuicServer/QuicClient +
TunnelConnection + StreamServer/StreamClient over real UDP); the applications are real TCP
programs: python's http.server + urllib, iperf3, and tests/integration/qst_apps.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.integration.qta_netns import REPO
from tunnel.config import StreamServerConfig

pytestmark = pytest.mark.root

PID = os.getpid()
NS_C, NS_S, NS_D = f"qst-c{PID}", f"qst-s{PID}", f"qst-d{PID}"
IF = {k: f"qst{k}{PID}"[:15] for k in ("a", "b", "c", "d")}
NFT_TABLE = f"qst_{PID}"
LISTEN_PORT = 4480
SOCKS_PORT = 1080
DEST4, DEST6 = "10.200.1.2", "fd00:200:1::2"
UNREACHABLE4, UNREACHABLE6 = "10.200.99.1", "fd00:200:99::1"
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def sh(*args: str, timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def ns_cmd(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def py_cmd(ns: str, module: str, *args: str) -> list[str]:
    return ns_cmd(ns, sys.executable, "-m", module, *args)


@contextmanager
def lab_namespaces(client_routes: bool = True) -> Iterator[None]:
    """The three namespaces. `client_routes`: route the destinations from the client towards
    the concentrator (a qtun client routes them into its TUN itself)."""
    made: list[str] = []
    try:
        for ns in (NS_C, NS_S, NS_D):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for (ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b) in (
            (
                (NS_C, IF["a"], ["10.81.0.1/24", "fd00:81::1/64"]),
                (NS_S, IF["b"], ["10.81.0.2/24", "fd00:81::2/64"]),
            ),
            (
                (NS_S, IF["c"], ["10.200.1.1/24", "fd00:200:1::1/64"]),
                (NS_D, IF["d"], ["10.200.1.2/24", "fd00:200:1::2/64"]),
            ),
        ):
            sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
               "netns", ns_b)  # fmt: skip
            for ns, ifname, addrs in ((ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b)):
                for addr in addrs:
                    extra = ["nodad"] if ":" in addr else []
                    sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname, *extra)
                sh("ip", "-n", ns, "link", "set", ifname, "up")
        # the client routes the destinations towards the tunnel side (the route must exist
        # for connect() to reach the nft output hook that redirects it)
        if client_routes:
            sh("ip", "-n", NS_C, "route", "add", "10.200.0.0/16", "via", "10.81.0.2")
            sh("ip", "-n", NS_C, "-6", "route", "add", "fd00:200::/32", "via", "fd00:81::2")
        sh("ip", "-n", NS_S, "route", "add", "10.200.0.0/16", "via", "10.200.1.2")
        sh("ip", "-n", NS_S, "-6", "route", "add", "fd00:200::/32", "via", "fd00:200:1::2")
        sh(*ns_cmd(NS_D, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        sh(*ns_cmd(NS_D, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"))
        sh("ip", "-n", NS_D, "route", "add", "unreachable", "10.200.99.0/24")
        sh("ip", "-n", NS_D, "-6", "route", "add", "unreachable", "fd00:200:99::/48")
        yield
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@contextmanager
def process(cmd: list[str], ready: str | None = "READY", timeout: float = 20.0) -> Iterator[Proc]:
    """A child that prints `ready` when up (None: do not wait); stopped on exit: stdin
    closed (our peers stop on EOF), then SIGTERM, then SIGKILL, by its own pid."""
    # stderr to a file: a pipe nobody reads would block a chatty child
    with tempfile.TemporaryFile("w+") as log:
        popen = subprocess.Popen(
            cmd, cwd=REPO, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, text=True,
        )  # fmt: skip
        proc = Proc(popen, log)
        try:
            if ready is not None:
                proc.expect(ready, timeout)
            yield proc
        finally:
            if popen.poll() is None:
                if popen.stdin is not None:
                    with suppress(OSError):
                        popen.stdin.close()
                try:
                    popen.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    popen.terminate()
                    try:
                        popen.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        popen.kill()
                        popen.wait(timeout=10)


class Proc:
    """A child process; its stdout lines are read by a thread so that waiting for one is
    bounded in time even if the child prints nothing."""

    def __init__(self, popen: subprocess.Popen[str], log: IO[str]) -> None:
        self.popen = popen
        self.log = log
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        self.popen.kill()
        raise AssertionError(
            f"no {prefix!r} line from {self.popen.args!r}; stderr:\n{self.stderr()}"
        )

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def stats(self) -> dict[str, int]:
        self.send("stats")
        return dict(json.loads(self.expect("STATS ")))

    def result(self, timeout: float = 60.0) -> dict[str, object]:
        return dict(json.loads(self.expect("RESULT ", timeout)))


def app(ns: str, *args: str, timeout: float = 60.0) -> dict[str, object]:
    out = subprocess.run(
        py_cmd(ns, "tests.integration.qst_apps", *args),
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise AssertionError(f"no RESULT from {args}: {out.stdout}\n{out.stderr}")


def dest_server(*args: str) -> AbstractContextManager[Proc]:
    return process(py_cmd(NS_D, "tests.integration.qst_apps", *args))


@dataclass
class Lab:
    server: Proc
    client: Proc
    certs: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    certs = tmp_path_factory.mktemp("qst-certs")
    sh(sys.executable, str(REPO / "scripts" / "make-certs"), "--out", str(certs), timeout=60)
    client_options = json.dumps(
        {
            "intercept": ["10.200.0.0/16", "fd00:200::/32"],
            "listen_port": LISTEN_PORT,
            "socks_port": SOCKS_PORT,
        }
    )
    server_options = json.dumps({"connect_timeout": 3.0, "max_pending_connects": 256})
    server_cmd = py_cmd(NS_S, "tests.integration.qst_peer", "server", "--certs", str(certs),
                        "--address", "10.81.0.2", "--options", server_options,
                        "--lifetime", "600")  # fmt: skip
    client_cmd = py_cmd(NS_C, "tests.integration.qst_peer", "client", "--certs", str(certs),
                        "--server", "10.81.0.2", "--options", client_options,
                        "--nft-table", NFT_TABLE, "--lifetime", "600")  # fmt: skip
    with lab_namespaces(), process(server_cmd) as server, process(client_cmd) as client:
        yield Lab(server, client, certs)


# -- transfers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_http_transfer_is_intact(lab: Lab, dest: str, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    content = os.urandom(8 * 1024 * 1024 + 17)
    (root / "blob").write_bytes(content)
    bind = "::" if ":" in dest else "0.0.0.0"
    with process(
        ns_cmd(NS_D, sys.executable, "-u", "-m", "http.server", "8080", "--bind", bind,
               "--directory", str(root)),
        ready="Serving HTTP",
    ):  # fmt: skip
        host = f"[{dest}]" if ":" in dest else dest
        code = (
            "import hashlib,urllib.request;"
            f"d=urllib.request.urlopen('http://{host}:8080/blob',timeout=30).read();"
            "print(len(d), hashlib.sha256(d).hexdigest())"
        )
        out = sh(*ns_cmd(NS_C, sys.executable, "-c", code), timeout=60)
    assert out.stdout.split() == [str(len(content)), hashlib.sha256(content).hexdigest()]


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_iperf3_tcp_through_stream_mode(lab: Lab, dest: str) -> None:
    with process(
        ns_cmd(NS_D, "iperf3", "-s", "-1", "--forceflush", "-p", "5201"), ready="Server listening"
    ):
        out = sh(*ns_cmd(NS_C, "iperf3", "-c", dest, "-p", "5201", "-t", "3", "-J"), timeout=40)
    report = json.loads(out.stdout)
    received = report["end"]["sum_received"]
    mbps = received["bits_per_second"] / 1e6
    print(f"stream mode iperf3 {dest}: {mbps:.0f} Mbit/s")
    assert received["bytes"] > 0 and mbps > 10


# -- the draft's mapping -----------------------------------------------------------------------


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_half_close_keeps_the_other_direction(lab: Lab, dest: str) -> None:
    with dest_server("serve-halfclose", "7001") as server:
        res = app(NS_C, "halfclose", dest, "7001", "300000")
        server.result()
    assert res["answer"] == res["expected"]


def test_application_reset_reaches_the_destination(lab: Lab) -> None:
    before = lab.client.stats()
    with dest_server("serve-watch", "7002") as server:
        app(NS_C, "reset", DEST4, "7002")
        watched = server.result()
    assert watched["ended"] == "reset"
    assert lab.client.stats()["resets_sent"] > before["resets_sent"]


def test_destination_reset_reaches_the_application(lab: Lab) -> None:
    with dest_server("serve-reset", "7003") as server:
        res = app(NS_C, "expect-reset", DEST6, "7003")
        server.result()
    assert res == {"connected": True, "outcome": "reset"}


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_refused_port_resets_the_application(lab: Lab, dest: str) -> None:
    # early accept: the application's connect succeeded locally, the failure is a reset; when
    # the refusal comes back before the application's thread runs again, connect() itself
    # returns the reset (Linux checks the socket's error once woken), so either is a reset
    res = app(NS_C, "expect-reset", dest, "7999")
    assert res in ({"connected": True, "outcome": "reset"},
                   {"connected": False, "error": "ConnectionResetError"})  # fmt: skip


@pytest.mark.parametrize(("dest", "reply"), [(DEST4, 3), (UNREACHABLE4, 4), (UNREACHABLE6, 4)])
def test_socks_front_reports_connect_failures(lab: Lab, dest: str, reply: int) -> None:
    # 3 = network unreachable (Error TLV Network Failure, here: refused port),
    # 4 = host unreachable (Error TLV ICMP Packet Received)
    res = app(NS_C, "socks", str(SOCKS_PORT), dest, "7999")
    assert res["reply"] == reply


def test_socks_front_relays(lab: Lab) -> None:
    with dest_server("serve-echo", "7004"):
        res = app(NS_C, "socks", str(SOCKS_PORT), DEST6, "7004")
    assert res == {"reply": 0, "echoed": "through socks"}


def raw(lab: Lab, preamble: str) -> dict[str, object]:
    out = sh(
        *py_cmd(NS_C, "tests.integration.qst_peer", "raw", "--certs", str(lab.certs),
                "--server", "10.81.0.2", "--preamble", preamble, "--lifetime", "10"),
        timeout=30,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("RAW "))
    return dict(json.loads(line[4:]))


def tcp_connect_tlv(address: str, port: int) -> str:
    from ipaddress import IPv6Address, ip_address

    parsed = ip_address(address)
    mapped = (
        IPv6Address(b"\0" * 10 + b"\xff\xff" + parsed.packed) if parsed.version == 4 else parsed
    )
    return (b"\x00\x12" + port.to_bytes(2, "big") + mapped.packed).hex()


END = "ff00"


@pytest.mark.parametrize(
    "preamble",
    [
        tcp_connect_tlv("ff02::1", 80) + END,  # multicast
        tcp_connect_tlv("224.0.0.1", 80) + END,
        tcp_connect_tlv("255.255.255.255", 80) + END,  # broadcast
        tcp_connect_tlv("::1", 80) + END,  # loopback
        "0005" + "0050" + "000000" + END,  # TCP Connect of the wrong length
    ],
)
def test_malformed_tcp_connect_gets_malformed_tlv(lab: Lab, preamble: str) -> None:
    res = raw(lab, preamble)
    # Error TLV (type 2, length 2, code 0x0002 Malformed TLV) + End + FIN
    assert res["received"] == "02020002" + END
    assert res["ended"] is True and res["closed"] is None


def test_unreachable_address_gets_the_icmp_packet(lab: Lab) -> None:
    res = raw(lab, tcp_connect_tlv(UNREACHABLE4, 80) + END)
    received = bytes.fromhex(str(res["received"]))
    assert res["ended"] is True
    assert received[0] == 0x02 and received[2:4] == b"\x00\x01"  # ICMP Packet Received
    icmp = received[4 : 2 + received[1]]
    assert icmp[0] == 3 and icmp[1] in (0, 1)  # Destination Unreachable: net or host
    assert received[2 + received[1] :] == bytes.fromhex(END)


def test_own_address_is_denied(lab: Lab) -> None:
    res = raw(lab, tcp_connect_tlv("10.81.0.2", 4433) + END)
    assert res["received"] == "02020003" + END  # Network Failure


# -- scale and memory --------------------------------------------------------------------------


def test_200_concurrent_connections(lab: Lab) -> None:
    with dest_server("serve-echo", "7005"):
        res = app(NS_C, "many", DEST4, "7005", "200", "20000", timeout=90)
    assert res["failed"] == 0, (res["errors"], lab.client.stderr(), lab.server.stderr())
    assert res["ok"] == 200
    deadline = time.monotonic() + 10
    while lab.client.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lab.client.stats()["active"] == 0
    assert lab.server.stats()["active"] == 0


def test_slow_reader_keeps_memory_bounded(lab: Lab) -> None:
    """20 connections whose reader takes 64 kB/s for 4 s and then nothing, while the
    destination sends 200 MB on each: without backpressure the relays would buffer whatever
    the tunnel carries (GBs); with it each side holds about a window and a send buffer."""
    count = 20
    with dest_server("serve-bulk", "7006", str(200 * 1024 * 1024)):
        server_stats = lab.server.stats()
        server_before = server_stats["rss_kb"]
        client_before = lab.client.stats()["rss_kb"]
        with process(
            py_cmd(NS_C, "tests.integration.qst_apps", "slow", DEST4, "7006", str(count),
                   "65536", "4"),
            ready="SLOW ", timeout=60,
        ):  # fmt: skip
            time.sleep(1.0)  # let whatever would pile up pile up
            server_after = lab.server.stats()
            client_after = lab.client.stats()
    server_growth = server_after["rss_kb"] - server_before
    client_growth = client_after["rss_kb"] - client_before
    print(
        f"slow readers: {count} connections, RSS growth server {server_growth} kB "
        f"({server_growth / count:.0f} kB/conn), client {client_growth} kB "
        f"({client_growth / count:.0f} kB/conn), read pauses at the server "
        f"{server_after['paused']}; server {server_after}; client {client_after}"
    )
    # about a window + a send buffer per connection and side (twice that for allocator slack),
    # plus interpreter noise; without backpressure it would be GBs
    per_conn_kb = 2 * (StreamServerConfig().window + StreamServerConfig().send_buffer) // 1024
    assert server_growth < count * per_conn_kb + 20_000
    assert client_growth < count * per_conn_kb + 20_000
    assert server_after["paused"] > server_stats["paused"], (
        lab.server.stderr()
    )  # slowed down, not buffered
    resets = sum(server_after[k] - server_stats[k] for k in ("resets_sent", "resets_received"))
    assert resets == 0, lab.server.stderr()
