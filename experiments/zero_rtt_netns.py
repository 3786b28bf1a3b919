"""The real programs for experiments/bench_zero_rtt.py `--netns` (root): `qtun concentrator` and a
session-mode `qtun client` in network namespaces, each access through a middle namespace whose
`qtwire` (testbed/wire/qtwire.c, built by `make`) adds the one-way delay (this kernel has no
netem, README "Link impairment without netem").

    client ns                middle ns (one per access)             concentrator ns
      <wifi> 10.97.1.2 --- veth --- qtwire (RTT/2 each way) --- veth --- 10.97.1.1
      <5g>   10.97.2.2 --- veth --- qtwire (RTT/2 each way) --- veth --- 10.97.2.1
      TUN 10.8.0.3                                                      lo 10.97.0.1, TUN 10.8.0.1

One run: both programs started fresh, 5g's link down; once the session runs over wifi (and the
client has its ticket, with 0-RTT), wifi's link goes down and 5g's up (one `ip -batch`), then a
sender in the client namespace offers a UDP datagram to 10.8.0.1 every `step` through the TUN;
the figure is the time from just before that command to the first datagram a receiver in the
concentrator namespace gets (it can only have come over 5g's new connection). Wall clock: the
handshake's CPU (certificate checks, which a resumption skips) is in it, and so is the noise of
a shared 2-core machine. Names are unique per run; everything is removed even on failure.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from testbed.paths import WIRE_BINARY
from tests.integration.netns import (
    End,
    Qtun,
    in_ns,
    ip,
    namespaces,
    process,
    sh,
    sysctl,
    toml_text,
    unique,
    veth,
    wait_until,
)
from tunnel.user_error import RuntimeFailure

SERVICE, CONC_TUN, CLIENT_TUN = "10.97.0.1", "10.8.0.1", "10.8.0.3"
PORT = 9977
ACCESSES = {"wifi": "10.97.1", "5g": "10.97.2"}
RECEIVER = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"s.bind(({CONC_TUN!r}, {PORT}))\n"
    "print('READY', flush=True)\n"
    "s.settimeout(30)\n"
    "s.recv(2048)\n"
    "print('FIRST', repr(time.time()), flush=True)\n"
)
SENDER = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "step = float(sys.argv[1])\n"
    "print('READY', flush=True)\n"
    "sys.stdin.readline()\n"
    "end = time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < end:\n"
    "    try:\n"
    f"        s.sendto(b'x' * 64, ({CONC_TUN!r}, {PORT}))\n"
    "    except OSError:\n"
    "        pass\n"
    "    time.sleep(step)\n"
)


class NetnsError(RuntimeFailure):
    """The namespaces could not be built or a program did not come up (one sentence)."""


def _wire_set(control: Path, line: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(control))
        s.sendall(line.encode() + b"\n")
        reply = s.recv(4096).decode()
    if not reply.startswith("ok"):
        raise NetnsError(f"qtwire refused {line!r}: {reply.strip()}")


def _mac(ns: str, ifname: str) -> str:
    (link,) = json.loads(ip(ns, "-j", "link", "show", "dev", ifname).stdout)
    return str(link["address"])


def _configs(workdir: Path, certs: Path, names: dict[str, str], zero_rtt: bool) -> None:
    tls = {"ca": certs / "ca.pem"}
    conc = toml_text(
        {"modes": ["session"], "scheduler": "failover", "to_concentrator": "allow"},
        ("[listen]", {"addresses": [SERVICE], "port": 4433}),
        ("[tun]", {"name": names["conc_tun"], "addresses": [f"{CONC_TUN}/16"]}),
        ("[tls]", {**tls, "cert": certs / "concentrator.pem", "key": certs / "concentrator.key"}),
        ("[[client]]", {"name": "alice", "addresses": [f"{CLIENT_TUN}/32"]}),
        ("[limits]", {"idle_timeout": 10.0, "zero_rtt": zero_rtt}),
        ("[observability]", {"status_file": workdir / "concentrator-status.json",
                             "status_interval": 0.1}),
    )  # fmt: skip
    accesses = [
        ("[[access]]", {"name": name, "access_id": name, "interface": names[f"c_{name}"],
                        "local_address": f"{prefix}.2"})
        for name, prefix in ACCESSES.items()
    ]  # fmt: skip
    client = toml_text(
        {"name": "alice", "mode": "session", "scheduler": "failover"},
        ("[concentrator]", {"address": SERVICE, "port": 4433, "server_name": "concentrator"}),
        *accesses,
        ("[tun]", {"name": names["client_tun"], "addresses": [f"{CLIENT_TUN}/32"],
                   "routes": [f"{CONC_TUN}/32"]}),
        ("[tls]", {**tls, "cert": certs / "alice.pem", "key": certs / "alice.key"}),
        ("[limits]", {"probe_interval": 0.2, "reconnect_backoff_max": 0.5, "idle_timeout": 10.0,
                      "zero_rtt": zero_rtt}),
        ("[observability]", {"status_file": workdir / "client-status.json",
                             "status_interval": 0.1}),
    )  # fmt: skip
    (workdir / "concentrator.toml").write_text(conc)
    (workdir / "client.toml").write_text(client)


def measure(
    workdir: Path, certs: Path, rtt_ms: float, runs: int, step: float
) -> list[dict[str, Any]]:
    """`runs` measurements of each variant, without and with 0-RTT in turn (the machine's load
    changes: neighbours compare best), one row each (see the module docstring)."""
    if not WIRE_BINARY.exists():
        raise NetnsError(f"{WIRE_BINARY} is missing: run `make build/qtwire` first")
    tag = unique("q0", 9)  # + 2 characters per interface name (IFNAMSIZ)
    names = {
        "c_wifi": f"{tag}cw", "c_5g": f"{tag}cg", "conc_tun": f"{tag}ct", "client_tun": f"{tag}lt",
    }  # fmt: skip
    ns_c, ns_s = f"{tag}-c", f"{tag}-s"
    middles = {name: f"{tag}-m{i}" for i, name in enumerate(ACCESSES)}
    rows: list[dict[str, Any]] = []
    with namespaces(ns_c, ns_s, *middles.values()), ExitStack() as stack:
        ip(ns_s, "addr", "add", f"{SERVICE}/32", "dev", "lo")
        # IPv4 only: the kernel's IPv6 chatter on a new TUN (MLD, router solicitations) would be
        # tunnelled at random moments, and one lost with wifi leaves a Packet Tag gap that the
        # concentrator's reorder buffer waits out, which is not what this measures
        for ns in (ns_c, ns_s, *middles.values()):
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for metric, (name, prefix) in enumerate(ACCESSES.items(), start=1):
            middle = middles[name]
            veth(End(ns_c, names[f"c_{name}"], [f"{prefix}.2/24"]), End(middle, "mida", []))
            veth(End(middle, "midb", []), End(ns_s, f"{tag}s{metric}", [f"{prefix}.1/24"]))
            for ns, ifname in ((ns_c, names[f"c_{name}"]), (middle, "mida"), (middle, "midb"),
                               (ns_s, f"{tag}s{metric}")):  # fmt: skip
                sh(*in_ns(ns, "ethtool", "-K", ifname, "rx", "off", "tx", "off", "tso", "off",
                          "gso", "off", "gro", "off"), check=False)  # fmt: skip
            control = workdir / f"wire-{name}.sock"
            wire = stack.enter_context(
                process(
                    in_ns(middle, str(WIRE_BINARY), "mida", "midb", str(control)),
                    ready=None,
                    name=f"qtwire {name}",
                    stop_by="term",
                )
            )
            wait_until(f"qtwire {name}", control.exists, timeout=10, alive=[wire])
            _wire_set(control, f"set both delay_us={round(rtt_ms * 500)}")
            ip(ns_c, "route", "add", f"{SERVICE}/32", "via", f"{prefix}.1", "metric", str(metric))
            # ARP resolved in advance, both ways: a link that comes up has an empty neighbour
            # cache, and resolving it through the wire costs a round trip that is not the
            # tunnel's (the same with and without 0-RTT)
            client_mac = _mac(ns_c, names[f"c_{name}"])
            server_mac = names[f"mac_{name}"] = _mac(ns_s, f"{tag}s{metric}")
            ip(ns_s, "neigh", "replace", f"{prefix}.2", "lladdr", client_mac,
               "dev", f"{tag}s{metric}", "nud", "permanent")  # fmt: skip
            ip(ns_c, "neigh", "replace", f"{prefix}.1", "lladdr", server_mac,
               "dev", names[f"c_{name}"], "nud", "permanent")  # fmt: skip
        for run in range(runs):
            for zero_rtt in (False, True):
                _configs(workdir, certs, names, zero_rtt)
                row = _one_run(workdir, ns_c, ns_s, names, step)
                rows.append(row | {"zero_rtt": zero_rtt, "run": run})
                rows[-1]["early_answer"] = True if zero_rtt else None
    return rows


def _one_run(
    workdir: Path, ns_c: str, ns_s: str, names: dict[str, str], step: float
) -> dict[str, Any]:
    ip(ns_c, "link", "set", names["c_wifi"], "up")
    ip(ns_c, "link", "set", names["c_5g"], "down")
    ip(ns_c, "route", "replace", f"{SERVICE}/32", "via", f"{ACCESSES['wifi']}.1", "metric", "1")
    conc = Qtun(ns_s, "concentrator", workdir / "concentrator.toml",
                workdir / "concentrator-status.json", workdir / "concentrator.log")  # fmt: skip
    client = Qtun(ns_c, "client", workdir / "client.toml", workdir / "client-status.json",
                  workdir / "client.log")  # fmt: skip
    with ExitStack() as stop:
        stop.callback(conc.stop)
        stop.callback(client.stop)
        conc.start().wait_state()
        client.start()
        client.wait_status('state "up"', lambda s: s.get("state") == "up")
        with (
            process(in_ns(ns_s, sys.executable, "-c", RECEIVER), name="receiver") as receiver,
            process(
                in_ns(ns_c, sys.executable, "-c", SENDER, str(step), "60"), name="sender"
            ) as sender,
        ):
            # the kernel drops routes through a link that went down: 5g's comes back with it
            batch = (
                f"link set {names['c_wifi']} down\nlink set {names['c_5g']} up\n"
                f"neigh replace {ACCESSES['5g']}.1 lladdr {names['mac_5g']} dev {names['c_5g']} "
                "nud permanent\n"
                f"route replace {SERVICE}/32 via {ACCESSES['5g']}.1 metric 2\n"
            )
            t0 = time.time()
            subprocess.run(
                in_ns(ns_c, "ip", "-batch", "-"), input=batch, text=True, check=True, timeout=10
            )
            sender.send("go")  # only now: nothing sent before can have gone over wifi
            line = receiver.expect("FIRST", timeout=30)
            t1 = float(line)
        status = client.status()
        counters = conc.status().get("counters", {})
    return {
        "first_byte_ms": round((t1 - t0) * 1000, 3),
        "resumed": counters.get("connections_resumed", 0) > 0,
        "join_in_0rtt": status.get("counters", {}).get("joins_in_0rtt", 0) > 0,
        "error": None,
    }
