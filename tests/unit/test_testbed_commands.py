"""Command construction of both shaping backends, the CLI's access commands, clean-up records."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from testbed import cli
from testbed.cleanup import clean_run
from testbed.fidelity import (
    FidelityError,
    Row,
    binomial_two_sided_p,
    loss_bursts,
    loss_plausible,
    require_fidelity,
)
from testbed.hosts import RunState, pid_cmdline
from testbed.profiles import LinkProfile
from testbed.shaping import NetemShaper, ShapingError, WireShaper, netem_args, wire_settings


class FakeNode:
    name = "wtest"

    def __init__(self) -> None:
        self.commands: list[str] = []

    def cmd(self, line: str) -> str:
        self.commands.append(line)
        return "rc=0"


def test_netem_args_full_profile() -> None:
    p = LinkProfile(
        delay_ms=20, jitter_ms=5, reorder=True, loss_pct=1.5, rate_mbit=50, queue_packets=200
    )
    assert netem_args(p) == [
        "netem", "limit", "200", "delay", "20ms", "5ms", "loss", "1.5%", "rate", "50mbit",
    ]  # fmt: skip


def test_netem_jitter_without_reorder_adds_a_rate_and_byte_limit_becomes_packets() -> None:
    p = LinkProfile(delay_ms=10, jitter_ms=2, queue_packets=0, queue_bytes=15140)
    assert netem_args(p) == ["netem", "limit", "10", "delay", "10ms", "2ms", "rate", "100gbit"]


def test_netem_gilbert_elliott_is_gemodel_p_r_1h_1k() -> None:
    p = LinkProfile(ge_p_pct=1, ge_r_pct=24, ge_bad_loss_pct=90, ge_good_loss_pct=0.5)
    assert netem_args(p) == [
        "netem", "limit", "1000", "loss", "gemodel", "1%", "24%", "90%", "0.5%",
    ]  # fmt: skip


def test_netem_refuses_a_packet_size_limit() -> None:
    with pytest.raises(ShapingError, match="wire backend"):
        netem_args(LinkProfile(mtu_bytes=1400))


def test_netem_blackhole_is_total_loss() -> None:
    assert netem_args(LinkProfile(), blackhole=True) == ["netem", "limit", "1000", "loss", "100%"]


def test_netem_shaper_shapes_egress_of_the_far_side() -> None:
    node = FakeNode()
    shaper = NetemShaper(node, "wtest-a", "wtest-b")
    shaper.set("up", delay_ms=7)
    assert shaper.command("ab")[:6] == ["tc", "qdisc", "replace", "dev", "wtest-b", "root"]
    assert node.commands[-1].startswith(
        "tc qdisc replace dev wtest-b root netem limit 1000 delay 7ms"
    )
    shaper.set("down", loss_pct=3)
    assert "dev wtest-a root netem limit 1000 loss 3%" in node.commands[-1]
    with pytest.raises(ShapingError, match="direction must be"):
        shaper.set("sideways", delay_ms=1)


def test_wire_settings_and_command() -> None:
    p = LinkProfile(delay_ms=2.5, jitter_ms=0.5, loss_pct=0.1, rate_mbit=10, queue_bytes=3000)
    assert wire_settings(p) == {
        "delay_us": "2500",
        "jitter_us": "500",
        "reorder": "0",
        "loss_pct": "0.1",
        "ge_p_pct": "0",
        "ge_r_pct": "100",
        "ge_good_loss_pct": "0",
        "ge_bad_loss_pct": "100",
        "rate_bps": "10000000",
        "trace": "",
        "limit_pkts": "1000",
        "limit_bytes": "3000",
        "mtu": "0",
    }
    assert wire_settings(LinkProfile(mtu_bytes=1400))["mtu"] == "1400"
    shaper = WireShaper(FakeNode(), "a", "b", Path("/nonexistent"), None)
    shaper.profiles["ba"] = p
    shaper.blackholed = True
    assert shaper.command("ba").startswith("set ba delay_us=2500 ")
    assert shaper.command("ba").endswith(" down=1")


class FakeLab:
    def __init__(self) -> None:
        self.shaper_obj = NetemShaper(FakeNode(), "x-a", "x-b")
        self.events: list[tuple[str, str | None]] = []

    def shaper(self, access: str, client: str | None = None) -> Any:
        return self.shaper_obj

    def access_down(self, access: str, client: str | None = None) -> None:
        self.events.append(("down", client))

    def access_up(self, access: str, client: str | None = None) -> None:
        self.events.append(("up", client))

    def access_is_down(self, access: str, client: str | None = None) -> bool:
        return bool(self.events) and self.events[-1] == ("down", client)


def test_access_commands() -> None:
    lab = FakeLab()
    assert "delay_ms=20.0 (up)" in cli.access_command(lab, "wifi", "delay 20 dir=up")
    assert lab.shaper_obj.profiles["ab"].delay_ms == 20
    assert lab.shaper_obj.profiles["ba"].delay_ms == 0
    cli.access_command(lab, "5g", "loss 5")
    assert lab.shaper_obj.profiles["ba"].loss_pct == 5
    cli.access_command(lab, "wifi", "down client=c3")
    # `show` says the carrier as the lab knows it (it said "down": False after a down)
    assert "'carrier_lost': True" in cli.access_command(lab, "wifi", "show client=c3")
    cli.access_command(lab, "wifi", "up")
    assert lab.events == [("down", "c3"), ("up", None)]
    assert "'carrier_lost': False" in cli.access_command(lab, "wifi", "show")
    cli.access_command(lab, "wifi", "blackhole on")
    assert lab.shaper_obj.blackholed
    with pytest.raises(cli.UserError, match="needs a number"):
        cli.access_command(lab, "wifi", "rate fast")
    with pytest.raises(cli.UserError, match="verbs"):
        cli.access_command(lab, "wifi", "explode")
    # a size limit is the wire backend's: netem refuses it and the link keeps what it had
    with pytest.raises(ShapingError, match="wire backend"):
        cli.access_command(lab, "wifi", "mtu 1400")
    assert lab.shaper_obj.profiles["ab"].mtu_bytes == 0
    with pytest.raises(cli.UserError, match="needs a number"):
        cli.access_command(lab, "wifi", "mtu 1400.5")


def test_burst_and_trace_commands() -> None:
    lab = FakeLab()
    cli.access_command(lab, "5g", "loss 5")
    assert "p=1% r=25%" in cli.access_command(lab, "wifi", "burst 1 25 dir=down")
    down = lab.shaper_obj.profiles["ba"]
    assert (down.ge_p_pct, down.ge_r_pct, down.loss_pct) == (1, 25, 0)  # one loss model
    assert "loss gemodel 1% 25% 100% 0%" in lab.shaper_obj.middle.commands[-1]
    cli.access_command(lab, "wifi", "burst 0 0 dir=down")
    assert lab.shaper_obj.profiles["ba"].ge_p_pct == 0
    with pytest.raises(cli.UserError, match="two percentages"):
        cli.access_command(lab, "wifi", "burst a b")
    with pytest.raises(ShapingError, match="wire backend"):  # netem has no trace mode
        cli.access_command(lab, "wifi", "trace const-20")
    assert lab.shaper_obj.profiles["ab"].trace == ""  # the refused setting is not kept


def test_non_root_gets_one_sentence(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["up", "reference"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "qtlab: error: qtlab up needs root (network namespaces, Mininet): run it with sudo."
    )


def test_require_fidelity_refuses_an_off_network() -> None:
    good = Row("rtt_added", 20, 20.2, "ms", "wire", True)
    require_fidelity([good])
    with pytest.raises(FidelityError, match="loss_round_trip configured 1 measured 4"):
        require_fidelity([good, Row("loss_round_trip", 1, 4, "%", "wire", False)])


def test_clean_run_kills_only_recorded_live_processes(tmp_path: Path) -> None:
    state = RunState(tmp_path / "run-test")
    ours = subprocess.Popen(["sleep", "30"])
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        state.add_proc(ours.pid, "sleep")
        # A recorded pid whose process is not what was recorded must survive.
        state.add_proc(bystander.pid, "iperf3")
        done = clean_run(state.path)
        ours.wait(5)
        time.sleep(0.1)
        assert ours.returncode is not None
        assert bystander.poll() is None
        assert any(f"pid {ours.pid}" in line for line in done)
        assert not (tmp_path / "run-test").exists()
    finally:
        for p in (ours, bystander):
            p.kill()
            p.wait()


def test_clean_run_kills_a_recorded_script_run_by_its_interpreter(tmp_path: Path) -> None:
    """The venv's qtun is a script: its process's command line is "python .../qtun client
    ...", and clean compared only "python" with "qtun": every qtun of a crashed run stayed."""
    script = tmp_path / "qtun"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    script.chmod(0o755)
    state = RunState(tmp_path / "run-test")
    program = subprocess.Popen([str(script), "client"])
    try:
        wait_until_cmdline(program.pid, str(script))
        state.add_proc(program.pid, str(script))
        done = clean_run(state.path)
        assert program.wait(5) is not None
        assert any(f"pid {program.pid}" in line for line in done)
    finally:
        program.kill()
        program.wait()


def wait_until_cmdline(pid: int, word: str) -> None:
    """Until the process runs the program (its exec done): poll /proc, bounded."""
    for _ in range(500):
        if word in pid_cmdline(pid).split():
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never ran {word}")


def test_a_qtwire_that_is_gone_is_one_sentence_not_an_oserror(tmp_path: Path) -> None:
    """The lab CLI catches user errors only: a refused or missing control socket ended the
    session with a traceback (and tore the lab down)."""
    middle: Any = SimpleNamespace(name="wwifi")
    shaper = WireShaper(middle, "wwifi-a", "wwifi-b", tmp_path / "gone.sock", procs=None)
    with pytest.raises(ShapingError, match=r"^qtwire on wwifi No such file or directory"):
        shaper.control("get")
    with pytest.raises(ShapingError):
        shaper.set("both", loss_pct=5)
    assert shaper.profiles["ab"].loss_pct == LinkProfile().loss_pct  # the record kept its own


def test_tunnel_says_a_programs_state_when_its_status_is_incomplete(tmp_path: Path) -> None:
    """A program whose status could not be made writes role, pid and state alone: `tunnel`
    raised KeyError on it, ending the lab session just when a student asked what went wrong."""
    partial = {"role": "client", "pid": 1, "state": "stopped"}
    deployment = SimpleNamespace(
        concentrator="conc",
        clients=["c1"],
        fresh_status=lambda node, timeout: partial,
        workdir=tmp_path,
        lab=SimpleNamespace(log_dir=tmp_path),
    )
    text = cli.tunnel_summary(deployment)
    assert "conc: client stopped: see its log" in text and "c1: client stopped" in text


def test_run_state_records_json(tmp_path: Path) -> None:
    state = RunState(tmp_path / "r")
    state.add_node("c1", os.getpid())
    data = json.loads(state.path.read_text())
    assert data["owner_pid"] == os.getpid()
    assert data["nodes"]["c1"]["pid"] == os.getpid() and data["nodes"]["c1"]["start"] > 0
    state.finish()
    assert not (tmp_path / "r").exists()


def test_binomial_p_value_matches_a_hand_computed_tail() -> None:
    # Binomial(500, 0.002): the upper tail P(X >= 4), summed exactly with integer binomials.
    p = 0.002
    upper = 1 - sum(math.comb(500, i) * p**i * (1 - p) ** (500 - i) for i in range(4))
    assert upper == pytest.approx(0.018865, rel=1e-4)
    assert binomial_two_sided_p(500, 4, p) == pytest.approx(2 * upper, rel=1e-9)
    assert binomial_two_sided_p(500, 1, 0.002) == 1.0


@pytest.mark.parametrize(
    ("sent", "lost", "want", "ok"),
    [
        (500, 4, 0.2, True),  # 0.8 % of 500 at 0.2 %: 2 % likely; the demo once refused this
        (500, 8, 0.2, False),  # 1.6 %: once in ~40,000 by chance
        (10000, 500, 5.0, True),
        (10000, 700, 5.0, False),
        (2000, 0, 0.0, True),
        (2000, 30, 0.0, False),
        (0, 0, 1.0, False),
    ],
)
def test_loss_check_tolerates_chance_not_a_wrong_network(
    sent: int, lost: int, want: float, ok: bool
) -> None:
    assert loss_plausible(sent, lost, want) is ok


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["up", "reference", "--stream"],
            "qtlab: error: --stream needs --tunnel tunnel or --tunnel session.",
        ),
        (
            ["up", "pair", "--tunnel", "session"],
            "qtlab: error: --tunnel needs a topology with a concentrator: reference or nclient.",
        ),
    ],
)
def test_up_refuses_a_tunnel_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, argv: list[str], message: str
) -> None:
    # Refused before any network is built (root is pretended: the check comes first).
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.main(argv) == 2  # a usage mistake (tunnel.user_error.UsageError)
    assert capsys.readouterr().err.strip() == message


def test_qtlab_up_set_reaches_the_programs_that_have_the_setting() -> None:
    client, concentrator = cli.qtun_overrides(
        ["failback=false", 'limits.congestion_control="bbr"', "access.1.name=5g"]
    )
    assert client == ("failback=false", 'limits.congestion_control="bbr"', "access.1.name=5g")
    assert concentrator == ('limits.congestion_control="bbr"',)
    for bad in ("failbak=false", "failback", "=1", "limits.nosuch=3"):
        with pytest.raises(cli.UsageError, match="--set"):
            cli.qtun_overrides([bad])
    # a value its setting does not take, before a lab is built for it
    for bad, key in (
        ("limits.idle_timeout=abc", "limits.idle_timeout"),
        ('limits.congestion_control="vegas"', "limits.congestion_control"),
        ("failback=3", "failback"),
    ):
        with pytest.raises(cli.UsageError, match=key.replace(".", r"\.")):
            cli.qtun_overrides([bad])


def test_qtlab_up_refuses_a_missing_script(tmp_path: Path) -> None:
    with pytest.raises(cli.UsageError, match="no such file"):
        cli.check_script(tmp_path / "nothing.txt")
    script = tmp_path / "lab.txt"
    script.write_text("tunnel\n")
    assert cli.check_script(script) == script.resolve()


def test_capture_dir_must_be_new_or_empty(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "capture"
    assert cli.check_capture_dir(fresh) == fresh.resolve() and fresh.is_dir()
    assert cli.check_capture_dir(fresh) == fresh.resolve()  # still empty: accepted again
    (fresh / "c1").mkdir()
    with pytest.raises(cli.UsageError, match="not an empty directory; give a new one"):
        cli.check_capture_dir(fresh)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(cli.UsageError, match="not an empty directory"):
        cli.check_capture_dir(a_file)
    assert cli.check_capture_dir(None) is None


def test_figure_command_names_what_it_can_draw(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"experiment": "fuzz"}))
    assert cli.main(["figure", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qtlab: error: ") and "which has no figure; figures exist for" in err
    assert cli.main(["figure", str(tmp_path / "nothing")]) == 2
    assert "nothing does not exist: give a results run directory" in capsys.readouterr().err
    assert cli.main(["figure", str(tmp_path), "--out", str(tmp_path / "f.txt")]) == 2
    assert "give a .png path" in capsys.readouterr().err
    # a run that measured nothing: its table has only a header
    (tmp_path / "meta.json").write_text(json.dumps({"experiment": "failover"}))
    (tmp_path / "failover.csv").write_text("variant,run\n")
    assert cli.main(["figure", str(tmp_path)]) == 1
    assert "failover.csv has no rows: the run measured nothing to draw" in capsys.readouterr().err


def test_loss_bursts_are_runs_of_consecutive_sequence_numbers() -> None:
    assert loss_bursts([]) == []
    assert loss_bursts([3, 4, 5, 9, 11, 12]) == [3, 1, 2]
    assert loss_bursts([1]) == [1]


def test_the_tunnel_line_shows_the_engines_verdict_on_an_access() -> None:
    """`tunnel` in the qtlab CLI: an access the multipath engine suspects or declared dead says
    so after its RTT (an alive one says nothing more)."""
    base = {"name": "wifi", "available": True, "active": True, "srtt_ms": 12.34}
    assert cli._access_text({**base, "health": "alive"}) == "wifi up active srtt 12.3 ms"
    assert cli._access_text({**base, "health": "suspect"}) == "wifi up active srtt 12.3 ms suspect"
    dead = {**base, "available": False, "active": False, "health": "dead"}
    assert cli._access_text(dead) == "wifi DOWN srtt 12.3 ms dead"
