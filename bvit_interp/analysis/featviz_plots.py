"""Figures for feature visualization: the neurons x steps grid (paper Fig. 3), exemplars, complexity per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .figures import subplots

Cell = tuple[int, int]  # (neuron, step)


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    ax.imshow(np.clip(np.asarray(image).transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax: plt.Axes, patch: int, grid: int, patch_size: int) -> None:
    row, col = divmod(patch, grid)
    ax.add_patch(Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size, patch_size,
                           fill=False, edgecolor="red", linewidth=1.2))


def grid_figure(
    images: Mapping[Cell, np.ndarray],
    labels: Mapping[Cell, str] | None = None,
    patches: Mapping[Cell, int] | None = None,
    patch_size: int | None = None,
    title: str | None = None,
    cell_inches: float = 1.1,
) -> Figure:
    """Rows = neurons, columns = steps (Fig. 3); each cell an image (3, H, W) in [0, 1], an optional
    caption (e.g. the activation ratio) and an optional red box around a patch index."""
    neurons = list(dict.fromkeys(n for n, _ in images))
    steps = sorted({s for _, s in images})
    fig, axes = subplots(len(neurons), len(steps), squeeze=False,
                             figsize=(cell_inches * len(steps) + 0.6, cell_inches * 1.15 * len(neurons) + 0.5))
    for r, neuron in enumerate(neurons):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            cell = (neuron, step)
            if cell not in images:
                ax.axis("off")
                continue
            image = images[cell]
            _show(ax, image)
            if patches is not None and patch_size and cell in patches:
                _box(ax, patches[cell], image.shape[-1] // patch_size, patch_size)
            if labels is not None and cell in labels:
                ax.set_xlabel(labels[cell], fontsize=7, labelpad=2)
            if r == 0:
                ax.set_title(f"step {step}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"neuron {neuron}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def neuron_figure(
    neuron: int,
    steps: Sequence[int],
    optimised: Mapping[int, np.ndarray],
    exemplars: Mapping[int, np.ndarray],
    patches: Mapping[int, Sequence[int]],
    patch_size: int,
    cell_inches: float = 0.9,
) -> Figure:
    """One neuron: a row per step with the optimised image, then its top-k dataset exemplars (peak patch boxed)."""
    k = max(len(exemplars[s]) for s in steps)
    fig, axes = subplots(len(steps), k + 1, squeeze=False,
                             figsize=(cell_inches * (k + 1) + 0.6, cell_inches * len(steps) + 0.5))
    for r, step in enumerate(steps):
        _show(axes[r, 0], optimised[step])
        axes[r, 0].set_ylabel(f"step {step}", fontsize=8)
        for j in range(k):
            ax = axes[r, j + 1]
            if j >= len(exemplars[step]):
                ax.axis("off")
                continue
            image = exemplars[step][j]
            _show(ax, image)
            _box(ax, int(patches[step][j]), image.shape[-1] // patch_size, patch_size)
    axes[0, 0].set_title("optimised", fontsize=8)
    for j in range(k):
        axes[0, j + 1].set_title(f"top {j + 1}", fontsize=8)
    fig.suptitle(f"neuron {neuron}: optimised image and dataset exemplars per step", fontsize=9)
    fig.tight_layout()
    return fig


def complexity_figure(per_step: pd.DataFrame) -> Figure:
    """Mean +- std over neurons of hf_energy, spectral_slope, png_bpp and the activation ratio, per step."""
    panels = [("hf_energy", "high-frequency energy"), ("spectral_slope", "spectrum slope"),
              ("png_bpp", "PNG bits / pixel"), ("ratio", "reached / best real")]
    fig, axes = subplots(1, len(panels), figsize=(3.0 * len(panels), 2.6))
    for ax, (col, name) in zip(axes, panels, strict=True):
        ax.errorbar(per_step["step"], per_step[f"{col}_mean"], yerr=per_step[f"{col}_std"].fillna(0),
                    marker="o", markersize=3, capsize=2)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
