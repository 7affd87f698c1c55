"""Causal analysis: activation patching and attribution maps, DLA per step, direct vs indirect effects, probes."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from lib import charts
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

WHOLE = -1  # the head column of a whole-site patch
VALUES = {"pooled": "ratio of mean logit differences over all pairs (TransformerLens's convention; the headline)",
          "mean": "mean of per-pair recovered fractions over the pairs whose gap is at least min_gap (the check)"}
DIRECTION_HELP = ("denoising: the clean activation copied into the corrupted run (near 1: sufficient); "
                  "noising: the corrupted activation copied into the clean run (near 0: necessary)")


def _ordered(values: pd.Series) -> list[str]:
    """Distinct values in order of first appearance."""
    return [str(v) for v in dict.fromkeys(values.tolist())]


def _bound(*tables: pd.DataFrame, value: str) -> float:
    """Symmetric colour bound over the tables' ``value`` (at least 1e-6)."""
    peaks = [float(t[value].abs().max()) for t in tables if len(t) and value in t]
    return max([p for p in peaks if p == p] + [1e-6])


def _step_group_heatmap(df: pd.DataFrame, column: str, value: str, step: int | None, title: str,
                        bound: float) -> alt.LayerChart:
    """Step x ``column`` heatmap (sites / token groups) with values on hover and the chosen step outlined."""
    base = alt.Chart(df).encode(x=alt.X("step:O", title="step"), y=alt.Y(f"{column}:N", title=column, sort=None))
    rect = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="redblue", domain=[-bound, bound], reverse=True),
                        title=value),
        tooltip=[alt.Tooltip("step:O"), alt.Tooltip(f"{column}:N"), alt.Tooltip(f"{value}:Q", format=".3f"),
                 *[alt.Tooltip(f"{c}:Q", format=".3f") for c in ("ci_low", "ci_high") if c in df]])
    layers: list[alt.Chart] = [rect]
    if step is not None:
        layers.append(alt.Chart(pd.DataFrame({"step": [step]})).mark_rule(color="#ff2b2b", strokeWidth=2)
                      .encode(x="step:O"))
    return alt.layer(*layers).properties(title=title, height=max(160, 26 * df[column].nunique()))


def _pickers(patching: pd.DataFrame) -> tuple[str | None, str | None, str | None, str]:
    """Sidebar pickers: direction, site, token group, summary value."""
    direction = st.sidebar.selectbox("Direction", _ordered(patching["direction"]), key="causal_direction",
                                     help=DIRECTION_HELP)
    site = st.sidebar.selectbox("Site", _ordered(patching["site"]), key="causal_site",
                                help="hook site patched (attn.z: one head at a time)")
    group = st.sidebar.selectbox("Token group", _ordered(patching["group"]), key="causal_group",
                                 help="tokens patched: all, CLS, registers, object patches or the other patches")
    value = st.sidebar.radio("Value", list(VALUES), key="causal_value", help="; ".join(f"{k}: {v}" for k, v in VALUES.items()))
    return direction, site, group, str(value)


def _metrics(ctx: PageContext) -> None:
    """Pairs, their mean gap, attribution's agreement and speed-up."""
    m = st.columns(4)
    if ctx.has_table("pairs"):
        pairs = ctx.table("pairs")
        m[0].metric("Pairs", f"{len(pairs)}")
        if "gap" in pairs:
            m[1].metric("Mean logit-difference gap", f"{pairs['gap'].mean():.2f}",
                        help="clean minus corrupted logit difference, the metric's normaliser")
    if ctx.has_table("agreement"):
        agree = ctx.table("agreement")
        overall = agree[(agree["method"] == "attribution") & (agree["direction"] == "all")]
        if len(overall):
            m[2].metric("Attribution vs exact (Spearman rho)", f"{overall['rho'].iloc[0]:.2f}")
            m[3].metric("Attribution speed-up", f"{overall['speedup'].iloc[0]:.0f}x",
                        help=f"exact patching {overall['exact_s'].iloc[0]:.1f} s vs "
                             f"attribution patching {overall['method_s'].iloc[0]:.2f} s")


def _maps(ctx: PageContext, patching: pd.DataFrame, direction: str, site: str, group: str, value: str,
          step: int | None, head: int | None) -> None:
    """Step x head maps of exact and attribution patching for the chosen direction, site and group."""
    pick = (patching["direction"] == direction) & (patching["site"] == site) & (patching["group"] == group)
    exact = patching[pick]
    panels = {"exact patching": exact}
    if ctx.has_table("attribution"):
        attribution = ctx.table("attribution")
        sel = (attribution["direction"] == direction) & (attribution["site"] == site) & (attribution["group"] == group)
        for method, rows in attribution[sel].groupby("method", sort=False):
            panels[f"{method} (estimate)"] = rows
    per_head = (exact["head"] != WHOLE).any()
    bound = _bound(*panels.values(), value=value)
    st.subheader(f"{direction.capitalize()}: {site}, tokens {group}")
    cols = st.columns(len(panels))
    for i, (col, (name, rows)) in enumerate(zip(cols, panels.items(), strict=True)):
        with col:
            if per_head:
                rows = rows[rows["head"] != WHOLE]
                chart = charts.step_head_heatmap(rows, value, step, head, f"{name} (click a cell)",
                                                 domain=(-bound, bound), scheme="redblue", reverse=True,
                                                 tooltip=("ci_low", "ci_high", "pairs"))
                event = charts.show(chart, on_select="rerun", selection_mode=charts.CELL, key=f"causal_map_{i}")
                apply_selection(event, charts.CELL, f"_causal_cell_{i}")
            else:
                charts.show(_step_group_heatmap(rows.assign(cell=site), "cell", value, step, name, bound))
    if step is not None:
        at = exact[exact["step"] == step]
        if per_head and head is not None:
            at = at[at["head"] == head]
        if len(at):
            r = at.iloc[0]
            who = f"step {step}" + (f", head {head}" if per_head and head is not None else "")
            st.caption(f"Exact patching at {who}: {value} {r[value]:.3f}"
                       + (f" (95% CI {r['ci_low']:.3f} to {r['ci_high']:.3f}, {int(r['pairs'])} pairs)"
                          if value == "mean" else f" (95% CI {r['pooled_low']:.3f} to {r['pooled_high']:.3f})"))
    st.caption("1 = the clean run's logit difference, 0 = the corrupted run's. Attribution patching estimates every "
               "cell from one forward-backward pass (gradient x activation difference).")


def _sites(patching: pd.DataFrame, direction: str, value: str, step: int | None) -> None:
    """Whole-site patches of every site and token group per step."""
    whole = patching[(patching["direction"] == direction) & (patching["head"] == WHOLE)]
    if whole.empty:
        return
    whole = whole.assign(cell=whole["site"] + " / " + whole["group"])
    bound = _bound(whole, value=value)
    charts.show(_step_group_heatmap(whole, "cell", value, step, f"{direction}: whole sites per token group", bound))


def _dla(ctx: PageContext, step: int | None, head: int | None) -> None:
    """DLA of the clean run: step x head map and per-step sums of heads, MLP and attention bias."""
    dla = ctx.table("dla")
    runs = _ordered(dla["run"]) if "run" in dla else []
    run = st.radio("Run", runs, horizontal=True, key="causal_dla_run",
                   help="the frozen norm scale is the clean run's; on the corrupted run the terms approximate its "
                        "logit difference (see dla_totals)") if len(runs) > 1 else (runs[0] if runs else None)
    rows = dla[dla["run"] == run] if run is not None else dla
    pairs = max(rows["pair"].nunique(), 1)
    heads = rows[rows["term"] == "head"].groupby(["step", "head"], as_index=False)["value"].mean()
    per_step = (rows[rows["step"] > 0].groupby(["term", "step"], as_index=False)["value"].sum()
                .assign(value=lambda d: d["value"] / pairs))
    c1, c2 = st.columns(2)
    with c1:
        bound = _bound(heads, value="value")
        chart = charts.step_head_heatmap(heads, "value", step, head, "Direct contribution per head (logits, click a cell)",
                                         domain=(-bound, bound), scheme="redblue", reverse=True)
        event = charts.show(chart, on_select="rerun", selection_mode=charts.CELL, key="causal_dla_map")
        apply_selection(event, charts.CELL, "_causal_dla_cell")
    with c2:
        per_step = per_step.replace({"term": {"head": "attention heads", "mlp": "MLP", "attn_bias": "attn bias"}})
        charts.show(charts.bars(per_step, "step", "value", step, "Direct contribution per step", color="term"))
    if ctx.has_table("dla_totals"):
        totals = ctx.table("dla_totals")
        clean = totals[totals["run"] == "clean"] if "run" in totals else totals
        if len(clean):
            st.caption(f"Terms sum to the clean logit difference up to {clean['error'].abs().max():.1e} logits "
                       "(the final norm's scale frozen at the clean run).")


def _effects(ctx: PageContext, direction: str, value: str, step: int | None, head: int | None) -> None:
    """Total, direct (path patching to the readout) and indirect effect maps per step and head."""
    effects = ctx.table("effects")
    rows = effects[effects["direction"] == direction]
    if rows.empty:
        st.caption(f"No {direction} effects in this run.")
        return
    shown = [e for e in ("total", "direct", "indirect") if (rows["effect"] == e).any()]
    bound = _bound(rows[rows["effect"].isin(shown)], value=value)
    tabs = st.tabs([f"{effect} effect" for effect in shown])
    for tab, effect in zip(tabs, shown, strict=True):
        with tab:
            sub = rows[rows["effect"] == effect]
            charts.show(charts.step_head_heatmap(sub, value, step, head, f"{effect} effect ({value})",
                                                 domain=(-bound, bound), scheme="redblue", reverse=True,
                                                 tooltip=("ci_low", "ci_high", "pooled_low", "pooled_high")))
    st.caption("Total: patching the head's attn.z; direct: only its path to the readout (later steps see the "
               "unpatched value); indirect = total - direct. 1 = clean, 0 = corrupted.")


def _probes(ctx: PageContext, step: int | None) -> None:
    """Probe accuracy and control accuracy per step, per representation, for one task; selectivity below."""
    probes = ctx.table("probes")
    tasks = _ordered(probes["task"])
    task = st.radio("Task", tasks, horizontal=True, key="causal_probe_task",
                    help="class; quadrant of the object's centroid; colour bin of the object")
    rows = probes[probes["task"] == task]
    long = pd.concat([rows.assign(curve=rows["representation"] + " " + label, value=rows[col])
                      for col, label in (("accuracy", "probe"), ("control_accuracy", "control"))])
    majority = float(rows["majority"].iloc[0]) if "majority" in rows and len(rows) else None
    c1, c2 = st.columns(2)
    with c1:
        palette = {"cls": ("#1f77b4", "#aec7e8"), "object": ("#ff7f0e", "#ffbb78")}  # probe dark, control light
        colors = {f"{rep} {kind}": palette.get(rep, ("#2ca02c", "#98df8a"))[k]
                  for rep in _ordered(rows["representation"]) for k, kind in enumerate(("probe", "control"))}
        charts.show(charts.step_lines(long, "step", "value", "curve", step, f"{task}: test accuracy", "accuracy",
                                      rules={"majority": majority} if majority is not None else None,
                                      y_domain=(0.0, 1.0), colors=colors))
    with c2:
        charts.show(charts.step_lines(rows, "step", "selectivity", "representation", step,
                                      f"{task}: selectivity (accuracy - control)", "selectivity",
                                      rules={"zero": 0.0}))
    st.caption("Control task (Hewitt & Liang): a fixed random label per item type (the combination of the other two "
               "attributes); selectivity is the accuracy the probe's memorising capacity does not explain.")


def render(ctx: PageContext) -> None:
    """The causal page body."""
    if missing(ctx, "patching"):
        generic_sections(ctx, None, None)
        page_footer(ctx)
        return
    with guard("the pickers"):
        patching = ctx.table("patching")
        direction, site, group, value = _pickers(patching)
    steps = sorted(int(s) for s in patching["step"].unique())
    heads = sorted(int(h) for h in patching["head"].unique() if int(h) != WHOLE)
    step, head = step_picker(steps), head_picker(heads)
    with guard("the headline numbers"):
        _metrics(ctx)
    if direction is not None and site is not None and group is not None:
        with guard("the patching maps"):
            _maps(ctx, patching, direction, site, group, value, step, head)
        with guard("the site map"):
            _sites(patching, direction, value, step)
    if ctx.has_table("dla"):
        st.subheader("Direct logit attribution")
        with guard("the DLA"):
            _dla(ctx, step, head)
    if ctx.has_table("effects") and direction is not None:
        st.subheader(f"Direct vs indirect effects ({direction})")
        with guard("the direct and indirect effects"):
            _effects(ctx, direction, value, step, head)
    if ctx.has_table("probes"):
        st.subheader("Probes per step")
        with guard("the probe curves"):
            _probes(ctx, step)
    generic_sections(ctx, step, head)
    page_footer(ctx)


page = analysis_page("causal")
if page is not None:
    render(page)
