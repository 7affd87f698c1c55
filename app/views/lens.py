"""Readout (lens): accuracy of the final norm + head after every step, beyond the trained horizon."""

from __future__ import annotations

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
    """The lens page body."""
    steps, _ = steps_and_heads(ctx, ["lens"])
    step = step_picker(steps)
    if ctx.has_table("lens") and step is not None:
        with guard("the readout curve"):
            lens = ctx.table("lens")
            cols = [c for c in ("accuracy", "confidence", "p_label", "flip_rate") if c in lens]
            long = pd.concat([lens.assign(measure=c, value=lens[c]) for c in cols])
            horizon = None
            if "beyond_horizon" in lens and lens["beyond_horizon"].any():
                horizon = int(lens.loc[~lens["beyond_horizon"].astype(bool), "step"].max())
            row = lens[lens["step"] == step]
            if len(row):
                r = row.iloc[0]
                m = st.columns(4)
                m[0].metric(f"Accuracy after step {step}", f"{r['accuracy']:.3f}")
                if "confidence" in r:
                    m[1].metric("Mean confidence", f"{r['confidence']:.3f}")
                if "flip_rate" in r and pd.notna(r["flip_rate"]):
                    m[2].metric("Answers changed from the previous step", f"{r['flip_rate']:.3f}")
                if horizon is not None:
                    m[3].metric("Trained horizon", f"{horizon} steps", "beyond" if step > horizon else "inside",
                                delta_color="off")
            charts.show(charts.step_lines(long, "step", "value", "measure", step,
                                              "Readout after every step" + (f" (trained horizon {horizon})" if horizon else ""),
                                              "value", y_domain=(0.0, 1.0),
                                              marks={"trained horizon": horizon + 0.5} if horizon else None))
    if ctx.has_table("predictions") and step is not None:
        with guard("the predictions"):
            preds = ctx.table("predictions")
            at = preds[preds["step"] == step]
            if "correct" in at and len(at):
                st.caption(f"At step {step}: {int(at['correct'].sum())} of {len(at)} images correct.")
    generic_sections(ctx, step, None)
    page_footer(ctx)


page = analysis_page("lens")
if page is not None:
    render(page)
