"""Pathway metrics of per-step pruning masks (paper Sec. 4.2.3, App. G.4-G.5, Table 7, Figs. 5, 14).

Pure functions of ``StepMasks`` -> tidy tables, per layer type (qkv, proj, fc1, fc2) and
``all``, each metric beside its expectation under random masks of the same densities:
independent uniformly random masks with, per layer and step, as many active entries as
the real ones. Those expectations are analytic: weight-level sparsity
``prod_t (1 - d_t)``, specialization ``prod_{s != t} (1 - d_s)``, utilization a
Poisson-binomial over the step densities (all exact), Jaccard ``E[|A and B|] / E[|A or B|]``
(ratio of expectations, exact up to O(1/n)).

- mask-level sparsity: zeros over all steps' masks; weight-level sparsity: weights no step uses (Table 7).
- Jaccard (Eq. 11): ``|M_i and M_j| / |M_i or M_j|`` per step pair, averaged over pairs; a
  layer type pools its layers, ``all`` is the size-weighted average over layer types.
- specialization (Eq. 12): share of step t's active weights that no other step uses; NaN
  (``empty`` = True) when step t has no active weight in that layer type.
- utilization (Fig. 5): how many steps use each weight (0..T).

Tables use 1-based ``step``; ``round`` is the number of pruning rounds applied to the masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..pruning.masks import StepMasks, layer_type

ALL = "all"


def poisson_binomial(p: np.ndarray) -> np.ndarray:
    """P(k successes), k = 0..len(p), for independent Bernoulli(p_t) trials."""
    pmf = np.zeros(len(p) + 1)
    pmf[0] = 1.0
    for i, pi in enumerate(p):
        pmf[1 : i + 2] = pmf[1 : i + 2] * (1 - pi) + pmf[: i + 1] * pi
        pmf[0] *= 1 - pi
    return pmf


@dataclass
class MaskCounts:
    """Additive counts of one layer (or a pool of layers) and their random-mask expectations."""

    n: int  # weights per step
    active: np.ndarray  # [T] active entries per step
    inter: np.ndarray  # [T, T] |M_i and M_j|
    hist: np.ndarray  # [T + 1] weights used by k steps
    exclusive: np.ndarray  # [T] active entries of step t no other step uses
    r_inter: np.ndarray  # [T, T] expected |A_i and A_j| for random masks
    r_union: np.ndarray  # [T, T] expected |A_i or A_j|
    r_hist: np.ndarray  # [T + 1]
    r_exclusive: np.ndarray  # [T]

    @classmethod
    def of(cls, mask: torch.Tensor) -> MaskCounts:
        """Counts of one layer's [T, out, in] boolean mask."""
        m = mask.reshape(mask.shape[0], -1).bool()
        n = m.shape[1]
        mf = m.to(torch.float64)
        use = m.sum(0)
        active = mf.sum(1).numpy()
        d = active / n
        others = np.array([np.prod(np.delete(1 - d, t)) for t in range(len(d))])
        return cls(
            n=n,
            active=active,
            inter=(mf @ mf.T).numpy(),
            hist=torch.bincount(use, minlength=m.shape[0] + 1).double().numpy(),
            exclusive=(m & (use == 1)).sum(1).double().numpy(),
            r_inter=n * np.outer(d, d),
            r_union=n * (d[:, None] + d[None, :] - np.outer(d, d)),
            r_hist=n * poisson_binomial(d),
            r_exclusive=n * d * others,
        )

    def __add__(self, other: MaskCounts) -> MaskCounts:
        return MaskCounts(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    @property
    def steps(self) -> int:
        return len(self.active)

    def jaccard(self) -> tuple[np.ndarray, np.ndarray]:
        """(observed, random) [T, T] Jaccard matrices; NaN where both masks are empty."""
        union = self.active[:, None] + self.active[None, :] - self.inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.inter / union, np.nan), np.where(self.r_union > 0, self.r_inter / self.r_union, np.nan)

    def specialization(self) -> tuple[np.ndarray, np.ndarray]:
        """(observed, random) Eq. 12 per step; NaN for steps without active weights."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = self.active > 0
            return np.where(ok, self.exclusive / self.active, np.nan), np.where(ok, self.r_exclusive / self.active, np.nan)


def pair_mean(matrix: np.ndarray) -> float:
    """Mean over step pairs i < j, ignoring undefined (NaN) pairs; NaN for fewer than 2 steps."""
    iu = np.triu_indices(matrix.shape[0], k=1)
    vals = matrix[iu]
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _weighted_nanmean(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over axis 0 that skips NaN entries (NaN where all are NaN)."""
    w = np.where(np.isnan(stack), 0.0, weights.reshape(-1, *[1] * (stack.ndim - 1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w.sum(0) > 0, np.nansum(stack * w, axis=0) / w.sum(0), np.nan)


def pooled_counts(masks: StepMasks) -> dict[str, MaskCounts]:
    """Counts per layer type (layers of a type pooled) and ``all`` (every masked layer pooled)."""
    out: dict[str, MaskCounts] = {}
    for name, mask in masks.items():
        counts = MaskCounts.of(mask.cpu())
        kind = layer_type(name)
        out[kind] = out[kind] + counts if kind in out else counts
    out[ALL] = sum((out[k] for k in masks.layer_types[1:]), out[masks.layer_types[0]])
    return out


def mask_metrics(masks: StepMasks) -> dict[str, pd.DataFrame]:
    """Tables ``summary``, ``steps``, ``utilization``, ``pairs`` of one set of masks."""
    counts = pooled_counts(masks)
    types = list(masks.layer_types)
    steps = masks.steps
    jacc = {k: counts[k].jaccard() for k in types}
    sizes = np.array([counts[k].n for k in types], dtype=float)
    # Paper G.4: pairwise similarities within each layer type, size-weighted average over types.
    jacc[ALL] = tuple(_weighted_nanmean(np.stack([jacc[k][i] for k in types]), sizes) for i in (0, 1))

    summary, step_rows, util_rows, pair_rows = [], [], [], []
    for kind in [*types, ALL]:
        c = counts[kind]
        spec, r_spec = c.specialization()
        j, r_j = jacc[kind]
        summary.append({
            "round": masks.round,
            "layer_type": kind,
            "n_weights": c.n,
            "mask_sparsity": 1 - c.active.sum() / (steps * c.n),
            "weight_sparsity": c.hist[0] / c.n,
            "weight_sparsity_random": c.r_hist[0] / c.n,
            "jaccard": pair_mean(j),
            "jaccard_random": pair_mean(r_j),
            "specialization": _nanmean(spec),
            "specialization_random": _nanmean(r_spec),
            "empty_steps": int((c.active == 0).sum()),
        })
        for t in range(steps):
            step_rows.append({
                "round": masks.round, "layer_type": kind, "step": t + 1, "density": c.active[t] / c.n,
                "active": int(c.active[t]), "exclusive": int(c.exclusive[t]), "specialization": spec[t],
                "specialization_random": r_spec[t], "empty": bool(c.active[t] == 0),
            })
        n_used = c.n - c.hist[0]
        r_used = c.n - c.r_hist[0]
        for k in range(steps + 1):
            util_rows.append({
                "round": masks.round, "layer_type": kind, "utilization": k, "count": int(c.hist[k]),
                "fraction": c.hist[k] / c.n, "fraction_random": c.r_hist[k] / c.n,
                "fraction_of_used": c.hist[k] / n_used if k and n_used else float("nan"),
                "fraction_of_used_random": c.r_hist[k] / r_used if k and r_used else float("nan"),
            })
        for a in range(steps):
            for b in range(a + 1, steps):
                pair_rows.append({
                    "round": masks.round, "layer_type": kind, "step_i": a + 1, "step_j": b + 1,
                    "jaccard": j[a, b], "jaccard_random": r_j[a, b],
                })
    return {
        "summary": pd.DataFrame(summary),
        "steps": pd.DataFrame(step_rows),
        "utilization": pd.DataFrame(util_rows),
        "pairs": pd.DataFrame(pair_rows),
    }


def metrics_over_rounds(rounds: list[StepMasks]) -> dict[str, pd.DataFrame]:
    """``mask_metrics`` of every round's masks, concatenated (one table per kind)."""
    per_round = [mask_metrics(m) for m in rounds]
    return {name: pd.concat([r[name] for r in per_round], ignore_index=True) for name in per_round[0]}


def summary_table(summary: pd.DataFrame, rounds: pd.DataFrame) -> pd.DataFrame:
    """Per round: sparsities (Table 7), Jaccard, specialization (observed / random) and accuracy.

    ``summary`` is ``metrics_over_rounds(...)["summary"]``, ``rounds`` the per-round accuracy table of a run.
    """
    s = summary[summary["layer_type"] == ALL].set_index("round")
    r = rounds.set_index("round")
    out = pd.DataFrame({
        "mask sparsity": (100 * s["mask_sparsity"]).round(1),
        "weight sparsity": (100 * s["weight_sparsity"]).round(1),
        "(random)": (100 * s["weight_sparsity_random"]).round(1),
        "jaccard": s["jaccard"].round(3),
        "(random) ": s["jaccard_random"].round(3),
        "specialization": s["specialization"].round(3),
        "(random)  ": s["specialization_random"].round(3),
        "train acc": r["train_acc"].round(3),
        "val acc": r["val_acc"].round(3),
    })
    if r["val_acc_random"].notna().any():
        out["val acc random masks"] = r["val_acc_random"].astype(float).round(3)
    return out.reset_index()
