"""Where a qtun program's CPU goes per packet: py-spy samples of a bench transfer, by category.

`python -m experiments.bench --profile` records both programs with py-spy while each qtun
transfer runs (`profile/<mode>-<profile>-<role>.txt.gz` in the run directory: py-spy's raw
format, one line per distinct stack, root first, then its sample count). py-spy samples only
while the program is on the CPU (idle stacks are left out), so a category's share of the samples
is its share of the program's CPU, and that share times the bench row's µs per packet is what
the category costs per packet.

    python -m experiments.profile_stacks RESULTS/bench/<ts>      # the table of a run

A sample is put in a category by its leaf frame, the Python function that was running: a call
into C (a system call, OpenSSL, the project's C steps) counts where Python made it, so
`UdpEndpoint._send_segmented` is "UDP" with its sendmsg, and `_seal_short_c` is "crypto" with
its AEAD. CATEGORIES holds the rules, the first that matches wins.
"""

from __future__ import annotations

import csv
import gzip
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunnel.user_error import RuntimeFailure, SentenceParser, UsageError, run_command

SAMPLE_RATE_HZ = 400  # py-spy's samples per second and process (its default is 100)
STOP_TIMEOUT_S = 10.0  # py-spy writes its file on SIGINT; a stuck one is killed after this


@dataclass(frozen=True)
class Category:
    """Samples whose leaf frame's file path contains one of `files` and, when `functions` is
    set, whose function name matches it."""

    name: str
    files: tuple[str, ...]
    functions: str | None = None

    def matches(self, function: str, file: str) -> bool:
        if not any(part in file for part in self.files):
            return False
        return self.functions is None or re.search(self.functions, function) is not None


# Ordered: the first rule that matches a leaf frame names its category.
CATEGORIES: tuple[Category, ...] = (
    # AEAD and header protection: the C steps and their Python twins, aioquic's and
    # cryptography's (RFC 9001 §5)
    Category("crypto", ("tunnel/protocol/quic_ext.py",), r"\._?(seal|open)_|^_(seal|open)_"),
    Category("crypto", ("aioquic/_crypto.py", "aioquic/quic/crypto.py")),
    Category("crypto", ("cryptography/",)),
    Category("UDP send / receive", ("tunnel/aio/udp.py",), r"send|receive|recv"),
    Category("TUN offloads (merge, cut)", ("tunnel/wire/tcp_tso.py", "tunnel/wire/tcp_gro.py")),
    Category("TUN offloads (merge, cut)", ("tunnel/aio/tun.py",), r"segment|merge|coalesc"),
    Category("TUN read / write", ("tunnel/aio/tun.py",)),
    Category("fast path (quic_ext)", ("tunnel/protocol/quic_ext.py",)),
    Category("aioquic (recovery, ACKs, timers)", ("aioquic/",)),
    Category("event loop", ("asyncio/", "uvloop/", "selectors.py")),
    Category("our program (agents, connection, driver)", ("tunnel/",)),
)
OTHER = "other (dataclasses, the standard library)"
ORDER = tuple(dict.fromkeys([c.name for c in CATEGORIES] + [OTHER]))

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse_stacks(lines: Iterable[str]) -> Iterator[tuple[list[str], int]]:
    """(frames root first, samples) per line of py-spy's raw format; a line that is not one
    (a blank, a truncated last line) is skipped."""
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def leaf(frames: Sequence[str]) -> tuple[str, str]:
    """The leaf frame's (function, file); ("", frame) for one that names no file."""
    match = _FRAME.match(frames[-1]) if frames else None
    if match is None:
        return "", frames[-1] if frames else ""
    return match["function"], match["file"]


def category_of(function: str, file: str) -> str:
    for category in CATEGORIES:
        if category.matches(function, file):
            return category.name
    return OTHER


def categorize(lines: Iterable[str]) -> Counter[str]:
    """Samples per category (CATEGORIES, OTHER) of a raw py-spy file's lines."""
    counts: Counter[str] = Counter()
    for frames, samples in parse_stacks(lines):
        counts[category_of(*leaf(frames))] += samples
    return counts


def read_profile(path: Path) -> Counter[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            return categorize(fh)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read as a py-spy raw profile ({exc}).") from None


# -- recording -------------------------------------------------------------------------------
def py_spy() -> str:
    """The py-spy program: the venv's (pyproject's dev dependencies) or one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise RuntimeFailure(
            "py-spy is missing: run `make venv` (pyproject's dev dependencies have it)."
        )
    return found


@contextmanager
def recording(pids: dict[str, int], out_prefix: Path) -> Iterator[dict[str, Path]]:
    """Sample each role's process with py-spy while the block runs; on leaving, stop them and
    gzip their files (`<out_prefix>-<role>.txt.gz`, returned). py-spy attaches to a running
    process, which needs root (or ptrace rights over it)."""
    program = py_spy()
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    files = {role: out_prefix.with_name(f"{out_prefix.name}-{role}.txt") for role in pids}
    procs: dict[str, subprocess.Popen[str]] = {}
    for role, pid in pids.items():
        argv = [program, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE_HZ)]
        argv += ["--format", "raw", "--nonblocking", "--output", str(files[role])]
        procs[role] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    written: dict[str, Path] = {}
    try:
        yield written
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for role, proc in procs.items():
            try:
                _, err = proc.communicate(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            raw = files[role]
            if not raw.is_file():
                last = (err or "").strip().splitlines()[-1:] or ["no output"]
                print(f"profile: py-spy wrote nothing for {role} ({last[0]})", file=sys.stderr)
                continue
            gz = raw.with_name(raw.name + ".gz")
            with raw.open("rb") as src, gzip.open(gz, "wb") as dst:
                shutil.copyfileobj(src, dst)
            raw.unlink()
            written[role] = gz


# -- the table of a bench run ----------------------------------------------------------------
def us_per_category(samples: Mapping[str, int], us_per_packet: float) -> dict[str, float]:
    """Each category's share of the samples times the program's µs per packet."""
    total = sum(samples.values())
    if total == 0:
        return {}
    return {name: us_per_packet * samples[name] / total for name in ORDER if samples.get(name, 0)}


def run_table(run_dir: Path) -> str:
    """µs per packet by category for every profiled (mode, profile, role) of a bench run."""
    profile_dir = run_dir / "profile"
    try:
        with open(run_dir / "bench.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UsageError(f"{run_dir}/bench.csv cannot be read ({exc.strerror}).") from None
    columns: dict[str, dict[str, float]] = {}
    totals: dict[str, int] = {}
    for row in rows:
        for role in ("client", "concentrator"):
            path = profile_dir / f"{row['mode']}-{row['profile']}-{role}.txt.gz"
            per_packet = row.get(f"{role}_us_per_packet") or ""
            if not path.is_file() or not per_packet:
                continue
            samples = read_profile(path)
            label = f"{row['mode']}/{row['profile']} {role}"
            columns[label] = us_per_category(samples, float(per_packet))
            totals[label] = sum(samples.values())
    if not columns:
        raise UsageError(
            f"{run_dir} has no profile of a row with µs per packet: run the bench with --profile."
        )
    labels = list(columns)
    lines = ["| µs per packet | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name in ORDER:
        if any(name in columns[label] for label in labels):
            cells = [f"{columns[label].get(name, 0.0):.1f}" for label in labels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sums = [f"**{sum(columns[label].values()):.1f}**" for label in labels]
    lines.append("| **total** | " + " | ".join(sums) + " |")
    lines.append("| samples | " + " | ".join(str(totals[label]) for label in labels) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.profile_stacks",
        description="µs of CPU per packet by category, from a bench run made with --profile.",
    )
    parser.add_argument("run_dir", type=Path, help="results/bench/<YYYYmmdd-HHMMSS>")

    def table() -> int:
        # parsed here, inside run_command: a mistake on the command line is one line too
        args = parser.parse_args(argv)
        print(run_table(args.run_dir))
        return 0

    return run_command("profile", table)


if __name__ == "__main__":
    sys.exit(main())
