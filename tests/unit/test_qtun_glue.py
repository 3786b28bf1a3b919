"""testbed.qtun without root: the certificates and TOML files it writes are what qtun accepts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import pytest

from testbed.lab import Lab
from testbed.qtun import (
    CLIENT_ROUTES,
    QtunDeployment,
    QtunError,
    TunnelSpec,
    client_inner_addresses,
    qtun_command,
)
from tunnel.aio.config_file import load_client_config, load_concentrator_config
from tunnel.wire.modes import TunnelMode


@pytest.fixture()
def make_lab() -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def make(topology: str, **params: Any) -> Lab:
        lab = Lab(topology, **params)  # not started: only its Plan is used
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.state.finish()


def deploy(lab: Lab, spec: TunnelSpec, tmp_path: Path) -> QtunDeployment:
    dep = QtunDeployment(lab, spec, workdir=tmp_path)
    dep.make_certs()
    dep.write_configs()
    return dep


def test_inner_addresses_follow_the_documented_plan() -> None:
    assert client_inner_addresses(1) == ("10.8.0.3", "fd00:8::2")
    assert client_inner_addresses(249) == ("10.8.0.251", "fd00:8::fa")
    assert client_inner_addresses(250) == ("10.8.1.2", "fd00:8::fb")
    with pytest.raises(ValueError):
        client_inner_addresses(0)


def test_reference_session_configs_parse(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab("reference")
    dep = deploy(lab, TunnelSpec(mode="session", scheduler="wrr"), tmp_path)
    assert dep.concentrator == "conc"
    conc = load_concentrator_config(dep.config_path("conc"))
    assert conc.listen_addresses == (ip_address("10.100.0.1"), ip_address("fd00:100::1"))
    assert conc.scheduler == "wrr"
    assert [(c.name, c.addresses) for c in conc.clients] == [
        ("c1", (ip_network("10.8.0.3/32"), ip_network("fd00:8::2/128")))
    ]
    assert ip_interface("10.8.0.1/16") in conc.tun.addresses
    client = load_client_config(dep.config_path("c1"))
    assert client.mode is TunnelMode.SESSION and client.name == "c1"
    assert [(a.name, a.interface, str(a.local_address)) for a in client.accesses] == [
        ("wifi", "c1-wifi", "10.1.1.2"),
        ("5g", "c1-5g", "10.2.1.2"),
    ]
    assert client.tun.routes == tuple(ip_network(r) for r in CLIENT_ROUTES)
    assert client.tls.cert == (tmp_path / "certs" / "c1.pem").resolve()
    assert client.observability.status_file == dep.status_path("c1")
    assert dep.client_address("c1", 6) == "fd00:8::2"


def test_one_certificate_per_client_named_by_its_cn(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    lab = make_lab("nclient", clients=3)
    dep = deploy(lab, TunnelSpec(mode="session"), tmp_path)
    for name in ("c1", "c2", "c3"):
        cert = x509.load_pem_x509_certificate((dep.certs / f"{name}.pem").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert load_client_config(dep.config_path(name)).name == name
    conc = load_concentrator_config(dep.config_path("conc"))
    assert [c.name for c in conc.clients] == ["c1", "c2", "c3"]


def test_pair_runs_the_concentrator_on_h2(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab("pair")
    dep = deploy(lab, TunnelSpec(mode="tunnel"), tmp_path)
    assert dep.concentrator == "h2" and dep.clients == ["h1"]
    conc = load_concentrator_config(dep.config_path("h2"))
    assert ip_address("10.0.0.2") in conc.listen_addresses
    client = load_client_config(dep.config_path("h1"))
    assert client.mode is TunnelMode.TUNNEL
    assert str(client.concentrator_address) == "10.0.0.2"
    assert [(a.name, a.interface) for a in client.accesses] == [("link", "h1-eth0")]
    assert dep.concentrator_address(4) == "10.8.0.1"


def test_overrides_go_on_the_command_line() -> None:
    argv = qtun_command("client", Path("/x/c1.toml"), ["limits.probe_interval=0.2"], "debug")
    assert argv[-7:] == [
        "client",
        "-c",
        "/x/c1.toml",
        "--log-level",
        "debug",
        "--set",
        "limits.probe_interval=0.2",
    ]


def test_bad_spec_and_client_are_refused(make_lab: Callable[..., Lab]) -> None:
    with pytest.raises(ValueError, match="mode"):
        TunnelSpec(mode="bogus")
    lab = make_lab("reference")
    with pytest.raises(QtunError, match="not a client"):
        QtunDeployment(lab, TunnelSpec(), clients=["c9"])


def test_reference_tunnel_mode_lists_every_access(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab("reference")
    dep = deploy(lab, TunnelSpec(mode="tunnel", access_reports=False, reorder=False), tmp_path)
    client = load_client_config(dep.config_path("c1"))
    assert client.mode is TunnelMode.TUNNEL
    # The first access carries the connection; the others are migration targets.
    assert [a.name for a in client.accesses] == ["wifi", "5g"]
    assert client.limits.reorder_timeout == 0.0


def test_stream_spec_enables_stream_mode_on_both_sides(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab("reference")
    dep = deploy(lab, TunnelSpec(mode="session", stream=True), tmp_path)
    client = load_client_config(dep.config_path("c1"))
    assert client.stream.enabled
    assert client.stream.intercept == tuple(ip_network(r) for r in CLIENT_ROUTES)
    assert load_concentrator_config(dep.config_path("conc")).stream.enabled
    plain = deploy(lab, TunnelSpec(mode="session"), tmp_path / "plain")
    assert not load_client_config(plain.config_path("c1")).stream.enabled


def test_masque_spec_serves_masque_and_configures_the_client(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab("pair")
    dep = deploy(lab, TunnelSpec(mode="masque"), tmp_path)
    assert load_client_config(dep.config_path("h1")).mode is TunnelMode.MASQUE
    conc = load_concentrator_config(dep.config_path("h2"))
    assert TunnelMode.MASQUE in conc.modes
    # the static [[client]] prefixes are what the concentrator assigns (ADDRESS_ASSIGN)
    assert [c.name for c in conc.clients] == ["h1"]
    other = deploy(lab, TunnelSpec(mode="tunnel"), tmp_path / "tunnel")
    assert TunnelMode.MASQUE not in load_concentrator_config(other.config_path("h2")).modes
