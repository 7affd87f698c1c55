"""Model configurations: one dataclass covers bViT (1 block x T steps), ViT (L blocks x 1 step) and hybrids."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

NORM_TYPES = ("rmsnorm", "layernorm")


@dataclass(frozen=True)
class BViTConfig:
    """Architecture of a "blocks x steps" Vision Transformer.

    A recurrent step applies ``blocks`` distinct pre-norm transformer blocks in order; the
    stack is applied ``steps`` times, so layer ``l`` of the unrolled network uses block
    ``l % blocks``. Argument names follow timm's ``VisionTransformer``.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    blocks: int = 1
    steps: int = 12
    reg_tokens: int = 0
    time_embed: bool = False
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    # Input preprocessing the weights expect (timm's pretrained_cfg fields).
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if self.blocks < 1 or self.steps < 1:
            problems.append(f"blocks and steps must be >= 1 (got {self.blocks} x {self.steps})")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.norm not in NORM_TYPES:
            problems.append(f"norm must be one of {NORM_TYPES}, got {self.norm!r}")
        if self.reg_tokens < 0:
            problems.append(f"reg_tokens must be >= 0, got {self.reg_tokens}")
        if problems:
            raise ValueError("invalid BViTConfig: " + "; ".join(problems))

    @property
    def data_config(self) -> dict[str, Any]:
        """timm-style data config (``timm.data.resolve_data_config`` keys) for this model's input."""
        return {
            "input_size": (self.in_chans, self.img_size, self.img_size),
            "interpolation": "bicubic",
            "mean": self.mean,
            "std": self.std,
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
        }

    @property
    def depth(self) -> int:
        """Number of block applications in the unrolled network (blocks x steps)."""
        return self.blocks * self.steps

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, which precede the patch tokens."""
        return 1 + self.reg_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def is_recurrent(self) -> bool:
        return self.steps > 1

    def replace(self, **overrides: Any) -> BViTConfig:
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            valid = ", ".join(f.name for f in fields(self))
            raise TypeError(f"unknown config option(s) {unknown}; valid options: {valid}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BViTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys in model config: {unknown}")
        return cls(**data)


def _family(prefix: str, width: int, heads: int, depth: int) -> dict[str, BViTConfig]:
    """bViT (1 x depth) and ViT (depth x 1) of one width, with -te / -reg variants."""
    out: dict[str, BViTConfig] = {}
    base = {"embed_dim": width, "num_heads": heads}
    out[f"bvit_{prefix}"] = BViTConfig(name=f"bvit_{prefix}", blocks=1, steps=depth, **base)
    out[f"bvit_{prefix}_te"] = BViTConfig(name=f"bvit_{prefix}_te", blocks=1, steps=depth, time_embed=True, **base)
    out[f"bvit_{prefix}_reg"] = BViTConfig(name=f"bvit_{prefix}_reg", blocks=1, steps=depth, reg_tokens=4, **base)
    out[f"vit_{prefix}"] = BViTConfig(name=f"vit_{prefix}", blocks=depth, steps=1, **base)
    out[f"vit_{prefix}_reg"] = BViTConfig(name=f"vit_{prefix}_reg", blocks=depth, steps=1, reg_tokens=4, **base)
    return out


def _registry() -> dict[str, BViTConfig]:
    configs: dict[str, BViTConfig] = {}
    configs.update(_family("s", 384, 6, 12))
    configs.update(_family("b", 768, 12, 12))
    configs.update(_family("l", 1024, 16, 24))
    # Paper Table 2: blocks x steps hybrids of ViT-S with 12 layers unrolled.
    for b in (2, 3, 4, 6):
        name = f"vit_s_{b}b{12 // b}s"
        configs[name] = BViTConfig(name=name, embed_dim=384, num_heads=6, blocks=b, steps=12 // b)
    # Bundled tiny models: 32 px shapes, patch 4 (64 patch tokens), width 128.
    tiny = {"img_size": 32, "patch_size": 4, "num_classes": 10, "embed_dim": 128, "num_heads": 4, "crop_pct": 1.0}
    configs["bvit_tiny"] = BViTConfig(name="bvit_tiny", blocks=1, steps=12, **tiny)
    configs["bvit_tiny_te"] = BViTConfig(name="bvit_tiny_te", blocks=1, steps=12, time_embed=True, **tiny)
    configs["bvit_tiny_reg"] = BViTConfig(name="bvit_tiny_reg", blocks=1, steps=12, reg_tokens=4, **tiny)
    configs["vit_tiny"] = BViTConfig(name="vit_tiny", blocks=12, steps=1, **tiny)
    # Paper App. G.1, the step-masked pruning model on CIFAR-10: width 256, 8 heads, MLP ratio 4,
    # GELU, one block x 12 steps, 32 px input, 10 classes. Assumed (the numbers are lost in our copy
    # of App. G.1): patch size 4 (64 patch tokens, as the bundled 32 px models), full-image crop
    # (crop_pct 1.0), and the toolkit's defaults for the rest (RMSNorm, qkv bias, ImageNet mean/std).
    configs["bvit_prune_g1"] = BViTConfig(
        name="bvit_prune_g1", img_size=32, patch_size=4, num_classes=10, embed_dim=256, num_heads=8, mlp_ratio=4.0,
        blocks=1, steps=12, crop_pct=1.0,
    )
    # A micro config for unit tests: runs in milliseconds.
    configs["bvit_micro"] = BViTConfig(
        name="bvit_micro", img_size=16, patch_size=4, num_classes=5, embed_dim=32, num_heads=4, blocks=1, steps=4,
        crop_pct=1.0,
    )
    return configs


MODEL_CONFIGS: dict[str, BViTConfig] = _registry()


def get_config(name_or_config: str | BViTConfig | dict[str, Any], **overrides: Any) -> BViTConfig:
    """Resolve a named config (or a config / dict) and apply timm-style overrides."""
    if isinstance(name_or_config, BViTConfig):
        cfg = name_or_config
    elif isinstance(name_or_config, dict):
        cfg = BViTConfig.from_dict(name_or_config)
    else:
        key = name_or_config.replace("-", "_").lower()
        if key not in MODEL_CONFIGS:
            raise KeyError(f"unknown model config {name_or_config!r}; known: {', '.join(sorted(MODEL_CONFIGS))}")
        cfg = MODEL_CONFIGS[key]
    # timm spells the width / classes the same way; accept depth for ViT-style overrides.
    if "depth" in overrides:
        depth = overrides.pop("depth")
        overrides.setdefault("blocks", depth)
        overrides.setdefault("steps", 1)
    return cfg.replace(**overrides) if overrides else cfg
