"""Figures of the ablation map: step x head accuracy-drop heatmaps per mode and whole-step skips."""

from __future__ import annotations

import matplotlib
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .ablation import drop_matrix  # noqa: E402
from .figures import subplots


def plot_ablation_map(heads: pd.DataFrame, steps: pd.DataFrame, title: str = "") -> Figure:
    """One step x head heatmap of the accuracy drop per head mode, plus a bar per step for skipping it."""
    modes = [m for m in ("zero", "mean", "none") if m in set(heads["mode"])]
    panels = len(modes) + (1 if len(steps) else 0)
    fig, axes = subplots(1, panels, figsize=(2.6 * panels + 1.5, 4.2), squeeze=False, layout="constrained")
    mats = [drop_matrix(heads, mode) for mode in modes]
    vmax = max([float(np.nanmax(np.abs(m))) for m in mats] + [1e-3])
    step_labels = sorted(heads["step"].unique())
    for ax, mode, mat in zip(axes[0], modes, mats, strict=False):
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(mat.shape[1]))
        ax.set_yticks(range(mat.shape[0]), [str(s) for s in step_labels])
        ax.set_xlabel("head")
        ax.set_title(f"{mode} ablation", fontsize=9)
        for (r, c), v in np.ndenumerate(mat):
            if abs(v) >= 0.5 * vmax:
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    axes[0][0].set_ylabel("step (bViT) / block (ViT)")
    fig.colorbar(im, ax=axes[0][: len(modes)].tolist(), shrink=0.8, label="accuracy drop")
    if len(steps):
        ax = axes[0][-1]
        ax.barh(steps["step"], steps["drop"], color="C3")
        ax.invert_yaxis()
        # a common scale with the heatmaps, so a tiny drop reads as tiny
        lo = min(0.0, float(steps["drop"].min()))
        ax.set_xlim(lo * 1.1, max(vmax, float(steps["drop"].max())) * 1.1)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        ax.set_title("skip the step", fontsize=9)
        ax.set_xlabel("accuracy drop")
        ax.set_yticks(steps["step"])
    if title:
        fig.suptitle(title)
    return fig
