"""Validation/training loaders with a model's eval transform, seeded subsets, small sets decoded once."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from ..model import BViTConfig
from .datasets import SHAPES_SPECS, ImageNetLabels, build_datasets
from .shapes import shapes_for_model
from .transforms import eval_transform

# Validation sets up to this size are decoded once and kept as tensors by ``materialize``.
MATERIALIZE_BYTES = 1 << 30


def subset_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All of range(n), or a sorted seeded random subset of ``limit`` indices (class-sorted folders stay mixed)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def stratified_indices(labels: Sequence[Hashable], limit: int | None, seed: int) -> list[int]:
    """All indices, or a sorted seeded random subset of ``limit`` with each class in proportion to its size.

    Each class gets floor(limit * size / n) images and the remaining ones go to the largest
    remainders (ties broken at random), so a subset smaller than the number of classes still
    spreads over as many classes as it can; the images of a class are a random draw.
    """
    n = len(labels)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    members = list(groups.values())
    quota = np.array([len(m) for m in members], dtype=np.float64) * limit / n
    counts = np.floor(quota).astype(np.int64)
    left = limit - int(counts.sum())
    if left:
        order = np.lexsort((rng.random(len(members)), -(quota - counts)))  # largest remainder, random ties
        counts[order[:left]] += 1
    chosen = [i for m, k in zip(members, counts, strict=True) if k for i in rng.choice(m, size=int(k), replace=False)]
    return sorted(int(i) for i in chosen)


def data_loader(
    data: str,
    config: BViTConfig,
    split: str = "val",
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 0,
) -> tuple[DataLoader, list[str]]:
    """(loader of (image, label) batches, class names) for a split with the model's eval transform, in order.

    A 1000-class model on wnid-named class folders that are not the full ImageNet-1k set (an
    ImageNet-S subset) gets ImageNet-1k label indices, not the folders' sorted positions.
    """
    tf = eval_transform(config)
    shapes = shapes_for_model(config) if data in SHAPES_SPECS else None
    bundle = build_datasets(data, tf, tf, shapes, require_train=split == "train")
    if len(bundle.classes) > config.num_classes:
        raise ValueError(
            f"--data {data} has {len(bundle.classes)} classes but model {config.name!r} predicts {config.num_classes}"
        )
    dataset = bundle.train if split == "train" else bundle.val
    if config.num_classes == 1000 and hasattr(dataset, "target_transform") and ImageNetLabels.applies(bundle.classes):
        dataset.target_transform = ImageNetLabels(bundle.classes)
    subset = Subset(dataset, subset_indices(len(dataset), limit, seed))  # type: ignore[arg-type]
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers)
    return loader, bundle.classes


def materialize(loader: DataLoader, max_bytes: int = MATERIALIZE_BYTES) -> DataLoader:
    """Decode a small dataset once into tensors (for repeated passes, e.g. a rank sweep); large ones stream."""
    dataset = loader.dataset
    first = dataset[0][0]
    if len(dataset) * first.numel() * first.element_size() > max_bytes:  # type: ignore[arg-type]
        return loader
    images, labels = zip(*((batch[0], batch[1]) for batch in loader), strict=True)
    return DataLoader(TensorDataset(torch.cat(images), torch.cat(labels)), batch_size=loader.batch_size)
