"""Typed configuration of `qtun client` and `qtun concentrator`, parsed from TOML text.

Every key is declared once, on its dataclass field below: its default (the field's), the values
it accepts (range or choices), its unit and a one-line doc (tunnel/config_schema.py says how).
The parser reads those declarations, and the README's configuration reference is generated from
them (`python -m tunnel.config_reference --write`), so a default is written in one place.

Sans-I/O: `parse_client_config` / `parse_concentrator_config` take the file's text (the caller
reads the file, see tunnel/aio/config_file.py) plus overrides from the command line, and return
frozen dataclasses. Every bad value raises ConfigError with one sentence naming the key, what is
wrong and what to do. Relative paths are taken relative to the config file's directory.

Overrides are "dotted.key=value" strings (`--set concentrator.port=4433`); list items are
addressed by index (`access.0.interface=wlan1`). The value is read as a TOML value when it is
one (`4433`, `true`, `["a", "b"]`) and as a plain string otherwise (`10.0.0.1`).

Address assignment is outside the drafts' scope: the concentrator gives each client the static
prefixes of its `[[client]]` entry; a client without one may use a `[pool]` address, claimed
by its first packet from it and then its alone (tunnel/policy/addresses.py). The client is
configured with its address under `[tun]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

from tunnel.config_schema import (
    IFNAMSIZ,
    Address,
    AddressList,
    AnyAddressList,
    Boolean,
    Check,
    Choice,
    ConfigError,
    EnumList,
    FilePath,
    Integer,
    InterfaceList,
    InterfaceName,
    IPAddress,
    IPInterface,
    IPNetwork,
    MacList,
    Mtu,
    Network,
    NetworkList,
    Number,
    Parsed,
    PortList,
    StringList,
    Table,
    Text,
    apply_override,
    load_toml,
    read_table,
    section,
    setting,
)
from tunnel.policy.qos import dscp_value, qos_label, qos_value
from tunnel.protocol.codel import DEFAULT_INTERVAL, DEFAULT_TARGET, CoDel
from tunnel.session.scheduler import SCHEDULER_NAMES
from tunnel.wire.datagram import Payload
from tunnel.wire.messages import ACCESS_NAMES, AccessId
from tunnel.wire.modes import TunnelMode

__all__ = [
    "ACCESS_KINDS",
    "CONGESTION_CONTROLS",
    "DEFAULT_PORT",
    "IFNAMSIZ",
    "LOCALHOST",
    "RETRY_POLICIES",
    "SCHEDULER_NAMES",
    "STREAM_BUFFER_DEFAULT",
    "STREAM_CONNECT_MODES",
    "TO_CONCENTRATOR_POLICIES",
    "AccessConfig",
    "ClientConfig",
    "ClientLimits",
    "ConcentratorConfig",
    "ConcentratorLimits",
    "ConfigError",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "L2Config",
    "ObservabilityConfig",
    "Payload",
    "PoolConfig",
    "QosMark",
    "StaticClient",
    "StreamClientConfig",
    "StreamServerConfig",
    "TlsConfig",
    "TunConfig",
    "apply_override",
    "parse_client_config",
    "parse_concentrator_config",
]

DEFAULT_PORT = 4433
MAX_WORKERS = 64  # concentrator worker processes at most (one connection-ID byte could steer 256)
LOCALHOST = IPv4Address("127.0.0.1")
# Names accepted for an access's kind, mapped to the Access ID it reports (tunnel draft §Access
# Report TLV): the short names of tunnel/wire/messages.py, and the draft's own as aliases.
ACCESS_KINDS: Mapping[str, AccessId] = {
    ACCESS_NAMES[AccessId.THREE_GPP]: AccessId.THREE_GPP,
    "3gpp": AccessId.THREE_GPP,
    ACCESS_NAMES[AccessId.NON_THREE_GPP]: AccessId.NON_THREE_GPP,
    "non-3gpp": AccessId.NON_THREE_GPP,
}
# Congestion controllers of the outer QUIC connection (DATAGRAM frames are congestion controlled
# too, RFC 9221 §5.4), tunnel/protocol/congestion.py: aioquic's loss-based Reno (its default) and
# CUBIC, our BBRv1 (random loss does not shrink it), and "none" (RFC 9484 §10: IP tunnels may
# leave congestion control to the tunnelled flows; paced at limits.pacing_rate_mbps, never with
# stream mode). A test checks these names against the controllers registered with aioquic.
CONGESTION_CONTROLS = ("reno", "cubic", "bbr", "none")
# What packets of tunnel/session-mode clients may reach on the concentrator host itself (its own
# addresses): "deny" nothing, "ping" ICMP/ICMPv6 echo requests only (the default: a client can
# check its tunnel, but not reach the host's services), "allow" everything.
TO_CONCENTRATOR_POLICIES = ("deny", "ping", "allow")
RETRY_POLICIES = ("always", "auto", "never")
# How the transparent stream client answers an application's SYN (tunnel/aio/stream_client.py):
# "early" at once (the kernel's listener does), "faithful" once the concentrator connected.
STREAM_CONNECT_MODES = ("early", "faithful")
# Stream mode's window and send buffer, 1 MiB each: one stream then fills a 100 Mbit/s path up
# to ~80 ms of RTT; 256 KiB held a 5G-profile link (20 ms + queueing) to 57 of 94 Mbit/s (make
# bench). Memory per connection and side is about window + send_buffer.
STREAM_BUFFER_DEFAULT = 1024 * 1024
STREAM_BUFFER = Integer(16 * 1024, 64 * 1024 * 1024)
PORT = Integer(1, 65535)
SECONDS_IDLE = Number(1.0, 3600.0)
REORDER_TIMEOUT = Number(0.0, 10.0)
REORDER_DOC = (
    "how long the reorder buffer holds packets behind a missing Packet Tag (session mode); "
    "0 turns reordering off (packets delivered as they arrive, a second copy of one still "
    "dropped)"
)
REORDER_UNSET = "from the paths' RTTs"
CONGESTION_DOC = (
    "congestion controller of the outer QUIC connections (RFC 9221 §5.4); none: only paced, "
    "for tunnel/session mode without stream mode (RFC 9484 §10)"
)
CONGESTION_ACCESS_DOC = (
    'the outer controller of the connections over the {access} access (README "Running the '
    'tunnel"); the concentrator follows it in session mode'
)
PACING_DOC = (
    'the rate congestion control "none" paces each connection at; with the others, a cap on '
    "their pacing rate"
)

# The New Session's QoS Flow Indication (session draft §6.1.1) is opaque bytes; configurations
# write it as text or 0x-hex (tunnel/policy/qos.py).
QOS_VALUE = Parsed(
    "a QoS value (ASCII text, or 0x and hex digits for other bytes)",
    "ASCII text or `0x` + hex",
    lambda value: value if isinstance(value, str) and qos_value(value) is not None else _bad(),
)
DSCP = Parsed(
    "a DSCP (0 to 63, or a name like EF, AF41 or CS1)", "0–63, `EF`, `AF41`, `CS1`…", dscp_value
)


def _bad() -> str:
    raise TypeError("not a string")


# The multipath engine (issue 12; README "The multipath engine"): each mechanism can be turned
# off on its own, so an experiment can measure what each buys (the ablation).
DETECTION_DOC = (
    "fast failure detection from QUIC ACK silence: a path silent beyond its probe timeout is "
    "suspect, then dead (tunnel/session/path_health.py)"
)
ZERO_RTT_DOC = (
    "TLS 1.3 session tickets (kept in memory, single-use) and 0-RTT: the client's Join Session "
    "on a resumed connection travels in 0-RTT and is answered at once; nothing else does "
    '(README "0-RTT"); both ends must enable it'
)
REINJECTION_DOC = (
    "re-send lost datagrams and those stranded on a suspect or dead path on another access "
    "(tunnel mode: on the path the connection moved to), within resend_deadline"
)
LOSS_HIDING_DOC = (
    "re-send a lost datagram once on the same path when no other is available, within "
    "resend_deadline (off until measured, issue 13)"
)
LOSS_HIDING_CHOICES = ("off", "on")
RELEASE_PACING_DOC = (
    "spread what the reorder buffer releases at once after a gap over a few ms (session mode; "
    "off: the whole run goes to the TUN back to back, as before the pacer)"
)
RESEND_DEADLINE_DOC = "how old a datagram may be for a re-send (reinjection, loss hiding)"
RESEND_DEADLINE_UNSET = (
    "2 x the largest smoothed RTT + 25 ms, within 0.05-1 s (at least 0.2 s for a datagram "
    "stranded on a failed path)"
)
FAST_PATH_DOC = (
    "build and parse the QUIC packets that carry only DATAGRAM and ACK frames without aioquic's "
    "generic builder and parser (quic_ext.py, the same packets and loss recovery; README "
    '"Benchmarks"); false: aioquic\'s path for every packet'
)
PMTU_DOC = (
    'find the path MTU with probes (DPLPMTUD, RFC 9000 §14.3 / RFC 8899; README "Path MTU"): '
    "the handshake at 1200 bytes, then the full 1452-byte datagrams confirmed by a probe, and "
    "on a black hole (large packets lost, small ones answered) a search down to what the path "
    "carries; sockets set DF and never fragment. false: 1452-byte datagrams, unchecked"
)
DUPLICATION_DOC = (
    "session mode: while a path is suspect, copy each new packet it gets onto another access"
)
QUEUE_AQM_DOC = (
    "active queue management of each connection's datagram queue: codel (RFC 8289) drops "
    "arriving packets once the queue's delay stayed above queue_delay_target for "
    "queue_delay_interval, so an inner TCP flow keeps the tunnel's own queue short (off by "
    "default: in its 2026-12-08 check one goodput cell of 16, outer and inner BBR at 2 % loss, "
    'lost 8-11 % with it in a third of its runs, README "The datagram queue"); off: tail drop '
    "at max_datagram_queue only"
)
QUEUE_AQM_CHOICES = ("codel", "off")
QUEUE_DELAY_TARGET_DOC = (
    "CoDel's target delay of the datagram queue (RFC 8289 §4.4); at least this, 5 % of the "
    "interval on a long path"
)
QUEUE_DELAY_INTERVAL_DOC = (
    "CoDel's interval: how long the delay must stay above the target before a drop (RFC 8289 "
    "§4.3: about a worst-case RTT); at least this, twice the outer path's minimum RTT on a "
    "long path"
)
DUPLICATE_UP_TO_DOC = (
    "session mode (with duplication): packets of at most this size always go on two accesses "
    "(ACKs, DNS, VoIP); 0: none"
)


# --- the client's and the concentrator's shared tables --------------------------------------------


@dataclass(frozen=True)
class AccessConfig:
    """One access network the client uses: its UDP socket binds to `local_address` and/or
    `interface`; `access_id` is the Access ID reported for it."""

    name: str = field(metadata=setting("unique name of the access (logs, status file)", Text()))
    access_id: AccessId = field(
        metadata=setting(
            "the Access ID its Access Reports carry: wifi = non-3GPP (2), 5g = 3GPP (1)",
            Choice(tuple(ACCESS_KINDS), ACCESS_KINDS.__getitem__),
        )
    )
    interface: str | None = field(
        default=None,
        metadata=setting(
            "interface its UDP socket is bound to (SO_BINDTODEVICE)", InterfaceName(), unset="none"
        ),
    )
    local_address: IPAddress | None = field(
        default=None,
        metadata=setting(
            "local address its socket binds to (give it, interface, or both)",
            Address(),
            unset="none",
        ),
    )


@dataclass(frozen=True)
class TunConfig:
    name: str = field(metadata=setting("the TUN device's name", InterfaceName()))
    mtu: int | None = field(
        default=None,
        metadata=setting(
            "auto: the largest packet one QUIC datagram carries (a client's, found after the "
            "handshake; a concentrator's, the largest of its modes')",
            Mtu(576, 65535),
            unit="bytes",
            unset='`"auto"`',
        ),
    )
    # Required but for an Ethernet client, whose TAP may get its addresses by DHCP or SLAAC
    # across the tunnel (checked in _check_client / _check_concentrator).
    addresses: tuple[IPInterface, ...] = field(
        default=(),
        metadata=setting(
            "this end's tunnel addresses, with prefix length (a client with payload ethernet "
            "may leave them to DHCP/SLAAC; with mode masque the proxy assigns them)",
            InterfaceList(),
            unset="required (an Ethernet or masque client: none)",
        ),
    )
    routes: tuple[IPNetwork, ...] = field(
        default=(), metadata=setting("prefixes routed into the TUN", NetworkList())
    )
    offload: bool = field(
        default=True,
        metadata=setting(
            "write a batch's consecutive TCP segments of a flow as one super-packet "
            "(IFF_VNET_HDR, GRO in user space with build/libqtoffload.so; without it: off, "
            "with a warning; a TAP never)",
            Boolean(),
        ),
    )
    tso: bool = field(
        default=True,
        metadata=setting(
            "with offload: read the TCP super-packets this host sends (segmentation offload, "
            "TUN_F_TSO4/6) and cut them into segments (build/libqtoffload.so)",
            Boolean(),
        ),
    )
    txqueuelen: int | None = field(
        default=None,
        metadata=setting(
            "the device's transmit ring: packets the kernel holds for this program to read. "
            "The kernel drops beyond it, drop-tail, so a concentrator short of CPU loses its "
            "clients' packets there unevenly: a longer ring shares better, at the cost of a "
            'longer queue while the program is behind (README "Client groups")',
            Integer(1, 100_000),
            unit="packets",
            unset="the kernel's (500 for a TUN)",
        ),
    )


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS: `ca` verifies the peer, `cert`/`key` identify this side."""

    ca: Path = field(metadata=setting("CA certificate that verifies the peer", FilePath()))
    cert: Path = field(metadata=setting("this side's certificate", FilePath()))
    key: Path = field(metadata=setting("its private key", FilePath()))
    # concentrator only (the client's [tls] omits it): tunnel/policy/client_auth.py RevocationList
    crl: Path | None = field(
        default=None,
        metadata=setting(
            "the client CA's revocation list (PEM or DER), re-read when it changes and on SIGHUP",
            FilePath(),
            unset="none",
        ),
    )


@dataclass(frozen=True)
class ObservabilityConfig:
    qlog_dir: Path | None = field(
        default=None,
        metadata=setting(
            "qlog directory (at most 50,000 events per connection; slows aioquic)",
            FilePath(),
            unset="off",
        ),
    )
    keylog_file: Path | None = field(
        default=None,
        metadata=setting(
            "TLS secrets for Wireshark (SSLKEYLOGFILE format)", FilePath(), unset="off"
        ),
    )
    status_file: Path | None = field(
        default=None,
        metadata=setting("JSON status for scripts (*Status file* above)", FilePath(), unset="off"),
    )
    status_interval: float = field(
        default=1.0,
        metadata=setting(
            "between status file rewrites (and at every state change)",
            Number(0.05, 3600.0),
            unit="s",
        ),
    )


# --- both programs' [limits] ---------------------------------------------------------------------


@dataclass(frozen=True)
class PathLimits:
    """What both ends of a tunnel connection set alike (README "Configuration reference": the
    same keys under the client's and the concentrator's [limits]): the QUIC connection, its
    congestion control and the multipath engine. Declared once here."""

    idle_timeout: float = field(
        default=30.0, metadata=setting("QUIC idle timeout", SECONDS_IDLE, unit="s")
    )
    reorder_timeout: float | None = field(
        default=None, metadata=setting(REORDER_DOC, REORDER_TIMEOUT, unit="s", unset=REORDER_UNSET)
    )
    release_pacing: bool = field(default=True, metadata=setting(RELEASE_PACING_DOC, Boolean()))
    congestion_control: str = field(
        default="reno", metadata=setting(CONGESTION_DOC, Choice(CONGESTION_CONTROLS))
    )
    congestion_control_wifi: str | None = field(
        default=None,
        metadata=setting(
            CONGESTION_ACCESS_DOC.format(access="WiFi (non-3GPP)"),
            Choice(CONGESTION_CONTROLS),
            unset="as congestion_control",
        ),
    )
    congestion_control_5g: str | None = field(
        default=None,
        metadata=setting(
            CONGESTION_ACCESS_DOC.format(access="5G (3GPP)"),
            Choice(CONGESTION_CONTROLS),
            unset="as congestion_control",
        ),
    )
    pacing_rate_mbps: float | None = field(
        default=None,
        metadata=setting(
            PACING_DOC,
            Number(0.001, 1_000_000.0),
            unit="Mbit/s",
            unset='no cap (required with congestion_control = "none")',
        ),
    )
    failure_detection: bool = field(default=True, metadata=setting(DETECTION_DOC, Boolean()))
    reinjection: bool = field(default=True, metadata=setting(REINJECTION_DOC, Boolean()))
    loss_hiding: str = field(
        default="off", metadata=setting(LOSS_HIDING_DOC, Choice(LOSS_HIDING_CHOICES))
    )
    resend_deadline: float | None = field(
        default=None,
        metadata=setting(
            RESEND_DEADLINE_DOC, Number(0.001, 10.0), unit="s", unset=RESEND_DEADLINE_UNSET
        ),
    )
    duplication: bool = field(default=True, metadata=setting(DUPLICATION_DOC, Boolean()))
    fast_datagram_path: bool = field(default=True, metadata=setting(FAST_PATH_DOC, Boolean()))
    pmtu_discovery: bool = field(default=False, metadata=setting(PMTU_DOC, Boolean()))
    duplicate_up_to: int = field(
        default=0, metadata=setting(DUPLICATE_UP_TO_DOC, Integer(0, 65535), unit="bytes")
    )
    zero_rtt: bool = field(default=False, metadata=setting(ZERO_RTT_DOC, Boolean()))
    queue_aqm: str = field(
        default="off", metadata=setting(QUEUE_AQM_DOC, Choice(QUEUE_AQM_CHOICES))
    )
    queue_delay_target: float = field(
        default=DEFAULT_TARGET,
        metadata=setting(QUEUE_DELAY_TARGET_DOC, Number(0.0005, 1.0), unit="s"),
    )
    queue_delay_interval: float = field(
        default=DEFAULT_INTERVAL,
        metadata=setting(QUEUE_DELAY_INTERVAL_DOC, Number(0.005, 10.0), unit="s"),
    )

    def congestion_control_on(self, access: AccessId | None) -> str:
        """The controller of a connection over `access` (None: not known): its own setting,
        else congestion_control."""
        own = None
        if access is AccessId.NON_THREE_GPP:
            own = self.congestion_control_wifi
        elif access is AccessId.THREE_GPP:
            own = self.congestion_control_5g
        return own or self.congestion_control

    def congestion_controls(self) -> dict[str, str]:
        """Each setting that names a controller, key -> algorithm (for the checks below)."""
        keys = ("congestion_control", "congestion_control_wifi", "congestion_control_5g")
        return {k: v for k in keys if (v := getattr(self, k)) is not None}

    def queue_delay_control(self) -> CoDel | None:
        """A fresh CoDel for one connection's datagram queue (None: queue_aqm off)."""
        if self.queue_aqm == "off":
            return None
        return CoDel(self.queue_delay_target, self.queue_delay_interval)


# --- the client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientLimits(PathLimits):
    max_datagram_queue: int = field(
        default=256,
        metadata=setting(
            "tunnel datagrams waiting in aioquic before new ones are dropped",
            Integer(1, 65536),
            unit="datagrams",
        ),
    )
    reconnect_backoff_max: float = field(
        default=30.0,
        metadata=setting(
            "cap of the exponential reconnect backoff (from 0.25 s)",
            Number(0.1, 3600.0),
            unit="s",
        ),
    )
    probe_interval: float = field(
        default=1.0,
        metadata=setting(
            "between liveness probes on each access (dead after 3 unanswered)",
            Number(0.01, 60.0),
            unit="s",
        ),
    )


@dataclass(frozen=True)
class StreamClientConfig:
    """Stream mode on the client (-tcp draft): which TCP connections go into QUIC streams."""

    enabled: bool = field(
        default=False,
        metadata=setting(
            "offer stream mode (quic_tunnel_stream_mode) and carry TCP on QUIC streams", Boolean()
        ),
    )
    intercept: tuple[IPNetwork, ...] = field(
        default=(),
        metadata=setting(
            "destinations whose local TCP connections are intercepted (nftables redirect)",
            NetworkList(),
        ),
    )
    listen_port: int = field(
        default=4480,
        metadata=setting("the transparent listener's port, on 127.0.0.1 and ::1", PORT),
    )
    connect: str = field(
        default="early",
        metadata=setting(
            "transparent interception: early answers the application's SYN at once; faithful"
            " holds it (NFQUEUE, needs iptables) until the concentrator connected, so connect()"
            " fails as it would without the tunnel",
            Choice(STREAM_CONNECT_MODES),
        ),
    )
    socks_port: int | None = field(
        default=None,
        metadata=setting("a SOCKS5 front (CONNECT only) on socks_address", PORT, unset="off"),
    )
    socks_address: IPAddress = field(
        default=LOCALHOST, metadata=setting("the SOCKS5 front's address", Address())
    )
    window: int = field(
        default=STREAM_BUFFER_DEFAULT,
        metadata=setting(
            "QUIC receive window per stream (quic_ext.py): one stream gets at most window / RTT",
            STREAM_BUFFER,
            unit="bytes",
        ),
    )
    send_buffer: int = field(
        default=STREAM_BUFFER_DEFAULT,
        metadata=setting(
            "unacknowledged bytes per stream before reading its TCP socket pauses",
            STREAM_BUFFER,
            unit="bytes",
        ),
    )
    # The reversed flow (README "Stream mode"): the client asks the concentrator with PCP
    # (RFC 6887 MAP, through the tunnel) to accept TCP for these ports, and accepts the streams
    # the concentrator opens for them, and only those.
    inbound: tuple[int, ...] = field(
        default=(),
        metadata=setting(
            "local TCP ports offered to the concentrator's side (PCP MAP, then inbound streams)",
            PortList(),
        ),
    )
    inbound_host: IPAddress | None = field(
        default=None,
        metadata=setting(
            "where inbound connections are connected to (e.g. 127.0.0.1)",
            Address(),
            unset="the tunnel address the concentrator names",
        ),
    )
    pcp_server: IPAddress | None = field(
        default=None,
        metadata=setting(
            "where PCP MAP requests go, through the tunnel (UDP 5351)",
            Address(),
            unset="concentrator.address",
        ),
    )
    inbound_lifetime: int = field(
        default=3600,
        metadata=setting(
            "the mapping lifetime asked for; renewed at half of what is granted",
            Integer(120, 86400),
            unit="s",
        ),
    )


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    name: str = field(
        default="client",
        metadata=setting(
            "informational: the concentrator knows a client by its certificate", Text()
        ),
    )
    mode: TunnelMode = field(
        default=TunnelMode.TUNNEL,
        metadata=setting(
            "tunnel: one connection, migrated on failure; session: one connection per access; "
            "masque: RFC 9484 CONNECT-IP over HTTP/3, one connection, migrated on failure",
            Choice.of(TunnelMode),
        ),
    )
    # Session draft §4 names 0x6558 for Ethernet frames; tunnel mode has no Protocol Type, so
    # its payload is "signalled out of band" (tunnel draft §4): this setting on both ends, and
    # the quic_tunnel_payload transport parameter so that the concentrator refuses a mismatch.
    payload: Payload = field(
        default=Payload.IP,
        metadata=setting(
            "what the tunnel carries: ip: IP packets through a TUN; ethernet: Ethernet frames "
            "through a TAP (Protocol Type 0x6558); the concentrator must serve it (payloads)",
            Choice.of(Payload),
        ),
    )
    scheduler: str = field(
        default="failover",
        metadata=setting("session mode: which access carries each packet", Choice(SCHEDULER_NAMES)),
    )
    qos: str | None = field(
        default=None,
        metadata=setting(
            "session mode: the QoS Flow Indication sent in New Session (session draft §6.1.1),"
            " what the concentrator's [[qos]] tables map to a DSCP",
            QOS_VALUE,
            unset="none sent",
        ),
    )
    # False: never send Access Reports (tunnel draft §6); the client still stops using a failed
    # access itself. The failover experiment's "without Access Reports" variant.
    access_reports: bool = field(
        default=True,
        metadata=setting("send Access Reports (tunnel draft §6) when an access changes", Boolean()),
    )
    failback: bool = field(
        default=True,
        metadata=setting(
            "tunnel mode: migrate back to a more preferred access once it is usable again "
            "(held 1, 2, 4 … 30 s after its second, third … failure within 60 s of the last "
            "hold: flap damping)",
            Boolean(),
        ),
    )
    concentrator_address: IPAddress = field(
        metadata=setting("the concentrator's address", Address(), key="concentrator.address")
    )
    concentrator_port: int = field(
        default=DEFAULT_PORT,
        metadata=setting("the concentrator's UDP port", PORT, key="concentrator.port"),
    )
    server_name: str = field(
        default="concentrator",
        metadata=setting(
            "a name in the concentrator's certificate", Text(), key="concentrator.server_name"
        ),
    )
    # Tunnel mode with several [[access]]: the first available one carries the one connection,
    # the others are targets for QUIC connection migration (RFC 9000 §9) when it fails.
    accesses: tuple[AccessConfig, ...] = field(
        default=(),
        metadata=section(
            "the access networks, most preferred first (session mode: at least one)",
            key="access",
            many=True,
        ),
    )
    tun: TunConfig = field(
        metadata=section(
            'the TUN device (a TAP device with payload = "ethernet", its MTU 14 bytes less)',
            defaults={"name": "qtun0"},
        )
    )
    tls: TlsConfig = field(
        metadata=section(
            "mutual TLS: ca verifies the peer, cert and key identify this side", omit=("crl",)
        )
    )
    limits: ClientLimits = field(
        default_factory=ClientLimits, metadata=section("resource limits and timers")
    )
    observability: ObservabilityConfig = field(
        default_factory=ObservabilityConfig,
        metadata=section("qlog, TLS secrets and the status file"),
    )
    stream: StreamClientConfig = field(
        default_factory=StreamClientConfig,
        metadata=section("stream mode (-tcp draft): TCP connections on QUIC streams"),
    )


# --- the concentrator -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticClient:
    name: str = field(metadata=setting("the Common Name of the client's certificate", Text()))
    addresses: tuple[IPNetwork, ...] = field(
        default=(),
        metadata=setting("its static inner prefixes (IP payload)", NetworkList()),
    )
    # The L2 twin of `addresses` (tunnel/policy/mac_filter.py): without them the first
    # l2.max_macs source MACs the client sends are locked for it.
    macs: tuple[int, ...] = field(
        default=(),
        metadata=setting(
            "the source MACs its Ethernet frames may carry (payload ethernet); none: the first "
            "l2.max_macs it sends",
            MacList(),
        ),
    )
    # RA Guard (RFC 6105) and DHCPv6-Shield (RFC 7610) at the bridge port: only a client named
    # here may announce itself as router or DHCP server (tunnel/policy/l2_guard.py).
    l2_server: bool = field(
        default=False,
        metadata=setting(
            "an Ethernet client that is the bridge's router or DHCP server: its Router "
            "Advertisements, Redirects and DHCP server messages are forwarded (every other "
            "client's are dropped)",
            Boolean(),
        ),
    )


@dataclass(frozen=True)
class QosMark:
    value: str = field(
        metadata=setting("a QoS Flow Indication a client may send in New Session", QOS_VALUE)
    )
    dscp: int = field(
        metadata=setting("the DSCP of the packets the concentrator forwards for its sessions", DSCP)
    )


@dataclass(frozen=True)
class PoolConfig:
    ipv4: IPv4Network | None = field(
        default=None,
        metadata=setting(
            "IPv4 addresses for clients without a [[client]] entry", Network(4), unset="none"
        ),
    )
    ipv6: IPv6Network | None = field(
        default=None,
        metadata=setting("IPv6 addresses for them", Network(6), unset="none"),
    )
    # admission is explicit: a certificate of the CA alone is not enough (README "Security")
    admit: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            'client names (shell patterns) the pool serves; ["*"]: every client', StringList()
        ),
    )


@dataclass(frozen=True)
class ConcentratorLimits(PathLimits):
    max_clients: int = field(
        default=64, metadata=setting("clients connected at once", Integer(1, 1_000_000))
    )
    max_connections_per_client: int = field(
        default=4, metadata=setting("connections of one client at once", Integer(1, 64))
    )
    max_datagram_queue: int = field(
        default=256,
        metadata=setting(
            "datagrams waiting in aioquic per connection before new ones are dropped",
            Integer(1, 65536),
            unit="datagrams",
        ),
    )
    rate_limit_mbps: float | None = field(
        default=None,
        metadata=setting(
            "per client: packets beyond are dropped",
            Number(0.001, 1_000_000.0),
            unit="Mbit/s",
            unset="unlimited",
        ),
    )
    session_idle_expiry: float = field(
        default=30.0,
        metadata=setting(
            "how long a session without connections is kept for a rejoin",
            Number(0.0, 86400.0),
            unit="s",
        ),
    )
    # Tunnel mode has one connection: while the client reports its access unavailable
    # (tunnel draft §Access Report) packets for it wait, bounded (README "The multipath engine").
    unavailable_hold: float = field(
        default=0.5,
        metadata=setting(
            "tunnel mode: how long packets for a client wait while it reports its access "
            "unavailable (at most max_datagram_queue of them); 0: dropped",
            Number(0.0, 60.0),
            unit="s",
        ),
    )
    max_sessions: int | None = field(
        default=None,
        metadata=setting("tunneling sessions at once", Integer(1, 1_000_000), unset="max_clients"),
    )
    # Each Access Report may switch paths, log and rewrite the status (README "Security").
    access_reports_per_second: float = field(
        default=20.0,
        metadata=setting(
            "Access Reports acted on per client (burst: twice as many); more are ignored",
            Number(0.1, 100_000.0),
            unit="/s",
        ),
    )
    # The UDP edge against network attackers (tunnel/policy/address_validation.py, README
    # "Security").
    retry: str = field(
        default="auto",
        metadata=setting(
            "QUIC Retry (RFC 9000 §8.1.2); auto: from retry_threshold half-open handshakes",
            Choice(RETRY_POLICIES),
        ),
    )
    retry_threshold: int | None = field(
        default=None,
        metadata=setting(
            "half-open handshakes from which retry = auto retries",
            Integer(0, 1_000_000),
            unset="max_half_open / 4",
        ),
    )
    max_half_open: int = field(
        default=64, metadata=setting("handshakes in progress at once", Integer(1, 1_000_000))
    )
    handshake_timeout: float = field(
        default=10.0,
        metadata=setting("before an unfinished handshake is dropped", Number(0.1, 600.0), unit="s"),
    )
    resets_per_second: float = field(
        default=100.0,
        metadata=setting("stateless resets sent, in total", Number(0.1, 1_000_000.0), unit="/s"),
    )
    resets_per_prefix_per_second: float = field(
        default=10.0,
        metadata=setting(
            "stateless resets sent to one /24 (IPv4) or /56 (IPv6)",
            Number(0.1, 1_000_000.0),
            unit="/s",
        ),
    )


@dataclass(frozen=True)
class StreamServerConfig:
    """Stream mode on the concentrator: which destinations it connects to, and its limits."""

    enabled: bool = field(
        default=False,
        metadata=setting("accept stream mode: connect to the clients' TCP destinations", Boolean()),
    )
    # Destinations (tunnel/policy/stream_policy.py): denied on top of `deny` are loopback,
    # multicast, the concentrator's own addresses and the special-purpose ranges of SPECIAL_PURPOSE
    # (link-local and cloud metadata, documentation, NAT64, ...); a special-purpose range is
    # reached only if `allow` lists it or a part of it (the default allow-all does not count).
    allow: tuple[IPNetwork, ...] = field(
        default=(IPv4Network("0.0.0.0/0"), IPv6Network("::/0")),
        metadata=setting(
            "destinations clients may reach; a special-purpose range only if listed", NetworkList()
        ),
    )
    deny: tuple[IPNetwork, ...] = field(
        default=(),
        metadata=setting(
            "denied on top of loopback, multicast and this host's own addresses", NetworkList()
        ),
    )
    # True lets clients reach services on the concentrator host itself (a lab whose server runs
    # there, e.g. `make bench` on the two-host topology); off by default (tcp draft §7).
    allow_own_addresses: bool = field(
        default=False,
        metadata=setting("clients may reach services on this host (tcp draft §7)", Boolean()),
    )
    max_streams: int = field(
        default=256,
        metadata=setting(
            "concurrent streams per connection (initial_max_streams_bidi)", Integer(1, 1_000_000)
        ),
    )
    # Per client, across all its connections (tcp draft §7.1): beyond either limit, a TCP
    # Connect is refused. 512 MiB = 256 streams at the 1 MiB defaults, one connection's
    # max_streams.
    max_pending_connects: int = field(
        default=32,
        metadata=setting(
            "TCP Connects in progress per client, over all its connections (tcp draft §7.1)",
            Integer(1, 100_000),
        ),
    )
    max_client_buffer: int = field(
        default=512 * 1024 * 1024,
        metadata=setting(
            "bytes one client's streams may buffer, each counting window + send_buffer",
            Integer(32 * 1024, 1 << 40),
            unit="bytes",
        ),
    )
    connect_timeout: float = field(
        default=5.0,
        metadata=setting(
            "before a TCP Connect fails with Network Failure", Number(0.1, 600.0), unit="s"
        ),
    )
    window: int = field(
        default=STREAM_BUFFER_DEFAULT,
        metadata=setting("QUIC receive window per stream", STREAM_BUFFER, unit="bytes"),
    )
    send_buffer: int = field(
        default=STREAM_BUFFER_DEFAULT,
        metadata=setting(
            "unacknowledged bytes per stream before reading its TCP socket pauses",
            STREAM_BUFFER,
            unit="bytes",
        ),
    )
    # The reversed flow (README "Stream mode"; tunnel/policy/inbound.py): external TCP ports
    # clients may have mapped with PCP (RFC 6887 MAP through the tunnel). None by default: every
    # MAP request is answered NOT_AUTHORIZED.
    inbound_ports: tuple[int, ...] = field(
        default=(),
        metadata=setting(
            "external TCP ports clients may map with PCP (first come, first served)", PortList()
        ),
    )
    inbound_addresses: tuple[IPAddress, ...] = field(
        default=(),
        metadata=setting(
            "where mapped ports are listened on",
            AnyAddressList(),
            unset="listen.addresses",
        ),
    )
    inbound_max_per_client: int = field(
        default=8,
        metadata=setting("mappings per client (beyond: USER_EX_QUOTA)", Integer(1, 1024)),
    )
    inbound_max_lifetime: int = field(
        default=7200,
        metadata=setting(
            "the longest mapping lifetime granted (RFC 6887 §11.3)", Integer(120, 86400), unit="s"
        ),
    )


@dataclass(frozen=True)
class L2Config:
    bridge: str | None = field(
        default=None,
        metadata=setting(
            "the Linux bridge each Ethernet client's TAP joins (required with payload "
            "ethernet); it must exist",
            InterfaceName(),
            unset="none",
        ),
    )
    max_macs: int = field(
        default=1,
        metadata=setting(
            "source MACs locked per client without [[client]] macs: the first ones it sends",
            Integer(1, 4096),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class ConcentratorConfig:
    modes: tuple[TunnelMode, ...] = field(
        default=(TunnelMode.TUNNEL, TunnelMode.SESSION),
        metadata=setting("the modes clients may use", EnumList(TunnelMode)),
    )
    # Both payloads may be served at once: IP clients through the TUN, Ethernet clients each
    # through a TAP of its own on [l2] bridge (README "L2 mode").
    payloads: tuple[Payload, ...] = field(
        default=(Payload.IP,),
        metadata=setting(
            "what clients' tunnels may carry: ip (the TUN), ethernet (a TAP per client on "
            "l2.bridge)",
            EnumList(Payload),
        ),
    )
    scheduler: str = field(
        default="failover",
        metadata=setting(
            "session mode: which connection carries a session's packets", Choice(SCHEDULER_NAMES)
        ),
    )
    to_concentrator: str = field(
        default="ping",
        metadata=setting(
            "what clients' packets may reach on this host: nothing, echo requests, everything",
            Choice(TO_CONCENTRATOR_POLICIES),
        ),
    )
    # Masquerade (nftables) client packets that leave through another interface than the TUN,
    # except towards `nat_exclude` (networks that route the client prefixes back themselves).
    nat: bool = field(
        default=False,
        metadata=setting("masquerade client packets leaving by another interface", Boolean()),
    )
    nat_exclude: tuple[IPNetwork, ...] = field(
        default=(),
        metadata=setting("not masqueraded towards these (they route clients back)", NetworkList()),
    )
    listen_addresses: tuple[IPAddress, ...] = field(
        default=(IPv4Address("0.0.0.0"),),
        metadata=setting(
            'one UDP socket per address (add "::" for IPv6)', AddressList(), key="listen.addresses"
        ),
    )
    port: int = field(
        default=DEFAULT_PORT, metadata=setting("the UDP port", PORT, key="listen.port")
    )
    workers: int = field(
        default=1,
        metadata=setting(
            "processes sharing the UDP port, each with its TUN (tun.name, then tun.namew1, ...)"
            ' and its clients (README "Workers")',
            Integer(1, MAX_WORKERS),
        ),
    )
    tun: TunConfig = field(metadata=section("the TUN device", defaults={"name": "qtunc0"}))
    tls: TlsConfig = field(
        metadata=section("mutual TLS: ca verifies the peer, cert and key identify this side")
    )
    pool: PoolConfig = field(
        default_factory=PoolConfig,
        metadata=section(
            "addresses for clients without a [[client]] entry, claimed by their first packet"
        ),
    )
    clients: tuple[StaticClient, ...] = field(
        default=(),
        metadata=section("clients with static inner addresses or MACs", key="client", many=True),
    )
    l2: L2Config = field(
        default_factory=L2Config,
        metadata=section("Ethernet clients (payload ethernet): the bridge and the MAC filter"),
    )
    qos: tuple[QosMark, ...] = field(
        default=(),
        metadata=section(
            "session mode: DSCP marks for sessions by QoS Flow Indication (tunnel/policy/qos.py)",
            key="qos",
            many=True,
        ),
    )
    limits: ConcentratorLimits = field(
        default_factory=ConcentratorLimits, metadata=section("resource limits and timers")
    )
    observability: ObservabilityConfig = field(
        default_factory=ObservabilityConfig,
        metadata=section("qlog, TLS secrets and the status file"),
    )
    stream: StreamServerConfig = field(
        default_factory=StreamServerConfig,
        metadata=section("stream mode (-tcp draft): TCP connections on QUIC streams"),
    )


# --- checks that one key alone cannot make --------------------------------------------------------


def _check_access(access: AccessConfig, t: Table) -> None:
    if access.interface is None and access.local_address is None:
        raise ConfigError(
            f"{t.where('')}has neither interface nor local_address: give at least one so the "
            "socket is bound to that access network"
        )


def _check_tun(tun: TunConfig, t: Table) -> None:
    if (
        tun.mtu is not None
        and tun.mtu < 1280
        and any(isinstance(a, IPv6Interface) for a in tun.addresses)
    ):
        raise ConfigError(
            f"{t.where('mtu')} is {tun.mtu}, below IPv6's minimum 1280 while an IPv6 address is "
            'configured: raise it or use "auto"'
        )


def _check_stream_client(stream: StreamClientConfig, t: Table) -> None:
    if stream.enabled and not (stream.intercept or stream.socks_port or stream.inbound):
        raise ConfigError(
            "stream.enabled is true but none of stream.intercept, stream.socks_port and "
            'stream.inbound is set: give the prefixes to intercept (e.g. ["10.200.0.0/16"]), a '
            "SOCKS5 port or the ports to offer inbound"
        )


def _check_stream_server(stream: StreamServerConfig, t: Table) -> None:
    per_stream = stream.window + stream.send_buffer
    if stream.max_client_buffer < per_stream:
        raise ConfigError(
            f"{t.where('max_client_buffer')} = {stream.max_client_buffer} holds not one stream "
            f"of window + send_buffer = {per_stream} bytes: raise it or lower those two"
        )


def _check_concentrator_limits(limits: ConcentratorLimits, t: Table) -> None:
    if limits.retry_threshold is not None and limits.retry_threshold > limits.max_half_open:
        raise ConfigError(
            f"limits.retry_threshold = {limits.retry_threshold} is above limits.max_half_open = "
            f"{limits.max_half_open}: give a threshold between 0 and max_half_open"
        )


def _check_pool(pool: PoolConfig, t: Table) -> None:
    if (pool.ipv4 is not None or pool.ipv6 is not None) and not pool.admit:
        raise ConfigError(
            "[pool] has no admit list: name the clients it serves, e.g. admit = "
            '["student-*"] (shell patterns; ["*"] admits every certificate of the client CA)'
        )


def _check_congestion(limits: ClientLimits | ConcentratorLimits, stream_mode: bool) -> None:
    """RFC 9484 §10 allows no congestion control only for DATAGRAM-only connections: streams
    (stream mode's TCP bytestreams) need it; and "none" needs a rate to pace at."""
    for key, algorithm in limits.congestion_controls().items():
        if algorithm != "none":
            continue
        if limits.pacing_rate_mbps is None:
            raise ConfigError(
                f'limits.{key} = "none" needs limits.pacing_rate_mbps: give the rate the '
                "access carries, or choose bbr"
            )
        if stream_mode:
            raise ConfigError(
                f'limits.{key} = "none" cannot carry stream mode (its QUIC streams need '
                "congestion control, RFC 9484 §10): choose bbr, or turn [stream] off"
            )
    target = limits.queue_delay_target
    if target >= limits.queue_delay_interval:
        raise ConfigError(
            f"limits.queue_delay_target = {target} s is not below limits.queue_delay_interval = "
            f"{limits.queue_delay_interval} s: CoDel's target is a few percent of its interval "
            "(RFC 8289 §4.4), e.g. 0.005 and 0.1"
        )


_TUN_ADDRESSES_EXAMPLE = '["10.8.0.2/32", "fd00:8::2/128"]'


def _check_tun_addresses(tun: TunConfig) -> None:
    if not tun.addresses:
        raise ConfigError(
            f"tun.addresses is empty: give the TUN's addresses, e.g. {_TUN_ADDRESSES_EXAMPLE}"
        )


def _check_masque_client(config: ClientConfig) -> None:
    """MASQUE CONNECT-IP (RFC 9484) carries IP packets only, gets the TUN's addresses from the
    proxy (ADDRESS_ASSIGN) and has no stream mode (README "MASQUE CONNECT-IP")."""
    if config.payload is not Payload.IP:
        raise ConfigError(
            'mode "masque" carries IP packets only (RFC 9484): set payload = "ip" or use '
            'mode "tunnel" or "session"'
        )
    if config.stream.enabled:
        raise ConfigError(
            'stream mode is a transport parameter of the QUIC tunnel drafts, not of mode "masque":'
            ' set stream.enabled = false or use mode "tunnel"'
        )


def _check_client(config: ClientConfig, t: Table) -> None:
    _unique("access name {!r} is used twice: give each [[access]] its own", config.accesses)
    if config.mode is TunnelMode.MASQUE:
        _check_masque_client(config)
    elif config.payload is Payload.IP:
        _check_tun_addresses(config.tun)
    _check_congestion(config.limits, config.stream.enabled)
    if config.mode is TunnelMode.SESSION and not config.accesses:
        raise ConfigError(
            "mode is 'session' but no [[access]] table is given: add one per access network"
        )
    if config.mode is TunnelMode.SESSION:
        _check_session_access_ids(config.accesses)
    if config.qos is not None and config.mode is not TunnelMode.SESSION:
        raise ConfigError(
            "qos is sent in the New Session TLV of session mode, but mode is"
            f' {config.mode.value!r}: set mode = "session" or remove qos'
        )


def _check_session_access_ids(accesses: Sequence[AccessConfig]) -> None:
    """Session mode tells a client's connections apart by their Access ID: the concentrator
    closes an older connection of the session when a newer one announces the same access (a
    client whose WiFi connection died unnoticed comes back on WiFi), so two accesses of one
    ID would close each other's connection for ever, and the drafts have only two IDs."""
    seen: dict[AccessId, str] = {}
    for access in accesses:
        other = seen.setdefault(access.access_id, access.name)
        if other != access.name:
            raise ConfigError(
                f"accesses {other!r} and {access.name!r} both have access_id"
                f" {ACCESS_NAMES[access.access_id]!r}: in session mode each connection is known"
                " by its Access ID (a newer one replaces an older one of the same ID), so keep"
                ' one of them or use mode = "tunnel"'
            )


def _check_static_client(client: StaticClient, t: Table) -> None:
    if not client.addresses and not client.macs and not client.l2_server:
        raise ConfigError(
            f"{t.where('')}has neither addresses nor macs: give its inner prefixes, e.g. "
            'addresses = ["10.8.0.2/32"], or for an Ethernet client its MACs or l2_server = true'
        )


def _check_concentrator(config: ConcentratorConfig, t: Table) -> None:
    _unique("client name {!r} appears in two [[client]] tables: merge them", config.clients)
    _check_tun_addresses(config.tun)
    _check_congestion(config.limits, config.stream.enabled)
    has_addresses = any(c.addresses for c in config.clients)
    if (
        Payload.IP in config.payloads
        and config.pool.ipv4 is None
        and config.pool.ipv6 is None
        and not has_addresses
    ):
        raise ConfigError(
            "no client addresses are configured: add a [pool] (ipv4/ipv6 prefix) or [[client]] "
            "tables with static addresses"
        )
    _check_static_prefixes(config)
    values = [qos_value(mark.value) for mark in config.qos]
    for value in values:
        if values.count(value) > 1:
            raise ConfigError(
                f"QoS value {qos_label(value)!r} appears in two [[qos]] tables: keep one"
            )
    if Payload.ETHERNET in config.payloads and config.l2.bridge is None:
        raise ConfigError(
            'payloads has "ethernet" but l2.bridge is not set: name the Linux bridge the '
            'clients\' TAP devices join, e.g. [l2] bridge = "br0"'
        )
    if config.workers > 1:
        _check_workers(config)


def _check_static_prefixes(config: ConcentratorConfig) -> None:
    """The forwarding table (tunnel/policy/addresses.py) gives an address to the longest
    matching prefix, but the ingress filter lets each client send from all of its own: two
    clients' overlapping prefixes would let one send from addresses whose replies go to the
    other, and a prefix holding the concentrator's own TUN address would take its traffic. A
    [pool] may hold static prefixes (claims skip them) but not lie wholly inside one."""
    owned = sorted(
        ((prefix, client.name) for client in config.clients for prefix in client.addresses),
        key=lambda item: (item[0].version, item[0].network_address, item[0].prefixlen),
    )
    # CIDR prefixes nest or are disjoint: sorted by start, a prefix overlaps an earlier one iff
    # it starts within the widest earlier one of its family (the outermost that could hold it).
    widest: tuple[IPNetwork, str] | None = None
    for prefix, name in owned:
        if widest is not None and widest[0].version == prefix.version:
            outer, other = widest
            if int(prefix.network_address) <= int(outer.broadcast_address):
                if other != name:
                    raise ConfigError(
                        f"clients {other!r} and {name!r} have overlapping addresses ({outer} and"
                        f" {prefix}): give each [[client]] addresses of its own"
                    )
                continue  # one client's own prefixes may nest
        widest = (prefix, name)
    for interface in config.tun.addresses:
        for prefix, name in owned:
            if interface.ip in prefix:
                raise ConfigError(
                    f"client {name!r} has addresses {prefix}, which holds the concentrator's"
                    f" tun.addresses {interface.ip}: give the client a prefix without it or"
                    " change tun.addresses"
                )
    for key, pool in (("pool.ipv4", config.pool.ipv4), ("pool.ipv6", config.pool.ipv6)):
        for prefix, name in owned:
            if (
                pool is not None
                and pool.network_address in prefix
                and pool.prefixlen >= prefix.prefixlen
            ):
                raise ConfigError(
                    f"{key} = {str(pool)!r} lies wholly inside {prefix}, an address prefix of"
                    f" client {name!r}, so no pool address is ever free: give the pool a prefix"
                    " of its own or the client a narrower one"
                )


def _check_workers(config: ConcentratorConfig) -> None:
    """What several worker processes cannot share yet (README "Workers"): each would map the
    same ports, and one client's TAP lives in one process."""
    refuse = None
    if Payload.ETHERNET in config.payloads:
        refuse = 'payloads "ethernet"'
    elif config.stream.enabled and config.stream.inbound_ports:
        refuse = "stream.inbound_ports (each worker would map the same ports)"
    if refuse is not None:
        raise ConfigError(
            f"workers = {config.workers} cannot be combined with {refuse} yet: set workers = 1"
            " or drop it"
        )
    longest = worker_tun_name(config.tun.name, config.workers - 1)
    if len(longest.encode()) >= IFNAMSIZ:
        raise ConfigError(
            f"tun.name {config.tun.name!r} leaves no room for the workers' TUN names (the last is"
            f" {longest!r}, over {IFNAMSIZ - 1} bytes): give a shorter tun.name"
        )


def worker_tun_name(name: str, index: int) -> str:
    """Worker `index`'s TUN: the configured name for the first, then namew1, namew2, ..."""
    return name if index == 0 else f"{name}w{index}"


def _unique(message: str, entries: Sequence[AccessConfig | StaticClient]) -> None:
    names = [e.name for e in entries]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(message.format(name))


CHECKS: Mapping[type, Check] = {
    AccessConfig: _check_access,
    TunConfig: _check_tun,
    StreamClientConfig: _check_stream_client,
    StreamServerConfig: _check_stream_server,
    ConcentratorLimits: _check_concentrator_limits,
    PoolConfig: _check_pool,
    StaticClient: _check_static_client,
    ClientConfig: _check_client,
    ConcentratorConfig: _check_concentrator,
}


# --- parsing --------------------------------------------------------------------------------------


def parse_client_config(
    text: str, *, base_dir: Path = Path("."), overrides: Sequence[str] = (), source: str = "config"
) -> ClientConfig:
    """The client configuration in `text` (TOML) with `overrides` applied."""
    table = Table(load_toml(text, source, overrides), "", base_dir)
    return read_table(ClientConfig, table, checks=CHECKS)


def parse_concentrator_config(
    text: str, *, base_dir: Path = Path("."), overrides: Sequence[str] = (), source: str = "config"
) -> ConcentratorConfig:
    """The concentrator configuration in `text` (TOML) with `overrides` applied."""
    table = Table(load_toml(text, source, overrides), "", base_dir)
    return read_table(ConcentratorConfig, table, checks=CHECKS)
