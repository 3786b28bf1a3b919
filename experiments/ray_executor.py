"""`qtlab run <exp> --executor ray --address HOST:PORT [--shards N]`: a sweep's shards on Ray.

A full sweep outgrows one 2-core machine, so its points are split into shards (point k belongs
to shard k mod n, as `--shard i/n`) and each shard runs as a Ray task on a node of an existing
cluster, through `shard_results.run_shard`, i.e. the same `run_experiment` a local run uses. Each
lab node is started with the custom resource `qtlab_lab: 1` and every task asks for one unit of
it, so a node runs one lab at a time: two labs on one node would share its cores and measure
each other. The tasks return their results as data through Ray's object store (nodes need not
share a filesystem) and this driver merges them into one run directory here
(`shard_results.merge_shards`): per-shard meta, the merged CSVs, then the summary and figure.

Every node needs this checkout at the same commit installed with the `distributed` extra (the
driver's Python and Ray versions: Ray requires them equal), what `make all` builds (build/qtwire,
build/libqtoffload.so, build/_qtcrypto.so), and root for the lab.
"""

from __future__ import annotations

import importlib
import logging
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experiments.runner import (
    Experiment,
    ExperimentError,
    Params,
    RayExecutor,
    RunSummary,
    base_meta,
    get_experiment,
    new_run_dir,
    shard_points,
    write_meta,
)
from experiments.shard_results import ShardOutcome, failed_outcome, merge_shards, run_shard
from tunnel.user_error import RuntimeFailure

RESOURCE = "qtlab_lab"  # one unit per node: one lab at a time there
CONNECT_TIMEOUT_S = 5.0
CANCEL_WAIT_S = 60.0  # how long a cancelled shard may take to tear its lab down
START_HINT = f"ray start --head --port 6379 --resources '{{\"{RESOURCE}\": 1}}'"


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise RuntimeFailure(
            "Ray is not installed in this environment: install the distributed extra "
            "(`pip install -e '.[distributed]'`, which `make venv` does) here and on every node."
        ) from None


def _check_reachable(address: str) -> None:
    """A clear sentence at once for an address nothing listens on (ray.init would retry for a
    long while first). "auto" (the cluster `ray start` made on this machine) is left to Ray."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExperimentError(
            f"--address {address!r}: write HOST:PORT (the head's GCS port, 6379 by default)."
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RuntimeFailure(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): start one there with "
            f"`{START_HINT}` and give the address it prints."
        ) from None


def connect(address: str) -> tuple[Any, int]:
    """Ray, connected to the cluster at `address`, and how many labs it can run at once."""
    ray = _import_ray()
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, ValueError) as exc:
        raise RuntimeFailure(
            f"could not join the Ray cluster at {address} ({str(exc).splitlines()[0]}): check it "
            f"is a Ray head with `ray status --address {address}`."
        ) from None
    except SystemExit:  # what ray.init does, minutes later, where something else listens
        raise RuntimeFailure(
            f"what answers at {address} is not a Ray head: give the address `ray start --head` "
            "printed."
        ) from None
    except Exception as exc:
        if "Version mismatch" not in str(exc):
            raise  # anything else is a bug: keep its traceback
        raise RuntimeFailure(
            f"the Ray cluster at {address} runs another Ray or Python version than this machine: "
            "install the same checkout (make venv) on every node."
        ) from None
    slots = int(ray.cluster_resources().get(RESOURCE, 0))
    if slots < 1:
        ray.shutdown()
        raise RuntimeFailure(
            f"no node of the Ray cluster at {address} offers the {RESOURCE} resource: start each "
            f"lab node with `ray start ... --resources '{{\"{RESOURCE}\": 1}}'`."
        )
    return ray, slots


def _shard_task(experiment: str, params: Params, shard: tuple[int, int]) -> ShardOutcome:
    """What a node runs: one shard, returned as data (runs in a Ray worker process)."""
    ray = importlib.import_module("ray")
    node = str(ray.get_runtime_context().get_node_id())
    return run_shard(get_experiment(experiment), params, shard, node)


def _ray_error(exc: BaseException) -> str:
    """A Ray failure (worker or node died, task cancelled) in a few lines."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:3])[:500] or type(exc).__name__


def run_on_ray(
    exp: Experiment[Any],
    params: Params,
    executor: RayExecutor,
    root: Path,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> RunSummary:
    points = exp.points(params)  # a bad parameter is said before anything is sent
    ray, slots = connect(executor.address)
    try:
        n = max(1, min(executor.shards or slots, len(points) or 1))
        shards = [(i, n) for i in range(1, n + 1)]
        counts = {s: len(shard_points(points, s)) for s in shards}
        run_dir = new_run_dir(exp.name, root)
        meta = base_meta(exp, params, (1, 1)) | (extra_meta or {})
        meta["executor"] = {
            "name": "ray",
            "address": executor.address,
            "ray_version": str(ray.__version__),
            "resource": RESOURCE,
            "lab_slots": slots,
            "shards": n,
            "points": len(points),
        }
        write_meta(run_dir, meta)
        # a fresh worker process per shard, as each local `--shard i/n` is its own process:
        # nothing a lab leaves in the process (signal handlers, module state) reaches the next
        task = ray.remote(max_calls=1)(_shard_task)
        pending = {
            task.options(
                # the custom resource is the gate (one lab per node); no CPU reservation, so a
                # node's CPU count given to Ray does not matter
                num_cpus=0,
                resources={RESOURCE: 1},
                max_retries=0,  # a failed shard is reported, never silently run twice
                name=f"qtlab {exp.name} shard {i}/{n}",
            ).remote(exp.name, params, (i, n)): (i, n)
            for i, n in shards
        }
        print(
            f"{exp.name}: {len(points)} point(s) in {n} shard(s) on the Ray cluster at "
            f"{executor.address} ({slots} lab slot(s)) -> {run_dir}",
            file=sys.stderr,
        )
        outcomes: list[ShardOutcome] = []
        try:
            _gather(ray, pending, counts, progress, outcomes)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)  # a KeyboardInterrupt in the task: its lab is torn down
            # before this driver leaves (Ray then ends its workers): let the labs go down
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
            raise
        finally:
            outcomes += [
                failed_outcome(
                    s,
                    counts[s],
                    "not gathered: the driver was interrupted or failed (a shard that was "
                    "cancelled keeps what it measured on its node, under /tmp/qtlab-shard-*, "
                    "as its log says)",
                )
                for s in pending.values()
            ]
            merged = merge_shards(exp, points, outcomes, run_dir, meta)
            meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
            write_meta(run_dir, meta)
    finally:
        ray.shutdown()
    for entry in meta["shards"]:
        if entry["error"]:
            print(
                f"{exp.name}: shard {entry['shard']} on {entry['host'] or '?'} (node "
                f"{entry['node'][:12] or '?'}): {entry['error']}",
                file=sys.stderr,
            )
    if meta.get("git_commits_differ"):
        print(
            f"{exp.name}: the nodes ran other commits than this checkout: "
            f"{', '.join(c[:10] for c in meta['git_commits_differ'])} (meta.json shards)",
            file=sys.stderr,
        )
    _draw_figure(exp, run_dir, merged.measured)
    return RunSummary(run_dir, merged.measured, merged.skipped, merged.failed, 0, merged.missing)


def _gather(
    ray: Any,
    pending: dict[Any, tuple[int, int]],
    counts: dict[tuple[int, int], int],
    bar: bool,
    outcomes: list[ShardOutcome],
) -> None:
    """The shards' outcomes into `outcomes` as they finish; a task Ray could not run becomes a
    failed one. Each gathered task leaves `pending` (what stays there was not gathered)."""
    from tqdm import tqdm

    with tqdm(total=len(pending), unit="shard", disable=not bar, file=sys.stderr) as progress:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                shard = pending.pop(ref)
                try:
                    outcome: ShardOutcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    outcome = failed_outcome(shard, counts[shard], _ray_error(exc))
                outcomes.append(outcome)
                progress.update(1)
                progress.write(
                    f"shard {outcome.label} {'FAILED' if outcome.error else 'done'} on "
                    f"{outcome.host or '?'}",
                    file=sys.stderr,
                )


def _draw_figure(exp: Experiment[Any], run_dir: Path, measured: int) -> None:
    """The experiment's figure, as `qtlab figure RUN_DIR` draws it, when it has one."""
    from experiments.analysis import FIGURES, ResultsError, figure_for_run

    if exp.name not in FIGURES or not measured:
        return
    try:
        print(f"figure: {figure_for_run(run_dir)}")
    except ResultsError as exc:
        print(f"figure: not drawn ({exc})")
