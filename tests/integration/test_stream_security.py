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

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import (
    End,
    Qtun,
    ip,
    namespaces,
    python_in,
    qtun,
    run_json,
    toml_text,
    unique,
    veth,
)
from tests.integration.test_stream_mode import END, http_server, tcp_connect_tlv

pytestmark = pytest.mark.root

NS_C, NS_S, NS_D = unique("qss-c"), unique("qss-s"), unique("qss-d")
IF = {k: unique(f"qss{k}") for k in ("a", "b", "c", "d")}
TUN = unique("qsst")
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
    with namespaces(NS_C, NS_S, NS_D):
        veth(End(NS_C, IF["a"], ["10.84.0.1/24"]), End(NS_S, IF["b"], ["10.84.0.2/24"]))
        veth(
            End(NS_S, IF["c"], ["10.201.0.1/24"]),
            End(NS_D, IF["d"], ["10.201.0.2/24", f"{METADATA}/32"]),
        )
        # the metadata address is on the concentrator's link, as in a cloud VM
        ip(NS_S, "route", "add", f"{METADATA}/32", "dev", IF["c"])
        # qss-d does not forward (a new namespace's default): SYNs to the tarpit are dropped
        # without an ICMP answer
        ip(NS_S, "route", "add", "10.202.0.0/24", "via", WEB)
        yield


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, lab_certs: Path) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("qss")
    www = work / "www"
    (www / "latest" / "meta-data").mkdir(parents=True)
    (www / "latest" / "meta-data" / "iam").write_text(SECRET)
    with (
        lab_namespaces(),
        http_server(NS_D, METADATA, www, port=80),
        http_server(NS_D, WEB, www, port=8080),
    ):
        yield work


@contextmanager
def concentrator(work: Path, certs: Path, **stream_keys: object) -> Iterator[Qtun]:
    config = toml_text(
        {"modes": ["tunnel", "session"]},
        ("[listen]", {"addresses": [CONCENTRATOR], "port": 4433}),
        ("[tun]", {"name": TUN, "addresses": ["10.8.0.1/16"]}),
        ("[tls]", {"ca": certs / "ca.pem", "cert": certs / "concentrator.pem",
                   "key": certs / "concentrator.key"}),
        ("[[client]]", {"name": "alice", "addresses": ["10.8.0.2/32"]}),
        ("[stream]", {"enabled": True, **stream_keys}),
        ("[observability]", {"status_file": work / "conc.json", "status_interval": 0.2}),
    )  # fmt: skip
    (work / "conc.toml").write_text(config)
    # a log per concentrator run: the log test counts lines of its own run only
    log = work / f"conc-{len(list(work.glob('conc-*.log')))}.log"
    with qtun(NS_S, "concentrator", work / "conc.toml", work / "conc.json", log_path=log) as conc:
        yield conc


def peer(certs: Path, preamble: str, *, connections: int = 1, streams: int = 1,
         wait_ended: int = 1, wait_answered: int = 0,
         lifetime: float = 15.0) -> list[dict[str, Any]]:  # fmt: skip
    """Run qss_peer: the streams it opened and what came back on each."""
    cmd = python_in(
        NS_C, "tests.integration.qss_peer", "--certs", str(certs), "--server", CONCENTRATOR,
        "--connections", str(connections), "--streams", str(streams), "--preamble", preamble,
        "--wait-ended", str(wait_ended), "--wait-answered", str(wait_answered),
        "--lifetime", str(lifetime),
    )  # fmt: skip
    return list(run_json(cmd, timeout=lifetime + 30))


def stream_stats(status: dict[str, Any]) -> dict[str, int]:
    return dict(status["stream"])


def http_get(address: str, port: int, path: str) -> str:
    request = f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode()
    return tcp_connect_tlv(address, port) + END + request.hex()


# -- destinations ------------------------------------------------------------------------------


def test_link_local_metadata_is_refused_by_default(work: Path, lab_certs: Path) -> None:
    with concentrator(work, lab_certs) as conc:
        (stream,) = peer(lab_certs, http_get(METADATA, 80, "/latest/meta-data/iam"))
        assert SECRET.encode() not in bytes.fromhex(stream["received"])
        assert stream["received"] == ERROR_NETWORK_FAILURE and stream["ended"]
        conc.wait_status("the refusal counted", lambda s: stream_stats(s)["refused_policy"] == 1)


def test_link_local_metadata_is_served_when_allowed(work: Path, lab_certs: Path) -> None:
    with concentrator(work, lab_certs, allow=["0.0.0.0/0", "::/0", f"{METADATA}/32"]):
        (stream,) = peer(lab_certs, http_get(METADATA, 80, "/latest/meta-data/iam"))
    received = bytes.fromhex(stream["received"])
    assert received.startswith(bytes.fromhex(CONNECT_OK)) and SECRET.encode() in received


# -- per-client limits -------------------------------------------------------------------------


def test_pending_connects_are_capped_per_client_over_several_connections(
    work: Path, lab_certs: Path
) -> None:
    """3 session-mode connections of alice, 4 TCP Connects each towards an address that never
    answers: with a cap of 4 per client, 8 are refused at once and 4 stay pending (a cap per
    connection let all 12 through)."""
    with concentrator(work, lab_certs, max_pending_connects=4, connect_timeout=60.0) as conc:
        streams = peer(lab_certs, tcp_connect_tlv(TARPIT, 80) + END, connections=3, streams=4,
                       wait_ended=8)  # fmt: skip
        refused = [s for s in streams if s["received"] == ERROR_NETWORK_FAILURE and s["ended"]]
        assert len(refused) == 8, streams
        status = conc.wait_status(
            "the concentrator's status counts the 12 TCP Connects",
            lambda s: (
                stream_stats(s)["pending_connects"] + stream_stats(s)["refused_pending"] == 12
            ),
        )
    stats = stream_stats(status)
    assert all(s["received"] == "" for s in streams if s not in refused)  # still pending
    assert stats["pending_connects"] == 4 and stats["refused_pending"] == 8


def test_stream_buffer_budget_is_per_client(work: Path, lab_certs: Path) -> None:
    """Each stream counts window + send_buffer = 32 KiB; a client budget of 128 KiB holds 4
    streams, whatever the number of connections they are spread over."""
    small = 16 * 1024
    keys = {"window": small, "send_buffer": small, "max_client_buffer": 8 * small}
    with concentrator(work, lab_certs, **keys) as conc:
        streams = peer(lab_certs, tcp_connect_tlv(WEB, 8080) + END, connections=2, streams=3,
                       wait_ended=2, wait_answered=6)  # fmt: skip
        conc.wait_status("the refusals counted", lambda s: stream_stats(s)["refused_memory"] == 2)
    outcomes = sorted(s["received"] for s in streams)
    assert outcomes == sorted([ERROR_NETWORK_FAILURE] * 2 + [CONNECT_OK] * 4), streams


# -- logging -----------------------------------------------------------------------------------


def accounted(log: str) -> int:
    """Refusals the log accounts for: its lines plus the suppressed counts its summaries give."""
    lines = sum("tcp connect refused" in x for x in log.splitlines())
    return lines + sum(int(n) for n in re.findall(r"suppressed(?:_before)?=(\d+)", log))


def test_refusal_flood_is_logged_per_client_within_a_budget(work: Path, lab_certs: Path) -> None:
    """100 refused TCP Connects (to a prefix the site denies): fewer than 100 lines, each
    naming the client, the destination and the reason, and the lines plus the suppressed
    counts they report account for all 100."""
    flood = 100
    with concentrator(work, lab_certs, deny=[DENIED_PREFIX]) as conc:
        streams = peer(lab_certs, tcp_connect_tlv(DENIED, 80) + END, streams=flood,
                       wait_ended=flood)  # fmt: skip
        assert all(s["received"] == ERROR_NETWORK_FAILURE for s in streams)
        # a summary covers what was suppressed when it was due (1 s after the first): a flood
        # that took longer than that is reported by two, the second a second later
        conc.wait_status(
            "a summary line, and every refusal accounted for",
            lambda _: "suppressed=" in conc.log() and accounted(conc.log()) >= flood,
        )
        log = conc.log()
    lines = [x for x in log.splitlines() if "tcp connect refused" in x]
    summaries = [x for x in log.splitlines() if "suppressed=" in x]
    print(f"{flood} refused TCP Connects, {len(lines)} lines:", lines[0], *summaries, sep="\n")
    assert 0 < len(lines) < flood
    assert all("client=alice" in x and f"to={DENIED}:80" in x and "denied prefix" in x
               for x in lines)  # fmt: skip
    assert accounted(log) == flood, log
