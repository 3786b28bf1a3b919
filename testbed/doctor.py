"""`qtlab doctor`: which kernel features, programs and privileges the testbed needs are here.

Kernel features are tried for real in a scratch namespace (qtb-doctor-<pid>), not guessed from
config files: a module that autoloads counts as present.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.paths import WIRE_BINARY
from testbed.shaping import probe_netem
from tunnel.protocol.quic_crypto import EXTENSION as CRYPTO_EXTENSION
from tunnel.wire.offload_library import LIBRARY as OFFLOAD_LIBRARY


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str  # what to do when it is missing


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True)


def _kernel_checks() -> list[Check]:
    ns = f"qtb-doctor-{os.getpid()}"
    checks: list[Check] = []
    made = _run(["ip", "netns", "add", ns])
    checks.append(
        Check(
            "netns",
            made.returncode == 0,
            made.stderr.strip() or "network namespaces work",
            "a kernel with CONFIG_NET_NS and root",
        )
    )
    if made.returncode != 0:
        return checks
    try:

        def in_ns(*argv: str) -> subprocess.CompletedProcess[str]:
            return _run(["ip", "netns", "exec", ns, *argv])

        tries = {
            "veth": (
                ["ip", "link", "add", "qtbd0", "type", "veth", "peer", "name", "qtbd1"],
                "modprobe veth (CONFIG_VETH)",
            ),
            "htb": (
                ["tc", "qdisc", "add", "dev", "qtbd0", "root", "handle", "1:", "htb"],
                "modprobe sch_htb",
            ),
            "tbf": (
                [
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "qtbd1",
                    "root",
                    "tbf",
                    "rate",
                    "10mbit",
                    "burst",
                    "32k",
                    "latency",
                    "50ms",
                ],
                "modprobe sch_tbf",
            ),
            "nftables": (
                ["nft", "add", "table", "inet", "qtbdoctor"],
                "apt install nftables; modprobe nf_tables",
            ),
        }
        for name, (argv, fix) in tries.items():
            r = in_ns(*argv)
            checks.append(Check(name, r.returncode == 0, r.stderr.strip() or "works", fix))
    finally:
        _run(["ip", "netns", "del", ns])
    probe = probe_netem()
    checks.append(
        Check(
            "netem",
            probe.available,
            probe.detail,
            "optional: without sch_netem the testbed uses its own shaper (qtwire)",
        )
    )
    checks.append(
        Check(
            "tun",
            Path("/dev/net/tun").exists(),
            "/dev/net/tun",
            "modprobe tun (the tunnel endpoints need it)",
        )
    )
    mptcp = Path("/proc/sys/net/mptcp/enabled")
    checks.append(
        Check(
            "mptcp",
            mptcp.exists(),
            "net.mptcp.enabled" if mptcp.exists() else "no net.mptcp",
            "optional: a kernel with CONFIG_MPTCP for the MPTCP baseline",
        )
    )
    return checks


def run_checks() -> list[Check]:
    root = os.geteuid() == 0
    checks = [
        Check(
            "root",
            root,
            f"euid {os.geteuid()}",
            "run qtlab with sudo: namespaces and Mininet need root",
        )
    ]
    programs = {
        "mnexec": "apt install mininet",
        "iperf3": "apt install iperf3",
        "tcpdump": "apt install tcpdump",
        "ethtool": "apt install ethtool",
        "tc": "apt install iproute2",
        "ip": "apt install iproute2",
        "nft": "apt install nftables",
        "ping": "apt install iputils-ping",
        "gcc": "apt install gcc (builds qtwire)",
    }
    for prog, fix in programs.items():
        path = shutil.which(prog)
        checks.append(Check(prog, path is not None, path or "not found", fix))
    mininet = importlib.util.find_spec("mininet") is not None
    checks.append(
        Check(
            "mininet (python)",
            mininet,
            "importable" if mininet else "not importable",
            "make venv (links Debian's mininet into the venv)",
        )
    )
    checks.append(
        Check(
            "qtwire",
            WIRE_BINARY.exists(),
            str(WIRE_BINARY),
            "make build/qtwire (or let the testbed compile it on first use)",
        )
    )
    checks.append(
        Check(
            "TUN offloads",
            OFFLOAD_LIBRARY.exists(),
            str(OFFLOAD_LIBRARY),
            "make build/libqtoffload.so (without it the programs open their TUN without offloads)",
        )
    )
    checks.append(
        Check(
            "C packet protection",
            CRYPTO_EXTENSION.exists(),
            str(CRYPTO_EXTENSION),
            "make build/_qtcrypto.so (without it the fast path protects packets in Python)",
        )
    )
    if root:
        checks += _kernel_checks()
    else:
        checks.append(
            Check(
                "kernel features",
                False,
                "not checked without root",
                "run `sudo qtlab doctor` to try them",
            )
        )
    return checks


def report(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        mark = "ok     " if c.ok else "MISSING"
        line = f"{mark} {c.name:<17} {c.detail}"
        if not c.ok:
            line += f"  -> {c.fix}"
        lines.append(line)
    return "\n".join(lines)
