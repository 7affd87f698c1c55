"""Figures of the CLS trajectories: per-class panels coloured by step (paper Fig. 9) and class centroid paths."""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .figures import subplots


def plot_class_panels(points: pd.DataFrame, title: str = "", max_cols: int = 5, max_panels: int = 20) -> Figure:
    """One panel per class (the first ``max_panels`` labels): all points in grey, the class coloured by step, its centroid path."""
    classes = points[["label", "class"]].drop_duplicates().sort_values("label").head(max_panels)
    n = len(classes)
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4), squeeze=False,
                             sharex=True, sharey=True)
    steps = int(points["step"].max())
    norm = matplotlib.colors.Normalize(vmin=1, vmax=steps)
    cmap = plt.get_cmap("viridis")
    for ax, (label, name) in zip(axes.flat, classes.itertuples(index=False), strict=False):
        ax.scatter(points["x"], points["y"], s=1, c="0.88", rasterized=True)
        own = points[points["label"] == label]
        ax.scatter(own["x"], own["y"], s=3, c=own["step"], cmap=cmap, norm=norm, rasterized=True)
        path = own.groupby("step")[["x", "y"]].mean()
        ax.plot(path["x"], path["y"], "-o", color="k", lw=0.8, ms=2)
        ax.set_title(str(name), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[n:]:
        ax.axis("off")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8, label="step")
    if title:
        fig.suptitle(title)
    return fig


def plot_centroids(centroids: pd.DataFrame, title: str = "") -> Figure:
    """All class centroid paths in one panel: a line per class from step 1 (circle) to the last step (arrow)."""
    fig, ax = subplots(figsize=(5.5, 5))
    cmap = plt.get_cmap("tab10" if centroids["label"].nunique() <= 10 else "tab20")
    for i, ((_, name), path) in enumerate(centroids.sort_values("step").groupby(["label", "class"], sort=True)):
        color = cmap(i % cmap.N)
        ax.plot(path["x"], path["y"], "-", color=color, lw=1.2, label=str(name))
        ax.plot(path["x"].iloc[0], path["y"].iloc[0], "o", color=color, ms=4)
        if len(path) > 1:
            ax.annotate("", xy=(path["x"].iloc[-1], path["y"].iloc[-1]),
                        xytext=(path["x"].iloc[-2], path["y"].iloc[-2]),
                        arrowprops={"arrowstyle": "->", "color": color})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="best", frameon=False)
    ax.set_title(title or "class centroids across steps (o = step 1)")
    return fig
