"""`qtlab up reference --tunnel session`: the teaching set-up, driven through its Mininet CLI.

The CLI reads commands from stdin, so the test is the user at the keyboard, command by command:
the tunnel comes up, c1 reaches a server through it, `wifi down` is seen by the client (the test
asks `tunnel` until it says so, as a user would), and `exit` tears everything down (the leak
check of tests/conftest.py verifies that).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.netns import Proc, process

pytestmark = [pytest.mark.root, pytest.mark.mininet]

PING = "ping -c 3 -i 0.2 -W 2 10.200.1.2"


PROMPT = "mininet> "


class Cli:
    """The qtlab Mininet CLI on a pipe: a command's output is what comes before a marker echoed
    after it; the next command is sent once the CLI prompts again (while a node's command runs
    the CLI passes its stdin to that node: the marker goes on the node's own command line)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.count = 0

    def _marker(self) -> str:
        self.count += 1
        return f"@@done{self.count}@@"

    def run(self, command: str, timeout: float = 30.0) -> str:
        """A command of the CLI itself (tunnel, wifi down, ...)."""
        marker = self._marker()
        self.proc.send(command)
        self.proc.send(f"sh echo {marker}")
        return self._output(marker, timeout)

    def node(self, node: str, shell: str, timeout: float = 30.0) -> str:
        """A shell command on a node (what `c1 ping ...` types)."""
        marker = self._marker()
        then = " " if shell.rstrip().endswith("&") else "; "  # `cmd &` is already a list
        self.proc.send(f"{node} {shell}{then}echo {marker}")
        return self._output(marker, timeout)

    def _output(self, marker: str, timeout: float) -> str:
        out = self.proc.read_until(marker, timeout)
        self.proc.read_until(PROMPT, timeout)
        return out

    def until(self, command: str, pattern: str, timeout: float = 15.0) -> str:
        """Run the CLI's `command` until its output matches `pattern` (a regular expression)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(command)
            if re.search(pattern, out):
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} never showed {pattern!r}; last:\n{out}")
            time.sleep(0.2)

    def exit(self) -> int:
        self.proc.send("exit")
        return self.proc.wait(timeout=90)


@contextmanager
def qtlab_up(*argv: str) -> Iterator[Cli]:
    """`qtlab up ARGV`, entered once its CLI is ready. On failure stdin is closed: the CLI
    ends and the lab is torn down (SIGTERM if that takes more than a minute)."""
    cmd = [sys.executable, "-u", "-m", "testbed.cli", "up", *argv]
    with process(
        cmd, ready="qtlab: backend", timeout=120, grace=60, merge_stderr=True, prompt=PROMPT
    ) as proc:
        yield Cli(proc)


def test_session_tunnel_in_the_cli_reaches_a_server_and_sees_wifi_go_down() -> None:
    with qtlab_up("reference", "--tunnel", "session") as cli:
        # the status files are written a moment after each change: poll until the session is in
        conc = r"conc: concentrator up, 1 client\(s\), 1 session\(s\), 2 connection"
        status = cli.until("tunnel", conc)
        assert "c1: session mode up, inner 10.8.0.3; wifi up active" in status, status
        assert "3 packets transmitted, 3 received" in cli.node("c1", PING)
        cli.run("wifi down")
        cli.until("tunnel", r"c1: session mode up, inner 10\.8\.0\.3; wifi DOWN")
        # every reply again, through the tunnel over 5G
        assert "3 packets transmitted, 3 received" in cli.node("c1", PING)
        assert cli.exit() == 0


def test_stream_flag_carries_the_clients_tcp_on_quic_streams() -> None:
    with qtlab_up("reference", "--tunnel", "tunnel", "--stream") as cli:
        cli.node("srv1", "python3 -m http.server 8080 --bind 10.200.1.2 >/dev/null 2>&1 &")
        # the server's readiness, polled in srv1 (a bounded loop of the shell's own)
        listening = "ss -Hltn 'sport = :8080' | grep -q ."
        cli.node("srv1", f"for i in $(seq 100); do {listening} && break; sleep 0.05; done")
        curl = 'curl -s -o /dev/null -m 10 -w "http %{http_code}\\n" http://10.200.1.2:8080/'
        out = cli.node("c1", curl)
        assert "http 200" in out, out
        # The HTTP request went through the stream relay, not the TUN device.
        cli.until("tunnel", r"stream mode: 1 TCP connections")
        cli.node("srv1", "kill %python3")
        assert cli.exit() == 0


def test_a_script_runs_with_settings_for_the_programs_and_ends_cleanly(tmp_path: Path) -> None:
    """`qtlab up ... --set ... --script FILE`, the projected demo: the file's commands run one
    after the other, each echoed, whatever arrives on stdin (it was forwarded to a node's shell
    and hung the lab); `exit` ends the script early; the lab is torn down (leak check) and the
    exit code is 0. A setting reaches each program that has it: failback the client only, the
    datagram queue both."""
    script = tmp_path / "lab.txt"
    script.write_text(
        "# a comment, and a blank line, are skipped\n"
        "\n"
        "tunnel\n"
        # the tunnel's readiness, polled in c1 (a bounded loop of the shell's own)
        "c1 for i in $(seq 50); do ping -c1 -W1 10.200.1.2 >/dev/null && break; done\n"
        f"c1 {PING}\n"
        "sh pgrep -af 'qtun (client|concentrator)'\n"
        "sleep 0.1\n"
        "exit\n"
        "sh echo never-run\n"
    )
    argv = ["reference", "--tunnel", "tunnel", "--set", "failback=false"]
    argv += ["--set", "limits.max_datagram_queue=777", "--script", str(script)]
    cmd = [sys.executable, "-u", "-m", "testbed.cli", "up", *argv]
    with process(cmd, ready=None, timeout=120, grace=60, merge_stderr=True) as proc:
        proc.send("exit")  # stdin is not the script's: ignored
        out = proc.read_until("qtlab> exit", timeout=120)
        assert proc.wait(timeout=90) == 0, proc.log_tail()
    assert f"qtlab> c1 {PING}" in out and "3 packets transmitted, 3 received" in out, out
    programs = [line for line in out.splitlines() if "777" in line]
    clients = [line for line in programs if "qtun client" in line or " client -c " in line]
    concentrators = [line for line in programs if "concentrator" in line]
    assert clients and concentrators, out
    assert all("failback=false" in line for line in clients), clients
    assert not any("failback" in line for line in concentrators), concentrators
    assert "never-run" not in out
