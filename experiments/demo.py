"""`qtlab demo` (or `python -m experiments.demo`): the short failover run, its table and figure.

Runs `qtlab run failover --quick` (every variant, WiFi link-down at 4 s and back at 8 s, 12 s of
bulk TCP per variant, default profiles; a few minutes in all), prints the gap per variant and
writes the figure (PNG and SVG) into the run directory via experiments.analysis.failover_figure.

The run goes to results/demo/failover/<time>/, not results/failover/: a demo is a smoke run of
one repetition, and the notebooks' "latest failover run" should stay the real experiment. Its
figure stays in its run directory too: the README's results/figures/failover-demo.png is a
committed file, which a demo must not rewrite (a checkout with a changed tracked file records
every later run as "dirty").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from experiments.runner import RESULTS_ROOT, resolve_params, run_experiment
from tunnel.user_error import RuntimeFailure, run_command

FIGURE_NAME = "failover-demo.png"


def run_demo(results: Path | None = None) -> int:
    from experiments.failover import EXPERIMENT, summary_table

    if os.geteuid() != 0:
        raise RuntimeFailure("the demo builds a Mininet network and needs root: run it with sudo.")
    root = results or RESULTS_ROOT
    params = resolve_params(EXPERIMENT, quick=True)
    summary = run_experiment(EXPERIMENT, params, root=root / "demo")
    print(f"failover (quick) -> {summary.run_dir}")
    print(summary_table(summary.run_dir))
    if summary.ran == 0:
        print("demo: no variant produced a measurement; no figure.", file=sys.stderr)
        return 1
    try:
        from experiments.analysis import failover_figure
    except ImportError as exc:
        print(f"demo: no figure: experiments.analysis is not available ({exc}).", file=sys.stderr)
        return 1
    png = failover_figure(summary.run_dir, summary.run_dir / FIGURE_NAME)
    print(f"figure: {png}")
    return 1 if summary.failed else 0


def main() -> int:
    return run_command("qtlab", run_demo, interrupted="everything was stopped.")


if __name__ == "__main__":
    sys.exit(main())
