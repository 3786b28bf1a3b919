"""The hostile client: attacks and a structure-aware fuzzer against a real `qtun concentrator`.

Made of the same core pieces as `qtun client` (tunnel.aio.udp's QuicClient/UdpEndpoint, a
TunnelConnection over tunnel.protocol.quic_ext's QuicConnection), plus what no well-behaved client
has: `HostileQuicConnection` writes raw QUIC frames of our choosing into its 1-RTT packets (STREAM
frames on any stream ID at any offset, RESET_STREAM, anything), and plain UDP sockets send what
is not QUIC at all. The attacker may do anything, so this module reaches into aioquic 1.7.2
internals freely (tunnel/protocol/quic_ext.py is the one place *tunnel/* does; this is not tunnel/).

Attacks (one function each; every one seeded where it draws randomness, bounded in count and in
time, returning a dict of what the concentrator answered — `ATTACKS` maps names to them):

    malformed-cert     a client certificate whose subject does not parse
    junk-initial       >=1200-byte UDP datagrams with an Initial long header, random content
    report-flood       Access Reports as fast as QUIC takes them
    syn-to-conc        raw TCP SYNs in DATAGRAMs to the concentrator's own addresses
    gap-flood          session mode: every packet behind a Packet Tag gap
    session-cycle      New Session on a fresh connection, in a loop
    high-offset        one byte at the edge of the receive window on many streams (memory)
    stream-churn       many streams opened and finished at once
    join-bogus         Join Session with random Session IDs
    vn-probe           long headers of an unsupported version, short and full-size
    short-header       short-header packets with random connection IDs (the reset budget)

The fuzzer (`fuzz()`) stays connected as an authenticated client and feeds `InputGenerator`'s
inputs — valid framing with mutated fields — through the real connection: DATAGRAMs of every
size from 0 to one byte over the concentrator's budget, in tunnel mode (IP packets with mutated
headers) and session mode (every Protocol Type, Packet Tags with gaps), control TLVs on
unidirectional streams (split across STREAM frames, cut, unknown types, FIN or reset), session
messages on the control stream, TCP Connect preambles (odd addresses and ports, wrong lengths,
unknown TLVs, TLVs a client must not send), streams of the wrong initiator or direction, beyond
the stream limit or flow control, and random frames. When the concentrator closes the
connection (a correct answer to a violation) it reconnects and goes on.

Command line (run inside a Mininet host or namespace; one JSON document or JSON lines out):

    python -m testbed.hostile attacks --remote 10.100.0.1 --ca certs/ca.pem \\
        --cert certs/c21.pem --key certs/c21.key --inner-v4 10.8.0.23 --inner-v6 fd00:8::16 \\
        --duration 60 --seed 1 --out attacks.jsonl
    python -m testbed.hostile fuzz --remote 10.0.0.2 --ca ... --count 5000 --seed 1 \\
        --max-seconds 120 --out batch.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import random
import socket
import ssl
import struct
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import IO, Any

from aioquic.buffer import encode_uint_var, size_uint_var
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicPacketBuilderStop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tunnel.aio.udp import QuicClient, UdpEndpoint, run
from tunnel.protocol.connection import (
    ConnectionClosed,
    PacketReceived,
    SendResult,
    SessionEstablished,
    SessionJoinFailed,
    TunnelConnection,
    TunnelEvent,
)
from tunnel.protocol.quic_ext import (
    MAX_DATAGRAM_SIZE,  # what the qtun client uses
    TunnelQuicConnection,
    datagram_budget,
    packet_datagram_budget,
)
from tunnel.session.reorder import PacketTagCounter
from tunnel.user_error import SentenceParser, run_command
from tunnel.wire.messages import AccessId, AccessSignal
from tunnel.wire.modes import TunnelMode

# The fuzzer's own packets may be larger (the veths carry 1500 bytes), so that it can send a
# DATAGRAM one byte over what the concentrator's own 1452-byte packets would hold.
FUZZ_MAX_DATAGRAM_SIZE = MAX_DATAGRAM_SIZE + 20
CONNECT_TIMEOUT_S = 5.0
QUIC_VERSION_1 = 0x00000001
SMALLEST_INITIAL = 1200  # RFC 9000 §14.1

# ---------------------------------------------------------------------------------------------
# Certificates an attacker presents
# ---------------------------------------------------------------------------------------------


def unparsable_subject_certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Self-signed, CN a UTF8String holding the bytes ff fe fd fc (not UTF-8), and its key.
    Built with a placeholder CN of the same length, then patched in the DER: its own signature
    breaks, which is no obstacle, since TLS only checks CertificateVerify (issue 10 item 1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AAAA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    placeholder = b"\x0c\x04AAAA"  # UTF8String, length 4: in the issuer and the subject
    assert der.count(placeholder) == 2
    patched = der.replace(placeholder, b"\x0c\x04\xff\xfe\xfd\xfc")
    return x509.load_der_x509_certificate(patched), key


def write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, stem: Path) -> None:
    """`stem`.pem and `stem`.key, as aioquic's load_cert_chain reads them."""
    stem.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    stem.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# ---------------------------------------------------------------------------------------------
# Inner packets, built and read without scapy (this runs in tight loops)
# ---------------------------------------------------------------------------------------------

ICMP_ECHO_ID = 0x5143


def checksum16(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(src: str, dst: str, protocol: int, payload: bytes, ttl: int = 64) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(payload), 1, 0, ttl, protocol, 0,
        IPv4Address(src).packed, IPv4Address(dst).packed,
    )  # fmt: skip
    checksum = checksum16(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:] + payload


def ipv6_packet(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28, len(payload), next_header, hop_limit,
        IPv6Address(src).packed, IPv6Address(dst).packed,
    )  # fmt: skip
    return header + payload


def _transport_checksum(src: str, dst: str, protocol: int, segment: bytes) -> int:
    if ":" in dst:
        pseudo = IPv6Address(src).packed + IPv6Address(dst).packed
        pseudo += struct.pack("!I3xB", len(segment), protocol)
    else:
        pseudo = IPv4Address(src).packed + IPv4Address(dst).packed
        pseudo += struct.pack("!xBH", protocol, len(segment))
    return checksum16(pseudo + segment)


def icmp_echo(src: str, dst: str, seq: int, size: int = 56, ident: int = ICMP_ECHO_ID) -> bytes:
    """An ICMP (or ICMPv6, by `dst`'s family) echo request carrying `size` bytes of b"q"."""
    payload = b"q" * size
    if ":" in dst:
        body = struct.pack("!BBHHH", 128, 0, 0, ident, seq & 0xFFFF) + payload
        csum = _transport_checksum(src, dst, 58, body)
        return ipv6_packet(src, dst, 58, body[:2] + csum.to_bytes(2, "big") + body[4:])
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF) + payload
    body = body[:2] + checksum16(body).to_bytes(2, "big") + body[4:]
    return ipv4_packet(src, dst, 1, body)


def tcp_syn(src: str, dst: str, sport: int, dport: int, seq: int = 1) -> bytes:
    """A bare TCP SYN (no options, window 8192), IPv4 or IPv6 by `dst`'s family."""
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 8192, 0, 0)
    csum = _transport_checksum(src, dst, 6, segment)
    segment = segment[:16] + csum.to_bytes(2, "big") + segment[18:]
    if ":" in dst:
        return ipv6_packet(src, dst, 6, segment)
    return ipv4_packet(src, dst, 6, segment)


def _transport(packet: bytes) -> tuple[int, bytes] | None:
    """(protocol, transport header and payload) of an IPv4/IPv6 packet, None if unreadable."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[9], packet[(packet[0] & 0x0F) * 4 :]
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[6], packet[40:]
    return None


def is_echo_reply(packet: bytes) -> bool:
    parsed = _transport(packet)
    if parsed is None or not parsed[1]:
        return False
    protocol, rest = parsed
    return (protocol == 1 and rest[0] == 0) or (protocol == 58 and rest[0] == 129)


def is_syn_ack(packet: bytes) -> bool:
    parsed = _transport(packet)
    if parsed is None or parsed[0] != 6 or len(parsed[1]) < 14:
        return False
    return parsed[1][13] & 0x12 == 0x12


# ---------------------------------------------------------------------------------------------
# Connecting: the connection that can write any frame, its event sink, a client link
# ---------------------------------------------------------------------------------------------

STREAM_FRAME = 0x08  # | 0x04 offset present | 0x02 length present | 0x01 FIN (RFC 9000 §19.8)
RESET_STREAM_FRAME = 0x04
STOP_SENDING_FRAME = 0x05
DATAGRAM_FRAME = 0x31  # with length (RFC 9221 §4)


class HostileQuicConnection(TunnelQuicConnection):
    """A client QuicConnection that also writes frames queued with `inject()` verbatim into its
    next 1-RTT packets (no retransmission: the fuzzer's links are loss-free veths)."""

    def __init__(self, **kwargs: Any) -> None:
        self._injected: deque[tuple[int, bytes]] = deque()
        super().__init__(**kwargs)

    def inject(self, frame_type: int, body: bytes) -> None:
        """Queue one frame: its type and the bytes after the type."""
        self._injected.append((frame_type, body))

    @property
    def injected_pending(self) -> int:
        return len(self._injected)

    def claim_stream_id(self, unidirectional: bool) -> int:
        """A fresh stream ID of ours that aioquic will treat as used and discarded: frames the
        concentrator sends for it are ignored (StreamFinishedError), never a local error."""
        stream_id = self.get_next_available_stream_id(is_unidirectional=unidirectional)
        if unidirectional:
            self._local_next_stream_id_uni = stream_id + 4
        else:
            self._local_next_stream_id_bidi = stream_id + 4
        return stream_id

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: Any) -> None:
        # Called once per 1-RTT packet aioquic builds after the handshake: the place where
        # our own frames join the packet.
        super()._write_connection_limits(builder=builder, space=space)
        while self._injected:
            frame_type, body = self._injected[0]
            capacity = size_uint_var(frame_type) + len(body)
            try:
                buf = builder.start_frame(frame_type, capacity=capacity)
            except QuicPacketBuilderStop:
                if builder.packet_is_empty and capacity > builder.remaining_buffer_space:
                    self._injected.popleft()  # can never fit a packet: dropped
                    continue
                return  # the next packet
            buf.push_bytes(body)
            self._injected.popleft()


def stream_frame(stream_id: int, offset: int, data: bytes, fin: bool) -> tuple[int, bytes]:
    frame_type = STREAM_FRAME | 0x02 | (0x04 if offset else 0) | (0x01 if fin else 0)
    body = encode_uint_var(stream_id)
    if offset:
        body += encode_uint_var(offset)
    return frame_type, body + encode_uint_var(len(data)) + data


def reset_stream_frame(stream_id: int, code: int, final_size: int) -> tuple[int, bytes]:
    body = encode_uint_var(stream_id) + encode_uint_var(code) + encode_uint_var(final_size)
    return RESET_STREAM_FRAME, body


def stop_sending_frame(stream_id: int, code: int) -> tuple[int, bytes]:
    return STOP_SENDING_FRAME, encode_uint_var(stream_id) + encode_uint_var(code)


class Peer:
    """Collects the TunnelConnection events of one connection (`on_event` is the QuicDriver's
    event handler). `max_events` bounds the list (oldest dropped) for long-lived connections;
    `closed` and `counts` survive the trimming."""

    def __init__(self, max_events: int | None = None) -> None:
        self.tunnel: TunnelConnection | None = None
        self.events: list[TunnelEvent] = []
        self.changed = asyncio.Event()
        self.max_events = max_events
        self.counts: Counter[str] = Counter()
        self.closed: ConnectionClosed | None = None

    def on_event(self, event: QuicEvent) -> None:
        assert self.tunnel is not None
        for tunnel_event in self.tunnel.handle_event(event):
            self.counts[type(tunnel_event).__name__] += 1
            if isinstance(tunnel_event, ConnectionClosed) and self.closed is None:
                self.closed = tunnel_event
            self.events.append(tunnel_event)
        if self.max_events is not None and len(self.events) > self.max_events:
            del self.events[: len(self.events) - self.max_events // 2]
        self.changed.set()

    async def wait_for(self, kinds: tuple[type, ...], timeout: float) -> TunnelEvent | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.events:
                if isinstance(event, kinds):
                    return event
            if ConnectionClosed in kinds and self.closed is not None:
                return self.closed
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return None


def client_configuration(
    ca: Path | str,
    alpn: Sequence[str],
    cert: Path | str | None = None,
    key: Path | str | None = None,
    server_name: str = "concentrator",
    max_datagram_size: int = MAX_DATAGRAM_SIZE,
) -> QuicConfiguration:
    """A tunnel client's QUIC configuration: verifies the concentrator against `ca`, presents
    `cert` (none if None)."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=list(alpn),
        max_datagram_frame_size=65535,
        max_datagram_size=max_datagram_size,
        server_name=server_name,
    )
    config.load_verify_locations(cafile=str(ca))
    config.verify_mode = ssl.CERT_REQUIRED
    if cert is not None:
        config.load_cert_chain(str(cert), None if key is None else str(key))
    return config


async def connect(
    remote: str,
    port: int,
    configuration: QuicConfiguration,
    *,
    stream_mode: bool = False,
    local_address: str | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
    max_events: int | None = None,
    initial_dcid_byte: int | None = None,
) -> tuple[QuicClient, Peer]:
    """Handshake with the concentrator (ConnectionError if it fails); the connection is a
    HostileQuicConnection announcing stream mode if asked. `initial_dcid_byte`: the first byte
    of the first Destination Connection ID, which picks a concentrator worker (README
    "Workers")."""
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    endpoint = UdpEndpoint.bind(local_address, family=family)
    peer = Peer(max_events)

    def factory(**kwargs: Any) -> HostileQuicConnection:
        quic = HostileQuicConnection(
            stream_mode=stream_mode, initial_dcid_byte=initial_dcid_byte, **kwargs
        )
        peer.tunnel = TunnelConnection(quic)
        return quic

    try:
        client = await QuicClient.connect(
            endpoint,
            (remote, port),
            configuration,
            peer.on_event,
            timeout=timeout,
            create_connection=factory,
        )
    except BaseException:
        endpoint.close()
        raise
    return client, peer


@dataclass
class Link:
    """One connected hostile client: the QUIC client, its events, its Packet Tags."""

    client: QuicClient
    peer: Peer
    tags: PacketTagCounter = field(default_factory=PacketTagCounter)
    send_status: list[str] = field(default_factory=list)
    # how the connection had ended when we closed it ourselves (None: it was still open)
    ended: ConnectionClosed | None = None
    closing: bool = False

    @property
    def tunnel(self) -> TunnelConnection:
        assert self.peer.tunnel is not None
        return self.peer.tunnel

    @property
    def quic(self) -> HostileQuicConnection:
        quic = self.client.driver.quic
        assert isinstance(quic, HostileQuicConnection)
        return quic

    @property
    def closed(self) -> bool:
        return self.peer.closed is not None or self.client.driver.closed

    @property
    def session_mode(self) -> bool:
        return self.tunnel.mode is TunnelMode.SESSION

    def transmit(self) -> None:
        self.client.driver.transmit()

    def send_packet(self, packet: bytes, tag_step: int = 1) -> SendResult:
        """One IP packet in a DATAGRAM; in session mode `tag_step - 1` Packet Tags are skipped
        first (a gap: the concentrator holds the packet for reordering)."""
        tag = None
        if self.session_mode:
            for _ in range(tag_step - 1):
                self.tags.next()
            tag = self.tags.next()
        sent = self.tunnel.send_packet(packet, packet_tag=tag)
        self.send_status.append(sent.status.value)
        self.transmit()
        return sent

    async def open_session(self, timeout: float = 5.0) -> bool:
        """Session mode: New Session, wait for the Session ID."""
        self.tunnel.request_new_session()
        self.transmit()
        return await self.peer.wait_for((SessionEstablished,), timeout) is not None

    async def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.ended = self.peer.closed
        await self.client.close()


@dataclass(frozen=True)
class Target:
    """Where the concentrator is and who we are to it."""

    remote: str
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    port: int = 4433
    inner_v4: str = "10.8.0.2"
    inner_v6: str = "fd00:8::2"
    own_addresses: tuple[str, ...] = ()  # the concentrator's addresses (syn-to-conc)
    server: str = "10.200.1.2"  # a host behind the concentrator that answers pings
    local_address: str | None = None
    server_name: str = "concentrator"
    remotes: tuple[str, ...] = ()  # more addresses of the concentrator to connect to

    def configuration(
        self, alpn: str, max_datagram_size: int = MAX_DATAGRAM_SIZE
    ) -> QuicConfiguration:
        return client_configuration(
            self.ca, [alpn], self.cert, self.key, self.server_name, max_datagram_size
        )

    async def connect(
        self,
        alpn: str = "qt",
        *,
        stream_mode: bool = False,
        max_events: int | None = 1024,
        remote: str | None = None,
        max_datagram_size: int = MAX_DATAGRAM_SIZE,
    ) -> Link:
        remote = remote or self.remote
        local = self.local_address
        if local is not None and (":" in local) != (":" in remote):
            local = None
        client, peer = await connect(
            remote,
            self.port,
            self.configuration(alpn, max_datagram_size),
            stream_mode=stream_mode,
            local_address=local,
            max_events=max_events,
        )
        return Link(client, peer)


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


async def _pause_every(index: int, every: int = 64) -> None:
    if index % every == every - 1:
        await asyncio.sleep(0)  # let the loop read ACKs and flow-control updates


def _close_summary(link: Link) -> dict[str, Any] | None:
    """How the concentrator (or our side) ended the connection before we closed it."""
    closed = link.ended if link.closing else link.peer.closed
    if closed is None:
        return None
    return {"by_peer": closed.by_peer, "reason": closed.reason, "code": closed.error_code}


async def malformed_certificate(target: Target, rng: random.Random) -> dict[str, Any]:
    """Connect with a certificate whose subject does not parse: the concentrator must close at
    once (never keep the connection open unauthenticated)."""
    cert, key = unparsable_subject_certificate()
    with tempfile.TemporaryDirectory(prefix="qtl-hostile-") as tmp:
        stem = Path(tmp) / "mallory"
        write_pair(cert, key, stem)
        evil = replace(target, cert=stem.with_suffix(".pem"), key=stem.with_suffix(".key"))
        try:
            link = await evil.connect("qt")
        except ConnectionError as exc:
            return {"connected": False, "error": str(exc)}
    try:
        await link.peer.wait_for((ConnectionClosed,), 5.0)
    finally:
        await link.close()
    return {"connected": True, "closed": _close_summary(link)}


def _long_header(version: int, rng: random.Random) -> bytes:
    """First byte (long header, fixed bit, Initial type, random low bits), version, random
    Destination and Source Connection IDs (RFC 9000 §17.2)."""
    dcid = rng.randbytes(rng.randint(8, 20))
    scid = rng.randbytes(rng.randint(0, 20))
    first = bytes([0xC0 | rng.getrandbits(4)]) + version.to_bytes(4, "big")
    return first + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid


async def _udp_volley(
    target: Target,
    datagrams: Callable[[int], bytes],
    count: int,
    rate: float,
    max_seconds: float,
) -> tuple[int, list[bytes]]:
    """Send datagrams(i) for i < count at `rate` per second from a plain UDP socket (bounded by
    max_seconds), collecting whatever comes back; (sent, replies)."""
    family = socket.AF_INET6 if ":" in target.remote else socket.AF_INET
    replies: list[bytes] = []
    sent = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if target.local_address is not None and (":" in target.local_address) == (
            family == socket.AF_INET6
        ):
            sock.bind((target.local_address, 0))
        sock.setblocking(False)
        start = time.monotonic()
        deadline = start + max_seconds
        for index in range(count):
            now = time.monotonic()
            if now >= deadline:
                break
            due = start + index / rate
            if due > now:
                await asyncio.sleep(due - now)
            with contextlib.suppress(OSError):
                sock.sendto(datagrams(index), (target.remote, target.port))
                sent += 1
            _drain(sock, replies)
        end = min(deadline, time.monotonic() + 0.5)
        while time.monotonic() < end:  # the last replies
            await asyncio.sleep(0.05)
            _drain(sock, replies)
    return sent, replies


def _drain(sock: socket.socket, replies: list[bytes]) -> None:
    for _ in range(256):
        try:
            replies.append(sock.recv(2048))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue  # an ICMP error surfaced on the socket


async def junk_initial_flood(
    target: Target, rng: random.Random, count: int = 400, rate: float = 400.0
) -> dict[str, Any]:
    """>=1200-byte UDP datagrams with a version-1 Initial long header and random content: each
    asks for a connection the concentrator must not let pile up."""

    def make(_index: int) -> bytes:
        header = _long_header(QUIC_VERSION_1, rng) + b"\x00"  # token length 0
        size = rng.randint(SMALLEST_INITIAL, 1350)
        rest = size - len(header) - 2
        return header + (0x4000 | rest).to_bytes(2, "big") + rng.randbytes(rest)

    sent, replies = await _udp_volley(target, make, count, rate, max_seconds=count / rate + 5)
    retries = sum(1 for r in replies if len(r) > 5 and r[0] & 0xF0 == 0xF0)
    return {"sent": sent, "replies": len(replies), "retries": retries}


async def version_negotiation_probe(
    target: Target, rng: random.Random, count: int = 200, rate: float = 200.0
) -> dict[str, Any]:
    """Long headers of an unsupported version: below 1200 bytes none may be answered (RFC 9000
    §5.2.2); full-size ones get Version Negotiation within the reply budget."""
    version = 0x1A2A3A4A  # a reserved (greased) version: never supported (RFC 9000 §15)
    half = max(1, count // 2)

    def short(_index: int) -> bytes:
        header = _long_header(version, rng)
        return header + rng.randbytes(rng.randint(1, SMALLEST_INITIAL - 1 - len(header)))

    def full(_index: int) -> bytes:
        header = _long_header(version, rng)
        return header + rng.randbytes(SMALLEST_INITIAL - len(header))

    short_sent, short_replies = await _udp_volley(target, short, half, rate, half / rate + 5)
    long_sent, long_replies = await _udp_volley(target, full, half, rate, half / rate + 5)
    vn = [r for r in long_replies if len(r) >= 5 and r[0] & 0x80 and r[1:5] == b"\0\0\0\0"]
    return {
        "short_sent": short_sent,
        "short_replies": len(short_replies),
        "long_sent": long_sent,
        "long_replies": len(long_replies),
        "version_negotiations": len(vn),
    }


async def short_header_flood(
    target: Target, rng: random.Random, count: int = 400, rate: float = 400.0
) -> dict[str, Any]:
    """Short-header packets with random connection IDs: each may draw a stateless reset, so the
    replies measure the reset budget (and that nothing else answers)."""

    def make(_index: int) -> bytes:
        return bytes([0x40 | rng.getrandbits(6)]) + rng.randbytes(rng.randint(24, 1200))

    sent, replies = await _udp_volley(target, make, count, rate, max_seconds=count / rate + 5)
    return {"sent": sent, "replies": len(replies), "seconds": round(count / rate, 2)}


async def report_flood(link: Link, count: int) -> int:
    """Tunnel mode: `count` Access Reports as fast as the connection takes them; the number
    sent."""
    signals = (AccessSignal.UNAVAILABLE, AccessSignal.AVAILABLE)
    for index in range(count):
        link.tunnel.send_access_report(AccessId.NON_THREE_GPP, signals[index % 2])
        if index % 64 == 63:
            link.transmit()
            await asyncio.sleep(0)  # let aioquic's flow control breathe
    link.transmit()
    await asyncio.sleep(1.0)
    return link.tunnel.counters.access_reports_sent


async def report_flood_attack(
    target: Target, rng: random.Random, count: int = 1000
) -> dict[str, Any]:
    link = await target.connect("qt")
    try:
        sent = await report_flood(link, count)
    finally:
        await link.close()
    return {"reports_sent": sent, "closed": _close_summary(link)}


async def syn_probe(link: Link, src: str, dst: str, dport: int, wait: float = 1.5) -> bool:
    """A raw TCP SYN from `src` to `dst`:`dport` in a DATAGRAM: did a SYN-ACK come back?"""
    before = len(link.peer.events)
    link.send_packet(tcp_syn(src, dst, 40000, dport))
    await asyncio.sleep(wait)
    return any(
        isinstance(e, PacketReceived) and is_syn_ack(e.packet) for e in link.peer.events[before:]
    )


async def syn_to_concentrator(
    target: Target, rng: random.Random, dport: int = 5999
) -> dict[str, Any]:
    """SYNs to each of the concentrator's own addresses, in tunnel and in session mode: none
    may be answered with a SYN-ACK (the concentrator is not reachable through its tunnel)."""
    result: dict[str, Any] = {"sent": 0, "syn_acks": 0, "answered": []}
    for alpn in ("qt", "qt-session"):
        link = await target.connect(alpn)
        try:
            if link.session_mode and not await link.open_session():
                result.setdefault("errors", []).append("no session")
                continue
            before = len(link.peer.events)
            for dst in target.own_addresses:
                src = target.inner_v6 if ":" in dst else target.inner_v4
                link.send_packet(tcp_syn(src, dst, 40000 + rng.randrange(20000), dport))
                result["sent"] += 1
            await asyncio.sleep(1.5)
            for event in link.peer.events[before:]:
                if isinstance(event, PacketReceived) and is_syn_ack(event.packet):
                    result["syn_acks"] += 1
        finally:
            await link.close()
    return result


async def gap_flood(
    link: Link, src: str, dst: str, count: int, interval: float, tag_step: int = 2, size: int = 56
) -> int:
    """Session mode: `count` echo requests, each behind a Packet Tag gap, paced by `interval`:
    the concentrator re-arms its reorder timer for each, often with a deadline a fraction of a
    millisecond away. The number of echo replies."""
    for seq in range(count):
        link.send_packet(icmp_echo(src, dst, seq, size), tag_step=tag_step)
        await asyncio.sleep(interval)
    await asyncio.sleep(1.0)
    return sum(
        1 for e in link.peer.events if isinstance(e, PacketReceived) and is_echo_reply(e.packet)
    )


async def gap_flood_attack(
    target: Target, rng: random.Random, count: int = 600, interval: float = 0.002
) -> dict[str, Any]:
    link = await target.connect("qt-session", max_events=None)
    try:
        if not await link.open_session():
            return {"session": False, "closed": _close_summary(link)}
        replies = await gap_flood(link, target.inner_v4, target.server, count, interval)
    finally:
        await link.close()
    return {"sent": count, "replies": replies, "closed": _close_summary(link)}


async def session_cycle(target: Target, count: int) -> list[str]:
    """New Session on a fresh connection, `count` times, each connection closed after the
    answer (what a client restarting in a loop does): how each was answered."""
    outcomes: list[str] = []
    for _ in range(count):
        link = await target.connect("qt-session")
        try:
            link.tunnel.request_new_session()
            link.transmit()
            answer = await link.peer.wait_for((SessionEstablished, SessionJoinFailed), 5.0)
            if isinstance(answer, SessionJoinFailed):
                outcomes.append(f"failed:{int(answer.code)}")
            else:
                outcomes.append("created" if answer is not None else "no answer")
        finally:
            await link.close()
    return outcomes


async def session_cycle_attack(
    target: Target, rng: random.Random, count: int = 10
) -> dict[str, Any]:
    outcomes = await session_cycle(target, count)
    return {"outcomes": dict(Counter(outcomes))}


async def join_bogus(link: Link, session_id: bytes, timeout: float = 5.0) -> dict[str, Any]:
    """Join Session with `session_id` (a made-up one): how the concentrator answered."""
    link.tunnel.join_session(session_id)
    link.transmit()
    answer = await link.peer.wait_for((SessionJoinFailed, SessionEstablished), timeout)
    if isinstance(answer, SessionJoinFailed):
        return {"failed": int(answer.code)}
    return {"established": answer is not None}


async def join_bogus_attack(target: Target, rng: random.Random, count: int = 10) -> dict[str, Any]:
    answers: Counter[str] = Counter()
    for _ in range(count):
        link = await target.connect("qt-session")
        try:
            answer = await join_bogus(link, rng.randbytes(rng.choice((1, 8, 16, 32, 255))))
        finally:
            await link.close()
        answers[json.dumps(answer, sort_keys=True)] += 1
    return {"answers": dict(answers)}


async def high_offset_streams(
    target: Target, rng: random.Random, streams: int = 64, hold_s: float = 2.0
) -> dict[str, Any]:
    """The memory attack: one byte at the last offset of the receive window on many streams —
    unidirectional (the Access Report streams) and, with stream mode, bidirectional — so that
    a receiver that zero-fills gaps allocates a whole window per stream; then one byte beyond
    the window (a flow-control violation the concentrator must close on). Held `hold_s`
    seconds so the memory is held while someone measures."""
    link = await target.connect("qt", stream_mode=True)
    quic = link.quic
    result: dict[str, Any] = {
        "window_uni": quic._remote_max_stream_data_uni,
        "window_bidi": quic._remote_max_stream_data_bidi_remote,
        "stream_mode": link.tunnel.stream_mode,
        "uni_sent": 0,
        "bidi_sent": 0,
    }
    try:
        kinds = [True] + ([False] if link.tunnel.stream_mode else [])
        for unidirectional in kinds:
            window = result["window_uni" if unidirectional else "window_bidi"]
            limit = (
                quic._remote_max_streams_uni if unidirectional else quic._remote_max_streams_bidi
            )
            for index in range(min(streams, max(0, limit - 2))):
                if link.closed:
                    break
                stream_id = quic.claim_stream_id(unidirectional)
                quic.inject(*stream_frame(stream_id, max(0, window - 1), b"x", fin=False))
                result["uni_sent" if unidirectional else "bidi_sent"] += 1
                if index % 16 == 15:
                    link.transmit()
                    await asyncio.sleep(0.01)
            link.transmit()
        await asyncio.sleep(hold_s)
        result["closed_within_window"] = _close_summary(link)
        if not link.closed:
            stream_id = quic.claim_stream_id(True)
            quic.inject(*stream_frame(stream_id, result["window_uni"] + 1, b"x", fin=False))
            link.transmit()
            await link.peer.wait_for((ConnectionClosed,), 3.0)
        result["closed"] = _close_summary(link)
    finally:
        await link.close()
    return result


async def stream_churn(target: Target, rng: random.Random, count: int = 400) -> dict[str, Any]:
    """Many streams opened and finished: Access Report streams (a TLV and FIN), empty
    unidirectional streams, and with stream mode TCP Connect streams finished or reset at
    once. The concentrator must forget each (no per-stream state left behind)."""
    link = await target.connect("qt", stream_mode=True, max_events=256)
    quic = link.quic
    opened: Counter[str] = Counter()
    deadline = time.monotonic() + max(10.0, count / 20)
    connect = _tcp_connect_tlv(ip_address(target.server), 9) + b"\xff\x00"
    try:
        for index in range(count):
            if link.closed or time.monotonic() > deadline:
                break
            while quic._streams_blocked_uni or quic._streams_blocked_bidi:
                if link.closed or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)  # wait for MAX_STREAMS
            choice = index % 4
            if choice == 0:
                link.tunnel.send_access_report(AccessId.NON_THREE_GPP, AccessSignal.AVAILABLE)
                opened["access_report"] += 1
            elif choice == 1:
                quic.send_stream_data(quic.get_next_available_stream_id(True), b"", end_stream=True)
                opened["empty_uni"] += 1
            elif link.tunnel.stream_mode:
                stream_id = quic.get_next_available_stream_id()
                quic.send_stream_data(stream_id, connect, end_stream=choice == 2)
                if choice == 3:
                    quic.reset_stream(stream_id, 0)
                opened["tcp_connect_fin" if choice == 2 else "tcp_connect_reset"] += 1
            link.transmit()
            await _pause_every(index, 16)
        await asyncio.sleep(1.0)
    finally:
        await link.close()
    return {"opened": dict(opened), "closed": _close_summary(link)}


AttackFn = Callable[..., Awaitable[dict[str, Any]]]
# name -> (function, its count-like keyword and the default count; scaled by --scale)
ATTACKS: dict[str, tuple[AttackFn, str | None, int]] = {
    "malformed-cert": (malformed_certificate, None, 0),
    "junk-initial": (junk_initial_flood, "count", 400),
    "report-flood": (report_flood_attack, "count", 1000),
    "syn-to-conc": (syn_to_concentrator, None, 0),
    "gap-flood": (gap_flood_attack, "count", 600),
    "session-cycle": (session_cycle_attack, "count", 10),
    "high-offset": (high_offset_streams, "streams", 64),
    "stream-churn": (stream_churn, "count", 400),
    "join-bogus": (join_bogus_attack, "count", 10),
    "vn-probe": (version_negotiation_probe, "count", 200),
    "short-header": (short_header_flood, "count", 400),
}
ATTACK_TIMEOUT_S = 60.0  # one attack never takes longer (each is bounded well below)


async def run_attack(
    name: str, target: Target, rng: random.Random, scale: float = 1.0
) -> dict[str, Any]:
    """One attack by name, bounded by ATTACK_TIMEOUT_S; its result, or its error."""
    function, count_key, default = ATTACKS[name]
    kwargs: dict[str, Any] = {}
    if count_key is not None:
        kwargs[count_key] = max(1, round(default * scale))
    try:
        result = await asyncio.wait_for(function(target, rng, **kwargs), ATTACK_TIMEOUT_S)
    except (ConnectionError, TimeoutError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return result


async def run_attacks(
    target: Target,
    names: Sequence[str],
    duration_s: float,
    seed: int,
    out: Path,
    scale: float = 1.0,
    max_rounds: int = 1000,
    pause_s: float = 0.5,
) -> int:
    """Every attack in `names`, in order, round after round until `duration_s` is up (or
    `max_rounds`): one JSON line per attack run appended to `out`. Returns the runs done."""
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}; known: {', '.join(ATTACKS)}")
    deadline = time.monotonic() + duration_s
    runs = 0
    with out.open("a") as sink:
        for round_ in range(max_rounds):
            for name in names:
                if time.monotonic() >= deadline:
                    return runs
                rng = random.Random(f"{seed}/{round_}/{name}")
                started = time.time()
                result = await run_attack(name, target, rng, scale)
                row = {
                    "round": round_,
                    "attack": name,
                    "t_start": started,
                    "t_end": time.time(),
                    "ok": "error" not in result,
                    "result": result,
                }
                sink.write(json.dumps(row, default=str) + "\n")
                sink.flush()
                runs += 1
                await asyncio.sleep(pause_s)
    return runs


# ---------------------------------------------------------------------------------------------
# The structure-aware fuzzer
# ---------------------------------------------------------------------------------------------

KINDS = (
    "datagram_tunnel",  # tunnel-mode DATAGRAM: an IP packet with mutated header fields
    "datagram_session",  # session-mode DATAGRAM: Protocol Type + Packet Tag + packet
    "control_tlv",  # TLVs on a unidirectional stream (Access Reports and worse)
    "session_message",  # New Session / Join Session / anything on the control stream
    "tcp_preamble",  # a bidirectional stream: TCP Connect preambles and their mutations
    "odd_stream",  # raw STREAM/RESET_STREAM/STOP_SENDING of the wrong kind or place
    "raw_frame",  # a random frame type with a random body
)
# Relative weights of the kinds drawn for an input (session_message is drawn once per session
# connection, before anything else on it). The ones that close the connection are kept rare:
# each close costs a handshake, and most of the surface is behind an open connection.
KIND_WEIGHTS = {
    "datagram_tunnel": 30,
    "datagram_session": 32,
    "control_tlv": 14,
    "tcp_preamble": 18,
    "odd_stream": 2,
    "raw_frame": 1,
}
SPECIAL_FRAMES = ("uni_high_offset", "bidi_high_offset", "beyond_stream_limit", "final_size")
SPECIAL_PROTOCOL_TYPES = (0x0800, 0x86DD, 0x6558)  # IPv4, IPv6, Ethernet (session draft §4)
# Share of the fuzzer's connections in session mode (the rest tunnel mode): above half, so
# that session DATAGRAMs walk more of the 65536 Protocol Types.
SESSION_CONNECTIONS = 0.6


@dataclass
class StreamPlan:
    """What to write on a new stream: pieces (each in its own STREAM frame), then what ends it."""

    unidirectional: bool
    pieces: list[bytes]
    fin: bool = True
    after: str = "none"  # none | reset | stop_reset | hold
    control: bool = False  # the session control stream (ours: stream 2)


@dataclass
class FuzzInput:
    kind: str
    datagram: bytes | None = None
    stream: StreamPlan | None = None
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    # raw frames that need the connection's state (a fresh stream ID, its window): one of
    # SPECIAL_FRAMES, applied by the executor with `data`
    special: str = ""
    data: bytes = b""
    label: str = ""  # the mutation, for the record


def _tcp_connect_tlv(address: IPv4Address | IPv6Address, port: int) -> bytes:
    packed = address.packed
    if isinstance(address, IPv4Address):
        packed = b"\0" * 10 + b"\xff\xff" + packed  # v4-mapped (-tcp §5.1.1)
    return bytes((0x00, 18)) + port.to_bytes(2, "big") + packed


def _tlv(tlv_type: int, value: bytes) -> bytes:
    return bytes((tlv_type, len(value) & 0xFF)) + value


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    """Cut `data` at random points (TLVs split across STREAM frames)."""
    if len(data) < 2 or rng.random() < 0.5:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class InputGenerator:
    """Seeded structure-aware inputs. Protocol Types walk a permutation of 0..65535 (seeded by
    `pt_seed`, from `pt_cursor`) so that successive batches cover new values."""

    def __init__(
        self,
        seed: int | str,
        own: FuzzContext,
        pt_seed: int | str = 0,
        pt_cursor: int = 0,
    ) -> None:
        self.rng = random.Random(seed)
        self.own = own
        permutation = list(range(0x10000))
        random.Random(f"protocol-types/{pt_seed}").shuffle(permutation)
        self._protocol_types = permutation
        self.pt_cursor = pt_cursor
        self.protocol_types_used: set[int] = set()
        self._kinds = list(KIND_WEIGHTS)
        self._weights = list(KIND_WEIGHTS.values())

    # -- drawing -----------------------------------------------------------------------------

    def kind(self, session_mode: bool, stream_mode: bool) -> str:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        if kind == "datagram_session" and not session_mode:
            kind = "datagram_tunnel"
        elif kind == "datagram_tunnel" and session_mode:
            kind = "datagram_session"
        if kind == "tcp_preamble" and not stream_mode and self.rng.random() < 0.9:
            kind = "control_tlv"  # bidi without stream mode closes: keep it rare
        return kind

    def next(self, kind: str, budget: int) -> FuzzInput:
        """One input of `kind`; `budget` is the concentrator's DATAGRAM payload budget."""
        make = getattr(self, f"_{kind}")
        result: FuzzInput = make(budget)
        return result

    def size(self, budget: int) -> int:
        """0..budget+1, with the edges drawn often."""
        roll = self.rng.random()
        if roll < 0.5:
            return self.rng.randint(0, budget + 1)
        if roll < 0.75:
            return self.rng.choice((0, 1, 2, 3, 4, 5, 19, 20, 21, 39, 40, 41, 60))
        return self.rng.choice((budget - 1, budget, budget + 1))

    # -- IP packets ------------------------------------------------------------------------

    def _address(self, v6: bool, source: bool) -> bytes:
        rng, own = self.rng, self.own
        if source and rng.random() < 0.75:
            return ip_address(own.inner_v6 if v6 else own.inner_v4).packed
        pool = own.destinations_v6 if v6 else own.destinations_v4
        if rng.random() < 0.6 and pool:
            return ip_address(rng.choice(pool)).packed
        return rng.randbytes(16 if v6 else 4)

    def ip_packet(self, size: int) -> bytes:
        rng = self.rng
        roll = rng.random()
        version = 4 if roll < 0.55 else 6 if roll < 0.95 else rng.choice((0, 1, 5, 7, 15))
        protocol = rng.choice((1, 6, 17, 58, 0, 41, 47, 50, 132, rng.randrange(256)))
        header_size = 40 if version == 6 else 20
        payload = self._transport_payload(protocol, max(0, size - header_size))
        if version == 6:
            header = (
                struct.pack(
                    "!IHBB",
                    (6 << 28) | rng.getrandbits(28) if rng.random() < 0.2 else 6 << 28,
                    len(payload) if rng.random() < 0.85 else rng.getrandbits(16),
                    protocol,
                    rng.randrange(256),
                )
                + self._address(True, True)
                + self._address(True, False)
            )
        else:
            ihl = 5 if rng.random() < 0.9 else rng.randrange(16)
            total = header_size + len(payload) if rng.random() < 0.85 else rng.getrandbits(16)
            flags_frag = 0 if rng.random() < 0.85 else rng.getrandbits(16)
            header = struct.pack(
                "!BBHHHBBH",
                (version << 4) | ihl, rng.randrange(256), total, rng.getrandbits(16),
                flags_frag, rng.randrange(256), protocol, 0,
            ) + self._address(False, True) + self._address(False, False)  # fmt: skip
            if rng.random() < 0.9:
                header = header[:10] + checksum16(header).to_bytes(2, "big") + header[12:]
        return (header + payload)[:size]

    def _transport_payload(self, protocol: int, size: int) -> bytes:
        rng = self.rng
        if protocol in (1, 58) and size >= 8:
            icmp_type = rng.choice((8, 0, 3, 11, 128, 129, 1, 2, rng.randrange(256)))
            head = struct.pack("!BBHHH", icmp_type, rng.randrange(4), 0, ICMP_ECHO_ID, 0)
            return head + rng.randbytes(size - 8)
        if protocol == 6 and size >= 20:
            flags = rng.choice((0x02, 0x12, 0x10, 0x04, 0x01, 0x11, rng.randrange(256)))
            head = struct.pack(
                "!HHIIBBHHH",
                rng.randrange(65536), rng.choice((22, 80, 443, 5999, rng.randrange(65536))),
                rng.getrandbits(32), rng.getrandbits(32), (rng.randrange(5, 16)) << 4, flags,
                rng.randrange(65536), 0, 0,
            )  # fmt: skip
            return head + rng.randbytes(size - 20)
        if protocol == 17 and size >= 8:
            length = size if rng.random() < 0.8 else rng.randrange(65536)
            head = struct.pack("!HHHH", rng.randrange(65536), rng.randrange(65536), length, 0)
            return head + rng.randbytes(size - 8)
        return rng.randbytes(size)

    # -- the kinds -------------------------------------------------------------------------

    def _datagram_tunnel(self, budget: int) -> FuzzInput:
        size = self.size(budget)
        if self.rng.random() < 0.9:
            data = self.ip_packet(size)
            data += self.rng.randbytes(size - len(data))
            label = "ip"
        else:
            data, label = self.rng.randbytes(size), "random"
        return FuzzInput("datagram_tunnel", datagram=data, label=label)

    def next_protocol_type(self) -> int:
        value = self._protocol_types[self.pt_cursor % 0x10000]
        self.pt_cursor += 1
        return value

    def _datagram_session(self, budget: int) -> FuzzInput:
        rng = self.rng
        size = self.size(budget)
        if size < 4:
            return FuzzInput("datagram_session", datagram=rng.randbytes(size), label="short")
        if rng.random() < 0.25:
            protocol = rng.choice(SPECIAL_PROTOCOL_TYPES)
        else:
            protocol = self.next_protocol_type()
        self.protocol_types_used.add(protocol)
        tag = rng.getrandbits(16)
        if protocol in (0x0800, 0x86DD) and rng.random() < 0.8:
            packet = self.ip_packet(size - 4)
            packet += rng.randbytes(size - 4 - len(packet))
        else:
            packet = rng.randbytes(size - 4)
        header = protocol.to_bytes(2, "big") + tag.to_bytes(2, "big")
        label = f"pt={protocol:#06x}" if protocol in SPECIAL_PROTOCOL_TYPES else "pt=other"
        return FuzzInput("datagram_session", datagram=header + packet, label=label)

    def _control_tlv(self, budget: int) -> FuzzInput:
        rng = self.rng
        roll = rng.random()
        after = "none"
        fin = True
        if roll < 0.35:
            data = _tlv(
                0x00, bytes((rng.choice((1, 2)) << 4 | rng.getrandbits(4), rng.choice((1, 2))))
            )
            label = "access_report"
        elif roll < 0.55:
            data = _tlv(0x00, bytes((rng.getrandbits(8), rng.getrandbits(8))))
            label = "access_report_fields"
        elif roll < 0.65:
            data = _tlv(0x00, rng.randbytes(rng.choice((0, 1, 3, 4, 17))))
            label = "access_report_length"
        elif roll < 0.75:
            data = _tlv(0x00, bytes((0x10, 1)))[: rng.randint(0, 3)]
            label = "cut"
        elif roll < 0.82:
            data, label = b"", "empty"
        elif roll < 0.88:
            data = _tlv(0x00, bytes((0x20, 1)))[: rng.randint(1, 3)]
            fin, after, label = False, "reset", "reset"
        elif roll < 0.92:
            data = _tlv(0x00, bytes((0x20, 1))) * 2
            label = "two_reports"
        elif roll < 0.96:
            tlv_type = rng.choice((0x01, 0x02, 0x03))
            data = _tlv(tlv_type, rng.randbytes(rng.randint(0, 40)))
            label = f"session_tlv_{tlv_type}"
        elif roll < 0.98:
            data = _tlv(rng.randint(0x04, 0xFF), rng.randbytes(rng.randint(0, 20)))
            label = "unknown_type"
        else:
            data, label = rng.randbytes(rng.randint(1, 300)), "garbage"
        plan = StreamPlan(True, _split(rng, data), fin=fin, after=after)
        return FuzzInput("control_tlv", stream=plan, label=label)

    def session_message(self) -> FuzzInput:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            data, label = _tlv(0x01, rng.randbytes(rng.choice((0, 0, 1, 8, 255)))), "new_session"
        elif roll < 0.6:
            data = _tlv(0x03, rng.randbytes(rng.choice((1, 8, 16, 32, 255))))
            label = "join_random"
        elif roll < 0.65:
            data, label = _tlv(0x03, b""), "join_empty"
        elif roll < 0.7:
            data, label = _tlv(0x02, rng.randbytes(16)), "session_id_from_client"
        elif roll < 0.75:
            data, label = _tlv(0x00, bytes((0x20, 1))), "access_report_on_control"
        elif roll < 0.8:
            data, label = _tlv(0x01, b"") + _tlv(0x01, b""), "twice"
        elif roll < 0.85:
            data, label = _tlv(0x01, b"q" * 10)[: rng.randint(0, 11)], "cut"
        elif roll < 0.9:
            data, label = _tlv(rng.randint(0x04, 0xFF), rng.randbytes(4)), "unknown_type"
        else:
            data = _tlv(0x01, rng.randbytes(rng.randint(0, 255)))
            plan = StreamPlan(True, [bytes([b]) for b in data], control=True)
            return FuzzInput("session_message", stream=plan, label="byte_by_byte")
        return FuzzInput(
            "session_message", stream=StreamPlan(True, _split(rng, data), control=True), label=label
        )

    def _tcp_address(self) -> IPv4Address | IPv6Address:
        """A listed target (special or reachable addresses) or a random v4/v6 address."""
        rng = self.rng
        pool = self.own.connect_targets
        if rng.random() < 0.5 and pool:
            return ip_address(rng.choice(pool))
        if rng.random() < 0.5:
            return IPv4Address(rng.getrandbits(32))
        return IPv6Address(rng.getrandbits(128))

    def _tcp_preamble(self, budget: int) -> FuzzInput:
        rng = self.rng
        address = self._tcp_address()
        port = rng.choice((0, 1, 7, 9, 22, 80, 443, 5999, 65535, rng.randrange(65536)))
        connect = _tcp_connect_tlv(address, port)
        end = _tlv(0xFF, b"")
        roll = rng.random()
        if roll < 0.45:
            data, label = connect + end, "connect"
        elif roll < 0.55:
            value = rng.randbytes(rng.choice((0, 1, 2, 17, 19, 20, 40)))
            data, label = _tlv(0x00, value) + end, "connect_length"
        elif roll < 0.65:
            unknown = b"".join(
                _tlv(rng.randint(0x03, 0xFE), rng.randbytes(rng.randint(0, 30)))
                for _ in range(rng.randint(1, 4))
            )
            data, label = unknown + connect + end, "unknown_tlvs"
        elif roll < 0.7:
            data, label = end, "end_only"
        elif roll < 0.75:
            data, label = connect + connect + end, "two_connects"
        elif roll < 0.8:
            data, label = _tlv(0x02, rng.randbytes(rng.randint(0, 10))) + end, "error_from_client"
        elif roll < 0.85:
            data, label = _tlv(0x01, b"") + end, "connect_ok_from_client"
        elif roll < 0.9:
            data, label = rng.randbytes(rng.randint(1, 200)), "no_preamble"
        elif roll < 0.95:
            data, label = (connect + end)[: rng.randint(0, 20)], "cut"
        else:
            data = connect + _tlv(0xFF, b"x")
            label = "end_with_value"
        if rng.random() < 0.2:
            data += rng.randbytes(rng.randint(1, 500))  # bytestream after the preamble
        after_roll = rng.random()
        if after_roll < 0.45:
            fin, after = True, "none"
        elif after_roll < 0.7:
            fin, after = False, "reset"
        elif after_roll < 0.85:
            fin, after = False, "stop_reset"
        else:
            fin, after = False, "hold"
        plan = StreamPlan(False, _split(rng, data), fin=fin, after=after)
        return FuzzInput("tcp_preamble", stream=plan, label=label)

    def _odd_stream(self, budget: int) -> FuzzInput:
        """Frames no client should send: STREAM on the concentrator's stream IDs, one byte at
        the edge of (or past) a stream's window, a stream beyond the stream limit, data beyond
        a stream's final size, RESET_STREAM / STOP_SENDING on any stream."""
        rng = self.rng
        roll = rng.random()
        data = rng.randbytes(rng.randint(0, 40))
        frames: list[tuple[int, bytes]]
        if roll < 0.15:
            frames, label = [stream_frame(1 + 4 * rng.randrange(64), 0, data, True)], "server_bidi"
        elif roll < 0.3:
            frames, label = [stream_frame(3 + 4 * rng.randrange(64), 0, data, True)], "server_uni"
        elif roll < 0.75:
            special = SPECIAL_FRAMES[min(3, int((roll - 0.3) / 0.1125))]
            return FuzzInput("odd_stream", special=special, data=data, label=special)
        elif roll < 0.85:
            stream_id = rng.choice((0, 1, 2, 3)) + 4 * rng.randrange(200)
            frames = [reset_stream_frame(stream_id, rng.getrandbits(16), rng.getrandbits(20))]
            label = "reset_stream"
        else:
            stream_id = rng.choice((0, 1, 2, 3)) + 4 * rng.randrange(200)
            frames, label = [stop_sending_frame(stream_id, rng.getrandbits(16))], "stop_sending"
        return FuzzInput("odd_stream", frames=frames, label=label)

    def _raw_frame(self, budget: int) -> FuzzInput:
        rng = self.rng
        # not PADDING/PING (harmless), not STREAM/DATAGRAM (their own kinds), not
        # CONNECTION_CLOSE (that is just a close)
        frame_type = rng.choice(
            [t for t in range(0x01, 0x20) if t not in (0x01, 0x1C, 0x1D) and not 0x08 <= t <= 0x0F]
            + [0x30, rng.randrange(0x20, 0x4000)]
        )
        body = rng.randbytes(rng.randint(0, 40))
        return FuzzInput("raw_frame", frames=[(frame_type, body)], label=f"type={frame_type:#x}")


@dataclass
class FuzzContext:
    """What the generator knows of the concentrator and of us."""

    inner_v4: str
    inner_v6: str
    destinations_v4: tuple[str, ...] = ()
    destinations_v6: tuple[str, ...] = ()
    connect_targets: tuple[str, ...] = ()  # TCP Connect addresses (the rest are random)


@dataclass
class FuzzReport:
    inputs: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    connect_failures: int = 0
    closes_by_peer: int = 0
    closes_by_us: int = 0
    close_reasons: Counter[str] = field(default_factory=Counter)
    stalls: int = 0
    pt_cursor: int = 0
    protocol_types: set[int] = field(default_factory=set)
    datagram_sizes: set[int] = field(default_factory=set)
    budget: int = 0  # the concentrator's DATAGRAM payload budget, as the fuzzer computed it
    stopped: str = ""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "by_kind": {k: self.by_kind[k] for k in KINDS},
            "labels": dict(self.labels.most_common(80)),
            "connections": self.connections,
            "connect_failures": self.connect_failures,
            "closes_by_peer": self.closes_by_peer,
            "closes_by_us": self.closes_by_us,
            "close_reasons": dict(self.close_reasons.most_common(30)),
            "stalls": self.stalls,
            "pt_cursor": self.pt_cursor,
            "protocol_types": len(self.protocol_types),
            "datagram_sizes": sorted(self.datagram_sizes),
            "budget": self.budget,
            "stopped": self.stopped,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class _Executor:
    """Applies inputs to a live link (see fuzz())."""

    MAX_PENDING_DATAGRAMS = 64
    MAX_HELD_STREAMS = 16

    def __init__(
        self, link: Link, gen: InputGenerator, report: FuzzReport, trace: IO[str] | None = None
    ) -> None:
        self.link = link
        self.gen = gen
        self.report = report
        self.trace = trace
        self.held: deque[int] = deque()
        quic = link.quic
        self.budget = packet_datagram_budget(MAX_DATAGRAM_SIZE, len(quic._peer_cid.cid))
        self.own_budget = datagram_budget(quic)

    def record(self, index: int, item: FuzzInput) -> None:
        assert self.trace is not None
        quic = self.link.quic
        row: dict[str, Any] = {
            "i": index,
            "t": time.time(),
            "conn": quic._peer_cid.cid.hex(),
            "alpn": self.link.tunnel.alpn,
            "kind": item.kind,
            "label": item.label,
        }
        if item.datagram is not None:
            row["datagram"] = item.datagram[:64].hex()
            row["size"] = len(item.datagram)
        if item.stream is not None:
            plan = item.stream
            row["stream_id"] = quic.get_next_available_stream_id(plan.unidirectional)
            row["pieces"] = [piece.hex() for piece in plan.pieces]
            row.update(fin=plan.fin, after=plan.after)
        if item.frames:
            row["frames"] = [[t, body.hex()] for t, body in item.frames]
        if item.special:
            row.update(special=item.special, data=item.data.hex())
        self.trace.write(json.dumps(row) + "\n")

    async def apply(self, item: FuzzInput) -> None:
        link, quic = self.link, self.link.quic
        if item.datagram is not None:
            if len(item.datagram) > self.own_budget:
                item.datagram = item.datagram[: self.own_budget]
            self.report.datagram_sizes.add(len(item.datagram))
            self.report.budget = self.budget
            quic.send_datagram_frame(item.datagram)
            await self._drain_datagrams()
        elif item.stream is not None:
            await self._apply_stream(item.stream)
        for frame_type, body in item.frames:
            quic.inject(frame_type, body)
        if item.special:
            self._special_frame(item.special, item.data)
        link.transmit()

    def _special_frame(self, special: str, data: bytes) -> None:
        quic = self.link.quic
        rng = self.gen.rng
        if special in ("uni_high_offset", "bidi_high_offset"):
            # one byte at the edge of (or past) the stream's window (RFC 9000 §4.1)
            uni = special == "uni_high_offset"
            window = (
                quic._remote_max_stream_data_uni
                if uni
                else quic._remote_max_stream_data_bidi_remote
            )
            offset = window - 1 if rng.random() < 0.7 else window + rng.randint(0, 100)
            quic.inject(*stream_frame(quic.claim_stream_id(uni), max(0, offset), b"x", False))
        elif special == "beyond_stream_limit":  # STREAM_LIMIT_ERROR (RFC 9000 §4.6)
            uni = rng.random() < 0.5
            limit = quic._remote_max_streams_uni if uni else quic._remote_max_streams_bidi
            stream_id = 4 * (limit + rng.randint(0, 10)) + (2 if uni else 0)
            quic.inject(*stream_frame(stream_id, 0, data, True))
        else:  # a FIN at some size, then data beyond it: FINAL_SIZE_ERROR (RFC 9000 §4.5)
            stream_id = quic.claim_stream_id(rng.random() < 0.5)
            quic.inject(*stream_frame(stream_id, 0, data[:4], True))
            quic.inject(*stream_frame(stream_id, 8, b"beyond", False))

    async def _drain_datagrams(self) -> None:
        """Keep aioquic's datagram queue short: DATAGRAMs are congestion controlled."""
        quic = self.link.quic
        if len(quic._datagrams_pending) < self.MAX_PENDING_DATAGRAMS:
            return
        self.link.transmit()
        deadline = time.monotonic() + 2.0
        while len(quic._datagrams_pending) > self.MAX_PENDING_DATAGRAMS // 4:
            if self.link.closed:
                return
            if time.monotonic() > deadline:
                self.report.stalls += 1
                quic._datagrams_pending.clear()
                return
            await asyncio.sleep(0.002)

    async def _apply_stream(self, plan: StreamPlan) -> None:
        link, quic = self.link, self.link.quic
        if plan.control:
            stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
            # The TunnelConnection must expect the concentrator's answer on its control stream.
            link.tunnel._control_sent = True
        else:
            blocked = (
                quic._streams_blocked_uni if plan.unidirectional else quic._streams_blocked_bidi
            )
            deadline = time.monotonic() + 2.0
            while len(blocked) > 4 and not link.closed and time.monotonic() < deadline:
                link.transmit()
                await asyncio.sleep(0.005)  # the concentrator grants more as streams finish
            stream_id = quic.get_next_available_stream_id(is_unidirectional=plan.unidirectional)
        pieces = plan.pieces or [b""]
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            quic.send_stream_data(stream_id, piece, end_stream=last and plan.fin)
            if not last:
                link.transmit()  # each piece in its own packet, so its own STREAM frame
        if plan.after in ("reset", "stop_reset"):
            link.transmit()
            if plan.after == "stop_reset" and not plan.unidirectional:
                with contextlib.suppress(ValueError):
                    quic.stop_stream(stream_id, 0)
            quic.reset_stream(stream_id, 0)
        elif plan.after == "hold":
            self.held.append(stream_id)
            if len(self.held) > self.MAX_HELD_STREAMS:
                old = self.held.popleft()
                with contextlib.suppress(ValueError):
                    quic.reset_stream(old, 0)


async def fuzz(
    target: Target,
    count: int,
    seed: int | str,
    max_seconds: float,
    context: FuzzContext,
    pt_seed: int | str = 0,
    pt_cursor: int = 0,
    trace: Path | None = None,
) -> FuzzReport:
    """Feed `count` inputs (bounded by `max_seconds`) through real connections to the
    concentrator, reconnecting whenever one is closed. `trace`: a JSON line per input (with
    the concentrator's connection ID, as its log names the connection) to find what an error
    in the concentrator's log followed."""
    gen = InputGenerator(seed, context, pt_seed=pt_seed, pt_cursor=pt_cursor)
    report = FuzzReport()
    sink = trace.open("a") if trace is not None else None
    started = time.monotonic()
    deadline = started + max_seconds
    remotes = (target.remote, *target.remotes)
    link: Link | None = None
    executor: _Executor | None = None
    failures_in_a_row = 0
    try:
        while report.inputs < count:
            if time.monotonic() >= deadline:
                report.stopped = "time"
                break
            if link is None or link.closed:
                if link is not None:
                    _record_close(link, report)
                    await link.close()
                    link = None
                session = gen.rng.random() < SESSION_CONNECTIONS
                stream_mode = gen.rng.random() < 0.9
                try:
                    link = await target.connect(
                        "qt-session" if session else "qt",
                        stream_mode=stream_mode,
                        max_events=256,
                        remote=gen.rng.choice(remotes),
                        max_datagram_size=FUZZ_MAX_DATAGRAM_SIZE,
                    )
                except (ConnectionError, OSError):
                    report.connect_failures += 1
                    failures_in_a_row += 1
                    if failures_in_a_row >= 20:
                        report.stopped = "unreachable"
                        break
                    await asyncio.sleep(0.2)
                    continue
                failures_in_a_row = 0
                report.connections += 1
                executor = _Executor(link, gen, report, sink)
                if session:  # the control stream comes first (session draft §4.1)
                    await _one(executor, gen.session_message(), report)
                    continue
            assert executor is not None
            kind = gen.kind(link.session_mode, link.tunnel.stream_mode)
            await _one(executor, gen.next(kind, executor.budget), report)
            if report.inputs % 8 == 0:
                await asyncio.sleep(0)  # let the loop read what came back
        else:
            report.stopped = "count"
        if link is not None:
            await asyncio.sleep(0.2)
            if link.closed:
                _record_close(link, report)
    finally:
        if link is not None:
            await link.close()
        if sink is not None:
            sink.close()
    report.pt_cursor = gen.pt_cursor
    report.protocol_types = gen.protocol_types_used
    report.elapsed_s = time.monotonic() - started
    return report


async def _one(executor: _Executor, item: FuzzInput, report: FuzzReport) -> None:
    report.inputs += 1
    report.by_kind[item.kind] += 1
    report.labels[f"{item.kind}:{item.label}"] += 1
    if executor.trace is not None:
        executor.record(report.inputs, item)
    await executor.apply(item)


def _record_close(link: Link, report: FuzzReport) -> None:
    closed = link.peer.closed
    if closed is None:
        report.closes_by_us += 1
        report.close_reasons["(ended locally)"] += 1
        return
    if closed.by_peer:
        report.closes_by_peer += 1
    else:
        report.closes_by_us += 1
    side = "concentrator" if closed.by_peer else "us"
    report.close_reasons[f"{side}: {closed.reason[:70]}"] += 1


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> Target:
    return Target(
        remote=args.remote[0],
        remotes=tuple(args.remote[1:]),
        port=args.port,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        inner_v4=args.inner_v4,
        inner_v6=args.inner_v6,
        own_addresses=tuple(args.own_address),
        server=args.server,
        local_address=args.local_address,
    )


def build_parser() -> argparse.ArgumentParser:
    p = SentenceParser(prog="python -m testbed.hostile", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("attacks", "fuzz"):
        s = sub.add_parser(name)
        s.add_argument("--remote", action="append", required=True, help="concentrator address")
        s.add_argument("--port", type=int, default=4433)
        s.add_argument("--ca", type=Path, required=True)
        s.add_argument("--cert", type=Path, required=True)
        s.add_argument("--key", type=Path, required=True)
        s.add_argument("--inner-v4", required=True, help="our tunnel address (IPv4)")
        s.add_argument("--inner-v6", required=True)
        s.add_argument("--own-address", action="append", default=[], help="the concentrator's")
        s.add_argument("--server", default="10.200.1.2", help="a host behind the concentrator")
        s.add_argument("--local-address", help="bind our sockets to this address")
        s.add_argument("--seed", default="1")
        s.add_argument("--out", type=Path, required=True)
    attacks = sub.choices["attacks"]
    attacks.add_argument("--attacks", default=",".join(ATTACKS))
    attacks.add_argument("--duration", type=float, required=True, help="seconds, at most")
    attacks.add_argument("--scale", type=float, default=1.0, help="multiplies every count")
    fuzz_p = sub.choices["fuzz"]
    fuzz_p.add_argument("--count", type=int, required=True)
    fuzz_p.add_argument("--max-seconds", type=float, required=True)
    fuzz_p.add_argument("--pt-seed", default="0")
    fuzz_p.add_argument("--pt-cursor", type=int, default=0)
    fuzz_p.add_argument("--destination", action="append", default=[], help="IP destinations")
    fuzz_p.add_argument("--connect-target", action="append", default=[], help="TCP Connect to")
    fuzz_p.add_argument("--trace", type=Path, help="a JSON line per input into this file")
    return p


def main(argv: list[str] | None = None) -> int:
    # parsed inside run_command: a mistake on the command line is one line too (exit code 2)
    return run_command("hostile", lambda: _run(build_parser().parse_args(argv)))


def _run(args: argparse.Namespace) -> int:
    target = _target(args)
    if args.command == "attacks":
        if not 0 < args.duration <= 7200 or args.scale <= 0:
            print("hostile: error: --duration must be 0..7200 s and --scale > 0.", file=sys.stderr)
            return 2
        names = [n for n in args.attacks.split(",") if n]
        runs = run(run_attacks(target, names, args.duration, args.seed, args.out, args.scale))
        print(f"hostile: {runs} attack runs -> {args.out}", flush=True)
        return 0
    if not 0 < args.count <= 10_000_000 or not 0 < args.max_seconds <= 7200:
        print("hostile: error: --count must be 1..1e7 and --max-seconds 0..7200.", file=sys.stderr)
        return 2
    destinations = [*args.destination, *args.own_address, args.server]
    context = FuzzContext(
        inner_v4=args.inner_v4,
        inner_v6=args.inner_v6,
        destinations_v4=tuple(d for d in destinations if ":" not in d),
        destinations_v6=tuple(d for d in destinations if ":" in d),
        connect_targets=tuple([*args.connect_target, *args.own_address, args.server]),
    )
    report = run(
        fuzz(
            target,
            args.count,
            args.seed,
            args.max_seconds,
            context,
            args.pt_seed,
            args.pt_cursor,
            args.trace,
        )
    )
    text = json.dumps(report.as_dict())
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"hostile: {report.inputs} inputs, stopped on {report.stopped} -> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
