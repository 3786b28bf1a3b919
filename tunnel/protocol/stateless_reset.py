"""Stateless reset (RFC 9000 §10.3): tokens, the reset packet, and recognising one.

A concentrator that restarted, or lost a connection's state, cannot decrypt what the client
still sends on it. Without a stateless reset the client only notices through its liveness
probe (several probe intervals) or the idle timeout. With one, the concentrator answers such
a packet with a reset carrying the token it announced for that connection ID, and the client
drops the connection at once and reconnects.

For that the token must be computable without the connection's state: it is derived from the
connection ID with a static key (§10.3.2), here HMAC-SHA256 truncated to 16 bytes. The key is
derived from the concentrator's TLS private key, its one secret that survives a restart —
so a restarted concentrator sends the tokens the old one announced, with nothing new to
configure. (aioquic draws tokens at random and neither sends nor detects resets: quic_ext.py
installs these tokens and the check.)

The same key also marks every connection ID the concentrator issues: its last CID_TAG_SIZE
bytes are a MAC of the others, so a reset is sent only for a packet whose connection ID we
could have issued. §10.3.3 makes each reset smaller than its trigger, which bounds but does not
stop two endpoints that answer each other's resets (about 20 resets for one 60-byte trigger);
a reset's random bytes carry our tag with probability 2**-16, so a reset from anyone is not
answered, nor junk of random connection IDs — while a client's smallest packet (a bare PING,
under 43 bytes) to a restarted concentrator still is.

Sans-I/O: randomness is injected; nothing here reads files or sockets.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Final

TOKEN_SIZE: Final = 16
# §10.3: the first byte (0b01 + 6 unpredictable bits), at least 4 more unpredictable bytes to
# look like a short-header packet with a connection ID, then the token.
MIN_RESET_SIZE: Final = 21
# §10.3: a reset answering a packet of 43 bytes or fewer SHOULD be one byte shorter than it;
# for longer triggers this size is enough to pass for a small 1-RTT packet and never amplifies.
MAX_RESET_SIZE: Final = 43
_KEY_LABEL: Final = b"qtun stateless reset key v1"
# the tag at the end of our connection IDs; the rest (6 of aioquic's 8 bytes, 48 bits) stays
# random enough that the IDs of many connections do not collide and cannot be linked (§5.1)
CID_TAG_SIZE: Final = 2
_CID_TAG_LABEL: Final = b"qtun connection id tag v1"
MIN_TAGGED_CID_LENGTH: Final = CID_TAG_SIZE + 4


def reset_key_from_secret(secret: bytes) -> bytes:
    """The 32-byte static key for tokens, derived from a long-lived secret (the TLS private
    key's bytes) under a label of its own, so the secret itself is never used as a key."""
    if not secret:
        raise ValueError("the secret to derive the stateless reset key from is empty")
    return hmac.new(_KEY_LABEL, secret, hashlib.sha256).digest()


def reset_token(key: bytes, connection_id: bytes) -> bytes:
    """The stateless reset token of `connection_id` under `key` (§10.3.2)."""
    return hmac.new(key, connection_id, hashlib.sha256).digest()[:TOKEN_SIZE]


def _cid_tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _CID_TAG_LABEL + body, hashlib.sha256).digest()[:CID_TAG_SIZE]


def tag_connection_id(key: bytes, connection_id: bytes) -> bytes:
    """`connection_id` with its last CID_TAG_SIZE bytes replaced by the MAC of the others under
    `key` (see the module's docstring); anything that shapes the rest of the ID (a worker's
    steering byte) must come first."""
    if len(connection_id) < MIN_TAGGED_CID_LENGTH:
        raise ValueError(
            f"a tagged connection ID has at least {MIN_TAGGED_CID_LENGTH} bytes, "
            f"not {len(connection_id)}"
        )
    body = connection_id[:-CID_TAG_SIZE]
    return body + _cid_tag(key, body)


def is_tagged_connection_id(key: bytes, connection_id: bytes) -> bool:
    """Whether `connection_id` carries our tag under `key`, i.e. we could have issued it."""
    if len(connection_id) < MIN_TAGGED_CID_LENGTH:
        return False
    body, tag = connection_id[:-CID_TAG_SIZE], connection_id[-CID_TAG_SIZE:]
    return hmac.compare_digest(tag, _cid_tag(key, body))


def reset_size(trigger_size: int) -> int | None:
    """Size of the reset answering a `trigger_size`-byte datagram, None when none may be sent:
    it must be smaller than its trigger (§10.3.3: no reset loops, no amplification) and at
    least MIN_RESET_SIZE."""
    size = min(trigger_size - 1, MAX_RESET_SIZE)
    return size if size >= MIN_RESET_SIZE else None


def build_reset(token: bytes, trigger_size: int, random: Callable[[int], bytes]) -> bytes | None:
    """A stateless reset packet (§10.3) for a datagram of `trigger_size` bytes, or None when
    the trigger is too small to answer. `random(n)` gives n unpredictable bytes."""
    if len(token) != TOKEN_SIZE:
        raise ValueError(f"a stateless reset token has {TOKEN_SIZE} bytes, not {len(token)}")
    size = reset_size(trigger_size)
    if size is None:
        return None
    unpredictable = random(size - TOKEN_SIZE)
    # Header form 0 (short) and fixed bit 1; the other six bits of the first byte unpredictable.
    first = 0x40 | (unpredictable[0] & 0x3F)
    return bytes([first]) + unpredictable[1:] + token


def is_reset(datagram: bytes, tokens: Iterable[bytes]) -> bool:
    """Whether `datagram` is a stateless reset carrying one of `tokens` (§10.3.1): long
    enough, short-header form, and its last 16 bytes equal to a token (compared in constant
    time, §10.3.1 "SHOULD")."""
    if len(datagram) < MIN_RESET_SIZE or datagram[0] & 0x80:
        return False
    tail = datagram[-TOKEN_SIZE:]
    found = False
    for token in tokens:
        found |= hmac.compare_digest(tail, token)
    return found


__all__ = [
    "CID_TAG_SIZE",
    "MAX_RESET_SIZE",
    "MIN_RESET_SIZE",
    "TOKEN_SIZE",
    "build_reset",
    "is_reset",
    "is_tagged_connection_id",
    "reset_key_from_secret",
    "reset_size",
    "reset_token",
    "tag_connection_id",
]
