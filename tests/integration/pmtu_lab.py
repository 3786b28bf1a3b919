"""What the path MTU tests on the reference topology share: the smaller MTU they give a path,
what the tunnel can then send over IPv4, the override that turns discovery on in both
programs, and an inner iperf3 transfer to srv1 that starts from no learnt path MTU."""

from __future__ import annotations

import json
from typing import Any

from testbed.lab import Lab

LINK_MTU = 1400
UDP_PAYLOAD_LIMIT = LINK_MTU - 20 - 8  # the tunnel's outer packets are IPv4 here
SERVER = "10.200.1.2"  # srv1
PMTU = ("limits.pmtu_discovery=true",)


def found_within(pmtu: dict[str, Any] | None, black_holes: int = 1) -> bool:
    """A search that ended, after `black_holes` failed confirmations at least, at a size the
    smaller path carries."""
    return (
        pmtu is not None
        and pmtu["state"] == "complete"
        and pmtu["black_holes"] >= black_holes
        and pmtu["datagram_size"] <= UDP_PAYLOAD_LIMIT
    )


def iperf3_bytes(lab: Lab, port: int, seconds: int, options: str = "") -> int:
    """Bytes c1 received (or, with -R, srv1 sent and c1 got) in one iperf3 run over the tunnel;
    every host first forgets what an earlier transfer taught it of the path MTU."""
    lab.forget_learned_paths()
    out = str(
        lab.node("c1").cmd(
            f"timeout {seconds + 27} iperf3 -c {SERVER} -p {port} -t {seconds} -J "
            f"--connect-timeout 3000 {options}"
        )
    )
    data: dict[str, Any] = json.loads(out[out.index("{") :])
    assert "error" not in data, data["error"]
    return int(data["end"]["sum_received"]["bytes"])
