"""A minimal NFQUEUE client: packets the kernel queues to us (an `NFQUEUE` rule) and our verdict
on each, over a NETLINK_NETFILTER socket, without libnetfilter_queue.

Why: the faithful connect mode of stream mode (tunnel/aio/stream_client.py) holds an
application's SYN until the concentrator answered its TCP Connect (-tcp draft §3: "SYN received
-> Open Stream, send TLVs"; the application's connect() then reflects the destination's answer).
Holding a packet and deciding later is what NFQUEUE is for; the nftables `queue` statement is
not in this kernel (CONFIG_NFT_QUEUE), the xtables NFQUEUE target is, so the rule is written
with iptables (-nft) in the mangle table's OUTPUT chain, before the nat hook that redirects.

The message formats (linux/netfilter/nfnetlink_queue.h): every message is an nlmsghdr (native
endian), an nfgenmsg (family, version, queue number big-endian), then attributes (nlattr,
4-byte aligned); the queue's own fields are big-endian. `encode_*` / `decode_packets` are pure,
so they are tested without root.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from tunnel.user_error import RuntimeFailure

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_QUEUE: Final = 3
NFQNL_MSG_PACKET: Final = 0
NFQNL_MSG_VERDICT: Final = 1
NFQNL_MSG_CONFIG: Final = 2
NFQA_CFG_CMD: Final = 1
NFQA_CFG_PARAMS: Final = 2
NFQA_PACKET_HDR: Final = 1
NFQA_VERDICT_HDR: Final = 2
NFQA_PAYLOAD: Final = 10
NFQNL_CFG_CMD_BIND: Final = 1
NFQNL_CFG_CMD_UNBIND: Final = 2
NFQNL_COPY_PACKET: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLMSG_ERROR: Final = 2
NF_DROP: Final = 0
NF_ACCEPT: Final = 1
COPY_RANGE: Final = 0xFFFF
_HEADER: Final = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_ATTR: Final = struct.Struct("=HH")  # nlattr: length, type


class NfQueueError(RuntimeFailure):
    """The queue could not be bound; the message says what to do."""


@dataclass(frozen=True)
class QueuedPacket:
    """A packet the kernel holds until `verdict` is given for `packet_id`."""

    packet_id: int
    payload: bytes


def _attribute(kind: int, value: bytes) -> bytes:
    padding = b"\0" * (-len(value) % 4)
    return _ATTR.pack(_ATTR.size + len(value), kind) + value + padding


def _message(kind: int, queue: int, attributes: bytes, sequence: int, flags: int) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue) + attributes
    message_type = (NFNL_SUBSYS_QUEUE << 8) | kind
    return _HEADER.pack(_HEADER.size + len(body), message_type, flags, sequence, 0) + body


def encode_bind(queue: int, sequence: int = 1) -> bytes:
    """Bind `queue` to this socket and ask for whole packets (copy mode PACKET)."""
    command = _attribute(NFQA_CFG_CMD, struct.pack("=BB", NFQNL_CFG_CMD_BIND, 0) + bytes(2))
    params = _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET))
    return _message(NFQNL_MSG_CONFIG, queue, command + params, sequence, NLM_F_REQUEST | NLM_F_ACK)


def encode_unbind(queue: int, sequence: int = 2) -> bytes:
    command = _attribute(NFQA_CFG_CMD, struct.pack("=BB", NFQNL_CFG_CMD_UNBIND, 0) + bytes(2))
    return _message(NFQNL_MSG_CONFIG, queue, command, sequence, NLM_F_REQUEST)


def encode_verdict(queue: int, packet_id: int, accept: bool) -> bytes:
    verdict = _attribute(
        NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet_id)
    )
    return _message(NFQNL_MSG_VERDICT, queue, verdict, 0, NLM_F_REQUEST)


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            return
        yield kind & 0x3FFF, data[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3


def decode_packets(data: bytes) -> tuple[list[QueuedPacket], list[int]]:
    """The queued packets in one netlink read, and the error codes of any NLMSG_ERROR
    messages (0 is an acknowledgement); anything else is skipped."""
    packets: list[QueuedPacket] = []
    errors: list[int] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        body = data[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3
        if kind == NLMSG_ERROR and len(body) >= 4:
            errors.append(-struct.unpack_from("=i", body)[0])
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET and len(body) >= 4:
            packet_id, payload = None, b""
            for attr, value in _attributes(body[4:]):
                if attr == NFQA_PACKET_HDR and len(value) >= 4:
                    packet_id = struct.unpack_from("!I", value)[0]
                elif attr == NFQA_PAYLOAD:
                    payload = value
            if packet_id is not None:
                packets.append(QueuedPacket(packet_id, payload))
    return packets, errors


class NfQueue:
    """One bound queue; `read()` returns what is queued now (non-blocking), `verdict()`
    releases or drops a packet. A packet never given a verdict stays held until `close()`
    unbinds the queue (the kernel then drops it)."""

    def __init__(self, queue: int) -> None:
        self.queue = queue
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NfQueueError(
                f"cannot open a netfilter netlink socket ({exc.strerror}): run as root"
            ) from None
        try:
            self._sock.bind((0, 0))
            self._sock.send(encode_bind(queue))
            _, errors = decode_packets(self._sock.recv(65536))
            if any(errors):
                code = next(e for e in errors if e)
                raise NfQueueError(
                    f"the kernel refused to bind NFQUEUE {queue} ({os.strerror(code)}): is "
                    "another program bound to it? run as root on a kernel with "
                    "CONFIG_NETFILTER_NETLINK_QUEUE"
                )
            self._sock.setblocking(False)
        except OSError as exc:
            self._sock.close()
            raise NfQueueError(
                f"cannot bind NFQUEUE {queue} ({exc.strerror}): run as root"
            ) from None
        except NfQueueError:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, max_reads: int = 64) -> list[QueuedPacket]:
        packets: list[QueuedPacket] = []
        for _ in range(max_reads):
            try:
                data = self._sock.recv(1 << 17)
            except BlockingIOError:
                break
            except OSError:  # ENOBUFS: the kernel dropped messages; the rule's bypass lets
                break  # packets through when the queue overflows
            packets.extend(decode_packets(data)[0])
        return packets

    def verdict(self, packet_id: int, accept: bool) -> None:
        # OSError: the packet was already dropped (queue unbound or overflow)
        with contextlib.suppress(OSError):
            self._sock.send(encode_verdict(self.queue, packet_id, accept))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.send(encode_unbind(self.queue))
        self._sock.close()


__all__ = [
    "NfQueue",
    "NfQueueError",
    "QueuedPacket",
    "decode_packets",
    "encode_bind",
    "encode_unbind",
    "encode_verdict",
]
