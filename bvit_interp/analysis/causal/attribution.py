"""Attribution patching: a first-order estimate of every activation patch from one forward-backward pass.

For a cell (site, step, head, token group) the patched run's logit difference is estimated as

    LD(run with a := a_src) ~ LD(run) + sum_cell dLD/da (a_src - a_run)

(Nanda's attribution patching; run = corrupted for denoising, clean for noising; the gradient
is taken on the run being patched). One forward and one backward of each run give every cell.
The estimate is exact when the logit difference is linear in the activation (e.g. the last
layer's ``resid_post`` under an identity final norm) and degrades with curvature, so its rank
agreement with exact patching is what is reported (``rank_correlation``, Spearman).

captum's layer methods (``captum_attribution``) run through the per-step taps
(``model.taps.StepTaps``): ``grad_x_act`` (LayerGradientXActivation: gradient x activation, an
attribution against the zero activation, not a patch estimate), ``grad_x_diff`` (its gradient x
(a_src - a_run): attribution patching computed by captum, a cross-check) and ``ig``
(LayerIntegratedGradients from the other run's activation to this run's, in this run's context:
the more faithful estimate, whose sum over a whole site equals the exact patch of that site by
completeness, up to the integral's discretisation; per-head and per-group parts are the split
of that path integral, all heads moving together). captum is imported lazily.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from ...model import BViT
from ...model.hooks import site_info
from ...model.patching import HEAD_SITES
from ...model.taps import StepTaps
from .activation import (
    ALL_HEADS,
    DEFAULT_SITES,
    DIRECTIONS,
    KEYS,
    PatchingOptions,
    activation_patching,
    capture_runs,
    check_sites,
    select_groups,
    select_layers,
    timed,
)
from .metric import (
    DEFAULT_MIN_GAP,
    PairRuns,
    as_float,
    logit_difference,
    model_device,
    model_input,
    normalise,
    pair_runs,
)
from .pairs import DEFAULT_MIN_OVERLAP, PairBatch

CAPTUM_METHODS = ("grad_x_act", "grad_x_diff", "ig")


@dataclass(frozen=True)
class AttributionOptions:
    """Which cells to estimate (as ``PatchingOptions``; steps 1-based, None: all)."""

    sites: tuple[str, ...] = DEFAULT_SITES
    directions: tuple[str, ...] = DIRECTIONS
    groups: tuple[str, ...] | None = None
    per_head: bool = True
    steps: tuple[int, ...] | None = None
    min_overlap: float = DEFAULT_MIN_OVERLAP
    min_gap: float = DEFAULT_MIN_GAP

    def __post_init__(self) -> None:
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise ValueError(f"directions {list(self.directions)}: choose from {DIRECTIONS}")
        if not self.sites:
            raise ValueError("choose at least one site")

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the options (run metadata)."""
        return asdict(self)

    def patching(self, **overrides: object) -> PatchingOptions:
        """The ``PatchingOptions`` of the same cells (for the exact reference)."""
        return replace(PatchingOptions(sites=self.sites, directions=self.directions, groups=self.groups,
                                       per_head=self.per_head, steps=self.steps, min_overlap=self.min_overlap,
                                       min_gap=self.min_gap), **overrides)


def reduce_cells(
    values: torch.Tensor, site: str, per_head: bool, groups: dict[str, torch.Tensor | None]
) -> dict[tuple[int, str], torch.Tensor]:
    """Sum an elementwise attribution (P, ...) of ``site`` into {(head, group): (P,)} (head -1: whole site)."""
    tok = site_info(site)[1]
    if tok is None:
        raise ValueError(f"site {site!r} has no token axis")
    split_heads = per_head and site in HEAD_SITES
    keep = (0, 1, tok) if split_heads else (0, tok)
    dims = [d for d in range(values.dim()) if d not in keep]
    red = as_float(values).sum(dims) if dims else as_float(values)  # (P, [H], N)
    if not split_heads:
        red = red[:, None]
    out = {}
    for g, mask in groups.items():
        per = red.sum(-1) if mask is None else (red * mask[:, None].to(red.dtype)).sum(-1)  # (P, H')
        for h in range(per.shape[1]):
            out[(h if split_heads else ALL_HEADS, g)] = per[:, h]
    return out


def _frame(direction: str, site: str, layer: int, cells: dict[tuple[int, str], torch.Tensor],
           run_ld: torch.Tensor, runs: PairRuns, min_gap: float, extra: dict[str, object] | None = None) -> pd.DataFrame:
    """Per-pair rows of one (direction, site, layer): delta (estimated LD change), ld, recovered."""
    keys = list(cells)
    delta = torch.stack([cells[k] for k in keys])  # (V, P)
    ld = run_ld[None] + delta
    n = delta.shape[1]
    return pd.DataFrame({
        **(extra or {}), "direction": direction, "site": site, "step": layer + 1,
        "head": np.repeat([k[0] for k in keys], n), "group": np.repeat([k[1] for k in keys], n),
        "pair": np.tile(np.arange(n), len(keys)), "delta": delta.detach().cpu().numpy().reshape(-1),
        "ld": ld.detach().cpu().numpy().reshape(-1),
        "recovered": normalise(ld.detach(), runs, min_gap).cpu().numpy().reshape(-1),
    })


def attribution_patching(
    model: BViT, pairs: PairBatch, options: AttributionOptions = AttributionOptions(), runs: PairRuns | None = None,
) -> pd.DataFrame:
    """Per-pair first-order estimates of every (direction, site, step, head, group) patch.

    Columns: direction, site, step, head, group, pair, delta (gradient x activation difference),
    ld (estimated patched logit difference), recovered (normalised, as ``activation_patching``);
    ``metric.summarise(table, KEYS, runs)`` gives the same summary as exact patching.
    """
    model.eval()
    check_sites(model, options.sites)
    layers = select_layers(model, options.steps)
    groups = select_groups(model, pairs, options.groups, options.min_overlap)
    runs = runs or pair_runs(model, pairs)
    clean, corrupted = capture_runs(model, pairs, options.sites)
    frames = []
    for direction in options.directions:
        run_x, source, run_cache = ((pairs.corrupted, clean, corrupted) if direction == "denoising"
                                    else (pairs.clean, corrupted, clean))
        store: dict[tuple[str, int], torch.Tensor] = {}

        def record(act: torch.Tensor, name: str, store: dict[tuple[str, int], torch.Tensor] = store) -> None:
            site, layer = model.hook_layer(name)
            store[(site, layer)] = act  # type: ignore[index]

        wanted = [model.hook_name(site, layer) for site in options.sites for layer in layers]
        with torch.enable_grad(), model.hooked([(name, record) for name in wanted]):
            ld = logit_difference(model(model_input(model, run_x)), runs.right, runs.wrong)
            keys = list(store)
            grads = torch.autograd.grad(ld.sum(), [store[k] for k in keys], allow_unused=True)
        run_ld = ld.detach()
        for (site, layer), grad in zip(keys, grads, strict=True):
            diff = source[site, layer] - run_cache[site, layer]
            g = torch.zeros_like(diff) if grad is None else grad
            cells = reduce_cells(g * diff, site, options.per_head, groups)
            frames.append(_frame(direction, site, layer, cells, run_ld, runs, options.min_gap))
    return pd.concat(frames, ignore_index=True).sort_values([*KEYS, "pair"], kind="stable", ignore_index=True)


def rank_correlation(exact: pd.DataFrame, approx: pd.DataFrame, value: str = "pooled",
                     by: Iterable[str] = ("direction", "site"), decimals: int = 6) -> pd.DataFrame:
    """Spearman rank correlation of ``value`` between two summaries over matching cells, per ``by`` and overall.

    Values are rounded to ``decimals`` first: cells that cannot reach the readout (e.g. patch
    tokens after the last attention) are exactly 0 or 1 up to float noise in both tables, and
    ranking that noise would be arbitrary. Columns: the ``by`` keys ("all" in the overall
    row), rho, p_value, cells.
    """
    by = list(by)
    merged = exact.merge(approx, on=list(KEYS), suffixes=("_exact", "_approx"))
    if merged.empty:
        raise ValueError("the two summaries share no cells")
    rows = []

    def corr(df: pd.DataFrame) -> tuple[float, float]:
        a, b = (df[f"{value}_{k}"].to_numpy(np.float64) for k in ("exact", "approx"))
        a, b = np.round(a, decimals), np.round(b, decimals)
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
            return float("nan"), float("nan")
        res = spearmanr(a[ok], b[ok])
        return float(res.statistic), float(res.pvalue)

    for key, df in merged.groupby(by, sort=False):
        rho, p = corr(df)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                     "rho": rho, "p_value": p, "cells": len(df)})
    rho, p = corr(merged)
    rows.append({**dict.fromkeys(by, "all"), "rho": rho, "p_value": p, "cells": len(merged)})
    return pd.DataFrame(rows)


def attribution_cost(model: BViT, pairs: PairBatch, options: AttributionOptions = AttributionOptions(),
                     max_batch: int = 1024, warmup: bool = True) -> dict[str, float]:
    """Seconds of exact patching vs attribution patching of the same cells (summaries not included): exact_s, attribution_s, ratio."""
    runs = pair_runs(model, pairs)
    exact_opts = options.patching(max_batch=max_batch, n_boot=1)

    def exact() -> None:
        activation_patching(model, pairs, exact_opts, runs)

    def approx() -> None:
        attribution_patching(model, pairs, options, runs)

    if warmup:
        exact()
        approx()
    device = model_device(model)
    exact_s, approx_s = timed(exact, device), timed(approx, device)
    return {"pairs": float(len(pairs)), "exact_s": exact_s, "attribution_s": approx_s, "ratio": exact_s / approx_s}


def captum_attribution(
    model: BViT, pairs: PairBatch, site: str = "attn.z", method: str = "ig", direction: str = "denoising",
    steps: Iterable[int] | None = None, groups: tuple[str, ...] | None = None, per_head: bool = True,
    n_steps: int = 32, internal_batch_size: int | None = None, min_overlap: float = DEFAULT_MIN_OVERLAP,
    min_gap: float = DEFAULT_MIN_GAP, runs: PairRuns | None = None,
) -> pd.DataFrame:
    """captum layer attributions of ``site`` per (step, head, group, pair) through the per-step taps.

    Columns: method, direction, site, step, head, group, pair, delta, ld, recovered. For
    ``grad_x_diff`` and ``ig`` delta is the estimated change of the logit difference when the
    cell is patched from the other run (ld, recovered as ``attribution_patching``); for
    ``grad_x_act`` delta is captum's gradient x activation summed over the cell (ld, recovered NaN).
    """
    if method not in CAPTUM_METHODS:
        raise ValueError(f"method {method!r}: choose one of {CAPTUM_METHODS}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    from captum.attr import (  # lazily: captum is heavy
        LayerGradientXActivation,
        LayerIntegratedGradients,
    )

    model.eval()
    check_sites(model, (site,))
    layers = select_layers(model, None if steps is None else tuple(steps))
    group_masks = select_groups(model, pairs, groups, min_overlap)
    runs = runs or pair_runs(model, pairs)
    run_x, src_x = ((pairs.corrupted, pairs.clean) if direction == "denoising" else (pairs.clean, pairs.corrupted))
    run_x, src_x = model_input(model, run_x), model_input(model, src_x)
    device = model_device(model)
    run_ld = (runs.corrupted_ld if direction == "denoising" else runs.clean_ld).to(device)
    clean, corrupted = capture_runs(model, pairs, (site,)) if method == "grad_x_diff" else (None, None)

    def forward(x: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
        return logit_difference(model(x), right, wrong)

    taps = StepTaps(model.num_layers())
    args = (runs.right, runs.wrong)
    frames = []
    with taps.attach(model, site, layers=layers):
        if method == "ig":
            attrs = []
            for layer in layers:
                lig = LayerIntegratedGradients(forward, taps[layer])
                a = lig.attribute(run_x, baselines=src_x, additional_forward_args=args, n_steps=n_steps,
                                  internal_batch_size=internal_batch_size)
                attrs.append(-a.detach())  # attributions = LD(a_run) - LD(a_src) along the path: minus the patch's change
        else:
            gxa = LayerGradientXActivation(forward, [taps[layer] for layer in layers],
                                           multiply_by_inputs=method == "grad_x_act")
            attrs = [a.detach() for a in gxa.attribute(run_x, additional_forward_args=args)]
    for layer, a in zip(layers, attrs, strict=True):
        if method == "grad_x_diff":
            assert clean is not None and corrupted is not None
            src, run = (clean, corrupted) if direction == "denoising" else (corrupted, clean)
            a = a * (src[site, layer] - run[site, layer])
        cells = reduce_cells(a, site, per_head, group_masks)
        frame = _frame(direction, site, layer, cells, run_ld, runs, min_gap, {"method": method})
        if method == "grad_x_act":
            frame[["ld", "recovered"]] = np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


__all__ = ["CAPTUM_METHODS", "AttributionOptions", "attribution_cost", "attribution_patching", "captum_attribution",
           "rank_correlation", "reduce_cells"]
