"""Inputs of the causal analysis from a ``--data`` spec: the images, the clean / corrupted pairs, the probe images.

``open_data`` opens shapes (the data the model was trained on), an ImageNet-S root (with masks)
or an ImageFolder / CIFAR root (without); ``build_pairs`` makes the pairs of one ``--pairs``
kind (``class``, ``none``, ``noise-mask``, ``noise-image``, ``file:PATH``) for one model's input
size and crop; ``probe_images`` the masked images of the probes. Errors name the option.
"""

from __future__ import annotations

from pathlib import Path

from ...data.datasets import SHAPES_SPECS, ImageNetLabels
from ...data.loaders import subset_indices
from ...data.sources import (
    DatasetSource,
    ImageNetSSource,
    PointingSource,
    ShapesSource,
    open_source,
    reopen,
)
from ...data.spec import describe
from ...model import BViTConfig
from .pairs import (
    MaskedImages,
    PairBatch,
    counterfactual_pairs,
    file_pairs,
    masked_inputs,
    noise_pairs,
    relabel,
)

PAIR_KINDS = ("class", "none", "noise-mask", "noise-image", "file:PATH")
MIN_PROBE_IMAGES = 8


def has_masks(source: PointingSource) -> bool:
    """Whether the source gives object masks (shapes, ImageNet-S) or not (ImageFolder, CIFAR)."""
    return not isinstance(source, DatasetSource)


def open_data(spec: str, config: BViTConfig) -> PointingSource:
    """The images of --data for one model: shapes (the data it was trained on), ImageNet-S (masks) or ImageFolder (none)."""
    if spec.partition(":")[0] in SHAPES_SPECS:
        return open_source(spec, config)
    if not spec.startswith(("cifar10:", "cifar100:")):
        root = Path(spec).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--data {spec}: no such directory (give 'shapes', an ImageNet-S root or an "
                                    "ImageFolder root)")
        if (root / "validation").is_dir():
            return ImageNetSSource(str(root))
    return reopen(describe(spec))


def label_map(source: PointingSource, config: BViTConfig) -> list[int] | None:
    """Source label -> model class index (ImageNet-S / ImageFolder wnid folders for a 1000-class model), or None."""
    categories = list(source.categories)
    if config.num_classes == 1000 and ImageNetLabels.applies(categories):
        return ImageNetLabels(categories).targets
    if len(categories) > config.num_classes:
        raise ValueError(f"--data {source.description} has {len(categories)} classes but model {config.name!r} "
                         f"predicts {config.num_classes}")
    return None


def class_list(source: PointingSource, mapping: list[int] | None) -> list[str]:
    """The model's class names as a pairs file may name them: --data's classes, or ImageNet-1k's wnids when mapped."""
    if mapping is None:
        return list(source.categories)
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(info.num_classes())]


def build_pairs(kind: str, source: PointingSource, config: BViTConfig, limit: int | None, seed: int) -> PairBatch:
    """The --pairs of one model (its input size and crop); ValueError naming --pairs when none are usable."""
    mapping = label_map(source, config)
    try:
        if kind in ("class", "none"):
            if not isinstance(source, ShapesSource):
                raise ValueError("exact counterfactuals need --data shapes; for another root use noise-mask, "
                                 "noise-image or file:PATH")
            return counterfactual_pairs(config, subset_indices(len(source), limit, seed), kind, source.config,
                                        source.split)
        if kind.startswith("noise-"):
            region = "object" if kind == "noise-mask" else "image"
            if region == "object" and not has_masks(source):
                raise ValueError(f"noise on the object mask needs masks, and --data {source.description} has none "
                                 "(use --data shapes or an ImageNet-S root, or --pairs noise-image)")
            pairs = noise_pairs(source, subset_indices(len(source), limit, seed), config, region, seed=seed)
        else:  # a pairs file's labels: the model's class indices, or class names (ImageNet-1k wnids for such a model)
            pairs = file_pairs(kind[5:], config, categories=class_list(source, mapping))
            return pairs.select(subset_indices(len(pairs), limit, seed))
    except ValueError as err:
        raise ValueError(f"--pairs {kind}: {err}") from None
    return pairs if mapping is None else relabel(pairs, mapping)


def probe_images(source: PointingSource, config: BViTConfig, limit: int, seed: int) -> MaskedImages | None:
    """The probe images of one model (a seeded subset of ``limit``), or None when the source has no object masks."""
    if not has_masks(source):
        return None
    try:
        data = masked_inputs(source, subset_indices(len(source), limit, seed), config, label_map(source, config))
    except ValueError as err:
        raise ValueError(f"--probe-limit / --data: {err}") from None
    if len(data) < MIN_PROBE_IMAGES:
        raise ValueError(f"--probe-limit: only {len(data)} usable images with masks; the probes need at least "
                         f"{MIN_PROBE_IMAGES} (a train and a test split)")
    return data


__all__ = ["MIN_PROBE_IMAGES", "PAIR_KINDS", "build_pairs", "class_list", "has_masks", "label_map", "open_data", "probe_images"]
