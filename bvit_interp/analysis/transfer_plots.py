"""Figures of the transfer experiment (Sec. 4.3, Table 4): accuracy vs trainable parameters, per-epoch histories."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..transfer.methods import METHOD_LABELS, METHODS
from .figures import subplots

MARKERS = {"linear_probe": "o", "full_finetune": "s", "lora_qv": "^", "lora_ffn": "v", "time_embedding_tuning": "D"}


def _datasets(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["dataset"])) if "dataset" in df else [""]


def plot_accuracy_vs_params(summary: pd.DataFrame) -> Figure:
    """Accuracy (mean ± std over seeds) against trainable parameters (heads excluded), one panel per dataset.

    Colour: model (bViT vs ViT); marker: method. The x axis is symmetric-log so that the linear
    probe (0 trainable parameters) sits at 0.
    """
    datasets = _datasets(summary)
    fig, axes = subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.0), squeeze=False)
    models = list(dict.fromkeys(summary["model"]))
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = summary[summary["dataset"] == dataset] if dataset else summary
        for i, model in enumerate(models):
            mine = part[part["model"] == model]
            for row in mine.itertuples(index=False):
                ax.errorbar(row.trainable_params, 100 * row.accuracy_mean, yerr=100 * row.accuracy_std,
                            fmt=MARKERS.get(row.method, "o"), color=f"C{i}", ms=7, capsize=3, mec="black", mew=0.5)
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel("trainable parameters (head excluded)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{dataset}" if dataset else "transfer", fontsize=10)
        ax.grid(alpha=0.3)
    handles = [axes[0][0].plot([], [], "-", color=f"C{i}", label=m)[0] for i, m in enumerate(models)]
    used = [m for m in METHODS if m in set(summary["method"])]
    handles += [axes[0][0].plot([], [], MARKERS[m], color="gray", mec="black", mew=0.5, label=METHOD_LABELS[m])[0]
                for m in used]
    axes[0][-1].legend(handles=handles, frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Transfer: accuracy vs trainable parameters (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_histories(history: pd.DataFrame, value: str = "val_accuracy") -> Figure:
    """``value`` per epoch (mean over seeds), one panel per (dataset, model), one line per method."""
    datasets = _datasets(history)
    models = list(dict.fromkeys(history["model"]))
    fig, axes = subplots(len(datasets), len(models), figsize=(4.2 * len(models), 3.2 * len(datasets)),
                         squeeze=False, sharey=True)
    for r, dataset in enumerate(datasets):
        for c, model in enumerate(models):
            ax = axes[r][c]
            part = history[(history["model"] == model) & ((history["dataset"] == dataset) if dataset else True)]
            for method in [m for m in METHODS if m in set(part["method"])]:
                curve = part[part["method"] == method].groupby("epoch", as_index=False)[value].mean().dropna()
                ax.plot(curve["epoch"], curve[value], marker=MARKERS[method], ms=4, label=METHOD_LABELS[method])
            ax.set_title(f"{model} · {dataset}" if dataset else model, fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel(value.replace("_", " "))
    axes[0][-1].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig
