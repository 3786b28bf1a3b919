"""Stream mode through the real programs (`qtun client` / `qtun concentrator`, tunnel mode +
stream mode on one connection) in the qst namespaces of test_stream_mode.py: an HTTP transfer
intercepted into a QUIC stream arrives intact, iperf3 TCP runs through stream mode (default and
1 MB windows) and, with stream mode off, through tunnel mode's DATAGRAMs; a transfer survives
the client's migration to its other access. Goodput figures are printed (run with -s), never
judged: `make bench` measures them."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import (
    End,
    Qtun,
    forwarding,
    in_ns,
    ip,
    process,
    qtun,
    sh,
    toml_text,
    unique,
    veth,
)
from tests.integration.test_stream_mode import (
    DEST4,
    DEST6,
    IF,
    NS_C,
    NS_D,
    NS_S,
    digest,
    fetch_code,
    http_server,
    iperf3_server,
    lab_namespaces,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

INTERCEPT = ["10.200.0.0/16", "fd00:200::/32"]
IF_E, IF_F = unique("qste"), unique("qstf")  # the second access (5G), client/server ends
CONCENTRATOR = "10.83.0.1"  # on the concentrator's loopback, reachable over either access


def configs(work: Path, certs: Path, stream: bool, **stream_keys: object) -> tuple[Path, Path]:
    tls = {"ca": certs / "ca.pem"}
    conc = toml_text(
        {"modes": ["tunnel"]},
        ("[listen]", {"addresses": [CONCENTRATOR], "port": 4433}),
        ("[tun]", {"name": "qstt0", "addresses": ["10.8.0.1/16", "fd00:8::1/64"]}),
        ("[tls]", {**tls, "cert": certs / "concentrator.pem", "key": certs / "concentrator.key"}),
        ("[[client]]", {"name": "alice", "addresses": ["10.8.0.2/32", "fd00:8::2/128"]}),
        ("[stream]", {"enabled": stream, **stream_keys}),
        ("[observability]", {"status_file": work / "conc.json", "status_interval": 0.2}),
    )
    client = toml_text(
        {"name": "alice", "mode": "tunnel"},
        ("[concentrator]", {"address": CONCENTRATOR, "port": 4433,
                            "server_name": "concentrator"}),
        ("[[access]]", {"name": "wifi", "access_id": "wifi", "interface": IF["a"],
                        "local_address": "10.81.0.1"}),
        ("[[access]]", {"name": "5g", "access_id": "5g", "interface": IF_E,
                        "local_address": "10.82.0.1"}),
        ("[tun]", {"name": "qstt1", "addresses": ["10.8.0.2/32", "fd00:8::2/128"],
                   "routes": INTERCEPT}),
        ("[tls]", {**tls, "cert": certs / "alice.pem", "key": certs / "alice.key"}),
        ("[stream]", {"enabled": stream, "intercept": INTERCEPT, "listen_port": 4480,
                      **stream_keys}),
        ("[observability]", {"status_file": work / "client.json", "status_interval": 0.2}),
    )  # fmt: skip
    (work / "conc.toml").write_text(conc)
    (work / "client.toml").write_text(client)
    return work / "conc.toml", work / "client.toml"


@contextmanager
def qtun_pair(work: Path, certs: Path, stream: bool, **stream_keys: object) -> Iterator[Qtun]:
    """The concentrator, then the client, each up; yields the client."""
    conc_toml, client_toml = configs(work, certs, stream, **stream_keys)
    with (
        qtun(NS_S, "concentrator", conc_toml, work / "conc.json") as conc,
        qtun(NS_C, "client", client_toml, work / "client.json", state=None) as client,
    ):
        client.wait_status('state "up"', lambda s: s.get("state") == "up", alive=[conc])
        yield client


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("qst-qtun")
    with lab_namespaces(client_routes=False):
        forwarding(NS_S)
        ip(NS_D, "route", "add", "10.8.0.0/16", "via", "10.200.1.1")
        ip(NS_D, "-6", "route", "add", "fd00:8::/64", "via", "fd00:200:1::1")
        # a second access between client and concentrator, and the concentrator's address
        # routed over both (WiFi preferred)
        veth(End(NS_C, IF_E, ["10.82.0.1/24"]), End(NS_S, IF_F, ["10.82.0.2/24"]))
        ip(NS_S, "addr", "add", f"{CONCENTRATOR}/32", "dev", "lo")
        for metric, (via, dev) in enumerate((("10.81.0.2", IF["a"]), ("10.82.0.2", IF_E)), 1):
            ip(NS_C, "route", "add", f"{CONCENTRATOR}/32", "via", via, "dev", dev,
               "metric", str(metric))  # fmt: skip
        yield work


def iperf3(dest: str, seconds: int = 1) -> float:
    """Mbit/s received by an iperf3 TCP test from the client namespace to `dest`."""
    with iperf3_server(NS_D):
        out = sh(*in_ns(NS_C, "iperf3", "-c", dest, "-t", str(seconds), "-J"), timeout=60)
    report: dict[str, Any] = json.loads(out.stdout)
    assert "error" not in report, report["error"]
    received = report["end"]["sum_received"]
    assert received["bytes"] > 0, received
    return float(received["bits_per_second"]) / 1e6


def test_stream_mode_through_qtun_programs(work: Path, lab_certs: Path, tmp_path: Path) -> None:
    """An HTTP download and an iperf3 test, both intercepted into QUIC streams."""
    content = os.urandom(4 * 1024 * 1024 + 5)
    (tmp_path / "blob").write_bytes(content)
    with qtun_pair(work, lab_certs, stream=True) as client, http_server(NS_D, "::", tmp_path):
        code = fetch_code(f"http://[{DEST6}]:8080/blob")
        out = sh(*in_ns(NS_C, sys.executable, "-c", code), timeout=60)
        mbps = iperf3(DEST4)
        # the download, iperf3's control and its data connection: 3 streams
        client.wait_status("3 TCP connections on streams", lambda s: s["stream"]["opened"] >= 3)
    assert out.stdout.split() == digest(content)
    print(f"iperf3 TCP through stream mode, unshaped veth: {mbps:.0f} Mbit/s")


def test_iperf3_with_big_stream_windows_and_without_stream_mode(
    work: Path, lab_certs: Path
) -> None:
    """stream.window and stream.send_buffer of 1 MB on both sides still carry TCP; with stream
    mode off the same TCP is not intercepted but tunnelled as packets in DATAGRAMs."""
    big = 1024 * 1024
    with qtun_pair(work, lab_certs, stream=True, window=big, send_buffer=big) as client:
        stream_mbps = iperf3(DEST4)
        client.wait_status("iperf3 on streams", lambda s: s["stream"]["opened"] >= 2)
    with qtun_pair(work, lab_certs, stream=False) as client:
        before = client.status()["tun"]["rx_packets"]
        tunnel_mbps = iperf3(DEST4)
        status = client.wait_status(
            "iperf3 through the TUN", lambda s: s["tun"]["rx_packets"] - before > 100
        )
    assert not status.get("stream", {}).get("opened"), status
    print(
        "iperf3 TCP 1 s, unshaped veth (noisy, shared 2 cores), Mbit/s: "
        f"stream-1MB {stream_mbps:.0f}, tunnel {tunnel_mbps:.0f}"
    )


def test_transfer_survives_migration_to_the_other_access(
    work: Path, lab_certs: Path, tmp_path: Path
) -> None:
    """WiFi goes down in the middle of an intercepted HTTP download: the client migrates the
    QUIC connection to 5G (RFC 9000 §9) and the stream, hence the TCP connection, goes on."""
    content = os.urandom(24 * 1024 * 1024)
    (tmp_path / "big").write_bytes(content)
    # the reader takes ~4 s (64 kB every 10 ms) and says when it has 2 MB: the outage comes
    # then, mid-transfer
    code = (
        "import hashlib,time,urllib.request;"
        f"r=urllib.request.urlopen('http://{DEST4}:8080/big',timeout=30);h=hashlib.sha256();n=0\n"
        "while (b:=r.read(65536)):\n"
        " h.update(b);n+=len(b);time.sleep(0.01)\n"
        " if n==2*1024*1024: print('HALFWAY',flush=True)\n"
        "print('DONE',n, h.hexdigest(),flush=True)"
    )
    try:
        with (
            qtun_pair(work, lab_certs, stream=True) as client,
            http_server(NS_D, "0.0.0.0", tmp_path),
            process(in_ns(NS_C, sys.executable, "-c", code), ready="HALFWAY") as reader,
        ):
            ip(NS_C, "link", "set", IF["a"], "down")
            line = reader.expect("DONE ", timeout=60)
            client.wait_status("a migration counted", lambda s: s["counters"]["migrations"] >= 1)
    finally:
        ip(NS_C, "link", "set", IF["a"], "up")
    assert line.split() == digest(content)
