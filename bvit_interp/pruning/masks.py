"""Per-step pruning masks as plain data: ``StepMasks`` (layer name -> bool [T, out, in]), saved bit-packed.

Why plain data (as in open_lth): masks are results to analyse, diff and reload without the
model; the model only reads them. A file is an ``.npz`` holding one ``np.packbits`` array
per layer plus a JSON header (format, version, round, step count, shapes, metadata).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write

MASKS_FORMAT = "bvit-interp-step-masks"
MASKS_VERSION = 1
# Layer type -> module path inside a timm ``Block``.
LAYER_PATHS: dict[str, str] = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
LAYER_TYPES: tuple[str, ...] = tuple(LAYER_PATHS)
_HEADER = "__header__"


def layer_type(name: str) -> str:
    """``blocks.0.attn.qkv`` -> ``qkv``: the layer type of a maskable layer name."""
    for kind, path in LAYER_PATHS.items():
        if name.endswith("." + path):
            return kind
    raise KeyError(f"{name!r} is not a maskable layer (expected blocks.<b>.{{{', '.join(LAYER_PATHS.values())}}})")


def check_layer_types(types: Iterable[str]) -> tuple[str, ...]:
    """Validate a selection of layer types, keeping the canonical order."""
    chosen = set(types)
    unknown = sorted(chosen - set(LAYER_TYPES))
    if unknown or not chosen:
        raise ValueError(f"layer types {sorted(chosen)}: choose a non-empty subset of {list(LAYER_TYPES)}")
    return tuple(t for t in LAYER_TYPES if t in chosen)


def maskable_layers(model: nn.Module, types: Iterable[str] = LAYER_TYPES) -> dict[str, nn.Module]:
    """The shared blocks' linear layers of the chosen types, by module name (``blocks.{b}.attn.qkv``)."""
    chosen = check_layer_types(types)
    blocks = model.get_submodule("blocks")
    return {
        f"blocks.{b}.{LAYER_PATHS[kind]}": block.get_submodule(LAYER_PATHS[kind])
        for b, block in enumerate(blocks)
        for kind in chosen
    }


@dataclass
class StepMasks:
    """One boolean mask per recurrent step for each masked layer; ``round`` = pruning rounds applied."""

    masks: dict[str, torch.Tensor]
    round: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.masks:
            raise ValueError("StepMasks needs at least one layer")
        steps = {m.shape[0] for m in self.masks.values()}
        if len(steps) != 1 or any(m.dim() != 3 for m in self.masks.values()):
            shapes = {k: tuple(v.shape) for k, v in self.masks.items()}
            raise ValueError(f"every mask must be [steps, out, in] with the same steps; got {shapes}")
        self.masks = {k: v.to(torch.bool) for k, v in self.masks.items()}
        for name in self.masks:
            layer_type(name)

    @classmethod
    def ones(cls, model: nn.Module, steps: int, types: Iterable[str] = LAYER_TYPES) -> StepMasks:
        """All-ones (dense) masks for the chosen layer types of ``model``'s blocks."""
        layers = maskable_layers(model, types)
        return cls({k: torch.ones(steps, *m.weight.shape, dtype=torch.bool) for k, m in layers.items()})

    @property
    def steps(self) -> int:
        return next(iter(self.masks.values())).shape[0]

    @property
    def layer_types(self) -> tuple[str, ...]:
        present = {layer_type(k) for k in self.masks}
        return tuple(t for t in LAYER_TYPES if t in present)

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.masks[name]

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.masks.items()

    def clone(self, round: int | None = None) -> StepMasks:
        return StepMasks({k: v.clone() for k, v in self.masks.items()}, self.round if round is None else round, dict(self.meta))

    def cpu(self) -> StepMasks:
        return StepMasks({k: v.cpu() for k, v in self.masks.items()}, self.round, dict(self.meta))

    def random_like(self, generator: torch.Generator) -> StepMasks:
        """Uniformly random masks with the same number of active entries per layer and step (the control)."""
        out = {}
        for name, mask in self.masks.items():
            flat = torch.zeros(mask.shape[0], mask[0].numel(), dtype=torch.bool)
            for t, active in enumerate(mask.reshape(mask.shape[0], -1).sum(1).tolist()):
                flat[t, torch.randperm(flat.shape[1], generator=generator)[:active]] = True
            out[name] = flat.reshape(mask.shape)
        return StepMasks(out, self.round, {"random_control": True})

    def numel(self) -> int:
        """Mask entries over all layers and steps."""
        return sum(m.numel() for m in self.masks.values())

    def sparsity(self) -> float:
        """Mask-level sparsity: the share of zeros over all layers and steps."""
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / self.numel()

    def equal(self, other: StepMasks) -> bool:
        return self.masks.keys() == other.masks.keys() and all(torch.equal(v, other.masks[k].to(v.device)) for k, v in self.masks.items())

    def is_subset_of(self, other: StepMasks) -> bool:
        """True when every active entry here is active in ``other`` (masks nested round to round)."""
        return all(not bool((v & ~other.masks[k].to(v.device)).any()) for k, v in self.masks.items())

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the masks bit-packed into ``path`` (an .npz), atomically."""
        path = Path(path)
        header = {
            "format": MASKS_FORMAT,
            "version": MASKS_VERSION,
            "round": int(self.round),
            "steps": self.steps,
            "shapes": {k: list(v.shape) for k, v in self.masks.items()},
            "meta": self.meta,
        }
        arrays = {k: np.packbits(v.cpu().numpy().reshape(-1)) for k, v in self.masks.items()}
        arrays[_HEADER] = np.array(json.dumps(header))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StepMasks:
        """Read masks written by ``save``; ValueError names the file when it is not a masks file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"masks file {path} not found")
        with np.load(path, allow_pickle=False) as data:
            if _HEADER not in data.files:
                raise ValueError(f"{path} is not a bvit-interp step-masks file (no header)")
            header = json.loads(str(data[_HEADER]))
            if header.get("format") != MASKS_FORMAT or header.get("version", 0) > MASKS_VERSION:
                raise ValueError(f"{path}: unsupported masks format {header.get('format')!r} v{header.get('version')}")
            masks = {}
            for name, shape in header["shapes"].items():
                n = int(np.prod(shape))
                bits = np.unpackbits(data[name], count=n).astype(bool)
                masks[name] = torch.from_numpy(bits.reshape(shape))
        return cls(masks, int(header["round"]), header.get("meta", {}))
