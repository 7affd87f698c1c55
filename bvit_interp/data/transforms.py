"""Image transforms built with timm's ``create_transform`` from a model's data config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
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


def denormalize(x: torch.Tensor | np.ndarray, config: BViTConfig) -> torch.Tensor | np.ndarray:
    """A model input (..., 3, H, W), tensor or array -> the image in [0, 1] (clamped), same type and layout.

    The one inverse of the model's normalisation: featviz exemplars, pointing overlays, the app.
    """
    if isinstance(x, torch.Tensor):
        mean = torch.tensor(config.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(config.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0.0, 1.0)
    arr = np.asarray(x)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    mean = np.asarray(config.mean, dtype=dtype).reshape(3, 1, 1)
    std = np.asarray(config.std, dtype=dtype).reshape(3, 1, 1)
    return np.clip(arr * std + mean, 0.0, 1.0)


def _rand_augment(spec: str, img_size: int, mean: tuple[float, ...]) -> Callable[[Any], Any]:
    """timm RandAugment with every op whose posterize keeps >= 4 bits.

    Pillow >= 13 rejects 0-bit posterize, which timm's (increasing) posterize requests at
    high magnitudes, so both posterize variants are swapped for the original-paper one
    (keep 4-8 bits); every other op is timm's.
    """
    from timm.data.auto_augment import (
        _RAND_INCREASING_TRANSFORMS,
        _RAND_TRANSFORMS,
        rand_augment_transform,
    )

    ops = _RAND_INCREASING_TRANSFORMS if "inc1" in spec.split("-") else _RAND_TRANSFORMS
    ops = ["PosterizeOriginal" if op.startswith("Posterize") else op for op in ops]
    hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
    return rand_augment_transform(spec, hparams, transforms=ops)


def train_transform(
    config: BViTConfig,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: float,
    auto_augment: str | None,
    re_prob: float,
) -> Callable[[Any], Any]:
    """RandomResizedCrop, flip, RandAugment, Random Erasing (paper Sec. 3.3) with the given strengths."""
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    dc = config.data_config
    steps: list[Callable[[Any], Any]] = [
        RandomResizedCropAndInterpolation(config.img_size, scale=scale, ratio=ratio, interpolation="bicubic")
    ]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if auto_augment:
        if not auto_augment.startswith("rand"):
            raise ValueError(f"--rand-augment {auto_augment!r}: expected a timm RandAugment spec like rand-m9-mstd0.5-inc1")
        steps.append(_rand_augment(auto_augment, config.img_size, dc["mean"]))
    steps += [T.ToTensor(), T.Normalize(dc["mean"], dc["std"])]
    if re_prob > 0:
        steps.append(RandomErasing(re_prob, mode="pixel", device="cpu"))
    return T.Compose(steps)


class CropGeometry:
    """Where the model's input crop sits in the original image (timm eval: resize shorter side, centre crop).

    ``scale_size = floor(img_size / crop_pct)``; the shorter side is resized to it keeping
    the aspect ratio (torchvision truncation), then the centre ``img_size`` square is cut
    (torchvision rounding). Points map back through ``to_original``.
    """

    def __init__(self, orig_w: int, orig_h: int, img_size: int, crop_pct: float) -> None:
        import math

        scale = math.floor(img_size / crop_pct)
        if orig_w <= orig_h:
            rw, rh = scale, int(scale * orig_h / orig_w)
        else:
            rw, rh = int(scale * orig_w / orig_h), scale
        self.orig_w, self.orig_h, self.resized_w, self.resized_h = orig_w, orig_h, rw, rh
        self.size = img_size
        self.top = int(round((rh - img_size) / 2.0))
        self.left = int(round((rw - img_size) / 2.0))

    def to_original(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Crop coordinates (continuous pixels) -> original-image coordinates."""
        return (x + self.left) * self.orig_w / self.resized_w, (y + self.top) * self.orig_h / self.resized_h

    def visible_box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the crop in original coordinates."""
        x0, y0 = self.to_original(0.0, 0.0)
        x1, y1 = self.to_original(float(self.size), float(self.size))
        return x0, y0, x1, y1

    def apply(self, image: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
        """The model input tensor for a PIL image (same as ``eval_transform``)."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        img = TF.resize(image, [self.resized_h, self.resized_w], interpolation=InterpolationMode.BICUBIC)
        img = TF.crop(img, self.top, self.left, self.size, self.size)
        return TF.normalize(TF.to_tensor(img), mean, std)

    def crop_mask(self, mask: Any) -> Any:
        """A label mask in the crop frame (nearest-neighbour resize, then the same crop)."""
        from .imagenet_s import resize_mask_nearest

        resized = resize_mask_nearest(mask, (self.resized_h, self.resized_w))
        return resized[self.top : self.top + self.size, self.left : self.left + self.size]
