"""Dataset exemplars: the top-k real images (and patch) of every (neuron, step), in one pass over the data.

The ranking statistic is the one the optimiser maximises: the neuron's post-GELU activation
averaged over patch tokens (``mean``, Ghiasi's objective), or its maximum over patch tokens
(``max``, comparable to the one-patch objective). The recorded patch is where the neuron peaks
in that image. Statistics are reduced inside the hooks, so memory stays (steps x neurons x k)
whatever the dataset size. Ties rank the image seen first (the lower index for sorted indices).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ...model import BViT
from .objectives import run_layers
from .optimize import frozen

STATISTICS = ("mean", "max")


@dataclass
class Exemplars:
    """Top-k images per (step, neuron); arrays are (L, F, k) with L the unrolled layers (1-based steps in tables)."""

    values: torch.Tensor  # statistic of the k best images, descending
    indices: torch.Tensor  # their dataset indices
    patches: torch.Tensor  # the patch where the neuron peaks in each of them
    mean: torch.Tensor  # (L, F) dataset mean of the statistic
    statistic: str
    count: int  # images seen

    def best(self, neuron: int, step: int) -> float:
        """The neuron's best real activation at 1-based ``step``."""
        return float(self.values[step - 1, neuron, 0])

    def table(self, pairs: Iterable[tuple[int, int]] | None = None) -> pd.DataFrame:
        """Long table (neuron, step, rank, image_index, value, patch) for (neuron, step) pairs (default all)."""
        n_layers, n_neurons, k = self.values.shape
        if pairs is None:
            pairs = [(f, s) for s in range(1, n_layers + 1) for f in range(n_neurons)]
        rows = []
        for neuron, step in pairs:
            for rank in range(k):
                rows.append((neuron, step, rank, int(self.indices[step - 1, neuron, rank]),
                             float(self.values[step - 1, neuron, rank]), int(self.patches[step - 1, neuron, rank])))
        return pd.DataFrame(rows, columns=["neuron", "step", "rank", "image_index", "value", "patch"])

    def most_variable(self, n: int) -> list[int]:
        """The ``n`` neurons whose best real activation varies most across steps (std over steps)."""
        spread = self.values[..., 0].double().std(dim=0)
        order = torch.sort(spread, descending=True, stable=True).indices
        return [int(i) for i in order[:n]]

    def random_neurons(self, n: int, seed: int = 0, exclude: Iterable[int] = ()) -> list[int]:
        """``n`` neurons drawn uniformly without replacement (seeded), none of ``exclude``: the selection control.

        ``most_variable`` picks neurons whose preferred inputs change across steps by construction;
        the same measures on randomly drawn neurons say how typical that is.
        """
        skip = {int(i) for i in exclude}
        pool = np.array([i for i in range(self.values.shape[1]) if i not in skip])
        if not 0 <= n <= len(pool):
            raise ValueError(f"cannot draw {n} random neurons from the {len(pool)} not already selected")
        return sorted(int(i) for i in np.random.default_rng(seed).choice(pool, size=n, replace=False))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``Run.write_arrays``."""
        return {"values": self.values.numpy(), "indices": self.indices.numpy(), "patches": self.patches.numpy(),
                "mean": self.mean.numpy(), "statistic": np.array(self.statistic), "count": np.array(self.count)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Exemplars:
        """Inverse of ``to_arrays``."""
        return cls(torch.from_numpy(arrays["values"]), torch.from_numpy(arrays["indices"]),
                   torch.from_numpy(arrays["patches"]), torch.from_numpy(arrays["mean"]),
                   str(arrays["statistic"]), int(arrays["count"]))


def _merge_topk(
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the k largest of old + new along the last axis; a stable sort keeps earlier (lower) indices first on ties."""
    values, indices, patches = (torch.cat([a, b], dim=-1) for a, b in zip(best, new, strict=True))
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]
    return values.gather(-1, order), indices.gather(-1, order), patches.gather(-1, order)


@torch.no_grad()
def compute_exemplars(
    model: BViT,
    dataset: Dataset,
    k: int = 8,
    indices: Sequence[int] | None = None,
    statistic: str = "mean",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> Exemplars:
    """Top-k images of ``dataset`` (items (input, label, ...); those at ``indices``, default all) per neuron and step.

    Recorded indices are positions in ``dataset`` (not in ``indices``).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r}: choose one of {STATISTICS}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]  # type: ignore[arg-type]
    if not order:
        raise ValueError("no images to rank exemplars on (empty dataset or subset)")
    device = next(model.parameters()).device
    npt, n_layers = model.num_prefix_tokens, model.num_layers()
    hidden = model.blocks[0].mlp.fc1.out_features
    empty = torch.empty(n_layers, hidden, 0)
    best = (empty, empty.long(), empty.long())
    total = torch.zeros(n_layers, hidden, dtype=torch.float64)

    def reduce(post: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patch_tokens = post[:, npt:]
        peak, where = patch_tokens.max(dim=1)
        return (patch_tokens.mean(dim=1) if statistic == "mean" else peak), where

    loader = DataLoader(Subset(dataset, order), batch_size=batch_size, num_workers=workers)
    positions = torch.tensor(order)
    start = 0
    with frozen(model):
        for batch in tqdm(loader, desc="exemplars", unit="batch", disable=not progress):
            images = batch[0].to(device)
            b = images.shape[0]
            per_layer = run_layers(model, images, reduce)
            stats = torch.stack([per_layer[layer][0] for layer in range(n_layers)]).transpose(1, 2).float().cpu()
            where = torch.stack([per_layer[layer][1] for layer in range(n_layers)]).transpose(1, 2).cpu()
            total += stats.double().sum(dim=-1)
            idx = positions[start : start + b].expand(n_layers, hidden, b)
            best = _merge_topk(best, (stats, idx, where), k)
            start += b
    return Exemplars(*best, mean=(total / len(order)).float(), statistic=statistic, count=len(order))


def load_inputs(dataset: Dataset, indices: Sequence[int]) -> torch.Tensor:
    """The model inputs of dataset items ``indices`` stacked (M, 3, H, W)."""
    return torch.stack([dataset[int(i)][0] for i in indices])
