"""Rank analysis and zero-shot truncated-SVD sweeps (paper App. A.2, Figs. 6-7).

Three measures of how much rank a matrix uses, from its singular values s (descending):

- energy rank: the smallest k with sum(s[:k]**2) >= threshold * sum(s**2) (paper: 95%);
- stable rank: sum(s**2) / s[0]**2 (a smooth lower bound of the rank);
- entropy effective rank: exp(H(p)) with p = s / sum(s) (Roy & Vetterli, 2007).

They are reported for every weight matrix of every block (qkv split into q, k, v; the
attention output ``proj``; ``fc1``; ``fc2``) and per head for q, k, v and o (o = the head's
slice of proj's input columns), and for the CLS-token matrix (images x width) after every
step, uncentred and centred. The sweep replaces chosen matrices by rank-r approximations
(one SVD per matrix, cached) and evaluates accuracy at each r; biases are left untouched,
and the model's weights are restored bit for bit after every rank, also on error.

Tables use 1-based ``step`` (position in the unrolled network) and 0-based ``block`` (the
index in ``blocks.{b}``, as in parameter names); ``head`` is <NA> for whole matrices.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..evaluation import evaluate_accuracy
from ..model import BViT, BViTConfig
from .states import cls_states

ENERGY_THRESHOLD = 0.95
WEIGHT_MATRICES = ("q", "k", "v", "proj", "fc1", "fc2")
HEAD_MATRICES = ("q", "k", "v", "o")
SWEEP_MATRICES = ("fc1", "fc2")
# Paper App. A.2: ranks evaluated for width-768 models (bViT-B, ViT-B).
PAPER_RANKS = (64, 128, 256, 384, 512, 640, 702, 744, 760, 768)
PAPER_WIDTH = 768
MEASURES = ("energy_rank", "stable_rank", "entropy_rank")


# ----------------------------------------------------------------------------- spectra
def singular_values(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """Singular values in float64, descending: exact enough to compare ranks with numpy."""
    t = torch.as_tensor(matrix).detach().to(torch.float64)
    return torch.linalg.svdvals(t).cpu().numpy()


def _check_threshold(threshold: float) -> None:
    """Reject energy thresholds outside (0, 1], naming the option."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")


def energy_rank(s: np.ndarray, threshold: float = ENERGY_THRESHOLD) -> int:
    """Smallest k whose top-k squared singular values hold ``threshold`` of the energy (0 for a zero matrix)."""
    _check_threshold(threshold)
    energy = np.asarray(s, dtype=np.float64) ** 2
    total = energy.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(energy) / total
    # A relative slack absorbs rounding at threshold=1.0 (cum[-1] may be 1 - 1e-16).
    return int(min(np.searchsorted(cum, threshold * (1 - 1e-12)) + 1, len(s)))


def stable_rank(s: np.ndarray) -> float:
    """||A||_F^2 / ||A||_2^2: insensitive to small singular values (0 for a zero matrix)."""
    s = np.asarray(s, dtype=np.float64)
    top = s.max(initial=0.0)
    return float((s**2).sum() / top**2) if top > 0 else 0.0


def entropy_rank(s: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised singular values (Roy & Vetterli's effective rank)."""
    s = np.asarray(s, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def spectrum_measures(s: np.ndarray, threshold: float = ENERGY_THRESHOLD) -> dict[str, float]:
    """All three rank measures of one spectrum, keyed as the table columns."""
    return {"energy_rank": energy_rank(s, threshold), "stable_rank": stable_rank(s), "entropy_rank": entropy_rank(s)}


# ----------------------------------------------------------------------------- matrices
@dataclass(frozen=True)
class MatrixRef:
    """A weight matrix of one block, or one head's slice of it: parameter name plus row/column range."""

    block: int
    matrix: str
    head: int | None
    param: str
    rows: tuple[int, int]
    cols: tuple[int, int]

    def view(self, model: torch.nn.Module) -> torch.Tensor:
        """The matrix as a view into the parameter's storage (writes go to the model)."""
        weight = model.get_parameter(self.param).data
        return weight[self.rows[0] : self.rows[1], self.cols[0] : self.cols[1]]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]


def matrix_refs(
    config: BViTConfig,
    matrices: Sequence[str] = WEIGHT_MATRICES,
    blocks: Sequence[int] | None = None,
    heads: bool = False,
) -> list[MatrixRef]:
    """Whole matrices (``matrices`` from WEIGHT_MATRICES) or, with ``heads``, per-head q/k/v/o slices."""
    allowed = HEAD_MATRICES if heads else WEIGHT_MATRICES
    unknown = [m for m in matrices if m not in allowed]
    if unknown:
        raise ValueError(f"unknown matrices {unknown}; choose from {', '.join(allowed)}")
    block_ids = list(range(config.blocks)) if blocks is None else [int(b) for b in blocks]
    bad = [b for b in block_ids if not 0 <= b < config.blocks]
    if bad:
        raise ValueError(f"blocks {bad} out of range for a model with {config.blocks} block(s)")
    d, hidden, dh = config.embed_dim, int(config.embed_dim * config.mlp_ratio), config.head_dim
    refs = []
    for b in block_ids:
        qkv, proj = f"blocks.{b}.attn.qkv.weight", f"blocks.{b}.attn.proj.weight"
        for m in matrices:
            if m in ("q", "k", "v"):
                base = "qkv".index(m) * d
                if heads:
                    refs += [MatrixRef(b, m, h, qkv, (base + h * dh, base + (h + 1) * dh), (0, d)) for h in range(config.num_heads)]
                else:
                    refs.append(MatrixRef(b, m, None, qkv, (base, base + d), (0, d)))
            elif m == "o":
                refs += [MatrixRef(b, m, h, proj, (0, d), (h * dh, (h + 1) * dh)) for h in range(config.num_heads)]
            elif m == "proj":
                refs.append(MatrixRef(b, m, None, proj, (0, d), (0, d)))
            elif m == "fc1":
                refs.append(MatrixRef(b, m, None, f"blocks.{b}.mlp.fc1.weight", (0, hidden), (0, d)))
            else:
                refs.append(MatrixRef(b, m, None, f"blocks.{b}.mlp.fc2.weight", (0, d), (0, hidden)))
    return refs


def weight_ranks(model: BViT, threshold: float = ENERGY_THRESHOLD, heads: bool = True) -> pd.DataFrame:
    """Rank measures of every weight matrix per block (and per head for q/k/v/o): one row each."""
    _check_threshold(threshold)
    refs = matrix_refs(model.config)
    if heads:
        refs += matrix_refs(model.config, HEAD_MATRICES, heads=True)
    rows = []
    for ref in refs:
        s = singular_values(ref.view(model))
        rows.append({
            "block": ref.block, "matrix": ref.matrix, "head": ref.head,
            "rows": ref.shape[0], "cols": ref.shape[1], "full_rank": min(ref.shape),
            **spectrum_measures(s, threshold),
        })
    df = pd.DataFrame(rows)
    df["head"] = df["head"].astype("Int64")
    df["energy_frac"] = df["energy_rank"] / df["full_rank"]
    df["depth"] = model.config.depth
    df["threshold"] = threshold
    return df


# ----------------------------------------------------------------------------- CLS states
@torch.no_grad()
def cls_ranks(
    model: BViT,
    loader: DataLoader,
    threshold: float = ENERGY_THRESHOLD,
    steps: int | None = None,
    device: torch.device | str | None = None,
) -> pd.DataFrame:
    """Ranks of the (images x width) CLS matrix after every step, uncentred and centred, in one pass.

    The state after a step is the one the next step receives (``states.cls_states``:
    ``resid_post`` plus, for -TE models, the step's time embedding), as in every dynamics
    analysis. Per batch the CLS states are folded into a float64 Gram matrix per step, so memory
    stays at steps x width^2 whatever the number of images; the singular values are the square
    roots of the Gram eigenvalues (centred: Gram - n mu mu^T).
    """
    _check_threshold(threshold)
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    grams: dict[int, torch.Tensor] = {}
    sums: dict[int, torch.Tensor] = {}
    n = 0
    try:
        for batch in loader:
            images = batch[0].to(device)
            with torch.no_grad():
                states = cls_states(model, images, steps).to(torch.float64)  # (layers, B, D)
            for layer, x in enumerate(states):
                grams[layer] = grams.get(layer, 0) + x.T @ x
                sums[layer] = sums.get(layer, 0) + x.sum(0)
            n += images.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("cls_ranks got an empty loader")
    rows = []
    for layer in sorted(grams):
        mean = sums[layer] / n
        for centred, gram in ((False, grams[layer]), (True, grams[layer] - n * torch.outer(mean, mean))):
            eig = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0).cpu().numpy()
            s = np.sqrt(eig)[: min(n, len(eig))]
            rows.append({
                "step": layer + 1, "centred": centred, "images": n, "width": len(eig),
                "full_rank": min(n - int(centred), len(eig)), **spectrum_measures(s, threshold),
            })
    df = pd.DataFrame(rows)
    df["threshold"] = threshold
    return df


# ----------------------------------------------------------------------------- truncation
class Factors(NamedTuple):
    """Thin SVD of one matrix in float64: ``matrix = u @ diag(s) @ vh``."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor


def default_ranks(width: int) -> list[int]:
    """The paper's ranks (for width 768) scaled to ``width``, clipped to [1, width], deduplicated."""
    scaled = {min(width, max(1, round(r * width / PAPER_WIDTH))) for r in PAPER_RANKS}
    return sorted(scaled)


def svd_factors(model: BViT, refs: Sequence[MatrixRef]) -> dict[MatrixRef, Factors]:
    """One thin SVD per matrix (float64, on the weights' device), reused for every rank."""
    out = {}
    for ref in refs:
        u, s, vh = torch.linalg.svd(ref.view(model).to(torch.float64), full_matrices=False)
        out[ref] = Factors(u, s, vh)
    return out


@contextlib.contextmanager
def low_rank(model: BViT, rank: int, factors: Mapping[MatrixRef, Factors]) -> Iterator[None]:
    """Within the block, each matrix in ``factors`` is its rank-``rank`` approximation; restored in ``finally``."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    originals: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for ref, (u, s, vh) in factors.items():
                view = ref.view(model)
                originals.append((view, view.clone()))
                r = min(rank, len(s))
                view.copy_(((u[:, :r] * s[:r]) @ vh[:r]).to(view.dtype))
        yield
    finally:
        with torch.no_grad():
            for view, saved in originals:
                view.copy_(saved)


def kept_energy(factors: Mapping[MatrixRef, Factors], rank: int) -> float:
    """Mean over the matrices of the fraction of squared singular values kept at ``rank``."""
    fracs = [float((f.s[:rank] ** 2).sum() / (f.s**2).sum().clamp(min=1e-300)) for f in factors.values()]
    return float(np.mean(fracs)) if fracs else 1.0


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def truncation_sweep(
    model: BViT,
    loader: DataLoader,
    ranks: Sequence[int] | None = None,
    matrices: Sequence[str] = SWEEP_MATRICES,
    blocks: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    amp: bool = False,
    baseline: bool = True,
) -> pd.DataFrame:
    """Accuracy with ``matrices`` (all ``blocks``) replaced by rank-r approximations, for each r in ``ranks``.

    Default ranks: ``default_ranks(width)``. One row per rank with the mean energy kept, the
    accuracy, the unmodified model's accuracy (``baseline``) and timings (``svd_s`` is the
    one-off cost of all SVDs, ``eval_s`` the evaluation at that rank).
    """
    ranks = default_ranks(model.config.embed_dim) if ranks is None else sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 1:
        raise ValueError(f"ranks must be positive integers, got {list(ranks)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    refs = matrix_refs(model.config, matrices, blocks)
    base_acc = evaluate_accuracy(model, loader, device, amp=amp)[0] if baseline else float("nan")
    _sync(device)
    start = time.perf_counter()
    factors = svd_factors(model, refs)
    _sync(device)
    svd_s = time.perf_counter() - start
    rows = []
    for r in ranks:
        start = time.perf_counter()
        with low_rank(model, r, factors):
            acc, n = evaluate_accuracy(model, loader, device, amp=amp)
        rows.append({
            "rank": r, "rank_frac": r / model.config.embed_dim, "kept_energy": kept_energy(factors, r),
            "accuracy": acc, "baseline_accuracy": base_acc, "images": n,
            "matrices": ",".join(matrices), "blocks": "all" if blocks is None else ",".join(map(str, blocks)),
            "num_matrices": len(refs), "svd_s": svd_s, "eval_s": time.perf_counter() - start,
        })
    return pd.DataFrame(rows)
