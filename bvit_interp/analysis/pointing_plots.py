"""Figures of the pointing game: Fig. 4a/4b curves, step x head heatmaps, Fig. 13 attention overlays."""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # noqa: E402

from ..data.sources import PointingSource
from ..model import BViT
from .figures import subplots
from .pointing import PointingOptions, attention_maps


def curves_figure(summary: pd.DataFrame, average: str = "micro") -> Figure:
    """Mean over heads (a) and best head (b) hit rate per step, with chance and centre baselines.

    The band is the summary's interval: Wilson for micro rates, bootstrap over classes for macro rates.
    """
    fig, axes = subplots(1, 2, figsize=(10, 3.8), sharey=True)
    models = summary["model"].unique() if "model" in summary else [None]
    for i, model in enumerate(models):
        g = summary if model is None else summary[summary["model"] == model]
        colour = f"C{i}"
        axes[0].plot(g["step"], g["mean_over_heads"], "o-", color=colour, label=model)
        axes[1].plot(g["step"], g["best_rate"], "o-", color=colour, label=model)
        axes[1].fill_between(g["step"], g["best_ci_low"], g["best_ci_high"], color=colour, alpha=0.15)
        for ax in axes:
            ax.axhline(g["chance"].iloc[0], color=colour, ls=":", lw=1)
            ax.axhline(g["centre"].iloc[0], color=colour, ls="--", lw=1, alpha=0.6)
    axes[0].set_title("(a) mean hit rate over heads")
    interval = "95% Wilson CI" if average == "micro" else "macro; 95% bootstrap CI over classes"
    axes[1].set_title(f"(b) best head per step ({interval})")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pointing-game hit rate")
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="k", ls=":"), plt.Line2D([], [], color="k", ls="--")]
    labels += ["chance (mask area)", "centre point"]
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig


def heatmap_figure(hit_rates: pd.DataFrame, model: str | None = None, column: str = "rate") -> Figure:
    """Step x head hit-rate matrix of one model (Figs. 10-12)."""
    g = hit_rates if model is None else hit_rates[hit_rates["model"] == model]
    mat = g.pivot(index="step", columns="head", values=column)
    fig, ax = subplots(figsize=(1.2 + 0.45 * mat.shape[1], 1 + 0.35 * mat.shape[0]))
    im = ax.imshow(mat.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(mat.to_numpy()):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    ax.set_xticks(range(mat.shape[1]), mat.columns)
    ax.set_yticks(range(mat.shape[0]), mat.index)
    ax.set_xlabel("head")
    ax.set_ylabel("step")
    ax.set_title(f"pointing game: {model or ''}")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def overlay_figure(
    images: list[np.ndarray],
    masks: list[np.ndarray],
    maps: np.ndarray,
    points: np.ndarray,
    hits: np.ndarray,
    steps: list[int],
    title: str,
) -> Figure:
    """Attention maps of one head over steps for a few images (Fig. 13): rows = images, cols = steps.

    ``maps`` is (images, steps, H, W) already upsampled to the image; ``points`` (images, steps, 2).
    """
    n_img, n_steps = maps.shape[:2]
    fig, axes = subplots(n_img, n_steps + 1, figsize=(1.6 * (n_steps + 1), 1.6 * n_img), squeeze=False)
    for r in range(n_img):
        axes[r, 0].imshow(images[r])
        axes[r, 0].contour(masks[r], levels=[0.5], colors="w", linewidths=0.8)
        for c in range(n_steps):
            ax = axes[r, c + 1]
            ax.imshow(images[r])
            ax.imshow(maps[r, c], cmap="inferno", alpha=0.6)
            ax.contour(masks[r], levels=[0.5], colors="c", linewidths=0.6)
            ax.plot(*points[r, c], marker="x", color="lime" if hits[r, c] else "red", ms=6, mew=2)
            if r == 0:
                ax.set_title(f"step {steps[c]}", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def overlay_for_best_head(
    model: BViT,
    source: PointingSource,
    options: PointingOptions,
    summary: pd.DataFrame,
    images: pd.DataFrame,
    n_images: int = 4,
    n_steps: int = 6,
    device: str | torch.device = "cpu",
) -> Figure:
    """Fig. 13: attention of the overall best head over steps on a few images (model-crop frame).

    The maps, points and hits are ``pointing.attention_maps`` (the pipeline the app shows too).
    """
    best = summary.loc[summary["best_rate"].idxmax()]
    head = int(best["best_head"])
    cfg = model.config
    att = attention_maps(model, source, [int(i) for i in images["image_index"].head(n_images)], options, device)
    n_layers = att.maps.shape[1]
    chosen = sorted({int(round(v)) for v in np.linspace(0, n_layers - 1, min(n_steps, n_layers))})
    maps = torch.from_numpy(att.maps[:, chosen, head])  # (B, S, g, g)
    up = F.interpolate(maps.flatten(0, 1)[:, None], size=(cfg.img_size, cfg.img_size), mode="nearest")
    up = up.reshape(len(att.indices), len(chosen), cfg.img_size, cfg.img_size).numpy()
    pts = att.points[:, chosen, head] - 0.5  # continuous crop pixels -> imshow's pixel-centre coordinates
    title = f"{cfg.name}: head {head} (best at step {int(best['step'])}, hit rate {best['best_rate']:.2f})"
    return overlay_figure(list(att.images), list(att.masks.astype(float)), up, pts, att.hits[:, chosen, head],
                          [s + 1 for s in chosen], title)
