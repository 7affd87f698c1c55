"""The transfer experiment (Sec. 4.3, Table 4, App. H) into a run directory, resumable per (model, dataset, method, seed).

Every cell (one ``fit_transfer``) is one part of the run: ``cells/<model>/<dataset>/<method>/seed<k>_row.parquet``
and ``..._history.parquet``, written when the cell finishes. A rerun of the same command reads finished
cells back and trains only the others; ``write_transfer`` then writes the run's tables and figures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..analysis.transfer_plots import plot_accuracy_vs_params, plot_histories
from ..model import BViT
from ..transfer import TransferSchedule, fit_transfer, summarize_transfer
from ..transfer.report import table4
from ..transfer.targets import TransferTarget, target_loaders, transform_key
from .run import Run


@dataclass(frozen=True)
class TransferCell:
    """One (model, dataset, method, seed) fit: the unit that is resumed."""

    model: str
    dataset: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        """Run-relative stem of the cell's parts."""
        return f"cells/{self.model}/{self.dataset}/{self.method}/seed{self.seed}"


@dataclass(frozen=True)
class TransferOptions:
    """Data and budget of every cell (everything that changes results besides the schedule)."""

    train_limit: int | None = None  # training images per target (seeded subset; None: all)
    val_limit: int | None = None  # validation images per target (seeded subset; None: all)
    batch_size: int = 64  # App. H: 64 (128 for CIFAR)
    subset_seed: int = 0  # seed of the image subsets (the fits' seeds are the cells')
    amp: bool = False  # bf16 autocast

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class TransferTables:
    """Rows of every cell, their per-epoch histories, and how many cells were read back."""

    results: pd.DataFrame
    history: pd.DataFrame
    kept: int = 0
    trained: int = 0
    cells: list[TransferCell] = field(default_factory=list)


def plan_cells(pairs: Sequence[tuple[str, str]], datasets: Sequence[str], seeds: Sequence[int]) -> list[TransferCell]:
    """Every cell, model by model, then dataset, method and seed (the (model, method) pairs that apply)."""
    models = list(dict.fromkeys(m for m, _ in pairs))
    return [TransferCell(model, dataset, method, seed) for model in models for dataset in datasets
            for m, method in pairs if m == model for seed in seeds]


def cell_done(run: Run, cell: TransferCell) -> bool:
    """Whether both parts of ``cell`` are in the run."""
    return run.has(f"{cell.key}_history.parquet") and run.has(f"{cell.key}_row.parquet")


def run_transfer(
    run: Run,
    models: Mapping[str, BViT],
    targets: Mapping[str, Mapping[str, TransferTarget]],
    cells: Sequence[TransferCell],
    schedule: TransferSchedule,
    options: TransferOptions,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TransferTables:
    """Fit every cell not yet in ``run`` (``targets[model][dataset]``: the target opened for that model's inputs).

    Loaders are built once per (dataset, input transform) and shared by the cells that use them.
    """
    loaders: dict[tuple[str, str], tuple[DataLoader, DataLoader]] = {}
    rows, histories, kept = [], [], 0
    bar = _bar(len(cells), progress)
    for cell in cells:
        if cell_done(run, cell):
            rows.append(run.read_table(f"{cell.key}_row"))
            histories.append(run.read_table(f"{cell.key}_history"))
            kept += 1
            bar.update(1)
            continue
        model, target = models[cell.model], targets[cell.model][cell.dataset]
        key = (cell.dataset, transform_key(model.config))
        if key not in loaders:
            loaders[key] = target_loaders(target, options.train_limit, options.val_limit, options.subset_seed,
                                          options.batch_size, workers)
        train, val = loaders[key]
        bar.set_description(f"{cell.model} {cell.dataset} {cell.method} seed {cell.seed}")
        result = fit_transfer(model, cell.method, train, val, schedule, seed=cell.seed, device=device,
                              progress=progress, num_classes=target.num_classes, amp=options.amp)
        row = pd.DataFrame([{**result.row, "model": cell.model, "dataset": cell.dataset,
                             "architecture": model.config.name, "train_images": len(train.dataset),
                             "recurrent": bool(model.config.is_recurrent)}])
        history = result.history.assign(model=cell.model, dataset=cell.dataset)
        run.write_table(f"{cell.key}_history", history)
        run.write_table(f"{cell.key}_row", row)  # written last: the cell is done once it exists
        rows.append(row)
        histories.append(history)
        bar.update(1)
        if log is not None:
            _write(log, progress, f"{cell.model} {cell.dataset} {cell.method} seed {cell.seed}: accuracy {result.row['accuracy']:.4f} "
                f"({result.row['trainable_params']:,} trainable parameters, {result.row['seconds']:.0f} s)")
    bar.close()
    results = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    if len(history):
        front = ["model", "dataset", "method", "seed", "epoch"]
        history = history[front + [c for c in history.columns if c not in front]]
    return TransferTables(results, history, kept, len(cells) - kept, list(cells))


def write_transfer(run: Run, tables: TransferTables, skipped: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write ``results``, ``summary``, ``table4`` (also CSV), ``history``, ``skipped`` and the figures; the summary."""
    front = ["model", "dataset", "method", "label", "seed", "trainable_params", "accuracy"]
    results = tables.results[front + [c for c in tables.results.columns if c not in front]]
    summary = summarize_transfer(results)
    run.write_table("results", results)
    run.write_table("summary", summary)
    run.write_table("table4", table4(summary), csv=True)
    run.write_table("history", tables.history)
    if skipped is not None and len(skipped):
        run.write_table("skipped", skipped)
    run.write_figure("accuracy_vs_params", plot_accuracy_vs_params(summary))
    run.write_figure("histories", plot_histories(tables.history))
    return summary


def _write(log: Callable[[str], None], progress: bool, text: str) -> None:
    """``log(text)`` without tearing the progress bars."""
    if not progress:
        log(text)
        return
    from tqdm.auto import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        log(text)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool):  # noqa: ANN202 - a tqdm bar or a stand-in
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="transfer cells", unit="cell")


__all__ = ["TransferCell", "TransferOptions", "TransferTables", "cell_done", "plan_cells", "run_transfer",
           "write_transfer"]
