"""Pointing game: step x head hit rates, curves with chance, attention maps at the chosen (step, head)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from lib import charts, data
from lib.runs import int_values
from lib.ui import (
    PageContext,
    analysis_page,
    apply_selection,
    generic_sections,
    guard,
    head_picker,
    missing,
    page_footer,
    step_picker,
)

from bvit_interp.data.sources import class_names

N_SAMPLES = 8
PANEL_PX = 160
SMALL_PX = 96


def metrics(ctx: PageContext, hr: pd.DataFrame, summary: pd.DataFrame, step: int, head: int) -> None:
    """Headline numbers of the chosen cell beside the best head of its step and the baselines."""
    cell = hr[(hr["step"] == step) & (hr["head"] == head)]
    best = summary[summary["step"] == step]
    cols = st.columns(5)
    if len(cell):
        c = cell.iloc[0]
        cols[0].metric(f"Hit rate, step {step} head {head}", f"{c['rate']:.3f}",
                       help=f"{int(c['hits'])} of {int(c['n'])} images; 95% Wilson CI [{c['ci_low']:.3f}, {c['ci_high']:.3f}]")
        cols[0].caption(f"95% CI [{c['ci_low']:.3f}, {c['ci_high']:.3f}], n = {int(c['n'])}")
        if "macro_ci_low" in c:
            cols[0].caption(f"macro {c['macro_rate']:.3f}, 95% bootstrap CI over classes "
                            f"[{c['macro_ci_low']:.3f}, {c['macro_ci_high']:.3f}]")
    if len(best):
        b = best.iloc[0]
        cols[1].metric(f"Best head at step {step}", f"head {int(b['best_head'])}", f"{b['best_rate']:.3f}",
                       delta_color="off")
        cols[2].metric("Mean over heads", f"{b['mean_over_heads']:.3f}")
        cols[3].metric("Chance", f"{b['chance']:.3f}", help="a uniform random point in the model's view")
        cols[4].metric("Centre point", f"{b['centre']:.3f}", help="always pointing at the image centre")


def overview_charts(hr: pd.DataFrame, summary: pd.DataFrame, step: int, head: int) -> None:
    """Heatmap (click a cell) beside the best-head, mean-over-heads and chosen-head curves."""
    left, right = st.columns([1, 1])
    with left:
        chart = charts.step_head_heatmap(hr, "rate", step, head, "Hit rate per step and head (click a cell)",
                                         domain=(0.0, 1.0), tooltip=("n", "hits", "ci_low", "ci_high", "macro_rate"))
        event = charts.show(chart, on_select="rerun", selection_mode=charts.CELL, key="pointing_heatmap")
        apply_selection(event, charts.CELL, "_pointing_cell")
    with right:
        curves = pd.concat([
            summary.assign(series="best head", value=summary["best_rate"], lo=summary["best_ci_low"],
                           hi=summary["best_ci_high"]),
            summary.assign(series="mean over heads", value=summary["mean_over_heads"], lo=np.nan, hi=np.nan),
            hr[hr["head"] == head].assign(series=f"head {head}", value=lambda d: d["rate"], lo=lambda d: d["ci_low"],
                                          hi=lambda d: d["ci_high"]),
        ])[["step", "series", "value", "lo", "hi"]]
        first = summary.iloc[0]
        colors = {"best head": "#1f77b4", "mean over heads": "#7f7f7f", f"head {head}": "#ff2b2b"}
        rules = {"chance": float(first["chance"]), "centre": float(first["centre"])}
        charts.show(charts.step_lines(curves, "step", "value", "series", step, "Hit rate over steps", "hit rate",
                                      rules=rules, band=("lo", "hi"), y_domain=(0.0, 1.0), colors=colors))


def options_of(ctx: PageContext) -> dict[str, Any]:
    """Scoring options of the run (tolerance, point rule, steps, ignore rule) with the paper's defaults."""
    opts = ctx.run.meta.get("options") or {}
    return {"tolerance": float(opts.get("tolerance") or 0.0), "point": str(opts.get("point") or "center"),
            "steps": opts.get("steps"), "frame": str(opts.get("frame") or "original"),
            "ignore": str(opts.get("ignore") or "miss")}


def verdict(hit: bool, excluded: bool = False) -> str:
    """Caption word of a scored point."""
    return "excluded (ignore pixel)" if excluded else "hit" if hit else "miss"


def attention_section(ctx: PageContext, step: int, head: int) -> None:
    """Attention maps of sample images at the chosen (step, head), and any dataset image on demand."""
    st.subheader(f"Attention maps at step {step}, head {head}")
    images = ctx.table("images") if ctx.has_table("images") else pd.DataFrame()
    sample = [int(i) for i in images["image_index"].head(N_SAMPLES)] if "image_index" in images else []
    desc = data.data_key(ctx.run)
    try:
        source = data.source_for(desc, ctx.cfg.roots)
    except (ValueError, OSError) as err:
        st.info(f"The images of this run cannot be shown: {err}", icon=":material/info:")
        return
    model, key, message = data.model_for(ctx.run, ctx.model, ctx.cfg)
    opts = options_of(ctx)
    if model is None:
        st.info(f"Attention maps need the model: {message}. Showing the run's recorded points instead "
                "(start the browser with `-- --models DIR` on a directory holding the checkpoint).",
                icon=":material/info:")
        stored_points(ctx, source, sample, step, head)
        return
    if not sample:
        sample = list(range(min(N_SAMPLES, len(source))))
    att = data.attention(key, desc, ctx.cfg.roots, tuple(sample), opts["tolerance"], opts["point"], opts["steps"],
                         _model=model, ignore=opts["ignore"])
    layers = att.maps.shape[1] if att.maps.ndim == 5 else 0
    if step > layers:
        st.info(f"The model runs {layers} steps; step {step} is not one of them.", icon=":material/info:")
        return
    cells = [(i, step - 1, head) for i in range(len(att.indices))]
    excluded = att.excluded if att.excluded is not None else np.zeros_like(att.hits)
    titles = [f"{att.names[i]}: {verdict(att.hits[i, step - 1, head], excluded[i, step - 1, head])}"
              for i in range(len(att.indices))]
    st.image(charts.attention_panels(att, cells), caption=titles, width=PANEL_PX)
    st.caption("CLS attention over the patches (brighter = more), target mask outlined in cyan, argmax point "
               "green for a hit and red for a miss; the model's crop, scored with the run's options (TorchRay's "
               "rule: a hit is strictly closer than the tolerance to the mask; tolerance 0 = inside the mask).")
    picker(ctx, source, model, key, desc, opts, step, head, sample)


def picker(ctx: PageContext, source: Any, model: Any, key: tuple[str, float], desc: str, opts: dict[str, Any],
           step: int, head: int, sample: list[int]) -> None:
    """Run the model on any dataset image: the chosen head at every step, every head at the chosen step."""
    st.subheader("Any image")
    index = st.number_input(f"Dataset image (0 to {len(source) - 1})", min_value=0, max_value=len(source) - 1,
                            value=sample[0] if sample else 0, step=1, key="pointing_image")
    att = data.attention(key, desc, ctx.cfg.roots, (int(index),), opts["tolerance"], opts["point"], opts["steps"],
                         _model=model, ignore=opts["ignore"])
    if not att.indices:
        st.info(f"Image {index} cannot be scored: {att.skipped.get(int(index), 'unusable sample')}",
                icon=":material/info:")
        return
    wnids = getattr(source, "categories", [])
    names = class_names(source)
    label, pred = att.labels[0], att.preds[0]
    name = lambda c: names.get(wnids[c], wnids[c]) if 0 <= c < len(wnids) else str(c)  # noqa: E731
    st.caption(f"{att.names[0]}: class {name(label)}, model predicts {name(pred)} "
               f"({att.confidence[0]:.2f}){' ✓' if pred == label else ''}")
    layers, heads = att.maps.shape[1], att.maps.shape[2]
    st.markdown(f"**Head {head} at every step**")
    st.image(charts.attention_panels(att, [(0, layer, head) for layer in range(layers)], SMALL_PX),
             caption=[f"step {layer + 1}" + (" ◀" if layer + 1 == step else "") for layer in range(layers)],
             width=SMALL_PX)
    if step <= layers:
        st.markdown(f"**Every head at step {step}**")
        st.image(charts.attention_panels(att, [(0, step - 1, h) for h in range(heads)], SMALL_PX),
                 caption=[f"head {h}" + (" ◀" if h == head else "") for h in range(heads)], width=SMALL_PX)


def stored_points(ctx: PageContext, source: Any, sample: list[int], step: int, head: int) -> None:
    """Images with mask and the argmax point recorded in the run (no model needed)."""
    if not ctx.has_table("points") or not sample:
        return
    pts = ctx.table("points")
    pts = pts[(pts["step"] == step) & (pts["head"] == head) & pts["image_index"].isin(sample)]
    panels, titles = [], []
    for row in pts.itertuples():
        item = source.load(int(row.image_index))
        image = np.asarray(item.image.convert("RGB"), dtype=np.float32) / 255  # the original image: no normalisation
        panels.append(charts.panel(image, None, item.mask == item.class_id, (float(row.x), float(row.y)),
                                   bool(row.hit)))
        titles.append(f"{item.name}: {verdict(bool(row.hit), bool(getattr(row, 'excluded', False)))}")
    if panels:
        st.image(panels, caption=titles, width=PANEL_PX)


def per_class(ctx: PageContext, step: int, head: int) -> None:
    """Hit rate per class at the chosen cell."""
    if not ctx.has_table("per_class"):
        return
    pc = ctx.table("per_class")
    pc = pc[(pc["step"] == step) & (pc["head"] == head)]
    try:
        names = class_names(data.source_for(data.data_key(ctx.run), ctx.cfg.roots))
    except (ValueError, OSError):
        names = {}
    if len(pc):
        pc = pc.assign(**{"class": pc["wnid"].map(lambda w: names.get(w, w))})
        charts.show(charts.bars(pc, "class", "rate", None, f"Hit rate per class at step {step}, head {head}"))


def render(ctx: PageContext) -> None:
    """The pointing page body."""
    steps: list[int] = []
    heads: list[int] = []
    if not missing(ctx, "hit_rates", "summary"):
        with guard("the hit rates"):  # a broken table is an error naming it; the rest of the page still shows
            hr, summary = ctx.table("hit_rates"), ctx.table("summary")
            steps, heads = int_values(hr, "step"), int_values(hr, "head")
    step, head = step_picker(steps), head_picker(heads)
    if step is not None and head is not None:
        with guard("the hit rates"):
            metrics(ctx, hr, summary, step, head)
            overview_charts(hr, summary, step, head)
        with guard("the attention maps"):
            attention_section(ctx, step, head)
        with guard("the per-class rates"):
            per_class(ctx, step, head)
    generic_sections(ctx, step, head)
    page_footer(ctx)


page = analysis_page("pointing")
if page is not None:
    render(page)
