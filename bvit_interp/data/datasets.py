"""Dataset specs for training and evaluation: ``shapes``, a torchvision ImageFolder root, or CIFAR.

A spec is a string: ``shapes`` (the procedural default), ``cifar10:ROOT`` / ``cifar100:ROOT``
(a local torchvision-format copy; nothing is downloaded) or a path to an ImageFolder root
holding ``train/`` and ``val/`` class folders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .shapes import SHAPE_CLASSES, ShapesConfig, ShapesDataset, render_sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


class DataSpecError(ValueError):
    """A dataset spec that names nothing usable; the message says what was expected."""


@dataclass
class DataBundle:
    """Train and validation datasets of one spec, with their class names."""

    train: Dataset
    val: Dataset
    classes: list[str]
    spec: str


class FreshShapes(Dataset):
    """Training shapes that never repeat: epoch ``e`` renders indices ``e*N .. e*N+N-1``."""

    def __init__(self, config: ShapesConfig, transform: Callable[[Any], Any] | None = None) -> None:
        self.config = config
        self.transform = transform
        self.epoch = 0
        self.classes = list(SHAPE_CLASSES)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.config.num_train

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        sample = render_sample(self.config, "train", self.epoch * self.config.num_train + index)
        image = Image.fromarray(sample.image)
        return (self.transform(image) if self.transform else image), sample.label


def _check_image_folder(path: Path) -> None:
    if not path.is_dir():
        raise DataSpecError(f"{path} is not a directory (expected class folders of images)")
    classes = [d for d in sorted(path.iterdir()) if d.is_dir()]
    if not classes:
        raise DataSpecError(f"{path} holds no class folders (expected {path}/<class>/<image>)")
    empty = [d.name for d in classes if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())]
    if empty:
        raise DataSpecError(f"{path}: class folders with no images: {empty[:10]}")


def build_datasets(
    spec: str,
    train_transform: Callable[[Any], Any] | None,
    eval_transform: Callable[[Any], Any] | None,
    shapes_config: ShapesConfig | None = None,
) -> DataBundle:
    """Resolve a dataset spec into train/val datasets with the given transforms."""
    if spec == "shapes":
        cfg = shapes_config or ShapesConfig()
        return DataBundle(
            FreshShapes(cfg, train_transform),
            ShapesDataset("val", cfg, transform=eval_transform),
            list(SHAPE_CLASSES),
            spec,
        )
    if spec.startswith(("cifar10:", "cifar100:")):
        from torchvision.datasets import CIFAR10, CIFAR100

        name, root = spec.split(":", 1)
        cls = CIFAR10 if name == "cifar10" else CIFAR100
        try:
            train = cls(root, train=True, transform=train_transform, download=False)
            val = cls(root, train=False, transform=eval_transform, download=False)
        except RuntimeError as err:
            raise DataSpecError(f"{spec}: no {name} found under {root} ({err}); nothing is downloaded") from err
        return DataBundle(train, val, list(train.classes), spec)
    root = Path(spec)
    if not root.exists():
        raise DataSpecError(
            f"unknown dataset {spec!r}: use 'shapes', 'cifar10:ROOT', 'cifar100:ROOT' or an ImageFolder root"
        )
    from torchvision.datasets import ImageFolder

    split_dirs = {}
    for split, names in (("train", ("train",)), ("val", ("val", "validation"))):
        found = next((root / n for n in names if (root / n).is_dir()), None)
        if found is None:
            raise DataSpecError(f"{root} has no {'/'.join(names)} folder (ImageFolder layout: ROOT/train/<class>/...)")
        _check_image_folder(found)
        split_dirs[split] = found
    train = ImageFolder(str(split_dirs["train"]), transform=train_transform)
    val = ImageFolder(str(split_dirs["val"]), transform=eval_transform)
    if train.classes != val.classes:
        raise DataSpecError(f"{root}: train and val class folders differ")
    return DataBundle(train, val, list(train.classes), spec)
