"""Early exit: exit heads per step, the accuracy / compute trade-off over confidence thresholds."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from lib import charts
from lib.ui import (
    PageContext,
    analysis_page,
    generic_sections,
    guard,
    page_footer,
    step_picker,
    steps_and_heads,
)


def render(ctx: PageContext) -> None:
    """The early-exit page body."""
    steps, _ = steps_and_heads(ctx, ["exits", "distribution"])
    step = step_picker(steps)
    if ctx.has_table("sweep"):
        with guard("the threshold sweep"):
            sw = ctx.table("sweep")
            x = "gflops" if "gflops" in sw else "mean_steps"
            tips = [c for c in ("threshold", "accuracy", "mean_steps", "exited_fraction", "gflops", "ms_per_image")
                    if c in sw]
            left, right = st.columns(2)
            with left:
                chart = alt.Chart(sw).mark_line(point=True).encode(
                    x=alt.X(f"{x}:Q", scale=alt.Scale(zero=False)), y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False)),
                    tooltip=tips).properties(title=f"Accuracy against {x} (hover: threshold)", height=300)
                charts.show(chart.interactive())
            with right:
                at = sw.dropna(subset=["threshold"]) if "threshold" in sw else sw
                cols = [c for c in ("accuracy", "exited_fraction") if c in at]
                if "threshold" in at and cols:
                    long = pd.concat([at.assign(measure=c, value=at[c]) for c in cols])
                    charts.show(charts.step_lines(long, "threshold", "value", "measure", None,
                                                  "Accuracy and exited fraction per confidence threshold", "value"))
    left, right = st.columns(2)
    if ctx.has_table("exits") and step is not None:
        with left, guard("the exit heads"):
            ex = ctx.table("exits")
            cols = [c for c in ("accuracy", "lens_accuracy", "auroc", "confidence") if c in ex]
            long = pd.concat([ex.assign(measure=c, value=ex[c]) for c in cols])
            charts.show(charts.step_lines(long, "step", "value", "measure", step, "Exit heads per step", "value"))
    if ctx.has_table("distribution") and step is not None:
        with right, guard("the exit distribution"):
            dist = ctx.table("distribution")
            taus = sorted(dist["threshold"].dropna().unique().tolist()) if "threshold" in dist else []
            if taus:
                tau = st.select_slider("Threshold", options=taus, value=taus[len(taus) // 2], key="ee_tau")
                at = dist[dist["threshold"] == tau]
                charts.show(charts.bars(at, "step", "fraction", step, f"Where images exit at threshold {tau}"))
    generic_sections(ctx, step, None)
    page_footer(ctx)


page = analysis_page("early_exit")
if page is not None:
    render(page)
