"""Step-masked linear layers on a BViT's shared block, installed without editing the model.

``attach_masks`` swaps each chosen ``nn.Linear`` of ``model.blocks`` for a
``StepMaskedLinear`` that shares the same weight and bias ``Parameter`` objects (state-dict
keys unchanged, masks are non-persistent buffers) and computes ``x @ (W * M_t).T + b``. The
current step ``t`` comes from the model's own hook API: a hook on ``resid_pre`` reads ``t``
from the hook name ``steps.{t}.resid_pre`` at the start of every step, and a hook on
``final`` clears it, so a forward that bypasses the hooks fails loudly instead of silently
using a stale mask. Steps beyond the trained horizon reuse the last mask (as the time
embedding does).

Grafts (App. G.3): ``make_graft`` copies the blocks with one step's mask fixed, and
``grafted`` routes step ``t`` through the copy (the main block's output at that step is
replaced by the graft's output on the same input).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..model.bvit import BViT
from ..model.hooks import make_key, parse_name
from ..model.io import register_checkpoint_extension
from .masks import StepMasks, maskable_layers

_STATE_ATTR = "_step_masks"


class StepMaskedLinear(nn.Module):
    """A linear layer with one boolean weight mask per step: effective weight at step t is ``W * M_t``."""

    def __init__(self, linear: nn.Linear, masks: torch.Tensor, step: int | None = None) -> None:
        super().__init__()
        if masks.shape[1:] != linear.weight.shape:
            raise ValueError(f"mask shape {tuple(masks.shape[1:])} does not fit weight {tuple(linear.weight.shape)}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        masks = masks.detach().to(device=linear.weight.device, dtype=torch.bool, copy=True)
        self.register_buffer("masks", masks, persistent=False)
        self.step = step

    def mask_at(self, step: int) -> torch.Tensor:
        """The mask used at ``step`` (the last one beyond the trained horizon)."""
        return self.masks[min(step, self.masks.shape[0] - 1)]

    def effective_weight(self, step: int) -> torch.Tensor:
        return self.weight * self.mask_at(step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step is None:
            raise RuntimeError("StepMaskedLinear called outside a recurrent step (no step set); run the whole model")
        return F.linear(x, self.effective_weight(self.step), self.bias)

    @torch.no_grad()
    def zero_unused(self) -> None:
        """Set weights that no step uses to exactly zero (keeps them out of optimizer drift)."""
        self.weight.mul_(self.masks.any(dim=0))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, steps={self.masks.shape[0]}"


class _StepSwitch:
    """Hook that sets (or clears) the step of the masked layers; a class so deepcopy remaps its layers."""

    def __init__(self, layers: list[StepMaskedLinear], clear: bool = False) -> None:
        self.layers = layers
        self.clear = clear

    def __call__(self, tensor: torch.Tensor, name: str) -> None:
        step = None if self.clear else parse_name(name)[1]
        for layer in self.layers:
            layer.step = step


@dataclass
class _Attached:
    """What ``attach_masks`` changed on a model, so ``detach_masks`` can undo it."""

    layers: dict[str, StepMaskedLinear]
    originals: dict[str, nn.Linear]
    handles: list[int]
    round: int


def masked_layers(model: BViT) -> dict[str, StepMaskedLinear]:
    """The attached step-masked layers by name (empty when no masks are attached)."""
    state = getattr(model, _STATE_ATTR, None)
    return dict(state.layers) if state is not None else {}


def attach_masks(model: BViT, masks: StepMasks) -> None:
    """Install ``masks`` on ``model`` (replacing masks already attached); the model stays usable as before."""
    if masks.steps != model.config.steps:
        raise ValueError(f"masks have {masks.steps} steps but model {model.config.name!r} runs {model.config.steps}")
    if getattr(model, _STATE_ATTR, None) is not None:
        detach_masks(model)
    originals = dict(maskable_layers(model))
    unknown = sorted(set(masks.masks) - set(originals))
    if unknown:
        raise ValueError(f"masks name layers the model does not have: {unknown}")
    layers = {}
    for name, mask in masks.items():
        layers[name] = StepMaskedLinear(originals[name], mask)
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, layers[name])
    switch = list(layers.values())
    handles = [
        model.hooks.add(make_key("resid_pre"), _StepSwitch(switch)),
        model.hooks.add(make_key("final"), _StepSwitch(switch, clear=True)),
    ]
    setattr(model, _STATE_ATTR, _Attached(layers, {k: originals[k] for k in layers}, handles, masks.round))


def detach_masks(model: BViT) -> StepMasks | None:
    """Restore plain ``nn.Linear`` layers (same, possibly trained, parameters); returns the masks removed."""
    state: _Attached | None = getattr(model, _STATE_ATTR, None)
    if state is None:
        return None
    masks = attached_masks(model)
    for name, original in state.originals.items():
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, original)
    model.hooks.remove(state.handles)
    delattr(model, _STATE_ATTR)
    return masks


def attached_masks(model: BViT) -> StepMasks | None:
    """A copy of the masks attached to ``model`` (None when none are)."""
    state: _Attached | None = getattr(model, _STATE_ATTR, None)
    if state is None:
        return None
    return StepMasks({k: v.masks.detach().cpu().clone() for k, v in state.layers.items()}, state.round)


@torch.no_grad()
def set_masks(model: BViT, masks: StepMasks) -> None:
    """Replace the attached masks' values in place (same layers), e.g. after a pruning round."""
    state: _Attached | None = getattr(model, _STATE_ATTR, None)
    if state is None or set(state.layers) != set(masks.masks):
        raise ValueError("set_masks needs masks attached to the same layers; use attach_masks first")
    for name, layer in state.layers.items():
        layer.masks.copy_(masks[name])
    state.round = masks.round


def zero_unused_weights(model: nn.Module) -> None:
    """Zero every masked weight that no step uses (call after each optimizer step)."""
    for module in model.modules():
        if isinstance(module, StepMaskedLinear):
            module.zero_unused()


@contextlib.contextmanager
def step_masked(model: BViT, masks: StepMasks) -> Iterator[BViT]:
    """``with step_masked(model, masks):`` run the model with per-step masks; plain layers restored after."""
    previous = attached_masks(model)
    attach_masks(model, masks)
    try:
        yield model
    finally:
        detach_masks(model)
        if previous is not None:
            attach_masks(model, previous)


# ---------------------------------------------------------------------- grafts
def make_graft(model: BViT, step: int) -> nn.ModuleList:
    """A trainable copy of ``model.blocks`` whose masked layers always use step ``step``'s mask."""
    if not masked_layers(model):
        raise ValueError("make_graft needs masks attached to the model")
    graft = copy.deepcopy(model.blocks)
    for module in graft.modules():
        if isinstance(module, StepMaskedLinear):
            module.masks = module.mask_at(step)[None].clone()
            module.step = 0
            module.zero_unused()
    return graft.requires_grad_(True)


@contextlib.contextmanager
def grafted(model: BViT, graft: nn.ModuleList, step: int) -> Iterator[None]:
    """Run recurrent step ``step`` through ``graft`` instead of the model's blocks (App. G.3 graft training).

    The main blocks still run at that step (their output is discarded); with the main model
    frozen that costs one block forward and no backward.
    """
    inputs: list[torch.Tensor] = []

    def grab(x: torch.Tensor, _name: str) -> None:
        inputs.append(x)

    def replace(_x: torch.Tensor, _name: str) -> torch.Tensor:
        h = inputs.pop()
        for block in graft:
            h = block(h)
        return h

    handles = [
        model.hooks.add(make_key("resid_pre", steps=[step], blocks=[0]), grab),
        model.hooks.add(make_key("resid_post", steps=[step], blocks=[model.num_blocks - 1]), replace),
    ]
    try:
        yield
    finally:
        model.hooks.remove(handles)


# ---------------------------------------------------------------------- checkpoints
def masks_path(weights: str | os.PathLike[str]) -> Path:
    """``models/name.safetensors`` -> ``models/name.masks.npz``."""
    p = Path(weights)
    return p.with_name(p.name.removesuffix(".safetensors") + ".masks.npz")


def save_attached_masks(model: BViT, weights: str | os.PathLike[str], weights_sha256: str) -> None:
    """Write the attached masks beside ``weights``; remove a stale masks file when none are attached."""
    path = masks_path(weights)
    masks = attached_masks(model)
    if masks is None:
        path.unlink(missing_ok=True)
        return
    masks.meta["weights_sha256"] = weights_sha256
    masks.save(path)


def load_attached_masks(model: BViT, weights: str | os.PathLike[str]) -> None:
    """Attach ``<name>.masks.npz`` when it lies beside ``weights`` and belongs to them."""
    path = masks_path(weights)
    if not path.exists():
        return
    masks = StepMasks.load(path)
    expected = masks.meta.get("weights_sha256")
    if expected and model.checkpoint_sha256 and expected != model.checkpoint_sha256:
        raise ValueError(f"{path} was saved with other weights than {weights}; remove it or save the model again")
    attach_masks(model, masks)


register_checkpoint_extension(save_attached_masks, load_attached_masks)
