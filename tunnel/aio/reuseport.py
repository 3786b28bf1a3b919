"""Several concentrator workers on one UDP port: SO_REUSEPORT sockets, and a classic BPF
program that hands each datagram to the worker its destination connection ID names.

The kernel keeps the sockets bound with SO_REUSEPORT to one address and port as a group, in the
order they were bound, and runs the group's program on every datagram: the number it returns is
the index of the socket that gets it (a number past the last socket: the kernel's own hash of the
4-tuple). QUIC routes by connection ID, not by 4-tuple (a client that migrates keeps its
connection, RFC 9000 §9), so the program reads the first byte of the Destination Connection ID
and takes it modulo the number of workers:
- a short header (RFC 9000 §17.3.1): first byte, then the DCID — the byte at offset 1;
- a long header (§17.2): first byte, 4 bytes of version, the DCID length, then the DCID — the
  byte at offset 6.
Each worker issues connection IDs whose first byte is its index modulo the number of workers
(tunnel/protocol/quic_ext.py `steer_connection_id`), so once a client uses them every packet of
the connection reaches the worker that holds it. A client's first Initial carries a DCID the
client chose at random: it lands on the worker that byte names, which then answers with its own
connection IDs. A session's later connections reach the same worker because the client starts
them with a DCID whose first byte is that of a connection ID the concentrator gave it
(tunnel/aio/client.py).

`worker_of` is the same rule in Python, for tests and for the Retry connection IDs a worker
issues (tunnel/aio/udp.py).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import Final

SO_ATTACH_REUSEPORT_CBPF: Final = 51  # linux/asm-generic/socket.h, not in Python's socket module
LONG_HEADER_DCID_OFFSET: Final = 6  # flags (1) + version (4) + DCID length (1)
SHORT_HEADER_DCID_OFFSET: Final = 1  # flags (1)
MAX_WORKERS: Final = 256  # one byte of connection ID decides

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_B_ABS: Final = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = packet[k]
_JSET_K: Final = 0x45  # BPF_JMP | BPF_JSET | BPF_K: if A & k, skip jt else jf
_JA: Final = 0x05  # BPF_JMP | BPF_JA: skip k
_MOD_K: Final = 0x94  # BPF_ALU | BPF_MOD | BPF_K: A %= k
_RET_A: Final = 0x16  # BPF_RET | BPF_A: return A
_FILTER: Final = struct.Struct("HBBI")  # struct sock_filter {u16 code; u8 jt, jf; u32 k}


class ReusePortError(Exception):
    """The kernel refused the worker group; the message says what to do."""


def worker_of(datagram: bytes, workers: int) -> int:
    """The worker `steering_program(workers)` sends `datagram` to (0 for a datagram too short
    to hold the byte, as a classic BPF load past the end makes the program return 0)."""
    if not datagram:
        return 0
    offset = LONG_HEADER_DCID_OFFSET if datagram[0] & 0x80 else SHORT_HEADER_DCID_OFFSET
    if len(datagram) <= offset:
        return 0
    return datagram[offset] % workers


def steering_program(workers: int) -> bytes:
    """The classic BPF program of `worker_of`, as the array of struct sock_filter the kernel
    takes."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 1 to {MAX_WORKERS}, not {workers}")
    instructions = (
        (_LD_B_ABS, 0, 0, 0),  # A = first byte
        (_JSET_K, 0, 2, 0x80),  # long header? (no: skip the next two)
        (_LD_B_ABS, 0, 0, LONG_HEADER_DCID_OFFSET),
        (_JA, 0, 0, 1),
        (_LD_B_ABS, 0, 0, SHORT_HEADER_DCID_OFFSET),
        (_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    )
    return b"".join(_FILTER.pack(*instruction) for instruction in instructions)


def attach_steering(sock: socket.socket, workers: int) -> None:
    """Make `steering_program(workers)` the program of the SO_REUSEPORT group `sock` is in."""
    program = steering_program(workers)
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel copies
    # the program during the call, so the buffer need only outlive it
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // _FILTER.size, ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise ReusePortError(
            f"the kernel refused the connection-ID steering program ({exc.strerror}): run "
            "with workers = 1, or on a Linux kernel of 4.5 or later"
        ) from None


__all__ = [
    "MAX_WORKERS",
    "ReusePortError",
    "attach_steering",
    "steering_program",
    "worker_of",
]
