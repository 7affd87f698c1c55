"""Figures of the causal analyses: step x head maps of patching and attribution, DLA per step, probe curves.

Every function takes the tables of ``bvit_interp.analysis.causal`` and returns a matplotlib
figure built with ``figures.subplots`` (no pyplot state).
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .causal.activation import ALL_HEADS
from .causal.pairs import ALL
from .causal.probes import TASKS
from .figures import subplots


def _heatmap(ax: object, mat: np.ndarray, steps: list[int], vmax: float, xlabels: list[str] | None = None) -> object:
    """A step x column heatmap on ``ax`` with a symmetric diverging scale; returns the image."""
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")  # type: ignore[attr-defined]
    ax.set_yticks(range(len(steps)), [str(s) for s in steps])  # type: ignore[attr-defined]
    labels = xlabels if xlabels is not None else [str(c) for c in range(mat.shape[1])]
    ax.set_xticks(range(mat.shape[1]), labels, rotation=0 if xlabels is None else 60, fontsize=7)  # type: ignore[attr-defined]
    return im


def _pivot(table: pd.DataFrame, columns: str, value: str) -> tuple[np.ndarray, list[int], list[object]]:
    """(matrix, steps, column labels) of the mean ``value`` with steps as rows (cells without a finite value: NaN)."""
    piv = table.groupby(["step", columns])[value].mean().unstack(columns).sort_index()
    return piv.to_numpy(dtype=float), [int(s) for s in piv.index], list(piv.columns)


def _vmax(mats: list[np.ndarray]) -> float:
    """The largest finite absolute value of the matrices (at least 1e-6: all-NaN maps still draw)."""
    finite = [np.abs(m[np.isfinite(m)]) for m in mats]
    return max([float(f.max()) for f in finite if f.size] + [1e-6])


def plot_step_head_maps(
    panels: Mapping[str, pd.DataFrame], site: str = "attn.z", group: str = ALL, direction: str = "denoising",
    value: str = "mean", title: str = "",
) -> Figure:
    """One step x head heatmap per summary table (e.g. exact patching, attribution patching) on a shared scale."""
    mats = []
    for name, table in panels.items():
        sub = table[(table["site"] == site) & (table["group"] == group) & (table["direction"] == direction)
                    & (table["head"] != ALL_HEADS)]
        if sub.empty:
            raise ValueError(f"panel {name!r} has no per-head rows for {site!r}, {group!r}, {direction!r}")
        mats.append((name, *_pivot(sub, "head", value)))
    vmax = _vmax([m for _, m, _, _ in mats])
    n = len(mats)
    fig, axes = subplots(1, n, figsize=(2.6 * n + 1.2, 4.0), squeeze=False, layout="constrained")
    im = None
    for ax, (name, mat, steps, _) in zip(axes[0], mats, strict=True):
        im = _heatmap(ax, mat, steps, vmax)
        ax.set_xlabel("head")
        ax.set_title(name, fontsize=9)
    axes[0][0].set_ylabel("step (bViT) / block (ViT)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{value} (1 clean, 0 corrupted)")
    fig.suptitle(title or f"{direction}: {site}, tokens {group}", fontsize=10)
    return fig


def plot_site_map(summary: pd.DataFrame, direction: str = "denoising", value: str = "mean", title: str = "") -> Figure:
    """Step x (site, token group) heatmap of the whole-site patches (head -1) of one direction."""
    sub = summary[(summary["direction"] == direction) & (summary["head"] == ALL_HEADS)].copy()
    if sub.empty:
        raise ValueError(f"no whole-site rows for direction {direction!r}")
    sub["cell"] = sub["site"] + " / " + sub["group"]
    mat, steps, cols = _pivot(sub, "cell", value)
    vmax = _vmax([mat])
    fig, ax = subplots(1, 1, figsize=(0.45 * len(cols) + 2.5, 4.2), layout="constrained")
    im = _heatmap(ax, mat, steps, vmax, [str(c) for c in cols])
    ax.set_ylabel("step (bViT) / block (ViT)")
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"{value} (1 clean, 0 corrupted)")
    ax.set_title(title or f"{direction}: site / token group", fontsize=10)
    return fig


def plot_dla(terms: pd.DataFrame, title: str = "") -> Figure:
    """DLA: step x head map of each head's mean direct contribution, and per-step attention / MLP / bias bars."""
    heads = terms[terms["term"] == "head"]
    mat, steps, _ = _pivot(heads, "head", "value")
    pairs = max(terms["pair"].nunique(), 1)
    # per step: the mean over pairs of the summed contribution (all heads together for "head")
    per_step = (terms[terms["step"] > 0].groupby(["term", "step"])["value"].sum() / pairs).unstack(0)
    per_step = per_step.reindex(steps).fillna(0.0)
    fixed = terms[terms["step"] == 0].groupby("term")["value"].sum() / pairs
    fig, (ax_map, ax_bar) = subplots(1, 2, figsize=(9.0, 4.2), layout="constrained",
                                     gridspec_kw={"width_ratios": [1, 1.3]})
    vmax = _vmax([mat])
    im = _heatmap(ax_map, mat, steps, vmax)
    ax_map.set_xlabel("head")
    ax_map.set_ylabel("step (bViT) / block (ViT)")
    ax_map.set_title("direct logit attribution per head", fontsize=9)
    fig.colorbar(im, ax=ax_map, shrink=0.8, label="logit difference")
    y = np.arange(len(steps))
    width = 0.27
    parts = [("head", "attention heads", "C0"), ("mlp", "MLP", "C1"), ("attn_bias", "attn bias", "C7")]
    for k, (term, label, colour) in enumerate(parts):
        if term in per_step:
            ax_bar.barh(y + (k - 1) * width, per_step[term].to_numpy(float), height=width, color=colour, label=label)
    ax_bar.set_yticks(y, [str(s) for s in steps])
    ax_bar.invert_yaxis()
    ax_bar.axvline(0, color="0.5", lw=0.8)
    ax_bar.set_xlabel("mean contribution to the logit difference")
    fixed_text = ", ".join(f"{k} {v:+.2f}" for k, v in fixed.items())
    ax_bar.set_title(f"per step (step-free terms: {fixed_text})", fontsize=8)
    ax_bar.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def plot_direct_indirect(effects: pd.DataFrame, title: str = "") -> Figure:
    """Step x head maps of the total, direct (path patching to the readout) and indirect effect (means over pairs)."""
    names = ("total", "direct", "indirect")
    mats = [(name, *_pivot(effects, "head", name)) for name in names]
    vmax = _vmax([m for _, m, _, _ in mats])
    fig, axes = subplots(1, 3, figsize=(9.0, 4.0), squeeze=False, layout="constrained")
    im = None
    for ax, (name, mat, steps, _) in zip(axes[0], mats, strict=True):
        im = _heatmap(ax, mat, steps, vmax)
        ax.set_xlabel("head")
        ax.set_title(f"{name} effect", fontsize=9)
    axes[0][0].set_ylabel("step (bViT) / block (ViT)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="normalised (1 clean, 0 corrupted)")
    direction = ", ".join(sorted(set(effects["direction"])))
    fig.suptitle(title or f"{direction}: total vs direct vs indirect", fontsize=10)
    return fig


def plot_agreement(exact: pd.DataFrame, approx: pd.DataFrame, value: str = "pooled", title: str = "") -> Figure:
    """Scatter of exact vs approximate (attribution) patching per cell, one colour per site."""
    keys = ["direction", "site", "step", "head", "group"]
    merged = exact.merge(approx, on=keys, suffixes=("_exact", "_approx"))
    fig, ax = subplots(1, 1, figsize=(4.6, 4.2), layout="constrained")
    cmap = matplotlib.colormaps["tab10"]
    for i, (site, rows) in enumerate(merged.groupby("site")):
        ax.scatter(rows[f"{value}_exact"], rows[f"{value}_approx"], s=8, color=cmap(i % 10), label=str(site))
    both = merged[[f"{value}_exact", f"{value}_approx"]].to_numpy(dtype=float)
    finite = both[np.isfinite(both).all(1)]
    if len(finite):
        lo, hi = float(finite.min()), float(finite.max())
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
    ax.set_xlabel(f"exact patching ({value})")
    ax.set_ylabel(f"attribution patching ({value})")
    ax.legend(fontsize=7)
    ax.set_title(title or "attribution vs exact patching", fontsize=10)
    return fig


def plot_probe_curves(probes: pd.DataFrame, title: str = "") -> Figure:
    """Per task: accuracy (solid) and control accuracy (dashed) per step per representation, majority (dotted); selectivity below."""
    tasks = [t for t in TASKS if t in set(probes["task"])]
    fig, axes = subplots(2, len(tasks), figsize=(3.4 * len(tasks), 5.4), squeeze=False, sharex=True,
                         layout="constrained")
    for col, task in enumerate(tasks):
        top, bottom = axes[0][col], axes[1][col]
        rows = probes[probes["task"] == task]
        for i, (rep, r) in enumerate(rows.groupby("representation", sort=False)):
            r = r.sort_values("step")
            colour = f"C{i}"
            top.plot(r["step"], r["accuracy"], "-o", ms=3, color=colour, label=f"{rep}")
            top.plot(r["step"], r["control_accuracy"], "--", color=colour, label=f"{rep} control")
            bottom.plot(r["step"], r["selectivity"], "-o", ms=3, color=colour, label=rep)
        top.axhline(float(rows["majority"].iloc[0]), color="0.5", ls=":", lw=1, label="majority")
        top.set_ylim(0, 1.02)
        top.set_title(task, fontsize=10)
        bottom.axhline(0, color="0.5", lw=0.8)
        bottom.set_xlabel("step (bViT) / block (ViT)")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("test accuracy")
    axes[1][0].set_ylabel("selectivity (acc - control)")
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


__all__ = ["plot_agreement", "plot_direct_indirect", "plot_dla", "plot_probe_curves", "plot_site_map",
           "plot_step_head_maps"]
