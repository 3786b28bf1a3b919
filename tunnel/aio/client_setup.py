"""What the client program builds from its configuration: the key log and qlog files, the QUIC
configuration (TLS files, ALPN of its mode, datagram sizes), and the UDP sockets bound to one
access each. Every failure a user can cause is one sentence (ConfigError, RuntimeFailure,
EndpointError). The concentrator opens its key log and qlog with open_observability too."""

from __future__ import annotations

import socket
import ssl
from ipaddress import IPv6Address, ip_address
from pathlib import Path
from typing import Any, TextIO

from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tunnel.aio.qlog import BoundedQlogLogger
from tunnel.aio.status import open_private
from tunnel.aio.udp import EndpointError, UdpEndpoint
from tunnel.config import AccessConfig, ClientConfig, ConfigError, ObservabilityConfig
from tunnel.protocol.quic_ext import MAX_DATAGRAM_FRAME_SIZE, MAX_DATAGRAM_SIZE
from tunnel.user_error import RuntimeFailure
from tunnel.wire.modes import MODE_ALPNS


def open_observability(
    obs: ObservabilityConfig,
) -> tuple[TextIO | None, BoundedQlogLogger | None]:
    """The TLS key log (0600) and the bounded qlog writer the configuration asks for (both
    programs'; RuntimeFailure naming the key and the path if one cannot be opened)."""
    keylog: TextIO | None = None
    if obs.keylog_file is not None:
        try:
            keylog = open_private(obs.keylog_file)
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot open observability.keylog_file {obs.keylog_file} ({exc.strerror}): "
                "choose a writable path"
            ) from None
    if obs.qlog_dir is None:
        return keylog, None
    try:
        obs.qlog_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if keylog is not None:
            keylog.close()
        raise RuntimeFailure(
            f"cannot create observability.qlog_dir {obs.qlog_dir} ({exc.strerror}): choose a "
            "writable directory"
        ) from None
    return keylog, BoundedQlogLogger(obs.qlog_dir)


def check_ca_file(ca: Path) -> None:
    """Refuse a tls.ca holding no PEM certificate now: aioquic only keeps its path and reads it
    in the handshake, which then fails inside aioquic, again at every reconnection, without
    naming the file."""
    try:
        x509.load_pem_x509_certificates(ca.read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"tls.ca {ca} cannot be read ({exc.strerror}): give the CA file that issued the "
            "concentrator's certificate"
        ) from None
    except ValueError:
        raise ConfigError(
            f"tls.ca {ca} holds no PEM certificate: give the CA file that issued the "
            "concentrator's certificate (the ca.pem made by scripts/make-certs)"
        ) from None


def check_key_pair(configuration: QuicConfiguration, cert: Path, key: Path) -> None:
    """Refuse a tls.key that is not tls.cert's (both programs): TLS loads them without
    comparing, and the handshake then fails at the peer (CertificateVerify), again at every
    reconnection, without naming either file (found by a review)."""
    certificate, private_key = configuration.certificate, configuration.private_key
    if certificate is None or private_key is None:
        return

    def spki(public_key: Any) -> bytes:
        return bytes(
            public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    if spki(certificate.public_key()) != spki(private_key.public_key()):
        raise ConfigError(
            f"tls.key {key} is not the key of tls.cert {cert}: give the certificate and the key "
            "made together (scripts/make-certs)"
        )


def quic_configuration(
    config: ClientConfig, keylog: TextIO | None, qlog: BoundedQlogLogger | None
) -> QuicConfiguration:
    """The QUIC configuration of every connection of the client (one, shared)."""
    alpn = MODE_ALPNS[config.mode]
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(alpn),
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        max_datagram_size=MAX_DATAGRAM_SIZE,
        idle_timeout=config.limits.idle_timeout,
        congestion_control_algorithm=config.limits.congestion_control,
        server_name=config.server_name,
        secrets_log_file=keylog,
        quic_logger=qlog,
    )
    tls = config.tls
    check_ca_file(tls.ca)
    try:
        configuration.load_verify_locations(cafile=str(tls.ca))
        configuration.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise RuntimeFailure(
            f"cannot load the TLS files ({exc}): check tls.ca, tls.cert and tls.key or make new "
            "ones with scripts/make-certs"
        ) from None
    check_key_pair(configuration, tls.cert, tls.key)
    configuration.verify_mode = ssl.CERT_REQUIRED
    return configuration


def concentrator_remote(config: ClientConfig) -> tuple[str, int] | tuple[str, int, int, int]:
    address, port = config.concentrator_address, config.concentrator_port
    if isinstance(address, IPv6Address):
        # recvfrom on an AF_INET6 socket gives 4-tuples and aioquic compares addresses as
        # tuples: the same shape, or every packet would look like it came from a new path.
        return (str(address), port, 0, 0)
    return (str(address), port)


def bind_access(config: ClientConfig, access: AccessConfig | None) -> UdpEndpoint:
    """A UDP socket on `access` (its interface and/or local address; None: any local address)
    in the concentrator's address family. EndpointError (one sentence) if it cannot be made."""
    v6 = isinstance(config.concentrator_address, IPv6Address)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    probe = config.limits.pmtu_discovery
    if access is None:
        return UdpEndpoint.bind(family=family, pmtu_probe=probe)
    local = access.local_address
    if local is not None and isinstance(local, IPv6Address) != v6:
        raise EndpointError(
            f"access {access.name!r} has local address {local} but the concentrator address "
            f"{config.concentrator_address} is of the other IP family: give addresses of one "
            "family"
        )
    return UdpEndpoint.bind(
        str(local) if local is not None else None,
        interface=access.interface,
        family=family,
        pmtu_probe=probe,
    )


def address_text(address: Any) -> str:
    """A socket address for the log: 192.0.2.1:4433, [2001:db8::1]:4433."""
    try:
        host = str(ip_address(str(address[0]).split("%")[0]))
    except (ValueError, IndexError, TypeError):
        return str(address)
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


__all__ = [
    "address_text",
    "bind_access",
    "check_ca_file",
    "check_key_pair",
    "concentrator_remote",
    "open_observability",
    "quic_configuration",
]
