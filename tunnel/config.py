"""Typed configuration of `qtun client` and `qtun concentrator`, parsed from TOML text.

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

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import Any, TypeVar

from tunnel.session.scheduler import SCHEDULER_NAMES
from tunnel.user_error import UsageError
from tunnel.wire.messages import AccessId
from tunnel.wire.modes import TunnelMode

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network

DEFAULT_PORT = 4433
IFNAMSIZ = 16
LOCALHOST = IPv4Address("127.0.0.1")
E = TypeVar("E", bound=Enum)
N = TypeVar("N", IPv4Network, IPv6Network)
# Names accepted for an access's kind, mapped to the Access ID it reports (tunnel draft §Access
# Report TLV).
ACCESS_KINDS: Mapping[str, AccessId] = {
    "5g": AccessId.THREE_GPP,
    "3gpp": AccessId.THREE_GPP,
    "wifi": AccessId.NON_THREE_GPP,
    "non-3gpp": AccessId.NON_THREE_GPP,
}


class ConfigError(UsageError):
    """A configuration value is wrong; str(error) is one sentence saying what to do."""


# Congestion controllers aioquic 1.7 offers for the outer QUIC connection (DATAGRAM frames are
# congestion controlled too, RFC 9221 §5.4): Reno is aioquic's default; CUBIC grows faster again
# after a loss on paths with a large bandwidth-delay product.
CONGESTION_CONTROLS = ("reno", "cubic")
STREAM_BUFFER_DEFAULT = 1024 * 1024  # stream mode window and send buffer (see StreamClientConfig)


@dataclass(frozen=True)
class AccessConfig:
    """One access network the client uses: its UDP socket binds to `local_address` and/or
    `interface`; `access_id` is the Access ID reported for it."""

    name: str
    access_id: AccessId
    interface: str | None = None
    local_address: IPAddress | None = None


@dataclass(frozen=True)
class TunConfig:
    name: str
    mtu: int | None  # None: derived from the QUIC datagram budget at run time
    addresses: tuple[IPInterface, ...]
    routes: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS: `ca` verifies the peer, `cert`/`key` identify this side."""

    ca: Path
    cert: Path
    key: Path
    # concentrator only: the client CA's certificate revocation list (PEM or DER), re-read when
    # the file changes and on SIGHUP (tunnel/policy/client_auth.py RevocationList)
    crl: Path | None = None


@dataclass(frozen=True)
class ObservabilityConfig:
    qlog_dir: Path | None = None
    keylog_file: Path | None = None
    status_file: Path | None = None
    status_interval: float = 1.0  # seconds between status file rewrites


@dataclass(frozen=True)
class ClientLimits:
    max_datagram_queue: int = 256  # tunnel datagrams waiting in aioquic before we drop
    reconnect_backoff_max: float = 30.0  # seconds, cap of the exponential reconnect backoff
    idle_timeout: float = 30.0  # seconds, QUIC idle timeout
    probe_interval: float = 1.0  # seconds between liveness probes per access
    reorder_timeout: float | None = None  # seconds; None: from the paths' RTT spread
    congestion_control: str = "reno"  # the outer QUIC connection's (aioquic: reno | cubic)


@dataclass(frozen=True)
class StreamClientConfig:
    """Stream mode on the client (-tcp draft): which TCP connections go into QUIC streams."""

    enabled: bool = False
    # destinations whose TCP connections are intercepted (nftables redirect to listen_port)
    intercept: tuple[IPNetwork, ...] = ()
    listen_port: int = 4480  # transparent listener, on 127.0.0.1 and ::1
    socks_port: int | None = None  # optional SOCKS5 (CONNECT only) front on socks_address
    socks_address: IPAddress = LOCALHOST
    # 1 MiB each: one stream then fills a 100 Mbit/s path up to ~80 ms of RTT; 256 KiB held a
    # 5G-profile link (20 ms + queueing) to 57 of 94 Mbit/s (make bench). Memory per
    # connection and side is about window + send_buffer.
    window: int = STREAM_BUFFER_DEFAULT  # QUIC receive window per stream (bytes), quic_ext.py
    send_buffer: int = STREAM_BUFFER_DEFAULT  # unacknowledged bytes per stream before reads pause


@dataclass(frozen=True)
class StreamServerConfig:
    """Stream mode on the concentrator: which destinations it connects to, and its limits."""

    enabled: bool = False
    # Destinations (tunnel/policy/stream_policy.py): denied on top of `deny` are loopback,
    # multicast, the concentrator's own addresses and the special-purpose ranges of SPECIAL_PURPOSE
    # (link-local and cloud metadata, documentation, NAT64, ...); a special-purpose range is
    # reached only if `allow` lists it or a part of it (the default allow-all does not count).
    allow: tuple[IPNetwork, ...] = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))
    deny: tuple[IPNetwork, ...] = ()
    # True lets clients reach services on the concentrator host itself (a lab whose server runs
    # there, e.g. `make bench` on the two-host topology); off by default (tcp draft §7).
    allow_own_addresses: bool = False
    max_streams: int = 256  # concurrent streams per connection (initial_max_streams_bidi)
    # Per client, across all its connections (tcp draft §7.1): TCP Connects being tried at once,
    # and the bytes its streams may buffer, each stream counting window + send_buffer (bytes;
    # 512 MiB = 256 streams at the 1 MiB defaults, one connection's max_streams). Beyond either,
    # a TCP Connect is refused.
    max_pending_connects: int = 32
    max_client_buffer: int = 512 * 1024 * 1024
    connect_timeout: float = 5.0  # seconds
    window: int = STREAM_BUFFER_DEFAULT
    send_buffer: int = STREAM_BUFFER_DEFAULT


@dataclass(frozen=True)
class ClientConfig:
    name: str
    mode: TunnelMode
    concentrator_address: IPAddress
    concentrator_port: int
    server_name: str
    accesses: tuple[AccessConfig, ...]
    scheduler: str
    tun: TunConfig
    tls: TlsConfig
    limits: ClientLimits = field(default_factory=ClientLimits)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    # False: never send Access Reports (tunnel draft §6); the client still stops using a failed
    # access itself. The failover experiment's "without Access Reports" variant.
    access_reports: bool = True
    # Tunnel mode: when a more preferred access (earlier in [[access]]) becomes usable again,
    # migrate the connection back to it. False: stay on the access it failed over to.
    failback: bool = True
    stream: StreamClientConfig = field(default_factory=StreamClientConfig)


@dataclass(frozen=True)
class StaticClient:
    name: str  # the CN of the client's certificate
    addresses: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class PoolConfig:
    ipv4: IPv4Network | None = None
    ipv6: IPv6Network | None = None
    # client names (shell patterns: "student-*", "*") the pool serves besides [[client]] ones:
    # admission is explicit, a certificate of the CA alone is not enough (README "Security")
    admit: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConcentratorLimits:
    max_clients: int = 64
    max_connections_per_client: int = 4
    max_datagram_queue: int = 256
    rate_limit_mbps: float | None = None  # per client; None: unlimited
    session_idle_expiry: float = 30.0  # seconds a memberless session is kept for a rejoin
    idle_timeout: float = 30.0
    reorder_timeout: float | None = None
    congestion_control: str = "reno"
    max_sessions: int | None = None  # tunneling sessions at once; None: max_clients
    # Access Reports acted on per client and second (burst: twice as many); beyond, ignored and
    # counted: each one may switch paths, log and rewrite the status (README "Security")
    access_reports_per_second: float = 20.0
    # the UDP edge against network attackers (tunnel/policy/address_validation.py, README
    # "Security")
    retry: str = "auto"  # QUIC Retry (RFC 9000 §8.1.2): always | auto | never
    retry_threshold: int | None = None  # half-open handshakes from which "auto" retries
    max_half_open: int = 64  # handshakes in progress at once
    handshake_timeout: float = 10.0  # seconds before an unfinished handshake is dropped
    resets_per_second: float = 100.0  # stateless resets in total
    resets_per_prefix_per_second: float = 10.0  # ... to one /24 (IPv4) or /56 (IPv6)


# What packets of tunnel/session-mode clients may reach on the concentrator host itself (its own
# addresses): "deny" nothing, "ping" ICMP/ICMPv6 echo requests only (the default: a client can
# check its tunnel, but not reach the host's services), "allow" everything.
TO_CONCENTRATOR_POLICIES = ("deny", "ping", "allow")
RETRY_POLICIES = ("always", "auto", "never")


@dataclass(frozen=True)
class ConcentratorConfig:
    modes: tuple[TunnelMode, ...]
    listen_addresses: tuple[IPAddress, ...]
    port: int
    tun: TunConfig
    tls: TlsConfig
    pool: PoolConfig
    clients: tuple[StaticClient, ...]
    scheduler: str
    limits: ConcentratorLimits = field(default_factory=ConcentratorLimits)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    stream: StreamServerConfig = field(default_factory=StreamServerConfig)
    # Masquerade (nftables) client packets that leave through another interface than the TUN,
    # except towards `nat_exclude` (networks that route the client prefixes back themselves).
    nat: bool = False
    nat_exclude: tuple[IPNetwork, ...] = ()
    to_concentrator: str = "ping"


# --- parsing -----------------------------------------------------------------------------------


def parse_client_config(
    text: str, *, base_dir: Path = Path("."), overrides: Sequence[str] = (), source: str = "config"
) -> ClientConfig:
    """The client configuration in `text` (TOML) with `overrides` applied."""
    table = _Table(_load(text, source, overrides), "", base_dir)
    mode = table.enum("mode", TunnelMode, TunnelMode.TUNNEL)
    conc = table.table("concentrator", required=True)
    address = conc.address("address", required=True)
    assert address is not None
    accesses = tuple(_access(t) for t in table.table_list("access"))
    names = [a.name for a in accesses]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"access name {name!r} is used twice: give each [[access]] its own")
    # Tunnel mode with several [[access]]: the first available one carries the one connection,
    # the others are targets for QUIC connection migration (RFC 9000 §9) when it fails.
    if mode is TunnelMode.SESSION and not accesses:
        raise ConfigError(
            "mode is 'session' but no [[access]] table is given: add one per access network"
        )
    config = ClientConfig(
        name=table.string("name", "client"),
        mode=mode,
        concentrator_address=address,
        concentrator_port=conc.integer("port", DEFAULT_PORT, 1, 65535),
        server_name=conc.string("server_name", "concentrator"),
        accesses=accesses,
        scheduler=table.choice("scheduler", SCHEDULER_NAMES, "failover"),
        tun=_tun(table.table("tun", required=True), default_name="qtun0"),
        tls=_tls(table.table("tls", required=True)),
        limits=_client_limits(table.table("limits")),
        observability=_observability(table.table("observability")),
        access_reports=_boolean(table, "access_reports", True),
        failback=_boolean(table, "failback", True),
        stream=_stream_client(table.table("stream")),
    )
    conc.done()
    table.done()
    return config


def parse_concentrator_config(
    text: str, *, base_dir: Path = Path("."), overrides: Sequence[str] = (), source: str = "config"
) -> ConcentratorConfig:
    """The concentrator configuration in `text` (TOML) with `overrides` applied."""
    table = _Table(_load(text, source, overrides), "", base_dir)
    modes = tuple(table.enum_list("modes", TunnelMode, [TunnelMode.TUNNEL, TunnelMode.SESSION]))
    listen = table.table("listen")
    listen_addresses = tuple(listen.address_list("addresses", ["0.0.0.0"]))
    port = listen.integer("port", DEFAULT_PORT, 1, 65535)
    listen.done()
    pool_table = table.table("pool")
    pool = PoolConfig(
        ipv4=_family(pool_table.network("ipv4"), IPv4Network, "pool.ipv4"),
        ipv6=_family(pool_table.network("ipv6"), IPv6Network, "pool.ipv6"),
        admit=tuple(pool_table.string_list("admit")),
    )
    pool_table.done()
    if (pool.ipv4 is not None or pool.ipv6 is not None) and not pool.admit:
        raise ConfigError(
            "[pool] has no admit list: name the clients it serves, e.g. admit = "
            '["student-*"] (shell patterns; ["*"] admits every certificate of the client CA)'
        )
    clients = tuple(_static_client(t) for t in table.table_list("client"))
    names = [c.name for c in clients]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"client name {name!r} appears in two [[client]] tables: merge them")
    if pool.ipv4 is None and pool.ipv6 is None and not clients:
        raise ConfigError(
            "no client addresses are configured: add a [pool] (ipv4/ipv6 prefix) or [[client]] "
            "tables with static addresses"
        )
    config = ConcentratorConfig(
        modes=modes,
        listen_addresses=listen_addresses,
        port=port,
        tun=_tun(table.table("tun", required=True), default_name="qtunc0"),
        tls=_tls(table.table("tls", required=True), crl_allowed=True),
        pool=pool,
        clients=clients,
        scheduler=table.choice("scheduler", SCHEDULER_NAMES, "failover"),
        limits=_concentrator_limits(table.table("limits")),
        observability=_observability(table.table("observability")),
        stream=_stream_server(table.table("stream")),
        nat=_boolean(table, "nat", False),
        nat_exclude=tuple(table.network_list("nat_exclude")),
        to_concentrator=table.choice("to_concentrator", TO_CONCENTRATOR_POLICIES, "ping"),
    )
    table.done()
    return config


def _access(t: _Table) -> AccessConfig:
    name = t.string("name", None)
    kind = t.choice("access_id", tuple(ACCESS_KINDS), None)
    interface = t.interface_name("interface")
    local = t.address("local_address")
    if interface is None and local is None:
        raise ConfigError(
            f"{t.where('')}has neither interface nor local_address: give at least one so the "
            "socket is bound to that access network"
        )
    t.done()
    return AccessConfig(
        name=name, access_id=ACCESS_KINDS[kind], interface=interface, local_address=local
    )


def _tun(t: _Table, default_name: str) -> TunConfig:
    name = t.interface_name("name") or default_name
    mtu_value = t.raw("mtu", "auto")
    mtu: int | None
    if mtu_value == "auto":
        mtu = None
    else:
        mtu = t.integer("mtu", 0, 576, 65535, value=mtu_value, hint='or "auto"')
    addresses = tuple(t.interface_list("addresses"))
    if not addresses:
        raise ConfigError(
            f"{t.where('addresses')} is empty: give the TUN's addresses, e.g. "
            '["10.8.0.2/32", "fd00:8::2/128"]'
        )
    if mtu is not None and mtu < 1280 and any(isinstance(a, IPv6Interface) for a in addresses):
        raise ConfigError(
            f"{t.where('mtu')} is {mtu}, below IPv6's minimum 1280 while an IPv6 address is "
            'configured: raise it or use "auto"'
        )
    routes = tuple(t.network_list("routes"))
    t.done()
    return TunConfig(name=name, mtu=mtu, addresses=addresses, routes=routes)


def _tls(t: _Table, *, crl_allowed: bool = False) -> TlsConfig:
    config = TlsConfig(
        ca=t.required_path("ca"),
        cert=t.required_path("cert"),
        key=t.required_path("key"),
        crl=t.path("crl") if crl_allowed else None,
    )
    t.done()
    return config


def _observability(t: _Table) -> ObservabilityConfig:
    config = ObservabilityConfig(
        qlog_dir=t.path("qlog_dir"),
        keylog_file=t.path("keylog_file"),
        status_file=t.path("status_file"),
        status_interval=t.number("status_interval", 1.0, 0.05, 3600.0),
    )
    t.done()
    return config


def _client_limits(t: _Table) -> ClientLimits:
    config = ClientLimits(
        max_datagram_queue=t.integer("max_datagram_queue", 256, 1, 65536),
        reconnect_backoff_max=t.number("reconnect_backoff_max", 30.0, 0.1, 3600.0),
        idle_timeout=t.number("idle_timeout", 30.0, 1.0, 3600.0),
        probe_interval=t.number("probe_interval", 1.0, 0.01, 60.0),
        reorder_timeout=t.optional_number("reorder_timeout", 0.0, 10.0),
        congestion_control=t.choice("congestion_control", CONGESTION_CONTROLS, "reno"),
    )
    t.done()
    return config


def _concentrator_limits(t: _Table) -> ConcentratorLimits:
    config = ConcentratorLimits(
        max_clients=t.integer("max_clients", 64, 1, 1_000_000),
        max_connections_per_client=t.integer("max_connections_per_client", 4, 1, 64),
        max_datagram_queue=t.integer("max_datagram_queue", 256, 1, 65536),
        rate_limit_mbps=t.optional_number("rate_limit_mbps", 0.001, 1_000_000.0),
        session_idle_expiry=t.number("session_idle_expiry", 30.0, 0.0, 86400.0),
        idle_timeout=t.number("idle_timeout", 30.0, 1.0, 3600.0),
        reorder_timeout=t.optional_number("reorder_timeout", 0.0, 10.0),
        congestion_control=t.choice("congestion_control", CONGESTION_CONTROLS, "reno"),
        max_sessions=t.optional_integer("max_sessions", 1, 1_000_000),
        access_reports_per_second=t.number("access_reports_per_second", 20.0, 0.1, 100_000.0),
        retry=t.choice("retry", RETRY_POLICIES, "auto"),
        retry_threshold=t.optional_integer("retry_threshold", 0, 1_000_000),
        max_half_open=t.integer("max_half_open", 64, 1, 1_000_000),
        handshake_timeout=t.number("handshake_timeout", 10.0, 0.1, 600.0),
        resets_per_second=t.number("resets_per_second", 100.0, 0.1, 1_000_000.0),
        resets_per_prefix_per_second=t.number(
            "resets_per_prefix_per_second", 10.0, 0.1, 1_000_000.0
        ),
    )
    if config.retry_threshold is not None and config.retry_threshold > config.max_half_open:
        raise ConfigError(
            f"limits.retry_threshold = {config.retry_threshold} is above limits.max_half_open = "
            f"{config.max_half_open}: give a threshold between 0 and max_half_open"
        )
    t.done()
    return config


def _static_client(t: _Table) -> StaticClient:
    name = t.string("name", None)
    addresses = tuple(t.network_list("addresses"))
    if not addresses:
        raise ConfigError(
            f"{t.where('addresses')} is empty: give the client's prefixes, e.g. "
            '["10.8.0.2/32", "fd00:8::2/128"]'
        )
    t.done()
    return StaticClient(name=name, addresses=addresses)


def _stream_client(t: _Table) -> StreamClientConfig:
    socks_port = t.raw("socks_port", None)
    config = StreamClientConfig(
        enabled=_boolean(t, "enabled", False),
        intercept=tuple(t.network_list("intercept")),
        listen_port=t.integer("listen_port", 4480, 1, 65535),
        socks_port=None if socks_port is None else t.integer("socks_port", 0, 1, 65535),
        socks_address=t.address("socks_address") or LOCALHOST,
        window=t.integer("window", STREAM_BUFFER_DEFAULT, 16 * 1024, 64 * 1024 * 1024),
        send_buffer=t.integer("send_buffer", STREAM_BUFFER_DEFAULT, 16 * 1024, 64 * 1024 * 1024),
    )
    if config.enabled and not config.intercept and config.socks_port is None:
        raise ConfigError(
            "stream.enabled is true but neither stream.intercept nor stream.socks_port is set: "
            'give the prefixes to intercept (e.g. ["10.200.0.0/16"]) or a SOCKS5 port'
        )
    t.done()
    return config


def _stream_server(t: _Table) -> StreamServerConfig:
    allow_given = t.raw("allow", None) is not None
    config = StreamServerConfig(
        enabled=_boolean(t, "enabled", False),
        allow=tuple(t.network_list("allow")) if allow_given else StreamServerConfig.allow,
        deny=tuple(t.network_list("deny")),
        allow_own_addresses=_boolean(t, "allow_own_addresses", False),
        max_streams=t.integer("max_streams", 256, 1, 1_000_000),
        max_pending_connects=t.integer("max_pending_connects", 32, 1, 100_000),
        max_client_buffer=t.integer(
            "max_client_buffer", StreamServerConfig.max_client_buffer, 32 * 1024, 1 << 40
        ),
        connect_timeout=t.number("connect_timeout", 5.0, 0.1, 600.0),
        window=t.integer("window", STREAM_BUFFER_DEFAULT, 16 * 1024, 64 * 1024 * 1024),
        send_buffer=t.integer("send_buffer", STREAM_BUFFER_DEFAULT, 16 * 1024, 64 * 1024 * 1024),
    )
    per_stream = config.window + config.send_buffer
    if config.max_client_buffer < per_stream:
        raise ConfigError(
            f"{t.where('max_client_buffer')} = {config.max_client_buffer} holds not one stream "
            f"of window + send_buffer = {per_stream} bytes: raise it or lower those two"
        )
    t.done()
    return config


def _boolean(t: _Table, key: str, default: bool) -> bool:
    value = t.raw(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{t.where(key)} = {value!r} is not true or false: give true or false")
    return value


def _family(value: IPNetwork | None, kind: type[N], key: str) -> N | None:
    if value is None or isinstance(value, kind):
        return value
    family = "IPv4" if kind is IPv4Network else "IPv6"
    raise ConfigError(f"{key} = {str(value)!r} is not an {family} prefix: give an {family} one")


# --- TOML loading and overrides ----------------------------------------------------------------


def _load(text: str, source: str, overrides: Sequence[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML ({exc}): fix the syntax there") from None
    for item in overrides:
        apply_override(data, item)
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one "dotted.key=value" override in the parsed TOML `data` (in place)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {item!r} is not key=value: write it like concentrator.port=4433"
        )
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {key!r}: {where} needs an index below {len(node)}: use e.g. "
                    f"{'.'.join(parts[:i])}.0"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(
                f"override {key!r}: {'.'.join(parts[:i])} is a value, not a table: shorten the key"
            )


class _Table:
    """A TOML table being read: typed getters that raise ConfigError naming the full key, and
    `done()` which rejects keys nobody asked for (typos)."""

    def __init__(self, data: Mapping[str, Any], prefix: str, base_dir: Path) -> None:
        self._data = data
        self._prefix = prefix
        self._base_dir = base_dir
        self._seen: set[str] = set()

    def where(self, key: str) -> str:
        if not key:
            return f"[{self._prefix}] " if self._prefix else ""
        return f"{self._prefix}.{key}" if self._prefix else key

    def raw(self, key: str, default: Any) -> Any:
        self._seen.add(key)
        return self._data.get(key, default)

    def _missing(self, key: str) -> ConfigError:
        return ConfigError(f"{self.where(key)} is missing: add it to the configuration")

    def _wrong(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.where(key)} = {value!r} is not {expected}: give {expected}")

    def table(self, key: str, *, required: bool = False) -> _Table:
        value = self.raw(key, None)
        if value is None:
            if required:
                raise ConfigError(f"[{self.where(key)}] is missing: add that table")
            value = {}
        if not isinstance(value, dict):
            raise self._wrong(key, value, "a table")
        return _Table(value, self.where(key), self._base_dir)

    def table_list(self, key: str) -> list[_Table]:
        value = self.raw(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._wrong(key, value, f"a list of tables ([[{key}]])")
        return [_Table(v, f"{self.where(key)}.{i}", self._base_dir) for i, v in enumerate(value)]

    def string(self, key: str, default: str | None) -> str:
        value = self.raw(key, default)
        if value is None:
            raise self._missing(key)
        if not isinstance(value, str) or not value.strip():
            raise self._wrong(key, value, "a non-empty string")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str | None) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise ConfigError(
                f"{self.where(key)} = {value!r} is not one of {', '.join(choices)}: "
                "pick one of them"
            )
        return value

    def enum(self, key: str, kind: type[E], default: E) -> E:
        value = self.choice(key, [m.value for m in kind], default.value)
        return kind(value)

    def enum_list(self, key: str, kind: type[E], default: list[E]) -> list[E]:
        value = self.raw(key, [m.value for m in default])
        allowed = [m.value for m in kind]
        if (
            not isinstance(value, list)
            or not value
            or any(v not in allowed for v in value)
            or len(set(value)) != len(value)
        ):
            raise ConfigError(
                f"{self.where(key)} = {value!r} is not a non-empty list of distinct values from "
                f"{', '.join(allowed)}: give e.g. {allowed!r}"
            )
        return [kind(v) for v in value]

    def integer(
        self, key: str, default: int, low: int, high: int, *, value: Any = None, hint: str = ""
    ) -> int:
        if value is None:
            value = self.raw(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            extra = f" {hint}" if hint else ""
            raise self._wrong(key, value, f"an integer from {low} to {high}{extra}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.raw(key, default)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            raise self._wrong(key, value, f"a number from {low:g} to {high:g}")
        return float(value)

    def optional_integer(self, key: str, low: int, high: int) -> int | None:
        if self._data.get(key) is None:
            self._seen.add(key)
            return None
        return self.integer(key, low, low, high)

    def string_list(self, key: str) -> list[str]:
        value = self.raw(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._wrong(key, value, "a list of non-empty strings")
        return list(value)

    def optional_number(self, key: str, low: float, high: float) -> float | None:
        if self._data.get(key) is None:
            self._seen.add(key)
            return None
        return self.number(key, low, low, high)

    def path(self, key: str, *, required: bool = False) -> Path | None:
        value = self.raw(key, None)
        if value is None or value == "":
            if required:
                raise self._missing(key)
            return None
        if not isinstance(value, str):
            raise self._wrong(key, value, "a file path string")
        path = Path(value).expanduser()
        return path if path.is_absolute() else self._base_dir / path

    def required_path(self, key: str) -> Path:
        path = self.path(key, required=True)
        assert path is not None
        return path

    def interface_name(self, key: str) -> str | None:
        value = self.raw(key, None)
        if value is None:
            return None
        if (
            not isinstance(value, str)
            or not value
            or len(value.encode()) >= IFNAMSIZ
            or "/" in value
            or any(c.isspace() for c in value)
        ):
            raise self._wrong(
                key, value, f"an interface name of 1 to {IFNAMSIZ - 1} characters without '/'"
            )
        return value

    def address(self, key: str, *, required: bool = False) -> IPAddress | None:
        value = self.raw(key, None)
        if value is None:
            if required:
                raise self._missing(key)
            return None
        try:
            return ip_address(value) if isinstance(value, str) else _bad()
        except ValueError:
            raise self._wrong(key, value, "an IP address (e.g. 192.0.2.1 or 2001:db8::1)") from None

    def address_list(self, key: str, default: list[str]) -> list[IPAddress]:
        value = self.raw(key, default)
        try:
            if not isinstance(value, list) or not value:
                _bad()
            return [ip_address(v) if isinstance(v, str) else _bad() for v in value]
        except ValueError:
            raise self._wrong(
                key, value, 'a non-empty list of IP addresses (e.g. ["0.0.0.0"])'
            ) from None

    def network(self, key: str) -> IPNetwork | None:
        value = self.raw(key, None)
        if value is None:
            return None
        try:
            return ip_network(value) if isinstance(value, str) else _bad()
        except ValueError:
            raise self._wrong(
                key, value, "an IP prefix with zero host bits (e.g. 10.8.0.0/24)"
            ) from None

    def network_list(self, key: str) -> list[IPNetwork]:
        value = self.raw(key, [])
        try:
            if not isinstance(value, list):
                _bad()
            return [ip_network(v) if isinstance(v, str) else _bad() for v in value]
        except ValueError:
            raise self._wrong(
                key, value, 'a list of IP prefixes with zero host bits (e.g. ["10.9.0.0/16"])'
            ) from None

    def interface_list(self, key: str) -> list[IPInterface]:
        value = self.raw(key, [])
        try:
            if not isinstance(value, list) or any(
                isinstance(v, str) and "/" not in v for v in value
            ):
                _bad()
            return [ip_interface(v) if isinstance(v, str) else _bad() for v in value]
        except ValueError:
            raise self._wrong(
                key, value, 'a list of addresses with prefix length (e.g. ["10.8.0.2/24"])'
            ) from None

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen))
            raise ConfigError(
                f"{self.where(unknown[0])} is not a known key: check its spelling (known here: "
                f"{known})"
            )


def _bad() -> Any:
    raise ValueError("wrong type")
