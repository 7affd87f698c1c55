"""Feature visualization: neurons x steps grid; for a chosen neuron its row across steps with exemplars."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import streamlit as st
from lib import charts, data
from lib.runs import int_values
from lib.ui import (
    PageContext,
    analysis_page,
    generic_sections,
    guard,
    page_footer,
    shared_choice,
    step_picker,
)
from PIL import Image

N_EXEMPLARS = 4
IMAGE_PX = 96


def images_by_target(ctx: PageContext) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """(optimised image, exemplar images) per (neuron, step) from featviz.npz, or the PNGs under images/."""
    if (ctx.run.path / "featviz.npz").is_file():
        a = data.arrays(ctx.run, "featviz", ctx.cfg)
        pairs = [(int(n), int(s)) for n, s in zip(a["neurons"], a["steps"], strict=True)]
        opt = {p: a["images"][i, 0] for i, p in enumerate(pairs)}
        ex = {p: a["exemplar_images"][i] for i, p in enumerate(pairs)} if "exemplar_images" in a else {}
        return opt, ex
    opt = {}
    folder = ctx.run.path / "images"
    for path in sorted(folder.glob("n*_s*.png")) if folder.is_dir() else []:
        try:
            n, s = path.stem.split("_")[:2]
            img = np.asarray(Image.open(io.BytesIO(data.file_bytes(path, ctx.cfg))).convert("RGB"), dtype=np.float32) / 255
            opt[(int(n[1:]), int(s[1:]))] = img
        except (ValueError, OSError):
            continue
    return opt, {}


def ratio_of(targets: pd.DataFrame, neuron: int, step: int) -> float | None:
    row = targets[(targets["neuron"] == neuron) & (targets["step"] == step)]
    if "image" in row:
        row = row[row["image"] == row["image"].min()]
    return float(row["ratio"].iloc[0]) if len(row) and "ratio" in row else None


def grid(opt: dict[tuple[int, int], np.ndarray], targets: pd.DataFrame, neurons: list[int], steps: list[int],
         neuron: int, step: int) -> None:
    """Neurons x steps: the optimised image of every target, its activation ratio as caption."""
    st.subheader("Neurons x steps")
    st.caption("Optimised image per (neuron, step); caption: activation reached / best real activation. "
               "The chosen neuron and step are marked ▶.")
    for n in neurons:
        cols = st.columns([1] + [1] * max(len(steps), 8))
        cols[0].markdown(f"{'▶ ' if n == neuron else ''}**neuron {n}**")
        for col, s in zip(cols[1:], steps, strict=False):
            img = opt.get((n, s))
            if img is None:
                col.caption(f"step {s}: -")
                continue
            r = ratio_of(targets, n, s)
            mark = "▶ " if (n == neuron and s == step) else ""
            col.image(charts.upscale(img), caption=f"{mark}s{s}" + (f" x{r:.2f}" if r is not None else ""),
                      width=IMAGE_PX)


def neuron_row(ctx: PageContext, opt: dict, ex: dict, targets: pd.DataFrame, neuron: int, steps: list[int],
               step: int) -> None:
    """The chosen neuron across steps: optimised image, ratio, top dataset exemplars."""
    st.subheader(f"Neuron {neuron} across steps")
    cols = st.columns(max(len(steps), 5))
    for col, s in zip(cols, steps, strict=False):
        with col:
            st.markdown(f"{'▶ ' if s == step else ''}**step {s}**")
            if (neuron, s) in opt:
                st.image(charts.upscale(opt[(neuron, s)], 2 * IMAGE_PX), width=2 * IMAGE_PX)
            r = ratio_of(targets, neuron, s)
            if r is not None:
                st.caption(f"x{r:.2f} of best real")
            exemplars = [charts.upscale(img, IMAGE_PX) for img in list(ex.get((neuron, s), []))[:N_EXEMPLARS]]
            if exemplars:
                st.image(charts.tile(exemplars, columns=2), width=2 * IMAGE_PX)
    st.caption(f"Top: optimised image; below: the top {N_EXEMPLARS} dataset exemplars of the neuron at that step.")
    mine = targets[targets["neuron"] == neuron]
    if "image" in mine:
        mine = mine[mine["image"] == mine["image"].min()]
    left, right = st.columns(2)
    with left:
        if len(mine) and "ratio" in mine:
            charts.show(charts.bars(mine, "step", "ratio", step, f"Neuron {neuron}: activation / best real"))
    with right:
        if ctx.has_table("cross_steps"):
            cross = ctx.table("cross_steps")
            cross = cross[(cross["neuron"] == neuron) & (cross["step"] == step)]
            if "image" in cross:
                cross = cross[cross["image"] == cross["image"].min()]
            if len(cross):
                long = pd.concat([cross.assign(series="image optimised at this step", value=cross["activation"]),
                                  cross.assign(series="best real at that step", value=cross["best_real"])])
                charts.show(charts.step_lines(long, "eval_step", "value", "series", step,
                                                  f"Image for (neuron {neuron}, step {step}) evaluated at every step",
                                                  "activation"))
    if ctx.has_table("exemplars"):
        exm = ctx.table("exemplars")
        exm = exm[(exm["neuron"] == neuron) & (exm["step"] == step)]
        if len(exm):
            st.markdown(f"**Exemplars of neuron {neuron} at step {step}**")
            st.dataframe(exm, hide_index=True)


def render(ctx: PageContext) -> None:
    """The feature visualization page body."""
    targets = pd.DataFrame(columns=["neuron", "step"])
    if ctx.has_table("targets"):
        with guard("the targets table"):
            targets = ctx.table("targets")
    opt, ex = {}, {}
    with guard("the optimised images"):
        opt, ex = images_by_target(ctx)
    neurons = sorted(set(int_values(targets, "neuron")) | {n for n, _ in opt})
    steps = sorted(set(int_values(targets, "step")) | {s for _, s in opt})
    if not neurons:
        st.info("This run holds no optimised images yet" + ("" if ctx.run.complete else " (it is not finished)")
                + ".", icon=":material/info:")
    neuron = shared_choice("Neuron", "neuron", neurons, kind="selectbox", help="FFN hidden unit")
    step = step_picker(steps)
    if neuron is not None and step is not None:
        with guard("the neuron x step grid"):
            grid(opt, targets, neurons, steps, neuron, step)
        with guard("the neuron's row"):
            neuron_row(ctx, opt, ex, targets, neuron, steps, step)
    generic_sections(ctx, step, None)
    page_footer(ctx)


page = analysis_page("featviz")
if page is not None:
    render(page)
