"""Image transforms built with timm's ``create_transform`` from a model's data config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.data import create_transform

from ..model.config import BViTConfig


def eval_transform(config: BViTConfig) -> Callable[[Any], Any]:
    """Resize, centre crop (``crop_pct``), to tensor, normalise: the model's evaluation input."""
    dc = config.data_config
    return create_transform(
        input_size=dc["input_size"],
        is_training=False,
        interpolation=dc["interpolation"],
        mean=dc["mean"],
        std=dc["std"],
        crop_pct=dc["crop_pct"],
    )


def train_transform(
    config: BViTConfig,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: float,
    auto_augment: str | None,
    re_prob: float,
) -> Callable[[Any], Any]:
    """RandomResizedCrop, flip, RandAugment, Random Erasing (paper Sec. 3.3) with the given strengths."""
    dc = config.data_config
    return create_transform(
        input_size=dc["input_size"],
        is_training=True,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        auto_augment=auto_augment or None,
        interpolation="bicubic",
        re_prob=re_prob,
        re_mode="pixel",
        mean=dc["mean"],
        std=dc["std"],
    )
