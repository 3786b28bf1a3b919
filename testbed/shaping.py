"""Link impairment with one interface and two backends.

Every shaped link is  A --veth-- [middle node M] --veth-- B.  M carries no address; it holds
the impairment for both directions ("ab" = A to B, "ba" = B to A; for an access link A is the
client, so "up" is an alias of "ab" and "down" of "ba"):

* backend "netem": M bridges its two veths and puts a `netem` qdisc on the egress of each
  (A->B traffic leaves M through the B-side veth). For kernels that have sch_netem.
* backend "wire": M runs `qtwire` (testbed/wire/qtwire.c), which copies frames between the two
  veths through packet sockets and applies delay, jitter, loss and a drop-tail rate queue.
  For kernels without sch_netem, such as the one this project was built on.

`probe_netem()` answers whether netem works here; `resolve_backend("auto")` picks netem when it
does. Link down/up is backend-independent: M's two veths go down, so A and B both see a real
carrier loss; `blackhole()` instead drops everything with the link left up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from testbed.hosts import HostProcess, Node, ProcessManager
from testbed.paths import WIRE_BINARY, WIRE_SOURCE
from testbed.profiles import LinkProfile
from testbed.traces import trace_path
from tunnel.user_error import RuntimeFailure, UserError

Backend = Literal["netem", "wire"]
BACKENDS: tuple[str, ...] = ("auto", "netem", "wire")
DIRECTIONS = {"ab": ("ab",), "ba": ("ba",), "up": ("ab",), "down": ("ba",), "both": ("ab", "ba")}
ETH_FRAME_BYTES = 1514  # a full-MTU Ethernet frame without FCS: converts byte limits for netem
PROBE_PREFIX = "qtb-probe-"


class ShapingError(RuntimeFailure):
    """A shaping backend could not be set up or refused a setting."""


class ShaperUnanswered(ShapingError):
    """The shaper did not answer a setting: whether it applied it is unknown."""


@dataclass(frozen=True)
class NetemProbe:
    available: bool
    detail: str  # tc's own message when it is not


def probe_netem() -> NetemProbe:
    """Try a netem qdisc on the loopback of a scratch namespace; a definite yes or no."""
    ns = f"{PROBE_PREFIX}{os.getpid()}"
    run = subprocess.run
    try:
        made = run(["ip", "netns", "add", ns], capture_output=True, text=True)
        if made.returncode != 0:
            return NetemProbe(False, f"cannot create a namespace: {made.stderr.strip()}")
        # The namespace's own loopback: needs no dummy/veth module.
        tc = run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                "lo",
                "root",
                "netem",
                "delay",
                "1ms",
            ],
            capture_output=True,
            text=True,
        )
        if tc.returncode == 0:
            return NetemProbe(True, "netem qdisc accepted")
        return NetemProbe(False, (tc.stderr or tc.stdout).strip() or f"tc exit {tc.returncode}")
    finally:
        run(["ip", "netns", "del", ns], capture_output=True)


def resolve_backend(requested: str) -> Backend:
    """auto -> netem if the kernel has it, else wire; a forced backend is checked, not trusted."""
    if requested not in BACKENDS:
        raise ShapingError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}.")
    if requested == "wire":
        return "wire"
    probe = probe_netem()
    if requested == "netem" and not probe.available:
        raise ShapingError(
            f"backend netem was forced but this kernel has no sch_netem ({probe.detail}); "
            "use --backend wire or auto."
        )
    return "netem" if probe.available else "wire"


def ensure_wire_binary() -> Path:
    """build/qtwire, compiled from its source if missing or older (what `make` does too)."""
    if WIRE_BINARY.exists() and WIRE_BINARY.stat().st_mtime >= WIRE_SOURCE.stat().st_mtime:
        return WIRE_BINARY
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise ShapingError(
            f"build/qtwire is missing and there is no C compiler ({cc}): run `make`."
        )
    WIRE_BINARY.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(WIRE_BINARY), str(WIRE_SOURCE)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise ShapingError(f"building qtwire failed: {built.stderr.strip()}")
    return WIRE_BINARY


def wire_settings(p: LinkProfile) -> dict[str, str]:
    """A LinkProfile in qtwire's control vocabulary (integers in us and bit/s)."""
    return {
        "delay_us": str(round(p.delay_ms * 1000)),
        "jitter_us": str(round(p.jitter_ms * 1000)),
        "reorder": "1" if p.reorder else "0",
        "loss_pct": f"{p.loss_pct:g}",
        "ge_p_pct": f"{p.ge_p_pct:g}",
        "ge_r_pct": f"{p.ge_r_pct:g}",
        "ge_good_loss_pct": f"{p.ge_good_loss_pct:g}",
        "ge_bad_loss_pct": f"{p.ge_bad_loss_pct:g}",
        "rate_bps": str(round(p.rate_mbit * 1e6)),
        "trace": str(trace_path(p.trace)) if p.trace else "",
        "limit_pkts": str(p.queue_packets),
        "limit_bytes": str(p.queue_bytes),
        "mtu": str(p.mtu_bytes),
    }


def netem_args(p: LinkProfile, blackhole: bool = False) -> list[str]:
    """The `tc qdisc replace ... netem <args>` arguments for one direction.

    netem reorders jittered packets unless a rate is set (with a rate, each packet is timed
    after the one before it), so jitter without reordering adds a rate far above any veth's.
    netem only limits in packets: a byte limit becomes packets of full-MTU frames.
    """
    if p.trace:
        raise ShapingError(
            f"netem has no trace-driven rate (trace {p.trace!r}): run the lab with the wire"
            " backend (--backend wire) for a trace"
        )
    if p.mtu_bytes:
        raise ShapingError(
            f"netem has no per-direction packet size limit (mtu_bytes {p.mtu_bytes}): run the"
            " lab with the wire backend (--backend wire) for a path MTU black hole"
        )
    limit = p.queue_packets or 1000
    if p.queue_bytes:
        byte_limit_pkts = max(1, p.queue_bytes // ETH_FRAME_BYTES)
        limit = min(limit, byte_limit_pkts) if p.queue_packets else byte_limit_pkts
    args = ["netem", "limit", str(limit)]
    if p.delay_ms or p.jitter_ms:
        args += ["delay", f"{p.delay_ms:g}ms"]
        if p.jitter_ms:
            args += [f"{p.jitter_ms:g}ms"]
    loss = 100.0 if blackhole else p.loss_pct
    if loss:
        args += ["loss", f"{loss:g}%"]
    elif p.ge_p_pct:  # netem: loss gemodel p r 1-h 1-k
        args += ["loss", "gemodel", f"{p.ge_p_pct:g}%", f"{p.ge_r_pct:g}%"]
        args += [f"{p.ge_bad_loss_pct:g}%", f"{p.ge_good_loss_pct:g}%"]
    if p.rate_mbit:
        args += ["rate", f"{p.rate_mbit:g}mbit"]
    elif p.jitter_ms and not p.reorder:
        args += ["rate", "100gbit"]
    return args


class LinkShaper(ABC):
    """Impairment of one link A -- M -- B, per direction, changeable while traffic runs."""

    backend: Backend

    def __init__(self, middle: Node, intf_a: str, intf_b: str) -> None:
        self.middle = middle  # the Mininet node M
        self.intf_a = intf_a  # M's veth towards A
        self.intf_b = intf_b  # M's veth towards B
        self.profiles: dict[str, LinkProfile] = {"ab": LinkProfile(), "ba": LinkProfile()}
        self.blackholed = False
        # directions whose last setting went unanswered: the shaper may hold it or not
        self.unsure: set[str] = set()
        # what the random loss and jitter were last seeded with (None: not seeded, see seed)
        self.seeded_with: int | None = None

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def _apply(self, direction: str) -> None: ...

    def set(self, direction: str = "both", **fields: float | int | bool | str) -> None:
        """Change some fields of one or both directions, e.g. set("up", delay_ms=20, loss_pct=1)."""
        if direction not in DIRECTIONS:
            raise ShapingError(
                f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}."
            )
        for d in DIRECTIONS[direction]:
            self._set(d, self.profiles[d].with_overrides(**fields))

    def set_profile(self, direction: str, prof: LinkProfile) -> None:
        for d in DIRECTIONS[direction]:
            self._set(d, prof)

    def _set(self, direction: str, prof: LinkProfile) -> None:
        """Apply `prof` to one direction; a refused setting leaves the old one in force."""
        old, self.profiles[direction] = self.profiles[direction], prof
        try:
            self._apply(direction)
        except (ShapingError, UserError, OSError) as exc:  # a trace file that cannot be used,
            # or qtwire unreachable: the record keeps the one it had, and a setting it may have
            # applied all the same (sent, not answered) is marked unsure, so that a restore
            # sends the record again rather than trust it (found by a review)
            self.profiles[direction] = old
            if isinstance(exc, ShaperUnanswered | OSError):
                self.unsure.add(direction)
            raise
        self.unsure.discard(direction)

    @abstractmethod
    def seed(self, value: int) -> None:
        """Start the link's random loss and jitter afresh from `value` (0 <= value < 2**64), so
        that a point measured again meets the same losses (experiments/runner.py seeds every
        link with the point's seed); `seeded_with` records it. Only qtwire can: the netem
        backend leaves the kernel's generator alone and records None."""

    def blackhole(self, on: bool = True) -> None:
        """Silently drop everything in both directions while the link stays up."""
        self.blackholed = on
        for d in ("ab", "ba"):
            self._apply(d)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "middle": self.middle.name,
            "blackhole": self.blackholed,
            "seed": self.seeded_with,
            "ab": self.profiles["ab"].as_dict(),
            "ba": self.profiles["ba"].as_dict(),
        }


class NetemShaper(LinkShaper):
    backend: Backend = "netem"

    def start(self) -> None:
        br = "qtbbr0"
        self.middle.cmd(
            f"ip link add {br} type bridge && ip link set {self.intf_a} master {br} && "
            f"ip link set {self.intf_b} master {br} && ip link set {br} up"
        )
        for d in ("ab", "ba"):
            self._apply(d)

    def stop(self) -> None:
        pass  # the qdiscs and the bridge vanish with M's namespace

    def seed(self, value: int) -> None:
        # netem draws from the kernel's generator; its own seed option (newer kernels and tc
        # than this lab was written on) is not passed: the record says the link is unseeded
        self.seeded_with = None

    def egress_intf(self, direction: str) -> str:
        return self.intf_b if direction == "ab" else self.intf_a

    def command(self, direction: str) -> list[str]:
        prof = self.profiles[direction]
        return [
            "tc",
            "qdisc",
            "replace",
            "dev",
            self.egress_intf(direction),
            "root",
            *netem_args(prof, self.blackholed),
        ]

    def _apply(self, direction: str) -> None:
        out = self.middle.cmd(" ".join(self.command(direction)) + " 2>&1; echo rc=$?")
        if not str(out).strip().endswith("rc=0"):
            raise ShapingError(f"tc refused the netem setting: {str(out).strip()}")


class WireShaper(LinkShaper):
    backend: Backend = "wire"

    def __init__(
        self, middle: Node, intf_a: str, intf_b: str, control_path: Path, procs: ProcessManager
    ) -> None:
        super().__init__(middle, intf_a, intf_b)
        self.control_path = control_path
        self.procs = procs  # a hosts.ProcessManager
        self.proc: HostProcess | None = None

    def start(self) -> None:
        binary = ensure_wire_binary()
        argv = [str(binary), self.intf_a, self.intf_b, str(self.control_path)]
        self.proc = self.procs.start(self.middle, "qtwire", argv)
        deadline = time.monotonic() + 5
        # the path appears once qtwire listens on it (it renames the socket into place)
        while not self.control_path.exists():
            if not self.proc.running() or time.monotonic() > deadline:
                log = self.proc.log_path.read_text(errors="replace")[-500:]
                raise ShapingError(f"qtwire did not start on {self.middle.name}: {log}")
            time.sleep(0.01)
        for d in ("ab", "ba"):
            self._apply(d)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None
        with contextlib.suppress(OSError):
            self.control_path.unlink()

    def control(self, line: str) -> str:
        """One request/answer exchange with qtwire's control socket; ShapingError (one
        sentence) if qtwire is gone or does not answer within 3 s (an OSError reached the lab
        CLI, which ended the session with a traceback, found by a review)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(3)
                s.connect(str(self.control_path))
                s.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := s.recv(4096):
                    chunks.append(chunk)
        except OSError as exc:
            what = "did not answer within 3 s" if isinstance(exc, TimeoutError) else exc.strerror
            raise ShaperUnanswered(
                f"qtwire on {self.middle.name} {what or exc}: the link's setting is unknown; "
                "see the lab's log, or restart the lab"
            ) from exc
        reply = b"".join(chunks).decode().strip()
        if reply.startswith("err"):
            raise ShapingError(f"qtwire refused {line!r}: {reply[4:]}")
        return reply

    def command(self, direction: str) -> str:
        settings = wire_settings(self.profiles[direction])
        settings["down"] = "1" if self.blackholed else "0"
        return f"set {direction} " + " ".join(f"{k}={v}" for k, v in settings.items())

    def _apply(self, direction: str) -> None:
        self.control(self.command(direction))

    def seed(self, value: int) -> None:
        if not 0 <= value < 2**64:
            raise ShapingError(f"a link's seed must be within 0 to 2**64 - 1, not {value}.")
        self.control(f"seed {value}")
        self.seeded_with = value

    def counters(self) -> dict[str, dict[str, str]]:
        """qtwire's settings and counters per direction (rx, tx, drop_loss, drop_queue, ...)."""
        return _per_direction(self.control("get"))

    def window(self) -> dict[str, dict[str, float]]:
        """Per direction, since the previous call (which it ends): how late frames left after
        their due time (late_max_us, late_mean_us, departures), and the shaper's own faults
        since it started (tx_err, drop_cap, kernel_drops: frames lost that no setting asked
        for). qtwire's "stats"."""
        return stats_window(self.control("stats"))


def stats_window(reply: str) -> dict[str, dict[str, float]]:
    """qtwire's "stats" answer as WireShaper.window gives it: every value a number."""
    return {
        direction: {key: float(value) for key, value in fields.items()}
        for direction, fields in _per_direction(reply).items()
    }


def _per_direction(reply: str) -> dict[str, dict[str, str]]:
    """qtwire's "ab k=v ... | ba k=v ..." answer as {direction: {key: value}}."""
    out: dict[str, dict[str, str]] = {}
    for part in reply.split("|"):
        words = part.split()
        out[words[0]] = dict(w.split("=", 1) for w in words[1:])
    return out
