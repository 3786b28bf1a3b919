"""A concentrator of several workers (README "Workers"), without root: the connection-ID
steering (tunnel/aio/reuseport.py) on a real SO_REUSEPORT group on loopback, the connection IDs
a worker issues and a client picks (tunnel/protocol/quic_ext.py) in the in-memory harness and
against QuicServers on loopback (with Retry), the supervisor's merge of the status files and
each worker's view of the configuration, the client count and the pool claims they share
across their fork, and the configurations workers refuse. The real program with its TUNs is
tested in tests/integration/test_concentrator.py."""

from __future__ import annotations

import os
import select
import socket
from ipaddress import ip_address
from pathlib import Path

import pytest
from aioquic.quic.events import HandshakeCompleted

from tests.unit.concentrator_harness import concentrator_config
from tests.unit.quic_harness import Network, make_configs
from tests.unit.test_udp_loopback import within
from tunnel.aio.reuseport import attach_steering, steering_program, worker_of
from tunnel.aio.udp import QuicClient, QuicServer, UdpEndpoint
from tunnel.aio.workers import (
    SharedClientSlots,
    SharedPoolClaims,
    bind_groups,
    merge_status,
    worker_config,
    worker_status_path,
)
from tunnel.config import (
    ConcentratorConfig,
    ConfigError,
    worker_tun_name,
)
from tunnel.policy.address_validation import AdmissionLimits, RetryPolicy
from tunnel.protocol.quic_ext import (
    STEERED_DCID_LENGTH,
    TunnelQuicConnection,
    steer_connection_id,
)
from tunnel.protocol.stateless_reset import is_tagged_connection_id, reset_token
from tunnel.user_error import RuntimeFailure

KEY = bytes(range(32))


def static_config(certs: Path, *overrides: str) -> ConcentratorConfig:
    """A concentrator whose clients all have static addresses."""
    return concentrator_config(certs, *overrides, pool=False)


def short_header(first_dcid_byte: int) -> bytes:
    return bytes((0x40, first_dcid_byte)) + bytes(30)


def long_header(first_dcid_byte: int) -> bytes:
    # Initial: flags, version 1, DCID length 8, DCID...
    return bytes((0xC0, 0, 0, 0, 1, 8, first_dcid_byte)) + bytes(40)


# -- the steering rule and program ---------------------------------------------------------------


def test_the_rule_reads_the_first_dcid_byte_of_either_header() -> None:
    assert worker_of(short_header(7), 3) == 1
    assert worker_of(long_header(7), 3) == 1
    assert worker_of(long_header(9), 4) == 1
    assert worker_of(b"", 3) == 0 and worker_of(b"\xc0\x00\x00", 3) == 0  # too short: socket 0


def test_the_program_is_seven_classic_bpf_instructions() -> None:
    assert len(steering_program(4)) == 7 * 8
    with pytest.raises(ValueError, match="workers must be 1 to 256"):
        steering_program(0)


def test_the_kernel_steers_each_datagram_to_the_socket_its_byte_names() -> None:
    """Three sockets in one SO_REUSEPORT group on loopback: every datagram, long or short
    header, reaches the socket worker_of names, whatever its source port."""
    workers = 3
    group: list[socket.socket] = []
    senders: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", group[0].getsockname()[1] if group else 0))
            group.append(sock)
        attach_steering(group[0], workers)
        port = group[0].getsockname()[1]
        for _ in range(4):  # several 4-tuples: the kernel's own hash would spread them
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind(("127.0.0.1", 0))
            senders.append(sender)
        sent = [
            (make(byte), sender)
            for byte in (0, 1, 2, 5, 130, 255)
            for make in (short_header, long_header)
            for sender in senders
        ]
        for datagram, sender in sent:
            sender.sendto(datagram, ("127.0.0.1", port))
        received: dict[bytes, list[int]] = {}
        count = 0
        while count < len(sent):
            ready, _, _ = select.select(group, [], [], 5.0)
            assert ready, f"only {count} of {len(sent)} datagrams arrived"
            for sock in ready:
                data = sock.recv(2048)
                received.setdefault(data, []).append(group.index(sock))
                count += 1
        for datagram, sockets in received.items():
            assert set(sockets) == {worker_of(datagram, workers)}
    finally:
        for sock in group + senders:
            sock.close()


# -- the connection IDs ----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2, 3, 7, 64])
def test_a_steered_connection_id_keeps_all_but_its_first_byte_and_spreads_it(
    workers: int,
) -> None:
    for worker in range(workers):
        outputs = set()
        for first in range(256):
            cid = bytes((first,)) + b"\x11" * 7
            steered = steer_connection_id(cid, worker, workers)
            assert steered[0] % workers == worker and steered[1:] == cid[1:]
            outputs.add(steered[0])
        assert outputs == {b for b in range(256) if b % workers == worker}
    with pytest.raises(ValueError, match="not a worker index"):
        steer_connection_id(b"\x00" * 8, 3, 3)


def test_every_connection_id_a_worker_issues_steers_to_it() -> None:
    """The server's first connection ID (the one its handshake packets carry) and those it
    issues later in NEW_CONNECTION_ID frames, with their reset tokens derived from them; the
    client's packets then all steer to the worker."""
    client_config, server_config = make_configs(["t"])
    client = TunnelQuicConnection(configuration=client_config)
    server = TunnelQuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
        reset_key=KEY,
        cid_worker=(2, 3),
    )
    net = Network()
    path = net.add_connection_pair(client, server)
    sent: list[bytes] = []
    send = path.up_link.send
    path.up_link.send = lambda data, now: (sent.append(data), send(data, now))[1]  # type: ignore[method-assign]
    net.run(1.0)
    assert any(isinstance(e, HandshakeCompleted) for e in path.server.quic_events)
    host_cids = server._host_cids
    assert len(host_cids) > 1  # NEW_CONNECTION_ID issued more
    for cid in host_cids:
        assert cid.cid[0] % 3 == 2
        assert is_tagged_connection_id(KEY, cid.cid)  # steered first, then tagged
        assert cid.stateless_reset_token == reset_token(KEY, cid.cid)
    assert client.peer_cid_first_byte() == server.host_cid[0]
    after_handshake = [d for d in sent if not d[0] & 0x80]
    assert after_handshake and {worker_of(d, 3) for d in after_handshake} == {2}


def test_a_client_can_start_with_the_byte_of_its_concentrators_worker() -> None:
    client_config, server_config = make_configs(["t"])
    client = TunnelQuicConnection(configuration=client_config, initial_dcid_byte=0xA7)
    assert client.peer_cid_first_byte() is None  # no handshake yet
    odcid = client.original_destination_connection_id
    assert len(odcid) == STEERED_DCID_LENGTH and odcid[0] == 0xA7
    server = TunnelQuicConnection(
        configuration=server_config, original_destination_connection_id=odcid
    )
    net = Network()
    path = net.add_connection_pair(client, server)
    first = client.datagrams_to_send(now=net.clock.now)
    assert first and worker_of(first[0][0], 5) == 0xA7 % 5
    for data, _ in first:
        path.up_link.send(data, net.clock.now)
    net.run(1.0)
    assert any(isinstance(e, HandshakeCompleted) for e in path.client.quic_events)


def test_workers_on_one_port_serve_clients_through_retry() -> None:
    """Two QuicServers as two workers on one SO_REUSEPORT group on loopback, each asking every
    client for a Retry: a client sent to either worker (by its first DCID byte) connects, which
    needs its Retry's connection ID and its connection's to steer back to the worker whose key
    sealed the token and which holds the connection."""
    client_config, server_config = make_configs(["t"])

    async def scenario() -> None:
        group = [UdpEndpoint.bind("127.0.0.1", 0, reuse_port=True)]
        port = group[0].local_address[1]
        group.append(UdpEndpoint.bind("127.0.0.1", port, reuse_port=True))
        attach_steering(group[0].sock, 2)
        servers = [
            QuicServer(
                endpoint,
                server_config,
                lambda driver: None,
                admission=AdmissionLimits(retry=RetryPolicy.ALWAYS),
                cid_worker=(index, 2),
                create_connection=lambda index=index, **kwargs: TunnelQuicConnection(  # type: ignore[misc]
                    cid_worker=(index, 2), **kwargs
                ),
            )
            for index, endpoint in enumerate(group)
        ]
        for server in servers:
            server.start()
        clients = []
        try:
            for byte in (4, 9, 6, 1):  # workers 0, 1, 0, 1
                client = await QuicClient.connect(
                    UdpEndpoint.bind("127.0.0.1"),
                    ("127.0.0.1", port),
                    client_config,
                    timeout=5,
                    create_connection=lambda byte=byte, **kwargs: TunnelQuicConnection(  # type: ignore[misc]
                        initial_dcid_byte=byte, **kwargs
                    ),
                )
                clients.append(client)
            assert [s.stats.retries_sent for s in servers] == [2, 2]
            assert [len(s.connections) for s in servers] == [2, 2]
        finally:
            for client in clients:
                await client.close()
            for server in servers:
                await server.close()

    within(20, scenario)


# -- the supervisor's pieces -------------------------------------------------------------------


def test_the_status_files_merge_into_one() -> None:
    first = {
        "pid": 11,
        "time": 5.0,
        "state": "up",
        "modes": ["tunnel"],
        "tun": {"name": "qtunc0", "mtu": 1418, "rx_packets": 10},
        "clients": [{"name": "alice"}],
        "counters": {"packets_in": 3, "largest_receive_batch": 7},
        "connections": 1,
        "crl": None,
    }
    second = first | {
        "pid": 12,
        "time": 6.0,
        "tun": {"name": "qtunc0w1", "mtu": 1418, "rx_packets": 5},
        "clients": [{"name": "bob"}],
        "counters": {"packets_in": 4, "largest_receive_batch": 9, "only_here": 1},
        "connections": 2,
    }
    merged = merge_status([first, second])
    assert merged["pid"] == 11 and merged["time"] == 5.0 and merged["modes"] == ["tunnel"]
    assert merged["tun"] == {"name": "qtunc0", "mtu": 1418, "rx_packets": 15}
    assert merged["clients"] == [{"name": "alice"}, {"name": "bob"}]
    assert merged["counters"] == {"packets_in": 7, "largest_receive_batch": 9, "only_here": 1}
    assert merged["connections"] == 3 and merged["crl"] is None
    assert first["clients"] == [{"name": "alice"}]  # the inputs are left as they were


def test_each_worker_gets_its_tun_and_status_file(lab_certs: Path) -> None:
    config = static_config(lab_certs, "workers=3", "observability.status_file=/run/qt/status.json")
    views = [worker_config(config, index) for index in range(3)]
    assert [v.tun.name for v in views] == ["qcore0", "qcore0w1", "qcore0w2"]
    assert all(v.tun.addresses == config.tun.addresses for v in views)  # the host's own
    assert [v.observability.status_file for v in views] == [
        Path(f"/run/qt/status.worker{i}.json") for i in range(3)
    ]
    assert worker_status_path(Path("s.json"), 4) == Path("s.worker4.json")
    assert worker_tun_name("qt", 0) == "qt"


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (("stream.enabled=true", "stream.inbound_ports=[2222]"), "stream.inbound_ports"),
        (
            ('payloads=["ethernet"]', 'l2.bridge="br0"'),
            'cannot be combined with payloads "ethernet"',
        ),
        (("tun.name=abcdefghijklmn",), "leaves no room for the workers' TUN names"),
    ],
)
def test_workers_refuse_what_they_cannot_share(
    lab_certs: Path, overrides: tuple[str, ...], refused: str
) -> None:
    static_config(lab_certs, *overrides)  # fine with one worker
    static_config(lab_certs, "workers=2")  # and two workers without it
    with pytest.raises(ConfigError, match=refused):
        static_config(lab_certs, "workers=2", *overrides)


def test_a_pool_is_served_by_workers(lab_certs: Path) -> None:
    assert concentrator_config(lab_certs, "workers=4").pool.ipv4 is not None


def test_the_pool_claims_are_one_table_across_a_fork() -> None:
    """What a client claims at one worker, another client cannot claim at another; the same
    client can (a newer connection of it there), and the address is free once neither holds
    it. Two entries per client slot; a full table refuses."""
    claims = SharedPoolClaims(max_clients=2)
    zero, one = claims.worker(0), claims.worker(1)
    carol = ip_address("10.8.1.5")
    pid = os.fork()
    if pid == 0:  # worker 1
        os._exit(0 if one.take("carol", carol) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not zero.take("dave", carol)
    assert zero.take("carol", carol) and claims.claimed() == {carol: 0b11}
    one.give_back("carol", carol)
    assert not zero.take("dave", carol)
    zero.give_back("carol", carol)
    assert claims.claimed() == {}
    assert zero.take("dave", carol)
    others = [ip_address(f"10.8.1.{k}") for k in (6, 7, 8, 9)]
    assert [one.take("erin", address) for address in others] == [True, True, True, False]
    zero.give_back("carol", carol)  # dave's, not carol's: nothing changes
    assert claims.claimed() == {carol: 0b01} | dict.fromkeys(others[:3], 0b10)


def test_the_client_slots_are_one_count_across_a_fork() -> None:
    """limits.max_clients for all workers: what a forked worker takes, the others see."""
    slots = SharedClientSlots(3)
    assert slots.take()
    pid = os.fork()
    if pid == 0:  # a worker: takes the two left, then finds none
        os._exit(0 if slots.take() and slots.take() and not slots.take() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert slots.taken == 3 and not slots.take()
    slots.give_back()
    assert slots.take()
    for _ in range(3):
        slots.give_back()
    with pytest.raises(RuntimeError, match="never taken"):
        slots.give_back()


def test_the_workers_groups_are_not_bound_into_another_instances(lab_certs: Path) -> None:
    """A second concentrator on the same port (a restart overlapping the old one's drain):
    with SO_REUSEPORT its workers' sockets joined the first one's group without a word,
    received nothing, and once the first stopped the kernel renumbered them, every connection
    ID then steered to the wrong worker. The port taken is one sentence now."""
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    port = other.getsockname()[1]
    listen = ('listen.addresses=["127.0.0.1"]', f"listen.port={port}", "workers=2")
    try:
        with pytest.raises(RuntimeFailure, match=f"cannot bind UDP 127.0.0.1 port {port}"):
            bind_groups(static_config(lab_certs, *listen))
    finally:
        other.close()
    seats = bind_groups(static_config(lab_certs, *listen))  # the port free: both workers
    try:
        assert [len(endpoints) for endpoints in seats] == [1, 1]
    finally:
        for endpoints in seats:
            for endpoint in endpoints:
                endpoint.close()
