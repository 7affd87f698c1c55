"""The transfer methods of Table 4 / App. H: each replaces the head and sets what is trainable, in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..model import BViT
from .lora import LORA_ALPHA, LORA_DROPOUT, LORA_RANK, add_lora_ffn, add_lora_qv, lora_layers

METHOD_LABELS: dict[str, str] = {
    "linear_probe": "Linear probing",
    "full_finetune": "Fine-tuning",
    "lora_qv": "LoRA, QV",
    "lora_ffn": "LoRA, FFN",
    "time_embedding_tuning": "Time embedding tuning",
}

# Table 4's trainable parameters, heads excluded, as printed (K = thousands, M = millions).
PAPER_TRAINABLE_PARAMS: dict[tuple[str, str], int] = {
    ("vit_b", "full_finetune"): 85_800_000,
    ("vit_b", "lora_qv"): 296_000,
    ("vit_b", "lora_ffn"): 738_000,
    ("bvit_b", "full_finetune"): 7_800_000,
    ("bvit_b", "lora_qv"): 25_000,
    ("bvit_b", "lora_ffn"): 62_000,
    ("bvit_b_te", "time_embedding_tuning"): 9_000,
}


def reset_head(model: BViT, num_classes: int | None = None) -> None:
    """Replace the classifier with a newly initialised Linear (App. H); keeps ``model.config`` in step."""
    n = model.config.num_classes if num_classes is None else int(num_classes)
    if n < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model.reset_classifier(n)  # timm: nn.Linear(embed_dim, n), PyTorch's default init
    model.config = model.config.replace(num_classes=n)
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "num_classes": n}


def _fresh(model: BViT, method: str) -> None:
    if lora_layers(model):
        raise ValueError(f"{method}: the model already carries LoRA adapters; prepare a freshly loaded model")


def _freeze_backbone(model: BViT) -> None:
    model.requires_grad_(False)


def classifiers(model: BViT) -> list[nn.Module]:
    """The new heads a method trains: ``head``, and ``head_dist`` on a -dist model (DeiT averages the two)."""
    dist = getattr(model, "head_dist", None)
    return [model.get_classifier(), *([dist] if isinstance(dist, nn.Module) else [])]


def _train_heads(model: BViT) -> None:
    for head in classifiers(model):
        head.requires_grad_(True)


def linear_probe(model: BViT, num_classes: int | None = None) -> BViT:
    """Frozen backbone, new trainable head."""
    _fresh(model, "linear_probe")
    reset_head(model, num_classes)
    _freeze_backbone(model)
    _train_heads(model)
    return model


def full_finetune(model: BViT, num_classes: int | None = None) -> BViT:
    """Everything trainable (blocks, patch / positional / time embeddings, tokens, norms), new head."""
    _fresh(model, "full_finetune")
    reset_head(model, num_classes)
    model.requires_grad_(True)
    return model


def lora_qv(
    model: BViT,
    num_classes: int | None = None,
    rank: int = LORA_RANK,
    alpha: float = LORA_ALPHA,
    dropout: float = LORA_DROPOUT,
) -> BViT:
    """Frozen backbone; LoRA on the query and value rows of each block's fused qkv; new head."""
    _fresh(model, "lora_qv")
    reset_head(model, num_classes)
    _freeze_backbone(model)
    add_lora_qv(model, rank=rank, alpha=alpha, dropout=dropout)
    _train_heads(model)
    return model


def lora_ffn(
    model: BViT,
    num_classes: int | None = None,
    rank: int = LORA_RANK,
    alpha: float = LORA_ALPHA,
    dropout: float = LORA_DROPOUT,
) -> BViT:
    """Frozen backbone; LoRA (peft) on each block's FFN fc1 and fc2; new head."""
    _fresh(model, "lora_ffn")
    reset_head(model, num_classes)
    _freeze_backbone(model)
    add_lora_ffn(model, rank=rank, alpha=alpha, dropout=dropout)
    _train_heads(model)
    return model


def time_embedding_tuning(model: BViT, num_classes: int | None = None) -> BViT:
    """Only the per-step time embeddings (-TE models) and a new head are trainable."""
    if getattr(model, "time_embed", None) is None:
        raise ValueError(
            f"time_embedding_tuning needs a model with time embeddings (a -TE config such as bvit_b_te); "
            f"{model.config.name!r} has none"
        )
    _fresh(model, "time_embedding_tuning")
    reset_head(model, num_classes)
    _freeze_backbone(model)
    model.time_embed.requires_grad_(True)
    _train_heads(model)
    return model


METHODS: dict[str, Callable[..., BViT]] = {
    "linear_probe": linear_probe,
    "full_finetune": full_finetune,
    "lora_qv": lora_qv,
    "lora_ffn": lora_ffn,
    "time_embedding_tuning": time_embedding_tuning,
}


def check_method(method: str) -> str:
    """``method`` itself, or a ValueError naming the known methods."""
    if method not in METHODS:
        raise ValueError(f"unknown transfer method {method!r}; choose from {', '.join(METHODS)}")
    return method


def prepare(model: BViT, method: str, num_classes: int | None = None, **options: Any) -> BViT:
    """Apply transfer ``method`` (a key of ``METHODS``) to ``model`` in place; options go to LoRA methods."""
    fn = METHODS[check_method(method)]
    if options and not method.startswith("lora"):
        raise ValueError(f"{method} takes no options, got {sorted(options)}")
    return fn(model, num_classes, **options)


def head_parameters(model: BViT) -> int:
    """Parameters of the classifier head (weight + bias; both heads of a -dist model)."""
    return sum(p.numel() for head in classifiers(model) for p in head.parameters())


def trainable_parameters(model: BViT, exclude_head: bool = True) -> int:
    """Number of trainable parameters (shared tensors once); Table 4 counts them without the head."""
    head = {id(p) for h in classifiers(model) for p in h.parameters()} if exclude_head else set()
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head)
