"""The real `qtun client` in mode masque (MASQUE CONNECT-IP, RFC 9484, over HTTP/3: issue 18)
against the real `qtun concentrator`, in two namespaces joined by two veth pairs (two accesses,
"wifi" and "5g"), real TUN devices on both ends. Prefix qmq, names unique per run; the
namespaces are removed even on failure (their TUN and veth devices go with them), the programs
stopped.

    client ns (qmq-c)                                concentrator ns (qmq-s)
      qmqw0 10.92.1.2 fd00:92:1::2  ---- wifi ----  qmqw1 10.92.1.1 fd00:92:1::1
      qmqg0 10.92.2.2 fd00:92:2::2  ---- 5g   ----  qmqg1 10.92.2.1 fd00:92:2::1
      TUN qmqt0: the addresses the                   lo 10.92.0.1 fd00:92::1 (service address)
        concentrator assigns (ADDRESS_ASSIGN)        TUN qmqc0 10.8.0.1/16 fd00:8::1/64

Checked: the TUN gets alice's [[client]] addresses from the concentrator; ping v4 and v6 each
way; a TCP transfer each way (iperf3, bounded in bytes); the one connection moved to 5G when
WiFi's link goes down, the ping going on. The decisions are tested in memory
(tests/unit/test_masque_agents.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.integration.netns import (
    End,
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
from tests.integration.test_qtun_client import received, replies
from tests.integration.test_stream_mode import iperf3_server

pytestmark = [pytest.mark.root]

NS_C, NS_S = unique("qmq-c"), unique("qmq-s")
TUN_C, TUN_S = unique("qmqt"), unique("qmqc")
CONC_V4, CONC_V6 = "10.8.0.1", "fd00:8::1"
ALICE_V4, ALICE_V6 = "10.8.0.3", "fd00:8::3"
ACCESSES = {  # name: (client if, server if, v4 /24 prefix, v6 /64 prefix)
    "wifi": (unique("qmqw"), unique("qmqx"), "10.92.1", "fd00:92:1"),
    "5g": (unique("qmqg"), unique("qmqh"), "10.92.2", "fd00:92:2"),
}
STATUS_INTERVAL = 0.2
TRANSFER_BYTES = "4M"  # each TCP transfer: bounded in bytes, and in time by iperf3's timeout


def configs(workdir: Path, certs: Path) -> None:
    tls = {"ca": certs / "ca.pem"}
    conc = toml_text(
        {"modes": ["tunnel", "session", "masque"], "to_concentrator": "allow"},
        ("[listen]", {"addresses": ["10.92.0.1"], "port": 4433}),
        ("[tun]", {"name": TUN_S, "addresses": [f"{CONC_V4}/16", f"{CONC_V6}/64"]}),
        ("[tls]", {**tls, "cert": certs / "concentrator.pem", "key": certs / "concentrator.key"}),
        ("[[client]]", {"name": "alice", "addresses": [f"{ALICE_V4}/32", f"{ALICE_V6}/128"]}),
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
        {"name": "alice", "mode": "masque"},
        ("[concentrator]", {"address": "10.92.0.1", "port": 4433, "server_name": "concentrator"}),
        *accesses,
        # no addresses: the concentrator assigns them (RFC 9484 §4.7.1)
        ("[tun]", {"name": TUN_C, "routes": [f"{CONC_V4}/32", f"{CONC_V6}/128"]}),
        ("[tls]", {**tls, "cert": certs / "alice.pem", "key": certs / "alice.key"}),
        ("[limits]", {"probe_interval": 0.2, "reconnect_backoff_max": 1.0, "idle_timeout": 10.0}),
        ("[observability]", {"status_file": workdir / "client-status.json",
                             "status_interval": STATUS_INTERVAL}),
    )  # fmt: skip
    (workdir / "concentrator.toml").write_text(conc)
    (workdir / "client.toml").write_text(client)


def ping(ns: str, target: str, count: int = 3) -> int:
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", target]
    return replies(sh(*in_ns(ns, *argv), check=False, timeout=count * 0.2 + 15).stdout)


def iperf3(ns: str, server: str, *options: str) -> dict[str, Any]:
    argv = ["timeout", "30", "iperf3", "-c", server, "-n", TRANSFER_BYTES, "-J"]
    out = sh(*in_ns(ns, *argv, "--connect-timeout", "3000", *options), check=False, timeout=40)
    try:
        data: dict[str, Any] = json.loads(out.stdout[out.stdout.index("{") :])
    except ValueError:
        pytest.fail(f"iperf3 printed no JSON: {out.stdout[-300:]} {out.stderr[-300:]}")
    assert "error" not in data, data["error"]
    return data


@pytest.fixture
def masque(tmp_path: Path, lab_certs: Path) -> Iterator[tuple[Qtun, Qtun]]:
    with namespaces(NS_C, NS_S):
        ip(NS_S, "addr", "add", "10.92.0.1/32", "dev", "lo")
        for metric, (client_if, server_if, v4, v6) in enumerate(ACCESSES.values(), start=1):
            veth(
                End(NS_C, client_if, [f"{v4}.2/24", f"{v6}::2/64"]),
                End(NS_S, server_if, [f"{v4}.1/24", f"{v6}::1/64"]),
            )
            ip(NS_C, "route", "add", "10.92.0.1/32", "via", f"{v4}.1", "dev", client_if,
               "metric", str(metric))  # fmt: skip
        configs(tmp_path, lab_certs)

        def program(ns: str, role: Literal["client", "concentrator"]) -> Qtun:
            config = tmp_path / f"{role}.toml"
            status = tmp_path / f"{role}-status.json"
            return Qtun(ns, role, config, status, tmp_path / f"{role}.log")

        conc, client = program(NS_S, "concentrator"), program(NS_C, "client")
        with ExitStack() as stop:  # each stopped even if stopping the other fails
            stop.callback(conc.stop)
            stop.callback(client.stop)
            conc.start().wait_state()
            client.start()
            client.wait_status('state "up"', lambda s: s.get("state") == "up", alive=[conc])
            yield conc, client


def access(client: Qtun, name: str) -> dict[str, Any]:
    for entry in client.status().get("accesses", []):
        if entry["name"] == name:
            return dict(entry)
    return {}


def test_masque_ping_tcp_both_ways_and_migration(masque: tuple[Qtun, Qtun]) -> None:
    conc, client = masque
    # the TUN carries the addresses the concentrator assigned
    shown = sh(*in_ns(NS_C, "ip", "-o", "addr", "show", "dev", TUN_C)).stdout
    assert f"{ALICE_V4}/32" in shown and f"{ALICE_V6}/128" in shown, shown
    status = client.status()
    assert status["mode"] == "masque" and status["tun"]["mtu"] >= 1280
    # the concentrator's status file lags the client's by up to a write gap: poll it
    listed = conc.wait_status("alice listed", lambda s: len(s.get("clients", [])) == 1, timeout=5)
    (entry,) = listed["clients"]
    assert entry["mode"] == "masque" and entry["connections"][0]["alpn"] == "h3"

    # ping, both ways, both versions
    assert ping(NS_C, CONC_V4) == 3, client.log_tail() + conc.log_tail()
    assert ping(NS_C, CONC_V6) == 3, client.log_tail() + conc.log_tail()
    assert ping(NS_S, ALICE_V4) == 3, client.log_tail() + conc.log_tail()
    assert ping(NS_S, ALICE_V6) == 3, client.log_tail() + conc.log_tail()

    # TCP, both ways: the client sends to the concentrator's host, then receives (-R)
    with iperf3_server(NS_S):
        up = iperf3(NS_C, CONC_V4)
    with iperf3_server(NS_S):
        down = iperf3(NS_C, CONC_V4, "-R")
    for result in (up, down):
        # TCP delivered what was sent (the receiver's count stops at the sender's last report)
        assert int(result["end"]["sum_sent"]["bytes"]) >= 4 * 1024 * 1024, result["end"]
        assert int(result["end"]["sum_received"]["bytes"]) > 0, result["end"]
    print(  # figures for the reader (-s), never asserted
        f"masque TCP up {up['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s, "
        f"down {down['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s"
    )

    # a link down: the one connection moves to 5G (QUIC migration) and the ping goes on
    argv = ["ping", "-n", "-c", "60", "-i", "0.05", "-W", "1", CONC_V4]
    with process(in_ns(NS_C, *argv), ready="64 bytes", stop_by="term", name="ping") as pinger:
        ip(NS_C, "link", "set", ACCESSES["wifi"][0], "down")
        assert received(pinger) >= 40, client.log_tail() + conc.log_tail()
    client.wait_status("a migration", lambda s: s["counters"]["migrations"] >= 1, alive=[conc])
    wait_until("5g active", lambda: access(client, "5g").get("active") is True, 10)
    (entry,) = conc.status()["clients"]
    assert len(entry["connections"]) == 1
    assert ping(NS_S, ALICE_V6) == 3, client.log_tail() + conc.log_tail()
