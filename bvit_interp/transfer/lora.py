"""LoRA adapters for a BViT: q and v rows of timm's fused qkv (own wrapper), FFN fc1 / fc2 (peft).

peft adapts whole ``nn.Linear`` modules; it cannot put separate adapters on the q and v row
blocks of timm's fused ``attn.qkv`` (3d x d), so ``FusedQKVLoRA`` does that. The FFN layers are
plain Linears and get peft's ``lora.Linear``. In a bViT the one block serves every step, so one
adapter per layer is shared by all steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..model import BViT

LORA_RANK = 8  # App. H / Sec. 4.3: rank 8
LORA_ALPHA = 8.0  # lost from our copy of App. H; peft's and the LoRA paper's default alpha = r (scale 1)
LORA_DROPOUT = 0.0  # App. H: "no LoRA dropout"
QKV_BLOCKS = ("q", "k", "v")


class FusedQKVLoRA(nn.Module):
    """LoRA on chosen row blocks of a fused qkv Linear: rows of block s get ``+ scaling * B_s A_s x``."""

    def __init__(
        self,
        base_layer: nn.Linear,
        targets: Iterable[str] = ("q", "v"),
        rank: int = LORA_RANK,
        alpha: float = LORA_ALPHA,
        dropout: float = LORA_DROPOUT,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"FusedQKVLoRA wraps an nn.Linear, got {type(base_layer).__name__}")
        if base_layer.out_features % 3:
            raise ValueError(f"a fused qkv layer has 3 x d outputs, got {base_layer.out_features}")
        self.targets = tuple(targets)
        if not self.targets or any(t not in QKV_BLOCKS for t in self.targets) or len(set(self.targets)) < len(self.targets):
            raise ValueError(f"targets must be distinct blocks among {QKV_BLOCKS}, got {self.targets}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base_layer = base_layer
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        self.dim = base_layer.out_features // 3
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        like = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.ParameterDict(
            {t: nn.Parameter(torch.empty(self.rank, base_layer.in_features, **like)) for t in self.targets}
        )
        self.lora_B = nn.ParameterDict({t: nn.Parameter(torch.zeros(self.dim, self.rank, **like)) for t in self.targets})
        for a in self.lora_A.values():  # peft / loralib init: A Kaiming-uniform, B zero (adapter starts at 0)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def rows(self, target: str) -> slice:
        """Output rows of ``target`` ("q", "k" or "v") in the fused layer."""
        i = QKV_BLOCKS.index(target)
        return slice(i * self.dim, (i + 1) * self.dim)

    def _b_full(self) -> torch.Tensor:
        """All B factors placed in one (3d, n_targets * r) matrix, zero outside their row blocks."""
        b_full = self.lora_B[self.targets[0]].new_zeros(self.out_features, self.rank * len(self.targets))
        for j, t in enumerate(self.targets):
            b_full[self.rows(t), j * self.rank : (j + 1) * self.rank] = self.lora_B[t]
        return b_full

    def _a_all(self) -> torch.Tensor:
        return torch.cat([self.lora_A[t] for t in self.targets], dim=0)

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``scaling * B A`` (3d, d), zero on the rows of untargeted blocks."""
        return self.scaling * (self._b_full() @ self._a_all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        low = F.linear(self.lora_dropout(x).to(self.lora_B[self.targets[0]].dtype), self._a_all())
        return out + (F.linear(low, self._b_full()) * self.scaling).to(out.dtype)

    def extra_repr(self) -> str:
        return f"targets={self.targets}, rank={self.rank}, alpha={self.alpha}"


def _blocks(model: BViT) -> list[tuple[int, nn.Module]]:
    return list(enumerate(model.blocks))


def add_lora_qv(
    model: BViT, rank: int = LORA_RANK, alpha: float = LORA_ALPHA, dropout: float = LORA_DROPOUT
) -> list[str]:
    """Wrap every block's fused ``attn.qkv`` with q and v adapters; returns the wrapped module names."""
    names = []
    for b, block in _blocks(model):
        qkv = block.attn.qkv
        if not isinstance(qkv, nn.Linear):
            raise ValueError(f"blocks.{b}.attn.qkv is a {type(qkv).__name__}, not a plain Linear (adapters already added?)")
        block.attn.qkv = FusedQKVLoRA(qkv, ("q", "v"), rank=rank, alpha=alpha, dropout=dropout)
        names.append(f"blocks.{b}.attn.qkv")
    return names


def add_lora_ffn(
    model: BViT, rank: int = LORA_RANK, alpha: float = LORA_ALPHA, dropout: float = LORA_DROPOUT
) -> list[str]:
    """Give every block's ``mlp.fc1`` and ``mlp.fc2`` a peft LoRA adapter; returns the adapted module names."""
    # lazy: peft imports transformers, which takes seconds
    from peft import LoraConfig, inject_adapter_in_model

    names = []
    for b, block in _blocks(model):
        for layer in ("fc1", "fc2"):
            module = getattr(block.mlp, layer)
            if not isinstance(module, nn.Linear):
                raise ValueError(f"blocks.{b}.mlp.{layer} is a {type(module).__name__}, not a plain Linear (adapters already added?)")
            names.append(f"blocks.{b}.mlp.{layer}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, model)
    return names


def is_lora_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a LoRA-wrapped Linear (ours or peft's)."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B")


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """LoRA-wrapped layers of ``model`` by module name (``blocks.0.attn.qkv``, ``blocks.0.mlp.fc1``)."""
    return {name: m for name, m in model.named_modules() if is_lora_layer(m)}


def lora_delta_weight(module: nn.Module) -> torch.Tensor:
    """The dense weight update of one LoRA layer (``scaling * B A``), ours or peft's."""
    if isinstance(module, FusedQKVLoRA):
        return module.delta_weight()
    return module.get_delta_weight("default")


@torch.no_grad()
def merge_lora(model: BViT) -> BViT:
    """Fold every adapter into its base weight (W + scaling * B A) in place; a plain BViT with timm keys.

    The merged model carries no adapters and, like a freshly loaded model, has every
    parameter trainable; ``save_model`` and the weight-based analyses work on it.
    """
    for name, module in lora_layers(model).items():
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module.base_layer
        base.weight.add_(lora_delta_weight(module).to(base.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, base)
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.requires_grad_(True)
    return model
