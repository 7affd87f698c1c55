"""Resumable feature visualization: dataset exemplars once per run, one npz part per optimised target."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..analysis.featviz import (
    Exemplars,
    FeatvizOptions,
    Target,
    Visualizations,
    compute_exemplars,
    visualize,
)
from ..model import BViT
from .chunks import ArrayParts, cached_arrays
from .run import Run


def part_name(t: Target) -> str:
    """Name of a target's resumable part (``parts/<name>.npz``)."""
    return f"n{t.neuron}_s{t.step}" + ("" if t.patch is None else f"_p{t.patch}")


def exemplars(run: Run, model: BViT, dataset: Dataset, k: int, indices: Sequence[int] | None, statistic: str,
              batch_size: int, workers: int = 0, progress: bool = True) -> Exemplars:
    """Top-k dataset exemplars per neuron and step (``exemplars_all.npz``), computed once per run."""

    def compute() -> dict[str, np.ndarray]:
        found = compute_exemplars(model, dataset, k, indices, statistic, batch_size, workers, progress=progress)
        return found.to_arrays()

    return Exemplars.from_arrays(cached_arrays(run, "exemplars_all", compute))


def optimise(model: BViT, targets: list[Target], options: FeatvizOptions, run: Run, targets_per_batch: int,
             amp: bool = False, progress: bool = True) -> Visualizations:
    """Optimise the targets the run does not hold yet, writing each batch's parts; then load all."""
    parts = ArrayParts(run, "parts")
    missing = set(parts.pending([part_name(t) for t in targets]))
    pending = [t for t in targets if part_name(t) in missing]

    def save(batch: Visualizations) -> None:
        for i, t in enumerate(batch.targets):
            parts.write(part_name(t), images=batch.images[i].numpy(), history=batch.history[i].numpy())

    if pending:
        visualize(model, pending, options, batch_size=targets_per_batch, progress=progress, on_batch=save, amp=amp)
    arrays = [parts.read(part_name(t)) for t in targets]
    return Visualizations(targets, torch.from_numpy(np.stack([a["images"] for a in arrays])),
                          torch.from_numpy(np.stack([a["history"] for a in arrays])))
