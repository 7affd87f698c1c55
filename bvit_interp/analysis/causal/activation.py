"""Activation patching over (site, step, head, token group) in both directions, on clean / corrupted pairs.

- denoising: the corrupted run with one activation taken from the clean run (how much of the
  clean behaviour that activation alone restores);
- noising: the clean run with one activation taken from the corrupted run (how much it breaks).

Both report the normalised metric of ``metric.py`` (1 clean, 0 corrupted), so a denoising value
near 1 says "sufficient" and a noising value near 0 says "necessary". A token group (CLS, object
patches, ...) differs per pair, so a patch carries a per-pair token mask (``GroupPatch``, a
``model.patching.Patch``); "all" patches every token.

Cost: each patched run resumes from the run's own ``resid_pre`` of the patched layer
(``model.patching.run_patched(start=layer)``), so layers before it are not recomputed, and the
variants of one layer are stacked along the batch (up to ``max_batch`` images per forward).
``patching_cost`` times a full (step x head) map this way against the naive loop of one full
forward per cell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from ...model import BViT
from ...model.hooks import ActivationCache, site_info
from ...model.patching import HEAD_SITES, Patch, run_patched
from .metric import (
    DEFAULT_MIN_GAP,
    PairRuns,
    logit_difference,
    model_device,
    model_input,
    normalise,
    pair_runs,
    summarise,
)
from .pairs import ALL, DEFAULT_MIN_OVERLAP, PairBatch, group_names, token_groups

DIRECTIONS = ("denoising", "noising")
DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out", "attn.z")
KEYS = ("direction", "site", "step", "head", "group")
ALL_HEADS = -1  # the head column of a site patched whole (no head axis, or all heads at once)


def check_directions_and_sites(directions: Sequence[str], sites: Sequence[str]) -> None:
    """ValueError unless ``directions`` are known and non-empty and at least one site is given."""
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ValueError(f"directions {list(directions)}: choose from {DIRECTIONS}")
    if not sites:
        raise ValueError("choose at least one site")


@dataclass(frozen=True, eq=False)
class GroupPatch(Patch):
    """A ``Patch`` restricted to a per-image token mask (B, N) bool: tokens that differ between images."""

    token_mask: torch.Tensor | None = None

    def check(self, model: BViT, start: int | None = None) -> None:
        """``Patch.check`` plus: a token mask needs a site with a token axis and excludes ``tokens``."""
        super().check(model, start)
        if self.token_mask is not None:
            if self.tokens is not None:
                raise ValueError("give a token mask or tokens, not both")
            if site_info(self.site)[1] is None:
                raise ValueError(f"site {self.site!r} has no token axis")

    def index(self, ndim: int, num_prefix_tokens: int) -> tuple[object, ...]:
        """Index of the patched (image, token) entries (the head too when given)."""
        if self.token_mask is None:
            return super().index(ndim, num_prefix_tokens)
        rows, toks = self.token_mask.nonzero(as_tuple=True)
        index: list[object] = [slice(None)] * ndim
        index[0] = rows
        if self.head is not None:
            index[1] = self.head
        index[site_info(self.site)[1]] = toks  # type: ignore[index]
        return tuple(index)


@dataclass(frozen=True)
class PatchingOptions:
    """Which cells to patch and how to summarise them (steps 1-based; None: all)."""

    sites: tuple[str, ...] = DEFAULT_SITES
    directions: tuple[str, ...] = DIRECTIONS
    groups: tuple[str, ...] | None = None  # None: "all" and every group the model has
    per_head: bool = True  # head sites (attn.z, q, k, v, pattern) one head at a time, else all heads at once
    steps: tuple[int, ...] | None = None
    min_overlap: float = DEFAULT_MIN_OVERLAP
    min_gap: float = DEFAULT_MIN_GAP
    resume: bool = True  # False: a full forward per cell (the reference)
    max_batch: int = 1024
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        check_directions_and_sites(self.directions, self.sites)
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the options (run metadata)."""
        return asdict(self)


def select_groups(model: BViT, pairs: PairBatch, groups: tuple[str, ...] | None, min_overlap: float) -> dict[str, torch.Tensor | None]:
    """{group: (P, N) token mask, None for "all"} on the model's device; ValueError for groups the model lacks."""
    have = (ALL, *group_names(model.config))
    chosen = have if groups is None else tuple(groups)
    bad = [g for g in chosen if g not in have]
    if bad:
        raise ValueError(f"token groups {bad}: this model has {list(have)}")
    masks = token_groups(model.config, pairs.object_mask.to(model_device(model)), min_overlap)
    return {g: None if g == ALL else masks[g] for g in chosen}


def select_layers(model: BViT, steps: tuple[int, ...] | None) -> list[int]:
    """0-based unrolled layers of 1-based ``steps`` (None: all); ValueError when out of range."""
    n = model.num_layers()
    if steps is None:
        return list(range(n))
    if any(not 1 <= s <= n for s in steps):
        raise ValueError(f"steps must lie in 1..{n}, got {list(steps)}")
    return [s - 1 for s in steps]


def check_sites(model: BViT, sites: tuple[str, ...]) -> None:
    """ValueError naming a site that cannot be patched here (unknown, global, read-out, or a non-resumable model)."""
    for site in sites:
        Patch(site, 0, 0.0).check(model)
    if not model.resumable:
        raise ValueError(f"model {model.config.name!r} carries state beside the residual stream; "
                         "causal patching here needs a plain blocks x steps model")


@torch.no_grad()
def capture_runs(model: BViT, pairs: PairBatch, sites: tuple[str, ...]) -> tuple[ActivationCache, ActivationCache]:
    """Caches of ``sites`` (and ``resid_pre``) at every layer for the clean and the corrupted inputs."""
    wanted = sorted({*sites, "resid_pre"})
    caches = []
    for x in (pairs.clean, pairs.corrupted):
        with model.capture(wanted) as cache:
            model(model_input(model, x))
        caches.append(cache)
    return caches[0], caches[1]


def _cells(model: BViT, sites: tuple[str, ...], per_head: bool, groups: dict[str, torch.Tensor | None]) -> list[tuple[str, int, str]]:
    """(site, head, group) of every variant of one layer (head ALL_HEADS: the whole site)."""
    out = []
    for site in sites:
        heads = range(model.config.num_heads) if per_head and site in HEAD_SITES else [ALL_HEADS]
        out += [(site, h, g) for h in heads for g in groups]
    return out


def _patch(site: str, layer: int, source: torch.Tensor, head: int, mask: torch.Tensor | None) -> GroupPatch:
    """One cell's patch (head ALL_HEADS: every head; mask None: every token)."""
    return GroupPatch(site, layer, source, head=None if head == ALL_HEADS else head, token_mask=mask)


@torch.no_grad()
def activation_patching(
    model: BViT, pairs: PairBatch, options: PatchingOptions = PatchingOptions(), runs: PairRuns | None = None,
    progress: Callable[[], object] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-pair table, summary) of patching every (direction, site, step, head, group) cell.

    ``progress`` (optional) is called once per finished (direction, layer): a progress bar's tick.

    per-pair: direction, site, step (1-based), head (-1: the whole site), group, pair, ld (the
    patched run's logit difference), recovered (normalised; NaN when the pair's gap < min_gap).
    summary: the cell keys, mean, ci_low, ci_high (bootstrap over pairs), pooled (TransformerLens's
    ratio of means), pooled_low, pooled_high, pairs (pairs in the mean).
    """
    model.eval()
    check_sites(model, options.sites)
    layers = select_layers(model, options.steps)
    groups = select_groups(model, pairs, options.groups, options.min_overlap)
    runs = runs or pair_runs(model, pairs)
    clean, corrupted = capture_runs(model, pairs, options.sites)
    n_pairs = len(pairs)
    per_forward = max(1, options.max_batch // n_pairs)
    cells = _cells(model, options.sites, options.per_head, groups)
    frames = []
    for direction in options.directions:
        run_x, run_cache, source = ((pairs.corrupted, corrupted, clean) if direction == "denoising"
                                    else (pairs.clean, clean, corrupted))
        run_x = model_input(model, run_x)
        for layer in layers:
            variants = [_patch(site, layer, source[site, layer], h, groups[g]) for site, h, g in cells]
            x, start = (run_cache["resid_pre", layer], layer) if options.resume else (run_x, None)
            lds = torch.cat([logit_difference(run_patched(model, x, variants[lo : lo + per_forward], start=start),
                                              runs.right, runs.wrong)
                             for lo in range(0, len(variants), per_forward)])  # (V, P)
            rec = normalise(lds, runs, options.min_gap)
            frames.append(pd.DataFrame({
                "direction": direction,
                "site": np.repeat([c[0] for c in cells], n_pairs),
                "step": layer + 1,
                "head": np.repeat([c[1] for c in cells], n_pairs),
                "group": np.repeat([c[2] for c in cells], n_pairs),
                "pair": np.tile(np.arange(n_pairs), len(cells)),
                "ld": lds.cpu().numpy().reshape(-1),
                "recovered": rec.cpu().numpy().reshape(-1),
            }))
            if progress is not None:
                progress()
    per_pair = pd.concat(frames, ignore_index=True)
    summary = summarise(per_pair, KEYS, runs, options.n_boot, options.ci, options.seed)
    return per_pair, summary


def step_head_matrix(summary: pd.DataFrame, direction: str, site: str = "attn.z", group: str = ALL,
                     value: str = "mean") -> np.ndarray:
    """Step x head matrix of ``value`` for one direction, site and group (rows: steps in order)."""
    sub = summary[(summary["direction"] == direction) & (summary["site"] == site) & (summary["group"] == group)]
    if sub.empty:
        raise ValueError(f"no rows for direction {direction!r}, site {site!r}, group {group!r}")
    return sub.pivot(index="step", columns="head", values=value).sort_index().to_numpy()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


@torch.no_grad()
def patching_cost(
    model: BViT, pairs: PairBatch, site: str = "attn.z", repeats: int = 1, max_batch: int = 1024, warmup: bool = True,
) -> dict[str, float]:
    """Seconds of one full (step x head) denoising map of ``site``: resumed + stacked vs the naive loop of full forwards.

    The naive loop runs one full forward of the corrupted inputs per (layer, head) cell with a
    plain hook; both produce the same numbers. Returns cells, naive_s, resumed_s (best of
    ``repeats``), ratio (naive / resumed), and the layer applications each needs per image.
    """
    model.eval()
    check_sites(model, (site,))
    clean, corrupted = capture_runs(model, pairs, (site,))
    heads = list(range(model.config.num_heads)) if site in HEAD_SITES else [None]
    n_layers = model.num_layers()
    x = model_input(model, pairs.corrupted)
    per_forward = max(1, max_batch // len(pairs))

    def resumed() -> None:
        for layer in range(n_layers):
            variants = [Patch(site, layer, clean[site, layer], head=h) for h in heads]
            for lo in range(0, len(variants), per_forward):
                run_patched(model, corrupted["resid_pre", layer], variants[lo : lo + per_forward], start=layer)

    def naive() -> None:
        for layer in range(n_layers):
            src = clean[site, layer]
            for h in heads:
                def edit(act: torch.Tensor, h: int | None = h, src: torch.Tensor = src) -> torch.Tensor:
                    act = act.clone()
                    if h is None:
                        return src.clone()
                    act[:, h] = src[:, h]
                    return act

                with model.patch({model.hook_name(site, layer): edit}):
                    model(x)

    if warmup:
        resumed()
        naive()
    device = model_device(model)
    resumed_s = min(timed(resumed, device) for _ in range(max(1, repeats)))
    naive_s = min(timed(naive, device) for _ in range(max(1, repeats)))
    cells = n_layers * len(heads)
    return {
        "cells": float(cells), "pairs": float(len(pairs)), "naive_s": naive_s, "resumed_s": resumed_s,
        "ratio": naive_s / resumed_s,
        "naive_layer_applications": float(cells * n_layers),
        "resumed_layer_applications": float(len(heads) * n_layers * (n_layers + 1) / 2),
    }


__all__ = ["ALL_HEADS", "DEFAULT_SITES", "DIRECTIONS", "KEYS", "GroupPatch", "PatchingOptions", "activation_patching",
           "capture_runs", "check_sites", "patching_cost", "select_groups", "select_layers", "step_head_matrix", "timed"]
