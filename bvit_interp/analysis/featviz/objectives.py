"""Objectives: an FFN hidden unit (``mlp.post``) at one step, total variation, diversity.

A target is a (neuron, step) pair, ``step`` 1-based as in every table (the position in the
unrolled network: the recurrent step of a bViT, the block of a ViT; hook names stay 0-based).
Its statistic is the post-GELU activation of the neuron averaged over the patch tokens
(Ghiasi et al. 2022; CLS and registers excluded) or taken at one patch token.

The forward that reads targets (``target_activations``) gives every batch element its own
target: it runs the unrolled layers one by one (``model.layer``), stops inside the last block
application it needs (mlp.post at step t lies inside application t, so that block runs up to
its FFN hidden layer) and drops the elements whose layer is done before the next layer, so
nobody pays for layers they do not need (also between the blocks of a ViT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ...model import BViT
from ...model.hooks import site_name

SITE = "mlp.post"
# Ghiasi et al.'s total variation is normalised to 224 px images.
TV_REFERENCE_SIZE = 224


@dataclass(frozen=True)
class Target:
    """FFN hidden unit ``neuron`` at 1-based ``step``; ``patch`` None = mean over patch tokens."""

    neuron: int
    step: int
    patch: int | None = None

    @property
    def layer(self) -> int:
        """0-based position in the unrolled network."""
        return self.step - 1

    @property
    def statistic(self) -> str:
        """The dataset statistic comparable to this objective: mean over patches, or max over patches."""
        return "mean" if self.patch is None else "max"

    def seed(self, base: int) -> int:
        """A seed that depends only on (base, neuron, step, patch), never on batching."""
        words = [base, self.neuron, self.step, -1 if self.patch is None else self.patch]
        return int(np.random.SeedSequence([w & 0xFFFFFFFF for w in words]).generate_state(1, np.uint64)[0] >> 1)

    def check(self, model: BViT) -> None:
        """ValueError naming the bad field when the target does not exist in ``model``."""
        hidden = model.blocks[0].mlp.fc1.out_features
        if not 0 <= self.neuron < hidden:
            raise ValueError(f"neuron {self.neuron} out of range: the FFN has {hidden} hidden units")
        if not 1 <= self.step <= model.num_layers():
            raise ValueError(f"step {self.step} out of range 1..{model.num_layers()}")
        if self.patch is not None and not 0 <= self.patch < model.config.num_patches:
            raise ValueError(f"patch {self.patch} out of range 0..{model.config.num_patches - 1}")


class _Stop(Exception):
    """Raised by a hook once every needed activation is read, to skip the rest of the forward."""


def layer_name(model: BViT, layer: int, site: str = SITE) -> str:
    """Hook name of ``site`` at unrolled ``layer`` (``steps.{t}.<site>`` or with ``blocks.{b}``)."""
    blocks = model.num_blocks
    return site_name(site, layer // blocks, layer % blocks, blocks)


def neuron_statistic(post: torch.Tensor, neurons: torch.Tensor, patches: torch.Tensor, npt: int) -> torch.Tensor:
    """Per row of ``post`` (R, N, F): its neuron averaged over patch tokens, or at its patch (>= 0)."""
    rows = torch.arange(post.shape[0], device=post.device)
    per_token = post[rows, :, neurons]  # (R, N)
    mean = per_token[:, npt:].mean(dim=1)
    at_patch = per_token[rows, npt + patches.clamp(min=0)]
    return torch.where(patches >= 0, at_patch, mean)


def run_layers(
    model: BViT, x: torch.Tensor, reduce: Callable[[torch.Tensor], object], layers: Iterable[int] | None = None
) -> dict[int, object]:
    """``reduce(mlp.post)`` at each unrolled layer (all by default); the forward stops after the last."""
    wanted = sorted(set(range(model.num_layers()) if layers is None else layers))
    out: dict[int, object] = {}

    def hook_for(layer: int) -> Callable[[torch.Tensor, str], None]:
        def hook(tensor: torch.Tensor, _name: str) -> None:
            out[layer] = reduce(tensor)
            if layer == wanted[-1]:
                raise _Stop

        return hook

    with model.hooked([(layer_name(model, layer), hook_for(layer)) for layer in wanted]):
        try:
            model.forward_features(x, steps=wanted[-1] // model.num_blocks + 1)
        except _Stop:
            pass
    return out


def target_activations(
    model: BViT,
    x: torch.Tensor,
    layers: torch.Tensor,
    neurons: torch.Tensor,
    patches: torch.Tensor,
    early_stop: bool = True,
    keep_hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each element's own target statistic (E,), and its patch-token mlp.post (E, P, F) if ``keep_hidden``.

    ``x`` (E, 3, H, W) is the normalised model input; ``layers``, ``neurons``, ``patches`` (E,)
    long tensors (patch -1 = mean over patches). With ``early_stop`` the forward stops at the
    largest layer and drops finished elements after each layer; without it every element runs
    all layers (same values, for benchmarks and checks). Keeps the autograd graph.
    """
    npt = model.num_prefix_tokens
    counts = torch.bincount(layers.cpu(), minlength=model.num_layers()).tolist()  # the one host sync
    starts = [sum(counts[:layer]) for layer in range(len(counts))]
    last = max(layer for layer, c in enumerate(counts) if c)
    n_layers = last + 1 if early_stop else model.num_layers()
    # Sorted by layer, the elements of layer l are one slice and the unfinished ones a suffix,
    # so reading and dropping are slices (no per-layer nonzero / device sync).
    perm = torch.argsort(layers, stable=True)
    neurons, patches = neurons[perm], patches[perm]
    dropped = 0  # sorted rows already removed from h
    values: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []

    def hook_for(layer: int) -> Callable[[torch.Tensor, str], None]:
        def hook(tensor: torch.Tensor, _name: str) -> None:
            lo, hi = starts[layer], starts[layer] + counts[layer]
            rows = tensor[lo - dropped : hi - dropped]
            values.append(neuron_statistic(rows, neurons[lo:hi], patches[lo:hi], npt))
            if keep_hidden:
                hidden.append(rows[:, npt:])
            if early_stop and layer == last:
                raise _Stop

        return hook

    h = model.embed(x[perm])
    for layer in range(n_layers):
        hooks = [(layer_name(model, layer), hook_for(layer))] if counts[layer] else []
        try:
            with model.hooked(hooks):
                h = model.layer(h, layer)
        except _Stop:
            break
        if early_stop and counts[layer]:
            h = h[counts[layer]:]
            dropped += counts[layer]
    unsort = torch.argsort(perm)
    return torch.cat(values)[unsort], (torch.cat(hidden)[unsort] if keep_hidden else None)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Ghiasi et al.'s TV per image (B,): L2 norms of 4 neighbour differences, mean over channels."""
    diffs = (
        images[..., :, 1:] - images[..., :, :-1],
        images[..., 1:, :] - images[..., :-1, :],
        images[..., 1:, 1:] - images[..., :-1, :-1],
        images[..., 1:, :-1] - images[..., :-1, 1:],
    )
    tv = sum(torch.linalg.vector_norm(d, dim=(-2, -1)).mean(dim=-1) for d in diffs)
    return tv * images.shape[-2] * images.shape[-1] / TV_REFERENCE_SIZE**2  # type: ignore[return-value]


def diversity(hidden: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity of the token Gram matrices within groups (..., G, P, F) -> (...,).

    Lucent's diversity term for tokens: <A_i^T A_i, A_j^T A_j> = ||A_i A_j^T||^2, so the F x F
    Gram matrices are never formed. Groups of one image give 0.
    """
    g = hidden.shape[-3]
    if g < 2:
        return hidden.new_zeros(hidden.shape[:-3])
    cross = torch.einsum("...ipf,...jqf->...ijpq", hidden, hidden).pow(2).sum(dim=(-2, -1))  # (..., G, G)
    norms = cross.diagonal(dim1=-2, dim2=-1).sqrt()
    cos = cross / (norms[..., :, None] * norms[..., None, :]).clamp_min(1e-12)
    off = ~torch.eye(g, dtype=torch.bool, device=hidden.device)
    return cos[..., off].mean(dim=-1)
