"""The C library of the TUN offloads (issue 14 items 2 and 5): tcp_tso.c cuts the
super-packets a TUN hands over, tcp_gro.c merges the segments we write. make builds it with gcc
into build/libqtoffload.so; both programs load it once, with ctypes."""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "build" / "libqtoffload.so"


@cache
def load(library: Path = LIBRARY) -> ctypes.CDLL | str:
    """The library, or one sentence saying why there is none."""
    if not library.exists():
        return f"{library} is missing: run make (it builds the TUN offloads with gcc)"
    try:
        loaded = ctypes.CDLL(str(library))
        loaded.qt_tso_segment  # noqa: B018 - an older build lacks a function: say so here
        loaded.qt_gro_coalesce  # noqa: B018
    except (OSError, AttributeError) as exc:
        return f"{library} cannot be loaded ({exc}): rebuild it with make"
    return loaded
