"""`qtlab`: bring a topology up, check the machine, clean up after a crash, measure fidelity.

qtlab up reference [--backend auto|netem|wire] [--profile wifi=lte,delay_ms=30] [--cc cubic]
qtlab up nclient --clients 50
qtlab up reference --tunnel session [--scheduler wrr] [--stream]   (qtun running in the lab)
qtlab up reference --tunnel tunnel --set failback=false --script demo.txt   (a scripted lab)
qtlab doctor | qtlab clean | qtlab fidelity [--backend ...] | qtlab topologies | qtlab scenarios
qtlab run failover [--config F] [--runs N] [--shard i/n] [--resume DIR] [--quick] [--set k=v]
                   [--scenario FILE|NAME]
qtlab run latency --quick --executor ray --address HOST:PORT [--shards N]   (shards on Ray)
qtlab demo

Exit codes (tunnel/user_error.py run_command, as for qtun, the experiment runner, demo and
bench): 0 done, 2 a usage mistake (an option, a topology or profile name, experiment
parameters), 1 a runtime failure (not root, a network that could not be built or is not what
was asked, a qtun program that did not come up), 130 interrupted. A user's error is one line,
`qtlab: error: <sentence>`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

from testbed.profiles import PROFILES, LinkProfile, parse_overrides, profile
from testbed.shaping import BACKENDS, DIRECTIONS
from testbed.topologies import TOPOLOGIES
from testbed.traces import trace_path
from tunnel.session.scheduler import SCHEDULER_NAMES
from tunnel.user_error import RuntimeFailure, SentenceParser, UsageError, UserError, run_command

ACCESS_HELP = """<access> <verb> [value] [dir=up|down|both] [client=cK]
  verbs: down | up (a real carrier loss and back), blackhole on|off (100 % loss, link up),
         delay MS, jitter MS, loss PCT, rate MBIT (0 = unlimited), queue PACKETS,
         mtu BYTES (longer IP packets dropped silently, 0 = no limit; wire backend),
         reorder on|off, burst P R (Gilbert-Elliott: good->bad P %, bad->good R %; 0 0 = off),
         trace NAME|FILE|off (a Mahimahi trace instead of the rate), show
  examples: wifi down | 5g loss 5 | wifi delay 20 dir=up | wifi down client=c3 |
            wifi burst 1 25 | 5g trace 5g-walk | wifi mtu 1400"""

VERB_FIELD = {
    "delay": "delay_ms",
    "jitter": "jitter_ms",
    "loss": "loss_pct",
    "rate": "rate_mbit",
    "queue": "queue_packets",
    "mtu": "mtu_bytes",
}
INT_FIELDS = ("queue_packets", "mtu_bytes")


def parse_profile_args(items: list[str]) -> dict[str, LinkProfile]:
    """["wifi=lte,delay_ms=30", "5g=5g"] -> {"wifi": lte with delay 30, "5g": 5g profile}."""
    out: dict[str, LinkProfile] = {}
    for item in items:
        access, sep, rest = item.partition("=")
        if not sep:
            raise UsageError(f"--profile {item!r}: write ACCESS=PROFILE[,field=value...].")
        name, _, overrides = rest.partition(",")
        out[access] = profile(name, **parse_overrides(overrides))
        if out[access].trace:  # read now: the shaper would refuse it once the lab is up
            trace_path(out[access].trace)
    return out


def access_command(lab: Any, access: str, line: str) -> str:
    """Apply one `<access> ...` CLI command to a running lab; returns what to print."""
    words = line.split()
    opts = dict(w.split("=", 1) for w in words if "=" in w)
    args = [w for w in words if "=" not in w]
    if not args:
        raise UsageError(ACCESS_HELP)
    verb, value = args[0], (args[1] if len(args) > 1 else None)
    client = opts.get("client")
    direction = opts.get("dir", "both")
    if direction not in DIRECTIONS:
        raise UsageError(f"dir must be one of {', '.join(DIRECTIONS)}.")
    if verb == "down":
        lab.access_down(access, client)
        return f"{access}: link down (carrier lost)"
    if verb == "up":
        lab.access_up(access, client)
        return f"{access}: link up"
    shaper = lab.shaper(access, client)
    if verb == "show":  # the carrier is the client's interface's (a shared shaper has none)
        return str({**shaper.describe(), "carrier_lost": lab.access_is_down(access, client)})
    if verb == "blackhole":
        shaper.blackhole(value != "off")
        return f"{access}: blackhole {'off' if value == 'off' else 'on'}"
    if verb == "reorder":
        shaper.set(direction, reorder=value != "off")
        return f"{access}: reorder {'off' if value == 'off' else 'on'} ({direction})"
    if verb == "burst" and len(args) == 3:
        try:
            p, r = float(args[1]), float(args[2])
        except ValueError:
            raise UsageError(f"burst needs two percentages, not {args[1:]!r}.") from None
        fields: dict[str, float] = {"ge_p_pct": p, "ge_r_pct": r if p else 100.0}
        if p:
            fields["loss_pct"] = 0.0  # one loss model at a time
        shaper.set(direction, **fields)
        return f"{access}: Gilbert-Elliott p={p:g}% r={r:g}% ({direction})"
    if verb == "trace" and value is not None:
        trace = "" if value == "off" else value
        shaper.set(direction, trace=trace, rate_mbit=0.0)
        return f"{access}: trace {value} ({direction})"
    if verb in VERB_FIELD and value is not None:
        field = VERB_FIELD[verb]
        try:
            number: float | int = int(value) if field in INT_FIELDS else float(value)
        except ValueError:
            raise UsageError(f"{verb} needs a number, not {value!r}.") from None
        shaper.set(direction, **{field: number})
        return f"{access}: {field}={number} ({direction})"
    raise UsageError(ACCESS_HELP)


def _access_text(access: dict[str, Any]) -> str:
    words = [access["name"], "up" if access["available"] else "DOWN"]
    if access["active"]:
        words.append("active")
    if access["srtt_ms"] is not None:
        words.append(f"srtt {access['srtt_ms']:.1f} ms")
    health = access.get("health")
    if health not in (None, "alive"):  # the multipath engine's verdict: suspect, dead
        words.append(str(health))
    return " ".join(words)


FRESH_STATUS_S = 2.0  # for a program to rewrite its status file when `tunnel` asks


def tunnel_summary(deployment: Any) -> str:
    """One line per qtun program of a deployment: state, accesses, counters that matter. Each
    program is asked to rewrite its status file first (fresh_status), so this, and an `sh`
    command reading $QTLAB_STATUS_DIR after it, shows the state of now."""
    from testbed.qtun import QtunError

    lines = []
    for node in [deployment.concentrator, *deployment.clients]:
        try:
            try:
                st = deployment.fresh_status(node, FRESH_STATUS_S)
            except QtunError:  # stopped, or too slow to answer: its last file
                st = deployment.status(node)
        except QtunError as exc:  # no status file yet, or the program is gone
            lines.append(f"{node}: {exc}")
            continue
        if "accesses" not in st and "clients" not in st:
            # a program whose status could not be made writes its role and state alone (a
            # KeyError here ended the lab session when a student asked what went wrong)
            lines.append(f"{node}: {st.get('role', 'qtun')} {st.get('state')}: see its log")
            continue
        if st.get("role") == "concentrator":
            lines.append(
                f"{node}: concentrator {st['state']}, {len(st['clients'])} client(s), "
                f"{st['sessions']} session(s), {st['connections']} connection(s), "
                f"refused {st['refused']}"
            )
            continue
        accesses = ", ".join(_access_text(a) for a in st["accesses"])
        stream = st.get("stream")
        streams = (
            f"; stream mode: {stream.get('opened', 0)} TCP connections, {stream.get('active', 0)} "
            "active"
            if stream
            else ""
        )
        lines.append(
            f"{node}: {st['mode']} mode {st['state']}, inner {deployment.client_address(node)}; "
            f"{accesses}; tun rx {st['tun']['rx_packets']} tx {st['tun']['tx_packets']} packets"
            f"{streams}"
        )
    lines.append(f"status files and configs: {deployment.workdir}; logs: {deployment.lab.log_dir}")
    return "\n".join(lines)


MAX_SLEEP_S = 600.0


def _run_cli(lab: Any, deployment: Any = None, script: Path | None = None) -> None:
    """Mininet's CLI with the access verbs (and `tunnel` with qtun running), interactive or,
    with `script`, batch: each line echoed as `qtlab> line` and run, `exit` ends it early."""
    from mininet.cli import CLI
    from mininet.log import setLogLevel

    setLogLevel("output")  # the CLI prints node command output at this level

    def make(access: str) -> Any:
        def do_access(self: Any, line: str) -> None:
            try:
                print(access_command(lab, access, line))
            except UserError as exc:  # the lab stays up: say what is wrong, take the next command
                print(f"error: {exc}")

        do_access.__doc__ = ACCESS_HELP.replace("<access>", access)
        return do_access

    names = sorted({a.name for a in lab.plan.accesses})
    methods = {f"do_{name}": make(name) for name in names}
    if deployment is not None:

        def do_tunnel(self: Any, line: str) -> None:
            """tunnel: the qtun programs' state (from their status files).
            tunnel wait REGEX [SECONDS]: poll that state until it matches REGEX (a Python
            regular expression; at most SECONDS, 10 by default), then print it — e.g.
            `tunnel wait c1: .*wifi up active` after `wifi up`."""
            words = line.split()
            if not words:
                print(tunnel_summary(deployment))
                return
            if words[0] != "wait" or len(words) < 2:
                print("error: use `tunnel` or `tunnel wait REGEX [SECONDS]`.")
                return
            print(wait_for_tunnel(deployment, line.strip()[len("wait") :].strip()))

        methods["do_tunnel"] = do_tunnel

    def do_sleep(self: Any, line: str) -> None:
        """sleep SECONDS: wait (e.g. between the steps of a script), at most 600 s."""
        try:
            seconds = float(line)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_SLEEP_S:
            print(f"error: sleep takes a number of seconds from 0 to {MAX_SLEEP_S:g}.")
            return
        time.sleep(seconds)

    def do_source(self: Any, line: str) -> None:
        """source FILE: run FILE's commands, each echoed first; `exit` in it ends the CLI."""
        path = Path(line.strip())
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            print(f"error: cannot read the script {path}: {exc.strerror}.")
            return
        for command in lines:
            if not command.strip() or command.lstrip().startswith("#"):
                continue
            print(f"qtlab> {command}", flush=True)
            if self.onecmd(command):
                return

    methods["do_sleep"] = do_sleep
    methods["do_source"] = do_source
    cls = type("QtlabCLI", (CLI,), methods)
    extra = "; `tunnel` shows the qtun programs" if deployment is not None else ""
    print(
        f"qtlab: backend {lab.backend}; access commands: {', '.join(names)} "
        f"(try `help wifi`){extra}."
    )
    if script is None:
        cls(lab.net)
        return
    # Batch mode. Mininet forwards what arrives on the CLI's stdin to a node while a node
    # command runs: the CLI gets a pipe nobody writes to, so the script's lines (or a
    # terminal's keys) can never reach a node's shell, and its end never kills one.
    read_end, write_end = os.pipe()
    try:
        with open(read_end, closefd=True) as quiet:
            cls(lab.net, stdin=quiet, script=str(script))
    finally:
        os.close(write_end)


MAX_WAIT_S = 120.0
WAIT_POLL_S = 0.05


def wait_for_tunnel(deployment: Any, argument: str) -> str:
    """`tunnel wait REGEX [SECONDS]`: tunnel_summary once it matches REGEX, polled every 50 ms
    (each poll asks the programs for fresh status files), or an error line with the last
    summary after SECONDS (10 by default, at most 120)."""
    import re

    pattern, seconds = argument, 10.0
    head, _, tail = argument.rpartition(" ")
    if head:  # a last word that is a number is the timeout
        with contextlib.suppress(ValueError):
            seconds, pattern = float(tail), head.strip()
    if not 0 < seconds <= MAX_WAIT_S:
        return f"error: tunnel wait takes at most {MAX_WAIT_S:g} seconds."
    try:
        expression = re.compile(pattern)
    except re.error as exc:
        return f"error: {pattern!r} is not a regular expression ({exc})."
    deadline = time.monotonic() + seconds
    while True:
        summary = tunnel_summary(deployment)
        if expression.search(summary):
            return summary
        if time.monotonic() >= deadline:
            late = f"error: after {seconds:g} s the tunnel still does not match {pattern!r}:"
            return f"{late}\n{summary}"
        time.sleep(WAIT_POLL_S)


def check_script(path: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        raise UsageError(f"--script {path}: no such file; give a file of CLI commands.")
    return path.resolve()


def qtun_overrides(items: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`--set key=value` items as (client, concentrator) overrides: each goes to every program
    whose configuration has that setting (tunnel/config.py; `limits.congestion_control` both,
    `failback` the client only); a key neither has is a usage error."""
    from tunnel.config import ClientConfig, ConcentratorConfig
    from tunnel.config_schema import check_override_values, unknown_settings

    client: list[str] = []
    concentrator: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--set {item!r}: write key=value, e.g. --set failback=false.")
        to_client = not unknown_settings([item], ClientConfig)
        to_concentrator = not unknown_settings([item], ConcentratorConfig)
        if not (to_client or to_concentrator):
            raise UsageError(
                f"--set {key.strip()}: no qtun setting has that name; see the README's "
                "configuration reference."
            )
        # a value its setting does not take is said now, not by the programs once the lab is up
        if to_client:
            check_override_values([item], ClientConfig)
            client.append(item)
        if to_concentrator:
            check_override_values([item], ConcentratorConfig)
            concentrator.append(item)
    return tuple(client), tuple(concentrator)


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise RuntimeFailure(
            f"qtlab {what} needs root (network namespaces, Mininet): run it with sudo."
        )


def build_parser() -> argparse.ArgumentParser:
    p = SentenceParser(prog="qtlab", description="QUIC Tunnel Lab testbed")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring a topology up and open the Mininet CLI")
    up.add_argument("topology", help=f"one of {', '.join(sorted(TOPOLOGIES))}")
    up.add_argument("--backend", choices=BACKENDS, default="auto")
    up.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="ACCESS=NAME[,f=v...]",
        help=f"link profile per access; names: {', '.join(sorted(PROFILES))}",
    )
    up.add_argument("--clients", type=int, help="number of clients (nclient topology)")
    up.add_argument("--servers", type=int, help="number of servers")
    up.add_argument("--cc", help="TCP congestion control on clients, servers, concentrator")
    up.add_argument(
        "--tunnel",
        choices=("tunnel", "session"),
        help="also run qtun: a concentrator on conc and a client on every client host",
    )
    up.add_argument(
        "--scheduler",
        choices=SCHEDULER_NAMES,
        default="failover",
        help="session-mode scheduler (with --tunnel session)",
    )
    up.add_argument(
        "--stream",
        action="store_true",
        help="with --tunnel: stream mode too, the clients' TCP to the servers on QUIC streams",
    )
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --tunnel: a qtun setting for every program that has it "
        '(e.g. failback=false, limits.congestion_control="bbr"); repeatable',
    )
    up.add_argument(
        "--capture",
        type=Path,
        metavar="DIR",
        help="capture every access (DIR/<client>/<access>.pcap) and, with --tunnel, the "
        "programs' TLS key logs and qlogs; read it with `qtlab decode DIR` or Wireshark",
    )
    up.add_argument(
        "--script",
        type=Path,
        help="run this file's CLI commands (one per line, echoed), then tear everything down",
    )
    sub.add_parser("doctor", help="report kernel features, programs and privileges")
    sub.add_parser("clean", help="remove what crashed qtlab runs left behind (only ours)")
    fid = sub.add_parser("fidelity", help="measure configured vs real delay, loss and rate")
    fid.add_argument("--backend", choices=BACKENDS, default="auto")
    fid.add_argument("--out", type=Path, default=Path("results/fidelity"))
    sub.add_parser("topologies", help="list the registered topologies")
    sub.add_parser("scenarios", help="list the shipped scenarios (qtlab run ... --scenario NAME)")
    from experiments.runner import add_executor_arguments, add_run_arguments

    add_run_arguments(
        sub.add_parser("run", help="run an experiment into results/<name>/<time>/", add_help=False)
    )
    demo = sub.add_parser("demo", help="the short failover experiment, its table and figure")
    demo.add_argument("--results", type=Path, default=None, help="results root")
    again = sub.add_parser(
        "rerun", help="run a results run again with the parameters its meta.json recorded"
    )
    again.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    again.add_argument("--results", type=Path, help="results root (default: beside RUN_DIR)")
    again.add_argument("--no-progress", action="store_true")
    add_executor_arguments(again)
    figure = sub.add_parser("figure", help="draw the figure of a results run directory")
    figure.add_argument("run_dir", type=Path, help="results/<experiment>/<time>/")
    figure.add_argument("--out", type=Path, help="the PNG (default RUN_DIR/<experiment>.png)")
    compare = sub.add_parser(
        "compare", help="two runs of one experiment, cell by cell: medians, intervals, verdict"
    )
    compare.add_argument("before", type=Path, metavar="BEFORE", help="a results run directory")
    compare.add_argument("after", type=Path, metavar="AFTER", help="a run of the same experiment")
    compare.add_argument(
        "--metric", help="the measurement compared (default: the experiment's headline one)"
    )
    compare.add_argument("--csv", type=Path, help="also write the comparison to this CSV")
    from testbed.decode import add_decode_arguments

    add_decode_arguments(
        sub.add_parser(
            "decode",
            help="print the tunnel's messages of a capture directory (tshark + keylog + dissector)",
        )
    )
    return p


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from experiments.runner import run_from_args

        return int(run_from_args(args))
    if args.command == "rerun":
        from experiments.runner import rerun_from_args

        return int(rerun_from_args(args))
    if args.command == "decode":
        from testbed.decode import decode_from_args

        return decode_from_args(args)
    if args.command == "figure":
        from experiments.analysis import figure_for_run

        print(f"figure: {figure_for_run(args.run_dir, args.out)}")
        return 0
    if args.command == "compare":
        from experiments.compare import compare_from_args

        return compare_from_args(args.before, args.after, args.metric, args.csv)
    if args.command == "demo":
        from experiments.demo import run_demo

        return int(run_demo(args.results))
    if args.command == "scenarios":
        from experiments.runner import scenario_list

        print(scenario_list())
        return 0
    if args.command == "topologies":
        for name, cls in sorted(TOPOLOGIES.items()):
            print(f"{name:<10} {(cls.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.command == "doctor":
        from testbed.doctor import report, run_checks

        checks = run_checks()
        print(report(checks))
        return 0 if all(c.ok for c in checks if c.name not in ("netem", "mptcp")) else 1
    if args.command == "clean":
        _require_root("clean")
        from testbed.cleanup import clean

        done = clean()
        print("\n".join(done) if done else "nothing to clean")
        return 0
    if args.command == "fidelity":
        _require_root("fidelity")
        from experiments.text_columns import align
        from testbed.fidelity import run_benchmark

        path = run_benchmark(args.backend, args.out)
        with open(path) as f:
            print("\n".join(align(list(csv.reader(f)))))
        print(f"written to {path}")
        return 0
    _require_root("up")
    if args.topology not in TOPOLOGIES:
        raise UsageError(
            f"unknown topology {args.topology!r}; choose one of {', '.join(sorted(TOPOLOGIES))}."
        )
    params: dict[str, Any] = {}
    profiles = parse_profile_args(args.profile)
    if profiles:
        params["profiles"] = profiles
    if args.clients is not None:
        if args.topology != "nclient":
            raise UsageError("--clients only applies to the nclient topology.")
        params["clients"] = args.clients
    if args.servers is not None:
        params["servers"] = args.servers

    if args.stream and not args.tunnel:
        raise UsageError("--stream needs --tunnel tunnel or --tunnel session.")
    if args.set and not args.tunnel:
        raise UsageError(
            "--set needs --tunnel tunnel or --tunnel session (it sets qtun's settings)."
        )
    client_sets, concentrator_sets = qtun_overrides(args.set)
    script = check_script(args.script)
    if args.tunnel and args.topology == "pair":
        raise UsageError("--tunnel needs a topology with a concentrator: reference or nclient.")
    capture = check_capture_dir(args.capture)
    try:
        _up(args, params, script, capture, client_sets, concentrator_sets)
    finally:
        if capture is not None:
            from testbed.capture import hand_over

            hand_over(capture)
            if any(capture.rglob("*.pcap")):
                print(f"qtlab: the capture is in {capture}; read it with `qtlab decode {capture}`")
    return 0


def check_capture_dir(path: Path | None) -> Path | None:
    """--capture DIR: a new or empty directory (a second capture would mix with the first)."""
    if path is None:
        return None
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--capture {path}: not an empty directory; give a new one.")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _up(
    args: argparse.Namespace,
    params: dict[str, Any],
    script: Path | None,
    capture: Path | None,
    client_sets: tuple[str, ...],
    concentrator_sets: tuple[str, ...],
) -> None:
    from testbed.lab import Lab

    with Lab(args.topology, backend=args.backend, congestion_control=args.cc, **params) as lab:
        print(f"qtlab: {args.topology} up in {lab.build_seconds:.1f} s")
        if capture is not None:
            from testbed.capture import start_capture

            pcaps = start_capture(lab, capture)
            os.environ["QTLAB_CAPTURE_DIR"] = str(capture)  # for `sh` commands
            print(f"qtlab: capturing {len(pcaps)} access interface(s) into {capture}")
        if not args.tunnel:
            _run_cli(lab, script=script)
            return
        from testbed.qtun import QtunDeployment, TunnelSpec

        intercept = ('stream.intercept=["10.200.0.0/16", "fd00:200::/32"]',) if args.stream else ()
        spec = TunnelSpec(
            mode=args.tunnel,
            scheduler=args.scheduler,
            stream=args.stream,
            client_overrides=intercept + client_sets,
            concentrator_overrides=concentrator_sets,
            capture=capture,
        )
        with QtunDeployment(lab, spec) as deployment:
            # for `sh` commands (they run in qtlab's own environment): where the status files
            # and the logs are, e.g. `sh cat $QTLAB_STATUS_DIR/c1.status.json`
            os.environ["QTLAB_STATUS_DIR"] = str(deployment.workdir)
            os.environ["QTLAB_LOG_DIR"] = str(lab.log_dir)
            print(tunnel_summary(deployment))
            if script is None:
                print("try: c1 ping -c3 10.200.1.2   (through the tunnel), then `wifi down`")
            _run_cli(lab, deployment, script)


def main(argv: list[str] | None = None) -> int:
    """Every qtlab command runs through run_command: a UserError (wrong option, not root, a
    network that could not be built or is not what was asked) is one line and its exit code
    (2 usage, 1 runtime); anything else is a bug and keeps its traceback."""
    words = sys.argv[1:] if argv is None else argv
    interrupted = (
        "what was measured is in the run directory."
        if words[:1] in (["run"], ["rerun"])
        else "everything was stopped."
    )
    # parsed inside run_command: a mistake on the command line is one sentence too
    return run_command(
        "qtlab", lambda: _dispatch(build_parser().parse_args(argv)), interrupted=interrupted
    )


if __name__ == "__main__":
    sys.exit(main())
