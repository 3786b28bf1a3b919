"""The reversed flow of stream mode through the real programs (README "Stream mode"): a server on
the client, reached from a host behind the concentrator. Three namespaces of our own:

    qin-c (qtun client, its TUN 10.8.0.2; servers on the inner address or loopback)
      -- veth 10.84.0.0/24 -- qin-s (qtun concentrator at 10.84.0.2, tunnel + stream mode;
         mapped ports listened on at 10.201.1.1)
      -- veth 10.201.1.0/24 -- qin-o (an outside host: the TCP clients)

The client offers ports 8080, 8081 and 9999 (`stream.inbound`) and asks for them with PCP MAP
through the tunnel (to the concentrator's address, UDP 5351); the concentrator allows 8080-8081
(`stream.inbound_ports`), so 9999 is refused NO_RESOURCES (the two allowed ones are taken).
Then, from qin-o: a half-closed exchange with a server on the client's inner address (over
IPv4 and IPv6 outside), resets both ways, a refused local connect seen as a reset, the
mappings gone with the client, a loopback server (`stream.inbound_host`), and a session-mode
client. Readiness is polled on the status files and the apps' READY lines, never slept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import (
    End,
    Proc,
    Qtun,
    namespaces,
    process,
    python_in,
    qtun,
    run_json,
    toml_text,
    unique,
    veth,
)

pytestmark = pytest.mark.root

NS_C, NS_S, NS_O = unique("qin-c"), unique("qin-s"), unique("qin-o")
IF = {k: unique(f"qin{k}") for k in ("a", "b", "c", "d")}
CONCENTRATOR, OUTSIDE_FACING, INNER = "10.84.0.2", "10.201.1.1", "10.8.0.2"
OUTSIDE_FACING6 = "fd00:201:1::1"
SERVED, CLOSED, NOT_ALLOWED = 8080, 8081, 9999


def configs(work: Path, certs: Path) -> tuple[Path, Path]:
    tls = {"ca": certs / "ca.pem"}
    conc = toml_text(
        {"modes": ["tunnel", "session"]},
        ("[listen]", {"addresses": [CONCENTRATOR], "port": 4433}),
        ("[tun]", {"name": unique("qint"), "addresses": ["10.8.0.1/16"]}),
        ("[tls]", {**tls, "cert": certs / "concentrator.pem", "key": certs / "concentrator.key"}),
        ("[[client]]", {"name": "alice", "addresses": [f"{INNER}/32"]}),
        (
            "[stream]",
            {
                "enabled": True,
                "inbound_ports": [f"{SERVED}-{CLOSED}"],
                "inbound_addresses": [OUTSIDE_FACING, OUTSIDE_FACING6],
            },
        ),
        ("[observability]", {"status_file": work / "conc.json", "status_interval": 0.2}),
    )
    client = toml_text(
        {"name": "alice", "mode": "tunnel"},
        ("[concentrator]", {"address": CONCENTRATOR, "port": 4433,
                            "server_name": "concentrator"}),
        ("[tun]", {"name": unique("qinu"), "addresses": [f"{INNER}/32"]}),
        ("[tls]", {**tls, "cert": certs / "alice.pem", "key": certs / "alice.key"}),
        ("[stream]", {"enabled": True, "inbound": [SERVED, CLOSED, NOT_ALLOWED]}),
        ("[observability]", {"status_file": work / "client.json", "status_interval": 0.2}),
    )  # fmt: skip
    (work / "conc.toml").write_text(conc)
    (work / "client.toml").write_text(client)
    return work / "conc.toml", work / "client.toml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_certs: Path) -> Iterator[tuple[Qtun, Qtun]]:
    """The namespaces, the concentrator, the client; entered once both mappings are granted."""
    work = tmp_path_factory.mktemp("qin")
    conc_toml, client_toml = configs(work, lab_certs)
    with namespaces(NS_C, NS_S, NS_O):
        veth(End(NS_C, IF["a"], ["10.84.0.1/24"]), End(NS_S, IF["b"], [f"{CONCENTRATOR}/24"]))
        veth(
            End(NS_S, IF["c"], [f"{OUTSIDE_FACING}/24", f"{OUTSIDE_FACING6}/64"]),
            End(NS_O, IF["d"], ["10.201.1.2/24", "fd00:201:1::2/64"]),
        )
        with (
            qtun(NS_S, "concentrator", conc_toml, work / "conc.json") as conc,
            qtun(NS_C, "client", client_toml, work / "client.json") as client,
        ):
            conc.wait_status(
                "two inbound mappings",
                lambda s: len(s.get("inbound", [])) == 2,
                alive=[client],
            )
            client.wait_status(
                "every port answered",
                lambda s: len(s.get("inbound", [])) == 3 and all(e["result"] for e in s["inbound"]),
                alive=[conc],
            )
            yield conc, client


def app(ns: str, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = run_json(python_in(ns, "tests.integration.qst_apps", *args))
    return result


def server(ns: str, port: int, bind: str) -> AbstractContextManager[Proc]:
    return process(
        python_in(ns, "tests.integration.qst_apps", "serve-halfclose", str(port), bind),
        stop_by="term",
    )


def test_pcp_grants_the_allowed_ports_and_refuses_the_rest(lab: tuple[Qtun, Qtun]) -> None:
    conc, client = lab
    mappings = {m["external_port"]: m for m in conc.status()["inbound"]}
    assert mappings[SERVED] == {"client": "alice", "external_port": SERVED,
                                "internal": f"{INNER}:{SERVED}"}  # fmt: skip
    assert mappings[CLOSED]["internal"] == f"{INNER}:{CLOSED}"
    answers = {e["port"]: e for e in client.status()["inbound"]}
    assert answers[SERVED] == {"port": SERVED, "result": "SUCCESS",
                               "external": f"{OUTSIDE_FACING}:{SERVED}"}  # fmt: skip
    assert answers[NOT_ALLOWED]["result"] == "NO_RESOURCES"
    assert answers[NOT_ALLOWED]["external"] is None


@pytest.mark.parametrize("outside", [OUTSIDE_FACING, OUTSIDE_FACING6])
def test_a_server_on_the_client_is_reached_from_behind_the_concentrator(
    lab: tuple[Qtun, Qtun], outside: str
) -> None:
    """An outside host connects to the concentrator's mapped port (over IPv4 or IPv6: the
    stream names the client's inner address either way); the concentrator opens a stream to
    the client, which connects to its server on the inner address: 300 kB one way, the
    outside half-closes, the server's answer comes back on the other direction."""
    conc, _ = lab
    with server(NS_C, SERVED, INNER) as srv:
        res = app(NS_O, "halfclose", outside, str(SERVED), "300000")
        srv.expect("RESULT ")
    assert res["answer"] == res["expected"]
    conc.wait_status("the inbound stream counted", lambda s: s["stream"]["inbound_opened"] >= 1)


def test_resets_cross_in_both_directions(lab: tuple[Qtun, Qtun]) -> None:
    """The outside host resets its connection once the client's server has its data: the RST
    travels as RESET_STREAM and the server sees a reset; a server that resets (SO_LINGER 0)
    reaches the outside host as a reset too (-tcp §3, the same mapping as the forward way)."""
    conc, client = lab
    watch = python_in(NS_C, "tests.integration.qst_apps", "serve-watch", str(SERVED))
    with process(watch, stop_by="term") as srv:
        resetter = python_in(NS_O, "tests.integration.qst_apps", "reset", OUTSIDE_FACING,
                             str(SERVED))  # fmt: skip
        with process(resetter, ready="SENT") as application:
            srv.expect("GOT")
            application.send("reset")
            application.expect("RESULT ")
        watched = srv.expect_json("RESULT ")
    assert watched["ended"] == "reset"
    conc.wait_status("the outside RST relayed", lambda s: s["stream"]["resets_sent"] >= 1)
    client.wait_status("the RST received", lambda s: s["stream"]["resets_received"] >= 1)
    reset_server = python_in(NS_C, "tests.integration.qst_apps", "serve-reset", str(SERVED))
    with process(reset_server, stop_by="term") as srv:
        res = app(NS_O, "expect-reset", OUTSIDE_FACING, str(SERVED))
        srv.expect("RESULT ")
    assert res in ({"connected": True, "outcome": "reset"},
                   {"connected": False, "error": "ConnectionResetError"})  # fmt: skip


def test_a_refused_local_connect_resets_the_outside_connection(lab: tuple[Qtun, Qtun]) -> None:
    """Nothing listens on the client's port 8081: the client answers the stream with Error TLV
    Network Failure + End + FIN (-tcp §5.1.3), the concentrator resets the outside TCP."""
    conc, client = lab
    res = app(NS_O, "expect-reset", OUTSIDE_FACING, str(CLOSED))
    # the reset may come before connect() returns to the application (the handshake with the
    # concentrator completed, the RST followed before the process ran again): ECONNRESET then
    reset = [{"connected": True, "outcome": "reset"},
             {"connected": False, "error": "ConnectionResetError"}]  # fmt: skip
    assert res in reset, (res, client.log_tail(), conc.log_tail())
    client.wait_status("the failed connect counted", lambda s: s["stream"]["inbound_failed"] >= 1)
    conc.wait_status("the Error TLV counted", lambda s: s["stream"]["inbound_refused"] >= 1)


def test_a_loopback_server_with_inbound_host(
    lab: tuple[Qtun, Qtun], tmp_path: Path, lab_certs: Path
) -> None:
    """`stream.inbound_host = "127.0.0.1"`: the client connects inbound streams to loopback,
    where a server listens that the tunnel address does not reach."""
    conc, client = lab
    client.stop()
    # the client is gone: so are its mappings, and their listeners
    conc.wait_status("the mappings released", lambda s: s["inbound"] == [])
    gone = app(NS_O, "expect-reset", OUTSIDE_FACING, str(SERVED))
    assert gone == {"connected": False, "error": "ConnectionRefusedError"}
    client.overrides = ('stream.inbound_host="127.0.0.1"',)
    try:
        client.start()
        client.wait_state("up")
        client.wait_status(
            "the mapping renewed after the reconnect",
            lambda s: served_mapped(s),
            alive=[conc],
        )
        with server(NS_C, SERVED, "127.0.0.1") as srv:
            res = app(NS_O, "halfclose", OUTSIDE_FACING, str(SERVED), "50000")
            srv.expect("RESULT ")
        assert res["answer"] == res["expected"]
    finally:
        client.stop()
        client.overrides = ()


def served_mapped(status: dict[str, Any]) -> bool:
    """The served port's mapping answered SUCCESS (not just any port's: each request is sent
    again 3 s after a loss, so one can be answered well before another)."""
    return any(e["port"] == SERVED and e["result"] == "SUCCESS" for e in status.get("inbound", []))


def test_session_mode_maps_and_carries_inbound_connections_too(lab: tuple[Qtun, Qtun]) -> None:
    """The same with a client in tunnel session mode (one access): PCP goes through the session
    (Packet Tags, the concentrator's reorder buffer), the streams on its connection."""
    conc, client = lab
    client.stop()
    work = client.config.parent
    text = client.config.read_text().replace('mode = "tunnel"', 'mode = "session"')
    text = text.replace("client.json", "session.json")
    access = toml_text(
        {}, ("[[access]]", {"name": "wifi", "access_id": "wifi", "local_address": "10.84.0.1"})
    )
    (work / "session.toml").write_text(text + access)
    with qtun(NS_C, "client", work / "session.toml", work / "session.json") as session:
        session.wait_status(
            "mapped in session mode",
            lambda s: served_mapped(s),
            alive=[conc],
        )
        assert session.status()["session_id"]
        with server(NS_C, SERVED, INNER) as srv:
            res = app(NS_O, "halfclose", OUTSIDE_FACING, str(SERVED), "100000")
            srv.expect("RESULT ")
    assert res["answer"] == res["expected"]
