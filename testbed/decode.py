"""`python -m testbed.decode DIR` (and `qtlab decode DIR`): the tunnel's messages in a capture,
one line each — time, access, direction, message.

DIR holds pcap files (one per captured access interface: the file's path under DIR, without its
suffix, names the access in the output) and the TLS keylogs the programs wrote
(`observability.keylog_file`, SSLKEYLOGFILE format; any file under DIR that looks like one is
used, all of them merged). Every pcap goes through tshark with the keylogs and the project's
Wireshark plugin (tools/wireshark/quic_tunnel.lua), which decodes inside the decrypted QUIC:
Access Report, New Session / Session ID / Join Session, refused joins, tunnel and session
datagrams (Protocol Type, Packet Tag, the inner packet), stream mode's TCP Connect / TCP Connect
OK / Error / End, the bytestream and TCP resets. One line per decoded message; the times of all
files on one clock (seconds since the first captured packet, or wall clock with --absolute).

Captures must be made with UDP GSO/GRO off on the captured interfaces (`ethtool -K IF gso off
gro off tx-udp-segmentation off`): otherwise the concentrator's GSO batches reach the capture as
one datagram of several QUIC packets, which tshark cannot decrypt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from testbed.paths import REPO_ROOT
from tunnel.user_error import RuntimeFailure, SentenceParser, UsageError, run_command

PLUGIN: Final = REPO_ROOT / "tools" / "wireshark" / "quic_tunnel.lua"
PCAP_SUFFIXES: Final = (".pcap", ".pcapng", ".cap")
# Labels of the NSS key log format that TLS 1.3 (QUIC) secrets use; a file holding one of them
# in its first KEYLOG_SNIFF bytes is taken as a keylog.
KEYLOG_LABELS: Final = (
    b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    b"SERVER_HANDSHAKE_TRAFFIC_SECRET",
    b"CLIENT_TRAFFIC_SECRET_0",
    b"SERVER_TRAFFIC_SECRET_0",
)
KEYLOG_SNIFF: Final = 4096
TSHARK_TIMEOUT: Final = 600.0  # seconds per pcap: a long lab capture, on a slow machine
DATA_PREFIX: Final = "bytestream:"
CLIENT_HELLO: Final = "ClientHello:"


@dataclass(frozen=True)
class Message:
    """One decoded message: `time` in epoch seconds, `access` the pcap's (access_name), `direction`
    "client->concentrator" / "concentrator->client" ("?" when the handshake is not captured)."""

    time: float
    access: str
    direction: str
    text: str
    frame: int


def is_keylog(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(KEYLOG_SNIFF)
    except OSError:
        return False
    return any(line.startswith(KEYLOG_LABELS) for line in head.splitlines())


def find_inputs(directory: Path) -> tuple[list[Path], list[Path]]:
    """The pcap files and the TLS keylogs under `directory` (recursively), sorted."""
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory: give the capture directory.")
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    pcaps = [p for p in files if p.suffix in PCAP_SUFFIXES]
    keylogs = [p for p in files if p.suffix not in PCAP_SUFFIXES and is_keylog(p)]
    if not pcaps:
        raise UsageError(
            f"no pcap files in {directory}: capture with `qtlab up --capture DIR` "
            "or `tcpdump -i IF -w DIR/ACCESS.pcap`."
        )
    if not keylogs:
        raise UsageError(
            f"no TLS keylog in {directory}: set observability.keylog_file in the qtun "
            "configuration (the concentrator's alone decrypts every connection)."
        )
    return pcaps, keylogs


def access_name(pcap: Path, directory: Path) -> str:
    """How the output names a pcap's access: its path under `directory` without the suffix
    (wifi.pcap -> "wifi", run2/5g.pcap -> "run2/5g")."""
    return pcap.relative_to(directory).with_suffix("").as_posix()


def merge_keylogs(keylogs: Sequence[Path], destination: Path) -> Path:
    """One keylog file for tshark (it reads one) holding the lines of all of them."""
    with destination.open("wb") as out:
        for path in keylogs:
            data = path.read_bytes()
            out.write(data if data.endswith(b"\n") or not data else data + b"\n")
    return destination


def tshark_path() -> str:
    found = shutil.which("tshark")
    if found is None:
        raise RuntimeFailure(
            "tshark is not installed: run `sudo make deps` (or `apt install tshark`)."
        )
    return found


def tshark_fields(
    pcap: Path,
    keylog: Path,
    fields: Sequence[str],
    display_filter: str = "qtun",
    plugin: Path = PLUGIN,
    notes: list[str] | None = None,
) -> list[dict[str, list[str]]]:
    """Run tshark on `pcap` with the keylog and the plugin: for every packet that matches
    `display_filter`, the values of `fields` (field name -> values, in tree order; a field
    the packet lacks is absent). A pcap cut short (its writer was killed) is decoded up to the
    cut, with a line in `notes`.

    tshark runs with an empty HOME, so that neither a copy of the plugin installed earlier in
    ~/.local/lib/wireshark/plugins (possibly older: the plugin keeps the first copy loaded) nor
    the user's Wireshark preferences change what is decoded.
    """
    argv = [tshark_path(), "-n", "-r", str(pcap), "-X", f"lua_script:{plugin}"]
    argv += ["-o", f"tls.keylog_file:{keylog}", "-Y", display_filter, "-T", "json"]
    for name in fields:
        argv += ["-e", name]
    with tempfile.TemporaryDirectory(prefix="qtl-tshark-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        env["HOME"] = home
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=TSHARK_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(
                f"tshark took over {TSHARK_TIMEOUT:.0f} s on {pcap}: split the capture."
            ) from None
    lua_error = next((line for line in done.stderr.splitlines() if "Lua: Error" in line), None)
    if lua_error is not None:
        raise RuntimeFailure(f"tshark could not load {plugin}: {done.stderr.strip()}")
    if not _read_to_the_end(pcap, done) and notes is not None:
        notes.append(f"{pcap.name}: cut short in the middle of a packet, decoded up to there")
    packets = json.loads(done.stdout or "[]")
    return [packet["_source"]["layers"] for packet in packets]


def _read_to_the_end(pcap: Path, done: subprocess.CompletedProcess[str]) -> bool:
    """Whether tshark read all of `pcap`; False if the file was cut short (what was before the
    cut is good); RuntimeFailure if tshark could not read it at all."""
    if done.returncode == 0:
        return True
    last = done.stderr.strip().splitlines()[-1:] or ["no message"]
    if "cut short" in last[0]:
        return False
    raise RuntimeFailure(f"tshark failed on {pcap} ({last[0]}): is it a readable pcap?")


def first_packet_time(pcap: Path) -> float | None:
    """Epoch time of the first packet of `pcap` (None if it holds none); RuntimeFailure if
    it is not a capture tshark reads."""
    done = subprocess.run(
        [tshark_path(), "-n", "-r", str(pcap), "-c", "1", "-T", "fields", "-e", "frame.time_epoch"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    text = done.stdout.strip()
    if not text:
        _read_to_the_end(pcap, done)
    return float(text) if text else None


def decode_pcap(pcap: Path, keylog: Path, access: str, notes: list[str]) -> list[Message]:
    messages: list[Message] = []
    fields = ("frame.number", "frame.time_epoch", "qtun.direction", "qtun.summary")
    for layers in tshark_fields(pcap, keylog, fields, notes=notes):
        directions = layers.get("qtun.direction", ["?"])
        for text in layers.get("qtun.summary", []):
            messages.append(
                Message(
                    time=float(layers["frame.time_epoch"][0]),
                    access=access,
                    direction=directions[0],  # every message of a packet has one sender
                    text=text,
                    frame=int(layers["frame.number"][0]),
                )
            )
    return messages


def decode_directory(directory: Path) -> tuple[list[Message], float | None, list[str]]:
    """Every message of every pcap under `directory`, in time order; the epoch time of the
    first captured packet (the zero of relative times); warnings for pcaps that decoded to
    nothing."""
    pcaps, keylogs = find_inputs(directory)
    messages: list[Message] = []
    warnings: list[str] = []
    starts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="qtl-decode-") as tmp:
        keylog = merge_keylogs(keylogs, Path(tmp) / "keylog.txt")
        for pcap in pcaps:
            start = first_packet_time(pcap)
            if start is None:
                if pcap.stat().st_size > 24:  # more than pcap's file header, and no packet
                    warnings.append(f"{pcap.name}: no whole packet in it (cut short?)")
                continue  # an empty capture: nothing went over that access
            starts.append(start)
            found = decode_pcap(pcap, keylog, access_name(pcap, directory), warnings)
            # A ClientHello is readable without keys (Initial packets): anything past it
            # needs the connection's secrets in a keylog and the handshake in the capture.
            if all(m.text.startswith(CLIENT_HELLO) for m in found):
                warnings.append(
                    f"{pcap.name}: nothing decrypted past the ClientHello (is the keylog of "
                    "its connections missing, the handshake not captured, or UDP GSO/GRO on?)"
                )
            messages.extend(found)
    messages.sort(key=lambda m: (m.time, m.access, m.frame))
    return messages, min(starts) if starts else None, warnings


def format_lines(
    messages: Sequence[Message], start: float | None, absolute: bool = False
) -> list[str]:
    width = max([len("access"), *(len(m.access) for m in messages)])
    clock = "time" if absolute else "seconds"
    lines = [f"{clock:>15}  {'access':<{width}}  {'direction':<20}  message"]
    zero = start if start is not None else (messages[0].time if messages else 0.0)
    for m in messages:
        if absolute:
            when = datetime.fromtimestamp(m.time).strftime("%H:%M:%S.%f")
        else:
            when = f"{m.time - zero:.6f}"
        lines.append(f"{when:>15}  {m.access:<{width}}  {m.direction:<20}  {m.text}")
    return lines


def add_decode_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("directory", type=Path, help="capture directory: pcap files + keylogs")
    parser.add_argument(
        "--absolute", action="store_true", help="wall-clock times instead of seconds from start"
    )
    parser.add_argument(
        "--no-data", action="store_true", help="leave out the stream-mode bytestream lines"
    )
    return parser


def decode_from_args(args: argparse.Namespace) -> int:
    messages, start, warnings = decode_directory(args.directory)
    if args.no_data:
        messages = [m for m in messages if not m.text.startswith(DATA_PREFIX)]
    for line in format_lines(messages, start, args.absolute):
        print(line)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m testbed.decode",
        description="Print the QUIC tunnel messages of a capture directory (pcap files and "
        "TLS keylogs) through tshark and tools/wireshark/quic_tunnel.lua.",
    )
    add_decode_arguments(parser)
    # parsed inside run_command: a mistake on the command line is one line too (exit code 2)
    return run_command("decode", lambda: decode_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
