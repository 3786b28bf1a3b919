"""Network namespaces entered by one thread for a moment (setns(2)): how one `qtun client-group`
process runs clients that each live in a namespace of their own (tunnel/aio/client_group.py).

A socket, a TUN device or a netlink socket belongs to the network namespace of the thread that
created it, for its whole life, whichever thread uses it later. So a client of the group needs
its namespace only while it creates those: the client wraps each creation in `entered()`, which
moves the calling thread into the namespace and back. The block must not await — other clients
run on the same thread between two awaits. A thread started inside the block inherits the
namespace (the kernel copies the creating thread's), which is how the TUN device's netlink
configuration thread (tunnel/aio/tun.py) lands in it; a thread pool started elsewhere enters it
with `enter_thread` as its initializer (tunnel/aio/netlink_watch.py).

Python 3.11 has no os.setns, so the call goes through libc with ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from tunnel.user_error import RuntimeFailure

CLONE_NEWNET: Final = 0x40000000  # linux/sched.h: setns may only enter a network namespace
NAMED_NETNS_DIR: Final = Path("/run/netns")  # where `ip netns add NAME` pins one
THREAD_NETNS: Final = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class NetnsError(RuntimeFailure):
    """A namespace cannot be opened or entered; the message says what to do."""


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        if code == errno.EPERM:
            raise NetnsError(
                f"entering the network namespace {what} needs root (CAP_SYS_ADMIN): run as root"
            )
        if code == errno.EINVAL:
            raise NetnsError(
                f"{what} is not a network namespace: give /proc/<pid>/ns/net, /run/netns/<name> "
                "or a name from `ip netns list`"
            )
        raise NetnsError(f"entering the network namespace {what} failed: {os.strerror(code)}")


def namespace_path(text: str) -> Path:
    """`text` as a path: a bare name (no '/') is the one `ip netns add` made in /run/netns."""
    return Path(text) if "/" in text else NAMED_NETNS_DIR / text


class NetNamespace:
    """An open network namespace (its file descriptor, held until `close`)."""

    def __init__(self, text: str) -> None:
        self.path = namespace_path(text)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsError(
                f"cannot open the network namespace {self.path} ({exc.strerror}): give "
                "/proc/<pid>/ns/net of a process in it or a name from `ip netns list`"
            ) from None
        try:
            with self.entered():  # refuses a file that is no network namespace, at once
                pass
        except BaseException:
            os.close(self.fd)
            raise

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in this namespace for the block, then back where it was."""
        home = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self.fd, str(self.path))
            try:
                yield
            finally:
                _setns(home, THREAD_NETNS)
        finally:
            os.close(home)

    def enter_thread(self) -> None:
        """Move the calling thread into this namespace for good (a pool thread's initializer)."""
        _setns(self.fd, str(self.path))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"NetNamespace({str(self.path)!r})"


def entered(netns: NetNamespace | None) -> contextlib.AbstractContextManager[None]:
    """`netns.entered()`, or nothing to do for None (the process's own namespace)."""
    return netns.entered() if netns is not None else contextlib.nullcontext()


__all__ = ["NetNamespace", "NetnsError", "entered", "namespace_path"]
