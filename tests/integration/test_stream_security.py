"""Stream mode's defences, attacked through the real concentrator (`qtun concentrator`) by a
crafted stream-mode client (tests/integration/qss_peer.py, authenticated as alice), in three
namespaces of our own:

    qss-c (qss_peer) -- veth 10.84.0.0/24 -- qss-s (qtun concentrator on 10.84.0.2)
      -- veth 10.201.0.0/24 -- qss-d (10.201.0.2; 169.254.169.254 with a fake cloud-metadata
         HTTP server; 10.202.0.0/24 routed to it but not forwarded: a SYN there goes unanswered,
         so a TCP Connect to it stays pending)

- a TCP Connect to the link-local metadata address is refused by default (it was served a
  fake metadata body before) and served when `stream.allow` lists it;
- a client's pending TCP Connects are capped per client, over several connections (session
  mode: one per access), not per connection (-tcp §7.1);
- a client's streams are capped by `max_client_buffer` over all its connections;
- a flood of refused TCP Connects is logged with the client's name, within a log budget (they
  were not logged at all: the "tunnel.stream" logger was outside the program's "qtun").
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.qta_netns import REPO
from tests.integration.test_stream_mode import (
    END,
    Proc,
    ns_cmd,
    process,
    py_cmd,
    sh,
    tcp_connect_tlv,
)
from tests.integration.test_stream_qtun import toml, wait_up

pytestmark = pytest.mark.root

PID = os.getpid()
NS_C, NS_S, NS_D = f"qss-c{PID}", f"qss-s{PID}", f"qss-d{PID}"
IF = {k: f"qss{k}{PID}"[:15] for k in ("a", "b", "c", "d")}
TUN = f"qsst{PID}"[:15]
CONCENTRATOR = "10.84.0.2"
METADATA = "169.254.169.254"
WEB = "10.201.0.2"  # an HTTP server that accepts connections
TARPIT = "10.202.0.9"  # SYNs go unanswered
DENIED_PREFIX, DENIED = "10.203.0.0/24", "10.203.0.1"  # in the site's stream.deny
SECRET = "fake-metadata-credentials-0123"
ERROR_NETWORK_FAILURE = "02020003" + END  # Error TLV, code 0x3, then End
CONNECT_OK = "0100" + END


@contextmanager
def lab_namespaces() -> Iterator[None]:
    made: list[str] = []
    try:
        for ns in (NS_C, NS_S, NS_D):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for (ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b) in (
            ((NS_C, IF["a"], ["10.84.0.1/24"]), (NS_S, IF["b"], ["10.84.0.2/24"])),
            (
                (NS_S, IF["c"], ["10.201.0.1/24"]),
                (NS_D, IF["d"], ["10.201.0.2/24", f"{METADATA}/32"]),
            ),
        ):
            sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
               "netns", ns_b)  # fmt: skip
            for ns, ifname, addrs in ((ns_a, if_a, addrs_a), (ns_b, if_b, addrs_b)):
                for addr in addrs:
                    sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
                sh("ip", "-n", ns, "link", "set", ifname, "up")
        # the metadata address is on the concentrator's link, as in a cloud VM
        sh("ip", "-n", NS_S, "route", "add", f"{METADATA}/32", "dev", IF["c"])
        # qss-d does not forward (a new namespace's default): SYNs to the tarpit are dropped
        # without an ICMP answer
        sh("ip", "-n", NS_S, "route", "add", "10.202.0.0/24", "via", WEB)
        yield
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("qss")
    sh(sys.executable, str(REPO / "scripts" / "make-certs"), "--out", str(work / "certs"),
       "--clients", "alice", timeout=60)  # fmt: skip
    www = work / "www"
    (www / "latest" / "meta-data").mkdir(parents=True)
    (www / "latest" / "meta-data" / "iam").write_text(SECRET)
    with (
        lab_namespaces(),
        process(
            ns_cmd(NS_D, sys.executable, "-u", "-m", "http.server", "80", "--bind", METADATA,
                   "--directory", str(www)),
            ready="Serving HTTP",
        ),
        process(
            ns_cmd(NS_D, sys.executable, "-u", "-m", "http.server", "8080", "--bind", WEB,
                   "--directory", str(www)),
            ready="Serving HTTP",
        ),
    ):  # fmt: skip
        yield work


@contextmanager
def concentrator(work: Path, **stream_keys: object) -> Iterator[Proc]:
    certs = work / "certs"
    status = work / "conc.json"
    status.unlink(missing_ok=True)
    config = toml(
        [
            ("[listen]", {"addresses": [CONCENTRATOR], "port": 4433}),
            ("[tun]", {"name": TUN, "addresses": ["10.8.0.1/16"]}),
            ("[tls]", {"ca": str(certs / "ca.pem"), "cert": str(certs / "concentrator.pem"),
                       "key": str(certs / "concentrator.key")}),
            ("[[client]]", {"name": "alice", "addresses": ["10.8.0.2/32"]}),
            ("[stream]", {"enabled": True, **stream_keys}),
            ("[observability]", {"status_file": str(status), "status_interval": 0.2}),
        ],
        {"modes": ["tunnel", "session"]},
    )  # fmt: skip
    (work / "conc.toml").write_text(config)
    cmd = py_cmd(NS_S, "tunnel.aio.cli", "concentrator", "-c", str(work / "conc.toml"))
    with process(cmd, ready=None) as conc:
        try:
            wait_up(status)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {conc.stderr()}") from None
        yield conc


def peer(work: Path, preamble: str, *, connections: int = 1, streams: int = 1,
         wait_ended: int = 1, wait_answered: int = 0,
         lifetime: float = 15.0) -> list[dict[str, Any]]:  # fmt: skip
    """Run qss_peer: the streams it opened and what came back on each."""
    out = sh(
        *py_cmd(NS_C, "tests.integration.qss_peer", "--certs", str(work / "certs"),
                "--server", CONCENTRATOR, "--connections", str(connections),
                "--streams", str(streams), "--preamble", preamble,
                "--wait-ended", str(wait_ended), "--wait-answered", str(wait_answered),
                "--lifetime", str(lifetime)),
        timeout=lifetime + 30,
    )  # fmt: skip
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, out.stdout + out.stderr
    return list(json.loads(line[len("RESULT ") :]))


def stream_stats(work: Path) -> dict[str, int]:
    return dict(json.loads((work / "conc.json").read_text())["stream"])


def poll(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout:g} s")


def full_log(proc: Proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def http_get(address: str, port: int, path: str) -> str:
    request = f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode()
    return tcp_connect_tlv(address, port) + END + request.hex()


# -- destinations ------------------------------------------------------------------------------


def test_link_local_metadata_is_refused_by_default(work: Path) -> None:
    with concentrator(work):
        (stream,) = peer(work, http_get(METADATA, 80, "/latest/meta-data/iam"))
        assert SECRET.encode() not in bytes.fromhex(stream["received"])
        assert stream["received"] == ERROR_NETWORK_FAILURE and stream["ended"]
        poll("the refusal counted", lambda: stream_stats(work)["refused_policy"] == 1)


def test_link_local_metadata_is_served_when_allowed(work: Path) -> None:
    with concentrator(work, allow=["0.0.0.0/0", "::/0", f"{METADATA}/32"]):
        (stream,) = peer(work, http_get(METADATA, 80, "/latest/meta-data/iam"))
    received = bytes.fromhex(stream["received"])
    assert received.startswith(bytes.fromhex(CONNECT_OK)) and SECRET.encode() in received


# -- per-client limits -------------------------------------------------------------------------


def test_pending_connects_are_capped_per_client_over_several_connections(work: Path) -> None:
    """3 session-mode connections of alice, 4 TCP Connects each towards an address that never
    answers: with a cap of 4 per client, 8 are refused at once and 4 stay pending (a cap per
    connection let all 12 through)."""
    with concentrator(work, max_pending_connects=4, connect_timeout=60.0):
        streams = peer(work, tcp_connect_tlv(TARPIT, 80) + END, connections=3, streams=4,
                       wait_ended=8)  # fmt: skip
        refused = [s for s in streams if s["received"] == ERROR_NETWORK_FAILURE and s["ended"]]
        assert len(refused) == 8, streams
        poll(
            "the concentrator's status counts the 12 TCP Connects",
            lambda: (
                stream_stats(work)["pending_connects"] + stream_stats(work)["refused_pending"] == 12
            ),
        )
        stats = stream_stats(work)
    assert all(s["received"] == "" for s in streams if s not in refused)  # still pending
    assert stats["pending_connects"] == 4 and stats["refused_pending"] == 8


def test_stream_buffer_budget_is_per_client(work: Path) -> None:
    """Each stream counts window + send_buffer = 32 KiB; a client budget of 128 KiB holds 4
    streams, whatever the number of connections they are spread over."""
    small = 16 * 1024
    with concentrator(work, window=small, send_buffer=small, max_client_buffer=8 * small):
        streams = peer(work, tcp_connect_tlv(WEB, 8080) + END, connections=2, streams=3,
                       wait_ended=2, wait_answered=6)  # fmt: skip
        poll("the refusals counted", lambda: stream_stats(work)["refused_memory"] == 2)
    outcomes = sorted(s["received"] for s in streams)
    assert outcomes == sorted([ERROR_NETWORK_FAILURE] * 2 + [CONNECT_OK] * 4), streams


# -- logging -----------------------------------------------------------------------------------


def test_refusal_flood_is_logged_per_client_within_a_budget(work: Path) -> None:
    """100 refused TCP Connects (to a prefix the site denies): fewer than 100 lines, each
    naming the client, the destination and the reason, and the lines plus the suppressed
    counts they report account for all 100."""
    flood = 100
    with concentrator(work, deny=[DENIED_PREFIX]) as conc:
        streams = peer(work, tcp_connect_tlv(DENIED, 80) + END, streams=flood,
                       wait_ended=flood)  # fmt: skip
        assert all(s["received"] == ERROR_NETWORK_FAILURE for s in streams)
        poll("a suppressed=K summary line", lambda: "suppressed=" in full_log(conc))
        log = full_log(conc)
    lines = [x for x in log.splitlines() if "tcp connect refused" in x]
    summaries = [x for x in log.splitlines() if "suppressed=" in x]
    print(f"{flood} refused TCP Connects, {len(lines)} lines:", lines[0], *summaries, sep="\n")
    assert 0 < len(lines) < flood
    assert all("client=alice" in x and f"to={DENIED}:80" in x and "denied prefix" in x
               for x in lines)  # fmt: skip
    suppressed = [int(n) for n in re.findall(r"suppressed(?:_before)?=(\d+)", log)]
    assert len(lines) + sum(suppressed) == flood, log
