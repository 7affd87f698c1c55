"""Importers: timm ``VisionTransformer`` and torchvision ``VisionTransformer`` state dicts -> BViT.

timm key names are BViT's own, so a timm ViT of depth L loads into an L x 1 config. A
torchvision ``vit_b_16``-style state dict is renamed key by key into a LayerNorm config.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from .bvit import BViT
from .config import BViTConfig
from .io import build_model, load_state_dict_checked

_TV_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_TV_LAYER_KEYS = {
    "ln_1.weight": "norm1.weight",
    "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight",
    "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight",
    "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight",
    "mlp.0.bias": "mlp.fc1.bias",
    "mlp.3.weight": "mlp.fc2.weight",
    "mlp.3.bias": "mlp.fc2.bias",
}
_TV_GLOBAL_KEYS = {
    "class_token": "cls_token",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
}


def _read_state_dict(source: str | os.PathLike[str] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        state = source
    else:
        path = str(source)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_ema"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def _infer_config(state: dict[str, torch.Tensor], num_heads: int, norm: str, **overrides: Any) -> BViTConfig:
    """Read width, depth, patch size, image size, classes and registers off the tensor shapes."""
    w = state["patch_embed.proj.weight"]
    embed_dim, in_chans, patch, _ = w.shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    dist = "dist_token" in state  # timm's VisionTransformerDistilled (DeiT)
    n_pos = state["pos_embed"].shape[1] - 1 - int(dist) - reg
    grid = int(round(n_pos**0.5))
    if grid * grid != n_pos:
        raise ValueError(f"pos_embed holds {n_pos} patch positions, not a square grid")
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    fields = {
        "img_size": grid * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "num_classes": num_classes,
        "embed_dim": embed_dim,
        "num_heads": num_heads,
        "mlp_ratio": hidden / embed_dim,
        "blocks": depth,
        "steps": 1,
        "reg_tokens": reg,
        "dist_token": dist,
        "norm": norm,
        "name": "imported",
    }
    fields.update(overrides)
    return BViTConfig(**fields)


def import_timm_vit(
    source: str | os.PathLike[str] | dict[str, torch.Tensor], num_heads: int, norm: str = "layernorm", **overrides: Any
) -> BViT:
    """Load a timm ``VisionTransformer`` (or DeiT ``VisionTransformerDistilled``) state dict as an L x 1 BViT."""
    state = _read_state_dict(source)
    if "patch_embed.proj.weight" not in state:
        raise ValueError("not a timm VisionTransformer state dict: no 'patch_embed.proj.weight' key")
    model = build_model(_infer_config(state, num_heads, norm, **overrides))
    load_state_dict_checked(model, state, "timm state dict")
    return model.eval()


def torchvision_to_timm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision ViT keys to timm/BViT keys; unknown keys raise with their names."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        m = _TV_LAYER.match(key)
        if m and m.group(2) in _TV_LAYER_KEYS:
            out[f"blocks.{m.group(1)}.{_TV_LAYER_KEYS[m.group(2)]}"] = value
        elif key in _TV_GLOBAL_KEYS:
            out[_TV_GLOBAL_KEYS[key]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"torchvision state dict has keys with no BViT equivalent: {sorted(unknown)}")
    return out


def import_torchvision_vit(
    source: str | os.PathLike[str] | dict[str, torch.Tensor], num_heads: int, **overrides: Any
) -> BViT:
    """Load a torchvision ``vit_b_16``-style state dict into an L x 1 LayerNorm BViT."""
    state = torchvision_to_timm_keys(_read_state_dict(source))
    model = build_model(_infer_config(state, num_heads, "layernorm", **overrides))
    load_state_dict_checked(model, state, "torchvision state dict")
    return model.eval()
