"""The datagram fast path's packet protection (tunnel/protocol/quic_crypto.c, and quic_ext's
Python steps it replaced, kept for a build without it) against aioquic's own CryptoContext:
the same bytes sealed, the same results and errors opened, for the three TLS 1.3 suites, short
and long headers, every packet-number length and key phase (RFC 9001 §5)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
from aioquic._buffer import Buffer
from aioquic.buffer import size_uint_var
from aioquic.quic.crypto import CryptoError, CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicProtocolVersion
from aioquic.tls import CipherSuite
from hypothesis import given
from hypothesis import strategies as st

from tunnel.protocol import quic_crypto, quic_ext

SUITES = [
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.AES_256_GCM_SHA384,
    CipherSuite.CHACHA20_POLY1305_SHA256,
]
Seal = Callable[[CryptoPair, bytes, bytes, int], bytes]
Open = Callable[[CryptoPair, bytes, int, int], tuple[bytes, bytes, int]]
IMPLEMENTATIONS: list[tuple[str, Seal, Open]] = [
    ("c", quic_ext._seal_short_c, quic_ext._open_short_c),
    ("python", quic_ext._seal_short_python, quic_ext._open_short_python),
]


def pair(suite: CipherSuite, secret: bytes) -> CryptoPair:
    """Both directions on one secret, so that what one seals the other opens."""
    keys = CryptoPair()
    for context in (keys.send, keys.recv):
        context.setup(cipher_suite=suite, secret=secret, version=QuicProtocolVersion.VERSION_1)
    return keys


def short_header(first_bits: int, cid: bytes, packet_number: int, pn_length: int) -> bytes:
    # RFC 9000 §17.3.1: fixed bit, spin, key phase (set by the caller), packet number length
    first = 0x40 | (first_bits & 0x24) | (pn_length - 1)
    truncated = packet_number & ((1 << (8 * pn_length)) - 1)
    return bytes((first,)) + cid + truncated.to_bytes(pn_length, "big")


def test_the_extension_is_built_and_in_use() -> None:
    # make builds it before the tests: without it the fast path runs the Python steps
    assert not isinstance(quic_crypto.load(), str), quic_crypto.load()
    assert quic_ext.FAST_CRYPTO_MISSING is None
    assert quic_ext._seal_short is quic_ext._seal_short_c
    keys = pair(CipherSuite.AES_128_GCM_SHA256, bytes(32))
    assert hasattr(keys.send.aead, "fast") and hasattr(keys.send.hp, "fast")


def test_a_missing_extension_is_one_sentence(tmp_path: Path) -> None:
    missing = quic_crypto.load(tmp_path / "_qtcrypto.so")
    assert isinstance(missing, str) and "run make" in missing
    broken = tmp_path / "broken" / "_qtcrypto.so"
    broken.parent.mkdir()
    broken.write_bytes(b"not an ELF file")
    reason = quic_crypto.load(broken)
    assert isinstance(reason, str) and "rebuild it with make" in reason


@pytest.mark.parametrize("name,seal,open_", IMPLEMENTATIONS)
@pytest.mark.parametrize("suite", SUITES)
@given(
    secret=st.binary(min_size=48, max_size=48),
    cid=st.binary(min_size=0, max_size=20),
    payload=st.binary(min_size=3, max_size=1400),
    packet_number=st.integers(0, 2**40),
    first_bits=st.integers(0, 255),
)
def test_short_packets_are_aioquics_bytes_both_ways(
    name: str,
    seal: Seal,
    open_: Open,
    suite: CipherSuite,
    secret: bytes,
    cid: bytes,
    payload: bytes,
    packet_number: int,
    first_bits: int,
) -> None:
    keys = pair(suite, secret)
    key_phase_bit = keys.send.key_phase << 2
    header = short_header((first_bits & ~0x04) | key_phase_bit, cid, packet_number, 2)
    # the sealing side sends 2-byte packet numbers (PACKET_NUMBER_SEND_SIZE), as aioquic
    sealed = seal(keys, header, payload, packet_number)
    assert sealed == keys.send.encrypt_packet(header, payload, packet_number)
    # the expected packet number: near the real one, as a receiver's is
    expected = max(0, packet_number - (first_bits % 7))
    opened = open_(keys, sealed, 1 + len(cid), expected)
    assert opened == keys.recv.decrypt_packet(sealed, 1 + len(cid), expected)[:3]
    assert opened == (header, payload, packet_number)


@pytest.mark.parametrize("suite", SUITES)
@given(
    secret=st.binary(min_size=32, max_size=32),
    pn_length=st.integers(1, 4),
    long_header=st.booleans(),
    payload=st.binary(min_size=4, max_size=300),
    packet_number=st.integers(0, 2**62 - 1),
)
def test_every_packet_number_length_and_header_form(
    suite: CipherSuite,
    secret: bytes,
    pn_length: int,
    long_header: bool,
    payload: bytes,
    packet_number: int,
) -> None:
    # the C seal takes the packet number's length from the first byte, as aioquic's apply()
    keys = pair(suite, secret)
    assert keys.send.aead is not None and keys.send.hp is not None
    if long_header:  # a 1-RTT-like long header: form, fixed bit, type, length in the low bits
        truncated = packet_number & ((1 << (8 * pn_length)) - 1)
        header = bytes((0xC0 | (pn_length - 1),)) + bytes(10) + truncated.to_bytes(pn_length, "big")
    else:
        header = short_header(keys.send.key_phase << 2, b"\x01" * 8, packet_number, pn_length)
    fast = keys.send.aead.fast  # type: ignore[attr-defined]
    sealed = fast.seal(keys.send.hp.fast, header, payload, packet_number)  # type: ignore[attr-defined]
    assert sealed == keys.send.encrypt_packet(header, payload, packet_number)
    pn_offset = len(header) - pn_length
    recv = keys.recv
    assert recv.aead is not None and recv.hp is not None
    opened = recv.aead.fast.open(  # type: ignore[attr-defined]
        recv.hp.fast,  # type: ignore[attr-defined]
        sealed,
        pn_offset,
        packet_number,
        recv.key_phase,
    )
    assert opened == recv.decrypt_packet(sealed, pn_offset, packet_number)[:3]


@pytest.mark.parametrize("name,seal,open_", IMPLEMENTATIONS)
@pytest.mark.parametrize("suite", SUITES)
def test_a_key_update_is_followed_on_both_sides(
    name: str, seal: Seal, open_: Open, suite: CipherSuite
) -> None:
    # RFC 9001 §6: the packet key changes, the header protection key does not; the opening
    # side sees the other key phase and takes aioquic's path, which updates its keys
    sender, receiver = pair(suite, bytes(range(48))), pair(suite, bytes(range(48)))
    header = short_header(0, b"\x07" * 8, 5, 2)
    first = seal(sender, header, b"before the update", 5)
    assert open_(receiver, first, 9, 5) == (header, b"before the update", 5)
    sender.update_key()
    assert sender.key_phase == 1  # the phase the next packet's header carries
    header = short_header(0x04, b"\x07" * 8, 6, 2)
    second = seal(sender, header, b"after the update", 6)
    assert open_(receiver, second, 9, 6) == (header, b"after the update", 6)
    assert receiver.recv.key_phase == 1
    # and the keys that follow stay in step
    header = short_header(0x04, b"\x07" * 8, 7, 2)
    assert open_(receiver, seal(sender, header, b"again", 7), 9, 7) == (header, b"again", 7)


@pytest.mark.parametrize("name,seal,open_", IMPLEMENTATIONS)
@pytest.mark.parametrize("suite", SUITES)
@given(data=st.data())
def test_a_damaged_packet_raises_aioquics_error(
    name: str, seal: Seal, open_: Open, suite: CipherSuite, data: st.DataObject
) -> None:
    keys = pair(suite, bytes(48))
    header = short_header(0, b"\x02" * 8, 300, 2)
    sealed = bytearray(seal(keys, header, b"a datagram's frames", 300))
    # any bit but the masked first-byte bits that make it another key phase
    at = data.draw(st.integers(11, len(sealed) - 1))
    sealed[at] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(CryptoError) as expected:
        keys.recv.decrypt_packet(bytes(sealed), 9, 300)
    with pytest.raises(CryptoError) as got:
        open_(keys, bytes(sealed), 9, 300)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("name,seal,open_", IMPLEMENTATIONS)
def test_a_packet_too_short_to_sample_raises_aioquics_error(
    name: str, seal: Seal, open_: Open
) -> None:
    keys = pair(CipherSuite.AES_128_GCM_SHA256, bytes(32))
    sealed = seal(keys, short_header(0, b"\x02" * 8, 1, 2), b"abcd", 1)
    # the sample is the 16 bytes from 4 after the packet number's first byte (9): 13..29
    with pytest.raises(CryptoError, match="Packet is too short to sample"):
        keys.recv.decrypt_packet(sealed[:28], 9, 1)
    with pytest.raises(CryptoError, match="Packet is too short to sample"):
        open_(keys, sealed[:28], 9, 1)
    with pytest.raises(CryptoError, match="Packet is too short to sample"):
        open_(keys, sealed, len(sealed), 1)


def test_keys_not_set_up_raise_as_aioquic() -> None:
    keys = CryptoPair()
    for _, seal, open_ in IMPLEMENTATIONS:
        with pytest.raises(AssertionError, match="Encryption key is not available"):
            seal(keys, short_header(0, b"", 1, 2), bytes(20), 1)
        with pytest.raises(CryptoError, match="Decryption key is not available"):
            open_(keys, bytes(40), 1, 1)


def test_the_c_types_refuse_bad_arguments_with_a_sentence() -> None:
    extension = quic_crypto.load()
    assert not isinstance(extension, str)
    with pytest.raises(ValueError, match="Invalid cipher name"):
        extension.Aead(b"aes-128-cbc", bytes(16), bytes(12))
    with pytest.raises(ValueError, match="Invalid key length"):
        extension.Aead(b"aes-256-gcm", bytes(16), bytes(12))
    with pytest.raises(ValueError, match="Invalid iv length"):
        extension.Aead(b"aes-128-gcm", bytes(16), bytes(8))
    with pytest.raises(ValueError, match="Invalid cipher name"):
        extension.HeaderProtection(b"aes-128-gcm", bytes(16))
    aead = extension.Aead(b"aes-128-gcm", bytes(16), bytes(12))
    hp = extension.HeaderProtection(b"aes-128-ecb", bytes(16))
    with pytest.raises(TypeError, match="HeaderProtection"):
        aead.seal(aead, b"\x41\x00\x01", bytes(20), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too short for its packet number"):
        aead.seal(hp, b"\x43\x00", bytes(20), 1)
    with pytest.raises(CryptoError, match="too short to sample"):
        aead.seal(hp, b"\x41\x00\x01", b"", 1)


@given(
    prefix=st.binary(max_size=40),
    sizes=st.lists(st.integers(0, 20_000), max_size=8),
    room=st.integers(-10, 70_000),
    min_size=st.integers(0, 4),
)
def test_datagram_frames_in_c_and_python_are_the_same_frames(
    prefix: bytes, sizes: list[int], room: int, min_size: int
) -> None:
    extension = quic_crypto.load()
    assert not isinstance(extension, str)
    datagrams = [bytes((i,)) * size for i, size in enumerate(sizes)]
    in_c, in_python = deque(datagrams), deque(datagrams)
    made = extension.datagram_frames(prefix, in_c, room, min_size)
    assert made == quic_ext._datagram_frames_python(prefix, in_python, room, min_size)
    assert in_c == in_python
    payload, taken, padded = made
    # what aioquic's parser reads: the prefix, a DATAGRAM frame with its length (RFC 9221 §4)
    # per datagram taken, in order, then PADDING; the rest stays queued
    assert list(in_c) == datagrams[taken:]
    buf = Buffer(data=payload)
    assert buf.pull_bytes(len(prefix)) == prefix
    for data in datagrams[:taken]:
        assert buf.pull_uint_var() == QuicFrameType.DATAGRAM_WITH_LENGTH
        assert buf.pull_bytes(buf.pull_uint_var()) == data
    rest = payload[buf.tell() :]
    assert padded == bool(rest) and rest == bytes(len(rest))
    assert len(payload) == (max(buf.tell(), min_size) if buf.tell() else 0)
    assert len(payload) <= max(room, min_size) or not taken
    if taken < len(datagrams):  # the next one did not fit
        size = len(datagrams[taken])
        assert buf.tell() + 1 + size_uint_var(size) + size > room


def test_datagram_frames_refuses_what_is_not_bytes() -> None:
    extension = quic_crypto.load()
    assert not isinstance(extension, str)
    with pytest.raises(TypeError):
        extension.datagram_frames(b"", deque([1]), 1000, 2)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        extension.datagram_frames(b"", 5, 1000, 2)  # type: ignore[arg-type]
