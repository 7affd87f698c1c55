"""Transfer targets and source models: a ``--data`` spec opened for training and evaluation, imported checkpoints.

A target is any dataset spec of ``data.datasets.build_datasets`` with a train split: the embedded
procedural target ``shapes-b`` (the default, no download), ``cifar10:ROOT`` / ``cifar100:ROOT``
local copies, or an ImageFolder root with ``train/`` and ``val/``. Both splits use the model's
evaluation transform (App. H names no augmentation); small subsets are decoded once into tensors.
A source model is a bundled name, one of our checkpoints, or ``timm:PATH`` / ``torchvision:PATH``
(a ViT state dict imported with ``model.convert``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from ..data.datasets import SHAPES_SPECS, build_datasets
from ..data.loaders import materialize, subset_indices
from ..data.spec import describe
from ..data.transforms import eval_transform
from ..defaults import model_label, resolve_model
from ..model import BViT, BViTConfig
from ..model.io import sha256_file

DEFAULT_TARGET = "shapes-b"  # the embedded target: six shape classes the bundled models never saw
IMPORT_PREFIXES = ("timm:", "torchvision:")
HEAD_DIM = 64  # an imported ViT's heads default to embed_dim / 64 (ViT-Ti/S/B/L all use 64-wide heads)


def target_name(spec: str) -> str:
    """Short name of a target for tables and file names: ``shapes-b``, ``cifar10``, an ImageFolder root's name."""
    if spec in SHAPES_SPECS:
        return spec
    if spec.startswith(("cifar10:", "cifar100:")):
        return spec.split(":", 1)[0]
    name = Path(spec).expanduser().resolve().name or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def describe_target(spec: str, val_dataset: Any = None) -> dict[str, Any]:
    """``meta["data"]`` entry of one target (``data.spec.describe``; the procedural sets with their class set)."""
    if spec in SHAPES_SPECS:
        data = describe("shapes", "val", getattr(val_dataset, "config", None))  # the config rendered
        data["spec"] = spec
        data["display"] = data["display"].replace("shapes:", f"{spec}:", 1)
        return data
    return describe(spec)


@dataclass
class TransferTarget:
    """One opened target: its spec, short name, class names and both splits (model transform applied)."""

    spec: str
    name: str
    classes: list[str]
    train: Any
    val: Any

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        """The target's ``meta["data"]`` entry."""
        return describe_target(self.spec, self.val)


def open_target(spec: str, config: BViTConfig) -> TransferTarget:
    """Open ``spec`` with ``config``'s evaluation transform on both splits; DataSpecError when unusable."""
    tf = eval_transform(config)
    bundle = build_datasets(spec, tf, tf, require_train=True)
    if bundle.train is None or len(bundle.train) == 0:  # type: ignore[arg-type]
        raise ValueError(f"--data {spec}: no training images (transfer needs a train split)")
    if len(bundle.val) == 0:  # type: ignore[arg-type]
        raise ValueError(f"--data {spec}: no validation images")
    if len(bundle.classes) < 2:
        raise ValueError(f"--data {spec}: {len(bundle.classes)} class(es); a classification target needs at least 2")
    return TransferTarget(spec, target_name(spec), list(bundle.classes), bundle.train, bundle.val)


def transform_key(config: BViTConfig) -> str:
    """What decides a model's input images (size, crop, interpolation, mean / std): models sharing it share data."""
    return json.dumps(config.data_config, sort_keys=True, default=str)


def target_loaders(
    target: TransferTarget,
    train_limit: int | None,
    val_limit: int | None,
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 0,
    decode_once: bool = True,
) -> tuple[DataLoader, DataLoader]:
    """(shuffled train loader, ordered val loader) over seeded subsets; small subsets decoded once into tensors.

    The train loader shuffles with torch's global RNG, which ``fit_transfer`` seeds per run.
    """
    train = Subset(target.train, subset_indices(len(target.train), train_limit, seed))
    val = Subset(target.val, subset_indices(len(target.val), val_limit, seed))
    ordered = DataLoader(train, batch_size=batch_size, shuffle=False, num_workers=workers)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=workers)
    if decode_once:
        ordered, val_loader = materialize(ordered), materialize(val_loader)
    train_loader = DataLoader(ordered.dataset, batch_size=batch_size, shuffle=True,
                              num_workers=0 if ordered.dataset is not train else workers)
    return train_loader, val_loader


# --------------------------------------------------------------------------- source models


def is_imported(spec: str) -> bool:
    """Whether ``spec`` names a timm / torchvision ViT state dict to import (``timm:PATH``, ``torchvision:PATH``)."""
    return spec.startswith(IMPORT_PREFIXES)


def source_label(spec: str) -> str:
    """Table name of a ``--model`` value: the checkpoint's file stem (imported ones without their suffix)."""
    if is_imported(spec):
        return Path(spec.split(":", 1)[1]).name.split(".")[0]
    return model_label(spec)


def load_source_model(spec: str, device: str | torch.device = "cpu", num_heads: int | None = None) -> BViT:
    """A bundled model, one of our checkpoints, or an imported ``timm:PATH`` / ``torchvision:PATH`` ViT, in eval mode.

    An imported model gets ``num_heads`` heads (default embed_dim / 64) and records its file and sha256.
    """
    if not is_imported(spec):
        return resolve_model(spec, device=str(device))
    from ..model.convert import _read_state_dict, import_timm_vit, import_torchvision_vit

    kind, path = spec.split(":", 1)
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--model {spec}: no {kind} state dict at {file}")
    try:
        state = _read_state_dict(str(file))
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise ValueError(f"--model {spec}: {file} is not a readable state dict ({type(err).__name__}: {err})") from err
    key = "patch_embed.proj.weight" if kind == "timm" else "conv_proj.weight"
    if key not in state:
        raise ValueError(f"--model {spec}: {file} is not a {kind} VisionTransformer state dict (no {key!r})")
    width = int(state[key].shape[0])
    heads = num_heads or max(1, width // HEAD_DIM)
    if width % heads:
        raise ValueError(f"--num-heads {heads}: does not divide the imported model's width {width}")
    name = source_label(spec)
    model = (import_timm_vit(state, heads, name=name) if kind == "timm"
             else import_torchvision_vit(state, heads, name=name))
    model.checkpoint_path = str(file.resolve())
    model.checkpoint_sha256 = sha256_file(file)
    return model.to(device).eval()


__all__ = ["DEFAULT_TARGET", "TransferTarget", "describe_target", "is_imported", "load_source_model", "open_target",
           "source_label", "target_loaders", "target_name", "transform_key"]
