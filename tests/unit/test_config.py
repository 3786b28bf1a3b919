"""tunnel.config: the example files parse, overrides apply, and every bad value gets one clear
sentence naming its key."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_interface, ip_network
from pathlib import Path

import pytest

from tunnel.aio.config_file import load_client_config, load_concentrator_config
from tunnel.config import ConfigError, Payload, parse_client_config, parse_concentrator_config
from tunnel.wire.modes import TunnelMode

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CLIENT = """
mode = "session"
[concentrator]
address = "10.0.0.1"
[[access]]
name = "wifi"
access_id = "wifi"
interface = "eth0"
[[access]]
name = "5g"
access_id = "5g"
local_address = "fd00:2::2"
[tun]
addresses = ["10.8.0.2/32", "fd00:8::2/128"]
[tls]
ca = "ca.pem"
cert = "c.pem"
key = "c.key"
"""

CONCENTRATOR = """
[tun]
addresses = ["10.8.0.1/24"]
[tls]
ca = "ca.pem"
cert = "s.pem"
key = "s.key"
[pool]
ipv4 = "10.8.0.0/24"
admit = ["*"]
"""


def client(*overrides: str, text: str = CLIENT) -> object:
    return parse_client_config(text, base_dir=Path("/etc/qtun"), overrides=overrides)


def concentrator(*overrides: str, text: str = CONCENTRATOR) -> object:
    return parse_concentrator_config(text, base_dir=Path("/etc/qtun"), overrides=overrides)


def test_minimal_client_defaults_and_paths() -> None:
    config = parse_client_config(CLIENT, base_dir=Path("/etc/qtun"))
    assert config.mode is TunnelMode.SESSION
    assert config.concentrator_address == IPv4Address("10.0.0.1")
    assert config.concentrator_port == 4433 and config.server_name == "concentrator"
    assert [(a.name, a.access_id) for a in config.accesses] == [("wifi", 2), ("5g", 1)]
    assert config.accesses[1].local_address == IPv6Address("fd00:2::2")
    assert config.tun.name == "qtun0" and config.tun.mtu is None
    assert config.tls.ca == Path("/etc/qtun/ca.pem")
    assert config.scheduler == "failover"
    assert config.limits.max_datagram_queue == 256
    assert config.observability.status_file is None


def test_overrides_cover_scalars_lists_and_indexes() -> None:
    config = parse_client_config(
        CLIENT,
        base_dir=Path("/etc/qtun"),
        overrides=[
            "concentrator.port=5000",
            "concentrator.address=fd00::1",
            "access.1.interface=wwan0",
            'tun.routes=["0.0.0.0/0", "::/0"]',
            "tun.mtu=1400",
            "tls.key=/abs/key.pem",
            "observability.qlog_dir=qlog",
            "limits.reorder_timeout=0.02",
            "scheduler=lowest-rtt",
        ],
    )
    assert config.concentrator_port == 5000
    assert config.concentrator_address == IPv6Address("fd00::1")
    assert config.accesses[1].interface == "wwan0"
    assert config.tun.routes == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert config.tun.mtu == 1400
    assert config.tls.key == Path("/abs/key.pem")
    assert config.observability.qlog_dir == Path("/etc/qtun/qlog")
    assert config.limits.reorder_timeout == 0.02
    assert config.scheduler == "lowest-rtt"


def test_minimal_concentrator_defaults() -> None:
    config = parse_concentrator_config(CONCENTRATOR)
    assert config.modes == (TunnelMode.TUNNEL, TunnelMode.SESSION)
    assert config.listen_addresses == (IPv4Address("0.0.0.0"),)
    assert config.port == 4433 and config.tun.name == "qtunc0"
    assert config.pool.ipv4 == ip_network("10.8.0.0/24") and config.pool.ipv6 is None
    assert config.limits.rate_limit_mbps is None and config.clients == ()


def test_concentrator_static_clients_and_v6_pool() -> None:
    config = parse_concentrator_config(
        CONCENTRATOR + '[[client]]\nname = "alice"\naddresses = ["10.8.0.2/32", "fd00:8::2/128"]\n',
        overrides=["pool.ipv6=fd00:8::/64", 'listen.addresses=["::", "0.0.0.0"]'],
    )
    assert config.clients[0].name == "alice"
    assert config.clients[0].addresses[1] == IPv6Network("fd00:8::2/128")
    assert config.pool.ipv6 == IPv6Network("fd00:8::/64")
    assert len(config.listen_addresses) == 2


@pytest.mark.parametrize("name", ["client-tunnel", "client-session"])
def test_example_client_files_parse(name: str) -> None:
    text = (EXAMPLES / f"{name}.toml").read_text()
    config = parse_client_config(text, base_dir=EXAMPLES)
    assert config.mode is (TunnelMode.TUNNEL if name == "client-tunnel" else TunnelMode.SESSION)
    assert ip_interface("10.8.0.2/32") in config.tun.addresses


def test_example_concentrator_file_parses() -> None:
    config = parse_concentrator_config((EXAMPLES / "concentrator.toml").read_text())
    assert config.clients[0].name == "alice"


CLIENT_ERRORS = [
    (("mode=bridge",), "mode = 'bridge' is not one of tunnel, session"),
    (("concentrator.address=example.org",), "concentrator.address = 'example.org' is not an IP"),
    (("concentrator.address=5",), "concentrator.address = 5 is not an IP"),
    (("concentrator.port=0",), "concentrator.port = 0 is not an integer from 1 to 65535"),
    (("concentrator.port=true",), "concentrator.port = True is not an integer"),
    (("concentrator.server_name=",), "concentrator.server_name = '' is not a non-empty string"),
    (("concentrator.colour=red",), "concentrator.colour is not a known key"),
    (("colour=red",), "colour is not a known key"),
    (("concentrator=5",), "concentrator = 5 is not a table"),
    (("access=5",), "access = 5 is not a list of tables"),
    (("access.0.access_id=wlan",), "access.0.access_id = 'wlan' is not one of 5g, 3gpp, wifi"),
    (("access.0.interface=averyveryverylongname",), "access.0.interface = 'averyvery"),
    (("access.0.interface=a/b",), "is not an interface name"),
    (("access.1.local_address=fd00::zz",), "access.1.local_address = 'fd00::zz' is not an IP"),
    (("access.1.name=wifi",), "access name 'wifi' is used twice"),
    (("access.1.access_id=wifi",), "accesses 'wifi' and '5g' both have access_id 'wifi'"),
    (("access.0.speed=1",), "access.0.speed is not a known key"),
    (("access=[]",), "mode is 'session' but no [[access]] table is given"),
    (("scheduler=random",), "scheduler = 'random' is not one of failover, wrr"),
    (("tun.mtu=100",), 'tun.mtu = 100 is not an integer from 576 to 65535 or "auto"'),
    (("tun.mtu=big",), "tun.mtu = 'big' is not an integer"),
    (("tun.mtu=1000",), "below IPv6's minimum 1280"),
    (("tun.name=x/y",), "tun.name = 'x/y' is not an interface name"),
    (("tun.addresses=[]",), "tun.addresses is empty"),
    (('tun.addresses=["10.8.0.2"]',), "tun.addresses = ['10.8.0.2'] is not a list of addresses"),
    (('tun.addresses=["10.8.0.300/32"]',), "is not a list of addresses with prefix length"),
    (('tun.routes=["10.9.0.1/16"]',), "tun.routes = ['10.9.0.1/16'] is not a list of IP prefixes"),
    (("tun.routes=10.0.0.0/8",), "tun.routes = '10.0.0.0/8' is not a list of IP prefixes"),
    (("tls.ca=",), "tls.ca is missing"),
    (("tls.cert=3",), "tls.cert = 3 is not a file path string"),
    (("limits.max_datagram_queue=0",), "limits.max_datagram_queue = 0 is not an integer from 1"),
    (("limits.idle_timeout=0.5",), "limits.idle_timeout = 0.5 is not a number from 1 to 3600"),
    (("limits.idle_timeout=soon",), "limits.idle_timeout = 'soon' is not a number"),
    (("limits.reorder_timeout=-1",), "limits.reorder_timeout = -1 is not a number from 0 to 10"),
    (("observability.status_interval=0",), "observability.status_interval = 0 is not a number"),
    (("noequals",), "override 'noequals' is not key=value"),
    (("=5",), "override '=5' is not key=value"),
    (("access.7.name=x",), "access.7 needs an index below 2"),
    (("access.x.name=x",), "access.x needs an index below 2"),
    (("mode.sub=x",), "mode is a value, not a table"),
]


@pytest.mark.parametrize(("overrides", "message"), CLIENT_ERRORS)
def test_client_errors(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        client(*overrides)
    text = str(info.value)
    assert message in text
    assert ":" in text and "\n" not in text  # one sentence: what is wrong, then what to do


def _without(text: str, line: str) -> str:
    assert line in text
    return text.replace(line + "\n", "", 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mode = ", "is not valid TOML"),
        (_without(CLIENT, 'address = "10.0.0.1"'), "concentrator.address is missing"),
        (CLIENT.split("[concentrator]")[0], "[concentrator] is missing"),
        (CLIENT.split("[tun]")[0] + "[tls]" + CLIENT.split("[tls]")[1], "[tun] is missing"),
        (CLIENT.split("[tls]")[0], "[tls] is missing"),
        (_without(CLIENT, 'name = "wifi"'), "access.0.name is missing"),
        (_without(CLIENT, 'access_id = "5g"'), "access.1.access_id is missing"),
        (_without(CLIENT, 'interface = "eth0"'), "[access.0] has neither interface nor"),
        (_without(CLIENT, 'key = "c.key"'), "tls.key is missing"),
    ],
)
def test_client_structural_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        client(text=text)
    assert message in str(info.value)


CONCENTRATOR_ERRORS = [
    (("modes=[]",), "modes = [] is not a non-empty list of distinct values"),
    (('modes=["tunnel", "tunnel"]',), "modes = ['tunnel', 'tunnel'] is not"),
    (('modes=["stream"]',), "from tunnel, session"),
    (("listen.addresses=[]",), "listen.addresses = [] is not a non-empty list of IP addresses"),
    (('listen.addresses=["host"]',), "listen.addresses = ['host'] is not"),
    (("listen.port=70000",), "listen.port = 70000 is not an integer from 1 to 65535"),
    (("listen.backlog=5",), "listen.backlog is not a known key"),
    (("pool.ipv4=fd00::/64",), "pool.ipv4 = 'fd00::/64' is not an IPv4 prefix"),
    (("pool.ipv6=10.0.0.0/8",), "pool.ipv6 = '10.0.0.0/8' is not an IPv6 prefix"),
    (("pool.ipv4=10.8.0.1/24",), "pool.ipv4 = '10.8.0.1/24' is not an IP prefix"),
    (("limits.max_clients=0",), "limits.max_clients = 0 is not an integer from 1"),
    (("limits.max_connections_per_client=65",), "limits.max_connections_per_client = 65"),
    (("limits.rate_limit_mbps=0",), "limits.rate_limit_mbps = 0 is not a number"),
    (("limits.session_idle_expiry=-1",), "limits.session_idle_expiry = -1 is not a number"),
    (("client=[]", "pool={}"), "no client addresses are configured"),
]


@pytest.mark.parametrize(("overrides", "message"), CONCENTRATOR_ERRORS)
def test_concentrator_errors(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        concentrator(*overrides)
    assert message in str(info.value)


def test_concentrator_client_table_errors() -> None:
    twice = CONCENTRATOR + '[[client]]\nname = "a"\naddresses = ["10.8.0.2/32"]\n' * 2
    with pytest.raises(ConfigError, match="client name 'a' appears in two"):
        concentrator(text=twice)
    empty = CONCENTRATOR + '[[client]]\nname = "a"\n'
    with pytest.raises(ConfigError, match=r"\[client\.0\] has neither addresses nor macs"):
        concentrator(text=empty)
    server = parse_concentrator_config(empty + "l2_server = true\n", base_dir=Path("/etc/qtun"))
    assert server.clients[0].l2_server and not server.clients[0].macs  # an Ethernet router
    nameless = CONCENTRATOR + '[[client]]\naddresses = ["10.8.0.2/32"]\n'
    with pytest.raises(ConfigError, match=r"client\.0\.name is missing"):
        concentrator(text=nameless)


def _write_client_files(tmp_path: Path) -> Path:
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "client.toml"
    path.write_text(CLIENT)
    return path


def test_load_reads_file_and_resolves_relative_paths(tmp_path: Path) -> None:
    path = _write_client_files(tmp_path)
    config = load_client_config(path, ["observability.status_file=status.json"])
    assert config.tls.ca == tmp_path / "ca.pem"
    assert config.observability.status_file == tmp_path / "status.json"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist: give the path of a TOML file"):
        load_client_config(tmp_path / "none.toml")
    path = _write_client_files(tmp_path)
    (tmp_path / "c.key").unlink()
    with pytest.raises(ConfigError, match=r"tls\.key = .* does not exist: make test certificates"):
        load_client_config(path)
    (tmp_path / "c.key").write_text("x")
    with pytest.raises(
        ConfigError, match=r"observability\.keylog_file = .* directory that does not"
    ):
        load_client_config(path, ["observability.keylog_file=nodir/keys.log"])
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_concentrator_config(tmp_path / "bad.toml")


def test_load_refuses_tls_and_observability_paths_of_the_wrong_kind(tmp_path: Path) -> None:
    """A directory where a file is meant, or a file where the qlog directory is meant, is
    refused at load, naming the key and the path: the concentrator used to find out only after
    setting up its TUN and NAT, with "Is a directory" and neither."""
    path = _write_client_files(tmp_path)
    (tmp_path / "certs").mkdir()
    with pytest.raises(ConfigError, match=r"tls\.ca = .*certs' is a directory: give the path"):
        load_client_config(path, ["tls.ca=certs"])
    conc = tmp_path / "concentrator.toml"
    for name in ("s.pem", "s.key"):
        (tmp_path / name).write_text("x")
    conc.write_text(CONCENTRATOR)
    for load, config in ((load_client_config, path), (load_concentrator_config, conc)):
        for override, message in (
            ("observability.keylog_file=certs", r"keylog_file = .*certs' is a directory"),
            ("observability.status_file=certs", r"status_file = .*certs' is a directory"),
            ("observability.qlog_dir=ca.pem", r"qlog_dir = .*ca\.pem' cannot be a directory"),
            ("observability.qlog_dir=ca.pem/q", r"as .*ca\.pem is a file: give the path"),
        ):
            with pytest.raises(ConfigError, match=message):
                load(config, [override])  # type: ignore[operator]
        # what is created at start (the qlog directory and its parents) is fine
        load(config, ["observability.qlog_dir=certs/new/qlog"])  # type: ignore[operator]


def _clients(*clients: tuple[str, str]) -> str:
    return CONCENTRATOR + "".join(
        f'[[client]]\nname = "{name}"\naddresses = [{prefixes}]\n' for name, prefixes in clients
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _clients(("alice", '"10.8.0.2/32"'), ("bob", '"10.8.0.2/32"')),
            "clients 'alice' and 'bob' have overlapping addresses (10.8.0.2/32 and 10.8.0.2/32)",
        ),
        (
            _clients(("alice", '"10.8.0.2/32"'), ("bob", '"10.8.0.0/28"')),
            "clients 'bob' and 'alice' have overlapping addresses (10.8.0.0/28 and 10.8.0.2/32)",
        ),
        (
            _clients(("a", '"10.9.0.0/16", "fd00::/64"'), ("b", '"10.7.0.1/32", "fd00::8/126"')),
            "clients 'a' and 'b' have overlapping addresses (fd00::/64 and fd00::8/126)",
        ),
        (
            _clients(("alice", '"10.8.0.1/32"')),
            "client 'alice' has addresses 10.8.0.1/32, which holds the concentrator's "
            "tun.addresses 10.8.0.1",
        ),
        (
            _clients(("alice", '"10.8.0.0/16"')),
            "client 'alice' has addresses 10.8.0.0/16, which holds",
        ),
        (
            _clients(("alice", '"10.8.0.0/23"')).replace("10.8.0.1/24", "10.9.0.1/24"),
            "pool.ipv4 = '10.8.0.0/24' lies wholly inside 10.8.0.0/23, an address prefix of client "
            "'alice'",
        ),
    ],
)
def test_clients_addresses_may_not_overlap_each_other_or_the_concentrators(
    text: str, message: str
) -> None:
    """The forwarding table sends an address to the longest prefix, but the ingress filter
    lets each client send from all of its own: overlapping prefixes were accepted."""
    with pytest.raises(ConfigError) as info:
        concentrator(text=text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_clients_addresses_that_do_not_clash_are_accepted() -> None:
    # static clients inside the pool (claims skip them), one client's nested prefixes, the
    # same numbers in two families
    text = _clients(
        ("alice", '"10.8.0.6/32", "10.8.0.4/30", "fd00:8::2/128"'),
        ("bob", '"10.8.0.8/30", "::a08:4/126"'),
        ("carol", '"10.8.0.12/32"'),
    )
    config = concentrator(text=text)
    assert [c.name for c in config.clients] == ["alice", "bob", "carol"]  # type: ignore[attr-defined]


def test_outer_congestion_control_is_one_of_the_registered() -> None:
    assert client().limits.congestion_control == "reno"  # type: ignore[attr-defined]
    cubic = client("limits.congestion_control=cubic")
    assert cubic.limits.congestion_control == "cubic"  # type: ignore[attr-defined]
    conc = concentrator("limits.congestion_control=cubic")
    assert conc.limits.congestion_control == "cubic"  # type: ignore[attr-defined]
    assert client("limits.congestion_control=bbr").limits.congestion_control == "bbr"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"limits\.congestion_control"):
        client("limits.congestion_control=vegas")


def test_queue_aqm_is_off_unless_codel_is_asked_and_its_target_is_below_its_interval() -> None:
    assert client().limits.queue_delay_control() is None  # type: ignore[attr-defined]
    codel = client("limits.queue_aqm=codel").limits.queue_delay_control()  # type: ignore[attr-defined]
    assert (codel.target, codel.interval) == (0.005, 0.1)
    slow = concentrator(
        "limits.queue_aqm=codel",
        "limits.queue_delay_target=0.02",
        "limits.queue_delay_interval=0.5",
    )
    assert slow.limits.queue_delay_control().target == 0.02  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"queue_delay_target = 0\.2 s is not below"):
        client("limits.queue_delay_target=0.2")
    with pytest.raises(ConfigError, match=r"limits\.queue_aqm = 'red' is not one of codel, off"):
        concentrator("limits.queue_aqm=red")


def test_qos_value_and_dscp_tables() -> None:
    """The client's New Session QoS value (text or 0x-hex, session mode only) and the
    concentrator's [[qos]] tables mapping such values to DSCPs (tunnel/policy/qos.py)."""
    assert client("qos=video").qos == "video"  # type: ignore[attr-defined]
    assert client('qos="0x2a01"').qos == "0x2a01"  # type: ignore[attr-defined]
    assert client().qos is None  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="qos = 10753 is not a QoS value"):
        client("qos=0x2a01")  # read as the TOML integer 0x2a01: quote it
    with pytest.raises(ConfigError, match="qos is sent in the New Session TLV of session mode"):
        client("mode=tunnel", "qos=video")
    with pytest.raises(ConfigError, match=r"qos = 'vidéo' is not a QoS value"):
        client("qos=vidéo")
    marks = (
        CONCENTRATOR + '[[qos]]\nvalue = "voice"\ndscp = "EF"\n[[qos]]\nvalue = "0x01"\ndscp = 10\n'
    )
    config = concentrator(text=marks)
    assert [(m.value, m.dscp) for m in config.qos] == [("voice", 46), ("0x01", 10)]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"qos\.0\.dscp = 'XX' is not a DSCP"):
        concentrator(text=CONCENTRATOR + '[[qos]]\nvalue = "v"\ndscp = "XX"\n')
    with pytest.raises(ConfigError, match="QoS value 'v' appears in two"):
        concentrator(text=CONCENTRATOR + '[[qos]]\nvalue = "v"\ndscp = 1\n' * 2)


# -- payload: IP or Ethernet (L2 mode) --------------------------------------------------------


def test_payload_is_ip_unless_ethernet_is_asked_for() -> None:
    assert client().payload is Payload.IP  # type: ignore[attr-defined]
    assert client('payload="ethernet"').payload is Payload.ETHERNET  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="payload = 'tap' is not one of ip, ethernet"):
        client('payload="tap"')


def test_a_concentrator_serves_ethernet_clients_on_a_named_bridge() -> None:
    config = concentrator('payloads=["ip", "ethernet"]', 'l2.bridge="br-l2"', "l2.max_macs=2")
    assert config.payloads == (Payload.IP, Payload.ETHERNET)  # type: ignore[attr-defined]
    assert config.l2.bridge == "br-l2" and config.l2.max_macs == 2  # type: ignore[attr-defined]
    assert concentrator().payloads == (Payload.IP,)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r'payloads has "ethernet" but l2\.bridge is not set'):
        concentrator('payloads=["ethernet"]')


def test_ethernet_clients_need_no_addresses_and_macs_are_checked() -> None:
    pool_free = CONCENTRATOR.split("[pool]")[0]
    only_l2 = pool_free + '[[client]]\nname = "a"\nmacs = ["02:00:00:00:00:0A"]\n'
    config = concentrator('payloads=["ethernet"]', 'l2.bridge="br0"', text=only_l2)
    assert config.clients[0].macs == (0x02000000000A,)  # type: ignore[attr-defined]
    for bad in ('"02:00:00:00:00"', '"01:00:5e:00:00:01"'):
        text = CONCENTRATOR + f'[[client]]\nname = "b"\nmacs = [{bad}]\n'
        with pytest.raises(ConfigError, match=r"client\.0\.macs = .* is not a list of unicast MAC"):
            concentrator(text=text)


def test_only_an_ethernet_client_may_leave_its_addresses_to_dhcp() -> None:
    without = CLIENT.replace('addresses = ["10.8.0.2/32", "fd00:8::2/128"]', "addresses = []")
    assert without != CLIENT
    assert client('payload="ethernet"', text=without).tun.addresses == ()  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"tun\.addresses is empty: give the TUN's addresses"):
        client(text=without)
    with pytest.raises(ConfigError, match=r"tun\.addresses is empty"):
        concentrator("tun.addresses=[]")
