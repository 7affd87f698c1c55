"""Ablation: accuracy drop per (step, head) when one head is removed at one step; whole-step skips."""

from __future__ import annotations

import streamlit as st
from lib import charts
from lib.ui import (
    PageContext,
    analysis_page,
    apply_selection,
    generic_sections,
    guard,
    head_picker,
    page_footer,
    step_picker,
    steps_and_heads,
)


def render(ctx: PageContext) -> None:
    """The ablation page body."""
    steps, heads = steps_and_heads(ctx, ["head_ablation", "step_ablation"])
    step, head = step_picker(steps), head_picker(heads)
    if ctx.has_table("head_ablation") and step is not None and head is not None:
        with guard("the ablation map"):
            ha = ctx.table("head_ablation")
            modes = sorted(ha["mode"].unique().tolist()) if "mode" in ha else []
            mode = st.sidebar.selectbox("Ablation", modes, key="ablation_mode",
                                        help="zero: the head's output set to 0; mean: to its mean over images")
            sub = ha[ha["mode"] == mode] if mode is not None else ha
            value = "drop" if "drop" in sub else "accuracy"
            cell = sub[(sub["step"] == step) & (sub["head"] == head)]
            m = st.columns(3)
            if len(cell):
                c = cell.iloc[0]
                m[0].metric(f"Accuracy drop, step {step} head {head}", f"{c[value]:+.3f}")
                if "accuracy" in c:
                    m[1].metric("Accuracy with the head removed", f"{c['accuracy']:.3f}")
                if "ce_increase" in c:
                    m[2].metric("Cross-entropy increase", f"{c['ce_increase']:+.3f}")
            lo, hi = float(sub[value].min()), float(sub[value].max())
            bound = max(abs(lo), abs(hi), 1e-6)
            chart = charts.step_head_heatmap(sub, value, step, head, f"{mode} ablation: {value} (click a cell)",
                                             domain=(-bound, bound), scheme="redblue", fmt=".2f", reverse=True,
                                             tooltip=("accuracy", "ce_increase"))
            event = charts.show(chart, on_select="rerun", selection_mode=charts.CELL, key="ablation_heatmap")
            apply_selection(event, charts.CELL, "_ablation_cell")
            st.caption("Red: accuracy lost when the head is removed at that step; blue: accuracy gained.")
    if ctx.has_table("step_ablation") and step is not None:
        with guard("the step skips"):
            sa = ctx.table("step_ablation")
            if "drop" in sa:
                charts.show(charts.bars(sa, "step", "drop", step, "Accuracy drop when the whole step is skipped"))
    generic_sections(ctx, step, head)
    page_footer(ctx)


page = analysis_page("ablation")
if page is not None:
    render(page)
