"""`qtun client-group`: two real clients in one process, each in its own namespace, against the
real `qtun concentrator`. Prefix qcg, names unique per run; the namespaces are removed even on
failure (their TUN and veth devices go with them).

    ns qcg-a (the group process runs here)          ns qcg-s (concentrator)
      alice: TUN qcgt0 10.8.0.3, wifi 10.92.1.2 ----- 10.92.1.1
    ns qcg-b (entered by the group)                   lo 10.92.0.1 (service address)
      bob:   TUN qcgt0 10.8.0.4, wifi 10.92.2.2 ----- 10.92.2.1    TUN qcgc0 10.8.0.1/16
                                 5g   10.92.3.2 ----- 10.92.3.1

Both clients name their TUN `qcgt0`: each device exists only in its client's namespace. Bob's
WiFi goes down mid-test: his tunnel-mode connection moves to 5G, which means his access
monitor watched his namespace and his new socket was made there while the process sits in
alice's.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.netns import (
    ENV,
    QTUN,
    REPO,
    End,
    Qtun,
    in_ns,
    ip,
    namespaces,
    sh,
    toml_text,
    unique,
    veth,
    wait_until,
)
from tests.integration.test_qtun_client import replies

pytestmark = [pytest.mark.root]

NS_A, NS_B, NS_S = unique("qcg-a"), unique("qcg-b"), unique("qcg-s")
SERVICE = "10.92.0.1"
CONC_V4 = "10.8.0.1"
TUN = unique("qcgt0")
# client: (namespace, inner address, {access: (client if, server if, v4 /24 prefix)})
CLIENTS = {
    "alice": (NS_A, "10.8.0.3", {"wifi": (unique("qcga0"), unique("qcga1"), "10.92.1")}),
    "bob": (
        NS_B,
        "10.8.0.4",
        {
            "wifi": (unique("qcgb0"), unique("qcgb1"), "10.92.2"),
            "5g": (unique("qcgg0"), unique("qcgg1"), "10.92.3"),
        },
    ),
}
STATUS_INTERVAL = 0.2


@dataclass
class Net:
    workdir: Path
    conc: Qtun

    def status_path(self, client: str) -> Path:
        return self.workdir / f"{client}-status.json"

    def group(self, name: str, members: list[tuple[str, str | None]]) -> Qtun:
        """A group file listing `members` (client, netns), and its program (not started),
        run from alice's namespace; its status file is the first member's."""
        text = "".join(
            f'[[client]]\nconfig = "{client}.toml"\n' + (f'netns = "{ns}"\n' if ns else "")
            for client, ns in members
        )
        path = self.workdir / f"{name}.toml"
        path.write_text(text)
        status = self.status_path(members[0][0])
        return Qtun(NS_A, "client-group", path, status, self.workdir / f"{name}.log")

    def ping(self, client: str, count: int = 3) -> int:
        argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", CONC_V4]
        result = sh(*in_ns(CLIENTS[client][0], *argv), check=False, timeout=count * 0.2 + 15)
        return replies(result.stdout)


def member(group: Qtun, status: Path) -> Qtun:
    """Another member of `group`: its status file, the group's process (never started by
    itself: `running` is the group's)."""
    view = Qtun(group.ns, "client", group.config, status, group.log_path)
    view.popen = group.popen
    return view


def configs(workdir: Path, certs: Path) -> None:
    tls = {"ca": certs / "ca.pem"}
    conc = toml_text(
        {"modes": ["tunnel"]},
        ("[listen]", {"addresses": [SERVICE], "port": 4433}),
        ("[tun]", {"name": unique("qcgc0"), "addresses": [f"{CONC_V4}/16"]}),
        ("[tls]", {**tls, "cert": certs / "concentrator.pem", "key": certs / "concentrator.key"}),
        *[("[[client]]", {"name": name, "addresses": [f"{inner}/32"]})
          for name, (_ns, inner, _a) in CLIENTS.items()],
        ("[observability]", {"status_file": workdir / "concentrator-status.json",
                             "status_interval": STATUS_INTERVAL}),
    )  # fmt: skip
    (workdir / "concentrator.toml").write_text(conc)
    for name, (_ns, inner, accesses) in CLIENTS.items():
        tables = [
            ("[[access]]", {"name": access, "access_id": access, "interface": client_if,
                            "local_address": f"{v4}.2"})
            for access, (client_if, _s, v4) in accesses.items()
        ]  # fmt: skip
        client = toml_text(
            {"name": name, "mode": "tunnel", "scheduler": "failover"},
            ("[concentrator]", {"address": SERVICE, "port": 4433,
                                "server_name": "concentrator"}),
            *tables,
            ("[tun]", {"name": TUN, "addresses": [f"{inner}/32"], "routes": [f"{CONC_V4}/32"]}),
            ("[tls]", {**tls, "cert": certs / f"{name}.pem", "key": certs / f"{name}.key"}),
            ("[limits]", {"probe_interval": 0.2, "reconnect_backoff_max": 1.0}),
            ("[observability]", {"status_file": workdir / f"{name}-status.json",
                                 "status_interval": STATUS_INTERVAL}),
        )  # fmt: skip
        (workdir / f"{name}.toml").write_text(client)


@pytest.fixture
def net(tmp_path: Path, lab_certs: Path) -> Iterator[Net]:
    with namespaces(NS_A, NS_B, NS_S):
        ip(NS_S, "addr", "add", f"{SERVICE}/32", "dev", "lo")
        for ns, _inner, accesses in CLIENTS.values():
            for metric, (client_if, server_if, v4) in enumerate(accesses.values(), start=1):
                veth(End(ns, client_if, [f"{v4}.2/24"]), End(NS_S, server_if, [f"{v4}.1/24"]))
                ip(ns, "route", "add", f"{SERVICE}/32", "via", f"{v4}.1", "dev", client_if,
                   "metric", str(metric))  # fmt: skip
        configs(tmp_path, lab_certs)
        conc = Qtun(
            NS_S,
            "concentrator",
            tmp_path / "concentrator.toml",
            tmp_path / "concentrator-status.json",
            tmp_path / "concentrator.log",
        )
        with ExitStack() as stop:
            stop.callback(conc.stop)
            conc.start().wait_state()
            yield Net(tmp_path, conc)


def test_two_clients_in_one_process_each_in_its_namespace(net: Net) -> None:
    group = net.group("group", [("alice", None), ("bob", NS_B)])
    with ExitStack() as stop:
        stop.callback(group.stop)
        group.start()
        bob = member(group, net.status_path("bob"))
        for client in (group, bob):
            client.wait_status('state "up"', lambda s: s.get("state") == "up", alive=[net.conc])
        alice_pid = group.status()["pid"]
        assert bob.status()["pid"] == alice_pid  # one process
        assert net.ping("alice") == 3, group.log_tail()
        assert net.ping("bob") == 3, group.log_tail()
        # one TUN of that name per client namespace, none in the process's other namespace
        for ns in (NS_A, NS_B):
            assert ip(ns, "link", "show", TUN, check=False).returncode == 0
        names = {c["name"] for c in net.conc.status()["clients"]}
        assert names == {"alice", "bob"}

        # bob's WiFi goes down in his namespace: his monitor sees it, his new socket is his
        ip(NS_B, "link", "set", CLIENTS["bob"][2]["wifi"][0], "down")
        bob.wait_status("moved to 5g", lambda s: s["counters"].get("migrations", 0) >= 1)
        assert net.ping("bob") == 3, group.log_tail()
        assert not group.status()["counters"].get("migrations")  # alice did not move

        # SIGUSR1 rewrites every client's status file
        before = {c: float(q.status()["time"]) for c, q in (("alice", group), ("bob", bob))}
        group.signal(signal.SIGUSR1)
        for client, program in (("alice", group), ("bob", bob)):
            program.wait_status(
                "a fresh status", lambda s, t=before[client]: float(s["time"]) > t, timeout=5
            )
        assert group.stop() == 0, group.log_tail()
    assert group.status()["state"] == "stopped" and bob.status()["state"] == "stopped"
    log = group.log()
    assert "client=alice" in log and "client=bob" in log


def test_a_client_that_cannot_start_stops_the_group(net: Net) -> None:
    # bob's TUN name is taken in his namespace by a device that is no TUN
    ip(NS_B, "link", "add", TUN, "type", "veth", "peer", "name", unique("qcgp0"))
    group = net.group("group", [("alice", None), ("bob", NS_B)])
    with ExitStack() as stop:
        stop.callback(group.stop)
        group.start()
        wait_until("the group exits", lambda: not group.running(), timeout=30)
    assert group.returncode() == 1
    tail = group.log_tail()
    assert f"qtun: error: client 'bob': an interface named {TUN!r} already exists" in tail, tail
    assert group.status()["state"] == "stopped"  # alice was stopped with it


def test_a_namespace_that_does_not_exist_is_one_sentence(net: Net) -> None:
    group = net.group("group", [("alice", None), ("bob", unique("qcg-none"))])
    result = subprocess.run(
        [*in_ns(NS_A, *QTUN, "client-group", "-c", str(group.config))],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("qtun: error: cannot open the network namespace"), result
    assert result.stderr.count("\n") == 1
