"""A Linux TUN device (layer-3, no packet-information header) driven by the asyncio loop, or
its layer-2 sibling, a TAP device (Ethernet frames, README "L2 mode"): one class, the kind is a
parameter, since both are opened, configured, read and written the same way.

The tunnel draft (§tunnel mode) carries whole IP packets; a TUN device is where the operating
system hands them to us and takes them back. The device is opened through /dev/net/tun with one
TUNSETIFF ioctl (no python-pytun: the ioctl is three lines) and configured with pyroute2.

Throughput comes from batching: one loop wakeup drains up to `batch_size` packets, so the
per-wakeup cost of the event loop is shared by many packets; and, with `offload` (IFF_VNET_HDR,
tun.offload), from writing a batch's consecutive TCP segments of a flow as one super-packet
(tunnel/wire/tcp_gro.py) and, with `tso` (tun.tso), from reading the super-packets this host's
TCP sends, cut into segments by tunnel/wire/tcp_tso.py.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tunnel.user_error import RuntimeFailure
from tunnel.wire.tcp_gro import PLAIN, VNET_HEADER_SIZE, Coalescer
from tunnel.wire.tcp_tso import Segmenter, SegmentError

log = logging.getLogger(__name__)

TUN_CLONE_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000  # no 4-byte packet-information prefix: reads/writes are bare IP packets
IFF_VNET_HDR = 0x4000  # a virtio_net_hdr before every packet read and written (GSO writes)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int): what the kernel may hand us
TUN_F_CSUM = 0x01  # checksums left to us (needed by the two below)
TUN_F_TSO4 = 0x02  # TCP super-packets over IPv4
TUN_F_TSO6 = 0x04  # and over IPv6
IFNAMSIZ = 16  # the kernel's name buffer, including the terminating NUL
IFA_F_NODAD = 0x02  # IPv6 address usable at once (a point-to-point TUN needs no DAD)
DEFAULT_BATCH_SIZE = 64
MAX_PACKET = 65535


class TunError(RuntimeFailure):
    """A TUN or TAP device could not be opened or configured; the message says what to do."""


class DeviceKind(Enum):
    """What the device carries: IP packets (TUN) or Ethernet frames (TAP); the value is the
    name errors and logs use."""

    TUN = "TUN"
    TAP = "TAP"


_KIND_FLAGS = {DeviceKind.TUN: IFF_TUN, DeviceKind.TAP: IFF_TAP}


@dataclass
class TunStats:
    """What the device moved; `write_drops` counts packets the kernel refused."""

    packets_read: int = 0
    bytes_read: int = 0
    read_wakeups: int = 0
    largest_batch: int = 0
    packets_written: int = 0
    bytes_written: int = 0
    write_drops: int = 0
    reads: int = 0  # read system calls that returned a packet (fewer than packets_read: TSO)
    read_errors: int = 0  # super-packets that could not be cut (dropped, a router would too)
    writes: int = 0  # write system calls that the kernel accepted (fewer than packets: merged)
    merge_fallbacks: int = 0  # merged writes refused, their packets then written one by one


def _check_name(name: str, kind: DeviceKind = DeviceKind.TUN) -> bytes:
    encoded = name.encode()
    if not encoded or len(encoded) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise TunError(
            f"{kind.value} name {name!r} is invalid: use 1 to {IFNAMSIZ - 1} characters "
            "without '/' or spaces"
        )
    return encoded


def _open_tun(name: str, kind: DeviceKind = DeviceKind.TUN, offload: bool = False) -> int:
    what = kind.value
    encoded = _check_name(name, kind)
    try:
        fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunError(
            f"{TUN_CLONE_DEVICE} is missing: load the tun module (modprobe tun) or give the "
            "container the device"
        ) from None
    except PermissionError:
        raise TunError(
            f"opening {TUN_CLONE_DEVICE} needs root (or CAP_NET_ADMIN): run as root"
        ) from None
    try:
        flags = _KIND_FLAGS[kind] | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", encoded, flags))
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EPERM:
            raise TunError(
                f"creating {what} {name!r} needs root (or CAP_NET_ADMIN): run as root"
            ) from None
        if exc.errno == errno.EBUSY:
            raise TunError(
                f"{what} {name!r} is already open (in this or another process): pick another "
                "name or close it"
            ) from None
        if exc.errno == errno.EINVAL:
            raise TunError(
                f"an interface named {name!r} already exists and is not a {what} device: pick "
                "another name"
            ) from None
        raise TunError(f"creating {what} {name!r} failed: {exc.strerror}") from None
    return fd


_offloads: tuple[Coalescer, Segmenter] | str | None = None  # loaded once per process


def _load_offloads(name: str) -> tuple[Coalescer, Segmenter] | None:
    """The C merge and segmenter (build/libqtoffload.so), or None with a warning saying why
    TUN `name` is opened without offloads, as with tun.offload = false."""
    global _offloads
    if _offloads is None:
        coalescer, segmenter = Coalescer.load(), Segmenter.load()
        if isinstance(coalescer, str):
            _offloads = coalescer
        elif isinstance(segmenter, str):
            _offloads = segmenter
        else:
            _offloads = (coalescer, segmenter)
    if isinstance(_offloads, str):
        log.warning("TUN %s is opened without offloads: %s", name, _offloads)
        return None
    return _offloads


def _enable_tso(fd: int, name: str, segmenter: Segmenter) -> Segmenter | None:
    """Let the kernel hand TCP super-packets (and packets without their checksum) to `fd`,
    if it takes the request; else None, the device staying as it was (whole, checksummed
    packets), and a warning saying why."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError as exc:
        log.warning(
            "TUN %s reads without segmentation offload: the kernel refused it (%s)",
            name,
            exc.strerror,
        )
        return None
    return segmenter


class TunDevice:
    """An open, configured TUN device. Create it with `TunDevice.create`; `close()` removes it
    (the device is not persistent, so it also disappears if the process dies).

    With a `coalescer` (offload) every read and write carries a virtio_net_hdr, and
    `write_batch` merges a flow's consecutive TCP segments into one write (tcp_gro). Reads have
    the header stripped; with a `segmenter` (tso) the kernel may hand over TCP super-packets
    and packets without their checksum, which `read_batch` cuts into whole, checksummed
    packets (tcp_tso)."""

    def __init__(
        self,
        fd: int,
        name: str,
        index: int,
        mtu: int,
        kind: DeviceKind = DeviceKind.TUN,
        coalescer: Coalescer | None = None,
        segmenter: Segmenter | None = None,
    ) -> None:
        self.fd = fd
        self.kind = kind
        self.coalescer = coalescer
        self.offload = coalescer is not None
        self.segmenter = segmenter if coalescer is not None else None
        self.name = name
        self.index = index
        self.mtu = mtu
        self.stats = TunStats()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def create(
        cls,
        name: str,
        *,
        mtu: int,
        addresses: Iterable[str | IPv4Interface | IPv6Interface] = (),
        routes: Iterable[str] = (),
        kind: DeviceKind = DeviceKind.TUN,
        bridge: str | None = None,
        offload: bool = False,
        tso: bool = False,
        txqueuelen: int | None = None,
    ) -> TunDevice:
        """Open TUN (or TAP) `name`, set its MTU and addresses ("10.8.0.1/24", "fd00:8::1/64"),
        make it a port of `bridge` if given, bring it up and add `routes` (prefixes sent into
        the device). `offload` (a TUN only): merged TCP writes; `tso` (with `offload`): reads
        with segmentation offload, see the class. `txqueuelen`: the ring of packets the
        kernel holds for us to read (None: the kernel's); the tun driver drops beyond it
        without stopping its queue, so no qdisc above it ever holds packets instead."""
        what = kind.value
        if not 68 <= mtu <= MAX_PACKET:
            raise TunError(f"{what} MTU {mtu} is outside 68..65535: choose an MTU in that range")
        parsed = [a if not isinstance(a, str) else _parse_interface(a) for a in addresses]
        if any(isinstance(a, IPv6Interface) for a in parsed) and mtu < 1280:
            raise TunError(f"{what} MTU {mtu} is below 1280, the minimum for IPv6: raise it")
        offloads = _load_offloads(name) if offload and kind is DeviceKind.TUN else None
        fd = _open_tun(name, kind, offloads is not None)
        coalescer = segmenter = None
        if offloads is not None:
            coalescer = offloads[0]
            segmenter = _enable_tso(fd, name, offloads[1]) if tso else None
        try:
            # pyroute2 0.9 runs its netlink socket on the thread's running event loop, and
            # uvloop cannot open netlink sockets: configure from a thread without a loop.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tun-config") as pool:
                index = pool.submit(
                    _configure, name, mtu, parsed, list(routes), bridge, txqueuelen
                ).result()
        except NetlinkError as exc:
            os.close(fd)
            raise TunError(f"configuring {what} {name!r} failed: {exc.args[-1]}") from None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, name, index, mtu, kind, coalescer, segmenter)

    # --- I/O -------------------------------------------------------------------------------

    def read_batch(self, max_packets: int = DEFAULT_BATCH_SIZE) -> list[bytes]:
        """The packets available now (an empty list if none): reads until there are
        `max_packets` (a super-packet's segments may take the batch a little beyond)."""
        if self.segmenter is not None:
            return self._read_segmented(self.segmenter, max_packets)
        packets: list[bytes] = []
        read = os.read
        fd = self.fd
        for _ in range(max_packets):
            try:
                packet = read(fd, MAX_PACKET + VNET_HEADER_SIZE)
            except BlockingIOError:
                break
            packets.append(packet)
        if packets:
            self.stats.reads += len(packets)
            if self.offload:
                packets = [packet[VNET_HEADER_SIZE:] for packet in packets]
            self._count_read(packets)
        return packets

    def _read_segmented(self, segmenter: Segmenter, max_packets: int) -> list[bytes]:
        packets: list[bytes] = []
        read = os.read
        fd = self.fd
        segment = segmenter.segment
        while len(packets) < max_packets:
            try:
                frame = read(fd, MAX_PACKET + VNET_HEADER_SIZE)
            except BlockingIOError:
                break
            self.stats.reads += 1
            try:
                packets += segment(frame)
            except SegmentError as exc:
                self.stats.read_errors += 1
                if self.stats.read_errors == 1:  # the first one says why; the count the rest
                    log.warning("TUN %s: %s; dropped (tun.read_errors counts them)", self.name, exc)
        self._count_read(packets)
        return packets

    def _count_read(self, packets: list[bytes]) -> None:
        self.stats.packets_read += len(packets)
        self.stats.bytes_read += sum(map(len, packets))
        self.stats.largest_batch = max(self.stats.largest_batch, len(packets))

    def write(self, packet: bytes) -> bool:
        """Hand one IP packet to the kernel; False (and counted) if the kernel refused it."""
        return self.write_batch([packet])[0]

    def write_batch(self, packets: Sequence[bytes]) -> list[bool]:
        """Write every packet, in order within each flow; whether the kernel accepted each one
        (a refused one is counted in `write_drops`: a router drops)."""
        if self.coalescer is None:
            return [self._write_one(packet, packet) for packet in packets]
        accepted = [False] * len(packets)
        for data, members in self.coalescer.coalesce(packets):
            if len(members) == 1:
                accepted[members[0]] = self._write_one(data, packets[members[0]])
                continue
            try:
                os.write(self.fd, data)
            except OSError:
                # a merged write the kernel refused: its packets one by one, so that a refusal
                # (a full queue, a kernel that takes no GSO write) loses no more than before
                self.stats.merge_fallbacks += 1
                for index in members:
                    accepted[index] = self._write_one(PLAIN + packets[index], packets[index])
                continue
            self.stats.writes += 1
            self.stats.packets_written += len(members)
            for index in members:
                accepted[index] = True
                self.stats.bytes_written += len(packets[index])
        return accepted

    def _write_one(self, data: bytes, packet: bytes) -> bool:
        try:
            os.write(self.fd, data)
        except OSError:
            # BlockingIOError (queue full) or EINVAL (not a valid IP packet): a router drops.
            self.stats.write_drops += 1
            return False
        self.stats.writes += 1
        self.stats.packets_written += 1
        self.stats.bytes_written += len(packet)
        return True

    def start_reading(
        self,
        on_packets: Callable[[list[bytes]], None],
        batch_size: int = DEFAULT_BATCH_SIZE,
        loop: asyncio.AbstractEventLoop | None = None,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        """Call `on_packets(batch)` from the loop whenever packets are waiting, up to
        `batch_size` per call (the loop comes back for the rest). A read that fails (the
        device was deleted: EBADFD, for good) stops the reading and goes to `on_error` (or,
        without one, to the loop's exception handler, once): the fd would stay readable and the
        loop spin on the error, a traceback logged each turn (found by a review)."""
        self._loop = loop or asyncio.get_running_loop()

        def ready() -> None:
            try:
                batch = self.read_batch(batch_size)
            except OSError as exc:
                self.stop_reading()
                if on_error is None:
                    raise
                on_error(exc)
                return
            if batch:
                self.stats.read_wakeups += 1
                on_packets(batch)

        self._loop.add_reader(self.fd, ready)

    def stop_reading(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None

    def close(self) -> None:
        """Stop reading and close the fd, which removes the (non-persistent) device."""
        if self.fd < 0:
            return
        self.stop_reading()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bridge_problem(bridge: str) -> str | None:
    """Why `bridge` cannot take TAP ports (one sentence), or None if it is a Linux bridge."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tun-config") as pool:
        return pool.submit(_bridge_problem, bridge).result()


def _bridge_problem(bridge: str) -> str | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return (
                f"bridge {bridge!r} does not exist: create it (ip link add {bridge} type bridge; "
                "ip link set it up) or set l2.bridge to an existing one"
            )
        (link,) = ipr.get_links(found[0])
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind != "bridge":
            return (
                f"interface {bridge!r} is not a Linux bridge (it is {kind or 'a plain device'}): "
                "set l2.bridge to a bridge"
            )
    return None


def interface_macs(names: Iterable[str], root: Path = Path("/sys/class/net")) -> list[int]:
    """The MAC addresses (48-bit integers) of the interfaces `names` that exist and have one,
    read from sysfs: the concentrator's bridge and TAPs, which no Ethernet client may take as
    its own (README "L2 mode"). An interface gone meanwhile is left out."""
    macs: list[int] = []
    for name in names:
        try:
            text = (root / name / "address").read_text().strip()
        except OSError:
            continue
        digits = text.replace(":", "")
        if len(digits) == 12:
            try:
                macs.append(int(digits, 16))
            except ValueError:
                continue
    return macs


def _configure(
    name: str,
    mtu: int,
    addresses: list[IPv4Interface | IPv6Interface],
    routes: list[str],
    bridge: str | None = None,
    txqueuelen: int | None = None,
) -> int:
    with IPRoute() as ipr:
        index: int = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, mtu=mtu)
        if txqueuelen is not None:
            ipr.link("set", index=index, txqlen=txqueuelen)
        if bridge is not None:
            masters = ipr.link_lookup(ifname=bridge)
            if not masters:
                raise TunError(
                    f"bridge {bridge!r} does not exist: create it (ip link add {bridge} type "
                    "bridge) or set l2.bridge to an existing one"
                )
            ipr.link("set", index=index, master=masters[0])
        for iface in addresses:
            kwargs: dict[str, object] = {}
            if isinstance(iface, IPv6Interface):
                kwargs["flags"] = IFA_F_NODAD
            ipr.addr(
                "add",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **kwargs,
            )
        ipr.link("set", index=index, state="up")
        for route in routes:
            network = ip_network(route, strict=False)
            ipr.route(
                "replace",
                dst=str(network.network_address),
                dst_len=network.prefixlen,
                oif=index,
                family=10 if network.version == 6 else 2,
            )
    return index


def _parse_interface(text: str) -> IPv4Interface | IPv6Interface:
    try:
        return ip_interface(text)
    except ValueError:
        raise TunError(
            f"TUN address {text!r} is not an address with prefix length (e.g. 10.8.0.1/24)"
        ) from None
