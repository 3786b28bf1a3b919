"""Context managers the Mininet tests share: a lab without random loss, a qtun
deployment on a lab, an iperf3 server on a lab node; each test module wraps them in fixtures of
the scope it needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from testbed.hosts import HostProcess
from testbed.lab import Lab
from testbed.qtun import QtunDeployment, TunnelSpec


@contextmanager
def lossless_lab(topology: str = "reference", **params: int) -> Iterator[Lab]:
    """A lab of `topology` (with its `params`, e.g. clients=3), up, with both accesses' random
    loss off (counts, gaps and reachability then depend on what is tested only); stopped on
    exit."""
    lab = Lab(topology, **params)
    try:
        lab.start()
        for access in ("wifi", "5g"):
            lab.shaper(access).set("both", loss_pct=0)
        yield lab
    finally:
        lab.stop()


@contextmanager
def deployed(lab: Lab, spec: TunnelSpec, timeout: float = 30.0) -> Iterator[QtunDeployment]:
    """`spec` deployed on `lab` and up, stopped on exit."""
    dep = QtunDeployment(lab, spec)
    try:
        dep.start(timeout=timeout)
        yield dep
    finally:
        dep.stop()


@contextmanager
def iperf3_server(
    lab: Lab, port: int, idle_timeout_s: float, node: str = "srv1"
) -> Iterator[HostProcess]:
    """An iperf3 server on `node` (it ends itself after `idle_timeout_s` without a client)."""
    server = lab.procs.start_iperf3_server(lab.node(node), port=port, idle_timeout_s=idle_timeout_s)
    try:
        yield server
    finally:
        lab.procs.stop(server)
