"""What the concentrator program builds from its configuration before it runs: the client
verifier (tls.ca, tls.crl), the QUIC configuration (TLS files, ALPNs, key log, qlog) and the QUIC
server on the listen sockets, the stateless reset key, the TUN MTU; and the forwarding sysctls it
reports. Every failure a user can cause is one sentence (ConfigError, RuntimeFailure)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from aioquic.quic.configuration import QuicConfiguration

from tunnel.agents.concentrator import PeerQuicConnection
from tunnel.aio.client_setup import check_key_pair, open_observability
from tunnel.aio.udp import EndpointError, QuicDriver, QuicServer, UdpEndpoint
from tunnel.aio.workers import WorkerSeat
from tunnel.config import ConcentratorConfig, ConfigError
from tunnel.policy.address_validation import AdmissionLimits, RetryPolicy
from tunnel.policy.client_auth import ClientAuthError, ClientVerifier, RevocationList
from tunnel.protocol.quic_ext import (
    CONNECTION_ID_LENGTH,
    MAX_DATAGRAM_FRAME_SIZE,
    MAX_DATAGRAM_SIZE,
    pacing_rate,
    packet_datagram_budget,
)
from tunnel.protocol.stateless_reset import reset_key_from_secret
from tunnel.user_error import RuntimeFailure
from tunnel.wire.datagram import SESSION_HEADER_SIZE
from tunnel.wire.http_datagram import ip_packet_overhead
from tunnel.wire.modes import ALPN_MASQUE, ALPN_SESSION, ALPN_TUNNEL, MODE_ALPNS, TunnelMode

log = logging.getLogger("qtun.concentrator")

HANDSHAKE_MARGIN: Final = 64  # connections beyond the limits that may still be refused politely
IP_FORWARD_SYSCTLS: Final = {
    "ipv4": Path("/proc/sys/net/ipv4/ip_forward"),
    "ipv6": Path("/proc/sys/net/ipv6/conf/all/forwarding"),
}


# What each mode's DATAGRAM carries before the packet: nothing in tunnel mode (tunnel draft
# §5), the Protocol Type and Packet Tag in session mode (-session §4), an HTTP Datagram's
# Quarter Stream ID and Context ID on a client's first request stream (0) in MASQUE (RFC 9297
# §2.1, RFC 9484 §6).
MODE_HEADER_SIZE: Final = {
    TunnelMode.TUNNEL: 0,
    TunnelMode.SESSION: SESSION_HEADER_SIZE,
    TunnelMode.MASQUE: ip_packet_overhead(0),
}


def auto_tun_mtu(modes: tuple[TunnelMode, ...]) -> int:
    """The TUN MTU when `tun.mtu = "auto"`: the largest packet one DATAGRAM frame of a served
    mode carries with our MAX_DATAGRAM_SIZE (one packet per datagram, never fragmented).

    The largest, not the smallest: each client's own TUN takes its mode's budget (1422 B in
    tunnel mode, 1418 B in session mode) and its TCP advertises an MSS from it, so a server
    sends it packets that large. A concentrator TUN at the smallest budget made the kernel
    answer every tunnel-mode download's first full-size segments with a Packet Too Big (1418),
    a path MTU change in the middle of the inner TCP's slow start; a packet above one client's
    budget is answered by the core, for that client alone (ConcentratorCore._packet_too_big)."""
    budget = packet_datagram_budget(MAX_DATAGRAM_SIZE, CONNECTION_ID_LENGTH)
    return budget - min(MODE_HEADER_SIZE[mode] for mode in modes)


def read_ip_forward() -> dict[str, bool | None]:
    """Whether this host (network namespace) forwards IPv4 / IPv6 (None: unknown)."""
    state: dict[str, bool | None] = {}
    for family, path in IP_FORWARD_SYSCTLS.items():
        try:
            state[family] = path.read_text().strip() != "0"
        except OSError:
            state[family] = None
    return state


def reset_key(key_file: Path) -> bytes:
    """The stateless reset key (tunnel/protocol/stateless_reset.py), derived from the TLS private
    key so that a restarted concentrator sends the tokens the previous one announced."""
    try:
        return reset_key_from_secret(key_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tls.key {key_file} cannot be read ({exc}): give the concentrator key made by "
            "scripts/make-certs"
        ) from None


def load_verifier(ca: Path, crl: Path | None = None) -> ClientVerifier:
    try:
        revocations = RevocationList(crl) if crl is not None else None
        return ClientVerifier(ca.read_bytes(), revocations)
    except OSError as exc:
        raise ConfigError(
            f"tls.ca {ca} cannot be read ({exc.strerror}): give the CA file that issued the "
            "client certificates"
        ) from None
    except ClientAuthError as exc:
        # the CRL's sentences name tls.crl themselves; the CA's do not
        where = "" if str(exc).startswith("tls.crl") else f"tls.ca {ca}: "
        raise ConfigError(f"{where}{exc}") from None


def quic_configuration(config: ConcentratorConfig) -> tuple[QuicConfiguration, IO[str] | None]:
    """The server's QUIC configuration, and the key log file it writes (close it at the end)."""
    # Every tunnel ALPN is offered so that a client of a mode we do not run gets a close reason
    # naming ours (the core refuses it at handshake end); configured ones come first, aioquic's
    # server picks by its own order.
    alpns = [a for mode in config.modes for a in MODE_ALPNS[mode]]
    alpns += [a for a in ALPN_TUNNEL + ALPN_SESSION + ALPN_MASQUE if a not in alpns]
    quic_config = QuicConfiguration(
        is_client=False,
        alpn_protocols=alpns,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        max_datagram_size=MAX_DATAGRAM_SIZE,
        idle_timeout=config.limits.idle_timeout,
        congestion_control_algorithm=config.limits.congestion_control,
    )
    try:
        quic_config.load_cert_chain(config.tls.cert, config.tls.key)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tls.cert {config.tls.cert} / tls.key {config.tls.key} cannot be loaded "
            f"({exc}): give the concentrator certificate and key made by scripts/make-certs"
        ) from None
    check_key_pair(quic_config, config.tls.cert, config.tls.key)
    keylog, quic_config.quic_logger = open_observability(config.observability)
    quic_config.secrets_log_file = keylog
    return quic_config, keylog


def quic_server(
    config: ConcentratorConfig,
    quic_config: QuicConfiguration,
    on_connection: Callable[[QuicDriver], None],
    connection_options: dict[str, Any],
    seat: WorkerSeat | None = None,
) -> QuicServer:
    """The QUIC server on every listen address (not started yet): mutual TLS, our stateless
    reset tokens, the UDP edge's limits; `connection_options` go to each PeerQuicConnection
    (stream mode's). A worker (`seat`) serves the sockets the supervisor bound for it, and
    issues connection IDs that steer to it (tunnel/aio/workers.py)."""
    limits = config.limits
    key = reset_key(config.tls.key)
    endpoints: list[UdpEndpoint] = [] if seat is None else list(seat.endpoints)
    cid_worker = None if seat is None else seat.cid_worker
    try:
        for address in config.listen_addresses if seat is None else ():
            endpoint = UdpEndpoint.bind(
                str(address), config.port, pmtu_probe=config.limits.pmtu_discovery
            )
            endpoints.append(endpoint)
            warning = endpoint.buffers.warning()
            if warning:
                log.warning(warning)
    except EndpointError as exc:
        for endpoint in endpoints:
            endpoint.close()
        raise RuntimeFailure(str(exc)) from None
    # One server for every listen address: one connection table, so a connection ID seen on the
    # wire and sent to another address is never answered with its reset token (RFC 9000
    # §21.11). Its own cap bounds the state a handshake flood can create; above the accepted
    # maximum by a margin, so that connections over a limit are still read and get a
    # CONNECTION_CLOSE with the reason instead of silence.
    return QuicServer(
        endpoints,
        quic_config,
        on_connection,
        max_connections=limits.max_clients * limits.max_connections_per_client + HANDSHAKE_MARGIN,
        create_connection=functools.partial(
            PeerQuicConnection,
            request_client_certificate=True,
            reset_key=key,
            pacing_rate=pacing_rate(limits.pacing_rate_mbps),
            fast_datagram_path=limits.fast_datagram_path,
            pmtu_discovery=limits.pmtu_discovery,
            cid_worker=cid_worker,
            **connection_options,
        ),
        reset_key=key,
        cid_worker=cid_worker,
        admission=AdmissionLimits(
            retry=RetryPolicy(limits.retry),
            retry_threshold=limits.retry_threshold,
            max_half_open=limits.max_half_open,
            handshake_timeout=limits.handshake_timeout,
        ),
        resets_per_second=limits.resets_per_second,
        resets_per_prefix_per_second=limits.resets_per_prefix_per_second,
    )


__all__ = [
    "IP_FORWARD_SYSCTLS",
    "auto_tun_mtu",
    "load_verifier",
    "quic_configuration",
    "quic_server",
    "read_ip_forward",
    "reset_key",
]
