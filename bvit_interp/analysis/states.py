"""Residual-stream helpers shared by the dynamics analyses (trajectories, lens, early exit, ablation).

Layers are unrolled-network positions, 0-based here (``layer = step * blocks + block``): the
recurrent step of a bViT, the block of a ViT. Tables convert to 1-based ``step``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..model import BViT


def readout(model: BViT, cls: torch.Tensor) -> torch.Tensor:
    """Logits of the model's final norm + head applied to CLS states (..., D) -> (..., C)."""
    lead = cls.shape[:-1]
    flat = cls.reshape(-1, 1, cls.shape[-1])
    return model.forward_head(model.norm(flat)).reshape(*lead, -1)


def cls_states(model: BViT, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """CLS state after every unrolled layer, from one forward pass: (layers, B, D).

    The state after layer l is what layer l+1 receives: ``resid_post`` plus, after a step's
    last block, the time embedding (``resid_post`` alone would miss it), so the readout of the
    last layer equals ``model(x, steps=...)``. Layers run through ``model.layer``, so patches
    registered on the model apply.
    """
    h = model.embed(x)
    out = []
    for index in range(model.num_layers(steps)):
        h = model.layer(h, index)
        out.append(h[:, 0])
    return torch.stack(out)


def run_layers(model: BViT, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Apply unrolled layers ``start .. stop-1`` to the residual stream ``x`` (resume a forward)."""
    for index in range(start, stop):
        x = model.layer(x, index)
    return x


def finish(model: BViT, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Logits after resuming from the residual state before layer ``start`` up to ``stop`` (default: the horizon)."""
    x = run_layers(model, x, start, model.num_layers() if stop is None else stop)
    return model.forward_head(model.norm(x))


def batches(loader: DataLoader, device: torch.device | str, desc: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) on ``device`` from a loader of (image, label, ...) batches; ``desc`` shows a progress bar."""
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if desc is not None and hasattr(dataset, "__len__") else None
    with tqdm(total=total, desc=desc, unit="img", disable=desc is None) as bar:
        for batch in loader:
            yield batch[0].to(device), batch[1].to(device)
            bar.update(len(batch[0]))


@torch.no_grad()
def collect_cls_states(
    model: BViT,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    steps: int | None = None,
    layers: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS states (layers, N, D) float32 on CPU, labels (N,)) over a loader, one pass per batch.

    ``layers`` (0-based) keeps only those layers, so memory is N x len(layers) x D.
    """
    model.eval().to(device)
    states, labels = [], []
    for x, y in batches(loader, device, desc=f"CLS states {model.config.name}"):
        s = cls_states(model, x, steps)
        if layers is not None:
            s = s[list(layers)]
        states.append(s.float().cpu())
        labels.append(y.cpu())
    if not states:
        raise ValueError("the data loader yielded no images")
    return torch.cat(states, dim=1), torch.cat(labels)
