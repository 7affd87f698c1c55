"""Image + segmentation sources for localisation analyses: ImageNet-S folders or the procedural shapes set.

Both give ``PointingItem``s with the image, an int32 class-id mask in ImageNet-S convention
(0 = other, 1000 = ignore, target id = label + 1) and the target class, or raise
``SampleError`` for an unusable sample so that callers skip and record it. A source's
``data`` is its ``meta["data"]`` (``data.spec.describe``), which ``data.sources.reopen`` turns back
into the same source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .imagenet_s import ImageNetS, SampleError
from .shapes import (
    ShapesConfig,
    class_wnids,
    render_sample,
    sample_label,
    shapes_for_model,
    split_length,
)
from .shapes import class_names as shape_class_names
from .spec import as_spec, describe


@dataclass
class PointingItem:
    image: Image.Image
    mask: np.ndarray | None  # (H, W) int32 class ids; None for images without segmentation (DatasetSource)
    class_id: int  # id of the target class inside ``mask``
    label: int  # 0-based class index (the model's output index)
    wnid: str
    name: str


class PointingSource(Protocol):
    categories: list[str]
    description: str  # display string (``data["display"]``)
    data: dict[str, Any]  # meta["data"]: what ``data.sources.reopen`` opens again

    def __len__(self) -> int: ...

    def name(self, index: int) -> str: ...

    def wnids(self) -> list[str]: ...

    def load(self, index: int) -> PointingItem: ...


class ShapesSource:
    """The shapes validation split rendered in memory (lossless; same ids as its ImageNet-S export)."""

    def __init__(self, config: ShapesConfig | None = None, split: str = "val") -> None:
        self.config = config or ShapesConfig()
        self.split = split
        self.wnid_list = class_wnids(self.config)
        self.categories = list(self.wnid_list)
        self.data = describe("shapes", split=split, shapes=self.config)
        self.description = self.data["display"]

    def __len__(self) -> int:
        return split_length(self.config, self.split)

    def name(self, index: int) -> str:
        return f"shape_{index:06d}"

    def wnids(self) -> list[str]:
        """Class (wnid) of every image in index order, without rendering any."""
        return [self.wnid_list[sample_label(self.config, self.split, i)] for i in range(len(self))]

    def load(self, index: int) -> PointingItem:
        s = render_sample(self.config, self.split, index)
        mask = np.where(s.mask, s.label + 1, 0).astype(np.int32)
        return PointingItem(Image.fromarray(s.image), mask, s.label + 1, s.label, self.wnid_list[s.label], self.name(index))


class ImageNetSSource:
    """An ImageNet-S root (``validation/`` + ``validation-segmentation/``)."""

    def __init__(self, root: str, split: str = "validation") -> None:
        self.dataset = ImageNetS(root, split)
        self.categories = self.dataset.categories
        self.data = describe(str(root), split=split, segmentation=True)
        self.description = self.data["display"]

    def __len__(self) -> int:
        return len(self.dataset)

    def name(self, index: int) -> str:
        s = self.dataset.samples[index]
        return f"{s.wnid}/{s.image_path.name}"

    def wnids(self) -> list[str]:
        """Class folder (wnid) of every listed image in index order, without loading any."""
        return [s.wnid for s in self.dataset.samples]

    def load(self, index: int) -> PointingItem:
        s = self.dataset.samples[index]
        image, mask = self.dataset.load(index)
        return PointingItem(image, mask, s.class_id, s.label, s.wnid, self.name(index))


class DatasetSource:
    """The images of an ImageFolder or CIFAR split (``data.spec`` kinds ``imagefolder``, ``cifar*``), without masks."""

    def __init__(self, data: dict[str, Any]) -> None:
        from .datasets import build_datasets

        kind, root, split = data["kind"], data["root"], data.get("split", "val")
        bundle = build_datasets(f"{kind}:{root}" if kind.startswith("cifar") else root, None, None,
                                require_train=split == "train")
        self.dataset = bundle.train if split == "train" else bundle.val
        self.split = split
        self.categories = list(bundle.classes)
        self.data = dict(data)
        self.description = str(data.get("display") or root)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def name(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        if samples is not None:
            path = Path(samples[index][0])
            return f"{path.parent.name}/{path.name}"
        return f"{self.split}_{index:06d}"

    def wnids(self) -> list[str]:
        """Class of every image in index order, without loading any."""
        return [self.categories[int(t)] for t in self.dataset.targets]  # type: ignore[attr-defined]

    def load(self, index: int) -> PointingItem:
        image, label = self.dataset[index]
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        return PointingItem(image.convert("RGB"), None, -1, int(label), self.categories[int(label)], self.name(index))


def open_source(spec: str, model_config: Any = None) -> PointingSource:
    """``shapes`` / ``shapes-b`` (optionally ``:IMG_SIZE``) or an ImageNet-S root directory.

    With ``model_config`` the shapes data is the one that model was trained on (``shapes_for_model``).
    """
    base, _, size = spec.partition(":")
    if base in ("shapes", "shapes-b"):
        classes = "b" if base == "shapes-b" else None
        if model_config is not None:
            config = shapes_for_model(model_config, classes=classes)
            if size:
                config = dataclasses.replace(config, img_size=int(size))
        else:
            config = ShapesConfig(img_size=int(size) if size else 32, classes=classes or "a")
        return ShapesSource(config)
    return ImageNetSSource(spec)


def reopen(data: Mapping[str, Any] | str | None) -> PointingSource:
    """The images ``meta["data"]`` describes, as a source (``__len__``, ``name(i)``, ``load(i)``, ``categories``).

    Shapes and ImageNet-S give their masks (``ShapesSource`` / ``ImageNetSSource``, what the
    pointing game reads); an ImageFolder or CIFAR split gives its images with ``mask`` None.
    """
    spec = as_spec(data)
    kind = spec["kind"]
    if kind == "shapes":
        return ShapesSource(ShapesConfig.from_dict(spec.get("config") or {}), spec.get("split", "val"))
    if kind == "imagenet-s":
        return ImageNetSSource(spec["root"], spec.get("split", "validation"))
    return DatasetSource(spec)


def class_names(source: PointingSource) -> dict[str, str]:
    """wnid -> readable class name of a source (the shapes' names; ImageNet-S keeps its wnids)."""
    if isinstance(source, ShapesSource):
        return dict(zip(class_wnids(source.config), shape_class_names(source.config), strict=True))
    return {c: c for c in getattr(source, "categories", [])}


__all__ = ["DatasetSource", "ImageNetSSource", "PointingItem", "PointingSource", "SampleError", "ShapesSource", "class_names",
           "open_source", "reopen"]
