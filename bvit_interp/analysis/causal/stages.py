"""The causal analysis of one model in stages: each stage is a pure function returning named tables.

The ``causal`` command (through ``runs.causal``) runs the stages of every model and keeps each
finished stage, so a resumed run recomputes nothing it already holds:

- ``patching``: exact activation patching, per pair and summarised (``patching_pairs``, ``patching``);
- ``attribution``: attribution patching (and, with ``ig_steps``, captum's integrated gradients
  between the two runs on ``attn.z``), per pair and summarised (``attribution_pairs``, ``attribution``);
- ``dla``: direct logit attribution of the clean and the corrupted run (``dla``, ``dla_totals``)
  and total vs direct vs indirect effects per (step, head) (``effects_pairs``, ``effects``);
- ``probes``: per-step probes with control tasks (``probes``, ``probe_targets``).

``agreement`` compares the two summaries afterwards (Spearman rho per direction and site, the
timings of both). Tables use 1-based steps; ``head = -1`` is a whole site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from ...model import BViT
from ...model.patching import HEAD_SITES
from .activation import (
    DEFAULT_SITES,
    DIRECTIONS,
    KEYS,
    PatchingOptions,
    activation_patching,
    check_directions_and_sites,
    check_sites,
)
from .attribution import (
    AttributionOptions,
    attribution_patching,
    captum_attribution,
    rank_correlation,
)
from .dla import direct_effects, direct_logit_attribution
from .metric import DEFAULT_MIN_GAP, PairRuns, summarise
from .pairs import MaskedImages, PairBatch
from .probes import ProbeOptions, run_probes

STAGES = ("patching", "attribution", "dla", "probes")
EFFECTS = ("total", "direct", "direct_linear", "indirect")
Tick = Callable[[], object]


@dataclass(frozen=True)
class CausalOptions:
    """What the causal analysis computes (everything that changes its numbers; batch sizes are not here)."""

    sites: tuple[str, ...] = DEFAULT_SITES
    directions: tuple[str, ...] = DIRECTIONS
    attribution: bool = True
    ig_steps: int = 0  # integrated-gradients steps on attn.z (0: no IG)
    dla: bool = True
    probes: bool = True
    min_gap: float = DEFAULT_MIN_GAP
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_directions_and_sites(self.directions, self.sites)
        if self.ig_steps < 0:
            raise ValueError(f"ig_steps must be >= 0, got {self.ig_steps}")

    def to_dict(self) -> dict[str, object]:
        """Plain dict of the options (run metadata)."""
        return asdict(self)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages these options run, in order."""
        on = {"patching": True, "attribution": self.attribution, "dla": self.dla, "probes": self.probes}
        return tuple(s for s in STAGES if on[s])

    def patching(self, max_batch: int = 1024) -> PatchingOptions:
        """Options of the exact patching stage."""
        return PatchingOptions(sites=self.sites, directions=self.directions, min_gap=self.min_gap,
                               max_batch=max_batch, n_boot=self.n_boot, seed=self.seed)

    def attribution_options(self) -> AttributionOptions:
        """Options of the attribution stage (the same cells as exact patching)."""
        return AttributionOptions(sites=self.sites, directions=self.directions, min_gap=self.min_gap)

    def ig_site(self) -> str | None:
        """The site integrated gradients runs on (attn.z when chosen and ig_steps > 0), else None."""
        return "attn.z" if self.ig_steps and "attn.z" in self.sites else None

    def ticks(self, model: BViT, with_probes: bool = True) -> dict[str, int]:
        """Progress units per stage: (direction, layer) passes of patching and IG, one per other part."""
        n = model.num_layers()
        units = {"patching": len(self.directions) * n}
        if self.attribution:
            units["attribution"] = 1 + (len(self.directions) * n if self.ig_site() else 0)
        if self.dla:
            units["dla"] = 1 + len(self.directions)
        if self.probes and with_probes:
            units["probes"] = 1
        return units


def check_options(model: BViT, options: CausalOptions) -> None:
    """ValueError naming ``--model`` for a model that cannot resume from one layer, ``--sites`` for a bad site."""
    if not model.resumable:
        raise ValueError(f"--model {model.config.name}: carries state beside the residual stream (bViT-fl / -sc); "
                         "the causal analysis needs a plain blocks x steps model")
    try:
        check_sites(model, options.sites)
    except ValueError as err:
        raise ValueError(f"--sites: {err}") from None


def pair_table(pairs: PairBatch, runs: PairRuns) -> pd.DataFrame:
    """One row per pair: names, labels, the contrasted classes, both runs' logit differences, clean_correct."""
    table = pairs.table().merge(runs.table(), on="pair")
    table["clean_correct"] = (runs.clean_logits.argmax(-1) == runs.right).cpu().numpy()
    return table


def skipped_table(skipped: list[tuple[str, str]], what: str) -> pd.DataFrame:
    """Items left out (name, reason) of the pairs or the probe images."""
    return pd.DataFrame({"what": what, "name": [n for n, _ in skipped], "reason": [r for _, r in skipped]},
                        columns=["what", "name", "reason"])


def patching_stage(model: BViT, pairs: PairBatch, runs: PairRuns, options: CausalOptions, max_batch: int = 1024,
                   tick: Tick | None = None) -> dict[str, pd.DataFrame]:
    """Exact activation patching: ``patching_pairs`` (per pair) and ``patching`` (summary with CIs)."""
    per_pair, summary = activation_patching(model, pairs, options.patching(max_batch), runs, progress=tick)
    return {"patching_pairs": per_pair, "patching": summary}


def attribution_stage(model: BViT, pairs: PairBatch, runs: PairRuns, options: CausalOptions,
                      tick: Tick | None = None) -> dict[str, pd.DataFrame]:
    """Attribution patching (method ``attribution``) and, with ``ig_steps``, integrated gradients (``ig``).

    Tables: ``attribution_pairs`` (per pair) and ``attribution`` (summary, as exact patching's), both
    with a ``method`` column; ``attribution_seconds`` holds each method's wall seconds.
    """
    import time

    t0 = time.perf_counter()
    approx = attribution_patching(model, pairs, options.attribution_options(), runs).assign(method="attribution")
    seconds = [{"method": "attribution", "seconds": time.perf_counter() - t0}]
    if tick is not None:
        tick()
    parts = [approx]
    site = options.ig_site()
    if site is not None:
        t0 = time.perf_counter()
        for direction in options.directions:
            for layer in range(model.num_layers()):
                frame = captum_attribution(model, pairs, site, "ig", direction, steps=[layer + 1],
                                           n_steps=options.ig_steps, min_gap=options.min_gap, runs=runs)
                parts.append(frame)
                if tick is not None:
                    tick()
        seconds.append({"method": "ig", "seconds": time.perf_counter() - t0})
    per_pair = pd.concat(parts, ignore_index=True)
    per_pair = per_pair[["method", *KEYS, "pair", "delta", "ld", "recovered"]]
    summaries = [summarise(rows.drop(columns="method"), KEYS, runs, options.n_boot, seed=options.seed)
                 .assign(method=method) for method, rows in per_pair.groupby("method", sort=False)]
    summary = pd.concat(summaries, ignore_index=True)
    summary = summary[["method", *[c for c in summary.columns if c != "method"]]]
    return {"attribution_pairs": per_pair, "attribution": summary, "attribution_seconds": pd.DataFrame(seconds)}


def effects_summary(per_pair: pd.DataFrame, runs: PairRuns, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap CI over pairs of each effect (total, direct, direct_linear, indirect) per (direction, step, head).

    ``pooled`` (ratio of mean logit differences, with its CI) is given for the total, direct and
    indirect effects (indirect: pooled total - pooled direct, from ``ld_total - ld_direct +
    LD_corrupted`` per pair); NaN for ``direct_linear``.
    """
    corrupted = runs.corrupted_ld.double().cpu().numpy()[per_pair["pair"].to_numpy()]
    per_pair = per_pair.assign(ld_indirect=per_pair["ld_total"] - per_pair["ld_direct"] + corrupted)
    lds = {"total": "ld_total", "direct": "ld_direct", "indirect": "ld_indirect"}
    parts = []
    for effect in EFFECTS:
        cols = ["direction", "step", "head", "pair", effect] + ([lds[effect]] if effect in lds else [])
        table = per_pair[cols].rename(columns={effect: "value", **({lds[effect]: "ld"} if effect in lds else {})})
        parts.append(summarise(table, ["direction", "step", "head"], runs, n_boot, seed=seed, value="value")
                     .assign(effect=effect))
    out = pd.concat(parts, ignore_index=True)
    return out[["effect", *[c for c in out.columns if c != "effect"]]]


def effects_wide(summary: pd.DataFrame, direction: str, value: str = "pooled") -> pd.DataFrame:
    """One direction's effects summary as columns step, head, total, direct, indirect (``value`` of each)."""
    rows = summary[(summary["direction"] == direction) & summary["effect"].isin(["total", "direct", "indirect"])]
    wide = rows.pivot_table(index=["step", "head"], columns="effect", values=value, aggfunc="first", dropna=False)
    return wide.reindex(columns=["total", "direct", "indirect"]).reset_index().assign(direction=direction)


def dla_stage(model: BViT, pairs: PairBatch, runs: PairRuns, options: CausalOptions,
              tick: Tick | None = None) -> dict[str, pd.DataFrame]:
    """DLA of both runs under the clean run's frozen norm scale, and total vs direct vs indirect effects.

    Tables: ``dla`` (run, pair, term, step, head, value), ``dla_totals`` (run, pair, ld, total,
    error: the frozen-scale approximation's error, 0 up to rounding for the clean run),
    ``effects_pairs`` and ``effects`` (their summary per effect).
    """
    terms, totals = [], []
    for run in ("clean", "corrupted"):
        t, tot = direct_logit_attribution(model, pairs, run, runs)
        terms.append(t.assign(run=run))
        totals.append(tot.assign(run=run))
    if tick is not None:
        tick()
    effects = []
    for direction in options.directions:
        effects.append(direct_effects(model, pairs, direction, min_gap=options.min_gap, runs=runs))
        if tick is not None:
            tick()
    per_pair = pd.concat(effects, ignore_index=True)

    def first(df: pd.DataFrame, col: str) -> pd.DataFrame:
        return df[[col, *[c for c in df.columns if c != col]]]

    return {"dla": first(pd.concat(terms, ignore_index=True), "run"),
            "dla_totals": first(pd.concat(totals, ignore_index=True), "run"),
            "effects_pairs": per_pair, "effects": effects_summary(per_pair, runs, options.n_boot, options.seed)}


def probe_stage(model: BViT, data: MaskedImages, options: CausalOptions, batch_size: int = 256,
                tick: Tick | None = None) -> dict[str, pd.DataFrame]:
    """Per-step probes on the CLS state and object tokens with control tasks: ``probes``, ``probe_targets``."""
    with torch.no_grad():
        probes, targets = run_probes(model, data.images, data.masks, data.labels, ProbeOptions(seed=options.seed))
    if tick is not None:
        tick()
    return {"probes": probes, "probe_targets": targets.assign(name=data.names)}


def agreement(exact: pd.DataFrame, approx: pd.DataFrame, seconds: dict[str, float]) -> pd.DataFrame:
    """Spearman rho of each attribution method against exact patching per (direction, site) and overall, with timings.

    ``exact_s`` is the exact patching stage's seconds (every site), ``method_s`` the method's;
    ``speedup`` = exact_s / method_s where both cover the same cells (attribution patching), NaN
    for integrated gradients (one site only).
    """
    rows = []
    for method, table in approx.groupby("method", sort=False):
        corr = rank_correlation(exact, table.drop(columns="method"))
        method_s = seconds.get(str(method), float("nan"))
        exact_s = seconds.get("exact", float("nan"))
        same_cells = method == "attribution"
        rows.append(corr.assign(method=method, exact_s=exact_s, method_s=method_s,
                                speedup=exact_s / method_s if same_cells and method_s else np.nan))
    if not rows:
        return pd.DataFrame(columns=["method", "direction", "site", "rho", "p_value", "cells", "exact_s", "method_s",
                                     "speedup"])
    out = pd.concat(rows, ignore_index=True)
    return out[["method", *[c for c in out.columns if c != "method"]]]


def head_sites(sites: tuple[str, ...]) -> list[str]:
    """The chosen sites with a head axis (step x head maps), in order."""
    return [s for s in sites if s in HEAD_SITES]


__all__ = ["EFFECTS", "STAGES", "CausalOptions", "agreement", "attribution_stage", "check_options", "dla_stage",
           "effects_summary", "effects_wide", "head_sites", "pair_table", "patching_stage", "probe_stage", "skipped_table"]
