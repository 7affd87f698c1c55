"""Checkpoints: safetensors weights + a JSON config beside them; importers for timm and torchvision ViTs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write
from .bvit import BViT
from .config import BViTConfig, get_config

FORMAT_VERSION = 1

SaveExtension = Callable[[BViT, Path, str], None]  # (model, weights path, weights sha256)
LoadExtension = Callable[[BViT, Path], None]  # (model, weights path)
# State that other packages keep beside a checkpoint (the pruning package's step masks): they
# register a (save, load) pair here, so this layer imports nothing above it.
# bvit_interp/__init__.py imports those packages, so the pairs are there whenever a model loads.
CHECKPOINT_EXTENSIONS: list[tuple[SaveExtension, LoadExtension]] = []


def register_checkpoint_extension(save: SaveExtension, load: LoadExtension) -> None:
    """Save / load extra state beside every checkpoint (called once by the package that owns it)."""
    if (save, load) not in CHECKPOINT_EXTENSIONS:
        CHECKPOINT_EXTENSIONS.append((save, load))


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(weights, config) paths for ``models/name``, ``models/name.safetensors`` or ``models/name.json``."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_model(name_or_config: str | BViTConfig | dict[str, Any], **overrides: Any) -> BViT:
    """A freshly initialised model from a named config (``"bvit_b"``) or a config, with overrides."""
    return BViT(get_config(name_or_config, **overrides))


def save_model(
    model: BViT,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the weights path.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors compactly; ``load_model``
    casts them back to the model's fp32 parameters.
    """
    weights, config_path = checkpoint_paths(path)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": "bvit-interp", "version": str(FORMAT_VERSION)}))
    doc = {
        "format": "bvit-interp",
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "weights": weights.name,
        "weights_sha256": sha256_file(weights),
        "num_params": sum(p.numel() for p in model.parameters()),
        "storage_dtype": str(dtype or "as trained").replace("torch.", ""),
        "metadata": metadata or {},
    }
    atomic_write(config_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"))
    for save, _ in CHECKPOINT_EXTENSIONS:
        save(model, weights, doc["weights_sha256"])
    return weights


def read_checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document written beside a checkpoint (config, sha256, metadata)."""
    _, config_path = checkpoint_paths(path)
    if not config_path.exists():
        raise FileNotFoundError(f"checkpoint config {config_path} not found (expected beside the .safetensors file)")
    try:
        doc = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    if "config" not in doc:
        raise ValueError(f"{config_path} has no 'config' entry; is it a bvit-interp checkpoint?")
    return doc


def load_state_dict_checked(model: BViT, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; on mismatch name the missing, unexpected and wrongly shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shape:
            parts.append(f"shape mismatches {shape}")
        raise ValueError(f"checkpoint {source} does not fit config {model.config.name!r}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def read_weights(weights: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; ValueError naming the file when it is truncated, empty or not one."""
    try:
        return load_file(str(weights), device=str(map_location))
    except SafetensorError as err:
        raise ValueError(f"checkpoint weights {weights} are not a readable safetensors file ({err}); "
                         "the file is truncated or corrupt") from err


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu", **overrides: Any) -> BViT:
    """Load a checkpoint written by ``save_model``; records its path and sha256 on the model."""
    weights, config_path = checkpoint_paths(path)
    if not weights.exists():
        raise FileNotFoundError(f"checkpoint weights {weights} not found")
    doc = read_checkpoint_info(path)
    digest = sha256_file(weights)
    recorded = doc.get("weights_sha256")
    if recorded and recorded != digest:
        raise ValueError(
            f"checkpoint weights {weights} do not match the sha256 recorded in {config_path} "
            f"({digest[:12]}... vs {str(recorded)[:12]}...): the file is corrupt, truncated or was replaced"
        )
    model = build_model(BViTConfig.from_dict(doc["config"]), **overrides)
    state = read_weights(weights, map_location)
    load_state_dict_checked(model, state, str(weights))
    model.checkpoint_path = str(weights)
    model.checkpoint_sha256 = digest
    for _, load in CHECKPOINT_EXTENSIONS:
        load(model, weights)
    model.eval()
    return model
