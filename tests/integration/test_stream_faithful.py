"""Stream mode's faithful connect (`stream.connect = "faithful"`, tunnel/aio/stream_client.py):
the application's SYN is held until the concentrator answered its TCP Connect, so connect()
succeeds only once the destination accepted, and fails the way it would without the tunnel —
ECONNREFUSED for a refused port (Network Failure -> RST), EHOSTUNREACH / ENETUNREACH for an
unreachable destination (ICMP Packet Received -> the ICMP error re-addressed to the
application). Same three namespaces as test_stream_mode.py (their names are that module's,
which has torn them down before this module runs: both are module-scoped and serial).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import Proc, process, python_in, run_json, unique
from tests.integration.test_stream_mode import (
    DEST4,
    DEST6,
    NS_C,
    NS_D,
    NS_S,
    UNREACHABLE4,
    UNREACHABLE6,
    lab_namespaces,
)

pytestmark = pytest.mark.root

LISTEN_PORT = 4481
NFT_TABLE = unique("qsf_")


def app(*args: str) -> dict[str, Any]:
    result: dict[str, Any] = run_json(
        python_in(NS_C, "tests.integration.qst_apps", *args), timeout=60
    )
    return result


def dest_server(*args: str) -> AbstractContextManager[Proc]:
    return process(python_in(NS_D, "tests.integration.qst_apps", *args), stop_by="term")


def stats(proc: Proc) -> dict[str, int]:
    proc.send("stats")
    return dict(proc.expect_json("STATS "))


@pytest.fixture(scope="module")
def client(lab_certs: Path) -> Iterator[Proc]:
    options = json.dumps(
        {
            "intercept": ["10.200.0.0/16", "fd00:200::/32"],
            "listen_port": LISTEN_PORT,
            "connect": "faithful",
        }
    )
    server_options = json.dumps({"connect_timeout": 3.0})
    server_cmd = python_in(NS_S, "tests.integration.qst_peer", "server", "--certs",
                           str(lab_certs), "--address", "10.81.0.2", "--options", server_options,
                           "--lifetime", "300")  # fmt: skip
    client_cmd = python_in(NS_C, "tests.integration.qst_peer", "client", "--certs",
                           str(lab_certs), "--server", "10.81.0.2", "--options", options,
                           "--nft-table", NFT_TABLE, "--lifetime", "300")  # fmt: skip
    with lab_namespaces(), process(server_cmd), process(client_cmd) as proc:
        yield proc


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_connect_returns_once_the_destination_accepted(client: Proc, dest: str) -> None:
    before = stats(client)
    with dest_server("serve-echo", "7101"):
        res = app("connect-outcome", dest, "7101")
    assert res["connected"] and res["echo"] == "ping", res
    assert stats(client)["syns_held"] == before["syns_held"] + 1


@pytest.mark.parametrize("dest", [DEST4, DEST6])
def test_a_refused_port_fails_connect_with_econnrefused(client: Proc, dest: str) -> None:
    """Network Failure (the destination sent a RST) -> a RST to the held SYN: connect() fails
    with ECONNREFUSED, not a reset after a successful connect (the early mode)."""
    res = app("connect-outcome", dest, "7999")
    assert res == {"connected": False, "error": "ECONNREFUSED", "seconds": res["seconds"]}


@pytest.mark.parametrize("dest", [UNREACHABLE4, UNREACHABLE6])
def test_an_unreachable_destination_fails_connect_with_the_icmp_error(
    client: Proc, dest: str
) -> None:
    """ICMP Packet Received -> the concentrator's ICMP error re-addressed to the application,
    quoting its SYN: connect() fails with the error a router's answer gives."""
    res = app("connect-outcome", dest, "80")
    assert not res["connected"] and res["error"] in ("EHOSTUNREACH", "ENETUNREACH"), res
