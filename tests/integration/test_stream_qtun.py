"""Stream mode through the real programs (`qtun client` / `qtun concentrator`, tunnel mode +
stream mode on one connection) in the qst namespaces of test_stream_mode.py: an HTTP transfer
intercepted into a QUIC stream arrives intact, and iperf3 TCP goodput of stream mode against
tunnel mode (the same connection's DATAGRAMs, TCP not intercepted) is measured and printed
(run with -s). Unshaped veths, 2 shared cores: the figures are noisy."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.qta_netns import REPO
from tests.integration.test_stream_mode import (
    DEST4,
    DEST6,
    IF,
    NS_C,
    NS_D,
    NS_S,
    lab_namespaces,
    ns_cmd,
    process,
    py_cmd,
    sh,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

INTERCEPT = ["10.200.0.0/16", "fd00:200::/32"]
PID = os.getpid()
IF_E, IF_F = f"qste{PID}"[:15], f"qstf{PID}"[:15]  # the second access (5G), client/server ends
CONCENTRATOR = "10.83.0.1"  # on the concentrator's loopback, reachable over either access


def toml(entries: list[tuple[str, dict[str, object]]], top: dict[str, object]) -> str:
    def value(v: object) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [f"{k} = {value(v)}" for k, v in top.items()]
    for header, table in entries:
        lines.append(header)
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def configs(work: Path, stream: bool, **stream_keys: object) -> tuple[Path, Path]:
    certs = work / "certs"
    tls = {"ca": str(certs / "ca.pem")}
    conc = toml(
        [
            ("[listen]", {"addresses": [CONCENTRATOR], "port": 4433}),
            ("[tun]", {"name": "qstt0", "addresses": ["10.8.0.1/16", "fd00:8::1/64"]}),
            ("[tls]", {**tls, "cert": str(certs / "concentrator.pem"),
                       "key": str(certs / "concentrator.key")}),
            ("[[client]]", {"name": "alice", "addresses": ["10.8.0.2/32", "fd00:8::2/128"]}),
            ("[stream]", {"enabled": stream, **stream_keys}),
            ("[observability]", {"status_file": str(work / "conc.json"),
                                 "status_interval": 0.2}),
        ],
        {"modes": ["tunnel"]},
    )  # fmt: skip
    client = toml(
        [
            ("[concentrator]", {"address": CONCENTRATOR, "port": 4433,
                                "server_name": "concentrator"}),
            ("[[access]]", {"name": "wifi", "access_id": "wifi", "interface": IF["a"],
                            "local_address": "10.81.0.1"}),
            ("[[access]]", {"name": "5g", "access_id": "5g", "interface": IF_E,
                            "local_address": "10.82.0.1"}),
            ("[tun]", {"name": "qstt1", "addresses": ["10.8.0.2/32", "fd00:8::2/128"],
                       "routes": INTERCEPT}),
            ("[tls]", {**tls, "cert": str(certs / "alice.pem"), "key": str(certs / "alice.key")}),
            ("[stream]", {"enabled": stream, "intercept": INTERCEPT, "listen_port": 4480,
                          **stream_keys}),
            ("[observability]", {"status_file": str(work / "client.json"),
                                 "status_interval": 0.2}),
        ],
        {"name": "alice", "mode": "tunnel"},
    )  # fmt: skip
    (work / "conc.toml").write_text(conc)
    (work / "client.toml").write_text(client)
    return work / "conc.toml", work / "client.toml"


def wait_up(status: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(status.read_text()).get("state") == "up":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{status} never said up")


@contextmanager
def qtun(work: Path, stream: bool, **stream_keys: object) -> Iterator[None]:
    conc_toml, client_toml = configs(work, stream, **stream_keys)
    for status in ("conc.json", "client.json"):
        (work / status).unlink(missing_ok=True)
    with (
        process(py_cmd(NS_S, "tunnel.aio.cli", "concentrator", "-c", str(conc_toml)), ready=None)
        as conc,
    ):  # fmt: skip
        wait_up(work / "conc.json")
        with process(py_cmd(NS_C, "tunnel.aio.cli", "client", "-c", str(client_toml)), ready=None):
            try:
                wait_up(work / "client.json")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {conc.stderr()}") from None
            yield


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("qst-qtun")
    sh(sys.executable, str(REPO / "scripts" / "make-certs"), "--out", str(work / "certs"),
       "--clients", "alice", timeout=60)  # fmt: skip
    with lab_namespaces(client_routes=False):
        sh(*ns_cmd(NS_S, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        sh(*ns_cmd(NS_S, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"))
        sh("ip", "-n", NS_D, "route", "add", "10.8.0.0/16", "via", "10.200.1.1")
        sh("ip", "-n", NS_D, "-6", "route", "add", "fd00:8::/64", "via", "fd00:200:1::1")
        # a second access between client and concentrator, and the concentrator's address
        # routed over both (WiFi preferred)
        sh("ip", "link", "add", IF_E, "netns", NS_C, "type", "veth", "peer", "name", IF_F,
           "netns", NS_S)  # fmt: skip
        for ns, ifname, addr in ((NS_C, IF_E, "10.82.0.1/24"), (NS_S, IF_F, "10.82.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", NS_S, "addr", "add", f"{CONCENTRATOR}/32", "dev", "lo")
        for metric, (via, dev) in enumerate((("10.81.0.2", IF["a"]), ("10.82.0.2", IF_E)), 1):
            sh("ip", "-n", NS_C, "route", "add", f"{CONCENTRATOR}/32", "via", via, "dev", dev,
               "metric", str(metric))  # fmt: skip
        yield work


def iperf3(dest: str, seconds: int = 5) -> float:
    with process(ns_cmd(NS_D, "iperf3", "-s", "-1", "--forceflush"), ready="Server listening"):
        out = sh(*ns_cmd(NS_C, "iperf3", "-c", dest, "-t", str(seconds), "-J"), timeout=60)
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6


def test_stream_mode_through_qtun_programs(work: Path, tmp_path: Path) -> None:
    content = os.urandom(4 * 1024 * 1024 + 5)
    (tmp_path / "blob").write_bytes(content)
    with (
        qtun(work, stream=True),
        process(
            ns_cmd(NS_D, sys.executable, "-u", "-m", "http.server", "8080", "--bind", "::",
                   "--directory", str(tmp_path)),
            ready="Serving HTTP",
        ),
    ):  # fmt: skip
        code = (
            "import hashlib,urllib.request;"
            f"d=urllib.request.urlopen('http://[{DEST6}]:8080/blob',timeout=30).read();"
            "print(len(d), hashlib.sha256(d).hexdigest())"
        )
        out = sh(*ns_cmd(NS_C, sys.executable, "-c", code), timeout=60)
        status = json.loads((work / "client.json").read_text())
    assert out.stdout.split() == [str(len(content)), hashlib.sha256(content).hexdigest()]
    assert status["state"] == "up"


def test_goodput_stream_mode_against_tunnel_mode(work: Path) -> None:
    figures: dict[str, float] = {}
    for run in range(1):
        with qtun(work, stream=True):
            figures[f"stream {run}"] = iperf3(DEST4)
        big = 1024 * 1024
        with qtun(work, stream=True, window=big, send_buffer=big):
            figures[f"stream-1MB {run}"] = iperf3(DEST4)
        with qtun(work, stream=False):
            figures[f"tunnel {run}"] = iperf3(DEST4)
    print(
        "iperf3 TCP 5 s, unshaped veth (noisy, shared 2 cores), Mbit/s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in figures.items())
    )
    assert all(v > 5 for v in figures.values())


def test_transfer_survives_migration_to_the_other_access(work: Path, tmp_path: Path) -> None:
    """WiFi goes down in the middle of an intercepted HTTP download: the client migrates the
    QUIC connection to 5G (RFC 9000 §9) and the stream, hence the TCP connection, goes on."""
    content = os.urandom(24 * 1024 * 1024)
    (tmp_path / "big").write_bytes(content)
    # the reader takes ~4 s (64 kB every 10 ms), so the outage hits mid-transfer
    code = (
        "import hashlib,time,urllib.request;"
        f"r=urllib.request.urlopen('http://{DEST4}:8080/big',timeout=30);h=hashlib.sha256();n=0\n"
        "while (b:=r.read(65536)):\n h.update(b);n+=len(b);time.sleep(0.01)\n"
        "print(n, h.hexdigest())"
    )
    try:
        with (
            qtun(work, stream=True),
            process(
                ns_cmd(NS_D, sys.executable, "-u", "-m", "http.server", "8080", "--bind",
                       "0.0.0.0", "--directory", str(tmp_path)),
                ready="Serving HTTP",
            ),
            process(ns_cmd(NS_C, sys.executable, "-c", code), ready=None) as reader,
        ):  # fmt: skip
            time.sleep(1.5)
            sh("ip", "-n", NS_C, "link", "set", IF["a"], "down")
            line = reader.expect("", timeout=60)
            status = json.loads((work / "client.json").read_text())
    finally:
        sh("ip", "-n", NS_C, "link", "set", IF["a"], "up")
    assert line.split() == [str(len(content)), hashlib.sha256(content).hexdigest()]
    assert status["counters"]["migrations"] >= 1
