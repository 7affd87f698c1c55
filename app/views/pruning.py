"""Pruning: per round sparsity, overlap and specialization of the step masks; per step density and overlap."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from lib import charts
from lib.runs import int_values
from lib.ui import (
    PageContext,
    analysis_page,
    generic_sections,
    guard,
    page_footer,
    step_picker,
    steps_and_heads,
)

RANDOM = "_random"


def with_random(df: pd.DataFrame, x: str, cols: list[str]) -> pd.DataFrame:
    """Long table of ``cols`` and their ``*_random`` controls over ``x``."""
    parts = []
    for c in cols:
        if c in df:
            parts.append(df.assign(measure=c, value=df[c]))
        if c + RANDOM in df:
            parts.append(df.assign(measure=c + " (random)", value=df[c + RANDOM]))
    return pd.concat(parts) if parts else pd.DataFrame(columns=[x, "measure", "value"])


def render(ctx: PageContext) -> None:
    """The pruning page body."""
    steps, _ = steps_and_heads(ctx, ["steps"])
    step = step_picker(steps)
    summary = pd.DataFrame()
    if ctx.has_table("summary"):
        with guard("the rounds"):
            summary = ctx.table("summary")
    rounds = int_values(summary, "round")
    rnd = st.sidebar.select_slider("Round", rounds, value=rounds[-1], key="pruning_round") if len(rounds) > 1 else (
        rounds[0] if rounds else None)
    kinds = sorted(summary["layer_type"].unique().tolist()) if "layer_type" in summary else []
    kind = st.sidebar.selectbox("Layer type", kinds, index=kinds.index("all") if "all" in kinds else 0,
                                key="pruning_kind") if kinds else None
    if len(summary) and kind is not None:
        with guard("the rounds"):
            s = summary[summary["layer_type"] == kind]
            charts.show(charts.step_lines(with_random(s, "round", ["weight_sparsity", "jaccard", "specialization"]),
                                              "round", "value", "measure", rnd,
                                              f"Per round ({kind} layers; (random): the same densities with random masks)", "value"))
    left, right = st.columns(2)
    if ctx.has_table("steps") and rnd is not None and step is not None:
        with left, guard("the per-step densities"):
            st_ = ctx.table("steps")
            at = st_[(st_["round"] == rnd) & (st_["layer_type"] == kind)] if kind is not None else st_[st_["round"] == rnd]
            charts.show(charts.bars(at, "step", "density", step, f"Mask density per step, round {rnd}"))
            row = at[at["step"] == step]
            if len(row):
                r = row.iloc[0]
                st.caption(f"Step {step}: density {r['density']:.3f}, {int(r['exclusive'])} weights used by no other "
                           f"step, specialization {r['specialization']:.3f} (random {r['specialization_random']:.3f}).")
    if ctx.has_table("pairs") and rnd is not None:
        with right, guard("the step overlaps"):
            pairs = ctx.table("pairs")
            at = pairs[(pairs["round"] == rnd) & (pairs["layer_type"] == kind)] if kind is not None else pairs
            both = pd.concat([at, at.rename(columns={"step_i": "step_j", "step_j": "step_i"})])
            chart = alt.Chart(both).mark_rect().encode(
                x="step_i:O", y="step_j:O", color=alt.Color("jaccard:Q", scale=alt.Scale(scheme="viridis")),
                tooltip=["step_i", "step_j", alt.Tooltip("jaccard:Q", format=".3f"),
                         alt.Tooltip("jaccard_random:Q", format=".3f")]).properties(
                title=f"Jaccard overlap of step masks, round {rnd}", height=300)
            charts.show(chart)
    if ctx.has_table("rounds"):
        with guard("the accuracies"):
            r = ctx.table("rounds")
            cols = [c for c in ("train_acc", "val_acc", "val_acc_random") if c in r and r[c].notna().any()]
            if cols:
                long = pd.concat([r.assign(measure=c, value=r[c].astype(float)) for c in cols])
                charts.show(charts.step_lines(long, "round", "value", "measure", rnd, "Accuracy per round",
                                                  "accuracy"))
    generic_sections(ctx, step, None)
    page_footer(ctx)


page = analysis_page("pruning")
if page is not None:
    render(page)
