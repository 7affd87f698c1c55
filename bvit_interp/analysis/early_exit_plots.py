"""Figures of the early-exit sweep: accuracy vs GFLOPs per model (paper Table 5 as a curve) and exit histograms."""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .figures import subplots


def plot_tradeoff(sweep: pd.DataFrame) -> Figure:
    """Accuracy vs GFLOPs and vs ms per image, one line per model, thresholds annotated; star = no exit."""
    fig, axes = subplots(1, 2, figsize=(10, 4), layout="constrained")
    for i, (name, df) in enumerate(sweep.groupby("model", sort=False)):
        color = f"C{i}"
        exits = df[~df["no_exit"]].sort_values("threshold")
        base = df[df["no_exit"]]
        for ax, x in zip(axes, ("gflops", "ms_per_image"), strict=True):
            ax.plot(exits[x], exits["accuracy"], "-o", ms=3, color=color, label=str(name))
            ax.plot(base[x], base["accuracy"], "*", ms=10, color=color)
            for _, row in exits.iterrows():
                ax.annotate(f"{row['threshold']:g}", (row[x], row["accuracy"]), fontsize=6,
                            xytext=(2, -8), textcoords="offset points")
    axes[0].set_xlabel("GFLOPs per image")
    axes[1].set_xlabel("ms per image (measured)")
    for ax in axes:
        ax.set_ylabel("accuracy")
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle("early exit: threshold sweep (labels: tau; star: model without exit heads)", fontsize=10)
    return fig


def plot_exit_distribution(distribution: pd.DataFrame, title: str = "") -> Figure:
    """Stacked fraction of images exiting at each step, one bar per threshold."""
    wide = distribution.pivot(index="threshold", columns="step", values="fraction").fillna(0.0)
    fig, ax = subplots(figsize=(6.5, 3.8))
    bottom = None
    cmap = plt.get_cmap("viridis")
    for j, step in enumerate(wide.columns):
        ax.bar(range(len(wide)), wide[step], bottom=bottom, color=cmap(j / max(1, len(wide.columns) - 1)),
               label=str(step))
        bottom = wide[step] if bottom is None else bottom + wide[step]
    ax.set_xticks(range(len(wide)), [f"{t:g}" for t in wide.index])
    ax.set_xlabel("threshold")
    ax.set_ylabel("fraction of images")
    ax.legend(title="exit step", fontsize=6, ncol=2, frameon=False, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title(title or "where images exit", fontsize=9)
    return fig
