"""tunnel.aio.tun in a real namespace: ping (IPv4 and IPv6) through a TUN whose reader answers
echo requests, batched reads, and the one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest

from tests.integration.netns import REPO, Proc, in_ns, ip, namespaces, process, python_in, unique

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace per test: the path MTUs one test teaches the kernel stay out of the next."""
    with namespaces(unique("qta-tun")) as (name,):
        yield name


def tun_echo(ns: str, *args: str) -> AbstractContextManager[Proc]:
    return process(python_in(ns, "tests.integration.qta_tun_echo", *args), ready="READY ")


def command(proc: Proc, line: str) -> str:
    proc.send(line)
    if line == "stats":
        return proc.expect("STATS ")
    return proc.expect(f"OK {line}")


def test_ping_through_tun_and_batched_reads(ns: str) -> None:
    with tun_echo(ns, "--name", "qtat0", "--batch", "32") as echo:
        link = ip(ns, "-d", "link", "show", "qtat0").stdout
        assert "mtu 1400" in link and "tun" in link and ",UP" in link
        addrs = ip(ns, "addr", "show", "qtat0").stdout
        assert "10.77.0.1/24" in addrs and "fd00:77::1/64" in addrs
        assert "10.79.0.0/16 dev qtat0" in ip(ns, "route").stdout

        for target in ("10.77.0.2", "10.79.3.4", "fd00:77::2"):
            result = subprocess.run(
                in_ns(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", target),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "3 received" in result.stdout

        # Batching: with the reader paused, 100 datagrams wait in the device; on resume one
        # wakeup takes a whole batch (the bound), the rest follow.
        command(echo, "pause")
        sender = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(100): s.sendto(b'x' * 200, ('10.77.0.9', 9))\n"
        )
        subprocess.run(in_ns(ns, "python3", "-c", sender), check=True, timeout=30)
        command(echo, "resume")
        stats: dict[str, object] = {}
        for _ in range(50):  # bounded wait for the reader to drain what was queued
            stats = json.loads(command(echo, "stats"))
            if stats["udp9"] == 100:
                break
        assert stats["udp9"] == 100, stats
        assert stats["largest_batch"] == 32, stats
        assert stats["echo_replies"] == 9
        assert stats["write_drops"] == 0
        command(echo, "stop")
        assert echo.wait(timeout=10) == 0
    # non-persistent device: gone with its fd
    assert "qtat0" not in ip(ns, "link").stdout


ERRORS = """
from tunnel.aio.tun import TunDevice, TunError
first = TunDevice.create("qtat1", mtu=1400)
for name, mtu, addrs in [("qtat1", 1400, []), ("lo", 1400, []), ("qtat" + "x" * 12, 1400, []),
                         ("qtat2", 1000, ["fd00::1/64"]), ("qtat2", 40, []),
                         ("qtat2", 1400, ["10.0.0.300/24"])]:
    try:
        TunDevice.create(name, mtu=mtu, addresses=addrs)
        print("NO ERROR", name)
    except TunError as exc:
        print(exc)
"""


def test_errors_are_one_sentence(ns: str) -> None:
    result = subprocess.run(
        in_ns(ns, sys.executable, "-c", ERRORS),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines == [
        "TUN 'qtat1' is already open (in this or another process): pick another name or close it",
        "an interface named 'lo' already exists and is not a TUN device: pick another name",
        "TUN name 'qtatxxxxxxxxxxxx' is invalid: use 1 to 15 characters without '/' or spaces",
        "TUN MTU 1000 is below 1280, the minimum for IPv6: raise it",
        "TUN MTU 40 is outside 68..65535: choose an MTU in that range",
        "TUN address '10.0.0.300/24' is not an address with prefix length (e.g. 10.8.0.1/24)",
    ]


def test_not_root_error(ns: str) -> None:
    code = (
        "from tunnel.aio.tun import TunDevice, TunError\n"
        "try:\n    TunDevice.create('qtat3', mtu=1400)\n"
        "except TunError as exc:\n    print(exc)\n"
    )
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    result = subprocess.run(
        in_ns(ns, *nobody, sys.executable, "-c", code),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.stdout.strip() == (
        "opening /dev/net/tun needs root (or CAP_NET_ADMIN): run as root"
    ), result.stderr


def ping(ns: str, *args: str) -> str:
    result = subprocess.run(
        in_ns(ns, "ping", "-c", "2", "-i", "0.3", "-W", "1", *args),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout + result.stderr


def test_packet_too_big_reaches_the_sender_and_sets_the_path_mtu(ns: str) -> None:
    """tunnel.wire.icmp's answers, written into the TUN, are accepted by Linux: ping reports them
    and the kernel caches the path MTU (IPv4 frag-needed and ICMPv6 Packet Too Big)."""
    with tun_echo(ns, "--budget", "1280") as echo:
        out4 = ping(ns, "-M", "do", "-s", "1300", "10.79.3.4")
        assert "From 10.77.0.254 icmp_seq=1 Frag needed and DF set (mtu = 1280)" in out4, out4
        assert "mtu 1280" in ip(ns, "route", "get", "10.79.3.4").stdout
        out6 = ping(ns, "-M", "do", "-s", "1300", "fd00:77::5")
        assert "From fd00:77::fe icmp_seq=1 Packet too big: mtu=1280" in out6, out6
        assert "mtu 1280" in ip(ns, "-6", "route", "get", "fd00:77::5").stdout
        # packets within the budget still get through
        assert " 0% packet loss" in ping(ns, "-s", "1000", "10.79.3.5")
        assert json.loads(command(echo, "stats"))["too_big"] >= 2


def test_ipv4_frag_needed_from_a_local_address_is_dropped_by_linux(ns: str) -> None:
    """Why the caller must not use the host's own TUN address as the ICMPv4 source when writing
    into the TUN: Linux drops it as a martian source (IPv6 accepts it). Use the peer's tunnel
    address, or send the error through a raw socket."""
    with tun_echo(
        ns, "--budget", "1280", "--ptb-source-v4", "10.77.0.1", "--ptb-source-v6", "fd00:77::1"
    ):
        out4 = ping(ns, "-M", "do", "-s", "1300", "10.79.3.4")
        assert "Frag needed" not in out4, out4
        assert "mtu 1280" not in ip(ns, "route", "get", "10.79.3.4").stdout
        out6 = ping(ns, "-M", "do", "-s", "1300", "fd00:77::5")
        assert "Packet too big: mtu=1280" in out6, out6


TAP = """
import subprocess
from tunnel.aio.tun import DeviceKind, TunDevice, TunError, bridge_problem
def show(name):
    return subprocess.run(["ip", "-o", "-d", "link", "show", name], capture_output=True,
                          text=True).stdout
tun = TunDevice.create("qtat1", mtu=1400)
for name, bridge in [("qtat1", None), ("lo", None), ("qtat2", "qtanobr")]:
    try:
        TunDevice.create(name, mtu=1400, kind=DeviceKind.TAP, bridge=bridge)
        print("NO ERROR", name)
    except TunError as exc:
        print(exc)
print("LEFT qtat2" if show("qtat2") else "NOT LEFT qtat2")
print(bridge_problem("qtanobr"))
print(bridge_problem("qtat1"))
subprocess.run(["ip", "link", "add", "qtabr", "type", "bridge"], check=True)
print(bridge_problem("qtabr"))
tap = TunDevice.create("qtat3", mtu=1404, kind=DeviceKind.TAP, bridge="qtabr")
link = show("qtat3")
print("tap" in link.split(), "master qtabr" in link, "mtu 1404" in link, tap.kind.value)
tap.close()
print("GONE" if not show("qtat3") else "STILL THERE")
"""


def test_a_tap_joins_a_bridge_and_its_errors_are_one_sentence(ns: str) -> None:
    """L2 mode's device (README "L2 mode"): TunDevice of kind TAP, made a bridge port."""
    result = subprocess.run(
        in_ns(ns, sys.executable, "-c", TAP), capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "an interface named 'qtat1' already exists and is not a TAP device: pick another name",
        "an interface named 'lo' already exists and is not a TAP device: pick another name",
        "bridge 'qtanobr' does not exist: create it (ip link add qtanobr type bridge) or set "
        "l2.bridge to an existing one",
        "NOT LEFT qtat2",
        "bridge 'qtanobr' does not exist: create it (ip link add qtanobr type bridge; ip link "
        "set it up) or set l2.bridge to an existing one",
        "interface 'qtat1' is not a Linux bridge (it is tun): set l2.bridge to a bridge",
        "None",
        "True True True TAP",
        "GONE",
    ]


RING = """
import subprocess
from tunnel.aio.tun import TunDevice
def qlen(name):
    words = subprocess.run(["ip", "-o", "link", "show", name], capture_output=True,
                           text=True).stdout.split()
    return words[words.index("qlen") + 1].rstrip("\\\\")
print(qlen(TunDevice.create("qtat1", mtu=1400).name))
print(qlen(TunDevice.create("qtat2", mtu=1400, txqueuelen=5000).name))
"""


def test_the_transmit_ring_takes_its_configured_length(ns: str) -> None:
    """tun.txqueuelen: the ring the tun driver drops beyond (README "Client groups")."""
    result = subprocess.run(
        in_ns(ns, sys.executable, "-c", RING), capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["500", "5000"]


def offload_reports(ns: str, direction: str) -> list[dict[str, object]]:
    """What the qta_tun_gro child reports for `direction` ("write": merged writes, "read":
    segmentation offload), IPv4 then IPv6."""
    result = subprocess.run(
        python_in(ns, "tests.integration.qta_tun_gro"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    return [r for r in reports if r["direction"] == direction]


def test_segmentation_offload_reads_are_cut_into_whole_packets(ns: str) -> None:
    """tun.tso: a socket's 60 kB to a user-space peer come out of the TUN as super-packets
    (fewer reads than packets) cut into packets no larger than the MTU, every checksum right,
    every byte in order."""
    reports = offload_reports(ns, "read")
    assert [r["family"] for r in reports] == ["ipv4", "ipv6"]
    for report in reports:
        assert report["tso"] and report["intact"], report
        assert report["reads"] < report["packets"], report  # super-packets came
        assert report["largest"] <= report["mtu"] and report["checksums_valid"], report
        assert report["read_errors"] == 0, report


def test_merged_tcp_writes_reach_a_socket_intact(ns: str) -> None:
    """tun.offload: a burst of 30 consecutive segments from a user-space peer goes into the
    kernel in fewer writes than segments, and the socket reads every byte in order."""
    reports = offload_reports(ns, "write")
    assert [r["family"] for r in reports] == ["ipv4", "ipv6"]
    for report in reports:
        assert report["accepted"] == report["segments"] >= 10, report
        assert report["intact"] and report["received"] == report["segments"] * 1000, report
        assert report["writes"] < report["segments"] and report["fallbacks"] == 0, report
