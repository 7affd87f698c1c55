"""Figures of step-masked pruning: Fig. 5 (step utilization vs sparsity) and Fig. 14 A-F.

The x axis is the pruning round, labelled with the overall mask-level sparsity, so rounds
stay evenly spaced although sparsity grows geometrically. Dotted black lines and the
lower row of Fig. 5 are the expectations for random masks of the same densities.
"""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .figures import subplots
from .pruning import ALL  # noqa: E402

PANEL_TYPES = {"A": ("qkv", "MHSA qkv"), "B": ("proj", "MHSA projection"), "C": ("fc1", "FFN in (fc1)"), "D": ("fc2", "FFN out (fc2)")}


def _sparsity_axis(ax: Axes, summary: pd.DataFrame) -> None:
    """Ticks at rounds, labelled 'round\\nsparsity%' (thinned to at most ~10 labels)."""
    overall = summary[summary["layer_type"] == ALL].sort_values("round")
    rounds = overall["round"].to_numpy()
    every = max(1, int(np.ceil(len(rounds) / 10)))
    ticks = rounds[::every]
    labels = [f"{r}\n{100 * s:.1f}%" for r, s in zip(ticks, overall["mask_sparsity"].to_numpy()[::every], strict=True)]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_xlabel("round / mask sparsity", fontsize=8)
    ax.grid(alpha=0.3)


def utilization_figure(util: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Fig. 5: share of used weights by number of steps using them, per layer type, vs sparsity."""
    types = list(util["layer_type"].unique())
    steps = int(util["utilization"].max())
    cmap = plt.get_cmap("viridis", steps)
    fig, axes = subplots(2, len(types), figsize=(3.2 * len(types), 6.5), sharey=True, squeeze=False,
                             layout="constrained")
    for col, kind in enumerate(types):
        g = util[(util["layer_type"] == kind) & (util["utilization"] > 0)]
        for row, (column, title) in enumerate((("fraction_of_used", "observed"), ("fraction_of_used_random", "random masks"))):
            mat = g.pivot(index="round", columns="utilization", values=column).fillna(0.0)
            ax = axes[row, col]
            bottom = np.zeros(len(mat))
            for k in mat.columns:
                ax.bar(mat.index, mat[k], bottom=bottom, width=0.9, color=cmap(k - 1))
                bottom += mat[k].to_numpy()
            ax.set_ylim(0, 1)
            ax.set_title(f"{kind}: {title}", fontsize=9)
            _sparsity_axis(ax, summary)
    axes[0, 0].set_ylabel("share of used weights")
    axes[1, 0].set_ylabel("share of used weights")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0.5, steps + 0.5))
    fig.colorbar(sm, ax=axes, ticks=range(1, steps + 1), label="steps using the weight", fraction=0.02)
    fig.suptitle("Step utilization of the shared block's weights (paper Fig. 5)")
    return fig


def _specialization_panel(ax: Axes, steps_df: pd.DataFrame, summary: pd.DataFrame, kind: str, title: str) -> None:
    g = steps_df[steps_df["layer_type"] == kind]
    steps = int(g["step"].max())
    cmap = plt.get_cmap("plasma", steps + 1)
    for step, gs in g.groupby("step"):
        gs = gs.sort_values("round")
        ls = "-" if step <= (steps + 1) // 2 else "--"
        ax.plot(gs["round"], gs["specialization"], ls, color=cmap(step - 1), lw=1.2, label=f"step {step}")
        empty = gs[gs["empty"]]
        ax.plot(empty["round"], np.ones(len(empty)), "x", color=cmap(step - 1), ms=5)
    rand = g.groupby("round")["specialization_random"].mean()
    ax.plot(rand.index, rand.to_numpy(), ":", color="k", lw=1.5, label="random masks")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("specialization (Eq. 12)", fontsize=8)
    _sparsity_axis(ax, summary)


def _accuracy_panel(ax: Axes, rounds: pd.DataFrame, summary: pd.DataFrame, title: str) -> None:
    ax.plot(rounds["round"], rounds["train_acc"], "o-", ms=3, label="train")
    ax.plot(rounds["round"], rounds["val_acc"], "o-", ms=3, label="val")
    if "val_acc_random" in rounds and rounds["val_acc_random"].notna().any():
        ax.plot(rounds["round"], rounds["val_acc_random"], "s:", ms=3, color="k", label="val, random masks")
    ax.axhline(rounds["chance"].iloc[0], color="grey", lw=1, ls="--", label="chance")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _sparsity_axis(ax, summary)


def _jaccard_panel(ax: Axes, summary: pd.DataFrame, title: str) -> None:
    for i, (kind, g) in enumerate(summary.groupby("layer_type", sort=False)):
        g = g.sort_values("round")
        style = {"color": "k", "lw": 2} if kind == ALL else {"color": f"C{i}", "lw": 1}
        ax.plot(g["round"], g["jaccard"], "-", label=kind, **style)
        if kind == ALL:
            ax.plot(g["round"], g["jaccard_random"], ":", color="k", lw=1.5, label="random masks")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _sparsity_axis(ax, summary)


def pruning_figure(steps_df: pd.DataFrame, summary: pd.DataFrame, rounds: pd.DataFrame) -> Figure:
    """Fig. 14 A-F: specialization per step for qkv, proj, fc1, fc2; accuracy; Jaccard."""
    fig, axes = subplots(2, 3, figsize=(15, 8.5))
    flat = axes.ravel()
    present = set(steps_df["layer_type"])
    for ax, (letter, (kind, title)) in zip(flat[:4], PANEL_TYPES.items(), strict=True):
        if kind in present:
            _specialization_panel(ax, steps_df, summary, kind, f"{letter}  {title}")
        else:
            ax.set_axis_off()
    _accuracy_panel(flat[4], rounds, summary, "E  accuracy")
    _jaccard_panel(flat[5], summary, "F  mean pairwise Jaccard between step masks (Eq. 11)")
    handles, labels = next(ax for ax in flat[:4] if ax.axison).get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 13), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.03))
    fig.suptitle("Step-masked RTL pruning (paper Fig. 14); x = empty mask (step fully pruned in that layer)")
    fig.tight_layout()
    return fig
