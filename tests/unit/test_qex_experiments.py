"""The experiments' point sets, shipped config files, variants and baselines (no testbed needed):
the qtun variants' settings as data (config tables, extends, placeholders), the outer
congestion-control dimension of the goodput experiment, what the baselines configure."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments import aggregation, failover, goodput, variants
from experiments.runner import (
    EXPERIMENTS,
    ExperimentError,
    Point,
    get_experiment,
    resolve_params,
    some_points,
)
from testbed.lab import Lab
from testbed.paths import EXPERIMENT_CONFIGS


@pytest.mark.parametrize("config", sorted(EXPERIMENT_CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_resolve(config: Path) -> None:
    """Each shipped config (named after its experiment, or a variant of one: its one table
    says which) resolves to points."""
    (name,) = tomllib.loads(config.read_text())
    exp = get_experiment(name)
    params = resolve_params(exp, config=config)
    assert exp.points(params)


def test_failover_points_and_quick() -> None:
    exp = get_experiment("failover")
    full = exp.points(resolve_params(exp))
    # 10 variants + the 5 of the ablation, 2 events, 2 traffic, 3 runs
    assert len(full) == 15 * 2 * 2 * 3
    assert {p["variant"] for p in full} >= {"plain-5g", "mptcp-backup", "wireguard-os", "engine"}
    quick = resolve_params(exp, quick=True)
    assert quick["duration_s"] <= 12 and quick["down_at_s"] < quick["up_at_s"]
    assert quick["ablation"] == []
    assert [p["variant"] for p in exp.points(quick)][:2] == ["plain", "plain-5g"]
    keys = {p.key(exp.key_columns) for p in full}
    assert len(keys) == len(full)  # every point has its own key (resume relies on it)


@pytest.mark.parametrize(
    ("name", "sets", "message"),
    [
        ("failover", ['variants=["nope"]'], "unknown variants nope"),
        ("failover", ['ablation=["plain"]'], "unknown ablation plain"),
        ("failover", ["down_at_s=50.0"], "down_at_s < up_at_s"),
        ("failover", ['qtun.plain={mode="session"}'], "has a baseline's name"),
        ("goodput", ['transports=["tcp-vegas"]'], "unknown transports"),
        ("goodput", ['outer_cc=["vegas"]'], "unknown outer_cc vegas"),
        ("goodput", ['modes=["ipsec"]'], "unknown modes ipsec"),
        ("goodput", ["outer_cc_settings.bbr=3"], r"outer_cc_settings\.bbr must be a list"),
        ("aggregation", ['schedulers=["random"]'], "unknown schedulers"),
        ("aggregation", ['variants=["wireguard"]'], "unknown variants"),
    ],
)
def test_bad_sweeps_are_refused(name: str, sets: list[str], message: str) -> None:
    exp = get_experiment(name)
    with pytest.raises(ExperimentError, match=message):
        exp.points(resolve_params(exp, sets=sets))


def test_goodput_points_have_the_outer_dimensions_for_qtun_modes_only() -> None:
    exp = get_experiment("goodput")
    points = exp.points(resolve_params(exp))
    # per (traffic, loss, RTT): plain + WireGuard + 3 qtun modes x 3 outer CC x 2 loss hiding
    assert len(points) == 3 * 5 * 3 * 3 * (2 + 3 * 3 * 2)
    assert {(p["transport"], p["cc"]) for p in points} == {
        ("tcp", "cubic"),
        ("tcp", "bbr"),
        ("udp", ""),
    }
    outer = {(p["mode"], p["outer_cc"], p["loss_hiding"]) for p in points}
    assert ("plain", "", "") in outer and ("wireguard", "", "") in outer
    assert ("stream", "none", "on") in outer and ("plain", "bbr", "off") not in outer
    assert {p["rtt_ms"] for p in points} == {10.0, 50.0, 100.0}  # issue 13's RTTs
    quick = exp.points(resolve_params(exp, quick=True))
    assert 0 < len(quick) <= 12  # a few points: the tests' and the estimate's
    assert {p["outer_cc"] for p in quick} == {"", "cubic", "bbr", "none"}
    assert len({p.key(exp.key_columns) for p in points}) == len(points)


def test_goodput_outer_settings_reach_both_programs() -> None:
    params = resolve_params(goodput.EXPERIMENT, sets=["rate_mbit=30.0"])
    qtun = goodput._check(params)
    point = Point({"mode": "tunnel", "outer_cc": "none", "loss_hiding": "off"})
    spec, reason = goodput.plan_point(params, qtun, point)
    assert reason is None and spec is not None
    expected = (
        'limits.congestion_control="none"',
        "limits.pacing_rate_mbps=30",
        'limits.loss_hiding="off"',
    )
    assert spec.client_overrides == expected and spec.concentrator_overrides == expected
    assert spec.mode == "tunnel" and not spec.stream
    # stream mode cannot go without congestion control
    stream = Point({"mode": "stream", "outer_cc": "none", "loss_hiding": "off"})
    assert "stream mode needs outer congestion control" in str(
        goodput.plan_point(params, qtun, stream)[1]
    )
    hiding = Point({"mode": "session", "outer_cc": "bbr", "loss_hiding": "on"})
    hiding_spec, reason = goodput.plan_point(params, qtun, hiding)
    assert reason is None and hiding_spec is not None
    assert hiding_spec.client_overrides[-1] == 'limits.loss_hiding="on"'
    assert goodput.plan_point(params, qtun, Point({"mode": "plain"}))[0] is None
    settings = goodput.qtun_settings(params, qtun)
    assert settings["stream/bbr/off"]["stream"] is True
    assert settings["tunnel/none/off"]["client"] == list(expected)
    assert len(settings) == 3 * 3 * 2
    # a table gives each program its own list; the key names are data
    params = resolve_params(
        goodput.EXPERIMENT,
        sets=['loss_hiding_settings.on={client=["limits.hide=1"], concentrator=[]}'],
    )
    client, concentrator = goodput.outer_overrides(params, "loss_hiding_settings", "on")
    assert (client, concentrator) == (["limits.hide=1"], [])


def test_aggregation_points() -> None:
    exp = get_experiment("aggregation")
    points = exp.points(resolve_params(exp, runs=1))
    assert [(p["variant"], p["scheduler"], p["reorder"]) for p in points] == [
        ("session", "wrr", True),
        ("session", "wrr", False),
        ("session", "lowest-rtt", True),
        ("session", "lowest-rtt", False),
        ("session", "earliest", True),
        ("session", "earliest", False),
        ("mptcp", "default", ""),
        ("mptcp-backup", "default", ""),
    ]
    # a variant of one connection (tunnel mode, MASQUE) has no scheduler or reorder buffer:
    # one point per run
    one = exp.points(resolve_params(exp, runs=2, sets=['variants=["masque", "tunnel"]']))
    assert [(p["variant"], p["scheduler"], p["reorder"], p["run"]) for p in one] == [
        ("masque", "none", "", 1),
        ("masque", "none", "", 2),
        ("tunnel", "none", "", 1),
        ("tunnel", "none", "", 2),
    ]
    qtun = aggregation._check(resolve_params(exp))
    assert qtun["masque"].spec().mode == "masque"
    spec = qtun["session"].spec(scheduler="no-such-scheduler", reorder=False)
    assert "qtun has no scheduler 'no-such-scheduler'" in str(qtun["session"].not_ready(spec))


def test_qtun_variants_come_from_the_shipped_configs() -> None:
    """One home: the [<exp>.qtun.*] tables of experiments/configs/ are also the defaults."""
    for name in ("failover", "goodput", "aggregation"):
        exp = get_experiment(name)
        shipped = tomllib.loads((EXPERIMENT_CONFIGS / f"{name}.toml").read_text())[name]
        assert resolve_params(exp)["qtun"] == shipped["qtun"]
        with_file = resolve_params(exp, config=EXPERIMENT_CONFIGS / f"{name}.toml")
        assert with_file["qtun"] == shipped["qtun"]
    qtun = failover.qtun_variants(resolve_params(failover.EXPERIMENT))
    noreports = qtun["session-failover-noreports"]
    assert noreports.join_order == ("wifi", "5g") and not noreports.access_reports
    assert qtun["stream-migration"].spec().client_overrides == (
        'stream.intercept=["10.200.0.0/16"]',
    )


def test_a_variant_is_changed_or_added_as_data(tmp_path: Path) -> None:
    exp = failover.EXPERIMENT
    sets = ['qtun.session-failover.client=["limits.x=1"]', "qtun.tunnel-migration.mode=session"]
    params = resolve_params(exp, sets=sets)
    qtun = failover.qtun_variants(params)
    assert qtun["session-failover"].client == ("limits.x=1",)
    assert qtun["session-failover"].scheduler == "failover"  # the other keys stay
    assert qtun["tunnel-migration"].mode == "session"
    config = tmp_path / "mine.toml"
    config.write_text(
        '[failover]\nvariants = ["plain", "mine"]\n'
        '[failover.qtun.mine]\nextends = "session-failover"\nconcentrator = ["limits.y=2"]\n'
    )
    params = resolve_params(exp, config=config)
    ran = list(dict.fromkeys(p["variant"] for p in exp.points(params)))
    assert ran[:2] == ["plain", "mine"]
    mine = failover.qtun_variants(params)["mine"]
    assert (mine.mode, mine.scheduler, mine.concentrator) == (
        "session",
        "failover",
        ("limits.y=2",),
    )
    assert "session-failover" in params["qtun"]  # the shipped ones are still there


def test_extends_appends_overrides_and_unknown_settings_skip() -> None:
    tables = {
        "base": {
            "mode": "session",
            "scheduler": "wrr",
            "client": ["limits.probe_interval=0.2"],
            "turns_off": "none",
        },
        "child": {"extends": "base", "client": ["limits.no_such_key=false"], "turns_off": "x"},
        "plain-child": {"extends": "base"},
    }
    parsed = variants.parse_qtun_variants(tables, "test")
    child = parsed["child"]
    assert child.client == ("limits.probe_interval=0.2", "limits.no_such_key=false")
    assert child.scheduler == "wrr"
    assert child.turns_off == "x" and parsed["plain-child"].turns_off == ""  # not inherited
    assert "limits.no_such_key: not a qtun setting" in str(child.not_ready())
    assert parsed["base"].not_ready() is None
    wrong_value = variants.parse_qtun_variants(
        {"v": {"mode": "tunnel", "client": ["limits.probe_interval=-1"]}}, "test"
    )["v"]
    assert "limits.probe_interval = -1 is not" in str(wrong_value.not_ready())
    # every shipped variant names real settings and schedulers: none is skipped
    params = resolve_params(failover.EXPERIMENT)
    for name in failover.qtun_variants(params):
        assert failover.qtun_missing(name) is None, name


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"a": {"mode": "bridge"}}, "qtun.a.mode must be one of tunnel, session"),
        ({"a": {"schedular": "wrr"}}, "unknown key 'schedular'"),
        ({"a": {"client": "x=1"}}, "qtun.a.client must be a list of strings"),
        ({"a": {"client": [1]}}, "qtun.a.client must be a list of strings"),
        ({"a": {"access_reports": "no"}}, "qtun.a.access_reports must be a bool"),
        ({"a": {"extends": "b"}, "b": {"extends": "a"}}, "extends itself"),
        ({"a": {"extends": "nope"}}, "extends 'nope', which has no table"),
        ({"a": {"join_order": ["wifi", "lte"]}}, "unknown access"),
        ({"a": 3}, "must be a table"),
    ],
)
def test_bad_variant_tables_are_one_sentence(tables: dict[str, object], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        variants.parse_qtun_variants(tables, "test")


def test_every_registered_experiment_loads() -> None:
    for name in EXPERIMENTS:
        assert get_experiment(name).name == name


@pytest.fixture()
def plan_lab() -> Iterator[Lab]:
    lab = Lab("reference")  # not started: only its Plan is used
    yield lab
    lab.state.finish()


def test_variants_route_from_the_addressing_plan(plan_lab: Lab, tmp_path: Path) -> None:
    assert variants.plain(plan_lab).route == variants.Route("conc", "10.100.0.1")
    vpn = variants.WireGuard(plan_lab, tmp_path)
    assert vpn.route() == variants.Route("conc", variants.WG_CONCENTRATOR, variants.WG_PORT)
    to_servers = variants.WireGuard(plan_lab, tmp_path, to_servers=True)
    assert to_servers.route() == variants.Route("srv1", "10.200.1.2", variants.WG_PORT)
    assert {vpn.ifname(n) for n in vpn.nodes} == {"qexwg-conc", "qexwg-c1"}
    assert all(len(vpn.ifname(n)) <= 15 for n in vpn.nodes)


def test_modes_keep_one_running(plan_lab: Lab, tmp_path: Path) -> None:
    meta: dict[str, object] = {}
    modes = variants.Modes(plan_lab, tmp_path, meta)
    route = modes.ensure("plain")
    assert route.outer_udp_port is None and modes.mode == "plain"
    assert modes.ensure("plain", fresh=True) is route  # plain has no connection to renew
    assert modes.starts == 1
    with pytest.raises(ValueError, match="unknown mode 'ipsec'"):
        modes.ensure("ipsec")
    assert modes.mode is None and meta == {}
    specs = {m: variants.mode_spec(m) for m in variants.QTUN_MODES}
    assert [(s.mode, s.stream) for s in specs.values()] == [
        ("tunnel", False),
        ("session", False),
        ("session", True),
        ("masque", False),
    ]


def test_baselines_are_known_with_a_note_each() -> None:
    assert set(variants.BASELINES) == {
        "plain",
        "plain-5g",
        "mptcp",
        "mptcp-backup",
        "wireguard",
        "wireguard-os",
    }
    assert all(variants.BASELINES.values())
    assert set(failover.DEFAULTS["variants"]) >= set(variants.BASELINES)


class Recorder:
    """Stands in for Lab.run / node(...).cmd on a Lab that is not started."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def run(self, node: str, line: str) -> str:
        self.lines.append((node, line))
        return ""

    def node(self, name: str) -> Recorder.Node:
        return Recorder.Node(self, name)

    class Node:
        def __init__(self, recorder: Recorder, name: str) -> None:
            self.recorder, self.name = recorder, name

        def cmd(self, line: str) -> str:
            self.recorder.lines.append((self.name, line))
            return ""


def test_mptcp_backup_marks_the_5g_subflow(plan_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(plan_lab, "run", recorder.run)
    carrier = variants.start_baseline(plan_lab, "mptcp-backup", Path("/nonexistent"))
    assert carrier.route.mptcp and carrier.programs == {}
    endpoints = [line for _, line in recorder.lines if "endpoint add" in line]
    assert endpoints == [
        "ip mptcp endpoint add 10.1.1.2 dev c1-wifi subflow",
        "ip mptcp endpoint add 10.2.1.2 dev c1-5g subflow backup",
    ]
    recorder.lines.clear()
    variants.start_baseline(plan_lab, "mptcp", Path("/nonexistent"))
    assert not any("backup" in line for _, line in recorder.lines)


def test_plain_5g_binds_the_5g_address(plan_lab: Lab) -> None:
    assert variants.plain(plan_lab).route.client_source is None  # the default route: WiFi
    route = variants.start_baseline(plan_lab, "plain-5g", Path("/nonexistent")).route
    assert route.client_source == "10.2.1.2" and route.address == "10.100.0.1"


def test_the_os_removes_and_restores_a_failed_access(
    plan_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wireguard-os: the routes an OS removes with a lost carrier, from the topology's own lines;
    the 5G route (metric 20) is never touched, nor is any WireGuard endpoint."""
    wifi = plan_lab.access("wifi", "c1")
    lines = variants.access_lines(plan_lab.plan, wifi)
    assert lines[:2] == [
        "addr add 10.1.1.2/24 dev c1-wifi",
        "-6 addr add fd00:1:1::2/64 dev c1-wifi nodad",
    ]
    assert len(lines) == 6 and all("10.2." not in x and "fd00:2:" not in x for x in lines)
    assert not any(x.startswith("rule") or " rule " in x for x in lines)
    recorder = Recorder()
    monkeypatch.setattr(plan_lab, "run", recorder.run)
    os_config = variants.OsAccessConfig(plan_lab, "c1")
    os_config.down("wifi")
    down = [line for _, line in recorder.lines]
    assert down == [
        "ip route del 10.100.0.1/32 via 10.1.1.1 metric 10",
        "ip -6 route del fd00:100::1/128 via fd00:1:1::1 metric 10",
        "ip route del 10.100.0.1/32 via 10.1.1.1 table 101",
        "ip -6 route del fd00:100::1/128 via fd00:1:1::1 table 101",
    ]
    recorder.lines.clear()
    os_config.up("wifi")
    assert [line for _, line in recorder.lines] == [x.replace(" del ", " replace ") for x in down]


@pytest.mark.parametrize(
    ("name", "sets", "message"),
    [
        ("failover", ["duration_s=inf"], "parameter duration_s is inf"),
        ("failover", ["duration_s=1e999"], "parameter duration_s is inf"),
        ("failover", ["sample_interval_s=0"], "sample_interval_s is 0.0: it must be a finite"),
        ("failover", ["sample_interval_s=-1"], "sample_interval_s is -1.0"),
        ("failover", ["udp_rate_mbit=-1"], r"udp_rate_mbit is -1\.0: .* > 0 Mbit/s"),
        ("failover", ["udp_rate_mbit=nan"], "udp_rate_mbit is nan"),
        ("failover", ["udp_size_bytes=0"], "between 16 and 65000 bytes"),
        ("goodput", ["timeseries_interval_s=0"], "timeseries_interval_s is 0.0"),
        ("goodput", ["rate_mbit=-50"], "rate_mbit is -50.0"),
        ("aggregation", ["wifi_loss_pct=500"], "wifi_loss_pct is 500.0: .* between 0 and 100"),
        ("aggregation", ["duration_s=0"], "duration_s is 0.0"),
        ("latency", ["queue_packets=-1"], "queue_packets is -1"),
        ("overhead", ["udp_pps=0"], "udp_pps is 0"),
    ],
)
def test_out_of_range_parameters_never_reach_a_lab(
    name: str, sets: list[str], message: str
) -> None:
    with pytest.raises(ExperimentError, match=message):
        resolve_params(get_experiment(name), sets=sets)


@pytest.mark.parametrize("sets", [["variants=[]"], ["traffic=[]"]])
def test_a_failover_run_of_no_point_is_refused(sets: list[str]) -> None:
    exp = get_experiment("failover")
    # --quick has no ablation variants: an empty `variants` leaves none either
    with pytest.raises(ExperimentError, match="empty: the failover run would measure nothing") as e:
        some_points(exp, resolve_params(exp, quick=True, sets=sets))
    assert sets[0].split("=")[0] in str(e.value)


@pytest.mark.parametrize(
    ("out", "received"),
    [
        ("1 packets transmitted, 1 received, 0% packet loss, time 0ms", 1),
        # WireGuard's handshake retried after 5 s: the held echo requests answered together
        # (a link-down run's ready check, 2026-12-06, failed on "2 received")
        ("26 packets transmitted, 2 received, 92.3077% packet loss, time 5098ms", 2),
        ("60 packets transmitted, 0 received, 100% packet loss, time 11990ms", 0),
        ("ping: connect: Network is unreachable", 0),
    ],
)
def test_a_baselines_ready_check_counts_every_reply(out: str, received: int) -> None:
    assert variants.ping_received(out) == received
