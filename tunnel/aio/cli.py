"""`qtun client|concentrator|client-group -c FILE [--set key=value ...] [--log-level LEVEL]`.

`client-group` runs the clients a group file lists in one process, each in its own network
namespace (tunnel/aio/client_group.py); its `--set` applies to every client.

Exit codes (README "Running the tunnel"): 0 after a clean SIGINT/SIGTERM shutdown, 2 for a usage or
configuration error, 1 for a runtime failure. Either error is one sentence on stderr,
`qtun: error: <what is wrong>: <what to do>`, never a traceback.

Logs go to stderr, one line per event: `<iso time> <role> <LEVEL> <message key=value ...>`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from tunnel.user_error import EXIT_OK, RuntimeFailure, SentenceParser, run_command

ROLES = ("client", "concentrator", "client-group")
LOG_LEVELS = ("debug", "info", "warning", "error")
TUN_DEVICE = Path("/dev/net/tun")
CAP_NET_ADMIN = 12  # linux/capability.h


def build_parser() -> argparse.ArgumentParser:
    parser = SentenceParser(
        prog="qtun",
        description="QUIC tunnel client and concentrator (tunnel, session and stream modes).",
    )
    parser.add_argument("role", choices=ROLES, help="which program to run")
    parser.add_argument(
        "-c", "--config", required=True, help="TOML configuration file (client-group: group file)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a configuration key, e.g. --set concentrator.port=4433 (repeatable)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default: info")
    return parser


class _LineFormatter(logging.Formatter):
    """`<iso time> <role> <LEVEL> <message>`, time in UTC with milliseconds."""

    def __init__(self, role: str) -> None:
        super().__init__(f"%(asctime)s {role} %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"

    def formatException(self, ei: object) -> str:
        # One line per event, even for an unexpected exception: its type and message, then
        # where it came from, innermost frame last (a bug report needs the traceback).
        exc = ei[1] if isinstance(ei, tuple) else None
        if exc is None:
            return ""
        frames = traceback.extract_tb(exc.__traceback__)
        where = " > ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames)
        return f" exception={type(exc).__name__}: {exc}" + (f" traceback={where}" if where else "")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " ")


def setup_logging(role: str, level: str) -> None:
    """Route every `qtun.*` logger (and library warnings) to stderr in the one-line format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(role))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # aioquic/pyroute2 chatter only when it matters
    logging.getLogger("qtun").setLevel(level.upper())


def has_net_admin() -> bool:
    """Whether this process may create TUN devices and bind to interfaces (root or
    CAP_NET_ADMIN in the effective set)."""
    if os.geteuid() == 0:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def preflight(tun_device: Path = TUN_DEVICE, net_admin: bool | None = None) -> str | None:
    """The one-sentence runtime error that makes running pointless, or None."""
    if not (has_net_admin() if net_admin is None else net_admin):
        return "qtun needs root (or CAP_NET_ADMIN) to create its TUN device: run it as root"
    if not tun_device.exists():
        return (
            f"{tun_device} is missing: load the tun module (modprobe tun) or give the "
            "container the device"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, load the configuration and run the chosen program."""
    return run_command("qtun", lambda: _main(list(sys.argv[1:] if argv is None else argv)))


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so `qtun --help` and usage errors stay fast and need no aioquic.
    from tunnel.aio.config_file import load_client_config, load_concentrator_config

    if args.role == "client":
        client_config = load_client_config(args.config, args.overrides)
    elif args.role == "client-group":
        from tunnel.aio.client_group import load_group

        members = load_group(args.config, args.overrides)
    else:
        concentrator_config = load_concentrator_config(args.config, args.overrides)
    problem = preflight()
    if problem is not None:
        raise RuntimeFailure(problem)
    setup_logging("client" if args.role == "client-group" else args.role, args.log_level)
    try:
        if args.role == "client":
            from tunnel.aio.client import run_client

            code: int = run_client(client_config)
            return code
        if args.role == "client-group":
            from tunnel.aio.client_group import run_client_group

            code = run_client_group(members)
            return code
        from tunnel.aio.concentrator import run_concentrator

        code = run_concentrator(concentrator_config)
        return code
    except KeyboardInterrupt:
        # A second Ctrl-C during shutdown: nothing left to clean that the kernel won't.
        return EXIT_OK
    except ImportError as exc:
        raise RuntimeFailure(
            f"the {args.role} program cannot be loaded ({exc}): reinstall qtun"
        ) from None
    except OSError as exc:
        raise RuntimeFailure(
            f"{exc.strerror or exc}: check the configuration and the host"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
