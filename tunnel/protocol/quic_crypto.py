"""The C steps of the datagram fast path (issue 14 item 5): quic_crypto.c, built by make into
build/_qtcrypto.so, a CPython extension linked with OpenSSL's libcrypto. quic_ext gives every
key aioquic sets up a twin here, seals and opens fast-path packets with it, and writes their
DATAGRAM frames with datagram_frames; without the extension quic_ext keeps its Python steps
(the same bytes, slower)."""

from __future__ import annotations

import importlib.util
from collections import deque
from functools import cache
from pathlib import Path
from typing import Protocol, cast

from aioquic._crypto import CryptoError

EXTENSION = Path(__file__).resolve().parents[2] / "build" / "_qtcrypto.so"


class FastHeaderProtection(Protocol):
    """One direction's header protection key (RFC 9001 §5.4)."""


class FastAead(Protocol):
    """One direction's packet protection key (RFC 9001 §5.3), with the header protection of
    the same direction passed in (a key update changes this key only, RFC 9001 §6)."""

    def seal(
        self,
        hp: FastHeaderProtection,
        plain_header: bytes,
        plain_payload: bytes,
        packet_number: int,
        /,
    ) -> bytes: ...

    def open(
        self,
        hp: FastHeaderProtection,
        packet: bytes,
        pn_offset: int,
        expected_packet_number: int,
        key_phase: int,
        /,
    ) -> tuple[bytes, bytes, int] | None: ...


class Extension(Protocol):
    def Aead(self, cipher_name: bytes, key: bytes, iv: bytes) -> FastAead: ...

    def HeaderProtection(self, cipher_name: bytes, key: bytes) -> FastHeaderProtection: ...

    def datagram_frames(
        self, prefix: bytes, pending: deque[bytes], room: int, min_size: int, /
    ) -> tuple[bytes, int, bool]: ...


@cache
def load(extension: Path = EXTENSION) -> Extension | str:
    """The extension, its failures raising aioquic's CryptoError; or one sentence saying why
    there is none."""
    if not extension.exists():
        return f"{extension} is missing: run make (it builds the C packet protection with gcc)"
    try:
        spec = importlib.util.spec_from_file_location("_qtcrypto", extension)
        assert spec is not None and spec.loader is not None  # a .so path always has both
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.init(CryptoError)
    except (ImportError, OSError, AttributeError) as exc:
        return f"{extension} cannot be loaded ({exc}): rebuild it with make"
    return cast(Extension, module)
