"""Objectives: an FFN hidden unit (``mlp.post``) at one step, total variation, diversity, composable objectives.

A target is a (neuron, step) pair, ``step`` 1-based as in every table (the position in the
unrolled network: the recurrent step of a bViT, the block of a ViT; hook names stay 0-based).
Its statistic is the post-GELU activation of the neuron averaged over the patch tokens
(Ghiasi et al. 2022; CLS and registers excluded) or taken at one patch token.

The forward that reads targets (``target_activations``) gives every batch element its own
target: it runs the unrolled layers one by one (``model.layer``), stops inside the last block
application it needs (mlp.post at step t lies inside application t, so that block runs up to
its FFN hidden layer) and drops the elements whose layer is done before the next layer, so
nobody pays for layers they do not need (also between the blocks of a ViT).

Composable objectives (lucent's ``objectives`` as the anchor): ``Objective`` objects map
activations to a per-image loss and support ``+``, ``-``, scalar ``*`` and ``/``, negation and
``Objective.sum``; ``neuron``, ``channel``, ``head`` (a head's ``attn.z``), ``direction`` (a
residual direction) and ``logit`` build them, ``collect_activations`` / ``evaluate`` run the
forward they need. ``optimize.visualize_objective`` optimises any of them; a plain neuron
objective goes through the batched (neuron, step) path above, the fast common case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...model import BViT
from ...model.hooks import BLOCK_SITES, TokenSelector, layer_position, resolve_tokens

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

    with model.hooked([(model.hook_name(SITE, layer), hook_for(layer)) for layer in wanted]):
        try:
            model.forward_features(x, steps=layer_position(wanted[-1], model.num_blocks)[0] + 1)
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
        hooks = [(model.hook_name(SITE, layer), hook_for(layer))] if counts[layer] else []
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


# ---------------------------------------------------------------------- composable objectives
LOGITS = "logits"  # the key of the class logits among an objective's activations
Need = tuple[str, int | None]  # (site, 0-based unrolled layer), or (LOGITS, None)


class Objective:
    """A per-image loss of activations (lucent's convention: minimised, so a unit's objective is minus its value).

    ``objective(acts)`` maps activations indexable as ``acts[site, layer]`` (an ``ActivationCache``
    or ``collect_activations``' dict; ``acts["logits"]`` for logit objectives) to a (B,) loss.
    Objectives compose: ``a + b``, ``a - b``, ``2 * a``, ``a / 2``, ``-a``, ``Objective.sum(objs)``;
    ``needs`` lists the (site, layer) pairs the forward must record.
    """

    def __init__(self, fn: Callable[[Any], torch.Tensor], needs: Iterable[Need], name: str,
                 target: Target | None = None) -> None:
        self.fn = fn
        self.needs = frozenset(needs)
        self.name = name
        self.target = target  # set on a plain neuron objective: it can take the batched path

    def __call__(self, acts: Any) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(lambda a: self(a) + other(a), self.needs | other.needs, f"{self.name} + {other.name}")
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) + other, self.needs, f"{self.name} + {other}")
        return NotImplemented

    def __radd__(self, other: float) -> Objective:
        if isinstance(other, (int, float)) and other == 0:  # sum() starts from 0
            return self
        return self.__add__(other)

    def __neg__(self) -> Objective:
        return Objective(lambda a: -self(a), self.needs, f"-({self.name})")

    def __sub__(self, other: Objective | float) -> Objective:
        if not isinstance(other, (Objective, int, float)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: float) -> Objective:
        return (-self).__add__(other)

    def __mul__(self, scale: float) -> Objective:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        return Objective(lambda a: scale * self(a), self.needs, f"{scale} * ({self.name})")

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> Objective:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        return self * (1.0 / scale)

    @staticmethod
    def sum(objectives: Iterable[Objective]) -> Objective:
        """The sum of several objectives (lucent's ``Objective.sum``)."""
        objs = list(objectives)
        if not objs:
            raise ValueError("Objective.sum needs at least one objective")
        needs = frozenset().union(*(o.needs for o in objs))
        return Objective(lambda a: sum(o(a) for o in objs), needs, " + ".join(o.name for o in objs))  # type: ignore[misc]

    def check(self, model: BViT) -> None:
        """ValueError when a needed (site, layer) does not exist in ``model``."""
        for site, layer in self.needs:
            if site == LOGITS:
                continue
            if layer is None or not 0 <= layer < model.num_layers():
                raise ValueError(f"{self.name}: step {None if layer is None else layer + 1} out of range "
                                 f"1..{model.num_layers()}")


def _layer(step: int) -> int:
    if step < 1:
        raise ValueError(f"step is 1-based, got {step}")
    return step - 1


def _token_mean(values: torch.Tensor, tokens: TokenSelector, npt: int, dim: int) -> torch.Tensor:
    """Mean of ``values`` over the selected tokens along ``dim`` (an int token keeps no axis)."""
    tok = resolve_tokens(tokens, npt)
    if tok is None:
        return values.mean(dim=dim)
    index: list[object] = [slice(None)] * values.dim()
    index[dim] = tok
    picked = values[tuple(index)]
    return picked if isinstance(tok, int) else picked.mean(dim=dim)


def neuron(model: BViT, unit: int, step: int, patch: int | None = None) -> Objective:
    """FFN hidden unit ``unit`` (``mlp.post``) at 1-based ``step``: mean over patch tokens, or at ``patch``."""
    target = Target(unit, step, patch)
    target.check(model)
    npt, layer = model.num_prefix_tokens, target.layer

    def fn(acts: Any) -> torch.Tensor:
        post = acts[SITE, layer]
        rows = post.shape[0]
        units = torch.full((rows,), unit, device=post.device)
        patches = torch.full((rows,), -1 if patch is None else patch, device=post.device)
        return -neuron_statistic(post, units, patches, npt)

    return Objective(fn, [(SITE, layer)], f"neuron {unit} step {step}" + ("" if patch is None else f" patch {patch}"),
                     target=target)


def channel(model: BViT, site: str, unit: int, step: int, tokens: TokenSelector = "patches") -> Objective:
    """Unit ``unit`` of the feature axis of a (B, N, D|F) site at ``step``, averaged over ``tokens``."""
    if site not in BLOCK_SITES or BLOCK_SITES[site][0] not in ("B N D", "B N F"):
        raise ValueError(f"channel objectives take a (B, N, D) or (B, N, F) site, got {site!r}")
    layer, npt = _layer(step), model.num_prefix_tokens

    def fn(acts: Any) -> torch.Tensor:
        return -_token_mean(acts[site, layer][..., unit], tokens, npt, dim=1)

    return Objective(fn, [(site, layer)], f"{site}[{unit}] step {step}")


def head(model: BViT, index: int, step: int, tokens: TokenSelector = "patches") -> Objective:
    """Head ``index``'s output (``attn.z``) at ``step``: its L2 norm averaged over ``tokens`` (0 or "cls": CLS)."""
    if not 0 <= index < model.config.num_heads:
        raise ValueError(f"head {index} out of range 0..{model.config.num_heads - 1}")
    layer, npt = _layer(step), model.num_prefix_tokens

    def fn(acts: Any) -> torch.Tensor:
        z = acts["attn.z", layer][:, index]  # (B, N, Dh)
        return -_token_mean(torch.linalg.vector_norm(z, dim=-1), tokens, npt, dim=1)

    return Objective(fn, [("attn.z", layer)], f"head {index} step {step}")


def direction(
    model: BViT, vector: torch.Tensor, step: int, site: str = "resid_post", tokens: TokenSelector = "cls"
) -> Objective:
    """Projection ``act . vector`` of a (B, N, D) site at ``step`` (default: CLS of ``resid_post``), mean over tokens."""
    if site not in BLOCK_SITES or BLOCK_SITES[site][0] != "B N D":
        raise ValueError(f"direction objectives take a residual-width (B, N, D) site, got {site!r}")
    if vector.shape != (model.config.embed_dim,):
        raise ValueError(f"direction must have shape ({model.config.embed_dim},), got {tuple(vector.shape)}")
    layer, npt = _layer(step), model.num_prefix_tokens

    def fn(acts: Any) -> torch.Tensor:
        act = acts[site, layer]
        return -_token_mean(act @ vector.to(act.device, act.dtype), tokens, npt, dim=1)

    return Objective(fn, [(site, layer)], f"{site} direction step {step}")


def logit(model: BViT, label: int) -> Objective:
    """The class logit ``label`` of the model's output (its trained horizon)."""
    if not 0 <= label < model.config.num_classes:
        raise ValueError(f"class {label} out of range 0..{model.config.num_classes - 1}")
    return Objective(lambda acts: -acts[LOGITS][:, label], [(LOGITS, None)], f"logit {label}")


def collect_activations(model: BViT, x: torch.Tensor, needs: Iterable[Need]) -> dict[Any, torch.Tensor]:
    """The activations ``needs`` lists, keyed (site, layer) (and "logits"), with the autograd graph.

    Without a logit the forward stops as soon as the last needed activation is recorded.
    """
    needs = set(needs)
    names = {model.hook_name(site, layer): (site, layer) for site, layer in needs if site != LOGITS}
    acts: dict[Any, torch.Tensor] = {}
    stop = (LOGITS, None) not in needs
    if stop and not names:
        raise ValueError("the objective needs no activation")

    def record(tensor: torch.Tensor, name: str) -> None:
        acts[names[name]] = tensor
        if stop and len(acts) == len(names):
            raise _Stop

    with model.hooked([(name, record) for name in names]):
        try:
            if stop:
                last = max(layer for _, layer in names.values())  # type: ignore[type-var]
                model.forward_features(x, steps=layer_position(last, model.num_blocks)[0] + 1)  # type: ignore[arg-type]
            else:
                acts[LOGITS] = model(x)
        except _Stop:
            pass
    return acts


def evaluate(model: BViT, x: torch.Tensor, objective: Objective) -> torch.Tensor:
    """The objective's per-image loss (B,) on model inputs ``x`` (normalised images)."""
    return objective(collect_activations(model, x, objective.needs))
