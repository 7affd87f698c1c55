"""Augmentations applied to every image before each forward pass (Ghiasi et al. 2022, lucent).

Each image is repeated into an ensemble of ``copies``; every copy gets its own colour shift and
scale ``(x - m) / s`` (m ~ U(-1, 1) * color_shift, s = exp(U(-1, 1) * color_scale)), a per-channel
Gaussian offset whose std anneals linearly from ``noise`` to 0 over the iterations, an optional
random scale / rotation (lucent), and a random roll ("jitter") of up to ``jitter`` pixels.

Randomness: every target owns a ``torch.Generator``; each iteration draws the parameters of all
copies of that target's images from it in one fixed-size draw (whether or not an augmentation is
enabled), so a target sees the same augmentations however targets are batched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...data.transforms import denormalize as denormalize  # the one de-normalisation, re-exported
from ...model import BViTConfig

# Ghiasi et al. roll by up to 32 px at 224 px; the default scales this to the image size.
GHIASI_JITTER_FRACTION = 32 / 224
_UNIFORM_COLS = 10  # colour shift (3), colour scale (3), roll (2), zoom (1), rotation (1)
_NORMAL_COLS = 3  # per-channel noise offset


@dataclass(frozen=True)
class TransformOptions:
    """Strength of each augmentation; the defaults are Ghiasi et al.'s (scale/rotate off)."""

    copies: int = 8  # augmented copies of each image per iteration (the ensemble)
    jitter: int | None = None  # max roll in px; None = 32 px at 224 px, scaled to the image size
    color_shift: float = 1.0  # m ~ U(-1, 1) * color_shift, subtracted per channel
    color_scale: float = 1.0  # s = exp(U(-1, 1) * color_scale), divides per channel
    noise: float = 0.5  # std of the per-channel offset at iteration 0, annealed to 0
    scale: tuple[float, float] | None = None  # random zoom range, e.g. (0.9, 1.1); None = off
    rotate: float = 0.0  # max rotation in degrees; 0 = off

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")
        if self.jitter is not None and self.jitter < 0:
            raise ValueError(f"jitter must be >= 0 pixels, got {self.jitter}")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")

    def jitter_px(self, size: int) -> int:
        """The roll limit in pixels for images of ``size`` px."""
        return round(GHIASI_JITTER_FRACTION * size) if self.jitter is None else int(self.jitter)


@dataclass
class Draws:
    """Augmentation parameters of one iteration, one row per augmented copy."""

    shift: torch.Tensor  # (C, 3, 1, 1)
    scale: torch.Tensor  # (C, 3, 1, 1)
    offset: torch.Tensor  # (C, 3, 1, 1)
    roll: torch.Tensor  # (C, 2) long: dy, dx
    zoom: torch.Tensor  # (C,)
    angle: torch.Tensor  # (C,) radians


class Augment:
    """Draws and applies the augmentations of ``options`` to images of ``size`` px."""

    def __init__(self, options: TransformOptions, size: int) -> None:
        self.options = options
        self.size = size
        self.jitter = options.jitter_px(size)

    def draw(self, generators: Sequence[torch.Generator], images_per_target: int, iteration: int, iterations: int) -> Draws:
        """Parameters for every copy of every image, each target drawing from its own generator."""
        o = self.options
        rows = images_per_target * o.copies
        u = torch.cat([torch.rand((rows, _UNIFORM_COLS), generator=g, dtype=torch.float64) for g in generators])
        z = torch.cat([torch.randn((rows, _NORMAL_COLS), generator=g, dtype=torch.float64) for g in generators])
        anneal = max(0.0, 1.0 - iteration / max(1, iterations))
        lo, hi = o.scale or (1.0, 1.0)
        return Draws(
            shift=((u[:, 0:3] * 2 - 1) * o.color_shift)[..., None, None],
            scale=((u[:, 3:6] * 2 - 1) * o.color_scale).exp()[..., None, None],
            offset=(z * o.noise * anneal)[..., None, None],
            roll=(u[:, 6:8] * (2 * self.jitter + 1)).floor().long().clamp(max=2 * self.jitter) - self.jitter,
            zoom=lo + (hi - lo) * u[:, 8],
            angle=math.radians(o.rotate) * (u[:, 9] * 2 - 1),
        )

    def __call__(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """(G, 3, H, W) images in [0, 1] -> (G * copies, 3, H, W) augmented copies, image-major."""
        x = images.repeat_interleave(self.options.copies, dim=0)
        dev, dt = x.device, x.dtype
        x = (x - draws.shift.to(dev, dt)) / draws.scale.to(dev, dt) + draws.offset.to(dev, dt)
        if self.options.scale is not None or self.options.rotate:
            x = affine(x, draws.zoom.to(dev, dt), draws.angle.to(dev, dt))
        if self.jitter:
            x = roll_each(x, draws.roll.to(dev))
        return x


def roll_each(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll`` of every image by its own (dy, dx), as one gather (deterministic, batched)."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] - shifts[:, :1]) % h  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] - shifts[:, 1:]) % w  # (B, W)
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def affine(x: torch.Tensor, zoom: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Zoom by ``zoom`` (>1 enlarges) and rotate by ``angle`` radians about the centre, per image."""
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _stats(config: BViTConfig, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(config.mean, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=like.device, dtype=like.dtype).view(1, 3, 1, 1)
    return mean, std


def normalize(images: torch.Tensor, config: BViTConfig) -> torch.Tensor:
    """Images in [0, 1] -> the model's input (its mean / std)."""
    mean, std = _stats(config, images)
    return (images - mean) / std

