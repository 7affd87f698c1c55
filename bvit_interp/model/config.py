"""Model configurations: one dataclass covers bViT (1 block x T steps), ViT (L blocks x 1 step) and hybrids."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

NORM_TYPES = ("rmsnorm", "layernorm")
BLOCK_CHOICES = ("shared", "independent")  # App. D: the latent / memory block shares the main block's weights or not
LATENT_GRADS = ("full", "truncated", "frozen")  # App. D.1: gradient flow through the fast latent
MEMORY_GRADS = ("full", "truncated")  # App. D.2: end-to-end ("full") or truncated through the memory
DIST_TOKEN_INDEX = 1  # token order [cls, dist, reg..., patches], as timm's VisionTransformerDistilled
# Variant fields (issue 18) are written to a config dict only when they differ from their defaults,
# so the config dicts of plain models (checkpoints, train states, run metadata) are unchanged.
VARIANT_FIELDS = {
    "dist_token": False,
    "latent_steps": 0,
    "latent_block": "shared",
    "latent_grad": "full",
    "memory_every": 0,
    "memory_block": "shared",
    "memory_grad": "full",
}


@dataclass(frozen=True)
class BViTConfig:
    """Architecture of a "blocks x steps" Vision Transformer.

    A recurrent step applies ``blocks`` distinct pre-norm transformer blocks in order; the
    stack is applied ``steps`` times, so layer ``l`` of the unrolled network uses block
    ``l % blocks``. Argument names follow timm's ``VisionTransformer``.

    Variants (docs/variants.md): ``dist_token`` adds DeiT's distillation token and head (App. C);
    ``latent_steps`` > 0 makes a bViT-fl (App. D.1: ``latent_steps`` inner updates of an auxiliary
    latent before each application of the shared block, ``latent_block`` / ``latent_grad``);
    ``memory_every`` > 0 a bViT-sc (App. D.2: a memory state updated every ``memory_every`` steps
    and added to the recurrent state, ``memory_block`` / ``memory_grad``).
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
    # Paper App. C (distillation token) and App. D (bViT-fl, bViT-sc); see VARIANT_FIELDS.
    dist_token: bool = False
    latent_steps: int = 0
    latent_block: str = "shared"
    latent_grad: str = "full"
    memory_every: int = 0
    memory_block: str = "shared"
    memory_grad: str = "full"
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
        problems += self._variant_problems()
        if problems:
            raise ValueError("invalid BViTConfig: " + "; ".join(problems))

    def _variant_problems(self) -> list[str]:
        """Problems with the App. C / D variant fields."""
        problems = []
        for name, value, allowed in (
            ("latent_block", self.latent_block, BLOCK_CHOICES),
            ("latent_grad", self.latent_grad, LATENT_GRADS),
            ("memory_block", self.memory_block, BLOCK_CHOICES),
            ("memory_grad", self.memory_grad, MEMORY_GRADS),
        ):
            if value not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {value!r}")
        if self.latent_steps < 0 or self.memory_every < 0:
            problems.append(f"latent_steps and memory_every must be >= 0 (got {self.latent_steps}, {self.memory_every})")
        if self.latent_steps and self.memory_every:
            problems.append("a model is bViT-fl (latent_steps) or bViT-sc (memory_every), not both")
        if (self.latent_steps or self.memory_every) and self.blocks != 1:
            problems.append(f"bViT-fl / bViT-sc recur one shared block (App. D): blocks must be 1, got {self.blocks}")
        return problems

    @property
    def variant(self) -> str:
        """"fl" (App. D.1), "sc" (App. D.2) or "" (plain blocks x steps)."""
        return "fl" if self.latent_steps else "sc" if self.memory_every else ""

    @property
    def dist_token_index(self) -> int | None:
        """Token index of the distillation token (1, after CLS), or None without one."""
        return DIST_TOKEN_INDEX if self.dist_token else None

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
        """CLS, the distillation token (if any) and the registers, which precede the patch tokens."""
        return 1 + int(self.dist_token) + self.reg_tokens

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
        """Plain dict (JSON); variant fields at their defaults are left out (``from_dict`` restores them)."""
        out = dataclasses.asdict(self)
        for key, default in VARIANT_FIELDS.items():
            if out[key] == default:
                del out[key]
        return out

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
    # Paper App. D (docs/variants.md): bViT-fl with 3 inner latent updates (the count that gives
    # Table 6's 134.1 GFLOPs at bViT-B size) and bViT-sc with a memory update every 4 steps (our
    # choice: the paper's intervals are lost in our copy; 2 for the 4-step micro config); shared
    # blocks and full gradients. Other settings are overrides, e.g.
    # build_model("bvit_b_fl", latent_block="independent", latent_grad="frozen").
    for base in ("bvit_s", "bvit_b", "bvit_l", "bvit_tiny", "bvit_micro"):
        every = 2 if base == "bvit_micro" else 4
        configs[f"{base}_fl"] = configs[base].replace(name=f"{base}_fl", latent_steps=3)
        configs[f"{base}_sc"] = configs[base].replace(name=f"{base}_sc", memory_every=every)
    # Paper App. C: a DeiT distillation-token variant of every config above.
    for name, cfg in list(configs.items()):
        configs[f"{name}_dist"] = cfg.replace(name=f"{name}_dist", dist_token=True)
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
