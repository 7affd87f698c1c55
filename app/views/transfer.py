"""Transfer (Sec. 4.3, Table 4, App. H): Table 4-style results, accuracy vs trainable parameters, per-epoch histories."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from lib import charts
from lib.ui import PageContext, analysis_page, generic_sections, guard, missing, page_footer

from bvit_interp.transfer.methods import METHOD_LABELS, METHODS


def _table4(ctx: PageContext) -> None:
    """The Table 4 layout: one row per (model, method), trainable parameters, accuracy per dataset."""
    st.subheader("Table 4: accuracy per method and dataset")
    table = ctx.table("table4", per_model=False)
    seeds = ""
    if ctx.has_table("summary"):
        summary = ctx.table("summary", per_model=False)
        counts = sorted({int(s) for s in summary["seeds"]}) if "seeds" in summary else []
        seeds = f" over {'/'.join(map(str, counts))} seed(s)" if counts else ""
    st.caption(f"Top-1 accuracy in %, mean ± std{seeds} (no std with one seed); trainable parameters exclude the "
               "new head, as in the paper's Table 4. The model picker in the sidebar chooses the histories below.")
    st.dataframe(table.drop(columns=["trainable_params"], errors="ignore"), hide_index=True)
    if ctx.has_table("skipped"):
        skipped = ctx.table("skipped", per_model=False)
        for row in skipped.itertuples(index=False):
            st.caption(f"Skipped: {getattr(row, 'label', row.method)} on {row.model}: {row.reason}.")


def _scatter(ctx: PageContext) -> None:
    """Accuracy against trainable parameters, per dataset: colour = model, shape = method (hover for values)."""
    summary = ctx.table("summary", per_model=False).copy()
    summary["accuracy %"] = 100 * summary["accuracy_mean"]
    summary["std %"] = 100 * summary["accuracy_std"]
    summary["method"] = summary["method"].map(lambda m: METHOD_LABELS.get(m, m))
    order = [METHOD_LABELS[m] for m in METHODS]
    datasets = list(dict.fromkeys(summary["dataset"]))
    dataset = st.selectbox("Dataset", datasets, key="transfer_dataset") if len(datasets) > 1 else datasets[0]
    part = summary[summary["dataset"] == dataset]
    chart = alt.Chart(part).mark_point(size=120, filled=True).encode(
        x=alt.X("trainable_params:Q", title="trainable parameters (head excluded)",
                scale=alt.Scale(type="symlog", constant=100)),
        y=alt.Y("accuracy %:Q", title="top-1 accuracy (%)", scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", title="model"),
        shape=alt.Shape("method:N", title="method", sort=order),
        tooltip=["model", "method", alt.Tooltip("trainable_params:Q", format=","),
                 alt.Tooltip("accuracy %:Q", format=".2f"), alt.Tooltip("std %:Q", format=".2f"), "seeds"],
    ).properties(title=f"Accuracy vs trainable parameters on {dataset}", height=340).interactive()
    charts.show(chart)


def _histories(ctx: PageContext) -> None:
    """Per-epoch curves of one (model, dataset, method, seed)."""
    history = ctx.table("history")
    model = ctx.model or str(history["model"].iloc[0])
    st.subheader(f"Training history of {model}")
    cols = st.columns(3)
    datasets = list(dict.fromkeys(history["dataset"]))
    dataset = cols[0].selectbox("Dataset", datasets, key="transfer_history_dataset")
    part = history[history["dataset"] == dataset]
    methods = [m for m in METHODS if m in set(part["method"])]
    method = cols[1].selectbox("Method", methods, key="transfer_history_method", format_func=METHOD_LABELS.get)
    part = part[part["method"] == method]
    seeds = sorted({int(s) for s in part["seed"]})
    seed = cols[2].selectbox("Seed", seeds, key="transfer_history_seed")
    part = part[part["seed"] == seed]
    measures = [c for c in ("train_accuracy", "val_accuracy", "train_loss") if c in part]
    long = pd.concat([part.assign(measure=c, value=part[c]) for c in measures]).dropna(subset=["value"])
    accuracy = long[long["measure"] != "train_loss"]
    c1, c2 = st.columns(2)
    with c1:
        charts.show(charts.step_lines(accuracy, "epoch", "value", "measure", None,
                                      f"{METHOD_LABELS[method]}, seed {seed}: accuracy", "accuracy", y_domain=(0.0, 1.0)))
    with c2:
        charts.show(charts.step_lines(long[long["measure"] == "train_loss"], "epoch", "value", "measure", None,
                                      "training loss", "cross-entropy"))
    st.dataframe(part, hide_index=True)


def render(ctx: PageContext) -> None:
    """The transfer page body."""
    if not missing(ctx, "table4", "summary", "history"):
        with guard("Table 4"):
            _table4(ctx)
        with guard("the accuracy vs parameters chart"):
            _scatter(ctx)
        with guard("the training histories"):
            _histories(ctx)
    generic_sections(ctx, None, None)
    page_footer(ctx)


page = analysis_page("transfer")
if page is not None:
    render(page)
