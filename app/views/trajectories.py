"""Trajectories: the joint PaCMAP of CLS states, the chosen step over all steps, class centroid paths."""

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


def centroid_paths(cen: pd.DataFrame, step: int) -> alt.LayerChart:
    """Each class's centroid path across steps; the chosen step's centroids enlarged."""
    colour = "class" if "class" in cen else "label"
    lines = alt.Chart(cen).mark_line(opacity=0.7).encode(
        x="x:Q", y="y:Q", color=alt.Color(f"{colour}:N", scale=alt.Scale(scheme="tableau10")), order="step:Q",
        tooltip=[colour, "step", alt.Tooltip("spread:Q", format=".2f")] if "spread" in cen else [colour, "step"])
    start = alt.Chart(cen[cen["step"] == cen["step"].min()]).mark_point(shape="circle", size=60, filled=False).encode(
        x="x:Q", y="y:Q", color=alt.Color(f"{colour}:N", scale=alt.Scale(scheme="tableau10")))
    now = alt.Chart(cen[cen["step"] == step]).mark_point(shape="diamond", size=140, filled=True).encode(
        x="x:Q", y="y:Q", color=alt.Color(f"{colour}:N", scale=alt.Scale(scheme="tableau10")), tooltip=[colour, "step"])
    return alt.layer(lines, start, now).properties(title=f"Class centroids across steps (o = first, ◆ = step {step})",
                                                   height=420).interactive()


def render(ctx: PageContext) -> None:
    """The trajectories page body."""
    steps, _ = steps_and_heads(ctx, ["points", "centroids", "step_stats"])
    step = step_picker(steps)
    if step is not None:
        left, right = st.columns(2)
        if ctx.has_table("points"):
            with left, guard("the embedding"):
                pts = ctx.table("points")
                colour = "class" if "class" in pts else "label"
                charts.show(charts.scatter(pts[pts["step"] == step], "x", "y", colour,
                                               f"CLS states at step {step} (grey: all steps)",
                                               tooltip=("image", colour, "step", "knn_kept"), background=pts))
        if ctx.has_table("centroids"):
            with right, guard("the centroid paths"):
                charts.show(centroid_paths(ctx.table("centroids"), step))
        if ctx.has_table("step_stats"):
            with guard("the per-step statistics"):
                stats = ctx.table("step_stats")
                cols = [c for c in ("cos_prev", "rel_change") if c in stats]
                if cols:
                    long = pd.concat([stats.assign(measure=c, value=stats[c]) for c in cols])
                    charts.show(charts.step_lines(long, "step", "value", "measure", step,
                                                      "How much the CLS state moves per step", "value"))
    generic_sections(ctx, step, None)
    page_footer(ctx)


page = analysis_page("trajectories")
if page is not None:
    render(page)
