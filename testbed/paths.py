"""Where things are in the checkout: the one place the testbed and the experiments take paths from.

Every path is absolute (from this file's location), so a program started from another working
directory (a notebook kernel in notebooks/, a process in a Mininet node) finds the same files.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "results"  # results/<experiment>/<YYYYmmdd-HHMMSS>/
FIGURES_DIR = RESULTS_ROOT / "figures"
EXPERIMENT_CONFIGS = REPO_ROOT / "experiments" / "configs"  # the full sweeps; quick/ the short ones
SCENARIOS_DIR = REPO_ROOT / "experiments" / "scenarios"  # shipped: testbed/scenario.py reads them
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
MAKE_CERTS = REPO_ROOT / "scripts" / "make-certs"
WIRE_SOURCE = REPO_ROOT / "testbed" / "wire" / "qtwire.c"
WIRE_BINARY = REPO_ROOT / "build" / "qtwire"
