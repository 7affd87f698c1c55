"""Figures of the per-step readout: accuracy per step for 1..2T steps (paper Fig. 8) and answer flips."""

from __future__ import annotations

import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .figures import subplots


def plot_lens(table: pd.DataFrame, horizons: dict[str, int] | None = None) -> Figure:
    """Accuracy (top) and flip rate (bottom) per step, one line per model; dashed line at each horizon."""
    fig, (ax_acc, ax_flip) = subplots(2, 1, figsize=(6.5, 5.5), sharex=True, height_ratios=(2, 1))
    groups = table.groupby("model", sort=False) if "model" in table else [("model", table)]
    for i, (name, df) in enumerate(groups):
        color = f"C{i}"
        ax_acc.plot(df["step"], df["accuracy"], "-o", ms=3, color=color, label=str(name))
        ax_flip.plot(df["step"], df["flip_rate"], "-o", ms=3, color=color)
        horizon = (horizons or {}).get(str(name))
        if horizon is not None and df["step"].max() > horizon:
            for ax in (ax_acc, ax_flip):
                ax.axvline(horizon + 0.5, color=color, ls="--", lw=0.8)
    ax_acc.set_ylabel("readout accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend(frameon=False, fontsize=8)
    ax_acc.set_title("final norm + head on the CLS state after each step (dashed: trained horizon)", fontsize=9)
    ax_flip.set_ylabel("flip rate vs previous")
    ax_flip.set_xlabel("step (bViT) / block (ViT)")
    ax_flip.set_ylim(0, None)
    return fig
