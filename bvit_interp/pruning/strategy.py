"""Pruning strategy, separate from the model (as in open_lth): magnitude pruning of one step's mask.

``prune_step_masks`` takes the weights a graft learned for step t and that step's current
masks, and returns new masks with the smallest-magnitude ``rate`` of the active entries
removed, per layer or with one threshold over all layers of the step. Exactly
``floor(rate * active + 0.5)`` entries go (ties broken by position), so mask-level sparsity
after r rounds is ``1 - (1 - rate)^r`` up to rounding.
"""

from __future__ import annotations

import torch

SCOPES = ("layer", "global")


def _n_prune(active: int, rate: float) -> int:
    return int(rate * active + 0.5)


def _smallest(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest values, ties by position (stable)."""
    return torch.sort(magnitudes, stable=True).indices[:k]


@torch.no_grad()
def prune_step_masks(
    weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], rate: float, scope: str = "layer"
) -> dict[str, torch.Tensor]:
    """New boolean masks (one step) with the smallest-|w| ``rate`` of active weights pruned."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"pruning rate must be in [0, 1), got {rate}")
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be one of {SCOPES}, got {scope!r}")
    new = {k: m.clone().bool() for k, m in masks.items()}
    if scope == "layer":
        for name, mask in new.items():
            flat = mask.view(-1)
            active = flat.nonzero().squeeze(1)
            mags = weights[name].detach().abs().reshape(-1).to(flat.device)[active]
            flat[active[_smallest(mags, _n_prune(active.numel(), rate))]] = False
        return new
    names = list(new)
    actives = [new[n].view(-1).nonzero().squeeze(1) for n in names]
    mags = torch.cat([weights[n].detach().abs().reshape(-1).float().cpu()[a.cpu()] for n, a in zip(names, actives, strict=True)])
    owner = torch.cat([torch.full((a.numel(),), i) for i, a in enumerate(actives)])
    offset = torch.cat([torch.arange(a.numel()) for a in actives])
    chosen = _smallest(mags, _n_prune(mags.numel(), rate))
    for i, name in enumerate(names):
        pick = offset[chosen[owner[chosen] == i]]
        new[name].view(-1)[actives[i][pick.to(actives[i].device)]] = False
    return new
