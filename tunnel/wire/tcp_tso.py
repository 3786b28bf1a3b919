"""TCP segmentation offload in user space: what a TUN device with TUN_F_TSO4/6 hands over, cut
back into the packets the tunnel carries (issue 14 items 2 and 5; the read side of
tunnel/wire/tcp_gro.py).

Why: with segmentation offload the sending TCP on this host gives its TUN up to 64 kB at once,
so its kernel path runs once per super-packet instead of once per segment, and we read a
super-packet with one system call instead of ~45. The tunnel still carries whole IP packets no
larger than the TUN's MTU (the drafts' tunnel mode): each super-packet is cut into the segments
the kernel would have sent (tcp_gso_segment's rules) before it goes into DATAGRAM frames.

The cutting and checksumming is in C (tcp_tso.c, built by make into build/libqtoffload.so and
loaded with ctypes): in Python it cost about 4 us per segment, more than the reads it saves.
Without the library a TUN is opened without offloads (`Segmenter.load()` says why), which is
how it was before; with it, `Segmenter.segment` is a pure function of bytes.
"""

from __future__ import annotations

import ctypes

from tunnel.wire import offload_library
from tunnel.wire.tcp_gro import GSO_NONE, VNET_HEADER_SIZE

MAX_SEGMENTS = 128  # a 64 kB super-packet at the smallest MSS we allow (536) makes 123
_OUT_CAPACITY = 65535 + MAX_SEGMENTS * 120  # the payload plus every segment's IP + TCP headers

_REASONS = {
    -1: "its headers are shorter than they say",
    -2: "it asks for a segmentation this program did not enable",
    -3: "it has more segments than a 64 kB packet can",
    -4: "its checksum position lies outside the packet",
}


class SegmentError(ValueError):
    """A frame from the kernel that cannot be cut into packets; the message says why."""


class Segmenter:
    """The C segmenter with its output buffers: `segment` returns copies, so one instance
    serves every device of a process, from one thread (the programs' event loop)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        function = library.qt_tso_segment
        function.restype = ctypes.c_int
        function.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        self._function = function
        self._out = bytearray(_OUT_CAPACITY)
        self._out_view = memoryview(self._out)
        self._out_address = ctypes.addressof(ctypes.c_char.from_buffer(self._out))
        self._offsets = (ctypes.c_uint32 * (MAX_SEGMENTS + 1))()
        self._offsets_address = ctypes.addressof(self._offsets)

    @classmethod
    def load(cls) -> Segmenter | str:
        """The segmenter, or one sentence saying why there is none."""
        library = offload_library.load()
        return library if isinstance(library, str) else cls(library)

    def segment(self, frame: bytes) -> list[bytes]:
        """The packets in `frame` (virtio_net_hdr + packet, as read): the packet itself when
        the kernel neither segmented it nor left its checksum to us, else the segments."""
        if len(frame) >= VNET_HEADER_SIZE and frame[0] == 0 and frame[1] == GSO_NONE:
            return [frame[VNET_HEADER_SIZE:]]
        count = self._function(
            frame,
            len(frame),
            self._out_address,
            _OUT_CAPACITY,
            self._offsets_address,
            MAX_SEGMENTS,
        )
        if count < 0:
            raise SegmentError(
                f"a {len(frame)}-byte read from the TUN (its virtio header included) cannot be "
                f"cut into segments: {_REASONS.get(count, f'error {count}')}"
            )
        view, offsets = self._out_view, self._offsets
        return [bytes(view[offsets[i] : offsets[i + 1]]) for i in range(count)]
