"""Whether a long-running qtun program stayed healthy (the soak and fuzz experiments' verdicts):
no exception in its log, and memory that does not grow without bound.
"""

from __future__ import annotations

import re
from pathlib import Path

# An exception that escaped somewhere, as the qtun programs log it (tracebacks, the loop's
# "exception=" of a failed task/callback, tunnel.aio.udp's and the concentrator's
# "internal error on/in ...").
EXCEPTION_PATTERN = re.compile(
    r"Traceback|exception=|internal error (?:on|in) |Exception in callback|"
    r"Task exception was never retrieved"
)
# RSS may grow with what a run touched (Python's allocator keeps its arenas, aioquic its
# buffers); a leak per packet or per connection grows without bound. Over 10 minutes of soak
# load "without bound" would show as several times the warm-up size: twice it plus 100 MiB is
# far above what a healthy process does and far below what such a leak reaches.
RSS_BOUND_FACTOR = 2.0
RSS_BOUND_MARGIN_MB = 100.0
RSS_BOUND_TEXT = f"end <= {RSS_BOUND_FACTOR:g} x warm-up + {RSS_BOUND_MARGIN_MB:g} MiB"


def rss_bound_mb(warm_mb: float) -> float:
    """The most a process's RSS may reach by the end, given its RSS after warm-up."""
    return RSS_BOUND_FACTOR * warm_mb + RSS_BOUND_MARGIN_MB


def scan_log(path: Path) -> tuple[int, list[str]]:
    """(lines, the lines showing an exception) of a log file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, []
    lines = text.splitlines()
    return len(lines), [line for line in lines if EXCEPTION_PATTERN.search(line)]
