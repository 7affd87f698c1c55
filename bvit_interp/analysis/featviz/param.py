"""Image parameterizations: what the optimiser changes, and how it becomes an RGB image in [0, 1].

- ``pixel``: raw pixels, clamped to [0, 1] after every optimiser step (Ghiasi et al. 2022, the
  recipe behind the paper's Fig. 3), initialised uniform in [0, 1] as theirs.
- ``pixel-sigmoid``: pixels as logits through a sigmoid (always in range, no projection).
- ``spectral``: Lucid/lucent's Fourier parameterization, scaled by 1/f so all frequencies learn
  at a similar rate, with the decorrelated colour space of ImageNet and a sigmoid.

Every parameterization draws its initial values from one ``torch.Generator`` per target (on the
CPU, in float64, then cast), so a target starts from the same image however targets are batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

PARAMS = ("pixel", "pixel-sigmoid", "spectral")

# Square root of the ImageNet colour correlation matrix (Lucid), normalised by its largest column norm.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float64)
COLOR_DECORRELATION = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


class ImageParam(nn.Module):
    """A batch of learnable images; ``forward()`` returns (B, 3, H, W) in [0, 1]."""

    def project_(self) -> None:
        """Bring the parameters back into their valid set after an optimiser step (default: nothing)."""


class PixelParam(ImageParam):
    """Pixels in [0, 1]: ``clamp`` keeps raw pixels and projects them (Ghiasi); ``sigmoid`` uses logits."""

    def __init__(self, uniform: torch.Tensor, mode: str = "clamp") -> None:
        super().__init__()
        if mode not in ("clamp", "sigmoid"):
            raise ValueError(f"pixel mode must be 'clamp' or 'sigmoid', got {mode!r}")
        self.mode = mode
        # Sigmoid: the same uniform draws mapped through the logit, kept away from saturation.
        init = uniform if mode == "clamp" else torch.logit(0.05 + 0.9 * uniform)
        self.pixels = nn.Parameter(init.clone())

    def forward(self) -> torch.Tensor:
        return self.pixels if self.mode == "clamp" else torch.sigmoid(self.pixels)

    @torch.no_grad()
    def project_(self) -> None:
        if self.mode == "clamp":
            self.pixels.clamp_(0.0, 1.0)


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Radial frequency (cycles per pixel) of every entry of a real 2-D FFT of an h x w image."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class SpectralParam(ImageParam):
    """Lucid's spectral image: 1/f^decay-scaled Fourier coefficients -> decorrelated colour -> sigmoid."""

    def __init__(self, normal: torch.Tensor, size: int, sd: float = 0.01, decay_power: float = 1.0) -> None:
        super().__init__()
        self.size = size
        self.spectrum = nn.Parameter(normal * sd)  # (B, 3, H, W // 2 + 1, 2): real and imaginary parts
        freqs = rfft2d_freqs(size, size)
        scale = 1.0 / np.maximum(freqs, 1.0 / size) ** decay_power
        self.register_buffer("scale", torch.as_tensor(scale, dtype=normal.dtype)[..., None], persistent=False)
        self.register_buffer("colour", torch.as_tensor(COLOR_DECORRELATION, dtype=normal.dtype), persistent=False)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex((self.spectrum * self.scale).contiguous())
        image = torch.fft.irfftn(spectrum, s=(self.size, self.size), norm="ortho") / 4.0  # Lucid's constant
        image = torch.einsum("bchw,dc->bdhw", image, self.colour)
        return torch.sigmoid(image)


def make_param(
    kind: str,
    generators: Sequence[torch.Generator],
    images_per_target: int,
    size: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ImageParam:
    """The parameterization ``kind`` for ``images_per_target`` images per generator (target), in order."""
    if kind not in PARAMS:
        raise ValueError(f"param {kind!r}: choose one of {PARAMS}")
    n = images_per_target
    if kind == "spectral":
        shape = (n, 3, size, size // 2 + 1, 2)
        draws = torch.cat([torch.randn(shape, generator=g, dtype=torch.float64) for g in generators])
        return SpectralParam(draws.to(device=device, dtype=dtype), size).to(device)
    shape = (n, 3, size, size)
    draws = torch.cat([torch.rand(shape, generator=g, dtype=torch.float64) for g in generators])
    return PixelParam(draws.to(device=device, dtype=dtype), "clamp" if kind == "pixel" else "sigmoid")
