"""The teaching labs (labs/*.md) run as their students run them, so the handouts never rot.

Each test runs a lab's script with `qtlab up ... --script labs/XX.qtlab` (as
test_qtlab_up.py's script test does), cuts the echoed output into (command, output) steps and
checks every "You should see" of the handout that is a function of the tunnel: replies
received, which access is active, where a packet or a TCP connection goes, what each end
believes. Never a timing or a rate: the gaps and detection times the labs print are the
students' measurements (labs/solutions.md), not claims.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import REPO, process

pytestmark = [pytest.mark.root, pytest.mark.mininet]

LABS = REPO / "labs"
ECHO = "qtlab> "
THREE_OF_THREE = "3 packets transmitted, 3 received"
SHORT_PING = "ping -c 3 -i 0.2 10.200.1.2"
LAB3_ARGS = ["--servers", "2", "--stream", "--set", 'stream.intercept=["10.200.1.0/24"]']


Steps = list[tuple[str, str]]
LAB_SCRATCH = "qtlab-lab*"  # the labs' scratch files and folders in /tmp (labs/README.md)


@pytest.fixture(autouse=True)
def lab_scratch_removed() -> Iterator[None]:
    """What a lab's script wrote in /tmp is a student's scratch, not the test's to keep: each
    test removes what appeared there while it ran, whether it passed or not."""
    tmp = Path("/tmp")
    before = set(tmp.glob(LAB_SCRATCH))
    yield
    for path in set(tmp.glob(LAB_SCRATCH)) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_lab(script: str, *argv: str) -> Steps:
    """`qtlab up reference ARGV --script labs/SCRIPT` to its end (exit code 0, the lab torn
    down): each echoed command with the output that follows it, in order."""
    path = LABS / script
    last = [line for line in path.read_text().splitlines() if line.strip()][-1]
    cmd = [sys.executable, "-u", "-m", "testbed.cli", "up", "reference", *argv]
    cmd += ["--script", str(path)]
    with process(cmd, ready=None, timeout=120, grace=60, merge_stderr=True) as proc:
        out = proc.read_until(ECHO + last, timeout=120)
        code = proc.wait(timeout=90)
        out += "".join(iter(lambda: proc.lines.get(timeout=10) or "", ""))
        assert code == 0, proc.log_tail() + out[-3000:]
    steps: Steps = []
    for line in out.splitlines():
        if line.startswith(ECHO):
            steps.append((line[len(ECHO) :], ""))
        elif steps:
            steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
    commands = [c for c, _ in steps]
    for line in path.read_text().splitlines():  # every line of the script ran, in order
        if line.strip() and not line.lstrip().startswith("#"):
            assert commands and commands.pop(0) == line, (line, out[-3000:])
    return steps


def outputs(steps: Steps, command: str) -> list[str]:
    """The outputs of every step whose command starts with `command`, in order."""
    return [out for cmd, out in steps if cmd.startswith(command)]


def after(steps: Steps, command: str) -> Steps:
    """The steps after the first whose command starts with `command`."""
    for i, (cmd, _) in enumerate(steps):
        if cmd.startswith(command):
            return steps[i + 1 :]
    raise AssertionError(f"no step {command!r}")


def client_line(steps: Steps) -> str:
    """The c1 line of the first `tunnel` among `steps`."""
    out = outputs(steps, "tunnel")[0]
    return next(line for line in out.splitlines() if line.startswith("c1: "))


def test_lab1_tunnel_mode_journey_migration_and_failback() -> None:
    steps = run_lab("01-tunnel-mode.qtlab", "--tunnel", "tunnel")
    # one connection over WiFi
    status = outputs(steps, "tunnel")[0]
    assert "conc: concentrator up, 1 client(s), 0 session(s), 1 connection(s)" in status, status
    assert client_line(steps).startswith("c1: tunnel mode up, inner 10.8.0.3; wifi up active")
    # the journey: into the TUN, out by WiFi to the concentrator, into its TUN towards c1
    assert "dev qtun0 src 10.8.0.3" in outputs(steps, "c1 ip route get 10.200.1.2")[0]
    assert "dev c1-wifi" in outputs(steps, "c1 ip route get 10.100.0.1")[0]
    assert "dev qtunc0" in outputs(steps, "conc ip route get 10.8.0.3")[0]
    outer = outputs(steps, "c1 cat /tmp/qtlab-lab1-outer.txt")[0]
    assert re.search(r"IP 10\.1\.1\.2\.\d+ > 10\.100\.0\.1\.4433: UDP", outer), outer
    assert re.search(r"IP 10\.100\.0\.1\.4433 > 10\.1\.1\.2\.\d+: UDP", outer), outer
    assert "ICMP" not in outer, outer
    inner = outputs(steps, "srv1 cat /tmp/qtlab-lab1-inner.txt")[0]
    assert "IP 10.8.0.3 > 10.200.1.2: ICMP echo request" in inner, inner
    assert "IP 10.200.1.2 > 10.8.0.3: ICMP echo reply" in inner, inner
    pings = outputs(steps, f"c1 {SHORT_PING}")
    assert len(pings) == 3 and all(THREE_OF_THREE in p for p in pings), pings
    # WiFi down: the same connection on 5G; WiFi up: back on WiFi
    # the access gone; the engine may already say "dead" after it (README: the tunnel line)
    assert re.search(r"wifi DOWN( dead)?, 5g up active", client_line(after(steps, "wifi down"))), (
        steps
    )
    assert "wifi up active" in client_line(after(steps, "wifi up")), steps
    log = outputs(steps, "sh grep -E")[0]
    assert re.search(r"migrated from=wifi to=5g(.|\n)*migrated from=5g to=wifi", log), log

    # the contrast: failback=false stays on 5G once WiFi is back
    steps = run_lab("01-tunnel-mode.qtlab", "--tunnel", "tunnel", "--set", "failback=false")
    # the access gone; the engine may already say "dead" after it (README: the tunnel line)
    assert re.search(r"wifi DOWN( dead)?, 5g up active", client_line(after(steps, "wifi down"))), (
        steps
    )
    assert "wifi up, 5g up active" in client_line(after(steps, "wifi up")), steps
    assert all(THREE_OF_THREE in p for p in outputs(steps, f"c1 {SHORT_PING}")), steps
    log = outputs(steps, "sh grep -E")[0]
    assert "migrated from=wifi to=5g" in log and "from=5g to=wifi" not in log, log
    assert "usable=True" in log.split("migrated from=wifi to=5g")[1], log  # it saw WiFi back


def test_lab2_session_mode_link_down_and_blackhole_with_and_without_reports() -> None:
    available = 'sh grep -o \'"accesses_available"'
    for reports in (True, False):
        extra = [] if reports else ["--set", "access_reports=false"]
        steps = run_lab("02-session-mode.qtlab", "--tunnel", "session", *extra)
        status = outputs(steps, "tunnel")[0]
        conc = "conc: concentrator up, 1 client(s), 1 session(s), 2 connection(s)"
        assert conc in status, status
        assert client_line(steps).startswith("c1: session mode up, inner 10.8.0.3; wifi up active")
        sockets = outputs(steps, "c1 ss -Huan")[0]
        assert re.search(r"10\.1\.1\.2%c1-wifi:\d+ .*\"qtun\"", sockets), sockets
        assert re.search(r"10\.2\.1\.2%c1-5g:\d+ .*\"qtun\"", sockets), sockets
        pings = outputs(steps, f"c1 {SHORT_PING}")
        assert len(pings) == 3 and all(THREE_OF_THREE in p for p in pings), pings
        # link down, then back
        assert "wifi DOWN srtt" in client_line(after(steps, "wifi down")), steps
        assert "5g up active" in client_line(after(steps, "wifi down")), steps
        assert "wifi up active" in client_line(after(steps, "wifi up")), steps
        # the concentrator knows WiFi is down only if the client tells it
        told = '"wifi": false' if reports else '"wifi": true'
        seen = outputs(steps, available)
        assert len(seen) == 2 and all(told in s for s in seen), seen
        # blackhole: the link stays up, the client still declares the path dead
        link = outputs(steps, "c1 ip -br link show dev c1-wifi")[0]
        assert re.search(r"\bUP\b.*LOWER_UP", link), link
        assert "wifi DOWN srtt" in client_line(after(steps, "wifi blackhole on")), steps
        assert "wifi up active" in client_line(after(steps, "wifi blackhole off")), steps
        counters = outputs(steps, 'sh grep -o \'"access_id"')[0]
        died = re.search(r'"access_id": "wifi" "died": (\d+)', counters)
        assert died and int(died.group(1)) >= 1, counters
        log = outputs(steps, "sh grep -E")[0]
        # link down: the carrier loss makes the access unavailable at once — or it already was:
        # on a loaded machine failure detection once declared WiFi dead (ACK silence beyond
        # the probe timeout) a moment before the carrier went
        before_down, after_down = log.split("wifi usable=False reason='no carrier'")
        states = re.findall(r"access (available|unavailable) access=wifi", before_down)
        already = bool(states) and states[-1] == "unavailable"
        assert re.match(r"\n.*access unavailable", after_down) or already, log
        # blackhole (after WiFi came back): failure detection, suspect then dead, link still up
        blackhole = log.split("reason='no carrier'")[1].split("access=wifi usable=True")[1]
        assert re.search(r"access suspect access=wifi\n(.|\n)*access dead access=wifi", blackhole)
        assert "usable=False" not in blackhole, log


def test_lab3_stream_mode_tcp_ends_at_each_side_and_skips_the_tun() -> None:
    steps = run_lab("03-stream-mode.qtlab", "--tunnel", "tunnel", *LAB3_ARGS)
    nft = outputs(steps, "c1 nft list table inet qtun_stream")[0]
    assert "ip daddr 10.200.1.0/24 meta l4proto tcp redirect to :4480" in nft, nft
    assert "10.200.2" not in nft, nft
    curls = outputs(steps, "c1 curl -s -m 10 ")
    assert len(curls) == 2 and all("hello\nhttp 200" in c for c in curls), curls
    lines = [client_line(after(steps, step)) for step in ("c1 nft", "c1 curl -s -m 10 ")]
    lines.append(client_line(after(after(steps, "c1 curl -s -m 10 "), "c1 curl -s -m 10 ")))
    tun = [re.search(r"tun rx (\d+) tx (\d+) packets", line) for line in lines]
    streams = [re.search(r"stream mode: (\d+) TCP connections", line) for line in lines]
    assert all(tun) and all(streams), lines
    before, stream, tunnel = [(int(m.group(1)), int(m.group(2))) for m in tun if m]
    # the stream-mode request moved no packet through the TUN; the tunnel-mode one did, both ways
    assert stream == before, lines
    assert tunnel[0] > stream[0] and tunnel[1] > stream[1], lines
    assert [int(m.group(1)) for m in streams if m] == [0, 1, 1], lines
    # each server's peer: the concentrator (stream mode), the client's inner address (tunnel)
    srv1 = outputs(steps, "srv1 ss -tn state time-wait")[0]
    srv2 = outputs(steps, "srv2 ss -tn state time-wait")[0]
    assert re.search(r"10\.200\.1\.2:8080\s+10\.200\.1\.1:\d+", srv1), srv1
    assert re.search(r"10\.200\.2\.2:8080\s+10\.8\.0\.3:\d+", srv2), srv2
    # while a connection is open: two TCP connections, c1's socket believes it reaches srv1,
    # its TCP ends at qtun's listener; the concentrator's own connection reaches srv1
    c1 = outputs(steps, "c1 ss -tn state established")[0]
    app = re.search(r"10\.8\.0\.3:(\d+)\s+10\.200\.1\.2:9000", c1)
    assert app, c1
    assert re.search(rf"127\.0\.0\.1:4480\s+10\.8\.0\.3:{app.group(1)}\b", c1), c1
    conc = outputs(steps, "conc ss -tn state established")[0]
    relay = re.search(r"10\.200\.1\.1:(\d+)\s+10\.200\.1\.2:9000", conc)
    assert relay, conc
    srv1 = outputs(steps, "srv1 ss -tn state established")[0]
    assert re.search(rf"10\.200\.1\.2:9000\s+10\.200\.1\.1:{relay.group(1)}\b", srv1), srv1


def test_lab4_the_capture_decodes_into_every_message_of_the_drafts(tmp_path: Path) -> None:
    capture = tmp_path / "lab4"
    steps = run_lab(
        "04-reading-the-wire.qtlab", "--tunnel", "session", "--stream", "--capture", str(capture)
    )
    listed = set(outputs(steps, "sh cd $QTLAB_CAPTURE_DIR")[0].split())
    assert listed >= {"5g.pcap", "wifi.pcap", "c1.keylog", "conc.keylog"}, listed
    assert all(THREE_OF_THREE in out for out in outputs(steps, "c1 " + SHORT_PING))
    assert len(outputs(steps, "c1 " + SHORT_PING)) == 3
    assert "http 200" in outputs(steps, "c1 curl")[0]
    # step 3: the handout's order of messages, each on the access it names
    table = outputs(steps, "sh .venv/bin/qtlab decode")[0].splitlines()[1:]
    decoded = [line.split(maxsplit=3)[1:] for line in table]

    def at(access: str, direction: str, message: str) -> list[int]:
        return [
            i
            for i, row in enumerate(decoded)
            if (row[0], row[1]) == (access, direction) and row[2].startswith(message)
        ]

    up, down = "client->concentrator", "concentrator->client"
    order = [
        at("c1/wifi", up, "New Session")[0],
        at("c1/wifi", down, "Session ID")[0],
        at("c1/5g", up, "Join Session")[0],
        at("c1/wifi", up, "TCP Connect: 10.200.1.2 port 8080")[0],
        at("c1/wifi", down, "TCP Connect OK")[0],
        at("c1/5g", up, "Access Report: access Non-3GPP (2), Access Unavailable")[0],
        # on the connection that carried the Unavailable, so the concentrator can order them
        at("c1/5g", up, "Access Report: access Non-3GPP (2), Access Available")[-1],
    ]
    assert order == sorted(order), decoded
    pings = [row for row in decoded if "ICMP echo request" in row[2]]
    assert {row[0] for row in pings} == {"c1/wifi", "c1/5g"}, decoded

    # steps 4-8: the reading script, as the student runs it after the lab
    done = subprocess.run(
        ["sh", str(LABS / "04-reading-the-wire.sh"), str(capture)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sections = done.stdout.split("\n$ ")[1:]
    assert len(sections) == 7, done.stdout
    plain, datagrams, wifi_control, fiveg_control, stream_tlvs, _, qlogs = sections
    assert "Initial" in plain and "Protected Payload" in plain, plain
    ping = [line.split("\t") for line in datagrams.splitlines()[1:] if "\t0x0800\t" in line]
    # an 84-byte ping in an 88-byte DATAGRAM; alone in its packet: 126 B of UDP, 146 B of IP
    assert ping and all(f[3] == "88" and f[6].endswith(",84") for f in ping), ping
    alone = [f for f in ping if f[2] == "49"]
    assert alone and all(f[1] == "126" and f[6] == "146,84" for f in alone), ping
    assert "\t0x01\t0\tNew Session [stream 2]" in wifi_control, wifi_control
    assert "\t0x02\t16\tSession ID:" in wifi_control, wifi_control
    assert "\t0x03\t16\tJoin Session:" in fiveg_control, fiveg_control
    assert "Access Unavailable (2)" in fiveg_control, fiveg_control
    assert "TCP Connect: 10.200.1.2 port 8080" in stream_tlvs, stream_tlvs
    assert "TCP Connect OK" in stream_tlvs, stream_tlvs
    # what --capture left: a pcap per access, a key log and qlogs per program
    pcaps = sorted(p.relative_to(capture).as_posix() for p in capture.rglob("*.pcap"))
    assert pcaps == ["c1/5g.pcap", "c1/wifi.pcap"], pcaps
    for node in ("c1", "conc"):
        assert (capture / "keylog" / f"{node}.keylog").stat().st_size > 0
        assert len(list((capture / "qlog" / node).glob("*.qlog"))) == 2, node
    counts = [line for line in qlogs.splitlines() if "packets sent;" in line]
    assert len(counts) == 2 and all("'datagram'" in line for line in counts), qlogs


def test_lab5_commands_parse_and_the_blackhole_change_runs_and_draws(tmp_path: Path) -> None:
    """Lab 5's commands, read from the handout itself: each `qtlab run` line's settings are
    valid, and change A runs for real on short settings (one variant, a 2.5 s outage, no
    fidelity pre-flight) into a results root of its own, then `qtlab figure` draws the run.
    Part 1's `qtlab demo` is the same experiment with --quick and no --set (not run here: its
    few minutes are `make demo`'s)."""
    from experiments.failover import EXPERIMENT
    from experiments.runner import resolve_params

    handout = (LABS / "05-reproduction.md").read_text()
    commands = [line for line in handout.splitlines() if line.startswith("sudo .venv/bin/qtlab ")]
    runs = [c for c in commands if c.startswith("sudo .venv/bin/qtlab run failover --quick")]
    assert len(runs) == 3 and any(" demo " in c for c in commands), commands
    for command in runs:
        words = shlex.split(command)
        sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
        resolve_params(EXPERIMENT, quick=True, sets=sets)  # raises on a wrong key or value

    blackhole = shlex.split(next(c for c in runs if "blackhole" in c))
    argv = [a if a != "/tmp/qtlab-lab5" else str(tmp_path) for a in blackhole[2:]]
    argv = [a if not a.startswith("variants=") else 'variants=["session-failover"]' for a in argv]
    short = ["down_at_s=2.0", "up_at_s=4.5", "duration_s=6.5", "verify_fidelity=false"]
    argv += [item for setting in short for item in ("--set", setting)] + ["--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "testbed.cli", *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = (tmp_path / "failover").iterdir()
    row = next(line for line in done.stdout.splitlines() if line.startswith("session-failover"))
    fields = row.split()
    assert fields[1:4] == ["blackhole", "tcp", "1"], row
    assert float(fields[4]) < 2500, row  # it failed over within the outage
    drawn = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "figure", str(run_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    assert (run_dir / "failover.png").stat().st_size > 10_000
