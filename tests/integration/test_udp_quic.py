"""tunnel.aio.udp between two namespaces joined by a veth: UdpEndpoint bound to one access,
QuicServer demultiplexing connections, QuicClient/QuicDriver exchanging a stream and DATAGRAMs
over IPv4 and IPv6, and a short bounded datagram throughput figure."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import (
    REPO,
    End,
    namespaces,
    process,
    python_in,
    run_json,
    unique,
    veth,
)

pytestmark = pytest.mark.root

NS_CLIENT, NS_SERVER = unique("qta-uc"), unique("qta-us")
IF_CLIENT, IF_SERVER = unique("qtauc"), unique("qtaus")


@pytest.fixture(scope="module")
def net() -> Iterator[None]:
    """Two namespaces and a veth, shared by the module: each test's server and client exit
    before the next test starts (the server reports no connection left)."""
    with namespaces(NS_CLIENT, NS_SERVER):
        veth(
            End(NS_CLIENT, IF_CLIENT, ["10.78.0.1/24", "fd00:78::1/64"]),
            End(NS_SERVER, IF_SERVER, ["10.78.0.2/24", "fd00:78::2/64"]),
        )
        yield


def run_pair(certs: Path, server_address: str, client_args: list[str]) -> dict[str, object]:
    server_cmd = python_in(
        NS_SERVER, "tests.integration.qta_quic_peer", "server", "--certs", str(certs),
        "--address", server_address, "--interface", IF_SERVER, "--port", "4433",
    )  # fmt: skip
    with process(server_cmd, ready=None) as server:
        ready = server.expect("READY ")
        port, buffers = ready.split(" ", 1)
        assert port == "4433"
        buffer_report = json.loads(buffers)
        # root lifts the rmem_max/wmem_max cap (SO_RCVBUFFORCE), so 4 MB is granted
        assert buffer_report["receive"] >= 4 * 1024 * 1024, buffer_report
        assert buffer_report["send"] >= 4 * 1024 * 1024, buffer_report
        client_cmd = python_in(
            NS_CLIENT, "tests.integration.qta_quic_peer", "client", "--certs", str(certs),
            "--remote", server_address, "--interface", IF_CLIENT, *client_args,
        )  # fmt: skip
        result: dict[str, object] = run_json(client_cmd, timeout=90)
        server.send("stop")
        stopped = server.expect_json("STOPPED ")
        assert stopped["connections_left"] == 0
        assert server.wait(timeout=10) == 0
    return result


def test_quic_over_ipv4_two_connections_one_server_socket(net: None, lab_certs: Path) -> None:
    result = run_pair(
        lab_certs,
        "10.78.0.2",
        ["--address", "10.78.0.1", "--connections", "2", "--seconds", "2"],
    )
    assert result["stream_echo_ok"] is True
    assert result["local"] == ["10.78.0.1", result["local"][1]]  # type: ignore[index]
    assert result["pongs"] == sorted(f"pong{i}" for i in range(10))
    server = result["server"]
    assert isinstance(server, dict)
    assert server["connections"] == 2  # demultiplexed by connection ID on one socket
    assert server["datagrams"] > 0
    # batching really happened on the receive side, and segmentation offload on the send side
    assert server["largest_receive_batch"] > 1
    client_udp = result["client_udp"]
    assert isinstance(client_udp, dict)
    assert client_udp["gso_sends"] > 0
    print(
        f"\nQUIC DATAGRAM goodput over veth (IPv4, 1100-byte payloads, uvloop, batched): "
        f"{result['goodput_mbps']} Mbit/s; {server['datagrams']} of {result['queued']} "
        f"datagrams arrived in {result['elapsed_s']} s; budget {result['datagram_budget']} B"
    )


def test_quic_over_ipv6(net: None, lab_certs: Path) -> None:
    result = run_pair(lab_certs, "fd00:78::2", ["--seconds", "0.5"])
    assert result["stream_echo_ok"] is True
    assert result["pongs"] == sorted(f"pong{i}" for i in range(10))
    # bound by interface only (SO_BINDTODEVICE), any address of the family
    assert result["local"][0] == "::"  # type: ignore[index]


def test_endpoint_errors() -> None:
    code = (
        "from tunnel.aio.udp import UdpEndpoint, EndpointError\n"
        "import socket\n"
        "for kw in [dict(local_address='10.0.0.300'), dict(local_address='192.0.2.99'),\n"
        "           dict(interface='qtanope0'),\n"
        "           dict(local_address='::1', family=socket.AF_INET)]:\n"
        "    try:\n        UdpEndpoint.bind(**kw); print('NO ERROR', kw)\n"
        "    except EndpointError as exc:\n        print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("local address '10.0.0.300' is not an IP address")
    assert lines[1].startswith("cannot bind UDP 192.0.2.99 port 0 (Cannot assign requested")
    assert lines[2].startswith("cannot bind to interface 'qtanope0' (No such device)")
    assert lines[3].startswith("local address ::1 does not belong to the requested family")
