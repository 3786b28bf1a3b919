"""The one place that reaches into aioquic 1.7.2 internals.

aioquic has no public API for (a) custom transport parameters, (b) the size of
the largest DATAGRAM frame it will actually send, (c) the path's smoothed RTT and
its queue of pending datagrams, (d) a server asking for a client certificate and
reading it back (see tunnel/policy/client_auth.py for why the concentrator needs that),
(e) receive credit tied to what the application consumed (aioquic doubles its
windows as data arrives, which lets a peer make it allocate without bound), (f) congestion
control, pacing and datagram fates, the reset of congestion and RTT state on a migration
(RFC 9000 §9.4), and (g) a fast path for the packets that carry only DATAGRAM and ACK frames
(FAST_DATAGRAM_PATH).
Everything the tunnel needs from those internals is here, behind small typed
functions, so an aioquic upgrade has one file to check.
Importing this module fails with one clear sentence if the internals moved.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from aioquic import tls
from aioquic._buffer import Buffer, BufferReadError
from aioquic._crypto import AEAD, AEAD_NONCE_LENGTH, CryptoError, HeaderProtection
from aioquic.buffer import encode_uint_var, size_uint_var
from aioquic.quic import crypto as aioquic_crypto
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import QuicCongestionControl, create_congestion_control
from aioquic.quic.connection import (
    ACK_FRAME_CAPACITY,
    END_STATES,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    PING_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
    QuicConnectionError,
    QuicConnectionId,
    QuicConnectionState,
    QuicNetworkPath,
    QuicReceiveContext,
    stream_is_unidirectional,
)
from aioquic.quic.crypto import CryptoPair, KeyUnavailableError
from aioquic.quic.packet import (
    NON_ACK_ELICITING_FRAME_TYPES,
    PACKET_FIXED_BIT,
    PACKET_NUMBER_MAX_SIZE,
    PACKET_SPIN_BIT,
    PROBING_FRAME_TYPES,
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    decode_packet_number,
    push_ack_frame,
)
from aioquic.quic.packet_builder import (
    PACKET_NUMBER_SEND_SIZE,
    QuicDeliveryState,
    QuicPacketBuilder,
    QuicPacketBuilderStop,
    QuicSentPacket,
)
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import (
    K_MICRO_SECOND,
    K_SECOND,
    MAX_ACK_RANGES,
    QuicPacketPacer,
    QuicPacketSpace,
)
from aioquic.quic.stream import QuicStream, StreamFinishedError
from aioquic.tls import SessionTicket
from cryptography import x509
from cryptography.exceptions import InvalidTag

from tunnel.policy.tickets import TicketIdentity, TicketStore
from tunnel.protocol import quic_crypto
from tunnel.protocol.bbr import BbrCongestionControl
from tunnel.protocol.congestion import PacedNoCongestionControl
from tunnel.protocol.pmtu import PmtuSearch, PmtuState
from tunnel.protocol.quic_crypto import FastAead, FastHeaderProtection
from tunnel.protocol.stateless_reset import is_reset, reset_token, tag_connection_id

# Provisional codepoint of the quic_tunnel_stream_mode transport parameter
# (-tcp draft §Connection establishment: "value TBD"). RFC 9000 §22.3 has no
# private-use range for transport parameters, so we pick a value that
#   * is not of the reserved/greased form 31 * N + 27 (0x71745F73 % 31 == 1),
#   * lies far above the 0x00-0x3f range kept for standards action, and
#   * spells "qt_s" in ASCII, to be recognisable in a packet dump.
# It was not checked against the live IANA registry (no network here); change it
# HERE only, both peers must agree on it.
STREAM_MODE_TP_ID: Final[int] = 0x71745F73

# Provisional codepoint of our quic_tunnel_payload transport parameter. Tunnel mode has no
# Protocol Type, so what its datagrams carry is "signalled out of band" (tunnel draft §4): a
# client whose payload is not IP announces it here, value the payload's EtherType as a varint
# (0x6558, Transparent Ethernet Bridging, the value session draft §4 names for Ethernet
# frames). Absent means IP, so peers that do not know the parameter keep working; the
# concentrator closes a connection whose payload it does not serve, with a reason. Chosen like
# STREAM_MODE_TP_ID: not 31 * N + 27 (0x71745F70 % 31 == 29), far above 0x3f, "qt_p" in ASCII.
PAYLOAD_TP_ID: Final[int] = 0x71745F70

# Provisional codepoint of our quic_tunnel_tag_sequence transport parameter, empty value: "my
# Packet Tags number the session's packets, one sequence across its connections". The session
# draft (§4, §4.1.1) leaves the tag opaque, its meaning the sender's ("free to decide its
# semantic value"; timestamps are its example) and its negotiation out of scope: a receiver may
# reorder and drop duplicates by tag only when the sender says they are a sequence. We always
# send it; from a peer that does not, tags are not interpreted (a review found a peer tagging
# with timestamps or per-connection counters losing half its packets as "duplicates"). Chosen
# like the others: not 31 * N + 27 (0x71745F74 % 31 == 2), far above 0x3f, "qt_t" in ASCII.
TAG_SEQUENCE_TP_ID: Final[int] = 0x71745F74

# RFC 9002 §6.2.2: the RTT assumed before the first sample (aioquic uses the same 333 ms); the
# pacer needs one at once for congestion control "none", whose rate is known from the start.
INITIAL_RTT: Final[float] = 0.333
# share of a packet's time the pacer forgives (float residues of the bucket arithmetic)
PACER_TOLERANCE: Final[float] = 0.001

# UDP payload of our QUIC packets, both programs: a 1500-byte Ethernet MTU minus the IPv6 (40)
# and UDP (8) headers, so one tunnel packet never needs IP fragmentation outside, over IPv4 or
# IPv6 (measured 224-399 Mbit/s against aioquic's default of 1200, issue 4).
MAX_DATAGRAM_SIZE: Final[int] = 1452
# The largest DATAGRAM frame we accept (RFC 9221 §3): any, the packet size is the real limit.
MAX_DATAGRAM_FRAME_SIZE: Final[int] = 65535
# aioquic's connection ID length, which the datagram budget depends on.
CONNECTION_ID_LENGTH: Final[int] = 8

# Frames every 1-RTT packet may carry (RFC 9000 §12.4, Table 3): the fast frame loop skips
# aioquic's per-frame epoch check for them (it hashes an enum for every frame).
ONE_RTT_FRAME_TYPES: Final = frozenset(
    (QuicFrameType.PADDING, QuicFrameType.PING, QuicFrameType.ACK, QuicFrameType.ACK_ECN)
)

# AEAD tag added to every protected packet: 16 bytes for all three TLS 1.3 suites
# QUIC uses (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305; RFC 9001 §5.3).
AEAD_TAG_SIZE: Final[int] = 16

# 1-RTT short header without the Destination Connection ID: first byte plus the
# packet number, which aioquic always encodes on PACKET_NUMBER_SEND_SIZE bytes.
SHORT_HEADER_FIXED_SIZE: Final[int] = 1 + PACKET_NUMBER_SEND_SIZE

# DATAGRAM frame type 0x31 (with length) encodes on one byte (RFC 9221 §4).
DATAGRAM_FRAME_TYPE_SIZE: Final[int] = 1

# reason_phrase of the ConnectionTerminated event a received stateless reset produces
STATELESS_RESET_REASON: Final[str] = "stateless reset from the peer (RFC 9000 §10.3)"

# Receive credit of every unidirectional stream the peer opens, announced as
# initial_max_stream_data_uni and never raised. Such a stream carries exactly one TLV and its
# FIN: an Access Report (-tunnel-00 §7.1 "Each Access Report TLV MUST be sent on a separate
# stream") or the one New Session / Join Session / Session ID of a connection (-tunnel-session-00
# §4.1); a TLV is at most 1 + 1 + 255 = 257 bytes (one-byte length). 512 holds one with room to
# spare; a peer that sends more gets FLOW_CONTROL_ERROR from aioquic.
TLV_STREAM_WINDOW: Final[int] = 512

# Without an explicit connection_window, a stream-mode connection's receive window is
# max(configuration.max_data, this many stream windows): several relayed streams at full speed
# at once, while a peer can make aioquic hold at most that much out of order, whatever the
# number of streams.
CONNECTION_WINDOW_STREAMS: Final[int] = 4

# Bytes held for the TLS handshake: CRYPTO data out of order (aioquic zero-fills gaps, and
# allows 512 KiB per packet number space, before the peer is authenticated) plus the partial
# TLS message waiting for its end. RFC 9000 §7.5 asks for at least 4096; a handshake flight
# with a certificate chain is a few kB (quic-go allows 16 KiB out of order).
CRYPTO_BUFFER_LIMIT: Final[int] = 64 * 1024

_REQUIRED_INTERNALS = (
    "_network_paths",
    "_write_datagram_frame",
    "_serialize_transport_parameters",
    "_parse_transport_parameters",
    "_datagrams_pending",
    "_loss",
    "_peer_cid",
    "_remote_max_datagram_frame_size",
    "_max_datagram_size",
    "_initialize",
    "_write_stream_limits",
    "_write_connection_limits",
    "_handle_crypto_frame",
    "_on_max_stream_data_delivery",
    "_streams",
    "_stream_is_discarded",
    "_crypto_streams",
    "_quic_logger",
    "_configuration",
    "_local_max_data",
    "_local_max_streams_bidi",
    "_local_max_stream_data_bidi_local",
    "_local_max_stream_data_bidi_remote",
    "_local_max_stream_data_uni",
    "_host_cids",
    "_replenish_connection_ids",
    "_local_initial_source_connection_id",
    "_original_destination_connection_id",
    "_peer_cid",
    "_close_end",
    "_close_event",
    "_state",
    "_is_client",
    "_events",
    "_peer_cid_available",
    "_packet_number",
    "_cryptos",
    "_write_path_challenge_frame",
    "_handle_path_response_frame",
    "_retire_peer_cid",
    # the datagram fast path (issue 14)
    "_QuicConnection__frame_handlers",
    "_ack_delay",
    "_ack_eliciting_sent_since_receipt",
    "_add_network_path",
    "_close_at",
    "_close_pending",
    "_handshake_confirmed",
    "_handshake_complete",
    "_handshake_done_pending",
    "_idle_timeout",
    "_local_ack_delay_exponent",
    "_local_max_streams_uni",
    "_logger",
    "_on_ack_delivery",
    "_on_ping_delivery",
    "_pacing_at",
    "_payload_received",
    "_ping_pending",
    "_probe_pending",
    "_remote_preferred_address",
    "_retire_connection_ids",
    "_spaces",
    "_spin_bit",
    "_spin_highest_pn",
    "_streams_blocked_pending",
    "_streams_queue",
    "_use_reserved_peer_cid",
)
# what the fast path reads and writes of a packet number space, a crypto pair, a sent packet
_REQUIRED_SPACE_FIELDS = (
    "ack_at",
    "ack_queue",
    "discarded",
    "expected_packet_number",
    "largest_received_packet",
    "largest_received_time",
    "received_packets",
    "sent_packets",
)
_REQUIRED_CRYPTO_FIELDS = (
    "aead_tag_size",
    "key_phase",
    "encrypt_packet",
    "decrypt_packet",
    "send",
    "recv",
    "_update_key_requested",
    "_update_key",
)
# what _seal_short and _open_short use of a direction's keys
_REQUIRED_CONTEXT_FIELDS = ("aead", "hp", "key_phase")
_REQUIRED_SENT_PACKET_FIELDS = {
    "epoch",
    "in_flight",
    "is_ack_eliciting",
    "is_crypto_packet",
    "packet_number",
    "packet_type",
    "sent_time",
    "sent_bytes",
    "delivery_handlers",
    "quic_logger_frames",
}
_REQUIRED_TLS_INTERNALS = (
    "_request_client_certificate",
    "_peer_certificate",
    "_peer_certificate_chain",
    "_receive_buffer",
)


def _check_aioquic_internals() -> None:
    probe = QuicConnection(configuration=QuicConfiguration(is_client=True))
    missing = [name for name in _REQUIRED_INTERNALS if not hasattr(probe, name)]
    probe.connect(("192.0.2.1", 443), now=0.0)  # creates the TLS context
    missing += [f"tls.{name}" for name in _REQUIRED_TLS_INTERNALS if not hasattr(probe.tls, name)]
    stream = QuicStream(stream_id=0)
    sender = stream.sender
    missing += [
        f"sender.{n}"
        for n in ("_buffer_start", "_buffer_stop", "_buffer_fin", "_reset_error_code")
        if not hasattr(sender, n)
    ]
    missing += [
        f"receiver.{n}" for n in ("_buffer", "highest_offset") if not hasattr(stream.receiver, n)
    ]
    missing += [
        f"_local_max_data.{n}" for n in ("used", "sent") if not hasattr(probe._local_max_data, n)
    ]
    missing += [
        f"_loss.{n}"
        for n in (
            "_cc",
            "_pacer",
            "_rtt_variance",
            "_rtt_min",
            "_rtt_initialized",
            "_rtt_first_sample_time",
            "_pto_count",
            "_rtt_latest",
            "max_ack_delay",
            "get_probe_timeout",
            "on_ack_received",
            "on_packet_sent",
            "_on_packets_lost",
            "spaces",
        )
        if not hasattr(probe._loss, n)
    ]
    space = probe._spaces[tls.Epoch.ONE_RTT]
    missing += [f"space.{n}" for n in _REQUIRED_SPACE_FIELDS if not hasattr(space, n)]
    crypto = probe._cryptos[tls.Epoch.ONE_RTT]
    missing += [f"crypto.{n}" for n in _REQUIRED_CRYPTO_FIELDS if not hasattr(crypto, n)]
    missing += [f"send.{n}" for n in _REQUIRED_CONTEXT_FIELDS if not hasattr(crypto.send, n)]
    missing += [f"HeaderProtection.{n}" for n in ("_mask",) if not hasattr(HeaderProtection, n)]
    probe_aead = AEAD(b"aes-128-gcm", bytes(16), bytes(AEAD_NONCE_LENGTH))
    missing += [f"AEAD.{n}" for n in ("_aead", "_iv") if not hasattr(probe_aead, n)]
    missing += [
        f"_pacer.{n}"
        for n in ("next_send_time", "update_after_send")
        if not hasattr(probe._loss._pacer, n)
    ]
    # the fast path builds QuicSentPacket itself: it must have exactly these fields
    sent_fields = {f.name for f in dataclasses.fields(QuicSentPacket)}
    if sent_fields != _REQUIRED_SENT_PACKET_FIELDS:
        missing.append(f"QuicSentPacket fields {sorted(sent_fields)}")
    if missing or not hasattr(probe._loss, "_rtt_smoothed"):
        raise ImportError(
            "tunnel.protocol.quic_ext needs aioquic 1.7.2 internals that this aioquic lacks "
            f"({', '.join(missing) or '_loss._rtt_smoothed'}): install aioquic==1.7.2."
        )


_check_aioquic_internals()

# RFC 9001 §5.4.2: header protection samples 16 bytes starting 4 bytes after the packet
# number's first byte, whatever the packet number's length
_SAMPLE_SIZE = 16
_SAMPLE_OFFSET = 4
_SHORT_HEADER_MASK = 0x1F  # §5.4.1: the bits of a short header's first byte that are masked


def _seal_short_python(
    pair: CryptoPair, header: bytes, payload: bytes, packet_number: int
) -> bytes:
    """CryptoPair.encrypt_packet for a short header ending in a packet number of
    PACKET_NUMBER_SEND_SIZE bytes (as aioquic sends): the same bytes, with header protection
    applied to the bytes it masks instead of to a copy of the whole packet."""
    if pair._update_key_requested:
        pair._update_key("local_update")
    send = pair.send
    aead, hp = send.aead, send.hp
    assert aead is not None and hp is not None, "Encryption key is not available"  # as aioquic
    # AEAD.encrypt's own steps (RFC 9001 §5.3: the nonce is the IV XOR the packet number),
    # without its wrapper's call: about half of what the call cost
    protected = aead._aead.encrypt(
        (aead._iv ^ packet_number).to_bytes(AEAD_NONCE_LENGTH, "big"), payload, header
    )
    start = _SAMPLE_OFFSET - PACKET_NUMBER_SEND_SIZE
    mask = hp._mask(protected[start : start + _SAMPLE_SIZE])
    return b"".join(
        (
            bytes((header[0] ^ (mask[0] & _SHORT_HEADER_MASK),)),
            header[1:-PACKET_NUMBER_SEND_SIZE],
            (
                int.from_bytes(header[-PACKET_NUMBER_SEND_SIZE:], "big")
                ^ int.from_bytes(mask[1 : 1 + PACKET_NUMBER_SEND_SIZE], "big")
            ).to_bytes(PACKET_NUMBER_SEND_SIZE, "big"),
            protected,
        )
    )


def _open_short_python(
    pair: CryptoPair, data: bytes, pn_offset: int, expected_packet_number: int
) -> tuple[bytes, bytes, int]:
    """CryptoPair.decrypt_packet for a short-header packet whose packet number starts at
    `pn_offset`: the same results and errors, with header protection removed from the bytes
    it masks instead of from a copy of the whole packet. A packet with the other key phase
    (a key update) takes aioquic's own path."""
    recv = pair.recv
    aead, hp = recv.aead, recv.hp
    if aead is None or hp is None:
        raise KeyUnavailableError("Decryption key is not available")  # as aioquic
    sample = pn_offset + _SAMPLE_OFFSET
    if sample + _SAMPLE_SIZE > len(data):
        raise CryptoError("Packet is too short to sample")
    mask = hp._mask(data[sample : sample + _SAMPLE_SIZE])
    first_byte = data[0] ^ (mask[0] & _SHORT_HEADER_MASK)
    if (first_byte & 4) >> 2 != recv.key_phase:
        return pair.decrypt_packet(data, pn_offset, expected_packet_number)
    pn_length = (first_byte & 0x03) + 1
    end = pn_offset + pn_length
    truncated = int.from_bytes(data[pn_offset:end], "big") ^ int.from_bytes(
        mask[1 : 1 + pn_length], "big"
    )
    plain_header = b"".join(
        (bytes((first_byte,)), data[1:pn_offset], truncated.to_bytes(pn_length, "big"))
    )
    packet_number = decode_packet_number(truncated, pn_length * 8, expected_packet_number)
    nonce = (aead._iv ^ packet_number).to_bytes(AEAD_NONCE_LENGTH, "big")
    try:
        payload = aead._aead.decrypt(nonce, data[end:], plain_header)
    except InvalidTag as exc:
        raise CryptoError(str(exc)) from None  # as AEAD.decrypt
    return plain_header, payload, packet_number


def _datagram_frames_python(
    prefix: bytes, pending: deque[bytes], room: int, min_size: int
) -> tuple[bytes, int, bool]:
    """A 1-RTT packet's payload: `prefix` (frames already written, e.g. an ACK), then a
    DATAGRAM frame with its length (RFC 9221 §4) for each datagram at the head of `pending`
    that fits in `room` bytes, taken off `pending` in order; PADDING up to `min_size` bytes if
    it is shorter (header protection's sample, RFC 9001 §5.4.2). An empty payload stays empty.
    Returns (payload, datagrams taken, padded); quic_crypto.c's datagram_frames does the same
    in one call."""
    parts = [prefix]
    used = len(prefix)
    taken = 0
    for data in pending:
        length = len(data)
        needed = 1 + size_uint_var(length) + length
        if room - used < needed:
            break
        parts += (_DATAGRAM_FRAME_TYPE, encode_uint_var(length), data)
        used += needed
        taken += 1
    for _ in range(taken):
        pending.popleft()
    padded = 0 < used < min_size
    if padded:
        parts.append(bytes(min_size - used))
    return b"".join(parts), taken, padded


_DATAGRAM_FRAME_TYPE = encode_uint_var(QuicFrameType.DATAGRAM_WITH_LENGTH)
# RFC 9001 §5.4.2: a packet's payload is padded so that header protection can sample 16 bytes
# 4 after the packet number's start, whose length is PACKET_NUMBER_SEND_SIZE as aioquic sends
_MIN_PAYLOAD = PACKET_NUMBER_MAX_SIZE - PACKET_NUMBER_SEND_SIZE
_NO_DATAGRAMS: deque[bytes] = deque()


class _TwinnedAEAD(AEAD):
    """aioquic's AEAD with its twin in C (tunnel/protocol/quic_crypto.c), made together."""

    def __init__(self, cipher_name: bytes, key: bytes, iv: bytes) -> None:
        super().__init__(cipher_name, key, iv)
        assert not isinstance(_EXTENSION, str)  # installed only with the extension
        self.fast: FastAead = _EXTENSION.Aead(cipher_name, key, iv)


class _TwinnedHeaderProtection(HeaderProtection):
    """aioquic's HeaderProtection with its twin in C, made together."""

    def __init__(self, cipher_name: bytes, key: bytes) -> None:
        super().__init__(cipher_name, key)
        assert not isinstance(_EXTENSION, str)
        self.fast: FastHeaderProtection = _EXTENSION.HeaderProtection(cipher_name, key)


def _seal_short_c(pair: CryptoPair, header: bytes, payload: bytes, packet_number: int) -> bytes:
    """_seal_short_python's bytes, in one C call (RFC 9001 §5.3 and §5.4)."""
    if pair._update_key_requested:
        pair._update_key("local_update")
    send = pair.send
    aead, hp = send.aead, send.hp
    assert aead is not None and hp is not None, "Encryption key is not available"  # as aioquic
    fast: FastAead = aead.fast  # type: ignore[attr-defined]
    return fast.seal(hp.fast, header, payload, packet_number)  # type: ignore[attr-defined]


def _open_short_c(
    pair: CryptoPair, data: bytes, pn_offset: int, expected_packet_number: int
) -> tuple[bytes, bytes, int]:
    """_open_short_python's results and errors, in one C call; a packet with the other key
    phase (a key update) takes aioquic's own path."""
    recv = pair.recv
    aead, hp = recv.aead, recv.hp
    if aead is None or hp is None:
        raise KeyUnavailableError("Decryption key is not available")  # as aioquic
    opened: tuple[bytes, bytes, int] | None = aead.fast.open(  # type: ignore[attr-defined]
        hp.fast,  # type: ignore[attr-defined]
        data,
        pn_offset,
        expected_packet_number,
        recv.key_phase,
    )
    if opened is None:
        return pair.decrypt_packet(data, pn_offset, expected_packet_number)
    return opened


# The C packet protection (issue 14 item 5), when make built it: every key aioquic sets up
# from here on gets its twin in C, because CryptoContext.setup, the one place that makes keys,
# takes its classes from aioquic.quic.crypto's namespace. Without it, the Python steps.
_EXTENSION = quic_crypto.load()
FAST_CRYPTO_MISSING: str | None = _EXTENSION if isinstance(_EXTENSION, str) else None
"""Why fast-path packets are protected in Python, or None: they are protected in C."""
if not isinstance(_EXTENSION, str):
    aioquic_crypto.AEAD = _TwinnedAEAD  # type: ignore[attr-defined]
    aioquic_crypto.HeaderProtection = _TwinnedHeaderProtection  # type: ignore[attr-defined]

_Seal = Callable[[CryptoPair, bytes, bytes, int], bytes]
_Open = Callable[[CryptoPair, bytes, int, int], tuple[bytes, bytes, int]]
_Frames = Callable[[bytes, deque[bytes], int, int], tuple[bytes, int, bool]]


def _steps(implementation: str) -> tuple[_Seal, _Open, _Frames]:
    """The fast path's seal, open and DATAGRAM framing: in C ("c") or in Python ("python")."""
    if implementation == "c":
        if isinstance(_EXTENSION, str):
            raise ValueError(_EXTENSION)
        return _seal_short_c, _open_short_c, _EXTENSION.datagram_frames
    if implementation == "python":
        return _seal_short_python, _open_short_python, _datagram_frames_python
    raise ValueError(f"packet protection is 'c' or 'python', not {implementation!r}")


_seal_short, _open_short, _datagram_frames = _steps("python" if FAST_CRYPTO_MISSING else "c")


def use_packet_protection(implementation: str) -> None:
    """Protect fast-path packets and write their DATAGRAM frames in C ("c", the default once
    make built the extension) or with the Python steps ("python"), from now on, in every
    connection; for benchmarks that compare the two (experiments/bench_datagram_path.py). A
    ValueError says why "c" is not there."""
    global _seal_short, _open_short, _datagram_frames
    _seal_short, _open_short, _datagram_frames = _steps(implementation)
    TunnelQuicConnection._seal = staticmethod(_seal_short)


def steer_connection_id(cid: bytes, worker: int, workers: int) -> bytes:
    """`cid` with its first byte made congruent to `worker` modulo `workers`, the rule the
    concentrator's SO_REUSEPORT program steers datagrams by (tunnel/aio/reuseport.py); the
    byte stays spread over every value that steers there (the rest of `cid` is untouched)."""
    if not 0 <= worker < workers <= 256:
        raise ValueError(f"worker {worker} of {workers} is not a worker index")
    choices = (255 - worker) // workers + 1  # the bytes b < 256 with b % workers == worker
    return bytes((worker + workers * (cid[0] % choices),)) + cid[1:]


STEERED_DCID_LENGTH: Final = 9
"""A client's first Destination Connection ID when it picks its first byte: 8 random bytes
after it, the unpredictable minimum RFC 9000 §7.2 asks of it."""


def steered_initial_dcid(first_byte: int) -> bytes:
    """A client's first Destination Connection ID that starts with `first_byte`."""
    return bytes((first_byte,)) + os.urandom(STEERED_DCID_LENGTH - 1)


FAST_DATAGRAM_PATH = True
"""Default of TunnelQuicConnection.fast_datagram_path, for the connections made from now on:
1-RTT packets that carry only DATAGRAM and ACK frames are built (and parsed) by this module
instead of aioquic's generic builder and parser (issue 14; the same packets and the same loss
recovery, tests/unit/test_fast_datagram_path.py). False: aioquic's generic path only."""

_FAST_PATH_HOOKS: Final = (
    "_write_application",
    "_write_ack_frame",
    "_write_ping_frame",
    "_write_datagram_frame",
    "_write_connection_limits",
    "_write_stream_limits",
    "_flush_builder",
    "_handle_datagram_frame",
    "_send_datagram_packets",
    "_receive_short_packet",
    "_payload_received",
)
"""The methods the fast path stands in for, or is: a subclass overriding one keeps the
generic path."""

PROBE_NUMBERS_KEPT: Final = 64
"""Packet numbers of recent path probes hidden from loss recovery (path_probe)."""
PROBE_CHALLENGES_KEPT: Final = 32
"""Unanswered PATH_CHALLENGE values of path probes remembered (older ones are forgotten)."""
REFUSED_KEPT: Final = 64
# The peer's max_ack_delay counted in our PTO at most this long (s). RFC 9000 §18.2 lets a peer
# announce up to 16,383 ms, which made each PTO over 16 s and a closing connection hold its
# slot 3 PTOs, over 49 s (a review: refused handshakes kept every slot taken at ~6.5 a
# second). A peer that truly delays its ACKs longer costs a spurious probe, nothing more.
MAX_PEER_ACK_DELAY: Final = 1.0
"""DATAGRAMs dropped from the queue by a fall of the admitted size, kept for the program's
Packet Too Big (take_refused_datagrams)."""
# the attributes in which aioquic's and our controllers keep the datagram size they count in
_CONTROLLER_SIZE_FIELDS: Final = (
    "_max_datagram_size",
    "max_datagram_size",
    "additive_increase_factor",
)


class DatagramFate(NamedTuple):
    """What became of one tracked DATAGRAM frame (take_datagram_fates)."""

    token: Hashable
    acked: bool
    """True acknowledged, False declared lost (RFC 9002 §6)."""
    sent_at: float | None
    """When the packet carrying it left (None: not known). Later than when it was queued by
    the time it waited in aioquic's datagram queue: a re-send's deadline counts from here,
    as the peer's reorder buffer does from its neighbours' arrival."""


@dataclass
class DatagramFatesReady(events.QuicEvent):
    """Fates of tracked DATAGRAM frames are waiting in take_datagram_fates() (issue 12)."""


class SoloDatagram(bytes):
    """A datagram to leave in a send of its own, never in a UDP GSO run with others
    (tunnel/aio/udp.py): a PMTU probe or its companion, whose fate must be its own."""

    __slots__ = ()


@dataclass
class PathMtuFell(events.QuicEvent):
    """A confirmation failed (pmtu_discovery): a black hole, or a new path (after the handshake
    or a migration) that does not carry the size packets were admitted for. The connection's
    datagram budget fell, and the inner packets that met the smaller path may be answered with
    Packet Too Big (TunnelConnection.black_hole_victims, tunnel/protocol/pmtu_victims.py)."""


@dataclass
class PathProbeAnswered(events.QuicEvent):
    """The PATH_RESPONSE to a path_probe(key) arrived: the probed path works both ways."""

    key: Hashable


@dataclass(frozen=True)
class AckState:
    """One connection's loss-recovery view of its path (RFC 9002 §5, §6.2), for failure
    detection: a path is *silent* from `unanswered_since` on (the first ack-eliciting packet
    sent since an ACK last acknowledged something, None when nothing ack-eliciting is in
    flight), and loss recovery's own probe timeout says how long an answer may take."""

    srtt: float | None
    """Smoothed RTT (s), None before the first sample."""
    rttvar: float | None
    min_rtt: float | None
    max_ack_delay: float
    """The peer's max_ack_delay (s): how long it may hold an ACK back."""
    probe_timeout: float
    """srtt + max(4 rttvar, granularity) + max_ack_delay (RFC 9002 §6.2.1), without backoff;
    twice the initial RTT before the first sample."""
    last_progress: float | None
    """When an ACK last acknowledged a packet not acknowledged before."""
    unanswered_since: float | None


@dataclass(frozen=True)
class _OneRtt:
    """What the datagram fast path uses of aioquic's 1-RTT tables (see _one_rtt)."""

    cryptos: dict[tls.Epoch, CryptoPair]
    """aioquic's table these come from: a new one means new state."""
    crypto: CryptoPair
    zero_rtt: CryptoPair
    space: QuicPacketSpace
    crypto_stream: QuicStream


class TunnelQuicConnection(QuicConnection):
    """A QuicConnection that can announce and detect quic_tunnel_stream_mode.

    The hook wraps the two private methods through which aioquic serializes its own
    transport parameters and parses the peer's: the parameter is appended (empty
    value, "SHOULD be null", -tcp draft §Connection establishment) after aioquic's
    own list, and looked for in the peer's list after aioquic validated it. Stream
    mode is in use when both sides sent the parameter.
    """

    # the silence clock (_install_ack_tracking), restarted by reset_path_state
    _tunnel_unanswered_since: float | None
    # when a PMTU probe's companion was last acknowledged (pmtu_discovery)
    _tunnel_pmtu_answered: float | None
    # how the datagram fast path protects a packet (an attribute, so that a test can see the
    # plaintexts it protects on either path)
    _seal = staticmethod(_seal_short)
    # set by the driver that sends this connection's packets (tunnel/aio/udp.py QuicDriver):
    # the fast path then releases what the pacer allows within burst_slack seconds, up to
    # burst_max datagrams, in one call (0: one pass, as aioquic's datagrams_to_send)
    burst_slack: float = 0.0
    burst_max: int = 0

    def __init__(
        self,
        *,
        stream_mode: bool = False,
        payload_ethertype: int | None = None,
        request_client_certificate: bool = False,
        max_streams_bidi: int | None = None,
        stream_window: int | None = None,
        connection_window: int | None = None,
        reset_key: bytes | None = None,
        pacing_rate: float | None = None,
        tickets: TicketStore | None = None,
        fast_datagram_path: bool | None = None,
        cid_worker: tuple[int, int] | None = None,
        initial_dcid_byte: int | None = None,
        pmtu_discovery: bool = False,
        **kwargs: Any,
    ) -> None:
        """`max_streams_bidi`: our initial_max_streams_bidi (aioquic always announces 128;
        the -tcp draft's concentrator bounds concurrent TCP streams with it).
        `stream_window`: our receive window per bidirectional stream (default
        configuration.max_stream_data, which aioquic also gives uni streams: ours get
        TLV_STREAM_WINDOW), see set_stream_backlog.
        `connection_window`: our receive window for the whole connection (default
        configuration.max_data, and at least CONNECTION_WINDOW_STREAMS stream windows when we
        announce stream mode), see _write_connection_limits.
        `reset_key` (server): derive the stateless reset token of every connection ID we issue
        from it (tunnel/protocol/stateless_reset.py) instead of aioquic's random ones, so that a
        restarted server can still reset the connection, and end each ID with its tag
        (tag_connection_id), by which the server knows what it may reset.
        `pacing_rate` (bytes per second): the rate of congestion control "none"
        (tunnel/protocol/congestion.py), required with it; with any other, a cap on the rate
        the controller paces at.
        `payload_ethertype`: announce quic_tunnel_payload (PAYLOAD_TP_ID) with this EtherType
        (a client whose payload is not IP); None: not announced, i.e. IP.
        `tickets` (server): issue session tickets into this store and resume the connections
        that present one of them (README "0-RTT"); see resumed_identity.
        `fast_datagram_path` (limits.fast_datagram_path): take the datagram fast path (default
        FAST_DATAGRAM_PATH); a subclass that changes the generic path never does.
        `cid_worker` (server): (index, workers) of the concentrator worker this connection lives
        in; every connection ID it issues steers to it (steer_connection_id).
        `initial_dcid_byte` (client): the first byte of the Destination Connection ID of our
        first Initial, which the concentrator's workers steer by: that of a connection ID the
        concentrator gave another connection of our session, so that this one reaches the
        same worker (tunnel/aio/reuseport.py).
        `pmtu_discovery` (limits.pmtu_discovery): find the path's MTU with probes (RFC 9000
        §14.3, tunnel/protocol/pmtu.py) up to the configuration's max_datagram_size, the
        handshake at the 1200 bytes every path carries; without it every packet may be that
        size from the start, as aioquic sends them."""
        # Set before QuicConnection.__init__, which may already serialize our
        # transport parameters.
        if payload_ethertype is not None and not 0 <= payload_ethertype <= 0xFFFF:
            raise ValueError(f"payload_ethertype must fit in 16 bits, got {payload_ethertype}")
        self._tunnel_local_payload = payload_ethertype
        self._tunnel_peer_payload: int | None = None
        self._tunnel_reset_key = reset_key
        self._tunnel_cid_worker = cid_worker
        self._tunnel_local_stream_mode = stream_mode
        self._tunnel_peer_stream_mode: bool | None = None
        self._tunnel_peer_tag_sequence: bool | None = None
        self._tunnel_request_client_certificate = request_client_certificate
        # stream id -> bytes the application still holds (see set_stream_backlog)
        self._tunnel_backlog: dict[int, int] = {}
        self._tunnel_tickets = tickets
        self._tunnel_resumed: TicketIdentity | None = None
        self.issued_tickets: list[bytes] = []
        """Labels of the session tickets issued on this connection (server, with `tickets`)."""
        if tickets is not None:
            kwargs["session_ticket_fetcher"] = self._tunnel_fetch_ticket
            kwargs["session_ticket_handler"] = self._tunnel_ticket_issued
        super().__init__(**kwargs)
        if max_streams_bidi is not None:
            if max_streams_bidi < 1:
                raise ValueError(f"max_streams_bidi must be >= 1, got {max_streams_bidi}")
            self._local_max_streams_bidi.value = max_streams_bidi
            self._local_max_streams_bidi.sent = max_streams_bidi
        if not self._is_client and (cid_worker is not None or reset_key is not None):
            first = self._host_cids[0]
            first.cid = self._shape_host_cid(first.cid)
            self.host_cid = self._local_initial_source_connection_id = first.cid
        if initial_dcid_byte is not None and self._is_client:
            self._peer_cid.cid = steered_initial_dcid(initial_dcid_byte)
            self._original_destination_connection_id = self._peer_cid.cid
        self._retoken_host_cids()
        configuration = self._configuration
        self._tunnel_stream_window = stream_window or configuration.max_stream_data
        if stream_window is not None:
            if stream_window < 1024:
                raise ValueError(f"stream_window must be >= 1024, got {stream_window}")
            self._local_max_stream_data_bidi_local = stream_window
            self._local_max_stream_data_bidi_remote = stream_window
        self._local_max_stream_data_uni = TLV_STREAM_WINDOW
        if connection_window is None:
            relayed = CONNECTION_WINDOW_STREAMS * self._tunnel_stream_window if stream_mode else 0
            connection_window = max(configuration.max_data, relayed)
        elif connection_window < 1024:
            raise ValueError(f"connection_window must be >= 1024, got {connection_window}")
        self._tunnel_connection_window = connection_window
        self._local_max_data.value = connection_window  # announced as initial_max_data
        self._local_max_data.sent = connection_window
        self._install_pacer(pacing_rate)
        self._install_ack_tracking()
        self._tunnel_pmtu: PmtuSearch | None = None
        # the UDP payload size DATAGRAMs are accepted for (datagram_budget); None: the size
        # packets are built at, _max_datagram_size (always without pmtu_discovery)
        self._tunnel_admitted: int | None = None
        # black hole detection's losses count from the path's first packet (reset_path_state)
        # and from after the last large packet acknowledged (_watch_large_acks)
        self._tunnel_path_first_pn = 0
        self._tunnel_large_acked_pn = -1
        self._tunnel_black_holes = 0  # the search's black_holes counter PathMtuFell announced
        # DATAGRAMs _admit dropped, for the program's Packet Too Big (take_refused_datagrams)
        self._tunnel_refused: deque[bytes] = deque(maxlen=REFUSED_KEPT)
        # when the path in use started (reset_path_state; None: the handshake's): what was
        # queued before is not the new path's (PathMtuFell's victims)
        self.path_reset_at: float | None = None
        if pmtu_discovery:
            self._install_pmtu_discovery()
        # A subclass that changes what the generic path writes or how it handles a DATAGRAM
        # (testbed/hostile.py injects frames) would be bypassed: it keeps the generic path.
        cls = type(self)
        wanted = FAST_DATAGRAM_PATH if fast_datagram_path is None else fast_datagram_path
        self.fast_datagram_path = wanted and all(
            getattr(cls, hook) is getattr(TunnelQuicConnection, hook) for hook in _FAST_PATH_HOOKS
        )
        """Whether DATAGRAM-only packets take the fast path (FAST_DATAGRAM_PATH)."""
        self._tunnel_one_rtt: _OneRtt | None = None

    # -- congestion control and pacing (tunnel/protocol/congestion.py) ----------------------

    def _install_pacer(self, pacing_rate: float | None) -> None:
        """aioquic paces at cwnd / srtt; a controller that knows its own rate (BBR: pacing
        gain x bottleneck bandwidth; "none": the configured rate) sets `pacing_rate` and the
        pacer follows it instead. With the other controllers, `pacing_rate` caps the rate."""
        if pacing_rate is not None and pacing_rate <= 0:
            raise ValueError(f"a pacing rate must be > 0 bytes/s, got {pacing_rate}")
        self._tunnel_now: float | None = None
        self._tunnel_algorithm: str = self._configuration.congestion_control_algorithm
        self._tunnel_pacing_rate = pacing_rate
        self._give_rate(self._loss._cc)
        # one entry per queued DATAGRAM, in aioquic's queue order (None: not tracked)
        self._tunnel_datagram_tokens: deque[Hashable | None] = deque(
            None for _ in self._datagrams_pending
        )
        self._tunnel_fates: list[DatagramFate] = []
        self._tunnel_fates_announced: bool = False
        self._tunnel_path_resets = 0
        self._tunnel_brief_close = False  # close_briefly
        self._set_pacer()

    def _give_rate(self, cc: QuicCongestionControl) -> None:
        """ "none" paces at the configured rate, which it cannot go without."""
        if isinstance(cc, PacedNoCongestionControl):
            if self._tunnel_pacing_rate is None:
                raise ValueError(
                    'congestion control "none" needs a pacing rate (bytes/s > 0): without '
                    "one the tunnel would flood its access"
                )
            cc.pacing_rate = self._tunnel_pacing_rate

    def _set_pacer(self) -> None:
        """The pacer of the controller in use (and `_tunnel_paced`, which the send paths read
        for every packet)."""
        loss = self._loss
        cc = loss._cc
        self._tunnel_paced = hasattr(cc, "pacing_rate") or self._tunnel_pacing_rate is not None
        if not self._tunnel_paced:
            loss._pacer = QuicPacketPacer(max_datagram_size=self._max_datagram_size)
            return
        rate = self._tunnel_pacing_rate
        cap = None if isinstance(cc, PacedNoCongestionControl) else rate
        pacer = RatePacer(cc, max_datagram_size=self._max_datagram_size, cap=cap)
        pacer.observe_sent(cc)
        pacer.update_rate(cc.congestion_window, INITIAL_RTT)
        loss._pacer = pacer

    def reset_path_state(self, algorithm: str | None = None) -> None:
        """RFC 9000 §9.4: on a new path the sender "MUST reset the congestion controller and
        round-trip time estimator for the new path" (not for a port change alone: a NAT
        rebinding, handled by the caller). aioquic does neither, and what the old access
        measured is wrong for the new one: BBR kept the old path's RTprop and bottleneck rate,
        Cubic its window, loss recovery its RTT (so its probe timeout).

        A fresh controller of the same algorithm starts with nothing in flight: the packets
        still out on the old path are not the new path's (a failed access may never answer for
        them, and counted against the new window they blocked it until loss recovery gave up on
        them: measured, 230 ms more without delivery on a link-down, 2 s on a blackhole). Their
        acknowledgements and losses still reach loss recovery, not the new controller. RTT
        samples start again as on a new connection (RFC 9002 §5; persistent congestion is
        judged only from packets sent after the first new sample), and so does our silence
        clock (ack_state: a new path is silent from its own first unanswered packet).
        `algorithm`: the new path's controller (limits.congestion_control_wifi / _5g: another
        access may want another one); None: the one in use."""
        loss = self._loss
        self._install_controller(algorithm or self._tunnel_algorithm)
        loss._pto_count = 0
        loss._rtt_initialized = False
        loss._rtt_first_sample_time = 0.0
        loss._rtt_latest = 0.0
        loss._rtt_min = math.inf
        loss._rtt_smoothed = 0.0
        loss._rtt_variance = 0.0
        self._tunnel_unanswered_since = None
        self._tunnel_path_resets += 1
        self.path_reset_at = self._tunnel_now
        if self._tunnel_pmtu is not None:
            # a new path has a path MTU of its own (RFC 8899 §5.2): confirmed again at once
            # (the old path's round of probes is forgotten, _pmtu_apply; its packets' losses are
            # not the new path's, packets_lost)
            self._tunnel_pmtu.restart(self._tunnel_now)
            self._tunnel_path_first_pn = self._packet_number
            self._tunnel_pmtu_answered = None
            self._pmtu_apply()
        # Elicit an acknowledgement on the new path at once (a PING, RFC 9002 §6.2.4's probe):
        # what the old path lost is then declared lost by packet threshold a round trip from
        # now (RFC 9002 §6.1.1). A sender with nothing else to send (stream mode waiting for
        # flow-control credit the lost data holds, on a path validated beforehand, with no
        # connection ID to replace) would otherwise wait for a probe timeout, which with the
        # RTT estimator just reset is 2 x initial_rtt and backed off (shown in memory,
        # tests/unit/test_path_reset.py).
        self._probe_pending = True

    def use_congestion_control(self, algorithm: str) -> bool:
        """Switch to another controller on the same path (the concentrator learns which access a
        session connection runs over only from the client's first Access Report:
        limits.congestion_control_wifi / _5g). Returns whether it changed. The RTT estimate
        stays (same path); the new controller starts afresh, blind to what is already in
        flight, as after a migration (reset_path_state) — at the first report little is."""
        if algorithm == self._tunnel_algorithm:
            return False
        self._install_controller(algorithm)
        return True

    @property
    def congestion_control(self) -> str:
        """The name of the controller in use (aioquic's registry: reno, cubic, bbr, none)."""
        return self._tunnel_algorithm

    def _install_controller(self, algorithm: str) -> None:
        """A fresh controller of `algorithm` (aioquic's registry) in place of the current one,
        blind to the packets sent before it, with its pacer."""
        fresh = create_congestion_control(algorithm, max_datagram_size=self._max_datagram_size)
        self._give_rate(fresh)
        _ignore_flight_before(fresh, self._packet_number)
        if self._tunnel_pmtu is not None:
            self._watch_large_acks(fresh, self._tunnel_pmtu)
        self._loss._cc = fresh
        self._tunnel_algorithm = algorithm
        self._set_pacer()

    @property
    def path_resets(self) -> int:
        """How often reset_path_state ran (a migration to another address)."""
        return self._tunnel_path_resets

    def _write_datagram_frame(
        self, builder: QuicPacketBuilder, data: bytes, frame_type: QuicFrameType
    ) -> bool:
        # aioquic skips pacing for a packet that carries a due ACK, and then fills that packet
        # with DATAGRAM frames too: with traffic both ways (every tunnel) about half the
        # packets left unpaced, twice the configured rate of "none" in the in-memory test. With
        # a controller that sets its own rate, a DATAGRAM waits for the pacer like any packet.
        now = self._tunnel_now
        if (
            self._tunnel_paced
            and now is not None
            and self._loss._pacer.next_send_time(now=now) is not None
        ):
            raise QuicPacketBuilderStop
        written = bool(
            super()._write_datagram_frame(builder=builder, data=data, frame_type=frame_type)
        )
        # The frame is in the packet being built (aioquic pops it from its queue next): its
        # fate arrives with the packet's, through the per-frame delivery handlers aioquic
        # already calls for other frames.
        token = self._tunnel_datagram_tokens.popleft() if self._tunnel_datagram_tokens else None
        if token is not None and builder._packet is not None:
            builder._packet.delivery_handlers.append((self._on_datagram_fate, (token, now)))
        return written

    # -- datagram fate (issue 12: failure detection, reinjection, loss hiding) --------------

    def send_datagram_frame(
        self, data: bytes, token: Hashable | None = None, at: int | None = None
    ) -> None:
        """Queue a DATAGRAM frame; with a `token`, its fate — acknowledged or declared lost
        by loss recovery (RFC 9002 §6) — is reported by take_datagram_fates(). aioquic raises
        no event for either; its per-frame delivery handlers do the work (checked: ACKED for
        every delivered frame, LOST for most dropped ones, never a false LOST). `at`: the
        position in the queue to put it at (0: the head; a re-send goes ahead of what waits,
        as the hole it fills holds up the peer's reorder buffer or the inner flow); None: the
        tail."""
        if at is not None:
            self._datagrams_pending.insert(at, data)
            self._tunnel_datagram_tokens.insert(at, token)
            return
        super().send_datagram_frame(data)
        self._tunnel_datagram_tokens.append(token)

    def _on_datagram_fate(
        self, state: QuicDeliveryState, token: Hashable, sent_at: float | None
    ) -> None:
        self._tunnel_fates.append(DatagramFate(token, state is QuicDeliveryState.ACKED, sent_at))
        if not self._tunnel_fates_announced:
            # One event until the fates are taken: the program hands events to its agent after
            # every datagram batch and timer, so fates are acted on at once (a lost datagram
            # re-sent within the batch) without an event per frame.
            self._tunnel_fates_announced = True
            self._events.append(DatagramFatesReady())

    def take_datagram_fates(self) -> list[DatagramFate]:
        """The fate of every tracked DATAGRAM whose fate is known since the last call
        (DatagramFate: token, acknowledged or lost, when it left). Datagrams still queued or in
        flight when the connection ends never get a fate: the caller owns them then. A
        DatagramFatesReady event announces new fates (once until they are taken)."""
        fates, self._tunnel_fates = self._tunnel_fates, []
        self._tunnel_fates_announced = False
        return fates

    # -- ACK progress and path probes (issue 12: failure detection) -------------------------

    def _install_ack_tracking(self) -> None:
        """Follow loss recovery (RFC 9002) closely enough to tell a silent path: when an ACK
        last acknowledged something new, and the send time of the first ack-eliciting packet
        sent since then (what the silence is counted from). aioquic keeps neither; its two
        entry points are wrapped on this connection's recovery object."""
        self._tunnel_last_progress: float | None = None
        self._tunnel_unanswered_since = None
        # path probes (path_probe): key -> the connection ID it uses; challenge -> key; the
        # packet numbers the probes took (hidden from loss recovery, see _ack_received)
        self._tunnel_probe_cids: dict[Hashable, QuicConnectionId] = {}
        self._tunnel_probe_challenges: dict[bytes, Hashable] = {}
        self._tunnel_probe_numbers: deque[int] = deque(maxlen=PROBE_NUMBERS_KEPT)
        # the PMTU round out (pmtu_discovery): packet number -> size (a companion's: 0),
        # also hidden from loss recovery
        self._tunnel_pmtu_probes: dict[int, int] = {}
        self._tunnel_pmtu_answered = None
        loss = self._loss
        on_ack_received = loss.on_ack_received
        on_packet_sent = loss.on_packet_sent

        def ack_received(
            *, ack_rangeset: RangeSet, ack_delay: float, now: float, space: QuicPacketSpace
        ) -> None:
            probes = self._tunnel_probe_numbers
            if self._tunnel_pmtu_probes:
                self._pmtu_acks(ack_rangeset, now)
            for number in probes:
                # A probe left by another path: its number acknowledged ahead of the packets
                # still in flight here would make loss recovery declare them lost (RFC 9002
                # §6.1.1 packet threshold) and shrink the window for nothing. Its ACK proves
                # nothing the PATH_RESPONSE does not.
                ack_rangeset.subtract(number, number + 1)
            if probes and not len(ack_rangeset):
                return
            before = len(space.sent_packets)
            on_ack_received(ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space)
            # packets leave sent_packets here only when something was newly acknowledged
            if len(space.sent_packets) < before:
                self._tunnel_last_progress = now
                self._tunnel_unanswered_since = None

        def packet_sent(*, packet: Any, space: QuicPacketSpace) -> None:
            on_packet_sent(packet=packet, space=space)
            if (
                packet.is_ack_eliciting
                and packet.in_flight
                and self._tunnel_unanswered_since is None
            ):
                self._tunnel_unanswered_since = packet.sent_time

        loss.on_ack_received = ack_received  # type: ignore[method-assign]
        loss.on_packet_sent = packet_sent  # type: ignore[method-assign]

    def min_rtt(self) -> float | None:
        """Loss recovery's minimum RTT of the path (s), None before the first sample; cheaper
        than ack_state() for a per-packet caller (the datagram queue's CoDel)."""
        loss = self._loss
        return float(loss._rtt_min) if loss._rtt_initialized else None

    def ack_state(self) -> AckState:
        """What loss recovery knows of the path's liveness now (see AckState)."""
        loss = self._loss
        measured = bool(loss._rtt_initialized)
        in_flight = any(space.ack_eliciting_in_flight for space in loss.spaces)
        return AckState(
            srtt=float(loss._rtt_smoothed) if measured else None,
            rttvar=float(loss._rtt_variance) if measured else None,
            min_rtt=float(loss._rtt_min) if measured else None,
            max_ack_delay=float(loss.max_ack_delay),
            probe_timeout=float(loss.get_probe_timeout(include_max_ack_delay=True)),
            last_progress=self._tunnel_last_progress,
            unanswered_since=self._tunnel_unanswered_since if in_flight else None,
        )

    def path_probe(self, key: Hashable, now: float) -> bytes | None:
        """A probing packet for another local address (RFC 9000 §9.1 "Probing a New Path"):
        one 1-RTT packet with a PATH_CHALLENGE, padded to the datagram size (1200 bytes at least,
        §8.2.1; exactly that with pmtu_discovery), for the program
        to send from the socket `key` names. The peer answers with a PATH_RESPONSE on that
        path (§8.2.2) without moving its traffic there (a probing packet, §9.1), and the answer
        raises PathProbeAnswered(key). Each key gets a connection ID of its own (§9.5: one per
        local address) until end_path_probe; None while no spare one is available, or before
        the 1-RTT keys exist. The packet is not handed to loss recovery: a lost probe (the
        usual case on a failed path) must not count as a loss of the path in use."""
        if self._state in END_STATES or not self._network_paths:
            return None
        crypto = self._cryptos[tls.Epoch.ONE_RTT]
        if not crypto.send.is_valid() or self._version is None:
            return None
        cid = self._tunnel_probe_cids.get(key)
        if cid is None:
            if not self._peer_cid_available:
                return None
            cid = self._tunnel_probe_cids[key] = self._peer_cid_available.pop(0)
        path = QuicNetworkPath(self._network_paths[0].addr, is_validated=True)
        pmtu = self._tunnel_pmtu
        builder = QuicPacketBuilder(
            host_cid=self.host_cid,
            is_client=self._is_client,
            # padded to the base with pmtu_discovery: the other access's MTU is unknown
            max_datagram_size=self._max_datagram_size if pmtu is None else pmtu.base,
            packet_number=self._packet_number,
            peer_cid=cid.cid,
            quic_logger=None,
            version=self._version,
        )
        builder.start_packet(QuicPacketType.ONE_RTT, crypto)
        self._write_path_challenge_frame(builder=builder, network_path=path)
        datagrams, packets = builder.flush()
        self._packet_number = builder.packet_number
        for packet in packets:
            self._tunnel_probe_numbers.append(packet.packet_number)
        for challenge in path.local_challenges:
            self._tunnel_probe_challenges[challenge] = key
        while len(self._tunnel_probe_challenges) > PROBE_CHALLENGES_KEPT:
            del self._tunnel_probe_challenges[next(iter(self._tunnel_probe_challenges))]
        return b"".join(datagrams) if datagrams else None

    def end_path_probe(self, key: Hashable) -> None:
        """The program closed `key`'s socket: retire its connection ID (the peer issues a new
        one) and forget its challenges."""
        cid = self._tunnel_probe_cids.pop(key, None)
        if cid is not None and self._state not in END_STATES:
            self._retire_peer_cid(cid)
        for challenge, owner in list(self._tunnel_probe_challenges.items()):
            if owner == key:
                del self._tunnel_probe_challenges[challenge]

    def _handle_path_response_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        start = buf.tell()
        data = buf.pull_bytes(8)
        key = self._tunnel_probe_challenges.pop(data, None)
        if key is not None:
            self._events.append(PathProbeAnswered(key))
            return
        buf.seek(start)
        super()._handle_path_response_frame(context, frame_type, buf)

    # -- path MTU discovery (limits.pmtu_discovery, tunnel/protocol/pmtu.py) ------------------

    def _install_pmtu_discovery(self) -> None:
        """The search up to the configured datagram size; the handshake at the base size."""
        pmtu = self._tunnel_pmtu = PmtuSearch(ceiling=self._max_datagram_size)
        self._pmtu_apply()
        self._watch_large_acks(self._loss._cc, pmtu)
        loss = self._loss
        on_packets_lost = loss._on_packets_lost
        base = pmtu.base

        def packets_lost(*, now: float, packets: Iterable[Any], **kwargs: Any) -> None:
            packets = list(packets)
            on_packets_lost(now=now, packets=packets, **kwargs)
            # RFC 8899 §4.3: lost packets larger than the base hint at a black hole, if they
            # were sent on this path and no large packet sent after them got through
            since = max(self._tunnel_path_first_pn, self._tunnel_large_acked_pn + 1)
            large = sum(
                1
                for packet in packets
                if packet.sent_bytes > base and packet.in_flight and packet.packet_number >= since
            )
            if large:
                pmtu.large_lost(large, now)

        loss._on_packets_lost = packets_lost  # type: ignore[method-assign]
        # its timer joins aioquic's (instance attributes: without discovery nothing changes)
        self.get_timer = self._get_timer_with_pmtu  # type: ignore[method-assign]
        self.handle_timer = self._handle_timer_with_pmtu  # type: ignore[method-assign]

    def _watch_large_acks(self, cc: Any, pmtu: PmtuSearch) -> None:
        """An acknowledged packet larger than the base clears the black hole suspicion, and
        losses of the packets sent before it no longer count (packets_lost above)."""
        acked = cc.on_packet_acked
        base = pmtu.base

        def on_packet_acked(*, now: float, packet: Any) -> None:
            if packet.sent_bytes > base:
                pmtu.large_acked()
                number = packet.packet_number
                self._tunnel_large_acked_pn = max(self._tunnel_large_acked_pn, number)
            acked(now=now, packet=packet)

        cc.on_packet_acked = on_packet_acked

    @property
    def pmtu(self) -> PmtuSearch | None:
        """The path MTU search (None without pmtu_discovery)."""
        return self._tunnel_pmtu

    def drop_queued_datagrams(
        self, drop: Callable[[Hashable | None], bool]
    ) -> list[tuple[int, Hashable | None]]:
        """Take out of the queue the DATAGRAMs no packet carried yet whose token `drop` names
        (a path found dead: what waits there would leave only once it heals, seconds late);
        returns (position in the queue as it was, token) of each, in order. No fate is
        reported for them: the caller that dropped them knows."""
        pending, tokens = self._datagrams_pending, self._tunnel_datagram_tokens
        dropped = [drop(token) for token in tokens]
        gone = [(i, token) for i, token in enumerate(tokens) if dropped[i]]
        if gone:
            kept = [(d, t) for d, t, out in zip(pending, tokens, dropped, strict=True) if not out]
            pending.clear()
            tokens.clear()
            for data, token in kept:
                pending.append(data)
                tokens.append(token)
        return gone

    def take_refused_datagrams(self) -> list[bytes]:
        """The DATAGRAM payloads dropped from the queue since the last call because the
        admitted size fell below them (the last REFUSED_KEPT)."""
        refused = list(self._tunnel_refused)
        self._tunnel_refused.clear()
        return refused

    def _resize(self, size: int) -> None:
        """Send UDP payloads of up to `size` bytes from now on: the packet builders, the
        pacer and the controller count in it (RFC 9002 §7.2: windows stay in bytes)."""
        self._max_datagram_size = size
        loss = self._loss
        loss._pacer._max_datagram_size = size
        for name in _CONTROLLER_SIZE_FIELDS:
            if hasattr(loss._cc, name):
                setattr(loss._cc, name, size)

    def _admit(self, size: int) -> None:
        """Accept DATAGRAMs for UDP payloads of up to `size` bytes (datagram_budget); one
        larger than the confirmed size waits in the queue for the probes' answer. When the
        admitted size drops, a queued DATAGRAM that no longer fits would block the queue for
        good (DESIGN.md "Known aioquic facts"): it is dropped, and a tracked one reported lost,
        so that the program's re-send meets the new budget and is answered with Packet Too
        Big. Each dropped one is kept for take_refused_datagrams (PathMtuFell's victims: it may
        have been queued before a migration and never re-sent)."""
        shrinks = self._tunnel_admitted is not None and size < self._tunnel_admitted
        self._tunnel_admitted = size
        if not shrinks or not self._datagrams_pending:
            return
        budget = datagram_budget(self)
        pending, tokens = self._datagrams_pending, self._tunnel_datagram_tokens
        kept: list[tuple[bytes, Hashable | None]] = []
        refused = self._tunnel_refused
        for data, token in zip(pending, tokens, strict=True):
            if len(data) <= budget:
                kept.append((data, token))
                continue
            refused.append(data)
            if token is not None:
                self._on_datagram_fate(QuicDeliveryState.LOST, token, None)
        pending.clear()
        tokens.clear()
        for data, token in kept:
            pending.append(data)
            tokens.append(token)

    def _pmtu_probe(self, now: float) -> list[bytes]:
        """The PMTU probe due now, if any, and its companion, as datagrams to send (the
        companion first), each a SoloDatagram.

        The probe is one 1-RTT packet of exactly the size under test, a PING and PADDING (RFC
        9000 §14.4), on the path and connection ID in use; the companion a PING in a packet as
        small as can be, sent with it. A round (pmtu.py) is MAX_PROBES such pairs one RTT
        apart: when a companion is acknowledged after the last probe left and no probe was,
        the size failed; when none is, the round says nothing of the size (pmtu.py: an
        outage). Both are kept out
        of loss recovery like path probes: a probe's loss is no sign of congestion (§14.4, RFC
        8899 §3 item 7), and their ACKs are taken out of the ranges loss recovery sees."""
        pmtu = self._tunnel_pmtu
        assert pmtu is not None
        if not self._may_probe(pmtu):
            return []
        one_rtt = self._one_rtt()
        if one_rtt is None or not one_rtt.crypto.send.is_valid() or self._version is None:
            return []
        size = pmtu.probe_due(now)
        if size is None:
            return []
        builder = QuicPacketBuilder(
            host_cid=self.host_cid,
            is_client=self._is_client,
            max_datagram_size=size,
            packet_number=self._packet_number,
            peer_cid=self._peer_cid.cid,
            quic_logger=None,
            version=self._version,
        )
        datagrams: list[bytes] = []
        probes = self._tunnel_pmtu_probes
        for probed in (0, size):  # 0: the companion
            builder.start_packet(QuicPacketType.ONE_RTT, one_rtt.crypto)
            builder.start_frame(QuicFrameType.PING)
            # the probe is padded to the builder's whole room, `size`; the companion is not
            builder._datagram_needs_padding = bool(probed)
            flushed, packets = builder.flush()
            # each in a send of its own: UdpEndpoint would put a run of equal-size datagrams
            # and one shorter after them in one GSO send, which a router forwards or drops
            # whole (a veth does not segment): the companion would share the fate of the data
            # before it, data after the probe the probe's
            datagrams += [SoloDatagram(datagram) for datagram in flushed]
            number = packets[0].packet_number
            self._tunnel_probe_numbers.append(number)
            probes[number] = probed
        self._packet_number = builder.packet_number
        # what anti-amplification counts (RFC 9000 §8.1), as aioquic counts its own
        self._network_paths[0].bytes_sent += sum(len(datagram) for datagram in datagrams)
        timeout = self._loss.get_probe_timeout()
        pmtu.probe_sent(size, now, timeout, smoothed_rtt(self) or timeout)
        return datagrams

    def _may_probe(self, pmtu: PmtuSearch) -> bool:
        """Whether PMTU probes may leave now: the search has begun, the connection is not
        closing, and its path is validated. A server whose client moved (a migration, a NAT
        rebinding) sends nothing large to the new address before it answered a PATH_CHALLENGE:
        probes bypass aioquic's anti-amplification limit (RFC 9000 §8, §9.3), and a replayed
        packet with a forged source must not aim full-size probes at someone else."""
        return (
            pmtu.state is not PmtuState.IDLE
            and self._state not in END_STATES
            and bool(self._network_paths)
            and self._network_paths[0].is_validated
        )

    def _pmtu_acks(self, ack_rangeset: RangeSet, now: float) -> None:
        """An ACK arrived while PMTU probes are out: those it covers were carried."""
        pmtu = self._tunnel_pmtu
        assert pmtu is not None
        for number, size in list(self._tunnel_pmtu_probes.items()):
            if number in ack_rangeset:
                del self._tunnel_pmtu_probes[number]
                if size:
                    pmtu.probe_acked(size, now)
                else:
                    self._tunnel_pmtu_answered = now
        self._pmtu_apply()

    def _pmtu_apply(self) -> None:
        """Follow the search: the size packets are built at, the size admitted; a round
        answered or given up on is forgotten (a late ACK of it no longer counts), so that ACKs
        are looked through for probes only while one is out."""
        pmtu = self._tunnel_pmtu
        if pmtu is None:
            return
        if not pmtu.probing:
            self._tunnel_pmtu_probes.clear()
        if pmtu.counters.black_holes != self._tunnel_black_holes:
            self._tunnel_black_holes = pmtu.counters.black_holes
            self._events.append(PathMtuFell())
        if pmtu.size != self._max_datagram_size:
            self._resize(pmtu.size)
        if pmtu.admitted != self._tunnel_admitted:
            self._admit(pmtu.admitted)

    def _validating_paths(self) -> bool:
        """Whether aioquic's next packets carry a PATH_CHALLENGE or a PATH_RESPONSE."""
        return any(
            path.remote_challenges or not (path.is_validated or path.local_challenge_sent)
            for path in self._network_paths
        )

    def _sends_at_base(self) -> bool:
        """Whether this call's packets keep to the base size (pmtu_discovery):
        - while a path is validated: aioquic pads PATH_CHALLENGE / PATH_RESPONSE datagrams to
          the whole datagram size; RFC 9000 §8.2 asks for 1200 bytes, and validation must not
          hang on a size the new path may not carry (RFC 8899 §5.2);
        - for a PTO probe (RFC 9002 §6.2.4) once the handshake is confirmed: aioquic fills it
          with the queued DATAGRAMs, so behind a black hole that appeared after the search
          (a route change to a smaller MTU) every probe would be as large as the packets it
          is to tell about, vanish with them, and leave them unacknowledged and never declared
          lost: the window stays full, nothing more is sent, and black hole detection (RFC
          8899 §4.3, which counts the lost large packets) never starts. A probe at the base
          size is answered whenever the path carries anything; its ACK declares the large
          packets before it lost."""
        if self._validating_paths():
            return True
        pmtu = self._tunnel_pmtu
        return (
            self._probe_pending
            and self._handshake_confirmed
            and pmtu is not None
            and pmtu.size > pmtu.base
        )

    def _get_timer_with_pmtu(self) -> float | None:
        timer = type(self).get_timer(self)
        pmtu = self._tunnel_pmtu
        if pmtu is None or not self._may_probe(pmtu):
            return timer  # (a probe due on a path not validated yet waits for its validation)
        rtt = smoothed_rtt(self)
        if rtt is not None:
            pmtu.rtt_measured(rtt)
        at = pmtu.timer()
        if at is None:
            return timer
        return at if timer is None else min(timer, at)

    def _handle_timer_with_pmtu(self, now: float) -> None:
        pmtu = self._tunnel_pmtu
        if pmtu is not None:
            pmtu.on_timer(now, self._tunnel_pmtu_answered)
            self._pmtu_apply()
        type(self).handle_timer(self, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        self._tunnel_now = now
        if self.fast_datagram_path and self._only_datagrams_to_send():
            datagrams = self._send_datagram_packets(now)
        elif self._tunnel_pmtu is not None and self._sends_at_base():
            size = self._max_datagram_size
            self._max_datagram_size = min(size, self._tunnel_pmtu.base)
            try:
                datagrams = super().datagrams_to_send(now)
            finally:
                self._max_datagram_size = size
        else:
            datagrams = super().datagrams_to_send(now)
        if self._tunnel_pmtu is not None:
            for probe in self._pmtu_probe(now):
                datagrams.append((probe, self._network_paths[0].addr))
        cc = self._loss._cc
        # Nothing left to send and room in the window: what the next ACKs measure is our
        # sender's demand, not the path (BBR's app-limited samples, draft-cheng §3.4). Not
        # when the pacer held packets back, nor while a stream has data waiting (stream mode):
        # a bulk stream was marked at nearly every send (22,578 times in 3 s in
        # tests/unit/test_congestion.py), so its samples could only raise the estimate and
        # never counted towards the end of STARTUP.
        if (
            isinstance(cc, BbrCongestionControl)
            and not self._datagrams_pending
            and self._pacing_at is None
            and cc.bytes_in_flight < cc.congestion_window
            and not self._stream_data_waiting()
        ):
            cc.note_app_limited()
        return datagrams

    def _stream_data_waiting(self) -> bool:
        """Whether a stream has data (or a FIN) not sent yet, flow control or not: a sender
        held by its peer's window is not short of data (as Linux, which does not mark
        receive-window-limited samples)."""
        return any(not stream.sender.buffer_is_empty for stream in self._streams_queue)

    # -- the datagram fast path (issue 14) ---------------------------------------------------
    #
    # Tunnel and session mode packets carry DATAGRAM frames and, when one is due, an ACK;
    # aioquic's generic path checks ~15 frame kinds for every packet and builds it through
    # QuicPacketBuilder. When the 1-RTT space has nothing else to send, the packets are built
    # here directly, the way aioquic builds them (QuicConnection.datagrams_to_send,
    # _write_application, _write_ack_frame, _flush_builder; QuicPacketBuilder.start_packet,
    # start_frame, _end_packet), with aioquic's own CryptoPair, and registered with its loss
    # recovery as the same QuicSentPacket. Anything else goes the generic way.
    # tests/unit/test_fast_datagram_path.py checks both produce the same packets.

    def _one_rtt(self) -> _OneRtt | None:
        """The 1-RTT packet space's state (None before aioquic set it up). aioquic keys it by
        tls.Epoch, an Enum hashed in Python at every lookup, a few times per packet: it is
        looked up once, again only if aioquic made new tables (_initialize)."""
        cached = self._tunnel_one_rtt
        if cached is not None and cached.cryptos is self._cryptos:
            return cached
        if tls.Epoch.ONE_RTT not in self._cryptos:
            return None
        epoch = tls.Epoch.ONE_RTT
        self._tunnel_one_rtt = _OneRtt(
            cryptos=self._cryptos,
            crypto=self._cryptos[epoch],
            zero_rtt=self._cryptos[tls.Epoch.ZERO_RTT],
            space=self._spaces[epoch],
            crypto_stream=self._crypto_streams[epoch],
        )
        return self._tunnel_one_rtt

    def _only_datagrams_to_send(self) -> bool:
        """Whether aioquic's datagrams_to_send would now write nothing but ACK and DATAGRAM
        frames (and the PING it adds to some ACKs) in 1-RTT packets on the active path: every
        condition below is one under which it writes another frame, another packet type, or
        pads, limits or probes differently."""
        if (
            self._quic_logger is not None  # the generic path logs every packet
            or not self._handshake_confirmed  # Initial/Handshake spaces, HANDSHAKE_DONE
            or self._close_pending
            or self._state in END_STATES
            or self._probe_pending
            or self._ping_pending
            or self._handshake_done_pending
            or self._retire_connection_ids
            or self._streams_blocked_pending
            or not self._network_paths
            or (self._is_client and self._remote_preferred_address is not None)
        ):
            return False
        one_rtt = self._one_rtt()
        if one_rtt is None or not one_rtt.crypto.send.is_valid():
            return False
        path = self._network_paths[0]
        # an unvalidated path: anti-amplification limit and PATH_CHALLENGE (RFC 9000 §8, §9.3)
        if not path.is_validated or path.remote_challenges:
            return False
        for probe_path in self._network_paths[1:]:
            if probe_path.remote_challenges or not (
                probe_path.is_validated or probe_path.local_challenge_sent
            ):
                return False
        if not one_rtt.crypto_stream.sender.buffer_is_empty:
            return False  # e.g. a NewSessionTicket
        for cid in self._host_cids:  # a loop, not any(): this runs at every send
            if not cid.was_sent:
                return False
        if self._connection_limits_due():
            return False
        for stream in self._streams_queue:
            if (
                stream.is_finished
                or stream.receiver.stop_pending
                or stream.sender.reset_pending
                or not (stream.is_blocked or stream.sender.buffer_is_empty)
            ):
                return False
        return not any(self._stream_limit_due(stream) for stream in self._streams.values())

    def _send_datagram_packets(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """aioquic's datagrams_to_send when _only_datagrams_to_send(): the same packets, the
        same bookkeeping, without the generic builder. With a `burst_slack`, also what the
        driver's next calls would send (QuicDriver._transmit: a call at each next time the
        pacer or a due ACK allows, while within the slack and under `burst_max` datagrams),
        without the checks and timer computation of a call each."""
        datagrams = self._datagram_pass(now)
        horizon = now + self.burst_slack
        one_rtt = self._one_rtt()
        assert one_rtt is not None  # _only_datagrams_to_send() checked
        space = one_rtt.space
        while datagrams and len(datagrams) < self.burst_max:
            due = self._pacing_at
            ack_at = space.ack_at
            if ack_at is not None and (due is None or ack_at < due):
                due = ack_at
            if due is None or due > horizon or due <= now:
                break
            now = self._tunnel_now = due
            more = self._datagram_pass(now)
            if not more:
                break
            datagrams += more
        addr = self._network_paths[0].addr
        return [(datagram, addr) for datagram in datagrams]

    def _datagram_pass(self, now: float) -> list[bytes]:
        """One call's worth of _send_datagram_packets: packets until the pacer, the window or
        the queue stops them, registered as sent at `now`."""
        network_path = self._network_paths[0]
        loss = self._loss
        pacer = loss._pacer
        one_rtt = self._one_rtt()
        assert one_rtt is not None  # _only_datagrams_to_send() checked
        space, crypto = one_rtt.space, one_rtt.crypto
        pending = self._datagrams_pending
        tokens = self._tunnel_datagram_tokens
        paced = self._tunnel_paced
        peer_cid = self._peer_cid.cid
        max_size = self._max_datagram_size
        header_size = SHORT_HEADER_FIXED_SIZE + len(peer_cid)
        # room for frames in a packet: QuicPacketBuilder.remaining_buffer_space at its start
        packet_room = max_size - header_size - crypto.aead_tag_size
        # builder.max_flight_bytes: probes may exceed the window, but there are none here
        flight_left = loss.congestion_window - loss.bytes_in_flight
        self._pacing_at = None
        packet_number = self._packet_number
        seal = self._seal
        datagram_frames = _datagram_frames
        buf = Buffer(capacity=max_size)  # the ACK (and PING) frames
        datagrams: list[bytes] = []
        packets: list[QuicSentPacket] = []
        while True:
            # pacing, except if we have an ACK to send (_write_application: one due exactly
            # now is paced, but written)
            ack_at = space.ack_at
            if ack_at is None or ack_at >= now:
                self._pacing_at = pacer.next_send_time(now=now)
                if self._pacing_at is not None:
                    break
            ack_due = ack_at is not None and ack_at <= now
            if header_size >= max_size:
                break  # start_packet: no room for a header
            # each short-header packet is a datagram of its own: the builder gives each the
            # congestion window's room left after the packets before it (start_packet)
            room = packet_room
            flight_room = min(max_size, flight_left) - header_size - crypto.aead_tag_size
            handlers: list[tuple[Any, Any]] = []
            ack_eliciting = False
            stop = False
            prefix = b""
            if ack_due:
                buf.seek(0)
                # _write_ack_frame; an ACK is not in flight, so only the packet's room counts
                if room < ACK_FRAME_CAPACITY:
                    break
                received_at = space.largest_received_time
                assert received_at is not None  # an ACK is due: a packet was received
                ack_delay = int((now - received_at) * 1000000)
                buf.push_uint_var(QuicFrameType.ACK)
                handlers.append((self._on_ack_delivery, (space, space.largest_received_packet)))
                ranges = push_ack_frame(
                    buf,
                    space.ack_queue,
                    ack_delay >> self._local_ack_delay_exponent,
                    room - buf.tell(),
                )
                space.ack_at = None
                # aioquic's ACK-of-ACK trigger: a PING now and then lets the peer acknowledge
                # this ACK, so that the ranges it repeats can be dropped
                if ranges > 1 and packet_number % 8 == 0:
                    if room - buf.tell() < PING_FRAME_CAPACITY or (
                        flight_room - buf.tell() < PING_FRAME_CAPACITY
                    ):
                        stop = True  # the builder stops the whole pass, this packet leaves
                    else:
                        buf.push_uint_var(QuicFrameType.PING)
                        handlers.append((self._on_ping_delivery, ((),)))
                        ack_eliciting = True
                prefix = buf.data
            # _write_datagram_frame (ours), for as many DATAGRAMs as the packet's room and the
            # window hold; a DATAGRAM waits for the pacer (whose answer is the same for each
            # one of a packet: nothing it counts changes before update_after_send)
            waits = paced and pacer.next_send_time(now=now) is not None
            take = pending and not stop and not waits
            payload, taken, padded = datagram_frames(
                prefix, pending if take else _NO_DATAGRAMS, min(room, flight_room), _MIN_PAYLOAD
            )
            if taken:
                ack_eliciting = True
                for _ in range(taken):
                    token = tokens.popleft() if tokens else None
                    if token is not None:
                        handlers.append((self._on_datagram_fate, (token, now)))
            if not payload:
                break  # an empty packet is cancelled, and ends the pass
            if not stop:
                pacer.update_after_send(now=now)
            # _end_packet: a packet padded up to the header protection sample is in flight
            in_flight = ack_eliciting or padded
            first_byte = (
                PACKET_FIXED_BIT
                | (self._spin_bit << 5)
                | (crypto.key_phase << 2)
                | (PACKET_NUMBER_SEND_SIZE - 1)
            )
            header = bytes((first_byte,)) + peer_cid + (packet_number & 0xFFFF).to_bytes(2, "big")
            datagram = seal(crypto, header, payload, packet_number)
            packets.append(
                QuicSentPacket(
                    epoch=tls.Epoch.ONE_RTT,
                    in_flight=in_flight,
                    is_ack_eliciting=ack_eliciting,
                    is_crypto_packet=False,
                    packet_number=packet_number,
                    packet_type=QuicPacketType.ONE_RTT,
                    sent_bytes=len(datagram),
                    delivery_handlers=handlers,
                )
            )
            datagrams.append(datagram)
            if in_flight:
                flight_left -= len(datagram)
            packet_number += 1
            if stop:
                break
        # _flush_builder
        if not datagrams:
            return []
        self._packet_number = packet_number
        for packet in packets:
            packet.sent_time = now
            loss.on_packet_sent(packet=packet, space=space)
            # restart the idle timer on the first ack-eliciting packet sent since the last
            # one received (RFC 9000 §10.1)
            if packet.is_ack_eliciting and not self._ack_eliciting_sent_since_receipt:
                self._close_at = now + self._idle_timeout()
                self._ack_eliciting_sent_since_receipt = True
        network_path.bytes_sent += sum(len(datagram) for datagram in datagrams)
        return datagrams

    def _receive_short_packet(self, data: bytes, addr: NetworkAddress, now: float) -> bool:
        """aioquic's receive_datagram for the common case, a datagram holding one 1-RTT
        packet from the active path to the connection ID in use, once the handshake is
        confirmed; the same steps without the checks that only other packets need (long
        headers, versions, retry, handshake keys, logging). False: not that case, or a packet
        it cannot decrypt (perhaps a stateless reset, which receive_datagram looks for then);
        nothing done that the generic path, which takes it, would not do the same."""
        if self._quic_logger is not None or self._state is not QuicConnectionState.CONNECTED:
            return False
        cid_length = len(self.host_cid)
        if (
            not self._handshake_confirmed
            or len(data) <= cid_length
            or data[0] & 0xC0 != PACKET_FIXED_BIT  # a long header, or no fixed bit
            or not self._network_paths
        ):
            return False
        network_path = self._network_paths[0]
        host_cid = data[1 : 1 + cid_length]
        if (
            network_path.addr != addr
            or not network_path.is_validated
            or host_cid != self.host_cid
            or cid_length != self._configuration.connection_id_length
            or self._peer_cid.sequence_number is None
        ):
            return False
        # aioquic takes a packet only for a connection ID it still has: the peer may have
        # retired the one a client uses (a client never switches on receipt)
        for connection_id in self._host_cids:
            if connection_id.cid == host_cid:
                break
        else:
            return False
        one_rtt = self._one_rtt()
        if one_rtt is None or not one_rtt.crypto.recv.is_valid():
            return False
        crypto, space = one_rtt.crypto, one_rtt.space
        if self._close_at is None:
            self._close_at = now + self._idle_timeout()
        try:
            plain_header, plain_payload, packet_number = _open_short(
                crypto, data, 1 + cid_length, space.expected_packet_number
            )
        except CryptoError:
            # not ours to decide: it may be a stateless reset (receive_datagram checks it),
            # else aioquic's own path drops it
            return False
        # RFC 9000 §12.3: duplicates are discarded
        if packet_number in space.received_packets:
            return True
        if plain_header[0] & 0x18:  # reserved bits (RFC 9000 §17.3.1)
            self.close(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=QuicFrameType.PADDING,
                reason_phrase="Reserved bits must be zero",
            )
            return True
        if packet_number > space.expected_packet_number:
            space.expected_packet_number = packet_number + 1
        # a server drops its 0-RTT keys on the first 1-RTT packet (RFC 9001 §4.9.3)
        if not self._is_client and one_rtt.zero_rtt.recv.is_valid():
            one_rtt.zero_rtt.recv.teardown()
        if packet_number > self._spin_highest_pn:
            spin_bit = bool(plain_header[0] & PACKET_SPIN_BIT)
            self._spin_bit = not spin_bit if self._is_client else spin_bit
            self._spin_highest_pn = packet_number
        context = QuicReceiveContext(
            epoch=tls.Epoch.ONE_RTT,
            host_cid=host_cid,
            network_path=network_path,
            quic_logger_frames=None,
            time=now,
            version=None,
        )
        try:
            is_ack_eliciting, is_probing = self._payload_received(context, plain_payload)
        except QuicConnectionError as exc:
            self._logger.warning(exc)
            self.close(
                error_code=exc.error_code,
                frame_type=exc.frame_type,
                reason_phrase=exc.reason_phrase,
            )
        if self._state in END_STATES or self._close_pending:
            return True
        self._close_at = now + self._idle_timeout()
        self._ack_eliciting_sent_since_receipt = False
        # The frames may have changed the paths (a PATH_RESPONSE moves a client to the
        # server's preferred address) or the connection ID in use: the rest of aioquic's
        # steps, as it takes them.
        if not self._is_client and not is_probing and host_cid != self.host_cid:
            self.host_cid = host_cid
            if network_path.peer_cid is None:
                self.change_connection_id()
        if network_path not in self._network_paths:
            self._add_network_path(network_path)
        index = self._network_paths.index(network_path)
        if (
            not self._is_client
            and index
            and not is_probing
            and packet_number > space.largest_received_packet
        ):
            self._network_paths.pop(index)
            self._network_paths.insert(0, network_path)
            if network_path.peer_cid is not None:
                self._use_reserved_peer_cid(network_path)
            if not network_path.is_validated:
                network_path.local_challenge_sent = False
                network_path.validation_deadline = None
        # record the packet as received
        if not space.discarded:
            if packet_number > space.largest_received_packet:
                space.largest_received_packet = packet_number
                space.largest_received_time = now
            space.ack_queue.add(packet_number)
            space.received_packets.add(packet_number)
            # RFC 9000 §13.2.3: the oldest ACK range goes, its packets count as duplicates
            if len(space.ack_queue) > MAX_ACK_RANGES:
                space.ack_queue.shift()
            if is_ack_eliciting and space.ack_at is None:
                space.ack_at = now + self._ack_delay
        return True

    def _payload_received(
        self, context: QuicReceiveContext, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        """aioquic's frame loop, with DATAGRAM frames handled in it (its
        _handle_datagram_frame's steps) and no epoch check for the frames every 1-RTT packet
        may hold; any other frame goes to aioquic's own handler, with aioquic's checks."""
        if (
            context.epoch is not tls.Epoch.ONE_RTT
            or crypto_frame_required
            or context.quic_logger_frames is not None
            or not self.fast_datagram_path
        ):
            return super()._payload_received(
                context, plain, crypto_frame_required=crypto_frame_required
            )
        buf = Buffer(data=plain)
        frame_handlers = self._QuicConnection__frame_handlers  # type: ignore[attr-defined]
        max_frame_size = self._configuration.max_datagram_frame_size
        received = self._events
        frame_found = False
        is_ack_eliciting = False
        is_probing: bool | None = None
        while not buf.eof():
            try:
                frame_type = buf.pull_uint_var()
            except BufferReadError as exc:
                raise QuicConnectionError(
                    error_code=QuicErrorCode.FRAME_ENCODING_ERROR,
                    frame_type=None,  # type: ignore[arg-type]  # as aioquic's loop
                    reason_phrase="Malformed frame type",
                ) from exc
            frame_found = True
            if frame_type == QuicFrameType.DATAGRAM_WITH_LENGTH or (
                frame_type == QuicFrameType.DATAGRAM
            ):
                start = buf.tell()
                try:
                    if frame_type == QuicFrameType.DATAGRAM_WITH_LENGTH:
                        length = buf.pull_uint_var()
                    else:
                        length = buf.capacity - start
                    data = buf.pull_bytes(length)
                except BufferReadError as exc:
                    raise QuicConnectionError(
                        error_code=QuicErrorCode.FRAME_ENCODING_ERROR,
                        frame_type=frame_type,
                        reason_phrase="Failed to parse frame",
                    ) from exc
                # RFC 9221 §3: only if we announced max_datagram_frame_size, and within it
                if max_frame_size is None or buf.tell() - start >= max_frame_size:
                    raise QuicConnectionError(
                        error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                        frame_type=frame_type,
                        reason_phrase="Unexpected DATAGRAM frame",
                    )
                received.append(events.DatagramFrameReceived(data=data))
                is_ack_eliciting = True
                is_probing = False
                continue
            try:
                frame_handler, frame_epochs = frame_handlers[frame_type]
            except KeyError as exc:
                raise QuicConnectionError(
                    error_code=QuicErrorCode.FRAME_ENCODING_ERROR,
                    frame_type=frame_type,
                    reason_phrase="Unknown frame type",
                ) from exc
            if frame_type not in ONE_RTT_FRAME_TYPES and context.epoch not in frame_epochs:
                raise QuicConnectionError(
                    error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                    frame_type=frame_type,
                    reason_phrase="Unexpected frame type",
                )
            try:
                frame_handler(context, frame_type, buf)
            except BufferReadError as exc:
                raise QuicConnectionError(
                    error_code=QuicErrorCode.FRAME_ENCODING_ERROR,
                    frame_type=frame_type,
                    reason_phrase="Failed to parse frame",
                ) from exc
            except StreamFinishedError:
                pass  # we lack the state for the stream, ignore the frame
            if frame_type not in NON_ACK_ELICITING_FRAME_TYPES:
                is_ack_eliciting = True
            if frame_type not in PROBING_FRAME_TYPES:
                is_probing = False
            elif is_probing is None:
                is_probing = True
        if not frame_found:
            raise QuicConnectionError(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=QuicFrameType.PADDING,
                reason_phrase="Packet contains no frames",
            )
        return is_ack_eliciting, bool(is_probing)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        # aioquic's server sends a CertificateRequest only with this private flag set;
        # its TLS context exists from here on. It checks only the CertificateVerify
        # signature: verify the chain with tunnel.policy.client_auth after the handshake.
        if self._tunnel_request_client_certificate and not self._is_client:
            self.tls._request_client_certificate = True

    # -- session tickets (RFC 8446 §4.6.1, RFC 9001 §4.6) ------------------------------------

    def _tunnel_fetch_ticket(self, label: bytes) -> SessionTicket | None:
        assert self._tunnel_tickets is not None
        found = self._tunnel_tickets.take(label)
        if found is None:
            return None
        ticket, identity = found
        self._tunnel_resumed = identity
        # RFC 8446 §4.3.2: "Servers which are authenticating with a PSK MUST NOT send the
        # CertificateRequest message in the main handshake". aioquic's server does not send it
        # then, but with the flag set it would still wait for the client's Certificate and
        # fail the handshake on its Finished: the client is authenticated by the ticket.
        self.tls._request_client_certificate = False
        return ticket

    def _tunnel_ticket_issued(self, ticket: SessionTicket) -> None:
        assert self._tunnel_tickets is not None
        self._tunnel_tickets.issued(ticket)
        self.issued_tickets.append(ticket.ticket)

    def peer_cid_first_byte(self) -> int | None:
        """The first byte of the connection ID we send to, once the handshake made it the
        peer's own (None before): a concentrator's workers steer by it (README "Workers")."""
        if not self._handshake_complete:
            return None
        return self._peer_cid.cid[0] if self._peer_cid.cid else None

    # -- stateless reset (RFC 9000 §10.3) --------------------------------------------------

    def _retoken_host_cids(self) -> None:
        """Give our connection IDs the tokens derived from the reset key (server only; the
        client sends no tokens). The token is a function of the ID, so doing it again for an
        ID that was already announced changes nothing."""
        if self._tunnel_reset_key is None or self._is_client:
            return
        for cid in self._host_cids:
            cid.stateless_reset_token = reset_token(self._tunnel_reset_key, cid.cid)

    def _shape_host_cid(self, cid: bytes) -> bytes:
        """A connection ID we issue (server): steered to our worker (steer_connection_id),
        then tagged with the reset key (tag_connection_id: the concentrator answers with a
        stateless reset only packets whose connection ID carries the tag)."""
        if self._tunnel_cid_worker is not None:
            cid = steer_connection_id(cid, *self._tunnel_cid_worker)
        if self._tunnel_reset_key is not None:
            cid = tag_connection_id(self._tunnel_reset_key, cid)
        return cid

    def _replenish_connection_ids(self) -> None:
        known = len(self._host_cids)
        super()._replenish_connection_ids()
        if not self._is_client:
            for connection_id in self._host_cids[known:]:
                connection_id.cid = self._shape_host_cid(connection_id.cid)
        self._retoken_host_cids()

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """A client first checks whether the datagram is a stateless reset for the connection
        ID it uses (aioquic does not): if so the connection ends at once, silently (§10.3.1:
        no packet may be sent after it), with a ConnectionTerminated event. Only a reset from
        the concentrator's address counts: the client sends to no other, and a token that
        leaked must not let anyone anywhere end the connection (RFC 9000 §21.11)."""
        # A 1-RTT packet on the active path, decrypted and processed: no migration in it, and
        # no reset to look for (§10.3.1: "Endpoints MAY skip this check if any packet from a
        # datagram is successfully processed").
        if self.fast_datagram_path and self._receive_short_packet(data, addr, now):
            return
        if self._is_client and self._state not in END_STATES:
            token = self._peer_cid.stateless_reset_token
            from_server = any(path.addr == addr for path in self._network_paths)
            if token and from_server and is_reset(data, (token,)):
                self._close_event = events.ConnectionTerminated(
                    error_code=0,
                    frame_type=None,
                    reason_phrase=STATELESS_RESET_REASON,
                )
                self._close_end()
                return
        before = self._network_paths[0].addr if self._network_paths else None
        super().receive_datagram(data, addr, now)
        # A server learns of a migration when aioquic promotes the client's new address
        # (RFC 9000 §9.3); a new port on the same address is a NAT rebinding (§9.4: no reset).
        if (
            not self._is_client
            and before is not None
            and self._network_paths
            and self._network_paths[0].addr[0] != before[0]
        ):
            self.reset_path_state()

    @property
    def local_stream_mode(self) -> bool:
        """Whether we announce quic_tunnel_stream_mode."""
        return self._tunnel_local_stream_mode

    @property
    def peer_stream_mode(self) -> bool | None:
        """Whether the peer announced it; None until its transport parameters arrived."""
        return self._tunnel_peer_stream_mode

    @property
    def stream_mode_negotiated(self) -> bool:
        """True once both endpoints announced quic_tunnel_stream_mode."""
        return self._tunnel_local_stream_mode and bool(self._tunnel_peer_stream_mode)

    @property
    def local_payload_ethertype(self) -> int | None:
        """The EtherType we announce in quic_tunnel_payload; None: not announced (IP)."""
        return self._tunnel_local_payload

    @property
    def peer_payload_ethertype(self) -> int | None:
        """The EtherType the peer announced in quic_tunnel_payload; None: not announced (IP),
        or its transport parameters have not arrived."""
        return self._tunnel_peer_payload

    @property
    def peer_tag_sequence(self) -> bool | None:
        """Whether the peer's Packet Tags are one sequence over the session (it announced
        quic_tunnel_tag_sequence); None until its transport parameters arrived."""
        return self._tunnel_peer_tag_sequence

    def _serialize_transport_parameters(self) -> bytes:
        data = super()._serialize_transport_parameters()
        data += encode_uint_var(TAG_SEQUENCE_TP_ID) + encode_uint_var(0)
        if self._tunnel_local_stream_mode:
            data += encode_uint_var(STREAM_MODE_TP_ID) + encode_uint_var(0)
        if self._tunnel_local_payload is not None:
            value = encode_uint_var(self._tunnel_local_payload)
            data += encode_uint_var(PAYLOAD_TP_ID) + encode_uint_var(len(value)) + value
        return data

    def close_briefly(self) -> None:
        """After close(): end the connection as soon as its CONNECTION_CLOSE has left, without
        the closing period (RFC 9000 §10.2 SHOULD: three PTOs). For a connection refused at
        admission, whose slot a peer could otherwise keep taken by having itself refused
        (found by a review); should the close be lost, the peer's next packet draws a
        stateless reset or a new handshake."""
        self._tunnel_brief_close = True

    def _close_begin(self, is_initiator: bool, now: float) -> None:
        super()._close_begin(is_initiator, now)
        if self._tunnel_brief_close:
            self._close_at = now  # the timer ends it once this CONNECTION_CLOSE left

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket=from_session_ticket)
        self._loss.max_ack_delay = min(self._loss.max_ack_delay, MAX_PEER_ACK_DELAY)
        # Parameters remembered from a session ticket describe an older connection:
        # only the peer's live handshake decides stream mode.
        if not from_session_ticket:
            self._tunnel_peer_stream_mode = STREAM_MODE_TP_ID in transport_parameter_ids(data)
            self._tunnel_peer_payload = payload_parameter(data)
            self._tunnel_peer_tag_sequence = TAG_SEQUENCE_TP_ID in transport_parameter_ids(data)

    # -- receive credit tied to what the application consumed ----------------------------
    #
    # aioquic doubles a stream's MAX_STREAM_DATA once the highest offset RECEIVED passes half of
    # it, and the connection's MAX_DATA once half of it is used, whatever the application did
    # with the data, and it zero-fills every gap in a bytearray: one byte at the edge of the
    # window per round trip doubles both windows and the memory held each time (DESIGN.md
    # "Known aioquic facts"). Here credit follows consumption instead (RFC 9000 §4.2: "a
    # receiver MAY advertise a larger limit ... as data is consumed"):
    #   * a bidirectional stream: delivered in order - held by the application + stream window;
    #   * a unidirectional stream: TLV_STREAM_WINDOW, never raised (one TLV per stream);
    #   * the connection: delivered in order on all streams + connection window.
    # A peer that sends beyond the credit gets FLOW_CONTROL_ERROR from aioquic, so the bytes a
    # peer can make aioquic hold are at most the connection window, and those it can make the
    # application hold a stream window per stream (bounded by MAX_STREAMS, and at the
    # concentrator by the client's stream budget, tunnel/policy/stream_policy.py). What the
    # application holds does not count against the connection window: it did, and four TCP
    # readers that stopped reading froze every other stream of the connection, even the TCP
    # Connect OK of a new one (RFC 9000 §4.1 wants streams independent; HTTP/2 and QUIC stacks
    # return connection credit once the application has read the data).

    def set_stream_backlog(self, stream_id: int, held: int) -> None:
        """Tell how many of the stream's delivered bytes the application still holds.

        The stream's credit is kept at `delivered - held + window` (window: stream_window),
        where `delivered` is what aioquic handed to the application in order (call again
        whenever `held` changes; -tcp draft §3 "tuned to match the receive window ... so that
        no excessive data needs to be buffered"). A stream never reported holds nothing.
        """
        if held < 0:
            raise ValueError(f"held must be >= 0, got {held}")
        if held == 0 and self._stream_is_discarded(stream_id):
            # aioquic is done with the stream and nothing is held: nothing to remember (a late
            # report must not bring the entry back, the table would only grow)
            self._tunnel_backlog.pop(stream_id, None)
            return
        self._tunnel_backlog[stream_id] = held

    def forget_stream_backlog(self, stream_id: int) -> None:
        """The application no longer holds anything of the stream (the relay is done)."""
        self._tunnel_backlog.pop(stream_id, None)

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: Any, stream: QuicStream
    ) -> None:
        stream_id = stream.stream_id
        if stream_id is None or not stream.max_stream_data_local:
            return  # a unidirectional stream of ours: nothing to receive
        target = self._stream_credit_raise(stream)
        if target is not None:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
            if self._quic_logger is not None and builder.quic_logger_frames is not None:
                builder.quic_logger_frames.append(
                    self._quic_logger.encode_max_stream_data_frame(
                        maximum=stream.max_stream_data_local, stream_id=stream_id
                    )
                )

    def _stream_credit_raise(self, stream: QuicStream) -> int | None:
        """The stream's new receive credit if a raise is due now, else None (a bidirectional
        stream still receiving; see set_stream_backlog)."""
        stream_id = stream.stream_id
        if stream_id is None or stream_is_unidirectional(stream_id) or stream.receiver.is_finished:
            return None
        window = self._tunnel_stream_window
        held = self._tunnel_backlog.get(stream_id, 0)
        target = stream.receiver.starting_offset() - held + window
        # Grant in steps of a quarter window: one MAX_STREAM_DATA per ~window/4 consumed,
        # not one in every packet. Credit never shrinks (RFC 9000 §4.1).
        if target - stream.max_stream_data_local >= window // 4:
            return int(target)
        return None

    def _stream_limit_due(self, stream: QuicStream) -> bool:
        """Whether _write_stream_limits would write a MAX_STREAM_DATA for the stream now."""
        if stream.stream_id is None or not stream.max_stream_data_local:
            return False
        if self._stream_credit_raise(stream) is not None:
            return True
        return bool(stream.max_stream_data_local_sent != stream.max_stream_data_local)

    def _connection_credit_raise(self) -> int | None:
        """The connection's new receive credit (MAX_DATA) if a raise is due now, else None."""
        max_data = self._local_max_data
        window = self._tunnel_connection_window
        step = window // 4  # as for streams: one MAX_DATA per ~window/4 consumed
        # What was consumed is at most what was used, so no raise can be due before the peer
        # used 3/4 of its credit: most packets skip the pass over the streams.
        if max_data.used + window - max_data.value >= step:
            target = max_data.used - self.unconsumed_bytes() + window
            if target - max_data.value >= step:
                return int(target)
        return None

    def _connection_limits_due(self) -> bool:
        """Whether _write_connection_limits would write MAX_DATA or MAX_STREAMS now (the same
        rules as aioquic's, which it calls with `used` hidden from MAX_DATA's doubling)."""
        if self._connection_credit_raise() is not None:
            return True
        max_data = self._local_max_data
        for limit in (max_data, self._local_max_streams_bidi, self._local_max_streams_uni):
            if limit is not max_data and limit.sent - limit.used >= limit.value - limit.sent:
                continue  # aioquic batches MAX_STREAMS
            if limit.value != limit.sent:
                return True
        return False

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: Any) -> None:
        max_data = self._local_max_data
        target = self._connection_credit_raise()
        if target is not None:
            max_data.value = target
        # aioquic's method then sends MAX_DATA / MAX_STREAMS as needed, but first doubles
        # MAX_DATA when used * 2 > value: it must not see `used`.
        used, max_data.used = max_data.used, 0
        try:
            super()._write_connection_limits(builder=builder, space=space)
        finally:
            max_data.used = used

    def unconsumed_bytes(self) -> int:
        """Bytes received (or skipped over by the peer: aioquic zero-fills gaps) that aioquic
        has not delivered: for each stream, from the first byte not delivered in order to the
        highest received. The connection window bounds this sum."""
        in_aioquic = sum(
            stream.receiver.highest_offset - stream.receiver.starting_offset()
            for stream in self._streams.values()
        )
        return int(in_aioquic)

    # -- the TLS handshake's buffer ------------------------------------------------------

    def _handle_crypto_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        """Refuse CRYPTO data that would make the handshake hold more than CRYPTO_BUFFER_LIMIT
        (CRYPTO_BUFFER_EXCEEDED, RFC 9000 §7.5), then let aioquic handle the frame."""
        start = buf.tell()
        offset = buf.pull_uint_var()
        length = buf.pull_uint_var()
        buf.seek(start)
        receiver = self._crypto_streams[context.epoch].receiver
        spans = max(len(receiver._buffer), offset + length - receiver.starting_offset())
        spans += sum(
            len(stream.receiver._buffer)
            for stream in self._crypto_streams.values()
            if stream.receiver is not receiver
        )
        if spans + len(self.tls._receive_buffer) > CRYPTO_BUFFER_LIMIT:
            raise QuicConnectionError(
                error_code=QuicErrorCode.CRYPTO_BUFFER_EXCEEDED,
                frame_type=frame_type,
                reason_phrase=f"more than {CRYPTO_BUFFER_LIMIT} bytes of handshake to buffer",
            )
        super()._handle_crypto_frame(context, frame_type, buf)
        pmtu = self._tunnel_pmtu
        if pmtu is not None and pmtu.state is PmtuState.IDLE and self._handshake_complete:
            # the handshake kept to the base size; from now on the path's own (pmtu.py)
            pmtu.start(context.time)
            self._pmtu_apply()


def pacing_rate(mbps: float | None) -> float | None:
    """limits.pacing_rate_mbps (10^6 bit/s) as TunnelQuicConnection's pacing_rate (bytes/s)."""
    return None if mbps is None else mbps * 1_000_000 / 8


def _ignore_flight_before(cc: Any, first: int) -> None:
    """Make `cc` (a fresh controller, reset_path_state) blind to packets numbered below `first`:
    they were sent on the old path and were never counted in its bytes in flight."""
    acked, lost, expired = cc.on_packet_acked, cc.on_packets_lost, cc.on_packets_expired

    def on_packet_acked(*, now: float, packet: Any) -> None:
        if packet.packet_number >= first:
            acked(now=now, packet=packet)

    def on_packets_lost(*, now: float, packets: Iterable[Any]) -> None:
        ours = [p for p in packets if p.packet_number >= first]
        if ours:
            lost(now=now, packets=ours)

    def on_packets_expired(*, packets: Iterable[Any]) -> None:
        ours = [p for p in packets if p.packet_number >= first]
        if ours:
            expired(packets=ours)

    cc.on_packet_acked = on_packet_acked
    cc.on_packets_lost = on_packets_lost
    cc.on_packets_expired = on_packets_expired


class RatePacer(QuicPacketPacer):
    """aioquic's pacer at the controller's own `pacing_rate` (bytes/s) when it has one (BBR,
    "none"), else at aioquic's cwnd / srtt; never above `cap` (bytes/s) when one is given. Its
    bucket (burst) stays aioquic's: at most 16 packets' or a quarter window's worth."""

    def __init__(self, cc: Any, *, max_datagram_size: int, cap: float | None = None) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._cc = cc
        self.cap = cap
        self.rate: float | None = None  # bytes/s in force, None: not pacing yet
        self.last_sent_bytes = 0  # size of the last packet sent (see observe_sent)

    def observe_sent(self, cc: Any) -> None:
        """Learn each sent packet's size from the controller's on_packet_sent: aioquic tells
        the pacer only that a packet left, not how big it was."""
        original = cc.on_packet_sent

        def on_packet_sent(*, packet: Any) -> None:
            self.last_sent_bytes = packet.sent_bytes
            original(packet=packet)

        cc.on_packet_sent = on_packet_sent

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]
        # aioquic's pacer lets a packet go whenever its bucket holds *any* time, so a wakeup
        # that refills exactly one packet's time (plus a float residue) sends two: measured
        # here at twice the configured rate. A packet needs a whole packet's time (the size of
        # the last one sent: the next is most likely alike).
        if self.packet_time is None:
            return None
        self.update_bucket(now=now)
        needed = self._packet_cost()
        missing = needed - self.bucket_time
        return now + missing if missing > PACER_TOLERANCE * needed else None

    def update_after_send(self, now: float) -> None:
        # aioquic counts every packet as max_datagram_size; the rate is in bytes actually sent
        # (BBR measures delivered bytes), so the packet's own size is charged.
        if self.packet_time is not None:
            self.update_bucket(now=now)
            self.bucket_time = max(0.0, self.bucket_time - self._packet_cost())

    def _packet_cost(self) -> float:
        assert self.packet_time is not None
        size = self.last_sent_bytes
        if self.rate is None or size <= 0:
            return float(self.packet_time)
        return max(K_MICRO_SECOND, float(size / self.rate))

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate: float | None = getattr(self._cc, "pacing_rate", None)
        if rate is None and self.cap is not None:
            rate = congestion_window / max(smoothed_rtt, K_MICRO_SECOND)
        if rate is not None and self.cap is not None:
            rate = min(rate, self.cap)
        self.rate = rate
        if rate is None:  # no model yet (BBR before its first sample): aioquic's rule
            super().update_rate(congestion_window, smoothed_rtt)
            return
        size = self._max_datagram_size
        self.packet_time = max(K_MICRO_SECOND, min(size / rate, K_SECOND))
        burst = max(2 * size, min(congestion_window // 4, 16 * size))
        self.bucket_max = burst / rate
        if self.bucket_time > self.bucket_max:
            self.bucket_time = self.bucket_max


def stream_send_open(quic: QuicConnection, stream_id: int) -> bool:
    """Whether our side of an existing stream still takes data: False once we sent FIN or
    RESET_STREAM (aioquic resets on its own when the peer's STOP_SENDING arrives, possibly in
    the same packet as the data we are answering), or once aioquic discarded the stream."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return False
    sender = stream.sender
    return sender._reset_error_code is None and sender._buffer_fin is None


def stream_acknowledged(quic: QuicConnection, stream_id: int) -> bool:
    """Whether everything we sent on a stream of ours, FIN included, was acknowledged (True
    also once aioquic discarded the finished stream)."""
    if quic._stream_is_discarded(stream_id):
        return True
    stream = quic._streams.get(stream_id)
    return stream is None or bool(stream.sender.is_finished)


def send_rate(quic: QuicConnection) -> float | None:
    """Bytes per second the connection lets out now: its controller's pacing rate when it has
    one (BBR, "none"; for an application-limited BBR at least its window per RTT), else one
    congestion window per smoothed RTT (RFC 9002 §7.7); None before the first RTT sample."""
    loss = quic._loss
    cc = loss._cc
    rate = getattr(cc, "pacing_rate", None)
    if rate:
        if isinstance(cc, BbrCongestionControl) and cc.app_limited_until and loss._rtt_initialized:
            # BBR whose samples are application-limited: its estimate is what it was given,
            # not what the path carries. A multipath scheduler ranking it by that estimate
            # gives it no more than it has, so BBR never gets the data its probing needs and
            # stays there (measured: WiFi starved at 9.5-21 Mbit/s in 3 of 5 aggregation runs
            # with BBR on WiFi). Ranked by its window per RTT instead (2 x its estimate of the
            # bandwidth-delay product), it is offered enough to probe.
            rate = max(rate, loss.congestion_window / max(loss._rtt_smoothed, K_MICRO_SECOND))
        return float(rate)
    if not loss._rtt_initialized:
        return None
    return float(loss.congestion_window / max(loss._rtt_smoothed, K_MICRO_SECOND))


def stream_send_backlog(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written on the stream that the peer has not acknowledged yet (aioquic keeps
    them all, without bound); 0 for an unknown or discarded stream."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return int(sender._buffer_stop - sender._buffer_start)


def transport_parameter_ids(data: bytes) -> set[int]:
    """The ids present in an encoded transport parameter list (RFC 9000 §18).

    Raises ValueError if the list is truncated.
    """
    buf = Buffer(data=data)
    ids: set[int] = set()
    try:
        while not buf.eof():
            param_id = buf.pull_uint_var()
            buf.pull_bytes(buf.pull_uint_var())
            ids.add(param_id)
    except BufferReadError as exc:
        raise ValueError("transport parameter list is truncated") from exc
    return ids


def payload_parameter(data: bytes) -> int | None:
    """The EtherType of quic_tunnel_payload in an encoded transport parameter list (None when
    absent). A value that is not one varint below 2**16 is a TRANSPORT_PARAMETER_ERROR (RFC 9000
    §7.4), raised as QuicConnectionError so that aioquic closes the handshake with it."""
    buf = Buffer(data=data)
    while not buf.eof():
        param_id = buf.pull_uint_var()
        value = buf.pull_bytes(buf.pull_uint_var())
        if param_id != PAYLOAD_TP_ID:
            continue
        inner = Buffer(data=value)
        try:
            ethertype = inner.pull_uint_var()
        except BufferReadError:
            ethertype = -1
        if ethertype < 0 or ethertype > 0xFFFF or not inner.eof():
            raise QuicConnectionError(
                error_code=QuicErrorCode.TRANSPORT_PARAMETER_ERROR,
                frame_type=QuicFrameType.CRYPTO,
                reason_phrase="quic_tunnel_payload is not one 16-bit EtherType",
            )
        return ethertype
    return None


def largest_datagram_payload(frame_room: int) -> int:
    """Largest DATAGRAM payload L with type + varint(L) + L <= frame_room (0 if none)."""
    best = 0
    for length_size, max_length in ((1, 63), (2, 16383), (4, 2**30 - 1)):
        payload = min(frame_room - DATAGRAM_FRAME_TYPE_SIZE - length_size, max_length)
        if payload > best and size_uint_var(payload) <= length_size:
            best = payload
    return best


def packet_datagram_budget(
    max_datagram_size: int, peer_cid_length: int, aead_tag_size: int = AEAD_TAG_SIZE
) -> int:
    """Largest DATAGRAM payload that fits alone in a fresh 1-RTT packet.

    Mirrors aioquic's QuicPacketBuilder: a UDP payload of `max_datagram_size`
    bytes, minus the short header (1 + DCID + 2-byte packet number) and the AEAD
    tag, leaves the room for one DATAGRAM frame (type, length varint, payload).
    """
    room = max_datagram_size - SHORT_HEADER_FIXED_SIZE - peer_cid_length - aead_tag_size
    return largest_datagram_payload(room)


def frame_size_budget(remote_max_datagram_frame_size: int | None) -> int:
    """Largest payload the peer accepts: its max_datagram_frame_size counts the
    whole frame, type and length included (RFC 9221 §3). 0 if it sent none."""
    if remote_max_datagram_frame_size is None:
        return 0
    return largest_datagram_payload(remote_max_datagram_frame_size)


def datagram_budget(quic: QuicConnection) -> int:
    """Largest DATAGRAM payload this connection can send now without blocking.

    0 while the peer's transport parameters are unknown or if it does not accept
    DATAGRAM frames. aioquic itself checks neither limit: a larger payload stays at
    the head of its queue forever (DESIGN.md "Known aioquic facts"), and one above
    the peer's max_datagram_frame_size makes the peer close the connection.
    """
    return min(
        packet_datagram_budget(admitted_datagram_size(quic), len(quic._peer_cid.cid)),
        frame_size_budget(quic._remote_max_datagram_frame_size),
    )


def admitted_datagram_size(quic: QuicConnection) -> int:
    """The UDP payload size DATAGRAMs are accepted for: with pmtu_discovery, the size being
    confirmed while a probe is out (the packet waits for the answer), otherwise the size packets
    are built at."""
    if isinstance(quic, TunnelQuicConnection) and quic._tunnel_admitted is not None:
        return quic._tunnel_admitted
    return int(quic._max_datagram_size)


def is_ending(quic: QuicConnection) -> bool:
    """Whether `quic` is closing or draining (RFC 9000 §10.2): it takes nothing more to send,
    though aioquic tells of the end (ConnectionTerminated) only after three PTOs — a peer's
    CONNECTION_CLOSE is known here at once."""
    return quic._state in END_STATES


def smoothed_rtt(quic: QuicConnection) -> float | None:
    """The path's smoothed RTT in seconds (RFC 9002 §5.3), None before the first sample."""
    loss = quic._loss
    if not loss._rtt_initialized:
        return None
    return float(loss._rtt_smoothed)


def minimum_rtt(quic: QuicConnection) -> float | None:
    """The least RTT sample of the path in seconds (RFC 9002 §5.2), None before the first."""
    loss = quic._loss
    if not loss._rtt_initialized:
        return None
    return float(loss._rtt_min)


def queue_datagram_at(quic: QuicConnection, data: bytes, token: Hashable | None, at: int) -> None:
    """Queue a DATAGRAM frame at position `at` of `quic`'s queue (0: the head; a re-send);
    `token` as for TunnelQuicConnection.send_datagram_frame (a plain QuicConnection reports no
    fates)."""
    if isinstance(quic, TunnelQuicConnection):
        quic.send_datagram_frame(data, token, at=at)
    else:
        quic._datagrams_pending.insert(at, data)


def pending_datagram_count(quic: QuicConnection) -> int:
    """Datagrams queued in aioquic that no packet carried yet."""
    return len(quic._datagrams_pending)


def resumed_identity(quic: QuicConnection) -> TicketIdentity | None:
    """Server: who the session ticket this connection resumed with was issued to (None: a full
    handshake, the client presented a certificate). Only once the handshake resumed."""
    if not isinstance(quic, TunnelQuicConnection):
        return None
    tls = getattr(quic, "tls", None)
    if tls is None or not tls.session_resumed:
        return None
    return quic._tunnel_resumed


def nothing_decrypted(quic: QuicConnection) -> bool:
    """Server: whether no packet the connection received could be decrypted yet. aioquic
    stays in FIRSTFLIGHT until the first packet decrypts, and while it does, each Initial it
    gets starts the connection over (new TLS context and keys, the path set to its sender)."""
    return bool(quic._state is QuicConnectionState.FIRSTFLIGHT)


def early_data_possible(quic: QuicConnection) -> bool:
    """Client: whether what is queued now goes out in 0-RTT packets (a session ticket allowing
    early data was presented at connect(); RFC 9001 §4.6.1), until the handshake completes."""
    return bool(quic._cryptos and quic._cryptos[tls.Epoch.ZERO_RTT].send.is_valid())


def peer_certificate(
    quic: QuicConnection,
) -> tuple[x509.Certificate | None, list[x509.Certificate]]:
    """The certificate the peer presented and its chain ((None, []) if none or before the
    handshake); on a server, only with TunnelQuicConnection(request_client_certificate=True)."""
    tls = getattr(quic, "tls", None)
    if tls is None:
        return None, []
    return tls._peer_certificate, list(tls._peer_certificate_chain)
