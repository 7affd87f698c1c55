"""Figures of the rank analysis: Fig. 6 (rank per matrix vs step/block) and Fig. 7 (accuracy vs rank).

Both take the tables of ``bvit_interp.analysis.rank`` (with a ``model`` column when they
hold several models) and return matplotlib figures on an Agg canvas, built without pyplot
so that importing this module never changes the caller's backend (notebooks, Streamlit).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .rank import MEASURES, WEIGHT_MATRICES

MEASURE_LABELS = {"energy_rank": "energy rank", "stable_rank": "stable rank", "entropy_rank": "entropy eff. rank"}


def _agg_figure(size: tuple[float, float]) -> Figure:
    """A figure attached to its own Agg canvas (no pyplot state, any thread)."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _by_model(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(name, rows) per model; a table without a ``model`` column is one unnamed model."""
    if "model" not in df.columns:
        return [("model", df)]
    return [(str(name), rows) for name, rows in df.groupby("model", sort=False)]


def _colours(names: list[str]) -> dict[str, tuple[float, ...]]:
    """One stable colour per model name, shared by every panel."""
    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _weight_steps(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Unrolled (1-based step, value) points of one model's per-block values: block b acts at steps b+1, b+1+B, ..."""
    depth = int(rows["depth"].iloc[0])
    num_blocks = int(rows["block"].max()) + 1
    value = rows.set_index("block")["value"]
    steps = np.arange(1, depth + 1)
    return steps, value.loc[(steps - 1) % num_blocks].to_numpy()


def rank_figure(weights: pd.DataFrame, cls: pd.DataFrame | None = None, measure: str = "energy_rank") -> Figure:
    """Fig. 6: ``measure`` of q, k, v, proj, fc1, fc2 (and CLS states) vs unrolled step, one line per model.

    A bViT's shared block acts at every step, so its weight ranks are flat lines; a ViT's
    block b is step b+1. The dotted grey line is the matrix's full rank.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    whole = weights[weights["head"].isna()] if "head" in weights.columns else weights
    panels: list[tuple[str, pd.DataFrame]] = [(m, whole[whole["matrix"] == m]) for m in WEIGHT_MATRICES]
    if cls is not None:
        panels += [(f"CLS {'centred' if c else 'uncentred'}", cls[cls["centred"] == c]) for c in (False, True)]
    names = [name for name, _ in _by_model(weights)]
    if cls is not None:
        names += [n for n, _ in _by_model(cls) if n not in names]
    colours = _colours(names)
    ncols = 4
    nrows = -(-len(panels) // ncols)
    fig = _agg_figure((3.4 * ncols, 2.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    threshold = float(weights["threshold"].iloc[0]) if "threshold" in weights.columns else None
    for ax, (title, table) in zip(axes.flat, panels, strict=False):
        full = 0
        for name, rows in _by_model(table):
            rows = rows.assign(value=rows[measure])
            if "step" in rows.columns:
                steps, values = rows["step"].to_numpy(), rows["value"].to_numpy()
            else:
                steps, values = _weight_steps(rows)
            full = max(full, int(rows["full_rank"].max()))
            ax.plot(steps, values, marker="o", ms=3, lw=1.5, color=colours[name], label=name)
        if full:
            ax.axhline(full, color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step / block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel(MEASURE_LABELS[measure])
    handles, labels = axes.flat[0].get_legend_handles_labels()
    suffix = f" ({threshold:.0%} energy)" if measure == "energy_rank" and threshold is not None else ""
    fig.suptitle(f"{MEASURE_LABELS[measure]}{suffix} per matrix and step (dotted: full rank)")
    # Fixed spacing instead of tight_layout: as readable here and several times faster to lay out.
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.86, wspace=0.3, hspace=0.5)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=max(1, len(labels)), frameon=False)
    return fig


def truncation_figure(sweep: pd.DataFrame) -> Figure:
    """Fig. 7: accuracy vs truncation rank, one line per model (and matrix set); dashed = unmodified model."""
    fig = _agg_figure((5.5, 3.8))
    ax = fig.subplots()
    models = _by_model(sweep)
    colours = _colours([name for name, _ in models])
    styles = ["-", "--", "-.", ":"]
    for name, rows in models:
        for i, (mats, group) in enumerate(rows.groupby("matrices", sort=False)):
            group = group.sort_values("rank")
            label = name if rows["matrices"].nunique() == 1 else f"{name} ({mats})"
            ax.plot(group["rank"], group["accuracy"], marker="o", ms=4, ls=styles[i % len(styles)],
                    color=colours[name], label=label)
        base = rows["baseline_accuracy"].iloc[0]
        if np.isfinite(base):
            ax.axhline(base, color=colours[name], ls=(0, (2, 3)), lw=1)
    mats = ", ".join(sweep["matrices"].unique())
    ax.set_xlabel("rank r of the truncated matrices")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(f"zero-shot truncated SVD of {mats} (dashed: full model)", fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    return fig
