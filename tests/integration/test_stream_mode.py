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
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import (
    End,
    Proc,
    forwarding,
    in_ns,
    ip,
    namespaces,
    process,
    python_in,
    run_json,
    sh,
    unique,
    veth,
    wait_until,
)
from tunnel.config import StreamServerConfig

pytestmark = pytest.mark.root

NS_C, NS_S, NS_D = unique("qst-c"), unique("qst-s"), unique("qst-d")
IF = {k: unique(f"qst{k}") for k in ("a", "b", "c", "d")}
NFT_TABLE = unique("qst_")
LISTEN_PORT = 4480
SOCKS_PORT = 1080
DEST4, DEST6 = "10.200.1.2", "fd00:200:1::2"
UNREACHABLE4, UNREACHABLE6 = "10.200.99.1", "fd00:200:99::1"


@contextmanager
def lab_namespaces(client_routes: bool = True) -> Iterator[None]:
    """The three namespaces. `client_routes`: route the destinations from the client towards
    the concentrator (a qtun client routes them into its TUN itself)."""
    with namespaces(NS_C, NS_S, NS_D):
        veth(
            End(NS_C, IF["a"], ["10.81.0.1/24", "fd00:81::1/64"]),
            End(NS_S, IF["b"], ["10.81.0.2/24", "fd00:81::2/64"]),
        )
        veth(
            End(NS_S, IF["c"], ["10.200.1.1/24", "fd00:200:1::1/64"]),
            End(NS_D, IF["d"], ["10.200.1.2/24", "fd00:200:1::2/64"]),
        )
        # the client routes the destinations towards the tunnel side (the route must exist
        # for connect() to reach the nft output hook that redirects it)
        if client_routes:
            ip(NS_C, "route", "add", "10.200.0.0/16", "via", "10.81.0.2")
            ip(NS_C, "-6", "route", "add", "fd00:200::/32", "via", "fd00:81::2")
        ip(NS_S, "route", "add", "10.200.0.0/16", "via", "10.200.1.2")
        ip(NS_S, "-6", "route", "add", "fd00:200::/32", "via", "fd00:200:1::2")
        forwarding(NS_D)
        ip(NS_D, "route", "add", "unreachable", "10.200.99.0/24")
        ip(NS_D, "-6", "route", "add", "unreachable", "fd00:200:99::/48")
        yield


def app(ns: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    result: dict[str, Any] = run_json(
        python_in(ns, "tests.integration.qst_apps", *args), timeout=timeout
    )
    return result


def dest_server(*args: str) -> AbstractContextManager[Proc]:
    """A qst_apps server in the destination namespace (they ignore stdin: stopped by SIGTERM)."""
    return process(python_in(NS_D, "tests.integration.qst_apps", *args), stop_by="term")


def http_server(
    ns: str, bind: str, directory: Path, port: int = 8080
) -> AbstractContextManager[Proc]:
    """python's http.server, entered once it listens ("Serving HTTP" is printed after bind)."""
    argv = ["-m", "http.server", str(port), "--bind", bind, "--directory", str(directory)]
    return process(in_ns(ns, sys.executable, "-u", *argv), ready="Serving HTTP", stop_by="term")


def iperf3_server(ns: str, port: int = 5201) -> AbstractContextManager[Proc]:
    """One iperf3 test's server (-1), entered once it listens (it says so, flushed)."""
    argv = in_ns(ns, "iperf3", "-s", "-1", "--forceflush", "-p", str(port))
    return process(argv, ready="Server listening", stop_by="term")


def fetch_code(url: str) -> str:
    """Python that downloads `url` and prints its length and SHA-256."""
    return (
        "import hashlib,urllib.request;"
        f"d=urllib.request.urlopen('{url}',timeout=30).read();"
        "print(len(d), hashlib.sha256(d).hexdigest())"
    )


def digest(content: bytes) -> list[str]:
    return [str(len(content)), hashlib.sha256(content).hexdigest()]


def stats(proc: Proc) -> dict[str, int]:
    proc.send("stats")
    return dict(proc.expect_json("STATS "))


@dataclass
class Lab:
    server: Proc
    client: Proc
    certs: Path


@pytest.fixture(scope="module")
def lab(lab_certs: Path) -> Iterator[Lab]:
    client_options = json.dumps(
        {
            "intercept": ["10.200.0.0/16", "fd00:200::/32"],
            "listen_port": LISTEN_PORT,
            "socks_port": SOCKS_PORT,
        }
    )
    server_options = json.dumps({"connect_timeout": 3.0, "max_pending_connects": 256})
    server_cmd = python_in(NS_S, "tests.integration.qst_peer", "server", "--certs",
                           str(lab_certs), "--address", "10.81.0.2", "--options", server_options,
                           "--lifetime", "600")  # fmt: skip
    client_cmd = python_in(NS_C, "tests.integration.qst_peer", "client", "--certs",
                           str(lab_certs), "--server", "10.81.0.2", "--options", client_options,
                           "--nft-table", NFT_TABLE, "--lifetime", "600")  # fmt: skip
    with lab_namespaces(), process(server_cmd) as server, process(client_cmd) as client:
        yield Lab(server, client, lab_certs)


# -- transfers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_http_transfer_is_intact(lab: Lab, dest: str, tmp_path: Path) -> None:
    content = os.urandom(8 * 1024 * 1024 + 17)
    (tmp_path / "blob").write_bytes(content)
    bind = "::" if ":" in dest else "0.0.0.0"
    host = f"[{dest}]" if ":" in dest else dest
    with http_server(NS_D, bind, tmp_path):
        out = sh(*in_ns(NS_C, sys.executable, "-c", fetch_code(f"http://{host}:8080/blob")),
                 timeout=60)  # fmt: skip
    assert out.stdout.split() == digest(content)


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_iperf3_tcp_through_stream_mode(lab: Lab, dest: str) -> None:
    """iperf3's control and data connections both intercepted and relayed (the figure is
    printed, not judged: `make bench` measures stream mode's goodput)."""
    with iperf3_server(NS_D):
        out = sh(*in_ns(NS_C, "iperf3", "-c", dest, "-p", "5201", "-t", "1", "-J"), timeout=40)
    report = json.loads(out.stdout)
    assert "error" not in report, report["error"]
    received = report["end"]["sum_received"]
    print(f"stream mode iperf3 {dest}: {received['bits_per_second'] / 1e6:.0f} Mbit/s")
    assert received["bytes"] > 0


# -- the draft's mapping -----------------------------------------------------------------------


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_half_close_keeps_the_other_direction(lab: Lab, dest: str) -> None:
    with dest_server("serve-halfclose", "7001") as server:
        res = app(NS_C, "halfclose", dest, "7001", "300000")
        server.expect("RESULT ")
    assert res["answer"] == res["expected"]


def test_application_reset_reaches_the_destination(lab: Lab) -> None:
    """The application resets its connection once the destination has its data (not after a
    guessed delay): the RST travels as RESET_STREAM and the destination sees a reset."""
    before = stats(lab.client)
    with dest_server("serve-watch", "7002") as server:
        reset_app = python_in(NS_C, "tests.integration.qst_apps", "reset", DEST4, "7002")
        with process(reset_app, ready="SENT") as application:
            server.expect("GOT")
            application.send("reset")
            application.expect("RESULT ")
        watched = server.expect_json("RESULT ")
    assert watched["ended"] == "reset"
    assert stats(lab.client)["resets_sent"] > before["resets_sent"]


def test_destination_reset_reaches_the_application(lab: Lab) -> None:
    with dest_server("serve-reset", "7003") as server:
        res = app(NS_C, "expect-reset", DEST6, "7003")
        server.expect("RESULT ")
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


def raw(lab: Lab, preamble: str) -> dict[str, Any]:
    cmd = python_in(
        NS_C, "tests.integration.qst_peer", "raw", "--certs", str(lab.certs),
        "--server", "10.81.0.2", "--preamble", preamble, "--lifetime", "10",
    )  # fmt: skip
    result: dict[str, Any] = run_json(cmd, prefix="RAW ", timeout=30)
    return result


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


@pytest.mark.parametrize("unreachable", [UNREACHABLE4, UNREACHABLE6])
def test_unreachable_address_gets_the_icmp_packet(lab: Lab, unreachable: str) -> None:
    """-tcp §5.1.3: "the ICMP packet received by the concentrator is copied inside the Error
    Payload": the IP packet, header included — it names the router that refused (the
    destination namespace, 10.200.1.2 / fd00:200:1::2) — to the concentrator (.1)."""
    res = raw(lab, tcp_connect_tlv(unreachable, 80) + END)
    received = bytes.fromhex(str(res["received"]))
    assert res["ended"] is True
    assert received[0] == 0x02 and received[2:4] == b"\x00\x01"  # ICMP Packet Received
    packet = received[4 : 2 + received[1]]
    if ":" in unreachable:
        assert packet[0] >> 4 == 6 and packet[6] == 58 and packet[7] > 0  # ICMPv6, hop limit
        assert int.from_bytes(packet[4:6], "big") == len(packet) - 40 or len(packet) == 253
        source, destination = IPv6Address(packet[8:24]), IPv6Address(packet[24:40])
        icmp, unreach_type = packet[40:], 1
        assert (str(source), str(destination)) == ("fd00:200:1::2", "fd00:200:1::1")
    else:
        assert packet[0] >> 4 == 4 and packet[9] == 1  # IPv4, ICMP
        source, destination = IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
        icmp, unreach_type = packet[(packet[0] & 0x0F) * 4 :], 3
        assert (str(source), str(destination)) == ("10.200.1.2", "10.200.1.1")
    assert icmp[0] == unreach_type  # Destination Unreachable (the route is "unreachable")
    assert received[2 + received[1] :] == bytes.fromhex(END)


def test_own_address_is_denied(lab: Lab) -> None:
    res = raw(lab, tcp_connect_tlv("10.81.0.2", 4433) + END)
    assert res["received"] == "02020003" + END  # Network Failure


# -- scale and memory --------------------------------------------------------------------------


def test_200_concurrent_connections(lab: Lab) -> None:
    with dest_server("serve-echo", "7005"):
        res = app(NS_C, "many", DEST4, "7005", "200", "20000", timeout=90)
    assert res["failed"] == 0, (res["errors"], lab.client.log_tail(), lab.server.log_tail())
    assert res["ok"] == 200
    wait_until("the client's relays all closed", lambda: stats(lab.client)["active"] == 0)
    assert stats(lab.server)["active"] == 0


def test_slow_reader_keeps_memory_bounded(lab: Lab) -> None:
    """20 connections whose reader takes 64 kB/s for 4 s and then nothing, while the
    destination sends 200 MB on each: without backpressure the relays would buffer whatever
    the tunnel carries (GBs); with it each side holds about a window and a send buffer."""
    count = 20
    with dest_server("serve-bulk", "7006", str(200 * 1024 * 1024)):
        server_stats = stats(lab.server)
        server_before = server_stats["rss_kb"]
        client_before = stats(lab.client)["rss_kb"]
        slow_readers = python_in(NS_C, "tests.integration.qst_apps", "slow", DEST4, "7006",
                                 str(count), "65536", "4")  # fmt: skip
        with process(slow_readers, ready="SLOW ", timeout=60):
            # whatever would pile up has piled up once the destination's data stops flowing
            # (every relay paused); without backpressure it never stops and this times out
            flowing = {"bytes_up": -1}

            def settled() -> bool:
                now = stats(lab.server)["bytes_up"]
                same, flowing["bytes_up"] = now == flowing["bytes_up"], now
                return same

            wait_until("the destination's data to stop at the paused relays", settled,
                       timeout=30, interval=0.3)  # fmt: skip
            server_after = stats(lab.server)
            client_after = stats(lab.client)
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
        lab.server.log_tail()
    )  # slowed down, not buffered
    resets = sum(server_after[k] - server_stats[k] for k in ("resets_sent", "resets_received"))
    assert resets == 0, lab.server.log_tail()
