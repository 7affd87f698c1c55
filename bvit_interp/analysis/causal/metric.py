"""The patching metric: the logit difference between a pair's two classes, normalised between its two runs.

For pair p with clean class a and second class b (the corrupted label, or for a pair without
one the corrupted run's highest-scoring class other than a), ``LD = logit[a] - logit[b]``.
The normalised metric (TransformerLens's convention) is ``(LD - LD_corrupted) / (LD_clean -
LD_corrupted)``: 1 for the clean run, 0 for the corrupted run, in both patching directions.

Summaries (``summarise``) give per cell: the mean of the per-pair normalised values over the
pairs whose gap ``|LD_clean - LD_corrupted|`` is at least ``min_gap`` (a small gap makes a
per-pair ratio explode), with a seeded percentile bootstrap interval over pairs; and the
pooled value, TransformerLens's ratio of means ``(mean LD - mean LD_corrupted) / (mean LD_clean
- mean LD_corrupted)`` over all pairs, with its bootstrap interval from the same resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ...model import BViT
from .pairs import NO_CLASS, PairBatch

DEFAULT_MIN_GAP = 1.0  # logits; pairs closer than this are left out of per-pair means (kept in pooled)


@dataclass
class PairRuns:
    """The two unpatched runs of a batch of pairs: the class pair each metric contrasts and both runs' logits."""

    right: torch.Tensor  # (P,) the clean class
    wrong: torch.Tensor  # (P,) the second class
    clean_logits: torch.Tensor  # (P, C)
    corrupted_logits: torch.Tensor  # (P, C)

    @property
    def clean_ld(self) -> torch.Tensor:
        """(P,) logit difference of the clean run."""
        return logit_difference(self.clean_logits, self.right, self.wrong)

    @property
    def corrupted_ld(self) -> torch.Tensor:
        """(P,) logit difference of the corrupted run."""
        return logit_difference(self.corrupted_logits, self.right, self.wrong)

    @property
    def gap(self) -> torch.Tensor:
        """(P,) clean minus corrupted logit difference: the normaliser."""
        return self.clean_ld - self.corrupted_ld

    def table(self) -> pd.DataFrame:
        """One row per pair: pair, right, wrong, ld_clean, ld_corrupted, gap."""
        return pd.DataFrame({
            "pair": np.arange(len(self.right)), "right": self.right.cpu().numpy(), "wrong": self.wrong.cpu().numpy(),
            "ld_clean": self.clean_ld.cpu().numpy(), "ld_corrupted": self.corrupted_ld.cpu().numpy(),
            "gap": self.gap.cpu().numpy(),
        })


def model_device(model: BViT) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def model_input(model: BViT, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device, in its parameters' floating dtype (float64 models give exact tests)."""
    param = next(model.parameters())
    return x.to(device=param.device, dtype=param.dtype if x.is_floating_point() else x.dtype)


def as_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 when it already is."""
    return t if t.dtype == torch.float64 else t.float()


def logit_difference(logits: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """``logit[right] - logit[wrong]`` per pair of logits (..., P, C) -> (..., P), in float32."""
    shape = logits.shape[:-1]
    r = right.to(logits.device).expand(shape)[..., None]
    w = wrong.to(logits.device).expand(shape)[..., None]
    return as_float(logits.gather(-1, r) - logits.gather(-1, w))[..., 0]


def second_class(corrupted_logits: torch.Tensor, right: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The pair's corrupted label, or (NO_CLASS or equal to ``right``) the corrupted run's top class other than ``right``."""
    masked = corrupted_logits.float().scatter(-1, right[:, None], float("-inf"))
    fallback = masked.argmax(-1)
    usable = (labels != NO_CLASS) & (labels != right)
    return torch.where(usable, labels, fallback)


@torch.no_grad()
def pair_runs(model: BViT, pairs: PairBatch) -> PairRuns:
    """Both unpatched runs of ``pairs`` (on the model's device) and the class pair of each."""
    device = model_device(model)
    top = int(torch.cat([pairs.clean_label, pairs.corrupted_label]).max())
    if int(pairs.clean_label.min()) < 0 or top >= model.config.num_classes:
        raise ValueError(f"pair labels must be class indices of the model (0..{model.config.num_classes - 1}), "
                         f"got clean labels {int(pairs.clean_label.min())}..{int(pairs.clean_label.max())} "
                         f"and corrupted labels up to {top}")
    clean_logits = model(model_input(model, pairs.clean))
    corrupted_logits = model(model_input(model, pairs.corrupted))
    right = pairs.clean_label.to(device)
    wrong = second_class(corrupted_logits, right, pairs.corrupted_label.to(device))
    return PairRuns(right, wrong, clean_logits, corrupted_logits)


def normalise(ld: torch.Tensor, runs: PairRuns, min_gap: float = 0.0) -> torch.Tensor:
    """``(LD - LD_corrupted) / (LD_clean - LD_corrupted)`` per pair (..., P); NaN where the gap is below ``min_gap`` (or 0)."""
    gap = runs.gap.to(ld.device)
    out = (ld - runs.corrupted_ld.to(ld.device)) / gap
    bad = (gap.abs() < min_gap) | (gap == 0)
    return out.masked_fill(bad.expand_as(out), float("nan"))


def bootstrap_weights(n_pairs: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_pairs) multinomial counts of a seeded resampling of the pairs with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_pairs, np.full(n_pairs, 1.0 / n_pairs), size=n_boot).astype(np.float64)


def summarise(
    per_pair: pd.DataFrame, keys: Sequence[str], runs: PairRuns, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
    value: str = "recovered", ld: str = "ld",
) -> pd.DataFrame:
    """Per cell (``keys``): mean of ``value`` with a bootstrap CI, pooled ratio of means of ``ld`` with its CI, pairs.

    ``per_pair`` needs ``keys``, ``pair``, ``value`` and (for the pooled value) ``ld``; every cell
    must hold the same pairs. A NaN ``value`` (small gap) is left out of that pair's mean.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    keys = list(keys)
    n_pairs = len(runs.right)
    ordered = per_pair.sort_values([*keys, "pair"], kind="stable")
    cells = ordered[keys].drop_duplicates().reset_index(drop=True)
    if len(ordered) != len(cells) * n_pairs:
        raise ValueError("every cell must hold every pair once")
    vals = ordered[value].to_numpy(np.float64).reshape(len(cells), n_pairs)
    weights = bootstrap_weights(n_pairs, n_boot, seed)
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    valid = ~np.isnan(vals)
    filled = np.where(valid, vals, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (every gap below min_gap) stay NaN
        boot = (filled @ weights.T) / (valid.astype(np.float64) @ weights.T)
        out = cells.copy()
        out["mean"] = filled.sum(1) / valid.sum(1)
        out["ci_low"] = np.nanpercentile(boot, lo_q, axis=1) if boot.size else np.nan
        out["ci_high"] = np.nanpercentile(boot, hi_q, axis=1) if boot.size else np.nan
        out["pairs"] = valid.sum(1)
        if ld in ordered.columns:
            lds = ordered[ld].to_numpy(np.float64).reshape(len(cells), n_pairs)
            clean = runs.clean_ld.double().cpu().numpy()
            corrupted = runs.corrupted_ld.double().cpu().numpy()
            out["pooled"] = (lds.mean(1) - corrupted.mean()) / (clean.mean() - corrupted.mean())
            w_corr, w_clean = weights @ corrupted, weights @ clean
            pooled_boot = (lds @ weights.T - w_corr) / (w_clean - w_corr)
            out["pooled_low"] = np.nanpercentile(pooled_boot, lo_q, axis=1)
            out["pooled_high"] = np.nanpercentile(pooled_boot, hi_q, axis=1)
    return out


__all__ = ["DEFAULT_MIN_GAP", "PairRuns", "as_float", "bootstrap_weights", "logit_difference", "model_device", "model_input", "normalise",
           "pair_runs", "second_class", "summarise"]
