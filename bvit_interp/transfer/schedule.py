"""App. H's optimisation schedule (AdamW, 5 warm-up epochs, cosine, 40 epochs) and per-method defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .methods import check_method


@dataclass(frozen=True)
class MethodDefaults:
    """Peak lr, final (minimum) lr and weight decay of one method."""

    lr: float
    min_lr: float
    weight_decay: float


# App. H names these constants but our copy lost every number. The values below are stated
# assumptions from the efficient-transfer literature App. H follows (AdamW, lr 1e-3 and weight
# decay 1e-4 for adapters / heads; DeiT-style lr 1e-4, weight decay 0.05 for full fine-tuning).
# App. H gives the linear probe no minimum lr (cosine to 0) and time-embedding tuning no schedule
# at all (we use the LoRA one: both train a few thousand parameters plus the head).
METHOD_DEFAULTS: dict[str, MethodDefaults] = {
    "linear_probe": MethodDefaults(lr=1e-3, min_lr=0.0, weight_decay=1e-4),
    "full_finetune": MethodDefaults(lr=1e-4, min_lr=1e-6, weight_decay=0.05),
    "lora_qv": MethodDefaults(lr=1e-3, min_lr=1e-5, weight_decay=1e-4),
    "lora_ffn": MethodDefaults(lr=1e-3, min_lr=1e-5, weight_decay=1e-4),
    "time_embedding_tuning": MethodDefaults(lr=1e-3, min_lr=1e-5, weight_decay=1e-4),
}

# App. H: batch size 128 for CIFAR-10 / CIFAR-100, 64 for the other datasets (the loaders' business).
APP_H_BATCH_SIZES: dict[str, int] = {"cifar10": 128, "cifar100": 128}
APP_H_DEFAULT_BATCH_SIZE = 64
APP_H_EPOCHS = 40
APP_H_WARMUP_EPOCHS = 5


def app_h_batch_size(dataset: str) -> int:
    """App. H's batch size for a dataset name (``cifar10``, ``cifar100``: 128; anything else: 64)."""
    return APP_H_BATCH_SIZES.get(dataset.split(":")[0].lower().replace("-", ""), APP_H_DEFAULT_BATCH_SIZE)


@dataclass(frozen=True)
class TransferSchedule:
    """AdamW + linear warm-up + per-iteration cosine decay; ``None`` = the method's default (App. H)."""

    epochs: int = APP_H_EPOCHS
    warmup_epochs: int = APP_H_WARMUP_EPOCHS
    lr: float | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    max_steps_per_epoch: int | None = None  # smaller budgets: cap the optimiser steps of each epoch
    eval_every: int = 1  # evaluate every n epochs (the last epoch always)

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup_epochs < max(self.epochs, 1):
            problems.append(
                f"warmup_epochs must be in [0, epochs) = [0, {self.epochs}), got {self.warmup_epochs} "
                f"(TransferSchedule().scaled({self.epochs}) keeps App. H's warm-up fraction)"
            )
        for name in ("lr", "min_lr", "weight_decay", "clip_grad"):
            value = getattr(self, name)
            if value is not None and value < 0:
                problems.append(f"{name} must be >= 0, got {value}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            problems.append(f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
        if self.eval_every < 1:
            problems.append(f"eval_every must be >= 1, got {self.eval_every}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if problems:
            raise ValueError("invalid TransferSchedule: " + "; ".join(problems))

    def resolved(self, method: str) -> TransferSchedule:
        """A copy with lr / min_lr / weight_decay filled from ``METHOD_DEFAULTS[method]``."""
        defaults = dataclasses.asdict(METHOD_DEFAULTS[check_method(method)])
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    def scaled(self, epochs: int) -> TransferSchedule:
        """The same schedule over ``epochs`` epochs, warm-up kept at App. H's fraction (5 / 40)."""
        warmup = round(epochs * APP_H_WARMUP_EPOCHS / APP_H_EPOCHS)
        return dataclasses.replace(self, epochs=epochs, warmup_epochs=min(warmup, max(epochs - 1, 0)))

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): linear warm-up to lr, then cosine to min_lr."""
        if self.lr is None or self.min_lr is None:
            raise ValueError("resolve the schedule for a method first (schedule.resolved(method))")
        total = self.epochs * steps_per_epoch
        warm = self.warmup_epochs * steps_per_epoch
        if step < warm:
            return self.lr * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


APP_H = TransferSchedule()
