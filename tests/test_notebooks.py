"""The notebooks in notebooks/: each runs end to end with small parameters, and each is stored clean.

Every notebook's first code cell is tagged ``parameters`` and holds plain assignments. The run
test appends the overrides of ``SMALL`` to that cell (tiny image counts, few iterations, one
round) and executes the notebook with nbclient in a fresh kernel of this interpreter, with the
working directory and every run directory under a temporary directory, so nothing in the
repository is written. A notebook without an entry in ``SMALL`` fails: its defaults take minutes.

Most of a small run is the kernel importing torch, so the selected notebooks run concurrently,
one kernel per core (at most ``PARALLEL``), each kernel on one thread.
"""

from __future__ import annotations

import ast
import asyncio
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "bvit-interp-tests"
CELL_TIMEOUT_S = 300
PARALLEL = max(1, min(2, os.cpu_count() or 1))

# Overrides per notebook (by file stem); DEVICE and RUNS (run directories) are set wherever they are parameters.
SMALL: dict[str, dict[str, object]] = {
    "00_start_here": {"IMAGES": 3},
    "01_pointing_game": {"LIMIT": 12, "COMPARE": ["vit_tiny"], "BATCH_SIZE": 12},
    "02_feature_visualization": {"LIMIT": 24, "TOP": 1, "STEPS": [1, 12], "ITERATIONS": 2, "COPIES": 1, "K": 2},
    "03_svd_rank": {"LIMIT": 24, "RANKS": [16, 128], "COMPARE": ["vit_tiny"]},
    "04_pruning": {"ROUNDS": 1, "RATE": 0.5, "EPOCHS": 1.0, "GRAFT_EPOCHS": 0.5, "TRAIN_SIZE": 32, "VAL_LIMIT": 16,
                   "BATCH_SIZE": 16},
    "05_trajectories": {"LIMIT": 12, "COMPARE": ["vit_tiny"], "BATCH_SIZE": 12},
    "06_readout_early_exit_ablation": {"LIMIT": 12, "TRAIN_LIMIT": 24, "EPOCHS": 1, "THRESHOLDS": (0.5, 1.0),
                                       "ABLATION_LIMIT": 4, "COMPARE": ["vit_tiny"], "BATCH_SIZE": 12},
    "07_causal": {"LIMIT": 4, "SITES": ("resid_pre", "attn.z"), "DIRECTIONS": ("denoising",), "PROBE_LIMIT": 40,
                  "COMPARE": []},
    "08_transfer": {"TRAIN_LIMIT": 24, "VAL_LIMIT": 12, "EPOCHS": 1, "SEEDS": 1, "BATCH_SIZE": 12,
                    "METHODS": ["linear_probe", "lora_qv", "time_embedding_tuning"], "PAPER_COUNTS": False},
}
# One thread per kernel (kernels share the cores); numba on one thread also keeps PaCMAP's small
# fits fast (its OpenMP pool can stall for seconds on busy cores).
KERNEL_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The first code cell, which must be tagged ``parameters``."""
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    return first


def parameter_names(source: str) -> list[str]:
    """Names assigned by a parameters cell; AssertionError unless it holds only plain assignments."""
    names = []
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"parameters cell: line {node.lineno} is not a plain 'NAME = value' assignment"
        )
        names.append(node.targets[0].id)
    return names


def with_small_parameters(path: Path, runs: Path) -> nbformat.NotebookNode:
    """The notebook with its SMALL overrides (and DEVICE, RUNS) appended to the parameters cell."""
    nb = nbformat.read(path, as_version=4)
    cell = parameters_cell(nb)
    names = parameter_names(cell.source)
    unknown = set(SMALL[path.stem]) - set(names)
    assert not unknown, f"overrides {sorted(unknown)} are not parameters of {path.name}"
    common = {"DEVICE": "cpu", "RUNS": str(runs)}
    overrides = {**{k: v for k, v in common.items() if k in names}, **SMALL[path.stem]}
    cell.source += "\n# test overrides\n" + "".join(f"{k} = {v!r}\n" for k, v in overrides.items())
    return nb


async def execute(path: Path, workdir: Path, specs) -> None:
    """Run the small notebook in a fresh kernel with ``workdir`` as cwd; the executed copy is saved there."""
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = with_small_parameters(path, workdir / "runs")
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}})
    try:
        await client.async_execute(env={**os.environ, **KERNEL_ENV})
    finally:
        nbformat.write(nb, workdir / path.name)  # for inspection after a failure


@pytest.fixture(scope="session")
def kernel_specs(tmp_path_factory):
    """A kernelspec that runs this interpreter, whatever kernels the machine has installed."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    root = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(root / KERNEL)  # argv: sys.executable -m ipykernel_launcher
    return KernelSpecManager(kernel_dirs=[str(root)])


@pytest.fixture(scope="session")
def executed(request, kernel_specs, tmp_path_factory) -> dict[str, BaseException | None]:
    """Execute every notebook whose run test is selected, PARALLEL at a time: stem -> error or None."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_notebook_runs"]

    async def run_all() -> list[BaseException | None]:
        slots = asyncio.Semaphore(PARALLEL)

        async def one(path: Path) -> BaseException | None:
            async with slots:
                try:
                    await execute(path, tmp_path_factory.mktemp(path.stem), kernel_specs)
                except Exception as err:  # reported by the notebook's own test
                    return err
                return None

        return await asyncio.gather(*(one(p) for p in selected))

    return dict(zip((p.stem for p in selected), asyncio.run(run_all()), strict=True))


def test_every_notebook_has_small_parameters() -> None:
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    assert {nb.stem for nb in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    parameter_names(parameters_cell(nb).source)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "start with a markdown title and intro"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has outputs; strip them"
            assert "execution" not in cell.metadata, f"cell {i} holds execution timings; strip them"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, executed: dict[str, BaseException | None]) -> None:
    error = executed[path.stem]
    if error is not None:
        raise error
