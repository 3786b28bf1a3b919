"""Every notebook runs top to bottom with nbclient, against the committed results.

The kernel is this interpreter (sys.executable) through a kernelspec written into a temporary
directory: the `python3` spec a venv ships runs whatever `python` is first on PATH, which in CI
may not be the venv. Parameters are injected the way papermill does (a cell right after the one
tagged `parameters`), so each run also checks that mechanism; figures go to a temporary
directory so the test never rewrites the committed PNGs.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from experiments import analysis
from testbed.paths import NOTEBOOKS_DIR, RESULTS_ROOT
from tests.unit.test_analysis import WRITERS

pytestmark = pytest.mark.notebook

# notebook -> figures it writes
NOTEBOOKS = {
    "failover": ["failover.png"],
    "ablation": ["ablation.png"],
    "masque": ["masque.png"],
    "overhead": ["overhead.png"],
    "goodput": ["goodput.png", "goodput-loss.png"],
    "aggregation": ["aggregation.png"],
    "scale": ["scale.png"],
}


def experiment_of(name: str) -> str:
    """The experiment whose runs a notebook reads (ablation.ipynb: failover's)."""
    return analysis.NOTEBOOK_EXPERIMENTS.get(name, name)


KERNEL_NAME = "qnb-venv-python"
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    spec_dir = tmp_path_factory.mktemp("qnb-kernels") / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "test venv python",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])


def run_notebook(
    name: str, kernel_specs: KernelSpecManager, **parameters: str
) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}.ipynb needs exactly one cell tagged 'parameters'"
    injected = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(injected))
    # the kernel's connection file beside its kernelspec, in pytest's temporary directory:
    # without one jupyter_client writes /tmp/tmp*.json and leaves it there
    connection_file = Path(kernel_specs.kernel_dirs[0]) / f"kernel-{uuid.uuid4().hex}.json"
    km = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=kernel_specs,
        connection_file=str(connection_file),
    )
    client = NotebookClient(
        nb,
        km=km,
        timeout=TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # cwd, as Jupyter would use
    )
    client.execute()
    return nb


def output_text(nb: nbformat.NotebookNode) -> str:
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_on_committed_results(
    name: str, kernel_specs: KernelSpecManager, tmp_path: Path
) -> None:
    nb = run_notebook(name, kernel_specs, figures_dir=str(tmp_path))
    text = output_text(nb)
    if not analysis.run_dirs(experiment_of(name), RESULTS_ROOT):
        assert f"No {name} results yet" in text
        pytest.skip(f"no committed {name} results: checked the notebook says so and finishes")
    for reason in ("has nothing to show", "No figure"):
        if reason in text:  # e.g. a run whose points all failed: said in one sentence
            pytest.skip(f"the latest {name} run {reason.lower()}: the notebook says so")
    for png in NOTEBOOKS[name]:
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG"), f"{name} did not write {png}"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_on_a_given_run(
    name: str, kernel_specs: KernelSpecManager, tmp_path: Path
) -> None:
    """results_dir given explicitly (small CSVs written by the analysis unit tests' writers)."""
    run = tmp_path / name / "20261126-120000"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"experiment": name, "seed": 7}))
    WRITERS[name](run)
    nb = run_notebook(name, kernel_specs, results_dir=str(run), figures_dir=str(tmp_path / "f"))
    assert f"Run `{run}`" in output_text(nb)
    for png in NOTEBOOKS[name]:
        assert (tmp_path / "f" / png).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_without_results_says_so(
    name: str, kernel_specs: KernelSpecManager, tmp_path: Path
) -> None:
    empty_root = tmp_path / "results"
    empty_root.mkdir()
    nb = run_notebook(
        name, kernel_specs, results_root=str(empty_root), figures_dir=str(tmp_path / "figs")
    )
    assert f"No {name} results yet" in output_text(nb)
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_on_a_run_without_data(
    name: str, kernel_specs: KernelSpecManager, tmp_path: Path
) -> None:
    """A run whose points all failed has meta.json but no CSV: one sentence, no traceback."""
    run = tmp_path / experiment_of(name) / "20261126-120000"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"experiment": name, "failed": [{"point": {}}]}))
    nb = run_notebook(name, kernel_specs, results_root=str(tmp_path), figures_dir=str(tmp_path))
    text = output_text(nb)
    assert "1 point(s) failed" in text
    assert f"This {name} run has nothing to show" in text and "does not exist" in text
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebooks_are_stripped(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name}.ipynb has outputs committed: clear them before committing"
            )


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_only_load_and_plot(name: str) -> None:
    """The preamble is analysis.notebook_setup: no notebook resolves runs, reads meta.json or
    CSVs, or builds figures by itself (one place to change how every notebook starts)."""
    nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f'analysis.notebook_setup("{name}", results_dir, results_root, figures_dir)' in code
    for own_work in ("resolve_run", "load_meta", "read_csv", "savefig", "Path(", "import pandas"):
        assert own_work not in code, f"{name}.ipynb does {own_work} itself"
    assert len(code.splitlines()) <= 30
