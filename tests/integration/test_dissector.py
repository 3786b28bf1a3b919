"""The Wireshark dissector (tools/wireshark/quic_tunnel.lua) and `python -m testbed.decode` on a
real capture: the real `qtun concentrator` and `qtun client` in namespaces of our own (prefix
qwd), stream mode on, first in tunnel mode then in session mode, two accesses:

    qwd-c<pid> (qtun client, TUN qwdt1)
        -- wifi veth qwdw1/qwdw0 10.91.0.0/24 --
        -- 5g   veth qwdg1/qwdg0 10.92.0.0/24 --  qwd-k<pid> (qtun concentrator on 10.93.0.1,
                                                  TUN qwdt0; tcpdump on qwdw0 and qwdg0)
                                                     -- veth qwds0/qwds1 10.200.0.0/24 --
                                                  qwd-s<pid> (TCP echo on 5301; 5302 rejected
                                                  with ICMP port unreachable)

UDP GSO/GRO are off on both ends of the captured veths (else the concentrator's GSO batches
reach the capture as one datagram tshark cannot decrypt); both programs write their TLS keylog.
Traffic: tunnel mode — 3 pings, a TCP echo (stream mode), a TCP connect the server rejects with
ICMP, an Access Report for WiFi, 5G down and up (two more); session mode — New Session on one
access, Join Session on the other, an Access Report per access, 3 pings, a TCP echo; then what only
a crafted client sends (qwd_crafted.py): New Session with QoS, a refused Join Session, a TCP Connect
split over two packets with an unknown TLV and a retransmission, an invalid Access Report, a refused
IPv6 TCP Connect. Then tshark with the plugin and the keylogs must decode every message type with
the right values.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from testbed import decode

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("tshark") is None,
        reason="tshark is not installed: `sudo make deps` (scripts/install-system-deps.sh) "
        "installs it",
    ),
]

REPO = Path(__file__).resolve().parents[2]
CRAFTED = Path(__file__).with_name("qwd_crafted.py")
PID = os.getpid()
NS_CLI, NS_CONC, NS_SRV = f"qwd-c{PID}", f"qwd-k{PID}", f"qwd-s{PID}"
CONCENTRATOR = "10.93.0.1"  # on the concentrator's loopback: reachable over either access
SERVER = "10.200.0.2"
ECHO_PORT, REJECTED_PORT = 5301, 5302
# (client end, concentrator end, subnet prefix) of each access veth; names live in namespaces
ACCESSES = {"wifi": ("qwdw1", "qwdw0", "10.91.0"), "5g": ("qwdg1", "qwdg0", "10.92.0")}
# --immediate-mode: packets reach tcpdump at once, not in 1-s blocks that stopping it would lose
TCPDUMP = ["tcpdump", "-n", "--immediate-mode", "-U"]
ECHO_SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {ECHO_PORT}))
s.listen()
s.settimeout(60)
print("READY", flush=True)
for _ in range(8):
    c, _ = s.accept()
    c.settimeout(5)
    c.sendall(c.recv(100).upper())
    c.close()
"""
TCP_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.sendall(sys.argv[3].encode())
    print("REPLY", c.recv(100).decode(), flush=True)
except OSError as exc:
    print("ERROR", exc, flush=True)
"""


def sh(*args: str, timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def in_ns(ns: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, timeout=timeout, check=False)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


@dataclass
class Children:
    """Every process the capture starts, stopped by its own pid in reverse order."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            self.stop(proc, signal.SIGINT if name.startswith("tcpdump") else signal.SIGTERM)


@contextmanager
def namespaces() -> Iterator[None]:
    made: list[str] = []
    try:
        for ns in (NS_CLI, NS_CONC, NS_SRV):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        links = [
            (NS_CLI, cli_if, f"{prefix}.1/24", NS_CONC, conc_if, f"{prefix}.2/24")
            for cli_if, conc_if, prefix in ACCESSES.values()
        ]
        links.append((NS_CONC, "qwds0", "10.200.0.1/24", NS_SRV, "qwds1", f"{SERVER}/24"))
        for ns_a, if_a, addr_a, ns_b, if_b, addr_b in links:
            sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
               "netns", ns_b)  # fmt: skip
            for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
                sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
                sh("ip", "-n", ns, "link", "set", ifname, "up")
        for cli_if, conc_if, _ in ACCESSES.values():
            # The capture facts (shared/DESIGN.md): with UDP GSO the concentrator's batches
            # reach a capture as one datagram of several packets, which tshark cannot decrypt.
            for ns, ifname in ((NS_CLI, cli_if), (NS_CONC, conc_if)):
                sh("ip", "netns", "exec", ns, "ethtool", "-K", ifname, "gso", "off", "gro", "off",
                   "tx-udp-segmentation", "off")  # fmt: skip
        sh("ip", "-n", NS_CONC, "addr", "add", f"{CONCENTRATOR}/32", "dev", "lo")
        for metric, (cli_if, _, prefix) in enumerate(ACCESSES.values(), 1):
            sh("ip", "-n", NS_CLI, "route", "add", f"{CONCENTRATOR}/32", "via", f"{prefix}.2",
               "dev", cli_if, "metric", str(metric))  # fmt: skip
        sh("ip", "-n", NS_SRV, "route", "add", "default", "via", "10.200.0.1")
        sh("ip", "netns", "exec", NS_CONC, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = (
            "table ip qwd {\n chain input {\n  type filter hook input priority 0;\n"
            f"  tcp dport {REJECTED_PORT} reject with icmp type port-unreachable\n }}\n}}\n"
        )
        subprocess.run(["ip", "netns", "exec", NS_SRV, "nft", "-f", "-"], input=rules,
                       text=True, check=True, capture_output=True, timeout=20)  # fmt: skip
        yield
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def concentrator_toml(certs: Path, out: Path, work: Path) -> str:
    return f"""
modes = ["tunnel", "session"]
[listen]
addresses = ["{CONCENTRATOR}"]
port = 4433
[tun]
name = "qwdt0"
addresses = ["10.8.0.1/24"]
[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/concentrator.pem"
key = "{certs}/concentrator.key"
[[client]]
name = "alice"
addresses = ["10.8.0.2/32"]
[stream]
enabled = true
[observability]
keylog_file = "{out}/concentrator.keylog"
status_file = "{work}/concentrator.json"
status_interval = 0.2
"""


def client_toml(certs: Path, out: Path, work: Path, mode: str) -> str:
    accesses = "".join(
        f'[[access]]\nname = "{name}"\naccess_id = "{name}"\ninterface = "{cli_if}"\n'
        f'local_address = "{prefix}.1"\n'
        for name, (cli_if, _, prefix) in ACCESSES.items()
    )
    return f"""
name = "alice"
mode = "{mode}"
[concentrator]
address = "{CONCENTRATOR}"
port = 4433
server_name = "concentrator"
{accesses}
[tun]
name = "qwdt1"
addresses = ["10.8.0.2/32"]
routes = ["10.200.0.0/24"]
[tls]
ca = "{certs}/ca.pem"
cert = "{certs}/alice.pem"
key = "{certs}/alice.key"
[stream]
enabled = true
intercept = ["10.200.0.0/24"]
[observability]
keylog_file = "{out}/client-{mode}.keylog"
status_file = "{work}/client-{mode}.json"
status_interval = 0.2
"""


def tcp_exchange(port: int, text: str) -> str:
    """One TCP connection from the client namespace (intercepted into a QUIC stream): what
    came back, "REPLY <text>" or "ERROR <reason>"."""
    done = in_ns(NS_CLI, sys.executable, "-c", TCP_CLIENT, SERVER, str(port), text)
    return done.stdout.strip()


def ping(count: int) -> None:
    done = in_ns(NS_CLI, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", SERVER)
    assert f"{count} received" in done.stdout, done.stdout + done.stderr


@dataclass
class Capture:
    directory: Path
    session_id: str  # hex, from the session-mode client's status file


def start_client(
    kids: Children, certs: Path, out: Path, work: Path, mode: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """The real `qtun client` in `mode`; its process and its status file."""
    config = work / f"client-{mode}.toml"
    config.write_text(client_toml(certs, out, work, mode))
    proc = kids.start(
        f"client-{mode}",
        NS_CLI,
        [sys.executable, "-m", "tunnel.aio.cli", "client", "-c", str(config)],
        work / f"client-{mode}.log",
    )
    return proc, work / f"client-{mode}.json"


def listening(tcpdump_log: Path) -> bool:
    return "listening on" in tcpdump_log.read_text()


def reports_sent(status: Path) -> int:
    return int(read_json(status).get("counters", {}).get("access_reports_sent", 0))


def start_captures(
    kids: Children, out: Path, work: Path, accesses: dict[str, tuple[str, str, str]]
) -> list[subprocess.Popen[bytes]]:
    """tcpdump on the concentrator's end of each access veth, into out/<access>.pcap."""
    out.mkdir(exist_ok=True)
    dumps = []
    for access, (_, conc_if, _) in accesses.items():
        log = work / f"tcpdump-{out.name}-{access}.log"
        pcap = out / f"{access}.pcap"
        dumps.append(
            kids.start(
                f"tcpdump-{access}", NS_CONC, [*TCPDUMP, "-i", conc_if, "-w", str(pcap), "udp"], log
            )
        )
        assert wait_until(partial(listening, log)), log.read_text()
    return dumps


def record(certs: Path, out: Path, work: Path) -> Capture:
    """Run the whole scenario (module docstring) with the capture on; every process stopped."""
    kids = Children()
    try:
        dumps = start_captures(kids, out, work, ACCESSES)
        config = work / "concentrator.toml"
        config.write_text(concentrator_toml(certs, out, work))
        conc = kids.start(
            "concentrator",
            NS_CONC,
            [sys.executable, "-m", "tunnel.aio.cli", "concentrator", "-c", str(config)],
            work / "concentrator.log",
        )
        conc_status = work / "concentrator.json"
        assert wait_until(lambda: read_json(conc_status).get("state") == "up"), (
            work / "concentrator.log"
        ).read_text()
        echo_log = work / "echo.log"
        kids.start("echo", NS_SRV, [sys.executable, "-c", ECHO_SERVER], echo_log)
        assert wait_until(lambda: "READY" in echo_log.read_text()), echo_log.read_text()

        # tunnel mode: one connection (on WiFi), datagrams, streams, two Access Reports
        client, status = start_client(kids, certs, out, work, "tunnel")
        assert wait_until(lambda: read_json(status).get("state") == "up"), read_json(status)
        ping(3)
        assert tcp_exchange(ECHO_PORT, "qwd hello tunnel") == "REPLY QWD HELLO TUNNEL"
        assert tcp_exchange(REJECTED_PORT, "qwd rejected") != "REPLY QWD REJECTED"
        cli_5g = ACCESSES["5g"][0]
        # the first report (WiFi available: the access the connection runs over) may be out
        before = reports_sent(status)
        sh("ip", "-n", NS_CLI, "link", "set", cli_5g, "down")
        assert wait_until(lambda: reports_sent(status) >= before + 1), read_json(status)
        sh("ip", "-n", NS_CLI, "link", "set", cli_5g, "up")
        assert wait_until(lambda: reports_sent(status) >= before + 2), read_json(status)
        assert kids.stop(client) == 0, (work / "client-tunnel.log").read_text()

        # session mode: New Session on one access, Join Session on the other, reports, pings
        client, status = start_client(kids, certs, out, work, "session")

        def joined() -> bool:
            state = read_json(status)
            return (
                state.get("state") == "up"
                and state.get("session_id") is not None
                and all(a["connected"] for a in state.get("accesses", [{"connected": False}]))
                and reports_sent(status) >= 2
            )

        assert wait_until(joined), read_json(status)
        session_id = str(read_json(status)["session_id"])
        ping(3)
        assert tcp_exchange(ECHO_PORT, "qwd hello session") == "REPLY QWD HELLO SESSION"
        assert kids.stop(client) == 0, (work / "client-session.log").read_text()

        # what the real client never sends (qwd_crafted.py), on WiFi (the preferred route),
        # captured apart (out/crafted/) so that the checks above see the real client alone
        for dump in dumps:
            kids.stop(dump, signal.SIGINT)
        start_captures(kids, out / "crafted", work, {"wifi": ACCESSES["wifi"]})
        crafted = in_ns(NS_CLI, sys.executable, str(CRAFTED), "--certs", str(certs), "--remote",
                        CONCENTRATOR, "--server", SERVER, "--echo-port", str(ECHO_PORT),
                        "--status", str(conc_status), timeout=60)  # fmt: skip
        results = [line for line in crafted.stdout.splitlines() if line.startswith("RESULT ")]
        assert results, crafted.stdout + crafted.stderr
        outcome = json.loads(results[-1][len("RESULT ") :])
        assert outcome == {
            "qos_session": True,
            "join": {"failed": 1},  # UNKNOWN_SESSION_ID
            "echoed": len("qwd split"),
            "refused": {"stream_id": 4, "code": 3},  # Network Failure
            "split_stream_id": 0,
        }, outcome
        assert kids.stop(conc) == 0, (work / "concentrator.log").read_text()
    finally:
        kids.stop_all()
    return Capture(out, session_id)


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capture(lab_certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Capture:
    version = sh("tshark", "-v").stdout.replace("\n", " ")
    if "with Lua" not in version:
        pytest.skip("this tshark was built without Lua: it cannot load the plugin")
    out, work = tmp_path_factory.mktemp("qwd-capture"), tmp_path_factory.mktemp("qwd-work")
    with namespaces():
        return record(lab_certs, out, work)


@pytest.fixture(scope="module")
def keylog(capture: Capture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, keylogs = decode.find_inputs(capture.directory)
    assert len(keylogs) == 3  # the concentrator's and one per client run
    return decode.merge_keylogs(keylogs, tmp_path_factory.mktemp("qwd-keys") / "keylog.txt")


def fields(capture: Capture, keylog: Path, pcap: str, display_filter: str,
           *names: str) -> list[dict[str, list[str]]]:  # fmt: skip
    """`names` of every packet of DIR/<pcap>.pcap that `display_filter` matches."""
    return decode.tshark_fields(capture.directory / f"{pcap}.pcap", keylog, names,
                                display_filter)  # fmt: skip


def test_every_message_type_decoded_with_its_direction(capture: Capture) -> None:
    """What `python -m testbed.decode` prints: each message of the scenario, by the access and
    in the direction it went."""
    messages, start, warnings = decode.decode_directory(capture.directory)
    assert start is not None and not warnings
    seen = {(m.access, m.direction, m.text) for m in messages}
    up, down = "client->concentrator", "concentrator->client"
    sid = capture.session_id
    expected = {
        # tunnel mode, on WiFi
        ("wifi", up, "ClientHello: ALPN qt,qt-00, quic_tunnel_stream_mode (0x71745f73)"),
        ("wifi", down, "EncryptedExtensions: ALPN qt (tunnel mode), quic_tunnel_stream_mode "
                       "(0x71745f73)"),
        ("wifi", up, "TCP Connect: 10.200.0.2 port 5301 [stream 0]"),
        ("wifi", up, "End [stream 0]"),
        ("wifi", down, "TCP Connect OK [stream 0]"),
        ("wifi", down, "End [stream 0]"),
        ("wifi", up, "TCP Connect: 10.200.0.2 port 5302 [stream 4]"),
        ("wifi", down, "Error: ICMP Packet Received (1), ICMP type 3 code 3 [stream 4]"),
        ("wifi", down, "End [stream 4]"),
        ("wifi", up, "TCP reset: RESET_STREAM code 0 (TCP_CONNECTION_RESET) [stream 4]"),
        # the access the connection runs over, then 5G down and up (issue 12: tunnel mode
        # tells the concentrator which access carries it)
        ("wifi", up, "Access Report: access Non-3GPP (2), Access Available (1) [stream 2]"),
        ("wifi", up, "Access Report: access 3GPP (1), Access Unavailable (2) [stream 6]"),
        ("wifi", up, "Access Report: access 3GPP (1), Access Available (1) [stream 10]"),
        # session mode: New Session on WiFi answered by Session ID, Join Session on 5G (answered
        # by the control stream's FIN alone, session §6.1.3: no message to show)
        ("wifi", down, "EncryptedExtensions: ALPN qt-session (session mode), "
                       "quic_tunnel_stream_mode (0x71745f73)"),
        ("wifi", up, "New Session [stream 2]"),
        ("wifi", down, f"Session ID: {sid} [stream 3]"),
        ("5g", up, f"Join Session: {sid} [stream 2]"),
        ("wifi", up, "Access Report: access Non-3GPP (2), Access Available (1) [stream 6]"),
        ("5g", up, "Access Report: access 3GPP (1), Access Available (1) [stream 6]"),
    }  # fmt: skip
    assert expected <= seen, sorted(expected - seen)
    assert not [m for m in messages if m.access == "5g" and m.text.startswith("Session ID")]
    for seq in (1, 2, 3):
        for mode, tag in (("tunnel", ""), ("session", "Protocol Type 0x0800, Packet Tag ")):
            request = f"{mode} datagram: {tag}"
            assert any(
                m.direction == up
                and m.text.startswith(request)
                and m.text.endswith(f"IPv4 10.8.0.2 -> 10.200.0.2 ICMP echo request id="
                                    f"{m.text.split('id=')[-1].split()[0]} seq={seq}")
                for m in messages
            ), (mode, seq)  # fmt: skip
    replies = [m for m in messages if m.direction == down and "ICMP echo reply" in m.text]
    assert len(replies) == 6, replies


def test_access_report_fields(capture: Capture, keylog: Path) -> None:
    tunnel = fields(capture, keylog, "wifi", "qtun.access_report && qtun.mode == \"tunnel\"",
                    "qtun.access_report.access_id", "qtun.access_report.signal",
                    "qtun.access_report.reserved", "qtun.direction")  # fmt: skip
    assert [
        (p["qtun.access_report.access_id"], p["qtun.access_report.signal"]) for p in tunnel
    ] == [
        (["2"], ["1"]),  # WiFi (non-3GPP), the access the connection runs over: Available
        (["1"], ["2"]),  # 5G (3GPP) down: Access Unavailable
        (["1"], ["1"]),  # and up again: Access Available
    ]
    assert all(int(p["qtun.access_report.reserved"][0], 16) == 0 for p in tunnel)
    for access, access_id in (("wifi", "2"), ("5g", "1")):
        session = fields(capture, keylog, access,
                         "qtun.access_report && qtun.mode == \"session\"",
                         "qtun.access_report.access_id", "qtun.access_report.signal")  # fmt: skip
        assert [p["qtun.access_report.access_id"] for p in session] == [[access_id]]


def test_session_control_fields(capture: Capture, keylog: Path) -> None:
    sid = capture.session_id
    new = fields(capture, keylog, "wifi", "qtun.new_session", "qtun.stream_id",
                 "qtun.new_session.qos", "qtun.direction")  # fmt: skip
    assert len(new) == 1 and new[0]["qtun.stream_id"][0] == "2"
    assert "qtun.new_session.qos" not in new[0]  # no QoS Flow Indication sent
    join = fields(capture, keylog, "5g", "qtun.join_session", "qtun.join_session.session_id")
    assert [p["qtun.join_session.session_id"] for p in join] == [[sid]]
    # New Session is answered by a Session ID TLV; a join by the FIN alone (session §6.1.3)
    for access, answers in (("wifi", [[sid]]), ("5g", [])):
        answer = fields(
            capture,
            keylog,
            access,
            "qtun.session_id",
            "qtun.session_id.session_id",
            "qtun.stream_id",
            "qtun.direction",
        )
        assert [p["qtun.session_id.session_id"] for p in answer] == answers
        assert all(p["qtun.direction"] == ["concentrator->client"] for p in answer)


def test_packet_tags_count_up_and_inner_echo_is_dissected(capture: Capture, keylog: Path) -> None:
    """Session mode: each side's Packet Tags go up by one per datagram (the client's counter,
    tunnel/session/reorder.py); the inner IPv4 echo is handed to Wireshark's IP and ICMP
    dissectors (ip.src and ip.dst: outer, then inner)."""
    datagrams = fields(capture, keylog, "wifi", "qtun.session.packet_tag",
                       "qtun.session.packet_tag", "qtun.session.protocol_type", "qtun.direction",
                       "ip.src", "ip.dst", "icmp.type", "icmp.seq")  # fmt: skip
    for direction in ("client->concentrator", "concentrator->client"):
        tags = [int(p["qtun.session.packet_tag"][0]) for p in datagrams
                if p["qtun.direction"] == [direction]]  # fmt: skip
        assert len(tags) >= 3, (direction, tags)
        assert tags == [(tags[0] + i) % 65536 for i in range(len(tags))], (direction, tags)
    requests = [p for p in datagrams if p.get("icmp.type") == ["8"]]
    assert [p["icmp.seq"] for p in requests] == [["1"], ["2"], ["3"]]
    for p in requests:
        assert p["qtun.session.protocol_type"] == ["0x0800"]
        assert p["ip.src"] == ["10.91.0.1", "10.8.0.2"] and p["ip.dst"][-1] == SERVER
    tunnel = fields(capture, keylog, "wifi", "qtun.mode == \"tunnel\" && qtun.datagram && icmp",
                    "icmp.type", "ip.src", "ip.dst", "qtun.session.packet_tag")  # fmt: skip
    assert sorted(p["icmp.type"][0] for p in tunnel) == ["0", "0", "0", "8", "8", "8"]
    assert all("qtun.session.packet_tag" not in p for p in tunnel)  # no header in tunnel mode


def test_stream_mode_fields(capture: Capture, keylog: Path) -> None:
    connects = fields(
        capture,
        keylog,
        "wifi",
        "qtun.tcp_connect",
        "qtun.tcp_connect.port",
        "qtun.tcp_connect.ipv4",
        "qtun.tcp_connect.address",
        "qtun.stream_id",
    )
    assert [(p["qtun.tcp_connect.port"], p["qtun.stream_id"][0]) for p in connects] == [
        ([str(ECHO_PORT)], "0"),  # tunnel mode
        ([str(REJECTED_PORT)], "4"),
        ([str(ECHO_PORT)], "0"),  # session mode (a new connection)
    ]
    for p in connects:
        assert p["qtun.tcp_connect.ipv4"] == [SERVER]
        assert p["qtun.tcp_connect.address"] == [f"::ffff:{SERVER}"]
    assert len(fields(capture, keylog, "wifi", "qtun.tcp_connect_ok", "frame.number")) == 2
    errors = fields(capture, keylog, "wifi", "qtun.error", "qtun.error.code", "icmp.type",
                    "icmp.code", "tcp.dstport")  # fmt: skip
    assert len(errors) == 1
    # the ICMP port unreachable the server's nft rule sent, quoting the concentrator's SYN
    assert errors[0]["qtun.error.code"] == ["1"]
    assert errors[0]["icmp.type"] == ["3"] and errors[0]["icmp.code"] == ["3"]
    assert errors[0]["tcp.dstport"] == [str(REJECTED_PORT)]
    data = fields(capture, keylog, "wifi", "qtun.bytestream.length > 0", "qtun.bytestream.data",
                  "qtun.bytestream.offset", "qtun.direction")  # fmt: skip
    sent = {(p["qtun.direction"][0], bytes.fromhex(p["qtun.bytestream.data"][0]).decode())
            for p in data}  # fmt: skip
    echoed = {
        ("client->concentrator", "qwd hello tunnel"),
        ("concentrator->client", "QWD HELLO TUNNEL"),
        ("client->concentrator", "qwd hello session"),
        ("concentrator->client", "QWD HELLO SESSION"),
    }
    # The rejected connection's bytes race its refusal: the client relays what its app wrote
    # until the Error TLV arrives, which on a loaded machine may come first (seen once).
    assert echoed <= sent <= echoed | {("client->concentrator", "qwd rejected")}, sent
    assert all(p["qtun.bytestream.offset"] == ["0"] for p in data)


def test_what_only_a_crafted_client_sends(capture: Capture, keylog: Path) -> None:
    """qwd_crafted.py's messages: the optional QoS value, a refused join, a TCP Connect split
    over two packets (decoded, reassembled, where it completes), an unknown TLV stepped over
    before End, a retransmission, an invalid Access ID flagged, an IPv6 destination."""
    messages, _, _ = decode.decode_directory(capture.directory)
    up, down = "client->concentrator", "concentrator->client"
    seen = {(m.direction, m.text) for m in messages if m.access == "crafted/wifi"}
    expected = {
        (up, "New Session (QoS 2a01) [stream 2]"),
        (up, "Join Session: deadbeef [stream 2]"),
        (down, "Join refused: RESET_STREAM of control stream 3, UNKNOWN_SESSION_ID (1) [stream 3]"),
        (up, "7 bytes of a TLV, decoded in the frame that completes it [stream 0]"),
        (up, "unknown stream TLV type 0x42 [stream 0]"),
        (up, "bytestream: 9 bytes at offset 0 [stream 0]"),
        (up, "Access Report: access Unknown (3), Access Available (1) [stream 2]"),
        (up, "TCP Connect: [2001:db8::1] port 80 [stream 4]"),
        (down, "Error: Network Failure (3) [stream 4]"),
    }  # fmt: skip
    assert expected <= seen, sorted(expected - seen)
    qos = fields(capture, keylog, "crafted/wifi", "qtun.new_session.qos", "qtun.new_session.qos")
    assert [p["qtun.new_session.qos"] for p in qos] == [["2a01"]]
    refused = fields(capture, keylog, "crafted/wifi", "qtun.join_refused", "qtun.join_refused")
    assert [p["qtun.join_refused"] for p in refused] == [["1"]]
    split = fields(capture, keylog, "crafted/wifi", "qtun.stream_tlv.unknown", "frame.number",
                   "qtun.stream_tlv.type", "qtun.tcp_connect.port",
                   "qtun.bytestream.data")  # fmt: skip
    assert len(split) == 1
    assert split[0]["qtun.stream_tlv.type"] == ["0x00", "0x42", "0xff"]
    assert split[0]["qtun.tcp_connect.port"] == [str(ECHO_PORT)]
    assert bytes.fromhex(split[0]["qtun.bytestream.data"][0]) == b"qwd split"
    completed = int(split[0]["frame.number"][0])
    pending = fields(capture, keylog, "crafted/wifi", "qtun.tlv_pending", "frame.number",
                     "qtun.tlv_pending")  # fmt: skip
    assert [(int(p["frame.number"][0]) < completed, p["qtun.tlv_pending"]) for p in pending] == [
        (True, ["7"])
    ]
    again = fields(capture, keylog, "crafted/wifi", "qtun.retransmission", "frame.number")
    assert len(again) == 1 and int(again[0]["frame.number"][0]) > completed
    flagged = fields(capture, keylog, "crafted/wifi", "qtun.unknown", "_ws.expert.message")
    assert sorted(m for p in flagged for m in p["_ws.expert.message"] if "0x" in m or "AI" in m
                  or "Access ID" in m) == [
        "unknown Access ID or Signal: discarded", "unknown stream TLV type 0x42"]  # fmt: skip
    v6 = fields(capture, keylog, "crafted/wifi", "qtun.tcp_connect.port == 80",
                "qtun.tcp_connect.address", "qtun.tcp_connect.ipv4")  # fmt: skip
    assert v6 == [{"qtun.tcp_connect.address": ["2001:db8::1"]}]


def test_decode_command_prints_one_line_per_message(capture: Capture) -> None:
    done = sh(sys.executable, "-m", "testbed.decode", str(capture.directory), timeout=120)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["seconds", "access", "direction", "message"]
    rows = [line.split(maxsplit=3) for line in lines[1:]]
    join = f"Join Session: {capture.session_id} [stream 2]"
    assert any(row[1:] == ["5g", "client->concentrator", join] for row in rows), lines
    times = [float(row[0]) for row in rows]
    assert times == sorted(times) and times[0] >= 0
    assert any("bytestream:" in line for line in lines)
    brief = sh(sys.executable, "-m", "testbed.decode", "--no-data", str(capture.directory),
               timeout=120).stdout.splitlines()  # fmt: skip
    assert not any("bytestream:" in line for line in brief)
    assert len(brief) < len(lines)


def test_decode_command_errors_are_one_sentence(tmp_path: Path) -> None:
    done = sh(sys.executable, "-m", "testbed.decode", str(tmp_path), check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"decode: error: no pcap files in {tmp_path}: capture with `qtlab up --capture DIR` "
        "or `tcpdump -i IF -w DIR/ACCESS.pcap`."
    )
