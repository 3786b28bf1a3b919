"""scripts/make-certs and tunnel.policy.client_auth: a CA, a concentrator cert and client certs that
work for mutual TLS with aioquic (handshake run in memory, no sockets), and the client
certificate check aioquic's server leaves out."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel.policy.client_auth import ClientAuthError, ClientVerifier

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make-certs"


def make_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    result = make_certs(
        "--out", str(out), "--clients", "alice", "bob", "--concentrator-address", "10.0.0.1"
    )
    assert result.returncode == 0, result.stderr
    return out


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_chain_names_and_usages(certs: Path) -> None:
    ca = load(certs / "ca.pem")
    for stem, usage in (
        ("concentrator", ExtendedKeyUsageOID.SERVER_AUTH),
        ("alice", ExtendedKeyUsageOID.CLIENT_AUTH),
        ("bob", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = load(certs / f"{stem}.pem")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == stem
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert (certs / f"{stem}.key").stat().st_mode & 0o777 == 0o600
    san = load(certs / "concentrator.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "concentrator" in san.value.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]


def test_refuses_to_overwrite_without_force(certs: Path) -> None:
    result = make_certs("--out", str(certs), "--clients", "alice")
    assert result.returncode == 2
    assert "already exists: pass --force" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "../evil"], "client name '../evil' is invalid"),
        (["--clients", "ca"], "client name 'ca' is invalid"),
        (["--clients", "a", "a"], "client names repeat"),
        (["--concentrator-address", "10.0.0.300"], "give --concentrator-address as an IP"),
        (["--days", "0"], "--days 0 is out of range: give a number of days from 1 to 36500"),
        (["--days", "99999999"], "--days 99999999 is out of range"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = make_certs("--out", str(tmp_path / "c"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c").exists()


class MutualTlsServerConnection(QuicConnection):
    """aioquic 1.7.2's server never sends a CertificateRequest unless this private flag is set
    (its TLS context is created on the first datagram, in _initialize). The concentrator needs
    the same hook; it belongs in tunnel/protocol/quic_ext.py."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls._request_client_certificate = True


def _handshake(
    server_cfg: QuicConfiguration, client_cfg: QuicConfiguration
) -> tuple[list[QuicEvent], QuicConnection]:
    """Run a QUIC handshake in memory; the client's events and the server connection."""
    client = QuicConnection(configuration=client_cfg)
    now = 0.0
    client.connect(("10.0.0.1", 4433), now=now)
    first = client.datagrams_to_send(now)
    # as a server does: the client's first Destination CID is the original one
    header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
    server = MutualTlsServerConnection(
        configuration=server_cfg, original_destination_connection_id=header.destination_cid
    )
    for data, _addr in first:
        server.receive_datagram(data, ("10.0.0.2", 5000), now)
    client_events: list[QuicEvent] = []
    server_done = False
    for _ in range(50):  # a handshake takes a handful of flights; bounded anyway
        moved = 0
        for data, _addr in client.datagrams_to_send(now):
            server.receive_datagram(data, ("10.0.0.2", 5000), now)
            moved += 1
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, ("10.0.0.1", 4433), now)
            moved += 1
        while (event := client.next_event()) is not None:
            client_events.append(event)
        while (event := server.next_event()) is not None:
            server_done = server_done or isinstance(event, HandshakeCompleted)
        if server_done or any(isinstance(e, ConnectionTerminated) for e in client_events):
            break
        timer = client.get_timer()
        if not moved and timer is not None:
            # idle: a refused client's draining period ends at its next timer
            now = max(now, timer)
            client.handle_timer(now)
    return client_events, server


def _configs(certs: Path, client_name: str, ca_dir: Path) -> tuple[QuicConfiguration, ...]:
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["qt"])
    server_cfg.load_cert_chain(certs / "concentrator.pem", certs / "concentrator.key")
    server_cfg.load_verify_locations(cafile=str(certs / "ca.pem"))
    server_cfg.verify_mode = ssl.CERT_REQUIRED
    client_cfg = QuicConfiguration(
        is_client=True, alpn_protocols=["qt"], server_name="concentrator"
    )
    client_cfg.load_cert_chain(ca_dir / f"{client_name}.pem", ca_dir / f"{client_name}.key")
    client_cfg.load_verify_locations(cafile=str(certs / "ca.pem"))
    return server_cfg, client_cfg


def _verify(server: QuicConnection, certs: Path) -> str:
    # aioquic keeps the peer certificate in its TLS context (tunnel/protocol/quic_ext.py reads it
    # there)
    verifier = ClientVerifier((certs / "ca.pem").read_bytes())
    tls = server.tls
    return verifier.verify(
        tls._peer_certificate,
        tls._peer_certificate_chain,
        datetime.datetime.now(datetime.UTC),
    )


def test_mutual_tls_handshake_and_client_name(certs: Path) -> None:
    events, server = _handshake(*_configs(certs, "alice", certs))
    assert any(isinstance(e, HandshakeCompleted) for e in events)
    assert not any(isinstance(e, ConnectionTerminated) for e in events)
    assert _verify(server, certs) == "alice"


def test_client_cert_from_another_ca_is_refused_by_the_verifier(
    certs: Path, tmp_path: Path
) -> None:
    assert make_certs("--out", str(tmp_path), "--clients", "mallory").returncode == 0
    events, server = _handshake(*_configs(certs, "mallory", tmp_path))
    # aioquic 1.7.2 itself completes this handshake: that is why ClientVerifier exists.
    assert any(isinstance(e, HandshakeCompleted) for e in events)
    with pytest.raises(ClientAuthError, match=r"is not accepted .*signature does not match"):
        _verify(server, certs)


def test_client_without_certificate_is_refused_by_the_verifier(certs: Path) -> None:
    server_cfg, client_cfg = _configs(certs, "alice", certs)
    client_cfg.certificate = None
    client_cfg.private_key = None
    events, server = _handshake(server_cfg, client_cfg)
    assert any(isinstance(e, HandshakeCompleted) for e in events)
    with pytest.raises(ClientAuthError, match="sent no certificate"):
        _verify(server, certs)


def test_server_certificate_is_not_a_client_certificate(certs: Path) -> None:
    verifier = ClientVerifier((certs / "ca.pem").read_bytes())
    with pytest.raises(ClientAuthError, match="EKU"):
        verifier.verify(load(certs / "concentrator.pem"), [], datetime.datetime.now(datetime.UTC))


def test_expired_certificate_is_refused(certs: Path) -> None:
    verifier = ClientVerifier((certs / "ca.pem").read_bytes())
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    with pytest.raises(ClientAuthError, match="is not accepted"):
        verifier.verify(load(certs / "alice.pem"), [], later)


def test_bad_ca_file_is_a_clear_error() -> None:
    with pytest.raises(ClientAuthError, match="holds no PEM certificate"):
        ClientVerifier(b"not a pem")
