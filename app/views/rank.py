"""Rank: energy ranks of the weights (per head) and of the CLS state per step; truncated-SVD sweeps."""

from __future__ import annotations

import streamlit as st
from lib import charts
from lib.ui import (
    PageContext,
    analysis_page,
    generic_sections,
    guard,
    head_picker,
    page_footer,
    step_picker,
    steps_and_heads,
)

MEASURES = ("energy_rank", "stable_rank", "entropy_rank")


def cls_view(ctx: PageContext, step: int, measure: str) -> None:
    """Rank of the CLS-token matrix per step (centred and uncentred)."""
    cls = ctx.table("cls_ranks")
    if measure not in cls:
        return
    cls = cls.assign(matrix=cls["centred"].map({True: "centred", False: "uncentred"}) if "centred" in cls else "CLS")
    charts.show(charts.step_lines(cls, "step", measure, "matrix", step, f"CLS state: {measure} per step"))
    row = cls[cls["step"] == step]
    if len(row):
        st.caption(" · ".join(f"{r.matrix}: {getattr(r, measure):.1f} of {r.full_rank}" for r in row.itertuples())
                   + f" at step {step}")


def weight_view(ctx: PageContext, head: int | None, measure: str) -> None:
    """Ranks of whole weight matrices, and per-head q/k/v/o ranks of the chosen head."""
    w = ctx.table("weight_ranks")
    if measure not in w:
        return
    whole = w[w["head"].isna()] if "head" in w else w
    left, right = st.columns(2)
    with left:
        charts.show(charts.bars(whole.assign(block=whole["block"].astype(str)), "matrix", measure, None,
                                    f"Whole matrices: {measure} (colour: block)", color="block"))
    if head is not None and "head" in w:
        per = w[w["head"] == head]
        with right:
            charts.show(charts.bars(per.assign(block=per["block"].astype(str)), "matrix", measure, None,
                                        f"Head {head}: {measure} of its q, k, v, o slices", color="block"))


def sweep_view(ctx: PageContext) -> None:
    """Accuracy after truncating the chosen matrices to rank r."""
    sw = ctx.table("sweep")
    if not {"rank", "accuracy"} <= set(sw.columns) or sw.empty:
        return
    series = "matrices" if "matrices" in sw else None
    base = float(sw["baseline_accuracy"].iloc[0]) if "baseline_accuracy" in sw else None
    charts.show(charts.step_lines(sw, "rank", "accuracy", series, None, "Zero-shot truncated-SVD sweep",
                                      "accuracy", rules={"full rank": base} if base is not None else None))


def render(ctx: PageContext) -> None:
    """The rank page body."""
    steps, heads = steps_and_heads(ctx, ["cls_ranks", "weight_ranks"])
    step, head = step_picker(steps), head_picker(heads)
    measure = st.sidebar.selectbox("Rank measure", MEASURES, key="rank_measure",
                                   help="energy: smallest k holding 95% of the squared singular values")
    if ctx.has_table("cls_ranks") and step is not None:
        with guard("the CLS ranks"):
            cls_view(ctx, step, measure)
    if ctx.has_table("weight_ranks"):
        with guard("the weight ranks"):
            weight_view(ctx, head, measure)
    if ctx.has_table("sweep"):
        with guard("the sweep"):
            sweep_view(ctx)
    generic_sections(ctx, step, head)
    page_footer(ctx)


page = analysis_page("rank")
if page is not None:
    render(page)
