"""What stream mode's faithful connect costs an application: connect() time and time to the
first byte of an answer, early vs faithful vs no tunnel, on the reference lab (Mininet, root).

    sudo .venv/bin/python -m experiments.bench_connect [--connects N] [--profile NAME]

For each variant: N sequential connections from c1 to an echo server on srv1, each timing
connect() and then one 4-byte echo (send, first byte back). Variants:
  plain      no tunnel: c1 to an echo server on the concentrator's host over its default route
             (WiFi; the servers behind the concentrator are only reachable through the tunnel)
  early      tunnel mode + stream mode, `stream.connect = "early"` (the SYN answered by the
             client's listener at once; the concentrator connects meanwhile)
  faithful   the same with `stream.connect = "faithful"` (the SYN held until TCP Connect OK)
Writes results/bench-connect/<timestamp>/connect.csv (one row per connection) and prints the
medians. Figures, not checks: nothing here passes or fails on a number.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from testbed.lab import Lab
from testbed.paths import REPO_ROOT
from testbed.qtun import QtunDeployment, TunnelSpec
from testbed.topologies import CONCENTRATOR_V4
from tunnel.user_error import SentenceParser, run_command

SERVER = "10.200.1.2"
PORT = 7207
ECHO_SERVER = f"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT})); s.listen(128)
def echo(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""
CLIENT = """
import json, socket, sys, time
rows = []
for _ in range({n}):
    t0 = time.monotonic(); s = socket.create_connection(("{host}", {port}), timeout=10)
    t1 = time.monotonic(); s.sendall(b"ping"); s.recv(4); t2 = time.monotonic(); s.close()
    rows.append([t1 - t0, t2 - t0])
print("ROWS " + json.dumps(rows))
"""


def measure(lab: Lab, n: int, script: Path, host: str = SERVER) -> list[list[float]]:
    script.write_text(CLIENT.format(n=n, host=host, port=PORT))
    out = str(lab.node("c1").cmd(f"{sys.executable} {script}"))
    for line in out.splitlines():
        if line.startswith("ROWS "):
            rows: list[list[float]] = json.loads(line[5:])
            return rows
    raise RuntimeError(f"the connect loop printed no result: {out.strip()[-300:]}")


def main(argv: list[str] | None = None) -> int:
    parser = SentenceParser(
        prog="python -m experiments.bench_connect", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--connects", type=int, default=30)
    parser.add_argument("--profile", default="reference")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results" / "bench-connect")
    # parsed inside run_command: a mistake on the command line is one line (exit code 2)
    return run_command(
        "bench_connect",
        lambda: _bench(parser.parse_args(argv)),
        interrupted="the lab was torn down",
    )


def _bench(args: argparse.Namespace) -> int:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = args.results / stamp
    out_dir.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    with Lab(args.profile) as lab, tempfile.TemporaryDirectory(prefix="qtl-connect-") as scratch:
        script = Path(scratch) / "client.py"  # the connect loop c1 runs
        servers = [
            lab.procs.start(lab.node(node), "echo", [sys.executable, "-c", ECHO_SERVER])
            for node in ("srv1", "conc")
        ]
        try:
            for variant in ("plain", "early", "faithful"):
                if variant == "plain":
                    samples = measure(lab, args.connects, script, CONCENTRATOR_V4)
                else:
                    spec = TunnelSpec(
                        mode="tunnel", stream=True, client_overrides=(f"stream.connect={variant}",)
                    )
                    deployment = QtunDeployment(lab, spec)
                    deployment.start(timeout=30)
                    try:
                        samples = measure(lab, args.connects, script)
                    finally:
                        deployment.stop()
                for index, (connect_s, answer_s) in enumerate(samples):
                    rows.append(
                        {"variant": variant, "connection": index,
                         "connect_ms": round(connect_s * 1000, 3),
                         "first_answer_ms": round(answer_s * 1000, 3)}
                    )  # fmt: skip
        finally:
            for server in servers:
                lab.procs.stop(server)
    with open(out_dir / "connect.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "meta.json").write_text(
        json.dumps({"profile": args.profile, "connects": args.connects, "server": SERVER}, indent=2)
    )
    head = f"{'variant':10} {'connect() ms':>14} {'first answer ms':>16}"
    print(f"{head}   (medians of {args.connects})")
    for variant in ("plain", "early", "faithful"):
        mine = [r for r in rows if r["variant"] == variant]
        print(
            f"{variant:10} {statistics.median(r['connect_ms'] for r in mine):14.2f}"
            f" {statistics.median(r['first_answer_ms'] for r in mine):16.2f}"
        )
    print(f"results: {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
