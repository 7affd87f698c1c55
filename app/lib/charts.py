"""Interactive charts (Altair: hover values, click a cell) and attention-map panels (numpy + PIL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import matplotlib
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from bvit_interp.analysis.pointing import AttentionMaps

CELL = "cell"  # name of the click selection of step x head heatmaps


def show(chart: alt.TopLevelMixin, **kwargs: Any) -> Any:
    """``st.altair_chart`` at the container's width (returns the selection state with ``on_select``)."""
    height = getattr(chart, "height", None)
    if isinstance(height, int) and "height" not in kwargs:
        kwargs["height"] = height + 60  # room for title and axis
    return st.altair_chart(chart, width="stretch", **kwargs)


def step_head_heatmap(df: pd.DataFrame, value: str, step: int | None, head: int | None, title: str,
                      domain: tuple[float, float] | None = None, scheme: str = "viridis",
                      tooltip: Sequence[str] = (), fmt: str = ".2f", reverse: bool = False) -> alt.LayerChart:
    """Step x head heatmap of ``value``; click a cell to choose it; the chosen cell is outlined."""
    scale = alt.Scale(scheme=scheme, domain=list(domain) if domain else alt.Undefined, reverse=reverse)
    diverging = scheme in ("redblue", "blueorange", "redyellowblue", "purpleorange")
    base = alt.Chart(df).encode(x=alt.X("step:O", title="step"), y=alt.Y("head:O", title="head"))
    pick = alt.selection_point(name=CELL, fields=["step", "head"], on="click")
    tips = [alt.Tooltip("step:O"), alt.Tooltip("head:O"), alt.Tooltip(f"{value}:Q", format=".3f")]
    tips += [alt.Tooltip(f"{c}:Q", format=".3f") if pd.api.types.is_float_dtype(df[c]) else alt.Tooltip(f"{c}")
             for c in tooltip if c in df.columns]
    rect = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=scale, title=value), tooltip=tips).add_params(pick)
    layers: list[alt.Chart] = [rect]
    if df["step"].nunique() * df["head"].nunique() <= 200:
        mid = (domain[0] + domain[1]) / 2 if domain else float(df[value].median())
        dark = alt.value("black") if diverging else alt.condition(f"datum['{value}'] > {mid}", alt.value("black"),
                                                                   alt.value("white"))
        layers.append(base.mark_text(fontSize=10).encode(text=alt.Text(f"{value}:Q", format=fmt), color=dark))
    if step is not None and head is not None:
        chosen = pd.DataFrame({"step": [step], "head": [head]})
        layers.append(alt.Chart(chosen).mark_rect(fill=None, stroke="#ff2b2b", strokeWidth=3)
                      .encode(x="step:O", y="head:O"))
    return alt.layer(*layers).properties(title=title, height=max(160, 34 * df["head"].nunique()))


def step_lines(df: pd.DataFrame, x: str, y: str, color: str | None, step: int | None, title: str,
               y_title: str | None = None, rules: dict[str, float] | None = None,
               band: tuple[str, str] | None = None, y_domain: tuple[float, float] | None = None,
               colors: dict[str, str] | None = None, marks: dict[str, float] | None = None) -> alt.LayerChart:
    """Lines of ``y`` over ``x`` (hover for values), optional CI band, horizontal rules and the chosen step."""
    yscale = alt.Scale(domain=list(y_domain)) if y_domain else alt.Scale(zero=False)
    enc = {"x": alt.X(f"{x}:Q", title=x, axis=alt.Axis(tickMinStep=1)),
           "y": alt.Y(f"{y}:Q", title=y_title or y, scale=yscale)}
    tips = [alt.Tooltip(f"{x}:Q"), alt.Tooltip(f"{y}:Q", format=".3f")]
    cscale = alt.Scale(domain=list(colors), range=list(colors.values())) if colors else alt.Undefined
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color, scale=cscale)
        tips.append(alt.Tooltip(f"{color}:N"))
    layers: list[alt.Chart] = []
    if band:
        layers.append(alt.Chart(df).mark_area(opacity=0.15).encode(
            x=f"{x}:Q", y=f"{band[0]}:Q", y2=f"{band[1]}:Q",
            **({"color": alt.Color(f"{color}:N", scale=cscale)} if color else {})))
    layers.append(alt.Chart(df).mark_line(point=True).encode(**enc, tooltip=tips))
    for label, value in (rules or {}).items():
        if value is None or not np.isfinite(value):
            continue
        rule = pd.DataFrame({"y": [value], "label": [f"{label} {value:.3f}"]})
        layers.append(alt.Chart(rule).mark_rule(strokeDash=[4, 4], color="gray").encode(y="y:Q", tooltip="label:N"))
        layers.append(alt.Chart(rule).mark_text(align="left", dx=4, dy=-6, color="gray").encode(
            y="y:Q", text="label:N", x=alt.value(0)))
    for label, value in (marks or {}).items():
        mark = pd.DataFrame({x: [value], "label": [label]})
        layers.append(alt.Chart(mark).mark_rule(strokeDash=[6, 3], color="gray").encode(x=f"{x}:Q", tooltip="label:N"))
        layers.append(alt.Chart(mark).mark_text(align="left", dx=4, baseline="top", color="gray").encode(
            x=f"{x}:Q", text="label:N", y=alt.value(2)))
    if step is not None:
        layers.append(alt.Chart(pd.DataFrame({x: [step]})).mark_rule(color="#ff2b2b", strokeWidth=2).encode(x=f"{x}:Q"))
    return alt.layer(*layers).properties(title=title, height=300)


def bars(df: pd.DataFrame, x: str, y: str, highlight: int | None, title: str, color: str | None = None) -> alt.Chart:
    """Bars of ``y`` per ``x`` with the chosen ``x`` highlighted (hover for values)."""
    enc_color = (alt.Color(f"{color}:N") if color else
                 alt.condition(f"datum['{x}'] == {highlight if highlight is not None else -1}",
                               alt.value("#ff2b2b"), alt.value("#4c78a8")))
    tips = [alt.Tooltip(f"{x}:O"), alt.Tooltip(f"{y}:Q", format=".3f")] + ([alt.Tooltip(f"{color}:N")] if color else [])
    return alt.Chart(df).mark_bar().encode(x=alt.X(f"{x}:O", title=x), y=alt.Y(f"{y}:Q", title=y),
                                           color=enc_color, tooltip=tips,
                                           **({"xOffset": f"{color}:N"} if color else {})).properties(title=title, height=260)


def scatter(df: pd.DataFrame, x: str, y: str, color: str, title: str, tooltip: Sequence[str] = (),
            background: pd.DataFrame | None = None) -> alt.LayerChart:
    """Scatter coloured by ``color`` over a grey background cloud (e.g. all steps), zoom and pan."""
    layers: list[alt.Chart] = []
    if background is not None and len(background):
        layers.append(alt.Chart(background).mark_circle(size=12, color="lightgray", opacity=0.4).encode(
            x=f"{x}:Q", y=f"{y}:Q"))
    layers.append(alt.Chart(df).mark_circle(size=40, opacity=0.85).encode(
        x=alt.X(f"{x}:Q", title=x), y=alt.Y(f"{y}:Q", title=y),
        color=alt.Color(f"{color}:N", title=color, scale=alt.Scale(scheme="tableau10")),
        tooltip=[alt.Tooltip(c) for c in tooltip if c in df.columns]))
    return alt.layer(*layers).properties(title=title, height=420).interactive()


# --------------------------------------------------------------------------- attention maps

_INFERNO = (matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def panel(image: np.ndarray, amap: np.ndarray | None, mask: np.ndarray | None, point: Sequence[float] | None,
          hit: bool | None, size: int = 160, alpha: float = 0.5) -> np.ndarray:
    """One uint8 panel: image, attention overlay (inferno), mask outline (cyan), argmax point (green hit / red miss)."""
    h, w = image.shape[:2]
    k = max(1, size // max(h, w))
    img = np.repeat(np.repeat(np.clip(image, 0, 1), k, 0), k, 1)
    out = img * 255.0
    if amap is not None:
        a = np.asarray(amap, dtype=np.float64)
        a = np.kron(a, np.ones((h * k // a.shape[0], w * k // a.shape[1])))
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
        out = (1 - alpha) * out + alpha * _INFERNO[(a * 255).astype(np.uint8)]
    out = out.astype(np.uint8)
    if mask is not None and mask.any() and not mask.all():
        big = np.repeat(np.repeat(mask.astype(bool), k, 0), k, 1)
        edge = _outline(big)
        thick = edge | np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
        out[thick] = (0, 255, 255)
    pil = Image.fromarray(out)
    if point is not None:
        draw = ImageDraw.Draw(pil)
        x, y = point[0] * k, point[1] * k  # continuous pixel coordinates (pixel i spans [i, i + 1))
        r = max(4, k * 1.5)
        colour = (0, 230, 0) if hit else (255, 40, 40)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=max(2, k // 2))
        draw.line((x - r, y, x + r, y), fill=colour, width=max(1, k // 3))
        draw.line((x, y - r, x, y + r), fill=colour, width=max(1, k // 3))
    return np.asarray(pil)


def attention_panels(att: AttentionMaps, cells: Sequence[tuple[int, int, int]], size: int = 160) -> list[np.ndarray]:
    """Panels for (image i, layer l, head h) cells of on-demand attention maps."""
    return [panel(att.images[i], att.maps[i, layer, head], att.masks[i], att.points[i, layer, head],
                  bool(att.hits[i, layer, head]), size) for i, layer, head in cells]


def upscale(image: np.ndarray, size: int = 96) -> np.ndarray:
    """(3, H, W) or (H, W, 3) float image in [0, 1] -> (S, S, 3) uint8, nearest-neighbour enlarged."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    factor = max(1, size // max(img.shape[:2]))
    img = np.repeat(np.repeat(img, factor, 0), factor, 1)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def tile(images: Sequence[np.ndarray], columns: int = 2, gap: int = 2) -> np.ndarray:
    """Equal-size uint8 (H, W, 3) images tiled into one image, ``columns`` per row, white gaps."""
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = img[:h, :w]
    return out
