"""`qtlab up reference --tunnel session`: the teaching set-up, driven through its Mininet CLI.

The CLI reads commands from stdin, so a script of commands is the user at the keyboard: the
tunnel comes up, c1 reaches a server through it, `wifi down` is seen by the client, and `exit`
tears everything down (the leak check of tests/conftest.py verifies that).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.root, pytest.mark.mininet]

SCRIPT = """\
tunnel
c1 ping -c 3 -i 0.2 -W 2 10.200.1.2
wifi down
sh sleep 2
tunnel
c1 ping -c 3 -i 0.2 -W 2 10.200.1.2
exit
"""


def run_qtlab(
    argv: list[str], script: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(script, timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGINT lets the Lab tear the network down; the output says where it hung.
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"qtlab {' '.join(argv)} did not finish within {timeout:.0f} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def test_session_tunnel_in_the_cli_reaches_a_server_and_sees_wifi_go_down() -> None:
    done = run_qtlab(["up", "reference", "--tunnel", "session"], SCRIPT)
    out = done.stdout
    assert done.returncode == 0, out
    assert re.search(r"conc: concentrator up, 1 client\(s\), 1 session\(s\), 2 connection", out), (
        out
    )
    assert "c1: session mode up, inner 10.8.0.3; wifi up active" in out, out
    assert "c1: session mode up, inner 10.8.0.3; wifi DOWN" in out, out
    # Both pings (before and after WiFi went down) got every reply, through the tunnel.
    assert len(re.findall(r"3 packets transmitted, 3 received", out)) == 2, out


STREAM_SCRIPT = """\
srv1 python3 -m http.server 8080 --bind 10.200.1.2 >/dev/null 2>&1 &
sh sleep 1
c1 curl -s -o /dev/null -m 10 -w "http %{http_code}\\n" http://10.200.1.2:8080/
sh sleep 1
tunnel
srv1 kill %python3
exit
"""


def test_stream_flag_carries_the_clients_tcp_on_quic_streams() -> None:
    done = run_qtlab(["up", "reference", "--tunnel", "tunnel", "--stream"], STREAM_SCRIPT)
    out = done.stdout
    assert done.returncode == 0, out
    assert "http 200" in out, out
    # The HTTP request went through the stream relay, not the TUN device.
    assert "stream mode: 1 TCP connections" in out, out
