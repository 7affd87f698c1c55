"""Dataset specs for training and evaluation: ``shapes``, a torchvision ImageFolder root, or CIFAR.

A spec is a string: ``shapes`` (the procedural default), ``shapes-b`` (the same generator with
six other shape classes: the embedded transfer target), ``cifar10:ROOT`` / ``cifar100:ROOT``
(a local torchvision-format copy; nothing is downloaded) or a path to an ImageFolder root
holding ``train/`` and ``val/`` class folders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .shapes import ShapesConfig, ShapesDataset, class_names, render_sample

SHAPES_SPECS = ("shapes", "shapes-b")  # the procedural sets: the bundled models' task and the transfer target
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


class DataSpecError(ValueError):
    """A dataset spec that names nothing usable; the message says what was expected."""


@dataclass
class DataBundle:
    """Train and validation datasets of one spec, with their class names."""

    train: Dataset | None  # None when only the validation split was asked for and there is none to train on
    val: Dataset
    classes: list[str]
    spec: str


class ImageNetLabels:
    """Folder index -> ImageNet-1k index, for class folders named by wnid (e.g. ImageNet-S919's 919 folders)."""

    def __init__(self, wnids: list[str]) -> None:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        index = {info.index_to_label_name(i): i for i in range(info.num_classes())}
        unknown = [w for w in wnids if w not in index]
        if unknown:
            raise DataSpecError(f"class folders that are not ImageNet-1k wnids: {unknown[:5]}")
        self.targets = [index[w] for w in wnids]

    def __call__(self, folder_index: int) -> int:
        return self.targets[folder_index]

    @staticmethod
    def applies(wnids: list[str]) -> bool:
        """Whether every class name looks like an ImageNet wnid (n + 8 digits)."""
        return bool(wnids) and all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)


def clutter_config(config: ShapesConfig, level: float) -> ShapesConfig:
    """The same dataset with background clutter scaled by ``level`` in [0, 1] (1 = ``config`` itself).

    Level 0 keeps the objects (classes, sizes, colours, contrast) but drops distractors,
    object textures and most background texture, and (for configs whose objects may sit
    anywhere, shapes v2) places them at the centre: the easy end of a curriculum.
    """
    level = min(1.0, max(0.0, level))
    if level == 1.0:
        return config

    def scale(pair: tuple[float, float]) -> tuple[float, float]:
        return pair[0] * level, pair[1] * level

    def count(pair: tuple[int, int]) -> tuple[int, int]:
        return round(pair[0] * level), round(pair[1] * level)

    return dataclasses.replace(
        config,
        num_lines=count(config.num_lines),
        num_blobs=count(config.num_blobs),
        texture_prob=config.texture_prob * level,
        background_amplitude=scale(config.background_amplitude),
        fine_noise_range=scale(config.fine_noise_range),
        position_spread=config.position_spread * level if config.version >= 2 else config.position_spread,
    )


class FreshShapes(Dataset):
    """Training shapes that never repeat: epoch ``e`` renders indices ``e*N .. e*N+N-1``.

    With ``curriculum_epochs`` > 0 the clutter level ramps linearly from 0 at epoch 0 to the
    full dataset at that epoch (``clutter_config``); validation always uses the full data.
    """

    def __init__(
        self, config: ShapesConfig, transform: Callable[[Any], Any] | None = None, curriculum_epochs: float = 0.0
    ) -> None:
        self.config = config
        self.transform = transform
        self.curriculum_epochs = curriculum_epochs
        self.epoch = 0
        self.active = config
        self.classes = list(class_names(config))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        level = 1.0 if self.curriculum_epochs <= 0 else epoch / self.curriculum_epochs
        self.active = clutter_config(self.config, level)

    def __len__(self) -> int:
        return self.config.num_train

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        sample = render_sample(self.active, "train", self.epoch * self.config.num_train + index)
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
    curriculum_epochs: float = 0.0,
    require_train: bool = True,
) -> DataBundle:
    """Resolve a dataset spec into train/val datasets with the given transforms.

    ``require_train=False`` accepts an ImageFolder root with only a validation split
    (``val/`` or ``validation/``, e.g. ImageNet-S); the bundle's ``train`` is then None.
    """
    if spec in SHAPES_SPECS:
        cfg = shapes_config or ShapesConfig()
        if spec == "shapes-b":  # the transfer target: the same generator with six other classes
            cfg = dataclasses.replace(cfg, classes="b")
        return DataBundle(
            FreshShapes(cfg, train_transform, curriculum_epochs),
            ShapesDataset("val", cfg, transform=eval_transform),
            list(class_names(cfg)),
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
            f"unknown dataset {spec!r}: use 'shapes', 'shapes-b', 'cifar10:ROOT', 'cifar100:ROOT' or an ImageFolder root"
        )
    from torchvision.datasets import ImageFolder

    split_dirs = {}
    for split, names in (("train", ("train",)), ("val", ("val", "validation"))):
        found = next((root / n for n in names if (root / n).is_dir()), None)
        if found is None:
            if split == "train" and not require_train:
                continue
            raise DataSpecError(f"{root} has no {'/'.join(names)} folder (ImageFolder layout: ROOT/train/<class>/...)")
        _check_image_folder(found)
        split_dirs[split] = found
    val = ImageFolder(str(split_dirs["val"]), transform=eval_transform)
    train = ImageFolder(str(split_dirs["train"]), transform=train_transform) if "train" in split_dirs else None
    if train is not None and train.classes != val.classes:
        raise DataSpecError(f"{root}: train and val class folders differ")
    return DataBundle(train, val, list(val.classes), spec)
