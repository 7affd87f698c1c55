"""Trajectories of the CLS state across recurrent steps (paper App. E.2, Fig. 9).

The CLS residual state of N images after every unrolled layer (one forward pass per batch,
``states.cls_states``: ``resid_post`` plus the time embedding, if any) gives N x L points. All of them are embedded jointly in 2-D
with PaCMAP, so positions are comparable across steps; per-class panels coloured by step
reproduce Fig. 9 and per-class centroids trace each class's path. Because a 2-D map can
mislead, every point also gets a kNN-preservation score: the fraction of its k nearest
neighbours in the (normalised) state space that stay among its k nearest in the embedding.

PaCMAP reproducibility (pacmap 0.9): ``random_state`` is stored in a module global when an
estimator is built (and a later ``PaCMAP(...)`` changes it), the fit seeds NumPy's global
RNG and sets faiss to one OpenMP thread, and an estimator keeps its neighbour pairs after a
fit. ``pacmap_embed`` therefore builds a fresh estimator right before each fit and restores
NumPy's RNG state and the OpenMP thread counts of faiss and torch afterwards (numba's OpenMP
layer resets the shared runtime's thread count). The numba kernels seed per point, so
the result does not depend on numba's thread count (checked by the tests).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..model import BViT
from .states import collect_cls_states

NORMALIZATIONS = ("none", "rms", "step")


@dataclass(frozen=True)
class TrajectoryOptions:
    """PaCMAP and scoring settings; ``normalize`` is applied before embedding and scoring."""

    normalize: str = "none"  # none | rms: each state / its RMS | step: z-score each step's cloud
    n_neighbors: int = 10  # PaCMAP neighbours
    knn: int = 10  # k of the kNN-preservation score
    init: str = "pca"  # PaCMAP initialisation: pca | random
    apply_pca: bool = True  # PaCMAP's own TruncatedSVD to 100 dims for wide states
    steps: int | None = None  # recurrent steps to run (default: the trained horizon)

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={self.normalize!r}: choose one of {NORMALIZATIONS}")
        if self.init not in ("pca", "random"):
            raise ValueError(f"init={self.init!r}: choose 'pca' or 'random'")
        if self.knn < 1 or self.n_neighbors < 1:
            raise ValueError("knn and n_neighbors must be >= 1")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def normalize_states(states: np.ndarray, mode: str) -> np.ndarray:
    """(L, N, D) states normalised per point ('rms'), per step ('step': centre and scale each step) or not."""
    x = np.asarray(states, dtype=np.float32)
    if mode == "none":
        return x
    if mode == "rms":
        return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-12)
    if mode == "step":
        centred = x - x.mean(axis=1, keepdims=True)
        return centred / np.sqrt((centred**2).mean(axis=(1, 2), keepdims=True) + 1e-12)
    raise ValueError(f"normalize={mode!r}: choose one of {NORMALIZATIONS}")


@contextlib.contextmanager
def _pacmap_side_effects_contained() -> Iterator[None]:
    """Restore NumPy's global RNG and the OpenMP thread counts (faiss, torch), silence pacmap's seed warnings."""
    torch_threads = torch.get_num_threads()  # before the imports: importing pacmap / numba resets it
    import faiss

    rng_state = np.random.get_state()
    threads = faiss.omp_get_max_threads()
    logger = logging.getLogger("pacmap.pacmap")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        np.random.set_state(rng_state)
        faiss.omp_set_num_threads(threads)
        # numba / faiss share torch's OpenMP runtime: importing or fitting can leave torch on more threads.
        torch.set_num_threads(torch_threads)
        logger.setLevel(level)


def pacmap_embed(
    x: np.ndarray, seed: int = 0, n_neighbors: int = 10, init: str = "pca", apply_pca: bool = True
) -> np.ndarray:
    """2-D PaCMAP embedding of points (n, d) with a fresh estimator and a fixed seed: (n, 2) float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"PaCMAP needs a 2-D array of at least 3 points, got shape {x.shape}")
    with _pacmap_side_effects_contained():
        import pacmap

        reducer = pacmap.PaCMAP(
            n_components=2, n_neighbors=min(n_neighbors, len(x) - 2), random_state=int(seed), apply_pca=apply_pca
        )
        return reducer.fit_transform(x, init=init).astype(np.float32)


def knn_preservation(high: np.ndarray, low: np.ndarray, k: int = 10) -> np.ndarray:
    """Per point: fraction of its k nearest neighbours in ``high`` that are among its k nearest in ``low``."""
    from sklearn.neighbors import NearestNeighbors

    n = len(high)
    k = min(k, n - 1)
    if k < 1:
        raise ValueError("kNN preservation needs at least 2 points")

    def neighbours(x: np.ndarray) -> np.ndarray:
        idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
        # Drop the point itself (wherever ties put it), keep k others.
        out = np.empty((n, k), dtype=np.int64)
        for i, row in enumerate(idx):
            others = row[row != i]
            out[i] = others[:k]
        return out

    hi, lo = neighbours(np.asarray(high, dtype=np.float32)), neighbours(np.asarray(low, dtype=np.float32))
    kept = (hi[:, :, None] == lo[:, None, :]).any(axis=2).sum(axis=1)
    return kept / k


def step_statistics(states: np.ndarray) -> pd.DataFrame:
    """Per step, in the raw state space: mean CLS norm, cosine to the previous step, relative step size."""
    x = np.asarray(states, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1)
    rows = []
    for t in range(len(x)):
        row = {"step": t + 1, "mean_norm": float(norms[t].mean()), "cos_prev": np.nan, "rel_change": np.nan}
        if t > 0:
            dot = (x[t] * x[t - 1]).sum(-1)
            row["cos_prev"] = float((dot / (norms[t] * norms[t - 1] + 1e-12)).mean())
            row["rel_change"] = float((np.linalg.norm(x[t] - x[t - 1], axis=-1) / (norms[t - 1] + 1e-12)).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def embed_trajectories(
    states: np.ndarray,
    labels: np.ndarray,
    classes: list[str] | None = None,
    options: TrajectoryOptions = TrajectoryOptions(),
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Joint PaCMAP of all (image, step) CLS states (L, N, D): (points, centroids, summary).

    points: image, label, class, step, x, y, knn_kept. centroids: label, class, step, x, y,
    spread (mean distance of the class's points to the centroid in the embedding).
    summary: kNN preservation (mean, chance level k/(n-1)), k, number of points.
    """
    n_layers, n_images, dim = states.shape
    flat = normalize_states(states, options.normalize).reshape(n_layers * n_images, dim)
    emb = pacmap_embed(flat, seed, options.n_neighbors, options.init, options.apply_pca)
    kept = knn_preservation(flat, emb, options.knn)
    labels = np.asarray(labels)
    names = classes or [str(c) for c in range(int(labels.max()) + 1)]
    points = pd.DataFrame({
        "image": np.tile(np.arange(n_images), n_layers),
        "label": np.tile(labels, n_layers),
        "step": np.repeat(np.arange(1, n_layers + 1), n_images),
        "x": emb[:, 0],
        "y": emb[:, 1],
        "knn_kept": kept,
    })
    points.insert(2, "class", [names[i] for i in points["label"]])
    centroids = points.groupby(["label", "class", "step"], as_index=False)[["x", "y"]].mean()
    merged = points.merge(centroids, on=["label", "step"], suffixes=("", "_c"))
    merged["dist"] = np.hypot(merged["x"] - merged["x_c"], merged["y"] - merged["y_c"])
    spread = merged.groupby(["label", "step"], as_index=False)["dist"].mean().rename(columns={"dist": "spread"})
    centroids = centroids.merge(spread, on=["label", "step"])
    k = min(options.knn, len(flat) - 1)
    summary = {
        "knn_preservation": float(kept.mean()),
        "knn_chance": k / (len(flat) - 1),
        "knn": k,
        "points": int(len(flat)),
    }
    return points, centroids, summary


def trajectories(
    model: BViT,
    loader: DataLoader,
    classes: list[str] | None = None,
    options: TrajectoryOptions = TrajectoryOptions(),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """CLS states of every image at every step, embedded jointly: (points, centroids, step_stats, summary)."""
    states, labels = collect_cls_states(model, loader, device, steps=options.steps)
    raw = states.numpy()
    points, centroids, summary = embed_trajectories(raw, labels.numpy(), classes, options, seed)
    return points, centroids, step_statistics(raw), summary
