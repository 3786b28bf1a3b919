"""`qtlab up --capture DIR`: everything needed to read a lab's wire afterwards.

DIR/<client>/<access>.pcap: tcpdump on every client's access interface, whole packets, from
before the programs start (decoding needs each connection's handshake). With --tunnel, each
program's TLS key log (DIR/keylog/<node>.keylog) and qlog (DIR/qlog/<node>/) go beside them
(testbed.qtun.TunnelSpec.capture). `qtlab decode DIR` then prints the tunnel's messages, and
Wireshark opens the pcaps with the key log.

UDP GSO and GRO are turned off on the captured interfaces (the lab already turns the shaped
links' offloads off): with them on, a batch of QUIC packets reaches the capture as one ~64 kB
datagram that cannot be decrypted. That costs throughput, so captures are opt-in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.hosts import HostProcess

if TYPE_CHECKING:
    from testbed.lab import Lab

# ethtool feature names; on an interface that lacks one, ethtool changes the others
UDP_OFFLOADS_OFF = "gso off gro off tx-udp-segmentation off"


def pcap_path(directory: Path, client: str, access: str) -> Path:
    """Where an access's capture goes; `qtlab decode` names it "<client>/<access>"."""
    return directory / client / f"{access}.pcap"


def start_capture(lab: Lab, directory: Path) -> list[HostProcess]:
    """tcpdump on every access interface of every client, each returned once it captures.
    The lab stops them with its other programs (before its nodes go)."""
    procs: list[HostProcess] = []
    for access in lab.plan.accesses:
        node = lab.node(access.client)
        node.cmd(f"ethtool -K {access.client_intf} {UDP_OFFLOADS_OFF} >/dev/null 2>&1")
        pcap = pcap_path(directory, access.client, access.name)
        proc, _ = lab.procs.start_pcap(node, access.client_intf, pcap, snaplen=0)
        procs.append(proc)
    return procs


def hand_over(directory: Path) -> None:
    """Under sudo, give the capture to the user who asked for it (a student opens it in
    Wireshark without root); as plain root, nothing to do."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if not uid or not gid or not directory.exists():
        return
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, int(uid), int(gid), follow_symlinks=False)
